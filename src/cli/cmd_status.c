/* cmd_status.c - `vmshadow status` (issue 24; docs/cli.md): the last run of
 * backup, verify, prune and gc (the records metrics.c keeps), the
 * repository's size and backups, and each VM's oldest and newest backup. */
#include "metrics.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char status_help[] =
    "Usage: vmshadow status\n"
    "\n"
    "The last run of backup, verify, prune and gc (when, how long, the result,\n"
    "the last success), the repository's size and number of backups, and each\n"
    "VM's number of backups, oldest and newest. --json: one document.\n";

/* "2026-12-06T03:00:00Z"; "-" for 0 (never) */
static void fmt_time(int64_t ms, char *buf, size_t cap)
{
    if (ms <= 0) {
        snprintf(buf, cap, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_object *time_json(int64_t ms)
{
    char buf[32];
    if (ms <= 0)
        return NULL;
    fmt_time(ms, buf, sizeof(buf));
    return json_object_new_string(buf);
}

static json_object *runs_json(vmsh_cli *cli)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; vmsh_cli_recorded_commands[i]; i++) {
        const char *cmd = vmsh_cli_recorded_commands[i];
        vmsh_cli_run run;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "command", json_object_new_string(cmd));
        if (vmsh_cli_run_load(cli, cmd, &run) == 0) {
            json_object_object_add(o, "last_run", time_json(run.finished_ms));
            json_object_object_add(
                o, "duration_seconds",
                json_object_new_double((double)(run.finished_ms - run.started_ms) / 1000.0));
            json_object_object_add(o, "exit_code", json_object_new_int(run.exit_code));
            json_object_object_add(o, "ok", json_object_new_boolean(run.exit_code == 0));
            json_object_object_add(o, "last_success", time_json(run.last_success_ms));
            json_object_object_add(o, "runs", json_object_new_int64(run.runs));
            json_object_object_add(o, "failures", json_object_new_int64(run.failures));
            if (strcmp(cmd, "backup") == 0)
                json_object_object_add(o, "backup",
                                       run.backup[0] ? json_object_new_string(run.backup) : NULL);
        } else {
            json_object_object_add(o, "last_run", NULL);
        }
        json_object_array_add(a, o);
    }
    return a;
}

static json_object *backup_ref(const vmsh_backup_info *b)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(b->id));
    json_object_object_add(o, "time", json_object_new_string(b->time));
    return o;
}

static json_object *repo_json(vmsh_cli *cli, const vmsh_cli_repo_summary *s)
{
    json_object *o = json_object_new_object(), *vms = json_object_new_array();
    json_object_object_add(o, "path", json_object_new_string(cli->repo));
    json_object_object_add(o, "size_bytes", json_object_new_int64((int64_t)s->size_bytes));
    json_object_object_add(o, "backups", json_object_new_int64((int64_t)s->n));
    json_object_object_add(o, "damaged", json_object_new_int64((int64_t)s->n_damaged));
    for (size_t i = 0; i < s->n_vms; i++) {
        const vmsh_cli_vm_summary *v = &s->vms[i];
        json_object *e = json_object_new_object();
        json_object_object_add(e, "name", json_object_new_string(v->name));
        json_object_object_add(e, "backups", json_object_new_int64((int64_t)v->backups));
        json_object_object_add(e, "oldest", backup_ref(v->oldest));
        json_object_object_add(e, "newest", backup_ref(v->newest));
        json_object_object_add(e, "newest_bytes_read",
                               json_object_new_int64((int64_t)v->bytes_read));
        json_object_object_add(e, "newest_bytes_stored",
                               json_object_new_int64((int64_t)v->bytes_stored));
        json_object_array_add(vms, e);
    }
    json_object_object_add(o, "vms", vms);
    return o;
}

static void print_text(vmsh_cli *cli, json_object *runs, const vmsh_cli_repo_summary *s,
                       const char *repo_error)
{
    printf("%-8s %-21s %10s %-8s %s\n", "COMMAND", "LAST RUN", "DURATION", "RESULT",
           "LAST SUCCESS");
    for (size_t i = 0; i < json_object_array_length(runs); i++) {
        json_object *o = json_object_array_get_idx(runs, i), *v;
        const char *cmd = json_object_get_string(json_object_object_get(o, "command"));
        v = json_object_object_get(o, "last_run");
        if (!v) {
            printf("%-8s %-21s %10s %-8s %s\n", cmd, "never", "-", "-", "-");
            continue;
        }
        char dur[32], result[16];
        snprintf(dur, sizeof(dur), "%.1fs",
                 json_object_get_double(json_object_object_get(o, "duration_seconds")));
        int code = json_object_get_int(json_object_object_get(o, "exit_code"));
        if (code == 0)
            snprintf(result, sizeof(result), "ok");
        else
            snprintf(result, sizeof(result), "exit %d", code);
        json_object *ls = json_object_object_get(o, "last_success");
        printf("%-8s %-21s %10s %-8s %s\n", cmd, json_object_get_string(v), dur, result,
               ls ? json_object_get_string(ls) : "never");
    }
    printf("\n");
    if (repo_error)
        return; /* the caller reports it on stderr */
    char size[32];
    vmsh_cli_format_bytes(s->size_bytes, size, sizeof(size));
    printf("repository %s: %zu backups, %s", cli->repo, s->n, size);
    if (s->n_damaged)
        printf(", %zu DAMAGED", s->n_damaged);
    printf("\n");
    if (!s->n_vms)
        return;
    printf("\n%-24s %7s  %-38s %s\n", "VM", "BACKUPS", "OLDEST", "NEWEST");
    for (size_t i = 0; i < s->n_vms; i++) {
        const vmsh_cli_vm_summary *v = &s->vms[i];
        char oldest[64], newest[64];
        snprintf(oldest, sizeof(oldest), "%s %s", v->oldest->id, v->oldest->time);
        snprintf(newest, sizeof(newest), "%s %s", v->newest->id, v->newest->time);
        printf("%-24s %7zu  %-38s %s\n", v->name, v->backups, oldest, newest);
    }
}

int vmsh_cmd_status(vmsh_cli *cli, int argc, char **argv)
{
    int rc = vmsh_cli_only_help(cli, argc, argv, "status", status_help);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "status", "unexpected argument '%s'", argv[optind]);
    vmsh_error *err = NULL;
    vmsh_cli_repo_summary s;
    bool have_repo = vmsh_cli_repo_summary_load(cli, &s, &err) == 0;
    json_object *runs = runs_json(cli);
    if (cli->json) {
        json_object *doc = json_object_new_object();
        json_object_object_add(doc, "runs", runs);
        json_object_object_add(doc, "repo", have_repo ? repo_json(cli, &s) : NULL);
        json_object_object_add(doc, "error",
                               have_repo ? NULL : json_object_new_string(err->message));
        vmsh_cli_print_json(doc);
    } else {
        print_text(cli, runs, &s, have_repo ? NULL : err->message);
        json_object_put(runs);
    }
    if (!have_repo)
        return vmsh_cli_fail(cli, &err);
    size_t damaged = s.n_damaged;
    vmsh_cli_repo_summary_clear(&s);
    /* like `list`: a damaged manifest is exit 3 (docs/cli.md) */
    return damaged ? VMSH_EXIT_DAMAGED : VMSH_EXIT_OK;
}
