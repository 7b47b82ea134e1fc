/* serve.h - serving the disks of a backup read-only over NBD (issue 23
 * point 1): one nbdkit process per disk running vmshadow's plugin
 * (src/nbdkit) on a unix socket. `vmshadow serve` runs a session until a
 * signal; instant restore serves the disks its overlays are backed by.
 *
 * Not thread-safe. Never prints. */
#ifndef VMSH_REQUESTOR_SERVE_H
#define VMSH_REQUESTOR_SERVE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>

/* A disk of a VM in a backup. */
typedef struct vmsh_serve_disk {
    char *disk; /* the target, e.g. "vda" */
    char *file; /* the file's name in the repository, e.g. "web/disk/vda" */
} vmsh_serve_disk;

/* The disks of `vm` in a backup document (the VM writer's component; only
 * `disk` when non-NULL): -ENOENT naming the VMs or disks there are,
 * -EBADMSG when the document is unreadable. */
int vmsh_serve_backup_disks(const char *document, const char *backup_id, const char *vm,
                            const char *disk, vmsh_serve_disk **out, size_t *n_out,
                            vmsh_error **err);
void vmsh_serve_disks_free(vmsh_serve_disk *d, size_t n);

/* Where a server reads from. Borrowed. */
typedef struct vmsh_serve_source {
    const char *repo_path; /* the repository's location (a path or a store URL) */
    const char *key_file;  /* NULL: unencrypted */
    const char *backup_id; /* full ID */
    const char *file;      /* the file's name in the repository */
    /* no NBD block status (nbdkit --no-sr: no structured replies, so no
     * base:allocation context): QEMU's NBD client then answers block
     * status itself ("data") and never asks the server. Instant restore
     * needs it: QEMU's copy-on-read filter (the block pull's, QEMU 6.0 and
     * later) takes a failed block-status query of the backing for
     * "nothing left to read" and completes the guest's read with success
     * and bytes never read, so a guest read of an unpulled range after the
     * server died returned zeros instead of an I/O error (issue 23). With
     * it every such read goes to the dead server, fails, and pauses the
     * VM (rerror_policy='stop'). Costs the pull the holes' zeros on the
     * socket (the plugin makes them without reading chunks). */
    bool no_block_status;
} vmsh_serve_source;

/* Starts nbdkit with the plugin serving `src` read-only on the unix socket
 * `socket_path` (must not exist) and returns once it listens (*pid: the
 * server). With `detached`, the server is a daemon of its own (its own
 * session, stdio on /dev/null except stderr to `log_path` when not NULL)
 * that outlives this process: instant restore journals its PID (R7);
 * else it dies with this process (nbdkit --exit-with-parent) and is this
 * process's child. The key file goes to it by path, never its content.
 * -ENOENT when the plugin or nbdkit is missing. */
int vmsh_serve_start(const vmsh_serve_source *src, const char *socket_path, bool detached,
                     const char *log_path, pid_t *pid, vmsh_error **err);
/* Ends a server (SIGTERM, then SIGKILL after 10 s), reaps it when it is a
 * child, and removes the socket. pid <= 0: only the socket. */
void vmsh_serve_stop(pid_t pid, const char *socket_path);
/* The PID of the nbdkit process serving on `socket_path` (by its command
 * line in /proc: a journaled PID may have been reused since), or 0. */
pid_t vmsh_serve_find(const char *socket_path);
/* Whether a unix socket listens at `path`. */
bool vmsh_serve_listening(const char *path);

/* A `vmshadow serve` session: every disk of a VM (or one) of a backup. */
typedef struct vmsh_serve_options {
    const char *repo_path;
    const char *key_file;
    const char *backup; /* an ID, a unique prefix or "latest" */
    const char *vm;
    const char *disk;   /* NULL: every disk */
    const char *socket; /* the one disk's socket; NULL: DISK.sock in a new private directory */
    bool force;         /* replace a stale socket left at `socket` */
} vmsh_serve_options;

/* One disk served. Owned by the session. */
typedef struct vmsh_serve_export {
    const char *disk, *file, *socket, *uri;
    uint64_t size;
    pid_t pid;
} vmsh_serve_export;

typedef struct vmsh_serve_session vmsh_serve_session;

/* Resolves the backup and disks and opens each (a damaged index, a held
 * lock, a missing file fail here, before anything starts); holds the
 * repository's read lock through `repo` (borrowed, must outlive the
 * session). */
int vmsh_serve_session_open(vmsh_serve_session **out, vmsh_repo *repo,
                            const vmsh_serve_options *opts, vmsh_error **err);
/* Blocks SIGINT, SIGTERM, SIGHUP and SIGCHLD in the calling thread (taken
 * by vmsh_serve_session_wait; the mask comes back at _free) and starts
 * every server. */
int vmsh_serve_session_start(vmsh_serve_session *s, vmsh_error **err);
const char *vmsh_serve_session_backup_id(const vmsh_serve_session *s);
size_t vmsh_serve_session_count(const vmsh_serve_session *s);
void vmsh_serve_session_export(const vmsh_serve_session *s, size_t i, vmsh_serve_export *out);
/* Waits until SIGINT, SIGTERM or SIGHUP (returns 0, *sig set) or a server
 * stops (returns -EIO naming the disk). */
int vmsh_serve_session_wait(vmsh_serve_session *s, int *sig, vmsh_error **err);
/* Stops every server, removes the sockets and the directory, restores the
 * signal mask. NULL is fine. */
void vmsh_serve_session_free(vmsh_serve_session *s);

#endif
