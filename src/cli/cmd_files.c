/* cmd_files.c - `vmshadow files` (issue 23 point 4): lists the files of a
 * VM's disks in a backup, and `vmshadow files get` copies files and trees
 * out of it, to a directory or as a tar stream, without restoring the
 * disks. The work (serving the disks, libguestfs's appliance, the walk,
 * the confinement beneath the target directory, the tar writer) is the
 * requestor's (src/requestor/files.c, files_tree.c); this file parses and
 * prints. */
#include "cli.h"

#include <vmshadow/repo/repo.h>
#include <vmshadow/requestor/files.h>
#include <vmshadow/util/text.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmshadow files [--recursive] [--fs DEVICE] BACKUP VM [DISK] [PATH]\n"
               "       vmshadow files get [--fs DEVICE] [--disk DISK] (--to DIR | --tar)\n"
               "                          [--force] [--keep-setuid] BACKUP VM PATH...\n"
               "\n"
               "Lists the directory PATH (default /) of the filesystems of VM in BACKUP (an\n"
               "ID, a unique prefix or 'latest'): mode, owner (uid:gid), size, modification\n"
               "time (UTC) and name of each entry. `get` copies files and whole trees out,\n"
               "keeping modes, owners (as root), times and symbolic links, to DIR/NAME or,\n"
               "with --tar, as a tar stream on stdout. Device nodes and FIFOs are skipped.\n"
               "The disks are served read-only over NBD and opened inside libguestfs's\n"
               "appliance (a small VM), never mounted on this host. Without --fs, the\n"
               "operating system libguestfs finds is mounted as the guest mounts it, or the\n"
               "one filesystem there is.\n"
               "\n"
               "Options:\n"
               "  -R, --recursive  list the trees below PATH too\n"
               "  --fs DEVICE      the filesystem to open at / (e.g. /dev/sda1,\n"
               "                   /dev/VG/LV: an error names those there are)\n"
               "  --disk DISK      only this disk of the VM (its target, e.g. vdb)\n"
               "  --to DIR         copy under DIR (created when missing; an existing\n"
               "                   DIR/NAME is refused without --force)\n"
               "  --tar            write a tar stream (POSIX pax) to stdout instead\n"
               "  --force          merge into directories and replace files under DIR\n"
               "  --keep-setuid    keep set-user-ID and set-group-ID bits (dropped by\n"
               "                   default: the backup's files are untrusted)\n");
}

const struct option vmsh_cli_opts_files[] = {
    {"recursive", no_argument, NULL, 'R'},
    {"fs", required_argument, NULL, 'F'},
    {"disk", required_argument, NULL, 'd'},
    {"to", required_argument, NULL, 't'},
    {"tar", no_argument, NULL, 'T'},
    {"force", no_argument, NULL, 'f'},
    {"keep-setuid", no_argument, NULL, 'S'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

static volatile sig_atomic_t files_cancel;

static void on_stop_signal(int sig)
{
    (void)sig;
    files_cancel = 1;
}

typedef struct files_out {
    vmsh_cli *cli;
    json_object *notes;
    bool stream;   /* --json listing: entries printed as they come */
    size_t n_done; /* entries printed */
} files_out;

/* Prints a JSON value as vmsh_cli_print_json does (bytes that are not
 * UTF-8 as the text \xHH), without a newline, and drops it. */
static void json_put(json_object *v)
{
    const char *text = v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE)
                         : "null";
    char *fixed = vmsh_utf8_valid_str(text)
                      ? NULL
                      : vmsh_text_escape(text, strlen(text), VMSH_TEXT_JSON, NULL);
    fputs(fixed ? fixed : text, stdout);
    free(fixed);
    json_object_put(v);
}

static void on_note(void *opaque, const char *path, const char *why)
{
    files_out *o = opaque;
    vmsh_cli_warn(o->cli, "%s: %s", vmsh_cli_safe(o->cli, path), vmsh_cli_safe(o->cli, why));
    if (o->notes) {
        json_object *n = json_object_new_object();
        json_object_object_add(n, "path", json_object_new_string(path));
        json_object_object_add(n, "note", json_object_new_string(why));
        json_object_array_add(o->notes, n);
    }
}

static const char *type_name(uint32_t mode)
{
    return S_ISDIR(mode)    ? "directory"
           : S_ISREG(mode)  ? "file"
           : S_ISLNK(mode)  ? "symlink"
           : S_ISCHR(mode)  ? "char-device"
           : S_ISBLK(mode)  ? "block-device"
           : S_ISFIFO(mode) ? "fifo"
           : S_ISSOCK(mode) ? "socket"
                            : "unknown";
}

/* "drwxr-sr-x" as ls prints it */
static void mode_string(uint32_t mode, char out[11])
{
    out[0] = S_ISDIR(mode)    ? 'd'
             : S_ISLNK(mode)  ? 'l'
             : S_ISCHR(mode)  ? 'c'
             : S_ISBLK(mode)  ? 'b'
             : S_ISFIFO(mode) ? 'p'
             : S_ISSOCK(mode) ? 's'
             : S_ISREG(mode)  ? '-'
                              : '?';
    static const char rwx[] = "rwxrwxrwx";
    for (int i = 0; i < 9; i++)
        out[1 + i] = mode & (0400u >> i) ? rwx[i] : '-';
    if (mode & S_ISUID)
        out[3] = out[3] == 'x' ? 's' : 'S';
    if (mode & S_ISGID)
        out[6] = out[6] == 'x' ? 's' : 'S';
    if (mode & S_ISVTX)
        out[9] = out[9] == 'x' ? 't' : 'T';
    out[10] = 0;
}

static int print_entry(void *opaque, const vmsh_files_entry *e)
{
    files_out *o = opaque;
    if (files_cancel)
        return -ECANCELED;
    if (o->stream) {
        /* one entry at a time, never the whole listing in memory (a
         * directory of 100k entries, a tree of millions: t-files-scale) */
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", e->mode & 07777);
        json_object *j = json_object_new_object();
        json_object_object_add(j, "name", json_object_new_string(e->path));
        json_object_object_add(j, "type", json_object_new_string(type_name(e->mode)));
        json_object_object_add(j, "mode", json_object_new_string(mode));
        json_object_object_add(j, "uid", json_object_new_int64(e->uid));
        json_object_object_add(j, "gid", json_object_new_int64(e->gid));
        json_object_object_add(j, "size", json_object_new_int64((int64_t)e->size));
        json_object_object_add(j, "mtime", json_object_new_int64(e->mtime));
        json_object_object_add(j, "mtime_nsec", json_object_new_int64(e->mtime_nsec));
        json_object_object_add(j, "target", e->target ? json_object_new_string(e->target) : NULL);
        fputs(o->n_done++ ? ",\n    " : "\n    ", stdout);
        json_put(j);
        return ferror(stdout) ? -EIO : 0;
    }
    char mode[11], owner[48], when[32];
    mode_string(e->mode, mode);
    snprintf(owner, sizeof(owner), "%lld:%lld", (long long)e->uid, (long long)e->gid);
    time_t t = (time_t)e->mtime;
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(when, sizeof(when), "@%lld", (long long)e->mtime);
    printf("%s %9s %12llu %s %s%s%s\n", mode, owner, (unsigned long long)e->size, when,
           vmsh_cli_safe(o->cli, e->path), e->target ? " -> " : "",
           e->target ? vmsh_cli_safe(o->cli, e->target) : "");
    return 0;
}

int vmsh_cmd_files(vmsh_cli *cli, int argc, char **argv)
{
    const char *fs = NULL, *disk_opt = NULL, *to = NULL;
    bool recursive = false, tar = false, force = false, keep_setuid = false;
    int c;
    while ((c = getopt_long(argc, argv, "RF:d:t:TfSh", vmsh_cli_opts_files, NULL)) != -1) {
        switch (c) {
        case 'R':
            recursive = true;
            break;
        case 'F':
            fs = optarg;
            break;
        case 'd':
            disk_opt = optarg;
            break;
        case 't':
            to = optarg;
            break;
        case 'T':
            tar = true;
            break;
        case 'f':
            force = true;
            break;
        case 'S':
            keep_setuid = true;
            break;
        case 'h':
            usage(stdout);
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "files", "unknown option '%s'", argv[optind - 1]);
        }
    }
    bool get = optind < argc && strcmp(argv[optind], "get") == 0;
    if (get)
        optind++;
    int nargs = argc - optind;
    char **args = argv + optind;
    const char *disk = disk_opt, *path = "/";
    if (get) {
        if (nargs < 3)
            return vmsh_cli_usage_error(cli, "files", "get needs BACKUP VM PATH...");
        if (!to == !tar)
            return vmsh_cli_usage_error(cli, "files", "get needs --to DIR or --tar (one of them)");
        if (to && !*to)
            return vmsh_cli_usage_error(cli, "files", "--to needs a directory");
        if (recursive)
            return vmsh_cli_usage_error(cli, "files",
                                        "--recursive is for listing; get copies "
                                        "whole trees anyway");
        if (tar && cli->json)
            return vmsh_cli_usage_error(cli, "files",
                                        "--tar writes the tar stream to stdout: "
                                        "--json cannot go there too");
        if (tar && isatty(STDOUT_FILENO))
            return vmsh_cli_usage_error(cli, "files",
                                        "--tar writes a tar stream: redirect "
                                        "stdout to a file or a pipe");
        for (int i = 2; i < nargs; i++)
            if (args[i][0] != '/')
                return vmsh_cli_usage_error(cli, "files", "'%s': paths in the guest start with /",
                                            vmsh_cli_safe(cli, args[i]));
    } else {
        if (to || tar || force || keep_setuid)
            return vmsh_cli_usage_error(cli, "files",
                                        "--to, --tar, --force and --keep-setuid "
                                        "are options of 'files get'");
        if (nargs < 2 || nargs > 4)
            return vmsh_cli_usage_error(cli, "files", "needs BACKUP VM [DISK] [PATH]");
        for (int i = 2; i < nargs; i++) {
            if (args[i][0] == '/' && i == nargs - 1)
                path = args[i];
            else if (args[i][0] != '/' && i == 2 && !disk_opt)
                disk = args[i];
            else
                return vmsh_cli_usage_error(cli, "files",
                                            "needs BACKUP VM [DISK] [PATH] (a PATH starts "
                                            "with /, a DISK does not)");
        }
    }
    if (fs && !*fs)
        return vmsh_cli_usage_error(cli, "files", "--fs needs a device");
    if (disk && !*disk)
        return vmsh_cli_usage_error(cli, "files", "--disk needs a disk");

    vmsh_error *err = NULL;
    vmsh_files_get_options go = {
        .to_dir = to,
        .tar_fd = tar ? STDOUT_FILENO : -1,
        .force = force,
        .keep_setuid = keep_setuid,
        .cancel = &files_cancel,
    };
    const char *const *paths = (const char *const *)args + 2;
    size_t npaths = get ? (size_t)nargs - 2 : 0;
    /* the target refused before the appliance starts (half a minute
     * under emulation) */
    if (get && to && vmsh_files_check_target(&go, paths, npaths, &err) < 0)
        return vmsh_cli_fail(cli, &err);

    files_out out = {.cli = cli};
    if (cli->json)
        out.notes = json_object_new_array();
    vmsh_files_options fo = {
        .repo_path = cli->repo,
        .key_file = vmsh_cli_key_file(cli),
        .backup = args[0],
        .vm = args[1],
        .disk = disk,
        .fs = fs,
        .note = on_note,
        .opaque = &out,
    };
    struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESETHAND}, old[3];
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &sa, &old[i]);

    vmsh_repo *repo = NULL;
    vmsh_files *f = NULL;
    vmsh_files_stats stats = {0};
    int rc = vmsh_cli_repo_open(cli, &repo, &err);
    if (rc == 0) {
        vmsh_cli_info(cli,
                      "starting libguestfs's appliance on the disks of %s (slow under "
                      "emulation)...",
                      vmsh_cli_safe(cli, args[1]));
        rc = vmsh_files_open(&f, repo, &fo, &err);
    }
    if (rc == 0)
        vmsh_cli_info(cli, "backup %s, VM %s: %s", vmsh_files_backup_id(f),
                      vmsh_cli_safe(cli, args[1]), vmsh_cli_safe(cli, vmsh_files_mounts(f)));
    if (rc == 0 && !get) {
        if (cli->json) {
            /* the document's head now, the entries as they come, the notes
             * and the error member at the end: one document even when the
             * walk fails half-way (then "error" says why) */
            out.stream = true;
            fputs("{\n  \"backup\": ", stdout);
            json_put(json_object_new_string(vmsh_files_backup_id(f)));
            fputs(",\n  \"vm\": ", stdout);
            json_put(json_object_new_string(args[1]));
            fputs(",\n  \"path\": ", stdout);
            json_put(json_object_new_string(path));
            fputs(",\n  \"mounts\": ", stdout);
            json_put(json_object_new_string(vmsh_files_mounts(f)));
            fputs(",\n  \"entries\": [", stdout);
        }
        rc = vmsh_files_list(f, path, recursive, print_entry, &out, &err);
        if (cli->json) {
            fputs(out.n_done ? "\n  ],\n  \"notes\": " : "],\n  \"notes\": ", stdout);
            json_put(out.notes);
            out.notes = NULL;
            fputs(",\n  \"error\": ", stdout);
            json_put(rc < 0 ? vmsh_cli_error_json(vmsh_cli_exit_code(err ? err->code : rc),
                                                  err ? err->code : rc,
                                                  err ? err->message : "listing failed")
                            : NULL);
            fputs("\n}\n", stdout);
            if (rc < 0) {
                /* the document is printed: the message goes to stderr only */
                cli->json = false;
                int code = vmsh_cli_fail(cli, &err);
                cli->json = true;
                vmsh_files_free(f);
                vmsh_repo_free(repo);
                for (int i = 0; i < 3; i++)
                    sigaction(sigs[i], &old[i], NULL);
                return code;
            }
        }
    } else if (rc == 0) {
        rc = vmsh_files_get(f, paths, npaths, &go, &stats, &err);
        if (rc == 0 && cli->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "backup", json_object_new_string(vmsh_files_backup_id(f)));
            json_object_object_add(o, "vm", json_object_new_string(args[1]));
            json_object_object_add(o, "to", json_object_new_string(to));
            json_object_object_add(o, "files", json_object_new_int64((int64_t)stats.files));
            json_object_object_add(o, "directories", json_object_new_int64((int64_t)stats.dirs));
            json_object_object_add(o, "links", json_object_new_int64((int64_t)stats.links));
            json_object_object_add(o, "skipped", json_object_new_int64((int64_t)stats.skipped));
            json_object_object_add(o, "bytes", json_object_new_int64((int64_t)stats.bytes));
            json_object_object_add(o, "notes", out.notes);
            out.notes = NULL;
            vmsh_cli_print_json(o);
        } else if (rc == 0) {
            char size[32];
            vmsh_cli_format_bytes(stats.bytes, size, sizeof(size));
            vmsh_cli_info(cli,
                          "copied %llu files (%s), %llu directories, %llu links%s%s; skipped "
                          "%llu",
                          (unsigned long long)stats.files, size, (unsigned long long)stats.dirs,
                          (unsigned long long)stats.links, to ? " to " : "",
                          to ? vmsh_cli_safe(cli, to) : "", (unsigned long long)stats.skipped);
        }
    }
    if (rc == 0 && tar && fflush(stdout) != 0)
        rc = vmsh_error_set(&err, -EIO, "cannot write the tar stream");
    vmsh_files_free(f);
    vmsh_repo_free(repo);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &old[i], NULL);
    json_object_put(out.notes);
    return rc < 0 ? vmsh_cli_fail(cli, &err) : VMSH_EXIT_OK;
}
