/* fuzz_cli.c - command-line arguments: the real `vmshadow` main (src/cli,
 * compiled here with main renamed vmsh_cli_main) with the global option
 * parser, the command dispatch and each command's own option parser and
 * argument checks, run to completion against a scratch setup.
 *
 * Input: a command index byte, then NUL-separated words. The words before
 * the first empty word are global words (before the command), the rest
 * follow the command. Safety, so that millions of random command lines
 * cannot touch this host:
 *  - every libvirt connection is forced to test:///default (the in-process
 *    test driver: --wrap=virConnectOpen), whatever -c says;
 *  - the process runs in a scratch directory, and inputs with an absolute
 *    path (a word starting with '/', or an option word holding one) or ".."
 *    are skipped: every path resolves inside it; the state
 *    and writers directories come from the environment, which beats both the
 *    command line and the config file;
 *  - `backup` and `restore` are never run (they drive VMs and take minutes):
 *    inputs naming them in any word are skipped. They are the gap this
 *    target leaves (docs/reliability.md);
 *  - the scratch directory is put back after every run: the golden
 *    repository is copied again when a command changed it, and whatever a
 *    command created is removed. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libvirt/libvirt.h>

int vmsh_cli_main(int argc, char **argv);
virConnectPtr __real_virConnectOpen(const char *uri);
virConnectPtr __wrap_virConnectOpen(const char *uri);

virConnectPtr __wrap_virConnectOpen(const char *uri)
{
    (void)uri;
    return __real_virConnectOpen("test:///default");
}

#define MAX_WORDS 24
#define MAX_WORD  200

static const char *const commands[] = {"vms",   "writers", "init",    "list",    "show", "verify",
                                       "prune", "gc",      "recover", "extract", "help"};
static char work[4300];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void copy_tree(const char *from, const char *to)
{
    mkdir(to, 0700);
    DIR *d = opendir(from);
    if (!d) {
        perror(from);
        abort();
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char a[4400 + 256], b[4400 + 256];
        snprintf(a, sizeof(a), "%s/%s", from, e->d_name);
        snprintf(b, sizeof(b), "%s/%s", to, e->d_name);
        struct stat st;
        if (stat(a, &st) < 0)
            abort();
        if (S_ISDIR(st.st_mode)) {
            copy_tree(a, b);
            continue;
        }
        FILE *in = fopen(a, "rb");
        if (!in)
            abort();
        char buf[65536];
        size_t n, len = 0;
        char *all = NULL;
        while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
            all = realloc(all, len + n);
            if (!all)
                abort();
            memcpy(all + len, buf, n);
            len += n;
        }
        fclose(in);
        fuzz_write_file(b, all, len);
        free(all);
    }
    closedir(d);
}

/* The scratch directory: repo/ (a copy of tests/golden/repo-v1), state/,
 * writers.d/ (one script writer, never run: only `backup` runs writers) and
 * vmshadow.conf. */
static void setup(void)
{
    static const char *const keep[] = {".", "..", "repo", "state", "writers.d", "vmshadow.conf"};
    if (!work[0]) {
        snprintf(work, sizeof(work), "%s/cli", fuzz_scratch());
        mkdir(work, 0700);
        char p[4400];
        snprintf(p, sizeof(p), "%s/state", work);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/writers.d", work);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/writers.d/app.conf", work);
        static const char writer[] = "name = app\nfreeze = /bin/true\nthaw = /bin/true\n";
        fuzz_write_file(p, writer, strlen(writer));
        snprintf(p, sizeof(p), "%s/vmshadow.conf", work);
        static const char conf[] = "repo = repo\nconnect = test:///default\n";
        fuzz_write_file(p, conf, strlen(conf));
        setenv("VMSHADOW_CONFIG", p, 1);
        snprintf(p, sizeof(p), "%s/state", work);
        setenv("VMSHADOW_STATE_DIR", p, 1);
        snprintf(p, sizeof(p), "%s/writers.d", work);
        setenv("VMSHADOW_WRITERS_DIR", p, 1);
        unsetenv("VMSHADOW_REPO");
        setenv("LIBVIRT_DEFAULT_URI", "test:///default", 1);
        if (chdir(work) < 0)
            abort();
    }
    /* Remove what the last run created. */
    DIR *d = opendir(work);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        bool known = false;
        for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
            known |= strcmp(e->d_name, keep[i]) == 0;
        if (!known) {
            nftw(e->d_name, rm_one, 16, FTW_DEPTH | FTW_PHYS); /* the cwd is `work` */
        }
    }
    if (d)
        closedir(d);
    /* Put the golden repository back when a command changed it. */
    struct stat st;
    if (stat("repo/backups/2a64f75c7c5c789d", &st) < 0 ||
        stat("repo/packs/5b/5bfb63f42e6f2676986cac47ae5f7ded.pack", &st) < 0 ||
        stat("repo/config", &st) < 0) {
        nftw("repo", rm_one, 16, FTW_DEPTH | FTW_PHYS);
        copy_tree(VMSH_GOLDEN_REPO, "repo");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_WORDS * MAX_WORD)
        return 0;
    const char *cmd = commands[data[0] % (sizeof(commands) / sizeof(commands[0]))];
    char *text = fuzz_strndup(data + 1, size - 1);
    char *argv[2 * MAX_WORDS + 3];
    int argc = 0, global = 1;
    argv[argc++] = "vmshadow";
    /* Split at NULs: global words, an empty word, command words. */
    bool ok = true;
    for (size_t at = 0; at < size - 1 && ok;) {
        char *w = text + at;
        size_t len = strlen(w);
        at += len + 1;
        if (len == 0 && global) {
            global = 0;
            argv[argc++] = (char *)cmd;
            continue;
        }
        /* No absolute path, as an argument or an option's value ("-r/x",
         * "--repo=/x"), and no way up: paths stay in the scratch directory. */
        if (argc >= MAX_WORDS || len > MAX_WORD || w[0] == '/' || (w[0] == '-' && strchr(w, '/')) ||
            strstr(w, "..") || strstr(w, "backup") == w || strstr(w, "restore") == w)
            ok = false;
        else
            argv[argc++] = w;
    }
    if (global)
        argv[argc++] = (char *)cmd;
    argv[argc] = NULL;
    if (ok) {
        setup();
        optind = 0;
        (void)vmsh_cli_main(argc, argv);
    }
    free(text);
    return 0;
}
