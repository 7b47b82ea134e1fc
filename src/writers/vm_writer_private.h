/* vm_writer_private.h - shared by the files of the VM writer (src/writers)
 * only: vm_writer.c (backup) and vm_restore.c (restore). */
#ifndef VMSH_WRITERS_VM_WRITER_PRIVATE_H
#define VMSH_WRITERS_VM_WRITER_PRIVATE_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/hv/hv.h>
#include <vmshadow/writers/method.h>
#include <vmshadow/writers/vm_writer.h>

typedef struct vm_item {
    char *name;
    vmsh_vm_state prior;
    vmsh_method method;
    vmsh_component *comp;
    char **targets; /* captured disks */
    size_t n_targets;
    char *state_file;
    char *xml_file;
    uint64_t seq_freeze, seq_save;
    bool frozen, saved, persistent;
    int64_t down_start, down_end;
} vm_item;

typedef struct vm_writer {
    vmsh_writer_ops ops; /* first: the coordinator hands it back as self */
    char *uri, *state_dir, *scratch_dir;
    int agent_timeout_s, freeze_timeout_s;
    vmsh_provider_ops *provider;
    vmsh_hv *hv;
    char *set_id;
    char *run_dir;
    char *sock_dir; /* NBD sockets: short enough for sun_path */
    uint64_t seq_run_dir;
    bool have_run_dir;
    vm_item *items;
    size_t n_items;
    int64_t freeze_start, freeze_end;
} vm_writer;

int vmsh_vmw_hv_ready(vm_writer *w, vmsh_error **err);
/* A string member of a journal entry's data, or NULL. */
const char *vmsh_vmw_data_str(const json_object *data, const char *key);

/* Restore (vm_restore.c). */
int vmsh_vmw_pre_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err);
int vmsh_vmw_post_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err);
/* Undoes a restore journal action; -ENOSYS when `action` is not one. */
int vmsh_vmw_undo_restore(vm_writer *w, const vmsh_journal_entry *entry, vmsh_error **err);

#endif
