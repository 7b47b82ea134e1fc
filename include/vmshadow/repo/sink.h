/* sink.h - restore targets: where the bytes of a restored file go (issue 27
 * point 3: a restore writes each disk once, in its format, durably).
 *
 * The mirror of a block source (source.h): a sink takes writes at offsets,
 * zeroes ranges, and is flushed. New kinds plug in through a versioned table
 * of callbacks; the repository writes into any of them
 * (vmsh_repo_restore_sink) and knows none. Kinds: a plain file or block
 * device written directly (src/repo/restore.c, vmsh_sink_open_fd), and an
 * image of any QEMU format served by qemu-nbd and written over NBD
 * (src/hv/sink.c: qcow2 files, qcow2 on a block device, rbd: images).
 *
 * Thread-safety: pwrite and zero may be called from several threads at once
 * (the repository's restore workers do); flush, finish and free from one.
 */
#ifndef VMSH_REPO_SINK_H
#define VMSH_REPO_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>

#define VMSH_SINK_OPS_VERSION 1

typedef struct vmsh_sink_ops {
    unsigned version; /* VMSH_SINK_OPS_VERSION */
    const char *kind; /* "file", "block", "nbd", ... */
    /* writes all of buf at off (0, or a negative errno with *err set) */
    int (*pwrite)(void *impl, const void *buf, size_t len, uint64_t off, vmsh_error **err);
    /* makes [off, off+len) read as zeros; NULL, or -EOPNOTSUPP returned
     * without *err set: the repository writes zeros instead */
    int (*zero)(void *impl, uint64_t off, uint64_t len, vmsh_error **err);
    /* everything written so far on stable storage */
    int (*flush)(void *impl, vmsh_error **err);
    /* after a complete write: flush, release (stop a server cleanly) and
     * make the target durable (its directory entry too); then free impl */
    int (*finish)(void *impl, vmsh_error **err);
    /* abandons the target (a failed restore) and frees impl; the caller
     * removes what it created */
    void (*free)(void *impl);
} vmsh_sink_ops;

typedef struct vmsh_sink {
    const vmsh_sink_ops *ops;
    void *impl;
    uint64_t size; /* the target's size: the file's size is written, no more */
    /* the target reads as zeros where nothing is written (a new file or a
     * new image): holes are left alone; otherwise they are zeroed */
    bool reads_zero;
    /* writes must be whole 4096-byte blocks (O_DIRECT); the tail is padded */
    bool direct;
    /* the largest write the sink takes at once (0: no limit) */
    size_t max_write;
    char *what; /* for messages: the target's name */
} vmsh_sink;

/* A sink over an open descriptor (not owned): a regular file is sized to
 * `size` with ftruncate (a new file: holes left alone), a block device must
 * be at least `size` bytes and gets its holes zeroed (BLKZEROOUT, else
 * written zeros). finish fsyncs the descriptor. `what` names it. */
int vmsh_sink_open_fd(int fd, uint64_t size, const char *what, vmsh_sink **out, vmsh_error **err);

/* Writes file `name` of backup `spec` into `sink` (whose size must be the
 * file's): every stored chunk after checking its ID; the ranges between
 * them (holes, zero chunks) are left alone on a sink that reads as zeros
 * and zeroed on any other. Does not flush: vmsh_sink_finish does. Takes
 * locks/read shared; -EBADMSG naming backup, file and chunk when data is
 * damaged or missing; `progress` (may be NULL) reports bytes done. */
int vmsh_repo_restore_sink(vmsh_repo *r, const char *spec, const char *name, vmsh_sink *sink,
                           vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *stats,
                           vmsh_error **err);

/* Completes a sink (ops->finish) and frees it; accepts NULL. */
int vmsh_sink_finish(vmsh_sink *s, vmsh_error **err);
/* Abandons a sink (ops->free) and frees it; accepts NULL. */
void vmsh_sink_free(vmsh_sink *s);

#endif
