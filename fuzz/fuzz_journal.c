/* fuzz_journal.c - a journal file (coord/journal.h) as `vmshadow recover`
 * finds it after a crash: open and replay-read it. The journal is written by
 * vmshadow, but a crash can leave any prefix of it, and a disk anything. */
#include "fuzz.h"

#include <stdio.h>

#include <vmshadow/coord/journal.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[4200];
    if (!path[0])
        snprintf(path, sizeof(path), "%s/set.journal", fuzz_scratch());
    fuzz_write_file(path, data, size);
    vmsh_journal *j = NULL;
    vmsh_error *err = NULL;
    if (vmsh_journal_open(&j, path, &err) < 0) {
        vmsh_error_free(err);
        return 0;
    }
    (void)vmsh_journal_set_id(j), (void)vmsh_journal_operation(j);
    for (size_t i = 0; i < vmsh_journal_count(j); i++) {
        const vmsh_journal_entry *e = vmsh_journal_entry_at(j, i);
        (void)e->owner, (void)e->action;
    }
    (void)vmsh_journal_open_count(j);
    vmsh_journal_free(j);
    return 0;
}
