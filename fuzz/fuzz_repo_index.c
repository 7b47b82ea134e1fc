/* fuzz_repo_index.c - a file index object (docs/formats/repository.md,
 * "Object envelope" and "Index payload"), read by restore, extract, verify
 * and gc. Input: one mode byte, then the bytes. Mode bit 0 set: the bytes
 * are an index payload, put in a valid envelope (reaching the payload parser
 * behind the checksum); clear: they are the file as found on disk. The
 * payload bytes also go straight to index_parse. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <vmshadow/repo/repo.h>

#include "repo/internal.h"

#define NAME "a4fa7729e413ac6d576ae0bb91c7c3e746e2fcc918c92dc080c74a2e8ae6e7dd"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    vmsh_error *err = NULL;
    vmsh_file_index *idx = NULL;
    if (index_parse(data, size, "fuzz", &idx, &err) < 0)
        vmsh_error_free(err), err = NULL;
    vmsh_file_index_free(idx), idx = NULL;

    fuzz_repo_put("index/a4/" NAME, (mode & 1) ? OBJ_INDEX : 0, data, size);
    vmsh_repo *r = fuzz_repo_open();
    if (index_load(r, NAME, &idx, &err) < 0) {
        vmsh_error_free(err);
    } else {
        if (vmsh_file_index_count(idx) > vmsh_file_index_size(idx) / CHUNK_SIZE + 1)
            abort();
        vmsh_file_index_free(idx);
    }
    vmsh_repo_free(r);
    return 0;
}
