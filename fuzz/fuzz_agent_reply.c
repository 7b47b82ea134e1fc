/* fuzz_agent_reply.c - replies of qemu-guest-agent (hv/agent_reply.h): a
 * guest controls them entirely (issue 8, item 3). Every input goes through
 * the three parsers vmsh_hv_agent_probe and vmsh_hv_fsfreeze_status use. */
#include "fuzz.h"

#include <stdlib.h>

#include <vmshadow/hv/agent_reply.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *reply = (const char *)data;
    vmsh_error *err = NULL;
    struct json_object *ret = NULL;
    if (vmsh_agent_reply_return(reply, size, &ret, &err) < 0)
        vmsh_error_free(err), err = NULL;
    json_object_put(ret);

    vmsh_agent_caps caps = {0};
    if (vmsh_agent_parse_info(reply, size, &caps, &err) < 0)
        vmsh_error_free(err), err = NULL;

    vmsh_agent_fs *fs = NULL;
    size_t n = 0;
    if (vmsh_agent_parse_fsinfo(reply, size, &fs, &n, &err) < 0) {
        vmsh_error_free(err), err = NULL;
    } else {
        if (n > VMSH_AGENT_MAX_FS)
            abort();
        for (size_t i = 0; i < n; i++)
            if (fs[i].n_devs > VMSH_AGENT_MAX_DEVS)
                abort();
        vmsh_agent_fs_array_free(fs, n);
    }

    int st = vmsh_agent_parse_freeze_status(reply, size, &err);
    if (st < 0)
        vmsh_error_free(err);
    else if (st > 1)
        abort();
    return 0;
}
