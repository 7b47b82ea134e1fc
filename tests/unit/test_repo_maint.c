/* Unit tests of retention (prune), garbage collection (gc, including the
 * rewrite of mostly-dead packs) and encryption keys in the repository. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <json-c/json.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include <vmshadow/util/timeutil.h>

#include "repo/internal.h"
#include "test_repo_helpers.h"

static char *new_backup(vmsh_repo *r, const char *name, const void *buf, size_t len)
{
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_memory(&src, buf, len, false, name, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, name, src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
    char *id = strdup(vmsh_backup_id(b));
    vmsh_source_free(src);
    vmsh_backup_free(b);
    return id;
}

/* Rewrites a manifest's time (through the private object API) so that
 * retention can be tested over months in an instant. */
static void set_time(vmsh_repo *r, const char *id, int64_t t)
{
    char *path = manifest_path(vmsh_repo_path(r), id);
    uint8_t *p = NULL;
    size_t len = 0;
    assert_int_equal(object_read(r, path, OBJ_MANIFEST, &p, &len, NULL), 0);
    json_object *m = json_tokener_parse((const char *)p);
    assert_non_null(m);
    char ts[21];
    vmsh_time_rfc3339((time_t)t, ts);
    json_object_object_add(m, "time", json_object_new_string(ts));
    json_object_object_add(m, "time_us", json_object_new_int64(t * 1000000));
    const char *text = json_object_to_json_string(m);
    unlink(path);
    assert_int_equal(object_write(r, path, OBJ_MANIFEST, text, strlen(text), NULL), 0);
    json_object_put(m);
    free(p);
    free(path);
}

static void prune_daily_monthly(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    /* 2026-01-01T00:00:00Z is a Thursday */
    const int64_t t0 = 1767225600;
    const int days[10] = {0, 0, 1, 2, 8, 9, 35, 36, 70, 71};
    char *ids[10];
    for (int i = 0; i < 10; i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "backup %d", i);
        ids[i] = new_backup(r, "f", buf, strlen(buf));
        set_time(r, ids[i], t0 + days[i] * 86400 + 36000 + i * 60);
    }
    vmsh_retention pol = {.keep_daily = 3, .keep_monthly = 3};
    vmsh_prune_result *res = NULL;
    assert_int_equal(vmsh_repo_prune(r, &pol, true, &res, NULL), 0);
    /* days 71, 70, 36 (daily); March → 71, February → 36, January → day 9 */
    assert_int_equal(res->n_keep, 4);
    assert_string_equal(res->keep[0], ids[5]);
    assert_string_equal(res->keep[1], ids[7]);
    assert_string_equal(res->keep[2], ids[8]);
    assert_string_equal(res->keep[3], ids[9]);
    assert_int_equal(res->n_forget, 6);
    vmsh_prune_result_free(res);
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_list(r, &a, &n, NULL), 0);
    assert_int_equal(n, 10); /* dry run */
    vmsh_backup_info_array_free(a, n);

    vmsh_retention weekly = {.keep_weekly = 2};
    assert_int_equal(vmsh_repo_prune(r, &weekly, true, &res, NULL), 0);
    assert_int_equal(res->n_keep, 2);
    assert_string_equal(res->keep[0], ids[7]);
    assert_string_equal(res->keep[1], ids[9]);
    vmsh_prune_result_free(res);

    vmsh_retention none = {0};
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_prune(r, &none, false, &res, &err), -EINVAL);
    vmsh_error_free(err);

    assert_int_equal(vmsh_repo_prune(r, &pol, false, &res, NULL), 0);
    vmsh_prune_result_free(res);
    assert_int_equal(vmsh_repo_list(r, &a, &n, NULL), 0);
    assert_int_equal(n, 4);
    assert_string_equal(a[0].id, ids[5]);
    vmsh_backup_info_array_free(a, n);
    for (int i = 0; i < 10; i++)
        free(ids[i]);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
}

static void gc_repacks_partly_live_packs(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    size_t big = 3u << 20, small = 1u << 20;
    uint8_t *a = malloc(big), *b = malloc(small);
    uint64_t s = 42;
    fill_random(a, big, &s);
    fill_random(b, small, &s);
    /* backup 1 stores a and b in one pack; backup 2 needs only b */
    vmsh_backup *bk = NULL;
    assert_int_equal(vmsh_backup_begin(&bk, r, NULL), 0);
    assert_int_equal(vmsh_backup_add_buffer(bk, "a", a, big, NULL), 0);
    assert_int_equal(vmsh_backup_add_buffer(bk, "b", b, small, NULL), 0);
    assert_int_equal(vmsh_backup_commit(bk, "", NULL), 0);
    char *id1 = strdup(vmsh_backup_id(bk));
    vmsh_backup_free(bk);
    char *id2 = new_backup(r, "b", b, small);
    vmsh_gc_stats st = {0};
    assert_int_equal(vmsh_repo_gc(r, &st, NULL), 0);
    assert_int_equal(st.packs_deleted + st.packs_rewritten, 0); /* all live */
    vmsh_retention pol = {.keep_last = 1};
    vmsh_prune_result *res = NULL;
    assert_int_equal(vmsh_repo_prune(r, &pol, false, &res, NULL), 0);
    assert_string_equal(res->forget[0], id1);
    vmsh_prune_result_free(res);
    /* issue 26: the pack is a quarter live: b's chunks are copied into a
     * new pack and the old one marked (docs/formats/gc.md, "Repacking");
     * with the grace of 0 of the tests the same gc deletes it */
    assert_int_equal(vmsh_repo_gc(r, &st, NULL), 0);
    assert_int_equal(st.packs_rewritten, 1);
    assert_int_equal(st.packs_deleted, 1);
    assert_int_equal(st.indexes_deleted, 1); /* a's index */
    /* what is left is complete and sound */
    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, NULL), 0);
    assert_int_equal(rep->n_damage, 0);
    assert_int_equal(rep->chunks_checked, small / 65536);
    vmsh_verify_report_free(rep);
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, id2, "b", small, &got, &len, NULL), 0);
    assert_int_equal(len, small);
    assert_memory_equal(got, b, small);
    free(got);
    /* a second gc has nothing to do */
    assert_int_equal(vmsh_repo_gc(r, &st, NULL), 0);
    assert_int_equal(st.packs_deleted + st.packs_rewritten + st.indexes_deleted, 0);
    free(id1);
    free(id2);
    free(a);
    free(b);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
}

static void encryption_keys(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo"), *key = path2(dir, "key"),
         *bad = path2(dir, "bad");
    assert_int_equal(write_text_file(key, "open sesame\n"), 0);
    assert_int_equal(write_text_file(bad, "open sesame!\n"), 0);
    vmsh_repo_init_opts o = {.key_file = key};
    assert_int_equal(vmsh_repo_init(repo, &o, NULL), 0);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, &err), -EACCES);
    assert_non_null(strstr(err->message, "encrypted"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, bad, &err), -EACCES);
    assert_non_null(strstr(err->message, "wrong key"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, key, &err), 0);
    assert_true(vmsh_repo_encrypted(r));
    const char *text = "the same text, twice";
    char *id1 = new_backup(r, "t", text, strlen(text));
    vmsh_backup *b = NULL;
    vmsh_add_stats st = {0};
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, NULL), 0);
    assert_int_equal(vmsh_source_open_memory(&src, text, strlen(text), true, "t", NULL), 0);
    assert_int_equal(vmsh_backup_add_file(b, "t", src, NULL, &st, NULL), 0);
    assert_int_equal(st.dedup_chunks, 1); /* keyed IDs still deduplicate */
    assert_int_equal(vmsh_backup_commit(b, "", NULL), 0);
    vmsh_backup_free(b);
    vmsh_source_free(src);
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, id1, "t", 100, &got, &len, NULL), 0);
    assert_string_equal(got, text);
    free(got);
    free(id1);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
    free(key);
    free(bad);
}

static void source_extents_of_sparse_file(void **state)
{
    char *dir = make_tmpdir(), *img = path2(dir, "img");
    assert_int_equal(make_image(img, 4u << 20, 3), 0);
    vmsh_source *s = NULL;
    assert_int_equal(vmsh_source_open_file(&s, img, NULL), 0);
    assert_int_equal(vmsh_source_size(s), 4u << 20);
    assert_string_equal(vmsh_source_kind(s), "file");
    vmsh_extent e[16];
    int n = vmsh_source_extents(s, 0, 4u << 20, e, 16, NULL);
    assert_true(n >= 3);
    /* [0,1M) data, [1M,2M) hole */
    assert_int_equal(e[0].offset, 0);
    assert_int_equal(e[0].flags, 0);
    assert_int_equal(e[0].length, 1u << 20);
    assert_int_equal(e[1].flags, VMSH_EXTENT_ZERO);
    assert_int_equal(e[1].length, 1u << 20);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_source_extents(s, 4u << 20, 1, e, 16, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    char buf[16];
    assert_int_equal(vmsh_source_pread(s, buf, 16, (4u << 20) - 8, &err), -EINVAL);
    vmsh_error_free(err);
    vmsh_source_free(s);
    err = NULL;
    assert_int_equal(vmsh_source_open_file(&s, dir, &err), -EISDIR);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_source_open_file(&s, "/nonexistent/x", &err), -ENOENT);
    vmsh_error_free(err);
    rm_rf(dir);
    free(img);
    free(dir);
}

/* Many threads, tiny packs: every pack rollover races with appends and with
 * the writer thread; every chunk must still be in some pack's table. */
static void packs_roll_over_under_load(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    /* writes of 64 KiB and packs of 256 KiB: every pack ends as its buffer is
     * handed to the writer thread, as the default 64 MiB packs of 8 MiB writes
     * do, and it happens hundreds of times */
    r->pack_target = 256u << 10;
    r->pack_flush = 64u << 10;
    r->pack_io_delay_us = 300;
    vmsh_repo_set_threads(r, 4);
    size_t len = 32u << 20;
    uint8_t *data = malloc(len);
    uint64_t s = 5;
    fill_random(data, len, &s);
    for (int round = 0; round < 4; round++) {
        data[round * 70000] ^= 1; /* a new chunk each round, the rest deduplicated */
        if (round == 2)
            fill_random(data, len, &s); /* and once, all new */
        char *id = new_backup(r, "blob", data, len);
        vmsh_verify_report *rep = NULL;
        assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, NULL), 0);
        assert_int_equal(rep->n_damage, 0);
        vmsh_verify_report_free(rep);
        char *got = NULL;
        size_t n = 0;
        assert_int_equal(vmsh_repo_read_file(r, id, "blob", len, &got, &n, NULL), 0);
        assert_int_equal(n, len);
        assert_memory_equal(got, data, len);
        free(got);
        free(id);
    }
    free(data);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
}

/* Issue 27 point 2: verify sorts the chunk IDs of the indexes on disk in
 * runs (16 MiB of IDs each by default) and merges them. With runs of 7
 * IDs, 3 backups sharing most chunks make dozens of runs with the same IDs
 * in many: every chunk is still read exactly once, and the damage found
 * (a pack removed) is reported exactly as with one run in memory. */
static void verify_merges_sorted_runs_of_ids(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    r->pack_target = 256u << 10;
    r->pack_flush = 64u << 10;
    size_t len = (3u << 20) + 1000; /* 49 chunks, the last one short */
    uint8_t *data = malloc(len);
    uint64_t s = 11;
    fill_random(data, len, &s);
    char *ids[3];
    for (int i = 0; i < 3; i++) {
        data[i * 100000] ^= 0x5a; /* one new chunk per backup */
        ids[i] = new_backup(r, "disk", data, len);
    }
    vmsh_verify_report *one = NULL, *many = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &one, NULL), 0);
    assert_int_equal(one->backups_checked, 3);
    assert_int_equal(one->chunks_checked, 49 + 2);
    r->verify_run_ids = 7;
    for (int merged = 0; merged < 2; merged++) {
        /* and with the runs merged into one whenever there are 3 */
        r->verify_max_runs = merged ? 3 : 0;
        assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &many, NULL), 0);
        assert_int_equal(many->chunks_checked, one->chunks_checked);
        assert_int_equal(many->bytes_checked, one->bytes_checked);
        vmsh_verify_report_free(many);
        many = NULL;
    }
    vmsh_verify_report_free(one);
    one = NULL;
    /* a pack goes: both ways name the same backups, files and chunks */
    char(*names)[33] = NULL;
    size_t n = 0;
    assert_int_equal(repo_pack_names(r, &names, &n, NULL), 0);
    assert_true(n > 2);
    /* the largest pack: one of the first backup's, whose chunks every
     * backup shares (a later backup's own pack holds its one new chunk
     * only, and the listing's order is the file system's) */
    char *pp = NULL;
    off_t biggest = -1;
    for (size_t i = 0; i < n; i++) {
        char *p = pack_path(repo, names[i]);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        if (st.st_size > biggest) {
            biggest = st.st_size;
            free(pp);
            pp = p;
        } else {
            free(p);
        }
    }
    assert_int_equal(unlink(pp), 0);
    free(pp);
    free(names);
    vmsh_repo_free(r);
    for (int k = 0; k < 2; k++) {
        r = NULL;
        assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
        r->verify_run_ids = k ? 7 : 0;
        r->verify_max_runs = k ? 3 : 0;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, k ? &many : &one, &err),
                         -EBADMSG);
        vmsh_error_free(err);
        vmsh_repo_free(r);
    }
    assert_true(one->n_damage >= 3); /* each backup's file, and the pack */
    assert_int_equal(many->n_damage, one->n_damage);
    assert_int_equal(many->chunks_checked, one->chunks_checked);
    for (size_t i = 0; i < one->n_damage; i++) {
        assert_string_equal(many->damage[i].backup, one->damage[i].backup);
        assert_string_equal(many->damage[i].file ? many->damage[i].file : "",
                            one->damage[i].file ? one->damage[i].file : "");
        assert_string_equal(many->damage[i].what, one->damage[i].what);
    }
    vmsh_verify_report_free(one);
    vmsh_verify_report_free(many);
    free(data);
    for (int i = 0; i < 3; i++)
        free(ids[i]);
    rm_rf(dir);
    free(repo);
    free(dir);
}

int main(void)
{
    /* gc deletes in one run (a second pass at once): docs/formats/gc.md */
    setenv("VMSHADOW_STORE_GC_GRACE_SECONDS", "0", 1);
    setenv("VMSHADOW_STORE_GC_MARGIN_SECONDS", "0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prune_daily_monthly),
        cmocka_unit_test(gc_repacks_partly_live_packs),
        cmocka_unit_test(encryption_keys),
        cmocka_unit_test(source_extents_of_sparse_file),
        cmocka_unit_test(packs_roll_over_under_load),
        cmocka_unit_test(verify_merges_sorted_runs_of_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
