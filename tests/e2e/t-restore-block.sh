#!/bin/bash
# Restore in place onto a block device (issue 25 point 4), on a real guest: a
# VM with a raw disk on a loop device (vdb) is backed up by the guest method,
# the device is then overwritten with other bytes, and `restore --force`
# writes the disk back onto the device itself (no temporary file, no
# rename): the device is byte-identical to the backup (`extract`), the VM is
# defined on it again and boots. Without --force the restore is refused
# before anything changes (the device keeps the other bytes, the VM runs).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
T=$LAB_WORK

truncate -s 48M "$T/raw.img"
lab_loop_attach "$T/raw.img"; LRAW=$LAB_LOOP
qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 5M 512k' -c 'write -P 0x33 40M 64k' "$LRAW" >/dev/null ||
    fail "cannot write test data to $LRAW"
lab_guest_define g --block "$LRAW"
G=$(lab_domname g)
lab_guest_start g

vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of $G (a raw disk on $LRAW)" test "$RC" = 0 -a "$ID" != null
vsh extract "$ID" "$G/disk/vdb" "$T/vdb"
check "extract of the block disk" test "$RC" = 0
check "the backup holds the device's bytes" cmp -s "$T/vdb" "$LRAW"

# other bytes on the device (the VM keeps running)
dd if=/dev/urandom of="$LRAW" bs=1M count=48 conv=notrunc,fsync status=none
sum_other=$(sha256sum <"$LRAW")
check "the device now differs from the backup" sh -c "! cmp -s '$T/vdb' '$LRAW'"

vsh --json restore "$ID" --dry-run
check "the plan: vdb written in place onto $LRAW" test "$(jq -r '.vms[0].files[] | select(.file == "disk/vdb") | .storage | .action + " " + .target' <<<"$OUT")" = "written $LRAW"

# refused without --force, before any change
vsh restore "$ID"
check "restore without --force: refused" test "$RC" != 0
check "... asking for --force" grep -q -- "--force" <<<"$ERR"
check "the device is unchanged" test "$(sha256sum <"$LRAW")" = "$sum_other"
check "the VM still runs" test "$(lab_state g)" = running

# in place, behind --force: the VM is stopped, the device written
vsh --json restore "$ID" --force
check "restore --force exits 0" test "$RC" = 0
check "the device is byte-identical to the backup" cmp -s "$T/vdb" "$LRAW"
check "no temporary file beside the device" test -z "$(find /dev -maxdepth 1 -name '*.vmshadow-restore*' 2>/dev/null)"
check "the device node is still a block device" test -b "$LRAW"
check "the VM is defined on the device (type='block')" sh -c "virsh -q -c $LAB_URI dumpxml $G | grep -q \"dev='$LRAW'\""
lab_virsh domstate "$G" | grep -q running || lab_guest_start g
lab_wait_ready g
check "the restored VM boots" test "$(lab_state g)" = running
BL=$(lab_virsh domblklist "$G" | awk '{print $1, $2}')
check "it runs on the device again" grep -q "^vdb $LRAW\$" <<<"$BL"
e2e_done
