#include <vmshadow/util/lock.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

struct vmsh_lock {
    int fd;
    /* a lock of another kind (a store's lease, issue 26): released by this */
    void (*release)(void *opaque);
    void *opaque;
};

/* The PID holding a flock on the file open as `fd`, from /proc/locks
 * ("1: FLOCK ADVISORY WRITE 1234 fd:01:5678 0 EOF"), or 0 when unknown:
 * only for the message, so that "busy" names who to wait for. */
static long lock_holder(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    FILE *f = fopen("/proc/locks", "re");
    if (!f)
        return 0;
    char line[256];
    long pid = 0;
    while (!pid && fgets(line, sizeof(line), f)) {
        char kind[16];
        long p;
        unsigned maj, min;
        unsigned long long ino;
        if (strstr(line, "->")) /* a waiter, not a holder */
            continue;
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &p, &maj, &min, &ino) == 5 &&
            strcmp(kind, "FLOCK") == 0 && ino == (unsigned long long)st.st_ino &&
            maj == major(st.st_dev) && min == minor(st.st_dev) && p > 0)
            pid = p;
    }
    fclose(f);
    return pid;
}

int vmsh_lock_custom(vmsh_lock **out, void (*release)(void *opaque), void *opaque)
{
    vmsh_lock *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->fd = -1;
    l->release = release;
    l->opaque = opaque;
    *out = l;
    return 0;
}

int vmsh_lock_take(vmsh_lock **out, const char *path, bool exclusive, bool wait, const char *what,
                   vmsh_error **err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open lock file %s: %s", path, strerror(errno));
    return vmsh_lock_take_fd(out, fd, path, exclusive, wait, what, err);
}

int vmsh_lock_take_fd(vmsh_lock **out, int fd_in, const char *path, bool exclusive, bool wait,
                      const char *what, vmsh_error **err)
{
    _cleanup_close_ int fd = fd_in;
    int op = (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB);
    while (flock(fd, op) < 0) {
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK) {
            long pid = lock_holder(fd);
            char by[32] = "";
            if (pid > 0)
                snprintf(by, sizeof(by), " (PID %ld)", pid);
            return vmsh_error_set(err, -EBUSY,
                                  "%s is busy: another vmshadow process%s holds %s; "
                                  "wait for it to finish and retry",
                                  what, by, path);
        }
        return vmsh_error_set(err, -errno, "cannot lock %s: %s", path, strerror(errno));
    }
    vmsh_lock *l = calloc(1, sizeof(*l));
    if (!l)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    l->fd = VMSH_TAKE_FD(fd);
    *out = l;
    return 0;
}

void vmsh_lock_free(vmsh_lock *l)
{
    if (!l)
        return;
    if (l->fd >= 0)
        close(l->fd); /* closing drops the flock */
    if (l->release)
        l->release(l->opaque);
    free(l);
}
