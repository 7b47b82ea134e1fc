/* json.h - reading JSON that other parts wrote (writer metadata extras,
 * journal data, a file's "stored" record) without failing on its shape.
 * The documents' own parsers (src/coord/jsonutil.h) check and name what is
 * wrong instead. */
#ifndef VMSH_COORD_JSON_H
#define VMSH_COORD_JSON_H

#include <json-c/json.h>

/* The string member `key` of `o` (borrowed from o), or NULL when o is NULL
 * or not an object, or the member is absent or not a string. */
const char *vmsh_json_str(const struct json_object *o, const char *key);

#endif
