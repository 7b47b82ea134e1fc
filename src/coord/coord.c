/* coord.c - the coordinator: the backup and restore sequences, abort,
 * deadlines, recorded writer states, and recovery of interrupted runs
 * (include/vmshadow/coord/coord.h; SPEC "The model", R5, R7, R17).
 *
 * Rollback follows libvirt's qemu_backup.c: one flag per step taken per
 * writer/provider (in_set, got_freeze, got_abort, prepared), and one abort
 * path that undoes exactly those while the first error is kept. */
#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/coord/trace.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/lock.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/util/version.h>

#include "document_priv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define SET_LOCK "snapshot-set.lock"

typedef struct slot {
    vmsh_writer_ops *w;
    vmsh_metadata *md;
    bool md_owned;
    vmsh_writer_state state;
    vmsh_error *error; /* the writer's own first failure */
    vmsh_event error_event;
    bool in_set;     /* a set event after Identify was sent: it gets Abort */
    bool got_freeze; /* it gets Thaw */
    bool got_abort;
    vmsh_event_record *events;
    size_t n_events;
} slot;

typedef struct pslot {
    vmsh_provider_ops *p;
    bool prepared;
    bool aborted;
} pslot;

struct vmsh_set {
    char id[37];
    const char *operation;
    char *state_dir;
    int64_t event_timeout_ms, freeze_limit_ms;
    volatile sig_atomic_t *cancel;
    void (*on_event)(void *, const vmsh_set *, size_t, vmsh_event, int, int64_t);
    void *on_event_opaque;
    void (*on_step)(void *, const vmsh_set *, bool, const char *, const char *, bool, int, int64_t);
    vmsh_set_options opts; /* valid during the run only */
    slot *slots;
    size_t n;
    pslot *pslots;
    size_t np;
    vmsh_requestor_ops *req;
    vmsh_journal *journal;
    vmsh_event event;
    int64_t deadline;
    bool aborted;
    int64_t freeze_window_ms;
    int64_t noted_window_ms; /* reported by writers (vmsh_set_note_window_ms) */
    char *backup_id, *document;
    uint64_t bytes_read, bytes_stored;
    char started[21];
};

static int check_cancel(const vmsh_set *s, vmsh_error **err);

/* ---- small helpers ---- */

int vmsh_uuid_random(char buf[static 37], vmsh_error **err)
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vmsh_error_set(err, -errno, "cannot get random bytes: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

static vmsh_error *error_dup(const vmsh_error *e)
{
    vmsh_error *d = NULL;
    if (!e)
        return NULL;
    vmsh_error_set(&d, e->code, "%s", e->message);
    if (d)
        d->retryable = e->retryable;
    return d;
}

static vmsh_writer_state failed_at(vmsh_event ev)
{
    switch (ev) {
    case VMSH_EVENT_IDENTIFY:
        return VMSH_WSTATE_FAILED_AT_IDENTIFY;
    case VMSH_EVENT_PREPARE_BACKUP:
        return VMSH_WSTATE_FAILED_AT_PREPARE_BACKUP;
    case VMSH_EVENT_PREPARE_SNAPSHOT:
        return VMSH_WSTATE_FAILED_AT_PREPARE_SNAPSHOT;
    case VMSH_EVENT_FREEZE:
        return VMSH_WSTATE_FAILED_AT_FREEZE;
    case VMSH_EVENT_THAW:
        return VMSH_WSTATE_FAILED_AT_THAW;
    case VMSH_EVENT_POST_SNAPSHOT:
        return VMSH_WSTATE_FAILED_AT_POST_SNAPSHOT;
    case VMSH_EVENT_BACKUP_COMPLETE:
        return VMSH_WSTATE_FAILED_AT_BACKUP_COMPLETE;
    case VMSH_EVENT_ABORT:
        return VMSH_WSTATE_FAILED_AT_ABORT;
    case VMSH_EVENT_PRE_RESTORE:
        return VMSH_WSTATE_FAILED_AT_PRE_RESTORE;
    case VMSH_EVENT_POST_RESTORE:
        return VMSH_WSTATE_FAILED_AT_POST_RESTORE;
    default:
        return VMSH_WSTATE_STABLE;
    }
}

static bool slot_failed(const slot *sl)
{
    return sl->error != NULL;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static void note_event(slot *sl, vmsh_event ev, const char *result, int64_t ms)
{
    vmsh_event_record *a = vmsh_realloc_array(sl->events, sl->n_events + 1, sizeof(*a));
    if (!a)
        return; /* the record is informative; a failed allocation loses one line */
    sl->events = a;
    vmsh_event_record r = {strdup(vmsh_event_name(ev)), strdup(result), ms};
    if (!r.event || !r.result) {
        free(r.event);
        free(r.result);
        return;
    }
    sl->events[sl->n_events++] = r;
}

/* Sends one event to one writer, enforcing its deadline, and records the
 * outcome. On failure the writer's state becomes failed-at-<event> and the
 * error goes to *err (the first error wins). */
static int call_writer(vmsh_set *s, slot *sl, vmsh_event ev, int64_t deadline, vmsh_error **err)
{
    vmsh_writer_ops *w = sl->w;
    int (*fn)(vmsh_writer_ops *, vmsh_set *, vmsh_error **) = NULL;
    switch (ev) {
    case VMSH_EVENT_PREPARE_BACKUP:
        fn = w->prepare_backup;
        break;
    case VMSH_EVENT_PREPARE_SNAPSHOT:
        fn = w->prepare_snapshot;
        break;
    case VMSH_EVENT_FREEZE:
        fn = w->freeze;
        break;
    case VMSH_EVENT_THAW:
        fn = w->thaw;
        break;
    case VMSH_EVENT_POST_SNAPSHOT:
        fn = w->post_snapshot;
        break;
    case VMSH_EVENT_BACKUP_COMPLETE:
        fn = w->backup_complete;
        break;
    case VMSH_EVENT_ABORT:
        fn = w->abort;
        break;
    case VMSH_EVENT_PRE_RESTORE:
        fn = w->pre_restore;
        break;
    case VMSH_EVENT_POST_RESTORE:
        fn = w->post_restore;
        break;
    default:
        break;
    }
    s->event = ev;
    s->deadline = deadline;
    /* Once cancelled, only what undoes (Thaw, Abort) is still sent. */
    if (ev != VMSH_EVENT_THAW && ev != VMSH_EVENT_ABORT && vmsh_set_cancelled(s))
        return check_cancel(s, err);
    vmsh_error *e = NULL;
    if (s->on_step)
        s->on_step(s->on_event_opaque, s, false, w->name, vmsh_event_name(ev), false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    int r = 0;
    if (ev == VMSH_EVENT_IDENTIFY)
        r = w->identify ? w->identify(w, s, sl->md, &e) : 0;
    else if (fn)
        r = fn(w, s, &e);
    int64_t t1 = vmsh_now_ms();
    if (r >= 0 && t1 > deadline) {
        r = vmsh_error_set(&e, -ETIMEDOUT,
                           "took %lld ms, past its deadline (config event-timeout, or "
                           "freeze-limit between Freeze and Thaw)",
                           (long long)(t1 - t0));
        vmsh_error_set_retryable(&e, true);
    }
    if (r < 0 && !e)
        vmsh_error_set(&e, r, "failed: %s", strerror(-r));
    note_event(sl, ev, r >= 0 ? "ok" : r == -ETIMEDOUT ? "timed-out" : "failed", t1 - t0);
    if (s->on_step)
        s->on_step(s->on_event_opaque, s, false, w->name, vmsh_event_name(ev), true, r < 0 ? r : 0,
                   t1 - t0);
    if (s->on_event)
        s->on_event(s->on_event_opaque, s, (size_t)(sl - s->slots), ev, r < 0 ? r : 0, t1 - t0);
    if (r >= 0)
        return 0;
    vmsh_error_prefix(&e, "writer %s at %s", w->name, vmsh_event_name(ev));
    if (!sl->error) {
        sl->error = error_dup(e);
        sl->error_event = ev;
        sl->state = failed_at(ev);
    } else if (ev == VMSH_EVENT_ABORT && sl->state < VMSH_WSTATE_FAILED_AT_IDENTIFY) {
        sl->state = VMSH_WSTATE_FAILED_AT_ABORT;
    }
    vmsh_error_propagate(err, &e);
    return r;
}

typedef enum { P_PREPARE, P_COMMIT, P_RELEASE, P_ABORT } pstep;

static int call_provider(vmsh_set *s, pslot *ps, pstep step, int64_t deadline, vmsh_error **err)
{
    vmsh_provider_ops *p = ps->p;
    static const char *const names[] = {"prepare", "commit", "release", "abort"};
    int (*fn)(vmsh_provider_ops *, vmsh_set *, vmsh_error **) = step == P_PREPARE   ? p->prepare
                                                                : step == P_COMMIT  ? p->commit
                                                                : step == P_RELEASE ? p->release
                                                                                    : p->abort;
    s->deadline = deadline;
    if (step != P_ABORT && vmsh_set_cancelled(s))
        return check_cancel(s, err);
    vmsh_error *e = NULL;
    if (s->on_step)
        s->on_step(s->on_event_opaque, s, true, p->name, names[step], false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    int r = fn ? fn(p, s, &e) : 0;
    int64_t t1 = vmsh_now_ms();
    if (s->on_step)
        s->on_step(s->on_event_opaque, s, true, p->name, names[step], true, r < 0 ? r : 0, t1 - t0);
    if (r >= 0 && t1 > deadline) {
        r = vmsh_error_set(&e, -ETIMEDOUT, "took %lld ms, past its deadline", (long long)(t1 - t0));
        vmsh_error_set_retryable(&e, true);
    }
    if (r >= 0)
        return 0;
    if (!e)
        vmsh_error_set(&e, r, "failed: %s", strerror(-r));
    vmsh_error_prefix(&e, "provider %s at %s", p->name, names[step]);
    vmsh_error_propagate(err, &e);
    return r;
}

/* ---- the set ---- */

static int set_new(vmsh_set **out, const vmsh_coord_config *cfg, const char *operation,
                   vmsh_writer_ops *const *writers, size_t n, vmsh_provider_ops *const *providers,
                   size_t np, vmsh_requestor_ops *req, const vmsh_set_options *opts,
                   vmsh_error **err)
{
    vmsh_set *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->operation = operation;
    s->state_dir = strdup(cfg->state_dir);
    s->event_timeout_ms =
        cfg->event_timeout_ms > 0 ? cfg->event_timeout_ms : VMSH_DEFAULT_EVENT_TIMEOUT_MS;
    s->freeze_limit_ms =
        cfg->freeze_limit_ms > 0 ? cfg->freeze_limit_ms : VMSH_DEFAULT_FREEZE_LIMIT_MS;
    s->freeze_window_ms = -1;
    s->noted_window_ms = -1;
    s->cancel = cfg->cancel;
    s->on_event = cfg->on_event;
    s->on_event_opaque = cfg->on_event_opaque;
    s->on_step = cfg->on_step;
    s->req = req;
    if (opts)
        s->opts = *opts;
    s->slots = vmsh_calloc_array(n ? n : 1, sizeof(*s->slots));
    s->pslots = vmsh_calloc_array(np ? np : 1, sizeof(*s->pslots));
    if (!s->state_dir || !s->slots || !s->pslots) {
        vmsh_set_free(s);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!writers[i] || writers[i]->version != VMSH_WRITER_OPS_VERSION || !writers[i]->id ||
            !writers[i]->name) {
            vmsh_set_free(s);
            return vmsh_error_set(err, -EINVAL,
                                  "writer %zu (%s) has no ID or name, or a table version this "
                                  "coordinator does not know (%u, expected %u)",
                                  i, writers[i] && writers[i]->name ? writers[i]->name : "?",
                                  writers[i] ? writers[i]->version : 0, VMSH_WRITER_OPS_VERSION);
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(writers[k]->id, writers[i]->id) == 0) {
                vmsh_set_free(s);
                return vmsh_error_set(err, -EINVAL,
                                      "writers %s and %s have the same writer ID %s; give each "
                                      "writer its own name",
                                      writers[k]->name, writers[i]->name, writers[i]->id);
            }
        s->slots[i].w = writers[i];
        s->n++;
    }
    for (size_t i = 0; i < np; i++) {
        if (!providers[i] || providers[i]->version != VMSH_PROVIDER_OPS_VERSION ||
            !providers[i]->id || !providers[i]->name) {
            vmsh_set_free(s);
            return vmsh_error_set(err, -EINVAL, "provider %zu has an unknown table version", i);
        }
        s->pslots[i].p = providers[i];
        s->np++;
    }
    if (req && req->version != VMSH_REQUESTOR_OPS_VERSION) {
        vmsh_set_free(s);
        return vmsh_error_set(err, -EINVAL, "requestor table version %u unknown", req->version);
    }
    int r = vmsh_uuid_random(s->id, err);
    if (r < 0) {
        vmsh_set_free(s);
        return r;
    }
    vmsh_time_rfc3339(time(NULL), s->started);
    *out = s;
    return 0;
}

void vmsh_set_free(vmsh_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        slot *sl = &s->slots[i];
        if (sl->md_owned)
            vmsh_metadata_free(sl->md);
        vmsh_error_free(sl->error);
        for (size_t k = 0; k < sl->n_events; k++) {
            free(sl->events[k].event);
            free(sl->events[k].result);
        }
        free(sl->events);
    }
    free(s->slots);
    free(s->pslots);
    vmsh_journal_free(s->journal);
    free(s->state_dir);
    free(s->backup_id);
    free(s->document);
    free(s);
}

const char *vmsh_set_id(const vmsh_set *s)
{
    return s->id;
}

const char *vmsh_set_operation(const vmsh_set *s)
{
    return s->operation;
}

const vmsh_set_options *vmsh_set_options_of(const vmsh_set *s)
{
    return &s->opts;
}

int64_t vmsh_set_deadline_ms(const vmsh_set *s)
{
    return s->deadline;
}

vmsh_event vmsh_set_event(const vmsh_set *s)
{
    return s->event;
}

bool vmsh_set_cancelled(const vmsh_set *s)
{
    return s->cancel && *s->cancel;
}

static int check_cancel(const vmsh_set *s, vmsh_error **err)
{
    if (!vmsh_set_cancelled(s))
        return 0;
    return vmsh_error_set(err, -ECANCELED,
                          "the snapshot set was interrupted (signal); every writer was told to "
                          "abort");
}

size_t vmsh_set_writer_count(const vmsh_set *s)
{
    return s->n;
}

vmsh_writer_ops *vmsh_set_writer(const vmsh_set *s, size_t i)
{
    return i < s->n ? s->slots[i].w : NULL;
}

vmsh_metadata *vmsh_set_writer_metadata(const vmsh_set *s, size_t i)
{
    return i < s->n ? s->slots[i].md : NULL;
}

vmsh_metadata *vmsh_set_metadata(const vmsh_set *s, const vmsh_writer_ops *w)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->slots[i].w == w)
            return s->slots[i].md;
    return NULL;
}

vmsh_writer_state vmsh_set_writer_state(const vmsh_set *s, size_t i)
{
    return i < s->n ? s->slots[i].state : VMSH_WSTATE_STABLE;
}

const vmsh_error *vmsh_set_writer_error(const vmsh_set *s, size_t i)
{
    return i < s->n ? s->slots[i].error : NULL;
}

int vmsh_set_journal_begin(vmsh_set *s, const char *owner, const char *action,
                           struct json_object *data, uint64_t *out_seq, vmsh_error **err)
{
    if (!s->journal)
        return vmsh_error_set(err, -EINVAL, "the set %s has no journal any more", s->id);
    return vmsh_journal_begin(s->journal, owner, action, data, out_seq, err);
}

int vmsh_set_journal_mark(vmsh_set *s, uint64_t seq, vmsh_journal_state state, vmsh_error **err)
{
    if (!s->journal)
        return vmsh_error_set(err, -EINVAL, "the set %s has no journal any more", s->id);
    return vmsh_journal_mark(s->journal, seq, state, err);
}

int vmsh_set_journal_mark_done_unsynced(vmsh_set *s, uint64_t seq, vmsh_error **err)
{
    if (!s->journal)
        return vmsh_error_set(err, -EINVAL, "the set %s has no journal any more", s->id);
    return vmsh_journal_mark_done_unsynced(s->journal, seq, err);
}

vmsh_journal *vmsh_set_journal(vmsh_set *s)
{
    return s->journal;
}

void vmsh_set_note_window_ms(vmsh_set *s, int64_t ms)
{
    if (ms > s->noted_window_ms)
        s->noted_window_ms = ms;
}

bool vmsh_set_aborted(const vmsh_set *s)
{
    return s->aborted;
}

const char *vmsh_set_backup_id(const vmsh_set *s)
{
    return s->backup_id;
}

int64_t vmsh_set_freeze_window_ms(const vmsh_set *s)
{
    if (s->noted_window_ms > s->freeze_window_ms)
        return s->noted_window_ms;
    return s->freeze_window_ms;
}

uint64_t vmsh_set_bytes_read(const vmsh_set *s)
{
    return s->bytes_read;
}

uint64_t vmsh_set_bytes_stored(const vmsh_set *s)
{
    return s->bytes_stored;
}

const char *vmsh_set_document(const vmsh_set *s)
{
    return s->document;
}

/* Records every writer's state of this run (docs/formats/writer-state.md). */
static int record_states(vmsh_set *s, const char *result, vmsh_error **err)
{
    vmsh_writer_states *st = NULL;
    int r = vmsh_writer_states_new(&st, err);
    if (r < 0)
        return r;
    char now[21];
    vmsh_time_rfc3339(time(NULL), now);
    for (size_t i = 0; i < s->n && r == 0; i++) {
        slot *sl = &s->slots[i];
        vmsh_writer_record rec = {
            .id = (char *)sl->w->id,
            .name = (char *)sl->w->name,
            .kind = (char *)(sl->w->kind ? sl->w->kind : "other"),
            .state = sl->state,
            .has_error = sl->error != NULL,
            .error_event = sl->error ? (char *)vmsh_event_name(sl->error_event) : NULL,
            .error_code = sl->error ? sl->error->code : 0,
            .error_message = sl->error ? sl->error->message : NULL,
            .error_retryable = sl->error ? sl->error->retryable : false,
            .set_id = s->id,
            .operation = (char *)s->operation,
            .result = (char *)result,
            .time = now,
            .events = sl->events,
            .n_events = sl->n_events,
        };
        r = vmsh_writer_states_put(st, &rec, err);
    }
    if (r == 0)
        r = vmsh_writer_states_record(s->state_dir, st, err);
    vmsh_writer_states_free(st);
    return r;
}

static int64_t ev_deadline(const vmsh_set *s)
{
    return vmsh_now_ms() + s->event_timeout_ms;
}

/* Abort: providers that were prepared, then every writer of the set (each
 * once, newest first), then the requestor. Errors are recorded per writer
 * and do not replace the error that caused the abort. */
static void abort_set(vmsh_set *s)
{
    s->aborted = true;
    for (size_t i = s->np; i-- > 0;) {
        pslot *ps = &s->pslots[i];
        if (ps->prepared && !ps->aborted) {
            ps->aborted = true;
            vmsh_error *e = NULL;
            call_provider(s, ps, P_ABORT, ev_deadline(s), &e);
            vmsh_error_free(e);
        }
    }
    for (size_t i = s->n; i-- > 0;) {
        slot *sl = &s->slots[i];
        if (!sl->in_set || sl->got_abort)
            continue;
        sl->got_abort = true;
        vmsh_error *e = NULL;
        if (call_writer(s, sl, VMSH_EVENT_ABORT, ev_deadline(s), &e) == 0 && !slot_failed(sl))
            sl->state = VMSH_WSTATE_STABLE;
        vmsh_error_free(e);
    }
    if (s->req && s->req->abort)
        s->req->abort(s->req, s);
}

/* One event to every writer in order; stops at the first failure. */
static int send_all(vmsh_set *s, vmsh_event ev, vmsh_writer_state on_success, vmsh_error **err)
{
    for (size_t i = 0; i < s->n; i++) {
        int r = call_writer(s, &s->slots[i], ev, ev_deadline(s), err);
        if (r < 0)
            return r;
        s->slots[i].state = on_success;
    }
    return 0;
}

static int copy_files(vmsh_set *s, vmsh_error **err)
{
    for (size_t i = 0; i < s->n; i++) {
        vmsh_metadata *md = s->slots[i].md;
        for (size_t c = 0; c < vmsh_metadata_component_count(md); c++) {
            vmsh_component *comp = vmsh_metadata_component(md, c);
            for (size_t f = 0; f < vmsh_component_file_count(comp); f++) {
                vmsh_file *file = vmsh_component_file(comp, f);
                if (vmsh_file_source_type(file) == VMSH_SOURCE_NONE)
                    return vmsh_error_set(err, -EINVAL,
                                          "writer %s gave no source for file %s of %s after "
                                          "PostSnapshot; this is a bug in the writer",
                                          s->slots[i].w->name, vmsh_file_name(file),
                                          vmsh_component_name(comp));
                int cr = check_cancel(s, err);
                if (cr < 0)
                    return cr;
                if (!s->req || !s->req->copy_file)
                    return vmsh_error_set(err, -EINVAL, "no requestor to copy %s of %s",
                                          vmsh_file_name(file), vmsh_component_name(comp));
                s->deadline = -1;
                int r = s->req->copy_file(s->req, s, md, comp, file, err);
                if (r < 0) {
                    if (err && !*err)
                        vmsh_error_set(err, r, "copying %s of %s failed: %s", vmsh_file_name(file),
                                       vmsh_component_name(comp), strerror(-r));
                    return r;
                }
                s->bytes_read += vmsh_file_bytes_read(file);
                s->bytes_stored += vmsh_file_bytes_stored(file);
            }
        }
    }
    return 0;
}

static int build_document(vmsh_set *s, vmsh_error **err)
{
    char completed[21], host[256] = "";
    vmsh_time_rfc3339(time(NULL), completed);
    gethostname(host, sizeof(host) - 1);
    vmsh_metadata **mds = vmsh_calloc_array(s->n ? s->n : 1, sizeof(*mds));
    const char **kinds = vmsh_calloc_array(s->n ? s->n : 1, sizeof(*kinds));
    if (!mds || !kinds) {
        free(mds);
        free(kinds);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->n; i++) {
        mds[i] = s->slots[i].md;
        kinds[i] = s->slots[i].w->kind;
    }
    vmsh_backup_doc_info info = {
        .set_id = s->id,
        .started = s->started,
        .completed = completed,
        .host = host,
        .program_version = "vmshadow " VMSH_VERSION_STRING,
        .method = s->opts.method ? s->opts.method : "auto",
        .full = s->opts.full,
        .all = s->opts.all,
        .targets = s->opts.targets,
        .n_targets = s->opts.n_targets,
        .freeze_window_ms = vmsh_set_freeze_window_ms(s),
        .bytes_read = s->bytes_read,
        .bytes_stored = s->bytes_stored,
    };
    int r = vmsh_backup_doc_build(&info, mds, kinds, s->n, &s->document, err);
    free(mds);
    free(kinds);
    return r;
}

static int run_backup(vmsh_set *s, vmsh_error **err)
{
    int r;
    /* Identify: nothing has been done yet, so a failure aborts nobody. */
    for (size_t i = 0; i < s->n; i++) {
        slot *sl = &s->slots[i];
        if ((r = vmsh_metadata_new(&sl->md, sl->w->id, sl->w->name, err)) < 0)
            return r;
        sl->md_owned = true;
        if ((r = call_writer(s, sl, VMSH_EVENT_IDENTIFY, ev_deadline(s), err)) < 0) {
            s->aborted = true; /* nothing was done yet: nobody to abort */
            return r;
        }
    }
    for (size_t i = 0; i < s->n; i++)
        s->slots[i].in_set = true;

    if ((r = send_all(s, VMSH_EVENT_PREPARE_BACKUP, VMSH_WSTATE_STABLE, err)) < 0 ||
        (r = send_all(s, VMSH_EVENT_PREPARE_SNAPSHOT, VMSH_WSTATE_WAITING_FOR_FREEZE, err)) < 0)
        goto abort;
    vmsh_trace_step(NULL, "prepare-snapshot-returned");
    for (size_t i = 0; i < s->np; i++) {
        s->pslots[i].prepared = true; /* a half-done prepare gets its abort too */
        if ((r = call_provider(s, &s->pslots[i], P_PREPARE, ev_deadline(s), err)) < 0)
            goto abort;
    }
    vmsh_trace_step(NULL, "provider-prepare-returned");

    /* Freeze ... Thaw, bounded by the freeze limit. */
    int64_t freeze_start = vmsh_now_ms();
    int64_t freeze_end = freeze_start + s->freeze_limit_ms;
    int fr = 0;
    for (size_t i = 0; i < s->n && fr == 0; i++) {
        slot *sl = &s->slots[i];
        if ((fr = check_cancel(s, err)) < 0)
            break; /* not sent Freeze: gets no Thaw */
        sl->got_freeze = true;
        fr = call_writer(s, sl, VMSH_EVENT_FREEZE, min64(ev_deadline(s), freeze_end), err);
        if (fr == 0)
            sl->state = VMSH_WSTATE_WAITING_FOR_THAW;
    }
    vmsh_trace_step(NULL, "freeze-event-returned");
    for (size_t i = 0; i < s->np && fr == 0; i++)
        fr = call_provider(s, &s->pslots[i], P_COMMIT, min64(ev_deadline(s), freeze_end), err);
    vmsh_trace_step(NULL, "commit-returned");
    /* Thaw goes to every writer Freeze was sent to, whatever happened since
     * (also past the freeze limit: thawing late beats staying frozen). */
    for (size_t i = s->n; i-- > 0;) {
        slot *sl = &s->slots[i];
        if (!sl->got_freeze)
            continue;
        if (call_writer(s, sl, VMSH_EVENT_THAW, ev_deadline(s), err) < 0)
            fr = fr ? fr : -EIO;
        else if (!slot_failed(sl))
            sl->state = VMSH_WSTATE_WAITING_FOR_POST_SNAPSHOT;
    }
    s->freeze_window_ms = vmsh_now_ms() - freeze_start;
    vmsh_trace_step(NULL, "thaw-event-returned");
    if (fr == 0)
        fr = check_cancel(s, err);
    if (fr < 0) {
        r = fr;
        goto abort;
    }
    if (s->freeze_window_ms > s->freeze_limit_ms) {
        r = vmsh_error_set(err, -ETIMEDOUT,
                           "the writers stayed frozen %lld ms, longer than the freeze limit of "
                           "%lld ms (config freeze-limit); the set was aborted",
                           (long long)s->freeze_window_ms, (long long)s->freeze_limit_ms);
        vmsh_error_set_retryable(err, true);
        goto abort;
    }

    if ((r = send_all(s, VMSH_EVENT_POST_SNAPSHOT, VMSH_WSTATE_WAITING_FOR_BACKUP_COMPLETE, err)) <
        0)
        goto abort;
    vmsh_trace_step(NULL, "post-snapshot-returned");
    if ((r = copy_files(s, err)) < 0)
        goto abort;
    for (size_t i = s->np; i-- > 0;)
        if ((r = call_provider(s, &s->pslots[i], P_RELEASE, ev_deadline(s), err)) < 0)
            goto abort;
    if ((r = send_all(s, VMSH_EVENT_BACKUP_COMPLETE, VMSH_WSTATE_STABLE, err)) < 0)
        goto abort;

    /* The backup document goes last: until it is committed there is no
     * backup (R5). */
    if ((r = check_cancel(s, err)) < 0 || (r = build_document(s, err)) < 0)
        goto abort;
    if (!s->req || !s->req->commit) {
        r = vmsh_error_set(err, -EINVAL, "no requestor to commit the backup");
        goto abort;
    }
    s->deadline = -1;
    if ((r = s->req->commit(s->req, s, s->document, &s->backup_id, err)) < 0) {
        if (err && !*err)
            vmsh_error_set(err, r, "committing the backup failed: %s", strerror(-r));
        free(s->backup_id);
        s->backup_id = NULL;
        goto abort;
    }
    return 0;
abort:
    free(s->document);
    s->document = NULL;
    abort_set(s);
    return r;
}

static int state_dir_ready(const vmsh_coord_config *cfg, vmsh_error **err)
{
    if (!cfg || !cfg->state_dir)
        return vmsh_error_set(err, -EINVAL, "no state directory");
    return vmsh_fs_mkdir_p(cfg->state_dir, 0700, err);
}

/* Ends a run: records the states, closes the journal (removed when nothing
 * is left to undo). A failure here does not change the run's result. */
static void finish_run(vmsh_set *s, const char *result)
{
    vmsh_error *e = NULL;
    record_states(s, result, &e);
    vmsh_error_free(e);
    e = NULL;
    vmsh_journal_close(s->journal, &e);
    s->journal = NULL;
    vmsh_error_free(e);
}

int vmsh_coord_backup(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                      size_t n_writers, vmsh_provider_ops *const *providers, size_t n_providers,
                      vmsh_requestor_ops *req, const vmsh_set_options *opts, vmsh_set **out,
                      vmsh_error **err)
{
    if (out)
        *out = NULL;
    int r = state_dir_ready(cfg, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *lock_path = vmsh_path_join(cfg->state_dir, SET_LOCK);
    if (!lock_path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* One snapshot set per host: a second requestor gets -EBUSY at once. */
    vmsh_lock *lock = NULL;
    if ((r = vmsh_lock_take(&lock, lock_path, true, false, "the snapshot set", err)) < 0)
        return r;
    vmsh_set *s = NULL;
    /* Under the set lock, any journal not locked by its process is dead:
     * undo it before freezing anything again (R7). What cannot be undone
     * stays for `vmshadow recover`; it does not block new sets. */
    vmsh_recover_report *rep = NULL;
    vmsh_error *re = NULL;
    vmsh_coord_recover(cfg, writers, n_writers, providers, n_providers, &rep, &re);
    vmsh_recover_report_free(rep);
    vmsh_error_free(re);
    if ((r = set_new(&s, cfg, "backup", writers, n_writers, providers, n_providers, req, opts,
                     err)) < 0)
        goto out;
    if ((r = vmsh_journal_create(&s->journal, cfg->state_dir, s->id, "backup", err)) < 0)
        goto out;
    r = run_backup(s, err);
    finish_run(s, r == 0 ? "completed" : "aborted");
    /* Options point into the caller's memory: not valid after return. */
    s->opts.targets = NULL;
    s->opts.n_targets = 0;
    s->opts.method = NULL;
out:
    vmsh_lock_free(lock);
    if (out && s)
        *out = s;
    else
        vmsh_set_free(s);
    return r;
}

/* ---- restore ---- */

static bool is_target(const vmsh_set_options *o, const char *name)
{
    if (!o || o->n_targets == 0)
        return true;
    for (size_t i = 0; i < o->n_targets; i++)
        if (strcmp(o->targets[i], name) == 0)
            return true;
    return false;
}

int vmsh_coord_restore(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                       size_t n_writers, vmsh_requestor_ops *req, const vmsh_backup_doc *backup,
                       const vmsh_set_options *opts, vmsh_set **out, vmsh_error **err)
{
    if (out)
        *out = NULL;
    int r = state_dir_ready(cfg, err);
    if (r < 0)
        return r;
    size_t nd = vmsh_backup_doc_writer_count(backup);
    /* Every target must be in the backup. */
    for (size_t t = 0; opts && t < opts->n_targets; t++) {
        bool found = false;
        for (size_t i = 0; i < nd && !found; i++)
            found = vmsh_metadata_find_component(vmsh_backup_doc_writer(backup, i),
                                                 opts->targets[t]) != NULL;
        if (!found)
            return vmsh_error_set(err, -ENOENT, "%s is not in backup %s", opts->targets[t],
                                  vmsh_backup_doc_set_id(backup));
    }
    /* The writers taking part: those owning a selected component. */
    vmsh_writer_ops **use = vmsh_calloc_array(nd ? nd : 1, sizeof(*use));
    vmsh_metadata **mds = vmsh_calloc_array(nd ? nd : 1, sizeof(*mds));
    size_t nu = 0;
    vmsh_set *s = NULL;
    vmsh_lock *lock = NULL;
    char *lock_path = NULL;
    if (!use || !mds) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nd; i++) {
        vmsh_metadata *md = vmsh_backup_doc_writer(backup, i);
        size_t selected = 0;
        for (size_t c = 0; c < vmsh_metadata_component_count(md); c++) {
            vmsh_component *comp = vmsh_metadata_component(md, c);
            vmsh_component_set_selected(comp, is_target(opts, vmsh_component_name(comp)));
            selected += vmsh_component_selected(comp);
        }
        if (!selected)
            continue;
        vmsh_writer_ops *w = NULL;
        for (size_t k = 0; k < n_writers && !w; k++)
            if (strcmp(writers[k]->id, vmsh_metadata_writer_id(md)) == 0)
                w = writers[k];
        if (!w) {
            r = vmsh_error_set(err, -ENOENT,
                               "backup %s holds components of writer \"%s\" (ID %s), which is "
                               "not available on this host",
                               vmsh_backup_doc_set_id(backup), vmsh_metadata_writer_name(md),
                               vmsh_metadata_writer_id(md));
            goto out;
        }
        use[nu] = w;
        mds[nu++] = md;
    }
    /* A restore changes VMs as a backup does: never both at once. */
    lock_path = vmsh_path_join(cfg->state_dir, SET_LOCK);
    if (!lock_path) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((r = vmsh_lock_take(&lock, lock_path, true, false, "the snapshot set", err)) < 0)
        goto out;
    if ((r = set_new(&s, cfg, "restore", use, nu, NULL, 0, req, opts, err)) < 0)
        goto out;
    for (size_t i = 0; i < nu; i++) {
        s->slots[i].md = mds[i]; /* borrowed from the document */
        s->slots[i].in_set = true;
    }
    if ((r = vmsh_journal_create(&s->journal, cfg->state_dir, s->id, "restore", err)) < 0)
        goto out;
    r = send_all(s, VMSH_EVENT_PRE_RESTORE, VMSH_WSTATE_STABLE, err);
    for (size_t i = 0; r == 0 && i < s->n; i++) {
        vmsh_metadata *md = s->slots[i].md;
        for (size_t c = 0; r == 0 && c < vmsh_metadata_component_count(md); c++) {
            vmsh_component *comp = vmsh_metadata_component(md, c);
            if (!vmsh_component_selected(comp))
                continue;
            for (size_t f = 0; r == 0 && f < vmsh_component_file_count(comp); f++) {
                if (!req || !req->restore_file) {
                    r = vmsh_error_set(err, -EINVAL, "no requestor to restore files");
                    break;
                }
                s->deadline = -1;
                r = req->restore_file(req, s, md, comp, vmsh_component_file(comp, f), err);
                if (r < 0 && err && !*err)
                    vmsh_error_set(err, r, "restoring %s of %s failed: %s",
                                   vmsh_file_name(vmsh_component_file(comp, f)),
                                   vmsh_component_name(comp), strerror(-r));
            }
        }
    }
    if (r == 0) {
        /* PostRestore goes to every writer: one VM's failed file does not
         * stop the registration of the others (R11). */
        for (size_t i = 0; i < s->n; i++) {
            int q = call_writer(s, &s->slots[i], VMSH_EVENT_POST_RESTORE, ev_deadline(s), err);
            if (q < 0 && r == 0)
                r = q;
        }
    }
    s->aborted = r < 0;
    finish_run(s, r == 0 ? "completed" : "failed");
    s->opts.targets = NULL;
    s->opts.n_targets = 0;
    s->opts.method = NULL;
    s->opts.restore_dir = NULL;
    s->opts.restore_as = NULL;
out:
    vmsh_lock_free(lock);
    free(lock_path);
    free(use);
    free(mds);
    if (out && s)
        *out = s;
    else
        vmsh_set_free(s);
    return r;
}

/* ---- recover ---- */

void vmsh_recover_report_free(vmsh_recover_report *rep)
{
    if (!rep)
        return;
    for (size_t i = 0; i < rep->n_items; i++) {
        vmsh_recover_item *it = &rep->items[i];
        free(it->journal);
        free(it->set_id);
        free(it->owner);
        free(it->owner_name);
        free(it->action);
        free(it->error);
    }
    free(rep->items);
    free(rep);
}

static int add_item(vmsh_recover_report *rep, const char *journal, const char *set_id,
                    const char *owner, const char *owner_name, const char *action,
                    vmsh_journal_state was, bool undone, const char *error)
{
    vmsh_recover_item *a = vmsh_realloc_array(rep->items, rep->n_items + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    rep->items = a;
    vmsh_recover_item it = {
        .journal = journal ? strdup(journal) : NULL,
        .set_id = set_id ? strdup(set_id) : NULL,
        .owner = owner ? strdup(owner) : NULL,
        .owner_name = owner_name ? strdup(owner_name) : NULL,
        .action = action ? strdup(action) : NULL,
        .was = was,
        .undone = undone,
        .error = error ? strdup(error) : NULL,
    };
    rep->items[rep->n_items++] = it;
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the names in `dir` ending in `suffix`, sorted (oldest set IDs are
 * random, so the order only makes runs reproducible). */
static int list_dir(const char *dir, const char *suffix, char ***out, size_t *n, vmsh_error **err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return vmsh_error_set(err, -errno, "cannot read %s: %s", dir, strerror(errno));
    }
    struct dirent *de;
    size_t sl = strlen(suffix);
    int r = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l <= sl || strcmp(de->d_name + l - sl, suffix) != 0)
            continue;
        char **a = vmsh_realloc_array(*out, *n + 1, sizeof(char *));
        if (!a || !(a[*n] = strdup(de->d_name))) {
            if (a)
                *out = a;
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        *out = a;
        (*n)++;
    }
    closedir(d);
    if (*n)
        qsort(*out, *n, sizeof(char *), name_cmp);
    return r;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* A journal still being created when its process died (killed before the
 * rename): it holds no action, so it goes once nobody holds it. */
static void remove_stale_new(const char *dir)
{
    char **names = NULL;
    size_t n = 0;
    if (list_dir(dir, ".journal.new", &names, &n, NULL) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *p = vmsh_path_join(dir, names[i]);
        if (!p)
            continue;
        _cleanup_close_ int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
            unlink(p);
    }
    free_names(names, n);
}

int vmsh_coord_recover(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                       size_t n_writers, vmsh_provider_ops *const *providers, size_t n_providers,
                       vmsh_recover_report **out, vmsh_error **err)
{
    *out = NULL;
    if (!cfg || !cfg->state_dir)
        return vmsh_error_set(err, -EINVAL, "no state directory");
    vmsh_recover_report *rep = calloc(1, sizeof(*rep));
    if (!rep)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ char *dir = vmsh_path_join(cfg->state_dir, "journal");
    char **names = NULL;
    size_t nn = 0;
    int r = dir ? list_dir(dir, ".journal", &names, &nn, err)
                : vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r < 0) {
        vmsh_recover_report_free(rep);
        return r;
    }
    /* Hold the set lock while replaying when it is free, so that no new set
     * starts freezing what is being undone; when a set runs (or our caller
     * holds it) only journals whose process is gone are replayed. */
    _cleanup_free_ char *lock_path = vmsh_path_join(cfg->state_dir, SET_LOCK);
    vmsh_lock *lock = NULL;
    if (lock_path && nn > 0)
        vmsh_lock_take(&lock, lock_path, true, false, "the snapshot set", NULL);
    remove_stale_new(dir);
    vmsh_writer_states *states = NULL;
    vmsh_writer_states_new(&states, NULL);
    char now[21];
    vmsh_time_rfc3339(time(NULL), now);
    bool failed = false;

    for (size_t k = 0; k < nn; k++) {
        _cleanup_free_ char *path = vmsh_path_join(dir, names[k]);
        vmsh_journal *j = NULL;
        vmsh_error *e = NULL;
        if (!path) {
            failed = true;
            break;
        }
        int q = vmsh_journal_open(&j, path, &e);
        if (q == -EBUSY) {
            rep->journals_busy++; /* its run is alive: not ours to touch */
            vmsh_error_free(e);
            continue;
        }
        if (q < 0) {
            rep->journals_failed++;
            failed = true;
            add_item(rep, path, NULL, NULL, NULL, NULL, VMSH_JOURNAL_BEGUN, false, e->message);
            vmsh_error_free(e);
            continue;
        }
        for (size_t i = vmsh_journal_count(j); i-- > 0;) {
            const vmsh_journal_entry *en = vmsh_journal_entry_at(j, i);
            if (en->state == VMSH_JOURNAL_UNDONE)
                continue;
            vmsh_writer_ops *w = NULL;
            vmsh_provider_ops *p = NULL;
            for (size_t x = 0; x < n_writers && !w; x++)
                if (writers[x] && strcmp(writers[x]->id, en->owner) == 0)
                    w = writers[x];
            for (size_t x = 0; x < n_providers && !w && !p; x++)
                if (providers[x] && strcmp(providers[x]->id, en->owner) == 0)
                    p = providers[x];
            vmsh_error *ue = NULL;
            int ur;
            const char *owner_name = w ? w->name : p ? p->name : NULL;
            if (!w && !p)
                ur = vmsh_error_set(&ue, -ENOENT,
                                    "no writer or provider with ID %s is configured here; "
                                    "restore its configuration and run `vmshadow recover` "
                                    "again",
                                    en->owner);
            else if (w && !w->undo)
                ur = 0; /* nothing to undo by definition */
            else if (p && !p->undo)
                ur = 0;
            else
                ur = w ? w->undo(w, en, &ue) : p->undo(p, en, &ue);
            if (ur < 0 && !ue)
                vmsh_error_set(&ue, ur, "undo failed: %s", strerror(-ur));
            const char *action = en->action;
            vmsh_journal_state was = en->state;
            _cleanup_free_ char *owner = strdup(en->owner);
            if (ur == 0) {
                vmsh_error *me = NULL;
                if (vmsh_journal_mark(j, en->seq, VMSH_JOURNAL_UNDONE, &me) < 0) {
                    ur = me->code;
                    vmsh_error_propagate(&ue, &me);
                }
            }
            add_item(rep, path, vmsh_journal_set_id(j), owner, owner_name, action, was, ur == 0,
                     ue ? ue->message : NULL);
            vmsh_error_free(ue);
            if (ur < 0)
                failed = true;
            /* The writer's recorded state says its set was interrupted. */
            if (w && states && !vmsh_writer_states_find(states, w->id)) {
                _cleanup_free_ char *msg = NULL;
                if (asprintf(&msg,
                             "snapshot set %s was interrupted (the vmshadow process was killed); "
                             "recover undid what it had done",
                             vmsh_journal_set_id(j)) < 0)
                    msg = NULL;
                vmsh_writer_record rec = {
                    .id = (char *)w->id,
                    .name = (char *)w->name,
                    .kind = (char *)(w->kind ? w->kind : "other"),
                    .state = VMSH_WSTATE_INTERRUPTED,
                    .has_error = msg != NULL,
                    .error_event = (char *)"abort",
                    .error_code = -EINTR,
                    .error_message = msg,
                    .error_retryable = true,
                    .set_id = (char *)vmsh_journal_set_id(j),
                    .operation = (char *)"recover",
                    .result = (char *)"interrupted",
                    .time = now,
                };
                vmsh_writer_states_put(states, &rec, NULL);
            }
        }
        vmsh_error *ce = NULL;
        int c = vmsh_journal_close(j, &ce);
        if (c == 1)
            rep->journals_removed++;
        else
            rep->journals_failed++;
        vmsh_error_free(ce);
    }
    free_names(names, nn);
    vmsh_lock_free(lock);
    if (states && vmsh_writer_states_count(states) > 0) {
        vmsh_error *se = NULL;
        vmsh_writer_states_record(cfg->state_dir, states, &se);
        vmsh_error_free(se);
    }
    vmsh_writer_states_free(states);
    *out = rep;
    if (failed)
        return vmsh_error_set(err, -EAGAIN,
                              "some actions of an interrupted run could not be undone; see "
                              "`vmshadow recover`");
    return 0;
}
