/* reader.c - random access to a backed-up file (reader.h): the index says
 * which chunk holds an offset, the chunk map where the chunk is; chunks are
 * decoded by the repository's chunk_reader (one per thread at a time, kept
 * in a pool) into a small LRU cache, so that a guest's 4 KiB reads and a
 * sequential copy do not decode the same 64 KiB chunk again and again. */
#include "internal.h"

#include <vmshadow/repo/reader.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Readers kept for reuse by the pool; more are created while more threads
 * read at once, and freed when they come back to a full pool. */
#define POOL_KEEP 16

enum { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY };

typedef struct slot {
    uint64_t chunk;
    uint64_t used; /* LRU tick */
    int state;
    unsigned refs; /* threads copying out of buf: not evicted meanwhile */
    uint8_t *buf;  /* CHUNK_SIZE, allocated on first use */
} slot;

struct vmsh_reader {
    vmsh_repo *repo;
    vmsh_lock *lock;
    vmsh_file_index *idx;
    char id[VMSH_BACKUP_ID_LEN + 1];
    char *name;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cond;
    slot *slots;
    size_t n_slots;
    uint64_t tick;
    chunk_reader **pool;
    size_t n_pool;
    vmsh_reader_stats st;
};

int vmsh_reader_open(vmsh_reader **out, vmsh_repo *r, const char *spec, const char *name,
                     const vmsh_reader_opts *opts, vmsh_error **err)
{
    vmsh_reader *rd = calloc(1, sizeof(*rd));
    if (!rd)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    rd->repo = r;
    pthread_mutex_init(&rd->mu, NULL);
    pthread_cond_init(&rd->cond, NULL);
    rd->n_slots = opts && opts->cache_chunks ? opts->cache_chunks : VMSH_READER_CACHE_DEFAULT;
    rd->slots = vmsh_calloc_array(rd->n_slots, sizeof(slot));
    rd->pool = vmsh_calloc_array(POOL_KEEP, sizeof(chunk_reader *));
    rd->name = strdup(name);
    if (!rd->slots || !rd->pool || !rd->name) {
        vmsh_reader_free(rd);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* the lock first: gc must not delete what the index names between
     * loading it and reading the chunks */
    int rc = repo_read_begin(r, &rd->lock, err);
    vmsh_backup_info *b = NULL;
    if (rc == 0)
        rc = vmsh_repo_backup_info(r, spec, &b, err);
    if (rc == 0) {
        memcpy(rd->id, b->id, sizeof(rd->id));
        const vmsh_backup_file *f = vmsh_backup_info_file(b, name);
        if (!f)
            rc = vmsh_error_set(err, -ENOENT, "backup %s has no file named \"%s\"", b->id, name);
        else if ((rc = index_load(r, f->index, &rd->idx, err)) < 0)
            vmsh_error_prefix(err, "backup %s, file %s", b->id, name);
        else if (rd->idx->size != f->size)
            rc = vmsh_error_set(err, -EBADMSG,
                                "backup %s, file %s: index size does not match the manifest", b->id,
                                name);
    }
    vmsh_backup_info_free(b);
    if (rc == 0)
        rc = repo_load_map(r, err);
    if (rc < 0) {
        vmsh_reader_free(rd);
        return rc;
    }
    *out = rd;
    return 0;
}

uint64_t vmsh_reader_size(const vmsh_reader *rd)
{
    return rd->idx->size;
}

const char *vmsh_reader_backup_id(const vmsh_reader *rd)
{
    return rd->id;
}

const char *vmsh_reader_name(const vmsh_reader *rd)
{
    return rd->name;
}

/* The index entry of chunk number `chunk`, or the first one after it
 * (count when none). */
static size_t lower_bound(const vmsh_file_index *idx, uint64_t chunk)
{
    size_t lo = 0, hi = idx->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (idx->entries[mid].chunk < chunk)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int pool_get(vmsh_reader *rd, chunk_reader **out, vmsh_error **err)
{
    pthread_mutex_lock(&rd->mu);
    *out = rd->n_pool ? rd->pool[--rd->n_pool] : NULL;
    pthread_mutex_unlock(&rd->mu);
    return *out ? 0 : chunk_reader_new(out, rd->repo, err);
}

static void pool_put(vmsh_reader *rd, chunk_reader *cr)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->n_pool < POOL_KEEP) {
        rd->pool[rd->n_pool++] = cr;
        cr = NULL;
    }
    pthread_mutex_unlock(&rd->mu);
    chunk_reader_free(cr);
}

/* Decodes and checks index entry `e` into out (CHUNK_SIZE bytes). */
static int decode(vmsh_reader *rd, const index_entry *e, uint8_t *out, vmsh_error **err)
{
    const vmsh_file_index *idx = rd->idx;
    /* the chunk index's runs (issue 27), then every pack table once */
    chunk_loc loc;
    int rc = repo_locate_entry(rd->repo, e, idx->size, rd->id, rd->name, &loc, err);
    if (rc < 0)
        return rc;
    chunk_reader *cr = NULL;
    if ((rc = pool_get(rd, &cr, err)) < 0)
        return rc;
    rc = chunk_reader_read(cr, &loc, out, err);
    pool_put(rd, cr);
    if (rc < 0)
        return vmsh_error_prefix(err, "backup %s, file %s, chunk %llu", rd->id, rd->name,
                                 (unsigned long long)e->chunk);
    return 0;
}

/* Copies bytes [from, from + n) of the chunk of entry `e` to dst through the
 * cache. A chunk another thread is decoding is waited for, not decoded
 * twice; when every slot is in use the chunk is decoded outside the cache. */
static int read_chunk(vmsh_reader *rd, const index_entry *e, size_t from, size_t n, uint8_t *dst,
                      vmsh_error **err)
{
    pthread_mutex_lock(&rd->mu);
    slot *s;
    for (;;) {
        s = NULL;
        slot *victim = NULL;
        for (size_t i = 0; i < rd->n_slots; i++) {
            slot *c = &rd->slots[i];
            if (c->state != SLOT_EMPTY && c->chunk == e->chunk) {
                s = c;
                break;
            }
            if (c->refs == 0 && c->state != SLOT_LOADING &&
                (!victim || c->state < victim->state ||
                 (c->state == victim->state && c->used < victim->used)))
                victim = c;
        }
        if (s && s->state == SLOT_LOADING) {
            pthread_cond_wait(&rd->cond, &rd->mu);
            continue;
        }
        if (s) {
            rd->st.cache_hits++;
            break;
        }
        if (!victim)
            break; /* all busy */
        if (!victim->buf && !(victim->buf = malloc(CHUNK_SIZE)))
            break; /* decoded outside the cache below; malloc fails there too */
        s = victim;
        s->state = SLOT_LOADING;
        s->chunk = e->chunk;
        s->refs = 1;
        rd->st.chunks_read++;
        pthread_mutex_unlock(&rd->mu);
        int rc = decode(rd, e, s->buf, err);
        pthread_mutex_lock(&rd->mu);
        s->state = rc == 0 ? SLOT_READY : SLOT_EMPTY; /* errors are not cached */
        s->refs--;
        pthread_cond_broadcast(&rd->cond);
        if (rc < 0) {
            pthread_mutex_unlock(&rd->mu);
            return rc;
        }
        break;
    }
    if (!s) {
        rd->st.chunks_read++;
        pthread_mutex_unlock(&rd->mu);
        uint8_t *tmp = malloc(CHUNK_SIZE);
        if (!tmp)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        int rc = decode(rd, e, tmp, err);
        if (rc == 0)
            memcpy(dst, tmp + from, n);
        free(tmp);
        return rc;
    }
    s->refs++;
    s->used = ++rd->tick;
    pthread_mutex_unlock(&rd->mu);
    memcpy(dst, s->buf + from, n);
    pthread_mutex_lock(&rd->mu);
    s->refs--;
    pthread_mutex_unlock(&rd->mu);
    return 0;
}

ssize_t vmsh_reader_pread(vmsh_reader *rd, void *buf, size_t len, uint64_t offset, vmsh_error **err)
{
    const vmsh_file_index *idx = rd->idx;
    if (offset >= idx->size || len == 0)
        return 0;
    if (len > idx->size - offset)
        len = (size_t)(idx->size - offset);
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;
    uint8_t *dst = buf;
    uint64_t chunk = offset / CHUNK_SIZE;
    size_t i = lower_bound(idx, chunk);
    size_t done = 0;
    uint64_t zeros = 0;
    while (done < len) {
        uint64_t pos = offset + done;
        chunk = pos / CHUNK_SIZE;
        size_t from = (size_t)(pos % CHUNK_SIZE);
        size_t n = CHUNK_SIZE - from < len - done ? CHUNK_SIZE - from : len - done;
        while (i < idx->count && idx->entries[i].chunk < chunk)
            i++;
        if (i < idx->count && idx->entries[i].chunk == chunk) {
            int rc = read_chunk(rd, &idx->entries[i], from, n, dst + done, err);
            if (rc < 0)
                return rc;
        } else {
            memset(dst + done, 0, n);
            zeros++;
        }
        done += n;
    }
    if (zeros) {
        pthread_mutex_lock(&rd->mu);
        rd->st.zero_reads += zeros;
        pthread_mutex_unlock(&rd->mu);
    }
    return (ssize_t)done;
}

int vmsh_reader_extents(vmsh_reader *rd, uint64_t offset, uint64_t len, vmsh_reader_extent_fn fn,
                        void *opaque)
{
    const vmsh_file_index *idx = rd->idx;
    if (offset >= idx->size || len == 0)
        return 0;
    uint64_t end = len > idx->size - offset ? idx->size : offset + len;
    size_t i = lower_bound(idx, offset / CHUNK_SIZE);
    uint64_t pos = offset;
    while (pos < end) {
        uint64_t chunk = pos / CHUNK_SIZE;
        bool data = i < idx->count && idx->entries[i].chunk == chunk;
        uint64_t stop; /* first chunk number past this run */
        if (data) {
            size_t k = i + 1;
            while (k < idx->count && idx->entries[k].chunk == idx->entries[k - 1].chunk + 1)
                k++;
            stop = idx->entries[k - 1].chunk + 1;
            i = k;
        } else {
            stop = i < idx->count ? idx->entries[i].chunk : UINT64_MAX;
        }
        uint64_t run_end = stop > end / CHUNK_SIZE ? end : stop * CHUNK_SIZE;
        if (run_end > end)
            run_end = end;
        int rc = fn(opaque, pos, run_end - pos, data);
        if (rc != 0)
            return rc;
        pos = run_end;
    }
    return 0;
}

void vmsh_reader_get_stats(vmsh_reader *rd, vmsh_reader_stats *out)
{
    pthread_mutex_lock(&rd->mu);
    *out = rd->st;
    pthread_mutex_unlock(&rd->mu);
}

void vmsh_reader_free(vmsh_reader *rd)
{
    if (!rd)
        return;
    if (rd->slots)
        for (size_t i = 0; i < rd->n_slots; i++)
            free(rd->slots[i].buf);
    free(rd->slots);
    if (rd->pool)
        for (size_t i = 0; i < rd->n_pool; i++)
            chunk_reader_free(rd->pool[i]);
    free(rd->pool);
    vmsh_file_index_free(rd->idx);
    repo_read_end(rd->repo, rd->lock);
    free(rd->name);
    pthread_cond_destroy(&rd->cond);
    pthread_mutex_destroy(&rd->mu);
    free(rd);
}
