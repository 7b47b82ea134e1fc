/* image.c - qcow2 images (include/vmshadow/hv/hvops.h): the empty scratch
 * images of the pull provider, written here; the overlays of the saved-state
 * method (R1), made with qemu-img; the size of an image as its VM sees
 * it; and every other qemu-img run (commit, info, convert, bitmap; issue 21:
 * only hv/ starts it). */
#include "hv_private.h"

#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- an empty qcow2 image (docs/formats/qcow2-scratch.md) ---- */

enum {
    QCOW2_CLUSTER_BITS = 16,
    QCOW2_CLUSTER = 1 << QCOW2_CLUSTER_BITS,
    QCOW2_HEADER_LENGTH = 104, /* version 3 without optional fields */
    /* QEMU's limit on the L1 table (QCOW_MAX_L1_SIZE, 32 MiB): 2 PiB */
    QCOW2_MAX_L1_ENTRIES = (32 << 20) / 8,
};

int vmsh_qcow2_empty_layout(uint64_t size, uint32_t *l1_entries, uint32_t *clusters)
{
    /* one L2 table maps QCOW2_CLUSTER / 8 clusters: an L1 entry, 512 MiB */
    uint64_t per_l1 = (uint64_t)QCOW2_CLUSTER * (QCOW2_CLUSTER / 8);
    uint64_t l1 = size / per_l1 + (size % per_l1 != 0);
    if (l1 > QCOW2_MAX_L1_ENTRIES)
        return -EFBIG;
    *l1_entries = (uint32_t)l1;
    /* header, refcount table, refcount block, then the L1 table */
    *clusters = 3 + (uint32_t)((l1 * 8 + QCOW2_CLUSTER - 1) / QCOW2_CLUSTER);
    return 0;
}

int vmsh_qcow2_empty_write(int fd, uint64_t size, vmsh_error **err)
{
    /* QEMU counts a disk in 512-byte sectors: rounded up, as qemu-img does */
    size = size > UINT64_MAX - 511 ? UINT64_MAX : (size + 511) & ~(uint64_t)511;
    uint32_t l1 = 0, clusters = 0;
    if (vmsh_qcow2_empty_layout(size, &l1, &clusters) < 0)
        return vmsh_error_set(err, -EFBIG, "an image of %" PRIu64 " bytes is too large for qcow2",
                              size);
    uint8_t *b = calloc(3, QCOW2_CLUSTER);
    if (!b)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* cluster 0: the header (big-endian; docs/interop/qcow2.txt in QEMU) */
    memcpy(b, "QFI\xfb", 4);
    vmsh_put_be32(b + 4, 3);                     /* version */
    vmsh_put_be32(b + 20, QCOW2_CLUSTER_BITS);   /* cluster_bits */
    vmsh_put_be64(b + 24, size);                 /* size */
    vmsh_put_be32(b + 36, l1);                   /* l1_size */
    vmsh_put_be64(b + 40, 3 * QCOW2_CLUSTER);    /* l1_table_offset */
    vmsh_put_be64(b + 48, 1 * QCOW2_CLUSTER);    /* refcount_table_offset */
    vmsh_put_be32(b + 56, 1);                    /* refcount_table_clusters */
    vmsh_put_be32(b + 96, 4);                    /* refcount_order: 16-bit counts */
    vmsh_put_be32(b + 100, QCOW2_HEADER_LENGTH); /* header_length */
    /* at 104: the end of the header extensions (type 0), already zero */
    /* cluster 1: the refcount table; its one entry, the block at cluster 2 */
    vmsh_put_be64(b + QCOW2_CLUSTER, 2 * QCOW2_CLUSTER);
    /* cluster 2: every cluster of the file is used once */
    for (uint32_t i = 0; i < clusters; i++)
        vmsh_put_be16(b + 2 * QCOW2_CLUSTER + 2 * i, 1);
    int r = vmsh_fs_pwrite_all(fd, b, 3 * QCOW2_CLUSTER, 0);
    free(b);
    /* the L1 table: zeros (no cluster of the disk is allocated), a hole */
    if (r == 0 && ftruncate(fd, (off_t)clusters * QCOW2_CLUSTER) < 0)
        r = -errno;
    if (r < 0)
        return vmsh_error_set(err, r, "cannot write the qcow2 image: %s", strerror(-r));
    return 0;
}

int vmsh_hv_image_create(const char *path, const char *backing, const char *backing_format,
                         uint64_t size, vmsh_error **err)
{
    /* not O_CLOEXEC when qemu-img inherits it */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | (backing ? 0 : O_CLOEXEC), 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
    if (!backing) {
        /* an empty image is three clusters we write ourselves: a qemu-img
         * per disk cost 20-25 ms beside the guests' freeze (two for the
         * bench VM), more CPU for the 2 cores the freeze competes for */
        int r = vmsh_qcow2_empty_write(fd, size, err);
        if (close(fd) < 0 && r == 0)
            r = vmsh_error_set(err, -errno, "cannot write %s: %s", path, strerror(errno));
        if (r < 0) {
            vmsh_error_prefix(err, "%s", path);
            unlink(path);
        }
        return r;
    }
    char target[32];
    snprintf(target, sizeof(target), "/dev/fd/%d", fd);
    char *argv[12];
    size_t n = 0;
    argv[n++] = (char *)"qemu-img";
    argv[n++] = (char *)"create";
    argv[n++] = (char *)"-q";
    argv[n++] = (char *)"-f";
    argv[n++] = (char *)"qcow2";
    argv[n++] = (char *)"-b";
    argv[n++] = (char *)backing;
    argv[n++] = (char *)"-F";
    argv[n++] = (char *)backing_format;
    argv[n++] = target;
    argv[n] = NULL;
    vmsh_proc_result res;
    int r = vmsh_proc_run(argv, NULL, 60 * 1000, &res, err);
    close(fd);
    if (r == 0 && res.exit_code != 0) {
        char buf[96];
        r = vmsh_error_set(err, -EIO, "qemu-img could not create %s: %s", path,
                           vmsh_proc_describe(&res, buf, sizeof(buf)));
    }
    if (r < 0)
        unlink(path);
    return r;
}

int vmsh_hv_image_size(const char *path, const char *format, uint64_t *out, vmsh_error **err)
{
    bool qcow2 = strcmp(format, "qcow2") == 0;
    if (!qcow2 && strcmp(format, "raw") != 0)
        return vmsh_error_set(err, -ENOTSUP, "%s: the size of a %s image is not read here", path,
                              format);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    int r = 0;
    struct stat st;
    if (qcow2) {
        /* docs/interop/qcow2.txt: magic "QFI\xfb" at 0, the virtual size as
         * a big-endian 64-bit number at 24 */
        uint8_t h[32];
        if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0) {
            r = vmsh_error_set(err, -EINVAL, "%s is not a qcow2 image", path);
        } else {
            uint64_t v = 0;
            for (int i = 24; i < 32; i++)
                v = v << 8 | h[i];
            *out = v;
        }
    } else if (fstat(fd, &st) < 0) {
        r = vmsh_error_set(err, -errno, "cannot read the size of %s: %s", path, strerror(errno));
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, out) < 0)
            r = vmsh_error_set(err, -errno, "cannot read the size of %s: %s", path,
                               strerror(errno));
    } else {
        *out = (uint64_t)st.st_size;
    }
    close(fd);
    return r;
}

/* ---- qemu-img commit, info, convert, bitmap ---- */

/* Runs a qemu-img command line: -EIO with *how filled when it failed. */
static int run_img(char *const argv[], int64_t timeout_ms, char *how, size_t cap, vmsh_error **err)
{
    vmsh_proc_result res;
    int r = vmsh_proc_run(argv, NULL, timeout_ms, &res, err);
    if (r < 0)
        return r;
    if (res.exit_code != 0) {
        vmsh_proc_describe(&res, how, cap);
        return -EIO;
    }
    return 0;
}

int vmsh_hv_image_commit(const char *overlay, int timeout_s, char *tool, size_t cap,
                         vmsh_error **err)
{
    char *argv[] = {(char *)"qemu-img", (char *)"commit", (char *)"-q", (char *)"-f",
                    (char *)"qcow2",    (char *)overlay,  NULL};
    char how[96] = "";
    int r = run_img(argv, (int64_t)timeout_s * 1000, how, sizeof(how), err);
    if (r == -EIO && tool && cap)
        snprintf(tool, cap, "%s", how);
    return r;
}

int vmsh_hv_image_info(const char *path, const char *format, char **out, vmsh_error **err)
{
    char *argv[] = {(char *)"qemu-img",
                    (char *)"info",
                    (char *)"--output=json",
                    (char *)"--force-share",
                    (char *)"-f",
                    (char *)format,
                    (char *)path,
                    NULL};
    size_t len = 0;
    return vmsh_proc_capture(argv, 60000, 16u << 20, out, &len, err);
}

/* "WHAT failed: qemu-img HOW", as the writers said it before issue 21 */
static int run_img_named(char *const argv[], const char *what, vmsh_error **err)
{
    char how[96] = "";
    int r = run_img(argv, 3600 * 1000, how, sizeof(how), err);
    if (r == -EIO)
        vmsh_error_set(err, -EIO, "%s failed: %s %s", what, argv[0], how);
    return r;
}

int vmsh_hv_image_convert(const char *src, const char *src_format, const char *dst,
                          const char *format, const char *what, vmsh_error **err)
{
    /* qemu-img follows a symbolic link at its output path: make the file
     * ourselves first (O_EXCL, O_NOFOLLOW), so that a link or file planted
     * there is removed, never written through. */
    unlink(dst);
    int cfd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (cfd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", dst, strerror(errno));
    close(cfd);
    char *argv[] = {
        (char *)"qemu-img", (char *)"convert", (char *)"-q", (char *)"-f", (char *)src_format,
        (char *)"-O",       (char *)format,    (char *)src,  (char *)dst,  NULL};
    int r = run_img_named(argv, what, err);
    if (r < 0)
        unlink(dst);
    return r;
}

int vmsh_hv_image_bitmap(const char *op, const char *path, const char *name, vmsh_error **err)
{
    char *argv[] = {(char *)"qemu-img", (char *)"bitmap", (char *)op,   (char *)"-f",
                    (char *)"qcow2",    (char *)path,     (char *)name, NULL};
    int r = run_img_named(argv, "qemu-img bitmap", err);
    /* the image changed: on stable storage before a VM is defined on it
     * (issue 27 point 3), whatever qemu-img's cache mode did */
    int fd = r == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        if (fsync(fd) < 0)
            r = vmsh_error_set(err, -errno, "cannot fsync %s: %s", path, strerror(errno));
        close(fd);
    }
    return r;
}
