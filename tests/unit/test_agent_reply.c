/* Parsing qemu-guest-agent replies (hv/agent_reply.h): real replies give the
 * capabilities and filesystems vmshadow bases its method choice on (SPEC
 * R2); hostile ones (issue 8) are refused or bounded, never trusted. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vmshadow/hv/agent_reply.h>

#define S(x) x, strlen(x)

static const char guest_info[] =
    "{\"return\": {\"version\": \"7.2.19\", \"supported_commands\": ["
    "{\"enabled\": true, \"name\": \"guest-get-fsinfo\", \"success-response\": true},"
    "{\"enabled\": true, \"name\": \"guest-fsfreeze-thaw\", \"success-response\": true},"
    "{\"enabled\": true, \"name\": \"guest-fsfreeze-freeze\", \"success-response\": true},"
    "{\"enabled\": true, \"name\": \"guest-ping\", \"success-response\": true}]}}";

static void info_real_reply(void **state)
{
    vmsh_agent_caps caps = {0};
    assert_int_equal(vmsh_agent_parse_info(S(guest_info), &caps, NULL), 0);
    assert_true(caps.can_freeze);
    assert_true(caps.has_fsinfo);
}

static void info_disabled_or_mistyped_is_unsupported(void **state)
{
    /* freeze disabled (guest-agent blocklist), fsinfo "enabled" not a bool */
    const char *r = "{\"return\": {\"supported_commands\": ["
                    "{\"enabled\": false, \"name\": \"guest-fsfreeze-freeze\"},"
                    "{\"enabled\": true, \"name\": \"guest-fsfreeze-thaw\"},"
                    "{\"enabled\": \"yes\", \"name\": \"guest-get-fsinfo\"}, 5, null, []]}}";
    vmsh_agent_caps caps = {true, true};
    assert_int_equal(vmsh_agent_parse_info(S(r), &caps, NULL), 0);
    assert_false(caps.can_freeze);
    assert_false(caps.has_fsinfo);
    /* no command list at all */
    caps = (vmsh_agent_caps){true, true};
    assert_int_equal(
        vmsh_agent_parse_info(S("{\"return\": {\"supported_commands\": 1}}"), &caps, NULL), 0);
    assert_false(caps.can_freeze);
}

static void malformed_replies_are_refused(void **state)
{
    vmsh_agent_caps caps;
    vmsh_error *err = NULL;
    const char *bad[] = {
        "",
        "not json",
        "{\"return\": {}} trailing",
        "{\"error\": {\"class\": \"GenericError\"}}",
        "[1, 2]",
        "{\"return\": {}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(vmsh_agent_parse_info(S(bad[i]), &caps, &err), -EBADMSG);
        assert_non_null(strstr(err->message, "guest agent"));
        vmsh_error_free(err), err = NULL;
    }
    /* whitespace after the object is fine (a newline ends agent replies) */
    assert_int_equal(vmsh_agent_reply_return(S("{\"return\": {}}\r\n"), NULL, NULL), 0);
    /* a reply larger than the bound is refused before parsing */
    size_t big = VMSH_AGENT_REPLY_MAX_BYTES + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    memcpy(huge, "{\"return\": {}}", 14);
    assert_int_equal(vmsh_agent_reply_return(huge, big, NULL, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "bytes"));
    vmsh_error_free(err);
    free(huge);
}

static void fsinfo_real_reply(void **state)
{
    const char *r =
        "{\"return\": [{\"name\": \"vda\", \"total-bytes\": 8320901120, \"mountpoint\": "
        "\"/mnt/data\", \"disk\": [{\"serial\": \"data0\", \"bus-type\": \"virtio\", \"bus\": 0, "
        "\"unit\": 0, \"pci-controller\": {\"bus\": 4, \"slot\": 0, \"domain\": 0, \"function\": "
        "0}, \"dev\": \"/dev/vda\", \"target\": 0}], \"used-bytes\": 24576, \"type\": \"ext4\"},"
        "{\"name\": \"md0\", \"mountpoint\": \"/srv\", \"disk\": [{\"dev\": \"/dev/vdb\"}, "
        "{\"bus-type\": \"scsi\"}, {\"dev\": 7}, {\"dev\": \"/dev/vdc\"}], \"type\": \"xfs\"},"
        "{\"mountpoint\": 7, \"disk\": {\"dev\": \"/dev/vdd\"}}, \"junk\"]}";
    vmsh_agent_fs *fs = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_agent_parse_fsinfo(S(r), &fs, &n, NULL), 0);
    assert_int_equal(n, 4);
    assert_string_equal(fs[0].mountpoint, "/mnt/data");
    assert_string_equal(fs[0].type, "ext4");
    assert_int_equal(fs[0].n_devs, 1);
    assert_string_equal(fs[0].devs[0], "/dev/vda");
    /* disks without a string "dev" are skipped */
    assert_int_equal(fs[1].n_devs, 2);
    assert_string_equal(fs[1].devs[1], "/dev/vdc");
    /* mistyped members are absent, not guessed */
    assert_null(fs[2].mountpoint);
    assert_int_equal(fs[2].n_devs, 0);
    assert_null(fs[3].mountpoint);
    vmsh_agent_fs_array_free(fs, n);

    vmsh_error *err = NULL;
    assert_int_equal(vmsh_agent_parse_fsinfo(S("{\"return\": {}}"), &fs, &n, &err), -EBADMSG);
    assert_non_null(strstr(err->message, "malformed"));
    vmsh_error_free(err);
}

static void fsinfo_counts_are_bounded(void **state)
{
    /* 300 filesystems with 100 devices each: kept to 256 x 64 */
    size_t cap = 4u << 20, len = 0;
    char *r = malloc(cap);
    assert_non_null(r);
    len += (size_t)snprintf(r + len, cap - len, "{\"return\": [");
    for (int i = 0; i < 300; i++) {
        len += (size_t)snprintf(r + len, cap - len, "%s{\"mountpoint\": \"/m%d\", \"disk\": [",
                                i ? "," : "", i);
        for (int j = 0; j < 100; j++)
            len +=
                (size_t)snprintf(r + len, cap - len, "%s{\"dev\": \"/dev/d%d\"}", j ? "," : "", j);
        len += (size_t)snprintf(r + len, cap - len, "]}");
    }
    len += (size_t)snprintf(r + len, cap - len, "]}");
    assert_true(len < cap - 1);
    vmsh_agent_fs *fs = NULL;
    size_t n = 0;
    assert_int_equal(vmsh_agent_parse_fsinfo(r, len, &fs, &n, NULL), 0);
    assert_int_equal(n, VMSH_AGENT_MAX_FS);
    assert_int_equal(fs[255].n_devs, VMSH_AGENT_MAX_DEVS);
    assert_string_equal(fs[255].mountpoint, "/m255");
    vmsh_agent_fs_array_free(fs, n);
    free(r);
}

static void freeze_status(void **state)
{
    assert_int_equal(vmsh_agent_parse_freeze_status(S("{\"return\": \"frozen\"}"), NULL), 1);
    assert_int_equal(vmsh_agent_parse_freeze_status(S("{\"return\": \"thawed\"}"), NULL), 0);
    /* "cannot tell" is not "thawed": a failed thaw must not count as done (R7) */
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_agent_parse_freeze_status(S("{\"return\": \"melting\"}"), &err),
                     -EBADMSG);
    vmsh_error_free(err);
    assert_int_equal(vmsh_agent_parse_freeze_status(S("{\"return\": 0}"), NULL), -EBADMSG);
    assert_int_equal(vmsh_agent_parse_freeze_status(S("{\"return\": \"frozen\""), NULL), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(info_real_reply),
        cmocka_unit_test(info_disabled_or_mistyped_is_unsupported),
        cmocka_unit_test(malformed_replies_are_refused),
        cmocka_unit_test(fsinfo_real_reply),
        cmocka_unit_test(fsinfo_counts_are_bounded),
        cmocka_unit_test(freeze_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
