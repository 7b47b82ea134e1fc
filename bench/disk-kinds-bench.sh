#!/bin/bash
# disk-kinds-bench.sh - capture and restore throughput of the same content
# stored as three kinds of disk (issue 25, "Benchmark"): an image file, a raw
# host block device (a loop device) and a Ceph RBD image, in one run.
#
# The content: bench/make_images.py's day1 (runs of holes, written zeros,
# text of this system's files, random data), SIZE bytes (default 4 GiB).
# Each kind is the one disk of a shut-off VM (defined, never started), so
# the capture is vmshadow's own read path for that kind: the file read
# directly (holes skipped by SEEK_DATA), the device read directly (since
# 2026-12-06 a loop device's holes are found by SEEK_DATA on its backing
# file; before, and for other devices, every byte is read), the RBD image
# through the
# private read-only qemu-nbd vmshadow starts on it (QEMU's rbd driver).
# Capture = `vmshadow backup VM` into a fresh repository; restore =
# `vmshadow extract` of that disk to a sparse file (restore in place onto an
# RBD image or a device is another helper's work: until it lands, extract is
# the restore path measured, and the table says so). Page cache dropped
# before every timed command (DROP=0 keeps it). Rounds are interleaved (the
# order of the kinds rotates each round); per-round ratios to the file's
# throughput, median and min-max. Each round's first capture of a kind is
# checked: its extract is byte-identical to the source (cmp).
#
# Usage (root, from the project's root, the lab's Ceph running:
#   . tests/lab/ceph.sh; ceph_lab_need  or CEPH_CONF and VMSH_CEPH_POOL set):
#   bench/disk-kinds-bench.sh [ROUNDS]   (default 3; VMSHADOW names the
#   binary, WORK the scratch directory, default /var/tmp/vmshadow-kinds-bench,
#   SIZE the content's size in bytes, LOOP_DIO=0 a buffered loop device,
#   SOURCE an existing day1.raw of that
#   size to copy instead of generating it)
# Everything it defines or creates is removed at exit (loop device, RBD
# image, domains, repositories), except the source image (kept for re-runs).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
WORK=${WORK:-/var/tmp/vmshadow-kinds-bench}
SIZE=${SIZE:-4294967296}
DROP=${DROP:-1}
[ "$(id -u)" = 0 ] || { echo "disk-kinds-bench: run as root (qemu:///system)" >&2; exit 2; }
[ -x "$VMSHADOW" ] || { echo "disk-kinds-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
[ -n "${CEPH_CONF:-}" ] && [ -n "${VMSH_CEPH_POOL:-}" ] ||
    { echo "disk-kinds-bench: CEPH_CONF and VMSH_CEPH_POOL must name a Ceph and a pool" >&2; exit 2; }
for t in rbd losetup virsh jq cmp python3; do
    command -v $t >/dev/null || { echo "disk-kinds-bench: $t is needed" >&2; exit 2; }
done
export CEPH_CONF

ID=vmsh-kbench-$$
RUN=$WORK/run.$$
IMG=$ID
LOOP=
mkdir -p "$WORK/img" "$RUN"
cleanup() {
    for k in file block rbd; do
        virsh -q -c qemu:///system undefine "$ID-$k" >/dev/null 2>&1
    done
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    rbd -p "$VMSH_CEPH_POOL" rm "$IMG" >/dev/null 2>&1 9>&-
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SOURCE: an existing day1.raw of make_images.py (same SIZE, default seed)
# is copied instead of generated again
if [ -n "${SOURCE:-}" ] && [ "$(stat -c %s "$SOURCE" 2>/dev/null)" = "$SIZE" ] &&
    [ "$(cat "$WORK/img/size" 2>/dev/null)" != "$SIZE" ]; then
    rm -f "$WORK/img/"*
    cp --sparse=always "$SOURCE" "$WORK/img/day1.raw" && echo "$SIZE" >"$WORK/img/size"
fi
if [ ! -f "$WORK/img/day1.raw" ] || [ "$(cat "$WORK/img/size" 2>/dev/null)" != "$SIZE" ]; then
    rm -f "$WORK/img/"*
    OUTDIR=$WORK/img SIZE=$SIZE CHANGE=0 python3 "$top/bench/make_images.py" >/dev/null || exit 1
    rm -f "$WORK/img/day2.raw"
    echo "$SIZE" >"$WORK/img/size"
fi
SRC=$WORK/img/day1.raw
cp --sparse=always "$SRC" "$RUN/file.raw"
cp --sparse=always "$SRC" "$RUN/block.backing"
# LOOP_DIO=1 (default): the loop device reads its backing file with direct
# I/O, as a real device (an LV, a partition) has no second page cache below
# it; LOOP_DIO=0: buffered, through the backing file's page cache
LOOP=$(losetup --find --show --direct-io="$([ "${LOOP_DIO:-1}" = 1 ] && echo on || echo off)" \
    "$RUN/block.backing") || exit 1
rbd -p "$VMSH_CEPH_POOL" import --image-format 2 "$SRC" "$IMG" >/dev/null 2>&1 9>&- ||
    { echo "disk-kinds-bench: rbd import into $VMSH_CEPH_POOL failed (is the pool full?)" >&2; exit 1; }
MON=$(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
set -- $MON
MON_HOST=${1:-127.0.0.1} MON_PORT=${2:-6789}

define() { # define KIND DISK-XML
    cat >"$RUN/$1.xml" <<XML
<domain type='qemu'>
  <name>$ID-$1</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>$2</devices>
</domain>
XML
    virsh -q -c qemu:///system define "$RUN/$1.xml" >/dev/null || exit 1
}
define file "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$RUN/file.raw'/><target dev='vda' bus='virtio'/></disk>"
define block "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='$LOOP'/><target dev='vda' bus='virtio'/></disk>"
define rbd "<disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' usage='vmshadow-kinds-bench'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$IMG'><host name='$MON_HOST' port='$MON_PORT'/></source><target dev='vda' bus='virtio'/></disk>"

export VMSHADOW_STATE_DIR=$RUN/state VMSHADOW_WRITERS_DIR=$RUN/writers.d
export VMSHADOW_CONFIG=$RUN/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"
: >"$VMSHADOW_CONFIG"

drop() { sync; [ "$DROP" = 1 ] && echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mbs() { python3 -c "import sys; print('%.1f' % ($SIZE / 1048576 / float(sys.argv[1])))" "$1"; }

: >"$RUN/results"
KINDS=(file block rbd)
for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        k=${KINDS[$(((i + r - 1) % 3))]}
        export VMSHADOW_REPO=$RUN/repo-$k
        rm -rf "$VMSHADOW_REPO"
        "$VMSHADOW" -q init >/dev/null || exit 1
        drop
        t0=$(now)
        out=$("$VMSHADOW" --json backup "$ID-$k" 2>"$RUN/err") ||
            { echo "disk-kinds-bench: backup of the $k disk failed: $(cat "$RUN/err")" >&2; exit 1; }
        t1=$(now)
        b=$(jq -r .backup <<<"$out")
        rm -f "$RUN/out.raw"
        drop
        t2=$(now)
        "$VMSHADOW" -q extract "$b" "$ID-$k/disk/vda" "$RUN/out.raw" 2>"$RUN/err" ||
            { echo "disk-kinds-bench: extract of the $k disk failed: $(cat "$RUN/err")" >&2; exit 1; }
        sync
        t3=$(now)
        if [ "$r" = 1 ]; then
            cmp -s "$RUN/out.raw" "$SRC" ||
                { echo "disk-kinds-bench: the $k disk's extract differs from the source" >&2; exit 1; }
        fi
        ct=$(python3 -c "print($t1 - $t0)") rt=$(python3 -c "print($t3 - $t2)")
        echo "$r $k $ct $rt" >>"$RUN/results"
        printf 'round %s %-5s capture %6.2f s %8s MiB/s   restore(extract) %6.2f s %8s MiB/s\n' \
            "$r" "$k" "$ct" "$(mbs "$ct")" "$rt" "$(mbs "$rt")"
        rm -f "$RUN/out.raw"
        rm -rf "$VMSHADOW_REPO"
    done
done

python3 - "$RUN/results" "$SIZE" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
size = int(sys.argv[2]) / 1048576
t = {}
for r, k, c, x in rows:
    t.setdefault(int(r), {})[k] = (float(c), float(x))
def med(v):
    return "%.2f (%.2f-%.2f)" % (statistics.median(v), min(v), max(v))
print("\n%d rounds, %.0f MiB of content" % (len(t), size))
print("%-6s %-26s %-26s" % ("kind", "capture MiB/s med (min-max)", "restore MiB/s med (min-max)"))
for k in ("file", "block", "rbd"):
    print("%-6s %-26s %-26s" % (k, med([size / t[r][k][0] for r in t]),
                                med([size / t[r][k][1] for r in t])))
for k, goal in (("block", 0.8), ("rbd", 0.5)):
    cap = [t[r]["file"][0] / t[r][k][0] for r in t]
    res = [t[r]["file"][1] / t[r][k][1] for r in t]
    print("%s/file throughput ratio: capture %s, restore %s (target >= %.1f)" %
          (k, med(cap), med(res), goal))
PY
