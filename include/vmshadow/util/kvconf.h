/* kvconf.h - the "key = value" line format shared by the config file
 * (docs/config.md) and script-writer files (CLI.md, "Script writers").
 *
 * Grammar: one entry per line; blank lines and lines whose first non-blank
 * character is '#' are ignored; a key is [a-z0-9-]+; blanks around '=' and at
 * both ends of the value are dropped; the value may be empty. A key given
 * twice is an error (a typo should not silently win). Files over 64 KiB or
 * with a NUL byte are refused. Thread-safe (no shared state).
 */
#ifndef VMSH_UTIL_KVCONF_H
#define VMSH_UTIL_KVCONF_H

#include <stddef.h>

#include <vmshadow/util/error.h>

typedef struct vmsh_kvconf vmsh_kvconf;

#define VMSH_KVCONF_MAX_BYTES (64 * 1024)

/* Parses `text` (len bytes; `origin` names it in messages, e.g. a path).
 * Expected errors: -EINVAL (syntax, with "origin:line"), -EFBIG. */
int vmsh_kvconf_parse(vmsh_kvconf **out, const char *text, size_t len, const char *origin,
                      vmsh_error **err);
/* Reads and parses a file. -ENOENT when it does not exist (message set). */
int vmsh_kvconf_load(vmsh_kvconf **out, const char *path, vmsh_error **err);

/* The value of `key`, or NULL when absent. Owned by the kvconf. */
const char *vmsh_kvconf_get(const vmsh_kvconf *c, const char *key);
/* The line a key was on (0 when absent), for messages. */
int vmsh_kvconf_line(const vmsh_kvconf *c, const char *key);
size_t vmsh_kvconf_count(const vmsh_kvconf *c);
/* The i-th entry in file order. */
const char *vmsh_kvconf_key_at(const vmsh_kvconf *c, size_t i);
const char *vmsh_kvconf_origin(const vmsh_kvconf *c);

/* Checks every key against a NULL-terminated list of allowed keys.
 * -EINVAL naming the first unknown key and its line. */
int vmsh_kvconf_check_keys(const vmsh_kvconf *c, const char *const *allowed, vmsh_error **err);

/* Parses a key's value as an integer in [min, max]; `*out` untouched when the
 * key is absent (returns 0). -EINVAL naming key, line and the bounds. */
int vmsh_kvconf_get_int(const vmsh_kvconf *c, const char *key, long min, long max, long *out,
                        vmsh_error **err);

void vmsh_kvconf_free(vmsh_kvconf *c);

#endif
