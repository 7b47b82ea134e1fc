/* cmd_vms.c - `vmshadow vms`: every VM of the connection with its state,
 * disks (target, source, format, kind), whether its agent answers, and the
 * method a backup would use and why (CLI.md; SPEC R2, R6). */
#include "cli.h"

#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/method.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_AGENT_TIMEOUT_S 3

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow vms [--method auto|saved-state|guest] [VM...]\n"
               "\n"
               "Lists VMs: state, disks (target, source, format, kind), whether the guest\n"
               "agent answers, and the backup method a backup would use, with the reason.\n"
               "With --method guest, VMs that cannot use it show why (SPEC R2).\n"
               "A VM that a Pacemaker cluster manages shows its resource, node and\n"
               "managed/maintenance state (SPEC R16).\n");
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static json_object *disk_json(const vmsh_domxml_disk *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "target", jstr(d->target));
    json_object_object_add(o, "source", jstr(d->source));
    json_object_object_add(o, "format", jstr(d->format));
    json_object_object_add(o, "kind", jstr(vmsh_disk_kind_name(d->kind)));
    json_object_object_add(o, "device", jstr(d->device));
    json_object_object_add(o, "readonly", json_object_new_boolean(d->readonly));
    const char *excl = vmsh_method_disk_exclusion(d);
    json_object_object_add(o, "excluded", json_object_new_boolean(excl != NULL));
    json_object_object_add(o, "exclusion_reason", jstr(excl));
    return o;
}

static json_object *agent_json(const vmsh_agent_info *a)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_boolean(a && a->channel));
    json_object_object_add(o, "reachable", json_object_new_boolean(a && a->reachable));
    json_object_object_add(o, "can_freeze", json_object_new_boolean(a && a->can_freeze));
    json_object_object_add(o, "error", jstr(a ? a->error : "not probed"));
    if (a && a->fs_known) {
        json_object *fsl = json_object_new_array();
        for (size_t i = 0; i < a->n_fs; i++) {
            json_object *f = json_object_new_object();
            json_object_object_add(f, "mountpoint", jstr(a->fs[i].mountpoint));
            json_object_object_add(f, "type", jstr(a->fs[i].type));
            json_object_array_add(fsl, f);
        }
        json_object_object_add(o, "filesystems", fsl);
    }
    return o;
}

/* Issue 22 (SPEC R16): the Pacemaker resource that manages the VM, or null. */
static json_object *cluster_json(const vmsh_cluster *c, const vmsh_cluster_rsc *r, bool mismatch)
{
    if (!r)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "resource", jstr(r->id));
    json_object_object_add(o, "node", jstr(r->node));
    json_object_object_add(o, "role", jstr(r->role));
    const char *mode = vmsh_cluster_rsc_mode(c, r);
    json_object_object_add(o, "mode", jstr(mode));
    json_object_object_add(o, "managed", json_object_new_boolean(strcmp(mode, "managed") == 0));
    json_object_object_add(o, "maintenance",
                           json_object_new_boolean(strcmp(mode, "maintenance") == 0));
    json_object_object_add(o, "failed", json_object_new_boolean(r->failed));
    json_object_object_add(o, "fail_count", json_object_new_int(r->fail_count));
    json_object_object_add(o, "config", jstr(r->config));
    json_object_object_add(o, "config_names_other_domain", json_object_new_boolean(mismatch));
    json_object_object_add(o, "quorum", json_object_new_boolean(c->quorum));
    return o;
}

static bool wanted(const vmsh_vm *vm, int argc, char **argv)
{
    if (optind >= argc)
        return true;
    for (int k = optind; k < argc; k++)
        if (strcmp(argv[k], vm->name) == 0)
            return true;
    return false;
}

static const char *agent_word(const vmsh_agent_info *a)
{
    if (!a || !a->channel)
        return "none";
    if (a->reachable)
        return a->can_freeze ? "reachable" : "no-freeze";
    return "unreachable";
}

const struct option vmsh_cli_opts_vms[] = {
    {"method", required_argument, NULL, 'm'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_vms(vmsh_cli *cli, int argc, char **argv)
{
    vmsh_method requested = VMSH_METHOD_AUTO;
    int c;
    while ((c = getopt_long(argc, argv, "h", vmsh_cli_opts_vms, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (vmsh_method_parse(optarg, &requested) < 0)
                return vmsh_cli_usage_error(cli, "vms", "unknown method '%s'", optarg);
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "vms", "unknown option '%s'", argv[optind - 1]);
        }
    }
    long agent_timeout = DEFAULT_AGENT_TIMEOUT_S;
    vmsh_error *err = NULL;
    if (vmsh_kvconf_get_int(cli->config, "agent-timeout", 1, 300, &agent_timeout, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    const char *scratch_dir = vmsh_kvconf_get(cli->config, "scratch-dir");

    vmsh_hv *hv = NULL;
    if (vmsh_hv_open(&hv, cli->uri, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_vm **vms = NULL;
    size_t n = 0;
    if (vmsh_hv_list_vms(hv, &vms, &n, &err) < 0) {
        vmsh_hv_free(hv);
        return vmsh_cli_fail(cli, &err);
    }
    /* A name that is no VM is an error, as for backup (issue 24): an empty
     * list would read as "nothing to do". */
    for (int k = optind; k < argc; k++) {
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = strcmp(argv[k], vms[i]->name) == 0;
        if (!found) {
            vmsh_error_set(&err, -ENOENT, "no VM named '%s' on %s", argv[k], vmsh_hv_uri(hv));
            vmsh_vm_list_free(vms, n);
            vmsh_hv_free(hv);
            return vmsh_cli_fail(cli, &err);
        }
    }
    /* Nothing at all on a host without Pacemaker; a cluster that does not
     * answer is a warning, not a failure of the listing. */
    vmsh_cluster *cluster = NULL;
    if (vmsh_cluster_probe(&cluster, &err) < 0) {
        vmsh_cli_warn(cli, "%s", err->message);
        vmsh_error_free(err);
        err = NULL;
    }
    int rc = VMSH_EXIT_OK;
    json_object *list = json_object_new_array();
    /* Text: the name column as wide as the widest name shown. */
    int name_w = 4;
    for (size_t i = 0; i < n; i++) {
        int w = vmsh_cli_text_width(vmsh_cli_safe(cli, vms[i]->name));
        if (w > name_w && wanted(vms[i], argc, argv))
            name_w = w;
    }
    int width = vmsh_cli_columns(), reason_col = name_w + 1 + 9 + 1 + 11 + 1 + 11 + 1;
    if (!cli->json)
        printf("%-*s %-9s %-11s %-11s %s\n", name_w, "NAME", "STATE", "AGENT", "METHOD", "REASON");
    for (size_t i = 0; i < n; i++) {
        vmsh_vm *vm = vms[i];
        if (!wanted(vm, argc, argv))
            continue;
        vmsh_agent_info *agent = NULL;
        if (vmsh_hv_agent_probe(hv, vm, (int)agent_timeout, &agent, &err) < 0) {
            vmsh_cli_warn(cli, "%s", err->message);
            vmsh_error_free(err);
            err = NULL;
        }
        bool mismatch = false;
        const vmsh_cluster_rsc *crsc = vmsh_cluster_find(cluster, vm->name, vm->uuid, &mismatch);
        vmsh_method_choice mc = {0};
        const char *method = NULL, *reason = NULL;
        vmsh_error *merr = NULL;
        if (vmsh_method_choose(vm, agent, scratch_dir, requested, &mc, &merr) < 0) {
            method = "none";
            reason = merr->message;
        } else {
            method = vmsh_method_name(mc.method);
            reason = mc.reason;
        }
        if (cli->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "name", jstr(vm->name));
            json_object_object_add(o, "uuid", jstr(vm->uuid));
            json_object_object_add(o, "state", jstr(vmsh_vm_state_name(vm->state)));
            json_object_object_add(o, "persistent", json_object_new_boolean(vm->persistent));
            json_object_object_add(o, "managed_save", json_object_new_boolean(vm->managed_save));
            json_object *disks = json_object_new_array();
            for (size_t d = 0; vm->xml && d < vm->xml->n_disks; d++)
                json_object_array_add(disks, disk_json(&vm->xml->disks[d]));
            json_object_object_add(o, "disks", disks);
            json_object_object_add(o, "xml_error", jstr(vm->xml_error));
            json_object_object_add(o, "agent", agent_json(agent));
            json_object_object_add(o, "method", jstr(method));
            json_object_object_add(o, "reason", jstr(reason));
            json_object_object_add(o, "cluster", cluster_json(cluster, crsc, mismatch));
            json_object_array_add(list, o);
        } else {
            const char *nm = vmsh_cli_safe(cli, vm->name);
            printf("%s%*s %-9s %-11s %-11s ", nm, name_w - vmsh_cli_text_width(nm), "",
                   vmsh_vm_state_name(vm->state), agent_word(agent), method);
            vmsh_cli_print_wrapped(vmsh_cli_safe(cli, reason), reason_col, reason_col, width);
            if (vm->xml_error) {
                fputs("    ! domain XML not understood: ", stdout);
                vmsh_cli_print_wrapped(vmsh_cli_safe(cli, vm->xml_error), 32, 6, width);
            }
            for (size_t d = 0; vm->xml && d < vm->xml->n_disks; d++) {
                const vmsh_domxml_disk *dk = &vm->xml->disks[d];
                const char *excl = vmsh_method_disk_exclusion(dk);
                const char *src = dk->source ? vmsh_cli_safe(cli, dk->source) : "-";
                /* R6: an excluded disk says why on its own line, "]" included
                 * (issue 24: the "]" used to come on a line of its own) */
                int col = printf("    %-8s %-11s %-6s ",
                                 dk->target ? vmsh_cli_safe(cli, dk->target) : "?",
                                 vmsh_disk_kind_name(dk->kind),
                                 dk->format ? vmsh_cli_safe(cli, dk->format) : "-");
                if (!excl) {
                    printf("%s\n", src);
                    continue;
                }
                _cleanup_free_ char *text = NULL;
                if (asprintf(&text, "%s  [excluded: %s]", src, vmsh_cli_safe(cli, excl)) < 0)
                    text = NULL;
                vmsh_cli_print_wrapped(text ? text : src, col, col, width);
            }
            if (crsc) {
                printf("    cluster: resource %s", vmsh_cli_safe(cli, crsc->id));
                printf(" on %s", crsc->node ? vmsh_cli_safe(cli, crsc->node) : "no node");
                printf(", %s, %s", vmsh_cli_safe(cli, crsc->role ? crsc->role : "?"),
                       vmsh_cluster_rsc_mode(cluster, crsc));
                if (crsc->failed || crsc->fail_count)
                    printf(", failed (fail count %d)", crsc->fail_count);
                if (!cluster->quorum)
                    printf(", no quorum");
                if (mismatch)
                    printf(", its config names another domain");
                putchar('\n');
            }
            if (agent && agent->channel && !agent->reachable && agent->error) {
                fputs("    agent: ", stdout);
                vmsh_cli_print_wrapped(vmsh_cli_safe(cli, agent->error), 11, 11, width);
            }
        }
        vmsh_error_free(merr);
        vmsh_method_choice_clear(&mc);
        vmsh_agent_info_free(agent);
    }
    if (cli->json) {
        json_object *doc = json_object_new_object();
        json_object_object_add(doc, "uri", jstr(vmsh_hv_uri(hv)));
        json_object_object_add(doc, "vms", list);
        vmsh_cli_print_json(doc);
    } else {
        json_object_put(list);
    }
    vmsh_cluster_free(cluster);
    vmsh_vm_list_free(vms, n);
    vmsh_hv_free(hv);
    return rc;
}
