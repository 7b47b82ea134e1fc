#!/bin/bash
# Block sources (issue 4, "Readers"): a qcow2 image read through QEMU's own
# code (qemu-nbd by socket activation), an NBD export on a Unix socket
# (qemu-nbd, nbdkit) with base:allocation, and an incremental that reads only
# the extents a QEMU dirty bitmap marks. Every restore is compared byte for
# byte with the image QEMU sees.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
PIDS=()
scratch_stop() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
wait_sock() { for _ in $(seq 50); do [ -S "$1" ] && return 0; sleep 0.1; done; fail "no socket $1"; }

# a 32 MiB raw image: 8 MiB of text, a hole, 4 MiB random at 20 MiB
truncate -s 32M "$T/d.raw"
yes "a line of a guest file system" | head -c 8M | dd of="$T/d.raw" conv=notrunc status=none
head -c 4M /dev/urandom | dd of="$T/d.raw" bs=1M seek=20 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$T/d.raw" "$T/d.qcow2" || fail "qemu-img convert"
"$VMSHADOW" init >/dev/null || fail init

run "$TOOL" backup "$VMSHADOW_REPO" vda=qemu:qcow2:"$T/d.qcow2"
[ $RC = 0 ] || fail "qcow2 backup: $ERR"
read_q=$(echo "$OUT" | field bytes_read)
[ "$read_q" -le $((12 * 1048576 + 131072)) ] || fail "qcow2: read $read_q bytes, holes were read"
pass "qcow2 through qemu-nbd: only allocated data is read"
run "$TOOL" restore "$VMSHADOW_REPO" latest vda "$T/r1.raw"; [ $RC = 0 ] || fail "restore: $ERR"
cmp "$T/d.raw" "$T/r1.raw" || fail "qcow2 restore differs"
pass "qcow2 restore is byte-identical"
run "$TOOL" backup "$VMSHADOW_REPO" vda=qemu:qcow2:"$T/nothing.qcow2"; [ $RC = 1 ] || fail "missing image: $RC"
run "$TOOL" backup "$VMSHADOW_REPO" vda=qemu:qcow2:"$T/d.raw"; [ $RC = 1 ] && [[ $ERR == *"QEMU cannot open"* ]] || fail "wrong format: $RC $ERR"
pass "a missing image or a wrong format is a clear error"

# NBD export on a Unix socket, with a dirty bitmap for an incremental
qemu-img bitmap --add "$T/d.qcow2" b1 || fail "bitmap"
qemu-io -f qcow2 -c 'write -P 0x5a 3M 64k' -c 'write -P 0x6b 27M 4k' -c 'write -z 20M 1M' "$T/d.qcow2" >/dev/null || fail qemu-io
qemu-img convert -f qcow2 -O raw "$T/d.qcow2" "$T/d2.raw"
qemu-nbd --persistent --read-only --format=qcow2 -B b1 --export-name=vda -k "$T/nbd.sock" "$T/d.qcow2" &
PIDS+=($!); wait_sock "$T/nbd.sock"
run "$TOOL" backup --base latest "$VMSHADOW_REPO" vda=nbd:"$T/nbd.sock":vda:qemu:dirty-bitmap:b1
[ $RC = 0 ] || fail "incremental over NBD: $ERR"
r=$(echo "$OUT" | field bytes_read)
[ "$r" -le $((3 * 65536)) ] || fail "incremental read $r bytes, not only the dirty extents"
pass "incremental over NBD reads only dirty extents ($r bytes)"
run "$TOOL" restore "$VMSHADOW_REPO" latest vda "$T/r2.raw"; [ $RC = 0 ] || fail "restore: $ERR"
cmp "$T/d2.raw" "$T/r2.raw" || fail "incremental restore differs"
pass "incremental restore is byte-identical (written zeros come back as zeros)"
run "$TOOL" backup "$VMSHADOW_REPO" vda=nbd:"$T/nbd.sock":vda:qemu:dirty-bitmap:nope
[ $RC = 1 ] && [[ $ERR == *"dirty bitmap"* ]] || fail "unknown bitmap: $RC $ERR"
pass "an NBD export without the asked bitmap is a clear error"
kill "${PIDS[-1]}"; sleep 0.2
run "$TOOL" backup "$VMSHADOW_REPO" vda=nbd:"$T/nbd.sock":vda; [ $RC = 1 ] || fail "no server: $RC"
pass "no NBD server is a clear error"

# The image's own persistent bitmap (a shut-off VM's incremental, issue 7):
# qemu-nbd --bitmap started by vmshadow, no server of ours.
run "$TOOL" backup --base latest "$VMSHADOW_REPO" vda=qemu-bitmap:qcow2:b1:"$T/d.qcow2"
[ $RC = 0 ] || fail "incremental from the image's bitmap: $ERR"
r=$(echo "$OUT" | field bytes_read)
[ "$r" -le $((3 * 65536)) ] || fail "image-bitmap incremental read $r bytes, not only the dirty extents"
pass "incremental from the image's persistent bitmap reads only dirty extents ($r bytes)"
run "$TOOL" restore "$VMSHADOW_REPO" latest vda "$T/r2b.raw"; [ $RC = 0 ] || fail "restore: $ERR"
cmp "$T/d2.raw" "$T/r2b.raw" || fail "image-bitmap incremental restore differs"
pass "... and its restore is byte-identical"
run "$TOOL" backup "$VMSHADOW_REPO" vda=qemu-bitmap:qcow2:nope:"$T/d.qcow2"
[ $RC = 1 ] && [[ $ERR == *"with bitmap nope"* ]] || fail "missing image bitmap: $RC $ERR"
# a bitmap left in use: a QEMU that had the image open for writing was killed
cp "$T/d.qcow2" "$T/k.qcow2"
qemu-nbd --persistent --format=qcow2 -k "$T/k.sock" "$T/k.qcow2" &
kpid=$!; PIDS+=($kpid); wait_sock "$T/k.sock"
# it marks the bitmap in use once it has the image open for writing
in_use() { qemu-img info --output=json -U "$T/k.qcow2" | grep -q '"in-use"'; }
for _ in $(seq 50); do in_use && break; sleep 0.1; done
kill -9 "$kpid"; wait "$kpid" 2>/dev/null
in_use || fail "the killed qemu-nbd left no in-use bitmap"
run "$TOOL" backup "$VMSHADOW_REPO" vda=qemu-bitmap:qcow2:b1:"$T/k.qcow2"
[ $RC = 1 ] && [[ $ERR == *"with bitmap b1"* ]] || fail "inconsistent image bitmap: $RC $ERR"
pass "a missing or inconsistent image bitmap is a clear error (QEMU refuses it)"

# nbdkit serving the raw file on a Unix socket
if command -v nbdkit >/dev/null; then
    nbdkit -f -r -U "$T/kit.sock" file "$T/d2.raw" &
    PIDS+=($!); wait_sock "$T/kit.sock"
    run "$TOOL" backup "$VMSHADOW_REPO" vdb=nbd:"$T/kit.sock":
    [ $RC = 0 ] || fail "nbdkit backup: $ERR"
    r=$(echo "$OUT" | field bytes_read)
    [ "$r" -lt $((30 * 1048576)) ] || fail "nbdkit: holes were read ($r)"
    [ "$(echo "$OUT" | field new_chunks)" -le 1 ] || fail "nbdkit: same data not deduplicated"
    run "$TOOL" restore "$VMSHADOW_REPO" latest vdb "$T/r3.raw"; [ $RC = 0 ] || fail "restore: $ERR"
    cmp "$T/d2.raw" "$T/r3.raw" || fail "nbdkit restore differs"
    pass "nbdkit export: holes skipped, deduplicated, byte-identical"
fi
run "$VMSHADOW" verify; [ $RC = 0 ] || fail "verify: $OUT"
pass "verify"
echo "1..$n"
