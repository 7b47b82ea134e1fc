/* requestor.h - the requestor (SPEC.md "The model"; issue 21): the layer
 * above writers and providers and below the command line. One call runs a
 * backup (recovery first, the host's writers and providers, the repository's
 * history for incremental reads, the coordinator's snapshot set, the copy of
 * every file into the repository, the commit), one a restore. It never
 * prints: what happens is told through vmsh_requestor_callbacks.
 *
 * Not thread-safe: one call at a time per configuration. The callbacks run
 * in the calling thread. */
#ifndef VMSH_REQUESTOR_REQUESTOR_H
#define VMSH_REQUESTOR_REQUESTOR_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>
#include <vmshadow/util/kvconf.h>

struct json_object;

/* What a step of a run is done by. */
typedef enum vmsh_requestor_actor {
    VMSH_ACTOR_WRITER,    /* an event sent to a writer (who: its name) */
    VMSH_ACTOR_PROVIDER,  /* a provider's prepare/commit/release/abort */
    VMSH_ACTOR_REQUESTOR, /* the requestor's own steps: recover, history, copy, commit */
} vmsh_requestor_actor;

#define VMSH_REQUESTOR_CALLBACKS_VERSION 1

/* Events of a run; every member may be NULL. `who` is a writer's or
 * provider's name, or "requestor"; `step` an event name (Identify, ...), a
 * provider step (prepare, ...) or a requestor step ("recover", "history",
 * "copy FILE", "commit"). step_end's `result` is 0 or a negative errno. */
typedef struct vmsh_requestor_callbacks {
    unsigned version; /* VMSH_REQUESTOR_CALLBACKS_VERSION */
    void *opaque;
    void (*step_begin)(void *opaque, vmsh_requestor_actor actor, const char *who, const char *step);
    void (*step_end)(void *opaque, vmsh_requestor_actor actor, const char *who, const char *step,
                     int result, int64_t ms);
    /* A file being copied (backup) or written (restore): bytes done of total. */
    void (*progress)(void *opaque, const char *file, uint64_t done, uint64_t total);
    /* Something the user should know, the run goes on (e.g. R6's excluded
     * disks, a script writer that does not load, a recovery left undone). */
    void (*warning)(void *opaque, const char *message);
    /* Detail for -v. */
    void (*debug)(void *opaque, const char *message);
} vmsh_requestor_callbacks;

/* Where and how. Every pointer is borrowed for the call. */
typedef struct vmsh_requestor_config {
    const char *uri;         /* libvirt connection; NULL: default */
    const char *state_dir;   /* journals, writer states, run files */
    const char *writers_dir; /* script writers */
    const vmsh_kvconf
        *conf; /* agent-timeout, scratch-dir, event-timeout, freeze-limit; may be NULL */
    /* The run stops between steps (before each event, provider step and
     * file copied) once *cancel is non-zero (e.g. set by a SIGINT handler):
     * the set is aborted and nothing is stored (R5). A file's copy already
     * under way runs to its end (the repository's add has no cancel yet).
     * May be NULL. */
    volatile sig_atomic_t *cancel;
    /* Instead of the host's writers and providers (borrowed): for tests and
     * embedders. When writers is NULL, the VM writer, its pull provider
     * and the script writers of writers_dir are built. */
    vmsh_writer_ops *const *writers;
    size_t n_writers;
    vmsh_provider_ops *const *providers;
    size_t n_providers;
} vmsh_requestor_config;

/* One writer that failed in a run. */
typedef struct vmsh_requestor_failure {
    char *state;   /* the writer's state, e.g. "failed-at-freeze" */
    char *message; /* its error */
    bool retryable;
} vmsh_requestor_failure;

/* The outcome of a backup; free with vmsh_requestor_result_free. */
typedef struct vmsh_requestor_result {
    char *backup_id;          /* NULL unless committed */
    char *set_id;             /* NULL when no set started */
    int64_t freeze_window_ms; /* -1 when nothing was frozen or stopped */
    uint64_t bytes_read, bytes_stored;
    struct json_object *vms;     /* array: each VM's summary (name, method, disks' reads ...) */
    struct json_object *writers; /* array: {name, id, state, error} per writer */
    vmsh_requestor_failure *failures;
    size_t n_failures;
    /* R6 (issue 25): what --allow-excluded accepted (VMs with no disk
     * captured, unreadable firmware variables or TPM state) in a committed
     * backup; `backup` then exits with its own code */
    size_t accepted_exclusions;
} vmsh_requestor_result;

void vmsh_requestor_result_free(vmsh_requestor_result *r);

/* What `backup` asks for (targets, --all, --method, --full). */
typedef struct vmsh_requestor_backup_options {
    const char *const *targets;
    size_t n_targets;
    bool all;
    const char *method; /* "auto", "saved-state", "guest"; NULL: auto */
    bool full;
    bool include_shared; /* capture <shareable/> disks too (R6) */
    bool allow_excluded; /* accept what R6 would fail the set for, recorded as excluded */
    /* Opens the repository the backup goes to (for writing); called once the
     * writers exist, so that the VM writer's lookups run meanwhile. The run
     * owns and frees what it returns. */
    int (*open_repo)(void *opaque, vmsh_repo **out, vmsh_error **err);
    void *open_repo_opaque;
} vmsh_requestor_backup_options;

/* Runs one backup. *out is set whatever the outcome (free it, also on
 * failure; NULL only when out of memory). Returns 0 when the backup was
 * committed; else the error of the first writer/provider/step that failed
 * (the set was aborted: nothing is stored, R5), -ECANCELED when *cancel was
 * set, -EBUSY when another set runs. */
int vmsh_requestor_backup(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                          const vmsh_requestor_backup_options *opts, vmsh_requestor_result **out,
                          vmsh_error **err);

/* Replays the journals of interrupted runs (R7) with the host's writers and
 * providers (vmsh_coord_recover). *out is set when it could look. */
int vmsh_requestor_recover(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                           vmsh_recover_report **out, vmsh_error **err);

/* What `restore` asks for. */
typedef struct vmsh_requestor_restore_options {
    const char *backup;         /* an ID, a unique prefix or "latest" */
    const char *const *targets; /* VM names; none: every VM of the backup */
    size_t n_targets;
    const char *restore_dir; /* --to */
    const char *restore_as;  /* --as */
    bool force;              /* replace existing VMs without asking */
    bool host_devices;
    bool dry_run; /* plan only */
    /* Asked before anything is changed when the plan replaces existing VMs
     * and !force (R9): true to go on. NULL: do not replace. */
    bool (*confirm)(void *opaque, struct json_object *plan);
    void *confirm_opaque;
    /* Instant restore (issue 23, requestor/instant.h): the NBD URI the
     * disk file `file` (its name in the repository) is served at. A disk
     * it gives one for is written as a qcow2 overlay on that URI (backing
     * format raw) instead of being restored, and registered as qcow2.
     * NULL: a normal restore. */
    const char *(*disk_backing)(void *opaque, const char *file);
    void *disk_backing_opaque;
} vmsh_requestor_restore_options;

/* The outcome of a restore; free with vmsh_requestor_restore_result_free. */
typedef struct vmsh_requestor_restore_result {
    char *backup_id;          /* the backup's full ID, once found */
    struct json_object *plan; /* the VM writer's plan (array per VM) */
    struct json_object *done; /* after a restore: each selected VM's record (array) */
    bool damaged;             /* a chunk or index was missing or damaged */
} vmsh_requestor_restore_result;

void vmsh_requestor_restore_result_free(vmsh_requestor_restore_result *r);

/* Plans and (unless dry_run) runs a restore from `repo`. *out is set when
 * the backup was found. Returns 0 when every selected VM was restored (or
 * the plan was made); -ENOENT for a VM or backup that is not there. */
int vmsh_requestor_restore(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                           vmsh_repo *repo, const vmsh_requestor_restore_options *opts,
                           vmsh_requestor_restore_result **out, vmsh_error **err);

/* `vmshadow vms`: every VM of the connection, or the named ones (-ENOENT
 * for a name that is no VM), with state, disks (and R6's exclusions), guest
 * agent, and the method a backup with `method` ("auto", "saved-state",
 * "guest"; NULL: auto; -EINVAL for another) would use and why (R2), as the
 * document of `vmshadow --json vms`: {"uri", "vms": [{name, uuid, state,
 * persistent, managed_save, disks: [{target, source, format, kind, device,
 * readonly, excluded, exclusion_reason}], xml_error, agent: {channel,
 * reachable, can_freeze, error, filesystems?}, method, reason}]}. An agent
 * that cannot be probed is a warning. */
int vmsh_requestor_vms(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                       const char *const *names, size_t n_names, const char *method,
                       struct json_object **out, vmsh_error **err);

/* The writers known on this host, for `vmshadow writers`: the VM writer's
 * identity first, then each script writer file (loaded or not). */
typedef struct vmsh_requestor_writer_info {
    char *name, *id, *kind;
    char *file;    /* NULL for the VM writer */
    char *invalid; /* why the file does not load, or NULL */
} vmsh_requestor_writer_info;

int vmsh_requestor_writers(const vmsh_requestor_config *cfg, vmsh_requestor_writer_info **out,
                           size_t *n, vmsh_error **err);
void vmsh_requestor_writers_free(vmsh_requestor_writer_info *a, size_t n);

#endif
