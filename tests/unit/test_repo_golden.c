/* The golden repositories (tests/golden/repo-v1, repo-v1-encrypted): made
 * once by vmshadow 0.1 (VMSH_GOLDEN_GENERATE=1 runs this program in
 * generate mode), committed, and read back by every later version. Besides
 * reading them through the library, this test parses their bytes with its
 * own small parser written from docs/formats/repository.md, so the format
 * document and the files cannot drift apart. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <zstd.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include "test_repo_helpers.h"

#define GOLDEN_DOC  "{\"vms\":[{\"name\":\"golden\",\"method\":\"saved-state\"}],\"kind\":\"full\"}"
#define GOLDEN_XML  "<domain type='kvm'><name>golden</name></domain>\n"
#define GOLDEN_SIZE (5 * 65536 + 777)
#define GOLDEN_PASS "vmshadow golden key\n"

/* chunk 0 text; 1 hole; 2 written zeros; 3 2 KiB random then zeros; 4 = chunk
 * 0 again (deduplicated); a 777-byte tail of text. */
static uint8_t *golden_image(void)
{
    uint8_t *p = calloc(1, GOLDEN_SIZE);
    fill_text(p, 65536, 11);
    uint64_t s = 99;
    fill_random(p + 3 * 65536, 2048, &s);
    memcpy(p + 4 * 65536, p, 65536);
    fill_text(p + 5 * 65536, 777, 12);
    return p;
}

static const char *golden_dir(void)
{
    const char *g = getenv("VMSH_GOLDEN_DIR");
    return g ? g : "tests/golden";
}

static void generate(const char *name, const char *key_file)
{
    char *repo = path2(golden_dir(), name);
    vmsh_error *err = NULL;
    vmsh_repo_init_opts o = {.key_file = key_file};
    if (vmsh_repo_init(repo, &o, &err) < 0) {
        fprintf(stderr, "%s\n", err->message);
        exit(1);
    }
    vmsh_repo *r = NULL;
    vmsh_backup *b = NULL;
    vmsh_source *src = NULL;
    uint8_t *img = golden_image();
    if (vmsh_repo_open(&r, repo, key_file, &err) < 0 || vmsh_backup_begin(&b, r, &err) < 0 ||
        vmsh_source_open_memory(&src, img, GOLDEN_SIZE, false, "disk.img", &err) < 0 ||
        vmsh_backup_add_file(b, "golden/disk.img", src, NULL, NULL, &err) < 0 ||
        vmsh_backup_add_buffer(b, "golden/domain.xml", GOLDEN_XML, strlen(GOLDEN_XML), &err) < 0 ||
        vmsh_backup_commit(b, GOLDEN_DOC, &err) < 0) {
        fprintf(stderr, "%s\n", err->message);
        exit(1);
    }
    vmsh_source_free(src);
    vmsh_backup_free(b);
    vmsh_repo_free(r);
    /* locks are runtime files, not part of the golden copy */
    char *locks = path2(repo, "locks");
    rm_rf(locks);
    mkdir(locks, 0700);
    free(locks);
    free(img);
    free(repo);
}

/* A private copy: reading takes locks, which creates files. */
static char *copy_golden(const char *name, char **tmp_out)
{
    char *tmp = make_tmpdir();
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "cp -a '%s/%s' '%s/'", golden_dir(), name, tmp) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    *tmp_out = tmp;
    return path2(tmp, name);
}

static void read_back(const char *name, const char *key)
{
    char *tmp = NULL;
    char *repo = copy_golden(name, &tmp);
    char *keyp = key ? path2(tmp, "key") : NULL;
    if (keyp)
        assert_int_equal(write_text_file(keyp, key), 0);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, keyp, &err), 0);
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_list(r, &a, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(a[0].document, GOLDEN_DOC);
    assert_int_equal(a[0].n_files, 2);
    const vmsh_backup_file *f = vmsh_backup_info_file(&a[0], "golden/disk.img");
    assert_non_null(f);
    assert_int_equal(f->size, GOLDEN_SIZE);
    char *out = path2(tmp, "disk.img");
    assert_int_equal(
        vmsh_repo_restore_file(r, a[0].id, "golden/disk.img", out, false, NULL, NULL, NULL, &err),
        0);
    uint8_t *want = golden_image();
    char *got = NULL;
    size_t len = 0;
    FILE *fp = fopen(out, "rb");
    assert_non_null(fp);
    got = malloc(GOLDEN_SIZE + 1);
    len = fread(got, 1, GOLDEN_SIZE + 1, fp);
    fclose(fp);
    assert_int_equal(len, GOLDEN_SIZE);
    assert_memory_equal(got, want, GOLDEN_SIZE);
    free(got);
    assert_int_equal(vmsh_repo_read_file(r, "latest", "golden/domain.xml", 4096, &got, &len, &err),
                     0);
    assert_string_equal(got, GOLDEN_XML);
    free(got);
    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err), 0);
    assert_int_equal(rep->n_damage, 0);
    /* chunks 0 (= 4), 3 and the tail, plus the buffer */
    assert_int_equal(rep->chunks_checked, 4);
    vmsh_verify_report_free(rep);
    vmsh_backup_info_array_free(a, n);
    vmsh_repo_free(r);
    free(want);
    free(out);
    free(keyp);
    free(repo);
    rm_rf(tmp);
    free(tmp);
}

static void golden_plain_reads_back(void **state)
{
    read_back("repo-v1", NULL);
}

static void golden_encrypted_reads_back(void **state)
{
    read_back("repo-v1-encrypted", GOLDEN_PASS);
}

/* ---- an independent reading of the bytes, from the format document ---- */

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned int l = 0;
    EVP_Digest(p, n, out, &l, EVP_sha256(), NULL);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    p[n] = 0;
    *len = (size_t)n;
    return p;
}

/* the only regular file under dir/sub/XX/, by suffix */
static char *find_one(const char *dir, const char *sub, const char *suffix, int want)
{
    char *base = path2(dir, sub), *found = NULL;
    DIR *d = opendir(base);
    assert_non_null(d);
    struct dirent *de;
    int count = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *fan = path2(base, de->d_name);
        DIR *sd = opendir(fan);
        struct dirent *se;
        while (sd && (se = readdir(sd))) {
            size_t l = strlen(se->d_name);
            if (se->d_name[0] == '.' || l < strlen(suffix) ||
                strcmp(se->d_name + l - strlen(suffix), suffix) != 0)
                continue;
            count++;
            free(found);
            found = path2(fan, se->d_name);
        }
        if (sd)
            closedir(sd);
        free(fan);
    }
    closedir(d);
    free(base);
    assert_int_equal(count, want);
    return found;
}

static const uint8_t *envelope(const uint8_t *p, size_t n, uint16_t type, uint64_t *len)
{
    assert_true(n >= 56);
    assert_memory_equal(p, "VMSHOBJ1", 8);
    assert_int_equal(le(p + 8, 2), 1);
    assert_int_equal(le(p + 10, 2), type);
    assert_int_equal(le(p + 12, 4), 0);
    *len = le(p + 16, 8);
    assert_int_equal(24 + *len + 32, n);
    uint8_t h[32];
    sha256(p, 24 + *len, h);
    assert_memory_equal(h, p + 24 + *len, 32);
    return p + 24;
}

static void golden_bytes_match_format_doc(void **state)
{
    char *repo = path2(golden_dir(), "repo-v1");
    /* config */
    char *cfgp = path2(repo, "config");
    size_t n = 0;
    uint8_t *cfgb = slurp(cfgp, &n);
    json_object *cfg = json_tokener_parse((char *)cfgb);
    assert_non_null(cfg);
    json_object *v;
    assert_true(json_object_object_get_ex(cfg, "format", &v));
    assert_string_equal(json_object_get_string(v), "vmshadow-repository");
    assert_true(json_object_object_get_ex(cfg, "version", &v));
    assert_int_equal(json_object_get_int(v), 1);
    assert_true(json_object_object_get_ex(cfg, "chunk_size", &v));
    assert_int_equal(json_object_get_int(v), 65536);
    assert_true(json_object_object_get_ex(cfg, "encryption", &v));
    assert_null(v);
    json_object_put(cfg);

    /* the pack: header, footer, table, blobs */
    char *packp = find_one(repo, "packs", ".pack", 1);
    uint8_t *pk = slurp(packp, &n);
    assert_memory_equal(pk, "VMSHPACK", 8);
    assert_int_equal(le(pk + 8, 4), 1);
    assert_int_equal(le(pk + 12, 4), 0);
    const uint8_t *ft = pk + n - 64;
    assert_memory_equal(ft + 56, "VMSHPEND", 8);
    uint64_t toff = le(ft, 8), tlen = le(ft + 8, 8), count = le(ft + 16, 4);
    assert_int_equal(le(ft + 20, 4), 1);
    assert_int_equal(tlen, 56 * count);
    assert_int_equal(toff + tlen, n - 64);
    uint8_t h[32];
    sha256(pk + toff, tlen, h);
    assert_memory_equal(h, ft + 24, 32);
    assert_int_equal(count, 4); /* text chunk, random chunk, tail, the XML buffer */
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *e = pk + toff + 56 * i;
        uint64_t off = le(e + 32, 8), stored = le(e + 40, 4), raw = le(e + 44, 4),
                 kind = le(e + 48, 4);
        assert_true(off >= 16 && off + stored <= toff);
        assert_true(raw >= 1 && raw <= 65536 && kind <= 1);
        uint8_t *plain = malloc(65536);
        if (kind == 1) {
            assert_int_equal(ZSTD_decompress(plain, 65536, pk + off, stored), raw);
        } else {
            assert_int_equal(stored, raw);
            memcpy(plain, pk + off, raw);
        }
        sha256(plain, raw, h);
        assert_memory_equal(h, e, 32); /* chunk ID = SHA-256 of the bytes */
        free(plain);
    }

    /* the manifest and the disk's index */
    char *bdir = path2(repo, "backups");
    DIR *d = opendir(bdir);
    struct dirent *de;
    char *manp = NULL;
    while ((de = readdir(d)))
        if (strlen(de->d_name) == 16)
            manp = path2(bdir, de->d_name);
    closedir(d);
    assert_non_null(manp);
    uint8_t *mb = slurp(manp, &n);
    uint64_t plen = 0;
    const uint8_t *payload = envelope(mb, n, 2, &plen);
    char *text = strndup((const char *)payload, plen);
    json_object *m = json_tokener_parse(text);
    assert_non_null(m);
    assert_true(json_object_object_get_ex(m, "version", &v));
    assert_int_equal(json_object_get_int(v), 1);
    assert_true(json_object_object_get_ex(m, "id", &v));
    assert_string_equal(json_object_get_string(v), strrchr(manp, '/') + 1);
    assert_true(json_object_object_get_ex(m, "document", &v));
    assert_string_equal(json_object_get_string(v), GOLDEN_DOC);
    json_object *files, *f0, *idxname;
    assert_true(json_object_object_get_ex(m, "files", &files));
    f0 = json_object_array_get_idx(files, 0);
    assert_true(json_object_object_get_ex(f0, "index", &idxname));
    const char *iname = json_object_get_string(idxname);
    char *ip = NULL;
    assert_true(asprintf(&ip, "%s/index/%.2s/%s", repo, iname, iname) > 0);
    uint8_t *ib = slurp(ip, &n);
    const uint8_t *ipl = envelope(ib, n, 1, &plen);
    sha256(ipl, plen, h); /* named by its content ID */
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
    assert_string_equal(hex, iname);
    assert_int_equal(le(ipl, 4), 65536);
    assert_int_equal(le(ipl + 8, 8), GOLDEN_SIZE);
    uint64_t entries = le(ipl + 16, 8);
    assert_int_equal(plen, 24 + 40 * entries);
    /* stored chunks 0, 3, 4, 5: holes and zeros are absent */
    assert_int_equal(entries, 4);
    const uint64_t want[4] = {0, 3, 4, 5};
    for (uint64_t i = 0; i < entries; i++)
        assert_int_equal(le(ipl + 24 + 40 * i, 8), want[i]);
    assert_memory_equal(ipl + 24 + 8, ipl + 24 + 80 + 8, 32); /* chunk 0 = chunk 4 */
    json_object_put(m);
    free(text);
    free(ib);
    free(ip);
    free(mb);
    free(manp);
    free(bdir);
    free(pk);
    free(packp);
    free(cfgb);
    free(cfgp);
    free(repo);
}

int main(void)
{
    if (getenv("VMSH_GOLDEN_GENERATE")) {
        char *key = path2(golden_dir(), "repo-v1-encrypted.key");
        if (write_text_file(key, GOLDEN_PASS) < 0)
            return 1;
        generate("repo-v1", NULL);
        generate("repo-v1-encrypted", key);
        free(key);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_plain_reads_back),
        cmocka_unit_test(golden_encrypted_reads_back),
        cmocka_unit_test(golden_bytes_match_format_doc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
