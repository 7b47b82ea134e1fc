/* repo_tool.c - `vmshadow-repo-tool`: drives the repository's public API
 * (include/vmshadow/repo) on plain files, NBD exports and QEMU images, with no
 * VM involved. The benchmark (bench/run.sh) times it: it is the same code the
 * VM writer calls. The end-to-end tests (tests/e2e/t-repo-*.sh) use it to make
 * backups of files.
 *
 *   vmshadow-repo-tool backup [opts] REPO NAME=SOURCE...   prints the ID, stats
 *   vmshadow-repo-tool restore [--key-file F] REPO BACKUP NAME OUT
 *
 * SOURCE: a path; nbd:SOCKET:EXPORT[:DIRTY-CONTEXT]; qemu:FORMAT:PATH;
 * qemu-bitmap:FORMAT:BITMAP:PATH (the image's persistent dirty bitmap too);
 * buf:TEXT (a small buffer).
 * backup options: --key-file F, --level N, --threads N, --doc TEXT,
 * --base BACKUP (incremental: the base's index of the same NAME, changed
 * ranges from the source's dirty bitmap), --abort (free without commit),
 * --hold-ms N (sleep N ms before committing, to test concurrent runs).
 */
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/repo/source.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int fail(vmsh_error **err)
{
    int code = err && *err ? (*err)->code : -EIO;
    fprintf(stderr, "vmshadow-repo-tool: error: %s\n", err && *err ? (*err)->message : "?");
    vmsh_error_freep(err);
    if (code == -EBUSY)
        return 4;
    if (code == -EBADMSG)
        return 3;
    return 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_source(vmsh_source **out, const char *spec, vmsh_error **err)
{
    if (strncmp(spec, "nbd:", 4) == 0) {
        char *copy = strdup(spec + 4);
        char *sock = copy, *exp = strchr(sock, ':'), *ctx = NULL;
        if (exp) {
            *exp++ = 0;
            ctx = strchr(exp, ':');
            if (ctx)
                *ctx++ = 0;
        }
        int rc = vmsh_source_open_nbd(out, sock, exp ? exp : "", ctx, err);
        free(copy);
        return rc;
    }
    if (strncmp(spec, "qemu-bitmap:", 12) == 0) {
        char *copy = strdup(spec + 12);
        char *bitmap = copy ? strchr(copy, ':') : NULL;
        char *path = bitmap ? strchr(bitmap + 1, ':') : NULL;
        if (!path) {
            free(copy);
            return vmsh_error_set(err, -EINVAL, "qemu-bitmap:FORMAT:BITMAP:PATH expected");
        }
        *bitmap++ = 0;
        *path++ = 0;
        int rc = vmsh_source_open_qemu_image_bitmap(out, path, copy, bitmap, err);
        free(copy);
        return rc;
    }
    if (strncmp(spec, "qemu:", 5) == 0) {
        char *copy = strdup(spec + 5);
        char *path = strchr(copy, ':');
        if (!path) {
            free(copy);
            return vmsh_error_set(err, -EINVAL, "qemu:FORMAT:PATH expected");
        }
        *path++ = 0;
        int rc = vmsh_source_open_qemu_image(out, path, copy, err);
        free(copy);
        return rc;
    }
    return vmsh_source_open_file(out, spec, err);
}

/* when the first run of chunks was read and stored: bench/scale-bench.sh's
 * "time to first byte" (issue 27), from t0 */
static double first_progress;

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    (void)opaque;
    (void)done;
    (void)total;
    if (first_progress == 0)
        first_progress = now_s();
}

/* VMSH_TOOL_TIME_READ=1: the source is wrapped to note when its first
 * byte is read (bench/scale-bench.sh's time to first byte, issue 27). */
static _Atomic double first_read;

static int timed_extents(void *impl, uint64_t off, uint64_t len, vmsh_extent *out, size_t max,
                         vmsh_error **err)
{
    return vmsh_source_extents(impl, off, len, out, max, err);
}

static int timed_pread(void *impl, void *buf, size_t len, uint64_t off, vmsh_error **err)
{
    double zero = 0;
    atomic_compare_exchange_strong(&first_read, &zero, now_s());
    return vmsh_source_pread(impl, buf, len, off, err);
}

static void timed_free(void *impl)
{
    vmsh_source_free(impl);
}

static const vmsh_source_ops timed_ops = {
    .version = VMSH_SOURCE_OPS_VERSION,
    .kind = "timed",
    .extents = timed_extents,
    .pread = timed_pread,
    .free = timed_free,
};

static int cmd_backup(int argc, char **argv)
{
    static const struct option opts[] = {
        {"key-file", required_argument, NULL, 'k'}, {"level", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},  {"doc", required_argument, NULL, 'd'},
        {"base", required_argument, NULL, 'b'},     {"abort", no_argument, NULL, 'a'},
        {"hold-ms", required_argument, NULL, 'H'},  {0},
    };
    const char *key = NULL, *doc = "", *base = NULL;
    int level = 0, threads = 0, hold_ms = 0, c;
    bool do_abort = false;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            key = optarg;
            break;
        case 'l':
            level = atoi(optarg);
            break;
        case 't':
            threads = atoi(optarg);
            break;
        case 'd':
            doc = optarg;
            break;
        case 'b':
            base = optarg;
            break;
        case 'a':
            do_abort = true;
            break;
        case 'H':
            hold_ms = atoi(optarg);
            break;
        default:
            return 2;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: vmshadow-repo-tool backup [opts] REPO NAME=SOURCE...\n");
        return 2;
    }
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_repo_open(&r, argv[optind], key, &err) < 0)
        return fail(&err);
    if (level && vmsh_repo_set_compression_level(r, level, &err) < 0)
        return fail(&err);
    if (threads)
        vmsh_repo_set_threads(r, (unsigned)threads);
    double t0 = now_s();
    vmsh_backup *b = NULL;
    if (vmsh_backup_begin(&b, r, &err) < 0) {
        vmsh_repo_free(r);
        return fail(&err);
    }
    int rc = 0;
    for (int i = optind + 1; i < argc && rc == 0; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "NAME=SOURCE expected: %s\n", argv[i]);
            rc = 2;
            break;
        }
        *eq = 0;
        const char *name = argv[i], *spec = eq + 1;
        if (strncmp(spec, "buf:", 4) == 0) {
            if (vmsh_backup_add_buffer(b, name, spec + 4, strlen(spec + 4), &err) < 0)
                rc = fail(&err);
            continue;
        }
        vmsh_source *src = NULL;
        if (open_source(&src, spec, &err) < 0) {
            rc = fail(&err);
            break;
        }
        const char *tr = getenv("VMSH_TOOL_TIME_READ");
        if (tr && *tr == '1' && !vmsh_source_has_dirty(src)) {
            vmsh_source *w = NULL;
            if (vmsh_source_new(&w, &timed_ops, src, vmsh_source_size(src), name, &err) < 0) {
                vmsh_source_free(src);
                rc = fail(&err);
                break;
            }
            src = w;
        }
        vmsh_file_index *bi = NULL;
        if (base && vmsh_file_index_load(&bi, r, base, name, &err) < 0) {
            vmsh_source_free(src);
            rc = fail(&err);
            break;
        }
        vmsh_add_opts o = {.base = bi, .progress = on_progress};
        vmsh_add_stats st = {0};
        if (vmsh_backup_add_file(b, name, src, &o, &st, &err) < 0)
            rc = fail(&err);
        else
            fprintf(stderr,
                    "%s: size %" PRIu64 " read %" PRIu64 " stored %" PRIu64 " new %" PRIu64
                    " dedup %" PRIu64 " zero %" PRIu64 " base %" PRIu64 "\n",
                    name, st.size, st.bytes_read, st.bytes_stored, st.new_chunks, st.dedup_chunks,
                    st.zero_chunks, st.base_chunks);
        vmsh_file_index_free(bi);
        vmsh_source_free(src);
    }
    if (rc == 0 && hold_ms)
        usleep((useconds_t)hold_ms * 1000);
    double t_commit = now_s(); /* every file added: what is left is the commit */
    if (rc == 0 && !do_abort && vmsh_backup_commit(b, doc, &err) < 0)
        rc = fail(&err);
    vmsh_add_stats tot;
    vmsh_backup_stats(b, &tot);
    if (rc == 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("{\"backup\":%s%s%s,\"seconds\":%.3f,\"size\":%" PRIu64 ",\"bytes_read\":%" PRIu64
               ",\"bytes_stored\":%" PRIu64 ",\"new_chunks\":%" PRIu64
               ",\"max_rss_kib\":%ld,\"first_progress_s\":%.3f,\"first_read_s\":%.4f,"
               "\"commit_s\":%.3f}\n",
               do_abort ? "" : "\"", do_abort ? "null" : vmsh_backup_id(b), do_abort ? "" : "\"",
               now_s() - t0, tot.size, tot.bytes_read, tot.bytes_stored, tot.new_chunks,
               ru.ru_maxrss, first_progress > 0 ? first_progress - t0 : -1.0,
               first_read > 0 ? first_read - t0 : -1.0, now_s() - t_commit);
    }
    vmsh_backup_free(b);
    vmsh_repo_free(r);
    return rc;
}

static int cmd_restore(int argc, char **argv)
{
    static const struct option opts[] = {
        {"key-file", required_argument, NULL, 'k'}, {"threads", required_argument, NULL, 't'}, {0}};
    const char *key = NULL;
    int threads = 0, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'k')
            key = optarg;
        else if (c == 't')
            threads = atoi(optarg);
        else
            return 2;
    }
    if (argc - optind != 4) {
        fprintf(stderr, "usage: vmshadow-repo-tool restore REPO BACKUP NAME OUT\n");
        return 2;
    }
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_repo_open(&r, argv[optind], key, &err) < 0)
        return fail(&err);
    if (threads)
        vmsh_repo_set_threads(r, (unsigned)threads);
    double t0 = now_s();
    vmsh_restore_stats st = {0};
    int rc = vmsh_repo_restore_file(r, argv[optind + 1], argv[optind + 2], argv[optind + 3], true,
                                    NULL, NULL, &st, &err);
    vmsh_repo_free(r);
    if (rc < 0)
        return fail(&err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* an object store's requests and bytes (0 on a local directory) */
    vmsh_store_traffic tr;
    vmsh_repo_store_traffic(&tr);
    printf("{\"seconds\":%.3f,\"bytes_written\":%" PRIu64 ",\"chunks\":%" PRIu64
           ",\"max_rss_kib\":%ld,\"store_reads\":%" PRIu64 ",\"store_bytes_down\":%" PRIu64 "}\n",
           now_s() - t0, st.bytes_written, st.chunks, ru.ru_maxrss, tr.reads, tr.bytes_down);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: vmshadow-repo-tool backup|restore ...\n");
        return 2;
    }
    if (strcmp(argv[1], "backup") == 0)
        return cmd_backup(argc - 1, argv + 1);
    if (strcmp(argv[1], "restore") == 0)
        return cmd_restore(argc - 1, argv + 1);
    fprintf(stderr, "unknown command %s\n", argv[1]);
    return 2;
}
