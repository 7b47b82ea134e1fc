/* domxml.h - what vmshadow reads out of (and later rewrites in) libvirt
 * domain XML. Pure functions over a string: no libvirt connection, so the
 * parser is unit-tested and fuzzed on its own.
 *
 * Disk kinds (CLI.md `vms`; SPEC R6):
 *   file         a host-visible image file (type='file'), the only kind the VM
 *                writer captures
 *   block        a host block device (type='block', device disk/cdrom/floppy)
 *   network      a network source (type='network': iSCSI, NBD, RBD, Gluster,
 *                HTTP...; type='volume' of a network pool is reported as unknown)
 *   passthrough  a host device handed to the guest: device='lun' (SCSI
 *                pass-through), type='nvme', <hostdev> of type scsi, pci, usb,
 *                scsi_host or mdev
 *   empty        a removable drive with no medium
 *   unknown      anything else; reported and excluded, never guessed
 * Thread-safe: no shared state.
 */
#ifndef VMSH_HV_DOMXML_H
#define VMSH_HV_DOMXML_H

#include <stdbool.h>
#include <stddef.h>

#include <vmshadow/util/error.h>

typedef enum {
    VMSH_DISK_FILE,
    VMSH_DISK_BLOCK,
    VMSH_DISK_NETWORK,
    VMSH_DISK_PASSTHROUGH,
    VMSH_DISK_EMPTY,
    VMSH_DISK_UNKNOWN,
} vmsh_disk_kind;

/* "file", "block", "network", "passthrough", "empty", "unknown". */
const char *vmsh_disk_kind_name(vmsh_disk_kind kind);

typedef struct vmsh_domxml_disk {
    char *target; /* "vda"; for <hostdev> "hostdev0", "hostdev1"... */
    char *source; /* a path, "iscsi://host/iqn/lun", "pci 0000:03:00.0"...; NULL when empty */
    char *format; /* driver type ("qcow2", "raw"); NULL when not given */
    char *device; /* "disk", "cdrom", "floppy", "lun" or "hostdev" */
    char *type;   /* the element's type attribute ("file", "block", "network", "pci"...) */
    vmsh_disk_kind kind;
    bool readonly;
    bool shareable;
    bool has_backing_chain; /* a <backingStore> with a source: the image has a backing file */
} vmsh_domxml_disk;

typedef struct vmsh_domxml_iface {
    char *type;   /* "network", "bridge", "direct", "user", ... */
    char *source; /* network or bridge name (NULL for user) */
    char *mac;    /* NULL when libvirt was left to choose */
    char *model;
} vmsh_domxml_iface;

typedef struct vmsh_domxml {
    char *name;
    char *uuid;
    char *domain_type; /* "qemu", "kvm" */
    vmsh_domxml_disk *disks;
    size_t n_disks;
    vmsh_domxml_iface *ifaces;
    size_t n_ifaces;
    bool agent_channel;  /* an org.qemu.guest_agent.0 channel is configured */
    int agent_connected; /* live XML only: 1 connected, 0 disconnected, -1 not said */
    char *nvram;         /* firmware variables file, NULL when none */
    char *tpm_backend;   /* "emulator", "passthrough"... NULL when no TPM */
} vmsh_domxml;

/* Largest domain XML accepted: libvirt itself refuses far smaller documents. */
#define VMSH_DOMXML_MAX_BYTES (4u << 20)

/* Parses domain XML. Expected errors: -EINVAL (not well-formed, not a
 * <domain>, no name), -EFBIG. Never fetches DTDs or expands external
 * entities. *out is the caller's (vmsh_domxml_free). */
int vmsh_domxml_parse(vmsh_domxml **out, const char *xml, size_t len, vmsh_error **err);

void vmsh_domxml_free(vmsh_domxml *x);

#endif
