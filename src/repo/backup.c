/* backup.c - pending backups: reading sources through the two-core pipeline,
 * storing chunks in packs, writing indexes, and the manifest last
 * (docs/formats/repository.md, "Invariants").
 *
 * The pipeline (issue 27 point 5): the calling thread walks the source's
 * extents and turns the data extents into runs of up to 16 chunks (1 MiB).
 * Two reader threads read the runs in order into a ring of 1 MiB slots, ahead
 * of the workers (the calling thread and N-1 threads), which take the runs in
 * the same order: skip zero chunks, hash, look the ID up, and only for a new
 * chunk compress, encrypt and append it to the pack, whose own I/O thread
 * writes it. So reading, hashing and compression and writing overlap: a
 * worker never waits for the disk or the NBD server while a slot ahead of it
 * is full (before, each worker read its own run and computed nothing while
 * it waited: a backup from a cold disk idled both cores for most of its
 * reads). Memory: the ring (2N+2 slots of 1 MiB) and ~0.3 MiB per worker
 * plus its zstd context; the pack buffers are 2 x 8 MiB; nothing grows with
 * the image size but the run list (16 bytes per MiB of data) and the index
 * (40 bytes per stored chunk). */
#include "internal.h"

#include "chunkindex.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define RUN_CHUNKS 16

typedef struct file_rec {
    char *name;
    const char *kind;
    uint64_t size;
    char index[65];
    uint64_t stored_bytes, new_chunks;
} file_rec;

/* The index of the file added last is written by a thread of its own while
 * the caller goes on (the next file's copy; the end of the VMs' backup jobs):
 * for a 4 GiB disk 2.6 MB, two hashes and two fsyncs, ~10 ms that were on
 * the critical path of an incremental. Joined before the next index, at the
 * commit (after the pack's flush) and the free; a failure fails the backup
 * there, naming the file. */
typedef struct index_writer {
    pthread_t thread;
    bool running;
    atomic_bool done;
    crypto_ctx *crypto;  /* the thread's own */
    vmsh_file_index idx; /* owns its entries until the join */
    size_t file;         /* files[file].index is filled at the join */
    char name[65];
    int rc;
    vmsh_error *err;
} index_writer;

struct vmsh_backup {
    vmsh_repo *repo;
    repo_session *session; /* issue 26: no lock, a session (docs/formats/gc.md) */
    char id[VMSH_BACKUP_ID_LEN + 1];
    int64_t time_us;
    bool committed;
    atomic_bool broken; /* set by any worker that fails mid-chunk */
    pack_writer *pw;
    file_rec *files;
    size_t n_files, cap_files;
    vmsh_add_stats totals;
    index_writer ix;
    size_t map_mark; /* the map's entries from here on are this backup's new chunks */
};

static void *index_main(void *arg)
{
    vmsh_backup *b = arg;
    index_writer *ix = &b->ix;
    ix->rc = index_store(b->repo, ix->crypto, &ix->idx, ix->name, &ix->err);
    atomic_store(&ix->done, true);
    return NULL;
}

/* Waits for the index being written; its error (or NULL err: dropped). */
static int index_join(vmsh_backup *b, vmsh_error **err)
{
    index_writer *ix = &b->ix;
    if (!ix->running)
        return 0;
    pthread_join(ix->thread, NULL);
    ix->running = false;
    free(ix->idx.entries);
    ix->idx.entries = NULL;
    file_rec *f = &b->files[ix->file];
    if (ix->rc == 0) {
        memcpy(f->index, ix->name, sizeof(f->index));
        return 0;
    }
    b->broken = true;
    int rc = ix->rc;
    if (err) {
        vmsh_error_propagate(err, &ix->err);
        vmsh_error_prefix(err, "backup %s: the index of %s", b->id, f->name);
    }
    vmsh_error_free(ix->err);
    ix->err = NULL;
    return rc;
}

/* Hands the index of files[file] (its entries taken) to the thread; written
 * here and now when no thread can run. */
static int index_start(vmsh_backup *b, size_t file, vmsh_file_index *idx, vmsh_error **err)
{
    index_writer *ix = &b->ix;
    int rc = index_join(b, err);
    if (rc < 0) {
        free(idx->entries);
        return rc;
    }
    vmsh_error *e = NULL;
    if (!ix->crypto && crypto_ctx_new(&ix->crypto, &b->repo->keys, &e) < 0)
        vmsh_error_free(e);
    if (ix->crypto) {
        ix->idx = *idx;
        ix->file = file;
        ix->rc = 0;
        atomic_store(&ix->done, false);
        if (pthread_create(&ix->thread, NULL, index_main, b) == 0) {
            ix->running = true;
            return 0;
        }
        ix->idx.entries = NULL;
    }
    rc = index_store(b->repo, b->repo->crypto, idx, b->files[file].index, err);
    free(idx->entries);
    if (rc < 0) {
        b->broken = true;
        vmsh_error_prefix(err, "backup %s: the index of %s", b->id, b->files[file].name);
    }
    return rc;
}

int vmsh_backup_begin(vmsh_backup **out, vmsh_repo *r, vmsh_error **err)
{
    if (r->backup_pending)
        return vmsh_error_set(err, -EBUSY, "a backup is already pending on this repository");
    vmsh_backup *b = calloc(1, sizeof(*b));
    if (!b)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    b->repo = r;
    /* Concurrent writers (issue 26): no exclusive lock; the session pins
     * what this backup deduplicates against until it commits or aborts */
    int rc = repo_session_begin(r, &b->session, err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    /* Nothing this handle cached before the session is trusted (issue 26,
     * docs/formats/gc.md "Handles that outlive a gc"): chunk locations, runs
     * and pack checks of an earlier backup or read may name packs a gc
     * deleted since, and deduplicating against them would commit a backup
     * whose chunks no pack holds. The index is read again after the session
     * and the marks. (Also: a reader of this handle may have loaded the
     * pack tables of a repository without runs; the load below upgrades the
     * repository instead.) */
    if (r->map_loaded)
        repo_map_forget(r);
    r->backup_pending = true;
    b->map_mark = r->map.count;
    uint8_t raw[VMSH_BACKUP_ID_LEN / 2];
    if (crypto_random(raw, sizeof(raw)) < 0) {
        vmsh_backup_free(b);
        return vmsh_error_set(err, -EIO, "cannot get random bytes from the kernel");
    }
    vmsh_hex(raw, sizeof(raw), b->id);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    b->time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    if ((rc = pack_writer_new(&b->pw, r, err)) < 0) {
        vmsh_backup_free(b);
        return rc;
    }
    /* The chunk map loads while the caller prepares its sources (a snapshot
     * set: identify, freeze, job start); the first file waits for it. */
    repo_load_map_start(r);
    *out = b;
    return 0;
}

int backup_flush_for_tests(vmsh_backup *b)
{
    return pack_writer_flush(b->pw, NULL);
}

int backup_pin_for_tests(vmsh_backup *b, const char *backup_id)
{
    return repo_session_pin(b->session, backup_id, NULL);
}

const char *vmsh_backup_id(const vmsh_backup *b)
{
    return b->id;
}

void vmsh_backup_stats(const vmsh_backup *b, vmsh_add_stats *out)
{
    *out = b->totals;
}

void vmsh_backup_free(vmsh_backup *b)
{
    if (!b)
        return;
    index_join(b, NULL);
    crypto_ctx_free(b->ix.crypto);
    repo_map_wait(b->repo);
    pack_writer_free(b->pw); /* removes an open temporary pack */
    if (!b->committed) {
        /* The in-memory map may name chunks of packs that were never
         * completed, or be half loaded: forget it; the next user reloads
         * it from disk. */
        repo_map_forget(b->repo);
    }
    for (size_t i = 0; i < b->n_files; i++)
        free(b->files[i].name);
    free(b->files);
    b->repo->backup_pending = false;
    repo_session_end(b->session);
    gc_marks_clear(&b->repo->condemned);
    free(b);
}

void vmsh_backup_freep(vmsh_backup **b)
{
    if (b)
        vmsh_backup_free(*b);
}

/* ---- the pipeline ---- */

typedef struct run {
    uint64_t chunk;
    uint32_t count;
} run;

/* A slot of the read-ahead ring: run i goes into slot i % n_slots, read
 * once the worker of run i - n_slots released the slot (free_for >= i),
 * taken by run i's worker once ready == i. */
typedef struct ring_slot {
    uint8_t *buf; /* RUN_CHUNKS chunks, aligned for O_DIRECT sources */
    size_t free_for, ready;
    pthread_cond_t cv; /* its reader and its worker wait here, not on the others */
} ring_slot;

#define READERS 2

typedef struct job {
    vmsh_backup *b;
    vmsh_source *src;
    uint64_t size;
    const run *runs;
    size_t n_runs;
    atomic_size_t next;      /* the next run a worker takes */
    atomic_size_t next_read; /* the next run a reader takes */
    ring_slot *slots;
    size_t n_slots;
    pthread_mutex_t smu; /* the slots' state; every slot's cv is signalled on failure */
    atomic_uint_fast64_t bytes_done;
    atomic_bool failed;
    pthread_mutex_t err_mu;
    vmsh_error *err;
    int code;
    int level;
} job;

typedef struct worker {
    job *j;
    pthread_t thread;
    crypto_ctx *crypto;
    ZSTD_CCtx *cctx;
    uint8_t *cbuf; /* compressed */
    uint8_t *sbuf; /* sealed */
    size_t cbuf_cap;
    index_entry *out;
    size_t n_out, cap_out;
    vmsh_add_stats st;
} worker;

static void job_fail(job *j, int code, vmsh_error **e)
{
    pthread_mutex_lock(&j->err_mu);
    if (!j->err) {
        j->code = code;
        vmsh_error_propagate(&j->err, e);
    } else {
        vmsh_error_free(*e);
        *e = NULL;
    }
    pthread_mutex_unlock(&j->err_mu);
    atomic_store(&j->failed, true);
    /* wake every reader and worker waiting on a slot: they stop */
    pthread_mutex_lock(&j->smu);
    for (size_t i = 0; i < j->n_slots; i++)
        pthread_cond_broadcast(&j->slots[i].cv);
    pthread_mutex_unlock(&j->smu);
}

static uint64_t run_len(const job *j, const run *ru)
{
    uint64_t off = ru->chunk * CHUNK_SIZE;
    uint64_t len = (uint64_t)ru->count * CHUNK_SIZE;
    return len > j->size - off ? j->size - off : len;
}

/* The readers: run after run into the ring, as far ahead as the slots go. */
static void *reader_main(void *arg)
{
    job *j = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&j->next_read, 1);
        if (i >= j->n_runs)
            break;
        ring_slot *sl = &j->slots[i % j->n_slots];
        pthread_mutex_lock(&j->smu);
        while (sl->free_for < i && !atomic_load(&j->failed))
            pthread_cond_wait(&sl->cv, &j->smu);
        pthread_mutex_unlock(&j->smu);
        if (atomic_load(&j->failed))
            break;
        const run *ru = &j->runs[i];
        vmsh_error *e = NULL;
        int rc =
            vmsh_source_pread(j->src, sl->buf, (size_t)run_len(j, ru), ru->chunk * CHUNK_SIZE, &e);
        if (rc < 0) {
            job_fail(j, rc, &e);
            break;
        }
        pthread_mutex_lock(&j->smu);
        sl->ready = i;
        pthread_cond_broadcast(&sl->cv);
        pthread_mutex_unlock(&j->smu);
    }
    return NULL;
}

/* A worker's wait for run i's data; NULL when the job failed. */
static const uint8_t *slot_take(job *j, size_t i)
{
    ring_slot *sl = &j->slots[i % j->n_slots];
    pthread_mutex_lock(&j->smu);
    while (sl->ready != i && !atomic_load(&j->failed))
        pthread_cond_wait(&sl->cv, &j->smu);
    pthread_mutex_unlock(&j->smu);
    return atomic_load(&j->failed) ? NULL : sl->buf;
}

static void slot_release(job *j, size_t i)
{
    ring_slot *sl = &j->slots[i % j->n_slots];
    pthread_mutex_lock(&j->smu);
    sl->free_for = i + j->n_slots;
    pthread_cond_broadcast(&sl->cv);
    pthread_mutex_unlock(&j->smu);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    /* glibc's memcmp is vectorised: this runs at memory speed (~27 GB/s). */
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static int push_out(worker *w, uint64_t chunk, const uint8_t id[ID_LEN])
{
    if (w->n_out == w->cap_out) {
        size_t ncap = w->cap_out ? w->cap_out * 2 : 1024;
        index_entry *n = vmsh_realloc_array(w->out, ncap, sizeof(*n));
        if (!n)
            return -ENOMEM;
        w->out = n;
        w->cap_out = ncap;
    }
    w->out[w->n_out].chunk = chunk;
    memcpy(w->out[w->n_out].id, id, ID_LEN);
    w->n_out++;
    return 0;
}

static int store_chunk(worker *w, const uint8_t *data, size_t len, const uint8_t id[ID_LEN],
                       vmsh_error **err)
{
    vmsh_backup *b = w->j->b;
    vmsh_repo *r = b->repo;
    chunk_loc loc = {.raw_len = (uint32_t)len, .kind = BLOB_RAW};
    memcpy(loc.id, id, ID_LEN);
    const uint8_t *blob = data;
    size_t blen = len;
    /* Stored raw unless zstd saves at least 1/32: restores then skip the
     * decompressor for random data. Chunks whose bytes look random skip
     * zstd too: it would only find that out (compress.c). */
    size_t c = chunk_looks_random(data, len)
                   ? len
                   : ZSTD_compress2(w->cctx, w->cbuf, w->cbuf_cap, data, len);
    if (!ZSTD_isError(c) && c < len - len / 32) {
        blob = w->cbuf;
        blen = c;
        loc.kind = BLOB_ZSTD;
    }
    if (r->keys.encrypted) {
        if (crypto_seal(w->crypto, blob, blen, id, ID_LEN, w->sbuf) < 0)
            return vmsh_error_set(err, -EIO, "cannot encrypt a chunk");
        blob = w->sbuf;
        blen += GCM_OVERHEAD;
    }
    loc.stored_len = (uint32_t)blen;
    int rc = pack_writer_add(b->pw, &loc, blob, err); /* thread-safe */
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&r->lock);
    chunk_loc *slot = chunk_map_find(&r->map, id);
    if (slot)
        *slot = loc;
    pthread_mutex_unlock(&r->lock);
    w->st.new_chunks++;
    w->st.bytes_stored += blen;
    return 0;
}

/* Run `ru`, already read into `buf` by a reader. Its chunks' IDs first,
 * the whole chunks together (four at a time with SHA-NI: crypto_chunk_ids),
 * then each chunk in order. */
static int do_run(worker *w, const run *ru, const uint8_t *buf, vmsh_error **err)
{
    job *j = w->j;
    uint64_t len = run_len(j, ru);
    int rc;
    w->st.bytes_read += len;
    vmsh_repo *r = j->b->repo;
    uint8_t ids[RUN_CHUNKS][ID_LEN];
    const uint8_t *whole[RUN_CHUNKS];
    uint32_t whole_at[RUN_CHUNKS], n_whole = 0;
    bool zero[RUN_CHUNKS];
    uint32_t count = (uint32_t)((len + CHUNK_SIZE - 1) / CHUNK_SIZE);
    for (uint32_t i = 0; i < count; i++) {
        uint64_t coff = (uint64_t)i * CHUNK_SIZE;
        size_t clen = len - coff < CHUNK_SIZE ? (size_t)(len - coff) : CHUNK_SIZE;
        zero[i] = all_zero(buf + coff, clen);
        if (zero[i])
            continue;
        if (clen < CHUNK_SIZE) { /* the image's short last chunk */
            if (crypto_chunk_id(w->crypto, buf + coff, clen, ids[i]) < 0)
                return vmsh_error_set(err, -EIO, "cannot hash a chunk");
            continue;
        }
        whole_at[n_whole] = i;
        whole[n_whole++] = buf + coff;
    }
    uint8_t wids[RUN_CHUNKS][ID_LEN];
    if (n_whole && crypto_chunk_ids(w->crypto, n_whole, whole, CHUNK_SIZE, wids) < 0)
        return vmsh_error_set(err, -EIO, "cannot hash a chunk");
    for (uint32_t k = 0; k < n_whole; k++)
        memcpy(ids[whole_at[k]], wids[k], ID_LEN);
    for (uint32_t i = 0; i < count; i++) {
        uint64_t coff = (uint64_t)i * CHUNK_SIZE;
        size_t clen = len - coff < CHUNK_SIZE ? (size_t)(len - coff) : CHUNK_SIZE;
        const uint8_t *data = buf + coff;
        if (zero[i]) {
            w->st.zero_chunks++;
            continue;
        }
        const uint8_t *id = ids[i];
        /* the chunk index first (no lock: runs are immutable), then this
         * backup's own new chunks, where a placeholder claims the chunk
         * for one worker */
        int ins = 0;
        if (r->ci) {
            chunk_loc found;
            ins = repo_find_chunk(r, id, &found, false, err);
            if (ins < 0)
                return ins;
            ins = !ins; /* 0: present */
        }
        if (!r->ci || ins) {
            chunk_loc pending = {.pack = CHUNK_PENDING};
            memcpy(pending.id, id, ID_LEN);
            pthread_mutex_lock(&r->lock);
            ins = chunk_map_insert(&r->map, &pending, NULL);
            pthread_mutex_unlock(&r->lock);
        }
        if (ins < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory for the chunk map");
        if (ins == 0) {
            w->st.dedup_chunks++;
        } else if ((rc = store_chunk(w, data, clen, id, err)) < 0) {
            j->b->broken = true; /* the map holds a placeholder never stored */
            return rc;
        }
        if (push_out(w, ru->chunk + i, id) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

/* Takes the next run, waits for its data and processes it: its index, or
 * SIZE_MAX when there is nothing left or the job failed. */
static size_t work_one(worker *w)
{
    job *j = w->j;
    if (atomic_load(&j->failed))
        return SIZE_MAX;
    size_t i = atomic_fetch_add(&j->next, 1);
    if (i >= j->n_runs)
        return SIZE_MAX;
    const uint8_t *buf = slot_take(j, i);
    if (!buf)
        return SIZE_MAX;
    vmsh_error *e = NULL;
    int rc = do_run(w, &j->runs[i], buf, &e);
    slot_release(j, i);
    if (rc < 0) {
        job_fail(j, rc, &e);
        return SIZE_MAX;
    }
    return i;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    job *j = w->j;
    for (size_t i; (i = work_one(w)) != SIZE_MAX;)
        atomic_fetch_add(&j->bytes_done, (uint64_t)j->runs[i].count * CHUNK_SIZE);
    return NULL;
}

static int worker_init(worker *w, job *j, vmsh_error **err)
{
    memset(w, 0, sizeof(*w));
    w->j = j;
    w->cbuf_cap = ZSTD_compressBound(CHUNK_SIZE);
    w->cctx = ZSTD_createCCtx();
    w->cbuf = malloc(w->cbuf_cap);
    w->sbuf = malloc(w->cbuf_cap + GCM_OVERHEAD);
    if (!w->cctx || !w->cbuf || !w->sbuf || zstd_setup(w->cctx, j->level) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory for a backup worker");
    return crypto_ctx_new(&w->crypto, &j->b->repo->keys, err);
}

static void worker_fini(worker *w)
{
    ZSTD_freeCCtx(w->cctx);
    crypto_ctx_free(w->crypto);
    free(w->cbuf);
    free(w->sbuf);
    free(w->out);
}

/* ---- building the run list ---- */

typedef struct run_list {
    run *v;
    size_t n, cap;
} run_list;

static int add_chunk_range(run_list *l, uint64_t first, uint64_t last)
{
    for (uint64_t c = first; c <= last;) {
        run *t = l->n ? &l->v[l->n - 1] : NULL;
        if (t && c < t->chunk + t->count) { /* already covered (extent split in a chunk) */
            c = t->chunk + t->count;
            continue;
        }
        if (t && c == t->chunk + t->count && t->count < RUN_CHUNKS) {
            uint64_t take = last - c + 1;
            if (take > RUN_CHUNKS - t->count)
                take = RUN_CHUNKS - t->count;
            t->count += (uint32_t)take;
            c += take;
            continue;
        }
        if (l->n == l->cap) {
            size_t ncap = l->cap ? l->cap * 2 : 1024;
            run *nv = vmsh_realloc_array(l->v, ncap, sizeof(*nv));
            if (!nv)
                return -ENOMEM;
            l->v = nv;
            l->cap = ncap;
        }
        uint64_t take = last - c + 1;
        if (take > RUN_CHUNKS)
            take = RUN_CHUNKS;
        l->v[l->n++] = (run){c, (uint32_t)take};
        c += take;
    }
    return 0;
}

static bool bit_get(const uint8_t *bm, uint64_t i)
{
    return bm[i / 8] & (1u << (i % 8));
}

static void bit_set_range(uint8_t *bm, uint64_t first, uint64_t last)
{
    for (uint64_t i = first; i <= last; i++)
        bm[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Data extents of the source → runs; with `changed` (a bitmap of chunks to
 * read in an incremental) only chunks marked there. */
static int build_runs(vmsh_source *src, uint64_t size, const uint8_t *changed, run_list *l,
                      vmsh_error **err)
{
    vmsh_extent ext[256];
    for (uint64_t pos = 0; pos < size;) {
        int n = vmsh_source_extents(src, pos, size - pos, ext, VMSH_ARRAY_SIZE(ext), err);
        if (n < 0)
            return n;
        for (int i = 0; i < n; i++) {
            pos = ext[i].offset + ext[i].length;
            if (ext[i].flags & VMSH_EXTENT_ZERO)
                continue;
            uint64_t first = ext[i].offset / CHUNK_SIZE;
            uint64_t last = (ext[i].offset + ext[i].length - 1) / CHUNK_SIZE;
            if (!changed) {
                if (add_chunk_range(l, first, last) < 0)
                    return vmsh_error_set(err, -ENOMEM, "out of memory");
                continue;
            }
            for (uint64_t c = first; c <= last; c++)
                if (bit_get(changed, c) && add_chunk_range(l, c, c) < 0)
                    return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int mark_changed(vmsh_source *src, const vmsh_add_opts *o, uint64_t size, uint8_t *bm,
                        vmsh_error **err)
{
    if (o->changed) {
        for (size_t i = 0; i < o->n_changed; i++) {
            uint64_t off = o->changed[i].offset, len = o->changed[i].length;
            if (len == 0 || off >= size)
                continue;
            if (len > size - off)
                len = size - off;
            bit_set_range(bm, off / CHUNK_SIZE, (off + len - 1) / CHUNK_SIZE);
        }
        return 0;
    }
    vmsh_extent ext[256];
    for (uint64_t pos = 0; pos < size;) {
        int n = vmsh_source_dirty_extents(src, pos, size - pos, ext, VMSH_ARRAY_SIZE(ext), err);
        if (n < 0)
            return n;
        for (int i = 0; i < n; i++) {
            pos = ext[i].offset + ext[i].length;
            if (!(ext[i].flags & VMSH_EXTENT_ZERO))
                bit_set_range(bm, ext[i].offset / CHUNK_SIZE,
                              (ext[i].offset + ext[i].length - 1) / CHUNK_SIZE);
        }
    }
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const index_entry *x = a, *y = b;
    return x->chunk < y->chunk ? -1 : x->chunk > y->chunk;
}

static int add_source(vmsh_backup *b, const char *name, const char *kind, vmsh_source *src,
                      const vmsh_add_opts *opts, vmsh_add_stats *stats_out, vmsh_error **err)
{
    vmsh_repo *r = b->repo;
    int rc;
    if (b->committed)
        return vmsh_error_set(err, -EINVAL, "backup %s is already committed", b->id);
    if (b->ix.running && atomic_load(&b->ix.done) && (rc = index_join(b, err)) < 0)
        return rc;
    if (b->broken)
        return vmsh_error_set(
            err, -EIO, "backup %s failed earlier while writing the repository; abort it", b->id);
    int lr = repo_load_map(r, err);
    if (lr < 0) {
        b->broken = true;
        return vmsh_error_prefix(err, "backup %s: the repository's chunk map", b->id);
    }
    if (!name_is_valid(name))
        return vmsh_error_set(err, -EINVAL,
                              "file name \"%s\" is not allowed (1-%d bytes, no control "
                              "characters)",
                              name ? name : "", MAX_NAME_LEN);
    for (size_t i = 0; i < b->n_files; i++)
        if (strcmp(b->files[i].name, name) == 0)
            return vmsh_error_set(err, -EEXIST, "backup %s already has a file named \"%s\"", b->id,
                                  name);
    vmsh_add_opts none = {0};
    const vmsh_add_opts *o = opts ? opts : &none;
    uint64_t size = vmsh_source_size(src);
    uint64_t nchunks = size / CHUNK_SIZE + (size % CHUNK_SIZE != 0);

    _cleanup_free_ uint8_t *changed = NULL;
    bool incremental = o->base && (o->changed || vmsh_source_has_dirty(src));
    if (incremental) {
        changed = calloc(nchunks / 8 + 1, 1);
        if (!changed)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        if ((rc = mark_changed(src, o, size, changed, err)) < 0)
            return vmsh_error_prefix(err, "%s", name);
        /* A resized file: its old last chunk and anything new must be read. */
        if (o->base->size != size && nchunks > 0) {
            uint64_t base_chunks = o->base->size / CHUNK_SIZE;
            uint64_t from = base_chunks < nchunks ? base_chunks : nchunks - 1;
            bit_set_range(changed, from, nchunks - 1);
        }
    }
    run_list runs = {0};
    if ((rc = build_runs(src, size, changed, &runs, err)) < 0) {
        free(runs.v);
        return vmsh_error_prefix(err, "%s", name);
    }

    job j = {.b = b,
             .src = src,
             .size = size,
             .runs = runs.v,
             .n_runs = runs.n,
             .level = r->compression_level};
    atomic_init(&j.next, 0);
    atomic_init(&j.next_read, 0);
    atomic_init(&j.bytes_done, 0);
    atomic_init(&j.failed, false);
    pthread_mutex_init(&j.err_mu, NULL);
    pthread_mutex_init(&j.smu, NULL);
    unsigned nw = repo_threads(r);
    uint64_t total = 0;
    for (size_t i = 0; i < runs.n; i++)
        total += (uint64_t)runs.v[i].count * CHUNK_SIZE;
    /* two slots per worker (one being computed, one read ahead) and one per
     * reader: enough that the workers never wait while the readers keep up */
    j.n_slots = 2 * (size_t)nw + READERS;
    if (j.n_slots > runs.n)
        j.n_slots = runs.n ? runs.n : 1;
    worker *ws = vmsh_calloc_array(nw, sizeof(*ws));
    j.slots = vmsh_calloc_array(j.n_slots, sizeof(*j.slots));
    /* huge pages for a ring of 2 MiB or more; a small source (a buffer, a
     * one-run incremental) would have a whole 2 MiB page zeroed for a few
     * KiB read */
    size_t ring_len = j.n_slots * RUN_CHUNKS * CHUNK_SIZE;
    uint8_t *ring = NULL;
    if (ring_len >= (2u << 20))
        ring = repo_huge_alloc(ring_len);
    else if (posix_memalign((void **)&ring, 4096, ring_len) != 0)
        ring = NULL;
    if (!ws || !j.slots || !ring) {
        free(ws);
        free(j.slots);
        free(ring);
        free(runs.v);
        pthread_mutex_destroy(&j.err_mu);
        pthread_mutex_destroy(&j.smu);
        return vmsh_error_set(err, -ENOMEM, "out of memory for the backup's read-ahead");
    }
    for (size_t i = 0; i < j.n_slots; i++) {
        j.slots[i].buf = ring + i * RUN_CHUNKS * CHUNK_SIZE;
        j.slots[i].free_for = i;
        j.slots[i].ready = SIZE_MAX;
        pthread_cond_init(&j.slots[i].cv, NULL);
    }
    unsigned started = 0;
    for (unsigned i = 0; i < nw; i++) {
        vmsh_error *e = NULL;
        if ((rc = worker_init(&ws[i], &j, &e)) < 0) {
            job_fail(&j, rc, &e);
            break;
        }
        if (i > 0 && pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            e = NULL;
            vmsh_error_set(&e, -EAGAIN, "cannot start a backup thread");
            job_fail(&j, -EAGAIN, &e);
            break;
        }
        started = i + 1;
    }
    pthread_t readers[READERS];
    unsigned n_readers = 0;
    for (unsigned i = 0; started > 0 && i < READERS && i < runs.n; i++) {
        if (pthread_create(&readers[i], NULL, reader_main, &j) != 0) {
            vmsh_error *e = NULL;
            vmsh_error_set(&e, -EAGAIN, "cannot start a backup reader thread");
            job_fail(&j, -EAGAIN, &e);
            break;
        }
        n_readers++;
    }
    /* The calling thread works too, and reports progress between runs. */
    for (size_t i; started > 0 && (i = work_one(&ws[0])) != SIZE_MAX;) {
        uint64_t d = atomic_fetch_add(&j.bytes_done, (uint64_t)j.runs[i].count * CHUNK_SIZE);
        if (o->progress)
            o->progress(o->progress_opaque, d + (uint64_t)j.runs[i].count * CHUNK_SIZE, total);
    }
    for (unsigned i = 1; i < started; i++)
        pthread_join(ws[i].thread, NULL);
    for (unsigned i = 0; i < n_readers; i++)
        pthread_join(readers[i], NULL);
    free(runs.v);
    free(ring);
    for (size_t i = 0; i < j.n_slots; i++)
        pthread_cond_destroy(&j.slots[i].cv);
    free(j.slots);
    j.slots = NULL; /* a later job_fail (out of memory below) has no slot to wake */
    j.n_slots = 0;
    pthread_mutex_destroy(&j.smu);

    vmsh_add_stats st = {.size = size};
    size_t n_entries = 0;
    for (unsigned i = 0; i < nw; i++) {
        st.bytes_read += ws[i].st.bytes_read;
        st.bytes_stored += ws[i].st.bytes_stored;
        st.new_chunks += ws[i].st.new_chunks;
        st.dedup_chunks += ws[i].st.dedup_chunks;
        st.zero_chunks += ws[i].st.zero_chunks;
        n_entries += ws[i].n_out;
    }
    size_t n_read = n_entries; /* the base's entries come on top */
    vmsh_file_index idx = {.size = size};
    if (!j.err && incremental)
        for (size_t i = 0; i < o->base->count; i++)
            if (o->base->entries[i].chunk < nchunks && !bit_get(changed, o->base->entries[i].chunk))
                n_entries++;
    index_entry *fresh = NULL;
    size_t n_fresh = 0;
    if (!j.err) {
        idx.entries = vmsh_calloc_array(n_entries ? n_entries : 1, sizeof(index_entry));
        fresh =
            incremental ? vmsh_calloc_array(n_read ? n_read : 1, sizeof(index_entry)) : idx.entries;
        if (!idx.entries || !fresh) {
            vmsh_error *e = NULL;
            vmsh_error_set(&e, -ENOMEM, "out of memory");
            job_fail(&j, -ENOMEM, &e);
        }
    }
    if (!j.err) {
        for (unsigned i = 0; i < nw; i++) {
            if (ws[i].n_out)
                memcpy(fresh + n_fresh, ws[i].out, ws[i].n_out * sizeof(index_entry));
            n_fresh += ws[i].n_out;
        }
        /* Only what was read needs sorting: the base is sorted (index_load
         * checks it), and an incremental merges the two. */
        qsort(fresh, n_fresh, sizeof(index_entry), cmp_entry);
        idx.count = n_fresh;
    }
    for (unsigned i = 0; i < nw; i++)
        worker_fini(&ws[i]);
    free(ws);
    pthread_mutex_destroy(&j.err_mu);
    if (j.err) {
        if (fresh != idx.entries)
            free(fresh);
        free(idx.entries);
        rc = j.code;
        vmsh_error_propagate(err, &j.err);
        vmsh_error_prefix(err, "backup of %s", name);
        return rc;
    }
    if (incremental) {
        /* Base chunks must still exist: an incremental never names a chunk
         * the repository does not hold. What was read was stored or found
         * in the map just now. */
        size_t k = 0, n = 0;
        rc = 0;
        /* (a check made before gc's marks were read may have found a chunk
         * in a condemned pack) */
        bool checked =
            o->base->checked_repo == r && o->base->checked_gen == r->map_gen && r->condemned.n == 0;
        if (!checked && o->base->from_repo == r) {
            /* its manifest still there, and pinned by our session first:
             * gc deletes nothing while a live session pins a backup it
             * cannot read (docs/formats/gc.md), so its chunks are kept */
            char mp[32];
            snprintf(mp, sizeof(mp), "backups/%s", o->base->from_backup);
            if ((rc = repo_session_pin(b->session, o->base->from_backup, err)) < 0)
                return rc;
            checked = r->store->ops->stat(r->store, mp, NULL, NULL) == 0;
        }
        for (size_t i = 0; i < o->base->count && rc == 0; i++) {
            const index_entry *be = &o->base->entries[i];
            if (be->chunk >= nchunks || bit_get(changed, be->chunk))
                continue;
            chunk_loc found;
            int fr = checked ? 1 : repo_find_chunk(r, be->id, &found, true, err);
            if (fr < 0) {
                rc = fr;
                break;
            }
            if (!fr) {
                rc = vmsh_error_set(err, -EBADMSG,
                                    "%s: the base backup names chunk %llu that the repository "
                                    "no longer holds; run a full backup",
                                    name, (unsigned long long)be->chunk);
                break;
            }
            while (k < n_fresh && fresh[k].chunk < be->chunk)
                idx.entries[n++] = fresh[k++];
            idx.entries[n++] = *be;
            st.base_chunks++;
        }
        while (rc == 0 && k < n_fresh)
            idx.entries[n++] = fresh[k++];
        idx.count = n;
        free(fresh);
        if (rc < 0) {
            free(idx.entries);
            return rc;
        }
    }
    if (b->n_files == b->cap_files) {
        size_t ncap = b->cap_files ? b->cap_files * 2 : 8;
        file_rec *nf = vmsh_realloc_array(b->files, ncap, sizeof(*nf));
        if (!nf) {
            free(idx.entries);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        b->files = nf;
        b->cap_files = ncap;
    }
    file_rec *f = &b->files[b->n_files];
    memset(f, 0, sizeof(*f));
    if (!(f->name = strdup(name))) {
        free(idx.entries);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    f->kind = kind;
    f->size = size;
    f->stored_bytes = st.bytes_stored;
    f->new_chunks = st.new_chunks;
    b->n_files++;
    if ((rc = index_start(b, b->n_files - 1, &idx, err)) < 0)
        return rc;
    b->totals.size += st.size;
    b->totals.bytes_read += st.bytes_read;
    b->totals.bytes_stored += st.bytes_stored;
    b->totals.new_chunks += st.new_chunks;
    b->totals.dedup_chunks += st.dedup_chunks;
    b->totals.zero_chunks += st.zero_chunks;
    b->totals.base_chunks += st.base_chunks;
    if (stats_out)
        *stats_out = st;
    return 0;
}

int vmsh_file_index_check_chunks(vmsh_file_index *idx, vmsh_repo *r, const char *name,
                                 vmsh_error **err)
{
    int rc = repo_load_map(r, err);
    if (rc < 0)
        return vmsh_error_prefix(err, "the repository's chunk map");
    for (size_t i = 0; i < idx->count; i++) {
        chunk_loc found;
        int fr = repo_find_chunk(r, idx->entries[i].id, &found, true, err);
        if (fr < 0)
            return fr;
        if (!fr)
            return vmsh_error_set(err, -EBADMSG,
                                  "%s: the base backup names chunk %llu that the repository "
                                  "no longer holds",
                                  name, (unsigned long long)idx->entries[i].chunk);
    }
    idx->checked_repo = r;
    idx->checked_gen = r->map_gen;
    return 0;
}

int vmsh_backup_add_file(vmsh_backup *b, const char *name, vmsh_source *src,
                         const vmsh_add_opts *opts, vmsh_add_stats *stats, vmsh_error **err)
{
    return add_source(b, name, "file", src, opts, stats, err);
}

int vmsh_backup_add_buffer(vmsh_backup *b, const char *name, const void *buf, size_t len,
                           vmsh_error **err)
{
    if (len > MAX_BUFFER_LEN)
        return vmsh_error_set(err, -EFBIG, "buffer %s is too large (%zu bytes, limit %u)",
                              name ? name : "", len, MAX_BUFFER_LEN);
    vmsh_source *src = NULL;
    int rc = vmsh_source_open_memory(&src, buf, len, false, name, err);
    if (rc < 0)
        return rc;
    rc = add_source(b, name, "buffer", src, NULL, NULL, err);
    vmsh_source_free(src);
    return rc;
}

/* The chunk index's run of this backup's new chunks (issue 27), durable
 * before the manifest: a backup that exists has its chunks indexed. Each
 * backup adds a run of its own; nothing shared is rewritten. */
static int write_run(vmsh_backup *b, vmsh_error **err)
{
    if (!b->repo->ci)
        return 0; /* legacy mode: no runs in this repository yet */
    return ci_write_map_since(b->repo, b->map_mark, err);
}

int vmsh_backup_commit(vmsh_backup *b, const char *document, vmsh_error **err)
{
    if (b->committed)
        return vmsh_error_set(err, -EINVAL, "backup %s is already committed", b->id);
    if (b->broken)
        return vmsh_error_set(
            err, -EIO, "backup %s failed earlier while writing the repository; abort it", b->id);
    if (!document)
        document = "";
    if (strlen(document) > MAX_DOCUMENT_LEN)
        return vmsh_error_set(err, -EFBIG, "the backup document is too large");
    int rc = repo_load_map(b->repo, err); /* a backup without files */
    if (rc < 0)
        return rc;
    rc = pack_writer_flush(b->pw, err); /* beside the last index's write */
    if (rc < 0) {
        b->broken = true;
        index_join(b, NULL);
        return rc;
    }
    if ((rc = index_join(b, err)) < 0)
        return rc;
    if ((rc = write_run(b, err)) < 0) {
        b->broken = true;
        return vmsh_error_prefix(err, "cannot commit backup %s", b->id);
    }
    /* every pack and index is durable (the object stores wait for their
     * uploads at a sync): then the session must never have lapsed, or a gc
     * may have deleted what this backup builds on */
    if ((rc = b->repo->store->ops->sync(b->repo->store, "packs", err)) < 0 ||
        (rc = repo_session_check(b->session, err)) < 0) {
        b->broken = true;
        return vmsh_error_prefix(err, "cannot commit backup %s", b->id);
    }
    /* its index objects are still there (a gc's sweep of unreferenced ones
     * runs only when no session is live, and holds locks/write exclusively:
     * this check and the manifest's put hold it shared, so no sweep deletes
     * between them: docs/formats/gc.md, "Index objects"): never a manifest
     * naming a missing one */
    vmsh_lock *cl = NULL;
    if ((rc = repo_commit_lock(b->repo, &cl, err)) < 0) {
        b->broken = true;
        return vmsh_error_prefix(err, "cannot commit backup %s", b->id);
    }
    for (size_t i = 0; i < b->n_files; i++) {
        char ip[160];
        snprintf(ip, sizeof(ip), "index/%.2s/%s", b->files[i].index, b->files[i].index);
        vmsh_error *e = NULL;
        if ((rc = b->repo->store->ops->stat(b->repo->store, ip, NULL, &e)) < 0) {
            vmsh_error_free(e);
            vmsh_lock_free(cl);
            b->broken = true;
            return vmsh_error_set(err, rc == -ENOENT ? -EAGAIN : rc,
                                  "cannot commit backup %s: its index of %s (%s) vanished "
                                  "under a concurrent gc; nothing was committed, run the backup "
                                  "again",
                                  b->id, b->files[i].name, ip);
        }
    }
    json_object *m = json_object_new_object();
    json_object *files = json_object_new_array();
    char time_s[21];
    vmsh_time_rfc3339((time_t)(b->time_us / 1000000), time_s);
    json_object_object_add(m, "version", json_object_new_int(1));
    json_object_object_add(m, "id", json_object_new_string(b->id));
    json_object_object_add(m, "time", json_object_new_string(time_s));
    json_object_object_add(m, "time_us", json_object_new_int64(b->time_us));
    for (size_t i = 0; i < b->n_files; i++) {
        json_object *f = json_object_new_object();
        json_object_object_add(f, "name", json_object_new_string(b->files[i].name));
        json_object_object_add(f, "kind", json_object_new_string(b->files[i].kind));
        json_object_object_add(f, "size", json_object_new_int64((int64_t)b->files[i].size));
        json_object_object_add(f, "index", json_object_new_string(b->files[i].index));
        json_object_object_add(f, "stored_bytes",
                               json_object_new_int64((int64_t)b->files[i].stored_bytes));
        json_object_object_add(f, "new_chunks",
                               json_object_new_int64((int64_t)b->files[i].new_chunks));
        json_object_array_add(files, f);
    }
    json_object_object_add(m, "files", files);
    json_object_object_add(m, "document", json_object_new_string(document));
    const char *text =
        json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    _cleanup_free_ char *path = manifest_path(b->repo->path, b->id);
    if (!path) {
        json_object_put(m);
        vmsh_lock_free(cl);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    rc = object_write(b->repo, path, OBJ_MANIFEST, text, strlen(text), err);
    json_object_put(m);
    vmsh_lock_free(cl);
    if (rc < 0)
        return vmsh_error_prefix(err, "cannot commit backup %s", b->id);
    b->committed = true;
    if (b->repo->ci) {
        /* Keep the number of runs a lookup reads small between gcs: above
         * 16, the small runs of recent backups (up to 4 Mi entries each,
         * 256 MiB of run) are merged into one. The backup is committed
         * already: a failure here only leaves the runs as they were. */
        ci_key key;
        ci_key_init(&key, &b->repo->keys);
        ci_merge_small(b->repo, &key, 2 * CI_MERGE_RUNS, 4u << 20, NULL);
    }
    return 0;
}
