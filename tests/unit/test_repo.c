/* Unit tests of the repository (docs/formats/repository.md): backups from a
 * sparse file and buffers, listing, documents, sparse checked restores,
 * deduplication, abort (SPEC R5), incrementals from a base, locks and
 * version refusal. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include "test_repo_helpers.h"

typedef struct fixture {
    char *dir, *repo, *img;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dir = make_tmpdir();
    assert_non_null(f->dir);
    f->repo = path2(f->dir, "repo");
    f->img = path2(f->dir, "disk.img");
    /* 6 MiB + 1000: an unaligned tail */
    assert_int_equal(make_image(f->img, (6u << 20) + 1000, 7), 0);
    assert_int_equal(vmsh_repo_init(f->repo, NULL, NULL), 0);
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

static char *backup_file(const char *repo, const char *key, const char *name, const char *path,
                         const char *doc, vmsh_add_stats *st)
{
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, repo, key, &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_file(&src, path, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, name, src, NULL, st, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b, "domain.xml", "<domain/>", 9, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, doc, &err), 0);
    char *id = strdup(vmsh_backup_id(b));
    vmsh_source_free(src);
    vmsh_backup_free(b);
    vmsh_repo_free(r);
    return id;
}

static void backup_list_restore_roundtrip(void **state)
{
    fixture *f = *state;
    vmsh_add_stats st = {0};
    char *id = backup_file(f->repo, NULL, "vm1/vda.img", f->img, "{\"vms\":[\"vm1\"]}", &st);
    /* 1 MiB hole + 1 MiB written zeros are neither read as data nor stored */
    assert_int_equal(st.size, (6u << 20) + 1000);
    assert_true(st.bytes_read <= (5u << 20) + 1000);
    assert_int_equal(st.zero_chunks, 16);
    assert_true(st.new_chunks > 0);
    /* text compresses; random does not: well under the data size */
    assert_true(st.bytes_stored < (3u << 20));

    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_backup_info *list = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_list(r, &list, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].id, id);
    assert_string_equal(list[0].document, "{\"vms\":[\"vm1\"]}");
    assert_int_equal(list[0].n_files, 2);
    const vmsh_backup_file *bf = vmsh_backup_info_file(&list[0], "vm1/vda.img");
    assert_non_null(bf);
    assert_int_equal(bf->size, (6u << 20) + 1000);
    assert_string_equal(bf->kind, "file");
    vmsh_backup_info_array_free(list, n);

    char full[17];
    assert_int_equal(vmsh_repo_resolve(r, "latest", full, &err), 0);
    assert_string_equal(full, id);
    char prefix[5];
    memcpy(prefix, id, 4);
    prefix[4] = 0;
    assert_int_equal(vmsh_repo_resolve(r, prefix, full, &err), 0);
    assert_string_equal(full, id);
    assert_int_equal(vmsh_repo_resolve(r, "zz", full, &err), -ENOENT);
    vmsh_error_free(err);
    err = NULL;

    char *out = path2(f->dir, "restored.img");
    vmsh_restore_stats rs = {0};
    assert_int_equal(
        vmsh_repo_restore_file(r, prefix, "vm1/vda.img", out, false, NULL, NULL, &rs, &err), 0);
    assert_int_equal(compare_files(f->img, out), 0);
    /* sparse: the hole and the zeros are not allocated */
    assert_true(allocated_bytes(out) <= (4u << 20) + 8192);
    /* not overwritten without asking */
    assert_int_equal(
        vmsh_repo_restore_file(r, id, "vm1/vda.img", out, false, NULL, NULL, NULL, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;

    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(vmsh_repo_read_file(r, "latest", "domain.xml", 1024, &buf, &len, &err), 0);
    assert_int_equal(len, 9);
    assert_string_equal(buf, "<domain/>");
    free(buf);
    assert_int_equal(vmsh_repo_read_file(r, "latest", "nope", 1024, &buf, &len, &err), -ENOENT);
    vmsh_error_free(err);
    free(out);
    free(id);
    vmsh_repo_free(r);
}

static void second_backup_deduplicates(void **state)
{
    fixture *f = *state;
    vmsh_add_stats a = {0}, b = {0};
    char *id1 = backup_file(f->repo, NULL, "vda", f->img, "", &a);
    char *id2 = backup_file(f->repo, NULL, "vda", f->img, "", &b);
    assert_string_not_equal(id1, id2);
    assert_true(a.new_chunks > 0);
    assert_int_equal(b.new_chunks, 0);
    assert_int_equal(b.bytes_stored, 0);
    assert_int_equal(b.dedup_chunks, a.new_chunks + a.dedup_chunks);
    free(id1);
    free(id2);
}

/* A repository handle, a pending backup on it and the image as a source. */
static void begin_backup_of(const char *repo, const char *img, vmsh_repo **r, vmsh_backup **b,
                            vmsh_source **src)
{
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(r, repo, NULL, &err), 0);
    assert_int_equal(vmsh_backup_begin(b, *r, &err), 0);
    assert_int_equal(vmsh_source_open_file(src, img, &err), 0);
}

static void assert_no_backups(vmsh_repo *r)
{
    vmsh_error *err = NULL;
    vmsh_backup_info *list = NULL;
    size_t n = 7;
    assert_int_equal(vmsh_repo_list(r, &list, &n, &err), 0);
    assert_int_equal(n, 0);
    vmsh_backup_info_array_free(list, n);
}

static void abort_leaves_nothing_visible(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    vmsh_backup *b = NULL;
    vmsh_source *src = NULL;
    begin_backup_of(f->repo, f->img, &r, &b, &src);
    assert_int_equal(vmsh_backup_add_file(b, "vda", src, NULL, NULL, &err), 0);
    char id[17];
    strcpy(id, vmsh_backup_id(b));
    vmsh_backup_free(b); /* abort (SPEC R5) */
    assert_no_backups(r);
    char full[17];
    assert_int_equal(vmsh_repo_resolve(r, id, full, &err), -ENOENT);
    vmsh_error_free(err);
    err = NULL;
    /* the same handle can still back up, and what it stores is complete */
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_file(b, "vda", src, NULL, NULL, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "doc", &err), 0);
    vmsh_backup_free(b);
    char *out = path2(f->dir, "out.img");
    assert_int_equal(vmsh_repo_restore_file(r, "latest", "vda", out, false, NULL, NULL, NULL, &err),
                     0);
    assert_int_equal(compare_files(f->img, out), 0);
    free(out);
    vmsh_source_free(src);
    vmsh_repo_free(r);
}

/* An index is written beside the next file's copy (backup.c, index_writer):
 * when that write fails, the backup fails, at the latest at its commit, with
 * the file's name, and nothing becomes visible. */
static void failed_index_write_fails_the_backup(void **state)
{
    fixture *f = *state;
    /* index/xx/... cannot be made: every fan-out name is a file (a top
     * directory that is not one makes the repository refuse to open) */
    char *ixdir = path2(f->repo, "index");
    for (int i = 0; i < 256; i++) {
        char nm[3];
        snprintf(nm, sizeof(nm), "%02x", i);
        char *p = path2(ixdir, nm);
        FILE *blocker = fopen(p, "w");
        assert_non_null(blocker);
        fclose(blocker);
        free(p);
    }
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    vmsh_backup *b = NULL;
    vmsh_source *src = NULL;
    begin_backup_of(f->repo, f->img, &r, &b, &src);
    int rc = vmsh_backup_add_file(b, "vm1/vda.img", src, NULL, NULL, &err);
    if (rc == 0) /* the write ran on its thread: the commit reports it */
        rc = vmsh_backup_commit(b, "doc", &err);
    assert_true(rc < 0);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "the index of vm1/vda.img"));
    vmsh_error_free(err);
    err = NULL;
    /* and a commit tried again still refuses */
    assert_true(vmsh_backup_commit(b, "doc", &err) < 0);
    vmsh_error_free(err);
    err = NULL;
    vmsh_backup_free(b);
    assert_no_backups(r);
    vmsh_source_free(src);
    vmsh_repo_free(r);
    free(ixdir);
}

/* issue 26, point 2: two writers at once, no exclusive lock; both commit */
static void second_writer_runs_concurrently(void **state)
{
    fixture *f = *state;
    vmsh_repo *r1 = NULL, *r2 = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r1, f->repo, NULL, &err), 0);
    assert_int_equal(vmsh_repo_open(&r2, f->repo, NULL, &err), 0);
    vmsh_backup *b1 = NULL, *b2 = NULL;
    assert_int_equal(vmsh_backup_begin(&b1, r1, &err), 0);
    assert_int_equal(vmsh_backup_begin(&b2, r2, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b1, "one", "first", 5, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b2, "two", "second", 6, &err), 0);
    assert_int_equal(vmsh_backup_commit(b2, "", &err), 0);
    assert_int_equal(vmsh_backup_commit(b1, "", &err), 0);
    vmsh_backup_free(b1);
    vmsh_backup_free(b2);
    vmsh_backup_info *a = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_repo_list(r1, &a, &n, &err), 0);
    assert_int_equal(n, 2);
    vmsh_backup_info_array_free(a, n);
    vmsh_repo_free(r1);
    vmsh_repo_free(r2);
}

static void incremental_from_base(void **state)
{
    fixture *f = *state;
    char *id1 = backup_file(f->repo, NULL, "vda", f->img, "", NULL);
    /* change 4 KiB at 5 MiB + 100 KiB and write into the hole at 1 MiB + 8 KiB */
    int fd = open(f->img, O_WRONLY);
    uint8_t buf[4096];
    memset(buf, 0xab, sizeof(buf));
    assert_int_equal(pwrite(fd, buf, sizeof(buf), (5u << 20) + 102400), 4096);
    assert_int_equal(pwrite(fd, buf, sizeof(buf), (1u << 20) + 8192), 4096);
    close(fd);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_file_index *base = NULL;
    assert_int_equal(vmsh_file_index_load(&base, r, id1, "vda", &err), 0);
    assert_int_equal(vmsh_file_index_size(base), (6u << 20) + 1000);
    vmsh_extent changed[] = {{(5u << 20) + 102400, 4096, 0}, {(1u << 20) + 8192, 4096, 0}};
    vmsh_add_opts o = {.base = base, .changed = changed, .n_changed = 2};
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    vmsh_source *src = NULL;
    assert_int_equal(vmsh_source_open_file(&src, f->img, &err), 0);
    vmsh_add_stats st = {0};
    assert_int_equal(vmsh_backup_add_file(b, "vda", src, &o, &st, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, "incr", &err), 0);
    /* only the two changed chunks were read */
    assert_int_equal(st.bytes_read, 2 * 65536);
    assert_int_equal(st.new_chunks, 2);
    assert_int_equal(st.base_chunks, vmsh_file_index_count(base) - 1);
    vmsh_backup_free(b);
    vmsh_source_free(src);
    vmsh_file_index_free(base);
    char *out = path2(f->dir, "incr.img");
    assert_int_equal(vmsh_repo_restore_file(r, "latest", "vda", out, false, NULL, NULL, NULL, &err),
                     0);
    assert_int_equal(compare_files(f->img, out), 0);
    free(out);
    free(id1);
    vmsh_repo_free(r);
}

typedef struct visits {
    char ids[4][VMSH_BACKUP_ID_LEN + 1];
    size_t n, stop_after;
} visits;

static int visit(void *opaque, const vmsh_backup_info *b)
{
    visits *v = opaque;
    assert_true(v->n < 4);
    snprintf(v->ids[v->n++], sizeof(v->ids[0]), "%s", b->id);
    assert_non_null(b->document);
    return v->n == v->stop_after;
}

static void set_mtime(const char *repo, const char *id, time_t t)
{
    char *dir = path2(repo, "backups"), *p = path2(dir, id);
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
    free(p);
    free(dir);
}

/* vmsh_repo_each_recent: newest manifest first (by its file's time, not by
 * the order of the backups' IDs), stops when asked, skips a damaged one. */
static void each_recent_newest_first(void **state)
{
    fixture *f = *state;
    char *id[3];
    for (int i = 0; i < 3; i++)
        id[i] = backup_file(f->repo, NULL, "vda", f->img, "{\"n\":1}", NULL);
    /* times not in the order of creation: 1, then 2, then 0 */
    set_mtime(f->repo, id[0], 1000);
    set_mtime(f->repo, id[1], 3000);
    set_mtime(f->repo, id[2], 2000);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    visits v = {.stop_after = 0};
    assert_int_equal(vmsh_repo_each_recent(r, visit, &v, &err), 0);
    assert_int_equal(v.n, 3);
    assert_string_equal(v.ids[0], id[1]);
    assert_string_equal(v.ids[1], id[2]);
    assert_string_equal(v.ids[2], id[0]);
    /* the visitor has what it needs after the first: no other is read */
    v = (visits){.stop_after = 1};
    assert_int_equal(vmsh_repo_each_recent(r, visit, &v, &err), 0);
    assert_int_equal(v.n, 1);
    assert_string_equal(v.ids[0], id[1]);
    /* a damaged manifest is left out, the walk goes on */
    char *dir = path2(f->repo, "backups"), *p = path2(dir, id[2]);
    FILE *fp = fopen(p, "r+");
    assert_non_null(fp);
    fseek(fp, 40, SEEK_SET);
    fputc('#', fp);
    fclose(fp);
    set_mtime(f->repo, id[2], 2000);
    v = (visits){.stop_after = 0};
    assert_int_equal(vmsh_repo_each_recent(r, visit, &v, &err), 0);
    assert_int_equal(v.n, 2);
    assert_string_equal(v.ids[0], id[1]);
    assert_string_equal(v.ids[1], id[0]);
    assert_null(err);
    free(p);
    free(dir);
    vmsh_repo_free(r);
    for (int i = 0; i < 3; i++)
        free(id[i]);
}

static void refuses_newer_version_and_garbage(void **state)
{
    fixture *f = *state;
    char *cfg = path2(f->repo, "config");
    char *text = NULL;
    FILE *fp = fopen(cfg, "r");
    assert_non_null(fp);
    size_t cap = 0;
    assert_true(getdelim(&text, &cap, 0, fp) > 0);
    fclose(fp);
    char *v = strstr(text, "\"version\": 2");
    assert_non_null(v);
    v[11] = '3';
    assert_int_equal(write_text_file(cfg, text), 0);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), -EPROTONOSUPPORT);
    assert_non_null(strstr(err->message, "upgrade"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(write_text_file(cfg, "not json"), 0);
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    char *nothing = path2(f->dir, "nothing");
    assert_int_equal(vmsh_repo_open(&r, nothing, NULL, &err), -ENOENT);
    vmsh_error_free(err);
    err = NULL;
    /* init refuses a non-empty directory */
    assert_int_equal(vmsh_repo_init(f->repo, NULL, &err), -EEXIST);
    vmsh_error_free(err);
    free(nothing);
    free(text);
    free(cfg);
}

static void bad_names_and_duplicates(void **state)
{
    fixture *f = *state;
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    vmsh_backup *b = NULL;
    assert_int_equal(vmsh_backup_begin(&b, r, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b, "a", "x", 1, &err), 0);
    assert_int_equal(vmsh_backup_add_buffer(b, "a", "y", 1, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_backup_add_buffer(b, "bad\nname", "y", 1, &err), -EINVAL);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_backup_add_buffer(b, "empty", "", 0, &err), 0);
    assert_int_equal(vmsh_backup_commit(b, NULL, &err), 0);
    vmsh_backup_free(b);
    char *buf = NULL;
    size_t len = 1;
    assert_int_equal(vmsh_repo_read_file(r, "latest", "empty", 10, &buf, &len, &err), 0);
    assert_int_equal(len, 0);
    free(buf);
    assert_int_equal(vmsh_repo_read_file(r, "latest", "a", 10, &buf, &len, &err), 0);
    assert_string_equal(buf, "x");
    free(buf);
    vmsh_repo_free(r);
}

/* Files under `dir` whose bytes hold `pat`: `pat` is flipped there (the
 * chunk's blob in its pack); the count of files changed. */
static const uint8_t *g_pat;
static int g_flipped;
static int flip_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    if (flag != FTW_F || st->st_size == 0)
        return 0;
    size_t len = 0;
    uint8_t *d = read_whole_file(p, &len);
    uint8_t *at = d ? memmem(d, len, g_pat, 4096) : NULL;
    if (at) {
        int fd = open(p, O_WRONLY);
        uint8_t b = at[2048] ^ 0x40;
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, &b, 1, (off_t)(at - d) + 2048), 1);
        close(fd);
        g_flipped++;
    }
    free(d);
    return 0;
}

/* Issue 27: a restore checks the IDs of a batch's whole chunks four at a
 * time (crypto_chunk_ids) and a short one alone; whichever chunk's bytes
 * changed in its pack (the first of a group of four, one inside, the last
 * whole chunk, the short tail) fails the restore naming that chunk, and
 * nothing is left at the target; verify counts every damaged chunk of a
 * group. Random chunks are stored raw, so the
 * flipped byte reaches the hash, not the decompressor. */
static void restore_names_the_damaged_chunk(void **state)
{
    fixture *f = *state;
    const size_t whole = 11, tail = 5000, len = whole * 65536 + tail;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    uint64_t seed = 5;
    fill_random(data, len, &seed);
    char *img = path2(f->dir, "random.img");
    int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    static const size_t bad[] = {0, 6, 10, 11};
    for (size_t t = 0; t < sizeof(bad) / sizeof(bad[0]); t++) {
        rm_rf(f->repo);
        assert_int_equal(vmsh_repo_init(f->repo, NULL, NULL), 0);
        char *id = backup_file(f->repo, NULL, "vda", img, "{}", NULL);
        g_pat = data + bad[t] * 65536;
        g_flipped = 0;
        assert_int_equal(nftw(f->repo, flip_cb, 16, FTW_PHYS), 0);
        assert_int_equal(g_flipped, 1);
        vmsh_repo *r = NULL;
        vmsh_error *err = NULL;
        assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
        char *out = path2(f->dir, "damaged.img");
        assert_int_equal(vmsh_repo_restore_file(r, id, "vda", out, false, NULL, NULL, NULL, &err),
                         -EBADMSG);
        char want[64];
        snprintf(want, sizeof(want), "file vda, chunk %zu:", bad[t]);
        assert_non_null(err);
        assert_non_null(strstr(err->message, want));
        assert_non_null(strstr(err->message, "hash mismatch"));
        struct stat sb;
        assert_int_equal(stat(out, &sb), -1);
        vmsh_error_free(err);
        vmsh_repo_free(r);
        free(out);
        free(id);
    }
    /* verify checks four at a time too and goes on after a mismatch:
     * two damaged chunks of one group and the short tail are all counted */
    rm_rf(f->repo);
    assert_int_equal(vmsh_repo_init(f->repo, NULL, NULL), 0);
    char *id = backup_file(f->repo, NULL, "vda", img, "{}", NULL);
    static const size_t bad3[] = {5, 6, 11};
    g_flipped = 0;
    for (size_t t = 0; t < 3; t++) {
        g_pat = data + bad3[t] * 65536;
        assert_int_equal(nftw(f->repo, flip_cb, 16, FTW_PHYS), 0);
    }
    assert_int_equal(g_flipped, 3);
    vmsh_repo *r = NULL;
    vmsh_error *err = NULL;
    vmsh_verify_report *rep = NULL;
    assert_int_equal(vmsh_repo_open(&r, f->repo, NULL, &err), 0);
    assert_int_equal(vmsh_repo_verify(r, NULL, 0, NULL, NULL, &rep, &err), -EBADMSG);
    assert_int_equal(rep->chunks_checked, whole + 2); /* and domain.xml */
    assert_int_equal(rep->n_damage, 1);
    assert_string_equal(rep->damage[0].file, "vda");
    assert_non_null(strstr(rep->damage[0].what, "3 chunks damaged, 0 missing (first: chunk 5 "));
    vmsh_verify_report_free(rep);
    vmsh_error_free(err);
    vmsh_repo_free(r);
    free(id);
    free(img);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(backup_list_restore_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(restore_names_the_damaged_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(second_backup_deduplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(abort_leaves_nothing_visible, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_index_write_fails_the_backup, setup, teardown),
        cmocka_unit_test_setup_teardown(second_writer_runs_concurrently, setup, teardown),
        cmocka_unit_test_setup_teardown(incremental_from_base, setup, teardown),
        cmocka_unit_test_setup_teardown(each_recent_newest_first, setup, teardown),
        cmocka_unit_test_setup_teardown(refuses_newer_version_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_names_and_duplicates, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
