/* cmd_extract.c - `vmshadow extract BACKUP FILE DEST`: writes one file of a
 * backup (a disk as a sparse raw image, a domain XML, a saved state) to DEST,
 * every chunk checked against its ID as it is written. For file-level
 * restores and for inspecting a backup without restoring a VM. */
#include "cli.h"

#include <vmshadow/repo/repo.h>

#include <getopt.h>
#include <stdio.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow extract [--force] BACKUP FILE DEST\n"
               "\n"
               "Writes FILE of BACKUP (an ID, a unique prefix or 'latest'; 'vmshadow show'\n"
               "lists the files) to DEST: disks as sparse raw images. DEST appears only\n"
               "when complete and intact. --force replaces an existing DEST.\n");
}

const struct option vmsh_cli_opts_extract[] = {
    {"force", no_argument, NULL, 'f'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_extract(vmsh_cli *cli, int argc, char **argv)
{
    bool force = false;
    int c;
    while ((c = getopt_long(argc, argv, "fh", vmsh_cli_opts_extract, NULL)) != -1) {
        switch (c) {
        case 'f':
            force = true;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "extract", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 3)
        return vmsh_cli_usage_error(cli, "extract", "needs BACKUP FILE DEST");
    vmsh_error *err = NULL;
    vmsh_repo *repo = NULL;
    if (vmsh_cli_repo_open(cli, &repo, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_restore_stats st = {0};
    int r = vmsh_repo_restore_file(repo, argv[optind], argv[optind + 1], argv[optind + 2], force,
                                   NULL, NULL, &st, &err);
    vmsh_repo_free(repo);
    if (r < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "file", json_object_new_string(argv[optind + 1]));
        json_object_object_add(o, "dest", json_object_new_string(argv[optind + 2]));
        json_object_object_add(o, "bytes_written",
                               json_object_new_int64((int64_t)st.bytes_written));
        json_object_object_add(o, "store", vmsh_cli_store_json());
        vmsh_cli_print_json(o);
    } else {
        vmsh_cli_info(cli, "wrote %s (%llu data bytes)", argv[optind + 2],
                      (unsigned long long)st.bytes_written);
    }
    return VMSH_EXIT_OK;
}
