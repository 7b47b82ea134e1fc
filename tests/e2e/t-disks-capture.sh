#!/bin/bash
# Issue 25 (SPEC R6 as rewritten): every virtual disk is captured wherever it
# is stored. One running guest with a qcow2 file disk (vda), a raw host block
# device (vdb, a loop device), a qcow2 image written directly on a block
# device (vdc, a loop device) and a storage-pool volume (vdd, a libvirt 'dir'
# pool), plus a shut-off VM on a block device and a pool volume, backed up
# as a two-VM set by the guest method and then by the saved-state method
# (overlays in scratch-dir, never beside a device node). Each captured
# block/volume disk is extracted and compared byte for byte with its source
# (qemu-img compare / cmp); the second guest-method backup reads the
# qcow2-on-block disk incrementally and the raw ones in full, with the
# reason; after the saved-state backup the guest runs on its devices again.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
mkdir -m 0755 "$LAB_WORK/scratch"
echo "scratch-dir = $LAB_WORK/scratch" >>"$VMSHADOW_CONFIG"

# data that is not zeros at a few places, so that a compare means something
fill() { # fill FILE-OR-DEV FORMAT
    qemu-io -f "$2" -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 5M 512k' -c 'write -P 0x33 40M 64k' "$1" >/dev/null ||
        fail "cannot write test data to $1"
}
truncate -s 48M "$LAB_WORK/raw.img"
lab_loop_attach "$LAB_WORK/raw.img"; LRAW=$LAB_LOOP
fill "$LRAW" raw
truncate -s 64M "$LAB_WORK/qblk.img"
lab_loop_attach "$LAB_WORK/qblk.img"; LQC=$LAB_LOOP
qemu-img create -q -f qcow2 "$LQC" 48M || fail "qemu-img create on $LQC"
fill "$LQC" qcow2
truncate -s 48M "$LAB_WORK/off.img"
lab_loop_attach "$LAB_WORK/off.img"; LOFF=$LAB_LOOP
fill "$LOFF" raw
POOL=$LAB_ID-pool
lab_pool_dir "$POOL" "$LAB_WORK/pool"
# libvirt's vol-create-as makes qcow2 v2 images, which hold no dirty bitmap:
# the qcow2 volume is made by qemu-img in the pool's directory instead
qemu-img create -q -f qcow2 "$LAB_WORK/pool/g.qcow2" 48M || fail "qemu-img create g.qcow2"
lab_virsh pool-refresh "$POOL" >/dev/null || fail "pool-refresh"
lab_virsh vol-create-as "$POOL" off.raw 48M --format raw >/dev/null || fail "vol-create-as off.raw"
fill "$LAB_WORK/pool/g.qcow2" qcow2
fill "$LAB_WORK/pool/off.raw" raw

lab_guest_define g --block "$LRAW" --disk-xml "
    <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='$LQC'/><target dev='vdc' bus='virtio'/></disk>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$POOL' volume='g.qcow2'/><target dev='vdd' bus='virtio'/></disk>"
lab_guest_define off --no-agent --block "$LOFF" --disk-xml "
    <disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$POOL' volume='off.raw'/><target dev='vdc' bus='virtio'/></disk>"
G=$(lab_domname g); OFF=$(lab_domname off)
lab_guest_start g

# ---- vms: every disk captured, with kind and read mode
vsh --json vms "$G" "$OFF"
check "vms exits 0" test "$RC" = 0
dk() { jq -r --arg n "$1" --arg t "$2" ".vms[] | select(.name == \$n) | .disks[] | select(.target == \$t) | $3" <<<"$OUT"; }
check "vdb: block, captured" test "$(dk "$G" vdb '"\(.kind) \(.excluded)"')" = "block false"
check "vdc: block (qcow2 on it), captured, incremental" test "$(dk "$G" vdc '"\(.kind) \(.excluded) \(.read)"')" = "block false incremental"
check "vdb: read in full because it is a raw block device" grep -q "raw block device" <<<"$(dk "$G" vdb .read_reason)"
check "vdd: a pool volume stored as a file, captured" test "$(dk "$G" vdd '"\(.kind) \(.storage) \(.pool) \(.excluded)"')" = "volume file $POOL false"
check "the guest method applies to the guest" test "$(jq -r --arg n "$G" '.vms[] | select(.name == $n) | .method' <<<"$OUT")" = guest
vsh vms "$G"
check "text: vdb captured, full, and why" grep -q "vdb .*block .*$LRAW  \[captured, full: raw block device" <<<"$OUT"

# ---- 1. guest method (two-VM set with the shut-off VM)
vsh init
check "init" test "$RC" = 0
vsh --json backup "$G" "$OFF"
check "backup of the set exits 0" test "$RC" = 0
B1=$(jq -r .backup <<<"$OUT")
check "the guest got the guest method" test "$(jq -r --arg n "$G" '.vms[] | select(.name == $n) | .method' <<<"$OUT")" = guest
check "no disk of the guest excluded" test "$(jq -r --arg n "$G" '[.vms[] | select(.name == $n) | .excluded_disks[] | tostring | select(test("vd"))] | length' <<<"$OUT")" = 0
check "its direct-boot kernel is named as not stored" grep -q "kernel not backed up: direct-boot kernel" <<<"$ERR"
vsh --json show "$B1"
for f in "$G/disk/vda" "$G/disk/vdb" "$G/disk/vdc" "$G/disk/vdd" "$OFF/disk/vda" "$OFF/disk/vdb" "$OFF/disk/vdc"; do
    check "$f is in the backup" jq -e --arg f "$f" '.files[] | select(.name == $f)' <<<"$OUT"
done
check "no scratch file beside a device node" test -z "$(ls -A /dev | grep -F .vmshadow-)"
cmp_disk() { # cmp_disk BACKUP FILE SOURCE FORMAT
    rm -f "$LAB_WORK/x.raw"
    vsh extract "$1" "$2" "$LAB_WORK/x.raw"
    [ "$RC" = 0 ] && qemu-img compare -q -U -f raw -F "$4" "$LAB_WORK/x.raw" "$3"
}
check "guest method: raw block device byte-identical" cmp_disk "$B1" "$G/disk/vdb" "$LRAW" raw
check "guest method: qcow2 on a block device identical" cmp_disk "$B1" "$G/disk/vdc" "$LQC" qcow2
check "guest method: pool volume identical" cmp_disk "$B1" "$G/disk/vdd" "$LAB_WORK/pool/g.qcow2" qcow2
check "shut-off VM: block device identical" cmp_disk "$B1" "$OFF/disk/vdb" "$LOFF" raw
check "shut-off VM: pool volume identical" cmp_disk "$B1" "$OFF/disk/vdc" "$LAB_WORK/pool/off.raw" raw

# ---- 2. the second guest-method backup: incremental where QEMU allows it
vsh --json backup "$G" "$OFF"
check "second backup exits 0" test "$RC" = 0
B2=$(jq -r .backup <<<"$OUT")
rd() { jq -r --arg n "$1" --arg f "$2" '.vms[] | select(.name == $n) | .disks[] | select(.name == $f or .name == ("disk/" + $f)) | "\(.read)|\(.reason)"' <<<"$OUT"; }
check "qcow2 on a block device: read incrementally" grep -q "^incremental|" <<<"$(rd "$G" vdc)"
check "raw block device: read in full, reason says why" grep -q "^full|raw block device" <<<"$(rd "$G" vdb)"
check "incremental backup: qcow2 on block identical" cmp_disk "$B2" "$G/disk/vdc" "$LQC" qcow2

# ---- 3. saved-state method: overlays in scratch-dir, merged back
vsh --json backup --method saved-state "$G" "$OFF"
check "saved-state backup exits 0" test "$RC" = 0
B3=$(jq -r .backup <<<"$OUT")
check "the guest got the saved-state method" test "$(jq -r --arg n "$G" '.vms[] | select(.name == $n) | .method' <<<"$OUT")" = saved-state
check "the guest runs again" test "$(lab_state g)" = running
BL=$(lab_virsh domblklist "$G" | awk '{print $1, $2}')
check "it runs on its block devices again" grep -q "^vdb $LRAW\$" <<<"$BL"
check "  and on its qcow2-on-block device" grep -q "^vdc $LQC\$" <<<"$BL"
check "no overlay left" test -z "$(ls -A "$LAB_WORK/scratch")"
check "saved-state: raw block device identical" cmp_disk "$B3" "$G/disk/vdb" "$LRAW" raw
check "saved-state: qcow2 on a block device identical" cmp_disk "$B3" "$G/disk/vdc" "$LQC" qcow2
check "saved-state: pool volume identical" cmp_disk "$B3" "$G/disk/vdd" "$LAB_WORK/pool/g.qcow2" qcow2
vsh verify
check "verify passes" test "$RC" = 0
e2e_done
