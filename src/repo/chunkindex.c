/* chunkindex.c - the on-disk chunk index (issue 27, points 1 and 2;
 * docs/formats/repository.md, "Chunk index runs").
 *
 * A run is an immutable file of entries sorted by chunk ID, in 4 KiB blocks
 * of 63 entries, each block authenticated on its own (so a lookup reads and
 * checks one block, never the whole run). Two levels of fences find the
 * block: the first 8 bytes of the first ID of every block, in 4 KiB pages
 * of 512, and the first fence of every page (the "top", 8 bytes per 32,256
 * entries) kept in memory. A lookup is one binary search in memory, one
 * pread of a fence page and one of a block: memory and start-up do not grow
 * with the number of stored chunks (100 million chunks: a 25 KiB top).
 *
 * Fences are hints, not authenticated: a wrong fence sends a lookup to the
 * wrong block, whose authenticated entries then do not hold the ID, a miss.
 * A miss only makes a backup store a chunk again, and makes a reader fall
 * back to the pack tables (repo.c), never a wrong answer. */
#include "chunkindex.h"

#include "internal.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char run_magic[8] = {'V', 'M', 'S', 'H', 'R', 'U', 'N', '1'};
#define TAG_LABEL "vmshadow-run-v1:"

/* ---- tags ---- */

static void hmac_sha256(const uint8_t key[32], const uint8_t *msg, size_t len, uint8_t *scratch,
                        uint8_t out[32])
{
    /* scratch: 64 + len bytes, msg already at scratch + 64 */
    uint8_t pad[64 + 32];
    for (int i = 0; i < 64; i++)
        scratch[i] = (uint8_t)((i < 32 ? key[i] : 0) ^ 0x36);
    (void)msg;
    uint8_t inner[32];
    crypto_sha256(scratch, 64 + len, inner);
    for (int i = 0; i < 64; i++)
        pad[i] = (uint8_t)((i < 32 ? key[i] : 0) ^ 0x5c);
    memcpy(pad + 64, inner, 32);
    crypto_sha256(pad, sizeof(pad), out);
}

int ci_key_init(ci_key *k, const struct repo_keys *keys)
{
    memset(k, 0, sizeof(*k));
    if (!keys || !keys->encrypted)
        return 0;
    /* a key of its own, so that no chunk ID (HMAC under the ID key of
     * content a guest chooses) can ever be a valid tag */
    static const char label[] = "vmshadow-run-key-v1";
    uint8_t scratch[64 + sizeof(label)];
    memcpy(scratch + 64, label, sizeof(label) - 1);
    hmac_sha256(keys->id_key, scratch + 64, sizeof(label) - 1, scratch, k->key);
    k->keyed = true;
    return 0;
}

/* The tag of file block `fno` (0: the header) of run `name`. */
void ci_block_tag(const ci_key *k, const char *name, uint64_t fno, const uint8_t *blk,
                  uint8_t out[32])
{
    enum { LBL = sizeof(TAG_LABEL) - 1, MSG = LBL + 32 + 1 + 8 + CI_TAG_OFF };
    uint8_t buf[64 + MSG];
    uint8_t *m = buf + 64;
    memcpy(m, TAG_LABEL, LBL);
    memcpy(m + LBL, name, 32);
    m[LBL + 32] = ':';
    le64_put(m + LBL + 33, fno);
    memcpy(m + LBL + 41, blk, CI_TAG_OFF);
    if (k->keyed)
        hmac_sha256(k->key, m, MSG, buf, out);
    else
        crypto_sha256(m, MSG, out);
}

static int tag_ok(const ci_key *k, const char *name, uint64_t fno, const uint8_t *blk)
{
    uint8_t t[32];
    ci_block_tag(k, name, fno, blk, t);
    unsigned d = 0;
    for (int i = 0; i < 32; i++)
        d |= (unsigned)(t[i] ^ blk[CI_TAG_OFF + i]);
    return d == 0;
}

static uint64_t prefix_of(const uint8_t id[32])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | id[i];
    return v;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* ---- parsing ---- */

int ci_parse_header(const uint8_t blk[CI_BLOCK], const ci_key *k, const char *name,
                    uint64_t file_size, ci_header *h, vmsh_error **err)
{
    if (memcmp(blk, run_magic, 8) != 0)
        return vmsh_error_set(err, -EBADMSG, "run %s: bad magic", name);
    uint32_t ver = le32_get(blk + 8), flags = le32_get(blk + 12);
    if (ver != CI_VERSION)
        return vmsh_error_set(err, -EPROTONOSUPPORT, "run %s: version %u (this vmshadow reads %u)",
                              name, ver, CI_VERSION);
    if (flags & ~1u)
        return vmsh_error_set(err, -EPROTONOSUPPORT, "run %s: unknown flags %#x", name, flags);
    if ((flags & 1u) && !k->keyed)
        /* the config lost its encryption (a downgrade): as for a pack */
        return vmsh_error_set(err, -EKEYREJECTED,
                              "run %s is encrypted but the repository's config says unencrypted: "
                              "the config was altered",
                              name);
    if (!(flags & 1u) && k->keyed)
        return vmsh_error_set(err, -EBADMSG, "run %s is not authenticated with the key", name);
    for (size_t i = 64; i < CI_TAG_OFF; i++)
        if (blk[i])
            return vmsh_error_set(err, -EBADMSG, "run %s: reserved header bytes are not 0", name);
    if (!tag_ok(k, name, 0, blk))
        return vmsh_error_set(err, -EBADMSG, "run %s: header fails its check", name);
    uint64_t n = le64_get(blk + 16), b = le64_get(blk + 24), f = le64_get(blk + 32);
    uint64_t toff = le64_get(blk + 40), tlen = le64_get(blk + 48);
    uint32_t per = le32_get(blk + 56), fpp = le32_get(blk + 60);
    if (per != CI_PER_BLOCK || fpp != CI_FENCES_PER_PAGE || n > CI_MAX_ENTRIES ||
        b != div_up(n, CI_PER_BLOCK) || f != div_up(b, CI_FENCES_PER_PAGE) ||
        toff != (1 + b + f) * CI_BLOCK || tlen != 8 * f || file_size < toff ||
        file_size - toff != tlen)
        return vmsh_error_set(err, -EBADMSG, "run %s: inconsistent sizes", name);
    h->n_entries = n;
    h->n_blocks = b;
    h->n_pages = f;
    h->keyed = k->keyed;
    return 0;
}

int ci_parse_block(const uint8_t blk[CI_BLOCK], const ci_key *k, const char *name,
                   const ci_header *h, uint64_t no, ci_entry *out, uint32_t *n, vmsh_error **err)
{
    if (no >= h->n_blocks)
        return vmsh_error_set(err, -EINVAL, "run %s: no block %llu", name, (unsigned long long)no);
    uint32_t cnt = le32_get(blk);
    uint64_t want = no + 1 < h->n_blocks ? CI_PER_BLOCK : h->n_entries - no * CI_PER_BLOCK;
    if (cnt != want || le32_get(blk + 4) != 0 || le64_get(blk + 8) != no)
        return vmsh_error_set(err, -EBADMSG, "run %s: block %llu is damaged", name,
                              (unsigned long long)no);
    if (!tag_ok(k, name, no + 1, blk))
        return vmsh_error_set(err, -EBADMSG, "run %s: block %llu fails its check", name,
                              (unsigned long long)no);
    for (uint32_t i = 0; i < cnt; i++) {
        const uint8_t *p = blk + CI_BLOCK_HDR + (size_t)i * CI_ENTRY_LEN;
        ci_entry *e = &out[i];
        memcpy(e->id, p, 32);
        memcpy(e->pack, p + 32, 16);
        e->offset = le64_get(p + 48);
        e->stored_len = le32_get(p + 56);
        uint32_t rk = le32_get(p + 60);
        e->raw_len = rk & 0xffffffu;
        e->kind = rk >> 24;
        if (e->raw_len < 1 || e->raw_len > CHUNK_SIZE || e->kind > BLOB_ZSTD || e->stored_len < 1 ||
            e->stored_len > 2 * CHUNK_SIZE + GCM_OVERHEAD ||
            (i > 0 && memcmp(out[i - 1].id, e->id, 32) >= 0))
            return vmsh_error_set(err, -EBADMSG, "run %s: block %llu has a bad entry", name,
                                  (unsigned long long)no);
    }
    *n = cnt;
    return 0;
}

/* ---- open runs ---- */

struct ci_run {
    uint64_t serial; /* unique in the process: the lookup memo's key */
    char name[33];
    repo_store_file *f;
    const repo_store_ops *ops;
    ci_header h;
    uint64_t *top; /* h.n_pages fences */
};

static void run_free(ci_run *run)
{
    if (!run)
        return;
    if (run->f)
        run->ops->close(run->f);
    free(run->top);
    free(run);
}

static int read_at(const ci_run *run, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        int64_t n = run->ops->pread(run->f, p, len, off);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -EBADMSG;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int run_open(vmsh_repo *r, const ci_key *k, const char *name, ci_run **out, vmsh_error **err)
{
    ci_run *run = calloc(1, sizeof(*run));
    if (!run)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    static atomic_uint_fast64_t serials;
    run->serial = atomic_fetch_add(&serials, 1) + 1;
    snprintf(run->name, sizeof(run->name), "%s", name);
    run->ops = r->store->ops;
    char path[64];
    snprintf(path, sizeof(path), CI_DIR "/%s.run", name);
    int rc = r->store->ops->open_file(r->store, path, 0, &run->f, err);
    if (rc < 0) {
        run_free(run);
        return rc;
    }
    repo_store_stat st;
    uint8_t *blk = malloc(CI_BLOCK);
    if (!blk) {
        run_free(run);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if ((rc = run->ops->fstat(run->f, &st)) < 0 || st.size < CI_BLOCK ||
        (rc = read_at(run, blk, CI_BLOCK, 0)) < 0) {
        free(blk);
        run_free(run);
        return vmsh_error_set(err, rc < 0 ? rc : -EBADMSG, "run %s: cannot read its header", name);
    }
    rc = ci_parse_header(blk, k, name, st.size, &run->h, err);
    free(blk);
    if (rc < 0) {
        run_free(run);
        return rc;
    }
    size_t np = (size_t)run->h.n_pages;
    run->top = malloc(np ? np * 8 : 1);
    uint8_t *raw = malloc(np ? np * 8 : 1);
    if (!run->top || !raw) {
        free(raw);
        run_free(run);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    if (np && (rc = read_at(run, raw, np * 8, (1 + run->h.n_blocks + np) * CI_BLOCK)) < 0) {
        free(raw);
        run_free(run);
        return vmsh_error_set(err, rc, "run %s: cannot read its summary", name);
    }
    for (size_t i = 0; i < np; i++)
        run->top[i] = le64_get(raw + 8 * i);
    free(raw);
    *out = run;
    return 0;
}

static int read_block(const ci_run *run, const ci_key *k, uint64_t no, uint8_t *blk, ci_entry *e,
                      uint32_t *n, vmsh_error **err)
{
    int rc = read_at(run, blk, CI_BLOCK, (1 + no) * CI_BLOCK);
    if (rc < 0)
        return vmsh_error_set(err, rc, "run %s: cannot read block %llu", run->name,
                              (unsigned long long)no);
    return ci_parse_block(blk, k, run->name, &run->h, no, e, n, err);
}

/* The last index i < n with v[i] <= p, or 0. */
static size_t last_le(const uint64_t *v, size_t n, uint64_t p)
{
    size_t lo = 0, hi = n; /* answer in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] <= p)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* The last fence page and data block each thread read of a few runs, as
 * parsed and checked: a caller that looks IDs up in sorted order (a
 * restore, src/repo/restore.c) finds most in the block of the one before,
 * without a read, a tag to check and a parse each (~7 % of a restore's CPU
 * before). Runs are immutable and keyed by a serial never reused, so a memo
 * is never stale. Per thread: no lock on the lookup path. */
#define MEMOS 4
typedef struct ci_memo {
    uint64_t serial; /* 0: empty */
    uint64_t used;
    uint64_t page; /* UINT64_MAX: none */
    uint64_t in_page;
    uint64_t fences[CI_FENCES_PER_PAGE];
    uint64_t block; /* UINT64_MAX: none */
    uint32_t n;
    ci_entry e[CI_PER_BLOCK];
} ci_memo;

typedef struct ci_memos {
    uint64_t tick;
    ci_memo m[MEMOS];
} ci_memos;

static pthread_key_t memo_key;
static pthread_once_t memo_once = PTHREAD_ONCE_INIT;
static bool memo_key_ok;

static void memo_key_init(void)
{
    memo_key_ok = pthread_key_create(&memo_key, free) == 0;
}

/* This thread's memo of `run` (emptied when it was another run's), or NULL
 * without memory (lookups then read as before). */
static ci_memo *memo_of(const ci_run *run)
{
    pthread_once(&memo_once, memo_key_init);
    if (!memo_key_ok)
        return NULL;
    ci_memos *ms = pthread_getspecific(memo_key);
    if (!ms) {
        if (!(ms = calloc(1, sizeof(*ms))))
            return NULL;
        if (pthread_setspecific(memo_key, ms) != 0) {
            free(ms);
            return NULL;
        }
    }
    ci_memo *m = &ms->m[0];
    for (int i = 0; i < MEMOS; i++) {
        if (ms->m[i].serial == run->serial) {
            m = &ms->m[i];
            break;
        }
        if (ms->m[i].used < m->used)
            m = &ms->m[i];
    }
    if (m->serial != run->serial) {
        m->serial = run->serial;
        m->page = m->block = UINT64_MAX;
    }
    m->used = ++ms->tick;
    return m;
}

static int run_lookup(const ci_run *run, const ci_key *k, const uint8_t id[32], ci_entry *out,
                      vmsh_error **err)
{
    if (run->h.n_entries == 0)
        return 0;
    uint64_t p = prefix_of(id);
    size_t t = last_le(run->top, (size_t)run->h.n_pages, p);
    ci_memo local, *m = memo_of(run);
    if (!m) {
        m = &local;
        m->page = m->block = UINT64_MAX;
    }
    uint8_t blk[CI_BLOCK];
    int rc;
    if (m->page != t) {
        m->page = UINT64_MAX;
        rc = read_at(run, blk, CI_BLOCK, (1 + run->h.n_blocks + t) * CI_BLOCK);
        if (rc < 0)
            return vmsh_error_set(err, rc, "run %s: cannot read a fence page", run->name);
        uint64_t in_page = run->h.n_blocks - (uint64_t)t * CI_FENCES_PER_PAGE;
        if (in_page > CI_FENCES_PER_PAGE)
            in_page = CI_FENCES_PER_PAGE;
        for (uint64_t i = 0; i < in_page; i++)
            m->fences[i] = le64_get(blk + 8 * i);
        m->in_page = in_page;
        m->page = t;
    }
    uint64_t b = (uint64_t)t * CI_FENCES_PER_PAGE + last_le(m->fences, (size_t)m->in_page, p);
    for (;;) {
        if (m->block != b) {
            m->block = UINT64_MAX;
            if ((rc = read_block(run, k, b, blk, m->e, &m->n, err)) < 0)
                return rc;
            m->block = b;
        }
        const ci_entry *e = m->e;
        size_t lo = 0, hi = m->n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int c = memcmp(e[mid].id, id, 32);
            if (c == 0) {
                *out = e[mid];
                return 1;
            }
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        /* Blocks whose first IDs share the 8-byte prefix (crafted, or
         * astronomically rare) have equal fences: the ID may sit in an
         * earlier one. */
        if (b == 0 || m->n == 0 || memcmp(id, e[0].id, 32) >= 0 || prefix_of(e[0].id) != p)
            return 0;
        b--;
    }
}

/* ---- the set ---- */

typedef struct run_names {
    char (*v)[33];
    size_t n, cap;
    const char *ext;
    vmsh_error **err;
} run_names;

static int run_name_entry(void *opaque, const char *name, repo_store_kind kind,
                          const repo_store_stat *st)
{
    (void)st;
    run_names *l = opaque;
    size_t el = strlen(l->ext);
    if (kind != REPO_STORE_REG || strlen(name) != 32 + el || strcmp(name + 32, l->ext) != 0)
        return 0;
    for (int i = 0; i < 32; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        char(*nv)[33] = vmsh_realloc_array(l->v, nc, sizeof(*nv));
        if (!nv)
            return vmsh_error_set(l->err, -ENOMEM, "out of memory");
        l->v = nv;
        l->cap = nc;
    }
    memcpy(l->v[l->n], name, 32);
    l->v[l->n][32] = 0;
    l->n++;
    return 0;
}

static int list_runs(vmsh_repo *r, const char *ext, run_names *l, vmsh_error **err)
{
    memset(l, 0, sizeof(*l));
    l->ext = ext;
    l->err = err;
    vmsh_error *e = NULL;
    int rc = r->store->ops->list(r->store, CI_DIR, 0, run_name_entry, l, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return 0;
    }
    if (rc < 0) {
        free(l->v);
        l->v = NULL;
        if (e)
            vmsh_error_propagate(err, &e);
        return rc;
    }
    vmsh_error_free(e);
    return 0;
}

int ci_count_runs(vmsh_repo *r, size_t *n, vmsh_error **err)
{
    run_names l;
    int rc = list_runs(r, ".run", &l, err);
    free(l.v);
    *n = rc < 0 ? 0 : l.n;
    return rc;
}

static int set_open_once(vmsh_repo *r, ci_set *s, bool *vanished, vmsh_error **err)
{
    run_names l;
    int rc = list_runs(r, ".run", &l, err);
    if (rc < 0)
        return rc;
    s->runs = calloc(l.n ? l.n : 1, sizeof(*s->runs));
    if (!s->runs) {
        free(l.v);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < l.n; i++) {
        vmsh_error *e = NULL;
        rc = run_open(r, &s->key, l.v[i], &s->runs[s->n], &e);
        bool fatal = rc == -ENOMEM || rc == -EKEYREJECTED;
        if (rc == -EKEYREJECTED) {
            rc = -EBADMSG;
            if (e)
                e->code = rc;
        }
        if (fatal) {
            vmsh_error_propagate(err, &e);
            free(l.v);
            return rc;
        }
        vmsh_error_free(e);
        if (rc == 0)
            s->n++;
        else if (rc == -ENOENT)
            *vanished = true; /* merged away between the listing and the open */
        /* a damaged run is left out: its entries are misses, covered by
         * the readers' fallback */
    }
    free(l.v);
    return 0;
}

int ci_set_open(vmsh_repo *r, ci_set **out, vmsh_error **err)
{
    /* A merge writes its run before it deletes the runs it merged: a
     * listing that names a run gone by the time it is opened may miss the
     * new one, so it is taken again (a few times: merges are rare). */
    for (int attempt = 0;; attempt++) {
        ci_set *s = calloc(1, sizeof(*s));
        if (!s)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        ci_key_init(&s->key, &r->keys);
        bool vanished = false;
        int rc = set_open_once(r, s, &vanished, err);
        if (rc < 0) {
            ci_set_free(s);
            return rc;
        }
        if (!vanished || attempt == 3) {
            *out = s;
            return 0;
        }
        ci_set_free(s);
    }
}

void ci_set_free(ci_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        run_free(s->runs[i]);
    free(s->runs);
    free(s);
}

uint64_t ci_set_entries(const ci_set *s)
{
    uint64_t n = 0;
    for (size_t i = 0; s && i < s->n; i++)
        n += s->runs[i]->h.n_entries;
    return n;
}

int ci_set_lookup(const ci_set *s, const uint8_t id[32], ci_entry *out, vmsh_error **err)
{
    return ci_set_lookup_if(s, id, NULL, NULL, out, err);
}

int ci_set_lookup_if(const ci_set *s, const uint8_t id[32], ci_accept_fn accept, void *opaque,
                     ci_entry *out, vmsh_error **err)
{
    bool have = false;
    ci_entry first;
    /* newest runs are small and many; any order is correct */
    for (size_t i = s ? s->n : 0; i-- > 0;) {
        vmsh_error *e = NULL;
        int rc = run_lookup(s->runs[i], &s->key, id, out, &e);
        if (rc == 1) {
            vmsh_error_free(e);
            if (!accept || accept(opaque, out))
                return 1;
            if (!have)
                first = *out;
            have = true;
            continue;
        }
        if (rc == -ENOMEM || rc == -EIO) {
            vmsh_error_propagate(err, &e);
            return rc;
        }
        vmsh_error_free(e); /* a damaged block: a miss, as a damaged pack */
    }
    if (have) {
        *out = first;
        return 2;
    }
    return 0;
}

/* ---- the writer ---- */

struct ci_writer {
    vmsh_repo *r;
    ci_key key;
    char name[33];
    repo_store_file *f;
    uint8_t blk[CI_BLOCK];
    uint32_t in_blk;
    uint64_t n, blocks;
    uint64_t *fences;
    size_t cap_fences;
    uint8_t last[32];
};

int ci_writer_new(vmsh_repo *r, const ci_key *k, bool part, ci_writer **out, vmsh_error **err)
{
    ci_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    w->r = r;
    w->key = *k;
    uint8_t raw[16];
    if (crypto_random(raw, sizeof(raw)) < 0) {
        free(w);
        return vmsh_error_set(err, -EIO, "cannot get random bytes from the kernel");
    }
    vmsh_hex(raw, sizeof(raw), w->name);
    int rc = r->store->ops->mkdir(r->store, CI_DIR, err);
    char path[64];
    snprintf(path, sizeof(path), CI_DIR "/%s%s", w->name, part ? ".part" : ".run");
    if (rc == 0)
        rc = r->store->ops->create(r->store, path, 0, &w->f, err);
    if (rc < 0) {
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int write_at(ci_writer *w, const void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    const uint8_t *p = buf;
    while (len) {
        int64_t n = w->r->store->ops->pwrite(w->f, p, len, off);
        if (n <= 0)
            return vmsh_error_set(err, n < 0 ? (int)n : -EIO, "cannot write run %s: %s", w->name,
                                  strerror(n < 0 ? (int)-n : EIO));
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int flush_block(ci_writer *w, vmsh_error **err)
{
    if (w->in_blk == 0)
        return 0;
    if (w->blocks == w->cap_fences) {
        size_t nc = w->cap_fences ? w->cap_fences * 2 : 64;
        uint64_t *nf = vmsh_realloc_array(w->fences, nc, sizeof(*nf));
        if (!nf)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        w->fences = nf;
        w->cap_fences = nc;
    }
    w->fences[w->blocks] = prefix_of(w->blk + CI_BLOCK_HDR);
    le32_put(w->blk, w->in_blk);
    le32_put(w->blk + 4, 0);
    le64_put(w->blk + 8, w->blocks);
    memset(w->blk + 16, 0, CI_BLOCK_HDR - 16);
    size_t used = CI_BLOCK_HDR + (size_t)w->in_blk * CI_ENTRY_LEN;
    memset(w->blk + used, 0, CI_TAG_OFF - used);
    ci_block_tag(&w->key, w->name, w->blocks + 1, w->blk, w->blk + CI_TAG_OFF);
    int rc = write_at(w, w->blk, CI_BLOCK, (1 + w->blocks) * CI_BLOCK, err);
    w->blocks++;
    w->in_blk = 0;
    return rc;
}

int ci_writer_add(ci_writer *w, const ci_entry *e, vmsh_error **err)
{
    if (w->n) {
        int c = memcmp(e->id, w->last, 32);
        if (c == 0)
            return 0; /* the same chunk in another pack: one copy is enough */
        if (c < 0)
            return vmsh_error_set(err, -EINVAL, "run %s: entries out of order", w->name);
    }
    if (w->n >= CI_MAX_ENTRIES)
        return vmsh_error_set(err, -EFBIG, "run %s: too many entries", w->name);
    uint8_t *p = w->blk + CI_BLOCK_HDR + (size_t)w->in_blk * CI_ENTRY_LEN;
    memcpy(p, e->id, 32);
    memcpy(p + 32, e->pack, 16);
    le64_put(p + 48, e->offset);
    le32_put(p + 56, e->stored_len);
    le32_put(p + 60, (e->raw_len & 0xffffffu) | (e->kind << 24));
    memcpy(w->last, e->id, 32);
    w->n++;
    if (++w->in_blk == CI_PER_BLOCK)
        return flush_block(w, err);
    return 0;
}

void ci_writer_free(ci_writer *w)
{
    if (!w)
        return;
    if (w->f)
        w->r->store->ops->abort(w->f);
    free(w->fences);
    free(w);
}

int ci_writer_commit(ci_writer *w, char name_out[33], vmsh_error **err)
{
    int rc = flush_block(w, err);
    uint64_t b = w->blocks, f = div_up(b, CI_FENCES_PER_PAGE);
    uint8_t *page = calloc(1, CI_BLOCK);
    if (rc == 0 && !page)
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; rc == 0 && i < f; i++) {
        memset(page, 0, CI_BLOCK);
        for (uint64_t j = 0; j < CI_FENCES_PER_PAGE && i * CI_FENCES_PER_PAGE + j < b; j++)
            le64_put(page + 8 * j, w->fences[i * CI_FENCES_PER_PAGE + j]);
        rc = write_at(w, page, CI_BLOCK, (1 + b + i) * CI_BLOCK, err);
    }
    /* the top: the first fence of each page, in pieces of one page */
    for (uint64_t i = 0; rc == 0 && i < f; i += CI_BLOCK / 8) {
        uint64_t m = f - i < CI_BLOCK / 8 ? f - i : CI_BLOCK / 8;
        for (uint64_t j = 0; j < m; j++)
            le64_put(page + 8 * j, w->fences[(i + j) * CI_FENCES_PER_PAGE]);
        rc = write_at(w, page, (size_t)m * 8, (1 + b + f) * CI_BLOCK + i * 8, err);
    }
    if (rc == 0) {
        memset(page, 0, CI_BLOCK);
        memcpy(page, run_magic, 8);
        le32_put(page + 8, CI_VERSION);
        le32_put(page + 12, w->key.keyed ? 1u : 0u);
        le64_put(page + 16, w->n);
        le64_put(page + 24, b);
        le64_put(page + 32, f);
        le64_put(page + 40, (1 + b + f) * CI_BLOCK);
        le64_put(page + 48, 8 * f);
        le32_put(page + 56, CI_PER_BLOCK);
        le32_put(page + 60, CI_FENCES_PER_PAGE);
        ci_block_tag(&w->key, w->name, 0, page, page + CI_TAG_OFF);
        rc = write_at(w, page, CI_BLOCK, 0, err);
    }
    free(page);
    if (rc == 0) {
        rc = w->r->store->ops->commit(w->f, (1 + b + f) * CI_BLOCK + 8 * f, err);
        w->f = NULL; /* commit closes, also on failure */
    }
    if (rc == 0 && name_out)
        memcpy(name_out, w->name, 33);
    ci_writer_free(w);
    return rc;
}

static int cmp_ci(const void *a, const void *b)
{
    return memcmp(((const ci_entry *)a)->id, ((const ci_entry *)b)->id, 32);
}

static int write_sorted(vmsh_repo *r, const ci_key *k, bool part, ci_entry *e, size_t n,
                        vmsh_error **err)
{
    if (n)
        qsort(e, n, sizeof(*e), cmp_ci);
    ci_writer *w = NULL;
    int rc = ci_writer_new(r, k, part, &w, err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = ci_writer_add(w, &e[i], err);
    if (rc < 0) {
        ci_writer_free(w);
        return rc;
    }
    return ci_writer_commit(w, NULL, err);
}

int ci_write_entries(vmsh_repo *r, const ci_key *k, ci_entry *e, size_t n, vmsh_error **err)
{
    return write_sorted(r, k, false, e, n, err);
}

int ci_write_map_since(vmsh_repo *r, size_t mark, vmsh_error **err)
{
    size_t n = r->map.count > mark ? r->map.count - mark : 0;
    ci_entry *e = vmsh_calloc_array(n ? n : 1, sizeof(*e));
    if (!e)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = mark; i < r->map.count; i++) {
        const chunk_loc *l = &r->map.locs[i];
        if (l->pack == CHUNK_PENDING || l->pack >= r->n_packs)
            continue;
        memcpy(e[k].id, l->id, ID_LEN);
        vmsh_unhex(r->packs[l->pack].name, e[k].pack, 16);
        e[k].offset = l->offset;
        e[k].stored_len = l->stored_len;
        e[k].raw_len = l->raw_len;
        e[k].kind = l->kind;
        k++;
    }
    ci_key key;
    ci_key_init(&key, &r->keys);
    int rc = k ? ci_write_entries(r, &key, e, k, err) : 0;
    free(e);
    return rc;
}

/* ---- merging ---- */

/* Test hook (tests/e2e/t-repo-index.sh): VMSHADOW_TEST_MERGE_DELAY_MS makes
 * a merge sleep after every block it writes and between the deletions of
 * the runs it replaced, so that a test can kill it at either step. */
static void merge_test_delay(void)
{
    static long ms = -1;
    if (ms < 0) {
        const char *s = getenv("VMSHADOW_TEST_MERGE_DELAY_MS");
        ms = s ? strtol(s, NULL, 10) : 0;
        if (ms < 0 || ms > 10000)
            ms = 0;
    }
    if (ms > 0)
        usleep((useconds_t)ms * 1000);
}

void ci_test_kill_point(void)
{
    /* read at every call (cheap beside the I/O of a step): a test sets it
     * in a forked child, whose parent may have counted nothing */
    static long n;
    const char *s = getenv("VMSHADOW_TEST_GC_KILL_AT");
    if (!s) {
        n = 0;
        return;
    }
    long at = strtol(s, NULL, 10);
    if (at > 0 && ++n == at)
        _exit(77);
}

typedef struct cursor {
    ci_run *run;
    uint64_t blk;
    uint32_t pos, n;
    ci_entry e[CI_PER_BLOCK];
    bool done;
} cursor;

static int cursor_fill(cursor *c, const ci_key *k, uint8_t *buf, vmsh_error **err)
{
    while (c->pos >= c->n) {
        if (c->blk >= c->run->h.n_blocks) {
            c->done = true;
            return 0;
        }
        int rc = read_block(c->run, k, c->blk, buf, c->e, &c->n, err);
        if (rc < 0)
            return rc;
        c->blk++;
        c->pos = 0;
    }
    return 0;
}

static int unlink_runs(vmsh_repo *r, const run_names *l, const char *ext)
{
    for (size_t i = 0; i < l->n; i++) {
        char path[64];
        snprintf(path, sizeof(path), CI_DIR "/%s%s", l->v[i], ext);
        merge_test_delay();
        ci_test_kill_point();
        r->store->ops->del(r->store, path, NULL);
    }
    return r->store->ops->sync(r->store, CI_DIR, NULL);
}

/* A cursor's read failed. When its run is gone (merged away by a writer
 * since this merge opened it; an object store answers the read of a
 * deleted object with an error), the run counts as merged away, as one
 * gone before it was opened: its entries are in the writer's merged run,
 * durable before it went and not replaced by this merge (which unlinks
 * only the runs it listed), less those of packs the writer saw condemned
 * (gc.md, "Merging" in repository.md). Found by t-fleet-concurrent on
 * s3:// ("gc failed: run …: cannot read block 0"). Else the error. */
static int cursor_failed(vmsh_repo *r, cursor *c, const char *ext, int rc, vmsh_error **err)
{
    if (strcmp(ext, ".run") != 0)
        return rc;
    char path[64];
    snprintf(path, sizeof(path), CI_DIR "/%s%s", c->run->name, ext);
    vmsh_error *e = NULL;
    int sr = r->store->ops->stat(r->store, path, NULL, &e);
    vmsh_error_free(e);
    if (sr != -ENOENT)
        return rc;
    if (err) {
        vmsh_error_free(*err);
        *err = NULL;
    }
    c->done = true;
    c->pos = c->n = 0;
    return 0;
}

/* Merges the runs named in l (extension ext) into one new .run. */
static int merge_named(vmsh_repo *r, const ci_key *k, const run_names *l, const char *ext,
                       ci_filter_fn keep, void *opaque, vmsh_error **err)
{
    cursor *cs = vmsh_calloc_array(l->n ? l->n : 1, sizeof(*cs));
    uint8_t *buf = malloc(CI_BLOCK);
    ci_writer *w = NULL;
    int rc = 0;
    if (!cs || !buf)
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    size_t nc = 0;
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        const char *nm = l->v[i];
        /* .part files are opened as runs too: same format, another name */
        ci_run *run = calloc(1, sizeof(*run));
        if (!run) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        memcpy(run->name, nm, sizeof(run->name));
        run->ops = r->store->ops;
        char path[64];
        snprintf(path, sizeof(path), CI_DIR "/%s%s", nm, ext);
        repo_store_stat st;
        uint8_t *hb = buf;
        if ((rc = r->store->ops->open_file(r->store, path, 0, &run->f, err)) < 0 ||
            (rc = run->ops->fstat(run->f, &st)) < 0 || (rc = read_at(run, hb, CI_BLOCK, 0)) < 0 ||
            (rc = ci_parse_header(hb, k, nm, st.size, &run->h, err)) < 0) {
            run_free(run);
            if (rc == -ENOENT && strcmp(ext, ".run") == 0) {
                rc = 0; /* merged away meanwhile */
                continue;
            }
            rc = vmsh_error_set(err, rc, "cannot merge run %s", path);
            break;
        }
        cs[nc++].run = run;
    }
    if (rc == 0)
        rc = ci_writer_new(r, k, false, &w, err);
    for (size_t i = 0; rc == 0 && i < nc; i++)
        if ((rc = cursor_fill(&cs[i], k, buf, err)) < 0)
            rc = cursor_failed(r, &cs[i], ext, rc, err);
    /* gc's merges (r->ci_disfavor set) keep one entry per chunk ID,
     * preferring a pack outside the set (a marked or repacked one): a run
     * answers a lookup with one of its entries, so a copy written by a
     * repack or stored again must not hide behind the old pack's entry
     * (docs/formats/gc.md, "Repacking") */
    ci_entry pend;
    bool have = false;
    while (rc == 0) {
        cursor *m = NULL;
        for (size_t i = 0; i < nc; i++)
            if (!cs[i].done && (!m || memcmp(cs[i].e[cs[i].pos].id, m->e[m->pos].id, 32) < 0))
                m = &cs[i];
        if (!m)
            break;
        const ci_entry *e = &m->e[m->pos];
        if ((!keep || keep(opaque, e)) && r->ci_disfavor) {
            if (have && memcmp(pend.id, e->id, 32) == 0) {
                if (gc_marks_find(r->ci_disfavor, pend.pack) &&
                    !gc_marks_find(r->ci_disfavor, e->pack))
                    pend = *e;
            } else {
                if (have && (rc = ci_writer_add(w, &pend, err)) == 0 && w->in_blk == 0)
                    merge_test_delay();
                pend = *e;
                have = true;
            }
        } else if (!keep || keep(opaque, e)) {
            rc = ci_writer_add(w, e, err);
            if (w->in_blk == 0)
                merge_test_delay();
        }
        m->pos++;
        if (rc == 0 && (rc = cursor_fill(m, k, buf, err)) < 0)
            rc = cursor_failed(r, m, ext, rc, err);
    }
    if (rc == 0 && have)
        rc = ci_writer_add(w, &pend, err);
    for (size_t i = 0; i < nc; i++)
        run_free(cs[i].run);
    free(cs);
    free(buf);
    if (rc < 0) {
        ci_writer_free(w);
        return rc;
    }
    /* the new run is durable before any old one goes */
    ci_test_kill_point();
    if ((rc = ci_writer_commit(w, NULL, err)) < 0)
        return rc;
    rc = unlink_runs(r, l, ext);
    ci_test_kill_point();
    return rc;
}

int ci_merge_all(vmsh_repo *r, const ci_key *k, ci_filter_fn keep, void *opaque, vmsh_error **err)
{
    run_names l;
    int rc = list_runs(r, ".run", &l, err);
    if (rc < 0)
        return rc;
    rc = merge_named(r, k, &l, ".run", keep, opaque, err);
    free(l.v);
    return rc;
}

static bool keep_uncondemned(void *opaque, const ci_entry *e)
{
    const vmsh_repo *r = opaque;
    return gc_marks_find(&r->condemned, e->pack) == NULL;
}

int ci_merge_small(vmsh_repo *r, const ci_key *k, size_t max_runs, uint64_t small, vmsh_error **err)
{
    run_names l;
    int rc = list_runs(r, ".run", &l, err);
    if (rc < 0 || l.n <= max_runs) {
        free(l.v);
        return rc;
    }
    /* the small runs only: the cost stays bounded by `small` entries each,
     * whatever the size of the big merged run */
    run_names pick = {.v = vmsh_calloc_array(l.n, sizeof(*l.v))};
    if (!pick.v) {
        free(l.v);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < l.n; i++) {
        ci_run *run = NULL;
        vmsh_error *e = NULL;
        if (run_open(r, k, l.v[i], &run, &e) == 0 && run->h.n_entries <= small)
            memcpy(pick.v[pick.n++], l.v[i], 33);
        vmsh_error_free(e);
        run_free(run);
    }
    free(l.v);
    /* a pending backup's merge leaves out the packs gc condemned: a gc
     * deleting them merged their entries out already, and this merge must
     * not bring them back (docs/formats/gc.md) */
    rc = pick.n >= 2
             ? merge_named(r, k, &pick, ".run", r->condemned.n ? keep_uncondemned : NULL, r, err)
             : 0;
    free(pick.v);
    return rc;
}

void ci_remove_parts(vmsh_repo *r)
{
    run_names l;
    if (list_runs(r, ".part", &l, NULL) == 0 && l.n)
        unlink_runs(r, &l, ".part");
    free(l.v);
}

/* 256k entries (~20 MiB) per sorted batch of the build */
#define BUILD_BATCH (256u * 1024u)

int ci_build_from_packs(vmsh_repo *r, crypto_ctx *c, const ci_key *k, ci_filter_fn keep,
                        void *opaque, vmsh_error **err)
{
    ci_remove_parts(r);
    char(*names)[33] = NULL;
    size_t n = 0;
    int rc = repo_pack_names(r, &names, &n, err);
    if (rc < 0)
        return rc;
    ci_entry *batch = vmsh_calloc_array(BUILD_BATCH, sizeof(*batch));
    if (!batch) {
        free(names);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    size_t nb = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        _cleanup_free_ char *p = pack_path(r->path, names[i]);
        chunk_loc *t = NULL;
        uint32_t nt = 0;
        uint64_t size = 0;
        vmsh_error *e = NULL;
        int trc = p ? pack_read_table(r, p, c, r->keys.encrypted, &t, &nt, &size, &e) : -ENOMEM;
        if (trc == -ENOMEM || trc == -EPROTONOSUPPORT || trc == -EKEYREJECTED) {
            rc = trc == -EKEYREJECTED ? -EBADMSG : trc;
            if (e)
                e->code = rc;
            vmsh_error_propagate(err, &e);
            break;
        }
        vmsh_error_free(e);
        if (trc < 0)
            continue; /* damaged: its chunks are missing, as before */
        uint8_t pn[16];
        vmsh_unhex(names[i], pn, 16);
        for (uint32_t j = 0; rc == 0 && j < nt; j++) {
            ci_entry ce = {.offset = t[j].offset,
                           .stored_len = t[j].stored_len,
                           .raw_len = t[j].raw_len,
                           .kind = t[j].kind};
            memcpy(ce.id, t[j].id, 32);
            memcpy(ce.pack, pn, 16);
            if (keep && !keep(opaque, &ce))
                continue;
            batch[nb++] = ce;
            if (nb == BUILD_BATCH) {
                rc = write_sorted(r, k, true, batch, nb, err);
                nb = 0;
            }
        }
        free(t);
    }
    free(names);
    if (rc == 0)
        rc = write_sorted(r, k, true, batch, nb, err);
    free(batch);
    if (rc < 0) {
        ci_remove_parts(r);
        return rc;
    }
    run_names l;
    if ((rc = list_runs(r, ".part", &l, err)) < 0)
        return rc;
    rc = merge_named(r, k, &l, ".part", NULL, NULL, err);
    free(l.v);
    return rc;
}
