/* files_tree.c - the pure half of file-level restore (issue 23 point 4;
 * files_priv.h): listing a guest filesystem, copying trees beneath a
 * directory, writing tar streams. Everything read from the source is
 * hostile (docs/reliability.md, "Untrusted filesystems"): names are
 * checked before use, every file is created with openat beneath a
 * directory descriptor this code opened itself (O_NOFOLLOW, O_EXCL),
 * symbolic links are re-created from their target text and never
 * followed, device nodes and FIFOs are never created. */
#include "requestor/files_priv.h"

#include <vmshadow/util/mem.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* a tree deeper than this is a damaged or hostile filesystem (Linux paths
 * end at 4096 bytes: at most 2048 levels); each level holds a directory
 * descriptor while it is copied */
#define MAX_DEPTH 256
#define CHUNK     (1024 * 1024)

void files_entries_free(vmsh_files_entry *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++) {
        free((char *)e[i].path);
        free((char *)e[i].target);
    }
    free(e);
}

bool files_name_ok(const char *name)
{
    size_t len = strlen(name);
    return len > 0 && len <= 255 && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
           !strchr(name, '/');
}

char *files_join(const char *dir, const char *name)
{
    char *p = NULL;
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    return asprintf(&p, "%s%s%s", dir, slash ? "" : "/", name) < 0 ? NULL : p;
}

int files_basename(const char *path, char **out, vmsh_error **err)
{
    *out = NULL;
    if (path[0] != '/')
        return vmsh_error_set(err, -EINVAL, "%s: a path in the guest starts with /", path);
    size_t end = strlen(path);
    while (end > 1 && path[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    char *b = strndup(path + start, end - start);
    if (!b)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (strcmp(b, ".") == 0 || strcmp(b, "..") == 0) {
        free(b);
        return vmsh_error_set(err, -EINVAL, "%s: name the file or directory itself, not . or ..",
                              path);
    }
    *out = b;
    return 0;
}

static void note(const files_src *src, const char *path, const char *why)
{
    if (src->note)
        src->note(src->note_opaque, path, why);
}

static int cmp_path(const void *a, const void *b)
{
    const vmsh_files_entry *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    /* two entries of one name (a damaged filesystem): the directory last,
     * whatever qsort does, so that what is copied is deterministic */
    return c ? c : (int)S_ISDIR(x->mode) - (int)S_ISDIR(y->mode);
}

/* The valid entries of `dir`, sorted by name; the others are notes. */
static int read_dir(const files_src *src, const char *dir, vmsh_files_entry **out, size_t *n_out,
                    vmsh_error **err)
{
    vmsh_files_entry *e = NULL;
    size_t n = 0;
    int rc = src->ops->list(src->opaque, dir, &e, &n, err);
    if (rc < 0)
        return rc;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!files_name_ok(e[i].path)) {
            /* the bare name, not joined: it may hold "/" */
            _cleanup_free_ char *why = NULL;
            if (asprintf(&why,
                         "an entry of this directory has the name \"%s\", which no file may "
                         "have (a damaged filesystem): skipped",
                         e[i].path) < 0)
                why = NULL;
            note(src, dir, why ? why : "an entry with an invalid name: skipped");
            free((char *)e[i].path);
            free((char *)e[i].target);
            continue;
        }
        e[k++] = e[i];
    }
    if (k)
        qsort(e, k, sizeof(*e), cmp_path);
    *out = e;
    *n_out = k;
    return 0;
}

static int list_dir(const files_src *src, const char *dir, const char *rel, bool recursive,
                    int depth, vmsh_files_entry_fn cb, void *opaque, vmsh_error **err)
{
    if (depth >= MAX_DEPTH) {
        note(src, dir, "deeper than 256 directories: not listed");
        return 0;
    }
    vmsh_files_entry *e = NULL;
    size_t n = 0;
    int rc = read_dir(src, dir, &e, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        _cleanup_free_ char *r = rel ? files_join(rel, e[i].path) : strdup(e[i].path);
        _cleanup_free_ char *g = files_join(dir, e[i].path);
        if (!r || !g) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        vmsh_files_entry x = e[i];
        x.path = r;
        rc = cb(opaque, &x);
        if (rc == 0 && recursive && S_ISDIR(e[i].mode))
            rc = list_dir(src, g, r, true, depth + 1, cb, opaque, err);
    }
    files_entries_free(e, n);
    return rc;
}

int files_tree_list(const files_src *src, const char *path, bool recursive, vmsh_files_entry_fn cb,
                    void *opaque, vmsh_error **err)
{
    _cleanup_free_ char *base = NULL;
    int rc = files_basename(path, &base, err);
    if (rc < 0)
        return rc;
    vmsh_files_entry e = {0};
    rc = src->ops->stat(src->opaque, path, &e, err);
    if (rc < 0)
        return rc;
    if (S_ISDIR(e.mode)) {
        rc = list_dir(src, path, NULL, recursive, 0, cb, opaque, err);
    } else {
        const char *p = e.path;
        e.path = base;
        rc = cb(opaque, &e);
        e.path = p;
    }
    free((char *)e.path);
    free((char *)e.target);
    return rc;
}

/* ---- copying beneath a directory ---------------------------------- */

typedef struct copy_ctx {
    const files_src *src;
    const vmsh_files_get_options *go;
    vmsh_files_stats *st;
    bool chown; /* running as root: owners are kept */
    char *buf;
} copy_ctx;

static bool cancelled(const copy_ctx *c)
{
    return c->go->cancel && *c->go->cancel;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static bool all_zero(const char *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* The permission bits a copy gets: set-user/group-ID bits of a file are
 * dropped unless asked for (a hostile backup could plant a set-user-ID
 * root program in the target directory). */
static uint32_t copy_perm(const copy_ctx *c, const char *gpath, const vmsh_files_entry *e)
{
    uint32_t perm = e->mode & 07777;
    if (S_ISREG(e->mode) && (perm & 06000) && !c->go->keep_setuid) {
        note(c->src, gpath, "set-user-ID/set-group-ID bit dropped (--keep-setuid keeps it)");
        perm &= ~06000u;
    }
    return perm;
}

static bool id_ok(int64_t id)
{
    return id >= 0 && id < (int64_t)UINT32_MAX;
}

static void times_of(const vmsh_files_entry *e, struct timespec ts[2])
{
    ts[0] = (struct timespec){(time_t)e->atime, (long)e->atime_nsec};
    ts[1] = (struct timespec){(time_t)e->mtime, (long)e->mtime_nsec};
    for (int i = 0; i < 2; i++)
        if (ts[i].tv_nsec < 0 || ts[i].tv_nsec > 999999999)
            ts[i].tv_nsec = 0;
}

/* Owner, permissions and times of a file or directory we hold open. */
static int apply_meta_fd(copy_ctx *c, int fd, const char *gpath, const vmsh_files_entry *e,
                         vmsh_error **err)
{
    if (c->chown) {
        if (!id_ok(e->uid) || !id_ok(e->gid))
            note(c->src, gpath, "owner out of range: left to the user running vmshadow");
        else if (fchown(fd, (uid_t)e->uid, (gid_t)e->gid) < 0)
            note(c->src, gpath, "cannot set the owner");
    }
    /* after fchown: it clears set-user-ID bits */
    if (fchmod(fd, copy_perm(c, gpath, e)) < 0)
        return vmsh_error_set(err, -errno, "cannot set the mode of the copy of %s: %s", gpath,
                              strerror(errno));
    struct timespec ts[2];
    times_of(e, ts);
    if (futimens(fd, ts) < 0)
        return vmsh_error_set(err, -errno, "cannot set the times of the copy of %s: %s", gpath,
                              strerror(errno));
    return 0;
}

/* Makes room for `name` in `dirfd`: nothing there, or (with --force) a
 * non-directory removed; *is_dir when a directory is there (a directory
 * copied over it merges into it). */
static int make_room(copy_ctx *c, int dirfd, const char *name, const char *gpath, bool want_dir,
                     bool *is_dir, vmsh_error **err)
{
    struct stat st;
    *is_dir = false;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0
                               : vmsh_error_set(err, -errno, "cannot look at the copy of %s: %s",
                                                gpath, strerror(errno));
    if (!c->go->force)
        return vmsh_error_set(err, -EEXIST,
                              "the copy of %s exists already; give --force to replace it", gpath);
    if (S_ISDIR(st.st_mode)) {
        if (want_dir) {
            *is_dir = true;
            return 0;
        }
        return vmsh_error_set(err, -EISDIR,
                              "a directory is where the copy of %s goes; not removing it", gpath);
    }
    if (unlinkat(dirfd, name, 0) < 0)
        return vmsh_error_set(err, -errno, "cannot replace the copy of %s: %s", gpath,
                              strerror(errno));
    return 0;
}

/* The entries of guest directory gdir at `depth` of a walk; none (noted,
 * counted as skipped) below MAX_DEPTH directories. */
static int dir_level(copy_ctx *c, const char *gdir, int depth, vmsh_files_entry **e, size_t *n,
                     vmsh_error **err)
{
    *e = NULL;
    *n = 0;
    if (depth >= MAX_DEPTH) {
        note(c->src, gdir, "deeper than 256 directories: not copied");
        c->st->skipped++;
        return 0;
    }
    return read_dir(c->src, gdir, e, n, err);
}

static int copy_tree(copy_ctx *c, int dirfd, const char *gdir, int depth, vmsh_error **err);

/* A copy is written nameless (O_TMPFILE) and linked under its name only
 * once complete, its owner, mode and times set: a copy interrupted in any
 * way, SIGKILL included, leaves no partial file under a final name (and,
 * with O_TMPFILE, nothing at all). Where the target's filesystem has no
 * O_TMPFILE the copy gets a hidden temporary name first, renamed when
 * complete; a kill then leaves that ".vmshadow-part-*" file (docs/cli.md). */
bool files_tree_no_tmpfile;

static int open_partial(int dirfd, char *tmp, size_t tmp_size)
{
    tmp[0] = 0;
    int fd = files_tree_no_tmpfile ? (errno = EOPNOTSUPP, -1)
                                   : openat(dirfd, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return -errno;
    static unsigned counter;
    for (int i = 0; i < 1000; i++) {
        /* O_EXCL: a guest file of that name (copied before) is never
         * overwritten, the next name is tried */
        snprintf(tmp, tmp_size, ".vmshadow-part-%ld-%u", (long)getpid(), counter++);
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            break;
    }
    int e = errno;
    tmp[0] = 0;
    return -e;
}

/* Gives the complete copy its name; never replaces what is there. */
static int publish(int dirfd, int fd, const char *tmp, const char *name)
{
    if (!tmp[0]) {
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        return linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
    }
    int rc = linkat(dirfd, tmp, dirfd, name, 0) < 0 ? -errno : 0;
    unlinkat(dirfd, tmp, 0);
    return rc;
}

static int copy_file(copy_ctx *c, int dirfd, const char *name, const char *gpath,
                     const vmsh_files_entry *e, vmsh_error **err)
{
    char tmp[64];
    int rc = open_partial(dirfd, tmp, sizeof(tmp));
    if (rc < 0)
        return vmsh_error_set(err, rc, "cannot create the copy of %s: %s", gpath, strerror(-rc));
    _cleanup_close_ int fd = rc;
    uint64_t off = 0;
    for (rc = 0; rc == 0;) {
        if (cancelled(c)) {
            rc = vmsh_error_set(err, -ECANCELED, "interrupted while copying %s", gpath);
            break;
        }
        size_t got = 0;
        if ((rc = c->src->ops->read(c->src->opaque, gpath, off, c->buf, CHUNK, &got, err)) < 0)
            break;
        if (got == 0)
            break;
        if (got > CHUNK) {
            rc = vmsh_error_set(err, -EIO, "reading %s returned more than asked", gpath);
            break;
        }
        /* a run of zeros stays a hole: a sparse guest file stays sparse */
        if (all_zero(c->buf, got)) {
            if (lseek(fd, (off_t)got, SEEK_CUR) < 0)
                rc = -errno;
        } else {
            rc = write_all(fd, c->buf, got);
        }
        if (rc < 0)
            rc = vmsh_error_set(err, rc, "cannot write the copy of %s: %s", gpath, strerror(-rc));
        off += got;
    }
    if (rc == 0 && ftruncate(fd, (off_t)off) < 0)
        rc = vmsh_error_set(err, -errno, "cannot write the copy of %s: %s", gpath, strerror(errno));
    if (rc == 0)
        rc = apply_meta_fd(c, fd, gpath, e, err);
    if (rc == 0 && (rc = publish(dirfd, fd, tmp, name)) < 0)
        rc = vmsh_error_set(err, rc, "cannot name the copy of %s: %s", gpath, strerror(-rc));
    else if (rc < 0 && tmp[0])
        unlinkat(dirfd, tmp, 0);
    if (rc < 0)
        return rc;
    c->st->files++;
    c->st->bytes += off;
    return 0;
}

static int copy_link(copy_ctx *c, int dirfd, const char *name, const char *gpath,
                     const vmsh_files_entry *e, vmsh_error **err)
{
    if (!e->target || !*e->target) {
        note(c->src, gpath, "symbolic link without a target: skipped");
        c->st->skipped++;
        return 0;
    }
    /* the target is text, written as it is: never resolved here */
    if (symlinkat(e->target, dirfd, name) < 0)
        return vmsh_error_set(err, -errno, "cannot create the link %s: %s", gpath, strerror(errno));
    if (c->chown && id_ok(e->uid) && id_ok(e->gid) &&
        fchownat(dirfd, name, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW) < 0)
        note(c->src, gpath, "cannot set the owner");
    struct timespec ts[2];
    times_of(e, ts);
    if (utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
        note(c->src, gpath, "cannot set the times");
    c->st->links++;
    return 0;
}

static int copy_dir(copy_ctx *c, int dirfd, const char *name, const char *gpath,
                    const vmsh_files_entry *e, bool exists, int depth, vmsh_error **err)
{
    if (!exists && mkdirat(dirfd, name, 0700) < 0)
        return vmsh_error_set(err, -errno, "cannot create the directory for %s: %s", gpath,
                              strerror(errno));
    _cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open the directory made for %s: %s", gpath,
                              strerror(errno));
    c->st->dirs++;
    int rc = copy_tree(c, fd, gpath, depth + 1, err);
    /* permissions last: a directory without write permission still gets
     * its entries */
    return rc < 0 ? rc : apply_meta_fd(c, fd, gpath, e, err);
}

static int copy_entry(copy_ctx *c, int dirfd, const char *name, const char *gpath,
                      const vmsh_files_entry *e, int depth, vmsh_error **err)
{
    if (cancelled(c))
        return vmsh_error_set(err, -ECANCELED, "interrupted before %s", gpath);
    const char *skip = S_ISCHR(e->mode)    ? "character device: skipped"
                       : S_ISBLK(e->mode)  ? "block device: skipped"
                       : S_ISFIFO(e->mode) ? "FIFO: skipped"
                       : S_ISSOCK(e->mode) ? "socket: skipped"
                       : !S_ISREG(e->mode) && !S_ISDIR(e->mode) && !S_ISLNK(e->mode)
                           ? "unknown file type: skipped"
                           : NULL;
    if (skip) {
        note(c->src, gpath, skip);
        c->st->skipped++;
        return 0;
    }
    bool exists = false;
    int rc = make_room(c, dirfd, name, gpath, S_ISDIR(e->mode), &exists, err);
    if (rc < 0)
        return rc;
    if (S_ISDIR(e->mode))
        return copy_dir(c, dirfd, name, gpath, e, exists, depth, err);
    if (S_ISLNK(e->mode))
        return copy_link(c, dirfd, name, gpath, e, err);
    return copy_file(c, dirfd, name, gpath, e, err);
}

static int copy_tree(copy_ctx *c, int dirfd, const char *gdir, int depth, vmsh_error **err)
{
    vmsh_files_entry *e = NULL;
    size_t n = 0;
    int rc = dir_level(c, gdir, depth, &e, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        _cleanup_free_ char *g = files_join(gdir, e[i].path);
        rc = g ? copy_entry(c, dirfd, e[i].path, g, &e[i], depth, err)
               : vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    files_entries_free(e, n);
    return rc;
}

/* ---- tar ----------------------------------------------------------- */

static bool octal(char *field, size_t width, uint64_t v)
{
    /* width - 1 digits and a NUL */
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%0*" PRIo64, (int)(width - 1), v);
    if (n < 0 || (size_t)n > width - 1)
        return false;
    memcpy(field, tmp, (size_t)n + 1);
    return true;
}

struct ustar {
    char name[100], mode[8], uid[8], gid[8], size[12], mtime[12], chksum[8], typeflag;
    char linkname[100], magic[6], version[2], uname[32], gname[32], devmajor[8], devminor[8];
    char prefix[155], pad[12];
};
_Static_assert(sizeof(struct ustar) == 512, "a tar header is one block");

static int put_header(int fd, const char *name, const char *link, char type, uint32_t perm,
                      int64_t uid, int64_t gid, uint64_t size, int64_t mtime, vmsh_error **err)
{
    struct ustar h;
    memset(&h, 0, sizeof(h));
    /* fields that do not fit were given in the pax header before: these
     * are what a reader without pax support sees */
    memcpy(h.name, name, strnlen(name, sizeof(h.name)));
    if (link)
        memcpy(h.linkname, link, strnlen(link, sizeof(h.linkname)));
    octal(h.mode, sizeof(h.mode), perm & 07777);
    if (!octal(h.uid, sizeof(h.uid), id_ok(uid) ? (uint64_t)uid : 0))
        octal(h.uid, sizeof(h.uid), 0);
    if (!octal(h.gid, sizeof(h.gid), id_ok(gid) ? (uint64_t)gid : 0))
        octal(h.gid, sizeof(h.gid), 0);
    if (!octal(h.size, sizeof(h.size), size))
        octal(h.size, sizeof(h.size), 0);
    if (!octal(h.mtime, sizeof(h.mtime), mtime > 0 ? (uint64_t)mtime : 0))
        octal(h.mtime, sizeof(h.mtime), 0);
    h.typeflag = type;
    memcpy(h.magic, "ustar", 6);
    memcpy(h.version, "00", 2);
    memset(h.chksum, ' ', sizeof(h.chksum));
    unsigned sum = 0;
    const unsigned char *p = (const unsigned char *)&h;
    for (size_t i = 0; i < sizeof(h); i++)
        sum += p[i];
    snprintf(h.chksum, sizeof(h.chksum), "%06o", sum & 0777777);
    h.chksum[7] = ' ';
    int rc = write_all(fd, &h, sizeof(h));
    return rc < 0 ? vmsh_error_set(err, rc, "cannot write the tar stream: %s", strerror(-rc)) : 0;
}

/* One pax record "LEN key=value\n", LEN counting itself. */
static int pax_add(char **buf, size_t *len, const char *key, const char *value)
{
    size_t body = strlen(key) + strlen(value) + 3; /* ' ', '=', '\n' */
    size_t n = body + 1, digits;
    for (;;) {
        digits = (size_t)snprintf(NULL, 0, "%zu", n);
        if (body + digits == n)
            break;
        n = body + digits;
    }
    char *nb = realloc(*buf, *len + n + 1);
    if (!nb)
        return -ENOMEM;
    snprintf(nb + *len, n + 1, "%zu %s=%s\n", n, key, value);
    *buf = nb;
    *len += n;
    return 0;
}

int files_tar_header(int fd, const char *name, const vmsh_files_entry *e, char type, uint32_t perm,
                     vmsh_error **err)
{
    uint64_t size = type == '0' ? e->size : 0;
    const char *link = type == '2' ? e->target : NULL;
    _cleanup_free_ char *pax = NULL;
    size_t plen = 0;
    char num[64];
    int rc = 0;
    if (strlen(name) > 100)
        rc = pax_add(&pax, &plen, "path", name);
    if (rc == 0 && link && strlen(link) > 100)
        rc = pax_add(&pax, &plen, "linkpath", link);
    if (rc == 0 && size > 077777777777ull) {
        snprintf(num, sizeof(num), "%" PRIu64, size);
        rc = pax_add(&pax, &plen, "size", num);
    }
    if (rc == 0 && (e->uid < 0 || e->uid > 07777777)) {
        snprintf(num, sizeof(num), "%" PRId64, e->uid);
        rc = pax_add(&pax, &plen, "uid", num);
    }
    if (rc == 0 && (e->gid < 0 || e->gid > 07777777)) {
        snprintf(num, sizeof(num), "%" PRId64, e->gid);
        rc = pax_add(&pax, &plen, "gid", num);
    }
    /* the nanoseconds too, so that a copy through tar keeps the exact
     * time as the copy to a directory does */
    if (rc == 0 && (e->mtime_nsec != 0 || e->mtime < 0 || e->mtime > 077777777777ll)) {
        int64_t ns = e->mtime_nsec >= 0 && e->mtime_nsec <= 999999999 ? e->mtime_nsec : 0;
        if (e->mtime < 0 && ns) /* -1.5 s is -2 s + 0.5 s */
            snprintf(num, sizeof(num), "-%" PRId64 ".%09" PRId64, -(e->mtime + 1), 1000000000 - ns);
        else
            snprintf(num, sizeof(num), "%" PRId64 ".%09" PRId64, e->mtime, ns);
        rc = pax_add(&pax, &plen, "mtime", num);
    }
    if (rc < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (pax) {
        /* the extended header's own name: informative only */
        char pname[101];
        const char *slash = strrchr(name, '/');
        const char *b = slash && slash[1] ? slash + 1 : name;
        snprintf(pname, sizeof(pname), "PaxHeaders/%.88s", b);
        rc = put_header(fd, pname, NULL, 'x', 0644, 0, 0, plen, e->mtime, err);
        if (rc == 0 && (rc = write_all(fd, pax, plen)) < 0)
            return vmsh_error_set(err, rc, "cannot write the tar stream: %s", strerror(-rc));
        if (rc == 0)
            rc = files_tar_pad(fd, plen, err);
        if (rc < 0)
            return rc;
    }
    return put_header(fd, name, link, type, perm, e->uid, e->gid, size, e->mtime, err);
}

int files_tar_pad(int fd, uint64_t size, vmsh_error **err)
{
    static const char zeros[512];
    size_t pad = (size_t)((512 - size % 512) % 512);
    int rc = pad ? write_all(fd, zeros, pad) : 0;
    return rc < 0 ? vmsh_error_set(err, rc, "cannot write the tar stream: %s", strerror(-rc)) : 0;
}

int files_tar_end(int fd, vmsh_error **err)
{
    static const char zeros[1024];
    int rc = write_all(fd, zeros, sizeof(zeros));
    return rc < 0 ? vmsh_error_set(err, rc, "cannot write the tar stream: %s", strerror(-rc)) : 0;
}

static int tar_tree(copy_ctx *c, const char *gdir, const char *aname, int depth, vmsh_error **err);

static int tar_entry(copy_ctx *c, const char *gpath, const char *aname, const vmsh_files_entry *e,
                     int depth, vmsh_error **err)
{
    if (cancelled(c))
        return vmsh_error_set(err, -ECANCELED, "interrupted before %s", gpath);
    int fd = c->go->tar_fd;
    if (S_ISDIR(e->mode)) {
        _cleanup_free_ char *dname = NULL;
        if (asprintf(&dname, "%s/", aname) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        int rc = files_tar_header(fd, dname, e, '5', copy_perm(c, gpath, e), err);
        if (rc < 0)
            return rc;
        c->st->dirs++;
        return tar_tree(c, gpath, aname, depth + 1, err);
    }
    if (S_ISLNK(e->mode)) {
        if (!e->target || !*e->target) {
            note(c->src, gpath, "symbolic link without a target: skipped");
            c->st->skipped++;
            return 0;
        }
        c->st->links++;
        return files_tar_header(fd, aname, e, '2', e->mode & 07777, err);
    }
    if (!S_ISREG(e->mode)) {
        note(c->src, gpath,
             S_ISCHR(e->mode) || S_ISBLK(e->mode) ? "device node: skipped"
             : S_ISFIFO(e->mode)                  ? "FIFO: skipped"
                                                  : "not a file, directory or link: skipped");
        c->st->skipped++;
        return 0;
    }
    /* the header promises e->size bytes: exactly that many follow */
    int rc = files_tar_header(fd, aname, e, '0', copy_perm(c, gpath, e), err);
    uint64_t off = 0;
    while (rc == 0 && off < e->size) {
        if (cancelled(c))
            return vmsh_error_set(err, -ECANCELED, "interrupted while copying %s", gpath);
        size_t want = e->size - off < CHUNK ? (size_t)(e->size - off) : CHUNK, got = 0;
        rc = c->src->ops->read(c->src->opaque, gpath, off, c->buf, want, &got, err);
        if (rc < 0)
            return rc;
        if (got == 0 || got > want)
            return vmsh_error_set(err, -EIO,
                                  "%s changed size while read (%" PRIu64 " bytes of %" PRIu64
                                  "); the tar stream is incomplete",
                                  gpath, off, e->size);
        if ((rc = write_all(fd, c->buf, got)) < 0)
            return vmsh_error_set(err, rc, "cannot write the tar stream: %s", strerror(-rc));
        off += got;
    }
    if (rc == 0)
        rc = files_tar_pad(fd, e->size, err);
    c->st->files++;
    c->st->bytes += off;
    return rc;
}

static int tar_tree(copy_ctx *c, const char *gdir, const char *aname, int depth, vmsh_error **err)
{
    vmsh_files_entry *e = NULL;
    size_t n = 0;
    int rc = dir_level(c, gdir, depth, &e, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        _cleanup_free_ char *g = files_join(gdir, e[i].path);
        _cleanup_free_ char *a = *aname ? files_join(aname, e[i].path) : strdup(e[i].path);
        rc = g && a ? tar_entry(c, g, a, &e[i], depth, err)
                    : vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    files_entries_free(e, n);
    return rc;
}

/* ---- get ------------------------------------------------------------ */

static bool dir_empty(int fd)
{
    int d = dup(fd);
    DIR *dir = d >= 0 ? fdopendir(d) : NULL;
    if (!dir) {
        if (d >= 0)
            close(d);
        return false;
    }
    bool empty = true;
    struct dirent *de;
    while (empty && (de = readdir(dir)))
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    closedir(dir);
    return empty;
}

int vmsh_files_check_target(const vmsh_files_get_options *go, const char *const *paths, size_t n,
                            vmsh_error **err)
{
    if (n == 0)
        return vmsh_error_set(err, -EINVAL, "no path to copy");
    if (!go->to_dir && go->tar_fd < 0)
        return vmsh_error_set(err, -EINVAL, "no target: a directory or a tar stream");
    char **names = vmsh_calloc_array(n, sizeof(*names));
    int rc = names ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = files_basename(paths[i], &names[i], err);
        for (size_t k = 0; rc == 0 && k < i; k++)
            if (strcmp(names[k], names[i]) == 0)
                rc = vmsh_error_set(err, -EINVAL,
                                    "%s and %s would both be copied to %s: copy them one at a "
                                    "time",
                                    paths[k], paths[i], *names[i] ? names[i] : "the target");
    }
    int dirfd = -1;
    struct stat st;
    if (rc == 0 && go->to_dir) {
        if (stat(go->to_dir, &st) == 0 && !S_ISDIR(st.st_mode))
            rc = vmsh_error_set(err, -EEXIST, "%s exists and is not a directory", go->to_dir);
        else if ((dirfd = open(go->to_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 &&
                 errno != ENOENT)
            rc = vmsh_error_set(err, -errno, "cannot open %s: %s", go->to_dir, strerror(errno));
    }
    for (size_t i = 0; rc == 0 && dirfd >= 0 && !go->force && i < n; i++) {
        if (!*names[i] && !dir_empty(dirfd))
            rc = vmsh_error_set(err, -EEXIST,
                                "%s is not empty: / is copied into it; give --force to merge",
                                go->to_dir);
        else if (*names[i] && fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) == 0)
            rc = vmsh_error_set(err, -EEXIST,
                                "%s/%s exists already; give --force to replace it (a "
                                "directory is merged into)",
                                go->to_dir, names[i]);
    }
    if (dirfd >= 0)
        close(dirfd);
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int files_tree_get(const files_src *src, const char *const *paths, size_t n,
                   const vmsh_files_get_options *go, vmsh_files_stats *stats, vmsh_error **err)
{
    *stats = (vmsh_files_stats){0};
    int rc = vmsh_files_check_target(go, paths, n, err);
    if (rc < 0)
        return rc;
    vmsh_files_entry *top = vmsh_calloc_array(n, sizeof(*top));
    char **names = vmsh_calloc_array(n, sizeof(*names));
    copy_ctx c = {.src = src, .go = go, .st = stats, .chown = geteuid() == 0};
    rc = top && names ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    /* every path looked up before anything is written */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = files_basename(paths[i], &names[i], err);
        if (rc == 0)
            rc = src->ops->stat(src->opaque, paths[i], &top[i], err);
        if (rc == 0 && !*names[i] && !S_ISDIR(top[i].mode))
            rc = vmsh_error_set(err, -ENOTDIR, "/ is not a directory");
    }
    int dirfd = -1;
    if (rc == 0 && go->to_dir) {
        if (mkdir(go->to_dir, 0777) < 0 && errno != EEXIST)
            rc = vmsh_error_set(err, -errno, "cannot create %s: %s", go->to_dir, strerror(errno));
        else if ((dirfd = open(go->to_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            rc = vmsh_error_set(err, -errno, "cannot open %s: %s", go->to_dir, strerror(errno));
    }
    if (rc == 0 && !(c.buf = malloc(CHUNK)))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (go->to_dir && !*names[i])
            rc = copy_tree(&c, dirfd, "/", 0, err);
        else if (go->to_dir)
            rc = copy_entry(&c, dirfd, names[i], paths[i], &top[i], 0, err);
        else if (!*names[i])
            rc = tar_tree(&c, "/", "", 0, err);
        else
            rc = tar_entry(&c, paths[i], names[i], &top[i], 0, err);
    }
    if (rc == 0 && !go->to_dir)
        rc = files_tar_end(go->tar_fd, err);
    if (dirfd >= 0)
        close(dirfd);
    free(c.buf);
    for (size_t i = 0; names && top && i < n; i++) {
        free(names[i]);
        free((char *)top[i].path);
        free((char *)top[i].target);
    }
    free(names);
    free(top);
    return rc;
}
