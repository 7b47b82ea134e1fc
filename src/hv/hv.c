/* hv.c - libvirt connection, domain listing and the guest agent. */
#include <vmshadow/hv/hv.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "hv_private.h"

struct vmsh_hv {
    virConnectPtr conn;
    char *uri;
};

/* libvirt prints every error on stderr by default; the library must not
 * print (only the CLI reports), so errors are read with virGetLastError. */
static void silent_error(void *data, virErrorPtr e) {}

static const char *lv_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

const char *vmsh_vm_state_name(vmsh_vm_state s)
{
    switch (s) {
    case VMSH_VM_RUNNING:
        return "running";
    case VMSH_VM_PAUSED:
        return "paused";
    case VMSH_VM_SHUTOFF:
        return "shut off";
    case VMSH_VM_OTHER:
        break;
    }
    return "other";
}

int vmsh_hv_open(vmsh_hv **out, const char *uri, vmsh_error **err)
{
    virSetErrorFunc(NULL, silent_error);
    if (virInitialize() < 0)
        return vmsh_error_set(err, -EIO, "cannot initialise libvirt: %s", lv_msg());
    virConnectPtr c = virConnectOpen(uri);
    if (!c)
        return vmsh_error_set(err, -ECONNREFUSED,
                              "cannot connect to libvirt at %s: %s (is libvirtd running? "
                              "check -c/--connect or LIBVIRT_DEFAULT_URI)",
                              uri ? uri : "the default URI", lv_msg());
    vmsh_hv *hv = calloc(1, sizeof(*hv));
    char *u = virConnectGetURI(c);
    if (!hv || !u) {
        free(hv);
        free(u);
        virConnectClose(c);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    hv->conn = c;
    hv->uri = u;
    *out = hv;
    return 0;
}

void vmsh_hv_free(vmsh_hv *hv)
{
    if (!hv)
        return;
    if (hv->conn)
        virConnectClose(hv->conn);
    free(hv->uri);
    free(hv);
}

const char *vmsh_hv_uri(const vmsh_hv *hv)
{
    return hv->uri;
}

virConnectPtr vmsh_hv_conn(vmsh_hv *hv)
{
    return hv->conn;
}

void vmsh_vm_free(vmsh_vm *vm)
{
    if (!vm)
        return;
    free(vm->name);
    free(vm->uuid);
    free(vm->xml_text);
    vmsh_domxml_free(vm->xml);
    free(vm->xml_error);
    free(vm);
}

void vmsh_vm_list_free(vmsh_vm **vms, size_t n)
{
    for (size_t i = 0; vms && i < n; i++)
        vmsh_vm_free(vms[i]);
    free(vms);
}

vmsh_vm_state vmsh_hv_map_state(int st)
{
    switch (st) {
    case VIR_DOMAIN_RUNNING:
        return VMSH_VM_RUNNING;
    case VIR_DOMAIN_PAUSED:
        return VMSH_VM_PAUSED;
    case VIR_DOMAIN_SHUTOFF:
        return VMSH_VM_SHUTOFF;
    default:
        return VMSH_VM_OTHER;
    }
}

static int vm_from_domain(virDomainPtr d, vmsh_vm **out, vmsh_error **err)
{
    vmsh_vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    const char *name = virDomainGetName(d);
    char uuid[VIR_UUID_STRING_BUFLEN];
    int st = 0, reason = 0;
    vm->name = strdup(name ? name : "?");
    if (virDomainGetUUIDString(d, uuid) == 0)
        vm->uuid = strdup(uuid);
    if (virDomainGetState(d, &st, &reason, 0) < 0) {
        int r =
            vmsh_error_set(err, -ENOENT, "cannot read the state of VM %s: %s", vm->name, lv_msg());
        vmsh_vm_free(vm);
        return r;
    }
    vm->libvirt_state = st;
    vm->state = vmsh_hv_map_state(st);
    vm->persistent = virDomainIsPersistent(d) == 1;
    vm->managed_save = virDomainHasManagedSaveImage(d, 0) == 1;
    vm->xml_text = virDomainGetXMLDesc(d, 0);
    if (!vm->xml_text) {
        int r =
            vmsh_error_set(err, -ENOENT, "cannot read the XML of VM %s: %s", vm->name, lv_msg());
        vmsh_vm_free(vm);
        return r;
    }
    vmsh_error *perr = NULL;
    if (vmsh_domxml_parse(&vm->xml, vm->xml_text, strlen(vm->xml_text), &perr) < 0) {
        vm->xml_error = strdup(perr->message);
        vmsh_error_free(perr);
    }
    if (!vm->name) {
        vmsh_vm_free(vm);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = vm;
    return 0;
}

static int cmp_vm(const void *a, const void *b)
{
    return strcmp((*(vmsh_vm *const *)a)->name, (*(vmsh_vm *const *)b)->name);
}

int vmsh_hv_list_vms(vmsh_hv *hv, vmsh_vm ***out, size_t *n, vmsh_error **err)
{
    virDomainPtr *doms = NULL;
    int nd = virConnectListAllDomains(hv->conn, &doms, 0);
    if (nd < 0)
        return vmsh_error_set(err, -EIO, "cannot list the VMs of %s: %s", hv->uri, lv_msg());
    vmsh_vm **vms = vmsh_calloc_array((size_t)nd, sizeof(*vms));
    size_t got = 0;
    int r = vms ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    for (int i = 0; i < nd; i++) {
        if (r == 0) {
            vmsh_error *one = NULL;
            int q = vm_from_domain(doms[i], &vms[got], &one);
            if (q == 0)
                got++;
            else if (q == -ENOENT)
                vmsh_error_free(one); /* undefined while we listed: not an error */
            else
                vmsh_error_propagate(err, &one), r = q;
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    if (r < 0) {
        vmsh_vm_list_free(vms, got);
        return r;
    }
    qsort(vms, got, sizeof(*vms), cmp_vm);
    *out = vms;
    *n = got;
    return 0;
}

int vmsh_hv_get_vm(vmsh_hv *hv, const char *name, vmsh_vm **out, vmsh_error **err)
{
    virDomainPtr d = virDomainLookupByName(hv->conn, name);
    if (!d)
        return vmsh_error_set(err, -ENOENT, "no VM named '%s' on %s (see 'vmshadow vms')", name,
                              hv->uri);
    int r = vm_from_domain(d, out, err);
    virDomainFree(d);
    return r;
}

void vmsh_agent_info_free(vmsh_agent_info *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_fs; i++) {
        free(a->fs[i].mountpoint);
        free(a->fs[i].type);
        for (size_t j = 0; j < a->fs[i].n_devs; j++)
            free(a->fs[i].devs[j]);
        free(a->fs[i].devs);
    }
    free(a->fs);
    free(a->error);
    free(a);
}

/* Runs one agent command; returns the parsed "return" member (caller puts
 * it) or NULL with *why set. The reply is the guest's: parsed defensively. */
static json_object *agent_call(virDomainPtr d, const char *cmd, int timeout_s, char **why)
{
    char *reply = virDomainQemuAgentCommand(d, cmd, timeout_s, 0);
    if (!reply) {
        free(*why);
        *why = strdup(lv_msg());
        return NULL;
    }
    json_object *doc = json_tokener_parse(reply);
    free(reply);
    json_object *ret = NULL;
    if (!doc || !json_object_object_get_ex(doc, "return", &ret)) {
        free(*why);
        *why = strdup("the guest agent sent a reply that is not valid JSON");
        json_object_put(doc);
        return NULL;
    }
    json_object_get(ret);
    json_object_put(doc);
    return ret;
}

static bool command_enabled(json_object *info, const char *name)
{
    json_object *cmds = NULL;
    if (!json_object_object_get_ex(info, "supported_commands", &cmds) ||
        !json_object_is_type(cmds, json_type_array))
        return false;
    size_t n = json_object_array_length(cmds);
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(cmds, i), *nm = NULL, *en = NULL;
        if (json_object_object_get_ex(c, "name", &nm) &&
            json_object_is_type(nm, json_type_string) &&
            strcmp(json_object_get_string(nm), name) == 0)
            return json_object_object_get_ex(c, "enabled", &en) && json_object_get_boolean(en);
    }
    return false;
}

static char *json_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return strdup(json_object_get_string(v));
}

/* Guest filesystems; bounded so a hostile agent cannot make us allocate
 * without limit. */
#define AGENT_MAX_FS   256
#define AGENT_MAX_DEVS 64

static int read_fsinfo(vmsh_agent_info *a, json_object *list)
{
    if (!json_object_is_type(list, json_type_array))
        return -EINVAL;
    size_t n = json_object_array_length(list);
    if (n > AGENT_MAX_FS)
        n = AGENT_MAX_FS;
    a->fs = vmsh_calloc_array(n, sizeof(*a->fs));
    if (!a->fs)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_object *f = json_object_array_get_idx(list, i), *disks = NULL;
        vmsh_agent_fs *fs = &a->fs[a->n_fs++];
        fs->mountpoint = json_str(f, "mountpoint");
        fs->type = json_str(f, "type");
        if (json_object_object_get_ex(f, "disk", &disks) &&
            json_object_is_type(disks, json_type_array)) {
            size_t nd = json_object_array_length(disks);
            if (nd > AGENT_MAX_DEVS)
                nd = AGENT_MAX_DEVS;
            fs->devs = vmsh_calloc_array(nd, sizeof(char *));
            if (!fs->devs)
                return -ENOMEM;
            for (size_t j = 0; j < nd; j++) {
                char *dev = json_str(json_object_array_get_idx(disks, j), "dev");
                if (dev)
                    fs->devs[fs->n_devs++] = dev;
            }
        }
    }
    return 0;
}

int vmsh_hv_agent_probe(vmsh_hv *hv, const char *vm_name, int timeout_s, vmsh_agent_info **out,
                        vmsh_error **err)
{
    virDomainPtr d = virDomainLookupByName(hv->conn, vm_name);
    if (!d)
        return vmsh_error_set(err, -ENOENT, "no VM named '%s' on %s", vm_name, hv->uri);
    vmsh_agent_info *a = calloc(1, sizeof(*a));
    if (!a) {
        virDomainFree(d);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    char *xml = virDomainGetXMLDesc(d, 0);
    vmsh_domxml *x = NULL;
    if (xml && vmsh_domxml_parse(&x, xml, strlen(xml), NULL) == 0)
        a->channel = x->agent_channel;
    int st = 0, reason = 0;
    virDomainGetState(d, &st, &reason, 0);
    if (!a->channel) {
        a->error = strdup("the VM has no guest agent channel");
    } else if (st != VIR_DOMAIN_RUNNING) {
        a->error = strdup("the VM is not running");
    } else if (x && x->agent_connected == 0) {
        a->error = strdup("the guest agent is not connected (not installed or not started in "
                          "the guest)");
    } else {
        json_object *ping = agent_call(d, "{\"execute\":\"guest-ping\"}", timeout_s, &a->error);
        a->reachable = ping != NULL;
        json_object_put(ping);
    }
    if (a->reachable) {
        json_object *info = agent_call(d, "{\"execute\":\"guest-info\"}", timeout_s, &a->error);
        a->can_freeze = info && command_enabled(info, "guest-fsfreeze-freeze") &&
                        command_enabled(info, "guest-fsfreeze-thaw");
        bool has_fsinfo = info && command_enabled(info, "guest-get-fsinfo");
        json_object_put(info);
        if (has_fsinfo) {
            json_object *fsl =
                agent_call(d, "{\"execute\":\"guest-get-fsinfo\"}", timeout_s, &a->error);
            if (fsl) {
                int r = read_fsinfo(a, fsl);
                a->fs_known = r == 0;
                if (r == -EINVAL && !a->error)
                    a->error = strdup("the guest agent's filesystem list is malformed");
            }
            json_object_put(fsl);
        }
    }
    vmsh_domxml_free(x);
    free(xml);
    virDomainFree(d);
    *out = a;
    return 0;
}
