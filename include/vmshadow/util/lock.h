/* lock.h - advisory whole-file locks (flock) for "one at a time" rules:
 * one snapshot set per host, one repository writer. A lock dies with its
 * process, so a SIGKILLed run never leaves a stale lock behind. */
#ifndef VMSH_UTIL_LOCK_H
#define VMSH_UTIL_LOCK_H

#include <stdbool.h>

#include <vmshadow/util/error.h>

typedef struct vmsh_lock vmsh_lock;

/* Opens (creating, mode 0600) `path` and takes an exclusive or shared lock.
 * With `wait` false it does not block: when another process holds a
 * conflicting lock it returns -EBUSY (the CLI maps that to exit code 4).
 * `what` names the resource in the message ("snapshot set", "repository"). */
int vmsh_lock_take(vmsh_lock **out, const char *path, bool exclusive, bool wait, const char *what,
                   vmsh_error **err);

/* The same on a file the caller opened (fd: read-only is enough for flock);
 * takes over fd, also on failure. `path` names it in messages. */
int vmsh_lock_take_fd(vmsh_lock **out, int fd, const char *path, bool exclusive, bool wait,
                      const char *what, vmsh_error **err);
/* A lock held by other means (an object store's lease, issue 26):
 * vmsh_lock_free calls release(opaque). -ENOMEM. */
int vmsh_lock_custom(vmsh_lock **out, void (*release)(void *opaque), void *opaque);
/* Releases the lock and frees it; accepts NULL. */
void vmsh_lock_free(vmsh_lock *l);

#endif
