/* The restore plan of a disk on storage of its kind (issue 25 point 4,
 * include/vmshadow/hv/storage.h), on synthetic hosts (LVM cannot run on the
 * lab's kernel): in place, an existing LV / block device / RBD image / pool
 * volume is written back when large enough; a missing LV, RBD image or
 * volume is created where its VG / Ceph pool / storage pool exists (the
 * exact lvcreate / rbd create command, the volume XML); --as never names the
 * original's storage (new names from NAME; a plain block device asks for
 * --to); --to turns any disk into an image file; refusals before any change:
 * too small, used by another VM, Ceph pool down, nowhere to create, names
 * from a hostile backup. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/storage.h>

#define GiB (1ull << 30)

/* The synthetic host. */
typedef struct host {
    const char *dev; /* the one block device that exists */
    uint64_t dev_size;
    const char *dev_user; /* the VM using it, or NULL */
    const char *vg;       /* the one VG that exists */
    uint64_t vg_free;
    const char *ceph_pool; /* reachable unless ceph_down */
    bool ceph_down;
    const char *rbd_image; /* "POOL/IMAGE" that exists */
    uint64_t rbd_size;
    const char *spool; /* the active storage pool */
    bool spool_rbd;    /* of type 'rbd' (issue 23) */
    const char *vol;   /* its one volume */
    uint64_t vol_size;
    /* R12: a VM other than the restored one whose definition names the
     * RBD image / the volume (by pool and name, or by its path) */
    const char *rbd_user, *vol_user, *vol_path_user;
    int calls;
} host;

static int p_block(void *o, const char *dev, const char *vm, uint64_t *size, char **used,
                   vmsh_error **err)
{
    host *h = o;
    h->calls++;
    *used = NULL;
    if (!h->dev || strcmp(dev, h->dev) != 0)
        return -ENOENT;
    *size = h->dev_size;
    if (h->dev_user && strcmp(h->dev_user, vm) != 0)
        *used = strdup(h->dev_user);
    return 0;
}

static int p_lv(void *o, const char *dev, char **vg, char **lv, uint64_t *vg_free, vmsh_error **err)
{
    host *h = o;
    /* /dev/VG/LV only, for the test */
    char v[64], l[64];
    if (!h->vg || sscanf(dev, "/dev/%63[^/]/%63s", v, l) != 2 || strcmp(v, h->vg) != 0)
        return -ENOENT;
    *vg = strdup(v);
    *lv = strdup(l);
    *vg_free = h->vg_free;
    return 0;
}

static int p_rbd_pool(void *o, const char *pool, vmsh_error **err)
{
    host *h = o;
    if (!h->ceph_pool || strcmp(pool, h->ceph_pool) != 0)
        return -ENOENT;
    return h->ceph_down ? -EHOSTDOWN : 0;
}

static int p_rbd_image(void *o, const char *pool, const char *image, uint64_t *size,
                       vmsh_error **err)
{
    host *h = o;
    char spec[256];
    snprintf(spec, sizeof(spec), "%s/%s", pool, image);
    if (!h->rbd_image || strcmp(spec, h->rbd_image) != 0)
        return -ENOENT;
    *size = h->rbd_size;
    return 0;
}

static int p_pool(void *o, const char *pool, vmsh_error **err)
{
    host *h = o;
    return !h->spool || strcmp(pool, h->spool) != 0 ? -ENOENT : h->spool_rbd ? 1 : 0;
}

static int p_volume(void *o, const char *pool, const char *vol, uint64_t *size, char **path,
                    vmsh_error **err)
{
    host *h = o;
    if (!h->vol || strcmp(vol, h->vol) != 0)
        return -ENOENT;
    *size = h->vol_size;
    char p[256];
    /* an RBD pool's volume: what host_volume makes of the pool's source */
    if (h->spool_rbd)
        snprintf(p, sizeof(p), "rbd:cephpool/%s:mon_host=10.0.0.1\\:6789:id=admin", vol);
    else
        snprintf(p, sizeof(p), "/var/lib/libvirt/images/%s", vol);
    *path = strdup(p);
    return 0;
}

static int p_user(void *o, vmsh_stg_kind kind, const char *name, const char *pool, const char *path,
                  const char *vm, char **used_by, vmsh_error **err)
{
    host *h = o;
    *used_by = NULL;
    const char *u = NULL;
    if (kind == VMSH_STG_RBD)
        u = h->rbd_user;
    else if (kind == VMSH_STG_VOLUME && pool && strcmp(pool, "images") == 0 &&
             strcmp(name, "web.qcow2") == 0)
        u = h->vol_user;
    if (!u && kind == VMSH_STG_VOLUME && path && h->vol_path_user)
        u = h->vol_path_user;
    if (u && strcmp(u, vm) != 0)
        *used_by = strdup(u);
    return 0;
}

static vmsh_stg_probes probes(host *h)
{
    return (vmsh_stg_probes){.opaque = h,
                             .block = p_block,
                             .lv = p_lv,
                             .rbd_pool = p_rbd_pool,
                             .rbd_image = p_rbd_image,
                             .pool = p_pool,
                             .volume = p_volume,
                             .user = p_user};
}

static int plan(host *h, vmsh_stg_disk d, vmsh_stg_options o, vmsh_stg_plan *out, char **msg)
{
    vmsh_stg_probes p = probes(h);
    vmsh_error *err = NULL;
    if (!o.vm)
        o.vm = "web";
    int r = vmsh_stg_plan_disk(&d, &o, &p, out, &err);
    if (msg)
        *msg = err ? strdup(err->message) : NULL;
    if (r < 0)
        assert_non_null(err);
    vmsh_error_free(err);
    return r;
}

static char *joined(char **argv)
{
    static char b[512];
    b[0] = 0;
    for (size_t i = 0; argv && argv[i]; i++)
        snprintf(b + strlen(b), sizeof(b) - strlen(b), "%s%s", i ? " " : "", argv[i]);
    return b;
}

static const vmsh_stg_disk LV_DISK = {.target = "vdb",
                                      .kind = VMSH_STG_BLOCK,
                                      .source = "/dev/vg0/web-data",
                                      .format = "raw",
                                      .size = 2 * GiB};

static void block_in_place(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    /* exists, large enough, used by no other VM: written back */
    host h = {.dev = "/dev/vg0/web-data", .dev_size = 4 * GiB, .dev_user = "web", .vg = "vg0"};
    assert_int_equal(plan(&h, LV_DISK, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_WRITE);
    assert_string_equal(vmsh_stg_action_name(p.action), "written");
    assert_int_equal(p.kind, VMSH_STG_BLOCK);
    assert_string_equal(p.qemu_target, "/dev/vg0/web-data");
    assert_null(p.create_argv);
    vmsh_stg_plan_clear(&p);
    /* too small */
    h.dev_size = GiB;
    assert_int_equal(plan(&h, LV_DISK, (vmsh_stg_options){0}, &p, &msg), -ENOSPC);
    assert_non_null(strstr(msg, "too small"));
    assert_non_null(strstr(msg, "vdb"));
    free(msg);
    /* used by another VM */
    h.dev_size = 4 * GiB;
    h.dev_user = "db";
    assert_int_equal(plan(&h, LV_DISK, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "used by VM db"));
    free(msg);
    /* missing LV, its VG exists with room: created with lvcreate */
    host h2 = {.vg = "vg0", .vg_free = 10 * GiB};
    assert_int_equal(plan(&h2, LV_DISK, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_string_equal(joined(p.create_argv),
                        "lvcreate --yes --wipesignatures y --name web-data --size 2147483648b vg0");
    assert_string_equal(p.target, "/dev/vg0/web-data");
    vmsh_stg_plan_clear(&p);
    /* the VG lacks room */
    h2.vg_free = GiB;
    assert_int_equal(plan(&h2, LV_DISK, (vmsh_stg_options){0}, &p, &msg), -ENOSPC);
    assert_non_null(strstr(msg, "volume group vg0"));
    free(msg);
    /* no VG: nowhere to create it, --to is the way */
    host h3 = {0};
    assert_int_equal(plan(&h3, LV_DISK, (vmsh_stg_options){0}, &p, &msg), -ENOENT);
    assert_non_null(strstr(msg, "--to DIR"));
    free(msg);
    /* a partition that is gone cannot be created either */
    vmsh_stg_disk part = LV_DISK;
    part.source = "/dev/sdb1";
    assert_int_equal(plan(&h2, part, (vmsh_stg_options){0}, &p, &msg), -ENOENT);
    free(msg);
}

static void block_as_and_to(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    host h = {.dev = "/dev/vg0/web-data", .dev_size = 4 * GiB, .vg = "vg0", .vg_free = 8 * GiB};
    /* --as: a new LV named from NAME in the same VG, never the original */
    vmsh_stg_options as = {.vm = "web2", .as_copy = true};
    assert_int_equal(plan(&h, LV_DISK, as, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_string_equal(p.target, "/dev/vg0/web2-vdb");
    assert_string_equal(joined(p.create_argv),
                        "lvcreate --yes --wipesignatures y --name web2-vdb --size 2147483648b vg0");
    vmsh_stg_plan_clear(&p);
    /* ... and never over an LV of that name */
    h.dev = "/dev/vg0/web2-vdb";
    assert_int_equal(plan(&h, LV_DISK, as, &p, &msg), -EEXIST);
    free(msg);
    /* --as of a plain block device: cannot be created, asks for --to */
    vmsh_stg_disk part = LV_DISK;
    part.source = "/dev/loop7";
    h.dev = "/dev/loop7";
    assert_int_equal(plan(&h, part, as, &p, &msg), -ENOTSUP);
    assert_non_null(strstr(msg, "--to DIR"));
    assert_non_null(strstr(msg, "cannot be created"));
    free(msg);
    /* --to: an image file, whatever the storage */
    vmsh_stg_options to = {.vm = "web", .to_dir = "/srv/restore"};
    assert_int_equal(plan(&h, part, to, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CONVERT);
    assert_string_equal(vmsh_stg_action_name(p.action), "converted");
    assert_int_equal(p.kind, VMSH_STG_FILE);
    assert_string_equal(p.target, "/srv/restore/web/vdb.img");
    vmsh_stg_plan_clear(&p);
    vmsh_stg_disk q = part;
    q.format = "qcow2";
    assert_int_equal(plan(&h, q, to, &p, NULL), 0);
    assert_string_equal(p.target, "/srv/restore/web/vdb.qcow2");
    vmsh_stg_plan_clear(&p);
}

static const vmsh_stg_disk RBD_DISK = {.target = "vdc",
                                       .kind = VMSH_STG_RBD,
                                       .source = "rbdpool/web-os",
                                       .format = "raw",
                                       .size = 3 * GiB + 1};

static void rbd(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    host h = {.ceph_pool = "rbdpool", .rbd_image = "rbdpool/web-os", .rbd_size = 4 * GiB};
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_WRITE);
    assert_string_equal(p.qemu_target, "rbd:rbdpool/web-os");
    vmsh_stg_plan_clear(&p);
    h.rbd_size = GiB;
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, &msg), -ENOSPC);
    free(msg);
    /* missing image in a reachable pool: rbd create, whole MiB rounded up */
    h.rbd_image = NULL;
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_string_equal(joined(p.create_argv), "rbd create --size 3073M rbdpool/web-os");
    vmsh_stg_plan_clear(&p);
    /* --as: a new image from NAME */
    vmsh_stg_options as = {.vm = "web2", .as_copy = true};
    h.rbd_image = "rbdpool/web-os";
    assert_int_equal(plan(&h, RBD_DISK, as, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_string_equal(p.target, "rbdpool/web2-vdc");
    assert_string_equal(p.qemu_target, "rbd:rbdpool/web2-vdc");
    vmsh_stg_plan_clear(&p);
    /* the pool down: refused before anything changes */
    h.ceph_down = true;
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, &msg), -EHOSTDOWN);
    assert_non_null(strstr(msg, "cannot be reached"));
    free(msg);
    /* no such pool */
    host none = {0};
    assert_int_equal(plan(&none, RBD_DISK, (vmsh_stg_options){0}, &p, &msg), -ENOENT);
    free(msg);
    /* hostile names: a snapshot, a path, no pool */
    const char *bad[] = {"rbdpool/img@snap",
                         "../x/y",
                         "rbdpool",
                         "a/b/c",
                         "",
                         "rbdpool/i:mon_host=1.2.3.4",
                         "rbdpool/i,file.driver=nbd",
                         "--conf=/x/i",
                         "p/-o"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        vmsh_stg_disk d = RBD_DISK;
        d.source = bad[i];
        assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EINVAL);
        free(msg);
    }
}

/* The RBD image of a disk as the domain XML parser shows its source (the
 * backup's disk record): monitors before the name, or none. */
static void rbd_names(void **state)
{
    (void)state;
    struct {
        const char *url, *want;
    } ok[] = {{"rbd://10.0.0.1:6789/rbdpool/web-os", "rbdpool/web-os"},
              {"rbd:///rbdpool/web-os", "rbdpool/web-os"},
              {"rbdpool/web-os", "rbdpool/web-os"}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *n = NULL;
        assert_int_equal(vmsh_stg_rbd_name(ok[i].url, &n), 0);
        assert_string_equal(n, ok[i].want);
        free(n);
    }
    char *n = NULL;
    assert_int_equal(vmsh_stg_rbd_name("rbd://host-only", &n), -EINVAL);
    assert_int_equal(vmsh_stg_rbd_name("rbd://h/", &n), -EINVAL);
    assert_int_equal(vmsh_stg_rbd_name(NULL, &n), -EINVAL);
    assert_null(n);
    /* what comes out is planned only as plain POOL/IMAGE names */
    host h = {.ceph_pool = "rbdpool"};
    vmsh_stg_disk d = RBD_DISK;
    vmsh_stg_plan p;
    char *msg = NULL;
    assert_int_equal(vmsh_stg_rbd_name("rbd://h:1/rbdpool/../../etc", &n), 0);
    d.source = n;
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EINVAL);
    free(msg);
    free(n);
}

static void volumes(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    vmsh_stg_disk d = {.target = "vdd",
                       .kind = VMSH_STG_VOLUME,
                       .source = "web.qcow2",
                       .pool = "images",
                       .format = "qcow2",
                       .size = GiB};
    host h = {.spool = "images", .vol = "web.qcow2", .vol_size = GiB};
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_WRITE);
    assert_string_equal(p.qemu_target, "/var/lib/libvirt/images/web.qcow2");
    vmsh_stg_plan_clear(&p);
    h.vol = NULL;
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_string_equal(p.create_xml,
                        "<volume><name>web.qcow2</name><capacity unit='bytes'>1073741824"
                        "</capacity><target><format type='qcow2'/></target></volume>");
    vmsh_stg_plan_clear(&p);
    vmsh_stg_options as = {.vm = "web2", .as_copy = true};
    assert_int_equal(plan(&h, d, as, &p, NULL), 0);
    assert_string_equal(p.target, "web2-web.qcow2");
    assert_string_equal(p.pool, "images");
    vmsh_stg_plan_clear(&p);
    host gone = {0};
    assert_int_equal(plan(&gone, d, (vmsh_stg_options){0}, &p, &msg), -ENOENT);
    assert_non_null(strstr(msg, "storage pool images"));
    free(msg);
    d.pool = "../etc";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EINVAL);
    free(msg);
}

/* Issue 23: a volume of a storage pool of type 'rbd' is written through
 * what the host's pool says (monitors, user: the probe's path), raw only;
 * R12 also for the RBD image behind it, which another VM may use as a
 * network disk; a missing one is created in the pool. */
static void rbd_pool_volumes(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    vmsh_stg_disk d = {.target = "vdb",
                       .kind = VMSH_STG_VOLUME,
                       .source = "data",
                       .pool = "ceph",
                       .format = "raw",
                       .size = GiB};
    host h = {.spool = "ceph", .spool_rbd = true, .vol = "data", .vol_size = GiB};
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_WRITE);
    assert_int_equal(p.kind, VMSH_STG_VOLUME);
    assert_string_equal(p.qemu_target, "rbd:cephpool/data:mon_host=10.0.0.1\\:6789:id=admin");
    assert_string_equal(p.target, "data");
    assert_string_equal(p.pool, "ceph");
    assert_true(p.rbd_volume);
    vmsh_stg_plan_clear(&p);
    /* R12: the image is another VM's RBD network disk */
    h.rbd_user = "other";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "RBD image cephpool/data is used by VM other"));
    free(msg);
    h.rbd_user = NULL;
    /* missing: created in the pool (libvirt's rbd backend, raw) */
    h.vol = NULL;
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    assert_non_null(strstr(p.create_xml, "<name>data</name>"));
    assert_true(p.rbd_volume);
    vmsh_stg_plan_clear(&p);
    /* a qcow2 is not written into Ceph, whether the volume exists or not */
    d.format = "qcow2";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -ENOTSUP);
    assert_non_null(strstr(msg, "qcow2 image in a volume of the RBD pool ceph"));
    assert_non_null(strstr(msg, "--to DIR"));
    free(msg);
    h.vol = "data";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -ENOTSUP);
    free(msg);
    /* under --to it becomes an image file like any disk */
    assert_int_equal(plan(&h, d, (vmsh_stg_options){.to_dir = "/srv/r"}, &p, NULL), 0);
    assert_int_equal(p.kind, VMSH_STG_FILE);
    vmsh_stg_plan_clear(&p);
}

static void hostile_names_and_formats(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    host h = {.vg = "vg0", .vg_free = 10 * GiB};
    vmsh_stg_disk d = LV_DISK;
    d.target = "../vda";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EINVAL);
    free(msg);
    d = LV_DISK;
    d.format = "vvfat";
    assert_int_equal(plan(&h, d, (vmsh_stg_options){0}, &p, &msg), -EINVAL);
    free(msg);
    assert_int_equal(plan(&h, LV_DISK, (vmsh_stg_options){.vm = "a/b", .as_copy = true}, &p, &msg),
                     -EINVAL);
    free(msg);
    /* a refusal asked nothing that changes the host: probes only */
    assert_int_equal(h.calls, 0);
}

/* The VG and LV of a device path, as LVM names them (the lvcreate plan's
 * input), and the block probe on what is no block device. */
static void lv_paths_and_block_probe(void **state)
{
    (void)state;
    struct {
        const char *dev, *vg, *lv;
    } ok[] = {
        {"/dev/vg0/web-data", "vg0", "web-data"},
        {"/dev/mapper/vg0-web--data", "vg0", "web-data"},
        {"/dev/mapper/my--vg-root", "my-vg", "root"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *vg = NULL, *lv = NULL;
        assert_int_equal(vmsh_stg_lv_path(ok[i].dev, &vg, &lv), 0);
        assert_string_equal(vg, ok[i].vg);
        assert_string_equal(lv, ok[i].lv);
        free(vg), free(lv);
    }
    const char *no[] = {"/dev/sdb1",   "/dev/disk/by-id/x",  "/dev/mapper/mpatha", "/dev/vg0/a/b",
                        "/srv/vg0/lv", "/dev/../etc/passwd", "/dev/vg0/..",        "/dev/-x/y"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        char *vg = NULL, *lv = NULL;
        assert_int_equal(vmsh_stg_lv_path(no[i], &vg, &lv), -ENOENT);
        assert_null(vg);
        assert_null(lv);
    }
    vmsh_stg_probes p;
    vmsh_stg_host_probes(NULL, &p);
    vmsh_error *err = NULL;
    uint64_t size = 0;
    char *used = NULL;
    assert_int_equal(p.block(p.opaque, "/nonexistent/dev", "vm", &size, &used, &err), -ENOENT);
    assert_int_equal(p.block(p.opaque, "/etc/hostname", "vm", &size, &used, &err), -ENOTBLK);
    assert_non_null(strstr(err->message, "not a block device"));
    vmsh_error_free(err);
}

/* R12 (issue 25 Done-when: "restore onto ... one that another VM uses: a
 * clear error before anything is changed"): an RBD image or a pool volume
 * that a VM other than the one restored names is neither written nor
 * created; the VM restored in place may use it. */
static void used_by_another_vm(void **state)
{
    (void)state;
    vmsh_stg_plan p;
    char *msg = NULL;
    host h = {.ceph_pool = "rbdpool",
              .rbd_image = "rbdpool/web-os",
              .rbd_size = 4 * GiB,
              .rbd_user = "db"};
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "RBD image rbdpool/web-os is used by VM db: not written"));
    free(msg);
    /* the VM replaced is the one using it */
    h.rbd_user = "web";
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_WRITE);
    vmsh_stg_plan_clear(&p);
    /* missing, but another VM's definition names it: not created under it */
    h.rbd_image = NULL;
    h.rbd_user = "db";
    assert_int_equal(plan(&h, RBD_DISK, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "named by the definition of VM db: not created"));
    free(msg);
    /* volumes: by pool and name, or by the volume's file */
    vmsh_stg_disk d = {.target = "vdd",
                       .kind = VMSH_STG_VOLUME,
                       .source = "web.qcow2",
                       .pool = "images",
                       .format = "qcow2",
                       .size = GiB};
    host v = {.spool = "images", .vol = "web.qcow2", .vol_size = GiB, .vol_user = "db"};
    assert_int_equal(plan(&v, d, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "volume web.qcow2 of storage pool images is used by VM db"));
    free(msg);
    v.vol_user = NULL;
    v.vol_path_user = "files";
    assert_int_equal(plan(&v, d, (vmsh_stg_options){0}, &p, &msg), -EBUSY);
    assert_non_null(strstr(msg, "used by VM files"));
    free(msg);
    v.vol_path_user = NULL;
    assert_int_equal(plan(&v, d, (vmsh_stg_options){0}, &p, NULL), 0);
    vmsh_stg_plan_clear(&p);
    /* --as makes new names: nobody's storage */
    host a = {.spool = "images", .vol_user = "db"};
    assert_int_equal(plan(&a, d, (vmsh_stg_options){.vm = "web2", .as_copy = true}, &p, NULL), 0);
    assert_int_equal(p.action, VMSH_STG_CREATE);
    vmsh_stg_plan_clear(&p);
}

/* R12: the write onto an RBD image in place goes through the monitors,
 * user and configuration of the replaced VM's definition, as one plain
 * legacy "rbd:" filename; anything that could break out of it refused. */
static void rbd_write_target(void **state)
{
    (void)state;
    vmsh_domxml_host hosts[] = {{.name = "10.0.0.1", .port = "6789"}, {.name = "mon2"}};
    vmsh_domxml_disk d = {.target = "vde",
                          .protocol = "rbd",
                          .net_name = "rbdpool/web-os",
                          .hosts = hosts,
                          .n_hosts = 2,
                          .auth_user = "libvirt",
                          .net_config = "/etc/ceph/prod.conf"};
    char *t = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_stg_rbd_write_target(&d, &t, &err), 0);
    assert_string_equal(t, "rbd:rbdpool/web-os:mon_host=10.0.0.1\\:6789;mon2:id=libvirt"
                           ":conf=/etc/ceph/prod.conf");
    free(t);
    d.n_hosts = 0;
    d.auth_user = d.net_config = NULL;
    assert_int_equal(vmsh_stg_rbd_write_target(&d, &t, &err), 0);
    assert_string_equal(t, "rbd:rbdpool/web-os");
    free(t);
    struct {
        const char *host, *port, *user, *conf, *name;
    } bad[] = {
        {"10.0.0.1:id=evil", NULL, NULL, NULL, "p/i"},
        {"h", "1,file=/etc/shadow", NULL, NULL, "p/i"},
        {"h", NULL, "adm:conf=/tmp/x", NULL, "p/i"},
        {"h", NULL, NULL, "/x:mon_host=1.2.3.4", "p/i"},
        {"h", NULL, NULL, NULL, "p/i:mon_host=1.2.3.4"},
        {"h", NULL, NULL, NULL, "p/i@snap"},
        {"fe80::1", NULL, NULL, NULL, "p/i"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        vmsh_domxml_host h1 = {.name = (char *)bad[i].host, .port = (char *)bad[i].port};
        vmsh_domxml_disk b = {.target = "vde",
                              .protocol = "rbd",
                              .net_name = (char *)bad[i].name,
                              .hosts = &h1,
                              .n_hosts = 1,
                              .auth_user = (char *)bad[i].user,
                              .net_config = (char *)bad[i].conf};
        assert_int_equal(vmsh_stg_rbd_write_target(&b, &t, &err), -EINVAL);
        assert_null(t);
        vmsh_error_free(err);
        err = NULL;
    }
    /* a unix socket is no monitor */
    vmsh_domxml_host u = {.transport = "unix", .socket = "/run/x"};
    d.hosts = &u;
    d.n_hosts = 1;
    assert_int_equal(vmsh_stg_rbd_write_target(&d, &t, &err), -EINVAL);
    vmsh_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(block_in_place),
        cmocka_unit_test(block_as_and_to),
        cmocka_unit_test(rbd),
        cmocka_unit_test(rbd_names),
        cmocka_unit_test(volumes),
        cmocka_unit_test(rbd_pool_volumes),
        cmocka_unit_test(hostile_names_and_formats),
        cmocka_unit_test(lv_paths_and_block_probe),
        cmocka_unit_test(used_by_another_vm),
        cmocka_unit_test(rbd_write_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
