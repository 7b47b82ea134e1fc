#!/bin/bash
# Instant restore (issue 23 points 2 and 3) on a lab guest whose data disk
# (vda) is T_INSTANT_DISK_MB MiB (default 96; 4096 for the issue's 4 GiB
# case): ext4 in its first 64 MiB, then a 16 MiB pattern, then holes, and a
# second 16 MiB pattern at its end. The pulls start throttled (--bandwidth
# 1M, so that the "during" checks are real whatever the disk's size); once a
# part has checked what it must while the pull runs, the test lifts the
# throttle of the running block job (virsh blockjob --bandwidth 0), which
# keeps the test short without a big disk.
#  - `restore --instant` starts the VM on qcow2 overlays backed by the served
#    backup; the guest agent answers (the time is printed) and a file written
#    before the backup reads back while the pull runs; `jobs` shows it in
#    progress; a file written during the pull survives it; at the end the
#    disk has no backing file, holds the backup's data byte for byte outside
#    what the guest wrote, and no server is left;
#  - SIGKILL of vmshadow mid-pull leaves the VM running on served disks and
#    the pull going; SIGKILL of the server then pauses the VM on its next
#    read (stop on I/O error, never a failed read in the guest); `recover`
#    restarts the server, restarts the VM (destroy and start: never a resume,
#    which crashed QEMU 7.2), and the pull, finishes, and the data is right;
#  - a host reboot, as far as the lab allows: vmshadow and the server
#    SIGKILLed, the VM destroyed (nothing of its QEMU survives), the run
#    directory removed (/run is a tmpfs); the VM cannot be started on its
#    unserved backing (never a VM on a backing nothing serves); `recover`
#    recreates the run directory, serves, starts the VM, finishes the pull,
#    and the data is right;
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
servers() { for p in /proc/[0-9]*; do tr "\\0" " " 2>/dev/null < "$p/cmdline" | grep -q "^nbdkit .*--unix $VMSHADOW_RUN_DIR/" && echo "${p#/proc/}"; done; }
kill_servers() { local p; for p in $(servers); do kill -9 "$p" 2>/dev/null; done; }
trap 'stop_bg; lab_cleanup; kill_servers' EXIT
jqe() { jq -e "$@" >/dev/null; }

MiB=$((1 << 20))
SIZE_MB=${T_INSTANT_DISK_MB:-96}
[ "$SIZE_MB" -ge 96 ] || fail "T_INSTANT_DISK_MB must be at least 96"
lab_guest_define g
G=$(lab_domname g)
DISK=$(lab_disk g)
qemu-img resize -q -f qcow2 "$DISK" "${SIZE_MB}M" || fail "resize"
qemu-io -f qcow2 -c 'write -P 0x5a 64M 16M' -c "write -P 0xc3 $((SIZE_MB - 16))M 16M" "$DISK" \
    >/dev/null || fail "qemu-io"
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
        cmp -s -i $((64 * MiB)) -n $(((SIZE_MB - 64) * MiB)) "$LAB_WORK/ref.raw" "$LAB_WORK/cmp.raw"
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
# speed_up PID: lifts the throttle of vda's block job once it runs (the one
# vmshadow process PID started or restarted); returns when it did, or PID
# ended
speed_up() {
    for _ in $(seq 1200); do
        virsh -q -c "$LAB_URI" blockjob "$G" vda --bandwidth 0 >/dev/null 2>&1 &&
            virsh -q -c "$LAB_URI" blockjob "$G" vda --info 2>/dev/null | grep -q . && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# ---- 1. instant restore, in the foreground, throttled pull
if [ -z "${T_INSTANT_SKIP1:-}" ]; then
T0=$(date +%s.%N)
"$VMSHADOW" restore --instant --force --bandwidth 1M "$ID" "$G" >"$LAB_WORK/r1.out" 2>"$LAB_WORK/r1.err" &
BG=$!
wait_agent || { cat "$LAB_WORK/r1.err" >&2; fail "the VM runs at once and its agent answers"; }
pass "the VM runs at once and its agent answers"
echo "# the guest agent answered $(echo "$(date +%s.%N) - $T0" | bc) s after restore --instant started (${SIZE_MB} MiB disk)"
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
speed_up "$BG" # the checks that need a running pull are done
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
QLOG=/var/log/libvirt/qemu/$G.log # libvirt's log of the VM's QEMU: "reason=crashed"
QLOG0=$(stat -c %s "$QLOG" 2>/dev/null || echo 0)
"$VMSHADOW" -v restore --instant --force --bandwidth 1M "$ID" "$G" >"$LAB_WORK/r2.out" 2>"$LAB_WORK/r2.err" &
BG=$!
wait_agent || fail "the VM did not come up: $(cat "$LAB_WORK/r2.err")"
check "pull under way" wait_pulling
OVL=$(jobs_json | jq -r '.jobs[0].disks[0].overlay')
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
sleep 1
check "after SIGKILL of vmshadow the VM still runs" test "$(lab_state g)" = running
check "and its pull goes on (the server outlives vmshadow)" wait_pulling
check "its server still serves" \
    bash -c "$(declare -f jqe); \"$VMSHADOW\" --json jobs | jqe '.jobs[0].disks[0].served and .jobs[0].vm_state == \"running\"'"
S=$(servers)
check "one server" test -n "$S" -a "$(wc -w <<<"$S")" = 1
# a read of what is not pulled yet must hit the dead server: a MiB of the
# last pattern, which the pull (from the start, 1 MiB/s) has not reached
# (qemu-img map: depth > 0 is the backing's)
UNPULLED=$((SIZE_MB - 8))
unpulled_at_kill() {
    qemu-img map --force-share --output=json "$OVL" 2>/dev/null |
        jq -e --argjson o $((UNPULLED * MiB)) \
            '[.[] | select(.depth > 0 and .start <= $o and .start + .length >= $o + 1048576)] | length == 1' >/dev/null
}
check "MiB $UNPULLED is not pulled yet before the kill" unpulled_at_kill
# the pull slowed to a byte a second: it sleeps through the kill, so its
# copy-on-read filter is in QEMU's chain when the guest reads. That is the
# case where QEMU 7.2 completed the read with zeros and no error (the
# filter took the backing's failed NBD block-status query for "nothing to
# read"; fixed by serving without structured replies, so without block
# status: docs/reliability.md); before, the test hit it only when the read
# came before the pull's next step noticed the dead server (about half of
# the runs), and it failed here on every run of the old code
check "the pull slowed down" virsh -q -c "$LAB_URI" blockjob "$G" vda --bytes --bandwidth 1
sleep 1
kill -9 $S
rm -f "$LAB_WORK/read.done"
(lab_gexec g "dd if=/dev/vda of=/dev/null bs=1M iflag=direct skip=$UNPULLED count=1" >/dev/null 2>&1
    touch "$LAB_WORK/read.done") &
# (the pause has been seen to come more than 30 s after the kill on a
# loaded machine: up to 120 s; a VM whose reads fail never pauses)
for _ in $(seq 1200); do
    virsh -q -c "$LAB_URI" domstate --reason "$G" | grep -qi 'paused.*i/o' && break
    [ -e "$LAB_WORK/read.done" ] && break # the read ended (in error or not)
    sleep 0.1
done
check "after SIGKILL of the server the guest's read of unpulled data pauses the VM on an I/O error (never completes)" \
    bash -c "virsh -q -c $LAB_URI domstate --reason '$G' | grep -qi 'paused.*i/o'"
check "jobs says the disk is not served" bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs[0].disks[0].served == false' >/dev/null"
# A VM paused on an I/O error of a dead server is restarted by recover,
# never resumed: on QEMU 7.2 the guest's read that failed inside the pull's
# copy-on-read filter, retried on resume, ended in a QEMU segfault when the
# next pull ended, after which the guest once read zeros from a file of the
# backup (docs/reliability.md). recover serves again, destroys the paused
# VM, starts it on its overlays and finishes; the data is then checked:
# the files of the backup and of the guest, the disk against the backup.
bg_recover() { "$VMSHADOW" recover >"$LAB_WORK/rec.out" 2>"$LAB_WORK/rec.err" & BG=$!; }
end_recover() { speed_up "$BG"; wait "$BG"; RC=$?; BG=; OUT=$(cat "$LAB_WORK/rec.out"); cat "$LAB_WORK/rec.err" >&2; }
bg_recover
end_recover
check "recover finishes the instant restore" test "$RC" = 0
check "recover says so" grep -q "finished 1 instant restore" <<<"$OUT"
check "the VM runs" test "$(lab_state g)" = running
check "QEMU did not crash (its log since part 2 says no crash)" \
    bash -c "test -r '$QLOG' && ! tail -c +$((QLOG0 + 1)) '$QLOG' | grep -qiE 'reason=crashed|segmentation|signal 11'"
check "no job, no server left" bash -c "test -z \"\$($(declare -f servers); VMSHADOW_RUN_DIR=$VMSHADOW_RUN_DIR servers)\" && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "the guest answers after recover restarted it" wait_agent
# (after a restart its init mounts the data disk after the agent starts)
reads_before() { for _ in $(seq 100); do [ "$(lab_gexec g 'cat /mnt/data/before.txt' 2>/dev/null)" = before ] && return 0; sleep 0.2; done; return 1; }
check "the guest reads its file of the backup (no NUL bytes)" reads_before
check "  byte for byte" test "$(lab_gexec g 'od -An -c /mnt/data/before.txt' | tr -d ' \n')" = 'before\n'
check "the guest reads the pattern past the kill point from its disk (no zeros)" \
    test "$(lab_gexec g "dd if=/dev/vda bs=1M iflag=direct skip=$UNPULLED count=1 2>/dev/null | md5sum | cut -c1-32")" = \
    "$(dd if="$LAB_WORK/ref.raw" bs=1M skip=$UNPULLED count=1 2>/dev/null | md5sum | cut -c1-32)"
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || { lab_virsh destroy "$G" >/dev/null; lab_wait_off g; }
check "no backing file left" bash -c "! qemu-img info --force-share '$OVL' | grep -q 'backing file'"
check "the overlay is a sound qcow2 (qemu-img check)" qemu-img check -q -f qcow2 "$OVL"
check "the data is right after the kills and recover" same_data "$OVL" qcow2
# (last: on the old code, which resumed, the checks above are what failed)
check "recover says it restarted the VM paused on the dead server's I/O error (not resumed)" \
    grep -q "paused on an I/O error of its served backup.*restarting it: destroyed and started again" "$LAB_WORK/rec.err"

# ---- 3. host reboot: nothing of the run survives but the journal and the overlay
# (first, issue 23: the restore replaces part 2's disk image, pulled in
# full; the kernel frees its blocks after the restore (its last link goes
# in the restore's rename, the file is kept open until the restore is
# done and closed by a process of its own), never in the way to the VM
# running; nothing holds it a moment later)
OLD=$OVL
held_deleted() { local fd; for fd in /proc/[0-9]*/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$1 (deleted)" ] && return 0; done; return 1; }
freed_soon() { for _ in $(seq 300); do held_deleted "$1" || return 0; sleep 0.1; done; return 1; }
vsh --json restore --instant --force --no-wait --bandwidth 1M "$ID" "$G"
check "restore --instant --no-wait returns once the VM runs" test "$RC" = 0
check "the disk image it replaced is freed after the restore, not in its rename" \
    jqe --arg f "$OLD" '.vms[0].result.replaced_freed_later == [$f]' <<<"$OUT"
check "... and no process holds it a moment later (nothing left)" freed_soon "$OLD"
check "pull under way" wait_pulling
OVL=$(jobs_json | jq -r '.jobs[0].disks[0].overlay')
kill_servers
lab_virsh destroy "$G" >/dev/null
rm -rf "$VMSHADOW_RUN_DIR"
check "after the 'reboot' the VM is shut off" test "$(lab_state g)" = "shut off"
check "jobs: the VM is shut off and its disk not served" \
    bash -c "$(declare -f jqe); \"$VMSHADOW\" --json jobs | jqe '.jobs[0].vm_state == \"shut off\" and .jobs[0].disks[0].served == false and .jobs[0].done == false'"
check "the VM cannot be started on a backing file nothing serves" \
    bash -c "! virsh -q -c $LAB_URI start '$G' >/dev/null 2>&1"
check "and it is still shut off" test "$(lab_state g)" = "shut off"
bg_recover
end_recover
check "recover after the reboot finishes the instant restore" test "$RC" = 0
check "recover says so" grep -q "finished 1 instant restore" <<<"$OUT"
check "recover started the VM again" test "$(lab_state g)" = running
check "no job, no server left" bash -c "test -z \"\$($(declare -f servers); VMSHADOW_RUN_DIR=$VMSHADOW_RUN_DIR servers)\" && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "the guest answers" wait_agent
check "the guest reads its file" test "$(lab_gexec g 'cat /mnt/data/before.txt')" = before
lab_virsh shutdown "$G" >/dev/null
lab_wait_off g || { lab_virsh destroy "$G" >/dev/null; lab_wait_off g; }
check "no backing file left" bash -c "! qemu-img info --force-share '$OVL' | grep -q 'backing file'"
check "the data is right after the reboot and recover" same_data "$OVL" qcow2

# ---- 3b. --no-wait, the pull ends with no vmshadow waiting: jobs says the
# disk is pulled and that recover finishes; recover stops serving
vsh restore --instant --force --no-wait "$ID" "$G"
check "restore --instant --no-wait (unthrottled) returns once the VM runs" test "$RC" = 0
pulled=0
for _ in $(seq 600); do
    jobs_json | jqe '.jobs[0].disks[0].pulled == true and .jobs[0].done == false' && { pulled=1; break; }
    sleep 0.1
done
check "jobs: the disk is pulled, the job not done" test "$pulled" = 1
check "jobs (text) says recover finishes" bash -c "\"$VMSHADOW\" jobs | grep -q 'pulled; run vmshadow recover'"
vsh recover
check "recover finishes it" test "$RC" = 0
check "no job, no server left after recover" bash -c "test -z \"\$($(declare -f servers); VMSHADOW_RUN_DIR=$VMSHADOW_RUN_DIR servers)\" && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
lab_virsh destroy "$G" >/dev/null 2>&1
lab_wait_off g

# ---- 4. abandon
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

# ---- 5. bad input
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
