/* host.c - the writers and providers of this host, the coordinator's
 * configuration, repository file names, the callbacks' helpers (issue 21:
 * moved here from the command line, which no longer knows the writers). */
#include "requestor_priv.h"

#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/hostops_cluster.h>
#include <vmshadow/providers/pull.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/script_writer.h>
#include <vmshadow/writers/vm_writer.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void req_host_clear(req_host *h)
{
    /* Gives back what a set left held while the VM writer's connection,
     * which the hooks saw, is still open. */
    vmsh_cluster_host_finish(h->cluster_host, NULL);
    if (h->owned) {
        for (size_t i = 0; i < h->n; i++)
            vmsh_writer_free(h->w[i]);
        for (size_t i = 0; i < h->np; i++)
            vmsh_provider_free(h->p[i]);
    }
    for (size_t i = 0; i < h->n_broken; i++) {
        free(h->broken[i].path);
        free(h->broken[i].name);
        free(h->broken[i].message);
    }
    free(h->w);
    free(h->p);
    free(h->broken);
    vmsh_cluster_host_free(h->cluster_host);
    vmsh_cluster_free(h->cluster);
    vmsh_provider_free(h->cluster_owner);
    memset(h, 0, sizeof(*h));
}

static int add_writer(req_host *h, vmsh_writer_ops *w)
{
    vmsh_writer_ops **a = vmsh_realloc_array(h->w, h->n + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    h->w = a;
    h->w[h->n++] = w;
    return 0;
}

static int add_provider(req_host *h, vmsh_provider_ops *pr)
{
    vmsh_provider_ops **a = vmsh_realloc_array(h->p, h->np + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    h->p = a;
    h->p[h->np++] = pr;
    return 0;
}

static int borrow(const vmsh_requestor_config *cfg, req_host *h, vmsh_error **err)
{
    for (size_t i = 0; i < cfg->n_writers; i++)
        if (add_writer(h, cfg->writers[i]) < 0)
            goto nomem;
    for (size_t i = 0; i < cfg->n_providers; i++)
        if (add_provider(h, cfg->providers[i]) < 0)
            goto nomem;
    return 0;
nomem:
    req_host_clear(h);
    return vmsh_error_set(err, -ENOMEM, "out of memory");
}

/* Issue 22: the cluster-aware host operations when a Pacemaker cluster
 * with a VirtualDomain resource runs here (nothing is spawned on a host
 * without Pacemaker). A cluster that cannot be read gets them too: their
 * hook reads it again before a save and refuses the save when it still
 * cannot (a save behind a cluster's back is what R16 forbids). */
static int cluster_build(const vmsh_requestor_config *cfg, req_host *h, vmsh_error **err)
{
    if (req_cluster_owner_new(cfg->uri, &h->cluster_owner) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    vmsh_error *e = NULL;
    int pr = vmsh_cluster_probe(&h->cluster, &e);
    vmsh_error_free(e);
    if (pr == 0 && (!h->cluster || h->cluster->n_rscs == 0))
        return 0;
    return vmsh_cluster_host_new(&h->cluster_host, cfg->state_dir, 0, err);
}

int req_host_build(const vmsh_requestor_config *cfg, bool strict, req_host *h, vmsh_error **err)
{
    memset(h, 0, sizeof(*h));
    int r;
    if (cfg->writers) {
        if ((r = borrow(cfg, h, err)) < 0)
            return r;
        if (req_cluster_owner_new(cfg->uri, &h->cluster_owner) < 0) {
            req_host_clear(h);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
        return 0;
    }
    h->owned = true;
    if ((r = cluster_build(cfg, h, err)) < 0)
        goto fail;
    long agent_timeout = 0;
    if ((r = vmsh_kvconf_get_int(cfg->conf, "agent-timeout", 1, 300, &agent_timeout, err)) < 0)
        return r;
    vmsh_provider_ops *pull = NULL;
    if ((r = vmsh_pull_provider_new(&pull, cfg->uri, err)) < 0)
        goto fail;
    if (add_provider(h, pull) < 0) {
        vmsh_provider_free(pull);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    vmsh_vm_writer_config vc = {
        .uri = cfg->uri,
        .state_dir = cfg->state_dir,
        .scratch_dir = vmsh_kvconf_get(cfg->conf, "scratch-dir"),
        .agent_timeout_s = (int)agent_timeout,
        .host_ops = h->cluster_host ? vmsh_cluster_host_ops(h->cluster_host) : NULL,
    };
    vmsh_writer_ops *vmw = NULL;
    if ((r = vmsh_vm_writer_new(&vmw, &vc, pull, &vmsh_pull_capture_ops, err)) < 0)
        goto fail;
    if (add_writer(h, vmw) < 0) {
        vmsh_writer_free(vmw);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    h->vm_writer = vmw;

    char **paths = NULL;
    size_t np = 0;
    if ((r = vmsh_script_writer_paths(cfg->writers_dir, &paths, &np, err)) < 0)
        goto fail;
    for (size_t i = 0; i < np; i++) {
        vmsh_writer_ops *sw = NULL;
        vmsh_error *e = NULL;
        if (vmsh_script_writer_load(paths[i], &sw, &e) < 0) {
            if (strict) {
                vmsh_error_propagate(err, &e);
                vmsh_error_prefix(err, "script writer");
                r = -EINVAL;
                vmsh_script_writer_paths_free(paths);
                goto fail;
            }
            req_broken *b = vmsh_realloc_array(h->broken, h->n_broken + 1, sizeof(*b));
            if (b) {
                h->broken = b;
                b = &h->broken[h->n_broken++];
                memset(b, 0, sizeof(*b));
                b->path = strdup(paths[i]);
                b->name = vmsh_script_writer_default_name(paths[i]);
                b->message = strdup(e->message);
                if (!b->name || vmsh_script_writer_id(b->name, b->id, NULL) < 0)
                    b->id[0] = '\0';
            }
            vmsh_error_free(e);
            continue;
        }
        if (add_writer(h, sw) < 0) {
            vmsh_writer_free(sw);
            vmsh_script_writer_paths_free(paths);
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
    }
    vmsh_script_writer_paths_free(paths);
    return 0;
fail:
    req_host_clear(h);
    return r;
}

int req_coord_config(const vmsh_requestor_config *cfg, vmsh_coord_config *out, vmsh_error **err)
{
    long event_timeout = VMSH_DEFAULT_EVENT_TIMEOUT_MS / 1000;
    long freeze_limit = VMSH_DEFAULT_FREEZE_LIMIT_MS / 1000;
    int r;
    if ((r = vmsh_kvconf_get_int(cfg->conf, "event-timeout", 1, 86400, &event_timeout, err)) < 0 ||
        (r = vmsh_kvconf_get_int(cfg->conf, "freeze-limit", 1, 3600, &freeze_limit, err)) < 0)
        return r;
    *out = (vmsh_coord_config){
        .state_dir = cfg->state_dir,
        .event_timeout_ms = event_timeout * 1000,
        .freeze_limit_ms = freeze_limit * 1000,
        .cancel = cfg->cancel,
    };
    return 0;
}

/* The name a file of a backup has in the repository: unique within the
 * backup. The VM writer's files go under the VM's name alone, as `show` and
 * `extract` name them; other writers' under "writer/component/". */
char *req_file_name(const vmsh_metadata *md, const vmsh_component *c, const vmsh_file *f)
{
    char *name = NULL;
    int r;
    if (strcmp(vmsh_metadata_writer_id(md), VMSH_VM_WRITER_ID) == 0)
        r = asprintf(&name, "%s/%s", vmsh_component_name(c), vmsh_file_name(f));
    else
        r = asprintf(&name, "%s/%s/%s", vmsh_metadata_writer_name(md), vmsh_component_name(c),
                     vmsh_file_name(f));
    return r < 0 ? NULL : name;
}

static void say(void (*fn)(void *, const char *), void *opaque, const char *fmt, va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        return;
    fn(opaque, msg);
    free(msg);
}

void req_warn(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
{
    if (!cb || !cb->warning)
        return;
    va_list ap;
    va_start(ap, fmt);
    say(cb->warning, cb->opaque, fmt, ap);
    va_end(ap);
}

void req_debug(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
{
    if (!cb || !cb->debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    say(cb->debug, cb->opaque, fmt, ap);
    va_end(ap);
}

void req_step(const vmsh_requestor_callbacks *cb, const char *step, bool end, int result,
              int64_t ms)
{
    if (!cb)
        return;
    if (!end && cb->step_begin)
        cb->step_begin(cb->opaque, VMSH_ACTOR_REQUESTOR, "requestor", step);
    else if (end && cb->step_end)
        cb->step_end(cb->opaque, VMSH_ACTOR_REQUESTOR, "requestor", step, result, ms);
}

/* ---- `vmshadow writers` ---- */

void req_file_progress(void *opaque, uint64_t done, uint64_t total)
{
    req_progress *p = opaque;
    p->cb->progress(p->cb->opaque, p->name, done, total);
}

void vmsh_requestor_writers_free(vmsh_requestor_writer_info *a, size_t n)
{
    for (size_t i = 0; a && i < n; i++) {
        free(a[i].name);
        free(a[i].id);
        free(a[i].kind);
        free(a[i].file);
        free(a[i].invalid);
    }
    free(a);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int vmsh_requestor_writers(const vmsh_requestor_config *cfg, vmsh_requestor_writer_info **out,
                           size_t *n, vmsh_error **err)
{
    char **paths = NULL;
    size_t np = 0;
    int r;
    if ((r = vmsh_script_writer_paths(cfg->writers_dir, &paths, &np, err)) < 0)
        return r;
    vmsh_requestor_writer_info *a = vmsh_calloc_array(np + 1, sizeof(*a));
    if (!a) {
        vmsh_script_writer_paths_free(paths);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* The VM writer is always there, with its fixed identity (R17). */
    a[0] = (vmsh_requestor_writer_info){.name = strdup(VMSH_VM_WRITER_NAME),
                                        .id = strdup(VMSH_VM_WRITER_ID),
                                        .kind = strdup(VMSH_VM_WRITER_KIND)};
    for (size_t i = 0; i < np; i++) {
        vmsh_requestor_writer_info *x = &a[i + 1];
        vmsh_writer_ops *w = NULL;
        vmsh_error *e = NULL;
        x->file = strdup(paths[i]);
        if (vmsh_script_writer_load(paths[i], &w, &e) < 0) {
            char *name = vmsh_script_writer_default_name(paths[i]);
            char id[37] = "";
            if (name)
                vmsh_script_writer_id(name, id, NULL);
            x->name = name ? name : strdup(paths[i]);
            x->id = strdup(id);
            x->kind = strdup(VMSH_SCRIPT_WRITER_KIND);
            x->invalid = strdup(e->message);
            vmsh_error_free(e);
            continue;
        }
        x->name = dup_or_null(w->name);
        x->id = dup_or_null(w->id);
        x->kind = dup_or_null(w->kind);
        vmsh_writer_free(w);
    }
    vmsh_script_writer_paths_free(paths);
    *out = a;
    *n = np + 1;
    return 0;
}
