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
# Every measured backup also writes the trace of its window's steps
# (VMSHADOW_FREEZE_TRACE, docs/formats/freeze-trace.md): the end of the run
# prints, per binary and set, each step's median time since the window's
# start and each VM's calls' durations (bench/freeze-steps.py). A binary
# from before the trace existed writes none: its rows are missing.
# FREEZE_TRACE_KEEP=DIR copies the traces there.
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
round=0
window() { # BIN-INDEX N VM...: one guest-method backup of the set, its window
    local k=$1 n=$2 out trace=/dev/null
    shift 2
    [ "$n" = 0 ] || trace=$LAB_WORK/trace.$k.$n.$round
    out=$(VMSHADOW_FREEZE_TRACE=$trace "${BINS[$k]}" --json backup --method guest "$@") ||
        { echo "freeze-bench: ${BINS[$k]} backup $* failed" >&2; exit 1; }
    [ "$n" = 0 ] || jq -r .freeze_window_ms <<<"$out" >> "$LAB_WORK/fw.$k.$n"
}
# one unmeasured backup of each set: the first is full, the rest incremental
window 0 0 "$A"; window 0 0 "$A" "$B"
echo "freeze-bench: load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$ROUNDS"); do
    round=$i
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
for k in "${!BINS[@]}"; do
    name=$([ "$k" = 0 ] && echo "VMSHADOW" || echo "VMSHADOW_BEFORE")
    for n in 1 2; do
        ls "$LAB_WORK"/trace."$k.$n".* >/dev/null 2>&1 || continue
        echo
        echo "steps of $name, set of $n VM(s) (a=$A b=$B):"
        python3 "$top/bench/freeze-steps.py" a="$A" b="$B" -- "$LAB_WORK"/trace."$k.$n".*
    done
done
if [ -n "${FREEZE_TRACE_KEEP:-}" ]; then
    mkdir -p "$FREEZE_TRACE_KEEP" && cp "$LAB_WORK"/trace.* "$FREEZE_TRACE_KEEP"/
fi
echo "freeze-bench: load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
# per-round ratios (the machine is shared: a round's two sets ran side by
# side, so their ratio is steadier than the ratio of medians)
per_round() { paste "$1" "$2" | awk '{printf "%.3f\n", $1 / $2}'; }
for k in "${!BINS[@]}"; do
    name=$([ "$k" = 0 ] && echo "VMSHADOW" || echo "VMSHADOW_BEFORE")
    per_round "$LAB_WORK/fw.$k.2" "$LAB_WORK/fw.$k.1" > "$LAB_WORK/r.$k"
    echo "$name: per-round 2 VMs / 1 VM: median $(median < "$LAB_WORK/r.$k") [$(span < "$LAB_WORK/r.$k")]"
done
if [ "${#BINS[@]}" = 2 ]; then
    for n in 1 2; do
        per_round "$LAB_WORK/fw.0.$n" "$LAB_WORK/fw.1.$n" > "$LAB_WORK/rb.$n"
        echo "VMSHADOW / VMSHADOW_BEFORE, $n VM(s): per-round median $(median < "$LAB_WORK/rb.$n") [$(span < "$LAB_WORK/rb.$n")]"
    done
fi
m1=$(median < "$LAB_WORK/fw.0.1"); m2=$(median < "$LAB_WORK/fw.0.2")
echo "ratio 2 VMs / 1 VM: $(awk -v a="$m2" -v b="$m1" 'BEGIN {printf "%.2f", a / b}') (target <= 1.2)"
