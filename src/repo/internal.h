/* internal.h - private declarations of the repository layer
 * (docs/formats/repository.md is the specification of every byte here). */
#ifndef VMSH_REPO_INTERNAL_H
#define VMSH_REPO_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/util/error.h>
#include <vmshadow/util/lock.h>

#include "store.h"

#define CHUNK_SIZE          VMSH_REPO_CHUNK_SIZE
#define ID_LEN              32
#define PACK_TARGET_DEFAULT (64u << 20)
#define PACK_HEADER_LEN     16
#define PACK_FOOTER_LEN     64
#define PACK_ENTRY_LEN      56
#define OBJ_HEADER_LEN      24
#define OBJ_MAX_PAYLOAD     (256u << 20)
#define INDEX_HEADER_LEN    24
#define INDEX_ENTRY_LEN     40
#define GCM_NONCE_LEN       12
#define GCM_TAG_LEN         16
#define GCM_OVERHEAD        (GCM_NONCE_LEN + GCM_TAG_LEN)
#define MAX_NAME_LEN        1024
#define MAX_BUFFER_LEN      (16u << 20)
#define MAX_DOCUMENT_LEN    (64u << 20)

enum { BLOB_RAW = 0, BLOB_ZSTD = 1 };
enum { OBJ_INDEX = 1, OBJ_MANIFEST = 2 };

/* ---- little-endian helpers ---- */
static inline void le16_put(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void le32_put(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t le16_get(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t le32_get(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t le64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void vmsh_hex(const uint8_t *in, size_t n, char *out);  /* out: 2n+1 */
int vmsh_unhex(const char *in, uint8_t *out, size_t n); /* exactly 2n hex digits; 0 or -EINVAL */

/* ---- keys and crypto (crypto.c) ---- */
typedef struct repo_keys {
    bool encrypted;
    uint8_t data_key[32];
    uint8_t id_key[32];
} repo_keys;

/* Per-thread hashing/cipher state (OpenSSL contexts are not shared). */
typedef struct crypto_ctx crypto_ctx;
int crypto_ctx_new(crypto_ctx **out, const repo_keys *k, vmsh_error **err);
void crypto_ctx_free(crypto_ctx *c);
/* Chunk ID: SHA-256, or HMAC-SHA-256 with the ID key. */
int crypto_chunk_id(crypto_ctx *c, const void *data, size_t len, uint8_t id[ID_LEN]);
/* The IDs of `n` chunks of `len` bytes each, the same as crypto_chunk_id
 * gives one by one: four at a time with SHA-NI where the CPU has it
 * (sha256mb.h), else OpenSSL's one by one. 0 or -EIO. */
int crypto_chunk_ids(crypto_ctx *c, size_t n, const uint8_t *const *data, size_t len,
                     uint8_t (*ids)[ID_LEN]);
/* True when a chunk's bytes look uniformly random (a sampled byte
 * histogram): store it raw without running zstd (compress.c). */
bool chunk_looks_random(const uint8_t *p, size_t len);
/* Sets a reused compression context's parameters once for a backup's chunks
 * at `level` (compress.c); 0, or -ENOMEM when zstd refuses a parameter. */
struct ZSTD_CCtx_s;
int zstd_setup(struct ZSTD_CCtx_s *cctx, int level);
/* Plain SHA-256 (object trailers, pack tables). */
void crypto_sha256(const void *data, size_t len, uint8_t out[32]);
/* AES-256-GCM: out = nonce | ct | tag (len + GCM_OVERHEAD bytes). */
int crypto_seal(crypto_ctx *c, const void *in, size_t len, const void *aad, size_t aad_len,
                uint8_t *out);
/* Opens nonce|ct|tag of `len` bytes (≥ GCM_OVERHEAD) into out (len - GCM_OVERHEAD).
 * -EBADMSG when authentication fails. */
int crypto_open(crypto_ctx *c, const uint8_t *in, size_t len, const void *aad, size_t aad_len,
                uint8_t *out);
int crypto_random(void *buf, size_t len);

/* Key setup for config (crypto.c). `enc_json` is the config's "encryption"
 * object (json-c). */
struct json_object;
/* `version` is the repository's format version: the wrapped key's additional
 * data names it from version 2 on ("vmshadow-key-v2:" + id), so a config
 * whose version was lowered no longer unlocks (keys_unlock says so). */
int keys_create(const char *key_file, struct json_object **enc_out, const char *repo_id,
                int version, repo_keys *k, vmsh_error **err);
int keys_unlock(const char *key_file, struct json_object *enc, const char *repo_id, int version,
                const char *repo_path, repo_keys *k, vmsh_error **err);
/* The config's MAC (format version 2, docs/formats/repository.md "Config
 * authentication"): HMAC-SHA-256 of `msg` under a key derived from the master
 * key. -EIO when OpenSSL fails. */
int keys_config_mac(const repo_keys *k, const void *msg, size_t len, uint8_t out[32]);

/* ---- chunk map (chunkmap.c): chunk ID → location ---- */
typedef struct chunk_loc {
    uint8_t id[ID_LEN];
    uint64_t offset;
    uint32_t pack; /* index into repo->packs; CHUNK_PENDING while in flight */
    uint32_t stored_len;
    uint32_t raw_len;
    uint32_t kind;
} chunk_loc;
#define CHUNK_PENDING UINT32_MAX

typedef struct chunk_map {
    chunk_loc *locs; /* count entries in insertion order, room for locs_cap */
    uint64_t *slots; /* cap (a power of two) slots; see chunkmap.c */
    size_t count, locs_cap, cap;
} chunk_map;

void chunk_map_init(chunk_map *m);
void chunk_map_clear(chunk_map *m);
chunk_loc *chunk_map_find(const chunk_map *m, const uint8_t id[ID_LEN]);
/* Inserts when absent; *out points at the location (existing or new). 1 when
 * inserted, 0 when present, -ENOMEM. Pointers die at the next insert or
 * reserve. */
int chunk_map_insert(chunk_map *m, const chunk_loc *loc, chunk_loc **out);
/* Room for `n` entries without growing (-ENOMEM). */
int chunk_map_reserve(chunk_map *m, size_t n);

typedef struct vmsh_repo vmsh_repo;

/* ---- sessions and gc's marks (session.c; docs/formats/gc.md) ---- */
#define GC_GRACE_DEFAULT_S  86400 /* store-gc-grace-seconds */
#define GC_MARGIN_DEFAULT_S 300   /* store-gc-margin-seconds */
#define SESSION_DEFAULT_S   900   /* store-session-seconds */
#define SESSION_DIR         "locks/sessions"
#define GC_MARKS_NAME       "locks/gc-marks"

typedef struct repo_gc_params_t {
    int64_t grace_ms, margin_ms, session_ms;
} repo_gc_params_t;
/* The handle's values (tests), else the options, else the defaults. */
void repo_gc_params(const vmsh_repo *r, repo_gc_params_t *p);
/* Milliseconds since the epoch: the handle's clock (tests), else the
 * real one. */
int64_t repo_now_ms(const vmsh_repo *r);

typedef struct gc_mark {
    uint8_t pack[16];
    int64_t t_ms; /* when condemned; -1: not yet fixed (never deletable) */
} gc_mark;
typedef struct gc_marks {
    gc_mark *v; /* sorted by pack after gc_marks_sort / load */
    size_t n, cap;
} gc_marks;
void gc_marks_clear(gc_marks *m);
int gc_marks_add(gc_marks *m, const uint8_t pack[16], int64_t t_ms);
void gc_marks_sort(gc_marks *m);
const gc_mark *gc_marks_find(const gc_marks *m, const uint8_t pack[16]);
int gc_marks_parse(const char *text, size_t len, gc_marks *out, vmsh_error **err);
int gc_marks_load(vmsh_repo *r, gc_marks *out, vmsh_error **err); /* absent: empty */
int gc_marks_store(vmsh_repo *r, const gc_marks *m, vmsh_error **err);

/* A writer's session: written at begin (after a check of the clock against
 * the store's), renewed by a heartbeat thread, deleted at the end. */
typedef struct repo_session repo_session;
int repo_session_begin(vmsh_repo *r, repo_session **out, vmsh_error **err);
/* Names a backup the writer builds on without looking its chunks up (an
 * incremental's base), before it relies on it. */
int repo_session_pin(repo_session *s, const char *backup_id, vmsh_error **err);
/* Before the commit: renews, and fails when the session ever lapsed. */
int repo_session_check(repo_session *s, vmsh_error **err);
void repo_session_end(repo_session *s); /* accepts NULL */
/* Puts `name` and compares its modification time (the store's clock) with
 * this host's: -ERANGE "clock skew" beyond the margin. */
int repo_check_clock(vmsh_repo *r, const repo_gc_params_t *p, const char *name, vmsh_error **err);

typedef struct gc_sessions {
    int64_t oldest_start_ms; /* INT64_MAX: none live */
    size_t n_live, n_dead;
    bool bad_pin;
    char (*pins)[VMSH_BACKUP_ID_LEN + 1];
    size_t n_pins;
} gc_sessions;
/* One session object, parsed (gc_session_parse: 0, -EBADMSG when it is not
 * a version 1 session, -ENOMEM). Pins that are not backup IDs are dropped
 * and flagged: gc then keeps every backup. */
typedef struct gc_session_doc {
    int64_t start_ms, heartbeat_ms;
    char (*pins)[VMSH_BACKUP_ID_LEN + 1];
    size_t n_pins;
    bool bad_pin;
} gc_session_doc;
int gc_session_parse(const char *text, size_t len, gc_session_doc *out);
void gc_session_doc_clear(gc_session_doc *d);
/* Reads every session; deletes the dead ones. */
int gc_sessions_scan(vmsh_repo *r, int64_t now_ms, const repo_gc_params_t *p, gc_sessions *v,
                     vmsh_error **err);
void gc_sessions_clear(gc_sessions *v);
/* Tests (test_repo_gc.c): make the open pack durable; pin a backup as an
 * incremental's base would. */
int backup_flush_for_tests(vmsh_backup *b);
int backup_pin_for_tests(vmsh_backup *b, const char *backup_id);
/* Whether pack `no` is condemned in a pending backup's view (r->lock held). */
bool repo_pack_condemned(vmsh_repo *r, uint32_t no);

/* ---- packs (pack.c) ---- */
typedef struct pack_info {
    char name[33];     /* 32 hex */
    uint64_t size;     /* file size */
    uint32_t n_chunks; /* entries in its table */
    bool damaged;
    char *damage; /* what is wrong, when damaged */
    /* index mode (issue 27): packs are checked when first used, not all at
     * open: stat_ok when it exists as a regular file of the repository
     * (before a backup dedupes against it), table_ok when its table was
     * read and found sound (before a reader reads a blob of it) */
    bool stat_ok, table_ok;
    /* gc (maint.c): a manifest references a chunk found in it; the bytes
     * of the references found in it (counted per reference); its live
     * chunks are being copied into new packs (docs/formats/gc.md,
     * "Repacking") */
    bool gc_ref;
    bool gc_repack;
    uint64_t gc_live;
    /* a pending backup's view of gc's marks (session.c): 0 not looked up
     * yet, 1 not condemned, 2 condemned (never deduplicated against) */
    uint8_t condemned;
} pack_info;

char *pack_path(const char *repo, const char *name);
/* Reads a pack's table into *entries (n entries). -EBADMSG when damaged. */
int pack_read_table(vmsh_repo *r, const char *path, crypto_ctx *c, bool encrypted,
                    chunk_loc **entries, uint32_t *n, uint64_t *file_size, vmsh_error **err);

typedef struct pack_writer pack_writer;
int pack_writer_new(pack_writer **out, vmsh_repo *r, vmsh_error **err);
/* A buffer of len bytes aligned to 2 MiB and backed by huge pages where the
 * kernel has them (pack.c): the backup's ring and pack buffers; free(). */
void *repo_huge_alloc(size_t len);
/* Appends one blob; the entry's offset is filled in. Packs roll over at the target. */
int pack_writer_add(pack_writer *w, chunk_loc *loc, const void *blob, vmsh_error **err);
/* Finishes the open pack (durable); subsequent adds start a new one. */
int pack_writer_flush(pack_writer *w, vmsh_error **err);
void pack_writer_free(pack_writer *w); /* abort: removes the open temp file */

/* ---- objects (object.c) ---- */
int object_write(vmsh_repo *r, const char *path, uint16_t type, const void *payload, size_t len,
                 vmsh_error **err);
/* A buffer for an object of `len` payload bytes that the caller fills at
 * buf + OBJ_HEADER_LEN, then object_write_buf with the calling thread's
 * crypto context (no copy unless encrypted; too large: -EFBIG, as
 * object_write): NULL when out of memory. */
uint8_t *object_buf_new(size_t len);
int object_write_buf(vmsh_repo *r, crypto_ctx *c, const char *path, uint16_t type, uint8_t *buf,
                     size_t len, vmsh_error **err);
/* The object's name (the last component of `path`: an index's content ID,
 * a manifest's backup ID) is bound to it in a version 2 repository's
 * encrypted objects (docs/formats/repository.md, "Object binding"). */
int object_read(vmsh_repo *r, const char *path, uint16_t type, uint8_t **payload, size_t *len,
                vmsh_error **err);

/* ---- file index (index.c) ---- */
typedef struct index_entry {
    uint64_t chunk;
    uint8_t id[ID_LEN];
} index_entry;

struct vmsh_file_index {
    uint64_t size;
    size_t count;
    index_entry *entries;
    /* vmsh_file_index_check_chunks found every chunk in this repository's
     * map, of this generation (the map only grows while a backup is
     * pending; forgetting it starts a new generation) */
    const vmsh_repo *checked_repo;
    uint64_t checked_gen;
    /* loaded by vmsh_file_index_load from this repository's backup: while
     * that manifest exists and a backup holds the write lock, every chunk
     * the index names exists (gc keeps them and only gc deletes), so an
     * incremental need not look its base chunks up (issue 27) */
    const vmsh_repo *from_repo;
    char from_backup[VMSH_BACKUP_ID_LEN + 1];
};
int index_parse(const uint8_t *p, size_t len, const char *what, vmsh_file_index **out,
                vmsh_error **err);
/* The payload's length, and the payload written at p (that many bytes). */
size_t index_payload_len(const vmsh_file_index *idx);
void index_serialize_into(const vmsh_file_index *idx, uint8_t *p);
/* Writes the index object with crypto context c; out_name: 64 hex + NUL. */
int index_store(vmsh_repo *r, crypto_ctx *c, const vmsh_file_index *idx, char out_name[65],
                vmsh_error **err);
int index_load(vmsh_repo *r, const char *name, vmsh_file_index **out, vmsh_error **err);
char *index_path(const char *repo, const char *name);

/* ---- the repository handle ---- */
struct vmsh_repo {
    char *path;
    repo_store *store; /* every file of the repository is reached through it (store.h) */
    char id[33];
    int version; /* the config's format version (1 or 2): objects are written and read in it */
    int compression_level;
    unsigned threads;
    repo_keys keys;
    crypto_ctx *crypto; /* for the calling thread */
    /* chunk map, loaded on first need; a pending backup loads it in a
     * thread of its own (repo_load_map_start) that repo_load_map joins */
    bool map_loaded;
    bool map_thread_on;
    pthread_t map_thread;
    int map_rc;       /* the thread's result, kept until repo_load_map */
    uint64_t map_gen; /* counts repo_map_forget */
    vmsh_error *map_err;
    chunk_map map;
    pack_info *packs;
    size_t n_packs, cap_packs;
    pthread_mutex_t lock; /* guards map and packs while workers run */
    /* the on-disk chunk index (chunkindex.c), opened by repo_load_map; NULL
     * in the legacy mode, where `map` holds every pack's table (a
     * repository without runs opened by a reader, or a reader's fallback) */
    struct ci_set *ci;
    pthread_mutex_t fallback_lock; /* one fallback load at a time */
    pthread_mutex_t readers_lock;  /* readers */
    unsigned readers;     /* operations of this handle holding locks/read (repo_read_begin) */
    bool legacy;          /* map holds every pack table */
    bool no_fallback;     /* tests: never fall back to the pack tables */
    uint32_t *pack_slots; /* pack name -> packs[] index + 1 (index mode) */
    size_t pack_slots_cap;
    bool backup_pending;
    uint64_t pack_target;      /* 0: PACK_TARGET_DEFAULT; tests make it small */
    size_t pack_flush;         /* 0: 7.75 MiB writes; tests make it small (≥ 4096) */
    unsigned pack_io_delay_us; /* tests: the pack writer thread sleeps before each write */
    size_t verify_run_ids;     /* 0: verify sorts runs of 512 Ki chunk IDs; tests make it small */
    size_t verify_max_runs;    /* 0: verify merges its runs into one at 256; tests make it small */
    /* issue 26: gc's marks as the pending backup read them, and the times
     * of the gc protocol (-1: from the options; tests set them) */
    gc_marks condemned;
    int64_t session_start_ms; /* the pending backup's session */
    int64_t gc_grace_ms, gc_margin_ms, session_ms;
    int64_t (*clock)(void *opaque); /* tests: a fake clock (ms) */
    void *clock_opaque;
    bool no_skew_check; /* tests with a fake clock */
    /* gc's mark phase: lookups prefer copies outside `condemned` (then
     * gc's marks), and take a condemned copy rather than none */
    bool gc_marking;
    /* gc's merges of runs: one entry per chunk, preferring packs outside
     * this set (chunkindex.c, merge_named); NULL: every entry kept */
    const gc_marks *ci_disfavor;
    /* tests: called by gc's sweep before it deletes an index object it
     * listed (the race of docs/formats/gc.md, "Index objects") */
    void (*gc_sweep_hook)(void *opaque, const char *path);
    void *gc_sweep_hook_opaque;
};

/* A writer's commit takes locks/write shared for its last check of its
 * index objects and its manifest's put, waiting while a gc sweeps (which
 * holds it exclusively): docs/formats/gc.md, "Index objects". */
int repo_commit_lock(vmsh_repo *r, vmsh_lock **out, vmsh_error **err);

int repo_load_map(vmsh_repo *r, vmsh_error **err);
/* The location of chunk `id` (after repo_load_map): this process's new
 * chunks (the map), then the chunk index's runs. With `fallback`, a miss
 * loads every pack table once (a chunk written by a vmshadow without runs,
 * or a damaged run) and looks again. 1 found, 0 absent, < 0 error. */
int repo_find_chunk(vmsh_repo *r, const uint8_t id[ID_LEN], chunk_loc *out, bool fallback,
                    vmsh_error **err);
/* The location of the chunk of index entry `e` of a file of `size` bytes,
 * for reading it (repo_find_chunk with the fallback): 0 with *out filled;
 * -EBADMSG naming backup, file and chunk when the chunk is missing, still
 * in flight, or not of the length its place in the file needs (entries
 * are bounds-checked by the index parser; this is the map's side). */
int repo_locate_entry(vmsh_repo *r, const index_entry *e, uint64_t size, const char *backup,
                      const char *file, chunk_loc *out, vmsh_error **err);
/* The number in packs[] of the pack named by 16 binary bytes (registered
 * on first use). */
int repo_pack_no(vmsh_repo *r, const uint8_t name[16]);
/* Every pack's name (32 hex), unsorted. */
int repo_pack_names(vmsh_repo *r, char (**names)[33], size_t *n, vmsh_error **err);
/* Starts loading the chunk map in a thread (with its own crypto context),
 * so that it overlaps what the caller does next; nothing may touch the map,
 * or the packs until
 * repo_load_map (which returns the thread's error) or repo_map_wait. Falls
 * back to loading at the next repo_load_map when no thread can start. */
void repo_load_map_start(vmsh_repo *r);
/* Waits for that thread, if any; its error stays for repo_load_map. */
void repo_map_wait(vmsh_repo *r);
/* Forgets the in-memory map and packs (after waiting for the thread): the
 * next repo_load_map reads them from disk again. */
void repo_map_forget(vmsh_repo *r);
/* Registers a new pack (by the pack writer); returns its number. */
int repo_add_pack(vmsh_repo *r, const char *name, uint64_t size, uint32_t n_chunks);
int repo_lock(vmsh_repo *r, const char *which, bool exclusive, vmsh_lock **out, vmsh_error **err);
/* locks/read shared for a reader of packs (restore, a reader, read_file),
 * and the handle's cached chunk locations, runs and pack checks dropped
 * when no other operation of this handle held the lock since they were
 * loaded: a gc may have deleted packs they name in between (issue 26,
 * docs/formats/gc.md "Handles that outlive a gc"). repo_read_end: the
 * operation is over (NULL: nothing). */
int repo_read_begin(vmsh_repo *r, vmsh_lock **out, vmsh_error **err);
void repo_read_end(vmsh_repo *r, vmsh_lock *l);
char *manifest_path(const char *repo, const char *id);
int manifest_load(vmsh_repo *r, const char *id, vmsh_backup_info **out, vmsh_error **err);
int repo_list_ids(vmsh_repo *r, char (**ids)[VMSH_BACKUP_ID_LEN + 1], size_t *n, vmsh_error **err);

/* Reads, decrypts, decompresses and checks one chunk into out (CHUNK_SIZE
 * bytes). -EBADMSG on any mismatch. `fds` caches open packs (n_packs
 * entries, -1 when closed) owned by the caller. */
typedef struct chunk_reader chunk_reader;
int chunk_reader_new(chunk_reader **out, vmsh_repo *r, vmsh_error **err);
int chunk_reader_read(chunk_reader *cr, const chunk_loc *loc, uint8_t *out, vmsh_error **err);
void chunk_reader_free(chunk_reader *cr);
/* Reads packs with O_DIRECT through 1 MiB windows (restores). */
void chunk_reader_set_direct(chunk_reader *cr, bool direct);
/* The two halves of chunk_reader_read, for a caller that reads the blobs of
 * many chunks at once (restore.c): bytes [off, off + len) of pack `pack`
 * into buf, the count read (short only at the end of the pack; in direct
 * mode off, len and buf are multiples of 4096); and one blob of `loc`
 * already in memory (stored_len bytes at data) decoded and checked against
 * its ID into out. */
int64_t chunk_reader_fetch(chunk_reader *cr, uint32_t pack, uint64_t off, size_t len, uint8_t *buf,
                           vmsh_error **err);
int chunk_reader_decode(chunk_reader *cr, const chunk_loc *loc, const uint8_t *data, uint8_t *out,
                        vmsh_error **err);
/* chunk_reader_decode in two steps, for a caller that decodes many chunks
 * and checks them together (restore.c: the whole ones four at a time,
 * crypto_chunk_ids): unpack decrypts and decompresses one blob into out
 * without checking its ID; check hashes n decoded chunks (locs[i]->raw_len
 * bytes at data[i]) against their IDs, -EBADMSG naming the first that
 * differs; on any failure *bad is the index of the chunk it names. */
int chunk_reader_unpack(chunk_reader *cr, const chunk_loc *loc, const uint8_t *data, uint8_t *out,
                        vmsh_error **err);
int chunk_reader_check(chunk_reader *cr, size_t n, const chunk_loc *const *locs,
                       const uint8_t *const *data, size_t *bad, vmsh_error **err);
/* chunk_reader_read without the check of the ID (verify.c checks its
 * chunks four at a time with chunk_reader_check). */
int chunk_reader_load(chunk_reader *cr, const chunk_loc *loc, uint8_t *out, vmsh_error **err);

unsigned repo_threads(const vmsh_repo *r);
/* The store name of a path built under r->path (pack_path, index_path,
 * manifest_path keep the full path for messages). */
const char *repo_rel(const vmsh_repo *r, const char *path);
bool name_is_valid(const char *name);

#endif
