/* Unit tests of the util layer: errors, the key = value format, atomic
 * files and locks. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/util/error.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/kvconf.h>
#include <vmshadow/util/lock.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/text.h>

static void error_first_wins_and_prefix(void **state)
{
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_error_set(&err, -ENOENT, "disk %s missing", "vda"), -ENOENT);
    assert_int_equal(vmsh_error_set(&err, -EIO, "second"), -EIO);
    assert_string_equal(err->message, "disk vda missing");
    assert_int_equal(vmsh_error_prefix(&err, "VM %s", "web"), -ENOENT);
    assert_string_equal(err->message, "VM web: disk vda missing");
    vmsh_error *other = NULL;
    vmsh_error_set(&other, -EPERM, "later");
    vmsh_error_propagate(&err, &other);
    assert_null(other);
    assert_string_equal(err->message, "VM web: disk vda missing");
    vmsh_error_free(err);
    /* NULL err is allowed everywhere */
    assert_int_equal(vmsh_error_set(NULL, -EINVAL, "x"), -EINVAL);
    assert_int_equal(vmsh_error_set(NULL, 5, "positive codes become -EIO"), -EIO);
}

static void kvconf_parses_script_writer(void **state)
{
    const char *text = "# a comment\n"
                       "name = postgres-host\n"
                       "prepare-snapshot = /usr/local/bin/pg-backup-start\n"
                       "  thaw =   \n"
                       "timeout = 30\n"
                       "abort = /usr/local/bin/pg-backup-stop --abort\n";
    vmsh_kvconf *c = NULL;
    assert_int_equal(vmsh_kvconf_parse(&c, text, strlen(text), "w.conf", NULL), 0);
    assert_int_equal(vmsh_kvconf_count(c), 5);
    assert_string_equal(vmsh_kvconf_get(c, "name"), "postgres-host");
    assert_string_equal(vmsh_kvconf_get(c, "thaw"), "");
    assert_string_equal(vmsh_kvconf_get(c, "abort"), "/usr/local/bin/pg-backup-stop --abort");
    assert_null(vmsh_kvconf_get(c, "freeze"));
    assert_int_equal(vmsh_kvconf_line(c, "timeout"), 5);
    long t = 0;
    assert_int_equal(vmsh_kvconf_get_int(c, "timeout", 1, 3600, &t, NULL), 0);
    assert_int_equal(t, 30);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_kvconf_get_int(c, "name", 1, 3600, &t, &err), -EINVAL);
    assert_non_null(strstr(err->message, "w.conf:2"));
    vmsh_error_free(err);
    err = NULL;
    static const char *const allowed[] = {"name", "prepare-snapshot", "thaw", "timeout", NULL};
    assert_int_equal(vmsh_kvconf_check_keys(c, allowed, &err), -EINVAL);
    assert_non_null(strstr(err->message, "unknown key 'abort'"));
    vmsh_error_free(err);
    vmsh_kvconf_free(c);
}

static void kvconf_rejects_bad_input(void **state)
{
    static const char *const bad[] = {
        "no equals sign\n", "Upper = case\n", "= value\n", "a = 1\na = 2\n", "a b = c\n",
    };
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(bad); i++) {
        vmsh_kvconf *c = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_kvconf_parse(&c, bad[i], strlen(bad[i]), "x", &err), -EINVAL);
        assert_null(c);
        assert_non_null(strstr(err->message, "x:"));
        vmsh_error_free(err);
    }
    char nul[] = "a = b\0c\n";
    vmsh_kvconf *c = NULL;
    assert_int_equal(vmsh_kvconf_parse(&c, nul, sizeof(nul) - 1, "x", NULL), -EINVAL);
}

static char *make_tmpdir(void)
{
    char *d = strdup("/tmp/vmsh-test-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void fs_atomic_write_and_read(void **state)
{
    _cleanup_free_ char *dir = make_tmpdir();
    _cleanup_free_ char *sub = vmsh_path_join(dir, "a/b/c");
    assert_int_equal(vmsh_fs_mkdir_p(sub, 0700, NULL), 0);
    _cleanup_free_ char *f = vmsh_path_join(sub, "doc.json");
    assert_int_equal(vmsh_fs_write_atomic(f, "hello", 5, 0600, NULL), 0);
    assert_int_equal(vmsh_fs_write_atomic(f, "world!", 6, 0600, NULL), 0);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_fs_read_all(f, 100, &buf, &len, NULL), 0);
    assert_int_equal(len, 6);
    assert_string_equal(buf, "world!");
    free(buf);
    struct stat st;
    assert_int_equal(stat(f, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_fs_read_all(f, 3, &buf, &len, &err), -EFBIG);
    vmsh_error_free(err);
    /* writing into a directory that does not exist leaves nothing behind */
    _cleanup_free_ char *bad = vmsh_path_join(dir, "missing/x");
    err = NULL;
    assert_true(vmsh_fs_write_atomic(bad, "x", 1, 0600, &err) < 0);
    assert_non_null(strstr(err->message, "missing"));
    vmsh_error_free(err);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* issue 23: the descriptors are closed in the caller at once, their last
 * close happens in a detached process that is gone soon after (the pipe's
 * read end sees EOF only once every copy of its write end is closed), and
 * the caller is left no child to reap */
static void fs_close_detached(void **state)
{
    (void)state;
    int p[2], q[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(q), 0);
    int fds[] = {q[1], -1, p[1]};
    vmsh_fs_close_detached(fds, VMSH_ARRAY_SIZE(fds));
    assert_int_equal(fcntl(p[1], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(fcntl(q[1], F_GETFD), -1);
    char c;
    assert_int_equal(read(p[0], &c, 1), 0);
    assert_int_equal(read(q[0], &c, 1), 0);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
    close(p[0]);
    close(q[0]);
    vmsh_fs_close_detached(NULL, 0); /* nothing to do: no process */
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

/* issue 23: deferred descriptors stay open until vmsh_fs_close_deferred,
 * which closes them all (detached) and forgets them */
static void fs_defer_close(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    vmsh_fs_defer_close(p[1]);
    vmsh_fs_defer_close(-1);
    assert_int_not_equal(fcntl(p[1], F_GETFD), -1);
    vmsh_fs_close_deferred();
    assert_int_equal(fcntl(p[1], F_GETFD), -1);
    char c;
    assert_int_equal(read(p[0], &c, 1), 0);
    close(p[0]);
    vmsh_fs_close_deferred(); /* empty: nothing closed twice */
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
}

static void path_helpers(void **state)
{
    _cleanup_free_ char *j = vmsh_path_join("/a/", "/b");
    assert_string_equal(j, "/a/b");
    _cleanup_free_ char *d = vmsh_path_dirname("/var/lib/x");
    assert_string_equal(d, "/var/lib");
    assert_true(vmsh_name_is_safe("web-01.qcow2"));
    assert_false(vmsh_name_is_safe(".."));
    assert_false(vmsh_name_is_safe("a/b"));
    assert_false(vmsh_name_is_safe(""));
    assert_false(vmsh_name_is_safe("a\nb"));
}

static void lock_second_holder_gets_ebusy(void **state)
{
    _cleanup_free_ char *dir = make_tmpdir();
    _cleanup_free_ char *p = vmsh_path_join(dir, "lock");
    vmsh_lock *l = NULL;
    assert_int_equal(vmsh_lock_take(&l, p, true, false, "snapshot set", NULL), 0);
    /* flock is per open file description: a child process that opens the
     * file again must be refused at once. */
    pid_t pid = fork();
    if (pid == 0) {
        vmsh_lock *l2 = NULL;
        vmsh_error *err = NULL;
        int r = vmsh_lock_take(&l2, p, true, false, "snapshot set", &err);
        _exit(r == -EBUSY && strstr(err->message, "snapshot set is busy") ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    vmsh_lock_free(l);
    vmsh_lock *l3 = NULL;
    assert_int_equal(vmsh_lock_take(&l3, p, true, false, "snapshot set", NULL), 0);
    vmsh_lock_free(l3);
    unlink(p);
    rmdir(dir);
}

/* issue 20 point 10: names from documents and libvirt printed safely */
static void text_utf8_validation(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool valid;
    } cases[] = {
        {"", true},
        {"web-01", true},
        {"caf\xc3\xa9", true},       /* U+00E9 */
        {"\xe2\x82\xac", true},      /* U+20AC */
        {"\xf0\x9f\x98\x80", true},  /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", true},  /* U+10FFFF */
        {"\xff", false},             /* never in UTF-8 */
        {"web\xc3", false},          /* truncated */
        {"\xc0\xaf", false},         /* overlong '/' */
        {"\xe0\x80\xaf", false},     /* overlong '/' */
        {"\xed\xa0\x80", false},     /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", false}, /* above U+10FFFF */
        {"\x80", false},             /* lone continuation */
        {"\xe2\x82", false},         /* truncated */
        {"a\xe2\x28\xa1", false},    /* bad continuation */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (vmsh_utf8_valid_str(cases[i].s) != cases[i].valid)
            fail_msg("case %zu: expected %s", i, cases[i].valid ? "valid" : "invalid");
        assert_int_equal(vmsh_text_needs_escape(cases[i].s, 0), !cases[i].valid);
    }
    assert_true(vmsh_utf8_valid_str(NULL));
}

static void text_escape(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        unsigned flags;
        const char *out;
    } cases[] = {
        {"web", VMSH_TEXT_CONTROLS, "web"},
        {"caf\xc3\xa9", VMSH_TEXT_CONTROLS, "caf\xc3\xa9"},
        {"a\tb\nc\rd", VMSH_TEXT_CONTROLS, "a\\tb\\nc\\rd"},
        {"\x1b[31mred", VMSH_TEXT_CONTROLS, "\\x1b[31mred"},
        {"del\x7f", VMSH_TEXT_CONTROLS, "del\\x7f"},
        {"csi\xc2\x9b"
         "2J",
         VMSH_TEXT_CONTROLS, "csi\\u009b2J"},
        {"nbsp\xc2\xa0", VMSH_TEXT_CONTROLS, "nbsp\xc2\xa0"},
        {"bad\xff", VMSH_TEXT_CONTROLS, "bad\\xff"},
        {"bad\xffz\xc3", 0, "bad\\xffz\\xc3"},
        /* controls stay for JSON (json-c escapes them); bytes that are not
         * UTF-8 become \\xHH inside the string literal */
        {"a\x1b\xff", VMSH_TEXT_JSON, "a\x1b\\\\xff"},
        {"\xed\xa0\x80", VMSH_TEXT_JSON, "\\\\xed\\\\xa0\\\\x80"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = 0;
        char *o = vmsh_text_escape(cases[i].in, strlen(cases[i].in), cases[i].flags, &len);
        assert_non_null(o);
        assert_string_equal(o, cases[i].out);
        assert_int_equal(len, strlen(cases[i].out));
        assert_int_equal(vmsh_text_needs_escape(cases[i].in, cases[i].flags),
                         strcmp(cases[i].in, cases[i].out) != 0);
        free(o);
    }
    /* the escaped text is always valid UTF-8, whatever the input */
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = 0;
    char *o = vmsh_text_escape(all, 255, VMSH_TEXT_CONTROLS, NULL);
    assert_non_null(o);
    assert_true(vmsh_utf8_valid_str(o));
    for (const char *c = o; *c; c++)
        assert_false((unsigned char)*c < 0x20 || *c == 0x7f);
    free(o);
}

/* Paths from backups are trusted under a prefix only when they cannot climb
 * out of it (issue 20: /var/lib/libvirt/swtpm/../../.. was taken as
 * libvirt's own place). */
static void path_is_clean(void **state)
{
    (void)state;
    assert_true(vmsh_path_is_clean("/var/lib/libvirt/qemu/nvram/a_VARS.fd"));
    assert_true(vmsh_path_is_clean("/a..b/.c/d."));
    assert_false(vmsh_path_is_clean(NULL));
    assert_false(vmsh_path_is_clean(""));
    assert_false(vmsh_path_is_clean("relative/x"));
    assert_false(vmsh_path_is_clean("/var/lib/libvirt/swtpm/../../../etc/shadow"));
    assert_false(vmsh_path_is_clean("/a/./b"));
    assert_false(vmsh_path_is_clean("/a//b"));
    assert_false(vmsh_path_is_clean("/a/b/"));
    assert_false(vmsh_path_is_clean("/a/.."));
    assert_true(vmsh_path_is_clean("/")); /* the root itself: no component to climb with */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_first_wins_and_prefix),
        cmocka_unit_test(kvconf_parses_script_writer),
        cmocka_unit_test(kvconf_rejects_bad_input),
        cmocka_unit_test(fs_atomic_write_and_read),
        cmocka_unit_test(path_helpers),
        cmocka_unit_test(fs_close_detached),
        cmocka_unit_test(fs_defer_close),
        cmocka_unit_test(path_is_clean),
        cmocka_unit_test(lock_second_holder_gets_ebusy),
        cmocka_unit_test(text_utf8_validation),
        cmocka_unit_test(text_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
