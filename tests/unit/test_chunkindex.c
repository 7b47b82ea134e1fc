/* test_chunkindex.c - the on-disk chunk index (issue 27;
 * docs/formats/repository.md, "Chunk index runs"): lookups (hits, misses,
 * fences that point at the wrong block), damaged blocks, runs written by
 * two writers at once, merging, the upgrade of the golden repositories of
 * format versions 1 and 2, and backups that find their chunks through the
 * runs alone. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "repo/chunkindex.h"
#include "repo/internal.h"
#include "test_repo_helpers.h"

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>

static char *new_repo(char **dir)
{
    *dir = make_tmpdir();
    assert_non_null(*dir);
    char *repo = path2(*dir, "repo");
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_init(repo, NULL, &err), 0);
    return repo;
}

static vmsh_repo *open_repo(const char *path)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, path, NULL, &err), 0);
    return r;
}

static void make_entries(ci_entry *e, size_t n, uint64_t seed, uint8_t pack_byte)
{
    for (size_t i = 0; i < n; i++) {
        memset(&e[i], 0, sizeof(e[i]));
        fill_random(e[i].id, 32, &seed);
        memset(e[i].pack, pack_byte, 16);
        e[i].offset = 16 + i * 100;
        e[i].stored_len = 1 + (uint32_t)(i % 60000);
        e[i].raw_len = 1 + (uint32_t)(i % 65536);
        e[i].kind = (uint32_t)(i & 1);
    }
}

static int cmp_id(const void *x, const void *y)
{
    return memcmp(((const ci_entry *)x)->id, ((const ci_entry *)y)->id, 32);
}

static bool same(const ci_entry *a, const ci_entry *b)
{
    return memcmp(a->id, b->id, 32) == 0 && memcmp(a->pack, b->pack, 16) == 0 &&
           a->offset == b->offset && a->stored_len == b->stored_len && a->raw_len == b->raw_len &&
           a->kind == b->kind;
}

static void check_all(const ci_set *s, const ci_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ci_entry got;
        vmsh_error *err = NULL;
        assert_int_equal(ci_set_lookup(s, e[i].id, &got, &err), 1);
        assert_true(same(&got, &e[i]));
    }
}

static void lookups(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    vmsh_repo *r = open_repo(repo);
    ci_key k;
    ci_key_init(&k, &r->keys);
    /* enough entries for several fence pages (512 blocks of 63 each) */
    size_t n = 70000;
    ci_entry *e = calloc(n, sizeof(*e));
    ci_entry *copy = calloc(n, sizeof(*copy));
    make_entries(e, n, 7, 0xab);
    memcpy(copy, e, n * sizeof(*e));
    vmsh_error *err = NULL;
    assert_int_equal(ci_write_entries(r, &k, copy, n, &err), 0);
    ci_set *s = NULL;
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    assert_int_equal(s->n, 1);
    assert_int_equal(ci_set_entries(s), n);
    check_all(s, e, n);
    /* misses: random IDs, and IDs next to present ones (same block) */
    ci_entry miss[2000];
    make_entries(miss, 2000, 99, 0);
    for (size_t i = 0; i < 2000; i++) {
        ci_entry got;
        if (i % 2)
            memcpy(miss[i].id, e[i].id, 32), miss[i].id[31] ^= 1;
        assert_int_equal(ci_set_lookup(s, miss[i].id, &got, &err), 0);
    }
    /* the smallest and largest possible IDs */
    uint8_t lo[32] = {0}, hi[32];
    memset(hi, 0xff, 32);
    ci_entry got;
    assert_int_equal(ci_set_lookup(s, lo, &got, &err), 0);
    assert_int_equal(ci_set_lookup(s, hi, &got, &err), 0);
    ci_set_free(s);
    free(e);
    free(copy);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(dir);
    free(repo);
}

/* Fences hold only the first 8 bytes of an ID: blocks whose IDs share them
 * (a guest can craft such chunks in 2^32 tries) have equal fences and a
 * lookup lands on the last of them, a false positive of the summary that
 * must still find the ID in an earlier block, and miss cleanly. */
static void fence_false_positives(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    vmsh_repo *r = open_repo(repo);
    ci_key k;
    ci_key_init(&k, &r->keys);
    size_t n = 5000, same_prefix = 700; /* > 11 blocks of one prefix */
    ci_entry *e = calloc(n, sizeof(*e));
    make_entries(e, n, 11, 0x11);
    for (size_t i = 0; i < same_prefix; i++)
        memcpy(e[i].id, "\x42\x42\x42\x42\x42\x42\x42\x42", 8);
    ci_entry *copy = calloc(n, sizeof(*copy));
    memcpy(copy, e, n * sizeof(*e));
    vmsh_error *err = NULL;
    assert_int_equal(ci_write_entries(r, &k, copy, n, &err), 0);
    ci_set *s = NULL;
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    check_all(s, e, n);
    uint64_t seed = 5;
    for (int i = 0; i < 500; i++) {
        uint8_t id[32];
        fill_random(id, 32, &seed);
        memcpy(id, "\x42\x42\x42\x42\x42\x42\x42\x42", 8);
        ci_entry got;
        assert_int_equal(ci_set_lookup(s, id, &got, &err), 0);
    }
    ci_set_free(s);
    free(e);
    free(copy);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(dir);
    free(repo);
}

static char *only_run(const char *repo, const char *ext)
{
    char *d = path2(repo, "index/runs");
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ls %s/*%s", d, ext);
    FILE *p = popen(cmd, "r");
    char line[512] = "";
    assert_non_null(fgets(line, sizeof(line), p));
    pclose(p);
    line[strcspn(line, "\n")] = 0;
    free(d);
    return strdup(line);
}

/* A damaged block is a miss for the IDs it held, never a wrong answer;
 * the other blocks still answer. */
static void damaged_block(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    vmsh_repo *r = open_repo(repo);
    ci_key k;
    ci_key_init(&k, &r->keys);
    size_t n = 630; /* 10 blocks */
    ci_entry *e = calloc(n, sizeof(*e)), *copy = calloc(n, sizeof(*e));
    make_entries(e, n, 3, 0x22);
    memcpy(copy, e, n * sizeof(*e));
    vmsh_error *err = NULL;
    assert_int_equal(ci_write_entries(r, &k, copy, n, &err), 0);
    qsort(e, n, sizeof(*e), cmp_id);
    char *run = only_run(repo, ".run");
    FILE *f = fopen(run, "r+");
    fseek(f, 4096 * 4 + 100, SEEK_SET); /* data block 3: entries 189..251 */
    fputc(0x5a, f);
    fclose(f);
    ci_set *s = NULL;
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    for (size_t i = 0; i < n; i++) {
        ci_entry got;
        int rc = ci_set_lookup(s, e[i].id, &got, &err);
        assert_int_equal(rc, i / 63 == 3 ? 0 : 1);
    }
    ci_set_free(s);
    /* a damaged header: the run is left out, nothing found, no error */
    f = fopen(run, "r+");
    fputc('X', f);
    fclose(f);
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    assert_int_equal(s->n, 0);
    ci_set_free(s);
    free(run);
    free(e);
    free(copy);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(dir);
    free(repo);
}

typedef struct writer_arg {
    const char *repo;
    ci_entry *e;
    size_t n;
    int rc;
} writer_arg;

static void *writer_thread(void *p)
{
    writer_arg *a = p;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    a->rc = vmsh_repo_open(&r, a->repo, NULL, &err);
    ci_key k;
    ci_key_init(&k, r ? &r->keys : NULL);
    /* several runs each, interleaved with the other writer */
    for (size_t off = 0; a->rc == 0 && off < a->n; off += 1000) {
        size_t m = a->n - off < 1000 ? a->n - off : 1000;
        ci_entry *c = calloc(m, sizeof(*c));
        memcpy(c, a->e + off, m * sizeof(*c));
        a->rc = ci_write_entries(r, &k, c, m, &err);
        free(c);
    }
    vmsh_error_free(err);
    vmsh_repo_free(r);
    return NULL;
}

/* Two writers (threads with their own handles, then two processes) add
 * runs at the same time: each writes files of its own, nothing shared is
 * rewritten, and a reader sees every entry of both. Then the runs are
 * merged into one, without the entries of a pack about to be deleted. */
static void two_writers_and_merge(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    size_t n = 6000;
    ci_entry *a = calloc(n, sizeof(*a)), *b = calloc(n, sizeof(*b));
    make_entries(a, n, 21, 0xaa);
    make_entries(b, n, 22, 0xbb);
    writer_arg wa = {repo, a, n, -1}, wb = {repo, b, n, -1};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, writer_thread, &wa);
    pthread_create(&tb, NULL, writer_thread, &wb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(wa.rc, 0);
    assert_int_equal(wb.rc, 0);
    /* two processes */
    ci_entry *c = calloc(n, sizeof(*c)), *d = calloc(n, sizeof(*d));
    make_entries(c, n, 23, 0xcc);
    make_entries(d, n, 24, 0xdd);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        if ((pids[i] = fork()) == 0) {
            writer_arg w = {repo, i ? d : c, n, -1};
            writer_thread(&w);
            _exit(w.rc == 0 ? 0 : 1);
        }
    }
    for (int i = 0; i < 2; i++) {
        int st = 0;
        waitpid(pids[i], &st, 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    vmsh_repo *r = open_repo(repo);
    ci_set *s = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    assert_int_equal(s->n, 24);
    check_all(s, a, n);
    check_all(s, b, n);
    check_all(s, c, n);
    check_all(s, d, n);
    ci_set_free(s);
    /* merge, dropping pack 0xbb.. */
    ci_key k;
    ci_key_init(&k, &r->keys);
    uint8_t dead[16];
    memset(dead, 0xbb, 16);
    struct {
        uint8_t (*v)[16];
        size_t n;
    } ds = {&dead, 1};
    extern bool ci_test_keep(void *, const ci_entry *);
    assert_int_equal(ci_merge_all(r, &k, ci_test_keep, &ds, &err), 0);
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    assert_int_equal(s->n, 1);
    check_all(s, a, n);
    check_all(s, c, n);
    check_all(s, d, n);
    for (size_t i = 0; i < n; i++) {
        ci_entry got;
        assert_int_equal(ci_set_lookup(s, b[i].id, &got, &err), 0);
    }
    ci_set_free(s);
    vmsh_repo_free(r);
    free(a);
    free(b);
    free(c);
    free(d);
    rm_rf(dir);
    free(dir);
    free(repo);
}

bool ci_test_keep(void *opaque, const ci_entry *e);
bool ci_test_keep(void *opaque, const ci_entry *e)
{
    struct {
        uint8_t (*v)[16];
        size_t n;
    } *d = opaque;
    for (size_t i = 0; i < d->n; i++)
        if (memcmp(d->v[i], e->pack, 16) == 0)
            return false;
    return true;
}

static size_t count_runs_key(const char *repo, const char *key)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, key, &err), 0);
    size_t n = 0;
    assert_int_equal(ci_count_runs(r, &n, &err), 0);
    vmsh_repo_free(r);
    return n;
}

static size_t count_runs(const char *repo)
{
    return count_runs_key(repo, NULL);
}

static void verify_ok(const char *repo, const char *key, bool no_fallback)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, key, &err), 0);
    r->no_fallback = no_fallback;
    vmsh_verify_report *rep = NULL;
    int rc = vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err);
    if (rc < 0)
        fprintf(stderr, "verify: %s\n", err ? err->message : "?");
    assert_int_equal(rc, 0);
    assert_true(rep->chunks_checked > 0);
    if (no_fallback)
        assert_false(r->legacy); /* every chunk found through the runs */
    vmsh_verify_report_free(rep);
    vmsh_repo_free(r);
}

/* The golden repositories of format versions 1 and 2 (no runs): a reader
 * reads them as before and writes nothing; the first writer builds runs
 * from the pack tables, after which every chunk of the old backups is found
 * through the runs alone (the fallback to the pack tables switched off),
 * and a new backup of the same content stores nothing new. */
static void upgrade_golden(void **state)
{
    (void)state;
    static const char *const names[] = {"repo-v1", "repo-v2", "repo-v2-encrypted"};
    const char *g = getenv("VMSH_GOLDEN_DIR");
    for (size_t i = 0; i < 3; i++) {
        char *dir = make_tmpdir();
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "cp -a %s/%s %s/repo", g ? g : "tests/golden", names[i], dir);
        assert_int_equal(system(cmd), 0);
        char *repo = path2(dir, "repo");
        char *key = NULL;
        if (strstr(names[i], "encrypted")) {
            key = path2(dir, "key");
            snprintf(cmd, sizeof(cmd), "cp %s/%s.key %s", g ? g : "tests/golden", names[i], key);
            assert_int_equal(system(cmd), 0);
        }
        verify_ok(repo, key, false);
        assert_int_equal(count_runs_key(repo, key), 0);
        /* the writer: an empty backup upgrades */
        vmsh_repo *r = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_repo_open(&r, repo, key, &err), 0);
        vmsh_backup *b = NULL;
        assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
        int rc = vmsh_backup_add_buffer(b, "x", "upgrade", 7, &err);
        if (rc < 0)
            fprintf(stderr, "%s\n", err->message);
        assert_int_equal(rc, 0);
        assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
        vmsh_backup_free(b);
        vmsh_repo_free(r);
        assert_true(count_runs_key(repo, key) >= 1);
        verify_ok(repo, key, true);
        free(key);
        free(repo);
        rm_rf(dir);
        free(dir);
    }
}

/* Backups in index mode: the second backup of the same data finds every
 * chunk through the first one's run (a fresh handle: nothing in memory),
 * and gc of a repository with more than CI_MERGE_RUNS runs merges them. */
static void backups_through_runs(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    size_t len = 40 * 65536;
    uint8_t *data = malloc(len);
    uint64_t seed = 77;
    fill_random(data, len, &seed);
    for (int round = 0; round < 10; round++) {
        vmsh_repo *r = open_repo(repo);
        r->no_fallback = true;
        vmsh_backup *b = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
        /* each round changes one chunk */
        data[round * 65536] ^= 0xff;
        assert_int_equal(vmsh_backup_add_buffer(b, "d", data, len > (16u << 20) ? 0 : len, &err),
                         0);
        vmsh_add_stats st;
        vmsh_backup_stats(b, &st);
        assert_int_equal(st.new_chunks, round == 0 ? 40 : 1);
        assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
        vmsh_backup_free(b);
        vmsh_repo_free(r);
    }
    assert_int_equal(count_runs(repo), 10);
    verify_ok(repo, NULL, true);
    vmsh_repo *r = open_repo(repo);
    vmsh_error *err = NULL;
    vmsh_gc_stats gs;
    assert_int_equal(vmsh_repo_gc(r, &gs, &err), 0);
    vmsh_repo_free(r);
    assert_int_equal(count_runs(repo), 1);
    verify_ok(repo, NULL, true);
    /* between gcs, commits keep the runs at most 16 (+ the big one) by
     * merging the small ones */
    for (int round = 0; round < 20; round++) {
        vmsh_repo *w = open_repo(repo);
        vmsh_backup *b = NULL;
        assert_int_equal(vmsh_backup_begin(&b, w, &err), 0);
        data[round * 4096] ^= 0x5a;
        assert_int_equal(vmsh_backup_add_buffer(b, "d", data, len, &err), 0);
        assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
        vmsh_backup_free(b);
        vmsh_repo_free(w);
        assert_true(count_runs(repo) <= 2 * CI_MERGE_RUNS);
    }
    verify_ok(repo, NULL, true);
    free(data);
    rm_rf(dir);
    free(dir);
    free(repo);
}

/* tests/golden/run-v1: a run written by fuzz/gen_repo_run.py, a second
 * implementation from docs/formats/repository.md: every entry it lists is
 * found with the same fields (three of its blocks share one fence). */
static void golden_run(void **state)
{
    (void)state;
    char *dir = NULL;
    char *repo = new_repo(&dir);
    const char *g = getenv("VMSH_GOLDEN_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "mkdir -p %s/index/runs && cp %s/run-v1/0123456789abcdef0123456789abcdef.run "
             "%s/index/runs/",
             repo, g ? g : "tests/golden", repo);
    assert_int_equal(system(cmd), 0);
    vmsh_repo *r = open_repo(repo);
    ci_set *s = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(ci_set_open(r, &s, &err), 0);
    assert_int_equal(s->n, 1);
    assert_int_equal(ci_set_entries(s), 700);
    char *list = NULL;
    if (asprintf(&list, "%s/run-v1/entries.txt", g ? g : "tests/golden") < 0)
        abort();
    FILE *f = fopen(list, "r");
    assert_non_null(f);
    char idh[65], packh[33];
    unsigned long long off;
    unsigned stored, raw, kind;
    size_t n = 0;
    while (fscanf(f, "%64s %32s %llu %u %u %u", idh, packh, &off, &stored, &raw, &kind) == 6) {
        ci_entry want = {.offset = off, .stored_len = stored, .raw_len = raw, .kind = kind}, got;
        assert_int_equal(vmsh_unhex(idh, want.id, 32), 0);
        assert_int_equal(vmsh_unhex(packh, want.pack, 16), 0);
        assert_int_equal(ci_set_lookup(s, want.id, &got, &err), 1);
        assert_true(same(&got, &want));
        n++;
    }
    assert_int_equal(n, 700);
    fclose(f);
    free(list);
    ci_set_free(s);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(dir);
    free(repo);
}

int main(void)
{
    /* gc deletes in one run (a second pass at once): docs/formats/gc.md */
    setenv("VMSHADOW_STORE_GC_GRACE_SECONDS", "0", 1);
    setenv("VMSHADOW_STORE_GC_MARGIN_SECONDS", "0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lookups),
        cmocka_unit_test(golden_run),
        cmocka_unit_test(fence_false_positives),
        cmocka_unit_test(damaged_block),
        cmocka_unit_test(two_writers_and_merge),
        cmocka_unit_test(upgrade_golden),
        cmocka_unit_test(backups_through_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
