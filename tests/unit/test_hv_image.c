/* The qcow2 images of the hypervisor layer: vmsh_hv_image_create makes an
 * empty image of a size, or one on a backing file, with the real qemu-img,
 * refuses a name that exists (a link planted there is never followed) and
 * leaves nothing behind when qemu-img fails; vmsh_hv_image_size reads the
 * size a VM sees (qcow2 header, raw file) and refuses what it cannot read. */
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
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/hv/hvops.h>

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
        cmocka_unit_test(image_on_a_backing_file),
        cmocka_unit_test(existing_name_and_planted_link_refused),
        cmocka_unit_test(failed_qemu_img_leaves_nothing),
        cmocka_unit_test(sizes_it_cannot_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
