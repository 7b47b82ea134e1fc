/* store.h - the repository's storage seam (issue 21, point 3; issue 20,
 * point 6). Everything in src/repo/ reaches the repository's files through
 * this ops table; nothing outside src/repo/store_*.c opens, renames,
 * deletes, lists or locks a repository file. What every store must
 * guarantee is in docs/formats/repository.md, "Stores".
 *
 * Names are relative to the repository's root, '/'-separated, made of the
 * components of the tree ("config", "packs/ab/<32 hex>.pack",
 * "index/ab/<64 hex>", "backups/<16 hex>", "locks/write"): never empty
 * components, "." or "..". A store refuses anything else (-EINVAL).
 *
 * In the style of libgit2's git_odb_backend: a versioned table of callbacks
 * that a store fills in; callers check `version` once (repo_store_check). */
#ifndef VMSH_REPO_STORE_H
#define VMSH_REPO_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/util/error.h>
#include <vmshadow/util/lock.h>

#define REPO_STORE_OPS_VERSION 1

/* open / create flags */
#define REPO_STORE_DIRECT 1u /* O_DIRECT where the filesystem allows (-EINVAL: it does not) */

/* repo_store_open flags */
#define REPO_STORE_ALLOW_FOREIGN 1u /* VMSH_REPO_OPEN_ALLOW_FOREIGN */
#define REPO_STORE_CREATE        2u /* init: create the root (and accept it empty) */

/* list flags */
#define REPO_STORE_LIST_STAT 1u /* kinds with the owner check, sizes and times */

typedef struct repo_store repo_store;
typedef struct repo_store_file repo_store_file; /* an open file: a pack being read or written */

typedef enum {
    REPO_STORE_REG,   /* a regular file of the repository's owner */
    REPO_STORE_DIR,   /* a directory of the repository's owner */
    REPO_STORE_OTHER, /* anything else: a link, a FIFO, a device, another owner's file */
} repo_store_kind;

typedef struct repo_store_stat {
    uint64_t size;
    int64_t mtime_ns;
} repo_store_stat;

/* One entry of a directory listing; return < 0 to stop the listing with
 * that value. `kind` is found without following links. */
typedef int (*repo_store_list_fn)(void *opaque, const char *name, repo_store_kind kind,
                                  const repo_store_stat *st);

typedef struct repo_store_ops {
    unsigned version; /* REPO_STORE_OPS_VERSION */
    /* Atomic put: the whole of buf under `name` or nothing, durable when it
     * returns (written to a temporary name, synced, renamed, the directory
     * synced). Missing parent directories are created. */
    int (*put)(repo_store *s, const char *name, const void *buf, size_t len, vmsh_error **err);
    /* The whole file (at most `max` bytes, else -EFBIG) into a malloc'ed
     * buffer, NUL-terminated (not counted in *len). -ENOENT when absent. */
    int (*get)(repo_store *s, const char *name, size_t max, char **out, size_t *len,
               vmsh_error **err);
    /* 0 with *st filled, -ENOENT when absent, other errors for anything that
     * is not a regular file of the owner. st may be NULL (exists). */
    int (*stat)(repo_store *s, const char *name, repo_store_stat *st, vmsh_error **err);
    /* Deletes one regular file (-ENOENT when absent; never a directory or
     * what a link points at). Durable after sync of its directory. */
    int (*del)(repo_store *s, const char *name, vmsh_error **err);
    /* Lists the entries of directory `dir` ("" is the root); "." and ".."
     * are never passed. -ENOENT when dir is absent. With
     * REPO_STORE_LIST_STAT each entry's kind includes the owner check and
     * st is filled; without it the kind is the entry's type only (a
     * listing of names: whatever is then opened is checked) and st is
     * zero. */
    int (*list)(repo_store *s, const char *dir, unsigned flags, repo_store_list_fn fn, void *opaque,
                vmsh_error **err);
    /* Makes the renames and deletes in directory `dir` durable. */
    int (*sync)(repo_store *s, const char *dir, vmsh_error **err);
    /* Creates directory `dir` and its missing parents (mode 0700). */
    int (*mkdir)(repo_store *s, const char *dir, vmsh_error **err);

    /* Ranged reads: open a file for reading (REPO_STORE_DIRECT: O_DIRECT,
     * buffers and offsets then aligned to 4096), read at offsets, close. */
    int (*open_file)(repo_store *s, const char *name, unsigned flags, repo_store_file **out,
                     vmsh_error **err);
    /* Reads up to len bytes at off: bytes read (0 at the end), or -errno. */
    int64_t (*pread)(repo_store_file *f, void *buf, size_t len, uint64_t off);
    int (*fstat)(repo_store_file *f, repo_store_stat *st);
    void (*close)(repo_store_file *f);

    /* The streaming writer: create `name`'s temporary file (invisible under
     * `name` until commit), write at offsets, commit (set the size, sync,
     * rename to `name`, sync the directory and its parent) or abort (close,
     * remove the temporary file). REPO_STORE_DIRECT as for open. */
    int (*create)(repo_store *s, const char *name, unsigned flags, repo_store_file **out,
                  vmsh_error **err);
    int64_t (*pwrite)(repo_store_file *f, const void *buf, size_t len, uint64_t off);
    int (*commit)(repo_store_file *f, uint64_t size, vmsh_error **err); /* then close */
    void (*abort)(repo_store_file *f);                                  /* closes */

    /* Takes lock `which` ("write", "read") in locks/: exclusive or shared,
     * never waiting (-EBUSY). A shared lock on a repository that cannot be
     * written (read-only filesystem, locks/ not writable) whose lock file
     * does not exist is *out = NULL and 0: docs/formats/repository.md,
     * "Concurrency and locks". */
    int (*lock)(repo_store *s, const char *which, bool exclusive, vmsh_lock **out,
                vmsh_error **err);

    void (*free)(repo_store *s);

    /* Optional (NULL, or -EOPNOTSUPP): the store's own clock now, in ms
     * since the epoch, read through object `name` (which exists), for a
     * store whose modification times are not its own clock. RADOS: the
     * object times are the client's, so the OSD's clock is read through a
     * cls_lock lease (docs/formats/gc.md, "Times"). Without it, an
     * object's modification time is the store's clock. */
    int (*clock)(repo_store *s, const char *name, int64_t *ms, vmsh_error **err);
} repo_store_ops;

struct repo_store {
    const repo_store_ops *ops;
    char *root; /* for messages */
    /* The pack size this store wants from writers (issue 27 point 5): 0
     * for the repository's default (64 MiB). A store that uploads a pack
     * as one object after it is complete asks for less: the last pack's
     * upload is a backup's tail, and smaller objects keep its memory low
     * (docs/formats/repository.md, "The object stores"). */
    uint64_t pack_target;
};

/* The POSIX store (store_posix.c): a local directory. Opens (or, with
 * REPO_STORE_CREATE, creates) the root and checks who may write it:
 * docs/formats/repository.md, "Stores". */
int repo_store_posix_open(repo_store **out, const char *root, unsigned flags, vmsh_error **err);

static inline void repo_store_free(repo_store *s)
{
    if (s)
        s->ops->free(s);
}

#endif
