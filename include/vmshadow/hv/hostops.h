/* hostops.h - the VM host operations the VM writer uses (issue 21): a
 * versioned table of callbacks in the style of libgit2's git_odb_backend,
 * with libvirt's (vmsh_host_ops_libvirt, src/hv/hostops.c: the vmsh_hv_*
 * calls of hvops.h) as the default. A cluster-aware implementation (issue
 * 22, Pacemaker) supplies its own: it keeps the default's operations and
 * adds hooks around save, stop, restore and resume, e.g. "before save: make
 * the resource unmanaged; after resume: manage it again", "before restore:
 * stop the resource through the cluster; after: rewrite its config".
 *
 * Every operation has the conventions of hvops.h (negative errno, err set
 * on failure). `self` is the table itself: an implementation with state
 * embeds it as its first member. Thread-safety: that of the vmsh_hv. */
#ifndef VMSH_HV_HOSTOPS_H
#define VMSH_HV_HOSTOPS_H

#include <stdbool.h>

#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/hvops.h>

#define VMSH_HOST_OPS_VERSION 1

/* What a hook is called around. */
typedef enum vmsh_host_action {
    VMSH_HOST_SAVE,    /* save to a state file (R1), the VM stops */
    VMSH_HOST_STOP,    /* shut down (grace) or destroy */
    VMSH_HOST_RESTORE, /* start from a state file, paused or running */
    VMSH_HOST_RESUME,  /* a paused VM runs again */
} vmsh_host_action;

typedef struct vmsh_host_ops vmsh_host_ops;
struct vmsh_host_ops {
    unsigned version; /* VMSH_HOST_OPS_VERSION */
    const char *name; /* e.g. "libvirt" */
    int (*state)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_vm_state *out,
                 vmsh_error **err);
    /* grace_s > 0: ask the guest to shut down, destroy after grace_s; 0: destroy */
    int (*stop)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, int grace_s,
                vmsh_error **err);
    int (*save)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, const char *path,
                vmsh_error **err);
    /* from the state file `path`, with domain XML `dxml` (NULL: the file's) */
    int (*restore)(const vmsh_host_ops *self, vmsh_hv *hv, const char *path, const char *dxml,
                   bool paused, vmsh_error **err);
    int (*resume)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_error **err);
    int (*define)(const vmsh_host_ops *self, vmsh_hv *hv, const char *xml, vmsh_error **err);
    int (*undefine)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_error **err);
    /* saves the running VM as its managed saved state; `running`: it runs
     * again when started, else it starts paused */
    int (*managed_save)(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, bool running,
                        vmsh_error **err);
    /* Hooks (may be NULL). `before` may refuse (the operation is then not
     * done and its error is the hook's); `after` learns the operation's
     * result (0 or a negative errno). `vm` is NULL for a restore whose name
     * is in the state file. */
    int (*before)(const vmsh_host_ops *self, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                  vmsh_error **err);
    void (*after)(const vmsh_host_ops *self, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                  int result);
};

/* libvirt's operations (hvops.h), no hooks. Static: never freed. */
const vmsh_host_ops *vmsh_host_ops_libvirt(void);

/* The operations with their hooks around them: what the VM writer calls. */
int vmsh_host_state(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_vm_state *out,
                    vmsh_error **err);
int vmsh_host_stop(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, int grace_s,
                   vmsh_error **err);
int vmsh_host_save(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, const char *path,
                   vmsh_error **err);
int vmsh_host_restore(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, const char *path,
                      const char *dxml, bool paused, vmsh_error **err);
int vmsh_host_resume(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_error **err);
int vmsh_host_define(const vmsh_host_ops *o, vmsh_hv *hv, const char *xml, vmsh_error **err);
int vmsh_host_undefine(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_error **err);
int vmsh_host_managed_save(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, bool running,
                           vmsh_error **err);

#endif
