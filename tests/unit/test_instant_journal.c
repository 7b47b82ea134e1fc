/* Unit tests of the instant-restore journal (issue 23,
 * docs/formats/instant-journal.md): the golden version 1 journal
 * (tests/golden/instant-v1/web.json) reads back through vmsh_instant_list,
 * what `vmshadow jobs` shows, against libvirt's test driver (the VM is
 * "missing" there, no socket listens); a journal of another version, and
 * damaged ones that would make recover act outside its places (a socket
 * outside the run directory, an overlay that is not an absolute clean path,
 * a VM name that is a path), are refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/requestor/instant.h>

#include "test_repo_helpers.h"

static char *golden_file(const char *name)
{
    const char *g = getenv("VMSH_GOLDEN_DIR");
    assert_non_null(g);
    char *p = path2(g, name);
    size_t n = 0;
    char *t = (char *)read_whole_file(p, &n);
    assert_non_null(t);
    free(p);
    return t;
}

static char *golden_text(void)
{
    return golden_file("instant-v1/web.json");
}

static char *golden_v2_text(void)
{
    return golden_file("instant-v2/web.json");
}

/* Writes `text` as the journal of VM web in a new state directory and
 * lists the instant restores: the result of vmsh_instant_list. */
static int list_with(const char *text, char **dir, vmsh_instant_status **s, size_t *n,
                     vmsh_error **err)
{
    *dir = make_tmpdir();
    char *inst = path2(*dir, "instant");
    assert_int_equal(mkdir(inst, 0700), 0);
    char *j = path2(inst, "web.json");
    assert_int_equal(write_text_file(j, text), 0);
    free(j);
    free(inst);
    vmsh_requestor_config cfg = {.uri = "test:///default", .state_dir = *dir};
    return vmsh_instant_list(&cfg, s, n, err);
}

static void golden_reads_back(void **state)
{
    (void)state;
    char *text = golden_text(), *dir = NULL;
    vmsh_instant_status *s = NULL;
    size_t n = 0;
    vmsh_error *err = NULL;
    assert_int_equal(list_with(text, &dir, &s, &n, &err), 0);
    assert_null(err);
    assert_int_equal(n, 1);
    assert_string_equal(s[0].vm, "web");
    assert_string_equal(s[0].backup, "9046625d99d9ef3f");
    assert_string_equal(s[0].step, "pull");
    assert_string_equal(s[0].started, "2026-12-06T06:50:54Z");
    assert_string_equal(s[0].vm_state, "missing");
    assert_int_equal(s[0].n_disks, 2);
    assert_string_equal(s[0].disks[0].disk, "vda");
    assert_string_equal(s[0].disks[0].overlay, "/var/lib/libvirt/images/web.qcow2");
    assert_true(s[0].disks[0].done);
    assert_false(s[0].disks[0].served);
    assert_false(s[0].disks[0].pulling);
    assert_string_equal(s[0].disks[1].disk, "vdb");
    assert_null(s[0].disks[1].overlay);
    assert_false(s[0].disks[1].done);
    vmsh_instant_list_free(s, n);
    rm_rf(dir);
    free(dir);
    free(text);
}

/* Version 2 (block copy onto devices and RBD images): each disk's copy
 * target reads back, a pulled disk has none. */
static void golden_v2_reads_back(void **state)
{
    (void)state;
    char *text = golden_v2_text(), *dir = NULL;
    vmsh_instant_status *s = NULL;
    size_t n = 0;
    vmsh_error *err = NULL;
    assert_int_equal(list_with(text, &dir, &s, &n, &err), 0);
    assert_null(err);
    assert_int_equal(n, 1);
    assert_string_equal(s[0].step, "pull");
    assert_int_equal(s[0].n_disks, 3);
    assert_null(s[0].disks[0].copy_to);
    assert_true(s[0].disks[0].done);
    assert_string_equal(s[0].disks[1].copy_to, "/dev/mapper/vg-web");
    assert_string_equal(s[0].disks[1].overlay,
                        "/run/vmshadow/instant-hYW6KC/.vmshadow-instant-web-vdb.overlay");
    assert_false(s[0].disks[1].done);
    assert_string_equal(s[0].disks[2].copy_to, "rbd/web-vdc");
    assert_true(s[0].disks[2].done);
    vmsh_instant_list_free(s, n);
    rm_rf(dir);
    free(dir);
    free(text);
}

/* the golden journal with `from` replaced by `to` once */
static char *edited_text(char *t, const char *from, const char *to)
{
    char *at = strstr(t, from);
    assert_non_null(at);
    size_t a = (size_t)(at - t), fl = strlen(from), tl = strlen(to), n = strlen(t);
    char *o = malloc(n - fl + tl + 1);
    assert_non_null(o);
    memcpy(o, t, a);
    memcpy(o + a, to, tl);
    memcpy(o + a + tl, at + fl, n - a - fl + 1);
    free(t);
    return o;
}

static char *edited(const char *from, const char *to)
{
    return edited_text(golden_text(), from, to);
}

static void refused_text(char *text, const char *want)
{
    char *dir = NULL;
    vmsh_instant_status *s = NULL;
    size_t n = 0;
    vmsh_error *err = NULL;
    assert_int_equal(list_with(text, &dir, &s, &n, &err), -EBADMSG);
    assert_non_null(err);
    if (!strstr(err->message, want))
        fail_msg("message \"%s\" does not say \"%s\"", err->message, want);
    assert_null(s);
    vmsh_error_free(err);
    rm_rf(dir);
    free(dir);
    free(text);
}

static void refused(const char *from, const char *to, const char *want)
{
    refused_text(edited(from, to), want);
}

static void refused_v2(const char *from, const char *to, const char *want)
{
    refused_text(edited_text(golden_v2_text(), from, to), want);
}

static void other_version_refused(void **state)
{
    (void)state;
    refused("\"version\": 1", "\"version\": 3", "not an instant-restore journal of version 1 or 2");
}

static void damaged_journals_refused(void **state)
{
    (void)state;
    /* recover would start a server on this socket and remove it */
    refused("/run/vmshadow/instant-hYW6KC/0.sock", "/etc/0.sock", "damaged");
    refused("/run/vmshadow/instant-hYW6KC/0.sock", "/run/vmshadow/instant-hYW6KC/../x.sock",
            "damaged");
    /* an abandon removes the overlay */
    refused("/var/lib/libvirt/images/web.qcow2", "relative/web.qcow2", "damaged");
    refused("/var/lib/libvirt/images/web.qcow2", "/var/lib/../../etc/passwd", "damaged");
    /* the VM's name names files */
    refused("\"vm\": \"web\"", "\"vm\": \"../web\"", "damaged");
    refused("\"run_dir\": \"/run/vmshadow/instant-hYW6KC\"", "\"run_dir\": \"run\"", "damaged");
    refused("\"backup\": \"9046625d99d9ef3f\",", "", "damaged");
    /* version 2: the kept definition is read and removed; a copy needs the
     * overlay the VM runs on meanwhile */
    refused_v2("/var/lib/vmshadow/instant/web.xml", "web.xml", "damaged");
    refused_v2("/var/lib/vmshadow/instant/web.xml", "/var/lib/vmshadow/../../etc/x.xml", "damaged");
    refused_v2("\"overlay\": \"/run/vmshadow/instant-hYW6KC/.vmshadow-instant-web-vdb.overlay\"",
               "\"overlay\": null", "damaged");
    refused_v2("\"copy_to\": \"rbd/web-vdc\"", "\"copy_to\": \"\"", "damaged");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_reads_back),
        cmocka_unit_test(golden_v2_reads_back),
        cmocka_unit_test(other_version_refused),
        cmocka_unit_test(damaged_journals_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
