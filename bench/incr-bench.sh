#!/bin/bash
# incr-bench.sh - incremental backups from dirty bitmaps (issue 7): a 4 GiB
# qcow2 data disk (incompressible data) attached to a running guest; 2% of
# it rewritten by the guest between backups.
#   full:        `vmshadow backup` of the VM, its first backup into a new
#                repository (full read)
#   incremental: `vmshadow backup` into the same repository after the
#                rewrite (reads the dirty extents)
#   restic:      `restic backup` of the same image file after the same
#                rewrite (a later backup: it reads and chunks the whole file)
# Targets: incremental <= 5% of the full's time; >= 10x faster than restic's
# second backup. Wall-clock times of the whole commands.
# Each of ROUNDS rounds measures a pair, full then incremental, a few seconds
# apart, and restic right after: this machine's speed drifts by up to 2x
# within an hour, so a full timed minutes before the incrementals says more
# about the drift than about the code. The ratios reported are the medians
# of the rounds' own ratios; the medians of the times are shown beside them.
# The guest's qemu-ga runs without an fsfreeze hook, as Debian's
# qemu-guest-agent does by default; INCR_BENCH_HOOK=1 keeps the lab's test
# hook (under TCG its shell runs and its marker write cost ~60 ms per set).
# Usage (root): bench/incr-bench.sh [ROUNDS]   (default 3)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
[ -x "$VMSHADOW" ] || { echo "incr-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
command -v restic >/dev/null || { echo "incr-bench: restic is not installed" >&2; exit 2; }
. "$top/tests/lab/lab.sh"
lab_init
export VMSHADOW_STATE_DIR=$LAB_WORK/state
export VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
export RESTIC_REPOSITORY=$LAB_WORK/restic RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$LAB_WORK/restic-cache
mkdir -p "$VMSHADOW_WRITERS_DIR"; : > "$VMSHADOW_CONFIG"
restic init -q >/dev/null || exit 1

GiB=$((1024 * 1024 * 1024))
BIG=$LAB_WORK/big.qcow2
echo "incr-bench: making a 4 GiB qcow2 of random data" >&2
openssl enc -aes-128-ctr -pass pass:incr-bench -nosalt -pbkdf2 < /dev/zero 2>/dev/null |
    head -c $((4 * GiB)) > "$LAB_WORK/big.raw"
qemu-img convert -f raw -O qcow2 "$LAB_WORK/big.raw" "$BIG" && rm -f "$LAB_WORK/big.raw"
if [ "${INCR_BENCH_HOOK:-0}" = 1 ]; then
    lab_guest_define g
else
    lab_guest_define g --cmdline lab.nohook=1
fi
D=$(lab_domname g)
lab_virsh attach-disk "$D" "$BIG" vdb --subdriver qcow2 --config >/dev/null || exit 1
lab_guest_start g

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
vmshadow_backup() { # prints "ms read bytes_read"
    local t0 t1 out
    t0=$(ms)
    out=$("$VMSHADOW" -v --json backup "$D" 2>"$LAB_WORK/last.stderr") || { echo "incr-bench: vmshadow backup failed: $out" >&2; exit 1; }
    t1=$(ms)
    echo "$((t1 - t0)) $(jq -r '.vms[0].disks[] | select(.name == "vdb") | "\(.read) \(.bytes_read)"' <<<"$out")"
}
restic_backup() {
    local t0 t1
    t0=$(ms)
    restic backup -q "$BIG" >/dev/null || { echo "incr-bench: restic failed" >&2; exit 1; }
    t1=$(ms)
    echo $((t1 - t0))
}
# 2% of 4 GiB = 82 MiB: 82 writes of 1 MiB spread over the disk, new each round
rewrite() {
    lab_gexec g "i=0; while [ \$i -lt 82 ]; do dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek=\$((i * 49 + $1)) conv=notrunc 2>/dev/null; i=\$((i + 1)); done; sync" ||
        { echo "incr-bench: guest rewrite failed" >&2; exit 1; }
}

restic1_ms=$(restic_backup)
echo "incr-bench: restic first backup $restic1_ms ms" >&2
: > "$LAB_WORK/full.ms"; : > "$LAB_WORK/inc"; : > "$LAB_WORK/restic.ms"
: > "$LAB_WORK/inc_read"; : > "$LAB_WORK/pct"; : > "$LAB_WORK/x"
for i in $(seq "$ROUNDS"); do
    # the full: the VM's first backup into a new repository (the one before
    # goes: only this round's pair uses it)
    [ "$i" -gt 1 ] && rm -rf "$VMSHADOW_REPO"
    export VMSHADOW_REPO=$LAB_WORK/repo-$i
    "$VMSHADOW" -q init >/dev/null || exit 1
    read -r full_ms full_mode full_read <<<"$(vmshadow_backup)"
    [ "$full_mode" = full ] || { echo "incr-bench: full $i was not full" >&2; exit 1; }
    rewrite "$i"
    read -r inc_ms inc_mode inc_read <<<"$(vmshadow_backup)"
    [ "$inc_mode" = incremental ] || { echo "incr-bench: round $i was not incremental" >&2; exit 1; }
    r_ms=$(restic_backup)
    echo "incr-bench: round $i: full $full_ms ms ($full_read bytes read), incremental $inc_ms ms ($inc_read bytes read), restic $r_ms ms" >&2
    echo "$full_ms" >> "$LAB_WORK/full.ms"; echo "$inc_ms" >> "$LAB_WORK/inc"
    echo "$r_ms" >> "$LAB_WORK/restic.ms"; echo "$inc_read" >> "$LAB_WORK/inc_read"
    awk -v a="$inc_ms" -v b="$full_ms" 'BEGIN {printf "%.2f\n", 100 * a / b}' >> "$LAB_WORK/pct"
    awk -v a="$r_ms" -v b="$inc_ms" 'BEGIN {printf "%.2f\n", a / b}' >> "$LAB_WORK/x"
done
echo "incr-bench: where the last incremental's time went (vmshadow -v):" >&2
grep -E "^vmshadow: debug: \[" "$LAB_WORK/last.stderr" | sed 's/^vmshadow: debug: /  /' >&2
full_ms=$(median < "$LAB_WORK/full.ms"); inc=$(median < "$LAB_WORK/inc")
rs=$(median < "$LAB_WORK/restic.ms"); ird=$(median < "$LAB_WORK/inc_read")
pct=$(median < "$LAB_WORK/pct"); x=$(median < "$LAB_WORK/x")
one() { awk -v a="$1" 'BEGIN {printf "%.1f", a}'; }
echo
echo "incr-bench: 4 GiB qcow2 data disk of a running TCG guest (fsfreeze hook: $([ "${INCR_BENCH_HOOK:-0}" = 1 ] && echo "the lab's" || echo none)), 2% (82 MiB) rewritten per round, $ROUNDS rounds, medians"
printf '%-40s %10s\n' "vmshadow full backup (ms)" "$full_ms"
printf '%-40s %10s\n' "vmshadow incremental backup (ms)" "$inc"
printf '%-40s %10s\n' "restic first backup (ms)" "$restic1_ms"
printf '%-40s %10s\n' "restic second backup (ms)" "$rs"
printf '%-40s %10s\n' "bytes read: full / incremental" "$full_read / $ird"
printf '%-40s %9s%% (target <= 5%%)\n' "incremental / full (median of rounds)" "$(one "$pct")"
printf '%-40s %9sx (target >= 10x)\n' "restic second / incremental (median)" "$(one "$x")"
echo "raw: full [$(tr '\n' ' ' < "$LAB_WORK/full.ms")] incremental [$(tr '\n' ' ' < "$LAB_WORK/inc")] restic [$(tr '\n' ' ' < "$LAB_WORK/restic.ms")]"
echo "raw: incremental/full % [$(tr '\n' ' ' < "$LAB_WORK/pct")] restic/incremental [$(tr '\n' ' ' < "$LAB_WORK/x")]"
