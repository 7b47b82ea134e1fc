/* source_nbd.c - block sources read over NBD with libnbd: an export on a Unix
 * socket (libvirt pull-mode backups) and any QEMU image format through a
 * private qemu-nbd started by systemd socket activation (QEMU's own block
 * layer reads qcow2: no home-made parser). Zero and hole extents come from
 * NBD block status "base:allocation"; a dirty bitmap context (e.g.
 * "qemu:dirty-bitmap:backup-vda") tells an incremental what changed. */
#include "internal.h"

#include <vmshadow/repo/source.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ALLOCATION "base:allocation"
/* NBD block status lengths are 32-bit on the wire */
#define MAX_STATUS_REQ (1ull << 30)

typedef struct nbd_src {
    struct nbd_handle *h;
    char *what; /* for messages */
    char *dirty_ctx;
    bool have_alloc;
} nbd_src;

typedef struct status_acc {
    const char *ctx;
    bool dirty;
    uint64_t end; /* requested end */
    vmsh_extent *out;
    size_t max, n;
    uint64_t next; /* where the next extent must start */
} status_acc;

static int status_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr, int *error)
{
    status_acc *a = user;
    if (strcmp(metacontext, a->ctx) != 0)
        return 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < nr && a->n < a->max && pos < a->end; i += 2) {
        uint64_t len = entries[i];
        uint32_t flags = entries[i + 1];
        if (len == 0)
            break;
        if (pos + len > a->end)
            len = a->end - pos;
        if (pos != a->next) /* a server that skips: stop here, the caller asks again */
            break;
        uint32_t f;
        if (a->dirty) /* bit 0 set: dirty (changed) */
            f = (flags & 1) ? 0 : VMSH_EXTENT_ZERO;
        else /* NBD_STATE_ZERO (2): reads as zeros */
            f = (flags & 2) ? VMSH_EXTENT_ZERO : 0;
        if (a->n > 0 && a->out[a->n - 1].flags == f &&
            a->out[a->n - 1].offset + a->out[a->n - 1].length == pos)
            a->out[a->n - 1].length += len;
        else
            a->out[a->n++] = (vmsh_extent){pos, len, f};
        pos += len;
        a->next = pos;
    }
    return 0;
}

static int status_common(nbd_src *s, const char *ctx, bool dirty, uint64_t offset, uint64_t length,
                         vmsh_extent *out, size_t max, vmsh_error **err)
{
    uint64_t req = length < MAX_STATUS_REQ ? length : MAX_STATUS_REQ;
    status_acc a = {
        .ctx = ctx, .dirty = dirty, .end = offset + req, .out = out, .max = max, .next = offset};
    nbd_extent_callback cb = {.callback = status_cb, .user_data = &a};
    if (nbd_block_status(s->h, req, offset, cb, 0) == -1)
        return vmsh_error_set(err, -(nbd_get_errno() ? nbd_get_errno() : EIO),
                              "block status of %s failed: %s", s->what, nbd_get_error());
    if (a.n == 0)
        return vmsh_error_set(err, -EIO, "%s: the NBD server returned no extent at %llu", s->what,
                              (unsigned long long)offset);
    return (int)a.n;
}

static int nbd_extents(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                       vmsh_error **err)
{
    nbd_src *s = impl;
    if (!s->have_alloc) {
        out[0] = (vmsh_extent){offset, length, 0};
        return 1;
    }
    return status_common(s, ALLOCATION, false, offset, length, out, max, err);
}

static int nbd_dirty(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                     vmsh_error **err)
{
    nbd_src *s = impl;
    return status_common(s, s->dirty_ctx, true, offset, length, out, max, err);
}

static int nbd_src_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    nbd_src *s = impl;
    /* libnbd handles are thread-safe; requests above 32 MiB are refused by
     * many servers, ours are ≤ 1 MiB. */
    if (nbd_pread(s->h, buf, len, off, 0) == -1)
        return vmsh_error_set(err, -(nbd_get_errno() ? nbd_get_errno() : EIO),
                              "cannot read %s at %llu: %s", s->what, (unsigned long long)off,
                              nbd_get_error());
    return 0;
}

static void nbd_src_free(void *impl)
{
    nbd_src *s = impl;
    if (!s)
        return;
    if (s->h) {
        nbd_shutdown(s->h, 0);
        nbd_close(s->h); /* also stops a qemu-nbd we started */
    }
    free(s->what);
    free(s->dirty_ctx);
    free(s);
}

static const vmsh_source_ops nbd_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "nbd",
    .extents = nbd_extents,
    .pread = nbd_src_pread,
    .free = nbd_src_free,
};

static const vmsh_source_ops nbd_dirty_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "nbd",
    .extents = nbd_extents,
    .pread = nbd_src_pread,
    .dirty_extents = nbd_dirty,
    .free = nbd_src_free,
};

static const vmsh_source_ops qemu_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "qemu-image",
    .extents = nbd_extents,
    .pread = nbd_src_pread,
    .free = nbd_src_free,
};

static const vmsh_source_ops qemu_dirty_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "qemu-image",
    .extents = nbd_extents,
    .pread = nbd_src_pread,
    .dirty_extents = nbd_dirty,
    .free = nbd_src_free,
};

static int finish(vmsh_source **out, nbd_src *s, const vmsh_source_ops *ops, vmsh_error **err)
{
    int r = nbd_can_meta_context(s->h, ALLOCATION);
    s->have_alloc = r == 1;
    if (s->dirty_ctx && nbd_can_meta_context(s->h, s->dirty_ctx) != 1) {
        int rc = vmsh_error_set(err, -ENOTSUP,
                                "%s does not offer the dirty bitmap context %s: is the backup "
                                "job incremental, and the checkpoint still there?",
                                s->what, s->dirty_ctx);
        nbd_src_free(s);
        return rc;
    }
    int64_t size = nbd_get_size(s->h);
    if (size < 0) {
        int rc =
            vmsh_error_set(err, -EIO, "cannot get the size of %s: %s", s->what, nbd_get_error());
        nbd_src_free(s);
        return rc;
    }
    int rc = vmsh_source_new(out, ops, s, (uint64_t)size, s->what, err);
    if (rc < 0)
        nbd_src_free(s);
    return rc;
}

static nbd_src *nbd_src_new(const char *what, const char *dirty, vmsh_error **err)
{
    nbd_src *s = calloc(1, sizeof(*s));
    if (!s || !(s->what = strdup(what)) || (dirty && !(s->dirty_ctx = strdup(dirty)))) {
        nbd_src_free(s);
        vmsh_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    s->h = nbd_create();
    if (!s->h || nbd_add_meta_context(s->h, ALLOCATION) == -1 ||
        (dirty && nbd_add_meta_context(s->h, dirty) == -1)) {
        vmsh_error_set(err, -ENOMEM, "cannot set up libnbd: %s", nbd_get_error());
        nbd_src_free(s);
        return NULL;
    }
    return s;
}

int vmsh_source_open_nbd(vmsh_source **out, const char *socket_path, const char *export_name,
                         const char *dirty_context, vmsh_error **err)
{
    char what[512];
    snprintf(what, sizeof(what), "NBD export \"%s\" on %s", export_name ? export_name : "",
             socket_path);
    nbd_src *s = nbd_src_new(what, dirty_context, err);
    if (!s)
        return -ENOMEM;
    if (nbd_set_export_name(s->h, export_name ? export_name : "") == -1 ||
        nbd_connect_unix(s->h, socket_path) == -1) {
        int e = nbd_get_errno() ? nbd_get_errno() : EIO;
        int rc = vmsh_error_set(err, -e, "cannot connect to %s: %s", what, nbd_get_error());
        nbd_src_free(s);
        return rc;
    }
    return finish(out, s, dirty_context ? &nbd_dirty_ops : &nbd_ops, err);
}

static int open_qemu_image(vmsh_source **out, const char *path, const char *format,
                           const char *bitmap, vmsh_error **err)
{
    if (access(path, R_OK) < 0)
        return vmsh_error_set(err, -errno, "cannot read image %s: %s", path, strerror(errno));
    _cleanup_free_ char *fmt = NULL, *ctx = NULL, *bm = NULL;
    if ((format && asprintf(&fmt, "--format=%s", format) < 0) ||
        (bitmap && (asprintf(&ctx, "qemu:dirty-bitmap:%s", bitmap) < 0 ||
                    asprintf(&bm, "--bitmap=%s", bitmap) < 0))) {
        fmt = ctx = bm = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    nbd_src *s = nbd_src_new(path, ctx, err);
    if (!s)
        return -ENOMEM;
    /* --shared=1: only we connect; --read-only: the image is never changed;
     * no cache option: the page cache serves repeated backups. --bitmap
     * exports a persistent dirty bitmap of the image: QEMU refuses one
     * that is inconsistent (in use when its QEMU stopped). */
    char *argv[8];
    int i = 0;
    argv[i++] = (char *)"qemu-nbd";
    argv[i++] = (char *)"--read-only";
    argv[i++] = (char *)"--shared=1";
    if (fmt)
        argv[i++] = fmt;
    if (bm)
        argv[i++] = bm;
    argv[i++] = (char *)path;
    argv[i] = NULL;
    if (nbd_connect_systemd_socket_activation(s->h, argv) == -1) {
        int rc =
            vmsh_error_set(err, -EINVAL,
                           "QEMU cannot open %s%s%s%s%s: %s (is qemu-nbd installed, and is the "
                           "format right?)",
                           path, format ? " as " : "", format ? format : "",
                           bitmap ? " with bitmap " : "", bitmap ? bitmap : "", nbd_get_error());
        nbd_src_free(s);
        return rc;
    }
    return finish(out, s, bitmap ? &qemu_dirty_ops : &qemu_ops, err);
}

int vmsh_source_open_qemu_image(vmsh_source **out, const char *path, const char *format,
                                vmsh_error **err)
{
    return open_qemu_image(out, path, format, NULL, err);
}

int vmsh_source_open_qemu_image_bitmap(vmsh_source **out, const char *path, const char *format,
                                       const char *bitmap, vmsh_error **err)
{
    return open_qemu_image(out, path, format, bitmap, err);
}
