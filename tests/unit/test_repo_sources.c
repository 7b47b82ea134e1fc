/* Unit tests of the block-source table (vmsh_source_ops): a custom kind
 * plugs in; a source whose reads fail mid-way fails only its own file and
 * leaves the pending backup usable; a source that reports dirty extents
 * drives an incremental; a source that returns bad extents is refused; the
 * backup's reads run ahead of its workers (issue 27 point 5). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>

#include <cmocka.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include "test_repo_helpers.h"

#define SIZE (2u << 20)

typedef struct fake {
    uint8_t *data;
    uint64_t fail_at;  /* a read touching this offset fails (UINT64_MAX: never) */
    bool bad_extents;  /* report an extent that does not start where asked */
    uint64_t dirty_lo; /* dirty range [lo, hi) */
    uint64_t dirty_hi;
    uint64_t reads;
} fake;

static int fake_extents(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                        vmsh_error **err)
{
    fake *f = impl;
    out[0] = (vmsh_extent){offset + (f->bad_extents ? 1 : 0), length, 0};
    return 1;
}

static int fake_dirty(void *impl, uint64_t offset, uint64_t length, vmsh_extent *out, size_t max,
                      vmsh_error **err)
{
    fake *f = impl;
    uint64_t end = offset + length;
    if (offset < f->dirty_lo) {
        uint64_t e = f->dirty_lo < end ? f->dirty_lo : end;
        out[0] = (vmsh_extent){offset, e - offset, VMSH_EXTENT_ZERO};
    } else if (offset < f->dirty_hi) {
        uint64_t e = f->dirty_hi < end ? f->dirty_hi : end;
        out[0] = (vmsh_extent){offset, e - offset, 0};
    } else {
        out[0] = (vmsh_extent){offset, length, VMSH_EXTENT_ZERO};
    }
    return 1;
}

static int fake_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    fake *f = impl;
    __atomic_add_fetch(&f->reads, len, __ATOMIC_RELAXED);
    if (f->fail_at >= off && f->fail_at < off + len)
        return vmsh_error_set(err, -EIO, "fake device error at %llu",
                              (unsigned long long)f->fail_at);
    memcpy(buf, f->data + off, len);
    return 0;
}

static const vmsh_source_ops fake_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "fake",
    .extents = fake_extents,
    .pread = fake_pread,
    .dirty_extents = fake_dirty,
};

static uint8_t *fake_data(uint64_t seed)
{
    uint8_t *d = malloc(SIZE);
    uint64_t s = seed;
    fill_random(d, SIZE, &s);
    return d;
}

/* A base whose chunks the repository does not hold (here: the index of
 * another repository) is refused, checked ahead or in the backup itself;
 * a check made before the map was forgotten is not trusted after. */
static void base_chunks_must_exist(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), *ra = path2(dir, "a"), *rb = path2(dir, "b");
    assert_int_equal(vmsh_repo_init(ra, NULL, NULL), 0);
    assert_int_equal(vmsh_repo_init(rb, NULL, NULL), 0);
    vmsh_repo *a = NULL, *bb = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&a, ra, NULL, NULL), 0);
    assert_int_equal(vmsh_repo_open(&bb, rb, NULL, NULL), 0);
    fake fa = {.data = fake_data(7), .fail_at = UINT64_MAX};
    fake fb = {.data = fake_data(8), .fail_at = UINT64_MAX, .dirty_lo = 0, .dirty_hi = 1000};
    vmsh_source *sa = NULL, *sb = NULL;
    assert_int_equal(vmsh_source_new(&sa, &fake_ops, &fa, SIZE, "fa", &err), 0);
    assert_int_equal(vmsh_source_new(&sb, &fake_ops, &fb, SIZE, "fb", &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, a, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "disk", sa, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);
    assert_int_equal(vmsh_backup_begin(&b, bb, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "disk", sb, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);

    vmsh_file_index *foreign = NULL, *own = NULL;
    assert_int_equal(vmsh_file_index_load(&foreign, bb, "latest", "disk", &err), 0);
    assert_int_equal(vmsh_file_index_load(&own, a, "latest", "disk", &err), 0);
    assert_int_equal(vmsh_backup_begin(&b, a, &err), 0);
    assert_int_equal(vmsh_file_index_check_chunks(foreign, a, "disk", &err), -EBADMSG);
    assert_non_null(strstr(err->message, "no longer holds"));
    vmsh_error_free(err);
    err = NULL;
    /* unchecked: the backup looks them up itself and refuses the file */
    vmsh_add_opts o = {.base = foreign};
    assert_int_equal(vmsh_backup_add_file(b, "disk", sb, &o, NULL, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "run a full backup"));
    vmsh_error_free(err);
    err = NULL;
    vmsh_backup_free(b); /* not committed: the map is forgotten */

    /* checked against repository a, then a's map forgotten (an aborted
     * backup): the next backup looks the chunks up again; checked
     * against b, it means nothing for a */
    assert_int_equal(vmsh_backup_begin(&b, bb, &err), 0);
    assert_int_equal(vmsh_file_index_check_chunks(foreign, bb, "disk", &err), 0);
    vmsh_backup_free(b);
    assert_int_equal(vmsh_backup_begin(&b, a, &err), 0);
    o.base = foreign;
    assert_int_equal(vmsh_backup_add_file(b, "disk", sb, &o, NULL, &err), -EBADMSG);
    vmsh_error_free(err);
    err = NULL;
    vmsh_backup_free(b);
    assert_int_equal(vmsh_backup_begin(&b, a, &err), 0);
    assert_int_equal(vmsh_file_index_check_chunks(own, a, "disk", &err), 0);
    vmsh_backup_free(b); /* forgets a's map: the check is stale */
    assert_int_equal(vmsh_backup_begin(&b, a, &err), 0);
    o.base = own;
    fa.dirty_lo = 0;
    fa.dirty_hi = 1000;
    assert_int_equal(vmsh_backup_add_file(b, "disk", sa, &o, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);

    vmsh_file_index_free(foreign);
    vmsh_file_index_free(own);
    vmsh_source_free(sa);
    vmsh_source_free(sb);
    free(fa.data);
    free(fb.data);
    vmsh_repo_free(a);
    vmsh_repo_free(bb);
    rm_rf(dir);
    free(ra);
    free(rb);
    free(dir);
}

static void custom_kind_and_failing_reads(void **state)
{
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);

    vmsh_source *bad = NULL;
    vmsh_error *err = NULL;
    vmsh_source_ops v2 = fake_ops;
    v2.version = 99;
    fake f = {.data = fake_data(1), .fail_at = 1500000, .dirty_hi = 0};
    assert_int_equal(vmsh_source_new(&bad, &v2, &f, SIZE, "v2", &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;

    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_new(&src, &fake_ops, &f, SIZE, "fake0", &err), 0);
    assert_string_equal(vmsh_source_kind(src), "fake");
    assert_true(vmsh_source_has_dirty(src));
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "broken", src, NULL, NULL, &err), -EIO);
    assert_non_null(strstr(err->message, "broken"));
    assert_non_null(strstr(err->message, "fake device error"));
    vmsh_error_free(err);
    err = NULL;
    /* the pending backup goes on: another file, then commit */
    f.fail_at = UINT64_MAX;
    assert_int_equal(vmsh_backup_add_file(b, "good", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);
    vmsh_backup_info *info = NULL;
    assert_int_equal(vmsh_repo_backup_info(r, "latest", &info, &err), 0);
    assert_int_equal(info->n_files, 1);
    assert_null(vmsh_backup_info_file(info, "broken"));
    vmsh_backup_info_free(info);
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, "latest", "good", SIZE, &got, &len, &err), 0);
    assert_int_equal(len, SIZE);
    assert_memory_equal(got, f.data, SIZE);
    free(got);
    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err), 0);
    vmsh_verify_report_free(rep);

    /* bad extents from a kind are refused, not trusted */
    f.bad_extents = true;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "x", src, NULL, NULL, &err), -EIO);
    assert_non_null(strstr(err->message, "inconsistent"));
    vmsh_error_free(err);
    err = NULL;
    vmsh_backup_free(b);
    f.bad_extents = false;

    /* an incremental from the source's dirty extents reads only those */
    uint8_t *d2 = malloc(SIZE);
    memcpy(d2, f.data, SIZE);
    memset(d2 + 700000, 0x42, 5000);
    fake f2 = {.data = d2, .fail_at = UINT64_MAX, .dirty_lo = 700000, .dirty_hi = 705000};
    vmsh_source *src2 = NULL;
    assert_int_equal(vmsh_source_new(&src2, &fake_ops, &f2, SIZE, "fake2", &err), 0);
    vmsh_file_index *base = NULL;
    assert_int_equal(vmsh_file_index_load(&base, r, "latest", "good", &err), 0);
    vmsh_add_opts o = {.base = base};
    vmsh_add_stats st = {0};
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    /* the base's chunks checked ahead (as the CLI's fetch thread does):
     * the incremental then trusts them and is still restored exactly */
    assert_int_equal(vmsh_file_index_check_chunks(base, r, "good", &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "good", src2, &o, &st, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "incremental", &err), 0);
    vmsh_backup_free(b);
    /* 700000..705000 lies in chunk 10 only */
    assert_int_equal(f2.reads, 65536);
    assert_int_equal(st.new_chunks, 1);
    assert_int_equal(st.base_chunks, SIZE / 65536 - 1);
    assert_int_equal(vmsh_repo_read_file(r, "latest", "good", SIZE, &got, &len, &err), 0);
    assert_memory_equal(got, d2, SIZE);
    free(got);

    vmsh_file_index_free(base);
    vmsh_source_free(src2); /* the kind has no free: the test owns f, f2 */
    vmsh_source_free(src);
    free(d2);
    free(f.data);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
}

/* A source that records how many of its reads are in flight at once: each
 * read waits (up to 2 s) for a second one to arrive, so a pipeline that
 * reads ahead shows two at once even with a single worker. */
typedef struct ahead {
    fake f;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight, max_inflight;
} ahead;

static int ahead_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    ahead *a = impl;
    pthread_mutex_lock(&a->mu);
    a->inflight++;
    if (a->inflight > a->max_inflight)
        a->max_inflight = a->inflight;
    pthread_cond_broadcast(&a->cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    while (a->max_inflight < 2 && pthread_cond_timedwait(&a->cv, &a->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&a->mu);
    int rc = fake_pread(&a->f, buf, len, off, err);
    pthread_mutex_lock(&a->mu);
    a->inflight--;
    pthread_mutex_unlock(&a->mu);
    return rc;
}

static void reads_run_ahead_of_the_workers(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), *repo = path2(dir, "repo");
    assert_int_equal(vmsh_repo_init(repo, NULL, NULL), 0);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, NULL, NULL), 0);
    /* one worker: before issue 27 it read its run, then computed, so never
     * two reads at once */
    vmsh_repo_set_threads(r, 1);
    vmsh_source_ops ops = fake_ops;
    ops.pread = ahead_pread;
    ahead a = {.f = {.data = fake_data(3), .fail_at = UINT64_MAX}};
    pthread_mutex_init(&a.mu, NULL);
    pthread_cond_init(&a.cv, NULL);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_new(&src, &ops, &a, SIZE, "ahead", &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "disk", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);
    assert_int_equal(a.max_inflight, 2);
    assert_int_equal(a.f.reads, SIZE); /* every byte read once */
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, "latest", "disk", SIZE, &got, &len, &err), 0);
    assert_int_equal(len, SIZE);
    assert_memory_equal(got, a.f.data, SIZE);
    free(got);

    /* a read failing ahead of the worker fails the file, nothing hangs,
     * and the pending backup goes on */
    a.f.fail_at = SIZE - 1;
    a.f.reads = 0;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "broken", src, NULL, NULL, &err), -EIO);
    assert_non_null(strstr(err->message, "fake device error"));
    vmsh_error_free(err);
    err = NULL;
    a.f.fail_at = UINT64_MAX;
    assert_int_equal(vmsh_backup_add_file(b, "again", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "", &err), 0);
    vmsh_backup_free(b);
    assert_int_equal(vmsh_repo_read_file(r, "latest", "again", SIZE, &got, &len, &err), 0);
    assert_memory_equal(got, a.f.data, SIZE);
    free(got);

    vmsh_source_free(src);
    pthread_mutex_destroy(&a.mu);
    pthread_cond_destroy(&a.cv);
    free(a.f.data);
    vmsh_repo_free(r);
    rm_rf(dir);
    free(repo);
    free(dir);
}

/* Issue 25: a loop device's holes are its backing file's (a loop device
 * reports none itself): the extents of the device follow SEEK_DATA on the
 * file, at the device's offset into it, and its bytes read as the file's.
 * Needs root and loop devices: skipped without them. */
static void loop_device_holes_from_its_file(void **state)
{
    (void)state;
    char *dir = make_tmpdir(), *img = path2(dir, "img");
    FILE *fp = fopen(img, "w");
    assert_non_null(fp);
    /* 16 MiB: data at 1 MiB (64 KiB) and 9 MiB (1 MiB), the rest holes */
    static uint8_t buf[1 << 20];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(fseek(fp, 1 << 20, SEEK_SET), 0);
    assert_int_equal(fwrite(buf, 1, 64 << 10, fp), 64 << 10);
    assert_int_equal(fseek(fp, 9 << 20, SEEK_SET), 0);
    assert_int_equal(fwrite(buf, 1, sizeof(buf), fp), sizeof(buf));
    assert_int_equal(ftruncate(fileno(fp), 16 << 20), 0);
    fclose(fp);
    char cmd[512], dev[64] = "";
    /* --offset: the device starts 1 MiB into the file */
    snprintf(cmd, sizeof(cmd), "losetup --find --show --offset 1048576 %s 2>/dev/null", img);
    FILE *p = geteuid() == 0 ? popen(cmd, "r") : NULL;
    bool have = p && fgets(dev, sizeof(dev), p) && strncmp(dev, "/dev/loop", 9) == 0;
    if (p)
        pclose(p);
    if (!have) {
        rm_rf(dir);
        free(img);
        free(dir);
        skip();
    }
    dev[strcspn(dev, "\n")] = 0;
    vmsh_source *src = NULL;
    vmsh_error *err = NULL;
    int r = vmsh_source_open_file(&src, dev, &err);
    vmsh_extent ext[16];
    int n = r == 0 ? vmsh_source_extents(src, 0, vmsh_source_size(src), ext, 16, &err) : -1;
    uint8_t got[4096];
    int rr = r == 0 ? vmsh_source_pread(src, got, sizeof(got), 0, &err) : -1;
    vmsh_source_free(src);
    snprintf(cmd, sizeof(cmd), "losetup -d %s", dev);
    assert_int_equal(system(cmd), 0);
    rm_rf(dir);
    free(img);
    free(dir);
    assert_int_equal(r, 0);
    /* data [0, 64K), zero [64K, 8M), data [8M, 9M), zero [9M, 15M) (the
     * filesystem may round data up to its blocks: only the holes' presence
     * and the data's start are checked) */
    assert_true(n >= 3);
    assert_int_equal(ext[0].offset, 0);
    assert_int_equal(ext[0].flags & VMSH_EXTENT_ZERO, 0);
    assert_true(ext[0].length < (1u << 20));
    assert_true(ext[1].flags & VMSH_EXTENT_ZERO);
    bool data_at_8m = false;
    for (int i = 0; i < n; i++)
        data_at_8m |= !(ext[i].flags & VMSH_EXTENT_ZERO) && ext[i].offset <= (8u << 20) &&
                      ext[i].offset + ext[i].length >= (9u << 20);
    assert_true(data_at_8m);
    assert_true(ext[n - 1].flags & VMSH_EXTENT_ZERO);
    assert_int_equal(rr, 0);
    assert_int_equal(got[0], 0x5a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(custom_kind_and_failing_reads),
        cmocka_unit_test(base_chunks_must_exist),
        cmocka_unit_test(reads_run_ahead_of_the_workers),
        cmocka_unit_test(loop_device_holes_from_its_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
