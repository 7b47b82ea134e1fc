/* pack.c - pack files: blobs followed by a table (docs/formats/repository.md,
 * "Pack file"). Packs are written sequentially through an aligned buffer with
 * O_DIRECT where the filesystem allows: buffered writes of fresh data cost
 * ~2 CPU-s per GiB here in page-cache work (../shared/lab/PERF.md), O_DIRECT
 * writes reach 2.3 GB/s. */
#include "internal.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ALIGN 4096
/* the buffer: the flush threshold and room for one more blob, 8 MiB in all
 * (four huge pages, repo_huge_alloc) */
#define WBUF_CAP        (8u << 20)
#define WBUF_FLUSH      (WBUF_CAP - (256u << 10))
#define PACK_MAX_CHUNKS 65536

static const char pack_magic[8] = {'V', 'M', 'S', 'H', 'P', 'A', 'C', 'K'};
static const char pack_end_magic[8] = {'V', 'M', 'S', 'H', 'P', 'E', 'N', 'D'};

char *pack_path(const char *repo, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/packs/%.2s/%s.pack", repo, name, name) < 0)
        return NULL;
    return p;
}

/* The backup's big buffers (the read-ahead ring, the pack buffers) are
 * read and written once per byte backed up: with 4 KiB pages every 1 MiB
 * costs 256 TLB misses in each pass, and the O_DIRECT writes pin the pack
 * buffer page by page (`gup_fast_fallback`, 1.4 % of a backup's CPU in
 * `perf`); 2 MiB pages make both a few hundred times fewer. Only a hint:
 * without huge pages the buffer works as before. */
#define HUGE_ALIGN (2u << 20)

void *repo_huge_alloc(size_t len)
{
    void *p = NULL;
    size_t round = (len + HUGE_ALIGN - 1) / HUGE_ALIGN * HUGE_ALIGN;
    if (posix_memalign(&p, HUGE_ALIGN, round) != 0)
        return NULL;
    madvise(p, round, MADV_HUGEPAGE);
    return p;
}

struct pack_writer {
    vmsh_repo *repo;
    crypto_ctx *crypto;
    uint64_t target;
    size_t flush_at; /* hand the buffer to the writer thread at this fill */
    /* the open pack (the store's streaming writer); NULL when none */
    repo_store_file *fd;
    bool direct;
    uint32_t pack_no;
    char name[33];
    char *final_path, *tmp_path, *dir;
    uint8_t *buf;   /* being filled */
    uint8_t *spare; /* being written by the I/O thread when busy */
    bool busy;
    /* the I/O thread: writes the spare buffer so that the threads that hash
     * and compress never wait on the disk */
    pthread_t io;
    bool io_started, io_quit;
    /* both buffers touched once by the I/O thread: fresh memory costs ~0.7
     * ms per MiB here in page faults, which the hashing threads would pay
     * under the lock (an incremental writes its first 16 MiB there) */
    bool warm;
    repo_store_file *job_fd;
    size_t job_len;
    uint64_t job_off;
    size_t fill;
    /* add and flush may be called from several threads: one lock; the
     * 8 MiB writes happen outside it so that the others keep computing */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int async_rc;
    char *async_msg;
    bool finishing;   /* writing the table: no unlocking until the pack is done */
    uint64_t written; /* bytes of the file already written (multiple of ALIGN) */
    chunk_loc *entries;
    size_t n, cap;
};

static int write_full_at(const vmsh_repo *r, repo_store_file *fd, const void *buf, size_t len,
                         uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        int64_t n = r->store->ops->pwrite(fd, p, len, off);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int write_error(pack_writer *w, int r, vmsh_error **err)
{
    return vmsh_error_set(err, r, "cannot write pack %s: %s%s", w->tmp_path, strerror(-r),
                          r == -ENOSPC ? " (the repository's filesystem is full)" : "");
}

static void wait_idle(pack_writer *w)
{
    while (w->busy)
        pthread_cond_wait(&w->cv, &w->mu);
}

/* Called with w->mu held. A threshold flush (all false) hands the full
 * buffer to this thread's write outside the lock and continues in the spare
 * one; the final flush (all true) pads to the alignment and writes inline. */
static int flush_aligned(pack_writer *w, bool all, vmsh_error **err)
{
    wait_idle(w);
    if (w->async_rc < 0)
        return vmsh_error_set(err, w->async_rc, "%s", w->async_msg ? w->async_msg : "write failed");
    size_t len = all ? (w->fill + ALIGN - 1) / ALIGN * ALIGN : w->fill / ALIGN * ALIGN;
    if (len == 0)
        return 0;
    if (len > w->fill)
        memset(w->buf + w->fill, 0, len - w->fill);
    size_t keep = len > w->fill ? 0 : w->fill - len;
    uint64_t off = w->written;
    if (all || w->finishing) {
        int r = write_full_at(w->repo, w->fd, w->buf, len, off);
        if (r < 0)
            return write_error(w, r, err);
        w->written += len;
        memmove(w->buf, w->buf + len, keep);
        w->fill = keep;
        return 0;
    }
    uint8_t *full = w->buf;
    w->buf = w->spare;
    w->spare = full;
    memcpy(w->buf, full + len, keep);
    w->fill = keep;
    w->written += len;
    w->busy = true;
    w->job_fd = w->fd;
    w->job_len = len;
    w->job_off = off;
    pthread_cond_broadcast(&w->cv);
    return 0;
}

static void *io_main(void *arg)
{
    pack_writer *w = arg;
    memset(w->buf, 0, WBUF_CAP);
    memset(w->spare, 0, WBUF_CAP);
    pthread_mutex_lock(&w->mu);
    w->warm = true;
    pthread_cond_broadcast(&w->cv);
    for (;;) {
        while (!w->busy && !w->io_quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->busy && w->io_quit)
            break;
        repo_store_file *fd = w->job_fd;
        const uint8_t *buf = w->spare;
        size_t len = w->job_len;
        uint64_t off = w->job_off;
        unsigned delay = w->repo->pack_io_delay_us;
        pthread_mutex_unlock(&w->mu);
        if (delay) /* tests: a slow disk widens every race with this thread */
            usleep(delay);
        int r = write_full_at(w->repo, fd, buf, len, off);
        pthread_mutex_lock(&w->mu);
        if (r < 0 && w->async_rc == 0) {
            vmsh_error *e = NULL;
            write_error(w, r, &e);
            w->async_rc = r;
            w->async_msg = e ? strdup(e->message) : NULL;
            vmsh_error_free(e);
        }
        w->busy = false;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int append(pack_writer *w, const void *data, size_t len, vmsh_error **err)
{
    const uint8_t *p = data;
    while (len > 0) {
        size_t room = WBUF_CAP - w->fill;
        size_t n = len < room ? len : room;
        memcpy(w->buf + w->fill, p, n);
        w->fill += n;
        p += n;
        len -= n;
        if (w->fill >= w->flush_at) {
            int r = flush_aligned(w, false, err);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

int pack_writer_new(pack_writer **out, vmsh_repo *r, vmsh_error **err)
{
    pack_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    w->repo = r;
    w->fd = NULL;
    /* a test's size, else the store's (RADOS: smaller packs), else 64 MiB */
    w->target = r->pack_target          ? r->pack_target
                : r->store->pack_target ? r->store->pack_target
                                        : PACK_TARGET_DEFAULT;
    w->flush_at = r->pack_flush && r->pack_flush <= WBUF_FLUSH ? r->pack_flush : WBUF_FLUSH;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (!(w->buf = repo_huge_alloc(WBUF_CAP)) || !(w->spare = repo_huge_alloc(WBUF_CAP))) {
        free(w->buf);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return vmsh_error_set(err, -ENOMEM, "out of memory for the pack buffer");
    }
    int rc = crypto_ctx_new(&w->crypto, &r->keys, err);
    if (rc < 0) {
        pack_writer_free(w);
        return rc;
    }
    if (pthread_create(&w->io, NULL, io_main, w) != 0) {
        pack_writer_free(w);
        return vmsh_error_set(err, -EAGAIN, "cannot start the pack writer thread");
    }
    w->io_started = true;
    *out = w;
    return 0;
}

static void close_open(pack_writer *w, bool remove_tmp)
{
    /* after a commit the store has closed the file already */
    if (w->fd && remove_tmp)
        w->repo->store->ops->abort(w->fd);
    else if (w->fd)
        w->repo->store->ops->close(w->fd);
    w->fd = NULL;
    free(w->tmp_path);
    free(w->final_path);
    free(w->dir);
    w->tmp_path = w->final_path = w->dir = NULL;
    w->n = 0;
    w->fill = 0;
    w->written = 0;
}

static int start_pack(pack_writer *w, vmsh_error **err)
{
    uint8_t raw[16];
    if (crypto_random(raw, sizeof(raw)) < 0)
        return vmsh_error_set(err, -EIO, "cannot get random bytes for a pack name");
    vmsh_hex(raw, sizeof(raw), w->name);
    w->final_path = pack_path(w->repo->path, w->name);
    w->dir = w->final_path ? vmsh_path_dirname(w->final_path) : NULL;
    if (!w->final_path || !w->dir ||
        asprintf(&w->tmp_path, "%s.tmp.%ld", w->final_path, (long)getpid()) < 0) {
        w->tmp_path = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* the store makes the fan-out directory and the temporary file */
    const repo_store_ops *ops = w->repo->store->ops;
    const char *rel = repo_rel(w->repo, w->final_path);
    w->direct = true;
    vmsh_error *e = NULL;
    int r = ops->create(w->repo->store, rel, REPO_STORE_DIRECT, &w->fd, &e);
    if (r == -EINVAL && !e) {
        /* tmpfs and some others refuse O_DIRECT (the store says so without a message) */
        w->direct = false;
        r = ops->create(w->repo->store, rel, 0, &w->fd, &e);
    }
    if (r < 0) {
        w->fd = NULL;
        vmsh_error_propagate(err, &e);
        return r;
    }
    uint8_t hdr[PACK_HEADER_LEN] = {0};
    memcpy(hdr, pack_magic, 8);
    le32_put(hdr + 8, 1);
    le32_put(hdr + 12, w->repo->keys.encrypted ? 1 : 0);
    memcpy(w->buf, hdr, sizeof(hdr));
    w->fill = sizeof(hdr);
    w->written = 0;
    w->n = 0;
    /* Registered now so that chunks can name their pack while in flight; the
     * pack is invisible to other processes until renamed. */
    r = repo_add_pack(w->repo, w->name, 0, 0);
    if (r < 0)
        return vmsh_error_set(err, r, "out of memory");
    w->pack_no = (uint32_t)r;
    return 0;
}

static int flush_locked(pack_writer *w, vmsh_error **err);

/* With w->mu held: until the I/O thread has touched the buffers, nobody
 * else may write them. */
static void wait_warm(pack_writer *w)
{
    while (!w->warm)
        pthread_cond_wait(&w->cv, &w->mu);
}

static int add_locked(pack_writer *w, chunk_loc *loc, const void *blob, vmsh_error **err)
{
    int r;
    wait_warm(w);
    /* Wait for the writer thread now if this blob will fill the buffer: from
     * the moment a blob gets its offset until its table entry is recorded the
     * lock must stay held, or another thread could finish the pack in
     * between and leave the blob out of the table. */
    while (w->busy && w->fill + loc->stored_len >= w->flush_at)
        pthread_cond_wait(&w->cv, &w->mu);
    if (w->async_rc < 0)
        return vmsh_error_set(err, w->async_rc, "%s", w->async_msg ? w->async_msg : "write failed");
    if (!w->fd && (r = start_pack(w, err)) < 0) {
        close_open(w, true);
        return r;
    }
    if (w->n == w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 1024;
        chunk_loc *ne = vmsh_realloc_array(w->entries, ncap, sizeof(*ne));
        if (!ne)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        w->entries = ne;
        w->cap = ncap;
    }
    loc->offset = w->written + w->fill;
    loc->pack = w->pack_no;
    r = append(w, blob, loc->stored_len, err);
    if (r < 0)
        return r;
    w->entries[w->n++] = *loc;
    if (w->written + w->fill >= w->target || w->n >= PACK_MAX_CHUNKS)
        return flush_locked(w, err);
    return 0;
}

int pack_writer_add(pack_writer *w, chunk_loc *loc, const void *blob, vmsh_error **err)
{
    pthread_mutex_lock(&w->mu);
    int r = add_locked(w, loc, blob, err);
    pthread_mutex_unlock(&w->mu);
    return r;
}

int pack_writer_flush(pack_writer *w, vmsh_error **err)
{
    pthread_mutex_lock(&w->mu);
    int r = flush_locked(w, err);
    pthread_mutex_unlock(&w->mu);
    return r;
}

static int flush_locked(pack_writer *w, vmsh_error **err)
{
    wait_idle(w);
    if (!w->fd)
        return 0;
    bool enc = w->repo->keys.encrypted;
    size_t plain_len = w->n * PACK_ENTRY_LEN;
    size_t table_len = plain_len + (enc ? GCM_OVERHEAD : 0);
    _cleanup_free_ uint8_t *plain = malloc(plain_len ? plain_len : 1);
    _cleanup_free_ uint8_t *sealed = enc ? malloc(table_len) : NULL;
    if (!plain || (enc && !sealed))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < w->n; i++) {
        uint8_t *e = plain + i * PACK_ENTRY_LEN;
        memcpy(e, w->entries[i].id, ID_LEN);
        le64_put(e + 32, w->entries[i].offset);
        le32_put(e + 40, w->entries[i].stored_len);
        le32_put(e + 44, w->entries[i].raw_len);
        le32_put(e + 48, w->entries[i].kind);
        le32_put(e + 52, 0);
    }
    uint8_t hdr[PACK_HEADER_LEN] = {0};
    memcpy(hdr, pack_magic, 8);
    le32_put(hdr + 8, 1);
    le32_put(hdr + 12, enc ? 1 : 0);
    if (enc && crypto_seal(w->crypto, plain, plain_len, hdr, sizeof(hdr), sealed) < 0)
        return vmsh_error_set(err, -EIO, "cannot encrypt a pack table");
    const uint8_t *table = enc ? sealed : plain;
    uint64_t table_off = w->written + w->fill;
    w->finishing = true;
    uint8_t footer[PACK_FOOTER_LEN];
    le64_put(footer, table_off);
    le64_put(footer + 8, table_len);
    le32_put(footer + 16, (uint32_t)w->n);
    le32_put(footer + 20, 1);
    crypto_sha256(table, table_len, footer + 24);
    memcpy(footer + 56, pack_end_magic, 8);
    int r = append(w, table, table_len, err);
    if (r == 0)
        r = append(w, footer, sizeof(footer), err);
    uint64_t total = w->written + w->fill;
    if (r == 0)
        r = flush_aligned(w, true, err);
    /* size, fsync, rename, fsync the directory and packs/: the store's
     * commit, which closes the file whatever it returns */
    if (r == 0) {
        r = w->repo->store->ops->commit(w->fd, total, err);
        w->fd = NULL;
    }
    w->finishing = false;
    if (r < 0) {
        close_open(w, true);
        return r;
    }
    pthread_mutex_lock(&w->repo->lock);
    w->repo->packs[w->pack_no].size = total;
    w->repo->packs[w->pack_no].n_chunks = (uint32_t)w->n;
    pthread_mutex_unlock(&w->repo->lock);
    close_open(w, false);
    return 0;
}

void pack_writer_free(pack_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    wait_idle(w);
    w->io_quit = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->io_started)
        pthread_join(w->io, NULL);
    close_open(w, true);
    crypto_ctx_free(w->crypto);
    free(w->entries);
    free(w->buf);
    free(w->spare);
    free(w->async_msg);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static int pread_full(const vmsh_repo *r, repo_store_file *fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        int64_t n = r->store->ops->pread(fd, p, len, off);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ENODATA;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int read_table(vmsh_repo *rp, repo_store_file *fd, const char *path, crypto_ctx *c,
                      bool encrypted, chunk_loc **entries, uint32_t *n_out, uint64_t *file_size,
                      vmsh_error **err);

int pack_read_table(vmsh_repo *r, const char *path, crypto_ctx *c, bool encrypted,
                    chunk_loc **entries, uint32_t *n_out, uint64_t *file_size, vmsh_error **err)
{
    repo_store_file *fd = NULL;
    vmsh_error *e = NULL;
    int rc = r->store->ops->open_file(r->store, repo_rel(r, path), 0, &fd, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return vmsh_error_set(err, -EBADMSG, "cannot open pack %s: %s", path, strerror(ENOENT));
    }
    if (rc < 0) {
        vmsh_error_propagate(err, &e);
        return rc;
    }
    rc = read_table(r, fd, path, c, encrypted, entries, n_out, file_size, err);
    r->store->ops->close(fd);
    return rc;
}

static int read_table(vmsh_repo *rp, repo_store_file *fd, const char *path, crypto_ctx *c,
                      bool encrypted, chunk_loc **entries, uint32_t *n_out, uint64_t *file_size,
                      vmsh_error **err)
{
    repo_store_stat st;
    if (rp->store->ops->fstat(fd, &st) < 0)
        return vmsh_error_set(err, -errno, "cannot stat %s: %s", path, strerror(errno));
    uint64_t size = st.size;
    *file_size = size;
    if (size < PACK_HEADER_LEN + PACK_FOOTER_LEN)
        return vmsh_error_set(err, -EBADMSG, "pack %s is truncated (%llu bytes)", path,
                              (unsigned long long)size);
    uint8_t hdr[PACK_HEADER_LEN], footer[PACK_FOOTER_LEN];
    int r = pread_full(rp, fd, hdr, sizeof(hdr), 0);
    if (r == 0)
        r = pread_full(rp, fd, footer, sizeof(footer), size - PACK_FOOTER_LEN);
    if (r < 0)
        return vmsh_error_set(err, r == -ENODATA ? -EBADMSG : r, "cannot read pack %s: %s", path,
                              strerror(-r));
    if (memcmp(hdr, pack_magic, 8) != 0 || memcmp(footer + 56, pack_end_magic, 8) != 0)
        return vmsh_error_set(err, -EBADMSG,
                              "pack %s is damaged or truncated (bad header or footer)", path);
    if (le32_get(hdr + 8) != 1 || le32_get(footer + 20) != 1)
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "pack %s has format version %u, newer than this vmshadow "
                              "understands (1); upgrade vmshadow",
                              path, le32_get(hdr + 8));
    uint32_t flags = le32_get(hdr + 12);
    if (flags == 1 && !encrypted)
        return vmsh_error_set(err, -EKEYREJECTED,
                              "pack %s is encrypted but the repository's config says unencrypted: "
                              "the config was altered (encryption removed) or the pack comes "
                              "from another repository; refusing",
                              path);
    if (flags > 1 || (flags == 1) != encrypted)
        return vmsh_error_set(err, -EBADMSG, "pack %s: flags %#x do not match the repository", path,
                              flags);
    uint64_t toff = le64_get(footer), tlen = le64_get(footer + 8);
    uint32_t n = le32_get(footer + 16);
    uint64_t want = (uint64_t)n * PACK_ENTRY_LEN + (encrypted ? GCM_OVERHEAD : 0);
    /* size ≥ header + footer above; written so that nothing wraps (a
     * table offset near 2^64 plus its length must not come out equal) */
    uint64_t end = size - PACK_FOOTER_LEN;
    if (n > PACK_MAX_CHUNKS || tlen != want || toff < PACK_HEADER_LEN || toff > end ||
        tlen != end - toff)
        return vmsh_error_set(err, -EBADMSG, "pack %s: table bounds are damaged", path);
    _cleanup_free_ uint8_t *table = malloc(tlen ? tlen : 1);
    _cleanup_free_ uint8_t *plain = NULL;
    if (!table)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    r = pread_full(rp, fd, table, tlen, toff);
    if (r < 0)
        return vmsh_error_set(err, r == -ENODATA ? -EBADMSG : r, "cannot read pack %s: %s", path,
                              strerror(-r));
    uint8_t h[32];
    crypto_sha256(table, tlen, h);
    if (memcmp(h, footer + 24, 32) != 0)
        return vmsh_error_set(err, -EBADMSG, "pack %s: table checksum mismatch (damaged)", path);
    const uint8_t *t = table;
    if (encrypted) {
        plain = malloc(tlen - GCM_OVERHEAD + 1);
        if (!plain)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        if (crypto_open(c, table, tlen, hdr, sizeof(hdr), plain) < 0)
            return vmsh_error_set(err, -EBADMSG, "pack %s: table fails authentication", path);
        t = plain;
    }
    chunk_loc *e = vmsh_calloc_array(n ? n : 1, sizeof(*e));
    if (!e)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = t + (size_t)i * PACK_ENTRY_LEN;
        memcpy(e[i].id, p, ID_LEN);
        e[i].offset = le64_get(p + 32);
        e[i].stored_len = le32_get(p + 40);
        e[i].raw_len = le32_get(p + 44);
        e[i].kind = le32_get(p + 48);
        if (e[i].offset < PACK_HEADER_LEN || e[i].stored_len == 0 ||
            e[i].stored_len > 2 * CHUNK_SIZE || e[i].offset > toff ||
            e[i].stored_len > toff - e[i].offset || e[i].raw_len == 0 ||
            e[i].raw_len > CHUNK_SIZE || e[i].kind > BLOB_ZSTD) {
            free(e);
            return vmsh_error_set(err, -EBADMSG, "pack %s: table entry %u is damaged", path, i);
        }
    }
    *entries = e;
    *n_out = n;
    return 0;
}
