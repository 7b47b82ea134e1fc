/* test_rundir.c - session directories in the run directory (issue 23,
 * src/requestor/rundir.c): a session whose owner died (a child that exits
 * without cleaning up, as a SIGKILL leaves it) is removed by the next
 * sweep with what it holds (sockets, a libguestfs temporary tree) and the
 * libguestfs socket directory it noted; a live session (its lock held) is
 * kept; a note naming anything but a libguestfs directory removes nothing;
 * a directory without a lock is kept while young. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "requestor/requestor_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char top[64];
static char run[300], gsock[300], keep[300];

static int setup(void **state)
{
    (void)state;
    snprintf(top, sizeof(top), "/tmp/vmsh-test-rundir-XXXXXX");
    if (!mkdtemp(top))
        return -1;
    snprintf(run, sizeof(run), "%s/run", top);
    snprintf(gsock, sizeof(gsock), "%s/libguestfsAbC123", top);
    snprintf(keep, sizeof(keep), "%s/keep", top);
    setenv("VMSHADOW_RUN_DIR", run, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    return system(cmd) == 0 ? 0 : -1;
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static void touch(const char *dir, const char *name)
{
    char p[600];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
}

/* What a killed `files get` leaves: its session with a socket and a
 * libguestfs temporary tree, the noted socket directory in "/tmp". */
static void dies_with_session(char *dir_out, size_t size, const char *note)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *dir = NULL;
        int lock = -1;
        if (req_session_create(&dir, &lock, NULL) < 0)
            _exit(1);
        char p[600];
        snprintf(p, sizeof(p), "%s/vdb.sock", dir);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(p) >= sizeof(a.sun_path))
            _exit(4);
        memcpy(a.sun_path, p, strlen(p) + 1);
        if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
            _exit(2);
        snprintf(p, sizeof(p), "%s/libguestfsXyZ987", dir);
        mkdir(p, 0700);
        touch(p, "overlay1");
        if (note)
            req_session_note_guestfs(dir, note);
        if (write(pfd[1], dir, strlen(dir) + 1) < 0)
            _exit(3);
        _exit(0); /* no cleanup: the lock goes with the process */
    }
    close(pfd[1]);
    ssize_t n = read(pfd[0], dir_out, size - 1);
    close(pfd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(n > 0);
    dir_out[n] = 0;
}

static void dead_session_swept(void **state)
{
    (void)state;
    mkdir(gsock, 0700);
    touch(gsock, "guestfsd.sock");
    char dead[400];
    dies_with_session(dead, sizeof(dead), gsock);
    assert_true(exists(dead));
    /* ours, alive: kept */
    char *live = NULL;
    int lock = -1;
    assert_int_equal(req_session_create(&live, &lock, NULL), 0);
    /* req_session_create swept already: the dead one is gone */
    assert_false(exists(dead));
    assert_false(exists(gsock));
    assert_true(exists(live));
    req_session_sweep();
    assert_true(exists(live)); /* the lock is held (another description) */
    req_session_remove(live, lock);
    assert_false(exists(live));
    free(live);
}

static void hostile_note_removes_nothing(void **state)
{
    (void)state;
    mkdir(keep, 0700);
    touch(keep, "precious");
    char dead[400];
    dies_with_session(dead, sizeof(dead), keep);
    req_session_sweep();
    assert_false(exists(dead));
    assert_true(exists(keep)); /* not a libguestfsXXXXXX directory */
    char p[400];
    snprintf(p, sizeof(p), "%s/precious", keep);
    assert_true(exists(p));
}

static void young_unlocked_kept(void **state)
{
    (void)state;
    char dead[400];
    dies_with_session(dead, sizeof(dead), NULL);
    char lock[500];
    snprintf(lock, sizeof(lock), "%s/owner.lock", dead);
    assert_int_equal(unlink(lock), 0); /* as between mkdtemp and the lock */
    req_session_sweep();
    assert_true(exists(dead));
    /* other entries of the run directory are never touched */
    char other[400];
    snprintf(other, sizeof(other), "%s/instant-AbCdEf", run);
    mkdir(other, 0700);
    req_session_sweep();
    assert_true(exists(other));
}

static void sockdir_of_names_only_libguestfs_dirs(void **state)
{
    (void)state;
    static const struct {
        const char *path, *want;
    } cases[] = {
        {"/tmp/libguestfsAbC123/guestfsd.sock", "/tmp/libguestfsAbC123"},
        {"/tmp/libguestfs0zZ9aA/console.sock", "/tmp/libguestfs0zZ9aA"},
        {"/tmp/libguestfsAbC12/guestfsd.sock", NULL},      /* 5 random characters */
        {"/tmp/libguestfsAbC1234/guestfsd.sock", NULL},    /* 7 */
        {"/tmp/libguestfsAb.123/guestfsd.sock", NULL},     /* not mkdtemp's */
        {"/tmp/libguestfsAbC123/", NULL},                  /* no socket name */
        {"/tmp/libguestfsAbC123/../x.sock", NULL},         /* climbs out */
        {"/tmp/libguestfsAbC123/a/b.sock", NULL},          /* deeper */
        {"/tmp/libguestfsAbC123", NULL},                   /* the directory itself */
        {"/tmpx/libguestfsAbC123/guestfsd.sock", NULL},    /* another parent */
        {"/var/tmp/libguestfsAbC123/guestfsd.sock", NULL}, /* ditto */
        {"/tmp/vmshadow/AbC123/guestfsd.sock", NULL},
        {"", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = req_guestfs_sockdir_of("/tmp", cases[i].path);
        if (cases[i].want)
            assert_non_null(got), assert_string_equal(got, cases[i].want);
        else
            assert_null(got);
        free(got);
    }
    assert_null(req_guestfs_sockdir_of("", "/libguestfsAbC123/guestfsd.sock"));
}

static int bind_at(const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    assert_true(s >= 0 && strlen(path) < sizeof(a.sun_path));
    memcpy(a.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s, 1), 0);
    return s;
}

/* The directory of the socket this process holds, as libguestfs's launch
 * binds it (the files watcher's way of finding it during the launch); a
 * directory whose socket another process holds, or a socket outside the
 * parent, is not this process's. */
static void own_sockdir_found_by_its_socket(void **state)
{
    (void)state;
    char other[300], p[400];
    snprintf(other, sizeof(other), "%s/libguestfsOtHeR1", top);
    assert_int_equal(mkdir(other, 0700), 0);
    snprintf(p, sizeof(p), "%s/guestfsd.sock", other);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[1]);
        bind_at(p);
        char c;
        if (read(pfd[0], &c, 1) < 0) /* until the parent is done */
            _exit(1);
        _exit(0);
    }
    close(pfd[0]);
    for (int i = 0; i < 500 && !exists(p); i++)
        usleep(10000);
    assert_true(exists(p));
    assert_null(req_guestfs_own_sockdir(top)); /* the child's, not ours */
    snprintf(p, sizeof(p), "%s/x.sock", top);
    int s1 = bind_at(p); /* ours, outside a libguestfs directory */
    assert_null(req_guestfs_own_sockdir(top));
    assert_int_equal(mkdir(gsock, 0700), 0);
    snprintf(p, sizeof(p), "%s/guestfsd.sock", gsock);
    int s2 = bind_at(p);
    char *got = req_guestfs_own_sockdir(top);
    assert_non_null(got);
    assert_string_equal(got, gsock);
    free(got);
    assert_null(req_guestfs_own_sockdir("/tmp/elsewhere"));
    close(s2);
    assert_null(req_guestfs_own_sockdir(top));
    close(s1);
    close(pfd[1]);
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(dead_session_swept, setup, teardown),
        cmocka_unit_test_setup_teardown(hostile_note_removes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(young_unlocked_kept, setup, teardown),
        cmocka_unit_test(sockdir_of_names_only_libguestfs_dirs),
        cmocka_unit_test_setup_teardown(own_sockdir_found_by_its_socket, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
