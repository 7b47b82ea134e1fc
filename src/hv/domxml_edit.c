#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
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

static void xml_freep(char **p)
{
    xmlFree(*p);
}
#define _cleanup_xmlfree_ __attribute__((cleanup(xml_freep)))

static void drop(xmlNodePtr n)
{
    if (!n)
        return;
    xmlUnlinkNode(n);
    xmlFreeNode(n);
}

static int disconnect(xmlNodePtr iface);

/* ------------------------------------------------ host resources (issue 20) */

/* libvirt's own places for the sockets it creates itself (the guest agent
 * channel, monitors): a unix chardev there is libvirt's, elsewhere it
 * connects the guest to whatever listens on the host. */
static const char *const libvirt_socket_dirs[] = {"/var/lib/libvirt/qemu/", "/run/libvirt/qemu/",
                                                  "/var/run/libvirt/qemu/"};

/* The emulators distributions install: any other is a host program the
 * backup chose, and goes (libvirt then picks the host's default). */
static const char *const default_emulators[] = {"/usr/bin/qemu-system-", "/usr/libexec/qemu-kvm",
                                                "/usr/bin/qemu-kvm", "/usr/bin/kvm"};

#define QEMU_NS "http://libvirt.org/schemas/domain/qemu/1.0"

static char *prop(xmlNodePtr n, const char *name)
{
    return n ? (char *)xmlGetProp(n, (const xmlChar *)name) : NULL;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool is_default_emulator(const char *path)
{
    if (!vmsh_path_is_clean(path))
        return false;
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(default_emulators); i++) {
        const char *d = default_emulators[i];
        size_t n = strlen(d);
        if (d[n - 1] == '-') { /* qemu-system-<arch>: a plain arch name */
            if (!has_prefix(path, d) || !path[n])
                continue;
            bool plain = true;
            for (const char *c = path + n; *c && plain; c++)
                plain = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
            if (plain)
                return true;
        } else if (strcmp(path, d) == 0) {
            return true;
        }
    }
    return false;
}

/* A unix socket path of libvirt's own (or none: libvirt picks one). */
static bool libvirt_socket(const char *path)
{
    if (!path)
        return true;
    if (!vmsh_path_is_clean(path))
        return false;
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(libvirt_socket_dirs); i++)
        if (has_prefix(path, libvirt_socket_dirs[i]))
            return true;
    return false;
}

/* A character device (<serial>, <parallel>, <console>, <channel>) that
 * reaches nothing of the host: a pseudo-terminal, the display's channels,
 * nothing at all, or a unix socket of libvirt's own. Files, host devices,
 * pipes, sockets elsewhere and network endpoints are the host's. */
static bool chardev_is_guest_only(xmlNodePtr n)
{
    static const char *const ok[] = {"pty",       "vc",           "null", "spicevmc",
                                     "spiceport", "qemu-vdagent", "dbus"};
    _cleanup_xmlfree_ char *type = prop(n, "type");
    if (!type)
        return true; /* libvirt's default: pty */
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(ok); i++)
        if (strcmp(type, ok[i]) == 0)
            return true;
    if (strcmp(type, "unix") != 0)
        return false;
    for (xmlNodePtr c = n->children; c; c = c->next) {
        if (!is_el(c, "source"))
            continue;
        _cleanup_xmlfree_ char *path = prop(c, "path");
        if (!libvirt_socket(path))
            return false;
    }
    return true;
}

/* Disk targets the restore wrote (the ones it re-paths); with `in_place`,
 * only those it wrote onto a block device (re-pathed to that device). */
static bool restored_target(const vmsh_domxml_edit *e, xmlNodePtr disk, bool in_place)
{
    xmlNodePtr t = child(disk, "target");
    for (size_t i = 0; t && i < e->n_disks; i++)
        if (attr_eq(t, "dev", e->disks[i].target) && (!in_place || e->disks[i].in_place))
            return true;
    return false;
}

/* What of `n` (a child of <devices> or of <domain>) is the host's: the node
 * to take out (`n` itself, or one of its children) and a description of it
 * (malloc'ed) in *what; NULL when nothing is. */
static xmlNodePtr host_part(xmlNodePtr n, const vmsh_domxml_edit *e, char **what)
{
    *what = NULL;
    if (!n || n->type != XML_ELEMENT_NODE)
        return NULL;
    const char *el = (const char *)n->name;
    _cleanup_xmlfree_ char *type = prop(n, "type");
    _cleanup_xmlfree_ char *device = prop(n, "device");
    xmlNodePtr src = child(n, "source");
    char buf[768];
    buf[0] = 0;
    xmlNodePtr victim = NULL;
    if (n->ns && n->ns->href && xmlStrcmp(n->ns->href, (const xmlChar *)QEMU_NS) == 0) {
        /* <qemu:commandline>, <qemu:override>...: arguments QEMU runs with */
        snprintf(buf, sizeof(buf), "qemu:%s (QEMU arguments given by the backup)", el);
        victim = n;
    } else if (n->parent && n->parent->type == XML_ELEMENT_NODE && is_el(n->parent, "domain")) {
        return NULL; /* only the qemu namespace counts at the top */
    } else if (strcmp(el, "emulator") == 0) {
        _cleanup_xmlfree_ char *path = (char *)xmlNodeGetContent(n);
        if (!is_default_emulator(path)) {
            snprintf(buf, sizeof(buf), "emulator %s (libvirt picks the host's default)",
                     path ? path : "");
            victim = n;
        }
    } else if (strcmp(el, "hostdev") == 0) {
        _cleanup_xmlfree_ char *mode = prop(n, "mode");
        snprintf(buf, sizeof(buf), "hostdev (%s %s)", mode ? mode : "subsystem", type ? type : "");
        victim = n;
    } else if (strcmp(el, "disk") == 0) {
        bool file = !type || strcmp(type, "file") == 0;
        xmlNodePtr t = child(n, "target");
        _cleanup_xmlfree_ char *dev = prop(t, "dev");
        _cleanup_xmlfree_ char *path = prop(src, "file");
        bool lun = device && strcmp(device, "lun") == 0;
        /* a block disk the restore wrote in place stays (re-pathed to the
         * device written, which holds the backup's bytes: issue 25) */
        /* a disk the restore wrote stays: in place on its storage (a block
         * device, an RBD image, a volume: issue 25) or re-pathed to the
         * image file written (--to turns any kind into one) */
        bool ours = type &&
                    (strcmp(type, "block") == 0 || strcmp(type, "network") == 0 ||
                     strcmp(type, "volume") == 0) &&
                    restored_target(e, n, false);
        if ((!file && !ours) || lun) {
            _cleanup_xmlfree_ char *dsrc = prop(src, "dev");
            _cleanup_xmlfree_ char *name = prop(src, "name");
            snprintf(buf, sizeof(buf), "disk %s (%s%s %s)", dev ? dev : "?", type ? type : "",
                     device && strcmp(device, "lun") == 0 ? " lun" : "",
                     dsrc   ? dsrc
                     : name ? name
                            : "");
            victim = n;
        } else if (path && !restored_target(e, n, false)) {
            /* an image the backup does not hold: a host file (or device
             * node) the restore did not write. A removable drive stays,
             * empty; any other disk goes. */
            bool removable =
                device && (strcmp(device, "cdrom") == 0 || strcmp(device, "floppy") == 0);
            snprintf(buf, sizeof(buf), "disk %s (file %s, not in the backup%s)", dev ? dev : "?",
                     path, removable ? ": the drive is left empty" : "");
            victim = removable ? src : n;
        }
    } else if (strcmp(el, "filesystem") == 0) {
        if (!type || strcmp(type, "ram") != 0) {
            _cleanup_xmlfree_ char *dir = prop(src, "dir");
            _cleanup_xmlfree_ char *file = prop(src, "file");
            _cleanup_xmlfree_ char *dev = prop(src, "dev");
            _cleanup_xmlfree_ char *sock = prop(src, "socket");
            const char *s = dir ? dir : file ? file : dev ? dev : sock ? sock : "";
            snprintf(buf, sizeof(buf), "filesystem (%s %s)", type ? type : "mount", s);
            victim = n;
        }
    } else if (strcmp(el, "tpm") == 0) {
        xmlNodePtr be = child(n, "backend");
        _cleanup_xmlfree_ char *bt = prop(be, "type");
        if (!bt || strcmp(bt, "emulator") != 0) {
            xmlNodePtr dev = child(be, "device");
            _cleanup_xmlfree_ char *path = prop(dev, "path");
            snprintf(buf, sizeof(buf), "tpm (%s %s)", bt ? bt : "?", path ? path : "");
            victim = n;
        }
    } else if (strcmp(el, "input") == 0) {
        if (type && (strcmp(type, "evdev") == 0 || strcmp(type, "passthrough") == 0)) {
            _cleanup_xmlfree_ char *dev = prop(src, "dev");
            _cleanup_xmlfree_ char *evdev = prop(src, "evdev");
            snprintf(buf, sizeof(buf), "input (%s %s)", type, dev ? dev : evdev ? evdev : "");
            victim = n;
        }
    } else if (strcmp(el, "serial") == 0 || strcmp(el, "parallel") == 0 ||
               strcmp(el, "console") == 0 || strcmp(el, "channel") == 0) {
        xmlNodePtr log = child(n, "log");
        if (!chardev_is_guest_only(n)) {
            _cleanup_xmlfree_ char *path = prop(src, "path");
            _cleanup_xmlfree_ char *host = prop(src, "host");
            snprintf(buf, sizeof(buf), "%s (%s %s)", el, type ? type : "",
                     path   ? path
                     : host ? host
                            : "");
            victim = n;
        } else if (log) {
            /* virtlogd writes (as root) wherever it says */
            _cleanup_xmlfree_ char *file = prop(log, "file");
            snprintf(buf, sizeof(buf), "%s log file %s", el, file ? file : "");
            victim = log;
        }
    } else if (strcmp(el, "redirdev") == 0 || strcmp(el, "smartcard") == 0) {
        /* USB redirection and smart cards: through the display's channel
         * only; host readers and network endpoints are the host's */
        if (!type || strcmp(type, "spicevmc") != 0) {
            _cleanup_xmlfree_ char *mode = prop(n, "mode");
            snprintf(buf, sizeof(buf), "%s (%s)", el, type ? type : mode ? mode : "");
            victim = n;
        }
    } else if (strcmp(el, "shmem") == 0) {
        _cleanup_xmlfree_ char *name = prop(n, "name");
        snprintf(buf, sizeof(buf), "shmem %s (host shared memory)", name ? name : "");
        victim = n;
    } else if (strcmp(el, "memory") == 0 && src) {
        xmlNodePtr p = child(src, "path");
        _cleanup_xmlfree_ char *path = p ? (char *)xmlNodeGetContent(p) : NULL;
        _cleanup_xmlfree_ char *model = prop(n, "model");
        if (path) {
            snprintf(buf, sizeof(buf), "memory %s (file %s)", model ? model : "", path);
            victim = n;
        }
    } else if (strcmp(el, "rng") == 0) {
        xmlNodePtr be = child(n, "backend");
        _cleanup_xmlfree_ char *model = prop(be, "model");
        _cleanup_xmlfree_ char *path = be ? (char *)xmlNodeGetContent(be) : NULL;
        bool ok =
            model && (strcmp(model, "builtin") == 0 ||
                      (strcmp(model, "random") == 0 &&
                       (!path || !*path || strcmp(path, "/dev/urandom") == 0 ||
                        strcmp(path, "/dev/random") == 0 || strcmp(path, "/dev/hwrng") == 0)));
        if (!ok) {
            snprintf(buf, sizeof(buf), "rng (%s %s)", model ? model : "?",
                     model && strcmp(model, "random") == 0 && path ? path : "");
            victim = n;
        }
    } else if (strcmp(el, "interface") == 0) {
        /* a host device behind the NIC; a script libvirt runs as root */
        xmlNodePtr sc = child(n, "script");
        if (!sc)
            sc = child(n, "downscript");
        _cleanup_xmlfree_ char *script = prop(sc, "path");
        _cleanup_xmlfree_ char *dev = prop(src, "dev");
        _cleanup_xmlfree_ char *sock = prop(src, "path");
        bool hostdev = type && (strcmp(type, "hostdev") == 0 || strcmp(type, "vdpa") == 0 ||
                                (strcmp(type, "vhostuser") == 0 && !libvirt_socket(sock)));
        if (hostdev)
            snprintf(buf, sizeof(buf), "interface (%s %s)%s%s", type,
                     dev    ? dev
                     : sock ? sock
                            : "",
                     sc ? " with a script " : "", script ? script : "");
        else if (sc)
            snprintf(buf, sizeof(buf), "interface %s %s", (const char *)sc->name,
                     script ? script : "");
        if (hostdev || sc)
            victim = n;
    }
    if (victim)
        *what = strdup(buf); /* NULL: out of memory */
    return victim;
}
static int repath(xmlNodePtr disk, const vmsh_disk_repath *rp)
{
    xmlNodePtr src = child(disk, "source");
    xmlNodePtr net_src = NULL;
    if (rp->backing && rp->backing_network && src) {
        /* the network source, with its credentials, goes below the overlay
         * as it is: libvirt opens it there as it did on top */
        xmlUnlinkNode(src);
        net_src = src;
        src = NULL;
        xmlNodePtr auth = child(disk, "auth");
        if (auth && !child(net_src, "auth")) {
            xmlUnlinkNode(auth);
            xmlAddChild(net_src, auth);
        }
    }
    if (rp->in_place && rp->rbd && rp->rbd_source) {
        /* R12: the monitors, configuration and credentials of the VM this
         * restore replaces, never the backup's (a crafted backup must not
         * make the host hand a secret of its own to another cluster) */
        xmlDocPtr frag =
            xmlReadMemory(rp->rbd_source, (int)strlen(rp->rbd_source), "disk.xml", NULL,
                          XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        xmlNodePtr froot = frag ? xmlDocGetRootElement(frag) : NULL;
        xmlNodePtr fsrc = is_el(froot, "disk") ? child(froot, "source") : NULL;
        xmlNodePtr fauth = fsrc ? child(froot, "auth") : NULL;
        xmlNodePtr nsrc = fsrc ? xmlDocCopyNode(fsrc, disk->doc, 1) : NULL;
        xmlNodePtr nauth = fauth ? xmlDocCopyNode(fauth, disk->doc, 1) : NULL;
        xmlFreeDoc(frag);
        if (!nsrc || (fauth && !nauth)) {
            xmlFreeNode(nsrc);
            xmlFreeNode(nauth);
            return -ENOMEM;
        }
        drop(src);
        drop(child(disk, "auth"));
        src = xmlAddChild(disk, nsrc);
        if (nauth)
            xmlAddChild(disk, nauth);
        if (!xmlSetProp(src, (const xmlChar *)"protocol", (const xmlChar *)"rbd") ||
            !xmlSetProp(src, (const xmlChar *)"name", (const xmlChar *)rp->rbd))
            return -ENOMEM;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"network");
    } else if (rp->in_place && rp->rbd) {
        /* an RBD image the restore created (rbd create, the host's own Ceph
         * client configuration): the definition names it there too, with
         * no monitor nor configuration file of the backup's (R12: they could
         * name another cluster, to which QEMU would then authenticate with
         * the secret the <auth> names) */
        if (!src)
            src = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
        for (xmlNodePtr c = src ? src->children : NULL, nx; c; c = nx) {
            nx = c->next;
            if (is_el(c, "host") || is_el(c, "config"))
                drop(c);
        }
        if (!src || !xmlSetProp(src, (const xmlChar *)"protocol", (const xmlChar *)"rbd") ||
            !xmlSetProp(src, (const xmlChar *)"name", (const xmlChar *)rp->rbd))
            return -ENOMEM;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"network");
    } else if (rp->in_place && rp->volume) {
        if (src) {
            xmlUnlinkNode(src);
            xmlFreeNode(src);
        }
        src = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
        if (!src || !xmlSetProp(src, (const xmlChar *)"pool", (const xmlChar *)rp->pool) ||
            !xmlSetProp(src, (const xmlChar *)"volume", (const xmlChar *)rp->volume))
            return -ENOMEM;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"volume");
    } else if (rp->in_place) {
        /* the device written: type='block', its node and nothing else (QEMU
         * opens it with its host_device driver) */
        if (src) {
            xmlUnlinkNode(src);
            xmlFreeNode(src);
        }
        src = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
        if (!src || !xmlSetProp(src, (const xmlChar *)"dev", (const xmlChar *)rp->path))
            return -ENOMEM;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"block");
    } else {
        /* a block, network or volume disk turned into an image file (--to,
         * issue 25): nothing of its old source stays (a device, monitors,
         * a pool), nor its credentials */
        _cleanup_xmlfree_ char *was = prop(disk, "type");
        if (src && was && strcmp(was, "file") != 0) {
            xmlUnlinkNode(src);
            xmlFreeNode(src);
            src = NULL;
            xmlNodePtr auth = child(disk, "auth");
            if (auth) {
                xmlUnlinkNode(auth);
                xmlFreeNode(auth);
            }
        }
        if (!src)
            src = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
        if (!src || !xmlSetProp(src, (const xmlChar *)"file", (const xmlChar *)rp->path))
            return -ENOMEM;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
    }
    xmlNodePtr old_chain = child(disk, "backingStore");
    if (old_chain)
        xmlUnlinkNode(old_chain);
    if (rp->backing) {
        /* overlay -> backing image -> the image's own chain, if any */
        xmlNodePtr bs = xmlNewChild(disk, NULL, (const xmlChar *)"backingStore", NULL);
        xmlNodePtr fmt = bs ? xmlNewChild(bs, NULL, (const xmlChar *)"format", NULL) : NULL;
        xmlNodePtr bsrc = !bs       ? NULL
                          : net_src ? xmlAddChild(bs, net_src)
                                    : xmlNewChild(bs, NULL, (const xmlChar *)"source", NULL);
        if (bsrc == net_src)
            net_src = NULL; /* the document's now */
        if (!bsrc || !fmt) {
            xmlFreeNode(old_chain);
            xmlFreeNode(net_src);
            return -ENOMEM;
        }
        /* QEMU opens a device node with its host_device driver, which
         * libvirt picks for type='block' (issue 25) */
        xmlSetProp(bs, (const xmlChar *)"type",
                   (const xmlChar *)(rp->backing_network ? "network"
                                     : rp->backing_block ? "block"
                                                         : "file"));
        xmlSetProp(fmt, (const xmlChar *)"type",
                   (const xmlChar *)(rp->backing_format ? rp->backing_format : "raw"));
        if (!rp->backing_network)
            xmlSetProp(bsrc, (const xmlChar *)(rp->backing_block ? "dev" : "file"),
                       (const xmlChar *)rp->backing);
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

static void drop_all(xmlNodePtr n, const char *name)
{
    xmlNodePtr next = NULL;
    for (xmlNodePtr c = n->children; c; c = next) {
        next = c->next;
        if (is_el(c, name))
            drop(c);
    }
}

/* A character device connected to nothing: only what the guest sees of
 * it (<target>, <address>, <alias>) is kept. */
static void to_null(xmlNodePtr n)
{
    xmlNodePtr next = NULL;
    for (xmlNodePtr c = n->children; c; c = next) {
        next = c->next;
        if (c->type == XML_ELEMENT_NODE && !is_el(c, "target") && !is_el(c, "address") &&
            !is_el(c, "alias"))
            drop(c);
    }
    xmlSetProp(n, (const xmlChar *)"type", (const xmlChar *)"null");
}

/* Takes the host's parts out of the definition (drop_host_devices): each
 * described in (*items)[*n]; with `apply` false only described. An
 * interface on a host device is disconnected, not removed: the guest keeps
 * its NIC, and the interfaces keep their order (e->ifaces). */
static int strip_host(xmlNodePtr root, const vmsh_domxml_edit *e, bool apply, char ***items,
                      size_t *n)
{
    xmlNodePtr next = NULL;
    xmlNodePtr devices = child(root, "devices");
    for (int pass = 0; pass < 2; pass++) {
        for (xmlNodePtr c = pass == 0 ? root->children : (devices ? devices->children : NULL); c;
             c = next) {
            next = c->next;
            char *what = NULL;
            xmlNodePtr v = host_part(c, e, &what);
            if (!v)
                continue;
            if (!what)
                return -ENOMEM;
            if (items) {
                char **ni = realloc(*items, (*n + 1) * sizeof(char *));
                if (!ni) {
                    free(what);
                    return -ENOMEM;
                }
                *items = ni;
                ni[(*n)++] = what;
            } else {
                free(what);
            }
            if (!apply)
                continue;
            if (v == c && is_el(c, "interface")) {
                _cleanup_xmlfree_ char *type = prop(c, "type");
                drop_all(c, "script");
                drop_all(c, "downscript");
                if (type && strcmp(type, "ethernet") != 0) {
                    drop_all(c, "driver");
                    if (disconnect(c) < 0)
                        return -ENOMEM;
                }
            } else if (v == c &&
                       (is_el(c, "serial") || is_el(c, "parallel") || is_el(c, "console"))) {
                /* the port stays (the guest's hardware, a saved state's
                 * devices), connected to nothing */
                to_null(c);
            } else if (v != c) {
                /* a part: every one of its kind (a second <log>...) */
                char name[64];
                snprintf(name, sizeof(name), "%s", (const char *)v->name);
                drop_all(c, name);
            } else {
                drop(v);
            }
        }
    }
    return 0;
}

static void free_items(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

/* A definition (hostile input: a backup's) parsed within bounds, no network. */
static int read_domain(const char *xml, size_t len, xmlDocPtr *doc, vmsh_error **err)
{
    if (len > VMSH_DOMXML_MAX_BYTES || len > INT32_MAX)
        return vmsh_error_set(err, -EFBIG, "domain XML is too large (%zu bytes)", len);
    *doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!*doc)
        return vmsh_error_set(err, -EINVAL, "domain XML is not well-formed");
    return 0;
}

int vmsh_domxml_host_resources(const char *xml, size_t len, const vmsh_domxml_edit *e,
                               char ***items, size_t *n, vmsh_error **err)
{
    *items = NULL;
    *n = 0;
    xmlDocPtr doc = NULL;
    int pr = read_domain(xml, len, &doc, err);
    if (pr < 0)
        return pr;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int r = 0;
    if (!is_el(root, "domain"))
        r = vmsh_error_set(err, -EINVAL, "XML is not a libvirt <domain>");
    else if (strip_host(root, e, false, items, n) < 0)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    xmlFreeDoc(doc);
    if (r < 0) {
        free_items(*items, *n);
        *items = NULL;
        *n = 0;
    }
    return r;
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
    xmlDocPtr doc = NULL;
    int pr = read_domain(xml, len, &doc, err);
    if (pr < 0)
        return pr;
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
    char **items = NULL;
    size_t n_items = 0;
    if (e->drop_host_devices &&
        strip_host(root, e, true, e->stripped ? &items : NULL, &n_items) < 0)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (xmlNodePtr n = devices ? devices->children : NULL; n && r == 0; n = next) {
        next = n->next;
        if (is_el(n, "disk")) {
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
    if (r == 0 && e->stripped) {
        *e->stripped = items;
        *e->n_stripped = n_items;
        items = NULL;
        n_items = 0;
    }
    free_items(items, n_items);
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

int vmsh_domxml_disk_source_xml(const char *xml, size_t len, const char *target, char **out,
                                vmsh_error **err)
{
    *out = NULL;
    xmlDocPtr doc = NULL;
    int pr = read_domain(xml, len, &doc, err);
    if (pr < 0)
        return pr;
    xmlNodePtr root = xmlDocGetRootElement(doc), disk = NULL;
    xmlNodePtr devices = is_el(root, "domain") ? child(root, "devices") : NULL;
    for (xmlNodePtr n = devices ? devices->children : NULL; n && !disk; n = n->next)
        if (is_el(n, "disk") && child(n, "target") && attr_eq(child(n, "target"), "dev", target))
            disk = n;
    xmlNodePtr src = child(disk, "source"), auth = child(disk, "auth");
    xmlBufferPtr b = src ? xmlBufferCreate() : NULL;
    int r = 0;
    if (!src)
        r = vmsh_error_set(err, -ENOENT, "the definition has no disk %s with a source", target);
    else if (!b || xmlBufferCat(b, (const xmlChar *)"<disk>") != 0 ||
             xmlNodeDump(b, doc, src, 0, 0) < 0 || (auth && xmlNodeDump(b, doc, auth, 0, 0) < 0) ||
             xmlBufferCat(b, (const xmlChar *)"</disk>") != 0 ||
             !(*out = strdup((const char *)xmlBufferContent(b))))
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (b)
        xmlBufferFree(b);
    xmlFreeDoc(doc);
    return r;
}
