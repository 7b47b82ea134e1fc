/* vm_writer.c - the VM writer (include/vmshadow/writers/vm_writer.h).
 *
 * Journal actions (docs/formats/journal.md, owner = the VM writer's ID):
 *   run-dir  {path}                     the set's private directory
 *   freeze   {vm}                       guest filesystems frozen (R2)
 *   save     {vm, state_file, prior}    memory saved, VM restored paused (R1)
 * Undo is the same code whether it runs in this process (abort) or in a
 * later one (recover): it looks at the VM as it is now and brings it back
 * to its prior state, then removes what the set made.
 */
#include <vmshadow/coord/parallel.h>
#include <vmshadow/coord/trace.h>
#include <vmshadow/hv/hvops.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/hv/netdisk.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>
#include <vmshadow/util/text.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/writers/method.h>
#include <vmshadow/writers/vm_writer.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vm_writer_private.h"

static void item_clear(vm_item *it)
{
    free(it->name);
    for (size_t i = 0; i < it->n_targets; i++)
        free(it->targets[i]);
    for (size_t i = 0; i < it->net_cap; i++)
        free(it->net_specs[i]);
    free(it->targets);
    free(it->net_specs);
    for (size_t i = 0; i < it->n_cp_disks; i++)
        free(it->cp_disks[i]);
    free(it->cp_disks);
    free(it->state_file);
    free(it->xml_file);
    free(it->new_cp);
    free(it->cp_error);
    vmsh_error_free(it->thaw_err);
    vmsh_error_free(it->par_err);
    vmsh_hv_free(it->own_hv);
}

static void thaw_wait(vm_writer *w)
{
    if (w->thaw_running) {
        pthread_join(w->thaw_thread, NULL);
        w->thaw_running = false;
    }
}

static void reset(vm_writer *w)
{
    thaw_wait(w); /* BackupComplete and Abort join it first (thaw_join) */
    for (size_t i = 0; i < w->n_items; i++)
        item_clear(&w->items[i]);
    free(w->items);
    w->items = NULL;
    w->n_items = 0;
    free(w->set_id);
    w->set_id = NULL;
    free(w->run_dir);
    w->run_dir = NULL;
    free(w->sock_dir);
    w->sock_dir = NULL;
    w->have_run_dir = false;
}

int vmsh_vmw_hv_ready(vm_writer *w, vmsh_error **err)
{
    return w->hv ? 0 : vmsh_hv_open(&w->hv, w->uri, err);
}

int64_t vmsh_vm_writer_freeze_window_ms(const vmsh_writer_ops *ops)
{
    const vm_writer *w = (const vm_writer *)ops;
    if (!w->freeze_start)
        return -1;
    return (w->freeze_end ? w->freeze_end : vmsh_now_ms()) - w->freeze_start;
}

/* ---------------------------------------------------------------- identify */

static bool selected(const vmsh_set_options *o, const char *name)
{
    if (o->all)
        return true;
    for (size_t i = 0; i < o->n_targets; i++)
        if (strcmp(o->targets[i], name) == 0)
            return true;
    return false;
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

/* The state of an emulated TPM (swtpm), which libvirt keeps in a place of
 * its own: <VMSH_SWTPM_DIR>/<uuid>/, e.g. tpm2/tpm2-00.permall. Each regular
 * file becomes a file "tpm/<relative path>" of the component. A TPM that is
 * not emulated (pass-through) is the host's: excluded (R6). */
static int exclude_or_fail(const vmsh_set_options *o, vmsh_component *c, const char *vm,
                           const char *name, const char *reason, size_t *accepted,
                           vmsh_error **err);

static int describe_tpm(vmsh_component *c, const vmsh_vm *vm, const vmsh_set_options *o,
                        size_t *accepted, vmsh_error **err)
{
    if (strcmp(vm->xml->tpm_backend, "emulator") != 0)
        return vmsh_component_add_excluded(c, "tpm", "a host TPM passed through (R6)") < 0
                   ? vmsh_error_set(err, -ENOMEM, "out of memory")
                   : 0;
    if (!vm->uuid)
        return 0;
    _cleanup_free_ char *dir = vmsh_path_join(VMSH_SWTPM_DIR, vm->uuid);
    if (!dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    static const char *const subdirs[] = {"tpm2", "."}; /* TPM 2.0, TPM 1.2 */
    for (size_t s = 0; s < VMSH_ARRAY_SIZE(subdirs); s++) {
        _cleanup_free_ char *sub = vmsh_path_join(dir, subdirs[s]);
        DIR *d = sub ? opendir(sub) : NULL;
        struct dirent *de;
        int r = 0;
        if (!d && sub && errno != ENOENT) {
            /* R6: TPM state that exists but cannot be read is not skipped */
            _cleanup_free_ char *why = NULL;
            if (asprintf(&why, "its TPM state %s cannot be read: %s", sub, strerror(errno)) < 0)
                why = NULL;
            if ((r = exclude_or_fail(o, c, vm->name, "tpm", why ? why : "unreadable TPM state",
                                     accepted, err)) < 0)
                return r;
            continue;
        }
        while (d && r == 0 && (de = readdir(d))) {
            if (de->d_name[0] == '.' || de->d_type != DT_REG)
                continue; /* ".lock" and the like are swtpm's, not state */
            _cleanup_free_ char *path = vmsh_path_join(sub, de->d_name), *name = NULL;
            vmsh_file *f = NULL;
            if (!path || asprintf(&name, "tpm/%s%s%s", strcmp(subdirs[s], ".") ? subdirs[s] : "",
                                  strcmp(subdirs[s], ".") ? "/" : "", de->d_name) < 0) {
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
                break;
            }
            if ((r = vmsh_component_add_file(c, name, "tpm", &f, err)) == 0) {
                vmsh_file_set_path(f, path);
                vmsh_file_set_source_file(f, path, "raw");
            }
        }
        if (d)
            closedir(d);
        if (r < 0)
            return r;
    }
    return 0;
}

/* A shut-off VM with a managed saved state (virsh managedsave, or
 * libvirt-guests at host shutdown) is, for its owner, a VM at rest in memory:
 * its disks are consistent with that memory, not with a clean shutdown. The
 * state is part of its backup (untouched, R1: read from libvirt's place),
 * so that a restore brings it back resumable (R15) instead of booting its
 * disks as after a crash. */
static int describe_managed_save(vmsh_component *c, const vmsh_vm *vm, vmsh_error **err)
{
    _cleanup_free_ char *path = NULL;
    struct stat st;
    if (asprintf(&path, VMSH_LIBVIRT_SAVE_DIR "/%s.save", vm->name) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0; /* not libvirt's system place (a session daemon): disks only */
    vmsh_file *f = NULL;
    int r = vmsh_component_add_file(c, "saved-state", "saved-state", &f, err);
    if (r < 0)
        return r;
    vmsh_file_set_path(f, path);
    vmsh_file_set_size(f, (uint64_t)st.st_size);
    return vmsh_file_set_source_file(f, path, "raw");
}

/* R6, last paragraph: something the VM needs that is not captured. With
 * --allow-excluded it is named in the backup document; without, the set
 * fails with the reason. */
static int exclude_or_fail(const vmsh_set_options *o, vmsh_component *c, const char *vm,
                           const char *name, const char *reason, size_t *accepted, vmsh_error **err)
{
    (*accepted)++;
    if (!o->allow_excluded)
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: %s: %s; the set fails rather than leave it out silently "
                              "(R6): fix it, or accept the exclusion with --allow-excluded",
                              vm, name, reason);
    return vmsh_component_add_excluded(c, name, reason) < 0
               ? vmsh_error_set(err, -ENOMEM, "out of memory")
               : 0;
}

static int describe_vm(vm_writer *w, vmsh_metadata *md, const vmsh_vm *vm,
                       const vmsh_set_options *o, vmsh_method requested, vm_item *it,
                       const vmsh_agent_info *prefetched, vmsh_error **err)
{
    unsigned dflags = o->include_shared ? VMSH_DISKS_INCLUDE_SHARED : 0;
    if (vm->state == VMSH_VM_OTHER)
        return vmsh_error_set(err, -EINVAL,
                              "VM %s is neither running, paused nor shut off (libvirt state %d): "
                              "bring it to one of those and retry",
                              vm->name, vm->libvirt_state);
    if (!vm->xml)
        return vmsh_error_set(err, -EINVAL, "VM %s: its domain XML cannot be read: %s", vm->name,
                              vm->xml_error ? vm->xml_error : "unknown");
    /* The backup document and the repository keep names as UTF-8 text
     * (issue 20): a name or path that is not cannot be recorded faithfully. */
    bool utf8 = vmsh_utf8_valid_str(vm->name);
    for (size_t i = 0; utf8 && i < vm->xml->n_disks; i++)
        utf8 = vmsh_utf8_valid_str(vm->xml->disks[i].source);
    if (!utf8)
        return vmsh_error_set(err, -EINVAL,
                              "VM %s: its name or a disk path is not valid UTF-8; vmshadow keeps "
                              "names as UTF-8 text: rename it or move the disk",
                              vm->name);
    vmsh_agent_info *probed = NULL;
    int r = 0;
    if (!prefetched && vm->state == VMSH_VM_RUNNING &&
        (r = vmsh_hv_agent_probe(w->hv, vm, w->agent_timeout_s, &probed, err)) < 0)
        return r;
    vmsh_method_choice mc = {0};
    r = vmsh_method_choose(vm, prefetched ? prefetched : probed, w->scratch_dir, dflags, requested,
                           &mc, err);
    vmsh_agent_info_free(probed);
    if (r < 0)
        return r;
    it->method = mc.method;
    it->prior = vm->state;
    it->persistent = vm->persistent;
    vmsh_component *c = NULL;
    if ((r = vmsh_metadata_add_component(md, vm->name, &c, err)) < 0)
        goto out;
    it->comp = c;
    if (vmsh_component_set_method(c, vmsh_method_name(mc.method), mc.reason) < 0 ||
        vmsh_component_set_states(c, vmsh_vm_state_name(vm->state), NULL) < 0) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    json_object *extra = json_object_new_object();
    json_object_object_add(extra, "uuid", jstr(vm->uuid));
    json_object_object_add(extra, "persistent", json_object_new_boolean(vm->persistent));
    json_object_object_add(extra, "domain_type", jstr(vm->xml->domain_type));
    json_object *disks = json_object_new_array();
    vmsh_file *f = NULL;
    if ((r = vmsh_component_add_file(c, "config/domain.xml", "config", &f, err)) < 0) {
        json_object_put(extra);
        json_object_put(disks);
        goto out;
    }
    it->targets = vmsh_calloc_array(vm->xml->n_disks, sizeof(char *));
    it->net_specs = vmsh_calloc_array(vm->xml->n_disks ? vm->xml->n_disks : 1, sizeof(char *));
    if (it->net_specs) {
        it->net_cap = vm->xml->n_disks;
    } else {
        free(it->targets);
        it->targets = NULL; /* out of memory, said below */
    }
    size_t n_excluded = 0, accepted = 0;
    for (size_t i = 0; it->targets && i < vm->xml->n_disks && r == 0; i++) {
        const vmsh_domxml_disk *d = &vm->xml->disks[i];
        const char *excl = vmsh_method_disk_exclusion(d, dflags);
        _cleanup_free_ char *label = NULL;
        if (asprintf(&label, "%s (%s %s)", d->target ? d->target : "?",
                     vmsh_disk_kind_name(d->kind), d->source ? d->source : "no source") < 0)
            label = NULL;
        if (excl) {
            /* R6: listed as excluded, with the reason; the CLI warns. */
            if (vmsh_component_add_excluded(c, label ? label : "?", excl) < 0)
                r = vmsh_error_set(err, -ENOMEM, "out of memory");
            if (d->kind != VMSH_DISK_EMPTY &&
                !(d->device && (!strcmp(d->device, "cdrom") || !strcmp(d->device, "floppy"))))
                n_excluded++;
            continue;
        }
        if (d->kind == VMSH_DISK_VOLUME && d->storage == VMSH_DISK_UNKNOWN) {
            r = vmsh_error_set(err, -ENOENT,
                               "VM %s: disk %s is volume '%s' of storage pool '%s', which libvirt "
                               "cannot resolve (is the pool active, does the volume exist?): "
                               "start the pool (virsh pool-start %s) and retry",
                               vm->name, d->target, d->volume, d->pool, d->pool);
            break;
        }
        vmsh_disk_kind on = d->kind == VMSH_DISK_VOLUME ? d->storage : d->kind;
        /* issue 25: a network disk of a VM the guest method's job does not
         * read is opened by a QEMU of our own (hv/netdisk.h): a shut-off
         * VM's through a private qemu-nbd, a saved VM's too, with its
         * overlay backed by the same source. A source that QEMU of ours
         * cannot open fails the set with why (R6: never left out silently). */
        if (on == VMSH_DISK_NETWORK && mc.method != VMSH_METHOD_GUEST) {
            size_t k = it->n_targets;
            if ((r = vmsh_hv_netdisk_spec(d, &it->net_specs[k], err)) < 0) {
                vmsh_error_prefix(err, "VM %s: by the %s method (%s)", vm->name,
                                  vmsh_method_name(mc.method), mc.reason ? mc.reason : "");
                break;
            }
        }
        _cleanup_free_ char *fname = NULL;
        if (asprintf(&fname, "disk/%s", d->target) < 0) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        if ((r = vmsh_component_add_file(c, fname, "disk", &f, err)) < 0)
            break;
        vmsh_file_set_path(f, d->source);
        struct stat st;
        if (on != VMSH_DISK_NETWORK && stat(d->source, &st) == 0 && S_ISREG(st.st_mode) &&
            d->format && strcmp(d->format, "raw") == 0)
            vmsh_file_set_size(f, st.st_size);
        if (!(it->targets[it->n_targets] = strdup(d->target))) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        it->n_targets++;
        json_object *dj = json_object_new_object();
        json_object_object_add(dj, "target", jstr(d->target));
        json_object_object_add(dj, "path", jstr(d->source));
        json_object_object_add(dj, "format", jstr(d->format));
        /* issue 25: what the disk is stored on, for the restore and for the
         * reasons of full reads */
        json_object_object_add(dj, "kind", jstr(vmsh_disk_kind_name(d->kind)));
        if (d->kind == VMSH_DISK_VOLUME) {
            json_object_object_add(dj, "storage", jstr(vmsh_disk_kind_name(d->storage)));
            json_object_object_add(dj, "pool", jstr(d->pool));
            json_object_object_add(dj, "volume", jstr(d->volume));
        }
        if (d->protocol)
            json_object_object_add(dj, "protocol", jstr(d->protocol));
        json_object_array_add(disks, dj);
    }
    /* R6: a VM none of whose disks is captured would be a backup of its
     * configuration only */
    if (r == 0 && it->n_targets == 0 && n_excluded > 0)
        r = exclude_or_fail(o, c, vm->name, "every disk",
                            "all of its disks are excluded (see `vmshadow vms`)", &accepted, err);
    json_object_object_add(extra, "disks", disks);
    vmsh_component_set_extra(c, extra);
    json_object_put(extra);
    if (r < 0)
        goto out;
    /* the checkpoint of a guest-method job names every disk (a bitmap on
     * the captured ones): kept from this definition, not read again */
    const char **cpd = NULL;
    size_t ncpd = 0;
    if (!it->targets || vmsh_hv_checkpoint_disks(vm->xml, &cpd, &ncpd) < 0 ||
        !(it->cp_disks = vmsh_calloc_array(ncpd ? ncpd : 1, sizeof(char *)))) {
        free(cpd);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ncpd && r == 0; i++)
        if ((it->cp_disks[i] = strdup(cpd[i])))
            it->n_cp_disks++;
        else
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
    free(cpd);
    if (r < 0)
        goto out;
    if (vm->xml->nvram_type && strcmp(vm->xml->nvram_type, "file") != 0) {
        /* R6: firmware variables that are not a file of this host */
        _cleanup_free_ char *why = NULL;
        if (asprintf(&why,
                     "the firmware variables are a %s source (%s), which vmshadow cannot read",
                     vm->xml->nvram_type, vm->xml->nvram ? vm->xml->nvram : "?") < 0)
            why = NULL;
        if ((r = exclude_or_fail(o, c, vm->name, "nvram", why ? why : "unreadable NVRAM", &accepted,
                                 err)) < 0)
            goto out;
    } else if (vm->xml->nvram && access(vm->xml->nvram, R_OK) == 0) {
        if ((r = vmsh_component_add_file(c, "nvram", "nvram", &f, err)) < 0)
            goto out;
        vmsh_file_set_path(f, vm->xml->nvram);
        vmsh_file_set_source_file(f, vm->xml->nvram, "raw");
    } else if (vm->xml->nvram && (errno != ENOENT || vm->state != VMSH_VM_SHUTOFF)) {
        /* a running VM's variables file exists (QEMU has it open); a shut-off
         * VM's may not exist yet (libvirt makes it at the first start) */
        _cleanup_free_ char *why = NULL;
        if (asprintf(&why, "its firmware variables file %s cannot be read: %s", vm->xml->nvram,
                     strerror(errno)) < 0)
            why = NULL;
        if ((r = exclude_or_fail(o, c, vm->name, "nvram", why ? why : "unreadable NVRAM", &accepted,
                                 err)) < 0)
            goto out;
    } else if (vm->xml->nvram) {
        if (vmsh_component_add_excluded(c, "nvram",
                                        "no firmware variables file yet: the VM has not run "
                                        "since it was defined (libvirt creates it at the first "
                                        "start)") < 0) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    /* R6, last paragraph: a direct-boot VM needs its kernel, initrd and DTB,
     * which are host files outside libvirt's control: named, never silently
     * dropped. They are configuration the host provides, so they are
     * listed as excluded with the path a restore needs. */
    static const char *const boot_names[] = {"kernel", "initrd", "dtb"};
    const char *boot_paths[] = {vm->xml->kernel, vm->xml->initrd, vm->xml->dtb};
    for (size_t k = 0; k < VMSH_ARRAY_SIZE(boot_names); k++) {
        if (!boot_paths[k] || !*boot_paths[k])
            continue;
        _cleanup_free_ char *why = NULL;
        if (asprintf(&why,
                     "direct-boot %s %s is a host file, not stored in the backup: a restore on "
                     "another host needs it there",
                     boot_names[k], boot_paths[k]) < 0 ||
            vmsh_component_add_excluded(c, boot_names[k], why) < 0) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    if (vm->xml->tpm_backend && (r = describe_tpm(c, vm, o, &accepted, err)) < 0)
        goto out;
    /* what --allow-excluded accepted: `backup` exits with its own code */
    if (accepted > 0)
        json_object_object_add(vmsh_component_extra(c), "accepted_exclusions",
                               json_object_new_int64((int64_t)accepted));
    for (size_t i = 0; i < vm->xml->n_ifaces; i++) {
        const vmsh_domxml_iface *ifc = &vm->xml->ifaces[i];
        json_object *nj = json_object_new_object();
        json_object_object_add(nj, "type", jstr(ifc->type));
        json_object_object_add(nj, "source", jstr(ifc->source));
        json_object_object_add(nj, "mac", jstr(ifc->mac));
        json_object_object_add(nj, "model", jstr(ifc->model));
        vmsh_component_add_network(c, nj);
        json_object_put(nj);
    }
    if (it->method == VMSH_METHOD_SAVED_STATE && vm->state != VMSH_VM_SHUTOFF &&
        (r = vmsh_component_add_file(c, "saved-state", "saved-state", &f, err)) < 0)
        goto out;
    if (vm->state == VMSH_VM_SHUTOFF && vm->managed_save &&
        (r = describe_managed_save(c, vm, err)) < 0)
        goto out;
out:
    vmsh_method_choice_clear(&mc);
    return r;
}

static int cmp_vm_name(const void *a, const void *b)
{
    return strcmp((*(vmsh_vm *const *)a)->name, (*(vmsh_vm *const *)b)->name);
}

/* The VMs of the set, sorted by name: every VM of the host for --all, else
 * the named ones, each looked up by its name (a host with many VMs is not
 * listed, nor their XML read, for a backup of a few). */
static int set_vms(vm_writer *w, const vmsh_set_options *o, vmsh_vm ***out, size_t *n,
                   vmsh_error **err)
{
    if (o->all)
        return vmsh_hv_list_vms(w->hv, out, n, err);
    vmsh_vm **vms = vmsh_calloc_array(o->n_targets ? o->n_targets : 1, sizeof(*vms));
    if (!vms)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t got = 0;
    int r = 0;
    for (size_t t = 0; t < o->n_targets && r == 0; t++) {
        bool dup = false;
        for (size_t k = 0; k < t && !dup; k++)
            dup = strcmp(o->targets[k], o->targets[t]) == 0;
        if (!dup && (r = vmsh_hv_get_vm(w->hv, o->targets[t], &vms[got], err)) == 0)
            got++;
    }
    if (r < 0) {
        vmsh_vm_list_free(vms, got);
        return r;
    }
    qsort(vms, got, sizeof(*vms), cmp_vm_name);
    *out = vms;
    *n = got;
    return 0;
}

/* Every entry point that may use the connection waits for the prefetch
 * first (a recover of a dead set runs undo before Identify). */
static void prefetch_join(vm_writer *w)
{
    if (w->pre_running) {
        pthread_join(w->pre_thread, NULL);
        w->pre_running = false;
    }
}

static void prefetch_clear(vm_writer *w)
{
    prefetch_join(w);
    for (size_t i = 0; i < w->pre_n; i++)
        free(w->pre_targets[i]);
    free(w->pre_targets);
    for (size_t i = 0; w->pre_agents && i < w->pre_nvms; i++)
        vmsh_agent_info_free(w->pre_agents[i]);
    free(w->pre_agents);
    vmsh_vm_list_free(w->pre_vms, w->pre_nvms);
    vmsh_error_free(w->pre_err);
    w->pre_targets = NULL;
    w->pre_n = 0;
    w->pre_agents = NULL;
    w->pre_vms = NULL;
    w->pre_nvms = 0;
    w->pre_err = NULL;
    w->pre_rc = 0;
}

static void *prefetch_main(void *arg)
{
    vm_writer *w = arg;
    vmsh_set_options o = {.targets = (const char *const *)w->pre_targets, .n_targets = w->pre_n};
    if ((w->pre_rc = vmsh_vmw_hv_ready(w, &w->pre_err)) < 0)
        return NULL;
    vmsh_hv_cache_domains(w->hv, true);
    if ((w->pre_rc = set_vms(w, &o, &w->pre_vms, &w->pre_nvms, &w->pre_err)) < 0)
        return NULL;
    if (!(w->pre_agents =
              vmsh_calloc_array(w->pre_nvms ? w->pre_nvms : 1, sizeof(*w->pre_agents)))) {
        w->pre_rc = vmsh_error_set(&w->pre_err, -ENOMEM, "out of memory");
        return NULL;
    }
    /* as describe_vm would: a running VM whose definition was read */
    for (size_t i = 0; i < w->pre_nvms && w->pre_rc == 0; i++) {
        const vmsh_vm *vm = w->pre_vms[i];
        if (vm->state == VMSH_VM_RUNNING && vm->xml)
            w->pre_rc =
                vmsh_hv_agent_probe(w->hv, vm, w->agent_timeout_s, &w->pre_agents[i], &w->pre_err);
    }
    return NULL;
}

void vmsh_vm_writer_prefetch(vmsh_writer_ops *ops, const char *const *targets, size_t n)
{
    vm_writer *w = (vm_writer *)ops;
    prefetch_clear(w);
    if (n == 0 || !(w->pre_targets = vmsh_calloc_array(n, sizeof(char *))))
        return;
    for (size_t i = 0; i < n; i++)
        if ((w->pre_targets[w->pre_n] = strdup(targets[i])))
            w->pre_n++;
    if (w->pre_n == n && pthread_create(&w->pre_thread, NULL, prefetch_main, w) == 0)
        w->pre_running = true;
    else
        prefetch_clear(w); /* Identify reads as usual */
}

/* True, with the prefetch's results and its outcome *rc, when it read this
 * set's VMs; else false (and what it read is dropped). */
static bool prefetch_take(vm_writer *w, const vmsh_set_options *o, vmsh_vm ***vms, size_t *n,
                          vmsh_agent_info ***agents, int *rc, vmsh_error **err)
{
    bool same = w->pre_targets && !o->all && o->n_targets == w->pre_n;
    for (size_t i = 0; same && i < o->n_targets; i++)
        same = strcmp(o->targets[i], w->pre_targets[i]) == 0;
    prefetch_join(w);
    if (!same) {
        prefetch_clear(w);
        return false;
    }
    *rc = w->pre_rc;
    vmsh_error_propagate(err, &w->pre_err);
    *vms = w->pre_vms;
    *n = w->pre_nvms;
    *agents = w->pre_agents;
    w->pre_vms = NULL;
    w->pre_nvms = 0;
    w->pre_agents = NULL;
    prefetch_clear(w);
    return true;
}

static int vmw_identify(vmsh_writer_ops *ops, vmsh_set *set, vmsh_metadata *md, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    prefetch_join(w);
    reset(w);
    w->freeze_start = w->freeze_end = 0;
    const vmsh_set_options *o = vmsh_set_options_of(set);
    if (!(w->set_id = strdup(vmsh_set_id(set))))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (!o->all && o->n_targets == 0)
        return 0; /* no VM in this set (script writers only) */
    vmsh_method requested = VMSH_METHOD_AUTO;
    if (o->method && vmsh_method_parse(o->method, &requested) < 0)
        return vmsh_error_set(err, -EINVAL, "unknown method '%s' (auto, saved-state, guest)",
                              o->method);
    vmsh_vm **vms = NULL;
    size_t n = 0;
    vmsh_agent_info **agents = NULL;
    int r = 0;
    if (!prefetch_take(w, o, &vms, &n, &agents, &r, err) &&
        ((r = vmsh_vmw_hv_ready(w, err)) < 0 || (r = set_vms(w, o, &vms, &n, err)) < 0))
        return r;
    if (r == 0) {
        vmsh_hv_cache_domains(w->hv, true); /* off again at an abort */
        if (!(w->items = vmsh_calloc_array(n ? n : 1, sizeof(*w->items))))
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n && r == 0; i++) {
        if (!selected(o, vms[i]->name))
            continue;
        vm_item *it = &w->items[w->n_items];
        if (!(it->name = strdup(vms[i]->name))) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        w->n_items++;
        r = describe_vm(w, md, vms[i], o, requested, it, agents ? agents[i] : NULL, err);
    }
    for (size_t i = 0; agents && i < n; i++)
        vmsh_agent_info_free(agents[i]);
    free(agents);
    vmsh_vm_list_free(vms, n);
    return r;
}

/* -------------------------------------------------------- prepare-snapshot */

/* QEMU runs as an unprivileged user under qemu:///system and must create the
 * NBD socket: the socket directory is private to that user (and root). */
static int make_socket_dir(const char *dir, vmsh_error **err)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return vmsh_error_set(err, -errno, "cannot create %s: %s", dir, strerror(errno));
    struct passwd *pw = geteuid() == 0 ? getpwnam("libvirt-qemu") : NULL;
    if (pw && chown(dir, pw->pw_uid, pw->pw_gid) < 0)
        return vmsh_error_set(err, -errno, "cannot hand %s to libvirt-qemu: %s", dir,
                              strerror(errno));
    return 0;
}

static int journal_simple(vmsh_set *set, const char *owner, const char *action, const char *k1,
                          const char *v1, const char *k2, const char *v2, const char *k3,
                          const char *v3, uint64_t *seq, vmsh_error **err)
{
    json_object *d = json_object_new_object();
    json_object_object_add(d, k1, jstr(v1));
    if (k2)
        json_object_object_add(d, k2, jstr(v2));
    if (k3)
        json_object_object_add(d, k3, jstr(v3));
    int r = vmsh_set_journal_begin(set, owner, action, d, seq, err);
    json_object_put(d);
    return r;
}

static int write_domain_xml(vm_writer *w, vm_item *it, size_t idx, vmsh_error **err)
{
    _cleanup_free_ char *xml = NULL;
    /* the persistent definition is what a restore registers again; a
     * transient VM has only its live one */
    int r = vmsh_hv_domain_xml(w->hv, it->name, it->persistent, &xml, err);
    if (r < 0)
        return r;
    char name[32];
    snprintf(name, sizeof(name), "vm%zu.xml", idx);
    if (!(it->xml_file = vmsh_path_join(w->run_dir, name)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if ((r = vmsh_fs_write_atomic(it->xml_file, xml, strlen(xml), 0600, err)) < 0)
        return r;
    vmsh_file *f = vmsh_component_find_file(it->comp, "config/domain.xml");
    return f ? vmsh_file_set_source_file(f, it->xml_file, "raw") : 0;
}

/* The disks the VM writer captures, as recorded at Identify. */
typedef struct disk_ref {
    const char *target, *path, *format;
    bool image_file; /* an image file (not a device node, not a network disk) */
    bool network;
} disk_ref;

static size_t disk_refs(const vm_item *it, disk_ref *out, size_t max)
{
    json_object *extra = vmsh_component_extra(it->comp), *disks = NULL;
    size_t n = 0;
    if (!extra || !json_object_object_get_ex(extra, "disks", &disks))
        return 0;
    for (size_t i = 0; i < json_object_array_length(disks) && n < max; i++) {
        json_object *d = json_object_array_get_idx(disks, i), *t = NULL, *p = NULL, *f = NULL;
        json_object *k = NULL, *st = NULL;
        json_object_object_get_ex(d, "target", &t);
        json_object_object_get_ex(d, "path", &p);
        json_object_object_get_ex(d, "format", &f);
        json_object_object_get_ex(d, "kind", &k);
        json_object_object_get_ex(d, "storage", &st);
        const char *on = st ? json_object_get_string(st) : k ? json_object_get_string(k) : "file";
        out[n++] = (disk_ref){json_object_get_string(t), json_object_get_string(p),
                              f ? json_object_get_string(f) : "raw", strcmp(on, "file") == 0,
                              strcmp(on, "network") == 0};
    }
    return n;
}

#define MAX_DISKS 64

/* Points the VM's captured disk files at the image files themselves: for a
 * shut-off VM (nothing can change them), and for a saved VM (it runs on
 * overlays until BackupComplete, so the images stay at the saved instant). */
static int sources_from_images(vm_item *it, vmsh_error **err)
{
    disk_ref d[MAX_DISKS];
    size_t n = disk_refs(it, d, MAX_DISKS);
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *fname = NULL;
        if (asprintf(&fname, "disk/%s", d[i].target) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        vmsh_file *f = vmsh_component_find_file(it->comp, fname);
        if (f && vmsh_file_set_source_file(f, d[i].path, d[i].format) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

/* Where the scratch files of a disk go: the scratch directory, else beside
 * an image file (R2 (c)); never beside a device node (issue 25): a block or
 * network disk without a scratch directory has them in the set's private
 * directory under /run, which QEMU's user may open (the state directory
 * need not be reachable for it). /run is memory: scratch-dir is the place
 * for large or busy block devices (docs/config.md). */
static char *scratch_dir_for(const vm_writer *w, const char *path, bool image_file)
{
    if (w->scratch_dir)
        return strdup(w->scratch_dir);
    return image_file ? vmsh_path_dirname(path) : strdup(w->sock_dir);
}

static char *overlay_path(const vm_writer *w, const vm_item *it, const disk_ref *d)
{
    _cleanup_free_ char *dir = scratch_dir_for(w, d->path, d->image_file);
    char *p = NULL;
    if (!dir ||
        asprintf(&p, "%s/.vmshadow-%.8s-%s-%s.overlay", dir, w->set_id, it->name, d->target) < 0)
        return NULL;
    return p;
}

static size_t target_index(const vm_item *it, const char *target)
{
    for (size_t k = 0; target && k < it->n_targets; k++)
        if (strcmp(it->targets[k], target) == 0)
            return k;
    return SIZE_MAX;
}

/* The network disk `target`'s source as QEMU opens it, or NULL. */
static const char *net_spec_of(const vm_item *it, const char *target)
{
    size_t k = target_index(it, target);
    return k < it->net_cap ? it->net_specs[k] : NULL;
}

/* Issue 25: each network disk of a VM that the guest method's job does not
 * read (shut off, or saved and running on overlays backed by the source)
 * is served read-only by a private qemu-nbd in a directory of its own under
 * the set's socket directory, and its file is read from there. Journalled
 * before it starts (the directory; qemu-nbd writes its process ID there):
 * BackupComplete, an abort and recover stop it; it also dies with us
 * (hv/netdisk.h). */
static int serve_network_disks(vm_writer *w, vmsh_set *set, vm_item *it, vmsh_error **err)
{
    int r = 0;
    for (size_t k = 0; k < it->n_targets && k < it->net_cap && r == 0; k++) {
        if (!it->net_specs[k])
            continue;
        _cleanup_free_ char *fname = NULL, *dir = NULL, *sock = NULL;
        if (asprintf(&fname, "disk/%s", it->targets[k]) < 0 ||
            asprintf(&dir, "%s/net-%s-%s", w->sock_dir, it->name, it->targets[k]) < 0) {
            fname = dir = NULL;
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        if (!(sock = vmsh_hv_netserve_socket(dir)))
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        if (strlen(sock) >= 108)
            return vmsh_error_set(err, -ENAMETOOLONG,
                                  "VM %s, disk %s: the socket path %s is too long for a Unix "
                                  "socket: use a shorter VM name",
                                  it->name, it->targets[k], sock);
        uint64_t seq = 0;
        if ((r = journal_simple(set, w->ops.id, "net-server", "vm", it->name, "target",
                                it->targets[k], "dir", dir, &seq, err)) < 0)
            return r;
        pid_t pid = 0;
        if ((r = vmsh_hv_netserve_start(dir, it->targets[k], it->net_specs[k], 60, &pid, err)) < 0)
            return vmsh_error_prefix(err, "VM %s, network disk %s (%s)", it->name, it->targets[k],
                                     vmsh_file_path(vmsh_component_find_file(it->comp, fname)));
        vmsh_file *f = vmsh_component_find_file(it->comp, fname);
        if (f && vmsh_file_set_source_nbd(f, sock, it->targets[k]) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        r = vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_DONE, err);
    }
    return r;
}

/* R1: the VM's memory goes to the state file and the VM stops; each captured
 * disk gets a qcow2 overlay on its image; the VM is started again from the
 * state file on the overlays, in the state it had. The images keep the saved
 * instant while the requestor reads them; BackupComplete merges the overlays
 * back. Downtime is the save and the restore, never the copy. */
static int save_vm(vm_writer *w, vmsh_set *set, vm_item *it, size_t idx, vmsh_error **err)
{
    char name[32];
    snprintf(name, sizeof(name), "vm%zu.state", idx);
    if (!(it->state_file = vmsh_path_join(w->run_dir, name)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = journal_simple(set, w->ops.id, "save", "vm", it->name, "state_file", it->state_file,
                           "prior", vmsh_vm_state_name(it->prior), &it->seq_save, err);
    if (r < 0)
        return r;
    it->saved = true; /* from here on abort must look at this VM */
    it->down_start = vmsh_now_ms();
    if ((r = vmsh_host_save(w->host, w->hv, it->name, it->state_file, err)) < 0)
        return r;
    int64_t saved_at = vmsh_now_ms();
    disk_ref d[MAX_DISKS];
    size_t n = disk_refs(it, d, MAX_DISKS);
    vmsh_disk_repath rp[MAX_DISKS];
    char *overlays[MAX_DISKS] = {0};
    for (size_t i = 0; i < n && r == 0; i++) {
        if (!(overlays[i] = overlay_path(w, it, &d[i]))) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        json_object *data = json_object_new_object();
        json_object_object_add(data, "vm", jstr(it->name));
        json_object_object_add(data, "target", jstr(d[i].target));
        json_object_object_add(data, "overlay", jstr(overlays[i]));
        json_object_object_add(data, "image", jstr(d[i].path));
        uint64_t seq = 0;
        r = vmsh_set_journal_begin(set, w->ops.id, "overlay", data, &seq, err);
        json_object_put(data);
        /* a network disk's overlay is backed by its source as QEMU opens
         * it (issue 25): its json: filename, format layer included (the
         * overlay's backing format names that layer again) */
        const char *backing = d[i].network ? net_spec_of(it, d[i].target) : d[i].path;
        if (r == 0 && !backing)
            r = vmsh_error_set(err, -EINVAL, "disk %s: no source to put below its overlay",
                               d[i].target);
        if (r == 0 && (r = vmsh_hv_image_create(overlays[i], backing, d[i].format, 0, err)) < 0)
            vmsh_error_prefix(err, "the overlay of disk %s (on %s)", d[i].target, d[i].path);
        if (r == 0)
            r = vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_DONE, err);
        rp[i] = (vmsh_disk_repath){.target = d[i].target,
                                   .path = overlays[i],
                                   .format = "qcow2",
                                   .backing = d[i].path,
                                   .backing_format = d[i].format,
                                   .backing_block = !d[i].image_file && !d[i].network,
                                   .backing_network = d[i].network};
    }
    _cleanup_free_ char *xml = NULL, *dxml = NULL;
    if (r == 0)
        r = vmsh_hv_save_image_xml(w->hv, it->state_file, &xml, err);
    if (r == 0) {
        vmsh_domxml_edit e = {.disks = rp, .n_disks = n};
        r = vmsh_domxml_edit_apply(xml, strlen(xml), &e, &dxml, err);
    }
    for (size_t i = 0; i < n; i++)
        free(overlays[i]);
    if (r < 0)
        return r; /* abort restores the VM from the state file, on its images */
    int64_t restore_at = vmsh_now_ms();
    if ((r = vmsh_host_restore(w->host, w->hv, it->name, it->state_file, dxml,
                               it->prior == VMSH_VM_PAUSED, err)) < 0)
        return vmsh_error_prefix(err, "VM %s was saved to %s but not started on its overlays",
                                 it->name, it->state_file);
    it->down_end = vmsh_now_ms();
    /* where the downtime went, for `show` and the benchmark */
    json_object *extra = vmsh_component_extra(it->comp);
    if (extra) {
        json_object_object_add(extra, "save_ms", json_object_new_int64(saved_at - it->down_start));
        json_object_object_add(extra, "overlay_ms", json_object_new_int64(restore_at - saved_at));
        json_object_object_add(extra, "restore_ms",
                               json_object_new_int64(it->down_end - restore_at));
    }
    vmsh_file *f = vmsh_component_find_file(it->comp, "saved-state");
    if (f) {
        vmsh_file_set_source_file(f, it->state_file, "raw");
        struct stat st;
        if (stat(it->state_file, &st) == 0)
            vmsh_file_set_size(f, st.st_size);
    }
    if ((r = sources_from_images(it, err)) < 0)
        return r;
    return vmsh_set_journal_mark(set, it->seq_save, VMSH_JOURNAL_DONE, err);
}

/* The connection that freezes and thaws the VM (vm_item.own_hv). */
static vmsh_hv *item_hv(vm_writer *w, vm_item *it)
{
    return it->own_hv ? it->own_hv : w->hv;
}

typedef struct par_calls {
    vm_writer *w;
    vm_item **items;
    int (*fn)(vm_writer *w, vm_item *it, vmsh_error **err);
} par_calls;

static void par_one(void *ctx, size_t i)
{
    par_calls *c = ctx;
    vm_item *it = c->items[i];
    it->par_rc = c->fn(c->w, it, &it->par_err);
}

/* Issue 27 point 4: runs fn on every item `want` selects at once
 * (vmsh_each_at_once); returns when all have ended, each outcome in its
 * item (par_rc, par_err). Out of memory: one after the other. */
static void each_vm_at_once(vm_writer *w, bool (*want)(const vm_item *),
                            int (*fn)(vm_writer *, vm_item *, vmsh_error **))
{
    vm_item **items = vmsh_calloc_array(w->n_items ? w->n_items : 1, sizeof(*items));
    size_t n = 0;
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        if (!want(it))
            continue;
        it->par_rc = 0;
        vmsh_error_free(it->par_err);
        it->par_err = NULL;
        if (items)
            items[n++] = it;
        else
            it->par_rc = fn(w, it, &it->par_err);
    }
    par_calls c = {w, items, fn};
    vmsh_each_at_once(n, par_one, &c);
    free(items);
}

static bool is_guest(const vm_item *it)
{
    return it->method == VMSH_METHOD_GUEST;
}

static int freeze_one(vm_writer *w, vm_item *it, vmsh_error **err)
{
    vmsh_trace_step(it->name, "freeze-sent");
    int r = vmsh_hv_fsfreeze(item_hv(w, it), it->name, err);
    vmsh_trace_step(it->name, "freeze-returned");
    return r;
}

/* Freezes every guest-method VM of the set at once (R2; issue 27 point 4):
 * the set's window is its slowest guest's freeze, not their sum. Every
 * freeze is journalled, and the VM marked frozen, before any starts: when
 * one fails or hangs, the abort thaws all of them (R5, R7), whichever
 * froze. The first failure, in the set's order of VMs, is the error. */
static int freeze_vms(vm_writer *w, vmsh_set *set, vmsh_error **err)
{
    int r = 0;
    size_t n = 0;
    for (size_t i = 0; i < w->n_items && r == 0; i++) {
        vm_item *it = &w->items[i];
        if (!is_guest(it))
            continue;
        if ((r = journal_simple(set, w->ops.id, "freeze", "vm", it->name, NULL, NULL, NULL, NULL,
                                &it->seq_freeze, err)) < 0)
            return r;
        it->frozen = true; /* a freeze that failed half-way is thawed by abort */
        n++;
    }
    if (n == 0)
        return 0;
    if (!w->freeze_start) {
        w->freeze_start = vmsh_now_ms();
        vmsh_trace_step(NULL, "window-start");
    }
    each_vm_at_once(w, is_guest, freeze_one);
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        if (!is_guest(it))
            continue;
        vmsh_error *e = it->par_err;
        it->par_err = NULL;
        int q = it->par_rc;
        if (q == -ETIMEDOUT) {
            /* A hung agent or fsfreeze hook: retrying the same way tends to
             * hang again, so say what to look at instead. */
            vmsh_error *te = NULL;
            vmsh_error_set(&te, -ETIMEDOUT,
                           "guest method (R2): the guest agent of VM %s did not finish freezing "
                           "its filesystems within %d s (%s); the set is aborted and a thaw is "
                           "sent (should the agent stay hung, 'vmshadow recover' thaws it once "
                           "it answers). Check qemu-guest-agent and its fsfreeze hook scripts "
                           "in the guest, raise freeze-limit in the config file, or back the VM "
                           "up with --method saved-state",
                           it->name, w->freeze_timeout_s, e ? e->message : "timed out");
            vmsh_error_free(e);
            e = te;
        } else if (q < 0) {
            if (!e)
                vmsh_error_set(&e, q, "VM %s: freezing failed: %s", it->name, strerror(-q));
            vmsh_error_prefix(&e, "guest method (R2)");
        } else if (r == 0) {
            /* inside the window: a freeze's undo is the same begun or done */
            q = vmsh_set_journal_mark_done_unsynced(set, it->seq_freeze, &e);
        }
        if (q < 0 && r == 0)
            r = q;
        vmsh_error_propagate(err, &e);
    }
    return r;
}

/* The size of the VM's disk `target` (the size of its scratch image): read
 * from the image, which costs neither a libvirt call nor three QEMU queries;
 * libvirt is asked only for formats other than qcow2 and raw. */
static int disk_capacity(vm_writer *w, const vm_item *it, const char *target, uint64_t *out,
                         vmsh_error **err)
{
    disk_ref d[MAX_DISKS];
    size_t n = disk_refs(it, d, MAX_DISKS);
    for (size_t i = 0; i < n; i++) {
        if (!d[i].target || strcmp(d[i].target, target) != 0 || !d[i].path)
            continue;
        if (d[i].network)
            break; /* no host path: libvirt knows its size */
        vmsh_error *e = NULL;
        int r = vmsh_hv_image_size(d[i].path, d[i].format, out, &e);
        if (r != -ENOTSUP) {
            vmsh_error_propagate(err, &e);
            if (r < 0)
                vmsh_error_prefix(err, "disk %s of VM %s", target, it->name);
            return r;
        }
        vmsh_error_free(e);
        break;
    }
    return vmsh_hv_disk_capacity(w->hv, it->name, target, out, err);
}

/* Registers a running guest-method VM's captured disks with the provider and
 * points the disk files at its NBD export; other VMs read their images. */
static int plan_disks(vm_writer *w, vmsh_set *set, vm_item *it, size_t idx, vmsh_error **err)
{
    if (it->method != VMSH_METHOD_GUEST) {
        vmsh_vmw_plan_direct_reads(w, set, it);
        if (vmsh_vmw_publish_plans(it) < 0)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        int r = it->saved ? 0 : sources_from_images(it, err);
        return r < 0 ? r : serve_network_disks(w, set, it, err);
    }
    if (it->n_targets == 0)
        return 0;
    char name[32];
    snprintf(name, sizeof(name), "vm%zu.sock", idx);
    _cleanup_free_ char *sock = vmsh_path_join(w->sock_dir, name);
    vmsh_hv_backup_disk *bd = vmsh_calloc_array(it->n_targets, sizeof(*bd));
    char **scratch = vmsh_calloc_array(it->n_targets, sizeof(char *));
    int r = sock && bd && scratch ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < it->n_targets && r == 0; i++) {
        _cleanup_free_ char *fname = NULL;
        if (asprintf(&fname, "disk/%s", it->targets[i]) < 0) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        vmsh_file *f = vmsh_component_find_file(it->comp, fname);
        /* R2 (c): scratch files live on the disk image's filesystem unless
         * scratch-dir says otherwise. Names carry the set, so they never
         * collide with a file that exists. */
        disk_ref dr[MAX_DISKS];
        size_t ndr = disk_refs(it, dr, MAX_DISKS);
        bool image_file = true;
        for (size_t k = 0; k < ndr; k++)
            if (dr[k].target && strcmp(dr[k].target, it->targets[i]) == 0)
                image_file = dr[k].image_file;
        _cleanup_free_ char *dir = scratch_dir_for(w, vmsh_file_path(f), image_file);
        if (!dir || asprintf(&scratch[i], "%s/.vmshadow-%.8s-%s-%s.scratch", dir, w->set_id,
                             it->name, it->targets[i]) < 0) {
            scratch[i] = NULL;
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        bd[i] = (vmsh_hv_backup_disk){.target = it->targets[i], .scratch = scratch[i]};
        r = disk_capacity(w, it, it->targets[i], &bd[i].capacity, err);
        if (r == 0)
            r = vmsh_file_set_source_nbd(f, sock, it->targets[i]);
    }
    _cleanup_free_ char *cp_xml = NULL;
    if (r == 0)
        r = vmsh_vmw_plan_job_reads(w, set, it, bd, it->n_targets, &cp_xml, err);
    if (r == 0 && vmsh_vmw_publish_plans(it) < 0)
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
    if (r == 0)
        r = w->capture->add(w->provider, set, it->name, sock, bd, it->n_targets, err);
    if (r == 0 && cp_xml)
        r = w->capture->add_checkpoint(w->provider, set, it->name, it->new_cp, cp_xml, err);
    for (size_t i = 0; scratch && i < it->n_targets; i++)
        free(scratch[i]);
    free(scratch);
    free(bd);
    return r;
}

static int vmw_prepare_snapshot(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    if (w->n_items == 0)
        return 0;
    int r = vmsh_vmw_hv_ready(w, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *runs = vmsh_path_join(w->state_dir, "run");
    if (!runs || !(w->run_dir = vmsh_path_join(runs, w->set_id)))
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* QEMU (an unprivileged user under qemu:///system) creates the NBD
     * sockets, so they cannot live in the private state directory; and a
     * socket path has at most 107 bytes. A private directory in /run (or
     * the user's runtime directory) serves both. */
    const char *rt = geteuid() == 0 ? "/run" : getenv("XDG_RUNTIME_DIR");
    if (asprintf(&w->sock_dir, "%s/vmshadow-%s", rt ? rt : "/tmp", w->set_id) < 0)
        w->sock_dir = NULL;
    if (!w->sock_dir)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if ((r = journal_simple(set, ops->id, "run-dir", "path", w->run_dir, "sockets", w->sock_dir,
                            NULL, NULL, &w->seq_run_dir, err)) < 0)
        return r;
    w->have_run_dir = true;
    if ((r = vmsh_fs_mkdir_p(w->run_dir, 0711, err)) < 0 ||
        (r = make_socket_dir(w->sock_dir, err)) < 0)
        return r;
    for (size_t i = 0; i < w->n_items && r == 0; i++)
        r = write_domain_xml(w, &w->items[i], i, err);
    /* Saves first (they take seconds), freezes last and together: every
     * guest of the set is frozen at once, for as short a time as can be. */
    for (size_t i = 0; i < w->n_items && r == 0; i++) {
        vm_item *it = &w->items[i];
        if (it->method == VMSH_METHOD_SAVED_STATE && it->prior != VMSH_VM_SHUTOFF)
            r = save_vm(w, set, it, i, err);
    }
    for (size_t i = 0; i < w->n_items && r == 0; i++)
        r = plan_disks(w, set, &w->items[i], i, err);
    /* The agent's timeout bounds the freeze. It is set before the provider
     * starts: libvirtd sets it under the VM's lock, which the checkpoint the
     * provider makes holds for ~30 ms (measured: 1 ms alone, 10-50 ms beside
     * the checkpoint). */
    bool first_guest = true;
    for (size_t i = 0; i < w->n_items && r == 0; i++) {
        vm_item *it = &w->items[i];
        if (!is_guest(it))
            continue;
        /* the second and later guests' own connections (each_vm_at_once),
         * opened here, before the window; the domain cache makes the
         * agent timeout's lookup the freeze's too */
        if (!first_guest && !it->own_hv) {
            if ((r = vmsh_hv_open(&it->own_hv, vmsh_hv_uri(w->hv), err)) < 0) {
                vmsh_error_prefix(err, "VM %s: a connection of its own for its freeze", it->name);
                break;
            }
            vmsh_hv_cache_domains(it->own_hv, true);
        }
        first_guest = false;
        r = vmsh_hv_agent_timeout(item_hv(w, it), it->name, w->freeze_timeout_s, err);
    }
    /* The provider makes the checkpoints (and the jobs' XML) now, before
     * the window, and the scratch images on a thread while the guests
     * freeze; its prepare, after this event, waits for them. */
    if (r == 0)
        r = w->capture->start(w->provider, set, err);
    if (r == 0)
        r = freeze_vms(w, set, err);
    return r;
}

/* ------------------------------------------------------------ post-snapshot */

/* The thaw runs on a thread of its own, so that the requestor starts
 * copying at once instead of after the agent's round trip (a guest-sync and
 * a thaw: ~8-10 ms under TCG). Nothing else uses the writer's connection
 * until BackupComplete or Abort joins the thread. A failed thaw is tried
 * again at once, as the abort would (R7: a guest stays frozen no longer
 * than it must); should it still fail, the join fails the set and the
 * abort's undo of the freeze tries once more. */
static int thaw_one(vm_writer *w, vm_item *it, vmsh_error **err)
{
    vmsh_hv *hv = item_hv(w, it);
    vmsh_error *e = NULL;
    vmsh_trace_step(it->name, "thaw-sent");
    int r = vmsh_hv_fsthaw(hv, it->name, &e);
    if (r < 0 && r != -ENOENT) {
        vmsh_error_free(e);
        e = NULL;
        r = vmsh_hv_fsthaw(hv, it->name, &e);
    }
    vmsh_trace_step(it->name, "thaw-returned");
    it->thaw_rc = r;
    it->thaw_err = e;
    if (r >= 0) {
        it->thawed_at = vmsh_now_ms();
        it->after = it->prior;
        vmsh_host_state(w->host, hv, it->name, &it->after, NULL);
    }
    return r;
}

static bool is_thaw_pending(const vm_item *it)
{
    return it->thaw_pending;
}

/* The guests thaw at once too (each_vm_at_once): the window ends with the
 * last of them. */
static void *thaw_main(void *arg)
{
    vm_writer *w = arg;
    each_vm_at_once(w, is_thaw_pending, thaw_one);
    bool thawed = true;
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        if (!it->thaw_pending)
            continue;
        thawed = thawed && it->thaw_rc >= 0;
        if (it->thaw_rc >= 0 && it->thawed_at > w->freeze_end)
            w->freeze_end = it->thawed_at;
    }
    /* then the older checkpoints (a set whose thaw failed aborts: they
     * stay, and so does the chain) */
    if (thawed)
        vmsh_vmw_prune_planned(w);
    return NULL;
}

static void component_after(vm_item *it, vmsh_vm_state now)
{
    vmsh_component_set_states(it->comp, vmsh_component_state_before(it->comp),
                              vmsh_vm_state_name(now));
    json_object *extra = vmsh_component_extra(it->comp);
    if (extra && it->saved && it->down_end)
        json_object_object_add(extra, "downtime_ms",
                               json_object_new_int64(it->down_end - it->down_start));
}

/* Waits for the thaw thread. With a set, records its outcome: the freeze
 * journal entries, the VMs' states after, the set's freeze window; the
 * first failed thaw is the error. */
static int thaw_join(vm_writer *w, vmsh_set *set, vmsh_error **err)
{
    thaw_wait(w);
    int first = 0;
    bool any = false;
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        if (!it->thaw_pending)
            continue;
        it->thaw_pending = false;
        any = true;
        vmsh_error *e = it->thaw_err;
        it->thaw_err = NULL;
        int r = it->thaw_rc;
        if (r >= 0) {
            it->frozen = false;
            component_after(it, it->after);
            r = set ? vmsh_set_journal_mark(set, it->seq_freeze, VMSH_JOURNAL_UNDONE, &e) : 0;
        } else {
            component_after(it, it->prior);
            vmsh_error_prefix(&e,
                              "VM %s: thawing its filesystems failed (the abort tries once more; "
                              "should the guest stay frozen, 'vmshadow recover' thaws it once "
                              "its agent answers)",
                              it->name);
        }
        if (r < 0 && first == 0)
            first = r;
        vmsh_error_propagate(err, &e);
    }
    if (any && set && w->freeze_start && w->freeze_end) {
        /* the guests were frozen from PrepareForSnapshot to their thaw,
         * longer than the set's Freeze..Thaw: that is the set's window */
        vmsh_set_note_window_ms(set, w->freeze_end - w->freeze_start);
        for (size_t i = 0; i < w->n_items; i++) {
            json_object *extra = vmsh_component_extra(w->items[i].comp);
            if (extra && w->items[i].method == VMSH_METHOD_GUEST)
                json_object_object_add(extra, "freeze_window_ms",
                                       json_object_new_int64(w->freeze_end - w->freeze_start));
        }
    }
    return first;
}

static int vmw_post_snapshot(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    size_t frozen = 0;
    /* the VMs that are not frozen first: the connection is the thaw
     * thread's from its start to its join */
    for (size_t i = 0; i < w->n_items; i++) {
        vm_item *it = &w->items[i];
        if (it->method == VMSH_METHOD_GUEST) {
            vmsh_vmw_note_job_fallback(w, set, it);
            vmsh_vmw_publish_plans(it); /* out of memory: the earlier plan, the export's own */
        }
        if ((it->thaw_pending = it->frozen)) {
            frozen++;
            continue;
        }
        vmsh_vm_state now = it->prior;
        if (it->prior != VMSH_VM_SHUTOFF)
            vmsh_host_state(w->host, w->hv, it->name, &now, NULL);
        component_after(it, now);
    }
    /* guest-method VMs are frozen ones: their pruning is the thread's */
    vmsh_vmw_prune_plan(w);
    if (frozen > 0) {
        w->thaw_running = pthread_create(&w->thaw_thread, NULL, thaw_main, w) == 0;
        if (!w->thaw_running)
            thaw_main(w); /* no thread: thawed here, recorded at the join */
    }
    return 0;
}

/* ------------------------------------------------------------------- undo */

/* Waits while a job (a save still being written by libvirtd after our
 * process died) runs on the VM: deciding before it ends could delete the
 * only copy of the VM's memory. */
static int wait_no_job(vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    for (int i = 0; i < 600; i++) {
        int busy = vmsh_hv_job_active(hv, vm, NULL);
        if (busy <= 0 || vmsh_hv_backup_active(hv, vm, NULL) == 1)
            return 0; /* a backup job is the provider's to end, not a save */
        usleep(100 * 1000);
    }
    return vmsh_error_set(err, -EAGAIN,
                          "VM %s still runs a job after 60 s; run 'vmshadow recover' again", vm);
}

/* `resumed`: the save is marked done, which save_vm does only once the VM
 * runs again from the state file (on its overlays). A VM found shut off
 * then has shut itself down (or was stopped) since: its disks have moved
 * on, and starting the old memory on them would corrupt its filesystems.
 * It stays off; only the state file goes (R7 is about what vmshadow did). */
static int undo_save(const vmsh_host_ops *host, vmsh_hv *hv, const json_object *data, bool resumed,
                     vmsh_error **err)
{
    const char *vm = vmsh_json_str(data, "vm"), *state_file = vmsh_json_str(data, "state_file");
    const char *prior = vmsh_json_str(data, "prior");
    if (!vm || !state_file || !prior)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'save' is missing members");
    bool prior_running = strcmp(prior, "running") == 0;
    int r = wait_no_job(hv, vm, err);
    if (r < 0)
        return r;
    vmsh_vm_state st = VMSH_VM_SHUTOFF;
    vmsh_error *e = NULL;
    r = vmsh_host_state(host, hv, vm, &st, &e);
    if (r == -ENOENT) { /* a transient VM that was saved: it exists only in the file */
        vmsh_error_free(e);
        st = VMSH_VM_SHUTOFF;
    } else if (r < 0) {
        vmsh_error_propagate(err, &e);
        return r;
    }
    if (st == VMSH_VM_SHUTOFF && !resumed) {
        if (access(state_file, R_OK) < 0)
            return vmsh_error_set(err, -ENOENT,
                                  "VM %s is shut off and its saved state %s is gone; start it "
                                  "with 'virsh start %s'",
                                  vm, state_file, vm);
        if ((r = vmsh_host_restore(host, hv, vm, state_file, NULL, !prior_running, err)) < 0)
            return r;
    } else if (st == VMSH_VM_PAUSED && prior_running) {
        if ((r = vmsh_host_resume(host, hv, vm, err)) < 0)
            return r;
    }
    if (unlink(state_file) < 0 && errno != ENOENT)
        return vmsh_error_set(err, -errno, "cannot remove state file %s: %s", state_file,
                              strerror(errno));
    return 0;
}

static int undo_freeze(vmsh_hv *hv, const json_object *data, vmsh_error **err)
{
    const char *vm = vmsh_json_str(data, "vm");
    if (!vm)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'freeze' has no VM");
    vmsh_error *e = NULL;
    int r = vmsh_hv_fsthaw(hv, vm, &e);
    if (r >= 0 || r == -ENOENT) {
        vmsh_error_free(e); /* thawed, or the VM is gone and nothing is frozen */
        return 0;
    }
    /* The thaw failed: fine only when the agent says nothing is frozen. */
    if (vmsh_hv_fsfreeze_status(hv, vm, NULL) == 0) {
        vmsh_error_free(e);
        return 0;
    }
    vmsh_error_propagate(err, &e);
    vmsh_error_set_retryable(err, true);
    return r;
}

/* A VM running on an overlay is switched back to its image with the overlay
 * merged in; an overlay no VM runs on is merged offline (a guest may have
 * written to it before it stopped), then removed. */
static int undo_overlay(const vmsh_host_ops *host, vmsh_hv *hv, const json_object *data,
                        vmsh_error **err)
{
    const char *vm = vmsh_json_str(data, "vm"), *target = vmsh_json_str(data, "target");
    const char *overlay = vmsh_json_str(data, "overlay");
    if (!vm || !target || !overlay)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'overlay' is missing members");
    if (access(overlay, F_OK) < 0)
        return 0; /* never created, or merged and removed already */
    int r = wait_no_job(hv, vm, err);
    if (r < 0)
        return r;
    vmsh_vm_state st = VMSH_VM_SHUTOFF;
    vmsh_error *e = NULL;
    r = vmsh_host_state(host, hv, vm, &st, &e);
    vmsh_error_free(e);
    _cleanup_free_ char *cur = NULL;
    if (r == 0 && st != VMSH_VM_SHUTOFF && vmsh_hv_disk_source(hv, vm, target, &cur, NULL) == 0 &&
        cur && strcmp(cur, overlay) == 0) {
        if ((r = vmsh_hv_block_commit_pivot(hv, vm, target, 600, err)) < 0)
            return r;
    } else {
        char buf[96];
        if ((r = vmsh_hv_image_commit(overlay, 600, buf, sizeof(buf), err)) == -EIO)
            return vmsh_error_set(err, -EIO,
                                  "cannot merge overlay %s of VM %s back into its image: qemu-img "
                                  "%s; merge it with 'qemu-img commit %s' before starting the VM",
                                  overlay, vm, buf, overlay);
        if (r < 0)
            return r;
    }
    if (unlink(overlay) < 0 && errno != ENOENT)
        return vmsh_error_set(err, -errno, "cannot remove overlay %s: %s", overlay,
                              strerror(errno));
    return 0;
}

/* Removes what the set put in its directory, but never a state file: only
 * the 'save' undo may remove those, once the VM is back. */
static int undo_run_dir(const json_object *data, vmsh_error **err)
{
    const char *dir = vmsh_json_str(data, "path");
    if (!dir)
        return vmsh_error_set(err, -EBADMSG, "journal entry 'run-dir' has no path");
    const char *socks = vmsh_json_str(data, "sockets");
    if (socks) {
        DIR *s = opendir(socks);
        struct dirent *se;
        while (s && (se = readdir(s))) {
            /* an overlay (a block device's, issue 25) is the 'overlay'
             * undo's to merge and remove: one it could not merge holds the
             * guest's writes and stays (the directory with it) */
            size_t n = strlen(se->d_name);
            if (n > 8 && strcmp(se->d_name + n - 8, ".overlay") == 0)
                continue;
            if (se->d_name[0] != '.' || strstr(se->d_name, ".scratch"))
                unlinkat(dirfd(s), se->d_name, 0);
        }
        if (s)
            closedir(s);
        rmdir(socks);
    }
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT
                   ? 0
                   : vmsh_error_set(err, -errno, "cannot read %s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n > 4 && strcmp(de->d_name + n - 4, ".xml") == 0)
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    if (rmdir(dir) < 0 && errno != ENOENT)
        return vmsh_error_set(err, -errno, "cannot remove %s: %s", dir, strerror(errno));
    return 0;
}

static int vmw_undo(vmsh_writer_ops *ops, const vmsh_journal_entry *entry, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    prefetch_join(w);
    int q = vmsh_vmw_undo_restore(w, entry, err);
    if (q != -ENOSYS)
        return q;
    if (strcmp(entry->action, "run-dir") == 0)
        return undo_run_dir(entry->data, err);
    if (strcmp(entry->action, "net-server") == 0) {
        const char *dir = vmsh_json_str(entry->data, "dir");
        if (!dir)
            return vmsh_error_set(err, -EBADMSG, "journal entry 'net-server' has no dir");
        return vmsh_hv_netserve_stop(vmsh_hv_netserve_pid(dir), dir, err);
    }
    int r = vmsh_vmw_hv_ready(w, err);
    if (r < 0)
        return r;
    if (strcmp(entry->action, "freeze") == 0)
        return undo_freeze(w->hv, entry->data, err);
    if (strcmp(entry->action, "save") == 0)
        return undo_save(w->host, w->hv, entry->data, entry->state == VMSH_JOURNAL_DONE, err);
    if (strcmp(entry->action, "overlay") == 0)
        return undo_overlay(w->host, w->hv, entry->data, err);
    return vmsh_error_set(err, -EINVAL, "%s: unknown journal action '%s'", ops->name,
                          entry->action);
}

/* Undoes this writer's journal entries of the set that are still open,
 * newest first; the first error is kept, the rest still runs. */
static int undo_open(vm_writer *w, vmsh_set *set, vmsh_error **err)
{
    vmsh_journal *j = vmsh_set_journal(set);
    if (!j)
        return 0;
    int first = 0;
    for (size_t i = vmsh_journal_count(j); i-- > 0;) {
        const vmsh_journal_entry *en = vmsh_journal_entry_at(j, i);
        if (strcmp(en->owner, w->ops.id) != 0 || en->state == VMSH_JOURNAL_UNDONE)
            continue;
        uint64_t seq = en->seq;
        vmsh_error *e = NULL;
        int r = vmw_undo(&w->ops, en, &e);
        if (r == 0)
            r = vmsh_set_journal_mark(set, seq, VMSH_JOURNAL_UNDONE, &e);
        if (r < 0 && first == 0)
            first = r;
        vmsh_error_propagate(err, &e);
    }
    return first;
}

static int vmw_backup_complete(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    int r = thaw_join(w, set, err);
    if (r < 0)
        return r;               /* the abort that follows thaws again */
    r = undo_open(w, set, err); /* VMs are back: removes state files and the run dir */
    if (r == 0 && w->hv)
        for (size_t i = 0; i < w->n_items; i++)
            vmsh_vmw_prune_checkpoints(w, &w->items[i]);
    reset(w);
    return r;
}

static int vmw_abort(vmsh_writer_ops *ops, vmsh_set *set, vmsh_error **err)
{
    vm_writer *w = (vm_writer *)ops;
    prefetch_join(w);
    vmsh_error *te = NULL;
    thaw_join(w, set, &te); /* a failed thaw: the undo below thaws again */
    vmsh_error_free(te);
    if (w->freeze_start && !w->freeze_end)
        w->freeze_end = vmsh_now_ms();
    if (w->hv) /* undo renews a connection to a libvirtd that restarted (R7) */
        vmsh_hv_cache_domains(w->hv, false);
    /* a set that failed before the providers' prepare: the coordinator
     * aborts no provider, but this writer started the pull provider's work */
    vmsh_error *pe = NULL;
    int pr = w->capture->cancel(w->provider, set, &pe);
    int r = undo_open(w, set, err);
    if (r == 0 && pr < 0)
        r = pr;
    vmsh_error_propagate(err, &pe);
    reset(w);
    return r;
}

static void vmw_free(vmsh_writer_ops *ops)
{
    vm_writer *w = (vm_writer *)ops;
    if (!w)
        return;
    prefetch_clear(w);
    reset(w);
    vmsh_hv_free(w->hv);
    free(w->repo_id);
    json_object_put(w->history);
    free(w->uri);
    free(w->state_dir);
    free(w->scratch_dir);
    free(w);
}

int vmsh_vm_writer_new(vmsh_writer_ops **out, const vmsh_vm_writer_config *cfg,
                       vmsh_provider_ops *provider, const vmsh_capture_ops *capture,
                       vmsh_error **err)
{
    vm_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    w->uri = cfg->uri ? strdup(cfg->uri) : NULL;
    w->state_dir = strdup(cfg->state_dir);
    w->scratch_dir = cfg->scratch_dir ? strdup(cfg->scratch_dir) : NULL;
    w->agent_timeout_s = cfg->agent_timeout_s > 0 ? cfg->agent_timeout_s : 3;
    w->freeze_timeout_s = cfg->freeze_timeout_s > 0 ? cfg->freeze_timeout_s : 60;
    w->provider = provider;
    w->capture = capture;
    w->host = cfg->host_ops ? cfg->host_ops : vmsh_host_ops_libvirt();
    if ((cfg->uri && !w->uri) || !w->state_dir || (cfg->scratch_dir && !w->scratch_dir)) {
        vmw_free(&w->ops);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    w->ops = (vmsh_writer_ops){
        .version = VMSH_WRITER_OPS_VERSION,
        .name = VMSH_VM_WRITER_NAME,
        .id = VMSH_VM_WRITER_ID,
        .kind = VMSH_VM_WRITER_KIND,
        .identify = vmw_identify,
        .prepare_snapshot = vmw_prepare_snapshot,
        .post_snapshot = vmw_post_snapshot,
        .backup_complete = vmw_backup_complete,
        .abort = vmw_abort,
        .pre_restore = vmsh_vmw_pre_restore,
        .post_restore = vmsh_vmw_post_restore,
        .undo = vmw_undo,
        .free = vmw_free,
    };
    *out = &w->ops;
    return 0;
}
