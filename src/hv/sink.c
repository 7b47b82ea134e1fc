/* sink.c - an image written through a private qemu-nbd (include/vmshadow/hv/
 * sink.h; issue 27 point 3): the restore writes a qcow2 disk once, as qcow2,
 * through QEMU's own block layer (no home-made qcow2 writer beyond the empty
 * image of image.c), and the image is durable before the VM is defined. */
#include "hv_private.h"

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

/* ---- a new qcow2 file written directly (issue 27 point 3) ----
 *
 * The profile of a restore through qemu-nbd (bench/README.md): every byte
 * crossed a Unix socket into qemu-nbd, which wrote it again; the restore
 * took 1.45x the time of an extract of the same disk, with ~1.4 CPU-s more
 * system time per 1.4 GB. A new qcow2 file needs none of QEMU's logic: the
 * data clusters are written with O_DIRECT straight into the file, each
 * at the next free cluster of the file (host order = order of arrival), and
 * the L2 tables, the L1 table and the refcounts that describe them are
 * written after the data, at finish. The file is a valid empty qcow2 image
 * (image.c) from its creation until the header is switched to the new
 * tables, in one sector written after everything else is synced: a crash at
 * any point leaves either an empty image or the complete one, never an
 * image that references unwritten clusters. docs/formats/qcow2-restore.md
 * gives the layout; qemu-img check accepts the result (tests). */

enum {
    QC_BITS = 16,
    QC_CLUSTER = 1 << QC_BITS,
    QC_L2_ENTRIES = QC_CLUSTER / 8, /* guest clusters per L2 table: 512 MiB */
    QC_RB_ENTRIES = QC_CLUSTER / 2, /* 16-bit refcounts per block: 2 GiB */
    QC_PIECE = 64,                  /* clusters resolved under the lock at once */
};
/* Above this size the L2 map in memory (4 bytes per written cluster: 16 MiB
 * at 256 GiB) would grow with the disk: larger disks go through qemu-nbd. */
#define QC_DIRECT_MAX (256ull << 30)
#define QC_COPIED     (1ull << 63) /* QCOW_OFLAG_COPIED: refcount is 1 */

typedef struct qc_sink {
    int dfd; /* O_DIRECT (or -1 where the filesystem refuses it) */
    int bfd; /* buffered: unaligned writes and the metadata */
    char *path;
    uint64_t vsize;     /* the virtual size, in 512-byte sectors as qemu-img */
    uint32_t l1_n;      /* L1 entries */
    uint32_t first;     /* the first cluster after the empty image's */
    pthread_mutex_t mu; /* tabs, next */
    uint32_t **tabs;    /* per L1 entry: NULL or QC_L2_ENTRIES host clusters (0: none) */
    uint32_t next;      /* the next free host cluster */
} qc_sink;

/* The host clusters of guest clusters [c, c+n) (n <= QC_PIECE), allocated
 * when `alloc`; 0 for one never written (alloc false). */
static int qc_resolve(qc_sink *s, uint64_t c, unsigned n, bool alloc, uint32_t *host)
{
    int r = 0;
    pthread_mutex_lock(&s->mu);
    for (unsigned i = 0; i < n && r == 0; i++) {
        uint64_t g = c + i;
        uint32_t **t = &s->tabs[g / QC_L2_ENTRIES];
        host[i] = *t ? (*t)[g % QC_L2_ENTRIES] : 0;
        if (host[i] || !alloc)
            continue;
        if (!*t && !(*t = calloc(QC_L2_ENTRIES, sizeof(**t)))) {
            r = -ENOMEM;
            break;
        }
        /* leaves room below 2^32 for the tables written at finish */
        if (s->next >= UINT32_MAX - (1u << 20)) {
            r = -EFBIG;
            break;
        }
        host[i] = (*t)[g % QC_L2_ENTRIES] = s->next++;
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

static int qc_sink_pwrite(void *impl, const void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    qc_sink *s = impl;
    uint64_t limit = (s->vsize + QC_CLUSTER - 1) / QC_CLUSTER * QC_CLUSTER;
    if (off > limit || len > limit - off)
        return vmsh_error_set(err, -EINVAL,
                              "writing %s: %zu bytes at %" PRIu64 " are beyond its end", s->path,
                              len, off);
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t c = off / QC_CLUSTER;
        uint64_t end = off + len;
        uint64_t last = (end - 1) / QC_CLUSTER;
        unsigned n = last - c + 1 > QC_PIECE ? QC_PIECE : (unsigned)(last - c + 1);
        uint32_t host[QC_PIECE];
        int r = qc_resolve(s, c, n, true, host);
        if (r < 0)
            return vmsh_error_set(err, r, "writing %s: %s", s->path,
                                  r == -EFBIG ? "the image would be too large" : strerror(-r));
        /* runs of consecutive host clusters in one write each */
        for (unsigned i = 0; i < n;) {
            unsigned k = i + 1;
            while (k < n && host[k] == host[k - 1] + 1)
                k++;
            uint64_t g0 = (c + i) * QC_CLUSTER, g1 = (c + k) * QC_CLUSTER;
            uint64_t from = off > g0 ? off : g0, to = end < g1 ? end : g1;
            uint64_t hoff = (uint64_t)host[i] * QC_CLUSTER + (from - g0);
            size_t m = (size_t)(to - from);
            const uint8_t *src = p + (from - off);
            bool aligned = ((uintptr_t)src | hoff | m) % 4096 == 0;
            int fd = s->dfd >= 0 && aligned ? s->dfd : s->bfd;
            if ((r = vmsh_fs_pwrite_all(fd, src, m, hoff)) < 0)
                return vmsh_error_set(err, r, "cannot write %s: %s%s", s->path, strerror(-r),
                                      r == -ENOSPC ? " (the target filesystem is full)" : "");
            i = k;
        }
        uint64_t done = (c + n) * QC_CLUSTER - off;
        if (done >= len)
            break;
        p += done;
        off += done;
        len -= (size_t)done;
    }
    return 0;
}

/* A range never written reads as zeros already; one that was is zeroed by
 * the repository writing zeros (-EOPNOTSUPP). */
static int qc_sink_zero(void *impl, uint64_t off, uint64_t len, vmsh_error **err)
{
    qc_sink *s = impl;
    (void)err;
    if (len == 0)
        return 0;
    uint64_t limit = (s->vsize + QC_CLUSTER - 1) / QC_CLUSTER * QC_CLUSTER;
    if (off >= limit)
        return 0;
    uint64_t last = ((len > limit - off ? limit : off + len) - 1) / QC_CLUSTER;
    for (uint64_t c = off / QC_CLUSTER; c <= last; c += QC_PIECE) {
        unsigned n = last - c + 1 > QC_PIECE ? QC_PIECE : (unsigned)(last - c + 1);
        uint32_t host[QC_PIECE];
        qc_resolve(s, c, n, false, host);
        for (unsigned i = 0; i < n; i++)
            if (host[i])
                return -EOPNOTSUPP;
    }
    return 0;
}

/* The data written so far is on stable storage; the image references it
 * only after finish. */
static int qc_sink_flush(void *impl, vmsh_error **err)
{
    qc_sink *s = impl;
    if (fdatasync(s->bfd) < 0)
        return vmsh_error_set(err, -errno, "cannot flush %s: %s", s->path, strerror(errno));
    return 0;
}

static void qc_sink_free(void *impl)
{
    qc_sink *s = impl;
    if (!s)
        return;
    if (s->dfd >= 0)
        close(s->dfd);
    if (s->bfd >= 0)
        close(s->bfd);
    for (uint32_t i = 0; s->tabs && i < s->l1_n; i++)
        free(s->tabs[i]);
    free(s->tabs);
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s);
}

/* Writes the tables after the data, syncs, then points the header at
 * them (the commit), syncs the file and its directory. */
static int qc_commit(qc_sink *s, vmsh_error **err)
{
    uint32_t l2n = 0;
    for (uint32_t i = 0; i < s->l1_n; i++)
        l2n += s->tabs[i] != NULL;
    uint64_t l1c = ((uint64_t)s->l1_n * 8 + QC_CLUSTER - 1) / QC_CLUSTER;
    uint64_t l2_at = s->next, l1_at = l2_at + l2n, rb_at = l1_at + l1c;
    /* the refcount blocks and their table count themselves */
    uint64_t rb = 1, rt = 1;
    for (;;) {
        uint64_t total = rb_at + rb + rt;
        uint64_t rb2 = (total + QC_RB_ENTRIES - 1) / QC_RB_ENTRIES;
        uint64_t rt2 = (rb2 * 8 + QC_CLUSTER - 1) / QC_CLUSTER;
        if (rb2 == rb && rt2 == rt)
            break;
        rb = rb2, rt = rt2;
    }
    uint64_t rt_at = rb_at + rb, total = rt_at + rt;
    if (total >= UINT32_MAX)
        return vmsh_error_set(err, -EFBIG, "writing %s: the image would be too large", s->path);
    size_t meta = (size_t)(total - l2_at) * QC_CLUSTER;
    uint8_t *m = calloc(1, meta);
    if (!m)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    uint8_t *l1 = m + (l1_at - l2_at) * QC_CLUSTER;
    uint8_t *rbs = m + (rb_at - l2_at) * QC_CLUSTER;
    uint8_t *rts = m + (rt_at - l2_at) * QC_CLUSTER;
    for (uint32_t i = 0, k = 0; i < s->l1_n; i++) {
        if (!s->tabs[i])
            continue;
        uint8_t *l2 = m + (size_t)k * QC_CLUSTER;
        for (uint32_t j = 0; j < QC_L2_ENTRIES; j++)
            if (s->tabs[i][j])
                vmsh_put_be64(l2 + 8 * j, ((uint64_t)s->tabs[i][j] * QC_CLUSTER) | QC_COPIED);
        vmsh_put_be64(l1 + 8 * i, ((l2_at + k) * QC_CLUSTER) | QC_COPIED);
        k++;
    }
    /* refcount 1: the header, every cluster from the first data cluster on;
     * 0: the empty image's tables, no longer referenced */
    for (uint64_t c = 0; c < total; c++)
        if (c == 0 || c >= s->first)
            vmsh_put_be16(rbs + 2 * c, 1);
    for (uint64_t i = 0; i < rb; i++)
        vmsh_put_be64(rts + 8 * i, (rb_at + i) * QC_CLUSTER);
    int r = vmsh_fs_pwrite_all(s->bfd, m, meta, l2_at * QC_CLUSTER);
    free(m);
    if (r == 0 && fdatasync(s->bfd) < 0)
        r = -errno;
    if (r < 0)
        return vmsh_error_set(err, r, "cannot write the tables of %s: %s", s->path, strerror(-r));
    /* the commit: one sector, the header of docs/interop/qcow2.txt */
    uint8_t h[512] = {0};
    memcpy(h, "QFI\xfb", 4);
    vmsh_put_be32(h + 4, 3);
    vmsh_put_be32(h + 20, QC_BITS);
    vmsh_put_be64(h + 24, s->vsize);
    vmsh_put_be32(h + 36, s->l1_n);
    vmsh_put_be64(h + 40, l1_at * QC_CLUSTER);
    vmsh_put_be64(h + 48, rt_at * QC_CLUSTER);
    vmsh_put_be32(h + 56, (uint32_t)rt);
    vmsh_put_be32(h + 96, 4);    /* refcount_order: 16-bit */
    vmsh_put_be32(h + 100, 104); /* header_length */
    if ((r = vmsh_fs_pwrite_all(s->bfd, h, sizeof(h), 0)) < 0)
        return vmsh_error_set(err, r, "cannot write the header of %s: %s", s->path, strerror(-r));
    /* the file we made (not whatever its name may point to now), then the
     * directory entry */
    if (fsync(s->bfd) < 0)
        return vmsh_error_set(err, -errno, "cannot fsync %s: %s", s->path, strerror(errno));
    _cleanup_free_ char *dir = vmsh_path_dirname(s->path);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return vmsh_fs_fsync_dir(dir, err);
}

static int qc_sink_finish(void *impl, vmsh_error **err)
{
    qc_sink *s = impl;
    int r = qc_commit(s, err);
    qc_sink_free(s);
    return r;
}

static const vmsh_sink_ops qc_sink_ops = {
    .version = VMSH_SINK_OPS_VERSION,
    .kind = "qcow2",
    .pwrite = qc_sink_pwrite,
    .zero = qc_sink_zero,
    .flush = qc_sink_flush,
    .finish = qc_sink_finish,
    .free = qc_sink_free,
};

/* Opens the direct sink on `fd` (taken: closed on failure), the new file
 * `path` that holds an empty qcow2 image. The file is only ever reached
 * through that descriptor: the O_DIRECT one is opened through /proc, not
 * by name, so a name swapped meanwhile is never written. */
static int qc_open(int fd, const char *path, uint64_t size, vmsh_sink **out, vmsh_error **err)
{
    uint64_t vsize = (size + 511) & ~(uint64_t)511;
    uint32_t l1 = 0, clusters = 0;
    if (vmsh_qcow2_empty_layout(vsize, &l1, &clusters) < 0)
        return vmsh_error_set(err, -EFBIG, "%s: too large for qcow2", path);
    vmsh_sink *sk = calloc(1, sizeof(*sk));
    qc_sink *s = calloc(1, sizeof(*s));
    if (!sk || !s || !(s->path = strdup(path)) || !(s->tabs = calloc(l1, sizeof(*s->tabs)))) {
        if (s)
            free(s->path);
        free(sk), free(s);
        close(fd);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_init(&s->mu, NULL);
    s->vsize = vsize;
    s->l1_n = l1;
    s->first = s->next = clusters;
    s->bfd = fd;
    char self[64];
    snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
    /* -1 where the filesystem has no O_DIRECT (tmpfs): buffered writes */
    s->dfd = open(self, O_WRONLY | O_CLOEXEC | O_DIRECT);
    *sk = (vmsh_sink){.ops = &qc_sink_ops,
                      .impl = s,
                      .size = size,
                      .reads_zero = true,
                      .direct = s->dfd >= 0,
                      .what = s->path};
    *out = sk;
    return 0;
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
    /* a new qcow2 file: written directly (above); VMSHADOW_SINK_QEMU_NBD=1
     * keeps the path through qemu-nbd (benchmarks, tests) */
    const char *via = getenv("VMSHADOW_SINK_QEMU_NBD");
    bool direct =
        strcmp(format, "qcow2") == 0 && size <= QC_DIRECT_MAX && !(via && strcmp(via, "1") == 0);
    /* not O_CLOEXEC: qemu-img create inherits it for formats not made here */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
    int r = empty_image(fd, path, format, size, err);
    if (direct) {
        if (r == 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
            r = vmsh_error_set(err, -errno, "cannot write %s: %s", path, strerror(errno));
        if (r == 0)
            r = qc_open(fd, path, size, out, err); /* takes fd */
        else
            close(fd);
        if (r < 0)
            unlink(path);
        return r;
    }
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
