/* requestor_priv.h - what the requestor's files share (issue 21). */
#ifndef VMSH_REQUESTOR_PRIV_H
#define VMSH_REQUESTOR_PRIV_H

#include <vmshadow/requestor/requestor.h>

typedef struct req_broken {
    char *path, *name, *message;
    char id[37];
} req_broken;

/* The writers and providers of a run: the host's (built, owned) or the
 * caller's (cfg->writers, borrowed). */
typedef struct req_host {
    vmsh_writer_ops **w;
    size_t n;
    vmsh_provider_ops **p;
    size_t np;
    vmsh_writer_ops *vm_writer; /* also in w[]; NULL when the caller's */
    req_broken *broken;         /* script writer files that do not load */
    size_t n_broken;
    bool owned;
} req_host;

/* THE place where the writers of a set are built: the VM writer (with the
 * pull provider it captures disks through) first, then every script writer
 * of the writers directory in file-name order. With `strict`, a script
 * writer file that does not load fails the call (a backup must not run
 * without a configured writer); otherwise it is kept in h->broken. With
 * cfg->writers, those instead. */
int req_host_build(const vmsh_requestor_config *cfg, bool strict, req_host *h, vmsh_error **err);
void req_host_clear(req_host *h);
/* The coordinator's configuration from cfg->conf. */
int req_coord_config(const vmsh_requestor_config *cfg, vmsh_coord_config *out, vmsh_error **err);
/* A file's name in the repository (malloc'ed; NULL on ENOMEM). */
char *req_file_name(const vmsh_metadata *md, const vmsh_component *c, const vmsh_file *f);

void req_warn(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void req_debug(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void req_step(const vmsh_requestor_callbacks *cb, const char *step, bool end, int result,
              int64_t ms);

#endif
