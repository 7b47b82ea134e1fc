/* fuzz_repo_manifest.c - a backup manifest (docs/formats/repository.md,
 * "Manifest" and "Object binding"), read by list, show, restore, verify,
 * prune and gc. Input: one mode byte, then the bytes.
 *   bit 0: the bytes are the manifest's JSON, put in a valid envelope;
 *          clear: they are the file as found
 *   bit 1: a format version 2 repository (version 2 envelope)
 *   bit 2: the encrypted version 2 repository: the JSON is sealed there by
 *          object_write, bound to the file name (backup 2a64f75c7c5c789d),
 *          reaching the parser behind authentication
 * The manifest must name the backup of its file name (2a64f75c7c5c789d). */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>

#include "repo/internal.h"

#define ID "2a64f75c7c5c789d"

static void read_all(vmsh_repo *r)
{
    vmsh_error *err = NULL;
    /* vmsh_repo_list reads every manifest the way `list` and `prune` do. */
    vmsh_backup_info *list = NULL;
    size_t n = 0;
    if (vmsh_repo_list(r, &list, &n, &err) < 0)
        vmsh_error_free(err), err = NULL;
    else
        vmsh_backup_info_array_free(list, n);
    vmsh_backup_info *b = NULL;
    if (vmsh_repo_backup_info(r, ID, &b, &err) < 0) {
        vmsh_error_free(err);
    } else {
        if (strcmp(b->id, ID) != 0) /* bound to its name */
            abort();
        for (size_t i = 0; i < b->n_files; i++)
            if (!vmsh_backup_info_file(b, b->files[i].name))
                abort();
        vmsh_backup_info_free(b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    if (mode & 4) {
        vmsh_repo *r = fuzz_repo_encrypted();
        char *path = manifest_path(vmsh_repo_path(r), ID);
        vmsh_error *err = NULL;
        if (!path)
            abort();
        unlink(path);
        if (object_write(r, path, OBJ_MANIFEST, data, size, &err) < 0)
            vmsh_error_free(err);
        else
            read_all(r);
        unlink(path);
        free(path);
        return 0;
    }
    int version = (mode & 2) ? 2 : 1;
    fuzz_repo_put_v(version, "backups/" ID, (mode & 1) ? OBJ_MANIFEST : 0, data, size);
    vmsh_repo *r = fuzz_repo_open_v(version);
    read_all(r);
    vmsh_repo_free(r);
    return 0;
}
