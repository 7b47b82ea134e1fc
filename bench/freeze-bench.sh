#!/bin/bash
# freeze-bench.sh - the freeze window of a snapshot set of one VM and of two
# VMs, in one run (issue 27 point 4: the guests of a set freeze, start their
# jobs and thaw at once, so that the window of a set stays close to one
# VM's; target: two VMs <= 1.2x one).
# The window is what vmshadow reports as freeze_window_ms (`backup --json`,
# and the backup document): from the first guest's freeze to the last
# guest's thaw, with the checkpoints and backup jobs started in between.
# Rounds alternate which set goes first, so that neither always inherits
# the other's page cache and guest state.
# Usage (root): bench/freeze-bench.sh [ROUNDS]   (default 7; at least 5)
# Needs a built vmshadow (build/src/vmshadow, or $VMSHADOW). With
# VMSHADOW_BEFORE naming another build (e.g. of the code before a change),
# each round measures both binaries' sets too, in the same run.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-7}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
[ -x "$VMSHADOW" ] || { echo "freeze-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
. "$top/tests/lab/lab.sh"
lab_init
export VMSHADOW_REPO=$LAB_WORK/repo VMSHADOW_STATE_DIR=$LAB_WORK/state
export VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"; : > "$VMSHADOW_CONFIG"
"$VMSHADOW" -q init >/dev/null || exit 1

lab_guest_define a
lab_guest_define b
lab_guest_start a
lab_guest_start b
A=$(lab_domname a); B=$(lab_domname b)
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
span() { sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }
BINS=("$VMSHADOW")
[ -n "${VMSHADOW_BEFORE:-}" ] && BINS+=("$VMSHADOW_BEFORE")
for k in "${!BINS[@]}"; do : > "$LAB_WORK/fw.$k.1"; : > "$LAB_WORK/fw.$k.2"; done
window() { # BIN-INDEX N VM...: one guest-method backup of the set, its window
    local k=$1 n=$2 out
    shift 2
    out=$("${BINS[$k]}" --json backup --method guest "$@") ||
        { echo "freeze-bench: ${BINS[$k]} backup $* failed" >&2; exit 1; }
    [ "$n" = 0 ] || jq -r .freeze_window_ms <<<"$out" >> "$LAB_WORK/fw.$k.$n"
}
# one unmeasured backup of each set: the first is full, the rest incremental
window 0 0 "$A"; window 0 0 "$A" "$B"
for i in $(seq "$ROUNDS"); do
    for k in "${!BINS[@]}"; do
        if [ $(((i + k) % 2)) = 1 ]; then
            window "$k" 1 "$A"; window "$k" 2 "$A" "$B"
        else
            window "$k" 2 "$A" "$B"; window "$k" 1 "$A"
        fi
    done
done
echo
echo "freeze-bench: $ROUNDS rounds, TCG guests of 128 MiB, guest method, freeze window (ms)"
printf '%-28s %-6s %8s %12s %8s\n' binary set median "min-max" "2/1"
for k in "${!BINS[@]}"; do
    m1=$(median < "$LAB_WORK/fw.$k.1"); m2=$(median < "$LAB_WORK/fw.$k.2")
    ratio=$(awk -v a="$m2" -v b="$m1" 'BEGIN {printf "%.2f", a / b}')
    name=$([ "$k" = 0 ] && echo "VMSHADOW" || echo "VMSHADOW_BEFORE")
    printf '%-28s %-6s %8s %12s %8s\n' "$name" "1 VM" "$m1" "$(span < "$LAB_WORK/fw.$k.1")" ""
    printf '%-28s %-6s %8s %12s %8s\n' "$name" "2 VMs" "$m2" "$(span < "$LAB_WORK/fw.$k.2")" "$ratio"
    echo "raw $name: 1 VM [$(tr '\n' ' ' < "$LAB_WORK/fw.$k.1")] 2 VMs [$(tr '\n' ' ' < "$LAB_WORK/fw.$k.2")]"
done
m1=$(median < "$LAB_WORK/fw.0.1"); m2=$(median < "$LAB_WORK/fw.0.2")
echo "ratio 2 VMs / 1 VM: $(awk -v a="$m2" -v b="$m1" 'BEGIN {printf "%.2f", a / b}') (target <= 1.2)"
