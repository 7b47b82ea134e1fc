/* fuzz_repo_index.c - a file index object (docs/formats/repository.md,
 * "Object envelope", "Index payload" and "Object binding"), read by restore,
 * extract, verify and gc. Input: one mode byte, then the bytes. The payload
 * bytes always go straight to index_parse too.
 *   bit 0: the bytes are an index payload, put in a valid envelope (reaching
 *          the checks behind the checksum); clear: the file as found on disk
 *   bit 1: a format version 2 repository (version 2 envelope)
 *   bit 2: the file is named by the payload's content ID (SHA-256), so that
 *          the name binding holds and the payload parser is reached
 *   bit 3: the encrypted version 2 repository: the payload is sealed there
 *          by object_write (bound to its name, the keyed content ID), so
 *          that the read path behind authentication is reached
 * Otherwise the file is named a4fa…, which the bytes do not hash to: the
 * binding must refuse it. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vmshadow/repo/repo.h>

#include "repo/internal.h"

#define NAME "a4fa7729e413ac6d576ae0bb91c7c3e746e2fcc918c92dc080c74a2e8ae6e7dd"

static void load(vmsh_repo *r, const char *name)
{
    vmsh_error *err = NULL;
    vmsh_file_index *idx = NULL;
    if (index_load(r, name, &idx, &err) < 0) {
        vmsh_error_free(err);
        return;
    }
    if (vmsh_file_index_count(idx) > vmsh_file_index_size(idx) / CHUNK_SIZE + 1)
        abort();
    vmsh_file_index_free(idx);
}

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

    if (mode & 8) {
        vmsh_repo *r = fuzz_repo_encrypted();
        uint8_t id[ID_LEN];
        char name[65];
        if (crypto_chunk_id(r->crypto, data, size, id) < 0)
            abort();
        vmsh_hex(id, ID_LEN, name);
        char *path = index_path(vmsh_repo_path(r), name);
        if (!path)
            abort();
        unlink(path);
        if (object_write(r, path, OBJ_INDEX, data, size, &err) < 0)
            vmsh_error_free(err);
        else
            load(r, name);
        unlink(path); /* one file at a time: the directory stays small */
        free(path);
        return 0;
    }
    int version = (mode & 2) ? 2 : 1;
    char name[65] = NAME, rel[80];
    if (mode & 4) {
        uint8_t h[32];
        crypto_sha256(data, size, h);
        vmsh_hex(h, sizeof(h), name);
    }
    snprintf(rel, sizeof(rel), "index/%.2s/%s", name, name);
    fuzz_repo_put_v(version, rel, (mode & 1) ? OBJ_INDEX : 0, data, size);
    vmsh_repo *r = fuzz_repo_open_v(version);
    load(r, name);
    if (mode & 4) {
        char *path = index_path(vmsh_repo_path(r), name);
        if (path)
            unlink(path);
        free(path);
    }
    vmsh_repo_free(r);
    return 0;
}
