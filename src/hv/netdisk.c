/* netdisk.c - network disks opened by a QEMU of vmshadow's own
 * (include/vmshadow/hv/netdisk.h): the definition's source as a QEMU
 * "json:" filename, and a private read-only qemu-nbd serving it. */
#include <vmshadow/hv/netdisk.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Formats a QEMU of ours opens on top of a network source: those that need
 * no secret of their own and no further file (luks would need its key). */
static bool format_ok(const char *f)
{
    static const char *const ok[] = {"raw", "qcow2", "qed", "vmdk", "vdi", "vpc", "vhdx"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strcmp(f, ok[i]) == 0)
            return true;
    return false;
}

static bool nonempty(const char *s)
{
    return s && *s;
}

static int add_str(json_object *o, const char *k, const char *v)
{
    json_object *s = json_object_new_string(v);
    if (!s)
        return -ENOMEM;
    json_object_object_add(o, k, s);
    return 0;
}

/* {"type": "inet", "host": H, "port": P} or {"type": "unix", "path": S};
 * `typed`: with the "type" member (SocketAddress), else InetSocketAddressBase. */
static json_object *server(const vmsh_domxml_host *h, const char *def_port, bool typed)
{
    json_object *o = json_object_new_object();
    bool unix_sock = h->transport && strcmp(h->transport, "unix") == 0;
    int r = o ? 0 : -ENOMEM;
    if (r == 0 && unix_sock)
        r = (typed ? add_str(o, "type", "unix") : 0) | add_str(o, "path", h->socket);
    else if (r == 0)
        r = (typed ? add_str(o, "type", "inet") : 0) | add_str(o, "host", h->name) |
            add_str(o, "port", nonempty(h->port) ? h->port : def_port);
    if (r < 0) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

static int bad(vmsh_error **err, const vmsh_domxml_disk *d, const char *what)
{
    return vmsh_error_set(err, -EINVAL, "network disk %s (%s): %s", d->target ? d->target : "?",
                          d->source ? d->source : "?", what);
}

/* Every host of the definition must be usable as given: an address (or a
 * socket path for transport='unix'), never guessed. */
static int check_hosts(const vmsh_domxml_disk *d, bool unix_ok, vmsh_error **err)
{
    for (size_t i = 0; i < d->n_hosts; i++) {
        const vmsh_domxml_host *h = &d->hosts[i];
        bool unix_sock = h->transport && strcmp(h->transport, "unix") == 0;
        if (h->transport && !unix_sock && strcmp(h->transport, "tcp") != 0)
            return vmsh_error_set(err, -ENOTSUP,
                                  "network disk %s: transport '%s' is not opened by vmshadow's "
                                  "own QEMU (tcp and unix are)",
                                  d->target ? d->target : "?", h->transport);
        if (unix_sock && (!unix_ok || !nonempty(h->socket) || h->socket[0] != '/'))
            return bad(err, d, "a unix-socket host without an absolute socket path");
        if (!unix_sock && !nonempty(h->name))
            return bad(err, d, "a host without a name");
    }
    return 0;
}

static int rbd_node(const vmsh_domxml_disk *d, json_object *f, vmsh_error **err)
{
    /* name='POOL/IMAGE' or 'POOL/NAMESPACE/IMAGE', an old-style '@SNAP'
     * on the image */
    const char *name = d->net_name;
    if (!nonempty(name))
        return bad(err, d, "an RBD source without pool/image");
    _cleanup_free_ char *copy = strdup(name);
    if (!copy)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    char *parts[3] = {0};
    size_t n = 0;
    for (char *save = NULL, *p = strtok_r(copy, "/", &save); p; p = strtok_r(NULL, "/", &save)) {
        if (n == 3)
            return bad(err, d, "an RBD name that is not pool/image or pool/namespace/image");
        parts[n++] = p;
    }
    if (n < 2 || strstr(name, "//") || name[strlen(name) - 1] == '/')
        return bad(err, d, "an RBD name that is not pool/image or pool/namespace/image");
    char *image = parts[n - 1], *snap = strchr(image, '@');
    if (snap)
        *snap++ = '\0';
    if (!*image)
        return bad(err, d, "an RBD source without an image name");
    if (nonempty(d->net_snapshot))
        snap = d->net_snapshot;
    int r = add_str(f, "driver", "rbd") | add_str(f, "pool", parts[0]) | add_str(f, "image", image);
    if (n == 3)
        r |= add_str(f, "namespace", parts[1]);
    if (nonempty(snap))
        r |= add_str(f, "snapshot", snap);
    if (nonempty(d->net_config))
        r |= add_str(f, "conf", d->net_config);
    if (nonempty(d->auth_user))
        r |= add_str(f, "user", d->auth_user);
    if ((r = r ? -ENOMEM : check_hosts(d, false, err)) < 0)
        return r == -ENOMEM ? vmsh_error_set(err, -ENOMEM, "out of memory") : r;
    if (d->n_hosts > 0) {
        json_object *a = json_object_new_array();
        json_object_object_add(f, "server", a);
        for (size_t i = 0; a && i < d->n_hosts; i++) {
            json_object *s = server(&d->hosts[i], "6789", false);
            if (!s || json_object_array_add(a, s) < 0)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int nbd_node(const vmsh_domxml_disk *d, json_object *f, vmsh_error **err)
{
    int r = check_hosts(d, true, err);
    if (r < 0)
        return r;
    if (d->n_hosts != 1)
        return bad(err, d, "an NBD source needs exactly one host");
    json_object *s = server(&d->hosts[0], "10809", true);
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object_object_add(f, "server", s);
    r = add_str(f, "driver", "nbd");
    if (nonempty(d->net_name))
        r |= add_str(f, "export", d->net_name);
    return r ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

static int iscsi_node(const vmsh_domxml_disk *d, json_object *f, vmsh_error **err)
{
    if (nonempty(d->auth_user))
        return vmsh_error_set(err, -ENOTSUP,
                              "network disk %s: an iSCSI disk with CHAP credentials (user %s) "
                              "needs libvirt's secret, which vmshadow does not read",
                              d->target ? d->target : "?", d->auth_user);
    int r = check_hosts(d, false, err);
    if (r < 0)
        return r;
    /* name='IQN/LUN' (LUN 0 when absent) */
    const char *slash = d->net_name ? strrchr(d->net_name, '/') : NULL;
    if (d->n_hosts != 1 || !nonempty(d->net_name) || slash == d->net_name)
        return bad(err, d, "an iSCSI source needs one host and a target name");
    _cleanup_free_ char *iqn =
        slash ? strndup(d->net_name, (size_t)(slash - d->net_name)) : strdup(d->net_name);
    long lun = 0;
    if (slash) {
        char *end = NULL;
        errno = 0;
        lun = strtol(slash + 1, &end, 10);
        if (errno || !slash[1] || *end || lun < 0 || lun > 16383)
            return bad(err, d, "an iSCSI LUN that is not a number");
    }
    _cleanup_free_ char *portal = NULL;
    const vmsh_domxml_host *h = &d->hosts[0];
    if (!iqn || asprintf(&portal, "%s:%s", h->name, nonempty(h->port) ? h->port : "3260") < 0) {
        portal = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int q = add_str(f, "driver", "iscsi") | add_str(f, "transport", "tcp") |
            add_str(f, "portal", portal) | add_str(f, "target", iqn);
    json_object_object_add(f, "lun", json_object_new_int64(lun));
    return q ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

static int gluster_node(const vmsh_domxml_disk *d, json_object *f, vmsh_error **err)
{
    int r = check_hosts(d, true, err);
    if (r < 0)
        return r;
    /* name='VOLUME/PATH' */
    const char *slash = d->net_name ? strchr(d->net_name, '/') : NULL;
    if (d->n_hosts == 0 || !slash || slash == d->net_name || !slash[1])
        return bad(err, d, "a Gluster source needs a host and volume/path");
    _cleanup_free_ char *vol = strndup(d->net_name, (size_t)(slash - d->net_name));
    if (!vol)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int q =
        add_str(f, "driver", "gluster") | add_str(f, "volume", vol) | add_str(f, "path", slash + 1);
    json_object *a = json_object_new_array();
    json_object_object_add(f, "server", a);
    for (size_t i = 0; a && i < d->n_hosts; i++) {
        json_object *s = server(&d->hosts[i], "24007", true);
        if (!s || json_object_array_add(a, s) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return q || !a ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

static int curl_node(const vmsh_domxml_disk *d, json_object *f, vmsh_error **err)
{
    int r = check_hosts(d, false, err);
    if (r < 0)
        return r;
    if (d->n_hosts != 1 || !nonempty(d->net_name))
        return bad(err, d, "an HTTP or FTP source needs one host and a path");
    const vmsh_domxml_host *h = &d->hosts[0];
    /* the host is used as a URL's authority: nothing that would end it */
    if (strpbrk(h->name, "/?#@ \t\r\n\\") ||
        (h->port && strspn(h->port, "0123456789") != strlen(h->port)))
        return bad(err, d, "a host name or port that is not one");
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s://%s%s%s%s%s", d->protocol, h->name, nonempty(h->port) ? ":" : "",
                 nonempty(h->port) ? h->port : "", d->net_name[0] == '/' ? "" : "/",
                 d->net_name) < 0) {
        url = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return add_str(f, "driver", d->protocol) | add_str(f, "url", url)
               ? vmsh_error_set(err, -ENOMEM, "out of memory")
               : 0;
}

/* The protocol node of `d`, a new JSON object in *out. */
static int protocol_node(const vmsh_domxml_disk *d, json_object **out, vmsh_error **err)
{
    if (d->kind != VMSH_DISK_NETWORK &&
        !(d->kind == VMSH_DISK_VOLUME && d->storage == VMSH_DISK_NETWORK))
        return vmsh_error_set(err, -EINVAL, "disk %s is not a network disk",
                              d->target ? d->target : "?");
    /* issue 23: hv.c gives a volume of an RBD pool its pool's source */
    if (d->kind == VMSH_DISK_VOLUME && !d->protocol)
        return vmsh_error_set(err, -ENOTSUP,
                              "disk %s is the volume %s of storage pool %s, a network pool whose "
                              "type vmshadow's own QEMU does not open (volumes of 'rbd' pools "
                              "it does)",
                              d->target ? d->target : "?", d->volume ? d->volume : "?",
                              d->pool ? d->pool : "?");
    const char *p = d->protocol ? d->protocol : "";
    json_object *f = json_object_new_object();
    if (!f)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r;
    if (strcmp(p, "rbd") == 0)
        r = rbd_node(d, f, err);
    else if (strcmp(p, "nbd") == 0)
        r = nbd_node(d, f, err);
    else if (strcmp(p, "iscsi") == 0)
        r = iscsi_node(d, f, err);
    else if (strcmp(p, "gluster") == 0)
        r = gluster_node(d, f, err);
    else if (!strcmp(p, "http") || !strcmp(p, "https") || !strcmp(p, "ftp") || !strcmp(p, "ftps"))
        r = curl_node(d, f, err);
    else
        r = vmsh_error_set(err, -ENOTSUP,
                           "network disk %s: protocol '%s' is not opened by vmshadow's own QEMU "
                           "(rbd, nbd, iscsi, gluster, http(s) and ftp(s) are)",
                           d->target ? d->target : "?", p);
    if (r < 0) {
        json_object_put(f);
        return r;
    }
    *out = f;
    return 0;
}

static int to_filename(json_object *o, char **out, vmsh_error **err)
{
    const char *s =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    int r = 0;
    if (!s || asprintf(out, "json:%s", s) < 0) {
        *out = NULL;
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    json_object_put(o);
    return r;
}

int vmsh_hv_netdisk_spec(const vmsh_domxml_disk *d, char **out, vmsh_error **err)
{
    const char *fmt = nonempty(d->format) ? d->format : "raw";
    if (!format_ok(fmt))
        return vmsh_error_set(err, -ENOTSUP,
                              "network disk %s: format '%s' is not opened by vmshadow's own QEMU",
                              d->target ? d->target : "?", fmt);
    json_object *f = NULL;
    int r = protocol_node(d, &f, err);
    if (r < 0)
        return r;
    json_object *top = json_object_new_object();
    if (!top || add_str(top, "driver", fmt) < 0) {
        json_object_put(top);
        json_object_put(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    json_object_object_add(top, "file", f);
    return to_filename(top, out, err);
}

/* ---- the private qemu-nbd ---- */

char *vmsh_hv_netserve_socket(const char *dir)
{
    char *p = NULL;
    return asprintf(&p, "%s/sock", dir) < 0 ? NULL : p;
}

static char *in_dir(const char *dir, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static void remove_dir(const char *dir)
{
    static const char *const names[] = {"sock", "log", "pid"};
    for (size_t i = 0; i < 3; i++) {
        _cleanup_free_ char *p = in_dir(dir, names[i]);
        if (p)
            unlink(p);
    }
    rmdir(dir);
}

/* qemu-nbd's last message, for an error: the last line of DIR/log. */
static void last_words(const char *dir, char *buf, size_t cap)
{
    buf[0] = '\0';
    _cleanup_free_ char *p = in_dir(dir, "log");
    int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0)
        return;
    char tmp[2048];
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof(tmp) - 1 ? end - (off_t)sizeof(tmp) + 1 : 0;
    ssize_t n = pread(fd, tmp, sizeof(tmp) - 1, from);
    close(fd);
    if (n <= 0)
        return;
    tmp[n] = '\0';
    while (n > 0 && (tmp[n - 1] == '\n' || tmp[n - 1] == '\r'))
        tmp[--n] = '\0';
    char *line = strrchr(tmp, '\n');
    line = line ? line + 1 : tmp;
    size_t len = strnlen(line, cap - 1);
    memcpy(buf, line, len);
    buf[len] = '\0';
}

static bool serving(const char *sock)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof(a.sun_path))
        return false;
    strcpy(a.sun_path, sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* True when `pid` is a qemu-nbd whose arguments (all of them, however
 * long its command line) include "--socket=SOCK". */
static bool is_our_server(pid_t pid, const char *sock)
{
    _cleanup_free_ char *want = NULL;
    if (asprintf(&want, "--socket=%s", sock) < 0)
        return false;
    char **av = NULL;
    int n = vmsh_proc_cmdline(pid, &av);
    bool ours = false;
    if (n > 0) {
        const char *argv0 = strrchr(av[0], '/') ? strrchr(av[0], '/') + 1 : av[0];
        for (int i = 1; i < n && !ours && strcmp(argv0, "qemu-nbd") == 0; i++)
            ours = strcmp(av[i], want) == 0;
    }
    vmsh_proc_argv_free(av);
    return ours;
}

/* Ends `pid` (SIGTERM, then SIGKILL after 5 s) and reaps it when it is our
 * child; true once it is gone. */
static bool end_process(pid_t pid)
{
    int sig = SIGTERM;
    for (int i = 0; i < 200; i++) {
        if (i == 100)
            sig = SIGKILL;
        if (i == 0 || i == 100)
            kill(pid, sig);
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid || (w < 0 && errno == ECHILD && kill(pid, 0) < 0 && errno == ESRCH))
            return true;
        sleep_ms(50);
    }
    return false;
}

pid_t vmsh_hv_netserve_pid(const char *dir)
{
    _cleanup_free_ char *p = in_dir(dir, "pid");
    FILE *f = p ? fopen(p, "re") : NULL;
    long v = 0;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1 || v <= 1 || v > 0x3fffffff)
            v = 0;
        fclose(f);
    }
    return (pid_t)v;
}

int vmsh_hv_netserve_start(const char *dir, const char *export_name, const char *spec,
                           int timeout_s, pid_t *pid, vmsh_error **err)
{
    if (mkdir(dir, 0700) < 0)
        return vmsh_error_set(err, -errno, "cannot make the directory %s for qemu-nbd: %s", dir,
                              strerror(errno));
    _cleanup_free_ char *sock = vmsh_hv_netserve_socket(dir), *log = in_dir(dir, "log");
    _cleanup_free_ char *sock_opt = NULL, *export_opt = NULL, *pid_opt = NULL;
    if (!sock || !log || asprintf(&sock_opt, "--socket=%s", sock) < 0 ||
        asprintf(&export_opt, "--export-name=%s", export_name ? export_name : "") < 0 ||
        asprintf(&pid_opt, "--pid-file=%s/pid", dir) < 0) {
        sock_opt = export_opt = pid_opt = NULL;
        rmdir(dir);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* --read-only: the source is never written; --persistent: the reader
     * may connect more than once; --shared=8: the reader's connections.
     * The source is one argument, a json: filename (no shell, no option
     * string); no --format: the JSON names every driver, nothing is probed.
     * DIR/pid tells a later recover which process to stop. */
    char *argv[] = {(char *)"qemu-nbd",
                    (char *)"--read-only",
                    (char *)"--persistent",
                    (char *)"--shared=8",
                    sock_opt,
                    export_opt,
                    pid_opt,
                    (char *)spec,
                    NULL};
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        rmdir(dir);
        return vmsh_error_set(err, -e, "cannot start qemu-nbd: %s", strerror(e));
    }
    if (child == 0) {
        /* the server dies with us, whatever kills us (R7: nothing is left
         * serving a VM's disk); recover stops one that did not */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);
        if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
            _exit(127);
        /* no descriptor of ours (a lock, a repository) outlives us in it */
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        execvp(argv[0], argv);
        _exit(126);
    }
    *pid = child;
    for (long waited = 0; waited < (long)timeout_s * 1000; waited += 20) {
        int st;
        if (waitpid(child, &st, WNOHANG) == child) {
            char words[512];
            last_words(dir, words, sizeof(words));
            remove_dir(dir);
            bool missing = WIFEXITED(st) && WEXITSTATUS(st) == 126;
            return vmsh_error_set(err, missing ? -ENOENT : -EIO,
                                  missing ? "cannot run qemu-nbd (is qemu-utils installed?)"
                                          : "QEMU cannot open the disk: qemu-nbd: %s",
                                  words[0] ? words : "exited without a message");
        }
        /* qemu-nbd listens before it opens the source, and writes its pid
         * file once it has: serving means both */
        if (vmsh_hv_netserve_pid(dir) == child && serving(sock))
            return 0;
        sleep_ms(20);
    }
    char words[512];
    last_words(dir, words, sizeof(words));
    end_process(child);
    remove_dir(dir);
    return vmsh_error_set(err, -ETIMEDOUT, "qemu-nbd did not serve the disk within %d s%s%s",
                          timeout_s, words[0] ? ": " : "", words);
}

int vmsh_hv_netserve_stop(pid_t pid, const char *dir, vmsh_error **err)
{
    _cleanup_free_ char *sock = vmsh_hv_netserve_socket(dir);
    if (!sock)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (pid > 0 && is_our_server(pid, sock) && !end_process(pid))
        return vmsh_error_set(err, -EBUSY,
                              "qemu-nbd (process %d) serving %s does not stop: kill it, then run "
                              "'vmshadow recover' again",
                              (int)pid, sock);
    /* a child that already exited: reaped here (no zombie) */
    if (pid > 0)
        waitpid(pid, NULL, WNOHANG);
    remove_dir(dir);
    struct stat st;
    if (lstat(dir, &st) == 0)
        return vmsh_error_set(err, -ENOTEMPTY,
                              "cannot remove %s: it holds files vmshadow did not "
                              "put there",
                              dir);
    return 0;
}
