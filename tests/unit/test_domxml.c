/* Classifies the disks of real-looking libvirt domain XML into the kinds of
 * CLI.md `vms` (file, block, network, passthrough) and checks what the VM
 * writer excludes (SPEC R6) and which R2 condition fails. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/method.h>

static vmsh_domxml *load_golden(const char *name)
{
    const char *dir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/domxml/%s", dir, name);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_fs_read_all(path, 1 << 20, &text, &len, NULL), 0);
    vmsh_domxml *x = NULL;
    vmsh_error *err = NULL;
    int r = vmsh_domxml_parse(&x, text, len, &err);
    if (r < 0)
        fail_msg("%s", err->message);
    free(text);
    return x;
}

static const vmsh_domxml_disk *disk(const vmsh_domxml *x, const char *target)
{
    for (size_t i = 0; i < x->n_disks; i++)
        if (x->disks[i].target && strcmp(x->disks[i].target, target) == 0)
            return &x->disks[i];
    fail_msg("no disk %s", target);
    return NULL;
}

static void classifies_every_kind(void **state)
{
    vmsh_domxml *x = load_golden("all-disk-kinds.xml");
    assert_string_equal(x->name, "db01");
    assert_string_equal(x->uuid, "8f2f8c38-6f5e-4a5c-9d3e-0b2a8a4c1e11");
    assert_int_equal(x->n_disks, 14);
    static const struct {
        const char *target, *kind, *format, *source;
    } want[] = {
        {"vda", "file", "qcow2", "/var/lib/libvirt/images/db01.qcow2"},
        {"vdb", "file", "raw", "/var/lib/libvirt/images/db01-data.raw"},
        {"vdc", "block", "raw", "/dev/vg0/db01-logs"},
        {"vdd", "network", "raw", "iscsi://10.0.0.5:3260/iqn.2013-07.com.example:storage/1"},
        {"sda", "passthrough", "raw", "iscsi://10.0.0.5:3260/iqn.2013-07.com.example:storage/2"},
        {"vde", "network", "raw", "nbd://nbd.example:10809/export1"},
        {"vdf", "network", "raw", "rbd://mon1.example:6789/pool/db01-rbd"},
        {"sdb", "passthrough", "raw", "/dev/sdx"},
        {"sdc", "file", "raw", "/srv/iso/debian-12.iso"},
        {"sdd", "empty", "raw", NULL},
        {"vdg", "passthrough", "raw", "nvme pci 0x0000:0x01:0x00.0x0"},
        {"vdh", "volume", "raw", "volume iscsi-pool/unit:0:0:1"},
        {"hostdev0", "passthrough", NULL, "scsi scsi_host0:0:0:1"},
        {"hostdev1", "passthrough", NULL, "pci 0x0000:0x03:0x00.0x0"},
    };
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(want); i++) {
        const vmsh_domxml_disk *d = disk(x, want[i].target);
        assert_string_equal(vmsh_disk_kind_name(d->kind), want[i].kind);
        if (want[i].format)
            assert_string_equal(d->format, want[i].format);
        else
            assert_null(d->format);
        if (want[i].source)
            assert_string_equal(d->source, want[i].source);
        else
            assert_null(d->source);
    }
    assert_true(disk(x, "vda")->has_backing_chain);
    assert_false(disk(x, "vdb")->has_backing_chain);
    assert_string_equal(disk(x, "sdc")->device, "cdrom");
    assert_true(disk(x, "sdc")->readonly);
    assert_string_equal(disk(x, "hostdev1")->device, "hostdev");

    /* R6 as rewritten (issue 25): every virtual disk is captured (the two
     * files, the block device, the iSCSI, NBD and RBD disks, the volume);
     * pass-through, the ISO and the empty drive are not */
    size_t captured = 0;
    for (size_t i = 0; i < x->n_disks; i++)
        captured += vmsh_method_disk_exclusion(&x->disks[i], 0) == NULL;
    assert_int_equal(captured, 7);
    assert_null(vmsh_method_disk_exclusion(disk(x, "vdc"), 0));
    assert_null(vmsh_method_disk_exclusion(disk(x, "vdf"), 0));
    assert_non_null(strstr(vmsh_method_disk_exclusion(disk(x, "sda"), 0), "R6"));
    assert_non_null(strstr(vmsh_method_disk_exclusion(disk(x, "sdb"), 0), "LUN pass-through"));
    assert_non_null(strstr(vmsh_method_disk_exclusion(disk(x, "sdc"), 0), "removable medium"));

    assert_int_equal(x->n_ifaces, 2);
    assert_string_equal(x->ifaces[0].type, "network");
    assert_string_equal(x->ifaces[0].source, "default");
    assert_string_equal(x->ifaces[1].source, "br0");
    assert_string_equal(x->ifaces[1].mac, "52:54:00:aa:bb:02");
    assert_true(x->agent_channel);
    assert_int_equal(x->agent_connected, 0);
    assert_string_equal(x->nvram, "/var/lib/libvirt/qemu/nvram/db01_VARS.fd");
    assert_string_equal(x->tpm_backend, "emulator");
    vmsh_domxml_free(x);
}

static void rejects_bad_xml(void **state)
{
    static const char *const bad[] = {
        "",
        "<domain>",
        "<network><name>x</name></network>",
        "<domain type='qemu'></domain>",
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
        "<domain><name>&e;</name></domain>",
    };
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(bad); i++) {
        vmsh_domxml *x = NULL;
        vmsh_error *err = NULL;
        int r = vmsh_domxml_parse(&x, bad[i], strlen(bad[i]), &err);
        if (r == 0) {
            /* an external entity must never be expanded into the name */
            assert_null(strstr(x->name, "root:"));
            vmsh_domxml_free(x);
            continue;
        }
        assert_int_equal(r, -EINVAL);
        assert_null(x);
        vmsh_error_free(err);
    }
}

static vmsh_vm *vm_from_golden(vmsh_vm_state st)
{
    vmsh_vm *vm = calloc(1, sizeof(*vm));
    vm->name = strdup("db01");
    vm->state = st;
    vm->xml = load_golden("all-disk-kinds.xml");
    return vm;
}

static void method_falls_back_with_reason(void **state)
{
    vmsh_vm *vm = vm_from_golden(VMSH_VM_RUNNING);
    vmsh_agent_info agent = {
        .channel = true, .reachable = true, .can_freeze = true, .fs_known = true};
    vmsh_method_choice mc;
    /* issue 25: block, network and volume disks no longer fail (e): the
     * backup job reads any disk QEMU has open */
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.method, VMSH_METHOD_GUEST);
    assert_int_equal(mc.condition, 0);
    vmsh_method_choice_clear(&mc);
    /* a captured disk in a format the provider does not read fails (e) */
    vmsh_domxml_disk *vdc = (vmsh_domxml_disk *)disk(vm->xml, "vdc");
    char *fmt = vdc->format;
    vdc->format = (char *)"vmdk";
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.method, VMSH_METHOD_SAVED_STATE);
    assert_int_equal(mc.condition, 'e');
    assert_non_null(strstr(mc.reason, "vdc"));
    vmsh_method_choice_clear(&mc);
    /* --method guest on such a VM is an error naming the condition */
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_GUEST, &mc, &err),
                     -EINVAL);
    assert_non_null(strstr(err->message, "R2 (e)"));
    vmsh_error_free(err);
    vdc->format = fmt;

    /* keep only the two file disks: now the guest method applies */
    vm->xml->n_disks = 2;
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.method, VMSH_METHOD_GUEST);
    vmsh_method_choice_clear(&mc);
    /* (d): an NFS mount inside the guest */
    char mp[] = "/srv/share", ty[] = "nfs4";
    vmsh_agent_fs fs = {.mountpoint = mp, .type = ty};
    agent.fs = &fs;
    agent.n_fs = 1;
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.condition, 'd');
    vmsh_method_choice_clear(&mc);
    agent.n_fs = 0;
    /* (a): no freeze support; (a): unreachable */
    agent.can_freeze = false;
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.condition, 'a');
    vmsh_method_choice_clear(&mc);
    assert_int_equal(vmsh_method_choose(vm, NULL, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.condition, 'a');
    vmsh_method_choice_clear(&mc);
    /* (b): paused */
    vm->state = VMSH_VM_PAUSED;
    agent.can_freeze = true;
    assert_int_equal(vmsh_method_choose(vm, &agent, NULL, 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.condition, 'b');
    vmsh_method_choice_clear(&mc);
    vm->xml->n_disks = 14;
    vmsh_vm_free(vm);
}

static bool fake_is_block(const char *path, void *ctx)
{
    (*(int *)ctx)++;
    return strncmp(path, "/dev/", 5) == 0;
}

static const char *excl_of(const vmsh_domxml *x, const char *target, unsigned flags)
{
    return vmsh_method_disk_exclusion(disk(x, target), flags);
}

/* Issue 25, SPEC R6 as rewritten: every virtual disk is captured wherever it
 * lives (LV, device node, pool volume, RBD, NBD, Gluster); pass-through
 * (device='lun', <hostdev>, vhost-user, vDPA) is excluded with a reason
 * that says what it is; removable media say "removable medium"; shared
 * disks only with --include-shared. */
static void r6_every_virtual_disk_captured(void **state)
{
    vmsh_domxml *x = load_golden("r6-disks.xml");
    static const struct {
        const char *target, *kind, *source, *excl; /* excl: NULL captured, else a fragment */
    } want[] = {
        {"vda", "block", "/dev/vg0/r6-root", NULL},
        {"vdb", "block", "/dev/vg0/r6-data", NULL},
        {"vdc", "file", "/dev/mapper/mpatha", NULL}, /* until marked, below */
        {"vdd", "volume", "volume default/r6-vol.qcow2", NULL},
        {"vde", "network", "rbd://192.168.1.10:6789/vms/r6-rbd", NULL},
        {"vdf", "network", "nbd+unix://export0?socket=/run/nbd/r6.sock", NULL},
        {"vdg", "network", "gluster://gluster1:24007/gv0/r6.qcow2", NULL},
        {"vdh", "block", "/dev/vg0/r6-shared", "shared with other VMs"},
        {"sda", "passthrough", "/dev/sdz", "SCSI LUN pass-through"},
        {"sdb", "block", "/dev/sr0", "removable medium (not VM data)"},
        {"fda", "empty", NULL, "removable medium: the drive is empty"},
        {"vdi", "passthrough", "vhost-user /run/spdk/vhost-blk.0", "vhost-user"},
        {"vdj", "passthrough", "vdpa /dev/vhost-vdpa-0", "vDPA"},
        {"vdk", "unknown", "/srv/share", "type='dir'"},
        {"sdc", "passthrough", "iscsi://10.0.0.5:3260/iqn.2013-07.com.example:storage/3",
         "SCSI LUN pass-through"},
        {"hostdev0", "passthrough", "usb 0x0781:0x5567", "<hostdev>"},
        {"hostdev1", "passthrough", "mdev hostdev", "<hostdev>"},
    };
    assert_int_equal(x->n_disks, VMSH_ARRAY_SIZE(want));
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(want); i++) {
        const vmsh_domxml_disk *d = disk(x, want[i].target);
        if (strcmp(vmsh_disk_kind_name(d->kind), want[i].kind) != 0)
            fail_msg("%s: kind %s, want %s", want[i].target, vmsh_disk_kind_name(d->kind),
                     want[i].kind);
        if (want[i].source)
            assert_string_equal(d->source, want[i].source);
        else
            assert_null(d->source);
        const char *e = vmsh_method_disk_exclusion(d, 0);
        if (!want[i].excl && e)
            fail_msg("%s excluded: %s", want[i].target, e);
        if (want[i].excl && (!e || !strstr(e, want[i].excl)))
            fail_msg("%s: reason '%s' lacks '%s'", want[i].target, e ? e : "(captured)",
                     want[i].excl);
    }
    /* a pass-through reason never claims the disk is a "host block device
     * to back up" when it is removable */
    assert_null(strstr(excl_of(x, "sdb", 0), "inside the guest"));
    assert_non_null(strstr(excl_of(x, "sda", 0), "inside the guest"));
    /* --include-shared captures the shared disk, nothing else changes */
    assert_null(excl_of(x, "vdh", VMSH_DISKS_INCLUDE_SHARED));
    assert_non_null(excl_of(x, "sda", VMSH_DISKS_INCLUDE_SHARED));
    assert_non_null(excl_of(x, "sdb", VMSH_DISKS_INCLUDE_SHARED));
    assert_string_equal(disk(x, "vde")->protocol, "rbd");
    assert_string_equal(disk(x, "vdd")->pool, "default");
    assert_string_equal(disk(x, "vdd")->volume, "r6-vol.qcow2");
    assert_int_equal(disk(x, "vdd")->storage, VMSH_DISK_UNKNOWN);
    assert_int_equal(disk(x, "vda")->storage, VMSH_DISK_BLOCK);

    /* a type='file' device node is a block device; only file disks (and
     * volumes stored as files) are asked about */
    int asked = 0;
    vmsh_domxml_mark_block_nodes(x, fake_is_block, &asked);
    assert_int_equal(asked, 1);
    assert_string_equal(vmsh_disk_kind_name(disk(x, "vdc")->kind), "block");
    /* a volume resolved through its pool: a file, then one on a device node */
    vmsh_domxml_disk *vdd = (vmsh_domxml_disk *)disk(x, "vdd");
    assert_int_equal(
        vmsh_domxml_disk_set_volume(vdd, "/var/lib/libvirt/images/r6-vol.qcow2", VMSH_DISK_FILE),
        0);
    assert_string_equal(vdd->source, "/var/lib/libvirt/images/r6-vol.qcow2");
    vmsh_domxml_mark_block_nodes(x, fake_is_block, &asked);
    assert_int_equal(vdd->storage, VMSH_DISK_FILE);
    assert_int_equal(vmsh_domxml_disk_set_volume(vdd, "/dev/vg1/r6-vol", VMSH_DISK_FILE), 0);
    vmsh_domxml_mark_block_nodes(x, fake_is_block, &asked);
    assert_int_equal(vdd->storage, VMSH_DISK_BLOCK);
    assert_int_equal(vdd->kind, VMSH_DISK_VOLUME);

    /* how each is read, and why when in full (never a silent full read) */
    const char *why = NULL;
    assert_string_equal(
        vmsh_method_disk_read(disk(x, "vdb"), VMSH_METHOD_GUEST, VMSH_VM_RUNNING, &why),
        "incremental");
    assert_string_equal(
        vmsh_method_disk_read(disk(x, "vda"), VMSH_METHOD_GUEST, VMSH_VM_RUNNING, &why), "full");
    assert_non_null(strstr(why, "raw block device"));
    assert_string_equal(
        vmsh_method_disk_read(disk(x, "vde"), VMSH_METHOD_GUEST, VMSH_VM_RUNNING, &why), "full");
    assert_non_null(strstr(why, "raw network disk"));
    assert_string_equal(
        vmsh_method_disk_read(disk(x, "vdb"), VMSH_METHOD_SAVED_STATE, VMSH_VM_RUNNING, &why),
        "full");
    assert_non_null(strstr(why, "saved-state"));
    assert_string_equal(
        vmsh_method_disk_read(disk(x, "vdb"), VMSH_METHOD_SAVED_STATE, VMSH_VM_SHUTOFF, &why),
        "incremental");
    assert_string_equal(vmsh_method_disk_read(vdd, VMSH_METHOD_GUEST, VMSH_VM_RUNNING, &why),
                        "incremental");

    /* nothing silent: NVRAM of another kind, direct-boot files */
    assert_string_equal(x->nvram_type, "network");
    assert_string_equal(x->nvram, "iscsi://10.0.0.9:3260/iqn.2013-07.com.example:nvram/0");
    assert_string_equal(x->kernel, "/var/lib/libvirt/boot/vmlinuz");
    assert_string_equal(x->initrd, "/var/lib/libvirt/boot/initrd.img");
    assert_string_equal(x->dtb, "/var/lib/libvirt/boot/board.dtb");
    vmsh_domxml_free(x);
}

/* R2 (c) is about image files: a VM on block and network disks gets the
 * guest method whatever the scratch directory's filesystem, while an image
 * file elsewhere than the scratch directory still fails (c). */
static void scratch_rule_only_for_files(void **state)
{
    vmsh_vm *vm = calloc(1, sizeof(*vm));
    vm->name = strdup("r6");
    vm->state = VMSH_VM_RUNNING;
    vm->xml = load_golden("r6-disks.xml");
    int asked = 0;
    vmsh_domxml_mark_block_nodes(vm->xml, fake_is_block, &asked); /* vdc: a device node */
    vmsh_agent_info agent = {
        .channel = true, .reachable = true, .can_freeze = true, .fs_known = true};
    vmsh_method_choice mc;
    assert_int_equal(
        vmsh_method_choose(vm, &agent, "/nonexistent-scratch", 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    if (mc.method != VMSH_METHOD_GUEST)
        fail_msg("%s", mc.reason);
    vmsh_method_choice_clear(&mc);
    vmsh_vm_free(vm);
    vm = vm_from_golden(VMSH_VM_RUNNING);
    assert_int_equal(
        vmsh_method_choose(vm, &agent, "/nonexistent-scratch", 0, VMSH_METHOD_AUTO, &mc, NULL), 0);
    assert_int_equal(mc.condition, 'c');
    vmsh_method_choice_clear(&mc);
    vmsh_vm_free(vm);
}

static char *golden_text(size_t *len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/domxml/all-disk-kinds.xml", getenv("VMSH_GOLDEN_DIR"));
    char *text = NULL;
    assert_int_equal(vmsh_fs_read_all(path, 1 << 20, &text, len, NULL), 0);
    return text;
}

/* A restore rewrites the XML: new name, UUID and MACs (--as), re-pathed
 * disks (R13), a disconnected interface (R14), no host devices (issue 8). */
static void edit_for_restore(void **state)
{
    size_t len = 0;
    char *text = golden_text(&len);
    const vmsh_disk_repath disks[] = {
        {.target = "vda", .path = "/restore/db01-copy/vda.qcow2", .format = "qcow2"},
        {.target = "vdb", .path = "/restore/db01-copy/vdb.raw", .format = NULL},
    };
    const vmsh_iface_action ifaces[] = {VMSH_IFACE_KEEP, VMSH_IFACE_DISCONNECT};
    vmsh_domxml_edit e = {
        .name = "db01-copy",
        .new_uuid = true,
        .new_macs = true,
        .disks = disks,
        .n_disks = 2,
        .nvram = "/restore/db01-copy/VARS.fd",
        .ifaces = ifaces,
        .n_ifaces = 2,
        .drop_host_devices = true,
    };
    char *out = NULL;
    vmsh_error *err = NULL;
    if (vmsh_domxml_edit_apply(text, len, &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_string_equal(x->name, "db01-copy");
    assert_null(x->uuid);
    assert_string_equal(x->nvram, "/restore/db01-copy/VARS.fd");
    /* only image files and removable drives are left */
    for (size_t i = 0; i < x->n_disks; i++) {
        const char *k = vmsh_disk_kind_name(x->disks[i].kind);
        if (strcmp(k, "file") != 0 && strcmp(k, "empty") != 0 && strcmp(k, "unknown") != 0)
            fail_msg("disk %s of kind %s survived", x->disks[i].target, k);
        assert_string_not_equal(x->disks[i].device, "hostdev");
    }
    const vmsh_domxml_disk *vda = disk(x, "vda");
    assert_string_equal(vda->source, "/restore/db01-copy/vda.qcow2");
    assert_string_equal(vda->format, "qcow2");
    assert_false(vda->has_backing_chain);
    assert_string_equal(disk(x, "vdb")->source, "/restore/db01-copy/vdb.raw");
    assert_string_equal(disk(x, "vdb")->format, "raw");
    assert_int_equal(x->n_ifaces, 2);
    assert_string_equal(x->ifaces[0].type, "network");
    assert_string_equal(x->ifaces[0].source, "default");
    assert_null(x->ifaces[0].mac);
    assert_string_equal(x->ifaces[1].type, "ethernet");
    assert_null(x->ifaces[1].source);
    assert_non_null(strstr(out, "<link state=\"down\"/>"));
    vmsh_domxml_free(x);
    free(out);

    /* a disk the XML does not have is an error, and nothing comes out */
    const vmsh_disk_repath bad[] = {{.target = "vdz", .path = "/x"}};
    vmsh_domxml_edit e2 = {.disks = bad, .n_disks = 1};
    out = NULL;
    err = NULL;
    assert_int_equal(vmsh_domxml_edit_apply(text, len, &e2, &out, &err), -EINVAL);
    assert_null(out);
    assert_non_null(strstr(err->message, "vdz"));
    vmsh_error_free(err);
    /* an edit that changes nothing keeps every disk and the UUID */
    vmsh_domxml_edit none = {0};
    assert_int_equal(vmsh_domxml_edit_apply(text, len, &none, &out, NULL), 0);
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_disks, 14);
    assert_string_equal(x->uuid, "8f2f8c38-6f5e-4a5c-9d3e-0b2a8a4c1e11");
    vmsh_domxml_free(x);
    free(out);
    free(text);
}

static char *golden_file(const char *name, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/domxml/%s", getenv("VMSH_GOLDEN_DIR"), name);
    char *text = NULL;
    assert_int_equal(vmsh_fs_read_all(path, 1 << 20, &text, len, NULL), 0);
    return text;
}

static bool listed(char **items, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (strstr(items[i], what))
            return true;
    return false;
}

static void free_list(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

/* Issue 20 point 2: a hostile definition holds one of each kind of host
 * resource; without --host-devices none reaches libvirt, each is listed
 * (what --dry-run prints), and nothing else of the definition changes. */
static void strips_every_host_resource(void **state)
{
    size_t len = 0;
    char *text = golden_file("host-resources.xml", &len);
    const vmsh_disk_repath disks[] = {{.target = "vda", .path = "/restore/evil/evil.raw"}};
    /* one fragment per kind: each must be listed, and gone from the XML */
    static const struct {
        const char *listed, *gone;
    } want[] = {
        {"emulator /tmp/evil/qemu-system-x86_64", "/tmp/evil/qemu"},
        {"disk vdb (file /dev/sda", "dev=\"vdb\""},
        {"disk vdc (file /etc/shadow", "/etc/shadow"},
        {"disk sda (file /root/secret.iso", "/root/secret.iso"},
        {"disk vdd (block /dev/vg0/root)", "/dev/vg0/root"},
        {"disk sdc (block lun /dev/sdx)", "/dev/sdx"},
        {"hostdev (subsystem pci)", "<hostdev"},
        {"filesystem (mount /)", "hostroot"},
        {"tpm (passthrough /dev/tpm0)", "/dev/tpm0"},
        {"input (evdev /dev/input/event0)", "event0"},
        {"input (passthrough /dev/input/event1)", "event1"},
        {"serial (file /etc/cron.d/evil)", "/etc/cron.d/evil"},
        {"serial (dev /dev/ttyS0)", "/dev/ttyS0"},
        {"parallel (pipe /tmp/evil-pipe)", "/tmp/evil-pipe"},
        {"console log file /etc/profile.d/evil.sh", "/etc/profile.d"},
        {"channel (unix /run/docker.sock)", "docker.sock"},
        {"channel (unix /var/lib/libvirt/qemu/../../../../run/evil.sock)", "evil.sock"},
        {"channel (tcp 127.0.0.1)", "service="},
        {"interface script /tmp/evil.sh", "/tmp/evil.sh"},
        {"interface (hostdev", "bus=\"0x04\""},
        {"shmem evil-shm", "evil-shm"},
        {"rng (random /dev/sda)", ">/dev/sda<"},
        {"qemu:commandline", "commandline"},
        {"qemu:override", "override"},
    };
    char **items = NULL, **items2 = NULL;
    size_t n = 0, n2 = 0;
    vmsh_domxml_edit e = {.disks = disks,
                          .n_disks = 1,
                          .drop_host_devices = true,
                          .stripped = &items2,
                          .n_stripped = &n2};
    vmsh_error *err = NULL;
    if (vmsh_domxml_host_resources(text, len, &e, &items, &n, &err) < 0)
        fail_msg("%s", err->message);
    char *out = NULL;
    if (vmsh_domxml_edit_apply(text, len, &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(want); i++) {
        if (!listed(items, n, want[i].listed))
            fail_msg("not listed: %s", want[i].listed);
        if (!listed(items2, n2, want[i].listed))
            fail_msg("not reported by the edit: %s", want[i].listed);
        if (strstr(out, want[i].gone))
            fail_msg("still in the definition: %s (%s)", want[i].listed, want[i].gone);
    }
    /* and nothing else is listed */
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t k = 0; k < VMSH_ARRAY_SIZE(want) && !known; k++)
            known = strstr(items[i], want[k].listed) != NULL;
        if (!known)
            fail_msg("listed, not expected: %s", items[i]);
    }
    assert_int_equal(n, VMSH_ARRAY_SIZE(want));
    assert_int_equal(n2, n);
    /* what is the guest's stays */
    static const char *const kept[] = {
        "metadata stays",
        "/restore/evil/evil.raw",
        "dev=\"sdb\"",
        "<filesystem type=\"ram\"",
        "<input type=\"tablet\"",
        "org.qemu.guest_agent.0",
        "com.redhat.spice.0",
        "network=\"default\"",
        "52:54:00:aa:bb:01",
        ">/dev/urandom<",
        "<memballoon",
        "<console type=\"pty\"",
        "<serial type=\"null\">",
        "<target port=\"1\"/>",
        "<parallel type=\"null\">",
        "dev=\"sda\"", /* the CD-ROM drive, empty */
        "0d9a3b55-1c1e-4f0e-9d39-52c4fd1f0a01",
        "<name>evil</name>",
    };
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(kept); i++)
        if (!strstr(out, kept[i]))
            fail_msg("lost: %s\n%s", kept[i], out);
    /* both serial ports stay, connected to nothing */
    const char *sp = strstr(out, "<serial type=\"null\">");
    assert_non_null(sp);
    assert_non_null(strstr(sp + 1, "<serial type=\"null\">"));
    /* the interfaces keep their order: the host device one is disconnected */
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_ifaces, 3);
    assert_string_equal(x->ifaces[2].type, "ethernet");
    assert_int_equal(x->n_disks, 3); /* vda, the empty sda and sdb */
    vmsh_domxml_free(x);
    free(out);
    free_list(items, n);
    free_list(items2, n2);

    /* --host-devices: all of it stays */
    e.drop_host_devices = false;
    items2 = NULL, n2 = 0;
    assert_int_equal(vmsh_domxml_edit_apply(text, len, &e, &out, NULL), 0);
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(want); i++)
        if (!strstr(out, want[i].gone) && strcmp(want[i].gone, "<hostdev") != 0)
            fail_msg("dropped with --host-devices: %s", want[i].listed);
    assert_int_equal(n2, 0);
    free(out);
    free(text);
}

/* The default emulators stay; a path that climbs out of one does not. */
static void keeps_default_emulator(void **state)
{
    static const char *const ok[] = {"/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-aarch64",
                                     "/usr/libexec/qemu-kvm", "/usr/bin/kvm"};
    static const char *const bad[] = {"/usr/bin/qemu-system-x86_64/../../../tmp/q",
                                      "/usr/bin/qemu-system-", "/usr/bin/qemu-system-x86_64 -x",
                                      "/usr/libexec/qemu-kvm2", "qemu-kvm"};
    for (int pass = 0; pass < 2; pass++) {
        const char *const *list = pass ? bad : ok;
        size_t cnt = pass ? VMSH_ARRAY_SIZE(bad) : VMSH_ARRAY_SIZE(ok);
        for (size_t i = 0; i < cnt; i++) {
            char xml[512];
            snprintf(xml, sizeof(xml),
                     "<domain type='kvm'><name>t</name><devices><emulator>%s</emulator>"
                     "</devices></domain>",
                     list[i]);
            char **items = NULL;
            size_t n = 0;
            vmsh_domxml_edit e = {.drop_host_devices = true};
            assert_int_equal(vmsh_domxml_host_resources(xml, strlen(xml), &e, &items, &n, NULL), 0);
            if (n != (size_t)pass)
                fail_msg("emulator %s: %zu listed", list[i], n);
            free_list(items, n);
        }
    }
}

/* Issue 25 point 4: a disk written in place onto a block device stays in
 * the definition under drop_host_devices, as type='block' on the device
 * written (whatever the backup's element said); another block disk, which
 * the restore did not write, is taken out as before. */
static void keeps_block_disk_written_in_place(void **state)
{
    (void)state;
    const char *xml = "<domain type='kvm'><name>t</name><devices>"
                      "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      "<source file='/x/a.qcow2'/><backingStore type='file'><source file='/x/b'/>"
                      "</backingStore><target dev='vda' bus='virtio'/></disk>"
                      "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                      "<source dev='/dev/loop7'/><target dev='vdb' bus='virtio'/></disk>"
                      "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                      "<source dev='/dev/loop8'/><target dev='vdc' bus='virtio'/></disk>"
                      "</devices></domain>";
    const vmsh_disk_repath disks[] = {
        {.target = "vda", .path = "/dev/loop5", .format = "raw", .in_place = true},
        {.target = "vdb", .path = "/dev/loop7", .format = "raw", .in_place = true},
    };
    vmsh_domxml_edit e = {.disks = disks, .n_disks = 2, .drop_host_devices = true};
    char *out = NULL;
    vmsh_error *err = NULL;
    if (vmsh_domxml_edit_apply(xml, strlen(xml), &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    assert_non_null(strstr(out, "<source dev=\"/dev/loop5\"/>"));
    assert_non_null(strstr(out, "<source dev=\"/dev/loop7\"/>"));
    assert_null(strstr(out, "/x/a.qcow2"));
    assert_null(strstr(out, "backingStore"));
    assert_null(strstr(out, "/dev/loop8"));
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_disks, 2);
    vmsh_domxml_free(x);
    free(out);
}

/* Issue 25 point 4: an RBD disk and a pool volume written in place (or
 * created for --as) stay in the definition under drop_host_devices: the RBD
 * disk type='network' with its monitors and auth, under the image written;
 * the volume type='volume' naming the volume written. An RBD disk the
 * restore did not write is taken out as before. */
static void keeps_rbd_and_volume_written_in_place(void **state)
{
    (void)state;
    const char *xml =
        "<domain type='kvm'><name>t</name><devices>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<auth username='admin'><secret type='ceph' uuid='11111111-2222-3333-4444-555555555555'/>"
        "</auth><source protocol='rbd' name='pool/img'><host name='10.0.0.1' port='6789'/>"
        "</source><target dev='vda' bus='virtio'/></disk>"
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source pool='p1' volume='v.qcow2'/><target dev='vdb' bus='virtio'/></disk>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='rbd' name='pool/other'/><target dev='vdc' bus='virtio'/></disk>"
        "</devices></domain>";
    const vmsh_disk_repath disks[] = {
        {.target = "vda",
         .path = "rbd:pool/copy-vda",
         .format = "raw",
         .in_place = true,
         .rbd = "pool/copy-vda"},
        {.target = "vdb",
         .path = "/pool/copy-v.qcow2",
         .format = "qcow2",
         .in_place = true,
         .pool = "p1",
         .volume = "copy-v.qcow2"},
    };
    vmsh_domxml_edit e = {.disks = disks, .n_disks = 2, .drop_host_devices = true};
    char *out = NULL;
    vmsh_error *err = NULL;
    if (vmsh_domxml_edit_apply(xml, strlen(xml), &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    assert_non_null(strstr(out, "name=\"pool/copy-vda\""));
    /* created (no rbd_source): the host's Ceph configuration, not the
     * backup's monitors (R12) */
    assert_null(strstr(out, "10.0.0.1"));
    assert_non_null(strstr(out, "uuid=\"11111111-2222-3333-4444-555555555555\""));
    assert_non_null(strstr(out, "<source pool=\"p1\" volume=\"copy-v.qcow2\"/>"));
    assert_null(strstr(out, "pool/other"));
    assert_null(strstr(out, "v.qcow2\"/><target")); /* the old volume name is gone */
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_disks, 2);
    assert_int_equal(x->disks[0].kind, VMSH_DISK_NETWORK);
    assert_string_equal(x->disks[0].protocol, "rbd");
    assert_int_equal(x->disks[1].kind, VMSH_DISK_VOLUME);
    assert_string_equal(x->disks[1].volume, "copy-v.qcow2");
    assert_string_equal(x->disks[1].format, "qcow2");
    vmsh_domxml_free(x);
    free(out);
}

/* R12 (issue 25): in place onto an RBD image, the restored definition
 * takes the <source> (monitors, config) and <auth> (user, secret) of the
 * VM it replaces, taken out of that VM's definition: a crafted backup's
 * monitors and secret are gone. */
static void rbd_in_place_takes_the_current_source(void **state)
{
    (void)state;
    const char *cur =
        "<domain type='kvm'><name>t</name><devices>"
        "<disk type='file' device='disk'><source file='/x.img'/><target dev='vda'/></disk>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<auth username='libvirt'><secret type='ceph' uuid='aaaaaaaa-2222-3333-4444-555555555555'/>"
        "</auth><source protocol='rbd' name='pool/img'><host name='10.9.9.9' port='3300'/>"
        "<config file='/etc/ceph/prod.conf'/></source><target dev='vdf' bus='virtio'/></disk>"
        "</devices></domain>";
    char *frag = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_domxml_disk_source_xml(cur, strlen(cur), "vdf", &frag, &err), 0);
    assert_non_null(strstr(frag, "<disk><source protocol=\"rbd\" name=\"pool/img\">"));
    assert_non_null(strstr(frag, "aaaaaaaa-2222"));
    char *none = NULL;
    assert_int_equal(vmsh_domxml_disk_source_xml(cur, strlen(cur), "vdz", &none, &err), -ENOENT);
    assert_null(none);
    vmsh_error_free(err);
    err = NULL;
    /* the backup: another monitor, another secret, a user of its own */
    const char *xml =
        "<domain type='kvm'><name>t</name><devices>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<auth username='admin'><secret type='ceph' uuid='11111111-2222-3333-4444-555555555555'/>"
        "</auth><source protocol='rbd' name='pool/img'><host name='203.0.113.7' port='6789'/>"
        "<config file='/tmp/evil.conf'/></source><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>";
    const vmsh_disk_repath disks[] = {{.target = "vda",
                                       .path = "rbd:pool/img",
                                       .format = "raw",
                                       .in_place = true,
                                       .rbd = "pool/img",
                                       .rbd_source = frag}};
    vmsh_domxml_edit e = {.disks = disks, .n_disks = 1, .drop_host_devices = true};
    char *out = NULL;
    if (vmsh_domxml_edit_apply(xml, strlen(xml), &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    assert_null(strstr(out, "203.0.113.7"));
    assert_null(strstr(out, "11111111-2222"));
    assert_null(strstr(out, "evil.conf"));
    assert_null(strstr(out, "admin"));
    assert_non_null(strstr(out, "<host name=\"10.9.9.9\" port=\"3300\"/>"));
    assert_non_null(strstr(out, "aaaaaaaa-2222"));
    assert_non_null(strstr(out, "username=\"libvirt\""));
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_disks, 1);
    assert_int_equal(x->disks[0].kind, VMSH_DISK_NETWORK);
    assert_string_equal(x->disks[0].target, "vda");
    assert_string_equal(x->disks[0].net_name, "pool/img");
    assert_string_equal(x->disks[0].auth_user, "libvirt");
    assert_string_equal(x->disks[0].net_config, "/etc/ceph/prod.conf");
    assert_int_equal(x->disks[0].n_hosts, 1);
    vmsh_domxml_free(x);
    free(out);
    free(frag);
}

/* Issue 25 point 4, --to: a block disk and an RBD disk turned into image
 * files stay in the definition as type='file' on the file written, with
 * nothing of their old source (device, monitors) nor their credentials. */
static void converts_block_and_rbd_to_files(void **state)
{
    (void)state;
    const char *xml =
        "<domain type='kvm'><name>t</name><devices>"
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
        "<source dev='/dev/loop7'/><target dev='vda' bus='virtio'/></disk>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<auth username='admin'><secret type='ceph' uuid='11111111-2222-3333-4444-555555555555'/>"
        "</auth><source protocol='rbd' name='pool/img'><host name='10.0.0.1' port='6789'/>"
        "</source><target dev='vdb' bus='virtio'/></disk>"
        "</devices></domain>";
    const vmsh_disk_repath disks[] = {
        {.target = "vda", .path = "/to/t/vda.img", .format = "raw"},
        {.target = "vdb", .path = "/to/t/vdb.img", .format = "raw"},
    };
    vmsh_domxml_edit e = {.disks = disks, .n_disks = 2, .drop_host_devices = true};
    char *out = NULL;
    vmsh_error *err = NULL;
    if (vmsh_domxml_edit_apply(xml, strlen(xml), &e, &out, &err) < 0)
        fail_msg("%s", err->message);
    assert_non_null(strstr(out, "<source file=\"/to/t/vda.img\"/>"));
    assert_non_null(strstr(out, "<source file=\"/to/t/vdb.img\"/>"));
    assert_null(strstr(out, "loop7"));
    assert_null(strstr(out, "10.0.0.1"));
    assert_null(strstr(out, "auth"));
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), NULL), 0);
    assert_int_equal(x->n_disks, 2);
    assert_int_equal(x->disks[0].kind, VMSH_DISK_FILE);
    assert_int_equal(x->disks[1].kind, VMSH_DISK_FILE);
    vmsh_domxml_free(x);
    free(out);
}

/* Found by fuzz/fuzz_domxml.c: a <disk> without <target dev> (libvirt never
 * gives one, a backup may) was accepted with a NULL target, which the VM
 * writer copies with strdup and puts in file names. */
static void rejects_disk_without_target(void **state)
{
    static const char xml[] = "<domain type='kvm'><name>t</name><devices>"
                              "<disk type='file' device='disk'><source file='/a.img'/></disk>"
                              "</devices></domain>";
    vmsh_domxml *x = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, xml, sizeof(xml) - 1, &err), -EINVAL);
    assert_null(x);
    assert_non_null(strstr(err->message, "target"));
    vmsh_error_free(err);
}

/* Issue 25: after the saved-state method's block commit libvirt's live
 * definition calls a pool volume by its file; the persistent one still
 * names the volume, and the live disk takes that identity back. */
static void live_file_adopts_the_persistent_volume(void **state)
{
    (void)state;
    static const char live_xml[] =
        "<domain type='qemu'><name>v</name><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/pool/v.qcow2'/><target dev='vdd' bus='virtio'/></disk>"
        "<disk type='file' device='disk'><source file='/pool/other.qcow2'/>"
        "<target dev='vde' bus='virtio'/></disk>"
        "</devices></domain>";
    static const char def_xml[] =
        "<domain type='qemu'><name>v</name><devices>"
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source pool='p' volume='v.qcow2'/><target dev='vdd' bus='virtio'/></disk>"
        "<disk type='volume' device='disk'><source pool='p' volume='x.qcow2'/>"
        "<target dev='vde' bus='virtio'/></disk>"
        "</devices></domain>";
    vmsh_domxml *live = NULL, *def = NULL;
    assert_int_equal(vmsh_domxml_parse(&live, live_xml, strlen(live_xml), NULL), 0);
    assert_int_equal(vmsh_domxml_parse(&def, def_xml, strlen(def_xml), NULL), 0);
    vmsh_domxml_disk *vdd = (vmsh_domxml_disk *)disk(def, "vdd");
    vmsh_domxml_disk *vde = (vmsh_domxml_disk *)disk(def, "vde");
    vmsh_domxml_disk *lvdd = (vmsh_domxml_disk *)disk(live, "vdd");
    vmsh_domxml_disk *lvde = (vmsh_domxml_disk *)disk(live, "vde");
    /* unresolved: nothing to compare the path with */
    assert_int_equal(vmsh_domxml_disk_adopt_volume(lvdd, vdd), 0);
    assert_int_equal(vmsh_domxml_disk_set_volume(vdd, "/pool/v.qcow2", VMSH_DISK_FILE), 0);
    /* vde's volume resolves to another path than the live file: not the same disk */
    assert_int_equal(vmsh_domxml_disk_set_volume(vde, "/pool/x.qcow2", VMSH_DISK_FILE), 0);
    /* another target never matches */
    assert_int_equal(vmsh_domxml_disk_adopt_volume(lvde, vdd), 0);
    assert_int_equal(vmsh_domxml_disk_adopt_volume(lvde, vde), 0);
    assert_int_equal(lvde->kind, VMSH_DISK_FILE);
    /* the same target and path: the volume again */
    assert_int_equal(vmsh_domxml_disk_adopt_volume(lvdd, vdd), 1);
    assert_int_equal(lvdd->kind, VMSH_DISK_VOLUME);
    assert_int_equal(lvdd->storage, VMSH_DISK_FILE);
    assert_string_equal(lvdd->pool, "p");
    assert_string_equal(lvdd->volume, "v.qcow2");
    assert_string_equal(lvdd->type, "volume");
    assert_string_equal(lvdd->source, "/pool/v.qcow2");
    /* already a volume: nothing more */
    assert_int_equal(vmsh_domxml_disk_adopt_volume(lvdd, vdd), 0);
    vmsh_domxml_free(live);
    vmsh_domxml_free(def);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(classifies_every_kind),
        cmocka_unit_test(rejects_bad_xml),
        cmocka_unit_test(rejects_disk_without_target),
        cmocka_unit_test(method_falls_back_with_reason),
        cmocka_unit_test(r6_every_virtual_disk_captured),
        cmocka_unit_test(scratch_rule_only_for_files),
        cmocka_unit_test(edit_for_restore),
        cmocka_unit_test(strips_every_host_resource),
        cmocka_unit_test(keeps_default_emulator),
        cmocka_unit_test(keeps_block_disk_written_in_place),
        cmocka_unit_test(keeps_rbd_and_volume_written_in_place),
        cmocka_unit_test(rbd_in_place_takes_the_current_source),
        cmocka_unit_test(live_file_adopts_the_persistent_volume),
        cmocka_unit_test(converts_block_and_rbd_to_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
