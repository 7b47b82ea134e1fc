/* chunkmap.c - chunk ID → location: the locations in one dense array, in
 * insertion order, and an open-addressing table of 8-byte slots that point
 * into it. Chunk IDs are cryptographic hashes, so their first 8 bytes are
 * already a uniform hash (no second hash function) and bytes 8..11 serve as
 * a tag that spares most probes a look at the array.
 *
 * Memory: 56 bytes of location per chunk plus 2-4 slots of 8 bytes (the
 * table's load stays ≤ 1/2), ~80 bytes per chunk: a 4 GiB image of 64 KiB
 * chunks ~5 MB, 1 TiB of stored chunks ~1.3 GB. Growing the table rehashes
 * slots only (the array is read in order); the array grows by realloc. */
#include "internal.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdlib.h>

/* A slot: tag in the high 32 bits, array index + 1 in the low (0: empty). */
#define SLOT_INDEX_MAX (UINT32_MAX - 1u)

void chunk_map_init(chunk_map *m)
{
    memset(m, 0, sizeof(*m));
}

void chunk_map_clear(chunk_map *m)
{
    free(m->slots);
    free(m->locs);
    chunk_map_init(m);
}

static uint64_t hash_of(const uint8_t id[ID_LEN])
{
    uint64_t h;
    memcpy(&h, id, sizeof(h));
    return h;
}

static uint32_t tag_of(const uint8_t id[ID_LEN])
{
    uint32_t t;
    memcpy(&t, id + 8, sizeof(t));
    return t;
}

/* The slot holding `id`, or the empty slot where it would go. */
static size_t probe(const chunk_map *m, const uint8_t id[ID_LEN])
{
    uint64_t want = (uint64_t)tag_of(id) << 32;
    for (size_t i = (size_t)hash_of(id) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        uint64_t s = m->slots[i];
        if (s == 0)
            return i;
        if ((s & 0xffffffff00000000ull) == want &&
            memcmp(m->locs[(uint32_t)s - 1].id, id, ID_LEN) == 0)
            return i;
    }
}

chunk_loc *chunk_map_find(const chunk_map *m, const uint8_t id[ID_LEN])
{
    if (m->cap == 0)
        return NULL;
    uint64_t s = m->slots[probe(m, id)];
    return s ? &m->locs[(uint32_t)s - 1] : NULL;
}

static int grow_slots(chunk_map *m, size_t ncap)
{
    uint64_t *ns = vmsh_calloc_array(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (size_t k = 0; k < m->count; k++) {
        const uint8_t *id = m->locs[k].id;
        size_t j = (size_t)hash_of(id) & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = (uint64_t)tag_of(id) << 32 | (uint64_t)(k + 1);
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

static int grow_locs(chunk_map *m, size_t n)
{
    chunk_loc *nl = vmsh_realloc_array(m->locs, n, sizeof(*nl));
    if (!nl)
        return -ENOMEM;
    m->locs = nl;
    m->locs_cap = n;
    return 0;
}

int chunk_map_reserve(chunk_map *m, size_t n)
{
    if (n > SLOT_INDEX_MAX)
        return -ENOMEM;
    size_t ncap = m->cap ? m->cap : 1024;
    while ((n + 1) * 2 > ncap)
        ncap *= 2;
    if (ncap != m->cap && grow_slots(m, ncap) < 0)
        return -ENOMEM;
    return n > m->locs_cap ? grow_locs(m, n) : 0;
}

int chunk_map_insert(chunk_map *m, const chunk_loc *loc, chunk_loc **out)
{
    if (m->count >= SLOT_INDEX_MAX)
        return -ENOMEM;
    if ((m->count + 1) * 2 > m->cap && grow_slots(m, m->cap ? m->cap * 2 : 1024) < 0)
        return -ENOMEM;
    size_t i = probe(m, loc->id);
    if (m->slots[i]) {
        if (out)
            *out = &m->locs[(uint32_t)m->slots[i] - 1];
        return 0;
    }
    if (m->count == m->locs_cap && grow_locs(m, m->locs_cap ? m->locs_cap * 2 : 512) < 0)
        return -ENOMEM;
    m->locs[m->count] = *loc;
    m->slots[i] = (uint64_t)tag_of(loc->id) << 32 | (uint64_t)(m->count + 1);
    m->count++;
    if (out)
        *out = &m->locs[m->count - 1];
    return 1;
}
