/* cluster.h - which VMs a Pacemaker cluster manages, and the few cluster
 * operations a backup or restore of such a VM needs (SPEC R16, issue 22).
 *
 * A VM is cluster-managed when an ocf:heartbeat:VirtualDomain primitive's
 * `config` file defines it: the agent defines the domain from that file at
 * every start and takes a domain that is `shut off` for a failure, which it
 * then recovers. The state comes from Pacemaker's own tools (cibadmin
 * --query, crm_mon --output-as=xml, crm_node -n) run without a shell; their
 * XML is parsed with libxml2 and never fetches anything.
 *
 * A host without Pacemaker costs nothing: when no cibadmin is in PATH no
 * process is spawned, and when no CIB listens (no "@cib_ro" socket in
 * /proc/net/unix) none either; vmsh_cluster_probe then gives NULL.
 */
#ifndef VMSH_HV_CLUSTER_H
#define VMSH_HV_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vmshadow/util/error.h>

typedef struct vmsh_cluster_rsc {
    char *id;         /* the primitive's id */
    char *config;     /* its `config` instance attribute (a domain XML file) */
    char *hypervisor; /* its `hypervisor` attribute, NULL when not set */
    /* From the config file (vmsh_cluster_read_configs): the domain it
     * defines, or why it could not be read. */
    char *domain;
    char *uuid; /* NULL when the file has none */
    char *config_error;
    /* meta attributes as the CIB holds them; NULL when not set */
    char *meta_target_role;
    char *meta_is_managed;
    char *meta_maintenance;
    /* From crm_mon: its role ("Started", "Stopped", "Starting", ...), the
     * node it is active on (NULL when on none), and flags. */
    char *role;
    char *node;
    bool active;
    bool managed; /* false when unmanaged or in maintenance, by any means */
    bool failed;
    bool blocked;
    int fail_count; /* the highest fail-count of any node */
    int n_failures; /* failed actions (crm_mon <failure>) of this resource */
} vmsh_cluster_rsc;

typedef struct vmsh_cluster {
    char *local_node;       /* this host's node name (crm_node -n); NULL: unknown */
    bool quorum;            /* the partition has quorum (crm_mon) */
    bool maintenance_mode;  /* cluster-wide maintenance-mode */
    vmsh_cluster_rsc *rscs; /* the VirtualDomain primitives */
    size_t n_rscs;
} vmsh_cluster;

void vmsh_cluster_free(vmsh_cluster *c);

/* Parses `cibadmin --query` and `crm_mon --output-as=xml --inactive` output
 * (both NUL-terminated). Config files are not read (vmsh_cluster_read_configs).
 * Expected errors: -EINVAL (not the XML these tools print). */
int vmsh_cluster_parse(const char *cib_xml, const char *mon_xml, vmsh_cluster **out,
                       vmsh_error **err);

/* Reads each resource's config file (name and UUID of the domain it
 * defines); a file that cannot be read or parsed sets that resource's
 * config_error, not an error. */
void vmsh_cluster_read_configs(vmsh_cluster *c);

/* Queries the cluster of this host: *out NULL (and 0) when Pacemaker is
 * absent or not running here. Expected errors: -EIO (a tool failed or
 * printed something unexpected; the message names it), -ETIMEDOUT. */
int vmsh_cluster_probe(vmsh_cluster **out, vmsh_error **err);

/* The resource whose config file defines the domain `name` (or, when
 * `uuid` is known, a domain of that UUID), or NULL. *mismatch (may be NULL)
 * is set when the config file and the VM agree on only one of name and
 * UUID: the file then names another domain, which vmsh_cluster_check
 * refuses (issue 22 point 4). */
const vmsh_cluster_rsc *vmsh_cluster_find(const vmsh_cluster *c, const char *name, const char *uuid,
                                          bool *mismatch);
const vmsh_cluster_rsc *vmsh_cluster_find_id(const vmsh_cluster *c, const char *id);

/* "managed", "unmanaged", "maintenance" (the resource's, or the cluster's). */
const char *vmsh_cluster_rsc_mode(const vmsh_cluster *c, const vmsh_cluster_rsc *r);

/* Sets (value non-NULL) or deletes (value NULL) a meta attribute of
 * resource `id` (crm_resource --meta; never a constraint). */
int vmsh_cluster_set_meta(const char *id, const char *name, const char *value, vmsh_error **err);

/* What vmsh_cluster_wait waits for. */
typedef enum {
    VMSH_CLUSTER_WAIT_UNMANAGED, /* the CIB holds is-managed=false and crm_mon says unmanaged */
    VMSH_CLUSTER_WAIT_MANAGED,   /* crm_mon says managed */
    VMSH_CLUSTER_WAIT_STOPPED,   /* role Stopped, active on no node */
    VMSH_CLUSTER_WAIT_STARTED,   /* role Started on `node` */
} vmsh_cluster_wait_for;

/* Polls the cluster until resource `id` is in the state asked for, at most
 * `timeout_ms`. Expected errors: -ETIMEDOUT (the message says what the
 * cluster reported last), -ENOENT (no such resource), those of probe. */
int vmsh_cluster_wait(const char *id, vmsh_cluster_wait_for what, const char *node,
                      int64_t timeout_ms, vmsh_error **err);

/* The refusals of issue 22 point 4 for acting on resource `r` from this
 * host, in the order a user fixes them: no quorum, a failed or blocked
 * resource, a config file that names another domain, the VM active on
 * another node (the message names it). `need_config_writable`: a restore
 * rewrites the config file, so it must be writable. Expected errors:
 * -EPERM (another node), -EBUSY (bad state), -EACCES (config not writable). */
int vmsh_cluster_check(const vmsh_cluster *c, const vmsh_cluster_rsc *r, const char *vm,
                       const char *uuid, bool need_config_writable, vmsh_error **err);

/* --- the steps a backup or restore of a clustered VM takes (issue 22
 * points 2-3). Each is one cluster change that the caller journals first
 * (STYLE.md, "Rollback"); the journal data is what the matching undo needs:
 * the resource and the meta attribute's prior value. */

/* Puts resource `id` in maintenance (meta maintenance=true: the cluster
 * neither monitors, recovers nor stops it; is-managed=false would leave the
 * monitor running, which records a failure for a VM that a save shut off)
 * and waits until the CIB holds it and crm_mon reports the resource
 * unmanaged, at most `timeout_ms`. */
int vmsh_cluster_hold(const char *id, int64_t timeout_ms, vmsh_error **err);
/* Gives control back: meta maintenance back to `prior` (NULL: deleted, as
 * it was not set), then waits until crm_mon reports it managed again. */
int vmsh_cluster_release(const char *id, const char *prior, int64_t timeout_ms, vmsh_error **err);
/* Stops resource `id` through the cluster (target-role=Stopped) and waits
 * until crm_mon reports it stopped on every node. Never a ban or location
 * constraint. */
int vmsh_cluster_stop(const char *id, int64_t timeout_ms, vmsh_error **err);
/* Puts back the target-role the resource had (`prior` NULL: deleted) and,
 * when that lets it run, waits until it is started on `node`. */
int vmsh_cluster_start(const char *id, const char *prior, const char *node, int64_t timeout_ms,
                       vmsh_error **err);
/* Replaces the resource's config file with `xml` atomically (a temporary
 * file beside it, renamed over it), keeping its mode. */
int vmsh_cluster_write_config(const char *path, const char *xml, vmsh_error **err);

#endif
