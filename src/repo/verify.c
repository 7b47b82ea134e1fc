/* verify.c - reads back and re-hashes every chunk the chosen backups need,
 * checks every pack table, manifest and index, and names each damaged backup
 * and file (CLI.md "verify"; docs/formats/repository.md "What a reader does
 * with damage"). Each chunk is read once however many backups share it. */
#include "internal.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ST_UNCHECKED = 0, ST_OK = 1, ST_BAD = 2 };

typedef struct vfile {
    size_t backup; /* index into ids */
    char *name;
    vmsh_file_index *idx;
} vfile;

typedef struct vjob {
    vmsh_repo *r;
    chunk_map *needed; /* locations copied from the repository's map */
    atomic_size_t next;
    atomic_uint_fast64_t bytes, chunks;
    char **bad_msgs; /* per map entry, first message for a bad chunk */
    uint8_t *status; /* per map entry: ST_* */
    size_t *order;   /* entries of stored chunks, by pack and offset */
    size_t n_order;
} vjob;

static void check_entry(vjob *j, chunk_reader *cr, uint8_t *buf, size_t i)
{
    chunk_loc *loc = &j->needed->locs[i];
    if (loc->pack == CHUNK_PENDING) /* missing from every pack: judged later */
        return;
    vmsh_error *e = NULL;
    if (chunk_reader_read(cr, loc, buf, &e) < 0) {
        j->status[i] = ST_BAD;
        j->bad_msgs[i] = strdup(e ? e->message : "unreadable");
        vmsh_error_free(e);
    } else {
        j->status[i] = ST_OK;
    }
    atomic_fetch_add(&j->bytes, loc->stored_len);
    atomic_fetch_add(&j->chunks, 1);
}

typedef struct vworker {
    vjob *j;
    pthread_t thread;
    chunk_reader *cr;
    uint8_t *buf;
} vworker;

#define VBATCH 64

static bool vstep(vworker *w)
{
    size_t i = atomic_fetch_add(&w->j->next, VBATCH);
    if (i >= w->j->n_order)
        return false;
    size_t end = i + VBATCH < w->j->n_order ? i + VBATCH : w->j->n_order;
    for (; i < end; i++)
        check_entry(w->j, w->cr, w->buf, w->j->order[i]);
    return true;
}

static void *vworker_main(void *arg)
{
    while (vstep(arg))
        ;
    return NULL;
}

static int cmp_entry(const void *a, const void *b, void *map)
{
    const chunk_loc *x = &((chunk_map *)map)->locs[*(const size_t *)a];
    const chunk_loc *y = &((chunk_map *)map)->locs[*(const size_t *)b];
    if (x->pack != y->pack)
        return x->pack < y->pack ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int add_damage(vmsh_verify_report *rep, const char *backup, const char *file,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int add_damage(vmsh_verify_report *rep, const char *backup, const char *file,
                      const char *fmt, ...)
{
    vmsh_damage *nd = vmsh_realloc_array(rep->damage, rep->n_damage + 1, sizeof(*nd));
    if (!nd)
        return -ENOMEM;
    rep->damage = nd;
    vmsh_damage *d = &nd[rep->n_damage];
    memset(d, 0, sizeof(*d));
    snprintf(d->backup, sizeof(d->backup), "%s", backup ? backup : "");
    d->file = file ? strdup(file) : NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&d->what, fmt, ap) < 0)
        d->what = NULL;
    va_end(ap);
    rep->n_damage++;
    return 0;
}

/* Every pack table is read and checked, one pack at a time (memory: one
 * table, not the repository's map). In the legacy mode the map load
 * already read them and marked the damaged ones. */
static int report_damaged_packs(vmsh_repo *r, vmsh_verify_report *rep, vmsh_error **err)
{
    if (r->legacy) {
        for (size_t i = 0; i < r->n_packs; i++)
            if (r->packs[i].damaged && add_damage(rep, NULL, NULL, "%s", r->packs[i].damage) < 0)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
        return 0;
    }
    char(*names)[33] = NULL;
    size_t n = 0;
    int rc = repo_pack_names(r, &names, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        _cleanup_free_ char *p = pack_path(r->path, names[i]);
        chunk_loc *t = NULL;
        uint32_t nt = 0;
        uint64_t size = 0;
        vmsh_error *e = NULL;
        int trc =
            p ? pack_read_table(r, p, r->crypto, r->keys.encrypted, &t, &nt, &size, &e) : -ENOMEM;
        free(t);
        if (trc == -ENOMEM || trc == -EPROTONOSUPPORT || trc == -EKEYREJECTED) {
            rc = trc == -EKEYREJECTED ? -EBADMSG : trc;
            if (e)
                e->code = rc;
            vmsh_error_propagate(err, &e);
            break;
        }
        if (trc < 0 && add_damage(rep, NULL, NULL, "%s", e ? e->message : "unreadable") < 0)
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        /* what the chunk reader would find out again, pack by pack */
        int no = rc == 0 ? repo_add_pack(r, names[i], size, nt) : -1;
        if (no >= 0) {
            pthread_mutex_lock(&r->lock);
            if (trc < 0 && !r->packs[no].damaged) {
                r->packs[no].damaged = true;
                r->packs[no].damage = strdup(e ? e->message : "unreadable");
            } else if (trc == 0) {
                r->packs[no].table_ok = r->packs[no].stat_ok = true;
            }
            pthread_mutex_unlock(&r->lock);
        }
        vmsh_error_free(e);
    }
    free(names);
    return rc;
}

void vmsh_verify_report_free(vmsh_verify_report *rep)
{
    if (!rep)
        return;
    for (size_t i = 0; i < rep->n_damage; i++) {
        free(rep->damage[i].file);
        free(rep->damage[i].what);
    }
    free(rep->damage);
    free(rep);
}

int vmsh_repo_verify(vmsh_repo *r, const char *const *specs, size_t n_specs,
                     vmsh_progress_fn progress, void *opaque, vmsh_verify_report **out,
                     vmsh_error **err)
{
    vmsh_lock *rl = NULL;
    int rc = repo_lock(r, "read", false, &rl, err);
    if (rc < 0)
        return rc;
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n_ids = 0;
    vfile *files = NULL;
    size_t n_files = 0, cap_files = 0;
    chunk_map needed;
    chunk_map_init(&needed);
    vmsh_verify_report *rep = calloc(1, sizeof(*rep));
    vjob j = {.r = r, .needed = &needed};
    vworker *ws = NULL;
    unsigned nw = 0, started = 0;
    if (!rep) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = repo_load_map(r, err)) < 0)
        goto out;
    /* which backups */
    if (n_specs == 0) {
        if ((rc = repo_list_ids(r, &ids, &n_ids, err)) < 0)
            goto out;
    } else {
        ids = vmsh_calloc_array(n_specs, sizeof(*ids));
        if (!ids) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < n_specs; i++, n_ids++)
            if ((rc = vmsh_repo_resolve(r, specs[i], ids[i], err)) < 0)
                goto out;
    }
    if ((rc = report_damaged_packs(r, rep, err)) < 0)
        goto out;
    /* manifests and indexes; collect the needed chunks */
    for (size_t b = 0; b < n_ids; b++) {
        vmsh_backup_info *info = NULL;
        vmsh_error *e = NULL;
        int lr = manifest_load(r, ids[b], &info, &e);
        if (lr == -ENOENT && n_specs == 0) { /* pruned meanwhile */
            vmsh_error_free(e);
            continue;
        }
        if (lr < 0) {
            add_damage(rep, ids[b], NULL, "%s", e ? e->message : "unreadable manifest");
            vmsh_error_free(e);
            continue;
        }
        rep->backups_checked++;
        for (size_t f = 0; f < info->n_files; f++) {
            vmsh_file_index *idx = NULL;
            e = NULL;
            lr = index_load(r, info->files[f].index, &idx, &e);
            if (lr == 0 && idx->size != info->files[f].size) {
                vmsh_error_set(&e, -EBADMSG, "index size does not match the manifest");
                vmsh_file_index_free(idx);
                idx = NULL;
                lr = -EBADMSG;
            }
            if (lr < 0) {
                add_damage(rep, ids[b], info->files[f].name, "%s",
                           e ? e->message : "unreadable index");
                vmsh_error_free(e);
                continue;
            }
            if (n_files == cap_files) {
                size_t nc = cap_files ? cap_files * 2 : 16;
                vfile *nf = vmsh_realloc_array(files, nc, sizeof(*nf));
                if (!nf) {
                    vmsh_file_index_free(idx);
                    vmsh_backup_info_free(info);
                    rc = vmsh_error_set(err, -ENOMEM, "out of memory");
                    goto out;
                }
                files = nf;
                cap_files = nc;
            }
            files[n_files++] = (vfile){b, strdup(info->files[f].name), idx};
            for (size_t k = 0; k < idx->count; k++) {
                chunk_loc c = {.pack = CHUNK_PENDING};
                if (chunk_map_find(&needed, idx->entries[k].id))
                    continue; /* shared with a file seen before */
                chunk_loc found;
                int fr = repo_find_chunk(r, idx->entries[k].id, &found, true, err);
                if (fr < 0) {
                    vmsh_backup_info_free(info);
                    rc = fr;
                    goto out;
                }
                if (fr == 1)
                    c = found;
                memcpy(c.id, idx->entries[k].id, ID_LEN);
                if (chunk_map_insert(&needed, &c, NULL) < 0) {
                    vmsh_backup_info_free(info);
                    rc = vmsh_error_set(err, -ENOMEM, "out of memory");
                    goto out;
                }
            }
        }
        vmsh_backup_info_free(info);
    }
    /* read every needed chunk once, on all cores */
    j.bad_msgs = vmsh_calloc_array(needed.count ? needed.count : 1, sizeof(char *));
    j.status = calloc(needed.count ? needed.count : 1, 1);
    if (!j.bad_msgs || !j.status) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    atomic_init(&j.next, 0);
    atomic_init(&j.bytes, 0);
    atomic_init(&j.chunks, 0);
    uint64_t total = 0;
    j.order = vmsh_calloc_array(needed.count ? needed.count : 1, sizeof(size_t));
    if (!j.order) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < needed.count; i++)
        if (needed.locs[i].pack != CHUNK_PENDING) {
            total += needed.locs[i].stored_len;
            j.order[j.n_order++] = i;
        }
    /* in pack order: sequential reads through the direct windows */
    if (j.n_order)
        qsort_r(j.order, j.n_order, sizeof(size_t), cmp_entry, &needed);
    nw = repo_threads(r);
    ws = vmsh_calloc_array(nw, sizeof(*ws));
    if (!ws) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < nw; i++) {
        ws[i].j = &j;
        if ((rc = chunk_reader_new(&ws[i].cr, r, err)) < 0)
            goto out;
        chunk_reader_set_direct(ws[i].cr, true);
        if (!(ws[i].buf = malloc(CHUNK_SIZE))) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    for (unsigned i = 1; i < nw; i++) {
        if (pthread_create(&ws[i].thread, NULL, vworker_main, &ws[i]) != 0)
            break;
        started = i;
    }
    while (vstep(&ws[0]))
        if (progress)
            progress(opaque, atomic_load(&j.bytes), total);
    for (unsigned i = 1; i <= started; i++)
        pthread_join(ws[i].thread, NULL);
    started = 0;
    rep->chunks_checked = atomic_load(&j.chunks);
    rep->bytes_checked = atomic_load(&j.bytes);
    /* name every damaged file of every backup */
    for (size_t f = 0; f < n_files; f++) {
        vmsh_file_index *idx = files[f].idx;
        uint64_t missing = 0, bad = 0, first = 0;
        const char *first_msg = NULL;
        for (size_t k = 0; k < idx->count; k++) {
            chunk_loc *c = chunk_map_find(&needed, idx->entries[k].id);
            uint64_t chunk = idx->entries[k].chunk;
            uint64_t want = idx->size - chunk * CHUNK_SIZE < CHUNK_SIZE
                                ? idx->size - chunk * CHUNK_SIZE
                                : CHUNK_SIZE;
            bool is_missing = !c || c->pack == CHUNK_PENDING;
            bool is_bad = !is_missing && (j.status[c - needed.locs] != ST_OK || c->raw_len != want);
            if (!is_missing && !is_bad)
                continue;
            if (missing + bad == 0) {
                first = chunk;
                first_msg = is_missing                            ? "missing from every pack"
                            : j.status[c - needed.locs] == ST_BAD ? j.bad_msgs[c - needed.locs]
                                                                  : "has the wrong length";
            }
            if (is_missing)
                missing++;
            else
                bad++;
        }
        if (missing + bad > 0 &&
            add_damage(rep, ids[files[f].backup], files[f].name,
                       "%llu chunks damaged, %llu missing (first: chunk %llu at offset %llu: %s)",
                       (unsigned long long)bad, (unsigned long long)missing,
                       (unsigned long long)first, (unsigned long long)first * CHUNK_SIZE,
                       first_msg ? first_msg : "?") < 0) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    rc = rep->n_damage ? -EBADMSG : 0;
    if (rc < 0)
        vmsh_error_set(err, rc, "repository %s is damaged: %zu problem%s found", r->path,
                       rep->n_damage, rep->n_damage == 1 ? "" : "s");
    *out = rep;
    rep = NULL;
out:
    if (ws) {
        for (unsigned i = 1; i <= started; i++)
            pthread_join(ws[i].thread, NULL);
        for (unsigned i = 0; i < nw; i++) {
            chunk_reader_free(ws[i].cr);
            free(ws[i].buf);
        }
        free(ws);
    }
    if (j.bad_msgs)
        for (size_t i = 0; i < needed.count; i++)
            free(j.bad_msgs[i]);
    free(j.bad_msgs);
    free(j.status);
    free(j.order);
    for (size_t f = 0; f < n_files; f++) {
        free(files[f].name);
        vmsh_file_index_free(files[f].idx);
    }
    free(files);
    free(ids);
    chunk_map_clear(&needed);
    vmsh_verify_report_free(rep);
    vmsh_lock_free(rl);
    return rc;
}
