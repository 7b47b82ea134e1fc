/* image.c - qcow2 images made with qemu-img (include/vmshadow/hv/hvops.h):
 * the overlays of the saved-state method (R1) and the scratch images of the
 * pull provider; and the size of an image as its VM sees it. */
#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

int vmsh_hv_image_create(const char *path, const char *backing, const char *backing_format,
                         uint64_t size, vmsh_error **err)
{
    /* not O_CLOEXEC: qemu-img inherits it */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (fd < 0)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
    char target[32], size_s[24];
    snprintf(target, sizeof(target), "/dev/fd/%d", fd);
    snprintf(size_s, sizeof(size_s), "%" PRIu64, size);
    char *argv[12];
    size_t n = 0;
    argv[n++] = (char *)"qemu-img";
    argv[n++] = (char *)"create";
    argv[n++] = (char *)"-q";
    argv[n++] = (char *)"-f";
    argv[n++] = (char *)"qcow2";
    if (backing) {
        argv[n++] = (char *)"-b";
        argv[n++] = (char *)backing;
        argv[n++] = (char *)"-F";
        argv[n++] = (char *)backing_format;
    }
    argv[n++] = target;
    if (!backing)
        argv[n++] = size_s;
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
