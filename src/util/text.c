/* text.c - UTF-8 validation and escaping of untrusted names for printing
 * (issue 20 point 10). A name in a backup document or from libvirt may hold
 * terminal escape sequences or bytes that are not UTF-8: printed raw, the
 * first rewrite what a user sees, the second make the JSON we emit invalid
 * (json-c copies such bytes through). */
#include <vmshadow/util/text.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The length (1-4) of the well-formed UTF-8 sequence at s, or 0 when the
 * byte at s does not start one (RFC 3629, table 3-7 of Unicode). */
static size_t seq_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

bool vmsh_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = seq_len(p + i, len - i);
        if (!n)
            return false;
        i += n;
    }
    return true;
}

bool vmsh_utf8_valid_str(const char *s)
{
    return !s || vmsh_utf8_valid(s, strlen(s));
}

/* What replaces the sequence of n bytes at p ("" when it stays). */
static void escape_of(const unsigned char *p, size_t n, unsigned flags, char out[16])
{
    const char *bs = flags & VMSH_TEXT_JSON ? "\\\\" : "\\";
    out[0] = 0;
    if (n == 0) {
        snprintf(out, 16, "%sx%02x", bs, p[0]);
        return;
    }
    if (!(flags & VMSH_TEXT_CONTROLS))
        return;
    if (n == 1 && (p[0] < 0x20 || p[0] == 0x7f)) {
        if (p[0] == '\t')
            snprintf(out, 16, "%st", bs);
        else if (p[0] == '\n')
            snprintf(out, 16, "%sn", bs);
        else if (p[0] == '\r')
            snprintf(out, 16, "%sr", bs);
        else
            snprintf(out, 16, "%sx%02x", bs, p[0]);
    } else if (n == 2 && p[0] == 0xc2 && p[1] <= 0x9f) {
        /* C1 controls: some terminals act on them (0x9b is CSI) */
        snprintf(out, 16, "%su%04x", bs, p[1]);
    }
}

char *vmsh_text_escape(const char *s, size_t len, unsigned flags, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)s;
    /* each input byte becomes at most 6 output bytes ("\\\\x%02x" or a C1's
     * "\\u00hh" for two bytes) */
    if (len > (SIZE_MAX - 1) / 6)
        return NULL;
    char *out = malloc(len * 6 + 1), rep[16];
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = seq_len(p + i, len - i);
        escape_of(p + i, n, flags, rep);
        if (rep[0]) {
            size_t rl = strlen(rep);
            memcpy(out + o, rep, rl);
            o += rl;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
        }
        i += n ? n : 1;
    }
    out[o] = 0;
    if (out_len)
        *out_len = o;
    return out;
}

bool vmsh_text_needs_escape(const char *s, unsigned flags)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = s ? strlen(s) : 0;
    char rep[16];
    for (size_t i = 0; i < len;) {
        size_t n = seq_len(p + i, len - i);
        escape_of(p + i, n, flags, rep);
        if (rep[0])
            return true;
        i += n;
    }
    return false;
}
