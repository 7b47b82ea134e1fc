/* object.c - the self-checking envelope of index and manifest files
 * (docs/formats/repository.md, "Object envelope"). */
#include "internal.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char obj_magic[8] = {'V', 'M', 'S', 'H', 'O', 'B', 'J', '1'};

#define AAD_MAX (OBJ_HEADER_LEN + 64 + 80)

/* The additional data of an encrypted object: its header, and from version
 * 2 on "vmshadow-object-v2:" + kind + ":" + name, name being the file's
 * (an index's content ID, a manifest's backup ID). An object copied over
 * another then fails authentication. Returns its length. */
static size_t object_aad(const vmsh_repo *r, const char *path, const uint8_t *hdr, uint16_t type,
                         uint8_t aad[AAD_MAX])
{
    memcpy(aad, hdr, OBJ_HEADER_LEN);
    if (r->version < 2)
        return OBJ_HEADER_LEN;
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    int n = snprintf((char *)aad + OBJ_HEADER_LEN, AAD_MAX - OBJ_HEADER_LEN,
                     "vmshadow-object-v2:%s:%.64s", type == OBJ_INDEX ? "index" : "manifest", name);
    return OBJ_HEADER_LEN + (n < 0 ? 0 : (size_t)n);
}

static void put_header(const vmsh_repo *r, uint8_t *buf, uint16_t type, bool enc, size_t stored)
{
    memcpy(buf, obj_magic, 8);
    le16_put(buf + 8, (uint16_t)r->version);
    le16_put(buf + 10, type);
    le32_put(buf + 12, enc ? 1 : 0);
    le64_put(buf + 16, stored);
}

static int too_large(const char *path, size_t stored, vmsh_error **err)
{
    return vmsh_error_set(err, -EFBIG, "object %s would be too large (%zu bytes)", path, stored);
}

/* The header and checksum around a payload already at buf + OBJ_HEADER_LEN
 * (`stored` bytes, sealed when encrypted), then the file. */
static int finish_write(vmsh_repo *r, const char *path, uint16_t type, uint8_t *buf, size_t stored,
                        vmsh_error **err)
{
    put_header(r, buf, type, r->keys.encrypted, stored);
    crypto_sha256(buf, OBJ_HEADER_LEN + stored, buf + OBJ_HEADER_LEN + stored);
    /* the store's atomic put makes the fan-out directory too */
    return r->store->ops->put(r->store, repo_rel(r, path), buf, OBJ_HEADER_LEN + stored + 32, err);
}

static int write_with(vmsh_repo *r, crypto_ctx *c, const char *path, uint16_t type,
                      const void *payload, size_t len, vmsh_error **err)
{
    bool enc = r->keys.encrypted;
    size_t stored = len + (enc ? GCM_OVERHEAD : 0);
    if (stored > OBJ_MAX_PAYLOAD)
        return too_large(path, stored, err);
    _cleanup_free_ uint8_t *buf = malloc(OBJ_HEADER_LEN + stored + 32);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (enc) {
        put_header(r, buf, type, true, stored);
        uint8_t aad[AAD_MAX];
        size_t aad_len = object_aad(r, path, buf, type, aad);
        if (crypto_seal(c, payload, len, aad, aad_len, buf + OBJ_HEADER_LEN) < 0)
            return vmsh_error_set(err, -EIO, "cannot encrypt %s", path);
    } else if (len) {
        memcpy(buf + OBJ_HEADER_LEN, payload, len);
    }
    return finish_write(r, path, type, buf, stored, err);
}

int object_write(vmsh_repo *r, const char *path, uint16_t type, const void *payload, size_t len,
                 vmsh_error **err)
{
    return write_with(r, r->crypto, path, type, payload, len, err);
}

uint8_t *object_buf_new(size_t len)
{
    return len > SIZE_MAX - OBJ_HEADER_LEN - 32 ? NULL : malloc(OBJ_HEADER_LEN + len + 32);
}

int object_write_buf(vmsh_repo *r, crypto_ctx *c, const char *path, uint16_t type, uint8_t *buf,
                     size_t len, vmsh_error **err)
{
    if (r->keys.encrypted) /* sealed into a buffer of its own */
        return write_with(r, c, path, type, buf + OBJ_HEADER_LEN, len, err);
    if (len > OBJ_MAX_PAYLOAD)
        return too_large(path, len, err);
    return finish_write(r, path, type, buf, len, err);
}

int object_read(vmsh_repo *r, const char *path, uint16_t type, uint8_t **payload, size_t *len,
                vmsh_error **err)
{
    _cleanup_free_ char *buf = NULL;
    size_t n = 0;
    vmsh_error *e = NULL;
    int rc = r->store->ops->get(r->store, repo_rel(r, path), OBJ_HEADER_LEN + OBJ_MAX_PAYLOAD + 32,
                                &buf, &n, &e);
    if (rc < 0) {
        if (rc == -EFBIG) {
            vmsh_error_free(e);
            return vmsh_error_set(err, -EBADMSG, "%s is damaged (too large)", path);
        }
        vmsh_error_propagate(err, &e);
        return rc;
    }
    const uint8_t *p = (const uint8_t *)buf;
    if (n < OBJ_HEADER_LEN + 32 || memcmp(p, obj_magic, 8) != 0)
        return vmsh_error_set(err, -EBADMSG, "%s is damaged or truncated (bad header)", path);
    uint64_t stored = le64_get(p + 16);
    /* n ≥ OBJ_HEADER_LEN + 32 above: no wrap */
    if (stored != n - OBJ_HEADER_LEN - 32)
        return vmsh_error_set(err, -EBADMSG, "%s is truncated or damaged (length mismatch)", path);
    uint8_t h[32];
    crypto_sha256(p, OBJ_HEADER_LEN + stored, h);
    if (memcmp(h, p + OBJ_HEADER_LEN + stored, 32) != 0)
        return vmsh_error_set(err, -EBADMSG, "%s is damaged (checksum mismatch)", path);
    uint16_t version = le16_get(p + 8), t = le16_get(p + 10);
    uint32_t flags = le32_get(p + 12);
    if (version < 1 || version > VMSH_REPO_FORMAT_VERSION || flags > 1)
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "%s has format version %u (flags %#x), newer than this vmshadow "
                              "understands (%d); upgrade vmshadow",
                              path, version, flags, VMSH_REPO_FORMAT_VERSION);
    /* A repository holds objects of its own version only: an older
     * envelope in a version 2 repository would escape the name binding. */
    if (version != r->version)
        return vmsh_error_set(err, -EBADMSG,
                              "%s has envelope version %u in a version %d repository: it comes "
                              "from elsewhere or the config's version was altered; refusing",
                              path, version, r->version);
    if (t != type)
        return vmsh_error_set(err, -EBADMSG, "%s has type %u, expected %u (damaged)", path, t,
                              type);
    if (flags == 1 && !r->keys.encrypted)
        return vmsh_error_set(err, -EBADMSG,
                              "%s is encrypted but the repository's config says unencrypted: the "
                              "config was altered (encryption removed) or the object comes from "
                              "another repository; refusing",
                              path);
    if (flags == 0 && r->keys.encrypted)
        return vmsh_error_set(err, -EBADMSG,
                              "%s is not encrypted in an encrypted repository: it cannot be "
                              "authenticated (planted or from another repository); refusing",
                              path);
    uint8_t *out;
    size_t out_len;
    if (flags == 1) {
        if (stored < GCM_OVERHEAD)
            return vmsh_error_set(err, -EBADMSG, "%s is damaged (too short)", path);
        out_len = stored - GCM_OVERHEAD;
        out = malloc(out_len + 1);
        if (!out)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        uint8_t aad[AAD_MAX];
        size_t aad_len = object_aad(r, path, p, type, aad);
        if (crypto_open(r->crypto, p + OBJ_HEADER_LEN, stored, aad, aad_len, out) < 0) {
            free(out);
            return vmsh_error_set(err, -EBADMSG,
                                  "%s fails authentication: damaged, or another object copied "
                                  "over it",
                                  path);
        }
    } else {
        out_len = stored;
        out = malloc(out_len + 1);
        if (!out)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        memcpy(out, p + OBJ_HEADER_LEN, out_len);
    }
    out[out_len] = 0;
    *payload = out;
    *len = out_len;
    return 0;
}
