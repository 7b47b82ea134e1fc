/* writer.c - event names and the plug-in tables' helpers
 * (include/vmshadow/coord/writer.h). */
#include <vmshadow/coord/writer.h>

#include <string.h>

static const char *const event_names[VMSH_EVENT_COUNT] = {
    [VMSH_EVENT_IDENTIFY] = "identify",
    [VMSH_EVENT_PREPARE_BACKUP] = "prepare-backup",
    [VMSH_EVENT_PREPARE_SNAPSHOT] = "prepare-snapshot",
    [VMSH_EVENT_FREEZE] = "freeze",
    [VMSH_EVENT_THAW] = "thaw",
    [VMSH_EVENT_POST_SNAPSHOT] = "post-snapshot",
    [VMSH_EVENT_BACKUP_COMPLETE] = "backup-complete",
    [VMSH_EVENT_ABORT] = "abort",
    [VMSH_EVENT_PRE_RESTORE] = "pre-restore",
    [VMSH_EVENT_POST_RESTORE] = "post-restore",
};

const char *vmsh_event_name(vmsh_event e)
{
    return (unsigned)e < VMSH_EVENT_COUNT ? event_names[e] : "unknown";
}

int vmsh_event_from_name(const char *name)
{
    for (int i = 0; name && i < VMSH_EVENT_COUNT; i++)
        if (strcmp(event_names[i], name) == 0)
            return i;
    return -1;
}

void vmsh_writer_free(vmsh_writer_ops *w)
{
    if (w && w->free)
        w->free(w);
}

void vmsh_provider_free(vmsh_provider_ops *p)
{
    if (p && p->free)
        p->free(p);
}
