/* fuzz_repo_config.c - a repository's config file (docs/formats/
 * repository.md, "config" and "Config authentication"), read by every
 * command that opens a repository, which may be damaged or another user's.
 * Opened without a key file (an encrypted config is checked up to the key
 * derivation, whose bounds are part of what is fuzzed, and refused there
 * with -EACCES), then with the key file of passphrase "fuzz passphrase"
 * when the config asks for a cheap key derivation (kdf_n·kdf_r ≤ 8192, as
 * the corpus's v2-encrypted-* configs do): the key is unwrapped, the version
 * binding and the config MAC are checked, and an unencrypted config must
 * refuse the key file. fuzz/gen_repo_config.py made those configs. */
#include "fuzz.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <vmshadow/repo/repo.h>

static int64_t enc_int(json_object *enc, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(enc, key, &v) || !json_object_is_type(v, json_type_int))
        return 0;
    return json_object_get_int64(v);
}

/* what the config asks of scrypt is cheap (or it has no encryption) */
static int cheap(const uint8_t *data, size_t size)
{
    char *text = fuzz_strndup(data, size);
    json_object *cfg = json_tokener_parse(text), *enc = NULL;
    free(text);
    int ok = 1;
    if (cfg && json_object_is_type(cfg, json_type_object) &&
        json_object_object_get_ex(cfg, "encryption", &enc) && enc &&
        json_object_is_type(enc, json_type_object)) {
        int64_t n = enc_int(enc, "kdf_n"), r = enc_int(enc, "kdf_r"), p = enc_int(enc, "kdf_p");
        ok = n > 0 && r > 0 && p == 1 && n <= 8192 && r <= 8 && n * r <= 8192;
    }
    json_object_put(cfg);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[4200], cfg[4300], key[4300];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "%s/cfgrepo", fuzz_scratch());
        mkdir(dir, 0700);
        snprintf(cfg, sizeof(cfg), "%s/config", dir);
        snprintf(key, sizeof(key), "%s/cfgrepo.key", fuzz_scratch());
        fuzz_write_file(key, "fuzz passphrase\n", 16);
    }
    fuzz_write_file(cfg, data, size);
    for (int with_key = 0; with_key < 2; with_key++) {
        if (with_key && !cheap(data, size))
            break;
        vmsh_repo *r = NULL;
        vmsh_error *err = NULL;
        if (vmsh_repo_open(&r, dir, with_key ? key : NULL, &err) < 0) {
            vmsh_error_free(err);
            continue;
        }
        /* opened with a key file: it is encrypted (a plain config refuses
         * the key), and opened without one: it is not */
        if (vmsh_repo_encrypted(r) != (with_key == 1))
            abort();
        (void)vmsh_repo_id(r), (void)vmsh_repo_compression_level(r);
        vmsh_repo_free(r);
    }
    return 0;
}
