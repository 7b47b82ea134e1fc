/* compress.c - how a new chunk is compressed (issue 27 point 5).
 *
 * Measured on the day-1 benchmark image (bench/make_images.py; 2.57 GB of
 * non-zero 64 KiB chunks, half of them random): zstd level 1 took 3.65 CPU-s,
 * 0.23 s of it on the ~19,700 random chunks that end up stored raw (~12 us
 * each to find out). A byte histogram of 4 KiB sampled across the chunk
 * takes ~1 us and recognises those chunks before zstd runs; the rest go to
 * zstd as before, which still decides raw or compressed by its result. */
#include "internal.h"

#include <errno.h>

#include <string.h>
#include <zstd.h>

#define PROBE_SAMPLES 8
#define PROBE_BYTES   512

bool chunk_looks_random(const uint8_t *p, size_t len)
{
    if (len < (size_t)PROBE_SAMPLES * PROBE_BYTES)
        return false; /* short tails: zstd is cheap there */
    uint32_t h[256];
    memset(h, 0, sizeof(h));
    size_t step = len / PROBE_SAMPLES;
    for (size_t s = 0; s < PROBE_SAMPLES; s++) {
        const uint8_t *q = p + s * step;
        for (size_t k = 0; k < PROBE_BYTES; k++)
            h[q[k]]++;
    }
    /* Pearson's chi-square against a uniform byte distribution, in
     * integers: chi2 = 256 * sum(h^2) / n - n. Random bytes give ~255
     * (standard deviation ~23); text, code, file system metadata, sparse or
     * repetitive data give tens of thousands. Below 4 x 255 the data is as
     * good as random: zstd would not save the 1/32 that store_chunk asks
     * for (only data whose bytes are uniform and which repeats itself
     * within the chunk, such as one random block written twice, escapes
     * the probe: it is stored raw, correct but larger). */
    uint64_t n = (uint64_t)PROBE_SAMPLES * PROBE_BYTES, ss = 0;
    for (size_t i = 0; i < 256; i++)
        ss += (uint64_t)h[i] * h[i];
    return 256 * ss < (n + 4 * 255) * n;
}

/* zstd's fast (negative) levels on 64 KiB chunks (issue 27 point 5): for a
 * source of at most 128 KiB zstd uses a hash table of 2^12 entries and
 * matches of 5 bytes or more. 2^11 entries and 6 bytes spend 15-17 % less
 * CPU for 8-9 % more compressed bytes on the day-1 image's compressible
 * chunks (2.78 -> 2.36 CPU-s for 1.28 GB, 534 -> 580 MB; a tar of /usr:
 * 2.45 -> 2.02 CPU-s, 439 -> 473 MB): less CPU for the same bytes than
 * zstd's next levels (-2: 2.70 CPU-s, 566 MB; -3: 2.56, 605). Measured
 * with a grid of hash logs 10-16, minimum matches 4-7 and levels -1 to -5
 * (bench/README.md, "Less CPU per byte"). Positive levels are zstd's own.
 * The frames are ordinary zstd frames: readers do not care. */
#define FAST_HASH_LOG  11
#define FAST_MIN_MATCH 6

int zstd_setup(ZSTD_CCtx *cctx, int level)
{
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)))
        return -ENOMEM;
    if (level < 0 && (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_hashLog, FAST_HASH_LOG)) ||
                      ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_minMatch, FAST_MIN_MATCH))))
        return -ENOMEM;
    return 0;
}
