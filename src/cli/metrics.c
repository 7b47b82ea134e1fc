/* metrics.c - what a run of backup, verify, prune or gc leaves for
 * monitoring (issue 24; docs/config.md, "Metrics"): a record of the run in
 * the state directory (runs/COMMAND.json, which `status` reads) and, when
 * the config key `metrics-dir` is set, Prometheus text files for
 * node_exporter's textfile collector: vmshadow_COMMAND.prom (the run) and
 * vmshadow_repository.prom (the repository and its VMs). Every file is
 * written whole and renamed into place, so a reader never sees half of one.
 * Failing to write them is a warning: the command's result stands. */
#include "metrics.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *const vmsh_cli_recorded_commands[] = {"backup", "verify", "prune", "gc", NULL};

#define RUN_RECORD_VERSION 1
#define RUN_RECORD_MAX     (64 * 1024)

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *run_path(vmsh_cli *cli, const char *cmd)
{
    char *p = NULL;
    if (asprintf(&p, "%s/runs/%s.json", cli->state_dir, cmd) < 0)
        return NULL;
    return p;
}

static int64_t get_i64(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

int vmsh_cli_run_load(vmsh_cli *cli, const char *cmd, vmsh_cli_run *out)
{
    *out = (vmsh_cli_run){0};
    _cleanup_free_ char *path = run_path(cli, cmd);
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (!path || vmsh_fs_read_all(path, RUN_RECORD_MAX, &text, &len, NULL) < 0)
        return -ENOENT;
    json_object *o = json_tokener_parse(text), *b;
    if (!o || !json_object_is_type(o, json_type_object) ||
        get_i64(o, "version") != RUN_RECORD_VERSION) {
        json_object_put(o);
        return -ENOENT;
    }
    out->started_ms = get_i64(o, "started_ms");
    out->finished_ms = get_i64(o, "finished_ms");
    out->exit_code = (int)get_i64(o, "exit_code");
    out->last_success_ms = get_i64(o, "last_success_ms");
    out->runs = get_i64(o, "runs");
    out->failures = get_i64(o, "failures");
    if (json_object_object_get_ex(o, "backup", &b) && json_object_is_type(b, json_type_string) &&
        json_object_get_string_len(b) == VMSH_BACKUP_ID_LEN)
        memcpy(out->backup, json_object_get_string(b), VMSH_BACKUP_ID_LEN + 1);
    json_object_put(o);
    return 0;
}

static int run_save(vmsh_cli *cli, const char *cmd, const vmsh_cli_run *run, vmsh_error **err)
{
    _cleanup_free_ char *dir = vmsh_path_join(cli->state_dir, "runs");
    _cleanup_free_ char *path = run_path(cli, cmd);
    if (!dir || !path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    int r = vmsh_fs_mkdir_p(dir, 0700, err);
    if (r < 0)
        return r;
    json_object *o = json_object_new_object();
    if (!o)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object_object_add(o, "version", json_object_new_int(RUN_RECORD_VERSION));
    json_object_object_add(o, "command", json_object_new_string(cmd));
    json_object_object_add(o, "started_ms", json_object_new_int64(run->started_ms));
    json_object_object_add(o, "finished_ms", json_object_new_int64(run->finished_ms));
    json_object_object_add(o, "exit_code", json_object_new_int(run->exit_code));
    json_object_object_add(o, "last_success_ms", json_object_new_int64(run->last_success_ms));
    json_object_object_add(o, "runs", json_object_new_int64(run->runs));
    json_object_object_add(o, "failures", json_object_new_int64(run->failures));
    json_object_object_add(o, "backup",
                           run->backup[0] ? json_object_new_string(run->backup) : NULL);
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
    r = vmsh_fs_write_atomic(path, s, strlen(s), 0600, err);
    json_object_put(o);
    return r;
}

/* ---- The repository, summarised ---- */

static json_object *document_of(const vmsh_backup_info *b)
{
    json_object *d = b->document ? json_tokener_parse(b->document) : NULL;
    if (d && !json_object_is_type(d, json_type_object)) {
        json_object_put(d);
        d = NULL;
    }
    return d;
}

void vmsh_cli_backup_run_bytes(const vmsh_backup_info *b, uint64_t *read, uint64_t *stored)
{
    json_object *d = document_of(b);
    *read = (uint64_t)get_i64(d, "bytes_read");
    *stored = (uint64_t)get_i64(d, "bytes_stored");
    json_object_put(d);
}

void vmsh_cli_backup_vm_bytes(const vmsh_backup_info *b, const char *vm, uint64_t *read,
                              uint64_t *stored, uint64_t *logical)
{
    *read = *stored = *logical = 0;
    size_t n = strlen(vm);
    /* the VM writer's files are named VM/... (req_file_name, src/requestor/host.c) */
    for (size_t i = 0; i < b->n_files; i++)
        if (strncmp(b->files[i].name, vm, n) == 0 && b->files[i].name[n] == '/') {
            *stored += b->files[i].stored_bytes;
            *logical += b->files[i].size;
        }
    json_object *d = document_of(b), *vms, *disks;
    if (d && json_object_object_get_ex(d, "vms", &vms) && json_object_is_type(vms, json_type_array))
        for (size_t i = 0; i < json_object_array_length(vms); i++) {
            json_object *v = json_object_array_get_idx(vms, i), *name;
            if (!json_object_object_get_ex(v, "name", &name) ||
                strcmp(json_object_get_string(name), vm) != 0 ||
                !json_object_object_get_ex(v, "disks", &disks) ||
                !json_object_is_type(disks, json_type_array))
                continue;
            for (size_t k = 0; k < json_object_array_length(disks); k++)
                *read += (uint64_t)get_i64(json_object_array_get_idx(disks, k), "bytes_read");
        }
    json_object_put(d);
}

static vmsh_cli_vm_summary *vm_slot(vmsh_cli_repo_summary *s, const char *name)
{
    for (size_t i = 0; i < s->n_vms; i++)
        if (strcmp(s->vms[i].name, name) == 0)
            return &s->vms[i];
    vmsh_cli_vm_summary *a = realloc(s->vms, (s->n_vms + 1) * sizeof(*a));
    if (!a)
        return NULL;
    s->vms = a;
    a[s->n_vms] = (vmsh_cli_vm_summary){.name = strdup(name)};
    if (!a[s->n_vms].name)
        return NULL;
    return &a[s->n_vms++];
}

/* nftw has no user pointer; one summary at a time is all the CLI needs. */
static uint64_t du_total;
static int du_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    if (type == FTW_F)
        du_total += (uint64_t)st->st_size;
    return 0;
}

int vmsh_cli_repo_summary_load(vmsh_cli *cli, vmsh_cli_repo_summary *out, vmsh_error **err)
{
    *out = (vmsh_cli_repo_summary){0};
    vmsh_repo *r = NULL;
    int rc = vmsh_cli_repo_open(cli, &r, err);
    if (rc < 0)
        return rc;
    vmsh_damage *dmg = NULL;
    rc = vmsh_repo_list_tolerant(r, &out->b, &out->n, &dmg, &out->n_damaged, err);
    vmsh_damage_array_free(dmg, out->n_damaged);
    vmsh_repo_free(r);
    if (rc < 0)
        return rc;
    du_total = 0;
    nftw(cli->repo, du_visit, 16, FTW_PHYS);
    out->size_bytes = du_total;
    for (size_t i = 0; i < out->n; i++) {
        json_object *d = document_of(&out->b[i]), *vms;
        if (d && json_object_object_get_ex(d, "vms", &vms) &&
            json_object_is_type(vms, json_type_array))
            for (size_t k = 0; k < json_object_array_length(vms); k++) {
                json_object *name;
                if (!json_object_object_get_ex(json_object_array_get_idx(vms, k), "name", &name) ||
                    !json_object_is_type(name, json_type_string))
                    continue;
                vmsh_cli_vm_summary *v = vm_slot(out, json_object_get_string(name));
                if (!v) {
                    json_object_put(d);
                    vmsh_cli_repo_summary_clear(out);
                    return vmsh_error_set(err, -ENOMEM, "out of memory");
                }
                v->backups++;
                if (!v->oldest)
                    v->oldest = &out->b[i];
                v->newest = &out->b[i]; /* the list is oldest first */
            }
        json_object_put(d);
    }
    for (size_t i = 0; i < out->n_vms; i++)
        vmsh_cli_backup_vm_bytes(out->vms[i].newest, out->vms[i].name, &out->vms[i].bytes_read,
                                 &out->vms[i].bytes_stored, &out->vms[i].bytes_logical);
    return 0;
}

void vmsh_cli_repo_summary_clear(vmsh_cli_repo_summary *s)
{
    for (size_t i = 0; i < s->n_vms; i++)
        free(s->vms[i].name);
    free(s->vms);
    vmsh_backup_info_array_free(s->b, s->n);
    *s = (vmsh_cli_repo_summary){0};
}

/* ---- Prometheus text format (the exposition format node_exporter reads) ---- */

/* A label value: backslash, double quote and newline escaped. */
static void put_label(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

/* HELP and TYPE lines; the same text in every file, so that node_exporter
 * merges a family that appears in several files. */
static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_cmd(FILE *f, const char *name, const char *cmd, double v)
{
    fprintf(f, "%s{command=\"%s\"} %.15g\n", name, cmd, v);
}

static void sample_vm(FILE *f, const char *name, const char *vm, double v)
{
    fprintf(f, "%s{vm=", name);
    put_label(f, vm);
    fprintf(f, "} %.15g\n", v);
}

static void run_metrics(FILE *f, const char *cmd, const vmsh_cli_run *run,
                        const vmsh_cli_repo_summary *repo)
{
    family(f, "vmshadow_last_run_timestamp_seconds", "gauge",
           "When the command's last run ended (Unix time).");
    sample_cmd(f, "vmshadow_last_run_timestamp_seconds", cmd, run->finished_ms / 1000.0);
    family(f, "vmshadow_last_run_duration_seconds", "gauge",
           "How long the command's last run took.");
    sample_cmd(f, "vmshadow_last_run_duration_seconds", cmd,
               (run->finished_ms - run->started_ms) / 1000.0);
    family(f, "vmshadow_last_run_exit_code", "gauge",
           "Exit code of the command's last run (0 done, 1 failed, 2 usage, 3 damaged, 4 busy).");
    sample_cmd(f, "vmshadow_last_run_exit_code", cmd, run->exit_code);
    family(f, "vmshadow_last_run_success", "gauge", "1 when the command's last run succeeded.");
    sample_cmd(f, "vmshadow_last_run_success", cmd, run->exit_code == 0);
    family(f, "vmshadow_last_success_timestamp_seconds", "gauge",
           "When the command last succeeded (Unix time; 0 never).");
    sample_cmd(f, "vmshadow_last_success_timestamp_seconds", cmd, run->last_success_ms / 1000.0);
    family(f, "vmshadow_runs_total", "counter", "Runs of the command recorded in the state dir.");
    sample_cmd(f, "vmshadow_runs_total", cmd, (double)run->runs);
    family(f, "vmshadow_errors_total", "counter", "Runs of the command that failed.");
    sample_cmd(f, "vmshadow_errors_total", cmd, (double)run->failures);

    if (strcmp(cmd, "backup") != 0 || !repo || !run->backup[0])
        return;
    /* the last stored backup, as long as the repository still holds it */
    const vmsh_backup_info *b = NULL;
    for (size_t i = 0; i < repo->n; i++)
        if (strcmp(repo->b[i].id, run->backup) == 0)
            b = &repo->b[i];
    if (!b)
        return;
    uint64_t rd, st;
    vmsh_cli_backup_run_bytes(b, &rd, &st);
    family(f, "vmshadow_backup_info", "gauge", "The last backup stored: its ID.");
    fprintf(f, "vmshadow_backup_info{backup=\"%s\"} 1\n", b->id);
    family(f, "vmshadow_backup_timestamp_seconds", "gauge", "The last backup's time (Unix time).");
    fprintf(f, "vmshadow_backup_timestamp_seconds %.15g\n", b->time_us / 1e6);
    family(f, "vmshadow_backup_bytes_read", "gauge", "Bytes the last backup read from the VMs.");
    fprintf(f, "vmshadow_backup_bytes_read %llu\n", (unsigned long long)rd);
    family(f, "vmshadow_backup_bytes_stored", "gauge",
           "Bytes the last backup added to the repository (after deduplication, compressed).");
    fprintf(f, "vmshadow_backup_bytes_stored %llu\n", (unsigned long long)st);
    uint64_t logical = 0;
    for (size_t i = 0; i < b->n_files; i++)
        logical += b->files[i].size;
    family(f, "vmshadow_backup_bytes_logical", "gauge",
           "Logical size of the last backup's files (what a restore writes).");
    fprintf(f, "vmshadow_backup_bytes_logical %llu\n", (unsigned long long)logical);

    static const struct {
        const char *name, *help;
    } per_vm[] = {
        {"vmshadow_backup_vm_bytes_read", "Bytes the last backup read from the VM's disks."},
        {"vmshadow_backup_vm_bytes_stored", "Bytes the last backup added for the VM."},
        {"vmshadow_backup_vm_bytes_logical", "Logical size of the VM's files in the last backup."},
    };
    json_object *d = document_of(b), *vms = NULL;
    size_t nv =
        d && json_object_object_get_ex(d, "vms", &vms) && json_object_is_type(vms, json_type_array)
            ? json_object_array_length(vms)
            : 0;
    for (size_t m = 0; m < VMSH_ARRAY_SIZE(per_vm); m++) {
        family(f, per_vm[m].name, "gauge", per_vm[m].help);
        for (size_t i = 0; i < nv; i++) {
            json_object *name;
            if (!json_object_object_get_ex(json_object_array_get_idx(vms, i), "name", &name))
                continue;
            uint64_t v[3];
            vmsh_cli_backup_vm_bytes(b, json_object_get_string(name), &v[0], &v[1], &v[2]);
            sample_vm(f, per_vm[m].name, json_object_get_string(name), (double)v[m]);
        }
    }
    json_object_put(d);
}

static void repo_metrics(FILE *f, const vmsh_cli_repo_summary *s)
{
    family(f, "vmshadow_repository_size_bytes", "gauge", "Bytes of the repository's files.");
    fprintf(f, "vmshadow_repository_size_bytes %llu\n", (unsigned long long)s->size_bytes);
    family(f, "vmshadow_repository_backups", "gauge", "Backups in the repository.");
    fprintf(f, "vmshadow_repository_backups %zu\n", s->n);
    family(f, "vmshadow_repository_damaged_backups", "gauge",
           "Backups whose manifest cannot be read.");
    fprintf(f, "vmshadow_repository_damaged_backups %zu\n", s->n_damaged);
    family(f, "vmshadow_vm_backups", "gauge", "Backups holding the VM.");
    for (size_t i = 0; i < s->n_vms; i++)
        sample_vm(f, "vmshadow_vm_backups", s->vms[i].name, (double)s->vms[i].backups);
    family(f, "vmshadow_vm_oldest_backup_timestamp_seconds", "gauge",
           "Time of the VM's oldest backup (Unix time).");
    for (size_t i = 0; i < s->n_vms; i++)
        sample_vm(f, "vmshadow_vm_oldest_backup_timestamp_seconds", s->vms[i].name,
                  s->vms[i].oldest->time_us / 1e6);
    family(f, "vmshadow_vm_newest_backup_timestamp_seconds", "gauge",
           "Time of the VM's newest backup (Unix time).");
    for (size_t i = 0; i < s->n_vms; i++)
        sample_vm(f, "vmshadow_vm_newest_backup_timestamp_seconds", s->vms[i].name,
                  s->vms[i].newest->time_us / 1e6);
}

/* Writes a .prom file atomically, readable by node_exporter's user whatever
 * the umask (the units set 0077). */
static int write_prom(const char *dir, const char *name, char *text, size_t len, vmsh_error **err)
{
    _cleanup_free_ char *path = vmsh_path_join(dir, name);
    if (!path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    mode_t old = umask(022);
    int r = vmsh_fs_write_atomic(path, text, len, 0644, err);
    umask(old);
    return r;
}

static bool is_recorded(const char *cmd)
{
    for (size_t i = 0; vmsh_cli_recorded_commands[i]; i++)
        if (strcmp(cmd, vmsh_cli_recorded_commands[i]) == 0)
            return true;
    return false;
}

void vmsh_cli_metrics_after(vmsh_cli *cli, int argc, char **argv, int rc)
{
    const char *cmd = argv[0];
    if (!is_recorded(cmd))
        return;
    /* --help ran nothing, and a dry run changed nothing: neither is a run */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0 ||
            strcmp(argv[i], "--dry-run") == 0)
            return;

    vmsh_cli_run prev, run = {0};
    bool had = vmsh_cli_run_load(cli, cmd, &prev) == 0;
    run.finished_ms = wall_ms();
    run.started_ms = run.finished_ms - (vmsh_now_ms() - cli->start_ms);
    run.exit_code = rc;
    run.runs = (had ? prev.runs : 0) + 1;
    run.failures = (had ? prev.failures : 0) + (rc != 0);
    run.last_success_ms = rc == 0 ? run.finished_ms : had ? prev.last_success_ms : 0;
    if (had)
        memcpy(run.backup, prev.backup, sizeof(run.backup));

    vmsh_error *err = NULL;
    vmsh_cli_repo_summary repo;
    bool have_repo = vmsh_cli_repo_summary_load(cli, &repo, &err) == 0;
    if (!have_repo) {
        vmsh_cli_debug(cli, "metrics: no repository summary: %s", err ? err->message : "?");
        vmsh_error_free(err);
        err = NULL;
    }
    if (have_repo && strcmp(cmd, "backup") == 0 && rc == 0) {
        /* The backup this run stored: the newest one made since it started
         * (the repository's write lock kept other backups out meanwhile). */
        for (size_t i = repo.n; i-- > 0;)
            if (repo.b[i].time_us / 1000 >= run.started_ms - 1000) {
                memcpy(run.backup, repo.b[i].id, sizeof(run.backup));
                break;
            }
    }
    if (run_save(cli, cmd, &run, &err) < 0) {
        vmsh_cli_warn(cli, "cannot record this run for `vmshadow status`: %s", err->message);
        vmsh_error_free(err);
        err = NULL;
    }

    const char *dir = vmsh_kvconf_get(cli->config, "metrics-dir");
    if (dir && *dir) {
        char *text = NULL, name[64];
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r = -ENOMEM;
        if (f) {
            run_metrics(f, cmd, &run, have_repo ? &repo : NULL);
            r = fclose(f) == 0 ? 0 : -ENOMEM;
        }
        snprintf(name, sizeof(name), "vmshadow_%s.prom", cmd);
        if (r == 0)
            r = write_prom(dir, name, text, len, &err);
        free(text);
        text = NULL;
        if (r == 0 && have_repo && (f = open_memstream(&text, &len))) {
            repo_metrics(f, &repo);
            r = fclose(f) == 0 ? write_prom(dir, "vmshadow_repository.prom", text, len, &err)
                               : -ENOMEM;
            free(text);
        }
        if (r < 0) {
            vmsh_cli_warn(cli, "cannot write the metrics in %s: %s", dir,
                          err ? err->message : "out of memory");
            vmsh_error_free(err);
        }
    }
    if (have_repo)
        vmsh_cli_repo_summary_clear(&repo);
}
