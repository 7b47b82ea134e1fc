/* Detection of Pacemaker-managed VMs (issue 22 point 1, SPEC R16) on the
 * CIB and crm_mon XML captured from the lab's single-node cluster
 * (tests/golden/pacemaker/capture.sh); the variants for states the lab
 * cannot reach with one node (no quorum, another node) are made from those
 * captures by changing one attribute. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vmshadow/hv/cluster.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#define DOM      "vmsh-golden-g1"
#define RSC      "vm-g1"
#define UUID_LEN 36

static char *golden(const char *name)
{
    const char *dir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/pacemaker/%s", dir, name);
    char *text = NULL;
    size_t len = 0;
    vmsh_error *err = NULL;
    if (vmsh_fs_read_all(path, 1 << 20, &text, &len, &err) < 0)
        fail_msg("%s", err->message);
    return text;
}

static char *golden_path(const char *name)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/pacemaker/%s", getenv("VMSH_GOLDEN_DIR"), name) > 0);
    return p;
}

/* `text` with the first `from` replaced by `to` (the test fails when absent). */
static char *replace(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    assert_non_null(at);
    char *out = NULL;
    assert_true(asprintf(&out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from)) > 0);
    return out;
}

static vmsh_cluster *load(const char *cib, const char *mon)
{
    _cleanup_free_ char *c = golden(cib), *m = golden(mon);
    vmsh_cluster *cl = NULL;
    vmsh_error *err = NULL;
    if (vmsh_cluster_parse(c, m, &cl, &err) < 0)
        fail_msg("%s", err->message);
    /* the captured config path is the lab's; point it at the captured file */
    for (size_t i = 0; i < cl->n_rscs; i++) {
        free(cl->rscs[i].config);
        cl->rscs[i].config = golden_path("g1-config.xml");
    }
    vmsh_cluster_read_configs(cl);
    cl->local_node = strdup("labnode");
    return cl;
}

static char *config_uuid(void)
{
    _cleanup_free_ char *x = golden("g1-config.xml");
    char *u = strstr(x, "<uuid>");
    assert_non_null(u);
    return strndup(u + 6, UUID_LEN);
}

static void finds_started_resource(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-started.xml", "mon-started.xml");
    assert_int_equal(c->n_rscs, 1);
    assert_true(c->quorum);
    assert_false(c->maintenance_mode);
    _cleanup_free_ char *uuid = config_uuid();
    bool mismatch = true;
    const vmsh_cluster_rsc *r = vmsh_cluster_find(c, DOM, uuid, &mismatch);
    assert_non_null(r);
    assert_false(mismatch);
    assert_string_equal(r->id, RSC);
    assert_string_equal(r->domain, DOM);
    assert_string_equal(r->uuid, uuid);
    assert_string_equal(r->hypervisor, "qemu:///system");
    assert_string_equal(r->role, "Started");
    assert_string_equal(r->node, "labnode");
    assert_true(r->active);
    assert_true(r->managed);
    assert_false(r->failed);
    assert_int_equal(r->fail_count, 0);
    assert_int_equal(r->n_failures, 0);
    assert_null(r->meta_target_role);
    assert_string_equal(vmsh_cluster_rsc_mode(c, r), "managed");
    assert_null(vmsh_cluster_find(c, "some-other-vm", NULL, NULL));
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_check(c, r, DOM, uuid, false, &err), 0);
    vmsh_cluster_free(c);
}

static void unmanaged_and_stopped(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-unmanaged.xml", "mon-unmanaged.xml");
    const vmsh_cluster_rsc *r = vmsh_cluster_find(c, DOM, NULL, NULL);
    assert_non_null(r);
    assert_false(r->managed);
    assert_string_equal(r->meta_is_managed, "false");
    assert_string_equal(vmsh_cluster_rsc_mode(c, r), "unmanaged");
    vmsh_cluster_free(c);

    c = load("cib-stopped.xml", "mon-stopped.xml");
    r = vmsh_cluster_find(c, DOM, NULL, NULL);
    assert_non_null(r);
    assert_string_equal(r->role, "Stopped");
    assert_null(r->node);
    assert_false(r->active);
    assert_string_equal(r->meta_target_role, "Stopped");
    vmsh_cluster_free(c);
}

/* a bare `virsh save` behind the cluster's back: the monitor failed */
static void failed_resource_is_refused(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-started.xml", "mon-failed.xml");
    const vmsh_cluster_rsc *r = vmsh_cluster_find(c, DOM, NULL, NULL);
    assert_non_null(r);
    assert_true(r->failed);
    assert_int_equal(r->fail_count, 1);
    assert_int_equal(r->n_failures, 1);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_check(c, r, DOM, NULL, false, &err), -EBUSY);
    assert_non_null(strstr(err->message, "failed"));
    assert_non_null(strstr(err->message, RSC));
    vmsh_error_free(err);
    vmsh_cluster_free(c);
}

static void no_quorum_is_refused(void **state)
{
    (void)state;
    _cleanup_free_ char *cib = golden("cib-started.xml"), *mon = golden("mon-started.xml");
    _cleanup_free_ char *mon2 = replace(mon, "with_quorum=\"true\"", "with_quorum=\"false\"");
    vmsh_cluster *c = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_parse(cib, mon2, &c, &err), 0);
    vmsh_cluster_read_configs(c); /* config path unreadable: the quorum check comes first */
    assert_false(c->quorum);
    assert_int_equal(vmsh_cluster_check(c, &c->rscs[0], DOM, NULL, false, &err), -EBUSY);
    assert_non_null(strstr(err->message, "quorum"));
    vmsh_error_free(err);
    vmsh_cluster_free(c);
}

static void other_node_is_refused_with_its_name(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-started.xml", "mon-started.xml");
    free(c->local_node);
    c->local_node = strdup("nodeB");
    const vmsh_cluster_rsc *r = vmsh_cluster_find(c, DOM, NULL, NULL);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_check(c, r, DOM, NULL, false, &err), -EPERM);
    assert_non_null(strstr(err->message, "runs on cluster node labnode"));
    vmsh_error_free(err);
    vmsh_cluster_free(c);
}

/* config names the VM with another UUID, or another name with its UUID */
static void config_naming_another_domain_is_refused(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-started.xml", "mon-started.xml");
    bool mismatch = false;
    const vmsh_cluster_rsc *r =
        vmsh_cluster_find(c, DOM, "00000000-0000-0000-0000-000000000001", &mismatch);
    assert_non_null(r);
    assert_true(mismatch);
    vmsh_error *err = NULL;
    assert_int_equal(
        vmsh_cluster_check(c, r, DOM, "00000000-0000-0000-0000-000000000001", false, &err), -EBUSY);
    assert_non_null(strstr(err->message, "names domain " DOM));
    vmsh_error_free(err);
    err = NULL;
    _cleanup_free_ char *uuid = config_uuid();
    r = vmsh_cluster_find(c, "renamed-vm", uuid, &mismatch);
    assert_non_null(r);
    assert_true(mismatch);
    assert_int_equal(vmsh_cluster_check(c, r, "renamed-vm", uuid, false, &err), -EBUSY);
    vmsh_error_free(err);
    vmsh_cluster_free(c);
}

static void unwritable_config_is_refused_for_restore(void **state)
{
    (void)state;
    vmsh_cluster *c = load("cib-started.xml", "mon-started.xml");
    /* a file in a directory that is not there: unwritable even for root
     * (the config was read from the captured file; only its path changes) */
    free(c->rscs[0].config);
    c->rscs[0].config = strdup("/nonexistent-vmsh-dir/g1.xml");
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_check(c, &c->rscs[0], DOM, NULL, true, &err), -EACCES);
    assert_non_null(strstr(err->message, "not writable"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_cluster_check(c, &c->rscs[0], DOM, NULL, false, NULL), 0);
    if (geteuid() == 0) {
        vmsh_cluster_free(c); /* root writes anywhere: the e2e test uses chattr +i */
        return;
    }
    char dir[] = "/tmp/vmsh-cluster-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cfg = NULL;
    assert_true(asprintf(&cfg, "%s/g1.xml", dir) > 0);
    _cleanup_free_ char *x = golden("g1-config.xml");
    assert_int_equal(vmsh_fs_write_atomic(cfg, x, strlen(x), 0444, NULL), 0);
    chmod(dir, 0555);
    free(c->rscs[0].config);
    c->rscs[0].config = cfg;
    assert_int_equal(vmsh_cluster_check(c, &c->rscs[0], DOM, NULL, true, &err), -EACCES);
    vmsh_error_free(err);
    assert_int_equal(vmsh_cluster_check(c, &c->rscs[0], DOM, NULL, false, NULL), 0);
    chmod(dir, 0755);
    unlink(cfg);
    rmdir(dir);
    vmsh_cluster_free(c);
}

static void maintenance_modes(void **state)
{
    (void)state;
    _cleanup_free_ char *cib = golden("cib-started.xml"), *mon = golden("mon-started.xml");
    _cleanup_free_ char *mon2 =
        replace(mon, "maintenance-mode=\"false\"", "maintenance-mode=\"true\"");
    vmsh_cluster *c = NULL;
    assert_int_equal(vmsh_cluster_parse(cib, mon2, &c, NULL), 0);
    assert_true(c->maintenance_mode);
    assert_string_equal(vmsh_cluster_rsc_mode(c, &c->rscs[0]), "maintenance");
    vmsh_cluster_free(c);
    _cleanup_free_ char *cib2 = replace(cib, "<meta_attributes id=\"vm-g1-meta\"/>",
                                        "<meta_attributes id=\"vm-g1-meta\"><nvpair id=\"m1\" "
                                        "name=\"maintenance\" value=\"true\"/></meta_attributes>");
    assert_int_equal(vmsh_cluster_parse(cib2, mon, &c, NULL), 0);
    assert_string_equal(c->rscs[0].meta_maintenance, "true");
    assert_string_equal(vmsh_cluster_rsc_mode(c, &c->rscs[0]), "maintenance");
    vmsh_cluster_free(c);
}

static void rejects_garbage_and_ignores_other_agents(void **state)
{
    (void)state;
    _cleanup_free_ char *cib = golden("cib-started.xml"), *mon = golden("mon-started.xml");
    vmsh_cluster *c = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_cluster_parse("<cib", mon, &c, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_cluster_parse(cib, "<other/>", &c, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_cluster_parse("<domain/>", mon, &c, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    /* an external entity is never fetched: the file's text does not appear */
    const char *evil = "<?xml version='1.0'?><!DOCTYPE cib [<!ENTITY x SYSTEM "
                       "'file:///etc/passwd'>]><cib><configuration><resources>"
                       "<primitive id='&x;' class='ocf' provider='heartbeat' type='VirtualDomain'/>"
                       "</resources></configuration></cib>";
    int r = vmsh_cluster_parse(evil, mon, &c, &err);
    assert_true(r == 0 || r == -EINVAL);
    for (size_t i = 0; r == 0 && i < c->n_rscs; i++)
        assert_null(strstr(c->rscs[i].id, "root:"));
    vmsh_cluster_free(c);
    vmsh_error_free(err);
    _cleanup_free_ char *dummy = replace(cib, "type=\"VirtualDomain\"", "type=\"Dummy\"");
    assert_int_equal(vmsh_cluster_parse(dummy, mon, &c, NULL), 0);
    assert_int_equal(c->n_rscs, 0);
    assert_null(vmsh_cluster_find(c, DOM, NULL, NULL));
    vmsh_cluster_free(c);
    vmsh_cluster_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(finds_started_resource),
        cmocka_unit_test(unmanaged_and_stopped),
        cmocka_unit_test(failed_resource_is_refused),
        cmocka_unit_test(no_quorum_is_refused),
        cmocka_unit_test(other_node_is_refused_with_its_name),
        cmocka_unit_test(config_naming_another_domain_is_refused),
        cmocka_unit_test(unwritable_config_is_refused_for_restore),
        cmocka_unit_test(maintenance_modes),
        cmocka_unit_test(rejects_garbage_and_ignores_other_agents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
