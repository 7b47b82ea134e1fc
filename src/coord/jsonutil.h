/* jsonutil.h - small json-c helpers shared by the coordinator's documents
 * (private). Getters fail with -EBADMSG naming the member and `where`. */
#ifndef VMSH_COORD_JSONUTIL_H
#define VMSH_COORD_JSONUTIL_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include <vmshadow/util/error.h>

/* Adds a string member; a NULL value adds null. Returns 0 or -1. */
int vmsh_json_add_str(struct json_object *o, const char *key, const char *value);
/* *out is NULL when absent (or null) and not required. */
int vmsh_json_get_str(struct json_object *o, const char *key, bool required, const char **out,
                      const char *where, vmsh_error **err);
/* *out untouched when absent and not required. */
int vmsh_json_get_int64(struct json_object *o, const char *key, bool required, int64_t *out,
                        const char *where, vmsh_error **err);
int vmsh_json_get_bool(struct json_object *o, const char *key, bool required, bool *out,
                       const char *where, vmsh_error **err);
/* *out is NULL when absent and not required. */
int vmsh_json_get_array(struct json_object *o, const char *key, bool required,
                        struct json_object **out, const char *where, vmsh_error **err);
/* Checks that `doc` is an object whose integer "version" is 1..max:
 * -EBADMSG when missing, -EPROTONOSUPPORT when newer. */
int vmsh_json_check_version(struct json_object *doc, int max, const char *what, vmsh_error **err);
/* Parses text into an object: -EBADMSG with json-c's reason. */
int vmsh_json_parse(const char *text, size_t len, struct json_object **out, const char *what,
                    vmsh_error **err);

#endif
