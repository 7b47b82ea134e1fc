/* files_priv.h - the pure half of file-level restore (issue 23 point 4):
 * walking a guest filesystem through a small table of callbacks, and
 * writing what it finds beneath a directory or into a tar stream.
 * files.c fills the table with libguestfs; the unit tests
 * (tests/unit/test_files.c) with a hostile filesystem in memory. */
#ifndef VMSH_REQUESTOR_FILES_PRIV_H
#define VMSH_REQUESTOR_FILES_PRIV_H

#include <vmshadow/requestor/files.h>

/* An entry as a source returns it: `path` holds the bare name (list) or
 * the path asked for (stat); both malloc'ed, like `target`. */
typedef struct files_src_ops {
    /* The names in directory `dir` with their lstat (and link targets),
     * unsorted, excluding "." and ".."; names are raw (hostile). */
    int (*list)(void *opaque, const char *dir, vmsh_files_entry **out, size_t *n, vmsh_error **err);
    /* lstat of one path (a link's target read too); -ENOENT. */
    int (*stat)(void *opaque, const char *path, vmsh_files_entry *out, vmsh_error **err);
    /* Up to `len` bytes of file `path` at `off`; *got 0 at its end. */
    int (*read)(void *opaque, const char *path, uint64_t off, void *buf, size_t len, size_t *got,
                vmsh_error **err);
} files_src_ops;

typedef struct files_src {
    const files_src_ops *ops;
    void *opaque;
    vmsh_files_note_fn note;
    void *note_opaque;
} files_src;

/* Frees the strings of entries (not the array when n == 0 ... it does:
 * the array too). */
void files_entries_free(vmsh_files_entry *e, size_t n);

/* Whether `name` may be a file name beneath a directory: not empty, not
 * "." or "..", no "/", at most 255 bytes. */
bool files_name_ok(const char *name);
/* "/a/b" + "c" -> "/a/b/c"; "/" + "c" -> "/c". */
char *files_join(const char *dir, const char *name);
/* The last component of an absolute guest path ("/a/b/" -> "b"); "" for
 * "/"; NULL (-EINVAL) for a path that is not absolute or ends in "." or
 * "..". Malloc'ed. */
int files_basename(const char *path, char **out, vmsh_error **err);

/* Tests only (tests/unit/test_files.c): true makes every copy take the
 * path of a target filesystem without O_TMPFILE (a hidden temporary name,
 * renamed when complete), which tmpfs and ext4 never take by themselves.
 * Nothing else sets it. */
extern bool files_tree_no_tmpfile;

int files_tree_list(const files_src *src, const char *path, bool recursive, vmsh_files_entry_fn cb,
                    void *opaque, vmsh_error **err);
int files_tree_get(const files_src *src, const char *const *paths, size_t n,
                   const vmsh_files_get_options *go, vmsh_files_stats *stats, vmsh_error **err);

/* The tar writer (docs/formats/files-tar.md): POSIX ustar headers, a pax
 * extended header before an entry whose name, link target, size, owner
 * or time a ustar header cannot hold. `type` is '0' (file), '2'
 * (symbolic link) or '5' (directory). Writes to fd; -errno. */
int files_tar_header(int fd, const char *name, const vmsh_files_entry *e, char type, uint32_t perm,
                     vmsh_error **err);
/* Zero padding to the next 512-byte block after `size` bytes of data. */
int files_tar_pad(int fd, uint64_t size, vmsh_error **err);
/* The end of the archive: two zero blocks. */
int files_tar_end(int fd, vmsh_error **err);

#endif
