/* method.h - which backup method a VM gets, and why (SPEC R1, R2).
 *
 * The guest method (R2) needs all of: (a) an agent that is connected,
 * answers and supports freeze; (b) a running VM; (c) scratch files on the
 * same host filesystem as every disk image file (block, network and volume
 * disks have their scratch files in the scratch directory); (d) every guest
 * filesystem freezable; (e) every captured disk in a format the provider
 * reads (qcow2, raw): the backup job reads any disk QEMU has open, wherever
 * it is stored (issue 25). Otherwise the VM gets the saved-state
 * method (R1) and the reason names the first condition that failed.
 * Pure logic over what hv.h reports; thread-safe.
 */
#ifndef VMSH_WRITERS_METHOD_H
#define VMSH_WRITERS_METHOD_H

#include <vmshadow/hv/hv.h>
#include <vmshadow/util/error.h>

typedef enum {
    VMSH_METHOD_AUTO,
    VMSH_METHOD_SAVED_STATE,
    VMSH_METHOD_GUEST,
} vmsh_method;

/* "auto", "saved-state", "guest". */
const char *vmsh_method_name(vmsh_method m);
/* Parses the names above; -EINVAL otherwise. */
int vmsh_method_parse(const char *s, vmsh_method *out);

typedef struct vmsh_method_choice {
    vmsh_method method; /* never AUTO */
    char condition;     /* 'a'..'e': the R2 condition that failed; 0 when none did */
    char *reason;       /* one line, always set */
} vmsh_method_choice;

/* vmsh_method_disk_exclusion flags */
#define VMSH_DISKS_INCLUDE_SHARED 0x1u /* capture <shareable/> disks (--include-shared) */

/* Why a disk is not captured by the VM writer (R6), or NULL when it is:
 * pass-through (device='lun', <hostdev>, type='nvme', vhost-user, vDPA),
 * removable media, shared disks unless `flags` has
 * VMSH_DISKS_INCLUDE_SHARED, and unknown kinds. Every virtual disk (file,
 * block device, pool volume, network disk) is captured. */
const char *vmsh_method_disk_exclusion(const vmsh_domxml_disk *d, unsigned flags);

/* How a captured disk will be read by method `m` of a VM in state `st`:
 * "incremental" (qcow2, from the last backup's checkpoint when the chain
 * holds) or "full"; *why says why (always set; static text). */
const char *vmsh_method_disk_read(const vmsh_domxml_disk *d, vmsh_method m, vmsh_vm_state st,
                                  const char **why);

/* Chooses the method for `vm`. `agent` may be NULL when not probed (then (a)
 * fails). `scratch_dir` NULL means scratch files go beside each disk image.
 * With `requested` GUEST and a failed condition this is an error (-EINVAL
 * naming the condition): no silent fallback. With SAVED_STATE the choice is
 * saved-state, reason "requested". Fills *out (free with
 * vmsh_method_choice_clear). */
int vmsh_method_choose(const vmsh_vm *vm, const vmsh_agent_info *agent, const char *scratch_dir,
                       unsigned flags, vmsh_method requested, vmsh_method_choice *out,
                       vmsh_error **err);

void vmsh_method_choice_clear(vmsh_method_choice *c);

#endif
