#!/bin/bash
# bench/full-bench.sh - issue 27 point 5: the full backup of the 4 GiB
# benchmark image (bench/make_images.py's day1.raw) by vmshadow's repository
# path (vmshadow-repo-tool: the calls the VM writer makes), restic and borg
# (zstd,3, unencrypted), in one run, round by round: every round backs up
# the image once with each tool into a fresh repository, the tools' order
# rotating from round to round (so that none always follows the same one).
# Reports each tool's wall and CPU time (median [min-max]), and the medians
# of the rounds' own ratios with their spread: on a shared machine the
# ratio of one round is steadier than a ratio of medians.
#
# usage: bench/full-bench.sh [BUILD_DIR]   (default ./build)
# env:   ROUNDS=5  WORK=/var/tmp/vmshadow-bench  SIZE=4294967296
#        BEFORE=OTHER-REPO-TOOL: also times another build of the repo tool
#          (e.g. main's) in every round, reported as "before"
#        COLD=1: drop the page cache before every backup (root)
#        SKIP_OTHERS=1: vmshadow (and BEFORE) only
# needs: restic, borg (Debian: restic, borgbackup; bench/debian-packages.txt),
#        GNU time, python3; ~4 GB free under $WORK (one repository at a time)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$here/../build}
TOOL=$BUILD/bench/vmshadow-repo-tool
VMSHADOW=$BUILD/src/vmshadow
WORK=${WORK:-/var/tmp/vmshadow-bench}
SIZE=${SIZE:-$((4 << 30))}
ROUNDS=${ROUNDS:-5}
[ -x "$TOOL" ] || { echo "build first: $TOOL is missing" >&2; exit 1; }
tools="vmshadow"
[ -n "${BEFORE:-}" ] && tools="$tools before"
if [ -z "${SKIP_OTHERS:-}" ]; then
    for t in restic borg; do
        command -v $t > /dev/null || { echo "$t is missing (scripts/install-deps.sh bench/debian-packages.txt)" >&2; exit 1; }
    done
    tools="$tools restic borg"
fi
mkdir -p "$WORK"
IMG=$WORK/images-$SIZE
if [ ! -s "$IMG/changes.json" ]; then
    echo "building images in $IMG ..." >&2
    OUTDIR=$IMG SIZE=$SIZE python3 "$here/make_images.py"
fi
RES=$WORK/full${COLD:+-cold}.tsv
: > "$RES"
LOADS=$WORK/full-load.txt
: > "$LOADS"

backup() { # TOOL: one full backup of day1.raw into a fresh repository, timed
    local t=$1 repo=$WORK/full-repo-$1
    rm -rf "$repo" "$WORK/full-cache"
    case $t in
    vmshadow | before) "$VMSHADOW" --config /dev/null -r "$repo" init > /dev/null ;;
    restic) RESTIC_PASSWORD=bench restic -r "$repo" --cache-dir "$WORK/full-cache" init -q ;;
    borg) BORG_BASE_DIR=$WORK/full-cache borg init -e none "$repo" ;;
    esac
    local cmd
    case $t in
    vmshadow) cmd=("$TOOL" backup "$repo" vda="$IMG/day1.raw") ;;
    before) cmd=("$BEFORE" backup "$repo" vda="$IMG/day1.raw") ;;
    restic) cmd=(env RESTIC_PASSWORD=bench restic -r "$repo" --cache-dir "$WORK/full-cache" backup -q "$IMG/day1.raw") ;;
    borg) cmd=(env BORG_BASE_DIR=$WORK/full-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
        borg create --compression zstd,3 "$repo::day1" "$IMG/day1.raw") ;;
    esac
    sync
    if [ -n "${COLD:-}" ]; then echo 3 > /proc/sys/vm/drop_caches; else cat "$IMG/day1.raw" > /dev/null; fi
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/full-time.out" "${cmd[@]}" > "$WORK/full-cmd.out" 2> "$WORK/full-cmd.err" ||
        { echo "$t failed:" >&2; cat "$WORK/full-cmd.err" >&2; exit 1; }
    read -r wall user sys rss < "$WORK/full-time.out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$t" "$wall" "$(echo "$user + $sys" | bc)" "$rss" "$(du -sb "$repo" | cut -f1)" >> "$RES"
    rm -rf "$repo" "$WORK/full-cache"
}

read -r -a arr <<< "$tools"
n=${#arr[@]}
start=$(date +%s)
for ROUND in $(seq "$ROUNDS"); do
    echo "round $ROUND: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOADS" >&2
    # rotate the order: round r starts with tool (r-1) mod n
    for i in $(seq 0 $((n - 1))); do backup "${arr[$(((ROUND - 1 + i) % n))]}"; done
done
echo "end: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOADS" >&2

python3 - "$RES" "$SIZE" "$ROUNDS" "$(($(date +%s) - start))" "$LOADS" <<'PY' | tee "$WORK/full${COLD:+-cold}.md"
import statistics, sys
res, size, rounds, secs, loads = sys.argv[1:6]
size = int(size)
by = {}
for line in open(res):
    rnd, tool, wall, cpu, rss, repo = line.split("\t")
    by.setdefault(tool, {})[int(rnd)] = (float(wall), float(cpu), int(rss) / 1024, int(repo))
def span(v):
    return f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
print(f"full backup of day1.raw ({size / 2**30:.1f} GiB logical), {rounds} rounds, "
      f"order rotating; {secs} s in all; load average per round: "
      + "; ".join(l.strip() for l in open(loads)))
print()
print("| tool | wall s | MB/s (median) | CPU s | peak RSS MiB | repository MB |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for tool, r in by.items():
    w = [x[0] for x in r.values()]
    c = [x[1] for x in r.values()]
    print(f"| {tool} | {span(w)} | {size / statistics.median(w) / 1e6:.0f} | {span(c)} | "
          f"{max(x[2] for x in r.values()):.0f} | {statistics.median(x[3] for x in r.values()) / 1e6:.0f} |")
print()
v = by["vmshadow"]
for other in ("before", "restic", "borg"):
    if other not in by:
        continue
    o = by[other]
    rw = [o[k][0] / v[k][0] for k in v if k in o]
    rc = [o[k][1] / v[k][1] for k in v if k in o]
    print(f"- {other} / vmshadow, per round: wall {statistics.median(rw):.2f}x "
          f"[{min(rw):.2f}-{max(rw):.2f}] ({' '.join(f'{x:.2f}' for x in rw)}); "
          f"CPU {statistics.median(rc):.2f}x [{min(rc):.2f}-{max(rc):.2f}]")
PY
