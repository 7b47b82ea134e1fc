/* Unit tests of what a set's freeze window is made of (issue 27 point 4):
 * vmsh_each_at_once runs every VM's call at once (coord/parallel.h), the
 * window's trace (coord/trace.h, docs/formats/freeze-trace.md) writes whole
 * lines from many threads in the format of its golden copy, and a journal
 * "done" mark written unsynced inside the window reads back as any other. */
#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/coord/journal.h>
#include <vmshadow/coord/parallel.h>
#include <vmshadow/coord/trace.h>

/* ---- vmsh_each_at_once ---- */

typedef struct rendezvous {
    pthread_mutex_t lock;
    pthread_cond_t all_in;
    size_t n, arrived, calls, gave_up;
    size_t seen[16];
} rendezvous;

/* Each call waits until every call has begun: one after the other, the
 * first would wait for the others in vain (and give up after 30 s, which
 * only a serial run reaches; no time is asserted). */
static void meet(void *ctx, size_t i)
{
    rendezvous *z = ctx;
    pthread_mutex_lock(&z->lock);
    z->arrived++;
    z->calls++;
    z->seen[i]++;
    pthread_cond_broadcast(&z->all_in);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    while (z->arrived < z->n)
        if (pthread_cond_timedwait(&z->all_in, &z->lock, &until) == ETIMEDOUT) {
            z->gave_up++;
            break;
        }
    pthread_mutex_unlock(&z->lock);
}

static void every_call_runs_at_once(void **state)
{
    (void)state;
    for (size_t n = 0; n <= 8; n++) {
        rendezvous z = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, .n = n};
        vmsh_each_at_once(n, meet, &z);
        assert_int_equal(z.calls, n);
        assert_int_equal(z.gave_up, 0);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(z.seen[i], 1);
    }
}

/* ---- the trace ---- */

static char trace_path[64];

typedef struct writer_arg {
    int id;
} writer_arg;

static void *trace_writer(void *arg)
{
    char vm[32];
    snprintf(vm, sizeof(vm), "vm %d", ((writer_arg *)arg)->id); /* the blank becomes '?' */
    for (int i = 0; i < 300; i++)
        vmsh_trace_step(vm, i % 2 ? "freeze-returned" : "freeze-sent");
    return NULL;
}

static const char *LINE_RE = "^[0-9]+ [^ \t\r\n]+ [a-z]+(-[a-z]+)*$";

/* Checks every line of `path` against the format; returns their number. */
static size_t check_lines(const char *path)
{
    regex_t re;
    assert_int_equal(regcomp(&re, LINE_RE, REG_EXTENDED | REG_NOSUB), 0);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[600];
    size_t n = 0;
    while (fgets(line, sizeof(line), f)) {
        size_t len = strlen(line);
        assert_true(len > 0 && line[len - 1] == '\n');
        line[len - 1] = '\0';
        if (regexec(&re, line, 0, NULL, 0) != 0)
            fail_msg("not a trace line: '%s' (%s)", line, path);
        n++;
    }
    fclose(f);
    regfree(&re);
    return n;
}

static void trace_lines_stay_whole_across_threads(void **state)
{
    (void)state;
    pthread_t t[8];
    writer_arg a[8];
    for (int i = 0; i < 8; i++) {
        a[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, trace_writer, &a[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    vmsh_trace_step(NULL, "window-start");
    assert_int_equal(check_lines(trace_path), 8 * 300 + 1);
    /* each VM's lines in the order it wrote them, its times never going back */
    FILE *f = fopen(trace_path, "r");
    assert_non_null(f);
    long long last[8] = {0};
    int count[8] = {0};
    long long t_us;
    char vm[64], step[64];
    while (fscanf(f, "%lld %63s %63s", &t_us, vm, step) == 3) {
        int id;
        if (strcmp(vm, "-") == 0) {
            assert_string_equal(step, "window-start");
            continue;
        }
        assert_int_equal(sscanf(vm, "vm?%d", &id), 1);
        assert_true(id >= 0 && id < 8);
        assert_string_equal(step, count[id] % 2 ? "freeze-returned" : "freeze-sent");
        assert_true(t_us >= last[id]);
        last[id] = t_us;
        count[id]++;
    }
    fclose(f);
    for (int i = 0; i < 8; i++)
        assert_int_equal(count[i], 300);
}

static void golden_trace_has_the_documented_format(void **state)
{
    (void)state;
    const char *dir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/documents/freeze-trace-v1.txt", dir);
    assert_true(check_lines(path) > 0);
}

/* ---- a done mark without its own sync ---- */

static void unsynced_done_mark_reads_back(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmsh-fw-XXXXXX";
    assert_non_null(mkdtemp(dir));
    vmsh_journal *j = NULL;
    vmsh_error *e = NULL;
    const char *id = "0a1b2c3d-0000-4000-8000-000000000001";
    assert_int_equal(vmsh_journal_create(&j, dir, id, "backup", &e), 0);
    uint64_t s1 = 0, s2 = 0;
    assert_int_equal(vmsh_journal_begin(j, "owner", "freeze", NULL, &s1, &e), 0);
    assert_int_equal(vmsh_journal_begin(j, "owner", "backup-job", NULL, &s2, &e), 0);
    assert_int_equal(vmsh_journal_mark_done_unsynced(j, s1, &e), 0);
    assert_int_equal(vmsh_journal_entry_at(j, 0)->state, VMSH_JOURNAL_DONE);
    assert_int_equal(vmsh_journal_mark_done_unsynced(j, 99, &e), -ENOENT);
    vmsh_error_free(e);
    e = NULL;
    char path[256];
    snprintf(path, sizeof(path), "%s", vmsh_journal_path(j));
    vmsh_journal_free(j); /* as a killed process: the file stays */
    vmsh_journal *r = NULL;
    assert_int_equal(vmsh_journal_open(&r, path, &e), 0);
    assert_int_equal(vmsh_journal_count(r), 2);
    assert_int_equal(vmsh_journal_entry_at(r, 0)->state, VMSH_JOURNAL_DONE);
    assert_int_equal(vmsh_journal_entry_at(r, 1)->state, VMSH_JOURNAL_BEGUN);
    vmsh_journal_free(r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    /* before the trace's first use: it reads the variable once */
    snprintf(trace_path, sizeof(trace_path), "/tmp/vmsh-trace-%d", (int)getpid());
    unlink(trace_path);
    setenv(VMSH_FREEZE_TRACE_ENV, trace_path, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_call_runs_at_once),
        cmocka_unit_test(trace_lines_stay_whole_across_threads),
        cmocka_unit_test(golden_trace_has_the_documented_format),
        cmocka_unit_test(unsynced_done_mark_reads_back),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(trace_path);
    return r;
}
