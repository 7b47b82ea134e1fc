/* jsonutil.c - json-c helpers for the coordinator's documents. */
#include "jsonutil.h"

#include <vmshadow/coord/json.h>

#include <errno.h>
#include <string.h>

const char *vmsh_json_str(const struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

int vmsh_json_add_str(struct json_object *o, const char *key, const char *value)
{
    struct json_object *v = NULL;
    if (value && !(v = json_object_new_string(value)))
        return -1;
    return json_object_object_add(o, key, v) ? -1 : 0;
}

static struct json_object *member(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

/* The member `key` of `o` when it has JSON type `t` (1, *v set); 0 when
 * it is absent and not required; a negative errno (EBADMSG) when it is
 * missing but required, or of another type ("is not `what`"). */
static int typed_member(struct json_object *o, const char *key, bool required, json_type t,
                        const char *what, const char *where, struct json_object **v,
                        vmsh_error **err)
{
    *v = member(o, key);
    if (!*v)
        return required ? vmsh_error_set(err, -EBADMSG, "%s: member \"%s\" is missing", where, key)
                        : 0;
    if (!json_object_is_type(*v, t))
        return vmsh_error_set(err, -EBADMSG, "%s: member \"%s\" is not %s", where, key, what);
    return 1;
}

int vmsh_json_get_str(struct json_object *o, const char *key, bool required, const char **out,
                      const char *where, vmsh_error **err)
{
    struct json_object *v;
    *out = NULL;
    int r = typed_member(o, key, required, json_type_string, "a string", where, &v, err);
    if (r <= 0)
        return r;
    *out = json_object_get_string(v);
    return 0;
}

int vmsh_json_get_int64(struct json_object *o, const char *key, bool required, int64_t *out,
                        const char *where, vmsh_error **err)
{
    struct json_object *v;
    int r = typed_member(o, key, required, json_type_int, "an integer", where, &v, err);
    if (r <= 0)
        return r;
    errno = 0;
    int64_t n = json_object_get_int64(v);
    if (errno == EINVAL || errno == ERANGE)
        return vmsh_error_set(err, -EBADMSG, "%s: member \"%s\" is out of range", where, key);
    *out = n;
    return 0;
}

int vmsh_json_get_bool(struct json_object *o, const char *key, bool required, bool *out,
                       const char *where, vmsh_error **err)
{
    struct json_object *v;
    int r = typed_member(o, key, required, json_type_boolean, "true or false", where, &v, err);
    if (r <= 0)
        return r;
    *out = json_object_get_boolean(v);
    return 0;
}

int vmsh_json_get_array(struct json_object *o, const char *key, bool required,
                        struct json_object **out, const char *where, vmsh_error **err)
{
    struct json_object *v;
    *out = NULL;
    int r = typed_member(o, key, required, json_type_array, "an array", where, &v, err);
    if (r <= 0)
        return r;
    *out = v;
    return 0;
}

int vmsh_json_check_version(struct json_object *doc, int max, const char *what, vmsh_error **err)
{
    if (!doc || !json_object_is_type(doc, json_type_object))
        return vmsh_error_set(err, -EBADMSG, "%s: not a JSON object", what);
    int64_t v = 0;
    int r = vmsh_json_get_int64(doc, "version", true, &v, what, err);
    if (r < 0)
        return r;
    if (v < 1)
        return vmsh_error_set(err, -EBADMSG, "%s: version %lld is not valid", what, (long long)v);
    if (v > max)
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "%s: version %lld is newer than this vmshadow understands (%d); "
                              "upgrade vmshadow",
                              what, (long long)v, max);
    return 0;
}

int vmsh_json_parse(const char *text, size_t len, struct json_object **out, const char *what,
                    vmsh_error **err)
{
    if (len > (size_t)INT32_MAX)
        return vmsh_error_set(err, -EBADMSG, "%s: too large", what);
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o || e != json_tokener_success) {
        json_object_put(o);
        return vmsh_error_set(err, -EBADMSG, "%s: not valid JSON: %s", what,
                              json_tokener_error_desc(e));
    }
    /* Only blanks may follow the document. */
    for (size_t i = used; i < len; i++)
        if (!strchr(" \t\r\n", text[i])) {
            json_object_put(o);
            return vmsh_error_set(err, -EBADMSG, "%s: data after the JSON document", what);
        }
    *out = o;
    return 0;
}
