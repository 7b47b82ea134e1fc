/* domxml_edit.h - rewriting libvirt domain XML for a restore (SPEC R12-R14,
 * CLI.md `restore --to`, `--as`). Pure: a string in, a string out; the
 * parser never fetches anything or expands external entities. */
#ifndef VMSH_HV_DOMXML_EDIT_H
#define VMSH_HV_DOMXML_EDIT_H

#include <stdbool.h>
#include <stddef.h>

#include <vmshadow/util/error.h>

typedef enum {
    VMSH_IFACE_KEEP,       /* the switch exists: keep the interface as it is */
    VMSH_IFACE_DISCONNECT, /* the switch is gone: link down, attached to nothing */
} vmsh_iface_action;

typedef struct vmsh_disk_repath {
    const char *target; /* "vda" */
    const char *path;   /* the restored image */
    const char *format; /* its format ("qcow2", "raw"); NULL keeps the driver type */
    /* When set, `path` is an overlay on this image (of `backing_format`):
     * the disk's old backing chain goes below it. */
    const char *backing;
    const char *backing_format;
} vmsh_disk_repath;

typedef struct vmsh_domxml_edit {
    const char *name;              /* new name; NULL keeps it */
    bool new_uuid;                 /* drop <uuid>: libvirt assigns a new one */
    bool new_macs;                 /* drop every <mac>: libvirt assigns new addresses */
    const vmsh_disk_repath *disks; /* disks whose image moved (R13) */
    size_t n_disks;
    const char *nvram; /* new firmware variables path; NULL keeps it */
    /* per <interface>, in document order; NULL or fewer entries: keep */
    const vmsh_iface_action *ifaces;
    size_t n_ifaces;
    /* Drop host devices: <hostdev> and disks of kind block, network,
     * passthrough. A backup may come from another host or an attacker: it
     * must not attach this host's devices without being told (issue 8). */
    bool drop_host_devices;
} vmsh_domxml_edit;

/* Applies `e` to `xml`; *out is the new XML (malloc'ed). Expected errors:
 * -EINVAL (not a domain, a disk target in `e` that the XML lacks). Runtime
 * state is dropped as well (the domain id, <seclabel> of type dynamic,
 * aliases are left to libvirt). */
int vmsh_domxml_edit_apply(const char *xml, size_t len, const vmsh_domxml_edit *e, char **out,
                           vmsh_error **err);

#endif
