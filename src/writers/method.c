#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/method.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *vmsh_method_name(vmsh_method m)
{
    switch (m) {
    case VMSH_METHOD_SAVED_STATE:
        return "saved-state";
    case VMSH_METHOD_GUEST:
        return "guest";
    case VMSH_METHOD_AUTO:
        break;
    }
    return "auto";
}

int vmsh_method_parse(const char *s, vmsh_method *out)
{
    static const vmsh_method all[] = {VMSH_METHOD_AUTO, VMSH_METHOD_SAVED_STATE, VMSH_METHOD_GUEST};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(all); i++)
        if (strcmp(s, vmsh_method_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -EINVAL;
}

void vmsh_method_choice_clear(vmsh_method_choice *c)
{
    if (!c)
        return;
    free(c->reason);
    c->reason = NULL;
}

static bool removable(const vmsh_domxml_disk *d)
{
    return d->device && (strcmp(d->device, "cdrom") == 0 || strcmp(d->device, "floppy") == 0);
}

static bool type_is(const vmsh_domxml_disk *d, const char *t)
{
    return d->type && strcmp(d->type, t) == 0;
}

/* SPEC R6 as rewritten (issue 25): a virtual disk is captured wherever it is
 * stored; pass-through is not, shared disks only on request; each reason
 * says what the disk is, so that the user knows where its data must be
 * backed up instead. */
const char *vmsh_method_disk_exclusion(const vmsh_domxml_disk *d, unsigned flags)
{
    if (d->kind == VMSH_DISK_EMPTY)
        return "removable medium: the drive is empty";
    /* before pass-through: a host CD-ROM drive is a removable medium, not
     * "a host device to back up from inside the guest" */
    if (removable(d))
        return "removable medium (not VM data)";
    switch (d->kind) {
    case VMSH_DISK_FILE:
    case VMSH_DISK_BLOCK:
    case VMSH_DISK_NETWORK:
    case VMSH_DISK_VOLUME:
        if (d->shareable && !(flags & VMSH_DISKS_INCLUDE_SHARED))
            return "shared with other VMs (<shareable/>): one VM's backup cannot capture it "
                   "consistently; --include-shared captures it anyway (R6)";
        return NULL;
    case VMSH_DISK_PASSTHROUGH:
        if (strcmp(d->device, "lun") == 0)
            return "SCSI LUN pass-through (device='lun'): the guest drives the device itself; "
                   "back it up from inside the guest (R6)";
        if (strcmp(d->device, "hostdev") == 0)
            return "host device passed through (<hostdev>): back it up from inside the guest "
                   "(R6)";
        if (type_is(d, "vhostuser"))
            return "vhost-user disk: an external process serves it, QEMU never opens its "
                   "storage; back it up where that process keeps it or from inside the guest "
                   "(R6)";
        if (type_is(d, "vhostvdpa"))
            return "vDPA device: the hardware serves it; back it up from inside the guest (R6)";
        if (type_is(d, "nvme"))
            return "host NVMe controller passed through (type='nvme'): back it up from inside "
                   "the guest (R6)";
        return "host device passed through: back it up from inside the guest (R6)";
    case VMSH_DISK_EMPTY:
    case VMSH_DISK_UNKNOWN:
        break;
    }
    if (type_is(d, "dir"))
        return "a host directory shown to the guest as a disk (type='dir'): back up the "
               "directory itself";
    return "disk of a kind vmshadow does not know: not backed up";
}

static bool is_qcow2(const vmsh_domxml_disk *d)
{
    return d->format && strcmp(d->format, "qcow2") == 0;
}

const char *vmsh_method_disk_read(const vmsh_domxml_disk *d, vmsh_method m, vmsh_vm_state st,
                                  const char **why)
{
    vmsh_disk_kind on = d->kind == VMSH_DISK_VOLUME ? d->storage : d->kind;
    if (!is_qcow2(d)) {
        /* libvirt refuses checkpoints on them (libvirt 9.0): no dirty bitmap */
        if (on == VMSH_DISK_BLOCK)
            *why = "raw block device: only qcow2 images carry dirty bitmaps (libvirt refuses a "
                   "checkpoint on a raw disk)";
        else if (on == VMSH_DISK_NETWORK)
            *why = "raw network disk: only qcow2 images carry dirty bitmaps (libvirt refuses a "
                   "checkpoint on a raw disk)";
        else
            *why = "raw disks carry no dirty bitmap (only qcow2 images do)";
        return "full";
    }
    if (m == VMSH_METHOD_SAVED_STATE && st != VMSH_VM_SHUTOFF) {
        *why = "saved-state method (R1): the image is read without a dirty bitmap (incremental "
               "reads come from the guest method's backup job)";
        return "full";
    }
    if (st == VMSH_VM_SHUTOFF && on == VMSH_DISK_NETWORK) {
        *why = "a shut-off VM's network disk is read in full";
        return "full";
    }
    *why = "qcow2: changes since the last backup's checkpoint (the first backup, or one "
           "after the chain broke, reads in full)";
    return "incremental";
}

/* Guest filesystems that FIFREEZE cannot make consistent: their data lives
 * elsewhere (network or host-shared filesystems). */
static bool fs_type_freezable(const char *type)
{
    static const char *const deny[] = {"nfs",      "nfs4", "cifs",      "smb3", "9p",
                                       "virtiofs", "ceph", "glusterfs", "fuse", "sshfs"};
    if (!type)
        return false;
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(deny); i++)
        if (strcmp(type, deny[i]) == 0)
            return false;
    return strncmp(type, "fuse.", 5) != 0;
}

static int same_fs(const char *a_path, const char *b_dir, bool *out)
{
    _cleanup_free_ char *a_dir = vmsh_path_dirname(a_path);
    struct stat sa, sb;
    if (!a_dir || stat(a_dir, &sa) < 0 || stat(b_dir, &sb) < 0)
        return errno ? -errno : -ENOMEM;
    *out = sa.st_dev == sb.st_dev;
    return 0;
}

static int fail(vmsh_method_choice *out, char cond, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(vmsh_method_choice *out, char cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *why = NULL;
    int n = vasprintf(&why, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    out->method = VMSH_METHOD_SAVED_STATE;
    out->condition = cond;
    if (asprintf(&out->reason, "R2 (%c): %s", cond, why) < 0)
        out->reason = NULL;
    free(why);
    return out->reason ? 1 : -ENOMEM;
}

/* Returns 1 when a condition failed (out filled), 0 when all hold, <0 ENOMEM. */
static int check_guest(const vmsh_vm *vm, const vmsh_agent_info *agent, const char *scratch_dir,
                       unsigned flags, vmsh_method_choice *out)
{
    if (vm->state != VMSH_VM_RUNNING)
        return fail(out, 'b', "the VM is %s, not running", vmsh_vm_state_name(vm->state));
    if (!vm->xml)
        return fail(out, 'e', "the VM's XML could not be read: %s",
                    vm->xml_error ? vm->xml_error : "unknown");
    if (!agent || !agent->channel)
        return fail(out, 'a', "the VM has no guest agent channel");
    if (!agent->reachable)
        return fail(out, 'a', "the guest agent does not answer: %s",
                    agent->error ? agent->error : "no reply");
    if (!agent->can_freeze)
        return fail(out, 'a', "the guest agent does not support freeze");
    for (size_t i = 0; i < vm->xml->n_disks; i++) {
        const vmsh_domxml_disk *d = &vm->xml->disks[i];
        if (vmsh_method_disk_exclusion(d, flags))
            continue; /* not captured by either method (R6) */
        if (!d->format || (strcmp(d->format, "qcow2") != 0 && strcmp(d->format, "raw") != 0))
            return fail(out, 'e', "disk %s has format %s; the provider reads qcow2 and raw",
                        d->target ? d->target : "?", d->format ? d->format : "(none given)");
        /* R2 (c) is about image files: scratch files of a block, network or
         * pool-volume disk go to the scratch directory or the set's /run
         * directory, never beside a device node */
        if (d->kind != VMSH_DISK_FILE &&
            !(d->kind == VMSH_DISK_VOLUME && d->storage == VMSH_DISK_FILE))
            continue;
        if (scratch_dir) {
            bool same = false;
            if (same_fs(d->source, scratch_dir, &same) < 0)
                return fail(out, 'c',
                            "cannot tell whether %s and the scratch directory %s are on "
                            "one filesystem",
                            d->source, scratch_dir);
            if (!same)
                return fail(out, 'c',
                            "scratch directory %s is not on the filesystem of disk %s (%s)",
                            scratch_dir, d->target ? d->target : "?", d->source);
        }
    }
    if (!agent->fs_known)
        return fail(out, 'd', "the guest agent does not list the guest's filesystems");
    for (size_t i = 0; i < agent->n_fs; i++)
        if (!fs_type_freezable(agent->fs[i].type))
            return fail(out, 'd', "guest filesystem %s (%s) cannot be frozen",
                        agent->fs[i].mountpoint ? agent->fs[i].mountpoint : "?",
                        agent->fs[i].type ? agent->fs[i].type : "unknown type");
    return 0;
}

int vmsh_method_choose(const vmsh_vm *vm, const vmsh_agent_info *agent, const char *scratch_dir,
                       unsigned flags, vmsh_method requested, vmsh_method_choice *out,
                       vmsh_error **err)
{
    memset(out, 0, sizeof(*out));
    if (requested == VMSH_METHOD_SAVED_STATE) {
        out->method = VMSH_METHOD_SAVED_STATE;
        out->reason = strdup("saved-state method requested");
        return out->reason ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int r = check_guest(vm, agent, scratch_dir, flags, out);
    if (r < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        out->method = VMSH_METHOD_GUEST;
        out->reason =
            strdup("agent answers and can freeze; the backup job reads every captured disk");
        return out->reason ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if (requested == VMSH_METHOD_GUEST) {
        r = vmsh_error_set(err, -EINVAL, "VM %s cannot be backed up by the guest method: %s",
                           vm->name, out->reason);
        vmsh_method_choice_clear(out);
        return r;
    }
    return 0;
}
