/* cmd_repo.c - placeholder until its issue lands; each command says it is not there yet. */
#include "cli.h"

#include <stdio.h>

int vmsh_cmd_init(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: init: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_list(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: list: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_show(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: show: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_verify(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: verify: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_prune(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: prune: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_gc(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: gc: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}
