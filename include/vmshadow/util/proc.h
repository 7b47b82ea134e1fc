/* proc.h - running a command without a shell (CLI.md, "Script writers").
 *
 * A command line is split into words like a POSIX shell would split it
 * (blanks separate words; '...' is literal; "..." keeps blanks and honours
 * \" \\ \$ \` ; a backslash outside quotes takes the next character
 * literally), but nothing is expanded and no shell runs it. Unquoted shell
 * operators (| & ; < > ( ) $ `) are refused, so that "a | b" fails loudly
 * instead of passing "|" as an argument: put such logic in a script.
 *
 * The child runs in its own process group, with stdin from /dev/null and its
 * stdout sent to our stderr (stdout may carry a --json document). On timeout
 * the whole group gets SIGTERM, then SIGKILL after a short grace period, so
 * nothing it started outlives it. Thread-safe apart from the environment,
 * which is read (not changed) at spawn time.
 */
#ifndef VMSH_UTIL_PROC_H
#define VMSH_UTIL_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <vmshadow/util/error.h>

/* Splits `cmdline` into a NULL-terminated argv (*out; free with
 * vmsh_proc_argv_free). Returns the number of words (0 for a blank line).
 * Expected errors: -EINVAL (unmatched quote, trailing backslash, or an
 * unquoted shell operator; the message names the character and column). */
int vmsh_proc_split(const char *cmdline, char ***out, vmsh_error **err);
void vmsh_proc_argv_free(char **argv);

typedef struct vmsh_proc_result {
    int exit_code;  /* the exit status when the command exited, else -1 */
    int signal;     /* the signal that ended it, else 0 */
    bool timed_out; /* it ran past the timeout and was killed */
    bool stopped;   /* opts->stop said so, and it was killed */
    int64_t ms;     /* how long it ran */
} vmsh_proc_result;

/* Runs argv[0] (looked up in PATH when it has no '/') with argv, with the
 * environment of this process plus `env` (a NULL-terminated list of
 * "NAME=value", overriding same-named variables; may be NULL), and waits at
 * most `timeout_ms` (<= 0: no limit). Returns 0 when the command ran, whatever
 * its outcome: check *out. Expected errors: -ENOENT/-EACCES (the command
 * cannot be executed; message names it), -ENOMEM. */
int vmsh_proc_run(char *const argv[], char *const env[], int64_t timeout_ms, vmsh_proc_result *out,
                  vmsh_error **err);

/* vmsh_proc_run with a way to stop early: `stop` (may be NULL) is polled
 * about every 100 ms while the command runs; when it returns true the
 * command's group is killed as on a timeout and out->stopped is set. */
typedef struct vmsh_proc_opts {
    int64_t timeout_ms;
    bool (*stop)(void *opaque);
    void *opaque;
    int out_fd; /* > 0: the command's stdout goes to this descriptor */
} vmsh_proc_opts;
int vmsh_proc_run_opts(char *const argv[], char *const env[], const vmsh_proc_opts *opts,
                       vmsh_proc_result *out, vmsh_error **err);

/* Runs argv like vmsh_proc_run and returns what it printed on stdout in
 * *out (NUL-terminated, *len bytes; free it) when it exited with status 0.
 * The output goes to an anonymous memory file, never to a named one. Expected
 * errors: those of vmsh_proc_run; -EIO when the command did not exit with
 * status 0 (the message says how it ended); -EFBIG when it printed more than
 * `max` bytes. */
int vmsh_proc_capture(char *const argv[], int64_t timeout_ms, size_t max, char **out, size_t *len,
                      vmsh_error **err);

/* One line describing a result that was not a success ("exited with status 3",
 * "killed by signal 9", "timed out after 5000 ms"); a static or
 * buffer-backed string. */
const char *vmsh_proc_describe(const vmsh_proc_result *r, char *buf, size_t len);

/* The words of a NUL-separated list (a /proc/PID/cmdline: the last word
 * may lack its NUL) as a NULL-terminated argv (*out; free with
 * vmsh_proc_argv_free). Returns the number of words. Expected errors:
 * -ENOMEM. */
int vmsh_proc_argv_from_nul(const char *buf, size_t len, char ***out);

/* The command line of process `pid` (/proc/PID/cmdline, whole however
 * long it is, up to VMSH_PROC_CMDLINE_MAX) as in vmsh_proc_argv_from_nul;
 * a zombie or a kernel thread has none: 0 words. Expected errors: -ENOENT
 * (no such process), -EACCES, -EFBIG; quiet (no error object: a process
 * ending while it is read is the common case). */
#define VMSH_PROC_CMDLINE_MAX (8u << 20)
int vmsh_proc_cmdline(pid_t pid, char ***out);

#endif
