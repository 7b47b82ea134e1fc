/* maint.c - prune (retention) and gc (docs/formats/repository.md, "gc" and
 * "prune"). Both hold the repository's write lock, so neither runs beside a
 * backup: gc may then treat everything no manifest needs as garbage. */
#include "internal.h"

#include "chunkindex.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

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
        vmsh_error *e = NULL;
        if ((rc = r->store->ops->del(r->store, repo_rel(r, p), &e)) < 0 && rc != -ENOENT) {
            vmsh_error_propagate(err, &e);
            vmsh_error_prefix(err, "cannot delete backup %s", a[i].id);
            goto out;
        }
        vmsh_error_free(e);
    }
    if (!dry_run && res->n_forget && (rc = r->store->ops->sync(r->store, "backups", err)) < 0)
        goto out;
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

typedef struct sweep {
    vmsh_repo *r;
    const char *dir; /* relative, "" for the root */
    int depth;
    vmsh_gc_stats *st;
    const name_set *indexes; /* non-NULL: delete index objects not in it */
} sweep;

static int sweep_entry(void *opaque, const char *name, repo_store_kind kind,
                       const repo_store_stat *s)
{
    const sweep *sw = opaque;
    char p[256];
    if (name[0] == '.')
        return 0;
    if (snprintf(p, sizeof(p), "%s%s%s", sw->dir, *sw->dir ? "/" : "", name) >= (int)sizeof(p))
        return 0;
    if (kind == REPO_STORE_OTHER) {
        /* a link, a FIFO, another owner's file: never entered or deleted
         * (issue 20, point 6); counted for the report */
        sw->st->skipped++;
        return 0;
    }
    if (kind == REPO_STORE_DIR && sw->depth > 0) {
        if (sw->indexes && strlen(name) != 2)
            return 0; /* index/ holds only the fan-out */
        sweep sub = *sw;
        sub.dir = p;
        sub.depth--;
        vmsh_error *e = NULL;
        if (sw->r->store->ops->list(sw->r->store, p, REPO_STORE_LIST_STAT, sweep_entry, &sub, &e) <
            0)
            sw->st->skipped++; /* replaced meanwhile: left alone */
        vmsh_error_free(e);
        return 0;
    }
    bool garbage = kind == REPO_STORE_REG && is_tmp_name(name);
    if (kind == REPO_STORE_REG && sw->indexes && sw->depth == 0 && strlen(name) == 64)
        garbage = !(sw->indexes->n &&
                    bsearch(name, sw->indexes->v, sw->indexes->n, sizeof(*sw->indexes->v), cmp65));
    if (garbage && sw->r->store->ops->del(sw->r->store, p, NULL) == 0) {
        if (is_tmp_name(name))
            sw->st->tmp_deleted++;
        else
            sw->st->indexes_deleted++;
        sw->st->bytes_freed += s->size;
    }
    return 0;
}

/* Removes temporary files in `dir` (and `depth` levels of fan-out below
 * it), and with `indexes` the index objects no manifest names. Only regular
 * files and directories of the repository are touched: the store never
 * follows a link, so the sweep never leaves the repository. */
static void sweep_tmp(vmsh_repo *r, const char *dir, int depth, const name_set *indexes,
                      vmsh_gc_stats *st)
{
    sweep sw = {.r = r, .dir = dir, .depth = depth, .st = st, .indexes = indexes};
    vmsh_error *e = NULL;
    if (r->store->ops->list(r->store, dir, REPO_STORE_LIST_STAT, sweep_entry, &sw, &e) < 0 && e &&
        e->code != -ENOENT)
        st->skipped++;
    vmsh_error_free(e);
}

/* gc's refusal: what verify would report as damage in a manifest or an
 * index (unreadable, fails its checksum or authentication, not bound to its
 * name, sizes that disagree) stops gc before anything is deleted, since a
 * live set read from objects it cannot trust could delete chunks a backup
 * needs (docs/formats/repository.md, "gc"). -EBADMSG stays -EBADMSG (CLI exit
 * 3); other errors (no memory, I/O) keep their code. */
static int gc_refuse(vmsh_error **err, vmsh_error **e, int rc, const char *backup, const char *file)
{
    const char *msg = *e ? (*e)->message : "unreadable";
    if (file)
        rc = vmsh_error_set(err, rc,
                            "gc stopped, nothing deleted: backup %s, file %s: %s; run 'vmshadow "
                            "verify' to see every damaged backup",
                            backup, file, msg);
    else
        rc = vmsh_error_set(err, rc,
                            "gc stopped, nothing deleted: backup %s: %s; run 'vmshadow verify' "
                            "to see every damaged backup",
                            backup, msg);
    vmsh_error_free(*e);
    *e = NULL;
    return rc;
}

static int collect_live(vmsh_repo *r, chunk_map *live, name_set *indexes, vmsh_error **err)
{
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        vmsh_backup_info *b = NULL;
        vmsh_error *e = NULL;
        if ((rc = manifest_load(r, ids[i], &b, &e)) < 0) {
            rc = gc_refuse(err, &e, rc, ids[i], NULL);
            break;
        }
        for (size_t f = 0; rc == 0 && f < b->n_files; f++) {
            vmsh_file_index *idx = NULL;
            if ((rc = index_load(r, b->files[f].index, &idx, &e)) == 0 &&
                idx->size != b->files[f].size)
                rc = vmsh_error_set(&e, -EBADMSG,
                                    "index size does not match the manifest: index %s holds "
                                    "%llu bytes, the manifest says %llu",
                                    b->files[f].index, (unsigned long long)idx->size,
                                    (unsigned long long)b->files[f].size);
            if (rc < 0) {
                vmsh_file_index_free(idx);
                rc = gc_refuse(err, &e, rc, b->id, b->files[f].name);
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

static int pread_all(vmsh_repo *r, repo_store_file *fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        int64_t n = r->store->ops->pread(fd, p, len, off);
        if (n <= 0)
            return n < 0 ? (int)n : -EBADMSG;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

typedef struct dead_set {
    uint8_t (*v)[16];
    size_t n;
} dead_set;

static bool keep_live_pack(void *opaque, const ci_entry *e)
{
    const dead_set *d = opaque;
    return !(d->n && bsearch(e->pack, d->v, d->n, sizeof(*d->v), cmp16));
}

/* The chunk index after gc's repack (docs/formats/repository.md, "Chunk
 * index runs"): a run for the new packs, then every run merged into one
 * without the entries of the packs about to be deleted, written before the
 * old runs go, and all of it before any pack goes; or, in a repository
 * without runs, the runs built from the pack tables (the upgrade). */
static int gc_runs(vmsh_repo *r, size_t first_new, dead_set *dead, vmsh_error **err)
{
    ci_key k;
    ci_key_init(&k, &r->keys);
    ci_remove_parts(r);
    size_t nruns = 0;
    int rc = ci_count_runs(r, &nruns, err);
    if (rc < 0)
        return rc;
    if (dead->n)
        qsort(dead->v, dead->n, sizeof(*dead->v), cmp16);
    if (nruns == 0)
        return ci_build_from_packs(r, r->crypto, &k, keep_live_pack, dead, err);
    for (size_t p = first_new; p < r->n_packs; p++) {
        if (r->packs[p].n_chunks == 0)
            continue; /* opened by the pack writer, never written */
        _cleanup_free_ char *path = pack_path(r->path, r->packs[p].name);
        chunk_loc *t = NULL;
        uint32_t nt = 0;
        uint64_t size = 0;
        if (!path)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        if ((rc = pack_read_table(r, path, r->crypto, r->keys.encrypted, &t, &nt, &size, err)) < 0)
            return rc;
        ci_entry *e = vmsh_calloc_array(nt ? nt : 1, sizeof(*e));
        if (!e) {
            free(t);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        for (uint32_t i = 0; i < nt; i++) {
            memcpy(e[i].id, t[i].id, ID_LEN);
            vmsh_unhex(r->packs[p].name, e[i].pack, 16);
            e[i].offset = t[i].offset;
            e[i].stored_len = t[i].stored_len;
            e[i].raw_len = t[i].raw_len;
            e[i].kind = t[i].kind;
        }
        free(t);
        rc = ci_write_entries(r, &k, e, nt, err);
        free(e);
        if (rc < 0)
            return rc;
        nruns++;
    }
    if (dead->n == 0 && nruns <= CI_MERGE_RUNS)
        return 0;
    return ci_merge_all(r, &k, keep_live_pack, dead, err);
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
    dead_set ds = {0};
    char(*names)[33] = NULL;
    size_t n_old = 0, first_new = 0;
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
    /* a fresh view of the packs: their names, then one table at a time */
    repo_map_forget(r);
    if ((rc = repo_pack_names(r, &names, &n_old, err)) < 0)
        goto out;
    first_new = r->n_packs;
    dead = calloc(n_old ? n_old : 1, sizeof(bool));
    ds.v = vmsh_calloc_array(n_old ? n_old : 1, sizeof(*ds.v));
    if (!dead || !ds.v || (rc = pack_writer_new(&pw, r, err)) < 0) {
        rc = rc < 0 ? rc : vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t p = 0; p < n_old; p++) {
        _cleanup_free_ char *path = pack_path(r->path, names[p]);
        chunk_loc *e = NULL;
        uint32_t ne = 0;
        uint64_t size = 0;
        if (!path)
            continue;
        vmsh_error *te = NULL;
        if ((rc = pack_read_table(r, path, r->crypto, r->keys.encrypted, &e, &ne, &size, &te)) <
            0) {
            if (rc == -ENOMEM || rc == -EPROTONOSUPPORT || rc == -EKEYREJECTED) {
                rc = rc == -EKEYREJECTED ? -EBADMSG : rc;
                if (te)
                    te->code = rc;
                vmsh_error_propagate(err, &te);
                goto out;
            }
            vmsh_error_free(te);
            st.skipped++; /* unknown contents: never deleted by gc; verify reports it */
            continue;
        }
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
            repo_store_file *fd = NULL;
            _cleanup_free_ uint8_t *blob = malloc(2 * CHUNK_SIZE + GCM_OVERHEAD);
            if (!blob ||
                (rc = r->store->ops->open_file(r->store, repo_rel(r, path), 0, &fd, err)) < 0) {
                free(e);
                rc = rc < 0 ? rc : vmsh_error_set(err, -ENOMEM, "cannot read pack %s", path);
                goto out;
            }
            for (uint32_t i = 0; i < ne; i++) {
                chunk_loc *lv = chunk_map_find(&live, e[i].id);
                if (!lv || lv->pack == 1) /* dead, or already copied */
                    continue;
                if ((rc = pread_all(r, fd, blob, e[i].stored_len, e[i].offset)) < 0) {
                    r->store->ops->close(fd);
                    free(e);
                    rc = vmsh_error_set(err, rc == -EBADMSG ? -EBADMSG : rc,
                                        "cannot read pack %s: %s", path, strerror(-rc));
                    goto out;
                }
                chunk_loc nl = e[i];
                if ((rc = pack_writer_add(pw, &nl, blob, err)) < 0) {
                    r->store->ops->close(fd);
                    free(e);
                    goto out;
                }
                lv->pack = 1;
            }
            r->store->ops->close(fd);
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
    for (size_t p = 0; p < n_old; p++)
        if (dead[p])
            vmsh_unhex(names[p], ds.v[ds.n++], 16);
    /* and the chunk index no longer names a pack about to go */
    if ((rc = gc_runs(r, first_new, &ds, err)) < 0)
        goto out;
    for (size_t p = 0; p < n_old; p++) {
        if (!dead[p])
            continue;
        _cleanup_free_ char *path = pack_path(r->path, names[p]);
        vmsh_error *de = NULL;
        if (path && (rc = r->store->ops->del(r->store, repo_rel(r, path), &de)) < 0 &&
            rc != -ENOENT) {
            vmsh_error_propagate(err, &de);
            goto out;
        }
        vmsh_error_free(de);
    }
    for (size_t p = first_new; p < r->n_packs; p++)
        st.bytes_freed -= st.bytes_freed >= r->packs[p].size ? r->packs[p].size : st.bytes_freed;
    /* unreferenced index objects */
    sweep_tmp(r, "index", 1, &indexes, &st);
    sweep_tmp(r, "", 2, NULL, &st);
    static const char *const dirs[] = {"packs", "index", "backups"};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(dirs); i++)
        r->store->ops->sync(r->store, dirs[i], NULL);
    rc = 0;
out:
    pack_writer_free(pw);
    /* the in-memory view is stale after gc: reload on next need */
    repo_map_forget(r);
    free(dead);
    free(ds.v);
    free(names);
    free(indexes.v);
    chunk_map_clear(&live);
    vmsh_lock_free(rl);
    vmsh_lock_free(wl);
    if (rc == 0 && stats)
        *stats = st;
    return rc;
}
