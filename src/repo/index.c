/* index.c - per-file indexes: size + sorted (chunk number, chunk ID) list
 * (docs/formats/repository.md, "Index payload"). */
#include "internal.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *index_path(const char *repo, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/index/%.2s/%s", repo, name, name) < 0)
        return NULL;
    return p;
}

int index_parse(const uint8_t *p, size_t len, const char *what, vmsh_file_index **out,
                vmsh_error **err)
{
    if (len < INDEX_HEADER_LEN)
        return vmsh_error_set(err, -EBADMSG, "index %s is truncated", what);
    uint32_t cs = le32_get(p);
    uint64_t size = le64_get(p + 8), count = le64_get(p + 16);
    if (cs != CHUNK_SIZE)
        return vmsh_error_set(err, -EBADMSG, "index %s: chunk size %u is not %u", what, cs,
                              CHUNK_SIZE);
    uint64_t nchunks = size / CHUNK_SIZE + (size % CHUNK_SIZE != 0);
    if (count > nchunks || (len - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN != count ||
        (len - INDEX_HEADER_LEN) % INDEX_ENTRY_LEN != 0)
        return vmsh_error_set(err, -EBADMSG, "index %s: entry count does not match its length",
                              what);
    vmsh_file_index *idx = calloc(1, sizeof(*idx));
    if (!idx)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    idx->size = size;
    idx->count = (size_t)count;
    idx->entries = vmsh_calloc_array(count ? count : 1, sizeof(index_entry));
    if (!idx->entries) {
        free(idx);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < count; i++) {
        const uint8_t *e = p + INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
        idx->entries[i].chunk = le64_get(e);
        memcpy(idx->entries[i].id, e + 8, ID_LEN);
        if (idx->entries[i].chunk >= nchunks ||
            (i > 0 && idx->entries[i].chunk <= idx->entries[i - 1].chunk)) {
            vmsh_file_index_free(idx);
            return vmsh_error_set(err, -EBADMSG, "index %s: entry %zu is out of order or range",
                                  what, i);
        }
    }
    *out = idx;
    return 0;
}

size_t index_payload_len(const vmsh_file_index *idx)
{
    return INDEX_HEADER_LEN + idx->count * INDEX_ENTRY_LEN;
}

void index_serialize_into(const vmsh_file_index *idx, uint8_t *p)
{
    memset(p, 0, INDEX_HEADER_LEN);
    le32_put(p, CHUNK_SIZE);
    le64_put(p + 8, idx->size);
    le64_put(p + 16, idx->count);
    for (size_t i = 0; i < idx->count; i++) {
        uint8_t *e = p + INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
        le64_put(e, idx->entries[i].chunk);
        memcpy(e + 8, idx->entries[i].id, ID_LEN);
    }
}

int index_store(vmsh_repo *r, crypto_ctx *c, const vmsh_file_index *idx, char out_name[65],
                vmsh_error **err)
{
    /* Serialized straight into the object's buffer: an index of a 4 GiB
     * disk is 2.6 MB, and a second buffer cost a copy and its page faults. */
    size_t len = index_payload_len(idx);
    _cleanup_free_ uint8_t *buf = object_buf_new(len);
    if (!buf)
        return vmsh_error_set(err, -ENOMEM, "out of memory for an index of %zu bytes", len);
    uint8_t *p = buf + OBJ_HEADER_LEN;
    index_serialize_into(idx, p);
    uint8_t id[ID_LEN];
    if (crypto_chunk_id(c, p, len, id) < 0)
        return vmsh_error_set(err, -EIO, "cannot hash an index");
    vmsh_hex(id, ID_LEN, out_name);
    _cleanup_free_ char *path = index_path(r->path, out_name);
    if (!path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* Content-addressed: an existing object is this one (written once).
     * One older than this backup's session may be garbage that gc's sweep
     * is about to delete (docs/formats/gc.md): written again, it is young. */
    repo_store_stat st = {0};
    if (r->store->ops->stat(r->store, repo_rel(r, path), &st, NULL) == 0) {
        repo_gc_params_t gp;
        repo_gc_params(r, &gp);
        if (!r->backup_pending || st.mtime_ns / 1000000 >= r->session_start_ms + gp.margin_ms)
            return 0;
    }
    return object_write_buf(r, c, path, OBJ_INDEX, buf, len, err);
}

int index_load(vmsh_repo *r, const char *name, vmsh_file_index **out, vmsh_error **err)
{
    _cleanup_free_ char *path = index_path(r->path, name);
    if (!path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ uint8_t *p = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    int rc = object_read(r, path, OBJ_INDEX, &p, &len, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return vmsh_error_set(err, -EBADMSG, "index %s is missing", path);
    }
    if (rc < 0) {
        vmsh_error_propagate(err, &e);
        return rc;
    }
    /* Content-addressed: the name must be the chunk-ID function of the
     * payload, re-checked on every read, so that an index copied over
     * another (or written under a wrong name) is never taken for it. In an
     * encrypted repository the function is keyed: only the key's holder can
     * make a matching pair (docs/formats/repository.md, "Object binding"). */
    uint8_t want[ID_LEN], got[ID_LEN];
    if (vmsh_unhex(name, want, ID_LEN) < 0)
        return vmsh_error_set(err, -EBADMSG, "index name %s is not a content ID", path);
    if (crypto_chunk_id(r->crypto, p, len, got) < 0)
        return vmsh_error_set(err, -EIO, "cannot hash an index");
    if (memcmp(want, got, ID_LEN) != 0)
        return vmsh_error_set(err, -EBADMSG,
                              "index %s does not match its name (content ID): another index was "
                              "copied over it, or it is damaged",
                              path);
    return index_parse(p, len, path, out, err);
}

uint64_t vmsh_file_index_size(const vmsh_file_index *idx)
{
    return idx->size;
}

size_t vmsh_file_index_count(const vmsh_file_index *idx)
{
    return idx->count;
}

void vmsh_file_index_free(vmsh_file_index *idx)
{
    if (!idx)
        return;
    free(idx->entries);
    free(idx);
}

int vmsh_file_index_load(vmsh_file_index **out, vmsh_repo *r, const char *spec, const char *name,
                         vmsh_error **err)
{
    vmsh_backup_info *b = NULL;
    int rc = vmsh_repo_backup_info(r, spec, &b, err);
    if (rc < 0)
        return rc;
    const vmsh_backup_file *f = vmsh_backup_info_file(b, name);
    if (!f) {
        rc = vmsh_error_set(err, -ENOENT, "backup %s has no file named \"%s\"", b->id, name);
        vmsh_backup_info_free(b);
        return rc;
    }
    rc = index_load(r, f->index, out, err);
    if (rc == 0) {
        (*out)->from_repo = r;
        snprintf((*out)->from_backup, sizeof((*out)->from_backup), "%s", b->id);
    }
    if (rc == 0 && (*out)->size != f->size) {
        vmsh_file_index_free(*out);
        *out = NULL;
        rc = vmsh_error_set(err, -EBADMSG,
                            "backup %s, file %s: index size does not match the manifest", b->id,
                            name);
    }
    vmsh_backup_info_free(b);
    return rc;
}
