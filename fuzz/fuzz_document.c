/* fuzz_document.c - the backup document (coord/document.h), read back from a
 * repository by show, restore and extract: parse it and walk every writer's
 * metadata the way restore does, then serialise each one again. Every file
 * is placed the way a restore places it (vmsh_vm_writer_restore_place: in
 * place, --to, --as; issue 20): a place is a clean absolute path, inside
 * DIR/<vm>/ under --to, and a link lies only in libvirt's per-VM places. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmshadow/coord/document.h>
#include <vmshadow/coord/metadata.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/writers/vm_writer.h>

static void check_place(const vmsh_component *c, const vmsh_file *f)
{
    static const vmsh_set_options opts[] = {
        {0},
        {.restore_dir = "/r"},
        {.restore_as = "copy"},
        {.restore_dir = "/r", .restore_as = "copy"},
    };
    static const char *const link_dirs[] = {
        "/var/lib/libvirt/qemu/nvram/", "/var/lib/libvirt/swtpm/", "/var/lib/libvirt/qemu/save/"};
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        const vmsh_set_options *o = &opts[i];
        char *out = NULL, *link = NULL;
        vmsh_error *err = NULL;
        if (vmsh_vm_writer_restore_place(o, c, f, &out, &link, &err) < 0) {
            if (!err || out || link)
                abort(); /* an error says why and places nothing */
            vmsh_error_free(err);
            continue;
        }
        const char *name = o->restore_as ? o->restore_as : vmsh_component_name(c);
        if (out && !vmsh_path_is_clean(out)) {
            fprintf(stderr, "placed at an unclean path: %s\n", out);
            abort();
        }
        if (out && o->restore_dir &&
            (strncmp(out, "/r/", 3) != 0 || strncmp(out + 3, name, strlen(name)) != 0 ||
             out[3 + strlen(name)] != '/')) {
            fprintf(stderr, "placed outside --to: %s\n", out);
            abort();
        }
        bool in_libvirt = false;
        for (size_t k = 0; link && k < sizeof(link_dirs) / sizeof(link_dirs[0]); k++)
            in_libvirt |= strncmp(link, link_dirs[k], strlen(link_dirs[k])) == 0;
        if (link && (!vmsh_path_is_clean(link) || !in_libvirt || !o->restore_dir || !out)) {
            fprintf(stderr, "linked from %s\n", link);
            abort();
        }
        free(out);
        free(link);
    }
}

static void walk(vmsh_metadata *md)
{
    for (size_t i = 0; i < vmsh_metadata_component_count(md); i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        (void)vmsh_component_name(c);
        for (size_t k = 0; k < vmsh_component_excluded_count(c); k++)
            (void)vmsh_component_excluded_name(c, k);
        for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
            vmsh_file *f = vmsh_component_file(c, k);
            (void)vmsh_file_name(f), (void)vmsh_file_kind(f), (void)vmsh_file_stored(f);
            check_place(c, f);
        }
    }
    struct json_object *j = NULL;
    vmsh_error *err = NULL;
    if (vmsh_metadata_to_json(md, true, &j, &err) < 0)
        vmsh_error_free(err);
    json_object_put(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vmsh_backup_doc *d = NULL;
    vmsh_error *err = NULL;
    if (vmsh_backup_doc_parse((const char *)data, size, &d, &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    if (!vmsh_backup_doc_set_id(d) || !vmsh_backup_doc_started(d))
        abort(); /* required members */
    (void)vmsh_backup_doc_method(d), (void)vmsh_backup_doc_host(d);
    for (size_t i = 0; i < vmsh_backup_doc_writer_count(d); i++)
        walk(vmsh_backup_doc_writer(d, i));
    vmsh_backup_doc_free(d);
    return 0;
}
