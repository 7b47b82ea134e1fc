#include <vmshadow/hv/domxml.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

const char *vmsh_disk_kind_name(vmsh_disk_kind kind)
{
    switch (kind) {
    case VMSH_DISK_FILE:
        return "file";
    case VMSH_DISK_BLOCK:
        return "block";
    case VMSH_DISK_NETWORK:
        return "network";
    case VMSH_DISK_PASSTHROUGH:
        return "passthrough";
    case VMSH_DISK_EMPTY:
        return "empty";
    case VMSH_DISK_VOLUME:
        return "volume";
    case VMSH_DISK_UNKNOWN:
        break;
    }
    return "unknown";
}

/* Frees the network parts of a disk (also before a pool's take their place). */
static void net_clear(vmsh_domxml_disk *d)
{
    free(d->protocol);
    free(d->net_name);
    for (size_t i = 0; i < d->n_hosts; i++) {
        free(d->hosts[i].name);
        free(d->hosts[i].port);
        free(d->hosts[i].transport);
        free(d->hosts[i].socket);
    }
    free(d->hosts);
    free(d->net_config);
    free(d->net_snapshot);
    free(d->auth_user);
    d->protocol = d->net_name = d->net_config = d->net_snapshot = d->auth_user = NULL;
    d->hosts = NULL;
    d->n_hosts = 0;
}

static void disk_clear(vmsh_domxml_disk *d)
{
    free(d->target);
    free(d->source);
    free(d->format);
    free(d->device);
    free(d->type);
    free(d->pool);
    free(d->volume);
    net_clear(d);
}

void vmsh_domxml_disk_clear(vmsh_domxml_disk *d)
{
    if (d)
        disk_clear(d);
}

void vmsh_domxml_free(vmsh_domxml *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->n_disks; i++)
        disk_clear(&x->disks[i]);
    for (size_t i = 0; i < x->n_ifaces; i++) {
        free(x->ifaces[i].type);
        free(x->ifaces[i].source);
        free(x->ifaces[i].mac);
        free(x->ifaces[i].model);
    }
    free(x->disks);
    free(x->ifaces);
    free(x->name);
    free(x->uuid);
    free(x->domain_type);
    free(x->nvram);
    free(x->nvram_type);
    free(x->kernel);
    free(x->initrd);
    free(x->dtb);
    free(x->tpm_backend);
    free(x);
}

/* An attribute as a malloc'ed C string (NULL when absent). */
static char *attr(xmlNodePtr n, const char *name)
{
    if (!n)
        return NULL;
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    char *r = strdup((const char *)v);
    xmlFree(v);
    return r;
}

static bool attr_is(xmlNodePtr n, const char *name, const char *want)
{
    _cleanup_free_ char *v = attr(n, name);
    return v && strcmp(v, want) == 0;
}

static char *text_of(xmlNodePtr n)
{
    if (!n)
        return NULL;
    xmlChar *v = xmlNodeGetContent(n);
    if (!v)
        return NULL;
    char *r = strdup((const char *)v);
    xmlFree(v);
    return r;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && xmlStrcmp(c->name, (const xmlChar *)name) == 0)
            return c;
    return NULL;
}

static bool is_element(xmlNodePtr n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, (const xmlChar *)name) == 0;
}

/* <source protocol='iscsi' name='iqn.../1'><host name='h' port='3260'/></source> →
 * "iscsi://h:3260/iqn.../1" */
static char *network_source(xmlNodePtr src)
{
    _cleanup_free_ char *proto = attr(src, "protocol");
    _cleanup_free_ char *name = attr(src, "name");
    xmlNodePtr host = child(src, "host");
    _cleanup_free_ char *hname = attr(host, "name");
    _cleanup_free_ char *port = attr(host, "port");
    _cleanup_free_ char *sock = attr(host, "socket");
    char *r = NULL;
    int n;
    if (sock)
        n = asprintf(&r, "%s+unix://%s%s%s", proto ? proto : "network", name ? name : "",
                     "?socket=", sock);
    else
        n = asprintf(&r, "%s://%s%s%s/%s", proto ? proto : "network", hname ? hname : "",
                     port ? ":" : "", port ? port : "", name ? name : "");
    return n < 0 ? NULL : r;
}

/* The parts of a network source a QEMU of our own needs to open it
 * (vmsh_hv_netdisk_spec); at most 16 hosts (libvirt's RBD and Gluster
 * take a few monitors or servers). -ENOMEM. */
#define MAX_NET_HOSTS 16
static int network_parts(xmlNodePtr disk, xmlNodePtr src, vmsh_domxml_disk *d)
{
    d->net_name = attr(src, "name");
    d->net_config = attr(child(src, "config"), "file");
    d->net_snapshot = attr(child(src, "snapshot"), "name");
    xmlNodePtr auth = child(src, "auth");
    d->auth_user = attr(auth ? auth : child(disk, "auth"), "username");
    size_t n = 0;
    for (xmlNodePtr c = src ? src->children : NULL; c; c = c->next)
        if (is_element(c, "host") && n < MAX_NET_HOSTS)
            n++;
    if (n == 0)
        return 0;
    if (!(d->hosts = calloc(n, sizeof(*d->hosts))))
        return -ENOMEM;
    for (xmlNodePtr c = src->children; c && d->n_hosts < n; c = c->next) {
        if (!is_element(c, "host"))
            continue;
        vmsh_domxml_host *h = &d->hosts[d->n_hosts++];
        h->name = attr(c, "name");
        h->port = attr(c, "port");
        h->transport = attr(c, "transport");
        h->socket = attr(c, "socket");
    }
    return 0;
}

static int parse_disk(xmlNodePtr n, vmsh_domxml_disk *d)
{
    d->type = attr(n, "type");
    d->device = attr(n, "device");
    if (!d->device)
        d->device = strdup("disk");
    xmlNodePtr src = child(n, "source");
    d->target = attr(child(n, "target"), "dev");
    d->format = attr(child(n, "driver"), "type");
    d->readonly = child(n, "readonly") != NULL;
    d->shareable = child(n, "shareable") != NULL;
    xmlNodePtr bs = child(n, "backingStore");
    d->has_backing_chain = bs && child(bs, "source") != NULL;
    const char *type = d->type ? d->type : "file";
    bool lun = d->device && strcmp(d->device, "lun") == 0;

    if (strcmp(type, "file") == 0) {
        d->source = attr(src, "file");
        d->kind = d->source ? VMSH_DISK_FILE : VMSH_DISK_EMPTY;
    } else if (strcmp(type, "block") == 0) {
        d->source = attr(src, "dev");
        d->kind = d->source ? VMSH_DISK_BLOCK : VMSH_DISK_EMPTY;
    } else if (strcmp(type, "network") == 0) {
        d->protocol = attr(src, "protocol");
        d->source = src ? network_source(src) : NULL;
        d->kind = VMSH_DISK_NETWORK;
        if (network_parts(n, src, d) < 0)
            return -ENOMEM;
    } else if (strcmp(type, "nvme") == 0) {
        xmlNodePtr addr = child(src, "address");
        _cleanup_free_ char *dom = attr(addr, "domain"), *bus = attr(addr, "bus"),
                            *slot = attr(addr, "slot"), *fn = attr(addr, "function");
        if (asprintf(&d->source, "nvme pci %s:%s:%s.%s", dom ? dom : "?", bus ? bus : "?",
                     slot ? slot : "?", fn ? fn : "?") < 0)
            d->source = NULL;
        d->kind = VMSH_DISK_PASSTHROUGH;
    } else if (strcmp(type, "vhostuser") == 0) {
        /* an external process serves the disk: QEMU never opens its storage */
        _cleanup_free_ char *path = attr(src, "path");
        if (asprintf(&d->source, "vhost-user %s", path ? path : "?") < 0)
            d->source = NULL;
        d->kind = VMSH_DISK_PASSTHROUGH;
    } else if (strcmp(type, "vhostvdpa") == 0) {
        _cleanup_free_ char *dev = attr(src, "dev");
        if (asprintf(&d->source, "vdpa %s", dev ? dev : "?") < 0)
            d->source = NULL;
        d->kind = VMSH_DISK_PASSTHROUGH;
    } else if (strcmp(type, "dir") == 0) {
        d->source = attr(src, "dir");
        d->kind = VMSH_DISK_UNKNOWN;
    } else if (strcmp(type, "volume") == 0) {
        d->pool = attr(src, "pool");
        d->volume = attr(src, "volume");
        if (asprintf(&d->source, "volume %s/%s", d->pool ? d->pool : "?",
                     d->volume ? d->volume : "?") < 0)
            d->source = NULL;
        /* what it is stored on is the pool's business: resolved by the
         * hypervisor layer (vmsh_domxml_disk_set_volume), never guessed */
        d->kind = d->pool && d->volume ? VMSH_DISK_VOLUME : VMSH_DISK_UNKNOWN;
    } else {
        d->kind = VMSH_DISK_UNKNOWN;
    }
    /* SCSI pass-through of whatever source: the guest drives the device */
    if (lun && d->kind != VMSH_DISK_EMPTY)
        d->kind = VMSH_DISK_PASSTHROUGH;
    d->storage = d->kind == VMSH_DISK_VOLUME ? VMSH_DISK_UNKNOWN : d->kind;
    if (!d->device)
        return -ENOMEM;
    /* libvirt never gives a disk without one, but a backup's XML may: every
     * user of the disk (file names, repaths) needs it. */
    return d->target && *d->target ? 0 : -EINVAL;
}

/* <hostdev mode='subsystem' type='pci|scsi|usb|scsi_host|mdev'> */
static int parse_hostdev(xmlNodePtr n, vmsh_domxml_disk *d, size_t index)
{
    d->type = attr(n, "type");
    d->device = strdup("hostdev");
    if (asprintf(&d->target, "hostdev%zu", index) < 0)
        d->target = NULL;
    xmlNodePtr src = child(n, "source");
    const char *type = d->type ? d->type : "?";
    xmlNodePtr addr = child(src, "address");
    xmlNodePtr adapter = child(src, "adapter");
    _cleanup_free_ char *a1 = NULL, *a2 = NULL, *a3 = NULL, *a4 = NULL, *ad = NULL;
    int r = 0;
    if (strcmp(type, "pci") == 0) {
        a1 = attr(addr, "domain"), a2 = attr(addr, "bus"), a3 = attr(addr, "slot"),
        a4 = attr(addr, "function");
        r = asprintf(&d->source, "pci %s:%s:%s.%s", a1 ? a1 : "?", a2 ? a2 : "?", a3 ? a3 : "?",
                     a4 ? a4 : "?");
    } else if (strcmp(type, "scsi") == 0) {
        _cleanup_free_ char *proto = attr(src, "protocol");
        if (proto) {
            d->source = network_source(src);
        } else {
            ad = attr(adapter, "name"), a1 = attr(addr, "bus"), a2 = attr(addr, "target"),
            a3 = attr(addr, "unit");
            r = asprintf(&d->source, "scsi %s:%s:%s:%s", ad ? ad : "?", a1 ? a1 : "?",
                         a2 ? a2 : "?", a3 ? a3 : "?");
        }
    } else if (strcmp(type, "usb") == 0) {
        xmlNodePtr vendor = child(src, "vendor"), product = child(src, "product");
        a1 = attr(vendor, "id"), a2 = attr(product, "id");
        r = asprintf(&d->source, "usb %s:%s", a1 ? a1 : "?", a2 ? a2 : "?");
    } else if (strcmp(type, "scsi_host") == 0) {
        a1 = attr(src, "wwpn");
        r = asprintf(&d->source, "scsi_host %s", a1 ? a1 : "?");
    } else {
        r = asprintf(&d->source, "%s hostdev", type);
    }
    if (r < 0)
        d->source = NULL;
    d->kind = VMSH_DISK_PASSTHROUGH;
    return d->device && d->target ? 0 : -ENOMEM;
}

static int parse_iface(xmlNodePtr n, vmsh_domxml_iface *f)
{
    f->type = attr(n, "type");
    xmlNodePtr src = child(n, "source");
    if (f->type && strcmp(f->type, "network") == 0)
        f->source = attr(src, "network");
    else if (f->type && strcmp(f->type, "bridge") == 0)
        f->source = attr(src, "bridge");
    else if (f->type && strcmp(f->type, "direct") == 0)
        f->source = attr(src, "dev");
    f->mac = attr(child(n, "mac"), "address");
    f->model = attr(child(n, "model"), "type");
    return 0;
}

static int grow(void **arr, size_t n, size_t size)
{
    void *p = vmsh_realloc_array(*arr, n + 1, size);
    if (!p)
        return -ENOMEM;
    memset((char *)p + n * size, 0, size);
    *arr = p;
    return 0;
}

int vmsh_domxml_parse(vmsh_domxml **out, const char *xml, size_t len, vmsh_error **err)
{
    if (len > VMSH_DOMXML_MAX_BYTES)
        return vmsh_error_set(err, -EFBIG, "domain XML is too large (%zu bytes)", len);
    if (len > INT32_MAX)
        return vmsh_error_set(err, -EFBIG, "domain XML is too large");
    /* No network, no entity substitution, no DTD loading: the XML may come
     * from a backup, which a guest's owner may have shaped. */
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return vmsh_error_set(err, -EINVAL, "domain XML is not well-formed");
    xmlNodePtr root = xmlDocGetRootElement(doc);
    vmsh_domxml *x = calloc(1, sizeof(*x));
    int r = 0;
    if (!x) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    x->agent_connected = -1;
    if (!root || !is_element(root, "domain")) {
        r = vmsh_error_set(err, -EINVAL, "XML is not a libvirt <domain>");
        goto out;
    }
    x->domain_type = attr(root, "type");
    x->name = text_of(child(root, "name"));
    x->uuid = text_of(child(root, "uuid"));
    if (!x->name || !*x->name) {
        r = vmsh_error_set(err, -EINVAL, "domain XML has no <name>");
        goto out;
    }
    xmlNodePtr os = child(root, "os");
    xmlNodePtr nv = child(os, "nvram");
    x->nvram = text_of(nv);
    if (x->nvram && !*x->nvram) {
        free(x->nvram);
        x->nvram = NULL;
    }
    /* libvirt 8.5+: <nvram type='file|block|network'><source .../></nvram> */
    x->nvram_type = attr(nv, "type");
    if (x->nvram_type) {
        free(x->nvram); /* the element's text is only whitespace then */
        x->nvram = NULL;
        xmlNodePtr ns = child(nv, "source");
        if (strcmp(x->nvram_type, "file") == 0)
            x->nvram = attr(ns, "file");
        else if (strcmp(x->nvram_type, "block") == 0)
            x->nvram = attr(ns, "dev");
        else if (ns)
            x->nvram = network_source(ns);
    }
    x->kernel = text_of(child(os, "kernel"));
    x->initrd = text_of(child(os, "initrd"));
    x->dtb = text_of(child(os, "dtb"));
    size_t hostdevs = 0;
    for (xmlNodePtr n = child(root, "devices") ? child(root, "devices")->children : NULL;
         n && r == 0; n = n->next) {
        if (is_element(n, "disk")) {
            if ((r = grow((void **)&x->disks, x->n_disks, sizeof(*x->disks))) == 0)
                r = parse_disk(n, &x->disks[x->n_disks++]);
        } else if (is_element(n, "hostdev")) {
            if ((r = grow((void **)&x->disks, x->n_disks, sizeof(*x->disks))) == 0)
                r = parse_hostdev(n, &x->disks[x->n_disks++], hostdevs++);
        } else if (is_element(n, "interface")) {
            if ((r = grow((void **)&x->ifaces, x->n_ifaces, sizeof(*x->ifaces))) == 0)
                r = parse_iface(n, &x->ifaces[x->n_ifaces++]);
        } else if (is_element(n, "channel")) {
            xmlNodePtr t = child(n, "target");
            if (attr_is(t, "name", "org.qemu.guest_agent.0")) {
                x->agent_channel = true;
                _cleanup_free_ char *st = attr(t, "state");
                if (st)
                    x->agent_connected = strcmp(st, "connected") == 0;
            }
        } else if (is_element(n, "tpm")) {
            free(x->tpm_backend);
            x->tpm_backend = attr(child(n, "backend"), "type");
        }
    }
    if (r == -EINVAL)
        r = vmsh_error_set(err, r, "domain XML of %s: a <disk> has no <target dev=...>", x->name);
    else if (r < 0)
        r = vmsh_error_set(err, r, "out of memory parsing domain XML");
out:
    xmlFreeDoc(doc);
    if (r < 0) {
        vmsh_domxml_free(x);
        return r;
    }
    *out = x;
    return 0;
}

void vmsh_domxml_mark_block_nodes(vmsh_domxml *x, bool (*is_block)(const char *path, void *ctx),
                                  void *ctx)
{
    for (size_t i = 0; x && i < x->n_disks; i++) {
        vmsh_domxml_disk *d = &x->disks[i];
        if (d->kind == VMSH_DISK_FILE && d->source && is_block(d->source, ctx))
            d->kind = d->storage = VMSH_DISK_BLOCK;
        else if (d->kind == VMSH_DISK_VOLUME && d->storage == VMSH_DISK_FILE && d->source &&
                 is_block(d->source, ctx))
            d->storage = VMSH_DISK_BLOCK;
    }
}

int vmsh_domxml_disk_adopt_volume(vmsh_domxml_disk *live, const vmsh_domxml_disk *persistent)
{
    const vmsh_domxml_disk *p = persistent;
    if ((live->kind != VMSH_DISK_FILE && live->kind != VMSH_DISK_BLOCK) || !live->source ||
        !live->target || p->kind != VMSH_DISK_VOLUME || !p->pool || !p->volume ||
        p->storage != live->kind || !p->source || !p->target ||
        strcmp(p->target, live->target) != 0 || strcmp(p->source, live->source) != 0)
        return 0;
    char *type = strdup("volume"), *pool = strdup(p->pool), *volume = strdup(p->volume);
    if (!type || !pool || !volume) {
        free(type);
        free(pool);
        free(volume);
        return -ENOMEM;
    }
    free(live->type);
    free(live->pool);
    free(live->volume);
    live->type = type;
    live->pool = pool;
    live->volume = volume;
    live->storage = live->kind;
    live->kind = VMSH_DISK_VOLUME;
    return 1;
}

int vmsh_domxml_disk_set_volume(vmsh_domxml_disk *d, const char *path, vmsh_disk_kind storage)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    free(d->source);
    d->source = p;
    d->storage = storage;
    return 0;
}

int vmsh_domxml_disk_set_pool_network(vmsh_domxml_disk *d, const char *pool_xml, size_t len)
{
    if (d->storage != VMSH_DISK_NETWORK || !d->source || !*d->source ||
        len > VMSH_DOMXML_MAX_BYTES || len > INT32_MAX)
        return -EINVAL;
    xmlDocPtr doc = xmlReadMemory(pool_xml, (int)len, "pool.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return -EINVAL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int r = 0;
    if (!root || !is_element(root, "pool"))
        r = -EINVAL;
    else if (!attr_is(root, "type", "rbd"))
        r = -ENOTSUP;
    if (r == 0) {
        /* <source><name>CEPH-POOL</name><host name= port=/>...<auth
         * type='ceph' username=...><secret .../></auth></source>: what
         * libvirt gives QEMU for the volume, the name being its path
         * ("CEPH-POOL/IMAGE") */
        net_clear(d);
        xmlNodePtr src = child(root, "source");
        if (network_parts(NULL, src, d) < 0 || !(d->protocol = strdup("rbd")))
            r = -ENOMEM;
        /* the pool's <source> names the Ceph pool in a <name> element, not
         * an attribute: the volume's path is the image's name */
        free(d->net_name);
        d->net_name = NULL;
        if (r == 0 && !(d->net_name = strdup(d->source)))
            r = -ENOMEM;
        if (r < 0)
            net_clear(d);
    }
    xmlFreeDoc(doc);
    return r;
}
