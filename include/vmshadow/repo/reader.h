/* reader.h - random access to a file of a backup (issue 21 point 3): the
 * bytes at any offset of, say, a VM's disk as `vmshadow extract` would
 * write them, without restoring the file. What `vmshadow serve` (an nbdkit
 * plugin) and file-level restore build on.
 *
 *   vmsh_reader_open    → a handle on (repository, backup, file); holds the
 *                         repository's read lock (locks/read, shared) until
 *                         vmsh_reader_free, so gc refuses meanwhile
 *   vmsh_reader_pread   → bytes at an offset (any alignment, any length)
 *   vmsh_reader_extents → which ranges hold data and which read as zeros
 *   vmsh_reader_free    → closes
 *
 * Every chunk is checked against its ID before its bytes are returned: a
 * damaged or missing chunk fails the read with -EBADMSG, never wrong bytes.
 * Chunks the index does not list (holes and all-zero chunks, which backups
 * do not store) read as zeros.
 *
 * Thread-safety: vmsh_reader_pread, vmsh_reader_extents and the getters may
 * be called from any number of threads at once on one handle. The handle
 * borrows the repository: `r` must outlive it, and while any reader of `r`
 * is open, `r` may be used only to open more readers or to read backups'
 * manifests (no backup, restore, verify or gc through `r`).
 *
 * Memory: the file's index (40 bytes per stored chunk), plus a cache of
 * decoded chunks (64 KiB each; vmsh_reader_opts.cache_chunks), plus one
 * chunk decoder (~300 KiB) per thread reading at the same time.
 */
#ifndef VMSH_REPO_READER_H
#define VMSH_REPO_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>

typedef struct vmsh_reader vmsh_reader;

#define VMSH_READER_CACHE_DEFAULT 128 /* chunks: 8 MiB */

typedef struct vmsh_reader_opts {
    /* decoded chunks kept (least recently used goes first); 0: the default,
     * VMSH_READER_CACHE_DEFAULT. At least 1 is used. */
    size_t cache_chunks;
} vmsh_reader_opts;

/* Opens file `name` of backup `spec` ("latest", an ID or a unique prefix)
 * of `r`. `opts` may be NULL. Takes the repository's read lock shared:
 * -EBUSY while gc holds it. -ENOENT (no such backup or file), -EINVAL
 * (ambiguous prefix), -EBADMSG (the manifest or index is damaged; a damaged
 * chunk only fails the reads that need it). */
int vmsh_reader_open(vmsh_reader **out, vmsh_repo *r, const char *spec, const char *name,
                     const vmsh_reader_opts *opts, vmsh_error **err);

/* The file's size in bytes, the backup's full ID and the file's name. */
uint64_t vmsh_reader_size(const vmsh_reader *rd);
const char *vmsh_reader_backup_id(const vmsh_reader *rd);
const char *vmsh_reader_name(const vmsh_reader *rd);

/* Reads up to `len` bytes at `offset` into `buf`, as pread(2) does: the
 * count read, short only at the end of the file (0 at or past it).
 * -EBADMSG naming backup, file and chunk when a chunk needed is damaged or
 * missing (nothing of that chunk is in `buf`); -ENOMEM, -EIO. */
ssize_t vmsh_reader_pread(vmsh_reader *rd, void *buf, size_t len, uint64_t offset,
                          vmsh_error **err);

/* Called for consecutive ranges covering [offset, offset + len) clipped to
 * the file's size, in order: `data` true where chunks are stored, false
 * where the file reads as zeros (holes and zero chunks: the index does not
 * tell them apart). A non-zero return stops the walk and is returned. */
typedef int (*vmsh_reader_extent_fn)(void *opaque, uint64_t offset, uint64_t length, bool data);
int vmsh_reader_extents(vmsh_reader *rd, uint64_t offset, uint64_t len, vmsh_reader_extent_fn fn,
                        void *opaque);

typedef struct vmsh_reader_stats {
    uint64_t cache_hits;  /* chunk reads served from the cache */
    uint64_t chunks_read; /* chunks decoded (read, decrypted, checked) */
    uint64_t zero_reads;  /* chunk-sized pieces served as zeros from the index */
} vmsh_reader_stats;
void vmsh_reader_get_stats(vmsh_reader *rd, vmsh_reader_stats *out);

/* Closes and drops the lock; accepts NULL. No call may be running on it. */
void vmsh_reader_free(vmsh_reader *rd);

#endif
