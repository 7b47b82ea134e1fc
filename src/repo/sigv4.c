/* sigv4.c - AWS Signature Version 4 (sigv4.h). */
#include "sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const unsigned char *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = 0;
}

void sigv4_sha256_hex(const void *buf, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL);
    hex(md, 32, out);
}

static void hmac(const void *key, size_t klen, const char *msg, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

char *sigv4_uri_encode(const char *s, int keep_slash)
{
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~' || (c == '/' && keep_slash)) {
            *o++ = (char)c;
        } else {
            sprintf(o, "%%%02X", c);
            o += 3;
        }
    }
    *o = 0;
    return out;
}

static int cmp_hdr(const void *a, const void *b)
{
    return strcmp(((const sigv4_header *)a)->name, ((const sigv4_header *)b)->name);
}

char *sigv4_authorization(const sigv4_request *r, char **canon_out, char **sts_out)
{
    sigv4_header *h = malloc((r->n_hdrs ? r->n_hdrs : 1) * sizeof(*h));
    if (!h)
        return NULL;
    memcpy(h, r->hdrs, r->n_hdrs * sizeof(*h));
    qsort(h, r->n_hdrs, sizeof(*h), cmp_hdr);
    char *canon = NULL, *signed_h = NULL, *sts = NULL, *auth = NULL;
    size_t cl = 0, sl = 0;
    FILE *c = open_memstream(&canon, &cl), *sh = open_memstream(&signed_h, &sl);
    if (!c || !sh) {
        if (c)
            fclose(c);
        if (sh)
            fclose(sh);
        free(canon);
        free(signed_h);
        free(h);
        return NULL;
    }
    fprintf(c, "%s\n%s\n%s\n", r->method, r->uri, r->query ? r->query : "");
    for (size_t i = 0; i < r->n_hdrs; i++) {
        fprintf(c, "%s:%s\n", h[i].name, h[i].value);
        fprintf(sh, "%s%s", i ? ";" : "", h[i].name);
    }
    free(h);
    fclose(sh);
    fprintf(c, "\n%s\n%s", signed_h ? signed_h : "", r->payload_sha256);
    fclose(c);
    if (!canon || !signed_h)
        goto out;
    char chash[65], date[9], scope[128];
    sigv4_sha256_hex(canon, strlen(canon), chash);
    snprintf(date, sizeof(date), "%.8s", r->amz_date);
    snprintf(scope, sizeof(scope), "%s/%s/%s/aws4_request", date, r->region, r->service);
    if (asprintf(&sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", r->amz_date, scope, chash) < 0) {
        sts = NULL;
        goto out;
    }
    /* the signing key: HMAC chain over date, region, service, "aws4_request" */
    char *k0 = NULL;
    if (asprintf(&k0, "AWS4%s", r->secret_key) < 0)
        goto out;
    unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
    hmac(k0, strlen(k0), date, k1);
    memset(k0, 0, strlen(k0));
    free(k0);
    hmac(k1, 32, r->region, k2);
    hmac(k2, 32, r->service, k3);
    hmac(k3, 32, "aws4_request", k4);
    hmac(k4, 32, sts, sig);
    char sighex[65];
    hex(sig, 32, sighex);
    if (asprintf(&auth, "AWS4-HMAC-SHA256 Credential=%s/%s,SignedHeaders=%s,Signature=%s",
                 r->access_key, scope, signed_h, sighex) < 0)
        auth = NULL;
    memset(k4, 0, sizeof(k4));
out:
    if (canon_out)
        *canon_out = canon;
    else
        free(canon);
    if (sts_out)
        *sts_out = sts;
    else
        free(sts);
    free(signed_h);
    return auth;
}
