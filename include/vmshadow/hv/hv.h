/* hv.h - hypervisor access: the only module that talks to libvirt
 * (docs/ARCHITECTURE.md). Writers and providers reach libvirt and QEMU only
 * through these calls.
 *
 * A vmsh_hv is one libvirt connection; it is not thread-safe (use one per
 * thread). Errors name the VM and carry libvirt's own message.
 */
#ifndef VMSH_HV_HV_H
#define VMSH_HV_HV_H

#include <stdbool.h>
#include <stddef.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/util/error.h>

typedef struct vmsh_hv vmsh_hv;

typedef enum {
    VMSH_VM_RUNNING,
    VMSH_VM_PAUSED,
    VMSH_VM_SHUTOFF,
    VMSH_VM_OTHER, /* crashed, shutting down, pmsuspended, blocked, unknown */
} vmsh_vm_state;

/* "running", "paused", "shut off", "other". */
const char *vmsh_vm_state_name(vmsh_vm_state s);

typedef struct vmsh_vm {
    char *name;
    char *uuid;
    vmsh_vm_state state;
    int libvirt_state; /* virDomainState, for detail in messages */
    bool persistent;
    bool managed_save; /* has a managed saved-state image */
    char *xml_text;    /* the domain XML as libvirt gave it (live when running) */
    vmsh_domxml *xml;  /* parsed; NULL when the XML did not parse */
    char *xml_error;   /* why it did not parse; NULL when it did */
} vmsh_vm;

void vmsh_vm_free(vmsh_vm *vm);
void vmsh_vm_list_free(vmsh_vm **vms, size_t n);

/* Opens a connection; `uri` NULL uses libvirt's default resolution.
 * Expected errors: -ECONNREFUSED (no daemon, bad URI), naming the URI and
 * what to do. */
int vmsh_hv_open(vmsh_hv **out, const char *uri, vmsh_error **err);
void vmsh_hv_free(vmsh_hv *hv);
/* Keeps the domains it looks up (one round trip each less) while `on`;
 * off (the default) every call looks its VM up again, which also renews a
 * connection to a libvirtd that restarted: undo and recovery run with it
 * off. Turning it off forgets what was kept. */
void vmsh_hv_cache_domains(vmsh_hv *hv, bool on);
const char *vmsh_hv_uri(const vmsh_hv *hv);

/* Every VM of the connection (defined and transient), sorted by name.
 * A VM whose XML does not parse is still listed, with xml == NULL and
 * xml_error set. */
int vmsh_hv_list_vms(vmsh_hv *hv, vmsh_vm ***out, size_t *n, vmsh_error **err);

/* One VM by name. -ENOENT when there is none. */
int vmsh_hv_get_vm(vmsh_hv *hv, const char *name, vmsh_vm **out, vmsh_error **err);

/* What the storage pool volume `vol` of `pool` is stored on (issue 25,
 * issue 23): its path (*path, malloc'ed: a file, a device node, or for a
 * network pool what libvirt names it, e.g. "POOL/IMAGE" for RBD) and
 * *kind VMSH_DISK_FILE, _BLOCK or _NETWORK. -ENOENT when the pool or the
 * volume does not exist (or the pool is not active), -ENOTSUP for other
 * kinds of volume. */
int vmsh_hv_volume_path(vmsh_hv *hv, const char *pool, const char *vol, char **path,
                        vmsh_disk_kind *kind, vmsh_error **err);
/* Resolves every type='volume' disk of `x` (vmsh_domxml_disk_set_volume:
 * `source` its path, `storage` its kind); a volume that cannot be resolved
 * stays as it was (storage UNKNOWN). */
void vmsh_hv_resolve_volumes(vmsh_hv *hv, vmsh_domxml *x);

/* What the guest agent says about itself (SPEC R2 (a), (d)). */
typedef struct vmsh_agent_fs {
    char *mountpoint;
    char *type;
    char **devs; /* guest device names the filesystem sits on ("/dev/vda") */
    size_t n_devs;
} vmsh_agent_fs;

typedef struct vmsh_agent_info {
    bool channel;    /* the VM has an agent channel */
    bool reachable;  /* guest-ping answered in time */
    char *error;     /* why not reachable, or why a later query failed */
    bool can_freeze; /* guest-fsfreeze-freeze and -thaw are enabled */
    bool fs_known;   /* guest-get-fsinfo answered */
    vmsh_agent_fs *fs;
    size_t n_fs;
} vmsh_agent_info;

void vmsh_agent_info_free(vmsh_agent_info *a);

/* Asks the agent of a running VM: ping, supported commands, filesystems.
 * Whether the VM has an agent channel, connected, comes from vm (its
 * domain XML and state as vmsh_hv_get_vm or vmsh_hv_list_vms read them).
 * Each query waits at most `timeout_s` seconds, so a hung agent costs at most
 * a few timeouts. Not an error when the agent does not answer: the answer is
 * in *out (reachable false, error set). Errors only for ENOMEM and a VM that
 * vanished (-ENOENT). */
int vmsh_hv_agent_probe(vmsh_hv *hv, const vmsh_vm *vm, int timeout_s, vmsh_agent_info **out,
                        vmsh_error **err);

#endif
