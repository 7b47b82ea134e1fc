#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdint.h>

void *vmsh_calloc_array(size_t n, size_t size)
{
    return calloc(n ? n : 1, size ? size : 1);
}

void *vmsh_realloc_array(void *p, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    size_t bytes = n * size;
    return realloc(p, bytes ? bytes : 1);
}
