/* Unit tests of script writers (src/writers/script_writer.c; CLI.md "Script
 * writers") driven by the real coordinator: events in order with the set ID
 * and event in the environment, a failing or slow command aborts the set and
 * the writers get `abort`, bad files are refused with file and line, the
 * writer ID is a stable name-based UUID, and undo runs thaw/abort. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/script_writer.h>

typedef struct fx {
    char dir[64];
    char wdir[96];
    char log[128];
} fx;

static int setup(void **state)
{
    fx *x = calloc(1, sizeof(*x));
    strcpy(x->dir, "/tmp/vmsh-sw-XXXXXX");
    if (!mkdtemp(x->dir))
        return -1;
    snprintf(x->wdir, sizeof(x->wdir), "%s/writers.d", x->dir);
    snprintf(x->log, sizeof(x->log), "%s/log", x->dir);
    if (vmsh_fs_mkdir_p(x->wdir, 0700, NULL) < 0)
        return -1;
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fx *x = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", x->dir);
    int r = system(cmd);
    free(x);
    return r == 0 ? 0 : -1;
}

/* A writer file whose every command appends "<name> <event> <set id>" to the
 * log, except `special_key`, which runs `special` instead. */
static void write_conf(fx *x, const char *name, const char *special_key, const char *special,
                       const char *extra)
{
    static const char *const keys[] = {"prepare-snapshot", "freeze",          "thaw",
                                       "post-snapshot",    "backup-complete", "abort"};
    char path[256], *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "# test writer\nname = %s\n", name);
    for (size_t i = 0; i < 6; i++) {
        if (special_key && strcmp(keys[i], special_key) == 0)
            fprintf(f, "%s = %s\n", keys[i], special);
        else
            fprintf(f, "%s = sh -c 'echo \"%s $VMSHADOW_EVENT $VMSHADOW_SET_ID\" >> \"$0\"' %s\n",
                    keys[i], name, x->log);
    }
    if (extra)
        fputs(extra, f);
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.conf", x->wdir, name);
    assert_int_equal(vmsh_fs_write_atomic(path, text, len, 0644, NULL), 0);
    free(text);
}

static char *read_log(fx *x)
{
    char *text = NULL;
    size_t len;
    if (vmsh_fs_read_all(x->log, 1 << 16, &text, &len, NULL) < 0)
        return strdup("");
    return text;
}

/* A requestor that commits nothing anywhere but says it did. */
static int commit_ok(vmsh_requestor_ops *self, vmsh_set *set, const char *doc, char **out_id,
                     vmsh_error **err)
{
    *out_id = strdup("b1");
    return 0;
}

static int run_set(fx *x, vmsh_set **set, vmsh_error **err)
{
    char **paths = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_script_writer_paths(x->wdir, &paths, &n, NULL), 0);
    vmsh_writer_ops *ws[4] = {0};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(vmsh_script_writer_load(paths[i], &ws[i], NULL), 0);
    vmsh_script_writer_paths_free(paths);
    vmsh_coord_config cfg = {.state_dir = x->dir};
    vmsh_requestor_ops req = {.version = VMSH_REQUESTOR_OPS_VERSION, .commit = commit_ok};
    int r = vmsh_coord_backup(&cfg, ws, n, NULL, 0, &req, NULL, set, err);
    for (size_t i = 0; i < n; i++)
        vmsh_writer_free(ws[i]);
    return r;
}

static void events_arrive_in_order(void **state)
{
    fx *x = *state;
    write_conf(x, "a", NULL, NULL, NULL);
    write_conf(x, "b", NULL, NULL, NULL);
    vmsh_set *set = NULL;
    assert_int_equal(run_set(x, &set, NULL), 0);
    char want[2048];
    const char *id = vmsh_set_id(set);
    snprintf(want, sizeof(want),
             "a prepare-snapshot %s\nb prepare-snapshot %s\na freeze %s\nb freeze %s\n"
             "b thaw %s\na thaw %s\na post-snapshot %s\nb post-snapshot %s\n"
             "a backup-complete %s\nb backup-complete %s\n",
             id, id, id, id, id, id, id, id, id, id);
    char *log = read_log(x);
    assert_string_equal(log, want);
    free(log);
    vmsh_set_free(set);
}

static void failure_at_each_event_aborts(void **state)
{
    static const char *const keys[] = {"prepare-snapshot", "freeze", "thaw", "post-snapshot",
                                       "backup-complete"};
    for (size_t k = 0; k < 5; k++) {
        void *st;
        assert_int_equal(setup(&st), 0);
        fx *x = st;
        write_conf(x, "a", NULL, NULL, NULL);
        write_conf(x, "b", keys[k], "sh -c 'exit 3'", NULL);
        vmsh_set *set = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(run_set(x, &set, &err), -EIO);
        assert_non_null(strstr(err->message, "exited with status 3"));
        assert_non_null(strstr(err->message, keys[k]));
        assert_true(vmsh_set_aborted(set));
        char *log = read_log(x);
        /* Both writers get abort, after everything else. */
        char line[128];
        snprintf(line, sizeof(line), "a abort %s\n", vmsh_set_id(set));
        char *a_abort = strstr(log, line);
        assert_non_null(a_abort);
        assert_null(strstr(a_abort + 1, "a ")); /* nothing after abort for a */
        snprintf(line, sizeof(line), "b abort %s\n", vmsh_set_id(set));
        assert_non_null(strstr(log, line));
        if (k < 4) /* failed before BackupComplete: nobody got it */
            assert_null(strstr(log, "backup-complete"));
        free(log);
        vmsh_error_free(err);
        vmsh_set_free(set);
        assert_int_equal(teardown(&st), 0);
    }
}

static void command_past_its_timeout_is_killed(void **state)
{
    fx *x = *state;
    write_conf(x, "a", NULL, NULL, NULL);
    write_conf(x, "slow", "freeze", "sleep 30", "timeout = 1\n");
    vmsh_set *set = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(run_set(x, &set, &err), -ETIMEDOUT);
    assert_non_null(strstr(err->message, "writer's timeout"));
    assert_true(err->retryable);
    char *log = read_log(x);
    assert_non_null(strstr(log, "a thaw"));
    assert_non_null(strstr(log, "slow thaw"));
    assert_non_null(strstr(log, "a abort"));
    free(log);
    vmsh_error_free(err);
    vmsh_set_free(set);
}

static void bad_files_are_refused(void **state)
{
    fx *x = *state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"name = x\nfreez = true\n", "freez"},
        {"name = x\ntimeout = 0\n", "timeout"},
        {"name = x\nfreeze = echo 'oops\n", "unmatched"},
        {"name = x\nfreeze = sync | cat\n", "shell operator"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/bad.conf", x->wdir);
        assert_int_equal(
            vmsh_fs_write_atomic(path, cases[i].text, strlen(cases[i].text), 0644, NULL), 0);
        vmsh_writer_ops *w = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_script_writer_load(path, &w, &err), -EINVAL);
        assert_non_null(strstr(err->message, cases[i].want));
        assert_non_null(strstr(err->message, "bad.conf:2"));
        vmsh_error_free(err);
    }
}

static void writer_id_is_name_based(void **state)
{
    fx *x = *state;
    /* RFC 4122 v5 of the name in the VM writer's namespace (docs/formats/writer-state.md). */
    char id[37];
    assert_int_equal(vmsh_script_writer_id("postgres-host", id, NULL), 0);
    assert_string_equal(id, "ab1846f1-53ee-59b1-8df1-98036bc83687");
    /* Without a name key the file name is the name. */
    char path[256];
    snprintf(path, sizeof(path), "%s/nightly-cache.conf", x->wdir);
    assert_int_equal(vmsh_fs_write_atomic(path, "abort = true\n", 13, 0644, NULL), 0);
    vmsh_writer_ops *w = NULL;
    assert_int_equal(vmsh_script_writer_load(path, &w, NULL), 0);
    assert_string_equal(w->name, "nightly-cache");
    assert_string_equal(w->id, "2ccc34df-bf29-536d-b2bc-4558d52722b5");
    assert_string_equal(w->kind, "script");
    vmsh_writer_free(w);
}

static void undo_runs_thaw_and_abort(void **state)
{
    fx *x = *state;
    write_conf(x, "a", NULL, NULL, NULL);
    char path[256];
    snprintf(path, sizeof(path), "%s/a.conf", x->wdir);
    vmsh_writer_ops *w = NULL;
    assert_int_equal(vmsh_script_writer_load(path, &w, NULL), 0);
    /* A run killed while frozen: prepare-snapshot done, freeze begun. */
    pid_t pid = fork();
    if (pid == 0) {
        vmsh_journal *j = NULL;
        uint64_t s;
        if (vmsh_journal_create(&j, x->dir, "dead0000-0000-4000-8000-000000000000", "backup",
                                NULL) < 0)
            _exit(1);
        vmsh_journal_begin(j, w->id, "prepare-snapshot", NULL, &s, NULL);
        vmsh_journal_mark(j, s, VMSH_JOURNAL_DONE, NULL);
        vmsh_journal_begin(j, w->id, "freeze", NULL, &s, NULL);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    vmsh_coord_config cfg = {.state_dir = x->dir};
    vmsh_recover_report *rep = NULL;
    assert_int_equal(vmsh_coord_recover(&cfg, &w, 1, NULL, 0, &rep, NULL), 0);
    assert_int_equal(rep->n_items, 2);
    char *log = read_log(x);
    assert_string_equal(log, "a thaw dead0000-0000-4000-8000-000000000000\n"
                             "a abort dead0000-0000-4000-8000-000000000000\n");
    free(log);
    vmsh_recover_report_free(rep);
    vmsh_writer_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(events_arrive_in_order, setup, teardown),
        cmocka_unit_test(failure_at_each_event_aborts),
        cmocka_unit_test_setup_teardown(command_past_its_timeout_is_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_files_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(writer_id_is_name_based, setup, teardown),
        cmocka_unit_test_setup_teardown(undo_runs_thaw_and_abort, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
