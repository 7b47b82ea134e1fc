/* common.c - the helpers of fuzz.h. */
#include "fuzz.h"

#include "repo/internal.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char scratch[4096];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void rm_scratch(void)
{
    if (scratch[0])
        nftw(scratch, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_scratch(void)
{
    if (scratch[0])
        return scratch;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof(scratch), "%s/vmsh-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(scratch)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(rm_scratch);
    return scratch;
}

void fuzz_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            perror(path);
            abort();
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

const char *fuzz_repo_dir(void)
{
    static char dir[4200];
    if (dir[0])
        return dir;
    snprintf(dir, sizeof(dir), "%s/repo", fuzz_scratch());
    static const char *const subs[] = {"", "/packs", "/index", "/backups"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        char p[4300];
        snprintf(p, sizeof(p), "%s%s", dir, subs[i]);
        if (mkdir(p, 0700) < 0) {
            perror(p);
            abort();
        }
    }
    char cfg[4300];
    snprintf(cfg, sizeof(cfg), "%s/config", dir);
    fuzz_write_file(cfg, FUZZ_REPO_CONFIG, strlen(FUZZ_REPO_CONFIG));
    return dir;
}

void fuzz_repo_put(const char *rel, uint16_t wrap, const uint8_t *data, size_t size)
{
    char path[4600];
    snprintf(path, sizeof(path), "%s/%s", fuzz_repo_dir(), rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0700); /* exists after the first run */
    *slash = '/';
    if (wrap) {
        size_t len = 0;
        uint8_t *obj = fuzz_object_wrap(wrap, data, size, &len);
        fuzz_write_file(path, obj, len);
        free(obj);
    } else {
        fuzz_write_file(path, data, size);
    }
}

struct vmsh_repo *fuzz_repo_open(void)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    if (vmsh_repo_open(&r, fuzz_repo_dir(), NULL, &err) < 0) {
        fprintf(stderr, "cannot open the scratch repository: %s\n", err->message);
        abort();
    }
    return r;
}

uint8_t *fuzz_object_wrap(uint16_t type, const uint8_t *payload, size_t plen, size_t *len)
{
    static const char magic[8] = {'V', 'M', 'S', 'H', 'O', 'B', 'J', '1'};
    uint8_t *b = malloc(OBJ_HEADER_LEN + plen + 32);
    if (!b)
        abort();
    memcpy(b, magic, 8);
    le16_put(b + 8, 1);
    le16_put(b + 10, type);
    le32_put(b + 12, 0);
    le64_put(b + 16, plen);
    if (plen)
        memcpy(b + OBJ_HEADER_LEN, payload, plen);
    crypto_sha256(b, OBJ_HEADER_LEN + plen, b + OBJ_HEADER_LEN + plen);
    *len = OBJ_HEADER_LEN + plen + 32;
    return b;
}
