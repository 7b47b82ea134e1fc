/* Unit tests of the VM host operations' table (src/hv/hostops.c, issue
 * 21): the hooks run around save, stop, restore and resume in order, a
 * refusing `before` hook keeps the operation from running, and the default
 * table is libvirt's. No libvirt needed: the table is a fake. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/hv/hostops.h>

static char log_[512];

static void logf_(const char *fmt, ...)
{
    size_t n = strlen(log_);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(log_ + n, sizeof(log_) - n, fmt, ap);
    va_end(ap);
}

static const char *const names[] = {"save", "stop", "restore", "resume"};

static int f_save(const vmsh_host_ops *s, vmsh_hv *hv, const char *vm, const char *path,
                  vmsh_error **err)
{
    logf_("save(%s,%s) ", vm, path);
    return 0;
}

static int f_stop(const vmsh_host_ops *s, vmsh_hv *hv, const char *vm, int grace, vmsh_error **err)
{
    logf_("stop(%s,%d) ", vm, grace);
    return vmsh_error_set(err, -EIO, "cannot stop");
}

static int f_restore(const vmsh_host_ops *s, vmsh_hv *hv, const char *path, const char *dxml,
                     bool paused, vmsh_error **err)
{
    logf_("restore(%s,%d) ", path, paused);
    return 0;
}

static int f_resume(const vmsh_host_ops *s, vmsh_hv *hv, const char *vm, vmsh_error **err)
{
    logf_("resume(%s) ", vm);
    return 0;
}

static int refuse_restore;

static int f_before(const vmsh_host_ops *s, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                    vmsh_error **err)
{
    logf_("before-%s ", names[a]);
    if (a == VMSH_HOST_RESTORE && refuse_restore)
        return vmsh_error_set(err, -EPERM, "the cluster says no");
    return 0;
}

static void f_after(const vmsh_host_ops *s, vmsh_hv *hv, vmsh_host_action a, const char *vm,
                    int result)
{
    logf_("after-%s=%d ", names[a], result);
}

static const vmsh_host_ops fake = {
    .version = VMSH_HOST_OPS_VERSION,
    .name = "fake-cluster",
    .save = f_save,
    .stop = f_stop,
    .restore = f_restore,
    .resume = f_resume,
    .before = f_before,
    .after = f_after,
};

static void test_hooks_order(void **state)
{
    log_[0] = '\0';
    refuse_restore = 0;
    assert_int_equal(vmsh_host_save(&fake, NULL, "vm1", "/s", NULL), 0);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_host_stop(&fake, NULL, "vm1", 5, &err), -EIO);
    vmsh_error_free(err);
    assert_int_equal(vmsh_host_restore(&fake, NULL, "vm1", "/s", NULL, true, NULL), 0);
    assert_int_equal(vmsh_host_resume(&fake, NULL, "vm1", NULL), 0);
    assert_string_equal(log_, "before-save save(vm1,/s) after-save=0 "
                              "before-stop stop(vm1,5) after-stop=-5 "
                              "before-restore restore(/s,1) after-restore=0 "
                              "before-resume resume(vm1) after-resume=0 ");
}

static void test_before_refuses(void **state)
{
    log_[0] = '\0';
    refuse_restore = 1;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_host_restore(&fake, NULL, "vm1", "/s", NULL, false, &err), -EPERM);
    assert_string_equal(err->message, "the cluster says no");
    vmsh_error_free(err);
    assert_string_equal(log_, "before-restore "); /* not restored, no after */
}

static void test_default_is_libvirt(void **state)
{
    const vmsh_host_ops *o = vmsh_host_ops_libvirt();
    assert_int_equal(o->version, VMSH_HOST_OPS_VERSION);
    assert_string_equal(o->name, "libvirt");
    assert_null(o->before);
    assert_null(o->after);
    assert_non_null(o->save);
    assert_non_null(o->managed_save);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hooks_order),
        cmocka_unit_test(test_before_refuses),
        cmocka_unit_test(test_default_is_libvirt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
