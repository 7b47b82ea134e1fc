/* proc.c - spawning commands without a shell, with a timeout that kills the
 * command's whole process group (include/vmshadow/util/proc.h). */
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Grace between SIGTERM and SIGKILL of a command that ran past its time. */
#define KILL_GRACE_MS 2000

void vmsh_proc_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

typedef struct {
    char *buf;
    size_t len, cap;
} strbuf;

static int sb_put(strbuf *b, char c)
{
    if (b->len + 1 >= b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 32;
        char *n = realloc(b->buf, cap);
        if (!n)
            return -ENOMEM;
        b->buf = n;
        b->cap = cap;
    }
    b->buf[b->len++] = c;
    b->buf[b->len] = '\0';
    return 0;
}

static int push_word(char ***argv, size_t *n, strbuf *w)
{
    char **a = vmsh_realloc_array(*argv, *n + 2, sizeof(char *));
    if (!a)
        return -ENOMEM;
    *argv = a;
    a[*n] = w->buf ? w->buf : strdup("");
    if (!a[*n])
        return -ENOMEM;
    (*n)++;
    a[*n] = NULL;
    w->buf = NULL;
    w->len = w->cap = 0;
    return 0;
}

int vmsh_proc_split(const char *cmdline, char ***out, vmsh_error **err)
{
    char **argv = NULL;
    size_t n = 0;
    strbuf w = {0};
    bool in_word = false;
    int r = 0;
    const char *p = cmdline;

    while (*p) {
        char c = *p;
        size_t col = (size_t)(p - cmdline) + 1;
        if (c == ' ' || c == '\t' || c == '\n') {
            if (in_word && (r = push_word(&argv, &n, &w)) < 0)
                goto fail;
            in_word = false;
            p++;
            continue;
        }
        in_word = true;
        if (c == '\'') {
            const char *end = strchr(p + 1, '\'');
            if (!end) {
                r = vmsh_error_set(err, -EINVAL, "unmatched ' at column %zu in \"%s\"", col,
                                   cmdline);
                goto fail;
            }
            if (end == p + 1 && !w.buf && (r = sb_put(&w, '\0')) == 0)
                w.len = 0; /* '' is an empty word, not nothing */
            for (const char *q = p + 1; q < end; q++)
                if ((r = sb_put(&w, *q)) < 0)
                    goto fail;
            p = end + 1;
        } else if (c == '"') {
            const char *q = p + 1;
            if (*q == '"' && !w.buf && (r = sb_put(&w, '\0')) == 0)
                w.len = 0;
            for (; *q && *q != '"'; q++) {
                if (*q == '\\' && q[1] && strchr("\"\\$`\n", q[1])) {
                    q++;
                    if (*q == '\n')
                        continue; /* line continuation */
                }
                if ((r = sb_put(&w, *q)) < 0)
                    goto fail;
            }
            if (*q != '"') {
                r = vmsh_error_set(err, -EINVAL, "unmatched \" at column %zu in \"%s\"", col,
                                   cmdline);
                goto fail;
            }
            p = q + 1;
        } else if (c == '\\') {
            if (!p[1]) {
                r = vmsh_error_set(err, -EINVAL, "trailing backslash in \"%s\"", cmdline);
                goto fail;
            }
            if ((r = sb_put(&w, p[1])) < 0)
                goto fail;
            p += 2;
        } else if (strchr("|&;<>()$`", c)) {
            r = vmsh_error_set(err, -EINVAL,
                               "shell operator '%c' at column %zu in \"%s\": commands run without "
                               "a shell; quote it, or put the logic in a script",
                               c, col, cmdline);
            goto fail;
        } else {
            if ((r = sb_put(&w, c)) < 0)
                goto fail;
            p++;
        }
    }
    if (in_word && (r = push_word(&argv, &n, &w)) < 0)
        goto fail;
    if (!argv) {
        argv = calloc(1, sizeof(char *));
        if (!argv) {
            r = -ENOMEM;
            goto fail;
        }
    }
    *out = argv;
    return (int)n;
fail:
    if (r == -ENOMEM)
        vmsh_error_set(err, -ENOMEM, "out of memory splitting \"%s\"", cmdline);
    free(w.buf);
    vmsh_proc_argv_free(argv);
    return r;
}

/* environ plus `extra`, where extra wins over a same-named variable. */
static char **build_env(char *const extra[])
{
    size_t ne = 0, nx = 0;
    while (environ && environ[ne])
        ne++;
    while (extra && extra[nx])
        nx++;
    char **env = vmsh_calloc_array(ne + nx + 1, sizeof(char *));
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < ne; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool overridden = false;
        for (size_t j = 0; j < nx && !overridden; j++)
            overridden = strncmp(extra[j], environ[i], nl) == 0 && extra[j][nl] == '=';
        if (!overridden)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < nx; j++)
        env[k++] = extra[j];
    env[k] = NULL;
    return env;
}

static int pidfd_open_compat(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Waits for `pid` until the monotonic time `deadline` (<0: forever) or until
 * opts->stop says so. Returns 1 with *status when it ended, 0 on timeout,
 * -1 when stopped. */
static int wait_until(pid_t pid, int pidfd, int64_t deadline, const vmsh_proc_opts *o, int *status)
{
    for (;;) {
        pid_t w = waitpid(pid, status, WNOHANG);
        if (w == pid)
            return 1;
        if (w < 0 && errno != EINTR)
            return 1; /* should not happen: the child is ours */
        if (o && o->stop && o->stop(o->opaque))
            return -1;
        int64_t left = deadline < 0 ? -1 : deadline - vmsh_now_ms();
        if (deadline >= 0 && left <= 0)
            return 0;
        if (pidfd >= 0) {
            struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
            int64_t slice = o && o->stop ? 100 : 1000;
            int t = left < 0 ? (int)slice : (left > slice ? (int)slice : (int)left);
            poll(&pfd, 1, t);
        } else {
            /* Without pidfd (old kernels) a short sleep keeps it simple. */
            int64_t t = left < 0 || left > 20 ? 20 : left;
            struct timespec ts = {0, (long)t * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

int vmsh_proc_run(char *const argv[], char *const env[], int64_t timeout_ms, vmsh_proc_result *out,
                  vmsh_error **err)
{
    vmsh_proc_opts o = {.timeout_ms = timeout_ms};
    return vmsh_proc_run_opts(argv, env, &o, out, err);
}

int vmsh_proc_run_opts(char *const argv[], char *const env[], const vmsh_proc_opts *opts,
                       vmsh_proc_result *out, vmsh_error **err)
{
    int64_t timeout_ms = opts ? opts->timeout_ms : 0;
    if (!argv || !argv[0])
        return vmsh_error_set(err, -EINVAL, "empty command");
    _cleanup_free_ char **envp = build_env(env);
    if (!envp)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* posix_spawn, not fork: glibc starts the child with CLONE_VM|CLONE_VFORK,
     * so the parent's memory is neither copied nor write-protected (after a
     * fork every page of a backup's buffers and chunk map faulted again on
     * its next write), and an exec failure comes back as the result. */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, opts && opts->out_fd > 0 ? opts->out_fd : STDERR_FILENO,
                                     STDOUT_FILENO);
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setpgroup(&at, 0); /* its own group: a timeout kills all of it */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    int64_t start = vmsh_now_ms();
    pid_t pid = 0;
    int sr = posix_spawnp(&pid, argv[0], &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (sr != 0)
        return vmsh_error_set(err, -sr, "cannot run %s: %s", argv[0], strerror(sr));
    int status = 0;
    int pidfd = pidfd_open_compat(pid);
    vmsh_proc_result res = {.exit_code = -1};
    int64_t deadline = timeout_ms > 0 ? start + timeout_ms : -1;
    int w = wait_until(pid, pidfd, deadline, opts, &status);
    if (w <= 0) {
        if (w == 0)
            res.timed_out = true;
        else
            res.stopped = true;
        kill(-pid, SIGTERM);
        if (wait_until(pid, pidfd, vmsh_now_ms() + KILL_GRACE_MS, NULL, &status) <= 0) {
            kill(-pid, SIGKILL);
            wait_until(pid, pidfd, -1, NULL, &status);
        }
    }
    /* After a timeout nothing of the group may outlive it. After a normal
     * exit the group is left alone: a writer may start a helper on purpose
     * (e.g. a session held open from prepare-snapshot to post-snapshot). */
    if (res.timed_out || res.stopped)
        kill(-pid, SIGKILL);
    if (pidfd >= 0)
        close(pidfd);
    res.ms = vmsh_now_ms() - start;
    if (WIFEXITED(status))
        res.exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        res.signal = WTERMSIG(status);
    *out = res;
    return 0;
}

int vmsh_proc_capture(char *const argv[], int64_t timeout_ms, size_t max, char **out, size_t *len,
                      vmsh_error **err)
{
    *out = NULL;
    *len = 0;
    _cleanup_close_ int fd = memfd_create("vmshadow-output", MFD_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create a memory file: %s", strerror(errno));
    vmsh_proc_opts o = {.timeout_ms = timeout_ms, .out_fd = fd};
    vmsh_proc_result res;
    int r = vmsh_proc_run_opts(argv, NULL, &o, &res, err);
    if (r < 0)
        return r;
    if (res.exit_code != 0) {
        char buf[96];
        return vmsh_error_set(err, -EIO, "%s %s", argv[0],
                              vmsh_proc_describe(&res, buf, sizeof(buf)));
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0)
        return vmsh_error_set(err, -errno, "cannot read the output of %s: %s", argv[0],
                              strerror(errno));
    if ((uint64_t)size > max)
        return vmsh_error_set(err, -EFBIG, "%s printed %lld bytes, more than the %zu expected",
                              argv[0], (long long)size, max);
    char *buf = malloc((size_t)size + 1);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    ssize_t got = pread(fd, buf, (size_t)size, 0);
    if (got != (ssize_t)size) {
        free(buf);
        return vmsh_error_set(err, -EIO, "cannot read the output of %s", argv[0]);
    }
    buf[size] = '\0';
    *out = buf;
    *len = (size_t)size;
    return 0;
}

const char *vmsh_proc_describe(const vmsh_proc_result *r, char *buf, size_t len)
{
    if (r->timed_out)
        snprintf(buf, len, "timed out after %lld ms and was killed", (long long)r->ms);
    else if (r->stopped)
        snprintf(buf, len, "was stopped after %lld ms", (long long)r->ms);
    else if (r->signal)
        snprintf(buf, len, "was killed by signal %d (%s)", r->signal, strsignal(r->signal));
    else
        snprintf(buf, len, "exited with status %d", r->exit_code);
    return buf;
}

int vmsh_proc_argv_from_nul(const char *buf, size_t len, char ***out)
{
    *out = NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == 0 || i + 1 == len)
            n++;
    char **av = calloc(n + 1, sizeof(*av));
    if (!av)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < len && k < n;) {
        const char *end = memchr(buf + i, 0, len - i);
        size_t wl = end ? (size_t)(end - (buf + i)) : len - i;
        if (!(av[k++] = strndup(buf + i, wl))) {
            vmsh_proc_argv_free(av);
            return -ENOMEM;
        }
        i += wl + 1;
    }
    *out = av;
    return (int)k;
}

int vmsh_proc_cmdline(pid_t pid, char ***out)
{
    *out = NULL;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", (long)pid);
    _cleanup_free_ char *buf = NULL;
    size_t len = 0;
    int r = vmsh_fs_read_all(path, VMSH_PROC_CMDLINE_MAX, &buf, &len, NULL);
    return r < 0 ? r : vmsh_proc_argv_from_nul(buf, len, out);
}
