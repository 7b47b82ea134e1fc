/* vms.c - what `vmshadow vms` shows (issue 21: moved from the command line,
 * which no longer reads libvirt or the method rules itself): every VM of
 * the connection with its state, disks, guest agent, and the method a
 * backup would use and why (SPEC R2, R6). */
#include "requestor_priv.h"

#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/netdisk.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/method.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_AGENT_TIMEOUT_S 3

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

/* One disk: what it is, where it is stored, whether a backup captures it
 * (R6) and how it would be read (issue 25: full or incremental, and why). */
static json_object *disk_json(const vmsh_domxml_disk *d, bool have_method, vmsh_method m,
                              vmsh_vm_state st)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "target", jstr(d->target));
    json_object_object_add(o, "source", jstr(d->source));
    json_object_object_add(o, "format", jstr(d->format));
    json_object_object_add(o, "kind", jstr(vmsh_disk_kind_name(d->kind)));
    json_object_object_add(o, "device", jstr(d->device));
    json_object_object_add(o, "readonly", json_object_new_boolean(d->readonly));
    if (d->kind == VMSH_DISK_VOLUME) {
        json_object_object_add(o, "pool", jstr(d->pool));
        json_object_object_add(o, "volume", jstr(d->volume));
        json_object_object_add(
            o, "storage",
            jstr(d->storage == VMSH_DISK_UNKNOWN ? "unresolved" : vmsh_disk_kind_name(d->storage)));
    }
    json_object_object_add(o, "protocol", jstr(d->protocol));
    json_object_object_add(o, "shareable", json_object_new_boolean(d->shareable));
    const char *excl = vmsh_method_disk_exclusion(d, 0);
    json_object_object_add(o, "excluded", json_object_new_boolean(excl != NULL));
    json_object_object_add(o, "exclusion_reason", jstr(excl));
    const char *read = NULL, *why = NULL;
    char *net_why = NULL;
    if (!excl && d->kind == VMSH_DISK_VOLUME && d->storage == VMSH_DISK_UNKNOWN) {
        read = "none";
        why = "the volume cannot be resolved through its pool (is the pool active?): a backup "
              "fails";
    } else if (!excl && have_method) {
        vmsh_disk_kind on = d->kind == VMSH_DISK_VOLUME ? d->storage : d->kind;
        /* issue 25: outside the guest method's job a QEMU of vmshadow's
         * own opens a network disk: one whose source it cannot open fails
         * the backup, with this reason */
        char *spec = NULL;
        vmsh_error *e = NULL;
        if (on == VMSH_DISK_NETWORK && m != VMSH_METHOD_GUEST &&
            vmsh_hv_netdisk_spec(d, &spec, &e) < 0 &&
            asprintf(&net_why, "a backup by this method fails: %s", e->message) >= 0) {
            read = "none";
            why = net_why;
        } else {
            read = vmsh_method_disk_read(d, m, st, &why);
        }
        free(spec);
        vmsh_error_free(e);
    }
    json_object_object_add(o, "read", jstr(read));
    json_object_object_add(o, "read_reason", jstr(why));
    free(net_why);
    return o;
}

static json_object *agent_json(const vmsh_agent_info *a)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_boolean(a && a->channel));
    json_object_object_add(o, "reachable", json_object_new_boolean(a && a->reachable));
    json_object_object_add(o, "can_freeze", json_object_new_boolean(a && a->can_freeze));
    json_object_object_add(o, "error", jstr(a ? a->error : "not probed"));
    if (a && a->fs_known) {
        json_object *fsl = json_object_new_array();
        for (size_t i = 0; i < a->n_fs; i++) {
            json_object *f = json_object_new_object();
            json_object_object_add(f, "mountpoint", jstr(a->fs[i].mountpoint));
            json_object_object_add(f, "type", jstr(a->fs[i].type));
            json_object_array_add(fsl, f);
        }
        json_object_object_add(o, "filesystems", fsl);
    }
    return o;
}

/* Issue 22 (SPEC R16): the Pacemaker resource that manages the VM, or null. */
static json_object *cluster_json(const vmsh_cluster *c, const vmsh_cluster_rsc *r, bool mismatch)
{
    if (!r)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "resource", jstr(r->id));
    json_object_object_add(o, "node", jstr(r->node));
    json_object_object_add(o, "role", jstr(r->role));
    const char *mode = vmsh_cluster_rsc_mode(c, r);
    json_object_object_add(o, "mode", jstr(mode));
    json_object_object_add(o, "managed", json_object_new_boolean(strcmp(mode, "managed") == 0));
    json_object_object_add(o, "maintenance",
                           json_object_new_boolean(strcmp(mode, "maintenance") == 0));
    json_object_object_add(o, "failed", json_object_new_boolean(r->failed));
    json_object_object_add(o, "fail_count", json_object_new_int(r->fail_count));
    json_object_object_add(o, "config", jstr(r->config));
    json_object_object_add(o, "config_names_other_domain", json_object_new_boolean(mismatch));
    json_object_object_add(o, "quorum", json_object_new_boolean(c->quorum));
    return o;
}

static bool wanted(const vmsh_vm *vm, const char *const *names, size_t n)
{
    if (n == 0)
        return true;
    for (size_t k = 0; k < n; k++)
        if (strcmp(names[k], vm->name) == 0)
            return true;
    return false;
}

int vmsh_requestor_vms(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                       const char *const *names, size_t n_names, const char *method,
                       struct json_object **out, vmsh_error **err)
{
    vmsh_method requested = VMSH_METHOD_AUTO;
    if (method && vmsh_method_parse(method, &requested) < 0)
        return vmsh_error_set(err, -EINVAL, "unknown method '%s'", method);
    long agent_timeout = DEFAULT_AGENT_TIMEOUT_S;
    int r;
    if ((r = vmsh_kvconf_get_int(cfg->conf, "agent-timeout", 1, 300, &agent_timeout, err)) < 0)
        return r;
    const char *scratch_dir = vmsh_kvconf_get(cfg->conf, "scratch-dir");
    vmsh_hv *hv = NULL;
    if ((r = vmsh_hv_open(&hv, cfg->uri, err)) < 0)
        return r;
    vmsh_vm **vms = NULL;
    size_t n = 0;
    if ((r = vmsh_hv_list_vms(hv, &vms, &n, err)) < 0) {
        vmsh_hv_free(hv);
        return r;
    }
    /* A name that is no VM is an error, as for backup (issue 24): an empty
     * list would read as "nothing to do". */
    for (size_t k = 0; k < n_names; k++) {
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = strcmp(names[k], vms[i]->name) == 0;
        if (!found) {
            r = vmsh_error_set(err, -ENOENT, "no VM named '%s' on %s", names[k], vmsh_hv_uri(hv));
            vmsh_vm_list_free(vms, n);
            vmsh_hv_free(hv);
            return r;
        }
    }
    /* Nothing at all on a host without Pacemaker; a cluster that does not
     * answer is a warning, not a failure of the listing. */
    vmsh_cluster *cluster = NULL;
    vmsh_error *cerr = NULL;
    if (vmsh_cluster_probe(&cluster, &cerr) < 0) {
        req_warn(cb, "%s", cerr->message);
        vmsh_error_free(cerr);
    }
    json_object *list = json_object_new_array();
    for (size_t i = 0; list && i < n; i++) {
        vmsh_vm *vm = vms[i];
        if (!wanted(vm, names, n_names))
            continue;
        vmsh_agent_info *agent = NULL;
        vmsh_error *e = NULL;
        if (vmsh_hv_agent_probe(hv, vm, (int)agent_timeout, &agent, &e) < 0) {
            req_warn(cb, "%s", e->message);
            vmsh_error_free(e);
        }
        vmsh_method_choice mc = {0};
        const char *m = NULL, *reason = NULL;
        vmsh_error *merr = NULL;
        if (vmsh_method_choose(vm, agent, scratch_dir, 0, requested, &mc, &merr) < 0) {
            m = "none";
            reason = merr->message;
        } else {
            m = vmsh_method_name(mc.method);
            reason = mc.reason;
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", jstr(vm->name));
        json_object_object_add(o, "uuid", jstr(vm->uuid));
        json_object_object_add(o, "state", jstr(vmsh_vm_state_name(vm->state)));
        json_object_object_add(o, "persistent", json_object_new_boolean(vm->persistent));
        json_object_object_add(o, "managed_save", json_object_new_boolean(vm->managed_save));
        json_object *disks = json_object_new_array();
        for (size_t d = 0; vm->xml && d < vm->xml->n_disks; d++)
            json_object_array_add(
                disks, disk_json(&vm->xml->disks[d], merr == NULL, mc.method, vm->state));
        json_object_object_add(o, "disks", disks);
        json_object_object_add(o, "xml_error", jstr(vm->xml_error));
        json_object_object_add(o, "agent", agent_json(agent));
        json_object_object_add(o, "method", jstr(m));
        json_object_object_add(o, "reason", jstr(reason));
        bool mismatch = false;
        const vmsh_cluster_rsc *crsc = vmsh_cluster_find(cluster, vm->name, vm->uuid, &mismatch);
        json_object_object_add(o, "cluster", cluster_json(cluster, crsc, mismatch));
        json_object_array_add(list, o);
        vmsh_error_free(merr);
        vmsh_method_choice_clear(&mc);
        vmsh_agent_info_free(agent);
    }
    json_object *doc = json_object_new_object();
    if (!list || !doc) {
        json_object_put(list);
        json_object_put(doc);
        vmsh_cluster_free(cluster);
        vmsh_vm_list_free(vms, n);
        vmsh_hv_free(hv);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    json_object_object_add(doc, "uri", jstr(vmsh_hv_uri(hv)));
    json_object_object_add(doc, "vms", list);
    vmsh_cluster_free(cluster);
    vmsh_vm_list_free(vms, n);
    vmsh_hv_free(hv);
    *out = doc;
    return 0;
}
