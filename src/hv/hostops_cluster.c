/* hostops_cluster.c - libvirt's host operations with the hooks a VM that a
 * Pacemaker cluster manages needs around a save (SPEC R16, issue 22;
 * include/vmshadow/hv/hostops_cluster.h), and the undo of the cluster
 * steps' journal entries. */
#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hostops_cluster.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/hvops.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct held {
    char *vm, *rsc, *prior; /* prior: the meta maintenance value before, or NULL */
    uint64_t seq;
    bool open; /* still held */
} held;

struct vmsh_cluster_host {
    vmsh_host_ops ops; /* first */
    char *state_dir;
    int64_t timeout_ms;
    vmsh_journal *j; /* made at the first hold */
    held *h;
    size_t n;
    unsigned holds;
    vmsh_hv *hv;   /* the VM writer's, seen in the hooks (borrowed) */
    char *warning; /* a release that failed in an `after` hook */
};

static const char *js(const json_object *o, const char *k)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

int vmsh_cluster_journal_create(vmsh_journal **out, const char *state_dir, const char *operation,
                                vmsh_error **err)
{
    char uuid[37], id[64];
    int r = vmsh_uuid_random(uuid, err);
    if (r < 0)
        return r;
    snprintf(id, sizeof(id), "%s%s", VMSH_CLUSTER_JOURNAL_PREFIX, uuid);
    return vmsh_journal_create(out, state_dir, id, operation, err);
}

static held *find_held(vmsh_cluster_host *h, const char *vm)
{
    for (size_t i = 0; vm && i < h->n; i++)
        if (h->h[i].open && strcmp(h->h[i].vm, vm) == 0)
            return &h->h[i];
    return NULL;
}

/* Is the VM running (or paused): may the cluster see it again? */
static bool vm_runs(vmsh_hv *hv, const char *vm)
{
    vmsh_vm_state st;
    return hv && vmsh_hv_state(hv, vm, &st, NULL) == 0 &&
           (st == VMSH_VM_RUNNING || st == VMSH_VM_PAUSED);
}

static int release(vmsh_cluster_host *h, held *x, vmsh_error **err)
{
    int r = vmsh_cluster_release(x->rsc, x->prior, h->timeout_ms, err);
    if (r < 0)
        return vmsh_error_prefix(err,
                                 "VM %s runs again, but cluster resource %s was not given back "
                                 "to the cluster",
                                 x->vm, x->rsc);
    x->open = false;
    return vmsh_journal_mark(h->j, x->seq, VMSH_JOURNAL_UNDONE, err);
}

static void note_warning(vmsh_cluster_host *h, vmsh_error *e)
{
    if (!e)
        return;
    if (!h->warning)
        h->warning = strdup(e->message);
    vmsh_error_free(e);
}

/* Before a save: the resource in maintenance, journaled first, and seen to
 * have taken effect in the CIB and in crm_mon before the VM is saved. */
static int hold(vmsh_cluster_host *h, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    if (!vm || find_held(h, vm))
        return 0;
    vmsh_cluster *c = NULL;
    int r = vmsh_cluster_probe(&c, err);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s: the cluster's state", vm);
    if (!c)
        return 0; /* no cluster (any more): nothing to hold */
    vmsh_vm *v = NULL;
    const char *uuid = NULL;
    if (vmsh_hv_get_vm(hv, vm, &v, NULL) == 0)
        uuid = v->uuid;
    const vmsh_cluster_rsc *rs = vmsh_cluster_find(c, vm, uuid, NULL);
    if (!rs) {
        vmsh_vm_free(v);
        vmsh_cluster_free(c);
        return 0;
    }
    r = vmsh_cluster_check(c, rs, vm, uuid, false, err);
    vmsh_vm_free(v);
    held *a = NULL;
    if (r == 0 && !(a = vmsh_realloc_array(h->h, h->n + 1, sizeof(*a))))
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r < 0) {
        vmsh_cluster_free(c);
        return r;
    }
    h->h = a;
    held *x = &h->h[h->n];
    *x = (held){.vm = strdup(vm),
                .rsc = strdup(rs->id),
                .prior = rs->meta_maintenance ? strdup(rs->meta_maintenance) : NULL};
    vmsh_cluster_free(c);
    if (!x->vm || !x->rsc) {
        free(x->vm);
        free(x->rsc);
        free(x->prior);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    h->n++;
    if (!h->j && (r = vmsh_cluster_journal_create(&h->j, h->state_dir, "backup", err)) < 0)
        return r;
    json_object *d = json_object_new_object();
    json_object_object_add(d, "resource", json_object_new_string(x->rsc));
    json_object_object_add(d, "vm", json_object_new_string(x->vm));
    json_object_object_add(d, "prior", x->prior ? json_object_new_string(x->prior) : NULL);
    r = vmsh_journal_begin(h->j, VMSH_CLUSTER_OWNER_ID, "cluster-hold", d, &x->seq, err);
    json_object_put(d);
    if (r < 0)
        return r;
    x->open = true;
    if ((r = vmsh_cluster_hold(x->rsc, h->timeout_ms, err)) < 0) {
        vmsh_error_prefix(err,
                          "VM %s: cluster resource %s could not be put in maintenance, so "
                          "the VM was not saved (the cluster would take the save for a "
                          "failure)",
                          vm, x->rsc);
        vmsh_error *e = NULL;
        if (release(h, x, &e) < 0)
            note_warning(h, e);
        return r;
    }
    h->holds++;
    return vmsh_journal_mark(h->j, x->seq, VMSH_JOURNAL_DONE, err);
}

static int before(const vmsh_host_ops *self, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                  vmsh_error **err)
{
    vmsh_cluster_host *h = (vmsh_cluster_host *)self;
    h->hv = hv;
    return a == VMSH_HOST_SAVE ? hold(h, hv, vm, err) : 0;
}

/* Once the VM runs again (started on its overlays, or from its state file
 * by an abort, or resumed), or when a save failed and left it running. */
static void after(const vmsh_host_ops *self, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                  int result)
{
    vmsh_cluster_host *h = (vmsh_cluster_host *)self;
    h->hv = hv;
    held *x = find_held(h, vm);
    if (!x)
        return;
    bool runs = (a == VMSH_HOST_RESTORE || a == VMSH_HOST_RESUME) && result == 0;
    if (a == VMSH_HOST_SAVE && result < 0)
        runs = vm_runs(hv, vm);
    if (!runs)
        return;
    vmsh_error *e = NULL;
    if (release(h, x, &e) < 0)
        note_warning(h, e);
}

int vmsh_cluster_host_new(vmsh_cluster_host **out, const char *state_dir, int64_t timeout_ms,
                          vmsh_error **err)
{
    vmsh_cluster_host *h = calloc(1, sizeof(*h));
    if (!h || !(h->state_dir = strdup(state_dir ? state_dir : ""))) {
        free(h);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    const vmsh_host_ops *lv = vmsh_host_ops_libvirt();
    h->ops = *lv;
    h->ops.name = "libvirt+pacemaker";
    h->ops.before = before;
    h->ops.after = after;
    h->timeout_ms = timeout_ms > 0 ? timeout_ms : VMSH_CLUSTER_TIMEOUT_MS;
    *out = h;
    return 0;
}

const vmsh_host_ops *vmsh_cluster_host_ops(vmsh_cluster_host *h)
{
    return &h->ops;
}

unsigned vmsh_cluster_host_holds(const vmsh_cluster_host *h)
{
    return h ? h->holds : 0;
}

int vmsh_cluster_host_finish(vmsh_cluster_host *h, vmsh_error **err)
{
    if (!h)
        return 0;
    int r = 0;
    for (size_t i = 0; i < h->n; i++) {
        held *x = &h->h[i];
        if (!x->open)
            continue;
        vmsh_error *e = NULL;
        if (!vm_runs(h->hv, x->vm))
            vmsh_error_set(&e, -EAGAIN,
                           "cluster resource %s stays in maintenance: VM %s does not run, and the "
                           "cluster would take it for a failure; once the VM runs again "
                           "(vmshadow recover starts a saved VM), vmshadow recover gives the "
                           "resource back",
                           x->rsc, x->vm);
        else if (release(h, x, &e) == 0)
            continue;
        if (r == 0) {
            r = e->code;
            vmsh_error_propagate(err, &e);
        }
        vmsh_error_free(e);
    }
    if (r == 0 && h->warning) {
        r = vmsh_error_set(err, -EAGAIN, "%s", h->warning);
        free(h->warning);
        h->warning = NULL;
    }
    /* Removed when nothing is held; else left, unlocked, for recover. */
    vmsh_journal_close(h->j, NULL);
    h->j = NULL;
    return r;
}

void vmsh_cluster_host_free(vmsh_cluster_host *h)
{
    if (!h)
        return;
    if (h->j)
        vmsh_cluster_host_finish(h, NULL);
    for (size_t i = 0; i < h->n; i++) {
        free(h->h[i].vm);
        free(h->h[i].rsc);
        free(h->h[i].prior);
    }
    free(h->h);
    free(h->warning);
    free(h->state_dir);
    free(h);
}

/* ---- recover */

/* Recover's first question about a journaled cluster step: is resource
 * `rsc` still in the cluster? 1 yes, 0 gone (nothing to undo), -EAGAIN
 * when the cluster does not answer (it is left `state`: recover again). */
static int rsc_present(const char *rsc, const char *vm, const char *state, vmsh_error **err)
{
    vmsh_cluster *c = NULL;
    int r = vmsh_cluster_probe(&c, err);
    if (r < 0)
        return r;
    if (!c)
        return vmsh_error_set(err, -EAGAIN,
                              "cluster resource %s (VM %s) is still %s, and the cluster does not "
                              "answer: run vmshadow recover once it does",
                              rsc, vm ? vm : "?", state);
    bool there = vmsh_cluster_find_id(c, rsc) != NULL;
    vmsh_cluster_free(c);
    return there ? 1 : 0;
}

static int undo_hold(const char *uri, const json_object *d, vmsh_error **err)
{
    const char *rsc = js(d, "resource"), *vm = js(d, "vm"), *prior = js(d, "prior");
    if (!rsc || !vm)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'cluster-hold' is missing members");
    int r = rsc_present(rsc, vm, "in maintenance", err);
    if (r <= 0)
        return r; /* the resource is gone: nothing to give back */
    vmsh_hv *hv = NULL;
    if ((r = vmsh_hv_open(&hv, uri, err)) < 0)
        return r;
    bool runs = vm_runs(hv, vm);
    vmsh_hv_free(hv);
    if (!runs)
        return vmsh_error_set(err, -EBUSY,
                              "cluster resource %s stays in maintenance: VM %s does not run, and "
                              "the cluster would take that for a failure; start the VM (or let "
                              "the cluster start it: crm_resource --resource %s --meta "
                              "--delete-parameter maintenance), then run vmshadow recover again",
                              rsc, vm, rsc);
    if ((r = vmsh_cluster_release(rsc, prior, VMSH_CLUSTER_TIMEOUT_MS, err)) < 0)
        return vmsh_error_prefix(err, "giving cluster resource %s (VM %s) back", rsc, vm);
    return 0;
}

static int undo_stop(const json_object *d, vmsh_error **err)
{
    const char *rsc = js(d, "resource"), *vm = js(d, "vm"), *prior = js(d, "prior");
    const char *node = js(d, "node");
    if (!rsc)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'cluster-stop' is missing members");
    int r = rsc_present(rsc, vm, "stopped (target-role)", err);
    if (r <= 0)
        return r;
    if ((r = vmsh_cluster_start(rsc, prior, node, VMSH_CLUSTER_TIMEOUT_MS, err)) < 0)
        return vmsh_error_prefix(err, "putting the target-role of cluster resource %s back", rsc);
    return 0;
}

static int undo_config(const json_object *d, vmsh_journal_state was, vmsh_error **err)
{
    const char *cfg = js(d, "config"), *bak = js(d, "backup");
    if (!cfg || !bak)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'cluster-config' is missing members");
    if (access(bak, F_OK) != 0)
        return 0; /* already put back or removed */
    if (was == VMSH_JOURNAL_DONE) {
        unlink(bak); /* the restored definition stays: the restore got that far */
        return 0;
    }
    if (rename(bak, cfg) < 0)
        return vmsh_error_set(err, -errno, "cannot put %s back over %s: %s", bak, cfg,
                              strerror(errno));
    return 0;
}

int vmsh_cluster_undo(const char *uri, const vmsh_journal_entry *en, vmsh_error **err)
{
    if (strcmp(en->action, "cluster-hold") == 0)
        return undo_hold(uri, en->data, err);
    if (strcmp(en->action, "cluster-stop") == 0)
        return undo_stop(en->data, err);
    if (strcmp(en->action, "cluster-config") == 0)
        return undo_config(en->data, en->state, err);
    return vmsh_error_set(err, -EINVAL, "%s: unknown journal action '%s'", VMSH_CLUSTER_OWNER_NAME,
                          en->action);
}
