/* cluster.c - the requestor's part for VMs a Pacemaker cluster manages
 * (SPEC R16, issue 22): which host operations a run gets, the refusals
 * before a backup or restore changes anything, the cluster steps around a
 * restore, and the owner of the cluster steps' journal entries for recover.
 *
 * Why around the restore and not in a host-ops hook: the cluster must have
 * stopped the VM before the VM writer plans to replace it, and the config
 * file can only be rewritten once the VM writer has registered the restored
 * VM; both ends lie outside any one VM operation. */
#include "requestor_priv.h"

#include <vmshadow/coord/json.h>
#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hostops_cluster.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the owner of the cluster steps' journal entries (recover) */

typedef struct cluster_owner {
    vmsh_provider_ops ops; /* first */
    char *uri;
} cluster_owner;

static int owner_undo(vmsh_provider_ops *self, const vmsh_journal_entry *en, vmsh_error **err)
{
    return vmsh_cluster_undo(((cluster_owner *)self)->uri, en, err);
}

static void owner_free(vmsh_provider_ops *self)
{
    cluster_owner *o = (cluster_owner *)self;
    free(o->uri);
    free(o);
}

int req_cluster_owner_new(const char *uri, vmsh_provider_ops **out)
{
    cluster_owner *o = calloc(1, sizeof(*o));
    if (!o || (uri && !(o->uri = strdup(uri)))) {
        free(o);
        return -ENOMEM;
    }
    o->ops = (vmsh_provider_ops){.version = VMSH_PROVIDER_OPS_VERSION,
                                 .name = VMSH_CLUSTER_OWNER_NAME,
                                 .id = VMSH_CLUSTER_OWNER_ID,
                                 .undo = owner_undo,
                                 .free = owner_free};
    *out = &o->ops;
    return 0;
}

int req_recover_with_cluster(const vmsh_coord_config *ccfg, const req_host *h,
                             vmsh_recover_report **out, vmsh_error **err)
{
    vmsh_provider_ops **p = vmsh_calloc_array(h->np + 1, sizeof(*p));
    if (!p)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < h->np; i++)
        p[i] = h->p[i];
    size_t np = h->np;
    if (h->cluster_owner)
        p[np++] = h->cluster_owner;
    int r = vmsh_coord_recover(ccfg, h->w, h->n, p, np, out, err);
    free(p);
    return r;
}

/* ---- backup */

int req_cluster_backup_check(const req_host *h, const vmsh_set_options *so,
                             const char *const *local_vms, size_t n_local, vmsh_error **err)
{
    if (!h->cluster)
        return 0;
    bool saves = so->method && strcmp(so->method, "saved-state") == 0;
    for (size_t i = 0; i < so->n_targets; i++) {
        const vmsh_cluster_rsc *rs = vmsh_cluster_find(h->cluster, so->targets[i], NULL, NULL);
        if (!rs)
            continue;
        vmsh_error *e = NULL;
        int r = vmsh_cluster_check(h->cluster, rs, so->targets[i], NULL, false, &e);
        /* The guest method leaves the resource alone: only another node
         * (the VM is not here) refuses it. */
        if (r < 0 && (saves || r == -EPERM)) {
            vmsh_error_propagate(err, &e);
            return r;
        }
        vmsh_error_free(e);
    }
    /* --all: a VM defined here that the cluster runs on another node would
     * be read as a shut-off VM while that node runs it (a copy of disks in
     * use, not a consistent point): refused like a named one */
    for (size_t i = 0; so->all && i < n_local; i++) {
        const vmsh_cluster_rsc *rs = vmsh_cluster_find(h->cluster, local_vms[i], NULL, NULL);
        if (rs && rs->node &&
            (!h->cluster->local_node || strcmp(rs->node, h->cluster->local_node) != 0))
            return vmsh_error_set(err, -EPERM,
                                  "VM %s is defined here, but cluster resource %s runs it on node "
                                  "%s: backup --all would copy the disks of a VM another node "
                                  "runs; back it up on %s, and name the VMs to back up here",
                                  local_vms[i], rs->id, rs->node, rs->node);
    }
    return 0;
}

int req_cluster_backup_refusals(const req_host *h, const char *uri, const vmsh_set_options *so,
                                vmsh_error **err)
{
    if (!h->cluster || !so->all)
        return req_cluster_backup_check(h, so, NULL, 0, err);
    vmsh_hv *hv = NULL;
    vmsh_vm **vms = NULL;
    size_t n = 0;
    int r = vmsh_hv_open(&hv, uri, err);
    if (r == 0)
        r = vmsh_hv_list_vms(hv, &vms, &n, err);
    const char **names = r == 0 ? vmsh_calloc_array(n ? n : 1, sizeof(*names)) : NULL;
    if (r == 0 && !names)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; r == 0 && i < n; i++)
        names[i] = vms[i]->name;
    if (r == 0)
        r = req_cluster_backup_check(h, so, names, n, err);
    free(names);
    vmsh_vm_list_free(vms, n);
    vmsh_hv_free(hv);
    return r;
}

/* ---- restore */

typedef struct rvm {
    char *vm, *rsc, *prior, *node, *config, *backup;
    uint64_t seq_stop, seq_cfg;
    bool stopping, cfg_journaled, cfg_done;
} rvm;

struct req_cluster_restore {
    rvm *v;
    size_t n;
    vmsh_journal *j;
};

void req_cluster_restore_free(req_cluster_restore *rc)
{
    if (!rc)
        return;
    for (size_t i = 0; i < rc->n; i++) {
        rvm *x = &rc->v[i];
        free(x->vm);
        free(x->rsc);
        free(x->prior);
        free(x->node);
        free(x->config);
        free(x->backup);
    }
    free(rc->v);
    vmsh_journal_close(rc->j, NULL);
    free(rc);
}

static char *dup0(const char *s)
{
    return s ? strdup(s) : NULL;
}

static json_object *plan_of(json_object *plan, const char *vm)
{
    for (size_t i = 0; plan && i < json_object_array_length(plan); i++) {
        json_object *p = json_object_array_get_idx(plan, i), *v = NULL;
        if (json_object_object_get_ex(p, "vm", &v) && strcmp(json_object_get_string(v), vm) == 0)
            return p;
    }
    return NULL;
}

static void add_step(json_object *steps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add_step(json_object *steps, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) >= 0) {
        json_object_array_add(steps, json_object_new_string(s));
        free(s);
    }
    va_end(ap);
}

int req_cluster_restore_plan(const req_host *h, vmsh_metadata *md, const vmsh_set_options *so,
                             json_object *plan, req_cluster_restore **out, vmsh_error **err)
{
    *out = NULL;
    if (!h->cluster || !md || so->restore_as)
        return 0; /* a copy (--as) is another VM: the cluster's is left alone */
    req_cluster_restore *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    for (size_t i = 0; i < vmsh_metadata_component_count(md) && r == 0; i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        const char *vm = vmsh_component_name(c);
        if (!vmsh_component_selected(c))
            continue;
        /* the backed-up VM's UUID: a config file that defines a domain of
         * the same name with another UUID is another VM's (point 4) */
        const char *uuid = vmsh_json_str(vmsh_component_extra(c), "uuid");
        const vmsh_cluster_rsc *rs = vmsh_cluster_find(h->cluster, vm, uuid, NULL);
        if (!rs)
            continue;
        /* Issue 22 point 4: refused before anything changes. */
        if ((r = vmsh_cluster_check(h->cluster, rs, vm, uuid, true, err)) < 0)
            break;
        rvm *a = vmsh_realloc_array(rc->v, rc->n + 1, sizeof(*a));
        if (!a) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        rc->v = a;
        rvm *x = &rc->v[rc->n++];
        *x = (rvm){.vm = strdup(vm),
                   .rsc = strdup(rs->id),
                   .prior = dup0(rs->meta_target_role),
                   .node = dup0(rs->node ? rs->node : h->cluster->local_node),
                   .config = strdup(rs->config)};
        if (!x->vm || !x->rsc || !x->config ||
            asprintf(&x->backup, "%s.vmshadow-prior", rs->config) < 0) {
            x->backup = NULL;
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        json_object *p = plan_of(plan, vm);
        if (!p)
            continue;
        json_object *o = json_object_new_object(), *steps = json_object_new_array();
        json_object_object_add(o, "resource", json_object_new_string(rs->id));
        json_object_object_add(o, "node", x->node ? json_object_new_string(x->node) : NULL);
        json_object_object_add(o, "config", json_object_new_string(rs->config));
        add_step(steps,
                 "stop resource %s through the cluster (target-role=Stopped) and wait "
                 "until it is stopped",
                 rs->id);
        add_step(steps, "restore VM %s", vm);
        add_step(steps, "rewrite %s with the restored definition", rs->config);
        add_step(steps, "put target-role back (%s) and wait until %s is started%s%s",
                 rs->meta_target_role ? rs->meta_target_role : "not set", rs->id,
                 x->node ? " on " : "", x->node ? x->node : "");
        json_object_object_add(o, "steps", steps);
        json_object_object_add(p, "cluster", o);
    }
    if (r < 0 || rc->n == 0) {
        req_cluster_restore_free(rc);
        return r;
    }
    *out = rc;
    return 0;
}

/* The VM writer replaces a VM it knows (R9), whose files it may then
 * overwrite (R12): the cluster's VM is transient and gone once stopped, so
 * it is defined again from the resource's config file. */
static int define_from_config(vmsh_hv *hv, const rvm *x, vmsh_error **err)
{
    vmsh_vm_state st;
    if (vmsh_hv_state(hv, x->vm, &st, NULL) == 0)
        return 0;
    _cleanup_free_ char *xml = NULL;
    size_t len = 0;
    int r = vmsh_fs_read_all(x->config, 4u << 20, &xml, &len, err);
    if (r == 0)
        r = vmsh_hv_define(hv, xml, err);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s: defining it from %s for the restore", x->vm,
                                 x->config);
    return 0;
}

int req_cluster_restore_stop(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                             req_cluster_restore *rc, vmsh_error **err)
{
    if (!rc)
        return 0;
    int r = vmsh_cluster_journal_create(&rc->j, cfg->state_dir, "restore", err);
    if (r < 0)
        return r;
    vmsh_hv *hv = NULL;
    if ((r = vmsh_hv_open(&hv, cfg->uri, err)) < 0)
        return r;
    for (size_t i = 0; i < rc->n && r == 0; i++) {
        rvm *x = &rc->v[i];
        json_object *d = json_object_new_object();
        json_object_object_add(d, "resource", json_object_new_string(x->rsc));
        json_object_object_add(d, "vm", json_object_new_string(x->vm));
        json_object_object_add(d, "prior", x->prior ? json_object_new_string(x->prior) : NULL);
        json_object_object_add(d, "node", x->node ? json_object_new_string(x->node) : NULL);
        r = vmsh_journal_begin(rc->j, VMSH_CLUSTER_OWNER_ID, "cluster-stop", d, &x->seq_stop, err);
        json_object_put(d);
        if (r < 0)
            break;
        x->stopping = true;
        req_step(cb, "cluster stop", false, 0, 0);
        if ((r = vmsh_cluster_stop(x->rsc, VMSH_CLUSTER_TIMEOUT_MS, err)) < 0)
            vmsh_error_prefix(err, "VM %s: stopping cluster resource %s", x->vm, x->rsc);
        req_step(cb, "cluster stop", true, r, 0);
        if (r == 0)
            r = vmsh_journal_mark(rc->j, x->seq_stop, VMSH_JOURNAL_DONE, err);
        if (r == 0)
            r = define_from_config(hv, x, err);
    }
    vmsh_hv_free(hv);
    return r;
}

static bool registered(json_object *done, const char *vm)
{
    json_object *p = plan_of(done, vm), *res = NULL, *ok = NULL;
    return p && json_object_object_get_ex(p, "result", &res) &&
           json_object_object_get_ex(res, "registered", &ok) && json_object_get_boolean(ok);
}

/* The restored VM's definition into the resource's config file (journaled:
 * a kill before it is written puts the prior file back), and the VM out of
 * libvirt again: the agent defines it from that file at every start (as a
 * transient domain, `virsh create`), and a managed saved state of a
 * persistent definition would be resumed stale by a later `virsh start`. */
static int rewrite(vmsh_hv *hv, req_cluster_restore *rc, rvm *x, const vmsh_requestor_callbacks *cb,
                   vmsh_error **err)
{
    _cleanup_free_ char *xml = NULL, *old = NULL;
    size_t len = 0;
    int r = vmsh_hv_domain_xml(hv, x->vm, true, &xml, err);
    if (r < 0)
        return r;
    if ((r = vmsh_fs_read_all(x->config, 4u << 20, &old, &len, err)) < 0)
        return r;
    json_object *d = json_object_new_object();
    json_object_object_add(d, "config", json_object_new_string(x->config));
    json_object_object_add(d, "backup", json_object_new_string(x->backup));
    r = vmsh_journal_begin(rc->j, VMSH_CLUSTER_OWNER_ID, "cluster-config", d, &x->seq_cfg, err);
    json_object_put(d);
    if (r < 0)
        return r;
    x->cfg_journaled = true;
    if ((r = vmsh_fs_write_atomic(x->backup, old, len, 0600, err)) < 0 ||
        (r = vmsh_cluster_write_config(x->config, xml, err)) < 0)
        return r;
    if ((r = vmsh_journal_mark(rc->j, x->seq_cfg, VMSH_JOURNAL_DONE, err)) < 0)
        return r;
    x->cfg_done = true;
    vmsh_vm *v = NULL;
    if (vmsh_hv_get_vm(hv, x->vm, &v, NULL) == 0) {
        if (v->managed_save)
            req_warn(cb,
                     "VM %s: the cluster starts it from its config file only (a fresh boot of "
                     "the restored disks); its restored memory state is not resumed",
                     x->vm);
        vmsh_vm_free(v);
        /* Not fatal: the agent undefines it itself before each start. */
        vmsh_error *e = NULL;
        if (vmsh_hv_undefine(hv, x->vm, &e) < 0)
            req_warn(cb,
                     "VM %s: its libvirt definition stays (%s); the cluster's agent removes it "
                     "at the next start",
                     x->vm, e->message);
        vmsh_error_free(e);
    }
    return 0;
}

int req_cluster_restore_end(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                            req_cluster_restore *rc, json_object *done, vmsh_error **err)
{
    if (!rc || !rc->j)
        return 0;
    vmsh_hv *hv = NULL;
    int r = 0, hr = vmsh_hv_open(&hv, cfg->uri, NULL);
    for (size_t i = 0; i < rc->n; i++) {
        rvm *x = &rc->v[i];
        if (!x->stopping)
            continue;
        vmsh_error *e = NULL;
        int q = 0;
        /* Only a VM restored and registered gets its definition written;
         * otherwise the cluster starts what it had (rolled back). */
        if (hr == 0 && registered(done, x->vm))
            q = rewrite(hv, rc, x, cb, &e);
        if (q < 0 && x->cfg_journaled && !x->cfg_done && access(x->backup, F_OK) == 0 &&
            rename(x->backup, x->config) == 0) {
            /* The prior file is back: the cluster starts the prior
             * definition rather than leave the VM stopped (R7); the error
             * still says what failed. */
            x->cfg_journaled = false;
            vmsh_journal_mark(rc->j, x->seq_cfg, VMSH_JOURNAL_UNDONE, NULL);
            req_warn(cb, "VM %s: %s; the prior %s is back and the cluster starts it", x->vm,
                     e ? e->message : "the config file was not rewritten", x->config);
            vmsh_error_free(e);
            e = NULL;
            q = 0;
            if (r == 0)
                r = vmsh_error_set(err, -EIO,
                                   "VM %s was restored, but the config file of cluster resource "
                                   "%s was not rewritten: the cluster starts its prior definition",
                                   x->vm, x->rsc);
        }
        if (q == 0) {
            req_step(cb, "cluster start", false, 0, 0);
            q = vmsh_cluster_start(x->rsc, x->prior, x->node, VMSH_CLUSTER_TIMEOUT_MS, &e);
            req_step(cb, "cluster start", true, q, 0);
            if (q < 0)
                vmsh_error_prefix(&e, "VM %s: starting cluster resource %s", x->vm, x->rsc);
        }
        if (q == 0) {
            if (x->cfg_journaled) {
                unlink(x->backup);
                q = vmsh_journal_mark(rc->j, x->seq_cfg, VMSH_JOURNAL_UNDONE, &e);
            }
            if (q == 0)
                q = vmsh_journal_mark(rc->j, x->seq_stop, VMSH_JOURNAL_UNDONE, &e);
        }
        if (q < 0 && r == 0) {
            r = q;
            vmsh_error_propagate(err, &e);
            vmsh_error_prefix(err, "the cluster steps are left for vmshadow recover");
        }
        vmsh_error_free(e);
    }
    vmsh_hv_free(hv);
    vmsh_journal_close(rc->j, NULL);
    rc->j = NULL;
    return r;
}
