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
    bool backing_block; /* the backing is a host block device (issue 25) */
    /* The backing is the disk's own network source (issue 25: a saved VM's
     * overlay on its RBD or NBD disk): the disk's <source> and <auth> move
     * into the <backingStore type='network'>, `backing` is not used. */
    bool backing_network;
    /* Written in place onto the block device `path` (issue 25): the disk
     * becomes type='block' on it, and drop_host_devices keeps it (the
     * restore wrote it). */
    bool in_place;
    /* With in_place, storage other than a device: an RBD image ("POOL/
     * IMAGE": the disk stays type='network' protocol='rbd', its hosts and
     * auth kept, under this name) or a storage pool volume (type='volume'
     * with this pool and volume). NULL: a block device. */
    const char *rbd;
    /* With rbd: "<disk><source .../><auth .../></disk>", the <source> and
     * <auth> of the disk of the VM the restore replaces
     * (vmsh_domxml_disk_source_xml): they replace the backup's (R12: its
     * monitors and secret are hostile input). NULL (an image the restore
     * created with the host's Ceph configuration): the backup's <auth>
     * stays, its <host>s and <config> go (QEMU uses the host's). */
    const char *rbd_source;
    const char *pool, *volume;
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
    /* Take out everything of the host the restore did not create (issue 8,
     * issue 20): a backup may come from another host or an attacker, and
     * must not reach this host's devices, files or programs without being
     * told (`restore --host-devices`). Taken out:
     *  - <hostdev>; disks of type block, network, volume, nvme, and LUNs;
     *  - image-file disks whose target is not in `disks` (a host file or
     *    device node the backup does not hold; a CD-ROM or floppy stays,
     *    empty);
     *  - <filesystem> other than type ram; a TPM other than the emulator;
     *    <input> of type evdev or passthrough; <redirdev> and <smartcard>
     *    other than through spicevmc; <shmem>; <memory> on a host file;
     *    <rng> other than builtin or /dev/{u,}random, /dev/hwrng;
     *  - character devices on anything but a pty, vc, null, the display's
     *    channels, or a unix socket in libvirt's own directories (no path,
     *    or under /var/lib/libvirt/qemu/, /run/libvirt/qemu/): <serial>,
     *    <parallel> and <console> become type null (the port stays),
     *    <channel> goes; the <log file> of any of them goes;
     *  - interfaces of type hostdev, vdpa, vhostuser (a socket outside
     *    libvirt's directories) are disconnected; <script>/<downscript>
     *    go (libvirt runs them as root);
     *  - every element of the qemu namespace (<qemu:commandline>,
     *    <qemu:override>, ...);
     *  - an <emulator> that is not a distribution's default
     *    (/usr/bin/qemu-system-ARCH, /usr/libexec/qemu-kvm, /usr/bin/qemu-kvm,
     *    /usr/bin/kvm): libvirt picks the host's default. */
    bool drop_host_devices;
    /* Optional: what drop_host_devices took out, one description each
     * (vmsh_domxml_host_resources); the caller frees each and the array. */
    char ***stripped;
    size_t *n_stripped;
} vmsh_domxml_edit;

/* What `e` (its drop_host_devices rule, its `disks`) would take out of
 * `xml`, one description each ("disk vdc (block /dev/vg0/logs)"), changing
 * nothing: what `restore --dry-run` lists. *items (malloc'ed, each string
 * too) is NULL when nothing would be. Expected errors: -EINVAL (not a
 * domain), -EFBIG. */
int vmsh_domxml_host_resources(const char *xml, size_t len, const vmsh_domxml_edit *e,
                               char ***items, size_t *n, vmsh_error **err);

/* Applies `e` to `xml`; *out is the new XML (malloc'ed). Expected errors:
 * -EINVAL (not a domain, a disk target in `e` that the XML lacks). Runtime
 * state is dropped as well (the domain id, <seclabel> of type dynamic,
 * aliases are left to libvirt). */
int vmsh_domxml_edit_apply(const char *xml, size_t len, const vmsh_domxml_edit *e, char **out,
                           vmsh_error **err);

/* The <source> and disk-level <auth> of the disk `target` of `xml`, as
 * "<disk><source .../><auth .../></disk>" (*out malloc'ed), for
 * vmsh_disk_repath.rbd_source. Expected errors: -ENOENT (no such disk, or
 * one without a source), -EINVAL, -EFBIG. */
int vmsh_domxml_disk_source_xml(const char *xml, size_t len, const char *target, char **out,
                                vmsh_error **err);

#endif
