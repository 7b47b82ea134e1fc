/* vm_restore.c - the VM writer's restore (SPEC R8-R15), entirely on the host.
 *
 * PreRestore (R9): plan every selected VM (where each file goes, what is
 * linked, re-pathed, re-wired); refuse before touching anything when a VM to
 * be replaced exists and --force was not given; then stop and undefine the
 * VMs being replaced (journalled with their old XML) and hand the requestor,
 * per file, a temporary name beside its final place (R10).
 * PostRestore (R11-R15): a VM with any file not restored intact is reported
 * with those files, its temporary files are removed and it is not
 * registered. Otherwise its files are moved into place (disks converted back
 * to their format), its XML re-pathed (R13), re-wired (R14), stripped of host
 * devices unless asked, registered (R12), default places linked (R12), and a
 * saved state becomes its managed saved state, so that `virsh start` resumes
 * it (R15).
 *
 * Journal actions (owner: the VM writer): `undefine` {vm, xml} — undo defines
 * the old VM again when no VM of that name exists; `restore-files` {paths} —
 * undo removes those temporary files; `register` {vm, state} — undo stops and
 * undefines the VM PostRestore had begun to register, and removes its saved
 * state file when that lies behind a link (R12).
 */
#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/hv/storage.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vm_writer_private.h"

/* Where libvirt (qemu:///system) keeps what it places itself (R12). */
#define LIBVIRT_NVRAM_DIR "/var/lib/libvirt/qemu/nvram"
#define TMP_SUFFIX        ".vmshadow-restore"
#define STOP_GRACE_S      10
/* A replaced file with at least this much allocated is freed after the
 * restore, in a process of its own (place_file); a smaller one is freed at
 * once (milliseconds: not worth a process) */
#define DEFER_FREE_MIN_BYTES (32ULL << 20)

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static bool jbool(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* The format a disk had (from the VM writer's Identify record). */
static const char *disk_format(const vmsh_component *c, const char *target)
{
    json_object *extra = vmsh_component_extra(c), *disks = NULL;
    if (!extra || !json_object_object_get_ex(extra, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array))
        return "raw";
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i), *t = NULL, *f = NULL;
        if (json_object_object_get_ex(d, "target", &t) &&
            strcmp(json_object_get_string(t), target) == 0 &&
            json_object_object_get_ex(d, "format", &f) && json_object_is_type(f, json_type_string))
            return json_object_get_string(f);
    }
    return "raw";
}

/* The VM writer's Identify record of the disk `target`, or NULL. */
static json_object *disk_record(const vmsh_component *c, const char *target)
{
    json_object *extra = vmsh_component_extra(c), *disks = NULL;
    if (!target || !extra || !json_object_object_get_ex(extra, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array))
        return NULL;
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        const char *t = vmsh_json_str(d, "target");
        if (t && strcmp(t, target) == 0)
            return d;
    }
    return NULL;
}

/* The restored VM's name: --as, else the component's. */
static const char *new_name(const vmsh_set_options *o, const vmsh_component *c)
{
    return o->restore_as ? o->restore_as : vmsh_component_name(c);
}

/* The rest of `s` after `prefix`, or NULL when `s` does not begin with it
 * or nothing follows: a name from a document is checked before it is
 * sliced (issue 20: a disk named "x" read past its end). */
static const char *after(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    return s && strlen(s) > n && memcmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* A disk file's target ("vda" of "disk/vda"), or NULL when the name is
 * not one a disk may have. */
static const char *disk_target(const vmsh_file *f)
{
    const char *t = after(vmsh_file_name(f), "disk/");
    return t && vmsh_name_is_safe(t) ? t : NULL;
}

/* 36 characters of hex digits and dashes in the 8-4-4-4-12 layout. */
static bool uuid_shaped(const char *s, size_t n)
{
    if (n != 36)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* What the VM a restore replaces owns: the files its current definition
 * names (disks, firmware variables), its TPM state directory (by UUID) and
 * its managed saved state (by name). In place, only these are replaced, and
 * a link never replaces anything else (R12, issue 20). */
typedef struct cur_vm {
    bool exists;
    vmsh_vm_state state;
    char *name, *uuid;
    char **paths;
    size_t n_paths;
    /* its storage other than files, as storage_key() names it: what a
     * restore in place may write onto */
    char **devs;
    size_t n_devs;
} cur_vm;

static void cur_vm_clear(cur_vm *v)
{
    free(v->name);
    free(v->uuid);
    for (size_t i = 0; i < v->n_paths; i++)
        free(v->paths[i]);
    free(v->paths);
    for (size_t i = 0; i < v->n_devs; i++)
        free(v->devs[i]);
    free(v->devs);
    *v = (cur_vm){0};
}

static void cur_vm_add(cur_vm *v, const char *path)
{
    char **np = path ? realloc(v->paths, (v->n_paths + 1) * sizeof(char *)) : NULL;
    if (!np)
        return; /* out of memory owns less: refuses more, never less */
    v->paths = np;
    if ((np[v->n_paths] = strdup(path)))
        v->n_paths++;
}

static void cur_vm_add_dev(cur_vm *v, const char *dev)
{
    if (!dev)
        return;
    char **g = realloc(v->devs, (v->n_devs + 1) * sizeof(*g));
    if (!g)
        return; /* then not owned: a refusal, never a wrong write */
    v->devs = g;
    if ((g[v->n_devs] = strdup(dev)))
        v->n_devs++;
}

/* The name of a disk's storage in cur_vm's devs: the device path, or
 * "rbd:POOL/IMAGE", or "volume:POOL/VOLUME" (malloc'ed; NULL when none). */
static char *storage_key(vmsh_stg_kind kind, const char *target, const char *pool)
{
    char *k = NULL;
    int n = kind == VMSH_STG_BLOCK    ? asprintf(&k, "%s", target)
            : kind == VMSH_STG_RBD    ? asprintf(&k, "rbd:%s", target)
            : kind == VMSH_STG_VOLUME ? asprintf(&k, "volume:%s/%s", pool ? pool : "", target)
                                      : -1;
    return n < 0 ? NULL : k;
}

static void cur_vm_add_xml(cur_vm *v, const vmsh_domxml *x)
{
    for (size_t i = 0; x && i < x->n_disks; i++) {
        const vmsh_domxml_disk *d = &x->disks[i];
        _cleanup_free_ char *rbd = NULL, *key = NULL;
        if (d->kind == VMSH_DISK_FILE)
            cur_vm_add(v, d->source);
        else if (d->kind == VMSH_DISK_BLOCK)
            cur_vm_add_dev(v, d->source);
        else if (d->kind == VMSH_DISK_NETWORK && d->protocol && strcmp(d->protocol, "rbd") == 0 &&
                 vmsh_stg_rbd_name(d->source, &rbd) == 0)
            cur_vm_add_dev(v, key = storage_key(VMSH_STG_RBD, rbd, NULL));
        else if (d->kind == VMSH_DISK_VOLUME && d->volume)
            cur_vm_add_dev(v, key = storage_key(VMSH_STG_VOLUME, d->volume, d->pool));
    }
    if (x)
        cur_vm_add(v, x->nvram);
}

/* Reads the current definitions (live and persistent) of the VM `name`. */
static void cur_vm_load(vm_writer *w, const char *name, cur_vm *v)
{
    *v = (cur_vm){0};
    vmsh_vm *vm = NULL;
    if (vmsh_hv_get_vm(w->hv, name, &vm, NULL) < 0)
        return;
    v->exists = true;
    v->state = vm->state;
    v->name = strdup(vm->name);
    v->uuid = vm->uuid ? strdup(vm->uuid) : NULL;
    cur_vm_add_xml(v, vm->xml);
    _cleanup_free_ char *text = NULL;
    vmsh_domxml *x = NULL;
    if (vm->persistent && vmsh_hv_domain_xml(w->hv, name, true, &text, NULL) == 0 &&
        vmsh_domxml_parse(&x, text, strlen(text), NULL) == 0)
        cur_vm_add_xml(v, x);
    vmsh_domxml_free(x);
    vmsh_vm_free(vm);
}

/* Issue 20 / R12 for devices: a restore in place writes onto a block
 * device only when the VM it replaces uses that very device (a backup's
 * definition is hostile input: it could name any device of the host). */
static bool cur_vm_uses_dev(const cur_vm *v, const char *dev)
{
    for (size_t i = 0; v->exists && dev && i < v->n_devs; i++)
        if (strcmp(v->devs[i], dev) == 0)
            return true;
    return false;
}

static bool cur_vm_owns(const cur_vm *v, const char *path)
{
    if (!v->exists || !path)
        return false;
    for (size_t i = 0; i < v->n_paths; i++)
        if (strcmp(v->paths[i], path) == 0)
            return true;
    const char *rest = v->uuid ? after(path, VMSH_SWTPM_DIR "/") : NULL;
    if (rest && strncmp(rest, v->uuid, strlen(v->uuid)) == 0 && rest[strlen(v->uuid)] == '/')
        return true;
    _cleanup_free_ char *save = NULL;
    return v->name && asprintf(&save, "%s/%s.save", VMSH_LIBVIRT_SAVE_DIR, v->name) >= 0 &&
           strcmp(save, path) == 0;
}

/* Issue 23: does an instant restore (o->overlay_disks) put its overlay
 * into the pool volume at `path`, beside it and renamed over it? When the
 * volume is a regular file (a dir pool's); *st what lstat found. */
static bool overlay_in_volume_file(const vmsh_set_options *o, vmsh_stg_kind kind, const char *path,
                                   struct stat *st)
{
    return o->overlay_disks && kind == VMSH_STG_VOLUME && path && path[0] == '/' &&
           lstat(path, st) == 0 && S_ISREG(st->st_mode);
}

/* R10, R12: may the restore put its file (or a link) at `path`, outside
 * --to's directory? Only where nothing is, or over what the VM it replaces
 * owns; *exists says whether something is there now, and `seen` (when not
 * NULL) what lstat found there. */
static int may_replace(const cur_vm *v, const vmsh_component *c, const char *path, const char *what,
                       bool *exists, struct stat *seen, vmsh_error **err)
{
    struct stat st;
    *exists = false;
    if (!vmsh_path_is_clean(path))
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: the %s path '%s' of the backup is not a clean absolute path "
                              "('.' or '..' components): refused",
                              vmsh_component_name(c), what, path ? path : "(none)");
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return vmsh_error_set(err, -errno, "VM %s: %s: %s", vmsh_component_name(c), path,
                              strerror(errno));
    }
    *exists = true;
    if (seen)
        *seen = st;
    if (cur_vm_owns(v, path))
        return 0;
    return vmsh_error_set(err, -EEXIST,
                          "VM %s: the backup puts its %s at %s, which exists and belongs to no VM "
                          "this restore replaces: not replaced (R12); restore with --to DIR",
                          vmsh_component_name(c), what, path);
}

/* A TPM state file's place at libvirt's (R12): "<swtpm>/<uuid>/<rel>" for
 * the file "tpm/<rel>", each part of <rel> a plain name, <uuid> a UUID.
 * The backup's path must be exactly that (no '..' after the trusted
 * prefix); *out is it (malloc'ed). */
static int tpm_place(const vmsh_component *c, const vmsh_file *f, char **out, const char **relp,
                     vmsh_error **err)
{
    const char *rel = after(vmsh_file_name(f), "tpm/");
    const char *orig = vmsh_file_path(f);
    *out = NULL;
    if (!rel)
        return vmsh_error_set(err, -EINVAL, "VM %s: bad TPM file name '%s'", vmsh_component_name(c),
                              vmsh_file_name(f));
    _cleanup_free_ char *relc = strdup(rel);
    if (!relc)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (rel[strlen(rel) - 1] == '/' || strstr(rel, "//"))
        return vmsh_error_set(err, -EINVAL, "VM %s: TPM file name '%s' is not safe",
                              vmsh_component_name(c), rel);
    char *save = NULL;
    for (char *tok = strtok_r(relc, "/", &save); tok; tok = strtok_r(NULL, "/", &save))
        if (!vmsh_name_is_safe(tok))
            return vmsh_error_set(err, -EINVAL, "VM %s: TPM file name '%s' is not safe",
                                  vmsh_component_name(c), rel);
    const char *u = after(orig, VMSH_SWTPM_DIR "/");
    const char *slash = u ? strchr(u, '/') : NULL;
    if (!slash || !uuid_shaped(u, (size_t)(slash - u)) || strcmp(slash + 1, rel) != 0)
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: TPM state path '%s' is not libvirt's place for the file "
                              "%s (" VMSH_SWTPM_DIR "/<uuid>/%s): refused",
                              vmsh_component_name(c), orig ? orig : "(none)", vmsh_file_name(f),
                              rel);
    const char *want = vmsh_json_str(vmsh_component_extra(c), "uuid");
    if (want && strncasecmp(u, want, 36) != 0)
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: TPM state path '%s' names another UUID than the VM's (%s): "
                              "refused",
                              vmsh_component_name(c), orig, want);
    *relp = rel;
    if (!(*out = strdup(orig)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

/* Where a file of the component goes for good (*out; NULL: not placed)
 * and where libvirt's default place links to it (*link; NULL: none). Every
 * path is vmshadow's decision: under --to inside DIR/<vm>/, a link only in
 * libvirt's own per-VM places, in place only over what the VM being
 * replaced owns (may_replace). A name from the backup is never used as a
 * path component unchecked: a backup may be hostile (issue 8, issue 20). */
static int final_path(const vmsh_set_options *o, const vmsh_component *c, const vmsh_file *f,
                      char **out, char **link, vmsh_error **err)
{
    const char *name = new_name(o, c);
    const char *kind = vmsh_file_kind(f);
    const char *orig = vmsh_file_path(f);
    int n = 0;
    *out = *link = NULL;
    if (!vmsh_name_is_safe(name))
        return vmsh_error_set(err, -EINVAL, "VM name '%s' cannot be used as a file name", name);
    if (strcmp(kind, "config") == 0)
        return 0; /* read by PostRestore, never placed */
    if (strcmp(kind, "saved-state") == 0) {
        if (o->restore_as)
            return 0; /* a copy never resumes the original's memory */
        if (o->restore_dir && (n = asprintf(link, "%s/%s.save", VMSH_LIBVIRT_SAVE_DIR, name)) < 0)
            *link = NULL;
        if (n >= 0)
            n = o->restore_dir ? asprintf(out, "%s/%s/%s.save", o->restore_dir, name, name)
                               : asprintf(out, "%s/%s.save", VMSH_LIBVIRT_SAVE_DIR, name);
        return n < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
    }
    if (strcmp(kind, "tpm") == 0) {
        if (o->restore_as)
            return 0; /* a copy gets a TPM of its own: libvirt makes it */
        const char *rel = NULL;
        _cleanup_free_ char *place = NULL;
        int r = tpm_place(c, f, &place, &rel, err);
        if (r < 0)
            return r;
        if (!o->restore_dir) {
            *out = place, place = NULL;
            return 0;
        }
        *link = place, place = NULL;
        n = asprintf(out, "%s/%s/tpm/%s", o->restore_dir, name, rel);
        return n < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
    }
    if (strcmp(kind, "disk") == 0 && !disk_target(f))
        return vmsh_error_set(err, -EINVAL, "VM %s: bad disk file name '%s'",
                              vmsh_component_name(c), vmsh_file_name(f));
    if (!orig || orig[0] != '/')
        return vmsh_error_set(err, -EINVAL, "VM %s: file %s has no absolute path in the backup",
                              vmsh_component_name(c), vmsh_file_name(f));
    if (!o->restore_dir && !vmsh_path_is_clean(orig))
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: file %s has the path '%s' in the backup, with '.' or '..' "
                              "components: not restored in place (use --to DIR)",
                              vmsh_component_name(c), vmsh_file_name(f), orig);
    _cleanup_free_ char *copy = strdup(orig);
    if (!copy)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    const char *base = basename(copy);
    if (!vmsh_name_is_safe(base))
        return vmsh_error_set(err, -EINVAL, "VM %s: file name '%s' is not safe",
                              vmsh_component_name(c), base);
    bool nvram = strcmp(kind, "nvram") == 0;
    _cleanup_free_ char *dir = vmsh_path_dirname(orig);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* libvirt's own place for firmware variables: <nvram dir>/<file> */
    bool libvirt_nvram = nvram && vmsh_path_is_clean(orig) && strcmp(dir, LIBVIRT_NVRAM_DIR) == 0;
    if (o->restore_dir) {
        n = asprintf(out, "%s/%s/%s", o->restore_dir, name, base);
        /* the default place links to it; firmware variables kept
         * elsewhere are re-pathed in the XML instead */
        if (n >= 0 && libvirt_nvram && !o->restore_as && !(*link = strdup(orig)))
            n = -1;
    } else if (o->restore_as && nvram) {
        n = asprintf(out, "%s/%s_VARS.fd", LIBVIRT_NVRAM_DIR, name);
    } else if (o->restore_as) {
        /* "/" for a file at the root: no "//" (found by fuzz_document) */
        n = asprintf(out, "%s/%s-%s", strcmp(dir, "/") == 0 ? "" : dir, name, base);
    } else {
        n = asprintf(out, "%s", orig);
    }
    return n < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

int vmsh_vm_writer_restore_place(const vmsh_set_options *o, const vmsh_component *c,
                                 const vmsh_file *f, char **out, char **link, vmsh_error **err)
{
    int r = final_path(o, c, f, out, link, err);
    if (r < 0) {
        free(*out), free(*link);
        *out = *link = NULL;
    }
    return r;
}

/* Where the requestor writes a file: beside its final place (so that the
 * move is a rename), or in the set's directory for the XML. */
static int temp_path(vm_writer *w, const char *set_id, const vmsh_component *c, const vmsh_file *f,
                     const char *final, char **out, vmsh_error **err)
{
    int n;
    *out = NULL;
    if (!set_id)
        return 0; /* a plan only */
    if (final)
        n = asprintf(out, "%s" TMP_SUFFIX, final);
    else if (strcmp(vmsh_file_kind(f), "config") == 0)
        n = asprintf(out, "%s/restore-%s/%s.xml", w->state_dir, set_id, vmsh_component_name(c));
    else
        n = asprintf(out, "%s/restore-%s/%s.%s.unused", w->state_dir, set_id,
                     vmsh_component_name(c), vmsh_file_kind(f));
    return n < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
}

static bool bridge_exists(const char *br)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "/sys/class/net/%s/bridge", br);
    return vmsh_name_is_safe(br) && access(p, F_OK) == 0;
}

/* R14: what becomes of each interface of the backed-up XML. */
static int plan_ifaces(vm_writer *w, const vmsh_domxml *x, vmsh_iface_action *acts,
                       json_object *report)
{
    for (size_t i = 0; i < x->n_ifaces; i++) {
        const vmsh_domxml_iface *f = &x->ifaces[i];
        bool keep = true;
        const char *what = "kept as it was";
        if (f->type && strcmp(f->type, "network") == 0) {
            keep = f->source && vmsh_hv_network_active(w->hv, f->source, NULL) == 1;
            what =
                keep ? "connected to libvirt network" : "left disconnected: libvirt network gone";
        } else if (f->type && strcmp(f->type, "bridge") == 0) {
            keep = f->source && bridge_exists(f->source);
            what = keep ? "connected to host bridge" : "left disconnected: host bridge gone";
        }
        acts[i] = keep ? VMSH_IFACE_KEEP : VMSH_IFACE_DISCONNECT;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "mac", jstr(f->mac));
        json_object_object_add(o, "type", jstr(f->type));
        json_object_object_add(o, "source", jstr(f->source));
        json_object_object_add(o, "connected", json_object_new_boolean(keep));
        json_object_object_add(o, "action", jstr(what));
        json_object_array_add(report, o);
    }
    return 0;
}

/* Issue 20 point 3 (R9): the component's name and UUID, the name and UUID in
 * its domain XML must agree, so that a backup cannot redefine a VM it does
 * not name (libvirt defines the XML's name, and keys a VM by its UUID). */
static int check_identity(const vmsh_component *c, const char *xml, size_t len, vmsh_error **err)
{
    vmsh_domxml *x = NULL;
    int r = vmsh_domxml_parse(&x, xml, len, err);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s: the backed-up XML", vmsh_component_name(c));
    const char *uuid = vmsh_json_str(vmsh_component_extra(c), "uuid");
    if (strcmp(x->name, vmsh_component_name(c)) != 0)
        r = vmsh_error_set(err, -EINVAL,
                           "VM %s: the backup's domain XML defines a VM named '%s', not %s: "
                           "refused (R9)",
                           vmsh_component_name(c), x->name, vmsh_component_name(c));
    else if (uuid && (!x->uuid || strcasecmp(x->uuid, uuid) != 0))
        r = vmsh_error_set(err, -EINVAL,
                           "VM %s: the backup's domain XML has the UUID %s, the backup's VM %s: "
                           "refused (R9)",
                           vmsh_component_name(c), x->uuid ? x->uuid : "(none)", uuid);
    vmsh_domxml_free(x);
    return r;
}

/* Issue 25 point 4: a disk stored elsewhere than in an image file (a block
 * device, an RBD image, a pool volume; the Identify record's "kind") goes
 * back onto storage of its kind, or into an image file under --to. Fills
 * *out with the plan (NULL: an image file, planned by final_path) and
 * refuses before anything changes what cannot be done. */
static int plan_storage(vm_writer *w, const vmsh_set_options *o, const char *set_id,
                        const vmsh_component *c, const vmsh_file *f, vmsh_stg_plan *plan,
                        json_object **out, vmsh_error **err)
{
    *out = NULL;
    json_object *d = disk_record(c, disk_target(f));
    const char *kind = vmsh_json_str(d, "kind");
    if (!kind || strcmp(kind, "file") == 0)
        return 0;
    const char *proto = vmsh_json_str(d, "protocol");
    _cleanup_free_ char *rbd_name = NULL;
    vmsh_stg_disk sd = {.target = disk_target(f),
                        .format = disk_format(c, disk_target(f)),
                        .source = vmsh_json_str(d, "path"),
                        .size = vmsh_file_size(f) > 0 ? (uint64_t)vmsh_file_size(f) : 0};
    if (strcmp(kind, "block") == 0) {
        sd.kind = VMSH_STG_BLOCK;
    } else if (strcmp(kind, "volume") == 0) {
        sd.kind = VMSH_STG_VOLUME;
        sd.pool = vmsh_json_str(d, "pool");
        sd.source = vmsh_json_str(d, "volume");
    } else if (strcmp(kind, "network") == 0 && proto && strcmp(proto, "rbd") == 0) {
        sd.kind = VMSH_STG_RBD;
        /* the record has the source as the parser shows it: rbd://HOST/POOL/IMAGE */
        if (vmsh_stg_rbd_name(sd.source, &rbd_name) == -ENOMEM)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        sd.source = rbd_name;
        /* QEMU's rbd driver writes raw; a qcow2 kept in an RBD image is rare */
        if (!o->restore_dir && strcmp(sd.format, "raw") != 0)
            return vmsh_error_set(err, -ENOTSUP,
                                  "VM %s: disk %s is a %s image in RBD, which the restore does "
                                  "not write back into Ceph: restore with --to DIR",
                                  vmsh_component_name(c), sd.target, sd.format);
    } else if (!o->restore_dir) {
        return vmsh_error_set(err, -ENOTSUP,
                              "VM %s: disk %s is a %s disk%s%s, which the restore cannot put "
                              "back onto its storage: restore with --to DIR (it becomes an image "
                              "file there)",
                              vmsh_component_name(c), sd.target, kind, proto ? " over " : "",
                              proto ? proto : "");
    } else {
        sd.kind = VMSH_STG_BLOCK; /* --to: any kind becomes a file */
    }
    vmsh_stg_options so = {
        .vm = new_name(o, c), .as_copy = o->restore_as != NULL, .to_dir = o->restore_dir};
    vmsh_stg_probes probes;
    vmsh_stg_host_probes(w->hv, &probes);
    int r = vmsh_stg_plan_disk(&sd, &so, &probes, plan, err);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s", vmsh_component_name(c));
    static const char *const kinds[] = {"file", "block", "rbd", "volume"};
    json_object *st = json_object_new_object();
    json_object_object_add(st, "kind", jstr(kind));
    json_object_object_add(st, "restored_as", jstr(kinds[plan->kind]));
    json_object_object_add(st, "action", jstr(vmsh_stg_action_name(plan->action)));
    json_object_object_add(st, "target", jstr(plan->target));
    json_object_object_add(st, "pool", jstr(plan->pool));
    json_object_object_add(st, "note", jstr(plan->note));
    json_object *argv = plan->create_argv ? json_object_new_array() : NULL;
    for (size_t i = 0; argv && plan->create_argv[i]; i++)
        json_object_array_add(argv, jstr(plan->create_argv[i]));
    json_object_object_add(st, "create_command", argv);
    json_object_object_add(st, "create_xml", jstr(plan->create_xml));
    json_object_object_add(st, "qemu_target", jstr(plan->qemu_target));
    *out = st;
    /* Onto storage of its kind (not --to): written straight onto it through
     * a sink (no temporary file: there is none for a device, an RBD image
     * or a volume). What exists is replaced only behind --force, as a file
     * is; what is created replaces nothing. */
    bool direct = plan->kind != VMSH_STG_FILE;
    if (set_id && direct && plan->action == VMSH_STG_WRITE && !o->force) {
        r = vmsh_error_set(err, -EEXIST,
                           "VM %s: disk %s would be written onto %s %s, replacing what it holds: "
                           "give --force to write it, or restore with --to DIR",
                           vmsh_component_name(c), sd.target,
                           plan->kind == VMSH_STG_BLOCK ? "block device"
                           : plan->kind == VMSH_STG_RBD ? "RBD image"
                                                        : "pool volume",
                           plan->target);
        json_object_put(st);
        *out = NULL;
        vmsh_stg_plan_clear(plan);
        return r;
    }
    if (direct)
        json_object_object_add(st, "in_place", json_object_new_boolean(true));
    return 0;
}

/* R12 for RBD (issue 25): a restore in place onto the RBD image `image`
 * ("POOL/IMAGE") of the VM it replaces writes through that VM's own
 * monitors, user and configuration, and its restored definition gets that
 * VM's <source> and <auth>: the backup's (hostile input) could name any
 * cluster and any secret of this host. Sets plan->qemu_target and the
 * storage record's "qemu_target" and "source_xml". */
static int rbd_current(vm_writer *w, const cur_vm *cur, const char *image, vmsh_stg_plan *plan,
                       json_object *st, vmsh_error **err)
{
    _cleanup_free_ char *text = NULL, *target = NULL, *frag = NULL;
    vmsh_domxml *x = NULL;
    if (vmsh_hv_domain_xml(w->hv, cur->name, true, &text, NULL) < 0 &&
        vmsh_hv_domain_xml(w->hv, cur->name, false, &text, err) < 0)
        return vmsh_error_prefix(err, "VM %s: reading its definition", cur->name);
    int r = vmsh_domxml_parse(&x, text, strlen(text), err);
    const vmsh_domxml_disk *d = NULL;
    for (size_t i = 0; r == 0 && i < x->n_disks && !d; i++) {
        const vmsh_domxml_disk *k = &x->disks[i];
        _cleanup_free_ char *name = NULL;
        if (k->kind == VMSH_DISK_NETWORK && k->protocol && strcmp(k->protocol, "rbd") == 0 &&
            vmsh_stg_rbd_name(k->source, &name) == 0 && strcmp(name, image) == 0)
            d = k;
    }
    if (r == 0 && !d)
        r = vmsh_error_set(err, -ENOENT, "VM %s: no disk of its definition uses the RBD image %s",
                           cur->name, image);
    if (r == 0)
        r = vmsh_stg_rbd_write_target(d, &target, err);
    if (r == 0)
        r = vmsh_domxml_disk_source_xml(text, strlen(text), d->target, &frag, err);
    vmsh_domxml_free(x);
    if (r < 0)
        return vmsh_error_prefix(err, "VM %s", cur->name);
    free(plan->qemu_target);
    plan->qemu_target = target, target = NULL;
    json_object_object_add(st, "qemu_target", jstr(plan->qemu_target));
    json_object_object_add(st, "source_xml", jstr(frag));
    return 0;
}

/* Plans one component: its files' final and temporary places, in the
 * component's extra "restore" object (also the dry-run's output). Refuses
 * any place the restore may not write (R10, R12). */
static int plan_component(vm_writer *w, const vmsh_set_options *o, const char *set_id,
                          vmsh_component *c, json_object **out, vmsh_error **err)
{
    json_object *plan = json_object_new_object(), *files = json_object_new_array();
    json_object_object_add(plan, "vm", jstr(vmsh_component_name(c)));
    json_object_object_add(plan, "restore_as", jstr(new_name(o, c)));
    cur_vm cur;
    cur_vm_load(w, new_name(o, c), &cur);
    /* R9: the backup's UUID must not be another VM's: libvirt keys a VM by
     * its UUID, and the restore replaces only the VM it names */
    const char *uuid = vmsh_json_str(vmsh_component_extra(c), "uuid");
    vmsh_vm **all = NULL;
    size_t n_all = 0;
    int lr = !o->restore_as && uuid ? vmsh_hv_list_vms(w->hv, &all, &n_all, NULL) : -1;
    for (size_t i = 0; lr == 0 && i < n_all; i++)
        if (all[i]->uuid && strcasecmp(all[i]->uuid, uuid) == 0 &&
            strcmp(all[i]->name, new_name(o, c)) != 0)
            lr = vmsh_error_set(err, -EEXIST,
                                "VM %s: the backup's UUID %s is the one of VM %s, which this "
                                "restore does not replace: refused (R9); restore with --as NAME",
                                vmsh_component_name(c), uuid, all[i]->name);
    vmsh_vm_list_free(all, n_all);
    if (lr == -EEXIST) {
        cur_vm_clear(&cur);
        json_object_put(plan);
        json_object_put(files);
        return lr;
    }
    json_object_object_add(plan, "replaces_existing", json_object_new_boolean(cur.exists));
    json_object_object_add(plan, "existing_state",
                           cur.exists ? jstr(vmsh_vm_state_name(cur.state)) : NULL);
    int r = 0;
    for (size_t i = 0; i < vmsh_component_file_count(c) && r == 0; i++) {
        vmsh_file *f = vmsh_component_file(c, i);
        const char *kind = vmsh_file_kind(f);
        _cleanup_free_ char *final = NULL, *tmp = NULL, *link = NULL;
        vmsh_stg_plan sp = {0};
        json_object *storage = NULL;
        if (strcmp(kind, "disk") == 0 && disk_target(f) &&
            (r = plan_storage(w, o, set_id, c, f, &sp, &storage, err)) < 0)
            break;
        bool in_place = jbool(storage, "in_place");
        bool create = sp.action == VMSH_STG_CREATE;
        _cleanup_free_ char *key = in_place ? storage_key(sp.kind, sp.target, sp.pool) : NULL;
        if (in_place && !create && !cur_vm_uses_dev(&cur, key)) {
            r = vmsh_error_set(err, -EPERM,
                               "VM %s: disk %s would be written onto %s %s, which %s: vmshadow "
                               "writes onto existing storage only in place of the VM that uses "
                               "it (R12); restore with --to DIR",
                               vmsh_component_name(c), disk_target(f),
                               sp.kind == VMSH_STG_BLOCK ? "block device"
                               : sp.kind == VMSH_STG_RBD ? "RBD image"
                                                         : "pool volume",
                               vmsh_json_str(storage, "target"),
                               cur.exists ? "the VM defined here under this name does not use"
                                          : "no VM defined here under this name uses");
            json_object_put(storage);
            vmsh_stg_plan_clear(&sp);
            break;
        }
        /* issue 23: libvirt (9.0) starts no VM whose disk is a volume of
         * an 'rbd' pool (virDomainDiskTranslateSourcePool: "using 'rbd'
         * pools for backing 'volume' disks isn't yet supported"); an
         * instant restore starts the VM at once and leaves its definition
         * naming the volume: refused before anything changes */
        if (o->overlay_disks && sp.rbd_volume) {
            r = vmsh_error_set(err, -ENOTSUP,
                               "VM %s: disk %s is the volume %s of the RBD storage pool %s, and "
                               "libvirt does not start a VM on a volume of an 'rbd' pool (\"using "
                               "'rbd' pools for backing 'volume' disks isn't yet supported\"): "
                               "an instant restore, which starts the VM, is refused; nothing was "
                               "changed: restore without --instant",
                               vmsh_component_name(c), disk_target(f), sp.target, sp.pool);
            json_object_put(storage);
            vmsh_stg_plan_clear(&sp);
            break;
        }
        if (in_place && !create && sp.kind == VMSH_STG_RBD &&
            (r = rbd_current(w, &cur, sp.target, &sp, storage, err)) < 0) {
            json_object_put(storage);
            vmsh_stg_plan_clear(&sp);
            break;
        }
        vmsh_stg_kind sk = sp.kind;
        if (storage) {
            /* onto storage of its kind (what QEMU opens: a device, a
             * volume's path, rbd:POOL/IMAGE), or an image file under --to */
            if (sp.qemu_target)
                final = sp.qemu_target, sp.qemu_target = NULL;
            else
                final = sp.target, sp.target = NULL;
            vmsh_stg_plan_clear(&sp);
        } else if ((r = final_path(o, c, f, &final, &link, err)) < 0) {
            break;
        }
        /* issue 23: an instant restore onto an existing pool volume that is
         * a file (a dir pool) puts its overlay beside the file and renames
         * it over it, as for an image file (the R12 checks above are the
         * volume's, unchanged); the definition keeps naming the volume */
        struct stat vst;
        bool vol_file = in_place && !create && overlay_in_volume_file(o, sk, final, &vst);
        if (vol_file) {
            in_place = false;
            json_object_object_del(storage, "in_place");
            json_object_object_add(storage, "overlay_in_volume", json_object_new_boolean(true));
        }
        bool exists = vol_file, link_exists = false;
        struct stat seen = {0};
        if (vol_file)
            seen = vst;
        /* outside --to's directory: only where nothing is, or over what
         * the VM being replaced owns */
        if (final && !o->restore_dir && !storage &&
            (r = may_replace(&cur, c, final, kind, &exists, &seen, err)) < 0)
            break;
        if (link && (r = may_replace(&cur, c, link, kind, &link_exists, NULL, err)) < 0)
            break;
        json_object *fo = json_object_new_object();
        json_object_object_add(fo, "file", jstr(vmsh_file_name(f)));
        json_object_object_add(fo, "kind", jstr(kind));
        json_object_object_add(fo, "to", jstr(final));
        json_object_object_add(fo, "link", jstr(link));
        /* PostRestore replaces only what was there, and was checked, now */
        json_object_object_add(fo, "replaces", json_object_new_boolean(exists));
        /* the file checked here: the one PostRestore's rename may unlink
         * and keeps open meanwhile (place_file) */
        if (exists && S_ISREG(seen.st_mode)) {
            char ino[48];
            snprintf(ino, sizeof(ino), "%llu:%llu", (unsigned long long)seen.st_dev,
                     (unsigned long long)seen.st_ino);
            json_object_object_add(fo, "replaces_inode", jstr(ino));
        }
        json_object_object_add(fo, "link_replaces", json_object_new_boolean(link_exists));
        json_object_object_add(fo, "storage", storage);
        if (strcmp(kind, "disk") == 0) {
            const char *fmt = disk_format(c, disk_target(f));
            json_object_object_add(fo, "format", jstr(fmt));
            /* issue 27 point 3: the requestor writes the disk straight in
             * its format (an image served by qemu-nbd), once */
            if (strcmp(fmt, "raw") != 0)
                json_object_object_add(fo, "write_as", jstr(fmt));
            json_object_object_add(fo, "repath",
                                   json_object_new_boolean(strcmp(final, vmsh_file_path(f)) != 0));
        }
        if (!final && strcmp(kind, "saved-state") == 0)
            json_object_object_add(fo, "note",
                                   jstr("not used: a copy under a new name boots "
                                        "from its disks"));
        if (!final && strcmp(kind, "tpm") == 0)
            json_object_object_add(fo, "note",
                                   jstr("not used: a copy under a new name gets a TPM of its own"));
        /* in place onto a device: the requestor writes the device itself */
        json_object_object_add(fo, "in_place", in_place ? json_object_new_boolean(true) : NULL);
        if (in_place && set_id)
            r = (tmp = strdup(final)) ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
        else
            r = temp_path(w, set_id, c, f, final, &tmp, err);
        if (r == 0 && tmp)
            json_object_object_add(fo, "temporary", jstr(tmp));
        json_object_array_add(files, fo);
    }
    cur_vm_clear(&cur);
    json_object_object_add(plan, "files", files);
    if (r < 0) {
        json_object_put(plan);
        return r;
    }
    *out = plan;
    return 0;
}

/* ------------------------------------------------------------ pre-restore */

static bool is_sel(const vmsh_component *c)
{
    return vmsh_component_selected(c);
}

static vmsh_stg_kind stg_kind_of(const char *name)
{
    return name && strcmp(name, "rbd") == 0      ? VMSH_STG_RBD
           : name && strcmp(name, "volume") == 0 ? VMSH_STG_VOLUME
           : name && strcmp(name, "block") == 0  ? VMSH_STG_BLOCK
                                                 : VMSH_STG_FILE;
}

/* Issue 25 point 4: creates the storage a disk's plan says is missing (an
 * RBD image, a pool volume, an LV), once every plan was checked. Journal
 * action `create-storage` {kind, target, pool}: undo removes it (a restore
 * that fails or is killed leaves nothing it created). The disk is then
 * written at what the creation returned (the volume's path). */
static int create_storage(vm_writer *w, vmsh_set *set, const vmsh_component *c, json_object *fo,
                          vmsh_file *f, vmsh_error **err)
{
    json_object *st = NULL;
    json_object_object_get_ex(fo, "storage", &st);
    const char *action = vmsh_json_str(st, "action");
    if (!action || strcmp(action, vmsh_stg_action_name(VMSH_STG_CREATE)) != 0)
        return 0;
    vmsh_stg_plan plan = {.action = VMSH_STG_CREATE,
                          .kind = stg_kind_of(vmsh_json_str(st, "restored_as")),
                          .target = (char *)vmsh_json_str(st, "target"),
                          .pool = (char *)vmsh_json_str(st, "pool"),
                          .qemu_target = (char *)vmsh_json_str(st, "qemu_target"),
                          .create_xml = (char *)vmsh_json_str(st, "create_xml")};
    char *argv[16] = {0};
    json_object *ca = NULL;
    if (json_object_object_get_ex(st, "create_command", &ca) &&
        json_object_is_type(ca, json_type_array))
        for (size_t i = 0; i < json_object_array_length(ca) && i < VMSH_ARRAY_SIZE(argv) - 1; i++)
            argv[i] = (char *)json_object_get_string(json_object_array_get_idx(ca, i));
    plan.create_argv = argv[0] ? argv : NULL;
    json_object *data = json_object_new_object();
    json_object_object_add(data, "vm", jstr(new_name(vmsh_set_options_of(set), c)));
    json_object_object_add(data, "kind", jstr(vmsh_stg_kind_name(plan.kind)));
    json_object_object_add(data, "target", jstr(plan.target));
    json_object_object_add(data, "pool", jstr(plan.pool));
    uint64_t seq = 0;
    int r = vmsh_set_journal_begin(set, w->ops.id, "create-storage", data, &seq, err);
    json_object_put(data);
    if (r < 0)
        return r;
    _cleanup_free_ char *path = NULL;
    if ((r = vmsh_stg_create(w->hv, &plan, &path, err)) < 0) {
        vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, NULL);
        return vmsh_error_prefix(err, "VM %s: disk %s", vmsh_component_name(c), disk_target(f));
    }
    if ((r = vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_DONE, err)) < 0)
        return r;
    /* written there, and the definition names it (register_vm) */
    json_object_object_add(fo, "temporary", jstr(path));
    json_object_object_add(fo, "to", jstr(path));
    struct stat vst;
    if (overlay_in_volume_file(vmsh_set_options_of(set), plan.kind, path, &vst)) {
        /* issue 23: an instant restore's overlay goes beside the new
         * volume's file and is renamed over it (as plan_component does for
         * an existing one): what is there is the volume just created */
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s" TMP_SUFFIX, path) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        json_object_object_add(fo, "temporary", jstr(tmp));
        json_object_object_add(fo, "in_place", NULL);
        json_object_object_add(fo, "replaces", json_object_new_boolean(true));
        json_object_object_del(st, "in_place");
        json_object_object_add(st, "overlay_in_volume", json_object_new_boolean(true));
    }
    return 0;
}

/* Undoes this set's creations for the VM `vm` (every VM when NULL): what
 * a failed restore created is removed again. */
static void undo_creations(vm_writer *w, vmsh_set *set, const char *vm)
{
    vmsh_journal *j = vmsh_set_journal(set);
    for (size_t k = 0; j && k < vmsh_journal_count(j); k++) {
        const vmsh_journal_entry *en = vmsh_journal_entry_at(j, k);
        const char *v = vmsh_json_str(en->data, "vm");
        if (strcmp(en->owner, w->ops.id) != 0 || en->state == VMSH_JOURNAL_UNDONE ||
            strcmp(en->action, "create-storage") != 0 || (vm && (!v || strcmp(v, vm) != 0)))
            continue;
        uint64_t seq = en->seq;
        if (vmsh_vmw_undo_restore(w, en, NULL) == 0)
            vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, NULL);
    }
}

int vmsh_vmw_pre_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    vmsh_metadata *md = vmsh_set_metadata(set, ops);
    const vmsh_set_options *o = vmsh_set_options_of(set);
    int r = vmsh_vmw_hv_ready(w, err);
    if (r < 0)
        return r;
    size_t n_sel = 0;
    for (size_t i = 0; md && i < vmsh_metadata_component_count(md); i++)
        n_sel += is_sel(vmsh_metadata_component(md, i));
    if (o->restore_as && n_sel != 1)
        return vmsh_error_set(err, -EINVAL, "--as restores exactly one VM; name it");
    /* Plan everything and check every VM before anything changes (R9). */
    for (size_t i = 0; md && i < vmsh_metadata_component_count(md) && r == 0; i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        if (!is_sel(c))
            continue;
        json_object *plan = NULL;
        if ((r = plan_component(w, o, vmsh_set_id(set), c, &plan, err)) < 0)
            break;
        json_object *rep = NULL;
        json_object_object_get_ex(plan, "replaces_existing", &rep);
        if (json_object_get_boolean(rep) && !o->force)
            r = vmsh_error_set(err, -EEXIST,
                               "VM %s exists; restoring would shut it down and delete it (R9): "
                               "give --force to replace it, or --as NAME to restore beside it",
                               new_name(o, c));
        json_object *extra = vmsh_component_extra(c);
        if (extra)
            json_object_object_add(extra, "restore", plan);
        else
            json_object_put(plan);
    }
    if (r < 0)
        return r;
    _cleanup_free_ char *xmldir = NULL;
    if (asprintf(&xmldir, "%s/restore-%s", w->state_dir, vmsh_set_id(set)) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if ((r = vmsh_fs_mkdir_p(xmldir, 0700, err)) < 0)
        return r;
    for (size_t i = 0; md && i < vmsh_metadata_component_count(md) && r == 0; i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        if (!is_sel(c))
            continue;
        json_object *plan = NULL, *files = NULL, *rep = NULL;
        json_object_object_get_ex(vmsh_component_extra(c), "restore", &plan);
        json_object_object_get_ex(plan, "files", &files);
        json_object_object_get_ex(plan, "replaces_existing", &rep);
        /* Storage that is missing is created first (nothing is replaced yet) */
        for (size_t k = 0; k < vmsh_component_file_count(c) && r == 0; k++)
            r = create_storage(w, set, c, json_object_array_get_idx(files, k),
                               vmsh_component_file(c, k), err);
        if (r < 0)
            break;
        /* Temporary files first in the journal: a killed run leaves none. */
        json_object *paths = json_object_new_array(), *data = json_object_new_object();
        for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
            json_object *fo = json_object_array_get_idx(files, k), *tmp = NULL, *to = NULL;
            json_object_object_get_ex(fo, "temporary", &tmp);
            json_object_object_get_ex(fo, "to", &to);
            /* a device written in place is never a temporary file to remove */
            bool dev = jbool(fo, "in_place");
            json_object_array_add(paths, dev ? NULL : json_object_get(tmp));
            if (to && !dev) {
                _cleanup_free_ char *dir = vmsh_path_dirname(json_object_get_string(to));
                if (!dir || (r = vmsh_fs_mkdir_p(dir, 0755, err)) < 0)
                    break;
            }
            vmsh_file_set_restored(vmsh_component_file(c, k), VMSH_RESTORE_PENDING,
                                   json_object_get_string(tmp), NULL);
        }
        json_object_object_add(data, "paths", paths);
        json_object_object_add(data, "dir", jstr(xmldir));
        uint64_t seq = 0;
        if (r == 0)
            r = vmsh_set_journal_begin(set, ops->id, "restore-files", data, &seq, err);
        json_object_put(data);
        if (r < 0 || !json_object_get_boolean(rep))
            continue;
        /* R9: shut down and delete the VM being replaced; its XML is kept in
         * the journal, so that a killed restore can define it back. */
        const char *name = new_name(o, c);
        _cleanup_free_ char *old_xml = NULL;
        if ((r = vmsh_hv_domain_xml(w->hv, name, true, &old_xml, err)) < 0)
            break;
        data = json_object_new_object();
        json_object_object_add(data, "vm", jstr(name));
        json_object_object_add(data, "xml", jstr(old_xml));
        r = vmsh_set_journal_begin(set, ops->id, "undefine", data, &seq, err);
        json_object_put(data);
        if (r == 0)
            r = vmsh_host_stop(w->host, w->hv, name, STOP_GRACE_S, err);
        if (r == 0)
            r = vmsh_host_undefine(w->host, w->hv, name, err);
        if (r == 0)
            r = vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_DONE, err);
    }
    if (r < 0) {
        rmdir(xmldir); /* nothing was written in it yet: gone unless it is not empty */
        undo_creations(w, set, NULL);
    }
    return r;
}

/* ----------------------------------------------------------- post-restore */

/* The file at `final` that the rename over it will free: a regular file
 * with one link, holding enough blocks to be worth freeing later, and, when
 * `inode` ("DEV:INO" from may_replace, R12) is given, the very one
 * PreRestore checked; opened read-only (never following a link, never
 * blocking on what is not a regular file), else -1. */
static int open_replaced(const char *final, const char *inode)
{
    unsigned long long dev = 0, ino = 0;
    struct stat st, fst;
    if ((inode && sscanf(inode, "%llu:%llu", &dev, &ino) != 2) || lstat(final, &st) < 0 ||
        !S_ISREG(st.st_mode) || (inode && (st.st_dev != (dev_t)dev || st.st_ino != (ino_t)ino)) ||
        st.st_nlink != 1 || (unsigned long long)st.st_blocks * 512 < DEFER_FREE_MIN_BYTES)
        return -1;
    int fd = open(final, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0 && (fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode) || fst.st_dev != st.st_dev ||
                    fst.st_ino != st.st_ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Moves a restored file into place and makes the move durable: the file
 * itself was synced when written (the requestor's sink), the rename is on
 * stable storage once its directory is synced; all before the VM is
 * defined (issue 27 point 3). A disk comes already in its format: the plan
 * asks the requestor to write it so ("write_as"), never a raw file converted
 * afterwards (written twice, and qemu-img convert never flushed).
 * Issue 23: the file the rename replaces (the VM's previous disk image) is
 * freed by the kernel when its last link goes, inside the rename: 1.9 s
 * for a written 8 GiB image on ext4, on the way to the VM running again.
 * So that file is kept open over the rename, which then only drops a link,
 * and handed to the requestor (vmsh_fs_defer_close), which closes it in a
 * process of its own once the restore's last fsync is done (for an instant
 * restore: once the VM runs): the kernel frees it there. In place, it is
 * the file PreRestore checked (`inode`); under --to DIR (`to_dir`), where
 * a restore with --force replaces what DIR/VM/ holds unchecked (a former
 * restore's image), whatever regular file is there. Listed in `freed` when
 * the rename did drop its last link. Never garbage: a process that dies
 * closes it, and after a host crash the file system frees the orphan inode
 * at mount. */
static int place_file(const char *tmp, const char *final, const char *inode, bool to_dir,
                      json_object *freed, vmsh_error **err)
{
    int old = inode || to_dir ? open_replaced(final, inode) : -1;
    if (rename(tmp, final) < 0) {
        int e = errno;
        if (old >= 0)
            close(old);
        return vmsh_error_set(err, -e, "cannot move %s into place: %s", final, strerror(e));
    }
    struct stat st;
    if (old >= 0 && freed && fstat(old, &st) == 0 && st.st_nlink == 0)
        json_object_array_add(freed, jstr(final));
    vmsh_fs_defer_close(old);
    _cleanup_free_ char *dir = vmsh_path_dirname(final);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return vmsh_fs_fsync_dir(dir, err);
}

/* R12: a symbolic link at `link` to `target`, never over another VM's file,
 * nor over a file of no VM: only a missing path, or what the VM being
 * replaced owns (`ours`: PreRestore found it there and checked it,
 * may_replace). A link is replaced only then as well: it may be another
 * VM's (issue 20). */
static int make_link(const char *link, const char *target, bool ours, vmsh_error **err)
{
    struct stat st;
    if (lstat(link, &st) == 0) {
        if (!ours)
            return vmsh_error_set(err, -EEXIST,
                                  "%s exists and belongs to no VM this restore replaces: not "
                                  "replaced by a link to %s (R12)",
                                  link, target);
        if (unlink(link) < 0)
            return vmsh_error_set(err, -errno, "cannot replace %s: %s", link, strerror(errno));
    }
    _cleanup_free_ char *dir = vmsh_path_dirname(link);
    int r = dir ? vmsh_fs_mkdir_p(dir, 0755, err) : -ENOMEM;
    if (r < 0)
        return r;
    if (symlink(target, link) < 0)
        return vmsh_error_set(err, -errno, "cannot link %s to %s: %s", link, target,
                              strerror(errno));
    return 0;
}

/* Removes a VM's temporary files, and the directories PreRestore made for
 * it when they are left empty: nothing of a failed VM stays (R11). */
static void remove_temps(vmsh_component *c)
{
    json_object *plan = NULL, *files = NULL;
    json_object_object_get_ex(vmsh_component_extra(c), "restore", &plan);
    json_object_object_get_ex(plan, "files", &files);
    for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
        const char *p = vmsh_file_restored_path(vmsh_component_file(c, k));
        /* a block device written in place is the disk itself, not a
         * temporary file: never unlinked */
        if (!p || jbool(json_object_array_get_idx(files, k), "in_place"))
            continue;
        unlink(p);
        _cleanup_free_ char *dir = vmsh_path_dirname(p);
        if (dir)
            rmdir(dir); /* fails, as it should, unless empty */
    }
}

/* Takes a VM that a restore defined out of libvirt again: stopped when it
 * runs, undefined with its managed saved state; `state` is that state's
 * file when it lies behind a link at libvirt's place (R12). */
static int unregister(vm_writer *w, const char *name, const char *state)
{
    vmsh_vm *v = NULL;
    int r = 0;
    if (vmsh_hv_get_vm(w->hv, name, &v, NULL) == 0) {
        bool active = v->state != VMSH_VM_SHUTOFF;
        vmsh_vm_free(v);
        if (active)
            r = vmsh_host_stop(w->host, w->hv, name, 0, NULL);
        if (r == 0)
            r = vmsh_host_undefine(w->host, w->hv, name, NULL);
    }
    if (state)
        unlink(state);
    return r;
}

/* R15: the restored saved state becomes the VM's managed saved state, so
 * that `virsh start` resumes it. libvirt learns of a managed saved state only
 * when it writes one itself (or when the daemon starts): a file put in its
 * place behind its back is resumed by `virsh start`, yet `virsh undefine
 * --managed-save`, `managedsave-remove` and `dominfo` do not see it. So the
 * state is loaded paused (the guest runs no instruction) and libvirt saves it
 * as the managed saved state, running again when started unless it was
 * paused at the backup (R1). Written through the link at libvirt's place
 * when the state goes elsewhere (R12). */
static int register_state(vm_writer *w, const vmsh_component *c, const char *name, const char *tmp,
                          const char *final, const char *link, bool link_ours, vmsh_error **err)
{
    int r = 0;
    if (link && (r = make_link(link, final, link_ours, err)) < 0)
        return r;
    bool paused =
        vmsh_component_state_before(c) && strcmp(vmsh_component_state_before(c), "paused") == 0;
    if ((r = vmsh_host_restore(w->host, w->hv, name, tmp, NULL, true, err)) < 0 ||
        (r = vmsh_host_managed_save(w->host, w->hv, name, !paused, err)) < 0)
        return vmsh_error_prefix(err, "VM %s: registering its saved state", name);
    unlink(tmp);
    return 0;
}

/* `qemu-img bitmap OP -f qcow2 PATH NAME` (src/hv/image.c). */
static int image_bitmap(const char *op, const char *path, const char *name, vmsh_error **err)
{
    return vmsh_hv_image_bitmap(op, path, name, err);
}

/* Issue 7 (point 3): the checkpoint of the backup travels with it (the VM
 * writer's "checkpoint" record) and comes back with the VM. The restored disk
 * holds exactly the data of the backup's point, so a new, empty, enabled
 * bitmap of that name in the restored qcow2 records every change from that
 * point on, as the original did. Only for a VM restored as itself (a copy
 * made with --as is another VM) and its qcow2 disks. Adds the bitmaps before
 * QEMU first opens the images; fills `targets` (the disks that got one) and
 * returns how many, with the outcome in *cpr (NULL: nothing to do). */
static size_t checkpoint_bitmaps(const vmsh_set_options *o, const vmsh_component *c,
                                 const vmsh_disk_repath *rp, size_t n_rp, const char **targets,
                                 size_t max, json_object **cpr)
{
    json_object *cp = NULL, *disks = NULL;
    *cpr = NULL;
    json_object_object_get_ex(vmsh_component_extra(c), "checkpoint", &cp);
    const char *name = vmsh_json_str(cp, "name");
    /* an instant restore's overlays get no bitmap: the next backup reads
     * in full (issue 23) */
    if (o->restore_as || o->overlay_disks || !name ||
        !json_object_object_get_ex(cp, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array))
        return 0;
    size_t n = 0;
    json_object *skipped = json_object_new_array(), *bitmap_error = NULL;
    for (size_t i = 0; i < json_object_array_length(disks) && n < max; i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(disks, i));
        const vmsh_disk_repath *d = NULL;
        for (size_t k = 0; k < n_rp && !d; k++)
            if (t && strcmp(rp[k].target, t) == 0)
                d = &rp[k];
        vmsh_error *e = NULL;
        if (!d || !d->format || strcmp(d->format, "qcow2") != 0 || d->path[0] != '/') {
            json_object_array_add(skipped, jstr(t));
        } else if (image_bitmap("--add", d->path, name, &e) < 0) {
            json_object_array_add(skipped, jstr(t));
            if (!bitmap_error)
                bitmap_error = jstr(e->message);
            vmsh_error_free(e);
        } else {
            targets[n++] = d->target;
        }
    }
    json_object *r = json_object_new_object();
    json_object_object_add(r, "name", jstr(name));
    json_object *got = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(got, jstr(targets[i]));
    json_object_object_add(r, "disks", got);
    json_object_object_add(r, "disks_without_bitmap", skipped);
    json_object_object_add(r, "bitmap_error", bitmap_error);
    *cpr = r;
    return n;
}

/* Registers one VM whose files are all intact; fills `report`. */
static int register_vm(vm_writer *w, vmsh_set *set, vmsh_component *c, json_object *plan,
                       json_object *report, vmsh_error **err)
{
    const vmsh_set_options *o = vmsh_set_options_of(set);
    json_object *files = NULL;
    json_object_object_get_ex(plan, "files", &files);
    _cleanup_free_ char *xml = NULL;
    size_t xml_len = 0;
    const char *state_tmp = NULL, *state_final = NULL, *state_link = NULL, *nvram_final = NULL;
    bool state_link_ours = false, nvram_linked = false;
    vmsh_disk_repath rp[64];
    size_t n_rp = 0;
    int r = 0;
    /* The definition first: nothing is moved into place for a backup whose
     * XML names another VM (R9). */
    for (size_t k = 0; k < vmsh_component_file_count(c) && r == 0 && !xml; k++) {
        vmsh_file *f = vmsh_component_file(c, k);
        if (strcmp(vmsh_file_kind(f), "config") == 0) {
            r = vmsh_fs_read_all(vmsh_file_restored_path(f), VMSH_DOMXML_MAX_BYTES, &xml, &xml_len,
                                 err);
            unlink(vmsh_file_restored_path(f));
        }
    }
    if (r == 0 && !xml)
        r = vmsh_error_set(err, -ENOENT, "VM %s: the backup has no domain XML",
                           vmsh_component_name(c));
    if (r == 0)
        r = check_identity(c, xml, xml_len, err);
    /* the files replaced whose blocks the kernel frees after the restore
     * (place_file) */
    json_object *freed = json_object_new_array();
    json_object_object_add(report, "replaced_freed_later", freed);
    for (size_t k = 0; k < vmsh_component_file_count(c) && r == 0; k++) {
        vmsh_file *f = vmsh_component_file(c, k);
        json_object *fo = json_object_array_get_idx(files, k), *to = NULL, *link = NULL,
                    *fmt = NULL;
        json_object_object_get_ex(fo, "to", &to);
        json_object_object_get_ex(fo, "link", &link);
        json_object_object_get_ex(fo, "format", &fmt);
        const char *kind = vmsh_file_kind(f), *tmp = vmsh_file_restored_path(f);
        const char *final = to ? json_object_get_string(to) : NULL;
        struct stat st;
        if (strcmp(kind, "config") == 0) {
            continue;
        } else if (final && strcmp(kind, "disk") == 0 && jbool(fo, "in_place")) {
            /* written onto its storage and flushed by the requestor before
             * this: the definition names that device (type='block'), RBD
             * image (type='network') or volume (type='volume'), kept by
             * drop_host_devices */
            json_object *sto = NULL;
            json_object_object_get_ex(fo, "storage", &sto);
            vmsh_stg_kind sk = stg_kind_of(vmsh_json_str(sto, "restored_as"));
            const char *fmt_s = json_object_get_string(fmt);
            if (n_rp < VMSH_ARRAY_SIZE(rp))
                rp[n_rp++] = (vmsh_disk_repath){
                    .target = disk_target(f),
                    .path = final,
                    .format = fmt_s ? fmt_s : "raw",
                    .in_place = true,
                    .rbd = sk == VMSH_STG_RBD ? vmsh_json_str(sto, "target") : NULL,
                    .rbd_source = sk == VMSH_STG_RBD ? vmsh_json_str(sto, "source_xml") : NULL,
                    .pool = sk == VMSH_STG_VOLUME ? vmsh_json_str(sto, "pool") : NULL,
                    .volume = sk == VMSH_STG_VOLUME ? vmsh_json_str(sto, "target") : NULL};
        } else if (final && !o->restore_dir && !jbool(fo, "replaces") && lstat(final, &st) == 0) {
            /* PreRestore found nothing there (may_replace): what appeared
             * since is no file of this VM */
            r = vmsh_error_set(err, -EEXIST,
                               "VM %s: %s appeared during the restore and belongs to no VM it "
                               "replaces: not replaced",
                               vmsh_component_name(c), final);
        } else if (!final) {
            unlink(tmp);
        } else if (strcmp(kind, "saved-state") == 0) {
            /* stays at its temporary name: libvirt writes the managed saved
             * state itself (register_state) */
            state_tmp = tmp;
            state_final = final;
            state_link = link ? json_object_get_string(link) : NULL;
            state_link_ours = jbool(fo, "link_replaces");
        } else if (strcmp(kind, "disk") == 0) {
            /* instant restore (issue 23): a qcow2 overlay, whatever the
             * disk's format was; otherwise the disk was written once in its
             * own format (issue 27) */
            const char *format = o->overlay_disks ? "qcow2" : json_object_get_string(fmt);
            r = place_file(tmp, final, vmsh_json_str(fo, "replaces_inode"), o->restore_dir != NULL,
                           freed, err);
            /* the overlay in a pool volume's file: the definition names the
             * volume (type='volume'), as after a normal restore onto it */
            json_object *sto = NULL;
            json_object_object_get_ex(fo, "storage", &sto);
            bool vol = jbool(sto, "overlay_in_volume");
            if (r == 0 && n_rp < VMSH_ARRAY_SIZE(rp))
                rp[n_rp++] =
                    (vmsh_disk_repath){.target = disk_target(f),
                                       .path = final,
                                       .format = format,
                                       .in_place = vol,
                                       .pool = vol ? vmsh_json_str(sto, "pool") : NULL,
                                       .volume = vol ? vmsh_json_str(sto, "target") : NULL};
        } else {
            r = place_file(tmp, final, vmsh_json_str(fo, "replaces_inode"), o->restore_dir != NULL,
                           freed, err);
            if (r == 0 && strcmp(kind, "nvram") == 0)
                nvram_final = final;
            if (r == 0 && link)
                r = make_link(json_object_get_string(link), final, jbool(fo, "link_replaces"), err);
            if (r == 0 && link && strcmp(kind, "nvram") == 0)
                nvram_linked = true;
        }
    }
    if (r < 0)
        return r;
    const char *cp_targets[VMSH_ARRAY_SIZE(rp)];
    json_object *cpr = NULL;
    size_t n_cp = checkpoint_bitmaps(o, c, rp, n_rp, cp_targets, VMSH_ARRAY_SIZE(cp_targets), &cpr);
    if (cpr)
        json_object_object_add(report, "checkpoint", cpr);
    vmsh_domxml *x = NULL;
    if ((r = vmsh_domxml_parse(&x, xml, xml_len, err)) < 0)
        return vmsh_error_prefix(err, "VM %s: the backed-up XML", vmsh_component_name(c));
    vmsh_iface_action acts[64] = {0};
    json_object *ifaces = json_object_new_array();
    plan_ifaces(w, x, acts, ifaces);
    json_object_object_add(report, "interfaces", ifaces);
    size_t n_ifaces = x->n_ifaces < VMSH_ARRAY_SIZE(acts) ? x->n_ifaces : VMSH_ARRAY_SIZE(acts);
    vmsh_domxml_free(x);
    vmsh_domxml_edit e = {
        .name = o->restore_as,
        .new_uuid = o->restore_as != NULL,
        .new_macs = o->restore_as != NULL,
        .disks = rp,
        .n_disks = n_rp,
        .ifaces = acts,
        .n_ifaces = n_ifaces,
        .drop_host_devices = !o->host_devices,
        /* --as: the copy's own firmware variables; otherwise the XML keeps
         * the default place, linked to the restored file (R12) */
        .nvram = o->restore_as || !nvram_linked ? nvram_final : NULL,
    };
    char **stripped = NULL;
    size_t n_stripped = 0;
    e.stripped = &stripped;
    e.n_stripped = &n_stripped;
    _cleanup_free_ char *new_xml = NULL;
    if ((r = vmsh_domxml_edit_apply(xml, xml_len, &e, &new_xml, err)) < 0)
        return r;
    /* what the restore left out of the definition (issue 20 point 2) */
    json_object *dropped = json_object_new_array();
    for (size_t i = 0; i < n_stripped; i++) {
        json_object_array_add(dropped, jstr(stripped[i]));
        free(stripped[i]);
    }
    free(stripped);
    json_object_object_add(plan, "host_devices_not_attached", dropped);
    /* R15: the saved state becomes the VM's managed saved state; its own XML
     * must name the restored disks (it named the overlays of the backup). */
    if (state_final) {
        _cleanup_free_ char *sx = NULL, *sx2 = NULL;
        vmsh_domxml_edit se = {.disks = rp,
                               .n_disks = n_rp,
                               .ifaces = acts,
                               .n_ifaces = n_ifaces,
                               .drop_host_devices = !o->host_devices};
        if ((r = vmsh_hv_save_image_xml(w->hv, state_tmp, &sx, err)) < 0 ||
            (r = vmsh_domxml_edit_apply(sx, strlen(sx), &se, &sx2, err)) < 0 ||
            (r = vmsh_hv_save_image_define_xml(w->hv, state_tmp, sx2, err)) < 0)
            return vmsh_error_prefix(err, "VM %s: the saved state", vmsh_component_name(c));
    }
    /* From here the VM exists in libvirt: a failure, or a run killed before
     * PostRestore ends, takes it out again (R11), so that the VM it replaced
     * is defined back (journal action "register"). */
    const char *name = new_name(o, c);
    json_object *data = json_object_new_object();
    json_object_object_add(data, "vm", jstr(name));
    json_object_object_add(data, "state", state_link ? jstr(state_final) : NULL);
    uint64_t seq = 0;
    r = vmsh_set_journal_begin(set, w->ops.id, "register", data, &seq, err);
    json_object_put(data);
    if (r < 0)
        return r;
    if ((r = vmsh_host_define(w->host, w->hv, new_xml, err)) < 0)
        vmsh_error_prefix(err, "VM %s", name);
    else if (state_tmp && (r = register_state(w, c, name, state_tmp, state_final, state_link,
                                              state_link_ours, err)) < 0)
        unregister(w, name, state_link ? state_final : NULL);
    if (r < 0)
        return r;
    if (n_cp > 0) {
        /* not a reason to fail the restore: the next backup reads in full
         * and says why (the checkpoint is missing) */
        vmsh_error *ce = NULL;
        const char *cp_name = vmsh_json_str(cpr, "name");
        bool ok = vmsh_hv_checkpoint_redefine(w->hv, name, cp_name, cp_targets, n_cp, &ce) == 0;
        json_object_object_add(cpr, "redefined", json_object_new_boolean(ok));
        json_object_object_add(cpr, "error", ce ? jstr(ce->message) : NULL);
        for (size_t i = 0; !ok && i < n_rp; i++)
            for (size_t k = 0; k < n_cp; k++)
                if (strcmp(rp[i].target, cp_targets[k]) == 0)
                    image_bitmap("--remove", rp[i].path, cp_name, NULL);
        vmsh_error_free(ce);
    }
    json_object_object_add(report, "registered", json_object_new_boolean(true));
    json_object_object_add(report, "saved_state", json_object_new_boolean(state_final != NULL));
    return 0;
}

/* The set's directory in the state directory (the XML and unused files go
 * there): removed when empty, whatever the outcome (issue 20 point 10). */
static void rm_set_dir(vm_writer *w, vmsh_set *set)
{
    _cleanup_free_ char *dir = NULL;
    if (vmsh_set_id(set) && asprintf(&dir, "%s/restore-%s", w->state_dir, vmsh_set_id(set)) >= 0)
        rmdir(dir);
}

int vmsh_vmw_post_restore(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    vmsh_metadata *md = vmsh_set_metadata(set, ops);
    int first = 0;
    vmsh_journal *j = vmsh_set_journal(set);
    for (size_t i = 0; md && i < vmsh_metadata_component_count(md); i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        if (!is_sel(c))
            continue;
        json_object *plan = NULL;
        json_object_object_get_ex(vmsh_component_extra(c), "restore", &plan);
        json_object *report = json_object_new_object();
        json_object_object_add(plan, "result", report);
        /* R11: every file intact, or the VM is not registered. */
        json_object *bad = json_object_new_array();
        for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
            const vmsh_file *f = vmsh_component_file(c, k);
            if (vmsh_file_restore_status(f) != VMSH_RESTORE_OK) {
                json_object *b = json_object_new_object();
                json_object_object_add(b, "file", jstr(vmsh_file_name(f)));
                json_object_object_add(
                    b, "error",
                    jstr(vmsh_file_restore_error(f) ? vmsh_file_restore_error(f) : "not restored"));
                json_object_array_add(bad, b);
            }
        }
        json_object_object_add(report, "failed_files", bad);
        vmsh_error *e = NULL;
        int r = 0;
        if (json_object_array_length(bad) > 0) {
            remove_temps(c);
            json_object *b0 = json_object_array_get_idx(bad, 0), *bf = NULL, *be = NULL;
            json_object_object_get_ex(b0, "file", &bf);
            json_object_object_get_ex(b0, "error", &be);
            r = vmsh_error_set(&e, -EIO,
                               "VM %s was not restored and not registered (R11): %zu file(s) "
                               "not intact, first %s: %s",
                               vmsh_component_name(c), json_object_array_length(bad),
                               json_object_get_string(bf), json_object_get_string(be));
        } else {
            r = register_vm(w, set, c, plan, report, &e);
            if (r < 0)
                remove_temps(c);
        }
        json_object_object_add(report, "registered", json_object_new_boolean(r == 0));
        json_object_object_add(report, "error", e ? jstr(e->message) : NULL);
        if (r < 0 && first == 0)
            first = r;
        vmsh_error_propagate(err, &e);
        /* This VM's journal entries end here: temporary files are gone; a
         * VM it replaced stays replaced when the restore registered the new
         * one, and is defined again as it was when it did not (its disks
         * were never touched: the restored files went to temporary names). */
        for (size_t k = 0; j && k < vmsh_journal_count(j); k++) {
            const vmsh_journal_entry *en = vmsh_journal_entry_at(j, k);
            const char *vm = vmsh_json_str(en->data, "vm");
            if (strcmp(en->owner, ops->id) != 0 || en->state == VMSH_JOURNAL_UNDONE)
                continue;
            uint64_t seq = en->seq;
            if (strcmp(en->action, "create-storage") == 0 && vm &&
                strcmp(vm, new_name(vmsh_set_options_of(set), c)) == 0) {
                /* the VM registered keeps what was created for it; a VM
                 * that was not leaves none of it */
                if (r == 0 || vmsh_vmw_undo_restore(w, en, NULL) == 0)
                    vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, NULL);
            } else if (strcmp(en->action, "restore-files") == 0 ||
                       (strcmp(en->action, "register") == 0 && vm &&
                        strcmp(vm, new_name(vmsh_set_options_of(set), c)) == 0)) {
                /* files: gone or in place; register: kept, or already
                 * taken out by register_vm */
                vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, NULL);
            } else if (strcmp(en->action, "undefine") == 0 && vm &&
                       strcmp(vm, new_name(vmsh_set_options_of(set), c)) == 0) {
                bool back = r < 0 && vmsh_vmw_undo_restore(w, en, NULL) == 0;
                if (back)
                    json_object_object_add(report, "previous_vm_defined_again",
                                           json_object_new_boolean(true));
                if (r == 0 || back)
                    vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, NULL);
            }
        }
    }
    rm_set_dir(w, set);
    return first;
}

/* ------------------------------------------------------------------- undo */

/* The repository writes `path` as `path.tmp.<pid>` and renames it when
 * complete (vmsh_repo_restore_file); a restore killed during the write
 * leaves that file, which the journal does not name. Removes `path.tmp.N`
 * files (N digits only) beside `path`: names only the restore makes. */
static void remove_write_temps(const char *path)
{
    _cleanup_free_ char *dir = vmsh_path_dirname(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d)
        return;
    size_t n = strlen(base);
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *rest = de->d_name + n;
        if (strncmp(de->d_name, base, n) != 0 || strncmp(rest, ".tmp.", 5) != 0 || !rest[5])
            continue;
        bool digits = true;
        for (const char *q = rest + 5; *q && digits; q++)
            digits = isdigit((unsigned char)*q);
        if (digits)
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

int vmsh_vmw_undo_restore(vm_writer *w, const vmsh_journal_entry *entry, vmsh_error **err)
{
    if (strcmp(entry->action, "restore-files") == 0) {
        json_object *paths = NULL;
        if (entry->data && json_object_object_get_ex(entry->data, "paths", &paths) &&
            json_object_is_type(paths, json_type_array))
            for (size_t i = 0; i < json_object_array_length(paths); i++) {
                json_object *p = json_object_array_get_idx(paths, i);
                if (!json_object_is_type(p, json_type_string))
                    continue;
                const char *s = json_object_get_string(p);
                /* only names this writer made: a journal is no licence to
                 * delete arbitrary files */
                size_t n = strlen(s), m = strlen(TMP_SUFFIX);
                if ((n > m && strcmp(s + n - m, TMP_SUFFIX) == 0) || strstr(s, "/restore-")) {
                    unlink(s);
                    remove_write_temps(s);
                    _cleanup_free_ char *conv = NULL;
                    if (asprintf(&conv, "%s.convert", s) >= 0)
                        unlink(conv);
                }
            }
        const char *dir = vmsh_json_str(entry->data, "dir");
        if (dir)
            rmdir(dir);
        return 0;
    }
    if (strcmp(entry->action, "create-storage") == 0) {
        const char *kind = vmsh_json_str(entry->data, "kind");
        const char *target = vmsh_json_str(entry->data, "target");
        const char *pool = vmsh_json_str(entry->data, "pool");
        if (!kind || !target)
            return vmsh_error_set(err, -EBADMSG,
                                  "journal entry 'create-storage' is missing members");
        int r = vmsh_vmw_hv_ready(w, err);
        return r < 0 ? r : vmsh_stg_remove(w->hv, stg_kind_of(kind), target, pool, err);
    }
    if (strcmp(entry->action, "register") == 0) {
        const char *vm = vmsh_json_str(entry->data, "vm");
        const char *state = vmsh_json_str(entry->data, "state");
        if (!vm)
            return vmsh_error_set(err, -EBADMSG, "journal entry 'register' is missing members");
        /* only a state file of the name this writer gives one (R12) */
        _cleanup_free_ char *want = NULL;
        if (state && asprintf(&want, "/%s.save", vm) >= 0 &&
            !(strlen(state) > strlen(want) &&
              strcmp(state + strlen(state) - strlen(want), want) == 0))
            state = NULL;
        int r = vmsh_vmw_hv_ready(w, err);
        if (r == 0 && unregister(w, vm, state) < 0)
            r = vmsh_error_set(err, -EIO,
                               "VM %s, registered by a restore that did not finish, "
                               "cannot be taken out: remove it with virsh undefine",
                               vm);
        return r;
    }
    if (strcmp(entry->action, "undefine") == 0) {
        const char *vm = vmsh_json_str(entry->data, "vm");
        const char *xml = vmsh_json_str(entry->data, "xml");
        if (!vm || !xml)
            return vmsh_error_set(err, -EBADMSG, "journal entry 'undefine' is missing members");
        int r = vmsh_vmw_hv_ready(w, err);
        if (r < 0)
            return r;
        vmsh_vm *v = NULL;
        if (vmsh_hv_get_vm(w->hv, vm, &v, NULL) == 0) {
            vmsh_vm_free(v);
            return 0; /* it exists (never undefined, or the restore registered it) */
        }
        return vmsh_host_define(w->host, w->hv, xml, err);
    }
    return -ENOSYS;
}

/* ------------------------------------------------------------------- plan */

int vmsh_vm_writer_restore_plan(vmsh_writer_ops *ops, vmsh_metadata *md, const vmsh_set_options *o,
                                const char *const *xmls, json_object **out, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    int r = vmsh_vmw_hv_ready(w, err);
    if (r < 0)
        return r;
    json_object *vms = json_object_new_array();
    for (size_t i = 0; md && i < vmsh_metadata_component_count(md) && r == 0; i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        if (!is_sel(c))
            continue;
        /* a definition naming another VM is refused before anything
         * changes (R9) */
        if (xmls && xmls[i] && (r = check_identity(c, xmls[i], strlen(xmls[i]), err)) < 0)
            break;
        json_object *plan = NULL;
        if ((r = plan_component(w, o, NULL, c, &plan, err)) < 0)
            break;
        vmsh_domxml *x = NULL;
        if (xmls && xmls[i] && vmsh_domxml_parse(&x, xmls[i], strlen(xmls[i]), NULL) == 0) {
            vmsh_iface_action acts[64];
            json_object *ifaces = json_object_new_array();
            vmsh_domxml iface_view = *x;
            if (iface_view.n_ifaces > VMSH_ARRAY_SIZE(acts))
                iface_view.n_ifaces = VMSH_ARRAY_SIZE(acts);
            plan_ifaces(w, &iface_view, acts, ifaces);
            json_object_object_add(plan, "interfaces", ifaces);
            /* issue 20 point 2: everything of the host the definition
             * holds and the restore leaves out, as register_vm does */
            json_object *dropped = json_object_new_array();
            vmsh_disk_repath rp[64];
            size_t n_rp = 0;
            for (size_t k = 0; k < vmsh_component_file_count(c) && n_rp < VMSH_ARRAY_SIZE(rp);
                 k++) {
                const vmsh_file *f = vmsh_component_file(c, k);
                if (strcmp(vmsh_file_kind(f), "disk") == 0 && disk_target(f))
                    rp[n_rp++] = (vmsh_disk_repath){.target = disk_target(f), .path = "/"};
            }
            vmsh_domxml_edit e = {.disks = rp, .n_disks = n_rp, .drop_host_devices = true};
            char **items = NULL;
            size_t n_items = 0;
            if (!o->host_devices && vmsh_domxml_host_resources(xmls[i], strlen(xmls[i]), &e, &items,
                                                               &n_items, NULL) == 0) {
                for (size_t k = 0; k < n_items; k++) {
                    json_object_array_add(dropped, jstr(items[k]));
                    free(items[k]);
                }
                free(items);
            }
            json_object_object_add(plan, "host_devices_not_attached", dropped);
            vmsh_domxml_free(x);
        }
        json_object_array_add(vms, plan);
    }
    if (r < 0) {
        json_object_put(vms);
        return r;
    }
    *out = vms;
    return 0;
}
