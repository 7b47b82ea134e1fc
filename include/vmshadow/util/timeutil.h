/* timeutil.h - clocks. Monotonic for deadlines and measured windows, real
 * time (UTC, RFC 3339) for what documents record. Thread-safe. */
#ifndef VMSH_UTIL_TIMEUTIL_H
#define VMSH_UTIL_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t vmsh_now_ms(void);

/* Formats `t` as "YYYY-MM-DDTHH:MM:SSZ" into buf (at least 21 bytes). */
void vmsh_time_rfc3339(time_t t, char buf[static 21]);

/* Parses what vmsh_time_rfc3339 writes; returns 0 or -EINVAL. */
int vmsh_time_parse_rfc3339(const char *s, time_t *out);

#endif
