/* store_rados.c - the repository in a Ceph RADOS pool, rados://POOL[/PREFIX]
 * (issue 26; docs/formats/repository.md, "Stores").
 *
 * Repository file `name` is the object PREFIX/name of POOL (or `name`
 * without a prefix). A put is one write_full: RADOS applies the writes of
 * one operation on one object atomically, so a reader sees the old object
 * (none) or all of the new one; a pack is built in memory and put the same
 * way (store_obj.c), so a pack under its final name is always complete
 * (invariant 1) without a rename, which RADOS does not have. Locks are
 * cls_lock advisory locks with a duration (leases), renewed by a thread
 * while held. */
#include "store_obj.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <rados/librados.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct rados_store {
    obj_store o;
    rados_t cluster;
    rados_ioctx_t io;
    bool connected;
    char *pool, *prefix; /* prefix "" or "PREFIX/" */
    unsigned lease_s;
} rados_store;

static char *okey(rados_store *s, const char *key)
{
    char *p = NULL;
    if (asprintf(&p, "%s%s", s->prefix, key) < 0)
        return NULL;
    return p;
}

static int fail(vmsh_error **err, rados_store *s, const char *key, int rc, const char *what)
{
    const char *hint = rc == -ETIMEDOUT ? " (the Ceph cluster did not answer in time: are its "
                                          "monitors and OSDs up?)"
                       : rc == -EACCES || rc == -EPERM
                           ? " (the Ceph user lacks the capability; check ceph-user and "
                             "its keyring)"
                           : "";
    return vmsh_error_set(err, rc, "cannot %s %s/%s: %s%s", what, s->o.base.root, key,
                          strerror(-rc), hint);
}

static int r_put(obj_store *os, const char *key, const void *buf, size_t len, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int rc = rados_write_full(s->io, k, buf, len);
    return rc < 0 ? fail(err, s, key, rc, "write") : 0;
}

/* The upload workers' put (store_obj.h, put_start): aio_write_full copies
 * buf into librados's own buffer before it returns, so the pack's buffer
 * serves the next pack while this one travels; put_wait then waits for
 * the OSD's acknowledgement (durable, as write_full). */
static int r_put_start(obj_store *os, const char *key, const void *buf, size_t len, void **handle,
                       vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    rados_completion_t c = NULL;
    int rc = rados_aio_create_completion2(NULL, NULL, &c);
    if (rc < 0)
        return fail(err, s, key, rc, "write");
    rc = rados_aio_write_full(s->io, k, c, buf, len);
    if (rc < 0) {
        rados_aio_release(c);
        return fail(err, s, key, rc, "write");
    }
    *handle = c;
    return 0;
}

static int r_put_wait(obj_store *os, const char *key, void *handle, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    rados_completion_t c = handle;
    rados_aio_wait_for_complete(c);
    int rc = rados_aio_get_return_value(c);
    rados_aio_release(c);
    return rc < 0 ? fail(err, s, key, rc, "write") : 0;
}

static int r_read(obj_store *os, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                  vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t done = 0;
    while (done < len) {
        /* one read of at most 32 MiB: the OSD's message size limits */
        size_t n = len - done > (32u << 20) ? (32u << 20) : len - done;
        int rc = rados_read(s->io, k, (char *)buf + done, n, off + done);
        if (rc < 0)
            return rc == -ENOENT ? rc : fail(err, s, key, rc, "read");
        done += (size_t)rc;
        if ((size_t)rc < n)
            break;
    }
    *got = done;
    return 0;
}

static int r_stat(obj_store *os, const char *key, repo_store_stat *st, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    uint64_t size = 0;
    time_t mtime = 0;
    int rc = rados_stat(s->io, k, &size, &mtime);
    if (rc == -ENOENT)
        return rc; /* the callers say what is missing */
    if (rc < 0)
        return fail(err, s, key, rc, "stat");
    st->size = size;
    st->mtime_ns = (int64_t)mtime * 1000000000;
    return 0;
}

static int r_del(obj_store *os, const char *key, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int rc = rados_remove(s->io, k);
    return rc < 0 ? fail(err, s, key, rc, "delete") : 0;
}

/* The pool's object listing, filtered by the key prefix on this side:
 * RADOS lists a pool in placement-group order and has no server-side
 * prefix filter in the C API short of object-class filters. Fine for the
 * repository's sizes (gc lists once per run; a listing of 100 000 objects
 * takes about a second); an omap index would cost a second write per
 * object on the backup's path. */
static int r_list(obj_store *os, const char *prefix, obj_list_fn fn, void *opaque, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *full = okey(s, prefix);
    if (!full)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t plen = strlen(full), skip = strlen(s->prefix);
    rados_list_ctx_t ctx;
    int rc = rados_nobjects_list_open(s->io, &ctx);
    if (rc < 0)
        return fail(err, s, prefix, rc, "list");
    for (;;) {
        const char *entry = NULL;
        rc = rados_nobjects_list_next(ctx, &entry, NULL, NULL);
        if (rc == -ENOENT) {
            rc = 0;
            break;
        }
        if (rc < 0) {
            fail(err, s, prefix, rc, "list");
            break;
        }
        if (strncmp(entry, full, plen) != 0)
            continue;
        if ((rc = fn(opaque, entry + skip, 0, -1)) < 0)
            break;
    }
    rados_nobjects_list_close(ctx);
    return rc;
}

/* ---- leases ---- */

typedef struct rados_lease {
    rados_store *s;
    char *oid;
    char cookie[40];
    bool exclusive;
    pthread_t renewer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
} rados_lease;

#define LOCK_NAME "vmshadow"

static int lease_take(rados_lease *l, unsigned flags)
{
    struct timeval tv = {(time_t)l->s->lease_s, 0};
    if (l->exclusive)
        return rados_lock_exclusive(l->s->io, l->oid, LOCK_NAME, l->cookie, "vmshadow", &tv,
                                    (uint8_t)flags);
    return rados_lock_shared(l->s->io, l->oid, LOCK_NAME, l->cookie, "", "vmshadow", &tv,
                             (uint8_t)flags);
}

/* Renews the lease every third of its duration while held. */
static void *renew_main(void *arg)
{
    rados_lease *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += l->s->lease_s / 3 ? l->s->lease_s / 3 : 1;
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        if (l->stop)
            break;
        pthread_mutex_unlock(&l->mu);
        lease_take(l, LIBRADOS_LOCK_FLAG_RENEW); /* a failure: it expires; documented */
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void lease_release(void *opaque)
{
    rados_lease *l = opaque;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->renewer, NULL);
    rados_unlock(l->s->io, l->oid, LOCK_NAME, l->cookie);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->oid);
    free(l);
}

static int r_lock(obj_store *os, const char *key, bool exclusive, vmsh_lock **out, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    rados_lease *l = calloc(1, sizeof(*l));
    if (!l || !(l->oid = okey(s, key))) {
        free(l);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    l->s = s;
    l->exclusive = exclusive;
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(l->cookie, sizeof(l->cookie), "%.20s.%ld.%p", host, (long)getpid(), (void *)l);
    int rc = lease_take(l, 0);
    if (rc < 0) {
        free(l->oid);
        free(l);
        if (rc == -EBUSY || rc == -EEXIST)
            return vmsh_error_set(err, -EBUSY,
                                  "the repository (%s lock) is busy: another vmshadow process "
                                  "holds %s/%s; wait for it to finish and retry (a lease of a "
                                  "process that died expires after %u s)",
                                  key + 6, s->o.base.root, key, s->lease_s);
        return fail(err, s, key, rc, "lock");
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->renewer, NULL, renew_main, l) != 0) {
        rados_unlock(s->io, l->oid, LOCK_NAME, l->cookie);
        free(l->oid);
        free(l);
        return vmsh_error_set(err, -EAGAIN, "cannot start the lease renewal thread");
    }
    if (vmsh_lock_custom(out, lease_release, l) < 0) {
        lease_release(l);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

/* ---- the OSD's clock (issue 26, point 3) ----
 *
 * An object's mtime on RADOS is the time the client sends with the write,
 * so a clock check against it compares a host with itself. cls_lock
 * (always loaded: RBD needs it) computes a lease's expiration on the OSD,
 * from the OSD's clock: a shared lock of a known duration taken on the
 * object, read back with the class's get_info, gives the OSD's time as
 * expiration - duration. The reply is Ceph's encoding, read as hostile:
 * every length is checked. */

#define CLOCK_LOCK    "vmshadow-clock"
#define CLOCK_LEASE_S 600

typedef struct cur {
    const uint8_t *p, *end;
} cur;

static bool take(cur *c, size_t n, const uint8_t **out)
{
    if ((size_t)(c->end - c->p) < n)
        return false;
    if (out)
        *out = c->p;
    c->p += n;
    return true;
}

static bool get_u32(cur *c, uint32_t *v)
{
    const uint8_t *b;
    if (!take(c, 4, &b))
        return false;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return true;
}

/* ENCODE_START's header (version, compat, length): the struct's bytes. */
static bool get_struct(cur *c, cur *inner)
{
    uint32_t len;
    const uint8_t *b;
    if (!take(c, 2, NULL) || !get_u32(c, &len) || !take(c, len, &b))
        return false;
    *inner = (cur){b, b + len};
    return true;
}

/* cls_lock_get_info_reply: {map<locker_id_t{entity_name_t(u8, i64),
 * string cookie}, locker_info_t{utime_t expiration (u32 s, u32 ns), ...}>,
 * u8 type, string tag}. Returns our locker's expiration in ms, or -1. */
int64_t rados_clock_parse(const uint8_t *buf, size_t len, const char *cookie)
{
    cur c = {buf, buf + len}, reply;
    uint32_t n;
    if (!get_struct(&c, &reply) || !get_u32(&reply, &n))
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        cur id, info;
        uint32_t clen, sec, nsec;
        const uint8_t *ck;
        if (!get_struct(&reply, &id) || !take(&id, 9, NULL) || !get_u32(&id, &clen) ||
            !take(&id, clen, &ck) || !get_struct(&reply, &info) || !get_u32(&info, &sec) ||
            !get_u32(&info, &nsec) || nsec >= 1000000000u)
            return -1;
        if (clen == strlen(cookie) && memcmp(ck, cookie, clen) == 0)
            return (int64_t)sec * 1000 + nsec / 1000000;
    }
    return -1;
}

static int r_clock(obj_store *os, const char *key, int64_t *ms, vmsh_error **err)
{
    rados_store *s = (rados_store *)os;
    _cleanup_free_ char *k = okey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    char cookie[64];
    char host[40] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(cookie, sizeof(cookie), "clock.%.20s.%ld.%p", host, (long)getpid(), (void *)&cookie);
    struct timeval tv = {CLOCK_LEASE_S, 0};
    int rc = rados_lock_shared(s->io, k, CLOCK_LOCK, cookie, "", "vmshadow clock", &tv, 0);
    if (rc < 0)
        return fail(err, s, key, rc, "read the OSD's clock through a lock on");
    /* get_info's input: ENCODE_START(1, 1) {string name} */
    uint8_t in[64];
    size_t nl = strlen(CLOCK_LOCK);
    uint32_t body = (uint32_t)(4 + nl), l32 = (uint32_t)nl;
    in[0] = 1;
    in[1] = 1;
    for (int i = 0; i < 4; i++) {
        in[2 + i] = (uint8_t)(body >> (8 * i));
        in[6 + i] = (uint8_t)(l32 >> (8 * i));
    }
    memcpy(in + 10, CLOCK_LOCK, nl);
    /* every host probing at once adds a locker each: room for many */
    size_t cap = 64u << 10;
    _cleanup_free_ char *out = malloc(cap);
    rc = out ? rados_exec(s->io, k, "lock", "get_info", (const char *)in, 10 + nl, out, cap)
             : -ENOMEM;
    rados_unlock(s->io, k, CLOCK_LOCK, cookie);
    if (rc < 0)
        return fail(err, s, key, rc, "read the OSD's clock (cls_lock get_info) on");
    int64_t exp = rados_clock_parse((const uint8_t *)out, (size_t)rc, cookie);
    if (exp < 0)
        return vmsh_error_set(err, -EBADMSG,
                              "cannot read the OSD's clock on %s/%s: the lock class's reply "
                              "does not hold our lease",
                              s->o.base.root, key);
    *ms = exp - (int64_t)CLOCK_LEASE_S * 1000;
    return 0;
}

static void r_free(obj_store *os)
{
    rados_store *s = (rados_store *)os;
    if (s->connected) {
        rados_ioctx_destroy(s->io);
        rados_shutdown(s->cluster);
    }
    free(s->pool);
    free(s->prefix);
    free(s);
}

static const obj_backend_ops rados_be = {
    .put = r_put,
    .put_start = r_put_start,
    .put_wait = r_put_wait,
    .read = r_read,
    .stat = r_stat,
    .del = r_del,
    .list = r_list,
    .lock = r_lock,
    .free = r_free,
    .clock = r_clock,
    /* 16 MiB packs (issue 27 point 5, bench/README.md): a backup's tail,
     * the upload of the packs still in flight once the data is read, fell
     * from 0.33-0.38 s to 0.08-0.10 s for 1 GiB with 64 MiB packs; and
     * librados's copy of each pack (fresh memory for 64 MiB objects, page
     * faults every time) took 0.5 CPU-s of system time against 0.33, peak
     * memory 380-460 MiB against 150; the OSD's own CPU for the backup did
     * not grow (0.95-1.04 s against 0.84-1.43). 8 MiB gained little more
     * and would double the packs a repository counts (a pack's entry in
     * memory is ~100 bytes: 6 TiB stored makes 390,000 packs at 16 MiB).
     * RBD stores its images as 4 MiB objects: 16 MiB is well within what
     * an OSD handles. */
    .pack_target = 16u << 20,
};

int repo_store_rados_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err)
{
    (void)flags; /* no owners in a pool: the Ceph user's capabilities decide */
    const char *p = url + strlen("rados://");
    const char *slash = strchr(p, '/');
    rados_store *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->pool = slash ? strndup(p, (size_t)(slash - p)) : strdup(p);
    if (slash && slash[1]) {
        size_t n = strlen(slash + 1);
        while (n && slash[1 + n - 1] == '/')
            n--;
        if (asprintf(&s->prefix, "%.*s/", (int)n, slash + 1) < 0)
            s->prefix = NULL;
    } else {
        s->prefix = strdup("");
    }
    if (!s->pool || !s->prefix) {
        r_free(&s->o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    char pfx[600];
    snprintf(pfx, sizeof(pfx), "%.*s", s->prefix[0] ? (int)strlen(s->prefix) - 1 : 0, s->prefix);
    if (!*s->pool || strlen(pfx) > 256 || (*pfx && !obj_name_valid(pfx, false))) {
        r_free(&s->o);
        return vmsh_error_set(err, -EINVAL,
                              "bad repository URL %s: want rados://POOL[/PREFIX] (PREFIX of "
                              "plain names separated by '/')",
                              url);
    }
    s->lease_s = obj_store_opt_uint("store-lease-seconds", 30, 5, 3600);
    unsigned timeout = obj_store_opt_uint("store-timeout", 30, 1, 3600);
    const char *user = obj_store_opt("ceph-user");
    int rc = rados_create2(&s->cluster, "ceph", user ? user : "client.admin", 0);
    if (rc < 0) {
        r_free(&s->o);
        return vmsh_error_set(err, rc, "cannot set up the Ceph client: %s", strerror(-rc));
    }
    /* CEPH_CONF, then /etc/ceph/ceph.conf and the other usual places */
    const char *conf = obj_store_opt("ceph-conf");
    rc = rados_conf_read_file(s->cluster, conf);
    if (rc < 0 && conf) {
        rados_shutdown(s->cluster);
        r_free(&s->o);
        return vmsh_error_set(err, rc, "cannot read the Ceph configuration %s: %s", conf,
                              strerror(-rc));
    }
    rados_conf_parse_env(s->cluster, NULL);
    const char *keyring = obj_store_opt("ceph-keyring");
    if (keyring)
        rados_conf_set(s->cluster, "keyring", keyring);
    /* never a hang: a cluster that does not answer fails the operation */
    char t[16];
    snprintf(t, sizeof(t), "%u", timeout);
    rados_conf_set(s->cluster, "rados_osd_op_timeout", t);
    rados_conf_set(s->cluster, "rados_mon_op_timeout", t);
    rados_conf_set(s->cluster, "client_mount_timeout", t);
    rados_conf_set(s->cluster, "log_to_stderr", "false");
    rados_conf_set(s->cluster, "err_to_stderr", "false");
    rc = rados_connect(s->cluster);
    if (rc < 0) {
        rados_shutdown(s->cluster);
        r_free(&s->o);
        return vmsh_error_set(err, rc, "cannot connect to the Ceph cluster for %s: %s%s", url,
                              strerror(-rc),
                              rc == -EACCES || rc == -EPERM || rc == -EINVAL
                                  ? " (wrong Ceph user or key: check ceph-user and ceph-keyring)"
                              : rc == -ETIMEDOUT || rc == -ENOENT
                                  ? " (are the monitors up, and is the Ceph configuration "
                                    "right? CEPH_CONF or ceph-conf)"
                                  : "");
    }
    rc = rados_ioctx_create(s->cluster, s->pool, &s->io);
    if (rc < 0) {
        if (rc == -ENOENT)
            vmsh_error_set(err, -ENODEV,
                           "no Ceph pool \"%s\" for %s: create it first (ceph osd pool create "
                           "%s)",
                           s->pool, url, s->pool);
        else
            vmsh_error_set(err, rc, "cannot open the Ceph pool of %s: %s", url, strerror(-rc));
        rados_shutdown(s->cluster);
        r_free(&s->o);
        return rc == -ENOENT ? -ENODEV : rc;
    }
    s->connected = true;
    rc = obj_store_init(&s->o, &rados_be, url, err);
    if (rc < 0) {
        obj_store_fini(&s->o);
        r_free(&s->o);
        return rc;
    }
    *out = &s->o.base;
    return 0;
}
