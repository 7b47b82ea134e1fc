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

#include <stdint.h>

#include <vmshadow/repo/sink.h>
#include <vmshadow/util/error.h>

/* Creates `path` (a new file: O_EXCL, O_NOFOLLOW, mode 0600) as an empty
 * image of `format` ("qcow2", or any format `qemu-img create` makes) of
 * `size` bytes as the VM sees it, and opens a sink writing into it. On
 * failure nothing is left at `path`. */
int vmsh_hv_image_sink_create(const char *path, const char *format, uint64_t size, vmsh_sink **out,
                              vmsh_error **err);

#endif
