/* verify.c - reads back and re-hashes every chunk the chosen backups need,
 * checks every pack table, manifest and index, and names each damaged backup
 * and file (CLI.md "verify"; docs/formats/repository.md "What a reader does
 * with damage"). Each chunk is read once however many backups share it.
 *
 * Memory does not grow with the number of chunks the backups reference
 * (issue 27 point 2): the chunk IDs of every index go through an external
 * sort (runs of at most 512 Ki IDs, 16 MiB, sorted and written to unlinked
 * temporary files under TMPDIR or /var/tmp, merged into one whenever there
 * are 256, then merged), so that each
 * distinct ID comes out once, in order; its location is asked of the chunk
 * index (repo_find_chunk, on disk) and the chunks are read in batches of
 * 64 Ki, each sorted by pack and offset. What is kept across the run is
 * what is wrong: the missing and bad chunks, and the chunks shorter than a
 * full chunk (a file's last); a second pass over the indexes names the
 * damaged files. */
#include "internal.h"
#include "sha256mb.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ST_UNCHECKED = 0, ST_OK = 1, ST_BAD = 2 };

#define RUN_IDS_DEFAULT  (512u * 1024)
#define MAX_RUNS_DEFAULT 256 /* open files while merging, far below the usual 1024 */
#define CHECK_BATCH      65536

typedef struct vfile {
    size_t backup; /* index into ids */
    char *name;
    char *index; /* the index object's name: loaded again to name damage */
    uint64_t size;
} vfile;

typedef struct vjob {
    vmsh_repo *r;
    chunk_loc *locs; /* the batch */
    atomic_size_t next;
    atomic_uint_fast64_t bytes, chunks;
    char **bad_msgs; /* per batch entry, first message for a bad chunk */
    uint8_t *status; /* per batch entry: ST_* */
    size_t *order;   /* batch entries by pack and offset */
    size_t n_order;
} vjob;

static void mark_bad(vjob *j, size_t i, const vmsh_error *e)
{
    j->status[i] = ST_BAD;
    j->bad_msgs[i] = strdup(e ? e->message : "unreadable");
}

/* Entries i[0..n) of the batch: each read and decoded into its 64 KiB of
 * buf, then those that decoded checked against their IDs together
 * (chunk_reader_check: four at a time with SHA-NI); a mismatch marks that
 * one and the check goes on after it. */
static void check_entries(vjob *j, chunk_reader *cr, uint8_t *buf, const size_t *idx, size_t n)
{
    const chunk_loc *locs[SHA256MB_LANES];
    const uint8_t *data[SHA256MB_LANES];
    size_t which[SHA256MB_LANES], m = 0;
    for (size_t k = 0; k < n; k++) {
        chunk_loc *loc = &j->locs[idx[k]];
        vmsh_error *e = NULL;
        if (chunk_reader_load(cr, loc, buf + k * (size_t)CHUNK_SIZE, &e) < 0) {
            mark_bad(j, idx[k], e);
        } else {
            j->status[idx[k]] = ST_OK;
            locs[m] = loc;
            data[m] = buf + k * (size_t)CHUNK_SIZE;
            which[m++] = idx[k];
        }
        vmsh_error_free(e);
        atomic_fetch_add(&j->bytes, loc->stored_len);
        atomic_fetch_add(&j->chunks, 1);
    }
    for (size_t from = 0; from < m;) {
        vmsh_error *e = NULL;
        size_t bad = 0;
        if (chunk_reader_check(cr, m - from, locs + from, data + from, &bad, &e) == 0) {
            break;
        } else if (e && e->code == -EBADMSG) {
            mark_bad(j, which[from + bad], e);
            from += bad + 1;
        } else { /* hashing itself failed: none of them is known good */
            for (size_t k = from; k < m; k++)
                mark_bad(j, which[k], e);
            from = m;
        }
        vmsh_error_free(e);
    }
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
    for (size_t n; i < end; i += n) {
        n = end - i < SHA256MB_LANES ? end - i : SHA256MB_LANES;
        check_entries(w->j, w->cr, w->buf, &w->j->order[i], n);
    }
    return true;
}

static void *vworker_main(void *arg)
{
    while (vstep(arg))
        ;
    return NULL;
}

static int cmp_entry(const void *a, const void *b, void *locs)
{
    const chunk_loc *x = &((const chunk_loc *)locs)[*(const size_t *)a];
    const chunk_loc *y = &((const chunk_loc *)locs)[*(const size_t *)b];
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

/* ---- the external sort of chunk IDs ---- */

typedef struct id_sorter {
    uint8_t (*buf)[ID_LEN];
    size_t n, cap;
    FILE **runs;
    size_t n_runs, max_runs;
    uint64_t distinct_bound; /* the sum of the runs' lengths: at least the distinct IDs */
} id_sorter;

static int collapse_runs(id_sorter *s, vmsh_error **err);

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, ID_LEN);
}

/* Sorts the buffer and drops repeated IDs. */
static void sort_unique(id_sorter *s)
{
    if (s->n == 0)
        return;
    qsort(s->buf, s->n, ID_LEN, cmp_id);
    size_t k = 1;
    for (size_t i = 1; i < s->n; i++)
        if (memcmp(s->buf[i], s->buf[k - 1], ID_LEN) != 0)
            memcpy(s->buf[k++], s->buf[i], ID_LEN);
    s->n = k;
}

static int sorter_flush(id_sorter *s, vmsh_error **err)
{
    sort_unique(s);
    FILE **nr = vmsh_realloc_array(s->runs, s->n_runs + 1, sizeof(*nr));
    if (!nr)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    s->runs = nr;
    FILE *f = vmsh_scratch_stream("verify's sort of chunk IDs", err);
    if (!f)
        return err && *err ? (*err)->code : -EIO;
    s->runs[s->n_runs++] = f;
    if (fwrite(s->buf, ID_LEN, s->n, f) != s->n || fflush(f) != 0 || fseeko(f, 0, SEEK_SET) != 0)
        return vmsh_error_set(err, -EIO, "cannot write verify's sort of chunk IDs: %s",
                              strerror(errno));
    s->distinct_bound += s->n;
    s->n = 0;
    return s->n_runs >= s->max_runs ? collapse_runs(s, err) : 0;
}

static int sorter_add(id_sorter *s, const uint8_t id[ID_LEN], vmsh_error **err)
{
    if (s->n == s->cap) {
        int rc = sorter_flush(s, err);
        if (rc < 0)
            return rc;
    }
    memcpy(s->buf[s->n++], id, ID_LEN);
    return 0;
}

static void sorter_free(id_sorter *s)
{
    for (size_t i = 0; i < s->n_runs; i++)
        fclose(s->runs[i]);
    free(s->runs);
    free(s->buf);
}

/* The merge: a heap of sources (the runs, or the buffer when nothing was
 * written), smallest current ID on top. */
typedef struct msrc {
    FILE *f;
    size_t mem_i;
    uint8_t cur[ID_LEN];
} msrc;

typedef struct merger {
    id_sorter *s;
    msrc *src;
    msrc **heap;
    size_t n;
    bool io_error;
} merger;

static bool msrc_next(merger *m, msrc *x)
{
    if (x->f) {
        if (fread(x->cur, ID_LEN, 1, x->f) == 1)
            return true;
        if (ferror(x->f))
            m->io_error = true;
        return false;
    }
    if (x->mem_i >= m->s->n)
        return false;
    memcpy(x->cur, m->s->buf[x->mem_i++], ID_LEN);
    return true;
}

static void sift_down(merger *m, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, small = i;
        if (l < m->n && memcmp(m->heap[l]->cur, m->heap[small]->cur, ID_LEN) < 0)
            small = l;
        if (r < m->n && memcmp(m->heap[r]->cur, m->heap[small]->cur, ID_LEN) < 0)
            small = r;
        if (small == i)
            return;
        msrc *t = m->heap[i];
        m->heap[i] = m->heap[small];
        m->heap[small] = t;
        i = small;
    }
}

static int merger_start(merger *m, id_sorter *s, vmsh_error **err)
{
    *m = (merger){.s = s};
    size_t k = s->n_runs ? s->n_runs : 1;
    m->src = vmsh_calloc_array(k, sizeof(*m->src));
    m->heap = vmsh_calloc_array(k, sizeof(*m->heap));
    if (!m->src || !m->heap)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < k; i++) {
        m->src[i].f = s->n_runs ? s->runs[i] : NULL;
        if (msrc_next(m, &m->src[i]))
            m->heap[m->n++] = &m->src[i];
    }
    for (size_t i = m->n / 2; i-- > 0;)
        sift_down(m, i);
    return 0;
}

/* The next distinct ID: 1, 0 at the end. */
static int merger_next(merger *m, uint8_t out[ID_LEN], bool *have_last, vmsh_error **err)
{
    while (m->n > 0) {
        msrc *top = m->heap[0];
        bool dup = *have_last && memcmp(top->cur, out, ID_LEN) == 0;
        if (!dup)
            memcpy(out, top->cur, ID_LEN);
        if (msrc_next(m, top)) {
            sift_down(m, 0);
        } else {
            m->heap[0] = m->heap[--m->n];
            sift_down(m, 0);
        }
        if (!dup) {
            *have_last = true;
            return 1;
        }
    }
    if (m->io_error)
        return vmsh_error_set(err, -EIO, "cannot read back verify's sort of chunk IDs");
    return 0;
}

static void merger_free(merger *m)
{
    free(m->src);
    free(m->heap);
}

/* Merges every run into one (a second level of the sort), so that the
 * files open at once stay under max_runs however many IDs there are. */
static int collapse_runs(id_sorter *s, vmsh_error **err)
{
    FILE *out = vmsh_scratch_stream("verify's sort of chunk IDs", err);
    if (!out)
        return err && *err ? (*err)->code : -EIO;
    size_t keep = s->n; /* the buffer is empty here: no source of the merge */
    s->n = 0;
    merger m;
    int rc = merger_start(&m, s, err);
    uint8_t id[ID_LEN];
    bool have = false;
    uint64_t written = 0;
    while (rc == 0 && (rc = merger_next(&m, id, &have, err)) == 1) {
        rc = fwrite(id, ID_LEN, 1, out) == 1
                 ? 0
                 : vmsh_error_set(err, -EIO, "cannot write verify's sort of chunk IDs: %s",
                                  strerror(errno));
        written++;
    }
    merger_free(&m);
    s->n = keep;
    if (rc == 0 && (fflush(out) != 0 || fseeko(out, 0, SEEK_SET) != 0))
        rc = vmsh_error_set(err, -EIO, "cannot write verify's sort of chunk IDs: %s",
                            strerror(errno));
    if (rc < 0) {
        fclose(out);
        return rc;
    }
    for (size_t i = 0; i < s->n_runs; i++)
        fclose(s->runs[i]);
    s->runs[0] = out;
    s->n_runs = 1;
    s->distinct_bound = written;
    return 0;
}

/* ---- checking the chunks, batch by batch ---- */

typedef struct vstate {
    vmsh_repo *r;
    vjob j;
    vworker *ws;
    unsigned nw;
    bool direct;
    chunk_map damaged;  /* missing (pack CHUNK_PENDING) or bad chunks */
    char **damage_msgs; /* per entry of damaged: a bad chunk's message */
    chunk_map shorter;  /* good chunks shorter than CHUNK_SIZE, with raw_len */
    uint64_t distinct_bound, checked;
    vmsh_progress_fn progress;
    void *opaque;
} vstate;

static int note_damaged(vstate *v, const chunk_loc *c, const char *msg)
{
    chunk_loc *at = NULL;
    int ins = chunk_map_insert(&v->damaged, c, &at);
    if (ins < 0)
        return -ENOMEM;
    if (ins == 0)
        return 0;
    size_t i = v->damaged.count - 1;
    char **nm = vmsh_realloc_array(v->damage_msgs, v->damaged.count, sizeof(*nm));
    if (!nm)
        return -ENOMEM;
    v->damage_msgs = nm;
    nm[i] = msg ? strdup(msg) : NULL;
    return 0;
}

/* Reads and checks the batch (v->j.locs[0..n]) on all cores, in pack
 * order, and keeps what is wrong. */
static int check_batch(vstate *v, size_t n, vmsh_error **err)
{
    vjob *j = &v->j;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        j->order[i] = i;
        j->status[i] = ST_UNCHECKED;
        j->bad_msgs[i] = NULL;
    }
    j->n_order = n;
    qsort_r(j->order, n, sizeof(size_t), cmp_entry, j->locs);
    atomic_store(&j->next, 0);
    unsigned started = 0;
    for (unsigned i = 1; i < v->nw; i++) {
        if (pthread_create(&v->ws[i].thread, NULL, vworker_main, &v->ws[i]) != 0)
            break;
        started = i;
    }
    while (vstep(&v->ws[0]))
        if (v->progress) {
            uint64_t done = atomic_load(&j->bytes), chunks = atomic_load(&j->chunks);
            /* the total is known once the sort is read through: until
             * then, from the bytes per chunk so far and the distinct IDs'
             * upper bound */
            uint64_t total = chunks ? done / chunks * v->distinct_bound : done;
            v->progress(v->opaque, done, total > done ? total : done);
        }
    for (unsigned i = 1; i <= started; i++)
        pthread_join(v->ws[i].thread, NULL);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (j->status[i] != ST_OK)
            rc = note_damaged(v, &j->locs[i], j->bad_msgs[i] ? j->bad_msgs[i] : "unreadable");
        else if (j->locs[i].raw_len != CHUNK_SIZE)
            rc = chunk_map_insert(&v->shorter, &j->locs[i], NULL) < 0 ? -ENOMEM : 0;
    }
    for (size_t i = 0; i < n; i++) {
        free(j->bad_msgs[i]);
        j->bad_msgs[i] = NULL;
    }
    if (rc < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

/* Every distinct ID, in order: its location from the chunk index, then
 * its chunk read and checked with its batch. */
static int check_all(vstate *v, id_sorter *s, vmsh_error **err)
{
    merger m;
    int rc = merger_start(&m, s, err);
    uint8_t id[ID_LEN];
    bool have = false;
    size_t nb = 0;
    while (rc == 0 && (rc = merger_next(&m, id, &have, err)) == 1) {
        rc = 0;
        chunk_loc found;
        int fr = repo_find_chunk(v->r, id, &found, true, err);
        if (fr < 0) {
            rc = fr;
            break;
        }
        if (fr == 0) {
            chunk_loc c = {.pack = CHUNK_PENDING};
            memcpy(c.id, id, ID_LEN);
            if (note_damaged(v, &c, NULL) < 0)
                rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            continue;
        }
        memcpy(found.id, id, ID_LEN);
        v->j.locs[nb++] = found;
        if (nb == CHECK_BATCH) {
            rc = check_batch(v, nb, err);
            nb = 0;
        }
    }
    if (rc == 0)
        rc = check_batch(v, nb, err);
    merger_free(&m);
    return rc;
}

/* Names the damage of one file: its index loaded again, each entry judged
 * by what check_all kept. */
static int judge_file(vstate *v, vmsh_verify_report *rep, const char *backup, const vfile *f,
                      vmsh_error **err)
{
    vmsh_file_index *idx = NULL;
    vmsh_error *e = NULL;
    if (index_load(v->r, f->index, &idx, &e) < 0) {
        /* it was read a moment ago: changed or gone since */
        int ar = add_damage(rep, backup, f->name, "%s", e ? e->message : "unreadable index");
        vmsh_error_free(e);
        return ar < 0 ? vmsh_error_set(err, -ENOMEM, "out of memory") : 0;
    }
    uint64_t missing = 0, bad = 0, first = 0;
    const char *first_msg = NULL;
    for (size_t k = 0; k < idx->count; k++) {
        uint64_t chunk = idx->entries[k].chunk;
        uint64_t want = idx->size - chunk * CHUNK_SIZE < CHUNK_SIZE ? idx->size - chunk * CHUNK_SIZE
                                                                    : CHUNK_SIZE;
        chunk_loc *d = chunk_map_find(&v->damaged, idx->entries[k].id);
        bool is_missing = d && d->pack == CHUNK_PENDING;
        bool is_bad = d && !is_missing;
        bool wrong_len = false;
        if (!d) {
            chunk_loc *sh = chunk_map_find(&v->shorter, idx->entries[k].id);
            wrong_len = (sh ? sh->raw_len : CHUNK_SIZE) != want;
        }
        if (!is_missing && !is_bad && !wrong_len)
            continue;
        if (missing + bad == 0) {
            first = chunk;
            first_msg = is_missing ? "missing from every pack"
                        : is_bad   ? v->damage_msgs[d - v->damaged.locs]
                                   : "has the wrong length";
        }
        if (is_missing)
            missing++;
        else
            bad++;
    }
    int rc = 0;
    if (missing + bad > 0 &&
        add_damage(rep, backup, f->name,
                   "%llu chunks damaged, %llu missing (first: chunk %llu at offset %llu: %s)",
                   (unsigned long long)bad, (unsigned long long)missing, (unsigned long long)first,
                   (unsigned long long)first * CHUNK_SIZE, first_msg ? first_msg : "?") < 0)
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_file_index_free(idx);
    return rc;
}

int vmsh_repo_verify(vmsh_repo *r, const char *const *specs, size_t n_specs,
                     vmsh_progress_fn progress, void *opaque, vmsh_verify_report **out,
                     vmsh_error **err)
{
    vmsh_lock *rl = NULL;
    /* what this handle cached before the lock may predate a gc that
     * deleted packs (issue 26, docs/formats/gc.md "Handles that outlive a
     * gc"): read again, unless another reader of this handle holds the lock
     * (and so kept gc out) and still uses them */
    int rc = repo_read_begin(r, &rl, err);
    if (rc < 0)
        return rc;
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n_ids = 0;
    vfile *files = NULL;
    size_t n_files = 0, cap_files = 0;
    id_sorter sorter = {.cap = r->verify_run_ids ? r->verify_run_ids : RUN_IDS_DEFAULT,
                        .max_runs = r->verify_max_runs > 1 ? r->verify_max_runs : MAX_RUNS_DEFAULT};
    vstate v = {.r = r, .progress = progress, .opaque = opaque};
    chunk_map_init(&v.damaged);
    chunk_map_init(&v.shorter);
    v.j.r = r;
    vmsh_verify_report *rep = calloc(1, sizeof(*rep));
    if (!rep) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (!(sorter.buf = vmsh_calloc_array(sorter.cap, ID_LEN))) {
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
    /* manifests and indexes; every chunk ID they name goes to the sort */
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
            files[n_files++] =
                (vfile){b, strdup(info->files[f].name), strdup(info->files[f].index), idx->size};
            for (size_t k = 0; k < idx->count && rc == 0; k++)
                rc = sorter_add(&sorter, idx->entries[k].id, err);
            vmsh_file_index_free(idx);
            if (!files[n_files - 1].name || !files[n_files - 1].index)
                rc = rc ? rc : vmsh_error_set(err, -ENOMEM, "out of memory");
            if (rc < 0) {
                vmsh_backup_info_free(info);
                goto out;
            }
        }
        vmsh_backup_info_free(info);
    }
    if (sorter.n_runs > 0 && sorter.n > 0 && (rc = sorter_flush(&sorter, err)) < 0)
        goto out;
    if (sorter.n_runs == 0) { /* everything fitted: the buffer is the one run */
        sort_unique(&sorter);
        sorter.distinct_bound = sorter.n;
    }
    v.distinct_bound = sorter.distinct_bound;
    /* read every needed chunk once, on all cores */
    v.j.locs = vmsh_calloc_array(CHECK_BATCH, sizeof(chunk_loc));
    v.j.bad_msgs = vmsh_calloc_array(CHECK_BATCH, sizeof(char *));
    v.j.status = calloc(CHECK_BATCH, 1);
    v.j.order = vmsh_calloc_array(CHECK_BATCH, sizeof(size_t));
    if (!v.j.locs || !v.j.bad_msgs || !v.j.status || !v.j.order) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    atomic_init(&v.j.next, 0);
    atomic_init(&v.j.bytes, 0);
    atomic_init(&v.j.chunks, 0);
    /* Sequential reads through the 1 MiB direct windows when every chunk
     * is in one batch (as dense as the backups); a batch of a bigger set
     * is spread thin over the packs, where a window would read mostly
     * what the batch does not need. */
    v.direct = v.distinct_bound <= CHECK_BATCH;
    v.nw = repo_threads(r);
    v.ws = vmsh_calloc_array(v.nw, sizeof(*v.ws));
    if (!v.ws) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < v.nw; i++) {
        v.ws[i].j = &v.j;
        if ((rc = chunk_reader_new(&v.ws[i].cr, r, err)) < 0)
            goto out;
        chunk_reader_set_direct(v.ws[i].cr, v.direct);
        if (!(v.ws[i].buf = malloc((size_t)SHA256MB_LANES * CHUNK_SIZE))) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    if ((rc = check_all(&v, &sorter, err)) < 0)
        goto out;
    rep->chunks_checked = atomic_load(&v.j.chunks);
    rep->bytes_checked = atomic_load(&v.j.bytes);
    /* name every damaged file of every backup */
    for (size_t f = 0; f < n_files; f++)
        if (v.damaged.count > 0 || v.shorter.count > 0)
            if ((rc = judge_file(&v, rep, ids[files[f].backup], &files[f], err)) < 0)
                goto out;
    rc = rep->n_damage ? -EBADMSG : 0;
    if (rc < 0)
        vmsh_error_set(err, rc, "repository %s is damaged: %zu problem%s found", r->path,
                       rep->n_damage, rep->n_damage == 1 ? "" : "s");
    *out = rep;
    rep = NULL;
out:
    if (v.ws) {
        for (unsigned i = 0; i < v.nw; i++) {
            chunk_reader_free(v.ws[i].cr);
            free(v.ws[i].buf);
        }
        free(v.ws);
    }
    free(v.j.locs);
    free(v.j.bad_msgs);
    free(v.j.status);
    free(v.j.order);
    for (size_t i = 0; i < v.damaged.count && v.damage_msgs; i++)
        free(v.damage_msgs[i]);
    free(v.damage_msgs);
    chunk_map_clear(&v.damaged);
    chunk_map_clear(&v.shorter);
    sorter_free(&sorter);
    for (size_t f = 0; f < n_files; f++) {
        free(files[f].name);
        free(files[f].index);
    }
    free(files);
    free(ids);
    vmsh_verify_report_free(rep);
    repo_read_end(r, rl);
    return rc;
}
