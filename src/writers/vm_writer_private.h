/* vm_writer_private.h - shared by the files of the VM writer (src/writers)
 * only: vm_writer.c (backup) and vm_restore.c (restore). */
#ifndef VMSH_WRITERS_VM_WRITER_PRIVATE_H
#define VMSH_WRITERS_VM_WRITER_PRIVATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/coord/json.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/writers/method.h>
#include <vmshadow/writers/vm_writer.h>

typedef struct vm_item {
    char *name;
    vmsh_vm_state prior;
    vmsh_method method;
    vmsh_component *comp;
    char **targets; /* captured disks */
    size_t n_targets;
    /* per target: a network disk's source as QEMU opens it (issue 25,
     * vmsh_hv_netdisk_spec) and its protocol node alone (an overlay's
     * backing), for a VM that is not read through the guest method's job;
     * NULL otherwise */
    char **net_specs, **net_backing;
    size_t net_cap;  /* their length */
    char **cp_disks; /* the disks a checkpoint names (vmsh_hv_checkpoint_disks) */
    size_t n_cp_disks;
    char *state_file;
    char *xml_file;
    uint64_t seq_freeze, seq_save;
    bool frozen, saved, persistent;
    /* PostSnapshot's thaw, on the thaw thread (vm_writer.c): its outcome
     * waits here until BackupComplete or Abort joins the thread */
    bool thaw_pending;
    int thaw_rc;
    vmsh_error *thaw_err;
    vmsh_vm_state after; /* the VM's state once thawed */
    /* Issue 27 point 4: the guests of a set freeze, and thaw, at once, one
     * thread per VM (vm_writer.c, each_vm_at_once). A vmsh_hv serves one
     * thread at a time, so each guest-method VM of a set of several but the
     * first has a connection of its own, opened before the freeze window;
     * NULL: the writer's. */
    vmsh_hv *own_hv;
    int par_rc;
    vmsh_error *par_err;
    int64_t thawed_at;
    int64_t down_start, down_end;
    char *new_cp; /* checkpoint created with this set's job (issue 7) */
    /* older checkpoints deleted (vmsh_vmw_prune_*): by the thaw thread
     * when prune_async, else at BackupComplete */
    bool prune_async, pruned;
    size_t cp_deleted;
    char *cp_error;
} vm_item;

typedef struct vm_writer {
    vmsh_writer_ops ops; /* first: the coordinator hands it back as self */
    char *uri, *state_dir, *scratch_dir;
    int agent_timeout_s, freeze_timeout_s;
    vmsh_provider_ops *provider;
    const vmsh_capture_ops *capture; /* the provider's, for disk captures */
    const vmsh_host_ops *host;       /* VM lifecycle (hv/hostops.h) */
    vmsh_hv *hv;
    char *set_id;
    char *run_dir;
    char *sock_dir; /* NBD sockets: short enough for sun_path */
    uint64_t seq_run_dir;
    bool have_run_dir;
    vm_item *items;
    size_t n_items;
    int64_t freeze_start, freeze_end;
    /* thaws the guests, then deletes older checkpoints, while the data is
     * copied; it has the connection `hv` to itself until it is joined */
    pthread_t thaw_thread;
    bool thaw_running;
    /* vmsh_vm_writer_prefetch: Identify's reads of named VMs (lookups,
     * definitions, agent probes), begun on a thread while the requestor
     * opens the repository; the connection `hv` is the thread's until
     * Identify joins it */
    pthread_t pre_thread;
    bool pre_running;
    char **pre_targets;
    size_t pre_n;
    vmsh_vm **pre_vms;
    size_t pre_nvms;
    vmsh_agent_info **pre_agents; /* per VM of pre_vms; NULL: not probed */
    int pre_rc;
    vmsh_error *pre_err;
    char *repo_id;        /* issue 7: the repository of the backup */
    json_object *history; /* {vm: {backup, extra}} of that repository */
} vm_writer;

int vmsh_vmw_hv_ready(vm_writer *w, vmsh_error **err);

/* Incremental reads (vm_incr.c, issue 7). */
/* A VM whose images are read directly (R1, shut off): every disk in full,
 * with the reason, in its extra.disks entry ("read", "read_reason"). */
void vmsh_vmw_plan_direct_reads(vm_writer *w, vmsh_set *set, vm_item *it);
/* A guest-method VM: chooses per disk of `bd` (its job's disks) incremental
 * (sets bd[i].incremental, borrowed from the history) or full, records it in
 * extra.disks; *cp_xml (malloc'ed, NULL when no disk can have a bitmap) is
 * the new checkpoint it->new_cp to create with the job. */
int vmsh_vmw_plan_job_reads(vm_writer *w, vmsh_set *set, vm_item *it, vmsh_hv_backup_disk *bd,
                            size_t n, char **cp_xml, vmsh_error **err);
/* After commit: disks whose incremental job libvirt refused become full. */
void vmsh_vmw_note_job_fallback(vm_writer *w, vmsh_set *set, vm_item *it);
/* Issue 21: each disk file's typed plan (vmsh_file_set_plan) from the
 * VM's extra.disks entries, which the backup document keeps; the
 * requestor reads only the typed plan. 0 or -ENOMEM. */
int vmsh_vmw_publish_plans(vm_item *it);
/* Deletes vmshadow's checkpoints of the VM except the one this set made
 * (the one the next backup needs), unless the thaw thread did, and
 * records the outcome in the component's extra. Called at BackupComplete;
 * never fails the set. */
void vmsh_vmw_prune_checkpoints(vm_writer *w, vm_item *it);
/* PostSnapshot: once the guest-method VMs' jobs run with their new
 * checkpoints, the older ones can go. vmsh_vmw_prune_plan marks the VMs
 * whose older checkpoints the thaw thread deletes (vm_writer.c), through
 * the writer's connection, after the thaw and while the requestor copies
 * (it touches no component: the outcome waits in the items);
 * vmsh_vmw_prune_planned deletes them. */
void vmsh_vmw_prune_plan(vm_writer *w);
void vmsh_vmw_prune_planned(vm_writer *w);

/* Restore (vm_restore.c). */
int vmsh_vmw_pre_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err);
int vmsh_vmw_post_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err);
/* Undoes a restore journal action; -ENOSYS when `action` is not one. */
int vmsh_vmw_undo_restore(vm_writer *w, const vmsh_journal_entry *entry, vmsh_error **err);

#endif
