/* fuzz.h - shared by the fuzz targets (docs/reliability.md, "Fuzzing").
 *
 * Each fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput. It is linked two
 * ways: with libFuzzer (-DVMSH_FUZZ=ON, clang) to search for inputs, and with
 * fuzz/driver.c to replay fuzz/corpus/<name>/ as the CTest test fuzz.<name>.
 * A target must be deterministic, fast (well under a second per input) and
 * must free everything it allocates: libFuzzer runs millions of inputs in one
 * process, with LeakSanitizer watching. */
#ifndef VMSH_FUZZ_H
#define VMSH_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A private scratch directory, made once per process (mkdtemp under $TMPDIR)
 * and removed with its contents at exit. Never NULL (aborts on failure). */
const char *fuzz_scratch(void);

/* Writes `len` bytes to `path` (created or truncated, mode 0600). Aborts on
 * failure: a scratch file that cannot be written is a broken host, not a
 * finding. */
void fuzz_write_file(const char *path, const void *data, size_t len);

/* A NUL-terminated copy of the input (malloc'ed; aborts on ENOMEM). */
char *fuzz_strndup(const uint8_t *data, size_t size);

/* Repository targets. fuzz_repo_dir() makes (once) an unencrypted repository
 * layout in the scratch directory, with the config of tests/golden/repo-v1
 * (id FUZZ_REPO_ID) and empty packs/, index/ and backups/; returns its path.
 * fuzz_object_wrap() puts `payload` in a valid object envelope of `type`
 * (docs/formats/repository.md, "Object envelope": header, payload, SHA-256),
 * so that a target can reach the payload parsers behind the checksum;
 * malloc'ed, *len set. */
#define FUZZ_REPO_CONFIG                                                                           \
    "{\"format\":\"vmshadow-repository\",\"version\":1,"                                           \
    "\"id\":\"971494b5d5032171f9195d897be7287a\",\"created\":\"2026-11-24T23:45:21Z\","            \
    "\"chunk_size\":65536,\"pack_size\":67108864,\"hash\":\"sha256\",\"compression\":\"zstd\","    \
    "\"compression_level\":1,\"encryption\":null}\n"
const char *fuzz_repo_dir(void);
uint8_t *fuzz_object_wrap(uint16_t type, const uint8_t *payload, size_t plen, size_t *len);

/* Format version 2 (issue 20): the same scratch layout at fuzz_repo_dir_v2()
 * with a version 2 config; fuzz_object_wrap_v() writes an envelope of the
 * given version. fuzz_repo_put_v() and fuzz_repo_open_v() take the version
 * (1 or 2). fuzz_repo_encrypted() is an encrypted version 2 repository,
 * made and opened once per process (its key derivation is slow) and kept
 * open: a target writes sealed objects into it with object_write (bound to
 * their names) to reach the parsers behind authentication. */
const char *fuzz_repo_dir_v2(void);
uint8_t *fuzz_object_wrap_v(int version, uint16_t type, const uint8_t *payload, size_t plen,
                            size_t *len);
void fuzz_repo_put_v(int version, const char *rel, uint16_t wrap, const uint8_t *data, size_t size);
struct vmsh_repo *fuzz_repo_open_v(int version);
struct vmsh_repo *fuzz_repo_encrypted(void);

/* The repository targets' common steps. fuzz_repo_put() writes the file
 * `rel` of the scratch repository (its directory made as needed): the bytes
 * as they are, or with `wrap` non-zero in a valid object envelope of that
 * type. fuzz_repo_open() opens the scratch repository and aborts when it
 * cannot (a broken host, not a finding): the targets then read the file
 * through the repository's own code. */
struct vmsh_repo;
void fuzz_repo_put(const char *rel, uint16_t wrap, const uint8_t *data, size_t size);
struct vmsh_repo *fuzz_repo_open(void);

#endif
