/* sink.h - restore targets QEMU writes (issue 27 point 3): an image of any
 * format QEMU writes, served by a private qemu-nbd on a Unix socket (systemd
 * socket activation through libnbd) and written over NBD, so that a qcow2
 * disk is restored once, straight as qcow2, with its holes kept.
 *
 * The sink's finish (vmsh_sink_finish) flushes (NBD_CMD_FLUSH: QEMU syncs the
 * image), disconnects, waits for qemu-nbd to exit with status 0, then fsyncs
 * the image file and its directory: the image is on stable storage when it
 * returns, before any VM is defined on it (issue 27 point 3). */
#ifndef VMSH_HV_SINK_H
#define VMSH_HV_SINK_H

#include <stdbool.h>
#include <stdint.h>

#include <vmshadow/repo/sink.h>
#include <vmshadow/util/error.h>

/* Creates `path` (a new file: O_EXCL, O_NOFOLLOW, mode 0600) as an empty
 * image of `format` ("qcow2", or any format `qemu-img create` makes) of
 * `size` bytes as the VM sees it, and opens a sink writing into it. On
 * failure nothing is left at `path`. */
int vmsh_hv_image_sink_create(const char *path, const char *format, uint64_t size, vmsh_sink **out,
                              vmsh_error **err);

/* Issue 25 point 4: opens a sink onto storage that exists (written in
 * place, or just created by vmsh_stg_create): `target` is an image file or
 * a block device (absolute path) or "rbd:POOL/IMAGE" (QEMU's rbd driver,
 * the host's Ceph client configuration), served by qemu-nbd as `format`
 * ("raw"; "qcow2" on a file or a device: a new empty qcow2 is made over it
 * first, qemu-img create). `fresh`: a raw target reads as zeros (a new RBD
 * image or volume); otherwise the ranges the backup does not hold are
 * zeroed. The target is never removed; finish flushes it (NBD_CMD_FLUSH,
 * then fsync of a file or device). -EINVAL for a target or format not
 * written here, -ENOSPC when it is smaller than `size`. */
int vmsh_hv_storage_sink_open(const char *target, const char *format, uint64_t size, bool fresh,
                              vmsh_sink **out, vmsh_error **err);

#endif
