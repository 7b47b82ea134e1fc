/* Unit tests of the random-access reader (reader.h, issue 21 point 3): reads
 * at any offset equal what a restore (`vmshadow extract`) writes, from
 * several threads at once, extents report holes and zero chunks, an
 * encrypted repository, a damaged chunk fails with -EBADMSG (never wrong
 * bytes), and the read lock keeps gc out while a reader is open. */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cmocka.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/reader.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include "test_repo_helpers.h"

#define CS 65536u

typedef struct fixture {
    char *dir, *repo, *img, *restored, *key;
    char *id;
    uint8_t *want; /* the restored file's bytes */
    size_t size;
} fixture;

/* 6 MiB + 1000 bytes (an unaligned tail): text, a hole, written zeros,
 * random data, text (make_image). */
#define IMG_SIZE ((6u << 20) + 1000)

static uint8_t *slurp(const char *path, size_t *len)
{
    uint8_t *b = read_whole_file(path, len);
    assert_non_null(b);
    return b;
}

static fixture *make_fixture(bool encrypted)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    assert_non_null(f->dir);
    f->repo = path2(f->dir, "repo");
    f->img = path2(f->dir, "disk.img");
    f->restored = path2(f->dir, "restored.img");
    assert_int_equal(make_image(f->img, IMG_SIZE, 11), 0);
    vmsh_repo_init_opts o = {0};
    if (encrypted) {
        f->key = path2(f->dir, "key");
        assert_int_equal(write_text_file(f->key, "correct horse battery staple\n"), 0);
        o.key_file = f->key;
    }
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_init(f->repo, &o, &err), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, f->key, &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_file(&src, f->img, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "vm1/disk/vda", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    f->id = strdup(vmsh_backup_id(b));
    vmsh_source_free(src);
    vmsh_backup_free(b);
    /* the reference: what `vmshadow extract` writes */
    assert_int_equal(vmsh_repo_restore_file(r, f->id, "vm1/disk/vda", f->restored, false, NULL,
                                            NULL, NULL, &err),
                     0);
    vmsh_repo_free(r);
    f->want = slurp(f->restored, &f->size);
    assert_int_equal(f->size, IMG_SIZE);
    return f;
}

static int setup(void **state)
{
    *state = make_fixture(false);
    return 0;
}

static int setup_encrypted(void **state)
{
    *state = make_fixture(true);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rm_rf(f->dir);
    free(f->dir);
    free(f->repo);
    free(f->img);
    free(f->restored);
    free(f->key);
    free(f->id);
    free(f->want);
    free(f);
    return 0;
}

static vmsh_reader *open_reader(fixture *f, vmsh_repo **r, size_t cache)
{
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(r, f->repo, f->key, &err), 0);
    vmsh_reader *rd = NULL;
    vmsh_reader_opts o = {.cache_chunks = cache};
    int rc = vmsh_reader_open(&rd, *r, "latest", "vm1/disk/vda", &o, &err);
    if (rc < 0)
        fprintf(stderr, "%s\n", err->message);
    assert_int_equal(rc, 0);
    return rd;
}

/* Reads [off, off + len) and checks it against the restored file (short
 * at the end, nothing past it). */
static void check_read(fixture *f, vmsh_reader *rd, uint64_t off, size_t len)
{
    uint8_t *buf = malloc(len + 1);
    memset(buf, 0xa5, len + 1);
    vmsh_error *err = NULL;
    ssize_t n = vmsh_reader_pread(rd, buf, len, off, &err);
    size_t expect = off >= f->size ? 0 : (f->size - off < len ? f->size - off : len);
    assert_int_equal(n, (ssize_t)expect);
    if (expect)
        assert_memory_equal(buf, f->want + off, expect);
    assert_int_equal(buf[expect], 0xa5); /* nothing written past what was read */
    free(buf);
}

static void reads_equal_restore(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_reader *rd = open_reader(f, &r, 4);
    assert_int_equal(vmsh_reader_size(rd), IMG_SIZE);
    assert_string_equal(vmsh_reader_backup_id(rd), f->id);
    /* aligned, unaligned, across one and many chunk boundaries, inside the
     * hole, across data/hole and hole/zeros borders, the unaligned tail,
     * past the end */
    static const struct {
        uint64_t off;
        size_t len;
    } cases[] = {
        {0, CS},
        {0, 1},
        {1, 4095},
        {CS - 1, 2},
        {CS - 100, 3 * CS + 17},
        {12345, 700000},
        {(1u << 20) - 5000, 10000},
        {(1u << 20) + 3, 4096},
        {(2u << 20) - 1, CS + 2},
        {(3u << 20) - 777, 2 * CS},
        {IMG_SIZE - 1000, 1000},
        {IMG_SIZE - 1500, 4096},
        {IMG_SIZE - 1, 1},
        {IMG_SIZE, 4096},
        {IMG_SIZE + 1, 10},
        {UINT64_MAX - 10, 5},
        {0, IMG_SIZE + 5000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_read(f, rd, cases[i].off, cases[i].len);
    /* pseudo-random reads: a 4-chunk cache is evicted all the time */
    uint64_t s = 99;
    for (int i = 0; i < 300; i++) {
        uint8_t rb[8];
        fill_random(rb, 8, &s);
        uint64_t off = (rb[0] | rb[1] << 8 | (uint64_t)rb[2] << 16) % (IMG_SIZE + 100);
        size_t len = 1 + ((rb[3] | rb[4] << 8 | (size_t)(rb[5] & 3) << 16) % 200000);
        check_read(f, rd, off, len);
    }
    /* sequential small reads are served from the cache: one decode per chunk */
    vmsh_reader_stats before, after;
    vmsh_reader_get_stats(rd, &before);
    for (uint64_t off = 3u << 20; off < (4u << 20); off += 4096)
        check_read(f, rd, off, 4096);
    vmsh_reader_get_stats(rd, &after);
    assert_int_equal(after.chunks_read - before.chunks_read, (1u << 20) / CS);
    assert_true(after.cache_hits - before.cache_hits >= (1u << 20) / 4096 - (1u << 20) / CS);
    vmsh_reader_free(rd);
    vmsh_repo_free(r);
}

typedef struct thread_arg {
    fixture *f;
    vmsh_reader *rd;
    uint64_t seed;
    int failures;
} thread_arg;

static void *reader_thread(void *p)
{
    thread_arg *a = p;
    uint8_t *buf = malloc(300000);
    for (int i = 0; i < 400; i++) {
        uint8_t rb[8];
        fill_random(rb, 8, &a->seed);
        uint64_t off = (rb[0] | rb[1] << 8 | (uint64_t)rb[2] << 16) % IMG_SIZE;
        size_t len = 1 + ((rb[3] | rb[4] << 8 | (size_t)(rb[5] & 3) << 16) % 300000);
        vmsh_error *err = NULL;
        ssize_t n = vmsh_reader_pread(a->rd, buf, len, off, &err);
        size_t expect = a->f->size - off < len ? a->f->size - off : len;
        if (n != (ssize_t)expect || memcmp(buf, a->f->want + off, expect) != 0)
            a->failures++;
        vmsh_error_free(err);
    }
    free(buf);
    return NULL;
}

static void concurrent_readers(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    /* a cache smaller than the threads' working set: slots are loaded,
     * waited for and evicted concurrently */
    vmsh_reader *rd = open_reader(f, &r, 8);
    enum { N = 8 };
    pthread_t t[N];
    thread_arg a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (thread_arg){.f = f, .rd = rd, .seed = 1000 + (uint64_t)i};
        assert_int_equal(pthread_create(&t[i], NULL, reader_thread, &a[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
    vmsh_reader_free(rd);
    vmsh_repo_free(r);
}

typedef struct ext {
    uint64_t off, len;
    bool data;
} ext;

typedef struct ext_list {
    ext e[64];
    size_t n;
} ext_list;

static int collect(void *opaque, uint64_t off, uint64_t len, bool data)
{
    ext_list *l = opaque;
    assert_true(l->n < 64);
    l->e[l->n++] = (ext){off, len, data};
    return 0;
}

static void extents_report_holes_and_zeros(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_reader *rd = open_reader(f, &r, 0);
    const uint64_t M = 1u << 20;
    ext_list l = {0};
    assert_int_equal(vmsh_reader_extents(rd, 0, UINT64_MAX, collect, &l), 0);
    /* [0,1M) text, [1M,3M) the hole and the written zeros (neither is
     * stored), [3M, end) random and text */
    assert_int_equal(l.n, 3);
    assert_true(l.e[0].data && l.e[0].off == 0 && l.e[0].len == M);
    assert_true(!l.e[1].data && l.e[1].off == M && l.e[1].len == 2 * M);
    assert_true(l.e[2].data && l.e[2].off == 3 * M && l.e[2].len == IMG_SIZE - 3 * M);
    /* every zero range reads as zeros, every byte is covered once */
    uint64_t pos = 0;
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.e[i].off, pos);
        pos += l.e[i].len;
        if (!l.e[i].data)
            for (uint64_t k = l.e[i].off; k < l.e[i].off + l.e[i].len; k++)
                assert_int_equal(f->want[k], 0);
    }
    assert_int_equal(pos, IMG_SIZE);
    /* a window clipped at both ends, unaligned */
    l.n = 0;
    assert_int_equal(vmsh_reader_extents(rd, M - 10, M + 20, collect, &l), 0);
    assert_int_equal(l.n, 2);
    assert_true(l.e[0].data && l.e[0].off == M - 10 && l.e[0].len == 10);
    assert_true(!l.e[1].data && l.e[1].off == M && l.e[1].len == M + 10);
    /* past the end: nothing; the tail: clipped to the size */
    l.n = 0;
    assert_int_equal(vmsh_reader_extents(rd, IMG_SIZE, 100, collect, &l), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(vmsh_reader_extents(rd, IMG_SIZE - 5, 100, collect, &l), 0);
    assert_int_equal(l.n, 1);
    assert_true(l.e[0].data && l.e[0].len == 5);
    vmsh_reader_free(rd);
    vmsh_repo_free(r);
}

static void encrypted_repository(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_reader *rd = open_reader(f, &r, 16);
    check_read(f, rd, 0, IMG_SIZE);
    check_read(f, rd, (3u << 20) - 3, 100000);
    vmsh_reader_free(rd);
    vmsh_repo_free(r);
    /* without the key the repository does not open at all */
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), -EACCES);
    vmsh_error_free(err);
}

static char *found_pack;
static int find_pack(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    size_t n = strlen(p);
    if (flag == FTW_F && n > 5 && strcmp(p + n - 5, ".pack") == 0 && !found_pack)
        found_pack = strdup(p);
    return 0;
}

static void damaged_chunk_is_an_error(void **state)
{
    fixture *f = *state;
    char *packs = path2(f->repo, "packs");
    found_pack = NULL;
    nftw(packs, find_pack, 16, FTW_PHYS);
    free(packs);
    assert_non_null(found_pack);
    /* one byte of the first blob of the pack (the header is 16 bytes) */
    int fd = open(found_pack, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, 16 + 40), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, 16 + 40), 1);
    close(fd);
    free(found_pack);
    vmsh_repo *r = NULL;
    vmsh_reader *rd = open_reader(f, &r, 4);
    uint8_t *buf = malloc(CS);
    int bad = 0;
    for (uint64_t off = 0; off < IMG_SIZE; off += CS) {
        vmsh_error *err = NULL;
        memset(buf, 0xa5, CS);
        ssize_t n = vmsh_reader_pread(rd, buf, CS, off, &err);
        if (n < 0) {
            assert_int_equal(n, -EBADMSG);
            assert_non_null(strstr(err->message, "chunk"));
            vmsh_error_free(err);
            err = NULL;
            bad++;
            /* again: errors are not cached as good data */
            assert_int_equal(vmsh_reader_pread(rd, buf, 100, off + 5, &err), -EBADMSG);
            vmsh_error_free(err);
        } else {
            size_t expect = IMG_SIZE - off < CS ? IMG_SIZE - off : CS;
            assert_int_equal(n, (ssize_t)expect);
            assert_memory_equal(buf, f->want + off, expect);
        }
    }
    assert_int_equal(bad, 1);
    free(buf);
    vmsh_reader_free(rd);
    vmsh_repo_free(r);
}

static void bad_names_and_the_lock(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_reader *rd = NULL;
    assert_int_equal(vmsh_reader_open(&rd, r, "latest", "vm1/disk/vdz", NULL, &err), -ENOENT);
    assert_non_null(strstr(err->message, "vdz"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_reader_open(&rd, r, "ffffffffffffffff", "vm1/disk/vda", NULL, &err),
                     -ENOENT);
    vmsh_error_free(err);
    err = NULL;
    /* an open reader holds the read lock: gc (another handle, as another
     * process would) is refused, and runs again once the reader is closed */
    vmsh_repo_free(r);
    rd = open_reader(f, &r, 0);
    vmsh_repo *r2 = NULL;
    assert_int_equal(vmsh_repo_open(&r2, f->repo, NULL, &err), 0);
    vmsh_gc_stats st;
    assert_int_equal(vmsh_repo_gc(r2, &st, &err), -EBUSY);
    fprintf(stderr, "gc: %s\n", err->message);
    assert_non_null(strstr(err->message, "serve"));
    vmsh_error_free(err);
    err = NULL;
    vmsh_reader_free(rd);
    assert_int_equal(vmsh_repo_gc(r2, &st, &err), 0);
    vmsh_repo_free(r2);
    vmsh_repo_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(reads_equal_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(concurrent_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(extents_report_holes_and_zeros, setup, teardown),
        cmocka_unit_test_setup_teardown(encrypted_repository, setup_encrypted, teardown),
        cmocka_unit_test_setup_teardown(damaged_chunk_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_names_and_the_lock, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
