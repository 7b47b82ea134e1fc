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

/* A progress line on stderr, only when it is a terminal (CLI.md). */
static void cb_progress(void *opaque, const char *file, uint64_t done, uint64_t total)
{
    vmsh_cli_events *ev = opaque;
    int64_t now = vmsh_now_ms();
    if (done < total && now - ev->last_ms < (ev->restore ? 250 : 200))
        return;
    ev->last_ms = now;
    ev->shown = true;
    if (ev->restore) {
        char d[32], t[32];
        vmsh_cli_format_bytes(done, d, sizeof(d));
        vmsh_cli_format_bytes(total, t, sizeof(t));
        fprintf(stderr, "\r%s: %3d%% (%s of %s)   ", file, total ? (int)(done * 100 / total) : 100,
                d, t);
        return;
    }
    fprintf(stderr, "\r%s: %3u%% of %.1f MiB", file, total ? (unsigned)(done * 100 / total) : 100u,
            (double)total / (1024.0 * 1024.0));
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
