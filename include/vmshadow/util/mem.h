/* mem.h - cleanup helpers and overflow-checked allocation.
 * Every type of ours has a _free that accepts NULL; these macros make the
 * common ones automatic at scope exit. Thread-safe (no state). */
#ifndef VMSH_UTIL_MEM_H
#define VMSH_UTIL_MEM_H

#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

static inline void vmsh_freep(void *p)
{
    free(*(void **)p);
}
static inline void vmsh_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}
#define _cleanup_free_  __attribute__((cleanup(vmsh_freep)))
#define _cleanup_close_ __attribute__((cleanup(vmsh_closep)))

/* Returns the pointer and leaves NULL behind: hands ownership out of a
 * _cleanup_ variable. */
#define VMSH_TAKE_PTR(p)                                                                           \
    ({                                                                                             \
        __typeof__(p) _tmp = (p);                                                                  \
        (p) = NULL;                                                                                \
        _tmp;                                                                                      \
    })
#define VMSH_TAKE_FD(fd)                                                                           \
    ({                                                                                             \
        int _tmp = (fd);                                                                           \
        (fd) = -1;                                                                                 \
        _tmp;                                                                                      \
    })

/* calloc(n, size) with overflow check; returns NULL on overflow or ENOMEM. */
void *vmsh_calloc_array(size_t n, size_t size);
/* realloc to n * size with overflow check; on failure p is untouched, NULL returned. */
void *vmsh_realloc_array(void *p, size_t n, size_t size);

#define VMSH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
