/* fuzz_repo_run.c - a chunk index run (docs/formats/repository.md, "Chunk
 * index runs"): header, authenticated 4 KiB blocks of entries, fence pages
 * and the top summary. Read by every command that looks a chunk up (backup,
 * restore, verify) and merged by gc. Input: one mode byte, then the run.
 * Mode bit 0 set: every block's tag is recomputed (reaching the entry
 * parser and the lookups behind the checks). Then the run is opened as a
 * repository's run, up to 16 IDs it names (and one it does not) are looked
 * up, and the runs are merged. */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include <vmshadow/repo/repo.h>

#include "repo/chunkindex.h"
#include "repo/internal.h"

#define RUN_NAME "5bfb63f42e6f2676986cac47ae5f7ded"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    if (size > (4u << 20))
        return 0;
    uint8_t *run = malloc(size ? size : 1);
    if (!run)
        abort();
    memcpy(run, data, size);
    ci_key k = {0};
    if (mode & 1)
        for (size_t off = 0; off + CI_BLOCK <= size; off += CI_BLOCK)
            ci_block_tag(&k, RUN_NAME, off / CI_BLOCK, run + off, run + off + CI_TAG_OFF);
    /* the pure parsers */
    ci_header h;
    vmsh_error *err = NULL;
    if (size >= CI_BLOCK && ci_parse_header(run, &k, RUN_NAME, size, &h, &err) == 0) {
        ci_entry e[CI_PER_BLOCK];
        uint32_t n = 0;
        for (uint64_t b = 0; b < h.n_blocks && (1 + b + 1) * CI_BLOCK <= size && b < 8; b++)
            if (ci_parse_block(run + (1 + b) * CI_BLOCK, &k, RUN_NAME, &h, b, e, &n, &err) < 0)
                vmsh_error_free(err), err = NULL;
    }
    vmsh_error_free(err), err = NULL;
    /* through a repository */
    fuzz_repo_put("index/runs/" RUN_NAME ".run", 0, run, size);
    vmsh_repo *r = fuzz_repo_open();
    ci_set *s = NULL;
    if (ci_set_open(r, &s, &err) == 0) {
        for (size_t i = 0; i < 16; i++) {
            size_t off = CI_BLOCK + CI_BLOCK_HDR + i * CI_ENTRY_LEN;
            uint8_t id[32] = {0};
            if (off + 32 <= size)
                memcpy(id, run + off, 32);
            ci_entry got;
            if (ci_set_lookup(s, id, &got, &err) < 0)
                vmsh_error_free(err), err = NULL;
        }
        ci_set_free(s);
    }
    vmsh_error_free(err), err = NULL;
    if (ci_merge_all(r, &k, NULL, NULL, &err) < 0)
        vmsh_error_free(err), err = NULL;
    vmsh_repo_free(r);
    free(run);
    /* the merge wrote a run of another name: leave the next input alone */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/index/runs", fuzz_repo_dir());
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));)
        if (de->d_name[0] != '.')
            unlinkat(dirfd(d), de->d_name, 0);
    if (d)
        closedir(d);
    return 0;
}
