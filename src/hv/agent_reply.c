/* agent_reply.c - parsing qemu-guest-agent replies (hv/agent_reply.h). */
#include <vmshadow/hv/agent_reply.h>
#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int vmsh_agent_reply_return(const char *reply, size_t len, struct json_object **out,
                            vmsh_error **err)
{
    if (len > VMSH_AGENT_REPLY_MAX_BYTES)
        return vmsh_error_set(err, -EBADMSG,
                              "the guest agent sent a reply of %zu bytes (more than %u)", len,
                              VMSH_AGENT_REPLY_MAX_BYTES);
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object *doc = json_tokener_parse_ex(tok, reply, (int)len);
    bool ok = doc && json_tokener_get_error(tok) == json_tokener_success;
    size_t used = ok ? json_tokener_get_parse_end(tok) : 0;
    json_tokener_free(tok);
    for (size_t i = used; ok && i < len; i++)
        if (!strchr(" \t\r\n", reply[i]) || reply[i] == 0)
            ok = false;
    json_object *ret = NULL;
    if (!ok || !json_object_is_type(doc, json_type_object) ||
        !json_object_object_get_ex(doc, "return", &ret)) {
        json_object_put(doc);
        return vmsh_error_set(err, -EBADMSG,
                              ok ? "the guest agent sent a reply without a \"return\" member"
                                 : "the guest agent sent a reply that is not valid JSON");
    }
    if (out)
        *out = json_object_get(ret);
    json_object_put(doc);
    return 0;
}

static bool command_enabled(json_object *info, const char *name)
{
    json_object *cmds = NULL;
    if (!json_object_object_get_ex(info, "supported_commands", &cmds) ||
        !json_object_is_type(cmds, json_type_array))
        return false;
    size_t n = json_object_array_length(cmds);
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(cmds, i), *nm = NULL, *en = NULL;
        if (json_object_is_type(c, json_type_object) && json_object_object_get_ex(c, "name", &nm) &&
            json_object_is_type(nm, json_type_string) &&
            strcmp(json_object_get_string(nm), name) == 0)
            return json_object_object_get_ex(c, "enabled", &en) &&
                   json_object_is_type(en, json_type_boolean) && json_object_get_boolean(en);
    }
    return false;
}

int vmsh_agent_parse_info(const char *reply, size_t len, vmsh_agent_caps *out, vmsh_error **err)
{
    json_object *info = NULL;
    int r = vmsh_agent_reply_return(reply, len, &info, err);
    if (r < 0)
        return r;
    out->can_freeze = command_enabled(info, "guest-fsfreeze-freeze") &&
                      command_enabled(info, "guest-fsfreeze-thaw");
    out->has_fsinfo = command_enabled(info, "guest-get-fsinfo");
    json_object_put(info);
    return 0;
}

/* A string member, copied; NULL when absent or not a string. *oom is set
 * when the copy failed. */
static char *json_str(json_object *o, const char *key, bool *oom)
{
    json_object *v = NULL;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    char *s = strdup(json_object_get_string(v));
    if (!s)
        *oom = true;
    return s;
}

void vmsh_agent_fs_array_free(vmsh_agent_fs *fs, size_t n)
{
    for (size_t i = 0; fs && i < n; i++) {
        free(fs[i].mountpoint);
        free(fs[i].type);
        for (size_t j = 0; j < fs[i].n_devs; j++)
            free(fs[i].devs[j]);
        free(fs[i].devs);
    }
    free(fs);
}

int vmsh_agent_parse_fsinfo(const char *reply, size_t len, vmsh_agent_fs **out, size_t *n_out,
                            vmsh_error **err)
{
    json_object *list = NULL;
    int r = vmsh_agent_reply_return(reply, len, &list, err);
    if (r < 0)
        return r;
    if (!json_object_is_type(list, json_type_array)) {
        json_object_put(list);
        return vmsh_error_set(err, -EBADMSG, "the guest agent's filesystem list is malformed");
    }
    size_t n = json_object_array_length(list);
    if (n > VMSH_AGENT_MAX_FS)
        n = VMSH_AGENT_MAX_FS;
    vmsh_agent_fs *fs = n ? vmsh_calloc_array(n, sizeof(*fs)) : NULL;
    bool oom = n && !fs;
    size_t got = 0;
    for (size_t i = 0; !oom && i < n; i++) {
        json_object *f = json_object_array_get_idx(list, i), *disks = NULL;
        vmsh_agent_fs *e = &fs[got++];
        e->mountpoint = json_str(f, "mountpoint", &oom);
        e->type = json_str(f, "type", &oom);
        if (!json_object_is_type(f, json_type_object) ||
            !json_object_object_get_ex(f, "disk", &disks) ||
            !json_object_is_type(disks, json_type_array))
            continue;
        size_t nd = json_object_array_length(disks);
        if (nd > VMSH_AGENT_MAX_DEVS)
            nd = VMSH_AGENT_MAX_DEVS;
        if (nd == 0)
            continue;
        e->devs = vmsh_calloc_array(nd, sizeof(char *));
        if (!e->devs) {
            oom = true;
            break;
        }
        for (size_t j = 0; j < nd; j++) {
            char *dev = json_str(json_object_array_get_idx(disks, j), "dev", &oom);
            if (dev)
                e->devs[e->n_devs++] = dev;
        }
    }
    json_object_put(list);
    if (oom) {
        vmsh_agent_fs_array_free(fs, got);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    *out = fs;
    *n_out = got;
    return 0;
}

int vmsh_agent_parse_freeze_status(const char *reply, size_t len, vmsh_error **err)
{
    json_object *ret = NULL;
    int r = vmsh_agent_reply_return(reply, len, &ret, err);
    if (r < 0)
        return r;
    const char *s = json_object_is_type(ret, json_type_string) ? json_object_get_string(ret) : "";
    r = strcmp(s, "frozen") == 0   ? 1
        : strcmp(s, "thawed") == 0 ? 0
                                   : vmsh_error_set(err, -EBADMSG,
                                                    "the guest agent's freeze status is neither "
                                                    "\"frozen\" nor \"thawed\"");
    json_object_put(ret);
    return r;
}
