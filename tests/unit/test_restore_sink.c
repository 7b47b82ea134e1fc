/* Restore targets (issue 27 point 3, include/vmshadow/repo/sink.h and
 * include/vmshadow/hv/sink.h):
 *  - the repository writes a backed-up file into any sink: every stored chunk
 *    once, the gaps (holes, zero chunks) left alone on a sink that reads as
 *    zeros and zeroed on one that does not (an existing device);
 *  - the file sink: a new file keeps its holes; a file with old content gets
 *    its gaps zeroed; the restored bytes are the backed-up ones;
 *  - the image sink: a new qcow2 image written once, directly (no qemu-nbd,
 *    no socket) or through a private qemu-nbd (VMSHADOW_SINK_QEMU_NBD=1),
 *    reads back (qemu-img) as the backed-up bytes, passes qemu-img check,
 *    stays sparse, and its server is gone after finish; the direct writer
 *    with several L2 tables and refcount blocks, concurrent, out-of-order
 *    and unaligned writes (qcow2_direct_layout); a format that is no
 *    image file format (hostile backup) and an existing name are refused,
 *    leaving nothing behind; an abandoned sink stops its server. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>

#include <vmshadow/hv/sink.h>
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/sink.h>
#include <vmshadow/repo/source.h>

#include "test_repo_helpers.h"

#define SIZE ((6u << 20) + 1000)

typedef struct fixture {
    char *dir, *repo, *img;
    char id[17];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    assert_non_null(f->dir);
    f->repo = path2(f->dir, "repo");
    f->img = path2(f->dir, "disk.img");
    assert_int_equal(make_image(f->img, SIZE, 11), 0);
    assert_int_equal(vmsh_repo_init(f->repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_file(&src, f->img, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "vda", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "{}", &err), 0);
    snprintf(f->id, sizeof(f->id), "%s", vmsh_backup_id(b));
    vmsh_source_free(src);
    vmsh_backup_free(b);
    vmsh_repo_free(r);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rm_rf(f->dir);
    free(f->dir);
    free(f->repo);
    free(f->img);
    free(f);
    return 0;
}

/* A sink in memory that records what it was asked. */
typedef struct mem_sink {
    uint8_t *data;
    uint64_t size, written, zeroed;
    unsigned writes, zeros, flushes;
    pthread_mutex_t mu;
} mem_sink;

static int mem_pwrite(void *impl, const void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    mem_sink *m = impl;
    (void)err;
    assert_true(off + len <= m->size);
    pthread_mutex_lock(&m->mu);
    memcpy(m->data + off, buf, len);
    m->written += len;
    m->writes++;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int mem_zero(void *impl, uint64_t off, uint64_t len, vmsh_error **err)
{
    mem_sink *m = impl;
    (void)err;
    assert_true(off + len <= m->size);
    pthread_mutex_lock(&m->mu);
    memset(m->data + off, 0, len);
    m->zeroed += len;
    m->zeros++;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int mem_flush(void *impl, vmsh_error **err)
{
    (void)err;
    ((mem_sink *)impl)->flushes++;
    return 0;
}

static const vmsh_sink_ops mem_ops = {.version = VMSH_SINK_OPS_VERSION,
                                      .kind = "memory",
                                      .pwrite = mem_pwrite,
                                      .zero = mem_zero,
                                      .flush = mem_flush};

static uint8_t *read_all(const char *p, uint64_t size)
{
    uint8_t *b = malloc(size);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, b, size, 0), (ssize_t)size);
    close(fd);
    return b;
}

static void into_any_sink_holes_left_or_zeroed(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    uint8_t *want = read_all(f->img, SIZE);
    for (int fresh = 0; fresh < 2; fresh++) {
        mem_sink m = {.data = malloc(SIZE), .size = SIZE};
        pthread_mutex_init(&m.mu, NULL);
        /* old content everywhere: what is not written or zeroed shows */
        memset(m.data, 0xa5, SIZE);
        vmsh_sink s = {.ops = &mem_ops, .impl = &m, .size = SIZE, .reads_zero = fresh};
        vmsh_restore_stats st = {0};
        assert_int_equal(vmsh_repo_restore_sink(r, f->id, "vda", &s, NULL, NULL, &st, &err), 0);
        /* the 1 MiB hole and the 1 MiB of zeros are not stored: never written */
        assert_true(m.written == st.bytes_written);
        assert_true(m.written <= SIZE - (2u << 20) + 4096);
        if (fresh) {
            assert_int_equal(m.zeros, 0);
        } else {
            /* exactly the gaps: the file less what was written */
            assert_true(m.zeroed == SIZE - m.written);
            assert_memory_equal(m.data, want, SIZE);
        }
        /* the caller's finish flushes, not the repository */
        assert_int_equal(m.flushes, 0);
        pthread_mutex_destroy(&m.mu);
        free(m.data);
    }
    /* a sink of another size than the file: refused before any write */
    mem_sink m = {.data = malloc(SIZE + 4096), .size = SIZE + 4096};
    pthread_mutex_init(&m.mu, NULL);
    vmsh_sink s = {.ops = &mem_ops, .impl = &m, .size = SIZE + 4096, .reads_zero = true};
    assert_int_equal(vmsh_repo_restore_sink(r, f->id, "vda", &s, NULL, NULL, NULL, &err), -EINVAL);
    assert_int_equal(m.writes, 0);
    vmsh_error_free(err);
    err = NULL;
    pthread_mutex_destroy(&m.mu);
    free(m.data);
    free(want);
    vmsh_repo_free(r);
}

static void file_sink_new_and_old_files(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    /* a new file: holes stay holes */
    char *out = path2(f->dir, "new.img");
    int fd = open(out, O_RDWR | O_CREAT | O_EXCL, 0600);
    vmsh_sink *s = NULL;
    assert_int_equal(vmsh_sink_open_fd(fd, SIZE, out, &s, &err), 0);
    assert_true(s->reads_zero);
    assert_int_equal(vmsh_repo_restore_sink(r, f->id, "vda", s, NULL, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_sink_finish(s, &err), 0);
    close(fd);
    assert_int_equal(compare_files(f->img, out), 0);
    assert_true(allocated_bytes(out) <= (4u << 20) + 8192);
    /* a file full of old bytes: the gaps are zeroed */
    char *old = path2(f->dir, "old.img");
    fd = open(old, O_RDWR | O_CREAT | O_EXCL, 0600);
    uint8_t *junk = malloc(SIZE);
    memset(junk, 0x5a, SIZE);
    assert_int_equal(pwrite(fd, junk, SIZE, 0), (ssize_t)SIZE);
    assert_int_equal(vmsh_sink_open_fd(fd, SIZE, old, &s, &err), 0);
    assert_false(s->reads_zero);
    assert_int_equal(vmsh_repo_restore_sink(r, f->id, "vda", s, NULL, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_sink_finish(s, &err), 0);
    close(fd);
    assert_int_equal(compare_files(f->img, old), 0);
    /* neither a file nor a device */
    fd = open(f->dir, O_RDONLY | O_DIRECTORY);
    assert_int_equal(vmsh_sink_open_fd(fd, SIZE, f->dir, &s, &err), -EINVAL);
    assert_null(s);
    close(fd);
    vmsh_error_free(err);
    free(junk);
    free(out);
    free(old);
    vmsh_repo_free(r);
}

/* how many directories /tmp/vmshadow-sink-* exist */
static int sink_dirs(void)
{
    DIR *d = opendir("/tmp");
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strncmp(de->d_name, "vmshadow-sink-", 14) == 0;
    if (d)
        closedir(d);
    return n;
}

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `direct`: the new qcow2 written by vmshadow itself (no qemu-nbd, no
 * socket); otherwise through qemu-nbd (VMSHADOW_SINK_QEMU_NBD=1, the path of
 * other formats and of storage that exists) */
static void image_sink_qcow2(fixture *f, bool direct)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    int dirs = sink_dirs();
    char *out = path2(f->dir, "restored.qcow2");
    vmsh_sink *s = NULL;
    if (!direct)
        setenv("VMSHADOW_SINK_QEMU_NBD", "1", 1);
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", SIZE, &s, &err), 0);
    unsetenv("VMSHADOW_SINK_QEMU_NBD");
    assert_true(s->reads_zero);
    /* a private qemu-nbd serves it, or nothing does */
    assert_int_equal(sink_dirs(), dirs + (direct ? 0 : 1));
    assert_string_equal(s->ops->kind, direct ? "qcow2" : "nbd");
    vmsh_restore_stats st = {0};
    assert_int_equal(vmsh_repo_restore_sink(r, f->id, "vda", s, NULL, NULL, &st, &err), 0);
    assert_int_equal(vmsh_sink_finish(s, &err), 0);
    /* the server and its socket are gone */
    assert_int_equal(sink_dirs(), dirs);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", out);
    assert_int_equal(run(cmd), 0);
    /* qcow2 keeps its holes: the hole and the zeros are not allocated */
    assert_true(allocated_bytes(out) < SIZE - (1u << 20));
    /* the guest's bytes, read by QEMU (the virtual size is rounded up to
     * 512-byte sectors: compare the file's length) */
    char *raw = path2(f->dir, "back.raw");
    snprintf(cmd, sizeof(cmd), "qemu-img convert -f qcow2 -O raw '%s' '%s' && truncate -s %u '%s'",
             out, raw, (unsigned)SIZE, raw);
    assert_int_equal(run(cmd), 0);
    assert_int_equal(compare_files(f->img, raw), 0);
    unlink(raw);
    unlink(out);
    free(raw);
    free(out);
    vmsh_repo_free(r);
}

static void image_sink_writes_qcow2_once(void **state)
{
    image_sink_qcow2(*state, true);
    image_sink_qcow2(*state, false);
}

typedef struct wr {
    vmsh_sink *s;
    unsigned part, parts;
    uint64_t clusters;
} wr;

/* the byte written at `off` by qcow2_direct_layout */
static uint8_t pat(uint64_t off)
{
    return (uint8_t)((off >> 16) * 7 + off % 251 + 1);
}

/* Every `parts`-th cluster from `part` on, 512 bytes at its start, from the
 * last to the first: the host clusters are allocated out of guest order. */
static void *writer(void *arg)
{
    wr *w = arg;
    uint8_t buf[512];
    for (uint64_t c = w->clusters; c-- > 0;) {
        if (c % w->parts != w->part)
            continue;
        for (unsigned i = 0; i < sizeof(buf); i++)
            buf[i] = pat(c * 65536 + i);
        vmsh_error *err = NULL;
        if (w->s->ops->pwrite(w->s->impl, buf, sizeof(buf), c * 65536, &err) < 0)
            return err;
    }
    return NULL;
}

/* The direct qcow2 writer beyond what a small restore reaches: more than
 * 32768 clusters (a second refcount block) over several L2 tables, from
 * four threads at once, out of order; unaligned writes (buffered) beside
 * aligned ones (O_DIRECT), a cluster written twice, a write across a
 * cluster boundary; zero() of a range never written (nothing to do) and of
 * one written (-EOPNOTSUPP: the repository writes zeros). QEMU reads back
 * exactly what a raw file written the same way holds, and qemu-img check
 * finds no error and no leak. An abandoned image is the empty image. */
static void qcow2_direct_layout(void **state)
{
    fixture *f = *state;
    vmsh_error *err = NULL;
    const uint64_t vsize = 3ull << 30, clusters = 34000;
    char *out = path2(f->dir, "big.qcow2"), *ref = path2(f->dir, "big.raw");
    vmsh_sink *s = NULL;
    int dirs = sink_dirs();
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", vsize, &s, &err), 0);
    assert_int_equal(sink_dirs(), dirs);
    assert_string_equal(s->ops->kind, "qcow2");
    pthread_t t[4];
    wr w[4];
    for (unsigned i = 0; i < 4; i++) {
        w[i] = (wr){.s = s, .part = i, .parts = 4, .clusters = clusters};
        assert_int_equal(pthread_create(&t[i], NULL, writer, &w[i]), 0);
    }
    for (unsigned i = 0; i < 4; i++) {
        void *e = NULL;
        pthread_join(t[i], &e);
        assert_null(e);
    }
    /* an aligned 1 MiB write (O_DIRECT) at 2.5 GiB, one across a cluster
     * boundary at an odd offset, and cluster 5 written again further in */
    uint8_t *big = NULL;
    assert_int_equal(posix_memalign((void **)&big, 4096, 1 << 20), 0);
    uint64_t at = 5ull << 29;
    for (unsigned i = 0; i < (1u << 20); i++)
        big[i] = pat(at + i);
    assert_int_equal(s->ops->pwrite(s->impl, big, 1 << 20, at, &err), 0);
    uint64_t odd = at + (3u << 20) - 1000;
    for (unsigned i = 0; i < 3000; i++)
        big[i] = pat(odd + i);
    assert_int_equal(s->ops->pwrite(s->impl, big, 3000, odd, &err), 0);
    uint64_t again = 5 * 65536 + 4096;
    for (unsigned i = 0; i < 8192; i++)
        big[i] = pat(again + i);
    assert_int_equal(s->ops->pwrite(s->impl, big, 8192, again, &err), 0);
    /* zero(): nothing to do where nothing was written, refused where */
    assert_int_equal(s->ops->zero(s->impl, 9ull << 28, 64ull << 20, &err), 0);
    assert_int_equal(s->ops->zero(s->impl, 65536, 65536, &err), -EOPNOTSUPP);
    assert_null(err);
    /* beyond the end: refused, nothing written */
    assert_true(s->ops->pwrite(s->impl, big, 4096, vsize, &err) < 0);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_sink_finish(s, &err), 0);

    /* the same writes into a raw file */
    int fd = open(ref, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)vsize), 0);
    uint8_t buf[512];
    for (uint64_t c = 0; c < clusters; c++) {
        for (unsigned i = 0; i < sizeof(buf); i++)
            buf[i] = pat(c * 65536 + i);
        assert_int_equal(pwrite(fd, buf, sizeof(buf), (off_t)(c * 65536)), (ssize_t)sizeof(buf));
    }
    for (unsigned i = 0; i < (1u << 20); i++)
        big[i] = pat(at + i);
    assert_int_equal(pwrite(fd, big, 1 << 20, (off_t)at), 1 << 20);
    for (unsigned i = 0; i < 3000; i++)
        big[i] = pat(odd + i);
    assert_int_equal(pwrite(fd, big, 3000, (off_t)odd), 3000);
    for (unsigned i = 0; i < 8192; i++)
        big[i] = pat(again + i);
    assert_int_equal(pwrite(fd, big, 8192, (off_t)again), 8192);
    close(fd);
    free(big);

    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", out);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof(cmd),
             "test \"$(qemu-img info --output=json '%s' | jq -r '.\"virtual-size\"')\" = %llu", out,
             (unsigned long long)vsize);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f qcow2 -F raw '%s' '%s'", out, ref);
    assert_int_equal(run(cmd), 0);
    /* holes kept: the unwritten clusters are not allocated in the image */
    snprintf(cmd, sizeof(cmd),
             "test \"$(qemu-img map --output=json '%s' | jq '[.[] | select(.data) | "
             ".length] | add')\" -lt %llu",
             out, (unsigned long long)(clusters * 65536 + (2u << 20) + 65536 * 2));
    assert_int_equal(run(cmd), 0);
    unlink(out);
    unlink(ref);

    /* abandoned after writes: the empty image, no error in it */
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", 1 << 20, &s, &err), 0);
    memset(buf, 0xab, sizeof(buf));
    assert_int_equal(s->ops->pwrite(s->impl, buf, sizeof(buf), 0, &err), 0);
    vmsh_sink_free(s);
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", out);
    assert_int_equal(run(cmd), 0);
    unlink(out);
    free(out);
    free(ref);
}

static void image_sink_refusals(void **state)
{
    fixture *f = *state;
    vmsh_error *err = NULL;
    vmsh_sink *s = NULL;
    int dirs = sink_dirs();
    char *out = path2(f->dir, "x.img");
    /* formats from a hostile backup: never a driver that reaches elsewhere */
    const char *bad[] = {"raw", "vvfat", "nbd", "file", "../qcow2", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(vmsh_hv_image_sink_create(out, bad[i], 1 << 20, &s, &err), -EINVAL);
        assert_null(s);
        assert_int_equal(access(out, F_OK), -1);
        vmsh_error_free(err);
        err = NULL;
    }
    /* an existing name (or a link planted there) is not written through */
    char *target = path2(f->dir, "victim");
    assert_int_equal(write_text_file(target, "keep"), 0);
    assert_int_equal(symlink(target, out), 0);
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", 1 << 20, &s, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;
    unlink(out);
    /* abandoned: the server stops, the caller removes the file */
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", 1 << 20, &s, &err), 0);
    vmsh_sink_free(s);
    assert_int_equal(sink_dirs(), dirs);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", out);
    assert_int_equal(run(cmd), 0);
    uint8_t *k = read_all(target, 4);
    assert_memory_equal(k, "keep", 4);
    free(k);
    free(target);
    free(out);
}

/* docs/formats/qcow2-restore.md, version 1: a 1 GiB + 512 image (3 L1
 * entries), written from one thread: 16 bytes at guest 512 MiB + 8 (the
 * second L2 table; buffered), then 4096 bytes at guest 0 (O_DIRECT: 8 bytes
 * 0xa5 at each end); the
 * file is tests/golden/qcow2/restore-1g512.txt byte for byte. */
static void qcow2_direct_golden(void **state)
{
    fixture *f = *state;
    vmsh_error *err = NULL;
    char *out = path2(f->dir, "g.qcow2");
    vmsh_sink *s = NULL;
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", (1ull << 30) + 512, &s, &err), 0);
    uint8_t *b = NULL;
    assert_int_equal(posix_memalign((void **)&b, 4096, 4096), 0);
    memset(b, 0x5a, 16);
    assert_int_equal(s->ops->pwrite(s->impl, b, 16, (512ull << 20) + 8, &err), 0);
    memset(b, 0, 4096);
    memset(b, 0xa5, 8);
    memset(b + 4088, 0xa5, 8);
    assert_int_equal(s->ops->pwrite(s->impl, b, 4096, 0, &err), 0);
    free(b);
    assert_int_equal(vmsh_sink_finish(s, &err), 0);
    size_t n = 0, gn = 0;
    uint8_t *img = read_whole_file(out, &n);
    assert_non_null(img);
    char *text = nonzero_runs(img, n);
    const char *gdir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(gdir);
    char gp[512];
    snprintf(gp, sizeof(gp), "%s/qcow2/restore-1g512.txt", gdir);
    char *golden = (char *)read_whole_file(gp, &gn);
    assert_non_null(golden);
    if (strcmp(text, golden) != 0)
        fprintf(stderr, "made:\n%s\ngolden:\n%s\n", text, golden);
    assert_string_equal(text, golden);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", out);
    assert_int_equal(run(cmd), 0);
    free(golden);
    free(text);
    free(img);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(into_any_sink_holes_left_or_zeroed, setup, teardown),
        cmocka_unit_test_setup_teardown(file_sink_new_and_old_files, setup, teardown),
        cmocka_unit_test_setup_teardown(image_sink_writes_qcow2_once, setup, teardown),
        cmocka_unit_test_setup_teardown(image_sink_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(qcow2_direct_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(qcow2_direct_golden, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
