/* document.h - the backup document (docs/formats/backup-document.md): what a
 * backup holds, written by the coordinator at the end of a snapshot set and
 * stored by the repository as the backup's record (committed last, R5).
 * It carries every writer's metadata document with, for each file, what the
 * repository stored. Read by `show`, `list` and `restore`.
 *
 * A parsed document is immutable except for restore bookkeeping on its files
 * (metadata.h); not thread-safe.
 */
#ifndef VMSH_COORD_DOCUMENT_H
#define VMSH_COORD_DOCUMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/coord/metadata.h>
#include <vmshadow/util/error.h>

#define VMSH_BACKUP_DOC_VERSION 1

typedef struct vmsh_backup_doc vmsh_backup_doc;

/* Parses a backup document. Expected errors: -EBADMSG (malformed; the message
 * names the member), -EPROTONOSUPPORT (a newer version). */
int vmsh_backup_doc_parse(const char *text, size_t len, vmsh_backup_doc **out, vmsh_error **err);
void vmsh_backup_doc_free(vmsh_backup_doc *d);

const char *vmsh_backup_doc_set_id(const vmsh_backup_doc *d);
const char *vmsh_backup_doc_started(const vmsh_backup_doc *d);   /* RFC 3339 */
const char *vmsh_backup_doc_completed(const vmsh_backup_doc *d); /* RFC 3339 */
const char *vmsh_backup_doc_host(const vmsh_backup_doc *d);
const char *vmsh_backup_doc_method(const vmsh_backup_doc *d); /* as requested */
bool vmsh_backup_doc_full(const vmsh_backup_doc *d);
int64_t vmsh_backup_doc_freeze_window_ms(const vmsh_backup_doc *d);
size_t vmsh_backup_doc_writer_count(const vmsh_backup_doc *d);
/* Writer i's metadata, files carrying "stored" (borrowed, mutable for the
 * restore bookkeeping). */
vmsh_metadata *vmsh_backup_doc_writer(const vmsh_backup_doc *d, size_t i);
/* The parsed JSON (borrowed). */
struct json_object *vmsh_backup_doc_json(const vmsh_backup_doc *d);

/* One VM of the document's "vms" summary, the shape CLI.md gives `backup
 * --json` too: name, method, reason, state_before, state_after,
 * excluded_disks, incremental and disks ([{name, read, reason, bytes_read}],
 * from what the requestor recorded in each file's "stored"). A new object,
 * or NULL when out of memory. *incremental (may be NULL) is set to true when
 * a disk of the VM was read incrementally, else left alone. */
struct json_object *vmsh_backup_doc_vm_json(const vmsh_component *comp, bool *incremental);

#endif
