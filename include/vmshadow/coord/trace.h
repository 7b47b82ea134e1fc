/* trace.h - the steps of a set's freeze window, timed (issue 27 point 4).
 *
 * A debugging and benchmarking aid, off unless the environment variable
 * VMSHADOW_FREEZE_TRACE names a file: then every vmsh_trace_step appends
 * one line to it,
 *
 *     <CLOCK_MONOTONIC in microseconds> <vm or "-"> <step>
 *
 * (format: docs/formats/freeze-trace.md). The coordinator, the VM writer
 * and the pull provider mark the steps of the window: each guest's freeze,
 * checkpoint, backup-job start and thaw, sent and returned; bench/
 * freeze-bench.sh reads the lines. A line is one write(2) to a file opened
 * with O_APPEND, so the threads of a set never interleave within a line.
 * Costs one load and one compare when off. Thread-safe. Never fails: a
 * file that cannot be opened or written is no trace, never a failed set.
 */
#ifndef VMSH_COORD_TRACE_H
#define VMSH_COORD_TRACE_H

#include <stdbool.h>

#define VMSH_FREEZE_TRACE_ENV "VMSHADOW_FREEZE_TRACE"

/* Whether steps are recorded (the variable was set at the first call). */
bool vmsh_trace_on(void);

/* Records `step` (one word, no blank) of VM `vm` (NULL: the set's) now. */
void vmsh_trace_step(const char *vm, const char *step);

#endif
