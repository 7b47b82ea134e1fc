/* Unit tests of the chunk map (src/repo/chunkmap.c): the table the
 * repository finds chunks by. IDs are made to collide on purpose (same first
 * 8 bytes, same tag bytes) so that probing, tags and growth are exercised
 * with a known answer for every ID. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "repo/internal.h"

/* An ID from a counter: bytes 0..7 from `hash`, 8..11 from `tag`, the rest
 * from `k`, so IDs differ only where a test wants them to. */
static void make_id(uint8_t id[ID_LEN], uint64_t hash, uint32_t tag, uint64_t k)
{
    memset(id, 0xa5, ID_LEN);
    memcpy(id, &hash, sizeof(hash));
    memcpy(id + 8, &tag, sizeof(tag));
    memcpy(id + 16, &k, sizeof(k));
}

static chunk_loc loc_for(uint64_t hash, uint32_t tag, uint64_t k)
{
    chunk_loc l = {.offset = k * 3, .pack = (uint32_t)(k % 7), .stored_len = (uint32_t)k};
    make_id(l.id, hash, tag, k);
    return l;
}

static void empty_map_finds_nothing(void **state)
{
    (void)state;
    chunk_map m;
    chunk_map_init(&m);
    uint8_t id[ID_LEN];
    make_id(id, 1, 2, 3);
    assert_null(chunk_map_find(&m, id));
    chunk_map_clear(&m);
    assert_null(chunk_map_find(&m, id));
}

static void insert_find_and_duplicates(void **state)
{
    (void)state;
    chunk_map m;
    chunk_map_init(&m);
    const uint64_t n = 50000; /* grows the table and the array many times */
    for (uint64_t k = 0; k < n; k++) {
        chunk_loc l = loc_for(k * 0x9e3779b97f4a7c15ull, (uint32_t)(k >> 3), k);
        chunk_loc *out = NULL;
        assert_int_equal(chunk_map_insert(&m, &l, &out), 1);
        assert_non_null(out);
        assert_memory_equal(out->id, l.id, ID_LEN);
        assert_int_equal(out->offset, k * 3);
    }
    assert_int_equal(m.count, n);
    assert_true(m.count * 2 <= m.cap);
    for (uint64_t k = 0; k < n; k++) {
        chunk_loc l = loc_for(k * 0x9e3779b97f4a7c15ull, (uint32_t)(k >> 3), k);
        const chunk_loc *f = chunk_map_find(&m, l.id);
        assert_non_null(f);
        assert_int_equal(f->offset, k * 3);
        assert_int_equal(f->stored_len, (uint32_t)k);
        /* a second insert keeps the first location and says so */
        chunk_loc again = l;
        again.offset = 1;
        chunk_loc *out = NULL;
        assert_int_equal(chunk_map_insert(&m, &again, &out), 0);
        assert_ptr_equal(out, f);
        assert_int_equal(out->offset, k * 3);
    }
    assert_int_equal(m.count, n);
    /* IDs that were never inserted, one byte off each */
    for (uint64_t k = 0; k < 1000; k++) {
        chunk_loc l = loc_for(k * 0x9e3779b97f4a7c15ull, (uint32_t)(k >> 3), k);
        l.id[ID_LEN - 1] ^= 1;
        assert_null(chunk_map_find(&m, l.id));
    }
    chunk_map_clear(&m);
    assert_int_equal(m.count, 0);
}

/* Every ID in one probe chain: the same first 8 bytes; half of them with
 * the same tag too, so only the full comparison tells them apart. */
static void colliding_ids(void **state)
{
    (void)state;
    chunk_map m;
    chunk_map_init(&m);
    const uint64_t n = 600;
    for (uint64_t k = 0; k < n; k++) {
        chunk_loc l = loc_for(42, k % 2 ? 7u : (uint32_t)k, k);
        assert_int_equal(chunk_map_insert(&m, &l, NULL), 1);
    }
    for (uint64_t k = 0; k < n; k++) {
        chunk_loc l = loc_for(42, k % 2 ? 7u : (uint32_t)k, k);
        const chunk_loc *f = chunk_map_find(&m, l.id);
        assert_non_null(f);
        assert_int_equal(f->offset, k * 3);
    }
    chunk_loc absent = loc_for(42, 7, n + 1);
    assert_null(chunk_map_find(&m, absent.id));
    chunk_map_clear(&m);
}

/* reserve: room for n without growing, so locations stay where they are. */
static void reserve_keeps_locations(void **state)
{
    (void)state;
    chunk_map m;
    chunk_map_init(&m);
    chunk_loc first = loc_for(5, 6, 0);
    assert_int_equal(chunk_map_insert(&m, &first, NULL), 1);
    assert_int_equal(chunk_map_reserve(&m, 10000), 0);
    size_t cap = m.cap;
    assert_true(10001 * 2 <= cap);
    const chunk_loc *p = chunk_map_find(&m, first.id);
    assert_non_null(p);
    for (uint64_t k = 1; k < 10000; k++) {
        chunk_loc l = loc_for(k * 0x2545f4914f6cdd1dull, (uint32_t)k, k);
        assert_int_equal(chunk_map_insert(&m, &l, NULL), 1);
    }
    assert_int_equal(m.cap, cap);                      /* no rehash */
    assert_ptr_equal(chunk_map_find(&m, first.id), p); /* no move */
    /* a reserve below what is there changes nothing */
    assert_int_equal(chunk_map_reserve(&m, 10), 0);
    assert_int_equal(m.cap, cap);
    assert_int_equal(m.count, 10000);
    chunk_map_clear(&m);
}

/* The order of insertion is the order of the array (verify walks it). */
static void locations_in_insertion_order(void **state)
{
    (void)state;
    chunk_map m;
    chunk_map_init(&m);
    for (uint64_t k = 0; k < 3000; k++) {
        chunk_loc l = loc_for(~k * 0x9e3779b97f4a7c15ull, (uint32_t)k, k);
        assert_int_equal(chunk_map_insert(&m, &l, NULL), 1);
    }
    for (uint64_t k = 0; k < 3000; k++) {
        chunk_loc l = loc_for(~k * 0x9e3779b97f4a7c15ull, (uint32_t)k, k);
        assert_memory_equal(m.locs[k].id, l.id, ID_LEN);
        assert_ptr_equal(chunk_map_find(&m, l.id), &m.locs[k]);
    }
    chunk_map_clear(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_map_finds_nothing),
        cmocka_unit_test(insert_find_and_duplicates),
        cmocka_unit_test(colliding_ids),
        cmocka_unit_test(reserve_keeps_locations),
        cmocka_unit_test(locations_in_insertion_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
