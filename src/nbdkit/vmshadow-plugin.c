/* vmshadow-plugin.c - nbdkit plugin serving one file of a backup (a VM's
 * disk) read-only over NBD (issue 23 point 1): `vmshadow serve` runs
 *
 *   nbdkit --unix SOCKET --foreground --readonly nbdkit-vmshadow-plugin.so \
 *          repo=DIR backup=ID file=NAME [key-file=PATH] [cache=CHUNKS]
 *
 * Reads go through the library's random-access reader (reader.h): every
 * chunk checked against its ID, holes and zero chunks reported as extents
 * so that clients skip them. One reader serves every connection: it is
 * thread-safe, so the thread model is parallel and multi-conn is
 * advertised (every connection sees the same immutable bytes). The reader
 * holds the repository's read lock for the life of the process: gc refuses
 * meanwhile. The passphrase never appears on a command line: only the path
 * of the key file does. */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <vmshadow/repo/reader.h>
#include <vmshadow/repo/repo.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *repo_path, *backup, *file, *key_file;
static size_t cache_chunks;
static vmsh_repo *repo;
static vmsh_reader *reader;

static void vsh_unload(void)
{
    vmsh_reader_free(reader);
    vmsh_repo_free(repo);
    free(repo_path);
    free(backup);
    free(file);
    free(key_file);
}

static int vsh_config(const char *key, const char *value)
{
    char **slot = NULL;
    if (strcmp(key, "repo") == 0)
        slot = &repo_path;
    else if (strcmp(key, "key-file") == 0)
        slot = &key_file;
    else if (strcmp(key, "backup") == 0)
        slot = &backup;
    else if (strcmp(key, "file") == 0)
        slot = &file;
    else if (strcmp(key, "cache") == 0) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(value, &end, 10);
        if (errno || !*value || *end || n == 0 || n > 65536) {
            nbdkit_error("cache=%s: expected a number of 64 KiB chunks, 1 to 65536", value);
            return -1;
        }
        cache_chunks = (size_t)n;
        return 0;
    } else {
        nbdkit_error("unknown parameter '%s'", key);
        return -1;
    }
    free(*slot);
    /* paths made absolute now: nbdkit may change directory later */
    *slot = slot == &repo_path || slot == &key_file ? nbdkit_absolute_path(value) : strdup(value);
    if (!*slot) {
        nbdkit_error("out of memory");
        return -1;
    }
    return 0;
}

static int vsh_config_complete(void)
{
    if (!repo_path || !backup || !file) {
        nbdkit_error("repo=, backup= and file= are required");
        return -1;
    }
    return 0;
}

/* Opens the repository and the file before the socket accepts anything:
 * a wrong key, a pruned backup or a lock held by gc fail the start. */
static int vsh_get_ready(void)
{
    vmsh_error *err = NULL;
    vmsh_reader_opts o = {.cache_chunks = cache_chunks};
    int rc = vmsh_repo_open(&repo, repo_path, key_file, &err);
    if (rc == 0)
        rc = vmsh_reader_open(&reader, repo, backup, file, &o, &err);
    if (rc < 0) {
        nbdkit_error("%s", err ? err->message : "cannot open the backup");
        vmsh_error_free(err);
        return -1;
    }
    return 0;
}

static void *vsh_open(int readonly)
{
    (void)readonly;
    return reader; /* one shared, thread-safe reader */
}

static int64_t vsh_get_size(void *h)
{
    return (int64_t)vmsh_reader_size(h);
}

static int vsh_can_multi_conn(void *h)
{
    (void)h;
    return 1;
}

static int vsh_can_write(void *h)
{
    (void)h;
    return 0;
}

static int vsh_can_extents(void *h)
{
    (void)h;
    return 1;
}

static int vsh_can_cache(void *h)
{
    (void)h;
    return NBDKIT_CACHE_NONE;
}

/* NBD has no "damaged" error: EIO, with the reader's message in the log. */
static void report(int code, vmsh_error *err)
{
    nbdkit_error("%s", err ? err->message : strerror(-code));
    nbdkit_set_error(code == -ENOMEM ? ENOMEM : EIO);
    vmsh_error_free(err);
}

static int vsh_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)flags;
    char *p = buf;
    while (count > 0) {
        vmsh_error *err = NULL;
        ssize_t n = vmsh_reader_pread(h, p, count, offset, &err);
        if (n < 0) {
            report((int)n, err);
            return -1;
        }
        if (n == 0) { /* nbdkit never asks past the size */
            nbdkit_error("read past the end of %s", vmsh_reader_name(h));
            nbdkit_set_error(EIO);
            return -1;
        }
        p += n;
        count -= (uint32_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

typedef struct ext_walk {
    struct nbdkit_extents *exts;
    bool one;
} ext_walk;

static int add_extent(void *opaque, uint64_t offset, uint64_t length, bool data)
{
    ext_walk *w = opaque;
    if (nbdkit_add_extent(w->exts, offset, length,
                          data ? 0 : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) < 0)
        return -1;
    return w->one ? 1 : 0; /* REQ_ONE: the first extent is enough */
}

static int vsh_extents(void *h, uint32_t count, uint64_t offset, uint32_t flags,
                       struct nbdkit_extents *exts)
{
    ext_walk w = {.exts = exts, .one = (flags & NBDKIT_FLAG_REQ_ONE) != 0};
    return vmsh_reader_extents(h, offset, count, add_extent, &w) < 0 ? -1 : 0;
}

static struct nbdkit_plugin plugin = {
    .name = "vmshadow",
    .longname = "vmshadow backup reader",
    .description = "serves a file of a vmshadow backup (a VM's disk) read-only",
    .config_help = "repo=<DIR>        the repository (required)\n"
                   "backup=<ID>       backup ID, unique prefix or 'latest' (required)\n"
                   "file=<NAME>       the file of the backup, e.g. web/disk/vda (required)\n"
                   "key-file=<PATH>   the passphrase file of an encrypted repository\n"
                   "cache=<N>         decoded 64 KiB chunks kept (default 128)",
    .unload = vsh_unload,
    .config = vsh_config,
    .config_complete = vsh_config_complete,
    .magic_config_key = NULL,
    .get_ready = vsh_get_ready,
    .open = vsh_open,
    .get_size = vsh_get_size,
    .can_write = vsh_can_write,
    .can_multi_conn = vsh_can_multi_conn,
    .can_extents = vsh_can_extents,
    .can_cache = vsh_can_cache,
    .pread = vsh_pread,
    .extents = vsh_extents,
};

NBDKIT_REGISTER_PLUGIN(plugin)
