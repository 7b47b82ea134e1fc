/* fuzz_state.c - the writer-state file <state_dir>/writers.json
 * (coord/state.h), read by `vmshadow writers` and at every run: parse it,
 * write it back and read that again. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

#include <vmshadow/coord/state.h>

#include "coord/jsonutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct json_object *doc = NULL;
    vmsh_error *err = NULL;
    if (vmsh_json_parse((const char *)data, size, &doc, "writer states", &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    vmsh_writer_states *s = NULL;
    int r = vmsh_writer_states_from_json(doc, &s, &err);
    json_object_put(doc);
    if (r < 0) {
        vmsh_error_free(err);
        return 0;
    }
    for (size_t i = 0; i < vmsh_writer_states_count(s); i++) {
        const vmsh_writer_record *rec = vmsh_writer_states_at(s, i);
        if (vmsh_writer_states_find(s, rec->id) == NULL)
            abort();
        (void)vmsh_writer_state_name(rec->state);
    }
    struct json_object *again = NULL;
    vmsh_writer_states *s2 = NULL;
    if (vmsh_writer_states_to_json(s, &again, &err) < 0 ||
        vmsh_writer_states_from_json(again, &s2, &err) < 0) {
        fprintf(stderr, "writer states do not survive a round trip: %s\n", err->message);
        abort();
    }
    if (vmsh_writer_states_count(s2) != vmsh_writer_states_count(s))
        abort();
    json_object_put(again);
    vmsh_writer_states_free(s2);
    vmsh_writer_states_free(s);
    return 0;
}
