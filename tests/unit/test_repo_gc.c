/* test_repo_gc.c - the gc and many-writers protocol (issue 26, points 2, 3
 * and 7; docs/formats/gc.md) with a fake clock, in adversarial orderings:
 * gc twice within the grace, a writer that would deduplicate against a pack
 * gc marked, a live writer older than the mark, a dead session, a writer
 * whose session lapsed, a pinned backup that vanished, marks whose time was
 * never fixed (a gc killed between its two writes), gc killed at random
 * points, clock skew, one collector at a time, hostile marks. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "repo/internal.h"
#include "repo/store_obj.h"
#include "test_repo_helpers.h"
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/reader.h>
#include <vmshadow/repo/repo.h>

#define GRACE   10000
#define MARGIN  1000
#define SESSION 60000

static int64_t fake_now;

static int64_t fake_clock(void *opaque)
{
    (void)opaque;
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

static void advance(int64_t ms)
{
    __atomic_add_fetch(&fake_now, ms, __ATOMIC_SEQ_CST);
}

typedef struct fx {
    char *dir, *repo;
    uint8_t x[4 * 65536], y[4 * 65536];
} fx;

static vmsh_repo *open_fake(const char *repo)
{
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    r->clock = fake_clock;
    r->no_skew_check = true;
    r->gc_grace_ms = GRACE;
    r->gc_margin_ms = MARGIN;
    r->session_ms = SESSION;
    return r;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    f->repo = path2(f->dir, "repo");
    assert_int_equal(vmsh_repo_init(f->repo, NULL, NULL), 0);
    uint64_t s = 7;
    fill_random(f->x, sizeof(f->x), &s);
    fill_random(f->y, sizeof(f->y), &s);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fake_now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    rm_rf(f->dir);
    free(f->dir);
    free(f->repo);
    free(f);
    return 0;
}

static char *backup_buf(vmsh_repo *r, const char *name, const void *buf, size_t len,
                        uint64_t *new_chunks)
{
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b, name, buf, len, &err), 0);
    vmsh_add_stats st;
    vmsh_backup_stats(b, &st);
    if (new_chunks)
        *new_chunks = st.new_chunks;
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    char *id = strdup(vmsh_backup_id(b));
    vmsh_backup_free(b);
    return id;
}

static void forget(vmsh_repo *r, const char *id)
{
    char p[64];
    snprintf(p, sizeof(p), "backups/%s", id);
    assert_int_equal(r->store->ops->del(r->store, p, NULL), 0);
}

static vmsh_gc_stats gc(vmsh_repo *r)
{
    vmsh_gc_stats st = {0};
    vmsh_error *err = NULL;
    int rc = vmsh_repo_gc(r, &st, &err);
    if (rc < 0)
        fail_msg("gc: %s", err ? err->message : "?");
    return st;
}

static size_t count_packs(const char *repo)
{
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "find '%s/packs' -name '*.pack' | wc -l", repo) > 0);
    FILE *p = popen(cmd, "r");
    free(cmd);
    size_t n = 0;
    assert_int_equal(fscanf(p, "%zu", &n), 1);
    pclose(p);
    return n;
}

static void verify_clean(vmsh_repo *r, size_t backups)
{
    vmsh_verify_report *rep = NULL;
    vmsh_error *err = NULL;
    if (vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err) < 0)
        fail_msg("verify: %s; first damage: %s %s: %s", err ? err->message : "?",
                 rep && rep->n_damage ? rep->damage[0].backup : "-",
                 rep && rep->n_damage && rep->damage[0].file ? rep->damage[0].file : "-",
                 rep && rep->n_damage ? rep->damage[0].what : "-");
    assert_int_equal(rep->n_damage, 0);
    vmsh_verify_report_free(rep);
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_list(r, &a, &n, NULL), 0);
    assert_int_equal(n, backups);
    vmsh_backup_info_array_free(a, n);
}

static void read_back(vmsh_repo *r, const char *id, const char *name, const void *want, size_t len)
{
    char *got = NULL;
    size_t n = 0;
    vmsh_error *err = NULL;
    if (vmsh_repo_read_file(r, id, name, len, &got, &n, &err) < 0)
        fail_msg("read %s/%s: %s", id, name, err ? err->message : "?");
    assert_int_equal(n, len);
    assert_memory_equal(got, want, len);
    free(got);
}

/* Mark, then delete only after the grace, in a later run: on the code
 * before issue 26 the first gc deleted the pack at once. */
static void gc_twice_within_grace_deletes_nothing(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *keep = backup_buf(r, "y", f->y, sizeof(f->y), NULL);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    forget(r, gone);
    assert_int_equal(count_packs(f->repo), 2);
    advance(2 * MARGIN);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_deleted, 0);
    assert_int_equal(st.packs_marked, 1);
    advance(GRACE / 2);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0);
    assert_int_equal(st.packs_marked, 1);
    assert_int_equal(count_packs(f->repo), 2);
    advance(GRACE);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    assert_int_equal(st.packs_marked, 0);
    assert_int_equal(count_packs(f->repo), 1);
    verify_clean(r, 1);
    read_back(r, keep, "y", f->y, sizeof(f->y));
    free(keep);
    free(gone);
    vmsh_repo_free(r);
}

/* A writer that would reuse a chunk of a marked pack stores it again: the
 * marked pack then goes, and the writer's backup stays whole. */
static void writer_rewrites_chunks_of_marked_pack(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    forget(r, gone);
    advance(2 * MARGIN);
    assert_int_equal(gc(r).packs_marked, 1);
    advance(MARGIN + 1);
    vmsh_repo *w = open_fake(f->repo);
    uint64_t fresh = 0;
    char *id = backup_buf(w, "x", f->x, sizeof(f->x), &fresh);
    assert_int_equal(fresh, 4); /* before issue 26: 0, deduplicated */
    vmsh_repo_free(w);
    advance(GRACE + 1);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    verify_clean(r, 1);
    read_back(r, id, "x", f->x, sizeof(f->x));
    free(id);
    free(gone);
    vmsh_repo_free(r);
}

/* A writer live since before the mark (it may have looked the pack up
 * before gc marked it) holds the deletion back, however long the grace
 * has passed; the writer's backup, committed later, needs the pack. */
static void live_writer_older_than_mark_holds_deletion(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    advance(3 * MARGIN);
    vmsh_repo *w = open_fake(f->repo);
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, w, &err), 0);
    /* deduplicates now: the pack is referenced, nothing is marked */
    assert_int_equal(vmsh_backup_add_buffer(b, "x", f->x, sizeof(f->x), &err), 0);
    vmsh_add_stats as;
    vmsh_backup_stats(b, &as);
    assert_int_equal(as.new_chunks, 0);
    forget(r, gone); /* pruned while the writer runs */
    advance(MARGIN);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_marked, 1);
    assert_int_equal(st.sessions_live, 1);
    advance(GRACE + 1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0); /* the writer started before the mark */
    assert_int_equal(count_packs(f->repo), 1);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    char *id = strdup(vmsh_backup_id(b));
    vmsh_backup_free(b);
    vmsh_repo_free(w);
    advance(GRACE + 1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0); /* referenced again: the mark is dropped */
    assert_int_equal(st.packs_marked, 0);
    verify_clean(r, 1);
    read_back(r, id, "x", f->x, sizeof(f->x));
    free(id);
    free(gone);
    vmsh_repo_free(r);
}

/* A writer killed (SIGKILL) leaves its session and its packs: once the
 * heartbeat is old, gc counts it dead, deletes its session, and its packs
 * go like any garbage. */
static void dead_session_is_collected(void **state)
{
    fx *f = *state;
    pid_t pid = fork();
    if (pid == 0) {
        vmsh_repo *w = open_fake(f->repo);
        vmsh_backup *b = NULL;
        if (vmsh_backup_begin(&b, w, NULL) < 0 ||
            vmsh_backup_add_buffer(b, "x", f->x, sizeof(f->x), NULL) < 0)
            _exit(1);
        backup_flush_for_tests(b);
        raise(SIGKILL);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
    vmsh_repo *r = open_fake(f->repo);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.sessions_live, 1); /* its heartbeat is fresh */
    assert_int_equal(st.packs_marked, 0);
    advance(SESSION + 3 * MARGIN);
    st = gc(r);
    assert_int_equal(st.sessions_dead, 1);
    assert_int_equal(st.sessions_live, 0);
    assert_int_equal(st.packs_marked, 1);
    advance(GRACE + 1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    assert_int_equal(count_packs(f->repo), 0);
    verify_clean(r, 0);
    vmsh_repo_free(r);
}

/* A writer whose heartbeat went unwritten longer than the session (paused,
 * cut from the store) may have been counted dead: it must not commit. */
static void lapsed_writer_cannot_commit(void **state)
{
    fx *f = *state;
    vmsh_repo *w = open_fake(f->repo);
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, w, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b, "x", f->x, sizeof(f->x), &err), 0);
    advance(SESSION + 1);
    assert_int_equal(vmsh_backup_commit(b, "", &err), -ETIMEDOUT);
    assert_non_null(strstr(err->message, "session lapsed"));
    vmsh_error_free(err);
    vmsh_backup_free(b);
    verify_clean(w, 0);
    vmsh_repo_free(w);
}

/* A live writer that builds on a backup (an incremental's base) pins it;
 * when that backup is pruned, gc cannot know what the writer relies on and
 * deletes nothing until the writer ends. */
static void pinned_vanished_backup_holds_deletion(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *base = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    advance(2 * MARGIN);
    vmsh_repo *w = open_fake(f->repo);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, w, NULL), 0);
    assert_int_equal(backup_pin_for_tests(b, base), 0);
    forget(r, base);
    advance(2 * MARGIN);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_marked, 1);
    advance(GRACE + 1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0);
    assert_true(st.deletion_held >= 1);
    vmsh_backup_free(b); /* aborted */
    vmsh_repo_free(w);
    advance(1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    free(base);
    vmsh_repo_free(r);
}

/* A gc killed between its two writes of the marks leaves marks without a
 * time (-1): never deleted on them; the next gc fixes their time. */
static void unfixed_marks_are_restamped(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    forget(r, gone);
    char(*names)[33] = NULL;
    size_t n = 0;
    assert_int_equal(repo_pack_names(r, &names, &n, NULL), 0);
    assert_int_equal(n, 1);
    gc_marks m = {0};
    uint8_t bin[16];
    assert_int_equal(vmsh_unhex(names[0], bin, 16), 0);
    assert_int_equal(gc_marks_add(&m, bin, -1), 0);
    assert_int_equal(gc_marks_store(r, &m, NULL), 0);
    gc_marks_clear(&m);
    free(names);
    advance(10 * GRACE);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_deleted, 0);
    assert_int_equal(st.packs_marked, 1);
    assert_int_equal(gc_marks_load(r, &m, NULL), 0);
    assert_int_equal(m.n, 1);
    assert_true(m.v[0].t_ms >= fake_now);
    gc_marks_clear(&m);
    advance(GRACE + 1);
    assert_int_equal(gc(r).packs_deleted, 1);
    free(gone);
    vmsh_repo_free(r);
}

/* gc killed at random moments, writers and prunes between: every backup
 * left is whole, and a final gc after the grace leaves only what they need. */
static void gc_killed_at_random_points(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *ids[8] = {0};
    uint64_t seed = 99;
    for (int round = 0; round < 8; round++) {
        uint8_t *buf = malloc(sizeof(f->x));
        fill_random(buf, sizeof(f->x), &seed);
        memcpy(buf, f->x, 65536); /* one shared chunk */
        ids[round] = backup_buf(r, "d", buf, sizeof(f->x), NULL);
        free(buf);
        if (round >= 2) {
            forget(r, ids[round - 2]);
            free(ids[round - 2]);
            ids[round - 2] = NULL;
        }
        advance(GRACE / 3);
        pid_t pid = fork();
        if (pid == 0) {
            vmsh_repo *g = open_fake(f->repo);
            vmsh_repo_gc(g, NULL, NULL);
            _exit(0);
        }
        usleep((useconds_t)(seed % 30000));
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        verify_clean(r, round >= 1 ? 2 : 1);
    }
    for (int i = 0; i < 3; i++) {
        advance(GRACE + MARGIN);
        gc(r);
    }
    verify_clean(r, 2);
    /* the two backups' packs, and the one that holds their shared chunk
     * (repacked when its pack was sparse: gc.md, "Repacking") */
    assert_true(count_packs(f->repo) <= 3);
    for (int i = 0; i < 8; i++)
        free(ids[i]);
    vmsh_repo_free(r);
}

/* One gc forked and _exit()ed at its kill-th step boundary
 * (VMSHADOW_TEST_GC_KILL_AT, chunkindex.h): true when it died there, false
 * when it finished before. */
static bool gc_killed_at(const char *repo, int kill)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", kill);
        setenv("VMSHADOW_TEST_GC_KILL_AT", v, 1);
        vmsh_repo *g = open_fake(repo);
        vmsh_repo_gc(g, NULL, NULL);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status) == 77;
}

/* The rounds of gc_killed_at_random_points with gc killed at the step
 * boundaries kills[0..n) (-1: run to its end), verify after each on the
 * writers' handle (it outlives every gc, as in that test) and on a fresh
 * one. Returns the first round that found damage, or -1; *killed counts
 * the gcs that died at their step (not those that ended before it). */
static int kill_rounds(const char *repo, const int *kills, int n, int *killed, char **why)
{
    vmsh_repo *r = open_fake(repo);
    char *ids[16] = {0};
    uint64_t seed = 99;
    int bad = -1;
    uint8_t shared[65536];
    uint64_t s0 = 7;
    fill_random(shared, sizeof(shared), &s0);
    assert_true(n <= 16);
    for (int round = 0; round < n && bad < 0; round++) {
        uint8_t *buf = malloc(4 * 65536);
        fill_random(buf, 4 * 65536, &seed);
        memcpy(buf, shared, 65536); /* one shared chunk */
        ids[round] = backup_buf(r, "d", buf, 4 * 65536, NULL);
        free(buf);
        if (round >= 2) {
            forget(r, ids[round - 2]);
            free(ids[round - 2]);
            ids[round - 2] = NULL;
        }
        advance(GRACE / 3);
        if (kills[round] > 0) {
            *killed += gc_killed_at(repo, kills[round]);
        } else { /* another process's gc, to its end */
            vmsh_repo *g = open_fake(repo);
            gc(g);
            vmsh_repo_free(g);
        }
        for (int fresh = 0; fresh < 2 && bad < 0; fresh++) {
            vmsh_verify_report *rep = NULL;
            vmsh_error *err = NULL;
            vmsh_repo *v = fresh ? open_fake(repo) : r;
            if (vmsh_repo_verify(v, NULL, 0, NULL, NULL, &rep, &err) < 0 || rep->n_damage) {
                bad = round;
                if (asprintf(why, "round %d, %s handle: %s; %s", round,
                             fresh ? "a fresh" : "the writers'", err ? err->message : "damage",
                             rep && rep->n_damage ? rep->damage[0].what : "-") < 0)
                    *why = NULL;
            }
            vmsh_error_free(err);
            vmsh_verify_report_free(rep);
            if (v != r)
                vmsh_repo_free(v);
        }
    }
    for (int i = 0; i < n; i++)
        free(ids[i]);
    vmsh_repo_free(r);
    return bad;
}

/* gc_killed_at_random_points made deterministic: gc _exit()s at its k-th
 * step boundary (VMSHADOW_TEST_GC_KILL_AT: after the sessions, the marks'
 * read, the mark phase, the repack's packs and run, each run merged and
 * each old run unlinked, before each pack deletion, after each marks
 * write, in the sweep), for every k until a gc no longer reaches it. Two
 * killed gcs for one that ends, so that killed gcs follow each other, a
 * complete one fixes the marks' times and later ones delete; a verify
 * after each round. On the code before the fix (issue 26) k = 1 failed
 * in round 8: the writers' handle still named the shared chunk's pack,
 * repacked and then deleted by a gc of another process ("cannot open
 * pack"); with the verify on fresh handles only, every k passed there
 * too (the merges and the marks hold at every step). */
static void gc_killed_at_every_step(void **state)
{
    fx *f = *state;
    int k;
    for (k = 1; k <= 80; k++) {
        int kills[9], killed = 0;
        for (int i = 0; i < 9; i++)
            kills[i] = i % 3 == 2 ? -1 : k;
        char *repo = NULL, *why = NULL;
        assert_true(asprintf(&repo, "%s/k%d", f->dir, k) > 0);
        assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
        int bad = kill_rounds(repo, kills, 9, &killed, &why);
        if (bad >= 0)
            fail_msg("gc killed at step %d: %s", k, why ? why : "?");
        free(repo);
        if (killed == 0)
            break; /* no gc reaches step k any more: every boundary was tried */
    }
    print_message("gc killed at each of its steps 1..%d\n", k - 1);
    assert_true(k > 10 && k <= 80); /* the hook works, and gc ends */
}

/* A handle that outlives a gc (a process that backs up several times, or
 * verifies after its backup, as `vmshadow serve` or a job runner does): the
 * chunk locations it cached before the gc may name packs that gc deleted
 * meanwhile (the shared chunk's old pack, repacked and deleted a grace
 * later, in gc_killed_at_random_points). Before the fix the next backup on
 * that handle deduplicated against them (a manifest naming chunks that no
 * pack holds: data loss) and its verify read them ("cannot open pack"). */
static void handle_outliving_gc_sees_deletions(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    forget(r, gone);
    free(gone);
    vmsh_repo *g = open_fake(f->repo);
    advance(2 * MARGIN);
    assert_int_equal(gc(g).packs_marked, 1);
    advance(GRACE + 3 * MARGIN);
    assert_int_equal(gc(g).packs_deleted, 1);
    vmsh_repo_free(g);
    /* the same content again on the old handle: every chunk stored again */
    uint64_t fresh = 0;
    char *again = backup_buf(r, "x", f->x, sizeof(f->x), &fresh);
    assert_int_equal(fresh, sizeof(f->x) / 65536);
    verify_clean(r, 1);
    vmsh_repo *v = open_fake(f->repo);
    verify_clean(v, 1);
    read_back(v, again, "x", f->x, sizeof(f->x));
    vmsh_repo_free(v);
    free(again);
    vmsh_repo_free(r);
}

/* Point 7: a writer whose clock is off the store's by more than the margin
 * is refused with a clear message, and leaves nothing. */
static void clock_skew_is_refused(void **state)
{
    fx *f = *state;
    vmsh_repo *w = open_fake(f->repo);
    w->no_skew_check = false;
    advance(MARGIN * 5);
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, w, &err), -ERANGE);
    assert_non_null(strstr(err->message, "clock skew"));
    vmsh_error_free(err);
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "test -z \"$(ls -A '%s/locks/sessions' 2>/dev/null)\"", f->repo) >
                0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    advance(-MARGIN * 5);
    assert_int_equal(vmsh_backup_begin(&b, w, &err), 0);
    vmsh_backup_free(b);
    vmsh_repo_free(w);
}

/* The index-object race of the sweep (docs/formats/gc.md, "Index
 * objects"): gc lists an unreferenced index object, old enough to go; a
 * writer that starts after gc's last look at the sessions writes the same
 * index again (named by its content), checks it exists and commits; then
 * gc deletes it. Before the fix the manifest named a deleted index (verify
 * found damage); now the check and the manifest's put hold locks/write
 * shared, the sweep exclusively: the writer waits, finds its index gone
 * and fails cleanly (nothing visible), and its next try commits. */
typedef struct racer {
    fx *f;
    pthread_t t;
    bool started, done;
    int rc;
    vmsh_error *err;
} racer;

static void *racer_main(void *arg)
{
    racer *w = arg;
    vmsh_repo *r = open_fake(w->f->repo);
    vmsh_backup *b = NULL;
    w->rc = vmsh_backup_begin(&b, r, &w->err);
    if (w->rc == 0)
        w->rc = vmsh_backup_add_buffer(b, "x", w->f->x, sizeof(w->f->x), &w->err);
    if (w->rc == 0)
        w->rc = vmsh_backup_commit(b, "", &w->err);
    vmsh_backup_free(b);
    vmsh_repo_free(r);
    __atomic_store_n(&w->done, true, __ATOMIC_SEQ_CST);
    return NULL;
}

static void sweep_hook(void *opaque, const char *path)
{
    racer *w = opaque;
    (void)path;
    if (w->started)
        return;
    w->started = true;
    assert_int_equal(pthread_create(&w->t, NULL, racer_main, w), 0);
    /* the writer's whole backup fits here unless something holds it */
    for (int i = 0; i < 300 && !__atomic_load_n(&w->done, __ATOMIC_SEQ_CST); i++)
        usleep(10000);
}

static void sweep_never_deletes_an_index_a_commit_names(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    forget(r, gone);
    advance(2 * MARGIN); /* its index object is old garbage now */
    racer w = {.f = f};
    r->gc_sweep_hook = sweep_hook;
    r->gc_sweep_hook_opaque = &w;
    vmsh_gc_stats st = gc(r);
    r->gc_sweep_hook = NULL;
    assert_true(w.started);
    pthread_join(w.t, NULL);
    assert_int_equal(st.indexes_deleted, 1);
    if (w.rc == 0) {
        verify_clean(r, 1); /* before the fix: damage, a missing index */
    } else {
        assert_int_equal(w.rc, -EAGAIN);
        assert_non_null(strstr(w.err->message, "vanished"));
        vmsh_error_free(w.err);
        verify_clean(r, 0);
        advance(1);
        char *id = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
        verify_clean(r, 1);
        read_back(r, id, "x", f->x, sizeof(f->x));
        free(id);
    }
    free(gone);
    vmsh_repo_free(r);
}

/* Repacking (docs/formats/gc.md, "Repacking"): a pack with one live chunk
 * of four is rewritten: its live chunk copied into a new pack (with a run)
 * and the old pack marked, then deleted a grace later. Before, it stayed
 * forever (packs_rewritten was always 0). */
static void sparse_pack_is_repacked_then_deleted(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    uint64_t fresh = 9;
    char *keep = backup_buf(r, "x0", f->x, 65536, &fresh); /* one chunk of x's pack */
    assert_int_equal(fresh, 0);
    forget(r, gone);
    assert_int_equal(count_packs(f->repo), 1);
    advance(2 * MARGIN);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_rewritten, 1);
    assert_int_equal(st.packs_deleted, 0);
    assert_int_equal(count_packs(f->repo), 2); /* the copy beside the old pack */
    verify_clean(r, 1);
    read_back(r, keep, "x0", f->x, 65536);
    advance(GRACE / 2);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0); /* within the grace */
    assert_int_equal(st.packs_rewritten, 0);
    advance(GRACE);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    assert_int_equal(st.packs_rewritten, 0);
    assert_int_equal(count_packs(f->repo), 1);
    verify_clean(r, 1);
    read_back(r, keep, "x0", f->x, 65536);
    free(keep);
    free(gone);
    vmsh_repo_free(r);
}

/* How a handle that read a backup goes on reading it (issue 26): by
 * read_file, by a restore into a file descriptor, by a reader (serve). */
enum { READ_FILE, READ_RESTORE_FD, READ_READER };

static void read_by(vmsh_repo *r, int how, const char *dir, const char *id, const char *name,
                    const void *want, size_t len)
{
    vmsh_error *err = NULL;
    if (how == READ_FILE) {
        read_back(r, id, name, want, len);
        return;
    }
    uint8_t *got = calloc(1, len);
    assert_non_null(got);
    if (how == READ_RESTORE_FD) {
        char *p = path2(dir, "restored");
        int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        if (vmsh_repo_restore_fd(r, id, name, fd, NULL, NULL, NULL, &err) < 0)
            fail_msg("restore %s/%s: %s", id, name, err ? err->message : "?");
        assert_int_equal(pread(fd, got, len, 0), (ssize_t)len);
        close(fd);
        free(p);
    } else {
        vmsh_reader *rd = NULL;
        if (vmsh_reader_open(&rd, r, id, name, NULL, &err) < 0)
            fail_msg("reader %s/%s: %s", id, name, err ? err->message : "?");
        if (vmsh_reader_pread(rd, got, len, 0, &err) != (ssize_t)len)
            fail_msg("reader pread %s/%s: %s", id, name, err ? err->message : "?");
        vmsh_reader_free(rd);
    }
    assert_memory_equal(got, want, len);
    free(got);
}

/* A reading handle (a VM restore between two disks, serve, a host that
 * restores twice) read a backup; then another host's gc repacked the one
 * chunk it keeps out of a sparse pack and, a grace later, deleted that
 * pack. The handle's next read of the same backup, still listed, used the
 * runs it had opened and the pack it had checked: "cannot open pack ...
 * No such file or directory" (fails so on the code before repo_read_begin). */
static void reader_handle_outliving_gc(fx *f, int how)
{
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    char *keep = backup_buf(r, "x0", f->x, 65536, NULL);
    vmsh_repo *rd = open_fake(f->repo);
    read_by(rd, how, f->dir, keep, "x0", f->x, 65536);
    forget(r, gone);
    advance(2 * MARGIN);
    vmsh_gc_stats st = gc(r);
    assert_int_equal(st.packs_rewritten, 1);
    advance(GRACE);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 1);
    read_by(rd, how, f->dir, keep, "x0", f->x, 65536);
    /* and a reader open across the gc keeps it from deleting: gc refuses
     * (busy) while the reader holds locks/read */
    vmsh_reader *open_rd = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_reader_open(&open_rd, rd, keep, "x0", NULL, &err), 0);
    assert_int_equal(vmsh_repo_gc(r, &st, &err), -EBUSY);
    vmsh_error_free(err);
    vmsh_reader_free(open_rd);
    verify_clean(r, 1);
    free(keep);
    free(gone);
    vmsh_repo_free(rd);
    vmsh_repo_free(r);
}

static void read_file_after_gc_of_another_handle(void **state)
{
    reader_handle_outliving_gc(*state, READ_FILE);
}

static void restore_after_gc_of_another_handle(void **state)
{
    reader_handle_outliving_gc(*state, READ_RESTORE_FD);
}

static void reader_after_gc_of_another_handle(void **state)
{
    reader_handle_outliving_gc(*state, READ_READER);
}

/* A small pack is mostly its header and table: its one live chunk is
 * always "below half" of it. It must not be copied into another such pack
 * at every gc (t-repo-crash found the churn: packs_rewritten 1, a new
 * pack beside the old, at each run). */
static void small_pack_is_not_repacked(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *keep = backup_buf(r, "kept", "kept", 4, NULL);
    assert_int_equal(count_packs(f->repo), 1);
    for (int i = 0; i < 3; i++) {
        advance(2 * MARGIN + GRACE);
        vmsh_gc_stats st = gc(r);
        assert_int_equal(st.packs_rewritten, 0);
        assert_int_equal(st.packs_marked, 0);
        assert_int_equal(count_packs(f->repo), 1);
    }
    verify_clean(r, 1);
    read_back(r, keep, "kept", "kept", 4);
    free(keep);
    vmsh_repo_free(r);
}

/* The adversarial orderings of repacking: writer A begins before gc
 * repacks (it has looked the old pack up: it deduplicates chunks that
 * were garbage, not copied) and commits after the mark; writer B begins
 * after the mark and reuses a live (copied) chunk and a garbage one. The
 * old pack must outlive A's need of it (A's session holds the deletion,
 * then A's manifest references it), B never builds on it, and every
 * backup reads back with verify clean at each step. */
static void repack_beside_writers_loses_nothing(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    char *gone = backup_buf(r, "x", f->x, sizeof(f->x), NULL);
    char *keep = backup_buf(r, "x0", f->x, 65536, NULL);
    forget(r, gone);
    advance(2 * MARGIN);
    /* A: begun before the repack, deduplicates x's chunks 1-2 against the
     * old pack (garbage when gc looks) */
    vmsh_repo *wa = open_fake(f->repo);
    vmsh_backup *a = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&a, wa, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(a, "x12", f->x + 65536, 2 * 65536, &err), 0);
    vmsh_add_stats ast;
    vmsh_backup_stats(a, &ast);
    assert_int_equal(ast.new_chunks, 0);
    advance(MARGIN);
    vmsh_gc_stats st = gc(r);
    /* the pack is older than A's start minus the margin: repacked */
    assert_int_equal(st.packs_rewritten, 1);
    /* B: begun after the mark, reuses chunk 0 (copied) and 3 (garbage) */
    advance(2 * MARGIN + 1);
    vmsh_repo *wb = open_fake(f->repo);
    uint64_t bfresh = 0;
    uint8_t bbuf[2 * 65536];
    memcpy(bbuf, f->x, 65536);
    memcpy(bbuf + 65536, f->x + 3 * 65536, 65536);
    char *bid = backup_buf(wb, "x03", bbuf, sizeof(bbuf), &bfresh);
    assert_int_equal(bfresh, 1); /* chunk 3 stored again, chunk 0 from the copy */
    vmsh_repo_free(wb);
    /* the grace passes while A runs: A's session holds the deletion */
    advance(GRACE + 1);
    st = gc(r);
    assert_int_equal(st.packs_deleted, 0);
    assert_true(st.sessions_live >= 1);
    assert_int_equal(vmsh_backup_commit(a, "", &err), 0);
    char *aid = strdup(vmsh_backup_id(a));
    vmsh_backup_free(a);
    vmsh_repo_free(wa);
    verify_clean(r, 3);
    /* A's manifest now needs the old pack (its chunks 1-2 live only there):
     * gc keeps it, however old its mark */
    advance(GRACE + 1);
    st = gc(r);
    verify_clean(r, 3);
    read_back(r, aid, "x12", f->x + 65536, 2 * 65536);
    read_back(r, bid, "x03", bbuf, sizeof(bbuf));
    read_back(r, keep, "x0", f->x, 65536);
    /* once A is forgotten, the pack goes (repacked or unreferenced) */
    forget(r, aid);
    for (int i = 0; i < 3; i++) {
        advance(GRACE + 1);
        gc(r);
    }
    verify_clean(r, 2);
    read_back(r, bid, "x03", bbuf, sizeof(bbuf));
    read_back(r, keep, "x0", f->x, 65536);
    free(aid);
    free(bid);
    free(keep);
    free(gone);
    vmsh_repo_free(r);
}

/* Point 3: the OSD's clock from cls_lock's get_info reply (store_rados.c),
 * read as hostile input: the right locker's expiration, and -1 for every
 * truncation and for lengths that point past the end. */
static size_t put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 4;
}

static size_t locker(uint8_t *p, const char *cookie, uint32_t sec, uint32_t nsec)
{
    size_t n = 0, cl = strlen(cookie);
    p[n++] = 1; /* locker_id_t */
    p[n++] = 1;
    n += put32(p + n, (uint32_t)(9 + 4 + cl));
    p[n++] = 8; /* entity_name_t: type, num */
    memset(p + n, 0, 8);
    n += 8;
    n += put32(p + n, (uint32_t)cl);
    memcpy(p + n, cookie, cl);
    n += cl;
    p[n++] = 1; /* locker_info_t: expiration, then addr and description */
    p[n++] = 1;
    n += put32(p + n, 8 + 6);
    n += put32(p + n, sec);
    n += put32(p + n, nsec);
    memcpy(p + n, "addrdd", 6);
    return n + 6;
}

static void rados_clock_reply_is_parsed_as_hostile(void **state)
{
    (void)state;
    uint8_t buf[512];
    size_t n = 6;
    buf[0] = 1;
    buf[1] = 1;
    n += put32(buf + n, 2);
    n += locker(buf + n, "other", 100, 0);
    n += locker(buf + n, "clock.me", 1796548893, 589400000);
    buf[n++] = 2; /* lock type, tag */
    n += put32(buf + n, 0);
    put32(buf + 2, (uint32_t)(n - 6));
    assert_int_equal(rados_clock_parse(buf, n, "clock.me"), 1796548893589LL);
    assert_int_equal(rados_clock_parse(buf, n, "other"), 100000LL);
    assert_int_equal(rados_clock_parse(buf, n, "nobody"), -1);
    for (size_t cut = 0; cut < n; cut++) /* every truncation */
        assert_int_equal(rados_clock_parse(buf, cut, "clock.me"), -1);
    uint8_t bad[512];
    memcpy(bad, buf, n);
    put32(bad + 2, 0xffffffffu); /* a length past the end */
    assert_int_equal(rados_clock_parse(bad, n, "clock.me"), -1);
    memcpy(bad, buf, n);
    put32(bad + 6, 0x7fffffffu); /* more lockers than bytes: no long loop */
    assert_int_equal(rados_clock_parse(bad, n, "nobody"), -1);
}

/* One collector at a time; gc beside a backup runs (no exit 4). */
static void one_gc_at_a_time_beside_backups(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo), *g = open_fake(f->repo);
    vmsh_backup *b = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_gc_stats st = {0};
    assert_int_equal(vmsh_repo_gc(g, &st, &err), 0); /* before issue 26: -EBUSY */
    vmsh_lock *l = NULL;
    assert_int_equal(repo_lock(r, "gc", true, &l, &err), 0);
    assert_int_equal(vmsh_repo_gc(g, &st, &err), -EBUSY);
    assert_non_null(strstr(err->message, "another gc"));
    vmsh_error_free(err);
    vmsh_lock_free(l);
    vmsh_backup_free(b);
    vmsh_repo_free(g);
    vmsh_repo_free(r);
}

/* Hostile marks: refused by gc and by writers, with what to do. */
static void damaged_marks_are_refused(void **state)
{
    fx *f = *state;
    vmsh_repo *r = open_fake(f->repo);
    static const char *const bad[] = {
        "not json",
        "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":[[\"zz\",1]]}",
        "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":[[\"" /* 31 hex */
        "0123456789abcdef0123456789abcde\",1]]}",
        "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":[[\"0123456789abcdef0123456789"
        "abcdef\",-2]]}",
        "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":{}}",
        "{\"format\":\"vmshadow-gc-marks\",\"version\":1,\"marks\":[]} trailing",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        assert_int_equal(r->store->ops->put(r->store, GC_MARKS_NAME, bad[i], strlen(bad[i]), NULL),
                         0);
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_repo_gc(r, NULL, &err), -EBADMSG);
        assert_non_null(strstr(err->message, "locks/gc-marks"));
        vmsh_error_free(err);
        err = NULL;
        vmsh_backup *b = NULL;
        assert_int_equal(vmsh_backup_begin(&b, r, &err), -EBADMSG);
        vmsh_error_free(err);
    }
    const char *v2 = "{\"format\":\"vmshadow-gc-marks\",\"version\":2,\"marks\":[]}";
    assert_int_equal(r->store->ops->put(r->store, GC_MARKS_NAME, v2, strlen(v2), NULL), 0);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_gc(r, NULL, &err), -EPROTONOSUPPORT);
    vmsh_error_free(err);
    vmsh_repo_free(r);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = calloc(1, 1 << 16);
    *len = fread(buf, 1, (1 << 16) - 1, fp);
    fclose(fp);
    return buf;
}

/* The version 1 objects as docs/formats/gc.md describes them
 * (tests/golden/gc-v1/): every later vmshadow reads them. */
static void golden_objects_read_back(void **state)
{
    fx *f = *state;
    const char *g = getenv("VMSH_GOLDEN_DIR");
    char *dir = path2(g ? g : "tests/golden", "gc-v1");
    char *mp = path2(dir, "marks"), *sp = path2(dir, "session");
    size_t len = 0;
    char *text = slurp(mp, &len);
    gc_marks m = {0};
    assert_int_equal(gc_marks_parse(text, len, &m, NULL), 0);
    assert_int_equal(m.n, 2);
    char hex[33];
    vmsh_hex(m.v[0].pack, 16, hex);
    assert_string_equal(hex, "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    assert_int_equal(m.v[0].t_ms, 1796536800000);
    vmsh_hex(m.v[1].pack, 16, hex);
    assert_string_equal(hex, "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
    assert_int_equal(m.v[1].t_ms, -1);
    gc_marks_clear(&m);
    free(text);
    /* the session, as gc reads it from a repository */
    vmsh_repo *r = open_fake(f->repo);
    text = slurp(sp, &len);
    assert_int_equal(
        r->store->ops->put(r->store, "locks/sessions/00112233aabbccdd", text, len, NULL), 0);
    free(text);
    repo_gc_params_t p;
    repo_gc_params(r, &p);
    gc_sessions v;
    assert_int_equal(gc_sessions_scan(r, 1796536790000 + 1000, &p, &v, NULL), 0);
    assert_int_equal(v.n_live, 1);
    assert_int_equal(v.oldest_start_ms, 1796536700000);
    assert_int_equal(v.n_pins, 1);
    assert_string_equal(v.pins[0], "0123456789abcdef");
    gc_sessions_clear(&v);
    /* and dead once its heartbeat is older than the session and 2 margins */
    assert_int_equal(gc_sessions_scan(r, 1796536790000 + SESSION + 2 * MARGIN + 1, &p, &v, NULL),
                     0);
    assert_int_equal(v.n_live, 0);
    assert_int_equal(v.n_dead, 1);
    gc_sessions_clear(&v);
    vmsh_repo_free(r);
    free(mp);
    free(sp);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(gc_twice_within_grace_deletes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(writer_rewrites_chunks_of_marked_pack, setup, teardown),
        cmocka_unit_test_setup_teardown(live_writer_older_than_mark_holds_deletion, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(dead_session_is_collected, setup, teardown),
        cmocka_unit_test_setup_teardown(lapsed_writer_cannot_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(pinned_vanished_backup_holds_deletion, setup, teardown),
        cmocka_unit_test_setup_teardown(unfixed_marks_are_restamped, setup, teardown),
        cmocka_unit_test_setup_teardown(gc_killed_at_random_points, setup, teardown),
        cmocka_unit_test_setup_teardown(gc_killed_at_every_step, setup, teardown),
        cmocka_unit_test_setup_teardown(handle_outliving_gc_sees_deletions, setup, teardown),
        cmocka_unit_test_setup_teardown(clock_skew_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(one_gc_at_a_time_beside_backups, setup, teardown),
        cmocka_unit_test_setup_teardown(damaged_marks_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(golden_objects_read_back, setup, teardown),
        cmocka_unit_test_setup_teardown(sweep_never_deletes_an_index_a_commit_names, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(sparse_pack_is_repacked_then_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(small_pack_is_not_repacked, setup, teardown),
        cmocka_unit_test_setup_teardown(read_file_after_gc_of_another_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(restore_after_gc_of_another_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(reader_after_gc_of_another_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(repack_beside_writers_loses_nothing, setup, teardown),
        cmocka_unit_test(rados_clock_reply_is_parsed_as_hostile),
    };
    /* VMSH_TEST_FILTER=gc_killed_at_random_points: one test, e.g. run 100
     * times in a row under load (docs/formats/gc.md) */
    if (getenv("VMSH_TEST_FILTER"))
        cmocka_set_test_filter(getenv("VMSH_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
