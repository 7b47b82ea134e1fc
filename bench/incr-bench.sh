#!/bin/bash
# incr-bench.sh - incremental backups from dirty bitmaps (issue 7): a 4 GiB
# qcow2 data disk (incompressible data) attached to a running guest; 2% of
# it rewritten by the guest between backups.
#   full:        `vmshadow backup` of the VM (first backup: full read)
#   incremental: `vmshadow backup` after the rewrite (reads the dirty extents)
#   restic:      `restic backup` of the same image file after the same
#                rewrite (its second backup: it reads and chunks the file)
# Targets: incremental <= 5% of the full's time; >= 10x faster than restic's
# second backup. Wall-clock times of the whole commands; ROUNDS rewrites and
# incrementals, INCR_BENCH_FULLS (3) fulls, each the VM's first backup into a
# new repository (medians reported).
# The guest's qemu-ga runs without an fsfreeze hook, as Debian's
# qemu-guest-agent does by default; INCR_BENCH_HOOK=1 keeps the lab's test
# hook (under TCG its shell runs and its marker write cost ~60 ms per set).
# Usage (root): bench/incr-bench.sh [ROUNDS]   (default 3)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
FULLS=${INCR_BENCH_FULLS:-3}
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

# The full: the VM's first backup into a new repository, FULLS times (the
# median counts, as for the incrementals); the last repository goes on.
: > "$LAB_WORK/full.ms"
for i in $(seq "$FULLS"); do
    [ "$i" -gt 1 ] && rm -rf "$VMSHADOW_REPO"
    export VMSHADOW_REPO=$LAB_WORK/repo-full-$i
    "$VMSHADOW" -q init >/dev/null || exit 1
    read -r one_ms full_mode full_read <<<"$(vmshadow_backup)"
    [ "$full_mode" = full ] || { echo "incr-bench: full $i was not full" >&2; exit 1; }
    echo "incr-bench: full $i: $one_ms ms ($full_read bytes read)" >&2
    echo "$one_ms" >> "$LAB_WORK/full.ms"
done
full_ms=$(median < "$LAB_WORK/full.ms")
restic1_ms=$(restic_backup)
echo "incr-bench: full (median of $FULLS) $full_ms ms; restic first $restic1_ms ms" >&2
: > "$LAB_WORK/inc"; : > "$LAB_WORK/restic.ms"
for i in $(seq "$ROUNDS"); do
    rewrite "$i"
    read -r inc_ms inc_mode inc_read <<<"$(vmshadow_backup)"
    [ "$inc_mode" = incremental ] || { echo "incr-bench: round $i was not incremental" >&2; exit 1; }
    r_ms=$(restic_backup)
    echo "incr-bench: round $i: incremental $inc_ms ms ($inc_read bytes read), restic $r_ms ms" >&2
    echo "$inc_ms" >> "$LAB_WORK/inc"; echo "$r_ms" >> "$LAB_WORK/restic.ms"
    echo "$inc_read" >> "$LAB_WORK/inc_read"
done
echo "incr-bench: where the last incremental's time went (vmshadow -v):" >&2
grep -E "^vmshadow: debug: \[" "$LAB_WORK/last.stderr" | sed 's/^vmshadow: debug: /  /' >&2
inc=$(median < "$LAB_WORK/inc"); rs=$(median < "$LAB_WORK/restic.ms"); ird=$(median < "$LAB_WORK/inc_read")
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", 100 * a / b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
echo
echo "incr-bench: 4 GiB qcow2 data disk of a running TCG guest (fsfreeze hook: $([ "${INCR_BENCH_HOOK:-0}" = 1 ] && echo "the lab's" || echo none)), 2% (82 MiB) rewritten per round, $ROUNDS rounds, medians"
printf '%-40s %10s\n' "vmshadow full backup (ms, median of $FULLS)" "$full_ms"
printf '%-40s %10s\n' "vmshadow incremental backup (ms)" "$inc"
printf '%-40s %10s\n' "restic first backup (ms)" "$restic1_ms"
printf '%-40s %10s\n' "restic second backup (ms)" "$rs"
printf '%-40s %10s\n' "bytes read: full / incremental" "$full_read / $ird"
printf '%-40s %9s%% (target <= 5%%)\n' "incremental / full" "$(pct "$inc" "$full_ms")"
printf '%-40s %9sx (target >= 10x)\n' "restic second / incremental" "$(ratio "$rs" "$inc")"
echo "raw: full [$(tr '\n' ' ' < "$LAB_WORK/full.ms")] incremental [$(tr '\n' ' ' < "$LAB_WORK/inc")] restic [$(tr '\n' ' ' < "$LAB_WORK/restic.ms")]"
