/* cmd_serve.c - `vmshadow serve BACKUP VM [DISK] [--socket PATH]` (issue 23
 * point 1): serves disks of a backup read-only over NBD on unix sockets, one
 * nbdkit process per disk running vmshadow's plugin (src/nbdkit), until
 * SIGINT or SIGTERM. Any NBD client (qemu-img, nbdinfo, nbdcopy, libnbd,
 * libguestfs, a VM's backing file) reads the bytes `extract` would write.
 *
 * The start/stop of one server (vmsh_cli_serve_start/_stop) is apart from
 * the command so that instant restore and `files` can serve a disk for the
 * life of their own work. */
#include "cli.h"

#include <vmshadow/repo/reader.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PLUGIN_NAME "nbdkit-vmshadow-plugin.so"
/* nbdkit opens the repository and loads its chunk map before it listens:
 * seconds for a large repository */
#define READY_TIMEOUT_MS 120000

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow serve [--socket PATH] [--force] BACKUP VM [DISK]\n"
               "\n"
               "Serves the disks of VM in BACKUP (an ID, a unique prefix or 'latest'), or\n"
               "only DISK (its target, e.g. vda), read-only over NBD on unix sockets until\n"
               "interrupted (SIGINT or SIGTERM), printing each disk's socket and NBD URI\n"
               "(nbd+unix:///?socket=PATH). Holds the repository's read lock: gc refuses\n"
               "meanwhile. Runs nbdkit with vmshadow's plugin.\n"
               "\n"
               "Options:\n"
               "  --socket PATH   the socket of the one disk served (default: DISK.sock in\n"
               "                  a new private directory, removed at the end)\n"
               "  --force         replace a socket left at PATH by an earlier run\n");
}

const struct option vmsh_cli_opts_serve[] = {
    {"socket", required_argument, NULL, 's'},
    {"force", no_argument, NULL, 'f'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

void vmsh_cli_disks_free(vmsh_cli_disk *d, size_t n)
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

int vmsh_cli_backup_disks(const char *document, const char *backup_id, const char *vm,
                          const char *disk, vmsh_cli_disk **out, size_t *n_out, vmsh_error **err)
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
    vmsh_cli_disk *d = vmsh_calloc_array(nf ? nf : 1, sizeof(*d));
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
        vmsh_cli_disks_free(d, n);
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
static bool listening(const char *path)
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

int vmsh_cli_serve_start(vmsh_cli *cli, const char *backup_id, const char *file,
                         const char *socket_path, pid_t *pid_out, vmsh_error **err)
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
    _cleanup_free_ char *repo = realpath(cli->repo, NULL);
    const char *key = vmsh_cli_key_file(cli);
    _cleanup_free_ char *key_abs = key ? realpath(key, NULL) : NULL;
    if (!repo)
        return vmsh_error_set(err, -errno, "cannot resolve %s: %s", cli->repo, strerror(errno));
    if (key && !key_abs)
        return vmsh_error_set(err, -errno, "cannot resolve key file %s: %s", key, strerror(errno));
    _cleanup_free_ char *a_repo = NULL, *a_backup = NULL, *a_file = NULL, *a_key = NULL;
    if (asprintf(&a_repo, "repo=%s", repo) < 0 || asprintf(&a_backup, "backup=%s", backup_id) < 0 ||
        asprintf(&a_file, "file=%s", file) < 0 ||
        (key_abs && asprintf(&a_key, "key-file=%s", key_abs) < 0))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* the passphrase never goes on a command line (ps shows it): the key
     * file's path does */
    char *argv[] = {"nbdkit",     "--foreground", "--exit-with-parent",
                    "--readonly", "--unix",       (char *)socket_path,
                    plugin,       a_repo,         a_backup,
                    a_file,       a_key,          NULL};
    pid_t pid = fork();
    if (pid < 0)
        return vmsh_error_set(err, -errno, "cannot start nbdkit: %s", strerror(errno));
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(STDERR_FILENO, STDOUT_FILENO); /* stdout is ours (--json) */
        execvp("nbdkit", argv);
        fprintf(stderr, "vmshadow: cannot run nbdkit: %s%s\n", strerror(errno),
                errno == ENOENT ? " (install nbdkit)" : "");
        _exit(127);
    }
    for (long waited = 0;; waited += 20) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return vmsh_error_set(err, -EIO,
                                  "nbdkit serving %s stopped before it was ready (exit status "
                                  "%d); its message is above",
                                  file, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        if (listening(socket_path))
            break;
        if (waited >= READY_TIMEOUT_MS) {
            vmsh_cli_serve_stop(pid, socket_path);
            return vmsh_error_set(err, -ETIMEDOUT, "nbdkit serving %s did not listen on %s in %d s",
                                  file, socket_path, READY_TIMEOUT_MS / 1000);
        }
        sleep_ms(20);
    }
    vmsh_cli_debug(cli, "nbdkit (PID %ld) serves %s on %s", (long)pid, file, socket_path);
    *pid_out = pid;
    return 0;
}

void vmsh_cli_serve_stop(pid_t pid, const char *socket_path)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        int st;
        for (int i = 0; i < 500; i++) { /* 10 s, then SIGKILL */
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid || (w < 0 && errno == ECHILD))
                goto reaped;
            sleep_ms(20);
        }
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
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

typedef struct served {
    vmsh_reader *reader; /* held open: the read lock and an early check */
    char *socket, *uri;
    pid_t pid; /* 0 once reaped */
    bool ours; /* started: the socket is ours to remove */
} served;

int vmsh_cmd_serve(vmsh_cli *cli, int argc, char **argv)
{
    const char *sock_opt = NULL;
    bool force = false;
    int c;
    while ((c = getopt_long(argc, argv, "s:fh", vmsh_cli_opts_serve, NULL)) != -1) {
        switch (c) {
        case 's':
            sock_opt = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "serve", "unknown option '%s'", argv[optind - 1]);
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || nargs > 3)
        return vmsh_cli_usage_error(cli, "serve", "needs BACKUP VM [DISK]");
    if (sock_opt && !*sock_opt)
        return vmsh_cli_usage_error(cli, "serve", "--socket needs a path");
    const char *spec = argv[optind], *vm = argv[optind + 1];
    const char *disk = nargs == 3 ? argv[optind + 2] : NULL;

    vmsh_error *err = NULL;
    vmsh_repo *repo = NULL;
    vmsh_backup_info *b = NULL;
    vmsh_cli_disk *disks = NULL;
    size_t n = 0;
    served *sv = NULL;
    char *dir = NULL;
    int rc = vmsh_cli_repo_open(cli, &repo, &err);
    if (rc == 0)
        rc = vmsh_repo_backup_info(repo, spec, &b, &err);
    if (rc == 0)
        rc = vmsh_cli_backup_disks(b->document, b->id, vm, disk, &disks, &n, &err);
    if (rc == 0 && sock_opt && n > 1)
        rc = vmsh_error_set(&err, -EINVAL,
                            "VM %s has %zu disks in backup %s: --socket serves one; name the "
                            "DISK, or leave --socket out",
                            vm, n, b->id);
    if (rc == 0 && !(sv = vmsh_calloc_array(n, sizeof(*sv))))
        rc = vmsh_error_set(&err, -ENOMEM, "out of memory");
    /* every disk opened first: a damaged index, a held lock or a missing
     * file fails before anything is started */
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = vmsh_reader_open(&sv[i].reader, repo, b->id, disks[i].file, NULL, &err);
    if (rc == 0 && sock_opt)
        rc = check_socket_path(sock_opt, force, &err);
    if (rc == 0 && !sock_opt) {
        const char *base = getenv("XDG_RUNTIME_DIR");
        if (asprintf(&dir, "%s/vmshadow-serve.XXXXXX", base && *base ? base : "/tmp") < 0)
            dir = NULL;
        if (!dir || !mkdtemp(dir)) {
            rc =
                vmsh_error_set(&err, dir ? -errno : -ENOMEM, "cannot create a socket directory: %s",
                               strerror(dir ? errno : ENOMEM));
            free(dir);
            dir = NULL;
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (sock_opt && sock_opt[0] != '/') { /* the URI must work from anywhere */
            char cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof(cwd)) || asprintf(&sv[i].socket, "%s/%s", cwd, sock_opt) < 0)
                sv[i].socket = NULL;
        } else {
            sv[i].socket = sock_opt ? strdup(sock_opt) : socket_name(dir, disks[i].disk, i);
        }
        if (!sv[i].socket || asprintf(&sv[i].uri, "nbd+unix:///?socket=%s", sv[i].socket) < 0) {
            sv[i].uri = NULL;
            rc = vmsh_error_set(&err, -ENOMEM, "out of memory");
        }
    }
    /* SIGINT/SIGTERM/SIGHUP end serving cleanly, SIGCHLD says a server
     * died: all taken synchronously below (the children unblock them) */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if ((rc = vmsh_cli_serve_start(cli, b->id, disks[i].file, sv[i].socket, &sv[i].pid, &err)) <
            0)
            vmsh_error_prefix(&err, "disk %s", vmsh_cli_safe(cli, disks[i].disk));
        else
            sv[i].ours = true;
    if (rc == 0) {
        if (cli->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "backup", json_object_new_string(b->id));
            json_object_object_add(o, "vm", json_object_new_string(vm));
            json_object *arr = json_object_new_array();
            for (size_t i = 0; i < n; i++) {
                json_object *d = json_object_new_object();
                json_object_object_add(d, "disk", json_object_new_string(disks[i].disk));
                json_object_object_add(d, "file", json_object_new_string(disks[i].file));
                json_object_object_add(
                    d, "size", json_object_new_int64((int64_t)vmsh_reader_size(sv[i].reader)));
                json_object_object_add(d, "socket", json_object_new_string(sv[i].socket));
                json_object_object_add(d, "uri", json_object_new_string(sv[i].uri));
                json_object_object_add(d, "pid", json_object_new_int64(sv[i].pid));
                json_object_array_add(arr, d);
            }
            json_object_object_add(o, "disks", arr);
            vmsh_cli_print_json(o);
        } else {
            printf("serving backup %s, VM %s, read-only (stop with Ctrl-C or SIGTERM):\n", b->id,
                   vmsh_cli_safe(cli, vm));
            for (size_t i = 0; i < n; i++) {
                char size[32];
                vmsh_cli_format_bytes(vmsh_reader_size(sv[i].reader), size, sizeof(size));
                printf("  %s  %s  %s\n", vmsh_cli_safe(cli, disks[i].disk), size,
                       vmsh_cli_safe(cli, sv[i].uri));
            }
        }
        fflush(stdout);
        for (;;) {
            siginfo_t si;
            int sig = sigwaitinfo(&set, &si);
            if (sig < 0)
                continue; /* EINTR */
            if (sig != SIGCHLD) {
                vmsh_cli_info(cli, "stopping (signal %d)", sig);
                break;
            }
            size_t dead = n;
            int st = 0;
            for (size_t i = 0; i < n && dead == n; i++)
                if (waitpid(sv[i].pid, &st, WNOHANG) == sv[i].pid)
                    dead = i;
            if (dead == n)
                continue;
            sv[dead].pid = 0;
            rc = vmsh_error_set(&err, -EIO, "nbdkit serving disk %s stopped (exit status %d)",
                                vmsh_cli_safe(cli, disks[dead].disk),
                                WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            break;
        }
    }
    for (size_t i = 0; sv && i < n; i++) {
        if (sv[i].ours)
            vmsh_cli_serve_stop(sv[i].pid, sv[i].socket);
        vmsh_reader_free(sv[i].reader);
        free(sv[i].socket);
        free(sv[i].uri);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (dir)
        rmdir(dir);
    free(dir);
    free(sv);
    vmsh_cli_disks_free(disks, n);
    vmsh_backup_info_free(b);
    vmsh_repo_free(repo);
    return rc < 0 ? vmsh_cli_fail(cli, &err) : VMSH_EXIT_OK;
}
