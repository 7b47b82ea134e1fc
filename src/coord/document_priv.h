/* document_priv.h - building the backup document (private to the coordinator
 * and its tests; docs/formats/backup-document.md). */
#ifndef VMSH_COORD_DOCUMENT_PRIV_H
#define VMSH_COORD_DOCUMENT_PRIV_H

#include <vmshadow/coord/document.h>

typedef struct vmsh_backup_doc_info {
    const char *set_id;
    const char *started, *completed; /* RFC 3339 */
    const char *host;
    const char *program_version;
    const char *method; /* as requested: "auto", ... */
    bool full, all;
    const char *const *targets;
    size_t n_targets;
    int64_t freeze_window_ms; /* -1: no Freeze */
    uint64_t bytes_read, bytes_stored;
} vmsh_backup_doc_info;

/* The document as pretty JSON text ending in a newline (*out, caller frees).
 * kinds[i] is the kind of the writer of mds[i] ("vm" components are
 * summarised in "vms"); kinds may be NULL. */
int vmsh_backup_doc_build(const vmsh_backup_doc_info *info, vmsh_metadata *const *mds,
                          const char *const *kinds, size_t n, char **out, vmsh_error **err);

#endif
