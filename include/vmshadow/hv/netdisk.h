/* netdisk.h - network disks opened by a QEMU of vmshadow's own (issue 25,
 * R6): a shut-off VM's network disk, and the saved instant of a saved VM's,
 * are read through a private `qemu-nbd` serving the source read-only on a
 * Unix socket; a saved VM's overlay names the source as its backing file.
 *
 * The source comes from the VM's definition (vmsh_domxml_disk's network
 * parts). It is turned into a QEMU "json:" filename by json-c, never into
 * a shell line or an option string: only the protocols below, and only the
 * hosts, names and user the definition gives. Credentials are not taken
 * from libvirt (its secrets are usually private): an RBD disk's user gets
 * its key from the host's Ceph client configuration (the definition's
 * <config file=.../>, else $CEPH_CONF, else /etc/ceph/ceph.conf, and the
 * keyring it names), as `rbd` on the host would.
 *
 * Thread-safety: the spec is pure; the server calls may run on any thread
 * but the thread that starts a server must live as long as it (the server
 * gets SIGTERM when that thread's process dies: PR_SET_PDEATHSIG).
 */
#ifndef VMSH_HV_NETDISK_H
#define VMSH_HV_NETDISK_H

#include <sys/types.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/util/error.h>

/* "json:{...}": a filename qemu-nbd and qemu-img open as the disk `d`
 * (type='network') in its format (d->format, default raw): what a private
 * qemu-nbd serves, and the backing file of a saved VM's overlay (with that
 * format as the backing format: the JSON names the format layer too, as
 * QEMU needs when the backing format is given). Protocols:
 * rbd, nbd, iscsi (without <auth>), gluster, http, https, ftp, ftps.
 * Expected errors: -ENOTSUP (another protocol, an iSCSI disk with
 * credentials, a format vmshadow does not open; the message says which),
 * -EINVAL (a source the definition leaves incomplete), -ENOMEM. */
int vmsh_hv_netdisk_spec(const vmsh_domxml_disk *d, char **out, vmsh_error **err);

/* Starts `qemu-nbd --read-only` serving `spec` as export `export_name` on
 * the socket DIR/sock, DIR a new directory (mode 0700, must not exist;
 * qemu-nbd's messages go to DIR/log). Returns once the socket accepts a
 * connection, with the server's process ID in *pid; on failure nothing is
 * left running and DIR is removed. Expected errors: -EEXIST (DIR exists),
 * -ENOENT (qemu-nbd is missing), -EIO (QEMU cannot open the source: the
 * message has qemu-nbd's last words), -ETIMEDOUT (not serving within
 * `timeout_s`), -ENOMEM. */
int vmsh_hv_netserve_start(const char *dir, const char *export_name, const char *spec,
                           int timeout_s, pid_t *pid, vmsh_error **err);

/* The process ID qemu-nbd wrote to DIR/pid, 0 when none (recover: the
 * journal knows DIR before the server starts). */
pid_t vmsh_hv_netserve_pid(const char *dir);

/* "DIR/sock". NULL on out of memory. */
char *vmsh_hv_netserve_socket(const char *dir);

/* Stops the server `pid` started on DIR (SIGTERM, SIGKILL after 5 s) when
 * that process is still a qemu-nbd serving DIR/sock (a process ID reused
 * by another program is never signalled), reaps it when it is our child,
 * and removes DIR. Works from another process too (recover). 0 when
 * nothing of it is left; -EBUSY when it would not die; -errno when DIR
 * cannot be removed. */
int vmsh_hv_netserve_stop(pid_t pid, const char *dir, vmsh_error **err);

#endif
