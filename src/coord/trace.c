/* trace.c - the steps of a set's freeze window, timed
 * (include/vmshadow/coord/trace.h). */
#include <vmshadow/coord/trace.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t trace_once = PTHREAD_ONCE_INIT;
static int trace_fd = -1;

static void trace_open(void)
{
    const char *path = getenv(VMSH_FREEZE_TRACE_ENV);
    if (path && *path)
        trace_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
}

bool vmsh_trace_on(void)
{
    pthread_once(&trace_once, trace_open);
    return trace_fd >= 0;
}

void vmsh_trace_step(const char *vm, const char *step)
{
    if (!vmsh_trace_on())
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* a blank or a newline in a name would break the line's fields: the
     * names traced are libvirt's, but such a byte becomes '?' all the same */
    char name[256];
    snprintf(name, sizeof(name), "%s", vm && *vm ? vm : "-");
    for (char *c = name; *c; c++)
        if (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r')
            *c = '?';
    char line[512];
    int n = snprintf(line, sizeof(line), "%lld %s %s\n",
                     (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000, name, step ? step : "-");
    if (n <= 0 || (size_t)n >= sizeof(line))
        return;
    ssize_t w = write(trace_fd, line, (size_t)n);
    (void)w; /* a trace that cannot be written is no trace (trace.h) */
}
