/* serve.c - serving the disks of a backup read-only over NBD (issue 23
 * point 1; include/vmshadow/requestor/serve.h): nbdkit with vmshadow's
 * plugin (src/nbdkit), one process per disk on a unix socket. Used by
 * `vmshadow serve` (a session until a signal) and by instant restore (a
 * detached server per disk whose PID is journaled). */
#include "requestor_priv.h"

#include <vmshadow/repo/reader.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/serve.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <json-c/json.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#define PLUGIN_NAME "nbdkit-vmshadow-plugin.so"
/* nbdkit opens the repository and loads its chunk map before it listens:
 * seconds for a large repository */
#define READY_TIMEOUT_MS 120000

void vmsh_serve_disks_free(vmsh_serve_disk *d, size_t n)
{
    for (size_t i = 0; d && i < n; i++) {
        free(d[i].disk);
        free(d[i].file);
    }
    free(d);
}

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;
    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The VM writer's component of `vm` in a backup document (docs/formats/
 * backup-document.md: writers[].components[]), or NULL; *names collects
 * the VMs there are, for the message. */
static json_object *find_vm(json_object *doc, const char *vm, char **names)
{
    json_object *writers = get(doc, "writers");
    size_t nw = writers && json_object_is_type(writers, json_type_array)
                    ? json_object_array_length(writers)
                    : 0;
    for (size_t i = 0; i < nw; i++) {
        json_object *w = json_object_array_get_idx(writers, i);
        const char *wn = get_str(get(w, "writer"), "name");
        json_object *comps = get(w, "components");
        if (!wn || strcmp(wn, "vmshadow VM writer") != 0 || !comps ||
            !json_object_is_type(comps, json_type_array))
            continue;
        for (size_t k = 0; k < json_object_array_length(comps); k++) {
            json_object *c = json_object_array_get_idx(comps, k);
            const char *name = get_str(c, "name");
            if (!name)
                continue;
            if (strcmp(name, vm) == 0)
                return c;
            char *more = NULL;
            if (asprintf(&more, "%s%s%s", *names ? *names : "", *names ? ", " : "", name) >= 0) {
                free(*names);
                *names = more;
            }
        }
    }
    return NULL;
}

int vmsh_serve_backup_disks(const char *document, const char *backup_id, const char *vm,
                            const char *disk, vmsh_serve_disk **out, size_t *n_out,
                            vmsh_error **err)
{
    *out = NULL;
    *n_out = 0;
    json_object *doc = document ? json_tokener_parse(document) : NULL;
    if (!doc)
        return vmsh_error_set(err, -EBADMSG, "backup %s has no readable backup document",
                              backup_id);
    char *names = NULL, *disks = NULL;
    int rc = 0;
    json_object *c = find_vm(doc, vm, &names);
    json_object *files = c ? get(c, "files") : NULL;
    size_t nf =
        files && json_object_is_type(files, json_type_array) ? json_object_array_length(files) : 0;
    vmsh_serve_disk *d = vmsh_calloc_array(nf ? nf : 1, sizeof(*d));
    size_t n = 0;
    if (!d)
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    else if (!c)
        rc = vmsh_error_set(err, -ENOENT, "backup %s has no VM named \"%s\" (%s%s)", backup_id, vm,
                            names ? "it has: " : "it has no VM", names ? names : "");
    for (size_t i = 0; rc == 0 && i < nf; i++) {
        json_object *f = json_object_array_get_idx(files, i);
        const char *name = get_str(f, "name"), *kind = get_str(f, "kind");
        const char *file = get_str(get(f, "stored"), "file");
        if (!name || !kind || !file || strcmp(kind, "disk") != 0)
            continue;
        const char *target = strncmp(name, "disk/", 5) == 0 ? name + 5 : name;
        char *more = NULL;
        if (asprintf(&more, "%s%s%s", disks ? disks : "", disks ? ", " : "", target) >= 0) {
            free(disks);
            disks = more;
        }
        if (disk && strcmp(disk, target) != 0)
            continue;
        d[n].disk = strdup(target);
        d[n].file = strdup(file);
        n++;
        if (!d[n - 1].disk || !d[n - 1].file)
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if (rc == 0 && n == 0)
        rc = disk ? vmsh_error_set(err, -ENOENT, "VM %s in backup %s has no disk \"%s\" (%s%s)", vm,
                                   backup_id, disk, disks ? "its disks: " : "it has no disk",
                                   disks ? disks : "")
                  : vmsh_error_set(err, -ENOENT, "VM %s in backup %s has no disk", vm, backup_id);
    free(names);
    free(disks);
    json_object_put(doc);
    if (rc < 0) {
        vmsh_serve_disks_free(d, n);
        return rc;
    }
    *out = d;
    *n_out = n;
    return 0;
}

/* The plugin: $VMSHADOW_NBDKIT_PLUGIN, else beside the program (the build
 * tree: src/nbdkit/), else where it is installed (lib/vmshadow/). */
static char *find_plugin(void)
{
    const char *env = getenv("VMSHADOW_NBDKIT_PLUGIN");
    if (env && *env)
        return strdup(env);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = 0;
    static const char *const rel[] = {"nbdkit/" PLUGIN_NAME, "../lib/vmshadow/" PLUGIN_NAME};
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        char *p = NULL;
        if (asprintf(&p, "%s/%s", exe, rel[i]) < 0)
            return NULL;
        if (access(p, R_OK) == 0)
            return p;
        free(p);
    }
    return NULL;
}

static int try_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Whether a unix socket listens at `path` (/proc/net/unix: "Num RefCount
 * Protocol Flags Type St Inode Path", flag 0x10000 is listening): a test
 * connection would make nbdkit log a broken handshake. */
bool vmsh_serve_listening(const char *path)
{
    FILE *f = fopen("/proc/net/unix", "re");
    if (!f)
        return try_connect(path) == 0;
    char line[4096];
    bool found = false;
    size_t plen = strlen(path);
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned long flags;
        int off = 0;
        if (sscanf(line, "%*s %*s %*s %lx %*s %*s %*s %n", &flags, &off) < 1 || off == 0)
            continue;
        const char *p = line + off;
        found =
            (flags & 0x10000) && strncmp(p, path, plen) == 0 && (p[plen] == '\n' || p[plen] == 0);
    }
    fclose(f);
    return found;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* A repository location for the server's command line: a path made
 * absolute (nbdkit changes directory), a store URL as it is. */
static char *abs_location(const char *loc)
{
    if (strstr(loc, "://"))
        return strdup(loc);
    return realpath(loc, NULL);
}

static bool alive(pid_t pid)
{
    return kill(pid, 0) == 0 || errno == EPERM;
}

int vmsh_serve_start(const vmsh_serve_source *src, const char *socket_path, bool detached,
                     const char *log_path, pid_t *pid_out, vmsh_error **err)
{
    struct sockaddr_un a;
    if (strlen(socket_path) >= sizeof(a.sun_path))
        return vmsh_error_set(err, -ENAMETOOLONG,
                              "socket path %s is too long for a unix socket (at most %zu bytes)",
                              socket_path, sizeof(a.sun_path) - 1);
    _cleanup_free_ char *plugin = find_plugin();
    if (!plugin)
        return vmsh_error_set(err, -ENOENT,
                              "cannot find %s beside the program or in lib/vmshadow; set "
                              "VMSHADOW_NBDKIT_PLUGIN to its path",
                              PLUGIN_NAME);
    /* absolute: nbdkit resolves relative paths itself, but the plugin's
     * messages should name what the user gave resolved */
    _cleanup_free_ char *repo = abs_location(src->repo_path);
    const char *key = src->key_file;
    _cleanup_free_ char *key_abs = key ? realpath(key, NULL) : NULL;
    if (!repo)
        return vmsh_error_set(err, -errno, "cannot resolve %s: %s", src->repo_path,
                              strerror(errno));
    if (key && !key_abs)
        return vmsh_error_set(err, -errno, "cannot resolve key file %s: %s", key, strerror(errno));
    _cleanup_free_ char *a_repo = NULL, *a_backup = NULL, *a_file = NULL, *a_key = NULL;
    if (asprintf(&a_repo, "repo=%s", repo) < 0 ||
        asprintf(&a_backup, "backup=%s", src->backup_id) < 0 ||
        asprintf(&a_file, "file=%s", src->file) < 0 ||
        (key_abs && asprintf(&a_key, "key-file=%s", key_abs) < 0))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* the passphrase never goes on a command line (ps shows it): the key
     * file's path does */
    char *argv[16];
    size_t k = 0;
    argv[k++] = "nbdkit";
    argv[k++] = "--foreground";
    if (!detached)
        argv[k++] = "--exit-with-parent";
    argv[k++] = "--readonly";
    if (src->no_block_status)
        argv[k++] = "--no-sr"; /* no block status; why: serve.h */
    argv[k++] = "--unix";
    argv[k++] = (char *)socket_path;
    argv[k++] = plugin;
    argv[k++] = a_repo;
    argv[k++] = a_backup;
    argv[k++] = a_file;
    argv[k++] = a_key;
    argv[k] = NULL;
    /* a detached server's pid comes back through this pipe from the
     * short-lived process between us and it */
    int pfd[2] = {-1, -1};
    if (detached && pipe2(pfd, O_CLOEXEC) < 0)
        return vmsh_error_set(err, -errno, "cannot start nbdkit: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        if (detached) {
            close(pfd[0]);
            close(pfd[1]);
        }
        return vmsh_error_set(err, -e, "cannot start nbdkit: %s", strerror(e));
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (detached) {
            /* a daemon of its own: a Ctrl-C or the end of vmshadow's
             * session does not reach it; the journal names it */
            setsid();
            /* and not our child: nbdkit (1.32 at least) asks for SIGTERM
             * when its parent dies (PR_SET_PDEATHSIG) even without
             * --exit-with-parent, which stopped serving a VM's disks when
             * vmshadow ended (issue 23). Its parent is this intermediate
             * process, gone before nbdkit starts. */
            pid_t mid = getpid();
            pid_t gc = fork();
            if (gc != 0) {
                if (write(pfd[1], &gc, sizeof(gc)) != (ssize_t)sizeof(gc))
                    _exit(127);
                _exit(gc < 0 ? 127 : 0);
            }
            for (int i = 0; i < 5000 && getppid() == mid; i++)
                usleep(1000);
            int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (nul >= 0) {
                dup2(nul, STDIN_FILENO);
                dup2(nul, STDOUT_FILENO);
            }
            int logfd =
                log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : nul;
            if (logfd >= 0)
                dup2(logfd, STDERR_FILENO);
            /* the socket must be connectable by QEMU's user: the
             * directory it lies in keeps others out (instant.c) */
            umask(0);
            /* descriptors this process holds (a lab's lock, the
             * repository's lock) must not live on in the server */
            for (int fd = 3; fd < 1024; fd++)
                close(fd);
        } else {
            dup2(STDERR_FILENO, STDOUT_FILENO); /* stdout is ours (--json) */
        }
        execvp("nbdkit", argv);
        fprintf(stderr, "vmshadow: cannot run nbdkit: %s%s\n", strerror(errno),
                errno == ENOENT ? " (install nbdkit)" : "");
        _exit(127);
    }
    if (detached) {
        pid_t mid = pid;
        close(pfd[1]);
        ssize_t got;
        while ((got = read(pfd[0], &pid, sizeof(pid))) < 0 && errno == EINTR)
            ;
        close(pfd[0]);
        int st;
        while (waitpid(mid, &st, 0) < 0 && errno == EINTR)
            ;
        if (got != (ssize_t)sizeof(pid) || pid <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return vmsh_error_set(err, -EIO, "cannot start nbdkit serving %s in the background",
                                  src->file);
    }
    for (long waited = 0;; waited += 20) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w < 0 && errno == ECHILD && !alive(pid)) { /* detached: not our child */
            w = pid;
            st = 0x7f00; /* status unknown: its message is in the log */
        }
        if (w == pid)
            return vmsh_error_set(err, -EIO,
                                  "nbdkit serving %s stopped before it was ready (exit status "
                                  "%d); its message is %s",
                                  src->file, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st),
                                  detached && log_path ? log_path : "above");
        if (vmsh_serve_listening(socket_path))
            break;
        if (waited >= READY_TIMEOUT_MS) {
            vmsh_serve_stop(pid, socket_path);
            return vmsh_error_set(err, -ETIMEDOUT, "nbdkit serving %s did not listen on %s in %d s",
                                  src->file, socket_path, READY_TIMEOUT_MS / 1000);
        }
        sleep_ms(20);
    }
    *pid_out = pid;
    return 0;
}

void vmsh_serve_stop(pid_t pid, const char *socket_path)
{
    if (pid > 0 && alive(pid)) {
        kill(pid, SIGTERM);
        int st;
        for (int i = 0; i < 500; i++) { /* 10 s, then SIGKILL */
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid)
                goto reaped;
            /* not our child (started by an earlier vmshadow): poll */
            if (w < 0 && errno == ECHILD && !alive(pid))
                goto reaped;
            sleep_ms(20);
        }
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        for (int i = 0; i < 250 && alive(pid); i++)
            sleep_ms(20);
    }
reaped:
    if (socket_path)
        unlink(socket_path); /* nbdkit removes it on a clean exit; not after SIGKILL */
}

/* Refuses a socket path that exists, unless --force and it is a socket (a
 * leftover of a killed run): never removes anything else. */
static int check_socket_path(const char *path, bool force, vmsh_error **err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT
                   ? 0
                   : vmsh_error_set(err, -errno, "cannot use %s: %s", path, strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return vmsh_error_set(err, -EEXIST, "%s exists and is not a socket; not replacing it",
                              path);
    if (!force)
        return vmsh_error_set(err, -EEXIST, "%s exists; give --force to replace it", path);
    if (try_connect(path) == 0)
        return vmsh_error_set(err, -EBUSY, "%s is in use: something serves on it", path);
    if (unlink(path) < 0)
        return vmsh_error_set(err, -errno, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

/* A socket file name from a disk target: safe characters only. */
static char *socket_name(const char *dir, const char *disk, size_t i)
{
    char *p = NULL;
    bool safe = *disk && strlen(disk) <= 32 && disk[0] != '.';
    for (const char *c = disk; safe && *c; c++)
        safe = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
               *c == '-' || *c == '_' || *c == '.';
    int r = safe ? asprintf(&p, "%s/%s.sock", dir, disk) : asprintf(&p, "%s/disk%zu.sock", dir, i);
    return r < 0 ? NULL : p;
}

struct vmsh_serve_session {
    char *backup_id;
    vmsh_serve_disk *disks;
    size_t n;
    struct served {
        vmsh_reader *reader; /* held open: the read lock and an early check */
        char *socket, *uri;
        pid_t pid; /* 0 once reaped */
        bool ours; /* started: the socket is ours to remove */
    } * sv;
    char *dir;  /* the private socket directory (rundir.c), or NULL */
    int dir_fd; /* its lock, held while the session lives */
    char *repo_path, *key_file;
    sigset_t set, old;
    bool masked;
};

int vmsh_serve_session_open(vmsh_serve_session **out, vmsh_repo *repo,
                            const vmsh_serve_options *opts, vmsh_error **err)
{
    *out = NULL;
    vmsh_serve_session *s = calloc(1, sizeof(*s));
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->dir_fd = -1;
    vmsh_backup_info *b = NULL;
    int rc = 0;
    s->repo_path = strdup(opts->repo_path);
    s->key_file = opts->key_file ? strdup(opts->key_file) : NULL;
    if (!s->repo_path || (opts->key_file && !s->key_file))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (rc == 0)
        rc = vmsh_repo_backup_info(repo, opts->backup, &b, err);
    if (rc == 0 && !(s->backup_id = strdup(b->id)))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (rc == 0)
        rc = vmsh_serve_backup_disks(b->document, b->id, opts->vm, opts->disk, &s->disks, &s->n,
                                     err);
    if (rc == 0 && opts->socket && s->n > 1)
        rc = vmsh_error_set(err, -EINVAL,
                            "VM %s has %zu disks in backup %s: --socket serves one; name the "
                            "DISK, or leave --socket out",
                            opts->vm, s->n, b->id);
    if (rc == 0 && !(s->sv = vmsh_calloc_array(s->n, sizeof(*s->sv))))
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    /* every disk opened first: a damaged index, a held lock or a missing
     * file fails before anything is started */
    for (size_t i = 0; rc == 0 && i < s->n; i++)
        rc = vmsh_reader_open(&s->sv[i].reader, repo, b->id, s->disks[i].file, NULL, err);
    if (rc == 0 && opts->socket)
        rc = check_socket_path(opts->socket, opts->force, err);
    /* in the run directory, locked while we live: the next command
     * removes it (and what libguestfs left in it) when we were killed */
    if (rc == 0 && !opts->socket)
        rc = req_session_create(&s->dir, &s->dir_fd, err);
    for (size_t i = 0; rc == 0 && i < s->n; i++) {
        struct served *v = &s->sv[i];
        if (opts->socket && opts->socket[0] != '/') { /* the URI must work from anywhere */
            char cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof(cwd)) || asprintf(&v->socket, "%s/%s", cwd, opts->socket) < 0)
                v->socket = NULL;
        } else {
            v->socket =
                opts->socket ? strdup(opts->socket) : socket_name(s->dir, s->disks[i].disk, i);
        }
        if (!v->socket || asprintf(&v->uri, "nbd+unix:///?socket=%s", v->socket) < 0) {
            v->uri = NULL;
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        }
    }
    vmsh_backup_info_free(b);
    if (rc < 0) {
        vmsh_serve_session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int vmsh_serve_session_start(vmsh_serve_session *s, vmsh_error **err)
{
    /* SIGINT/SIGTERM/SIGHUP end serving cleanly, SIGCHLD says a server
     * died: all taken synchronously by _wait (the children unblock them) */
    sigemptyset(&s->set);
    sigaddset(&s->set, SIGINT);
    sigaddset(&s->set, SIGTERM);
    sigaddset(&s->set, SIGHUP);
    sigaddset(&s->set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &s->set, &s->old);
    s->masked = true;
    for (size_t i = 0; i < s->n; i++) {
        vmsh_serve_source src = {s->repo_path, s->key_file, s->backup_id, s->disks[i].file, false};
        int rc = vmsh_serve_start(&src, s->sv[i].socket, false, NULL, &s->sv[i].pid, err);
        if (rc < 0) {
            vmsh_error_prefix(err, "disk %s", s->disks[i].disk);
            return rc;
        }
        s->sv[i].ours = true;
    }
    return 0;
}

const char *req_serve_session_dir(const vmsh_serve_session *s)
{
    return s->dir;
}

const char *vmsh_serve_session_backup_id(const vmsh_serve_session *s)
{
    return s->backup_id;
}

size_t vmsh_serve_session_count(const vmsh_serve_session *s)
{
    return s->n;
}

void vmsh_serve_session_export(const vmsh_serve_session *s, size_t i, vmsh_serve_export *out)
{
    *out = (vmsh_serve_export){
        .disk = s->disks[i].disk,
        .file = s->disks[i].file,
        .socket = s->sv[i].socket,
        .uri = s->sv[i].uri,
        .size = vmsh_reader_size(s->sv[i].reader),
        .pid = s->sv[i].pid,
    };
}

int vmsh_serve_session_wait(vmsh_serve_session *s, int *sig_out, vmsh_error **err)
{
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&s->set, &si);
        if (sig < 0)
            continue; /* EINTR */
        if (sig != SIGCHLD) {
            *sig_out = sig;
            return 0;
        }
        size_t dead = s->n;
        int st = 0;
        for (size_t i = 0; i < s->n && dead == s->n; i++)
            if (s->sv[i].pid > 0 && waitpid(s->sv[i].pid, &st, WNOHANG) == s->sv[i].pid)
                dead = i;
        if (dead == s->n)
            continue;
        s->sv[dead].pid = 0;
        return vmsh_error_set(err, -EIO, "nbdkit serving disk %s stopped (exit status %d)",
                              s->disks[dead].disk,
                              WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
}

void vmsh_serve_session_free(vmsh_serve_session *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->sv && i < s->n; i++) {
        if (s->sv[i].ours)
            vmsh_serve_stop(s->sv[i].pid, s->sv[i].socket);
        vmsh_reader_free(s->sv[i].reader);
        free(s->sv[i].socket);
        free(s->sv[i].uri);
    }
    if (s->masked)
        sigprocmask(SIG_SETMASK, &s->old, NULL);
    req_session_remove(s->dir, s->dir_fd);
    free(s->dir);
    free(s->sv);
    vmsh_serve_disks_free(s->disks, s->n);
    free(s->backup_id);
    free(s->repo_path);
    free(s->key_file);
    free(s);
}

pid_t vmsh_serve_find(const char *socket_path)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    pid_t found = 0;
    struct dirent *de;
    while (!found && (de = readdir(d))) {
        char *end = NULL;
        long pid = strtol(de->d_name, &end, 10);
        if (pid <= 0 || *end)
            continue;
        /* the whole command line (a zombie has none): "nbdkit" ...
         * "--unix" SOCKET ... */
        char **av = NULL;
        int n = vmsh_proc_cmdline((pid_t)pid, &av);
        if (n > 0 && (strcmp(av[0], "nbdkit") == 0 || strstr(av[0], "/nbdkit")))
            for (int i = 0; i + 1 < n && !found; i++)
                if (strcmp(av[i], "--unix") == 0 && strcmp(av[i + 1], socket_path) == 0)
                    found = (pid_t)pid;
        vmsh_proc_argv_free(av);
    }
    closedir(d);
    return found;
}
