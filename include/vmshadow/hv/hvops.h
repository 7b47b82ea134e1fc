/* hvops.h - the operations that change a VM, for the VM writer and its
 * providers (SPEC R1-R5, R7). Each is one libvirt call or a short fixed
 * sequence; the caller journals before calling (STYLE.md, "Rollback").
 * Errors name the VM and carry libvirt's message. Not thread-safe per hv.
 */
#ifndef VMSH_HV_HVOPS_H
#define VMSH_HV_HVOPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/hv/hv.h>

/* Sets how long libvirt waits for each agent reply of this VM (seconds;
 * -1 libvirt's default). Bounded waits are what keeps a hung agent from
 * hanging a snapshot set. */
int vmsh_hv_agent_timeout(vmsh_hv *hv, const char *vm, int timeout_s, vmsh_error **err);

/* Freezes every guest filesystem through the agent (its fsfreeze hooks run
 * first). Returns the number frozen. Expected errors: -ETIMEDOUT (agent did
 * not answer in time: the guest may still freeze later, so callers thaw),
 * -EIO (the agent refused, e.g. a hook failed). */
int vmsh_hv_fsfreeze(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* Thaws; returns the number thawed (0 when nothing was frozen). */
int vmsh_hv_fsthaw(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* 1 when the agent says "frozen", 0 "thawed", negative when it cannot tell. */
int vmsh_hv_fsfreeze_status(vmsh_hv *hv, const char *vm, vmsh_error **err);

/* Saves the VM's memory to `path` (the VM is then shut off; a transient VM
 * is gone until restored). */
int vmsh_hv_save(vmsh_hv *hv, const char *vm, const char *path, vmsh_error **err);
/* Starts a VM from a state file written by vmsh_hv_save, paused or running.
 * `dxml` (may be NULL) replaces the domain XML stored in the file for this
 * start, e.g. to run the VM on overlays (only host-side details such as disk
 * paths may differ). */
int vmsh_hv_restore(vmsh_hv *hv, const char *path, const char *dxml, bool paused, vmsh_error **err);
/* Saves the running or paused VM as its managed saved state (libvirt's
 * own place, which libvirt then knows of); `running`: it runs again when
 * started, else it comes back paused. */
int vmsh_hv_managed_save(vmsh_hv *hv, const char *vm, bool running, vmsh_error **err);
/* The domain XML stored in a state file (*out malloc'ed), with secure details. */
int vmsh_hv_save_image_xml(vmsh_hv *hv, const char *path, char **out, vmsh_error **err);

/* The image file a disk of the running VM uses now (*out malloc'ed; NULL
 * when it has no file source). -ENOENT when the VM or the disk is unknown. */
int vmsh_hv_disk_source(vmsh_hv *hv, const char *vm, const char *target, char **out,
                        vmsh_error **err);

/* Merges the active overlay of disk `target` into its backing image and
 * switches the VM back to that image (an active block commit, then pivot).
 * Waits at most `timeout_s` for the commit to catch up. */
int vmsh_hv_block_commit_pivot(vmsh_hv *hv, const char *vm, const char *target, int timeout_s,
                               vmsh_error **err);
/* Instant restore onto a block device or an RBD image (issue 23): starts a
 * block copy of the whole chain of disk `target` of the running VM onto the
 * device or image that `def_xml` (the definition the VM gets afterwards)
 * names for that disk, which must exist (REUSE_EXT, raw). Guest writes are
 * mirrored onto it. `bandwidth` bytes per second, 0 unlimited. A transient
 * job: the persistent definition is left to the caller. */
int vmsh_hv_block_copy(vmsh_hv *hv, const char *vm, const char *target, const char *def_xml,
                       uint64_t bandwidth, vmsh_error **err);
/* Switches disk `target` to the copy of its block copy (pivot): -EAGAIN
 * (no error set) while the copy has not caught up yet. */
int vmsh_hv_block_copy_pivot(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err);
int vmsh_hv_suspend(vmsh_hv *hv, const char *vm, vmsh_error **err);
int vmsh_hv_resume(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* The VM's state now; -ENOENT when no such VM exists. */
int vmsh_hv_state(vmsh_hv *hv, const char *vm, vmsh_vm_state *out, vmsh_error **err);

typedef struct vmsh_hv_backup_disk {
    const char *target; /* "vda" */
    /* scratch file for the pull backup: an empty qcow2 of the disk's size
     * (vmsh_hv_image_create) that libvirt attaches as it is */
    const char *scratch;
    uint64_t capacity; /* the disk's size in bytes: the scratch image's size */
    /* Issue 7: a checkpoint to export this disk's changes since (libvirt's
     * per-disk backupmode='incremental'; the NBD export then offers the meta
     * context "qemu:dirty-bitmap:backup-<target>"); NULL: full. */
    const char *incremental;
} vmsh_hv_backup_disk;

/* Starts a pull-mode backup job: every disk in `disks` is exported
 * point-in-time over NBD on the Unix socket `socket_path` (export name = the
 * target); every other disk of the VM gets backup='no'. The scratch images
 * must exist (libvirt's REUSE_EXTERNAL: it attaches them instead of creating
 * them with two QEMU jobs per disk, which made the guest wait frozen) and
 * stay the caller's to remove. */
int vmsh_hv_backup_begin(vmsh_hv *hv, const char *vm, const char *socket_path,
                         const vmsh_hv_backup_disk *disks, size_t n_disks, vmsh_error **err);
/* The same in two steps: the job's XML (reads the VM's XML for the disks
 * not captured; *out malloc'ed), made ahead of the point in time, and the
 * job's start from it. */
int vmsh_hv_backup_xml(vmsh_hv *hv, const char *vm, const char *socket_path,
                       const vmsh_hv_backup_disk *disks, size_t n_disks, char **out,
                       vmsh_error **err);
int vmsh_hv_backup_begin_xml(vmsh_hv *hv, const char *vm, const char *xml, vmsh_error **err);
/* Ends the VM's backup job (pull jobs end only this way). 0 when none runs. */
int vmsh_hv_backup_end(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* 1 when a backup job runs on the VM, 0 when not. */
int vmsh_hv_backup_active(vmsh_hv *hv, const char *vm, vmsh_error **err);

/* ---- Checkpoints (issue 7: incremental backups from dirty bitmaps) ---- */

/* libvirt's domain ID of the running VM (a new one each time its QEMU
 * starts); -1 when it is shut off. -ENOENT when no such VM. */
int vmsh_hv_domain_id(vmsh_hv *hv, const char *vm, int *out, vmsh_error **err);
/* 1 when the VM has a checkpoint named `name` in libvirt, 0 when not. */
int vmsh_hv_checkpoint_exists(vmsh_hv *hv, const char *vm, const char *name, vmsh_error **err);
/* The names of the VM's checkpoints that begin with `prefix` (*out: array
 * of malloc'ed strings, free each and the array). */
int vmsh_hv_checkpoint_list(vmsh_hv *hv, const char *vm, const char *prefix, char ***out, size_t *n,
                            vmsh_error **err);
/* Deletes checkpoint `name` of the VM: libvirt merges its bitmaps into its
 * parent's and removes them from the images. When that is refused (e.g. the
 * VM is shut off) and `metadata_fallback`, forgets libvirt's metadata only
 * (the bitmaps stay in the qcow2). 0 also when no such checkpoint or VM. */
int vmsh_hv_checkpoint_delete(vmsh_hv *hv, const char *vm, const char *name, bool metadata_fallback,
                              vmsh_error **err);
/* Defines checkpoint `name` of the VM again (libvirt's REDEFINE: metadata
 * only; its bitmap `name` must already be in each of `targets`' images), with
 * a bitmap on those disks and none on the others. Issue 7: a restore. */
int vmsh_hv_checkpoint_redefine(vmsh_hv *hv, const char *vm, const char *name,
                                const char *const *targets, size_t n_targets, vmsh_error **err);
/* The disks a checkpoint of the VM defined by `dx` names: every disk with a
 * target but host devices (*out malloc'ed, borrowing the targets of `dx`).
 * Returns -ENOMEM or 0. */
int vmsh_hv_checkpoint_disks(const vmsh_domxml *dx, const char ***out, size_t *n);
/* The <domaincheckpoint> XML for a new checkpoint `name` of a VM whose disks
 * are `disks` (vmsh_hv_checkpoint_disks), with a bitmap on each disk of
 * `targets` and none on the others (*out malloc'ed), for
 * vmsh_hv_checkpoint_create. No libvirt call: the caller has the VM's
 * definition already. */
int vmsh_hv_checkpoint_xml(const char *name, const char *const *disks, size_t n_disks,
                           const char *const *targets, size_t n_targets, char **out,
                           vmsh_error **err);

/* Creates a checkpoint of the running VM from `xml` (a new, enabled bitmap
 * on each of its disks). libvirt 9.0 validates a checkpoint's XML against
 * its schema whatever the flags (measured: compiling the schema, which
 * includes the domain's, costs libvirtd ~15-35 ms of CPU under the VM's
 * lock), so the writer makes it beside the freeze. */
int vmsh_hv_checkpoint_create(vmsh_hv *hv, const char *vm, const char *xml, vmsh_error **err);
/* The size in bytes of the VM's disk `target` as the VM sees it. */
int vmsh_hv_disk_capacity(vmsh_hv *hv, const char *vm, const char *target, uint64_t *out,
                          vmsh_error **err);

/* Creates the qcow2 image `path`: on `backing` (format `backing_format`) when
 * it is not NULL, made by qemu-img, else empty and `size` bytes large, written
 * here (vmsh_qcow2_empty_write). The file is made here, exclusively and
 * without following a link (a link planted at the name must not make
 * qemu-img overwrite its target), and qemu-img writes into that very inode
 * through /dev/fd/N. Removed again on failure. Thread-safe.
 * Expected errors: -EEXIST (the name exists), -EIO (qemu-img failed), -EFBIG
 * (larger than qcow2 allows), and a write's errno (-ENOSPC). */
int vmsh_hv_image_create(const char *path, const char *backing, const char *backing_format,
                         uint64_t size, vmsh_error **err);

/* An empty qcow2 image (version 3, 64 KiB clusters, 16-bit refcounts; the
 * layout of docs/formats/qcow2-scratch.md): `l1_entries` in its L1 table and
 * `clusters`, the file's length in clusters. -EFBIG past QEMU's limit on the
 * L1 table (2 PiB). */
int vmsh_qcow2_empty_layout(uint64_t size, uint32_t *l1_entries, uint32_t *clusters);
/* Writes that image of `size` bytes (rounded up to 512, as qemu-img does)
 * into the empty file `fd` (from offset 0;
 * the file ends up (clusters * 64 KiB) long, its L1 table a hole). */
int vmsh_qcow2_empty_write(int fd, uint64_t size, vmsh_error **err);

/* The size in bytes of a disk image as a VM sees it, read from the image
 * itself (no libvirt call, no process): the virtual size in a qcow2 header,
 * the size of a raw file or block device. Thread-safe. Expected errors:
 * -ENOTSUP (another format: ask vmsh_hv_disk_capacity), -EINVAL (not a
 * qcow2 image). */
int vmsh_hv_image_size(const char *path, const char *format, uint64_t *out, vmsh_error **err);

/* Image operations by qemu-img, here only (issue 21: hypervisor access goes
 * through hv/). Each returns 0, a negative errno when the tool could not
 * run (err set), or -EIO when it failed: then `tool` (may be NULL, `cap`
 * bytes) receives how, e.g. "exited with status 1: <stderr line>", and err
 * says "WHAT failed: qemu-img HOW" (commit: err is left to the caller,
 * whose message names the VM). */
/* `qemu-img commit -q -f qcow2 OVERLAY`: merges the overlay into its
 * backing image; `timeout_s` bounds it. */
int vmsh_hv_image_commit(const char *overlay, int timeout_s, char *tool, size_t cap,
                         vmsh_error **err);
/* `qemu-img info --output=json --force-share -f FORMAT PATH`: the JSON text
 * (*out malloc'ed, at most 16 MiB). */
int vmsh_hv_image_info(const char *path, const char *format, char **out, vmsh_error **err);
/* `qemu-img convert -q -f SRC_FORMAT -O FORMAT SRC DST`. DST is made first
 * by us, O_CREAT|O_EXCL|O_NOFOLLOW after removing what is at its name
 * (qemu-img follows a link at its output: a link or file planted there is
 * removed, never written through); removed again on failure. `what` names
 * the operation in the error. */
int vmsh_hv_image_convert(const char *src, const char *src_format, const char *dst,
                          const char *format, const char *what, vmsh_error **err);
/* `qemu-img bitmap OP -f qcow2 PATH NAME` (OP: "--add", "--remove", ...). */
int vmsh_hv_image_bitmap(const char *op, const char *path, const char *name, vmsh_error **err);

/* The VM's domain XML (*out malloc'ed): the persistent definition when
 * `inactive`, else the live one. */
int vmsh_hv_domain_xml(vmsh_hv *hv, const char *vm, bool inactive, char **out, vmsh_error **err);

/* 1 when any job (save, backup, migration...) runs on the VM, 0 when none. */
int vmsh_hv_job_active(vmsh_hv *hv, const char *vm, vmsh_error **err);

/* Stops a VM: a clean shutdown request, then, after `grace_s` seconds, a
 * hard stop. 0 when it is shut off (also when it already was). */
int vmsh_hv_stop(vmsh_hv *hv, const char *vm, int grace_s, vmsh_error **err);
/* Undefines a persistent VM with its managed save image and snapshot and
 * checkpoint metadata; firmware variables and TPM state stay. */
int vmsh_hv_undefine(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* Defines (registers) a VM from XML. */
int vmsh_hv_define(vmsh_hv *hv, const char *xml, vmsh_error **err);
/* Replaces the domain XML stored in a state file (host-side details only). */
int vmsh_hv_save_image_define_xml(vmsh_hv *hv, const char *path, const char *xml, vmsh_error **err);
/* 1 when a libvirt network of that name exists and is active, 0 when not. */
int vmsh_hv_network_active(vmsh_hv *hv, const char *name, vmsh_error **err);

#endif
