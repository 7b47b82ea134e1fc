/* state.c - recorded writer states (include/vmshadow/coord/state.h,
 * docs/formats/writer-state.md). */
#include <vmshadow/coord/state.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/lock.h>
#include <vmshadow/util/mem.h>

#include "jsonutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATES_FILE      "writers.json"
#define STATES_LOCK      "writers.lock"
#define STATES_MAX_BYTES (4u * 1024 * 1024)

static const char *const state_names[VMSH_WSTATE_COUNT] = {
    [VMSH_WSTATE_STABLE] = "stable",
    [VMSH_WSTATE_WAITING_FOR_FREEZE] = "waiting-for-freeze",
    [VMSH_WSTATE_WAITING_FOR_THAW] = "waiting-for-thaw",
    [VMSH_WSTATE_WAITING_FOR_POST_SNAPSHOT] = "waiting-for-post-snapshot",
    [VMSH_WSTATE_WAITING_FOR_BACKUP_COMPLETE] = "waiting-for-backup-complete",
    [VMSH_WSTATE_FAILED_AT_IDENTIFY] = "failed-at-identify",
    [VMSH_WSTATE_FAILED_AT_PREPARE_BACKUP] = "failed-at-prepare-backup",
    [VMSH_WSTATE_FAILED_AT_PREPARE_SNAPSHOT] = "failed-at-prepare-snapshot",
    [VMSH_WSTATE_FAILED_AT_FREEZE] = "failed-at-freeze",
    [VMSH_WSTATE_FAILED_AT_THAW] = "failed-at-thaw",
    [VMSH_WSTATE_FAILED_AT_POST_SNAPSHOT] = "failed-at-post-snapshot",
    [VMSH_WSTATE_FAILED_AT_BACKUP_COMPLETE] = "failed-at-backup-complete",
    [VMSH_WSTATE_FAILED_AT_ABORT] = "failed-at-abort",
    [VMSH_WSTATE_FAILED_AT_PRE_RESTORE] = "failed-at-pre-restore",
    [VMSH_WSTATE_FAILED_AT_POST_RESTORE] = "failed-at-post-restore",
    [VMSH_WSTATE_INTERRUPTED] = "interrupted",
};

const char *vmsh_writer_state_name(vmsh_writer_state s)
{
    return (unsigned)s < VMSH_WSTATE_COUNT ? state_names[s] : "unknown";
}

int vmsh_writer_state_from_name(const char *name)
{
    for (int i = 0; name && i < VMSH_WSTATE_COUNT; i++)
        if (strcmp(state_names[i], name) == 0)
            return i;
    return -1;
}

struct vmsh_writer_states {
    vmsh_writer_record *recs;
    size_t n;
};

static void record_clear(vmsh_writer_record *r)
{
    free(r->id);
    free(r->name);
    free(r->kind);
    free(r->error_event);
    free(r->error_message);
    free(r->set_id);
    free(r->operation);
    free(r->result);
    free(r->time);
    for (size_t i = 0; i < r->n_events; i++) {
        free(r->events[i].event);
        free(r->events[i].result);
    }
    free(r->events);
    memset(r, 0, sizeof(*r));
}

void vmsh_writer_states_free(vmsh_writer_states *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        record_clear(&s->recs[i]);
    free(s->recs);
    free(s);
}

int vmsh_writer_states_new(vmsh_writer_states **out, vmsh_error **err)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
}

size_t vmsh_writer_states_count(const vmsh_writer_states *s)
{
    return s->n;
}

const vmsh_writer_record *vmsh_writer_states_at(const vmsh_writer_states *s, size_t i)
{
    return i < s->n ? &s->recs[i] : NULL;
}

const vmsh_writer_record *vmsh_writer_states_find(const vmsh_writer_states *s, const char *id)
{
    for (size_t i = 0; id && i < s->n; i++)
        if (strcmp(s->recs[i].id, id) == 0)
            return &s->recs[i];
    return NULL;
}

static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        return -ENOMEM;
    return 0;
}

static int record_copy(vmsh_writer_record *d, const vmsh_writer_record *s)
{
    memset(d, 0, sizeof(*d));
    d->state = s->state;
    d->has_error = s->has_error;
    d->error_code = s->error_code;
    d->error_retryable = s->error_retryable;
    int r = dup_opt(&d->id, s->id) | dup_opt(&d->name, s->name) | dup_opt(&d->kind, s->kind) |
            dup_opt(&d->error_event, s->error_event) |
            dup_opt(&d->error_message, s->error_message) | dup_opt(&d->set_id, s->set_id) |
            dup_opt(&d->operation, s->operation) | dup_opt(&d->result, s->result) |
            dup_opt(&d->time, s->time);
    if (!r && s->n_events) {
        d->events = vmsh_calloc_array(s->n_events, sizeof(*d->events));
        if (!d->events)
            r = -ENOMEM;
        for (size_t i = 0; !r && i < s->n_events; i++) {
            d->n_events++;
            r = dup_opt(&d->events[i].event, s->events[i].event) |
                dup_opt(&d->events[i].result, s->events[i].result);
            d->events[i].ms = s->events[i].ms;
        }
    }
    if (r) {
        record_clear(d);
        return -ENOMEM;
    }
    return 0;
}

int vmsh_writer_states_put(vmsh_writer_states *s, const vmsh_writer_record *rec, vmsh_error **err)
{
    if (!rec->id || !*rec->id)
        return vmsh_error_set(err, -EINVAL, "a writer state needs the writer's ID");
    vmsh_writer_record copy;
    if (record_copy(&copy, rec) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->recs[i].id, rec->id) == 0) {
            record_clear(&s->recs[i]);
            s->recs[i] = copy;
            return 0;
        }
    vmsh_writer_record *a = vmsh_realloc_array(s->recs, s->n + 1, sizeof(*a));
    if (!a) {
        record_clear(&copy);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->recs = a;
    s->recs[s->n++] = copy;
    return 0;
}

static int record_to_json(const vmsh_writer_record *r, struct json_object **out)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return -ENOMEM;
    int bad = vmsh_json_add_str(o, "id", r->id) || vmsh_json_add_str(o, "name", r->name) ||
              vmsh_json_add_str(o, "kind", r->kind) ||
              vmsh_json_add_str(o, "state", vmsh_writer_state_name(r->state));
    struct json_object *e = NULL;
    if (!bad && r->has_error) {
        e = json_object_new_object();
        bad = !e || vmsh_json_add_str(e, "event", r->error_event) ||
              json_object_object_add(e, "code", json_object_new_int(r->error_code)) ||
              vmsh_json_add_str(e, "message", r->error_message) ||
              json_object_object_add(e, "retryable", json_object_new_boolean(r->error_retryable));
    }
    if (!bad) {
        bad = json_object_object_add(o, "last_error", e);
        e = NULL;
    }
    struct json_object *run = NULL;
    if (!bad && r->set_id) {
        run = json_object_new_object();
        struct json_object *evs = json_object_new_array();
        bad = !run || !evs;
        for (size_t i = 0; !bad && i < r->n_events; i++) {
            struct json_object *ev = json_object_new_object();
            bad = !ev || vmsh_json_add_str(ev, "event", r->events[i].event) ||
                  vmsh_json_add_str(ev, "result", r->events[i].result) ||
                  json_object_object_add(ev, "ms", json_object_new_int64(r->events[i].ms)) ||
                  json_object_array_add(evs, ev);
        }
        if (!bad) {
            bad = vmsh_json_add_str(run, "set_id", r->set_id) ||
                  vmsh_json_add_str(run, "operation", r->operation) ||
                  vmsh_json_add_str(run, "result", r->result) ||
                  vmsh_json_add_str(run, "time", r->time) ||
                  json_object_object_add(run, "events", evs);
            evs = NULL;
        }
        json_object_put(evs);
    }
    if (!bad) {
        bad = json_object_object_add(o, "last_run", run);
        run = NULL;
    }
    json_object_put(e);
    json_object_put(run);
    if (bad) {
        json_object_put(o);
        return -ENOMEM;
    }
    *out = o;
    return 0;
}

int vmsh_writer_states_to_json(const vmsh_writer_states *s, struct json_object **out,
                               vmsh_error **err)
{
    struct json_object *o = json_object_new_object();
    struct json_object *a = json_object_new_array();
    int bad = !o || !a ||
              json_object_object_add(o, "version", json_object_new_int(VMSH_WRITER_STATE_VERSION));
    for (size_t i = 0; !bad && i < s->n; i++) {
        struct json_object *w = NULL;
        bad = record_to_json(&s->recs[i], &w) < 0 || json_object_array_add(a, w);
    }
    if (!bad) {
        bad = json_object_object_add(o, "writers", a);
        a = NULL;
    }
    json_object_put(a);
    if (bad) {
        json_object_put(o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = o;
    return 0;
}

static int record_from_json(struct json_object *w, vmsh_writer_record *r, vmsh_error **err)
{
    const char *id, *name, *kind = NULL, *state;
    const char *where = "writer state";
    int rc;
    if ((rc = vmsh_json_get_str(w, "id", true, &id, where, err)) < 0 ||
        (rc = vmsh_json_get_str(w, "name", true, &name, where, err)) < 0 ||
        (rc = vmsh_json_get_str(w, "kind", false, &kind, where, err)) < 0 ||
        (rc = vmsh_json_get_str(w, "state", true, &state, where, err)) < 0)
        return rc;
    int st = vmsh_writer_state_from_name(state);
    if (st < 0)
        return vmsh_error_set(err, -EBADMSG, "writer %s: unknown state \"%s\"", name, state);
    /* Borrowed strings: the caller copies the record (states_put). */
    r->id = (char *)id;
    r->name = (char *)name;
    r->kind = (char *)kind;
    r->state = (vmsh_writer_state)st;
    struct json_object *e = NULL;
    if (json_object_object_get_ex(w, "last_error", &e) && e) {
        const char *ev, *msg;
        int64_t code = 0;
        bool retry = false;
        if ((rc = vmsh_json_get_str(e, "event", true, &ev, where, err)) < 0 ||
            (rc = vmsh_json_get_str(e, "message", true, &msg, where, err)) < 0 ||
            (rc = vmsh_json_get_int64(e, "code", true, &code, where, err)) < 0 ||
            (rc = vmsh_json_get_bool(e, "retryable", false, &retry, where, err)) < 0)
            return rc;
        r->has_error = true;
        r->error_event = (char *)ev;
        r->error_message = (char *)msg;
        r->error_code = code < -4095 || code > 0 ? -EIO : (int)code;
        r->error_retryable = retry;
    }
    struct json_object *run = NULL;
    if (json_object_object_get_ex(w, "last_run", &run) && run) {
        const char *sid, *op, *res, *t;
        struct json_object *evs;
        if ((rc = vmsh_json_get_str(run, "set_id", true, &sid, where, err)) < 0 ||
            (rc = vmsh_json_get_str(run, "operation", true, &op, where, err)) < 0 ||
            (rc = vmsh_json_get_str(run, "result", true, &res, where, err)) < 0 ||
            (rc = vmsh_json_get_str(run, "time", true, &t, where, err)) < 0 ||
            (rc = vmsh_json_get_array(run, "events", false, &evs, where, err)) < 0)
            return rc;
        r->set_id = (char *)sid;
        r->operation = (char *)op;
        r->result = (char *)res;
        r->time = (char *)t;
        size_t n = evs ? json_object_array_length(evs) : 0;
        if (n > 1000)
            return vmsh_error_set(err, -EBADMSG, "writer %s: too many events", name);
        if (n) {
            r->events = vmsh_calloc_array(n, sizeof(*r->events));
            if (!r->events)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
            struct json_object *ev = json_object_array_get_idx(evs, i);
            const char *evn, *evr;
            int64_t ms = 0;
            if ((rc = vmsh_json_get_str(ev, "event", true, &evn, where, err)) < 0 ||
                (rc = vmsh_json_get_str(ev, "result", true, &evr, where, err)) < 0 ||
                (rc = vmsh_json_get_int64(ev, "ms", false, &ms, where, err)) < 0)
                return rc;
            r->events[i] = (vmsh_event_record){(char *)evn, (char *)evr, ms};
            r->n_events++;
        }
    }
    return 0;
}

int vmsh_writer_states_from_json(struct json_object *doc, vmsh_writer_states **out,
                                 vmsh_error **err)
{
    int r = vmsh_json_check_version(doc, VMSH_WRITER_STATE_VERSION, "writer states", err);
    if (r < 0)
        return r;
    struct json_object *a;
    if ((r = vmsh_json_get_array(doc, "writers", true, &a, "writer states", err)) < 0)
        return r;
    vmsh_writer_states *s = NULL;
    if ((r = vmsh_writer_states_new(&s, err)) < 0)
        return r;
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        vmsh_writer_record rec = {0};
        r = record_from_json(json_object_array_get_idx(a, i), &rec, err);
        if (r == 0)
            r = vmsh_writer_states_put(s, &rec, err);
        free(rec.events); /* the strings were borrowed */
        if (r < 0) {
            vmsh_writer_states_free(s);
            return r;
        }
    }
    *out = s;
    return 0;
}

int vmsh_writer_states_load(const char *state_dir, vmsh_writer_states **out, vmsh_error **err)
{
    _cleanup_free_ char *path = vmsh_path_join(state_dir, STATES_FILE);
    if (!path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    int r = vmsh_fs_read_all(path, STATES_MAX_BYTES, &text, &len, &e);
    if (r == -ENOENT) {
        vmsh_error_free(e);
        return vmsh_writer_states_new(out, err);
    }
    if (r < 0) {
        vmsh_error_propagate(err, &e);
        return r;
    }
    struct json_object *doc = NULL;
    if ((r = vmsh_json_parse(text, len, &doc, path, err)) < 0)
        return r;
    r = vmsh_writer_states_from_json(doc, out, err);
    json_object_put(doc);
    if (r < 0)
        vmsh_error_prefix(err, "%s", path);
    return r;
}

int vmsh_writer_states_record(const char *state_dir, const vmsh_writer_states *s, vmsh_error **err)
{
    int r = vmsh_fs_mkdir_p(state_dir, 0700, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *lock_path = vmsh_path_join(state_dir, STATES_LOCK);
    _cleanup_free_ char *path = vmsh_path_join(state_dir, STATES_FILE);
    if (!lock_path || !path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_lock *lock = NULL;
    _cleanup_free_ char *withnl = NULL;
    if ((r = vmsh_lock_take(&lock, lock_path, true, true, "writer states", err)) < 0)
        return r;
    vmsh_writer_states *all = NULL;
    vmsh_error *e = NULL;
    if (vmsh_writer_states_load(state_dir, &all, &e) < 0) {
        /* A damaged file must not stop recording: the new states replace it. */
        vmsh_error_free(e);
        if ((r = vmsh_writer_states_new(&all, err)) < 0)
            goto out;
    }
    for (size_t i = 0; i < s->n; i++)
        if ((r = vmsh_writer_states_put(all, &s->recs[i], err)) < 0)
            goto out;
    struct json_object *doc = NULL;
    if ((r = vmsh_writer_states_to_json(all, &doc, err)) < 0)
        goto out;
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY |
                                                               JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!text || asprintf(&withnl, "%s\n", text) < 0) {
        withnl = NULL;
        json_object_put(doc);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    r = vmsh_fs_write_atomic(path, withnl, strlen(withnl), 0644, err);
    json_object_put(doc);
out:
    vmsh_writer_states_free(all);
    vmsh_lock_free(lock);
    return r;
}
