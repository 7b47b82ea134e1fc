/* main.c - global options, configuration and command dispatch (CLI.md). */
#include "cli.h"

#include <vmshadow/util/version.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_REPO        "/var/lib/vmshadow/repo"
#define DEFAULT_CONFIG      "/etc/vmshadow/vmshadow.conf"
#define DEFAULT_STATE_DIR   "/var/lib/vmshadow/state"
#define DEFAULT_WRITERS_DIR "/etc/vmshadow/writers.d"

static const struct {
    const char *name;
    vmsh_cli_cmd_fn fn;
    const char *summary;
} commands[] = {
    {"vms", vmsh_cmd_vms, "list VMs, their disks, agent and the backup method"},
    {"writers", vmsh_cmd_writers, "list writers with their last state and error"},
    {"init", vmsh_cmd_init, "create a repository"},
    {"backup", vmsh_cmd_backup, "back up VMs as one snapshot set"},
    {"list", vmsh_cmd_list, "list backups"},
    {"show", vmsh_cmd_show, "show a backup's document"},
    {"restore", vmsh_cmd_restore, "restore VMs from a backup"},
    {"verify", vmsh_cmd_verify, "check every chunk the backups need"},
    {"prune", vmsh_cmd_prune, "forget backups outside a retention policy"},
    {"gc", vmsh_cmd_gc, "free chunks no backup needs"},
    {"recover", vmsh_cmd_recover, "undo what an interrupted run left behind"},
    {"extract", vmsh_cmd_extract, "write one file of a backup (e.g. a disk image)"},
};

/* Config keys (docs/config.md). */
static const char *const config_keys[] = {
    "repo",          "connect",           "state-dir", "writers-dir",   "freeze-limit",
    "event-timeout", "compression-level", "key-file",  "agent-timeout", NULL,
};

static void print_help(FILE *f)
{
    fprintf(
        f,
        "Usage: vmshadow [OPTIONS] COMMAND [ARGS]\n"
        "\n"
        "Consistent backup and restore of libvirt/QEMU virtual machines.\n"
        "\n"
        "Options:\n"
        "  -c, --connect URI   libvirt connection (default $LIBVIRT_DEFAULT_URI, else "
        "qemu:///system)\n"
        "  -r, --repo DIR      repository (default $VMSHADOW_REPO, the config's, else " DEFAULT_REPO
        ")\n"
        "      --config FILE   configuration file (default $VMSHADOW_CONFIG, else " DEFAULT_CONFIG
        ")\n"
        "      --json          one JSON document on stdout; messages go to stderr\n"
        "      --allow-foreign-repo  accept a repository others can write\n"
        "  -q, --quiet         print less\n"
        "  -v, --verbose       print more\n"
        "  -h, --help          this help; COMMAND --help for a command's\n"
        "  -V, --version       print the version\n"
        "\n"
        "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n"
               "Exit codes: 0 done, 1 failed, 2 usage error, 3 repository damaged,\n"
               "4 busy (another snapshot set or repository writer holds the lock).\n"
               "See vmshadow(1).\n");
}

static void vmsg(vmsh_cli *cli, const char *prefix, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: %s", cli->prog, prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void vmsh_cli_info(vmsh_cli *cli, const char *fmt, ...)
{
    if (cli->verbosity < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vmsg(cli, "", fmt, ap);
    va_end(ap);
}

void vmsh_cli_warn(vmsh_cli *cli, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(cli, "warning: ", fmt, ap);
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
    vmsg(cli, prefix, fmt, ap);
    va_end(ap);
}

int vmsh_cli_fail(vmsh_cli *cli, vmsh_error **err)
{
    int code = err && *err ? (*err)->code : -EIO;
    fprintf(stderr, "%s: error: %s\n", cli->prog,
            err && *err ? (*err)->message : "unknown failure");
    if (err) {
        vmsh_error_free(*err);
        *err = NULL;
    }
    if (code == -EBUSY)
        return VMSH_EXIT_BUSY;
    if (code == -EBADMSG || code == -EUCLEAN)
        return VMSH_EXIT_DAMAGED;
    return VMSH_EXIT_FAILED;
}

int vmsh_cli_usage_error(vmsh_cli *cli, const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s%s%s: ", cli->prog, cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s%s%s --help'.\n", cli->prog, cmd ? " " : "", cmd ? cmd : "");
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
    fputs(json_object_to_json_string_ext(doc,
                                         JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
          stdout);
    fputc('\n', stdout);
    json_object_put(doc);
}

static const char *first_of(const char *a, const char *b, const char *c, const char *d)
{
    if (a && *a)
        return a;
    if (b && *b)
        return b;
    if (c && *c)
        return c;
    return d;
}

int main(int argc, char **argv)
{
    /* A peer that goes away (libvirtd restarted mid-backup, an NBD server,
     * a reader of our output) must be an error we handle (abort the set,
     * undo, say why), not a silent death by SIGPIPE that strands VMs. */
    signal(SIGPIPE, SIG_IGN);
    vmsh_cli cli = {.prog = "vmshadow", .start_ms = vmsh_now_ms()};
    const char *opt_repo = NULL, *opt_config = NULL;
    static const struct option opts[] = {
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
    int c;
    opterr = 0;
    /* '+': stop at the command name; its own options are parsed by it. */
    while ((c = getopt_long(argc, argv, "+:c:r:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli.uri = optarg;
            break;
        case 'r':
            opt_repo = optarg;
            break;
        case 'C':
            opt_config = optarg;
            break;
        case 'j':
            cli.json = true;
            break;
        case 'F':
            cli.allow_foreign_repo = true;
            break;
        case 'q':
            cli.verbosity--;
            break;
        case 'v':
            cli.verbosity++;
            break;
        case 'h':
            print_help(stdout);
            return VMSH_EXIT_OK;
        case 'V':
            printf("vmshadow %s\n", VMSH_VERSION_STRING);
            return VMSH_EXIT_OK;
        case ':':
            return vmsh_cli_usage_error(&cli, NULL, "option '%s' needs a value", argv[optind - 1]);
        default:
            return vmsh_cli_usage_error(&cli, NULL, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc) {
        print_help(stderr);
        return VMSH_EXIT_USAGE;
    }
    const char *name = argv[optind];
    vmsh_cli_cmd_fn fn = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0)
            fn = commands[i].fn;
    if (!fn)
        return vmsh_cli_usage_error(&cli, NULL, "unknown command '%s'", name);

    /* The configuration file: an explicitly named one must exist; the default may not. */
    cli.config_path = first_of(opt_config, getenv("VMSHADOW_CONFIG"), NULL, DEFAULT_CONFIG);
    vmsh_error *err = NULL;
    /* /dev/null names "no configuration", as it does for other tools */
    int r = strcmp(cli.config_path, "/dev/null") == 0
                ? 0
                : vmsh_kvconf_load(&cli.config, cli.config_path, &err);
    if (r == -ENOENT && !opt_config && !getenv("VMSHADOW_CONFIG")) {
        vmsh_error_free(err);
        err = NULL;
    } else if (r < 0) {
        return vmsh_cli_fail(&cli, &err);
    } else if (vmsh_kvconf_check_keys(cli.config, config_keys, &err) < 0) {
        vmsh_kvconf_free(cli.config);
        return vmsh_cli_fail(&cli, &err);
    }
    cli.repo = first_of(opt_repo, getenv("VMSHADOW_REPO"), vmsh_kvconf_get(cli.config, "repo"),
                        DEFAULT_REPO);
    if (!cli.uri)
        cli.uri = first_of(getenv("LIBVIRT_DEFAULT_URI"), vmsh_kvconf_get(cli.config, "connect"),
                           NULL, "qemu:///system");
    cli.state_dir = first_of(getenv("VMSHADOW_STATE_DIR"), vmsh_kvconf_get(cli.config, "state-dir"),
                             NULL, DEFAULT_STATE_DIR);
    cli.writers_dir =
        first_of(getenv("VMSHADOW_WRITERS_DIR"), vmsh_kvconf_get(cli.config, "writers-dir"), NULL,
                 DEFAULT_WRITERS_DIR);
    cli.progress = isatty(STDERR_FILENO) && cli.verbosity >= 0;

    /* Commands parse their own options, with argv[0] the command's name;
     * getopt must be reset for that (optind = 0 re-initialises glibc's). */
    int cmd_index = optind;
    /* Every command first undoes what an interrupted run left behind (R7);
     * `recover` does only that, and reports it. */
    if (strcmp(name, "recover") != 0)
        vmsh_cli_recover_first(&cli);
    optind = 0;
    int rc = fn(&cli, argc - cmd_index, argv + cmd_index);
    vmsh_kvconf_free(cli.config);
    return rc;
}
