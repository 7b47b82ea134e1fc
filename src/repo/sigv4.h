/* sigv4.h - AWS Signature Version 4 for S3 requests (issue 26, point 1),
 * our own implementation of the published algorithm: canonical request,
 * string to sign, the HMAC-SHA256 key chain. Pure functions: the golden
 * test (tests/unit/test_sigv4.c) checks them against the AWS
 * documentation's "GET object" example. */
#ifndef VMSH_REPO_SIGV4_H
#define VMSH_REPO_SIGV4_H

#include <stddef.h>

typedef struct sigv4_header {
    const char *name;  /* lower case */
    const char *value; /* trimmed */
} sigv4_header;

typedef struct sigv4_request {
    const char *method;       /* "GET" */
    const char *uri;          /* canonical URI, already encoded: "/bucket/key" */
    const char *query;        /* canonical query string (sorted, encoded) or "" */
    const sigv4_header *hdrs; /* every signed header, host and x-amz-* included */
    size_t n_hdrs;
    const char *payload_sha256; /* hex, also sent as x-amz-content-sha256 */
    const char *amz_date;       /* "20130524T000000Z" */
    const char *region, *service;
    const char *access_key, *secret_key;
} sigv4_request;

/* The Authorization header's value (malloc'ed) or NULL (out of memory).
 * With canon/sts non-NULL, the canonical request and the string to sign
 * too (for tests and debugging). */
char *sigv4_authorization(const sigv4_request *r, char **canon, char **sts);

/* Hex SHA-256 of buf into out[65]. */
void sigv4_sha256_hex(const void *buf, size_t len, char out[65]);

/* URI-encodes s as SigV4 wants (unreserved A-Z a-z 0-9 - . _ ~ kept; '/'
 * kept when keep_slash); malloc'ed. */
char *sigv4_uri_encode(const char *s, int keep_slash);

#endif
