/* scale_gen.c - `vmshadow-scale-gen`: builds the synthetic repositories of
 * bench/scale-bench.sh (issue 27) with the library's own writers, without
 * any chunk data.
 *
 *   vmshadow-scale-gen runs REPO N [K]    N chunk index entries in K runs
 *   vmshadow-scale-gen packs REPO N       N entries in pack tables of 1000
 *
 * `runs`: IDs generated already sorted (the first 8 bytes step through the
 * ID space, the rest random), written sequentially by the chunk index's
 * writer (docs/formats/repository.md, "Chunk index runs"); their packs do
 * not exist. K > 1 deals the entries round-robin into K runs (gc merges
 * more than 8). `packs`: pack files in the format of "Pack file" whose
 * blobs are 16 zero bytes each (never read by a backup): what a repository
 * looks like to vmshadow before issue 27, which loads every pack table. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vmshadow/repo/repo.h>

#include "repo/chunkindex.h"
#include "repo/internal.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int die(vmsh_error **err)
{
    fprintf(stderr, "vmshadow-scale-gen: %s\n", err && *err ? (*err)->message : "?");
    return 1;
}

static void make_id(uint8_t id[32], uint64_t i, uint64_t n)
{
    uint64_t step = UINT64_MAX / n;
    uint64_t p = i * step + (step > 1 ? next_rand() % step : 0);
    for (int b = 0; b < 8; b++)
        id[b] = (uint8_t)(p >> (56 - 8 * b));
    for (int b = 8; b < 32; b += 8) {
        uint64_t v = next_rand();
        memcpy(id + b, &v, 8);
    }
}

static int gen_runs(vmsh_repo *r, uint64_t n, unsigned k)
{
    vmsh_error *err = NULL;
    ci_key key;
    ci_key_init(&key, &r->keys);
    ci_writer **w = calloc(k, sizeof(*w));
    for (unsigned j = 0; j < k; j++)
        if (ci_writer_new(r, &key, false, &w[j], &err) < 0)
            return die(&err);
    uint8_t pack[16];
    for (uint64_t i = 0; i < n; i++) {
        ci_entry e = {.stored_len = 20000, .raw_len = 65536, .kind = 1};
        make_id(e.id, i, n);
        if (i % 1000 == 0)
            for (int b = 0; b < 16; b++)
                pack[b] = (uint8_t)next_rand();
        memcpy(e.pack, pack, 16);
        e.offset = 16 + (i % 1000) * 20000;
        if (ci_writer_add(w[i % k], &e, &err) < 0)
            return die(&err);
    }
    for (unsigned j = 0; j < k; j++)
        if (ci_writer_commit(w[j], NULL, &err) < 0)
            return die(&err);
    free(w);
    return 0;
}

static int gen_packs(vmsh_repo *r, uint64_t n)
{
    enum { PER = 1000, BLOB = 16 };
    size_t tl = (size_t)PER * PACK_ENTRY_LEN;
    size_t body = PACK_HEADER_LEN + (size_t)PER * BLOB;
    size_t total = body + tl + PACK_FOOTER_LEN;
    uint8_t *buf = malloc(total);
    vmsh_error *err = NULL;
    for (uint64_t i = 0; i < n; i += PER) {
        uint32_t e = (uint32_t)(n - i < PER ? n - i : PER);
        size_t t = PACK_HEADER_LEN + (size_t)e * BLOB, len = t + (size_t)e * PACK_ENTRY_LEN;
        memset(buf, 0, total);
        memcpy(buf, "VMSHPACK", 8);
        le32_put(buf + 8, 1);
        for (uint32_t j = 0; j < e; j++) {
            uint8_t *p = buf + t + (size_t)j * PACK_ENTRY_LEN;
            make_id(p, i + j, n); /* the same IDs as `runs` would make */
            le64_put(p + 32, PACK_HEADER_LEN + (uint64_t)j * BLOB);
            le32_put(p + 40, BLOB);
            le32_put(p + 44, 65536);
            le32_put(p + 48, BLOB_ZSTD);
        }
        uint8_t *f = buf + len;
        le64_put(f, t);
        le64_put(f + 8, (uint64_t)e * PACK_ENTRY_LEN);
        le32_put(f + 16, e);
        le32_put(f + 20, 1);
        crypto_sha256(buf + t, (size_t)e * PACK_ENTRY_LEN, f + 24);
        memcpy(f + 56, "VMSHPEND", 8);
        uint8_t raw[16];
        char name[33], path[64];
        for (int b = 0; b < 16; b++)
            raw[b] = (uint8_t)next_rand();
        vmsh_hex(raw, 16, name);
        snprintf(path, sizeof(path), "packs/%.2s/%s.pack", name, name);
        if (r->store->ops->put(r->store, path, buf, len + PACK_FOOTER_LEN, &err) < 0)
            return die(&err);
    }
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "runs") != 0 && strcmp(argv[1], "packs") != 0)) {
        fprintf(stderr, "usage: vmshadow-scale-gen runs|packs REPO N [K]\n");
        return 2;
    }
    uint64_t n = strtoull(argv[3], NULL, 10);
    unsigned k = argc > 4 ? (unsigned)atoi(argv[4]) : 1;
    if (n == 0 || k == 0)
        return 2;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    if (vmsh_repo_open(&r, argv[2], NULL, &err) < 0)
        return die(&err);
    double t0 = now_s();
    int rc = argv[1][0] == 'r' ? gen_runs(r, n, k) : gen_packs(r, n);
    if (rc == 0)
        printf("%s: %" PRIu64 " entries in %.1f s\n", argv[1], n, now_s() - t0);
    vmsh_repo_free(r);
    return rc;
}
