#!/bin/bash
# store-bench.sh - the repository's stores compared (issue 26): backup of the
# benchmark's day-1 image (bench/make_images.py) and its restore, into a
# local directory, rados:// and s3+http:// (radosgw) of the single-node Ceph
# lab (tests/lab/ceph.sh: reused, or started and stopped here), and restic's
# S3 backend on the same gateway when restic is installed. Prints wall times,
# MB/s over the image's logical size, peak memory, and the ratios the issue
# targets: RADOS >= 0.7x the local repository's throughput, S3 >= 3x
# restic's.
#
# usage: bench/store-bench.sh [BUILD_DIR]      (default ./build; root)
# env:   WORK=/var/tmp/vmshadow-store-bench  SIZE=1073741824  STORE_THREADS=2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$here/../build}
TOOL=$BUILD/bench/vmshadow-repo-tool
WORK=${WORK:-/var/tmp/vmshadow-store-bench}
SIZE=${SIZE:-$((1 << 30))}
export VMSHADOW_STORE_THREADS=${STORE_THREADS:-2}
[ -x "$TOOL" ] || { echo "build first: $TOOL is missing" >&2; exit 1; }
. "$here/../tests/lab/ceph.sh"
trap 'ceph_lab_release' EXIT
ceph_lab_need
mkdir -p "$WORK"
IMG=$WORK/images-$SIZE
[ -s "$IMG/changes.json" ] || OUTDIR=$IMG SIZE=$SIZE python3 "$here/make_images.py" >&2
cat "$IMG/day1.raw" >/dev/null
U=bench-$$
RES=$WORK/results.tsv
: >"$RES"
measure() { # NAME OP CMD...
    local name=$1 op=$2
    shift 2
    sync
    /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >"$WORK/cmd.out" 2>"$WORK/cmd.err" ||
        { echo "$name $op failed:" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
    read -r wall rss <"$WORK/time.out"
    printf '%s\t%s\t%s\t%s\n' "$name" "$op" "$wall" "$rss" >>"$RES"
    awk -v n="$name" -v o="$op" -v w="$wall" -v r="$rss" -v s="$SIZE" \
        'BEGIN{printf "%-8s %-8s %7.2f s %8.1f MB/s  %6.0f MiB peak\n", n, o, w, s/w/1e6, r/1024}'
}
run_vmshadow() { # NAME REPO
    local name=$1 repo=$2
    "$BUILD/src/vmshadow" --config /dev/null -r "$repo" init >/dev/null
    measure "$name" backup "$TOOL" backup "$repo" "disk.img=$IMG/day1.raw"
    rm -f "$WORK/out.raw"
    measure "$name" restore "$TOOL" restore "$repo" latest disk.img "$WORK/out.raw"
    cmp -s "$IMG/day1.raw" "$WORK/out.raw" || { echo "$name: restore differs" >&2; exit 1; }
    rm -f "$WORK/out.raw"
}
rm -rf "$WORK/local"
run_vmshadow local "$WORK/local"
run_vmshadow rados "rados://$VMSH_CEPH_POOL/$U"
run_vmshadow s3 "s3+http://$VMSH_S3_ENDPOINT/$U/repo"
if command -v restic >/dev/null; then
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:http://$VMSH_S3_ENDPOINT/$U-restic
    restic init >/dev/null 2>&1
    measure restic backup restic backup "$IMG/day1.raw"
    measure restic restore restic restore latest --target "$WORK/restic-out"
    rm -rf "$WORK/restic-out"
fi
echo
awk -F'\t' '{t[$1" "$2]=$3} END {
    printf "RADOS/local throughput: backup %.2fx, restore %.2fx (target >= 0.7x)\n",
        t["local backup"]/t["rados backup"], t["local restore"]/t["rados restore"];
    printf "S3/local throughput:    backup %.2fx, restore %.2fx\n",
        t["local backup"]/t["s3 backup"], t["local restore"]/t["s3 restore"];
    if (t["restic backup"])
        printf "S3 vs restic S3:        backup %.2fx, restore %.2fx (target >= 3x)\n",
            t["restic backup"]/t["s3 backup"], t["restic restore"]/t["s3 restore"];
    else print "restic: not installed (apt-get install restic) - no comparison" }' "$RES"
# the benchmark's objects go; the lab's pool and gateway stay
rados -p "$VMSH_CEPH_POOL" ls 2>/dev/null | grep "^$U/" | xargs -r -n 64 rados -p "$VMSH_CEPH_POOL" rm
radosgw-admin bucket rm --bucket="$U" --purge-objects >/dev/null 2>&1 || true
radosgw-admin bucket rm --bucket="$U-restic" --purge-objects >/dev/null 2>&1 || true
rm -rf "$WORK/local"
