/* maint.c - prune (retention) and gc (docs/formats/repository.md, "gc" and
 * "prune"). Both hold the repository's write lock, so neither runs beside a
 * backup: gc may then treat everything no manifest needs as garbage. */
#include "internal.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- prune ---- */

void vmsh_prune_result_free(vmsh_prune_result *p)
{
    if (!p)
        return;
    free(p->keep);
    free(p->forget);
    free(p);
}

enum { BUCKET_DAY, BUCKET_WEEK, BUCKET_MONTH };

static void bucket(int64_t time_us, int kind, char *out, size_t cap)
{
    time_t t = (time_t)(time_us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    if (kind == BUCKET_DAY)
        strftime(out, cap, "%Y-%m-%d", &tm);
    else if (kind == BUCKET_WEEK)
        strftime(out, cap, "%G-W%V", &tm); /* ISO weeks */
    else
        strftime(out, cap, "%Y-%m", &tm);
}

/* Marks in keep[] (indexes into a, oldest first) the newest backup of each of
 * the `n` newest buckets. */
static void keep_buckets(const vmsh_backup_info *a, size_t count, unsigned n, int kind, bool *keep)
{
    char last[32] = "";
    unsigned taken = 0;
    for (size_t i = count; i-- > 0 && taken < n;) {
        char b[32];
        bucket(a[i].time_us, kind, b, sizeof(b));
        if (strcmp(b, last) == 0)
            continue;
        snprintf(last, sizeof(last), "%s", b);
        keep[i] = true;
        taken++;
    }
}

int vmsh_repo_prune(vmsh_repo *r, const vmsh_retention *policy, bool dry_run,
                    vmsh_prune_result **out, vmsh_error **err)
{
    if (!policy || (!policy->keep_last && !policy->keep_daily && !policy->keep_weekly &&
                    !policy->keep_monthly))
        return vmsh_error_set(err, -EINVAL,
                              "prune needs at least one --keep-* rule (it never deletes every "
                              "backup)");
    vmsh_lock *wl = NULL;
    int rc = repo_lock(r, "write", true, &wl, err);
    if (rc < 0)
        return rc;
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    bool *keep = NULL;
    vmsh_prune_result *res = calloc(1, sizeof(*res));
    if (!res) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = vmsh_repo_list(r, &a, &n, err)) < 0)
        goto out;
    keep = calloc(n ? n : 1, sizeof(bool));
    res->keep = vmsh_calloc_array(n ? n : 1, sizeof(*res->keep));
    res->forget = vmsh_calloc_array(n ? n : 1, sizeof(*res->forget));
    if (!keep || !res->keep || !res->forget) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n && i < policy->keep_last; i++)
        keep[n - 1 - i] = true;
    keep_buckets(a, n, policy->keep_daily, BUCKET_DAY, keep);
    keep_buckets(a, n, policy->keep_weekly, BUCKET_WEEK, keep);
    keep_buckets(a, n, policy->keep_monthly, BUCKET_MONTH, keep);
    for (size_t i = 0; i < n; i++) {
        if (keep[i]) {
            memcpy(res->keep[res->n_keep++], a[i].id, VMSH_BACKUP_ID_LEN + 1);
            continue;
        }
        memcpy(res->forget[res->n_forget++], a[i].id, VMSH_BACKUP_ID_LEN + 1);
        if (dry_run)
            continue;
        _cleanup_free_ char *p = manifest_path(r->path, a[i].id);
        if (!p) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        if (unlink(p) < 0 && errno != ENOENT) {
            rc = vmsh_error_set(err, -errno, "cannot delete backup %s (%s): %s", a[i].id, p,
                                strerror(errno));
            goto out;
        }
    }
    if (!dry_run && res->n_forget) {
        _cleanup_free_ char *dir = vmsh_path_join(r->path, "backups");
        if (!dir || (rc = vmsh_fs_fsync_dir(dir, err)) < 0) {
            rc = rc < 0 ? rc : vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    *out = res;
    res = NULL;
    rc = 0;
out:
    free(keep);
    vmsh_backup_info_array_free(a, n);
    vmsh_prune_result_free(res);
    vmsh_lock_free(wl);
    return rc;
}

/* ---- gc ---- */

typedef struct name_set {
    char (*v)[65];
    size_t n, cap;
} name_set;

static int cmp65(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int name_add(name_set *s, const char *name)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        char(*nv)[65] = vmsh_realloc_array(s->v, nc, sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        s->v = nv;
        s->cap = nc;
    }
    snprintf(s->v[s->n++], 65, "%s", name);
    return 0;
}

static bool is_tmp_name(const char *n)
{
    return strstr(n, ".tmp.") != NULL;
}

/* Removes temporary files in `dir` (and one level of fan-out below it). */
static void sweep_tmp(const char *dir, int depth, vmsh_gc_stats *st)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        _cleanup_free_ char *p = vmsh_path_join(dir, de->d_name);
        if (!p)
            continue;
        struct stat s;
        if (lstat(p, &s) < 0)
            continue;
        if (S_ISDIR(s.st_mode) && depth > 0) {
            sweep_tmp(p, depth - 1, st);
        } else if (S_ISREG(s.st_mode) && is_tmp_name(de->d_name) && unlink(p) == 0) {
            st->tmp_deleted++;
            st->bytes_freed += (uint64_t)s.st_size;
        }
    }
    closedir(d);
}

static int collect_live(vmsh_repo *r, chunk_map *live, name_set *indexes, vmsh_error **err)
{
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        vmsh_backup_info *b = NULL;
        if ((rc = manifest_load(r, ids[i], &b, err)) < 0) {
            vmsh_error_prefix(err, "gc stopped, nothing deleted");
            break;
        }
        for (size_t f = 0; rc == 0 && f < b->n_files; f++) {
            vmsh_file_index *idx = NULL;
            if ((rc = index_load(r, b->files[f].index, &idx, err)) < 0) {
                vmsh_error_prefix(err, "gc stopped, nothing deleted: backup %s, file %s", b->id,
                                  b->files[f].name);
                break;
            }
            if (name_add(indexes, b->files[f].index) < 0)
                rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            for (size_t k = 0; rc == 0 && k < idx->count; k++) {
                chunk_loc c = {0};
                memcpy(c.id, idx->entries[k].id, ID_LEN);
                if (chunk_map_insert(live, &c, NULL) < 0)
                    rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            }
            vmsh_file_index_free(idx);
        }
        vmsh_backup_info_free(b);
    }
    free(ids);
    if (rc == 0 && indexes->n)
        qsort(indexes->v, indexes->n, sizeof(*indexes->v), cmp65);
    return rc;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EBADMSG;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int vmsh_repo_gc(vmsh_repo *r, vmsh_gc_stats *stats, vmsh_error **err)
{
    vmsh_gc_stats st = {0};
    vmsh_lock *wl = NULL, *rl = NULL;
    chunk_map live;
    chunk_map_init(&live);
    name_set indexes = {0};
    pack_writer *pw = NULL;
    bool *dead = NULL;
    size_t n_old = 0;
    int rc = repo_lock(r, "write", true, &wl, err);
    if (rc < 0)
        return rc;
    if ((rc = collect_live(r, &live, &indexes, err)) < 0)
        goto out;
    if ((rc = repo_lock(r, "read", true, &rl, err)) < 0) {
        vmsh_error_prefix(err, "a restore, a verify or `vmshadow serve` is reading backups; "
                               "gc can run when it has finished");
        goto out;
    }
    /* a fresh view of the packs */
    repo_map_forget(r);
    if ((rc = repo_load_map(r, err)) < 0)
        goto out;
    n_old = r->n_packs;
    dead = calloc(n_old ? n_old : 1, sizeof(bool));
    if (!dead || (rc = pack_writer_new(&pw, r, err)) < 0) {
        rc = rc < 0 ? rc : vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t p = 0; p < n_old; p++) {
        if (r->packs[p].damaged)
            continue; /* unknown contents: never deleted by gc; verify reports it */
        _cleanup_free_ char *path = pack_path(r->path, r->packs[p].name);
        chunk_loc *e = NULL;
        uint32_t ne = 0;
        uint64_t size = 0;
        if (!path)
            continue;
        if ((rc = pack_read_table(path, r->crypto, r->keys.encrypted, &e, &ne, &size, err)) < 0)
            goto out;
        uint64_t live_bytes = 0, all_bytes = 0;
        for (uint32_t i = 0; i < ne; i++) {
            all_bytes += e[i].stored_len;
            if (chunk_map_find(&live, e[i].id))
                live_bytes += e[i].stored_len;
        }
        if (live_bytes * 2 >= all_bytes && live_bytes > 0) {
            free(e);
            continue;
        }
        if (live_bytes > 0) {
            /* mostly dead: copy the live blobs as stored into new packs */
            _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
            _cleanup_free_ uint8_t *blob = malloc(2 * CHUNK_SIZE + GCM_OVERHEAD);
            if (fd < 0 || !blob) {
                free(e);
                rc = vmsh_error_set(err, fd < 0 ? -errno : -ENOMEM, "cannot read pack %s", path);
                goto out;
            }
            for (uint32_t i = 0; i < ne; i++) {
                chunk_loc *lv = chunk_map_find(&live, e[i].id);
                if (!lv || lv->pack == 1) /* dead, or already copied */
                    continue;
                if ((rc = pread_all(fd, blob, e[i].stored_len, e[i].offset)) < 0) {
                    free(e);
                    rc = vmsh_error_set(err, rc == -EBADMSG ? -EBADMSG : rc,
                                        "cannot read pack %s: %s", path, strerror(-rc));
                    goto out;
                }
                chunk_loc nl = e[i];
                if ((rc = pack_writer_add(pw, &nl, blob, err)) < 0) {
                    free(e);
                    goto out;
                }
                lv->pack = 1;
            }
            st.packs_rewritten++;
        } else {
            st.packs_deleted++;
        }
        dead[p] = true;
        st.bytes_freed += size;
        free(e);
    }
    /* new packs are durable before any old one goes */
    if ((rc = pack_writer_flush(pw, err)) < 0)
        goto out;
    for (size_t p = 0; p < n_old; p++) {
        if (!dead[p])
            continue;
        _cleanup_free_ char *path = pack_path(r->path, r->packs[p].name);
        if (path && unlink(path) < 0 && errno != ENOENT) {
            rc = vmsh_error_set(err, -errno, "cannot delete %s: %s", path, strerror(errno));
            goto out;
        }
    }
    for (size_t p = n_old; p < r->n_packs; p++)
        st.bytes_freed -= st.bytes_freed >= r->packs[p].size ? r->packs[p].size : st.bytes_freed;
    /* unreferenced index objects (a block: goto out must not skip a cleanup variable) */
    {
        _cleanup_free_ char *idir = vmsh_path_join(r->path, "index");
        DIR *d = idir ? opendir(idir) : NULL;
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (strlen(de->d_name) != 2)
                    continue;
                _cleanup_free_ char *sub = vmsh_path_join(idir, de->d_name);
                DIR *sd = sub ? opendir(sub) : NULL;
                if (!sd)
                    continue;
                struct dirent *se;
                while ((se = readdir(sd))) {
                    if (strlen(se->d_name) != 64 ||
                        (indexes.n &&
                         bsearch(se->d_name, indexes.v, indexes.n, sizeof(*indexes.v), cmp65)))
                        continue;
                    _cleanup_free_ char *p = vmsh_path_join(sub, se->d_name);
                    struct stat s;
                    if (p && stat(p, &s) == 0 && unlink(p) == 0) {
                        st.indexes_deleted++;
                        st.bytes_freed += (uint64_t)s.st_size;
                    }
                }
                closedir(sd);
            }
            closedir(d);
        }
    }
    sweep_tmp(r->path, 2, &st);
    static const char *const dirs[] = {"packs", "index", "backups"};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(dirs); i++) {
        _cleanup_free_ char *p = vmsh_path_join(r->path, dirs[i]);
        if (p)
            vmsh_fs_fsync_dir(p, NULL);
    }
    rc = 0;
out:
    pack_writer_free(pw);
    /* the in-memory view is stale after gc: reload on next need */
    repo_map_forget(r);
    free(dead);
    free(indexes.v);
    chunk_map_clear(&live);
    vmsh_lock_free(rl);
    vmsh_lock_free(wl);
    if (rc == 0 && stats)
        *stats = st;
    return rc;
}
