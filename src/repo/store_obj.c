/* store_obj.c - the store.h ops table over an object store's backend
 * (store_obj.h; issue 26, points 1 and 4). */
#include "store_obj.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/fs.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NAME_MAX_LEN  512
#define MAX_DEPTH     4
#define WRITE_MAX     (256u << 20) /* a pack is at most 64 MiB plus its table */
#define READAHEAD_DEF (4u << 20)

/* ---- options (docs/config.md) ---- */

static const char *const opt_keys[] = {
    "store-threads",
    "store-timeout",
    "store-readahead",
    "store-prefetch",
    "ceph-conf",
    "ceph-user",
    "ceph-keyring",
    "s3-region",
    "s3-credentials-file",
    "s3-addressing",
    "store-lease-seconds",
    /* the gc protocol's times (issue 26; docs/formats/gc.md), every store */
    "store-gc-grace-seconds",
    "store-gc-margin-seconds",
    "store-session-seconds",
    NULL,
};
static char *opt_vals[VMSH_ARRAY_SIZE(opt_keys)];
static pthread_mutex_t opt_mu = PTHREAD_MUTEX_INITIALIZER;

int vmsh_repo_store_setopt(const char *key, const char *value)
{
    for (size_t i = 0; opt_keys[i]; i++) {
        if (strcmp(opt_keys[i], key) != 0)
            continue;
        char *v = value ? strdup(value) : NULL;
        if (value && !v)
            return -ENOMEM;
        pthread_mutex_lock(&opt_mu);
        free(opt_vals[i]);
        opt_vals[i] = v;
        pthread_mutex_unlock(&opt_mu);
        return 0;
    }
    return -ENOENT;
}

/* The config's value (vmsh_repo_store_setopt), else the environment's
 * VMSHADOW_<KEY> (store-timeout: VMSHADOW_STORE_TIMEOUT), for programs
 * without a config file (the repository tool, tests). */
const char *obj_store_opt(const char *key)
{
    for (size_t i = 0; opt_keys[i]; i++) {
        if (strcmp(opt_keys[i], key) != 0)
            continue;
        if (opt_vals[i])
            return opt_vals[i]; /* set before any store opens, never changed after */
        char env[64] = "VMSHADOW_";
        size_t n = strlen(env);
        for (const char *c = key; *c && n + 1 < sizeof(env); c++)
            env[n++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        env[n] = 0;
        const char *v = getenv(env);
        return v && *v ? v : NULL;
    }
    return NULL;
}

unsigned obj_store_opt_uint(const char *key, unsigned dflt, unsigned min, unsigned max)
{
    const char *v = obj_store_opt(key);
    if (!v || !*v)
        return dflt;
    char *end = NULL;
    unsigned long n = strtoul(v, &end, 10);
    if (*end || n < min || n > max)
        return dflt;
    return (unsigned)n;
}

void obj_backoff(unsigned attempt)
{
    unsigned ms = 200u << (attempt > 5 ? 5 : attempt - 1);
    if (ms > 5000)
        ms = 5000;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void ctr_add(uint64_t *c, uint64_t v)
{
    __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

/* The process's totals (vmsh_repo_store_traffic): per direction, bytes,
 * requests, and the time during which at least one request was in flight
 * (an interval opens when the first starts, closes when the last ends). */
typedef struct dir_traffic {
    uint64_t bytes, ops, busy_ns, since;
    unsigned active;
} dir_traffic;
static pthread_mutex_t traffic_mu = PTHREAD_MUTEX_INITIALIZER;
static dir_traffic traffic_up, traffic_down;

static void traffic_begin(dir_traffic *t, uint64_t now)
{
    pthread_mutex_lock(&traffic_mu);
    if (t->active++ == 0)
        t->since = now;
    pthread_mutex_unlock(&traffic_mu);
}

static void traffic_end(dir_traffic *t, uint64_t now, bool ok, uint64_t bytes)
{
    pthread_mutex_lock(&traffic_mu);
    t->bytes += bytes;
    t->ops += ok ? 1 : 0;
    if (--t->active == 0)
        t->busy_ns += now - t->since;
    pthread_mutex_unlock(&traffic_mu);
}

static double busy_s(const dir_traffic *t, uint64_t now)
{
    return (double)(t->busy_ns + (t->active ? now - t->since : 0)) / 1e9;
}

static void buf_recycle(obj_store *s, uint8_t *buf, size_t cap);

/* A put through the backend, counted. With *reuse (an upload worker's
 * pack buffer of capacity cap) and a backend that copies (put_start), the
 * buffer goes back to the pool as soon as the store has its copy, and
 * *reuse becomes NULL. */
static int be_put(obj_store *s, const char *key, const void *buf, size_t len, uint8_t **reuse,
                  size_t cap, vmsh_error **err)
{
    uint64_t t0 = mono_ns();
    traffic_begin(&traffic_up, t0);
    int rc;
    if (reuse && s->be->put_start && s->be->put_wait) {
        void *h = NULL;
        rc = s->be->put_start(s, key, buf, len, &h, err);
        if (rc == 0) {
            buf_recycle(s, *reuse, cap);
            *reuse = NULL;
            rc = s->be->put_wait(s, key, h, err);
        }
    } else {
        rc = s->be->put(s, key, buf, len, err);
    }
    uint64_t t1 = mono_ns();
    traffic_end(&traffic_up, t1, rc == 0, rc == 0 ? len : 0);
    if (rc == 0) {
        ctr_add(&s->ctr.put_bytes, len);
        ctr_add(&s->ctr.puts, 1);
    }
    ctr_add(&s->ctr.put_ns, t1 - t0);
    return rc;
}

/* A ranged read through the backend, counted. */
static int be_read(obj_store *s, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                   vmsh_error **err)
{
    uint64_t t0 = mono_ns();
    traffic_begin(&traffic_down, t0);
    int rc = s->be->read(s, key, off, len, buf, got, err);
    uint64_t t1 = mono_ns();
    traffic_end(&traffic_down, t1, rc == 0, rc == 0 ? *got : 0);
    if (rc == 0) {
        ctr_add(&s->ctr.read_bytes, *got);
        ctr_add(&s->ctr.reads, 1);
    }
    ctr_add(&s->ctr.read_ns, t1 - t0);
    return rc;
}

void vmsh_repo_store_traffic(vmsh_store_traffic *out)
{
    uint64_t now = mono_ns();
    pthread_mutex_lock(&traffic_mu);
    *out = (vmsh_store_traffic){
        .bytes_up = traffic_up.bytes,
        .bytes_down = traffic_down.bytes,
        .puts = traffic_up.ops,
        .reads = traffic_down.ops,
        .up_seconds = busy_s(&traffic_up, now),
        .down_seconds = busy_s(&traffic_down, now),
    };
    pthread_mutex_unlock(&traffic_mu);
}

void obj_store_counters(obj_store *s, obj_counters *out)
{
    uint64_t *src = (uint64_t *)&s->ctr, *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

bool obj_name_valid(const char *name, bool allow_empty)
{
    size_t n = strlen(name);
    if (n == 0)
        return allow_empty;
    if (n > NAME_MAX_LEN || name[0] == '/' || name[n - 1] == '/' || strstr(name, "//"))
        return false;
    char buf[NAME_MAX_LEN + 1];
    memcpy(buf, name, n + 1);
    int depth = 0;
    for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save))
        if (!vmsh_name_is_safe(c) || ++depth > MAX_DEPTH)
            return false;
    return true;
}

static int bad_name(vmsh_error **err, const char *name)
{
    return vmsh_error_set(err, -EINVAL, "invalid repository file name \"%s\"", name);
}

/* ---- the upload workers ---- */

struct obj_upload {
    obj_upload *next;
    char *key;
    uint8_t *buf;
    size_t len, cap;
};

/* Keeps a pack buffer for the next pack, or frees it. */
static void buf_recycle(obj_store *s, uint8_t *buf, size_t cap)
{
    if (!buf)
        return;
    pthread_mutex_lock(&s->mu);
    if (s->n_spare < OBJ_SPARE_MAX) {
        s->spare[s->n_spare] = buf;
        s->spare_cap[s->n_spare++] = cap;
        buf = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    free(buf);
}

static void upload_free(obj_store *s, obj_upload *u)
{
    if (!u)
        return;
    free(u->key);
    buf_recycle(s, u->buf, u->cap);
    free(u);
}

static void *worker_main(void *arg)
{
    obj_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->queue && !s->quit)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->queue)
            break;
        obj_upload *u = s->queue;
        s->queue = u->next;
        bool skip = s->upload_rc < 0; /* the backup fails anyway */
        pthread_mutex_unlock(&s->mu);
        vmsh_error *e = NULL;
        int rc = skip ? 0 : be_put(s, u->key, u->buf, u->len, &u->buf, u->cap, &e);
        upload_free(s, u);
        pthread_mutex_lock(&s->mu);
        if (rc < 0 && s->upload_rc == 0) {
            s->upload_rc = rc;
            s->upload_msg = strdup(e ? e->message : strerror(-rc));
        }
        vmsh_error_free(e);
        s->pending--;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Waits until every queued upload is done: the first failure is returned
 * (and stays: what follows would name a pack that is not there). */
static int drain(obj_store *s, vmsh_error **err)
{
    pthread_mutex_lock(&s->mu);
    while (s->pending)
        pthread_cond_wait(&s->cv, &s->mu);
    int rc = s->upload_rc;
    if (rc < 0)
        vmsh_error_set(err, rc, "%s", s->upload_msg ? s->upload_msg : strerror(-rc));
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int enqueue(obj_store *s, obj_upload *u, vmsh_error **err)
{
    pthread_mutex_lock(&s->mu);
    /* bounded: each queued pack holds its buffer */
    while (s->pending >= s->max_pending && s->upload_rc == 0)
        pthread_cond_wait(&s->cv, &s->mu);
    int rc = s->upload_rc;
    if (rc < 0) {
        vmsh_error_set(err, rc, "%s", s->upload_msg ? s->upload_msg : strerror(-rc));
        pthread_mutex_unlock(&s->mu);
        upload_free(s, u);
        return rc;
    }
    obj_upload **tail = &s->queue;
    while (*tail)
        tail = &(*tail)->next;
    *tail = u;
    s->pending++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* ---- ops ---- */

/* What every op but the ranged I/O does first: check the name, then wait
 * for the queued uploads (invariant 2: what is put, read, listed or
 * deleted after a pack's commit sees the pack). Names under locks/ (the
 * writers' sessions, gc's marks: docs/formats/gc.md) order nothing with
 * the packs and never wait: a session's heartbeat must not stall behind a
 * writer's uploads. */
static int ready(obj_store *s, const char *name, bool allow_empty, vmsh_error **err)
{
    if (!obj_name_valid(name, allow_empty))
        return bad_name(err, name);
    if (strncmp(name, "locks/", 6) == 0)
        return 0;
    return drain(s, err);
}

static void cache_forget(obj_store *s, const char *key);

static int o_put(repo_store *st, const char *name, const void *buf, size_t len, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    if (rc < 0)
        return rc;
    cache_forget(s, name);
    return be_put(s, name, buf, len, NULL, 0, err);
}

/* One round trip for what is small (manifests, index objects, sessions,
 * the config: nearly every get): a ranged read of the first GET_FIRST
 * bytes that comes back short is the whole object; only a larger one
 * costs a stat and a second read. */
#define GET_FIRST (1u << 20)

static int o_get(repo_store *st, const char *name, size_t max, char **out, size_t *out_len,
                 vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    if (rc < 0)
        return rc;
    size_t first = max < GET_FIRST ? max + 1 : GET_FIRST;
    char *buf = malloc(first + 1);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t got = 0;
    if ((rc = be_read(s, name, 0, first, buf, &got, err)) < 0) {
        free(buf);
        return rc;
    }
    if (got == first) {
        repo_store_stat sb;
        if ((rc = s->be->stat(s, name, &sb, err)) < 0) {
            free(buf);
            return rc;
        }
        if (sb.size > max) {
            free(buf);
            return vmsh_error_set(err, -EFBIG, "%s/%s is too large (%llu bytes, limit %zu)",
                                  st->root, name, (unsigned long long)sb.size, max);
        }
        char *nb = sb.size > got ? realloc(buf, (size_t)sb.size + 1) : buf;
        if (!nb) {
            free(buf);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        buf = nb;
        size_t more = 0;
        if (sb.size > got &&
            (rc = be_read(s, name, got, (size_t)sb.size - got, buf + got, &more, err)) < 0) {
            free(buf);
            return rc;
        }
        got += more;
    }
    buf[got] = 0;
    *out = buf;
    if (out_len)
        *out_len = got;
    return 0;
}

static int o_stat(repo_store *st, const char *name, repo_store_stat *out, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    repo_store_stat sb;
    if (rc < 0 || (rc = s->be->stat(s, name, &sb, err)) < 0)
        return rc;
    if (out)
        *out = sb;
    return 0;
}

static int o_del(repo_store *st, const char *name, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    if (rc < 0)
        return rc;
    cache_forget(s, name);
    return s->be->del(s, name, err);
}

typedef struct list_ctx {
    obj_store *s;
    size_t plen;
    unsigned flags;
    repo_store_list_fn fn;
    void *opaque;
    char **dirs; /* the subdirectories seen (the keys' next components) */
    size_t n_dirs;
    vmsh_error **err;
} list_ctx;

static int list_entry(void *opaque, const char *key, uint64_t size, int64_t mtime_ns)
{
    list_ctx *l = opaque;
    const char *rest = key + l->plen;
    const char *slash = strchr(rest, '/');
    if (!*rest)
        return 0;
    if (slash) {
        size_t n = (size_t)(slash - rest);
        for (size_t i = 0; i < l->n_dirs; i++)
            if (strlen(l->dirs[i]) == n && memcmp(l->dirs[i], rest, n) == 0)
                return 0;
        char **nd = vmsh_realloc_array(l->dirs, l->n_dirs + 1, sizeof(*nd));
        if (!nd)
            return -ENOMEM;
        l->dirs = nd;
        if (!(nd[l->n_dirs] = strndup(rest, n)))
            return -ENOMEM;
        l->n_dirs++;
        return 0; /* reported after the listing: once each */
    }
    repo_store_stat st = {size, mtime_ns < 0 ? 0 : mtime_ns};
    if ((l->flags & REPO_STORE_LIST_STAT) && mtime_ns < 0) {
        int rc = l->s->be->stat(l->s, key, &st, NULL);
        if (rc == -ENOENT)
            return 0; /* deleted meanwhile */
        if (rc < 0)
            return vmsh_error_set(l->err, rc, "cannot stat %s/%s: %s", l->s->base.root, key,
                                  strerror(-rc));
    }
    return l->fn(l->opaque, rest, REPO_STORE_REG, &st);
}

static int o_list(repo_store *st, const char *dir, unsigned flags, repo_store_list_fn fn,
                  void *opaque, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, dir, true, err);
    if (rc < 0)
        return rc;
    _cleanup_free_ char *prefix = NULL;
    if (asprintf(&prefix, "%s%s", dir, *dir ? "/" : "") < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    list_ctx l = {s, strlen(prefix), flags, fn, opaque, NULL, 0, err};
    /* directories exist only as key prefixes: an empty or absent one lists
     * as empty (never -ENOENT) */
    rc = s->be->list(s, prefix, list_entry, &l, err);
    repo_store_stat zero = {0};
    for (size_t i = 0; i < l.n_dirs; i++) {
        if (rc >= 0)
            rc = fn(opaque, l.dirs[i], REPO_STORE_DIR, &zero);
        free(l.dirs[i]);
    }
    free(l.dirs);
    if (rc == -ENOMEM)
        vmsh_error_set(err, rc, "out of memory listing %s", st->root);
    return rc;
}

static int o_sync(repo_store *st, const char *dir, vmsh_error **err)
{
    (void)dir; /* every put is durable when it returns: only the queue */
    return drain((obj_store *)st, err);
}

static int o_mkdir(repo_store *st, const char *dir, vmsh_error **err)
{
    (void)st; /* no directories: keys only */
    return obj_name_valid(dir, true) ? 0 : bad_name(err, dir);
}

struct repo_store_file {
    obj_store *s;
    char *key;
    uint8_t *buf; /* the writer's whole object */
    size_t cap, len;
    uint64_t size;     /* a reader: the object's */
    uint64_t last_end; /* a reader: where its previous read ended */
    unsigned streak;   /* a reader: its sequential reads in a row */
};

static repo_store_file *file_new(obj_store *s, const char *name)
{
    repo_store_file *f = calloc(1, sizeof(*f));
    if (f && !(f->key = strdup(name))) {
        free(f);
        f = NULL;
    }
    if (f)
        f->s = s;
    return f;
}

static void o_close(repo_store_file *f)
{
    if (!f)
        return;
    free(f->key);
    buf_recycle(f->s, f->buf, f->cap);
    free(f);
}

static int o_open(repo_store *st, const char *name, unsigned flags, repo_store_file **out,
                  vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    if (flags & REPO_STORE_DIRECT)
        return -EINVAL; /* no O_DIRECT: the caller reads buffered */
    if (!obj_name_valid(name, false))
        return bad_name(err, name);
    int rc = drain(s, err);
    repo_store_stat sb;
    if (rc < 0 || (rc = s->be->stat(s, name, &sb, err)) < 0)
        return rc;
    repo_store_file *f = file_new(s, name);
    if (!f)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    f->size = sb.size;
    *out = f;
    return 0;
}

/* ---- the read cache ----
 * Ranged reads are what restores and verify do: each worker walks a pack's
 * chunks in order, several workers the same pack a few MiB apart. Each
 * read of a store costs a round trip, so reads go through blocks of
 * store-readahead bytes (4 MiB), aligned in the object and shared by every
 * open file of the store (two workers reading the same pack fetch each
 * block once), and a reader that goes forward gets the next store-prefetch
 * blocks fetched ahead by the fetcher threads while it decodes: the store
 * is read while the data is decoded and written. Only files opened with
 * open_file are read this way: packs and chunk index runs, which are
 * written once and never change under their name (a put, commit or delete
 * of a name forgets its blocks all the same). A block that failed to read
 * is dropped, its error returned to every reader waiting for it; the next
 * read tries again. */

struct obj_block {
    char *key; /* NULL: a free slot */
    uint64_t idx;
    uint8_t *buf;
    size_t len;
    int state; /* BLOCK_LOADING, 0 ready, -errno failed */
    unsigned refs;
    uint64_t used;
};

struct obj_fetch {
    obj_fetch *next;
    obj_block *b;
    uint64_t size; /* the object's */
};

#define BLOCK_LOADING 1

static obj_block *cache_find(obj_store *s, const char *key, uint64_t idx)
{
    for (unsigned i = 0; i < s->n_blocks; i++) {
        obj_block *b = &s->blocks[i];
        if (b->key && b->idx == idx && strcmp(b->key, key) == 0)
            return b;
    }
    return NULL;
}

/* A slot for a new block (cmu held): a free one, else the least recently
 * used that nobody holds; NULL when every block is in use. */
static obj_block *cache_slot(obj_store *s)
{
    obj_block *victim = NULL;
    for (unsigned i = 0; i < s->n_blocks; i++) {
        obj_block *b = &s->blocks[i];
        if (!b->key)
            return b;
        if (b->refs == 0 && b->state != BLOCK_LOADING && (!victim || b->used < victim->used))
            victim = b;
    }
    if (victim) {
        free(victim->key);
        victim->key = NULL;
    }
    return victim;
}

/* Claims slot b for (key, idx), loading, held once (cmu held). */
static int cache_claim(obj_store *s, obj_block *b, const char *key, uint64_t idx)
{
    if (!b->buf) {
        if (!(b->buf = malloc(s->readahead)))
            return -ENOMEM;
        ctr_add(&s->ctr.block_bufs, 1);
    }
    if (!(b->key = strdup(key)))
        return -ENOMEM;
    b->idx = idx;
    b->len = 0;
    b->state = BLOCK_LOADING;
    b->refs = 1;
    b->used = ++s->tick;
    return 0;
}

static void cache_release(obj_store *s, obj_block *b)
{
    if (--b->refs == 0 && b->state < 0) {
        free(b->key); /* a failure is not kept: the next read tries again */
        b->key = NULL;
    }
}

static void cache_forget(obj_store *s, const char *key)
{
    if (!s->n_blocks)
        return;
    pthread_mutex_lock(&s->cmu);
    for (unsigned i = 0; i < s->n_blocks; i++) {
        obj_block *b = &s->blocks[i];
        if (b->key && b->refs == 0 && strcmp(b->key, key) == 0) {
            free(b->key);
            b->key = NULL;
        }
    }
    pthread_mutex_unlock(&s->cmu);
}

/* Reads block b of an object of `size` bytes from the store (b is
 * loading: its buffer is ours), then publishes it. */
static void cache_load(obj_store *s, obj_block *b, const char *key, uint64_t size)
{
    uint64_t off = b->idx * s->readahead;
    size_t want = size - off < s->readahead ? (size_t)(size - off) : s->readahead;
    size_t got = 0;
    int rc = be_read(s, key, off, want, b->buf, &got, NULL);
    pthread_mutex_lock(&s->cmu);
    b->len = got;
    b->state = rc < 0 ? rc : 0;
    cache_release(s, b);
    pthread_cond_broadcast(&s->ccv);
    pthread_mutex_unlock(&s->cmu);
}

static void *fetcher_main(void *arg)
{
    obj_store *s = arg;
    pthread_mutex_lock(&s->cmu);
    for (;;) {
        while (!s->fetchq && !s->fetch_quit)
            pthread_cond_wait(&s->ccv, &s->cmu);
        if (!s->fetchq)
            break;
        obj_fetch *q = s->fetchq;
        s->fetchq = q->next;
        pthread_mutex_unlock(&s->cmu);
        /* the slot's key is stable while loading */
        cache_load(s, q->b, q->b->key, q->size);
        free(q);
        pthread_mutex_lock(&s->cmu);
    }
    pthread_mutex_unlock(&s->cmu);
    return NULL;
}

/* Queues the blocks after `idx` of f's object that are not cached (cmu
 * held); stops at the first that finds no free slot. */
static void cache_prefetch(obj_store *s, repo_store_file *f, uint64_t idx)
{
    if (!s->n_fetchers) {
        s->fetchers = calloc(s->n_workers, sizeof(*s->fetchers));
        for (unsigned i = 0; s->fetchers && i < s->n_workers; i++)
            if (pthread_create(&s->fetchers[i], NULL, fetcher_main, s) == 0)
                s->n_fetchers++;
        if (!s->n_fetchers) {
            s->prefetch = 0; /* reads still work, without read-ahead */
            return;
        }
    }
    obj_fetch **tail = &s->fetchq;
    while (*tail)
        tail = &(*tail)->next;
    for (uint64_t i = idx + 1; i <= idx + s->prefetch && i * s->readahead < f->size; i++) {
        if (cache_find(s, f->key, i))
            continue;
        obj_block *b = cache_slot(s);
        obj_fetch *q = b ? calloc(1, sizeof(*q)) : NULL;
        if (!q || cache_claim(s, b, f->key, i) < 0) {
            free(q);
            break;
        }
        q->b = b;
        q->size = f->size;
        *tail = q;
        tail = &q->next;
        ctr_add(&s->ctr.prefetched, 1);
    }
    pthread_cond_broadcast(&s->ccv);
}

/* Up to len bytes at off from the block that holds off: bytes copied, or
 * -errno. */
static int64_t cache_read(repo_store_file *f, void *buf, size_t len, uint64_t off, bool ahead)
{
    obj_store *s = f->s;
    uint64_t idx = off / s->readahead, boff = off - idx * s->readahead;
    pthread_mutex_lock(&s->cmu);
    obj_block *b = cache_find(s, f->key, idx);
    if (b) {
        b->refs++; /* cached, or being read ahead */
        ctr_add(&s->ctr.cache_hits, 1);
    } else if ((b = cache_slot(s)) && cache_claim(s, b, f->key, idx) == 0) {
        b->refs++; /* the loader's and ours */
        if (ahead && s->prefetch)
            cache_prefetch(s, f, idx);
        pthread_mutex_unlock(&s->cmu);
        cache_load(s, b, f->key, f->size);
        pthread_mutex_lock(&s->cmu);
        ahead = false;
    } else {
        /* every block is in use: read around the cache */
        if (b)
            b->key = NULL;
        pthread_mutex_unlock(&s->cmu);
        size_t got = 0;
        int rc = be_read(s, f->key, off, len, buf, &got, NULL);
        return rc < 0 ? rc : (int64_t)got;
    }
    if (ahead && s->prefetch)
        cache_prefetch(s, f, idx);
    while (b->state == BLOCK_LOADING)
        pthread_cond_wait(&s->ccv, &s->cmu);
    int64_t rc = b->state;
    if (rc == 0) {
        b->used = ++s->tick;
        size_t n = boff >= b->len ? 0 : b->len - (size_t)boff;
        if (n > len)
            n = len;
        pthread_mutex_unlock(&s->cmu);
        memcpy(buf, b->buf + boff, n); /* held: nobody reuses the slot */
        pthread_mutex_lock(&s->cmu);
        rc = (int64_t)n;
    }
    cache_release(s, b);
    pthread_mutex_unlock(&s->cmu);
    return rc;
}

static int64_t o_pread(repo_store_file *f, void *buf, size_t len, uint64_t off)
{
    obj_store *s = f->s;
    if (off >= f->size)
        return 0;
    if (len > f->size - off)
        len = (size_t)(f->size - off);
    if (!s->n_blocks || len >= s->readahead) {
        size_t got = 0;
        int rc = be_read(s, f->key, off, len, buf, &got, NULL);
        return rc < 0 ? rc : (int64_t)got;
    }
    /* forward and near the last read: a sequential reader, worth reading
     * ahead for (a lookup in an index run jumps: not) */
    bool seq = off >= f->last_end && off - f->last_end <= 2 * (uint64_t)s->readahead;
    f->streak = seq ? f->streak + 1 : 0;
    f->last_end = off + len;
    size_t done = 0;
    while (done < len) {
        int64_t n = cache_read(f, (uint8_t *)buf + done, len - done, off + done, f->streak >= 2);
        if (n < 0)
            return done ? (int64_t)done : n;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (int64_t)done;
}

static int o_fstat(repo_store_file *f, repo_store_stat *st)
{
    st->size = f->size;
    st->mtime_ns = 0;
    return 0;
}

static int o_create(repo_store *st, const char *name, unsigned flags, repo_store_file **out,
                    vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    if (flags & REPO_STORE_DIRECT)
        return -EINVAL;
    if (!obj_name_valid(name, false))
        return bad_name(err, name);
    repo_store_file *f = file_new(s, name);
    if (!f)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    pthread_mutex_lock(&s->mu);
    if (s->n_spare) {
        f->buf = s->spare[--s->n_spare];
        f->cap = s->spare_cap[s->n_spare];
    }
    pthread_mutex_unlock(&s->mu);
    *out = f;
    return 0;
}

/* The pack is built in memory (at most 64 MiB and its table) and becomes
 * one object in one put at commit: no partial pack is ever visible. */
static int64_t o_pwrite(repo_store_file *f, const void *buf, size_t len, uint64_t off)
{
    if (off + len > WRITE_MAX)
        return -EFBIG;
    size_t end = (size_t)off + len;
    if (end > f->cap) {
        size_t ncap = f->cap ? f->cap : (8u << 20);
        while (ncap < end)
            ncap *= 2;
        uint8_t *nb = realloc(f->buf, ncap);
        if (!nb)
            return -ENOMEM;
        f->buf = nb;
        f->cap = ncap;
    }
    if (off > f->len)
        memset(f->buf + f->len, 0, (size_t)off - f->len);
    memcpy(f->buf + off, buf, len);
    if (end > f->len)
        f->len = end;
    return (int64_t)len;
}

static int o_commit(repo_store_file *f, uint64_t size, vmsh_error **err)
{
    obj_store *s = f->s;
    if (size > f->len) {
        int64_t r = size > WRITE_MAX ? -EFBIG : 0;
        if (r == 0 && size > f->cap) {
            uint8_t *nb = realloc(f->buf, (size_t)size);
            r = nb ? 0 : -ENOMEM;
            if (nb) {
                f->buf = nb;
                f->cap = (size_t)size;
            }
        }
        if (r < 0) {
            vmsh_error_set(err, (int)r, "cannot write %s/%s: %s", s->base.root, f->key,
                           strerror((int)-r));
            o_close(f);
            return (int)r;
        }
        memset(f->buf + f->len, 0, (size_t)size - f->len);
    }
    obj_upload *u = calloc(1, sizeof(*u));
    if (!u) {
        o_close(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    cache_forget(s, f->key);
    u->key = VMSH_TAKE_PTR(f->key);
    u->buf = VMSH_TAKE_PTR(f->buf);
    u->cap = f->cap;
    u->len = (size_t)size;
    o_close(f);
    return enqueue(s, u, err);
}

static void o_abort(repo_store_file *f)
{
    o_close(f); /* nothing was sent */
}

static int o_lock(repo_store *st, const char *which, bool exclusive, vmsh_lock **out,
                  vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    char name[64];
    snprintf(name, sizeof(name), "locks/%s", which);
    if (!obj_name_valid(name, false))
        return bad_name(err, name);
    *out = NULL;
    return s->be->lock(s, name, exclusive, out, err);
}

static int o_clock(repo_store *st, const char *name, int64_t *ms, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    if (!s->be->clock)
        return -EOPNOTSUPP;
    int rc = ready(s, name, false, err);
    return rc < 0 ? rc : s->be->clock(s, name, ms, err);
}

static void o_free(repo_store *st)
{
    obj_store *s = (obj_store *)st;
    obj_store_fini(s);
    s->be->free(s);
}

static const repo_store_ops obj_ops = {
    .version = REPO_STORE_OPS_VERSION,
    .put = o_put,
    .get = o_get,
    .stat = o_stat,
    .del = o_del,
    .list = o_list,
    .sync = o_sync,
    .mkdir = o_mkdir,
    .open_file = o_open,
    .pread = o_pread,
    .fstat = o_fstat,
    .close = o_close,
    .create = o_create,
    .pwrite = o_pwrite,
    .commit = o_commit,
    .abort = o_abort,
    .lock = o_lock,
    .free = o_free,
    .clock = o_clock,
};

int obj_store_init(obj_store *s, const obj_backend_ops *be, const char *root, vmsh_error **err)
{
    s->base.ops = &obj_ops;
    s->base.pack_target = be->pack_target;
    s->be = be;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->cmu, NULL);
    pthread_cond_init(&s->ccv, NULL);
    if (!(s->base.root = strdup(root)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* 2 uploads in flight keep a 1 GbE link busy with 64 MiB packs (one
     * takes ~0.55 s at 118 MB/s; the second hides the round trips) */
    s->n_workers = obj_store_opt_uint("store-threads", 2, 1, 32);
    s->max_pending = s->n_workers + 1;
    s->readahead = (size_t)obj_store_opt_uint("store-readahead", READAHEAD_DEF >> 10, 64, 64u << 10)
                   << 10;
    /* the read cache: store-prefetch blocks ahead of a sequential reader
     * (4: 16 MiB, ~0.14 s of a 1 GbE link), room for as many again behind
     * and for the readers' own blocks; 64 MiB by default, whatever the
     * repository's size */
    s->prefetch = obj_store_opt_uint("store-prefetch", 4, 0, 64);
    s->n_blocks = 2 * s->prefetch + 8;
    s->blocks = calloc(s->n_blocks, sizeof(*s->blocks));
    if (!s->blocks) {
        s->n_blocks = 0;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->workers = calloc(s->n_workers, sizeof(*s->workers));
    if (!s->workers)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (unsigned i = 0; i < s->n_workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
            s->n_workers = i;
            return vmsh_error_set(err, -EAGAIN, "cannot start the store's upload threads");
        }
    }
    return 0;
}

void obj_store_fini(obj_store *s)
{
    if (s->workers) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        for (unsigned i = 0; i < s->n_workers; i++)
            pthread_join(s->workers[i], NULL);
        free(s->workers);
        s->workers = NULL;
    }
    while (s->queue) {
        obj_upload *u = s->queue;
        s->queue = u->next;
        upload_free(s, u);
    }
    while (s->n_spare)
        free(s->spare[--s->n_spare]);
    if (s->fetchers) {
        pthread_mutex_lock(&s->cmu);
        s->fetch_quit = true;
        pthread_cond_broadcast(&s->ccv);
        pthread_mutex_unlock(&s->cmu);
        for (unsigned i = 0; i < s->n_fetchers; i++)
            pthread_join(s->fetchers[i], NULL); /* each finishes its block first */
        free(s->fetchers);
        s->fetchers = NULL;
    }
    while (s->fetchq) {
        obj_fetch *q = s->fetchq;
        s->fetchq = q->next;
        free(q);
    }
    for (unsigned i = 0; i < s->n_blocks; i++) {
        free(s->blocks[i].key);
        free(s->blocks[i].buf);
    }
    free(s->blocks);
    s->blocks = NULL;
    s->n_blocks = 0;
    pthread_mutex_destroy(&s->cmu);
    pthread_cond_destroy(&s->ccv);
    free(s->upload_msg);
    free(s->base.root);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}
