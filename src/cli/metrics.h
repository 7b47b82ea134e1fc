/* metrics.h - what runs leave behind for monitoring and for `vmshadow
 * status` (issue 24; docs/config.md, "Metrics"). Shared by metrics.c and
 * cmd_status.c only. */
#ifndef VMSH_CLI_METRICS_H
#define VMSH_CLI_METRICS_H

#include "cli.h"

#include <vmshadow/repo/repo.h>

/* The commands whose runs are recorded: backup, verify, prune, gc; NULL-ended. */
extern const char *const vmsh_cli_recorded_commands[];

/* The record of a command's last run (state-dir/runs/COMMAND.json; format
 * in docs/config.md, "Metrics"). Times are milliseconds since the epoch, 0
 * when never. */
typedef struct vmsh_cli_run {
    int64_t started_ms, finished_ms;
    int exit_code;
    int64_t last_success_ms;
    int64_t runs, failures;
    char backup[VMSH_BACKUP_ID_LEN + 1]; /* backup: the last one stored, "" if none */
} vmsh_cli_run;

/* Reads the record of `cmd`'s last run: 0, or -ENOENT when there is none
 * (never run, or the record is unreadable: both mean "nothing known"). */
int vmsh_cli_run_load(vmsh_cli *cli, const char *cmd, vmsh_cli_run *out);

/* One VM as the repository's backups show it. `oldest` and `newest` point
 * into the summary's backups. The bytes are those of the newest backup:
 * read from the VM's disks (document), stored (its files' stored_bytes) and
 * logical (its files' sizes), as `list --json` shows them. */
typedef struct vmsh_cli_vm_summary {
    char *name;
    size_t backups;
    const vmsh_backup_info *oldest, *newest;
    uint64_t bytes_read, bytes_stored, bytes_logical;
} vmsh_cli_vm_summary;

typedef struct vmsh_cli_repo_summary {
    vmsh_backup_info *b; /* oldest first */
    size_t n;
    size_t n_damaged;
    uint64_t size_bytes; /* the repository directory's files, as du -sb counts them */
    vmsh_cli_vm_summary *vms;
    size_t n_vms;
} vmsh_cli_repo_summary;

/* Opens the repository and summarises it. Errors as vmsh_cli_repo_open and
 * vmsh_repo_list_tolerant. */
int vmsh_cli_repo_summary_load(vmsh_cli *cli, vmsh_cli_repo_summary *out, vmsh_error **err);
void vmsh_cli_repo_summary_clear(vmsh_cli_repo_summary *s);
/* Bytes of one VM in one backup (see vmsh_cli_vm_summary). */
void vmsh_cli_backup_vm_bytes(const vmsh_backup_info *b, const char *vm, uint64_t *read,
                              uint64_t *stored, uint64_t *logical);
/* Per-run byte counts from a backup's document ("bytes_read", "bytes_stored"). */
void vmsh_cli_backup_run_bytes(const vmsh_backup_info *b, uint64_t *read, uint64_t *stored);

#endif
