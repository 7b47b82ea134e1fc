/* Where a restore puts the files of a backup (SPEC R10, R12; issue 20
 * point 1, point 7): decided by vmshadow from a document that may be
 * hostile. Under --to everything stays in DIR/<vm>/, links are made only at
 * libvirt's own per-VM places, no path climbs with '..' (also after a
 * trusted prefix), and names are checked before they are sliced. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/writers/vm_writer.h>

#define UUID "5a9f4a5e-6f0b-4a53-9d36-2c2b8f3e0a11"

/* A backup document of one VM `vm` whose only file is {name, kind, path}. */
static vmsh_backup_doc *doc_with(const char *vm, const char *name, const char *kind,
                                 const char *path)
{
    char text[4096];
    char pathj[1200] = "";
    if (path)
        snprintf(pathj, sizeof(pathj), ",\"path\":\"%s\"", path);
    snprintf(text, sizeof(text),
             "{\"version\":1,\"set_id\":\"3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55\","
             "\"started\":\"2026-11-24T23:40:02Z\",\"completed\":\"2026-11-24T23:41:17Z\","
             "\"writers\":[{\"version\":1,\"writer\":{\"id\":\"f4bd47b3-8031-4044-ac08-"
             "38a03cf3d71d\",\"name\":\"vmshadow VM writer\"},\"components\":[{\"name\":\"%s\","
             "\"files\":[{\"name\":\"%s\",\"kind\":\"%s\"%s}],\"extra\":{\"uuid\":\"" UUID
             "\"}}]}]}",
             vm, name, kind, pathj);
    vmsh_backup_doc *d = NULL;
    vmsh_error *err = NULL;
    if (vmsh_backup_doc_parse(text, strlen(text), &d, &err) < 0)
        fail_msg("%s: %s", text, err->message);
    return d;
}

/* Places the document's file; returns the result, *out and *link. */
static int place(const char *to, const char *as, const char *vm, const char *name, const char *kind,
                 const char *path, char **out, char **link)
{
    vmsh_backup_doc *d = doc_with(vm, name, kind, path);
    vmsh_metadata *md = vmsh_backup_doc_writer(d, 0);
    vmsh_component *c = vmsh_metadata_component(md, 0);
    vmsh_set_options o = {.restore_dir = to, .restore_as = as};
    vmsh_error *err = NULL;
    int r = vmsh_vm_writer_restore_place(&o, c, vmsh_component_file(c, 0), out, link, &err);
    if (r < 0) {
        assert_non_null(err);
        assert_null(*out);
        assert_null(*link);
    }
    vmsh_error_free(err);
    vmsh_backup_doc_free(d);
    return r;
}

static void expect(const char *to, const char *as, const char *vm, const char *name,
                   const char *kind, const char *path, const char *want_out, const char *want_link)
{
    char *out = NULL, *link = NULL;
    int r = place(to, as, vm, name, kind, path, &out, &link);
    if (r < 0)
        fail_msg("%s %s (%s): refused (%d)", kind, name, path ? path : "-", r);
    if (want_out ? !out || strcmp(out, want_out) != 0 : out != NULL)
        fail_msg("%s %s: placed at %s, not %s", kind, name, out ? out : "(nowhere)",
                 want_out ? want_out : "(nowhere)");
    if (want_link ? !link || strcmp(link, want_link) != 0 : link != NULL)
        fail_msg("%s %s: linked from %s, not %s", kind, name, link ? link : "(nowhere)",
                 want_link ? want_link : "(nowhere)");
    free(out);
    free(link);
}

static void refused(const char *to, const char *as, const char *vm, const char *name,
                    const char *kind, const char *path)
{
    char *out = NULL, *link = NULL;
    if (place(to, as, vm, name, kind, path, &out, &link) != -EINVAL)
        fail_msg("%s %s (%s) under %s was not refused: placed at %s, linked from %s", kind, name,
                 path ? path : "-", to ? to : "(in place)", out ? out : "-", link ? link : "-");
}

#define NV  "/var/lib/libvirt/qemu/nvram"
#define TPM "/var/lib/libvirt/swtpm/" UUID "/tpm2/tpm2-00.permall"

static void places_under_to(void **state)
{
    expect("/r", NULL, "web", "disk/vda", "disk", "/var/lib/libvirt/images/web.qcow2",
           "/r/web/web.qcow2", NULL);
    /* only the file name of a path that climbs: inside the target */
    expect("/r", NULL, "web", "disk/vda", "disk", "/x/../../etc/shadow", "/r/web/shadow", NULL);
    expect("/r", NULL, "web", "nvram", "nvram", NV "/web_VARS.fd", "/r/web/web_VARS.fd",
           NV "/web_VARS.fd");
    /* the reported attack: the NVRAM's "default place" is an unrelated host
     * file; it is never linked (the XML is re-pathed instead) */
    expect("/r", NULL, "web", "nvram", "nvram", "/etc/passwd", "/r/web/passwd", NULL);
    expect("/r", NULL, "web", "nvram", "nvram", NV "/../../../../etc/passwd", "/r/web/passwd",
           NULL);
    expect("/r", NULL, "web", "nvram", "nvram", NV "/sub/web_VARS.fd", "/r/web/web_VARS.fd", NULL);
    expect("/r", NULL, "web", "tpm/tpm2/tpm2-00.permall", "tpm", TPM,
           "/r/web/tpm/tpm2/tpm2-00.permall", TPM);
    expect("/r", NULL, "web", "saved-state", "saved-state", NULL, "/r/web/web.save",
           "/var/lib/libvirt/qemu/save/web.save");
    expect("/r", NULL, "web", "config/domain.xml", "config", NULL, NULL, NULL);
}

static void places_in_place_and_as(void **state)
{
    expect(NULL, NULL, "web", "disk/vda", "disk", "/srv/vm/web.qcow2", "/srv/vm/web.qcow2", NULL);
    expect(NULL, NULL, "web", "nvram", "nvram", NV "/web_VARS.fd", NV "/web_VARS.fd", NULL);
    expect(NULL, NULL, "web", "tpm/tpm2/tpm2-00.permall", "tpm", TPM, TPM, NULL);
    expect(NULL, NULL, "web", "saved-state", "saved-state", NULL,
           "/var/lib/libvirt/qemu/save/web.save", NULL);
    /* --as: new names derived by vmshadow */
    expect(NULL, "copy", "web", "disk/vda", "disk", "/srv/vm/web.qcow2", "/srv/vm/copy-web.qcow2",
           NULL);
    /* a file at the root: no "//" (found by fuzz_document) */
    expect(NULL, "copy", "web", "disk/vda", "disk", "/x", "/copy-x", NULL);
    expect(NULL, "copy", "web", "nvram", "nvram", "/etc/passwd", NV "/copy_VARS.fd", NULL);
    expect(NULL, "copy", "web", "tpm/tpm2/tpm2-00.permall", "tpm", TPM, NULL, NULL);
    expect(NULL, "copy", "web", "saved-state", "saved-state", NULL, NULL, NULL);
    expect("/r", "copy", "web", "nvram", "nvram", NV "/web_VARS.fd", "/r/copy/web_VARS.fd", NULL);
}

static void refuses_hostile_places(void **state)
{
    for (int pass = 0; pass < 2; pass++) {
        const char *to = pass ? "/r" : NULL;
        /* TPM state: exactly <swtpm>/<uuid>/<rel>, no climbing after the
         * trusted prefix, the VM's own UUID */
        refused(to, NULL, "web", "tpm/tpm2/tpm2-00.permall", "tpm",
                "/var/lib/libvirt/swtpm/../../../etc/tpm2/tpm2-00.permall");
        refused(to, NULL, "web", "tpm/x", "tpm", "/var/lib/libvirt/swtpm/" UUID "/../../../x");
        refused(to, NULL, "web", "tpm/x", "tpm", "/etc/x");
        refused(to, NULL, "web", "tpm/x", "tpm",
                "/var/lib/libvirt/swtpm/00000000-0000-0000-0000-000000000000/x");
        refused(to, NULL, "web", "tpm/tpm2/tpm2-00.permall", "tpm",
                "/var/lib/libvirt/swtpm/" UUID "/tpm2/other");
        refused(to, NULL, "web", "tpm/../x", "tpm", "/var/lib/libvirt/swtpm/" UUID "/../x");
        refused(to, NULL, "web", "tpm/", "tpm", "/var/lib/libvirt/swtpm/" UUID "/");
        /* short names (issue 20 point 7: sliced past their end before) */
        refused(to, NULL, "web", "t", "tpm", TPM);
        refused(to, NULL, "web", "tpm", "tpm", TPM);
        refused(to, NULL, "web", "x", "disk", "/srv/vm/web.qcow2");
        refused(to, NULL, "web", "disk/", "disk", "/srv/vm/web.qcow2");
        refused(to, NULL, "web", "disk/../x", "disk", "/srv/vm/web.qcow2");
        /* a VM name that is no file name */
        refused(to, NULL, "../../etc", "disk/vda", "disk", "/srv/vm/web.qcow2");
        refused(to, NULL, "web", "disk/vda", "disk", "relative/web.qcow2");
        refused(to, NULL, "web", "disk/vda", "disk", NULL);
    }
    /* in place: no climbing anywhere */
    refused(NULL, NULL, "web", "disk/vda", "disk", "/srv/vm/../../etc/cron.d/x");
    refused(NULL, NULL, "web", "nvram", "nvram", NV "/../../../../etc/passwd");
    refused(NULL, "copy", "web", "disk/vda", "disk", "/srv/./vm/web.qcow2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(places_under_to),
        cmocka_unit_test(places_in_place_and_as),
        cmocka_unit_test(refuses_hostile_places),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
