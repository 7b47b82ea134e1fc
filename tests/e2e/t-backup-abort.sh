#!/bin/bash
# No partial backups (SPEC R5) and disks the host cannot see (R6), issue 5:
#  - a two-VM set where one guest's freeze fails (its fsfreeze hook refuses,
#    lab.hookfail=1): exit 1, no backup listed, both VMs running and thawed,
#    no job, scratch file, state file or journal left; the other guest froze
#    at the same time (issue 27) and was thawed;
#  - --method guest on a VM that cannot use it names the failed condition;
#  - a VM with a host block device attached: backed up with that disk
#    (issue 25: every virtual disk is captured), a LUN pass-through of the
#    same device excluded and warned about.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
LOOP=
cleanup_loop() { [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null; }

lab_guest_define ok
lab_guest_define bad --cmdline lab.hookfail=1
lab_guest_start ok
lab_guest_start bad
OK=$(lab_domname ok); BAD=$(lab_domname bad)
vsh init
check "init" test "$RC" = 0

vsh --json backup "$OK" "$BAD"
check "the set fails: exit 1" test "$RC" = 1
check "backup is null" test "$(jq -r .backup <<<"$OUT")" = null
check "the error names the VM whose freeze failed" grep -q "$BAD" <<<"$ERR"
vsh --json list
check "no backup listed" test "$(jq '.backups | length' <<<"$OUT")" = 0
check "both VMs running" test "$(lab_state ok) $(lab_state bad)" = "running running"
for d in "$OK" "$BAD"; do
    check "$d thawed" grep -q '"thawed"' <<<"$(lab_virsh qemu-agent-command "$d" '{"execute":"guest-fsfreeze-status"}')"
    check "$d has no backup job" test -z "$(lab_virsh domjobinfo "$d" | grep -i backup)"
    # issue 27: the set's checkpoints are made before the freeze; the abort deletes them
    check "$d has no checkpoint left" test -z "$(lab_virsh checkpoint-list "$d" --name)"
done
check "no scratch file beside the disks" test -z "$(ls -A "$LAB_WORK" | grep -F .scratch)"
check "no run directory left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
check "no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
# Issue 27 point 4: the guests of a set freeze at once. $BAD comes first in
# the set's order, so one VM after the other, $OK was never asked to freeze;
# at once, it froze beside $BAD's failure and the abort thawed it (R5, R7).
hook=$(grep -a "LAB: fsfreeze-hook" "$LAB_WORK/ok.console.log" | tr -d '\r' | sed 's/.*fsfreeze-hook //' | tr '\n' ' ')
check "$OK froze at the same time as $BAD, then thawed (hook: $hook)" test "$hook" = "freeze thaw "
lab_gexec ok 'echo alive > /mnt/data/alive; sync' >/dev/null
check "the good guest still writes to its disk" test $? = 0
vsh verify
check "verify passes" test "$RC" = 0

# Asking for the guest method where R2 fails is an error naming the condition.
lab_virsh destroy "$BAD" >/dev/null
vsh --json backup --method guest "$BAD"
check "--method guest on a shut-off VM fails" test "$RC" = 1
check "the error names R2 (b)" grep -q "R2 (b)" <<<"$ERR"

# R6: a host block device (a loop device) attached to a running guest.
truncate -s 16M "$LAB_WORK/blk.img"
LOOP=$(losetup -f --show "$LAB_WORK/blk.img") || fail "losetup"
trap 'cleanup_loop; lab_cleanup' EXIT
lab_virsh undefine "$BAD" >/dev/null
lab_guest_define blk --block "$LOOP"
lab_guest_start blk
BLK=$(lab_domname blk)
vsh --json backup "$BLK"
check "backup of a VM with a host block device succeeds" test "$RC" = 0
check "the block device is not excluded" test -z "$(jq -r --arg n "$BLK" '.vms[] | select(.name == $n) | .excluded_disks | map(tostring) | join(" ") | select(test("vdb"))' <<<"$OUT")"
ID=$(jq -r .backup <<<"$OUT")
vsh --json show "$ID"
check "its image disk is in the backup" jq -e --arg f "$BLK/disk/vda" '.files[] | select(.name == $f)' <<<"$OUT"
check "the block device is too (R6, issue 25)" jq -e --arg f "$BLK/disk/vdb" '.files[] | select(.name == $f)' <<<"$OUT"
check "the block-device VM is running" test "$(lab_state blk)" = running
# a LUN pass-through of a block device is the guest's to back up (R6)
lab_virsh destroy "$BLK" >/dev/null
lab_guest_define lun --disk-xml "<disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='$LOOP'/><target dev='sdb' bus='scsi'/></disk>"
LUN=$(lab_domname lun)
vsh --json backup "$LUN"
check "backup of a VM with a LUN pass-through succeeds" test "$RC" = 0
check "the LUN is excluded" jq -e --arg n "$LUN" '.vms[] | select(.name == $n) | .excluded_disks | map(tostring) | join(" ") | test("sdb")' <<<"$OUT"
check "and warned about with the reason" grep -qi "warning.*sdb.*LUN pass-through" <<<"$ERR"
e2e_done
