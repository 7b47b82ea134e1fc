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
    /* Issue 22 (R16): this host's Pacemaker cluster when one runs and has a
     * VirtualDomain resource (else NULL); then the VM writer gets the
     * cluster-aware host operations (hv/hostops_cluster.h). The owner of
     * the cluster steps' journal entries is always there, for recover. */
    struct vmsh_cluster *cluster;
    struct vmsh_cluster_host *cluster_host;
    vmsh_provider_ops *cluster_owner;
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

/* ---- cluster.c: VMs a Pacemaker cluster manages (issue 22, R16) */
int req_cluster_owner_new(const char *uri, vmsh_provider_ops **out);
/* vmsh_coord_recover with the host's writers and providers and the owner
 * of the cluster steps' entries. */
int req_recover_with_cluster(const vmsh_coord_config *ccfg, const req_host *h,
                             vmsh_recover_report **out, vmsh_error **err);
/* Refuses a backup of a named VM that the cluster runs on another node
 * (naming it), and, for the saved-state method, one in a bad state
 * (vmsh_cluster_check): before anything changes. With so->all, the VMs
 * defined on this host (`local_vms`, read only then) that the cluster runs
 * on another node are refused the same way. */
int req_cluster_backup_check(const req_host *h, const vmsh_set_options *so,
                             const char *const *local_vms, size_t n_local, vmsh_error **err);
/* req_cluster_backup_check with, for --all on a cluster node, the VMs
 * defined on this host read through libvirt at `uri`. */
int req_cluster_backup_refusals(const req_host *h, const char *uri, const vmsh_set_options *so,
                                vmsh_error **err);
/* The cluster steps of a restore: planned (refusals of issue 22 point 4,
 * the steps added to each VM's plan entry as "cluster"; *out NULL when no
 * selected VM is the cluster's), the resources stopped through the cluster
 * before the restore, and after it each restored VM's definition written
 * to its resource's config file and the resource started again. */
typedef struct req_cluster_restore req_cluster_restore;
int req_cluster_restore_plan(const req_host *h, vmsh_metadata *md, const vmsh_set_options *so,
                             struct json_object *plan, req_cluster_restore **out, vmsh_error **err);
int req_cluster_restore_stop(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                             req_cluster_restore *rc, vmsh_error **err);
int req_cluster_restore_end(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                            req_cluster_restore *rc, struct json_object *done, vmsh_error **err);
void req_cluster_restore_free(req_cluster_restore *rc);

/* ---- rundir.c: private session directories in the run directory, removed
 * by the next command when their owner died (issue 23) */
/* The run directory: $VMSHADOW_RUN_DIR, else /run/vmshadow for root, else
 * $XDG_RUNTIME_DIR/vmshadow, else /tmp/vmshadow-UID (in buf). */
const char *req_run_base(char *buf, size_t size);
/* Makes RUN/session-XXXXXX, locked by this process while *lock_fd is
 * open (close-on-exec); sweeps dead ones first. */
int req_session_create(char **dir, int *lock_fd, vmsh_error **err);
/* Notes libguestfs's socket directory (which root's libguestfs puts in
 * /tmp whatever the environment says) for removal with the session. */
int req_session_note_guestfs(const char *dir, const char *sockdir);
/* The directory of `path` when it is libguestfs's socket directory in
 * `parent` (guestfs_get_sockdir: "PARENT/libguestfsXXXXXX/NAME", NAME a
 * plain file name): malloc'ed, else NULL. Pure. */
char *req_guestfs_sockdir_of(const char *parent, const char *path);
/* libguestfs's socket directory in `parent` that this process has a unix
 * socket bound in (its descriptors, getsockname: the appliance's
 * guestfsd.sock, listening during the launch, accepted after it, with
 * direct and libvirt backends), malloc'ed; NULL when none. */
char *req_guestfs_own_sockdir(const char *parent);
/* Removes the session directory (and the noted one), then the lock. */
void req_session_remove(const char *dir, int lock_fd);
/* Removes every session directory whose owner is dead; quiet. */
void req_session_sweep(void);
/* serve.c: a session's private directory, or NULL (--socket). */
struct vmsh_serve_session;
const char *req_serve_session_dir(const struct vmsh_serve_session *s);

void req_warn(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void req_debug(const vmsh_requestor_callbacks *cb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void req_step(const vmsh_requestor_callbacks *cb, const char *step, bool end, int result,
              int64_t ms);
/* The progress of one file's copy (a backup's or a restore's) passed on to
 * the caller's progress callback under the file's name: the repository's
 * progress function is req_file_progress, its opaque a req_progress. */
typedef struct req_progress {
    const vmsh_requestor_callbacks *cb;
    const char *name;
} req_progress;
void req_file_progress(void *opaque, uint64_t done, uint64_t total);

#endif
