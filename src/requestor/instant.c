/* instant.c - instant restore (instant.h; issue 23 points 2 and 3).
 *
 * Steps, each journaled (STATE_DIR/instant/VM.json, written atomically)
 * before it is taken:
 *   serve    the disks' servers start (detached nbdkit, sockets in a private
 *            directory under the run directory)
 *   restore  the normal restore, with each disk written as a qcow2 overlay on
 *            its server (requestor/restore.c's disk_backing hook): the VM is
 *            defined re-pathed and re-wired, its disks stop on I/O errors
 *   start    the VM starts
 *   overlay  (block or RBD targets only) the definition the restore
 *            registered, which names the device or image, is kept beside the
 *            journal (VM.xml); each such disk gets a qcow2 overlay on its
 *            server in the scratch directory (else STATE_DIR/instant/overlays) and
 *            the VM is defined on those overlays
 *   pull     a block pull per file disk; a disk is done when its job is over
 *            and the disk has no backing image left. A block or RBD disk is
 *            block-copied (whole chain, guest writes mirrored) onto its
 *            device or image and pivoted; it is done once the VM runs on it,
 *            and the definition names it again from then on
 *   finish   serving stops, the definition loses the stop-on-error policy,
 *            the journal is removed
 * vmsh_instant_recover drives a journal from wherever it stopped to its end,
 * or tears it down (abandon). */
#include "requestor_priv.h"

#include <vmshadow/hv/blockjob.h>
#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/requestor/instant.h>
#include <vmshadow/requestor/serve.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/kvconf.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>

#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define JOURNAL_VERSION 2 /* 2: block copy onto devices and RBD images */
#define POLL_MS         250

typedef struct idisk {
    char *disk, *file, *socket, *overlay;
    /* block copy (version 2): the device or RBD image ("POOL/IMAGE") the
     * disk is copied onto, NULL for a pulled file disk; the last copy step
     * journaled ("overlay", "copy", "pivot") */
    char *copy_to, *phase;
    bool done;
} idisk;

typedef struct ijob {
    char *path; /* the journal */
    char *uri;  /* backing_of's answer */
    char *vm, *backup, *repo, *key_file, *run_dir, *step, *started, *log;
    char *definition; /* the final definition's file (block copy), or NULL */
    char *final_xml;  /* its text, once read (not journaled) */
    uint64_t bandwidth;
    idisk *disks;
    size_t n;
} ijob;

static void ijob_clear(ijob *j)
{
    for (size_t i = 0; j->disks && i < j->n; i++) {
        free(j->disks[i].disk);
        free(j->disks[i].file);
        free(j->disks[i].socket);
        free(j->disks[i].overlay);
        free(j->disks[i].copy_to);
        free(j->disks[i].phase);
    }
    free(j->disks);
    free(j->definition);
    free(j->final_xml);
    free(j->path);
    free(j->uri);
    free(j->vm);
    free(j->backup);
    free(j->repo);
    free(j->key_file);
    free(j->run_dir);
    free(j->step);
    free(j->started);
    free(j->log);
    memset(j, 0, sizeof(*j));
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static char *dup_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return strdup(json_object_get_string(v));
}

/* Writes the journal with `step` (atomic: the old one or the new one). */
static int journal_write(ijob *j, const char *step, vmsh_error **err)
{
    if (step && step != j->step) {
        char *s = strdup(step);
        if (!s)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        free(j->step);
        j->step = s;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "version", json_object_new_int(JOURNAL_VERSION));
    json_object_object_add(o, "vm", jstr(j->vm));
    json_object_object_add(o, "backup", jstr(j->backup));
    json_object_object_add(o, "repo", jstr(j->repo));
    json_object_object_add(o, "key_file", jstr(j->key_file));
    json_object_object_add(o, "run_dir", jstr(j->run_dir));
    json_object_object_add(o, "bandwidth", json_object_new_int64((int64_t)j->bandwidth));
    json_object_object_add(o, "step", jstr(j->step));
    json_object_object_add(o, "started", jstr(j->started));
    json_object_object_add(o, "definition", jstr(j->definition));
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < j->n; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "disk", jstr(j->disks[i].disk));
        json_object_object_add(d, "file", jstr(j->disks[i].file));
        json_object_object_add(d, "socket", jstr(j->disks[i].socket));
        json_object_object_add(d, "overlay", jstr(j->disks[i].overlay));
        json_object_object_add(d, "copy_to", jstr(j->disks[i].copy_to));
        json_object_object_add(d, "phase", jstr(j->disks[i].phase));
        json_object_object_add(d, "done", json_object_new_boolean(j->disks[i].done));
        json_object_array_add(a, d);
    }
    json_object_object_add(o, "disks", a);
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
    int r = vmsh_fs_write_atomic(j->path, text, strlen(text), 0600, err);
    json_object_put(o);
    return r;
}

/* Reads a journal; every byte is checked (it names paths that are removed
 * and processes that are stopped). */
static int journal_read(const char *path, ijob *j, vmsh_error **err)
{
    memset(j, 0, sizeof(*j));
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = vmsh_fs_read_all(path, 1 << 20, &text, &len, err);
    if (r < 0)
        return r;
    json_object *o = json_tokener_parse(text);
    json_object *v = NULL, *a = NULL;
    /* version 1 (no block copy) reads as a version 2 without copies */
    if (!o || !json_object_object_get_ex(o, "version", &v) ||
        (json_object_get_int(v) != 1 && json_object_get_int(v) != 2) ||
        !json_object_object_get_ex(o, "disks", &a) || !json_object_is_type(a, json_type_array)) {
        json_object_put(o);
        return vmsh_error_set(err, -EBADMSG,
                              "%s is not an instant-restore journal of version 1 or %d; move it "
                              "away and clean up by hand",
                              path, JOURNAL_VERSION);
    }
    j->path = strdup(path);
    j->vm = dup_str(o, "vm");
    j->backup = dup_str(o, "backup");
    j->repo = dup_str(o, "repo");
    j->key_file = dup_str(o, "key_file");
    j->run_dir = dup_str(o, "run_dir");
    j->step = dup_str(o, "step");
    j->started = dup_str(o, "started");
    j->definition = dup_str(o, "definition");
    if (json_object_object_get_ex(o, "bandwidth", &v))
        j->bandwidth = (uint64_t)json_object_get_int64(v);
    j->n = json_object_array_length(a);
    j->disks = vmsh_calloc_array(j->n ? j->n : 1, sizeof(idisk));
    r = j->path && j->vm && j->backup && j->repo && j->run_dir && j->step && j->disks && j->n < 64
            ? 0
            : -EBADMSG;
    for (size_t i = 0; r == 0 && i < j->n; i++) {
        json_object *d = json_object_array_get_idx(a, i);
        idisk *x = &j->disks[i];
        x->disk = dup_str(d, "disk");
        x->file = dup_str(d, "file");
        x->socket = dup_str(d, "socket");
        x->overlay = dup_str(d, "overlay");
        x->copy_to = dup_str(d, "copy_to");
        x->phase = dup_str(d, "phase");
        x->done = json_object_object_get_ex(d, "done", &v) && json_object_get_boolean(v);
        /* the socket lies in the run directory; an overlay is an absolute
         * clean path (it is removed on abandon) */
        size_t rl = strlen(j->run_dir);
        if (!x->disk || !x->file || !x->socket || strncmp(x->socket, j->run_dir, rl) != 0 ||
            x->socket[rl] != '/' || !vmsh_path_is_clean(x->socket) ||
            (x->overlay && (x->overlay[0] != '/' || !vmsh_path_is_clean(x->overlay))) ||
            (x->copy_to && (!x->copy_to[0] || !x->overlay)))
            r = -EBADMSG;
    }
    if (r == 0 &&
        (!vmsh_name_is_safe(j->vm) || j->run_dir[0] != '/' || !vmsh_path_is_clean(j->run_dir)))
        r = -EBADMSG;
    /* the final definition is read and removed: only ever VM.xml beside
     * this journal, whatever directory the journal names (the state
     * directory may have moved) */
    if (r == 0 && j->definition) {
        const char *base = strrchr(j->definition, '/');
        size_t vl = strlen(j->vm);
        char *own = NULL;
        if (j->definition[0] != '/' || !vmsh_path_is_clean(j->definition) || !base ||
            strncmp(base + 1, j->vm, vl) != 0 || strcmp(base + 1 + vl, ".xml") != 0 ||
            asprintf(&own, "%.*s.xml", (int)(strlen(path) - 5), path) < 0)
            r = -EBADMSG;
        else
            free(j->definition), j->definition = own;
    }
    json_object_put(o);
    if (r < 0) {
        ijob_clear(j);
        return vmsh_error_set(err, r, "%s: a damaged instant-restore journal", path);
    }
    return 0;
}

static char *journal_dir(const vmsh_requestor_config *cfg)
{
    return vmsh_path_join(cfg->state_dir, "instant");
}

/* The run directory sockets go into: $VMSHADOW_RUN_DIR, else /run/vmshadow. */
static const char *run_base(void)
{
    const char *e = getenv("VMSHADOW_RUN_DIR");
    return e && *e ? e : "/run/vmshadow";
}

/* The user QEMU runs as for qemu:///system (Debian's libvirt-qemu, else
 * qemu): it must reach the sockets, nobody else. -1 when neither exists
 * (QEMU then runs as root). */
static uid_t qemu_uid(gid_t *gid)
{
    static const char *const names[] = {"libvirt-qemu", "qemu"};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(names); i++) {
        struct passwd *pw = getpwnam(names[i]);
        if (pw) {
            *gid = pw->pw_gid;
            return pw->pw_uid;
        }
    }
    return (uid_t)-1;
}

/* Makes the run directory (again, after a reboot emptied /run): mode 0700,
 * owned by QEMU's user, so that only root and QEMU reach the sockets. */
static int make_run_dir(const char *dir, vmsh_error **err)
{
    int r = vmsh_fs_mkdir_p(run_base(), 0755, err);
    if (r < 0)
        return r;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", dir, strerror(errno));
    gid_t gid = 0;
    uid_t uid = qemu_uid(&gid);
    if (uid != (uid_t)-1 && chown(dir, uid, gid) < 0)
        return vmsh_error_set(err, -errno, "cannot give %s to QEMU's user: %s", dir,
                              strerror(errno));
    return 0;
}

static char *uri_of(const char *socket)
{
    char *u = NULL;
    return asprintf(&u, "nbd+unix:///?socket=%s", socket) < 0 ? NULL : u;
}

/* Starts the server of disk `d` unless one serves on its socket already. */
static int ensure_server(ijob *j, idisk *d, bool *restarted, vmsh_error **err)
{
    pid_t pid = vmsh_serve_find(d->socket);
    if (pid > 0 && vmsh_serve_listening(d->socket))
        return 0;
    if (pid > 0)
        vmsh_serve_stop(pid, d->socket); /* hung before listening */
    else
        unlink(d->socket); /* left by a killed server */
    int r = make_run_dir(j->run_dir, err);
    if (r < 0)
        return r;
    /* no block status: a read of an unpulled range must fail when the server
     * is gone, never complete unread (serve.h) */
    vmsh_serve_source src = {j->repo, j->key_file, j->backup, d->file, true};
    r = vmsh_serve_start(&src, d->socket, true, j->log, &pid, err);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s, disk %s", j->vm, d->disk);
    /* nbdkit makes its socket 0755: QEMU's user must write to it to
     * connect; the directory (0700, QEMU's) keeps everyone else out */
    if (chmod(d->socket, 0666) < 0) {
        r = vmsh_error_set(err, -errno, "cannot open %s to QEMU: %s", d->socket, strerror(errno));
        vmsh_serve_stop(pid, d->socket);
        return r;
    }
    if (restarted)
        *restarted = true;
    return 0;
}

static void stop_servers(ijob *j)
{
    for (size_t i = 0; i < j->n; i++) {
        pid_t pid = vmsh_serve_find(j->disks[i].socket);
        vmsh_serve_stop(pid, j->disks[i].socket);
    }
    rmdir(j->run_dir);
}

/* Reaps servers this process started that died (zombies stay "found"
 * otherwise); they are not waited for. */
static void reap(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

/* The text of `doc` into *out (malloc'ed); frees doc. */
static int dump_doc(xmlDocPtr doc, char **out, vmsh_error **err)
{
    xmlChar *mem = NULL;
    int size = 0;
    xmlDocDumpMemory(doc, &mem, &size);
    xmlFreeDoc(doc);
    if (!mem)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    *out = strndup((const char *)mem, (size_t)size);
    xmlFree(mem);
    return *out ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
}

/* The definition with every disk of `j` stopping the VM on read and write
 * errors (stop = true), or with those attributes taken out again. */
static int edit_policy(const char *xml, const ijob *j, bool stop, char **out, vmsh_error **err)
{
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL, XML_PARSE_NONET);
    if (!doc)
        return vmsh_error_set(err, -EBADMSG, "VM %s: its definition does not parse", j->vm);
    xmlNodePtr root = xmlDocGetRootElement(doc);
    for (xmlNodePtr dev = root ? root->children : NULL; dev; dev = dev->next) {
        if (dev->type != XML_ELEMENT_NODE || xmlStrcmp(dev->name, BAD_CAST "devices") != 0)
            continue;
        for (xmlNodePtr disk = dev->children; disk; disk = disk->next) {
            if (disk->type != XML_ELEMENT_NODE || xmlStrcmp(disk->name, BAD_CAST "disk") != 0)
                continue;
            xmlNodePtr driver = NULL;
            bool ours = false;
            for (xmlNodePtr c = disk->children; c; c = c->next) {
                if (c->type != XML_ELEMENT_NODE)
                    continue;
                if (xmlStrcmp(c->name, BAD_CAST "driver") == 0)
                    driver = c;
                if (xmlStrcmp(c->name, BAD_CAST "target") == 0) {
                    xmlChar *dv = xmlGetProp(c, BAD_CAST "dev");
                    for (size_t i = 0; dv && i < j->n; i++)
                        if (strcmp((const char *)dv, j->disks[i].disk) == 0)
                            ours = true;
                    xmlFree(dv);
                }
            }
            if (!ours)
                continue;
            if (!driver && stop)
                driver = xmlNewChild(disk, NULL, BAD_CAST "driver", NULL);
            if (!driver)
                continue;
            if (stop) {
                xmlSetProp(driver, BAD_CAST "error_policy", BAD_CAST "stop");
                xmlSetProp(driver, BAD_CAST "rerror_policy", BAD_CAST "stop");
            } else {
                xmlUnsetProp(driver, BAD_CAST "error_policy");
                xmlUnsetProp(driver, BAD_CAST "rerror_policy");
            }
        }
    }
    return dump_doc(doc, out, err);
}

static int redefine_policy(vmsh_hv *hv, const ijob *j, bool stop, vmsh_error **err)
{
    _cleanup_free_ char *xml = NULL, *edited = NULL;
    int r = vmsh_hv_domain_xml(hv, j->vm, true, &xml, err);
    if (r == 0)
        r = edit_policy(xml, j, stop, &edited, err);
    if (r == 0)
        r = vmsh_hv_define(hv, edited, err);
    return r;
}

/* The VM's persistent definition (*xml) and its parse (*x), its pool
 * volumes resolved to what they are stored on: right after the restore,
 * the one read that prepare_copies and find_overlays both use. */
static int load_registered(vmsh_hv *hv, const ijob *j, char **xml, vmsh_domxml **x,
                           vmsh_error **err)
{
    *xml = NULL;
    *x = NULL;
    int r = vmsh_hv_domain_xml(hv, j->vm, true, xml, err);
    if (r == 0)
        r = vmsh_domxml_parse(x, *xml, strlen(*xml), err);
    if (r == 0)
        vmsh_hv_resolve_volumes(hv, *x);
    return r;
}

/* The file a disk of the definition is (an image file, or a pool volume
 * stored as one: the restore put its overlay there), else NULL. */
static const char *disk_file(const vmsh_domxml_disk *dk)
{
    bool file = dk->kind == VMSH_DISK_FILE ||
                (dk->kind == VMSH_DISK_VOLUME && dk->storage == VMSH_DISK_FILE);
    return file && dk->source && dk->source[0] == '/' ? dk->source : NULL;
}

/* The overlays' final places, from the VM's definition `x`
 * (load_registered). */
static int find_overlays(ijob *j, const vmsh_domxml *x, vmsh_error **err)
{
    int r = 0;
    for (size_t i = 0; r == 0 && i < j->n; i++) {
        for (size_t k = 0; k < x->n_disks && !j->disks[i].overlay; k++)
            if (x->disks[k].target && strcmp(x->disks[k].target, j->disks[i].disk) == 0 &&
                disk_file(&x->disks[k]) && !(j->disks[i].overlay = strdup(disk_file(&x->disks[k]))))
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
        if (r == 0 && !j->disks[i].overlay)
            r = vmsh_error_set(err, -ENOENT, "VM %s: the restored definition has no file disk %s",
                               j->vm, j->disks[i].disk);
    }
    return r;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------------
 * Block copy onto a block device or an RBD image (issue 23 point 2). The
 * normal restore planned and checked the device or image (R12: only the one
 * the replaced VM uses, behind --force) and registered the VM on it without
 * writing a byte (restore.c, disk_backing). Here the VM runs on a qcow2
 * overlay of the served disk instead; libvirt's block copy moves the whole
 * chain onto the device or image while the guest's writes are mirrored onto
 * it too; the pivot switches the VM onto it. The persistent definition names
 * the overlay until the disk is pivoted (a VM restarted meanwhile runs on the
 * overlay, whose data is complete), and the device or image from then on.
 * ------------------------------------------------------------------------ */

/* Where the overlays go: scratch-dir when set, else beside the journal
 * (STATE_DIR/instant/overlays). Never the run directory: an overlay holds
 * the only copy of what the guest wrote since it started (the device gets
 * it only once the copy has caught up), and a host reboot empties /run:
 * the VM could not start again and those writes were lost (t-instant-block
 * reboot_mid_copy failed so: "Cannot access storage file ..."). */
static const char *scratch_dir(const vmsh_requestor_config *cfg)
{
    const char *s = cfg->conf ? vmsh_kvconf_get(cfg->conf, "scratch-dir") : NULL;
    return s && *s ? s : NULL;
}

static char *overlay_dir(const vmsh_requestor_config *cfg)
{
    const char *s = scratch_dir(cfg);
    return s ? strdup(s) : vmsh_path_join(cfg->state_dir, "instant/overlays");
}

#define ACL_XATTR   "system.posix_acl_access"
#define ACL_VERSION 2
enum {
    ACL_USER_OBJ = 1,
    ACL_USER = 2,
    ACL_GROUP_OBJ = 4,
    ACL_GROUP = 8,
    ACL_MASK = 16,
    ACL_OTHER = 32
};
typedef struct acl_entry {
    uint16_t tag, perm;
    uint32_t id;
} acl_entry;

static int acl_cmp(const void *a, const void *b)
{
    const acl_entry *x = a, *y = b;
    return x->tag != y->tag ? (x->tag < y->tag ? -1 : 1) : x->id < y->id ? -1 : x->id > y->id;
}

/* Lets user `uid` through directory `dir` (search only: it lists nothing,
 * reads nothing it is not given by name and by the file's own mode) with
 * one entry of a POSIX ACL; the mode and any ACL already there are kept.
 * The state directory is 0700 and root's: QEMU, which runs as its own
 * user, must reach the overlays beneath it; nobody else may. */
static int acl_allow_search(const char *dir, uid_t uid, vmsh_error **err)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return vmsh_error_set(err, -errno, "cannot look at %s: %s", dir, strerror(errno));
    acl_entry e[64];
    size_t n = 0;
    unsigned char buf[4 + 64 * 8];
    ssize_t len = getxattr(dir, ACL_XATTR, buf, sizeof(buf));
    if (len >= 4 && (len - 4) % 8 == 0) {
        for (size_t off = 4; off < (size_t)len && n < 63; off += 8, n++) {
            memcpy(&e[n].tag, buf + off, 2);
            memcpy(&e[n].perm, buf + off + 2, 2);
            memcpy(&e[n].id, buf + off + 4, 4);
        }
    } else if (len < 0 && errno != ENODATA && errno != EOPNOTSUPP) {
        return vmsh_error_set(err, -errno, "cannot read the ACL of %s: %s", dir, strerror(errno));
    } else {
        /* none: the mode as an ACL */
        e[n++] = (acl_entry){ACL_USER_OBJ, (st.st_mode >> 6) & 7, (uint32_t)-1};
        e[n++] = (acl_entry){ACL_GROUP_OBJ, (st.st_mode >> 3) & 7, (uint32_t)-1};
        e[n++] = (acl_entry){ACL_OTHER, st.st_mode & 7, (uint32_t)-1};
    }
    bool have = false, mask = false;
    uint16_t group_class = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].tag == ACL_USER && e[i].id == uid) {
            have = true;
            e[i].perm |= 1;
        }
        if (e[i].tag == ACL_MASK)
            mask = true;
        if (e[i].tag == ACL_GROUP_OBJ || e[i].tag == ACL_GROUP)
            group_class |= e[i].perm;
    }
    if (!have)
        e[n++] = (acl_entry){ACL_USER, 1, (uint32_t)uid};
    if (!mask)
        e[n++] = (acl_entry){ACL_MASK, (uint16_t)(group_class | 1), (uint32_t)-1};
    for (size_t i = 0; i < n; i++)
        if (e[i].tag == ACL_MASK)
            e[i].perm |= 1; /* the mask bounds the user entry too */
    qsort(e, n, sizeof(e[0]), acl_cmp);
    uint32_t v = ACL_VERSION;
    memcpy(buf, &v, 4);
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + 4 + i * 8, &e[i].tag, 2);
        memcpy(buf + 4 + i * 8 + 2, &e[i].perm, 2);
        memcpy(buf + 4 + i * 8 + 4, &e[i].id, 4);
    }
    if (setxattr(dir, ACL_XATTR, buf, 4 + n * 8, 0) < 0)
        return vmsh_error_set(
            err, -errno,
            "cannot let QEMU's user through %s (a POSIX ACL: %s): set scratch-dir "
            "to a directory QEMU reaches for the overlays of block copies",
            dir, strerror(errno));
    return 0;
}

/* Makes the default overlay directory STATE_DIR/instant/overlays: 0700,
 * QEMU's user's, which gets search through the state directory and
 * STATE_DIR/instant (0700, root's) by an ACL entry each. */
static int make_overlay_dir(const vmsh_requestor_config *cfg, const char *dir, vmsh_error **err)
{
    int r = vmsh_fs_mkdir_p(dir, 0700, err);
    gid_t gid = 0;
    uid_t uid = qemu_uid(&gid);
    if (r < 0 || uid == (uid_t)-1 || uid == 0)
        return r; /* QEMU runs as root: it reaches everything */
    _cleanup_free_ char *inst = vmsh_path_dirname(dir);
    if (!inst)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if ((r = acl_allow_search(cfg->state_dir, uid, err)) < 0 ||
        (r = acl_allow_search(inst, uid, err)) < 0)
        return r;
    if (chown(dir, uid, gid) < 0 || chmod(dir, 0700) < 0)
        return vmsh_error_set(err, -errno, "cannot give %s to QEMU's user: %s", dir,
                              strerror(errno));
    return 0;
}

static bool any_copy(const ijob *j)
{
    for (size_t i = 0; i < j->n; i++)
        if (j->disks[i].copy_to)
            return true;
    return false;
}

static int load_final(ijob *j, vmsh_error **err)
{
    if (j->final_xml || !j->definition)
        return 0;
    size_t len = 0;
    int r = vmsh_fs_read_all(j->definition, VMSH_DOMXML_MAX_BYTES, &j->final_xml, &len, err);
    return r < 0 ? vmsh_error_prefix(err, "VM %s: its definition kept for the block copy", j->vm)
                 : 0;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && xmlStrcmp(c->name, BAD_CAST name) == 0)
            return c;
    return NULL;
}

/* `xml` with every disk still to be copied on its overlay: a file disk,
 * qcow2, without the device's or image's <source>, <auth>, <backingStore>. */
static int edit_copy_disks(const char *xml, const ijob *j, char **out, vmsh_error **err)
{
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL, XML_PARSE_NONET);
    if (!doc)
        return vmsh_error_set(err, -EBADMSG, "VM %s: its definition does not parse", j->vm);
    xmlNodePtr root = xmlDocGetRootElement(doc);
    xmlNodePtr devs = root ? child(root, "devices") : NULL;
    for (xmlNodePtr disk = devs ? devs->children : NULL; disk; disk = disk->next) {
        xmlNodePtr t = disk->type == XML_ELEMENT_NODE && xmlStrcmp(disk->name, BAD_CAST "disk") == 0
                           ? child(disk, "target")
                           : NULL;
        xmlChar *dv = t ? xmlGetProp(t, BAD_CAST "dev") : NULL;
        const idisk *d = NULL;
        for (size_t i = 0; dv && i < j->n && !d; i++)
            if (j->disks[i].copy_to && !j->disks[i].done &&
                strcmp((const char *)dv, j->disks[i].disk) == 0)
                d = &j->disks[i];
        xmlFree(dv);
        if (!d)
            continue;
        xmlNodePtr c = disk->children;
        while (c) {
            xmlNodePtr next = c->next;
            if (c->type == XML_ELEMENT_NODE && (xmlStrcmp(c->name, BAD_CAST "source") == 0 ||
                                                xmlStrcmp(c->name, BAD_CAST "auth") == 0 ||
                                                xmlStrcmp(c->name, BAD_CAST "backingStore") == 0)) {
                xmlUnlinkNode(c);
                xmlFreeNode(c);
            }
            c = next;
        }
        xmlSetProp(disk, BAD_CAST "type", BAD_CAST "file");
        xmlNodePtr drv = child(disk, "driver");
        if (!drv)
            drv = xmlNewChild(disk, NULL, BAD_CAST "driver", NULL);
        xmlSetProp(drv, BAD_CAST "name", BAD_CAST "qemu");
        xmlSetProp(drv, BAD_CAST "type", BAD_CAST "qcow2");
        xmlNodePtr src = xmlNewChild(disk, NULL, BAD_CAST "source", NULL);
        xmlSetProp(src, BAD_CAST "file", BAD_CAST d->overlay);
    }
    return dump_doc(doc, out, err);
}

/* Defines the VM as it is now: the final definition with the disks still to
 * be copied on their overlays, every restored disk stopping on errors. */
static int define_current(vmsh_hv *hv, ijob *j, vmsh_error **err)
{
    _cleanup_free_ char *a = NULL, *b = NULL;
    int r = load_final(j, err);
    if (r == 0)
        r = edit_copy_disks(j->final_xml, j, &a, err);
    if (r == 0)
        r = edit_policy(a, j, true, &b, err);
    if (r == 0)
        r = vmsh_hv_define(hv, b, err);
    return r;
}

/* After the restore registered the VM (`xml`, parsed as `x`:
 * load_registered): its block and RBD disks, and pool volumes on a block
 * device, become copies. Journaled ("overlay") before the definition is
 * kept and before any overlay is made. */
static int prepare_copies(const vmsh_requestor_config *cfg, vmsh_hv *hv, ijob *j, const char *xml,
                          const vmsh_domxml *x, vmsh_error **err)
{
    _cleanup_free_ char *odir = overlay_dir(cfg);
    if (!odir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    for (size_t i = 0; r == 0 && i < j->n; i++) {
        idisk *d = &j->disks[i];
        for (size_t k = 0; k < x->n_disks && r == 0; k++) {
            const vmsh_domxml_disk *dk = &x->disks[k];
            if (!dk->target || strcmp(dk->target, d->disk) != 0)
                continue;
            bool vol_dev = dk->kind == VMSH_DISK_VOLUME && dk->storage == VMSH_DISK_BLOCK;
            const char *to =
                dk->kind == VMSH_DISK_BLOCK || vol_dev ? dk->source
                : dk->kind == VMSH_DISK_NETWORK && dk->protocol && strcmp(dk->protocol, "rbd") == 0
                    ? dk->net_name
                    : NULL;
            if (!to)
                break;
            if (!(d->copy_to = strdup(to)) || !(d->phase = strdup("overlay")) ||
                asprintf(&d->overlay, "%s/.vmshadow-instant-%s-%s.overlay", odir, j->vm, d->disk) <
                    0) {
                d->overlay = NULL;
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
            } else if (!vmsh_path_is_clean(d->overlay) || d->overlay[0] != '/') {
                r = vmsh_error_set(err, -EINVAL,
                                   "scratch-dir must be an absolute clean path for the overlay "
                                   "of VM %s, disk %s",
                                   j->vm, d->disk);
            }
        }
    }
    if (r < 0 || !any_copy(j))
        return r;
    if (asprintf(&j->definition, "%.*s.xml", (int)(strlen(j->path) - 5), j->path) < 0) {
        j->definition = NULL;
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if ((r = journal_write(j, "overlay", err)) < 0 ||
        (r = vmsh_fs_write_atomic(j->definition, xml, strlen(xml), 0600, err)) < 0 ||
        (!scratch_dir(cfg) && (r = make_overlay_dir(cfg, odir, err)) < 0))
        return r;
    for (size_t i = 0; r == 0 && i < j->n; i++) {
        idisk *d = &j->disks[i];
        if (!d->copy_to)
            continue;
        _cleanup_free_ char *uri = uri_of(d->socket);
        unlink(d->overlay); /* a leftover of a killed run of the same VM */
        r = uri ? vmsh_hv_image_create(d->overlay, uri, "raw", 0, err)
                : vmsh_error_set(err, -ENOMEM, "out of memory");
        if (r < 0)
            vmsh_error_prefix(err, "VM %s, disk %s: its overlay", j->vm, d->disk);
    }
    return r == 0 ? define_current(hv, j, err) : r;
}

static int set_phase(ijob *j, idisk *d, const char *phase, vmsh_error **err)
{
    char *p = strdup(phase);
    if (!p)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    free(d->phase);
    d->phase = p;
    return journal_write(j, NULL, err);
}

/* One poll of the copy of disk `d`: started when none runs and the VM is
 * not on the device yet (again after a kill, a failure or a shutdown: from
 * scratch), pivoted once it caught up, done once the VM runs on the device
 * or image (the definition then names it). */
static int step_copy(vmsh_hv *hv, ijob *j, idisk *d, const vmsh_requestor_callbacks *cb, bool show,
                     vmsh_error **err)
{
    uint64_t cur = 0, end = 0;
    int job = vmsh_hv_block_job(hv, j->vm, d->disk, &cur, &end, err);
    if (job < 0)
        return job;
    if (job == 1) {
        if (show && cb && cb->progress)
            cb->progress(cb->opaque, d->file, cur, end);
        if (end == 0 || cur != end)
            return 0;
        int r = set_phase(j, d, "pivot", err);
        if (r < 0)
            return r;
        r = vmsh_hv_block_copy_pivot(hv, j->vm, d->disk, err);
        if (r == -EAGAIN)
            return 0;
        if (r < 0)
            return r;
        req_debug(cb, "VM %s, disk %s: pivoted onto %s", j->vm, d->disk, d->copy_to);
    }
    _cleanup_free_ char *src = NULL;
    int r = vmsh_hv_disk_source(hv, j->vm, d->disk, &src, err);
    if (r < 0)
        return r;
    if (src && strcmp(src, d->overlay) != 0) {
        /* on the device or image: the definition names it from now on */
        d->done = true;
        if ((r = define_current(hv, j, err)) < 0)
            return r;
        req_debug(cb, "VM %s, disk %s: copied onto %s", j->vm, d->disk, d->copy_to);
        return set_phase(j, d, "done", err);
    }
    if (job == 1)
        return 0;
    if ((r = load_final(j, err)) < 0 || (r = set_phase(j, d, "copy", err)) < 0)
        return r;
    req_debug(cb, "VM %s, disk %s: block copy onto %s starts", j->vm, d->disk, d->copy_to);
    return vmsh_hv_block_copy(hv, j->vm, d->disk, j->final_xml, j->bandwidth, err);
}

/* Removes what the copies left beside the journal and in the scratch
 * directory (never the devices or images). */
static void remove_copy_files(ijob *j)
{
    for (size_t i = 0; i < j->n; i++)
        if (j->disks[i].copy_to && j->disks[i].overlay)
            unlink(j->disks[i].overlay);
    if (j->definition)
        unlink(j->definition);
}

/* Drives the job from `pull` to its end: every disk pulled, whatever
 * stopped on the way started again (a dead server, a VM paused on an I/O
 * error or shut off, a failed block job). `once`: start what is missing and
 * return without waiting. */
static int drive(vmsh_hv *hv, ijob *j, const vmsh_requestor_callbacks *cb, bool once,
                 vmsh_error **err)
{
    int r = 0;
    int64_t last_progress = 0;
    for (;;) {
        reap();
        bool all = true;
        for (size_t i = 0; r == 0 && i < j->n; i++) {
            if (j->disks[i].done)
                continue;
            all = false;
            bool restarted = false;
            r = ensure_server(j, &j->disks[i], &restarted, err);
            if (r == 0 && restarted)
                req_warn(cb, "VM %s, disk %s: its server was not running; started again", j->vm,
                         j->disks[i].disk);
        }
        if (r < 0)
            return r;
        if (all)
            return 0;
        vmsh_vm_state st = VMSH_VM_OTHER;
        if ((r = vmsh_hv_state(hv, j->vm, &st, err)) < 0)
            return r;
        if (st == VMSH_VM_SHUTOFF) {
            /* after a host reboot, or the guest shut down: its disks still
             * need their servers; it runs again to be pulled. Not on an
             * overlay that is gone (one in a run directory a reboot
             * emptied, journaled by an older vmshadow, or a scratch-dir
             * on a tmpfs): the guest's writes since the start are lost
             * with it, and libvirt's "cannot access storage file" would
             * not say what to do */
            for (size_t i = 0; i < j->n; i++) {
                const idisk *d = &j->disks[i];
                if (!d->done && d->overlay && access(d->overlay, F_OK) != 0)
                    return vmsh_error_set(
                        err, -ENOENT,
                        "VM %s, disk %s: its overlay %s is gone (%s; a reboot empties a run "
                        "directory or a tmpfs): what the guest wrote to it since the instant "
                        "restore started is lost and the VM cannot run on it: left shut off; "
                        "'vmshadow recover --abandon %s' tears the restore down (%s), "
                        "then restore again",
                        j->vm, d->disk, d->overlay, strerror(errno), j->vm,
                        d->copy_to ? "the device or image then holds a partial restore"
                                   : "the VM is undefined");
            }
            req_warn(cb, "VM %s was shut off during its instant restore; starting it", j->vm);
            if ((r = vmsh_hv_start(hv, j->vm, err)) < 0)
                return r;
            continue;
        }
        int io = vmsh_hv_paused_on_io_error(hv, j->vm, err);
        if (io < 0)
            return io;
        if (io == 1) {
            /* Restarted, never resumed: on QEMU 7.2 a VM resumed after a
             * read failed inside the pull's copy-on-read filter (its server
             * died) crashed when the next pull ended (stream_prepare's graph
             * change while draining, fixed upstream in QEMU 8.0), and once
             * then read zeros from pulled data. A destroy ends QEMU before
             * any pull completes, so the overlay keeps its backing file and
             * every cluster it had not written reads through it again
             * (docs/reliability.md, "a server killed"). */
            req_warn(cb,
                     "VM %s was paused on an I/O error of its served backup (its server "
                     "died); restarting it: destroyed and started again on its overlays, the "
                     "guest reboots, what it wrote to its disks is kept, what it had not "
                     "written yet is lost (a resume is not safe on this QEMU)",
                     j->vm);
            if ((r = vmsh_hv_destroy(hv, j->vm, err)) < 0 ||
                (r = vmsh_hv_start(hv, j->vm, err)) < 0)
                return vmsh_error_prefix(err, "VM %s: restarting it after an I/O error", j->vm);
            continue;
        }
        /* At most one block pull of the VM at a time (the next disk's
         * pull starts when one ends; copies run beside it): on QEMU 7.2 a
         * pull that completed while another pull of the same VM ran
         * crashed QEMU ("segfault at 40", t-instant-block's pool-volume
         * part, one ASan run of four; the stream job's completion drains
         * under the other job, fixed upstream in QEMU 8.0). */
        bool pull_running = false;
        size_t to_pull = j->n;
        bool changed = false;
        for (size_t i = 0; i < j->n; i++) {
            idisk *d = &j->disks[i];
            if (d->done)
                continue;
            if (d->copy_to) {
                if ((r = step_copy(hv, j, d, cb, vmsh_now_ms() - last_progress >= 1000, err)) < 0)
                    return vmsh_error_prefix(err, "VM %s, disk %s: block copy onto %s", j->vm,
                                             d->disk, d->copy_to);
                continue;
            }
            uint64_t cur = 0, end = 0;
            int job = vmsh_hv_block_job(hv, j->vm, d->disk, &cur, &end, err);
            if (job < 0)
                return job;
            if (job == 1) {
                pull_running = true;
                if (cb && cb->progress && vmsh_now_ms() - last_progress >= 1000)
                    cb->progress(cb->opaque, d->file, cur, end);
                continue;
            }
            int hb = vmsh_hv_disk_has_backing(hv, j->vm, d->disk, err);
            if (hb < 0)
                return hb;
            if (hb == 0) {
                d->done = true;
                changed = true;
                req_debug(cb, "VM %s, disk %s: pulled", j->vm, d->disk);
                continue;
            }
            /* no job and still backed: not started yet, or it failed
             * (its server died): (again), once no other pull runs */
            if (to_pull == j->n)
                to_pull = i;
        }
        if (to_pull < j->n && !pull_running) {
            const idisk *d = &j->disks[to_pull];
            req_debug(cb, "VM %s, disk %s: block pull starts", j->vm, d->disk);
            if ((r = vmsh_hv_block_pull(hv, j->vm, d->disk, j->bandwidth, err)) < 0)
                return r;
        }
        if (vmsh_now_ms() - last_progress >= 1000)
            last_progress = vmsh_now_ms();
        if (changed && (r = journal_write(j, NULL, err)) < 0)
            return r;
        if (once)
            return 0;
        sleep_ms(POLL_MS);
    }
}

/* The last step: serving stops (nothing is backed by it any more), the
 * definition keeps the VM's own error policy, the journal goes. */
static int finish(vmsh_hv *hv, ijob *j, vmsh_error **err)
{
    int r = journal_write(j, "finish", err);
    if (r == 0)
        r = redefine_policy(hv, j, false, err);
    if (r < 0)
        return r;
    remove_copy_files(j);
    stop_servers(j);
    if (j->log)
        unlink(j->log);
    if (unlink(j->path) < 0 && errno != ENOENT)
        return vmsh_error_set(err, -errno, "cannot remove %s: %s", j->path, strerror(errno));
    _cleanup_free_ char *dir = vmsh_path_dirname(j->path);
    vmsh_fs_fsync_dir(dir, NULL);
    return 0;
}

/* Tears the job down: the VM stopped and undefined, the overlays removed,
 * serving stopped, the journal removed. */
static int abandon(vmsh_hv *hv, ijob *j, const vmsh_requestor_callbacks *cb, vmsh_error **err)
{
    int r = journal_write(j, "abandon", err);
    if (r < 0)
        return r;
    vmsh_vm_state st;
    if (vmsh_hv_state(hv, j->vm, &st, NULL) == 0) {
        for (size_t i = 0; i < j->n; i++)
            vmsh_hv_block_job_abort(hv, j->vm, j->disks[i].disk, NULL);
        if ((r = vmsh_hv_destroy(hv, j->vm, err)) < 0 || (r = vmsh_hv_undefine(hv, j->vm, err)) < 0)
            return r;
    }
    for (size_t i = 0; i < j->n; i++)
        if (j->disks[i].overlay && unlink(j->disks[i].overlay) < 0 && errno != ENOENT)
            return vmsh_error_set(err, -errno, "cannot remove %s: %s", j->disks[i].overlay,
                                  strerror(errno));
    /* a copy begun and not pivoted wrote part of the device or image (R11),
     * as a normal restore cut short does */
    for (size_t i = 0; i < j->n; i++) {
        const idisk *d = &j->disks[i];
        if (d->copy_to && !d->done && d->phase && strcmp(d->phase, "overlay") != 0)
            req_warn(cb,
                     "VM %s, disk %s: %s now holds a partial restore (R11): restore again with "
                     "--force to complete it",
                     j->vm, d->disk, d->copy_to);
    }
    remove_copy_files(j);
    stop_servers(j);
    if (j->log)
        unlink(j->log);
    unlink(j->path);
    return 0;
}

static const char *backing_of(void *opaque, const char *file)
{
    ijob *j = opaque;
    for (size_t i = 0; i < j->n; i++)
        if (strcmp(j->disks[i].file, file) == 0) {
            free(j->uri); /* one at a time: used before the next is asked */
            j->uri = uri_of(j->disks[i].socket);
            return j->uri;
        }
    return NULL;
}

static int job_paths(const vmsh_requestor_config *cfg, ijob *j, vmsh_error **err)
{
    _cleanup_free_ char *dir = journal_dir(cfg);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = vmsh_fs_mkdir_p(dir, 0700, err);
    if (r < 0)
        return r;
    if (asprintf(&j->path, "%s/%s.json", dir, j->vm) < 0 ||
        asprintf(&j->log, "%s/%s.log", dir, j->vm) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

int vmsh_instant_restore(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                         vmsh_repo *repo, const vmsh_instant_options *opts,
                         vmsh_requestor_restore_result **out, vmsh_error **err)
{
    *out = NULL;
    ijob j = {0};
    vmsh_backup_info *b = NULL;
    vmsh_serve_disk *disks = NULL;
    size_t nd = 0;
    vmsh_hv *hv = NULL;
    _cleanup_free_ char *reg_xml = NULL;
    vmsh_domxml *reg = NULL;
    bool serving = false;
    char tbuf[32];
    int64_t t_begin = 0, t_serve = 0, t_restore = 0, t_policy = 0, t_start = 0;
    int r = vmsh_repo_backup_info(repo, opts->backup, &b, err);
    if (r == 0)
        r = vmsh_serve_backup_disks(b->document, b->id, opts->vm, NULL, &disks, &nd, err);
    if (r < 0)
        goto out;
    j.vm = strdup(opts->restore_as ? opts->restore_as : opts->vm);
    j.backup = strdup(b->id);
    j.repo =
        strstr(opts->repo_path, "://") ? strdup(opts->repo_path) : realpath(opts->repo_path, NULL);
    j.key_file = opts->key_file ? realpath(opts->key_file, NULL) : NULL;
    j.bandwidth = opts->bandwidth;
    time_t now = time(NULL);
    struct tm tm;
    strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    j.started = strdup(tbuf);
    j.disks = vmsh_calloc_array(nd, sizeof(idisk));
    j.n = nd;
    if (!j.vm || !j.backup || !j.repo || (opts->key_file && !j.key_file) || !j.started ||
        !j.disks) {
        r = vmsh_error_set(err, -errno ? -errno : -ENOMEM, "cannot resolve the repository: %s",
                           strerror(errno ? errno : ENOMEM));
        goto out;
    }
    if ((r = job_paths(cfg, &j, err)) < 0)
        goto out;
    if (access(j.path, F_OK) == 0) {
        r = vmsh_error_set(err, -EBUSY,
                           "an instant restore of VM %s is in progress (vmshadow jobs): let "
                           "'vmshadow recover' finish it, or 'vmshadow recover --abandon %s'",
                           j.vm, j.vm);
        free(j.path);
        j.path = NULL; /* not ours */
        goto out;
    }
    if ((r = vmsh_fs_mkdir_p(run_base(), 0755, err)) < 0)
        goto out;
    if (asprintf(&j.run_dir, "%s/instant-XXXXXX", run_base()) < 0 || !mkdtemp(j.run_dir)) {
        r = vmsh_error_set(err, -errno, "cannot create a directory in %s: %s", run_base(),
                           strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < nd; i++) {
        j.disks[i].disk = strdup(disks[i].disk);
        j.disks[i].file = strdup(disks[i].file);
        if (asprintf(&j.disks[i].socket, "%s/%zu.sock", j.run_dir, i) < 0)
            j.disks[i].socket = NULL;
        if (!j.disks[i].disk || !j.disks[i].file || !j.disks[i].socket) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    /* the time each step until the VM runs takes (bench/instant-bench.sh
     * reads it from the debug line below: the rest until the guest answers
     * is its boot) */
    t_begin = vmsh_now_ms();
    /* serve */
    if ((r = journal_write(&j, "serve", err)) < 0)
        goto out;
    serving = true;
    req_step(cb, "serve", false, 0, 0);
    for (size_t i = 0; r == 0 && i < nd; i++)
        r = ensure_server(&j, &j.disks[i], NULL, err);
    t_serve = vmsh_now_ms();
    req_step(cb, "serve", true, r, t_serve - t_begin);
    if (r < 0)
        goto out;
    /* restore: the normal one, disks as overlays on the servers */
    if ((r = journal_write(&j, "restore", err)) < 0)
        goto out;
    const char *targets[1] = {opts->vm};
    vmsh_requestor_restore_options ro = {
        .backup = j.backup,
        .targets = targets,
        .n_targets = 1,
        .restore_dir = opts->restore_dir,
        .restore_as = opts->restore_as,
        .force = opts->force,
        .host_devices = opts->host_devices,
        .confirm = opts->confirm,
        .confirm_opaque = opts->confirm_opaque,
        .disk_backing = backing_of,
        .disk_backing_opaque = &j,
    };
    r = vmsh_requestor_restore(cfg, cb, repo, &ro, out, err);
    if (r < 0)
        goto out; /* the restore took its own part back (R11) */
    t_restore = vmsh_now_ms();
    if ((r = vmsh_hv_open(&hv, cfg->uri, err)) < 0 ||
        (r = load_registered(hv, &j, &reg_xml, &reg, err)) < 0 ||
        (r = prepare_copies(cfg, hv, &j, reg_xml, reg, err)) < 0 ||
        (r = find_overlays(&j, reg, err)) < 0 || (r = redefine_policy(hv, &j, true, err)) < 0)
        goto fail_defined;
    t_policy = vmsh_now_ms();
    /* start */
    if ((r = journal_write(&j, "start", err)) < 0)
        goto fail_defined;
    req_step(cb, "start", false, 0, 0);
    r = vmsh_hv_start(hv, j.vm, err);
    t_start = vmsh_now_ms();
    req_step(cb, "start", true, r, t_start - t_policy);
    /* the disk images the restore replaced are freed from now on, beside
     * the guest's boot (vmsh_fs_defer_close: never before the VM runs) */
    vmsh_fs_close_deferred();
    if (r < 0)
        goto fail_defined;
    req_debug(cb,
              "VM %s runs after %lld ms: serve %lld ms, restore (overlays, definition) %lld ms, "
              "error policy %lld ms, start %lld ms",
              j.vm, (long long)(t_start - t_begin), (long long)(t_serve - t_begin),
              (long long)(t_restore - t_serve), (long long)(t_policy - t_restore),
              (long long)(t_start - t_policy));
    /* pull; from here a failure leaves the journal for recover: the VM runs
     * on served disks and must go on doing so */
    if ((r = journal_write(&j, "pull", err)) < 0 ||
        (r = drive(hv, &j, cb, opts->no_wait, err)) < 0) {
        vmsh_error_prefix(err,
                          "VM %s runs on its served backup; 'vmshadow recover' finishes the "
                          "instant restore",
                          j.vm);
        serving = false;
        goto out;
    }
    serving = false;
    if (opts->no_wait)
        goto out;
    r = finish(hv, &j, err);
    goto out;
fail_defined : {
    /* the VM was defined but never ran on its servers: taken down again */
    vmsh_error *e2 = NULL;
    abandon(hv ? hv : NULL, &j, cb, &e2);
    vmsh_error_free(e2);
    serving = false;
}
out:
    if (serving) {
        stop_servers(&j);
        if (j.log)
            unlink(j.log);
        if (j.path)
            unlink(j.path);
    } else if (r < 0 && j.run_dir && j.path && access(j.path, F_OK) != 0) {
        rmdir(j.run_dir);
    }
    vmsh_fs_close_deferred(); /* when the VM never started */
    vmsh_domxml_free(reg);
    vmsh_hv_free(hv);
    ijob_clear(&j);
    vmsh_serve_disks_free(disks, nd);
    vmsh_backup_info_free(b);
    return r;
}

static int list_journals(const vmsh_requestor_config *cfg, char ***out, size_t *n, vmsh_error **err)
{
    *out = NULL;
    *n = 0;
    _cleanup_free_ char *dir = journal_dir(cfg);
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d)
        return errno == ENOENT ? 0 : vmsh_error_set(err, -errno, "cannot read %s", dir);
    struct dirent *de;
    char **v = NULL;
    size_t cnt = 0;
    int r = 0;
    while (r == 0 && (de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json") != 0 || de->d_name[0] == '.')
            continue;
        char **nv = realloc(v, (cnt + 1) * sizeof(*v));
        if (!nv || !(nv[cnt] = vmsh_path_join(dir, de->d_name)))
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
        if (nv)
            v = nv;
        if (r == 0)
            cnt++;
    }
    closedir(d);
    *out = v;
    *n = cnt;
    return r;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

int vmsh_instant_recover(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                         const char *abandon_vm, size_t *n_done, vmsh_error **err)
{
    *n_done = 0;
    char **paths = NULL;
    size_t n = 0;
    int r = list_journals(cfg, &paths, &n, err);
    if (r < 0 || n == 0) {
        if (r == 0 && abandon_vm)
            r = vmsh_error_set(err, -ENOENT, "no instant restore of VM %s is in progress",
                               abandon_vm);
        free_strv(paths, n);
        return r;
    }
    vmsh_hv *hv = NULL;
    bool found = abandon_vm == NULL;
    if ((r = vmsh_hv_open(&hv, cfg->uri, err)) < 0) {
        free_strv(paths, n);
        return r;
    }
    for (size_t i = 0; r == 0 && i < n; i++) {
        ijob j;
        if ((r = journal_read(paths[i], &j, err)) < 0)
            break;
        free(j.log);
        j.log = NULL;
        if (asprintf(&j.log, "%.*s.log", (int)(strlen(j.path) - 5), j.path) < 0)
            j.log = NULL;
        vmsh_vm_state st;
        int have = vmsh_hv_state(hv, j.vm, &st, NULL);
        if (abandon_vm && strcmp(abandon_vm, j.vm) == 0) {
            found = true;
            req_step(cb, "abandon", false, 0, 0);
            r = abandon(hv, &j, cb, err);
            req_step(cb, "abandon", true, r, 0);
        } else if (strcmp(j.step, "serve") == 0 || strcmp(j.step, "restore") == 0 ||
                   strcmp(j.step, "overlay") == 0 || have == -ENOENT) {
            /* killed before the VM was started: the coordinator's
             * recovery takes the restore back (R7); nothing runs on the
             * servers. */
            if (have == 0 && (strcmp(j.step, "restore") == 0 || strcmp(j.step, "overlay") == 0)) {
                /* the restore registered the VM but it never started: it
                 * is taken down (never left on a backup nothing serves) */
                _cleanup_free_ char *xml = NULL;
                vmsh_domxml *x = NULL;
                if (load_registered(hv, &j, &xml, &x, NULL) < 0 || find_overlays(&j, x, NULL) < 0)
                    req_warn(cb, "VM %s: its overlays are unknown", j.vm);
                vmsh_domxml_free(x);
                r = abandon(hv, &j, cb, err);
            } else {
                remove_copy_files(&j);
                stop_servers(&j);
                if (j.log)
                    unlink(j.log);
                unlink(j.path);
            }
        } else if (strcmp(j.step, "finish") == 0) {
            r = finish(hv, &j, err);
        } else if (strcmp(j.step, "abandon") == 0) {
            r = abandon(hv, &j, cb, err);
        } else if (!abandon_vm) {
            /* start or pull: resumed to the end */
            req_step(cb, "resume instant restore", false, 0, 0);
            if ((r = journal_write(&j, "pull", err)) == 0 &&
                (r = drive(hv, &j, cb, false, err)) == 0)
                r = finish(hv, &j, err);
            req_step(cb, "resume instant restore", true, r, 0);
            if (r < 0)
                vmsh_error_prefix(err, "VM %s", j.vm);
        } else {
            ijob_clear(&j);
            continue;
        }
        if (r == 0)
            (*n_done)++;
        ijob_clear(&j);
    }
    if (r == 0 && !found)
        r = vmsh_error_set(err, -ENOENT, "no instant restore of VM %s is in progress", abandon_vm);
    vmsh_hv_free(hv);
    free_strv(paths, n);
    return r;
}

void vmsh_instant_list_free(vmsh_instant_status *s, size_t n)
{
    for (size_t i = 0; s && i < n; i++) {
        for (size_t k = 0; k < s[i].n_disks; k++) {
            free(s[i].disks[k].disk);
            free(s[i].disks[k].overlay);
            free(s[i].disks[k].copy_to);
        }
        free(s[i].disks);
        free(s[i].vm);
        free(s[i].backup);
        free(s[i].step);
        free(s[i].started);
        free(s[i].vm_state);
    }
    free(s);
}

int vmsh_instant_list(const vmsh_requestor_config *cfg, vmsh_instant_status **out, size_t *n,
                      vmsh_error **err)
{
    *out = NULL;
    *n = 0;
    char **paths = NULL;
    size_t np = 0;
    int r = list_journals(cfg, &paths, &np, err);
    if (r < 0 || np == 0) {
        free_strv(paths, np);
        return r;
    }
    vmsh_hv *hv = NULL;
    vmsh_instant_status *s = vmsh_calloc_array(np, sizeof(*s));
    if (!s)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r == 0)
        r = vmsh_hv_open(&hv, cfg->uri, err);
    size_t cnt = 0;
    for (size_t i = 0; r == 0 && i < np; i++) {
        ijob j;
        if ((r = journal_read(paths[i], &j, err)) < 0)
            break;
        vmsh_instant_status *x = &s[cnt++];
        x->vm = j.vm;
        x->backup = j.backup;
        x->step = j.step;
        x->started = j.started;
        j.vm = j.backup = j.step = j.started = NULL;
        vmsh_vm_state st;
        int have = vmsh_hv_state(hv, x->vm, &st, NULL);
        x->vm_state = strdup(have == 0 ? vmsh_vm_state_name(st) : "missing");
        x->disks = vmsh_calloc_array(j.n ? j.n : 1, sizeof(*x->disks));
        x->n_disks = x->disks ? j.n : 0;
        for (size_t k = 0; k < x->n_disks; k++) {
            vmsh_instant_disk_status *d = &x->disks[k];
            d->disk = j.disks[k].disk;
            d->overlay = j.disks[k].overlay;
            d->copy_to = j.disks[k].copy_to;
            j.disks[k].disk = j.disks[k].overlay = j.disks[k].copy_to = NULL;
            d->done = j.disks[k].done;
            d->served = vmsh_serve_listening(j.disks[k].socket);
            if (have == 0 && (st == VMSH_VM_RUNNING || st == VMSH_VM_PAUSED)) {
                d->pulling = vmsh_hv_block_job(hv, x->vm, d->disk, &d->cur, &d->end, NULL) == 1;
                d->pulled = !d->done && !d->pulling &&
                            vmsh_hv_disk_has_backing(hv, x->vm, d->disk, NULL) == 0;
            }
        }
        ijob_clear(&j);
    }
    vmsh_hv_free(hv);
    free_strv(paths, np);
    if (r < 0) {
        vmsh_instant_list_free(s, cnt);
        return r;
    }
    *out = s;
    *n = cnt;
    return 0;
}
