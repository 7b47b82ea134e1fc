/* cmd_restore.c - `vmshadow restore BACKUP [VM...] [--to DIR] [--as NAME]
 * [--force] [--dry-run] [--host-devices]`: puts VMs back into libvirt from a
 * backup, entirely from the host (SPEC R8-R15). The CLI is the requestor: the
 * coordinator sends PreRestore, the CLI writes each file where the VM writer
 * planned it (every chunk checked), then PostRestore checks and registers. */
#include "cli.h"

#include <vmshadow/coord/document.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/vm_writer.h>

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
               "                  backed-up configuration; off by default\n");
}

typedef struct cli_restorer {
    vmsh_requestor_ops ops; /* first */
    vmsh_cli *cli;
    vmsh_repo *repo;
    char id[64];
    bool damaged; /* a chunk or index was missing or damaged (exit code 3) */
} cli_restorer;

static int req_restore(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                       const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    cli_restorer *q = (cli_restorer *)self;
    const char *dest = vmsh_file_restored_path(f);
    if (!dest) {
        vmsh_file_set_restored(f, VMSH_RESTORE_FAILED, NULL, "no place planned for it");
        return 0;
    }
    _cleanup_free_ char *name = vmsh_cli_repo_file_name(md, c, f);
    if (!name)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_cli_progress_state ps = {.cli = q->cli, .what = name};
    vmsh_restore_stats st = {0};
    vmsh_error *e = NULL;
    int r =
        vmsh_repo_restore_file(q->repo, q->id, name, dest, true, vmsh_cli_progress, &ps, &st, &e);
    vmsh_cli_progress_end(&ps);
    if (r < 0) {
        /* recorded, not returned: PostRestore reports this VM (R11) and the
         * other VMs of the backup still come back */
        if (e && (e->code == -EBADMSG || e->code == -EUCLEAN))
            q->damaged = true;
        vmsh_file_set_restored(f, VMSH_RESTORE_FAILED, dest, e ? e->message : strerror(-r));
        vmsh_error_free(e);
        return 0;
    }
    vmsh_cli_debug(q->cli, "restored %s to %s (%llu bytes)", name, dest,
                   (unsigned long long)st.bytes_written);
    return vmsh_file_set_restored(f, VMSH_RESTORE_OK, dest, NULL) < 0
               ? vmsh_error_set(err, -ENOMEM, "out of memory")
               : 0;
}

static bool selected(char **names, int n, const char *name)
{
    if (n == 0)
        return true;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

/* The VM writer's part of the backup, or NULL. */
static vmsh_metadata *vm_part(const vmsh_backup_doc *doc)
{
    for (size_t i = 0; i < vmsh_backup_doc_writer_count(doc); i++) {
        vmsh_metadata *md = vmsh_backup_doc_writer(doc, i);
        if (strcmp(vmsh_metadata_writer_id(md), VMSH_VM_WRITER_ID) == 0)
            return md;
    }
    return NULL;
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
static bool confirm(vmsh_cli *cli, json_object *plan)
{
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
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_restore(vmsh_cli *cli, int argc, char **argv)
{
    vmsh_set_options so = {0};
    bool dry = false;
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

    vmsh_error *err = NULL;
    cli_restorer q = {.ops = {.version = VMSH_REQUESTOR_OPS_VERSION, .restore_file = req_restore},
                      .cli = cli};
    vmsh_backup_info *bi = NULL;
    vmsh_backup_doc *doc = NULL;
    vmsh_cli_host_writers h = {0};
    vmsh_set *set = NULL;
    json_object *plan = NULL;
    char **xmls = NULL;
    int rc = VMSH_EXIT_FAILED, r;
    vmsh_coord_config cfg;
    vmsh_metadata *md = NULL;
    size_t nc = 0;
    if ((r = vmsh_cli_coord_config(cli, &cfg, &err)) < 0 ||
        (r = vmsh_cli_repo_open(cli, &q.repo, &err)) < 0 ||
        (r = vmsh_repo_backup_info(q.repo, spec, &bi, &err)) < 0)
        goto out;
    snprintf(q.id, sizeof(q.id), "%s", bi->id);
    if ((r = vmsh_backup_doc_parse(bi->document, strlen(bi->document), &doc, &err)) < 0) {
        vmsh_error_prefix(&err, "backup %s", q.id);
        goto out;
    }
    md = vm_part(doc);
    nc = md ? vmsh_metadata_component_count(md) : 0;
    for (int i = 0; i < n_names; i++)
        if (!md || !vmsh_metadata_find_component(md, names[i])) {
            r = vmsh_error_set(&err, -ENOENT, "VM %s is not in backup %s (see 'vmshadow show %s')",
                               names[i], q.id, q.id);
            goto out;
        }
    if (nc == 0) {
        r = vmsh_error_set(&err, -ENOENT, "backup %s holds no VM", q.id);
        goto out;
    }
    if ((r = vmsh_cli_build_writers(cli, false, &h, &err)) < 0)
        goto out;
    /* The plan: what --dry-run prints, and what a confirmation asks about. */
    xmls = vmsh_calloc_array(nc, sizeof(char *));
    for (size_t i = 0; xmls && i < nc; i++) {
        vmsh_component *comp = vmsh_metadata_component(md, i);
        vmsh_component_set_selected(comp, selected(names, n_names, vmsh_component_name(comp)));
        vmsh_file *f = vmsh_component_find_file(comp, "config/domain.xml");
        _cleanup_free_ char *fname = f ? vmsh_cli_repo_file_name(md, comp, f) : NULL;
        size_t len = 0;
        if (fname && vmsh_component_selected(comp))
            vmsh_repo_read_file(q.repo, q.id, fname, 4u << 20, &xmls[i], &len, NULL);
    }
    if ((r = vmsh_vm_writer_restore_plan(h.vm_writer, md, &so, (const char *const *)xmls, &plan,
                                         &err)) < 0)
        goto out;
    if (dry) {
        if (cli->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "backup", json_object_new_string(q.id));
            json_object_object_add(o, "dry_run", json_object_new_boolean(true));
            json_object_object_add(o, "vms", json_object_get(plan));
            vmsh_cli_print_json(o);
        } else {
            printf("restore plan for backup %s (dry run: nothing is changed)\n", q.id);
            print_plan_text(cli, plan, true);
        }
        rc = VMSH_EXIT_OK;
        goto out;
    }
    if (!so.force && confirm(cli, plan))
        so.force = true;
    r = vmsh_coord_restore(&cfg, h.w, h.n, &q.ops, doc, &so, &set, &err);
    /* The outcome per VM, from the VM writer's records. */
    json_object *done = json_object_new_array();
    for (size_t i = 0; i < nc; i++) {
        vmsh_component *comp = vmsh_metadata_component(md, i);
        json_object *p = NULL;
        if (vmsh_component_selected(comp) &&
            json_object_object_get_ex(vmsh_component_extra(comp), "restore", &p))
            json_object_array_add(done, json_object_get(p));
    }
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "backup", json_object_new_string(q.id));
        json_object_object_add(o, "vms", done);
        json_object_object_add(
            o, "error",
            r < 0 ? vmsh_cli_error_json(vmsh_cli_exit_code(q.damaged ? -EBADMSG : r), r,
                                        err ? err->message : "failed")
                  : NULL);
        vmsh_cli_print_json(o);
    } else {
        print_plan_text(cli, done, false);
        json_object_put(done);
    }
    if (r == 0)
        rc = VMSH_EXIT_OK;
out:
    if (r < 0) {
        if (q.damaged && err)
            err->code = -EBADMSG;
        rc = vmsh_cli_fail(cli, &err);
    }
    for (size_t i = 0; xmls && i < nc; i++)
        free(xmls[i]);
    free(xmls);
    json_object_put(plan);
    vmsh_set_free(set);
    vmsh_cli_host_writers_clear(&h);
    vmsh_backup_doc_free(doc);
    vmsh_backup_info_free(bi);
    vmsh_repo_free(q.repo);
    return rc;
}
