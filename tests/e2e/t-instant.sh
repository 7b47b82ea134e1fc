#!/bin/bash
# Instant restore (issue 23 points 2 and 3) on a lab guest with a 256 MiB
# data disk (ext4 in its first 64 MiB, 160 MiB of patterned data after it):
#  - `restore --instant` starts the VM on qcow2 overlays backed by the served
#    backup; the guest agent answers and a file written before the backup
#    reads back while the pull runs (throttled: the "during" checks are
#    real); `jobs` shows it in progress; a file written during the pull
#    survives it; at the end the disk has no backing file, holds the
#    backup's data byte for byte outside what the guest wrote, and no server
#    is left;
#  - SIGKILL of vmshadow mid-pull leaves the VM running on served disks and
#    the pull going; SIGKILL of the server then pauses the VM on its next
#    read (stop on I/O error, never a failed read in the guest); `recover`
#    restarts the server, resumes the VM and the pull, finishes, and the
#    data is right;
#  - `recover --abandon` tears an instant restore down: VM, overlay,
#    servers, journal gone, the backup intact;
#  - bad input is a clear error and leaves nothing behind.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
export VMSHADOW_RUN_DIR=$LAB_WORK/run
BG=
stop_bg() { [ -n "$BG" ] && kill "$BG" 2>/dev/null; wait "$BG" 2>/dev/null; BG=; return 0; }
# servers this test's vmshadow started: found by their socket directory
servers() { for p in /proc/[0-9]*; do tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "^nbdkit .*--unix $VMSHADOW_RUN_DIR/" && echo "${p#/proc/}"; done; }
kill_servers() { local p; for p in $(servers); do kill -9 "$p" 2>/dev/null; done; }
trap 'stop_bg; lab_cleanup; kill_servers' EXIT
jqe() { jq -e "$@" >/dev/null; }

MiB=$((1 << 20))
lab_guest_define g
G=$(lab_domname g)
DISK=$(lab_disk g)
qemu-img resize -q -f qcow2 "$DISK" 256M || fail "resize"
qemu-io -f qcow2 -c 'write -P 0x5a 64M 80M' -c 'write -P 0xc3 144M 80M' "$DISK" >/dev/null ||
    fail "qemu-io"
lab_guest_start g
lab_gexec g 'echo before > /mnt/data/before.txt; sync' || fail "guest write"
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || { lab_virsh destroy "$G" >/dev/null; lab_wait_off g; }

vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of the VM" test "$RC" = 0 -a -n "$ID" -a "$ID" != null
vsh extract "$ID" "$G/disk/vda" "$LAB_WORK/ref.raw"
check "extract of its disk (the full restore's bytes)" test "$RC" = 0

# the pattern region, where the guest never writes
same_data() { # same_data IMAGE FORMAT
    qemu-img convert -f "$2" -O raw "$1" "$LAB_WORK/cmp.raw" &&
        cmp -s -i $((64 * MiB)) -n $((192 * MiB)) "$LAB_WORK/ref.raw" "$LAB_WORK/cmp.raw"
    local rc=$?
    rm -f "$LAB_WORK/cmp.raw"
    return $rc
}
jobs_json() { "$VMSHADOW" --json jobs 2>/dev/null; }
wait_pulling() { # until the job's disk has a running pull with some progress
    for _ in $(seq 600); do
        jobs_json | jqe '.jobs[0].disks[0].pulling and .jobs[0].disks[0].bytes_done > 0' && return 0
        sleep 0.1
    done
    return 1
}
agent_ok() { lab_virsh qemu-agent-command "$G" '{"execute":"guest-ping"}' --timeout 5 >/dev/null 2>&1; }
wait_agent() { for _ in $(seq 600); do agent_ok && return 0; sleep 0.1; done; return 1; }

# ---- 1. instant restore, in the foreground, throttled pull
if [ -z "${T_INSTANT_SKIP1:-}" ]; then
"$VMSHADOW" restore --instant --force --bandwidth 3M "$ID" "$G" >"$LAB_WORK/r1.out" 2>"$LAB_WORK/r1.err" &
BG=$!
wait_agent || { cat "$LAB_WORK/r1.err" >&2; fail "the VM runs at once and its agent answers"; }
pass "the VM runs at once and its agent answers"
check "during the pull: jobs shows it, not done, served" \
    bash -c "$(declare -f jqe); \"$VMSHADOW\" --json jobs | jqe --arg vm '$G' '.jobs | length == 1 and .[0].vm == \$vm and .[0].done == false and .[0].disks[0].served and (.[0].disks[0].done | not)'"
OVL=$(jobs_json | jq -r '.jobs[0].disks[0].overlay')
check "the disk is a qcow2 overlay on the served backup" \
    bash -c "qemu-img info --force-share '$OVL' | grep -q 'backing file: nbd+unix:///?socket=$VMSHADOW_RUN_DIR/'"
check "the definition stops on I/O errors while served" \
    bash -c "virsh -q -c $LAB_URI dumpxml '$G' | grep -q \"rerror_policy='stop'\""
check "a file written before the backup reads back during the pull" \
    test "$(lab_gexec g 'cat /mnt/data/before.txt')" = before
lab_gexec g 'echo during > /mnt/data/during.txt; sync' || fail "guest write during the pull"
check "a file written during the pull" test "$(lab_gexec g 'cat /mnt/data/during.txt')" = during
check "the pull was still running after those checks" wait_pulling
not_done() { jobs_json | jqe '.jobs[0].done == false'; }
check "the agent answered before the pull was done" not_done
wait "$BG"; RC=$?; BG=
check "restore --instant ends with exit 0 once every disk is pulled" test "$RC" = 0
check "it says so" grep -q "every disk pulled, serving stopped" "$LAB_WORK/r1.out"
check "no instant restore is left in jobs" bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "no server is left" test -z "$(servers)"
check "the overlay has no backing file any more" bash -c "! qemu-img info --force-share '$OVL' | grep -q 'backing file'"
check "the definition has its own error policy again" \
    bash -c "! virsh -q -c $LAB_URI dumpxml --inactive '$G' | grep -q rerror_policy"
check "the file written during the pull survived it" test "$(lab_gexec g 'cat /mnt/data/during.txt')" = during
check "and the one from before the backup" test "$(lab_gexec g 'cat /mnt/data/before.txt')" = before
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || { lab_virsh destroy "$G" >/dev/null; lab_wait_off g; }
check "after completion the disk holds the full restore's bytes (outside the guest's writes)" same_data "$OVL" qcow2
fi

# ---- 2. SIGKILL of vmshadow, then of the server, mid-pull; recover
"$VMSHADOW" -v restore --instant --force --bandwidth 2M "$ID" "$G" >"$LAB_WORK/r2.out" 2>"$LAB_WORK/r2.err" &
BG=$!
wait_agent || fail "the VM did not come up: $(cat "$LAB_WORK/r2.err")"
check "pull under way" wait_pulling
OVL=$(jobs_json | jq -r '.jobs[0].disks[0].overlay')
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
sleep 1
check "after SIGKILL of vmshadow the VM still runs" test "$(lab_state g)" = running
# (the block job itself does not outlive the killed vmshadow with this
# libvirt: recover starts it again)
check "its server still serves" \
    bash -c "$(declare -f jqe); \"$VMSHADOW\" --json jobs | jqe '.jobs[0].disks[0].served and .jobs[0].vm_state == \"running\"'"
S=$(servers)
check "one server" test -n "$S" -a "$(wc -w <<<"$S")" = 1
kill -9 $S
# a read of what is not pulled yet (the end of the disk) hits the dead server
(lab_gexec g 'dd if=/dev/vda of=/dev/null bs=1M skip=250 count=6' >/dev/null 2>&1 &)
for _ in $(seq 300); do
    virsh -q -c "$LAB_URI" domstate --reason "$G" | grep -qi 'paused.*i/o' && break
    sleep 0.1
done
check "after SIGKILL of the server the VM is paused on an I/O error, not failing reads" \
    bash -c "virsh -q -c $LAB_URI domstate --reason '$G' | grep -qi 'paused.*i/o'"
check "jobs says the disk is not served" bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs[0].disks[0].served == false' >/dev/null"
vsh recover
check "recover finishes the instant restore" test "$RC" = 0
check "recover says so" grep -q "finished 1 instant restore" <<<"$OUT"
check "the VM runs" test "$(lab_state g)" = running
check "no job, no server left" bash -c "test -z \"\$($(declare -f servers); VMSHADOW_RUN_DIR=$VMSHADOW_RUN_DIR servers)\" && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "the guest reads its file" test "$(lab_gexec g 'cat /mnt/data/before.txt')" = before
check "the guest's read completed after the resume" wait_agent
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || { lab_virsh destroy "$G" >/dev/null; lab_wait_off g; }
check "no backing file left" bash -c "! qemu-img info --force-share '$OVL' | grep -q 'backing file'"
check "the data is right after the kills and recover" same_data "$OVL" qcow2

# ---- 3. abandon
C=$G-copy
vsh restore --instant --no-wait --bandwidth 1M --as "$C" "$ID" "$G"
check "restore --instant --no-wait --as returns once the copy runs" test "$RC" = 0
COVL=$(jobs_json | jq -r '.jobs[0].disks[0].overlay')
check "the copy's overlay exists" test -f "$COVL"
check "the copy runs" bash -c "virsh -q -c $LAB_URI domstate '$C' | grep -q running"
vsh recover --abandon "$C"
check "recover --abandon tears it down" test "$RC" = 0
check "the copy is gone" bash -c "! virsh -q -c $LAB_URI dominfo '$C' >/dev/null 2>&1"
check "its overlay is gone" test ! -e "$COVL"
check "no server, no job left" bash -c "test -z \"\$($(declare -f servers); VMSHADOW_RUN_DIR=$VMSHADOW_RUN_DIR servers)\" && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "the backup is intact" "$VMSHADOW" verify "$ID"
check "the original VM is untouched" test "$(lab_state g)" = "shut off"

# ---- 4. bad input
vsh restore --instant "$ID"
check "--instant without a VM: usage error" test "$RC" = 2
vsh restore --instant "$ID" "$G" other
check "--instant with two VMs: usage error" test "$RC" = 2
vsh restore --bandwidth 1M "$ID" "$G"
check "--bandwidth without --instant: usage error" test "$RC" = 2
vsh restore --instant --force "$ID" no-such-vm
check "no such VM: exit 1, named" test "$RC" = 1 && grep -q "no-such-vm" <<<"$ERR"
check "nothing left behind" bash -c "test -z \"\$(ls -A '$VMSHADOW_RUN_DIR' 2>/dev/null)\" && test -z \"\$(ls -A '$VMSHADOW_STATE_DIR/instant' 2>/dev/null)\""
vsh recover --abandon nothing-here
check "abandon of no instant restore: exit 1" test "$RC" = 1

e2e_done
