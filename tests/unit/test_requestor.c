/* Unit tests of the requestor (src/requestor, issue 21) with a fake writer
 * and an in-memory repository (mem://, src/repo/store_mem.c; the first
 * test once more on a directory): the order of the events a
 * backup reports through its callbacks, a cancel between steps aborts the
 * set with nothing stored (R5), a failing writer aborts it, a restore
 * writes the backed-up bytes where the writer planned them. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <json-c/json.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/requestor.h>
#include <vmshadow/requestor/serve.h>
#include <vmshadow/writers/identity.h>

#include "test_repo_helpers.h"
#include "test_spawn_helpers.h"

/* ---- the events, as the callbacks tell them ---- */

static char events[16384];

static void logf_(const char *fmt, ...)
{
    size_t n = strlen(events);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(events + n, sizeof(events) - n, fmt, ap);
    va_end(ap);
}

static const char *actor_name(vmsh_requestor_actor a)
{
    return a == VMSH_ACTOR_WRITER ? "W" : a == VMSH_ACTOR_PROVIDER ? "P" : "R";
}

static void cb_begin(void *o, vmsh_requestor_actor a, const char *who, const char *step)
{
    logf_("%s+%s ", actor_name(a), step);
}

static void cb_end(void *o, vmsh_requestor_actor a, const char *who, const char *step, int result,
                   int64_t ms)
{
    logf_("%s-%s%s ", actor_name(a), step, result ? "!" : "");
}

static int n_progress, n_warnings;

static void cb_progress(void *o, const char *file, uint64_t done, uint64_t total)
{
    n_progress++;
    assert_true(done <= total);
}

static void cb_warning(void *o, const char *m)
{
    n_warnings++;
}

static const vmsh_requestor_callbacks callbacks = {
    .version = VMSH_REQUESTOR_CALLBACKS_VERSION,
    .step_begin = cb_begin,
    .step_end = cb_end,
    .progress = cb_progress,
    .warning = cb_warning,
};

/* ---- a fake writer: one VM with one disk file (a real file) ---- */

static volatile sig_atomic_t cancel_flag;

typedef struct fake_writer {
    vmsh_writer_ops ops;
    const char *image;   /* the disk's source */
    const char *restore; /* where PreRestore plans it */
    int fail_at;         /* event that fails, or -1 */
    int cancel_at;       /* event at which the caller cancels, or -1 */
    int aborts;
} fake_writer;

#define FW(self) ((fake_writer *)(self))

static int fw_event(vmsh_writer_ops *self, vmsh_event ev, vmsh_error **err)
{
    if (FW(self)->cancel_at == (int)ev)
        cancel_flag = 1; /* as the CLI's SIGINT handler would */
    if (FW(self)->fail_at == (int)ev)
        return vmsh_error_set(err, -EIO, "fake cannot %s", vmsh_event_name(ev));
    return 0;
}

static int fw_identify(vmsh_writer_ops *self, vmsh_set *set, vmsh_metadata *md, vmsh_error **err)
{
    int r = fw_event(self, VMSH_EVENT_IDENTIFY, err);
    if (r < 0)
        return r;
    vmsh_component *c = NULL;
    vmsh_file *f = NULL;
    if ((r = vmsh_metadata_add_component(md, "vm1", &c, err)) < 0 ||
        (r = vmsh_component_add_file(c, "disk/vda", "disk", &f, err)) < 0)
        return r;
    vmsh_component_set_method(c, "saved-state", "a test");
    vmsh_file_set_path(f, FW(self)->image);
    return 0;
}

static int fw_prepare_backup(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fw_event(s, VMSH_EVENT_PREPARE_BACKUP, e);
}

static int fw_prepare_snapshot(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fw_event(s, VMSH_EVENT_PREPARE_SNAPSHOT, e);
}

static int fw_freeze(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fw_event(s, VMSH_EVENT_FREEZE, e);
}

static int fw_thaw(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fw_event(s, VMSH_EVENT_THAW, e);
}

static int fw_post_snapshot(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    int r = fw_event(s, VMSH_EVENT_POST_SNAPSHOT, e);
    if (r < 0)
        return r;
    vmsh_metadata *md = vmsh_set_metadata(set, s);
    vmsh_component *c = vmsh_metadata_find_component(md, "vm1");
    return vmsh_file_set_source_file(vmsh_component_find_file(c, "disk/vda"), FW(s)->image, "raw");
}

static int fw_backup_complete(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return fw_event(s, VMSH_EVENT_BACKUP_COMPLETE, e);
}

static int fw_abort(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    FW(s)->aborts++;
    return 0;
}

static int fw_pre_restore(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    vmsh_metadata *md = vmsh_set_metadata(set, s);
    vmsh_component *c = vmsh_metadata_find_component(md, "vm1");
    assert_non_null(c);
    return vmsh_file_set_restored(vmsh_component_find_file(c, "disk/vda"), VMSH_RESTORE_PENDING,
                                  FW(s)->restore, NULL);
}

static int fw_post_restore(vmsh_writer_ops *s, vmsh_set *set, vmsh_error **e)
{
    return 0;
}

static void fw_free(vmsh_writer_ops *s) {}

static void fake_init(fake_writer *f, const char *image)
{
    *f = (fake_writer){
        .ops = {.version = VMSH_WRITER_OPS_VERSION,
                /* the VM writer's identity: the restore takes its part of a
                 * backup (the fake stands in for it) */
                .name = VMSH_VM_WRITER_NAME,
                .id = VMSH_VM_WRITER_ID,
                .kind = VMSH_VM_WRITER_KIND,
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
                .free = fw_free},
        .image = image,
        .fail_at = -1,
        .cancel_at = -1,
    };
}

/* ---- fixture ---- */

typedef struct fixture {
    char *mem; /* the in-memory repository's name, NULL: a directory */
    char *dir, *repo, *state, *writers, *image, *out;
    fake_writer fw;
    vmsh_writer_ops *wl[1];
    vmsh_requestor_config cfg;
} fixture;

static int setup_in(void **state, bool in_memory)
{
    static unsigned serial;
    fixture *fx = calloc(1, sizeof(*fx));
    fx->dir = make_tmpdir();
    if (in_memory) {
        assert_true(asprintf(&fx->mem, "requestor-%u", ++serial) > 0);
        assert_int_equal(vmsh_repo_mem_create(fx->mem, NULL), 0);
        assert_true(asprintf(&fx->repo, "mem://%s", fx->mem) > 0);
    } else {
        fx->repo = path2(fx->dir, "repo");
    }
    fx->state = path2(fx->dir, "state");
    fx->writers = path2(fx->dir, "writers");
    fx->image = path2(fx->dir, "disk.img");
    fx->out = path2(fx->dir, "restored.img");
    assert_int_equal(mkdir(fx->state, 0700), 0);
    assert_int_equal(mkdir(fx->writers, 0700), 0);
    /* 3 MiB of data the repository must keep exactly */
    size_t n = 3u << 20;
    uint8_t *b = malloc(n);
    uint64_t seed = 42;
    fill_random(b, n, &seed);
    FILE *f = fopen(fx->image, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
    free(b);
    vmsh_repo_init_opts io = {0};
    assert_int_equal(vmsh_repo_init(fx->repo, &io, NULL), 0);
    fake_init(&fx->fw, fx->image);
    fx->fw.restore = fx->out;
    fx->wl[0] = &fx->fw.ops;
    fx->cfg = (vmsh_requestor_config){.state_dir = fx->state,
                                      .writers_dir = fx->writers,
                                      .cancel = &cancel_flag,
                                      .writers = fx->wl,
                                      .n_writers = 1};
    events[0] = '\0';
    n_progress = n_warnings = 0;
    cancel_flag = 0;
    *state = fx;
    return 0;
}

static int setup(void **state)
{
    return setup_in(state, true);
}

static int setup_dir(void **state)
{
    return setup_in(state, false);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    if (fx->mem) {
        vmsh_repo_mem_drop(fx->mem);
        free(fx->mem);
    }
    rm_rf(fx->dir);
    free(fx->dir);
    free(fx->repo);
    free(fx->state);
    free(fx->writers);
    free(fx->image);
    free(fx->out);
    free(fx);
    return 0;
}

static int open_repo(void *opaque, vmsh_repo **out, vmsh_error **err)
{
    return vmsh_repo_open(out, ((fixture *)opaque)->repo, NULL, err);
}

static size_t backups_in(fixture *fx)
{
    vmsh_repo *r = NULL;
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_open(&r, fx->repo, NULL, NULL), 0);
    assert_int_equal(vmsh_repo_list(r, &a, &n, NULL), 0);
    vmsh_backup_info_array_free(a, n);
    vmsh_repo_free(r);
    return n;
}

static int run_backup(fixture *fx, vmsh_requestor_result **res, vmsh_error **err)
{
    vmsh_requestor_backup_options o = {.open_repo = open_repo, .open_repo_opaque = fx};
    return vmsh_requestor_backup(&fx->cfg, &callbacks, &o, res, err);
}

/* ---- tests ---- */

static void test_backup_order(void **state)
{
    fixture *fx = *state;
    vmsh_requestor_result *res = NULL;
    vmsh_error *err = NULL;
    int r = run_backup(fx, &res, &err);
    assert_int_equal(r, 0);
    assert_null(err);
    assert_non_null(res->backup_id);
    assert_non_null(res->set_id);
    assert_int_equal(res->bytes_read, 3u << 20);
    assert_int_equal(res->n_failures, 0);
    /* the writer's events in the model's order, the copy after PostSnapshot,
     * the history step only with a VM writer of the host (none here), the
     * document committed last (R5), every step ended */
    const char *want = "W+identify W-identify W+prepare-backup W-prepare-backup "
                       "W+prepare-snapshot W-prepare-snapshot W+freeze W-freeze "
                       "W+thaw W-thaw W+post-snapshot W-post-snapshot "
                       "R+copy vm1/disk/vda R-copy vm1/disk/vda "
                       "W+backup-complete W-backup-complete R+commit R-commit ";
    assert_string_equal(events, want);
    assert_true(n_progress > 0);
    assert_int_equal(fx->fw.aborts, 0);
    assert_int_equal(backups_in(fx), 1);
    vmsh_requestor_result_free(res);
}

static void test_cancel_between_steps(void **state)
{
    fixture *fx = *state;
    fx->fw.cancel_at = VMSH_EVENT_FREEZE; /* SIGINT while the guests freeze */
    vmsh_requestor_result *res = NULL;
    vmsh_error *err = NULL;
    int r = run_backup(fx, &res, &err);
    assert_int_equal(r, -ECANCELED);
    assert_non_null(err);
    vmsh_error_free(err);
    assert_null(res->backup_id);
    assert_non_null(res->set_id);
    /* Thaw and Abort still go out; nothing is copied or committed */
    assert_non_null(strstr(events, "W+thaw"));
    assert_null(strstr(events, "R+copy"));
    assert_null(strstr(events, "R+commit"));
    assert_null(strstr(events, "post-snapshot"));
    assert_int_equal(fx->fw.aborts, 1);
    assert_int_equal(backups_in(fx), 0); /* R5: nothing stored */
    vmsh_requestor_result_free(res);
}

static void test_failing_writer_aborts(void **state)
{
    fixture *fx = *state;
    fx->fw.fail_at = VMSH_EVENT_PREPARE_SNAPSHOT;
    vmsh_requestor_result *res = NULL;
    vmsh_error *err = NULL;
    int r = run_backup(fx, &res, &err);
    assert_int_equal(r, -EIO);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "fake cannot prepare-snapshot"));
    vmsh_error_free(err);
    assert_non_null(strstr(events, "W-prepare-snapshot! "));
    assert_null(strstr(events, "W+freeze"));
    assert_null(strstr(events, "R+copy"));
    assert_int_equal(fx->fw.aborts, 1);
    assert_int_equal(res->n_failures, 1);
    assert_non_null(strstr(res->failures[0].message, "fake cannot"));
    assert_null(res->backup_id);
    assert_int_equal(backups_in(fx), 0);
    vmsh_requestor_result_free(res);
}

static void test_restore(void **state)
{
    fixture *fx = *state;
    vmsh_requestor_result *res = NULL;
    assert_int_equal(run_backup(fx, &res, NULL), 0);
    char *id = strdup(res->backup_id);
    vmsh_requestor_result_free(res);
    events[0] = '\0';
    vmsh_repo *repo = NULL;
    assert_int_equal(vmsh_repo_open(&repo, fx->repo, NULL, NULL), 0);
    const char *targets[] = {"vm1"};
    vmsh_requestor_restore_options o = {.backup = "latest", .targets = targets, .n_targets = 1};
    vmsh_requestor_restore_result *rr = NULL;
    vmsh_error *err = NULL;
    int r = vmsh_requestor_restore(&fx->cfg, &callbacks, repo, &o, &rr, &err);
    if (r < 0)
        fail_msg("restore: %s", err ? err->message : "?");
    assert_string_equal(rr->backup_id, id);
    assert_false(rr->damaged);
    assert_non_null(strstr(events, "R+restore vm1/disk/vda R-restore vm1/disk/vda "));
    assert_int_equal(compare_files(fx->image, fx->out), 0);
    vmsh_requestor_restore_result_free(rr);
    /* a VM that is not in the backup: nothing is done */
    const char *other[] = {"vm2"};
    o.targets = other;
    rr = NULL;
    assert_int_equal(vmsh_requestor_restore(&fx->cfg, &callbacks, repo, &o, &rr, &err), -ENOENT);
    vmsh_error_free(err);
    vmsh_requestor_restore_result_free(rr);
    vmsh_repo_free(repo);
    free(id);
}

/* The typed record serializes as the requestor's JSON did before issue 21
 * (member order included): the document format stays byte-compatible. */
static void test_stored_record_json(void **state)
{
    vmsh_metadata *md = NULL;
    vmsh_component *c = NULL;
    vmsh_file *f = NULL, *g = NULL;
    assert_int_equal(vmsh_metadata_new(&md, "id", "w", NULL), 0);
    assert_int_equal(vmsh_metadata_add_component(md, "vm1", &c, NULL), 0);
    assert_int_equal(vmsh_component_add_file(c, "disk/vda", "disk", &f, NULL), 0);
    assert_int_equal(vmsh_component_add_file(c, "nvram", "nvram", &g, NULL), 0);
    vmsh_file_stored_record rec = {.file = "vm1/disk/vda",
                                   .size = 10,
                                   .bytes_stored = 5,
                                   .new_chunks = 1,
                                   .bytes_read = 4,
                                   .read = VMSH_READ_INCREMENTAL,
                                   .read_reason = "why",
                                   .base = "B",
                                   .base_chunks = 3};
    assert_int_equal(vmsh_file_set_stored_record(f, &rec), 0);
    assert_string_equal(
        json_object_to_json_string_ext(vmsh_file_stored(f),
                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
        "{\"file\":\"vm1/disk/vda\",\"size\":10,\"bytes_stored\":5,\"new_chunks\":1,"
        "\"bytes_read\":4,\"read\":\"incremental\",\"read_reason\":\"why\",\"base\":"
        "\"B\",\"base_chunks\":3}");
    assert_int_equal(vmsh_file_read_mode(f), VMSH_READ_INCREMENTAL);
    assert_string_equal(vmsh_file_read_reason(f), "why");
    assert_int_equal(vmsh_file_stored_bytes_read(f), 4);
    assert_int_equal(vmsh_file_bytes_read(f), 4);
    rec = (vmsh_file_stored_record){.file = "vm1/disk/vda", .read = VMSH_READ_FULL};
    assert_int_equal(vmsh_file_set_stored_record(f, &rec), 0);
    assert_string_equal(
        json_object_to_json_string_ext(vmsh_file_stored(f),
                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
        "{\"file\":\"vm1/disk/vda\",\"size\":0,\"bytes_stored\":0,\"new_chunks\":0,"
        "\"bytes_read\":0,\"read\":\"full\",\"read_reason\":null,\"base_chunks\":0}");
    rec = (vmsh_file_stored_record){.file = "vm1/nvram", .size = 7};
    assert_int_equal(vmsh_file_set_stored_record(g, &rec), 0);
    assert_string_equal(
        json_object_to_json_string_ext(vmsh_file_stored(g),
                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
        "{\"file\":\"vm1/nvram\",\"size\":7,\"bytes_stored\":0,\"new_chunks\":0,"
        "\"bytes_read\":0}");
    assert_int_equal(vmsh_file_read_mode(g), VMSH_READ_UNPLANNED);
    /* a typed plan is copied and cleared */
    vmsh_disk_plan p = {.mode = VMSH_READ_INCREMENTAL, .base_backup = "B", .dirty_context = "ctx"};
    assert_int_equal(vmsh_file_set_plan(f, &p), 0);
    assert_string_equal(vmsh_file_plan(f)->base_backup, "B");
    assert_null(vmsh_file_plan(f)->bitmap);
    assert_int_equal(vmsh_file_set_plan(f, NULL), 0);
    assert_null(vmsh_file_plan(f));
    assert_int_equal(vmsh_file_set_plan(g, &p), 0); /* freed with the file */
    vmsh_metadata_free(md);
}

/* mem:// opens only what the program registered: the command line never
 * registers one, so `-r mem://x` cannot "succeed" into a repository that
 * is gone at exit. */
static void test_mem_locations(void **state)
{
    (void)state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, "mem://never-made", NULL, &err), -ENODEV);
    assert_non_null(strstr(err->message, "vmsh_repo_mem_create"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_repo_mem_create("a/b", NULL), -EINVAL);
    assert_int_equal(vmsh_repo_mem_create("..", NULL), -EINVAL);
    assert_int_equal(vmsh_repo_mem_create("", NULL), -EINVAL);
    assert_int_equal(vmsh_repo_mem_create("twice", NULL), 0);
    assert_int_equal(vmsh_repo_mem_create("twice", NULL), -EEXIST);
    vmsh_repo_init_opts io = {0};
    assert_int_equal(vmsh_repo_init("mem://twice", &io, NULL), 0);
    assert_int_equal(vmsh_repo_init("mem://twice", &io, NULL), -EEXIST);
    assert_int_equal(vmsh_repo_open(&r, "mem://twice", NULL, NULL), 0);
    size_t n = 1;
    vmsh_backup_info *a = NULL;
    assert_int_equal(vmsh_repo_list(r, &a, &n, NULL), 0);
    assert_int_equal(n, 0);
    vmsh_backup_info_array_free(a, n);
    vmsh_repo_free(r);
    vmsh_repo_mem_drop("twice");
    assert_int_equal(vmsh_repo_open(&r, "mem://twice", NULL, NULL), -ENODEV);
}

/* vmsh_serve_find (recover's way to the nbdkit serving a socket) reads a
 * server's whole command line: here "--unix SOCKET" comes after a 16 KiB
 * argument, which the old 4 KiB reader never saw. */
static void test_serve_find_long_command_line(void **state)
{
    (void)state;
    const char *sock = "/tmp/vmsh-test-serve-find.sock";
    int release = -1;
    /* argv[0] "nbdkit", blocked on the pipe */
    pid_t pid = spawn_blocked("nbdkit", 'k', 16 * 1024, "--unix", sock, &release);
    assert_true(pid > 0);
    pid_t found = 0;
    for (int i = 0; i < 500 && found != pid; i++) {
        found = vmsh_serve_find(sock);
        if (found != pid)
            usleep(10000);
    }
    assert_int_equal(found, pid);
    assert_int_equal(vmsh_serve_find("/tmp/vmsh-test-serve-find.sock.other"), 0);
    close(release);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_int_equal(vmsh_serve_find(sock), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backup_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup_order, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_between_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_writer_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
        cmocka_unit_test(test_stored_record_json),
        cmocka_unit_test(test_mem_locations),
        cmocka_unit_test(test_serve_find_long_command_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
