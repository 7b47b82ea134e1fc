/* fuzz_cli.c - command-line arguments: the real `vmshadow` main (src/cli,
 * compiled here with main renamed vmsh_cli_main) with the global option
 * parser, the command dispatch and each command's own option parser and
 * argument checks, run to completion against a scratch setup.
 *
 * Input: a command index byte, then NUL-separated words. The words before
 * the first empty word are global words (before the command), the rest
 * follow the command (where global options are taken too: main's
 * take_globals, issue 24; the corpus has both placements). Safety, so that millions of random
 * command lines cannot touch this host:
 *  - every libvirt connection is forced to test:///default (the in-process
 *    test driver: --wrap=virConnectOpen), whatever -c says;
 *  - the coordinator is never run: vmsh_coord_backup and vmsh_coord_restore
 *    are wrapped at link time (--wrap) by functions that fail with
 *    -ECANCELED and do nothing. `backup` and `restore` run for real up to
 *    that call (option parsers, argument checks, config, writers loading,
 *    repository open, the pending backup and the VM writer's history; the
 *    backup lookup, document parse, the VM writer's restore plan and the
 *    --dry-run output), so no writer is sent an event, no script writer is
 *    run, no VM is touched and no file is restored. CTest checks that the
 *    wraps take effect (fuzz.cli_coordinator_wrapped);
 *  - the process runs in a scratch directory, and inputs with an absolute
 *    path (a word starting with '/', or an option word holding one) or ".."
 *    are skipped: every path resolves inside it (so `restore --to` is only
 *    ever given a relative directory, which it refuses); the state
 *    and writers directories come from the environment, which beats both the
 *    command line and the config file;
 *  - the scratch directory is put back after every run: the repository is
 *    copied again when a command changed it, the config file and the
 *    writers and state directories are restored, and whatever a command
 *    created is removed.
 * The repository is tests/golden/repo-v1 plus, made once per process through
 * the repository API, a backup with a real VM backup document (two VMs,
 * "web" and "test", the test driver's own VM) for `restore` to plan. */
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

#include <json-c/json.h>
#include <libvirt/libvirt.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/repo/backup.h>
#include <vmshadow/repo/repo.h>

int vmsh_cli_main(int argc, char **argv);
virConnectPtr __real_virConnectOpen(const char *uri);
virConnectPtr __wrap_virConnectOpen(const char *uri);

virConnectPtr __wrap_virConnectOpen(const char *uri)
{
    (void)uri;
    return __real_virConnectOpen("test:///default");
}

/* The coordinator's entry points, as the requestor (backup.c, restore.c) calls
 * them (from src/requestor; --wrap=vmsh_coord_backup, --wrap=vmsh_coord_restore): nothing is
 * done, and the commands take the error path they take when a set fails. */
int __wrap_vmsh_coord_backup(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                             size_t n_writers, vmsh_provider_ops *const *providers,
                             size_t n_providers, vmsh_requestor_ops *req,
                             const vmsh_set_options *opts, vmsh_set **out, vmsh_error **err);
int __wrap_vmsh_coord_restore(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                              size_t n_writers, vmsh_requestor_ops *req,
                              const struct vmsh_backup_doc *backup, const vmsh_set_options *opts,
                              vmsh_set **out, vmsh_error **err);

int __wrap_vmsh_coord_backup(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                             size_t n_writers, vmsh_provider_ops *const *providers,
                             size_t n_providers, vmsh_requestor_ops *req,
                             const vmsh_set_options *opts, vmsh_set **out, vmsh_error **err)
{
    (void)cfg, (void)writers, (void)n_writers, (void)providers, (void)n_providers, (void)req,
        (void)opts;
    *out = NULL;
    return vmsh_error_set(err, -ECANCELED, "fuzz: the coordinator is not run (backup)");
}

int __wrap_vmsh_coord_restore(const vmsh_coord_config *cfg, vmsh_writer_ops *const *writers,
                              size_t n_writers, vmsh_requestor_ops *req,
                              const struct vmsh_backup_doc *backup, const vmsh_set_options *opts,
                              vmsh_set **out, vmsh_error **err)
{
    (void)cfg, (void)writers, (void)n_writers, (void)req, (void)backup, (void)opts;
    *out = NULL;
    return vmsh_error_set(err, -ECANCELED, "fuzz: the coordinator is not run (restore)");
}

#define MAX_WORDS 24
#define MAX_WORD  200

/* New commands go at the end: the index byte of the corpus files keeps its
 * meaning. */
static const char *const commands[] = {"vms",    "writers", "init",   "list",    "show",
                                       "verify", "prune",   "gc",     "recover", "extract",
                                       "help",   "backup",  "restore"};
static char work[4300];
static char master[4300]; /* the repository as every run starts with it */

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

/* ---- the repository every run starts with ---- */

static void die(const char *what, vmsh_error *err)
{
    fprintf(stderr, "fuzz_cli setup: %s: %s\n", what, err ? err->message : "failed");
    abort();
}

static json_object *jparse(const char *text)
{
    json_object *o = json_tokener_parse(text);
    if (!o)
        die("bad JSON in fuzz_cli.c", NULL);
    return o;
}

static char *read_text(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    char buf[4096];
    size_t n;
    while (f && (n = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (!(text = realloc(text, len + n + 1)))
            abort();
        memcpy(text + len, buf, n);
        len += n;
        text[len] = 0;
    }
    if (!f || !text) {
        perror(path);
        abort();
    }
    fclose(f);
    return text;
}

/* Stores `data` as file `f` (a file object of the writer metadata) of VM
 * `vm`, under the name the CLI gives it (req_file_name in src/requestor/host.c:
 * "<vm>/<file name>"), and records that in the file's "stored". */
static void store_file(vmsh_backup *b, const char *vm, json_object *f, const char *data)
{
    json_object *name = NULL;
    if (!json_object_object_get_ex(f, "name", &name))
        die("a file without a name in fuzz_cli.c", NULL);
    char repo_name[512];
    snprintf(repo_name, sizeof(repo_name), "%s/%s", vm, json_object_get_string(name));
    vmsh_error *err = NULL;
    if (vmsh_backup_add_buffer(b, repo_name, data, strlen(data), &err) < 0)
        die(repo_name, err);
    json_object *st = json_object_new_object();
    json_object_object_add(st, "file", json_object_new_string(repo_name));
    json_object_object_add(st, "size", json_object_new_int64((int64_t)strlen(data)));
    json_object_object_add(st, "bytes_read", json_object_new_int64((int64_t)strlen(data)));
    json_object_object_add(f, "stored", st);
}

static void add_file(vmsh_backup *b, json_object *comp, const char *vm, const char *file_json,
                     const char *data)
{
    json_object *files = NULL, *f = jparse(file_json);
    if (!json_object_object_get_ex(comp, "files", &files))
        json_object_object_add(comp, "files", files = json_object_new_array());
    store_file(b, vm, f, data);
    json_object_array_add(files, f);
}

/* VM "web" of the golden backup document: one qcow2 disk, UEFI variables,
 * an interface on libvirt's network "default" (the test driver has it) and
 * one on a host bridge that does not exist here. */
static const char web_xml[] =
    "<domain type='kvm'>\n  <name>web</name>\n"
    "  <uuid>5a9f4a5e-6f0b-4a53-9d36-2c2b8f3e0a11</uuid>\n"
    "  <memory unit='KiB'>1048576</memory>\n"
    "  <os>\n    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
    "    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\n"
    "    <nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>\n  </os>\n"
    "  <devices>\n"
    "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n"
    "      <source file='/var/lib/libvirt/images/web.qcow2'/>\n"
    "      <target dev='vda' bus='virtio'/>\n    </disk>\n"
    "    <interface type='network'>\n      <mac address='52:54:00:12:34:56'/>\n"
    "      <source network='default'/>\n      <model type='virtio'/>\n    </interface>\n"
    "    <interface type='bridge'>\n      <mac address='52:54:00:12:34:57'/>\n"
    "      <source bridge='vmshfuzz0'/>\n      <model type='virtio'/>\n    </interface>\n"
    "  </devices>\n</domain>\n";

/* VM "test" (the name of the test driver's VM, so that a restore of it
 * replaces an existing VM), captured from a saved state. Its configuration
 * is tests/golden/domxml/all-disk-kinds.xml: every disk kind (two file disks
 * backed up, the others excluded: R6), host devices, a TPM, a network and a
 * bridge interface. */
static const char test_component[] =
    "{\"name\":\"test\",\"method\":\"saved-state\","
    "\"reason\":\"no guest agent answers\",\"state_before\":\"running\","
    "\"state_after\":\"running\",\"files\":[],"
    "\"excluded\":[{\"name\":\"vdc (block /dev/vg0/db01-logs)\","
    "\"reason\":\"block device: back it up from inside the guest (R6)\"}],"
    "\"network\":[{\"mac\":\"52:54:00:aa:bb:01\",\"type\":\"network\",\"source\":\"default\","
    "\"model\":\"virtio\"},{\"mac\":\"52:54:00:aa:bb:02\",\"type\":\"bridge\","
    "\"source\":\"br0\",\"model\":\"virtio\"}],"
    "\"extra\":{\"uuid\":\"8f2f8c38-6f5e-4a5c-9d3e-0b2a8a4c1e11\",\"persistent\":true,"
    "\"domain_type\":\"kvm\",\"disks\":["
    "{\"target\":\"vda\",\"path\":\"/var/lib/libvirt/images/db01.qcow2\",\"format\":\"qcow2\"},"
    "{\"target\":\"vdb\",\"path\":\"/var/lib/libvirt/images/db01-data.raw\",\"format\":\"raw\"}],"
    "\"downtime_ms\":812}}";

/* Adds to repository `path` a backup whose document is a real VM backup
 * document: tests/golden/documents/backup-document-v1.json (VM "web") with
 * the files the VM writer would describe (config/domain.xml, nvram) and a
 * second VM, "test". Every file it names is stored, so that `restore` finds
 * the domain XML its plan reads, and `show`, `verify`, `extract` work on it. */
static void add_vm_backup(const char *path)
{
    vmsh_error *err = NULL;
    vmsh_repo *r = NULL;
    vmsh_backup *b = NULL;
    if (vmsh_repo_open(&r, path, NULL, &err) < 0)
        die(path, err);
    if (vmsh_backup_begin(&b, r, &err) < 0)
        die("backup begin", err);
    json_object *doc = json_object_from_file(VMSH_GOLDEN_DIR "/documents/backup-document-v1.json");
    json_object *writers = NULL, *comps = NULL, *files = NULL, *vms = NULL, *req = NULL,
                *targets = NULL;
    if (!doc || !json_object_object_get_ex(doc, "writers", &writers) ||
        !json_object_object_get_ex(json_object_array_get_idx(writers, 0), "components", &comps) ||
        !json_object_object_get_ex(json_object_array_get_idx(comps, 0), "files", &files) ||
        !json_object_object_get_ex(doc, "vms", &vms) ||
        !json_object_object_get_ex(doc, "request", &req) ||
        !json_object_object_get_ex(req, "targets", &targets))
        die("the golden backup document has changed: adapt fuzz_cli.c", NULL);
    json_object *web = json_object_array_get_idx(comps, 0);
    for (size_t i = 0; i < json_object_array_length(files); i++)
        store_file(b, "web", json_object_array_get_idx(files, i),
                   "the disk of VM web (a few bytes stand for it)\n");
    add_file(b, web, "web", "{\"name\":\"config/domain.xml\",\"kind\":\"config\"}", web_xml);
    add_file(b, web, "web",
             "{\"name\":\"nvram\",\"kind\":\"nvram\","
             "\"path\":\"/var/lib/libvirt/qemu/nvram/web_VARS.fd\",\"source\":{\"type\":\"file\","
             "\"path\":\"/var/lib/libvirt/qemu/nvram/web_VARS.fd\",\"format\":\"raw\"}}",
             "UEFI variables of web\n");

    json_object *test = jparse(test_component);
    char *xml = read_text(VMSH_GOLDEN_DIR "/domxml/all-disk-kinds.xml");
    /* the component's name and its XML's agree (issue 20: a restore refuses
     * a definition naming another VM) */
    char *nm = strstr(xml, "<name>db01</name>");
    if (!nm)
        die("the golden domain XML has changed: adapt fuzz_cli.c", NULL);
    memcpy(nm, "<name>test</name>", 17);
    add_file(b, test, "test", "{\"name\":\"config/domain.xml\",\"kind\":\"config\"}", xml);
    free(xml);
    add_file(b, test, "test",
             "{\"name\":\"disk/vda\",\"kind\":\"disk\","
             "\"path\":\"/var/lib/libvirt/images/db01.qcow2\",\"source\":{\"type\":\"file\","
             "\"path\":\"/var/lib/libvirt/images/db01.qcow2\",\"format\":\"qcow2\"}}",
             "the first disk of VM test\n");
    add_file(b, test, "test",
             "{\"name\":\"disk/vdb\",\"kind\":\"disk\","
             "\"path\":\"/var/lib/libvirt/images/db01-data.raw\",\"source\":{\"type\":\"file\","
             "\"path\":\"/var/lib/libvirt/images/db01-data.raw\",\"format\":\"raw\"}}",
             "the second disk of VM test\n");
    add_file(b, test, "test",
             "{\"name\":\"nvram\",\"kind\":\"nvram\","
             "\"path\":\"/var/lib/libvirt/qemu/nvram/db01_VARS.fd\",\"source\":{\"type\":\"file\","
             "\"path\":\"/var/lib/libvirt/qemu/nvram/db01_VARS.fd\",\"format\":\"raw\"}}",
             "UEFI variables of test\n");
    add_file(b, test, "test",
             "{\"name\":\"tpm/tpm2/tpm2-00.permall\",\"kind\":\"tpm\",\"path\":"
             "\"/var/lib/libvirt/swtpm/8f2f8c38-6f5e-4a5c-9d3e-0b2a8a4c1e11/tpm2/tpm2-00.permall\","
             "\"source\":{\"type\":\"file\",\"path\":"
             "\"/var/lib/libvirt/swtpm/8f2f8c38-6f5e-4a5c-9d3e-0b2a8a4c1e11/tpm2/tpm2-00.permall\","
             "\"format\":\"raw\"}}",
             "TPM state of test\n");
    add_file(b, test, "test", "{\"name\":\"saved-state\",\"kind\":\"saved-state\"}",
             "the saved memory of VM test\n");
    json_object_array_add(comps, test);
    json_object_array_add(
        vms, jparse("{\"name\":\"test\",\"method\":\"saved-state\",\"reason\":\"no guest agent "
                    "answers\",\"state_before\":\"running\",\"state_after\":\"running\","
                    "\"excluded_disks\":[],\"incremental\":false,\"disks\":[]}"));
    json_object_array_add(targets, json_object_new_string("test"));

    /* The commands must see a document they accept: anything else would
     * silently turn the restore plan back into a parse error. */
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    vmsh_backup_doc *parsed = NULL;
    if (vmsh_backup_doc_parse(text, strlen(text), &parsed, &err) < 0)
        die("the VM backup document", err);
    vmsh_backup_doc_free(parsed);
    if (vmsh_backup_commit(b, text, &err) < 0)
        die("backup commit", err);
    json_object_put(doc);
    vmsh_backup_free(b);
    vmsh_repo_free(r);
}

/* What the master repository holds: its files (path below it, size) and
 * how many entries it has. When a file of the scratch repository is
 * missing or differs in size, or an entry was added, it is copied again. */
#define MAX_REPO_FILES 64
static struct {
    char path[256];
    off_t size;
} repo_files[MAX_REPO_FILES];
static size_t n_repo_files, n_repo_entries, n_seen;

static int note_file(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    n_repo_entries++;
    if (flag != FTW_F)
        return 0;
    if (n_repo_files == MAX_REPO_FILES)
        die("the master repository has too many files", NULL);
    snprintf(repo_files[n_repo_files].path, sizeof(repo_files[0].path), "repo%s",
             path + strlen(master));
    repo_files[n_repo_files++].size = st->st_size;
    return 0;
}

static int count_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path, (void)st, (void)flag, (void)ftw;
    n_seen++;
    return 0;
}

static bool repo_intact(void)
{
    struct stat st;
    for (size_t i = 0; i < n_repo_files; i++)
        if (lstat(repo_files[i].path, &st) < 0 || !S_ISREG(st.st_mode) ||
            st.st_size != repo_files[i].size)
            return false;
    n_seen = 0;
    nftw("repo", count_one, 16, FTW_PHYS);
    return n_seen == n_repo_entries;
}

/* Removes every entry of `dir` but those named in `keep`. */
static void remove_all_but(const char *dir, const char *const *keep, size_t n_keep)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        bool known = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
        for (size_t i = 0; i < n_keep; i++)
            known |= strcmp(e->d_name, keep[i]) == 0;
        if (!known) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
    if (d)
        closedir(d);
}

/* Writes `text` to `path` unless it holds exactly that (`extract -f -o`
 * may have overwritten it). */
static void put_file(const char *path, const char *text)
{
    char buf[512];
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
    }
    if (f && n == strlen(text) && memcmp(buf, text, n) == 0)
        return;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    fuzz_write_file(path, text, strlen(text));
}

/* The scratch directory: repo/ (a copy of the master repository: the golden
 * tests/golden/repo-v1 plus a VM backup, add_vm_backup), state/, writers.d/
 * (one script writer, never run: only the coordinator runs writers, and it is
 * not run) and vmshadow.conf. */
static void setup(void)
{
    static const char *const keep[] = {"repo", "state", "writers.d", "vmshadow.conf"};
    static const char *const keep_writer[] = {"app.conf"};
    static const char writer[] = "name = app\nfreeze = /bin/true\nthaw = /bin/true\n";
    static const char conf[] = "repo = repo\nconnect = test:///default\n";
    if (!work[0]) {
        /* The master copy lives beside `work`, out of the commands' reach,
         * with both lock files the commands create, so that their creation
         * does not count as a change. */
        snprintf(master, sizeof(master), "%s/cli-repo", fuzz_scratch());
        copy_tree(VMSH_GOLDEN_REPO, master);
        add_vm_backup(master);
        char p[4400];
        snprintf(p, sizeof(p), "%s/locks/read", master);
        fuzz_write_file(p, "", 0);
        nftw(master, note_file, 16, FTW_PHYS);
        snprintf(work, sizeof(work), "%s/cli", fuzz_scratch());
        mkdir(work, 0700);
        snprintf(p, sizeof(p), "%s/state", work);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/writers.d", work);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/vmshadow.conf", work);
        setenv("VMSHADOW_CONFIG", p, 1);
        snprintf(p, sizeof(p), "%s/state", work);
        setenv("VMSHADOW_STATE_DIR", p, 1);
        snprintf(p, sizeof(p), "%s/writers.d", work);
        setenv("VMSHADOW_WRITERS_DIR", p, 1);
        unsetenv("VMSHADOW_REPO");
        setenv("LIBVIRT_DEFAULT_URI", "test:///default", 1);
        if (chdir(work) < 0)
            abort();
        /* `restore` asks before replacing a VM when stdin is a terminal:
         * never wait for an answer. */
        if (!freopen("/dev/null", "r", stdin))
            abort();
    }
    /* Remove what the last run created (the cwd is `work`), also in the
     * state and writers directories (`extract -o` and `init -r` can write
     * there), and put the config files back. */
    remove_all_but(".", keep, sizeof(keep) / sizeof(keep[0]));
    remove_all_but("state", NULL, 0);
    remove_all_but("writers.d", keep_writer, 1);
    put_file("writers.d/app.conf", writer);
    put_file("vmshadow.conf", conf);
    /* Put the whole repository back when a command changed it (prune, gc,
     * init inside it). */
    if (!repo_intact()) {
        nftw("repo", rm_one, 16, FTW_DEPTH | FTW_PHYS);
        copy_tree(master, "repo");
        if (!repo_intact())
            die("the scratch repository cannot be put back", NULL);
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
            strstr(w, ".."))
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
