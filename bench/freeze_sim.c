/* freeze_sim.c - the freeze window of a set of N simulated VMs, no guests
 * (issue 27 point 4: "sets of many VMs with one short freeze window").
 *
 * The lab runs at most two guests, so sets of 4 and 8 VMs are simulated:
 * the real coordinator (vmsh_coord_backup: its events, its journal on disk,
 * its deadlines) runs a simulated VM writer of N VMs and a simulated pull
 * provider, which do what vm_writer.c and pull.c do around the window, with
 * each VM's guest and libvirt work replaced by a sleep of the time measured
 * for one lab guest (bench/freeze-bench.sh's steps: freeze 72 ms, job start
 * 26 ms, thaw 34 ms by default):
 *   PrepareForSnapshot: journal every VM's freeze and job (synced), then
 *     the window: freeze every VM, mark the freezes done;
 *   provider commit: start every VM's job, mark the jobs done;
 *   PostSnapshot: thaw every VM; the window ends with the last thaw.
 * "at-once" runs each step for all VMs at once through vmsh_each_at_once
 * (the helper vm_writer.c and pull.c use) with the window's marks unsynced
 * (vmsh_set_journal_mark_done_unsynced), as vmshadow does since issue 27;
 * "one-by-one" runs them VM after VM with synced marks, as it did before.
 * A sleep takes no CPU: the simulation shows the orchestration's own cost,
 * not the contention of N guests for the host's cores (bench/README.md).
 *
 * Usage: vmshadow-freeze-sim [ROUNDS [FREEZE_MS BEGIN_MS THAW_MS]]
 * (default 7 rounds, 72 26 34); state (journals) in a temporary directory
 * under $TMPDIR or /var/tmp, removed at the end. Prints per N (1 2 4 8) and
 * mode the median window with its range, and the median of the window less
 * one VM's freeze + job start + thaw: the coordinator's own share.
 */
#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/parallel.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#define MAX_VMS     8
#define WRITER_ID   "5e1f0a55-0000-4000-8000-00000000f5e1"
#define PROVIDER_ID "5e1f0a55-0000-4000-8000-00000000f5e2"

typedef struct sim {
    vmsh_writer_ops w;
    vmsh_provider_ops p;
    vmsh_requestor_ops q;
    size_t n;
    bool at_once;
    int freeze_ms, begin_ms, thaw_ms;
    uint64_t seq_freeze[MAX_VMS], seq_job[MAX_VMS];
    int64_t start, end;
    vmsh_set *set;
} sim;

#define SIM_W(self) ((sim *)((char *)(self)-offsetof(sim, w)))
#define SIM_P(self) ((sim *)((char *)(self)-offsetof(sim, p)))
#define SIM_Q(self) ((sim *)((char *)(self)-offsetof(sim, q)))

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* One step for every VM: at once, or one after the other. */
static void each(sim *s, void (*fn)(void *ctx, size_t i))
{
    if (s->at_once) {
        vmsh_each_at_once(s->n, fn, s);
        return;
    }
    for (size_t i = 0; i < s->n; i++)
        fn(s, i);
}

static void mark_done(sim *s, uint64_t seq)
{
    if (s->at_once)
        vmsh_set_journal_mark_done_unsynced(s->set, seq, NULL);
    else
        vmsh_set_journal_mark(s->set, seq, VMSH_JOURNAL_DONE, NULL);
}

static void freeze_one(void *ctx, size_t i)
{
    (void)i;
    sleep_ms(((sim *)ctx)->freeze_ms);
}

static void begin_one(void *ctx, size_t i)
{
    (void)i;
    sleep_ms(((sim *)ctx)->begin_ms);
}

static void thaw_one(void *ctx, size_t i)
{
    (void)i;
    sleep_ms(((sim *)ctx)->thaw_ms);
}

static int w_identify(vmsh_writer_ops *self, vmsh_set *set, vmsh_metadata *md, vmsh_error **err)
{
    sim *s = SIM_W(self);
    for (size_t i = 0; i < s->n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "sim-vm-%zu", i);
        vmsh_component *c = NULL;
        vmsh_file *f = NULL;
        int r = vmsh_metadata_add_component(md, name, &c, err);
        if (r == 0)
            r = vmsh_component_add_file(c, "disk/vda", "disk", &f, err);
        if (r < 0)
            return r;
        vmsh_component_set_method(c, "guest", "simulated");
        vmsh_file_set_path(f, "/sim/disk.qcow2");
    }
    return 0;
}

static int w_prepare_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    sim *s = SIM_W(self);
    s->set = set;
    /* journalled before the window, as vm_writer.c and pull.c do */
    for (size_t i = 0; i < s->n; i++) {
        int r = vmsh_set_journal_begin(set, WRITER_ID, "freeze", NULL, &s->seq_freeze[i], err);
        if (r == 0)
            r = vmsh_set_journal_begin(set, PROVIDER_ID, "backup-job", NULL, &s->seq_job[i], err);
        if (r < 0)
            return r;
    }
    s->start = vmsh_now_ms();
    each(s, freeze_one);
    for (size_t i = 0; i < s->n; i++)
        mark_done(s, s->seq_freeze[i]);
    return 0;
}

static int w_post_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    sim *s = SIM_W(self);
    each(s, thaw_one);
    s->end = vmsh_now_ms();
    vmsh_metadata *md = vmsh_set_metadata(set, self);
    for (size_t i = 0; i < s->n; i++) {
        vmsh_component *c = vmsh_metadata_component(md, i);
        vmsh_file_set_source_file(vmsh_component_find_file(c, "disk/vda"), "/sim/disk.qcow2",
                                  "qcow2");
    }
    return 0;
}

static void close_all(sim *s, vmsh_set *set)
{
    for (size_t i = 0; i < s->n; i++) {
        vmsh_set_journal_mark(set, s->seq_freeze[i], VMSH_JOURNAL_UNDONE, NULL);
        vmsh_set_journal_mark(set, s->seq_job[i], VMSH_JOURNAL_UNDONE, NULL);
    }
}

static int w_backup_complete(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    close_all(SIM_W(self), set);
    return 0;
}

static int w_abort(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    close_all(SIM_W(self), set);
    return 0;
}

static int w_undo(vmsh_writer_ops *self, const vmsh_journal_entry *e, vmsh_error **err)
{
    return 0;
}

static int p_commit(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err)
{
    sim *s = SIM_P(self);
    each(s, begin_one);
    for (size_t i = 0; i < s->n; i++)
        mark_done(s, s->seq_job[i]);
    return 0;
}

static int p_nothing(vmsh_provider_ops *self, vmsh_set *set, vmsh_error **err)
{
    return 0;
}

static int q_copy(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                  const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    struct json_object *st = json_object_new_object();
    json_object_object_add(st, "ref", json_object_new_string("sim"));
    vmsh_file_set_stored(f, st, 0, 0);
    json_object_put(st);
    return 0;
}

static int q_commit(vmsh_requestor_ops *self, vmsh_set *set, const char *doc, char **out_id,
                    vmsh_error **err)
{
    *out_id = strdup("sim");
    return *out_id ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
}

static void q_abort(vmsh_requestor_ops *self, vmsh_set *set) {}

static void sim_init(sim *s, size_t n, bool at_once, int f, int b, int t)
{
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->at_once = at_once;
    s->freeze_ms = f;
    s->begin_ms = b;
    s->thaw_ms = t;
    s->w = (vmsh_writer_ops){
        .version = VMSH_WRITER_OPS_VERSION,
        .name = "simulated VM writer",
        .id = WRITER_ID,
        .kind = "test",
        .identify = w_identify,
        .prepare_snapshot = w_prepare_snapshot,
        .post_snapshot = w_post_snapshot,
        .backup_complete = w_backup_complete,
        .abort = w_abort,
        .undo = w_undo,
    };
    s->p = (vmsh_provider_ops){
        .version = VMSH_PROVIDER_OPS_VERSION,
        .name = "simulated pull provider",
        .id = PROVIDER_ID,
        .prepare = p_nothing,
        .commit = p_commit,
        .release = p_nothing,
        .abort = p_nothing,
    };
    s->q = (vmsh_requestor_ops){
        .version = VMSH_REQUESTOR_OPS_VERSION,
        .copy_file = q_copy,
        .commit = q_commit,
        .abort = q_abort,
    };
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t median(int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp64);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    int f = argc > 4 ? atoi(argv[2]) : 72, b = argc > 4 ? atoi(argv[3]) : 26,
        t = argc > 4 ? atoi(argv[4]) : 34;
    if (rounds < 1 || rounds > 1000 || f < 0 || b < 0 || t < 0) {
        fprintf(stderr, "usage: vmshadow-freeze-sim [ROUNDS [FREEZE_MS BEGIN_MS THAW_MS]]\n");
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/vmshadow-freeze-sim-XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
    if (!mkdtemp(dir)) {
        perror("vmshadow-freeze-sim: mkdtemp");
        return 1;
    }
    static const size_t ns[] = {1, 2, 4, 8};
    enum { NN = sizeof(ns) / sizeof(ns[0]) };
    int64_t *win = calloc((size_t)rounds * NN * 2, sizeof(*win));
    if (!win)
        return 1;
    vmsh_coord_config cfg = {.state_dir = dir};
    int rc = 0;
    /* rounds interleave every N and mode, so that a load on the machine
     * falls on all alike */
    for (int r = 0; r < rounds && rc == 0; r++)
        for (size_t k = 0; k < NN && rc == 0; k++)
            for (int m = 0; m < 2 && rc == 0; m++) {
                bool at_once = (m + r) % 2 == 0;
                sim s;
                sim_init(&s, ns[k], at_once, f, b, t);
                vmsh_writer_ops *ws[] = {&s.w};
                vmsh_provider_ops *ps[] = {&s.p};
                vmsh_set_options o = {.all = true, .method = "guest"};
                vmsh_set *set = NULL;
                vmsh_error *e = NULL;
                rc = vmsh_coord_backup(&cfg, ws, 1, ps, 1, &s.q, &o, &set, &e);
                if (rc < 0)
                    fprintf(stderr, "vmshadow-freeze-sim: the set failed: %s\n",
                            e && e->message ? e->message : strerror(-rc));
                vmsh_error_free(e);
                vmsh_set_free(set);
                win[((size_t)r * NN + k) * 2 + (at_once ? 0 : 1)] = s.end - s.start;
            }
    if (rc == 0) {
        printf("freeze-sim: %d rounds, per VM freeze %d ms + job start %d ms + thaw %d ms "
               "(sleeps), the real coordinator and journal in %s\n",
               rounds, f, b, t, dir);
        printf("%-11s %4s %10s %12s %22s\n", "mode", "VMs", "window", "min-max",
               "coordinator's share");
        for (int m = 0; m < 2; m++)
            for (size_t k = 0; k < NN; k++) {
                int64_t v[1000];
                for (int r = 0; r < rounds; r++)
                    v[r] = win[((size_t)r * NN + k) * 2 + (size_t)m];
                int64_t med = median(v, rounds);
                char span[48];
                snprintf(span, sizeof(span), "%lld-%lld", (long long)v[0],
                         (long long)v[rounds - 1]);
                printf("%-11s %4zu %7lld ms %12s %19lld ms\n", m == 0 ? "at-once" : "one-by-one",
                       ns[k], (long long)med, span, (long long)(med - f - b - t));
            }
    }
    free(win);
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "vmshadow-freeze-sim: could not remove %s\n", dir);
    return rc == 0 ? 0 : 1;
}
