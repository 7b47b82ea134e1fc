/* blockjob.h - what instant restore (issue 23 point 2) asks of libvirt
 * beyond hvops.h: start a VM, pull a disk's backing data into its overlay
 * (a block pull), follow that job, and read why a VM is paused. Each is one
 * libvirt call; the caller journals before calling. Not thread-safe per hv. */
#ifndef VMSH_HV_BLOCKJOB_H
#define VMSH_HV_BLOCKJOB_H

#include <stdbool.h>
#include <stdint.h>

#include <vmshadow/hv/hv.h>

/* Starts a defined, shut-off VM (virDomainCreate). */
int vmsh_hv_start(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* Starts a block pull of disk `target` of the running VM: its backing
 * chain's data is copied into the top image, which then has no backing
 * file. `bandwidth` bytes per second, 0 unlimited. */
int vmsh_hv_block_pull(vmsh_hv *hv, const char *vm, const char *target, uint64_t bandwidth,
                       vmsh_error **err);
/* The block job on disk `target`: 1 when one runs (*cur, *end: its
 * progress), 0 when none does. */
int vmsh_hv_block_job(vmsh_hv *hv, const char *vm, const char *target, uint64_t *cur, uint64_t *end,
                      vmsh_error **err);
/* Cancels the block job on disk `target` (0 also when none runs). */
int vmsh_hv_block_job_abort(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err);
/* 1 when the running VM's disk `target` still has a backing image (the
 * live definition's <backingStore> has a <source>), 0 when it has none. */
int vmsh_hv_disk_has_backing(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err);
/* 1 when the VM is paused because of an I/O error (rerror/werror policy
 * "stop"), 0 otherwise. */
int vmsh_hv_paused_on_io_error(vmsh_hv *hv, const char *vm, vmsh_error **err);
/* Stops a VM at once (virDomainDestroy); 0 also when it was shut off. */
int vmsh_hv_destroy(vmsh_hv *hv, const char *vm, vmsh_error **err);

#endif
