/* vm_writer.h - the VM writer (SPEC R1-R7, R17): one component per VM of
 * the set, the saved-state method (R1) or the guest method (R2), all
 * guest-side work and every save inside PrepareForSnapshot (R3), VMs back to
 * their prior state in PostSnapshot (R4), everything undone on abort (R5) and
 * after a killed run (R7, through the journal).
 *
 * Its name and writer ID are fixed (identity.h). It captures disks through
 * the pull provider (providers/pull.h), which it is given.
 * Not thread-safe; one set at a time.
 */
#ifndef VMSH_WRITERS_VM_WRITER_H
#define VMSH_WRITERS_VM_WRITER_H

#include <stdint.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/hv/hostops.h>
#include <vmshadow/writers/capture.h>
#include <vmshadow/writers/identity.h>

/* Where libvirt (qemu:///system) keeps an emulated TPM's state, per VM UUID. */
#define VMSH_SWTPM_DIR "/var/lib/libvirt/swtpm"
/* Where libvirt (qemu:///system) keeps managed saved states (VM.save). */
#define VMSH_LIBVIRT_SAVE_DIR "/var/lib/libvirt/qemu/save"

typedef struct vmsh_vm_writer_config {
    const char *uri;         /* libvirt connection; NULL: default */
    const char *state_dir;   /* run files: state files, NBD sockets, domain XML */
    const char *scratch_dir; /* NULL: scratch files beside each disk image (R2 (c)) */
    int agent_timeout_s;     /* each agent query while choosing the method; <= 0: 3 */
    int freeze_timeout_s;    /* the agent's freeze/thaw reply; <= 0: 60 */
    /* The VM host operations (state, stop, save, restore, define, ...) and
     * their hooks; NULL: libvirt's (vmsh_host_ops_libvirt). Borrowed. */
    const vmsh_host_ops *host_ops;
} vmsh_vm_writer_config;

/* A new VM writer that registers its disks with `provider` through its
 * `capture` table (e.g. the pull provider and vmsh_pull_capture_ops; both
 * borrowed: they must outlive the writer). Connects to libvirt lazily, so that
 * `vmshadow writers` and a recover with nothing to do never need it. */
int vmsh_vm_writer_new(vmsh_writer_ops **out, const vmsh_vm_writer_config *cfg,
                       vmsh_provider_ops *provider, const vmsh_capture_ops *capture,
                       vmsh_error **err);

/* After a set: the longest time any guest of it stayed frozen or any VM
 * stayed stopped (ms), measured from the first freeze or save to the last
 * thaw or resume; -1 when no VM was frozen or saved. */
int64_t vmsh_vm_writer_freeze_window_ms(const vmsh_writer_ops *w);

/* Issue 7: what the repository the next backup goes to knows, for the
 * chain health checks of incremental reads. `repo_id` is the repository's
 * ID; `last` (may be NULL; a reference is taken) maps each VM name to the
 * last backup of that VM in that repository:
 *   { "<vm>": { "backup": "<backup ID>", "extra": <its component extra> } }
 * Without it every disk is read in full. Call before vmsh_coord_backup. */
int vmsh_vm_writer_set_history(vmsh_writer_ops *w, const char *repo_id, struct json_object *last,
                               vmsh_error **err);

/* Begins on a thread of its own what Identify reads of the named VMs
 * `targets` (lookups, definitions, agent probes; nothing is changed), so
 * that it runs while the requestor opens the repository. Identify of a set
 * with the same targets takes the results (and their errors), any other
 * set reads afresh. Optional; for `backup` of named VMs. */
void vmsh_vm_writer_prefetch(vmsh_writer_ops *w, const char *const *targets, size_t n);

/* Plans a restore without changing anything (`restore --dry-run`): for
 * each component of `md` selected for restore (vmsh_component_selected),
 * whether it replaces an existing VM, where each file goes, what is linked,
 * which disks are re-pathed; with its domain XML (xmls[i] for component i,
 * may be NULL) also which interfaces are re-wired or left disconnected
 * (R14) and which host devices are not attached. *out is a JSON array. */
int vmsh_vm_writer_restore_plan(vmsh_writer_ops *w, vmsh_metadata *md, const vmsh_set_options *o,
                                const char *const *xmls, struct json_object **out,
                                vmsh_error **err);

/* Where a restore puts one file `f` of the component `c` (SPEC R10, R12;
 * issue 20), decided from the document alone (pure: nothing is looked up or
 * changed): *out its final place (NULL: not placed, e.g. the XML, or a
 * copy's TPM), *link the default place of libvirt's that links to it
 * (NULL: none); both malloc'ed. Under --to every *out is inside
 * DIR/<vm>/; a *link lies only in libvirt's per-VM places; no path has a
 * '.' or '..' component. Expected errors: -EINVAL (a name or path of the
 * backup that is not safe). The restore checks in addition what exists at
 * these places (only what the replaced VM owns is replaced). */
int vmsh_vm_writer_restore_place(const vmsh_set_options *o, const vmsh_component *c,
                                 const vmsh_file *f, char **out, char **link, vmsh_error **err);

#endif
