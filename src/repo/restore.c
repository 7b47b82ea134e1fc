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

/* 32 entries: 2 MiB of image per batch, the unit of every stage. Every
 * slot's buffers are fresh memory once (~2.2 CPU-s per GiB here, PERF.md):
 * 64 entries cost ~0.13 CPU-s more per restore in page clearing (perf) for
 * no fewer waits. */
#define BATCH 32
/* Blobs of one pack closer than this are read in one request (the bytes
 * between are cheaper than another request, on a disk as over HTTP). */
#define MERGE_GAP (64u << 10)
/* Chunks are located a window at a time, in the order of their IDs: the
 * lookups of neighbouring IDs land in the chunk index block the one before
 * read (chunkindex.c's memo). 8192 entries: 512 MiB of image, 448 KiB of
 * locations per window, two windows at once. */
#define WIN 8192
/* fetchers and writers: each waits on the storage most of its time */
#define FETCHERS 2
#define WRITERS  2

/* The restore is a pipeline of batches through slots (issue 27 point 3,
 * bench/README.md): fetchers locate a batch's chunks and read their blobs
 * in as few requests as the packs allow, decoders (one per CPU) decompress
 * and check every chunk straight into the write buffer, writers write the
 * runs of the batch. The profile of the worker-per-batch restore before
 * this showed each worker blocked on its synchronous O_DIRECT reads and
 * writes three quarters of its time (perf sched): four workers kept one of
 * two cores busy. Decoders here never wait on the storage while a fetched
 * batch is ready. */
enum { SLOT_FREE, SLOT_FETCHING, SLOT_FETCHED, SLOT_DECODING, SLOT_DECODED, SLOT_WRITING };

typedef struct rslot {
    int state;
    size_t batch; /* entries [batch * BATCH, + n) */
    size_t n;
    chunk_loc loc[BATCH];
    uint32_t at[BATCH]; /* where entry k's blob starts in fbuf */
    uint8_t *fbuf;      /* the blobs as read; fcap bytes, 4096-aligned */
    size_t fcap;
    uint8_t *obuf; /* BATCH * CHUNK_SIZE: the decoded chunks, in file order */
} rslot;

typedef struct rjob {
    vmsh_repo *r;
    const vmsh_file_index *idx;
    const char *backup, *file;
    const vmsh_sink *sink;
    bool direct; /* the packs are read with O_DIRECT: aligned requests */
    size_t n_batches;
    pthread_mutex_t mu; /* everything below */
    pthread_cond_t cv;
    rslot *slots;
    size_t n_slots;
    size_t next_fetch, next_decode, next_write; /* batches claimed by each stage */
    chunk_loc *wloc[2];   /* windows w % 2: the locations of entries [w * WIN, + WIN) */
    uint32_t *worder;     /* the resolver's sort order (WIN) */
    size_t resolved;      /* windows located */
    size_t win_copied[2]; /* batches that took their locations out of window w % 2 */
    size_t batches_done;
    bool failed;
    uint64_t written, chunks;
    vmsh_error *err;
    int code;
} rjob;

typedef struct rthread {
    rjob *j;
    pthread_t thread;
    chunk_reader *cr; /* fetchers: open packs; decoders: zstd and hash contexts */
    void *(*main)(void *);
} rthread;

/* Called with j->mu held. */
static void rfail_locked(rjob *j, int code, vmsh_error **e)
{
    if (!j->err) {
        j->code = code;
        vmsh_error_propagate(&j->err, e);
    } else {
        vmsh_error_free(*e);
        *e = NULL;
    }
    j->failed = true;
    pthread_cond_broadcast(&j->cv);
}

static void rfail(rjob *j, int code, vmsh_error **e)
{
    pthread_mutex_lock(&j->mu);
    rfail_locked(j, code, e);
    pthread_mutex_unlock(&j->mu);
}

/* Waits for a slot in state `want` holding batch `batch` (SIZE_MAX: any
 * batch, the lowest first), under j->mu; NULL when the job failed. */
static rslot *wait_slot(rjob *j, int want, size_t batch)
{
    for (;;) {
        if (j->failed)
            return NULL;
        rslot *best = NULL;
        for (size_t i = 0; i < j->n_slots; i++) {
            rslot *s = &j->slots[i];
            if (s->state == want && (batch == SIZE_MAX || s->batch == batch) &&
                (!best || s->batch < best->batch))
                best = s;
        }
        if (best)
            return best;
        pthread_cond_wait(&j->cv, &j->mu);
    }
}

static int cmp_by_place(const void *a, const void *b, void *opaque)
{
    const chunk_loc *l = opaque;
    const chunk_loc *x = &l[*(const uint8_t *)a], *y = &l[*(const uint8_t *)b];
    if (x->pack != y->pack)
        return x->pack < y->pack ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* A slot's read buffer: room for a batch of incompressible chunks and
 * the gaps and alignment of a few requests, grown (rarely) only for a
 * batch that needs more, then reused for the whole restore. */
static int grow_fbuf(rslot *s, size_t need, vmsh_error **err)
{
    if (need <= s->fcap)
        return 0;
    size_t cap = need > BATCH * (size_t)CHUNK_SIZE ? need : BATCH * (size_t)CHUNK_SIZE;
    cap = (cap + (256u << 10) + 65535) / 65536 * 65536;
    free(s->fbuf);
    s->fcap = 0;
    if (posix_memalign((void **)&s->fbuf, 2u << 20, cap) != 0) {
        s->fbuf = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    madvise(s->fbuf, cap, MADV_HUGEPAGE);
    s->fcap = cap;
    return 0;
}

/* The request that reads the blobs order[a..b) of one pack, neighbours
 * within MERGE_GAP merged: returns b, *to the end of the last blob. */
static size_t merge_run(const rslot *s, const uint8_t *order, size_t a, uint64_t *to)
{
    const chunk_loc *l = &s->loc[order[a]];
    *to = l->offset + l->stored_len;
    size_t b = a + 1;
    for (; b < s->n; b++) {
        const chunk_loc *m = &s->loc[order[b]];
        if (m->pack != l->pack || m->offset > *to + MERGE_GAP)
            break;
        if (m->offset + m->stored_len > *to)
            *to = m->offset + m->stored_len;
    }
    return b;
}

/* Reads the blobs of the slot's batch (located by the resolver): sorted by
 * pack and offset, neighbours (gaps under MERGE_GAP) in one request each. */
static int fetch_batch(rthread *t, rslot *s, vmsh_error **err)
{
    rjob *j = t->j;
    const index_entry *en = &j->idx->entries[s->batch * BATCH];
    uint8_t order[BATCH];
    for (size_t k = 0; k < s->n; k++)
        order[k] = (uint8_t)k;
    qsort_r(order, s->n, 1, cmp_by_place, s->loc);
    /* the requests: [from, to) of a pack, aligned for O_DIRECT */
    uint64_t align = j->direct ? 4096 : 1;
    size_t need = 0;
    for (size_t a = 0; a < s->n;) {
        const chunk_loc *l = &s->loc[order[a]];
        uint64_t from = l->offset / align * align, to;
        size_t b = merge_run(s, order, a, &to);
        need += (size_t)((to + align - 1) / align * align - from);
        a = b;
    }
    int rc = grow_fbuf(s, need ? need : 4096, err);
    if (rc < 0)
        return rc;
    size_t pos = 0;
    for (size_t a = 0; a < s->n;) {
        const chunk_loc *l = &s->loc[order[a]];
        uint64_t from = l->offset / align * align, to;
        size_t b = merge_run(s, order, a, &to);
        size_t len = (size_t)((to + align - 1) / align * align - from);
        int64_t got = chunk_reader_fetch(t->cr, l->pack, from, len, s->fbuf + pos, err);
        if (got < 0)
            return vmsh_error_prefix(err, "backup %s, file %s, chunk %llu", j->backup, j->file,
                                     (unsigned long long)en[order[a]].chunk);
        for (size_t c = a; c < b; c++) {
            const chunk_loc *m = &s->loc[order[c]];
            if (m->offset + m->stored_len > from + (uint64_t)got) {
                char pname[33];
                pthread_mutex_lock(&j->r->lock);
                memcpy(pname, j->r->packs[m->pack].name, sizeof(pname));
                pthread_mutex_unlock(&j->r->lock);
                return vmsh_error_set(
                    err, -EBADMSG, "backup %s, file %s, chunk %llu: pack %s is truncated",
                    j->backup, j->file, (unsigned long long)en[order[c]].chunk, pname);
            }
            s->at[order[c]] = (uint32_t)(pos + (m->offset - from));
        }
        pos += len;
        a = b;
    }
    return 0;
}

static void *fetcher_main(void *arg)
{
    rthread *t = arg;
    rjob *j = t->j;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (j->next_fetch >= j->n_batches)
            break;
        rslot *s = wait_slot(j, SLOT_FREE, SIZE_MAX);
        /* the other fetcher may have claimed the last batch meanwhile */
        if (!s || j->next_fetch >= j->n_batches)
            break;
        s->batch = j->next_fetch++;
        s->state = SLOT_FETCHING;
        size_t first = s->batch * BATCH;
        s->n = j->idx->count - first < BATCH ? j->idx->count - first : BATCH;
        /* the batch's locations, once the resolver has its window */
        size_t w = first / WIN;
        while (!j->failed && j->resolved <= w)
            pthread_cond_wait(&j->cv, &j->mu);
        if (j->failed)
            break;
        memcpy(s->loc, &j->wloc[w % 2][first - w * WIN], s->n * sizeof(*s->loc));
        j->win_copied[w % 2]++;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
        vmsh_error *e = NULL;
        int rc = fetch_batch(t, s, &e);
        pthread_mutex_lock(&j->mu);
        if (rc < 0) {
            rfail_locked(j, rc, &e);
            break;
        }
        s->state = SLOT_FETCHED;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* The decoders' and the writers' loop: a slot in state `from` (any batch)
 * is marked `busy` while `work` runs on it unlocked, then `to`; `*next`
 * counts the batches the stage has taken, so each thread of it stops once
 * all are. A failure fails the whole job. */
static void run_stage(rthread *t, size_t *next, int from, int busy, int to,
                      int (*work)(rthread *, rslot *, vmsh_error **))
{
    rjob *j = t->j;
    pthread_mutex_lock(&j->mu);
    while (*next < j->n_batches) {
        (*next)++;
        rslot *s = wait_slot(j, from, SIZE_MAX);
        if (!s)
            break;
        s->state = busy;
        pthread_mutex_unlock(&j->mu);
        vmsh_error *e = NULL;
        int rc = work(t, s, &e);
        pthread_mutex_lock(&j->mu);
        if (rc < 0) {
            rfail_locked(j, rc, &e);
            break;
        }
        s->state = to;
        if (to == SLOT_FREE)
            j->batches_done++; /* written: the slot takes the next batch */
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
}

/* Checks and decompresses a fetched batch into its write buffer. */
static int decode_batch(rthread *t, rslot *s, vmsh_error **err)
{
    rjob *j = t->j;
    const index_entry *en = &j->idx->entries[s->batch * BATCH];
    const chunk_loc *locs[BATCH];
    const uint8_t *outs[BATCH];
    size_t k;
    int rc = 0;
    for (k = 0; k < s->n; k++) {
        /* the batch's chunk k at its place in the write buffer; a chunk
         * of the file's last 64 KiB may be short */
        uint8_t *out = s->obuf + k * (size_t)CHUNK_SIZE;
        locs[k] = &s->loc[k];
        outs[k] = out;
        if ((rc = chunk_reader_unpack(t->cr, locs[k], s->fbuf + s->at[k], out, err)) < 0)
            break;
    }
    if (rc == 0) /* then every chunk against its ID, the batch at once */
        rc = chunk_reader_check(t->cr, s->n, locs, outs, &k, err);
    if (rc < 0)
        vmsh_error_prefix(err, "backup %s, file %s, chunk %llu", j->backup, j->file,
                          (unsigned long long)en[k].chunk);
    return rc;
}

static void *decoder_main(void *arg)
{
    rthread *t = arg;
    run_stage(t, &t->j->next_decode, SLOT_FETCHED, SLOT_DECODING, SLOT_DECODED, decode_batch);
    return NULL;
}

/* Writes `count` decoded chunks of the slot, from its k-th on, which are
 * consecutive in the file, in one call: O_DIRECT writes are synchronous,
 * so 64 KiB writes would wait on the device 40,000 times for a 4 GiB
 * image; runs of up to 4 MiB do not. */
static int flush_run(rjob *j, rslot *s, size_t k, size_t count, vmsh_error **err)
{
    if (count == 0)
        return 0;
    uint64_t first = j->idx->entries[s->batch * BATCH + k].chunk;
    uint8_t *buf = s->obuf + k * (size_t)CHUNK_SIZE;
    uint64_t off = first * CHUNK_SIZE;
    size_t len = (count - 1) * (size_t)CHUNK_SIZE;
    uint64_t last_off = off + len;
    len += j->idx->size - last_off < CHUNK_SIZE ? (size_t)(j->idx->size - last_off) : CHUNK_SIZE;
    size_t data = len;
    if (j->sink->direct && len % 4096) {
        /* O_DIRECT writes whole blocks: pad; the final ftruncate trims. */
        size_t padded = (len + 4095) / 4096 * 4096;
        memset(buf + len, 0, padded - len);
        len = padded;
    }
    size_t step = j->sink->max_write ? j->sink->max_write : len;
    for (size_t done = 0; done < len; done += step) {
        size_t n = len - done < step ? len - done : step;
        int rc = j->sink->ops->pwrite(j->sink->impl, buf + done, n, off + done, err);
        if (rc < 0)
            return vmsh_error_prefix(err, "restoring %s", j->file);
    }
    pthread_mutex_lock(&j->mu);
    j->written += data;
    j->chunks += count;
    pthread_mutex_unlock(&j->mu);
    return 0;
}

static int write_batch(rjob *j, rslot *s, vmsh_error **err)
{
    const index_entry *en = &j->idx->entries[s->batch * BATCH];
    size_t start = 0;
    for (size_t k = 1; k <= s->n; k++)
        if (k == s->n || en[k].chunk != en[k - 1].chunk + 1) {
            int rc = flush_run(j, s, start, k - start, err);
            if (rc < 0)
                return rc;
            start = k;
        }
    return 0;
}

static int write_stage(rthread *t, rslot *s, vmsh_error **err)
{
    return write_batch(t->j, s, err);
}

static void *writer_main(void *arg)
{
    rthread *t = arg;
    run_stage(t, &t->j->next_write, SLOT_DECODED, SLOT_WRITING, SLOT_FREE, write_stage);
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

static int cmp_by_id(const void *a, const void *b, void *opaque)
{
    const index_entry *en = opaque;
    return memcmp(en[*(const uint32_t *)a].id, en[*(const uint32_t *)b].id, ID_LEN);
}

/* Locates the chunks of window w into j->wloc[w % 2], in ID order. */
static int resolve_window(rjob *j, size_t w, vmsh_error **err)
{
    size_t first = w * WIN;
    size_t n = j->idx->count - first < WIN ? j->idx->count - first : WIN;
    const index_entry *en = &j->idx->entries[first];
    for (size_t i = 0; i < n; i++)
        j->worder[i] = (uint32_t)i;
    qsort_r(j->worder, n, sizeof(*j->worder), cmp_by_id, (void *)en);
    chunk_loc *out = j->wloc[w % 2];
    for (size_t i = 0; i < n; i++) {
        uint32_t k = j->worder[i];
        int rc = repo_locate_entry(j->r, &en[k], j->idx->size, j->backup, j->file, &out[k], err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The batches whose locations window w holds. */
static size_t window_batches(const rjob *j, size_t w)
{
    size_t first = w * WIN;
    size_t n = j->idx->count - first < WIN ? j->idx->count - first : WIN;
    return (n + BATCH - 1) / BATCH;
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
    j.n_batches = (idx->count + BATCH - 1) / BATCH;
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    /* one decoder per CPU (or as the caller chose); every stage has a slot
     * to work on while the others hold theirs */
    unsigned nd = repo_threads(r);
    unsigned nt = FETCHERS + nd + WRITERS;
    j.n_slots = nt;
    j.direct = true;
    rthread *ts = vmsh_calloc_array(nt, sizeof(*ts));
    j.slots = vmsh_calloc_array(j.n_slots, sizeof(*j.slots));
    size_t wn = idx->count < WIN ? idx->count : WIN;
    j.wloc[0] = vmsh_calloc_array(wn ? wn : 1, sizeof(chunk_loc));
    j.wloc[1] = vmsh_calloc_array(wn ? wn : 1, sizeof(chunk_loc));
    j.worder = vmsh_calloc_array(wn ? wn : 1, sizeof(uint32_t));
    int rc = ts && j.slots && j.wloc[0] && j.wloc[1] && j.worder
                 ? 0
                 : vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < j.n_slots; i++) {
        /* 2 MiB aligned and backed by huge pages where the kernel has them
         * (madvise mode): every O_DIRECT write pins its pages, and 4 KiB
         * pages cost 1024 pins per 4 MiB batch (gup_fast in perf) */
        if (posix_memalign((void **)&j.slots[i].obuf, 2u << 20, BATCH * CHUNK_SIZE) != 0) {
            j.slots[i].obuf = NULL;
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        } else {
            madvise(j.slots[i].obuf, BATCH * CHUNK_SIZE, MADV_HUGEPAGE);
        }
    }
    unsigned started = 0;
    for (unsigned i = 0; rc == 0 && i < nt; i++) {
        rthread *t = &ts[i];
        t->j = &j;
        t->main = i < FETCHERS ? fetcher_main : i < FETCHERS + nd ? decoder_main : writer_main;
        if (t->main != writer_main && (rc = chunk_reader_new(&t->cr, r, err)) < 0)
            break;
        if (t->main == fetcher_main)
            chunk_reader_set_direct(t->cr, true);
        if (pthread_create(&t->thread, NULL, t->main, t) != 0) {
            rc = vmsh_error_set(err, -EAGAIN, "cannot start a restore thread");
            break;
        }
        started = i + 1;
    }
    if (rc < 0) {
        vmsh_error *e = NULL;
        rfail(&j, rc, &e); /* stops the threads started */
    }
    /* The caller's thread locates the chunks, a window ahead of the
     * fetchers (a window's buffer is reused once every batch of the window
     * two before took its locations), and reports progress as batches are
     * written. */
    pthread_mutex_lock(&j.mu);
    size_t reported = 0, n_wins = (idx->count + WIN - 1) / WIN, next_win = 0;
    while (!j.failed && j.batches_done < j.n_batches) {
        if (next_win < n_wins &&
            (next_win < 2 || j.win_copied[next_win % 2] == window_batches(&j, next_win - 2))) {
            j.win_copied[next_win % 2] = 0;
            pthread_mutex_unlock(&j.mu);
            vmsh_error *e = NULL;
            int wrc = resolve_window(&j, next_win, &e);
            pthread_mutex_lock(&j.mu);
            if (wrc < 0) {
                rfail_locked(&j, wrc, &e);
                break;
            }
            j.resolved = ++next_win;
            pthread_cond_broadcast(&j.cv);
            continue;
        }
        pthread_cond_wait(&j.cv, &j.mu);
        if (progress && j.batches_done != reported) {
            reported = j.batches_done;
            size_t d = reported * BATCH;
            pthread_mutex_unlock(&j.mu);
            progress(opaque, (d < idx->count ? d : idx->count) * (uint64_t)CHUNK_SIZE,
                     idx->count * (uint64_t)CHUNK_SIZE);
            pthread_mutex_lock(&j.mu);
        }
    }
    pthread_mutex_unlock(&j.mu);
    for (unsigned i = 0; i < started; i++)
        pthread_join(ts[i].thread, NULL);
    for (unsigned i = 0; ts && i < nt; i++)
        chunk_reader_free(ts[i].cr);
    for (size_t i = 0; j.slots && i < j.n_slots; i++) {
        free(j.slots[i].obuf);
        free(j.slots[i].fbuf);
    }
    free(j.slots);
    free(j.wloc[0]);
    free(j.wloc[1]);
    free(j.worder);
    free(ts);
    pthread_cond_destroy(&j.cv);
    pthread_mutex_destroy(&j.mu);
    if (j.err) {
        vmsh_error_propagate(err, &j.err);
        return j.code;
    }
    if (rc < 0)
        return rc;
    if (!sink->reads_zero && (rc = zero_gaps(idx, sink, file, err)) < 0)
        return rc;
    if (stats) {
        stats->bytes_written = j.written;
        stats->chunks = j.chunks;
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
    int rc = repo_read_begin(r, rl, err);
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
    repo_read_end(r, rl);
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
    repo_read_end(r, rl);
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
    int rc = repo_read_begin(r, &rl, err);
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
    repo_read_end(r, rl);
    return rc;
}
