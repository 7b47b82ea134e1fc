#!/bin/bash
# Fault matrix (issue 8): the thaw fails. The VM writer thaws the guests on
# a thread of its own while the data is copied (PostSnapshot returns at
# once), tries a failed thaw again at once, and fails the set at
# BackupComplete when it still fails: nothing is stored, and the abort's
# undo of the freeze makes sure the guest is thawed (R5, R7). Here the
# guest's fsfreeze hook exits 1 after each thaw (lab.thawfail=1), so qemu-ga
# reports every thaw as failed although the filesystems are thawed.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define t --cmdline "lab.thawfail=1"
lab_guest_start t
T=$(lab_domname t)
frozen_status() { lab_virsh qemu-agent-command "$T" '{"execute":"guest-fsfreeze-status"}' --timeout 10; }
vsh init
check "init" test "$RC" = 0

vsh backup --method guest "$T"
check "a failed thaw fails the backup: exit 1" test "$RC" = 1
check "the message names the VM" grep -q "$T" <<<"$ERR"
check "and the thaw" grep -qi "thaw" <<<"$ERR"
check "and the hook's failure" grep -qi "hook" <<<"$ERR"
check "the thaw was tried again at once, then once more by the abort" \
    test "$(grep -c "LAB: fsfreeze-hook thaw" "$LAB_WORK/t.console.log")" -ge 3
vsh --json list
check "no backup visible" test "$(jq '.backups | length' <<<"$OUT")" = 0
check "$T running" test "$(lab_state t)" = running
check "$T thawed" grep -q '"thawed"' <<<"$(frozen_status)"
check "nothing left for recover: the abort proved the guest thawed" \
    test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
check "no scratch file left" test -z "$(find "$LAB_WORK" -name '.vmshadow-*.scratch')"
vsh recover
check "recover finds nothing to do" test "$RC" = 0
e2e_done
