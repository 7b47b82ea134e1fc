/* cmd_vms.c - `vmshadow vms`: every VM of the connection with its state,
 * disks (target, source, format, kind), whether its agent answers, and the
 * method a backup would use and why (CLI.md; SPEC R2, R6). The requestor
 * (src/requestor/vms.c) reads them; this prints (issue 21). */
#include "cli.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow vms [--method auto|saved-state|guest] [VM...]\n"
               "\n"
               "Lists VMs: state, disks (target, kind, format, source; captured or excluded\n"
               "and why; read in full or incrementally and why), whether the guest\n"
               "agent answers, and the backup method a backup would use, with the reason.\n"
               "With --method guest, VMs that cannot use it show why (SPEC R2).\n"
               "A VM that a Pacemaker cluster manages shows its resource, node and\n"
               "managed/maintenance state (SPEC R16).\n");
}

static const char *str(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : NULL;
}

static bool flag(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static const char *agent_word(json_object *a)
{
    if (!flag(a, "channel"))
        return "none";
    if (flag(a, "reachable"))
        return flag(a, "can_freeze") ? "reachable" : "no-freeze";
    return "unreachable";
}

static void print_text(vmsh_cli *cli, json_object *list)
{
    size_t n = json_object_array_length(list);
    /* Text: the name column as wide as the widest name shown. */
    int name_w = 4;
    for (size_t i = 0; i < n; i++) {
        int w = vmsh_cli_text_width(
            vmsh_cli_safe(cli, str(json_object_array_get_idx(list, i), "name")));
        if (w > name_w)
            name_w = w;
    }
    int width = vmsh_cli_columns(), reason_col = name_w + 1 + 9 + 1 + 11 + 1 + 11 + 1;
    printf("%-*s %-9s %-11s %-11s %s\n", name_w, "NAME", "STATE", "AGENT", "METHOD", "REASON");
    for (size_t i = 0; i < n; i++) {
        json_object *vm = json_object_array_get_idx(list, i), *agent = NULL, *disks = NULL;
        json_object_object_get_ex(vm, "agent", &agent);
        json_object_object_get_ex(vm, "disks", &disks);
        const char *nm = vmsh_cli_safe(cli, str(vm, "name"));
        printf("%s%*s %-9s %-11s %-11s ", nm, name_w - vmsh_cli_text_width(nm), "",
               str(vm, "state"), agent_word(agent), str(vm, "method"));
        vmsh_cli_print_wrapped(vmsh_cli_safe(cli, str(vm, "reason")), reason_col, reason_col,
                               width);
        if (str(vm, "xml_error")) {
            fputs("    ! domain XML not understood: ", stdout);
            vmsh_cli_print_wrapped(vmsh_cli_safe(cli, str(vm, "xml_error")), 32, 6, width);
        }
        for (size_t d = 0; disks && d < json_object_array_length(disks); d++) {
            json_object *dk = json_object_array_get_idx(disks, d);
            const char *excl = str(dk, "exclusion_reason");
            const char *src = str(dk, "source") ? vmsh_cli_safe(cli, str(dk, "source")) : "-";
            /* R6: an excluded disk says why on its own line, "]" included
             * (issue 24: the "]" used to come on a line of its own) */
            int col = printf("    %-8s %-11s %-6s ",
                             str(dk, "target") ? vmsh_cli_safe(cli, str(dk, "target")) : "?",
                             str(dk, "kind"),
                             str(dk, "format") ? vmsh_cli_safe(cli, str(dk, "format")) : "-");
            _cleanup_free_ char *text = NULL;
            if (!excl) {
                /* issue 25: captured, and how it will be read */
                const char *rd = str(dk, "read"), *why = str(dk, "read_reason");
                _cleanup_free_ char *vol = NULL;
                if (str(dk, "pool") &&
                    asprintf(&vol, " (volume %s/%s)", vmsh_cli_safe(cli, str(dk, "pool")),
                             vmsh_cli_safe(cli, str(dk, "volume"))) < 0)
                    vol = NULL;
                int q = !rd ? asprintf(&text, "%s%s  [captured]", src, vol ? vol : "")
                        : strcmp(rd, "incremental") == 0
                            ? asprintf(&text, "%s%s  [captured, incremental]", src, vol ? vol : "")
                        : strcmp(rd, "none") == 0
                            ? asprintf(&text, "%s%s  [cannot be read: %s]", src, vol ? vol : "",
                                       vmsh_cli_safe(cli, why))
                            : asprintf(&text, "%s%s  [captured, %s: %s]", src, vol ? vol : "", rd,
                                       vmsh_cli_safe(cli, why));
                if (q < 0)
                    text = NULL;
                vmsh_cli_print_wrapped(text ? text : src, col, col, width);
                continue;
            }
            if (asprintf(&text, "%s  [excluded: %s]", src, vmsh_cli_safe(cli, excl)) < 0)
                text = NULL;
            vmsh_cli_print_wrapped(text ? text : src, col, col, width);
        }
        json_object *cl = NULL;
        if (json_object_object_get_ex(vm, "cluster", &cl) && cl) {
            json_object *fc = NULL;
            json_object_object_get_ex(cl, "fail_count", &fc);
            printf("    cluster: resource %s", vmsh_cli_safe(cli, str(cl, "resource")));
            printf(" on %s", str(cl, "node") ? vmsh_cli_safe(cli, str(cl, "node")) : "no node");
            printf(", %s, %s", str(cl, "role") ? vmsh_cli_safe(cli, str(cl, "role")) : "?",
                   str(cl, "mode"));
            if (flag(cl, "failed") || json_object_get_int(fc))
                printf(", failed (fail count %d)", json_object_get_int(fc));
            if (!flag(cl, "quorum"))
                printf(", no quorum");
            if (flag(cl, "config_names_other_domain"))
                printf(", its config names another domain");
            putchar('\n');
        }
        if (flag(agent, "channel") && !flag(agent, "reachable") && str(agent, "error")) {
            fputs("    agent: ", stdout);
            vmsh_cli_print_wrapped(vmsh_cli_safe(cli, str(agent, "error")), 11, 11, width);
        }
    }
}

const struct option vmsh_cli_opts_vms[] = {
    {"method", required_argument, NULL, 'm'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_vms(vmsh_cli *cli, int argc, char **argv)
{
    const char *method = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "h", vmsh_cli_opts_vms, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (strcmp(optarg, "auto") && strcmp(optarg, "saved-state") && strcmp(optarg, "guest"))
                return vmsh_cli_usage_error(cli, "vms", "unknown method '%s'", optarg);
            method = optarg;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "vms", "unknown option '%s'", argv[optind - 1]);
        }
    }
    vmsh_error *err = NULL;
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    json_object *doc = NULL;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, false, &cb);
    if (vmsh_requestor_vms(&cfg, &cb, (const char *const *)(argv + optind), (size_t)(argc - optind),
                           method, &doc, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        vmsh_cli_print_json(doc);
    } else {
        json_object *list = NULL;
        json_object_object_get_ex(doc, "vms", &list);
        print_text(cli, list);
        json_object_put(doc);
    }
    return VMSH_EXIT_OK;
}
