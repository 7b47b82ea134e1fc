/* main.c - global options, configuration and command dispatch (CLI.md). */
#include "cli.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/text.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/util/version.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_REPO        "/var/lib/vmshadow/repo"
#define DEFAULT_CONFIG      "/etc/vmshadow/vmshadow.conf"
#define DEFAULT_STATE_DIR   "/var/lib/vmshadow/state"
#define DEFAULT_WRITERS_DIR "/etc/vmshadow/writers.d"

/* `opts`: the command's own getopt_long table (NULL: only --help), so that
 * a global option after the command is told from a command option's value. */
static const struct {
    const char *name;
    vmsh_cli_cmd_fn fn;
    const char *summary;
    const struct option *opts;
} commands[] = {
    {"vms", vmsh_cmd_vms, "list VMs, their disks, agent and the backup method", vmsh_cli_opts_vms},
    {"writers", vmsh_cmd_writers, "list writers with their last state and error", NULL},
    {"init", vmsh_cmd_init, "create a repository", vmsh_cli_opts_init},
    {"backup", vmsh_cmd_backup, "back up VMs as one snapshot set", vmsh_cli_opts_backup},
    {"list", vmsh_cmd_list, "list backups", NULL},
    {"show", vmsh_cmd_show, "show a backup's document", NULL},
    {"restore", vmsh_cmd_restore, "restore VMs from a backup", vmsh_cli_opts_restore},
    {"verify", vmsh_cmd_verify, "check every chunk the backups need", NULL},
    {"prune", vmsh_cmd_prune, "forget backups outside a retention policy", vmsh_cli_opts_prune},
    {"gc", vmsh_cmd_gc, "free chunks no backup needs", NULL},
    {"recover", vmsh_cmd_recover, "undo what an interrupted run left behind", NULL},
    {"extract", vmsh_cmd_extract, "write one file of a backup (e.g. a disk image)",
     vmsh_cli_opts_extract},
    {"serve", vmsh_cmd_serve, "serve a VM's disks of a backup read-only over NBD",
     vmsh_cli_opts_serve},
    {"files", vmsh_cmd_files, "list and copy out files of a VM's disks in a backup",
     vmsh_cli_opts_files},
    {"jobs", vmsh_cmd_jobs, "instant restores in progress and their pulls", NULL},
    {"status", vmsh_cmd_status, "last runs, repository size, oldest/newest backup per VM", NULL},
};

/* Config keys (docs/config.md; the scheduled jobs' and metrics' from schedule-vms on, issue 24). */
static const char *const config_keys[] = {
    "repo",
    "connect",
    "state-dir",
    "writers-dir",
    "freeze-limit",
    "event-timeout",
    "compression-level",
    "key-file",
    "agent-timeout",
    "scratch-dir",
    /* the object stores' (issue 26): vmsh_repo_store_setopt */
    "store-threads",
    "store-timeout",
    "store-readahead",
    "store-lease-seconds",
    "store-gc-grace-seconds",
    "store-gc-margin-seconds",
    "store-session-seconds",
    "ceph-conf",
    "ceph-user",
    "ceph-keyring",
    "s3-region",
    "s3-credentials-file",
    "s3-addressing",
    /* the scheduled jobs' and the metrics' (issue 24) */
    "schedule-vms",
    "keep-last",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "backup-schedule",
    "verify-schedule",
    "gc-schedule",
    "verify-backups",
    "metrics-dir",
    NULL,
};
/* Config keys that name a place: an empty value would silently mean the
 * default (issue 20 point 9), so it is refused. */
static const char *const config_path_keys[] = {
    "repo", "connect", "state-dir", "writers-dir", "key-file", "scratch-dir", "metrics-dir", NULL,
};

static void print_help(FILE *f)
{
    fprintf(
        f,
        "Usage: vmshadow [OPTIONS] COMMAND [ARGS] [OPTIONS]\n"
        "\n"
        "Consistent backup and restore of libvirt/QEMU virtual machines.\n"
        "\n"
        "Options:\n"
        "  -c, --connect URI   libvirt connection (default $LIBVIRT_DEFAULT_URI, else "
        "qemu:///system)\n"
        "  -r, --repo REPO     repository: a directory, rados://POOL[/PREFIX] or\n"
        "                      s3://HOST[:PORT]/BUCKET[/PREFIX] (s3+http:// for plain HTTP)\n"
        "                      (default $VMSHADOW_REPO, the config's, else " DEFAULT_REPO ")\n"
        "      --config FILE   configuration file (default $VMSHADOW_CONFIG, else " DEFAULT_CONFIG
        ")\n"
        "      --json          one JSON document on stdout; messages go to stderr\n"
        "      --allow-foreign-repo  accept a repository others can write\n"
        "  -q, --quiet         print less\n"
        "  -v, --verbose       print more\n"
        "  -h, --help          this help; COMMAND --help for a command's\n"
        "  -V, --version       print the version\n"
        "The options but -h and -V may also follow the command.\n"
        "\n"
        "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n"
               "Exit codes: 0 done, 1 failed, 2 usage error, 3 repository damaged,\n"
               "4 busy (another snapshot set or repository writer holds the lock).\n"
               "See vmshadow(1).\n");
}

/* Set once a JSON document is on stdout: a command prints exactly one
 * (CLI.md), so an error after it goes to stderr only. */
static bool json_printed;

const char *vmsh_cli_safe(vmsh_cli *cli, const char *s)
{
    if (!s || !vmsh_text_needs_escape(s, VMSH_TEXT_CONTROLS))
        return s;
    char *e = vmsh_text_escape(s, strlen(s), VMSH_TEXT_CONTROLS, NULL);
    char **pool = e ? realloc(cli->pool, (cli->n_pool + 1) * sizeof(*pool)) : NULL;
    if (!pool) {
        free(e);
        return "(?)";
    }
    cli->pool = pool;
    cli->pool[cli->n_pool++] = e;
    return e;
}

/* Under systemd, stderr is the journal (JOURNAL_STREAM names its device
 * and inode, systemd.exec(5)): each line then starts with its priority,
 * "<3>" error, "<4>" warning, "<6>" information, "<7>" debug (sd-daemon(3)),
 * so that `journalctl -p err` finds what failed. Elsewhere lines are plain. */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    return js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
           (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static const char *priority(int level)
{
    static int journal = -1;
    static const char *const prefixes[] = {"<3>", "<4>", "<6>", "<7>"};
    if (journal < 0)
        journal = stderr_is_journal();
    return journal ? prefixes[level] : "";
}
enum { PRIO_ERR, PRIO_WARNING, PRIO_INFO, PRIO_DEBUG };

static void vmsg(vmsh_cli *cli, int prio, const char *prefix, const char *fmt, va_list ap)
{
    /* Messages carry names from libvirt and from backup documents: no
     * control character of theirs reaches the terminal. */
    char *m = NULL;
    if (vasprintf(&m, fmt, ap) < 0)
        m = NULL;
    char *e = m ? vmsh_text_escape(m, strlen(m), VMSH_TEXT_CONTROLS, NULL) : NULL;
    fprintf(stderr, "%s%s: %s%s\n", priority(prio), cli->prog, prefix, e ? e : "(out of memory)");
    free(e);
    free(m);
}

void vmsh_cli_info(vmsh_cli *cli, const char *fmt, ...)
{
    if (cli->verbosity < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vmsg(cli, PRIO_INFO, "", fmt, ap);
    va_end(ap);
}

void vmsh_cli_warn(vmsh_cli *cli, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(cli, PRIO_WARNING, "warning: ", fmt, ap);
    va_end(ap);
}

void vmsh_cli_debug(vmsh_cli *cli, const char *fmt, ...)
{
    if (cli->verbosity <= 0)
        return;
    /* the time since the command started: where a slow run spends it */
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "debug: [+%lld ms] ",
             (long long)(vmsh_now_ms() - cli->start_ms));
    va_list ap;
    va_start(ap, fmt);
    vmsg(cli, PRIO_DEBUG, prefix, fmt, ap);
    va_end(ap);
}

int vmsh_cli_exit_code(int code)
{
    if (code == -EBUSY)
        return VMSH_EXIT_BUSY;
    if (code == -EBADMSG || code == -EUCLEAN)
        return VMSH_EXIT_DAMAGED;
    return VMSH_EXIT_FAILED;
}

json_object *vmsh_cli_error_json(int exit_code, int code, const char *message)
{
    static const char *const names[] = {"ok", "failed", "usage", "damaged", "busy"};
    json_object *o = json_object_new_object();
    json_object_object_add(
        o, "code",
        json_object_new_string(exit_code >= 0 && exit_code <= 4 ? names[exit_code] : "failed"));
    json_object_object_add(o, "exit_code", json_object_new_int(exit_code));
    const char *en = code < 0 ? strerrorname_np(-code) : NULL;
    json_object_object_add(o, "errno", en ? json_object_new_string(en) : NULL);
    json_object_object_add(o, "message", json_object_new_string(message ? message : "failed"));
    return o;
}

/* The document of a command that failed before it printed its own. */
static void print_error_json(int exit_code, int code, const char *message)
{
    if (json_printed)
        return;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "error", vmsh_cli_error_json(exit_code, code, message));
    vmsh_cli_print_json(o);
}

int vmsh_cli_fail(vmsh_cli *cli, vmsh_error **err)
{
    int code = err && *err ? (*err)->code : -EIO;
    const char *msg = err && *err ? (*err)->message : "unknown failure";
    int rc = vmsh_cli_exit_code(code);
    fprintf(stderr, "%s%s: error: %s\n", priority(PRIO_ERR), cli->prog, vmsh_cli_safe(cli, msg));
    if (cli->json)
        print_error_json(rc, code, msg);
    if (err) {
        vmsh_error_free(*err);
        *err = NULL;
    }
    return rc;
}

int vmsh_cli_usage_error(vmsh_cli *cli, const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = NULL;
    if (vasprintf(&m, fmt, ap) < 0)
        m = NULL;
    va_end(ap);
    fprintf(stderr, "%s%s%s%s: %s\n%sTry '%s%s%s --help'.\n", priority(PRIO_ERR), cli->prog,
            cmd ? " " : "", cmd ? cmd : "", m ? vmsh_cli_safe(cli, m) : "usage error",
            priority(PRIO_INFO), cli->prog, cmd ? " " : "", cmd ? cmd : "");
    if (cli->json)
        print_error_json(VMSH_EXIT_USAGE, -EINVAL, m ? m : "usage error");
    free(m);
    return VMSH_EXIT_USAGE;
}

int vmsh_cli_only_help(vmsh_cli *cli, int argc, char **argv, const char *cmd, const char *help)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
    int c = getopt_long(argc, argv, "h", opts, NULL);
    if (c == -1)
        return -1;
    if (c == 'h') {
        fputs(help, stdout);
        return VMSH_EXIT_OK;
    }
    return vmsh_cli_usage_error(cli, cmd, "unknown option '%s'", argv[optind - 1]);
}

void vmsh_cli_print_json(struct json_object *doc)
{
    /* Every document has an `error` member: null on success (CLI.md). */
    if (json_object_is_type(doc, json_type_object) &&
        !json_object_object_get_ex(doc, "error", NULL))
        json_object_object_add(doc, "error", NULL);
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY |
                                                               JSON_C_TO_STRING_NOSLASHESCAPE);
    /* json-c copies the bytes of a string as they are: a name from a backup
     * document or a file name that is not UTF-8 would make the document
     * invalid. Such bytes can only be inside string literals (json-c writes
     * everything else in ASCII), where they become the text \xHH. */
    char *fixed = NULL;
    if (!vmsh_utf8_valid_str(text))
        fixed = vmsh_text_escape(text, strlen(text), VMSH_TEXT_JSON, NULL);
    fputs(fixed ? fixed : text, stdout);
    fputc('\n', stdout);
    free(fixed);
    json_object_put(doc);
    json_printed = true;
}

static const char *first_of(const char *a, const char *b, const char *c, const char *d)
{
    if (a)
        return a;
    if (b)
        return b;
    if (c)
        return c;
    return d;
}

/* The global options (CLI.md), before or after the command. */
static const struct option global_opts[] = {
    {"connect", required_argument, NULL, 'c'},
    {"repo", required_argument, NULL, 'r'},
    {"config", required_argument, NULL, 'C'},
    {"json", no_argument, NULL, 'j'},
    {"quiet", no_argument, NULL, 'q'},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"allow-foreign-repo", no_argument, NULL, 'F'},
    {0},
};

typedef struct global_vals {
    const char *repo, *config;
} global_vals;

/* Applies global option `c` with `val`; a usage error (exit code) for an
 * empty value (issue 20 point 9: `-r ''` must not mean "the default"). */
static int apply_global(vmsh_cli *cli, global_vals *g, int c, const char *val)
{
    if (val && !*val)
        return vmsh_cli_usage_error(cli, NULL, "option '%s' needs a value, not an empty one",
                                    c == 'c'   ? "-c/--connect"
                                    : c == 'r' ? "-r/--repo"
                                               : "--config");
    switch (c) {
    case 'c':
        cli->uri = val;
        break;
    case 'r':
        g->repo = val;
        break;
    case 'C':
        g->config = val;
        break;
    case 'j':
        cli->json = true;
        break;
    case 'F':
        cli->allow_foreign_repo = true;
        break;
    case 'q':
        cli->verbosity--;
        break;
    case 'v':
        cli->verbosity++;
        break;
    }
    return 0;
}

static const struct option *find_long(const struct option *opts, const char *name, size_t len)
{
    for (size_t i = 0; opts && opts[i].name; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

/* Takes the global options out of a command's words (argv[0] is the
 * command's name), so that `vmshadow vms --json` means `vmshadow --json
 * vms` (issue 24 point 4). Only exact long names and -c/-r/-q/-v count; a
 * word that is the value of one of the command's own options (`cmd_opts`)
 * and everything after `--` stay the command's. Returns 0, or the exit code
 * of a usage error. */
static int take_globals(vmsh_cli *cli, global_vals *g, const struct option *cmd_opts, int *argc,
                        char **argv)
{
    int out = 1, n = *argc;
    for (int i = 1; i < n; i++) {
        char *w = argv[i];
        if (strcmp(w, "--") == 0) {
            while (i < n)
                argv[out++] = argv[i++];
            break;
        }
        if (strncmp(w, "--", 2) == 0) {
            const char *name = w + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            const struct option *o = find_long(global_opts, name, len);
            if (o && o->val != 'h' && o->val != 'V') {
                const char *val = NULL;
                if (o->has_arg == required_argument) {
                    if (!eq && i + 1 >= n)
                        return vmsh_cli_usage_error(cli, NULL, "option '%s' needs a value", w);
                    val = eq ? eq + 1 : argv[++i];
                } else if (eq) {
                    return vmsh_cli_usage_error(cli, NULL, "option '--%.*s' takes no value",
                                                (int)len, name);
                }
                int r = apply_global(cli, g, o->val, val);
                if (r)
                    return r;
                continue;
            }
            const struct option *co = find_long(cmd_opts, name, len);
            argv[out++] = w;
            if (co && co->has_arg == required_argument && !eq && i + 1 < n)
                argv[out++] = argv[++i];
            continue;
        }
        if (w[0] == '-' && (w[1] == 'c' || w[1] == 'r')) {
            const char *val = w[2] ? w + 2 : i + 1 < n ? argv[++i] : NULL;
            if (!val)
                return vmsh_cli_usage_error(cli, NULL, "option '%s' needs a value", w);
            int r = apply_global(cli, g, w[1], val);
            if (r)
                return r;
            continue;
        }
        if (w[0] == '-' && w[1] && strspn(w + 1, "qv") == strlen(w + 1)) {
            for (const char *p = w + 1; *p; p++)
                apply_global(cli, g, *p, NULL);
            continue;
        }
        argv[out++] = w;
        /* a short option of the command that takes a value: "-m guest" */
        if (w[0] == '-' && w[1] && w[1] != '-' && !w[2] && i + 1 < n)
            for (size_t k = 0; cmd_opts && cmd_opts[k].name; k++)
                if (cmd_opts[k].val == w[1] && cmd_opts[k].has_arg == required_argument) {
                    argv[out++] = argv[++i];
                    break;
                }
    }
    argv[out] = NULL;
    *argc = out;
    return 0;
}

/* An environment variable of ours that is set must name something: an
 * empty one is a usage error, not "unset" (issue 20 point 9). */
static int check_env(vmsh_cli *cli)
{
    static const char *const vars[] = {"VMSHADOW_REPO",      "VMSHADOW_CONFIG",
                                       "VMSHADOW_STATE_DIR", "VMSHADOW_WRITERS_DIR",
                                       "VMSHADOW_KEY_FILE",  NULL};
    for (size_t i = 0; vars[i]; i++) {
        const char *v = getenv(vars[i]);
        if (v && !*v)
            return vmsh_cli_usage_error(
                cli, NULL, "%s is set but empty: unset it or give it a value", vars[i]);
    }
    return 0;
}

static int check_config_values(vmsh_cli *cli)
{
    for (size_t i = 0; cli->config && config_path_keys[i]; i++) {
        const char *v = vmsh_kvconf_get(cli->config, config_path_keys[i]);
        if (v && !*v) {
            vmsh_error *err = NULL;
            vmsh_error_set(&err, -EINVAL, "%s: '%s' is empty: remove the line or give it a value",
                           cli->config_path, config_path_keys[i]);
            return vmsh_cli_fail(cli, &err);
        }
    }
    return 0;
}

static bool asks_help(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

static void cli_clear(vmsh_cli *cli)
{
    vmsh_kvconf_free(cli->config);
    cli->config = NULL;
    for (size_t i = 0; i < cli->n_pool; i++)
        free(cli->pool[i]);
    free(cli->pool);
    cli->pool = NULL;
    cli->n_pool = 0;
}

static int run(vmsh_cli *cli, int argc, char **argv)
{
    global_vals g = {0};
    int c;
    /* --json anywhere (before `--`) makes every error a document, also a
     * usage error met before it on the command line (issue 20 point 10). */
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--json") == 0)
            cli->json = true;
    opterr = 0;
    /* '+': stop at the command name; its own options are parsed by it. */
    while ((c = getopt_long(argc, argv, "+:c:r:qvhV", global_opts, NULL)) != -1) {
        switch (c) {
        case 'c':
        case 'r':
        case 'C':
        case 'j':
        case 'F':
        case 'q':
        case 'v': {
            int r = apply_global(cli, &g, c, optarg);
            if (r)
                return r;
            break;
        }
        case 'h':
            print_help(stdout);
            return VMSH_EXIT_OK;
        case 'V':
            printf("vmshadow %s\n", VMSH_VERSION_STRING);
            return VMSH_EXIT_OK;
        case ':':
            return vmsh_cli_usage_error(cli, NULL, "option '%s' needs a value", argv[optind - 1]);
        default:
            return vmsh_cli_usage_error(cli, NULL, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc) {
        if (cli->json)
            return vmsh_cli_usage_error(cli, NULL, "no command given");
        print_help(stderr);
        return VMSH_EXIT_USAGE;
    }
    const char *name = argv[optind];
    vmsh_cli_cmd_fn fn = NULL;
    const struct option *cmd_opts = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0) {
            fn = commands[i].fn;
            cmd_opts = commands[i].opts;
        }
    /* Commands parse their own options, with argv[0] the command's name. */
    int cmd_index = optind, cmd_argc = argc - optind;
    if (fn) {
        int r = take_globals(cli, &g, cmd_opts, &cmd_argc, argv + cmd_index);
        if (r)
            return r;
    }
    if (!fn)
        return vmsh_cli_usage_error(cli, NULL, "unknown command '%s'", name);
    int r = check_env(cli);
    if (r)
        return r;

    /* The configuration file: an explicitly named one must exist; the default may not. */
    cli->config_path = first_of(g.config, getenv("VMSHADOW_CONFIG"), NULL, DEFAULT_CONFIG);
    vmsh_error *err = NULL;
    /* /dev/null names "no configuration", as it does for other tools */
    r = strcmp(cli->config_path, "/dev/null") == 0
            ? 0
            : vmsh_kvconf_load(&cli->config, cli->config_path, &err);
    if (r == -ENOENT && !g.config && !getenv("VMSHADOW_CONFIG")) {
        vmsh_error_free(err);
        err = NULL;
    } else if (r < 0) {
        return vmsh_cli_fail(cli, &err);
    } else if (vmsh_kvconf_check_keys(cli->config, config_keys, &err) < 0) {
        return vmsh_cli_fail(cli, &err);
    }
    if ((r = check_config_values(cli)))
        return r;
    for (size_t i = 0; cli->config && config_keys[i]; i++)
        if (strncmp(config_keys[i], "store-", 6) == 0 || strncmp(config_keys[i], "ceph-", 5) == 0 ||
            strncmp(config_keys[i], "s3-", 3) == 0)
            vmsh_repo_store_setopt(config_keys[i], vmsh_kvconf_get(cli->config, config_keys[i]));
    cli->repo = first_of(g.repo, getenv("VMSHADOW_REPO"), vmsh_kvconf_get(cli->config, "repo"),
                         DEFAULT_REPO);
    if (!cli->uri) {
        /* libvirt treats an empty LIBVIRT_DEFAULT_URI as unset; so do we */
        const char *env = getenv("LIBVIRT_DEFAULT_URI");
        cli->uri = first_of(env && *env ? env : NULL, vmsh_kvconf_get(cli->config, "connect"), NULL,
                            "qemu:///system");
    }
    cli->state_dir = first_of(getenv("VMSHADOW_STATE_DIR"),
                              vmsh_kvconf_get(cli->config, "state-dir"), NULL, DEFAULT_STATE_DIR);
    cli->writers_dir =
        first_of(getenv("VMSHADOW_WRITERS_DIR"), vmsh_kvconf_get(cli->config, "writers-dir"), NULL,
                 DEFAULT_WRITERS_DIR);
    cli->progress = isatty(STDERR_FILENO) && cli->verbosity >= 0;

    /* Every command first undoes what an interrupted run left behind (R7);
     * `recover` does only that, and reports it. A command's --help does
     * nothing else. */
    if (strcmp(name, "recover") != 0 && !asks_help(cmd_argc, argv + cmd_index))
        vmsh_cli_recover_first(cli);
    /* getopt must be reset for the command (optind = 0 re-initialises glibc's). */
    optind = 0;
    int rc = fn(cli, cmd_argc, argv + cmd_index);
    vmsh_cli_metrics_after(cli, cmd_argc, argv + cmd_index, rc);
    /* One JSON document also when a command failed without one (CLI.md). */
    if (cli->json && rc != VMSH_EXIT_OK)
        print_error_json(rc, 0, "failed: the messages on stderr say why");
    return rc;
}

int main(int argc, char **argv)
{
    /* A peer that goes away (libvirtd restarted mid-backup, an NBD server,
     * a reader of our output) must be an error we handle (abort the set,
     * undo, say why), not a silent death by SIGPIPE that strands VMs. */
    signal(SIGPIPE, SIG_IGN);
    vmsh_cli cli = {.prog = "vmshadow", .start_ms = vmsh_now_ms()};
    json_printed = false;
    int rc = run(&cli, argc, argv);
    cli_clear(&cli);
    return rc;
}
