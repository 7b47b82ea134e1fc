/* driver.c - replays a fuzz target over corpus files, without libFuzzer.
 *
 *   fuzz_<name>_replay PATH...
 *
 * Each PATH is a file or a directory (its regular files, in name order). Every
 * file is one input to LLVMFuzzerTestOneInput. Exits 0 when every input ran
 * (a crash ends the process, which is the failure), 2 on a usage error or when
 * no input was found: an empty corpus would make the test pass vacuously. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    /* A copy of exactly `len` bytes, so that ASan sees reads past the end. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS-DIR-OR-FILE...\n", argv[0]);
        return 2;
    }
    size_t ran = 0;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        /* Absolute: a target may change directory (fuzz_cli does). */
        char *abs = realpath(argv[i], NULL);
        if (abs)
            argv[i] = abs; /* leaked on purpose: lives until exit */
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= run_file(argv[i]) < 0;
            ran++;
            continue;
        }
        struct dirent **ents = NULL;
        int n = scandir(argv[i], &ents, NULL, by_name);
        if (n < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], ents[k]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                failed |= run_file(path) < 0;
                ran++;
            }
            free(ents[k]);
        }
        free(ents);
    }
    printf("%zu inputs replayed\n", ran);
    if (ran == 0) {
        fprintf(stderr, "no input found: the corpus is empty\n");
        return 2;
    }
    return failed ? 1 : 0;
}
