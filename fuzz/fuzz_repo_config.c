/* fuzz_repo_config.c - a repository's config file (docs/formats/
 * repository.md, "config"), read by every command that opens a repository,
 * which may be damaged or another user's. No key file is given, so an
 * encrypted config is checked up to the key derivation (whose bounds are
 * part of what is fuzzed) and refused there with -EACCES. */
#include "fuzz.h"

#include <stdio.h>
#include <sys/stat.h>

#include <vmshadow/repo/repo.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[4200], cfg[4300];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "%s/cfgrepo", fuzz_scratch());
        mkdir(dir, 0700);
        snprintf(cfg, sizeof(cfg), "%s/config", dir);
    }
    fuzz_write_file(cfg, data, size);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    if (vmsh_repo_open(&r, dir, NULL, &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    (void)vmsh_repo_id(r), (void)vmsh_repo_compression_level(r);
    vmsh_repo_free(r);
    return 0;
}
