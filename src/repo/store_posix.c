/* store_posix.c - the repository in a local directory (store.h; the rules
 * are docs/formats/repository.md, "Stores").
 *
 * Whoever can write a repository must not be able to make vmshadow (root)
 * read, write, delete or wait on anything outside it (issue 20, point 6).
 * So every file and directory is reached from a descriptor of the root with
 * openat, one component at a time, never following a link (O_NOFOLLOW on
 * every component), opened non-blocking (a FIFO cannot hang an open), and
 * checked with fstat to be a regular file or a directory of the root's
 * owner before use. Writes keep the semantics the format relies on:
 * temporary name, fsync, rename, fsync of the directory. */
#include "store.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_MAX_LEN 512
#define MAX_DEPTH    4

static const char *const top_dirs[] = {"locks", "packs", "index", "backups"};
#define N_TOP 4

typedef struct posix_store {
    repo_store base;
    int rootfd;
    /* the top directories, opened and checked once (-1: absent then): each
     * operation walks from here, a dup instead of an openat and an fstat */
    int topfd[N_TOP];
    uid_t owner;
    bool any_owner; /* --allow-foreign-repo: files of any owner */
} posix_store;

struct repo_store_file {
    posix_store *s;
    int fd;
    int dirfd;   /* the writer's directory; -1 for readers */
    char *name;  /* relative */
    char *tmp;   /* the writer's temporary name in dirfd */
    char *final; /* the writer's final name in dirfd */
};

static char *display(const posix_store *s, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s%s%s", s->base.root, *name ? "/" : "", name) < 0)
        return NULL;
    return p;
}

static int failf(vmsh_error **err, const posix_store *s, const char *name, int rc, const char *what)
{
    _cleanup_free_ char *d = display(s, name);
    return vmsh_error_set(err, rc, "%s %s: %s", what, d ? d : name, strerror(-rc));
}

/* Why `comp` in dirfd cannot be used (it exists but is of the wrong kind). */
static int refuse(vmsh_error **err, const posix_store *s, int dirfd, const char *comp,
                  const char *name, bool want_dir)
{
    struct stat st;
    _cleanup_free_ char *d = display(s, name);
    const char *dn = d ? d : name;
    if (fstatat(dirfd, comp, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return vmsh_error_set(err, -errno, "cannot open %s: %s", dn, strerror(errno));
    const char *kind = S_ISLNK(st.st_mode)                          ? "a symbolic link"
                       : S_ISFIFO(st.st_mode)                       ? "a FIFO"
                       : S_ISSOCK(st.st_mode)                       ? "a socket"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                       : S_ISDIR(st.st_mode)                        ? "a directory"
                                                                    : "a regular file";
    return vmsh_error_set(err, S_ISLNK(st.st_mode) ? -ELOOP : -EINVAL,
                          "refusing %s: it is %s, not a %s of the repository (vmshadow never "
                          "follows links or opens special files in a repository)",
                          dn, kind, want_dir ? "directory" : "regular file");
}

/* The fstat check of an open descriptor: kind and owner. */
static int check_st(vmsh_error **err, const posix_store *s, const struct stat *st, const char *name,
                    bool want_dir)
{
    _cleanup_free_ char *d = NULL;
    if (want_dir ? !S_ISDIR(st->st_mode) : !S_ISREG(st->st_mode)) {
        d = display(s, name);
        return vmsh_error_set(err, -EINVAL,
                              "refusing %s: it is not a %s (vmshadow never opens special files "
                              "in a repository)",
                              d ? d : name, want_dir ? "directory" : "regular file");
    }
    if (!s->any_owner && st->st_uid != s->owner) {
        d = display(s, name);
        return vmsh_error_set(err, -EPERM,
                              "refusing %s: it belongs to uid %u, not to the repository's owner "
                              "(uid %u); someone else wrote into the repository (use "
                              "--allow-foreign-repo if you trust them)",
                              d ? d : name, (unsigned)st->st_uid, (unsigned)s->owner);
    }
    return 0;
}

static int check_fd(vmsh_error **err, const posix_store *s, int fd, const char *name, bool want_dir)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return failf(err, s, name, -errno, "cannot stat");
    return check_st(err, s, &st, name, want_dir);
}

static bool valid_name(const char *name, bool allow_empty)
{
    size_t n = strlen(name);
    if (n == 0)
        return allow_empty;
    if (n > NAME_MAX_LEN || name[0] == '/' || name[n - 1] == '/')
        return false;
    char buf[NAME_MAX_LEN + 1];
    memcpy(buf, name, n + 1);
    int depth = 0;
    for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!vmsh_name_is_safe(c) || ++depth > MAX_DEPTH)
            return false;
    }
    return strstr(name, "//") == NULL;
}

static int bad_name(vmsh_error **err, const char *name)
{
    return vmsh_error_set(err, -EINVAL, "invalid repository file name \"%s\"", name);
}

static int walk_dir(posix_store *s, const char *dir, bool create, bool *borrowed, vmsh_error **err)
{
    if (!valid_name(dir, true))
        return bad_name(err, dir);
    int cur = s->rootfd;
    bool owned = false;
    const char *rest = dir;
    size_t done = 0;
    for (size_t i = 0; i < N_TOP; i++) {
        size_t n = strlen(top_dirs[i]);
        if (s->topfd[i] >= 0 && strncmp(dir, top_dirs[i], n) == 0 &&
            (dir[n] == '\0' || dir[n] == '/')) {
            cur = s->topfd[i];
            rest = dir[n] ? dir + n + 1 : dir + n;
            done = n;
            break;
        }
    }
    char buf[NAME_MAX_LEN + 1];
    snprintf(buf, sizeof(buf), "%s", rest);
    for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        /* the name so far, for messages */
        char sofar[NAME_MAX_LEN + 1];
        done += strlen(c) + (done ? 1 : 0);
        snprintf(sofar, sizeof(sofar), "%.*s", (int)done, dir);
        int fd = openat(cur, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && create) {
            if (mkdirat(cur, c, 0700) < 0 && errno != EEXIST) {
                int e = -errno;
                if (owned)
                    close(cur);
                return failf(err, s, sofar, e, "cannot create directory");
            }
            fd = openat(cur, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        }
        if (fd < 0) {
            int e = errno, rc;
            if (e == ELOOP || e == ENOTDIR)
                rc = refuse(err, s, cur, c, sofar, true);
            else
                rc = failf(err, s, sofar, -e, "cannot open directory");
            if (owned)
                close(cur);
            return rc;
        }
        if (owned)
            close(cur);
        cur = fd;
        owned = true;
        int rc = check_fd(err, s, cur, sofar, true);
        if (rc < 0) {
            close(cur);
            return rc;
        }
    }
    if (!owned && !borrowed) {
        /* a description of its own (a dup would share the listing offset) */
        cur = openat(cur, ".", O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC);
        if (cur < 0)
            return failf(err, s, dir, -errno, "cannot open directory");
        owned = true;
    }
    if (borrowed)
        *borrowed = !owned;
    return cur;
}

/* Opens directory `dir` (relative, "" for the root) component by component
 * without following links, from the root or the top directory's descriptor;
 * with `create` missing components are made (0700). Returns a descriptor
 * the caller closes, or -errno. */
static int open_dir(posix_store *s, const char *dir, bool create, vmsh_error **err)
{
    return walk_dir(s, dir, create, NULL, err);
}

/* The same for a short use: the root's or a top directory's own descriptor
 * when `dir` is one of them (*borrowed: do not close it), saving a syscall
 * per object read. */
typedef struct dir_ref {
    int fd;
    bool borrowed;
} dir_ref;

static void dir_ref_close(dir_ref *d)
{
    if (d->fd >= 0 && !d->borrowed)
        close(d->fd);
}
#define _cleanup_dir_ __attribute__((cleanup(dir_ref_close)))

static int ref_dir(posix_store *s, const char *dir, dir_ref *out, vmsh_error **err)
{
    out->fd = walk_dir(s, dir, false, &out->borrowed, err);
    return out->fd;
}

/* Splits name into its directory ("" for the root) and last component. */
static int split(const char *name, char dir[NAME_MAX_LEN + 1], const char **base, vmsh_error **err)
{
    if (!valid_name(name, false))
        return bad_name(err, name);
    const char *slash = strrchr(name, '/');
    if (!slash) {
        dir[0] = 0;
        *base = name;
    } else {
        snprintf(dir, NAME_MAX_LEN + 1, "%.*s", (int)(slash - name), name);
        *base = slash + 1;
    }
    return 0;
}

/* Opens regular file `name` for reading: no link followed, a FIFO does not
 * block the open, then fstat says it is a regular file of the owner and the
 * descriptor becomes blocking again. */
static int open_reg(posix_store *s, const char *name, int extra, struct stat *st_out,
                    vmsh_error **err)
{
    char dir[NAME_MAX_LEN + 1];
    const char *base;
    int rc = split(name, dir, &base, err);
    if (rc < 0)
        return rc;
    _cleanup_dir_ dir_ref dr = {-1, false};
    if (ref_dir(s, dir, &dr, err) < 0)
        return dr.fd;
    int dfd = dr.fd;
    _cleanup_close_ int fd =
        openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | extra);
    if (fd < 0) {
        if (errno == ELOOP)
            return refuse(err, s, dfd, base, name, false);
        if (errno == EINVAL && (extra & O_DIRECT))
            return -EINVAL; /* no O_DIRECT here: the caller reads buffered */
        return failf(err, s, name, -errno, "cannot open");
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return failf(err, s, name, -errno, "cannot stat");
    if ((rc = check_st(err, s, &st, name, false)) < 0)
        return rc;
    /* blocking again: F_SETFL sets exactly the status flags given */
    if (fcntl(fd, F_SETFL, extra & O_DIRECT) < 0)
        return failf(err, s, name, -errno, "cannot open");
    if (st_out)
        *st_out = st;
    return VMSH_TAKE_FD(fd);
}

/* ---- ops ---- */

static int p_put(repo_store *st, const char *name, const void *buf, size_t len, vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    char dir[NAME_MAX_LEN + 1], tmp[NAME_MAX_LEN + 32];
    const char *base;
    int rc = split(name, dir, &base, err);
    if (rc < 0)
        return rc;
    _cleanup_close_ int dfd = open_dir(s, dir, true, err);
    if (dfd < 0)
        return dfd;
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", base, (long)getpid());
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        _cleanup_free_ char *d = display(s, name);
        return vmsh_error_set(err, -errno, "cannot create %s.tmp.%ld: %s", d ? d : name,
                              (long)getpid(), strerror(errno));
    }
    int r = vmsh_fs_write_all(fd, buf, len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && renameat(dfd, tmp, dfd, base) < 0)
        r = -errno;
    if (r < 0) {
        unlinkat(dfd, tmp, 0);
        _cleanup_free_ char *d = display(s, name);
        return vmsh_error_set(err, r, "cannot write %s: %s%s", d ? d : name, strerror(-r),
                              r == -ENOSPC ? " (free space on that filesystem and retry)" : "");
    }
    if (fsync(dfd) < 0)
        return failf(err, s, dir, -errno, "cannot fsync directory");
    return 0;
}

static int p_get(repo_store *st, const char *name, size_t max, char **out, size_t *out_len,
                 vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    struct stat sb;
    _cleanup_close_ int fd = open_reg(s, name, 0, &sb, err);
    if (fd < 0)
        return fd;
    _cleanup_free_ char *d = display(s, name);
    return vmsh_fs_read_fd(fd, (uint64_t)sb.st_size, max, d ? d : name, out, out_len, err);
}

/* The prologue of stat and delete: `name`'s directory (held in *dr, which
 * the caller releases) and its entry, found without following a link.
 * `what` names the operation in the message when the entry is missing. */
static int entry_at(posix_store *s, const char *name, dir_ref *dr, const char **base,
                    struct stat *sb, const char *what, vmsh_error **err)
{
    char dir[NAME_MAX_LEN + 1];
    int rc = split(name, dir, base, err);
    if (rc < 0)
        return rc;
    if (ref_dir(s, dir, dr, err) < 0)
        return dr->fd;
    if (fstatat(dr->fd, *base, sb, AT_SYMLINK_NOFOLLOW) < 0)
        return failf(err, s, name, -errno, what);
    return 0;
}

static int p_stat(repo_store *st, const char *name, repo_store_stat *out, vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    _cleanup_dir_ dir_ref dr = {-1, false};
    const char *base;
    struct stat sb;
    int rc = entry_at(s, name, &dr, &base, &sb, "cannot stat", err);
    if (rc < 0)
        return rc;
    if (S_ISLNK(sb.st_mode))
        return refuse(err, s, dr.fd, base, name, false);
    if ((rc = check_st(err, s, &sb, name, false)) < 0)
        return rc;
    if (out) {
        out->size = (uint64_t)sb.st_size;
        out->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    }
    return 0;
}

static int p_del(repo_store *st, const char *name, vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    _cleanup_dir_ dir_ref dr = {-1, false};
    const char *base;
    struct stat sb;
    int rc = entry_at(s, name, &dr, &base, &sb, "cannot delete", err);
    if (rc < 0)
        return rc;
    if (!S_ISREG(sb.st_mode))
        return refuse(err, s, dr.fd, base, name, false);
    if (unlinkat(dr.fd, base, 0) < 0)
        return failf(err, s, name, -errno, "cannot delete");
    return 0;
}

static int p_list(repo_store *st, const char *dirname, unsigned flags, repo_store_list_fn fn,
                  void *opaque, vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    int dfd = open_dir(s, dirname, false, err);
    if (dfd < 0)
        return dfd;
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = -errno;
        close(dfd);
        return failf(err, s, dirname, e, "cannot read");
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct stat sb;
        repo_store_stat rs = {0};
        repo_store_kind kind = REPO_STORE_OTHER;
        if (!(flags & REPO_STORE_LIST_STAT) && de->d_type != DT_UNKNOWN) {
            /* names only: the type is enough; what is opened is checked */
            kind = de->d_type == DT_REG   ? REPO_STORE_REG
                   : de->d_type == DT_DIR ? REPO_STORE_DIR
                                          : REPO_STORE_OTHER;
        } else if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
            if ((S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)) &&
                (s->any_owner || sb.st_uid == s->owner))
                kind = S_ISREG(sb.st_mode) ? REPO_STORE_REG : REPO_STORE_DIR;
            rs.size = (uint64_t)sb.st_size;
            rs.mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        } else if (errno == ENOENT) {
            continue; /* deleted meanwhile */
        }
        rc = fn(opaque, de->d_name, kind, &rs);
    }
    closedir(d);
    return rc;
}

static int p_sync(repo_store *st, const char *dir, vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    _cleanup_dir_ dir_ref dr = {-1, false};
    if (ref_dir(s, dir, &dr, err) < 0)
        return dr.fd;
    int dfd = dr.fd;
    if (fsync(dfd) < 0)
        return failf(err, s, dir, -errno, "cannot fsync directory");
    return 0;
}

static int p_mkdir(repo_store *st, const char *dir, vmsh_error **err)
{
    int dfd = open_dir((posix_store *)st, dir, true, err);
    if (dfd < 0)
        return dfd;
    close(dfd);
    return 0;
}

static repo_store_file *file_new(posix_store *s, const char *name)
{
    repo_store_file *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->s = s;
    f->fd = f->dirfd = -1;
    f->name = strdup(name);
    if (!f->name) {
        free(f);
        return NULL;
    }
    return f;
}

static void p_close(repo_store_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (f->dirfd >= 0)
        close(f->dirfd);
    free(f->name);
    free(f->tmp);
    free(f->final);
    free(f);
}

static int p_open(repo_store *st, const char *name, unsigned flags, repo_store_file **out,
                  vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    int fd = open_reg(s, name, flags & REPO_STORE_DIRECT ? O_DIRECT : 0, NULL, err);
    if (fd < 0)
        return fd;
    repo_store_file *f = file_new(s, name);
    if (!f) {
        close(fd);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    f->fd = fd;
    *out = f;
    return 0;
}

static int64_t p_pread(repo_store_file *f, void *buf, size_t len, uint64_t off)
{
    for (;;) {
        ssize_t n = pread(f->fd, buf, len, (off_t)off);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static int64_t p_pwrite(repo_store_file *f, const void *buf, size_t len, uint64_t off)
{
    for (;;) {
        ssize_t n = pwrite(f->fd, buf, len, (off_t)off);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static int p_fstat(repo_store_file *f, repo_store_stat *out)
{
    struct stat sb;
    if (fstat(f->fd, &sb) < 0)
        return -errno;
    out->size = (uint64_t)sb.st_size;
    out->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    return 0;
}

static int p_create(repo_store *st, const char *name, unsigned flags, repo_store_file **out,
                    vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    char dir[NAME_MAX_LEN + 1];
    const char *base;
    int rc = split(name, dir, &base, err);
    if (rc < 0)
        return rc;
    repo_store_file *f = file_new(s, name);
    if (f && asprintf(&f->tmp, "%s.tmp.%ld", base, (long)getpid()) < 0)
        f->tmp = NULL;
    if (!f || !f->tmp || !(f->final = strdup(base))) {
        p_close(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    f->dirfd = open_dir(s, dir, true, err);
    if (f->dirfd < 0) {
        rc = f->dirfd;
        f->dirfd = -1;
        p_close(f);
        return rc;
    }
    f->fd = openat(f->dirfd, f->tmp,
                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
                       (flags & REPO_STORE_DIRECT ? O_DIRECT : 0),
                   0600);
    if (f->fd < 0) {
        int e = errno;
        if (e == EINVAL && (flags & REPO_STORE_DIRECT)) {
            p_close(f);
            return -EINVAL; /* tmpfs and some others refuse O_DIRECT */
        }
        _cleanup_free_ char *d = display(s, name);
        vmsh_error_set(err, -e, "cannot create %s.tmp.%ld: %s", d ? d : name, (long)getpid(),
                       strerror(e));
        p_close(f);
        return -e;
    }
    *out = f;
    return 0;
}

static int p_commit(repo_store_file *f, uint64_t size, vmsh_error **err)
{
    posix_store *s = f->s;
    int r = 0;
    const char *what = "size";
    if (ftruncate(f->fd, (off_t)size) < 0)
        r = -errno;
    if (r == 0 && (what = "fsync", fsync(f->fd) < 0))
        r = -errno;
    if (r == 0 && (what = "rename", renameat(f->dirfd, f->tmp, f->dirfd, f->final) < 0))
        r = -errno;
    if (r == 0 && (what = "fsync the directory of", fsync(f->dirfd) < 0))
        r = -errno;
    if (r < 0) {
        _cleanup_free_ char *d = display(s, f->name);
        vmsh_error_set(err, r, "cannot %s %s: %s", what, d ? d : f->name, strerror(-r));
        unlinkat(f->dirfd, f->tmp, 0);
        p_close(f);
        return r;
    }
    /* a new fan-out directory is durable in its parent too */
    char dir[NAME_MAX_LEN + 1];
    snprintf(dir, sizeof(dir), "%s", f->name);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            r = p_sync(&s->base, dir, err);
        }
    }
    p_close(f);
    return r;
}

static void p_abort(repo_store_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    if (f->dirfd >= 0 && f->tmp)
        unlinkat(f->dirfd, f->tmp, 0);
    p_close(f);
}

static int p_lock(repo_store *st, const char *which, bool exclusive, vmsh_lock **out,
                  vmsh_error **err)
{
    posix_store *s = (posix_store *)st;
    char name[64];
    snprintf(name, sizeof(name), "locks/%s", which);
    if (!valid_name(name, false))
        return bad_name(err, name);
    *out = NULL;
    vmsh_error *e = NULL;
    int dfd = open_dir(s, "locks", true, &e);
    if (dfd < 0) {
        if (!exclusive && (dfd == -EROFS || dfd == -EACCES)) {
            vmsh_error_free(e); /* a read-only repository without locks/: no lock */
            return 0;
        }
        vmsh_error_propagate(err, &e);
        return dfd;
    }
    const int fl = O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    int fd = openat(dfd, which, O_RDWR | fl);
    if (fd < 0 && !exclusive && (errno == EROFS || errno == EACCES))
        fd = openat(dfd, which, O_RDONLY | fl); /* flock works on a read-only descriptor */
    if (fd < 0 && errno == ENOENT) {
        fd = openat(dfd, which, O_RDWR | O_CREAT | O_EXCL | fl, 0600);
        if (fd < 0 && errno == EEXIST)
            fd = openat(dfd, which, O_RDWR | fl);
        if (fd < 0 && !exclusive && (errno == EROFS || errno == EACCES)) {
            /* docs/formats/repository.md, "Concurrency and locks": a reader of
             * a repository it cannot write takes no lock */
            close(dfd);
            return 0;
        }
    }
    if (fd < 0) {
        int rc = errno == ELOOP ? refuse(err, s, dfd, which, name, false)
                                : failf(err, s, name, -errno, "cannot open lock file");
        close(dfd);
        return rc;
    }
    close(dfd);
    int rc = check_fd(err, s, fd, name, false);
    int f2 = rc == 0 ? fcntl(fd, F_GETFL) : -1;
    if (rc == 0 && (f2 < 0 || fcntl(fd, F_SETFL, f2 & ~O_NONBLOCK) < 0))
        rc = failf(err, s, name, -errno, "cannot open lock file");
    if (rc < 0) {
        close(fd);
        return rc;
    }
    char what[64];
    snprintf(what, sizeof(what), "the repository (%s lock)", which);
    _cleanup_free_ char *d = display(s, name);
    return vmsh_lock_take_fd(out, fd, d ? d : name, exclusive, false, what, err);
}

static void p_free(repo_store *st)
{
    posix_store *s = (posix_store *)st;
    if (s->rootfd >= 0)
        close(s->rootfd);
    for (size_t i = 0; i < N_TOP; i++)
        if (s->topfd[i] >= 0)
            close(s->topfd[i]);
    free(s->base.root);
    free(s);
}

static const repo_store_ops posix_ops = {
    .version = REPO_STORE_OPS_VERSION,
    .put = p_put,
    .get = p_get,
    .stat = p_stat,
    .del = p_del,
    .list = p_list,
    .sync = p_sync,
    .mkdir = p_mkdir,
    .open_file = p_open,
    .pread = p_pread,
    .fstat = p_fstat,
    .close = p_close,
    .create = p_create,
    .pwrite = p_pwrite,
    .commit = p_commit,
    .abort = p_abort,
    .lock = p_lock,
    .free = p_free,
};

/* Others who can write the root or its top directories can plant what the
 * checks above refuse one file at a time, and more (swap whole trees while
 * vmshadow reads): such a repository is refused as a whole unless the user
 * says they trust it. */
static int check_writers(posix_store *s, vmsh_error **err)
{
    static const char *const top[] = {"", "locks", "packs", "index", "backups"}; /* top_dirs */
    uid_t me = geteuid();
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(top); i++) {
        struct stat sb;
        int r =
            *top[i] ? fstatat(s->rootfd, top[i], &sb, AT_SYMLINK_NOFOLLOW) : fstat(s->rootfd, &sb);
        if (r < 0 && errno == ENOENT)
            continue;
        _cleanup_free_ char *d = display(s, top[i]);
        const char *dn = d ? d : top[i];
        if (r < 0)
            return vmsh_error_set(err, -errno, "cannot stat %s: %s", dn, strerror(errno));
        if (!S_ISDIR(sb.st_mode))
            return vmsh_error_set(err, S_ISLNK(sb.st_mode) ? -ELOOP : -EINVAL,
                                  "refusing repository %s: %s is %s, not a directory (vmshadow "
                                  "never follows links in a repository)",
                                  s->base.root, dn,
                                  S_ISLNK(sb.st_mode) ? "a symbolic link" : "not a directory");
        if (s->any_owner)
            continue;
        if (sb.st_uid != me)
            return vmsh_error_set(err, -EPERM,
                                  "refusing repository %s: %s belongs to uid %u, not to you "
                                  "(uid %u); whoever owns it can make vmshadow read or delete "
                                  "what they choose. Pass --allow-foreign-repo if you trust "
                                  "them",
                                  s->base.root, dn, (unsigned)sb.st_uid, (unsigned)me);
        if (sb.st_mode & (S_IWGRP | S_IWOTH))
            return vmsh_error_set(err, -EPERM,
                                  "refusing repository %s: %s is writable by %s (mode %04o); "
                                  "others could plant links or files in it. Make it 0700 "
                                  "(chmod go-w) or pass --allow-foreign-repo if you trust them",
                                  s->base.root, dn, sb.st_mode & S_IWOTH ? "everyone" : "its group",
                                  (unsigned)(sb.st_mode & 07777));
    }
    return 0;
}

int repo_store_posix_open(repo_store **out, const char *root, unsigned flags, vmsh_error **err)
{
    if (!root || !*root)
        return vmsh_error_set(err, -EINVAL, "no repository path given");
    struct stat sb;
    if ((flags & REPO_STORE_CREATE) && stat(root, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return vmsh_error_set(err, -EEXIST, "%s exists and is not a directory", root);
    posix_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->base.root = strdup(root))) {
        free(s);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->base.ops = &posix_ops;
    s->rootfd = -1;
    for (size_t i = 0; i < N_TOP; i++)
        s->topfd[i] = -1;
    s->any_owner = flags & REPO_STORE_ALLOW_FOREIGN;
    /* the root itself is the user's choice: links in its path are followed */
    if (flags & REPO_STORE_CREATE) {
        int r = vmsh_fs_mkdir_p(root, 0700, err);
        if (r < 0) {
            p_free(&s->base);
            return r;
        }
    }
    s->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC);
    if (s->rootfd < 0) {
        int e = errno;
        p_free(&s->base);
        if (e == ENOENT)
            return -ENOENT; /* the caller says "no repository" */
        return vmsh_error_set(err, -e, "cannot open repository %s: %s", root, strerror(e));
    }
    if (fstat(s->rootfd, &sb) < 0) {
        int e = errno;
        p_free(&s->base);
        return vmsh_error_set(err, -e, "cannot stat %s: %s", root, strerror(e));
    }
    s->owner = sb.st_uid;
    int rc = check_writers(s, err);
    if (rc < 0) {
        p_free(&s->base);
        return rc;
    }
    for (size_t i = 0; i < N_TOP; i++) {
        int fd = openat(s->rootfd, top_dirs[i],
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0 && check_fd(NULL, s, fd, top_dirs[i], true) < 0) {
            close(fd); /* each operation walks and reports it */
            fd = -1;
        }
        s->topfd[i] = fd;
    }
    *out = &s->base;
    return 0;
}
