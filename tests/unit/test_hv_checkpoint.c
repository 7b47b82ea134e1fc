/* The checkpoint operations of the hypervisor layer (issue 7) against
 * libvirt's test driver (test:///default: one private state per connection,
 * a running domain "test" with one disk vda): the XML vmshadow creates a
 * checkpoint from is accepted by libvirt and puts a bitmap only on the disks
 * asked for; checkpoints are found, listed by prefix (a user's own are left
 * alone) and deleted; the domain ID tells a running VM from a stopped one. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/hv/hv.h>
#include <vmshadow/hv/hvops.h>

#include "hv/hv_private.h"

static void create(vmsh_hv *hv, const char *xml)
{
    virDomainPtr d = virDomainLookupByName(vmsh_hv_conn(hv), "test");
    assert_non_null(d);
    virDomainCheckpointPtr cp = virDomainCheckpointCreateXML(d, xml, 0);
    assert_non_null(cp);
    virDomainCheckpointFree(cp);
    virDomainFree(d);
}

static void checkpoints(void **state)
{
    (void)state;
    vmsh_hv *hv = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_hv_open(&hv, "test:///default", &err), 0);

    const char *targets[] = {"vda"};
    const char *disks[] = {"vda"};
    char *xml = NULL;
    assert_int_equal(vmsh_hv_checkpoint_xml("vmshadow-1", disks, 1, targets, 1, &xml, &err), 0);
    assert_non_null(strstr(xml, "<name>vmshadow-1</name>"));
    assert_non_null(strstr(xml, "<disk name='vda' checkpoint='bitmap'/>"));
    create(hv, xml);
    free(xml);
    /* no target: the disk gets no bitmap */
    assert_int_equal(vmsh_hv_checkpoint_xml("vmshadow-2", disks, 1, NULL, 0, &xml, &err), 0);
    assert_non_null(strstr(xml, "<disk name='vda' checkpoint='no'/>"));
    free(xml);
    assert_int_equal(vmsh_hv_checkpoint_xml("vmshadow-2", disks, 1, targets, 1, &xml, &err), 0);
    create(hv, xml);
    free(xml);
    create(hv, "<domaincheckpoint><name>users-own</name></domaincheckpoint>");

    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "test", "vmshadow-1", &err), 1);
    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "test", "vmshadow-9", &err), 0);
    assert_null(err);
    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "no-such-vm", "vmshadow-1", &err), -ENOENT);
    vmsh_error_freep(&err);

    char **names = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_hv_checkpoint_list(hv, "test", "vmshadow-", &names, &n, &err), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(strstr(names[i], "vmshadow-"));
        free(names[i]);
    }
    free(names);

    /* deleting is idempotent: a checkpoint or VM that is gone is fine */
    assert_int_equal(vmsh_hv_checkpoint_delete(hv, "test", "vmshadow-1", false, &err), 0);
    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "test", "vmshadow-1", &err), 0);
    assert_int_equal(vmsh_hv_checkpoint_delete(hv, "test", "vmshadow-1", false, &err), 0);
    assert_int_equal(vmsh_hv_checkpoint_delete(hv, "no-such-vm", "vmshadow-1", false, &err), 0);
    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "test", "vmshadow-2", &err), 1);
    assert_int_equal(vmsh_hv_checkpoint_exists(hv, "test", "users-own", &err), 1);
    assert_null(err);

    int id = 0;
    assert_int_equal(vmsh_hv_domain_id(hv, "test", &id, &err), 0);
    assert_true(id > 0);
    assert_int_equal(vmsh_hv_stop(hv, "test", 0, &err), 0);
    assert_int_equal(vmsh_hv_domain_id(hv, "test", &id, &err), 0);
    assert_int_equal(id, -1);
    assert_null(err);
    vmsh_hv_free(hv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(checkpoints)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
