/* journal.c - the journal of external actions (include/vmshadow/coord/journal.h,
 * docs/formats/journal.md): JSON lines appended and fsynced one by one. */
#include <vmshadow/coord/journal.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>

#include "jsonutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <vmshadow/util/timeutil.h>

/* A journal holds a few dozen entries; anything near this is not ours. */
#define JOURNAL_MAX_BYTES (16u * 1024 * 1024)

struct vmsh_journal {
    int fd;
    char *path;
    char *set_id;
    char *operation;
    vmsh_journal_entry *entries;
    size_t n;
    uint64_t last_seq;
};

static void entry_clear(vmsh_journal_entry *e)
{
    free((char *)e->owner);
    free((char *)e->action);
    json_object_put(e->data);
}

void vmsh_journal_free(vmsh_journal *j)
{
    if (!j)
        return;
    if (j->fd >= 0)
        close(j->fd); /* drops the lock */
    for (size_t i = 0; i < j->n; i++)
        entry_clear(&j->entries[i]);
    free(j->entries);
    free(j->path);
    free(j->set_id);
    free(j->operation);
    free(j);
}

static int write_line_sync(vmsh_journal *j, struct json_object *o, bool sync, vmsh_error **err)
{
    char now[21];
    vmsh_time_rfc3339(time(NULL), now);
    if (vmsh_json_add_str(o, "time", now) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    const char *s =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!s)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ char *line = NULL;
    if (asprintf(&line, "%s\n", s) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    /* One write per line: O_APPEND keeps it whole, and a kill in the middle
     * leaves at worst a torn last line, which replay ignores. */
    size_t len = strlen(line), off = 0;
    while (off < len) {
        ssize_t n = write(j->fd, line + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vmsh_error_set(err, -errno, "cannot write journal %s: %s", j->path,
                                  strerror(errno));
        }
        off += (size_t)n;
    }
    if (sync && fdatasync(j->fd) < 0)
        return vmsh_error_set(err, -errno, "cannot sync journal %s: %s", j->path, strerror(errno));
    return 0;
}

static int write_line(vmsh_journal *j, struct json_object *o, vmsh_error **err)
{
    return write_line_sync(j, o, true, err);
}

static int add_entry(vmsh_journal *j, uint64_t seq, const char *owner, const char *action,
                     struct json_object *data, vmsh_journal_state st)
{
    vmsh_journal_entry *a = vmsh_realloc_array(j->entries, j->n + 1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    j->entries = a;
    vmsh_journal_entry e = {.seq = seq, .state = st};
    e.owner = strdup(owner);
    e.action = strdup(action);
    bool data_ok = !data || json_object_deep_copy(data, &e.data, NULL) == 0;
    if (!e.owner || !e.action || !data_ok) {
        entry_clear(&e);
        return -ENOMEM;
    }
    e.set_id = j->set_id;
    e.operation = j->operation;
    j->entries[j->n++] = e;
    if (seq > j->last_seq)
        j->last_seq = seq;
    return 0;
}

static char *journal_dir(const char *state_dir)
{
    return vmsh_path_join(state_dir, "journal");
}

int vmsh_journal_create(vmsh_journal **out, const char *state_dir, const char *set_id,
                        const char *operation, vmsh_error **err)
{
    _cleanup_free_ char *dir = journal_dir(state_dir);
    _cleanup_free_ char *name = NULL, *tmp = NULL;
    if (!dir || asprintf(&name, "%s.journal", set_id) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (!vmsh_name_is_safe(name))
        return vmsh_error_set(err, -EINVAL, "invalid snapshot set ID \"%s\"", set_id);
    int r = vmsh_fs_mkdir_p(dir, 0700, err);
    if (r < 0)
        return r;
    vmsh_journal *j = calloc(1, sizeof(*j));
    if (!j)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    j->fd = -1;
    j->path = vmsh_path_join(dir, name);
    j->set_id = strdup(set_id);
    j->operation = strdup(operation);
    if (!j->path || !j->set_id || !j->operation || asprintf(&tmp, "%s.new", j->path) < 0) {
        tmp = NULL;
        vmsh_journal_free(j);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* Locked and given its header under a temporary name, then renamed: a
     * recover in another process never sees it unlocked or empty. */
    j->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (j->fd < 0) {
        r = vmsh_error_set(err, -errno, "cannot create journal %s: %s", tmp, strerror(errno));
        vmsh_journal_free(j);
        return r;
    }
    if (flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
        r = vmsh_error_set(err, -errno, "cannot lock journal %s: %s", tmp, strerror(errno));
        goto fail;
    }
    struct json_object *h = json_object_new_object();
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    if (!h || json_object_object_add(h, "version", json_object_new_int(VMSH_JOURNAL_VERSION)) ||
        vmsh_json_add_str(h, "type", "set") || vmsh_json_add_str(h, "set_id", set_id) ||
        vmsh_json_add_str(h, "operation", operation) ||
        json_object_object_add(h, "pid", json_object_new_int((int)getpid())) ||
        vmsh_json_add_str(h, "host", host)) {
        json_object_put(h);
        r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    r = write_line(j, h, err);
    json_object_put(h);
    if (r < 0)
        goto fail;
    if (rename(tmp, j->path) < 0) {
        r = vmsh_error_set(err, -errno, "cannot rename %s to %s: %s", tmp, j->path,
                           strerror(errno));
        goto fail;
    }
    if ((r = vmsh_fs_fsync_dir(dir, err)) < 0) {
        unlink(j->path);
        vmsh_journal_free(j);
        return r;
    }
    *out = j;
    return 0;
fail:
    unlink(tmp);
    vmsh_journal_free(j);
    return r;
}

int vmsh_journal_begin(vmsh_journal *j, const char *owner, const char *action,
                       struct json_object *data, uint64_t *out_seq, vmsh_error **err)
{
    if (!owner || !*owner || !action || !*action)
        return vmsh_error_set(err, -EINVAL, "a journal entry needs an owner and an action");
    uint64_t seq = j->last_seq + 1;
    struct json_object *o = json_object_new_object();
    struct json_object *d = NULL;
    if (data && json_object_deep_copy(data, &d, NULL) < 0)
        d = NULL;
    if (!o || (data && !d) || vmsh_json_add_str(o, "type", "action") ||
        json_object_object_add(o, "seq", json_object_new_int64((int64_t)seq)) ||
        vmsh_json_add_str(o, "owner", owner) || vmsh_json_add_str(o, "action", action) ||
        (d && json_object_object_add(o, "data", d))) {
        json_object_put(o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int r = write_line(j, o, err);
    json_object_put(o);
    if (r < 0)
        return r;
    if (add_entry(j, seq, owner, action, data, VMSH_JOURNAL_BEGUN) < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (out_seq)
        *out_seq = seq;
    return 0;
}

static vmsh_journal_entry *find_entry(vmsh_journal *j, uint64_t seq)
{
    for (size_t i = 0; i < j->n; i++)
        if (j->entries[i].seq == seq)
            return &j->entries[i];
    return NULL;
}

static const char *state_name(vmsh_journal_state s)
{
    return s == VMSH_JOURNAL_DONE ? "done" : s == VMSH_JOURNAL_UNDONE ? "undone" : "begun";
}

static int mark(vmsh_journal *j, uint64_t seq, vmsh_journal_state state, bool sync,
                vmsh_error **err)
{
    vmsh_journal_entry *e = find_entry(j, seq);
    if (!e)
        return vmsh_error_set(err, -ENOENT, "journal %s has no entry %llu", j->path,
                              (unsigned long long)seq);
    if (state == VMSH_JOURNAL_BEGUN)
        return vmsh_error_set(err, -EINVAL, "an entry cannot be marked begun again");
    if (e->state == VMSH_JOURNAL_UNDONE)
        return 0;
    struct json_object *o = json_object_new_object();
    if (!o || vmsh_json_add_str(o, "type", "mark") ||
        json_object_object_add(o, "seq", json_object_new_int64((int64_t)seq)) ||
        vmsh_json_add_str(o, "state", state_name(state))) {
        json_object_put(o);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int r = write_line_sync(j, o, sync, err);
    json_object_put(o);
    if (r < 0)
        return r;
    e->state = state;
    return 0;
}

int vmsh_journal_mark(vmsh_journal *j, uint64_t seq, vmsh_journal_state state, vmsh_error **err)
{
    return mark(j, seq, state, true, err);
}

int vmsh_journal_mark_done_unsynced(vmsh_journal *j, uint64_t seq, vmsh_error **err)
{
    return mark(j, seq, VMSH_JOURNAL_DONE, false, err);
}

size_t vmsh_journal_count(const vmsh_journal *j)
{
    return j->n;
}

const vmsh_journal_entry *vmsh_journal_entry_at(const vmsh_journal *j, size_t i)
{
    return i < j->n ? &j->entries[i] : NULL;
}

size_t vmsh_journal_open_count(const vmsh_journal *j)
{
    size_t n = 0;
    for (size_t i = 0; i < j->n; i++)
        n += j->entries[i].state != VMSH_JOURNAL_UNDONE;
    return n;
}

const char *vmsh_journal_path(const vmsh_journal *j)
{
    return j->path;
}

const char *vmsh_journal_set_id(const vmsh_journal *j)
{
    return j->set_id;
}

const char *vmsh_journal_operation(const vmsh_journal *j)
{
    return j->operation;
}

int vmsh_journal_close(vmsh_journal *j, vmsh_error **err)
{
    if (!j)
        return 0;
    int r = 0;
    if (vmsh_journal_open_count(j) == 0) {
        /* Unlinked while still locked, so no replay can start on it. */
        if (unlink(j->path) < 0 && errno != ENOENT)
            r = vmsh_error_set(err, -errno, "cannot remove journal %s: %s", j->path,
                               strerror(errno));
        else {
            _cleanup_free_ char *dir = vmsh_path_dirname(j->path);
            if (dir)
                vmsh_fs_fsync_dir(dir, NULL);
            r = 1;
        }
    }
    vmsh_journal_free(j);
    return r;
}

static int parse_line(vmsh_journal *j, char *line, size_t lineno, vmsh_error **err)
{
    struct json_object *o = NULL;
    int r = vmsh_json_parse(line, strlen(line), &o, "journal line", err);
    if (r < 0)
        return vmsh_error_prefix(err, "%s:%zu", j->path, lineno);
    const char *type = NULL;
    if ((r = vmsh_json_get_str(o, "type", true, &type, "journal line", err)) < 0)
        goto out;
    if (lineno == 1) {
        const char *set_id, *op;
        if (strcmp(type, "set") != 0) {
            r = vmsh_error_set(err, -EBADMSG, "the first line is not a \"set\" header");
            goto out;
        }
        if ((r = vmsh_json_check_version(o, VMSH_JOURNAL_VERSION, "journal", err)) < 0 ||
            (r = vmsh_json_get_str(o, "set_id", true, &set_id, "journal header", err)) < 0 ||
            (r = vmsh_json_get_str(o, "operation", true, &op, "journal header", err)) < 0)
            goto out;
        j->set_id = strdup(set_id);
        j->operation = strdup(op);
        if (!j->set_id || !j->operation)
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    int64_t seq = 0;
    if (strcmp(type, "action") == 0) {
        const char *owner, *action;
        struct json_object *data = NULL;
        if ((r = vmsh_json_get_int64(o, "seq", true, &seq, "journal action", err)) < 0 ||
            (r = vmsh_json_get_str(o, "owner", true, &owner, "journal action", err)) < 0 ||
            (r = vmsh_json_get_str(o, "action", true, &action, "journal action", err)) < 0)
            goto out;
        if (seq < 1 || (uint64_t)seq <= j->last_seq) {
            r = vmsh_error_set(err, -EBADMSG, "action number %lld out of order", (long long)seq);
            goto out;
        }
        json_object_object_get_ex(o, "data", &data);
        if (add_entry(j, (uint64_t)seq, owner, action, data, VMSH_JOURNAL_BEGUN) < 0)
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
    } else if (strcmp(type, "mark") == 0) {
        const char *st;
        if ((r = vmsh_json_get_int64(o, "seq", true, &seq, "journal mark", err)) < 0 ||
            (r = vmsh_json_get_str(o, "state", true, &st, "journal mark", err)) < 0)
            goto out;
        vmsh_journal_entry *e = seq > 0 ? find_entry(j, (uint64_t)seq) : NULL;
        if (!e) {
            r = vmsh_error_set(err, -EBADMSG, "mark for unknown action %lld", (long long)seq);
            goto out;
        }
        if (strcmp(st, "done") == 0) {
            if (e->state != VMSH_JOURNAL_UNDONE)
                e->state = VMSH_JOURNAL_DONE;
        } else if (strcmp(st, "undone") == 0) {
            e->state = VMSH_JOURNAL_UNDONE;
        } else {
            r = vmsh_error_set(err, -EBADMSG, "unknown mark \"%s\"", st);
        }
    }
    /* Other types come from a newer minor version: ignored. */
out:
    json_object_put(o);
    if (r < 0 && r != -ENOMEM && r != -EPROTONOSUPPORT) {
        vmsh_error_prefix(err, "%s:%zu", j->path, lineno);
        r = -EBADMSG;
    }
    return r;
}

int vmsh_journal_open(vmsh_journal **out, const char *path, vmsh_error **err)
{
    vmsh_journal *j = calloc(1, sizeof(*j));
    if (!j || !(j->path = strdup(path))) {
        free(j);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int r;
    char *text = NULL;
    j->fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC);
    if (j->fd < 0) {
        r = vmsh_error_set(err, -errno, "cannot open journal %s: %s", path, strerror(errno));
        goto fail;
    }
    if (flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            r = vmsh_error_set(err, -EBUSY, "journal %s belongs to a run still in progress", path);
        else
            r = vmsh_error_set(err, -errno, "cannot lock journal %s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(j->fd, &st) < 0 || st.st_size < 0 || (uint64_t)st.st_size > JOURNAL_MAX_BYTES) {
        r = vmsh_error_set(err, -EBADMSG, "journal %s is larger than %u bytes: not a journal", path,
                           JOURNAL_MAX_BYTES);
        goto fail;
    }
    size_t len = 0;
    if ((r = vmsh_fs_read_all(path, JOURNAL_MAX_BYTES, &text, &len, err)) < 0)
        goto fail;
    if (memchr(text, '\0', len)) {
        r = vmsh_error_set(err, -EBADMSG, "journal %s holds a NUL byte: damaged", path);
        goto fail;
    }
    /* A torn last line (killed mid-write): its action was never taken.
     * Cut it off so that the marks appended by the replay stay parseable. */
    size_t whole = len;
    while (whole > 0 && text[whole - 1] != '\n')
        whole--;
    if (whole < len && ftruncate(j->fd, (off_t)whole) < 0) {
        r = vmsh_error_set(err, -errno, "cannot truncate torn journal %s: %s", path,
                           strerror(errno));
        goto fail;
    }
    text[whole] = '\0';
    size_t lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if ((r = parse_line(j, line, lineno, err)) < 0)
            goto fail;
    }
    if (!j->set_id) {
        /* Killed before the header reached the disk: nothing was journalled. */
        j->set_id = strdup("unknown");
        j->operation = strdup("unknown");
        if (!j->set_id || !j->operation) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
    }
    free(text);
    *out = j;
    return 0;
fail:
    free(text);
    vmsh_journal_free(j);
    return r;
}
