/* capture.h - what the VM writer asks of the provider that captures running
 * guests' disks (issue 21: writers reach providers only through interfaces,
 * never a provider's own functions). A versioned table of callbacks, each
 * taking the provider it belongs to; the pull provider's is
 * vmsh_pull_capture_ops (providers/pull.h, which documents each call). */
#ifndef VMSH_WRITERS_CAPTURE_H
#define VMSH_WRITERS_CAPTURE_H

#include <stddef.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/hv/hvops.h>

#define VMSH_CAPTURE_OPS_VERSION 1

typedef struct vmsh_capture_ops {
    unsigned version; /* VMSH_CAPTURE_OPS_VERSION */
    /* PrepareForSnapshot: capture these disks of `vm`, exported on
     * `socket_path`. Strings are copied. */
    int (*add)(vmsh_provider_ops *p, const vmsh_set *set, const char *vm, const char *socket_path,
               const vmsh_hv_backup_disk *disks, size_t n_disks, vmsh_error **err);
    /* Issue 7: make checkpoint `name` of `vm` from `xml` before its job. */
    int (*add_checkpoint)(vmsh_provider_ops *p, const vmsh_set *set, const char *vm,
                          const char *name, const char *xml, vmsh_error **err);
    /* Every VM registered, before the guests freeze: begin the work. */
    int (*start)(vmsh_provider_ops *p, vmsh_set *set, vmsh_error **err);
    /* Undo the set's work when it fails before the providers' prepare. */
    int (*cancel)(vmsh_provider_ops *p, vmsh_set *set, vmsh_error **err);
    /* After commit: why the VM's incremental job ran in full, or NULL. */
    const char *(*fallback)(vmsh_provider_ops *p, const vmsh_set *set, const char *vm);
} vmsh_capture_ops;

#endif
