/* fuzz_proc_split.c - the shell-like command splitter of script writers
 * (util/proc.h vmsh_proc_split): the command line comes from a writer file. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include <vmshadow/util/proc.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = fuzz_strndup(data, size);
    char **argv = NULL;
    vmsh_error *err = NULL;
    if (vmsh_proc_split(line, &argv, &err) < 0) {
        vmsh_error_free(err);
    } else {
        /* Words are never longer, together, than the line they came from. */
        size_t total = 0;
        for (size_t i = 0; argv[i]; i++)
            total += strlen(argv[i]);
        if (total > size)
            abort();
        vmsh_proc_argv_free(argv);
    }
    free(line);
    return 0;
}
