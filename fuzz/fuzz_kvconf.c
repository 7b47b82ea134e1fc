/* fuzz_kvconf.c - the "key = value" format of the config file and of script
 * writer files (util/kvconf.h): parse, then read every key the way the CLI
 * and the script writers do. */
#include "fuzz.h"

#include <stdlib.h>

#include <vmshadow/util/kvconf.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vmsh_kvconf *c = NULL;
    vmsh_error *err = NULL;
    if (vmsh_kvconf_parse(&c, (const char *)data, size, "fuzz.conf", &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    static const char *const allowed[] = {"connect", "repo", "timeout", "name", NULL};
    if (vmsh_kvconf_check_keys(c, allowed, &err) < 0)
        vmsh_error_free(err), err = NULL;
    for (size_t i = 0; i < vmsh_kvconf_count(c); i++) {
        const char *k = vmsh_kvconf_key_at(c, i);
        if (!vmsh_kvconf_get(c, k) || vmsh_kvconf_line(c, k) < 1)
            abort(); /* a listed key must be found, with its line */
        long v = 0;
        if (vmsh_kvconf_get_int(c, k, -1000, 86400, &v, &err) < 0)
            vmsh_error_free(err), err = NULL;
    }
    vmsh_kvconf_free(c);
    return 0;
}
