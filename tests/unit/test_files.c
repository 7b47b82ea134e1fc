/* test_files.c - the pure half of file-level restore (issue 23 point 4;
 * src/requestor/files_tree.c) over a hostile filesystem held in memory:
 * names with "/" or "..", links pointing out, a link and a directory of
 * the same name, device nodes and FIFOs, set-user-ID files, trees deeper
 * than the limit; the copy never writes outside its directory, keeps
 * modes, owners and times, re-creates links without following them; the
 * tar writer against its golden stream (tests/golden/files-tar-v1.tar,
 * docs/formats/files-tar.md) and the listing order. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "requestor/files_priv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a filesystem in memory: a flat table of paths -------------------- */

typedef struct node {
    const char *dir;  /* the directory listing it */
    const char *name; /* raw: may be hostile */
    uint32_t mode;
    int64_t uid, gid, mtime;
    const char *data; /* file content or link target */
    uint64_t size;    /* 0: strlen(data) */
} node;

typedef struct memfs {
    const node *n;
    size_t count;
    int notes;
    char last_note[512];
    int reads;
    uint64_t fail_at; /* a read at or past this offset fails (0: none) */
    /* watched during reads past a file's start: what the target directory
     * holds while a copy is half written */
    const char *watch_dir, *watch_name;
    int seen_hidden, seen_final, watched;
} memfs;

static void watch(memfs *fs)
{
    DIR *d = opendir(fs->watch_dir);
    if (!d)
        return;
    fs->watched++;
    for (struct dirent *de; (de = readdir(d));) {
        if (strncmp(de->d_name, ".vmshadow-part-", 15) == 0)
            fs->seen_hidden++;
        if (strcmp(de->d_name, fs->watch_name) == 0)
            fs->seen_final++;
    }
    closedir(d);
}

/* How many entries `dir` holds (not "." and ".."; hidden ones count);
 * -1 when it cannot be read. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    return n;
}

static vmsh_files_entry entry_of(const node *x)
{
    vmsh_files_entry e = {0};
    e.mode = x->mode;
    e.uid = x->uid;
    e.gid = x->gid;
    e.mtime = x->mtime;
    e.mtime_nsec = S_ISREG(x->mode) ? 123456789 : 0;
    e.atime = x->mtime;
    e.size = S_ISREG(x->mode) ? (x->size ? x->size : strlen(x->data)) : 0;
    e.target = S_ISLNK(x->mode) ? strdup(x->data) : NULL;
    return e;
}

static int m_list(void *opaque, const char *dir, vmsh_files_entry **out, size_t *n,
                  vmsh_error **err)
{
    memfs *fs = opaque;
    (void)err;
    *out = calloc(fs->count + 1, sizeof(**out));
    *n = 0;
    for (size_t i = 0; i < fs->count; i++)
        if (strcmp(fs->n[i].dir, dir) == 0) {
            (*out)[*n] = entry_of(&fs->n[i]);
            (*out)[*n].path = strdup(fs->n[i].name);
            (*n)++;
        }
    return 0;
}

static const node *find(memfs *fs, const char *path)
{
    for (size_t i = 0; i < fs->count; i++) {
        char *p = files_join(fs->n[i].dir, fs->n[i].name);
        bool eq = strcmp(p, path) == 0;
        free(p);
        if (eq)
            return &fs->n[i];
    }
    return NULL;
}

static int m_stat(void *opaque, const char *path, vmsh_files_entry *out, vmsh_error **err)
{
    memfs *fs = opaque;
    if (strcmp(path, "/") == 0) {
        *out = (vmsh_files_entry){.mode = S_IFDIR | 0755, .path = strdup("/")};
        return 0;
    }
    const node *x = find(fs, path);
    if (!x)
        return vmsh_error_set(err, -ENOENT, "%s: no such file", path);
    *out = entry_of(x);
    out->path = strdup(path);
    return 0;
}

static int m_read(void *opaque, const char *path, uint64_t off, void *buf, size_t len, size_t *got,
                  vmsh_error **err)
{
    memfs *fs = opaque;
    const node *x = find(fs, path);
    if (!x || !S_ISREG(x->mode))
        return vmsh_error_set(err, -EIO, "read of %s", path);
    fs->reads++;
    if (fs->watch_dir && off > 0)
        watch(fs);
    if (fs->fail_at && off >= fs->fail_at)
        return vmsh_error_set(err, -EIO, "read of %s at %llu", path, (unsigned long long)off);
    uint64_t size = x->size ? x->size : strlen(x->data);
    *got = 0;
    if (off >= size)
        return 0;
    size_t n = size - off < len ? (size_t)(size - off) : len;
    /* a big file: its data repeated; a file with size and "" is zeros */
    size_t dl = strlen(x->data);
    for (size_t i = 0; i < n; i++)
        ((char *)buf)[i] = dl ? x->data[(off + i) % dl] : 0;
    *got = n;
    return 0;
}

static const files_src_ops mem_ops = {m_list, m_stat, m_read};

static void on_note(void *opaque, const char *path, const char *why)
{
    memfs *fs = opaque;
    fs->notes++;
    (void)path; /* a deep tree's path is longer than the buffer */
    snprintf(fs->last_note, sizeof(fs->last_note), "%s", why);
}

static files_src src_of(memfs *fs)
{
    return (files_src){&mem_ops, fs, on_note, fs};
}

#define T1 1600000000
static const node hostile[] = {
    {"/", "tree", S_IFDIR | 02750, 4321, 4321, T1, NULL, 0},
    {"/tree", "hello.txt", S_IFREG | 0640, 1234, 2345, T1 + 1, "hello\n", 0},
    {"/tree", "suid", S_IFREG | 04755, 0, 0, T1 + 2, "s", 0},
    {"/tree", "rel", S_IFLNK | 0777, 0, 0, T1, "hello.txt", 0},
    {"/tree", "out", S_IFLNK | 0777, 0, 0, T1, "../../../../etc/passwd", 0},
    /* a link and then a directory of the same name: the directory's file
     * must not land where the link points */
    {"/tree", "twin", S_IFLNK | 0777, 0, 0, T1, "/tmp", 0},
    {"/tree", "twin", S_IFDIR | 0755, 0, 0, T1, NULL, 0},
    {"/tree/twin", "planted", S_IFREG | 0644, 0, 0, T1, "x", 0},
    {"/tree", "..", S_IFDIR | 0755, 0, 0, T1, NULL, 0},
    {"/tree", "a/../../b", S_IFREG | 0644, 0, 0, T1, "x", 0},
    {"/tree", "", S_IFREG | 0644, 0, 0, T1, "x", 0},
    {"/tree", "fifo", S_IFIFO | 0644, 0, 0, T1, NULL, 0},
    {"/tree", "null", S_IFCHR | 0666, 0, 0, T1, NULL, 0},
    {"/tree", "empty", S_IFDIR | 0700, 7, 8, T1 - 100, NULL, 0},
    {"/tree", "sparse", S_IFREG | 0600, 0, 0, T1, "", 3 * 1024 * 1024 + 17},
    {"/tree", "big", S_IFREG | 0600, 0, 0, T1, "0123456789abcdef", 2 * 1024 * 1024 + 5},
};

static char tmpl[] = "/tmp/test_files.XXXXXX";
static char *top;

static int setup(void **state)
{
    (void)state;
    char *t = strdup(tmpl);
    top = mkdtemp(t);
    return top ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    int rc = system(cmd);
    free(top);
    return rc == 0 ? 0 : -1;
}

static char *at(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", top, rel);
    return buf[k];
}

static void names(void **state)
{
    (void)state;
    assert_true(files_name_ok("a"));
    assert_true(files_name_ok("..."));
    assert_false(files_name_ok(""));
    assert_false(files_name_ok("."));
    assert_false(files_name_ok(".."));
    assert_false(files_name_ok("a/b"));
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[299] = 0;
    assert_false(files_name_ok(longname));
    char *b = NULL;
    assert_int_equal(files_basename("/a/b/", &b, NULL), 0);
    assert_string_equal(b, "b");
    free(b);
    assert_int_equal(files_basename("/", &b, NULL), 0);
    assert_string_equal(b, "");
    free(b);
    assert_int_equal(files_basename("a/b", &b, NULL), -EINVAL);
    assert_int_equal(files_basename("/a/..", &b, NULL), -EINVAL);
    assert_int_equal(files_basename("/a/.", &b, NULL), -EINVAL);
    char *j = files_join("/", "x");
    assert_string_equal(j, "/x");
    free(j);
    j = files_join("/a", "x");
    assert_string_equal(j, "/a/x");
    free(j);
}

/* The copy of the hostile tree: only valid names, inside the target,
 * links verbatim, the twin directory never written through the link,
 * devices and FIFOs skipped, set-user-ID dropped, modes and times kept. */
static void copy_is_confined(void **state)
{
    (void)state;
    memfs fs = {.n = hostile, .count = sizeof(hostile) / sizeof(hostile[0])};
    files_src src = src_of(&fs);
    const char *paths[] = {"/tree"};
    char *to = at("out");
    vmsh_files_get_options go = {.to_dir = to, .tar_fd = -1};
    vmsh_files_stats st;
    vmsh_error *err = NULL;
    /* the twin: the link is made, then the directory of the same name is
     * refused (it exists) without --force */
    int rc = files_tree_get(&src, paths, 1, &go, &st, &err);
    assert_int_equal(rc, -EEXIST);
    assert_non_null(strstr(err->message, "twin"));
    vmsh_error_free(err);
    err = NULL;
    struct stat s;
    assert_int_equal(lstat(at("out/tree/twin"), &s), 0);
    assert_true(S_ISLNK(s.st_mode));
    assert_int_equal(lstat("/tmp/planted", &s), -1); /* never through the link */

    /* with --force the link is replaced by the directory: still inside */
    go.force = true;
    fs.notes = 0;
    rc = files_tree_get(&src, paths, 1, &go, &st, &err);
    if (rc)
        fail_msg("%s", err->message);
    assert_int_equal(lstat(at("out/tree/twin"), &s), 0);
    assert_true(S_ISDIR(s.st_mode));
    assert_int_equal(lstat(at("out/tree/twin/planted"), &s), 0);
    assert_int_equal(lstat("/tmp/planted", &s), -1);
    /* invalid names: notes, nothing made for them */
    assert_int_equal(lstat(at("out/b"), &s), -1);
    assert_int_equal(lstat(at("b"), &s), -1);
    int count = count_entries(at("out/tree"));
    /* hello.txt suid rel out twin empty sparse big */
    assert_int_equal(count, 8);
    /* links verbatim, never followed */
    char t[256];
    ssize_t n = readlink(at("out/tree/out"), t, sizeof(t) - 1);
    assert_true(n > 0);
    t[n] = 0;
    assert_string_equal(t, "../../../../etc/passwd");
    /* modes, owners (as root), times */
    assert_int_equal(lstat(at("out/tree/hello.txt"), &s), 0);
    assert_int_equal(s.st_mode & 07777, 0640);
    assert_int_equal(s.st_mtime, T1 + 1);
    assert_int_equal(s.st_mtim.tv_nsec, 123456789);
    assert_int_equal(s.st_size, 6);
    if (geteuid() == 0) {
        assert_int_equal(s.st_uid, 1234);
        assert_int_equal(s.st_gid, 2345);
    }
    assert_int_equal(lstat(at("out/tree/suid"), &s), 0);
    assert_int_equal(s.st_mode & 07777, 0755);
    assert_int_equal(lstat(at("out/tree"), &s), 0);
    assert_int_equal(s.st_mode & 07777, 02750);
    assert_int_equal(s.st_mtime, T1);
    assert_int_equal(lstat(at("out/tree/empty"), &s), 0);
    assert_int_equal(s.st_mode & 07777, 0700);
    assert_int_equal(s.st_mtime, T1 - 100);
    assert_int_equal(lstat(at("out/tree/fifo"), &s), -1);
    assert_int_equal(lstat(at("out/tree/null"), &s), -1);
    /* a sparse file: the right size, holes where the zeros were */
    assert_int_equal(lstat(at("out/tree/sparse"), &s), 0);
    assert_int_equal(s.st_size, 3 * 1024 * 1024 + 17);
    assert_true(s.st_blocks * 512 < 1024 * 1024);
    /* a file of several chunks: the bytes */
    int fd = open(at("out/tree/big"), O_RDONLY);
    assert_true(fd >= 0);
    char b[16];
    assert_int_equal(pread(fd, b, 16, 2 * 1024 * 1024 - 11), 16);
    close(fd);
    assert_memory_equal(b, "56789abcdef01234", 16);
    assert_int_equal(st.skipped, 2);
    assert_true(fs.notes >= 5); /* "..", "a/../../b", "", fifo, null, suid */
}

/* A target that already holds a link where a file goes: with --force the
 * link is removed, the file written in its place, the link's target
 * untouched. */
static void replaces_planted_link(void **state)
{
    (void)state;
    static const node one[] = {{"/", "f", S_IFREG | 0644, 0, 0, T1, "new\n", 0}};
    memfs fs = {.n = one, .count = 1};
    files_src src = src_of(&fs);
    char victim[512];
    snprintf(victim, sizeof(victim), "%s", at("victim"));
    FILE *v = fopen(victim, "w");
    fputs("keep\n", v);
    fclose(v);
    mkdir(at("dst"), 0755);
    assert_int_equal(symlink(victim, at("dst/f")), 0);
    const char *paths[] = {"/f"};
    vmsh_files_get_options go = {.to_dir = at("dst"), .tar_fd = -1};
    vmsh_files_stats st;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_files_check_target(&go, paths, 1, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;
    go.force = true;
    assert_int_equal(files_tree_get(&src, paths, 1, &go, &st, &err), 0);
    struct stat s;
    assert_int_equal(lstat(at("dst/f"), &s), 0);
    assert_true(S_ISREG(s.st_mode));
    char buf[16] = {0};
    v = fopen(victim, "r");
    assert_non_null(fgets(buf, sizeof(buf), v));
    fclose(v);
    assert_string_equal(buf, "keep\n");
}

/* Copies the whole tree of `fs` into a new directory `dst` (under the
 * test's directory) and returns files_tree_get's result; its error freed,
 * its counts in *st. */
static int get_all_into(memfs *fs, const char *dst, vmsh_files_stats *st)
{
    files_src src = src_of(fs);
    mkdir(at(dst), 0755);
    const char *paths[] = {"/"};
    vmsh_files_get_options go = {.to_dir = at(dst), .tar_fd = -1};
    *st = (vmsh_files_stats){0};
    vmsh_error *err = NULL;
    int r = files_tree_get(&src, paths, 1, &go, st, &err);
    vmsh_error_free(err);
    return r;
}

/* A copy that fails in the middle of a file (as a SIGKILL would stop it)
 * leaves nothing under the file's name: copies are written nameless and
 * linked once complete (issue 23). The old code left the first MiB under
 * the final name. */
static void no_partial_file(void **state)
{
    (void)state;
    static const node big[] = {{"/", "big", S_IFREG | 0644, 0, 0, T1, "abc", 3u << 20},
                               {"/", "a-small", S_IFREG | 0644, 0, 0, T1, "small\n", 0}};
    memfs fs = {.n = big, .count = 2, .fail_at = 1u << 20};
    vmsh_files_stats st;
    assert_int_equal(get_all_into(&fs, "dst", &st), -EIO);
    assert_true(fs.reads >= 2); /* it failed after a first chunk was written */
    struct stat s;
    assert_int_equal(lstat(at("dst/a-small"), &s), 0); /* complete: named */
    assert_int_equal(st.files, 1);
    assert_int_equal(lstat(at("dst/big"), &s), -1); /* not: nowhere */
    assert_int_equal(count_entries(at("dst")), 1);
}

/* The fallback for a target filesystem without O_TMPFILE (forced through
 * the tests' seam): while a file is copied it exists only under a hidden
 * ".vmshadow-part-" name, never under its final one; once complete it is
 * renamed, identical, with its mode and times, and no hidden file is left;
 * a copy that fails leaves neither. */
static void no_tmpfile_fallback(void **state)
{
    (void)state;
    static const node big[] = {{"/", "big", S_IFREG | 0640, 0, 0, T1, "abcdefg", 5u << 20},
                               {"/", "a-small", S_IFREG | 0644, 0, 0, T1, "small\n", 0}};
    files_tree_no_tmpfile = true;
    memfs fs = {.n = big, .count = 2, .watch_dir = at("dst"), .watch_name = "big"};
    vmsh_files_stats st;
    assert_int_equal(get_all_into(&fs, "dst", &st), 0);
    assert_int_equal(st.files, 2);
    assert_true(fs.watched >= 2);              /* looked at in the middle of big */
    assert_true(fs.seen_hidden >= fs.watched); /* a hidden partial each time */
    assert_int_equal(fs.seen_final, 0);        /* never the final name */
    /* complete: identical, with its mode and time; nothing hidden left */
    struct stat s;
    assert_int_equal(stat(at("dst/big"), &s), 0);
    assert_int_equal((int)s.st_size, 5 << 20);
    assert_int_equal(s.st_mode & 07777, 0640);
    assert_int_equal((long long)s.st_mtime, (long long)T1);
    FILE *f = fopen(at("dst/big"), "rb");
    assert_non_null(f);
    bool same = true;
    for (long i = 0; i < (5L << 20); i++)
        if (fgetc(f) != "abcdefg"[i % 7])
            same = false;
    assert_int_equal(fgetc(f), EOF);
    fclose(f);
    assert_true(same);
    assert_int_equal(count_entries(at("dst")), 2); /* big, a-small: nothing hidden */
    /* failing in the middle of big: neither its name nor a hidden file */
    memfs bad = {
        .n = big, .count = 2, .fail_at = 1u << 20, .watch_dir = at("dst2"), .watch_name = "big"};
    assert_int_equal(get_all_into(&bad, "dst2", &st), -EIO);
    assert_true(bad.seen_hidden >= 1 && bad.seen_final == 0);
    assert_int_equal(lstat(at("dst2/big"), &s), -1);
    assert_int_equal(count_entries(at("dst2")), 1); /* a-small only */
    files_tree_no_tmpfile = false;
}

static void target_checks(void **state)
{
    (void)state;
    static const node one[] = {{"/", "f", S_IFREG | 0644, 0, 0, T1, "x", 0}};
    memfs fs = {.n = one, .count = 1};
    files_src src = src_of(&fs);
    vmsh_error *err = NULL;
    vmsh_files_stats st;
    char *file = at("plain");
    FILE *f = fopen(file, "w");
    fclose(f);
    const char *p1[] = {"/f"};
    vmsh_files_get_options go = {.to_dir = file, .tar_fd = -1};
    assert_int_equal(vmsh_files_check_target(&go, p1, 1, &err), -EEXIST);
    assert_non_null(strstr(err->message, "not a directory"));
    vmsh_error_free(err);
    err = NULL;
    /* two paths with one name */
    const char *p2[] = {"/a/f", "/b/f"};
    go.to_dir = at("new");
    assert_int_equal(vmsh_files_check_target(&go, p2, 2, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    /* a path that is not there: nothing is made, not even the directory */
    const char *p3[] = {"/f", "/missing"};
    assert_int_equal(files_tree_get(&src, p3, 2, &go, &st, &err), -ENOENT);
    vmsh_error_free(err);
    err = NULL;
    struct stat s;
    assert_int_equal(stat(at("new"), &s), -1);
    /* / into a directory that is not empty needs --force */
    const char *p4[] = {"/"};
    go.to_dir = top;
    assert_int_equal(vmsh_files_check_target(&go, p4, 1, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;
    /* / into a new directory: its entries */
    go.to_dir = at("root");
    assert_int_equal(files_tree_get(&src, p4, 1, &go, &st, &err), 0);
    assert_int_equal(stat(at("root/f"), &s), 0);
    /* cancelled: stops with -ECANCELED */
    volatile sig_atomic_t stop = 1;
    go.to_dir = at("cancelled");
    go.cancel = &stop;
    assert_int_equal(files_tree_get(&src, p1, 1, &go, &st, &err), -ECANCELED);
    vmsh_error_free(err);
}

/* a chain of directories deeper than the limit: a note, not a crash */
static void deep_tree(void **state)
{
    (void)state;
    enum { DEPTH = 300 };
    static node deep[DEPTH];
    static char dirs[DEPTH][DEPTH * 2 + 2];
    strcpy(dirs[0], "/");
    for (int i = 0; i < DEPTH; i++) {
        if (i > 0) {
            strcpy(dirs[i], dirs[i - 1]);
            strcat(dirs[i], i > 1 ? "/d" : "d");
        }
        deep[i] = (node){dirs[i], "d", S_IFDIR | 0755, 0, 0, T1, NULL, 0};
    }
    memfs fs = {.n = deep, .count = DEPTH};
    files_src src = src_of(&fs);
    const char *p[] = {"/d"};
    vmsh_files_get_options go = {.to_dir = at("deep"), .tar_fd = -1};
    vmsh_files_stats st;
    vmsh_error *err = NULL;
    assert_int_equal(files_tree_get(&src, p, 1, &go, &st, &err), 0);
    assert_int_equal(st.skipped, 1);
    if (!strstr(fs.last_note, "deeper than"))
        fail_msg("last note: %s", fs.last_note);
}

typedef struct listing {
    char text[4096];
} listing;

static int collect(void *opaque, const vmsh_files_entry *e)
{
    listing *l = opaque;
    size_t n = strlen(l->text);
    snprintf(l->text + n, sizeof(l->text) - n, "%s%s;", e->path, e->target ? "@" : "");
    return 0;
}

static void list_order(void **state)
{
    (void)state;
    memfs fs = {.n = hostile, .count = sizeof(hostile) / sizeof(hostile[0])};
    files_src src = src_of(&fs);
    listing l = {{0}};
    assert_int_equal(files_tree_list(&src, "/tree", true, collect, &l, NULL), 0);
    assert_string_equal(l.text, "big;empty;fifo;hello.txt;null;out@;rel@;sparse;suid;twin@;twin;"
                                "twin/planted;");
    listing one = {{0}};
    assert_int_equal(files_tree_list(&src, "/tree/hello.txt", false, collect, &one, NULL), 0);
    assert_string_equal(one.text, "hello.txt;");
    vmsh_error *err = NULL;
    assert_int_equal(files_tree_list(&src, "/nope", false, collect, &one, &err), -ENOENT);
    vmsh_error_free(err);
}

/* ---- tar ----------------------------------------------------------------- */

static const node tarfs[] = {
    {"/", "t", S_IFDIR | 0755, 0, 0, T1, NULL, 0},
    {"/t", "a.txt", S_IFREG | 0644, 1000, 1000, T1, "alpha\n", 0},
    {"/t", "suid", S_IFREG | 04755, 0, 0, T1, "s", 0},
    {"/t", "link", S_IFLNK | 0777, 0, 0, T1, "a.txt", 0},
    {"/t", "fifo", S_IFIFO | 0644, 0, 0, T1, NULL, 0},
    {"/t", "big-owner", S_IFREG | 0600, 3000000000ll, 5, T1, "o", 0},
    {"/t",
     "a-name-longer-than-the-hundred-bytes-a-ustar-header-holds-so-that-it-goes-into-a-pax-"
     "extended-header.txt",
     S_IFREG | 0600, 0, 0, T1, "long\n", 0},
};

static char *tar_of(const node *n, size_t count, const char *path, size_t *len)
{
    memfs fs = {.n = n, .count = count};
    files_src src = src_of(&fs);
    char *file = at("stream.tar");
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    const char *p[] = {path};
    vmsh_files_get_options go = {.tar_fd = fd};
    vmsh_files_stats st;
    vmsh_error *err = NULL;
    int rc = files_tree_get(&src, p, 1, &go, &st, &err);
    if (rc)
        fail_msg("%s", err->message);
    off_t size = lseek(fd, 0, SEEK_END);
    char *buf = malloc((size_t)size);
    assert_int_equal(pread(fd, buf, (size_t)size, 0), size);
    close(fd);
    *len = (size_t)size;
    return buf;
}

static void tar_golden(void **state)
{
    (void)state;
    size_t len;
    char *buf = tar_of(tarfs, sizeof(tarfs) / sizeof(tarfs[0]), "/t", &len);
    assert_int_equal(len % 512, 0);
    /* every header's checksum */
    for (size_t off = 0; off + 512 <= len; off += 512) {
        const unsigned char *h = (const unsigned char *)buf + off;
        if (memcmp(h + 257, "ustar", 6) != 0)
            continue;
        unsigned sum = 0;
        for (int i = 0; i < 512; i++)
            sum += i >= 148 && i < 156 ? ' ' : h[i];
        assert_int_equal(strtoul((const char *)h + 148, NULL, 8), sum);
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/files-tar-v1.tar", getenv("VMSH_GOLDEN_DIR"));
    if (getenv("VMSH_UPDATE_GOLDEN")) {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
    }
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *g = malloc(len + 1);
    size_t glen = fread(g, 1, len + 1, f);
    fclose(f);
    assert_int_equal(glen, len);
    assert_memory_equal(g, buf, len);
    free(g);
    free(buf);
}

/* GNU tar reads the stream back: names (the long one through pax), the
 * link, the owner above ustar's range, the nanoseconds */
static void tar_reads_back(void **state)
{
    (void)state;
    if (system("tar --version >/dev/null 2>&1") != 0)
        skip();
    size_t len;
    char *buf = tar_of(tarfs, sizeof(tarfs) / sizeof(tarfs[0]), "/t", &len);
    free(buf);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && tar --numeric-owner -tvf stream.tar > listing.txt 2>&1 && "
             "grep -q '^-rw-r--r-- 1000/1000 *6 .* t/a.txt$' listing.txt && "
             "grep -q '^-rwxr-xr-x 0/0 .* t/suid$' listing.txt && "
             "grep -q '^lrwxrwxrwx 0/0 .* t/link -> a.txt$' listing.txt && "
             "grep -q '3000000000/5 .* t/big-owner$' listing.txt && "
             "grep -q 'extended-header.txt$' listing.txt && "
             "! grep -q fifo listing.txt && "
             "mkdir x && tar -C x -xf stream.tar && "
             "test \"$(stat -c %%y x/t/a.txt)\" = \"$(TZ=UTC0 date -d @1600000000 "
             "'+%%Y-%%m-%%d %%H:%%M:%%S').123456789 +0000\"",
             top);
    setenv("TZ", "UTC0", 1);
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(cmd, sizeof(cmd), "cat '%s/listing.txt' >&2", top);
        (void)system(cmd);
    }
    assert_int_equal(rc, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names),
        cmocka_unit_test_setup_teardown(copy_is_confined, setup, teardown),
        cmocka_unit_test_setup_teardown(replaces_planted_link, setup, teardown),
        cmocka_unit_test_setup_teardown(target_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(no_partial_file, setup, teardown),
        cmocka_unit_test_setup_teardown(no_tmpfile_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(deep_tree, setup, teardown),
        cmocka_unit_test(list_order),
        cmocka_unit_test_setup_teardown(tar_golden, setup, teardown),
        cmocka_unit_test_setup_teardown(tar_reads_back, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
