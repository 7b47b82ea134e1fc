/* The qcow2 images of the hypervisor layer: vmsh_hv_image_create makes an
 * empty image of a size (written by vmsh_qcow2_empty_write: the golden
 * tests/golden/qcow2/empty-5g512.txt, the header fields qemu-img writes, and
 * the real qemu-img check and qemu-io reading and writing it), or one on a
 * backing file with the real qemu-img; refuses a name that exists (a link
 * planted there is never followed) and leaves nothing behind when it fails;
 * vmsh_hv_image_size reads the size a VM sees (qcow2 header, raw file) and
 * refuses what it cannot read. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/hv/hvops.h>

#include "test_repo_helpers.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/vmsh-test-image.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *path(const char *name)
{
    static char p[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
    return p[k];
}

static void empty_image_of_a_size(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    /* not a multiple of the cluster size, above 4 GiB: the 64-bit field */
    uint64_t size = 5ull * 1024 * 1024 * 1024 + 512, got = 0;
    assert_int_equal(vmsh_hv_image_create(path("s.qcow2"), NULL, NULL, size, &err), 0);
    assert_int_equal(vmsh_hv_image_size(path("s.qcow2"), "qcow2", &got, &err), 0);
    assert_true(got == size);
    struct stat st;
    assert_int_equal(stat(path("s.qcow2"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(st.st_size < 1024 * 1024); /* empty: metadata only */
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    uint8_t *b = read_whole_file(path, len);
    assert_non_null(b);
    return b;
}

static void empty_image_is_the_golden_one(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    uint64_t size = 5ull * 1024 * 1024 * 1024 + 512;
    assert_int_equal(vmsh_hv_image_create(path("g.qcow2"), NULL, NULL, size, &err), 0);
    size_t n = 0, gn = 0;
    uint8_t *b = slurp(path("g.qcow2"), &n);
    char *text = nonzero_runs(b, n);
    const char *gdir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(gdir);
    char gp[512];
    snprintf(gp, sizeof(gp), "%s/qcow2/empty-5g512.txt", gdir);
    char *golden = (char *)slurp(gp, &gn);
    if (strcmp(text, golden) != 0)
        fprintf(stderr, "made:\n%s\ngolden:\n%s\n", text, golden);
    assert_string_equal(text, golden);
    /* qemu-img's own image of that size: the same header fields (up to
     * header_length at 100, where it keeps 8 more bytes and a feature name
     * table), the same refcount table and refcount block */
    assert_int_equal(
        run("qemu-img create -q -f qcow2 %s %llu", path("ref.qcow2"), (unsigned long long)size), 0);
    size_t rn = 0;
    uint8_t *ref = slurp(path("ref.qcow2"), &rn);
    assert_true(rn > 3 * 65536 && n >= rn);
    assert_memory_equal(b, ref, 100);
    assert_memory_equal(b + 65536, ref + 65536, 2 * 65536);
    free(ref);
    free(golden);
    free(text);
    free(b);
}

static void qemu_checks_reads_and_writes_the_empty_image(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    /* 513 MiB: an L1 table of two entries, the last L2 table partly used */
    uint64_t size = 513ull * 1024 * 1024;
    assert_int_equal(vmsh_hv_image_create(path("q.qcow2"), NULL, NULL, size, &err), 0);
    assert_int_equal(run("qemu-img check -q %s", path("q.qcow2")), 0);
    assert_int_equal(run("qemu-img info --output=json %s | grep -q '\"virtual-size\": %llu,'",
                         path("q.qcow2"), (unsigned long long)size),
                     0);
    /* a pattern at the start and across the last 512 MiB boundary, zeros
     * between, read back by QEMU's qcow2 driver; still consistent after */
    assert_int_equal(run("qemu-io -f qcow2 -c 'write -q -P 0xab 0 1M' -c 'write -q -P 0xcd 511M "
                         "2M' -c 'read -q -P 0xab 0 1M' -c 'read -q -P 0 1M 510M' -c 'read -q -P "
                         "0xcd 511M 2M' %s 2>&1 | grep -q .",
                         path("q.qcow2")),
                     1); /* qemu-io -q prints only a failed pattern check */
    assert_int_equal(run("qemu-img check -q %s", path("q.qcow2")), 0);
    assert_int_equal(
        run("qemu-img compare -q -f qcow2 -F raw %s /dev/null 2>/dev/null", path("q.qcow2")),
        1); /* not empty any more: differs */
}

static void empty_image_layout_and_limits(void **state)
{
    (void)state;
    uint32_t l1 = 0, clusters = 0;
    const uint64_t MiB = 1024 * 1024;
    assert_int_equal(vmsh_qcow2_empty_layout(0, &l1, &clusters), 0);
    assert_int_equal(l1, 0);
    assert_int_equal(clusters, 3);
    assert_int_equal(vmsh_qcow2_empty_layout(512 * MiB, &l1, &clusters), 0);
    assert_int_equal(l1, 1);
    assert_int_equal(clusters, 4);
    assert_int_equal(vmsh_qcow2_empty_layout(512 * MiB + 512, &l1, &clusters), 0);
    assert_int_equal(l1, 2);
    /* 4 TiB: 8192 entries, one cluster of L1; one more entry, a second */
    assert_int_equal(vmsh_qcow2_empty_layout(4 * 1024 * 1024 * MiB, &l1, &clusters), 0);
    assert_int_equal(l1, 8192);
    assert_int_equal(clusters, 4);
    assert_int_equal(vmsh_qcow2_empty_layout(4 * 1024 * 1024 * MiB + 1, &l1, &clusters), 0);
    assert_int_equal(clusters, 5);
    /* QEMU's largest L1 table (32 MiB): 2 PiB, and not a byte more */
    assert_int_equal(vmsh_qcow2_empty_layout(1ull << 51, &l1, &clusters), 0);
    assert_int_equal(clusters, 3 + 512);
    assert_int_equal(vmsh_qcow2_empty_layout((1ull << 51) + 1, &l1, &clusters), -EFBIG);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_hv_image_create(path("big.qcow2"), NULL, NULL, (1ull << 51) + 1, &err),
                     -EFBIG);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "big.qcow2"));
    vmsh_error_free(err);
    assert_int_equal(access(path("big.qcow2"), F_OK), -1); /* nothing left */
}

static void image_on_a_backing_file(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    int fd = open(path("base.raw"), O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 3 * 1024 * 1024), 0);
    close(fd);
    uint64_t got = 0;
    assert_int_equal(vmsh_hv_image_size(path("base.raw"), "raw", &got, &err), 0);
    assert_true(got == 3 * 1024 * 1024);
    assert_int_equal(vmsh_hv_image_create(path("o.qcow2"), path("base.raw"), "raw", 0, &err), 0);
    assert_int_equal(vmsh_hv_image_size(path("o.qcow2"), "qcow2", &got, &err), 0);
    assert_true(got == 3 * 1024 * 1024); /* the backing file's size */
}

static void existing_name_and_planted_link_refused(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    int fd = open(path("victim"), O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "keep", 4), 4);
    close(fd);
    assert_int_equal(symlink(path("victim"), path("link.qcow2")), 0);
    assert_int_equal(vmsh_hv_image_create(path("link.qcow2"), NULL, NULL, 1 << 20, &err), -EEXIST);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "link.qcow2"));
    vmsh_error_free(err);
    err = NULL;
    struct stat st;
    assert_int_equal(stat(path("victim"), &st), 0);
    assert_int_equal(st.st_size, 4); /* never written through */
}

static void failed_qemu_img_leaves_nothing(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    /* a backing file that does not exist: qemu-img fails */
    assert_int_equal(vmsh_hv_image_create(path("f.qcow2"), path("missing.raw"), "raw", 0, &err),
                     -EIO);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "qemu-img could not create"));
    vmsh_error_free(err);
    assert_int_equal(access(path("f.qcow2"), F_OK), -1);
}

static void sizes_it_cannot_read(void **state)
{
    (void)state;
    vmsh_error *err = NULL;
    uint64_t got = 0;
    int fd = open(path("not.qcow2"), O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "this is no qcow2 image, just text..", 35), 35);
    close(fd);
    assert_int_equal(vmsh_hv_image_size(path("not.qcow2"), "qcow2", &got, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    /* shorter than a header */
    fd = open(path("short.qcow2"), O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "QFI\xfb", 4), 4);
    close(fd);
    assert_int_equal(vmsh_hv_image_size(path("short.qcow2"), "qcow2", &got, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_hv_image_size(path("not.qcow2"), "vmdk", &got, &err), -ENOTSUP);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_hv_image_size(path("nothing"), "raw", &got, &err), -ENOENT);
    vmsh_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_image_of_a_size),
        cmocka_unit_test(empty_image_is_the_golden_one),
        cmocka_unit_test(qemu_checks_reads_and_writes_the_empty_image),
        cmocka_unit_test(empty_image_layout_and_limits),
        cmocka_unit_test(image_on_a_backing_file),
        cmocka_unit_test(existing_name_and_planted_link_refused),
        cmocka_unit_test(failed_qemu_img_leaves_nothing),
        cmocka_unit_test(sizes_it_cannot_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
