/* cmd_backup.c - placeholder until its issue lands; each command says it is not there yet. */
#include "cli.h"

#include <stdio.h>

int vmsh_cmd_backup(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: backup: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_writers(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: writers: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}

int vmsh_cmd_recover(vmsh_cli *cli, int argc, char **argv)
{
    fprintf(stderr, "%s: recover: not implemented yet\n", cli->prog);
    return VMSH_EXIT_FAILED;
}
