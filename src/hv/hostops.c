/* hostops.c - the VM host operations' default table, libvirt's (issue 21),
 * and the calls that put an implementation's hooks around them
 * (include/vmshadow/hv/hostops.h). */
#include <vmshadow/hv/hostops.h>

#include <stddef.h>

static int lv_state(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_vm_state *out,
                    vmsh_error **err)
{
    return vmsh_hv_state(hv, vm, out, err);
}

static int lv_stop(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, int grace_s,
                   vmsh_error **err)
{
    return vmsh_hv_stop(hv, vm, grace_s, err);
}

static int lv_save(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, const char *path,
                   vmsh_error **err)
{
    return vmsh_hv_save(hv, vm, path, err);
}

static int lv_restore(const vmsh_host_ops *self, vmsh_hv *hv, const char *path, const char *dxml,
                      bool paused, vmsh_error **err)
{
    return vmsh_hv_restore(hv, path, dxml, paused, err);
}

static int lv_resume(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    return vmsh_hv_resume(hv, vm, err);
}

static int lv_define(const vmsh_host_ops *self, vmsh_hv *hv, const char *xml, vmsh_error **err)
{
    return vmsh_hv_define(hv, xml, err);
}

static int lv_undefine(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    return vmsh_hv_undefine(hv, vm, err);
}

static int lv_managed_save(const vmsh_host_ops *self, vmsh_hv *hv, const char *vm, bool running,
                           vmsh_error **err)
{
    return vmsh_hv_managed_save(hv, vm, running, err);
}

static const vmsh_host_ops libvirt_ops = {
    .version = VMSH_HOST_OPS_VERSION,
    .name = "libvirt",
    .state = lv_state,
    .stop = lv_stop,
    .save = lv_save,
    .restore = lv_restore,
    .resume = lv_resume,
    .define = lv_define,
    .undefine = lv_undefine,
    .managed_save = lv_managed_save,
};

const vmsh_host_ops *vmsh_host_ops_libvirt(void)
{
    return &libvirt_ops;
}

static const vmsh_host_ops *ops_or_default(const vmsh_host_ops *o)
{
    return o ? o : &libvirt_ops;
}

static int before(const vmsh_host_ops *o, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                  vmsh_error **err)
{
    return o->before ? o->before(o, hv, a, vm, err) : 0;
}

static int after(const vmsh_host_ops *o, vmsh_hv *hv, vmsh_host_action a, const char *vm, int r)
{
    if (o->after)
        o->after(o, hv, a, vm, r);
    return r;
}

int vmsh_host_state(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_vm_state *out,
                    vmsh_error **err)
{
    o = ops_or_default(o);
    return o->state(o, hv, vm, out, err);
}

int vmsh_host_stop(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, int grace_s,
                   vmsh_error **err)
{
    o = ops_or_default(o);
    int r = before(o, hv, VMSH_HOST_STOP, vm, err);
    if (r < 0)
        return r;
    return after(o, hv, VMSH_HOST_STOP, vm, o->stop(o, hv, vm, grace_s, err));
}

int vmsh_host_save(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, const char *path,
                   vmsh_error **err)
{
    o = ops_or_default(o);
    int r = before(o, hv, VMSH_HOST_SAVE, vm, err);
    if (r < 0)
        return r;
    return after(o, hv, VMSH_HOST_SAVE, vm, o->save(o, hv, vm, path, err));
}

int vmsh_host_restore(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, const char *path,
                      const char *dxml, bool paused, vmsh_error **err)
{
    o = ops_or_default(o);
    int r = before(o, hv, VMSH_HOST_RESTORE, vm, err);
    if (r < 0)
        return r;
    return after(o, hv, VMSH_HOST_RESTORE, vm, o->restore(o, hv, path, dxml, paused, err));
}

int vmsh_host_resume(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    o = ops_or_default(o);
    int r = before(o, hv, VMSH_HOST_RESUME, vm, err);
    if (r < 0)
        return r;
    return after(o, hv, VMSH_HOST_RESUME, vm, o->resume(o, hv, vm, err));
}

int vmsh_host_define(const vmsh_host_ops *o, vmsh_hv *hv, const char *xml, vmsh_error **err)
{
    o = ops_or_default(o);
    return o->define(o, hv, xml, err);
}

int vmsh_host_undefine(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    o = ops_or_default(o);
    return o->undefine(o, hv, vm, err);
}

int vmsh_host_managed_save(const vmsh_host_ops *o, vmsh_hv *hv, const char *vm, bool running,
                           vmsh_error **err)
{
    o = ops_or_default(o);
    return o->managed_save(o, hv, vm, running, err);
}
