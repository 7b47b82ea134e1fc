/* coord.h - the coordinator: runs one snapshot set at a time over writers and
 * providers (SPEC.md "The model"), records each writer's state, aborts the
 * whole set on any failure (R5), and undoes what an interrupted run left
 * (R7). It knows writers and providers only through their tables (writer.h)
 * and the requestor only through vmsh_requestor_ops.
 *
 * Backup: Identify -> PrepareForBackup -> PrepareForSnapshot -> providers
 * prepare -> Freeze -> providers commit -> Thaw -> PostSnapshot -> requestor
 * copies every file -> providers release -> BackupComplete -> requestor
 * commits the backup document (last, so a backup is visible only when
 * complete). Any failure after Identify sends Abort to every writer of the
 * set (each at most once, also to the one that failed), abort to every
 * provider that was prepared, and abort to the requestor; no document is
 * committed. Thaw goes to every writer Freeze was sent to, whatever happened
 * after. Restore: PreRestore -> requestor restores files -> PostRestore.
 *
 * The calls below are not thread-safe with respect to one state directory
 * beyond what their locks give: the snapshot-set lock (one set per host,
 * -EBUSY at once) and each journal's lock.
 */
#ifndef VMSH_COORD_COORD_H
#define VMSH_COORD_COORD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/coord/journal.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/coord/state.h>
#include <vmshadow/coord/writer.h>
#include <vmshadow/util/error.h>

#define VMSH_DEFAULT_EVENT_TIMEOUT_MS (600 * 1000) /* config "event-timeout" */
#define VMSH_DEFAULT_FREEZE_LIMIT_MS  (60 * 1000)  /* config "freeze-limit" */

typedef struct vmsh_coord_config {
    const char *state_dir;    /* journals, writer states, the set lock */
    int64_t event_timeout_ms; /* per event and writer; <= 0: default */
    int64_t freeze_limit_ms;  /* Freeze -> Thaw bound; <= 0: default */
    /* When non-NULL and it becomes non-zero (e.g. set by the requestor's
     * SIGINT/SIGTERM handler), the set stops sending events other than Thaw
     * and Abort and aborts with -ECANCELED. Checked before every event, every
     * file copied, and by writers through vmsh_set_cancelled. */
    volatile sig_atomic_t *cancel;
    /* Called after each event a writer was sent (may be NULL), e.g. for the
     * requestor's verbose output: writer index, event, 0 or the negative
     * errno it failed with, and how long it took. */
    void (*on_event)(void *opaque, const vmsh_set *set, size_t writer, vmsh_event ev, int result,
                     int64_t ms);
    void *on_event_opaque;
    /* Called before and after each event sent to a writer and each step of
     * a provider (may be NULL; issue 21: the requestor's step callbacks):
     * `who` is its name, `step` the event or step name; at the end, `result`
     * is 0 or the negative errno and `ms` how long it took. Shares
     * on_event_opaque. */
    void (*on_step)(void *opaque, const vmsh_set *set, bool provider, const char *who,
                    const char *step, bool end, int result, int64_t ms);
} vmsh_coord_config;

/* What the requestor asked for; writers read it through vmsh_set_options. */
typedef struct vmsh_set_options {
    const char *const *targets; /* e.g. VM names; may be NULL when n_targets is 0 */
    size_t n_targets;
    bool all;                /* every target the writers know (e.g. --all) */
    const char *method;      /* "auto", "saved-state", "guest"; NULL: "auto" */
    bool full;               /* no incremental */
    bool force;              /* restore: may replace existing objects (R9) */
    const char *restore_dir; /* restore: put files under this directory (--to) */
    const char *restore_as;  /* restore: one component under a new name (--as) */
    bool host_devices;       /* restore: keep host devices of the backup's config */
    /* restore: the requestor wrote each disk as a qcow2 overlay on the
     * served backup (instant restore, issue 23): moved into place as it
     * is, and the definition names it qcow2 */
    bool overlay_disks;
    bool include_shared; /* backup: capture <shareable/> disks too (R6, issue 25) */
    bool allow_excluded; /* backup: accept VMs whose disks are all excluded or whose
                          * firmware variables or TPM state cannot be read (R6) */
} vmsh_set_options;

#define VMSH_REQUESTOR_OPS_VERSION 1

/* The requestor (the CLI): moves the data. Same conventions as writer.h. */
typedef struct vmsh_requestor_ops vmsh_requestor_ops;
struct vmsh_requestor_ops {
    unsigned version; /* VMSH_REQUESTOR_OPS_VERSION */
    /* Backup, after PostSnapshot: copy one file from its source into the
     * repository and record the result with vmsh_file_set_stored. */
    int (*copy_file)(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                     const vmsh_component *c, vmsh_file *f, vmsh_error **err);
    /* Backup, last step: store the backup document (JSON text) as the
     * backup and return its ID (*out_id, malloc'ed). */
    int (*commit)(vmsh_requestor_ops *self, vmsh_set *set, const char *document, char **out_id,
                  vmsh_error **err);
    /* Backup aborted: drop whatever was written (may be NULL). */
    void (*abort)(vmsh_requestor_ops *self, vmsh_set *set);
    /* Restore, between PreRestore and PostRestore: restore one file of a
     * selected component and record the outcome with vmsh_file_set_restored
     * (a failure of one file is recorded there, not returned: PostRestore
     * decides, R11). A returned error stops the restore. */
    int (*restore_file)(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                        const vmsh_component *c, vmsh_file *f, vmsh_error **err);
};

/* Runs one backup snapshot set. Takes the host's snapshot-set lock (-EBUSY at
 * once when another set runs), first undoes what dead runs left
 * (vmsh_coord_recover, silently), writes the journal, records every writer's
 * state (docs/formats/writer-state.md) whatever the outcome. *out receives
 * the finished set (also when it aborted, unless it could not start) for
 * vmsh_set_backup_id & co; free with vmsh_set_free. Returns 0 when the backup
 * was committed. Expected errors: -EBUSY (another set), the error of the
 * first writer/provider/requestor that failed (the set was aborted),
 * -ETIMEDOUT (an event or the freeze window ran past its limit). */
int vmsh_coord_backup(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                      size_t n_writers, vmsh_provider_ops *const *providers, size_t n_providers,
                      vmsh_requestor_ops *req, const vmsh_set_options *opts, vmsh_set **out,
                      vmsh_error **err);

/* Runs a restore of the components of `backup` (a parsed backup document,
 * document.h) selected by opts->targets (all when none): PreRestore to each
 * writer that has components in it, restore_file for each of their files,
 * PostRestore. Writers of the backup that are not in `writers` make it fail
 * with -ENOENT before anything is done. */
struct vmsh_backup_doc;
int vmsh_coord_restore(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                       size_t n_writers, vmsh_requestor_ops *req,
                       const struct vmsh_backup_doc *backup, const vmsh_set_options *opts,
                       vmsh_set **out, vmsh_error **err);

/* What vmsh_coord_recover did with one journal entry. */
typedef struct vmsh_recover_item {
    char *journal; /* path of the journal */
    char *set_id;  /* the interrupted run */
    char *owner;   /* writer/provider ID */
    char *owner_name;
    char *action;
    vmsh_journal_state was; /* begun or done */
    bool undone;            /* undo succeeded */
    char *error;            /* why not, when !undone */
} vmsh_recover_item;

typedef struct vmsh_recover_report {
    vmsh_recover_item *items;
    size_t n_items;
    size_t journals_removed; /* runs fully recovered */
    size_t journals_busy;    /* runs still alive in another process: left alone */
    size_t journals_failed;  /* left in place (an undo failed, or damaged) */
} vmsh_recover_report;

/* Replays every unfinished journal under cfg->state_dir whose process is
 * gone (holding the snapshot-set lock meanwhile when it is free): for each entry not undone, newest
 * first, calls the owner's `undo` (found by ID among `writers` and `providers`) and marks it
 * undone. A journal whose entries are all undone is removed. The writers of an interrupted run get
 * their state recorded ("interrupted"). *out (always set on return 0) says what was done; free with
 * vmsh_recover_report_free. Returns 0 when everything found could be undone (or nothing was found);
 * -EAGAIN (with *out set) when something could not (unknown owner, undo
 * failed, damaged journal): the journals stay for the next attempt. */
int vmsh_coord_recover(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                       size_t n_writers, vmsh_provider_ops *const *providers, size_t n_providers,
                       vmsh_recover_report **out, vmsh_error **err);
void vmsh_recover_report_free(vmsh_recover_report *r);

/* ---- A set, for writers, providers, the requestor and the caller ---- */

const char *vmsh_set_id(const vmsh_set *set);
const char *vmsh_set_operation(const vmsh_set *set); /* "backup", "restore" */
const vmsh_set_options *vmsh_set_options_of(const vmsh_set *set);
/* The monotonic time (vmsh_now_ms) by which the current callback must end. */
int64_t vmsh_set_deadline_ms(const vmsh_set *set);
/* The event being sent now. */
vmsh_event vmsh_set_event(const vmsh_set *set);
/* True once the requestor asked to stop (vmsh_coord_config.cancel): a long
 * callback should end early with -ECANCELED (Thaw and Abort should not). */
bool vmsh_set_cancelled(const vmsh_set *set);

/* The writers of the set and their metadata (borrowed). */
size_t vmsh_set_writer_count(const vmsh_set *set);
vmsh_writer_ops *vmsh_set_writer(const vmsh_set *set, size_t i);
vmsh_metadata *vmsh_set_writer_metadata(const vmsh_set *set, size_t i);
/* The metadata of writer `w` in this set, or NULL. */
vmsh_metadata *vmsh_set_metadata(const vmsh_set *set, const vmsh_writer_ops *w);
/* The writer's state now (VMSH_WSTATE_*), and the error it failed with. */
vmsh_writer_state vmsh_set_writer_state(const vmsh_set *set, size_t i);
const vmsh_error *vmsh_set_writer_error(const vmsh_set *set, size_t i);

/* Journals an external action of `owner` (a writer or provider ID) before
 * it is taken; see journal.h. */
int vmsh_set_journal_begin(vmsh_set *set, const char *owner, const char *action,
                           struct json_object *data, uint64_t *out_seq, vmsh_error **err);
int vmsh_set_journal_mark(vmsh_set *set, uint64_t seq, vmsh_journal_state state, vmsh_error **err);
/* vmsh_journal_mark_done_unsynced on the set's journal: a "done" mark for an
 * action whose undo is the same begun or done, inside the freeze window. */
int vmsh_set_journal_mark_done_unsynced(vmsh_set *set, uint64_t seq, vmsh_error **err);
/* The set's journal (borrowed; NULL once the set ended). */
vmsh_journal *vmsh_set_journal(vmsh_set *set);

/* A writer reports how long something of its own stayed frozen or stopped
 * (e.g. the VM writer: from a VM's save in PrepareForSnapshot to its resume
 * in PostSnapshot). The set's freeze window is the largest of these and of
 * its Freeze -> Thaw time; the freeze limit bounds only the latter. */
void vmsh_set_note_window_ms(vmsh_set *set, int64_t ms);

/* After the run. */
bool vmsh_set_aborted(const vmsh_set *set);
const char *vmsh_set_backup_id(const vmsh_set *set);    /* NULL unless committed */
int64_t vmsh_set_freeze_window_ms(const vmsh_set *set); /* -1 when no Freeze was sent */
uint64_t vmsh_set_bytes_read(const vmsh_set *set);
uint64_t vmsh_set_bytes_stored(const vmsh_set *set);
/* The backup document (JSON text) that was committed, or NULL. */
const char *vmsh_set_document(const vmsh_set *set);
void vmsh_set_free(vmsh_set *set);

/* A new random UUID (version 4) as text into buf. */
int vmsh_uuid_random(char buf[static 37], vmsh_error **err);

#endif
