/* cmd_backup.c - `vmshadow backup`, `vmshadow writers`, `vmshadow recover`,
 * and the recovery every command runs first (CLI.md; SPEC R5, R7, R17).
 *
 * The CLI is the requestor: it builds the writers and providers, asks the
 * coordinator for a snapshot set, copies each file the writers describe from
 * its source into the repository, and commits the backup document last. */
#include "cli.h"

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/coord/json.h>
#include <vmshadow/providers/pull.h>
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/script_writer.h>
#include <vmshadow/writers/vm_writer.h>

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- recovery (R7) ---- */

static const char *item_owner(const vmsh_recover_item *it)
{
    return it->owner_name ? it->owner_name : it->owner ? it->owner : "?";
}

/* Replays unfinished journals; reports per `report` (the `recover` command)
 * or, before other commands, only when something was found. */
static int run_recover(vmsh_cli *cli, bool report, vmsh_recover_report **out, vmsh_error **err)
{
    vmsh_cli_host_writers h;
    vmsh_coord_config cfg;
    int r = vmsh_cli_coord_config(cli, &cfg, err);
    if (r < 0)
        return r;
    if ((r = vmsh_cli_build_writers(cli, false, &h, err)) < 0)
        return r;
    for (size_t i = 0; i < h.n_broken; i++)
        vmsh_cli_warn(cli, "script writer %s does not load: %s", h.broken[i].path,
                      h.broken[i].message);
    r = vmsh_coord_recover(&cfg, h.w, h.n, h.p, h.np, out, err);
    vmsh_cli_host_writers_clear(&h);
    if (!*out)
        return r;
    for (size_t i = 0; i < (*out)->n_items; i++) {
        const vmsh_recover_item *it = &(*out)->items[i];
        if (it->undone) {
            if (report || cli->verbosity >= 0)
                vmsh_cli_info(cli, "recover: undid %s of %s left by interrupted set %s", it->action,
                              item_owner(it), it->set_id);
        } else {
            vmsh_cli_warn(cli,
                          "recover: could not undo %s of %s (set %s): %s; the journal keeps it: "
                          "fix the cause and run 'vmshadow recover' again (every command "
                          "retries it first)",
                          it->action ? it->action : "a journal", item_owner(it),
                          it->set_id ? it->set_id : "?", it->error ? it->error : "?");
        }
    }
    return r;
}

int vmsh_cli_recover_first(vmsh_cli *cli)
{
    vmsh_recover_report *rep = NULL;
    vmsh_error *err = NULL;
    int r = run_recover(cli, false, &rep, &err);
    /* A user without access to the state directory (e.g. `vms` as non-root)
     * has nothing to recover there; anything else is worth a warning. */
    if (r < 0 && r != -EACCES && r != -EPERM && err && r != -EAGAIN)
        vmsh_cli_warn(cli, "could not check for interrupted runs: %s", err->message);
    vmsh_error_free(err);
    vmsh_recover_report_free(rep);
    return 0;
}

int vmsh_cmd_recover(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "recover",
        "Usage: vmshadow recover\n\nUndoes what an interrupted run left behind "
        "(frozen guests, paused or saved VMs,\noverlays, backup jobs, scratch files, "
        "script writers' prepare-snapshot), from\nthe journals in the state "
        "directory (R7). Every other command does this first.\n");
    if (done >= 0)
        return done;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "recover", "takes no arguments");
    vmsh_recover_report *rep = NULL;
    vmsh_error *err = NULL;
    int r = run_recover(cli, true, &rep, &err);
    if (!rep)
        return vmsh_cli_fail(cli, &err);
    size_t undone = 0, left = 0;
    for (size_t i = 0; i < rep->n_items; i++)
        rep->items[i].undone ? undone++ : left++;
    if (cli->json) {
        json_object *o = json_object_new_object(), *a = json_object_new_array();
        for (size_t i = 0; i < rep->n_items; i++) {
            const vmsh_recover_item *it = &rep->items[i];
            json_object *x = json_object_new_object();
            json_object_object_add(x, "set_id",
                                   it->set_id ? json_object_new_string(it->set_id) : NULL);
            json_object_object_add(x, "owner",
                                   it->owner ? json_object_new_string(it->owner) : NULL);
            json_object_object_add(x, "owner_name",
                                   it->owner_name ? json_object_new_string(it->owner_name) : NULL);
            json_object_object_add(x, "action",
                                   it->action ? json_object_new_string(it->action) : NULL);
            json_object_object_add(
                x, "was", json_object_new_string(it->was == VMSH_JOURNAL_DONE ? "done" : "begun"));
            json_object_object_add(x, "undone", json_object_new_boolean(it->undone));
            json_object_object_add(x, "error",
                                   it->error ? json_object_new_string(it->error) : NULL);
            json_object_array_add(a, x);
        }
        json_object_object_add(o, "actions", a);
        json_object_object_add(o, "undone", json_object_new_int64((int64_t)undone));
        json_object_object_add(o, "left", json_object_new_int64((int64_t)left));
        json_object_object_add(o, "runs_recovered",
                               json_object_new_int64((int64_t)rep->journals_removed));
        json_object_object_add(o, "runs_in_progress",
                               json_object_new_int64((int64_t)rep->journals_busy));
        vmsh_cli_print_json(o);
    } else if (rep->n_items == 0 && rep->journals_busy == 0) {
        vmsh_cli_info(cli, "nothing to recover");
    } else {
        printf("undid %zu action(s) of %zu interrupted run(s)", undone, rep->journals_removed);
        if (rep->journals_busy)
            printf("; %zu run(s) still in progress left alone", rep->journals_busy);
        if (left)
            printf("; %zu action(s) could not be undone", left);
        printf("\n");
    }
    vmsh_recover_report_free(rep);
    if (r < 0) {
        vmsh_error_free(err);
        return VMSH_EXIT_FAILED;
    }
    return VMSH_EXIT_OK;
}

/* ---- the requestor: copies into the repository ---- */

/* A base index an incremental read will need, loaded ahead (see
 * fetch_start). */
typedef struct base_fetch {
    char *name, *base_id;
    vmsh_file_index *idx;
    vmsh_error *err;
} base_fetch;

typedef struct cli_requestor {
    vmsh_requestor_ops ops; /* first */
    vmsh_cli *cli;
    vmsh_repo *repo;
    vmsh_backup *backup;
    base_fetch *fetch;
    size_t n_fetch;
    pthread_t fetch_thread;
    bool fetch_started, fetch_running;
} cli_requestor;

/* A progress line on stderr, only when it is a terminal (CLI.md). */
typedef struct copy_progress {
    vmsh_cli *cli;
    const char *name;
    int64_t last_ms;
    bool shown;
} copy_progress;

static void show_progress(void *opaque, uint64_t done, uint64_t total)
{
    copy_progress *p = opaque;
    int64_t now = vmsh_now_ms();
    if (done < total && now - p->last_ms < 200)
        return;
    p->last_ms = now;
    p->shown = true;
    fprintf(stderr, "\r%s: %3u%% of %.1f MiB", p->name,
            total ? (unsigned)(done * 100 / total) : 100u, (double)total / (1024.0 * 1024.0));
    fflush(stderr);
}

static json_object *disk_plan(const vmsh_metadata *md, const vmsh_component *c, const vmsh_file *f);

static void *fetch_main(void *arg)
{
    cli_requestor *q = arg;
    for (size_t i = 0; i < q->n_fetch; i++) {
        base_fetch *bf = &q->fetch[i];
        /* the base's chunks are looked up here too, not after the copy */
        if (vmsh_file_index_load(&bf->idx, q->repo, bf->base_id, bf->name, &bf->err) == 0 &&
            vmsh_file_index_check_chunks(bf->idx, q->repo, bf->name, &bf->err) < 0) {
            vmsh_file_index_free(bf->idx);
            bf->idx = NULL;
        }
    }
    return NULL;
}

/* Loads the base indexes of the planned incremental reads in a thread,
 * from the first Freeze on: while the guests freeze and their jobs start,
 * nothing else uses the repository (fetch_join comes before any other use),
 * and the index of a 4 GiB disk (2.6 MB, read and checked: 3-11 ms here,
 * more when it left the page cache) is ready when that disk's copy starts.
 * The plans are read here, in the coordinator's thread: the writers may
 * still change their metadata. Best effort: what is not fetched is loaded
 * when needed, and a failure is reported there as before. */
static void fetch_start(cli_requestor *q, const vmsh_set *set)
{
    q->fetch_started = true;
    for (size_t w = 0; w < vmsh_set_writer_count(set); w++) {
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, w);
        for (size_t i = 0; md && i < vmsh_metadata_component_count(md); i++) {
            const vmsh_component *c = vmsh_metadata_component(md, i);
            for (size_t k = 0; k < vmsh_component_file_count(c); k++) {
                const vmsh_file *f = vmsh_component_file(c, k);
                json_object *plan = disk_plan(md, c, f);
                const char *mode = vmsh_json_str(plan, "read");
                const char *base = vmsh_json_str(plan, "base_backup");
                if (!mode || strcmp(mode, "incremental") != 0 || !base)
                    continue;
                base_fetch *nf = vmsh_realloc_array(q->fetch, q->n_fetch + 1, sizeof(*nf));
                if (!nf)
                    return;
                q->fetch = nf;
                base_fetch *bf = &nf[q->n_fetch];
                *bf = (base_fetch){.name = vmsh_cli_repo_file_name(md, c, f),
                                   .base_id = strdup(base)};
                q->n_fetch++;
                if (!bf->name || !bf->base_id)
                    return; /* a half-made entry is never matched: loaded on demand */
            }
        }
    }
    if (q->n_fetch && pthread_create(&q->fetch_thread, NULL, fetch_main, q) == 0)
        q->fetch_running = true;
}

static void fetch_join(cli_requestor *q)
{
    if (q->fetch_running)
        pthread_join(q->fetch_thread, NULL);
    q->fetch_running = false;
}

static void fetch_free(cli_requestor *q)
{
    fetch_join(q);
    for (size_t i = 0; i < q->n_fetch; i++) {
        free(q->fetch[i].name);
        free(q->fetch[i].base_id);
        vmsh_file_index_free(q->fetch[i].idx);
        vmsh_error_free(q->fetch[i].err);
    }
    free(q->fetch);
    q->fetch = NULL;
    q->n_fetch = 0;
}

/* The base index of `name` from the backup `base_id`: fetched ahead when it
 * was, else loaded now. */
static int base_index(cli_requestor *q, const char *name, const char *base_id,
                      vmsh_file_index **out, vmsh_error **err)
{
    fetch_join(q);
    for (size_t i = 0; i < q->n_fetch; i++) {
        base_fetch *bf = &q->fetch[i];
        if (!bf->name || !bf->base_id || strcmp(bf->name, name) != 0 ||
            strcmp(bf->base_id, base_id) != 0 || (!bf->idx && !bf->err))
            continue;
        *out = bf->idx;
        bf->idx = NULL;
        if (*out)
            return 0;
        int rc = bf->err->code;
        vmsh_error_propagate(err, &bf->err);
        return rc;
    }
    return vmsh_file_index_load(out, q->repo, base_id, name, err);
}

static void on_event(void *opaque, const vmsh_set *set, size_t writer, vmsh_event ev, int result,
                     int64_t ms)
{
    cli_requestor *q = opaque;
    vmsh_cli_debug(q->cli, "writer %s: %s %s (%lld ms)", vmsh_set_writer(set, writer)->name,
                   vmsh_event_name(ev), result == 0 ? "ok" : strerror(-result), (long long)ms);
    if (ev == VMSH_EVENT_FREEZE && result == 0 && !q->fetch_started)
        fetch_start(q, set);
}

static int open_source(const vmsh_file *f, const char *dirty_context, vmsh_source **out,
                       vmsh_error **err)
{
    if (vmsh_file_source_type(f) == VMSH_SOURCE_NBD)
        return vmsh_source_open_nbd(out, vmsh_file_source_socket(f), vmsh_file_source_export(f),
                                    dirty_context, err);
    const char *fmt = vmsh_file_source_format(f);
    if (!fmt || strcmp(fmt, "raw") == 0)
        return vmsh_source_open_file(out, vmsh_file_source_path(f), err);
    return vmsh_source_open_qemu_image(out, vmsh_file_source_path(f), fmt, err);
}

/* The VM writer's plan for a disk file (its component extra.disks entry:
 * "read", "read_reason", "base_backup", "dirty_context"), or NULL. */
static json_object *disk_plan(const vmsh_metadata *md, const vmsh_component *c, const vmsh_file *f)
{
    const char *fname = vmsh_file_name(f);
    json_object *disks = NULL;
    if (strcmp(vmsh_metadata_writer_id(md), VMSH_VM_WRITER_ID) != 0 ||
        strncmp(fname, "disk/", 5) != 0 || !vmsh_component_extra(c) ||
        !json_object_object_get_ex(vmsh_component_extra(c), "disks", &disks) ||
        !json_object_is_type(disks, json_type_array))
        return NULL;
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        const char *t = vmsh_json_str(d, "target");
        if (t && strcmp(t, fname + 5) == 0)
            return d;
    }
    return NULL;
}

/* Opens the source of a disk for an incremental read when the writer
 * planned one (issue 7): the dirty bitmap of the job's export, or for a
 * shut-off VM the persistent bitmap in its qcow2 image (qemu-nbd --bitmap);
 * and the last backup's index of the same file as the base. Anything
 * missing or refused makes it a full read, and *why says what. */
static int open_incremental(cli_requestor *q, const char *name, const vmsh_file *f,
                            json_object *plan, vmsh_source **src, vmsh_file_index **base,
                            char **why, vmsh_error **err)
{
    const char *ctx = vmsh_json_str(plan, "dirty_context");
    const char *bitmap = vmsh_json_str(plan, "bitmap");
    const char *base_id = vmsh_json_str(plan, "base_backup");
    const char *fmt = vmsh_file_source_format(f);
    bool nbd = vmsh_file_source_type(f) == VMSH_SOURCE_NBD;
    vmsh_error *e = NULL;
    if (!ctx || !base_id || (!nbd && (!bitmap || !fmt || strcmp(fmt, "qcow2") != 0)))
        return 1;
    if (base_index(q, name, base_id, base, &e) < 0) {
        if (asprintf(why, "the last backup's index of %s cannot be used: %s", name, e->message) < 0)
            *why = NULL;
        vmsh_error_free(e);
        return 1;
    }
    int r =
        nbd ? open_source(f, ctx, src, &e)
            : vmsh_source_open_qemu_image_bitmap(src, vmsh_file_source_path(f), fmt, bitmap, &e);
    /* The export has no such bitmap, or QEMU refused the image's: the
     * image itself may still be read in full (and its own error shows
     * there if it cannot). */
    if (r == -ENOTSUP || (!nbd && r < 0)) {
        if (asprintf(why, "%s: %s",
                     nbd ? "the export offers no dirty bitmap" : "QEMU refused the bitmap",
                     e->message) < 0)
            *why = NULL;
        vmsh_error_free(e);
        vmsh_file_index_free(*base);
        *base = NULL;
        return 1;
    }
    if (r < 0) {
        vmsh_file_index_free(*base);
        *base = NULL;
        vmsh_error_propagate(err, &e);
        return r;
    }
    return 0;
}

static int req_copy(vmsh_requestor_ops *self, vmsh_set *set, const vmsh_metadata *md,
                    const vmsh_component *c, vmsh_file *f, vmsh_error **err)
{
    cli_requestor *q = (cli_requestor *)self;
    fetch_join(q); /* the repository is this thread's again */
    /* Unique within the backup: writer, component, file. The VM writer's
     * files go under the VM's name alone, as `show` and `extract` name them. */
    _cleanup_free_ char *name = vmsh_cli_repo_file_name(md, c, f);
    int r;
    if (!name)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_source *src = NULL;
    vmsh_file_index *base = NULL;
    json_object *plan = disk_plan(md, c, f);
    const char *read_mode = vmsh_json_str(plan, "read");
    _cleanup_free_ char *why = NULL;
    r = 1;
    if (read_mode && strcmp(read_mode, "incremental") == 0 &&
        (r = open_incremental(q, name, f, plan, &src, &base, &why, err)) < 0)
        return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    if (r > 0) {
        if (read_mode && strcmp(read_mode, "incremental") == 0)
            read_mode = "full";
        else if (read_mode && !why)
            why = vmsh_json_str(plan, "read_reason") ? strdup(vmsh_json_str(plan, "read_reason"))
                                                     : NULL;
        if ((r = open_source(f, NULL, &src, err)) < 0)
            return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    } else {
        why =
            vmsh_json_str(plan, "read_reason") ? strdup(vmsh_json_str(plan, "read_reason")) : NULL;
    }
    vmsh_cli_debug(q->cli, "copying %s%s%s", name, read_mode ? ", read " : "",
                   read_mode ? read_mode : "");
    vmsh_add_stats st = {0};
    copy_progress cp = {.cli = q->cli, .name = name};
    vmsh_add_opts ao = {.base = base};
    if (q->cli->progress) {
        ao.progress = show_progress;
        ao.progress_opaque = &cp;
    }
    int64_t t0 = vmsh_now_ms();
    r = vmsh_backup_add_file(q->backup, name, src, &ao, &st, err);
    vmsh_cli_debug(q->cli, "copied %s: %llu bytes read, %llu chunks from the base, %lld ms", name,
                   (unsigned long long)st.bytes_read, (unsigned long long)st.base_chunks,
                   (long long)(vmsh_now_ms() - t0));
    if (cp.shown)
        fputc('\n', stderr);
    vmsh_source_free(src);
    bool had_base = base != NULL;
    vmsh_file_index_free(base);
    if (r < 0)
        return vmsh_error_prefix(err, "%s: %s", vmsh_component_name(c), vmsh_file_name(f));
    json_object *stored = json_object_new_object();
    if (!stored)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object_object_add(stored, "file", json_object_new_string(name));
    json_object_object_add(stored, "size", json_object_new_int64((int64_t)st.size));
    json_object_object_add(stored, "bytes_stored", json_object_new_int64((int64_t)st.bytes_stored));
    json_object_object_add(stored, "new_chunks", json_object_new_int64((int64_t)st.new_chunks));
    json_object_object_add(stored, "bytes_read", json_object_new_int64((int64_t)st.bytes_read));
    if (read_mode) {
        /* issue 7: how the disk was read, and why */
        json_object_object_add(stored, "read", json_object_new_string(read_mode));
        json_object_object_add(stored, "read_reason", why ? json_object_new_string(why) : NULL);
        if (had_base)
            json_object_object_add(stored, "base",
                                   json_object_new_string(vmsh_json_str(plan, "base_backup")));
        json_object_object_add(stored, "base_chunks",
                               json_object_new_int64((int64_t)st.base_chunks));
    }
    vmsh_file_set_stored(f, stored, st.bytes_read, st.bytes_stored);
    json_object_put(stored);
    if (vmsh_file_size(f) < 0)
        vmsh_file_set_size(f, (int64_t)st.size);
    return 0;
}

static int req_commit(vmsh_requestor_ops *self, vmsh_set *set, const char *document, char **out_id,
                      vmsh_error **err)
{
    cli_requestor *q = (cli_requestor *)self;
    fetch_join(q);
    vmsh_cli_debug(q->cli, "committing the backup");
    int r = vmsh_backup_commit(q->backup, document, err);
    if (r < 0)
        return r;
    vmsh_cli_debug(q->cli, "backup %s committed", vmsh_backup_id(q->backup));
    *out_id = strdup(vmsh_backup_id(q->backup));
    return *out_id ? 0 : vmsh_error_set(err, -ENOMEM, "out of memory");
}

static void req_abort(vmsh_requestor_ops *self, vmsh_set *set)
{
    cli_requestor *q = (cli_requestor *)self;
    /* Not committed: nothing becomes visible; what was written is garbage
     * for gc (R5). */
    fetch_join(q);
    vmsh_backup_free(q->backup);
    q->backup = NULL;
}

/* ---- backup ---- */

/* SIGINT, SIGTERM, SIGHUP during a set: the coordinator stops sending
 * events, thaws what it froze and aborts every writer (R5, R7). The handler
 * resets itself, so a second signal kills at once (the next command then
 * recovers from the journal). */
static volatile sig_atomic_t backup_cancel;

static void on_stop_signal(int sig)
{
    backup_cancel = 1;
}

static void catch_stop_signals(struct sigaction old[3])
{
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &sa, &old[i]);
}

static void restore_stop_signals(const struct sigaction old[3])
{
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &old[i], NULL);
}

static void backup_usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow backup [VM... | --all] [--method auto|saved-state|guest] [--full]\n"
               "\n"
               "Backs up the VMs as one snapshot set (one consistent point) into one backup,\n"
               "together with every script writer of the writers directory. Prints the\n"
               "backup's ID. If anything fails, every writer is told to abort, every VM is\n"
               "returned to its prior state, and no backup is stored (exit code 1).\n"
               "\n"
               "  --all            every VM of the connection\n"
               "  --method M       auto (default: guest when possible, SPEC R2), saved-state, "
               "guest\n"
               "  --full           read every block, even when an incremental is possible\n");
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static json_object *vms_json(const vmsh_set *set)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        if (strcmp(vmsh_set_writer(set, i)->id, VMSH_VM_WRITER_ID) != 0)
            continue;
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, i);
        for (size_t c = 0; md && c < vmsh_metadata_component_count(md); c++) {
            const vmsh_component *comp = vmsh_metadata_component(md, c);
            /* the document's summary of the VM (name, method, reason,
             * states, excluded disks, how each disk was read) */
            json_object *o = vmsh_backup_doc_vm_json(comp, NULL);
            if (!o)
                continue;
            /* measured by the VM writer: how long the VM was stopped (R1) */
            json_object *extra = vmsh_component_extra(comp), *dt = NULL;
            if (extra && json_object_object_get_ex(extra, "downtime_ms", &dt))
                json_object_object_add(o, "downtime_ms", json_object_get(dt));
            json_object_array_add(a, o);
        }
    }
    return a;
}

/* Adds to `h` the VM components of backup `id` (its document) that `h` has
 * no entry for yet: {vm: {"backup": ID, "extra": {...}}}. */
static void history_add(json_object *h, const char *id, const char *document)
{
    json_object *doc = document ? json_tokener_parse(document) : NULL, *ws = NULL;
    if (doc && json_object_object_get_ex(doc, "writers", &ws) &&
        json_object_is_type(ws, json_type_array)) {
        for (size_t k = 0; k < json_object_array_length(ws); k++) {
            json_object *wm = json_object_array_get_idx(ws, k), *wr = NULL, *cs = NULL;
            if (!json_object_object_get_ex(wm, "writer", &wr) || !vmsh_json_str(wr, "id") ||
                strcmp(vmsh_json_str(wr, "id"), VMSH_VM_WRITER_ID) != 0 ||
                !json_object_object_get_ex(wm, "components", &cs) ||
                !json_object_is_type(cs, json_type_array))
                continue;
            for (size_t c = 0; c < json_object_array_length(cs); c++) {
                json_object *comp = json_object_array_get_idx(cs, c), *ex = NULL;
                const char *name = vmsh_json_str(comp, "name");
                if (!name || json_object_object_get_ex(h, name, NULL))
                    continue;
                json_object *e = json_object_new_object();
                json_object_object_add(e, "backup", json_object_new_string(id));
                if (json_object_object_get_ex(comp, "extra", &ex))
                    json_object_object_add(e, "extra", json_object_get(ex));
                json_object_object_add(h, name, e);
            }
        }
    }
    json_object_put(doc);
}

typedef struct history_walk {
    json_object *h;
    const vmsh_set_options *so;
} history_walk;

static int history_visit(void *opaque, const vmsh_backup_info *b)
{
    history_walk *hw = opaque;
    history_add(hw->h, b->id, b->document);
    for (size_t i = 0; i < hw->so->n_targets; i++)
        if (!json_object_object_get_ex(hw->h, hw->so->targets[i], NULL))
            return 0;
    return 1; /* every VM of the set has its last backup */
}

/* Issue 7: for the VM writer's chain checks, the last backup of each VM of
 * the set in this repository with its component extra (the checkpoint it
 * left): {vm: {"backup": ID, "extra": {...}}}. For named VMs the manifests
 * are read newest first until each VM has one, not all of them (a backup
 * would otherwise read every manifest of a repository that keeps thousands:
 * ~0.1 ms each). Either order is safe: a backup picked that is not the
 * last has, at most, a checkpoint that still exists, whose bitmap holds
 * every change since that backup (its index plus those changes is the disk
 * now), else the chain check reads in full. A damaged manifest is left out
 * for the same reason. --all reads them all, in the order of their times. */
static int repo_history(vmsh_repo *repo, const vmsh_set_options *so, json_object **out,
                        vmsh_error **err)
{
    json_object *h = json_object_new_object();
    if (!h)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    if (!so->all) {
        history_walk hw = {h, so};
        if (so->n_targets > 0 && (r = vmsh_repo_each_recent(repo, history_visit, &hw, err)) < 0)
            json_object_put(h);
        else
            *out = h;
        return r;
    }
    vmsh_backup_info *a = NULL;
    vmsh_damage *damaged = NULL;
    size_t n = 0, n_damaged = 0;
    if ((r = vmsh_repo_list_tolerant(repo, &a, &n, &damaged, &n_damaged, err)) < 0) {
        json_object_put(h);
        return r;
    }
    vmsh_damage_array_free(damaged, n_damaged);
    for (size_t i = n; i-- > 0;)
        history_add(h, a[i].id, a[i].document);
    vmsh_backup_info_array_free(a, n);
    *out = h;
    return 0;
}

/* R6: disks the VM writer leaves out are backed up from inside the guest;
 * say so on every backup, also with --json (stderr). */
static void warn_excluded(vmsh_cli *cli, const vmsh_set *set)
{
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        if (strcmp(vmsh_set_writer(set, i)->id, VMSH_VM_WRITER_ID) != 0)
            continue;
        const vmsh_metadata *md = vmsh_set_writer_metadata(set, i);
        for (size_t c = 0; md && c < vmsh_metadata_component_count(md); c++) {
            const vmsh_component *comp = vmsh_metadata_component(md, c);
            for (size_t k = 0; k < vmsh_component_excluded_count(comp); k++)
                vmsh_cli_warn(cli, "VM %s: %s not backed up: %s", vmsh_component_name(comp),
                              vmsh_component_excluded_name(comp, k),
                              vmsh_component_excluded_reason(comp, k));
        }
    }
}

static json_object *writers_json(const vmsh_set *set)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; set && i < vmsh_set_writer_count(set); i++) {
        const vmsh_writer_ops *w = vmsh_set_writer(set, i);
        const vmsh_error *e = vmsh_set_writer_error(set, i);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", jstr(w->name));
        json_object_object_add(o, "id", jstr(w->id));
        json_object_object_add(o, "state",
                               jstr(vmsh_writer_state_name(vmsh_set_writer_state(set, i))));
        json_object_object_add(o, "error", e ? jstr(e->message) : NULL);
        json_object_array_add(a, o);
    }
    return a;
}

int vmsh_cmd_backup(vmsh_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"all", no_argument, NULL, 'a'},
        {"method", required_argument, NULL, 'm'},
        {"full", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    vmsh_set_options so = {.method = "auto"};
    int c;
    while ((c = getopt_long(argc, argv, ":am:fh", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            so.all = true;
            break;
        case 'm':
            if (strcmp(optarg, "auto") && strcmp(optarg, "saved-state") && strcmp(optarg, "guest"))
                return vmsh_cli_usage_error(
                    cli, "backup", "unknown method '%s' (auto, saved-state, guest)", optarg);
            so.method = optarg;
            break;
        case 'f':
            so.full = true;
            break;
        case 'h':
            backup_usage(stdout);
            return VMSH_EXIT_OK;
        case ':':
            return vmsh_cli_usage_error(cli, "backup", "option '%s' needs a value",
                                        argv[optind - 1]);
        default:
            return vmsh_cli_usage_error(cli, "backup", "unknown option '%s'", argv[optind - 1]);
        }
    }
    so.targets = (const char *const *)(argv + optind);
    so.n_targets = (size_t)(argc - optind);
    if (so.all && so.n_targets)
        return vmsh_cli_usage_error(cli, "backup", "give VM names or --all, not both");

    vmsh_error *err = NULL;
    vmsh_coord_config cfg;
    vmsh_cli_host_writers h = {0};
    cli_requestor q = {.ops = {.version = VMSH_REQUESTOR_OPS_VERSION,
                               .copy_file = req_copy,
                               .commit = req_commit,
                               .abort = req_abort},
                       .cli = cli};
    vmsh_set *set = NULL;
    int r;
    /* Everything that can fail before a writer is touched comes first: the
     * configuration, the writers, the repository and its write lock. */
    if ((r = vmsh_cli_coord_config(cli, &cfg, &err)) < 0 ||
        (r = vmsh_cli_build_writers(cli, true, &h, &err)) < 0)
        goto out;
    /* The VM writer reads what Identify needs (lookups, definitions, agent
     * probes: ~20 ms, most of it waiting for the guests) while the
     * repository opens and the coordinator sets up; it changes nothing. */
    if (h.vm_writer && !so.all && so.n_targets > 0)
        vmsh_vm_writer_prefetch(h.vm_writer, so.targets, so.n_targets);
    if ((r = vmsh_repo_open_ex(&q.repo, cli->repo, vmsh_kvconf_get(cli->config, "key-file"),
                               cli->allow_foreign_repo ? VMSH_REPO_OPEN_ALLOW_FOREIGN : 0, &err)) <
            0 ||
        (r = vmsh_backup_begin(&q.backup, q.repo, &err)) < 0)
        goto out;
    vmsh_cli_debug(cli, "repository %s open for backup %s", cli->repo, vmsh_backup_id(q.backup));
    if (h.vm_writer) {
        json_object *hist = NULL;
        vmsh_error *e = NULL;
        if (repo_history(q.repo, &so, &hist, &e) < 0) {
            vmsh_cli_warn(cli,
                          "every disk is read in full: the repository's backups cannot be "
                          "listed: %s",
                          e->message);
            vmsh_error_free(e);
            e = NULL;
        }
        r = vmsh_vm_writer_set_history(h.vm_writer, vmsh_repo_id(q.repo), hist, &err);
        json_object_put(hist);
        if (r < 0)
            goto out;
    }
    struct sigaction old_sa[3];
    backup_cancel = 0;
    cfg.cancel = &backup_cancel;
    cfg.on_event = on_event;
    cfg.on_event_opaque = &q;
    catch_stop_signals(old_sa);
    r = vmsh_coord_backup(&cfg, h.w, h.n, h.p, h.np, &q.ops, &so, &set, &err);
    restore_stop_signals(old_sa);
out:;
    int64_t window = set ? vmsh_set_freeze_window_ms(set) : -1;
    if (h.vm_writer) {
        int64_t vw = vmsh_vm_writer_freeze_window_ms(h.vm_writer);
        if (vw > window)
            window = vw;
    }
    warn_excluded(cli, set);
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "backup", r == 0 && set ? jstr(vmsh_set_backup_id(set)) : NULL);
        json_object_object_add(o, "set_id", set ? jstr(vmsh_set_id(set)) : NULL);
        json_object_object_add(o, "vms", vms_json(set));
        json_object_object_add(o, "freeze_window_ms",
                               window >= 0 ? json_object_new_int64(window) : NULL);
        json_object_object_add(o, "bytes_read",
                               json_object_new_int64(set ? (int64_t)vmsh_set_bytes_read(set) : 0));
        json_object_object_add(
            o, "bytes_stored",
            json_object_new_int64(set ? (int64_t)vmsh_set_bytes_stored(set) : 0));
        json_object_object_add(o, "writers", writers_json(set));
        json_object_object_add(o, "error", err ? jstr(err->message) : NULL);
        vmsh_cli_print_json(o);
    } else if (r == 0) {
        printf("%s\n", vmsh_set_backup_id(set));
    }
    if (r == 0 && !cli->json && cli->verbosity > 0)
        vmsh_cli_info(cli, "snapshot set %s: freeze window %lld ms, %llu bytes read, %llu stored",
                      vmsh_set_id(set), (long long)window,
                      (unsigned long long)vmsh_set_bytes_read(set),
                      (unsigned long long)vmsh_set_bytes_stored(set));
    if (r < 0 && set) {
        for (size_t i = 0; i < vmsh_set_writer_count(set); i++) {
            const vmsh_error *e = vmsh_set_writer_error(set, i);
            if (e)
                vmsh_cli_warn(cli, "%s: %s%s",
                              vmsh_writer_state_name(vmsh_set_writer_state(set, i)), e->message,
                              e->retryable ? " (a retry may succeed)" : "");
        }
        vmsh_cli_warn(cli, "snapshot set %s was aborted; no backup was stored", vmsh_set_id(set));
    }
    vmsh_set_free(set);
    fetch_free(&q);
    vmsh_backup_free(q.backup);
    vmsh_repo_free(q.repo);
    vmsh_cli_host_writers_clear(&h);
    if (r < 0)
        return vmsh_cli_fail(cli, &err);
    return VMSH_EXIT_OK;
}

/* ---- writers ---- */

static json_object *record_json(const vmsh_writer_record *rec)
{
    json_object *err = NULL, *run = NULL;
    if (rec && rec->has_error) {
        err = json_object_new_object();
        json_object_object_add(err, "event", jstr(rec->error_event));
        json_object_object_add(err, "code", json_object_new_int(rec->error_code));
        json_object_object_add(err, "message", jstr(rec->error_message));
        json_object_object_add(err, "retryable", json_object_new_boolean(rec->error_retryable));
    }
    if (rec && rec->set_id) {
        run = json_object_new_object();
        json_object_object_add(run, "set_id", jstr(rec->set_id));
        json_object_object_add(run, "operation", jstr(rec->operation));
        json_object_object_add(run, "result", jstr(rec->result));
        json_object_object_add(run, "time", jstr(rec->time));
        json_object *evs = json_object_new_array();
        for (size_t i = 0; i < rec->n_events; i++) {
            json_object *ev = json_object_new_object();
            json_object_object_add(ev, "event", jstr(rec->events[i].event));
            json_object_object_add(ev, "result", jstr(rec->events[i].result));
            json_object_object_add(ev, "ms", json_object_new_int64(rec->events[i].ms));
            json_object_array_add(evs, ev);
        }
        json_object_object_add(run, "events", evs);
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "last_error", err);
    json_object_object_add(o, "last_run", run);
    return o;
}

static void print_writer(vmsh_cli *cli, json_object *arr, const char *name, const char *id,
                         const char *kind, const char *file, const char *state,
                         const vmsh_writer_record *rec, const char *invalid)
{
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", jstr(name));
        json_object_object_add(o, "id", jstr(id));
        json_object_object_add(o, "kind", jstr(kind));
        json_object_object_add(o, "file", jstr(file));
        json_object_object_add(o, "state", jstr(state));
        json_object *r = record_json(rec);
        json_object *le = NULL, *lr = NULL;
        json_object_object_get_ex(r, "last_error", &le);
        json_object_object_get_ex(r, "last_run", &lr);
        if (invalid) {
            le = json_object_new_object();
            json_object_object_add(le, "event", jstr("load"));
            json_object_object_add(le, "code", json_object_new_int(-EINVAL));
            json_object_object_add(le, "message", jstr(invalid));
            json_object_object_add(le, "retryable", json_object_new_boolean(0));
        } else {
            json_object_get(le);
        }
        json_object_object_add(o, "last_error", le);
        json_object_object_add(o, "last_run", json_object_get(lr));
        json_object_put(r);
        json_object_array_add(arr, o);
        return;
    }
    printf("%-24s %s  %-10s %s\n", name, id, kind, state);
    if (rec && rec->set_id)
        printf("    last run: %s %s, %s (set %s)\n", rec->operation, rec->result, rec->time,
               rec->set_id);
    else
        printf("    last run: none\n");
    if (invalid)
        printf("    error: %s\n", invalid);
    else if (rec && rec->has_error)
        printf("    last error (%s): %s%s\n", rec->error_event, rec->error_message,
               rec->error_retryable ? " [retryable]" : "");
}

int vmsh_cmd_writers(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "writers",
        "Usage: vmshadow writers\n\nEach writer (the VM writer and the script writers "
        "of the writers\ndirectory): name, writer ID, kind, state and last error of "
        "its most\nrecent run (R17).\n");
    if (done >= 0)
        return done;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "writers", "takes no arguments");
    vmsh_error *err = NULL;
    vmsh_writer_states *st = NULL;
    if (vmsh_writer_states_load(cli->state_dir, &st, &err) < 0) {
        /* History only: show the writers without it. */
        if (err->code != -EACCES)
            vmsh_cli_warn(cli, "%s", err->message);
        vmsh_error_free(err);
        err = NULL;
        if (vmsh_writer_states_new(&st, &err) < 0)
            return vmsh_cli_fail(cli, &err);
    }
    char **paths = NULL;
    size_t np = 0;
    if (vmsh_script_writer_paths(cli->writers_dir, &paths, &np, &err) < 0) {
        vmsh_writer_states_free(st);
        return vmsh_cli_fail(cli, &err);
    }
    json_object *arr = cli->json ? json_object_new_array() : NULL;
    if (!cli->json)
        printf("%-24s %-36s  %-10s %s\n", "NAME", "WRITER ID", "KIND", "STATE");
    /* The VM writer is always there, with its fixed identity (R17). */
    const vmsh_writer_record *rec = vmsh_writer_states_find(st, VMSH_VM_WRITER_ID);
    print_writer(cli, arr, VMSH_VM_WRITER_NAME, VMSH_VM_WRITER_ID, VMSH_VM_WRITER_KIND, NULL,
                 rec ? vmsh_writer_state_name(rec->state) : "stable", rec, NULL);
    for (size_t i = 0; i < np; i++) {
        vmsh_writer_ops *w = NULL;
        vmsh_error *e = NULL;
        if (vmsh_script_writer_load(paths[i], &w, &e) < 0) {
            _cleanup_free_ char *name = vmsh_script_writer_default_name(paths[i]);
            char id[37] = "";
            if (name)
                vmsh_script_writer_id(name, id, NULL);
            print_writer(cli, arr, name ? name : paths[i], id, VMSH_SCRIPT_WRITER_KIND, paths[i],
                         "invalid", vmsh_writer_states_find(st, id), e->message);
            vmsh_error_free(e);
            continue;
        }
        rec = vmsh_writer_states_find(st, w->id);
        print_writer(cli, arr, w->name, w->id, w->kind, paths[i],
                     rec ? vmsh_writer_state_name(rec->state) : "stable", rec, NULL);
        vmsh_writer_free(w);
    }
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "writers", arr);
        vmsh_cli_print_json(o);
    }
    vmsh_script_writer_paths_free(paths);
    vmsh_writer_states_free(st);
    return VMSH_EXIT_OK;
}
