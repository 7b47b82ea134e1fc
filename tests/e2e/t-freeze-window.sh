#!/bin/bash
# A set's freeze window, step by step (issue 27 point 4; SPEC R2, R5,
# "Multi-VM sets that are consistent across VMs"): two guests backed up as
# one set by the guest method, full then incremental, each with the window's
# trace (VMSHADOW_FREEZE_TRACE, docs/formats/freeze-trace.md). In each:
#  - every guest froze, had its job started and thawed, once;
#  - every VM's point was taken while all were frozen: no job started before
#    every freeze had returned, no guest thawed before every job had started;
#  - the checkpoints for the next incremental were made before the window
#    (inside it, libvirtd and QEMU took from the TCG guests the CPU their
#    freezes need: bench/README.md), and the journal holds them;
#  - both guests thawed afterwards, no journal left.
# No wall-clock time is asserted: only the order of the steps.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define a
lab_guest_define b
lab_guest_start a
lab_guest_start b
A=$(lab_domname a); B=$(lab_domname b)
vsh init
check "init" test "$RC" = 0

# at TRACE VM STEP: the time of the step's first line ("" when none)
at() { awk -v vm="$2" -v s="$3" '$2 == vm && $3 == s {print $1; exit}' "$1"; }
count() { awk -v vm="$2" -v s="$3" '$2 == vm && $3 == s {n++} END {print n + 0}' "$1"; }
le() { [ -n "$1" ] && [ -n "$2" ] && [ "$1" -le "$2" ]; }

for kind in full incremental; do
    T=$LAB_WORK/trace.$kind
    VMSHADOW_FREEZE_TRACE=$T vsh --json backup --method guest "$A" "$B"
    check "$kind: the set of two backs up (exit 0)" test "$RC" = 0
    check "$kind: both by the guest method" \
        test "$(jq -r '[.vms[] | .method] | join(" ")' <<<"$OUT")" = "guest guest"
    check "$kind: a freeze window is reported" jq -e '.freeze_window_ms >= 0' <<<"$OUT"
    check "$kind: the trace has one window" test "$(count "$T" - window-start)" = 1
    ws=$(at "$T" - window-start)
    last_freeze=0 first_begin= last_begin=0 first_thaw=
    for vm in "$A" "$B"; do
        for s in freeze-sent freeze-returned begin-sent begin-returned thaw-sent thaw-returned; do
            check "$kind: $vm: $s once" test "$(count "$T" "$vm" "$s")" = 1
        done
        check "$kind: $vm: its checkpoint made before the window" \
            le "$(at "$T" "$vm" checkpoint-returned)" "$ws"
        f=$(at "$T" "$vm" freeze-returned); b=$(at "$T" "$vm" begin-sent)
        br=$(at "$T" "$vm" begin-returned); t=$(at "$T" "$vm" thaw-sent)
        [ "$f" -gt "$last_freeze" ] && last_freeze=$f
        [ "$br" -gt "$last_begin" ] && last_begin=$br
        { [ -z "$first_begin" ] || [ "$b" -lt "$first_begin" ]; } && first_begin=$b
        { [ -z "$first_thaw" ] || [ "$t" -lt "$first_thaw" ]; } && first_thaw=$t
    done
    check "$kind: no job started before every guest froze (one consistent point)" \
        le "$last_freeze" "$first_begin"
    check "$kind: no guest thawed before every job started" le "$last_begin" "$first_thaw"
    for d in "$A" "$B"; do
        check "$kind: $d thawed" grep -q '"thawed"' \
            <<<"$(lab_virsh qemu-agent-command "$d" '{"execute":"guest-fsfreeze-status"}')"
    done
    check "$kind: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
done
check "the second set was incremental for both" \
    test "$(jq -r '[.vms[] | .incremental] | join(" ")' <<<"$OUT")" = "true true"
vsh verify
check "verify passes" test "$RC" = 0
e2e_done
