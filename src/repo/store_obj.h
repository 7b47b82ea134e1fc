/* store_obj.h - the part shared by the object stores (RADOS, S3): issue 26.
 * An object store has keys, not directories: a repository file `name`
 * is the object PREFIX/name (docs/formats/repository.md, "Stores").
 * store_obj.c turns the store.h ops table into a few calls of a backend
 * (whole-object put, ranged get, stat, delete, listing by prefix, lease
 * locks) and adds what every object store needs the same way: name checks,
 * directories as key prefixes, the pack writer's buffer and its upload by
 * worker threads, readahead for ranged reads. */
#ifndef VMSH_REPO_STORE_OBJ_H
#define VMSH_REPO_STORE_OBJ_H

#include "store.h"

#include <pthread.h>

typedef struct obj_store obj_store;

/* One object of a listing: its key relative to the repository's root. */
typedef int (*obj_list_fn)(void *opaque, const char *key, uint64_t size, int64_t mtime_ns);

typedef struct obj_backend_ops {
    /* Whole-object put: atomic (all of it or the old object), durable. */
    int (*put)(obj_store *s, const char *key, const void *buf, size_t len, vmsh_error **err);
    /* Optional: a put in two halves. put_start returns once the store
     * has taken its own copy of buf (the caller may then reuse buf), with
     * a handle that put_wait waits for: the result of the put as put's.
     * put_wait is called exactly once for every put_start that returned 0.
     * The upload workers use them where given (RADOS: aio_write_full) so
     * that a pack's buffer serves the next pack while it travels. */
    int (*put_start)(obj_store *s, const char *key, const void *buf, size_t len, void **handle,
                     vmsh_error **err);
    int (*put_wait)(obj_store *s, const char *key, void *handle, vmsh_error **err);
    /* Reads up to len bytes at off into buf: *got (short at the end).
     * -ENOENT when absent. */
    int (*read)(obj_store *s, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                vmsh_error **err);
    /* -ENOENT when absent. */
    int (*stat)(obj_store *s, const char *key, repo_store_stat *st, vmsh_error **err);
    int (*del)(obj_store *s, const char *key, vmsh_error **err);
    /* Every key under `prefix` (a key prefix ending in '/' or ""), in any
     * order; sizes and times where the listing has them (else 0 and -1). */
    int (*list)(obj_store *s, const char *prefix, obj_list_fn fn, void *opaque, vmsh_error **err);
    /* A lease lock on key (store.h, lock). */
    int (*lock)(obj_store *s, const char *key, bool exclusive, vmsh_lock **out, vmsh_error **err);
    void (*free)(obj_store *s);
    /* Optional: the server's clock (store.h, clock). */
    int (*clock)(obj_store *s, const char *key, int64_t *ms, vmsh_error **err);
    /* The pack size writers should aim at (store.h, pack_target); 0: the
     * repository's default. */
    uint64_t pack_target;
} obj_backend_ops;

typedef struct obj_upload obj_upload;
#define OBJ_SPARE_MAX 1
typedef struct obj_block obj_block;
typedef struct obj_fetch obj_fetch;

/* Counters of the traffic with the store, updated atomically. */
typedef struct obj_counters {
    uint64_t put_bytes, put_ns, puts;    /* uploads: bytes, time spent in them */
    uint64_t read_bytes, read_ns, reads; /* ranged reads from the store */
    uint64_t cache_hits, prefetched;     /* reads served by the read cache; blocks read ahead */
    uint64_t block_bufs;                 /* read cache buffers allocated (at most n_blocks) */
} obj_counters;

struct obj_store {
    repo_store base;
    const obj_backend_ops *be;
    /* the upload workers (store-threads): commits queue here and return;
     * every other operation waits until the queue is empty (drain), so an
     * index or a manifest is written only after the packs it names are
     * durable, and the first failed upload fails the next operation */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *workers;
    unsigned n_workers, max_pending;
    obj_upload *queue; /* FIFO */
    unsigned pending;  /* queued or in flight */
    bool quit;
    int upload_rc;
    char *upload_msg;
    size_t readahead;
    /* the read cache (store_obj.c, "read cache"): blocks of `readahead`
     * bytes of immutable objects (packs, index runs), shared by every open
     * file of the store, with fetchers that read ahead of sequential
     * readers (store-prefetch blocks); bounded, so memory does not grow
     * with the repository */
    pthread_mutex_t cmu;
    pthread_cond_t ccv;
    obj_block *blocks;
    unsigned n_blocks, prefetch;
    uint64_t tick;
    obj_fetch *fetchq; /* FIFO */
    pthread_t *fetchers;
    unsigned n_fetchers;
    bool fetch_quit;
    /* pack buffers kept for the next pack (under mu): a fresh 64 MiB
     * buffer costs 16384 page faults and as many zeroed pages, a fifth of
     * a backup's CPU time */
    uint8_t *spare[OBJ_SPARE_MAX];
    size_t spare_cap[OBJ_SPARE_MAX];
    unsigned n_spare;
    /* what went through the store (vmsh_repo_store_stats) */
    obj_counters ctr;
};

/* Store options (docs/config.md): store-threads, store-timeout, ... as set
 * by vmsh_repo_store_setopt; NULL when unset. */
const char *obj_store_opt(const char *key);
unsigned obj_store_opt_uint(const char *key, unsigned dflt, unsigned min, unsigned max);

/* Fills base.ops, starts the workers. root names the store in messages. */
int obj_store_init(obj_store *s, const obj_backend_ops *be, const char *root, vmsh_error **err);
/* Stops the workers (waiting for the queue) and frees what init made; the
 * backend frees s itself after. */
void obj_store_fini(obj_store *s);

/* What went through the store so far. */
void obj_store_counters(obj_store *s, obj_counters *out);

/* The repository's files as keys: valid store names only (store.h). */
bool obj_name_valid(const char *name, bool allow_empty);

/* Backoff before retry `attempt` (1, 2, ...): 200 ms doubled, at most 5 s. */
void obj_backoff(unsigned attempt);

int repo_store_rados_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err);
/* The OSD's clock from a cls_lock get_info reply (store_rados.c): the
 * expiration in ms of the lease whose cookie is `cookie`, or -1 (a reply
 * that does not parse or does not hold it). */
int64_t rados_clock_parse(const uint8_t *buf, size_t len, const char *cookie);
int repo_store_s3_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err);
int repo_store_mem_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err);

#endif
