/* fuzz_domxml_edit.c - rewriting a backup's domain XML for a restore
 * (hv/domxml_edit.h). The first byte chooses the edits (new name, UUID,
 * MACs, disk paths, firmware file, interface actions, dropping host
 * devices); the rest is the XML. A rewritten document must parse again;
 * what the edit took out of the host's is what vmsh_domxml_host_resources
 * lists, and the rewritten document holds nothing more of it (issue 20). */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++, size--;
    static const vmsh_disk_repath disks[] = {
        {.target = "vda", .path = "/var/lib/vmshadow/restore/vda.qcow2", .format = "qcow2"},
        {.target = "sda", .path = "/var/lib/vmshadow/restore/sda.img"},
        {.target = "hdc", .path = "/tmp/x'\"<&>.raw", .format = "raw"},
        {.target = "vdb",
         .path = "/var/lib/vmshadow/restore/vdb.overlay.qcow2",
         .format = "qcow2",
         .backing = "/var/lib/vmshadow/restore/vdb.base.raw",
         .backing_format = "raw"},
    };
    static const vmsh_iface_action ifaces[] = {VMSH_IFACE_DISCONNECT, VMSH_IFACE_KEEP,
                                               VMSH_IFACE_DISCONNECT};
    vmsh_domxml_edit e = {
        .name = sel & 1 ? "restored-<&>'\"" : NULL,
        .new_uuid = sel & 2,
        .new_macs = sel & 4,
        .disks = sel & 8 ? disks : NULL,
        .n_disks = sel & 8 ? sizeof(disks) / sizeof(disks[0]) : 0,
        .nvram = sel & 16 ? "/var/lib/libvirt/qemu/nvram/restored_VARS.fd" : NULL,
        .ifaces = sel & 32 ? ifaces : NULL,
        .n_ifaces = sel & 32 ? 3 : 0,
        .drop_host_devices = sel & 64,
    };
    char **stripped = NULL, **listed = NULL;
    size_t n_stripped = 0, n_listed = 0;
    e.stripped = &stripped;
    e.n_stripped = &n_stripped;
    char *out = NULL;
    vmsh_error *err = NULL;
    int lr = vmsh_domxml_host_resources((const char *)data, size, &e, &listed, &n_listed, &err);
    vmsh_error_free(err);
    err = NULL;
    if (vmsh_domxml_edit_apply((const char *)data, size, &e, &out, &err) < 0) {
        vmsh_error_free(err);
        free_list(listed, n_listed);
        return 0;
    }
    if (e.drop_host_devices) {
        /* the dry run lists what the restore takes out, one for one */
        if (lr < 0 || n_listed != n_stripped) {
            fprintf(stderr, "listed %zu, stripped %zu\n", n_listed, n_stripped);
            abort();
        }
        for (size_t i = 0; i < n_listed; i++)
            if (strcmp(listed[i], stripped[i]) != 0)
                abort();
        /* and nothing of the host is left to take out */
        char **again = NULL;
        size_t n_again = 0;
        vmsh_domxml_edit e2 = {.disks = e.disks, .n_disks = e.n_disks, .drop_host_devices = true};
        if (vmsh_domxml_host_resources(out, strlen(out), &e2, &again, &n_again, NULL) == 0 &&
            n_again > 0) {
            fprintf(stderr, "still in the rewritten definition: %s\n", again[0]);
            abort();
        }
        free_list(again, n_again);
    } else if (n_stripped != 0) {
        abort();
    }
    free_list(listed, n_listed);
    free_list(stripped, n_stripped);
    /* What we hand to libvirt must at least be a domain we can read. */
    vmsh_domxml *x = NULL;
    if (vmsh_domxml_parse(&x, out, strlen(out), &err) < 0) {
        vmsh_domxml *orig = NULL;
        vmsh_error *e2 = NULL;
        int was_ok = vmsh_domxml_parse(&orig, (const char *)data, size, &e2) == 0;
        vmsh_domxml_free(orig);
        vmsh_error_free(e2);
        if (was_ok) {
            fprintf(stderr, "the rewritten XML does not parse: %s\n", err->message);
            abort();
        }
        vmsh_error_free(err);
    } else if (e.drop_host_devices) {
        for (size_t i = 0; i < x->n_disks; i++)
            if (x->disks[i].kind == VMSH_DISK_BLOCK || x->disks[i].kind == VMSH_DISK_NETWORK ||
                x->disks[i].kind == VMSH_DISK_PASSTHROUGH ||
                strcmp(x->disks[i].device, "hostdev") == 0) {
                fprintf(stderr, "host device %s kept despite drop_host_devices\n",
                        x->disks[i].target);
                abort();
            }
    }
    vmsh_domxml_free(x);
    free(out);
    return 0;
}
