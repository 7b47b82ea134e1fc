/* fuzz_script_writer.c - a script-writer file (writers/script_writer.h),
 * loaded from disk as `vmshadow backup` loads /etc/vmshadow/writers.d/ *.conf.
 * Loading parses and splits every command; nothing is run. */
#include "fuzz.h"

#include <stdio.h>

#include <vmshadow/coord/writer.h>
#include <vmshadow/writers/script_writer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[4200];
    if (!path[0])
        snprintf(path, sizeof(path), "%s/app.conf", fuzz_scratch());
    fuzz_write_file(path, data, size);
    vmsh_writer_ops *w = NULL;
    vmsh_error *err = NULL;
    if (vmsh_script_writer_load(path, &w, &err) < 0)
        vmsh_error_free(err);
    else
        vmsh_writer_free(w);
    return 0;
}
