#!/bin/bash
# Issue 25 / SPEC R7 on block devices: vmshadow is SIGKILLed while a guest
# on a raw host block device and a qcow2 image written on a block device
# runs on the saved-state method's overlays (in scratch-dir: never beside a
# device node). `vmshadow recover` merges the overlays back (what the guest
# wrote meanwhile lands on the devices), the guest runs on its devices
# again, and nothing is stranded.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
BG=
SLEEPER=$LAB_WORK/sleeper.pid
stop_ours() {
    [ -n "$BG" ] && kill -9 "$BG" 2>/dev/null
    [ -s "$SLEEPER" ] && kill -9 "$(cat "$SLEEPER")" 2>/dev/null
    return 0
}
trap 'stop_ours; lab_cleanup' EXIT
mkdir -m 0755 "$LAB_WORK/scratch"
echo "scratch-dir = $LAB_WORK/scratch" >>"$VMSHADOW_CONFIG"

truncate -s 32M "$LAB_WORK/raw.img" "$LAB_WORK/qblk.img"
lab_loop_attach "$LAB_WORK/raw.img"; LRAW=$LAB_LOOP
lab_loop_attach "$LAB_WORK/qblk.img"; LQC=$LAB_LOOP
qemu-img create -q -f qcow2 "$LQC" 24M || fail "qemu-img create on $LQC"
lab_guest_define g --block "$LRAW" --disk-xml "
    <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='$LQC'/><target dev='vdc' bus='virtio'/></disk>"
G=$(lab_domname g)
lab_guest_start g
vsh init
check "init" test "$RC" = 0

# a script writer that blocks at post-snapshot: the guest then runs on its
# overlays while the data is copied
cat >"$VMSHADOW_WRITERS_DIR/holder.conf" <<EOW
name = holder
post-snapshot = sh -c 'echo \$\$ > $SLEEPER; exec sleep 300'
timeout = 600
EOW
"$VMSHADOW" backup --method saved-state "$G" >/dev/null 2>"$LAB_WORK/bg.err" &
BG=$!
for _ in $(seq 3000); do [ -s "$SLEEPER" ] && break; sleep 0.02; done
[ -s "$SLEEPER" ] || fail "the backup did not reach post-snapshot: $(cat "$LAB_WORK/bg.err")"
BL=$(lab_virsh domblklist "$G" | awk '{print $1, $2}')
check "the guest runs on an overlay of vdb in scratch-dir" grep -q "^vdb $LAB_WORK/scratch/.*\.overlay\$" <<<"$BL"
check "  and of vdc" grep -q "^vdc $LAB_WORK/scratch/.*\.overlay\$" <<<"$BL"
check "no overlay beside a device node" test -z "$(ls -A /dev | grep -F .vmshadow-)"
# the guest writes to both disks while on its overlays
lab_gexec g 'printf VMSHADOW-RAW-MARK | dd of=/dev/vdb bs=512 seek=100 conv=fsync 2>/dev/null; printf VMSHADOW-QC-MARK | dd of=/dev/vdc bs=512 seek=200 conv=fsync 2>/dev/null; echo written' >/dev/null
check "the raw device does not have the guest's write yet" sh -c "! dd if=$LRAW bs=512 skip=100 count=1 2>/dev/null | grep -q VMSHADOW-RAW-MARK"
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
kill -9 "$(cat "$SLEEPER")" 2>/dev/null

vsh recover
check "recover exits 0" test "$RC" = 0
check "the guest runs" test "$(lab_state g)" = running
BL=$(lab_virsh domblklist "$G" | awk '{print $1, $2}')
check "it runs on its raw block device again" grep -q "^vdb $LRAW\$" <<<"$BL"
check "  and on its qcow2-on-block device" grep -q "^vdc $LQC\$" <<<"$BL"
check "no overlay left in scratch-dir" test -z "$(ls -A "$LAB_WORK/scratch")"
check "no state file or socket left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
check "no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
lab_gexec g 'sync; echo 3 > /proc/sys/vm/drop_caches; echo ok' >/dev/null
check "the guest's write on the overlay was merged into the raw device" \
    sh -c "dd if=$LRAW bs=512 skip=100 count=1 2>/dev/null | grep -q VMSHADOW-RAW-MARK"
# QEMU holds the qcow2 on the block device open (its metadata cache may not
# be on the device yet), so that one is read through the guest, which now
# runs on the device itself (checked above), with direct I/O past its cache
qc_mark() { lab_gexec g 'dd if=/dev/vdc bs=512 skip=200 count=1 iflag=direct 2>/dev/null' | grep -q VMSHADOW-QC-MARK; }
check "  and into the qcow2 on the block device" qc_mark
vsh --json list
check "no backup visible" test "$(jq '.backups | length' <<<"$OUT")" = 0
rm -f "$VMSHADOW_WRITERS_DIR/holder.conf"
vsh --json backup "$G"
check "a backup afterwards works" test "$RC" = 0
e2e_done
