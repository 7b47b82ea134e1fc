/* Unit tests of src/util/proc.c: shell-like splitting without a shell,
 * environment, exit status, timeout and the kill of the process group. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/util/fs.h>
#include <vmshadow/util/proc.h>

#include "test_spawn_helpers.h"

static void split_like_a_shell(void **state)
{
    char **av = NULL;
    assert_int_equal(
        vmsh_proc_split("  /bin/echo  'a b'  \"c \\\"d\\\" \\$x\"  e\\ f '' \"\" ", &av, NULL), 6);
    assert_string_equal(av[0], "/bin/echo");
    assert_string_equal(av[1], "a b");
    assert_string_equal(av[2], "c \"d\" $x");
    assert_string_equal(av[3], "e f");
    assert_string_equal(av[4], "");
    assert_string_equal(av[5], "");
    assert_null(av[6]);
    vmsh_proc_argv_free(av);
    av = NULL;
    assert_int_equal(vmsh_proc_split("   ", &av, NULL), 0);
    assert_null(av[0]);
    vmsh_proc_argv_free(av);
}

static void split_refuses_what_needs_a_shell(void **state)
{
    static const char *const bad[] = {"a 'b",  "a \"b",      "a \\",   "a | b", "a; b",
                                      "a > f", "echo $HOME", "a && b", "`x`"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char **av = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_proc_split(bad[i], &av, &err), -EINVAL);
        assert_null(av);
        assert_non_null(strstr(err->message, bad[i]));
        vmsh_error_free(err);
    }
    /* Quoted, the operators are plain characters. */
    char **av = NULL;
    assert_int_equal(vmsh_proc_split("a '|' \";\"", &av, NULL), 3);
    assert_string_equal(av[1], "|");
    vmsh_proc_argv_free(av);
}

static void run_passes_env_and_status(void **state)
{
    char dir[] = "/tmp/vmsh-proc-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char out[128], script[256];
    snprintf(out, sizeof(out), "%s/out", dir);
    snprintf(script, sizeof(script), "echo \"$VMSHADOW_EVENT $VMSHADOW_SET_ID\" > %s; exit 3", out);
    char *argv[] = {"sh", "-c", script, NULL};
    char *env[] = {"VMSHADOW_EVENT=freeze", "VMSHADOW_SET_ID=abc", NULL};
    vmsh_proc_result r;
    assert_int_equal(vmsh_proc_run(argv, env, 5000, &r, NULL), 0);
    assert_int_equal(r.exit_code, 3);
    assert_false(r.timed_out);
    char *text = NULL;
    size_t len;
    assert_int_equal(vmsh_fs_read_all(out, 1024, &text, &len, NULL), 0);
    assert_string_equal(text, "freeze abc\n");
    free(text);
    char buf[64];
    assert_string_equal(vmsh_proc_describe(&r, buf, sizeof(buf)), "exited with status 3");
    /* A command that does not exist is an error naming it. */
    char *missing[] = {"/nonexistent/cmd", NULL};
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_proc_run(missing, NULL, 1000, &r, &err), -ENOENT);
    assert_non_null(strstr(err->message, "/nonexistent/cmd"));
    vmsh_error_free(err);
    unlink(out);
    rmdir(dir);
}

static int process_alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static void timeout_kills_the_whole_group(void **state)
{
    char dir[] = "/tmp/vmsh-proc-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pidfile[128], script[256];
    snprintf(pidfile, sizeof(pidfile), "%s/child", dir);
    /* A grandchild that would outlive its parent if only the parent died. */
    snprintf(script, sizeof(script), "sleep 30 & echo $! > %s; wait", pidfile);
    char *argv[] = {"sh", "-c", script, NULL};
    vmsh_proc_result r;
    assert_int_equal(vmsh_proc_run(argv, NULL, 300, &r, NULL), 0);
    assert_true(r.timed_out);
    char *text = NULL;
    size_t len;
    assert_int_equal(vmsh_fs_read_all(pidfile, 64, &text, &len, NULL), 0);
    pid_t gc = (pid_t)atoi(text);
    free(text);
    assert_true(gc > 0);
    /* Dead means gone or a zombie (in a container nobody may reap it). */
    int alive = 1;
    for (int i = 0; i < 100 && alive; i++) {
        alive = process_alive(gc);
        if (alive)
            usleep(10000);
    }
    assert_false(alive);
    unlink(pidfile);
    rmdir(dir);
}

static bool stop_after_three(void *opaque)
{
    int *calls = opaque;
    return ++*calls >= 3;
}

static void stop_callback_ends_the_command(void **state)
{
    char *argv[] = {"sleep", "30", NULL};
    int calls = 0;
    vmsh_proc_opts o = {.timeout_ms = 60000, .stop = stop_after_three, .opaque = &calls};
    vmsh_proc_result r;
    assert_int_equal(vmsh_proc_run_opts(argv, NULL, &o, &r, NULL), 0);
    assert_true(r.stopped);
    assert_false(r.timed_out);
    assert_int_equal(r.signal, SIGTERM);
    char buf[64];
    assert_non_null(strstr(vmsh_proc_describe(&r, buf, sizeof(buf)), "stopped"));
}

/* stdout captured in memory; a failing or too talkative command is an error */
static void capture_returns_stdout(void **state)
{
    (void)state;
    char *argv[] = {"printf", "a b\\nc", NULL};
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_proc_capture(argv, 10000, 100, &out, &len, NULL), 0);
    assert_int_equal(len, 5);
    assert_string_equal(out, "a b\nc");
    free(out);

    char *fail[] = {"sh", "-c", "echo partial; exit 3", NULL};
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_proc_capture(fail, 10000, 100, &out, &len, &err), -EIO);
    assert_null(out);
    assert_non_null(strstr(err->message, "status 3"));
    vmsh_error_free(err);
    err = NULL;

    char *big[] = {"head", "-c", "5000", "/dev/zero", NULL};
    assert_int_equal(vmsh_proc_capture(big, 10000, 4999, &out, &len, &err), -EFBIG);
    assert_null(out);
    vmsh_error_free(err);
}

/* /proc/PID/cmdline's NUL-separated words: empty words kept, a last word
 * without its NUL (a process that rewrote its arguments) kept too. */
static void argv_from_nul_words(void **state)
{
    (void)state;
    char **av = NULL;
    static const char a[] = "nbdkit\0--unix\0/run/x.sock\0";
    assert_int_equal(vmsh_proc_argv_from_nul(a, sizeof(a) - 1, &av), 3);
    assert_string_equal(av[0], "nbdkit");
    assert_string_equal(av[1], "--unix");
    assert_string_equal(av[2], "/run/x.sock");
    assert_null(av[3]);
    vmsh_proc_argv_free(av);
    static const char b[] = "a\0\0b";
    assert_int_equal(vmsh_proc_argv_from_nul(b, sizeof(b) - 1, &av), 3);
    assert_string_equal(av[0], "a");
    assert_string_equal(av[1], "");
    assert_string_equal(av[2], "b");
    assert_null(av[3]);
    vmsh_proc_argv_free(av);
    assert_int_equal(vmsh_proc_argv_from_nul("", 0, &av), 0);
    assert_non_null(av);
    assert_null(av[0]);
    vmsh_proc_argv_free(av);
}

/* A process's whole command line, however long: a 64 KiB argument and the
 * words after it (the hand-made readers this replaced read 4 or 8 KiB and
 * missed what came after). */
static void cmdline_whole(void **state)
{
    (void)state;
    size_t big = 64 * 1024;
    int release = -1;
    pid_t pid = spawn_blocked("fake-server", 'p', big, "--socket=/run/s", NULL, &release);
    assert_true(pid > 0);
    char **av = NULL;
    int n = 0;
    /* until the exec is done */
    for (int i = 0; i < 500; i++) {
        vmsh_proc_argv_free(av);
        av = NULL;
        n = vmsh_proc_cmdline(pid, &av);
        if (n == 5)
            break;
        usleep(10000);
    }
    assert_int_equal(n, 5);
    assert_string_equal(av[0], "fake-server");
    assert_string_equal(av[2], "read x");
    assert_int_equal(strlen(av[3]), big);
    assert_string_equal(av[4], "--socket=/run/s");
    vmsh_proc_argv_free(av);
    close(release);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    /* gone: no words, an error */
    av = NULL;
    assert_true(vmsh_proc_cmdline(pid, &av) < 0);
    assert_null(av);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_like_a_shell),
        cmocka_unit_test(split_refuses_what_needs_a_shell),
        cmocka_unit_test(run_passes_env_and_status),
        cmocka_unit_test(timeout_kills_the_whole_group),
        cmocka_unit_test(stop_callback_ends_the_command),
        cmocka_unit_test(capture_returns_stdout),
        cmocka_unit_test(argv_from_nul_words),
        cmocka_unit_test(cmdline_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
