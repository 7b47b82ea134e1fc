/* store_s3.c - the repository in an S3 bucket, s3://HOST[:PORT]/BUCKET[/PREFIX]
 * (HTTPS, certificates checked) or s3+http://... for a plain-HTTP endpoint
 * such as a local gateway (issue 26; docs/formats/repository.md, "Stores").
 *
 * Repository file `name` is the key PREFIX/name. Requests are signed with
 * AWS Signature V4 (sigv4.c), the payload's SHA-256 in
 * x-amz-content-sha256. A PUT is atomic on S3 (a reader sees the old
 * object or the whole new one), so a pack, built in memory by store_obj.c,
 * is one PUT of at most 64 MiB and its table: no partial pack is ever
 * visible, and no multipart upload can be left behind. S3 has no locks:
 * locks are lease objects (below), whose limits the format document
 * states. Credentials come from the environment or a credentials file,
 * never from the command line. */
#include "sigv4.h"
#include "store_obj.h"

#include <vmshadow/util/mem.h>

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_TRIES   4
#define MAX_HANDLES 16
#define LIST_MAX    (16u << 20) /* one ListObjectsV2 page */
#define ERR_MAX     (64u << 10)

typedef struct s3_store {
    obj_store o;
    char *scheme, *host, *bucket, *prefix; /* prefix "" or "PREFIX/" */
    char *disp;                            /* the bucket's URL, for messages: keys follow */
    bool virtual_host;
    char *access, *secret, *token, *region;
    unsigned timeout_s, lease_s;
    pthread_mutex_t hmu; /* the pool of idle curl handles (kept for their connections) */
    CURL *idle[MAX_HANDLES];
    unsigned n_idle;
    int64_t skew; /* server time minus ours, from the last Date: seen */
} s3_store;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    xmlInitParser();
}

/* ---- one request ---- */

typedef struct sink {
    char *buf;
    size_t len, cap, max;
    bool fixed; /* buf is the caller's, cap bytes */
    bool overflow;
    /* a fixed sink's reply that is an error: its document goes here */
    CURL *c;
    bool checked, is_err;
    char *ebuf;
    size_t elen;
} sink;

typedef struct reply {
    long status;
    uint64_t length;
    int64_t mtime;
    int64_t date;
} reply;

typedef struct source {
    const uint8_t *buf;
    size_t len, off;
} source;

static size_t on_body(char *p, size_t sz, size_t n, void *opaque)
{
    sink *k = opaque;
    size_t len = sz * n;
    if (k->fixed && !k->checked) {
        long st = 0;
        curl_easy_getinfo(k->c, CURLINFO_RESPONSE_CODE, &st);
        k->checked = true;
        k->is_err = st >= 300;
    }
    if (k->is_err) {
        if (k->elen + len > ERR_MAX)
            return len; /* the start of it is enough */
        char *nb = realloc(k->ebuf, k->elen + len + 1);
        if (!nb)
            return 0;
        memcpy(nb + k->elen, p, len);
        k->ebuf = nb;
        k->elen += len;
        return len;
    }
    if (k->len + len > k->cap) {
        if (k->fixed || k->len + len > k->max) {
            k->overflow = true;
            return 0;
        }
        size_t ncap = k->cap ? k->cap * 2 : 16384;
        while (ncap < k->len + len + 1)
            ncap *= 2;
        char *nb = realloc(k->buf, ncap);
        if (!nb)
            return 0;
        k->buf = nb;
        k->cap = ncap;
    }
    memcpy(k->buf + k->len, p, len);
    k->len += len;
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *opaque)
{
    reply *r = opaque;
    size_t len = sz * n;
    char line[256];
    snprintf(line, sizeof(line), "%.*s", (int)(len < 255 ? len : 255), p);
    char *colon = strchr(line, ':');
    if (!colon)
        return len;
    *colon = 0;
    char *v = colon + 1;
    while (*v == ' ')
        v++;
    v[strcspn(v, "\r\n")] = 0;
    if (strcasecmp(line, "Content-Length") == 0)
        r->length = strtoull(v, NULL, 10);
    else if (strcasecmp(line, "Last-Modified") == 0)
        r->mtime = (int64_t)curl_getdate(v, NULL);
    else if (strcasecmp(line, "Date") == 0)
        r->date = (int64_t)curl_getdate(v, NULL);
    return len;
}

static size_t on_read(char *p, size_t sz, size_t n, void *opaque)
{
    source *s = opaque;
    size_t len = sz * n, left = s->len - s->off;
    if (len > left)
        len = left;
    memcpy(p, s->buf + s->off, len);
    s->off += len;
    return len;
}

static CURL *handle_get(s3_store *s)
{
    CURL *c = NULL;
    pthread_mutex_lock(&s->hmu);
    if (s->n_idle)
        c = s->idle[--s->n_idle];
    pthread_mutex_unlock(&s->hmu);
    if (c)
        curl_easy_reset(c);
    else
        c = curl_easy_init();
    return c;
}

static void handle_put(s3_store *s, CURL *c)
{
    pthread_mutex_lock(&s->hmu);
    if (s->n_idle < MAX_HANDLES) {
        s->idle[s->n_idle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&s->hmu);
    if (c)
        curl_easy_cleanup(c);
}

/* The <Code> of an S3 error document, or "". */
static void error_code(const sink *k, char *out, size_t n)
{
    out[0] = 0;
    const char *buf = k->is_err ? k->ebuf : k->buf;
    size_t len = k->is_err ? k->elen : k->len;
    if (!buf || !len)
        return;
    const char *b = memmem(buf, len, "<Code>", 6);
    const char *e = b ? memmem(b, len - (size_t)(b - buf), "</Code>", 7) : NULL;
    if (b && e)
        snprintf(out, n, "%.*s", (int)(e - b - 6), b + 6);
}

typedef struct req {
    const char *method;
    const char *key;   /* NULL: the bucket itself */
    const char *query; /* canonical query string or "" */
    const void *body;
    size_t body_len;
    const char *range; /* "bytes=a-b" or NULL */
    bool if_none_match;
} req;

static void amz_date(int64_t skew, char out[17])
{
    time_t now = time(NULL) + (time_t)skew;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/* One attempt: 0 with r->status set (any HTTP status), or a curl error
 * mapped to -errno with *transient. */
static int attempt(s3_store *s, const req *q, sink *k, reply *r, bool *transient, char *cerr,
                   size_t cerr_n)
{
    _cleanup_free_ char *ekey = q->key ? sigv4_uri_encode(q->key, 1) : strdup("");
    if (!ekey)
        return -ENOMEM;
    _cleanup_free_ char *uri = NULL, *url = NULL, *hosth = NULL;
    int a = s->virtual_host ? asprintf(&uri, "/%s", ekey)
                            : asprintf(&uri, "/%s%s%s", s->bucket, q->key ? "/" : "", ekey);
    if (a < 0)
        return -ENOMEM;
    if (s->virtual_host)
        a = asprintf(&hosth, "%s.%s", s->bucket, s->host);
    else
        a = asprintf(&hosth, "%s", s->host);
    if (a < 0 ||
        asprintf(&url, "%s://%s%s%s%s", s->scheme, hosth, uri, *q->query ? "?" : "", q->query) < 0)
        return -ENOMEM;
    char sha[65], date[17];
    sigv4_sha256_hex(q->body ? q->body : "", q->body_len, sha);
    amz_date(__atomic_load_n(&s->skew, __ATOMIC_RELAXED), date);
    sigv4_header h[4] = {{"host", hosth}, {"x-amz-content-sha256", sha}, {"x-amz-date", date}, {0}};
    size_t nh = 3;
    if (s->token)
        h[nh++] = (sigv4_header){"x-amz-security-token", s->token};
    sigv4_request sr = {q->method, uri,       q->query, h,         nh,       sha,
                        date,      s->region, "s3",     s->access, s->secret};
    _cleanup_free_ char *auth = sigv4_authorization(&sr, NULL, NULL);
    if (!auth)
        return -ENOMEM;
    CURL *c = handle_get(s);
    if (!c)
        return -ENOMEM;
    struct curl_slist *hl = NULL;
    char line[1024];
    snprintf(line, sizeof(line), "Host: %s", hosth);
    hl = curl_slist_append(hl, line);
    snprintf(line, sizeof(line), "x-amz-content-sha256: %s", sha);
    hl = curl_slist_append(hl, line);
    snprintf(line, sizeof(line), "x-amz-date: %s", date);
    hl = curl_slist_append(hl, line);
    if (s->token) {
        snprintf(line, sizeof(line), "x-amz-security-token: %s", s->token);
        hl = curl_slist_append(hl, line);
    }
    _cleanup_free_ char *authl = NULL;
    if (asprintf(&authl, "Authorization: %s", auth) >= 0)
        hl = curl_slist_append(hl, authl);
    if (q->range) {
        snprintf(line, sizeof(line), "Range: %s", q->range);
        hl = curl_slist_append(hl, line);
    }
    if (q->if_none_match)
        hl = curl_slist_append(hl, "If-None-Match: *");
    hl = curl_slist_append(hl, "Expect:");
    source src = {q->body, q->body_len, 0};
    k->c = c;
    k->checked = k->is_err = false;
    free(k->ebuf);
    k->ebuf = NULL;
    k->elen = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)s->timeout_s);
    /* a stalled store fails instead of hanging: less than 1 byte/s for
     * store-timeout seconds ends the request */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)s->timeout_s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, k);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (strcmp(q->method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &src);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->body_len);
    } else if (strcmp(q->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(q->method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    }
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    CURLcode cc = curl_easy_perform(c);
    curl_slist_free_all(hl);
    int rc = 0;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
        if (r->date > 0) /* several threads: any recent value will do */
            __atomic_store_n(&s->skew, r->date - (int64_t)time(NULL), __ATOMIC_RELAXED);
    } else if (cc == CURLE_WRITE_ERROR && k->overflow) {
        rc = -EFBIG;
    } else {
        snprintf(cerr, cerr_n, "%s", *ebuf ? ebuf : curl_easy_strerror(cc));
        *transient = cc != CURLE_SSL_CACERT && cc != CURLE_PEER_FAILED_VERIFICATION &&
                     cc != CURLE_SSL_CONNECT_ERROR && cc != CURLE_URL_MALFORMAT &&
                     cc != CURLE_UNSUPPORTED_PROTOCOL && cc != CURLE_COULDNT_RESOLVE_HOST;
        rc = cc == CURLE_OPERATION_TIMEDOUT         ? -ETIMEDOUT
             : cc == CURLE_COULDNT_CONNECT          ? -ECONNREFUSED
             : cc == CURLE_PEER_FAILED_VERIFICATION ? -EPERM
             : cc == CURLE_SSL_CACERT               ? -EPERM
             : cc == CURLE_SSL_CONNECT_ERROR        ? -EPROTO
                                                    : -EIO;
    }
    handle_put(s, c);
    return rc;
}

/* A request with retries: transient failures (connection errors, 5xx,
 * 429) are retried MAX_TRIES times with backoff; a timeout once (each one
 * already waited store-timeout). Returns the HTTP status (> 0) or -errno
 * with *err set. */
static int request(s3_store *s, const req *q, sink *k, reply *r, vmsh_error **err)
{
    int timeouts = 0;
    for (unsigned i = 1;; i++) {
        bool transient = false;
        char cerr[CURL_ERROR_SIZE + 1] = "";
        size_t keep = k->len;
        memset(r, 0, sizeof(*r));
        int rc = attempt(s, q, k, r, &transient, cerr, sizeof(cerr));
        if (rc == -ETIMEDOUT)
            timeouts++;
        bool again = (rc < 0 && transient && timeouts < 2) ||
                     (rc == 0 && (r->status >= 500 || r->status == 429));
        if (!again || i >= MAX_TRIES) {
            if (rc < 0) {
                const char *what = q->key ? q->key : "(the bucket)";
                if (rc == -ENOMEM)
                    return vmsh_error_set(err, rc, "out of memory");
                if (rc == -EFBIG)
                    return vmsh_error_set(err, rc, "%s/%s: the reply is too large", s->disp, what);
                return vmsh_error_set(
                    err, rc, "S3 %s %s/%s failed%s: %s%s", q->method, s->disp, what,
                    i > 1 ? " after retries" : "", cerr,
                    rc == -ETIMEDOUT ? " (the store stalled; store-timeout)"
                    : rc == -EPERM   ? " (the endpoint's certificate is not trusted)"
                    : rc == -EPROTO  ? " (no TLS there? s3+http:// is for plain-HTTP "
                                       "endpoints)"
                                     : "");
            }
            return (int)r->status;
        }
        k->len = keep; /* a retried GET starts its body again */
        obj_backoff(i);
    }
}

/* The error of a reply with a status outside 2xx. */
static int status_error(s3_store *s, const req *q, const reply *r, const sink *k, vmsh_error **err)
{
    char code[128];
    error_code(k, code, sizeof(code));
    const char *what = q->key ? q->key : "";
    if (r->status == 404 && strcmp(code, "NoSuchBucket") == 0)
        return vmsh_error_set(err, -ENODEV,
                              "no bucket \"%s\" at %s (NoSuchBucket): 'vmshadow init' creates "
                              "it, or check the URL",
                              s->bucket, s->o.base.root);
    if (r->status == 404)
        return -ENOENT; /* the callers say what is missing */
    if (r->status == 403) {
        bool creds =
            strcmp(code, "InvalidAccessKeyId") == 0 || strcmp(code, "SignatureDoesNotMatch") == 0;
        return vmsh_error_set(
            err, -EACCES, "S3 %s %s/%s refused (%ld %s)%s", q->method, s->disp, what, r->status,
            *code ? code : "Forbidden",
            creds ? ": wrong credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
                    "s3-credentials-file)"
            : strcmp(code, "RequestTimeTooSkewed") == 0
                ? ": this host's clock is too far from the store's"
                : "");
    }
    if (r->status == 412)
        return -EEXIST;
    return vmsh_error_set(err, r->status >= 500 ? -EIO : -EPROTO, "S3 %s %s/%s failed: HTTP %ld %s",
                          q->method, s->disp, what, r->status, code);
}

static char *skey(s3_store *s, const char *key)
{
    char *p = NULL;
    if (asprintf(&p, "%s%s", s->prefix, key) < 0)
        return NULL;
    return p;
}

static int put_raw(s3_store *s, const char *k, const void *buf, size_t len, bool if_none_match,
                   vmsh_error **err)
{
    req q = {"PUT", k, "", buf, len, NULL, if_none_match};
    sink sk = {.max = ERR_MAX};
    reply r;
    int st = request(s, &q, &sk, &r, err);
    int rc = st < 0 ? st : st / 100 == 2 ? 0 : status_error(s, &q, &r, &sk, err);
    free(sk.buf);
    return rc;
}

static int s_put(obj_store *os, const char *key, const void *buf, size_t len, vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    _cleanup_free_ char *k = skey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return put_raw(s, k, buf, len, false, err);
}

static int get_raw(s3_store *s, const char *k, uint64_t off, size_t len, void *buf, size_t *got,
                   vmsh_error **err)
{
    char range[64];
    snprintf(range, sizeof(range), "bytes=%llu-%llu", (unsigned long long)off,
             (unsigned long long)(off + len - 1));
    req q = {"GET", k, "", NULL, 0, len ? range : NULL, false};
    sink sk = {.buf = buf, .cap = len, .fixed = true};
    reply r;
    *got = 0;
    if (len == 0)
        return 0;
    int st = request(s, &q, &sk, &r, err);
    if (st < 0)
        return st;
    if (st == 416)
        return 0; /* at or past the end */
    int rc = st / 100 != 2 ? status_error(s, &q, &r, &sk, err) : 0;
    free(sk.ebuf);
    *got = rc == 0 ? sk.len : 0;
    return rc;
}

static int s_read(obj_store *os, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                  vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    _cleanup_free_ char *k = skey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return get_raw(s, k, off, len, buf, got, err);
}

static int s_stat(obj_store *os, const char *key, repo_store_stat *st, vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    _cleanup_free_ char *k = skey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    req q = {"HEAD", k, "", NULL, 0, NULL, false};
    sink sk = {.max = ERR_MAX};
    reply r;
    int rc = request(s, &q, &sk, &r, err);
    if (rc == 404 && strcmp(key, "config") == 0) {
        /* a HEAD has no error document: is it the bucket that is missing?
         * (opening a repository asks for its config first) */
        req b = {"HEAD", NULL, "", NULL, 0, NULL, false};
        reply br;
        int brc = request(s, &b, &sk, &br, NULL);
        if (brc == 404) {
            free(sk.buf);
            return vmsh_error_set(err, -ENODEV,
                                  "no bucket \"%s\" at %s (NoSuchBucket): 'vmshadow init' "
                                  "creates it, or check the URL",
                                  s->bucket, s->o.base.root);
        }
    }
    if (rc == 403) {
        /* a HEAD's refusal has no error document to say why (wrong
         * credentials, a skewed clock, a policy): a one-byte GET has */
        char one[1];
        size_t got = 0;
        free(sk.buf);
        int g = get_raw(s, k, 0, 1, one, &got, err);
        return g < 0 ? g : vmsh_error_set(err, -EACCES, "S3 HEAD %s/%s refused (403)", s->disp, k);
    }
    if (rc >= 0 && rc / 100 != 2) {
        rc = rc == 404 ? -ENOENT : status_error(s, &q, &r, &sk, err);
    } else if (rc >= 0) {
        st->size = r.length;
        st->mtime_ns = r.mtime > 0 ? r.mtime * 1000000000 : 0;
        rc = 0;
    }
    free(sk.buf);
    return rc;
}

static int del_raw(s3_store *s, const char *k, vmsh_error **err)
{
    req q = {"DELETE", k, "", NULL, 0, NULL, false};
    sink sk = {.max = ERR_MAX};
    reply r;
    int st = request(s, &q, &sk, &r, err);
    int rc = st < 0 ? st : st / 100 == 2 ? 0 : status_error(s, &q, &r, &sk, err);
    free(sk.buf);
    return rc;
}

static int s_del(obj_store *os, const char *key, vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    _cleanup_free_ char *k = skey(s, key);
    if (!k)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* S3 deletes are idempotent (204 for a missing key): stat first so
     * that a missing file is -ENOENT as on the other stores */
    repo_store_stat st;
    int rc = s_stat(os, key, &st, err);
    return rc < 0 ? rc : del_raw(s, k, err);
}

static const char *child_text(xmlNode *n, const char *name)
{
    for (xmlNode *c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0)
            return c->children && c->children->content ? (const char *)c->children->content : "";
    return NULL;
}

static int64_t iso_time(const char *t)
{
    struct tm tm = {0};
    if (!t || !strptime(t, "%Y-%m-%dT%H:%M:%S", &tm))
        return -1;
    return (int64_t)timegm(&tm) * 1000000000;
}

/* ListObjectsV2 with the prefix, page by page (continuation tokens). */
static int list_raw(s3_store *s, const char *fullprefix, size_t skip, obj_list_fn fn, void *opaque,
                    vmsh_error **err)
{
    _cleanup_free_ char *token = NULL;
    _cleanup_free_ char *ep = sigv4_uri_encode(fullprefix, 0);
    if (!ep)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (;;) {
        _cleanup_free_ char *query = NULL, *et = token ? sigv4_uri_encode(token, 0) : NULL;
        /* the canonical query: parameters sorted by name */
        if (asprintf(&query, "%s%s%slist-type=2&prefix=%s", et ? "continuation-token=" : "",
                     et ? et : "", et ? "&" : "", ep) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        req q = {"GET", NULL, query, NULL, 0, NULL, false};
        sink sk = {.max = LIST_MAX};
        reply r;
        int st = request(s, &q, &sk, &r, err);
        if (st < 0)
            return st;
        if (st / 100 != 2) {
            int rc = status_error(s, &q, &r, &sk, err);
            free(sk.buf);
            if (rc == -ENOENT)
                rc = vmsh_error_set(err, -EIO, "cannot list %s: HTTP 404", s->o.base.root);
            return rc;
        }
        xmlDoc *doc = xmlReadMemory(sk.buf ? sk.buf : "", (int)sk.len, "list.xml", NULL,
                                    XML_PARSE_NONET | XML_PARSE_NOBLANKS);
        free(sk.buf);
        xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
        if (!root) {
            xmlFreeDoc(doc);
            return vmsh_error_set(err, -EPROTO, "cannot list %s: the reply is not XML",
                                  s->o.base.root);
        }
        int rc = 0;
        for (xmlNode *c = root->children; c && rc >= 0; c = c->next) {
            if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Contents") != 0)
                continue;
            const char *key = child_text(c, "Key"), *size = child_text(c, "Size");
            if (!key || strncmp(key, fullprefix, strlen(fullprefix)) != 0)
                continue;
            rc = fn(opaque, key + skip, size ? strtoull(size, NULL, 10) : 0,
                    iso_time(child_text(c, "LastModified")));
        }
        const char *trunc = child_text(root, "IsTruncated");
        const char *next = child_text(root, "NextContinuationToken");
        bool more = trunc && strcmp(trunc, "true") == 0 && next && *next;
        /* a server that hands back the token it was given would make this
         * loop forever (R7: a stalling store ends in an error, never a hang) */
        bool same = more && token && strcmp(token, next) == 0;
        free(token);
        token = more && !same ? strdup(next) : NULL;
        xmlFreeDoc(doc);
        if (rc < 0)
            return rc;
        if (same)
            return vmsh_error_set(err, -EPROTO,
                                  "cannot list %s: the server repeated its continuation token; "
                                  "check the S3 service",
                                  s->o.base.root);
        if (more && !token)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        if (!token)
            return 0;
    }
}

static int s_list(obj_store *os, const char *prefix, obj_list_fn fn, void *opaque, vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    _cleanup_free_ char *full = skey(s, prefix);
    if (!full)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return list_raw(s, full, strlen(s->prefix), fn, opaque, err);
}

/* ---- leases ----
 * S3 has no locks. A lock is a lease object: locks/<which> for the
 * exclusive holder, locks/<which>.shared.<holder> for each shared one,
 * holding "<holder> <expiry> <kind>" in the store's time (Date: of its
 * replies, so hosts' clocks do not matter); renewed every third of
 * store-lease-seconds while held, deleted when released, ignored once
 * expired. An exclusive taker creates its object with If-None-Match: *
 * (one of two racing takers wins), reads it back, then checks that no
 * unexpired shared lease exists, else gives up. This is a lease, not a
 * lock: a holder stalled longer than the lease loses it without knowing
 * (docs/formats/repository.md, "Concurrency and locks"). */

typedef struct s3_lease {
    s3_store *s;
    char *key; /* full key of our lease object */
    char holder[33];
    bool exclusive;
    pthread_t renewer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
} s3_lease;

static int64_t now_store(s3_store *s)
{
    return (int64_t)time(NULL) + __atomic_load_n(&s->skew, __ATOMIC_RELAXED);
}

static int lease_write(s3_lease *l, bool if_none_match, vmsh_error **err)
{
    char body[128];
    snprintf(body, sizeof(body), "%s %lld %s\n", l->holder,
             (long long)(now_store(l->s) + l->s->lease_s), l->exclusive ? "exclusive" : "shared");
    return put_raw(l->s, l->key, body, strlen(body), if_none_match, err);
}

/* Reads a lease object: 1 and its holder when it is live, 0 when absent or
 * expired. */
static int lease_read(s3_store *s, const char *k, char holder[33], vmsh_error **err)
{
    char buf[129];
    size_t got = 0;
    int rc = get_raw(s, k, 0, sizeof(buf) - 1, buf, &got, err);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    buf[got] = 0;
    long long exp = 0;
    char h[33] = "";
    if (sscanf(buf, "%32s %lld", h, &exp) != 2)
        return 0; /* damaged: treated as expired */
    if (holder)
        memcpy(holder, h, 33);
    return exp > now_store(s) ? 1 : 0;
}

typedef struct shared_scan {
    s3_store *s;
    const char *own;
    int live;
} shared_scan;

static int shared_entry(void *opaque, const char *key, uint64_t size, int64_t mtime)
{
    (void)size;
    (void)mtime;
    shared_scan *sc = opaque;
    _cleanup_free_ char *full = skey(sc->s, key);
    if (!full || (sc->own && strcmp(full, sc->own) == 0))
        return 0;
    if (lease_read(sc->s, full, NULL, NULL) == 1)
        sc->live++;
    return 0;
}

static void *lease_renew(void *arg)
{
    s3_lease *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += l->s->lease_s / 3 ? l->s->lease_s / 3 : 1;
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        if (l->stop)
            break;
        pthread_mutex_unlock(&l->mu);
        lease_write(l, false, NULL); /* a failure: it expires; documented */
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void lease_free(s3_lease *l)
{
    free(l->key);
    free(l);
}

static void lease_release(void *opaque)
{
    s3_lease *l = opaque;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->renewer, NULL);
    char h[33] = "";
    if (lease_read(l->s, l->key, h, NULL) >= 0 && strcmp(h, l->holder) == 0)
        del_raw(l->s, l->key, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    lease_free(l);
}

static int busy(vmsh_error **err, s3_store *s, const char *key)
{
    return vmsh_error_set(err, -EBUSY,
                          "the repository (%s lock) is busy: another vmshadow process holds "
                          "the lease %s/%s%s; wait for it to finish and retry (a lease of a "
                          "process that died expires after %u s)",
                          key + 6, s->disp, s->prefix, key, s->lease_s);
}

static int s_lock(obj_store *os, const char *key, bool exclusive, vmsh_lock **out, vmsh_error **err)
{
    s3_store *s = (s3_store *)os;
    s3_lease *l = calloc(1, sizeof(*l));
    if (!l)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    l->s = s;
    l->exclusive = exclusive;
    uint8_t raw[16];
    FILE *f = fopen("/dev/urandom", "re");
    if (!f || fread(raw, 1, sizeof(raw), f) != sizeof(raw)) {
        if (f)
            fclose(f);
        free(l);
        return vmsh_error_set(err, -EIO, "cannot get random bytes for a lease holder id");
    }
    fclose(f);
    for (size_t i = 0; i < 16; i++)
        sprintf(l->holder + 2 * i, "%02x", raw[i]);
    _cleanup_free_ char *xkey = skey(s, key), *sprefix = NULL;
    int rc = asprintf(&sprefix, "%s.shared.", key) < 0 ? -ENOMEM : 0;
    if (rc == 0 && xkey)
        rc = exclusive
                 ? ((l->key = strdup(xkey)) ? 0 : -ENOMEM)
                 : (asprintf(&l->key, "%s%s%s", s->prefix, sprefix, l->holder) < 0 ? -ENOMEM : 0);
    if (rc < 0 || !xkey) {
        lease_free(l);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    _cleanup_free_ char *fsprefix = skey(s, sprefix);
    shared_scan sc = {s, l->key, 0};
    if (exclusive) {
        if ((rc = list_raw(s, fsprefix, strlen(s->prefix), shared_entry, &sc, err)) < 0)
            goto fail;
        if (sc.live) {
            rc = busy(err, s, key);
            goto fail;
        }
        rc = lease_read(s, xkey, NULL, err);
        if (rc < 0)
            goto fail;
        if (rc == 1) {
            rc = busy(err, s, key);
            goto fail;
        }
        del_raw(s, xkey, NULL); /* an expired one: gone (a racing taker's is re-made below) */
        rc = lease_write(l, true, err);
        if (rc == -EEXIST) {
            rc = busy(err, s, key);
            goto fail;
        }
        if (rc < 0)
            goto fail;
        char h[33] = "";
        if ((rc = lease_read(s, xkey, h, err)) < 0)
            goto fail;
        sc.live = 0;
        if (rc == 1 && strcmp(h, l->holder) == 0)
            rc = list_raw(s, fsprefix, strlen(s->prefix), shared_entry, &sc, err);
        else
            rc = -EBUSY;
        if (rc < 0 || sc.live) {
            if (rc != -EBUSY)
                del_raw(s, xkey, NULL);
            rc = rc < 0 && rc != -EBUSY ? rc : busy(err, s, key);
            goto fail;
        }
    } else {
        if ((rc = lease_read(s, xkey, NULL, err)) != 0) {
            rc = rc < 0 ? rc : busy(err, s, key);
            goto fail;
        }
        if ((rc = lease_write(l, false, err)) < 0)
            goto fail;
        if ((rc = lease_read(s, xkey, NULL, err)) != 0) {
            del_raw(s, l->key, NULL);
            rc = rc < 0 ? rc : busy(err, s, key);
            goto fail;
        }
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->renewer, NULL, lease_renew, l) != 0) {
        del_raw(s, l->key, NULL);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        lease_free(l);
        return vmsh_error_set(err, -EAGAIN, "cannot start the lease renewal thread");
    }
    if (vmsh_lock_custom(out, lease_release, l) < 0) {
        lease_release(l);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
fail:
    lease_free(l);
    return rc;
}

static void s_free(obj_store *os)
{
    s3_store *s = (s3_store *)os;
    for (unsigned i = 0; i < s->n_idle; i++)
        curl_easy_cleanup(s->idle[i]);
    pthread_mutex_destroy(&s->hmu);
    free(s->scheme);
    free(s->disp);
    free(s->host);
    free(s->bucket);
    free(s->prefix);
    free(s->access);
    if (s->secret)
        memset(s->secret, 0, strlen(s->secret));
    free(s->secret);
    free(s->token);
    free(s->region);
    free(s);
}

static const obj_backend_ops s3_be = {
    .put = s_put,
    .read = s_read,
    .stat = s_stat,
    .del = s_del,
    .list = s_list,
    .lock = s_lock,
    .free = s_free,
};

/* The AWS shared credentials file's [profile] section (AWS_PROFILE, else
 * "default"): aws_access_key_id, aws_secret_access_key, aws_session_token,
 * region. */
static int read_credentials(s3_store *s, const char *path, vmsh_error **err)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return vmsh_error_set(err, -errno, "cannot read the S3 credentials file %s: %s", path,
                              strerror(errno));
    const char *profile = getenv("AWS_PROFILE");
    if (!profile || !*profile)
        profile = "default";
    char line[1024];
    bool in = false;
    while (fgets(line, sizeof(line), f)) {
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        p[strcspn(p, "\r\n")] = 0;
        if (*p == '[') {
            char *e = strchr(p, ']');
            if (e)
                *e = 0;
            in = strcmp(p + 1, profile) == 0;
            continue;
        }
        char *eq = strchr(p, '=');
        if (!in || !eq || *p == '#' || *p == ';')
            continue;
        char *k = p, *v = eq + 1, *ke = eq;
        while (ke > k && isspace((unsigned char)ke[-1]))
            ke--;
        *ke = 0;
        while (isspace((unsigned char)*v))
            v++;
        size_t n = strlen(v);
        while (n && isspace((unsigned char)v[n - 1]))
            v[--n] = 0;
        char **dst = strcmp(k, "aws_access_key_id") == 0       ? &s->access
                     : strcmp(k, "aws_secret_access_key") == 0 ? &s->secret
                     : strcmp(k, "aws_session_token") == 0     ? &s->token
                     : strcmp(k, "region") == 0                ? &s->region
                                                               : NULL;
        if (dst && !*dst)
            *dst = strdup(v);
    }
    memset(line, 0, sizeof(line));
    fclose(f);
    return 0;
}

static char *env_dup(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strdup(v) : NULL;
}

int repo_store_s3_open(repo_store **out, const char *url, unsigned flags, vmsh_error **err)
{
    pthread_once(&curl_once, curl_init_once);
    bool plain = strncmp(url, "s3+http://", 10) == 0;
    const char *p = url + (plain ? 10 : 5);
    s3_store *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&s->hmu, NULL);
    const char *slash = strchr(p, '/');
    const char *bucket = slash ? slash + 1 : "";
    const char *bslash = strchr(bucket, '/');
    s->scheme = strdup(plain ? "http" : "https");
    s->host = slash ? strndup(p, (size_t)(slash - p)) : strdup(p);
    s->bucket = bslash ? strndup(bucket, (size_t)(bslash - bucket)) : strdup(bucket);
    if (bslash && bslash[1]) {
        size_t n = strlen(bslash + 1);
        while (n && bslash[n] == '/')
            n--;
        if (asprintf(&s->prefix, "%.*s/", (int)n, bslash + 1) < 0)
            s->prefix = NULL;
    } else {
        s->prefix = strdup("");
    }
    if (s->host && s->bucket &&
        asprintf(&s->disp, "%.*s%s/%s", (int)(p - url), url, s->host, s->bucket) < 0)
        s->disp = NULL;
    if (!s->scheme || !s->host || !s->bucket || !s->prefix || !s->disp) {
        s_free(&s->o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    bool ok =
        *s->host && *s->bucket && strlen(s->bucket) <= 63 &&
        strspn(s->host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") ==
            strlen(s->host) &&
        strspn(s->bucket, "abcdefghijklmnopqrstuvwxyz0123456789.-") == strlen(s->bucket);
    if (ok && *s->prefix) {
        char pfx[600];
        snprintf(pfx, sizeof(pfx), "%.*s", (int)strlen(s->prefix) - 1, s->prefix);
        ok = strlen(pfx) <= 256 && obj_name_valid(pfx, false);
    }
    if (!ok) {
        s_free(&s->o);
        return vmsh_error_set(err, -EINVAL,
                              "bad repository URL %s: want s3://HOST[:PORT]/BUCKET[/PREFIX] or "
                              "s3+http://... (a bucket of lower-case letters, digits, '.' and "
                              "'-')",
                              url);
    }
    const char *addr = obj_store_opt("s3-addressing");
    s->virtual_host = addr && strcmp(addr, "virtual") == 0;
    /* credentials: the environment, else the credentials file */
    s->access = env_dup("AWS_ACCESS_KEY_ID");
    s->secret = env_dup("AWS_SECRET_ACCESS_KEY");
    if (s->access && s->secret)
        s->token = env_dup("AWS_SESSION_TOKEN");
    s->region = obj_store_opt("s3-region") ? strdup(obj_store_opt("s3-region"))
                                           : env_dup("AWS_DEFAULT_REGION");
    if (!s->region)
        s->region = env_dup("AWS_REGION");
    const char *cf = obj_store_opt("s3-credentials-file");
    _cleanup_free_ char *deffile = NULL;
    if (!cf)
        cf = getenv("AWS_SHARED_CREDENTIALS_FILE");
    if (!cf && getenv("HOME") && asprintf(&deffile, "%s/.aws/credentials", getenv("HOME")) >= 0)
        cf = access(deffile, R_OK) == 0 ? deffile : NULL;
    if ((!s->access || !s->secret) && cf) {
        free(s->access);
        free(s->secret);
        s->access = s->secret = NULL;
        int rc = read_credentials(s, cf, err);
        if (rc < 0) {
            s_free(&s->o);
            return rc;
        }
    }
    if (!s->access || !s->secret) {
        s_free(&s->o);
        return vmsh_error_set(err, -EACCES,
                              "no S3 credentials for %s: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or the config key s3-credentials-file",
                              url);
    }
    if (!s->region && !(s->region = strdup("us-east-1"))) {
        s_free(&s->o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->timeout_s = obj_store_opt_uint("store-timeout", 30, 1, 3600);
    s->lease_s = obj_store_opt_uint("store-lease-seconds", 30, 5, 3600);
    int rc = obj_store_init(&s->o, &s3_be, url, err);
    if (rc < 0) {
        obj_store_fini(&s->o);
        s_free(&s->o);
        return rc;
    }
    if (flags & REPO_STORE_CREATE) {
        /* init: the bucket is made when missing */
        req q = {"HEAD", NULL, "", NULL, 0, NULL, false};
        sink sk = {.max = ERR_MAX};
        reply r;
        rc = request(s, &q, &sk, &r, err);
        free(sk.buf);
        sk = (sink){.max = ERR_MAX};
        if (rc == 404) {
            _cleanup_free_ char *body = NULL;
            if (strcmp(s->region, "us-east-1") != 0 &&
                asprintf(&body,
                         "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/"
                         "2006-03-01/\"><LocationConstraint>%s</LocationConstraint>"
                         "</CreateBucketConfiguration>",
                         s->region) < 0)
                body = NULL;
            req c = {"PUT", NULL, "", body, body ? strlen(body) : 0, NULL, false};
            rc = request(s, &c, &sk, &r, err);
            if (rc > 0 && rc / 100 != 2) {
                char code[128];
                error_code(&sk, code, sizeof(code));
                rc = strcmp(code, "BucketAlreadyOwnedByYou") == 0
                         ? 0
                         : status_error(s, &c, &r, &sk, err);
            }
        } else if (rc > 0 && rc / 100 != 2) {
            rc = status_error(s, &q, &r, &sk, err);
        }
        free(sk.buf);
        if (rc < 0) {
            obj_store_fini(&s->o);
            s_free(&s->o);
            return rc;
        }
    }
    *out = &s->o.base;
    return 0;
}
