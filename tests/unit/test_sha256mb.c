/* test_sha256mb.c - issue 27 point 5: SHA-256 of up to four chunks at once
 * with SHA-NI (src/repo/sha256mb.c) gives the bytes FIPS 180-4 and OpenSSL
 * give, for every lane count, every length around the padding's edges and
 * a continued state (HMAC's); crypto_chunk_ids (crypto.c) gives the IDs
 * crypto_chunk_id gives one by one, plain and keyed (HMAC-SHA-256), with
 * SHA-NI and without. On a CPU without SHA-NI the direct tests skip and the
 * OpenSSL path is tested alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "repo/internal.h"
#include "repo/sha256mb.h"
#include "test_repo_helpers.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

static void hex_of(const uint8_t d[32], char out[65])
{
    vmsh_hex(d, 32, out);
}

static void want_sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned outl = 0;
    assert_true(EVP_Digest(p, n, out, &outl, EVP_sha256(), NULL));
}

static void skip_without_shani(void)
{
    if (!sha256mb_cpu()) {
        print_message("no SHA-NI on this CPU: the OpenSSL path alone is tested\n");
        skip();
    }
}

/* FIPS 180-4's examples (NIST's SHA256.pdf) and the million a's */
static void nist_vectors(void **state)
{
    (void)state;
    skip_without_shani();
    static const struct {
        const char *msg;
        size_t repeat;
        const char *digest;
    } v[] = {
        {"", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        size_t n = strlen(v[i].msg) * v[i].repeat;
        uint8_t *m = malloc(n + 1);
        assert_non_null(m);
        for (size_t r = 0; r < v[i].repeat; r++)
            memcpy(m + r * strlen(v[i].msg), v[i].msg, strlen(v[i].msg));
        uint32_t start[8];
        sha256mb_iv(start);
        /* the same message in every lane of a 4-lane call */
        const uint8_t *lanes[SHA256MB_LANES] = {m, m, m, m};
        uint8_t got[SHA256MB_LANES][32];
        sha256mb_digest(SHA256MB_LANES, lanes, n, start, 0, got);
        for (size_t j = 0; j < SHA256MB_LANES; j++) {
            char hex[65];
            hex_of(got[j], hex);
            assert_string_equal(hex, v[i].digest);
        }
        free(m);
    }
}

/* 1 to 4 lanes of different messages, lengths 0..300 (every padding case:
 * one tail block or two) and whole chunks, against OpenSSL */
static void lanes_match_openssl(void **state)
{
    (void)state;
    skip_without_shani();
    const size_t max = 65536 + 300;
    uint8_t *buf = malloc(SHA256MB_LANES * max);
    assert_non_null(buf);
    uint64_t s = 7;
    fill_random(buf, SHA256MB_LANES * max, &s);
    size_t lens[310];
    size_t n_lens = 0;
    for (size_t l = 0; l <= 300; l++)
        lens[n_lens++] = l;
    lens[n_lens++] = 4096;
    lens[n_lens++] = 65536 - 1;
    lens[n_lens++] = 65536;
    lens[n_lens++] = 65536 + 300;
    uint32_t start[8];
    sha256mb_iv(start);
    for (size_t l = 0; l < n_lens; l++)
        for (size_t n = 1; n <= SHA256MB_LANES; n++) {
            const uint8_t *m[SHA256MB_LANES];
            uint8_t got[SHA256MB_LANES][32], want[32];
            for (size_t j = 0; j < n; j++)
                m[j] = buf + j * max + (l % 3); /* unaligned too */
            sha256mb_digest(n, m, lens[l] - (lens[l] > 65536 ? 3 : 0), start, 0, got);
            for (size_t j = 0; j < n; j++) {
                want_sha256(m[j], lens[l] - (lens[l] > 65536 ? 3 : 0), want);
                assert_memory_equal(got[j], want, 32);
            }
        }
    free(buf);
}

/* a message that continues a state which absorbed one block (HMAC's key
 * block) hashes as the block and the message together */
static void continued_state(void **state)
{
    (void)state;
    skip_without_shani();
    uint8_t block[64], msg[200], both[264], want[32], got[1][32];
    uint64_t s = 11;
    fill_random(block, sizeof(block), &s);
    fill_random(msg, sizeof(msg), &s);
    memcpy(both, block, 64);
    memcpy(both + 64, msg, sizeof(msg));
    uint32_t h[8];
    sha256mb_iv(h);
    sha256mb_block(h, block);
    for (size_t l = 0; l <= sizeof(msg); l++) {
        const uint8_t *m[1] = {msg};
        sha256mb_digest(1, m, l, h, 64, got);
        want_sha256(both, 64 + l, want);
        assert_memory_equal(got[0], want, 32);
    }
}

/* crypto_chunk_ids against crypto_chunk_id and against OpenSSL's own
 * SHA-256 / HMAC, for 1 to 9 chunks (whole groups of four and the rest) */
static void chunk_ids_as_one_by_one(bool encrypted, bool allow_shani)
{
    repo_keys k = {.encrypted = encrypted};
    uint64_t s = 99;
    fill_random(k.data_key, sizeof(k.data_key), &s);
    fill_random(k.id_key, sizeof(k.id_key), &s);
    sha256mb_allow(allow_shani);
    crypto_ctx *c = NULL;
    assert_int_equal(crypto_ctx_new(&c, &k, NULL), 0);
    const size_t len = 65536;
    uint8_t *buf = malloc(9 * len);
    assert_non_null(buf);
    fill_random(buf, 9 * len, &s);
    for (size_t n = 1; n <= 9; n++) {
        const uint8_t *m[9];
        uint8_t ids[9][ID_LEN], one[ID_LEN], want[32];
        for (size_t i = 0; i < n; i++)
            m[i] = buf + i * len;
        assert_int_equal(crypto_chunk_ids(c, n, m, len, ids), 0);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(crypto_chunk_id(c, m[i], len, one), 0);
            assert_memory_equal(ids[i], one, ID_LEN);
            if (encrypted) {
                unsigned outl = 0;
                assert_non_null(
                    HMAC(EVP_sha256(), k.id_key, sizeof(k.id_key), m[i], len, want, &outl));
            } else {
                want_sha256(m[i], len, want);
            }
            assert_memory_equal(ids[i], want, 32);
        }
    }
    free(buf);
    crypto_ctx_free(c);
    sha256mb_allow(true);
}

typedef struct ids_case {
    bool encrypted, allow_shani;
} ids_case;

static void chunk_ids(void **state)
{
    const ids_case *c = *state;
    chunk_ids_as_one_by_one(c->encrypted, c->allow_shani);
}

static ids_case plain = {false, true}, keyed = {true, true}, plain_openssl = {false, false},
                keyed_openssl = {true, false};

/* turned off, the module says so; turned on, it is in use exactly where
 * the CPU has SHA-NI (its self-test against OpenSSL passed) */
static void allow_switches_the_path(void **state)
{
    (void)state;
    sha256mb_allow(false);
    assert_false(sha256mb_usable());
    sha256mb_allow(true);
    assert_int_equal(sha256mb_usable(), sha256mb_cpu());
    print_message("SHA-NI path %s\n", sha256mb_usable() ? "in use" : "not available");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nist_vectors),
        cmocka_unit_test(lanes_match_openssl),
        cmocka_unit_test(continued_state),
        cmocka_unit_test_prestate(chunk_ids, &plain),
        cmocka_unit_test_prestate(chunk_ids, &keyed),
        cmocka_unit_test_prestate(chunk_ids, &plain_openssl),
        cmocka_unit_test_prestate(chunk_ids, &keyed_openssl),
        cmocka_unit_test(allow_switches_the_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
