/* cmd_repo.c - the repository commands: init, list, show, verify, prune, gc
 * (CLI.md; docs/formats/repository.md). Thin: everything but printing is in
 * include/vmshadow/repo. */
#include "cli.h"

#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/text.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---- helpers other commands use too (cli.h) ---- */

const char *vmsh_cli_key_file(vmsh_cli *cli)
{
    if (cli->key_file_set)
        return cli->key_file_opt;
    /* main refuses a set but empty $VMSHADOW_KEY_FILE (issue 20 point 9) */
    const char *k = getenv("VMSHADOW_KEY_FILE");
    if (k && *k)
        return k;
    return vmsh_kvconf_get(cli->config, "key-file");
}

int vmsh_cli_repo_open(vmsh_cli *cli, struct vmsh_repo **out, vmsh_error **err)
{
    int rc = vmsh_repo_open_ex(out, cli->repo, vmsh_cli_key_file(cli),
                               cli->allow_foreign_repo ? VMSH_REPO_OPEN_ALLOW_FOREIGN : 0, err);
    if (rc < 0)
        return rc;
    long level = LONG_MIN; /* unset */
    rc = vmsh_kvconf_get_int(cli->config, "compression-level", VMSH_ZSTD_LEVEL_MIN,
                             VMSH_ZSTD_LEVEL_MAX, &level, err);
    if (rc == 0 && level != LONG_MIN)
        rc = vmsh_repo_set_compression_level(*out, (int)level, err);
    if (rc < 0) {
        vmsh_repo_free(*out);
        *out = NULL;
    }
    return rc;
}

int vmsh_cli_columns(void)
{
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    const char *c = getenv("COLUMNS");
    char *end = NULL;
    long v = c && *c ? strtol(c, &end, 10) : 0;
    return end && !*end && v > 0 && v < 10000 ? (int)v : 0;
}

int vmsh_cli_text_width(const char *s)
{
    int w = 0;
    for (; s && *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80) /* not a continuation byte */
            w++;
    return w;
}

void vmsh_cli_print_wrapped(const char *text, int col, int indent, int width)
{
    if (!text)
        text = "-";
    /* too narrow to be worth it: indent less, or not at all */
    if (width > 0 && width - indent < 24)
        indent = width > 28 ? 4 : 0;
    if (width <= 0 || col + vmsh_cli_text_width(text) <= width) {
        printf("%s\n", text);
        return;
    }
    const char *p = text;
    bool first = true;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if (w == p)
            break;
        int ww = 0;
        for (const char *c = w; c < p; c++)
            ww += ((unsigned char)*c & 0xc0) != 0x80;
        if (!first && col + 1 + ww > width) {
            printf("\n%*s", indent, "");
            col = indent;
            first = true;
        }
        printf("%s%.*s", first ? "" : " ", (int)(p - w), w);
        col += ww + (first ? 0 : 1);
        first = false;
    }
    putchar('\n');
}

void vmsh_cli_format_bytes(uint64_t n, char *buf, size_t cap)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%" PRIu64 " B", n);
    else
        snprintf(buf, cap, "%.1f %s", v, units[u]);
}

void vmsh_cli_progress(void *opaque, uint64_t done, uint64_t total)
{
    vmsh_cli_progress_state *p = opaque;
    if (!p || !p->cli->progress)
        return;
    int64_t now = vmsh_now_ms();
    if (done < total && now - p->last_ms < 250)
        return;
    p->last_ms = now;
    char d[32], t[32];
    vmsh_cli_format_bytes(done, d, sizeof(d));
    vmsh_cli_format_bytes(total, t, sizeof(t));
    fprintf(stderr, "\r%s: %3d%% (%s of %s)   ", p->what, total ? (int)(done * 100 / total) : 100,
            d, t);
    p->shown = true;
}

void vmsh_cli_progress_end(vmsh_cli_progress_state *p)
{
    if (p && p->shown)
        fputc('\n', stderr);
    if (p)
        p->shown = false;
}

/* ---- init ---- */

const struct option vmsh_cli_opts_init[] = {
    {"encrypt", no_argument, NULL, 'e'},
    {"key-file", required_argument, NULL, 'k'},
    {"compression-level", required_argument, NULL, 'l'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_init(vmsh_cli *cli, int argc, char **argv)
{
    bool encrypt = false;
    const char *key_file = NULL;
    int level = 0, c;
    while ((c = getopt_long(argc, argv, "h", vmsh_cli_opts_init, NULL)) != -1) {
        switch (c) {
        case 'e':
            encrypt = true;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'l': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < VMSH_ZSTD_LEVEL_MIN || v > VMSH_ZSTD_LEVEL_MAX || v == 0)
                return vmsh_cli_usage_error(cli, "init",
                                            "--compression-level takes -7 to -1 or 1 to 19");
            level = (int)v;
            break;
        }
        case 'h':
            printf("Usage: vmshadow init [--encrypt --key-file FILE] [--compression-level N]\n"
                   "\nCreates a repository at the --repo directory (new or empty).\n"
                   "--encrypt: AES-256-GCM; FILE holds the passphrase. Keep it safe: nothing\n"
                   "in the repository is readable without it.\n");
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "init", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "init", "unexpected argument '%s'", argv[optind]);
    if (encrypt && !key_file)
        return vmsh_cli_usage_error(cli, "init", "--encrypt needs --key-file FILE");
    if (key_file && !encrypt)
        return vmsh_cli_usage_error(cli, "init", "--key-file is used with --encrypt");
    if (!level) {
        long l = LONG_MIN; /* unset: the repository's default */
        vmsh_error *err = NULL;
        if (vmsh_kvconf_get_int(cli->config, "compression-level", VMSH_ZSTD_LEVEL_MIN,
                                VMSH_ZSTD_LEVEL_MAX, &l, &err) < 0)
            return vmsh_cli_fail(cli, &err);
        if (l == 0) { /* as every other command refuses it (vmsh_cli_repo_open) */
            vmsh_error_set(&err, -EINVAL,
                           "compression-level 0 is not a zstd level (-7 to -1 "
                           "or 1 to 19)");
            return vmsh_cli_fail(cli, &err);
        }
        level = l == LONG_MIN ? 0 : (int)l;
    }
    vmsh_error *err = NULL;
    unsigned fl = cli->allow_foreign_repo ? VMSH_REPO_OPEN_ALLOW_FOREIGN : 0;
    vmsh_repo_init_opts o = {.compression_level = level, .key_file = key_file, .flags = fl};
    if (vmsh_repo_init(cli->repo, &o, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_repo *r = NULL;
    /* the repository just made: with the key it was made with, or none */
    cli->key_file_set = true;
    cli->key_file_opt = key_file;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *o2 = json_object_new_object();
        json_object_object_add(o2, "repo", json_object_new_string(cli->repo));
        json_object_object_add(o2, "id", json_object_new_string(vmsh_repo_id(r)));
        json_object_object_add(o2, "encrypted", json_object_new_boolean(encrypt));
        json_object_object_add(o2, "compression_level",
                               json_object_new_int(vmsh_repo_compression_level(r)));
        vmsh_cli_print_json(o2);
    } else {
        printf("created repository %s at %s%s\n", vmsh_repo_id(r), cli->repo,
               encrypt ? " (encrypted)" : "");
    }
    vmsh_repo_free(r);
    return VMSH_EXIT_OK;
}

/* ---- list and show ---- */

static uint64_t backup_size(const vmsh_backup_info *b, uint64_t *stored)
{
    uint64_t s = 0;
    *stored = 0;
    for (size_t i = 0; i < b->n_files; i++) {
        s += b->files[i].size;
        *stored += b->files[i].stored_bytes;
    }
    return s;
}

/* The coordinator's document, parsed when it is JSON (else a string). */
static json_object *document_json(const char *doc)
{
    json_object *d = doc && *doc ? json_tokener_parse(doc) : NULL;
    if (!d && doc && *doc)
        d = json_object_new_string(doc);
    return d;
}

/* "web:saved-state db:guest" from a document's "vms" array, when present. */
static void vms_summary(json_object *doc, char *buf, size_t cap)
{
    buf[0] = 0;
    json_object *vms;
    if (!doc || !json_object_is_type(doc, json_type_object) ||
        !json_object_object_get_ex(doc, "vms", &vms) || !json_object_is_type(vms, json_type_array))
        return;
    size_t used = 0;
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *v = json_object_array_get_idx(vms, i), *n, *m;
        if (!json_object_is_type(v, json_type_object) || !json_object_object_get_ex(v, "name", &n))
            continue;
        const char *method =
            json_object_object_get_ex(v, "method", &m) && m ? json_object_get_string(m) : NULL;
        json_object *inc = NULL, *ex = NULL;
        bool incremental = json_object_object_get_ex(v, "incremental", &inc) &&
                           json_object_get_boolean(inc); /* issue 7 */
        /* R6 (issue 25): what the backup does not hold is never silent */
        size_t n_ex = json_object_object_get_ex(v, "excluded_disks", &ex) &&
                              json_object_is_type(ex, json_type_array)
                          ? json_object_array_length(ex)
                          : 0;
        char exs[48] = "";
        if (n_ex)
            snprintf(exs, sizeof(exs), "(%zu excluded)", n_ex);
        int w = snprintf(buf + used, cap - used, "%s%s%s%s%s%s", used ? " " : "",
                         json_object_get_string(n), method ? ":" : "", method ? method : "",
                         incremental ? "+incremental" : "", exs);
        if (w < 0 || (size_t)w >= cap - used)
            break;
        used += (size_t)w;
    }
}

static const char *doc_kind(json_object *doc)
{
    json_object *k;
    if (doc && json_object_is_type(doc, json_type_object)) {
        if (json_object_object_get_ex(doc, "kind", &k) && json_object_is_type(k, json_type_string))
            return json_object_get_string(k);
        if (json_object_object_get_ex(doc, "incremental", &k))
            return json_object_get_boolean(k) ? "incremental" : "full";
    }
    return "full";
}

static json_object *files_json(const vmsh_backup_info *b)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < b->n_files; i++) {
        json_object *f = json_object_new_object();
        json_object_object_add(f, "name", json_object_new_string(b->files[i].name));
        json_object_object_add(f, "kind", json_object_new_string(b->files[i].kind));
        json_object_object_add(f, "size", json_object_new_int64((int64_t)b->files[i].size));
        json_object_object_add(f, "stored_bytes",
                               json_object_new_int64((int64_t)b->files[i].stored_bytes));
        json_object_object_add(f, "index", json_object_new_string(b->files[i].index));
        json_object_array_add(a, f);
    }
    return a;
}

static json_object *backup_json(const vmsh_backup_info *b)
{
    uint64_t stored;
    uint64_t size = backup_size(b, &stored);
    json_object *o = json_object_new_object();
    json_object *doc = document_json(b->document);
    json_object_object_add(o, "id", json_object_new_string(b->id));
    json_object_object_add(o, "time", json_object_new_string(b->time));
    json_object_object_add(o, "kind", json_object_new_string(doc_kind(doc)));
    json_object_object_add(o, "size", json_object_new_int64((int64_t)size));
    json_object_object_add(o, "stored_bytes", json_object_new_int64((int64_t)stored));
    json_object_object_add(o, "files", files_json(b));
    json_object_object_add(o, "document", doc);
    return o;
}

int vmsh_cmd_list(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "list",
        "Usage: vmshadow list\n\nLists backups, oldest first: ID, time, VMs with "
        "their method, full or incremental, size.\n");
    if (done >= 0)
        return done;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "list", "unexpected argument '%s'", argv[optind]);
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_backup_info *a = NULL;
    vmsh_damage *dmg = NULL;
    size_t n = 0, nd = 0;
    if (vmsh_repo_list_tolerant(r, &a, &n, &dmg, &nd, &err) < 0) {
        vmsh_repo_free(r);
        return vmsh_cli_fail(cli, &err);
    }
    if (cli->json) {
        json_object *arr = json_object_new_array(), *darr = json_object_new_array();
        for (size_t i = 0; i < n; i++)
            json_object_array_add(arr, backup_json(&a[i]));
        for (size_t i = 0; i < nd; i++) {
            json_object *x = json_object_new_object();
            json_object_object_add(x, "backup", json_object_new_string(dmg[i].backup));
            json_object_object_add(x, "what",
                                   json_object_new_string(dmg[i].what ? dmg[i].what : "?"));
            json_object_array_add(darr, x);
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "repo", json_object_new_string(cli->repo));
        json_object_object_add(o, "backups", arr);
        json_object_object_add(o, "damaged", darr);
        if (nd)
            json_object_object_add(
                o, "error",
                vmsh_cli_error_json(VMSH_EXIT_DAMAGED, -EBADMSG,
                                    "a backup of the repository cannot be read (damaged "
                                    "manifest); run 'vmshadow verify'"));
        vmsh_cli_print_json(o);
    } else if (n == 0 && nd == 0) {
        vmsh_cli_info(cli, "no backups in %s", cli->repo);
    } else {
        printf("%-16s  %-20s  %-11s  %10s  %10s  %s\n", "ID", "TIME", "KIND", "SIZE", "STORED",
               "VMS");
        for (size_t i = 0; i < n; i++) {
            uint64_t stored;
            uint64_t size = backup_size(&a[i], &stored);
            char s1[32], s2[32], vms[512];
            vmsh_cli_format_bytes(size, s1, sizeof(s1));
            vmsh_cli_format_bytes(stored, s2, sizeof(s2));
            json_object *doc = document_json(a[i].document);
            vms_summary(doc, vms, sizeof(vms));
            printf("%-16s  %-20s  %-11s  %10s  %10s  %s\n", vmsh_cli_safe(cli, a[i].id),
                   vmsh_cli_safe(cli, a[i].time), vmsh_cli_safe(cli, doc_kind(doc)), s1, s2,
                   vms[0] ? vmsh_cli_safe(cli, vms) : "-");
            json_object_put(doc);
        }
        for (size_t i = 0; i < nd; i++)
            printf("%-16s  DAMAGED: %s\n", vmsh_cli_safe(cli, dmg[i].backup),
                   dmg[i].what ? vmsh_cli_safe(cli, dmg[i].what) : "?");
    }
    int rc = VMSH_EXIT_OK;
    if (nd) {
        fprintf(stderr,
                "%s: error: %zu backup%s of %s cannot be read (damaged manifest); run "
                "'vmshadow verify'\n",
                cli->prog, nd, nd == 1 ? "" : "s", vmsh_cli_safe(cli, cli->repo));
        rc = VMSH_EXIT_DAMAGED;
    }
    vmsh_damage_array_free(dmg, nd);
    vmsh_backup_info_array_free(a, n);
    vmsh_repo_free(r);
    return rc;
}

int vmsh_cmd_show(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "show",
        "Usage: vmshadow show BACKUP\n\nShows a backup: its files with sizes and "
        "index hashes, and its backup document.\nBACKUP is an ID, a unique prefix, "
        "or latest.\n");
    if (done >= 0)
        return done;
    if (argc - optind != 1)
        return vmsh_cli_usage_error(cli, "show", "give exactly one BACKUP");
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_backup_info *b = NULL;
    if (vmsh_repo_backup_info(r, argv[optind], &b, &err) < 0) {
        vmsh_repo_free(r);
        return vmsh_cli_fail(cli, &err);
    }
    if (cli->json) {
        vmsh_cli_print_json(backup_json(b));
    } else {
        uint64_t stored;
        uint64_t size = backup_size(b, &stored);
        char s1[32], s2[32];
        vmsh_cli_format_bytes(size, s1, sizeof(s1));
        vmsh_cli_format_bytes(stored, s2, sizeof(s2));
        json_object *d0 = document_json(b->document), *vms = NULL;
        printf("backup %s\ntime   %s\nkind   %s\nsize   %s (%s new in the repository)\n",
               vmsh_cli_safe(cli, b->id), vmsh_cli_safe(cli, b->time),
               vmsh_cli_safe(cli, doc_kind(d0)), s1, s2);
        /* issue 7: how each disk was read, and why */
        if (d0 && json_object_is_type(d0, json_type_object) &&
            json_object_object_get_ex(d0, "vms", &vms) && json_object_is_type(vms, json_type_array))
            for (size_t i = 0; i < json_object_array_length(vms); i++) {
                json_object *v = json_object_array_get_idx(vms, i), *ds = NULL, *n = NULL;
                json_object *ex = NULL;
                json_object_object_get_ex(v, "name", &n);
                /* R6 (issue 25): each thing left out, with the reason */
                if (json_object_object_get_ex(v, "excluded_disks", &ex) &&
                    json_object_is_type(ex, json_type_array))
                    for (size_t k = 0; k < json_object_array_length(ex); k++) {
                        json_object *x = json_object_array_get_idx(ex, k), *xn = NULL, *xr = NULL;
                        json_object_object_get_ex(x, "name", &xn);
                        json_object_object_get_ex(x, "reason", &xr);
                        printf("  %s %s: excluded: %s\n",
                               vmsh_cli_safe(cli, json_object_get_string(n)),
                               vmsh_cli_safe(cli, json_object_get_string(xn)),
                               xr ? vmsh_cli_safe(cli, json_object_get_string(xr)) : "-");
                    }
                if (!json_object_object_get_ex(v, "disks", &ds) ||
                    !json_object_is_type(ds, json_type_array))
                    continue;
                for (size_t k = 0; k < json_object_array_length(ds); k++) {
                    json_object *dk = json_object_array_get_idx(ds, k), *dn = NULL, *rd = NULL,
                                *rs = NULL, *br = NULL;
                    json_object_object_get_ex(dk, "name", &dn);
                    json_object_object_get_ex(dk, "read", &rd);
                    json_object_object_get_ex(dk, "reason", &rs);
                    json_object_object_get_ex(dk, "bytes_read", &br);
                    vmsh_cli_format_bytes((uint64_t)json_object_get_int64(br), s1, sizeof(s1));
                    printf("  %s %s: %s, %s read (%s)\n",
                           vmsh_cli_safe(cli, json_object_get_string(n)),
                           vmsh_cli_safe(cli, json_object_get_string(dn)),
                           vmsh_cli_safe(cli, json_object_get_string(rd)), s1,
                           rs ? vmsh_cli_safe(cli, json_object_get_string(rs)) : "-");
                }
            }
        json_object_put(d0);
        printf("files:\n");
        /* the name column as wide as the longest name (issue 24) */
        int name_w = 4;
        for (size_t i = 0; i < b->n_files; i++) {
            int w = vmsh_cli_text_width(vmsh_cli_safe(cli, b->files[i].name));
            name_w = w > name_w ? w : name_w;
        }
        for (size_t i = 0; i < b->n_files; i++) {
            vmsh_cli_format_bytes(b->files[i].size, s1, sizeof(s1));
            const char *fn = vmsh_cli_safe(cli, b->files[i].name);
            printf("  %s%*s %-11s %10s  index %.16s\n", fn, name_w - vmsh_cli_text_width(fn), "",
                   vmsh_cli_safe(cli, b->files[i].kind), s1, vmsh_cli_safe(cli, b->files[i].index));
        }
        json_object *doc = document_json(b->document);
        if (doc && !json_object_is_type(doc, json_type_string)) {
            /* json-c escapes control characters; bytes that are not UTF-8
             * are escaped here (issue 20) */
            const char *t = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY |
                                                                    JSON_C_TO_STRING_NOSLASHESCAPE);
            _cleanup_free_ char *fixed = vmsh_utf8_valid_str(t)
                                             ? NULL
                                             : vmsh_text_escape(t, strlen(t), VMSH_TEXT_JSON, NULL);
            printf("document:\n%s\n", fixed ? fixed : t);
        } else if (b->document && *b->document) {
            printf("document:\n%s\n", vmsh_cli_safe(cli, b->document));
        }
        json_object_put(doc);
    }
    vmsh_backup_info_free(b);
    vmsh_repo_free(r);
    return VMSH_EXIT_OK;
}

/* ---- verify ---- */

int vmsh_cmd_verify(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "verify",
        "Usage: vmshadow verify [BACKUP...]\n\nReads back and re-hashes every chunk "
        "the backups (all by default) need;\nnames each damaged backup and file. "
        "Exit code 3 when anything is damaged.\n");
    if (done >= 0)
        return done;
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_cli_progress_state ps = {.cli = cli, .what = "verify"};
    vmsh_verify_report *rep = NULL;
    int rc = vmsh_repo_verify(r, (const char *const *)argv + optind, (size_t)(argc - optind),
                              vmsh_cli_progress, &ps, &rep, &err);
    vmsh_cli_progress_end(&ps);
    vmsh_repo_free(r);
    if (rc < 0 && rc != -EBADMSG)
        return vmsh_cli_fail(cli, &err);
    if (!rep) /* -EBADMSG before the report existed: a damaged manifest named on the command line */
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "ok", json_object_new_boolean(rep->n_damage == 0));
        json_object_object_add(o, "backups_checked",
                               json_object_new_int64((int64_t)rep->backups_checked));
        json_object_object_add(o, "chunks_checked",
                               json_object_new_int64((int64_t)rep->chunks_checked));
        json_object_object_add(o, "bytes_checked",
                               json_object_new_int64((int64_t)rep->bytes_checked));
        json_object *d = json_object_new_array();
        for (size_t i = 0; i < rep->n_damage; i++) {
            json_object *x = json_object_new_object();
            json_object_object_add(
                x, "backup",
                rep->damage[i].backup[0] ? json_object_new_string(rep->damage[i].backup) : NULL);
            json_object_object_add(x, "file",
                                   rep->damage[i].file ? json_object_new_string(rep->damage[i].file)
                                                       : NULL);
            json_object_object_add(
                x, "what", json_object_new_string(rep->damage[i].what ? rep->damage[i].what : "?"));
            json_object_array_add(d, x);
        }
        json_object_object_add(o, "damage", d);
        json_object_object_add(o, "store", vmsh_cli_store_json());
        if (rep->n_damage)
            json_object_object_add(o, "error",
                                   vmsh_cli_error_json(VMSH_EXIT_DAMAGED, -EBADMSG,
                                                       err ? err->message : "repository damaged"));
        vmsh_cli_print_json(o);
    } else {
        for (size_t i = 0; i < rep->n_damage; i++) {
            const vmsh_damage *d = &rep->damage[i];
            const char *what = vmsh_cli_safe(cli, d->what ? d->what : "?");
            if (d->backup[0] && d->file)
                printf("DAMAGED backup %s, file %s: %s\n", vmsh_cli_safe(cli, d->backup),
                       vmsh_cli_safe(cli, d->file), what);
            else if (d->backup[0])
                printf("DAMAGED backup %s: %s\n", vmsh_cli_safe(cli, d->backup), what);
            else
                printf("DAMAGED repository: %s\n", what);
        }
        char b[32];
        vmsh_cli_format_bytes(rep->bytes_checked, b, sizeof(b));
        printf("verified %zu backup%s, %" PRIu64 " chunks (%s): %s\n", rep->backups_checked,
               rep->backups_checked == 1 ? "" : "s", rep->chunks_checked, b,
               rep->n_damage ? "DAMAGE FOUND" : "no damage");
    }
    bool damaged = rep->n_damage > 0;
    vmsh_verify_report_free(rep);
    if (damaged) {
        if (!cli->json)
            fprintf(stderr, "%s: error: %s\n", cli->prog,
                    vmsh_cli_safe(cli, err ? err->message : "repository damaged"));
        vmsh_error_free(err);
        return VMSH_EXIT_DAMAGED;
    }
    vmsh_error_free(err);
    return VMSH_EXIT_OK;
}

/* ---- prune ---- */

static int parse_count(vmsh_cli *cli, const char *opt, const char *s, unsigned *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end || v < 1 || v > 100000)
        return vmsh_cli_usage_error(cli, "prune", "%s takes a number from 1 to 100000", opt);
    *out = (unsigned)v;
    return 0;
}

const struct option vmsh_cli_opts_prune[] = {
    {"keep-last", required_argument, NULL, 'l'},
    {"keep-daily", required_argument, NULL, 'd'},
    {"keep-weekly", required_argument, NULL, 'w'},
    {"keep-monthly", required_argument, NULL, 'm'},
    {"dry-run", no_argument, NULL, 'n'},
    {"help", no_argument, NULL, 'h'},
    {0},
};

int vmsh_cmd_prune(vmsh_cli *cli, int argc, char **argv)
{
    vmsh_retention pol = {0};
    bool dry = false;
    int c, u = 0;
    while ((c = getopt_long(argc, argv, "h", vmsh_cli_opts_prune, NULL)) != -1) {
        switch (c) {
        case 'l':
            u = parse_count(cli, "--keep-last", optarg, &pol.keep_last);
            break;
        case 'd':
            u = parse_count(cli, "--keep-daily", optarg, &pol.keep_daily);
            break;
        case 'w':
            u = parse_count(cli, "--keep-weekly", optarg, &pol.keep_weekly);
            break;
        case 'm':
            u = parse_count(cli, "--keep-monthly", optarg, &pol.keep_monthly);
            break;
        case 'n':
            dry = true;
            break;
        case 'h':
            printf("Usage: vmshadow prune --keep-last N [--keep-daily N] [--keep-weekly N]\n"
                   "                      [--keep-monthly N] [--dry-run]\n\n"
                   "Forgets backups outside the policy (kept: the union of the rules; days,\n"
                   "ISO weeks and months in UTC). 'vmshadow gc' then frees their space.\n");
            return VMSH_EXIT_OK;
        default:
            return vmsh_cli_usage_error(cli, "prune", "unknown option '%s'", argv[optind - 1]);
        }
        if (u)
            return u;
    }
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "prune", "unexpected argument '%s'", argv[optind]);
    if (!pol.keep_last && !pol.keep_daily && !pol.keep_weekly && !pol.keep_monthly)
        return vmsh_cli_usage_error(cli, "prune", "give at least one --keep-* rule");
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_prune_result *res = NULL;
    int rc = vmsh_repo_prune(r, &pol, dry, &res, &err);
    vmsh_repo_free(r);
    if (rc < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *o = json_object_new_object(), *k = json_object_new_array(),
                    *f = json_object_new_array();
        for (size_t i = 0; i < res->n_keep; i++)
            json_object_array_add(k, json_object_new_string(res->keep[i]));
        for (size_t i = 0; i < res->n_forget; i++)
            json_object_array_add(f, json_object_new_string(res->forget[i]));
        json_object_object_add(o, "dry_run", json_object_new_boolean(dry));
        json_object_object_add(o, "keep", k);
        json_object_object_add(o, "forget", f);
        vmsh_cli_print_json(o);
    } else {
        for (size_t i = 0; i < res->n_keep; i++)
            printf("keep    %s\n", vmsh_cli_safe(cli, res->keep[i]));
        for (size_t i = 0; i < res->n_forget; i++)
            printf("%s  %s\n", dry ? "would forget" : "forget", vmsh_cli_safe(cli, res->forget[i]));
        printf("%zu kept, %zu %s%s\n", res->n_keep, res->n_forget,
               dry ? "would be forgotten (dry run)" : "forgotten",
               !dry && res->n_forget ? "; run 'vmshadow gc' to free their space" : "");
    }
    vmsh_prune_result_free(res);
    return VMSH_EXIT_OK;
}

/* ---- gc ---- */

int vmsh_cmd_gc(vmsh_cli *cli, int argc, char **argv)
{
    int done = vmsh_cli_only_help(
        cli, argc, argv, "gc",
        "Usage: vmshadow gc\n\nFrees chunks no backup needs, and what interrupted "
        "backups left behind.\nIt runs beside backups: it marks unreferenced packs and "
        "deletes them in a\nlater run, after store-gc-grace-seconds (24 h by default). "
        "One gc at a time:\na second exits 4.\n");
    if (done >= 0)
        return done;
    if (optind < argc)
        return vmsh_cli_usage_error(cli, "gc", "unexpected argument '%s'", argv[optind]);
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    if (vmsh_cli_repo_open(cli, &r, &err) < 0)
        return vmsh_cli_fail(cli, &err);
    vmsh_gc_stats st = {0};
    int rc = vmsh_repo_gc(r, &st, &err);
    vmsh_repo_free(r);
    if (rc < 0)
        return vmsh_cli_fail(cli, &err);
    if (cli->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "packs_deleted",
                               json_object_new_int64((int64_t)st.packs_deleted));
        json_object_object_add(o, "packs_rewritten",
                               json_object_new_int64((int64_t)st.packs_rewritten));
        json_object_object_add(o, "indexes_deleted",
                               json_object_new_int64((int64_t)st.indexes_deleted));
        json_object_object_add(o, "tmp_deleted", json_object_new_int64((int64_t)st.tmp_deleted));
        json_object_object_add(o, "bytes_freed", json_object_new_int64((int64_t)st.bytes_freed));
        json_object_object_add(o, "skipped", json_object_new_int64((int64_t)st.skipped));
        json_object_object_add(o, "packs_marked", json_object_new_int64((int64_t)st.packs_marked));
        json_object_object_add(o, "sessions_live",
                               json_object_new_int64((int64_t)st.sessions_live));
        json_object_object_add(o, "sessions_dead",
                               json_object_new_int64((int64_t)st.sessions_dead));
        json_object_object_add(o, "deletion_held",
                               json_object_new_int64((int64_t)st.deletion_held));
        vmsh_cli_print_json(o);
    } else {
        char b[32];
        vmsh_cli_format_bytes(st.bytes_freed, b, sizeof(b));
        printf("gc: %" PRIu64 " packs deleted, %" PRIu64 " rewritten, %" PRIu64
               " indexes and %" PRIu64 " temporary files deleted; %s freed; %" PRIu64
               " packs marked for a later gc\n",
               st.packs_deleted, st.packs_rewritten, st.indexes_deleted, st.tmp_deleted, b,
               st.packs_marked);
    }
    if (st.skipped)
        vmsh_cli_warn(cli,
                      "gc left alone %" PRIu64 " entries of the repository that are links, "
                      "special files or another owner's files (never followed or deleted)",
                      st.skipped);
    return VMSH_EXIT_OK;
}
