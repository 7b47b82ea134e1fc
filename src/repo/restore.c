/* restore.c - writing a backed-up file back into a sink (sink.h): sparse,
 * every chunk checked before it is written, O_DIRECT where the filesystem
 * allows (PERF.md: buffered writes of fresh data cost ~2 CPU-s per GiB,
 * O_DIRECT 2.3 GB/s); the file and block device sinks. */
#include "internal.h"

#include <vmshadow/repo/sink.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* 64 entries: 4 MiB of image per step, so that two workers' read windows
 * rarely overlap */
#define BATCH 64

typedef struct rjob {
    vmsh_repo *r;
    const vmsh_file_index *idx;
    const char *backup, *file;
    const vmsh_sink *sink;
    atomic_size_t next;
    atomic_bool failed;
    atomic_uint_fast64_t written, chunks;
    pthread_mutex_t mu;
    vmsh_error *err;
    int code;
} rjob;

typedef struct rworker {
    rjob *j;
    pthread_t thread;
    chunk_reader *cr;
    uint8_t *buf;
} rworker;

static void rfail(rjob *j, int code, vmsh_error **e)
{
    pthread_mutex_lock(&j->mu);
    if (!j->err) {
        j->code = code;
        vmsh_error_propagate(&j->err, e);
    } else {
        vmsh_error_free(*e);
        *e = NULL;
    }
    pthread_mutex_unlock(&j->mu);
    atomic_store(&j->failed, true);
}

/* Writes `count` decoded chunks starting at chunk `first` from w->buf in one
 * call: O_DIRECT writes are synchronous, so 64 KiB writes would wait on the
 * device 40,000 times for a 4 GiB image; runs of up to 1 MiB do not. */
static int flush_run(rworker *w, uint64_t first, size_t count, vmsh_error **err)
{
    rjob *j = w->j;
    if (count == 0)
        return 0;
    uint64_t off = first * CHUNK_SIZE;
    size_t len = (count - 1) * (size_t)CHUNK_SIZE;
    uint64_t last_off = off + len;
    len += j->idx->size - last_off < CHUNK_SIZE ? (size_t)(j->idx->size - last_off) : CHUNK_SIZE;
    size_t data = len;
    if (j->sink->direct && len % 4096) {
        /* O_DIRECT writes whole blocks: pad; the final ftruncate trims. */
        size_t padded = (len + 4095) / 4096 * 4096;
        memset(w->buf + len, 0, padded - len);
        len = padded;
    }
    size_t step = j->sink->max_write ? j->sink->max_write : len;
    for (size_t done = 0; done < len; done += step) {
        size_t n = len - done < step ? len - done : step;
        int rc = j->sink->ops->pwrite(j->sink->impl, w->buf + done, n, off + done, err);
        if (rc < 0)
            return vmsh_error_prefix(err, "restoring %s", j->file);
    }
    atomic_fetch_add(&j->written, data);
    atomic_fetch_add(&j->chunks, count);
    return 0;
}

/* Decodes and checks entry `e` into slot `slot` of w->buf. */
static int decode_entry(rworker *w, const index_entry *e, size_t slot, vmsh_error **err)
{
    rjob *j = w->j;
    chunk_loc loc;
    int rc = repo_locate_entry(j->r, e, j->idx->size, j->backup, j->file, &loc, err);
    if (rc < 0)
        return rc;
    if ((rc = chunk_reader_read(w->cr, &loc, w->buf + slot * CHUNK_SIZE, err)) < 0)
        return vmsh_error_prefix(err, "backup %s, file %s, chunk %llu", j->backup, j->file,
                                 (unsigned long long)e->chunk);
    return 0;
}

static bool rstep(rworker *w)
{
    rjob *j = w->j;
    if (atomic_load(&j->failed))
        return false;
    size_t i = atomic_fetch_add(&j->next, BATCH);
    if (i >= j->idx->count)
        return false;
    size_t end = i + BATCH < j->idx->count ? i + BATCH : j->idx->count;
    uint64_t first = 0;
    size_t count = 0;
    vmsh_error *e = NULL;
    int rc = 0;
    for (; i < end && rc == 0; i++) {
        const index_entry *en = &j->idx->entries[i];
        if (count > 0 && en->chunk != first + count) {
            rc = flush_run(w, first, count, &e);
            count = 0;
        }
        if (rc == 0 && count == 0)
            first = en->chunk;
        if (rc == 0 && (rc = decode_entry(w, en, count, &e)) == 0)
            count++;
    }
    if (rc == 0)
        rc = flush_run(w, first, count, &e);
    if (rc < 0) {
        rfail(j, rc, &e);
        return false;
    }
    return true;
}

static void *rworker_main(void *arg)
{
    rworker *w = arg;
    while (rstep(w))
        ;
    return NULL;
}

/* Makes the gaps between stored chunks (holes and zero chunks of the
 * backup) read as zeros on a sink that does not already. */
static int zero_gaps(const vmsh_file_index *idx, const vmsh_sink *s, const char *file,
                     vmsh_error **err)
{
    uint8_t *zeros = NULL;
    uint64_t pos = 0;
    int rc = 0;
    for (size_t i = 0; i <= idx->count && rc == 0; i++) {
        uint64_t end = i < idx->count ? idx->entries[i].chunk * CHUNK_SIZE : idx->size;
        if (end > idx->size)
            end = idx->size;
        if (end > pos) {
            rc = s->ops->zero ? s->ops->zero(s->impl, pos, end - pos, err) : -EOPNOTSUPP;
            if (rc == -EOPNOTSUPP) {
                /* no zeroing request: write zeros (correctness first) */
                rc = 0;
                if (!zeros && !(zeros = calloc(1, CHUNK_SIZE)))
                    rc = vmsh_error_set(err, -ENOMEM, "out of memory");
                for (uint64_t o = pos; rc == 0 && o < end; o += CHUNK_SIZE) {
                    size_t n = end - o < CHUNK_SIZE ? (size_t)(end - o) : CHUNK_SIZE;
                    rc = s->ops->pwrite(s->impl, zeros, n, o, err);
                }
            }
            if (rc < 0)
                vmsh_error_prefix(err, "restoring %s: zeroing its holes", file);
        }
        if (i < idx->count)
            pos = (idx->entries[i].chunk + 1) * CHUNK_SIZE;
    }
    free(zeros);
    return rc;
}

static int restore_index(vmsh_repo *r, const char *backup, const char *file,
                         const vmsh_file_index *idx, const vmsh_sink *sink,
                         vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *stats,
                         vmsh_error **err)
{
    if (sink->size != idx->size)
        return vmsh_error_set(err, -EINVAL, "%s: the target has %llu bytes, the file %llu",
                              sink->what ? sink->what : file, (unsigned long long)sink->size,
                              (unsigned long long)idx->size);
    rjob j = {.r = r, .idx = idx, .backup = backup, .file = file, .sink = sink};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, false);
    atomic_init(&j.written, 0);
    atomic_init(&j.chunks, 0);
    pthread_mutex_init(&j.mu, NULL);
    /* Restores wait on the disk (synchronous O_DIRECT reads and writes): twice
     * as many threads as CPUs keep both busy, unless the caller chose. */
    unsigned nw = r->threads ? repo_threads(r) : 2 * repo_threads(r);
    rworker *ws = vmsh_calloc_array(nw, sizeof(*ws));
    if (!ws) {
        pthread_mutex_destroy(&j.mu);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    unsigned started = 0;
    for (unsigned i = 0; i < nw; i++) {
        vmsh_error *e = NULL;
        ws[i].j = &j;
        int rc = chunk_reader_new(&ws[i].cr, r, &e);
        if (rc == 0)
            chunk_reader_set_direct(ws[i].cr, true);
        /* 2 MiB aligned and backed by huge pages where the kernel has them
         * (madvise mode): every O_DIRECT write pins its pages, and 4 KiB
         * pages cost 1024 pins per 4 MiB batch (gup_fast in perf) */
        if (rc == 0 && posix_memalign((void **)&ws[i].buf, 2u << 20, BATCH * CHUNK_SIZE) != 0) {
            ws[i].buf = NULL;
            rc = vmsh_error_set(&e, -ENOMEM, "out of memory");
        }
        if (rc == 0)
            madvise(ws[i].buf, BATCH * CHUNK_SIZE, MADV_HUGEPAGE);
        if (rc == 0 && i > 0 && pthread_create(&ws[i].thread, NULL, rworker_main, &ws[i]) != 0)
            rc = vmsh_error_set(&e, -EAGAIN, "cannot start a restore thread");
        if (rc < 0) {
            rfail(&j, rc, &e);
            break;
        }
        started = i + 1;
    }
    if (started > 0)
        while (rstep(&ws[0]))
            if (progress) {
                size_t d = atomic_load(&j.next);
                progress(opaque, (d < idx->count ? d : idx->count) * (uint64_t)CHUNK_SIZE,
                         idx->count * (uint64_t)CHUNK_SIZE);
            }
    for (unsigned i = 1; i < started; i++)
        pthread_join(ws[i].thread, NULL);
    for (unsigned i = 0; i < nw; i++) {
        chunk_reader_free(ws[i].cr);
        free(ws[i].buf);
    }
    free(ws);
    pthread_mutex_destroy(&j.mu);
    if (j.err) {
        vmsh_error_propagate(err, &j.err);
        return j.code;
    }
    if (!sink->reads_zero) {
        int rc = zero_gaps(idx, sink, file, err);
        if (rc < 0)
            return rc;
    }
    if (stats) {
        stats->bytes_written = atomic_load(&j.written);
        stats->chunks = atomic_load(&j.chunks);
    }
    return 0;
}

/* Loads the manifest entry and index of `name` in backup `spec`. */
static int open_file(vmsh_repo *r, const char *spec, const char *name, char id[17],
                     vmsh_file_index **idx, vmsh_error **err)
{
    vmsh_backup_info *b = NULL;
    int rc = vmsh_repo_backup_info(r, spec, &b, err);
    if (rc < 0)
        return rc;
    memcpy(id, b->id, VMSH_BACKUP_ID_LEN + 1);
    const vmsh_backup_file *f = vmsh_backup_info_file(b, name);
    if (!f) {
        rc = vmsh_error_set(err, -ENOENT, "backup %s has no file named \"%s\"", b->id, name);
        vmsh_backup_info_free(b);
        return rc;
    }
    rc = index_load(r, f->index, idx, err);
    if (rc < 0)
        vmsh_error_prefix(err, "backup %s, file %s", b->id, name);
    else if ((*idx)->size != f->size) {
        vmsh_file_index_free(*idx);
        *idx = NULL;
        rc = vmsh_error_set(err, -EBADMSG,
                            "backup %s, file %s: index size does not match the manifest", b->id,
                            name);
    }
    vmsh_backup_info_free(b);
    return rc;
}

/* ---- the file and block device sink ---- */

typedef struct fd_sink {
    int fd;
    bool block;
    const char *what;
} fd_sink;

static int fd_pwrite(void *impl, const void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    fd_sink *s = impl;
    int r = vmsh_fs_pwrite_all(s->fd, buf, len, off);
    if (r < 0)
        return vmsh_error_set(err, r, "cannot write %s: %s%s", s->what, strerror(-r),
                              r == -ENOSPC ? " (the target filesystem is full)" : "");
    return 0;
}

static int fd_zero(void *impl, uint64_t off, uint64_t len, vmsh_error **err)
{
    fd_sink *s = impl;
    (void)err;
    if (s->block) {
        /* the device zeroes (or unmaps with zeroing guaranteed) itself */
        uint64_t range[2] = {off, len};
        return ioctl(s->fd, BLKZEROOUT, range) == 0 ? 0 : -EOPNOTSUPP;
    }
    return fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0
               ? 0
               : -EOPNOTSUPP;
}

static int fd_flush(void *impl, vmsh_error **err)
{
    fd_sink *s = impl;
    if (fsync(s->fd) < 0)
        return vmsh_error_set(err, -errno, "cannot flush %s: %s", s->what, strerror(errno));
    return 0;
}

static int fd_finish(void *impl, vmsh_error **err)
{
    int r = fd_flush(impl, err);
    free(impl);
    return r;
}

static const vmsh_sink_ops fd_ops = {
    .version = VMSH_SINK_OPS_VERSION,
    .kind = "file",
    .pwrite = fd_pwrite,
    .zero = fd_zero,
    .flush = fd_flush,
    .finish = fd_finish,
    .free = free,
};

int vmsh_sink_open_fd(int fd, uint64_t size, const char *what, vmsh_sink **out, vmsh_error **err)
{
    *out = NULL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vmsh_error_set(err, -errno, "%s: %s", what, strerror(errno));
    bool block = S_ISBLK(st.st_mode);
    if (!block && !S_ISREG(st.st_mode))
        return vmsh_error_set(err, -EINVAL, "%s is neither a file nor a block device", what);
    if (block) {
        uint64_t have = 0;
        if (ioctl(fd, BLKGETSIZE64, &have) < 0)
            return vmsh_error_set(err, -errno, "cannot read the size of %s: %s", what,
                                  strerror(errno));
        if (have < size)
            return vmsh_error_set(err, -ENOSPC,
                                  "block device %s has %llu bytes, the disk needs %llu: too small",
                                  what, (unsigned long long)have, (unsigned long long)size);
    } else if (ftruncate(fd, (off_t)size) < 0) {
        return vmsh_error_set(err, -errno, "cannot size %s: %s", what, strerror(errno));
    }
    vmsh_sink *s = calloc(1, sizeof(*s));
    fd_sink *f = calloc(1, sizeof(*f));
    if (!s || !f) {
        free(s), free(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int fl = fcntl(fd, F_GETFL);
    *f = (fd_sink){.fd = fd, .block = block, .what = what};
    /* a regular file the caller made empty reads as zeros; a device holds
     * what was there before */
    *s = (vmsh_sink){.ops = &fd_ops,
                     .impl = f,
                     .size = size,
                     .reads_zero = !block && st.st_size == 0,
                     .direct = !block && fl >= 0 && (fl & O_DIRECT)};
    *out = s;
    return 0;
}

int vmsh_sink_finish(vmsh_sink *s, vmsh_error **err)
{
    if (!s)
        return 0;
    int r = s->ops->finish ? s->ops->finish(s->impl, err) : 0;
    free(s);
    return r;
}

void vmsh_sink_free(vmsh_sink *s)
{
    if (!s)
        return;
    if (s->ops->free)
        s->ops->free(s->impl);
    free(s);
}

/* ---- restores ---- */

/* What every restore of one file does first: the shared read lock (gc
 * waits), the file's index out of the backup, the chunk map. On failure
 * the caller frees what it got (*rl, *idx: NULL or set). */
static int restore_begin(vmsh_repo *r, const char *spec, const char *name, vmsh_lock **rl,
                         char id[VMSH_BACKUP_ID_LEN + 1], vmsh_file_index **idx, vmsh_error **err)
{
    int rc = repo_lock(r, "read", false, rl, err);
    if (rc == 0)
        rc = open_file(r, spec, name, id, idx, err);
    if (rc == 0)
        rc = repo_load_map(r, err);
    return rc;
}

int vmsh_repo_restore_sink(vmsh_repo *r, const char *spec, const char *name, vmsh_sink *sink,
                           vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *stats,
                           vmsh_error **err)
{
    vmsh_lock *rl = NULL;
    char id[VMSH_BACKUP_ID_LEN + 1];
    vmsh_file_index *idx = NULL;
    int rc = restore_begin(r, spec, name, &rl, id, &idx, err);
    if (rc == 0)
        rc = restore_index(r, id, name, idx, sink, progress, opaque, stats, err);
    vmsh_file_index_free(idx);
    vmsh_lock_free(rl);
    return rc;
}

/* Allocates the data ranges of a regular file first: writes into allocated
 * (unwritten) extents run in parallel, where ext4 serialises O_DIRECT writes
 * that must allocate. Holes stay holes. Best effort: not every filesystem
 * has fallocate. */
static void preallocate(int fd, const vmsh_file_index *idx)
{
    for (size_t i = 0; i < idx->count;) {
        size_t k = i + 1;
        while (k < idx->count && idx->entries[k].chunk == idx->entries[k - 1].chunk + 1)
            k++;
        uint64_t off = idx->entries[i].chunk * CHUNK_SIZE;
        uint64_t end = (idx->entries[k - 1].chunk + 1) * CHUNK_SIZE;
        if (end > idx->size)
            end = idx->size;
        if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)(end - off)) < 0)
            break;
        i = k;
    }
}

int vmsh_repo_restore_fd(vmsh_repo *r, const char *spec, const char *name, int fd,
                         vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *stats,
                         vmsh_error **err)
{
    vmsh_lock *rl = NULL;
    char id[VMSH_BACKUP_ID_LEN + 1];
    vmsh_file_index *idx = NULL;
    vmsh_sink *sink = NULL;
    int rc = restore_begin(r, spec, name, &rl, id, &idx, err);
    if (rc == 0)
        rc = vmsh_sink_open_fd(fd, idx->size, name, &sink, err);
    if (rc == 0 && !((fd_sink *)sink->impl)->block)
        preallocate(fd, idx);
    if (rc == 0)
        rc = restore_index(r, id, name, idx, sink, progress, opaque, stats, err);
    /* O_DIRECT wrote the tail as a whole block: trimmed back */
    if (rc == 0 && sink->direct && ftruncate(fd, (off_t)idx->size) < 0)
        rc = vmsh_error_set(err, -errno, "cannot size %s: %s", name, strerror(errno));
    vmsh_sink_free(sink);
    vmsh_file_index_free(idx);
    vmsh_lock_free(rl);
    return rc;
}

int vmsh_repo_restore_file(vmsh_repo *r, const char *spec, const char *name, const char *path,
                           bool overwrite, vmsh_progress_fn progress, void *opaque,
                           vmsh_restore_stats *stats, vmsh_error **err)
{
    if (!overwrite && access(path, F_OK) == 0)
        return vmsh_error_set(err, -EEXIST, "%s exists; not overwriting it", path);
    _cleanup_free_ char *tmp = NULL;
    _cleanup_free_ char *dir = vmsh_path_dirname(path);
    if (!dir || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        tmp = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    unlink(tmp); /* a leftover of an earlier run of this very pid number */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0600);
    if (fd < 0 && errno == EINVAL)
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", tmp, strerror(errno));
    int rc = vmsh_repo_restore_fd(r, spec, name, fd, progress, opaque, stats, err);
    if (rc == 0 && fsync(fd) < 0)
        rc = vmsh_error_set(err, -errno, "cannot fsync %s: %s", tmp, strerror(errno));
    if (close(fd) < 0 && rc == 0)
        rc = vmsh_error_set(err, -errno, "cannot close %s: %s", tmp, strerror(errno));
    if (rc == 0) {
        if (overwrite)
            rc = rename(tmp, path) < 0 ? -errno : 0;
        else
            rc = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) < 0 ? -errno : 0;
        if (rc < 0)
            rc = vmsh_error_set(err, rc, "cannot rename %s to %s: %s", tmp, path, strerror(-rc));
    }
    if (rc == 0)
        rc = vmsh_fs_fsync_dir(dir, err);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int vmsh_repo_read_file(vmsh_repo *r, const char *spec, const char *name, size_t max, char **out,
                        size_t *len, vmsh_error **err)
{
    char id[VMSH_BACKUP_ID_LEN + 1];
    vmsh_file_index *idx = NULL;
    vmsh_lock *rl = NULL;
    chunk_reader *cr = NULL;
    char *buf = NULL;
    int rc = repo_lock(r, "read", false, &rl, err);
    if (rc == 0)
        rc = open_file(r, spec, name, id, &idx, err);
    if (rc == 0 && idx->size > max)
        rc = vmsh_error_set(err, -EFBIG, "file %s of backup %s is too large (%llu bytes)", name, id,
                            (unsigned long long)idx->size);
    if (rc == 0)
        rc = repo_load_map(r, err);
    if (rc == 0)
        rc = chunk_reader_new(&cr, r, err);
    if (rc == 0 && !(buf = calloc(1, (size_t)idx->size + CHUNK_SIZE + 1)))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < idx->count; i++) {
        const index_entry *e = &idx->entries[i];
        chunk_loc loc;
        if ((rc = repo_locate_entry(r, e, idx->size, id, name, &loc, err)) < 0)
            break;
        if ((rc = chunk_reader_read(cr, &loc, (uint8_t *)buf + e->chunk * CHUNK_SIZE, err)) < 0)
            vmsh_error_prefix(err, "backup %s, file %s", id, name);
    }
    if (rc == 0) {
        buf[idx->size] = 0;
        *out = buf;
        buf = NULL;
        if (len)
            *len = (size_t)idx->size;
    }
    free(buf);
    chunk_reader_free(cr);
    vmsh_file_index_free(idx);
    vmsh_lock_free(rl);
    return rc;
}
