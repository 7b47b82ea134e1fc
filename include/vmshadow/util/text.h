/* text.h - names from untrusted places (backup documents, libvirt, file
 * names) made safe to print: UTF-8 validation and escaping (issue 20 point
 * 10). Thread-safe (no state). */
#ifndef VMSH_UTIL_TEXT_H
#define VMSH_UTIL_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..len) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
bool vmsh_utf8_valid(const char *s, size_t len);
/* The same for a NUL-terminated string; NULL is valid (nothing to print). */
bool vmsh_utf8_valid_str(const char *s);

enum {
    /* escape C0 controls, DEL and C1 controls (U+0080-U+009F): \t \n \r,
     * \xHH, \u00HH; for text a terminal shows */
    VMSH_TEXT_CONTROLS = 1,
    /* the result goes inside a JSON string literal written by json-c: the
     * backslash of each escape is itself escaped (\\xHH) */
    VMSH_TEXT_JSON = 2,
};

/* A malloc'ed copy of s[0..len) in which every byte that is not part of
 * well-formed UTF-8 is written \xHH, and with VMSH_TEXT_CONTROLS every
 * control character as above; NUL-terminated, its length in *out_len when
 * out_len is not NULL. NULL on ENOMEM. */
char *vmsh_text_escape(const char *s, size_t len, unsigned flags, size_t *out_len);
/* True when vmsh_text_escape(s, strlen(s), flags) would change s. */
bool vmsh_text_needs_escape(const char *s, unsigned flags);

#endif
