/* host.c - what the commands that run sets share: the writers and providers
 * of this host, the coordinator's configuration, repository file names. */
#include "cli.h"

#include <vmshadow/providers/pull.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/script_writer.h>
#include <vmshadow/writers/vm_writer.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the writers and providers of this host ---- */

void vmsh_cli_host_writers_clear(vmsh_cli_host_writers *h)
{
    for (size_t i = 0; i < h->n; i++) {
        vmsh_writer_free(h->w[i]);
        if (h->paths)
            free(h->paths[i]);
    }
    for (size_t i = 0; i < h->np; i++)
        vmsh_provider_free(h->p[i]);
    for (size_t i = 0; i < h->n_broken; i++) {
        free(h->broken[i].path);
        free(h->broken[i].name);
        free(h->broken[i].message);
    }
    free(h->w);
    free(h->p);
    free(h->paths);
    free(h->broken);
    memset(h, 0, sizeof(*h));
}

static int add_writer(vmsh_cli_host_writers *h, vmsh_writer_ops *w, const char *path)
{
    vmsh_writer_ops **a = vmsh_realloc_array(h->w, h->n + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    h->w = a;
    char **p = vmsh_realloc_array(h->paths, h->n + 1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    h->paths = p;
    h->paths[h->n] = path ? strdup(path) : NULL;
    h->w[h->n++] = w;
    return 0;
}

static int add_provider(vmsh_cli_host_writers *h, vmsh_provider_ops *pr)
{
    vmsh_provider_ops **a = vmsh_realloc_array(h->p, h->np + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    h->p = a;
    h->p[h->np++] = pr;
    return 0;
}

/* THE place where the writers of a set are built: the VM writer (with the
 * pull provider it captures disks through) first, then every script writer
 * of the writers directory in file-name order. With `strict`, a script
 * writer file that does not load fails the call (a backup must not run
 * without a configured writer); otherwise it is kept in h->broken. */
int vmsh_cli_build_writers(vmsh_cli *cli, bool strict, vmsh_cli_host_writers *h, vmsh_error **err)
{
    memset(h, 0, sizeof(*h));
    int r;
    long agent_timeout = 0;
    if ((r = vmsh_kvconf_get_int(cli->config, "agent-timeout", 1, 300, &agent_timeout, err)) < 0)
        return r;
    vmsh_provider_ops *pull = NULL;
    if ((r = vmsh_pull_provider_new(&pull, cli->uri, err)) < 0)
        goto fail;
    if (add_provider(h, pull) < 0) {
        vmsh_provider_free(pull);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    vmsh_vm_writer_config vc = {
        .uri = cli->uri,
        .state_dir = cli->state_dir,
        .scratch_dir = vmsh_kvconf_get(cli->config, "scratch-dir"),
        .agent_timeout_s = (int)agent_timeout,
    };
    vmsh_writer_ops *vmw = NULL;
    if ((r = vmsh_vm_writer_new(&vmw, &vc, pull, err)) < 0)
        goto fail;
    if (add_writer(h, vmw, NULL) < 0) {
        vmsh_writer_free(vmw);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    h->vm_writer = vmw;

    char **paths = NULL;
    size_t np = 0;
    if ((r = vmsh_script_writer_paths(cli->writers_dir, &paths, &np, err)) < 0)
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
            broken_writer *b = vmsh_realloc_array(h->broken, h->n_broken + 1, sizeof(*b));
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
        if (add_writer(h, sw, paths[i]) < 0) {
            vmsh_writer_free(sw);
            vmsh_script_writer_paths_free(paths);
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
    }
    vmsh_script_writer_paths_free(paths);
    return 0;
fail:
    vmsh_cli_host_writers_clear(h);
    return r;
}

int vmsh_cli_coord_config(vmsh_cli *cli, vmsh_coord_config *cfg, vmsh_error **err)
{
    long event_timeout = VMSH_DEFAULT_EVENT_TIMEOUT_MS / 1000;
    long freeze_limit = VMSH_DEFAULT_FREEZE_LIMIT_MS / 1000;
    int r;
    if ((r = vmsh_kvconf_get_int(cli->config, "event-timeout", 1, 86400, &event_timeout, err)) <
            0 ||
        (r = vmsh_kvconf_get_int(cli->config, "freeze-limit", 1, 3600, &freeze_limit, err)) < 0)
        return r;
    *cfg = (vmsh_coord_config){
        .state_dir = cli->state_dir,
        .event_timeout_ms = event_timeout * 1000,
        .freeze_limit_ms = freeze_limit * 1000,
    };
    return 0;
}

/* The name a file of a backup has in the repository: unique within the
 * backup. The VM writer's files go under the VM's name alone, as `show` and
 * `extract` name them; other writers' under "writer/component/". */
char *vmsh_cli_repo_file_name(const vmsh_metadata *md, const vmsh_component *c, const vmsh_file *f)
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
