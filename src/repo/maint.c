/* maint.c - prune (retention) and gc (docs/formats/repository.md, "gc" and
 * "prune"; docs/formats/gc.md). Neither takes the write lock any more (issue
 * 26): prune only deletes manifests, and gc deletes a pack only a grace
 * period after it marked it, when it is still unreferenced and every live
 * writer started after the mark. */
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
#include <zstd.h>

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
    /* No lock (issue 26): deleting a manifest is one atomic delete, and gc's
     * marks and grace protect what a running backup builds on */
    int rc = 0;
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

/* The latest time (ms) a modification time read back may stand for: the
 * object stores keep whole seconds (RADOS, S3), so a time without a
 * fraction may be up to 999 ms early. */
static int64_t latest_ms(const repo_store_stat *st)
{
    int64_t ms = st->mtime_ns / 1000000;
    return st->mtime_ns % 1000000000 == 0 ? ms + 999 : ms;
}

typedef struct sweep {
    vmsh_repo *r;
    const char *dir; /* relative, "" for the root */
    int depth;
    vmsh_gc_stats *st;
    const name_set *indexes; /* non-NULL: delete index objects not in it */
    int64_t cutoff_ms;       /* only what was last written before (gc.md) */
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
    if (garbage && latest_ms(s) >= sw->cutoff_ms)
        garbage = false; /* young: a writer's, that started after gc looked */
    if (garbage && sw->indexes && sw->r->gc_sweep_hook)
        sw->r->gc_sweep_hook(sw->r->gc_sweep_hook_opaque, p);
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
                      int64_t cutoff_ms, vmsh_gc_stats *st)
{
    sweep sw = {
        .r = r, .dir = dir, .depth = depth, .st = st, .indexes = indexes, .cutoff_ms = cutoff_ms};
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

/* Repacking (docs/formats/gc.md, "Repacking"): a referenced pack whose
 * referenced bytes are below REPACK_LIVE_PERCENT of its size has its live
 * chunks copied into new packs, written with a chunk-index run naming
 * them, before the old pack is marked like an unreferenced one. */
#define REPACK_LIVE_PERCENT 50
/* ... and only when that frees at least this much: a small pack is mostly
 * its own header and table, so its references are always "below half" of
 * it, and copying it would only write another such pack, at every gc. */
#define REPACK_MIN_DEAD_BYTES (64u << 10)

typedef struct repacker {
    vmsh_repo *r;
    pack_writer *pw;
    chunk_reader *cr;
    crypto_ctx *crypto;
    ZSTD_CCtx *cctx;
    uint8_t *raw, *cbuf, *sbuf;
    size_t cbuf_cap;
    uint64_t copied, bytes;
} repacker;

static void repacker_free(repacker *rp)
{
    pack_writer_free(rp->pw);
    chunk_reader_free(rp->cr);
    crypto_ctx_free(rp->crypto);
    ZSTD_freeCCtx(rp->cctx);
    free(rp->raw);
    free(rp->cbuf);
    free(rp->sbuf);
}

static int repacker_init(repacker *rp, vmsh_repo *r, vmsh_error **err)
{
    *rp = (repacker){.r = r};
    rp->cbuf_cap = ZSTD_compressBound(CHUNK_SIZE);
    rp->raw = malloc(CHUNK_SIZE);
    rp->cbuf = malloc(rp->cbuf_cap);
    rp->sbuf = malloc(rp->cbuf_cap + GCM_OVERHEAD);
    rp->cctx = ZSTD_createCCtx();
    if (!rp->raw || !rp->cbuf || !rp->sbuf || !rp->cctx)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int rc;
    if ((rc = crypto_ctx_new(&rp->crypto, &r->keys, err)) < 0 ||
        (rc = chunk_reader_new(&rp->cr, r, err)) < 0 || (rc = pack_writer_new(&rp->pw, r, err)) < 0)
        return rc;
    return 0;
}

/* Copies the chunk at `loc` (read and checked as a restore does) into the
 * new packs, and makes later lookups of this gc find the copy. */
static int repack_chunk(repacker *rp, const chunk_loc *loc, vmsh_error **err)
{
    vmsh_repo *r = rp->r;
    int rc = chunk_reader_read(rp->cr, loc, rp->raw, err);
    if (rc < 0)
        return rc;
    chunk_loc nl = {.raw_len = loc->raw_len, .kind = BLOB_RAW};
    memcpy(nl.id, loc->id, ID_LEN);
    const uint8_t *blob = rp->raw;
    size_t blen = loc->raw_len;
    if (loc->kind == BLOB_ZSTD) {
        size_t c = ZSTD_compressCCtx(rp->cctx, rp->cbuf, rp->cbuf_cap, rp->raw, loc->raw_len, 3);
        if (!ZSTD_isError(c) && c < blen) {
            blob = rp->cbuf;
            blen = c;
            nl.kind = BLOB_ZSTD;
        }
    }
    if (r->keys.encrypted) {
        if (crypto_seal(rp->crypto, blob, blen, nl.id, ID_LEN, rp->sbuf) < 0)
            return vmsh_error_set(err, -EIO, "cannot encrypt a chunk");
        blob = rp->sbuf;
        blen += GCM_OVERHEAD;
    }
    nl.stored_len = (uint32_t)blen;
    if ((rc = pack_writer_add(rp->pw, &nl, blob, err)) < 0)
        return rc;
    chunk_loc *slot = NULL;
    pthread_mutex_lock(&r->lock);
    rc = chunk_map_insert(&r->map, &nl, &slot);
    if (rc == 0 && slot)
        *slot = nl;
    r->packs[nl.pack].gc_ref = true;
    pthread_mutex_unlock(&r->lock);
    if (rc < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    rp->copied++;
    rp->bytes += blen;
    return 0;
}

/* The chunk index's runs opened again: concurrent writers merge runs (the
 * merged one durable before the old ones go). */
static int ci_refresh(vmsh_repo *r, vmsh_error **err)
{
    ci_set *ns = NULL;
    int rc = ci_set_open(r, &ns, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&r->lock);
    ci_set *old = r->ci;
    r->ci = ns;
    pthread_mutex_unlock(&r->lock);
    ci_set_free(old);
    return 0;
}

/* The mark phase with bounded memory (issue 27, point 2): every manifest,
 * one index at a time, each chunk looked up in the chunk index; the packs
 * that hold a referenced chunk get gc_ref. Memory: the packs (a few bytes
 * each), one index, the names of the live index objects. */
static int mark_refs(vmsh_repo *r, name_set *indexes, uint64_t *missing, repacker *rp,
                     vmsh_error **err)
{
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0;
    unsigned refreshes = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        vmsh_backup_info *b = NULL;
        vmsh_error *e = NULL;
        if ((rc = manifest_load(r, ids[i], &b, &e)) < 0) {
            if (rc == -ENOENT) { /* pruned meanwhile */
                vmsh_error_free(e);
                rc = 0;
                continue;
            }
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
            if (!rp && name_add(indexes, b->files[f].index) < 0)
                rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            uint8_t last[ID_LEN] = {0};
            for (size_t k = 0; rc == 0 && k < idx->count; k++) {
                if (k && memcmp(last, idx->entries[k].id, ID_LEN) == 0)
                    continue; /* a run of equal chunks: one lookup */
                memcpy(last, idx->entries[k].id, ID_LEN);
                chunk_loc loc;
                vmsh_error *fe = NULL;
                int fr = repo_find_chunk(r, idx->entries[k].id, &loc, true, &fe);
                if (fr < 0 && fr != -ENOMEM && refreshes < 3) {
                    /* a run merged away by a writer since gc opened the
                     * runs (its entries are in the merged one, durable
                     * before it went): the runs again, the lookup again */
                    vmsh_error_free(fe);
                    fe = NULL;
                    refreshes++;
                    if ((fr = ci_refresh(r, &fe)) == 0)
                        fr = repo_find_chunk(r, idx->entries[k].id, &loc, true, &fe);
                }
                if (fr < 0) {
                    vmsh_error_propagate(err, &fe);
                    rc = fr;
                    break;
                }
                vmsh_error_free(fe);
                if (fr == 0) {
                    (*missing)++; /* damage: verify reports it; gc then deletes nothing */
                    continue;
                }
                pthread_mutex_lock(&r->lock);
                bool copy = rp && loc.pack < r->n_packs && r->packs[loc.pack].gc_repack;
                if (!rp) {
                    r->packs[loc.pack].gc_ref = true;
                    r->packs[loc.pack].gc_live += loc.stored_len;
                }
                pthread_mutex_unlock(&r->lock);
                if (copy && (rc = repack_chunk(rp, &loc, err)) < 0)
                    break;
            }
            vmsh_file_index_free(idx);
        }
        vmsh_backup_info_free(b);
    }
    free(ids);
    if (rc == 0 && !rp && indexes->n)
        qsort(indexes->v, indexes->n, sizeof(*indexes->v), cmp65);
    return rc;
}

/* Picks the sparse packs (referenced, not marked, older than any live
 * writer, their references below REPACK_LIVE_PERCENT of their size),
 * copies their live chunks into new packs and writes a run naming the
 * copies: all durable before the caller marks the old packs. A failure
 * leaves the old packs unmarked (the copies are garbage for a later gc). */
static int repack(vmsh_repo *r, const gc_marks *old, int64_t young, uint64_t *packs,
                  vmsh_gc_stats *st, vmsh_error **err)
{
    *packs = 0;
    if (!r->ci || r->legacy)
        return 0;
    uint64_t target = r->pack_target ? r->pack_target : PACK_TARGET_DEFAULT;
    pthread_mutex_lock(&r->lock);
    size_t n = r->n_packs;
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n; i++) {
        char name[33];
        pthread_mutex_lock(&r->lock);
        bool cand = r->packs[i].gc_ref && r->packs[i].gc_live * 100 < target * REPACK_LIVE_PERCENT;
        uint64_t live = r->packs[i].gc_live;
        memcpy(name, r->packs[i].name, sizeof(name));
        pthread_mutex_unlock(&r->lock);
        uint8_t bin[16];
        if (!cand || vmsh_unhex(name, bin, 16) < 0 || gc_marks_find(old, bin))
            continue;
        char path[64];
        snprintf(path, sizeof(path), "packs/%.2s/%s.pack", name, name);
        repo_store_stat sst = {0};
        if (r->store->ops->stat(r->store, path, &sst, NULL) < 0 || latest_ms(&sst) >= young ||
            live * 100 >= sst.size * REPACK_LIVE_PERCENT || sst.size - live < REPACK_MIN_DEAD_BYTES)
            continue;
        pthread_mutex_lock(&r->lock);
        r->packs[i].gc_repack = true;
        pthread_mutex_unlock(&r->lock);
        (*packs)++;
    }
    if (*packs == 0)
        return 0;
    repacker rp;
    size_t mark = r->map.count;
    name_set unused = {0};
    uint64_t missing = 0;
    int rc = repacker_init(&rp, r, err);
    if (rc == 0)
        rc = mark_refs(r, &unused, &missing, &rp, err);
    ci_test_kill_point();
    if (rc == 0)
        rc = pack_writer_flush(rp.pw, err);
    if (rc == 0)
        rc = r->store->ops->sync(r->store, "packs", err);
    ci_test_kill_point();
    /* the run naming the copies, as a backup's commit writes it */
    if (rc == 0)
        rc = ci_write_map_since(r, mark, err);
    if (rc == 0)
        rc = r->store->ops->sync(r->store, "index", err);
    ci_test_kill_point();
    repacker_free(&rp);
    free(unused.v);
    if (rc < 0) {
        for (size_t i = 0; i < n; i++)
            r->packs[i].gc_repack = false;
        *packs = 0;
        return vmsh_error_prefix(err, "gc: repacking the sparse packs");
    }
    (void)st;
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

/* A repository without runs (written before issue 27) gets them first:
 * the mark phase looks chunks up in them. */
static int ensure_runs(vmsh_repo *r, vmsh_error **err)
{
    ci_remove_parts(r);
    size_t nruns = 0;
    int rc = ci_count_runs(r, &nruns, err);
    if (rc < 0 || nruns > 0)
        return rc;
    char(*names)[33] = NULL;
    size_t np = 0;
    if ((rc = repo_pack_names(r, &names, &np, err)) < 0)
        return rc;
    free(names);
    if (np == 0)
        return 0;
    ci_key k;
    ci_key_init(&k, &r->keys);
    return ci_build_from_packs(r, r->crypto, &k, NULL, NULL, err);
}

/* One pass of the protocol (docs/formats/gc.md, "The protocol"). */
static int gc_pass(vmsh_repo *r, const repo_gc_params_t *p, vmsh_gc_stats *st, vmsh_error **err)
{
    gc_sessions ss = {0};
    gc_marks old = {0}, nm = {0}, dis = {0};
    name_set indexes = {0};
    dead_set ds = {0};
    char(*names)[33] = NULL;
    size_t n_names = 0;
    uint64_t missing = 0;
    int64_t now = repo_now_ms(r);
    /* 1. the sessions first: a writer that commits after the manifests are
     * listed below was live here (or started after the marks it reads) */
    int rc = gc_sessions_scan(r, now, p, &ss, err);
    if (rc < 0)
        goto out;
    st->sessions_live = ss.n_live;
    st->sessions_dead += ss.n_dead;
    ci_test_kill_point();
    if ((rc = gc_marks_load(r, &old, err)) < 0)
        goto out;
    ci_test_kill_point();
    /* 2. mark: the packs the manifests reference, through the chunk index */
    repo_map_forget(r);
    if ((rc = ensure_runs(r, err)) < 0 || (rc = repo_load_map(r, err)) < 0)
        goto out;
    /* lookups prefer a copy outside the marked packs: a chunk a writer
     * stored again (gc.md) lets the marked pack go */
    gc_marks_clear(&r->condemned); /* a backup's view, on this handle */
    r->condemned = old;
    r->gc_marking = true;
    ci_test_kill_point();
    rc = mark_refs(r, &indexes, &missing, NULL, err);
    ci_test_kill_point();
    if (rc < 0) {
        r->gc_marking = false;
        r->condemned = (gc_marks){0};
        goto out;
    }
    bool may_delete = missing == 0 && !ss.bad_pin;
    for (size_t i = 0; i < ss.n_pins && may_delete; i++) {
        char mp[32];
        snprintf(mp, sizeof(mp), "backups/%s", ss.pins[i]);
        vmsh_error *e = NULL;
        int sr = r->store->ops->stat(r->store, mp, NULL, &e);
        vmsh_error_free(e);
        if (sr < 0) /* a live writer builds on a backup gc can no longer read */
            may_delete = false;
    }
    if (!may_delete)
        st->deletion_held++;
    int64_t young = (ss.oldest_start_ms < now ? ss.oldest_start_ms : now) - p->margin_ms;
    /* sparse packs: their live chunks copied (and a run naming the copies
     * durable) before they are marked below (gc.md, "Repacking"); the
     * lookups still prefer copies outside the marked packs */
    uint64_t n_repack = 0;
    if (may_delete && (rc = repack(r, &old, young, &n_repack, st, err)) < 0) {
        r->gc_marking = false;
        r->condemned = (gc_marks){0};
        goto out;
    }
    r->gc_marking = false;
    r->condemned = (gc_marks){0};
    /* 3. the packs: unreferenced ones are marked, marked ones deleted when
     * the grace has passed and every live writer started after the mark */
    if ((rc = repo_pack_names(r, &names, &n_names, err)) < 0)
        goto out;
    ds.v = vmsh_calloc_array(n_names ? n_names : 1, sizeof(*ds.v));
    if (!ds.v) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_names; i++) {
        uint8_t bin[16];
        if (vmsh_unhex(names[i], bin, 16) < 0)
            continue;
        int no = repo_pack_no(r, bin);
        if (no < 0) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        pthread_mutex_lock(&r->lock);
        bool ref = r->packs[no].gc_ref, repacked = r->packs[no].gc_repack;
        pthread_mutex_unlock(&r->lock);
        if (repacked) {
            /* its live chunks have copies now: marked like garbage, so
             * that it goes a grace period later (gc.md, "Repacking") */
            if ((rc = gc_marks_add(&nm, bin, -1)) < 0)
                break;
            st->packs_rewritten++;
            st->packs_marked++;
            continue;
        }
        if (ref)
            continue; /* referenced: a mark on it is dropped */
        const gc_mark *m = gc_marks_find(&old, bin);
        if (m) {
            if (may_delete && m->t_ms >= 0 && now - m->t_ms >= p->grace_ms &&
                m->t_ms + 2 * p->margin_ms < ss.oldest_start_ms) {
                memcpy(ds.v[ds.n++], bin, 16);
                continue;
            }
            if ((rc = gc_marks_add(&nm, bin, m->t_ms)) < 0)
                break;
            st->packs_marked++;
            continue;
        }
        /* new garbage, or a pack a live writer is still writing: only what
         * is older than the oldest live writer (minus the margin) is marked */
        char path[64];
        snprintf(path, sizeof(path), "packs/%.2s/%s.pack", names[i], names[i]);
        repo_store_stat sst = {0};
        vmsh_error *e = NULL;
        int sr = r->store->ops->stat(r->store, path, &sst, &e);
        vmsh_error_free(e);
        if (sr < 0) {
            if (sr != -ENOENT)
                st->skipped++;
            continue;
        }
        if (latest_ms(&sst) >= young)
            continue;
        if ((rc = gc_marks_add(&nm, bin, -1)) < 0)
            break;
        st->packs_marked++;
    }
    if (rc < 0) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    /* the merges below keep one entry per chunk, not one of a marked or
     * repacked pack when another copy exists */
    for (size_t i = 0; i < old.n; i++)
        if ((rc = gc_marks_add(&dis, old.v[i].pack, old.v[i].t_ms)) < 0)
            break;
    for (size_t i = 0; rc == 0 && i < nm.n; i++)
        rc = gc_marks_add(&dis, nm.v[i].pack, nm.v[i].t_ms);
    if (rc < 0) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    gc_marks_sort(&dis);
    r->ci_disfavor = &dis;
    /* 4. deletions (no restore, verify or serve runs: vmsh_repo_gc holds
     * the read lock) */
    if (ds.n) {
        /* the chunk index no longer names them before any goes */
        qsort(ds.v, ds.n, sizeof(*ds.v), cmp16);
        ci_key k;
        ci_key_init(&k, &r->keys);
        if ((rc = ci_merge_all(r, &k, keep_live_pack, &ds, err)) < 0)
            goto out;
        for (size_t i = 0; i < ds.n; i++) {
            char hex[33], path[64];
            vmsh_hex(ds.v[i], 16, hex);
            snprintf(path, sizeof(path), "packs/%.2s/%s.pack", hex, hex);
            repo_store_stat sst = {0};
            vmsh_error *de = NULL;
            ci_test_kill_point();
            r->store->ops->stat(r->store, path, &sst, NULL);
            if ((rc = r->store->ops->del(r->store, path, &de)) < 0 && rc != -ENOENT) {
                vmsh_error_propagate(err, &de);
                goto out;
            }
            vmsh_error_free(de);
            rc = 0;
            st->packs_deleted++;
            st->bytes_freed += sst.size;
        }
        r->store->ops->sync(r->store, "packs", NULL);
        ci_test_kill_point();
    } else {
        /* lookups read every run: gc merges them into one (the marked
         * packs' entries stay: they exist until deleted) */
        size_t nruns = 0;
        ci_key k;
        ci_key_init(&k, &r->keys);
        if ((rc = ci_count_runs(r, &nruns, err)) < 0 ||
            (nruns > CI_MERGE_RUNS && (rc = ci_merge_all(r, &k, NULL, NULL, err)) < 0))
            goto out;
    }
    r->ci_disfavor = NULL;
    /* 5. the marks: first with their times unfixed (-1: never deletable),
     * then with the time after that write is complete, so that a writer
     * that started before the stamp has read the marks or is live for the
     * next gc (gc.md, "Why it is safe") */
    gc_marks_sort(&nm);
    bool fresh = false;
    for (size_t i = 0; i < nm.n; i++)
        fresh |= nm.v[i].t_ms < 0;
    if (nm.n || old.n) {
        ci_test_kill_point();
        if ((rc = gc_marks_store(r, &nm, err)) < 0)
            goto out;
        ci_test_kill_point();
        if (fresh) {
            int64_t stamp = repo_now_ms(r);
            for (size_t i = 0; i < nm.n; i++)
                if (nm.v[i].t_ms < 0)
                    nm.v[i].t_ms = stamp;
            if ((rc = gc_marks_store(r, &nm, err)) < 0)
                goto out;
            ci_test_kill_point();
        }
    }
    /* 6. small objects (index objects, temporary files) go only when no
     * writer runs at all: gc then holds the write lock for a moment; a
     * writer taking its session meanwhile is not affected (it takes no
     * lock), so the sweep first checks there is none (gc.md) */
    vmsh_lock *wl = NULL;
    vmsh_error *we = NULL;
    if (ss.n_live == 0 && repo_lock(r, "write", true, &wl, &we) == 0) {
        gc_sessions again = {0};
        vmsh_error *ae = NULL;
        int64_t now2 = repo_now_ms(r);
        if (gc_sessions_scan(r, now2, p, &again, &ae) == 0 && again.n_live == 0) {
            int64_t cutoff = now - p->margin_ms;
            sweep_tmp(r, "index", 1, &indexes, cutoff, st);
            ci_test_kill_point();
            sweep_tmp(r, "", 2, NULL, cutoff, st);
            ci_test_kill_point();
        } else {
            st->deletion_held++;
        }
        vmsh_error_free(ae);
        gc_sessions_clear(&again);
        vmsh_lock_free(wl);
    }
    vmsh_error_free(we);
    static const char *const dirs[] = {"packs", "index", "backups"};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(dirs); i++)
        r->store->ops->sync(r->store, dirs[i], NULL);
    rc = 0;
out:
    r->ci_disfavor = NULL;
    repo_map_forget(r);
    gc_sessions_clear(&ss);
    gc_marks_clear(&old);
    gc_marks_clear(&nm);
    gc_marks_clear(&dis);
    free(indexes.v);
    free(ds.v);
    free(names);
    return rc;
}

int vmsh_repo_gc(vmsh_repo *r, vmsh_gc_stats *stats, vmsh_error **err)
{
    vmsh_gc_stats st = {0};
    repo_gc_params_t p;
    repo_gc_params(r, &p);
    /* one collector at a time: a lock (a lease on the object stores) that
     * dies with its holder */
    vmsh_lock *gl = NULL;
    int rc = repo_lock(r, "gc", true, &gl, err);
    if (rc < 0)
        return rc == -EBUSY ? vmsh_error_prefix(err, "another gc runs") : rc;
    /* gc's clock against the store's, as a writer's (docs/formats/gc.md) */
    vmsh_lock *rl = NULL;
    if (!r->no_skew_check && (rc = repo_check_clock(r, &p, "locks/gc-clock", err)) < 0) {
        vmsh_lock_free(gl);
        return rc;
    }
    /* never beside a reader of packs (restore, verify, serve): they hold the
     * read lock shared; backups take none */
    if ((rc = repo_lock(r, "read", true, &rl, err)) < 0) {
        vmsh_lock_free(gl);
        if (rc == -EBUSY)
            vmsh_error_prefix(err, "a restore, a verify or `vmshadow serve` is reading backups; "
                                   "gc can run when it has finished");
        return rc;
    }
    rc = gc_pass(r, &p, &st, err);
    /* A writer's commit may merge small runs (backup.c) and delete the
     * ones this pass opened; their entries are in the merged run, durable
     * before. A pass that found a run gone is as a gc killed there (gc.md:
     * every step is safe to stop at): the runs opened again, the pass
     * again, a few times at most. */
    for (int again = 0; rc == -ENOENT && r->ci && again < 3; again++) {
        if (err) {
            vmsh_error_free(*err);
            *err = NULL;
        }
        st = (vmsh_gc_stats){0};
        if ((rc = ci_refresh(r, err)) == 0)
            rc = gc_pass(r, &p, &st, err);
    }
    /* a grace of 0 (tests, a repository no other host writes): the marks of
     * this pass are deleted by a second one at once, under the same rules */
    if (rc == 0 && p.grace_ms == 0 && st.packs_marked) {
        st.packs_marked = 0;
        rc = gc_pass(r, &p, &st, err);
    }
    vmsh_lock_free(rl);
    vmsh_lock_free(gl);
    if (rc == 0 && stats)
        *stats = st;
    return rc;
}
