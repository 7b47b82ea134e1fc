/* Restore targets (issue 27 point 3, include/vmshadow/repo/sink.h and
 * include/vmshadow/hv/sink.h):
 *  - the repository writes a backed-up file into any sink: every stored chunk
 *    once, the gaps (holes, zero chunks) left alone on a sink that reads as
 *    zeros and zeroed on one that does not (an existing device);
 *  - the file sink: a new file keeps its holes; a file with old content gets
 *    its gaps zeroed; the restored bytes are the backed-up ones;
 *  - the image sink: a qcow2 image written once through a private qemu-nbd
 *    reads back (qemu-img) as the backed-up bytes, passes qemu-img check,
 *    stays sparse, and its server is gone after finish; a format that is no
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

static void image_sink_writes_qcow2_once(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    int dirs = sink_dirs();
    char *out = path2(f->dir, "restored.qcow2");
    vmsh_sink *s = NULL;
    assert_int_equal(vmsh_hv_image_sink_create(out, "qcow2", SIZE, &s, &err), 0);
    assert_true(s->reads_zero);
    assert_int_equal(sink_dirs(), dirs + 1);
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
    free(raw);
    free(out);
    vmsh_repo_free(r);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(into_any_sink_holes_left_or_zeroed, setup, teardown),
        cmocka_unit_test_setup_teardown(file_sink_new_and_old_files, setup, teardown),
        cmocka_unit_test_setup_teardown(image_sink_writes_qcow2_once, setup, teardown),
        cmocka_unit_test_setup_teardown(image_sink_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
