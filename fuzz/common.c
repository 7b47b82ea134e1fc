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

static void make_repo_dir(const char *dir, const char *config)
{
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
    fuzz_write_file(cfg, config, strlen(config));
}

const char *fuzz_repo_dir(void)
{
    static char dir[4200];
    if (dir[0])
        return dir;
    snprintf(dir, sizeof(dir), "%s/repo", fuzz_scratch());
    make_repo_dir(dir, FUZZ_REPO_CONFIG);
    return dir;
}

const char *fuzz_repo_dir_v2(void)
{
    static char dir[4200];
    if (dir[0])
        return dir;
    snprintf(dir, sizeof(dir), "%s/repo2", fuzz_scratch());
    char cfg[sizeof(FUZZ_REPO_CONFIG)];
    memcpy(cfg, FUZZ_REPO_CONFIG, sizeof(cfg));
    char *v = strstr(cfg, "\"version\":1");
    v[10] = '2';
    make_repo_dir(dir, cfg);
    return dir;
}

struct vmsh_repo *fuzz_repo_encrypted(void)
{
    static vmsh_repo *r;
    if (r)
        return r;
    char dir[4200], key[4200];
    snprintf(dir, sizeof(dir), "%s/repo-enc", fuzz_scratch());
    snprintf(key, sizeof(key), "%s/repo-enc.key", fuzz_scratch());
    fuzz_write_file(key, "fuzz passphrase\n", 16);
    vmsh_error *err = NULL;
    vmsh_repo_init_opts o = {.key_file = key};
    if (vmsh_repo_init(dir, &o, &err) < 0 || vmsh_repo_open(&r, dir, key, &err) < 0) {
        fprintf(stderr, "cannot make the encrypted scratch repository: %s\n", err->message);
        abort();
    }
    return r;
}

void fuzz_repo_put_v(int version, const char *rel, uint16_t wrap, const uint8_t *data, size_t size)
{
    char path[4600];
    snprintf(path, sizeof(path), "%s/%s", version == 2 ? fuzz_repo_dir_v2() : fuzz_repo_dir(), rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0700); /* exists after the first run */
    *slash = '/';
    if (wrap) {
        size_t len = 0;
        uint8_t *obj = fuzz_object_wrap_v(version, wrap, data, size, &len);
        fuzz_write_file(path, obj, len);
        free(obj);
    } else {
        fuzz_write_file(path, data, size);
    }
}

void fuzz_repo_put(const char *rel, uint16_t wrap, const uint8_t *data, size_t size)
{
    fuzz_repo_put_v(1, rel, wrap, data, size);
}

struct vmsh_repo *fuzz_repo_open_v(int version)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    if (vmsh_repo_open(&r, version == 2 ? fuzz_repo_dir_v2() : fuzz_repo_dir(), NULL, &err) < 0) {
        fprintf(stderr, "cannot open the scratch repository: %s\n", err->message);
        abort();
    }
    return r;
}

struct vmsh_repo *fuzz_repo_open(void)
{
    return fuzz_repo_open_v(1);
}

uint8_t *fuzz_object_wrap_v(int version, uint16_t type, const uint8_t *payload, size_t plen,
                            size_t *len)
{
    static const char magic[8] = {'V', 'M', 'S', 'H', 'O', 'B', 'J', '1'};
    uint8_t *b = malloc(OBJ_HEADER_LEN + plen + 32);
    if (!b)
        abort();
    memcpy(b, magic, 8);
    le16_put(b + 8, (uint16_t)version);
    le16_put(b + 10, type);
    le32_put(b + 12, 0);
    le64_put(b + 16, plen);
    if (plen)
        memcpy(b + OBJ_HEADER_LEN, payload, plen);
    crypto_sha256(b, OBJ_HEADER_LEN + plen, b + OBJ_HEADER_LEN + plen);
    *len = OBJ_HEADER_LEN + plen + 32;
    return b;
}

uint8_t *fuzz_object_wrap(uint16_t type, const uint8_t *payload, size_t plen, size_t *len)
{
    return fuzz_object_wrap_v(1, type, payload, plen, len);
}
