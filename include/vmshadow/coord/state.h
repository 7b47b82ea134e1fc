/* state.h - writer states (R17, docs/formats/writer-state.md).
 *
 * During a set each writer moves through the states below; the state it ends
 * in, the error it failed with and the outcome of each event are recorded in
 * <state dir>/writers.json after every run (backup, restore, recover), so that
 * `vmshadow writers` shows them. Loading and saving are serialised by a lock
 * beside the file; the store itself is not thread-safe.
 */
#ifndef VMSH_COORD_STATE_H
#define VMSH_COORD_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/util/error.h>

#define VMSH_WRITER_STATE_VERSION 1

typedef enum vmsh_writer_state {
    VMSH_WSTATE_STABLE, /* idle: no run yet, or the last one ended */
    VMSH_WSTATE_WAITING_FOR_FREEZE,
    VMSH_WSTATE_WAITING_FOR_THAW,
    VMSH_WSTATE_WAITING_FOR_POST_SNAPSHOT,
    VMSH_WSTATE_WAITING_FOR_BACKUP_COMPLETE,
    VMSH_WSTATE_FAILED_AT_IDENTIFY,
    VMSH_WSTATE_FAILED_AT_PREPARE_BACKUP,
    VMSH_WSTATE_FAILED_AT_PREPARE_SNAPSHOT,
    VMSH_WSTATE_FAILED_AT_FREEZE,
    VMSH_WSTATE_FAILED_AT_THAW,
    VMSH_WSTATE_FAILED_AT_POST_SNAPSHOT,
    VMSH_WSTATE_FAILED_AT_BACKUP_COMPLETE,
    VMSH_WSTATE_FAILED_AT_ABORT,
    VMSH_WSTATE_FAILED_AT_PRE_RESTORE,
    VMSH_WSTATE_FAILED_AT_POST_RESTORE,
    VMSH_WSTATE_INTERRUPTED, /* its process was killed mid-set; recover undid it */
    VMSH_WSTATE_COUNT
} vmsh_writer_state;

/* "stable", "waiting-for-freeze", ..., "failed-at-prepare-snapshot", ... */
const char *vmsh_writer_state_name(vmsh_writer_state s);
int vmsh_writer_state_from_name(const char *name); /* -1 when unknown */

/* One event of a writer's last run. */
typedef struct vmsh_event_record {
    char *event;  /* event name (writer.h) */
    char *result; /* "ok", "failed", "timed-out" */
    int64_t ms;   /* how long the callback took */
} vmsh_event_record;

/* What is recorded of one writer. Strings are owned by the store. */
typedef struct vmsh_writer_record {
    char *id, *name, *kind;
    vmsh_writer_state state;
    bool has_error; /* the members below describe the last error */
    char *error_event;
    int error_code; /* negative errno */
    char *error_message;
    bool error_retryable;
    char *set_id;    /* last run; NULL when none */
    char *operation; /* "backup", "restore", "recover" */
    char *result;    /* "completed", "aborted", "failed", "interrupted" */
    char *time;      /* RFC 3339, when the run ended */
    vmsh_event_record *events;
    size_t n_events;
} vmsh_writer_record;

typedef struct vmsh_writer_states vmsh_writer_states;

/* An empty store. -ENOMEM. */
int vmsh_writer_states_new(vmsh_writer_states **out, vmsh_error **err);
/* Reads <state_dir>/writers.json; an absent file gives an empty store.
 * Expected errors: -EBADMSG (damaged, the message names the member),
 * -EPROTONOSUPPORT (newer version). */
int vmsh_writer_states_load(const char *state_dir, vmsh_writer_states **out, vmsh_error **err);
int vmsh_writer_states_from_json(struct json_object *doc, vmsh_writer_states **out,
                                 vmsh_error **err);
int vmsh_writer_states_to_json(const vmsh_writer_states *s, struct json_object **out,
                               vmsh_error **err);
size_t vmsh_writer_states_count(const vmsh_writer_states *s);
const vmsh_writer_record *vmsh_writer_states_at(const vmsh_writer_states *s, size_t i);
const vmsh_writer_record *vmsh_writer_states_find(const vmsh_writer_states *s, const char *id);
/* Inserts or replaces (by id) a deep copy of `rec`. -ENOMEM, -EINVAL. */
int vmsh_writer_states_put(vmsh_writer_states *s, const vmsh_writer_record *rec, vmsh_error **err);
/* Merges `s` into the file: under the lock, re-reads it, puts every record
 * of `s`, and writes it atomically. */
int vmsh_writer_states_record(const char *state_dir, const vmsh_writer_states *s, vmsh_error **err);
void vmsh_writer_states_free(vmsh_writer_states *s);

#endif
