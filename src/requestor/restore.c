/* restore.c - the requestor's restore (SPEC R8-R15; issue 21: moved from
 * the command line): finds the backup, asks the VM writer for its plan,
 * asks the caller before replacing VMs (R9), then the coordinator sends
 * PreRestore, the requestor writes each file where the VM writer planned it
 * (every chunk checked), and PostRestore checks and registers. */
#include "requestor_priv.h"

#include <vmshadow/coord/document.h>
#include <vmshadow/coord/json.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/hv/sink.h>
#include <vmshadow/repo/sink.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/vm_writer.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct req_restorer {
    vmsh_requestor_ops ops; /* first */
    const vmsh_requestor_callbacks *cb;
    vmsh_repo *repo;
    const char *id;
    const vmsh_backup_info *bi;
    const vmsh_requestor_restore_options *opts;
    bool damaged; /* a chunk or index was missing or damaged (exit code 3) */
} req_restorer;

/* The entry of `f` in the VM writer's plan (the component's "restore"
 * object), or NULL. */
static json_object *plan_entry(const vmsh_component *c, const vmsh_file *f)
{
    json_object *plan = NULL, *files = NULL;
    if (!json_object_object_get_ex(vmsh_component_extra(c), "restore", &plan) ||
        !json_object_object_get_ex(plan, "files", &files) ||
        !json_object_is_type(files, json_type_array))
        return NULL;
    for (size_t i = 0; i < json_object_array_length(files); i++) {
        json_object *fo = json_object_array_get_idx(files, i);
        const char *n = vmsh_json_str(fo, "file");
        if (n && strcmp(n, vmsh_file_name(f)) == 0)
            return fo;
    }
    return NULL;
}

/* Issue 25 point 4: a disk written in place onto the block device its VM
 * uses (the plan's "in_place"), through the sink, never through a
 * temporary file and a rename. The VM writer stopped the VM first (R9);
 * O_EXCL takes the device's exclusive claim, so a device mounted or held
 * by anything else is refused before a byte is written. Flushed (fsync,
 * then BLKFLSBUF) before PostRestore defines the VM. A failure once
 * writing began leaves the device partly written: the message says so. */
static int restore_onto_device(req_restorer *q, const char *name, const char *dev,
                               vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *st,
                               vmsh_error **err)
{
    int fd = open(dev, O_WRONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0)
        return vmsh_error_set(err, -errno,
                              "cannot open block device %s exclusively: %s; it was not changed",
                              dev, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISBLK(sb.st_mode)) {
        close(fd);
        return vmsh_error_set(err, -EINVAL, "%s is not a block device; it was not changed", dev);
    }
    int r = vmsh_repo_restore_fd(q->repo, q->id, name, fd, progress, opaque, st, err);
    if (r == 0 && fsync(fd) < 0)
        r = vmsh_error_set(err, -errno, "cannot flush block device %s: %s", dev, strerror(errno));
    if (r == 0 && ioctl(fd, BLKFLSBUF, 0) < 0)
        r = vmsh_error_set(err, -errno, "cannot flush the buffers of block device %s: %s", dev,
                           strerror(errno));
    if (close(fd) < 0 && r == 0)
        r = vmsh_error_set(err, -errno, "cannot close block device %s: %s", dev, strerror(errno));
    if (r < 0)
        vmsh_error_prefix(err,
                          "block device %s now holds a partial restore of %s (R11): restore "
                          "again with --force to complete it",
                          dev, name);
    return r;
}

/* Restores backup file `name` into `sink` and finishes it (flushed, its
 * server stopped and checked); the sink is gone either way. */
static int fill_sink(req_restorer *q, const char *name, vmsh_sink *sink, vmsh_progress_fn progress,
                     void *opaque, vmsh_restore_stats *st, vmsh_error **err)
{
    int r = vmsh_repo_restore_sink(q->repo, q->id, name, sink, progress, opaque, st, err);
    if (r == 0) {
        r = vmsh_sink_finish(sink, err);
        sink = NULL;
    }
    vmsh_sink_free(sink);
    return r;
}

/* Issue 25 point 4: a disk written straight onto storage of its kind that
 * is not a raw block device: an RBD image (QEMU's rbd driver), a qcow2 on a
 * block device, a pool volume's file, each existing (in place, the VM
 * stopped first, R9) or just created by the VM writer (`fresh`: it reads as
 * zeros). Served by qemu-nbd and written once (the sink seam); flushed
 * before PostRestore defines the VM. A failure once writing began leaves the
 * target partly written (or, created, removed by the VM writer): the
 * message says so. */
static int restore_onto_storage(req_restorer *q, const char *name, const char *dest,
                                const char *format, bool fresh, vmsh_progress_fn progress,
                                void *opaque, vmsh_restore_stats *st, vmsh_error **err)
{
    const vmsh_backup_file *bf = vmsh_backup_info_file(q->bi, name);
    if (!bf)
        return vmsh_error_set(err, -ENOENT, "backup %s has no file named \"%s\"", q->id, name);
    vmsh_sink *sink = NULL;
    int r = vmsh_hv_storage_sink_open(dest, format, bf->size, fresh, &sink, err);
    if (r < 0)
        return vmsh_error_prefix(err, "%s was not changed", dest);
    r = fill_sink(q, name, sink, progress, opaque, st, err);
    if (r < 0)
        vmsh_error_prefix(err, "%s now holds a partial restore of %s (R11): %s", dest, name,
                          fresh ? "it is removed again"
                                : "restore again with --force to complete it");
    return r;
}

/* The format the VM writer's plan asks a file to be written in ("write_as"
 * of its entry in the component's "restore" plan; NULL: as stored, raw). */
static const char *write_as(const vmsh_component *c, const vmsh_file *f)
{
    return vmsh_json_str(plan_entry(c, f), "write_as");
}

/* Writes one file straight into an image of `format` at `dest` (issue 27
 * point 3: once, in its format, flushed and synced with its directory). */
static int restore_image(req_restorer *q, const char *name, const char *dest, const char *format,
                         vmsh_progress_fn progress, void *opaque, vmsh_restore_stats *st,
                         vmsh_error **err)
{
    const vmsh_backup_file *bf = vmsh_backup_info_file(q->bi, name);
    if (!bf)
        return vmsh_error_set(err, -ENOENT, "backup %s has no file named \"%s\"", q->id, name);
    /* a leftover of an earlier, killed run at the temporary name */
    unlink(dest);
    vmsh_sink *sink = NULL;
    int r = vmsh_hv_image_sink_create(dest, format, bf->size, &sink, err);
    if (r == 0)
        r = fill_sink(q, name, sink, progress, opaque, st, err);
    if (r < 0)
        unlink(dest);
    return r;
}

static int req_restore(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                       const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    req_restorer *q = (req_restorer *)self;
    const char *dest = vmsh_file_restored_path(f);
    if (!dest) {
        vmsh_file_set_restored(f, VMSH_RESTORE_FAILED, NULL, "no place planned for it");
        return 0;
    }
    _cleanup_free_ char *name = req_file_name(md, c, f);
    _cleanup_free_ char *step = NULL;
    if (!name || asprintf(&step, "restore %s", name) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    req_progress ps = {.cb = q->cb, .name = name};
    bool show = q->cb && q->cb->progress;
    vmsh_restore_stats st = {0};
    vmsh_error *e = NULL;
    req_step(q->cb, step, false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    /* instant restore (issue 23): a disk becomes an overlay on its served
     * copy; otherwise written once, as its image format (issue 27) */
    const char *backing = q->opts->disk_backing && strcmp(vmsh_file_kind(f), "disk") == 0
                              ? q->opts->disk_backing(q->opts->disk_backing_opaque, name)
                              : NULL;
    const char *fmt = backing ? NULL : write_as(c, f);
    json_object *ip = NULL, *pe = plan_entry(c, f), *stg = NULL;
    bool in_place = json_object_object_get_ex(pe, "in_place", &ip) && json_object_get_boolean(ip);
    /* instant restore onto a device or an RBD image (issue 23): nothing is
     * written here; the VM, started on an overlay of the served disk, is
     * block-copied onto it (instant.c) */
    bool copy_later = backing && in_place;
    in_place = in_place && !backing;
    const char *dfmt = vmsh_json_str(pe, "format");
    json_object_object_get_ex(pe, "storage", &stg);
    const char *action = vmsh_json_str(stg, "action");
    bool fresh = action && strcmp(action, "created") == 0;
    struct stat sb;
    /* a raw block device: written by this process (O_EXCL); anything else
     * (RBD, qcow2 on a device, a volume's file) through qemu-nbd */
    bool onto_device = in_place && (!dfmt || strcmp(dfmt, "raw") == 0) && dest[0] == '/' &&
                       stat(dest, &sb) == 0 && S_ISBLK(sb.st_mode);
    const char *kind_as = vmsh_json_str(stg, "restored_as");
    /* a pool volume on a block device (logical, disk pools) is copied onto
     * that device as a device is (issue 23); one that is a file was
     * planned as an overlay in it (vm_restore.c), never reaches here */
    bool vol_dev = kind_as && strcmp(kind_as, "volume") == 0 && dest[0] == '/' &&
                   stat(dest, &sb) == 0 && S_ISBLK(sb.st_mode);
    bool copyable = kind_as &&
                    (strcmp(kind_as, "block") == 0 || strcmp(kind_as, "rbd") == 0 || vol_dev) &&
                    (!dfmt || strcmp(dfmt, "raw") == 0);
    int r =
        copy_later && copyable ? 0
        : copy_later
            ? vmsh_error_set(&e, -ENOTSUP,
                             "%s is a %s disk on storage the instant restore cannot copy onto (a "
                             "raw block device, RBD image, or pool volume on a block device or "
                             "file only); it was not changed: restore without --instant",
                             dest, dfmt ? dfmt : "raw")
        : onto_device ? restore_onto_device(q, name, dest, show ? req_file_progress : NULL,
                                            show ? &ps : NULL, &st, &e)
        : in_place
            ? restore_onto_storage(q, name, dest, dfmt ? dfmt : "raw", fresh,
                                   show ? req_file_progress : NULL, show ? &ps : NULL, &st, &e)
        : backing ? vmsh_hv_image_create(dest, backing, "raw", 0, &e)
        : fmt     ? restore_image(q, name, dest, fmt, show ? req_file_progress : NULL,
                              show ? &ps : NULL, &st, &e)
                  : vmsh_repo_restore_file(q->repo, q->id, name, dest, true,
                                       show ? req_file_progress : NULL, show ? &ps : NULL, &st, &e);
    req_step(q->cb, step, true, r < 0 ? r : 0, vmsh_now_ms() - t0);
    if (r < 0) {
        /* recorded, not returned: PostRestore reports this VM (R11) and the
         * other VMs of the backup still come back */
        if (e && (e->code == -EBADMSG || e->code == -EUCLEAN))
            q->damaged = true;
        vmsh_file_set_restored(f, VMSH_RESTORE_FAILED, dest, e ? e->message : strerror(-r));
        vmsh_error_free(e);
        return 0;
    }
    req_debug(q->cb, "restored %s to %s (%llu bytes)", name, dest,
              (unsigned long long)st.bytes_written);
    return vmsh_file_set_restored(f, VMSH_RESTORE_OK, dest, NULL) < 0
               ? vmsh_error_set(err, -ENOMEM, "out of memory")
               : 0;
}

static bool selected(const char *const *names, size_t n, const char *name)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

/* The VM writer's part of the backup, or NULL. */
static vmsh_metadata *vm_part(const vmsh_backup_doc *doc)
{
    for (size_t i = 0; i < vmsh_backup_doc_writer_count(doc); i++) {
        vmsh_metadata *md = vmsh_backup_doc_writer(doc, i);
        if (strcmp(vmsh_metadata_writer_id(md), VMSH_VM_WRITER_ID) == 0)
            return md;
    }
    return NULL;
}

void vmsh_requestor_restore_result_free(vmsh_requestor_restore_result *r)
{
    if (!r)
        return;
    free(r->backup_id);
    json_object_put(r->plan);
    json_object_put(r->done);
    free(r);
}

int vmsh_requestor_restore(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                           vmsh_repo *repo, const vmsh_requestor_restore_options *opts,
                           vmsh_requestor_restore_result **out, vmsh_error **err)
{
    vmsh_set_options so = {.targets = opts->targets,
                           .n_targets = opts->n_targets,
                           .force = opts->force,
                           .restore_dir = opts->restore_dir,
                           .restore_as = opts->restore_as,
                           .host_devices = opts->host_devices,
                           .overlay_disks = opts->disk_backing != NULL};
    vmsh_requestor_restore_result *res = calloc(1, sizeof(*res));
    if (!res)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    *out = res;
    req_restorer q = {.ops = {.version = VMSH_REQUESTOR_OPS_VERSION, .restore_file = req_restore},
                      .cb = cb,
                      .repo = repo,
                      .opts = opts};
    vmsh_backup_info *bi = NULL;
    vmsh_backup_doc *doc = NULL;
    req_host h = {0};
    vmsh_set *set = NULL;
    char **xmls = NULL;
    req_cluster_restore *crs = NULL;
    int r;
    vmsh_coord_config ccfg;
    vmsh_metadata *md = NULL;
    size_t nc = 0;
    if ((r = req_coord_config(cfg, &ccfg, err)) < 0 ||
        (r = vmsh_repo_backup_info(repo, opts->backup, &bi, err)) < 0)
        goto out;
    if (!(res->backup_id = strdup(bi->id))) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    q.id = res->backup_id;
    q.bi = bi;
    if ((r = vmsh_backup_doc_parse(bi->document, strlen(bi->document), &doc, err)) < 0) {
        vmsh_error_prefix(err, "backup %s", q.id);
        goto out;
    }
    md = vm_part(doc);
    nc = md ? vmsh_metadata_component_count(md) : 0;
    for (size_t i = 0; i < opts->n_targets; i++)
        if (!md || !vmsh_metadata_find_component(md, opts->targets[i])) {
            r = vmsh_error_set(err, -ENOENT, "VM %s is not in backup %s (see 'vmshadow show %s')",
                               opts->targets[i], q.id, q.id);
            goto out;
        }
    if (nc == 0) {
        r = vmsh_error_set(err, -ENOENT, "backup %s holds no VM", q.id);
        goto out;
    }
    if ((r = req_host_build(cfg, false, &h, err)) < 0)
        goto out;
    /* The plan: what --dry-run prints, and what a confirmation asks about. */
    xmls = vmsh_calloc_array(nc, sizeof(char *));
    for (size_t i = 0; xmls && i < nc; i++) {
        vmsh_component *comp = vmsh_metadata_component(md, i);
        vmsh_component_set_selected(
            comp, selected(opts->targets, opts->n_targets, vmsh_component_name(comp)));
        vmsh_file *f = vmsh_component_find_file(comp, "config/domain.xml");
        _cleanup_free_ char *fname = f ? req_file_name(md, comp, f) : NULL;
        size_t len = 0;
        if (fname && vmsh_component_selected(comp))
            vmsh_repo_read_file(repo, q.id, fname, 4u << 20, &xmls[i], &len, NULL);
    }
    /* The caller's own writers (cfg->writers) plan in PreRestore. */
    if (!h.vm_writer)
        res->plan = json_object_new_array();
    else if ((r = vmsh_vm_writer_restore_plan(h.vm_writer, md, &so, (const char *const *)xmls,
                                              &res->plan, err)) < 0)
        goto out;
    /* Issue 22 (R16): a VM a Pacemaker cluster manages is stopped through
     * the cluster first and started by it afterwards, from its rewritten
     * config file (cluster.c); refusals come here, before any change. */
    if ((r = req_cluster_restore_plan(&h, md, &so, res->plan, &crs, err)) < 0)
        goto out;
    if (opts->dry_run)
        goto out;
    if (!so.force && opts->confirm && opts->confirm(opts->confirm_opaque, res->plan))
        so.force = true;
    ccfg.on_step = NULL;
    if (crs && !so.force) {
        r = vmsh_error_set(err, -EEXIST,
                           "the restore replaces a VM that a Pacemaker cluster runs: confirm "
                           "with --force (R9); nothing was changed");
        goto out;
    }
    if ((r = req_cluster_restore_stop(cfg, cb, crs, err)) == 0)
        r = vmsh_coord_restore(&ccfg, h.w, h.n, &q.ops, doc, &so, &set, err);
    /* The outcome per VM, from the VM writer's records. */
    res->done = json_object_new_array();
    for (size_t i = 0; res->done && i < nc; i++) {
        vmsh_component *comp = vmsh_metadata_component(md, i);
        json_object *p = NULL;
        if (vmsh_component_selected(comp) &&
            json_object_object_get_ex(vmsh_component_extra(comp), "restore", &p))
            json_object_array_add(res->done, json_object_get(p));
    }
    res->damaged = q.damaged;
out:
    if (crs) {
        /* Also after a failure: the cluster starts what the resource's
         * config file holds, the prior VM when the restore was rolled back. */
        vmsh_error *ce = NULL;
        int cr = req_cluster_restore_end(cfg, cb, crs, res->done, r < 0 ? &ce : err);
        if (cr < 0 && r < 0)
            req_warn(cb, "%s", ce->message);
        else if (cr < 0)
            r = cr;
        vmsh_error_free(ce);
        req_cluster_restore_free(crs);
    }
    for (size_t i = 0; xmls && i < nc; i++)
        free(xmls[i]);
    free(xmls);
    vmsh_set_free(set);
    req_host_clear(&h);
    vmsh_backup_doc_free(doc);
    vmsh_backup_info_free(bi);
    /* issue 23: the disk images the restore replaced are freed from here,
     * after its last fsync (vmsh_fs_defer_close); an instant restore
     * frees them once its VM runs (instant.c) */
    if (!opts->disk_backing)
        vmsh_fs_close_deferred();
    return r;
}
