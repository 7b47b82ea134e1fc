/* Unit tests of the coordinator (src/coord/coord.c) with fake writers,
 * providers and a fake requestor: the backup sequence, abort at each event
 * (SPEC "The model", R5), Thaw after Freeze, deadlines, one set per host,
 * recorded writer states (R17), the journal and recovery (R7), restore. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/lock.h>
#include <vmshadow/util/mem.h>

/* ---- a shared log of everything the fakes were sent ---- */

static char event_log[8192];

static void logf_(const char *fmt, ...)
{
    size_t l = strlen(event_log);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(event_log + l, sizeof(event_log) - l, fmt, ap);
    va_end(ap);
}

/* ---- fake writer ---- */

typedef struct fake_writer {
    vmsh_writer_ops ops;
    char name[32];
    char id[40];
    int fail_at;  /* event that fails, or -1 */
    int sleep_at; /* event that sleeps sleep_ms, or -1 */
    int sleep_ms;
    int cancel_at; /* event at which the requestor is asked to stop, or -1 */
    bool retryable;
    int calls[VMSH_EVENT_COUNT];
    int order[VMSH_EVENT_COUNT]; /* position in the global order of calls */
    uint64_t seq_prep, seq_freeze;
    int undos;
} fake_writer;

static int call_counter;
static volatile sig_atomic_t cancel_flag;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int fake_event(fake_writer *f, vmsh_set *set, vmsh_event ev, vmsh_error **err)
{
    f->calls[ev]++;
    f->order[ev] = ++call_counter;
    logf_("%s:%s ", f->name, vmsh_event_name(ev));
    if (f->sleep_at == (int)ev)
        sleep_ms(f->sleep_ms);
    if (f->cancel_at == (int)ev)
        cancel_flag = 1; /* as a SIGINT handler of the requestor would */
    if (f->fail_at == (int)ev) {
        vmsh_error_set(err, -EIO, "%s cannot %s", f->name, vmsh_event_name(ev));
        vmsh_error_set_retryable(err, f->retryable);
        return -EIO;
    }
    return 0;
}

#define FW(self) ((fake_writer *)(self))

static int fw_identify(vmsh_writer_ops *self, vmsh_set *set, vmsh_metadata *md, vmsh_error **err)
{
    int r = fake_event(FW(self), set, VMSH_EVENT_IDENTIFY, err);
    if (r < 0)
        return r;
    vmsh_component *c = NULL;
    char cname[64];
    snprintf(cname, sizeof(cname), "%s-vm", FW(self)->name);
    assert_int_equal(vmsh_metadata_add_component(md, cname, &c, err), 0);
    vmsh_component_set_method(c, "saved-state", "no agent");
    vmsh_file *f = NULL;
    assert_int_equal(vmsh_component_add_file(c, "disk/vda", "disk", &f, err), 0);
    vmsh_file_set_path(f, "/images/a.qcow2");
    return 0;
}

static int fw_prepare_backup(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    return fake_event(FW(self), set, VMSH_EVENT_PREPARE_BACKUP, err);
}

static int fw_prepare_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    fake_writer *f = FW(self);
    /* Journal before acting, as a real writer must (R7). */
    int r = vmsh_set_journal_begin(set, f->id, "prepare", NULL, &f->seq_prep, err);
    if (r < 0)
        return r;
    r = fake_event(f, set, VMSH_EVENT_PREPARE_SNAPSHOT, err);
    if (r < 0)
        return r;
    return vmsh_set_journal_mark(set, f->seq_prep, VMSH_JOURNAL_DONE, err);
}

static int fw_freeze(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    fake_writer *f = FW(self);
    int r = vmsh_set_journal_begin(set, f->id, "freeze", NULL, &f->seq_freeze, err);
    if (r < 0)
        return r;
    r = fake_event(f, set, VMSH_EVENT_FREEZE, err);
    if (r < 0)
        return r;
    return vmsh_set_journal_mark(set, f->seq_freeze, VMSH_JOURNAL_DONE, err);
}

static int fw_thaw(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    fake_writer *f = FW(self);
    int r = fake_event(f, set, VMSH_EVENT_THAW, err);
    if (r == 0 && f->seq_freeze)
        r = vmsh_set_journal_mark(set, f->seq_freeze, VMSH_JOURNAL_UNDONE, err);
    return r;
}

static int fw_post_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    int r = fake_event(FW(self), set, VMSH_EVENT_POST_SNAPSHOT, err);
    if (r < 0)
        return r;
    vmsh_metadata *md = vmsh_set_metadata(set, self);
    vmsh_component *c = vmsh_metadata_component(md, 0);
    vmsh_file_set_source_file(vmsh_component_find_file(c, "disk/vda"), "/snap/a.qcow2", "qcow2");
    return 0;
}

static void close_all(fake_writer *f, vmsh_set *set)
{
    if (f->seq_freeze)
        vmsh_set_journal_mark(set, f->seq_freeze, VMSH_JOURNAL_UNDONE, NULL);
    if (f->seq_prep)
        vmsh_set_journal_mark(set, f->seq_prep, VMSH_JOURNAL_UNDONE, NULL);
}

static int fw_backup_complete(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    int r = fake_event(FW(self), set, VMSH_EVENT_BACKUP_COMPLETE, err);
    if (r == 0)
        close_all(FW(self), set);
    return r;
}

static int fw_abort(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    int r = fake_event(FW(self), set, VMSH_EVENT_ABORT, err);
    if (r == 0)
        close_all(FW(self), set);
    return r;
}

static int fw_pre_restore(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    return fake_event(FW(self), set, VMSH_EVENT_PRE_RESTORE, err);
}

static int fw_post_restore(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    return fake_event(FW(self), set, VMSH_EVENT_POST_RESTORE, err);
}

static int fw_undo(vmsh_writer_ops *self, const vmsh_journal_entry *e, vmsh_error **err)
{
    FW(self)->undos++;
    logf_("%s:undo-%s ", FW(self)->name, e->action);
    return 0;
}

static void fw_free(vmsh_writer_ops *self)
{
    free(self);
}

static fake_writer *fake_writer_new(const char *name, const char *id)
{
    fake_writer *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->name, sizeof(f->name), "%s", name);
    snprintf(f->id, sizeof(f->id), "%s", id);
    f->fail_at = f->sleep_at = f->cancel_at = -1;
    f->ops = (vmsh_writer_ops){
        .version = VMSH_WRITER_OPS_VERSION,
        .name = f->name,
        .id = f->id,
        .kind = "test",
        .identify = fw_identify,
        .prepare_backup = fw_prepare_backup,
        .prepare_snapshot = fw_prepare_snapshot,
        .freeze = fw_freeze,
        .thaw = fw_thaw,
        .post_snapshot = fw_post_snapshot,
        .backup_complete = fw_backup_complete,
        .abort = fw_abort,
        .pre_restore = fw_pre_restore,
        .post_restore = fw_post_restore,
        .undo = fw_undo,
        .free = fw_free,
    };
    return f;
}

/* ---- fake provider ---- */

enum { PV_PREPARE, PV_COMMIT, PV_RELEASE, PV_ABORT, PV_N };

typedef struct fake_provider {
    vmsh_provider_ops ops;
    int fail_at, sleep_at, sleep_ms;
    int calls[PV_N];
} fake_provider;

static int fp_step(vmsh_provider_ops *self, int step, vmsh_error **err)
{
    fake_provider *p = (fake_provider *)self;
    static const char *const n[] = {"prepare", "commit", "release", "abort"};
    p->calls[step]++;
    logf_("P:%s ", n[step]);
    if (p->sleep_at == step)
        sleep_ms(p->sleep_ms);
    if (p->fail_at == step)
        return vmsh_error_set(err, -ENOSPC, "no space for the overlay");
    return 0;
}

static int fp_prepare(vmsh_provider_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fp_step(s, PV_PREPARE, e);
}
static int fp_commit(vmsh_provider_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fp_step(s, PV_COMMIT, e);
}
static int fp_release(vmsh_provider_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fp_step(s, PV_RELEASE, e);
}
static int fp_abort(vmsh_provider_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fp_step(s, PV_ABORT, e);
}

static void fake_provider_init(fake_provider *p)
{
    memset(p, 0, sizeof(*p));
    p->fail_at = p->sleep_at = -1;
    p->ops = (vmsh_provider_ops){
        .version = VMSH_PROVIDER_OPS_VERSION,
        .name = "fake-overlay",
        .id = "00000000-0000-4000-8000-0000000000aa",
        .prepare = fp_prepare,
        .commit = fp_commit,
        .release = fp_release,
        .abort = fp_abort,
    };
}

/* ---- fake requestor ---- */

typedef struct fake_req {
    vmsh_requestor_ops ops;
    bool fail_copy, fail_commit;
    int copies, commits, aborts, restores;
    char *doc;
} fake_req;

static int fr_copy(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                   const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    fake_req *q = (fake_req *)self;
    q->copies++;
    logf_("R:copy ");
    if (q->fail_copy)
        return vmsh_error_set(err, -EIO, "read error in %s", vmsh_file_source_path(f));
    struct json_object *st = json_object_new_object();
    json_object_object_add(st, "ref", json_object_new_string("file-1"));
    vmsh_file_set_stored(f, st, 1000, 400);
    json_object_put(st);
    return 0;
}

static int fr_commit(vmsh_requestor_ops *self, vmsh_set *set, const char *doc, char **out_id,
                     vmsh_error **err)
{
    fake_req *q = (fake_req *)self;
    q->commits++;
    logf_("R:commit ");
    if (q->fail_commit)
        return vmsh_error_set(err, -ENOSPC, "repository full");
    q->doc = strdup(doc);
    *out_id = strdup("backup-1");
    return 0;
}

static void fr_abort(vmsh_requestor_ops *self, vmsh_set *set)
{
    ((fake_req *)self)->aborts++;
    logf_("R:abort ");
}

static int fr_restore(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                      const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    ((fake_req *)self)->restores++;
    logf_("R:restore-%s ", vmsh_component_name(c));
    return vmsh_file_set_restored(f, VMSH_RESTORE_OK, "/restored/x", NULL);
}

static void fake_req_init(fake_req *q)
{
    memset(q, 0, sizeof(*q));
    q->ops = (vmsh_requestor_ops){
        .version = VMSH_REQUESTOR_OPS_VERSION,
        .copy_file = fr_copy,
        .commit = fr_commit,
        .abort = fr_abort,
        .restore_file = fr_restore,
    };
}

/* ---- fixture ---- */

typedef struct fx {
    char dir[64];
    vmsh_coord_config cfg;
    fake_writer *w[2];
    fake_provider p;
    fake_req q;
} fx;

#define ID_A "11111111-1111-4111-8111-111111111111"
#define ID_B "22222222-2222-4222-8222-222222222222"

static int setup(void **state)
{
    fx *x = calloc(1, sizeof(*x));
    strcpy(x->dir, "/tmp/vmsh-coord-XXXXXX");
    if (!mkdtemp(x->dir))
        return -1;
    cancel_flag = 0;
    x->cfg = (vmsh_coord_config){.state_dir = x->dir, .cancel = &cancel_flag};
    x->w[0] = fake_writer_new("A", ID_A);
    x->w[1] = fake_writer_new("B", ID_B);
    fake_provider_init(&x->p);
    fake_req_init(&x->q);
    event_log[0] = '\0';
    call_counter = 0;
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fx *x = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", x->dir);
    if (system(cmd) != 0)
        return -1;
    vmsh_writer_free(&x->w[0]->ops);
    vmsh_writer_free(&x->w[1]->ops);
    free(x->q.doc);
    free(x);
    return 0;
}

static int run(fx *x, vmsh_set **set, vmsh_error **err)
{
    vmsh_writer_ops *ws[] = {&x->w[0]->ops, &x->w[1]->ops};
    vmsh_provider_ops *ps[] = {&x->p.ops};
    const char *targets[] = {"A-vm", "B-vm"};
    vmsh_set_options o = {.targets = targets, .n_targets = 2, .method = "auto"};
    return vmsh_coord_backup(&x->cfg, ws, 2, ps, 1, &x->q.ops, &o, set, err);
}

static size_t journal_files(const fx *x)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "ls %s/journal 2>/dev/null | grep -c journal", x->dir);
    FILE *p = popen(cmd, "r");
    int n = 0;
    if (fscanf(p, "%d", &n) != 1)
        n = 0;
    pclose(p);
    return (size_t)n;
}

static vmsh_writer_states *states_of(const fx *x)
{
    vmsh_writer_states *s = NULL;
    assert_int_equal(vmsh_writer_states_load(x->dir, &s, NULL), 0);
    return s;
}

/* ---- tests ---- */

static void good_set_sends_events_in_order(void **state)
{
    fx *x = *state;
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(run(x, &set, &err), 0);
    assert_null(err);
    assert_string_equal(
        event_log,
        "A:identify B:identify A:prepare-backup B:prepare-backup A:prepare-snapshot "
        "B:prepare-snapshot P:prepare A:freeze B:freeze P:commit B:thaw A:thaw A:post-snapshot "
        "B:post-snapshot R:copy R:copy P:release A:backup-complete B:backup-complete R:commit ");
    assert_false(vmsh_set_aborted(set));
    assert_string_equal(vmsh_set_backup_id(set), "backup-1");
    assert_true(vmsh_set_freeze_window_ms(set) >= 0);
    assert_int_equal(vmsh_set_bytes_read(set), 2000);
    assert_int_equal(vmsh_set_bytes_stored(set), 800);
    /* The committed document is the one the set reports, and parses back
     * with both writers, their components and what was stored. */
    assert_string_equal(x->q.doc, vmsh_set_document(set));
    vmsh_backup_doc *d = NULL;
    assert_int_equal(vmsh_backup_doc_parse(x->q.doc, strlen(x->q.doc), &d, NULL), 0);
    assert_string_equal(vmsh_backup_doc_set_id(d), vmsh_set_id(set));
    assert_int_equal(vmsh_backup_doc_writer_count(d), 2);
    vmsh_metadata *md = vmsh_backup_doc_writer(d, 1);
    assert_string_equal(vmsh_metadata_writer_id(md), ID_B);
    vmsh_component *c = vmsh_metadata_find_component(md, "B-vm");
    assert_non_null(c);
    vmsh_file *f = vmsh_component_find_file(c, "disk/vda");
    assert_string_equal(vmsh_file_source_path(f), "/snap/a.qcow2");
    assert_non_null(vmsh_file_stored(f));
    assert_int_equal(vmsh_backup_doc_freeze_window_ms(d), vmsh_set_freeze_window_ms(set));
    vmsh_backup_doc_free(d);
    /* States recorded: both stable, with the run's events. */
    vmsh_writer_states *st = states_of(x);
    const vmsh_writer_record *ra = vmsh_writer_states_find(st, ID_A);
    assert_non_null(ra);
    assert_int_equal(ra->state, VMSH_WSTATE_STABLE);
    assert_false(ra->has_error);
    assert_string_equal(ra->result, "completed");
    assert_string_equal(ra->set_id, vmsh_set_id(set));
    assert_int_equal(ra->n_events, 7);
    assert_string_equal(ra->events[3].event, "freeze");
    assert_string_equal(ra->events[3].result, "ok");
    vmsh_writer_states_free(st);
    /* Every action was undone in the normal course: no journal is left. */
    assert_int_equal(journal_files(x), 0);
    vmsh_set_free(set);
}

/* The checks of "Done when" for one failing run. */
static void check_aborted(fx *x, vmsh_set *set, int rc, const char *failing_name,
                          const char *failed_state)
{
    assert_true(rc < 0);
    assert_non_null(set);
    assert_true(vmsh_set_aborted(set));
    assert_null(vmsh_set_backup_id(set));
    assert_null(vmsh_set_document(set));
    assert_int_equal(x->q.commits - (x->q.fail_commit ? 1 : 0), 0);
    assert_null(x->q.doc);
    for (int i = 0; i < 2; i++) {
        fake_writer *w = x->w[i];
        /* Each writer that got PrepareForSnapshot gets exactly one Abort. */
        if (w->calls[VMSH_EVENT_PREPARE_SNAPSHOT])
            assert_int_equal(w->calls[VMSH_EVENT_ABORT], 1);
        assert_true(w->calls[VMSH_EVENT_ABORT] <= 1);
        /* Thaw always follows a Freeze that was sent (and so any that succeeded). */
        if (w->calls[VMSH_EVENT_FREEZE]) {
            assert_int_equal(w->calls[VMSH_EVENT_THAW], 1);
            assert_true(w->order[VMSH_EVENT_THAW] > w->order[VMSH_EVENT_FREEZE]);
        } else {
            assert_int_equal(w->calls[VMSH_EVENT_THAW], 0);
        }
        /* Abort comes after everything else the writer was sent. */
        if (w->calls[VMSH_EVENT_ABORT])
            for (int e = 0; e < VMSH_EVENT_ABORT; e++)
                assert_true(w->order[e] < w->order[VMSH_EVENT_ABORT]);
    }
    /* A prepared provider gets one abort. */
    if (x->p.calls[PV_PREPARE])
        assert_int_equal(x->p.calls[PV_ABORT], 1);
    /* States are recorded. */
    vmsh_writer_states *st = states_of(x);
    for (int i = 0; i < 2; i++) {
        const vmsh_writer_record *r = vmsh_writer_states_find(st, x->w[i]->id);
        assert_non_null(r);
        assert_string_equal(r->result, "aborted");
        assert_string_equal(r->set_id, vmsh_set_id(set));
        if (failing_name && strcmp(x->w[i]->name, failing_name) == 0) {
            assert_string_equal(vmsh_writer_state_name(r->state), failed_state);
            assert_true(r->has_error);
            assert_non_null(strstr(r->error_message, failing_name));
        } else {
            assert_int_equal(r->state, VMSH_WSTATE_STABLE);
            assert_false(r->has_error);
        }
    }
    vmsh_writer_states_free(st);
    /* The aborts undid every journalled action: no journal left to replay. */
    assert_int_equal(journal_files(x), 0);
}

static void writer_fails_at_each_event(void **state)
{
    static const vmsh_event events[] = {
        VMSH_EVENT_IDENTIFY,        VMSH_EVENT_PREPARE_BACKUP, VMSH_EVENT_PREPARE_SNAPSHOT,
        VMSH_EVENT_FREEZE,          VMSH_EVENT_THAW,           VMSH_EVENT_POST_SNAPSHOT,
        VMSH_EVENT_BACKUP_COMPLETE,
    };
    for (int who = 0; who < 2; who++) {
        for (size_t k = 0; k < VMSH_ARRAY_SIZE(events); k++) {
            void *st = NULL;
            assert_int_equal(setup(&st), 0);
            fx *x = st;
            x->w[who]->fail_at = (int)events[k];
            x->w[who]->retryable = true;
            vmsh_set *set = NULL;
            vmsh_error *err = NULL;
            int rc = run(x, &set, &err);
            char want[64];
            snprintf(want, sizeof(want), "failed-at-%s", vmsh_event_name(events[k]));
            print_message("writer %s fails at %s: %s\n", x->w[who]->name,
                          vmsh_event_name(events[k]), err ? err->message : "?");
            assert_int_equal(rc, -EIO);
            /* The error says which writer, which event, why; and a retry may help. */
            assert_non_null(strstr(err->message, x->w[who]->name));
            assert_non_null(strstr(err->message, vmsh_event_name(events[k])));
            assert_true(err->retryable);
            check_aborted(x, set, rc, x->w[who]->name, want);
            /* Identify changes nothing: nobody is sent Abort. */
            if (events[k] == VMSH_EVENT_IDENTIFY) {
                assert_int_equal(x->w[0]->calls[VMSH_EVENT_ABORT], 0);
                assert_int_equal(x->w[1]->calls[VMSH_EVENT_ABORT], 0);
            } else {
                assert_int_equal(x->w[0]->calls[VMSH_EVENT_ABORT], 1);
                assert_int_equal(x->w[1]->calls[VMSH_EVENT_ABORT], 1);
                assert_int_equal(x->q.aborts, 1);
            }
            vmsh_error_free(err);
            vmsh_set_free(set);
            assert_int_equal(teardown(&st), 0);
        }
    }
}

static void provider_fails_at_each_step(void **state)
{
    for (int step = PV_PREPARE; step <= PV_RELEASE; step++) {
        void *st = NULL;
        assert_int_equal(setup(&st), 0);
        fx *x = st;
        x->p.fail_at = step;
        vmsh_set *set = NULL;
        vmsh_error *err = NULL;
        int rc = run(x, &set, &err);
        assert_int_equal(rc, -ENOSPC);
        assert_non_null(strstr(err->message, "fake-overlay"));
        check_aborted(x, set, rc, NULL, NULL);
        assert_int_equal(x->w[0]->calls[VMSH_EVENT_ABORT], 1);
        if (step == PV_COMMIT) /* between Freeze and Thaw: both thawed */
            assert_int_equal(x->w[0]->calls[VMSH_EVENT_THAW], 1);
        vmsh_error_free(err);
        vmsh_set_free(set);
        assert_int_equal(teardown(&st), 0);
    }
}

static void requestor_failures_abort(void **state)
{
    for (int which = 0; which < 2; which++) {
        void *st = NULL;
        assert_int_equal(setup(&st), 0);
        fx *x = st;
        if (which == 0)
            x->q.fail_copy = true;
        else
            x->q.fail_commit = true;
        vmsh_set *set = NULL;
        vmsh_error *err = NULL;
        int rc = run(x, &set, &err);
        assert_true(rc < 0);
        check_aborted(x, set, rc, NULL, NULL);
        assert_int_equal(x->q.aborts, 1);
        vmsh_error_free(err);
        vmsh_set_free(set);
        assert_int_equal(teardown(&st), 0);
    }
}

static void freeze_past_the_limit_aborts(void **state)
{
    fx *x = *state;
    x->cfg.freeze_limit_ms = 50;
    /* The provider's commit, between Freeze and Thaw, takes too long. */
    x->p.sleep_at = PV_COMMIT;
    x->p.sleep_ms = 120;
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    int rc = run(x, &set, &err);
    assert_int_equal(rc, -ETIMEDOUT);
    assert_true(err->retryable);
    assert_true(vmsh_set_freeze_window_ms(set) > 50);
    check_aborted(x, set, rc, NULL, NULL);
    assert_int_equal(x->w[0]->calls[VMSH_EVENT_THAW], 1);
    assert_int_equal(x->w[1]->calls[VMSH_EVENT_THAW], 1);
    vmsh_error_free(err);
    vmsh_set_free(set);
}

static void slow_writer_times_out(void **state)
{
    fx *x = *state;
    x->cfg.event_timeout_ms = 50;
    x->w[1]->sleep_at = VMSH_EVENT_PREPARE_SNAPSHOT;
    x->w[1]->sleep_ms = 120;
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    int rc = run(x, &set, &err);
    assert_int_equal(rc, -ETIMEDOUT);
    assert_non_null(strstr(err->message, "writer B at prepare-snapshot"));
    check_aborted(x, set, rc, "B", "failed-at-prepare-snapshot");
    vmsh_writer_states *st = states_of(x);
    const vmsh_writer_record *r = vmsh_writer_states_find(st, ID_B);
    assert_string_equal(r->events[r->n_events - 2].result, "timed-out");
    vmsh_writer_states_free(st);
    vmsh_error_free(err);
    vmsh_set_free(set);
}

static void cancel_aborts_after_thaw(void **state)
{
    fx *x = *state;
    x->w[0]->cancel_at = VMSH_EVENT_FREEZE; /* "Ctrl-C" while A freezes */
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    int rc = run(x, &set, &err);
    assert_int_equal(rc, -ECANCELED);
    assert_non_null(strstr(err->message, "interrupted"));
    check_aborted(x, set, rc, NULL, NULL);
    /* A, frozen, is thawed; B is sent neither Freeze nor Thaw; both abort. */
    assert_string_equal(event_log, "A:identify B:identify A:prepare-backup B:prepare-backup "
                                   "A:prepare-snapshot B:prepare-snapshot P:prepare A:freeze "
                                   "A:thaw P:abort B:abort A:abort R:abort ");
    vmsh_error_free(err);
    vmsh_set_free(set);
}

static void second_set_is_busy_at_once(void **state)
{
    fx *x = *state;
    char path[128];
    snprintf(path, sizeof(path), "%s/snapshot-set.lock", x->dir);
    vmsh_lock *l = NULL;
    assert_int_equal(vmsh_lock_take(&l, path, true, false, "snapshot set", NULL), 0);
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(run(x, &set, &err), -EBUSY);
    assert_null(set);
    assert_int_equal(x->w[0]->calls[VMSH_EVENT_IDENTIFY], 0);
    vmsh_error_free(err);
    vmsh_lock_free(l);
}

static void duplicate_writer_ids_are_refused(void **state)
{
    fx *x = *state;
    strcpy(x->w[1]->id, ID_A);
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(run(x, &set, &err), -EINVAL);
    assert_non_null(strstr(err->message, "same writer ID"));
    vmsh_error_free(err);
}

/* A run killed after journalling: a child process writes the journal the
 * way a set does and dies without closing it. */
static void write_interrupted_journal(const char *dir, bool torn)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        vmsh_journal *j = NULL;
        uint64_t s1, s2, s3;
        if (vmsh_journal_create(&j, dir, "c0ffee00-0000-4000-8000-000000000001", "backup", NULL) <
            0)
            _exit(1);
        vmsh_journal_begin(j, ID_A, "prepare", NULL, &s1, NULL);
        vmsh_journal_mark(j, s1, VMSH_JOURNAL_DONE, NULL);
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "vm", json_object_new_string("web"));
        vmsh_journal_begin(j, ID_B, "freeze", d, &s2, NULL);
        json_object_put(d);
        vmsh_journal_begin(j, ID_A, "scratch", NULL, &s3, NULL);
        vmsh_journal_mark(j, s3, VMSH_JOURNAL_DONE, NULL);
        vmsh_journal_mark(j, s3, VMSH_JOURNAL_UNDONE, NULL);
        if (torn) {
            int fd = open(vmsh_journal_path(j), O_WRONLY | O_APPEND);
            const char *torn_line = "{\"type\":\"action\",\"seq\":4,\"ow";
            if (write(fd, torn_line, strlen(torn_line)) < 0)
                _exit(1);
            close(fd);
        }
        _exit(0); /* like SIGKILL: no close, no cleanup */
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void recover_undoes_an_interrupted_run(void **state)
{
    fx *x = *state;
    write_interrupted_journal(x->dir, true);
    assert_int_equal(journal_files(x), 1);
    vmsh_writer_ops *ws[] = {&x->w[0]->ops, &x->w[1]->ops};
    vmsh_recover_report *rep = NULL;
    vmsh_error *err = NULL;
    int rc = vmsh_coord_recover(&x->cfg, ws, 2, NULL, 0, &rep, &err);
    for (size_t i = 0; rc < 0 && rep && i < rep->n_items; i++)
        print_message("item %zu: %s\n", i, rep->items[i].error ? rep->items[i].error : "ok");
    assert_int_equal(rc, 0);
    /* Newest first; what was already undone is left alone; the torn line is
     * ignored (its action was never taken). */
    assert_string_equal(event_log, "B:undo-freeze A:undo-prepare ");
    assert_int_equal(rep->n_items, 2);
    assert_string_equal(rep->items[0].action, "freeze");
    assert_int_equal(rep->items[0].was, VMSH_JOURNAL_BEGUN);
    assert_true(rep->items[0].undone);
    assert_string_equal(rep->items[1].owner_name, "A");
    assert_int_equal(rep->items[1].was, VMSH_JOURNAL_DONE);
    assert_int_equal(rep->journals_removed, 1);
    assert_int_equal(journal_files(x), 0);
    /* The writers' recorded state says their set was interrupted. */
    vmsh_writer_states *st = states_of(x);
    const vmsh_writer_record *r = vmsh_writer_states_find(st, ID_B);
    assert_int_equal(r->state, VMSH_WSTATE_INTERRUPTED);
    assert_string_equal(r->set_id, "c0ffee00-0000-4000-8000-000000000001");
    vmsh_writer_states_free(st);
    vmsh_recover_report_free(rep);
    /* A second recover finds nothing. */
    event_log[0] = '\0';
    assert_int_equal(vmsh_coord_recover(&x->cfg, ws, 2, NULL, 0, &rep, NULL), 0);
    assert_int_equal(rep->n_items, 0);
    assert_string_equal(event_log, "");
    vmsh_recover_report_free(rep);
}

static void a_new_set_first_undoes_a_dead_one(void **state)
{
    fx *x = *state;
    write_interrupted_journal(x->dir, false);
    vmsh_set *set = NULL;
    assert_int_equal(run(x, &set, NULL), 0);
    /* Undone under the set lock before anything of the new set happens. */
    assert_int_equal(strncmp(event_log, "B:undo-freeze A:undo-prepare A:identify", 39), 0);
    assert_int_equal(journal_files(x), 0);
    vmsh_set_free(set);
}

static void recover_keeps_what_it_cannot_undo(void **state)
{
    fx *x = *state;
    write_interrupted_journal(x->dir, false);
    /* Writer B is not configured any more. */
    vmsh_writer_ops *ws[] = {&x->w[0]->ops};
    vmsh_recover_report *rep = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_coord_recover(&x->cfg, ws, 1, NULL, 0, &rep, &err), -EAGAIN);
    assert_non_null(rep);
    assert_int_equal(rep->n_items, 2);
    assert_false(rep->items[0].undone);
    assert_non_null(strstr(rep->items[0].error, ID_B));
    assert_true(rep->items[1].undone);
    assert_int_equal(rep->journals_failed, 1);
    assert_int_equal(journal_files(x), 1);
    vmsh_recover_report_free(rep);
    vmsh_error_free(err);
    err = NULL;
    /* Once B is back, the rest is undone and the journal goes; A's action
     * is not undone twice. */
    event_log[0] = '\0';
    vmsh_writer_ops *both[] = {&x->w[0]->ops, &x->w[1]->ops};
    assert_int_equal(vmsh_coord_recover(&x->cfg, both, 2, NULL, 0, &rep, &err), 0);
    assert_string_equal(event_log, "B:undo-freeze ");
    assert_int_equal(journal_files(x), 0);
    vmsh_recover_report_free(rep);
}

static void recover_leaves_a_live_run_alone(void **state)
{
    fx *x = *state;
    vmsh_journal *j = NULL;
    assert_int_equal(
        vmsh_journal_create(&j, x->dir, "live0000-0000-4000-8000-000000000001", "backup", NULL), 0);
    uint64_t seq;
    assert_int_equal(vmsh_journal_begin(j, ID_A, "freeze", NULL, &seq, NULL), 0);
    vmsh_writer_ops *ws[] = {&x->w[0]->ops, &x->w[1]->ops};
    vmsh_recover_report *rep = NULL;
    assert_int_equal(vmsh_coord_recover(&x->cfg, ws, 2, NULL, 0, &rep, NULL), 0);
    assert_int_equal(rep->journals_busy, 1);
    assert_int_equal(x->w[0]->undos, 0);
    vmsh_recover_report_free(rep);
    assert_int_equal(vmsh_journal_mark(j, seq, VMSH_JOURNAL_UNDONE, NULL), 0);
    assert_int_equal(vmsh_journal_close(j, NULL), 1); /* all undone: removed */
    assert_int_equal(journal_files(x), 0);
}

static void restore_sends_pre_and_post_restore(void **state)
{
    fx *x = *state;
    vmsh_set *set = NULL;
    assert_int_equal(run(x, &set, NULL), 0);
    vmsh_set_free(set);
    vmsh_backup_doc *d = NULL;
    assert_int_equal(vmsh_backup_doc_parse(x->q.doc, strlen(x->q.doc), &d, NULL), 0);
    event_log[0] = '\0';
    vmsh_writer_ops *ws[] = {&x->w[0]->ops, &x->w[1]->ops};
    const char *targets[] = {"B-vm"};
    vmsh_set_options o = {.targets = targets, .n_targets = 1};
    set = NULL;
    assert_int_equal(vmsh_coord_restore(&x->cfg, ws, 2, &x->q.ops, d, &o, &set, NULL), 0);
    /* Only the writer owning the selected VM takes part. */
    assert_string_equal(event_log, "B:pre-restore R:restore-B-vm B:post-restore ");
    vmsh_set_free(set);
    /* A VM that is not in the backup. */
    const char *bad[] = {"nope"};
    o.targets = bad;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_coord_restore(&x->cfg, ws, 2, &x->q.ops, d, &o, NULL, &err), -ENOENT);
    assert_non_null(strstr(err->message, "nope"));
    vmsh_error_free(err);
    err = NULL;
    /* A writer of the backup that is missing here. */
    o.targets = targets;
    assert_int_equal(vmsh_coord_restore(&x->cfg, ws, 1, &x->q.ops, d, &o, NULL, &err), -ENOENT);
    assert_non_null(strstr(err->message, ID_B));
    vmsh_error_free(err);
    vmsh_backup_doc_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(good_set_sends_events_in_order, setup, teardown),
        cmocka_unit_test(writer_fails_at_each_event),
        cmocka_unit_test(provider_fails_at_each_step),
        cmocka_unit_test(requestor_failures_abort),
        cmocka_unit_test_setup_teardown(freeze_past_the_limit_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_writer_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_aborts_after_thaw, setup, teardown),
        cmocka_unit_test_setup_teardown(second_set_is_busy_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(duplicate_writer_ids_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(recover_undoes_an_interrupted_run, setup, teardown),
        cmocka_unit_test_setup_teardown(a_new_set_first_undoes_a_dead_one, setup, teardown),
        cmocka_unit_test_setup_teardown(recover_keeps_what_it_cannot_undo, setup, teardown),
        cmocka_unit_test_setup_teardown(recover_leaves_a_live_run_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(restore_sends_pre_and_post_restore, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
