/* metadata.h - the writer metadata document (docs/formats/writer-metadata.md).
 *
 * A writer describes what it owns as components (the VM writer: one per VM),
 * each with files (disks, configuration, firmware variables, TPM state, saved
 * state), the disks it excludes and why (R6), the backup method and its
 * reason (R1/R2), network wiring (R14) and free-form extra JSON. For every
 * file it says where the requestor reads it from: a local file (path and
 * format) or an NBD export on a Unix socket. The coordinator knows nothing of
 * libvirt: everything here is generic.
 *
 * After the copy, the requestor records on each file what was stored
 * (vmsh_file_set_stored); the backup document then carries the metadata of
 * every writer. During a restore it records the outcome per file
 * (vmsh_file_set_restored), which PostRestore checks (R11).
 *
 * Ownership: a metadata object owns its components, which own their files;
 * returned pointers live as long as the metadata. Strings passed in are
 * copied. Not thread-safe: one set uses it from one thread.
 */
#ifndef VMSH_COORD_METADATA_H
#define VMSH_COORD_METADATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/util/error.h>

/* The version this code writes; a document with a larger one is refused. */
#define VMSH_METADATA_VERSION 1

typedef struct vmsh_metadata vmsh_metadata;
typedef struct vmsh_component vmsh_component;
typedef struct vmsh_file vmsh_file;

typedef enum vmsh_source_type {
    VMSH_SOURCE_NONE, /* not known yet (set at the latest in PostSnapshot) */
    VMSH_SOURCE_FILE, /* a local file: path + format ("raw", "qcow2", ...) */
    VMSH_SOURCE_NBD,  /* an NBD export on a Unix socket: socket + export name */
} vmsh_source_type;

typedef enum vmsh_restore_status {
    VMSH_RESTORE_PENDING, /* not restored (yet) */
    VMSH_RESTORE_OK,      /* restored intact to vmsh_file_restored_path */
    VMSH_RESTORE_FAILED,  /* not restored intact; vmsh_file_restore_error says why */
} vmsh_restore_status;

/* -ENOMEM only. */
int vmsh_metadata_new(vmsh_metadata **out, const char *writer_id, const char *writer_name,
                      vmsh_error **err);
void vmsh_metadata_free(vmsh_metadata *md);
const char *vmsh_metadata_writer_id(const vmsh_metadata *md);
const char *vmsh_metadata_writer_name(const vmsh_metadata *md);

/* Adds a component; -EEXIST when the name is taken, -EINVAL when empty. */
int vmsh_metadata_add_component(vmsh_metadata *md, const char *name, vmsh_component **out,
                                vmsh_error **err);
size_t vmsh_metadata_component_count(const vmsh_metadata *md);
vmsh_component *vmsh_metadata_component(const vmsh_metadata *md, size_t i);
vmsh_component *vmsh_metadata_find_component(const vmsh_metadata *md, const char *name);

const char *vmsh_component_name(const vmsh_component *c);
/* Method ("saved-state", "guest", ...) and the reason it was chosen (R2). */
int vmsh_component_set_method(vmsh_component *c, const char *method, const char *reason);
const char *vmsh_component_method(const vmsh_component *c);
const char *vmsh_component_reason(const vmsh_component *c);
/* The component's state before the backup and after it ("running", ...). */
int vmsh_component_set_states(vmsh_component *c, const char *before, const char *after);
const char *vmsh_component_state_before(const vmsh_component *c);
const char *vmsh_component_state_after(const vmsh_component *c);
/* A part that is not backed up, and why (R6). */
int vmsh_component_add_excluded(vmsh_component *c, const char *name, const char *reason);
size_t vmsh_component_excluded_count(const vmsh_component *c);
const char *vmsh_component_excluded_name(const vmsh_component *c, size_t i);
const char *vmsh_component_excluded_reason(const vmsh_component *c, size_t i);
/* One network interface's wiring (R14), a JSON object; takes a reference. */
int vmsh_component_add_network(vmsh_component *c, struct json_object *iface);
size_t vmsh_component_network_count(const vmsh_component *c);
struct json_object *vmsh_component_network(const vmsh_component *c, size_t i); /* borrowed */
/* Free-form JSON for the writer's own use (e.g. the domain XML); takes a
 * reference, replaces what was there. NULL clears it. */
void vmsh_component_set_extra(vmsh_component *c, struct json_object *extra);
struct json_object *vmsh_component_extra(const vmsh_component *c); /* borrowed, may be NULL */
/* Restore: whether the requestor restores this component (default true). */
void vmsh_component_set_selected(vmsh_component *c, bool selected);
bool vmsh_component_selected(const vmsh_component *c);

/* Adds a file with a logical name unique in the component (e.g. "disk/vda")
 * and a kind ("disk", "config", "nvram", "tpm", "saved-state", "other").
 * -EEXIST, -EINVAL (empty name or unknown kind). */
int vmsh_component_add_file(vmsh_component *c, const char *name, const char *kind, vmsh_file **out,
                            vmsh_error **err);
size_t vmsh_component_file_count(const vmsh_component *c);
vmsh_file *vmsh_component_file(const vmsh_component *c, size_t i);
vmsh_file *vmsh_component_find_file(const vmsh_component *c, const char *name);

/* True for the kinds vmsh_component_add_file accepts. */
bool vmsh_file_kind_is_known(const char *kind);

const char *vmsh_file_name(const vmsh_file *f);
const char *vmsh_file_kind(const vmsh_file *f);
/* Where the file lives for its owner (e.g. the disk path in the VM's
 * configuration), used by a restore (R13); may be NULL. */
int vmsh_file_set_path(vmsh_file *f, const char *path);
const char *vmsh_file_path(const vmsh_file *f);
/* The size in bytes when known, else -1. */
void vmsh_file_set_size(vmsh_file *f, int64_t size);
int64_t vmsh_file_size(const vmsh_file *f);

/* Where the requestor reads the file from. */
int vmsh_file_set_source_file(vmsh_file *f, const char *path, const char *format);
int vmsh_file_set_source_nbd(vmsh_file *f, const char *socket, const char *export_name);
vmsh_source_type vmsh_file_source_type(const vmsh_file *f);
const char *vmsh_file_source_path(const vmsh_file *f);   /* FILE */
const char *vmsh_file_source_format(const vmsh_file *f); /* FILE; may be NULL */
const char *vmsh_file_source_socket(const vmsh_file *f); /* NBD */
const char *vmsh_file_source_export(const vmsh_file *f); /* NBD */

/* Requestor: what the repository stored for this file (an opaque JSON
 * object, e.g. the repository's file reference with size and hash), and the
 * bytes read from the source and newly stored. Takes a reference. */
void vmsh_file_set_stored(vmsh_file *f, struct json_object *stored, uint64_t bytes_read,
                          uint64_t bytes_stored);
struct json_object *vmsh_file_stored(const vmsh_file *f); /* borrowed, may be NULL */

/* Issue 21: typed plans. How a disk file is read, as its writer planned it
 * (the VM writer, issue 7), and what the requestor stored: C structs, so
 * that no layer re-parses another's JSON. */
typedef enum vmsh_read_mode {
    VMSH_READ_UNPLANNED = 0, /* not a planned disk */
    VMSH_READ_FULL,
    VMSH_READ_INCREMENTAL,
} vmsh_read_mode;

typedef struct vmsh_disk_plan {
    vmsh_read_mode mode;
    const char *reason;        /* why this mode */
    const char *base_backup;   /* incremental: the backup whose index is the base */
    const char *bitmap;        /* incremental of a shut-off VM: the image's persistent bitmap */
    const char *dirty_context; /* incremental: the NBD meta context of the dirty extents */
} vmsh_disk_plan;

/* Writer: the plan of a file (strings copied; NULL clears it). */
int vmsh_file_set_plan(vmsh_file *f, const vmsh_disk_plan *plan);
/* The plan, or NULL when the file has none (borrowed, until the next set). */
const vmsh_disk_plan *vmsh_file_plan(const vmsh_file *f);

/* What the requestor stored for a file. */
typedef struct vmsh_file_stored {
    const char *file; /* its name in the repository */
    uint64_t size, bytes_stored, new_chunks, bytes_read;
    vmsh_read_mode read;     /* a planned disk: how it was read */
    const char *read_reason; /* and why (may be NULL) */
    const char *base;        /* the base backup, when an incremental used one */
    uint64_t base_chunks;
} vmsh_file_stored_record;

/* Requestor: records `s` (the one serializer of the document's "stored"
 * member, docs/formats/backup-document.md) with its bytes read and stored. */
int vmsh_file_set_stored_record(vmsh_file *f, const vmsh_file_stored_record *s);
/* How the file was read (from the record, or a parsed document's "stored"),
 * why (may be NULL), and the bytes read (-1 when not recorded). */
vmsh_read_mode vmsh_file_read_mode(const vmsh_file *f);
const char *vmsh_file_read_name(const vmsh_file *f); /* "full", "incremental", as recorded */
const char *vmsh_file_read_reason(const vmsh_file *f);
int64_t vmsh_file_stored_bytes_read(const vmsh_file *f);
uint64_t vmsh_file_bytes_read(const vmsh_file *f);
uint64_t vmsh_file_bytes_stored(const vmsh_file *f);

/* Restore outcome of a file (R11). `path` is where it was restored to,
 * `error` why it failed (both may be NULL). */
int vmsh_file_set_restored(vmsh_file *f, vmsh_restore_status status, const char *path,
                           const char *error);
vmsh_restore_status vmsh_file_restore_status(const vmsh_file *f);
const char *vmsh_file_restored_path(const vmsh_file *f);
const char *vmsh_file_restore_error(const vmsh_file *f);

/* The document as JSON (a new object; caller puts it). With `with_stored`,
 * each file's "stored" member is included (the backup document's form). */
int vmsh_metadata_to_json(const vmsh_metadata *md, bool with_stored, struct json_object **out,
                          vmsh_error **err);
/* Reads a document. Expected errors: -EBADMSG (malformed: the message names
 * the member), -EPROTONOSUPPORT (a version newer than this program's). */
int vmsh_metadata_from_json(struct json_object *doc, vmsh_metadata **out, vmsh_error **err);

#endif
