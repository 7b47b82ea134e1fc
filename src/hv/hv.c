/* hv.c - libvirt connection, domain listing and the guest agent. */
#include <vmshadow/hv/agent_reply.h>
#include <vmshadow/hv/hv.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>
#include <libxml/xmlerror.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "hv_private.h"

/* Domains looked up by name in this connection's life: a backup asks
 * libvirt about the same VM a dozen times, each lookup a round trip
 * (0.2-3 ms while libvirtd is busy with the guest's freeze). A domain
 * pointer names the VM by UUID: it stays good across stops, starts and
 * restores, and what changes a VM's identity here (define, undefine, a
 * restore of a saved state, a new connection) empties the cache. The
 * domain ID is read afresh (vmsh_hv_domain_id): a cached pointer keeps the
 * ID of its lookup. One thread per vmsh_hv, as for the connection.
 * Off unless asked for (vmsh_hv_cache_domains): a lookup is also how a
 * connection to a libvirtd that restarted is found dead and renewed, which
 * undo and recovery need (R7); the snapshot path turns it on and an abort
 * off again. */
#define DOMAIN_CACHE 8

struct vmsh_hv {
    virConnectPtr conn;
    char *uri;
    struct {
        char *name;
        virDomainPtr d;
    } doms[DOMAIN_CACHE];
    size_t n_doms;
    bool cache_on;
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

/* libxml2 prints its warnings (e.g. "I/O warning: failed to load external
 * entity" for a test:///FILE URI) on stderr unless told otherwise. */
static void silent_xml_error(void *ctx, const char *msg, ...) {}

/* Why a connection could not be opened, in the user's terms (issue 24):
 * the file a test:/// URI names, the daemon's socket, permission. */
static int open_error(const char *uri, vmsh_error **err)
{
    virErrorPtr e = virGetLastError();
    const char *m = lv_msg();
    int len = (int)strcspn(m, "\n"); /* libvirt quotes the file's line below */
    const char *u = uri ? uri : "the default URI";
    int sys = e && e->code == VIR_ERR_SYSTEM_ERROR ? e->int1 : 0;
    if (e && (e->code == VIR_ERR_XML_ERROR || e->code == VIR_ERR_XML_DETAIL))
        return vmsh_error_set(err, -EINVAL,
                              "cannot connect to libvirt at %s: the file it names cannot be read "
                              "or parsed as a libvirt test driver definition: %.*s",
                              u, len, m);
    if (sys == ENOENT || sys == ECONNREFUSED)
        return vmsh_error_set(err, -ECONNREFUSED,
                              "cannot connect to libvirt at %s: the libvirt daemon is not running "
                              "or not listening there (%.*s): is libvirtd running? Start it "
                              "(systemctl start libvirtd) or check -c/--connect and "
                              "LIBVIRT_DEFAULT_URI",
                              u, len, m);
    if (sys == EACCES || sys == EPERM ||
        (e && (e->code == VIR_ERR_AUTH_FAILED || e->code == VIR_ERR_AUTH_CANCELLED ||
               e->code == VIR_ERR_AUTH_UNAVAILABLE || e->code == VIR_ERR_OPERATION_DENIED)))
        return vmsh_error_set(err, -EACCES,
                              "cannot connect to libvirt at %s: permission denied (%.*s); run "
                              "as root or as a member of the libvirt group",
                              u, len, m);
    if (e && e->code == VIR_ERR_NO_CONNECT)
        return vmsh_error_set(err, -EINVAL,
                              "cannot connect to libvirt at %s: no libvirt driver for this URI "
                              "(%.*s); check -c/--connect and LIBVIRT_DEFAULT_URI",
                              u, len, m);
    return vmsh_error_set(err, -ECONNREFUSED,
                          "cannot connect to libvirt at %s: %.*s (check -c/--connect and "
                          "LIBVIRT_DEFAULT_URI)",
                          u, len, m);
}

int vmsh_hv_open(vmsh_hv **out, const char *uri, vmsh_error **err)
{
    virSetErrorFunc(NULL, silent_error);
    xmlSetGenericErrorFunc(NULL, silent_xml_error);
    if (virInitialize() < 0)
        return vmsh_error_set(err, -EIO, "cannot initialise libvirt: %s", lv_msg());
    virConnectPtr c = virConnectOpen(uri);
    if (!c)
        return open_error(uri, err);
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

void vmsh_hv_forget_domains(vmsh_hv *hv, const char *name)
{
    size_t kept = 0;
    for (size_t i = 0; i < hv->n_doms; i++) {
        if (name && strcmp(hv->doms[i].name, name) != 0) {
            hv->doms[kept++] = hv->doms[i];
            continue;
        }
        free(hv->doms[i].name);
        virDomainFree(hv->doms[i].d);
    }
    hv->n_doms = kept;
}

void vmsh_hv_cache_domains(vmsh_hv *hv, bool on)
{
    hv->cache_on = on;
    if (!on)
        vmsh_hv_forget_domains(hv, NULL);
}

virDomainPtr vmsh_hv_lookup(vmsh_hv *hv, const char *name)
{
    if (!hv->cache_on)
        return virDomainLookupByName(vmsh_hv_conn(hv), name);
    for (size_t i = 0; i < hv->n_doms; i++)
        if (strcmp(hv->doms[i].name, name) == 0 && virDomainRef(hv->doms[i].d) == 0)
            return hv->doms[i].d;
    virDomainPtr d = virDomainLookupByName(vmsh_hv_conn(hv), name);
    if (!d)
        return NULL;
    if (hv->n_doms == DOMAIN_CACHE) { /* the oldest goes */
        free(hv->doms[0].name);
        virDomainFree(hv->doms[0].d);
        memmove(&hv->doms[0], &hv->doms[1], (DOMAIN_CACHE - 1) * sizeof(hv->doms[0]));
        hv->n_doms--;
    }
    char *n = strdup(name);
    if (n && virDomainRef(d) == 0) {
        hv->doms[hv->n_doms].name = n;
        hv->doms[hv->n_doms].d = d;
        hv->n_doms++;
    } else {
        free(n);
    }
    return d;
}

void vmsh_hv_free(vmsh_hv *hv)
{
    if (!hv)
        return;
    vmsh_hv_forget_domains(hv, NULL);
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
    /* libvirtd may have restarted since the connection was opened (a local
     * check, no round trip): reconnect, so that ending a backup job or
     * thawing a guest still reaches the VM (R7). On failure the dead
     * connection stays and the call reports libvirt's error. */
    if (virConnectIsAlive(hv->conn) == 0) {
        virConnectPtr c = virConnectOpen(hv->uri);
        if (c) {
            vmsh_hv_forget_domains(hv, NULL); /* they belong to the old connection */
            virConnectClose(hv->conn);
            hv->conn = c;
        }
    }
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

static bool path_is_block(const char *path, void *ctx)
{
    (void)ctx;
    struct stat st;
    return stat(path, &st) == 0 && S_ISBLK(st.st_mode);
}

static int volume_path(virConnectPtr conn, const char *pool, const char *vol, char **path,
                       vmsh_disk_kind *kind, vmsh_error **err)
{
    *path = NULL;
    virStoragePoolPtr p = conn ? virStoragePoolLookupByName(conn, pool) : NULL;
    virStorageVolPtr v = p ? virStorageVolLookupByName(p, vol) : NULL;
    virStorageVolInfo info;
    char *got = v ? virStorageVolGetPath(v) : NULL;
    int r = 0;
    if (!v)
        r = vmsh_error_set(err, -ENOENT, "no volume %s in storage pool %s (or it is not active)",
                           vol, pool);
    else if (!got || virStorageVolGetInfo(v, &info) < 0)
        r = vmsh_error_set(err, -EIO, "cannot read the volume %s of pool %s: %s", vol, pool,
                           lv_msg());
    else if ((*kind = info.type == VIR_STORAGE_VOL_FILE    ? VMSH_DISK_FILE
                      : info.type == VIR_STORAGE_VOL_BLOCK ? VMSH_DISK_BLOCK
                      : info.type == VIR_STORAGE_VOL_NETWORK
                          ? VMSH_DISK_NETWORK
                          : VMSH_DISK_UNKNOWN) == VMSH_DISK_UNKNOWN)
        r = vmsh_error_set(err, -ENOTSUP, "the volume %s of pool %s is of a kind not handled here",
                           vol, pool);
    if (r == 0)
        *path = got, got = NULL;
    free(got);
    if (v)
        virStorageVolFree(v);
    if (p)
        virStoragePoolFree(p);
    virResetLastError();
    return r;
}

int vmsh_hv_volume_path(vmsh_hv *hv, const char *pool, const char *vol, char **path,
                        vmsh_disk_kind *kind, vmsh_error **err)
{
    return volume_path(vmsh_hv_conn(hv), pool, vol, path, kind, err);
}

int hv_pool_set_network(virStoragePoolPtr p, vmsh_domxml_disk *d)
{
    char *xml = virStoragePoolGetXMLDesc(p, 0);
    if (!xml)
        return -EIO;
    int r = vmsh_domxml_disk_set_pool_network(d, xml, strlen(xml));
    free(xml);
    return r;
}

/* Issue 23 (R6): a volume of a network pool is opened over the network as
 * its pool says (an RBD pool: its monitors and cephx user); without that
 * (another pool type, a pool that cannot be read) the disk has no protocol
 * and a QEMU of vmshadow's own refuses it with the reason
 * (vmsh_hv_netdisk_spec). */
static void pool_network(virConnectPtr conn, vmsh_domxml_disk *dk)
{
    virStoragePoolPtr p = virStoragePoolLookupByName(conn, dk->pool);
    if (p) {
        hv_pool_set_network(p, dk);
        virStoragePoolFree(p);
    }
    virResetLastError();
}

/* Issue 25 (R6): a type='volume' disk is whatever its pool stores it as;
 * libvirt resolves it. A pool that is not active leaves it unresolved
 * (storage UNKNOWN), which the VM writer reports as an error. */
static void resolve_volumes(virConnectPtr conn, vmsh_domxml *x)
{
    for (size_t i = 0; conn && x && i < x->n_disks; i++) {
        vmsh_domxml_disk *dk = &x->disks[i];
        if (dk->kind != VMSH_DISK_VOLUME || !dk->pool || !dk->volume)
            continue;
        char *path = NULL;
        vmsh_disk_kind k = VMSH_DISK_UNKNOWN;
        if (volume_path(conn, dk->pool, dk->volume, &path, &k, NULL) == 0 &&
            vmsh_domxml_disk_set_volume(dk, path, k) == 0 && k == VMSH_DISK_NETWORK)
            pool_network(conn, dk);
        free(path);
    }
}

void vmsh_hv_resolve_volumes(vmsh_hv *hv, vmsh_domxml *x)
{
    resolve_volumes(vmsh_hv_conn(hv), x);
}

/* A running VM's pool volumes as its persistent definition names them:
 * after the saved-state method's block commit libvirt describes such a disk
 * in the live definition as the file or device it resolved to (issue 25,
 * R6: `vms` and the backup would otherwise call it a file). Best effort: a
 * definition that cannot be read leaves the live description. */
/* Whether a volume of the persistent definition has a file or device disk
 * of the same target in the live one: only then are its pools asked. */
static bool volume_behind_file(const vmsh_domxml *live, const vmsh_domxml *px)
{
    for (size_t j = 0; j < px->n_disks; j++) {
        const vmsh_domxml_disk *p = &px->disks[j];
        for (size_t i = 0; p->kind == VMSH_DISK_VOLUME && p->target && i < live->n_disks; i++) {
            const vmsh_domxml_disk *l = &live->disks[i];
            if ((l->kind == VMSH_DISK_FILE || l->kind == VMSH_DISK_BLOCK) && l->target &&
                strcmp(l->target, p->target) == 0)
                return true;
        }
    }
    return false;
}

static void adopt_persistent_volumes(virDomainPtr d, vmsh_domxml *live)
{
    char *text = virDomainGetXMLDesc(d, VIR_DOMAIN_XML_INACTIVE);
    vmsh_domxml *px = NULL;
    vmsh_error *e = NULL;
    if (text && vmsh_domxml_parse(&px, text, strlen(text), &e) == 0 &&
        volume_behind_file(live, px)) {
        resolve_volumes(virDomainGetConnect(d), px);
        vmsh_domxml_mark_block_nodes(px, path_is_block, NULL);
        for (size_t i = 0; i < live->n_disks; i++)
            for (size_t j = 0; j < px->n_disks; j++)
                if (vmsh_domxml_disk_adopt_volume(&live->disks[i], &px->disks[j]) != 0)
                    break;
    }
    vmsh_error_free(e);
    vmsh_domxml_free(px);
    free(text);
    virResetLastError();
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
    } else {
        resolve_volumes(virDomainGetConnect(d), vm->xml);
        vmsh_domxml_mark_block_nodes(vm->xml, path_is_block, NULL);
        if (vm->persistent && st != VIR_DOMAIN_SHUTOFF)
            adopt_persistent_volumes(d, vm->xml);
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
    int nd = virConnectListAllDomains(vmsh_hv_conn(hv), &doms, 0);
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
    virDomainPtr d = vmsh_hv_lookup(hv, name);
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
    vmsh_agent_fs_array_free(a->fs, a->n_fs);
    free(a->error);
    free(a);
}

/* Runs one agent command; returns its reply (caller frees) or NULL with
 * *why set. The reply is the guest's: agent_reply.c parses it. */
static char *agent_call(virDomainPtr d, const char *cmd, int timeout_s, char **why)
{
    char *reply = virDomainQemuAgentCommand(d, cmd, timeout_s, 0);
    if (!reply) {
        free(*why);
        *why = strdup(lv_msg());
    }
    return reply;
}

/* Keeps a parse error as the probe's "why" (replacing an earlier one). */
static void set_why(char **why, vmsh_error *e)
{
    free(*why);
    *why = strdup(e ? e->message : "out of memory");
    vmsh_error_free(e);
}

int vmsh_hv_agent_probe(vmsh_hv *hv, const vmsh_vm *vm, int timeout_s, vmsh_agent_info **out,
                        vmsh_error **err)
{
    virDomainPtr d = vmsh_hv_lookup(hv, vm->name);
    if (!d)
        return vmsh_error_set(err, -ENOENT, "no VM named '%s' on %s", vm->name, hv->uri);
    vmsh_agent_info *a = calloc(1, sizeof(*a));
    if (!a) {
        virDomainFree(d);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* The channel and its state as get_vm/list_vms read them a moment ago:
     * asking again costs two round trips and a parse (the agent's own
     * answer below is what counts). */
    const vmsh_domxml *x = vm->xml;
    if (x)
        a->channel = x->agent_channel;
    if (!a->channel) {
        a->error = strdup("the VM has no guest agent channel");
    } else if (vm->libvirt_state != VIR_DOMAIN_RUNNING) {
        a->error = strdup("the VM is not running");
    } else if (x->agent_connected == 0) {
        a->error = strdup("the guest agent is not connected (not installed or not started in "
                          "the guest)");
    } else {
        /* guest-info answers whether the agent is reachable too: one round
         * trip less than a guest-ping first (each costs a guest-sync as
         * well, and a TCG guest answers slowly) */
        char *info = agent_call(d, "{\"execute\":\"guest-info\"}", timeout_s, &a->error);
        vmsh_agent_caps caps = {0};
        vmsh_error *e = NULL;
        a->reachable = info && vmsh_agent_reply_return(info, strlen(info), NULL, &e) == 0;
        if (info && !a->reachable)
            set_why(&a->error, e);
        else if (info && vmsh_agent_parse_info(info, strlen(info), &caps, &e) < 0)
            set_why(&a->error, e);
        free(info);
        a->can_freeze = caps.can_freeze;
        if (caps.has_fsinfo) {
            char *fsl = agent_call(d, "{\"execute\":\"guest-get-fsinfo\"}", timeout_s, &a->error);
            if (fsl) {
                a->fs_known = vmsh_agent_parse_fsinfo(fsl, strlen(fsl), &a->fs, &a->n_fs, &e) == 0;
                if (!a->fs_known)
                    set_why(&a->error, e);
            }
            free(fsl);
        }
    }
    virDomainFree(d);
    *out = a;
    return 0;
}
