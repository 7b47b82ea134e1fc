/* parallel.c - one call per VM of a set, all at once
 * (include/vmshadow/coord/parallel.h). */
#include <vmshadow/coord/parallel.h>
#include <vmshadow/util/mem.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct call {
    void (*fn)(void *ctx, size_t i);
    void *ctx;
    size_t i;
    pthread_t thread;
    bool started;
} call;

static void *call_main(void *arg)
{
    call *c = arg;
    c->fn(c->ctx, c->i);
    return NULL;
}

void vmsh_each_at_once(size_t n, void (*fn)(void *ctx, size_t i), void *ctx)
{
    if (n == 0)
        return;
    call *c = vmsh_calloc_array(n, sizeof(*c));
    for (size_t i = 1; c && i < n; i++) {
        c[i] = (call){.fn = fn, .ctx = ctx, .i = i};
        c[i].started = pthread_create(&c[i].thread, NULL, call_main, &c[i]) == 0;
    }
    fn(ctx, 0);
    for (size_t i = 1; i < n; i++) {
        if (c && c[i].started)
            pthread_join(c[i].thread, NULL);
        else
            fn(ctx, i);
    }
    free(c);
}
