/* chunkindex.h - the on-disk chunk index (issue 27): immutable sorted runs
 * chunk ID -> (pack, offset, lengths) under index/runs/, looked up with a
 * tiny in-memory summary and two ranged reads. docs/formats/repository.md,
 * "Chunk index runs", is the specification of every byte here. */
#ifndef VMSH_REPO_CHUNKINDEX_H
#define VMSH_REPO_CHUNKINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/util/error.h>

#define CI_BLOCK           4096u
#define CI_ENTRY_LEN       64u
#define CI_PER_BLOCK       63u
#define CI_BLOCK_HDR       32u
#define CI_TAG_OFF         4064u
#define CI_FENCES_PER_PAGE 512u
#define CI_VERSION         1u
#define CI_DIR             "index/runs"
#define CI_MAX_ENTRIES     (1ull << 40)
/* gc merges the runs into one when there are more than this many */
#define CI_MERGE_RUNS 8u

typedef struct vmsh_repo vmsh_repo;
struct repo_keys;

typedef struct ci_entry {
    uint8_t id[32];
    uint8_t pack[16]; /* the pack's name, binary */
    uint64_t offset;
    uint32_t stored_len;
    uint32_t raw_len;
    uint32_t kind;
} ci_entry;

/* What authenticates a run's blocks: SHA-256 (unencrypted repository), or
 * HMAC-SHA-256 under a key derived from the ID key (encrypted). */
typedef struct ci_key {
    bool keyed;
    uint8_t key[32];
} ci_key;
int ci_key_init(ci_key *k, const struct repo_keys *keys);

/* The tag of file block `fno` (0: the header; data block i: i + 1) of run
 * `name` (32 hex): written at blk + CI_TAG_OFF. */
void ci_block_tag(const ci_key *k, const char *name, uint64_t fno, const uint8_t *blk,
                  uint8_t out[32]);

typedef struct ci_header {
    uint64_t n_entries, n_blocks, n_pages;
    bool keyed;
} ci_header;

/* Pure parsers (fuzzed by fuzz/fuzz_repo_run.c). `name` is the run's
 * 32-hex name (bound into every tag). */
int ci_parse_header(const uint8_t blk[CI_BLOCK], const ci_key *k, const char *name,
                    uint64_t file_size, ci_header *h, vmsh_error **err);
/* Data block `no` (0-based) of a run of h: its entries into out (room for
 * CI_PER_BLOCK), their count in *n. -EBADMSG when damaged. */
int ci_parse_block(const uint8_t blk[CI_BLOCK], const ci_key *k, const char *name,
                   const ci_header *h, uint64_t no, ci_entry *out, uint32_t *n, vmsh_error **err);

/* ---- the set of runs a command consults ---- */
typedef struct ci_run ci_run;
typedef struct ci_set {
    ci_run **runs;
    size_t n;
    ci_key key;
} ci_set;

/* Opens every run under index/runs/ (header and summary only). A damaged
 * run is left out (its entries then count as missing; damage is reported
 * by verify through the packs). */
int ci_set_open(vmsh_repo *r, ci_set **out, vmsh_error **err);
void ci_set_free(ci_set *s);
uint64_t ci_set_entries(const ci_set *s);
/* 1 and *out when found, 0 when absent, < 0 on an I/O error. Thread-safe. */
int ci_set_lookup(const ci_set *s, const uint8_t id[32], ci_entry *out, vmsh_error **err);
/* The same, preferring an entry that `accept` takes (issue 26: a copy in
 * a pack gc did not condemn): 1 such an entry, 2 only entries it refuses
 * (*out the first of them), 0 absent. */
typedef bool (*ci_accept_fn)(void *opaque, const ci_entry *e);
int ci_set_lookup_if(const ci_set *s, const uint8_t id[32], ci_accept_fn accept, void *opaque,
                     ci_entry *out, vmsh_error **err);
/* How many runs exist under index/runs/ (0 when the directory is absent). */
int ci_count_runs(vmsh_repo *r, size_t *n, vmsh_error **err);

/* ---- writing a run: entries in strictly increasing ID order (equal IDs
 * after the first are dropped) ---- */
typedef struct ci_writer ci_writer;
/* `part`: the run is named <name>.part (an intermediate of a build, never
 * read as a run) instead of <name>.run. */
int ci_writer_new(vmsh_repo *r, const ci_key *k, bool part, ci_writer **out, vmsh_error **err);
int ci_writer_add(ci_writer *w, const ci_entry *e, vmsh_error **err);
int ci_writer_commit(ci_writer *w, char name_out[33], vmsh_error **err); /* frees w */
void ci_writer_free(ci_writer *w);                                       /* aborts */

/* Writes one run of `n` entries (sorted here). */
int ci_write_entries(vmsh_repo *r, const ci_key *k, ci_entry *e, size_t n, vmsh_error **err);
/* A run of the chunk map's entries added since `mark` that are in a pack
 * (a backup's new chunks, gc's repacked copies); none: nothing written. */
int ci_write_map_since(vmsh_repo *r, size_t mark, vmsh_error **err);

/* Test hook (tests/unit/test_repo_gc.c): with VMSHADOW_TEST_GC_KILL_AT=N
 * in the environment, the process _exit()s at the N-th step boundary of gc
 * (counted from 1 over the process's life), so that a test can kill gc at
 * every step deterministically. A no-op without the variable. */
void ci_test_kill_point(void);

/* Keeps an entry in a merge (false: drop it, e.g. its pack is deleted). */
typedef bool (*ci_filter_fn)(void *opaque, const ci_entry *e);

/* Merges every run under index/runs/ (and `extra` entries, sorted here)
 * into one new run, written and made durable first, then deletes the runs
 * it read. A crash at any point leaves the old runs, the new one, or both. */
int ci_merge_all(vmsh_repo *r, const ci_key *k, ci_filter_fn keep, void *opaque, vmsh_error **err);

/* The upgrade of a repository without runs: reads every pack table (one at
 * a time) and writes runs covering them, in batches sorted in bounded
 * memory (.part files) merged into one .run, then removes the .part files. */
struct crypto_ctx;
int ci_build_from_packs(vmsh_repo *r, struct crypto_ctx *c, const ci_key *k, ci_filter_fn keep,
                        void *opaque, vmsh_error **err);
/* When there are more than max_runs runs, merges those of at most `small`
 * entries into one (a backup's commit: lookups read every run, and each
 * backup adds one; gc merges them all). */
int ci_merge_small(vmsh_repo *r, const ci_key *k, size_t max_runs, uint64_t small,
                   vmsh_error **err);
/* Removes leftover .part files (a build killed midway). */
void ci_remove_parts(vmsh_repo *r);

#endif
