/* repo.h - the repository: deduplicated, compressed, optionally encrypted,
 * verifiable storage of backups (docs/formats/repository.md).
 *
 * A repository holds backups; a backup holds named files (disk images read
 * from a vmsh_source, small buffers such as domain XML) and one opaque
 * document string given by the caller at commit. Writing is in backup.h.
 *
 * Expected error codes across this header: -EBUSY (another process holds the
 * lock: CLI exit 4), -EBADMSG (repository data damaged: CLI exit 3),
 * -EPROTONOSUPPORT (a repository or file of a newer format), -EACCES (wrong
 * or missing key), -ENOENT (no such repository, backup or file).
 *
 * Thread-safety: a vmsh_repo is used by one thread at a time (the library
 * runs its own worker threads inside calls).
 */
#ifndef VMSH_REPO_REPO_H
#define VMSH_REPO_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/util/error.h>

typedef struct vmsh_repo vmsh_repo;

#define VMSH_REPO_FORMAT_VERSION 2
#define VMSH_REPO_CHUNK_SIZE     65536
#define VMSH_BACKUP_ID_LEN       16 /* hex digits */

/* Progress of a long call: `done` of `total` bytes (logical). Called from the
 * calling thread. */
typedef void (*vmsh_progress_fn)(void *opaque, uint64_t done, uint64_t total);

/* Open flags. By default a repository that others can write (its root or a
 * top directory not owned by the caller, or group/world-writable) is
 * refused (-EPERM), and so is every file in it of another owner; with this
 * flag they are accepted (links, FIFOs and devices never are):
 * docs/formats/repository.md, "Stores". */
#define VMSH_REPO_OPEN_ALLOW_FOREIGN 1u

/* zstd levels a repository may record and a writer may use: zstd's fast
 * negative levels down to -7, and 1..19 (0 is not a level: "the default").
 * New repositories get -1 since issue 27 (docs/formats/repository.md,
 * "Compression level"); a repository keeps the level it was made with. */
#define VMSH_ZSTD_LEVEL_MIN     (-7)
#define VMSH_ZSTD_LEVEL_MAX     19
#define VMSH_ZSTD_LEVEL_DEFAULT (-1)

typedef struct vmsh_repo_init_opts {
    int compression_level; /* VMSH_ZSTD_LEVEL_MIN..MAX; 0: the default */
    const char *key_file;  /* non-NULL: encrypt; the file holds the passphrase */
    unsigned flags;        /* VMSH_REPO_OPEN_* for the directory it is created in */
} vmsh_repo_init_opts;

/* Creates a repository at `path` (created if missing; an existing directory
 * must be empty). `opts` may be NULL. -EEXIST when `path` holds anything;
 * -EINVAL for a bad level or an unusable key file. */
int vmsh_repo_init(const char *path, const vmsh_repo_init_opts *opts, vmsh_error **err);

/* Opens a repository for reading and writing backups. `key_file` is needed
 * for an encrypted repository (-EACCES when missing or wrong) and refused
 * for one whose config says unencrypted (-EACCES: a config with its
 * encryption removed must not be used silently). An encrypted version 2
 * config is authenticated with the key (-EBADMSG when altered). Opens
 * versions 1 and 2 (docs/formats/repository.md, "Versions"). Takes no lock
 * (calls that need one take it). -ENOENT, -EINVAL (not a repository),
 * -EPROTONOSUPPORT (newer version). */
int vmsh_repo_open(vmsh_repo **out, const char *path, const char *key_file, vmsh_error **err);
/* The same with VMSH_REPO_OPEN_* flags (vmsh_repo_open: none). -EPERM for a
 * repository others can write; -ELOOP / -EINVAL for a link or a special
 * file where the repository needs a directory or a file. */
int vmsh_repo_open_ex(vmsh_repo **out, const char *path, const char *key_file, unsigned flags,
                      vmsh_error **err);

/* In-memory repositories, mem://NAME (issue 21: unit tests and programs
 * that embed the library). vmsh_repo_mem_create registers an empty space
 * NAME (a plain name, no '/'); vmsh_repo_init("mem://NAME") then makes a
 * repository there and every call that takes a location opens it, until
 * vmsh_repo_mem_drop (no handle on it may be open then) or the process
 * exits. Only registered names open: -ENODEV otherwise, so the command
 * line (which never registers one) refuses mem:// locations. -EEXIST,
 * -EINVAL, -ENOMEM. */
int vmsh_repo_mem_create(const char *name, vmsh_error **err);
void vmsh_repo_mem_drop(const char *name);

/* Closes; accepts NULL. Pending backups must be freed first. */
void vmsh_repo_free(vmsh_repo *r);
void vmsh_repo_freep(vmsh_repo **r);
#define _cleanup_repo_ __attribute__((cleanup(vmsh_repo_freep)))

const char *vmsh_repo_path(const vmsh_repo *r);
const char *vmsh_repo_id(const vmsh_repo *r);
bool vmsh_repo_encrypted(const vmsh_repo *r);
int vmsh_repo_compression_level(const vmsh_repo *r);
/* zstd level for backups written through this handle (VMSH_ZSTD_LEVEL_MIN..
 * MAX, not 0), and the number
 * of worker threads for backups, restores and verify (0: one per CPU). */
int vmsh_repo_set_compression_level(vmsh_repo *r, int level, vmsh_error **err);
void vmsh_repo_set_threads(vmsh_repo *r, unsigned n);
/* An option of the object stores (issue 26; docs/config.md): store-threads,
 * store-timeout, store-readahead, store-lease-seconds, ceph-conf,
 * ceph-user, ceph-keyring, s3-region, s3-credentials-file, s3-addressing.
 * Set before a repository is opened. -ENOENT: not such a key. */
int vmsh_repo_store_setopt(const char *key, const char *value);

/* What this process moved to and from object stores (rados://, s3://;
 * issue 26 point 4), totals since it started, safe to read at any time
 * (progress). `*_seconds` is the wall time during which at least one
 * transfer of that direction was in flight, so bytes / seconds is the
 * store's throughput however many run at once. All zero for a local
 * directory. */
typedef struct vmsh_store_traffic {
    uint64_t bytes_up, bytes_down; /* objects put; ranged and whole reads */
    uint64_t puts, reads;
    double up_seconds, down_seconds;
} vmsh_store_traffic;
void vmsh_repo_store_traffic(vmsh_store_traffic *out);

/* ---- Reading backups ---- */

typedef struct vmsh_backup_file {
    char *name;
    char *kind; /* "file" or "buffer" */
    uint64_t size;
    uint64_t stored_bytes; /* what this backup added for it (compressed) */
    uint64_t new_chunks;
    char index[65]; /* index object name (hex) */
} vmsh_backup_file;

typedef struct vmsh_backup_info {
    char id[VMSH_BACKUP_ID_LEN + 1];
    char time[21];   /* RFC 3339, UTC */
    int64_t time_us; /* microseconds since the epoch, orders backups */
    size_t n_files;
    vmsh_backup_file *files;
    char *document; /* the caller's document, verbatim */
} vmsh_backup_info;

/* All backups, oldest first (*out owned by the caller: free with
 * vmsh_backup_info_array_free). A manifest that is damaged fails with
 * -EBADMSG naming it; one deleted meanwhile is skipped. */
int vmsh_repo_list(vmsh_repo *r, vmsh_backup_info **out, size_t *n_out, vmsh_error **err);
void vmsh_backup_info_array_free(vmsh_backup_info *a, size_t n);

/* Resolves "latest", a full ID or a unique prefix into the full ID.
 * -ENOENT when none matches, -EINVAL when the prefix is ambiguous. */
int vmsh_repo_resolve(vmsh_repo *r, const char *spec, char out_id[VMSH_BACKUP_ID_LEN + 1],
                      vmsh_error **err);

/* One backup's manifest (spec as for vmsh_repo_resolve). */
int vmsh_repo_backup_info(vmsh_repo *r, const char *spec, vmsh_backup_info **out, vmsh_error **err);
void vmsh_backup_info_free(vmsh_backup_info *b);
/* The file named `name` in a backup, or NULL. Owned by `b`. */
const vmsh_backup_file *vmsh_backup_info_file(const vmsh_backup_info *b, const char *name);

typedef struct vmsh_restore_stats {
    uint64_t bytes_written; /* data bytes written (holes excluded) */
    uint64_t chunks;
} vmsh_restore_stats;

/* Writes file `name` of backup `spec` into `fd` (a regular file opened for
 * writing, O_DIRECT allowed) at offset 0: sets its size with ftruncate, then
 * writes every stored chunk after checking its ID; absent chunks stay holes
 * (the fd should be a new, empty file). Takes locks/read shared.
 * -EBADMSG naming backup, file and chunk when data is damaged or missing.
 * `progress` (may be NULL) reports bytes of the file done. */
int vmsh_repo_restore_fd(vmsh_repo *r, const char *spec, const char *name, int fd,
                         vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *stats,
                         vmsh_error **err);

/* Same, to `path`: written as "<path>.tmp.<pid>" (O_DIRECT where the
 * filesystem allows), fsynced and renamed to `path` only when complete, so
 * a failed restore leaves nothing at `path`. -EEXIST when `path` exists and
 * `overwrite` is false. */
int vmsh_repo_restore_file(vmsh_repo *r, const char *spec, const char *name, const char *path,
                           bool overwrite, vmsh_progress_fn progress, void *opaque,
                           vmsh_restore_stats *stats, vmsh_error **err);

/* Reads a file of a backup (typically a buffer) of at most `max` bytes into
 * *out (NUL-terminated; *len excludes the NUL; caller frees). -EFBIG. */
int vmsh_repo_read_file(vmsh_repo *r, const char *spec, const char *name, size_t max, char **out,
                        size_t *len, vmsh_error **err);

/* ---- Verify, prune, gc ---- */

typedef struct vmsh_damage {
    char backup[VMSH_BACKUP_ID_LEN + 1]; /* "" when not tied to one backup */
    char *file;                          /* NULL when the whole backup */
    char *what;                          /* one line */
} vmsh_damage;

typedef struct vmsh_verify_report {
    size_t backups_checked;
    uint64_t chunks_checked;
    uint64_t bytes_checked; /* stored bytes read */
    size_t n_damage;
    vmsh_damage *damage;
} vmsh_verify_report;

/* Reads back and re-hashes every chunk that the backups `specs` (all when
 * n_specs is 0) need, and checks every pack table and index. Returns 0 when
 * all is intact, -EBADMSG when damage was found (the report, always set on
 * 0/-EBADMSG, lists each damaged backup and file), another code when it could
 * not run. Takes locks/read shared. */
int vmsh_repo_verify(vmsh_repo *r, const char *const *specs, size_t n_specs,
                     vmsh_progress_fn progress, void *opaque, vmsh_verify_report **out,
                     vmsh_error **err);
void vmsh_verify_report_free(vmsh_verify_report *rep);

/* Calls fn for each readable backup of the repository, newest first by the
 * time its manifest was written (the file's modification time), until fn
 * returns > 0 (fn < 0 stops too and is returned). Damaged manifests and
 * backups pruned meanwhile are skipped. Reads only as many manifests as fn
 * needs, where vmsh_repo_list reads them all: for "the last backup of each
 * of these VMs" in a repository of thousands of backups. The order is a
 * hint only (a repository copied without its files' times may have any):
 * callers must stay correct with any order. */
typedef int (*vmsh_backup_visit_fn)(void *opaque, const vmsh_backup_info *b);
int vmsh_repo_each_recent(vmsh_repo *r, vmsh_backup_visit_fn fn, void *opaque, vmsh_error **err);

/* Like vmsh_repo_list, but a damaged manifest does not stop the listing: it
 * is left out of *out and reported in *damaged (backup set, file NULL, what;
 * free with vmsh_damage_array_free). Returns 0 then; the caller decides
 * (the CLI's `list` prints the sound backups and exits 3). */
int vmsh_repo_list_tolerant(vmsh_repo *r, vmsh_backup_info **out, size_t *n_out,
                            vmsh_damage **damaged, size_t *n_damaged, vmsh_error **err);
void vmsh_damage_array_free(vmsh_damage *d, size_t n);

typedef struct vmsh_retention {
    unsigned keep_last, keep_daily, keep_weekly, keep_monthly; /* 0: rule unused */
} vmsh_retention;

typedef struct vmsh_prune_result {
    size_t n_keep, n_forget;
    char (*keep)[VMSH_BACKUP_ID_LEN + 1];   /* oldest first */
    char (*forget)[VMSH_BACKUP_ID_LEN + 1]; /* oldest first */
} vmsh_prune_result;

/* Forgets (deletes the manifests of) backups outside the policy; with
 * `dry_run` only reports. -EINVAL when no rule is set. Takes no lock: it
 * runs beside backups and gc (issue 26). */
int vmsh_repo_prune(vmsh_repo *r, const vmsh_retention *policy, bool dry_run,
                    vmsh_prune_result **out, vmsh_error **err);
void vmsh_prune_result_free(vmsh_prune_result *p);

typedef struct vmsh_gc_stats {
    uint64_t packs_deleted, packs_rewritten, indexes_deleted, tmp_deleted;
    uint64_t bytes_freed;
    /* entries the sweep left alone: links, FIFOs, other owners' files
     * (never followed, entered or deleted) */
    uint64_t skipped;
    /* issue 26 (docs/formats/gc.md): packs marked for deletion by a later
     * gc, writers' sessions live and found dead, and the passes whose
     * deletions were held back (a writer builds on a vanished backup, a
     * chunk is missing, a writer runs during the sweep of small objects) */
    uint64_t packs_marked, sessions_live, sessions_dead, deletion_held;
} vmsh_gc_stats;

/* Deletes garbage beside running backups (docs/formats/gc.md): marks the
 * packs no backup references, deletes those marked by an earlier gc at least
 * the grace period ago (store-gc-grace-seconds, default 24 h; 0: a second
 * pass at once) that are still unreferenced and older than every live
 * writer's session; index objects and temporary files when no writer runs.
 * One gc at a time (locks/gc: -EBUSY); -EBUSY too beside a restore, verify
 * or serve (locks/read). -EBADMSG when a manifest or index is unreadable (gc then
 * deletes nothing). */
int vmsh_repo_gc(vmsh_repo *r, vmsh_gc_stats *stats, vmsh_error **err);

#endif
