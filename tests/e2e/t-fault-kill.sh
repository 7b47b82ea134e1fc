#!/bin/bash
# Fault matrix (issue 8, docs/reliability.md "Fault matrix"): vmshadow is
# SIGKILLed at exact points of a backup and of a restore. gdb stops the real
# binary at a function of the phase (after it returned, where that leaves
# the most to undo) and delivers SIGKILL; then `vmshadow recover` must leave
# no VM stranded (R7), nothing half-visible (R5), no temporary file, and the
# VM's definition and disk as they were before the run.
#   backup: prepare (agent probe in Identify), the checkpoint made beside
#           the freeze (a provider thread; scratch images being made), capture
#           start (pull backup job begun, guest still frozen), saved-state
#           capture (VM restarted on its overlays), commit (repository commit
#           of the document)
#   restore: after undefine, during the file write, after define, with a
#            saved state loaded paused (before libvirt saved it as managed)
# The freeze, the save and the data copy are covered by t-backup-kill.sh.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
command -v gdb >/dev/null || fail "gdb is not installed (scripts/install-deps.sh)"
# one guest at a time: shares the lab with another one-guest test (lab.sh)
LAB_GUESTS=1
lab_init
e2e_env

lab_guest_define g
lab_guest_define r --raw # never started: a shut-off VM for the restore kills
lab_guest_start g
G=$(lab_domname g); R=$(lab_domname r)
RDISK=$(lab_disk r raw)
vsh init
check "init" test "$RC" = 0

# kill_at FUNCTION finish|entry ARGS...: runs `vmshadow ARGS` under gdb,
# stops at FUNCTION (after KILL_SKIP calls of it), and SIGKILLs it there: at
# its entry, or after it returns (finish). Function symbols suffice (no -g).
KILL_SKIP=0
kill_at() {
    local fn=$1 when=$2; shift 2
    local fin=()
    [ "$when" = finish ] && fin=(-ex finish)
    # LeakSanitizer cannot run under ptrace: an ASan build would exit 1 at the end
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    gdb -q -batch -nx -ex 'set pagination off' -ex 'set confirm off' \
        -ex "break $fn" -ex "ignore 1 $KILL_SKIP" -ex run "${fin[@]}" -ex 'signal SIGKILL' \
        --args "$VMSHADOW" "$@" >"$LAB_WORK/gdb.out" 2>&1 </dev/null
    grep -Eq "(^|hit )Breakpoint 1, .*$fn" "$LAB_WORK/gdb.out" ||
        { tail -n 30 "$LAB_WORK/gdb.out" >&2; fail "vmshadow $* never reached $fn"; }
    grep -Eq "terminated with signal SIGKILL|No such process" "$LAB_WORK/gdb.out" ||
        { tail -n 30 "$LAB_WORK/gdb.out" >&2; fail "vmshadow $* was not killed at $fn"; }
    pass "vmshadow $1 SIGKILLed at $fn ($when)"
}
frozen_status() { lab_virsh qemu-agent-command "$G" '{"execute":"guest-fsfreeze-status"}' 2>/dev/null; }
no_backup_leftovers() {
    vsh recover
    check "$1: recover exits 0" test "$RC" = 0
    check "$1: $G running" test "$(lab_state g)" = running
    check "$1: $G thawed" grep -q '"thawed"' <<<"$(frozen_status)"
    check "$1: no backup job on $G" test -z "$(lab_virsh domjobinfo "$G" | grep -i backup)"
    check "$1: $G runs on its own image again" grep -qF "$(lab_disk g)" <<<"$(lab_virsh domblklist "$G")"
    check "$1: no overlay, scratch or state file" \
        test -z "$(find "$LAB_WORK" "$VMSHADOW_STATE_DIR" -name '*.overlay' -o -name '*.scratch*' -o -name '*.save')"
    check "$1: no run directory or socket left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
    check "$1: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
    # past BackupComplete (the commit cell) release kept the set's checkpoint
    # for the next backup: it marks no backup then, and that next backup
    # deletes it (checked after the commit cell)
    [ "$2" = 0 ] && [ "${3:-}" != kept ] && check "$1: no checkpoint left (it would mark no backup)" \
        test -z "$(lab_virsh checkpoint-list "$G" --name)"
    vsh --json list
    check "$1: no backup visible (R5)" test "$(jq '.backups | length' <<<"$OUT")" = "$2"
    vsh verify
    check "$1: verify passes" test "$RC" = 0
}

# ---- backup
kill_at vmsh_hv_agent_probe entry backup "$G"
no_backup_leftovers "killed in prepare (agent probe)" 0

kill_at vmsh_hv_checkpoint_create finish backup "$G"
no_backup_leftovers "killed with the checkpoint made, beside the freeze" 0

kill_at vmsh_hv_backup_begin_xml finish backup "$G"
check "capture start: the guest was frozen when vmshadow died" grep -q '"frozen"' <<<"$(frozen_status)"
no_backup_leftovers "killed at capture start (backup job begun)" 0

kill_at vmsh_hv_restore finish backup --method saved-state "$G"
check "saved-state capture: the VM ran on its overlay when vmshadow died" \
    grep -q '\.overlay' <<<"$(lab_virsh domblklist "$G")"
no_backup_leftovers "killed at saved-state capture (overlays)" 0

kill_at vmsh_backup_commit entry backup "$G"
no_backup_leftovers "killed at commit" 0 kept
vsh --json backup "$G"
check "after the commit kill: the next backup reads in full (the kept checkpoint marks no backup)" \
    test "$(jq -r '.vms[0].disks[0].read' <<<"$OUT")" = full
check "after the commit kill: the next backup leaves only its own checkpoint" \
    test "$(lab_virsh checkpoint-list "$G" --name | grep -c .)" = 1 -a \
    -n "$(lab_virsh checkpoint-list "$G" --name | grep -E "^vmshadow-r[0-9a-f]{16}-$(jq -r .set_id <<<"$OUT")\$")"
vsh gc
check "gc after the killed commit exits 0" test "$RC" = 0

vsh backup "$G"
check "a backup after all this works" test "$RC" = 0 -a -n "$OUT"

# ---- restore (of the shut-off VM r, replaced in place: undefine, files, define)
printf 'BACKED-UP' | dd of="$RDISK" bs=1M seek=20 conv=notrunc status=none
vsh backup "$R"
RID=$OUT
check "backup of the shut-off VM" test "$RC" = 0 -a -n "$RID"
printf 'CHANGED!!' | dd of="$RDISK" bs=1M seek=20 conv=notrunc status=none
xml_before=$(lab_virsh dumpxml "$R")
sum_before=$(sha256sum <"$RDISK")
no_restore_leftovers() {
    vsh recover
    check "$1: recover exits 0" test "$RC" = 0
    check "$1: $R is defined again" sh -c "virsh -q -c $LAB_URI dominfo $R >/dev/null"
    check "$1: no temporary file of the restore is left" \
        test -z "$(find "$LAB_WORK" /var/lib/libvirt/qemu/save "$VMSHADOW_STATE_DIR" -name '*.vmshadow-restore*' -o -name 'restore-*')"
    check "$1: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
}
kill_at vmsh_hv_undefine finish restore "$RID" --force
check "after undefine: the VM was gone when vmshadow died" sh -c "! virsh -q -c $LAB_URI dominfo $R >/dev/null 2>&1"
no_restore_leftovers "restore killed after undefine"
check "its definition is the one it had" test "$(lab_virsh dumpxml "$R")" = "$xml_before"
check "its disk is untouched" test "$(sha256sum <"$RDISK")" = "$sum_before"

# the disk's file: the domain XML is restored first (into the state dir),
# so the second call is the disk's (checked just below). No condition on
# arguments: the test must not need debug information.
KILL_SKIP=1
kill_at vmsh_repo_restore_fd entry restore "$RID" --force
KILL_SKIP=0
check "file write: a temporary file existed when vmshadow died" \
    test -n "$(find "$LAB_WORK" -name '*.vmshadow-restore*')"
no_restore_leftovers "restore killed during the file write"
check "its definition is the one it had" test "$(lab_virsh dumpxml "$R")" = "$xml_before"
check "its disk is untouched" test "$(sha256sum <"$RDISK")" = "$sum_before"

kill_at vmsh_hv_define finish restore "$RID" --force
no_restore_leftovers "restore killed after define"
check "the disk holds the backup (files were in place before define)" \
    test "$(dd if="$RDISK" bs=1M skip=20 count=1 status=none | head -c 9)" = BACKED-UP

# A saved state is registered by loading it paused and letting libvirt save
# it as the managed saved state: killed with the VM loaded (paused), recover
# takes the half-registered VM out and defines the replaced one as it was.
vsh backup --method saved-state "$G"
SID=$OUT
check "saved-state backup of $G" test "$RC" = 0 -a -n "$SID"
gxml_before=$(lab_virsh dumpxml --inactive "$G")
kill_at vmsh_hv_restore finish restore "$SID" --force
check "state registration: the VM was loaded paused when vmshadow died" test "$(lab_state g)" = paused
vsh recover
check "state registration: recover exits 0" test "$RC" = 0
check "state registration: $G is not left paused or running" test "$(lab_state g)" = "shut off"
check "state registration: $G is defined as it was" test "$(lab_virsh dumpxml --inactive "$G")" = "$gxml_before"
check "state registration: no managed saved state" sh -c "! ls /var/lib/libvirt/qemu/save/$G.save* 2>/dev/null"
check "state registration: no temporary file of the restore is left" \
    test -z "$(find "$LAB_WORK" /var/lib/libvirt/qemu/save "$VMSHADOW_STATE_DIR" -name '*.vmshadow-restore*' -o -name 'restore-*')"
check "state registration: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
vsh restore "$SID" --force
check "the saved-state restore then works" test "$RC" = 0
check "and libvirt knows the managed saved state" grep -q "Managed save: *yes" <<<"$(lab_virsh dominfo "$G")"

vsh restore "$RID" --force
check "a restore after all this works" test "$RC" = 0
check "and brings the backed-up disk" \
    test "$(dd if="$RDISK" bs=1M skip=20 count=1 status=none | head -c 9)" = BACKED-UP
e2e_done
