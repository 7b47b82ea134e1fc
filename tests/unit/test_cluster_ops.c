/* The cluster steps of a backup and a restore (issue 22 points 2-4, SPEC
 * R16) that need no running cluster: which backups are refused before
 * anything changes (the requestor's decision on the captured CIB and
 * crm_mon XML of tests/golden/pacemaker), the journal entries of the cluster
 * steps (golden file tests/golden/documents/journal-cluster-v1.journal,
 * docs/formats/journal.md) and the undo of the config rewrite. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vmshadow/coord/journal.h>
#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hostops_cluster.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include "requestor/requestor_priv.h"

#define DOM "vmsh-golden-g1"

static char *golden(const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", getenv("VMSH_GOLDEN_DIR"), name);
    char *text = NULL;
    size_t len = 0;
    vmsh_error *err = NULL;
    if (vmsh_fs_read_all(path, 1 << 20, &text, &len, &err) < 0)
        fail_msg("%s", err->message);
    return text;
}

static vmsh_cluster *load(const char *mon)
{
    _cleanup_free_ char *c = golden("pacemaker/cib-started.xml");
    _cleanup_free_ char *m = golden(mon);
    vmsh_cluster *cl = NULL;
    vmsh_error *err = NULL;
    if (vmsh_cluster_parse(c, m, &cl, &err) < 0)
        fail_msg("%s", err->message);
    for (size_t i = 0; i < cl->n_rscs; i++) {
        free(cl->rscs[i].config);
        assert_true(asprintf(&cl->rscs[i].config, "%s/pacemaker/g1-config.xml",
                             getenv("VMSH_GOLDEN_DIR")) > 0);
    }
    vmsh_cluster_read_configs(cl);
    cl->local_node = strdup("labnode");
    return cl;
}

static int backup_check(vmsh_cluster *c, const char *method, vmsh_error **err)
{
    const char *targets[] = {DOM};
    req_host h = {.cluster = c};
    vmsh_set_options so = {.targets = targets, .n_targets = 1, .method = method};
    return req_cluster_backup_check(&h, &so, NULL, 0, err);
}

/* A started, healthy resource: any method. */
static void healthy_resource_backs_up(void **state)
{
    (void)state;
    vmsh_cluster *c = load("pacemaker/mon-started.xml");
    assert_int_equal(backup_check(c, "saved-state", NULL), 0);
    assert_int_equal(backup_check(c, "guest", NULL), 0);
    assert_int_equal(backup_check(c, "auto", NULL), 0);
    vmsh_cluster_free(c);
}

/* A failed resource: a saved-state backup (which changes the resource) is
 * refused; the guest method leaves the resource alone and goes on. */
static void failed_resource_refuses_saved_state_only(void **state)
{
    (void)state;
    vmsh_cluster *c = load("pacemaker/mon-failed.xml");
    vmsh_error *err = NULL;
    assert_int_equal(backup_check(c, "saved-state", &err), -EBUSY);
    assert_non_null(strstr(err->message, "failed state"));
    assert_non_null(strstr(err->message, "crm_resource --cleanup"));
    vmsh_error_free(err);
    assert_int_equal(backup_check(c, "guest", NULL), 0);
    vmsh_cluster_free(c);
}

/* A VM the cluster runs on another node: refused whatever the method, with
 * that node's name (vmshadow acts on its own host only). */
static void other_node_refuses_every_method(void **state)
{
    (void)state;
    vmsh_cluster *c = load("pacemaker/mon-started.xml");
    free(c->local_node);
    c->local_node = strdup("nodeB");
    const char *methods[] = {"saved-state", "guest", "auto"};
    for (size_t i = 0; i < 3; i++) {
        vmsh_error *err = NULL;
        assert_int_equal(backup_check(c, methods[i], &err), -EPERM);
        assert_non_null(strstr(err->message, "runs on cluster node labnode"));
        vmsh_error_free(err);
    }
    vmsh_cluster_free(c);
}

/* No cluster, or a VM no resource manages: nothing to refuse. */
static void no_cluster_no_refusal(void **state)
{
    (void)state;
    assert_int_equal(backup_check(NULL, "saved-state", NULL), 0);
    vmsh_cluster *c = load("pacemaker/mon-failed.xml");
    const char *targets[] = {"another-vm"};
    req_host h = {.cluster = c};
    vmsh_set_options so = {.targets = targets, .n_targets = 1, .method = "saved-state"};
    assert_int_equal(req_cluster_backup_check(&h, &so, NULL, 0, NULL), 0);
    vmsh_cluster_free(c);
}

/* backup --all on a node where a VM the cluster runs elsewhere is also
 * defined: refused with that node's name (its disks are in use there);
 * the same VM run here, or VMs no resource manages, pass. */
static void all_refuses_vms_run_on_another_node(void **state)
{
    (void)state;
    vmsh_cluster *c = load("pacemaker/mon-started.xml"); /* DOM runs on labnode */
    req_host h = {.cluster = c};
    vmsh_set_options so = {.all = true, .method = "guest"};
    const char *here[] = {"plain-vm", DOM};
    assert_int_equal(req_cluster_backup_check(&h, &so, here, 2, NULL), 0);
    free(c->local_node);
    c->local_node = strdup("nodeB");
    vmsh_error *err = NULL;
    assert_int_equal(req_cluster_backup_check(&h, &so, here, 2, &err), -EPERM);
    assert_non_null(strstr(err->message, "runs it on node labnode"));
    assert_non_null(strstr(err->message, DOM));
    vmsh_error_free(err);
    const char *others[] = {"plain-vm"};
    assert_int_equal(req_cluster_backup_check(&h, &so, others, 1, NULL), 0);
    so.all = false; /* named VMs only: the list is not read */
    assert_int_equal(req_cluster_backup_check(&h, &so, here, 2, NULL), 0);
    vmsh_cluster_free(c);
}

/* The golden journal of the cluster steps reads back with its owner,
 * actions, data and states. */
static void golden_journal_reads(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmsh-test-cjournal-XXXXXX";
    assert_non_null(mkdtemp(dir));
    _cleanup_free_ char *text = golden("documents/journal-cluster-v1.journal");
    char path[4200];
    snprintf(path, sizeof(path), "%s/zcluster-9b2f4e61-0c3d-4a57-8e19-5f6a7b8c9d0e.journal", dir);
    assert_int_equal(vmsh_fs_write_atomic(path, text, strlen(text), 0600, NULL), 0);
    vmsh_journal *j = NULL;
    vmsh_error *err = NULL;
    if (vmsh_journal_open(&j, path, &err) < 0)
        fail_msg("%s", err->message);
    assert_int_equal(vmsh_journal_count(j), 3);
    const char *actions[] = {"cluster-hold", "cluster-stop", "cluster-config"};
    const vmsh_journal_state states[] = {VMSH_JOURNAL_DONE, VMSH_JOURNAL_DONE, VMSH_JOURNAL_BEGUN};
    for (size_t i = 0; i < 3; i++) {
        const vmsh_journal_entry *en = vmsh_journal_entry_at(j, i);
        assert_string_equal(en->owner, VMSH_CLUSTER_OWNER_ID);
        assert_string_equal(en->action, actions[i]);
        assert_int_equal(en->state, states[i]);
        assert_non_null(en->data);
    }
    json_object *v = NULL;
    assert_true(json_object_object_get_ex(vmsh_journal_entry_at(j, 0)->data, "resource", &v));
    assert_string_equal(json_object_get_string(v), "vm-g1");
    assert_true(json_object_object_get_ex(vmsh_journal_entry_at(j, 1)->data, "prior", &v));
    assert_string_equal(json_object_get_string(v), "Started");
    /* its name sorts after any set's (hexadecimal UUIDs): replayed last */
    assert_true(strcmp(VMSH_CLUSTER_JOURNAL_PREFIX, "ffffffff-") > 0);
    vmsh_journal_free(j);
    unlink(path);
    rmdir(dir);
}

static vmsh_journal_entry entry(const char *action, json_object *data, vmsh_journal_state st)
{
    return (vmsh_journal_entry){
        .seq = 1, .owner = VMSH_CLUSTER_OWNER_ID, .action = action, .data = data, .state = st};
}

/* cluster-config: begun (killed before or during the rewrite) puts the
 * prior file back; done keeps the restored definition and drops the copy. */
static void config_rewrite_undo(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmsh-test-cconfig-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cfg[4200], bak[4300];
    snprintf(cfg, sizeof(cfg), "%s/vm.xml", dir);
    snprintf(bak, sizeof(bak), "%s.vmshadow-prior", cfg);
    json_object *d = json_object_new_object();
    json_object_object_add(d, "config", json_object_new_string(cfg));
    json_object_object_add(d, "backup", json_object_new_string(bak));

    assert_int_equal(vmsh_fs_write_atomic(cfg, "restored", 8, 0600, NULL), 0);
    assert_int_equal(vmsh_fs_write_atomic(bak, "prior", 5, 0600, NULL), 0);
    vmsh_journal_entry en = entry("cluster-config", d, VMSH_JOURNAL_BEGUN);
    assert_int_equal(vmsh_cluster_undo(NULL, &en, NULL), 0);
    _cleanup_free_ char *got = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_fs_read_all(cfg, 100, &got, &len, NULL), 0);
    assert_string_equal(got, "prior");
    assert_int_equal(access(bak, F_OK), -1);

    assert_int_equal(vmsh_fs_write_atomic(cfg, "restored", 8, 0600, NULL), 0);
    assert_int_equal(vmsh_fs_write_atomic(bak, "prior", 5, 0600, NULL), 0);
    en.state = VMSH_JOURNAL_DONE;
    assert_int_equal(vmsh_cluster_undo(NULL, &en, NULL), 0);
    _cleanup_free_ char *got2 = NULL;
    assert_int_equal(vmsh_fs_read_all(cfg, 100, &got2, &len, NULL), 0);
    assert_string_equal(got2, "restored");
    assert_int_equal(access(bak, F_OK), -1);
    /* nothing left to put back: done already */
    assert_int_equal(vmsh_cluster_undo(NULL, &en, NULL), 0);
    json_object_put(d);
    unlink(cfg);
    rmdir(dir);
}

static void bad_entries_are_errors(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    json_object *d = json_object_new_object();
    vmsh_journal_entry en = entry("cluster-hold", d, VMSH_JOURNAL_DONE);
    assert_int_equal(vmsh_cluster_undo(NULL, &en, &err), -EBADMSG);
    vmsh_error_free(err);
    err = NULL;
    en.action = "cluster-config";
    assert_int_equal(vmsh_cluster_undo(NULL, &en, &err), -EBADMSG);
    vmsh_error_free(err);
    err = NULL;
    en.action = "cluster-ban"; /* never one of ours */
    assert_int_equal(vmsh_cluster_undo(NULL, &en, &err), -EINVAL);
    assert_non_null(strstr(err->message, "unknown journal action"));
    vmsh_error_free(err);
    json_object_put(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(healthy_resource_backs_up),
        cmocka_unit_test(failed_resource_refuses_saved_state_only),
        cmocka_unit_test(other_node_refuses_every_method),
        cmocka_unit_test(all_refuses_vms_run_on_another_node),
        cmocka_unit_test(no_cluster_no_refusal),
        cmocka_unit_test(golden_journal_reads),
        cmocka_unit_test(config_rewrite_undo),
        cmocka_unit_test(bad_entries_are_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
