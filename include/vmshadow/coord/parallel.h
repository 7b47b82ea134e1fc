/* parallel.h - one call per VM of a set, all at once (issue 27 point 4).
 *
 * The guests of a set freeze, get their backup jobs and thaw at once: the
 * VM writer and the pull provider run one call per VM, each on a thread
 * of its own, so that a set's freeze window is its slowest VM's, not the
 * sum of all. bench/freeze-sim (no guests) runs the coordinator with a
 * simulated writer of N VMs through the same helper.
 */
#ifndef VMSH_COORD_PARALLEL_H
#define VMSH_COORD_PARALLEL_H

#include <stddef.h>

/* Calls fn(ctx, i) for every i < n at once: i = 0 on the calling thread,
 * every other on a thread of its own; returns when all have returned. A
 * thread that cannot be started has its call made on the calling thread
 * afterwards: slower, never wrong. fn reports its outcome through ctx (it
 * returns nothing); calls of different i must not share state unlocked. */
void vmsh_each_at_once(size_t n, void (*fn)(void *ctx, size_t i), void *ctx);

#endif
