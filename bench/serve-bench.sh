#!/bin/bash
# bench/serve-bench.sh BUILD_DIR - `vmshadow serve` (nbdkit + vmshadow's
# plugin reading the repository) against `qemu-nbd` serving the raw image,
# in one run (issue 23 benchmark; target: sequential >= 0.5x qemu-nbd):
#   - sequential: nbdcopy of the whole export to null: with --no-extents
#     (every byte read, zeros too) and with extents (holes skipped), MB/s of
#     the logical size;
#   - random: 4 KiB reads at random aligned offsets over the whole export
#     from 4 connections (bench/nbd_randread.c), reads/s; once with 1
#     connection.
# The image is bench/make_images.py's day1.raw (32% holes, 8% written
# zeros, 30% files, 30% random), SIZE bytes (default 1 GiB: the 4 GiB image
# of bench/run.sh works too, SIZE=4294967296). Medians of ROUNDS (3).
set -eu
build=$(cd "${1:?usage: serve-bench.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/tmp/vmshadow-serve-bench}
SIZE=${SIZE:-1073741824}
ROUNDS=${ROUNDS:-3}
READS=${READS:-5000}
VMSHADOW=$build/src/vmshadow
TOOL=$build/bench/vmshadow-repo-tool
RAND=$build/bench/vmshadow-nbd-randread
for t in "$VMSHADOW" "$TOOL" "$RAND"; do [ -x "$t" ] || { echo "missing $t" >&2; exit 1; }; done
for t in nbdkit qemu-nbd nbdcopy; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

mkdir -p "$WORK"
IMG=$WORK/img-$SIZE
if [ ! -f "$IMG/day1.raw" ]; then
    mkdir -p "$IMG"
    OUTDIR=$IMG SIZE=$SIZE python3 "$here/make_images.py" >&2
fi
export VMSHADOW_CONFIG=/dev/null VMSHADOW_STATE_DIR=$WORK/state VMSHADOW_REPO=$WORK/repo
unset VMSHADOW_KEY_FILE
rm -rf "$WORK/repo"
"$VMSHADOW" init >/dev/null
DOC='{"version":1,"writers":[{"writer":{"name":"vmshadow VM writer"},"components":[{"name":"bench","files":[{"name":"disk/vda","kind":"disk","stored":{"file":"bench/disk/vda"}}]}]}]}'
"$TOOL" backup --doc "$DOC" "$WORK/repo" "bench/disk/vda=$IMG/day1.raw" >/dev/null

VS=$WORK/vmshadow.sock QS=$WORK/qemu-nbd.sock
rm -f "$VS" "$QS"
"$VMSHADOW" --json serve --socket "$VS" latest bench vda >"$WORK/serve.json" 2>"$WORK/serve.err" &
SERVE=$!
qemu-nbd --read-only --format=raw --shared=16 --persistent --socket="$QS" "$IMG/day1.raw" &
QNBD=$!
trap 'kill $SERVE $QNBD 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 600); do
    [ -s "$WORK/serve.json" ] && [ -S "$QS" ] && break
    sleep 0.1
done
[ -s "$WORK/serve.json" ] || { cat "$WORK/serve.err" >&2; exit 1; }
VURI="nbd+unix:///?socket=$VS"
QURI="nbd+unix:///?socket=$QS"
cat "$IMG/day1.raw" >/dev/null # the page cache holds the image and the packs alike
cat "$WORK"/repo/packs/*/*.pack >/dev/null

now() { date +%s.%N; }
# seq_mbs URI [nbdcopy options]: MB/s of the logical size
seq_mbs() {
    local uri=$1; shift
    local a b
    a=$(now)
    nbdcopy "$@" "$uri" null:
    b=$(now)
    echo "scale=1; $SIZE / ($b - $a) / 1000000" | bc
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rand_rps() { "$RAND" "$1" "$2" "$READS" 4096 | awk '{ print $1 }'; }

declare -A R
for name in vmshadow qemu-nbd; do
    uri=$VURI; [ $name = qemu-nbd ] && uri=$QURI
    for round in $(seq "$ROUNDS"); do
        echo "$(seq_mbs "$uri" --no-extents)" >>"$WORK/$name.seq_all"
        echo "$(seq_mbs "$uri")" >>"$WORK/$name.seq_ext"
        echo "$(rand_rps "$uri" 4)" >>"$WORK/$name.rand4"
        echo "$(rand_rps "$uri" 1)" >>"$WORK/$name.rand1"
    done
    for m in seq_all seq_ext rand4 rand1; do
        R[$name.$m]=$(median <"$WORK/$name.$m")
        rm -f "$WORK/$name.$m"
    done
done
ratio() { echo "scale=2; ${R[vmshadow.$1]} / ${R[qemu-nbd.$1]}" | bc; }
{
    echo "image: $SIZE bytes (make_images.py day1.raw); median of $ROUNDS rounds; $(nproc) CPUs"
    echo
    echo "| measure | vmshadow serve | qemu-nbd (raw image) | ratio |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| sequential, every byte (nbdcopy --no-extents), MB/s | ${R[vmshadow.seq_all]} | ${R[qemu-nbd.seq_all]} | $(ratio seq_all) |"
    echo "| sequential, holes skipped (nbdcopy), MB/s | ${R[vmshadow.seq_ext]} | ${R[qemu-nbd.seq_ext]} | $(ratio seq_ext) |"
    echo "| random 4 KiB reads/s, 4 connections | ${R[vmshadow.rand4]} | ${R[qemu-nbd.rand4]} | $(ratio rand4) |"
    echo "| random 4 KiB reads/s, 1 connection | ${R[vmshadow.rand1]} | ${R[qemu-nbd.rand1]} | $(ratio rand1) |"
} | tee "$WORK/serve-results.md"
