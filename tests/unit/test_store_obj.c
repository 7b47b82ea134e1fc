/* test_store_obj.c - the object stores' common layer (src/repo/store_obj.c,
 * issue 26) over an in-memory backend: directories as key prefixes, the
 * pack writer put whole at commit (nothing visible before), the upload
 * workers' ordering (a put waits for queued packs; a failed upload fails
 * the next operation, so no manifest can name a pack that is not there),
 * ranged reads through the readahead window. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "repo/store_obj.h"

#define MAXOBJ 64

typedef struct mem_store {
    obj_store o;
    pthread_mutex_t mu;
    char *keys[MAXOBJ];
    uint8_t *vals[MAXOBJ];
    size_t lens[MAXOBJ];
    int fail_put; /* the next put of a pack fails with this */
    unsigned put_delay_ms;
    unsigned reads;
} mem_store;

static int find(mem_store *m, const char *key)
{
    for (int i = 0; i < MAXOBJ; i++)
        if (m->keys[i] && strcmp(m->keys[i], key) == 0)
            return i;
    return -1;
}

static int m_put(obj_store *os, const char *key, const void *buf, size_t len, vmsh_error **err)
{
    mem_store *m = (mem_store *)os;
    if (m->put_delay_ms)
        usleep(m->put_delay_ms * 1000);
    pthread_mutex_lock(&m->mu);
    if (m->fail_put && strstr(key, ".pack")) {
        int rc = m->fail_put;
        m->fail_put = 0;
        pthread_mutex_unlock(&m->mu);
        return vmsh_error_set(err, rc, "injected failure putting %s", key);
    }
    int i = find(m, key);
    if (i < 0)
        for (i = 0; i < MAXOBJ && m->keys[i]; i++)
            ;
    assert_true(i < MAXOBJ);
    free(m->keys[i]);
    free(m->vals[i]);
    m->keys[i] = strdup(key);
    m->vals[i] = malloc(len ? len : 1);
    memcpy(m->vals[i], buf, len);
    m->lens[i] = len;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int m_read(obj_store *os, const char *key, uint64_t off, size_t len, void *buf, size_t *got,
                  vmsh_error **err)
{
    (void)err;
    mem_store *m = (mem_store *)os;
    pthread_mutex_lock(&m->mu);
    m->reads++;
    int i = find(m, key);
    if (i < 0) {
        pthread_mutex_unlock(&m->mu);
        return -ENOENT;
    }
    size_t n = off >= m->lens[i] ? 0 : m->lens[i] - (size_t)off;
    if (n > len)
        n = len;
    memcpy(buf, m->vals[i] + off, n);
    *got = n;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int m_stat(obj_store *os, const char *key, repo_store_stat *st, vmsh_error **err)
{
    (void)err;
    mem_store *m = (mem_store *)os;
    pthread_mutex_lock(&m->mu);
    int i = find(m, key);
    if (i >= 0) {
        st->size = m->lens[i];
        st->mtime_ns = 1;
    }
    pthread_mutex_unlock(&m->mu);
    return i < 0 ? -ENOENT : 0;
}

static int m_del(obj_store *os, const char *key, vmsh_error **err)
{
    (void)err;
    mem_store *m = (mem_store *)os;
    int i = find(m, key);
    if (i < 0)
        return -ENOENT;
    free(m->keys[i]);
    free(m->vals[i]);
    m->keys[i] = NULL;
    m->vals[i] = NULL;
    return 0;
}

static int m_list(obj_store *os, const char *prefix, obj_list_fn fn, void *opaque, vmsh_error **err)
{
    (void)err;
    mem_store *m = (mem_store *)os;
    for (int i = 0; i < MAXOBJ; i++)
        if (m->keys[i] && strncmp(m->keys[i], prefix, strlen(prefix)) == 0) {
            int rc = fn(opaque, m->keys[i], m->lens[i], 1);
            if (rc < 0)
                return rc;
        }
    return 0;
}

static int m_lock(obj_store *os, const char *key, bool exclusive, vmsh_lock **out, vmsh_error **err)
{
    (void)os;
    (void)key;
    (void)exclusive;
    (void)out;
    (void)err;
    return 0;
}

static void m_free(obj_store *os)
{
    mem_store *m = (mem_store *)os;
    for (int i = 0; i < MAXOBJ; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const obj_backend_ops mem_be = {m_put, m_read, m_stat, m_del, m_list, m_lock, m_free, NULL};

static mem_store *mem_new(void)
{
    mem_store *m = calloc(1, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    assert_int_equal(obj_store_init(&m->o, &mem_be, "mem://test", NULL), 0);
    return m;
}

typedef struct seen {
    char names[16][64];
    repo_store_kind kinds[16];
    int n;
} seen;

static int collect(void *opaque, const char *name, repo_store_kind kind, const repo_store_stat *st)
{
    (void)st;
    seen *s = opaque;
    snprintf(s->names[s->n], 64, "%s", name);
    s->kinds[s->n++] = kind;
    return 0;
}

static int has(const seen *s, const char *name, repo_store_kind kind)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0 && s->kinds[i] == kind)
            return 1;
    return 0;
}

static void test_dirs_are_prefixes(void **state)
{
    (void)state;
    mem_store *m = mem_new();
    repo_store *st = &m->o.base;
    assert_int_equal(st->ops->mkdir(st, "packs", NULL), 0);
    assert_int_equal(st->ops->put(st, "config", "{}", 2, NULL), 0);
    assert_int_equal(st->ops->put(st, "packs/ab/ab01.pack", "x", 1, NULL), 0);
    assert_int_equal(st->ops->put(st, "packs/ab/ab02.pack", "y", 1, NULL), 0);
    assert_int_equal(st->ops->put(st, "packs/cd/cd01.pack", "z", 1, NULL), 0);
    seen s = {0};
    assert_int_equal(st->ops->list(st, "packs", 0, collect, &s, NULL), 0);
    assert_int_equal(s.n, 2); /* "ab" and "cd", once each */
    assert_true(has(&s, "ab", REPO_STORE_DIR) && has(&s, "cd", REPO_STORE_DIR));
    memset(&s, 0, sizeof(s));
    assert_int_equal(st->ops->list(st, "packs/ab", 0, collect, &s, NULL), 0);
    assert_int_equal(s.n, 2);
    assert_true(has(&s, "ab01.pack", REPO_STORE_REG));
    memset(&s, 0, sizeof(s));
    assert_int_equal(st->ops->list(st, "backups", 0, collect, &s, NULL), 0);
    assert_int_equal(s.n, 0); /* absent: empty, not -ENOENT */
    memset(&s, 0, sizeof(s));
    assert_int_equal(st->ops->list(st, "", 0, collect, &s, NULL), 0);
    assert_true(has(&s, "config", REPO_STORE_REG) && has(&s, "packs", REPO_STORE_DIR));
    /* names are checked as on every store */
    assert_int_equal(st->ops->put(st, "packs/../config", "x", 1, NULL), -EINVAL);
    assert_int_equal(st->ops->stat(st, "nothing", NULL, NULL), -ENOENT);
    repo_store_free(st);
}

static void test_pack_invisible_until_commit(void **state)
{
    (void)state;
    mem_store *m = mem_new();
    repo_store *st = &m->o.base;
    repo_store_file *f = NULL;
    assert_int_equal(st->ops->create(st, "packs/ab/p.pack", REPO_STORE_DIRECT, &f, NULL), -EINVAL);
    assert_int_equal(st->ops->create(st, "packs/ab/p.pack", 0, &f, NULL), 0);
    static uint8_t big[3 << 20];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    assert_int_equal(st->ops->pwrite(f, big, sizeof(big), 0), (int64_t)sizeof(big));
    assert_int_equal(st->ops->pwrite(f, "END", 3, sizeof(big)), 3);
    /* nothing under the name before the commit */
    assert_int_equal(st->ops->stat(st, "packs/ab/p.pack", NULL, NULL), -ENOENT);
    assert_int_equal(st->ops->commit(f, sizeof(big) + 3, NULL), 0);
    /* any later operation waits for the upload: the pack is whole */
    repo_store_stat sb;
    assert_int_equal(st->ops->stat(st, "packs/ab/p.pack", &sb, NULL), 0);
    assert_int_equal(sb.size, sizeof(big) + 3);
    /* ranged reads: a readahead window serves the following small reads */
    repo_store_file *r = NULL;
    assert_int_equal(st->ops->open_file(st, "packs/ab/p.pack", 0, &r, NULL), 0);
    unsigned before = m->reads;
    uint8_t buf[4096];
    for (uint64_t off = 0; off < (1 << 20); off += sizeof(buf)) {
        assert_int_equal(st->ops->pread(r, buf, sizeof(buf), off), (int64_t)sizeof(buf));
        assert_memory_equal(buf, big + off, sizeof(buf));
    }
    assert_int_equal(m->reads - before, 1);
    assert_int_equal(st->ops->pread(r, buf, 10, sizeof(big)), 3);
    assert_memory_equal(buf, "END", 3);
    assert_int_equal(st->ops->pread(r, buf, 10, sizeof(big) + 3), 0);
    st->ops->close(r);
    /* abort sends nothing */
    assert_int_equal(st->ops->create(st, "packs/ab/q.pack", 0, &f, NULL), 0);
    assert_int_equal(st->ops->pwrite(f, "abc", 3, 0), 3);
    st->ops->abort(f);
    assert_int_equal(st->ops->stat(st, "packs/ab/q.pack", NULL, NULL), -ENOENT);
    repo_store_free(st);
}

static void test_failed_upload_fails_the_manifest(void **state)
{
    (void)state;
    mem_store *m = mem_new();
    repo_store *st = &m->o.base;
    m->fail_put = -EIO;
    m->put_delay_ms = 50; /* the commit returns before the upload ends */
    repo_store_file *f = NULL;
    assert_int_equal(st->ops->create(st, "packs/ab/p.pack", 0, &f, NULL), 0);
    assert_int_equal(st->ops->pwrite(f, "data", 4, 0), 4);
    assert_int_equal(st->ops->commit(f, 4, NULL), 0);
    vmsh_error *e = NULL;
    /* the manifest's put waits for the pack, sees its failure, writes nothing */
    assert_int_equal(st->ops->put(st, "backups/0123456789abcdef", "m", 1, &e), -EIO);
    assert_non_null(e);
    assert_non_null(strstr(e->message, "injected failure"));
    vmsh_error_free(e);
    assert_int_equal(find(m, "backups/0123456789abcdef"), -1);
    assert_int_equal(find(m, "packs/ab/p.pack"), -1);
    repo_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dirs_are_prefixes),
        cmocka_unit_test(test_pack_invisible_until_commit),
        cmocka_unit_test(test_failed_upload_fails_the_manifest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
