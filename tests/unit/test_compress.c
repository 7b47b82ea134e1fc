/* test_compress.c - issue 27 point 5: the random-data probe that lets a
 * backup skip zstd (src/repo/compress.c) and the compression levels a
 * repository accepts and records (zstd's negative levels; -1 the default
 * of new repositories, existing ones keep theirs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "repo/internal.h"
#include "test_repo_helpers.h"

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

/* ZSTD_CCtx_getParameter: zstd's experimental API (libzstd exports it) */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#define LEN 65536

/* bytes drawn uniformly from an alphabet of k symbols */
static void fill_alphabet(uint8_t *p, size_t n, unsigned k, uint64_t *s)
{
    fill_random(p, n, s);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(((unsigned)p[i] * k) >> 8);
}

static bool zstd_saves_1_32(const uint8_t *p, size_t n)
{
    size_t cap = ZSTD_compressBound(n);
    uint8_t *out = malloc(cap);
    assert_non_null(out);
    size_t c = ZSTD_compress(out, cap, p, n, 1);
    free(out);
    assert_false(ZSTD_isError(c));
    return c < n - n / 32; /* backup.c's rule for storing compressed */
}

static void probe_finds_random_chunks(void **state)
{
    (void)state;
    uint8_t *p = malloc(LEN);
    assert_non_null(p);
    uint64_t s = 42;
    for (int i = 0; i < 50; i++) {
        fill_random(p, LEN, &s);
        assert_true(chunk_looks_random(p, LEN));
    }
    free(p);
}

static void probe_leaves_compressible_chunks_to_zstd(void **state)
{
    (void)state;
    uint8_t *p = malloc(LEN);
    assert_non_null(p);
    uint64_t s = 7;
    fill_text(p, LEN, 1);
    assert_false(chunk_looks_random(p, LEN));
    memset(p, 0, LEN);
    assert_false(chunk_looks_random(p, LEN));
    /* random with every fourth byte zero (a table of 24-bit values) */
    fill_random(p, LEN, &s);
    for (size_t i = 0; i < LEN; i += 4)
        p[i] = 0;
    assert_false(chunk_looks_random(p, LEN));
    assert_true(zstd_saves_1_32(p, LEN));
    /* half random, half text: zstd saves a lot on the text half */
    fill_random(p, LEN / 2, &s);
    fill_text(p + LEN / 2, LEN / 2, 3);
    assert_false(chunk_looks_random(p, LEN));
    /* text in the middle of random data */
    fill_random(p, LEN, &s);
    fill_text(p + LEN / 4, LEN / 2, 5);
    assert_false(chunk_looks_random(p, LEN));
    /* a short tail is always left to zstd */
    fill_random(p, 1000, &s);
    assert_false(chunk_looks_random(p, 1000));
    free(p);
}

/* The threshold: whenever the probe says "random", zstd level 1 would not
 * have saved the 1/32 that stores a chunk compressed, so the probe changes
 * what is stored for no chunk of these kinds (alphabets of 128 to 256
 * symbols: 7 to 8 bits of entropy per byte, from clearly compressible to
 * not at all). It fails with a threshold a few times looser. */
static void probe_agrees_with_zstd(void **state)
{
    (void)state;
    uint8_t *p = malloc(LEN);
    assert_non_null(p);
    uint64_t s = 99;
    unsigned said_random = 0, said_compressible = 0;
    for (unsigned k = 128; k <= 256; k += 4) {
        fill_alphabet(p, LEN, k, &s);
        bool r = chunk_looks_random(p, LEN);
        if (r) {
            said_random++;
            assert_false(zstd_saves_1_32(p, LEN));
        } else {
            said_compressible++;
        }
    }
    /* both answers occur over this range (the test means something) */
    assert_true(said_random > 0);
    assert_true(said_compressible > 0);
    free(p);
}

static void repo_init_levels(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    assert_non_null(dir);
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;

    /* the default of a new repository: -1 */
    char *a = path2(dir, "a");
    assert_int_equal(vmsh_repo_init(a, NULL, &err), 0);
    assert_int_equal(vmsh_repo_open(&r, a, NULL, &err), 0);
    assert_int_equal(vmsh_repo_compression_level(r), VMSH_ZSTD_LEVEL_DEFAULT);
    assert_int_equal(vmsh_repo_compression_level(r), -1);
    /* per handle: negative levels accepted, 0 and out of range refused */
    assert_int_equal(vmsh_repo_set_compression_level(r, -7, &err), 0);
    assert_int_equal(vmsh_repo_compression_level(r), -7);
    assert_int_equal(vmsh_repo_set_compression_level(r, 0, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_repo_set_compression_level(r, -8, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_repo_set_compression_level(r, 20, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    vmsh_repo_free(r);
    r = NULL;

    /* a repository made at level 1 (as every repository before issue 27)
     * keeps it */
    char *b = path2(dir, "b");
    vmsh_repo_init_opts o = {.compression_level = 1};
    assert_int_equal(vmsh_repo_init(b, &o, &err), 0);
    assert_int_equal(vmsh_repo_open(&r, b, NULL, &err), 0);
    assert_int_equal(vmsh_repo_compression_level(r), 1);
    vmsh_repo_free(r);
    r = NULL;

    char *c = path2(dir, "c");
    o.compression_level = -3;
    assert_int_equal(vmsh_repo_init(c, &o, &err), 0);
    assert_int_equal(vmsh_repo_open(&r, c, NULL, &err), 0);
    assert_int_equal(vmsh_repo_compression_level(r), -3);
    vmsh_repo_free(r);

    char *d = path2(dir, "d");
    o.compression_level = -8;
    assert_int_equal(vmsh_repo_init(d, &o, &err), -EINVAL);
    vmsh_error_free(err);
    free(a);
    free(b);
    free(c);
    free(d);
    rm_rf(dir);
    free(dir);
}

/* One backup of the image `img` as "vda" into `r`; its stats. */
static vmsh_add_stats backup_image(vmsh_repo *r, const char *img)
{
    vmsh_error *err = NULL;
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_file(&src, img, &err), 0);
    vmsh_add_stats st = {0};
    assert_int_equal(vmsh_backup_add_file(b, "vda", src, NULL, &st, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
    vmsh_source_free(src);
    vmsh_backup_free(b);
    return st;
}

/* A backup at a negative level restores byte for byte (text, random,
 * zeros, a hole and an unaligned tail) and stores the text compressed. */
static void backup_at_negative_level_roundtrips(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    assert_non_null(dir);
    char *repo = path2(dir, "repo");
    char *img = path2(dir, "img");
    char *out = path2(dir, "restored");
    assert_int_equal(make_image(img, (6u << 20) + 1000, 11), 0);
    vmsh_error *err = NULL;
    vmsh_repo_init_opts o = {.compression_level = -5};
    assert_int_equal(vmsh_repo_init(repo, &o, &err), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, &err), 0);
    vmsh_add_stats st = backup_image(r, img);
    /* 4 MiB of data: 1 MiB random stored raw, 3 MiB of text compressed */
    assert_true(st.bytes_stored > (1u << 20));
    assert_true(st.bytes_stored < (2u << 20));
    assert_int_equal(vmsh_repo_restore_file(r, "latest", "vda", out, false, NULL, NULL, NULL, &err),
                     0);
    assert_int_equal(compare_files(img, out), 0);
    vmsh_repo_free(r);
    free(repo);
    free(img);
    free(out);
    rm_rf(dir);
    free(dir);
}

/* A store that asks for smaller packs (store.h, pack_target; RADOS: 16 MiB)
 * gets them from a backup: 4 MiB of random data into a store asking for
 * 1 MiB makes four packs or more, none much over 1 MiB, and restores byte
 * for byte (mem://, the object-store path RADOS and S3 share). */
/* The parameters a backup's workers compress with (compress.c): zstd's own
 * at positive levels; at its fast levels a 2^11 hash table and 6-byte
 * minimum matches, the measured trade for 64 KiB chunks; the frames decode
 * with plain ZSTD_decompress. */
static void zstd_setup_tunes_fast_levels(void **state)
{
    (void)state;
    ZSTD_CCtx *c = ZSTD_createCCtx();
    assert_non_null(c);
    int v = 0;
    assert_int_equal(zstd_setup(c, -1), 0);
    assert_false(ZSTD_isError(ZSTD_CCtx_getParameter(c, ZSTD_c_hashLog, &v)));
    assert_int_equal(v, 11);
    assert_false(ZSTD_isError(ZSTD_CCtx_getParameter(c, ZSTD_c_minMatch, &v)));
    assert_int_equal(v, 6);
    assert_false(ZSTD_isError(ZSTD_CCtx_getParameter(c, ZSTD_c_compressionLevel, &v)));
    assert_int_equal(v, -1);
    /* a positive level after a negative one: zstd's own again (0: auto) */
    assert_int_equal(zstd_setup(c, 3), 0);
    assert_false(ZSTD_isError(ZSTD_CCtx_getParameter(c, ZSTD_c_hashLog, &v)));
    assert_int_equal(v, 0);
    assert_false(ZSTD_isError(ZSTD_CCtx_getParameter(c, ZSTD_c_minMatch, &v)));
    assert_int_equal(v, 0);
    uint8_t *p = malloc(LEN), *z = malloc(ZSTD_compressBound(LEN)), *back = malloc(LEN);
    assert_true(p && z && back);
    fill_text(p, LEN, 3);
    for (int level = -7; level <= 3; level += 10) {
        assert_int_equal(zstd_setup(c, level), 0);
        size_t n = ZSTD_compress2(c, z, ZSTD_compressBound(LEN), p, LEN);
        assert_false(ZSTD_isError(n));
        assert_true(n < LEN / 2);
        assert_int_equal(ZSTD_decompress(back, LEN, z, n), LEN);
        assert_memory_equal(back, p, LEN);
    }
    free(p);
    free(z);
    free(back);
    ZSTD_freeCCtx(c);
}

static void store_pack_target_sizes_packs(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    assert_non_null(dir);
    char *img = path2(dir, "img");
    char *out = path2(dir, "restored");
    assert_int_equal(make_image(img, (6u << 20) + 1000, 13), 0);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_mem_create("packsize", &err), 0);
    vmsh_repo_init_opts o = {.compression_level = 1};
    assert_int_equal(vmsh_repo_init("mem://packsize", &o, &err), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, "mem://packsize", NULL, &err), 0);
    r->store->pack_target = 1u << 20;
    /* the image with its text replaced by random data: 4 MiB stored raw */
    int fd = open(img, O_WRONLY);
    assert_true(fd >= 0);
    uint8_t *rnd = malloc(1u << 20);
    assert_non_null(rnd);
    uint64_t seed = 5;
    for (uint64_t off = 0; off < (6u << 20); off += 1u << 20) {
        if (off == (1u << 20) || off == (2u << 20))
            continue; /* the hole and the written zeros stay */
        fill_random(rnd, 1u << 20, &seed);
        assert_int_equal(pwrite(fd, rnd, 1u << 20, (off_t)off), 1 << 20);
    }
    free(rnd);
    close(fd);
    vmsh_add_stats st = backup_image(r, img);
    assert_true(st.bytes_stored >= (4u << 20));
    size_t packs = 0;
    for (size_t i = 0; i < r->n_packs; i++) {
        if (r->packs[i].size == 0)
            continue;
        packs++;
        /* the target, one chunk that crossed it, the table and footer */
        assert_true(r->packs[i].size <= (1u << 20) + (64u << 10) + 4096);
    }
    assert_true(packs >= 4);
    assert_int_equal(vmsh_repo_restore_file(r, "latest", "vda", out, false, NULL, NULL, NULL, &err),
                     0);
    assert_int_equal(compare_files(img, out), 0);
    vmsh_repo_free(r);
    vmsh_repo_mem_drop("packsize");
    free(img);
    free(out);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(probe_finds_random_chunks),
        cmocka_unit_test(probe_leaves_compressible_chunks_to_zstd),
        cmocka_unit_test(probe_agrees_with_zstd),
        cmocka_unit_test(repo_init_levels),
        cmocka_unit_test(backup_at_negative_level_roundtrips),
        cmocka_unit_test(zstd_setup_tunes_fast_levels),
        cmocka_unit_test(store_pack_target_sizes_packs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
