/* files.c - file-level restore through libguestfs (issue 23 point 4;
 * include/vmshadow/requestor/files.h). The VM's disks of the backup are
 * served read-only by the serve seam (serve.h: nbdkit with vmshadow's
 * plugin, on unix sockets in a private directory, dying with this
 * process), and libguestfs's appliance opens them over NBD, read-only.
 * The guest's filesystems are mounted only inside the appliance, whose
 * kernel is the one that parses them: a damaged or hostile filesystem
 * can crash or confuse that small VM, never the host's kernel (SPEC R12's
 * rule, everything in a backup is hostile input; docs/reliability.md).
 * What the appliance returns (names, link targets, sizes) is hostile too:
 * files_tree.c checks it before anything is written. */
#include "requestor/files_priv.h"
#include "requestor/requestor_priv.h"

#include <vmshadow/requestor/serve.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <guestfs.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* lstatnslist and readlinklist answers must fit a libguestfs message
 * (4 MiB): names are asked for in batches */
#define BATCH 512
/* guestfs_pread's largest count is bounded by the message size too */
#define READ_MAX (2 * 1024 * 1024)

struct vmsh_files {
    vmsh_serve_session *ss;
    guestfs_h *g;
    char *backup_id;
    char *mounts;
    files_src src;
};

/* libguestfs's last error as an error of ours: what failed, then its
 * message (which comes from the appliance: printed escaped by the CLI) */
static int gerr(guestfs_h *g, vmsh_error **err, int code, const char *what, const char *path)
{
    const char *m = guestfs_last_error(g);
    int e = guestfs_last_errno(g);
    if (code == 0)
        code = e == ENOENT ? -ENOENT : e == ENOTDIR ? -ENOTDIR : -EIO;
    return vmsh_error_set(err, code, "%s%s%s: %s", what, path ? " " : "", path ? path : "",
                          m ? m : "libguestfs failed");
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void entry_from(vmsh_files_entry *e, const struct guestfs_statns *s)
{
    e->mode = (uint32_t)s->st_mode;
    e->uid = s->st_uid;
    e->gid = s->st_gid;
    e->size = s->st_size > 0 && (S_ISREG(e->mode) || S_ISLNK(e->mode)) ? (uint64_t)s->st_size : 0;
    e->mtime = s->st_mtime_sec;
    e->mtime_nsec = s->st_mtime_nsec;
    e->atime = s->st_atime_sec;
    e->atime_nsec = s->st_atime_nsec;
}

static int g_list(void *opaque, const char *dir, vmsh_files_entry **out, size_t *n_out,
                  vmsh_error **err)
{
    guestfs_h *g = opaque;
    *out = NULL;
    *n_out = 0;
    char **names = guestfs_ls(g, dir);
    if (!names)
        return gerr(g, err, 0, "cannot list", dir);
    size_t n = 0;
    while (names[n])
        n++;
    vmsh_files_entry *e = vmsh_calloc_array(n ? n : 1, sizeof(*e));
    if (!e) {
        strv_free(names);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        e[i].path = names[i]; /* taken */
        names[i] = NULL;
    }
    free(names);
    /* invalid names are not asked about: the daemon joins dir and name,
     * and a name with "/" would name another file; read_dir notes them */
    char *batch[BATCH + 1];
    size_t idx[BATCH];
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n;) {
        size_t k = 0;
        for (; i < n && k < BATCH; i++)
            if (files_name_ok(e[i].path)) {
                idx[k] = i;
                batch[k++] = (char *)e[i].path;
            }
        batch[k] = NULL;
        if (k == 0)
            break;
        struct guestfs_statns_list *sl = guestfs_lstatnslist(g, dir, batch);
        if (!sl) {
            rc = gerr(g, err, 0, "cannot read the entries of", dir);
            break;
        }
        size_t nlinks = 0;
        for (size_t j = 0; j < k && j < sl->len; j++) {
            entry_from(&e[idx[j]], &sl->val[j]);
            nlinks += S_ISLNK(e[idx[j]].mode);
        }
        guestfs_free_statns_list(sl);
        if (nlinks == 0)
            continue;
        char **targets = guestfs_readlinklist(g, dir, batch);
        if (!targets) {
            rc = gerr(g, err, 0, "cannot read the links of", dir);
            break;
        }
        for (size_t j = 0; j < k && targets[j] && rc == 0; j++)
            if (S_ISLNK(e[idx[j]].mode) && *targets[j] && !(e[idx[j]].target = strdup(targets[j])))
                rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        strv_free(targets);
    }
    if (rc < 0) {
        files_entries_free(e, n);
        return rc;
    }
    *out = e;
    *n_out = n;
    return 0;
}

static int g_stat(void *opaque, const char *path, vmsh_files_entry *out, vmsh_error **err)
{
    guestfs_h *g = opaque;
    *out = (vmsh_files_entry){0};
    struct guestfs_statns *s = guestfs_lstatns(g, path);
    if (!s) {
        int e = guestfs_last_errno(g);
        return e == ENOENT || e == ENOTDIR
                   ? vmsh_error_set(err, -ENOENT, "%s: no such file or directory in the guest",
                                    path)
                   : gerr(g, err, 0, "cannot look up", path);
    }
    entry_from(out, s);
    guestfs_free_statns(s);
    if (!(out->path = strdup(path)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (S_ISLNK(out->mode)) {
        char *t = guestfs_readlink(g, path);
        if (!t)
            return gerr(g, err, 0, "cannot read the link", path);
        out->target = t;
    }
    return 0;
}

static int g_read(void *opaque, const char *path, uint64_t off, void *buf, size_t len, size_t *got,
                  vmsh_error **err)
{
    guestfs_h *g = opaque;
    *got = 0;
    if (len > READ_MAX)
        len = READ_MAX;
    size_t n = 0;
    char *data = guestfs_pread(g, path, (int)len, (int64_t)off, &n);
    if (!data)
        return gerr(g, err, 0, "cannot read", path);
    if (n > len) {
        free(data);
        return vmsh_error_set(err, -EIO, "reading %s returned more than asked", path);
    }
    memcpy(buf, data, n);
    free(data);
    *got = n;
    return 0;
}

static const files_src_ops guestfs_src_ops = {g_list, g_stat, g_read};

/* /dev/sdb1 -> "vdb" when the second disk added was vdb: messages name
 * the VM's disks, not the appliance's devices */
static const char *disk_of(const vmsh_files *f, const char *dev)
{
    if (strncmp(dev, "/dev/sd", 7) != 0 || dev[7] < 'a' || dev[7] > 'z')
        return NULL;
    size_t i = (size_t)(dev[7] - 'a');
    if (dev[8] >= 'a' && dev[8] <= 'z')
        return NULL; /* 27 disks and more: no name */
    if (i >= vmsh_serve_session_count(f->ss))
        return NULL;
    vmsh_serve_export x;
    vmsh_serve_session_export(f->ss, i, &x);
    return x.disk;
}

static int add_mount(vmsh_files *f, const char *dev, const char *type, const char *mp)
{
    const char *disk = disk_of(f, dev);
    char *more = NULL;
    int r =
        asprintf(&more, "%s%s%s (%s%s%s) at %s", f->mounts ? f->mounts : "", f->mounts ? ", " : "",
                 dev, type ? type : "?", disk ? ", disk " : "", disk ? disk : "", mp);
    if (r < 0)
        return -ENOMEM;
    free(f->mounts);
    f->mounts = more;
    return 0;
}

static int mount_one(vmsh_files *f, const char *dev, const char *mp, vmsh_error **err)
{
    _cleanup_free_ char *type = guestfs_vfs_type(f->g, dev);
    if (guestfs_mount_ro(f->g, dev, mp) < 0) {
        const char *disk = disk_of(f, dev);
        const char *m = guestfs_last_error(f->g);
        return vmsh_error_set(err, -EIO,
                              "cannot open the filesystem %s (%s%s%s) of VM in backup %s: %s; "
                              "the filesystem is damaged or of a kind libguestfs cannot read "
                              "(nothing was mounted on this host)",
                              dev, type && *type ? type : "unknown content", disk ? ", disk " : "",
                              disk ? disk : "", f->backup_id, m ? m : "mount failed");
    }
    return add_mount(f, dev, type, mp) < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

static int cmp_mp(const void *a, const void *b)
{
    /* parents before children: "/" before "/srv" before "/srv/data" */
    const char *const *x = a, *const *y = b;
    size_t lx = strlen(x[0]), ly = strlen(y[0]);
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x[0], y[0]);
}

/* The operating system's filesystems at their mount points (its fstab as
 * inspection read it). A mount point other than / that cannot be mounted
 * is a note: the rest is still readable. */
static int mount_os(vmsh_files *f, const char *root, vmsh_error **err)
{
    char **mps = guestfs_inspect_get_mountpoints(f->g, root);
    if (!mps)
        return gerr(f->g, err, -EIO, "cannot read the mount points of", root);
    size_t n = 0;
    while (mps[n])
        n++;
    /* pairs: mount point, device */
    qsort(mps, n / 2, 2 * sizeof(char *), cmp_mp);
    int rc = 0;
    /* the root itself when its fstab does not name / (inspection lists
     * only what fstab says) */
    if (n < 2 || strcmp(mps[0], "/") != 0)
        rc = mount_one(f, root, "/", err);
    for (size_t i = 0; rc == 0 && i + 1 < n; i += 2) {
        const char *mp = mps[i], *dev = mps[i + 1];
        if (strcmp(mp, "/") != 0 && guestfs_is_dir(f->g, mp) <= 0 &&
            guestfs_mkmountpoint(f->g, mp) < 0) {
            if (f->src.note)
                f->src.note(f->src.note_opaque, mp, "its mount point cannot be made: not mounted");
            continue;
        }
        vmsh_error *e = NULL;
        rc = mount_one(f, dev, mp, &e);
        if (rc < 0 && strcmp(mp, "/") != 0) {
            if (f->src.note)
                f->src.note(f->src.note_opaque, mp, e->message);
            vmsh_error_free(e);
            rc = 0;
        } else if (rc < 0) {
            vmsh_error_propagate(err, &e);
        }
    }
    strv_free(mps);
    return rc;
}

/* "DEV (TYPE, disk vdX), ..." of what list_filesystems found */
static char *describe_fs(vmsh_files *f, char **fs, bool usable_only)
{
    char *s = NULL;
    for (size_t i = 0; fs[i] && fs[i + 1]; i += 2) {
        bool usable = strcmp(fs[i + 1], "swap") != 0 && strcmp(fs[i + 1], "unknown") != 0 &&
                      *fs[i + 1] && strncmp(fs[i + 1], "crypto_", 7) != 0;
        if (usable_only && !usable)
            continue;
        const char *disk = disk_of(f, fs[i]);
        char *more = NULL;
        if (asprintf(&more, "%s%s%s (%s%s%s)", s ? s : "", s ? ", " : "", fs[i],
                     *fs[i + 1] ? fs[i + 1] : "unknown", disk ? ", disk " : "",
                     disk ? disk : "") < 0)
            break;
        free(s);
        s = more;
    }
    return s;
}

static int mount_guest(vmsh_files *f, const vmsh_files_options *o, vmsh_error **err)
{
    char **fs = guestfs_list_filesystems(f->g);
    if (!fs)
        return gerr(f->g, err, -EIO, "cannot list the filesystems of VM", o->vm);
    int rc = 0;
    if (o->fs) {
        bool found = false;
        for (size_t i = 0; fs[i] && fs[i + 1]; i += 2)
            found = found || strcmp(fs[i], o->fs) == 0;
        _cleanup_free_ char *all = describe_fs(f, fs, false);
        rc = found ? mount_one(f, o->fs, "/", err)
                   : vmsh_error_set(err, -ENOENT,
                                    "VM %s in backup %s has no filesystem %s (there are: %s)",
                                    o->vm, f->backup_id, o->fs, all ? all : "none");
        strv_free(fs);
        return rc;
    }
    char **roots = guestfs_inspect_os(f->g);
    size_t nroots = 0;
    while (roots && roots[nroots])
        nroots++;
    if (nroots == 1) {
        rc = mount_os(f, roots[0], err);
    } else if (nroots > 1) {
        char *list = NULL;
        for (size_t i = 0; i < nroots; i++) {
            char *more = NULL;
            if (asprintf(&more, "%s%s%s", list ? list : "", list ? ", " : "", roots[i]) >= 0) {
                free(list);
                list = more;
            }
        }
        rc = vmsh_error_set(err, -EINVAL,
                            "VM %s in backup %s holds %zu operating systems (roots %s): choose "
                            "one with --fs ROOT",
                            o->vm, f->backup_id, nroots, list ? list : "?");
        free(list);
    } else {
        /* no operating system: a data disk; its one filesystem */
        _cleanup_free_ char *usable = describe_fs(f, fs, true);
        _cleanup_free_ char *all = describe_fs(f, fs, false);
        size_t n = 0;
        const char *dev = NULL;
        for (size_t i = 0; fs[i] && fs[i + 1]; i += 2) {
            const char *t = fs[i + 1];
            if (strcmp(t, "swap") != 0 && strcmp(t, "unknown") != 0 && *t &&
                strncmp(t, "crypto_", 7) != 0) {
                n++;
                dev = fs[i];
            }
        }
        if (n == 1)
            rc = mount_one(f, dev, "/", err);
        else if (n == 0)
            rc = vmsh_error_set(err, -EIO,
                                "VM %s in backup %s has no filesystem libguestfs can open (it "
                                "sees %s): damaged, encrypted or of an unknown kind",
                                o->vm, f->backup_id, all ? all : "no device");
        else
            rc = vmsh_error_set(err, -EINVAL,
                                "VM %s in backup %s has %zu filesystems and no operating system "
                                "libguestfs recognises: %s; choose one with --fs DEVICE",
                                o->vm, f->backup_id, n, usable ? usable : "?");
    }
    strv_free(roots);
    strv_free(fs);
    return rc;
}

/* libguestfs's socket directory (guestfsd.sock, console.sock): made by
 * the launch itself (mkdtemp "PARENT/libguestfsXXXXXX", PARENT being what
 * guestfs_get_sockdir returns: /tmp for root whatever the environment
 * says), removed by guestfs_close, left by a SIGKILL. No call makes it
 * earlier or names it (guestfs_get_sockdir returns PARENT only, libguestfs
 * 1.48 to today, lib/tmpdirs.c), and the launch is the longest step (TCG:
 * seconds): so a thread watches during the launch for the socket it binds
 * there (in this process with both of libguestfs's backends, launch-direct.c
 * and launch-libvirt.c; the tests run the direct one), and notes its
 * directory in the session (req_session_note_guestfs) the moment it
 * appears, before QEMU starts: a kill at any point after that leaves it to the next
 * command's sweep. Left unnoted: a kill between libguestfs's mkdtemp and
 * its bind (an empty directory, microseconds). */
typedef struct sockdir_watch {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    const char *session;
    char *parent;
    char *found; /* the thread's until joined */
} sockdir_watch;

/* how often the watcher looks: QEMU's start after the bind (its fork and
 * exec, then the appliance's boot) takes far longer */
#define SOCKDIR_POLL_NS (5 * 1000 * 1000L)

static void *sockdir_watch_run(void *opaque)
{
    sockdir_watch *w = opaque;
    while (!atomic_load(&w->stop)) {
        w->found = req_guestfs_own_sockdir(w->parent);
        if (w->found) {
            req_session_note_guestfs(w->session, w->found);
            break;
        }
        struct timespec ts = {0, SOCKDIR_POLL_NS};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void sockdir_watch_start(sockdir_watch *w, guestfs_h *g, const char *session)
{
    w->session = session;
    w->parent = guestfs_get_sockdir(g);
    atomic_init(&w->stop, false);
    /* every signal blocked in the thread: the caller's handlers (Ctrl-C)
     * run in the caller's thread, as before */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    w->running = w->parent && pthread_create(&w->thread, NULL, sockdir_watch_run, w) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Ends the watch; once launched, notes the directory if the thread did not
 * see it (a missed poll: the launch's sockets are still bound in it). */
static void sockdir_watch_end(sockdir_watch *w, bool launched)
{
    if (w->running) {
        atomic_store(&w->stop, true);
        pthread_join(w->thread, NULL);
        w->running = false;
    }
    if (launched && !w->found && w->parent && (w->found = req_guestfs_own_sockdir(w->parent)))
        req_session_note_guestfs(w->session, w->found);
    free(w->found);
    free(w->parent);
    w->found = w->parent = NULL;
}

int vmsh_files_open(vmsh_files **out, vmsh_repo *repo, const vmsh_files_options *o,
                    vmsh_error **err)
{
    *out = NULL;
    vmsh_files *f = calloc(1, sizeof(*f));
    if (!f)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    f->src = (files_src){&guestfs_src_ops, NULL, o->note, o->opaque};
    vmsh_serve_options so = {
        .repo_path = o->repo_path,
        .key_file = o->key_file,
        .backup = o->backup,
        .vm = o->vm,
        .disk = o->disk,
    };
    /* the backup, VM and disks resolved, every disk's index read, before
     * anything starts */
    int rc = vmsh_serve_session_open(&f->ss, repo, &so, err);
    if (rc == 0 && !(f->backup_id = strdup(vmsh_serve_session_backup_id(f->ss))))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (rc == 0)
        rc = vmsh_serve_session_start(f->ss, err);
    if (rc == 0) {
        /* the session blocks the stop signals for its sigwait, which
         * files has none of: Ctrl-C must reach the caller's handler */
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, SIGINT);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGHUP);
        sigprocmask(SIG_UNBLOCK, &stop, NULL);
    }
    if (rc == 0) {
        /* the environment is read (LIBGUESTFS_BACKEND_SETTINGS=force_tcg
         * where KVM does not work; docs/cli.md); errors come back to us,
         * never printed by libguestfs */
        f->g = guestfs_create();
        if (!f->g)
            rc = vmsh_error_set(err, -ENOMEM, "cannot create a libguestfs handle");
        else
            guestfs_set_error_handler(f->g, NULL, NULL);
    }
    /* libguestfs's temporary directory (the drives' overlays) in the
     * session's: removed with it, by the next command if we are killed */
    const char *sdir = rc == 0 ? req_serve_session_dir(f->ss) : NULL;
    if (sdir && guestfs_set_tmpdir(f->g, sdir) < 0)
        rc = gerr(f->g, err, -EIO, "cannot set libguestfs's temporary directory", sdir);
    size_t n = rc == 0 ? vmsh_serve_session_count(f->ss) : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        vmsh_serve_export x;
        vmsh_serve_session_export(f->ss, i, &x);
        _cleanup_free_ char *server = NULL;
        if (asprintf(&server, "unix:%s", x.socket) < 0) {
            server = NULL;
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        char *servers[] = {server, NULL};
        /* read-only: libguestfs puts a throw-away overlay in front, so
         * even a journal replay inside the appliance writes nothing back */
        if (guestfs_add_drive_opts(f->g, "", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1,
                                   GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                   GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd",
                                   GUESTFS_ADD_DRIVE_OPTS_SERVER, servers, -1) < 0)
            rc = gerr(f->g, err, -EIO, "cannot add disk", x.disk);
    }
    sockdir_watch sw = {0};
    if (rc == 0 && sdir)
        sockdir_watch_start(&sw, f->g, sdir);
    if (rc == 0 && guestfs_launch(f->g) < 0)
        rc = gerr(f->g, err, -EIO,
                  "cannot start libguestfs's appliance (see libguestfs-test-tool; where KVM does "
                  "not work, LIBGUESTFS_BACKEND_SETTINGS=force_tcg)",
                  NULL);
    if (sdir)
        sockdir_watch_end(&sw, rc == 0);
    f->src.opaque = f->g;
    if (rc == 0)
        rc = mount_guest(f, o, err);
    if (rc < 0) {
        vmsh_files_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

const char *vmsh_files_backup_id(const vmsh_files *f)
{
    return f->backup_id;
}

const char *vmsh_files_mounts(const vmsh_files *f)
{
    return f->mounts ? f->mounts : "";
}

int vmsh_files_list(vmsh_files *f, const char *path, bool recursive, vmsh_files_entry_fn cb,
                    void *opaque, vmsh_error **err)
{
    return files_tree_list(&f->src, path, recursive, cb, opaque, err);
}

int vmsh_files_get(vmsh_files *f, const char *const *paths, size_t n,
                   const vmsh_files_get_options *go, vmsh_files_stats *stats, vmsh_error **err)
{
    return files_tree_get(&f->src, paths, n, go, stats, err);
}

void vmsh_files_free(vmsh_files *f)
{
    if (!f)
        return;
    if (f->g) {
        /* shutdown first: close alone would not report, and the appliance
         * must be gone before its servers are */
        guestfs_shutdown(f->g);
        guestfs_close(f->g);
    }
    vmsh_serve_session_free(f->ss);
    free(f->backup_id);
    free(f->mounts);
    free(f);
}
