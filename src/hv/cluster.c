/* cluster.c - Pacemaker-managed VMs (SPEC R16, issue 22; cluster.h).
 *
 * Pacemaker's own tools are the interface: their XML output is stable and
 * versioned (crm_mon's api-version), where linking libcib would tie us to a
 * library that Debian does not ship headers of in the same package. Each
 * tool runs without a shell, with a timeout; a host without them spawns
 * nothing. */
#include <vmshadow/hv/cluster.h>
#include <vmshadow/hv/domxml.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

/* The tools answer in well under a second on a healthy cluster; a CIB that
 * does not answer in this time is a fault worth an error, not a wait. */
#define TOOL_TIMEOUT_MS 15000
#define TOOL_MAX_OUTPUT (16u << 20)
#define POLL_MS         500

static void rsc_clear(vmsh_cluster_rsc *r)
{
    free(r->id);
    free(r->config);
    free(r->hypervisor);
    free(r->domain);
    free(r->uuid);
    free(r->config_error);
    free(r->meta_target_role);
    free(r->meta_is_managed);
    free(r->meta_maintenance);
    free(r->role);
    free(r->node);
}

void vmsh_cluster_free(vmsh_cluster *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_rscs; i++)
        rsc_clear(&c->rscs[i]);
    free(c->rscs);
    free(c->local_node);
    free(c);
}

static char *prop(xmlNodePtr n, const char *name)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    char *s = strdup((const char *)v);
    xmlFree(v);
    return s;
}

static bool prop_is(xmlNodePtr n, const char *name, const char *want)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    bool eq = v && strcmp((const char *)v, want) == 0;
    xmlFree(v);
    return eq;
}

static bool truthy(const char *v)
{
    return v && (strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
                 strcasecmp(v, "on") == 0 || strcmp(v, "1") == 0 || strcasecmp(v, "y") == 0);
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr k = n ? n->children : NULL; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && strcmp((const char *)k->name, name) == 0)
            return k;
    return NULL;
}

/* The value of nvpair `name` in the first `set` (instance_attributes,
 * meta_attributes) of primitive `p` that has one. */
static char *nvpair(xmlNodePtr p, const char *set, const char *name)
{
    for (xmlNodePtr s = p->children; s; s = s->next) {
        if (s->type != XML_ELEMENT_NODE || strcmp((const char *)s->name, set) != 0)
            continue;
        for (xmlNodePtr nv = s->children; nv; nv = nv->next)
            if (nv->type == XML_ELEMENT_NODE && strcmp((const char *)nv->name, "nvpair") == 0 &&
                prop_is(nv, "name", name))
                return prop(nv, "value");
    }
    return NULL;
}

static xmlDocPtr parse(const char *xml, const char *what, vmsh_error **err)
{
    size_t len = strlen(xml);
    if (len > TOOL_MAX_OUTPUT) {
        vmsh_error_set(err, -EFBIG, "%s: %zu bytes, more than expected", what, len);
        return NULL;
    }
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, what, NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        vmsh_error_set(err, -EINVAL, "%s is not well-formed XML", what);
    return doc;
}

static xmlXPathObjectPtr xpath(xmlXPathContextPtr ctx, const char *expr)
{
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    if (o && (!o->nodesetval || o->nodesetval->nodeNr == 0)) {
        xmlXPathFreeObject(o);
        return NULL;
    }
    return o;
}

static int parse_cib(vmsh_cluster *c, const char *cib_xml, vmsh_error **err)
{
    xmlDocPtr doc = parse(cib_xml, "the CIB (cibadmin --query)", err);
    if (!doc)
        return -EINVAL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "cib") != 0) {
        xmlFreeDoc(doc);
        return vmsh_error_set(err, -EINVAL, "the CIB (cibadmin --query) has no <cib> root");
    }
    int rc = 0;
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx) {
        xmlFreeDoc(doc);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* Primitives anywhere under <resources>: alone, in a group or a clone. */
    xmlXPathObjectPtr o = xpath(ctx, "/cib/configuration/resources//primitive[@class='ocf' and "
                                     "@provider='heartbeat' and @type='VirtualDomain']");
    size_t n = o ? (size_t)o->nodesetval->nodeNr : 0;
    if (n) {
        c->rscs = calloc(n, sizeof(*c->rscs));
        if (!c->rscs)
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        xmlNodePtr p = o->nodesetval->nodeTab[i];
        vmsh_cluster_rsc *r = &c->rscs[c->n_rscs];
        r->id = prop(p, "id");
        if (!r->id)
            continue; /* the CIB's schema forbids it; skip rather than guess */
        c->n_rscs++;
        r->config = nvpair(p, "instance_attributes", "config");
        r->hypervisor = nvpair(p, "instance_attributes", "hypervisor");
        r->meta_target_role = nvpair(p, "meta_attributes", "target-role");
        r->meta_is_managed = nvpair(p, "meta_attributes", "is-managed");
        r->meta_maintenance = nvpair(p, "meta_attributes", "maintenance");
        r->managed = true;
    }
    if (o)
        xmlXPathFreeObject(o);
    xmlXPathFreeContext(ctx);
    xmlFreeDoc(doc);
    return rc;
}

static int parse_mon(vmsh_cluster *c, const char *mon_xml, vmsh_error **err)
{
    xmlDocPtr doc = parse(mon_xml, "crm_mon --output-as=xml", err);
    if (!doc)
        return -EINVAL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "pacemaker-result") != 0) {
        xmlFreeDoc(doc);
        return vmsh_error_set(err, -EINVAL, "crm_mon printed no <pacemaker-result>");
    }
    xmlNodePtr summary = child(root, "summary");
    xmlNodePtr dc = child(summary, "current_dc");
    c->quorum = dc && prop_is(dc, "with_quorum", "true");
    xmlNodePtr opts = child(summary, "cluster_options");
    c->maintenance_mode = opts && prop_is(opts, "maintenance-mode", "true");
    for (size_t i = 0; i < c->n_rscs; i++) {
        vmsh_cluster_rsc *r = &c->rscs[i];
        r->role = strdup("Unknown");
        for (xmlNodePtr res = child(root, "resources") ? child(root, "resources")->children : NULL;
             res; res = res->next) {
            /* a primitive in a group is nested one level down */
            xmlNodePtr cand = res;
            if (res->type == XML_ELEMENT_NODE && strcmp((const char *)res->name, "group") == 0) {
                for (cand = res->children; cand; cand = cand->next)
                    if (cand->type == XML_ELEMENT_NODE && prop_is(cand, "id", r->id))
                        break;
                if (!cand)
                    continue;
            }
            if (cand->type != XML_ELEMENT_NODE ||
                strcmp((const char *)cand->name, "resource") != 0 || !prop_is(cand, "id", r->id))
                continue;
            free(r->role);
            r->role = prop(cand, "role");
            r->active = prop_is(cand, "active", "true");
            r->managed = !prop_is(cand, "managed", "false");
            r->failed = prop_is(cand, "failed", "true");
            r->blocked = prop_is(cand, "blocked", "true");
            xmlNodePtr nd = child(cand, "node");
            r->node = nd ? prop(nd, "name") : NULL;
            break;
        }
        for (xmlNodePtr nd = child(root, "node_history") ? child(root, "node_history")->children
                                                         : NULL;
             nd; nd = nd->next) {
            for (xmlNodePtr h = nd->children; h; h = h->next) {
                if (h->type != XML_ELEMENT_NODE || !prop_is(h, "id", r->id))
                    continue;
                _cleanup_free_ char *fc = prop(h, "fail-count");
                if (!fc)
                    continue;
                int v = strcasecmp(fc, "INFINITY") == 0 ? 1000000 : atoi(fc);
                if (v > r->fail_count)
                    r->fail_count = v;
            }
        }
        size_t idlen = strlen(r->id);
        for (xmlNodePtr f = child(root, "failures") ? child(root, "failures")->children : NULL; f;
             f = f->next) {
            if (f->type != XML_ELEMENT_NODE)
                continue;
            _cleanup_free_ char *key = prop(f, "op_key");
            if (key && strncmp(key, r->id, idlen) == 0 && key[idlen] == '_')
                r->n_failures++;
        }
        if (!r->role) {
            xmlFreeDoc(doc);
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        }
    }
    xmlFreeDoc(doc);
    return 0;
}

int vmsh_cluster_parse(const char *cib_xml, const char *mon_xml, vmsh_cluster **out,
                       vmsh_error **err)
{
    *out = NULL;
    vmsh_cluster *c = calloc(1, sizeof(*c));
    if (!c)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = parse_cib(c, cib_xml, err);
    if (r == 0)
        r = parse_mon(c, mon_xml, err);
    if (r < 0) {
        vmsh_cluster_free(c);
        return r;
    }
    *out = c;
    return 0;
}

void vmsh_cluster_read_configs(vmsh_cluster *c)
{
    for (size_t i = 0; c && i < c->n_rscs; i++) {
        vmsh_cluster_rsc *r = &c->rscs[i];
        if (!r->config) {
            r->config_error = strdup("the resource has no config parameter");
            continue;
        }
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        vmsh_error *e = NULL;
        vmsh_domxml *x = NULL;
        if (vmsh_fs_read_all(r->config, VMSH_DOMXML_MAX_BYTES, &text, &len, &e) < 0 ||
            vmsh_domxml_parse(&x, text, len, &e) < 0) {
            r->config_error = strdup(e ? e->message : "cannot read the config file");
            vmsh_error_free(e);
            continue;
        }
        r->domain = x->name ? strdup(x->name) : NULL;
        r->uuid = x->uuid ? strdup(x->uuid) : NULL;
        vmsh_domxml_free(x);
    }
}

/* Whether `cmd` is an executable in PATH: looked up here so that a host
 * without Pacemaker spawns no process at all. */
static bool in_path(const char *cmd)
{
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    _cleanup_free_ char *copy = strdup(path);
    if (!copy)
        return false;
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        _cleanup_free_ char *full = vmsh_path_join(dir, cmd);
        if (full && access(full, X_OK) == 0)
            return true;
    }
    return false;
}

/* Pacemaker's CIB listens on the abstract socket "@cib_ro" (libqb): when
 * /proc/net/unix is readable and shows none, no CIB runs here. -1 when it
 * cannot tell. */
static int cib_socket_present(void)
{
    FILE *f = fopen("/proc/net/unix", "re");
    if (!f)
        return -1;
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *at = strstr(line, " @cib_ro");
        /* the kernel shows an abstract name's NUL padding as '@' */
        found = at && (at[8] == '\n' || at[8] == '\0' || at[8] == ' ' || at[8] == '@');
    }
    fclose(f);
    return found;
}

static int run_tool(char *const argv[], char **out, vmsh_error **err)
{
    size_t len = 0;
    int r = vmsh_proc_capture(argv, TOOL_TIMEOUT_MS, TOOL_MAX_OUTPUT, out, &len, err);
    if (r < 0)
        vmsh_error_prefix(err, "Pacemaker");
    return r;
}

static int probe(vmsh_cluster **out, bool configs, bool local, vmsh_error **err)
{
    *out = NULL;
    if (!in_path("cibadmin") || !in_path("crm_mon") || cib_socket_present() == 0)
        return 0;
    _cleanup_free_ char *cib = NULL, *mon = NULL, *node = NULL;
    char *const cib_argv[] = {"cibadmin", "--query", "--timeout", "10", NULL};
    char *const mon_argv[] = {"crm_mon", "--output-as=xml", "--inactive", NULL};
    int r = run_tool(cib_argv, &cib, err);
    if (r == 0)
        r = run_tool(mon_argv, &mon, err);
    if (r < 0)
        return r;
    vmsh_cluster *c = NULL;
    r = vmsh_cluster_parse(cib, mon, &c, err);
    if (r < 0)
        return r;
    if (local && in_path("crm_node")) {
        char *const node_argv[] = {"crm_node", "--name", NULL};
        vmsh_error *e = NULL;
        if (run_tool(node_argv, &node, &e) == 0) {
            node[strcspn(node, "\r\n")] = '\0';
            if (*node)
                c->local_node = strdup(node);
        }
        vmsh_error_free(e);
    }
    if (configs)
        vmsh_cluster_read_configs(c);
    *out = c;
    return 0;
}

int vmsh_cluster_probe(vmsh_cluster **out, vmsh_error **err)
{
    return probe(out, true, true, err);
}

const vmsh_cluster_rsc *vmsh_cluster_find(const vmsh_cluster *c, const char *name, const char *uuid,
                                          bool *mismatch)
{
    if (mismatch)
        *mismatch = false;
    if (!c)
        return NULL;
    const vmsh_cluster_rsc *by_uuid = NULL;
    for (size_t i = 0; i < c->n_rscs; i++) {
        const vmsh_cluster_rsc *r = &c->rscs[i];
        bool name_eq = r->domain && name && strcmp(r->domain, name) == 0;
        bool uuid_known = r->uuid && uuid;
        bool uuid_eq = uuid_known && strcasecmp(r->uuid, uuid) == 0;
        if (name_eq) {
            if (mismatch)
                *mismatch = uuid_known && !uuid_eq;
            return r;
        }
        if (uuid_eq && !by_uuid)
            by_uuid = r;
    }
    if (by_uuid && mismatch)
        *mismatch = true;
    return by_uuid;
}

const vmsh_cluster_rsc *vmsh_cluster_find_id(const vmsh_cluster *c, const char *id)
{
    for (size_t i = 0; c && i < c->n_rscs; i++)
        if (strcmp(c->rscs[i].id, id) == 0)
            return &c->rscs[i];
    return NULL;
}

const char *vmsh_cluster_rsc_mode(const vmsh_cluster *c, const vmsh_cluster_rsc *r)
{
    if ((c && c->maintenance_mode) || truthy(r->meta_maintenance))
        return "maintenance";
    if (!r->managed || (r->meta_is_managed && !truthy(r->meta_is_managed)))
        return "unmanaged";
    return "managed";
}

int vmsh_cluster_set_meta(const char *id, const char *name, const char *value, vmsh_error **err)
{
    _cleanup_free_ char *out = NULL;
    char *const set_argv[] = {"crm_resource",
                              "--resource",
                              (char *)id,
                              "--meta",
                              "--set-parameter",
                              (char *)name,
                              "--parameter-value",
                              (char *)(value ? value : ""),
                              NULL};
    char *const del_argv[] = {"crm_resource",       "--resource", (char *)id, "--meta",
                              "--delete-parameter", (char *)name, NULL};
    int r = run_tool(value ? set_argv : del_argv, &out, err);
    if (r < 0)
        return vmsh_error_prefix(err, "cannot %s meta attribute %s of resource %s",
                                 value ? "set" : "delete", name, id);
    return 0;
}

static bool reached(const vmsh_cluster_rsc *r, vmsh_cluster_wait_for what, const char *node)
{
    switch (what) {
    case VMSH_CLUSTER_WAIT_UNMANAGED:
        /* in the CIB, and in effect */
        return (truthy(r->meta_maintenance) ||
                (r->meta_is_managed && !truthy(r->meta_is_managed))) &&
               !r->managed;
    case VMSH_CLUSTER_WAIT_MANAGED:
        return r->managed;
    case VMSH_CLUSTER_WAIT_STOPPED:
        return r->role && strcmp(r->role, "Stopped") == 0 && !r->active;
    case VMSH_CLUSTER_WAIT_STARTED:
        return r->role && strcmp(r->role, "Started") == 0 && r->node &&
               (!node || strcmp(r->node, node) == 0);
    }
    return false;
}

static const char *wait_name(vmsh_cluster_wait_for what)
{
    switch (what) {
    case VMSH_CLUSTER_WAIT_UNMANAGED:
        return "unmanaged";
    case VMSH_CLUSTER_WAIT_MANAGED:
        return "managed";
    case VMSH_CLUSTER_WAIT_STOPPED:
        return "stopped";
    case VMSH_CLUSTER_WAIT_STARTED:
        return "started";
    }
    return "?";
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int vmsh_cluster_wait(const char *id, vmsh_cluster_wait_for what, const char *node,
                      int64_t timeout_ms, vmsh_error **err)
{
    int64_t end = now_ms() + timeout_ms;
    char last[160] = "nothing";
    for (;;) {
        vmsh_cluster *c = NULL;
        int r = probe(&c, false, false, err);
        if (r < 0)
            return r;
        if (!c)
            return vmsh_error_set(err, -ENOENT, "the cluster no longer answers (resource %s)", id);
        const vmsh_cluster_rsc *rs = vmsh_cluster_find_id(c, id);
        if (!rs) {
            vmsh_cluster_free(c);
            return vmsh_error_set(err, -ENOENT, "no VirtualDomain resource %s in the cluster", id);
        }
        bool ok = reached(rs, what, node);
        snprintf(last, sizeof(last), "%s%s%s, %s%s", rs->role ? rs->role : "?",
                 rs->node ? " on " : "", rs->node ? rs->node : "", vmsh_cluster_rsc_mode(c, rs),
                 rs->failed ? ", failed" : "");
        vmsh_cluster_free(c);
        if (ok)
            return 0;
        if (now_ms() >= end)
            return vmsh_error_set(
                err, -ETIMEDOUT, "resource %s was not %s%s%s after %lld s; the cluster reports: %s",
                id, wait_name(what), node ? " on " : "", node ? node : "",
                (long long)(timeout_ms / 1000), last);
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int vmsh_cluster_check(const vmsh_cluster *c, const vmsh_cluster_rsc *r, const char *vm,
                       const char *uuid, bool need_config_writable, vmsh_error **err)
{
    if (!c->quorum)
        return vmsh_error_set(err, -EBUSY,
                              "VM %s is managed by cluster resource %s, and the cluster has no "
                              "quorum: nothing was changed; act once the cluster is quorate",
                              vm, r->id);
    if (r->failed || r->blocked || r->n_failures > 0)
        return vmsh_error_set(err, -EBUSY,
                              "cluster resource %s (VM %s) is %s (%d failed action%s, fail count "
                              "%d): nothing was changed; clear it first (crm_resource --cleanup "
                              "--resource %s)",
                              r->id, vm, r->blocked ? "blocked" : "in a failed state",
                              r->n_failures, r->n_failures == 1 ? "" : "s", r->fail_count, r->id);
    if (r->config_error)
        return vmsh_error_set(err, -EBUSY,
                              "the config file of cluster resource %s (%s) cannot be read: %s; "
                              "nothing was changed",
                              r->id, r->config ? r->config : "none", r->config_error);
    if (!r->domain || strcmp(r->domain, vm) != 0 ||
        (uuid && r->uuid && strcasecmp(uuid, r->uuid) != 0))
        return vmsh_error_set(err, -EBUSY,
                              "the config file of cluster resource %s (%s) names domain %s "
                              "(UUID %s), not VM %s (UUID %s): nothing was changed; fix the "
                              "resource's config first",
                              r->id, r->config, r->domain ? r->domain : "?",
                              r->uuid ? r->uuid : "none", vm, uuid ? uuid : "unknown");
    if (r->node && (!c->local_node || strcmp(r->node, c->local_node) != 0))
        return vmsh_error_set(err, -EPERM,
                              "VM %s runs on cluster node %s, not on this host (%s): vmshadow "
                              "acts on its own host only; run it on %s",
                              vm, r->node, c->local_node ? c->local_node : "node unknown", r->node);
    if (need_config_writable) {
        _cleanup_free_ char *dir = vmsh_path_dirname(r->config);
        if (access(r->config, W_OK) != 0 || !dir || access(dir, W_OK) != 0)
            return vmsh_error_set(err, -EACCES,
                                  "the config file of cluster resource %s (%s) is not writable: "
                                  "a restore must rewrite it so that the cluster starts the "
                                  "restored VM; nothing was changed",
                                  r->id, r->config);
    }
    return 0;
}

int vmsh_cluster_hold(const char *id, int64_t timeout_ms, vmsh_error **err)
{
    int r = vmsh_cluster_set_meta(id, "maintenance", "true", err);
    if (r == 0)
        r = vmsh_cluster_wait(id, VMSH_CLUSTER_WAIT_UNMANAGED, NULL, timeout_ms, err);
    if (r < 0)
        return r;
    /* crm_mon shows the configuration at once; the controller cancels the
     * recurring monitor in a transition of its own. A monitor still running
     * when the VM is saved would record a failure, so wait until the
     * cluster has settled (no action pending). */
    char secs[24];
    snprintf(secs, sizeof(secs), "%llds",
             (long long)(timeout_ms / 1000 > 0 ? timeout_ms / 1000 : 1));
    char *const argv[] = {"crm_resource", "--wait", "--timeout", secs, NULL};
    _cleanup_free_ char *out = NULL;
    if ((r = run_tool(argv, &out, err)) < 0)
        return vmsh_error_prefix(err,
                                 "resource %s is in maintenance, but the cluster did not "
                                 "settle",
                                 id);
    return 0;
}

int vmsh_cluster_release(const char *id, const char *prior, int64_t timeout_ms, vmsh_error **err)
{
    int r = vmsh_cluster_set_meta(id, "maintenance", prior, err);
    if (r < 0 || truthy(prior))
        return r;
    /* Managed again, unless something else than our hold keeps it
     * unmanaged: the admin's is-managed=false or the cluster's
     * maintenance-mode, which stay as they were. */
    vmsh_cluster *c = NULL;
    if ((r = probe(&c, false, false, err)) < 0)
        return r;
    const vmsh_cluster_rsc *rs = vmsh_cluster_find_id(c, id);
    bool other =
        !c || !rs || c->maintenance_mode || (rs->meta_is_managed && !truthy(rs->meta_is_managed));
    vmsh_cluster_free(c);
    if (other)
        return 0;
    return vmsh_cluster_wait(id, VMSH_CLUSTER_WAIT_MANAGED, NULL, timeout_ms, err);
}

int vmsh_cluster_stop(const char *id, int64_t timeout_ms, vmsh_error **err)
{
    int r = vmsh_cluster_set_meta(id, "target-role", "Stopped", err);
    if (r == 0)
        r = vmsh_cluster_wait(id, VMSH_CLUSTER_WAIT_STOPPED, NULL, timeout_ms, err);
    return r;
}

int vmsh_cluster_start(const char *id, const char *prior, const char *node, int64_t timeout_ms,
                       vmsh_error **err)
{
    int r = vmsh_cluster_set_meta(id, "target-role", prior, err);
    if (r == 0 && !(prior && strcasecmp(prior, "Stopped") == 0))
        r = vmsh_cluster_wait(id, VMSH_CLUSTER_WAIT_STARTED, node, timeout_ms, err);
    return r;
}

int vmsh_cluster_write_config(const char *path, const char *xml, vmsh_error **err)
{
    struct stat st;
    mode_t mode = stat(path, &st) == 0 ? (st.st_mode & 07777) : 0600;
    int r = vmsh_fs_write_atomic(path, xml, strlen(xml), mode, err);
    if (r < 0)
        return vmsh_error_prefix(err, "cannot rewrite the cluster resource's config file");
    return 0;
}
