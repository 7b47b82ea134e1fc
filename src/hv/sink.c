/* sink.c - an image written through a private qemu-nbd (include/vmshadow/hv/
 * sink.h; issue 27 point 3): the restore writes a qcow2 disk once, as qcow2,
 * through QEMU's own block layer (no home-made qcow2 writer beyond the empty
 * image of image.c), and the image is durable before the VM is defined. */
#include <vmshadow/hv/hvops.h>
#include <vmshadow/hv/sink.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libnbd.h>
#include <limits.h>
#include <signal.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* qemu-nbd takes requests of up to 32 MiB; the repository writes ≤ 4 MiB */
#define NBD_MAX_WRITE (32u << 20)
/* NBD lengths are 32-bit on the wire: zero in 1 GiB steps */
#define NBD_MAX_ZERO (1ull << 30)
/* how long qemu-nbd may take to close the image after the disconnect */
#define STOP_WAIT_MS 60000

extern char **environ;

/* how long qemu-nbd may take to open the image and listen */
#define START_WAIT_MS 30000

/* connections to qemu-nbd: the restore's workers write in parallel, each
 * waiting on its own (a libnbd handle runs one synchronous request at a
 * time); QEMU writes them concurrently (--aio=native) */
#define NBD_CONNS 4

typedef struct nbd_sink {
    struct nbd_handle *h; /* conns[0]: size, flags, flush */
    struct nbd_handle *conns[NBD_CONNS];
    pthread_mutex_t mu[NBD_CONNS];
    atomic_uint next;
    char *path;
    char *dir; /* private directory of the socket and qemu-nbd's messages */
    pid_t pid;
} nbd_sink;

static int nbd_err(vmsh_error **err, const char *what, const nbd_sink *s)
{
    int e = nbd_get_errno();
    return vmsh_error_set(err, -(e ? e : EIO), "%s %s failed: %s", what, s->path,
                          nbd_get_error() ? nbd_get_error() : "NBD error");
}

static int sink_pwrite(void *impl, const void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    nbd_sink *s = impl;
    unsigned k = atomic_fetch_add(&s->next, 1) % NBD_CONNS;
    pthread_mutex_lock(&s->mu[k]);
    int r = nbd_pwrite(s->conns[k], buf, len, off, 0);
    pthread_mutex_unlock(&s->mu[k]);
    if (r == -1)
        return nbd_err(err, "writing", s);
    return 0;
}

static int sink_zero(void *impl, uint64_t off, uint64_t len, vmsh_error **err)
{
    nbd_sink *s = impl;
    if (nbd_can_zero(s->h) != 1)
        return -EOPNOTSUPP;
    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < NBD_MAX_ZERO ? len - done : NBD_MAX_ZERO;
        if (nbd_zero(s->h, n, off + done, 0) == -1)
            return nbd_err(err, "zeroing", s);
        done += n;
    }
    return 0;
}

static int sink_flush(void *impl, vmsh_error **err)
{
    nbd_sink *s = impl;
    /* every connection: without multi-conn, NBD promises a flush only for
     * the writes of its own connection */
    for (int k = 0; k < NBD_CONNS; k++)
        if (nbd_can_flush(s->conns[k]) == 1 && nbd_flush(s->conns[k], 0) == -1)
            return nbd_err(err, "flushing", s);
    return 0;
}

/* Waits for qemu-nbd to exit (it does when its one client leaves): 0 when it
 * exited with status 0. */
static int wait_server(nbd_sink *s, vmsh_error **err)
{
    int status = 0;
    for (int waited = 0;; waited += 10) {
        pid_t p = waitpid(s->pid, &status, WNOHANG);
        if (p == s->pid) {
            s->pid = -1;
            break;
        }
        if (p < 0 && errno != EINTR)
            return vmsh_error_set(err, -errno, "waiting for qemu-nbd on %s: %s", s->path,
                                  strerror(errno));
        if (waited >= STOP_WAIT_MS) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            s->pid = -1;
            return vmsh_error_set(err, -ETIMEDOUT,
                                  "qemu-nbd did not stop within %d s after writing %s: the image "
                                  "may be incomplete",
                                  STOP_WAIT_MS / 1000, s->path);
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return vmsh_error_set(err, -EIO,
                              "qemu-nbd stopped uncleanly (%s %d) after writing %s: the image "
                              "may be incomplete",
                              WIFEXITED(status) ? "exit status" : "signal",
                              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), s->path);
    return 0;
}

/* fsync of the image file, then of its directory. */
static int sync_file_and_dir(const char *path, vmsh_error **err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return vmsh_error_set(err, r, "cannot fsync %s: %s", path, strerror(-r));
    _cleanup_free_ char *dir = vmsh_path_dirname(path);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return vmsh_fs_fsync_dir(dir, err);
}

/* Removes the private directory (socket, messages). */
static void rm_dir(nbd_sink *s)
{
    if (!s->dir)
        return;
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/sock", s->dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/log", s->dir);
    unlink(p);
    rmdir(s->dir);
    free(s->dir);
    s->dir = NULL;
}

static void sink_free(void *impl)
{
    nbd_sink *s = impl;
    if (!s)
        return;
    for (int k = 0; k < NBD_CONNS; k++) {
        if (s->conns[k])
            nbd_close(s->conns[k]);
        pthread_mutex_destroy(&s->mu[k]);
    }
    /* a failed restore: the server goes, what it wrote is removed by the
     * caller */
    if (s->pid > 0) {
        /* SIGTERM, and SIGKILL when it does not go within 5 s: qemu-nbd
         * may wait on a connection it was still accepting (seen) */
        kill(s->pid, SIGTERM);
        int waited = 0;
        while (waitpid(s->pid, NULL, WNOHANG) == 0) {
            if (waited >= 5000) {
                kill(s->pid, SIGKILL);
                waitpid(s->pid, NULL, 0);
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
            waited += 10;
        }
        s->pid = -1;
    }
    rm_dir(s);
    free(s->path);
    free(s);
}

/* qemu-nbd's last message (its log), for an error. */
static void server_said(const nbd_sink *s, char *buf, size_t cap)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/log", s->dir);
    buf[0] = 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    for (char *c = buf; *c; c++)
        if (*c == '\n')
            *c = *(c + 1) ? ' ' : 0;
}

/* Starts qemu-nbd serving `s->path` on a Unix socket in a private
 * directory and connects to it. */
static int start_server(nbd_sink *s, const char *format, vmsh_error **err)
{
    char tmpl[] = "/tmp/vmshadow-sink-XXXXXX";
    if (!mkdtemp(tmpl))
        return vmsh_error_set(err, -errno, "cannot make a directory for qemu-nbd: %s",
                              strerror(errno));
    if (!(s->dir = strdup(tmpl)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ char *sock = NULL, *log = NULL, *fmt = NULL, *sockarg = NULL;
    if (asprintf(&sock, "%s/sock", s->dir) < 0 || asprintf(&log, "%s/log", s->dir) < 0 ||
        asprintf(&fmt, "--format=%s", format) < 0 || asprintf(&sockarg, "--socket=%s", sock) < 0) {
        sock = log = fmt = sockarg = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* --shared=N: only our N connections, and qemu-nbd exits when they
     * leave (no --persistent); --cache=none --aio=native: O_DIRECT writes,
     * in parallel, not through the page cache (buffered writes of fresh data
     * cost ~2 CPU-s per GiB, PERF.md); NBD_CMD_FLUSH at the end (finish)
     * syncs the image's metadata and the device's cache; --discard=unmap:
     * zero requests keep holes */
    char shared[32];
    snprintf(shared, sizeof(shared), "--shared=%d", NBD_CONNS);
    char *argv[] = {(char *)"qemu-nbd",
                    shared,
                    (char *)"--cache=none",
                    (char *)"--aio=native",
                    (char *)"--discard=unmap",
                    fmt,
                    sockarg,
                    s->path,
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    /* nothing else of ours: no lock nor repository descriptor */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    /* default dispositions and no blocked signal: the command line blocks
     * or ignores some (SIGPIPE), which a child inherits */
    posix_spawnattr_t at;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    int rc = posix_spawnp(&pid, "qemu-nbd", &fa, &at, argv, environ);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return vmsh_error_set(err, -rc, "cannot start qemu-nbd for %s: %s", s->path, strerror(rc));
    s->pid = pid;
    char said[256];
    for (int waited = 0;; waited += 10) {
        struct stat st;
        if (lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
            break;
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = -1;
            server_said(s, said, sizeof(said));
            return vmsh_error_set(err, -EIO, "qemu-nbd cannot serve %s as %s for writing: %s",
                                  s->path, format, said[0] ? said : "it exited");
        }
        if (waited >= START_WAIT_MS)
            return vmsh_error_set(err, -ETIMEDOUT, "qemu-nbd did not serve %s within %d s", s->path,
                                  START_WAIT_MS / 1000);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int k = 0, waited = 0; k < NBD_CONNS;) {
        if (!(s->conns[k] = nbd_create()))
            return vmsh_error_set(err, -ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
        if (nbd_connect_unix(s->conns[k], sock) == 0) {
            k++;
            continue;
        }
        /* the socket exists from bind(), connections are accepted from
         * listen(): refused in between (seen on a loaded machine) */
        int e = nbd_get_errno();
        if ((e != ECONNREFUSED && e != EAGAIN) || waited >= START_WAIT_MS)
            return vmsh_error_set(err, -EIO, "cannot connect to qemu-nbd serving %s: %s", s->path,
                                  nbd_get_error());
        nbd_close(s->conns[k]);
        s->conns[k] = NULL;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        waited += 10;
    }
    s->h = s->conns[0];
    return 0;
}

static int sink_finish(void *impl, vmsh_error **err)
{
    nbd_sink *s = impl;
    /* NBD_CMD_FLUSH: QEMU writes its caches and syncs the image; then the
     * disconnect, and qemu-nbd closes the image and exits (0 when clean) */
    int r = sink_flush(s, err);
    for (int k = 0; k < NBD_CONNS && r == 0; k++)
        if (nbd_shutdown(s->conns[k], 0) == -1)
            r = nbd_err(err, "disconnecting from", s);
    if (r == 0)
        r = wait_server(s, err);
    for (int k = 0; k < NBD_CONNS; k++) {
        nbd_close(s->conns[k]);
        s->conns[k] = NULL;
    }
    s->h = NULL;
    /* whatever QEMU wrote on close, and the directory entry */
    if (r == 0 && s->path[0] == '/')
        r = sync_file_and_dir(s->path, err);
    sink_free(s);
    return r;
}

static const vmsh_sink_ops nbd_sink_ops = {
    .version = VMSH_SINK_OPS_VERSION,
    .kind = "nbd",
    .pwrite = sink_pwrite,
    .zero = sink_zero,
    .flush = sink_flush,
    .finish = sink_finish,
    .free = sink_free,
};

/* Writes an empty image of `format` into the new file `fd`. */
static int empty_image(int fd, const char *path, const char *format, uint64_t size,
                       vmsh_error **err)
{
    if (strcmp(format, "qcow2") == 0)
        return vmsh_qcow2_empty_write(fd, size, err); /* image.c: no qemu-img run */
    char target[32], sz[32];
    snprintf(target, sizeof(target), "/dev/fd/%d", fd);
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    char *argv[] = {(char *)"qemu-img", (char *)"create", (char *)"-q", (char *)"-f",
                    (char *)format,     target,           sz,           NULL};
    vmsh_proc_result res;
    int r = vmsh_proc_run(argv, NULL, 60 * 1000, &res, err);
    if (r == 0 && res.exit_code != 0) {
        char buf[96];
        r = vmsh_error_set(err, -EIO, "qemu-img could not create %s as %s: %s", path, format,
                           vmsh_proc_describe(&res, buf, sizeof(buf)));
    }
    return r;
}

/* Serves `path` (an image file, a device, "rbd:POOL/IMAGE") as `format`
 * through a private qemu-nbd and makes the sink writing into it;
 * `reads_zero`: the target reads as zeros where nothing is written. */
static int serve(const char *path, const char *format, uint64_t size, bool reads_zero,
                 vmsh_sink **out, vmsh_error **err)
{
    int r = 0;
    vmsh_sink *sk = calloc(1, sizeof(*sk));
    nbd_sink *s = calloc(1, sizeof(*s));
    if (!sk || !s || !(s->path = strdup(path)))
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (int k = 0; s && k < NBD_CONNS; k++)
        pthread_mutex_init(&s->mu[k], NULL);
    if (r == 0)
        r = start_server(s, format, err);
    if (r == 0 && nbd_is_read_only(s->h) == 1)
        r = vmsh_error_set(err, -EROFS, "qemu-nbd serves %s read-only", path);
    int64_t got = r == 0 ? nbd_get_size(s->h) : -1;
    if (r == 0 && (got < 0 || (uint64_t)got < size))
        r = vmsh_error_set(err, -ENOSPC, "qemu-nbd serves %s with %" PRId64 " bytes, not %" PRIu64,
                           path, got, size);
    if (r < 0) {
        sink_free(s);
        free(sk);
        return r;
    }
    *sk = (vmsh_sink){.ops = &nbd_sink_ops,
                      .impl = s,
                      .size = size,
                      .reads_zero = reads_zero,
                      .max_write = NBD_MAX_WRITE,
                      .what = s->path};
    *out = sk;
    return 0;
}

int vmsh_hv_image_sink_create(const char *path, const char *format, uint64_t size, vmsh_sink **out,
                              vmsh_error **err)
{
    *out = NULL;
    /* the format comes from a backup (hostile input): only image formats
     * of a file, never a driver that reaches elsewhere (vvfat, nbd, ...) */
    static const char *const formats[] = {"qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"};
    bool known = false;
    for (size_t i = 0; format && i < VMSH_ARRAY_SIZE(formats) && !known; i++)
        known = strcmp(format, formats[i]) == 0;
    if (!known)
        return vmsh_error_set(err, -EINVAL, "%s: a disk of the format '%s' is not restored here",
                              path, format ? format : "(none)");
    /* not O_CLOEXEC: qemu-img create inherits it for formats not made here */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
    int r = empty_image(fd, path, format, size, err);
    if (close(fd) < 0 && r == 0)
        r = vmsh_error_set(err, -errno, "cannot write %s: %s", path, strerror(errno));
    if (r < 0) {
        unlink(path);
        return r;
    }
    r = serve(path, format, size, true, out, err);
    if (r < 0)
        unlink(path);
    return r;
}

int vmsh_hv_storage_sink_open(const char *target, const char *format, uint64_t size, bool fresh,
                              vmsh_sink **out, vmsh_error **err)
{
    *out = NULL;
    bool rbd = strncmp(target, "rbd:", 4) == 0;
    if (!format || (strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0) ||
        (rbd && strcmp(format, "raw") != 0) || (!rbd && target[0] != '/') || strchr(target, ','))
        return vmsh_error_set(err, -EINVAL, "%s: a disk of the format '%s' is not written there",
                              target, format ? format : "(none)");
    bool reads_zero = fresh;
    if (strcmp(format, "qcow2") == 0) {
        /* a new, empty qcow2 over the old one (a device keeps no stale
         * cluster: the new image's tables reference none): reads as zeros,
         * holes stay holes; qemu-img sizes its tables for `size` */
        char sz[32];
        snprintf(sz, sizeof(sz), "%" PRIu64, size);
        char *argv[] = {(char *)"qemu-img", (char *)"create", (char *)"-q", (char *)"-f",
                        (char *)"qcow2",    (char *)target,   sz,           NULL};
        vmsh_proc_result res;
        int r = vmsh_proc_run(argv, NULL, 120 * 1000, &res, err);
        if (r == 0 && res.exit_code != 0) {
            char buf[96];
            r = vmsh_error_set(err, -EIO, "qemu-img could not make %s a qcow2 image: %s", target,
                               vmsh_proc_describe(&res, buf, sizeof(buf)));
        }
        if (r < 0)
            return r;
        reads_zero = true;
    }
    return serve(target, format, size, reads_zero, out, err);
}
