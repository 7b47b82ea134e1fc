#!/bin/bash
# Issue 25, restore onto storage of its kind: what a failed restore created
# is removed again, and a backup's definition is hostile input (R12).
# VM h (shut off: no guest boots) has a qcow2 file (vda), a raw pool volume
# (vdd, a libvirt dir pool) and an RBD disk (vde, the Ceph lab) whose <auth>
# names libvirt secret S1. After its backup:
#  - R12, another VM uses the storage: a VM x naming h's RBD image, then
#    h's volume: the restore of h in place is refused before anything
#    changes, naming x;
#  - R12, the replaced VM's source: h is redefined with secret S2 (what an
#    administrator does when rotating a secret): the restore in place
#    writes the RBD image and the restored definition names S2, not the
#    backup's S1;
#  - create-storage undone on failure: h's RBD image and volume deleted, the
#    restore in place creates both and then fails (a damaged pack): neither
#    is left, h defined as it was, no journal;
#  - create-storage undone by recover: the same restore SIGKILLed (gdb) just
#    after it created the second of them: both exist then; `recover` removes
#    both and defines h as it was; the restore then works, byte-identical.
# Everything created is removed at exit, also after a failure.
set -u
LAB_GUESTS=1 # no guest runs; the shared lab lock and a slot suffice
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
echo "# ${SECONDS}s: the lab is ours"
e2e_env
T=$LAB_WORK
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || fail "QEMU's rbd driver is missing: install qemu-block-extra"
command -v gdb >/dev/null || fail "gdb is not installed (scripts/install-deps.sh)"
ceph_lab_need || fail "no Ceph lab"
S1= S2=
IMG=vmsh-ru-h-$$
cleanup_ru() {
    for s in "$S1" "$S2"; do
        [ -n "$s" ] && virsh -q -c "$LAB_URI" secret-undefine "$s" >/dev/null 2>&1
    done
    rbd -p "$VMSH_CEPH_POOL" rm --no-progress "$IMG" >/dev/null 2>&1
    ceph_lab_release 2>/dev/null
    lab_cleanup
    return 0
}
trap cleanup_ru EXIT
R="rbd:$VMSH_CEPH_POOL"
fill() { # fill TARGET: random data in three places
    head -c 4M /dev/urandom >"$T/rnd"
    qemu-io -f raw -c "write -s $T/rnd 0 4M" -c 'write -P 0xa5 9M 512k' -c 'write -P 0x33 15M 64k' "$1" >/dev/null ||
        fail "cannot write test data to $1"
}
secret() { # secret: a new libvirt ceph secret holding client.admin's key; prints its UUID
    local u; u=$(uuidgen)
    echo "<secret ephemeral='no' private='yes'><uuid>$u</uuid><usage type='ceph'><name>vmshadow-lab-ru-$$-$u</name></usage></secret>" >"$T/secret.xml"
    lab_virsh secret-define "$T/secret.xml" >/dev/null || fail "secret-define"
    lab_virsh secret-set-value "$u" --base64 "$KEY" >/dev/null 2>&1 ||
        printf '%s' "$KEY" | lab_virsh secret-set-value "$u" --file /dev/stdin --plain >/dev/null || fail "secret-set-value"
    echo "$u"
}

# ---- the storage and the VM
POOL=$LAB_ID-rupool
lab_pool_dir "$POOL" "$T/pool"
lab_virsh vol-create-as "$POOL" h.raw 16M --format raw >/dev/null || fail "vol-create-as h.raw"
fill "$T/pool/h.raw"
rbd -p "$VMSH_CEPH_POOL" create "$IMG" --size 16M 9>&- || fail "rbd create $IMG"
fill "$R/$IMG:conf=$CEPH_CONF"
KEY=$(ceph auth get-key client.admin 2>/dev/null) || fail "no client.admin key"
S1=$(secret); S2=$(secret)
MON=$(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
set -- $MON
MON_HOST=$1 MON_PORT=$2
vol_disk="<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$POOL' volume='h.raw'/><target dev='vdd' bus='virtio'/></disk>"
rbd_disk() { # rbd_disk SECRET TARGET
    echo "<disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='$1'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$IMG'><host name='$MON_HOST' port='$MON_PORT'/></source><target dev='$2' bus='virtio'/></disk>"
}
lab_guest_define h --no-agent --disk-xml "$vol_disk $(rbd_disk "$S1" vde)"
H=$(lab_domname h)

echo "# ${SECONDS}s"
vsh init
check "init" test "$RC" = 0
vsh --json backup "$H"
check "backup of the shut-off h exits 0" test "$RC" = 0
B=$(jq -r .backup <<<"$OUT")
for d in vdd vde; do
    vsh extract "$B" "$H/disk/$d" "$T/ref.$d"
    check "extract $d" test "$RC" = 0
done
same() { qemu-img compare -q -U -f raw -F raw "$1" "$2"; }
check "the backup of vde is the RBD image's data" same "$R/$IMG:conf=$CEPH_CONF" "$T/ref.vde"
cp -a "$VMSHADOW_REPO" "$T/repo.good"
no_journal() { test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"; }

echo "# ${SECONDS}s"
# ---- R12: another VM uses the RBD image, then the volume
sum_img=$(rbd -p "$VMSH_CEPH_POOL" export --no-progress "$IMG" - 2>/dev/null | sha256sum)
sum_vol=$(sha256sum <"$T/pool/h.raw")
xml_before=$(lab_virsh dumpxml "$H")
lab_guest_define x --no-agent --disk-xml "$(rbd_disk "$S1" vdf)"
X=$(lab_domname x)
vsh restore "$B" "$H" --force
check "restore of h while VM x uses its RBD image: refused" test "$RC" != 0
check "... naming the image and x" grep -q "RBD image $VMSH_CEPH_POOL/$IMG is used by VM $X: not written" <<<"$ERR"
lab_virsh undefine "$X" >/dev/null
lab_guest_define x --no-agent --disk-xml "${vol_disk//vdd/vdf}"
vsh restore "$B" "$H" --force
check "restore of h while VM x uses its volume: refused" test "$RC" != 0
check "... naming the volume and x" grep -q "volume h.raw of storage pool $POOL is used by VM $X: not written" <<<"$ERR"
lab_virsh undefine "$X" >/dev/null
check "... h defined as it was" test "$(lab_virsh dumpxml "$H")" = "$xml_before"
check "... its RBD image untouched" test "$(rbd -p "$VMSH_CEPH_POOL" export --no-progress "$IMG" - 2>/dev/null | sha256sum)" = "$sum_img"
check "... its volume untouched" test "$(sha256sum <"$T/pool/h.raw")" = "$sum_vol"
check "... no journal" no_journal

echo "# ${SECONDS}s"
# ---- R12: the restore in place takes h's current monitors and secret
lab_virsh dumpxml --inactive --security-info "$H" | sed "s/$S1/$S2/" >"$T/h2.xml"
lab_virsh define "$T/h2.xml" >/dev/null || fail "cannot redefine h with secret S2"
qemu-io -f raw -c 'write -P 0xee 0 2M' "$R/$IMG:conf=$CEPH_CONF" >/dev/null || fail "cannot overwrite $IMG"
vsh restore "$B" "$H" --force
check "restore in place of h (now with secret S2) exits 0" test "$RC" = 0
check "the RBD image byte-identical with the backup" same "$R/$IMG:conf=$CEPH_CONF" "$T/ref.vde"
XML=$(lab_virsh dumpxml "$H")
check "the restored definition names h's current secret S2" grep -q "uuid='$S2'" <<<"$XML"
check "... and not the backup's S1" sh -c "! grep -q '$S1' <<EOF
$XML
EOF"

echo "# ${SECONDS}s"
# ---- create-storage undone when the restore fails after creating
damage() { # a fresh copy of the good repository, its biggest pack truncated
    rm -rf "$VMSHADOW_REPO"; cp -a "$T/repo.good" "$VMSHADOW_REPO"
    local p; p=$(find "$VMSHADOW_REPO/packs" -type f -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
    truncate -s $(($(stat -c %s "$p") / 2)) "$p"
}
gone() { # the RBD image and the volume are both absent
    ! rbd -p "$VMSH_CEPH_POOL" info "$IMG" >/dev/null 2>&1 && ! lab_virsh vol-info --pool "$POOL" h.raw >/dev/null 2>&1 &&
        test ! -e "$T/pool/h.raw"
}
rbd -p "$VMSH_CEPH_POOL" rm --no-progress "$IMG" >/dev/null 2>&1 || fail "rbd rm $IMG"
lab_virsh vol-delete --pool "$POOL" h.raw >/dev/null || fail "vol-delete h.raw"
xml_before=$(lab_virsh dumpxml "$H")
vsh --json restore "$B" "$H" --force --dry-run
act() { jq -r --arg f "disk/$1" '.vms[0].files[] | select(.file == $f) | .storage.action' <<<"$OUT"; }
check "dry run: the RBD image and the volume would be created" test "$(act vde) $(act vdd)" = "created created"
damage
vsh restore "$B" "$H" --force
check "restore with a damaged pack after creating storage: fails" test "$RC" != 0
check "... saying what is damaged" grep -Eqi "damaged|missing|corrupt|authentic|cannot read|truncated" <<<"$ERR"
check "... the RBD image and the volume it created are gone" gone
check "... h defined as it was" test "$(lab_virsh dumpxml "$H")" = "$xml_before"
check "... no journal" no_journal
rm -rf "$VMSHADOW_REPO"; cp -a "$T/repo.good" "$VMSHADOW_REPO"

echo "# ${SECONDS}s"
# ---- create-storage undone by recover after a SIGKILL
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    gdb -q -batch -nx -ex 'set pagination off' -ex 'set confirm off' \
    -ex 'break vmsh_stg_create' -ex 'ignore 1 1' -ex run -ex finish -ex 'signal SIGKILL' \
    --args "$VMSHADOW" restore "$B" "$H" --force >"$T/gdb.out" 2>&1 </dev/null
grep -Eq "(^|hit )Breakpoint 1, .*vmsh_stg_create" "$T/gdb.out" || { tail -n 30 "$T/gdb.out" >&2; fail "the restore never reached its second vmsh_stg_create"; }
grep -Eq "terminated with signal SIGKILL" "$T/gdb.out" || { tail -n 30 "$T/gdb.out" >&2; fail "the restore was not killed"; }
check "SIGKILLed after the second creation: the RBD image exists" rbd -p "$VMSH_CEPH_POOL" info "$IMG"
check "... and the volume" test -e "$T/pool/h.raw"
vsh recover
check "recover exits 0" test "$RC" = 0
check "... the RBD image and the volume are gone" gone
check "... h defined as it was" test "$(lab_virsh dumpxml "$H")" = "$xml_before"
check "... no journal" no_journal
vsh restore "$B" "$H" --force
check "the same restore then works" test "$RC" = 0
check "... the new RBD image byte-identical" same "$R/$IMG:conf=$CEPH_CONF" "$T/ref.vde"
check "... the new volume byte-identical" same "$T/pool/h.raw" "$T/ref.vdd"
echo "# ${SECONDS}s"
e2e_done
