#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

char *vmsh_path_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/')
        la--;
    while (*b == '/')
        b++;
    char *r = NULL;
    if (asprintf(&r, "%.*s/%s", (int)la, a, b) < 0)
        return NULL;
    return r;
}

char *vmsh_path_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int vmsh_name_is_safe(const char *name)
{
    if (!name || !*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++, n++) {
        if (*p == '/' || *p < 0x20 || *p == 0x7f)
            return 0;
    }
    return n <= 255;
}

bool vmsh_path_is_clean(const char *path)
{
    if (!path || path[0] != '/')
        return false;
    for (const char *c = path + 1; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c += n;
        if (*c == '/' && !*++c)
            return false; /* a trailing slash names a directory */
    }
    return true;
}

int vmsh_fs_fsync_dir(const char *dir, vmsh_error **err)
{
    _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open directory %s: %s", dir, strerror(errno));
    if (fsync(fd) < 0)
        return vmsh_error_set(err, -errno, "cannot fsync directory %s: %s", dir, strerror(errno));
    return 0;
}

int vmsh_fs_write_atomic(const char *path, const void *buf, size_t len, mode_t mode,
                         vmsh_error **err)
{
    _cleanup_free_ char *tmp = NULL;
    _cleanup_free_ char *dir = vmsh_path_dirname(path);
    if (!dir || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        tmp = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory writing %s", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", tmp, strerror(errno));
    int r = vmsh_fs_write_all(fd, buf, len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0) {
        unlink(tmp);
        return vmsh_error_set(err, r, "cannot write %s: %s%s", path, strerror(-r),
                              r == -ENOSPC ? " (free space on that filesystem and retry)" : "");
    }
    return vmsh_fs_fsync_dir(dir, err);
}

int vmsh_fs_read_all(const char *path, size_t max, char **out, size_t *out_len, vmsh_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vmsh_error_set(err, -errno, "cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return vmsh_error_set(err, -EINVAL, "%s is not a regular file", path);
    return vmsh_fs_read_fd(fd, (uint64_t)st.st_size, max, path, out, out_len, err);
}

int vmsh_fs_read_fd(int fd, uint64_t size, size_t max, const char *what, char **out,
                    size_t *out_len, vmsh_error **err)
{
    if (size > max)
        return vmsh_error_set(err, -EFBIG, "%s is too large (%llu bytes, limit %zu)", what,
                              (unsigned long long)size, max);
    size_t cap = (size_t)size + 1, len = 0;
    _cleanup_free_ char *buf = malloc(cap);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory reading %s", what);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > max)
                return vmsh_error_set(err, -EFBIG, "%s grew past %zu bytes while read", what, max);
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                return vmsh_error_set(err, -ENOMEM, "out of memory reading %s", what);
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vmsh_error_set(err, -errno, "cannot read %s: %s", what, strerror(errno));
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *out = VMSH_TAKE_PTR(buf);
    if (out_len)
        *out_len = len;
    return 0;
}

int vmsh_fs_mkdir_p(const char *path, mode_t mode, vmsh_error **err)
{
    _cleanup_free_ char *p = strdup(path);
    if (!p)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, mode) < 0 && errno != EEXIST)
                return vmsh_error_set(err, -errno, "cannot create directory %s: %s", p,
                                      strerror(errno));
            *s = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return vmsh_error_set(err, -ENOTDIR, "%s exists and is not a directory", path);
    return 0;
}

FILE *vmsh_scratch_stream(const char *what, vmsh_error **err)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/var/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        /* a file system without O_TMPFILE: a named file, unlinked at once */
        char *p = NULL;
        if (asprintf(&p, "%s/vmshadow-scratch-XXXXXX", dir) < 0) {
            vmsh_error_set(err, -ENOMEM, "out of memory");
            return NULL;
        }
        fd = mkostemp(p, O_CLOEXEC);
        if (fd >= 0)
            unlink(p);
        free(p);
    }
    if (fd < 0) {
        vmsh_error_set(err, -errno,
                       "cannot create a scratch file for %s in %s: %s (set TMPDIR to a "
                       "directory with room)",
                       what, dir, strerror(errno));
        return NULL;
    }
    FILE *f = fdopen(fd, "w+");
    if (!f) {
        vmsh_error_set(err, -errno, "cannot create a scratch file for %s: %s", what,
                       strerror(errno));
        close(fd);
    }
    return f;
}

/* write() (off < 0) or pwrite() at off until all of buf is written. */
static int write_loop(int fd, const void *buf, size_t len, int64_t off)
{
    for (size_t done = 0; done < len;) {
        const uint8_t *p = (const uint8_t *)buf + done;
        ssize_t n = off < 0 ? write(fd, p, len - done)
                            : pwrite(fd, p, len - done, (off_t)((uint64_t)off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        done += (size_t)n;
    }
    return 0;
}

int vmsh_fs_write_all(int fd, const void *buf, size_t len)
{
    return write_loop(fd, buf, len, -1);
}

int vmsh_fs_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    if (off > (uint64_t)INT64_MAX)
        return -EINVAL;
    return write_loop(fd, buf, len, (int64_t)off);
}

void vmsh_fs_close_detached(const int *fds, size_t n)
{
    /* sorted, so that the child closes the gaps between them by ranges */
    int keep[64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0 && k < VMSH_ARRAY_SIZE(keep))
            keep[k++] = fds[i];
    for (size_t i = 1; i < k; i++)
        for (size_t m = i; m > 0 && keep[m - 1] > keep[m]; m--) {
            int t = keep[m];
            keep[m] = keep[m - 1];
            keep[m - 1] = t;
        }
    pid_t pid = k ? fork() : -1;
    if (pid == 0) {
        /* only async-signal-safe calls from here: the caller may have
         * threads */
        unsigned lo = 0;
        for (size_t i = 0; i < k; i++) {
            if ((unsigned)keep[i] > lo)
                close_range(lo, (unsigned)keep[i] - 1, 0);
            lo = (unsigned)keep[i] + 1;
        }
        close_range(lo, ~0U, 0);
        /* the grandchild frees them; this child exits at once, so the
         * caller's wait is short (if this fork fails, this exit frees
         * them and the caller waits for that: as without a process) */
        if (fork() == 0)
            for (size_t i = 0; i < k; i++)
                close(keep[i]);
        _exit(0);
    }
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (pid > 0)
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
}

static pthread_mutex_t deferred_lock = PTHREAD_MUTEX_INITIALIZER;
static int *deferred;
static size_t n_deferred;

void vmsh_fs_defer_close(int fd)
{
    if (fd < 0)
        return;
    pthread_mutex_lock(&deferred_lock);
    int *v = realloc(deferred, (n_deferred + 1) * sizeof(*v));
    if (v) {
        deferred = v;
        deferred[n_deferred++] = fd;
    }
    pthread_mutex_unlock(&deferred_lock);
    if (!v)
        close(fd); /* freed now, as if it had not been deferred */
}

void vmsh_fs_close_deferred(void)
{
    pthread_mutex_lock(&deferred_lock);
    int *v = deferred;
    size_t n = n_deferred;
    deferred = NULL;
    n_deferred = 0;
    pthread_mutex_unlock(&deferred_lock);
    vmsh_fs_close_detached(v, n);
    free(v);
}
