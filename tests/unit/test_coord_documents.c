/* Golden copies of the coordinator's formats (tests/golden/documents/), read
 * back by the code: writer metadata, backup document, journal, writer
 * states (docs/formats/). A newer version is refused, damage is named. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/coord/coord.h>
#include <vmshadow/coord/document.h>
#include <vmshadow/util/fs.h>
#include <vmshadow/writers/identity.h>

#include "coord/document_priv.h"

static char *golden(const char *name, size_t *len)
{
    const char *dir = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(dir);
    char path[512];
    snprintf(path, sizeof(path), "%s/documents/%s", dir, name);
    char *text = NULL;
    size_t l = 0;
    assert_int_equal(vmsh_fs_read_all(path, 1 << 20, &text, &l, NULL), 0);
    if (len)
        *len = l;
    return text;
}

static void writer_metadata_golden_round_trips(void **state)
{
    size_t len;
    char *text = golden("writer-metadata-v1.json", &len);
    struct json_object *doc = json_tokener_parse(text);
    assert_non_null(doc);
    vmsh_metadata *md = NULL;
    assert_int_equal(vmsh_metadata_from_json(doc, &md, NULL), 0);
    assert_string_equal(vmsh_metadata_writer_id(md), VMSH_VM_WRITER_ID);
    assert_string_equal(vmsh_metadata_writer_name(md), VMSH_VM_WRITER_NAME);
    assert_int_equal(vmsh_metadata_component_count(md), 2);
    vmsh_component *web = vmsh_metadata_find_component(md, "web");
    assert_string_equal(vmsh_component_method(web), "guest");
    assert_string_equal(vmsh_component_state_before(web), "running");
    assert_int_equal(vmsh_component_excluded_count(web), 1);
    assert_string_equal(vmsh_component_excluded_name(web, 0), "sdb");
    assert_int_equal(vmsh_component_network_count(web), 1);
    assert_non_null(vmsh_component_extra(web));
    vmsh_file *vda = vmsh_component_find_file(web, "disk/vda");
    assert_int_equal(vmsh_file_source_type(vda), VMSH_SOURCE_NBD);
    assert_string_equal(vmsh_file_source_socket(vda), "/run/vmshadow/set-3d5e/web.sock");
    assert_string_equal(vmsh_file_source_export(vda), "vda");
    assert_int_equal(vmsh_file_size(vda), 1073741824);
    vmsh_component *db = vmsh_metadata_find_component(md, "db");
    vmsh_file *sv = vmsh_component_find_file(db, "saved-state");
    assert_string_equal(vmsh_file_kind(sv), "saved-state");
    assert_int_equal(vmsh_file_source_type(sv), VMSH_SOURCE_FILE);
    assert_null(vmsh_file_source_format(sv));
    assert_int_equal(vmsh_file_size(sv), -1);
    /* What we write is what the spec's example shows. */
    struct json_object *again = NULL;
    assert_int_equal(vmsh_metadata_to_json(md, false, &again, NULL), 0);
    assert_true(json_object_equal(doc, again));
    json_object_put(again);
    vmsh_metadata_free(md);
    /* A newer version is refused, with a message that says what to do. */
    json_object_object_add(doc, "version", json_object_new_int(2));
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_metadata_from_json(doc, &md, &err), -EPROTONOSUPPORT);
    assert_non_null(strstr(err->message, "upgrade"));
    vmsh_error_free(err);
    err = NULL;
    /* A file of unknown source type is damage, named. */
    json_object_object_add(doc, "version", json_object_new_int(1));
    struct json_object *comps, *files, *src;
    json_object_object_get_ex(doc, "components", &comps);
    json_object_object_get_ex(json_object_array_get_idx(comps, 0), "files", &files);
    json_object_object_get_ex(json_object_array_get_idx(files, 0), "source", &src);
    json_object_object_add(src, "type", json_object_new_string("tape"));
    assert_int_equal(vmsh_metadata_from_json(doc, &md, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "tape"));
    assert_non_null(strstr(err->message, "web"));
    vmsh_error_free(err);
    json_object_put(doc);
    free(text);
}

static void backup_document_golden_parses(void **state)
{
    size_t len;
    char *text = golden("backup-document-v1.json", &len);
    vmsh_backup_doc *d = NULL;
    assert_int_equal(vmsh_backup_doc_parse(text, len, &d, NULL), 0);
    assert_string_equal(vmsh_backup_doc_set_id(d), "3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55");
    assert_string_equal(vmsh_backup_doc_started(d), "2026-11-24T23:40:02Z");
    assert_string_equal(vmsh_backup_doc_host(d), "kvm-host-1");
    assert_string_equal(vmsh_backup_doc_method(d), "auto");
    assert_false(vmsh_backup_doc_full(d));
    assert_int_equal(vmsh_backup_doc_freeze_window_ms(d), 41);
    assert_int_equal(vmsh_backup_doc_writer_count(d), 2);
    vmsh_metadata *vm = vmsh_backup_doc_writer(d, 0);
    vmsh_file *f = vmsh_component_find_file(vmsh_metadata_find_component(vm, "web"), "disk/vda");
    struct json_object *stored = vmsh_file_stored(f);
    assert_non_null(stored);
    struct json_object *sha;
    assert_true(json_object_object_get_ex(stored, "sha256", &sha));
    assert_int_equal(vmsh_metadata_component_count(vmsh_backup_doc_writer(d, 1)), 0);
    /* Building a document from the parsed parts gives the golden back. */
    vmsh_metadata *mds[] = {vmsh_backup_doc_writer(d, 0), vmsh_backup_doc_writer(d, 1)};
    const char *targets[] = {"web"};
    vmsh_backup_doc_info info = {
        .set_id = "3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55",
        .started = "2026-11-24T23:40:02Z",
        .completed = "2026-11-24T23:41:17Z",
        .host = "kvm-host-1",
        .program_version = "vmshadow 0.1.0",
        .method = "auto",
        .targets = targets,
        .n_targets = 1,
        .freeze_window_ms = 41,
        .bytes_read = 3221225472u,
        .bytes_stored = 612368384u,
    };
    char *built = NULL;
    const char *kinds[] = {"vm", "script"};
    assert_int_equal(vmsh_backup_doc_build(&info, mds, kinds, 2, &built, NULL), 0);
    struct json_object *a = json_tokener_parse(built), *b = json_tokener_parse(text);
    assert_true(json_object_equal(a, b));
    json_object_put(a);
    json_object_put(b);
    free(built);
    vmsh_backup_doc_free(d);
    /* Newer version refused; missing member named; trailing junk refused. */
    char *newer = strdup(text);
    memcpy(strstr(newer, "\"version\": 1"), "\"version\": 9", 12);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_backup_doc_parse(newer, len, &d, &err), -EPROTONOSUPPORT);
    vmsh_error_free(err);
    err = NULL;
    free(newer);
    const char *nowriters =
        "{\"version\":1,\"set_id\":\"x\",\"started\":\"a\",\"completed\":\"b\"}";
    assert_int_equal(vmsh_backup_doc_parse(nowriters, strlen(nowriters), &d, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "writers"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_backup_doc_parse("{} x", 4, &d, &err), -EBADMSG);
    vmsh_error_free(err);
    free(text);
}

static void journal_golden_reads_back(void **state)
{
    char dir[] = "/tmp/vmsh-jgold-XXXXXX";
    assert_non_null(mkdtemp(dir));
    size_t len;
    char *text = golden("journal-v1.journal", &len);
    char jdir[128], path[256];
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    assert_int_equal(vmsh_fs_mkdir_p(jdir, 0700, NULL), 0);
    snprintf(path, sizeof(path), "%s/3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55.journal", jdir);
    assert_int_equal(vmsh_fs_write_atomic(path, text, len, 0600, NULL), 0);
    vmsh_journal *j = NULL;
    assert_int_equal(vmsh_journal_open(&j, path, NULL), 0);
    assert_string_equal(vmsh_journal_set_id(j), "3d5e8c1a-7b2f-4c9e-8a41-0f6d2b9e7c55");
    assert_string_equal(vmsh_journal_operation(j), "backup");
    assert_int_equal(vmsh_journal_count(j), 4);
    assert_int_equal(vmsh_journal_open_count(j), 3);
    const vmsh_journal_entry *e = vmsh_journal_entry_at(j, 1);
    assert_string_equal(e->action, "save");
    assert_string_equal(e->owner, VMSH_VM_WRITER_ID);
    assert_int_equal(e->state, VMSH_JOURNAL_DONE);
    struct json_object *vm;
    assert_true(json_object_object_get_ex(e->data, "vm", &vm));
    assert_string_equal(json_object_get_string(vm), "db");
    assert_int_equal(vmsh_journal_entry_at(j, 2)->state, VMSH_JOURNAL_UNDONE);
    assert_int_equal(vmsh_journal_entry_at(j, 3)->state, VMSH_JOURNAL_BEGUN);
    vmsh_journal_free(j);
    /* Version 2 is refused; a damaged middle line is named with its number. */
    char *newer = strdup(text);
    memcpy(strstr(newer, "\"version\":1"), "\"version\":2", 11);
    assert_int_equal(vmsh_fs_write_atomic(path, newer, len, 0600, NULL), 0);
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_journal_open(&j, path, &err), -EPROTONOSUPPORT);
    vmsh_error_free(err);
    err = NULL;
    char *bad = strdup(text);
    char *l3 = strstr(bad, "{\"type\":\"mark\",\"seq\":1");
    l3[1] = 'X';
    assert_int_equal(vmsh_fs_write_atomic(path, bad, len, 0600, NULL), 0);
    assert_int_equal(vmsh_journal_open(&j, path, &err), -EBADMSG);
    assert_non_null(strstr(err->message, ":3"));
    vmsh_error_free(err);
    free(bad);
    free(newer);
    free(text);
    unlink(path);
    rmdir(jdir);
    rmdir(dir);
}

static void writer_state_golden_reads_back(void **state)
{
    size_t len;
    char *text = golden("writer-state-v1.json", &len);
    struct json_object *doc = json_tokener_parse(text);
    vmsh_writer_states *s = NULL;
    assert_int_equal(vmsh_writer_states_from_json(doc, &s, NULL), 0);
    assert_int_equal(vmsh_writer_states_count(s), 3);
    const vmsh_writer_record *vm = vmsh_writer_states_find(s, VMSH_VM_WRITER_ID);
    assert_string_equal(vm->name, VMSH_VM_WRITER_NAME);
    assert_int_equal(vm->state, VMSH_WSTATE_STABLE);
    assert_int_equal(vm->n_events, 6);
    const vmsh_writer_record *pg = vmsh_writer_states_at(s, 1);
    assert_int_equal(pg->state, VMSH_WSTATE_FAILED_AT_FREEZE);
    assert_true(pg->has_error);
    assert_int_equal(pg->error_code, -EIO);
    assert_string_equal(pg->error_event, "freeze");
    assert_string_equal(pg->events[3].result, "failed");
    assert_null(vmsh_writer_states_at(s, 2)->set_id);
    struct json_object *again = NULL;
    assert_int_equal(vmsh_writer_states_to_json(s, &again, NULL), 0);
    assert_true(json_object_equal(doc, again));
    json_object_put(again);
    vmsh_writer_states_free(s);
    json_object_object_add(doc, "version", json_object_new_int(2));
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_writer_states_from_json(doc, &s, &err), -EPROTONOSUPPORT);
    vmsh_error_free(err);
    json_object_put(doc);
    free(text);
}

/* Every golden, cut at every length and with bytes changed all along: each
 * parser answers 0 or an error with a message, never crashes (run under
 * ASan/UBSan in CI). */
static void check_parse(const char *name, const char *text, size_t len)
{
    vmsh_error *err = NULL;
    int r = 0;
    if (strstr(name, "backup-document")) {
        vmsh_backup_doc *d = NULL;
        r = vmsh_backup_doc_parse(text, len, &d, &err);
        vmsh_backup_doc_free(r == 0 ? d : NULL);
    } else if (strstr(name, "journal")) {
        char path[] = "/tmp/vmsh-jmut-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, len), (ssize_t)len);
        close(fd);
        vmsh_journal *j = NULL;
        r = vmsh_journal_open(&j, path, &err);
        vmsh_journal_free(r == 0 ? j : NULL);
        unlink(path);
    } else {
        struct json_tokener *tok = json_tokener_new();
        struct json_object *doc = json_tokener_parse_ex(tok, text, (int)len);
        json_tokener_free(tok);
        if (!doc)
            return;
        if (strstr(name, "writer-metadata")) {
            vmsh_metadata *md = NULL;
            r = vmsh_metadata_from_json(doc, &md, &err);
            vmsh_metadata_free(r == 0 ? md : NULL);
        } else {
            vmsh_writer_states *s = NULL;
            r = vmsh_writer_states_from_json(doc, &s, &err);
            vmsh_writer_states_free(r == 0 ? s : NULL);
        }
        json_object_put(doc);
    }
    if (r < 0) {
        assert_non_null(err);
        assert_true(strlen(err->message) > 0);
    } else {
        assert_null(err);
    }
    vmsh_error_free(err);
}

static void damaged_goldens_never_crash(void **state)
{
    static const char *const names[] = {"writer-metadata-v1.json", "backup-document-v1.json",
                                        "journal-v1.journal", "writer-state-v1.json"};
    static const char subst[] = {'"', '{', '}', '[', ']', ',', ':', '0', '-', 'x', '\\', '\n'};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t len;
        char *text = golden(names[i], &len);
        char *buf = malloc(len + 1);
        size_t step = strstr(names[i], "journal") ? 7 : 3; /* journal cases touch a file */
        for (size_t cut = 0; cut < len; cut += step)
            check_parse(names[i], text, cut);
        for (size_t pos = 0; pos < len; pos += step) {
            memcpy(buf, text, len + 1);
            buf[pos] = subst[pos % sizeof(subst)];
            check_parse(names[i], buf, len);
        }
        free(buf);
        free(text);
    }
}

static void state_and_event_names(void **state)
{
    for (int i = 0; i < VMSH_WSTATE_COUNT; i++)
        assert_int_equal(vmsh_writer_state_from_name(vmsh_writer_state_name(i)), i);
    for (int i = 0; i < VMSH_EVENT_COUNT; i++)
        assert_int_equal(vmsh_event_from_name(vmsh_event_name(i)), i);
    assert_string_equal(vmsh_event_name(VMSH_EVENT_PREPARE_SNAPSHOT), "prepare-snapshot");
    assert_string_equal(vmsh_writer_state_name(VMSH_WSTATE_WAITING_FOR_FREEZE),
                        "waiting-for-freeze");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(writer_metadata_golden_round_trips),
        cmocka_unit_test(backup_document_golden_parses),
        cmocka_unit_test(journal_golden_reads_back),
        cmocka_unit_test(writer_state_golden_reads_back),
        cmocka_unit_test(damaged_goldens_never_crash),
        cmocka_unit_test(state_and_event_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
