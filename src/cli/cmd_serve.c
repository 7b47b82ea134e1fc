/* cmd_serve.c - `vmshadow serve BACKUP VM [DISK] [--socket PATH]` (issue 23
 * point 1): serves disks of a backup read-only over NBD on unix sockets, one
 * nbdkit process per disk running vmshadow's plugin (src/nbdkit), until
 * SIGINT or SIGTERM. Any NBD client (qemu-img, nbdinfo, nbdcopy, libnbd,
 * libguestfs, a VM's backing file) reads the bytes `extract` would write.
 *
 * The serving itself (processes, sockets, readiness, stopping) is the
 * requestor's (src/requestor/serve.c), shared with instant restore; this
 * file parses and prints. */
#include "cli.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/serve.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow serve [--socket PATH] [--force] BACKUP VM [DISK]\n"
               "\n"
               "Serves the disks of VM in BACKUP (an ID, a unique prefix or 'latest'), or\n"
               "only DISK (its target, e.g. vda), read-only over NBD on unix sockets until\n"
               "interrupted (SIGINT or SIGTERM), printing each disk's socket and NBD URI\n"
               "(nbd+unix:///?socket=PATH). Holds the repository's read lock: gc refuses\n"
               "meanwhile. Runs nbdkit with vmshadow's plugin.\n"
               "\n"
               "Options:\n"
               "  --socket PATH   the socket of the one disk served (default: DISK.sock in\n"
               "                  a new private directory, removed at the end)\n"
               "  --force         replace a socket left at PATH by an earlier run\n");
}

const struct option vmsh_cli_opts_serve[] = {
    {"socket", required_argument, NULL, 's'},
    {"force", no_argument, NULL, 'f'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_serve(vmsh_cli *cli, int argc, char **argv)
{
    const char *sock_opt = NULL;
    bool force = false;
    int c;
    while ((c = getopt_long(argc, argv, "s:fh", vmsh_cli_opts_serve, NULL)) != -1) {
        switch (c) {
        case 's':
            sock_opt = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "serve", "unknown option '%s'", argv[optind - 1]);
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || nargs > 3)
        return vmsh_cli_usage_error(cli, "serve", "needs BACKUP VM [DISK]");
    if (sock_opt && !*sock_opt)
        return vmsh_cli_usage_error(cli, "serve", "--socket needs a path");
    const char *spec = argv[optind], *vm = argv[optind + 1];
    const char *disk = nargs == 3 ? argv[optind + 2] : NULL;

    vmsh_error *err = NULL;
    vmsh_repo *repo = NULL;
    vmsh_serve_session *ss = NULL;
    vmsh_serve_options so = {
        .repo_path = cli->repo,
        .key_file = vmsh_cli_key_file(cli),
        .backup = spec,
        .vm = vm,
        .disk = disk,
        .socket = sock_opt,
        .force = force,
    };
    int rc = vmsh_cli_repo_open(cli, &repo, &err);
    if (rc == 0)
        rc = vmsh_serve_session_open(&ss, repo, &so, &err);
    if (rc == 0)
        rc = vmsh_serve_session_start(ss, &err);
    size_t n = ss ? vmsh_serve_session_count(ss) : 0;
    if (rc == 0) {
        const char *id = vmsh_serve_session_backup_id(ss);
        json_object *arr = cli->json ? json_object_new_array() : NULL;
        if (!cli->json)
            printf("serving backup %s, VM %s, read-only (stop with Ctrl-C or SIGTERM):\n", id,
                   vmsh_cli_safe(cli, vm));
        for (size_t i = 0; i < n; i++) {
            vmsh_serve_export e;
            vmsh_serve_session_export(ss, i, &e);
            vmsh_cli_debug(cli, "nbdkit (PID %ld) serves %s on %s", (long)e.pid, e.file, e.socket);
            if (arr) {
                json_object *d = json_object_new_object();
                json_object_object_add(d, "disk", json_object_new_string(e.disk));
                json_object_object_add(d, "file", json_object_new_string(e.file));
                json_object_object_add(d, "size", json_object_new_int64((int64_t)e.size));
                json_object_object_add(d, "socket", json_object_new_string(e.socket));
                json_object_object_add(d, "uri", json_object_new_string(e.uri));
                json_object_object_add(d, "pid", json_object_new_int64(e.pid));
                json_object_array_add(arr, d);
            } else {
                char size[32];
                vmsh_cli_format_bytes(e.size, size, sizeof(size));
                printf("  %s  %s  %s\n", vmsh_cli_safe(cli, e.disk), size,
                       vmsh_cli_safe(cli, e.uri));
            }
        }
        if (arr) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "backup", json_object_new_string(id));
            json_object_object_add(o, "vm", json_object_new_string(vm));
            json_object_object_add(o, "disks", arr);
            vmsh_cli_print_json(o);
        }
        fflush(stdout);
        int sig = 0;
        rc = vmsh_serve_session_wait(ss, &sig, &err);
        if (rc == 0)
            vmsh_cli_info(cli, "stopping (signal %d)", sig);
    }
    vmsh_serve_session_free(ss);
    vmsh_repo_free(repo);
    return rc < 0 ? vmsh_cli_fail(cli, &err) : VMSH_EXIT_OK;
}
