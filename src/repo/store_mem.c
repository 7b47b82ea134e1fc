/* store_mem.c - a repository held in this process's memory, mem://NAME
 * (issue 21, point 3: the requestor's unit tests run against it, as
 * libgit2's tests run against an in-memory object database).
 *
 * It is an object-store backend (store_obj.h), so it shares the name
 * checks, directories-as-prefixes and the pack writer of the RADOS and S3
 * stores and exercises them without a server. Only names a program
 * registered with vmsh_repo_mem_create() open: the command line never
 * does, so `-r mem://x` can never "succeed" into a repository that is gone
 * when the process exits. Locks are in-process (a shared count and an
 * exclusive flag per lock name) with the same -EBUSY as the other stores. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/mem.h>

#include "store_obj.h"

#define MEM_SCHEME "mem://"

typedef struct mem_obj {
    char *key;
    uint8_t *data;
    size_t len;
    int64_t mtime_ns;
} mem_obj;

typedef struct mem_lockst {
    char *key;
    unsigned shared;
    bool exclusive;
} mem_lockst;

/* One named repository: lives until vmsh_repo_mem_drop or exit. */
typedef struct mem_space {
    char *name;
    mem_obj *objs;
    size_t n, cap;
    mem_lockst *locks;
    size_t n_locks;
    struct mem_space *next;
} mem_space;

static pthread_mutex_t mem_mu = PTHREAD_MUTEX_INITIALIZER;
static mem_space *spaces;

typedef struct mem_store {
    obj_store o;
    mem_space *sp;
} mem_store;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* with mem_mu held */
static mem_space *space_find(const char *name)
{
    for (mem_space *s = spaces; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static mem_obj *obj_find(mem_space *sp, const char *key)
{
    for (size_t i = 0; i < sp->n; i++)
        if (strcmp(sp->objs[i].key, key) == 0)
            return &sp->objs[i];
    return NULL;
}

static int m_put(obj_store *os, const char *key, const void *buf, size_t len, vmsh_error **err)
{
    mem_space *sp = ((mem_store *)os)->sp;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (len)
        memcpy(copy, buf, len);
    pthread_mutex_lock(&mem_mu);
    mem_obj *o = obj_find(sp, key);
    if (!o) {
        if (sp->n == sp->cap) {
            size_t cap = sp->cap ? sp->cap * 2 : 64;
            mem_obj *g = realloc(sp->objs, cap * sizeof(*g));
            if (!g) {
                pthread_mutex_unlock(&mem_mu);
                free(copy);
                return vmsh_error_set(err, -ENOMEM, "out of memory");
            }
            sp->objs = g;
            sp->cap = cap;
        }
        char *k = strdup(key);
        if (!k) {
            pthread_mutex_unlock(&mem_mu);
            free(copy);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        o = &sp->objs[sp->n++];
        *o = (mem_obj){.key = k};
    }
    free(o->data); /* a whole-object put replaces atomically */
    o->data = copy;
    o->len = len;
    o->mtime_ns = now_ns();
    pthread_mutex_unlock(&mem_mu);
    return 0;
}

static int m_read(obj_store *os, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                  vmsh_error **err)
{
    (void)err;
    mem_space *sp = ((mem_store *)os)->sp;
    pthread_mutex_lock(&mem_mu);
    mem_obj *o = obj_find(sp, key);
    if (!o) {
        pthread_mutex_unlock(&mem_mu);
        return -ENOENT;
    }
    size_t n = off >= o->len ? 0 : o->len - (size_t)off;
    if (n > len)
        n = len;
    if (n)
        memcpy(buf, o->data + off, n);
    *got = n;
    pthread_mutex_unlock(&mem_mu);
    return 0;
}

static int m_stat(obj_store *os, const char *key, repo_store_stat *st, vmsh_error **err)
{
    (void)err;
    mem_space *sp = ((mem_store *)os)->sp;
    pthread_mutex_lock(&mem_mu);
    mem_obj *o = obj_find(sp, key);
    if (o && st)
        *st = (repo_store_stat){.size = o->len, .mtime_ns = o->mtime_ns};
    pthread_mutex_unlock(&mem_mu);
    return o ? 0 : -ENOENT;
}

static int m_del(obj_store *os, const char *key, vmsh_error **err)
{
    (void)err;
    mem_space *sp = ((mem_store *)os)->sp;
    pthread_mutex_lock(&mem_mu);
    mem_obj *o = obj_find(sp, key);
    if (o) {
        free(o->key);
        free(o->data);
        *o = sp->objs[--sp->n];
    }
    pthread_mutex_unlock(&mem_mu);
    return o ? 0 : -ENOENT;
}

/* The callback may call back into the store (a listing that deletes, as
 * gc's sweep does): the keys are copied out under the mutex first. */
static int m_list(obj_store *os, const char *prefix, obj_list_fn fn, void *opaque, vmsh_error **err)
{
    mem_space *sp = ((mem_store *)os)->sp;
    size_t plen = strlen(prefix), n = 0;
    pthread_mutex_lock(&mem_mu);
    mem_obj *snap = calloc(sp->n ? sp->n : 1, sizeof(*snap));
    if (!snap) {
        pthread_mutex_unlock(&mem_mu);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int rc = 0;
    for (size_t i = 0; i < sp->n; i++) {
        if (strncmp(sp->objs[i].key, prefix, plen) != 0)
            continue;
        snap[n] = (mem_obj){.key = strdup(sp->objs[i].key),
                            .len = sp->objs[i].len,
                            .mtime_ns = sp->objs[i].mtime_ns};
        if (!snap[n].key) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    pthread_mutex_unlock(&mem_mu);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = fn(opaque, snap[i].key, snap[i].len, snap[i].mtime_ns);
        free(snap[i].key);
    }
    free(snap);
    return rc;
}

typedef struct mem_held {
    mem_space *sp;
    char *key;
    bool exclusive;
} mem_held;

static mem_lockst *lock_find(mem_space *sp, const char *key, bool add)
{
    for (size_t i = 0; i < sp->n_locks; i++)
        if (strcmp(sp->locks[i].key, key) == 0)
            return &sp->locks[i];
    if (!add)
        return NULL;
    mem_lockst *g = realloc(sp->locks, (sp->n_locks + 1) * sizeof(*g));
    if (!g)
        return NULL;
    sp->locks = g;
    char *k = strdup(key);
    if (!k)
        return NULL;
    g[sp->n_locks] = (mem_lockst){.key = k};
    return &g[sp->n_locks++];
}

static void m_release(void *opaque)
{
    mem_held *h = opaque;
    pthread_mutex_lock(&mem_mu);
    mem_lockst *l = lock_find(h->sp, h->key, false);
    if (l) {
        if (h->exclusive)
            l->exclusive = false;
        else if (l->shared)
            l->shared--;
    }
    pthread_mutex_unlock(&mem_mu);
    free(h->key);
    free(h);
}

static int m_lock(obj_store *os, const char *key, bool exclusive, vmsh_lock **out, vmsh_error **err)
{
    mem_space *sp = ((mem_store *)os)->sp;
    mem_held *h = calloc(1, sizeof(*h));
    if (!h || !(h->key = strdup(key))) {
        free(h);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    h->sp = sp;
    h->exclusive = exclusive;
    pthread_mutex_lock(&mem_mu);
    mem_lockst *l = lock_find(sp, key, true);
    int rc = 0;
    if (!l)
        rc = -ENOMEM;
    else if (l->exclusive || (exclusive && l->shared))
        rc = -EBUSY;
    else if (exclusive)
        l->exclusive = true;
    else
        l->shared++;
    pthread_mutex_unlock(&mem_mu);
    if (rc < 0) {
        free(h->key);
        free(h);
        return rc == -EBUSY
                   ? vmsh_error_set(err, -EBUSY,
                                    "the repository (%s lock) is busy: another holder in this "
                                    "process has %s",
                                    key, key)
                   : vmsh_error_set(err, rc, "out of memory");
    }
    if (vmsh_lock_custom(out, m_release, h) < 0) {
        m_release(h);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

static void m_free(obj_store *os)
{
    free(os); /* the space stays: it is the repository */
}

static const obj_backend_ops mem_be = {
    .put = m_put,
    .read = m_read,
    .stat = m_stat,
    .del = m_del,
    .list = m_list,
    .lock = m_lock,
    .free = m_free,
};

int repo_store_mem_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err)
{
    (void)flags; /* no owners in memory */
    const char *name = url + strlen(MEM_SCHEME);
    pthread_mutex_lock(&mem_mu);
    mem_space *sp = space_find(name);
    pthread_mutex_unlock(&mem_mu);
    if (!sp)
        return vmsh_error_set(err, -ENODEV,
                              "no in-memory repository %s: mem:// repositories exist only inside "
                              "a program that made them with vmsh_repo_mem_create(); the "
                              "command line has none (give a directory, rados:// or s3://)",
                              url);
    mem_store *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->sp = sp;
    int rc = obj_store_init(&s->o, &mem_be, url, err);
    if (rc < 0) {
        obj_store_fini(&s->o);
        free(s);
        return rc;
    }
    *out = &s->o.base;
    return 0;
}

int vmsh_repo_mem_create(const char *name, vmsh_error **err)
{
    if (!name || !*name || strlen(name) > 200 || !obj_name_valid(name, false) || strchr(name, '/'))
        return vmsh_error_set(err, -EINVAL, "bad in-memory repository name \"%s\"",
                              name ? name : "");
    pthread_mutex_lock(&mem_mu);
    int rc = 0;
    if (space_find(name)) {
        rc = vmsh_error_set(err, -EEXIST, "in-memory repository mem://%s exists", name);
    } else {
        mem_space *sp = calloc(1, sizeof(*sp));
        if (!sp || !(sp->name = strdup(name))) {
            free(sp);
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        } else {
            sp->next = spaces;
            spaces = sp;
        }
    }
    pthread_mutex_unlock(&mem_mu);
    return rc;
}

void vmsh_repo_mem_drop(const char *name)
{
    pthread_mutex_lock(&mem_mu);
    for (mem_space **pp = &spaces; *pp; pp = &(*pp)->next) {
        mem_space *sp = *pp;
        if (strcmp(sp->name, name) != 0)
            continue;
        *pp = sp->next;
        for (size_t i = 0; i < sp->n; i++) {
            free(sp->objs[i].key);
            free(sp->objs[i].data);
        }
        for (size_t i = 0; i < sp->n_locks; i++)
            free(sp->locks[i].key);
        free(sp->objs);
        free(sp->locks);
        free(sp->name);
        free(sp);
        break;
    }
    pthread_mutex_unlock(&mem_mu);
}
