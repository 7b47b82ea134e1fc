/* writer.h - how a writer plugs into the coordinator (SPEC.md "The model").
 *
 * A writer is a versioned table of callbacks with a `free`, in the manner of
 * libgit2's odb backends: the implementation embeds `vmsh_writer_ops` as the
 * FIRST member of its own struct, fills `version` with
 * VMSH_WRITER_OPS_VERSION, its name and writer ID, and the callbacks it needs
 * (a NULL callback means "nothing to do at that event"). The coordinator
 * passes the table back as `self`; the implementation casts it to its struct.
 *
 * Each callback returns 0 or a negative errno and on failure sets *err saying
 * what failed, on which VM or file, and what to do; vmsh_error.retryable says
 * whether running the set again could help. A callback must finish by the
 * set's deadline (vmsh_set_deadline_ms): a callback that returns after it
 * fails with -ETIMEDOUT even when it reports success.
 *
 * Every external action (freeze, save, pause, backup job, overlay, scratch
 * file, undefine, a script's prepare-snapshot ...) is journalled before it is
 * taken (vmsh_set_journal_begin), so that `undo` can reverse it after the
 * process was killed (SPEC R7, docs/formats/journal.md).
 *
 * Callbacks of one set are called from one thread, one at a time.
 */
#ifndef VMSH_COORD_WRITER_H
#define VMSH_COORD_WRITER_H

#include <vmshadow/coord/journal.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/util/error.h>

#define VMSH_WRITER_OPS_VERSION 1

/* The events of SPEC.md "The model", in the order a backup sends them, then
 * Abort, then the restore events. */
typedef enum vmsh_event {
    VMSH_EVENT_IDENTIFY,
    VMSH_EVENT_PREPARE_BACKUP,
    VMSH_EVENT_PREPARE_SNAPSHOT,
    VMSH_EVENT_FREEZE,
    VMSH_EVENT_THAW,
    VMSH_EVENT_POST_SNAPSHOT,
    VMSH_EVENT_BACKUP_COMPLETE,
    VMSH_EVENT_ABORT,
    VMSH_EVENT_PRE_RESTORE,
    VMSH_EVENT_POST_RESTORE,
    VMSH_EVENT_COUNT
} vmsh_event;

/* "identify", "prepare-backup", "prepare-snapshot", "freeze", "thaw",
 * "post-snapshot", "backup-complete", "abort", "pre-restore", "post-restore"
 * (the names of CLI.md's script-writer keys and docs/formats/writer-state.md). */
const char *vmsh_event_name(vmsh_event e);
/* The event named `name`, or -1. */
int vmsh_event_from_name(const char *name);

/* A snapshot set (or restore run) in progress; see coord.h. */
typedef struct vmsh_set vmsh_set;

typedef struct vmsh_writer_ops vmsh_writer_ops;
struct vmsh_writer_ops {
    unsigned version; /* VMSH_WRITER_OPS_VERSION */
    const char *name; /* shown by `vmshadow writers`, e.g. "vmshadow VM writer" */
    const char *id;   /* writer ID, a UUID string fixed for the writer's life (R17) */
    const char *kind; /* "vm", "script", ... (shown, recorded) */

    /* Describes the writer's components (one per VM for the VM writer) into
     * `md`, which the coordinator owns. Nothing may be changed on the host. */
    int (*identify)(vmsh_writer_ops *self, vmsh_set *set, vmsh_metadata *md, vmsh_error **err);
    int (*prepare_backup)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    int (*prepare_snapshot)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    int (*freeze)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    int (*thaw)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    /* After this returns, the files of the writer's components (their
     * sources, vmsh_file_set_source_*) must be readable by the requestor. */
    int (*post_snapshot)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    int (*backup_complete)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    /* Undoes everything this writer did in this set (journal entries it
     * marked undone). Called at most once per set, also for the writer that
     * failed. Its failure is recorded but changes nothing else. */
    int (*abort)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    /* Restore: `vmsh_set_metadata(set, self)` holds the components from the
     * backup document; vmsh_component_selected() says which are restored. */
    int (*pre_restore)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);
    int (*post_restore)(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err);

    /* Reverses one journal entry this writer wrote in a run that did not end
     * (the process was killed). `entry->state` says whether the action was
     * known to be done or only begun. Must tolerate an action that never
     * took effect. Runs without a set, possibly in another process. */
    int (*undo)(vmsh_writer_ops *self, const vmsh_journal_entry *entry, vmsh_error **err);

    /* Frees the writer; the coordinator never calls it: whoever created the
     * writer owns it (see vmsh_writer_free). */
    void (*free)(vmsh_writer_ops *self);
};

/* Calls w->free(w); accepts NULL. */
void vmsh_writer_free(vmsh_writer_ops *w);

#define VMSH_PROVIDER_OPS_VERSION 1

/* A provider takes the point-in-time copies of storage (SPEC "The model").
 * Same conventions as writers; its `id` names it in the journal. */
typedef struct vmsh_provider_ops vmsh_provider_ops;
struct vmsh_provider_ops {
    unsigned version; /* VMSH_PROVIDER_OPS_VERSION */
    const char *name;
    const char *id;
    /* After every writer's PrepareForSnapshot: look at the set's files
     * (vmsh_set_writer_count/vmsh_set_writer_metadata) and get ready. */
    int (*prepare)(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err);
    /* Between Freeze and Thaw: take the copies ("commit the snapshot set"). */
    int (*commit)(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err);
    /* After the requestor copied the data: delete the copies / merge back. */
    int (*release)(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err);
    /* Undoes all of this set; at most once per set, after any failure. */
    int (*abort)(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err);
    int (*undo)(vmsh_provider_ops *self, const vmsh_journal_entry *entry, vmsh_error **err);
    void (*free)(vmsh_provider_ops *self);
};

void vmsh_provider_free(vmsh_provider_ops *p);

#endif
