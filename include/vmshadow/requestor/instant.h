/* instant.h - instant restore (issue 23 points 2 and 3): a VM of a backup
 * defined and started at once on qcow2 overlays in its disks' final places,
 * backed by the backup's disks served over NBD (requestor/serve.h); then
 * every disk's data is pulled into its overlay while the VM runs (libvirt
 * block pull) and serving stops when all are done.
 *
 * Every step is written to a journal (docs/formats/instant-journal.md,
 * STATE_DIR/instant/VM.json) before it is taken. The servers are daemons of
 * their own: a killed vmshadow leaves the VM running on served disks and the
 * pull going on in QEMU; vmsh_instant_recover restarts what is missing
 * (servers, the pull, a VM paused on an I/O error) and finishes, or tears the
 * VM down. The VM's disks stop on I/O errors (error_policy and
 * rerror_policy "stop") until the pull is done, so a server that dies pauses
 * the VM instead of failing the guest's reads (R5, R7).
 *
 * Never prints; not thread-safe. */
#ifndef VMSH_REQUESTOR_INSTANT_H
#define VMSH_REQUESTOR_INSTANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/requestor/requestor.h>

/* What `restore --instant` asks for. Borrowed. */
typedef struct vmsh_instant_options {
    const char *repo_path; /* the repository's location, for the servers */
    const char *key_file;  /* NULL: unencrypted */
    const char *backup;    /* an ID, a unique prefix or "latest" */
    const char *vm;        /* the one VM restored */
    const char *restore_dir, *restore_as;
    bool force, host_devices;
    bool (*confirm)(void *opaque, struct json_object *plan);
    void *confirm_opaque;
    uint64_t bandwidth; /* bytes per second per disk for the pull; 0 unlimited */
    /* Return once the VM runs and the pulls are started, leaving the
     * servers and the journal to `recover` (or a later wait). */
    bool no_wait;
} vmsh_instant_options;

/* Restores opts->vm instantly. *out as vmsh_requestor_restore's (free it
 * also on failure). A failure before the VM runs leaves nothing behind:
 * servers stopped, overlays removed, the VM not defined (R11). */
int vmsh_instant_restore(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                         vmsh_repo *repo, const vmsh_instant_options *opts,
                         vmsh_requestor_restore_result **out, vmsh_error **err);

/* Finishes every instant restore the journals name (servers restarted,
 * the VM started, or restarted when paused on an I/O error (never
 * resumed: docs/reliability.md), the pulls started again, serving stopped at
 * the end); the one of VM `abandon` (NULL: none) is torn down instead: the
 * VM destroyed and undefined, its overlays removed, serving stopped. The
 * backup is never touched. *n_done: journals finished or abandoned. */
int vmsh_instant_recover(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                         const char *abandon, size_t *n_done, vmsh_error **err);

/* One instant restore in progress, for `vmshadow jobs`. */
typedef struct vmsh_instant_disk_status {
    char *disk;
    char *overlay;
    char *copy_to;     /* block copy onto this device or RBD image ("POOL/IMAGE"),
                        * NULL for a pulled file disk (issue 23) */
    bool done;         /* pulled: independent of the repository */
    bool served;       /* its server listens */
    bool pulling;      /* a block job runs on it */
    bool pulled;       /* no job and no backing left: every byte is in the
                        * overlay, but the journal still says not done (the
                        * command that pulled was --no-wait or ended):
                        * `recover` finishes */
    uint64_t cur, end; /* the job's progress when pulling */
} vmsh_instant_disk_status;

typedef struct vmsh_instant_status {
    char *vm, *backup, *step, *started;
    char *vm_state; /* libvirt's, e.g. "running", "paused", "shut off", "missing" */
    vmsh_instant_disk_status *disks;
    size_t n_disks;
} vmsh_instant_status;

int vmsh_instant_list(const vmsh_requestor_config *cfg, vmsh_instant_status **out, size_t *n,
                      vmsh_error **err);
void vmsh_instant_list_free(vmsh_instant_status *s, size_t n);

#endif
