/* pull.c - the libvirt pull-backup provider (include/vmshadow/providers/pull.h). */
#include <vmshadow/coord/parallel.h>
#include <vmshadow/coord/trace.h>
#include <vmshadow/providers/pull.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

typedef struct pull_vm {
    char *vm;
    char *socket;
    char **targets;
    char **scratch;
    uint64_t *capacity; /* per disk: its size, the scratch image's */
    char **incremental; /* per disk: checkpoint to export changes since, or NULL */
    size_t n;
    bool journalled; /* "backup-job" begun: scratch images or a job may exist */
    uint64_t seq;
    char *cp_name, *cp_xml; /* the checkpoint made for the next backup (issue 7) */
    uint64_t seq_cp;
    bool cp_journalled;
    char *fallback; /* why libvirt refused the incremental job (it then ran full) */
    char *job_xml;  /* the job's XML, made beside the freeze (NULL: at commit) */
    /* Issue 27 point 4: the VMs' checkpoints and job starts run at once,
     * one thread per VM (each_vm_at_once); a vmsh_hv serves one thread, so
     * in a set of several VMs each but the first has a connection of its
     * own, opened before the freeze (NULL: the provider's) */
    vmsh_hv *own_hv;
    int rc;
    vmsh_error *err;
} pull_vm;

/* Work done beside the guests' freeze (vmsh_pull_provider_start): a thread
 * makes the scratch images; prepare joins it. */
typedef struct bg_task {
    struct pull_provider *p;
    pthread_t thread;
    int rc;
    vmsh_error *err;
} bg_task;

typedef struct pull_provider {
    vmsh_provider_ops ops; /* first: the coordinator hands it back as self */
    char *uri;
    vmsh_hv *hv;
    char *set_id;
    pull_vm *vms;
    size_t n_vms;
    bg_task scratch;
    bool bg_running;
} pull_provider;

static void vm_clear(pull_vm *v)
{
    free(v->vm);
    free(v->socket);
    free(v->job_xml);
    for (size_t i = 0; i < v->n; i++) {
        free(v->targets[i]);
        free(v->scratch[i]);
        free(v->incremental[i]);
    }
    free(v->targets);
    free(v->scratch);
    free(v->capacity);
    free(v->incremental);
    free(v->cp_name);
    free(v->cp_xml);
    free(v->fallback);
    vmsh_error_free(v->err);
    vmsh_hv_free(v->own_hv);
}

/* Waits for the background work of vmsh_pull_provider_start; its outcome
 * stays in p->scratch. */
static void bg_join(pull_provider *p)
{
    if (!p->bg_running)
        return;
    pthread_join(p->scratch.thread, NULL);
    p->bg_running = false;
}

static void bg_clear(pull_provider *p)
{
    bg_join(p);
    vmsh_error_free(p->scratch.err);
    p->scratch = (bg_task){0};
}

static void reset(pull_provider *p)
{
    bg_clear(p);
    for (size_t i = 0; i < p->n_vms; i++)
        vm_clear(&p->vms[i]);
    free(p->vms);
    p->vms = NULL;
    p->n_vms = 0;
    free(p->set_id);
    p->set_id = NULL;
}

static int hv_ready(pull_provider *p, vmsh_error **err)
{
    return p->hv ? 0 : vmsh_hv_open(&p->hv, p->uri, err);
}

int vmsh_pull_provider_add(vmsh_provider_ops *ops, const vmsh_set *set, const char *vm,
                           const char *socket_path, const vmsh_hv_backup_disk *disks,
                           size_t n_disks, vmsh_error **err)
{
    pull_provider *p = (pull_provider *)ops;
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0) {
        reset(p);
        if (!(p->set_id = strdup(vmsh_set_id(set))))
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    pull_vm *nv = vmsh_realloc_array(p->vms, p->n_vms + 1, sizeof(*nv));
    if (!nv)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    p->vms = nv;
    pull_vm *v = &p->vms[p->n_vms++];
    memset(v, 0, sizeof(*v));
    v->vm = strdup(vm);
    v->socket = strdup(socket_path);
    v->targets = vmsh_calloc_array(n_disks, sizeof(char *));
    v->scratch = vmsh_calloc_array(n_disks, sizeof(char *));
    v->capacity = vmsh_calloc_array(n_disks, sizeof(uint64_t));
    v->incremental = vmsh_calloc_array(n_disks, sizeof(char *));
    if (!v->vm || !v->socket || !v->targets || !v->scratch || !v->capacity || !v->incremental)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n_disks; i++) {
        v->targets[i] = strdup(disks[i].target);
        v->scratch[i] = strdup(disks[i].scratch);
        v->capacity[i] = disks[i].capacity;
        v->incremental[i] = disks[i].incremental ? strdup(disks[i].incremental) : NULL;
        v->n++;
        if (!v->targets[i] || !v->scratch[i] || (disks[i].incremental && !v->incremental[i]))
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

static vmsh_hv *vm_hv(pull_provider *p, pull_vm *v)
{
    return v->own_hv ? v->own_hv : p->hv;
}

typedef struct vm_calls {
    pull_provider *p;
    void (*fn)(pull_provider *p, pull_vm *v);
} vm_calls;

static void vm_call(void *ctx, size_t i)
{
    vm_calls *c = ctx;
    c->fn(c->p, &c->p->vms[i]);
}

/* Runs fn on every VM of the set at once (vmsh_each_at_once; each outcome
 * in v->rc, v->err); returns when all have ended. */
static void each_vm_at_once(pull_provider *p, void (*fn)(pull_provider *, pull_vm *))
{
    for (size_t i = 0; i < p->n_vms; i++) {
        p->vms[i].rc = 0;
        vmsh_error_free(p->vms[i].err);
        p->vms[i].err = NULL;
    }
    vm_calls c = {p, fn};
    vmsh_each_at_once(p->n_vms, vm_call, &c);
}

/* The first failure, in the set's order of VMs, goes to *err; the others
 * are dropped. */
static int first_vm_error(pull_provider *p, vmsh_error **err)
{
    int r = 0;
    for (size_t i = 0; i < p->n_vms; i++) {
        pull_vm *v = &p->vms[i];
        if (v->rc < 0 && r == 0)
            r = v->rc;
        vmsh_error_propagate(err, &v->err);
    }
    return r;
}

static pull_vm *find_vm(pull_provider *p, const vmsh_set *set, const char *vm)
{
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0)
        return NULL;
    for (size_t i = 0; i < p->n_vms; i++)
        if (strcmp(p->vms[i].vm, vm) == 0)
            return &p->vms[i];
    return NULL;
}

int vmsh_pull_provider_add_checkpoint(vmsh_provider_ops *ops, const vmsh_set *set, const char *vm,
                                      const char *name, const char *xml, vmsh_error **err)
{
    pull_vm *v = find_vm((pull_provider *)ops, set, vm);
    if (!v)
        return vmsh_error_set(err, -ENOENT, "VM %s is not registered with the pull provider", vm);
    free(v->cp_name);
    free(v->cp_xml);
    v->cp_name = strdup(name);
    v->cp_xml = strdup(xml);
    if (!v->cp_name || !v->cp_xml)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

const char *vmsh_pull_provider_fallback(vmsh_provider_ops *ops, const vmsh_set *set, const char *vm)
{
    pull_vm *v = find_vm((pull_provider *)ops, set, vm);
    return v ? v->fallback : NULL;
}

static json_object *job_data(const pull_vm *v)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "vm", json_object_new_string(v->vm));
    json_object_object_add(o, "socket", json_object_new_string(v->socket));
    json_object *s = json_object_new_array();
    for (size_t i = 0; i < v->n; i++)
        json_object_array_add(s, json_object_new_string(v->scratch[i]));
    json_object_object_add(o, "scratch", s);
    return o;
}

/* The VM's disks as its job takes them (malloc'ed; borrows from `v`), or
 * NULL when out of memory. */
static vmsh_hv_backup_disk *job_disks(const pull_vm *v)
{
    vmsh_hv_backup_disk *disks = vmsh_calloc_array(v->n ? v->n : 1, sizeof(*disks));
    for (size_t k = 0; disks && k < v->n; k++)
        disks[k] = (vmsh_hv_backup_disk){.target = v->targets[k],
                                         .scratch = v->scratch[k],
                                         .capacity = v->capacity[k],
                                         .incremental = v->incremental[k]};
    return disks;
}

/* A VM's checkpoint for the next incremental backup, then its job's XML:
 * both before the freeze (vmsh_pull_provider_start). A bitmap begun a
 * little before the point of the backup is safe: it records a superset of
 * the changes since. */
static void checkpoint_one(pull_provider *p, pull_vm *v)
{
    vmsh_hv *hv = vm_hv(p, v);
    if (v->cp_name) {
        vmsh_trace_step(v->vm, "checkpoint-sent");
        v->rc = vmsh_hv_checkpoint_create(hv, v->vm, v->cp_xml, &v->err);
        vmsh_trace_step(v->vm, "checkpoint-returned");
    }
    if (v->rc < 0) {
        vmsh_error_prefix(&v->err, "checkpoint %s for the next incremental backup", v->cp_name);
        return;
    }
    /* The job's XML too (the VM's XML read and parsed: 1-4 ms that were
     * spent inside the freeze window). Best effort: commit makes what is
     * missing. */
    vmsh_hv_backup_disk *disks = job_disks(v);
    vmsh_error *e = NULL;
    if (disks && vmsh_hv_backup_xml(hv, v->vm, v->socket, disks, v->n, &v->job_xml, &e) < 0)
        vmsh_error_free(e);
    vmsh_trace_step(v->vm, "job-xml-returned");
    free(disks);
}

static void *make_scratch(void *arg)
{
    bg_task *t = arg;
    pull_provider *p = t->p;
    vmsh_trace_step(NULL, "scratch-sent");
    for (size_t i = 0; i < p->n_vms && t->rc == 0; i++) {
        pull_vm *v = &p->vms[i];
        for (size_t k = 0; k < v->n && t->rc == 0; k++)
            if ((t->rc = vmsh_hv_image_create(v->scratch[k], NULL, NULL, v->capacity[k], &t->err)) <
                0)
                vmsh_error_prefix(&t->err, "the scratch image of disk %s of VM %s", v->targets[k],
                                  v->vm);
    }
    vmsh_trace_step(NULL, "scratch-returned");
    return NULL;
}

int vmsh_pull_provider_start(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    pull_provider *p = (pull_provider *)ops;
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0 || p->bg_running)
        return 0; /* no VM of this set needs a job, or started already */
    int r = 0;
    for (size_t i = 0; i < p->n_vms && r == 0; i++) {
        pull_vm *v = &p->vms[i];
        json_object *data = job_data(v);
        r = vmsh_set_journal_begin(set, ops->id, "backup-job", data, &v->seq, err);
        json_object_put(data);
        if (r < 0)
            break;
        v->journalled = true; /* from here on scratch images may exist */
        if (v->cp_name) {
            /* journalled before it exists: an abort or a recover deletes it */
            json_object *cd = json_object_new_object();
            json_object_object_add(cd, "vm", json_object_new_string(v->vm));
            json_object_object_add(cd, "name", json_object_new_string(v->cp_name));
            r = vmsh_set_journal_begin(set, ops->id, "checkpoint", cd, &v->seq_cp, err);
            json_object_put(cd);
            if (r == 0)
                v->cp_journalled = true;
        }
    }
    /* the other VMs' own connections (each_vm_at_once), before the freeze;
     * the snapshot path: the job and its end look the VMs up again */
    if (r == 0 && (r = hv_ready(p, err)) == 0)
        vmsh_hv_cache_domains(p->hv, true);
    for (size_t i = 1; i < p->n_vms && r == 0; i++) {
        pull_vm *v = &p->vms[i];
        if (v->own_hv)
            continue;
        if ((r = vmsh_hv_open(&v->own_hv, vmsh_hv_uri(p->hv), err)) < 0)
            vmsh_error_prefix(err, "VM %s: a connection of its own for its backup job", v->vm);
        else
            vmsh_hv_cache_domains(v->own_hv, true);
    }
    if (r < 0)
        return r;
    p->scratch = (bg_task){.p = p};
    p->bg_running = pthread_create(&p->scratch.thread, NULL, make_scratch, &p->scratch) == 0;
    if (!p->bg_running)
        return vmsh_error_set(err, -EAGAIN, "cannot start a thread");
    /* Issue 27 point 4: the checkpoints (and the jobs' XML) are made here,
     * before the window, every VM's at once: measured beside the freezes
     * (bench/freeze-bench.sh's steps), two checkpoints took 53-60 ms each,
     * libvirtd and the QEMUs taking from the two TCG guests the CPU their
     * freezes need. The backup then costs those ms more, the guests none. */
    each_vm_at_once(p, checkpoint_one);
    return first_vm_error(p, err);
}

/* After every writer's PrepareForSnapshot (the guests are frozen): the
 * checkpoints and scratch images are ready, or the set fails. */
static int pull_prepare(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    pull_provider *p = (pull_provider *)ops;
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0)
        return 0;
    bg_join(p);
    int r = p->scratch.rc;
    if (r < 0)
        vmsh_error_propagate(err, &p->scratch.err);
    return r;
}

static void begin_one(pull_provider *p, pull_vm *v)
{
    vmsh_hv *hv = vm_hv(p, v);
    vmsh_hv_backup_disk *disks = job_disks(v);
    if (!disks) {
        v->rc = vmsh_error_set(&v->err, -ENOMEM, "out of memory");
        return;
    }
    bool incremental = false;
    for (size_t k = 0; k < v->n; k++)
        incremental = incremental || v->incremental[k];
    vmsh_error *e = NULL;
    vmsh_trace_step(v->vm, "begin-sent");
    int r = v->job_xml ? vmsh_hv_backup_begin_xml(hv, v->vm, v->job_xml, &e)
                       : vmsh_hv_backup_begin(hv, v->vm, v->socket, disks, v->n, &e);
    if (r < 0 && incremental) {
        /* libvirt checks each bitmap of the chain (missing, or
         * inconsistent after QEMU stopped without storing it): the job
         * then runs full, at the same point, and the reason is kept */
        free(v->fallback);
        v->fallback = strdup(e && e->message ? e->message : "refused");
        vmsh_error_free(e);
        e = NULL;
        for (size_t k = 0; k < v->n; k++)
            disks[k].incremental = NULL;
        r = vmsh_hv_backup_begin(hv, v->vm, v->socket, disks, v->n, &e);
    }
    vmsh_trace_step(v->vm, "begin-returned");
    free(disks);
    v->rc = r;
    v->err = e;
}

/* Starts every VM's job at once (each_vm_at_once), then journals the jobs
 * that run; a VM whose job did not start fails the set, and the abort ends
 * the others' (end_all). */
static int pull_commit(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    pull_provider *p = (pull_provider *)ops;
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0)
        return 0; /* no VM of this set needs a job */
    int r = hv_ready(p, err);
    if (r < 0)
        return r;
    each_vm_at_once(p, begin_one);
    for (size_t i = 0; i < p->n_vms; i++) {
        pull_vm *v = &p->vms[i];
        int q = v->rc;
        vmsh_error *e = v->err;
        v->err = NULL;
        /* inside the window: a job's and a checkpoint's undo are the same
         * begun or done, so these marks wait for the next sync */
        if (q == 0)
            q = vmsh_set_journal_mark_done_unsynced(set, v->seq, &e);
        if (q == 0 && v->cp_journalled)
            q = vmsh_set_journal_mark_done_unsynced(set, v->seq_cp, &e);
        if (q < 0 && r == 0)
            r = q;
        vmsh_error_propagate(err, &e);
    }
    return r;
}

/* Ends the job of `vm` and removes its scratch files; tolerates a job that
 * never started and a VM that is gone. */
static int end_job(vmsh_hv *hv, const char *vm, char *const *scratch, size_t n, vmsh_error **err)
{
    vmsh_error *e = NULL;
    int r = vmsh_hv_backup_end(hv, vm, &e);
    if (r == -ENOENT) {
        vmsh_error_free(e);
        e = NULL;
        r = 0;
    }
    vmsh_error_propagate(err, &e);
    for (size_t i = 0; i < n; i++)
        if (unlink(scratch[i]) < 0 && errno != ENOENT && r == 0)
            r = vmsh_error_set(err, -errno, "cannot remove scratch file %s of VM %s: %s",
                               scratch[i], vm, strerror(errno));
    return r < 0 ? r : 0;
}

/* `keep`: the copies are done, the checkpoints stay for the next backup
 * (release); else they go with the job (abort). The job ends first: it
 * holds the checkpoint's bitmap. */
static int end_all(pull_provider *p, vmsh_set *set, bool keep, vmsh_error **err)
{
    if (!p->set_id || strcmp(p->set_id, vmsh_set_id(set)) != 0)
        return 0;
    bg_join(p);         /* the thread may still be making scratch images */
    if (!keep && p->hv) /* an abort may follow a libvirtd restart: renew the connection */
        vmsh_hv_cache_domains(p->hv, false);
    int first = 0;
    for (size_t i = 0; i < p->n_vms; i++) {
        pull_vm *v = &p->vms[i];
        vmsh_error *e = NULL;
        int r = 0;
        if (v->journalled) {
            r = hv_ready(p, &e);
            if (r == 0)
                r = end_job(p->hv, v->vm, v->scratch, v->n, &e);
            if (r == 0) {
                v->journalled = false;
                r = vmsh_set_journal_mark(set, v->seq, VMSH_JOURNAL_UNDONE, &e);
            }
        }
        if (r == 0 && v->cp_journalled) {
            r = hv_ready(p, &e);
            if (r == 0 && !keep)
                r = vmsh_hv_checkpoint_delete(p->hv, v->vm, v->cp_name, true, &e);
            if (r == 0) {
                v->cp_journalled = false;
                r = vmsh_set_journal_mark(set, v->seq_cp, VMSH_JOURNAL_UNDONE, &e);
            }
        }
        if (r < 0 && first == 0)
            first = r;
        vmsh_error_propagate(err, &e);
    }
    if (first == 0)
        reset(p);
    return first;
}

static int pull_release(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    return end_all((pull_provider *)ops, set, true, err);
}

static int pull_abort(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    return end_all((pull_provider *)ops, set, false, err);
}

int vmsh_pull_provider_cancel(vmsh_provider_ops *ops, vmsh_set *set, vmsh_error **err)
{
    return end_all((pull_provider *)ops, set, false, err);
}

static int pull_undo(vmsh_provider_ops *ops, const vmsh_journal_entry *entry, vmsh_error **err)
{
    pull_provider *p = (pull_provider *)ops;
    json_object *vmj = NULL, *sj = NULL, *nj = NULL;
    if (p->hv)
        vmsh_hv_cache_domains(p->hv, false);
    if (strcmp(entry->action, "checkpoint") == 0) {
        /* a set that did not complete: its checkpoint marks no backup */
        if (!entry->data || !json_object_object_get_ex(entry->data, "vm", &vmj) ||
            !json_object_object_get_ex(entry->data, "name", &nj) ||
            !json_object_is_type(vmj, json_type_string) ||
            !json_object_is_type(nj, json_type_string))
            return vmsh_error_set(err, -EBADMSG, "%s: journal entry %llu is missing members",
                                  ops->name, (unsigned long long)entry->seq);
        int r = hv_ready(p, err);
        if (r < 0)
            return r;
        /* the backup job holds the checkpoint's bitmap: it ends first */
        if ((r = end_job(p->hv, json_object_get_string(vmj), NULL, 0, err)) < 0)
            return r;
        return vmsh_hv_checkpoint_delete(p->hv, json_object_get_string(vmj),
                                         json_object_get_string(nj), true, err);
    }
    if (strcmp(entry->action, "backup-job") != 0)
        return vmsh_error_set(err, -EINVAL, "%s: unknown journal action '%s'", ops->name,
                              entry->action);
    if (!entry->data || !json_object_object_get_ex(entry->data, "vm", &vmj) ||
        !json_object_is_type(vmj, json_type_string))
        return vmsh_error_set(err, -EBADMSG, "%s: journal entry %llu has no VM name", ops->name,
                              (unsigned long long)entry->seq);
    char *scratch[64];
    size_t n = 0;
    if (json_object_object_get_ex(entry->data, "scratch", &sj) &&
        json_object_is_type(sj, json_type_array))
        for (size_t i = 0; i < json_object_array_length(sj) && n < VMSH_ARRAY_SIZE(scratch); i++) {
            json_object *s = json_object_array_get_idx(sj, i);
            if (json_object_is_type(s, json_type_string))
                scratch[n++] = (char *)json_object_get_string(s);
        }
    int r = hv_ready(p, err);
    if (r < 0)
        return r;
    return end_job(p->hv, json_object_get_string(vmj), scratch, n, err);
}

static void pull_free(vmsh_provider_ops *ops)
{
    pull_provider *p = (pull_provider *)ops;
    if (!p)
        return;
    reset(p);
    vmsh_hv_free(p->hv);
    free(p->uri);
    free(p);
}

int vmsh_pull_provider_new(vmsh_provider_ops **out, const char *uri, vmsh_error **err)
{
    pull_provider *p = calloc(1, sizeof(*p));
    if (!p || (uri && !(p->uri = strdup(uri)))) {
        free(p);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    p->ops = (vmsh_provider_ops){
        .version = VMSH_PROVIDER_OPS_VERSION,
        .name = VMSH_PULL_PROVIDER_NAME,
        .id = VMSH_PULL_PROVIDER_ID,
        .prepare = pull_prepare,
        .commit = pull_commit,
        .release = pull_release,
        .abort = pull_abort,
        .undo = pull_undo,
        .free = pull_free,
    };
    *out = &p->ops;
    return 0;
}

const vmsh_capture_ops vmsh_pull_capture_ops = {
    .version = VMSH_CAPTURE_OPS_VERSION,
    .add = vmsh_pull_provider_add,
    .add_checkpoint = vmsh_pull_provider_add_checkpoint,
    .start = vmsh_pull_provider_start,
    .cancel = vmsh_pull_provider_cancel,
    .fallback = vmsh_pull_provider_fallback,
};
