#include <vmshadow/util/fs.h>
#include <vmshadow/util/kvconf.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *key;
    char *value;
    int line;
} kv_entry;

struct vmsh_kvconf {
    char *origin;
    kv_entry *entries;
    size_t n;
};

void vmsh_kvconf_free(vmsh_kvconf *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->entries[i].key);
        free(c->entries[i].value);
    }
    free(c->entries);
    free(c->origin);
    free(c);
}

static int is_key_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r';
}

static const kv_entry *find(const vmsh_kvconf *c, const char *key)
{
    for (size_t i = 0; c && i < c->n; i++)
        if (strcmp(c->entries[i].key, key) == 0)
            return &c->entries[i];
    return NULL;
}

int vmsh_kvconf_parse(vmsh_kvconf **out, const char *text, size_t len, const char *origin,
                      vmsh_error **err)
{
    if (len > VMSH_KVCONF_MAX_BYTES)
        return vmsh_error_set(err, -EFBIG, "%s: larger than %d bytes", origin,
                              VMSH_KVCONF_MAX_BYTES);
    if (memchr(text, '\0', len))
        return vmsh_error_set(err, -EINVAL, "%s: contains a NUL byte; not a text file", origin);
    vmsh_kvconf *c = calloc(1, sizeof(*c));
    if (!c || !(c->origin = strdup(origin))) {
        vmsh_kvconf_free(c);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    const char *p = text, *end = text + len;
    int lineno = 0, r = 0;
    while (p < end && r == 0) {
        lineno++;
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        const char *s = p, *e = eol;
        p = eol < end ? eol + 1 : end;
        while (s < e && is_blank(*s))
            s++;
        while (e > s && is_blank(e[-1]))
            e--;
        if (s == e || *s == '#')
            continue;
        const char *k = s;
        while (s < e && is_key_char(*s))
            s++;
        const char *ke = s;
        while (s < e && is_blank(*s))
            s++;
        if (ke == k || s == e || *s != '=') {
            r = vmsh_error_set(err, -EINVAL,
                               "%s:%d: expected 'key = value' (keys are lower-case letters, "
                               "digits and '-')",
                               origin, lineno);
            break;
        }
        s++;
        while (s < e && is_blank(*s))
            s++;
        _cleanup_free_ char *key = strndup(k, (size_t)(ke - k));
        if (!key) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        const kv_entry *dup = find(c, key);
        if (dup) {
            r = vmsh_error_set(err, -EINVAL, "%s:%d: key '%s' already given on line %d", origin,
                               lineno, key, dup->line);
            break;
        }
        kv_entry *ne = vmsh_realloc_array(c->entries, c->n + 1, sizeof(*ne));
        if (!ne) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        c->entries = ne;
        char *value = strndup(s, (size_t)(e - s));
        if (!value) {
            r = vmsh_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        c->entries[c->n++] = (kv_entry){.key = VMSH_TAKE_PTR(key), .value = value, .line = lineno};
    }
    if (r < 0) {
        vmsh_kvconf_free(c);
        return r;
    }
    *out = c;
    return 0;
}

int vmsh_kvconf_load(vmsh_kvconf **out, const char *path, vmsh_error **err)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = vmsh_fs_read_all(path, VMSH_KVCONF_MAX_BYTES, &text, &len, err);
    if (r < 0)
        return r;
    return vmsh_kvconf_parse(out, text, len, path, err);
}

const char *vmsh_kvconf_get(const vmsh_kvconf *c, const char *key)
{
    const kv_entry *e = find(c, key);
    return e ? e->value : NULL;
}

int vmsh_kvconf_line(const vmsh_kvconf *c, const char *key)
{
    const kv_entry *e = find(c, key);
    return e ? e->line : 0;
}

size_t vmsh_kvconf_count(const vmsh_kvconf *c)
{
    return c ? c->n : 0;
}

const char *vmsh_kvconf_key_at(const vmsh_kvconf *c, size_t i)
{
    return c && i < c->n ? c->entries[i].key : NULL;
}

const char *vmsh_kvconf_origin(const vmsh_kvconf *c)
{
    return c ? c->origin : NULL;
}

int vmsh_kvconf_check_keys(const vmsh_kvconf *c, const char *const *allowed, vmsh_error **err)
{
    for (size_t i = 0; c && i < c->n; i++) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, c->entries[i].key) == 0;
        if (!ok)
            return vmsh_error_set(err, -EINVAL, "%s:%d: unknown key '%s'", c->origin,
                                  c->entries[i].line, c->entries[i].key);
    }
    return 0;
}

int vmsh_kvconf_get_int(const vmsh_kvconf *c, const char *key, long min, long max, long *out,
                        vmsh_error **err)
{
    const kv_entry *e = find(c, key);
    if (!e)
        return 0;
    char *endp = NULL;
    errno = 0;
    long v = strtol(e->value, &endp, 10);
    if (errno || !*e->value || *endp || v < min || v > max)
        return vmsh_error_set(err, -EINVAL, "%s:%d: '%s' must be a whole number from %ld to %ld",
                              c->origin, e->line, key, min, max);
    *out = v;
    return 0;
}
