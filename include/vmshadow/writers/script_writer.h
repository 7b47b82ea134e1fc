/* script_writer.h - script writers: host applications that join every
 * snapshot set through a `key = value` file in the writers directory
 * (CLI.md, "Script writers"; default /etc/vmshadow/writers.d/NAME.conf).
 *
 * Keys: name (default: the file name without .conf), prepare-snapshot,
 * freeze, thaw, post-snapshot, backup-complete, abort (commands; empty or
 * absent: nothing to run), timeout (seconds per command, 1..86400, default
 * 60). Each command is split into words like a shell would split it and run
 * without a shell (util/proc.h), with VMSHADOW_SET_ID and VMSHADOW_EVENT in its
 * environment; a non-zero exit, or running past the timeout (or past the
 * coordinator's deadline, whichever comes first), fails the writer and so
 * aborts the set.
 *
 * Journal (docs/formats/journal.md): "prepare-snapshot" is journalled before
 * its command runs and undone by the `abort` command; "freeze" is undone by
 * the `thaw` command. BackupComplete or a successful Abort closes both.
 *
 * Writer ID: a name-based UUID (version 5) of the name in the namespace of
 * the VM writer's ID (docs/formats/writer-state.md), stable while the name is.
 */
#ifndef VMSH_WRITERS_SCRIPT_WRITER_H
#define VMSH_WRITERS_SCRIPT_WRITER_H

#include <stddef.h>

#include <vmshadow/coord/writer.h>
#include <vmshadow/util/error.h>

#define VMSH_SCRIPT_WRITER_KIND            "script"
#define VMSH_SCRIPT_WRITER_DEFAULT_TIMEOUT 60

/* Loads one writer file. *out is freed with vmsh_writer_free. Expected
 * errors: -ENOENT, -EINVAL (unknown key, bad timeout, a command that cannot
 * be split: the message names file and line). */
int vmsh_script_writer_load(const char *path, vmsh_writer_ops **out, vmsh_error **err);

/* The *.conf files of `dir`, sorted, as full paths (*out: NULL-terminated,
 * free with vmsh_script_writer_paths_free). A missing directory gives none. */
int vmsh_script_writer_paths(const char *dir, char ***out, size_t *n, vmsh_error **err);
void vmsh_script_writer_paths_free(char **paths);

/* The writer ID a script writer named `name` gets. -ENOMEM, -EIO. */
int vmsh_script_writer_id(const char *name, char out[static 37], vmsh_error **err);

/* The default name of the writer in `path`: its file name without ".conf"
 * (a new string; NULL on ENOMEM). */
char *vmsh_script_writer_default_name(const char *path);

#endif
