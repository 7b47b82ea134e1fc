/* sha256mb.h - SHA-256 of up to four messages at once with the CPU's SHA
 * extensions (issue 27 point 5: hashing is a third of a full backup's CPU).
 *
 * One SHA-NI round instruction waits for the previous one; interleaving the
 * rounds of independent messages keeps the unit busy: four 64 KiB chunks at
 * once hash ~1.55x as fast as OpenSSL's one at a time on these machines
 * (docs/formats/repository.md "Why these constants"). The digests are plain
 * SHA-256 (FIPS 180-4), the same bytes OpenSSL gives. */
#ifndef VMSH_REPO_SHA256MB_H
#define VMSH_REPO_SHA256MB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHA256MB_LANES 4

/* True when the CPU has SHA-NI (with SSSE3 and SSE4.1) and a self-test
 * against OpenSSL's SHA-256 passed once in this process; otherwise callers
 * hash with OpenSSL. Thread-safe. */
bool sha256mb_usable(void);

/* True when the CPU has SHA-NI, SSSE3 and SSE4.1 (whatever the self-test
 * said): sha256mb_block and sha256mb_digest may run. */
bool sha256mb_cpu(void);

/* SHA-256's initial state (FIPS 180-4 5.3.3). */
void sha256mb_iv(uint32_t h[8]);

/* Absorbs one 64-byte block into `h` (HMAC's key blocks). Only when usable. */
void sha256mb_block(uint32_t h[8], const uint8_t block[64]);

/* Digests of `n` (1 to SHA256MB_LANES) messages of `len` bytes each: every
 * message continues from `start` after `prefix` bytes (a multiple of 64)
 * were absorbed into it (0 and the IV for plain SHA-256; 64 and a key
 * block's state for HMAC). Only when usable. */
void sha256mb_digest(size_t n, const uint8_t *const *msg, size_t len, const uint32_t start[8],
                     uint64_t prefix, uint8_t (*out)[32]);

/* Tests: false makes sha256mb_usable() false from now on (the OpenSSL
 * path), true gives back what the CPU and the self-test said. */
void sha256mb_allow(bool allow);

#endif
