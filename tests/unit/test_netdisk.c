/* Issue 25: network disks opened by a QEMU of vmshadow's own. The
 * definition's source becomes a QEMU json: filename with only what the
 * definition gives (protocols, hosts, names, user), hostile names stay
 * data; a saved VM's overlay gets the network source below it; the private
 * qemu-nbd serves, stops, never signals another program, and leaves
 * nothing behind when QEMU cannot open the source. */
#include <errno.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <vmshadow/hv/domxml.h>
#include <vmshadow/hv/domxml_edit.h>
#include <vmshadow/hv/netdisk.h>
#include <vmshadow/hv/storage.h>
#include <vmshadow/util/mem.h>

#include "test_spawn_helpers.h"

static vmsh_domxml *parse(const char *disks)
{
    char *xml = NULL;
    assert_true(asprintf(&xml, "<domain type='kvm'><name>t</name><devices>%s</devices></domain>",
                         disks) > 0);
    vmsh_domxml *x = NULL;
    vmsh_error *err = NULL;
    int r = vmsh_domxml_parse(&x, xml, strlen(xml), &err);
    if (r < 0)
        fail_msg("%s", err->message);
    free(xml);
    return x;
}

/* The spec of the VM's only disk, parsed back from its json: text. */
static json_object *spec_of(const char *disk_xml, int want, char **msg)
{
    vmsh_domxml *x = parse(disk_xml);
    assert_int_equal(x->n_disks, 1);
    char *s = NULL;
    vmsh_error *err = NULL;
    int r = vmsh_hv_netdisk_spec(&x->disks[0], &s, &err);
    vmsh_domxml_free(x);
    if (r != want)
        fail_msg("spec: %d, not %d (%s)", r, want, err ? err->message : s);
    if (r < 0) {
        if (msg)
            *msg = strdup(err->message);
        vmsh_error_free(err);
        return NULL;
    }
    assert_memory_equal(s, "json:", 5);
    json_object *o = json_tokener_parse(s + 5);
    assert_non_null(o);
    free(s);
    return o;
}

static const char *path_str(json_object *o, const char *p1, const char *p2)
{
    json_object *a = NULL, *b = NULL;
    if (!json_object_object_get_ex(o, p1, &a))
        return NULL;
    if (!p2)
        return json_object_get_string(a);
    return json_object_object_get_ex(a, p2, &b) ? json_object_get_string(b) : NULL;
}

static void rbd_from_definition(void **state)
{
    (void)state;
    /* <auth> beside <source> (the usual form), two monitors, one default port */
    json_object *o = spec_of(
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<auth username='admin'><secret type='ceph' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>"
        "</auth><source protocol='rbd' name='pool/img'><host name='10.0.0.1' port='6789'/>"
        "<host name='mon2'/></source><target dev='vdb' bus='virtio'/></disk>",
        0, NULL);
    assert_string_equal(path_str(o, "driver", NULL), "raw");
    json_object *f = NULL;
    assert_true(json_object_object_get_ex(o, "file", &f));
    assert_string_equal(path_str(f, "driver", NULL), "rbd");
    assert_string_equal(path_str(f, "pool", NULL), "pool");
    assert_string_equal(path_str(f, "image", NULL), "img");
    assert_string_equal(path_str(f, "user", NULL), "admin");
    json_object *srv = NULL;
    assert_true(json_object_object_get_ex(f, "server", &srv));
    assert_int_equal(json_object_array_length(srv), 2);
    assert_string_equal(path_str(json_object_array_get_idx(srv, 0), "host", NULL), "10.0.0.1");
    assert_string_equal(path_str(json_object_array_get_idx(srv, 1), "port", NULL), "6789");
    assert_null(path_str(f, "snapshot", NULL));
    json_object_put(o);

    /* namespace, snapshot, a config file, <auth> inside <source>, qcow2 */
    o = spec_of("<disk type='network'><driver name='qemu' type='qcow2'/>"
                "<source protocol='rbd' name='p/ns/i@s1'><config file='/etc/ceph/other.conf'/>"
                "<auth username='u'/></source><target dev='vdc'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "driver", NULL), "qcow2");
    assert_string_equal(path_str(o, "file", "namespace"), "ns");
    assert_string_equal(path_str(o, "file", "image"), "i");
    assert_string_equal(path_str(o, "file", "snapshot"), "s1");
    assert_string_equal(path_str(o, "file", "conf"), "/etc/ceph/other.conf");
    assert_string_equal(path_str(o, "file", "user"), "u");
    json_object_put(o);

    char *msg = NULL;
    assert_null(spec_of("<disk type='network'><source protocol='rbd' name='lonely'/>"
                        "<target dev='vdd'/></disk>",
                        -EINVAL, &msg));
    assert_non_null(strstr(msg, "pool/image"));
    free(msg);
}

/* Issue 23: a volume of a libvirt storage pool of type 'rbd' (the pool's
 * XML as virStoragePoolGetXMLDesc gives it, the volume resolved to its path
 * "CEPH-POOL/IMAGE"): opened as an RBD network disk with the pool's
 * monitors and user; the domain's XML cannot add any. A volume of a network
 * pool of another type, or unresolved, is refused with the reason. */
static void rbd_pool_volume(void **state)
{
    (void)state;
    static const char pool[] =
        "<pool type='rbd'><name>ceph</name><uuid>3e3b2b4c-2f5c-4b8e-9d8e-1f2a3b4c5d6e</uuid>"
        "<source><host name='127.0.0.1' port='41300'/><host name='mon2'/><name>rbdpool</name>"
        "<auth type='ceph' username='admin'><secret uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>"
        "</auth></source></pool>";
    vmsh_domxml *x = parse("<disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
                           "<source pool='ceph' volume='data'/><target dev='vdb'/></disk>");
    vmsh_domxml_disk *d = &x->disks[0];
    assert_int_equal(d->kind, VMSH_DISK_VOLUME);
    char *s = NULL, *msg = NULL;
    vmsh_error *err = NULL;
    /* not resolved yet: no path, no pool source */
    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, pool, strlen(pool)), -EINVAL);
    assert_int_equal(vmsh_domxml_disk_set_volume(d, "rbdpool/data", VMSH_DISK_NETWORK), 0);
    /* a network volume of a pool type not known: a clear refusal */
    static const char gluster[] = "<pool type='gluster'><name>g</name><source><name>v</name>"
                                  "<host name='g1'/></source></pool>";
    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, gluster, strlen(gluster)), -ENOTSUP);
    assert_null(d->protocol);
    assert_int_equal(vmsh_hv_netdisk_spec(d, &s, &err), -ENOTSUP);
    assert_non_null(strstr(err->message, "the volume data of storage pool ceph"));
    assert_non_null(strstr(err->message, "'rbd' pools"));
    vmsh_error_free(err), err = NULL;
    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, "<pool", 5), -EINVAL);
    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, "<domain/>", 9), -EINVAL);

    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, pool, strlen(pool)), 0);
    assert_string_equal(d->protocol, "rbd");
    assert_string_equal(d->net_name, "rbdpool/data");
    assert_string_equal(d->auth_user, "admin");
    assert_int_equal(d->n_hosts, 2);
    /* twice (a second resolution): replaced, not added to */
    assert_int_equal(vmsh_domxml_disk_set_pool_network(d, pool, strlen(pool)), 0);
    assert_int_equal(d->n_hosts, 2);
    assert_int_equal(vmsh_hv_netdisk_spec(d, &s, &err), 0);
    json_object *o = json_tokener_parse(s + 5), *f = NULL, *srv = NULL;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "file", &f));
    assert_string_equal(path_str(f, "driver", NULL), "rbd");
    assert_string_equal(path_str(f, "pool", NULL), "rbdpool");
    assert_string_equal(path_str(f, "image", NULL), "data");
    assert_string_equal(path_str(f, "user", NULL), "admin");
    assert_true(json_object_object_get_ex(f, "server", &srv));
    assert_int_equal(json_object_array_length(srv), 2);
    assert_string_equal(path_str(json_object_array_get_idx(srv, 0), "port", NULL), "41300");
    assert_string_equal(path_str(json_object_array_get_idx(srv, 1), "port", NULL), "6789");
    json_object_put(o);
    free(s);
    /* what the restore writes through (R12: the pool's source, this host's) */
    assert_int_equal(vmsh_stg_rbd_write_target(d, &s, &err), 0);
    assert_string_equal(s, "rbd:rbdpool/data:mon_host=127.0.0.1\\:41300;mon2:id=admin");
    free(s);
    free(msg);
    vmsh_domxml_free(x);
}

static void nbd_iscsi_gluster_http(void **state)
{
    (void)state;
    json_object *o = spec_of("<disk type='network'><driver type='raw'/><source protocol='nbd' "
                             "name=''><host transport='unix' socket='/run/x/nbd.sock'/></source>"
                             "<target dev='vdb'/></disk>",
                             0, NULL);
    json_object *f = NULL, *s = NULL;
    assert_true(json_object_object_get_ex(o, "file", &f));
    assert_true(json_object_object_get_ex(f, "server", &s));
    assert_string_equal(path_str(s, "type", NULL), "unix");
    assert_string_equal(path_str(s, "path", NULL), "/run/x/nbd.sock");
    assert_null(path_str(f, "export", NULL));
    json_object_put(o);

    o = spec_of("<disk type='network'><source protocol='nbd' name='exp'><host name='h'/></source>"
                "<target dev='vdb'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "file", "export"), "exp");
    assert_true(json_object_object_get_ex(o, "file", &f));
    assert_string_equal(path_str(f, "server", "port"), "10809");
    json_object_put(o);

    o = spec_of("<disk type='network'><source protocol='iscsi' name='iqn.2013-07.com.example:t/2'>"
                "<host name='198.51.100.4'/></source><target dev='sda'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "file", "portal"), "198.51.100.4:3260");
    assert_string_equal(path_str(o, "file", "target"), "iqn.2013-07.com.example:t");
    assert_string_equal(path_str(o, "file", "lun"), "2");
    json_object_put(o);

    char *msg = NULL;
    assert_null(spec_of("<disk type='network'><auth username='chap'/><source protocol='iscsi' "
                        "name='iqn.x/1'><host name='h'/></source><target dev='sda'/></disk>",
                        -ENOTSUP, &msg));
    assert_non_null(strstr(msg, "CHAP"));
    free(msg);

    o = spec_of("<disk type='network'><source protocol='gluster' name='vol/dir/img.raw'>"
                "<host name='g1'/></source><target dev='vdb'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "file", "volume"), "vol");
    assert_string_equal(path_str(o, "file", "path"), "dir/img.raw");
    json_object_put(o);

    o = spec_of("<disk type='network'><source protocol='https' name='/images/a.iso'>"
                "<host name='mirror.example' port='8443'/></source><target dev='vdb'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "file", "url"), "https://mirror.example:8443/images/a.iso");
    json_object_put(o);
    /* a host that would move the URL elsewhere */
    assert_null(spec_of("<disk type='network'><source protocol='http' name='a'>"
                        "<host name='evil@other'/></source><target dev='vdb'/></disk>",
                        -EINVAL, NULL));

    assert_null(spec_of("<disk type='network'><source protocol='sheepdog' name='x'>"
                        "<host name='h'/></source><target dev='vdb'/></disk>",
                        -ENOTSUP, &msg));
    assert_non_null(strstr(msg, "sheepdog"));
    free(msg);
    /* a format that would need a secret of its own */
    assert_null(spec_of("<disk type='network'><driver type='luks'/><source protocol='nbd'>"
                        "<host name='h'/></source><target dev='vdb'/></disk>",
                        -ENOTSUP, NULL));
}

/* Quotes, commas and JSON in names are data: they come back as they were,
 * and nothing else appears in the spec. */
static void hostile_names_stay_data(void **state)
{
    (void)state;
    json_object *o =
        spec_of("<disk type='network'><source protocol='rbd' "
                "name='p&quot;,&quot;conf&quot;:&quot;x/i,conf=:id=y'>"
                "<host name='h&quot;}],&quot;x&quot;:&quot;'/></source><target dev='vdb'/></disk>",
                0, NULL);
    assert_string_equal(path_str(o, "file", "pool"), "p\",\"conf\":\"x");
    assert_string_equal(path_str(o, "file", "image"), "i,conf=:id=y");
    json_object *f = NULL, *s = NULL;
    assert_true(json_object_object_get_ex(o, "file", &f));
    assert_true(json_object_object_get_ex(f, "server", &s));
    assert_string_equal(path_str(json_object_array_get_idx(s, 0), "host", NULL), "h\"}],\"x\":\"");
    assert_null(path_str(o, "file", "conf"));
    json_object_put(o);
}

/* A saved VM's overlay on its network disk: the source, with its <auth>,
 * below the overlay in a <backingStore type='network'>. */
static void overlay_on_network_source(void **state)
{
    (void)state;
    static const char xml[] =
        "<domain type='kvm'><name>t</name><devices><disk type='network' device='disk'>"
        "<driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' "
        "uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></auth><source protocol='rbd' "
        "name='pool/img'><host name='127.0.0.1' port='41300'/></source>"
        "<target dev='vdb' bus='virtio'/></disk></devices></domain>";
    vmsh_disk_repath rp = {.target = "vdb",
                           .path = "/scratch/ov.overlay",
                           .format = "qcow2",
                           .backing = "json:{}",
                           .backing_format = "raw",
                           .backing_network = true};
    vmsh_domxml_edit e = {.disks = &rp, .n_disks = 1};
    char *out = NULL;
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_domxml_edit_apply(xml, sizeof(xml) - 1, &e, &out, &err), 0);
    assert_non_null(strstr(out, "<disk type=\"file\""));
    assert_non_null(strstr(out, "<source file=\"/scratch/ov.overlay\"/>"));
    assert_non_null(strstr(out, "<backingStore type=\"network\">"));
    const char *bs = strstr(out, "<backingStore");
    const char *src = strstr(bs, "<source protocol=\"rbd\" name=\"pool/img\">");
    assert_non_null(src);
    assert_non_null(strstr(src, "<host name=\"127.0.0.1\" port=\"41300\"/>"));
    assert_non_null(strstr(src, "<auth username=\"admin\">"));
    assert_null(strstr(out, "json:"));
    /* one <auth>, the one inside the backing source */
    assert_null(strstr(strstr(out, "<auth") + 1, "<auth "));
    assert_true(strstr(out, "<auth") > bs);
    vmsh_domxml *x = NULL;
    assert_int_equal(vmsh_domxml_parse(&x, out, strlen(out), &err), 0);
    assert_int_equal(x->disks[0].kind, VMSH_DISK_FILE);
    assert_string_equal(x->disks[0].format, "qcow2");
    vmsh_domxml_free(x);
    free(out);
}

static bool have_qemu_nbd(void)
{
    return system("command -v qemu-nbd >/dev/null 2>&1") == 0;
}

static void private_server_starts_and_stops(void **state)
{
    (void)state;
    if (!have_qemu_nbd())
        skip();
    char base[] = "/tmp/vmsh-netdisk-XXXXXX";
    assert_non_null(mkdtemp(base));
    char img[256], dir[256], spec[512];
    snprintf(img, sizeof(img), "%s/a.raw", base);
    snprintf(dir, sizeof(dir), "%s/net-vdb", base);
    FILE *f = fopen(img, "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), 1 << 20), 0);
    fclose(f);
    snprintf(spec, sizeof(spec),
             "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}", img);
    pid_t pid = 0;
    vmsh_error *err = NULL;
    int r = vmsh_hv_netserve_start(dir, "vdb", spec, 30, &pid, &err);
    if (r < 0)
        fail_msg("%s", err->message);
    assert_true(pid > 0);
    /* serving, and its process ID where recover finds it */
    char *sock = vmsh_hv_netserve_socket(dir);
    struct stat st;
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    for (int i = 0; i < 100 && vmsh_hv_netserve_pid(dir) != pid; i++)
        usleep(20000);
    assert_int_equal(vmsh_hv_netserve_pid(dir), pid);
    /* the directory is private */
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* a second server on the same directory is refused */
    pid_t p2 = 0;
    assert_int_equal(vmsh_hv_netserve_start(dir, "vdb", spec, 30, &p2, &err), -EEXIST);
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(vmsh_hv_netserve_stop(pid, dir, &err), 0);
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    assert_int_equal(lstat(dir, &st), -1);
    /* stopping again: nothing left, fine */
    assert_int_equal(vmsh_hv_netserve_stop(pid, dir, &err), 0);
    free(sock);

    /* a source QEMU cannot open: the error has qemu-nbd's words, nothing
     * runs, the directory is gone */
    snprintf(spec, sizeof(spec),
             "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"%s/none\"}}",
             base);
    r = vmsh_hv_netserve_start(dir, "vdb", spec, 30, &pid, &err);
    assert_int_equal(r, -EIO);
    assert_non_null(strstr(err->message, "qemu-nbd"));
    vmsh_error_free(err);
    err = NULL;
    assert_int_equal(lstat(dir, &st), -1);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1); /* no child left, none unreaped */

    /* a process ID that is not our qemu-nbd (reused): never signalled */
    pid_t other = fork();
    if (other == 0) {
        execlp("sleep", "sleep", "30", (char *)NULL);
        _exit(127);
    }
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(vmsh_hv_netserve_stop(other, dir, &err), 0);
    assert_int_equal(kill(other, 0), 0);
    kill(other, SIGKILL);
    waitpid(other, NULL, 0);
    unlink(img);
    assert_int_equal(rmdir(base), 0);
}

/* A qemu-nbd whose command line is long (a long source specification
 * before --socket=: here 16 KiB) is still recognised as ours and stopped;
 * the old reader read 8 KiB of it and left such a server running. */
static void long_command_line_server_stopped(void **state)
{
    (void)state;
    char base[] = "/tmp/vmsh-netdisk-XXXXXX";
    assert_non_null(mkdtemp(base));
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/net-vdb", base);
    assert_int_equal(mkdir(dir, 0700), 0);
    char *sock = vmsh_hv_netserve_socket(dir);
    char *sock_opt = NULL;
    assert_true(asprintf(&sock_opt, "--socket=%s", sock) > 0);
    int release = -1;
    /* argv[0] "qemu-nbd", blocked on the pipe */
    pid_t pid = spawn_blocked("/usr/bin/qemu-nbd", 'j', 16 * 1024, sock_opt, NULL, &release);
    assert_true(pid > 0);
    /* until the exec is done: its command line is the fake server's */
    char path[64], buf[32] = "";
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    for (int i = 0; i < 500 && strcmp(buf, "/usr/bin/qemu-nbd") != 0; i++) {
        FILE *f = fopen(path, "re");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        buf[n] = 0;
        if (f)
            fclose(f);
        usleep(10000);
    }
    assert_string_equal(buf, "/usr/bin/qemu-nbd");
    vmsh_error *err = NULL;
    assert_int_equal(vmsh_hv_netserve_stop(pid, dir, &err), 0);
    /* ended and reaped by the stop */
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    close(release);
    struct stat st;
    assert_int_equal(lstat(dir, &st), -1);
    free(sock_opt);
    free(sock);
    assert_int_equal(rmdir(base), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rbd_from_definition),
        cmocka_unit_test(rbd_pool_volume),
        cmocka_unit_test(nbd_iscsi_gluster_http),
        cmocka_unit_test(hostile_names_stay_data),
        cmocka_unit_test(overlay_on_network_source),
        cmocka_unit_test(private_server_starts_and_stops),
        cmocka_unit_test(long_command_line_server_stopped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
