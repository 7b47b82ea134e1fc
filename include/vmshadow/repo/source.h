/* source.h - block sources: where the bytes of a backed-up file come from.
 *
 * A source has a size, reports which ranges hold data and which read as
 * zeros (holes, zero extents), and reads bytes. New kinds plug in through a
 * versioned table of callbacks (vmsh_source_ops), like libgit2's odb
 * backends. Built-in kinds: plain/raw files (SEEK_DATA/SEEK_HOLE), memory
 * buffers, NBD exports over a Unix socket (libnbd, base:allocation block
 * status, optional dirty bitmap), and any QEMU image format read through
 * qemu-nbd (no home-made qcow2 parser).
 *
 * Thread-safety: vmsh_source_pread may be called from several threads at once
 * (the repository's pipeline does); the other calls from one thread at a time.
 */
#ifndef VMSH_REPO_SOURCE_H
#define VMSH_REPO_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/util/error.h>

typedef struct vmsh_source vmsh_source;

enum {
    VMSH_EXTENT_ZERO = 1u << 0, /* reads as zeros (hole or zero extent): not read */
};

typedef struct vmsh_extent {
    uint64_t offset;
    uint64_t length;
    uint32_t flags; /* VMSH_EXTENT_* */
} vmsh_extent;

#define VMSH_SOURCE_OPS_VERSION 1

/* The table a kind of source implements. `impl` is the kind's own state. */
typedef struct vmsh_source_ops {
    unsigned version; /* VMSH_SOURCE_OPS_VERSION */
    const char *kind; /* "file", "memory", "nbd", "qemu-image", ... */
    /* Extents starting exactly at `offset` (< size), in order and contiguous,
     * within [offset, offset+length): fills up to `max` (≥ 1) and returns how
     * many (≥ 1), or a negative errno. NULL: everything is data. */
    int (*extents)(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                   vmsh_error **err);
    /* Reads exactly `len` bytes at `off` (within the size). Must be safe to
     * call from several threads at once. */
    int (*pread)(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err);
    /* Changed extents since the checkpoint the source was opened with (dirty
     * bitmap), same contract as `extents` but flags are 0 for changed and
     * VMSH_EXTENT_ZERO for unchanged ranges. NULL when not supported. */
    int (*dirty_extents)(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                         vmsh_error **err);
    void (*free)(void *impl);
} vmsh_source_ops;

/* Wraps a custom kind. `name` (copied) names the source in messages (a path,
 * "vda", ...). On success the source owns `impl` (ops->free is called by
 * vmsh_source_free); on failure the caller keeps it. -EINVAL for an unknown
 * ops version. */
int vmsh_source_new(vmsh_source **out, const vmsh_source_ops *ops, void *impl, uint64_t size,
                    const char *name, vmsh_error **err);

/* A regular file or block device read with pread; holes found with
 * SEEK_DATA/SEEK_HOLE cost nothing. -ENOENT, -EACCES, -EISDIR. */
int vmsh_source_open_file(vmsh_source **out, const char *path, vmsh_error **err);

/* A memory buffer (copied when `copy`, else borrowed: it must outlive the
 * source). Used for small named buffers and tests. */
int vmsh_source_open_memory(vmsh_source **out, const void *buf, size_t len, bool copy,
                            const char *name, vmsh_error **err);

/* An NBD export on a Unix socket (libvirt pull-mode backup: socket from
 * <server transport='unix' socket=.../>, export = the disk target, "vda").
 * Zero/hole extents come from block status "base:allocation". When
 * `dirty_context` is non-NULL (e.g. "qemu:dirty-bitmap:backup-vda") the
 * server must offer it (-ENOTSUP otherwise) and dirty_extents reports it.
 * -ECONNREFUSED/-ENOENT when nothing listens. */
int vmsh_source_open_nbd(vmsh_source **out, const char *socket_path, const char *export_name,
                         const char *dirty_context, vmsh_error **err);

/* An image file in any format QEMU reads (`format`: "qcow2", "raw", ...;
 * NULL probes, which is unsafe for untrusted images: pass it), read through
 * a private `qemu-nbd --read-only --shared=1` started with systemd socket
 * activation by libnbd and stopped by vmsh_source_free. -ENOENT when the
 * file does not exist, -EINVAL when QEMU cannot open it. */
int vmsh_source_open_qemu_image(vmsh_source **out, const char *path, const char *format,
                                vmsh_error **err);

/* vmsh_source_open_qemu_image with the image's persistent dirty bitmap
 * `bitmap` exported too (`qemu-nbd --bitmap`): dirty_extents reports the
 * areas written since the bitmap was created (issue 7: a shut-off VM's
 * incremental read). -EINVAL when QEMU cannot open the image or refuses the
 * bitmap (missing, or inconsistent: in use when its QEMU stopped). */
int vmsh_source_open_qemu_image_bitmap(vmsh_source **out, const char *path, const char *format,
                                       const char *bitmap, vmsh_error **err);

uint64_t vmsh_source_size(const vmsh_source *s);
const char *vmsh_source_name(const vmsh_source *s);
const char *vmsh_source_kind(const vmsh_source *s);
/* True when the source can report dirty extents (opened with a bitmap). */
bool vmsh_source_has_dirty(const vmsh_source *s);

/* See vmsh_source_ops. These check the arguments (-EINVAL beyond the size)
 * and the kind's answers (-EIO when a kind returns extents that do not start
 * at `offset`, are empty or run past the end). */
int vmsh_source_extents(vmsh_source *s, uint64_t offset, uint64_t length, vmsh_extent *out,
                        size_t max, vmsh_error **err);
int vmsh_source_dirty_extents(vmsh_source *s, uint64_t offset, uint64_t length, vmsh_extent *out,
                              size_t max, vmsh_error **err);
int vmsh_source_pread(vmsh_source *s, void *buf, size_t len, uint64_t off, vmsh_error **err);

/* Frees the source and its kind's state (closes files, disconnects, stops
 * qemu-nbd). Accepts NULL. */
void vmsh_source_free(vmsh_source *s);
void vmsh_source_freep(vmsh_source **s);
#define _cleanup_source_ __attribute__((cleanup(vmsh_source_freep)))

#endif
