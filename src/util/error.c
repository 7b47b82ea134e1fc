#include <vmshadow/util/error.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vmsh_error_setv(vmsh_error **err, int code, const char *fmt, va_list ap)
{
    if (code >= 0)
        code = -EIO;
    if (!err || *err)
        return code;
    vmsh_error *e = calloc(1, sizeof(*e));
    if (!e)
        return code;
    e->code = code;
    if (vasprintf(&e->message, fmt, ap) < 0)
        e->message = NULL;
    if (!e->message)
        e->message = strdup(strerror(-code));
    if (!e->message) {
        free(e);
        return code;
    }
    *err = e;
    return code;
}

int vmsh_error_set(vmsh_error **err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vmsh_error_setv(err, code, fmt, ap);
    va_end(ap);
    return r;
}

void vmsh_error_set_retryable(vmsh_error **err, bool retryable)
{
    if (err && *err)
        (*err)->retryable = retryable;
}

int vmsh_error_prefix(vmsh_error **err, const char *fmt, ...)
{
    if (!err || !*err)
        return -EIO;
    char *ctx = NULL, *joined = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&ctx, fmt, ap);
    va_end(ap);
    if (n >= 0 && asprintf(&joined, "%s: %s", ctx, (*err)->message) >= 0) {
        free((*err)->message);
        (*err)->message = joined;
    }
    if (n >= 0)
        free(ctx);
    return (*err)->code;
}

void vmsh_error_propagate(vmsh_error **dst, vmsh_error **src)
{
    if (!src || !*src)
        return;
    if (dst && !*dst) {
        *dst = *src;
    } else {
        vmsh_error_free(*src);
    }
    *src = NULL;
}

void vmsh_error_free(vmsh_error *e)
{
    if (!e)
        return;
    free(e->message);
    free(e);
}

void vmsh_error_freep(vmsh_error **e)
{
    if (e) {
        vmsh_error_free(*e);
        *e = NULL;
    }
}
