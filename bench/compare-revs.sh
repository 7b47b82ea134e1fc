#!/bin/bash
# compare-revs.sh - the same benchmarks on two revisions of vmshadow, side by
# side in one run (issue 21: "no slowdown beyond noise, measured side by side
# with the previous commit"). This machine's speed drifts by up to 2x within
# an hour, so the two builds alternate within every round (the order flips
# each round) and the ratio reported is the median of the rounds' own
# new/old ratios, with the spread (min..max) beside it.
#
#   repository: vmshadow-repo-tool backup of day 1, backup of day 2 (a full
#               read deduplicated against day 1), restore of day 2: the
#               library calls the VM writer makes (bench/run.sh's images);
#               wall seconds and user+sys CPU seconds (the "-cpu" rows)
#   vm (VM=1):  bench/vm-bench.sh's freeze window and saved-state downtime
#               with each build's vmshadow (needs the guest lab; root)
#
# usage: bench/compare-revs.sh OLD_REV [NEW_REV]   (NEW_REV default: HEAD)
# env:   ROUNDS=5  SIZE=1073741824  WORK=/var/tmp/vmshadow-bench  VM=0
# Builds each revision once from `git archive` into $WORK/rev-<sha>.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench/compare-revs.sh OLD_REV [NEW_REV]}
NEW=${2:-HEAD}
ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-$((1 << 30))}
WORK=${WORK:-/var/tmp/vmshadow-bench}
mkdir -p "$WORK"

build_rev() { # REV -> prints the build directory
    local sha dir
    sha=$(git -C "$top" rev-parse --verify "$1^{commit}")
    dir=$WORK/rev-${sha:0:12}
    if [ ! -x "$dir/build/bench/vmshadow-repo-tool" ] || [ ! -x "$dir/build/src/vmshadow" ]; then
        rm -rf "$dir"
        mkdir -p "$dir/src"
        git -C "$top" archive "$sha" | tar -x -C "$dir/src"
        cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DVMSH_E2E=OFF > "$dir/cmake.log" 2>&1 || { cat "$dir/cmake.log" >&2; exit 1; }
        ninja -C "$dir/build" vmshadow vmshadow-repo-tool > "$dir/build.log" 2>&1 ||
            { tail -30 "$dir/build.log" >&2; exit 1; }
    fi
    echo "$dir/build"
}

echo "building $OLD and $NEW ..." >&2
B_OLD=$(build_rev "$OLD")
B_NEW=$(build_rev "$NEW")

IMG=$WORK/images-$SIZE
if [ ! -s "$IMG/changes.json" ]; then
    echo "building images in $IMG ..." >&2
    OUTDIR=$IMG SIZE=$SIZE python3 "$top/bench/make_images.py"
fi
cat "$IMG/day1.raw" "$IMG/day2.raw" > /dev/null

RES=$WORK/compare.tsv
: > "$RES"
: > "$WORK/empty.conf"
# timed OP LABEL ROUND CMD...: one run's wall seconds (OP) and user+sys CPU
# seconds (OP-cpu: less disturbed by other load on the machine) into $RES;
# fails the script when CMD fails
timed() {
    local op=$1 label=$2 round=$3 wall user sys
    shift 3
    sync
    /usr/bin/time -f "%e %U %S" -o "$WORK/time.out" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err" ||
        { cat "$WORK/cmd.err" >&2; exit 1; }
    read -r wall user sys < "$WORK/time.out"
    printf '%s\t%s\t%s\t%s\n' "$label" "$op" "$wall" "$round" >> "$RES"
    printf '%s\t%s-cpu\t%s\t%s\n' "$label" "$op" "$(echo "$user + $sys" | bc)" "$round" >> "$RES"
}
repo_round() { # LABEL BUILD ROUND
    local label=$1 b=$2 round=$3 R=$WORK/cmp-repo-$1 out=$WORK/cmp-restore-$1.raw
    rm -rf "$R" "$out"
    "$b/src/vmshadow" --config "$WORK/empty.conf" -r "$R" init > /dev/null
    timed repo-day1 "$label" "$round" "$b/bench/vmshadow-repo-tool" backup "$R" vda="$IMG/day1.raw"
    timed repo-day2 "$label" "$round" "$b/bench/vmshadow-repo-tool" backup "$R" vda="$IMG/day2.raw"
    timed repo-restore "$label" "$round" "$b/bench/vmshadow-repo-tool" restore "$R" latest vda "$out"
    cmp "$IMG/day2.raw" "$out" || { echo "$label: restore differs from day2.raw" >&2; exit 1; }
    rm -rf "$R" "$out"
}
vm_round() { # LABEL BUILD ROUND: one round of vm-bench.sh with this build's vmshadow
    local label=$1 b=$2 round=$3 out v
    out=$(VMSHADOW=$b/src/vmshadow bash "$top/bench/vm-bench.sh" 1 2>/dev/null) ||
        { echo "vm-bench failed with $b" >&2; exit 1; }
    # "raw: freeze vmshadow [N ] virsh [M ]" and "raw: downtime vmshadow [N ] ..."
    v=$(sed -n 's/^raw: freeze vmshadow \[\([0-9.]*\).*/\1/p' <<<"$out")
    printf '%s\tvm-freeze-ms\t%s\t%s\n' "$label" "$v" "$round" >> "$RES"
    v=$(sed -n 's/^raw: downtime vmshadow \[\([0-9.]*\).*/\1/p' <<<"$out")
    printf '%s\tvm-downtime-ms\t%s\t%s\n' "$label" "$v" "$round" >> "$RES"
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for which in $order; do
        b=$B_OLD; [ "$which" = new ] && b=$B_NEW
        echo "round $round: $which" >&2
        repo_round "$which" "$b" "$round"
        [ "${VM:-0}" = 1 ] && vm_round "$which" "$b" "$round"
    done
done

echo "# $(git -C "$top" rev-parse --short "$OLD") (old) vs $(git -C "$top" rev-parse --short "$NEW") (new), $ROUNDS rounds, images of $SIZE bytes, $(nproc) CPUs"
python3 - "$RES" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ops = []
for r in rows:
    if r[1] not in ops:
        ops.append(r[1])
print(f"{'operation':<16}{'old median':>12}{'new median':>12}{'new/old':>10}  spread of the rounds' ratios")
worst = 0.0
for op in ops:
    t = {}
    for label, o, v, rnd in rows:
        if o == op:
            t.setdefault(rnd, {})[label] = float(v)
    ratios = [d["new"] / d["old"] for d in t.values() if "new" in d and "old" in d and d["old"] > 0]
    old = statistics.median(d["old"] for d in t.values() if "old" in d)
    new = statistics.median(d["new"] for d in t.values() if "new" in d)
    m = statistics.median(ratios)
    worst = max(worst, m)
    print(f"{op:<16}{old:>12.3f}{new:>12.3f}{m:>10.3f}  {min(ratios):.3f}..{max(ratios):.3f}")
print(f"worst_median_ratio={worst:.3f}")
PY
