/* test_repo_helpers.h - shared by the repository's unit tests: temporary
 * directories, test images with holes, zeros, text and random data, and
 * file comparison. Header-only so every test program stays one file. */
#ifndef TEST_REPO_HELPERS_H
#define TEST_REPO_HELPERS_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static inline void rm_rf(const char *path)
{
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static inline char *make_tmpdir(void)
{
    char *t = strdup("/tmp/vmsh-test-repo.XXXXXX");
    if (!mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

static inline char *path2(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0)
        abort();
    return p;
}

/* xorshift: reproducible pseudo-random bytes */
static inline void fill_random(uint8_t *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        p[i] = (uint8_t)(*s >> 24);
    }
}

static inline void fill_text(uint8_t *p, size_t n, uint64_t seed)
{
    static const char *words[] = {"disk ", "image ",    "backup ", "chunk ",      "the ",
                                  "of ",   "vmshadow ", "qemu\n",  "repository ", "snapshot "};
    size_t i = 0;
    while (i < n) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        const char *w = words[(seed >> 33) % 10];
        for (; *w && i < n; w++)
            p[i++] = (uint8_t)*w;
    }
}

/* A sparse image of `size` bytes: [0,1M) text, [1M,2M) hole, [2M,3M) written
 * zeros, [3M,4M) random, then text to the end (with an unaligned tail when
 * size is not a multiple of 64 KiB). */
static inline int make_image(const char *path, uint64_t size, uint64_t seed)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        return -1;
    const uint64_t M = 1 << 20;
    uint8_t *buf = malloc(M);
    uint64_t s = seed | 1;
    for (uint64_t off = 0; off < size; off += M) {
        uint64_t n = size - off < M ? size - off : M;
        uint64_t region = off / M;
        if (region == 1)
            continue;
        if (region == 2)
            memset(buf, 0, n);
        else if (region == 3)
            fill_random(buf, n, &s);
        else
            fill_text(buf, n, seed + region);
        if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
            return -1;
    }
    free(buf);
    return close(fd);
}

/* 0 when equal */
static inline int compare_files(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    if (!fa || !fb)
        return -1;
    int rc = 0;
    for (;;) {
        int x = fgetc(fa), y = fgetc(fb);
        if (x != y) {
            rc = 1;
            break;
        }
        if (x == EOF)
            break;
    }
    fclose(fa);
    fclose(fb);
    return rc;
}

static inline uint64_t allocated_bytes(const char *p)
{
    struct stat st;
    if (stat(p, &st) < 0)
        return UINT64_MAX;
    return (uint64_t)st.st_blocks * 512;
}

/* The whole file in a malloc'ed buffer, NUL-terminated (not counted in
 * *len); NULL when it cannot be read. */
static inline uint8_t *read_whole_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    long n = -1;
    uint8_t *b = NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (b = malloc((size_t)n + 1)) && fread(b, 1, (size_t)n, f) == (size_t)n) {
        b[n] = 0;
        *len = (size_t)n;
    } else {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

static inline int write_text_file(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* An image as text, the form of the qcow2 golden files (tests/golden/qcow2/):
 * its length, then each run of non-zero bytes as "offset: hex", a run
 * ending at 8 zero bytes or more. The caller frees it. */
static inline char *nonzero_runs(const uint8_t *b, size_t n)
{
    size_t cap = 64 + n * 3, len = 0;
    char *out = malloc(cap);
    if (!out)
        abort();
    len += (size_t)snprintf(out, cap, "length %zu\n", n);
    for (size_t i = 0; i < n;) {
        if (!b[i]) {
            i++;
            continue;
        }
        len += (size_t)snprintf(out + len, cap - len, "%zu:", i);
        size_t end = i;
        for (size_t z = 0; end < n && z < 8; end++)
            z = b[end] ? 0 : z + 1;
        while (end > i && !b[end - 1])
            end--;
        for (; i < end; i++)
            len += (size_t)snprintf(out + len, cap - len, " %02x", b[i]);
        len += (size_t)snprintf(out + len, cap - len, "\n");
    }
    return out;
}

#endif
