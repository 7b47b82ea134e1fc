/* chunkmap.c - chunk ID → location, an open-addressing hash table. Chunk IDs
 * are cryptographic hashes, so their first 8 bytes are already a uniform
 * hash: no second hash function is needed. ~112 bytes per chunk at the
 * load factor kept here (≤ 1/2; a map loaded for a backup keeps room for
 * an eighth more, up to twice that when it crosses a power of two): 1 TiB
 * of stored 64 KiB chunks is 1.8 GB, a 4 GiB image ~5 MB. */
#include "internal.h"

#include <vmshadow/util/mem.h>

#include <errno.h>
#include <stdlib.h>

void chunk_map_init(chunk_map *m)
{
    memset(m, 0, sizeof(*m));
}

void chunk_map_clear(chunk_map *m)
{
    free(m->slots);
    free(m->used);
    chunk_map_init(m);
}

static size_t slot_of(const uint8_t id[ID_LEN], size_t cap)
{
    uint64_t h;
    memcpy(&h, id, sizeof(h));
    return (size_t)(h & (cap - 1));
}

chunk_loc *chunk_map_find(const chunk_map *m, const uint8_t id[ID_LEN])
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = slot_of(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->used[i])
            return NULL;
        if (memcmp(m->slots[i].id, id, ID_LEN) == 0)
            return &m->slots[i];
    }
}

static int grow(chunk_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    chunk_loc *ns = vmsh_calloc_array(ncap, sizeof(*ns));
    uint8_t *nu = calloc(ncap, 1);
    if (!ns || !nu) {
        free(ns);
        free(nu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->used[i])
            continue;
        size_t j = slot_of(m->slots[i].id, ncap);
        while (nu[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
        nu[j] = 1;
    }
    free(m->slots);
    free(m->used);
    m->slots = ns;
    m->used = nu;
    m->cap = ncap;
    return 0;
}

int chunk_map_reserve(chunk_map *m, size_t n)
{
    while ((n + 1) * 2 > m->cap)
        if (grow(m) < 0)
            return -ENOMEM;
    return 0;
}

int chunk_map_insert(chunk_map *m, const chunk_loc *loc, chunk_loc **out)
{
    if ((m->count + 1) * 2 > m->cap && grow(m) < 0)
        return -ENOMEM;
    size_t i = slot_of(loc->id, m->cap);
    for (;; i = (i + 1) & (m->cap - 1)) {
        if (!m->used[i])
            break;
        if (memcmp(m->slots[i].id, loc->id, ID_LEN) == 0) {
            if (out)
                *out = &m->slots[i];
            return 0;
        }
    }
    m->slots[i] = *loc;
    m->used[i] = 1;
    m->count++;
    if (out)
        *out = &m->slots[i];
    return 1;
}
