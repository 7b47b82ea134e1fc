/* vm_incr.c - incremental reads of the VM writer (issue 7): which disks of a
 * VM are read only where they changed, from a libvirt checkpoint's dirty
 * bitmaps, and which are read in full, with the reason.
 *
 * A disk is read incrementally only when all of these hold (chain health):
 *   - the VM uses the guest method (R2): its disks are exported by a pull
 *     backup job, which can export a bitmap; or it is shut off, and the
 *     checkpoint's persistent bitmap in the qcow2 image is consistent in
 *     QEMU's view (`qemu-img info`: not "in-use", which a crash or a kill
 *     leaves, and enabled): the image is read through `qemu-nbd --bitmap`.
 *     The saved-state method (R1) on a running VM reads the images while
 *     the VM writes to overlays: full, with the reason;
 *   - the disk is qcow2 (raw disks carry no bitmap);
 *   - `--full` was not given;
 *   - the repository holds an earlier backup of this VM, and that backup
 *     (the last one of the VM in this repository) recorded the checkpoint it
 *     created, for this repository, this VM UUID and this disk;
 *   - libvirt still has that checkpoint (a restore defines the restored
 *     backup's checkpoint again, with a new empty bitmap in the restored
 *     qcow2: vm_restore.c), and a running VM has not been stopped since (same
 *     domain ID; a restored VM that runs has a new one): a
 *     stop that did not store the bitmaps leaves them incomplete, and once
 *     the VM runs again we cannot tell a clean stop from another;
 *   - libvirt accepts the bitmap when the job starts (it refuses missing or
 *     inconsistent ones: QEMU's own view); if not, the job runs in full at
 *     the same point (pull.c) and PostSnapshot records why.
 * Every backup of a qcow2 disk of a guest-method VM creates a new checkpoint
 * atomically with its job, full read or not, so that the next one can be
 * incremental. libvirt cannot create a checkpoint of a shut-off VM, so a
 * shut-off VM's backup records the checkpoint it read from again: its bitmap
 * holds every change since that checkpoint, a superset of the changes since
 * this backup, so the next backup may read from it too (while the VM stays
 * off; once it runs, its domain ID differs and the next backup is full).
 * The base of an incremental read is the previous backup's index of the
 * file: the new index is complete (no chain to restore).
 */
#include <vmshadow/coord/json.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "vm_writer_private.h"

#define CP_PREFIX "vmshadow-"

int vmsh_vm_writer_set_history(vmsh_writer_ops *ops, const char *repo_id, json_object *last,
                               vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    char *id = repo_id ? strdup(repo_id) : NULL;
    if (repo_id && !id)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    free(w->repo_id);
    w->repo_id = id;
    json_object_put(w->history);
    w->history = last ? json_object_get(last) : NULL;
    return 0;
}

static json_object *member(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

static bool str_eq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static bool array_has(json_object *a, const char *s)
{
    if (!a || !json_object_is_type(a, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(a); i++)
        if (str_eq(json_object_get_string(json_object_array_get_idx(a, i)), s))
            return true;
    return false;
}

/* The extra.disks entry of `target`. */
static json_object *disk_json(const vm_item *it, const char *target)
{
    json_object *disks = member(vmsh_component_extra(it->comp), "disks");
    for (size_t i = 0; disks && i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        if (str_eq(vmsh_json_str(d, "target"), target))
            return d;
    }
    return NULL;
}

/* Why a disk that is not qcow2 is read in full, by what it is stored on
 * (issue 25: the backup document says why, never a silent full read). */
static const char *not_qcow2_reason(json_object *dj)
{
    const char *on =
        vmsh_json_str(dj, "storage") ? vmsh_json_str(dj, "storage") : vmsh_json_str(dj, "kind");
    if (str_eq(on, "block"))
        return "raw block device: only qcow2 images carry dirty bitmaps (libvirt refuses a "
               "checkpoint on a raw disk)";
    if (str_eq(on, "network"))
        return "raw network disk: only qcow2 images carry dirty bitmaps (libvirt refuses a "
               "checkpoint on a raw disk)";
    return "raw disks carry no bitmap";
}

static void set_read(json_object *dj, const char *mode, const char *reason)
{
    if (!dj)
        return;
    json_object_object_add(dj, "read", json_object_new_string(mode));
    json_object_object_add(dj, "read_reason", reason ? json_object_new_string(reason) : NULL);
}

/* Why the VM's last backup's checkpoint cannot be used, or NULL when it can
 * (then *cp is that checkpoint record and *prev the history entry). */
static char *chain_problem(vm_writer *w, vm_item *it, bool running, json_object **prev,
                           json_object **cp)
{
    char *why = NULL;
    *prev = member(w->history, it->name);
    *cp = member(member(*prev, "extra"), "checkpoint");
    const char *backup = vmsh_json_str(*prev, "backup");
    const char *name = vmsh_json_str(*cp, "name");
    const char *uuid = vmsh_json_str(vmsh_component_extra(it->comp), "uuid");
    if (!w->repo_id || !*prev || !backup)
        return strdup("first backup of this VM in this repository");
    if (!*cp || !name) {
        if (asprintf(&why, "the last backup of this VM in this repository (%s) left no checkpoint",
                     backup) < 0)
            why = NULL;
        return why;
    }
    if (!str_eq(vmsh_json_str(*cp, "repo"), w->repo_id)) {
        if (asprintf(&why, "checkpoint %s was made for repository %s, not this one (%s)", name,
                     vmsh_json_str(*cp, "repo") ? vmsh_json_str(*cp, "repo") : "?", w->repo_id) < 0)
            why = NULL;
        return why;
    }
    if (!str_eq(vmsh_json_str(*cp, "vm_uuid"), uuid)) {
        if (asprintf(&why, "the last backup (%s) was of another VM of this name (UUID %s, now %s)",
                     backup, vmsh_json_str(*cp, "vm_uuid") ? vmsh_json_str(*cp, "vm_uuid") : "?",
                     uuid ? uuid : "?") < 0)
            why = NULL;
        return why;
    }
    vmsh_error *e = NULL;
    int r = vmsh_hv_checkpoint_exists(w->hv, it->name, name, &e);
    if (r <= 0) {
        if (asprintf(&why,
                     r == 0 ? "checkpoint %s of the last backup (%s) no longer exists in libvirt "
                              "(deleted, or the VM was restored or defined again)%s"
                            : "checkpoint %s of the last backup (%s) cannot be looked up: %s",
                     name, backup, r == 0 ? "" : e->message) < 0)
            why = NULL;
        vmsh_error_free(e);
        return why;
    }
    if (!running)
        return NULL;
    int id = -1;
    json_object *pid = member(*cp, "domain_id");
    if (vmsh_hv_domain_id(w->hv, it->name, &id, NULL) < 0 || !pid ||
        !json_object_is_type(pid, json_type_int) || json_object_get_int(pid) != id) {
        if (asprintf(&why,
                     "the VM was stopped and started (or restored) since the last backup (%s): "
                     "a stop that did not store the dirty bitmaps (virsh destroy, a crash) "
                     "leaves them incomplete, and it cannot be told apart afterwards",
                     backup) < 0)
            why = NULL;
        return why;
    }
    return NULL;
}

/* Why the persistent bitmap `name` of the qcow2 image `path` cannot be
 * trusted, as QEMU sees it (qemu-img info), or NULL when it can. */
static char *image_bitmap_problem(const char *path, const char *name)
{
    _cleanup_free_ char *text = NULL;
    char *why = NULL;
    vmsh_error *e = NULL;
    if (vmsh_hv_image_info(path, "qcow2", &text, &e) < 0) {
        if (asprintf(&why, "the bitmaps of %s cannot be read: %s", path, e->message) < 0)
            why = NULL;
        vmsh_error_free(e);
        return why;
    }
    json_object *info = json_tokener_parse(text);
    json_object *bitmaps = member(member(member(info, "format-specific"), "data"), "bitmaps");
    json_object *found = NULL;
    for (size_t i = 0; bitmaps && json_object_is_type(bitmaps, json_type_array) &&
                       i < json_object_array_length(bitmaps);
         i++) {
        json_object *b = json_object_array_get_idx(bitmaps, i);
        if (str_eq(vmsh_json_str(b, "name"), name))
            found = b;
    }
    json_object *flags = member(found, "flags");
    int r = 0;
    if (!found)
        r = asprintf(&why, "the image %s holds no bitmap %s", path, name);
    else if (array_has(flags, "in-use"))
        r = asprintf(&why,
                     "bitmap %s in %s is inconsistent: its QEMU did not store it when it stopped "
                     "(killed, crashed, or the host failed)",
                     name, path);
    else if (!array_has(flags, "auto"))
        r = asprintf(&why, "bitmap %s in %s is disabled: it did not record every write", name,
                     path);
    if (r < 0)
        why = NULL;
    json_object_put(info);
    return why;
}

void vmsh_vmw_plan_direct_reads(vm_writer *w, vmsh_set *set, vm_item *it)
{
    const vmsh_set_options *o = vmsh_set_options_of(set);
    json_object *extra = vmsh_component_extra(it->comp);
    json_object *disks = member(extra, "disks");
    bool off = it->prior == VMSH_VM_SHUTOFF;
    json_object *prev = NULL, *cp = NULL;
    /* A shut-off VM: the persistent bitmaps of the last backup's checkpoint,
     * when libvirt still has it and it belongs to this VM and repository. */
    _cleanup_free_ char *vm_why = off ? chain_problem(w, it, false, &prev, &cp) : NULL;
    const char *cp_name = vm_why ? NULL : vmsh_json_str(cp, "name");
    json_object *carried = cp_name ? json_object_new_array() : NULL;
    for (size_t i = 0; disks && i < json_object_array_length(disks); i++) {
        json_object *dj = json_object_array_get_idx(disks, i);
        const char *fmt = vmsh_json_str(dj, "format"), *target = vmsh_json_str(dj, "target");
        _cleanup_free_ char *why = NULL;
        if (!str_eq(fmt, "qcow2")) {
            set_read(dj, "full", not_qcow2_reason(dj));
            continue;
        }
        if (!off) {
            set_read(dj, "full",
                     o->full ? "--full was given"
                             : "saved-state method (R1): the image is read directly while the VM "
                               "writes to an overlay, without a dirty bitmap (incremental reads "
                               "come from the guest method's backup job)");
            continue;
        }
        if (vm_why) {
            set_read(dj, "full", o->full ? "--full was given" : vm_why);
            continue;
        }
        if (!array_has(member(cp, "disks"), target)) {
            if (asprintf(&why, "disk %s has no bitmap in checkpoint %s of the last backup", target,
                         cp_name) < 0)
                why = NULL;
            set_read(dj, "full", why ? why : "no bitmap in the last checkpoint");
            continue;
        }
        if ((why = image_bitmap_problem(vmsh_json_str(dj, "path"), cp_name))) {
            set_read(dj, "full", why);
            continue;
        }
        json_object_array_add(carried, json_object_new_string(target));
        if (o->full) {
            set_read(dj, "full", "--full was given");
            continue;
        }
        _cleanup_free_ char *ctx = NULL;
        if (asprintf(&why,
                     "changes since checkpoint %s of backup %s, from the bitmap in the image "
                     "(the VM is shut off)",
                     cp_name, vmsh_json_str(prev, "backup")) < 0 ||
            asprintf(&ctx, "qemu:dirty-bitmap:%s", cp_name) < 0) {
            set_read(dj, "full", "out of memory");
            continue;
        }
        set_read(dj, "incremental", why);
        json_object_object_add(dj, "base_backup",
                               json_object_new_string(vmsh_json_str(prev, "backup")));
        json_object_object_add(dj, "base_checkpoint", json_object_new_string(cp_name));
        json_object_object_add(dj, "bitmap", json_object_new_string(cp_name));
        json_object_object_add(dj, "dirty_context", json_object_new_string(ctx));
    }
    /* The checkpoint goes on: the next backup may read from it as long as
     * the VM stays off (its domain ID stops a running VM's backup). */
    if (carried && json_object_array_length(carried) > 0) {
        json_object *rec = json_object_new_object();
        json_object_object_foreach(cp, k, v)
        {
            if (strcmp(k, "disks") != 0)
                json_object_object_add(rec, k, json_object_get(v));
        }
        json_object_object_add(rec, "disks", json_object_get(carried));
        json_object_object_add(extra, "checkpoint", rec);
    }
    json_object_put(carried);
}

int vmsh_vmw_plan_job_reads(vm_writer *w, vmsh_set *set, vm_item *it, vmsh_hv_backup_disk *bd,
                            size_t n, char **cp_xml, vmsh_error **err)
{
    *cp_xml = NULL;
    json_object *prev = NULL, *cp = NULL;
    _cleanup_free_ char *vm_why = vmsh_set_options_of(set)->full
                                      ? strdup("--full was given")
                                      : chain_problem(w, it, true, &prev, &cp);
    const char *base_cp = vmsh_json_str(cp, "name"), *base_backup = vmsh_json_str(prev, "backup");
    const char **cp_targets = vmsh_calloc_array(n ? n : 1, sizeof(char *));
    if (!cp_targets)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t n_cp = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *dj = disk_json(it, bd[i].target);
        bd[i].incremental = NULL;
        if (!str_eq(vmsh_json_str(dj, "format"), "qcow2")) {
            set_read(dj, "full", not_qcow2_reason(dj));
            continue;
        }
        cp_targets[n_cp++] = bd[i].target;
        _cleanup_free_ char *why = NULL;
        if (vm_why) {
            set_read(dj, "full", vm_why);
        } else if (!array_has(member(cp, "disks"), bd[i].target)) {
            if (asprintf(&why, "disk %s has no bitmap in checkpoint %s of the last backup",
                         bd[i].target, base_cp) < 0)
                why = NULL;
            set_read(dj, "full", why ? why : "no bitmap in the last checkpoint");
        } else {
            bd[i].incremental = base_cp;
            _cleanup_free_ char *ctx = NULL;
            if (asprintf(&why, "changes since checkpoint %s of backup %s", base_cp, base_backup) <
                    0 ||
                asprintf(&ctx, "qemu:dirty-bitmap:backup-%s", bd[i].target) < 0) {
                free(cp_targets);
                return vmsh_error_set(err, -ENOMEM, "out of memory");
            }
            set_read(dj, "incremental", why);
            json_object_object_add(dj, "base_backup", json_object_new_string(base_backup));
            json_object_object_add(dj, "base_checkpoint", json_object_new_string(base_cp));
            json_object_object_add(dj, "dirty_context", json_object_new_string(ctx));
        }
    }
    int r = 0;
    if (n_cp > 0) {
        int id = -1;
        free(it->new_cp);
        /* named per repository (issue 26, point 5): each repository's
         * backups prune only their own checkpoints (cp_owned) */
        char tag[20] = "";
        if (w->repo_id && strlen(w->repo_id) >= 16)
            snprintf(tag, sizeof(tag), "r%.16s-", w->repo_id);
        if (asprintf(&it->new_cp, CP_PREFIX "%s%s", tag, w->set_id) < 0) {
            it->new_cp = NULL;
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        if (r == 0)
            r = vmsh_hv_domain_id(w->hv, it->name, &id, err);
        if (r == 0)
            r = vmsh_hv_checkpoint_xml(it->new_cp, (const char *const *)it->cp_disks,
                                       it->n_cp_disks, cp_targets, n_cp, cp_xml, err);
        if (r == 0) {
            /* what the next backup checks (chain_problem) */
            json_object *rec = json_object_new_object(), *ds = json_object_new_array();
            json_object_object_add(rec, "name", json_object_new_string(it->new_cp));
            json_object_object_add(rec, "repo",
                                   w->repo_id ? json_object_new_string(w->repo_id) : NULL);
            const char *uuid = vmsh_json_str(vmsh_component_extra(it->comp), "uuid");
            json_object_object_add(rec, "vm_uuid", uuid ? json_object_new_string(uuid) : NULL);
            json_object_object_add(rec, "domain_id", json_object_new_int(id));
            for (size_t i = 0; i < n_cp; i++)
                json_object_array_add(ds, json_object_new_string(cp_targets[i]));
            json_object_object_add(rec, "disks", ds);
            json_object_object_add(vmsh_component_extra(it->comp), "checkpoint", rec);
        }
    }
    free(cp_targets);
    return r;
}

void vmsh_vmw_note_job_fallback(vm_writer *w, vmsh_set *set, vm_item *it)
{
    const char *msg = w->capture->fallback(w->provider, set, it->name);
    json_object *disks = member(vmsh_component_extra(it->comp), "disks");
    if (!msg || !disks)
        return;
    _cleanup_free_ char *why = NULL;
    if (asprintf(&why, "libvirt refused the dirty bitmap (missing or inconsistent): %s", msg) < 0)
        why = NULL;
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *dj = json_object_array_get_idx(disks, i);
        if (str_eq(vmsh_json_str(dj, "read"), "incremental")) {
            set_read(dj, "full", why ? why : "libvirt refused the dirty bitmap");
            json_object_object_del(dj, "base_backup");
            json_object_object_del(dj, "base_checkpoint");
            json_object_object_del(dj, "dirty_context");
        }
    }
}

/* Whether checkpoint `name` is this repository's to delete: one named for
 * it ("vmshadow-r<16 hex of its ID>-<set>"), or one named for none
 * ("vmshadow-<set>", before issue 26). Another repository's stays: its next
 * backup reads from it (issue 26, point 5). */
static bool cp_owned(const char *name, const char *repo_id)
{
    const char *rest = name + strlen(CP_PREFIX);
    bool tagged = rest[0] == 'r' && strspn(rest + 1, "0123456789abcdef") == 16 && rest[17] == '-';
    if (!tagged)
        return true;
    return repo_id && strlen(repo_id) >= 16 && strncmp(rest + 1, repo_id, 16) == 0;
}

/* Deletes the VM's vmshadow checkpoints of this repository but it->new_cp,
 * through `hv`; the outcome goes to it->cp_deleted and it->cp_error. */
static void prune_with(const vmsh_host_ops *host, vmsh_hv *hv, const char *repo_id, vm_item *it)
{
    it->pruned = true;
    vmsh_vm_state st = VMSH_VM_SHUTOFF;
    /* libvirt deletes bitmaps only of a running VM; a shut-off VM keeps
     * its checkpoints until a later backup of it running */
    if (vmsh_host_state(host, hv, it->name, &st, NULL) < 0 || st == VMSH_VM_SHUTOFF)
        return;
    char **names = NULL;
    size_t n = 0;
    vmsh_error *e = NULL;
    int r = vmsh_hv_checkpoint_list(hv, it->name, CP_PREFIX, &names, &n, &e);
    for (size_t i = 0; i < n; i++) {
        if (r == 0 && !str_eq(names[i], it->new_cp) && cp_owned(names[i], repo_id)) {
            /* metadata only when libvirt cannot remove the bitmaps (one
             * lost behind its back): a checkpoint it cannot use must go */
            r = vmsh_hv_checkpoint_delete(hv, it->name, names[i], true, &e);
            if (r == 0)
                it->cp_deleted++;
        }
        free(names[i]);
    }
    free(names);
    if (r < 0 && e)
        it->cp_error = strdup(e->message);
    vmsh_error_free(e);
}

void vmsh_vmw_prune_plan(vm_writer *w)
{
    /* the jobs run from the new checkpoints: the older ones are unused. Not
     * for saved-state VMs: their overlays are merged at BackupComplete,
     * before their checkpoints are touched. If the set aborts after this,
     * the next backup of the VM finds no checkpoint and reads in full. */
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        it->prune_async = it->method == VMSH_METHOD_GUEST && it->new_cp && !it->pruned;
    }
}

void vmsh_vmw_prune_planned(vm_writer *w)
{
    for (size_t i = 0; i < w->n_items; i++)
        if (w->items[i].prune_async)
            prune_with(w->host, w->hv, w->repo_id, &w->items[i]);
}

void vmsh_vmw_prune_checkpoints(vm_writer *w, vm_item *it)
{
    if (!it->pruned)
        prune_with(w->host, w->hv, w->repo_id, it);
    json_object *extra = vmsh_component_extra(it->comp);
    if (extra && it->cp_deleted)
        json_object_object_add(extra, "checkpoints_deleted",
                               json_object_new_int64((int64_t)it->cp_deleted));
    /* not a reason to fail a backup that is complete: recorded, retried
     * by the next backup */
    if (extra && it->cp_error)
        json_object_object_add(extra, "checkpoint_cleanup_error",
                               json_object_new_string(it->cp_error));
}

static vmsh_read_mode read_mode_of(const char *s)
{
    return !s                              ? VMSH_READ_UNPLANNED
           : strcmp(s, "incremental") == 0 ? VMSH_READ_INCREMENTAL
                                           : VMSH_READ_FULL;
}

int vmsh_vmw_publish_plans(vm_item *it)
{
    json_object *disks = member(vmsh_component_extra(it->comp), "disks");
    int r = 0;
    for (size_t i = 0; disks && i < json_object_array_length(disks); i++) {
        json_object *dj = json_object_array_get_idx(disks, i);
        const char *target = vmsh_json_str(dj, "target");
        _cleanup_free_ char *fname = NULL;
        if (!target || asprintf(&fname, "disk/%s", target) < 0)
            continue;
        vmsh_file *f = vmsh_component_find_file(it->comp, fname);
        if (!f)
            continue;
        const char *mode = vmsh_json_str(dj, "read");
        vmsh_disk_plan p = {.mode = read_mode_of(mode),
                            .reason = vmsh_json_str(dj, "read_reason"),
                            .base_backup = vmsh_json_str(dj, "base_backup"),
                            .bitmap = vmsh_json_str(dj, "bitmap"),
                            .dirty_context = vmsh_json_str(dj, "dirty_context")};
        if (vmsh_file_set_plan(f, mode ? &p : NULL) < 0)
            r = -ENOMEM;
    }
    return r;
}
