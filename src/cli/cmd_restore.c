/* cmd_restore.c - placeholder until its issue lands; each command says it is not there yet. */
#include "cli.h"

#include <stdio.h>

int vmsh_cmd_restore(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: restore: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}
