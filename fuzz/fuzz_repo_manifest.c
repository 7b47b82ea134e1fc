/* fuzz_repo_manifest.c - a backup manifest (docs/formats/repository.md,
 * "Manifest"), read by list, show, restore, verify, prune and gc. Input: one
 * mode byte, then the bytes. Mode bit 0 set: the bytes are the manifest's
 * JSON, put in a valid envelope; clear: they are the file as found. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>

#include "repo/internal.h"

#define ID "2a64f75c7c5c789d"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    fuzz_repo_put("backups/" ID, (mode & 1) ? OBJ_MANIFEST : 0, data, size);
    vmsh_repo *r = fuzz_repo_open();
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
        for (size_t i = 0; i < b->n_files; i++)
            if (!vmsh_backup_info_file(b, b->files[i].name))
                abort();
        vmsh_backup_info_free(b);
    }
    vmsh_repo_free(r);
    return 0;
}
