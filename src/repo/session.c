/* session.c - writer sessions and gc's marks (issue 26, points 2 and 3).
 * docs/formats/gc.md is the protocol and its safety argument; every byte
 * read here comes from the repository and is treated as hostile input.
 *
 * A backup holds a session object (locks/sessions/<16 hex>) from begin to
 * commit or abort, rewritten by a heartbeat thread; gc reads the sessions to
 * learn the oldest live writer's start, and writes its marks (the condemned
 * packs, locks/gc-marks) that writers read after their session is durable. */
#include "internal.h"

#include "store_obj.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SESSION_MAX_LEN (64u << 10)
#define MARKS_MAX_LEN   (64u << 20)

int64_t repo_now_ms(const vmsh_repo *r)
{
    if (r->clock)
        return r->clock(r->clock_opaque);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t opt_ms(const char *key, int64_t dflt_s, int64_t r_value)
{
    if (r_value >= 0)
        return r_value;
    return (int64_t)obj_store_opt_uint(key, (unsigned)dflt_s, 0, 10u * 365 * 86400) * 1000;
}

void repo_gc_params(const vmsh_repo *r, repo_gc_params_t *p)
{
    p->grace_ms = opt_ms("store-gc-grace-seconds", GC_GRACE_DEFAULT_S, r->gc_grace_ms);
    p->margin_ms = opt_ms("store-gc-margin-seconds", GC_MARGIN_DEFAULT_S, r->gc_margin_ms);
    p->session_ms = opt_ms("store-session-seconds", SESSION_DEFAULT_S, r->session_ms);
    /* a session must outlive the margin, or no writer could ever commit */
    if (p->session_ms < p->margin_ms + 2000)
        p->session_ms = p->margin_ms + 2000;
}

/* ---- marks ---- */

static int cmp_mark(const void *a, const void *b)
{
    return memcmp(((const gc_mark *)a)->pack, ((const gc_mark *)b)->pack, 16);
}

void gc_marks_clear(gc_marks *m)
{
    free(m->v);
    *m = (gc_marks){0};
}

int gc_marks_add(gc_marks *m, const uint8_t pack[16], int64_t t_ms)
{
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        gc_mark *nv = vmsh_realloc_array(m->v, nc, sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        m->v = nv;
        m->cap = nc;
    }
    memcpy(m->v[m->n].pack, pack, 16);
    m->v[m->n++].t_ms = t_ms;
    return 0;
}

void gc_marks_sort(gc_marks *m)
{
    if (m->n)
        qsort(m->v, m->n, sizeof(*m->v), cmp_mark);
}

const gc_mark *gc_marks_find(const gc_marks *m, const uint8_t pack[16])
{
    if (!m->n)
        return NULL;
    gc_mark key;
    memcpy(key.pack, pack, 16);
    return bsearch(&key, m->v, m->n, sizeof(*m->v), cmp_mark);
}

/* The marks object (docs/formats/gc.md, "Marks"): a JSON document
 * {"format": "vmshadow-gc-marks", "version": 1, "marks": [[pack, t_ms], ...]}
 * where t_ms is -1 for a mark whose time is not yet fixed (written before
 * the time stamp, see gc.md). Absent: no marks. */
int gc_marks_parse(const char *text, size_t len, gc_marks *out, vmsh_error **err)
{
    *out = (gc_marks){0};
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    bool complete =
        json_tokener_get_error(tok) == json_tokener_success && tok->char_offset == (int)len;
    json_tokener_free(tok);
    json_object *f = NULL, *v = NULL, *a = NULL;
    int rc = -EBADMSG;
    if (!complete || !o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "format", &f) || !json_object_is_type(f, json_type_string) ||
        strcmp(json_object_get_string(f), "vmshadow-gc-marks") != 0 ||
        !json_object_object_get_ex(o, "version", &v) || !json_object_is_type(v, json_type_int) ||
        !json_object_object_get_ex(o, "marks", &a) || !json_object_is_type(a, json_type_array))
        goto bad;
    if (json_object_get_int64(v) != 1) {
        json_object_put(o);
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "gc marks (locks/gc-marks) of version %" PRId64
                              ": this vmshadow reads version 1",
                              json_object_get_int64(v));
    }
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *e = json_object_array_get_idx(a, i);
        if (!json_object_is_type(e, json_type_array) || json_object_array_length(e) != 2)
            goto bad;
        json_object *p = json_object_array_get_idx(e, 0), *t = json_object_array_get_idx(e, 1);
        uint8_t pack[16];
        if (!json_object_is_type(p, json_type_string) || !json_object_is_type(t, json_type_int) ||
            vmsh_unhex(json_object_get_string(p), pack, 16) < 0 ||
            json_object_get_string_len(p) != 32)
            goto bad;
        int64_t tm = json_object_get_int64(t);
        if (tm < -1)
            goto bad;
        if (gc_marks_add(out, pack, tm) < 0) {
            rc = -ENOMEM;
            goto bad;
        }
    }
    json_object_put(o);
    gc_marks_sort(out);
    return 0;
bad:
    json_object_put(o);
    gc_marks_clear(out);
    if (rc == -ENOMEM)
        return vmsh_error_set(err, rc, "out of memory");
    return vmsh_error_set(err, -EBADMSG,
                          "gc marks (locks/gc-marks) are damaged: not a version 1 marks "
                          "document; delete the object (nothing is lost: the next gc marks "
                          "again)");
}

int gc_marks_load(vmsh_repo *r, gc_marks *out, vmsh_error **err)
{
    *out = (gc_marks){0};
    char *text = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    int rc = r->store->ops->get(r->store, GC_MARKS_NAME, MARKS_MAX_LEN, &text, &len, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return 0;
    }
    if (rc < 0) {
        vmsh_error_propagate(err, &e);
        return rc;
    }
    rc = gc_marks_parse(text, len, out, err);
    free(text);
    return rc;
}

int gc_marks_store(vmsh_repo *r, const gc_marks *m, vmsh_error **err)
{
    /* "[\"<32 hex>\",<int64>]," per mark */
    size_t cap = 96 + m->n * 60;
    _cleanup_free_ char *buf = malloc(cap);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t n =
        (size_t)snprintf(buf, cap, "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":[");
    for (size_t i = 0; i < m->n; i++) {
        char hex[33];
        vmsh_hex(m->v[i].pack, 16, hex);
        n += (size_t)snprintf(buf + n, cap - n, "%s[\"%s\",%" PRId64 "]", i ? "," : "", hex,
                              m->v[i].t_ms);
    }
    n += (size_t)snprintf(buf + n, cap - n, "]}\n");
    return r->store->ops->put(r->store, GC_MARKS_NAME, buf, n, err);
}

/* ---- sessions ---- */

struct repo_session {
    vmsh_repo *r;
    char id[17];
    char name[64];
    char host[128];
    int64_t start_ms;
    repo_gc_params_t p;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_on, stop;
    int64_t last_ok_ms; /* stamp of the last heartbeat written */
    bool lapsed;        /* a gap between heartbeats gc may have seen as death */
    char (*pins)[VMSH_BACKUP_ID_LEN + 1];
    size_t n_pins;
};

/* Writes the session object with a heartbeat of now (s->mu held). */
static int session_put_locked(repo_session *s, vmsh_error **err)
{
    int64_t hb = repo_now_ms(s->r);
    char buf[1024 + 20 * 64];
    size_t n = (size_t)snprintf(buf, sizeof(buf),
                                "{\"format\":\"vmshadow-session\",\"version\":1,\"host\":\"%s\","
                                "\"pid\":%d,\"start_ms\":%" PRId64 ",\"heartbeat_ms\":%" PRId64
                                ",\"pins\":[",
                                s->host, (int)getpid(), s->start_ms, hb);
    for (size_t i = 0; i < s->n_pins && n + 24 < sizeof(buf) - 8; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%s\"", i ? "," : "", s->pins[i]);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]}\n");
    int rc = s->r->store->ops->put(s->r->store, s->name, buf, n, err);
    if (rc < 0)
        return rc;
    int64_t done = repo_now_ms(s->r);
    /* gc counts a session dead once its heartbeat is older than session_ms
     * (plus twice the margin for clocks); the object it reads holds the
     * previous stamp until this put is complete */
    if (s->last_ok_ms && done - s->last_ok_ms > s->p.session_ms)
        s->lapsed = true;
    s->last_ok_ms = hb;
    return 0;
}

static void *heartbeat_main(void *arg)
{
    repo_session *s = arg;
    int64_t every = s->p.session_ms / 4;
    if (every < 200)
        every = 200;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (every % 1000) * 1000000;
        ts.tv_sec += every / 1000 + ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        if (s->stop)
            break;
        vmsh_error *e = NULL;
        session_put_locked(s, &e); /* a failure shows as a gap at the next one */
        vmsh_error_free(e);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* This host's clock against the store's: the modification time of object
 * `name`, just put between `before` and now, is the store's clock (the
 * POSIX store: this kernel's; S3: the server's Last-Modified), or the
 * store's own clock read through it (RADOS: the OSD's, since its object
 * times are the client's). Beyond the margin, gc's time rules are void. */
static int skew_of(vmsh_repo *r, const repo_gc_params_t *p, const char *name, int64_t before,
                   vmsh_error **err)
{
    /* a store whose object times are the client's (RADOS) reads its own
     * clock another way (store.h, clock) */
    int64_t store_ms = 0;
    int rc = -EOPNOTSUPP;
    if (r->store->ops->clock) {
        vmsh_error *e = NULL;
        if ((rc = r->store->ops->clock(r->store, name, &store_ms, &e)) < 0 && rc != -EOPNOTSUPP) {
            vmsh_error_propagate(err, &e);
            return rc;
        }
        vmsh_error_free(e);
    }
    if (rc == -EOPNOTSUPP) {
        repo_store_stat st = {0};
        if ((rc = r->store->ops->stat(r->store, name, &st, err)) < 0)
            return rc;
        store_ms = st.mtime_ns / 1000000;
    }
    int64_t after = repo_now_ms(r);
    /* stores with whole seconds round down */
    int64_t lo = before - p->margin_ms - 1000, hi = after + p->margin_ms;
    if (store_ms >= lo && store_ms <= hi)
        return 0;
    double off = (double)(store_ms < lo ? store_ms - before : store_ms - after) / 1000.0;
    return vmsh_error_set(err, -ERANGE,
                          "clock skew: this host's clock is %.1f s off the repository store's "
                          "(%s), more than the margin of %" PRId64
                          " s (store-gc-margin-seconds) that the garbage collection's safety "
                          "rests on (docs/formats/gc.md); fix the host's time (NTP) and retry: "
                          "nothing was written",
                          -off, r->path, p->margin_ms / 1000);
}

static int check_skew(repo_session *s, int64_t before, vmsh_error **err)
{
    return skew_of(s->r, &s->p, s->name, before, err);
}

int repo_check_clock(vmsh_repo *r, const repo_gc_params_t *p, const char *name, vmsh_error **err)
{
    int64_t before = repo_now_ms(r);
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%" PRId64 "\n", before);
    int rc = r->store->ops->put(r->store, name, buf, (size_t)n, err);
    return rc < 0 ? rc : skew_of(r, p, name, before, err);
}

int repo_session_begin(vmsh_repo *r, repo_session **out, vmsh_error **err)
{
    repo_session *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->r = r;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    repo_gc_params(r, &s->p);
    uint8_t raw[8];
    if (crypto_random(raw, sizeof(raw)) < 0) {
        free(s);
        return vmsh_error_set(err, -EIO, "cannot get random bytes from the kernel");
    }
    vmsh_hex(raw, sizeof(raw), s->id);
    snprintf(s->name, sizeof(s->name), "%s/%s", SESSION_DIR, s->id);
    if (gethostname(s->host, sizeof(s->host) - 1) < 0)
        snprintf(s->host, sizeof(s->host), "unknown");
    for (char *c = s->host; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            *c = '_';
    s->start_ms = repo_now_ms(r);
    pthread_mutex_lock(&s->mu);
    int rc = session_put_locked(s, err);
    pthread_mutex_unlock(&s->mu);
    if (rc < 0) {
        vmsh_error_prefix(err, "cannot write the backup's session (%s)", s->name);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return rc;
    }
    if (!r->no_skew_check && (rc = check_skew(s, s->start_ms, err)) < 0)
        goto fail;
    /* what gc condemned, read after the session is durable: a mark this
     * read misses was written after, and then this session blocks the
     * mark's deletion (gc.md, "Why it is safe") */
    gc_marks m;
    if ((rc = gc_marks_load(r, &m, err)) < 0) {
        vmsh_error_prefix(err, "cannot read gc's marks");
        goto fail;
    }
    pthread_mutex_lock(&r->lock);
    gc_marks_clear(&r->condemned);
    r->condemned = m;
    r->session_start_ms = s->start_ms;
    for (size_t i = 0; i < r->n_packs; i++)
        r->packs[i].condemned = 0;
    pthread_mutex_unlock(&r->lock);
    if (pthread_create(&s->thread, NULL, heartbeat_main, s) == 0)
        s->thread_on = true;
    *out = s;
    return 0;
fail:
    r->store->ops->del(r->store, s->name, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return rc;
}

int repo_session_pin(repo_session *s, const char *backup_id, vmsh_error **err)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n_pins; i++)
        if (strcmp(s->pins[i], backup_id) == 0) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
    if (s->n_pins >= 16) {
        pthread_mutex_unlock(&s->mu);
        return vmsh_error_set(err, -E2BIG, "a backup may build on at most 16 earlier backups");
    }
    char(*np)[VMSH_BACKUP_ID_LEN + 1] =
        vmsh_realloc_array(s->pins, s->n_pins + 1, sizeof(*s->pins));
    if (!np) {
        pthread_mutex_unlock(&s->mu);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->pins = np;
    snprintf(s->pins[s->n_pins++], VMSH_BACKUP_ID_LEN + 1, "%s", backup_id);
    int rc = session_put_locked(s, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int repo_session_check(repo_session *s, vmsh_error **err)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->mu);
    int rc = session_put_locked(s, err);
    bool lapsed = s->lapsed;
    pthread_mutex_unlock(&s->mu);
    if (rc < 0)
        return vmsh_error_prefix(err, "cannot renew the backup's session before its commit");
    if (lapsed)
        return vmsh_error_set(err, -ETIMEDOUT,
                              "the backup's session lapsed (its heartbeat went unwritten for "
                              "longer than store-session-seconds, %" PRId64
                              " s): a gc may have counted it dead and deleted a pack it "
                              "deduplicated against, so nothing was committed; run the backup "
                              "again",
                              s->p.session_ms / 1000);
    return 0;
}

void repo_session_end(repo_session *s)
{
    if (!s)
        return;
    if (s->thread_on) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    s->r->store->ops->del(s->r->store, s->name, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->pins);
    free(s);
}

/* ---- gc's view of the sessions ---- */

typedef struct scan {
    vmsh_repo *r;
    int64_t now_ms;
    const repo_gc_params_t *p;
    gc_sessions *v;
    int rc;
    vmsh_error **err;
} scan;

/* One session object: {"format": "vmshadow-session", "version": 1, "host",
 * "pid", "start_ms", "heartbeat_ms", "pins": [backup IDs]}. Written by any
 * host that writes the repository: hostile input (fuzz_session). */
int gc_session_parse(const char *text, size_t len, gc_session_doc *out)
{
    *out = (gc_session_doc){0};
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return -ENOMEM;
    json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    bool complete =
        json_tokener_get_error(tok) == json_tokener_success && tok->char_offset == (int)len;
    json_tokener_free(tok);
    json_object *f = NULL, *v = NULL, *s = NULL, *h = NULL, *p = NULL;
    if (!complete || !o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "format", &f) || !json_object_is_type(f, json_type_string) ||
        strcmp(json_object_get_string(f), "vmshadow-session") != 0 ||
        !json_object_object_get_ex(o, "version", &v) || !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) != 1 || !json_object_object_get_ex(o, "start_ms", &s) ||
        !json_object_is_type(s, json_type_int) ||
        !json_object_object_get_ex(o, "heartbeat_ms", &h) ||
        !json_object_is_type(h, json_type_int) || !json_object_object_get_ex(o, "pins", &p) ||
        !json_object_is_type(p, json_type_array)) {
        json_object_put(o);
        return -EBADMSG;
    }
    out->start_ms = json_object_get_int64(s);
    out->heartbeat_ms = json_object_get_int64(h);
    size_t n = json_object_array_length(p);
    if (n && !(out->pins = vmsh_realloc_array(NULL, n, sizeof(*out->pins)))) {
        json_object_put(o);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(p, i);
        const char *id = json_object_get_string(e);
        /* a pin this vmshadow cannot name: gc keeps every backup (bad_pin) */
        if (!json_object_is_type(e, json_type_string) ||
            json_object_get_string_len(e) != VMSH_BACKUP_ID_LEN ||
            strspn(id, "0123456789abcdef") != VMSH_BACKUP_ID_LEN) {
            out->bad_pin = true;
            continue;
        }
        memcpy(out->pins[out->n_pins++], id, VMSH_BACKUP_ID_LEN + 1);
    }
    json_object_put(o);
    return 0;
}

void gc_session_doc_clear(gc_session_doc *d)
{
    free(d->pins);
    *d = (gc_session_doc){0};
}

static int pin_add(gc_sessions *v, const char *id)
{
    char(*np)[VMSH_BACKUP_ID_LEN + 1] =
        vmsh_realloc_array(v->pins, v->n_pins + 1, sizeof(*v->pins));
    if (!np)
        return -ENOMEM;
    v->pins = np;
    snprintf(v->pins[v->n_pins++], VMSH_BACKUP_ID_LEN + 1, "%s", id);
    return 0;
}

static int scan_entry(void *opaque, const char *name, repo_store_kind kind,
                      const repo_store_stat *st)
{
    scan *sc = opaque;
    if (kind != REPO_STORE_REG || strlen(name) != 16 || strspn(name, "0123456789abcdef") != 16)
        return 0; /* temporaries of a put, or not ours */
    char path[64];
    snprintf(path, sizeof(path), "%s/%s", SESSION_DIR, name);
    char *text = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    int rc = sc->r->store->ops->get(sc->r->store, path, SESSION_MAX_LEN, &text, &len, &e);
    vmsh_error_free(e);
    if (rc == -ENOENT)
        return 0; /* ended meanwhile */
    gc_session_doc d = {0};
    int64_t dead_before = sc->now_ms - sc->p->session_ms - 2 * sc->p->margin_ms;
    int prc = rc < 0 ? rc : gc_session_parse(text, len, &d);
    free(text);
    if (prc == -ENOMEM)
        return sc->rc = vmsh_error_set(sc->err, -ENOMEM, "out of memory");
    if (prc < 0) {
        /* unreadable: judged by its modification time, and while it may be
         * live it blocks every deletion (start 0) */
        if (st->mtime_ns / 1000000 < dead_before) {
            if (sc->r->store->ops->del(sc->r->store, path, NULL) == 0)
                sc->v->n_dead++;
            return 0;
        }
        sc->v->n_live++;
        sc->v->oldest_start_ms = INT64_MIN;
        return 0;
    }
    if (d.heartbeat_ms < dead_before) {
        /* dead: its writer can no longer commit (repo_session_check) */
        gc_session_doc_clear(&d);
        if (sc->r->store->ops->del(sc->r->store, path, NULL) == 0)
            sc->v->n_dead++;
        return 0;
    }
    sc->v->n_live++;
    if (d.start_ms < sc->v->oldest_start_ms)
        sc->v->oldest_start_ms = d.start_ms;
    sc->v->bad_pin |= d.bad_pin;
    for (size_t i = 0; i < d.n_pins; i++)
        if (pin_add(sc->v, d.pins[i]) < 0) {
            gc_session_doc_clear(&d);
            return sc->rc = vmsh_error_set(sc->err, -ENOMEM, "out of memory");
        }
    gc_session_doc_clear(&d);
    return 0;
}

int gc_sessions_scan(vmsh_repo *r, int64_t now_ms, const repo_gc_params_t *p, gc_sessions *v,
                     vmsh_error **err)
{
    *v = (gc_sessions){.oldest_start_ms = INT64_MAX};
    scan sc = {.r = r, .now_ms = now_ms, .p = p, .v = v, .err = err};
    vmsh_error *e = NULL;
    int rc = r->store->ops->list(r->store, SESSION_DIR, REPO_STORE_LIST_STAT, scan_entry, &sc, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return 0;
    }
    if (rc < 0) {
        if (sc.rc == 0)
            vmsh_error_propagate(err, &e);
        vmsh_error_free(e);
        free(v->pins);
        v->pins = NULL;
        return vmsh_error_prefix(err, "cannot read the writers' sessions");
    }
    return 0;
}

void gc_sessions_clear(gc_sessions *v)
{
    free(v->pins);
    *v = (gc_sessions){0};
}

bool repo_pack_condemned(vmsh_repo *r, uint32_t no)
{
    /* r->lock held by the caller */
    if (no == CHUNK_PENDING || no >= r->n_packs || !r->backup_pending || r->gc_marking)
        return false;
    pack_info *pi = &r->packs[no];
    if (pi->condemned == 0) {
        uint8_t bin[16];
        pi->condemned = 1;
        if (r->condemned.n && vmsh_unhex(pi->name, bin, 16) == 0 &&
            gc_marks_find(&r->condemned, bin))
            pi->condemned = 2;
    }
    return pi->condemned == 2;
}

int repo_commit_lock(vmsh_repo *r, vmsh_lock **out, vmsh_error **err)
{
    /* a sweep lasts a listing of index/ and its deletes: wait for it, with
     * a bound so that a stalled one never hangs a backup */
    unsigned waited_ms = 0, step = 50;
    for (;;) {
        vmsh_error *e = NULL;
        int rc = repo_lock(r, "write", false, out, &e);
        if (rc != -EBUSY || waited_ms >= 600u * 1000) {
            if (rc < 0)
                vmsh_error_propagate(err, &e);
            else
                vmsh_error_free(e);
            return rc;
        }
        vmsh_error_free(e);
        usleep(step * 1000);
        waited_ms += step;
        if (step < 1000)
            step *= 2;
    }
}
