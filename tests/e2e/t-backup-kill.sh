#!/bin/bash
# Never strand a VM (SPEC R7), issue 5: vmshadow is SIGKILLed during the
# freeze, during the save and during the data copy; `vmshadow recover` then
# leaves no VM frozen, paused, saved or with a backup job, no partial backup
# is visible, and verify passes.
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

lab_guest_define g
lab_guest_define s --no-agent
lab_guest_start g
lab_guest_start s
G=$(lab_domname g); S=$(lab_domname s)
vsh init
check "init" test "$RC" = 0

# A script writer that blocks at EVENT, so that the test can kill vmshadow there.
holder() {
    rm -f "$VMSHADOW_WRITERS_DIR"/*.conf "$SLEEPER"
    [ -n "$1" ] || return 0
    cat > "$VMSHADOW_WRITERS_DIR/holder.conf" <<EOW
name = holder
$1 = sh -c 'echo \$\$ > $SLEEPER; exec sleep 300'
timeout = 600
EOW
}
start_backup() { "$VMSHADOW" backup "$@" >/dev/null 2>"$LAB_WORK/bg.err" & BG=$!; }
kill_backup() {
    kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
    [ -s "$SLEEPER" ] && kill -9 "$(cat "$SLEEPER")" 2>/dev/null
    rm -f "$SLEEPER"
}
wait_for() { # wait_for WHAT COMMAND...: up to 60 s
    local what=$1; shift
    for _ in $(seq 3000); do "$@" && return 0; sleep 0.02; done
    fail "timed out waiting for $what: $(cat "$LAB_WORK/bg.err")"
}
frozen() { lab_virsh qemu-agent-command "$G" '{"execute":"guest-fsfreeze-status"}' 2>/dev/null | grep -q '"frozen"'; }
no_leftovers() {
    check "$1: $G running and thawed" test "$(lab_state g)" = running
    check "$1: $G thawed" grep -q '"thawed"' <<<"$(lab_virsh qemu-agent-command "$G" '{"execute":"guest-fsfreeze-status"}')"
    check "$1: $S running" test "$(lab_state s)" = running
    for d in "$G" "$S"; do
        check "$1: no backup job on $d" test -z "$(lab_virsh domjobinfo "$d" | grep -i backup)"
    done
    check "$1: no scratch file" test -z "$(ls -A "$LAB_WORK" | grep -F .scratch)"
    check "$1: no state file or socket" test -z "$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
    check "$1: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
    vsh --json list
    check "$1: no backup visible" test "$(jq '.backups | length' <<<"$OUT")" = 0
    vsh verify
    check "$1: verify passes" test "$RC" = 0
}

# 1. During the freeze: the guest is frozen, a script writer's freeze blocks.
holder freeze
start_backup "$G" "$S"
wait_for "the freeze" test -s "$SLEEPER"
check "the guest is frozen when vmshadow dies" frozen
kill_backup
vsh recover
check "recover after a kill during the freeze exits 0" test "$RC" = 0
no_leftovers "killed during freeze"

# 2. During the save: kill as soon as libvirt starts writing the state file
#    (a file test, cheap enough to poll fast; the save takes over a second).
holder ""
start_backup "$S"
wait_for "the save" sh -c "ls $VMSHADOW_STATE_DIR/run/*/vm0.state >/dev/null 2>&1"
echo "  when killed: $(virsh -c "$LAB_URI" domjobinfo "$S" 2>/dev/null | grep 'Job type' | tr -s ' ') / $(lab_state s)"
kill_backup
vsh recover
check "recover after a kill during the save exits 0" test "$RC" = 0
no_leftovers "killed during save"
check "the saved VM was not rebooted" test "$(grep -c 'LAB: ready' "$LAB_WORK/s.console.log")" = 1

# 3. During the data copy: VMs are back, backup jobs export the disks.
holder post-snapshot
start_backup "$G" "$S"
wait_for "post-snapshot" test -s "$SLEEPER"
check "a backup job runs when vmshadow dies" sh -c "virsh -c $LAB_URI domjobinfo $G | grep -qi backup"
kill_backup
# Any command recovers first; use 'list' here.
vsh --json list
check "the next command (list) recovers first" test "$RC" = 0
no_leftovers "killed during copy"

# And a backup afterwards works.
holder ""
vsh --json backup "$G" "$S"
check "a backup after recovery works" test "$RC" = 0
e2e_done
