#!/bin/bash
# Issue 25: network disks QEMU opens itself are captured by the guest
# method's backup job (the same pull path as image files): an NBD disk
# served by qemu-nbd on a unix socket and an RBD image of the lab's Ceph
# (QEMU's rbd driver, qemu-block-extra, cephx through a libvirt secret).
# Each is extracted and compared byte for byte with its source; the raw
# network disks are read in full with the reason, also on a second backup.
# The saved-state method (overlays in scratch-dir backed by the network
# sources, the saved instant read through a private qemu-nbd), SIGKILL in
# it then recover (overlays merged into the RBD image, the servers gone),
# and a shut-off VM's network disks (the private qemu-nbd; the key from the
# host's Ceph configuration, $CEPH_CONF) are captured too.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
T_START=$SECONDS
e2e_env
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || fail "QEMU's rbd driver is missing: install qemu-block-extra (scripts/debian-packages.txt)"
ceph_lab_need || fail "no Ceph lab"
SECRET=
RBD_IMG=vmsh-disks-$$
cleanup_net() {
    [ -n "$SECRET" ] && virsh -q -c "$LAB_URI" secret-undefine "$SECRET" >/dev/null 2>&1
    rbd -c "$CEPH_CONF" -p "$VMSH_CEPH_POOL" rm "$RBD_IMG" >/dev/null 2>&1
    ceph_lab_release 2>/dev/null
    return 0
}
trap 'cleanup_net; lab_cleanup' EXIT
mkdir -m 0755 "$LAB_WORK/scratch"
echo "scratch-dir = $LAB_WORK/scratch" >>"$VMSHADOW_CONFIG"

# NBD: a raw image with data, served on a unix socket
truncate -s 32M "$LAB_WORK/nbd.raw"
qemu-io -f raw -c 'write -P 0x6b 0 1M' -c 'write -P 0x17 20M 256k' "$LAB_WORK/nbd.raw" >/dev/null || fail "qemu-io nbd.raw"
lab_nbd_serve "$LAB_WORK/nbd.raw" raw "$LAB_WORK/nbd.sock"
# RBD: an image with data, reached with client.admin's key in a libvirt secret
rbd -c "$CEPH_CONF" -p "$VMSH_CEPH_POOL" create "$RBD_IMG" --size 32M 8>&- 9>&- || fail "rbd create"
qemu-io -f raw -c 'write -P 0x72 0 1M' -c 'write -P 0x44 24M 128k' \
    "rbd:$VMSH_CEPH_POOL/$RBD_IMG:conf=$CEPH_CONF" >/dev/null || fail "qemu-io on the RBD image"
SECRET=$(uuidgen)
cat >"$LAB_WORK/secret.xml" <<EOF
<secret ephemeral='no' private='yes'><uuid>$SECRET</uuid><usage type='ceph'><name>vmshadow-lab-$$</name></usage></secret>
EOF
lab_virsh secret-define "$LAB_WORK/secret.xml" >/dev/null || fail "secret-define"
KEY=$(ceph -c "$CEPH_CONF" auth get-key client.admin 2>/dev/null) || fail "no client.admin key"
lab_virsh secret-set-value "$SECRET" --base64 "$KEY" >/dev/null 2>&1 ||
    printf '%s' "$KEY" | lab_virsh secret-set-value "$SECRET" --file /dev/stdin --plain >/dev/null || fail "secret-set-value"
MON=$(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
set -- $MON
lab_guest_define n --disk-xml "
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name=''><host transport='unix' socket='$LAB_WORK/nbd.sock'/></source><target dev='vdb' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='$SECRET'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$RBD_IMG'><host name='$1' port='$2'/></source><target dev='vdc' bus='virtio'/></disk>"
N=$(lab_domname n)
lab_guest_start n

vsh --json vms "$N"
dk() { jq -r --arg t "$1" ".vms[0].disks[] | select(.target == \$t) | $2" <<<"$OUT"; }
check "vdb: NBD network disk, captured" test "$(dk vdb '"\(.kind) \(.protocol) \(.excluded)"')" = "network nbd false"
check "vdc: RBD network disk, captured" test "$(dk vdc '"\(.kind) \(.protocol) \(.excluded)"')" = "network rbd false"
check "vdc: read in full because it is a raw network disk" grep -q "raw network disk" <<<"$(dk vdc .read_reason)"

vsh init
check "init" test "$RC" = 0
vsh --json backup --method guest "$N"
check "guest-method backup of the VM with NBD and RBD disks exits 0" test "$RC" = 0
B1=$(jq -r .backup <<<"$OUT")
rd() { jq -r --arg f "$1" '.vms[0].disks[] | select(.name == $f) | "\(.read)|\(.reason)"' <<<"$OUT"; }
check "the RBD disk is read in full, with the reason" grep -q "^full|raw network disk" <<<"$(rd vdc)"
cmp_disk() { # cmp_disk BACKUP FILE SOURCE
    rm -f "$LAB_WORK/x.raw"
    vsh extract "$1" "$2" "$LAB_WORK/x.raw"
    [ "$RC" = 0 ] && qemu-img compare -q -U -f raw -F raw "$LAB_WORK/x.raw" "$3"
}
check "NBD disk byte-identical" cmp_disk "$B1" "$N/disk/vdb" "$LAB_WORK/nbd.raw"
check "RBD disk byte-identical" cmp_disk "$B1" "$N/disk/vdc" "rbd:$VMSH_CEPH_POOL/$RBD_IMG:conf=$CEPH_CONF"
check "no scratch file left" test -z "$(ls -A "$LAB_WORK/scratch")"
vsh --json backup --method guest "$N"
check "second backup exits 0" test "$RC" = 0
check "  the RBD disk again in full, with the reason" grep -q "^full|raw network disk" <<<"$(rd vdc)"

# Issue 25: the saved-state method overlays each network disk in
# scratch-dir (a qcow2 whose backing is the network source) and reads the
# saved instant through a private read-only qemu-nbd; BackupComplete merges
# the overlays back by block commit and stops the servers.
ours() { pgrep -f -- "[q]emu-nbd.*/net-$N-" >/dev/null; }
no_ours() { ! ours; }
on_network() { # the guest's definition names both network sources, no overlay
    local x; x=$(lab_virsh dumpxml "$N")
    [ "$(grep -c "<disk type='network'" <<<"$x")" = 2 ] && ! grep -q '\.overlay' <<<"$x"
}
vsh --json backup --method saved-state "$N"
check "saved-state backup of the VM with NBD and RBD disks exits 0" test "$RC" = 0
B2=$(jq -r .backup <<<"$OUT")
check "  the RBD disk read in full, with the reason" grep -q "^full|raw network disk" <<<"$(rd vdc)"
check "  NBD disk byte-identical" cmp_disk "$B2" "$N/disk/vdb" "$LAB_WORK/nbd.raw"
check "  RBD disk byte-identical" cmp_disk "$B2" "$N/disk/vdc" "rbd:$VMSH_CEPH_POOL/$RBD_IMG:conf=$CEPH_CONF"
check "  the guest runs on its network disks again" on_network
check "  and still runs" test "$(lab_state n)" = running
check "  no overlay or scratch file left" test -z "$(ls -A "$LAB_WORK/scratch")"
check "  no qemu-nbd of ours left" no_ours

# SIGKILL while the guest runs on its overlays (R7), then recover
BG=
SLEEPER=$LAB_WORK/sleeper.pid
trap '[ -n "$BG" ] && kill -9 "$BG" 2>/dev/null; [ -s "$SLEEPER" ] && kill -9 "$(cat "$SLEEPER")" 2>/dev/null; cleanup_net; lab_cleanup' EXIT
cat >"$VMSHADOW_WRITERS_DIR/holder.conf" <<EOW
name = holder
post-snapshot = sh -c 'echo \$\$ > $SLEEPER; exec sleep 300'
timeout = 600
EOW
"$VMSHADOW" backup --method saved-state "$N" >/dev/null 2>"$LAB_WORK/bg.err" &
BG=$!
for _ in $(seq 3000); do [ -s "$SLEEPER" ] && break; sleep 0.02; done
[ -s "$SLEEPER" ] || fail "the backup did not reach post-snapshot: $(cat "$LAB_WORK/bg.err")"
BL=$(lab_virsh domblklist "$N" | awk '{print $1, $2}')
check "the guest runs on an overlay of its RBD disk in scratch-dir" grep -q "^vdc $LAB_WORK/scratch/.*\.overlay\$" <<<"$BL"
check "  and of its NBD disk" grep -q "^vdb $LAB_WORK/scratch/.*\.overlay\$" <<<"$BL"
check "  while a qemu-nbd of ours serves the saved instant" ours
lab_gexec n 'printf VMSHADOW-RBD-MARK | dd of=/dev/vdc bs=512 seek=300 conv=fsync 2>/dev/null; echo written' >/dev/null
rbd_mark() { rbd -c "$CEPH_CONF" -p "$VMSH_CEPH_POOL" export "$RBD_IMG" - 9>&- 2>/dev/null | dd bs=512 skip=300 count=1 2>/dev/null | grep -q VMSHADOW-RBD-MARK; }
no_rbd_mark() { ! rbd_mark; }
check "the RBD image does not have the guest's write yet" no_rbd_mark
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
kill -9 "$(cat "$SLEEPER")" 2>/dev/null
gone() { for _ in $(seq 50); do ours || return 0; sleep 0.1; done; return 1; }
check "our qemu-nbd died with vmshadow" gone
vsh recover
check "recover exits 0" test "$RC" = 0
check "the guest runs" test "$(lab_state n)" = running
check "  on its RBD and NBD disks again" on_network
check "  the guest's write on the overlay was merged into the RBD image" rbd_mark
check "no overlay left in scratch-dir" test -z "$(ls -A "$LAB_WORK/scratch")"
check "no state file, socket or server directory left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)$(ls -d /run/vmshadow-* 2>/dev/null | xargs -r -I{} find {} -name "net-$N-*")"
check "no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
rm -f "$VMSHADOW_WRITERS_DIR/holder.conf"

# a shut-off VM's network disks are read through the private qemu-nbd
lab_virsh destroy "$N" >/dev/null
vsh --json backup "$N"
check "backup of the shut-off VM with NBD and RBD disks exits 0" test "$RC" = 0
B3=$(jq -r .backup <<<"$OUT")
check "  the RBD disk read in full, with the reason" grep -q "^full|raw network disk" <<<"$(rd vdc)"
check "  NBD disk byte-identical" cmp_disk "$B3" "$N/disk/vdb" "$LAB_WORK/nbd.raw"
check "  RBD disk byte-identical" cmp_disk "$B3" "$N/disk/vdc" "rbd:$VMSH_CEPH_POOL/$RBD_IMG:conf=$CEPH_CONF"
check "  with the write the guest made on its overlay" sh -c "dd if='$LAB_WORK/x.raw' bs=512 skip=300 count=1 2>/dev/null | grep -q VMSHADOW-RBD-MARK"
check "  no qemu-nbd of ours left" no_ours
check "  the VM stays shut off" test "$(lab_state n)" = "shut off"
echo "# $((SECONDS - T_START)) s after the lab lock"
e2e_done
