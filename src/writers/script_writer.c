/* script_writer.c - script writers (include/vmshadow/writers/script_writer.h;
 * CLI.md "Script writers"). */
#include <vmshadow/coord/coord.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/kvconf.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/proc.h>
#include <vmshadow/util/timeutil.h>
#include <vmshadow/writers/identity.h>
#include <vmshadow/writers/script_writer.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* The keys that hold commands, in the order of the events. */
enum { K_PREPARE_SNAPSHOT, K_FREEZE, K_THAW, K_POST_SNAPSHOT, K_BACKUP_COMPLETE, K_ABORT, K_N };
static const char *const cmd_keys[K_N] = {
    "prepare-snapshot", "freeze", "thaw", "post-snapshot", "backup-complete", "abort",
};
static const char *const allowed_keys[] = {
    "name",  "prepare-snapshot", "freeze", "thaw", "post-snapshot", "backup-complete",
    "abort", "timeout",          NULL,
};

typedef struct script_writer {
    vmsh_writer_ops ops; /* first: the coordinator's handle */
    char *name;
    char id[37];
    char *path;
    char *cmd[K_N]; /* NULL: nothing to run */
    int line[K_N];
    long timeout_s;
    uint64_t seq_prep, seq_freeze; /* 0: not journalled in this set */
} script_writer;

#define SW(self) ((script_writer *)(self))

int vmsh_script_writer_id(const char *name, char out[static 37], vmsh_error **err)
{
    /* RFC 4122 version 5: SHA-1 over namespace bytes + name. */
    static const char *ns = VMSH_VM_WRITER_ID;
    unsigned char nsb[16];
    for (int i = 0, k = 0; i < 16; k++) {
        if (ns[k] == '-')
            continue;
        unsigned v;
        if (sscanf(ns + k, "%2x", &v) != 1)
            return vmsh_error_set(err, -EIO, "bad namespace UUID");
        nsb[i++] = (unsigned char)v;
        k++;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) && EVP_DigestUpdate(ctx, nsb, 16) &&
             EVP_DigestUpdate(ctx, name, strlen(name)) && EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (!ok || mdlen < 16)
        return vmsh_error_set(err, -EIO, "cannot compute SHA-1 for the writer ID of %s", name);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0],
             md[1], md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12],
             md[13], md[14], md[15]);
    return 0;
}

char *vmsh_script_writer_default_name(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t l = strlen(base);
    if (l > 5 && strcmp(base + l - 5, ".conf") == 0)
        l -= 5;
    return strndup(base, l);
}

static void sw_free(vmsh_writer_ops *self)
{
    script_writer *w = SW(self);
    if (!w)
        return;
    free(w->name);
    free(w->path);
    for (int i = 0; i < K_N; i++)
        free(w->cmd[i]);
    free(w);
}

static bool set_cancelled(void *opaque)
{
    return vmsh_set_cancelled(opaque);
}

/* Runs the command of `key` for set `set_id`, bounded by the writer's
 * timeout and by `deadline` (monotonic ms; <= 0: none). A command that
 * takes the set forward is stopped when the set is cancelled (`set`, may be
 * NULL); thaw and abort always run to their end. */
static int run_cmd(script_writer *w, int key, const char *set_id, int64_t deadline, vmsh_set *set,
                   vmsh_error **err)
{
    const char *cmdline = w->cmd[key];
    if (!cmdline)
        return 0;
    char **argv = NULL;
    int r = vmsh_proc_split(cmdline, &argv, err);
    if (r < 0)
        return r;
    if (r == 0) {
        vmsh_proc_argv_free(argv);
        return 0;
    }
    _cleanup_free_ char *env_set = NULL, *env_event = NULL;
    if (asprintf(&env_set, "VMSHADOW_SET_ID=%s", set_id) < 0 ||
        asprintf(&env_event, "VMSHADOW_EVENT=%s", cmd_keys[key]) < 0) {
        vmsh_proc_argv_free(argv);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    char *env[] = {env_set, env_event, NULL};
    int64_t timeout = w->timeout_s * 1000;
    bool by_deadline = false;
    if (deadline > 0) {
        int64_t left = deadline - vmsh_now_ms();
        if (left < timeout) {
            timeout = left > 0 ? left : 1;
            by_deadline = true;
        }
    }
    vmsh_proc_result res;
    vmsh_proc_opts po = {.timeout_ms = timeout};
    if (set && key != K_THAW && key != K_ABORT) {
        po.stop = set_cancelled;
        po.opaque = set;
    }
    r = vmsh_proc_run_opts(argv, env, &po, &res, err);
    vmsh_proc_argv_free(argv);
    if (r < 0)
        return vmsh_error_prefix(err, "%s (%s:%d)", cmd_keys[key], w->path, w->line[key]);
    if (res.timed_out) {
        r = vmsh_error_set(err, -ETIMEDOUT,
                           "%s command \"%s\" ran past %s of %lld ms and was killed", cmd_keys[key],
                           cmdline,
                           by_deadline ? "the coordinator's deadline (event-timeout or "
                                         "freeze-limit)"
                                       : "the writer's timeout",
                           (long long)timeout);
        vmsh_error_set_retryable(err, true);
        return r;
    }
    if (res.stopped)
        return vmsh_error_set(err, -ECANCELED,
                              "%s command \"%s\" was stopped: the set was interrupted",
                              cmd_keys[key], cmdline);
    if (res.exit_code != 0) {
        char buf[96];
        return vmsh_error_set(err, -EIO, "%s command \"%s\" %s", cmd_keys[key], cmdline,
                              vmsh_proc_describe(&res, buf, sizeof(buf)));
    }
    return 0;
}

/* Journals `action` (when there is a command to run), runs the command, marks
 * the entry done. */
static int journalled(script_writer *w, vmsh_set *set, int key, const char *action, uint64_t *seq,
                      vmsh_error **err)
{
    if (!w->cmd[key])
        return 0;
    struct json_object *data = json_object_new_object();
    if (!data)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object_object_add(data, "file", json_object_new_string(w->path));
    int r = vmsh_set_journal_begin(set, w->id, action, data, seq, err);
    json_object_put(data);
    if (r < 0)
        return r;
    r = run_cmd(w, key, vmsh_set_id(set), vmsh_set_deadline_ms(set), set, err);
    if (r < 0)
        return r; /* left "begun": the Abort (or a replay) undoes it */
    return vmsh_set_journal_mark(set, *seq, VMSH_JOURNAL_DONE, err);
}

static void close_entry(vmsh_set *set, uint64_t *seq)
{
    if (*seq)
        vmsh_set_journal_mark(set, *seq, VMSH_JOURNAL_UNDONE, NULL);
    *seq = 0;
}

static int sw_identify(vmsh_writer_ops *self, vmsh_set *set, vmsh_metadata *md, vmsh_error **err)
{
    /* A script writer owns no files; it takes part in the set's events. */
    SW(self)->seq_prep = SW(self)->seq_freeze = 0;
    return 0;
}

static int sw_prepare_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    script_writer *w = SW(self);
    return journalled(w, set, K_PREPARE_SNAPSHOT, "prepare-snapshot", &w->seq_prep, err);
}

static int sw_freeze(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    script_writer *w = SW(self);
    return journalled(w, set, K_FREEZE, "freeze", &w->seq_freeze, err);
}

static int sw_thaw(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    script_writer *w = SW(self);
    int r = run_cmd(w, K_THAW, vmsh_set_id(set), vmsh_set_deadline_ms(set), set, err);
    if (r == 0)
        close_entry(set, &w->seq_freeze);
    return r;
}

static int sw_post_snapshot(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    return run_cmd(SW(self), K_POST_SNAPSHOT, vmsh_set_id(set), vmsh_set_deadline_ms(set), set,
                   err);
}

static int sw_backup_complete(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    script_writer *w = SW(self);
    int r = run_cmd(w, K_BACKUP_COMPLETE, vmsh_set_id(set), vmsh_set_deadline_ms(set), set, err);
    if (r == 0) {
        close_entry(set, &w->seq_freeze);
        close_entry(set, &w->seq_prep);
    }
    return r;
}

static int sw_abort(vmsh_writer_ops *self, vmsh_set *set, vmsh_error **err)
{
    script_writer *w = SW(self);
    int r = run_cmd(w, K_ABORT, vmsh_set_id(set), vmsh_set_deadline_ms(set), set, err);
    if (r == 0) {
        /* The abort command is the writer's whole clean-up. */
        close_entry(set, &w->seq_freeze);
        close_entry(set, &w->seq_prep);
    }
    return r;
}

static int sw_undo(vmsh_writer_ops *self, const vmsh_journal_entry *e, vmsh_error **err)
{
    script_writer *w = SW(self);
    if (strcmp(e->action, "freeze") == 0)
        return run_cmd(w, K_THAW, e->set_id, 0, NULL, err);
    if (strcmp(e->action, "prepare-snapshot") == 0)
        return run_cmd(w, K_ABORT, e->set_id, 0, NULL, err);
    return vmsh_error_set(err, -EINVAL, "script writer %s cannot undo an action \"%s\"", w->name,
                          e->action);
}

int vmsh_script_writer_load(const char *path, vmsh_writer_ops **out, vmsh_error **err)
{
    vmsh_kvconf *c = NULL;
    int r = vmsh_kvconf_load(&c, path, err);
    if (r < 0)
        return r;
    script_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        vmsh_kvconf_free(c);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    w->timeout_s = VMSH_SCRIPT_WRITER_DEFAULT_TIMEOUT;
    if ((r = vmsh_kvconf_check_keys(c, allowed_keys, err)) < 0 ||
        (r = vmsh_kvconf_get_int(c, "timeout", 1, 86400, &w->timeout_s, err)) < 0)
        goto fail;
    const char *name = vmsh_kvconf_get(c, "name");
    w->name = name && *name ? strdup(name) : vmsh_script_writer_default_name(path);
    w->path = strdup(path);
    if (!w->name || !w->path) {
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (const unsigned char *p = (const unsigned char *)w->name; *p; p++)
        if (*p < 0x20 || *p == 0x7f) {
            r = vmsh_error_set(err, -EINVAL, "%s:%d: the name holds a control character", path,
                               vmsh_kvconf_line(c, "name"));
            goto fail;
        }
    for (int k = 0; k < K_N; k++) {
        const char *v = vmsh_kvconf_get(c, cmd_keys[k]);
        w->line[k] = vmsh_kvconf_line(c, cmd_keys[k]);
        if (!v || !*v)
            continue;
        /* Split now so that a quoting mistake is found before any set. */
        char **argv = NULL;
        if ((r = vmsh_proc_split(v, &argv, err)) < 0) {
            vmsh_error_prefix(err, "%s:%d", path, w->line[k]);
            goto fail;
        }
        vmsh_proc_argv_free(argv);
        if (!(w->cmd[k] = strdup(v))) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
    }
    if ((r = vmsh_script_writer_id(w->name, w->id, err)) < 0)
        goto fail;
    w->ops = (vmsh_writer_ops){
        .version = VMSH_WRITER_OPS_VERSION,
        .name = w->name,
        .id = w->id,
        .kind = VMSH_SCRIPT_WRITER_KIND,
        .identify = sw_identify,
        .prepare_snapshot = sw_prepare_snapshot,
        .freeze = sw_freeze,
        .thaw = sw_thaw,
        .post_snapshot = sw_post_snapshot,
        .backup_complete = sw_backup_complete,
        .abort = sw_abort,
        .undo = sw_undo,
        .free = sw_free,
    };
    vmsh_kvconf_free(c);
    *out = &w->ops;
    return 0;
fail:
    vmsh_kvconf_free(c);
    sw_free(&w->ops);
    return r;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void vmsh_script_writer_paths_free(char **paths)
{
    for (char **p = paths; p && *p; p++)
        free(*p);
    free(paths);
}

int vmsh_script_writer_paths(const char *dir, char ***out, size_t *n, vmsh_error **err)
{
    *out = NULL;
    *n = 0;
    char **a = calloc(1, sizeof(char *));
    if (!a)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) {
            *out = a;
            return 0;
        }
        int e = errno;
        free(a);
        return vmsh_error_set(err, -e, "cannot read the writers directory %s: %s", dir,
                              strerror(e));
    }
    struct dirent *de;
    size_t k = 0;
    int r = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (de->d_name[0] == '.' || l <= 5 || strcmp(de->d_name + l - 5, ".conf") != 0)
            continue;
        char **b = vmsh_realloc_array(a, k + 2, sizeof(char *));
        if (!b) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        a = b;
        if (!(a[k] = vmsh_path_join(dir, de->d_name))) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        a[++k] = NULL;
    }
    closedir(d);
    if (r < 0) {
        vmsh_script_writer_paths_free(a);
        return r;
    }
    qsort(a, k, sizeof(char *), cmp_str);
    *out = a;
    *n = k;
    return 0;
}
