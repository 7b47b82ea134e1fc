/* hvops.c - operations that change a VM. */
#include <vmshadow/hv/agent_reply.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "hv_private.h"

static int lookup(vmsh_hv *hv, const char *vm, virDomainPtr *out, vmsh_error **err)
{
    *out = vmsh_hv_lookup(hv, vm);
    virErrorPtr e = *out ? NULL : virGetLastError();
    /* a connection to a libvirtd that restarted is seen dead only once it
     * failed a call: then vmsh_hv_conn reconnects, and one retry follows */
    if (!*out && e && e->code != VIR_ERR_NO_DOMAIN) {
        *out = vmsh_hv_lookup(hv, vm);
        e = *out ? NULL : virGetLastError();
    }
    if (*out)
        return 0;
    /* only "no such domain" means the VM is gone: callers take -ENOENT as
     * "nothing left to undo", which a dead connection must not pass for */
    if (e && e->code != VIR_ERR_NO_DOMAIN)
        return vmsh_error_set(err, -EIO, "cannot look up VM %s on %s: %s", vm, vmsh_hv_uri(hv),
                              e->message ? e->message : "unknown libvirt error");
    return vmsh_error_set(err, -ENOENT, "no VM named '%s' on %s", vm, vmsh_hv_uri(hv));
}

/* A libvirt failure as an error: timeouts and refusals of the agent get
 * their own codes so that callers can say what to do. */
static int lv_fail(vmsh_error **err, const char *vm, const char *what)
{
    virErrorPtr e = virGetLastError();
    int code = -EIO;
    if (e && (e->code == VIR_ERR_AGENT_UNRESPONSIVE || e->code == VIR_ERR_OPERATION_TIMEOUT))
        code = -ETIMEDOUT;
    else if (e && e->code == VIR_ERR_NO_DOMAIN)
        code = -ENOENT;
    else if (e && e->code == VIR_ERR_OPERATION_INVALID)
        code = -EINVAL;
    return vmsh_error_set(err, code, "%s of VM %s failed: %s", what, vm,
                          e && e->message ? e->message : "unknown libvirt error");
}

int vmsh_hv_agent_timeout(vmsh_hv *hv, const char *vm, int timeout_s, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainAgentSetResponseTimeout(d, timeout_s, 0) < 0)
        r = lv_fail(err, vm, "setting the agent timeout");
    virDomainFree(d);
    return r;
}

int vmsh_hv_fsfreeze(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    r = virDomainFSFreeze(d, NULL, 0, 0);
    if (r < 0)
        r = lv_fail(err, vm, "freezing the guest filesystems");
    virDomainFree(d);
    return r;
}

int vmsh_hv_fsthaw(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    r = virDomainFSThaw(d, NULL, 0, 0);
    if (r < 0)
        r = lv_fail(err, vm, "thawing the guest filesystems");
    virDomainFree(d);
    return r;
}

int vmsh_hv_fsfreeze_status(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    char *reply = virDomainQemuAgentCommand(d, "{\"execute\":\"guest-fsfreeze-status\"}", 5, 0);
    if (!reply) {
        r = lv_fail(err, vm, "asking the agent for the freeze status");
    } else {
        r = vmsh_agent_parse_freeze_status(reply, strlen(reply), err);
        if (r < 0)
            vmsh_error_prefix(err, "VM %s", vm);
        free(reply);
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_save(vmsh_hv *hv, const char *vm, const char *path, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainSaveFlags(d, path, NULL, 0) < 0)
        r = lv_fail(err, vm, "saving the memory");
    virDomainFree(d);
    return r;
}

int vmsh_hv_restore(vmsh_hv *hv, const char *path, const char *dxml, bool paused, vmsh_error **err)
{
    unsigned flags = paused ? VIR_DOMAIN_SAVE_PAUSED : VIR_DOMAIN_SAVE_RUNNING;
    vmsh_hv_forget_domains(hv, NULL); /* the XML given may name another VM */
    if (virDomainRestoreFlags(vmsh_hv_conn(hv), path, dxml, flags) < 0)
        return lv_fail(err, path, "restoring from the state file");
    return 0;
}

int vmsh_hv_managed_save(vmsh_hv *hv, const char *vm, bool running, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainManagedSave(d, running ? VIR_DOMAIN_SAVE_RUNNING : VIR_DOMAIN_SAVE_PAUSED) < 0)
        r = lv_fail(err, vm, "writing the managed saved state");
    virDomainFree(d);
    return r;
}

int vmsh_hv_save_image_xml(vmsh_hv *hv, const char *path, char **out, vmsh_error **err)
{
    *out = virDomainSaveImageGetXMLDesc(vmsh_hv_conn(hv), path, VIR_DOMAIN_SAVE_IMAGE_XML_SECURE);
    if (!*out)
        return lv_fail(err, path, "reading the XML of the state file");
    return 0;
}

/* The VM's live definition, parsed (*out: vmsh_domxml_free). */
static int live_definition(vmsh_hv *hv, const char *vm, vmsh_domxml **out, vmsh_error **err)
{
    _cleanup_free_ char *xml = NULL;
    int r = vmsh_hv_domain_xml(hv, vm, false, &xml, err);
    return r < 0 ? r : vmsh_domxml_parse(out, xml, strlen(xml), err);
}

int vmsh_hv_disk_source(vmsh_hv *hv, const char *vm, const char *target, char **out,
                        vmsh_error **err)
{
    vmsh_domxml *x = NULL;
    int r = live_definition(hv, vm, &x, err);
    if (r < 0)
        return r;
    r = vmsh_error_set(err, -ENOENT, "VM %s has no disk %s", vm, target);
    for (size_t i = 0; i < x->n_disks; i++) {
        if (x->disks[i].target && strcmp(x->disks[i].target, target) == 0) {
            vmsh_error_freep(err);
            *out = x->disks[i].source ? strdup(x->disks[i].source) : NULL;
            r = 0;
            break;
        }
    }
    vmsh_domxml_free(x);
    return r;
}

int vmsh_hv_block_commit_pivot(vmsh_hv *hv, const char *vm, const char *target, int timeout_s,
                               vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainBlockCommit(d, target, NULL, NULL, 0, VIR_DOMAIN_BLOCK_COMMIT_ACTIVE) < 0) {
        r = lv_fail(err, vm, "merging the overlay of disk");
        goto out;
    }
    /* An active commit never ends on its own: once it is ready (it has
     * caught up; libvirt learns it from an event) the pivot switches the
     * VM to the merged image. Until then the pivot is refused: retry. */
    r = -ETIMEDOUT;
    for (int i = 0; i < timeout_s * 20; i++) {
        if (virDomainBlockJobAbort(d, target, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) == 0) {
            r = 0;
            break;
        }
        virErrorPtr e = virGetLastError();
        if (!e || e->code != VIR_ERR_BLOCK_COPY_ACTIVE) {
            r = lv_fail(err, vm, "switching back from the overlay of disk");
            goto out;
        }
        usleep(50 * 1000);
    }
    if (r < 0) {
        virDomainBlockJobAbort(d, target, 0);
        r = vmsh_error_set(err, -ETIMEDOUT,
                           "merging the overlay of disk %s of VM %s did not finish in %d s; "
                           "the VM still runs on its overlay: run 'vmshadow recover' again",
                           target, vm, timeout_s);
        vmsh_error_set_retryable(err, true);
    }
out:
    virDomainFree(d);
    return r;
}

/* The destination of a block copy of disk `target` onto what `def_xml` (the
 * definition the VM gets after the pivot) names for it: a <disk> of the same
 * type with only its <source>, its disk-level <auth> and a raw <driver>.
 * Only a block device or a network (RBD) disk: a file would need an image of
 * its own, which the copy does not make. */
static int copy_dest_xml(vmsh_hv *hv, const char *vm, const char *def_xml, const char *target,
                         char **out, vmsh_error **err)
{
    *out = NULL;
    xmlDocPtr doc =
        xmlReadMemory(def_xml, (int)strlen(def_xml), "domain.xml", NULL, XML_PARSE_NONET);
    if (!doc)
        return vmsh_error_set(err, -EBADMSG, "VM %s: the definition to copy onto does not parse",
                              vm);
    xmlNodePtr root = xmlDocGetRootElement(doc), found = NULL;
    for (xmlNodePtr dev = root ? root->children : NULL; dev && !found; dev = dev->next) {
        if (dev->type != XML_ELEMENT_NODE || xmlStrcmp(dev->name, BAD_CAST "devices") != 0)
            continue;
        for (xmlNodePtr disk = dev->children; disk && !found; disk = disk->next) {
            if (disk->type != XML_ELEMENT_NODE || xmlStrcmp(disk->name, BAD_CAST "disk") != 0)
                continue;
            for (xmlNodePtr c = disk->children; c && !found; c = c->next) {
                if (c->type != XML_ELEMENT_NODE || xmlStrcmp(c->name, BAD_CAST "target") != 0)
                    continue;
                xmlChar *dv = xmlGetProp(c, BAD_CAST "dev");
                if (dv && strcmp((const char *)dv, target) == 0)
                    found = disk;
                xmlFree(dv);
            }
        }
    }
    xmlChar *type = found ? xmlGetProp(found, BAD_CAST "type") : NULL;
    int r = 0;
    /* issue 23: a pool volume on a block device (a logical or disk pool)
     * is copied onto that device, which the pool names now (libvirt's
     * block copy takes no volume); the definition keeps the volume */
    _cleanup_free_ char *vol_dev = NULL;
    if (found && type && xmlStrcmp(type, BAD_CAST "volume") == 0) {
        xmlNodePtr src = NULL;
        for (xmlNodePtr c = found->children; c && !src; c = c->next)
            if (c->type == XML_ELEMENT_NODE && xmlStrcmp(c->name, BAD_CAST "source") == 0)
                src = c;
        xmlChar *pool = src ? xmlGetProp(src, BAD_CAST "pool") : NULL;
        xmlChar *vol = src ? xmlGetProp(src, BAD_CAST "volume") : NULL;
        vmsh_disk_kind k = VMSH_DISK_UNKNOWN;
        r = pool && vol
                ? vmsh_hv_volume_path(hv, (const char *)pool, (const char *)vol, &vol_dev, &k, err)
                : -EINVAL;
        if (r == 0 && k != VMSH_DISK_BLOCK)
            r = -EINVAL;
        xmlFree(pool);
        xmlFree(vol);
        if (r == 0) {
            xmlFree(type);
            type = xmlStrdup(BAD_CAST "block");
        } else {
            vmsh_error_freep(err);
        }
    }
    if (r < 0 || !found || !type ||
        (xmlStrcmp(type, BAD_CAST "block") != 0 && xmlStrcmp(type, BAD_CAST "network") != 0))
        r = vmsh_error_set(err, -EINVAL,
                           "VM %s: disk %s is no block device or network disk in the definition "
                           "to copy onto",
                           vm, target);
    xmlDocPtr nd = r == 0 ? xmlNewDoc(BAD_CAST "1.0") : NULL;
    if (r == 0) {
        xmlNodePtr d = xmlNewNode(NULL, BAD_CAST "disk");
        xmlDocSetRootElement(nd, d);
        xmlSetProp(d, BAD_CAST "type", type);
        xmlSetProp(d, BAD_CAST "device", BAD_CAST "disk");
        xmlNodePtr drv = xmlNewChild(d, NULL, BAD_CAST "driver", NULL);
        xmlSetProp(drv, BAD_CAST "name", BAD_CAST "qemu");
        xmlSetProp(drv, BAD_CAST "type", BAD_CAST "raw");
        if (vol_dev) {
            xmlNodePtr src = xmlNewChild(d, NULL, BAD_CAST "source", NULL);
            xmlSetProp(src, BAD_CAST "dev", BAD_CAST vol_dev);
        }
        for (xmlNodePtr c = found->children; c && !vol_dev; c = c->next)
            if (c->type == XML_ELEMENT_NODE && (xmlStrcmp(c->name, BAD_CAST "source") == 0 ||
                                                xmlStrcmp(c->name, BAD_CAST "auth") == 0))
                xmlAddChild(d, xmlDocCopyNode(c, nd, 1));
        xmlChar *mem = NULL;
        int size = 0;
        xmlDocDumpMemory(nd, &mem, &size);
        if (!mem || !(*out = strndup((const char *)mem, (size_t)size)))
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
        xmlFree(mem);
        xmlFreeDoc(nd);
    }
    xmlFree(type);
    xmlFreeDoc(doc);
    return r;
}

int vmsh_hv_block_copy(vmsh_hv *hv, const char *vm, const char *target, const char *def_xml,
                       uint64_t bandwidth, vmsh_error **err)
{
    _cleanup_free_ char *dest = NULL;
    int r = copy_dest_xml(hv, vm, def_xml, target, &dest, err);
    if (r < 0)
        return r;
    virDomainPtr d = NULL;
    if ((r = lookup(hv, vm, &d, err)) < 0)
        return r;
    virTypedParameter par[1];
    int np = 0;
    if (bandwidth > 0) {
        memset(par, 0, sizeof(par));
        snprintf(par[0].field, sizeof(par[0].field), "%s", VIR_DOMAIN_BLOCK_COPY_BANDWIDTH);
        par[0].type = VIR_TYPED_PARAM_ULLONG;
        par[0].value.ul = bandwidth;
        np = 1;
    }
    /* the whole chain (not shallow) onto the existing device or image
     * (REUSE_EXT: libvirt creates nothing); a transient job: the
     * persistent definition is the caller's, who redefines it after the
     * pivot, and a copy cut by a shutdown starts again from scratch */
    if (virDomainBlockCopy(d, target, dest, np ? par : NULL, np,
                           VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB) <
        0) {
        r = lv_fail(err, vm, "starting the block copy of disk");
        vmsh_error_prefix(err, "disk %s", target);
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_block_copy_pivot(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainBlockJobAbort(d, target, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) < 0) {
        /* not caught up yet (libvirt learns "ready" from an event): asked
         * again at the next poll */
        virErrorPtr e = virGetLastError();
        if (e && e->code == VIR_ERR_BLOCK_COPY_ACTIVE)
            r = -EAGAIN;
        else
            r = lv_fail(err, vm, "switching to the copy of disk");
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_suspend(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainSuspend(d) < 0)
        r = lv_fail(err, vm, "pausing");
    virDomainFree(d);
    return r;
}

int vmsh_hv_resume(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainResume(d) < 0)
        r = lv_fail(err, vm, "resuming");
    virDomainFree(d);
    return r;
}

int vmsh_hv_state(vmsh_hv *hv, const char *vm, vmsh_vm_state *out, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    int st = 0, reason = 0;
    if (virDomainGetState(d, &st, &reason, 0) < 0)
        r = lv_fail(err, vm, "reading the state");
    else
        *out = vmsh_hv_map_state(st);
    virDomainFree(d);
    return r;
}

/* Appends `s` to *buf with XML special characters escaped. */
static int append_escaped(char **buf, const char *s)
{
    xmlChar *esc = xmlEncodeSpecialChars(NULL, (const xmlChar *)s);
    if (!esc)
        return -ENOMEM;
    char *n = NULL;
    int r = asprintf(&n, "%s%s", *buf ? *buf : "", (const char *)esc);
    xmlFree(esc);
    if (r < 0)
        return -ENOMEM;
    free(*buf);
    *buf = n;
    return 0;
}

static int append(char **buf, const char *s)
{
    char *n = NULL;
    if (asprintf(&n, "%s%s", *buf ? *buf : "", s) < 0)
        return -ENOMEM;
    free(*buf);
    *buf = n;
    return 0;
}

static bool listed(const vmsh_hv_backup_disk *disks, size_t n, const char *target)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(disks[i].target, target) == 0)
            return true;
    return false;
}

int vmsh_hv_backup_xml(vmsh_hv *hv, const char *vm, const char *socket_path,
                       const vmsh_hv_backup_disk *disks, size_t n_disks, char **out,
                       vmsh_error **err)
{
    *out = NULL;
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    /* Every disk of the VM must be named: those not captured get
     * backup='no', or libvirt would export them too. */
    _cleanup_free_ char *dxml_text = virDomainGetXMLDesc(d, 0);
    virDomainFree(d);
    vmsh_domxml *dx = NULL;
    if (!dxml_text || vmsh_domxml_parse(&dx, dxml_text, strlen(dxml_text), err) < 0)
        return vmsh_error_set(err, -EIO, "cannot read the XML of VM %s", vm);
    char *x = NULL;
    int q = append(&x, "<domainbackup mode='pull'><server transport='unix' socket='") ?:
            append_escaped(&x, socket_path) ?: append(&x, "'/><disks>");
    for (size_t i = 0; i < n_disks && q == 0; i++)
        q = append(&x, "<disk name='") ?: append_escaped(&x, disks[i].target) ?:
            append(&x, "' backup='yes' type='file'") ?:
            (disks[i].incremental ? append(&x, " backupmode='incremental' incremental='") ?:
                                        append_escaped(&x, disks[i].incremental) ?:
                                        append(&x, "'")
                                  : 0) ?:
            append(&x, "><scratch file='") ?: append_escaped(&x, disks[i].scratch) ?:
            append(&x, "'/></disk>");
    for (size_t i = 0; i < dx->n_disks && q == 0; i++) {
        const vmsh_domxml_disk *dk = &dx->disks[i];
        if (strcmp(dk->device, "hostdev") == 0 || !dk->target || listed(disks, n_disks, dk->target))
            continue;
        q = append(&x, "<disk name='") ?: append_escaped(&x, dk->target) ?:
            append(&x, "' backup='no'/>");
    }
    q = q ?: append(&x, "</disks></domainbackup>");
    vmsh_domxml_free(dx);
    if (q < 0) {
        free(x);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = x;
    return 0;
}

int vmsh_hv_backup_begin_xml(vmsh_hv *hv, const char *vm, const char *xml, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainBackupBegin(d, xml, NULL, VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL) < 0)
        r = lv_fail(err, vm, "starting the backup job");
    virDomainFree(d);
    return r;
}

int vmsh_hv_backup_begin(vmsh_hv *hv, const char *vm, const char *socket_path,
                         const vmsh_hv_backup_disk *disks, size_t n_disks, vmsh_error **err)
{
    _cleanup_free_ char *x = NULL;
    int r = vmsh_hv_backup_xml(hv, vm, socket_path, disks, n_disks, &x, err);
    return r < 0 ? r : vmsh_hv_backup_begin_xml(hv, vm, x, err);
}

int vmsh_hv_backup_active(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    /* A VM that is not running has no job: it may have shut itself down
     * mid-backup, and libvirt refuses to read the job state of a VM that
     * is off (R7: its undo must not stay stuck on that). */
    if (virDomainIsActive(d) == 0) {
        virDomainFree(d);
        return 0;
    }
    virTypedParameterPtr params = NULL;
    int nparams = 0, type = 0;
    if (virDomainGetJobStats(d, &type, &params, &nparams, 0) < 0) {
        r = lv_fail(err, vm, "reading the job state");
    } else {
        int op = 0;
        r = type != VIR_DOMAIN_JOB_NONE &&
            virTypedParamsGetInt(params, nparams, VIR_DOMAIN_JOB_OPERATION, &op) == 1 &&
            op == VIR_DOMAIN_JOB_OPERATION_BACKUP;
        virTypedParamsFree(params, nparams);
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_backup_end(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    int active = vmsh_hv_backup_active(hv, vm, err);
    if (active <= 0)
        return active;
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    if (virDomainAbortJob(d) < 0)
        r = lv_fail(err, vm, "ending the backup job");
    virDomainFree(d);
    return r;
}

int vmsh_hv_domain_id(vmsh_hv *hv, const char *vm, int *out, vmsh_error **err)
{
    /* looked up afresh: a kept domain pointer has the ID of its lookup */
    vmsh_hv_forget_domains(hv, vm);
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    unsigned id = virDomainGetID(d);
    *out = id == (unsigned)-1 ? -1 : (int)id;
    virDomainFree(d);
    return 0;
}

int vmsh_hv_checkpoint_exists(vmsh_hv *hv, const char *vm, const char *name, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(d, name, 0);
    if (cp) {
        r = 1;
        virDomainCheckpointFree(cp);
    } else {
        virErrorPtr e = virGetLastError();
        r = e && e->code == VIR_ERR_NO_DOMAIN_CHECKPOINT
                ? 0
                : lv_fail(err, vm, "looking up a checkpoint");
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_checkpoint_list(vmsh_hv *hv, const char *vm, const char *prefix, char ***out, size_t *n,
                            vmsh_error **err)
{
    *out = NULL;
    *n = 0;
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainCheckpointPtr *cps = NULL;
    int k = virDomainListAllCheckpoints(d, &cps, 0);
    if (k < 0) {
        r = lv_fail(err, vm, "listing the checkpoints");
        virDomainFree(d);
        return r;
    }
    char **names = vmsh_calloc_array((size_t)k + 1, sizeof(char *));
    if (!names)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (int i = 0; i < k; i++) {
        const char *nm = virDomainCheckpointGetName(cps[i]);
        if (r == 0 && nm && strncmp(nm, prefix, strlen(prefix)) == 0) {
            if (!(names[*n] = strdup(nm)))
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
            else
                (*n)++;
        }
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
    virDomainFree(d);
    if (r < 0) {
        for (size_t i = 0; names && i < *n; i++)
            free(names[i]);
        free(names);
        *n = 0;
        return r;
    }
    *out = names;
    return 0;
}

int vmsh_hv_checkpoint_delete(vmsh_hv *hv, const char *vm, const char *name, bool metadata_fallback,
                              vmsh_error **err)
{
    virDomainPtr d = NULL;
    vmsh_error *e = NULL;
    int r = lookup(hv, vm, &d, &e);
    if (r < 0) {
        if (r == -ENOENT)
            r = 0; /* no VM, no checkpoint */
        else
            vmsh_error_propagate(err, &e);
        vmsh_error_free(e);
        return r;
    }
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(d, name, 0);
    if (cp) {
        if (virDomainCheckpointDelete(cp, 0) < 0) {
            if (!metadata_fallback ||
                virDomainCheckpointDelete(cp, VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) < 0)
                r = lv_fail(err, vm, "deleting a checkpoint");
        }
        virDomainCheckpointFree(cp);
    }
    virDomainFree(d);
    if (r < 0)
        vmsh_error_prefix(err, "checkpoint %s", name);
    return r;
}

/* The <domaincheckpoint> XML over the VM's disks `disks`: a bitmap on those
 * of `targets`, none on the others. `created` (seconds since the epoch) is
 * given only to a redefinition, which libvirt refuses without it. */
static int checkpoint_xml_build(const char *name, long long created, const char *const *disks,
                                size_t n_disks, const char *const *targets, size_t n_targets,
                                char **out, vmsh_error **err)
{
    char *x = NULL;
    char ct[64] = "";
    if (created > 0)
        snprintf(ct, sizeof(ct), "<creationTime>%lld</creationTime>", created);
    int q = append(&x, "<domaincheckpoint><name>") ?: append_escaped(&x, name) ?:
            append(&x, "</name>") ?: append(&x, ct) ?:
            append(&x, "<description>vmshadow: the point of a backup; the next backup "
                       "reads only what changed since</description><disks>");
    for (size_t i = 0; i < n_disks && q == 0; i++) {
        bool bitmap = false;
        for (size_t k = 0; k < n_targets && !bitmap; k++)
            bitmap = strcmp(targets[k], disks[i]) == 0;
        q = append(&x, "<disk name='") ?: append_escaped(&x, disks[i]) ?:
            append(&x, bitmap ? "' checkpoint='bitmap'/>" : "' checkpoint='no'/>");
    }
    q = q ?: append(&x, "</disks></domaincheckpoint>");
    if (q < 0) {
        free(x);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = x;
    return 0;
}

int vmsh_hv_checkpoint_disks(const vmsh_domxml *dx, const char ***out, size_t *n)
{
    *n = 0;
    *out = vmsh_calloc_array(dx->n_disks ? dx->n_disks : 1, sizeof(char *));
    if (!*out)
        return -ENOMEM;
    for (size_t i = 0; i < dx->n_disks; i++)
        if (dx->disks[i].target && strcmp(dx->disks[i].device, "hostdev") != 0)
            (*out)[(*n)++] = dx->disks[i].target;
    return 0;
}

/* checkpoint_xml_build over the disks of the VM's live definition */
static int checkpoint_xml_at(vmsh_hv *hv, const char *vm, const char *name,
                             const char *const *targets, size_t n_targets, long long created,
                             char **out, vmsh_error **err)
{
    vmsh_domxml *dx = NULL;
    int r = live_definition(hv, vm, &dx, err);
    if (r < 0)
        return r;
    const char **disks = NULL;
    size_t n = 0;
    if (vmsh_hv_checkpoint_disks(dx, &disks, &n) < 0)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    else
        r = checkpoint_xml_build(name, created, disks, n, targets, n_targets, out, err);
    free(disks);
    vmsh_domxml_free(dx);
    return r;
}

int vmsh_hv_checkpoint_xml(const char *name, const char *const *disks, size_t n_disks,
                           const char *const *targets, size_t n_targets, char **out,
                           vmsh_error **err)
{
    return checkpoint_xml_build(name, 0, disks, n_disks, targets, n_targets, out, err);
}

static int create_checkpoint(vmsh_hv *hv, const char *vm, const char *xml, unsigned flags,
                             const char *what, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainCheckpointPtr cp = virDomainCheckpointCreateXML(d, xml, flags);
    if (!cp)
        r = lv_fail(err, vm, what);
    else
        virDomainCheckpointFree(cp);
    virDomainFree(d);
    return r;
}

int vmsh_hv_checkpoint_create(vmsh_hv *hv, const char *vm, const char *xml, vmsh_error **err)
{
    return create_checkpoint(hv, vm, xml, 0, "creating the checkpoint", err);
}

int vmsh_hv_disk_capacity(vmsh_hv *hv, const char *vm, const char *target, uint64_t *out,
                          vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainBlockInfo info;
    if (virDomainGetBlockInfo(d, target, &info, 0) < 0)
        r = lv_fail(err, vm, "reading the size of a disk");
    else
        *out = info.capacity;
    virDomainFree(d);
    return r;
}

int vmsh_hv_checkpoint_redefine(vmsh_hv *hv, const char *vm, const char *name,
                                const char *const *targets, size_t n_targets, vmsh_error **err)
{
    _cleanup_free_ char *x = NULL;
    /* its bitmap was made now: it records changes from now on */
    int r = checkpoint_xml_at(hv, vm, name, targets, n_targets, (long long)time(NULL), &x, err);
    if (r < 0)
        return r;
    return create_checkpoint(hv, vm, x, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
                             "defining the checkpoint of the backup again", err);
}

int vmsh_hv_domain_xml(vmsh_hv *hv, const char *vm, bool inactive, char **out, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    *out = virDomainGetXMLDesc(d, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
    if (!*out)
        r = lv_fail(err, vm, "reading the domain XML");
    virDomainFree(d);
    return r;
}

int vmsh_hv_job_active(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainJobInfo info;
    if (virDomainGetJobInfo(d, &info) < 0)
        r = lv_fail(err, vm, "reading the job state");
    else
        r = info.type != VIR_DOMAIN_JOB_NONE;
    virDomainFree(d);
    return r;
}

int vmsh_hv_stop(vmsh_hv *hv, const char *vm, int grace_s, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    int st = 0, reason = 0;
    if (virDomainGetState(d, &st, &reason, 0) == 0 && st == VIR_DOMAIN_SHUTOFF)
        goto out;
    if (st == VIR_DOMAIN_RUNNING && grace_s > 0 && virDomainShutdown(d) == 0) {
        for (int i = 0; i < grace_s * 10; i++) {
            if (virDomainGetState(d, &st, &reason, 0) == 0 && st == VIR_DOMAIN_SHUTOFF)
                goto out;
            usleep(100 * 1000);
        }
    }
    if (virDomainDestroy(d) < 0 &&
        !(virDomainGetState(d, &st, &reason, 0) == 0 && st == VIR_DOMAIN_SHUTOFF))
        r = lv_fail(err, vm, "stopping");
out:
    virDomainFree(d);
    return r;
}

int vmsh_hv_undefine(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = lookup(hv, vm, &d, err);
    if (r < 0)
        return r;
    unsigned flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                     VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | VIR_DOMAIN_UNDEFINE_KEEP_NVRAM |
                     VIR_DOMAIN_UNDEFINE_KEEP_TPM;
    if (virDomainUndefineFlags(d, flags) < 0)
        r = lv_fail(err, vm, "deleting (undefining)");
    virDomainFree(d);
    vmsh_hv_forget_domains(hv, NULL);
    return r;
}

int vmsh_hv_define(vmsh_hv *hv, const char *xml, vmsh_error **err)
{
    vmsh_hv_forget_domains(hv, NULL); /* a VM of that name may be another now */
    virDomainPtr d = virDomainDefineXML(vmsh_hv_conn(hv), xml);
    if (!d)
        return lv_fail(err, "(new)", "registering (defining)");
    virDomainFree(d);
    return 0;
}

int vmsh_hv_save_image_define_xml(vmsh_hv *hv, const char *path, const char *xml, vmsh_error **err)
{
    if (virDomainSaveImageDefineXML(vmsh_hv_conn(hv), path, xml, 0) < 0)
        return lv_fail(err, path, "rewriting the XML of the state file");
    return 0;
}

int vmsh_hv_network_active(vmsh_hv *hv, const char *name, vmsh_error **err)
{
    virNetworkPtr n = virNetworkLookupByName(vmsh_hv_conn(hv), name);
    if (!n)
        return 0;
    int r = virNetworkIsActive(n);
    virNetworkFree(n);
    return r == 1;
}
