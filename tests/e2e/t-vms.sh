#!/bin/bash
# `vmshadow vms` against real guests: one with an agent, one without, a
# defined VM with a host block device (captured since issue 25) and one with
# a disk kind vmshadow does not know; a hung agent must not hang the command; an unreachable URI is a
# clear one-line error (issue 2).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define agent
lab_guest_define noagent --no-agent --raw
lab_guest_define blockdev --block /dev/vmsh-e2e-absent
lab_guest_start agent
lab_guest_start noagent
A=$(lab_domname agent); N=$(lab_domname noagent); B=$(lab_domname blockdev)

# A defined, never started VM with a vvfat directory disk: a kind we do not capture.
mkdir -p "$LAB_WORK/dirdisk"
sed -e "s|<name>$B</name>|<name>$LAB_ID-dirdisk</name>|" \
    -e "s|<disk type='block' device='disk'>.*</disk>|<disk type='dir' device='disk'><driver name='qemu' type='fat'/><source dir='$LAB_WORK/dirdisk'/><target dev='vdc' bus='virtio'/><readonly/></disk>|" \
    "$LAB_WORK/blockdev.xml" > "$LAB_WORK/dirdisk.xml"
lab_virsh define "$LAB_WORK/dirdisk.xml" >/dev/null || fail "cannot define the dir-disk VM"
LAB_DOMAINS+=("$LAB_ID-dirdisk")

vsh --json vms
check "vms --json exits 0" test "$RC" = 0
vm() { jq -e --arg n "$1" '.vms[] | select(.name == $n)' <<<"$OUT"; }
check "agent guest listed as running" test "$(vm "$A" | jq -r .state)" = running
check "no-agent guest listed as running" test "$(vm "$N" | jq -r .state)" = running
check "agent reachable on the guest with an agent" test "$(vm "$A" | jq -r .agent.reachable)" = true
check "agent can freeze" test "$(vm "$A" | jq -r .agent.can_freeze)" = true
check "agent lists /mnt/data ext4" test "$(vm "$A" | jq -r '.agent.filesystems[] | select(.mountpoint == "/mnt/data") | .type')" = ext4
check "agent not reachable without a channel" test "$(vm "$N" | jq -r .agent.reachable)" = false
check "guest method for the agent guest" test "$(vm "$A" | jq -r .method)" = guest
check "saved-state method for the no-agent guest" test "$(vm "$N" | jq -r .method)" = saved-state
check "reason names R2 (a)" grep -q "R2 (a)" <<<"$(vm "$N" | jq -r .reason)"
check "qcow2 disk reported as file/qcow2" test "$(vm "$A" | jq -r '.disks[0] | "\(.target) \(.kind) \(.format) \(.source)"')" = "vda file qcow2 $(lab_disk agent)"
check "raw disk reported as file/raw" test "$(vm "$N" | jq -r '.disks[0] | "\(.kind) \(.format)"')" = "file raw"
check "shut-off VM listed" test "$(vm "$B" | jq -r .state)" = "shut off"
check "host block device classified as block and captured (R6, issue 25)" \
    test "$(vm "$B" | jq -r '.disks[] | select(.target == "vdb") | "\(.kind) \(.excluded)"')" = "block false"
check "shut-off VM falls back to saved-state by R2 (b)" grep -q "R2 (b)" <<<"$(vm "$B" | jq -r .reason)"
check "unknown disk kind is a marked entry" \
    test "$(vm "$LAB_ID-dirdisk" | jq -r '.disks[] | select(.target == "vdc") | "\(.kind) \(.excluded)"')" = "unknown true"
vsh vms "$LAB_ID-dirdisk"
check "text output marks the unknown disk as excluded" grep -q "vdc .*unknown.*excluded: a host directory shown to the guest as a disk (type='dir')" <<<"$OUT"

vsh vms "$A" "$N"
check "text output lists both guests" grep -q "$A .*running .*reachable .*guest" <<<"$OUT"
check "text output shows the no-agent guest" grep -q "$N .*running .*none .*saved-state" <<<"$OUT"
check "text output limited to the VMs asked for" test "$(grep -c "^$LAB_ID" <<<"$OUT")" = 2

# A hung agent: stop qemu-ga inside the guest. The command must still end,
# report the agent unreachable, and leave the guest alone.
lab_virsh qemu-agent-command "$A" \
    '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","sleep 0.5; kill -STOP $(pidof qemu-ga)"]}}' >/dev/null
sleep 2
OUT=$(timeout 120 "$VMSHADOW" --json vms "$A" 2>"$LAB_WORK/stderr"); RC=$?
check "vms returns with a hung agent (not killed by the 120 s guard)" test "$RC" = 0
check "hung agent reported unreachable" test "$(vm "$A" | jq -r .agent.reachable)" = false
check "hung agent: method falls back with R2 (a)" grep -q "R2 (a)" <<<"$(vm "$A" | jq -r .reason)"
echo "  hung agent error: $(vm "$A" | jq -r .agent.error)"
check "guest still running" test "$(lab_state agent)" = running

# Unreachable libvirt: one clear line, exit 1, no hang.
OUT=$(timeout 60 "$VMSHADOW" -c qemu+unix:///system?socket=/nonexistent/sock vms 2>&1); RC=$?
check "unreachable URI exits 1" test "$RC" = 1
check "unreachable URI says what to do" grep -q "cannot connect to libvirt.*is libvirtd running" <<<"$OUT"
check "unreachable URI is one line" test "$(wc -l <<<"$OUT")" = 1
e2e_done
