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

const char *vmsh_method_disk_exclusion(const vmsh_domxml_disk *d)
{
    switch (d->kind) {
    case VMSH_DISK_FILE:
        if (strcmp(d->device, "cdrom") == 0 || strcmp(d->device, "floppy") == 0)
            return "removable medium (not VM data)";
        return NULL;
    case VMSH_DISK_BLOCK:
        return "host block device: back it up from inside the guest (R6)";
    case VMSH_DISK_NETWORK:
        return "network disk: back it up from inside the guest (R6)";
    case VMSH_DISK_PASSTHROUGH:
        return "host device passed through: back it up from inside the guest (R6)";
    case VMSH_DISK_EMPTY:
        return "no medium";
    case VMSH_DISK_UNKNOWN:
        break;
    }
    return "disk of a kind vmshadow does not know: not backed up";
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
                       vmsh_method_choice *out)
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
        const char *excl = vmsh_method_disk_exclusion(d);
        if (excl && d->kind == VMSH_DISK_FILE)
            continue; /* removable media are not captured by either method */
        if (excl && d->kind == VMSH_DISK_EMPTY)
            continue;
        if (excl)
            return fail(out, 'e', "disk %s is %s, not a file image the provider can snapshot",
                        d->target ? d->target : "?", vmsh_disk_kind_name(d->kind));
        if (!d->format || (strcmp(d->format, "qcow2") != 0 && strcmp(d->format, "raw") != 0))
            return fail(out, 'e', "disk %s has format %s; the provider snapshots qcow2 and raw",
                        d->target ? d->target : "?", d->format ? d->format : "(none given)");
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
                       vmsh_method requested, vmsh_method_choice *out, vmsh_error **err)
{
    memset(out, 0, sizeof(*out));
    if (requested == VMSH_METHOD_SAVED_STATE) {
        out->method = VMSH_METHOD_SAVED_STATE;
        out->reason = strdup("saved-state method requested");
        return out->reason ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int r = check_guest(vm, agent, scratch_dir, out);
    if (r < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        out->method = VMSH_METHOD_GUEST;
        out->reason = strdup("agent answers and can freeze; every disk is a file image");
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
