/* blockjob.c - libvirt calls of instant restore (blockjob.h, issue 23). */
#include "hv_private.h"

#include <vmshadow/hv/blockjob.h>

#include <errno.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(vmsh_error **err, const char *vm, const char *what)
{
    virErrorPtr e = virGetLastError();
    int code = -EIO;
    if (e && e->code == VIR_ERR_NO_DOMAIN)
        code = -ENOENT;
    else if (e && e->code == VIR_ERR_OPERATION_INVALID)
        code = -EINVAL;
    return vmsh_error_set(err, code, "%s of VM %s failed: %s", what, vm,
                          e && e->message ? e->message : "unknown libvirt error");
}

static int get(vmsh_hv *hv, const char *vm, virDomainPtr *out, vmsh_error **err)
{
    *out = vmsh_hv_lookup(hv, vm);
    if (*out)
        return 0;
    return fail(err, vm, "looking up");
}

int vmsh_hv_start(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r == 0 && virDomainCreate(d) < 0)
        r = fail(err, vm, "starting");
    if (d)
        virDomainFree(d);
    return r;
}

int vmsh_hv_destroy(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    int st = 0, reason = 0;
    if (virDomainGetState(d, &st, &reason, 0) == 0 && st != VIR_DOMAIN_SHUTOFF &&
        virDomainDestroy(d) < 0)
        r = fail(err, vm, "stopping (destroy)");
    virDomainFree(d);
    return r;
}

int vmsh_hv_block_pull(vmsh_hv *hv, const char *vm, const char *target, uint64_t bandwidth,
                       vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    /* bytes per second: the flag makes libvirt take bytes, not MiB */
    if (virDomainBlockPull(d, target, bandwidth,
                           bandwidth ? VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES : 0) < 0) {
        char what[64];
        snprintf(what, sizeof(what), "block pull of disk %s", target);
        r = fail(err, vm, what);
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_block_job(vmsh_hv *hv, const char *vm, const char *target, uint64_t *cur, uint64_t *end,
                      vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainBlockJobInfo info = {0};
    int n = virDomainGetBlockJobInfo(d, target, &info, 0);
    if (n < 0)
        r = fail(err, vm, "reading the block job");
    else if (n == 0)
        r = 0;
    else {
        *cur = info.cur;
        *end = info.end;
        r = 1;
    }
    virDomainFree(d);
    return r;
}

int vmsh_hv_block_job_abort(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    virDomainBlockJobInfo info = {0};
    if (virDomainGetBlockJobInfo(d, target, &info, 0) == 1 &&
        virDomainBlockJobAbort(d, target, 0) < 0)
        r = fail(err, vm, "cancelling the block job");
    virDomainFree(d);
    return r;
}

int vmsh_hv_disk_has_backing(vmsh_hv *hv, const char *vm, const char *target, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    char *xml = virDomainGetXMLDesc(d, 0);
    virDomainFree(d);
    if (!xml)
        return fail(err, vm, "reading the definition");
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL, XML_PARSE_NONET);
    free(xml);
    if (!doc)
        return vmsh_error_set(err, -EBADMSG, "VM %s: libvirt's definition does not parse", vm);
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    char q[256];
    r = -ENOENT;
    if (strchr(target, '\'') == NULL &&
        snprintf(q, sizeof(q), "count(/domain/devices/disk[target/@dev='%s']/backingStore/source)",
                 target) < (int)sizeof(q) &&
        ctx) {
        xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)q, ctx);
        if (o && o->type == XPATH_NUMBER)
            r = o->floatval > 0 ? 1 : 0;
        xmlXPathFreeObject(o);
    }
    xmlXPathFreeContext(ctx);
    xmlFreeDoc(doc);
    if (r < 0)
        return vmsh_error_set(err, r, "VM %s has no disk %s", vm, target);
    return r;
}

int vmsh_hv_paused_on_io_error(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    virDomainPtr d = NULL;
    int r = get(hv, vm, &d, err);
    if (r < 0)
        return r;
    int st = 0, reason = 0;
    if (virDomainGetState(d, &st, &reason, 0) < 0)
        r = fail(err, vm, "reading the state");
    else
        r = st == VIR_DOMAIN_PAUSED && reason == VIR_DOMAIN_PAUSED_IOERROR;
    virDomainFree(d);
    return r;
}
