/* fuzz_domxml.c - libvirt domain XML (hv/domxml.h): from libvirt for live
 * VMs, and from a backup (which may come from another host or an attacker)
 * at restore. */
#include "fuzz.h"

#include <stdlib.h>

#include <vmshadow/hv/domxml.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vmsh_domxml *x = NULL;
    vmsh_error *err = NULL;
    if (vmsh_domxml_parse(&x, (const char *)data, size, &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    for (size_t i = 0; i < x->n_disks; i++)
        if (!x->disks[i].target || !vmsh_disk_kind_name(x->disks[i].kind))
            abort();
    vmsh_domxml_free(x);
    return 0;
}
