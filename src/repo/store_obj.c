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
    size_t len;
};

static void upload_free(obj_upload *u)
{
    if (!u)
        return;
    free(u->key);
    free(u->buf);
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
        int rc = skip ? 0 : s->be->put(s, u->key, u->buf, u->len, &e);
        upload_free(u);
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
        upload_free(u);
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

static int o_put(repo_store *st, const char *name, const void *buf, size_t len, vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    return rc < 0 ? rc : s->be->put(s, name, buf, len, err);
}

static int o_get(repo_store *st, const char *name, size_t max, char **out, size_t *out_len,
                 vmsh_error **err)
{
    obj_store *s = (obj_store *)st;
    int rc = ready(s, name, false, err);
    repo_store_stat sb;
    if (rc < 0 || (rc = s->be->stat(s, name, &sb, err)) < 0)
        return rc;
    if (sb.size > max)
        return vmsh_error_set(err, -EFBIG, "%s/%s is too large (%llu bytes, limit %zu)", st->root,
                              name, (unsigned long long)sb.size, max);
    char *buf = malloc((size_t)sb.size + 1);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t got = 0;
    rc = s->be->read(s, name, 0, (size_t)sb.size, buf, &got, err);
    if (rc < 0) {
        free(buf);
        return rc;
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
    return rc < 0 ? rc : s->be->del(s, name, err);
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
    uint8_t *buf; /* the writer's whole object / the reader's readahead window */
    size_t cap, len;
    uint64_t size; /* a reader: the object's */
    uint64_t win_off;
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
    free(f->buf);
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

/* Reads are ranged gets; restores read a pack's chunks in order, so each
 * get fetches a window of store-readahead bytes (4 MiB) and the next reads
 * are served from it: one round trip per window, not per 64 KiB chunk. */
static int64_t o_pread(repo_store_file *f, void *buf, size_t len, uint64_t off)
{
    if (off >= f->size)
        return 0;
    if (len > f->size - off)
        len = (size_t)(f->size - off);
    if (f->buf && off >= f->win_off && off + len <= f->win_off + f->len) {
        memcpy(buf, f->buf + (off - f->win_off), len);
        return (int64_t)len;
    }
    size_t ra = f->s->readahead;
    size_t got = 0;
    if (len >= ra) {
        int rc = f->s->be->read(f->s, f->key, off, len, buf, &got, NULL);
        return rc < 0 ? rc : (int64_t)got;
    }
    size_t want = ra;
    if (want > f->size - off)
        want = (size_t)(f->size - off);
    if (!f->buf && !(f->buf = malloc(ra)))
        return -ENOMEM;
    f->len = 0;
    int rc = f->s->be->read(f->s, f->key, off, want, f->buf, &got, NULL);
    if (rc < 0)
        return rc;
    f->win_off = off;
    f->len = got;
    if (len > got)
        len = got;
    memcpy(buf, f->buf, len);
    return (int64_t)len;
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
    u->key = VMSH_TAKE_PTR(f->key);
    u->buf = VMSH_TAKE_PTR(f->buf);
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
    s->be = be;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (!(s->base.root = strdup(root)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* 2 uploads in flight keep a 1 GbE link busy with 64 MiB packs (one
     * takes ~0.55 s at 118 MB/s; the second hides the round trips) */
    s->n_workers = obj_store_opt_uint("store-threads", 2, 1, 32);
    s->max_pending = s->n_workers + 1;
    s->readahead = (size_t)obj_store_opt_uint("store-readahead", READAHEAD_DEF >> 10, 64, 64u << 10)
                   << 10;
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
        upload_free(u);
    }
    free(s->upload_msg);
    free(s->base.root);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}
