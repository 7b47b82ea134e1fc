#!/bin/bash
# Backing up VMs by both methods (SPEC R1-R4, issue 5):
#  - a running guest with an agent is backed up by the guest method: a file
#    written before the backup is in it, one written after is not; a write
#    started in the guest after the freeze is blocked until the thaw; the
#    backed-up filesystem passes e2fsck -fn; the freeze hook's marker is in it;
#  - a running guest without an agent falls back to saved state with the
#    reason; its state file is in the backup; it runs again afterwards without
#    a reboot; a paused VM stays paused; a shut-off VM is untouched;
#  - verify passes; backup --all takes every VM, each with its own last
#    backup as the base of an incremental read.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define g --cmdline lab.ticker=1
lab_guest_define s --no-agent
lab_guest_start g
lab_guest_start s
G=$(lab_domname g); S=$(lab_domname s)

# A script writer holds the set's Freeze for 2 s, so that a write the guest
# starts while frozen must wait that long (it takes part in the same set).
cat > "$VMSHADOW_WRITERS_DIR/hold.conf" <<EOW
name = hold
freeze = sleep 2
timeout = 30
EOW

vsh init
check "init" test "$RC" = 0
lab_gexec g 'echo before > /mnt/data/before.txt; sync' || fail "guest write"

vsh --json backup "$G" "$S"
check "backup of two VMs exits 0" test "$RC" = 0
ID=$(jq -r .backup <<<"$OUT")
SET=$(jq -r .set_id <<<"$OUT")
check "backup ID printed" test -n "$ID" -a "$ID" != null
vmj() { jq -e --arg n "$1" '.vms[] | select(.name == $n)' <<<"$OUT"; }
check "guest method for the agent guest" test "$(vmj "$G" | jq -r .method)" = guest
check "saved-state for the guest without agent" test "$(vmj "$S" | jq -r .method)" = saved-state
check "fallback reason names R2 (a)" grep -q "R2 (a)" <<<"$(vmj "$S" | jq -r .reason)"
check "states before/after: running" test "$(vmj "$G" | jq -r '"\(.state_before) \(.state_after)"')" = "running running"
check "saved-state VM running again" test "$(vmj "$S" | jq -r '"\(.state_before) \(.state_after)"')" = "running running"
check "freeze window reported" test "$(jq -r .freeze_window_ms <<<"$OUT")" -ge 2000
check "bytes stored reported" test "$(jq -r .bytes_stored <<<"$OUT")" -gt 0
check "both VMs running" test "$(lab_state g) $(lab_state s)" = "running running"
check "the guest is thawed" grep -q '"thawed"' <<<"$(lab_virsh qemu-agent-command "$G" '{"execute":"guest-fsfreeze-status"}')"
check "the saved-state guest was not rebooted" test "$(grep -c 'LAB: ready' "$LAB_WORK/s.console.log")" = 1

lab_gexec g 'echo after > /mnt/data/after.txt; sync' || fail "guest write after"

# The guest-method disk: consistent, point in time, hook marker inside.
vsh extract "$ID" "$G/disk/vda" "$LAB_WORK/g.raw"
check "extract the guest's disk" test "$RC" = 0
check "backed-up filesystem passes e2fsck -fn" e2fsck -fn "$LAB_WORK/g.raw"
check "file written before the backup is in it" test "$(debugfs -R 'cat /before.txt' "$LAB_WORK/g.raw" 2>/dev/null)" = before
check "file written after the backup is not" test -z "$(debugfs -R 'stat /after.txt' "$LAB_WORK/g.raw" 2>/dev/null)"
check "the fsfreeze hook's marker is in the backup" test -n "$(debugfs -R 'cat /FREEZE_MARKER' "$LAB_WORK/g.raw" 2>/dev/null)"

# The ticker appends a line every 0.5 s; while frozen its write blocks. The
# guest's ticks must show a gap of at least the 2 s hold, and the backup must
# end before that gap (nothing written during the freeze is in it).
lab_gexec g 'cat /mnt/data/ticks' > "$LAB_WORK/ticks.live"
debugfs -R 'cat /ticks' "$LAB_WORK/g.raw" 2>/dev/null > "$LAB_WORK/ticks.backup"
gap=$(awk '{sub("up=","",$3); if (NR > 1 && $3 - prev > max) {max = $3 - prev; at = prev} prev = $3} END {printf "%.2f %s", max, at}' "$LAB_WORK/ticks.live")
echo "  largest gap between ticks: ${gap% *} s (after uptime ${gap#* })"
check "a write started during the freeze waited for the thaw (gap >= 1.9 s)" awk -v g="${gap% *}" 'BEGIN {exit !(g >= 1.9)}'
last_backup=$(tail -n 1 "$LAB_WORK/ticks.backup" | awk '{sub("up=","",$3); print $3}')
check "the backup's ticks end before the blocked write" awk -v b="$last_backup" -v at="${gap#* }" 'BEGIN {exit !(b <= at)}'

# The saved-state VM: its memory is in the backup.
vsh --json show "$ID"
SHOW=$OUT
state_size=$(jq -r --arg f "$S/saved-state" '.files[] | select(.name == $f) | .size' <<<"$SHOW")
check "the state file is in the backup (size $state_size)" test "$state_size" -gt 10000000
vsh extract "$ID" "$S/saved-state" "$LAB_WORK/s.state"
check "the state file can be extracted" test "$RC" = 0 -a -s "$LAB_WORK/s.state"
check "no state file or socket left in the state directory" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
check "no scratch file left beside the disks" test -z "$(ls -A "$LAB_WORK" | grep -F .scratch)"
check "no socket directory left in /run" test ! -e "/run/vmshadow-$SET"

# A paused VM stays paused; a shut-off VM is untouched and read from its file.
lab_virsh suspend "$S" >/dev/null
vsh --json backup "$S"
check "backup of a paused VM" test "$RC" = 0
check "paused before and after" test "$(vmj "$S" | jq -r '"\(.state_before) \(.state_after)"')" = "paused paused"
check "still paused" test "$(lab_state s)" = paused
lab_virsh resume "$S" >/dev/null
lab_virsh destroy "$S" >/dev/null
vsh --json backup "$S"
ID2=$(jq -r .backup <<<"$OUT")
check "backup of a shut-off VM" test "$RC" = 0
check "shut off before and after" test "$(vmj "$S" | jq -r '"\(.state_before) \(.state_after)"')" = "shut off shut off"
check "still shut off" test "$(lab_state s)" = "shut off"
vsh extract "$ID2" "$S/disk/vda" "$LAB_WORK/s.raw"
check "the shut-off VM's disk passes e2fsck -fn" e2fsck -fn "$LAB_WORK/s.raw"

vsh verify
check "verify passes" test "$RC" = 0
vsh --json list
check "three backups listed" test "$(jq '.backups | length' <<<"$OUT")" = 3

# --all: every VM of the host, each with its last backup in this repository
# as the chain's base (the guest-method VM's is the first set, two backups
# back). Only where this test's two VMs are the daemon's only ones: --all
# never touches VMs that are not the lab's.
others=$(lab_virsh list --all --name | grep -v -x -e "$G" -e "$S" | grep -c .)
if [ "$others" = 0 ]; then
    vsh --json backup --all
    check "backup --all exits 0" test "$RC" = 0
    check "it took both VMs" test "$(jq -r '[.vms[].name] | sort | join(" ")' <<<"$OUT")" = \
        "$(printf '%s\n' "$G" "$S" | sort | paste -sd ' ')"
    check "the guest-method VM's disk is read from its last backup's checkpoint" \
        test "$(vmj "$G" | jq -r '.disks[] | select(.name == "vda") | .read')" = incremental
    check "the shut-off VM is read from its image" test "$(vmj "$S" | jq -r .method)" = saved-state
    ALL=$(jq -r .backup <<<"$OUT")
    # named: the manifests are read newest first until G has its last
    vsh --json backup "$G"
    check "then a backup of the one VM" test "$RC" = 0
    check "reads from the --all set's checkpoint" \
        grep -q "of backup $ALL" <<<"$(vmj "$G" | jq -r '.disks[] | select(.name == "vda") | .reason')"
else
    echo "# SKIP backup --all: the libvirt daemon has $others VMs that are not this test's"
fi
e2e_done
