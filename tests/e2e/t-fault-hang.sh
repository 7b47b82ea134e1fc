#!/bin/bash
# Fault matrix (issue 8): a guest agent whose freeze never returns (the
# guest's fsfreeze hook hangs: lab.hookhang=1). A guest controls its agent,
# so this is also the hostile-agent case: the backup must end by itself
# within its deadlines (the agent's freeze timeout, 60 s), abort with a
# message that names the VM and the freeze, store nothing, and leave every
# undo it could not do in the journal, so that `recover` finishes it once
# the agent answers again (here: after the guest is reset). A second VM of
# the same set (saved-state method) is back running either way.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define h --cmdline "lab.hookhang=1"
lab_guest_define s --no-agent
lab_guest_start h
lab_guest_start s
H=$(lab_domname h); S=$(lab_domname s)
vsh init
check "init" test "$RC" = 0

t0=$(date +%s)
OUT=$(timeout 600 "$VMSHADOW" backup "$H" "$S" 2>"$LAB_WORK/stderr"); RC=$?
ERR=$(cat "$LAB_WORK/stderr")
t1=$(date +%s)
echo "  backup with a hung agent ended after $((t1 - t0)) s with exit $RC"
printf '  stderr: %s\n' "$ERR" | head -n 10 >&2
check "the backup ended by itself (not killed by the test's 600 s guard)" test "$RC" != 124
check "a hung freeze aborts the set: exit 1" test "$RC" = 1
check "the message names the VM" grep -q "$H" <<<"$ERR"
check "and the freeze" grep -qi "freez" <<<"$ERR"
check "and says what to do (agent, hooks, saved-state method)" grep -q "fsfreeze hook.*--method saved-state" <<<"$ERR"
check "and does not promise that a retry may succeed" test -z "$(grep "retry may succeed" <<<"$ERR")"
check "the hook did hang in the guest" grep -q "LAB: hook hangs" "$LAB_WORK/h.console.log"
vsh --json list
check "no backup visible" test "$(jq '.backups | length' <<<"$OUT")" = 0
check "$S (saved-state) running again" test "$(lab_state s)" = running
check "$H running" test "$(lab_state h)" = running
check "no overlay or state file left" test -z "$(find "$LAB_WORK" "$VMSHADOW_STATE_DIR" -name '*.overlay' -o -name '*.save')"

# The agent still hangs: recover either proves the guest thawed or says
# clearly what it could not undo and keeps it for later.
vsh recover
if [ "$RC" = 0 ]; then
    check "recover: nothing left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
else
    check "recover with the agent still hung exits 1" test "$RC" = 1
    check "and names the freeze it could not undo" grep -q "could not undo freeze" <<<"$ERR"
    check "and says to run recover again" grep -q "run 'vmshadow recover' again" <<<"$ERR"
    check "the journal is kept for later" test -n "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
    # the administrator resets the guest; its agent answers again
    lab_virsh reset "$H" >/dev/null || lab_virsh destroy "$H" >/dev/null
    [ "$(lab_state h)" = running ] || lab_virsh start "$H" >/dev/null
    lab_wait_ready h
    vsh recover
    check "once the agent answers, recover exits 0" test "$RC" = 0
    check "and the journal is gone" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
fi
check "$H is thawed" grep -q '"thawed"' <<<"$(lab_virsh qemu-agent-command "$H" '{"execute":"guest-fsfreeze-status"}' --timeout 10)"
e2e_done
