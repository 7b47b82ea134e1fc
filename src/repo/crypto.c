/* crypto.c - chunk IDs, AES-256-GCM and key setup (docs/formats/repository.md,
 * "Keys"). Everything goes through OpenSSL's EVP interfaces, which use SHA-NI
 * and AES-NI where the CPU has them. */
#include "internal.h"
#include "sha256mb.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <json-c/json.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define KDF_N          32768
#define KDF_R          8
#define KDF_P          1
#define SALT_LEN       16
#define MAX_PASSPHRASE 4096

struct crypto_ctx {
    const repo_keys *keys;
    EVP_MD_CTX *md;
    EVP_MAC_CTX *mac;
    EVP_CIPHER_CTX *cipher;
    /* HMAC's key blocks absorbed, for sha256mb (encrypted: hmac_key_blocks) */
    bool hmac_ready;
    uint32_t hmac_inner[8], hmac_outer[8];
};

/* Fetched once: an implicit fetch per digest costs a lock and a lookup. */
static EVP_MD *g_sha256;
static pthread_once_t g_sha256_once = PTHREAD_ONCE_INIT;

static void sha256_init(void)
{
    g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static EVP_MD *sha256_md(void)
{
    pthread_once(&g_sha256_once, sha256_init);
    return g_sha256;
}

void vmsh_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int vmsh_unhex(const char *in, uint8_t *out, size_t n)
{
    if (!in || strlen(in) != 2 * n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int h = hexval(in[2 * i]), l = hexval(in[2 * i + 1]);
        if (h < 0 || l < 0)
            return -EINVAL;
        out[i] = (uint8_t)(h << 4 | l);
    }
    return 0;
}

int crypto_random(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int crypto_ctx_new(crypto_ctx **out, const repo_keys *k, vmsh_error **err)
{
    crypto_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    c->keys = k;
    c->md = EVP_MD_CTX_new();
    c->cipher = EVP_CIPHER_CTX_new();
    if (!c->md || !c->cipher || !sha256_md())
        goto fail;
    if (k->encrypted) {
        EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (!mac)
            goto fail;
        c->mac = EVP_MAC_CTX_new(mac);
        EVP_MAC_free(mac);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        if (!c->mac || !EVP_MAC_init(c->mac, k->id_key, sizeof(k->id_key), params))
            goto fail;
    }
    *out = c;
    return 0;
fail:
    crypto_ctx_free(c);
    return vmsh_error_set(err, -ENOMEM, "cannot set up OpenSSL hashing and ciphers");
}

void crypto_ctx_free(crypto_ctx *c)
{
    if (!c)
        return;
    EVP_MD_CTX_free(c->md);
    EVP_MAC_CTX_free(c->mac);
    EVP_CIPHER_CTX_free(c->cipher);
    OPENSSL_cleanse(c->hmac_inner, sizeof(c->hmac_inner)); /* as good as the ID key */
    OPENSSL_cleanse(c->hmac_outer, sizeof(c->hmac_outer));
    free(c);
}

int crypto_chunk_id(crypto_ctx *c, const void *data, size_t len, uint8_t id[ID_LEN])
{
    if (c->keys->encrypted) {
        size_t outl = 0;
        /* init with a NULL key re-uses the key set at creation */
        if (!EVP_MAC_init(c->mac, NULL, 0, NULL) || !EVP_MAC_update(c->mac, data, len) ||
            !EVP_MAC_final(c->mac, id, &outl, ID_LEN) || outl != ID_LEN)
            return -EIO;
        return 0;
    }
    unsigned int outl = 0;
    if (!EVP_DigestInit_ex2(c->md, sha256_md(), NULL) || !EVP_DigestUpdate(c->md, data, len) ||
        !EVP_DigestFinal_ex(c->md, id, &outl))
        return -EIO;
    return 0;
}

/* HMAC's key blocks (RFC 2104, a key shorter than a block) absorbed once,
 * at the context's first batch: a command that never hashes one pays
 * nothing, not even sha256mb's self-test. */
static void hmac_key_blocks(crypto_ctx *c)
{
    uint8_t pad[64];
    for (int which = 0; which < 2; which++) {
        uint32_t *h = which ? c->hmac_outer : c->hmac_inner;
        memset(pad, which ? 0x5c : 0x36, sizeof(pad));
        for (size_t i = 0; i < sizeof(c->keys->id_key); i++)
            pad[i] ^= c->keys->id_key[i];
        sha256mb_iv(h);
        sha256mb_block(h, pad);
    }
    OPENSSL_cleanse(pad, sizeof(pad));
    c->hmac_ready = true;
}

int crypto_chunk_ids(crypto_ctx *c, size_t n, const uint8_t *const *data, size_t len,
                     uint8_t (*ids)[ID_LEN])
{
    bool mb = sha256mb_usable();
    if (mb && c->keys->encrypted && !c->hmac_ready)
        hmac_key_blocks(c);
    for (size_t i = 0; i < n;) {
        size_t take = n - i < SHA256MB_LANES ? n - i : SHA256MB_LANES;
        if (!mb) {
            if (crypto_chunk_id(c, data[i], len, ids[i]) < 0)
                return -EIO;
            i++;
            continue;
        }
        if (!c->keys->encrypted) {
            uint32_t start[8];
            sha256mb_iv(start);
            sha256mb_digest(take, data + i, len, start, 0, ids + i);
        } else { /* HMAC: the outer hash of the inner digests */
            uint8_t inner[SHA256MB_LANES][32];
            const uint8_t *ip[SHA256MB_LANES];
            sha256mb_digest(take, data + i, len, c->hmac_inner, 64, inner);
            for (size_t j = 0; j < take; j++)
                ip[j] = inner[j];
            sha256mb_digest(take, ip, 32, c->hmac_outer, 64, ids + i);
        }
        i += take;
    }
    return 0;
}

void crypto_sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int outl = 0;
    EVP_Digest(data, len, out, &outl, sha256_md(), NULL);
}

static int seal_with(EVP_CIPHER_CTX *cx, const uint8_t key[32], const void *in, size_t len,
                     const void *aad, size_t aad_len, uint8_t *out)
{
    if (len > INT32_MAX || aad_len > INT32_MAX)
        return -EINVAL;
    if (crypto_random(out, GCM_NONCE_LEN) < 0)
        return -EIO;
    int outl = 0;
    if (!EVP_EncryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key, out) ||
        (aad_len && !EVP_EncryptUpdate(cx, NULL, &outl, aad, (int)aad_len)) ||
        !EVP_EncryptUpdate(cx, out + GCM_NONCE_LEN, &outl, in, (int)len) ||
        !EVP_EncryptFinal_ex(cx, out + GCM_NONCE_LEN + outl, &outl) ||
        !EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, out + GCM_NONCE_LEN + len))
        return -EIO;
    return 0;
}

static int open_with(EVP_CIPHER_CTX *cx, const uint8_t key[32], const uint8_t *in, size_t len,
                     const void *aad, size_t aad_len, uint8_t *out)
{
    if (len < GCM_OVERHEAD || len > INT32_MAX || aad_len > INT32_MAX)
        return -EBADMSG;
    size_t ct_len = len - GCM_OVERHEAD;
    int outl = 0;
    if (!EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key, in) ||
        (aad_len && !EVP_DecryptUpdate(cx, NULL, &outl, aad, (int)aad_len)) ||
        !EVP_DecryptUpdate(cx, out, &outl, in + GCM_NONCE_LEN, (int)ct_len) ||
        !EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN,
                             (void *)(in + GCM_NONCE_LEN + ct_len)))
        return -EBADMSG;
    if (EVP_DecryptFinal_ex(cx, out + outl, &outl) <= 0)
        return -EBADMSG;
    return 0;
}

int crypto_seal(crypto_ctx *c, const void *in, size_t len, const void *aad, size_t aad_len,
                uint8_t *out)
{
    return seal_with(c->cipher, c->keys->data_key, in, len, aad, aad_len, out);
}

int crypto_open(crypto_ctx *c, const uint8_t *in, size_t len, const void *aad, size_t aad_len,
                uint8_t *out)
{
    return open_with(c->cipher, c->keys->data_key, in, len, aad, aad_len, out);
}

/* ---- keys ---- */

static int read_passphrase(const char *key_file, char **out, size_t *len, vmsh_error **err)
{
    char *buf = NULL;
    size_t n = 0;
    int r = vmsh_fs_read_all(key_file, MAX_PASSPHRASE + 2, &buf, &n, err);
    if (r < 0)
        return vmsh_error_prefix(err, "cannot read the key file");
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n == 0 || n > MAX_PASSPHRASE) {
        free(buf);
        return vmsh_error_set(err, -EINVAL, "key file %s must hold a passphrase of 1 to %d bytes",
                              key_file, MAX_PASSPHRASE);
    }
    *out = buf;
    *len = n;
    return 0;
}

static int derive_kek(const char *pass, size_t pass_len, const uint8_t *salt, uint64_t n,
                      uint64_t r, uint64_t p, uint8_t kek[32])
{
    /* 32 MiB of memory (128·N·r) and ~0.1 s: slows guessing, fine once per run. */
    if (!EVP_PBE_scrypt(pass, pass_len, salt, SALT_LEN, n, r, p, 64u << 20, kek, 32))
        return -EIO;
    return 0;
}

/* Version 1: "vmshadow-key-v1:" + id; from version 2 the version is the
 * one in the config, so lowering it in the config makes the key fail. */
static void aad_for(const char *repo_id, int version, char *buf, size_t cap)
{
    snprintf(buf, cap, "vmshadow-key-v%d:%s", version < 2 ? 1 : version, repo_id);
}

static int hmac_sha256(const void *key, size_t key_len, const void *msg, size_t len,
                       uint8_t out[32])
{
    size_t outl = 0;
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, msg, len, out, 32, &outl) ||
        outl != 32)
        return -EIO;
    return 0;
}

int keys_config_mac(const repo_keys *k, const void *msg, size_t len, uint8_t out[32])
{
    /* A key of its own, derived from the whole master key: the config MAC
     * never uses the data or ID key directly. */
    static const char label[] = "vmshadow-config-mac-v2";
    uint8_t master[64], mk[32];
    memcpy(master, k->data_key, 32);
    memcpy(master + 32, k->id_key, 32);
    int r = hmac_sha256(master, sizeof(master), label, strlen(label), mk);
    if (r == 0)
        r = hmac_sha256(mk, sizeof(mk), msg, len, out);
    OPENSSL_cleanse(master, sizeof(master));
    OPENSSL_cleanse(mk, sizeof(mk));
    return r;
}

int keys_create(const char *key_file, struct json_object **enc_out, const char *repo_id,
                int version, repo_keys *k, vmsh_error **err)
{
    _cleanup_free_ char *pass = NULL;
    size_t pass_len = 0;
    int r = read_passphrase(key_file, &pass, &pass_len, err);
    if (r < 0)
        return r;
    uint8_t salt[SALT_LEN], kek[32], master[64], wrapped[64 + GCM_OVERHEAD];
    if (crypto_random(salt, sizeof(salt)) < 0 || crypto_random(master, sizeof(master)) < 0)
        return vmsh_error_set(err, -EIO, "cannot get random bytes from the kernel");
    if (derive_kek(pass, pass_len, salt, KDF_N, KDF_R, KDF_P, kek) < 0)
        return vmsh_error_set(err, -EIO, "key derivation (scrypt) failed");
    char aad[64];
    aad_for(repo_id, version, aad, sizeof(aad));
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    r = cx ? seal_with(cx, kek, master, sizeof(master), aad, strlen(aad), wrapped) : -ENOMEM;
    EVP_CIPHER_CTX_free(cx);
    OPENSSL_cleanse(kek, sizeof(kek));
    if (r < 0)
        return vmsh_error_set(err, r, "cannot wrap the repository key");
    char salt_hex[2 * SALT_LEN + 1], wrapped_hex[2 * sizeof(wrapped) + 1];
    vmsh_hex(salt, sizeof(salt), salt_hex);
    vmsh_hex(wrapped, sizeof(wrapped), wrapped_hex);
    json_object *enc = json_object_new_object();
    json_object_object_add(enc, "cipher", json_object_new_string("aes-256-gcm"));
    json_object_object_add(enc, "kdf", json_object_new_string("scrypt"));
    json_object_object_add(enc, "kdf_n", json_object_new_int64(KDF_N));
    json_object_object_add(enc, "kdf_r", json_object_new_int64(KDF_R));
    json_object_object_add(enc, "kdf_p", json_object_new_int64(KDF_P));
    json_object_object_add(enc, "salt", json_object_new_string(salt_hex));
    json_object_object_add(enc, "wrapped_key", json_object_new_string(wrapped_hex));
    *enc_out = enc;
    k->encrypted = true;
    memcpy(k->data_key, master, 32);
    memcpy(k->id_key, master + 32, 32);
    OPENSSL_cleanse(master, sizeof(master));
    return 0;
}

static int64_t get_int(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return -1;
    return json_object_get_int64(v);
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

int keys_unlock(const char *key_file, struct json_object *enc, const char *repo_id, int version,
                const char *repo_path, repo_keys *k, vmsh_error **err)
{
    const char *cipher = get_str(enc, "cipher"), *kdf = get_str(enc, "kdf");
    int64_t n = get_int(enc, "kdf_n"), rr = get_int(enc, "kdf_r"), p = get_int(enc, "kdf_p");
    uint8_t salt[SALT_LEN], wrapped[64 + GCM_OVERHEAD];
    if (!cipher || strcmp(cipher, "aes-256-gcm") != 0 || !kdf || strcmp(kdf, "scrypt") != 0)
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "repository %s uses a cipher or key derivation this vmshadow does "
                              "not know; upgrade vmshadow",
                              repo_path);
    /* Bounds keep a damaged or hostile config from asking for gigabytes. */
    if (n < 1024 || n > (1 << 20) || (n & (n - 1)) || rr < 1 || rr > 32 || p < 1 || p > 16 ||
        vmsh_unhex(get_str(enc, "salt"), salt, sizeof(salt)) < 0 ||
        vmsh_unhex(get_str(enc, "wrapped_key"), wrapped, sizeof(wrapped)) < 0)
        return vmsh_error_set(err, -EBADMSG, "repository %s: the key in config is damaged",
                              repo_path);
    if (!key_file)
        return vmsh_error_set(err, -EACCES,
                              "repository %s is encrypted: give its key file (--key-file or the "
                              "config key key-file)",
                              repo_path);
    _cleanup_free_ char *pass = NULL;
    size_t pass_len = 0;
    int r = read_passphrase(key_file, &pass, &pass_len, err);
    if (r < 0)
        return r;
    uint8_t kek[32], master[64];
    if (derive_kek(pass, pass_len, salt, (uint64_t)n, (uint64_t)rr, (uint64_t)p, kek) < 0)
        return vmsh_error_set(err, -EIO, "key derivation (scrypt) failed");
    char aad[64];
    aad_for(repo_id, version, aad, sizeof(aad));
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    r = cx ? open_with(cx, kek, wrapped, sizeof(wrapped), aad, strlen(aad), master) : -ENOMEM;
    int other = version < 2 ? 2 : 1;
    if (r == -EBADMSG) {
        /* The key of the other format version: the config's version was
         * changed (a downgrade would drop the object binding). */
        aad_for(repo_id, other, aad, sizeof(aad));
        if (open_with(cx, kek, wrapped, sizeof(wrapped), aad, strlen(aad), master) == 0)
            r = -EUCLEAN;
    }
    EVP_CIPHER_CTX_free(cx);
    OPENSSL_cleanse(kek, sizeof(kek));
    if (r == -EUCLEAN) {
        OPENSSL_cleanse(master, sizeof(master));
        return vmsh_error_set(err, -EBADMSG,
                              "repository %s: config was altered: it says format version %d but "
                              "its key was made for version %d; refusing (restore the original "
                              "config)",
                              repo_path, version, other);
    }
    if (r < 0)
        return vmsh_error_set(err, -EACCES,
                              "wrong key for repository %s: the passphrase in %s does not unlock "
                              "it",
                              repo_path, key_file);
    k->encrypted = true;
    memcpy(k->data_key, master, 32);
    memcpy(k->id_key, master + 32, 32);
    OPENSSL_cleanse(master, sizeof(master));
    return 0;
}
