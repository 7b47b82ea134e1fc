/* fuzz_metadata.c - the writer metadata document (coord/metadata.h), which a
 * writer hands to the coordinator and a backup carries: parse it, serialise
 * it, and parse that again; a document this code wrote must read back. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

#include <vmshadow/coord/metadata.h>

#include "coord/jsonutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct json_object *doc = NULL;
    vmsh_error *err = NULL;
    if (vmsh_json_parse((const char *)data, size, &doc, "writer metadata", &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    vmsh_metadata *md = NULL;
    if (vmsh_metadata_from_json(doc, &md, &err) < 0) {
        vmsh_error_free(err);
        json_object_put(doc);
        return 0;
    }
    json_object_put(doc);
    struct json_object *again = NULL;
    if (vmsh_metadata_to_json(md, true, &again, &err) < 0) {
        fprintf(stderr, "cannot serialise a parsed document: %s\n", err->message);
        abort();
    }
    vmsh_metadata *md2 = NULL;
    if (vmsh_metadata_from_json(again, &md2, &err) < 0) {
        fprintf(stderr, "a document this code wrote does not read back: %s\n%s\n", err->message,
                json_object_to_json_string(again));
        abort();
    }
    if (vmsh_metadata_component_count(md2) != vmsh_metadata_component_count(md))
        abort();
    json_object_put(again);
    vmsh_metadata_free(md2);
    vmsh_metadata_free(md);
    return 0;
}
