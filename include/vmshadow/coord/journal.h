/* journal.h - the journal of external actions (SPEC R7,
 * docs/formats/journal.md).
 *
 * One append-only file per run (snapshot set or restore) under
 * <state dir>/journal/<set id>.journal. Before a writer or provider takes an
 * external action (freeze, pause, save, backup job, overlay, scratch file,
 * undefine, a script writer's prepare-snapshot ...) it appends an entry and
 * the entry is fsynced; after the action it appends a "done" mark, and once
 * the action no longer needs undoing (thawed, resumed, merged, removed, or
 * the set ended normally) an "undone" mark. The run's process holds an
 * exclusive lock on its journal, so another process never replays a journal
 * that is still alive. A run that ends with every entry undone removes its
 * journal; anything else is left for vmsh_coord_recover (coord.h), which
 * calls the owning writer's or provider's `undo` for each entry not undone,
 * newest first.
 *
 * Not thread-safe: one journal is used by one thread.
 */
#ifndef VMSH_COORD_JOURNAL_H
#define VMSH_COORD_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/util/error.h>

#define VMSH_JOURNAL_VERSION 1

typedef struct vmsh_journal vmsh_journal;

typedef enum vmsh_journal_state {
    VMSH_JOURNAL_BEGUN,  /* written; the action may or may not have happened */
    VMSH_JOURNAL_DONE,   /* the action took effect and still needs undoing */
    VMSH_JOURNAL_UNDONE, /* nothing left to undo */
} vmsh_journal_state;

/* One action as read back (by replay) or handed to `undo`. */
typedef struct vmsh_journal_entry {
    uint64_t seq;             /* 1, 2, ... in the order written */
    const char *set_id;       /* the run that wrote it */
    const char *operation;    /* "backup", "restore" */
    const char *owner;        /* the writer's or provider's ID */
    const char *action;       /* owner-defined, e.g. "freeze", "save", "overlay" */
    struct json_object *data; /* owner-defined detail (borrowed; may be NULL) */
    vmsh_journal_state state; /* as last marked */
} vmsh_journal_entry;

/* Creates <state_dir>/journal/<set_id>.journal (and the directory), writes its
 * header, fsyncs it and the directory, and locks it for this process.
 * Expected errors: -EEXIST, -EACCES, -ENOSPC. */
int vmsh_journal_create(vmsh_journal **out, const char *state_dir, const char *set_id,
                        const char *operation, vmsh_error **err);

/* Appends an action entry and fsyncs it BEFORE the caller takes the action.
 * `data` may be NULL (not consumed: the journal serialises it at once).
 * *out_seq receives the entry's number, for vmsh_journal_mark. */
int vmsh_journal_begin(vmsh_journal *j, const char *owner, const char *action,
                       struct json_object *data, uint64_t *out_seq, vmsh_error **err);

/* Appends a "done" or "undone" mark for entry `seq` and fsyncs it.
 * -ENOENT when no such entry. Marking an entry UNDONE twice is harmless. */
int vmsh_journal_mark(vmsh_journal *j, uint64_t seq, vmsh_journal_state state, vmsh_error **err);

/* As vmsh_journal_mark for a "done" mark, without a sync of its own: the
 * next line that is synced (or nothing, should the process or host die
 * first) makes it durable. Only for an action whose undo is the same
 * begun or done (a freeze, a backup job, a checkpoint): its loss changes
 * nothing, and the caller saves a disk flush where it counts (issue 27
 * point 4: inside a set's freeze window). -EINVAL for another state. */
int vmsh_journal_mark_done_unsynced(vmsh_journal *j, uint64_t seq, vmsh_error **err);

/* The entries this run has written, with their current state (borrowed,
 * valid until the next call on `j`), e.g. for an abort that undoes exactly
 * what a writer did. */
size_t vmsh_journal_count(const vmsh_journal *j);
const vmsh_journal_entry *vmsh_journal_entry_at(const vmsh_journal *j, size_t i);
/* Number of entries not yet marked undone. */
size_t vmsh_journal_open_count(const vmsh_journal *j);
const char *vmsh_journal_path(const vmsh_journal *j);

/* Ends the run: removes the file when every entry is undone (then returns 1),
 * else keeps it for recovery (returns 0). Releases the lock and frees `j`;
 * accepts NULL. */
int vmsh_journal_close(vmsh_journal *j, vmsh_error **err);

/* Frees without removing anything (the file stays for recovery). */
void vmsh_journal_free(vmsh_journal *j);

/* Replay support (used by vmsh_coord_recover). Opens an existing journal and
 * takes its lock without waiting: -EBUSY when its process is still alive.
 * Then the entries are those read back from the file (a torn last line, left
 * by a kill in the middle of a write, is ignored: its action was never
 * taken). Expected errors: -EBUSY, -EBADMSG (damaged; the message names the
 * line), -EPROTONOSUPPORT (written by a newer vmshadow). */
int vmsh_journal_open(vmsh_journal **out, const char *path, vmsh_error **err);
const char *vmsh_journal_set_id(const vmsh_journal *j);
const char *vmsh_journal_operation(const vmsh_journal *j);

#endif
