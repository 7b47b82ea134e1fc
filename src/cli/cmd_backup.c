/* cmd_backup.c - `vmshadow backup`, `vmshadow writers`, `vmshadow recover`,
 * and the recovery every command runs first (CLI.md; SPEC R5, R7, R17).
 *
 * The command line parses, calls the library's requestor (src/requestor:
 * writers, providers, the snapshot set, the copy, the commit) and prints
 * what it tells (issue 21). */
#include "cli.h"

#include <vmshadow/requestor/requestor.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/text.h>

#include <errno.h>
#include <getopt.h>
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
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, false, &cb);
    int r = vmsh_requestor_recover(&cfg, &cb, out, err);
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
    static const struct option ropts[] = {
        {"abandon", required_argument, NULL, 'a'}, {"help", no_argument, NULL, 'h'}, {0}};
    const char *abandon = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "h", ropts, NULL)) != -1) {
        if (c == 'a') {
            abandon = optarg;
        } else if (c == 'h') {
            fputs("Usage: vmshadow recover [--abandon VM]\n\nUndoes what an interrupted run "
                  "left behind (frozen guests, paused or saved VMs,\noverlays, backup jobs, "
                  "scratch files, script writers' prepare-snapshot), from\nthe journals in the "
                  "state directory (R7). Every other command does this first.\nThen finishes "
                  "every instant restore in progress (restore --instant): its\nservers started "
                  "again, the VM (re)started, the pull ended, serving stopped.\n\n  --abandon VM  "
                  "tear VM's instant restore down instead: the VM stopped and\n               "
                  "undefined, its overlays removed, serving stopped\n",
                  stdout);
            return VMSH_EXIT_OK;
        } else {
            return vmsh_cli_usage_error(cli, "recover", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "recover", "unexpected argument '%s'", argv[optind]);
    vmsh_recover_report *rep = NULL;
    vmsh_error *err = NULL;
    int r = run_recover(cli, true, &rep, &err);
    if (!rep)
        return vmsh_cli_fail(cli, &err);
    /* instant restores (issue 23, cmd_jobs.c): after the sets' journals,
     * which take back a restore that did not register its VM */
    size_t instant_done = 0;
    if (r == 0)
        r = vmsh_cli_instant_recover(cli, abandon, &instant_done, &err);
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
        json_object_object_add(o, "instant_restores_finished",
                               json_object_new_int64((int64_t)instant_done));
        if (r < 0)
            json_object_object_add(
                o, "error",
                vmsh_cli_error_json(VMSH_EXIT_FAILED, r,
                                    err ? err->message
                                        : "an action of an interrupted run could not be undone"));
        vmsh_cli_print_json(o);
    } else if (rep->n_items == 0 && rep->journals_busy == 0 && instant_done == 0) {
        if (r == 0)
            vmsh_cli_info(cli, "nothing to recover");
    } else if (rep->n_items == 0 && rep->journals_busy == 0) {
        printf("%s %zu instant restore(s)\n", abandon ? "abandoned" : "finished", instant_done);
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
        if (err && !cli->json)
            vmsh_cli_warn(cli, "recover: %s", err->message);
        vmsh_error_free(err);
        return VMSH_EXIT_FAILED;
    }
    return VMSH_EXIT_OK;
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
               "                      [--include-shared] [--allow-excluded]\n"
               "\n"
               "Backs up the VMs as one snapshot set (one consistent point) into one backup,\n"
               "together with every script writer of the writers directory. Prints the\n"
               "backup's ID. If anything fails, every writer is told to abort, every VM is\n"
               "returned to its prior state, and no backup is stored (exit code 1).\n"
               "\n"
               "  --all            every VM of the connection\n"
               "  --method M       auto (default: guest when possible, SPEC R2), saved-state, "
               "guest\n"
               "  --full           read every block, even when an incremental is possible\n"
               "  --include-shared capture <shareable/> disks too (not consistent across VMs)\n"
               "  --allow-excluded back up a VM whose disks are all excluded or whose firmware\n"
               "                   variables or TPM state cannot be read, recording what is\n"
               "                   left out; exit code 5 when that happened (SPEC R6)\n");
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

const struct option vmsh_cli_opts_backup[] = {
    {"all", no_argument, NULL, 'a'},
    {"method", required_argument, NULL, 'm'},
    {"full", no_argument, NULL, 'f'},
    {"include-shared", no_argument, NULL, 'S'},
    {"allow-excluded", no_argument, NULL, 'X'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

static int open_repo(void *opaque, vmsh_repo **out, vmsh_error **err)
{
    vmsh_cli *cli = opaque;
    int r = vmsh_cli_repo_open(cli, out, err);
    if (r == 0)
        vmsh_cli_debug(cli, "repository %s open", cli->repo);
    return r;
}

int vmsh_cmd_backup(vmsh_cli *cli, int argc, char **argv)
{
    vmsh_requestor_backup_options so = {.method = "auto"};
    int c;
    while ((c = getopt_long(argc, argv, ":am:fh", vmsh_cli_opts_backup, NULL)) != -1) {
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
        case 'S':
            so.include_shared = true;
            break;
        case 'X':
            so.allow_excluded = true;
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
    /* Names are stored as UTF-8 text (backup document, repository file
     * names): refused here, before any writer is touched (issue 20). */
    for (size_t i = 0; i < so.n_targets; i++)
        if (!vmsh_utf8_valid_str(so.targets[i]))
            return vmsh_cli_usage_error(cli, "backup",
                                        "VM name '%s' is not valid UTF-8: vmshadow keeps names "
                                        "as UTF-8 text",
                                        so.targets[i]);

    vmsh_error *err = NULL;
    vmsh_requestor_config cfg;
    vmsh_requestor_callbacks cb;
    vmsh_cli_events ev;
    vmsh_requestor_result *res = NULL;
    vmsh_cli_requestor_config(cli, &cfg);
    vmsh_cli_callbacks(cli, &ev, false, &cb);
    /* The repository opens once the writers exist (vmsh_cli_repo_open: the
     * key file, environment and config of every command). */
    so.open_repo = open_repo;
    so.open_repo_opaque = cli;
    struct sigaction old_sa[3];
    backup_cancel = 0;
    cfg.cancel = &backup_cancel;
    catch_stop_signals(old_sa);
    int r = vmsh_requestor_backup(&cfg, &cb, &so, &res, &err);
    restore_stop_signals(old_sa);
    if (!res) {
        vmsh_error_set(&err, -ENOMEM, "out of memory");
        return vmsh_cli_fail(cli, &err);
    }
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "backup", jstr(res->backup_id));
        json_object_object_add(o, "set_id", jstr(res->set_id));
        json_object_object_add(o, "vms", json_object_get(res->vms));
        json_object_object_add(
            o, "freeze_window_ms",
            res->freeze_window_ms >= 0 ? json_object_new_int64(res->freeze_window_ms) : NULL);
        json_object_object_add(o, "bytes_read", json_object_new_int64((int64_t)res->bytes_read));
        json_object_object_add(o, "bytes_stored",
                               json_object_new_int64((int64_t)res->bytes_stored));
        json_object_object_add(o, "writers", json_object_get(res->writers));
        json_object_object_add(o, "store", vmsh_cli_store_json());
        json_object_object_add(
            o, "error",
            r < 0 ? vmsh_cli_error_json(vmsh_cli_exit_code(r), r, err ? err->message : "failed")
                  : NULL);
        vmsh_cli_print_json(o);
    } else if (r == 0) {
        printf("%s\n", res->backup_id);
    }
    if (r == 0 && !cli->json && cli->verbosity > 0)
        vmsh_cli_info(cli, "snapshot set %s: freeze window %lld ms, %llu bytes read, %llu stored",
                      res->set_id, (long long)res->freeze_window_ms,
                      (unsigned long long)res->bytes_read, (unsigned long long)res->bytes_stored);
    if (r < 0 && res->set_id) {
        for (size_t i = 0; i < res->n_failures; i++) {
            const vmsh_requestor_failure *f = &res->failures[i];
            vmsh_cli_warn(cli, "%s: %s%s", f->state, f->message,
                          f->retryable ? " (a retry may succeed)" : "");
        }
        vmsh_cli_warn(cli, "snapshot set %s was aborted; no backup was stored", res->set_id);
    }
    size_t accepted = res->accepted_exclusions;
    vmsh_requestor_result_free(res);
    if (r < 0)
        return vmsh_cli_fail(cli, &err);
    if (accepted > 0) {
        /* R6: stored, but not everything the VMs need (named above) */
        if (!cli->json)
            vmsh_cli_warn(cli,
                          "backup complete except %zu item(s) left out with --allow-excluded "
                          "(exit code %d)",
                          accepted, VMSH_EXIT_EXCLUDED);
        return VMSH_EXIT_EXCLUDED;
    }
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
    printf("%-24s %s  %-10s %s\n", vmsh_cli_safe(cli, name), vmsh_cli_safe(cli, id),
           vmsh_cli_safe(cli, kind), vmsh_cli_safe(cli, state));
    if (rec && rec->set_id)
        printf("    last run: %s %s, %s (set %s)\n", vmsh_cli_safe(cli, rec->operation),
               vmsh_cli_safe(cli, rec->result), vmsh_cli_safe(cli, rec->time),
               vmsh_cli_safe(cli, rec->set_id));
    else
        printf("    last run: none\n");
    if (invalid)
        printf("    error: %s\n", vmsh_cli_safe(cli, invalid));
    else if (rec && rec->has_error)
        printf("    last error (%s): %s%s\n", vmsh_cli_safe(cli, rec->error_event),
               vmsh_cli_safe(cli, rec->error_message), rec->error_retryable ? " [retryable]" : "");
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
    vmsh_requestor_config cfg;
    vmsh_requestor_writer_info *ws = NULL;
    size_t nw = 0;
    vmsh_cli_requestor_config(cli, &cfg);
    if (vmsh_requestor_writers(&cfg, &ws, &nw, &err) < 0) {
        vmsh_writer_states_free(st);
        return vmsh_cli_fail(cli, &err);
    }
    json_object *arr = cli->json ? json_object_new_array() : NULL;
    if (!cli->json)
        printf("%-24s %-36s  %-10s %s\n", "NAME", "WRITER ID", "KIND", "STATE");
    /* The VM writer first, with its fixed identity (R17), then each script
     * writer file, loaded or not. */
    for (size_t i = 0; i < nw; i++) {
        const vmsh_requestor_writer_info *w = &ws[i];
        const vmsh_writer_record *rec = vmsh_writer_states_find(st, w->id);
        print_writer(cli, arr, w->name, w->id, w->kind, w->file,
                     w->invalid ? "invalid"
                     : rec      ? vmsh_writer_state_name(rec->state)
                                : "stable",
                     rec, w->invalid);
    }
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "writers", arr);
        vmsh_cli_print_json(o);
    }
    vmsh_requestor_writers_free(ws, nw);
    vmsh_writer_states_free(st);
    return VMSH_EXIT_OK;
}
