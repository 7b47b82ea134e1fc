/* cmd_restore.c - `vmshadow restore BACKUP [VM...] [--to DIR] [--as NAME]
 * [--force] [--dry-run] [--host-devices]`: puts VMs back into libvirt from a
 * backup, entirely from the host (SPEC R8-R15). The library's requestor
 * (src/requestor/restore.c) plans and drives it; the command line parses,
 * asks before replacing VMs (R9) and prints (issue 21). */
#include "cli.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/requestor.h>
#include <vmshadow/util/fs.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow restore BACKUP [VM...] [--to DIR] [--as NAME] [--force]\n"
               "                        [--dry-run] [--host-devices]\n"
               "       vmshadow restore --instant [--bandwidth R] [--no-wait] BACKUP VM\n"
               "\n"
               "Restores the VMs of BACKUP (an ID, a unique prefix or 'latest'), or those\n"
               "named, into libvirt: a VM that exists is shut down and deleted first (only\n"
               "with --force, or when confirmed at a terminal); disks, configuration,\n"
               "firmware variables and the saved state are written, checked, registered;\n"
               "disks are re-pathed and interfaces re-wired (or left disconnected when\n"
               "their switch is gone). A VM backed up from a saved state resumes from it\n"
               "when started.\n"
               "\n"
               "  --to DIR        put the files under DIR/VM/ (default: where they were)\n"
               "  --as NAME       restore one VM beside the original: new name, UUID, MACs\n"
               "  --force         replace VMs that exist without asking\n"
               "  --dry-run       print the plan and change nothing\n"
               "  --host-devices  keep the host devices (pass-through, block devices) of the\n"
               "                  backed-up configuration; off by default\n"
               "  --instant       start the one VM named at once on its disks served from the\n"
               "                  backup, then pull their data in while it runs (vmshadow jobs)\n"
               "  --bandwidth R   with --instant: pull at most R bytes/s per disk (e.g. 20M)\n"
               "  --no-wait       with --instant: return once the VM runs; 'vmshadow recover'\n"
               "                  finishes the pull\n");
}

/* A member of the plan as text: names in a plan come from the backup's
 * document and from libvirt, so they are printed escaped (issue 20). */
static const char *txt(vmsh_cli *cli, json_object *o)
{
    return vmsh_cli_safe(cli, json_object_get_string(o));
}

static void print_plan_text(vmsh_cli *cli, json_object *vms, bool dry)
{
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *p = json_object_array_get_idx(vms, i), *v, *result = NULL;
        if (!dry && !json_object_object_get_ex(p, "result", &result))
            continue; /* the restore stopped before this VM: nothing was done to it */
        const char *vm = json_object_object_get_ex(p, "vm", &v) ? txt(cli, v) : "?";
        const char *as = json_object_object_get_ex(p, "restore_as", &v) ? txt(cli, v) : vm;
        json_object *rep = NULL, *st = NULL;
        json_object_object_get_ex(p, "replaces_existing", &rep);
        json_object_object_get_ex(p, "existing_state", &st);
        printf("VM %s%s%s\n", vm, strcmp(vm, as) ? " as " : "", strcmp(vm, as) ? as : "");
        if (json_object_get_boolean(rep))
            printf("  %s VM %s (%s): shut down and delete\n", dry ? "would replace" : "replaced",
                   as, txt(cli, st));
        /* Issue 22: the steps through a Pacemaker cluster that runs it. */
        json_object *cl = NULL, *steps = NULL;
        if (dry && json_object_object_get_ex(p, "cluster", &cl) &&
            json_object_object_get_ex(cl, "steps", &steps))
            for (size_t k = 0; k < json_object_array_length(steps); k++)
                printf("  cluster: %s\n", txt(cli, json_object_array_get_idx(steps, k)));
        json_object *files = NULL;
        json_object_object_get_ex(p, "files", &files);
        for (size_t k = 0; files && k < json_object_array_length(files); k++) {
            json_object *f = json_object_array_get_idx(files, k), *fn, *to, *link, *note, *fmt;
            json_object_object_get_ex(f, "file", &fn);
            if (!json_object_object_get_ex(f, "to", &to) || !to) {
                if (json_object_object_get_ex(f, "note", &note) && note)
                    printf("  %-18s %s\n", txt(cli, fn), txt(cli, note));
                continue;
            }
            printf("  %-18s -> %s", txt(cli, fn), txt(cli, to));
            if (json_object_object_get_ex(f, "format", &fmt) && fmt)
                printf(" (%s)", txt(cli, fmt));
            if (json_object_object_get_ex(f, "link", &link) && link)
                printf(", linked from %s", txt(cli, link));
            /* issue 25: a disk on storage of its kind: written, created or
             * converted, and how it would be created */
            json_object *stg = NULL, *act = NULL, *snote = NULL, *cmd = NULL, *xml = NULL;
            if (json_object_object_get_ex(f, "storage", &stg) && stg) {
                json_object_object_get_ex(stg, "action", &act);
                json_object_object_get_ex(stg, "note", &snote);
                printf(", %s: %s", txt(cli, act), txt(cli, snote));
                if (json_object_object_get_ex(stg, "create_command", &cmd) && cmd) {
                    printf("\n      create:");
                    for (size_t a = 0; a < json_object_array_length(cmd); a++)
                        printf(" %s", txt(cli, json_object_array_get_idx(cmd, a)));
                }
                if (json_object_object_get_ex(stg, "create_xml", &xml) && xml)
                    printf("\n      create: %s", txt(cli, xml));
            }
            printf("\n");
        }
        json_object *ifaces = NULL, *res = NULL;
        if (!json_object_object_get_ex(p, "interfaces", &ifaces) &&
            json_object_object_get_ex(p, "result", &res))
            json_object_object_get_ex(res, "interfaces", &ifaces);
        for (size_t k = 0; ifaces && k < json_object_array_length(ifaces); k++) {
            json_object *f = json_object_array_get_idx(ifaces, k), *mac, *act, *src;
            json_object_object_get_ex(f, "mac", &mac);
            json_object_object_get_ex(f, "action", &act);
            json_object_object_get_ex(f, "source", &src);
            printf("  interface %s: %s %s\n", mac ? txt(cli, mac) : "(new MAC)", txt(cli, act),
                   src ? txt(cli, src) : "");
        }
        json_object *dropped = NULL;
        json_object_object_get_ex(p, "host_devices_not_attached", &dropped);
        for (size_t k = 0; dropped && k < json_object_array_length(dropped); k++)
            printf("  host device not attached: %s (--host-devices keeps it)\n",
                   txt(cli, json_object_array_get_idx(dropped, k)));
        if (res) {
            json_object *ok = NULL, *e = NULL, *ss = NULL;
            json_object_object_get_ex(res, "registered", &ok);
            json_object_object_get_ex(res, "error", &e);
            json_object_object_get_ex(res, "saved_state", &ss);
            if (json_object_get_boolean(ok))
                printf("  registered as %s%s\n", as,
                       json_object_get_boolean(ss) ? "; resumes from its saved state when started"
                                                   : "; boots from its disks when started");
            else
                printf("  NOT restored: %s\n", e ? txt(cli, e) : "failed");
            json_object *cp = NULL, *cpn = NULL, *cpd = NULL, *cpe = NULL;
            json_object_object_get_ex(res, "checkpoint", &cp);
            json_object_object_get_ex(cp, "name", &cpn);
            json_object_object_get_ex(cp, "redefined", &cpd);
            json_object_object_get_ex(cp, "error", &cpe);
            if (cp && json_object_get_boolean(ok) && json_object_get_boolean(cpd))
                printf("  checkpoint %s of the backup defined again, its bitmap in the restored "
                       "disks\n",
                       txt(cli, cpn));
            else if (cp && json_object_get_boolean(ok))
                printf("  checkpoint %s not defined again (%s): the next backup reads in full\n",
                       txt(cli, cpn), cpe ? txt(cli, cpe) : "no qcow2 disk to carry its bitmap");
        }
    }
}

/* At a terminal, asks before replacing VMs (R9); true when confirmed. */
static bool confirm(void *opaque, json_object *plan)
{
    vmsh_cli *cli = opaque;
    size_t n = 0;
    for (size_t i = 0; i < json_object_array_length(plan); i++) {
        json_object *rep = NULL, *as = NULL;
        json_object_object_get_ex(json_object_array_get_idx(plan, i), "replaces_existing", &rep);
        json_object_object_get_ex(json_object_array_get_idx(plan, i), "restore_as", &as);
        if (json_object_get_boolean(rep)) {
            fprintf(stderr, "VM %s exists and will be shut down and deleted.\n", txt(cli, as));
            n++;
        }
    }
    if (n == 0)
        return true;
    if (!isatty(STDIN_FILENO) || !isatty(STDERR_FILENO) || cli->json)
        return false;
    fprintf(stderr, "Replace %s? [y/N] ", n == 1 ? "it" : "them");
    char line[16];
    return fgets(line, sizeof(line), stdin) && (line[0] == 'y' || line[0] == 'Y');
}

const struct option vmsh_cli_opts_restore[] = {
    {"to", required_argument, NULL, 't'},
    {"as", required_argument, NULL, 'a'},
    {"force", no_argument, NULL, 'f'},
    {"dry-run", no_argument, NULL, 'n'},
    {"host-devices", no_argument, NULL, 'H'},
    {"instant", no_argument, NULL, 'I'},
    {"bandwidth", required_argument, NULL, 'B'},
    {"no-wait", no_argument, NULL, 'W'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_restore(vmsh_cli *cli, int argc, char **argv)
{
    vmsh_requestor_restore_options so = {0};
    bool dry = false, instant = false, no_wait = false;
    uint64_t bandwidth = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", vmsh_cli_opts_restore, NULL)) != -1) {
        switch (c) {
        case 't':
            so.restore_dir = optarg;
            break;
        case 'a':
            so.restore_as = optarg;
            break;
        case 'f':
            so.force = true;
            break;
        case 'n':
            dry = true;
            break;
        case 'H':
            so.host_devices = true;
            break;
        case 'I': /* issue 23: cmd_jobs.c */
            instant = true;
            break;
        case 'B':
            if (vmsh_cli_parse_rate(optarg, &bandwidth) < 0)
                return vmsh_cli_usage_error(cli, "restore",
                                            "--bandwidth needs bytes per second (e.g. 20M)");
            break;
        case 'W':
            no_wait = true;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "restore", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return vmsh_cli_usage_error(cli, "restore", "needs BACKUP");
    if (so.restore_dir && so.restore_dir[0] != '/')
        return vmsh_cli_usage_error(cli, "restore", "--to needs an absolute directory");
    if (so.restore_as && !vmsh_name_is_safe(so.restore_as))
        return vmsh_cli_usage_error(cli, "restore", "--as needs a plain VM name");
    const char *spec = argv[optind];
    char **names = argv + optind + 1;
    int n_names = argc - optind - 1;
    if (so.restore_as && n_names != 1)
        return vmsh_cli_usage_error(cli, "restore", "--as restores exactly one VM: name it");
    so.targets = (const char *const *)names;
    so.n_targets = (size_t)n_names;

    so.backup = spec;
    so.dry_run = dry;
    so.confirm = confirm;
    so.confirm_opaque = cli;
    if ((bandwidth || no_wait) && !instant)
        return vmsh_cli_usage_error(cli, "restore", "--bandwidth and --no-wait go with --instant");
    if (instant)
        return vmsh_cli_restore_instant(cli, &so, bandwidth, no_wait);

    vmsh_error *err = NULL;
    vmsh_repo *repo = NULL;
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    vmsh_requestor_restore_result *res = NULL;
    int rc = VMSH_EXIT_FAILED, r;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, true, &cb);
    if ((r = vmsh_cli_repo_open(cli, &repo, &err)) < 0)
        goto out;
    r = vmsh_requestor_restore(&cfg, &cb, repo, &so, &res, &err);
    if (r < 0 && (!res || !res->plan))
        goto out; /* nothing planned: nothing to show */
    if (dry) {
        if (cli->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "backup", json_object_new_string(res->backup_id));
            json_object_object_add(o, "dry_run", json_object_new_boolean(true));
            json_object_object_add(o, "vms", json_object_get(res->plan));
            vmsh_cli_print_json(o);
        } else {
            printf("restore plan for backup %s (dry run: nothing is changed)\n", res->backup_id);
            print_plan_text(cli, res->plan, true);
        }
        rc = VMSH_EXIT_OK;
        goto out;
    }
    json_object *done = res->done ? res->done : json_object_new_array();
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "backup", json_object_new_string(res->backup_id));
        json_object_object_add(o, "vms", json_object_get(done));
        json_object_object_add(o, "store", vmsh_cli_store_json());
        json_object_object_add(
            o, "error",
            r < 0 ? vmsh_cli_error_json(vmsh_cli_exit_code(res->damaged ? -EBADMSG : r), r,
                                        err ? err->message : "failed")
                  : NULL);
        vmsh_cli_print_json(o);
    } else {
        print_plan_text(cli, done, false);
    }
    if (done != res->done)
        json_object_put(done);
    if (r == 0)
        rc = VMSH_EXIT_OK;
out:
    if (r < 0) {
        if (res && res->damaged && err)
            err->code = -EBADMSG;
        rc = vmsh_cli_fail(cli, &err);
    }
    vmsh_requestor_restore_result_free(res);
    vmsh_repo_free(repo);
    return rc;
}
