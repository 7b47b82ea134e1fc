/* hostops_cluster.h - the VM host operations for VMs a Pacemaker cluster
 * manages (SPEC R16, issue 22 point 2): libvirt's operations (hostops.h)
 * with hooks that take the cluster out of the way of a saved-state backup.
 *
 * A VirtualDomain resource's monitor takes a VM that `virsh save` left shut
 * off (or, transient, gone) for a failure and recovers it: it records a
 * failed action and starts the VM again from its config file, throwing away
 * the saved memory. So before a save the resource is put in maintenance
 * (meta maintenance=true: no monitor, no recovery), checked in the CIB and in
 * crm_mon to have taken effect, and once the VM runs again (on its overlays,
 * or from its state file after an abort) the prior value is put back and the
 * resource checked to be managed again. The guest method never saves a VM,
 * so it never calls these hooks: the resource is left alone.
 *
 * Each hold is journaled first in a journal of its own,
 * <state dir>/journal/zcluster-<uuid>.journal (docs/formats/journal.md,
 * owner VMSH_CLUSTER_OWNER_ID), locked while this process lives. Its name
 * sorts after every snapshot set's journal (set IDs are hexadecimal UUIDs),
 * so a replay (vmsh_coord_recover) first lets the VM writer start a saved VM
 * again from its state file and only then gives the resource back to the
 * cluster; vmsh_cluster_undo refuses to give back a resource whose VM does
 * not run, which the cluster would take for a failure.
 *
 * Not thread-safe (that of the VM writer). */
#ifndef VMSH_HV_HOSTOPS_CLUSTER_H
#define VMSH_HV_HOSTOPS_CLUSTER_H

#include <stdint.h>

#include <vmshadow/coord/journal.h>
#include <vmshadow/hv/hostops.h>

/* The owner of the cluster steps' journal entries (fixed, never changed). */
#define VMSH_CLUSTER_OWNER_ID   "5d0c9a7e-3b14-4c62-9f1e-7a2e8b6d4c31"
#define VMSH_CLUSTER_OWNER_NAME "vmshadow cluster steps (Pacemaker)"
/* The journal name's prefix: sorts after hexadecimal set IDs. */
#define VMSH_CLUSTER_JOURNAL_PREFIX "zcluster-"
/* How long a cluster step may take to show (hold, release, stop, start). */
#define VMSH_CLUSTER_TIMEOUT_MS (120 * 1000)

typedef struct vmsh_cluster_host vmsh_cluster_host;

/* A cluster-aware host-ops table journaling under `state_dir`; each step
 * waits at most `timeout_ms` (<= 0: VMSH_CLUSTER_TIMEOUT_MS). */
int vmsh_cluster_host_new(vmsh_cluster_host **out, const char *state_dir, int64_t timeout_ms,
                          vmsh_error **err);
/* The table for vmsh_vm_writer_config.host_ops (valid until _free). */
const vmsh_host_ops *vmsh_cluster_host_ops(vmsh_cluster_host *h);
/* After the set: gives back every resource still held whose VM runs, closes
 * the journal (removed when nothing is left held). -EAGAIN with a message
 * naming the resource when one stays held (its VM does not run; `vmshadow
 * recover` gives it back once the VM runs again). */
int vmsh_cluster_host_finish(vmsh_cluster_host *h, vmsh_error **err);
/* Gives back what is still held (as _finish) and frees. NULL is fine. */
void vmsh_cluster_host_free(vmsh_cluster_host *h);
/* How many holds were taken and given back (for tests and messages). */
unsigned vmsh_cluster_host_holds(const vmsh_cluster_host *h);

/* A journal of cluster steps of its own (see above), for the restore's
 * steps; `operation` is "backup" or "restore". */
int vmsh_cluster_journal_create(vmsh_journal **out, const char *state_dir, const char *operation,
                                vmsh_error **err);

/* Undoes one journal entry of VMSH_CLUSTER_OWNER_ID (recover, R7), talking
 * to libvirt at `uri` (NULL: default) to see whether the VM runs:
 *   cluster-hold   {resource, vm, prior}: meta maintenance back to `prior`
 *                  when the VM runs or is paused; refused (-EBUSY) when not;
 *   cluster-stop   {resource, vm, prior}: target-role back to `prior`, then
 *                  waits until the cluster started it (unless prior Stopped);
 *   cluster-config {config, backup}: begun (the restore did not finish the
 *                  rewrite): the prior file `backup` goes back over `config`;
 *                  done: `backup` is removed, the restored definition stays.
 * A resource no longer in the cluster needs nothing. */
int vmsh_cluster_undo(const char *uri, const vmsh_journal_entry *en, vmsh_error **err);

#endif
