/* storage.h - where a restored disk goes on storage of its kind (issue 25
 * point 4): the restore plan of one disk, decided before anything changes.
 *
 * In place, a block device (LVM LV, partition), an RBD image or a storage
 * pool volume is written back when it exists and is large enough; a missing
 * one is created where its VG / Ceph pool / storage pool exists (lvcreate,
 * rbd create, virStorageVolCreateXML), else the plan says why. `--to DIR`
 * turns any disk into an image file there (type='file'); `--as NAME` never
 * touches the original's storage: a new LV / RBD image / volume named from
 * NAME; a plain block device cannot be created, so that disk needs --to.
 * Refused before any change: a device too small, a device another VM uses,
 * an unreachable Ceph pool.
 *
 * What exists on the host comes through a table of probes, so that the
 * plan is unit-tested with synthetic hosts (LVM cannot run on the lab's
 * kernel: no device-mapper); vmsh_stg_host_probes are the real ones (block
 * devices by ioctl, LVM by `lvs`/`vgs`, RBD by `rbd`, volumes by libvirt).
 */
#ifndef VMSH_HV_STORAGE_H
#define VMSH_HV_STORAGE_H

#include <stdbool.h>
#include <stdint.h>

#include <vmshadow/util/error.h>

typedef enum {
    VMSH_STG_FILE,   /* an image file (type='file') */
    VMSH_STG_BLOCK,  /* a host block device (type='block', or an LV) */
    VMSH_STG_RBD,    /* a Ceph RBD image QEMU opens (type='network' protocol='rbd') */
    VMSH_STG_VOLUME, /* a storage pool volume (type='volume') */
} vmsh_stg_kind;

/* A disk as the backup describes it (hostile input: checked here). */
typedef struct vmsh_stg_disk {
    const char *target; /* "vda" */
    vmsh_stg_kind kind;
    const char *source; /* file or device path; RBD "POOL/IMAGE"; volume name */
    const char *pool;   /* storage pool of a volume */
    const char *format; /* "raw", "qcow2" */
    uint64_t size;      /* bytes the restored disk needs on its storage */
} vmsh_stg_disk;

/* The restore's options that choose the place. */
typedef struct vmsh_stg_options {
    const char *vm;     /* the restored VM's name (--as, else the VM's) */
    bool as_copy;       /* --as: never the original's storage */
    const char *to_dir; /* --to DIR */
} vmsh_stg_options;

/* What the host has. Each returns 0 (found), -ENOENT (absent), or another
 * negative errno with *err set (could not tell: the plan refuses). */
typedef struct vmsh_stg_probes {
    void *opaque;
    /* a block device: its size, and the VM other than `vm` using it (NULL) */
    int (*block)(void *opaque, const char *dev, const char *vm, uint64_t *size, char **used_by,
                 vmsh_error **err);
    /* the VG and LV of a device path that names an LV (/dev/VG/LV,
     * /dev/mapper/VG-LV) when its VG exists, with the VG's free bytes */
    int (*lv)(void *opaque, const char *dev, char **vg, char **lv, uint64_t *vg_free,
              vmsh_error **err);
    /* a Ceph pool: 0 reachable, -ENOENT absent, -EHOSTDOWN down */
    int (*rbd_pool)(void *opaque, const char *pool, vmsh_error **err);
    int (*rbd_image)(void *opaque, const char *pool, const char *image, uint64_t *size,
                     vmsh_error **err);
    /* a storage pool (0 when active; 1 when active and of type 'rbd':
     * its volumes are raw RBD images), a volume of it: size and path (what
     * QEMU writes: a file or device path, for a volume of an RBD pool
     * "rbd:CEPH-POOL/IMAGE:mon_host=...:id=..." from the pool's source) */
    int (*pool)(void *opaque, const char *pool, vmsh_error **err);
    int (*volume)(void *opaque, const char *pool, const char *vol, uint64_t *size, char **path,
                  vmsh_error **err);
    /* R12: the defined VM other than `vm` whose definition names an RBD
     * image (`kind` VMSH_STG_RBD, `name` "POOL/IMAGE") or a pool volume
     * (VMSH_STG_VOLUME, `name` in storage pool `pool`, or its file `path`
     * when known): *used_by its name, NULL when none. NULL probe: none. */
    int (*user)(void *opaque, vmsh_stg_kind kind, const char *name, const char *pool,
                const char *path, const char *vm, char **used_by, vmsh_error **err);
} vmsh_stg_probes;

typedef enum {
    VMSH_STG_WRITE,   /* written back onto what exists */
    VMSH_STG_CREATE,  /* created, then written */
    VMSH_STG_CONVERT, /* turned into an image file (--to) */
} vmsh_stg_action;

typedef struct vmsh_stg_plan {
    vmsh_stg_action action;
    vmsh_stg_kind kind; /* of the restored disk */
    char *target;       /* device or file path; RBD "POOL/IMAGE"; volume name */
    char *pool;         /* storage pool of a volume */
    char *qemu_target;  /* what QEMU / the sink opens: a path, "rbd:POOL/IMAGE" */
    char **create_argv; /* the command that creates it (lvcreate, rbd create) */
    char *create_xml;   /* a volume's XML for virStorageVolCreateXML */
    char *note;         /* why, for --dry-run */
    bool rbd_volume;    /* a volume of a storage pool of type 'rbd' (issue 23) */
} vmsh_stg_plan;

/* Plans one disk. Refusals (-ENOSPC too small, -EBUSY used by another VM,
 * -EHOSTDOWN Ceph pool down, -ENOENT nowhere to create it, -EINVAL a name
 * from the backup that is not safe, -ENOTSUP --as on a plain block device)
 * name the VM's disk and what to do. */
int vmsh_stg_plan_disk(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                       vmsh_stg_plan *out, vmsh_error **err);
void vmsh_stg_plan_clear(vmsh_stg_plan *p);
/* The real probes: block devices by ioctl (and which other VM's definition
 * names one), LVM by `vgs`, Ceph by `ceph osd pool ls` / `rbd` (with client
 * timeouts: a cluster that does not answer is "down"), storage pools and
 * volumes by libvirt. */
struct vmsh_hv;
void vmsh_stg_host_probes(struct vmsh_hv *hv, vmsh_stg_probes *out);
/* The VG and LV a device path names (/dev/VG/LV, /dev/mapper/VG-LV with '-'
 * doubled inside names): 0, -ENOENT when it names none, -ENOMEM. */
int vmsh_stg_lv_path(const char *dev, char **vg, char **lv);
/* The "POOL/IMAGE" of an RBD disk's source as the domain XML parser gives
 * it ("rbd://HOST:PORT/POOL/IMAGE", "rbd:///POOL/IMAGE"; a plain "POOL/
 * IMAGE" as it is): 0 and *out
 * (malloc'ed), -EINVAL when it is not that, -ENOMEM. */
int vmsh_stg_rbd_name(const char *url, char **out);

/* R12: what the restore writes in place of an RBD disk, from the
 * definition of the VM it replaces (never the backup's, which is hostile
 * input): "rbd:POOL/IMAGE" with that definition's monitors (mon_host),
 * user (id) and configuration file (conf), so the host talks to the
 * cluster the VM uses and to no other. 0 and *out (malloc'ed); -EINVAL
 * when the disk is no RBD disk or a host, port, user or path is not plain
 * (a ':', ',', '@', '\\' or space in it); -ENOMEM. */
struct vmsh_domxml_disk;
int vmsh_stg_rbd_write_target(const struct vmsh_domxml_disk *d, char **out, vmsh_error **err);

/* Creates what a VMSH_STG_CREATE plan says (after every plan of the restore
 * was checked, before anything is written): runs its create_argv (rbd
 * create; lvcreate: untested end to end, the lab has no device-mapper) or
 * defines its volume (virStorageVolCreateXML in plan->pool). *path is what
 * the restore then writes (the LV's device, the volume's path,
 * "rbd:POOL/IMAGE"). On failure nothing is left created. Ceph commands get
 * client timeouts (a cluster that does not answer fails them). */
int vmsh_stg_create(struct vmsh_hv *hv, const vmsh_stg_plan *plan, char **path, vmsh_error **err);

/* Removes what vmsh_stg_create made (the undo of a restore that failed):
 * `kind` and `target` / `pool` as in the plan. 0 also when it is gone. */
int vmsh_stg_remove(struct vmsh_hv *hv, vmsh_stg_kind kind, const char *target, const char *pool,
                    vmsh_error **err);

/* "file", "block", "rbd", "volume" */
const char *vmsh_stg_kind_name(vmsh_stg_kind k);
/* "written", "created", "converted" */
const char *vmsh_stg_action_name(vmsh_stg_action a);

#endif
