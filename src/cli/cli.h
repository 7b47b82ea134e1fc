/* cli.h - what the commands of the `vmshadow` program share. The CLI is the
 * requestor (SPEC.md "The model"): a thin layer over the library's public
 * headers. It is the only place that prints. */
#ifndef VMSH_CLI_H
#define VMSH_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>

#include <vmshadow/requestor/requestor.h>
#include <vmshadow/util/error.h>
#include <vmshadow/util/kvconf.h>

/* Exit codes: CLI.md "Exit codes"; docs/cli.md. */
enum {
    VMSH_EXIT_OK = 0,
    VMSH_EXIT_FAILED = 1,
    VMSH_EXIT_USAGE = 2,
    VMSH_EXIT_DAMAGED = 3,
    VMSH_EXIT_BUSY = 4,
    /* backup: stored, complete except what --allow-excluded accepted (R6) */
    VMSH_EXIT_EXCLUDED = 5,
};

typedef struct vmsh_cli {
    const char *prog;
    const char *uri;         /* -c; NULL: libvirt's default resolution */
    const char *repo;        /* -r / $VMSHADOW_REPO / config "repo" / default */
    const char *config_path; /* --config / $VMSHADOW_CONFIG / default */
    const char *state_dir;   /* $VMSHADOW_STATE_DIR / config "state-dir" / default */
    const char *writers_dir; /* $VMSHADOW_WRITERS_DIR / config "writers-dir" / default */
    bool json;
    int verbosity;            /* 0 normal, <0 quiet, >0 verbose */
    bool progress;            /* stderr is a terminal and not quiet */
    vmsh_kvconf *config;      /* may be NULL when no config file exists */
    int64_t start_ms;         /* vmsh_now_ms() when main began (debug lines show the time since) */
    bool key_file_set;        /* a command decided the key file (init: its --key-file or none) */
    const char *key_file_opt; /* then this one, else $VMSHADOW_KEY_FILE, else the config's */
    char **pool;              /* vmsh_cli_safe's copies, freed when main returns */
    size_t n_pool;
    /* --allow-foreign-repo: VMSH_REPO_OPEN_ALLOW_FOREIGN for every repository opened */
    bool allow_foreign_repo;
} vmsh_cli;

typedef int (*vmsh_cli_cmd_fn)(vmsh_cli *cli, int argc, char **argv);

/* Reports an error on stderr as "vmshadow: <message>" and returns the exit
 * code that fits it (vmsh_cli_exit_code). Frees *err. With --json, also
 * prints {"error": ...} (vmsh_cli_error_json) on stdout unless the command
 * already printed its document (issue 20 point 10). */
int vmsh_cli_fail(vmsh_cli *cli, vmsh_error **err);
/* The exit code of a failure with error code `code`: -EBUSY 4,
 * -EBADMSG/-EUCLEAN 3, else 1. */
int vmsh_cli_exit_code(int code);
/* The `error` member of a --json document: {"code": "failed"|"usage"|
 * "damaged"|"busy", "exit_code", "errno": "ENOENT"|null, "message"}. */
json_object *vmsh_cli_error_json(int exit_code, int code, const char *message);
/* `s` as it may be printed as text: control characters and bytes that are
 * not UTF-8 escaped (\t, \x1b, ...); `s` itself when nothing needs it. The
 * copy lives until main returns. For every name that comes from libvirt, a
 * backup document or the repository. */
const char *vmsh_cli_safe(vmsh_cli *cli, const char *s);
/* The option parsing of a command whose only option is --help: prints `help`
 * and returns VMSH_EXIT_OK for --help, a usage error for any other option,
 * and -1 when the command goes on (optind then points at its arguments). */
int vmsh_cli_only_help(vmsh_cli *cli, int argc, char **argv, const char *cmd, const char *help);
/* Prints a usage error for `cmd` (with --json also as a document) and
 * returns VMSH_EXIT_USAGE. */
int vmsh_cli_usage_error(vmsh_cli *cli, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Messages for the user on stderr; info is hidden by -q, debug shown by -v. */
void vmsh_cli_info(vmsh_cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vmsh_cli_warn(vmsh_cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vmsh_cli_debug(vmsh_cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints one JSON document on stdout and releases it: an object gets
 * `"error": null` unless it has an `error`; bytes that are not UTF-8 in its
 * strings are written as the text \\xHH. */
void vmsh_cli_print_json(struct json_object *doc);
/* The `store` member of a --json document: what the command moved to and
 * from an object store (issue 26 point 4: bytes, seconds, MB/s each way),
 * or NULL (JSON null) for a local directory. */
struct json_object *vmsh_cli_store_json(void);

/* Replays the journals of interrupted runs (R7) before a command; reports
 * what it undid, warns about what it could not. Always returns 0 (cmd_backup.c). */
int vmsh_cli_recover_first(vmsh_cli *cli);

/* The getopt_long tables of the commands with options of their own (main
 * takes the global options out of a command's words with them). */
extern const struct option vmsh_cli_opts_vms[], vmsh_cli_opts_init[], vmsh_cli_opts_backup[],
    vmsh_cli_opts_restore[], vmsh_cli_opts_prune[], vmsh_cli_opts_extract[], vmsh_cli_opts_serve[],
    vmsh_cli_opts_files[];

/* Commands, one file each group: cmd_vms.c, cmd_repo.c, cmd_backup.c, cmd_restore.c. */
int vmsh_cmd_vms(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_writers(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_init(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_backup(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_list(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_show(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_restore(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_verify(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_prune(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_gc(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_recover(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_extract(vmsh_cli *cli, int argc, char **argv);
int vmsh_cmd_serve(vmsh_cli *cli, int argc, char **argv); /* cmd_serve.c, issue 23 */
int vmsh_cmd_files(vmsh_cli *cli, int argc, char **argv); /* cmd_files.c, issue 23 */
/* Instant restore (cmd_jobs.c, issue 23): `jobs`, `restore --instant`,
 * the instant part of `recover` (abandon: a VM to tear down, or NULL). */
int vmsh_cmd_jobs(vmsh_cli *cli, int argc, char **argv);
int vmsh_cli_restore_instant(vmsh_cli *cli, const vmsh_requestor_restore_options *so,
                             uint64_t bandwidth, bool no_wait);
int vmsh_cli_instant_recover(vmsh_cli *cli, const char *abandon, size_t *n_done, vmsh_error **err);
/* "4M", "512K", "1G", "1000" (bytes): -EINVAL otherwise. */
int vmsh_cli_parse_rate(const char *s, uint64_t *out);
int vmsh_cmd_status(vmsh_cli *cli, int argc, char **argv); /* cmd_status.c */
/* After a backup, verify, prune or gc (argv: the command's), records the
 * run for `status` and writes the metrics-dir files (metrics.c). */
void vmsh_cli_metrics_after(vmsh_cli *cli, int argc, char **argv, int rc);

/* Repository helpers (cmd_repo.c). vmsh_cli_repo_open is THE way every
 * command opens the repository (issue 21): the key file comes from the
 * command's --key-file (cli->key_file_opt), else $VMSHADOW_KEY_FILE, else
 * the config key `key-file`; the config key `compression-level` applies to
 * what is written through it. */
struct vmsh_repo;
const char *vmsh_cli_key_file(vmsh_cli *cli);
int vmsh_cli_repo_open(vmsh_cli *cli, struct vmsh_repo **out, vmsh_error **err);
/* Text layout (cmd_repo.c): the width of stdout's terminal, else
 * $COLUMNS, else 0 (not a terminal: lines are not wrapped); the width of a
 * UTF-8 string in columns (one per character); `text` printed from column
 * `col` (already reached) up to `width`, wrapped at spaces onto lines
 * indented by `indent`, ending with a newline. */
int vmsh_cli_columns(void);
int vmsh_cli_text_width(const char *s);
void vmsh_cli_print_wrapped(const char *text, int col, int indent, int width);
/* "1.5 GiB" */
void vmsh_cli_format_bytes(uint64_t n, char *buf, size_t cap);
/* A vmsh_progress_fn printing "what: 42% (x of y)" on stderr at most 4 times
 * a second, only when cli->progress (stderr is a terminal). */
typedef struct vmsh_cli_progress_state {
    vmsh_cli *cli;
    const char *what;
    int64_t last_ms;
    bool shown;
} vmsh_cli_progress_state;
void vmsh_cli_progress(void *opaque, uint64_t done, uint64_t total);
void vmsh_cli_progress_end(vmsh_cli_progress_state *p);

/* The requestor's configuration from the command line's (host.c). */
void vmsh_cli_requestor_config(vmsh_cli *cli, vmsh_requestor_config *cfg);
/* Callbacks that print what the requestor tells: warnings, -v detail, a
 * progress line per file at a terminal (backup's or restore's layout). */
typedef struct vmsh_cli_events {
    vmsh_cli *cli;
    bool restore;
    int64_t last_ms;
    bool shown;
} vmsh_cli_events;
void vmsh_cli_callbacks(vmsh_cli *cli, vmsh_cli_events *ev, bool restore,
                        vmsh_requestor_callbacks *cb);

#endif
