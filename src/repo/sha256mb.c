/* sha256mb.c - SHA-256 of up to four messages at once with SHA-NI
 * (sha256mb.h). Written from FIPS 180-4 and Intel's description of the SHA
 * extensions: the state lives in two registers, ABEF and CDGH; SHA256RNDS2
 * does two rounds, SHA256MSG1/MSG2 the message schedule. Each lane's rounds
 * depend on its previous ones; the lanes' do not, so one loop body carries
 * all lanes and the CPU overlaps them. */
#include "sha256mb.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

void sha256mb_iv(uint32_t h[8])
{
    memcpy(h, iv, sizeof(iv));
}

#ifdef HAVE_SHANI

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define SHANI    __attribute__((target("sha,ssse3,sse4.1")))
#define LANES_FN SHANI __attribute__((always_inline)) static inline

/* Big-endian words of a block, and the state's word order, swap bytes. */
SHANI static inline __m128i bswap32x4(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL));
}

/* h[0..7] = a..h  <->  ABEF (A in the top dword) and CDGH */
SHANI static inline void state_in(const uint32_t h[8], __m128i *abef, __m128i *cdgh)
{
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    *abef = _mm_alignr_epi8(cdab, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
}

SHANI static inline void state_out(__m128i abef, __m128i cdgh, uint32_t h[8])
{
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* `blocks` 64-byte blocks of each of N lanes; N is a constant in every
 * caller, so the loops over lanes unroll into independent instruction
 * streams. Group g holds rounds 4g..4g+3 and schedule words w[4g..4g+3]:
 * w[t] = s1(w[t-2]) + w[t-7] + s0(w[t-15]) + w[t-16], of which MSG1 adds
 * the s0 terms, the alignr the w[t-7] words, MSG2 the s1 terms. */
LANES_FN void lanes(int N, uint32_t (*h)[8], const uint8_t *const *msg, size_t blocks)
{
    __m128i abef[SHA256MB_LANES], cdgh[SHA256MB_LANES];
    for (int j = 0; j < N; j++)
        state_in(h[j], &abef[j], &cdgh[j]);
    for (size_t b = 0; b < blocks; b++) {
        __m128i abef0[SHA256MB_LANES], cdgh0[SHA256MB_LANES], w[SHA256MB_LANES][4];
        for (int j = 0; j < N; j++) {
            abef0[j] = abef[j];
            cdgh0[j] = cdgh[j];
        }
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m128i k = _mm_loadu_si128((const __m128i *)&K[4 * g]);
#pragma GCC unroll 4
            for (int j = 0; j < N; j++) {
                __m128i x;
                if (g < 4) {
                    x = bswap32x4(_mm_loadu_si128((const __m128i *)(msg[j] + 64 * b + 16 * g)));
                } else {
                    x = _mm_sha256msg1_epu32(w[j][g & 3], w[j][(g + 1) & 3]);
                    x = _mm_add_epi32(x, _mm_alignr_epi8(w[j][(g + 3) & 3], w[j][(g + 2) & 3], 4));
                    x = _mm_sha256msg2_epu32(x, w[j][(g + 3) & 3]);
                }
                w[j][g & 3] = x;
                __m128i kw = _mm_add_epi32(x, k);
                cdgh[j] = _mm_sha256rnds2_epu32(cdgh[j], abef[j], kw);
                abef[j] = _mm_sha256rnds2_epu32(abef[j], cdgh[j], _mm_shuffle_epi32(kw, 0x0E));
            }
        }
        for (int j = 0; j < N; j++) {
            abef[j] = _mm_add_epi32(abef[j], abef0[j]);
            cdgh[j] = _mm_add_epi32(cdgh[j], cdgh0[j]);
        }
    }
    for (int j = 0; j < N; j++)
        state_out(abef[j], cdgh[j], h[j]);
}

SHANI static void lanes1(uint32_t (*h)[8], const uint8_t *const *m, size_t b)
{
    lanes(1, h, m, b);
}
SHANI static void lanes2(uint32_t (*h)[8], const uint8_t *const *m, size_t b)
{
    lanes(2, h, m, b);
}
SHANI static void lanes3(uint32_t (*h)[8], const uint8_t *const *m, size_t b)
{
    lanes(3, h, m, b);
}
SHANI static void lanes4(uint32_t (*h)[8], const uint8_t *const *m, size_t b)
{
    lanes(4, h, m, b);
}

typedef void lanes_fn(uint32_t (*h)[8], const uint8_t *const *m, size_t b);
static lanes_fn *const lanes_by_n[SHA256MB_LANES + 1] = {NULL, lanes1, lanes2, lanes3, lanes4};

bool sha256mb_cpu(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return false;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & bit_SHA) != 0;
}

void sha256mb_block(uint32_t h[8], const uint8_t block[64])
{
    const uint8_t *m[1] = {block};
    lanes1((uint32_t(*)[8])h, m, 1);
}

void sha256mb_digest(size_t n, const uint8_t *const *msg, size_t len, const uint32_t start[8],
                     uint64_t prefix, uint8_t (*out)[32])
{
    uint32_t h[SHA256MB_LANES][8];
    for (size_t j = 0; j < n; j++)
        memcpy(h[j], start, sizeof(h[j]));
    lanes_fn *fn = lanes_by_n[n];
    size_t whole = len / 64, rest = len % 64;
    if (whole)
        fn(h, msg, whole);
    /* the padding: the rest, 0x80, zeros, the bit length big-endian */
    uint8_t tail[SHA256MB_LANES][128];
    const uint8_t *tp[SHA256MB_LANES];
    size_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (prefix + len) * 8;
    for (size_t j = 0; j < n; j++) {
        memset(tail[j], 0, tail_len);
        memcpy(tail[j], msg[j] + 64 * whole, rest);
        tail[j][rest] = 0x80;
        for (int i = 0; i < 8; i++)
            tail[j][tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
        tp[j] = tail[j];
    }
    fn(h, tp, tail_len / 64);
    for (size_t j = 0; j < n; j++)
        for (int i = 0; i < 8; i++) {
            out[j][4 * i] = (uint8_t)(h[j][i] >> 24);
            out[j][4 * i + 1] = (uint8_t)(h[j][i] >> 16);
            out[j][4 * i + 2] = (uint8_t)(h[j][i] >> 8);
            out[j][4 * i + 3] = (uint8_t)h[j][i];
        }
}

/* Every lane count, lengths around the padding's edges, and a message that
 * continues a key block, against OpenSSL: a wrong digest here would give
 * chunks IDs no other vmshadow computes, so any mismatch turns this path
 * off for the process. */
static bool self_test(void)
{
    static const size_t lens[] = {0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 65536};
    const size_t max = 65536 + 64;
    uint8_t *buf = malloc(SHA256MB_LANES * max);
    if (!buf)
        return false;
    uint32_t x = 0x9e3779b9;
    for (size_t i = 0; i < SHA256MB_LANES * max; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
    bool ok = true;
    for (size_t l = 0; ok && l < sizeof(lens) / sizeof(lens[0]); l++)
        for (size_t n = 1; ok && n <= SHA256MB_LANES; n++)
            for (uint64_t prefix = 0; ok && prefix <= 64; prefix += 64) {
                uint32_t start[8];
                sha256mb_iv(start);
                if (prefix)
                    sha256mb_block(start, buf + max - 64);
                const uint8_t *m[SHA256MB_LANES];
                uint8_t got[SHA256MB_LANES][32], want[32];
                for (size_t j = 0; j < n; j++)
                    m[j] = buf + j * max;
                sha256mb_digest(n, m, lens[l], start, prefix, got);
                for (size_t j = 0; ok && j < n; j++) {
                    EVP_MD_CTX *c = EVP_MD_CTX_new();
                    unsigned outl = 0;
                    ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
                         (!prefix || EVP_DigestUpdate(c, buf + max - 64, 64)) &&
                         EVP_DigestUpdate(c, m[j], lens[l]) && EVP_DigestFinal_ex(c, want, &outl) &&
                         memcmp(got[j], want, 32) == 0;
                    EVP_MD_CTX_free(c);
                }
            }
    free(buf);
    return ok;
}

static bool g_usable;
static atomic_bool g_allowed = true;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void probe(void)
{
    g_usable = sha256mb_cpu() && self_test();
}

bool sha256mb_usable(void)
{
    pthread_once(&g_once, probe);
    return g_usable && atomic_load(&g_allowed);
}

#else /* not x86-64: OpenSSL hashes everything */

bool sha256mb_cpu(void)
{
    return false;
}

bool sha256mb_usable(void)
{
    return false;
}

void sha256mb_block(uint32_t h[8], const uint8_t block[64])
{
    (void)h, (void)block;
    abort();
}

void sha256mb_digest(size_t n, const uint8_t *const *msg, size_t len, const uint32_t start[8],
                     uint64_t prefix, uint8_t (*out)[32])
{
    (void)n, (void)msg, (void)len, (void)start, (void)prefix, (void)out;
    abort();
}

static atomic_bool g_allowed = true;

#endif

void sha256mb_allow(bool allow)
{
    atomic_store(&g_allowed, allow);
}
