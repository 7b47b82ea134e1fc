/* agent_reply.h - parsing the replies of qemu-guest-agent (SPEC R2).
 *
 * The replies come from inside the guest: a hostile or broken guest controls
 * every byte (issue 8). These functions are pure (no libvirt, no I/O), bound
 * every size and count, and never trust a member's type; src/hv/hv.c and
 * hvops.c call them on what virDomainQemuAgentCommand returned, and
 * fuzz/fuzz_agent_reply.c fuzzes them. Thread-safe (no shared state).
 *
 * A reply is the agent's JSON object {"return": ...} (libvirt already turned
 * {"error": ...} into a failed call). Whitespace may follow it; anything else
 * makes it malformed. */
#ifndef VMSH_HV_AGENT_REPLY_H
#define VMSH_HV_AGENT_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include <vmshadow/hv/hv.h>
#include <vmshadow/util/error.h>

/* Largest reply parsed; a larger one is refused, not truncated. */
#define VMSH_AGENT_REPLY_MAX_BYTES (4u << 20)
/* Entries kept of a guest-get-fsinfo reply, and devices per filesystem; the
 * rest is ignored (a guest may have more, a hostile one many more). */
#define VMSH_AGENT_MAX_FS   256
#define VMSH_AGENT_MAX_DEVS 64

/* The "return" member of a reply of `len` bytes (no NUL needed). *out (may
 * be NULL to only check) gets a new reference: the caller puts it.
 * Expected errors: -EBADMSG (not JSON, too large, not an object, no
 * "return"; the message says which), -ENOMEM. */
int vmsh_agent_reply_return(const char *reply, size_t len, struct json_object **out,
                            vmsh_error **err);

/* What a guest-info reply says the agent can do: freeze (both
 * guest-fsfreeze-freeze and guest-fsfreeze-thaw listed and enabled) and list
 * filesystems (guest-get-fsinfo). Unknown or mistyped entries count as "not
 * supported". Expected errors: those of vmsh_agent_reply_return. */
typedef struct vmsh_agent_caps {
    bool can_freeze;
    bool has_fsinfo;
} vmsh_agent_caps;
int vmsh_agent_parse_info(const char *reply, size_t len, vmsh_agent_caps *out, vmsh_error **err);

/* The filesystems of a guest-get-fsinfo reply: at most VMSH_AGENT_MAX_FS,
 * each with at most VMSH_AGENT_MAX_DEVS devices; a mountpoint or type that is
 * not a string is NULL, a disk without a string "dev" is skipped. *fs is
 * malloc'ed (free with vmsh_agent_fs_array_free; NULL with *n 0 for an empty
 * list) and untouched on error. Expected errors: those of
 * vmsh_agent_reply_return, and -EBADMSG when "return" is not an array. */
int vmsh_agent_parse_fsinfo(const char *reply, size_t len, vmsh_agent_fs **fs, size_t *n,
                            vmsh_error **err);
void vmsh_agent_fs_array_free(vmsh_agent_fs *fs, size_t n);

/* A guest-fsfreeze-status reply: 1 for "frozen", 0 for "thawed". Any other
 * answer is -EBADMSG: "cannot tell" must not be read as "thawed", or a thaw
 * that failed would be taken as done (SPEC R7). */
int vmsh_agent_parse_freeze_status(const char *reply, size_t len, vmsh_error **err);

#endif
