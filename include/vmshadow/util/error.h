/* error.h - the error object that carries detail out of every library call.
 *
 * Convention (docs/ARCHITECTURE.md, "Errors"): a function returns 0 or a count
 * on success and a negative errno on failure; detail travels in the error
 * object passed last (`vmsh_error **err`). `err` may be NULL; it is set only on
 * failure, and the caller owns it then (vmsh_error_free). A message says what
 * failed, on which VM or file, and what to do next. Library code never prints.
 */
#ifndef VMSH_UTIL_ERROR_H
#define VMSH_UTIL_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

typedef struct vmsh_error {
    int code;       /* negative errno, e.g. -EINVAL */
    bool retryable; /* true when running the same operation again may succeed */
    char *message;  /* one line, no trailing newline; never NULL */
} vmsh_error;

/* Sets *err (when err is non-NULL and *err is NULL: the first error wins) and
 * returns `code`, so that `return vmsh_error_set(err, -EIO, "...")` reads well.
 * `code` must be negative; a non-negative code is stored as -EIO. */
int vmsh_error_set(vmsh_error **err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int vmsh_error_setv(vmsh_error **err, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Marks an error already set as retryable (no-op when err or *err is NULL). */
void vmsh_error_set_retryable(vmsh_error **err, bool retryable);

/* Prepends "<context>: " to the message of an error already set (no-op when
 * err or *err is NULL). Returns the error's code, or -EIO when none is set. */
int vmsh_error_prefix(vmsh_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Moves *src into *dst unless *dst already holds an error (then *src is freed).
 * Used by rollbacks that must preserve the first error. */
void vmsh_error_propagate(vmsh_error **dst, vmsh_error **src);

/* Frees an error; accepts NULL. */
void vmsh_error_free(vmsh_error *e);
void vmsh_error_freep(vmsh_error **e);
#define _cleanup_error_ __attribute__((cleanup(vmsh_error_freep)))

#endif
