/* host.c - what the commands that run the requestor share: its
 * configuration from the command line's, and the callbacks that print what
 * it tells (issue 21: the writers, providers and the copy live in the
 * library's requestor, src/requestor). */
#include "cli.h"

#include <vmshadow/util/timeutil.h>

#include <stdio.h>
#include <string.h>

void vmsh_cli_requestor_config(vmsh_cli *cli, vmsh_requestor_config *cfg)
{
    *cfg = (vmsh_requestor_config){
        .uri = cli->uri,
        .state_dir = cli->state_dir,
        .writers_dir = cli->writers_dir,
        .conf = cli->config,
    };
}

static void cb_begin(void *opaque, vmsh_requestor_actor actor, const char *who, const char *step)
{
    vmsh_cli_events *ev = opaque;
    if (actor == VMSH_ACTOR_REQUESTOR)
        ev->last_ms = 0; /* each file's first progress line shows */
}

static void cb_end(void *opaque, vmsh_requestor_actor actor, const char *who, const char *step,
                   int result, int64_t ms)
{
    vmsh_cli_events *ev = opaque;
    /* a file's progress line ends with its copy or restore */
    if (actor == VMSH_ACTOR_REQUESTOR && ev->shown &&
        (strncmp(step, "copy ", 5) == 0 || strncmp(step, "restore ", 8) == 0)) {
        fputc('\n', stderr);
        ev->shown = false;
    }
    if (actor == VMSH_ACTOR_PROVIDER)
        vmsh_cli_debug(ev->cli, "provider %s: %s %s (%lld ms)", who, step,
                       result == 0 ? "ok" : strerror(-result), (long long)ms);
}

static void dir_json(json_object *o, const char *dir, uint64_t bytes, double secs)
{
    char k[32];
    snprintf(k, sizeof(k), "bytes_%s", dir);
    json_object_object_add(o, k, json_object_new_int64((int64_t)bytes));
    snprintf(k, sizeof(k), "%s_seconds", dir);
    json_object_object_add(o, k, json_object_new_double(secs));
    snprintf(k, sizeof(k), "%s_mb_per_s", dir);
    json_object_object_add(o, k, json_object_new_double(secs > 0 ? bytes / secs / 1e6 : 0));
}

json_object *vmsh_cli_store_json(void)
{
    vmsh_store_traffic t;
    vmsh_repo_store_traffic(&t);
    if (!t.bytes_up && !t.bytes_down)
        return NULL;
    json_object *o = json_object_new_object();
    dir_json(o, "up", t.bytes_up, t.up_seconds);
    dir_json(o, "down", t.bytes_down, t.down_seconds);
    return o;
}

/* The store's throughput for a progress line, "" for a local directory. */
static void store_rate(char *out, size_t n, bool restore)
{
    vmsh_store_traffic t;
    vmsh_repo_store_traffic(&t);
    uint64_t b = restore ? t.bytes_down : t.bytes_up;
    double s = restore ? t.down_seconds : t.up_seconds;
    out[0] = 0;
    if (b && s > 0)
        snprintf(out, n, ", store %s %.0f MB/s", restore ? "read" : "upload", b / s / 1e6);
}

/* A progress line on stderr, only when it is a terminal (CLI.md). */
static void cb_progress(void *opaque, const char *file, uint64_t done, uint64_t total)
{
    vmsh_cli_events *ev = opaque;
    int64_t now = vmsh_now_ms();
    if (done < total && now - ev->last_ms < (ev->restore ? 250 : 200))
        return;
    ev->last_ms = now;
    ev->shown = true;
    char rate[64];
    store_rate(rate, sizeof(rate), ev->restore);
    if (ev->restore) {
        char d[32], t[32];
        vmsh_cli_format_bytes(done, d, sizeof(d));
        vmsh_cli_format_bytes(total, t, sizeof(t));
        fprintf(stderr, "\r%s: %3d%% (%s of %s%s)   ", file,
                total ? (int)(done * 100 / total) : 100, d, t, rate);
        return;
    }
    fprintf(stderr, "\r%s: %3u%% of %.1f MiB%s   ", file,
            total ? (unsigned)(done * 100 / total) : 100u, (double)total / (1024.0 * 1024.0), rate);
    fflush(stderr);
}

static void cb_warning(void *opaque, const char *message)
{
    vmsh_cli_events *ev = opaque;
    vmsh_cli_warn(ev->cli, "%s", message);
}

static void cb_debug(void *opaque, const char *message)
{
    vmsh_cli_events *ev = opaque;
    vmsh_cli_debug(ev->cli, "%s", message);
}

void vmsh_cli_callbacks(vmsh_cli *cli, vmsh_cli_events *ev, bool restore,
                        vmsh_requestor_callbacks *cb)
{
    *ev = (vmsh_cli_events){.cli = cli, .restore = restore};
    *cb = (vmsh_requestor_callbacks){
        .version = VMSH_REQUESTOR_CALLBACKS_VERSION,
        .opaque = ev,
        .step_begin = cb_begin,
        .step_end = cb_end,
        .progress = cli->progress ? cb_progress : NULL,
        .warning = cb_warning,
        .debug = cb_debug,
    };
}
