/* backup.h - writing a backup into a repository.
 *
 *   vmsh_backup_begin      → a pending backup with an ID (takes locks/write)
 *   vmsh_backup_add_file   → a named file from a block source (repeat)
 *   vmsh_backup_add_buffer → a small named buffer (domain XML, documents)
 *   vmsh_backup_commit     → the manifest is written: the backup is visible
 *   vmsh_backup_free       → releases; without commit, aborts: nothing is
 *                            visible, what was written is garbage for gc (R5)
 *
 * Thread-safety: one thread at a time per pending backup; the library runs
 * its own worker threads inside add_file. Only one pending backup per
 * repository at a time (the write lock; -EBUSY otherwise).
 *
 * Memory: a few MiB of buffers per thread, plus ~110 bytes per chunk stored
 * in the repository (the chunk map) and 40 bytes per stored chunk of the file
 * being added (its index): ~10 MiB for a 4 GiB image; a repository holding
 * 100 GiB of chunks needs ~170 MiB.
 */
#ifndef VMSH_REPO_BACKUP_H
#define VMSH_REPO_BACKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>
#include <vmshadow/util/error.h>

typedef struct vmsh_backup vmsh_backup;
typedef struct vmsh_file_index vmsh_file_index;

/* Starts a pending backup. -EBUSY when another backup, prune or gc holds
 * the repository's write lock. The pending backup borrows `r`. The chunk
 * map loads in a thread meanwhile (it overlaps the caller's snapshot): the
 * first vmsh_backup_add_* (or the commit) waits for it and returns its
 * error, e.g. -EPROTONOSUPPORT for a pack of a newer format. */
int vmsh_backup_begin(vmsh_backup **out, vmsh_repo *r, vmsh_error **err);

/* The new backup's ID (16 hex digits), known from begin on. */
const char *vmsh_backup_id(const vmsh_backup *b);

typedef struct vmsh_add_stats {
    uint64_t size;         /* logical size of the file */
    uint64_t bytes_read;   /* bytes read from the source */
    uint64_t bytes_stored; /* new bytes written to packs (compressed, encrypted) */
    uint64_t new_chunks;   /* chunks stored by this call */
    uint64_t dedup_chunks; /* chunks read and found already stored */
    uint64_t zero_chunks;  /* chunks read and found all zero (not stored) */
    uint64_t base_chunks;  /* chunks taken unchanged from the base index */
} vmsh_add_stats;

typedef struct vmsh_add_opts {
    /* Incremental (issue 7): the previous backup's index of this file. Chunks
     * outside the changed ranges are taken from it without reading; the new
     * index is still complete. The changed ranges are `changed` when given,
     * else the source's dirty extents (vmsh_source_has_dirty), else the whole
     * file (a full read, deduplicated against the repository). */
    const vmsh_file_index *base;
    const vmsh_extent *changed; /* flags ignored */
    size_t n_changed;
    /* may be NULL; called from the calling thread with (bytes read so far,
     * bytes to read): holes, zero extents and unchanged ranges excluded */
    vmsh_progress_fn progress;
    void *progress_opaque;
} vmsh_add_opts;

/* Reads `src` and stores it as file `name` (1-1024 bytes, no control
 * characters, unique within the backup: -EEXIST). Holes and zero chunks are
 * not stored. `opts` and `stats` may be NULL. On failure the pending backup
 * stays usable (the file is not added) unless the error is -ENOSPC/-EIO on
 * the repository, after which only free makes sense. */
int vmsh_backup_add_file(vmsh_backup *b, const char *name, vmsh_source *src,
                         const vmsh_add_opts *opts, vmsh_add_stats *stats, vmsh_error **err);

/* Stores a small named buffer (≤ 16 MiB: -EFBIG), e.g. the domain XML. */
int vmsh_backup_add_buffer(vmsh_backup *b, const char *name, const void *buf, size_t len,
                           vmsh_error **err);

/* Totals over the files added so far. */
void vmsh_backup_stats(const vmsh_backup *b, vmsh_add_stats *out);

/* Makes every pack and index durable, then writes the manifest with
 * `document` (any string, stored verbatim; may be NULL for ""): the backup
 * becomes visible atomically. After commit only free is allowed. */
int vmsh_backup_commit(vmsh_backup *b, const char *document, vmsh_error **err);

/* Frees; a pending backup that was not committed is aborted. Accepts NULL. */
void vmsh_backup_free(vmsh_backup *b);
void vmsh_backup_freep(vmsh_backup **b);
#define _cleanup_backup_ __attribute__((cleanup(vmsh_backup_freep)))

/* ---- File indexes (the base of an incremental) ---- */

/* Loads the index of file `name` in backup `spec`. -ENOENT, -EBADMSG. */
int vmsh_file_index_load(vmsh_file_index **out, vmsh_repo *r, const char *spec, const char *name,
                         vmsh_error **err);
uint64_t vmsh_file_index_size(const vmsh_file_index *idx);
/* Number of stored (non-zero) chunks. */
size_t vmsh_file_index_count(const vmsh_file_index *idx);
void vmsh_file_index_free(vmsh_file_index *idx);
/* Checks that the repository holds every chunk `idx` names, as an
 * incremental backup on this base must (else -EBADMSG: run a full backup).
 * For a pending backup of `r`, ahead of its vmsh_backup_add_*: the check
 * is not repeated there (~5 ms for a 4 GiB disk). Waits for the chunk map.
 * Not for use beside a vmsh_backup_add_* of `r` in another thread. */
int vmsh_file_index_check_chunks(vmsh_file_index *idx, vmsh_repo *r, const char *name,
                                 vmsh_error **err);

#endif
