#!/bin/bash
# Issue 23 / SPEC R6, R12: a disk on a volume of a libvirt storage pool of
# type 'rbd' (libvirt's RBD storage backend on the lab's Ceph: its monitor,
# cephx user admin with the key in a libvirt secret), <disk type='volume'>:
#  - libvirt 9.0 defines such a VM but does not start it ("using 'rbd' pools
#    for backing 'volume' disks isn't yet supported"): it is backed up shut
#    off, and the test says so if a libvirt ever starts it;
#  - `vms` shows the disk as kind volume, storage network, protocol rbd,
#    captured (read in full: a raw network disk);
#  - the backup reads the volume through the pool's monitors and user (a
#    private qemu-nbd) and records kind/storage/pool/volume; `extract`
#    equals the RBD image;
#  - `restore --force` in place writes the volume (its image overwritten
#    before) through the pool's source: the image equals `extract`, the
#    definition names the pool and the volume; without --force: refused;
#  - `restore --as` creates a volume NAME-<volume> in the same pool;
#  - R12: the VM defined here under the name using another volume, or the
#    image also being another VM's RBD network disk: refused, nothing
#    changed;
#  - `restore --instant` onto it: refused before any change (libvirt could
#    not start the VM), naming the reason;
#  - the pool stopped: `vms` and `backup` say which VM, disk and pool.
# The pool, volumes, secret and images go at the end whatever happens.
set -u
LAB_GUESTS=1
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
T_START=$SECONDS
e2e_env
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] ||
    fail "QEMU's rbd driver is missing: install qemu-block-extra (scripts/debian-packages.txt)"
[ -e /usr/lib/x86_64-linux-gnu/libvirt/storage-backend/libvirt_storage_backend_rbd.so ] ||
    fail "libvirt's RBD storage backend is missing: install libvirt-daemon-driver-storage-rbd (scripts/debian-packages.txt) and restart libvirtd"
ceph_lab_need || fail "no Ceph lab"
SECRET=
POOL=$LAB_ID-rbd
IMG=vmsh-rp-$$ IMG2=vmsh-rp2-$$ COPY=$LAB_ID-copy
R=rbd:$VMSH_CEPH_POOL
cleanup_rp() {
    lab_cleanup # the VMs, then the pool (LAB_POOLS)
    [ -n "$SECRET" ] && virsh -q -c "$LAB_URI" secret-undefine "$SECRET" >/dev/null 2>&1
    local i
    for i in "$IMG" "$IMG2" "$COPY-$IMG"; do
        rbd -p "$VMSH_CEPH_POOL" rm --no-progress "$i" >/dev/null 2>&1 9>&-
    done
    ceph_lab_release 2>/dev/null
    return 0
}
trap cleanup_rp EXIT

SECRET=$(uuidgen)
echo "<secret ephemeral='no' private='yes'><uuid>$SECRET</uuid><usage type='ceph'><name>vmshadow-lab-rp-$$</name></usage></secret>" >"$LAB_WORK/secret.xml"
lab_virsh secret-define "$LAB_WORK/secret.xml" >/dev/null || fail "secret-define"
KEY=$(ceph auth get-key client.admin 2>/dev/null 9>&-) || fail "no client.admin key"
lab_virsh secret-set-value "$SECRET" --base64 "$KEY" >/dev/null 2>&1 ||
    printf '%s' "$KEY" | lab_virsh secret-set-value "$SECRET" --file /dev/stdin --plain >/dev/null ||
    fail "secret-set-value"
set -- $(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
MON_HOST=$1 MON_PORT=$2
cat >"$LAB_WORK/pool.xml" <<EOF
<pool type='rbd'>
  <name>$POOL</name>
  <source>
    <name>$VMSH_CEPH_POOL</name>
    <host name='$MON_HOST' port='$MON_PORT'/>
    <auth type='ceph' username='admin'><secret uuid='$SECRET'/></auth>
  </source>
</pool>
EOF
lab_virsh pool-define "$LAB_WORK/pool.xml" >/dev/null || fail "define the RBD pool"
LAB_POOLS+=("$POOL")
lab_virsh pool-start "$POOL" >/dev/null || fail "start the RBD pool (is libvirtd running with its RBD backend?)"
for i in "$IMG" "$IMG2"; do
    lab_virsh vol-create-as "$POOL" "$i" 32M --format raw >/dev/null || fail "vol-create-as $i"
done
check "the pool's volume is an RBD image: network, named CEPH-POOL/IMAGE" \
    bash -c "virsh -q -c $LAB_URI vol-list '$POOL' --details | grep -q '^ *$IMG *$VMSH_CEPH_POOL/$IMG *network'"
qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 9M 512k' -c 'write -P 0x33 30M 64k' \
    "$R/$IMG:conf=$CEPH_CONF" >/dev/null || fail "cannot write test data to $IMG"

vdisk() { echo "<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$POOL' volume='$1'/><target dev='vdb' bus='virtio'/></disk>"; }
lab_guest_define g --disk-xml "$(vdisk "$IMG")"
G=$(lab_domname g)
# libvirt 9.0 (virDomainDiskTranslateSourcePool) starts no VM on a volume of
# an rbd pool; should one ever do, the running paths (guest and saved-state
# methods, --instant) want a test of their own
START=$(virsh -q -c "$LAB_URI" start "$G" 2>&1)
check "libvirt does not start a VM on a volume of an rbd pool" \
    grep -q "using 'rbd' pools for backing 'volume' disks isn't yet supported" <<<"$START"
check "  and the VM stays shut off" test "$(lab_state g)" = "shut off"

# ---- vms
vsh --json vms "$G"
check "vms exits 0" test "$RC" = 0
dk() { jq -r ".vms[0].disks[] | select(.target == \"vdb\") | $1" <<<"$OUT"; }
check "vms: vdb is kind volume, storage network, protocol rbd, pool and volume named" \
    test "$(dk '"\(.kind) \(.storage) \(.protocol) \(.pool) \(.volume) \(.excluded)"')" = \
    "volume network rbd $POOL $IMG false"
check "vms: read in full, a raw network disk" \
    test "$(dk '"\(.read)|\(.read_reason)"' | cut -c1-21)" = "full|raw network disk"
vsh vms "$G"
check "vms (text): vdb, its image, pool and volume, captured in full" \
    grep -qF "vdb volume raw $VMSH_CEPH_POOL/$IMG (volume $POOL/$IMG) [captured, full: raw network disk" \
    <<<"$(tr -s ' \n' '  ' <<<"$OUT")"

# ---- backup (shut off: the volume read through the pool's source)
vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
check "backup of the VM on an RBD pool volume exits 0" test "$RC" = 0
B1=$(jq -r .backup <<<"$OUT")
check "  vdb read in full, with the reason" \
    test "$(jq -r '.vms[0].disks[] | select(.name == "vdb") | .read' <<<"$OUT")" = full
vsh --json show "$B1"
rec() { jq -r '[.. | objects | select(.target? == "vdb" and .kind? == "volume")][0] | "\(.storage) \(.pool) \(.volume) \(.protocol) \(.path)"' <<<"$OUT"; }
check "the backup records vdb as a volume on network storage (rbd), pool, volume, CEPH-POOL/IMAGE" \
    test "$(rec)" = "network $POOL $IMG rbd $VMSH_CEPH_POOL/$IMG"
rm -f "$LAB_WORK/ref.raw"
vsh extract "$B1" "$G/disk/vdb" "$LAB_WORK/ref.raw"
check "extract of vdb" test "$RC" = 0
check "  equals the RBD image" qemu-img compare -q -U -f raw -F raw "$LAB_WORK/ref.raw" "$R/$IMG:conf=$CEPH_CONF"
check "no qemu-nbd of ours left" bash -c "! pgrep -f -- '[q]emu-nbd.*net-$G-' >/dev/null"

# ---- normal restore in place
qemu-io -f raw -c 'write -P 0xee 0 2M' -c 'write -P 0x11 29M 2M' "$R/$IMG:conf=$CEPH_CONF" >/dev/null ||
    fail "cannot overwrite $IMG"
img_sum() { rbd -p "$VMSH_CEPH_POOL" export --no-progress "$1" - 2>/dev/null 9>&- | sha256sum; }
sum0=$(img_sum "$IMG")
vsh restore "$B1" "$G"
check "restore onto the existing volume without --force: refused" test "$RC" != 0
check "  saying --force" grep -q -- "--force" <<<"$ERR"
check "  the image is unchanged" test "$(img_sum "$IMG")" = "$sum0"
vsh --json restore --dry-run --force "$B1" "$G"
check "dry-run: vdb written onto the volume through the pool's monitor and user" \
    bash -c "jq -e --arg t \"$R/$IMG:mon_host=$MON_HOST\\\\:$MON_PORT:id=admin\" '[.. | objects | select(.restored_as? == \"volume\")][0] | .action == \"written\" and .target == \"$IMG\" and .pool == \"$POOL\" and .qemu_target == \$t' >/dev/null <<<\"\$0\"" "$OUT"
vsh restore --force "$B1" "$G"
check "restore --force in place exits 0" test "$RC" = 0
check "  the RBD image equals extract of the backup" \
    qemu-img compare -q -U -f raw -F raw "$LAB_WORK/ref.raw" "$R/$IMG:conf=$CEPH_CONF"
X=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
check "  the definition names the pool and the volume" grep -q "<source pool='$POOL' volume='$IMG'/>" <<<"$X"
check "  and no other source for vdb" test "$(grep -c '<disk ' <<<"$X")" = 2

# ---- restore --as: a new volume NAME-<volume> in the same pool
vsh --json restore --as "$COPY" "$B1" "$G"
check "restore --as exits 0" test "$RC" = 0
LAB_DOMAINS+=("$COPY")
check "  created the volume $COPY-$IMG in the pool" \
    bash -c "virsh -q -c $LAB_URI vol-info --pool '$POOL' '$COPY-$IMG' >/dev/null"
check "  holding the backup's bytes" \
    qemu-img compare -q -U -f raw -F raw "$LAB_WORK/ref.raw" "$R/$COPY-$IMG:conf=$CEPH_CONF"
check "  the copy's definition names it" \
    bash -c "virsh -q -c $LAB_URI dumpxml --inactive '$COPY' | grep -q \"<source pool='$POOL' volume='$COPY-$IMG'/>\""
lab_virsh undefine "$COPY" >/dev/null
lab_virsh vol-delete --pool "$POOL" "$COPY-$IMG" >/dev/null

# ---- R12: the VM defined here now uses the other volume; the backup names
# $IMG: refused, nothing changed
virsh -q -c "$LAB_URI" dumpxml --inactive "$G" >"$LAB_WORK/g-own.xml"
sed "s|volume='$IMG'|volume='$IMG2'|" "$LAB_WORK/g-own.xml" >"$LAB_WORK/g-other.xml"
lab_virsh define "$LAB_WORK/g-other.xml" >/dev/null || fail "redefine on $IMG2"
qemu-io -f raw -c 'write -P 0xee 0 2M' "$R/$IMG:conf=$CEPH_CONF" >/dev/null || fail "overwrite $IMG"
sum1=$(img_sum "$IMG") sum2=$(img_sum "$IMG2")
def_before=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
unchanged() {
    test "$(img_sum "$IMG")" = "$sum1" && test "$(img_sum "$IMG2")" = "$sum2" &&
        test "$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")" = "$def_before"
}
vsh restore --force "$B1" "$G"
check "restore onto a volume the VM defined here does not use: refused" test "$RC" != 0
check "  citing R12" grep -q "R12" <<<"$ERR"
check "  both images and the definition unchanged" unchanged
lab_virsh define "$LAB_WORK/g-own.xml" >/dev/null || fail "define back on $IMG"
# the image behind the volume is also another VM's RBD network disk
lab_guest_define o --disk-xml "<disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='$SECRET'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$IMG'><host name='$MON_HOST' port='$MON_PORT'/></source><target dev='vdb' bus='virtio'/></disk>"
def_before=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
vsh restore --force "$B1" "$G"
check "restore onto a volume whose image another VM uses as a network disk: refused" test "$RC" != 0
check "  naming the image and that VM" grep -q "RBD image $VMSH_CEPH_POOL/$IMG is used by VM $(lab_domname o)" <<<"$ERR"
check "  both images and the definition unchanged" unchanged
lab_virsh undefine "$(lab_domname o)" >/dev/null

# ---- --instant: refused before any change
vsh restore --instant --force "$B1" "$G"
check "restore --instant onto an RBD pool volume: refused" test "$RC" != 0
check "  saying libvirt does not start a VM on it, and what to do" \
    bash -c "grep -q \"does not start a VM on a volume of an 'rbd' pool\" <<<\"\$0\" && grep -q 'restore without --instant' <<<\"\$0\"" "$ERR"
check "  images and definition unchanged" unchanged
check "  no instant restore, no server left" \
    bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null && ! pgrep -f '[n]bdkit.*$LAB_WORK' >/dev/null"

# ---- the pool stopped: vms and backup name the VM, disk and pool
lab_virsh pool-destroy "$POOL" >/dev/null || fail "pool-destroy"
vsh --json vms "$G"
check "vms with the pool stopped: vdb unresolved, not read, saying why" \
    test "$(dk '"\(.storage) \(.read)"')" = "unresolved none"
vsh backup "$G"
check "backup with the pool stopped: fails" test "$RC" != 0
check "  naming the VM, the disk, the volume and the pool, and what to do" \
    bash -c "grep -q \"VM $G: disk vdb is volume '$IMG' of storage pool '$POOL'\" <<<\"\$0\" && grep -q 'virsh pool-start $POOL' <<<\"\$0\"" "$ERR"
lab_virsh pool-start "$POOL" >/dev/null || fail "pool-start again"
echo "# $((SECONDS - T_START)) s after the lab lock"
e2e_done
