/* A hostile repository writer (issue 20, points 4, 5, 7 and 8;
 * docs/formats/repository.md "Object binding", "Config authentication";
 * docs/reliability.md "A hostile repository"): objects copied over others of
 * the same size, in encrypted and unencrypted repositories; configs with
 * their encryption removed or their fields altered; a key file for an
 * unencrypted repository; pack tables whose offsets wrap; an index whose
 * size disagrees with its manifest. Each is detected by reading, named by
 * verify, and stops gc before it deletes anything. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include <json-c/json.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>

#include "repo/internal.h"
#include "test_repo_helpers.h"

#define PASS    "correct horse battery staple\n"
#define BUF_LEN 3000

typedef struct fx {
    char *dir, *repo, *key; /* key: NULL when unencrypted */
    char id[2][VMSH_BACKUP_ID_LEN + 1];
    char index[2][65];
} fx;

/* Two backups, each of one buffer "f" of BUF_LEN random (incompressible)
 * bytes: their indexes and manifests have the same sizes. */
static fx *make(bool encrypted)
{
    fx *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    f->repo = path2(f->dir, "repo");
    if (encrypted) {
        f->key = path2(f->dir, "key");
        assert_int_equal(write_text_file(f->key, PASS), 0);
    }
    vmsh_error *err = NULL;
    vmsh_repo_init_opts o = {.key_file = f->key};
    assert_int_equal(vmsh_repo_init(f->repo, &o, &err), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, f->key, &err), 0);
    uint64_t seed = 5;
    for (int i = 0; i < 2; i++) {
        uint8_t buf[BUF_LEN];
        fill_random(buf, sizeof(buf), &seed);
        vmsh_backup *b = NULL;
        assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
        assert_int_equal(vmsh_backup_add_buffer(b, "f", buf, sizeof(buf), &err), 0);
        assert_int_equal(vmsh_backup_commit(b, "{\"doc\":1}", &err), 0);
        snprintf(f->id[i], sizeof(f->id[i]), "%s", vmsh_backup_id(b));
        vmsh_backup_free(b);
        vmsh_backup_info *info = NULL;
        assert_int_equal(vmsh_repo_backup_info(r, f->id[i], &info, &err), 0);
        snprintf(f->index[i], sizeof(f->index[i]), "%s", info->files[0].index);
        vmsh_backup_info_free(info);
    }
    vmsh_repo_free(r);
    return f;
}

static void fx_free(fx *f)
{
    rm_rf(f->dir);
    free(f->dir);
    free(f->repo);
    free(f->key);
    free(f);
}

static char *slurp_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_int_equal(fread(p, 1, (size_t)n, fp), (size_t)n);
    p[n] = 0;
    fclose(fp);
    *len = (size_t)n;
    return p;
}

static void put_file(const char *path, const void *p, size_t len)
{
    unlink(path); /* objects are written 0600 read-only by convention */
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, len, fp), len);
    fclose(fp);
}

/* copies `from` over `to`, asserting they have the same size */
static void copy_over(const char *from, const char *to)
{
    size_t a = 0, b = 0;
    char *pa = slurp_file(from, &a), *pb = slurp_file(to, &b);
    assert_int_equal(a, b);
    put_file(to, pa, a);
    free(pa);
    free(pb);
}

static int n_files;
static int count_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)p, (void)st, (void)ftw;
    if (flag == FTW_F && !strstr(p, "/locks/"))
        n_files++;
    return 0;
}

static int count_files(const char *dir)
{
    n_files = 0;
    nftw(dir, count_cb, 16, FTW_PHYS);
    return n_files;
}

static vmsh_repo *open_ok(fx *f)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, f->key, &err), 0);
    return r;
}

/* Backup 0 is damaged (its manifest or its file f): reading it fails with
 * -EBADMSG and a message holding `why`; verify names it; gc refuses,
 * names it, and deletes nothing. */
static void assert_detected(fx *f, const char *why, bool file_named)
{
    vmsh_repo *r = open_ok(f);
    vmsh_error *err = NULL;
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, f->id[0], "f", 1 << 20, &data, &len, &err), -EBADMSG);
    assert_non_null(strstr(err->message, why));
    vmsh_error_free(err), err = NULL;
    /* the other backup still reads */
    assert_int_equal(vmsh_repo_read_file(r, f->id[1], "f", 1 << 20, &data, &len, &err), 0);
    assert_int_equal(len, BUF_LEN);
    free(data);

    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err), -EBADMSG);
    vmsh_error_free(err), err = NULL;
    assert_non_null(rep);
    assert_int_equal(rep->n_damage, 1);
    assert_string_equal(rep->damage[0].backup, f->id[0]);
    if (file_named)
        assert_string_equal(rep->damage[0].file, "f");
    assert_non_null(strstr(rep->damage[0].what, why));
    vmsh_verify_report_free(rep);

    int before = count_files(f->repo);
    vmsh_gc_stats st = {0};
    assert_int_equal(vmsh_repo_gc(r, &st, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "gc stopped, nothing deleted"));
    assert_non_null(strstr(err->message, f->id[0]));
    assert_non_null(strstr(err->message, "verify"));
    assert_non_null(strstr(err->message, why));
    vmsh_error_free(err);
    assert_int_equal(count_files(f->repo), before);
    vmsh_repo_free(r);
}

static char *index_file(fx *f, int i)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/index/%.2s/%s", f->repo, f->index[i], f->index[i]) > 0);
    return p;
}

static char *manifest_file(fx *f, int i)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/backups/%s", f->repo, f->id[i]) > 0);
    return p;
}

static void index_over_index(bool encrypted, const char *why)
{
    fx *f = make(encrypted);
    char *a = index_file(f, 0), *b = index_file(f, 1);
    copy_over(b, a);
    assert_detected(f, why, true);
    free(a);
    free(b);
    fx_free(f);
}

static void index_substituted_plain(void **state)
{
    /* no key: the content address (SHA-256 of the payload) catches it */
    index_over_index(false, "does not match its name");
}

static void index_substituted_encrypted(void **state)
{
    /* the additional data binds the index's name: authentication fails
     * before the keyed content address is even checked */
    index_over_index(true, "fails authentication");
}

static void manifest_over_manifest(bool encrypted, const char *why)
{
    fx *f = make(encrypted);
    char *a = manifest_file(f, 0), *b = manifest_file(f, 1);
    copy_over(b, a);
    assert_detected(f, why, false);
    free(a);
    free(b);
    fx_free(f);
}

static void manifest_substituted_plain(void **state)
{
    manifest_over_manifest(false, "another backup's manifest was copied over it");
}

static void manifest_substituted_encrypted(void **state)
{
    manifest_over_manifest(true, "fails authentication");
}

/* ---- the config ---- */

static json_object *read_config(fx *f)
{
    char *p = path2(f->repo, "config");
    size_t n = 0;
    char *text = slurp_file(p, &n);
    json_object *c = json_tokener_parse(text);
    assert_non_null(c);
    free(text);
    free(p);
    return c;
}

static void write_config(fx *f, json_object *c)
{
    char *p = path2(f->repo, "config");
    const char *t = json_object_to_json_string_ext(c, JSON_C_TO_STRING_PRETTY);
    put_file(p, t, strlen(t));
    free(p);
    json_object_put(c);
}

static int open_rc(fx *f, const char *key, const char *want_msg)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    int rc = vmsh_repo_open(&r, f->repo, key, &err);
    if (rc < 0) {
        if (want_msg)
            assert_non_null(strstr(err->message, want_msg));
        vmsh_error_free(err);
    }
    vmsh_repo_free(r);
    return rc;
}

static void key_file_for_unencrypted_repo(void **state)
{
    fx *f = make(false);
    char *key = path2(f->dir, "key");
    assert_int_equal(write_text_file(key, PASS), 0);
    assert_int_equal(open_rc(f, key, "not encrypted"), -EACCES);
    assert_int_equal(open_rc(f, NULL, NULL), 0);
    free(key);
    fx_free(f);
}

static void config_downgrade_detected(void **state)
{
    fx *f = make(true);
    /* a careless downgrade: only the encryption block goes */
    json_object *c = read_config(f);
    json_object *saved = json_object_get(c);
    char *orig = strdup(json_object_to_json_string_ext(c, JSON_C_TO_STRING_PRETTY));
    json_object_object_add(c, "encryption", NULL);
    write_config(f, json_object_get(c));
    assert_int_equal(open_rc(f, NULL, "encryption was removed"), -EBADMSG);
    /* a careful one: the MAC and the keyed hash go too */
    json_object_object_del(c, "mac");
    json_object_object_add(c, "hash", json_object_new_string("sha256"));
    write_config(f, c);
    /* with the key: the key file for an "unencrypted" repository is refused */
    assert_int_equal(open_rc(f, f->key, "key file was given"), -EACCES);
    /* without: it opens (nothing can be authenticated without a key), but
     * no encrypted object or pack is taken for a plain one */
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_backup_info *info = NULL;
    assert_int_equal(vmsh_repo_backup_info(r, f->id[0], &info, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "config says unencrypted"));
    vmsh_error_free(err), err = NULL;
    /* verify, and a backup (which would store plaintext), stop at the
     * first encrypted pack */
    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err), -EBADMSG);
    assert_null(rep);
    assert_non_null(strstr(err->message, "is encrypted but the repository's config says"));
    vmsh_error_free(err), err = NULL;
    vmsh_backup *b = NULL;
    int brc = vmsh_backup_begin(&b, r, &err);
    if (brc == 0) {
        brc = vmsh_backup_add_buffer(b, "plain", "secret", 6, &err);
        if (brc == 0)
            brc = vmsh_backup_commit(b, "{}", &err);
    }
    assert_int_equal(brc, -EBADMSG);
    assert_non_null(strstr(err->message, "is encrypted but the repository's config says"));
    vmsh_error_free(err), err = NULL;
    vmsh_backup_free(b);
    int before = count_files(f->repo);
    assert_int_equal(vmsh_repo_gc(r, NULL, &err), -EBADMSG);
    vmsh_error_free(err), err = NULL;
    assert_int_equal(count_files(f->repo), before);
    vmsh_repo_free(r);
    /* the original config opens again */
    char *p = path2(f->repo, "config");
    put_file(p, orig, strlen(orig));
    assert_int_equal(open_rc(f, f->key, NULL), 0);
    json_object_put(saved);
    free(orig);
    free(p);
    fx_free(f);
}

static void alter_and_open(fx *f, const char *member, json_object *value, int want, const char *msg)
{
    json_object *c = read_config(f);
    char *p = path2(f->repo, "config");
    size_t n = 0;
    char *orig = slurp_file(p, &n);
    if (value)
        json_object_object_add(c, member, value);
    else
        json_object_object_del(c, member);
    write_config(f, c);
    assert_int_equal(open_rc(f, f->key, msg), want);
    put_file(p, orig, n);
    free(orig);
    free(p);
}

static void config_fields_authenticated(void **state)
{
    fx *f = make(true);
    assert_int_equal(open_rc(f, f->key, NULL), 0);
    alter_and_open(f, "compression_level", json_object_new_int(19), -EBADMSG,
                   "fails authentication");
    alter_and_open(f, "pack_size", json_object_new_int64(1 << 20), -EBADMSG,
                   "fails authentication");
    alter_and_open(f, "created", json_object_new_string("2020-01-01T00:00:00Z"), -EBADMSG,
                   "fails authentication");
    alter_and_open(f, "mac", NULL, -EBADMSG, "no MAC");
    /* lowering the version would drop the object binding: the key itself
     * (its additional data names version 2) says so */
    alter_and_open(f, "version", json_object_new_int(1), -EBADMSG, "made for version 2");
    /* a wrong key is still a wrong key */
    char *wrong = path2(f->dir, "wrong");
    assert_int_equal(write_text_file(wrong, "not the passphrase\n"), 0);
    assert_int_equal(open_rc(f, wrong, "wrong key"), -EACCES);
    assert_int_equal(open_rc(f, f->key, NULL), 0);
    free(wrong);
    fx_free(f);
}

/* an unencrypted version 2 repository whose config is set to version 1:
 * its version 2 objects are refused (no envelope of another version is read) */
static void plain_version_lowered(void **state)
{
    fx *f = make(false);
    json_object *c = read_config(f);
    json_object_object_add(c, "version", json_object_new_int(1));
    write_config(f, c);
    vmsh_repo *r = open_ok(f);
    vmsh_error *err = NULL;
    vmsh_backup_info *info = NULL;
    assert_int_equal(vmsh_repo_backup_info(r, f->id[0], &info, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "envelope version 2 in a version 1 repository"));
    vmsh_error_free(err);
    vmsh_repo_free(r);
    fx_free(f);
}

/* ---- an index whose size disagrees with its manifest, before gc ---- */

static void size_mismatch_stops_gc(void **state)
{
    fx *f = make(false);
    vmsh_repo *r = open_ok(f);
    char *path = manifest_file(f, 0);
    uint8_t *p = NULL;
    size_t len = 0;
    assert_int_equal(object_read(r, path, OBJ_MANIFEST, &p, &len, NULL), 0);
    json_object *m = json_tokener_parse((const char *)p);
    json_object *files = NULL;
    assert_true(json_object_object_get_ex(m, "files", &files));
    /* a larger file: gc must not treat chunks past the index as unneeded */
    json_object_object_add(json_object_array_get_idx(files, 0), "size",
                           json_object_new_int64(5 * BUF_LEN));
    const char *text = json_object_to_json_string(m);
    unlink(path);
    assert_int_equal(object_write(r, path, OBJ_MANIFEST, text, strlen(text), NULL), 0);
    json_object_put(m);
    free(p);
    free(path);
    vmsh_repo_free(r);
    assert_detected(f, "index size does not match the manifest", true);
    /* gc's own words */
    r = open_ok(f);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_gc(r, NULL, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "the manifest says 15000"));
    vmsh_error_free(err);
    vmsh_repo_free(r);
    fx_free(f);
}

/* ---- pack tables whose offsets wrap ---- */

/* An unencrypted pack of one raw blob "hello", with its table's checksum
 * right; `entry_off` and `table_off` (0: the true ones) and the footer's
 * entry count `count` (the table length being 56 per entry) are planted. */
static void craft_pack(const char *path, uint64_t entry_off, uint64_t table_off, uint32_t count)
{
    uint8_t p[16 + 5 + 56 + 64] = {0};
    memcpy(p, "VMSHPACK", 8);
    le32_put(p + 8, 1);
    memcpy(p + 16, "hello", 5);
    uint8_t *e = p + 21;
    crypto_sha256("hello", 5, e);
    le64_put(e + 32, entry_off ? entry_off : 16);
    le32_put(e + 40, 5);
    le32_put(e + 44, 5);
    uint8_t *ft = p + 21 + 56;
    le64_put(ft, table_off ? table_off : 21);
    le64_put(ft + 8, 56 * (uint64_t)count);
    le32_put(ft + 16, count);
    le32_put(ft + 20, 1);
    crypto_sha256(e, 56, ft + 24);
    memcpy(ft + 56, "VMSHPEND", 8);
    put_file(path, p, sizeof(p));
}

static void pack_offsets_cannot_wrap(void **state)
{
    /* the pack lies in a repository: tables are read through its store */
    fx *f = make(false);
    vmsh_repo *r = open_ok(f);
    /* the fixture's own packs land in packs/ee/ once in 256 runs */
    char *dir = path2(f->repo, "packs/ee");
    assert_true(mkdir(dir, 0700) == 0 || errno == EEXIST);
    char *path = path2(dir, "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.pack");
    repo_keys k = {0};
    crypto_ctx *c = NULL;
    assert_int_equal(crypto_ctx_new(&c, &k, NULL), 0);
    chunk_loc *e = NULL;
    uint32_t n = 0;
    uint64_t size = 0;
    vmsh_error *err = NULL;
    craft_pack(path, 0, 0, 1);
    assert_int_equal(pack_read_table(r, path, c, false, &e, &n, &size, &err), 0);
    assert_int_equal(n, 1);
    free(e), e = NULL;
    /* a blob at 2^64 - 2: offset + length wraps to 3, "inside" the blobs */
    craft_pack(path, UINT64_MAX - 1, 0, 1);
    assert_int_equal(pack_read_table(r, path, c, false, &e, &n, &size, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "table entry 0 is damaged"));
    vmsh_error_free(err), err = NULL;
    /* a footer claiming two entries (112 bytes) at 2^64 - 35: offset +
     * length wraps to the table's true end (77) */
    craft_pack(path, 0, (uint64_t)0 - 35, 2);
    assert_int_equal(pack_read_table(r, path, c, false, &e, &n, &size, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "table bounds are damaged"));
    vmsh_error_free(err);
    crypto_ctx_free(c);
    vmsh_repo_free(r);
    free(dir);
    free(path);
    fx_free(f);
}

/* ---- version 1 repositories ---- */

static const char *golden_dir(void)
{
    const char *g = getenv("VMSH_GOLDEN_DIR");
    return g ? g : "tests/golden";
}

/* The golden version 1 repository reads (test_repo_golden.c checks all of
 * it); the bindings version 1 allows still hold there: an index copied over
 * another is refused by its content address. */
static void v1_index_substitution_detected(void **state)
{
    char *tmp = make_tmpdir();
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "cp -a '%s/repo-v1' '%s/'", golden_dir(), tmp) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    char *repo = path2(tmp, "repo-v1");
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, &err), 0);
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, "latest", "golden/domain.xml", 4096, &data, &len, &err),
                     0);
    free(data);
    char *a =
        path2(repo, "index/36/36c72ed79f02d09301411e6710045af2c7413ac2b8acc64a9b444de2b641be64");
    char *b =
        path2(repo, "index/a4/a4fa7729e413ac6d576ae0bb91c7c3e746e2fcc918c92dc080c74a2e8ae6e7dd");
    size_t n = 0;
    char *pb = slurp_file(b, &n);
    put_file(a, pb, n);
    free(pb);
    int ok = 0;
    const char *files[] = {"golden/domain.xml", "golden/disk.img"};
    for (int i = 0; i < 2; i++) {
        int rc = vmsh_repo_read_file(r, "latest", files[i], 1 << 20, &data, &len, &err);
        if (rc == -EBADMSG) {
            assert_non_null(strstr(err->message, "does not match its name"));
            vmsh_error_free(err), err = NULL;
        } else {
            assert_int_equal(rc, 0);
            free(data);
            ok++;
        }
    }
    assert_int_equal(ok, 1); /* the one whose index was overwritten fails */
    vmsh_repo_free(r);
    free(a);
    free(b);
    free(repo);
    rm_rf(tmp);
    free(tmp);
}

int main(void)
{
    /* gc deletes in one run (a second pass at once): docs/formats/gc.md */
    setenv("VMSHADOW_STORE_GC_GRACE_SECONDS", "0", 1);
    setenv("VMSHADOW_STORE_GC_MARGIN_SECONDS", "0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(index_substituted_plain),
        cmocka_unit_test(index_substituted_encrypted),
        cmocka_unit_test(manifest_substituted_plain),
        cmocka_unit_test(manifest_substituted_encrypted),
        cmocka_unit_test(key_file_for_unencrypted_repo),
        cmocka_unit_test(config_downgrade_detected),
        cmocka_unit_test(config_fields_authenticated),
        cmocka_unit_test(plain_version_lowered),
        cmocka_unit_test(size_mismatch_stops_gc),
        cmocka_unit_test(pack_offsets_cannot_wrap),
        cmocka_unit_test(v1_index_substitution_detected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
