/* test_spawn_helpers.h - shared by the unit tests that look at a process's
 * command line (/proc/PID/cmdline): a child whose argv holds one long
 * argument, blocked until the test lets it go. Header-only so every test
 * program stays one file. */
#ifndef TEST_SPAWN_HELPERS_H
#define TEST_SPAWN_HELPERS_H

#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* A child running `sh -c 'read x' ARGV0 PAD A1 [A2]` (argv[0] ARGV0, PAD
 * `big` bytes of `fill`): it blocks reading the pipe whose write end is
 * *release (close it to let the child exit; the caller reaps it). -1 when
 * the fork fails. */
static inline pid_t spawn_blocked(const char *argv0, char fill, size_t big, const char *a1,
                                  const char *a2, int *release)
{
    char *pad = malloc(big + 1);
    int in[2];
    if (!pad || pipe(in) < 0) {
        free(pad);
        return -1;
    }
    memset(pad, fill, big);
    pad[big] = 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        close(in[1]);
        execl("/bin/sh", argv0, "-c", "read x", pad, a1, a2, (char *)NULL);
        _exit(127);
    }
    free(pad);
    close(in[0]);
    if (pid < 0)
        close(in[1]);
    else
        *release = in[1];
    return pid;
}

#endif
