/* document.c - the backup document (include/vmshadow/coord/document.h,
 * docs/formats/backup-document.md). */
#include <vmshadow/coord/document.h>
#include <vmshadow/coord/json.h>
#include <vmshadow/util/mem.h>

#include "document_priv.h"
#include "jsonutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vmsh_backup_doc {
    struct json_object *json;
    const char *set_id, *started, *completed, *host, *method;
    bool full;
    int64_t freeze_window_ms;
    vmsh_metadata **mds;
    size_t n;
};

/* Issue 7: "incremental" (a disk was read only where it changed) and
 * "disks" ([{name, read, reason, bytes_read}]) from what the requestor
 * recorded for each file (vmsh_file_set_stored_record, or a parsed
 * document's "stored": "read", "read_reason", "bytes_read"). */
static int add_reads(struct json_object *o, const vmsh_component *comp, bool *any_incremental)
{
    struct json_object *disks = json_object_new_array();
    bool incremental = false;
    int bad = !disks;
    for (size_t k = 0; !bad && k < vmsh_component_file_count(comp); k++) {
        const vmsh_file *f = vmsh_component_file(comp, k);
        const char *mode = vmsh_file_read_name(f), *fn = vmsh_file_name(f);
        if (!mode)
            continue;
        struct json_object *d = json_object_new_object();
        int64_t bytes_read = vmsh_file_stored_bytes_read(f) >= 0 ? vmsh_file_stored_bytes_read(f)
                                                                 : (int64_t)vmsh_file_bytes_read(f);
        bad = !d || vmsh_json_add_str(d, "name", strncmp(fn, "disk/", 5) == 0 ? fn + 5 : fn) ||
              vmsh_json_add_str(d, "read", mode) ||
              vmsh_json_add_str(d, "reason", vmsh_file_read_reason(f)) ||
              json_object_object_add(d, "bytes_read", json_object_new_int64(bytes_read));
        if (bad || json_object_array_add(disks, d)) {
            json_object_put(d);
            bad = 1;
        }
        incremental = incremental || strcmp(mode, "incremental") == 0;
    }
    if (bad || json_object_object_add(o, "incremental", json_object_new_boolean(incremental)) ||
        json_object_object_add(o, "disks", disks)) {
        json_object_put(disks);
        return 1;
    }
    *any_incremental = *any_incremental || incremental;
    return 0;
}

/* The "vms" summary: one entry per component of a "vm" writer, the shape of
 * `backup --json` (CLI.md), so that `list` needs no knowledge of writers. */
struct json_object *vmsh_backup_doc_vm_json(const vmsh_component *comp, bool *incremental)
{
    struct json_object *o = json_object_new_object();
    struct json_object *ex = json_object_new_array();
    bool any = false;
    int bad = !o || !ex || vmsh_json_add_str(o, "name", vmsh_component_name(comp)) ||
              vmsh_json_add_str(o, "method", vmsh_component_method(comp)) ||
              vmsh_json_add_str(o, "reason", vmsh_component_reason(comp)) ||
              vmsh_json_add_str(o, "state_before", vmsh_component_state_before(comp)) ||
              vmsh_json_add_str(o, "state_after", vmsh_component_state_after(comp));
    for (size_t k = 0; !bad && k < vmsh_component_excluded_count(comp); k++) {
        struct json_object *x = json_object_new_object();
        bad = !x || vmsh_json_add_str(x, "name", vmsh_component_excluded_name(comp, k)) ||
              vmsh_json_add_str(x, "reason", vmsh_component_excluded_reason(comp, k)) ||
              json_object_array_add(ex, x);
    }
    if (!bad) {
        bad = json_object_object_add(o, "excluded_disks", ex);
        ex = NULL;
    }
    if (!bad)
        bad = add_reads(o, comp, &any);
    json_object_put(ex);
    if (bad) {
        json_object_put(o);
        return NULL;
    }
    if (incremental && any)
        *incremental = true;
    return o;
}

static struct json_object *vms_summary(vmsh_metadata *const *mds, const char *const *kinds,
                                       size_t n, bool *any_incremental)
{
    struct json_object *a = json_object_new_array();
    for (size_t i = 0; a && kinds && i < n; i++) {
        if (!kinds[i] || strcmp(kinds[i], "vm") != 0)
            continue;
        for (size_t c = 0; c < vmsh_metadata_component_count(mds[i]); c++) {
            struct json_object *o =
                vmsh_backup_doc_vm_json(vmsh_metadata_component(mds[i], c), any_incremental);
            if (!o || json_object_array_add(a, o)) {
                json_object_put(o);
                json_object_put(a);
                return NULL;
            }
        }
    }
    return a;
}

int vmsh_backup_doc_build(const vmsh_backup_doc_info *info, vmsh_metadata *const *mds,
                          const char *const *kinds, size_t n, char **out, vmsh_error **err)
{
    struct json_object *o = json_object_new_object();
    struct json_object *req = json_object_new_object();
    struct json_object *targets = json_object_new_array();
    struct json_object *writers = json_object_new_array();
    int bad = !o || !req || !targets || !writers;
    for (size_t i = 0; !bad && i < info->n_targets; i++)
        bad = json_object_array_add(targets, json_object_new_string(info->targets[i]));
    if (!bad) {
        bad = vmsh_json_add_str(req, "method", info->method ? info->method : "auto") ||
              json_object_object_add(req, "full", json_object_new_boolean(info->full)) ||
              json_object_object_add(req, "all", json_object_new_boolean(info->all)) ||
              json_object_object_add(req, "targets", targets);
        targets = NULL;
    }
    if (!bad)
        bad = json_object_object_add(o, "version", json_object_new_int(VMSH_BACKUP_DOC_VERSION)) ||
              vmsh_json_add_str(o, "set_id", info->set_id) ||
              vmsh_json_add_str(o, "started", info->started) ||
              vmsh_json_add_str(o, "completed", info->completed) ||
              vmsh_json_add_str(o, "host", info->host) ||
              vmsh_json_add_str(o, "program", info->program_version) ||
              json_object_object_add(o, "freeze_window_ms",
                                     info->freeze_window_ms < 0
                                         ? NULL
                                         : json_object_new_int64(info->freeze_window_ms)) ||
              json_object_object_add(o, "bytes_read",
                                     json_object_new_int64((int64_t)info->bytes_read)) ||
              json_object_object_add(o, "bytes_stored",
                                     json_object_new_int64((int64_t)info->bytes_stored));
    if (!bad) {
        bad = json_object_object_add(o, "request", req);
        req = NULL;
    }
    if (!bad) {
        bool incremental = false;
        struct json_object *vms = vms_summary(mds, kinds, n, &incremental);
        bad = !vms || json_object_object_add(o, "vms", vms) ||
              json_object_object_add(o, "incremental", json_object_new_boolean(incremental));
    }
    int r = 0;
    for (size_t i = 0; !bad && i < n; i++) {
        struct json_object *m = NULL;
        if ((r = vmsh_metadata_to_json(mds[i], true, &m, err)) < 0)
            break;
        bad = json_object_array_add(writers, m);
    }
    if (!bad && r == 0) {
        bad = json_object_object_add(o, "writers", writers);
        writers = NULL;
    }
    json_object_put(req);
    json_object_put(targets);
    json_object_put(writers);
    const char *text = NULL;
    if (!bad && r == 0)
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                     JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!text || asprintf(out, "%s\n", text) < 0) {
        json_object_put(o);
        return r < 0 ? r : vmsh_error_set(err, -ENOMEM, "out of memory building backup document");
    }
    json_object_put(o);
    return 0;
}

void vmsh_backup_doc_free(vmsh_backup_doc *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        vmsh_metadata_free(d->mds[i]);
    free(d->mds);
    json_object_put(d->json);
    free(d);
}

int vmsh_backup_doc_parse(const char *text, size_t len, vmsh_backup_doc **out, vmsh_error **err)
{
    const char *what = "backup document";
    vmsh_backup_doc *d = calloc(1, sizeof(*d));
    if (!d)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    d->freeze_window_ms = -1;
    int r = vmsh_json_parse(text, len, &d->json, what, err);
    if (r < 0)
        goto fail;
    struct json_object *o = d->json, *req = NULL, *writers;
    if ((r = vmsh_json_check_version(o, VMSH_BACKUP_DOC_VERSION, what, err)) < 0 ||
        (r = vmsh_json_get_str(o, "set_id", true, &d->set_id, what, err)) < 0 ||
        (r = vmsh_json_get_str(o, "started", true, &d->started, what, err)) < 0 ||
        (r = vmsh_json_get_str(o, "completed", true, &d->completed, what, err)) < 0 ||
        (r = vmsh_json_get_str(o, "host", false, &d->host, what, err)) < 0 ||
        (r = vmsh_json_get_int64(o, "freeze_window_ms", false, &d->freeze_window_ms, what, err)) <
            0 ||
        (r = vmsh_json_get_array(o, "writers", true, &writers, what, err)) < 0)
        goto fail;
    if (json_object_object_get_ex(o, "request", &req) && req) {
        if ((r = vmsh_json_get_str(req, "method", false, &d->method, what, err)) < 0 ||
            (r = vmsh_json_get_bool(req, "full", false, &d->full, what, err)) < 0)
            goto fail;
    }
    size_t n = json_object_array_length(writers);
    if (n > 10000) {
        r = vmsh_error_set(err, -EBADMSG, "%s: %zu writers is not plausible", what, n);
        goto fail;
    }
    d->mds = vmsh_calloc_array(n ? n : 1, sizeof(*d->mds));
    if (!d->mds) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if ((r = vmsh_metadata_from_json(json_object_array_get_idx(writers, i), &d->mds[i], err)) <
            0) {
            vmsh_error_prefix(err, "%s", what);
            goto fail;
        }
        d->n++;
    }
    *out = d;
    return 0;
fail:
    vmsh_backup_doc_free(d);
    return r;
}

const char *vmsh_backup_doc_set_id(const vmsh_backup_doc *d)
{
    return d->set_id;
}

const char *vmsh_backup_doc_started(const vmsh_backup_doc *d)
{
    return d->started;
}

const char *vmsh_backup_doc_completed(const vmsh_backup_doc *d)
{
    return d->completed;
}

const char *vmsh_backup_doc_host(const vmsh_backup_doc *d)
{
    return d->host;
}

const char *vmsh_backup_doc_method(const vmsh_backup_doc *d)
{
    return d->method ? d->method : "auto";
}

bool vmsh_backup_doc_full(const vmsh_backup_doc *d)
{
    return d->full;
}

int64_t vmsh_backup_doc_freeze_window_ms(const vmsh_backup_doc *d)
{
    return d->freeze_window_ms;
}

size_t vmsh_backup_doc_writer_count(const vmsh_backup_doc *d)
{
    return d->n;
}

vmsh_metadata *vmsh_backup_doc_writer(const vmsh_backup_doc *d, size_t i)
{
    return i < d->n ? d->mds[i] : NULL;
}

struct json_object *vmsh_backup_doc_json(const vmsh_backup_doc *d)
{
    return d->json;
}
