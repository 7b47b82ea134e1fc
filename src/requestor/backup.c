/* backup.c - the requestor's backup (issue 21: moved from the command line):
 * builds the writers and providers, reads the repository's history for the
 * VM writer's incremental reads, asks the coordinator for a snapshot set,
 * copies each file the writers describe from its source into the repository
 * (loading the base indexes of incremental reads ahead), commits the backup
 * document last (SPEC R5), and tells the caller through its callbacks. */
#include "requestor_priv.h"

#include <vmshadow/hv/hostops_cluster.h>

#include <vmshadow/coord/document.h>
#include <vmshadow/coord/json.h>
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/source.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/vm_writer.h>

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A base index an incremental read will need, loaded ahead (see
 * fetch_start). */
typedef struct base_fetch {
    char *name, *base_id;
    vmsh_file_index *idx;
    vmsh_error *err;
} base_fetch;

typedef struct req_run {
    vmsh_requestor_ops ops; /* first */
    const vmsh_requestor_callbacks *cb;
    vmsh_repo *repo;
    vmsh_backup *backup;
    base_fetch *fetch;
    size_t n_fetch;
    pthread_t fetch_thread;
    bool fetch_started, fetch_running;
} req_run;

static void *fetch_main(void *arg)
{
    req_run *q = arg;
    for (size_t i = 0; i < q->n_fetch; i++) {
        base_fetch *bf = &q->fetch[i];
        /* the base's chunks are looked up here too, not after the copy */
        if (vmsh_file_index_load(&bf->idx, q->repo, bf->base_id, bf->name, &bf->err) == 0 &&
            vmsh_file_index_check_chunks(bf->idx, q->repo, bf->name, &bf->err) < 0) {
            vmsh_file_index_free(bf->idx);
            bf->idx = NULL;
        }
    }
    return NULL;
}

/* Loads the base indexes of the planned incremental reads in a thread,
 * from the first Freeze on: while the guests freeze and their jobs start,
 * nothing else uses the repository (fetch_join comes before any other use),
 * and the index of a 4 GiB disk (2.6 MB, read and checked: 3-11 ms here,
 * more when it left the page cache) is ready when that disk's copy starts.
 * The plans are read here, in the coordinator's thread: the writers may
 * still change their metadata. Best effort: what is not fetched is loaded
 * when needed, and a failure is reported there as before. */
static void fetch_start(req_run *q, const vmsh_set *set)
{
    q->fetch_started = true;
    for (size_t w = 0; w < vmsh_set_writer_count(set); w++) {
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, w);
        for (size_t i = 0; md && i < vmsh_metadata_component_count(md); i++) {
            const vmsh_component *c = vmsh_metadata_component(md, i);
            for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
                const vmsh_file *f = vmsh_component_file(c, k);
                const vmsh_disk_plan *plan = vmsh_file_plan(f);
                const char *base = plan ? plan->base_backup : NULL;
                if (!plan || plan->mode != VMSH_READ_INCREMENTAL || !base)
                    continue;
                base_fetch *nf = vmsh_realloc_array(q->fetch, q->n_fetch + 1, sizeof(*nf));
                if (!nf)
                    return;
                q->fetch = nf;
                base_fetch *bf = &nf[q->n_fetch];
                *bf = (base_fetch){.name = req_file_name(md, c, f), .base_id = strdup(base)};
                q->n_fetch++;
                if (!bf->name || !bf->base_id)
                    return; /* a half-made entry is never matched: loaded on demand */
            }
        }
    }
    if (q->n_fetch && pthread_create(&q->fetch_thread, NULL, fetch_main, q) == 0)
        q->fetch_running = true;
}

static void fetch_join(req_run *q)
{
    if (q->fetch_running)
        pthread_join(q->fetch_thread, NULL);
    q->fetch_running = false;
}

static void fetch_free(req_run *q)
{
    fetch_join(q);
    for (size_t i = 0; i < q->n_fetch; i++) {
        free(q->fetch[i].name);
        free(q->fetch[i].base_id);
        vmsh_file_index_free(q->fetch[i].idx);
        vmsh_error_free(q->fetch[i].err);
    }
    free(q->fetch);
    q->fetch = NULL;
    q->n_fetch = 0;
}

/* The base index of `name` from the backup `base_id`: fetched ahead when it
 * was, else loaded now. */
static int base_index(req_run *q, const char *name, const char *base_id, vmsh_file_index **out,
                      vmsh_error **err)
{
    fetch_join(q);
    for (size_t i = 0; i < q->n_fetch; i++) {
        base_fetch *bf = &q->fetch[i];
        if (!bf->name || !bf->base_id || strcmp(bf->name, name) != 0 ||
            strcmp(bf->base_id, base_id) != 0 || (!bf->idx && !bf->err))
            continue;
        *out = bf->idx;
        bf->idx = NULL;
        if (*out)
            return 0;
        int rc = bf->err->code;
        vmsh_error_propagate(err, &bf->err);
        return rc;
    }
    return vmsh_file_index_load(out, q->repo, base_id, name, err);
}

static void on_event(void *opaque, const vmsh_set *set, size_t writer, vmsh_event ev, int result,
                     int64_t ms)
{
    req_run *q = opaque;
    req_debug(q->cb, "writer %s: %s %s (%lld ms)", vmsh_set_writer(set, writer)->name,
              vmsh_event_name(ev), result == 0 ? "ok" : strerror(-result), (long long)ms);
    if (ev == VMSH_EVENT_FREEZE && result == 0 && !q->fetch_started)
        fetch_start(q, set);
}

static int open_source(const vmsh_file *f, const char *dirty_context, vmsh_source **out,
                       vmsh_error **err)
{
    if (vmsh_file_source_type(f) == VMSH_SOURCE_NBD)
        return vmsh_source_open_nbd(out, vmsh_file_source_socket(f), vmsh_file_source_export(f),
                                    dirty_context, err);
    const char *fmt = vmsh_file_source_format(f);
    if (!fmt || strcmp(fmt, "raw") == 0)
        return vmsh_source_open_file(out, vmsh_file_source_path(f), err);
    return vmsh_source_open_qemu_image(out, vmsh_file_source_path(f), fmt, err);
}

/* Opens the source of a disk for an incremental read when the writer
 * planned one (issue 7): the dirty bitmap of the job's export, or for a
 * shut-off VM the persistent bitmap in its qcow2 image (qemu-nbd --bitmap);
 * and the last backup's index of the same file as the base. Anything
 * missing or refused makes it a full read, and *why says what. */
static int open_incremental(req_run *q, const char *name, const vmsh_file *f,
                            const vmsh_disk_plan *plan, vmsh_source **src, vmsh_file_index **base,
                            char **why, vmsh_error **err)
{
    const char *ctx = plan->dirty_context;
    const char *bitmap = plan->bitmap;
    const char *base_id = plan->base_backup;
    const char *fmt = vmsh_file_source_format(f);
    bool nbd = vmsh_file_source_type(f) == VMSH_SOURCE_NBD;
    vmsh_error *e = NULL;
    if (!ctx || !base_id || (!nbd && (!bitmap || !fmt || strcmp(fmt, "qcow2") != 0)))
        return 1;
    if (base_index(q, name, base_id, base, &e) < 0) {
        if (asprintf(why, "the last backup's index of %s cannot be used: %s", name, e->message) < 0)
            *why = NULL;
        vmsh_error_free(e);
        return 1;
    }
    int r =
        nbd ? open_source(f, ctx, src, &e)
            : vmsh_source_open_qemu_image_bitmap(src, vmsh_file_source_path(f), fmt, bitmap, &e);
    /* The export has no such bitmap, or QEMU refused the image's: the
     * image itself may still be read in full (and its own error shows
     * there if it cannot). */
    if (r == -ENOTSUP || (!nbd && r < 0)) {
        if (asprintf(why, "%s: %s",
                     nbd ? "the export offers no dirty bitmap" : "QEMU refused the bitmap",
                     e->message) < 0)
            *why = NULL;
        vmsh_error_free(e);
        vmsh_file_index_free(*base);
        *base = NULL;
        return 1;
    }
    if (r < 0) {
        vmsh_file_index_free(*base);
        *base = NULL;
        vmsh_error_propagate(err, &e);
        return r;
    }
    return 0;
}

static int req_copy(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                    const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    req_run *q = (req_run *)self;
    fetch_join(q); /* the repository is this thread's again */
    /* Unique within the backup: writer, component, file. The VM writer's
     * files go under the VM's name alone, as `show` and `extract` name them. */
    _cleanup_free_ char *name = req_file_name(md, c, f);
    int r;
    if (!name)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_source *src = NULL;
    vmsh_file_index *base = NULL;
    /* the writer's typed plan (issue 21), e.g. the VM writer's for a disk */
    const vmsh_disk_plan *plan = vmsh_file_plan(f);
    vmsh_read_mode read_mode = plan ? plan->mode : VMSH_READ_UNPLANNED;
    _cleanup_free_ char *why = NULL;
    r = 1;
    if (read_mode == VMSH_READ_INCREMENTAL &&
        (r = open_incremental(q, name, f, plan, &src, &base, &why, err)) < 0)
        return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    if (r > 0) {
        if (read_mode == VMSH_READ_INCREMENTAL)
            read_mode = VMSH_READ_FULL;
        else if (read_mode != VMSH_READ_UNPLANNED && !why)
            why = plan->reason ? strdup(plan->reason) : NULL;
        if ((r = open_source(f, NULL, &src, err)) < 0)
            return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    } else {
        why = plan->reason ? strdup(plan->reason) : NULL;
    }
    req_debug(q->cb, "copying %s%s", name,
              read_mode == VMSH_READ_INCREMENTAL ? ", read incremental"
              : read_mode == VMSH_READ_FULL      ? ", read full"
                                                 : "");
    vmsh_add_stats st = {0};
    req_progress cp = {.cb = q->cb, .name = name};
    vmsh_add_opts ao = {.base = base};
    if (q->cb && q->cb->progress) {
        ao.progress = req_file_progress;
        ao.progress_opaque = &cp;
    }
    _cleanup_free_ char *step = NULL;
    if (asprintf(&step, "copy %s", name) < 0)
        step = NULL;
    req_step(q->cb, step ? step : "copy", false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    r = vmsh_backup_add_file(q->backup, name, src, &ao, &st, err);
    req_step(q->cb, step ? step : "copy", true, r < 0 ? r : 0, vmsh_now_ms() - t0);
    req_debug(q->cb, "copied %s: %llu bytes read, %llu chunks from the base, %lld ms", name,
              (unsigned long long)st.bytes_read, (unsigned long long)st.base_chunks,
              (long long)(vmsh_now_ms() - t0));
    vmsh_source_free(src);
    bool had_base = base != NULL;
    vmsh_file_index_free(base);
    if (r < 0)
        return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    vmsh_file_stored_record rec = {.file = name,
                                   .size = st.size,
                                   .bytes_stored = st.bytes_stored,
                                   .new_chunks = st.new_chunks,
                                   .bytes_read = st.bytes_read,
                                   .read = read_mode,
                                   .read_reason = why,
                                   .base = had_base ? plan->base_backup : NULL,
                                   .base_chunks = st.base_chunks};
    if (vmsh_file_set_stored_record(f, &rec) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (vmsh_file_size(f) < 0)
        vmsh_file_set_size(f, (int64_t)st.size);
    return 0;
}

static int req_commit(vmsh_requestor_ops *self, vmsh_set *set, const char *document, char **out_id,
                      vmsh_error **err)
{
    req_run *q = (req_run *)self;
    fetch_join(q);
    req_debug(q->cb, "committing the backup");
    req_step(q->cb, "commit", false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    int r = vmsh_backup_commit(q->backup, document, err);
    req_step(q->cb, "commit", true, r < 0 ? r : 0, vmsh_now_ms() - t0);
    if (r < 0)
        return r;
    req_debug(q->cb, "backup %s committed", vmsh_backup_id(q->backup));
    *out_id = strdup(vmsh_backup_id(q->backup));
    return *out_id ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
}

static void req_abort(vmsh_requestor_ops *self, vmsh_set *set)
{
    req_run *q = (req_run *)self;
    /* Not committed: nothing becomes visible; what was written is garbage
     * for gc (R5). */
    fetch_join(q);
    vmsh_backup_free(q->backup);
    q->backup = NULL;
}
static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static json_object *vms_json(const vmsh_set *set)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        if (strcmp(vmsh_set_writer(set, i)->id, VMSH_VM_WRITER_ID) != 0)
            continue;
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, i);
        for (size_t c = 0; md && c < vmsh_metadata_component_count(md); c++) {
            const vmsh_component *comp = vmsh_metadata_component(md, c);
            /* the document's summary of the VM (name, method, reason,
             * states, excluded disks, how each disk was read) */
            json_object *o = vmsh_backup_doc_vm_json(comp, NULL);
            if (!o)
                continue;
            /* measured by the VM writer: how long the VM was stopped (R1) */
            json_object *extra = vmsh_component_extra(comp), *dt = NULL;
            if (extra && json_object_object_get_ex(extra, "downtime_ms", &dt))
                json_object_object_add(o, "downtime_ms", json_object_get(dt));
            json_object_array_add(a, o);
        }
    }
    return a;
}

/* Adds to `h` the VM components of backup `id` (its document) that `h` has
 * no entry for yet: {vm: {"backup": ID, "extra": {...}}}. */
static void history_add(json_object *h, const char *id, const char *document)
{
    json_object *doc = document ? json_tokener_parse(document) : NULL, *ws = NULL;
    if (doc && json_object_object_get_ex(doc, "writers", &ws) &&
        json_object_is_type(ws, json_type_array)) {
        for (size_t k = 0; k < json_object_array_length(ws); k++) {
            json_object *wm = json_object_array_get_idx(ws, k), *wr = NULL, *cs = NULL;
            if (!json_object_object_get_ex(wm, "writer", &wr) || !vmsh_json_str(wr, "id") ||
                strcmp(vmsh_json_str(wr, "id"), VMSH_VM_WRITER_ID) != 0 ||
                !json_object_object_get_ex(wm, "components", &cs) ||
                !json_object_is_type(cs, json_type_array))
                continue;
            for (size_t c = 0; c < json_object_array_length(cs); c++) {
                json_object *comp = json_object_array_get_idx(cs, c), *ex = NULL;
                const char *name = vmsh_json_str(comp, "name");
                if (!name || json_object_object_get_ex(h, name, NULL))
                    continue;
                json_object *e = json_object_new_object();
                json_object_object_add(e, "backup", json_object_new_string(id));
                if (json_object_object_get_ex(comp, "extra", &ex))
                    json_object_object_add(e, "extra", json_object_get(ex));
                json_object_object_add(h, name, e);
            }
        }
    }
    json_object_put(doc);
}

typedef struct history_walk {
    json_object *h;
    const vmsh_set_options *so;
} history_walk;

static int history_visit(void *opaque, const vmsh_backup_info *b)
{
    history_walk *hw = opaque;
    history_add(hw->h, b->id, b->document);
    for (size_t i = 0; i < hw->so->n_targets; i++)
        if (!json_object_object_get_ex(hw->h, hw->so->targets[i], NULL))
            return 0;
    return 1; /* every VM of the set has its last backup */
}

/* Issue 7: for the VM writer's chain checks, the last backup of each VM of
 * the set in this repository with its component extra (the checkpoint it
 * left): {vm: {"backup": ID, "extra": {...}}}. For named VMs the manifests
 * are read newest first until each VM has one, not all of them (a backup
 * would otherwise read every manifest of a repository that keeps thousands:
 * ~0.1 ms each). Either order is safe: a backup picked that is not the
 * last has, at most, a checkpoint that still exists, whose bitmap holds
 * every change since that backup (its index plus those changes is the disk
 * now), else the chain check reads in full. A damaged manifest is left out
 * for the same reason. --all reads them all, in the order of their times. */
static int repo_history(vmsh_repo *repo, const vmsh_set_options *so, json_object **out,
                        vmsh_error **err)
{
    json_object *h = json_object_new_object();
    if (!h)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    if (!so->all) {
        history_walk hw = {h, so};
        if (so->n_targets > 0 && (r = vmsh_repo_each_recent(repo, history_visit, &hw, err)) < 0)
            json_object_put(h);
        else
            *out = h;
        return r;
    }
    vmsh_backup_info *a = NULL;
    vmsh_damage *damaged = NULL;
    size_t n = 0, n_damaged = 0;
    if ((r = vmsh_repo_list_tolerant(repo, &a, &n, &damaged, &n_damaged, err)) < 0) {
        json_object_put(h);
        return r;
    }
    vmsh_damage_array_free(damaged, n_damaged);
    for (size_t i = n; i-- > 0;)
        history_add(h, a[i].id, a[i].document);
    vmsh_backup_info_array_free(a, n);
    *out = h;
    return 0;
}

/* R6: disks the VM writer leaves out are backed up from inside the guest;
 * say so on every backup (a warning: the CLI shows it also with --json). */
static void warn_excluded(const vmsh_requestor_callbacks *cb, const vmsh_set *set)
{
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        if (strcmp(vmsh_set_writer(set, i)->id, VMSH_VM_WRITER_ID) != 0)
            continue;
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, i);
        for (size_t c = 0; md && c < vmsh_metadata_component_count(md); c++) {
            const vmsh_component *comp = vmsh_metadata_component(md, c);
            for (size_t k = 0; k < vmsh_component_excluded_count(comp); k++)
                req_warn(cb, "VM %s: %s not backed up: %s", vmsh_component_name(comp),
                         vmsh_component_excluded_name(comp, k),
                         vmsh_component_excluded_reason(comp, k));
        }
    }
}

static json_object *writers_json(const vmsh_set *set)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        const vmsh_writer_ops *w = vmsh_set_writer(set, i);
        const vmsh_error *e = vmsh_set_writer_error(set, i);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", jstr(w->name));
        json_object_object_add(o, "id", jstr(w->id));
        json_object_object_add(o, "state",
                               jstr(vmsh_writer_state_name(vmsh_set_writer_state(set, i))));
        json_object_object_add(o, "error", e ? jstr(e->message) : NULL);
        json_object_array_add(a, o);
    }
    return a;
}

static void on_step(void *opaque, const vmsh_set *set, bool provider, const char *who,
                    const char *step, bool end, int result, int64_t ms)
{
    req_run *q = opaque;
    vmsh_requestor_actor a = provider ? VMSH_ACTOR_PROVIDER : VMSH_ACTOR_WRITER;
    if (!end && q->cb && q->cb->step_begin)
        q->cb->step_begin(q->cb->opaque, a, who, step);
    else if (end && q->cb && q->cb->step_end)
        q->cb->step_end(q->cb->opaque, a, who, step, result, ms);
}

void vmsh_requestor_result_free(vmsh_requestor_result *r)
{
    if (!r)
        return;
    free(r->backup_id);
    free(r->set_id);
    json_object_put(r->vms);
    json_object_put(r->writers);
    for (size_t i = 0; i < r->n_failures; i++) {
        free(r->failures[i].state);
        free(r->failures[i].message);
    }
    free(r->failures);
    free(r);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* What the caller reports: the set's outcome, kept after the set is freed. */
static void fill_result(vmsh_requestor_result *res, const vmsh_set *set, int r, const req_host *h)
{
    int64_t window = set ? vmsh_set_freeze_window_ms(set) : -1;
    if (h->vm_writer) {
        int64_t vw = vmsh_vm_writer_freeze_window_ms(h->vm_writer);
        if (vw > window)
            window = vw;
    }
    res->freeze_window_ms = window;
    res->backup_id = r == 0 && set ? dup_or_null(vmsh_set_backup_id(set)) : NULL;
    res->set_id = set ? dup_or_null(vmsh_set_id(set)) : NULL;
    res->bytes_read = set ? vmsh_set_bytes_read(set) : 0;
    res->bytes_stored = set ? vmsh_set_bytes_stored(set) : 0;
    res->vms = vms_json(set);
    res->writers = writers_json(set);
    for (size_t i = 0; r == 0 && set && i < vmsh_set_writer_count(set); i++) {
        if (strcmp(vmsh_set_writer(set, i)->id, VMSH_VM_WRITER_ID) != 0)
            continue;
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, i);
        for (size_t c = 0; md && c < vmsh_metadata_component_count(md); c++) {
            json_object *acc = NULL;
            json_object *extra = vmsh_component_extra(vmsh_metadata_component(md, c));
            if (extra && json_object_object_get_ex(extra, "accepted_exclusions", &acc))
                res->accepted_exclusions += (size_t)json_object_get_int64(acc);
        }
    }
    if (r < 0 && set) {
        size_t n = vmsh_set_writer_count(set);
        res->failures = vmsh_calloc_array(n ? n : 1, sizeof(*res->failures));
        for (size_t i = 0; res->failures && i < n; i++) {
            const vmsh_error *e = vmsh_set_writer_error(set, i);
            if (!e)
                continue;
            vmsh_requestor_failure *f = &res->failures[res->n_failures++];
            f->state = dup_or_null(vmsh_writer_state_name(vmsh_set_writer_state(set, i)));
            f->message = dup_or_null(e->message);
            f->retryable = e->retryable;
        }
    }
}

int vmsh_requestor_backup(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                          const vmsh_requestor_backup_options *opts, vmsh_requestor_result **out,
                          vmsh_error **err)
{
    vmsh_set_options so = {.targets = opts->targets,
                           .n_targets = opts->n_targets,
                           .all = opts->all,
                           .method = opts->method ? opts->method : "auto",
                           .full = opts->full,
                           .include_shared = opts->include_shared,
                           .allow_excluded = opts->allow_excluded};
    vmsh_requestor_result *res = calloc(1, sizeof(*res));
    if (!res)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    res->freeze_window_ms = -1;
    *out = res;
    vmsh_coord_config ccfg;
    req_host h = {0};
    req_run q = {.ops = {.version = VMSH_REQUESTOR_OPS_VERSION,
                         .copy_file = req_copy,
                         .commit = req_commit,
                         .abort = req_abort},
                 .cb = cb};
    vmsh_set *set = NULL;
    int r;
    /* Everything that can fail before a writer is touched comes first: the
     * configuration, the writers, the repository and its write lock. */
    if ((r = req_coord_config(cfg, &ccfg, err)) < 0 ||
        (r = req_host_build(cfg, true, &h, err)) < 0 ||
        (r = req_cluster_backup_refusals(&h, cfg->uri, &so, err)) < 0)
        goto out;
    /* The VM writer reads what Identify needs (lookups, definitions, agent
     * probes: ~20 ms, most of it waiting for the guests) while the
     * repository opens and the coordinator sets up; it changes nothing. */
    if (h.vm_writer && !so.all && so.n_targets > 0)
        vmsh_vm_writer_prefetch(h.vm_writer, so.targets, so.n_targets);
    if (!opts->open_repo) {
        r = vmsh_error_set(err, -EINVAL, "no repository to back up into");
        goto out;
    }
    if ((r = opts->open_repo(opts->open_repo_opaque, &q.repo, err)) < 0 ||
        (r = vmsh_backup_begin(&q.backup, q.repo, err)) < 0)
        goto out;
    req_debug(cb, "repository open for backup %s", vmsh_backup_id(q.backup));
    if (h.vm_writer) {
        json_object *hist = NULL;
        vmsh_error *e = NULL;
        req_step(cb, "history", false, 0, 0);
        int64_t t0 = vmsh_now_ms();
        int hr = repo_history(q.repo, &so, &hist, &e);
        req_step(cb, "history", true, hr, vmsh_now_ms() - t0);
        if (hr < 0) {
            req_warn(cb,
                     "every disk is read in full: the repository's backups cannot be listed: %s",
                     e->message);
            vmsh_error_free(e);
            e = NULL;
        }
        r = vmsh_vm_writer_set_history(h.vm_writer, vmsh_repo_id(q.repo), hist, err);
        json_object_put(hist);
        if (r < 0)
            goto out;
    }
    ccfg.on_event = on_event;
    ccfg.on_step = on_step;
    ccfg.on_event_opaque = &q;
    if (h.cluster_host) {
        /* What a killed run left in the cluster (a resource in
         * maintenance) is given back before a new hold reads the resource's
         * prior value; the coordinator's own replay below does not know the
         * cluster steps' owner. Silent, as the coordinator's. */
        vmsh_recover_report *rep = NULL;
        vmsh_error *re = NULL;
        req_recover_with_cluster(&ccfg, &h, &rep, &re);
        vmsh_recover_report_free(rep);
        vmsh_error_free(re);
    }
    r = vmsh_coord_backup(&ccfg, h.w, h.n, h.p, h.np, &q.ops, &so, &set, err);
    if (h.cluster_host) {
        vmsh_error *ce = NULL;
        if (vmsh_cluster_host_finish(h.cluster_host, &ce) < 0)
            req_warn(cb, "%s", ce->message);
        vmsh_error_free(ce);
    }
out:
    fill_result(res, set, r, &h);
    warn_excluded(cb, set);
    vmsh_set_free(set);
    fetch_free(&q);
    vmsh_backup_free(q.backup);
    vmsh_repo_free(q.repo);
    req_host_clear(&h);
    return r;
}
