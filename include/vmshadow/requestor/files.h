/* files.h - file-level restore (issue 23 point 4): the files of a VM's
 * disks in a backup, listed and copied out without restoring the disks.
 * The disks are served read-only over NBD (serve.h) and opened by
 * libguestfs inside its own appliance (a small VM): a backup's filesystem
 * is untrusted input and is never mounted in the host's kernel. Names,
 * link targets and sizes read from it are hostile too: a copy never
 * writes outside its target directory (docs/reliability.md, "Untrusted
 * filesystems").
 *
 * Not thread-safe: one thread uses a handle. Never prints: notes (what was
 * skipped, and why) go to the caller's callback. */
#ifndef VMSH_REQUESTOR_FILES_H
#define VMSH_REQUESTOR_FILES_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>

/* One file of a guest filesystem, as lstat sees it there. */
typedef struct vmsh_files_entry {
    const char *path;   /* listing: relative to the listed directory (its own
                         * name when a file was listed); copy: the guest path */
    uint32_t mode;      /* st_mode: type and permission bits */
    int64_t uid, gid;   /* the guest's numbers (its names mean nothing here) */
    uint64_t size;      /* bytes; 0 for what is not a file or a link */
    int64_t mtime;      /* seconds since the epoch */
    int64_t mtime_nsec; /* 0..999999999 */
    int64_t atime, atime_nsec;
    const char *target; /* a symbolic link's target, verbatim; else NULL */
} vmsh_files_entry;

/* Something left out or changed, with why ("device node: skipped"). */
typedef void (*vmsh_files_note_fn)(void *opaque, const char *guest_path, const char *why);

typedef struct vmsh_files_options {
    const char *repo_path; /* the repository's location, for the servers */
    const char *key_file;  /* NULL: unencrypted */
    const char *backup;    /* an ID, a unique prefix or "latest" */
    const char *vm;
    const char *disk; /* NULL: every disk of the VM */
    const char *fs;   /* NULL: inspect; else the filesystem (e.g. /dev/sda1,
                       * /dev/vg/lv, as libguestfs names it) mounted at / */
    vmsh_files_note_fn note;
    void *opaque;
} vmsh_files_options;

typedef struct vmsh_files vmsh_files;

/* Serves the disks (a private nbdkit per disk, dying with this process),
 * starts libguestfs's appliance on them (read-only) and mounts, read-only
 * inside the appliance: with `fs`, that filesystem at /; else the
 * operating system libguestfs's inspection finds, with its mount points
 * (a mount point that cannot be mounted is a note); else the one
 * filesystem there is. Errors: -ENOENT (backup, VM, disk or `fs` not
 * there), -EINVAL (several operating systems or filesystems: choose with
 * `fs`; the message names them), -EIO (the appliance or a mount failed:
 * a damaged or unsupported filesystem), -EBADMSG (repository damage).
 * Nothing is left serving on failure. `repo` is borrowed (its read lock
 * is held until _free). */
int vmsh_files_open(vmsh_files **out, vmsh_repo *repo, const vmsh_files_options *opts,
                    vmsh_error **err);
const char *vmsh_files_backup_id(const vmsh_files *f);
/* What is mounted where, e.g. "/dev/sda1 (ext4) at /, /dev/vg/lv (xfs) at
 * /srv"; for messages. */
const char *vmsh_files_mounts(const vmsh_files *f);

/* Each entry of the directory `path` (or `path` itself when it is not a
 * directory), sorted by name; with `recursive`, the trees below too
 * (depth first). `cb` returning non-zero stops with that value. A name
 * that is not a valid file name ("", ".", "..", one with "/": only a
 * damaged filesystem has them) is a note, not an entry. -ENOENT when
 * `path` is not there. */
typedef int (*vmsh_files_entry_fn)(void *opaque, const vmsh_files_entry *e);
int vmsh_files_list(vmsh_files *f, const char *path, bool recursive, vmsh_files_entry_fn cb,
                    void *opaque, vmsh_error **err);

typedef struct vmsh_files_get_options {
    const char *to_dir;                  /* copy under this directory (created when missing) */
    int tar_fd;                          /* else: a POSIX tar stream (pax) written here */
    bool force;                          /* merge into / replace what exists under to_dir */
    bool keep_setuid;                    /* keep set-user/group-ID bits of copied files */
    const volatile sig_atomic_t *cancel; /* non-zero: stop (-ECANCELED) */
} vmsh_files_get_options;

typedef struct vmsh_files_stats {
    uint64_t files, dirs, links, skipped, bytes;
} vmsh_files_stats;

/* Copies each guest `paths[i]` (a file, a link or a whole tree) to
 * to_dir/NAME (NAME: the path's last component; "/" copies the root's
 * entries into to_dir) or into the tar stream, keeping modes, owners (when
 * running as root), times and symbolic links (re-created, never
 * followed). Device nodes, FIFOs and sockets are skipped with a note;
 * hard links become copies. Every path is looked up and every target name
 * checked before anything is written: -ENOENT (a path is not there),
 * -EEXIST (to_dir/NAME exists, without `force`; to_dir is a file). */
int vmsh_files_get(vmsh_files *f, const char *const *paths, size_t n,
                   const vmsh_files_get_options *go, vmsh_files_stats *stats, vmsh_error **err);

/* The checks of vmsh_files_get on the target alone (names, to_dir a file,
 * what exists without `force`): a caller refuses before the appliance
 * starts. Changes nothing. */
int vmsh_files_check_target(const vmsh_files_get_options *go, const char *const *paths, size_t n,
                            vmsh_error **err);

/* Shuts the appliance down, stops the servers, removes their sockets. NULL
 * is fine. */
void vmsh_files_free(vmsh_files *f);

#endif
