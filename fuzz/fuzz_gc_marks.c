/* fuzz_gc_marks.c - gc's marks (locks/gc-marks, docs/formats/gc.md, issue
 * 26), read by every backup at its begin and by every gc: a JSON document
 * anyone who can write the repository can plant. Input: the object's bytes.
 * A parse that succeeds must give sorted marks of valid times, each found
 * by its lookup; a refusal must say why. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "repo/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 20))
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    gc_marks m = {0};
    vmsh_error *err = NULL;
    if (gc_marks_parse(text, size, &m, &err) < 0) {
        if (!err)
            abort(); /* every refusal says why */
        vmsh_error_free(err);
        free(text);
        return 0;
    }
    for (size_t i = 0; i < m.n; i++) {
        if (m.v[i].t_ms < -1)
            abort();
        if (i && memcmp(m.v[i - 1].pack, m.v[i].pack, 16) > 0)
            abort();
        if (!gc_marks_find(&m, m.v[i].pack))
            abort();
    }
    gc_marks_clear(&m);
    free(text);
    return 0;
}
