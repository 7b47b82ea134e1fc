/* metadata.c - the writer metadata document (include/vmshadow/coord/metadata.h,
 * docs/formats/writer-metadata.md). */
#include <vmshadow/coord/json.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/util/mem.h>

#include "jsonutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vmsh_file {
    char *name, *kind, *path;
    int64_t size;
    vmsh_source_type source;
    char *src_path, *src_format, *src_socket, *src_export;
    struct json_object *stored;
    uint64_t bytes_read, bytes_stored;
    /* typed (issue 21): the writer's plan, and the stored record's reading */
    bool has_plan;
    vmsh_disk_plan plan; /* strings owned */
    vmsh_read_mode read;
    char *read_name, *read_reason;
    int64_t stored_bytes_read;
    vmsh_restore_status restore;
    char *restored_path, *restore_error;
};

typedef struct excluded {
    char *name, *reason;
} excluded;

struct vmsh_component {
    char *name, *method, *reason, *state_before, *state_after;
    excluded *excl;
    size_t n_excl;
    struct json_object **net;
    size_t n_net;
    struct json_object *extra;
    bool selected;
    vmsh_file **files;
    size_t n_files;
};

struct vmsh_metadata {
    char *writer_id, *writer_name;
    vmsh_component **comps;
    size_t n_comps;
};

static const char *const file_kinds[] = {"disk",        "config", "nvram", "tpm",
                                         "saved-state", "other",  NULL};

/* Replaces *dst with a copy of src (NULL allowed). */
static int set_str(char **dst, const char *src)
{
    char *n = NULL;
    if (src && !(n = strdup(src)))
        return -ENOMEM;
    free(*dst);
    *dst = n;
    return 0;
}

static void file_free(vmsh_file *f)
{
    if (!f)
        return;
    free(f->name);
    free(f->kind);
    free(f->path);
    free(f->src_path);
    free(f->src_format);
    free(f->src_socket);
    free(f->src_export);
    json_object_put(f->stored);
    vmsh_file_set_plan(f, NULL);
    free(f->read_name);
    free(f->read_reason);
    free(f->restored_path);
    free(f->restore_error);
    free(f);
}

static void component_free(vmsh_component *c)
{
    if (!c)
        return;
    free(c->name);
    free(c->method);
    free(c->reason);
    free(c->state_before);
    free(c->state_after);
    for (size_t i = 0; i < c->n_excl; i++) {
        free(c->excl[i].name);
        free(c->excl[i].reason);
    }
    free(c->excl);
    for (size_t i = 0; i < c->n_net; i++)
        json_object_put(c->net[i]);
    free(c->net);
    json_object_put(c->extra);
    for (size_t i = 0; i < c->n_files; i++)
        file_free(c->files[i]);
    free(c->files);
    free(c);
}

void vmsh_metadata_free(vmsh_metadata *md)
{
    if (!md)
        return;
    free(md->writer_id);
    free(md->writer_name);
    for (size_t i = 0; i < md->n_comps; i++)
        component_free(md->comps[i]);
    free(md->comps);
    free(md);
}

int vmsh_metadata_new(vmsh_metadata **out, const char *writer_id, const char *writer_name,
                      vmsh_error **err)
{
    vmsh_metadata *md = calloc(1, sizeof(*md));
    if (!md || set_str(&md->writer_id, writer_id ? writer_id : "") < 0 ||
        set_str(&md->writer_name, writer_name ? writer_name : "") < 0) {
        vmsh_metadata_free(md);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = md;
    return 0;
}

const char *vmsh_metadata_writer_id(const vmsh_metadata *md)
{
    return md->writer_id;
}

const char *vmsh_metadata_writer_name(const vmsh_metadata *md)
{
    return md->writer_name;
}

int vmsh_metadata_add_component(vmsh_metadata *md, const char *name, vmsh_component **out,
                                vmsh_error **err)
{
    if (!name || !*name)
        return vmsh_error_set(err, -EINVAL, "writer %s: a component needs a name", md->writer_name);
    if (vmsh_metadata_find_component(md, name))
        return vmsh_error_set(err, -EEXIST, "writer %s: component %s is described twice",
                              md->writer_name, name);
    vmsh_component **a = vmsh_realloc_array(md->comps, md->n_comps + 1, sizeof(*a));
    if (!a)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    md->comps = a;
    vmsh_component *c = calloc(1, sizeof(*c));
    if (!c || set_str(&c->name, name) < 0) {
        component_free(c);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    c->selected = true;
    md->comps[md->n_comps++] = c;
    if (out)
        *out = c;
    return 0;
}

size_t vmsh_metadata_component_count(const vmsh_metadata *md)
{
    return md->n_comps;
}

vmsh_component *vmsh_metadata_component(const vmsh_metadata *md, size_t i)
{
    return i < md->n_comps ? md->comps[i] : NULL;
}

vmsh_component *vmsh_metadata_find_component(const vmsh_metadata *md, const char *name)
{
    for (size_t i = 0; i < md->n_comps; i++)
        if (strcmp(md->comps[i]->name, name) == 0)
            return md->comps[i];
    return NULL;
}

const char *vmsh_component_name(const vmsh_component *c)
{
    return c->name;
}

int vmsh_component_set_method(vmsh_component *c, const char *method, const char *reason)
{
    if (set_str(&c->method, method) < 0 || set_str(&c->reason, reason) < 0)
        return -ENOMEM;
    return 0;
}

const char *vmsh_component_method(const vmsh_component *c)
{
    return c->method;
}

const char *vmsh_component_reason(const vmsh_component *c)
{
    return c->reason;
}

int vmsh_component_set_states(vmsh_component *c, const char *before, const char *after)
{
    if (set_str(&c->state_before, before) < 0 || set_str(&c->state_after, after) < 0)
        return -ENOMEM;
    return 0;
}

const char *vmsh_component_state_before(const vmsh_component *c)
{
    return c->state_before;
}

const char *vmsh_component_state_after(const vmsh_component *c)
{
    return c->state_after;
}

int vmsh_component_add_excluded(vmsh_component *c, const char *name, const char *reason)
{
    excluded *a = vmsh_realloc_array(c->excl, c->n_excl + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    c->excl = a;
    excluded e = {0};
    if (set_str(&e.name, name ? name : "") < 0 || set_str(&e.reason, reason ? reason : "") < 0) {
        free(e.name);
        free(e.reason);
        return -ENOMEM;
    }
    c->excl[c->n_excl++] = e;
    return 0;
}

size_t vmsh_component_excluded_count(const vmsh_component *c)
{
    return c->n_excl;
}

const char *vmsh_component_excluded_name(const vmsh_component *c, size_t i)
{
    return i < c->n_excl ? c->excl[i].name : NULL;
}

const char *vmsh_component_excluded_reason(const vmsh_component *c, size_t i)
{
    return i < c->n_excl ? c->excl[i].reason : NULL;
}

int vmsh_component_add_network(vmsh_component *c, struct json_object *iface)
{
    if (!iface)
        return -EINVAL;
    struct json_object **a = vmsh_realloc_array(c->net, c->n_net + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    c->net = a;
    c->net[c->n_net++] = json_object_get(iface);
    return 0;
}

size_t vmsh_component_network_count(const vmsh_component *c)
{
    return c->n_net;
}

struct json_object *vmsh_component_network(const vmsh_component *c, size_t i)
{
    return i < c->n_net ? c->net[i] : NULL;
}

void vmsh_component_set_extra(vmsh_component *c, struct json_object *extra)
{
    json_object_put(c->extra);
    c->extra = extra ? json_object_get(extra) : NULL;
}

struct json_object *vmsh_component_extra(const vmsh_component *c)
{
    return c->extra;
}

void vmsh_component_set_selected(vmsh_component *c, bool selected)
{
    c->selected = selected;
}

bool vmsh_component_selected(const vmsh_component *c)
{
    return c->selected;
}

bool vmsh_file_kind_is_known(const char *kind)
{
    for (size_t i = 0; kind && file_kinds[i]; i++)
        if (strcmp(kind, file_kinds[i]) == 0)
            return true;
    return false;
}

int vmsh_component_add_file(vmsh_component *c, const char *name, const char *kind, vmsh_file **out,
                            vmsh_error **err)
{
    if (!name || !*name)
        return vmsh_error_set(err, -EINVAL, "component %s: a file needs a name", c->name);
    if (!vmsh_file_kind_is_known(kind))
        return vmsh_error_set(err, -EINVAL,
                              "component %s: file %s has unknown kind \"%s\" (known: disk, "
                              "config, nvram, tpm, saved-state, other)",
                              c->name, name, kind ? kind : "");
    if (vmsh_component_find_file(c, name))
        return vmsh_error_set(err, -EEXIST, "component %s: file %s is described twice", c->name,
                              name);
    vmsh_file **a = vmsh_realloc_array(c->files, c->n_files + 1, sizeof(*a));
    if (!a)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    c->files = a;
    vmsh_file *f = calloc(1, sizeof(*f));
    if (!f || set_str(&f->name, name) < 0 || set_str(&f->kind, kind) < 0) {
        file_free(f);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    f->size = -1;
    f->stored_bytes_read = -1;
    c->files[c->n_files++] = f;
    if (out)
        *out = f;
    return 0;
}

size_t vmsh_component_file_count(const vmsh_component *c)
{
    return c->n_files;
}

vmsh_file *vmsh_component_file(const vmsh_component *c, size_t i)
{
    return i < c->n_files ? c->files[i] : NULL;
}

vmsh_file *vmsh_component_find_file(const vmsh_component *c, const char *name)
{
    for (size_t i = 0; i < c->n_files; i++)
        if (strcmp(c->files[i]->name, name) == 0)
            return c->files[i];
    return NULL;
}

const char *vmsh_file_name(const vmsh_file *f)
{
    return f->name;
}

const char *vmsh_file_kind(const vmsh_file *f)
{
    return f->kind;
}

int vmsh_file_set_path(vmsh_file *f, const char *path)
{
    return set_str(&f->path, path);
}

const char *vmsh_file_path(const vmsh_file *f)
{
    return f->path;
}

void vmsh_file_set_size(vmsh_file *f, int64_t size)
{
    f->size = size < 0 ? -1 : size;
}

int64_t vmsh_file_size(const vmsh_file *f)
{
    return f->size;
}

int vmsh_file_set_source_file(vmsh_file *f, const char *path, const char *format)
{
    if (!path)
        return -EINVAL;
    if (set_str(&f->src_path, path) < 0 || set_str(&f->src_format, format) < 0)
        return -ENOMEM;
    set_str(&f->src_socket, NULL);
    set_str(&f->src_export, NULL);
    f->source = VMSH_SOURCE_FILE;
    return 0;
}

int vmsh_file_set_source_nbd(vmsh_file *f, const char *socket, const char *export_name)
{
    if (!socket)
        return -EINVAL;
    if (set_str(&f->src_socket, socket) < 0 ||
        set_str(&f->src_export, export_name ? export_name : "") < 0)
        return -ENOMEM;
    set_str(&f->src_path, NULL);
    set_str(&f->src_format, NULL);
    f->source = VMSH_SOURCE_NBD;
    return 0;
}

vmsh_source_type vmsh_file_source_type(const vmsh_file *f)
{
    return f->source;
}

const char *vmsh_file_source_path(const vmsh_file *f)
{
    return f->src_path;
}

const char *vmsh_file_source_format(const vmsh_file *f)
{
    return f->src_format;
}

const char *vmsh_file_source_socket(const vmsh_file *f)
{
    return f->src_socket;
}

const char *vmsh_file_source_export(const vmsh_file *f)
{
    return f->src_export;
}

static vmsh_read_mode mode_of(const char *s)
{
    return !s                              ? VMSH_READ_UNPLANNED
           : strcmp(s, "incremental") == 0 ? VMSH_READ_INCREMENTAL
                                           : VMSH_READ_FULL;
}

static const char *mode_name(vmsh_read_mode m)
{
    return m == VMSH_READ_INCREMENTAL ? "incremental" : m == VMSH_READ_FULL ? "full" : NULL;
}

void vmsh_file_set_stored(vmsh_file *f, struct json_object *stored, uint64_t bytes_read,
                          uint64_t bytes_stored)
{
    json_object_put(f->stored);
    f->stored = stored ? json_object_get(stored) : NULL;
    f->bytes_read = bytes_read;
    f->bytes_stored = bytes_stored;
    /* a parsed document's record, read once here for the document's summary */
    struct json_object *br = NULL;
    free(f->read_name);
    free(f->read_reason);
    f->read = mode_of(vmsh_json_str(stored, "read"));
    f->read_name = vmsh_json_str(stored, "read") ? strdup(vmsh_json_str(stored, "read")) : NULL;
    f->read_reason =
        vmsh_json_str(stored, "read_reason") ? strdup(vmsh_json_str(stored, "read_reason")) : NULL;
    f->stored_bytes_read = stored && json_object_object_get_ex(stored, "bytes_read", &br) &&
                                   json_object_is_type(br, json_type_int)
                               ? json_object_get_int64(br)
                               : -1;
}

int vmsh_file_set_stored_record(vmsh_file *f, const vmsh_file_stored_record *s)
{
    json_object *o = json_object_new_object();
    if (!o)
        return -ENOMEM;
    int bad =
        json_object_object_add(o, "file", s->file ? json_object_new_string(s->file) : NULL) ||
        json_object_object_add(o, "size", json_object_new_int64((int64_t)s->size)) ||
        json_object_object_add(o, "bytes_stored",
                               json_object_new_int64((int64_t)s->bytes_stored)) ||
        json_object_object_add(o, "new_chunks", json_object_new_int64((int64_t)s->new_chunks)) ||
        json_object_object_add(o, "bytes_read", json_object_new_int64((int64_t)s->bytes_read));
    if (!bad && s->read != VMSH_READ_UNPLANNED) {
        /* issue 7: how the disk was read, and why */
        bad =
            json_object_object_add(o, "read", json_object_new_string(mode_name(s->read))) ||
            json_object_object_add(
                o, "read_reason", s->read_reason ? json_object_new_string(s->read_reason) : NULL) ||
            (s->base && json_object_object_add(o, "base", json_object_new_string(s->base))) ||
            json_object_object_add(o, "base_chunks",
                                   json_object_new_int64((int64_t)s->base_chunks));
    }
    if (!bad)
        vmsh_file_set_stored(f, o, s->bytes_read, s->bytes_stored);
    json_object_put(o);
    return bad ? -ENOMEM : 0;
}

vmsh_read_mode vmsh_file_read_mode(const vmsh_file *f)
{
    return f->read;
}

const char *vmsh_file_read_name(const vmsh_file *f)
{
    return f->read_name;
}

const char *vmsh_file_read_reason(const vmsh_file *f)
{
    return f->read_reason;
}

int64_t vmsh_file_stored_bytes_read(const vmsh_file *f)
{
    return f->stored_bytes_read;
}

int vmsh_file_set_plan(vmsh_file *f, const vmsh_disk_plan *plan)
{
    free((char *)f->plan.reason);
    free((char *)f->plan.base_backup);
    free((char *)f->plan.bitmap);
    free((char *)f->plan.dirty_context);
    memset(&f->plan, 0, sizeof(f->plan));
    f->has_plan = false;
    if (!plan)
        return 0;
    f->has_plan = true;
    f->plan.mode = plan->mode;
#define DUP(m)                                                                                     \
    if (plan->m && !(f->plan.m = strdup(plan->m)))                                                 \
        return -ENOMEM;
    DUP(reason)
    DUP(base_backup)
    DUP(bitmap)
    DUP(dirty_context)
#undef DUP
    return 0;
}

const vmsh_disk_plan *vmsh_file_plan(const vmsh_file *f)
{
    return f->has_plan ? &f->plan : NULL;
}

struct json_object *vmsh_file_stored(const vmsh_file *f)
{
    return f->stored;
}

uint64_t vmsh_file_bytes_read(const vmsh_file *f)
{
    return f->bytes_read;
}

uint64_t vmsh_file_bytes_stored(const vmsh_file *f)
{
    return f->bytes_stored;
}

int vmsh_file_set_restored(vmsh_file *f, vmsh_restore_status status, const char *path,
                           const char *error)
{
    if (set_str(&f->restored_path, path) < 0 || set_str(&f->restore_error, error) < 0)
        return -ENOMEM;
    f->restore = status;
    return 0;
}

vmsh_restore_status vmsh_file_restore_status(const vmsh_file *f)
{
    return f->restore;
}

const char *vmsh_file_restored_path(const vmsh_file *f)
{
    return f->restored_path;
}

const char *vmsh_file_restore_error(const vmsh_file *f)
{
    return f->restore_error;
}

/* ---- JSON ---- */

static int file_to_json(const vmsh_file *f, bool with_stored, struct json_object **out)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return -ENOMEM;
    int r = 0;
    r |= vmsh_json_add_str(o, "name", f->name);
    r |= vmsh_json_add_str(o, "kind", f->kind);
    if (f->path)
        r |= vmsh_json_add_str(o, "path", f->path);
    if (f->size >= 0)
        r |= json_object_object_add(o, "size", json_object_new_int64(f->size));
    if (f->source != VMSH_SOURCE_NONE) {
        struct json_object *s = json_object_new_object();
        if (!s) {
            json_object_put(o);
            return -ENOMEM;
        }
        if (f->source == VMSH_SOURCE_FILE) {
            r |= vmsh_json_add_str(s, "type", "file");
            r |= vmsh_json_add_str(s, "path", f->src_path);
            if (f->src_format)
                r |= vmsh_json_add_str(s, "format", f->src_format);
        } else {
            r |= vmsh_json_add_str(s, "type", "nbd");
            r |= vmsh_json_add_str(s, "socket", f->src_socket);
            r |= vmsh_json_add_str(s, "export", f->src_export);
        }
        r |= json_object_object_add(o, "source", s);
    }
    if (with_stored && f->stored)
        r |= json_object_object_add(o, "stored", json_object_get(f->stored));
    if (r) {
        json_object_put(o);
        return -ENOMEM;
    }
    *out = o;
    return 0;
}

static int component_to_json(const vmsh_component *c, bool with_stored, struct json_object **out)
{
    struct json_object *o = json_object_new_object();
    struct json_object *files = json_object_new_array();
    struct json_object *excl = json_object_new_array();
    struct json_object *net = json_object_new_array();
    int r = (!o || !files || !excl || !net) ? -1 : 0;
    if (!r) {
        r |= vmsh_json_add_str(o, "name", c->name);
        if (c->method)
            r |= vmsh_json_add_str(o, "method", c->method);
        if (c->reason)
            r |= vmsh_json_add_str(o, "reason", c->reason);
        if (c->state_before)
            r |= vmsh_json_add_str(o, "state_before", c->state_before);
        if (c->state_after)
            r |= vmsh_json_add_str(o, "state_after", c->state_after);
    }
    for (size_t i = 0; !r && i < c->n_files; i++) {
        struct json_object *f = NULL;
        r = file_to_json(c->files[i], with_stored, &f);
        if (!r)
            r = json_object_array_add(files, f);
    }
    for (size_t i = 0; !r && i < c->n_excl; i++) {
        struct json_object *e = json_object_new_object();
        r = !e || vmsh_json_add_str(e, "name", c->excl[i].name) ||
            vmsh_json_add_str(e, "reason", c->excl[i].reason) || json_object_array_add(excl, e);
    }
    for (size_t i = 0; !r && i < c->n_net; i++)
        r = json_object_array_add(net, json_object_get(c->net[i]));
    if (!r) {
        r |= json_object_object_add(o, "files", files);
        files = NULL;
        r |= json_object_object_add(o, "excluded", excl);
        excl = NULL;
        r |= json_object_object_add(o, "network", net);
        net = NULL;
        if (c->extra)
            r |= json_object_object_add(o, "extra", json_object_get(c->extra));
    }
    json_object_put(files);
    json_object_put(excl);
    json_object_put(net);
    if (r) {
        json_object_put(o);
        return -ENOMEM;
    }
    *out = o;
    return 0;
}

int vmsh_metadata_to_json(const vmsh_metadata *md, bool with_stored, struct json_object **out,
                          vmsh_error **err)
{
    struct json_object *o = json_object_new_object();
    struct json_object *w = json_object_new_object();
    struct json_object *comps = json_object_new_array();
    int r = (!o || !w || !comps) ? -1 : 0;
    if (!r)
        r = json_object_object_add(o, "version", json_object_new_int(VMSH_METADATA_VERSION)) ||
            vmsh_json_add_str(w, "id", md->writer_id) ||
            vmsh_json_add_str(w, "name", md->writer_name);
    if (!r) {
        r = json_object_object_add(o, "writer", w);
        w = NULL;
    }
    for (size_t i = 0; !r && i < md->n_comps; i++) {
        struct json_object *c = NULL;
        r = component_to_json(md->comps[i], with_stored, &c);
        if (!r)
            r = json_object_array_add(comps, c);
    }
    if (!r) {
        r = json_object_object_add(o, "components", comps);
        comps = NULL;
    }
    json_object_put(w);
    json_object_put(comps);
    if (r) {
        json_object_put(o);
        return vmsh_error_set(err, -ENOMEM, "out of memory building writer metadata");
    }
    *out = o;
    return 0;
}

static int file_from_json(vmsh_component *c, struct json_object *jf, const char *where,
                          vmsh_error **err)
{
    const char *name, *kind, *path = NULL;
    int r;
    if ((r = vmsh_json_get_str(jf, "name", true, &name, where, err)) < 0 ||
        (r = vmsh_json_get_str(jf, "kind", true, &kind, where, err)) < 0 ||
        (r = vmsh_json_get_str(jf, "path", false, &path, where, err)) < 0)
        return r;
    if (!vmsh_file_kind_is_known(kind))
        kind = "other"; /* a newer minor kind: keep the file, as "other" */
    vmsh_file *f = NULL;
    if ((r = vmsh_component_add_file(c, name, kind, &f, err)) < 0) {
        if (r == -ENOMEM)
            return r;
        vmsh_error_prefix(err, "%s", where);
        return -EBADMSG;
    }
    if (path && vmsh_file_set_path(f, path) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int64_t size = -1;
    if ((r = vmsh_json_get_int64(jf, "size", false, &size, where, err)) < 0)
        return r;
    if (size < -1)
        return vmsh_error_set(err, -EBADMSG, "%s: file %s has a negative size", where, name);
    vmsh_file_set_size(f, size);
    struct json_object *src = NULL;
    if (json_object_object_get_ex(jf, "source", &src)) {
        const char *type, *a = NULL, *b = NULL;
        if (!json_object_is_type(src, json_type_object))
            return vmsh_error_set(err, -EBADMSG, "%s: file %s: \"source\" is not an object", where,
                                  name);
        if ((r = vmsh_json_get_str(src, "type", true, &type, where, err)) < 0)
            return r;
        if (strcmp(type, "file") == 0) {
            if ((r = vmsh_json_get_str(src, "path", true, &a, where, err)) < 0 ||
                (r = vmsh_json_get_str(src, "format", false, &b, where, err)) < 0)
                return r;
            if (vmsh_file_set_source_file(f, a, b) < 0)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
        } else if (strcmp(type, "nbd") == 0) {
            if ((r = vmsh_json_get_str(src, "socket", true, &a, where, err)) < 0 ||
                (r = vmsh_json_get_str(src, "export", true, &b, where, err)) < 0)
                return r;
            if (vmsh_file_set_source_nbd(f, a, b) < 0)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
        } else {
            return vmsh_error_set(err, -EBADMSG, "%s: file %s: unknown source type \"%s\"", where,
                                  name, type);
        }
    }
    struct json_object *stored = NULL;
    if (json_object_object_get_ex(jf, "stored", &stored) && stored)
        vmsh_file_set_stored(f, stored, 0, 0);
    return 0;
}

static int component_from_json(vmsh_metadata *md, struct json_object *jc, vmsh_error **err)
{
    const char *name, *s1 = NULL, *s2 = NULL;
    int r;
    if ((r = vmsh_json_get_str(jc, "name", true, &name, "component", err)) < 0)
        return r;
    _cleanup_free_ char *where = NULL;
    if (asprintf(&where, "component %s", name) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_component *c = NULL;
    if ((r = vmsh_metadata_add_component(md, name, &c, err)) < 0)
        return r == -ENOMEM ? r : -EBADMSG;
    if ((r = vmsh_json_get_str(jc, "method", false, &s1, where, err)) < 0 ||
        (r = vmsh_json_get_str(jc, "reason", false, &s2, where, err)) < 0)
        return r;
    if (vmsh_component_set_method(c, s1, s2) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s1 = s2 = NULL;
    if ((r = vmsh_json_get_str(jc, "state_before", false, &s1, where, err)) < 0 ||
        (r = vmsh_json_get_str(jc, "state_after", false, &s2, where, err)) < 0)
        return r;
    if (vmsh_component_set_states(c, s1, s2) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    struct json_object *a;
    if ((r = vmsh_json_get_array(jc, "files", false, &a, where, err)) < 0)
        return r;
    for (size_t i = 0; a && i < json_object_array_length(a); i++) {
        struct json_object *jf = json_object_array_get_idx(a, i);
        if (!json_object_is_type(jf, json_type_object))
            return vmsh_error_set(err, -EBADMSG, "%s: files[%zu] is not an object", where, i);
        if ((r = file_from_json(c, jf, where, err)) < 0)
            return r;
    }
    if ((r = vmsh_json_get_array(jc, "excluded", false, &a, where, err)) < 0)
        return r;
    for (size_t i = 0; a && i < json_object_array_length(a); i++) {
        struct json_object *je = json_object_array_get_idx(a, i);
        const char *en, *er;
        if ((r = vmsh_json_get_str(je, "name", true, &en, where, err)) < 0 ||
            (r = vmsh_json_get_str(je, "reason", true, &er, where, err)) < 0)
            return r;
        if (vmsh_component_add_excluded(c, en, er) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if ((r = vmsh_json_get_array(jc, "network", false, &a, where, err)) < 0)
        return r;
    for (size_t i = 0; a && i < json_object_array_length(a); i++) {
        struct json_object *jn = json_object_array_get_idx(a, i);
        if (!json_object_is_type(jn, json_type_object))
            return vmsh_error_set(err, -EBADMSG, "%s: network[%zu] is not an object", where, i);
        if (vmsh_component_add_network(c, jn) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    struct json_object *extra = NULL;
    if (json_object_object_get_ex(jc, "extra", &extra) && extra)
        vmsh_component_set_extra(c, extra);
    return 0;
}

int vmsh_metadata_from_json(struct json_object *doc, vmsh_metadata **out, vmsh_error **err)
{
    int r = vmsh_json_check_version(doc, VMSH_METADATA_VERSION, "writer metadata", err);
    if (r < 0)
        return r;
    struct json_object *w;
    if (!json_object_object_get_ex(doc, "writer", &w) || !json_object_is_type(w, json_type_object))
        return vmsh_error_set(err, -EBADMSG, "writer metadata: \"writer\" is missing");
    const char *id, *name;
    if ((r = vmsh_json_get_str(w, "id", true, &id, "writer metadata", err)) < 0 ||
        (r = vmsh_json_get_str(w, "name", true, &name, "writer metadata", err)) < 0)
        return r;
    vmsh_metadata *md = NULL;
    if ((r = vmsh_metadata_new(&md, id, name, err)) < 0)
        return r;
    struct json_object *comps;
    if ((r = vmsh_json_get_array(doc, "components", true, &comps, "writer metadata", err)) < 0)
        goto fail;
    for (size_t i = 0; i < json_object_array_length(comps); i++) {
        struct json_object *jc = json_object_array_get_idx(comps, i);
        if (!json_object_is_type(jc, json_type_object)) {
            r = vmsh_error_set(err, -EBADMSG, "writer metadata: components[%zu] is not an object",
                               i);
            goto fail;
        }
        if ((r = component_from_json(md, jc, err)) < 0)
            goto fail;
    }
    *out = md;
    return 0;
fail:
    vmsh_metadata_free(md);
    if (r != -ENOMEM)
        vmsh_error_prefix(err, "writer %s", name);
    return r == -ENOMEM ? r : -EBADMSG;
}
