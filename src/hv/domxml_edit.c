#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

static bool is_el(xmlNodePtr n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, (const xmlChar *)name) == 0;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (is_el(c, name))
            return c;
    return NULL;
}

static bool attr_eq(xmlNodePtr n, const char *name, const char *want)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    bool eq = v && strcmp((const char *)v, want) == 0;
    xmlFree(v);
    return eq;
}

static void drop(xmlNodePtr n)
{
    if (!n)
        return;
    xmlUnlinkNode(n);
    xmlFreeNode(n);
}

/* A disk the restored VM may not have without being told: anything that is
 * not an image file or an empty removable drive. */
static bool host_disk(xmlNodePtr disk)
{
    xmlChar *type = xmlGetProp(disk, (const xmlChar *)"type");
    bool file = !type || strcmp((const char *)type, "file") == 0;
    xmlFree(type);
    return !file || attr_eq(disk, "device", "lun");
}

static int repath(xmlNodePtr disk, const vmsh_disk_repath *rp)
{
    xmlNodePtr src = child(disk, "source");
    if (!src)
        src = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
    if (!src || !xmlSetProp(src, (const xmlChar *)"file", (const xmlChar *)rp->path))
        return -ENOMEM;
    xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
    xmlNodePtr old_chain = child(disk, "backingStore");
    if (old_chain)
        xmlUnlinkNode(old_chain);
    if (rp->backing) {
        /* overlay -> backing image -> the image's own chain, if any */
        xmlNodePtr bs = xmlNewChild(disk, NULL, (const xmlChar *)"backingStore", NULL);
        xmlNodePtr fmt = bs ? xmlNewChild(bs, NULL, (const xmlChar *)"format", NULL) : NULL;
        xmlNodePtr bsrc = bs ? xmlNewChild(bs, NULL, (const xmlChar *)"source", NULL) : NULL;
        if (!bsrc || !fmt) {
            xmlFreeNode(old_chain);
            return -ENOMEM;
        }
        xmlSetProp(bs, (const xmlChar *)"type", (const xmlChar *)"file");
        xmlSetProp(fmt, (const xmlChar *)"type",
                   (const xmlChar *)(rp->backing_format ? rp->backing_format : "raw"));
        xmlSetProp(bsrc, (const xmlChar *)"file", (const xmlChar *)rp->backing);
        if (old_chain && child(old_chain, "source"))
            xmlAddChild(bs, old_chain);
        else
            xmlFreeNode(old_chain);
    } else {
        /* the restored image stands alone: the backing chain was read through */
        xmlFreeNode(old_chain);
    }
    if (rp->format) {
        xmlNodePtr drv = child(disk, "driver");
        if (!drv && !(drv = xmlNewChild(disk, NULL, (const xmlChar *)"driver", NULL)))
            return -ENOMEM;
        xmlSetProp(drv, (const xmlChar *)"name", (const xmlChar *)"qemu");
        xmlSetProp(drv, (const xmlChar *)"type", (const xmlChar *)rp->format);
    }
    return 0;
}

static int disconnect(xmlNodePtr iface)
{
    /* 'ethernet' with no target: QEMU gets a tap device that nothing is
     * attached to, the guest keeps its NIC (same MAC, same slot), and the
     * link is down. The VM starts even though its switch is gone. */
    xmlSetProp(iface, (const xmlChar *)"type", (const xmlChar *)"ethernet");
    drop(child(iface, "source"));
    drop(child(iface, "virtualport"));
    drop(child(iface, "target"));
    xmlNodePtr link = child(iface, "link");
    if (!link && !(link = xmlNewChild(iface, NULL, (const xmlChar *)"link", NULL)))
        return -ENOMEM;
    xmlSetProp(link, (const xmlChar *)"state", (const xmlChar *)"down");
    return 0;
}

int vmsh_domxml_edit_apply(const char *xml, size_t len, const vmsh_domxml_edit *e, char **out,
                           vmsh_error **err)
{
    if (len > VMSH_DOMXML_MAX_BYTES || len > INT32_MAX)
        return vmsh_error_set(err, -EFBIG, "domain XML is too large (%zu bytes)", len);
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return vmsh_error_set(err, -EINVAL, "domain XML is not well-formed");
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int r = 0;
    if (!is_el(root, "domain")) {
        r = vmsh_error_set(err, -EINVAL, "XML is not a libvirt <domain>");
        goto out;
    }
    xmlUnsetProp(root, (const xmlChar *)"id");
    if (e->name) {
        xmlNodePtr name = child(root, "name");
        if (!name) {
            r = vmsh_error_set(err, -EINVAL, "domain XML has no <name>");
            goto out;
        }
        xmlNodeSetContent(name, NULL);
        xmlNodeAddContent(name, (const xmlChar *)e->name);
    }
    if (e->new_uuid)
        drop(child(root, "uuid"));
    if (e->nvram) {
        xmlNodePtr nv = child(child(root, "os"), "nvram");
        if (nv) {
            xmlNodeSetContent(nv, NULL);
            xmlNodeAddContent(nv, (const xmlChar *)e->nvram);
        }
    }
    bool *seen = vmsh_calloc_array(e->n_disks, sizeof(bool));
    if (!seen) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    xmlNodePtr devices = child(root, "devices");
    size_t iface_i = 0;
    xmlNodePtr next = NULL;
    for (xmlNodePtr n = devices ? devices->children : NULL; n && r == 0; n = next) {
        next = n->next;
        if (is_el(n, "hostdev") && e->drop_host_devices) {
            drop(n);
        } else if (is_el(n, "disk")) {
            if (e->drop_host_devices && host_disk(n)) {
                drop(n);
                continue;
            }
            xmlNodePtr t = child(n, "target");
            for (size_t i = 0; i < e->n_disks && t; i++) {
                if (attr_eq(t, "dev", e->disks[i].target)) {
                    seen[i] = true;
                    if (repath(n, &e->disks[i]) < 0)
                        r = vmsh_error_set(err, -ENOMEM, "out of memory");
                }
            }
        } else if (is_el(n, "interface")) {
            if (e->new_macs)
                drop(child(n, "mac"));
            if (e->ifaces && iface_i < e->n_ifaces && e->ifaces[iface_i] == VMSH_IFACE_DISCONNECT &&
                disconnect(n) < 0)
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
            iface_i++;
        }
    }
    for (size_t i = 0; i < e->n_disks && r == 0; i++)
        if (!seen[i])
            r = vmsh_error_set(err, -EINVAL, "the domain XML has no disk %s", e->disks[i].target);
    free(seen);
    if (r == 0) {
        xmlChar *buf = NULL;
        int n = 0;
        xmlDocDumpFormatMemory(doc, &buf, &n, 1);
        if (!buf || !(*out = strndup((const char *)buf, (size_t)n)))
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
        xmlFree(buf);
    }
out:
    xmlFreeDoc(doc);
    return r;
}
