/* Unit tests of the POSIX store (src/repo/store_posix.c): atomic put, get,
 * listing, ranged reads, delete, the streaming pack writer, locks, and the
 * refusal of links, FIFOs and other owners' files at every kind of path
 * (issue 20, point 6; docs/formats/repository.md, "Stores"). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>

#include <vmshadow/util/fs.h>

#include "repo/store.h"
#include "test_repo_helpers.h"

#define NOBODY 65534

typedef struct fixture {
    char *dir;  /* holds root/ and outside/ */
    char *root; /* the store */
    char *out;  /* a directory outside the store: links point here */
    repo_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    f->root = path2(f->dir, "root");
    f->out = path2(f->dir, "outside");
    mkdir(f->out, 0700);
    vmsh_error *err = NULL;
    if (repo_store_posix_open(&f->s, f->root, REPO_STORE_CREATE, &err) < 0)
        return -1;
    /* alarm: a FIFO that hangs an open fails the test instead of hanging it */
    alarm(60);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    repo_store_free(f->s);
    rm_rf(f->dir);
    free(f->dir);
    free(f->root);
    free(f->out);
    free(f);
    return 0;
}

static void put_str(fixture *f, const char *name, const char *text)
{
    vmsh_error *err = NULL;
    assert_int_equal(f->s->ops->put(f->s, name, text, strlen(text), &err), 0);
}

static char *get_str(fixture *f, const char *name, int want)
{
    vmsh_error *err = NULL;
    char *out = NULL;
    size_t len = 0;
    int rc = f->s->ops->get(f->s, name, 1 << 20, &out, &len, &err);
    assert_int_equal(rc, want);
    if (rc < 0) {
        assert_non_null(err);
        vmsh_error_free(err);
        return NULL;
    }
    return out;
}

static char *root_path(fixture *f, const char *name)
{
    return path2(f->root, name);
}

static void plant_symlink(fixture *f, const char *name, const char *target)
{
    char *p = root_path(f, name);
    unlink(p);
    rmdir(p);
    assert_int_equal(symlink(target, p), 0);
    free(p);
}

static void plant_fifo(fixture *f, const char *name)
{
    char *p = root_path(f, name);
    unlink(p);
    assert_int_equal(mkfifo(p, 0600), 0);
    free(p);
}

/* ---- the operations ---- */

static void put_is_atomic_and_get_reads_it(void **state)
{
    fixture *f = *state;
    put_str(f, "index/ab/one", "first");
    put_str(f, "index/ab/one", "second"); /* replaced whole */
    char *s = get_str(f, "index/ab/one", 0);
    assert_string_equal(s, "second");
    free(s);
    /* no temporary file stays behind */
    char *d = root_path(f, "index/ab");
    int n = 0;
    DIR *dd = opendir(d);
    for (struct dirent *de; (de = readdir(dd));)
        n += de->d_name[0] != '.';
    closedir(dd);
    assert_int_equal(n, 1);
    free(d);
    /* the size limit */
    vmsh_error *err = NULL;
    char *out = NULL;
    size_t len;
    assert_int_equal(f->s->ops->get(f->s, "index/ab/one", 3, &out, &len, &err), -EFBIG);
    vmsh_error_free(err);
    assert_null(get_str(f, "index/ab/none", -ENOENT));
    repo_store_stat st;
    assert_int_equal(f->s->ops->stat(f->s, "index/ab/one", &st, NULL), 0);
    assert_int_equal(st.size, 6);
    assert_int_equal(f->s->ops->stat(f->s, "index/ab/none", NULL, NULL), -ENOENT);
}

typedef struct seen {
    char names[16][64];
    repo_store_kind kinds[16];
    int n;
} seen;

static int collect(void *opaque, const char *name, repo_store_kind kind, const repo_store_stat *st)
{
    (void)st;
    seen *s = opaque;
    if (s->n < 16) {
        snprintf(s->names[s->n], 64, "%s", name);
        s->kinds[s->n++] = kind;
    }
    return 0;
}

static repo_store_kind kind_of(const seen *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0)
            return s->kinds[i];
    fail_msg("%s not listed", name);
    return REPO_STORE_OTHER;
}

static void list_names_kinds_without_following(void **state)
{
    fixture *f = *state;
    put_str(f, "backups/a", "1");
    put_str(f, "backups/b", "2");
    f->s->ops->mkdir(f->s, "backups/sub", NULL);
    plant_symlink(f, "backups/link", f->out);
    plant_fifo(f, "backups/fifo");
    seen s = {0};
    assert_int_equal(f->s->ops->list(f->s, "backups", REPO_STORE_LIST_STAT, collect, &s, NULL), 0);
    assert_int_equal(s.n, 5);
    assert_int_equal(kind_of(&s, "a"), REPO_STORE_REG);
    assert_int_equal(kind_of(&s, "b"), REPO_STORE_REG);
    assert_int_equal(kind_of(&s, "sub"), REPO_STORE_DIR);
    assert_int_equal(kind_of(&s, "link"), REPO_STORE_OTHER);
    assert_int_equal(kind_of(&s, "fifo"), REPO_STORE_OTHER);
    /* a listing of a linked directory is refused, not followed */
    plant_symlink(f, "packs", f->out);
    vmsh_error *err = NULL;
    seen s2 = {0};
    assert_int_equal(f->s->ops->list(f->s, "packs", REPO_STORE_LIST_STAT, collect, &s2, &err),
                     -ELOOP);
    assert_non_null(strstr(err->message, "symbolic link"));
    vmsh_error_free(err);
    assert_int_equal(s2.n, 0);
}

static void ranged_reads(void **state)
{
    fixture *f = *state;
    uint8_t buf[10000];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 7);
    assert_int_equal(f->s->ops->put(f->s, "packs/00/p.pack", buf, sizeof(buf), NULL), 0);
    repo_store_file *h = NULL;
    assert_int_equal(f->s->ops->open_file(f->s, "packs/00/p.pack", 0, &h, NULL), 0);
    repo_store_stat st;
    assert_int_equal(f->s->ops->fstat(h, &st), 0);
    assert_int_equal(st.size, sizeof(buf));
    uint8_t got[100];
    assert_int_equal(f->s->ops->pread(h, got, sizeof(got), 5000), 100);
    assert_memory_equal(got, buf + 5000, 100);
    assert_int_equal(f->s->ops->pread(h, got, sizeof(got), 9950), 50);
    assert_int_equal(f->s->ops->pread(h, got, sizeof(got), 10000), 0);
    f->s->ops->close(h);
}

static void delete_only_regular_files(void **state)
{
    fixture *f = *state;
    put_str(f, "backups/x", "x");
    assert_int_equal(f->s->ops->del(f->s, "backups/x", NULL), 0);
    assert_int_equal(f->s->ops->stat(f->s, "backups/x", NULL, NULL), -ENOENT);
    vmsh_error *err = NULL;
    assert_int_equal(f->s->ops->del(f->s, "backups/x", &err), -ENOENT);
    vmsh_error_free(err);
    err = NULL;
    /* a link to a file outside: neither it nor its target goes */
    char *victim = path2(f->out, "victim");
    FILE *v = fopen(victim, "w");
    fputs("keep", v);
    fclose(v);
    plant_symlink(f, "backups/y", victim);
    assert_int_equal(f->s->ops->del(f->s, "backups/y", &err), -ELOOP);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(access(victim, F_OK), 0);
    /* through a linked fan-out directory: refused */
    plant_symlink(f, "index", f->out);
    assert_true(f->s->ops->del(f->s, "index/victim", &err) < 0);
    vmsh_error_free(err);
    assert_int_equal(access(victim, F_OK), 0);
    free(victim);
}

static void pack_writer_commit_and_abort(void **state)
{
    fixture *f = *state;
    repo_store_file *w = NULL;
    vmsh_error *err = NULL;
    int rc = f->s->ops->create(f->s, "packs/cd/new.pack", REPO_STORE_DIRECT, &w, &err);
    if (rc == -EINVAL) /* tmpfs: no O_DIRECT */
        rc = f->s->ops->create(f->s, "packs/cd/new.pack", 0, &w, &err);
    assert_int_equal(rc, 0);
    uint8_t *buf = NULL;
    assert_int_equal(posix_memalign((void **)&buf, 4096, 8192), 0);
    memset(buf, 'p', 8192);
    assert_int_equal(f->s->ops->pwrite(w, buf, 8192, 0), 8192);
    /* invisible until committed */
    assert_int_equal(f->s->ops->stat(f->s, "packs/cd/new.pack", NULL, NULL), -ENOENT);
    assert_int_equal(f->s->ops->commit(w, 5000, &err), 0);
    repo_store_stat st;
    assert_int_equal(f->s->ops->stat(f->s, "packs/cd/new.pack", &st, NULL), 0);
    assert_int_equal(st.size, 5000);
    /* abort: the temporary file goes, nothing appears */
    assert_int_equal(f->s->ops->create(f->s, "packs/cd/other.pack", 0, &w, &err), 0);
    assert_int_equal(f->s->ops->pwrite(w, buf, 100, 0), 100);
    f->s->ops->abort(w);
    seen s = {0};
    assert_int_equal(f->s->ops->list(f->s, "packs/cd", REPO_STORE_LIST_STAT, collect, &s, NULL), 0);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.names[0], "new.pack");
    /* a fan-out directory that is a link: the writer never creates through it */
    plant_symlink(f, "packs/ef", f->out);
    assert_int_equal(f->s->ops->create(f->s, "packs/ef/x.pack", 0, &w, &err), -ELOOP);
    vmsh_error_free(err);
    DIR *d = opendir(f->out);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += de->d_name[0] != '.';
    closedir(d);
    assert_int_equal(n, 0);
    free(buf);
}

/* ---- refusals at every kind of path ---- */

static const char *const kinds[] = {"config", "packs/ab/p.pack", "index/ab/i", "backups/b"};

static void links_and_fifos_refused_everywhere(void **state)
{
    fixture *f = *state;
    char *secret = path2(f->out, "secret");
    FILE *sf = fopen(secret, "w");
    fputs("secret", sf);
    fclose(sf);
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        put_str(f, kinds[i], "real");
        /* a link to a file outside */
        plant_symlink(f, kinds[i], secret);
        vmsh_error *err = NULL;
        char *out = NULL;
        size_t len;
        assert_int_equal(f->s->ops->get(f->s, kinds[i], 1 << 20, &out, &len, &err), -ELOOP);
        assert_non_null(strstr(err->message, "symbolic link"));
        vmsh_error_free(err);
        err = NULL;
        repo_store_file *h = NULL;
        assert_int_equal(f->s->ops->open_file(f->s, kinds[i], 0, &h, &err), -ELOOP);
        vmsh_error_free(err);
        err = NULL;
        assert_true(f->s->ops->stat(f->s, kinds[i], NULL, NULL) < 0);
        /* a FIFO nobody writes: refused at once, never waited on */
        plant_fifo(f, kinds[i]);
        assert_int_equal(f->s->ops->get(f->s, kinds[i], 1 << 20, &out, &len, &err), -EINVAL);
        assert_non_null(strstr(err->message, "not a regular file"));
        vmsh_error_free(err);
        err = NULL;
        assert_int_equal(f->s->ops->open_file(f->s, kinds[i], 0, &h, &err), -EINVAL);
        vmsh_error_free(err);
        /* a put replaces the planted entry, it does not write through it */
        put_str(f, kinds[i], "again");
        char *s = get_str(f, kinds[i], 0);
        assert_string_equal(s, "again");
        free(s);
    }
    char *s = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_fs_read_all(secret, 100, &s, &len, NULL), 0);
    assert_string_equal(s, "secret");
    free(s);
    free(secret);
}

static void foreign_files_refused_unless_allowed(void **state)
{
    fixture *f = *state;
    if (geteuid() != 0)
        skip();
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        put_str(f, kinds[i], "theirs");
        char *p = root_path(f, kinds[i]);
        assert_int_equal(chown(p, NOBODY, NOBODY), 0);
        vmsh_error *err = NULL;
        char *out = NULL;
        size_t len;
        assert_int_equal(f->s->ops->get(f->s, kinds[i], 1 << 20, &out, &len, &err), -EPERM);
        assert_non_null(strstr(err->message, "uid 65534"));
        vmsh_error_free(err);
        free(p);
    }
    /* a fan-out directory of another owner */
    char *fan = root_path(f, "index/ab");
    assert_int_equal(chown(fan, NOBODY, NOBODY), 0);
    assert_int_equal(f->s->ops->stat(f->s, "index/ab/i", NULL, NULL), -EPERM);
    free(fan);
    /* the same with the flag */
    repo_store *s2 = NULL;
    assert_int_equal(repo_store_posix_open(&s2, f->root, REPO_STORE_ALLOW_FOREIGN, NULL), 0);
    char *out = NULL;
    size_t len;
    assert_int_equal(s2->ops->get(s2, "backups/b", 100, &out, &len, NULL), 0);
    assert_string_equal(out, "theirs");
    free(out);
    repo_store_free(s2);
}

static void writable_roots_refused_unless_allowed(void **state)
{
    fixture *f = *state;
    repo_store *s2 = NULL;
    vmsh_error *err = NULL;
    f->s->ops->mkdir(f->s, "packs", NULL);
    char *packs = root_path(f, "packs");
    /* group-writable root, then a group-writable top directory */
    assert_int_equal(chmod(f->root, 0770), 0);
    assert_int_equal(repo_store_posix_open(&s2, f->root, 0, &err), -EPERM);
    assert_non_null(strstr(err->message, "--allow-foreign-repo"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(repo_store_posix_open(&s2, f->root, REPO_STORE_ALLOW_FOREIGN, NULL), 0);
    repo_store_free(s2);
    assert_int_equal(chmod(f->root, 0700), 0);
    assert_int_equal(chmod(packs, 0777), 0);
    assert_int_equal(repo_store_posix_open(&s2, f->root, 0, &err), -EPERM);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(chmod(packs, 0700), 0);
    assert_int_equal(repo_store_posix_open(&s2, f->root, 0, NULL), 0);
    repo_store_free(s2);
    /* a top directory that is a link: refused even with the flag */
    rmdir(packs);
    assert_int_equal(symlink(f->out, packs), 0);
    assert_int_equal(repo_store_posix_open(&s2, f->root, REPO_STORE_ALLOW_FOREIGN, &err), -ELOOP);
    vmsh_error_free(err);
    err = NULL;
    unlink(packs);
    if (geteuid() == 0) {
        assert_int_equal(chown(f->root, NOBODY, NOBODY), 0);
        assert_int_equal(repo_store_posix_open(&s2, f->root, 0, &err), -EPERM);
        assert_non_null(strstr(err->message, "uid 65534"));
        vmsh_error_free(err);
    }
    free(packs);
}

static void locks_are_regular_files_in_locks(void **state)
{
    fixture *f = *state;
    vmsh_lock *a = NULL, *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(f->s->ops->lock(f->s, "write", true, &a, &err), 0);
    assert_non_null(a);
    assert_int_equal(f->s->ops->lock(f->s, "write", true, &b, &err), -EBUSY);
    vmsh_error_free(err);
    err = NULL;
    vmsh_lock_free(a);
    /* a link as the lock file: refused, its target not created */
    char *target = path2(f->out, "made");
    plant_symlink(f, "locks/read", target);
    assert_int_equal(f->s->ops->lock(f->s, "read", false, &a, &err), -ELOOP);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(access(target, F_OK), -1);
    /* a FIFO: refused without waiting */
    plant_fifo(f, "locks/read");
    assert_int_equal(f->s->ops->lock(f->s, "read", false, &a, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    /* locks/ itself a link */
    char *lw = root_path(f, "locks/write"), *lr = root_path(f, "locks/read");
    unlink(lw);
    unlink(lr);
    free(lw);
    free(lr);
    plant_symlink(f, "locks", f->out);
    assert_int_equal(f->s->ops->lock(f->s, "write", true, &a, &err), -ELOOP);
    vmsh_error_free(err);
    char *made = path2(f->out, "write");
    assert_int_equal(access(made, F_OK), -1);
    free(made);
    free(target);
}

static void bad_names_refused(void **state)
{
    fixture *f = *state;
    static const char *const bad[] = {"../x", "a/../b", "/etc/passwd", "a//b", ".", "a/", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        vmsh_error *err = NULL;
        char *out = NULL;
        size_t len;
        assert_int_equal(f->s->ops->get(f->s, bad[i], 100, &out, &len, &err), -EINVAL);
        vmsh_error_free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(put_is_atomic_and_get_reads_it, setup, teardown),
        cmocka_unit_test_setup_teardown(list_names_kinds_without_following, setup, teardown),
        cmocka_unit_test_setup_teardown(ranged_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(delete_only_regular_files, setup, teardown),
        cmocka_unit_test_setup_teardown(pack_writer_commit_and_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(links_and_fifos_refused_everywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_files_refused_unless_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(writable_roots_refused_unless_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(locks_are_regular_files_in_locks, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_names_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
