/* The VM writer's restore plan of disks that are not image files (issue 25
 * point 4), on synthetic backup documents (their Identify record's "kind"
 * as the disk capture writes it) and libvirt's test driver:
 *  - a block device that is gone and is no LV of an existing VG: refused
 *    before anything changes, saying to use --to;
 *  - --to: any kind becomes an image file DIR/VM/TARGET.EXT ("converted"),
 *    and the real restore may proceed (the file path);
 *  - a network disk QEMU opens over another protocol than rbd: refused in
 *    place, converted under --to;
 *  - a pool volume whose storage pool does not exist: refused;
 *  - a hostile device path: refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/writers/vm_writer.h>

#define UUID "5a9f4a5e-6f0b-4a53-9d36-2c2b8f3e0a11"

static vmsh_backup_doc *doc_with(const char *record)
{
    char text[4096];
    snprintf(text, sizeof(text),
             "{\"version\":1,\"set_id\":\"3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55\","
             "\"started\":\"2026-11-24T23:40:02Z\",\"completed\":\"2026-11-24T23:41:17Z\","
             "\"writers\":[{\"version\":1,\"writer\":{\"id\":\"f4bd47b3-8031-4044-ac08-"
             "38a03cf3d71d\",\"name\":\"vmshadow VM writer\"},\"components\":[{\"name\":\"web\","
             "\"files\":[{\"name\":\"disk/vdb\",\"kind\":\"disk\",\"path\":\"/dev/x\","
             "\"size\":1048576}],\"extra\":{\"uuid\":\"" UUID "\",\"disks\":[%s]}}]}]}",
             record);
    vmsh_backup_doc *d = NULL;
    vmsh_error *err = NULL;
    if (vmsh_backup_doc_parse(text, strlen(text), &d, &err) < 0)
        fail_msg("%s: %s", text, err->message);
    return d;
}

/* Plans the document's VM; *storage: its disk's "storage" object (a copy
 * as text), *msg the error. */
static int plan(const char *record, const char *to, const char *as, char **storage, char **msg)
{
    vmsh_writer_ops *w = NULL;
    vmsh_error *err = NULL;
    vmsh_vm_writer_config cfg = {.uri = "test:///default", .state_dir = "/tmp"};
    assert_int_equal(vmsh_vm_writer_new(&w, &cfg, NULL, NULL, &err), 0);
    vmsh_backup_doc *d = doc_with(record);
    vmsh_metadata *md = vmsh_backup_doc_writer(d, 0);
    vmsh_component_set_selected(vmsh_metadata_component(md, 0), true);
    vmsh_set_options o = {.restore_dir = to, .restore_as = as};
    json_object *out = NULL;
    int r = vmsh_vm_writer_restore_plan(w, md, &o, NULL, &out, &err);
    *storage = *msg = NULL;
    if (r == 0) {
        json_object *vm = json_object_array_get_idx(out, 0), *files = NULL, *st = NULL;
        json_object_object_get_ex(vm, "files", &files);
        json_object_object_get_ex(json_object_array_get_idx(files, 0), "storage", &st);
        *storage = st ? strdup(json_object_to_json_string_ext(
                            st, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE))
                      : NULL;
    } else {
        assert_non_null(err);
        *msg = strdup(err->message);
    }
    json_object_put(out);
    vmsh_error_free(err);
    vmsh_backup_doc_free(d);
    w->free(w);
    return r;
}

static void block_gone_refused_to_converts(void **state)
{
    (void)state;
    const char *rec = "{\"target\":\"vdb\",\"path\":\"/dev/vmsh-no-vg/data\",\"format\":\"raw\","
                      "\"kind\":\"block\"}";
    char *st = NULL, *msg = NULL;
    assert_int_equal(plan(rec, NULL, NULL, &st, &msg), -ENOENT);
    assert_non_null(strstr(msg, "VM web"));
    assert_non_null(strstr(msg, "/dev/vmsh-no-vg/data does not exist"));
    assert_non_null(strstr(msg, "--to DIR"));
    free(msg);
    assert_int_equal(plan(rec, "/srv/r", NULL, &st, &msg), 0);
    assert_non_null(st);
    assert_non_null(strstr(st, "\"action\":\"converted\""));
    assert_non_null(strstr(st, "\"target\":\"/srv/r/web/vdb.img\""));
    assert_non_null(strstr(st, "\"restored_as\":\"file\""));
    free(st);
    /* --as of a plain block device: cannot be created, asks for --to */
    const char *loop = "{\"target\":\"vdb\",\"path\":\"/dev/null\",\"format\":\"raw\","
                       "\"kind\":\"block\"}";
    assert_int_equal(plan(loop, NULL, "web2", &st, &msg), -ENOTSUP);
    assert_non_null(strstr(msg, "--to DIR"));
    free(msg);
    /* an image file: planned as before, no storage object */
    const char *file = "{\"target\":\"vdb\",\"path\":\"/dev/x\",\"format\":\"raw\","
                       "\"kind\":\"file\"}";
    assert_int_equal(plan(file, "/srv/r", NULL, &st, &msg), 0);
    assert_null(st);
}

static void network_and_volumes(void **state)
{
    (void)state;
    char *st = NULL, *msg = NULL;
    const char *nbd = "{\"target\":\"vdb\",\"path\":\"export\",\"format\":\"raw\","
                      "\"kind\":\"network\",\"protocol\":\"nbd\"}";
    assert_int_equal(plan(nbd, NULL, NULL, &st, &msg), -ENOTSUP);
    assert_non_null(strstr(msg, "network disk over nbd"));
    free(msg);
    assert_int_equal(plan(nbd, "/srv/r", NULL, &st, &msg), 0);
    assert_non_null(strstr(st, "\"action\":\"converted\""));
    free(st);
    /* the test driver has the pool "default-pool" only */
    const char *vol = "{\"target\":\"vdb\",\"path\":\"/var/lib/x.img\",\"format\":\"raw\","
                      "\"kind\":\"volume\",\"pool\":\"vmsh-gone\",\"volume\":\"x.img\"}";
    assert_int_equal(plan(vol, NULL, NULL, &st, &msg), -ENOENT);
    assert_non_null(strstr(msg, "storage pool vmsh-gone"));
    free(msg);
    const char *bad = "{\"target\":\"vdb\",\"path\":\"/x\",\"format\":\"raw\","
                      "\"kind\":\"volume\",\"pool\":\"../etc\",\"volume\":\"x.img\"}";
    assert_int_equal(plan(bad, NULL, NULL, &st, &msg), -EINVAL);
    free(msg);
    const char *rbd_bad = "{\"target\":\"vdb\",\"path\":\"pool/img@snap\",\"format\":\"raw\","
                          "\"kind\":\"network\",\"protocol\":\"rbd\"}";
    assert_int_equal(plan(rbd_bad, NULL, NULL, &st, &msg), -EINVAL);
    free(msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(block_gone_refused_to_converts),
        cmocka_unit_test(network_and_volumes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
