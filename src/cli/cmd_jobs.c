/* cmd_jobs.c - instant restore on the command line (issue 23): `restore
 * --instant` (called by cmd_restore.c), `jobs` (the instant restores in
 * progress) and `recover [--abandon VM]`'s instant part. The work is the
 * requestor's (src/requestor/instant.c); this file parses and prints. */
#include "cli.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/instant.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vmsh_cli_parse_rate(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -EINVAL;
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024, end++;
    if (*end || v > UINT64_MAX / mul)
        return -EINVAL;
    *out = v * mul;
    return 0;
}

int vmsh_cli_restore_instant(vmsh_cli *cli, const vmsh_requestor_restore_options *so,
                             uint64_t bandwidth, bool no_wait)
{
    if (so->n_targets != 1)
        return vmsh_cli_usage_error(cli, "restore", "--instant restores exactly one VM: name it");
    if (so->dry_run)
        return vmsh_cli_usage_error(cli, "restore", "--instant has no --dry-run");
    vmsh_error *err = NULL;
    vmsh_repo *repo = NULL;
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    vmsh_requestor_restore_result *res = NULL;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, true, &cb);
    vmsh_instant_options o = {
        .repo_path = cli->repo,
        .key_file = vmsh_cli_key_file(cli),
        .backup = so->backup,
        .vm = so->targets[0],
        .restore_dir = so->restore_dir,
        .restore_as = so->restore_as,
        .force = so->force,
        .host_devices = so->host_devices,
        .confirm = so->confirm,
        .confirm_opaque = so->confirm_opaque,
        .bandwidth = bandwidth,
        .no_wait = no_wait,
    };
    int r = vmsh_cli_repo_open(cli, &repo, &err);
    if (r == 0)
        r = vmsh_instant_restore(&cfg, &cb, repo, &o, &res, &err);
    const char *name = so->restore_as ? so->restore_as : so->targets[0];
    if (cli->json) {
        json_object *doc = json_object_new_object();
        json_object_object_add(
            doc, "backup", res && res->backup_id ? json_object_new_string(res->backup_id) : NULL);
        json_object_object_add(doc, "instant", json_object_new_boolean(true));
        json_object_object_add(doc, "vm", json_object_new_string(name));
        json_object_object_add(doc, "done", json_object_new_boolean(r == 0 && !no_wait));
        json_object_object_add(doc, "vms", res && res->done ? json_object_get(res->done) : NULL);
        if (r < 0)
            json_object_object_add(
                doc, "error",
                vmsh_cli_error_json(vmsh_cli_exit_code(r), r, err ? err->message : "failed"));
        vmsh_cli_print_json(doc);
    } else if (r == 0) {
        if (no_wait)
            printf("VM %s runs on backup %s; its disks are being pulled (vmshadow jobs; "
                   "'vmshadow recover' finishes)\n",
                   vmsh_cli_safe(cli, name), res->backup_id);
        else
            printf("VM %s restored instantly from backup %s; every disk pulled, serving "
                   "stopped\n",
                   vmsh_cli_safe(cli, name), res->backup_id);
    }
    vmsh_requestor_restore_result_free(res);
    vmsh_repo_free(repo);
    if (r < 0) {
        if (cli->json) {
            vmsh_error_free(err);
            return vmsh_cli_exit_code(r);
        }
        return vmsh_cli_fail(cli, &err);
    }
    return VMSH_EXIT_OK;
}

int vmsh_cli_instant_recover(vmsh_cli *cli, const char *abandon, size_t *n_done, vmsh_error **err)
{
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, true, &cb);
    return vmsh_instant_recover(&cfg, &cb, abandon, n_done, err);
}

static const char *usage_jobs = "Usage: vmshadow jobs\n"
                                "\n"
                                "Lists the instant restores in progress (restore --instant): each "
                                "VM, its\nbackup, the step it is at, and per disk whether it is "
                                "pulled (independent\nof the repository), served, and the pull's "
                                "progress.\n";

int vmsh_cmd_jobs(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(cli, argc, argv, "jobs", usage_jobs);
    if (done >= 0)
        return done;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "jobs", "takes no arguments");
    vmsh_requestor_config cfg;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_instant_status *s = NULL;
    size_t n = 0;
    vmsh_error *err = NULL;
    int r = vmsh_instant_list(&cfg, &s, &n, &err);
    if (r < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *doc = json_object_new_object(), *a = json_object_new_array();
        for (size_t i = 0; i < n; i++) {
            json_object *o = json_object_new_object(), *da = json_object_new_array();
            json_object_object_add(o, "kind", json_object_new_string("instant-restore"));
            json_object_object_add(o, "vm", json_object_new_string(s[i].vm));
            json_object_object_add(o, "backup", json_object_new_string(s[i].backup));
            json_object_object_add(o, "step", json_object_new_string(s[i].step));
            json_object_object_add(o, "started",
                                   s[i].started ? json_object_new_string(s[i].started) : NULL);
            json_object_object_add(o, "vm_state", json_object_new_string(s[i].vm_state));
            bool all = true;
            for (size_t k = 0; k < s[i].n_disks; k++) {
                const vmsh_instant_disk_status *d = &s[i].disks[k];
                json_object *x = json_object_new_object();
                json_object_object_add(x, "disk", json_object_new_string(d->disk));
                json_object_object_add(x, "overlay",
                                       d->overlay ? json_object_new_string(d->overlay) : NULL);
                json_object_object_add(x, "copy_to",
                                       d->copy_to ? json_object_new_string(d->copy_to) : NULL);
                json_object_object_add(x, "done", json_object_new_boolean(d->done));
                json_object_object_add(x, "served", json_object_new_boolean(d->served));
                json_object_object_add(x, "pulling", json_object_new_boolean(d->pulling));
                json_object_object_add(x, "pulled", json_object_new_boolean(d->pulled));
                json_object_object_add(x, "bytes_done", json_object_new_int64((int64_t)d->cur));
                json_object_object_add(x, "bytes_total", json_object_new_int64((int64_t)d->end));
                json_object_array_add(da, x);
                all = all && d->done;
            }
            json_object_object_add(o, "disks", da);
            json_object_object_add(o, "done", json_object_new_boolean(all));
            json_object_array_add(a, o);
        }
        json_object_object_add(doc, "jobs", a);
        vmsh_cli_print_json(doc);
    } else if (n == 0) {
        printf("no instant restore in progress\n");
    } else {
        for (size_t i = 0; i < n; i++) {
            printf("instant restore of VM %s from backup %s: %s (VM %s, since %s)\n",
                   vmsh_cli_safe(cli, s[i].vm), s[i].backup, vmsh_cli_safe(cli, s[i].step),
                   s[i].vm_state, s[i].started ? s[i].started : "?");
            for (size_t k = 0; k < s[i].n_disks; k++) {
                const vmsh_instant_disk_status *d = &s[i].disks[k];
                char a[32], b[32];
                vmsh_cli_format_bytes(d->cur, a, sizeof(a));
                vmsh_cli_format_bytes(d->end, b, sizeof(b));
                if (d->copy_to && d->done)
                    printf("  %s  copied onto %s\n", vmsh_cli_safe(cli, d->disk),
                           vmsh_cli_safe(cli, d->copy_to));
                else if (d->copy_to && d->pulling)
                    printf("  %s  copying onto %s: %s of %s%s\n", vmsh_cli_safe(cli, d->disk),
                           vmsh_cli_safe(cli, d->copy_to), a, b,
                           d->served ? "" : " (NOT SERVED: run vmshadow recover)");
                else if (d->done)
                    printf("  %s  pulled\n", vmsh_cli_safe(cli, d->disk));
                else if (d->pulled)
                    printf("  %s  pulled; run vmshadow recover to finish (stop serving)\n",
                           vmsh_cli_safe(cli, d->disk));
                else if (d->pulling)
                    printf("  %s  pulling %s of %s%s\n", vmsh_cli_safe(cli, d->disk), a, b,
                           d->served ? "" : " (NOT SERVED: run vmshadow recover)");
                else
                    printf("  %s  waiting%s\n", vmsh_cli_safe(cli, d->disk),
                           d->served ? "" : " (NOT SERVED: run vmshadow recover)");
            }
        }
    }
    vmsh_instant_list_free(s, n);
    return VMSH_EXIT_OK;
}
