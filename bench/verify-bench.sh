#!/bin/bash
# verify-bench.sh - issue 27 point 2: verify's peak RSS against the number
# of chunk references its backups hold. Makes BACKUPS (default 60) backups
# of one random file of SIZE (default 1 GiB, 16 Ki chunks: every backup
# after the first deduplicates to the same chunks) and runs `verify` on the
# first 1, 15, 30 and all of them: references grow, distinct chunks do not.
# With VMSHADOW_BEFORE naming another build, that one is measured too.
#   VMSHADOW=build/src/vmshadow [VMSHADOW_BEFORE=...] bench/verify-bench.sh
set -euo pipefail
: "${VMSHADOW:?VMSHADOW must name the vmshadow binary}"
VMSHADOW=$(readlink -f "$VMSHADOW")
TOOL=${TOOL:-$(dirname "$(dirname "$VMSHADOW")")/bench/vmshadow-repo-tool}
BACKUPS=${BACKUPS:-60}
SIZE=${SIZE:-1073741824}
WORK=${WORK:-/var/tmp/vmshadow-verify-bench}
rm -rf "$WORK"
mkdir -p "$WORK"
head -c "$SIZE" /dev/urandom > "$WORK/img.raw"
export VMSHADOW_REPO=$WORK/repo
"$VMSHADOW" init >/dev/null
for _ in $(seq "$BACKUPS"); do "$TOOL" backup "$VMSHADOW_REPO" "disk=$WORK/img.raw" >/dev/null; done
mapfile -t IDS < <("$VMSHADOW" --json list | jq -r '.backups[].id')
BINS=("$VMSHADOW")
[ -n "${VMSHADOW_BEFORE:-}" ] && BINS+=("$(readlink -f "$VMSHADOW_BEFORE")")
chunks=$((SIZE / 65536))
printf '%-10s %-12s %-40s %12s %8s\n' backups references binary "peak RSS KiB" "wall s"
for n in 1 $((BACKUPS / 4)) $((BACKUPS / 2)) "$BACKUPS"; do
    for b in "${BINS[@]}"; do
        /usr/bin/time -f "%M %e" -o "$WORK/time.out" "$b" verify "${IDS[@]:0:$n}" >/dev/null
        read -r rss wall < "$WORK/time.out"
        printf '%-10s %-12s %-40s %12s %8s\n' "$n" "$((n * chunks))" "$b" "$rss" "$wall"
    done
done
rm -rf "$WORK"
