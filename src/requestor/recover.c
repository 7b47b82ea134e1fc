/* recover.c - the requestor's recovery (R7): the journals of interrupted
 * runs replayed with this host's writers and providers. */
#include "requestor_priv.h"

#include <vmshadow/util/timeutil.h>

int vmsh_requestor_recover(const vmsh_requestor_config *cfg, const vmsh_requestor_callbacks *cb,
                           vmsh_recover_report **out, vmsh_error **err)
{
    req_host h;
    vmsh_coord_config ccfg;
    *out = NULL;
    /* session directories of `files` and `serve` runs that were killed
     * (rundir.c): every command's recovery removes them */
    req_session_sweep();
    int r = req_coord_config(cfg, &ccfg, err);
    if (r < 0)
        return r;
    if ((r = req_host_build(cfg, false, &h, err)) < 0)
        return r;
    for (size_t i = 0; i < h.n_broken; i++)
        req_warn(cb, "script writer %s does not load: %s", h.broken[i].path, h.broken[i].message);
    req_step(cb, "recover", false, 0, 0);
    int64_t t0 = vmsh_now_ms();
    r = req_recover_with_cluster(&ccfg, &h, out, err);
    req_step(cb, "recover", true, r < 0 ? r : 0, vmsh_now_ms() - t0);
    req_host_clear(&h);
    return r;
}
