/* pull.h - the provider that takes the point-in-time copies of running VMs'
 * disks: one libvirt pull-mode backup job per VM (QEMU's copy-before-write
 * with a scratch file), exported read-only over NBD on a Unix socket.
 *
 * Writers register, during PrepareForSnapshot, which disks of which VM to
 * capture, and start the provider's preparation before they freeze the
 * guests: the checkpoints and the scratch images are made while the guests
 * freeze, and the provider's prepare waits for them. At commit (between
 * Freeze and Thaw, SPEC "The model") the provider starts every job, so that
 * every VM of the set is captured at one point.
 * The exports stay until release (after the requestor copied the data) or
 * abort. Every job is journalled before it starts, and `undo` ends a job left
 * behind by a killed process and removes its scratch files (R7).
 * Not thread-safe (its own threads aside); one set at a time.
 */
#ifndef VMSH_PROVIDERS_PULL_H
#define VMSH_PROVIDERS_PULL_H

#include <stddef.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/writers/capture.h>

#define VMSH_PULL_PROVIDER_ID   "0c7e1f7e-5a43-4d5e-9a2b-6f3d2c1b8e90"
#define VMSH_PULL_PROVIDER_NAME "libvirt pull-backup provider"

/* A new provider on libvirt connection `uri` (opened when first needed). */
int vmsh_pull_provider_new(vmsh_provider_ops **out, const char *uri, vmsh_error **err);

/* Registers a VM for the set's commit: its disks `disks` (target, scratch
 * image to make, the disk's capacity, incremental checkpoint) will be
 * exported on `socket_path`. Strings are copied. */
int vmsh_pull_provider_add(vmsh_provider_ops *p, const vmsh_set *set, const char *vm,
                           const char *socket_path, const vmsh_hv_backup_disk *disks,
                           size_t n_disks, vmsh_error **err);

/* Issue 7: checkpoint `name` of the VM (registered with
 * vmsh_pull_provider_add) is made from `xml` (vmsh_hv_checkpoint_xml) before
 * its job starts, while the guest freezes: its bitmap then holds every change
 * from a moment before the backup's point on, a superset of what the next
 * incremental needs. It is journalled ("checkpoint") and deleted on abort
 * and by recover; release keeps it for the next backup. Strings are copied. */
int vmsh_pull_provider_add_checkpoint(vmsh_provider_ops *p, const vmsh_set *set, const char *vm,
                                      const char *name, const char *xml, vmsh_error **err);

/* After every VM of the set is registered, before the guests freeze:
 * journals each VM's job and checkpoint, then makes the checkpoints and the
 * scratch images in two threads of the provider (the checkpoints on its own
 * libvirt connection). The provider's prepare waits for them and fails the
 * set if either failed. 0 when the set has no VM to capture. */
int vmsh_pull_provider_start(vmsh_provider_ops *p, vmsh_set *set, vmsh_error **err);

/* Undoes what the provider did for the set (as its abort): for a writer
 * whose set fails before the providers' prepare, which the coordinator does
 * not abort then. Waits for its threads first. */
int vmsh_pull_provider_cancel(vmsh_provider_ops *p, vmsh_set *set, vmsh_error **err);

/* After commit: why libvirt refused the VM's incremental job (a bitmap of
 * the chain missing or inconsistent), which then ran in full at the same
 * point; NULL when it did not (borrowed, valid until the next set). */
const char *vmsh_pull_provider_fallback(vmsh_provider_ops *p, const vmsh_set *set, const char *vm);

/* The calls above as the table the VM writer holds (writers/capture.h). */
extern const vmsh_capture_ops vmsh_pull_capture_ops;

#endif
