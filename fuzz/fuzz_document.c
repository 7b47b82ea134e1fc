/* fuzz_document.c - the backup document (coord/document.h), read back from a
 * repository by show, restore and extract: parse it and walk every writer's
 * metadata the way restore does, then serialise each one again. */
#include "fuzz.h"

#include <stdlib.h>

#include <vmshadow/coord/document.h>
#include <vmshadow/coord/metadata.h>

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
