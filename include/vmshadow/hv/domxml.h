/* domxml.h - what vmshadow reads out of (and later rewrites in) libvirt
 * domain XML. Pure functions over a string: no libvirt connection, so the
 * parser is unit-tested and fuzzed on its own.
 *
 * Disk kinds (CLI.md `vms`; SPEC R6 as rewritten for issue 25: every
 * virtual disk is captured wherever it lives, only pass-through is not):
 *   file         a host-visible image file (type='file')
 *   block        a host block device: type='block' (LVM LV, partition, dm,
 *                multipath, whole disk), or a type='file' source that is a
 *                device node (vmsh_domxml_mark_block_nodes)
 *   network      a network source QEMU opens itself (type='network': RBD,
 *                iSCSI through QEMU, NBD, Gluster, HTTP...)
 *   volume       a storage-pool volume (type='volume'), resolved through its
 *                pool by the hypervisor layer (vmsh_domxml_disk_set_volume):
 *                `storage` then says what it is stored as (file, block,
 *                network) and `source` is its path
 *   passthrough  a host device handed to the guest: device='lun' (SCSI
 *                pass-through), type='nvme', vhost-user and vDPA backends,
 *                <hostdev> of type scsi, pci, usb, scsi_host or mdev
 *   empty        a removable drive with no medium
 *   unknown      anything else (type='dir'...); reported and excluded
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
    VMSH_DISK_VOLUME,
} vmsh_disk_kind;

/* "file", "block", "network", "passthrough", "empty", "unknown", "volume". */
const char *vmsh_disk_kind_name(vmsh_disk_kind kind);

/* A <host> of a network disk's <source>, as the definition gives it. */
typedef struct vmsh_domxml_host {
    char *name;      /* host name or address; NULL for a unix socket */
    char *port;      /* NULL: the protocol's default */
    char *transport; /* "tcp", "unix", "rdma"; NULL: tcp */
    char *socket;    /* transport='unix': the socket path */
} vmsh_domxml_host;

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
    char *protocol;         /* type='network': "rbd", "nbd", "iscsi"...; NULL otherwise */
    char *pool, *volume;    /* type='volume': the pool and the volume's name */
    /* What the disk's bytes are stored on: the kind itself, but for a
     * volume the kind of its pool's storage once resolved (UNKNOWN until
     * then, and `source` is "volume POOL/VOL"). */
    vmsh_disk_kind storage;
    /* type='network' only (issue 25: a QEMU of vmshadow's own opens it
     * when libvirt's does not, vmsh_hv_netdisk_spec): the source's name
     * attribute ("pool/image" for RBD, the export for NBD...), its hosts,
     * its <config file=.../> (RBD), <snapshot name=.../>, and the user of
     * its <auth> (inside <source> or beside it). */
    char *net_name;
    vmsh_domxml_host *hosts;
    size_t n_hosts;
    char *net_config, *net_snapshot, *auth_user;
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
    bool agent_channel;          /* an org.qemu.guest_agent.0 channel is configured */
    int agent_connected;         /* live XML only: 1 connected, 0 disconnected, -1 not said */
    char *nvram;                 /* firmware variables file, NULL when none; for a
                                  * block or network NVRAM its device or URL */
    char *nvram_type;            /* <nvram type='...'>: "file", "block", "network"; NULL when
                                  * the path is the element's text (the classic form) */
    char *kernel, *initrd, *dtb; /* direct boot (<os><kernel>...): host paths or NULL */
    char *tpm_backend;           /* "emulator", "passthrough"... NULL when no TPM */
} vmsh_domxml;

/* Largest domain XML accepted: libvirt itself refuses far smaller documents. */
#define VMSH_DOMXML_MAX_BYTES (4u << 20)

/* Parses domain XML. Expected errors: -EINVAL (not well-formed, not a
 * <domain>, no name), -EFBIG. Never fetches DTDs or expands external
 * entities. *out is the caller's (vmsh_domxml_free). */
int vmsh_domxml_parse(vmsh_domxml **out, const char *xml, size_t len, vmsh_error **err);

void vmsh_domxml_free(vmsh_domxml *x);

/* A type='file' disk whose source is a device node is a host block device
 * (R6): `is_block(path, ctx)` (a stat, in the hypervisor layer; a fake in
 * tests) says which. Never called on a backup's XML: its paths are not this
 * host's. */
void vmsh_domxml_mark_block_nodes(vmsh_domxml *x, bool (*is_block)(const char *path, void *ctx),
                                  void *ctx);

/* Records what a type='volume' disk resolved to through its pool: its path
 * (a file, a device node, or a network name) and the kind of storage.
 * -ENOMEM. */
int vmsh_domxml_disk_set_volume(vmsh_domxml_disk *d, const char *path, vmsh_disk_kind storage);

/* Issue 23 (R6): a volume of a libvirt storage pool of type 'rbd' is an RBD
 * image that QEMU opens over the network with the pool's monitors and
 * cephx user. Given the pool's XML (virStoragePoolGetXMLDesc) and `d`
 * resolved to the volume's path ("CEPH-POOL/IMAGE"), fills `d`'s network
 * parts as a type='network' RBD disk has them: protocol "rbd", net_name
 * the path, the pool's hosts and auth user (never the backup's: the pool
 * is this host's). -ENOTSUP for a pool of another type (nothing changed),
 * -EINVAL for XML that is no <pool> or `d` not resolved to network
 * storage with a path, -ENOMEM. */
int vmsh_domxml_disk_set_pool_network(vmsh_domxml_disk *d, const char *pool_xml, size_t len);

/* Frees what `d` holds (not `d` itself); NULL is fine. */
void vmsh_domxml_disk_clear(vmsh_domxml_disk *d);

/* The live definition of a running VM describes a pool volume as the file
 * or device it resolved to once libvirt pivoted back from an overlay (the
 * saved-state method's block commit): `live` (type='file' or 'block') takes
 * `persistent`'s volume identity (pool, volume, kind, storage) when both
 * are the same target and `persistent`, resolved, names the very path
 * `live` has. Returns 1 when adopted, 0 when not the same disk, -ENOMEM. */
int vmsh_domxml_disk_adopt_volume(vmsh_domxml_disk *live, const vmsh_domxml_disk *persistent);

#endif
