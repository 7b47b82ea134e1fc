/* fuzz_session.c - a writer's session object (locks/sessions/<16 hex>,
 * docs/formats/gc.md, issue 26), read by every gc: any host that writes a
 * shared repository can plant one. Input: the object's bytes. A parse that
 * succeeds gives only pins that are backup IDs (16 lowercase hex digits);
 * everything else is flagged, never passed on. */
#include "fuzz.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "repo/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (64u << 10))
        return 0; /* gc reads at most 64 KiB of a session */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0; /* as the store's get returns it */
    gc_session_doc d;
    int rc = gc_session_parse(text, size, &d);
    if (rc == 0) {
        for (size_t i = 0; i < d.n_pins; i++)
            if (strlen(d.pins[i]) != VMSH_BACKUP_ID_LEN ||
                strspn(d.pins[i], "0123456789abcdef") != VMSH_BACKUP_ID_LEN)
                abort();
    } else if (rc != -EBADMSG && rc != -ENOMEM) {
        abort();
    } else if (d.pins || d.n_pins) {
        abort(); /* nothing is handed out on a refusal */
    }
    gc_session_doc_clear(&d);
    free(text);
    return 0;
}
