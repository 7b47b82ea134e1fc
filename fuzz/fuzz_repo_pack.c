/* fuzz_repo_pack.c - a pack file (docs/formats/repository.md, "Pack"):
 * header, blobs, table, footer. Read when a repository loads its chunk map
 * (backup, verify, gc, restore) and when chunks are read back. Input: one
 * mode byte, then the pack. Mode bit 0 set: the footer's table checksum is
 * recomputed (reaching the table and blob parsers behind it). Every chunk
 * the table lists (up to 16) is then read, decompressed and checked. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <vmshadow/repo/repo.h>

#include "repo/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    uint8_t *pack = malloc(size ? size : 1);
    if (!pack)
        abort();
    memcpy(pack, data, size);
    if ((mode & 1) && size >= PACK_HEADER_LEN + PACK_FOOTER_LEN) {
        uint8_t *footer = pack + size - PACK_FOOTER_LEN;
        uint64_t toff = le64_get(footer), tlen = le64_get(footer + 8);
        if (toff <= size && tlen <= size - toff)
            crypto_sha256(pack + toff, tlen, footer + 24);
    }
    fuzz_repo_put("packs/5b/5bfb63f42e6f2676986cac47ae5f7ded.pack", 0, pack, size);
    free(pack);

    vmsh_repo *r = fuzz_repo_open();
    vmsh_error *err = NULL;
    chunk_reader *cr = NULL;
    static uint8_t out[CHUNK_SIZE];
    if (repo_load_map(r, &err) < 0 || chunk_reader_new(&cr, r, &err) < 0) {
        vmsh_error_free(err);
    } else {
        for (size_t i = 0; i < r->map.count && i < 16; i++)
            if (chunk_reader_read(cr, &r->map.locs[i], out, &err) < 0)
                vmsh_error_free(err), err = NULL;
    }
    chunk_reader_free(cr);
    vmsh_repo_free(r);
    return 0;
}
