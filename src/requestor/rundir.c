/* rundir.c - private session directories in the run directory (issue 23:
 * `files` and `serve` killed leave nothing behind).
 *
 * A command that serves a backup for itself (`serve` without --socket,
 * `files`) puts its servers' sockets, libguestfs's temporary directory
 * (its overlays) and a note of libguestfs's socket directory into one
 * directory RUN/session-XXXXXX. Its owner holds an exclusive lock on
 * RUN/session-XXXXXX/owner.lock for as long as it lives (flock: the kernel
 * drops it when the process dies, SIGKILL included; the descriptor is
 * close-on-exec, so no server or appliance holds it). A normal end removes
 * the directory; one whose lock can be taken belongs to a dead process and
 * is removed by the next command (req_session_sweep, run by every
 * command's recovery and by every new session). */
#include "requestor_priv.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PREFIX     "session-"
#define LOCK_NAME  "owner.lock"
#define NOTE_GSOCK "guestfs-sockdir"
/* a directory without its lock file is being made (mkdtemp, then the
 * lock): left alone this long */
#define YOUNG_SECONDS 60

const char *req_run_base(char *buf, size_t size)
{
    const char *e = getenv("VMSHADOW_RUN_DIR");
    if (e && *e)
        return e;
    if (geteuid() == 0)
        return "/run/vmshadow";
    const char *x = getenv("XDG_RUNTIME_DIR");
    if (x && *x)
        snprintf(buf, size, "%s/vmshadow", x);
    else
        snprintf(buf, size, "/tmp/vmshadow-%ld", (long)geteuid());
    return buf;
}

/* Removes what is beneath dirfd (never following a link: a link is
 * removed, not its target), at most `depth` levels down. */
static void remove_below(int dirfd, int depth)
{
    DIR *d = fdopendir(dirfd);
    if (!d) {
        close(dirfd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd, de->d_name, 0) == 0 || (errno != EISDIR && errno != EPERM))
            continue;
        if (depth > 0) {
            int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                remove_below(sub, depth - 1);
        }
        unlinkat(dirfd, de->d_name, AT_REMOVEDIR);
    }
    closedir(d);
}

static void remove_tree(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    remove_below(fd, 4);
    rmdir(path);
}

/* libguestfs's socket directory named by a session's note, removed when it
 * is what libguestfs makes (DIR/libguestfsXXXXXX, a directory of ours, not
 * a link): the note is ours, but the check costs nothing. */
static void remove_guestfs_sockdir(int sfd)
{
    char buf[PATH_MAX];
    int fd = openat(sfd, NOTE_GSOCK, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    const char *base = strrchr(buf, '/');
    struct stat st;
    if (buf[0] != '/' || !vmsh_path_is_clean(buf) || !base ||
        strncmp(base + 1, "libguestfs", 10) != 0 || strlen(base + 1) != 16 || lstat(buf, &st) < 0 ||
        !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return;
    remove_tree(buf);
}

void req_session_sweep(void)
{
    char buf[PATH_MAX];
    const char *base = req_run_base(buf, sizeof(buf));
    int bfd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (bfd < 0)
        return;
    DIR *d = fdopendir(bfd);
    if (!d) {
        close(bfd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, PREFIX, strlen(PREFIX)) != 0)
            continue;
        struct stat st;
        if (fstatat(bfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        int sfd = openat(bfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sfd < 0)
            continue;
        int lfd = openat(sfd, LOCK_NAME, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        bool dead;
        if (lfd < 0)
            dead = errno == ENOENT && time(NULL) - st.st_mtime > YOUNG_SECONDS;
        else
            dead = flock(lfd, LOCK_EX | LOCK_NB) == 0;
        if (dead) {
            remove_guestfs_sockdir(sfd);
            _cleanup_free_ char *path = vmsh_path_join(base, de->d_name);
            if (path)
                remove_tree(path);
        }
        if (lfd >= 0)
            close(lfd);
        close(sfd);
    }
    closedir(d);
}

int req_session_create(char **dir, int *lock_fd, vmsh_error **err)
{
    *dir = NULL;
    *lock_fd = -1;
    char buf[PATH_MAX];
    const char *base = req_run_base(buf, sizeof(buf));
    int r = vmsh_fs_mkdir_p(base, geteuid() == 0 ? 0755 : 0700, err);
    if (r < 0)
        return vmsh_error_prefix(err, "the run directory");
    req_session_sweep();
    char *d = NULL;
    if (asprintf(&d, "%s/" PREFIX "XXXXXX", base) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (!mkdtemp(d)) {
        r = vmsh_error_set(err, -errno, "cannot create a directory in %s: %s", base,
                           strerror(errno));
        free(d);
        return r;
    }
    /* locked under another name, then named: a sweep never finds the
     * lock file unlocked while its owner lives (between mkdtemp and the
     * rename the directory has none, and is young) */
    _cleanup_free_ char *lock = vmsh_path_join(d, LOCK_NAME);
    _cleanup_free_ char *tmp = vmsh_path_join(d, LOCK_NAME ".new");
    int fd = lock && tmp ? open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    if (fd < 0 || flock(fd, LOCK_EX) < 0 || rename(tmp, lock) < 0) {
        r = vmsh_error_set(err, lock && tmp ? -errno : -ENOMEM, "cannot lock %s: %s", d,
                           strerror(lock && tmp ? errno : ENOMEM));
        if (fd >= 0)
            close(fd);
        remove_tree(d);
        free(d);
        return r;
    }
    /* the owner's pid, for a person looking (the lock decides) */
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (write(fd, pid, (size_t)n) != n) {
        /* informative only */
    }
    *dir = d;
    *lock_fd = fd;
    return 0;
}

int req_session_note_guestfs(const char *dir, const char *sockdir)
{
    _cleanup_free_ char *p = vmsh_path_join(dir, NOTE_GSOCK);
    if (!p)
        return -ENOMEM;
    return vmsh_fs_write_atomic(p, sockdir, strlen(sockdir), 0600, NULL);
}

char *req_guestfs_sockdir_of(const char *parent, const char *path)
{
    static const char pfx[] = "libguestfs";
    size_t pl = strlen(parent);
    /* what lazy_make_tmpdir makes: mkdtemp("PARENT/libguestfsXXXXXX") */
    size_t dl = pl + 1 + strlen(pfx) + 6;
    if (!pl || strncmp(path, parent, pl) != 0 || path[pl] != '/' ||
        strncmp(path + pl + 1, pfx, strlen(pfx)) != 0 || strlen(path) <= dl + 1 || path[dl] != '/')
        return NULL;
    for (const char *c = path + pl + 1 + strlen(pfx); c < path + dl; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
            return NULL;
    if (!vmsh_name_is_safe(path + dl + 1))
        return NULL;
    return strndup(path, dl);
}

char *req_guestfs_own_sockdir(const char *parent)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return NULL;
    char *found = NULL;
    struct dirent *de;
    while (!found && (de = readdir(d))) {
        char *end = NULL;
        long fd = strtol(de->d_name, &end, 10);
        if (end == de->d_name || *end || fd < 0 || fd == dirfd(d))
            continue;
        /* a descriptor closed (or reused) since readdir: getsockname fails
         * or names something else; nothing is changed either way */
        struct sockaddr_un a;
        socklen_t len = sizeof(a);
        memset(&a, 0, sizeof(a));
        if (getsockname((int)fd, (struct sockaddr *)&a, &len) < 0 || a.sun_family != AF_UNIX ||
            len <= offsetof(struct sockaddr_un, sun_path) || !a.sun_path[0])
            continue;
        a.sun_path[sizeof(a.sun_path) - 1] = 0;
        found = req_guestfs_sockdir_of(parent, a.sun_path);
    }
    closedir(d);
    return found;
}

void req_session_remove(const char *dir, int lock_fd)
{
    if (dir) {
        int sfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sfd >= 0) {
            remove_guestfs_sockdir(sfd);
            close(sfd);
        }
        remove_tree(dir);
    }
    if (lock_fd >= 0)
        close(lock_fd);
}
