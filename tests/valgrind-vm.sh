#!/bin/bash
# valgrind-vm.sh - the CLI's main paths with real VMs under valgrind (issue 8
# item 5; docs/reliability.md "Valgrind"): `vms`, a `backup` of one snapshot
# set over a guest-method VM (agent freeze, pull job, checkpoint, NBD copy)
# and a saved-state VM (save, overlays, restore, merge), an incremental
# backup, `restore --dry-run`, `restore --force` of both, and `recover`.
# Fails when valgrind reports a memory error or a leak (definite or
# possible) in any of them, or a command does not do its job. Exit 77
# (skipped) without valgrind.
set -u
command -v valgrind >/dev/null || { echo "valgrind is not installed: skipped"; exit 77; }
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
lab_guest_define g
lab_guest_define s --no-agent
lab_guest_start g
lab_guest_start s
G=$(lab_domname g); S=$(lab_domname s)
VG_DIR=$LAB_WORK
. "$VMSH_SOURCE_DIR/tests/valgrind-common.sh"
vg 0 init
vg 0 --json vms
vg 0 --json backup "$G" "$S"
B1=$(jq -r .backup "$VG_DIR/out")
jq -e '[.vms[].method] | sort == ["guest", "saved-state"]' "$VG_DIR/out" >/dev/null ||
    { echo "not ok - the set did not use both methods: $(cat "$VG_DIR/out")"; failed=$((failed + 1)); }
lab_gexec g 'echo after > /mnt/data/after; sync' >/dev/null
vg 0 --json backup "$G"
jq -e '.vms[0].incremental == true' "$VG_DIR/out" >/dev/null ||
    { echo "not ok - the second backup was not incremental: $(cat "$VG_DIR/out")"; failed=$((failed + 1)); }
vg 0 restore latest "$G" --dry-run
vg 0 --json restore latest "$G" --force
[ -n "$(lab_state g)" ] || { echo "not ok - $G is gone after the restore"; failed=$((failed + 1)); }
vg 0 restore "$B1" "$S" --force
vg 0 recover
vg 0 verify
vg_summary
