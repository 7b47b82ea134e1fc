/* The golden repositories (tests/golden/repo-v1, repo-v1-encrypted: made
 * once by vmshadow 0.1; repo-v2, repo-v2-encrypted: format version 2, issue
 * 20; VMSH_GOLDEN_GENERATE=1 runs this program in generate mode and makes
 * the copies of the current version), committed, and read back by every
 * later version. Besides
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

static void golden_v2_plain_reads_back(void **state)
{
    read_back("repo-v2", NULL);
}

static void golden_v2_encrypted_reads_back(void **state)
{
    read_back("repo-v2-encrypted", GOLDEN_PASS);
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
    uint8_t *b = read_whole_file(path, len);
    assert_non_null(b);
    return b;
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

static const uint8_t *envelope(const uint8_t *p, size_t n, int version, uint16_t type,
                               uint32_t flags, uint64_t *len)
{
    assert_true(n >= 56);
    assert_memory_equal(p, "VMSHOBJ1", 8);
    assert_int_equal(le(p + 8, 2), version);
    assert_int_equal(le(p + 10, 2), type);
    assert_int_equal(le(p + 12, 4), flags);
    *len = le(p + 16, 8);
    assert_int_equal(24 + *len + 32, n);
    uint8_t h[32];
    sha256(p, 24 + *len, h);
    assert_memory_equal(h, p + 24 + *len, 32);
    return p + 24;
}

static void bytes_match_format_doc(const char *name, int version)
{
    char *repo = path2(golden_dir(), name);
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
    assert_int_equal(json_object_get_int(v), version);
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
    const uint8_t *payload = envelope(mb, n, version, 2, 0, &plen);
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
    const uint8_t *ipl = envelope(ib, n, version, 1, 0, &plen);
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

/* ---- the encrypted version 2 copy, read with OpenSSL only ---- */

static void unhex(const char *h, uint8_t *out, size_t n)
{
    assert_int_equal(strlen(h), 2 * n);
    for (size_t i = 0; i < n; i++) {
        unsigned x = 0;
        assert_int_equal(sscanf(h + 2 * i, "%2x", &x), 1);
        out[i] = (uint8_t)x;
    }
}

static void tohex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* nonce(12) | ciphertext | tag(16) → out (len - 28 bytes); 0 when authentic */
static int gcm_open(const uint8_t key[32], const uint8_t *in, size_t len, const void *aad,
                    size_t aad_len, uint8_t *out)
{
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    int outl = 0, ok = len >= 28 && EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key, in) &&
                       EVP_DecryptUpdate(cx, NULL, &outl, aad, (int)aad_len) &&
                       EVP_DecryptUpdate(cx, out, &outl, in + 12, (int)(len - 28)) &&
                       EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(in + len - 16)) &&
                       EVP_DecryptFinal_ex(cx, out + outl, &outl) > 0;
    EVP_CIPHER_CTX_free(cx);
    return ok ? 0 : -1;
}

static void hmac(const void *key, size_t klen, const void *msg, size_t len, uint8_t out[32])
{
    size_t outl = 0;
    assert_non_null(
        EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, klen, msg, len, out, 32, &outl));
    assert_int_equal(outl, 32);
}

/* the config's canonical text, from the format document's rule */
static char *canonical(json_object *cfg, size_t *len)
{
    static const char *const names[] = {"format",
                                        "version",
                                        "id",
                                        "created",
                                        "chunk_size",
                                        "pack_size",
                                        "hash",
                                        "compression",
                                        "compression_level",
                                        "encryption.cipher",
                                        "encryption.kdf",
                                        "encryption.kdf_n",
                                        "encryption.kdf_r",
                                        "encryption.kdf_p",
                                        "encryption.salt",
                                        "encryption.wrapped_key"};
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    fputs("vmshadow-config-v2\n", f);
    json_object *enc = NULL, *v = NULL;
    json_object_object_get_ex(cfg, "encryption", &enc);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *n = names[i];
        json_object *o = cfg;
        if (strncmp(n, "encryption.", 11) == 0)
            o = enc, n += 11;
        if (!json_object_object_get_ex(o, n, &v)) {
            fprintf(f, "%s - 0:\n", names[i]);
            continue;
        }
        bool str = json_object_is_type(v, json_type_string);
        const char *t = str ? json_object_get_string(v) : json_object_to_json_string_ext(v, 0);
        fprintf(f, "%s %c %zu:%s\n", names[i], str ? 's' : 'j', strlen(t), t);
    }
    fclose(f);
    return buf;
}

/* an encrypted version 2 object: its payload, opened with the name bound */
static uint8_t *open_object(const char *path, uint16_t type, const char *kind,
                            const uint8_t key[32], size_t *plen)
{
    size_t n = 0;
    uint8_t *b = slurp(path, &n);
    uint64_t stored = 0;
    const uint8_t *sealed = envelope(b, n, 2, type, 1, &stored);
    char aad[24 + 128];
    memcpy(aad, b, 24);
    int al = snprintf(aad + 24, sizeof(aad) - 24, "vmshadow-object-v2:%s:%s", kind,
                      strrchr(path, '/') + 1);
    uint8_t *out = malloc(stored + 1);
    assert_int_equal(gcm_open(key, sealed, stored, aad, 24 + (size_t)al, out), 0);
    /* the same bytes under the name of another object do not open */
    aad[24 + al - 1] ^= 1;
    assert_int_equal(gcm_open(key, sealed, stored, aad, 24 + (size_t)al, out), -1);
    free(b);
    *plen = stored - 28;
    out[*plen] = 0;
    return out;
}

static void golden_v2_encrypted_bytes_match_format_doc(void **state)
{
    char *repo = path2(golden_dir(), "repo-v2-encrypted");
    char *cfgp = path2(repo, "config");
    size_t n = 0;
    uint8_t *cfgb = slurp(cfgp, &n);
    json_object *cfg = json_tokener_parse((char *)cfgb), *enc = NULL, *v = NULL;
    assert_non_null(cfg);
    assert_true(json_object_object_get_ex(cfg, "version", &v));
    assert_int_equal(json_object_get_int(v), 2);
    assert_true(json_object_object_get_ex(cfg, "id", &v));
    const char *id = json_object_get_string(v);
    assert_true(json_object_object_get_ex(cfg, "encryption", &enc));
    /* KEK = scrypt(passphrase, salt, N, r, p); the master key unwrapped with
     * the additional data "vmshadow-key-v2:" + id */
    uint8_t salt[16], wrapped[92], kek[32], master[64];
    assert_true(json_object_object_get_ex(enc, "salt", &v));
    unhex(json_object_get_string(v), salt, sizeof(salt));
    assert_true(json_object_object_get_ex(enc, "wrapped_key", &v));
    unhex(json_object_get_string(v), wrapped, sizeof(wrapped));
    int64_t kn = 0, kr = 0, kp = 0;
    assert_true(json_object_object_get_ex(enc, "kdf_n", &v));
    kn = json_object_get_int64(v);
    assert_true(json_object_object_get_ex(enc, "kdf_r", &v));
    kr = json_object_get_int64(v);
    assert_true(json_object_object_get_ex(enc, "kdf_p", &v));
    kp = json_object_get_int64(v);
    const char *pass = "vmshadow golden key"; /* GOLDEN_PASS without its newline */
    assert_int_equal(EVP_PBE_scrypt(pass, strlen(pass), salt, sizeof(salt), (uint64_t)kn,
                                    (uint64_t)kr, (uint64_t)kp, 64u << 20, kek, sizeof(kek)),
                     1);
    char aad[64];
    snprintf(aad, sizeof(aad), "vmshadow-key-v2:%s", id);
    assert_int_equal(gcm_open(kek, wrapped, sizeof(wrapped), aad, strlen(aad), master), 0);
    /* the config MAC: HMAC-SHA-256 under HMAC-SHA-256(master, label) */
    uint8_t mk[32], mac[32];
    char machex[65];
    hmac(master, 64, "vmshadow-config-mac-v2", strlen("vmshadow-config-mac-v2"), mk);
    size_t clen = 0;
    char *canon = canonical(cfg, &clen);
    hmac(mk, 32, canon, clen, mac);
    tohex(mac, 32, machex);
    assert_true(json_object_object_get_ex(cfg, "mac", &v));
    assert_string_equal(json_object_get_string(v), machex);
    free(canon);

    /* the manifest, bound to its backup ID */
    char *bdir = path2(repo, "backups");
    DIR *d = opendir(bdir);
    struct dirent *de;
    char *manp = NULL;
    while ((de = readdir(d)))
        if (strlen(de->d_name) == 16)
            manp = path2(bdir, de->d_name);
    closedir(d);
    size_t plen = 0;
    uint8_t *mtext = open_object(manp, 2, "manifest", master, &plen);
    json_object *m = json_tokener_parse((char *)mtext), *files, *f0, *iname;
    assert_non_null(m);
    assert_true(json_object_object_get_ex(m, "id", &v));
    assert_string_equal(json_object_get_string(v), strrchr(manp, '/') + 1);
    assert_true(json_object_object_get_ex(m, "document", &v));
    assert_string_equal(json_object_get_string(v), GOLDEN_DOC);
    assert_true(json_object_object_get_ex(m, "files", &files));
    f0 = json_object_array_get_idx(files, 0);
    assert_true(json_object_object_get_ex(f0, "index", &iname));
    const char *in = json_object_get_string(iname);
    /* the index: bound to its name, which is the keyed content ID */
    char *ip = NULL;
    assert_true(asprintf(&ip, "%s/index/%.2s/%s", repo, in, in) > 0);
    uint8_t *ipl = open_object(ip, 1, "index", master, &plen);
    uint8_t h[32];
    char hex[65];
    hmac(master + 32, 32, ipl, plen, h);
    tohex(h, 32, hex);
    assert_string_equal(hex, in);
    assert_int_equal(le(ipl + 8, 8), GOLDEN_SIZE);
    assert_int_equal(le(ipl + 16, 8), 4);

    /* the pack: table sealed with the header as additional data, blobs with
     * their chunk ID */
    char *packp = find_one(repo, "packs", ".pack", 1);
    uint8_t *pk = slurp(packp, &n);
    assert_int_equal(le(pk + 8, 4), 1);
    assert_int_equal(le(pk + 12, 4), 1);
    const uint8_t *ft = pk + n - 64;
    uint64_t toff = le(ft, 8), tlen = le(ft + 8, 8), count = le(ft + 16, 4);
    assert_int_equal(tlen, 56 * count + 28);
    uint8_t *table = malloc(tlen);
    assert_int_equal(gcm_open(master, pk + toff, tlen, pk, 16, table), 0);
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *e = table + 56 * i;
        uint64_t off = le(e + 32, 8), stored = le(e + 40, 4), raw = le(e + 44, 4);
        uint8_t *blob = malloc(stored), *plain = malloc(65536);
        assert_int_equal(gcm_open(master, pk + off, stored, e, 32, blob), 0);
        if (le(e + 48, 4) == 1)
            assert_int_equal(ZSTD_decompress(plain, 65536, blob, stored - 28), raw);
        else
            memcpy(plain, blob, raw);
        hmac(master + 32, 32, plain, raw, h);
        assert_memory_equal(h, e, 32);
        free(blob);
        free(plain);
    }
    free(table);
    free(pk);
    free(packp);
    free(ipl);
    free(ip);
    json_object_put(m);
    free(mtext);
    free(manp);
    free(bdir);
    json_object_put(cfg);
    free(cfgb);
    free(cfgp);
    free(repo);
}

static void golden_bytes_match_format_doc(void **state)
{
    bytes_match_format_doc("repo-v1", 1);
}

static void golden_v2_bytes_match_format_doc(void **state)
{
    bytes_match_format_doc("repo-v2", 2);
}

int main(void)
{
    if (getenv("VMSH_GOLDEN_GENERATE")) {
        /* the current version's copies; repo-v1* were made by vmshadow 0.1
         * and stay as they are */
        char *key = path2(golden_dir(), "repo-v2-encrypted.key");
        if (write_text_file(key, GOLDEN_PASS) < 0)
            return 1;
        generate("repo-v2", NULL);
        generate("repo-v2-encrypted", key);
        free(key);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_plain_reads_back),
        cmocka_unit_test(golden_encrypted_reads_back),
        cmocka_unit_test(golden_bytes_match_format_doc),
        cmocka_unit_test(golden_v2_plain_reads_back),
        cmocka_unit_test(golden_v2_encrypted_reads_back),
        cmocka_unit_test(golden_v2_bytes_match_format_doc),
        cmocka_unit_test(golden_v2_encrypted_bytes_match_format_doc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
