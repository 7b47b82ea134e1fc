/* source.c - block sources: the generic wrapper, plain files (SEEK_DATA /
 * SEEK_HOLE) and memory buffers. NBD and QEMU images are in source_nbd.c. */
#include "internal.h"

#include <vmshadow/repo/source.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/major.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

struct vmsh_source {
    const vmsh_source_ops *ops;
    void *impl;
    uint64_t size;
    char *name;
};

int vmsh_source_new(vmsh_source **out, const vmsh_source_ops *ops, void *impl, uint64_t size,
                    const char *name, vmsh_error **err)
{
    if (!ops || ops->version != VMSH_SOURCE_OPS_VERSION || !ops->pread)
        return vmsh_error_set(err, -EINVAL, "block source %s: unsupported callback table",
                              name ? name : "?");
    vmsh_source *s = calloc(1, sizeof(*s));
    if (!s || !(s->name = strdup(name ? name : "?"))) {
        free(s);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    s->ops = ops;
    s->impl = impl;
    s->size = size;
    *out = s;
    return 0;
}

void vmsh_source_free(vmsh_source *s)
{
    if (!s)
        return;
    if (s->ops->free)
        s->ops->free(s->impl);
    free(s->name);
    free(s);
}

void vmsh_source_freep(vmsh_source **s)
{
    if (s)
        vmsh_source_free(*s);
}

uint64_t vmsh_source_size(const vmsh_source *s)
{
    return s->size;
}

const char *vmsh_source_name(const vmsh_source *s)
{
    return s->name;
}

const char *vmsh_source_kind(const vmsh_source *s)
{
    return s->ops->kind ? s->ops->kind : "custom";
}

bool vmsh_source_has_dirty(const vmsh_source *s)
{
    return s->ops->dirty_extents != NULL;
}

static int check_extents(vmsh_source *s, uint64_t offset, uint64_t length, vmsh_extent *out, int n,
                         vmsh_error **err)
{
    if (n < 1)
        return vmsh_error_set(err, -EIO, "block source %s returned no extent at %llu", s->name,
                              (unsigned long long)offset);
    uint64_t pos = offset, end = offset + length;
    for (int i = 0; i < n; i++) {
        if (out[i].offset != pos || out[i].length == 0 || out[i].length > end - pos)
            return vmsh_error_set(err, -EIO,
                                  "block source %s returned an inconsistent extent list at %llu",
                                  s->name, (unsigned long long)pos);
        pos += out[i].length;
    }
    return n;
}

static int extents_common(vmsh_source *s, bool dirty, uint64_t offset, uint64_t length,
                          vmsh_extent *out, size_t max, vmsh_error **err)
{
    if (max == 0 || offset >= s->size || length == 0)
        return vmsh_error_set(err, -EINVAL, "block source %s: extents asked beyond its size",
                              s->name);
    if (length > s->size - offset)
        length = s->size - offset;
    if (max > INT32_MAX)
        max = INT32_MAX;
    int (*fn)(void *, uint64_t, uint64_t, vmsh_extent *, size_t, vmsh_error **) =
        dirty ? s->ops->dirty_extents : s->ops->extents;
    if (!fn) {
        out[0] = (vmsh_extent){.offset = offset, .length = length, .flags = 0};
        return 1;
    }
    int n = fn(s->impl, offset, length, out, max, err);
    if (n < 0)
        return n;
    if ((size_t)n > max)
        return vmsh_error_set(err, -EIO, "block source %s returned too many extents", s->name);
    return check_extents(s, offset, length, out, n, err);
}

int vmsh_source_extents(vmsh_source *s, uint64_t offset, uint64_t length, vmsh_extent *out,
                        size_t max, vmsh_error **err)
{
    return extents_common(s, false, offset, length, out, max, err);
}

int vmsh_source_dirty_extents(vmsh_source *s, uint64_t offset, uint64_t length, vmsh_extent *out,
                              size_t max, vmsh_error **err)
{
    if (!s->ops->dirty_extents)
        return vmsh_error_set(err, -ENOTSUP, "block source %s has no dirty bitmap", s->name);
    return extents_common(s, true, offset, length, out, max, err);
}

int vmsh_source_pread(vmsh_source *s, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    if (off > s->size || len > s->size - off)
        return vmsh_error_set(err, -EINVAL, "block source %s: read beyond its size", s->name);
    if (len == 0)
        return 0;
    return s->ops->pread(s->impl, buf, len, off, err);
}

/* ---- plain files ---- */

typedef struct file_src {
    int fd;
    int dfd; /* the same file opened with O_DIRECT, or -1 */
    uint64_t size;
    char *path;
    bool no_seek_data; /* filesystem without SEEK_DATA: everything is data */
    /* where SEEK_DATA / SEEK_HOLE are asked: the file itself, or a loop
     * device's backing file (hfd, owned when != fd) at offset hoff */
    int hfd;
    uint64_t hoff;
} file_src;

static int file_extents(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                        vmsh_error **err)
{
    file_src *f = impl;
    uint64_t end = offset + length, pos = offset;
    size_t n = 0;
    if (f->no_seek_data) {
        out[0] = (vmsh_extent){offset, length, 0};
        return 1;
    }
    while (pos < end && n < max) {
        off_t d = lseek(f->hfd, (off_t)(pos + f->hoff), SEEK_DATA);
        if (d < 0 && errno == ENXIO) {
            out[n++] = (vmsh_extent){pos, end - pos, VMSH_EXTENT_ZERO};
            break;
        }
        if (d < 0 && n == 0 && (errno == EINVAL || errno == EOPNOTSUPP)) {
            f->no_seek_data = true;
            out[0] = (vmsh_extent){offset, length, 0};
            return 1;
        }
        if (d < 0)
            return vmsh_error_set(err, -errno, "cannot find data in %s: %s", f->path,
                                  strerror(errno));
        d -= (off_t)f->hoff;
        if ((uint64_t)d > pos) {
            uint64_t z = (uint64_t)d < end ? (uint64_t)d : end;
            out[n++] = (vmsh_extent){pos, z - pos, VMSH_EXTENT_ZERO};
            pos = z;
            continue;
        }
        off_t h = lseek(f->hfd, (off_t)(pos + f->hoff), SEEK_HOLE);
        if (h < 0)
            return vmsh_error_set(err, -errno, "cannot find holes in %s: %s", f->path,
                                  strerror(errno));
        h -= (off_t)f->hoff;
        uint64_t e = (uint64_t)h < end ? (uint64_t)h : end;
        if (e <= pos) /* the file changed under us: treat the rest as data */
            e = end;
        out[n++] = (vmsh_extent){pos, e - pos, 0};
        pos = e;
    }
    return (int)n;
}

/* Issue 25: a loop device reports no holes, but its backing file does: the
 * device's block i is the file's byte lo_offset + i (no encryption), and
 * the file's holes read as zeros through the device. So SEEK_DATA on the
 * backing file skips the device's holes as for an image file. The file is
 * the one the device has open (same inode and device number as
 * LOOP_GET_STATUS64 says, not one renamed over it); -1 when it cannot be
 * told (not a loop device, a deleted or replaced file, encryption). */
static int loop_backing(int fd, const struct stat *st, uint64_t *offset)
{
    if (major(st->st_rdev) != LOOP_MAJOR)
        return -1;
    struct loop_info64 li;
    if (ioctl(fd, LOOP_GET_STATUS64, &li) < 0 || li.lo_encrypt_type != 0)
        return -1;
    char sys[96], path[4096];
    snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/loop/backing_file", major(st->st_rdev),
             minor(st->st_rdev));
    FILE *fp = fopen(sys, "re");
    bool got = fp && fgets(path, sizeof(path), fp);
    if (fp)
        fclose(fp);
    if (!got)
        return -1;
    path[strcspn(path, "\n")] = 0;
    int b = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat bs;
    if (b >= 0 && (fstat(b, &bs) < 0 || !S_ISREG(bs.st_mode) || bs.st_ino != li.lo_inode ||
                   bs.st_dev != (dev_t)li.lo_device)) {
        close(b);
        b = -1;
    }
    *offset = li.lo_offset;
    return b;
}

static int buffered_read(file_src *f, uint8_t *p, size_t len, uint64_t off, vmsh_error **err)
{
    while (len > 0) {
        ssize_t n = pread(f->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vmsh_error_set(err, -errno, "cannot read %s: %s", f->path, strerror(errno));
        }
        if (n == 0) { /* shrunk while read: the rest reads as zeros, like a hole */
            memset(p, 0, len);
            return 0;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

#define DIO_ALIGN 4096u

/* Data in the page cache is copied from it (cheap); data that is not is read
 * with O_DIRECT: filling the page cache costs ~2 CPU-s per GiB here
 * (../shared/lab/PERF.md), more than hashing and compressing it. Cold disk
 * images are the usual case for a backup. */
static int file_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    file_src *f = impl;
    uint8_t *p = buf;
    if (f->dfd >= 0) {
        struct iovec iov = {.iov_base = p, .iov_len = len};
        ssize_t n = preadv2(f->fd, &iov, 1, (off_t)off, RWF_NOWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            off += (uint64_t)n;
        }
        /* the rest with O_DIRECT when it is aligned (the pipeline's reads are:
         * 64 KiB-aligned offsets, 4 KiB-aligned buffers) */
        if (len > 0 && (uintptr_t)p % DIO_ALIGN == 0 && off % DIO_ALIGN == 0 &&
            len % DIO_ALIGN == 0) {
            size_t done = 0;
            while (done < len) {
                ssize_t m = pread(f->dfd, p + done, len - done, (off_t)(off + done));
                if (m < 0 && errno == EINTR)
                    continue;
                if (m <= 0)
                    break; /* the buffered read below reports errors */
                done += (size_t)m;
                if (done % DIO_ALIGN)
                    break; /* end of file */
            }
            p += done;
            off += done;
            len -= done;
        }
    }
    return buffered_read(f, p, len, off, err);
}

static void file_free(void *impl)
{
    file_src *f = impl;
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (f->dfd >= 0)
        close(f->dfd);
    if (f->hfd >= 0 && f->hfd != f->fd)
        close(f->hfd);
    free(f->path);
    free(f);
}

static const vmsh_source_ops file_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "file",
    .extents = file_extents,
    .pread = file_pread,
    .free = file_free,
};

int vmsh_source_open_file(vmsh_source **out, const char *path, vmsh_error **err)
{
    file_src *f = calloc(1, sizeof(*f));
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    f->dfd = f->hfd = -1;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        int e = errno;
        file_free(f);
        return vmsh_error_set(err, -e, "cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    uint64_t size = 0;
    if (fstat(f->fd, &st) < 0) {
        int e = errno;
        file_free(f);
        return vmsh_error_set(err, -e, "cannot stat %s: %s", path, strerror(e));
    }
    if (S_ISREG(st.st_mode)) {
        size = (uint64_t)st.st_size;
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(f->fd, BLKGETSIZE64, &size) < 0) {
            int e = errno;
            file_free(f);
            return vmsh_error_set(err, -e, "cannot get the size of %s: %s", path, strerror(e));
        }
        f->hfd = loop_backing(f->fd, &st, &f->hoff);
        if (f->hfd < 0) {
            f->hoff = 0;
            f->no_seek_data = true;
        }
    } else {
        file_free(f);
        return vmsh_error_set(err, S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL,
                              "%s is not a regular file or block device", path);
    }
    f->size = size;
    if (f->hfd < 0)
        f->hfd = f->fd;
    /* Not every filesystem has O_DIRECT (tmpfs): then every read is buffered. */
    f->dfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    /* The kernel reads ahead more usefully when told the access is sequential. */
    posix_fadvise(f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    int rc = vmsh_source_new(out, &file_ops, f, size, path, err);
    if (rc < 0)
        file_free(f);
    return rc;
}

/* ---- memory ---- */

typedef struct mem_src {
    const uint8_t *buf;
    uint8_t *owned;
} mem_src;

static int mem_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    mem_src *m = impl;
    memcpy(buf, m->buf + off, len);
    return 0;
}

static void mem_free(void *impl)
{
    mem_src *m = impl;
    if (!m)
        return;
    free(m->owned);
    free(m);
}

static const vmsh_source_ops mem_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "memory",
    .pread = mem_pread,
    .free = mem_free,
};

int vmsh_source_open_memory(vmsh_source **out, const void *buf, size_t len, bool copy,
                            const char *name, vmsh_error **err)
{
    mem_src *m = calloc(1, sizeof(*m));
    if (!m)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (copy && len) {
        m->owned = malloc(len);
        if (!m->owned) {
            free(m);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        memcpy(m->owned, buf, len);
        m->buf = m->owned;
    } else {
        m->buf = buf;
    }
    int rc = vmsh_source_new(out, &mem_ops, m, len, name, err);
    if (rc < 0)
        mem_free(m);
    return rc;
}
