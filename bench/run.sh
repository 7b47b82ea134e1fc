#!/bin/bash
# bench/run.sh - one command: builds the images (bench/make_images.py), then
# in one run times vmshadow's repository path (vmshadow-repo-tool: the same
# library calls the VM writer makes) against restic and borg (zstd,3) on the
# same images: day-1 full backup, day-2 backup, restore of day 2; prints
# times, MB/s over the logical size, CPU seconds, peak memory, repository
# growth and the ratios. Results go to stdout and $WORK/results.md.
#
# usage: bench/run.sh [BUILD_DIR]    (default: ./build)
# env:   WORK=/var/tmp/vmshadow-bench  SIZE=4294967296  SEED=1  REPEAT=3
#        SKIP_OTHERS=1 (vmshadow only)
#        COLD=1: drop the page cache before every operation (root), as when the
#        images and repositories are not in memory; default: images cached
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$here/../build}
TOOL=$BUILD/bench/vmshadow-repo-tool
WORK=${WORK:-/var/tmp/vmshadow-bench}
SIZE=${SIZE:-$((4 << 30))}
REPEAT=${REPEAT:-3}
[ -x "$TOOL" ] || { echo "build first: $TOOL is missing" >&2; exit 1; }
mkdir -p "$WORK"
IMG=$WORK/images-$SIZE
if [ ! -s "$IMG/changes.json" ]; then
    echo "building images in $IMG ..." >&2
    OUTDIR=$IMG SIZE=$SIZE python3 "$here/make_images.py"
fi
# the images in the page cache for every tool alike (unless COLD)
[ -n "${COLD:-}" ] || cat "$IMG/day1.raw" "$IMG/day2.raw" > /dev/null

RES=$WORK/results${COLD:+-cold}.tsv
: > "$RES"
# measure TOOL OP CMD...: wall, user+sys CPU, peak RSS, appended to $RES
measure() {
    local tool=$1 op=$2; shift 2
    sync
    if [ -n "${COLD:-}" ]; then echo 3 > /proc/sys/vm/drop_caches; fi
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time.out" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err" ||
        { echo "$tool $op failed:" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
    read -r wall user sys rss < "$WORK/time.out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$op" "$wall" "$(echo "$user + $sys" | bc)" "$rss" "$ROUND" >> "$RES"
}
du_b() { du -sb "$1" | cut -f1; }
grow() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$WORK/growth.tsv"; }
: > "$WORK/growth.tsv"

# what changed, compressed (zstd -3), for the day-2 growth target
changed_z=$(python3 - "$IMG" <<'PY'
import json, os, subprocess, sys
d = sys.argv[1]
ch = json.load(open(os.path.join(d, "changes.json")))
blocks = set()
for off, ln, _ in ch["regions"]:
    blocks.update(range(off // 4096, (off + ln) // 4096))
fd = os.open(os.path.join(d, "day2.raw"), os.O_RDONLY)
p = subprocess.Popen(["zstd", "-3", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
import threading
out = []
t = threading.Thread(target=lambda: out.append(len(p.stdout.read())))
t.start()
for b in sorted(blocks):
    p.stdin.write(os.pread(fd, 4096, b * 4096))
p.stdin.close(); t.join(); p.wait()
print(out[0])
PY
)

run_vmshadow() {
    # ---- vmshadow ----
    R=$WORK/vmshadow-repo
    rm -rf "$R" "$WORK/restore"
    : > "$WORK/empty.conf"
    "$BUILD/src/vmshadow" --config "$WORK/empty.conf" -r "$R" init > /dev/null
    s0=$(du_b "$R")
    measure vmshadow day1 "$TOOL" backup "$R" vda="$IMG/day1.raw"
    s1=$(du_b "$R"); grow vmshadow day1 $((s1 - s0))
    measure vmshadow day2 "$TOOL" backup "$R" vda="$IMG/day2.raw"
    s2=$(du_b "$R"); grow vmshadow day2 $((s2 - s1))
    mkdir -p "$WORK/restore"
    measure vmshadow restore "$TOOL" restore "$R" latest vda "$WORK/restore/day2.raw"
    cmp "$IMG/day2.raw" "$WORK/restore/day2.raw" || { echo "vmshadow restore differs!" >&2; exit 1; }
    alloc_v=$(( $(stat -c %b "$WORK/restore/day2.raw") * 512 ))
    rm -rf "$WORK/restore"

}

run_restic() {
    # ---- restic ----
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic-repo RESTIC_CACHE_DIR=$WORK/restic-cache
    rm -rf "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"
    restic init -q
    s0=$(du_b "$RESTIC_REPOSITORY")
    measure restic day1 restic backup -q "$IMG/day1.raw"
    s1=$(du_b "$RESTIC_REPOSITORY"); grow restic day1 $((s1 - s0))
    measure restic day2 restic backup -q "$IMG/day2.raw"
    s2=$(du_b "$RESTIC_REPOSITORY"); grow restic day2 $((s2 - s1))
    mkdir -p "$WORK/restore"
    measure restic restore restic restore -q latest --target "$WORK/restore"
    cmp "$IMG/day2.raw" "$WORK/restore/$IMG/day2.raw" || { echo "restic restore differs" >&2; exit 1; }
    rm -rf "$WORK/restore" "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"

}

run_borg() {
    # ---- borg ----
    export BORG_REPO=$WORK/borg-repo BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    export BORG_BASE_DIR=$WORK/borg-base
    rm -rf "$BORG_REPO" "$BORG_BASE_DIR"
    borg init -e none
    s0=$(du_b "$BORG_REPO")
    measure borg day1 borg create --compression zstd,3 ::day1 "$IMG/day1.raw"
    s1=$(du_b "$BORG_REPO"); grow borg day1 $((s1 - s0))
    measure borg day2 borg create --compression zstd,3 ::day2 "$IMG/day2.raw"
    s2=$(du_b "$BORG_REPO"); grow borg day2 $((s2 - s1))
    mkdir -p "$WORK/restore"
    (cd "$WORK/restore" && measure borg restore borg extract --sparse ::day2)
    cmp "$IMG/day2.raw" "$WORK/restore/${IMG#/}/day2.raw" || { echo "borg restore differs" >&2; exit 1; }
    rm -rf "$WORK/restore" "$BORG_REPO" "$BORG_BASE_DIR"
}

# Each round runs every tool once (fresh repositories); the table shows the
# median of the rounds, which tames the noise of a shared machine.
for round in $(seq "$REPEAT"); do
    ROUND=$round
    : > "$WORK/growth.tsv"
    run_vmshadow
    if [ -z "${SKIP_OTHERS:-}" ]; then
        run_restic
        run_borg
    fi
done

python3 - "$RES" "$WORK/growth.tsv" "$SIZE" "$changed_z" "$alloc_v" "$IMG/changes.json" <<'PY' | tee "$WORK/results${COLD:+-cold}.md"
import json, sys
res, growth, size, changed_z, alloc_v, ch = sys.argv[1:7]
size = int(size); changed_z = int(changed_z)
import statistics
runs = {}
for line in open(res):
    tool, op, wall, cpu, rss, rnd = line.split("\t")
    runs.setdefault((tool, op), []).append((float(wall), float(cpu), int(rss) / 1024))
t = {}
for k, v in runs.items():
    t[k] = (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
            max(x[2] for x in v))
rounds = max(len(v) for v in runs.values())
g = {}
for line in open(growth):
    tool, op, b = line.split("\t")
    g[(tool, op)] = int(b)
changed = json.load(open(ch))["changed_bytes"]
print(f"images: {size / 2**30:.1f} GiB logical; day 2 changed {changed / 1e6:.0f} MB "
      f"({changed_z / 1e6:.1f} MB with zstd -3); median of {rounds} rounds "
      f"(wall: min-max in brackets)\n")
print("| tool | operation | wall s | MB/s | CPU s | peak RSS MiB | repository growth MB |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for tool in ("vmshadow", "restic", "borg"):
    for op in ("day1", "day2", "restore"):
        if (tool, op) not in t:
            continue
        w, c, m = t[(tool, op)]
        gr = f"{g[(tool, op)] / 1e6:.0f}" if (tool, op) in g else ""
        ws = [x[0] for x in runs[(tool, op)]]
        print(f"| {tool} | {op} | {w:.2f} [{min(ws):.2f}-{max(ws):.2f}] | {size / w / 1e6:.0f} | "
              f"{c:.1f} | {m:.0f} | {gr} |")
print()
v = lambda op: t[("vmshadow", op)][0]
for other in ("restic", "borg"):
    if (other, "day1") in t:
        print(f"- vs {other}: day-1 {t[(other, 'day1')][0] / v('day1'):.1f}x, "
              f"day-2 {t[(other, 'day2')][0] / v('day2'):.1f}x, "
              f"restore {t[(other, 'restore')][0] / v('restore'):.1f}x faster; "
              f"day-2 growth {g[(other, 'day2')] / max(g[('vmshadow', 'day2')], 1):.1f}x vmshadow's")
print(f"- vmshadow day-2 growth: {g[('vmshadow', 'day2')] / 1e6:.1f} MB = "
      f"{g[('vmshadow', 'day2')] / changed_z:.2f}x the compressed size of what changed (target <= 1.5)")
print(f"- vmshadow restore: byte-identical, sparse ({int(alloc_v) / 1e6:.0f} MB allocated)")
print(f"- vmshadow peak memory: {max(t[('vmshadow', op)][2] for op in ('day1', 'day2', 'restore')):.0f} MiB (target <= 256)")
PY
