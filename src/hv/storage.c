/* storage.c - the restore plan of one disk on storage of its kind
 * (include/vmshadow/hv/storage.h, issue 25 point 4): pure decisions over the
 * probes' answers, and the host's probes (read only: nothing here changes
 * the host). */
#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/storage.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include "hv_private.h"

#include <libvirt/virterror.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *vmsh_stg_action_name(vmsh_stg_action a)
{
    switch (a) {
    case VMSH_STG_WRITE:
        return "written";
    case VMSH_STG_CREATE:
        return "created";
    case VMSH_STG_CONVERT:
        return "converted";
    }
    return "?";
}

void vmsh_stg_plan_clear(vmsh_stg_plan *p)
{
    if (!p)
        return;
    free(p->target);
    free(p->pool);
    free(p->qemu_target);
    for (size_t i = 0; p->create_argv && p->create_argv[i]; i++)
        free(p->create_argv[i]);
    free(p->create_argv);
    free(p->create_xml);
    free(p->note);
    *p = (vmsh_stg_plan){0};
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* A NULL-terminated argv of copies of the strings (NULL-terminated list). */
static char **argv_of(const char *first, ...)
{
    const char *a[16];
    size_t n = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s && n < 15; s = va_arg(ap, const char *))
        a[n++] = s;
    va_end(ap);
    char **v = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; v && i < n; i++)
        if (!(v[i] = strdup(a[i]))) {
            for (size_t k = 0; k < i; k++)
                free(v[k]);
            free(v);
            return NULL;
        }
    return v;
}

static int oom(vmsh_error **err)
{
    return vmsh_error_set(err, -ENOMEM, "out of memory");
}

/* A value of the legacy "rbd:" filename: plain, so that no ':' ends it
 * early and no ',' reaches qemu-nbd's option parser. */
static bool rbd_plain(const char *s)
{
    return s && *s && !strpbrk(s, ":,@\\ =;\t\n");
}

/* "POOL/IMAGE" of an RBD disk, each part a plain name (no snapshot): it
 * goes into QEMU's "rbd:" filename and onto rbd's command line, so nothing
 * in it may start an option there (':', ',', '=', a leading '-'). */
static int rbd_split(const vmsh_stg_disk *d, char **pool, char **image, vmsh_error **err)
{
    const char *s = d->source ? d->source : "";
    const char *slash = strchr(s, '/');
    *pool = *image = NULL;
    if (slash && (*pool = strndup(s, (size_t)(slash - s))) && (*image = strdup(slash + 1)) &&
        vmsh_name_is_safe(*pool) && vmsh_name_is_safe(*image) && rbd_plain(*pool) &&
        rbd_plain(*image) && **pool != '-' && **image != '-')
        return 0;
    free(*pool), free(*image);
    *pool = *image = NULL;
    return vmsh_error_set(err, -EINVAL,
                          "disk %s: the RBD image '%s' of the backup is not POOL/IMAGE of plain "
                          "names: refused",
                          d->target, s);
}

/* What the disk becomes under --to: DIR/VM/TARGET.EXT, an image file. */
static int plan_convert(const vmsh_stg_disk *d, const vmsh_stg_options *o, vmsh_stg_plan *out,
                        vmsh_error **err)
{
    const char *ext = strcmp(d->format, "raw") == 0 ? "img" : d->format;
    out->action = d->kind == VMSH_STG_FILE ? VMSH_STG_WRITE : VMSH_STG_CONVERT;
    out->kind = VMSH_STG_FILE;
    if (!(out->target = fmt("%s/%s/%s.%s", o->to_dir, o->vm, d->target, ext)) ||
        !(out->qemu_target = strdup(out->target)) ||
        !(out->note = fmt("an image file under %s (type='file')", o->to_dir)))
        return oom(err);
    return 0;
}

/* R12: refuses storage that a defined VM other than `vm` names (its
 * definition, live or persistent): writing it, or creating it under that
 * VM, would change another VM's disk. */
static int check_user(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                      vmsh_stg_kind kind, const char *name, const char *pool, const char *path,
                      bool create, vmsh_error **err)
{
    if (!p->user)
        return 0;
    char *used = NULL;
    int r = p->user(p->opaque, kind, name, pool, path, o->vm, &used, err);
    if (r < 0)
        return vmsh_error_prefix(err, "disk %s: checking which VM uses %s", d->target, name);
    if (!used)
        return 0;
    r = vmsh_error_set(err, -EBUSY,
                       "disk %s: the %s %s%s%s is %s VM %s: not %s; restore with --as NAME or "
                       "--to DIR",
                       d->target, kind == VMSH_STG_RBD ? "RBD image" : "volume", name,
                       pool ? " of storage pool " : "", pool ? pool : "",
                       create ? "named by the definition of" : "used by", used,
                       create ? "created" : "written");
    free(used);
    return r;
}

static int plan_block(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                      vmsh_stg_plan *out, vmsh_error **err)
{
    char *vg = NULL, *lv = NULL, *used = NULL;
    uint64_t have = 0, vg_free = 0;
    int r = p->lv(p->opaque, d->source, &vg, &lv, &vg_free, err);
    if (r < 0 && r != -ENOENT)
        return vmsh_error_prefix(err, "disk %s", d->target);
    bool is_lv = r == 0;
    const char *dev = d->source;
    char *newdev = NULL;
    if (o->as_copy) {
        if (!is_lv)
            return vmsh_error_set(err, -ENOTSUP,
                                  "disk %s: --as never writes over the original's block device "
                                  "%s, and a new block device cannot be created: restore this VM "
                                  "with --to DIR (the disk becomes an image file there)",
                                  d->target, dev);
        free(lv);
        lv = fmt("%s-%s", o->vm, d->target);
        if (!lv || !(newdev = fmt("/dev/%s/%s", vg, lv))) {
            free(vg), free(lv);
            return oom(err);
        }
        dev = newdev;
    }
    r = p->block(p->opaque, dev, o->vm, &have, &used, err);
    if (r == 0 && o->as_copy) {
        r = vmsh_error_set(err, -EEXIST,
                           "disk %s: --as %s would create the LV %s, which exists: not "
                           "overwritten; choose another name",
                           d->target, o->vm, dev);
    } else if (r == 0 && used) {
        r = vmsh_error_set(err, -EBUSY,
                           "disk %s: the block device %s is used by VM %s: not written; restore "
                           "with --as NAME or --to DIR",
                           d->target, dev, used);
    } else if (r == 0 && have < d->size) {
        r = vmsh_error_set(err, -ENOSPC,
                           "disk %s: the block device %s has %" PRIu64 " bytes, the disk needs "
                           "%" PRIu64 ": too small; grow it or restore with --to DIR",
                           d->target, dev, have, d->size);
    } else if (r == 0) {
        out->action = VMSH_STG_WRITE;
        out->note = fmt("written back onto the block device (%" PRIu64 " bytes)", have);
    } else if (r == -ENOENT && !is_lv) {
        r = vmsh_error_set(err, -ENOENT,
                           "disk %s: the block device %s does not exist and is no LV of an "
                           "existing volume group: it cannot be created; restore with --to DIR",
                           d->target, dev);
    } else if (r == -ENOENT && vg_free < d->size) {
        r = vmsh_error_set(err, -ENOSPC,
                           "disk %s: volume group %s has %" PRIu64 " bytes free, the LV %s needs "
                           "%" PRIu64 ": not created; restore with --to DIR",
                           d->target, vg, vg_free, lv, d->size);
    } else if (r == -ENOENT) {
        r = 0;
        char size[32];
        snprintf(size, sizeof(size), "%" PRIu64 "b", d->size);
        out->action = VMSH_STG_CREATE;
        /* --wipesignatures: no stale signature of an earlier LV shows */
        out->create_argv = argv_of("lvcreate", "--yes", "--wipesignatures", "y", "--name", lv,
                                   "--size", size, vg, (const char *)NULL);
        out->note = fmt("a new LV %s in volume group %s", lv, vg);
        if (!out->create_argv)
            r = oom(err);
    } else {
        vmsh_error_prefix(err, "disk %s", d->target);
    }
    out->kind = VMSH_STG_BLOCK;
    if (r == 0 && (!(out->target = strdup(dev)) || !(out->qemu_target = strdup(dev)) || !out->note))
        r = oom(err);
    free(vg), free(lv), free(used), free(newdev);
    return r;
}

static int plan_rbd(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                    vmsh_stg_plan *out, vmsh_error **err)
{
    char *pool = NULL, *image = NULL;
    int r = rbd_split(d, &pool, &image, err);
    if (r < 0)
        return r;
    r = p->rbd_pool(p->opaque, pool, err);
    if (r == -EHOSTDOWN) {
        r = vmsh_error_set(err, -EHOSTDOWN,
                           "disk %s: the Ceph pool %s cannot be reached (cluster down?): nothing "
                           "was changed; restore when it is up, or with --to DIR",
                           d->target, pool);
    } else if (r == -ENOENT) {
        r = vmsh_error_set(err, -ENOENT,
                           "disk %s: the Ceph pool %s does not exist: the RBD image cannot be "
                           "created; create the pool or restore with --to DIR",
                           d->target, pool);
    } else if (r < 0) {
        vmsh_error_prefix(err, "disk %s", d->target);
    }
    if (r < 0) {
        free(pool), free(image);
        return r;
    }
    if (o->as_copy) {
        free(image);
        image = fmt("%s-%s", o->vm, d->target);
        if (!image || !vmsh_name_is_safe(image))
            r = image ? vmsh_error_set(err, -EINVAL, "disk %s: no RBD image name from '%s'",
                                       d->target, o->vm)
                      : oom(err);
    }
    uint64_t have = 0;
    char spec[300];
    snprintf(spec, sizeof(spec), "%s/%s", pool, image ? image : "");
    if (r == 0)
        r = p->rbd_image(p->opaque, pool, image, &have, err);
    if ((r == 0 && !o->as_copy) || r == -ENOENT) {
        int u = check_user(d, o, p, VMSH_STG_RBD, spec, NULL, NULL, r == -ENOENT, err);
        r = u < 0 ? u : r;
    }
    if (r == 0 && o->as_copy) {
        r = vmsh_error_set(err, -EEXIST,
                           "disk %s: --as %s would create the RBD image %s/%s, which exists: not "
                           "overwritten; choose another name",
                           d->target, o->vm, pool, image);
    } else if (r == 0 && have < d->size) {
        r = vmsh_error_set(err, -ENOSPC,
                           "disk %s: the RBD image %s/%s has %" PRIu64 " bytes, the disk needs "
                           "%" PRIu64 ": too small; resize it (rbd resize) or restore with --to "
                           "DIR",
                           d->target, pool, image, have, d->size);
    } else if (r == 0) {
        out->action = VMSH_STG_WRITE;
        out->note = fmt("written back onto the RBD image");
    } else if (r == -ENOENT) {
        r = 0;
        /* rbd's --size is in MiB unless a unit follows: whole MiB, up */
        char size[32];
        snprintf(size, sizeof(size), "%" PRIu64 "M", (d->size + (1u << 20) - 1) >> 20);
        out->action = VMSH_STG_CREATE;
        out->create_argv = argv_of("rbd", "create", "--size", size, spec, (const char *)NULL);
        out->note = fmt("a new RBD image in pool %s", pool);
        if (!out->create_argv)
            r = oom(err);
    } else if (r < 0 && r != -EEXIST && r != -ENOSPC && r != -EINVAL && r != -EBUSY) {
        vmsh_error_prefix(err, "disk %s", d->target);
    }
    out->kind = VMSH_STG_RBD;
    if (r == 0 && (!(out->target = fmt("%s/%s", pool, image)) ||
                   !(out->qemu_target = fmt("rbd:%s/%s", pool, image)) || !out->note))
        r = oom(err);
    free(pool), free(image);
    return r;
}

/* "CEPH-POOL/IMAGE" of an "rbd:CEPH-POOL/IMAGE[:opts]" target (NULL when
 * not one, or out of memory) */
static char *rbd_target_name(const char *t)
{
    if (!t || strncmp(t, "rbd:", 4) != 0)
        return NULL;
    return strndup(t + 4, strcspn(t + 4, ":"));
}

static int plan_volume(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                       vmsh_stg_plan *out, vmsh_error **err)
{
    if (!d->pool || !vmsh_name_is_safe(d->pool) || !d->source || !vmsh_name_is_safe(d->source))
        return vmsh_error_set(err, -EINVAL,
                              "disk %s: the pool volume '%s/%s' of the backup is not of plain "
                              "names: refused",
                              d->target, d->pool ? d->pool : "", d->source ? d->source : "");
    int r = p->pool(p->opaque, d->pool, err);
    bool rbd_pool = r == 1;
    r = rbd_pool ? 0 : r;
    if (r == -ENOENT)
        return vmsh_error_set(err, -ENOENT,
                              "disk %s: the storage pool %s does not exist or is not active: the "
                              "volume cannot be created; start the pool or restore with --to DIR",
                              d->target, d->pool);
    if (r < 0)
        return vmsh_error_prefix(err, "disk %s", d->target);
    /* issue 23: QEMU's rbd driver writes raw; a qcow2 kept in an RBD image
     * is rare (as for an RBD network disk, vm_restore.c) */
    if (rbd_pool && strcmp(d->format, "raw") != 0)
        return vmsh_error_set(err, -ENOTSUP,
                              "disk %s: a %s image in a volume of the RBD pool %s, which the "
                              "restore does not write back into Ceph: restore with --to DIR",
                              d->target, d->format, d->pool);
    char *vol = o->as_copy ? fmt("%s-%s", o->vm, d->source) : strdup(d->source);
    char *path = NULL;
    uint64_t have = 0;
    if (!vol)
        return oom(err);
    r = p->volume(p->opaque, d->pool, vol, &have, &path, err);
    if ((r == 0 && !o->as_copy) || r == -ENOENT) {
        int u = check_user(d, o, p, VMSH_STG_VOLUME, vol, d->pool, r == 0 ? path : NULL,
                           r == -ENOENT, err);
        /* R12: the RBD image behind the volume may also be another VM's
         * network disk (type='network', named by CEPH-POOL/IMAGE) */
        _cleanup_free_ char *image = r == 0 && rbd_pool ? rbd_target_name(path) : NULL;
        if (u == 0 && image)
            u = check_user(d, o, p, VMSH_STG_RBD, image, NULL, NULL, false, err);
        r = u < 0 ? u : r;
    }
    if (r == 0 && o->as_copy) {
        r = vmsh_error_set(err, -EEXIST,
                           "disk %s: --as %s would create the volume %s in pool %s, which exists: "
                           "not overwritten; choose another name",
                           d->target, o->vm, vol, d->pool);
    } else if (r == 0 && have < d->size) {
        r = vmsh_error_set(err, -ENOSPC,
                           "disk %s: the volume %s of pool %s has %" PRIu64 " bytes, the disk "
                           "needs %" PRIu64 ": too small; restore with --to DIR",
                           d->target, vol, d->pool, have, d->size);
    } else if (r == 0) {
        out->action = VMSH_STG_WRITE;
        out->qemu_target = path, path = NULL;
        out->note = fmt("written back onto the volume");
    } else if (r == -ENOENT) {
        r = 0;
        out->action = VMSH_STG_CREATE;
        out->create_xml = fmt("<volume><name>%s</name><capacity unit='bytes'>%" PRIu64
                              "</capacity><target><format type='%s'/></target></volume>",
                              vol, d->size, d->format);
        out->note = fmt("a new volume in storage pool %s", d->pool);
        if (!out->create_xml)
            r = oom(err);
    } else if (r < 0 && r != -EEXIST && r != -ENOSPC && r != -EBUSY) {
        vmsh_error_prefix(err, "disk %s", d->target);
    }
    out->kind = VMSH_STG_VOLUME;
    out->rbd_volume = rbd_pool;
    out->target = vol;
    if (r == 0 && (!(out->pool = strdup(d->pool)) || !out->note))
        r = oom(err);
    free(path);
    return r;
}

int vmsh_stg_plan_disk(const vmsh_stg_disk *d, const vmsh_stg_options *o, const vmsh_stg_probes *p,
                       vmsh_stg_plan *out, vmsh_error **err)
{
    *out = (vmsh_stg_plan){0};
    if (!d->target || !vmsh_name_is_safe(d->target) || !o->vm || !vmsh_name_is_safe(o->vm))
        return vmsh_error_set(err, -EINVAL, "a disk or VM name of the backup is not safe: refused");
    if (!d->format || (strcmp(d->format, "raw") != 0 && strcmp(d->format, "qcow2") != 0))
        return vmsh_error_set(err, -EINVAL, "disk %s: format '%s' is not restored here", d->target,
                              d->format ? d->format : "(none)");
    int r;
    if (o->to_dir)
        r = plan_convert(d, o, out, err);
    else if (d->kind == VMSH_STG_BLOCK)
        r = plan_block(d, o, p, out, err);
    else if (d->kind == VMSH_STG_RBD)
        r = plan_rbd(d, o, p, out, err);
    else if (d->kind == VMSH_STG_VOLUME)
        r = plan_volume(d, o, p, out, err);
    else
        r = vmsh_error_set(err, -ENOTSUP,
                           "disk %s: image files are planned by the VM writer (final_path)",
                           d->target);
    if (r < 0)
        vmsh_stg_plan_clear(out);
    return r;
}

/* ------------------------------------------------------------ host probes */

int vmsh_stg_lv_path(const char *dev, char **vg, char **lv)
{
    *vg = *lv = NULL;
    char v[256], l[256];
    size_t nv = 0, nl = 0;
    const char *s;
    if ((s = strncmp(dev, "/dev/mapper/", 12) == 0 ? dev + 12 : NULL)) {
        /* VG-LV, a '-' inside a name doubled */
        bool in_lv = false;
        for (; *s; s++) {
            if (*s == '-' && s[1] == '-') {
                s++;
            } else if (*s == '-' && !in_lv) {
                in_lv = true;
                continue;
            }
            if (in_lv ? nl + 1 >= sizeof(l) : nv + 1 >= sizeof(v))
                return -EINVAL;
            if (in_lv)
                l[nl++] = *s;
            else
                v[nv++] = *s;
        }
        if (!in_lv)
            return -ENOENT;
    } else if ((s = strncmp(dev, "/dev/", 5) == 0 ? dev + 5 : NULL)) {
        const char *slash = strchr(s, '/');
        if (!slash || strchr(slash + 1, '/') || (size_t)(slash - s) >= sizeof(v) ||
            strlen(slash + 1) >= sizeof(l))
            return -ENOENT;
        nv = (size_t)(slash - s);
        memcpy(v, s, nv);
        nl = strlen(slash + 1);
        memcpy(l, slash + 1, nl);
    } else {
        return -ENOENT;
    }
    v[nv] = l[nl] = 0;
    /* the directories of /dev that are no VG */
    static const char *const not_vg[] = {"mapper", "disk", "block", "char",  "pts",
                                         "shm",    "md",   "bus",   "input", "net"};
    for (size_t i = 0; i < sizeof(not_vg) / sizeof(not_vg[0]); i++)
        if (strcmp(v, not_vg[i]) == 0)
            return -ENOENT;
    if (!nv || !nl || !vmsh_name_is_safe(v) || !vmsh_name_is_safe(l) || v[0] == '-' || l[0] == '-')
        return -ENOENT;
    *vg = strdup(v);
    *lv = strdup(l);
    if (!*vg || !*lv) {
        free(*vg), free(*lv);
        *vg = *lv = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* Environment of the Ceph commands: a cluster that does not answer makes
 * them fail within seconds instead of hanging (the "pool down" refusal). */
static char *const ceph_env[] = {
    (char *)"CEPH_ARGS=--client-mount-timeout=10 --rados-mon-op-timeout=10 "
            "--rados-osd-op-timeout=10",
    NULL};

/* Runs argv with env: *code is its exit status (-1: timed out, killed). */
static int run_status(char *const argv[], char *const env[], int *code, vmsh_error **err)
{
    /* only the status counts: what the command prints (`rbd ls`: other
     * VMs' image names) never reaches the user's terminal */
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null < 0)
        return vmsh_error_set(err, -errno, "cannot open /dev/null: %s", strerror(errno));
    vmsh_proc_opts o = {.timeout_ms = 30000, .out_fd = null};
    vmsh_proc_result res;
    int r = vmsh_proc_run_opts(argv, env, &o, &res, err);
    close(null);
    if (r < 0)
        return r;
    *code = res.timed_out || res.signal ? -1 : res.exit_code;
    return 0;
}

static int host_block(void *opaque, const char *dev, const char *vm, uint64_t *size, char **used_by,
                      vmsh_error **err)
{
    vmsh_hv *hv = opaque;
    *used_by = NULL;
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? -ENOENT
                   : vmsh_error_set(err, -errno, "cannot open %s: %s", dev, strerror(errno));
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode))
        r = vmsh_error_set(err, -ENOTBLK, "%s is not a block device: refused", dev);
    else if (ioctl(fd, BLKGETSIZE64, size) < 0)
        r = vmsh_error_set(err, -errno, "cannot read the size of %s: %s", dev, strerror(errno));
    close(fd);
    if (r < 0 || !hv)
        return r;
    /* another VM whose definition names the device (by its path or by the
     * same device number) */
    vmsh_vm **all = NULL;
    size_t n = 0;
    if ((r = vmsh_hv_list_vms(hv, &all, &n, err)) < 0)
        return vmsh_error_prefix(err, "checking which VM uses %s", dev);
    for (size_t i = 0; i < n && !*used_by; i++) {
        if (vm && strcmp(all[i]->name, vm) == 0)
            continue;
        for (size_t k = 0; all[i]->xml && k < all[i]->xml->n_disks && !*used_by; k++) {
            const char *src = all[i]->xml->disks[k].source;
            struct stat o;
            if (src && (strcmp(src, dev) == 0 ||
                        (stat(src, &o) == 0 && S_ISBLK(o.st_mode) && o.st_rdev == st.st_rdev)))
                *used_by = strdup(all[i]->name);
        }
    }
    vmsh_vm_list_free(all, n);
    return 0;
}

static int host_lv(void *opaque, const char *dev, char **vg, char **lv, uint64_t *vg_free,
                   vmsh_error **err)
{
    (void)opaque;
    int r = vmsh_stg_lv_path(dev, vg, lv);
    if (r < 0)
        return r == -ENOMEM ? oom(err) : -ENOENT;
    char *argv[] = {(char *)"vgs", (char *)"--noheadings", (char *)"--nosuffix", (char *)"--units",
                    (char *)"b",   (char *)"-o",           (char *)"vg_free",    *vg,
                    NULL};
    char *out = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    /* no VG of that name (or no LVM here): not an LV this host can make */
    if (vmsh_proc_capture(argv, 30000, 4096, &out, &len, &e) < 0 ||
        sscanf(out, " %" SCNu64, vg_free) != 1) {
        vmsh_error_free(e);
        free(out);
        free(*vg), free(*lv);
        *vg = *lv = NULL;
        return -ENOENT;
    }
    free(out);
    return 0;
}

static int host_rbd_pool(void *opaque, const char *pool, vmsh_error **err)
{
    (void)opaque;
    /* --connect-timeout: monitors that do not answer fail it in 10 s */
    char *argv[] = {(char *)"ceph",
                    (char *)"--connect-timeout",
                    (char *)"10",
                    (char *)"osd",
                    (char *)"pool",
                    (char *)"ls",
                    NULL};
    char *out = NULL;
    int code = 0;
    vmsh_error *e = NULL;
    /* the monitors answer (within 30 s, vmsh_proc_capture's timeout): the pool is there or not */
    int r = vmsh_proc_capture(argv, 30000, 1u << 20, &out, &(size_t){0}, &e);
    vmsh_error_free(e);
    if (r < 0)
        return -EHOSTDOWN;
    bool found = false;
    for (char *save = NULL, *t = strtok_r(out, "\n", &save); t && !found;
         t = strtok_r(NULL, "\n", &save))
        found = strcmp(t, pool) == 0;
    free(out);
    if (!found)
        return -ENOENT;
    /* the OSDs answer: listing the pool's images works within the timeout */
    char *ls[] = {(char *)"rbd", (char *)"ls", (char *)"-p", (char *)pool, NULL};
    if ((r = run_status(ls, ceph_env, &code, err)) < 0)
        return r;
    return code == 0 ? 0 : -EHOSTDOWN;
}

static int host_rbd_image(void *opaque, const char *pool, const char *image, uint64_t *size,
                          vmsh_error **err)
{
    (void)opaque;
    char spec[512];
    snprintf(spec, sizeof(spec), "%s/%s", pool, image);
    char *argv[] = {(char *)"rbd",
                    (char *)"--client-mount-timeout=10",
                    (char *)"--rados-mon-op-timeout=10",
                    (char *)"--rados-osd-op-timeout=10",
                    (char *)"info",
                    (char *)"--format",
                    (char *)"json",
                    spec,
                    NULL};
    char *out = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    int r = vmsh_proc_capture(argv, 30000, 1u << 20, &out, &len, &e);
    if (r < 0) {
        /* rbd exits 2 (ENOENT) for an image that is not there; the pool
         * answered a moment ago (host_rbd_pool) */
        bool absent = e && strstr(e->message, "status 2");
        if (absent) {
            vmsh_error_free(e);
            return -ENOENT;
        }
        vmsh_error_propagate(err, &e);
        return vmsh_error_prefix(err, "rbd info %s", spec);
    }
    const char *p = strstr(out, "\"size\":");
    r = p && sscanf(p + 7, " %" SCNu64, size) == 1
            ? 0
            : vmsh_error_set(err, -EBADMSG, "rbd info %s: no size in its answer", spec);
    free(out);
    return r;
}

/* Issue 23: what QEMU writes for the volume at `path` ("CEPH-POOL/IMAGE")
 * of the RBD pool `p`: "rbd:CEPH-POOL/IMAGE" with the pool's monitors and
 * cephx user (the key from the host's Ceph configuration, as for an RBD
 * network disk). -ENOTSUP for a volume of a network pool of another type. */
static int network_volume_target(virStoragePoolPtr p, const char *pool, const char *vol,
                                 const char *path, char **out, vmsh_error **err)
{
    *out = NULL;
    vmsh_domxml_disk d = {.target = strdup(vol),
                          .source = strdup(path),
                          .kind = VMSH_DISK_VOLUME,
                          .storage = VMSH_DISK_NETWORK};
    int r = !d.target || !d.source ? -ENOMEM : hv_pool_set_network(p, &d);
    if (r == -EIO)
        r = vmsh_error_set(err, -EIO, "cannot read storage pool %s: %s", pool,
                           virGetLastErrorMessage());
    else if (r == -ENOTSUP || r == -EINVAL)
        r = vmsh_error_set(err, -ENOTSUP,
                           "the volume %s of storage pool %s is network storage of a pool type "
                           "the restore does not write (volumes of 'rbd' pools it does): "
                           "restore with --to DIR",
                           vol, pool);
    else if (r == -ENOMEM)
        r = oom(err);
    if (r == 0 && (r = vmsh_stg_rbd_write_target(&d, out, err)) < 0)
        vmsh_error_prefix(err, "storage pool %s", pool);
    vmsh_domxml_disk_clear(&d);
    return r;
}

static bool pool_is_rbd(virStoragePoolPtr p)
{
    vmsh_domxml_disk d = {
        .source = strdup("-"), .kind = VMSH_DISK_VOLUME, .storage = VMSH_DISK_NETWORK};
    bool rbd = d.source && hv_pool_set_network(p, &d) == 0;
    vmsh_domxml_disk_clear(&d);
    return rbd;
}

static int host_pool(void *opaque, const char *pool, vmsh_error **err)
{
    vmsh_hv *hv = opaque;
    virStoragePoolPtr p = virStoragePoolLookupByName(vmsh_hv_conn(hv), pool);
    if (!p)
        return -ENOENT;
    int active = virStoragePoolIsActive(p);
    bool rbd = active == 1 && pool_is_rbd(p);
    virStoragePoolFree(p);
    virResetLastError();
    (void)err;
    return active != 1 ? -ENOENT : rbd ? 1 : 0;
}

static int host_volume(void *opaque, const char *pool, const char *vol, uint64_t *size, char **path,
                       vmsh_error **err)
{
    vmsh_hv *hv = opaque;
    virStoragePoolPtr p = virStoragePoolLookupByName(vmsh_hv_conn(hv), pool);
    if (!p)
        return -ENOENT;
    virStoragePoolRefresh(p, 0);
    virStorageVolPtr v = virStorageVolLookupByName(p, vol);
    if (!v) {
        virStoragePoolFree(p);
        return -ENOENT;
    }
    virStorageVolInfo info;
    int r = 0;
    _cleanup_free_ char *got = NULL;
    if (virStorageVolGetInfo(v, &info) < 0 || !(got = virStorageVolGetPath(v)))
        r = vmsh_error_set(err, -EIO, "cannot read the volume %s of pool %s: %s", vol, pool,
                           virGetLastErrorMessage());
    else if (info.type == VIR_STORAGE_VOL_NETWORK)
        r = network_volume_target(p, pool, vol, got, path, err);
    else
        *path = got, got = NULL;
    if (r == 0)
        *size = info.capacity;
    virStorageVolFree(v);
    virStoragePoolFree(p);
    return r;
}

/* Does the disk `dk` name the storage (see vmsh_stg_probes.user)? */
static bool disk_names(const vmsh_domxml_disk *dk, vmsh_stg_kind kind, const char *name,
                       const char *pool, const char *path)
{
    if (kind == VMSH_STG_RBD) {
        char *rbd = NULL;
        bool same = (dk->kind == VMSH_DISK_NETWORK ||
                     (dk->kind == VMSH_DISK_VOLUME && dk->storage == VMSH_DISK_NETWORK)) &&
                    dk->protocol && strcmp(dk->protocol, "rbd") == 0 &&
                    ((dk->net_name && strcmp(dk->net_name, name) == 0) ||
                     (vmsh_stg_rbd_name(dk->source, &rbd) == 0 && strcmp(rbd, name) == 0));
        free(rbd);
        return same;
    }
    if (dk->kind == VMSH_DISK_VOLUME && dk->pool && dk->volume && pool)
        return strcmp(dk->pool, pool) == 0 && strcmp(dk->volume, name) == 0;
    /* the volume's file, named as an image file or as its path */
    return path && dk->source && strcmp(dk->source, path) == 0;
}

static int host_user(void *opaque, vmsh_stg_kind kind, const char *name, const char *pool,
                     const char *path, const char *vm, char **used_by, vmsh_error **err)
{
    vmsh_hv *hv = opaque;
    *used_by = NULL;
    if (!hv)
        return 0;
    vmsh_vm **all = NULL;
    size_t n = 0;
    int r = vmsh_hv_list_vms(hv, &all, &n, err);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n && !*used_by; i++) {
        if (vm && strcmp(all[i]->name, vm) == 0)
            continue;
        for (size_t k = 0; all[i]->xml && k < all[i]->xml->n_disks && !*used_by; k++)
            if (disk_names(&all[i]->xml->disks[k], kind, name, pool, path) &&
                !(*used_by = strdup(all[i]->name)))
                r = oom(err);
    }
    vmsh_vm_list_free(all, n);
    return r;
}

void vmsh_stg_host_probes(vmsh_hv *hv, vmsh_stg_probes *out)
{
    *out = (vmsh_stg_probes){.opaque = hv,
                             .block = host_block,
                             .lv = host_lv,
                             .rbd_pool = host_rbd_pool,
                             .rbd_image = host_rbd_image,
                             .pool = host_pool,
                             .volume = host_volume,
                             .user = host_user};
}

/* ------------------------------------------------- creation and its undo */

const char *vmsh_stg_kind_name(vmsh_stg_kind k)
{
    static const char *const names[] = {"file", "block", "rbd", "volume"};
    return (unsigned)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

int vmsh_stg_rbd_name(const char *url, char **out)
{
    *out = NULL;
    if (!url)
        return -EINVAL;
    /* "POOL/IMAGE" as it is (rbd_split checks it) */
    const char *s = strncmp(url, "rbd://", 6) == 0 ? url + 6 : NULL;
    const char *name = s ? strchr(s, '/') : url - 1;
    if (!name || !name[1])
        return -EINVAL;
    if (!(*out = strdup(name + 1)))
        return -ENOMEM;
    return 0;
}

int vmsh_stg_rbd_write_target(const vmsh_domxml_disk *d, char **out, vmsh_error **err)
{
    *out = NULL;
    const char *name = d->net_name;
    char *pool = NULL, *image = NULL;
    vmsh_stg_disk sd = {.target = d->target ? d->target : "?", .source = name};
    if (!d->protocol || strcmp(d->protocol, "rbd") != 0 || !name)
        return vmsh_error_set(err, -EINVAL, "disk %s is not an RBD disk", sd.target);
    int r = rbd_split(&sd, &pool, &image, err);
    if (r < 0)
        return r;
    free(pool), free(image);
    char *s = fmt("rbd:%s", name), *t = NULL;
    for (size_t i = 0; s && i < d->n_hosts; i++) {
        const vmsh_domxml_host *h = &d->hosts[i];
        if ((h->transport && strcmp(h->transport, "tcp") != 0) || !rbd_plain(h->name) ||
            (h->port && !rbd_plain(h->port))) {
            free(s);
            return vmsh_error_set(err, -EINVAL,
                                  "disk %s: the monitor '%s' of its definition is no plain "
                                  "host name or address: the restore does not write through it",
                                  sd.target, h->name ? h->name : "(unix socket)");
        }
        /* mon_host=H1\:P1;H2\:P2 ('\' keeps the port's ':' in the value) */
        t = fmt("%s%s%s%s%s", s, i ? ";" : ":mon_host=", h->name, h->port ? "\\:" : "",
                h->port ? h->port : "");
        free(s), s = t;
    }
    if (s && d->auth_user) {
        if (!rbd_plain(d->auth_user)) {
            free(s);
            return vmsh_error_set(err, -EINVAL, "disk %s: the RBD user '%s' is not plain",
                                  sd.target, d->auth_user);
        }
        t = fmt("%s:id=%s", s, d->auth_user);
        free(s), s = t;
    }
    if (s && d->net_config) {
        if (!rbd_plain(d->net_config)) {
            free(s);
            return vmsh_error_set(err, -EINVAL, "disk %s: the Ceph configuration '%s' is not plain",
                                  sd.target, d->net_config);
        }
        t = fmt("%s:conf=%s", s, d->net_config);
        free(s), s = t;
    }
    if (!s)
        return oom(err);
    *out = s;
    return 0;
}

/* Runs argv (with the Ceph client timeouts): 0 when it exited with status
 * 0, else an error saying how it ended and what it printed last. */
static int run_cmd(char *const argv[], const char *what, vmsh_error **err)
{
    vmsh_proc_result res;
    int r = vmsh_proc_run(argv, ceph_env, 120000, &res, err);
    if (r < 0)
        return vmsh_error_prefix(err, "%s", what);
    if (res.exit_code != 0) {
        char buf[96];
        return vmsh_error_set(err, -EIO, "%s: %s %s", what, argv[0],
                              vmsh_proc_describe(&res, buf, sizeof(buf)));
    }
    return 0;
}

static int create_volume(vmsh_hv *hv, const vmsh_stg_plan *plan, char **path, vmsh_error **err)
{
    virStoragePoolPtr p = virStoragePoolLookupByName(vmsh_hv_conn(hv), plan->pool);
    if (!p)
        return vmsh_error_set(err, -ENOENT, "storage pool %s: %s", plan->pool,
                              virGetLastErrorMessage());
    virStorageVolPtr v = virStorageVolCreateXML(p, plan->create_xml, 0);
    int r = 0;
    if (!v)
        r = vmsh_error_set(err, -EIO, "cannot create the volume %s in storage pool %s: %s",
                           plan->target, plan->pool, virGetLastErrorMessage());
    else if (!(*path = virStorageVolGetPath(v))) {
        r = vmsh_error_set(err, -EIO, "the new volume %s of pool %s has no path: %s", plan->target,
                           plan->pool, virGetLastErrorMessage());
        virStorageVolDelete(v, 0);
    } else if (pool_is_rbd(p)) {
        /* issue 23: written through the pool's monitors and user */
        char *path_only = *path;
        r = network_volume_target(p, plan->pool, plan->target, path_only, path, err);
        free(path_only);
        if (r < 0)
            virStorageVolDelete(v, 0);
    }
    if (v)
        virStorageVolFree(v);
    virStoragePoolFree(p);
    return r;
}

int vmsh_stg_create(vmsh_hv *hv, const vmsh_stg_plan *plan, char **path, vmsh_error **err)
{
    *path = NULL;
    if (plan->action != VMSH_STG_CREATE)
        return vmsh_error_set(err, -EINVAL, "%s: nothing to create", plan->target);
    if (plan->kind == VMSH_STG_VOLUME)
        return create_volume(hv, plan, path, err);
    if (!plan->create_argv || !plan->qemu_target)
        return vmsh_error_set(err, -EINVAL, "%s: no command creates it", plan->target);
    char what[600];
    snprintf(what, sizeof(what), "creating %s %s", vmsh_stg_kind_name(plan->kind), plan->target);
    int r = run_cmd(plan->create_argv, what, err);
    if (r < 0) {
        /* a command that timed out may have created it all the same */
        vmsh_stg_remove(hv, plan->kind, plan->target, plan->pool, NULL);
        return r;
    }
    if (!(*path = strdup(plan->qemu_target))) {
        vmsh_stg_remove(hv, plan->kind, plan->target, plan->pool, NULL);
        return oom(err);
    }
    return 0;
}

int vmsh_stg_remove(vmsh_hv *hv, vmsh_stg_kind kind, const char *target, const char *pool,
                    vmsh_error **err)
{
    if (!target)
        return 0;
    if (kind == VMSH_STG_VOLUME) {
        virStoragePoolPtr p = pool ? virStoragePoolLookupByName(vmsh_hv_conn(hv), pool) : NULL;
        virStorageVolPtr v = p ? virStorageVolLookupByName(p, target) : NULL;
        int r = 0;
        if (v && virStorageVolDelete(v, 0) < 0)
            r = vmsh_error_set(err, -EIO, "cannot delete the volume %s of pool %s: %s", target,
                               pool, virGetLastErrorMessage());
        if (v)
            virStorageVolFree(v);
        if (p)
            virStoragePoolFree(p);
        return r;
    }
    char what[600];
    snprintf(what, sizeof(what), "removing %s %s", vmsh_stg_kind_name(kind), target);
    if (kind == VMSH_STG_RBD) {
        char *argv[] = {(char *)"rbd", (char *)"rm", (char *)"--no-progress", (char *)target, NULL};
        char *info[] = {(char *)"rbd", (char *)"info", (char *)target, NULL};
        vmsh_proc_result res;
        /* gone already (or never made): nothing to remove */
        if (vmsh_proc_run(info, ceph_env, 60000, &res, NULL) == 0 && res.exit_code == 2)
            return 0;
        return run_cmd(argv, what, err);
    }
    if (kind == VMSH_STG_BLOCK) {
        struct stat st;
        if (stat(target, &st) < 0)
            return 0;
        char *argv[] = {(char *)"lvremove", (char *)"--yes", (char *)target, NULL};
        return run_cmd(argv, what, err);
    }
    return 0;
}
