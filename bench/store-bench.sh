#!/bin/bash
# store-bench.sh - the repository's stores compared (issue 26): backup of the
# benchmark's day-1 image (bench/make_images.py) and its restore, into a
# local directory, rados:// and s3+http:// (radosgw) of the single-node Ceph
# lab (tests/lab/ceph.sh: reused, or started and stopped here), and restic's
# S3 backend on the same gateway when restic is installed. Every round runs
# each store once (backup into a fresh repository, then its restore), the
# stores' order rotated from round to round so that none always inherits
# the others' page cache and load; every restore is checked byte-identical.
# Prints each round, then per operation the median wall time [min-max],
# MB/s over the image's logical size, peak memory, and the medians of the
# rounds' own ratios with their spread, against the issue's targets:
# RADOS >= 0.7x the local repository's throughput, S3 >= 3x restic's.
#
# usage: bench/store-bench.sh [BUILD_DIR]      (default ./build; root)
# env:   WORK=/var/tmp/vmshadow-store-bench  SIZE=1073741824  ROUNDS=5
#        STORE_THREADS (unset: the store's default)  STORES="local rados s3 restic"
#        OLD_TOOL=the vmshadow-repo-tool of an older build: adds the stores
#        rados-old and s3-old (same image, same rounds) for a before/after
#        OPS=backup: backups only (no restores: each round half as long)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$here/../build}
TOOL=$BUILD/bench/vmshadow-repo-tool
VMSHADOW=$BUILD/src/vmshadow
WORK=${WORK:-/var/tmp/vmshadow-store-bench}
SIZE=${SIZE:-$((1 << 30))}
ROUNDS=${ROUNDS:-5}
OPS=${OPS:-backup restore}
STORES=${STORES:-local rados s3 restic${OLD_TOOL:+ rados-old s3-old}}
[ -n "${STORE_THREADS:-}" ] && export VMSHADOW_STORE_THREADS=$STORE_THREADS
[ -x "$TOOL" ] || { echo "build first: $TOOL is missing" >&2; exit 1; }
command -v restic >/dev/null || STORES=${STORES//restic/}
. "$here/../tests/lab/ceph.sh"
U=bench-$$
# The lab's OSD is small (12 GiB, shared with the other tests): each
# round's remote repositories go as soon as they are measured, and
# radosgw's garbage (deleted objects' data) is collected at once.
drop_remote() { # PATTERN: the benchmark's pool prefixes and buckets matching it
    rados -p "$VMSH_CEPH_POOL" ls 2>/dev/null | grep -E "^$1/" |
        xargs -r -n 64 rados -p "$VMSH_CEPH_POOL" --force-full rm || true
    for b in $(radosgw-admin bucket list 2>/dev/null | tr -d '", []' | grep -E "^$1\$" || true); do
        radosgw-admin bucket rm --bucket="$b" --purge-objects >/dev/null 2>&1 || true
    done
    radosgw-admin gc process --include-all >/dev/null 2>&1 || true
}
cleanup() {
    drop_remote "$U-[^/]*"
    rm -rf "$WORK/local" "$WORK/out.raw" "$WORK/restic-out"
    ceph_lab_release
}
trap cleanup EXIT
ceph_lab_need
mkdir -p "$WORK"
IMG=$WORK/images-$SIZE
[ -s "$IMG/changes.json" ] || OUTDIR=$IMG SIZE=$SIZE python3 "$here/make_images.py" >&2
cat "$IMG/day1.raw" >/dev/null
RES=$WORK/results.tsv
: >"$RES"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

measure() { # ROUND NAME OP CMD...
    local round=$1 name=$2 op=$3
    shift 3
    sync
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.out" "$@" >"$WORK/cmd.out" 2>"$WORK/cmd.err" ||
        { echo "$name $op failed:" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
    read -r wall rss usr sys <"$WORK/time.out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$op" "$wall" "$rss" \
        "$(echo "$usr + $sys" | bc)" >>"$RES"
    awk -v r="$round" -v n="$name" -v o="$op" -v w="$wall" -v m="$rss" -v s="$SIZE" \
        'BEGIN{printf "round %d  %-7s %-8s %7.2f s %8.1f MB/s  %6.0f MiB peak\n", r, n, o, w, s/w/1e6, m/1024}'
}
run_vmshadow() { # ROUND NAME REPO [TOOL]
    local round=$1 name=$2 repo=$3 tool=${4:-$TOOL}
    "$VMSHADOW" --config /dev/null -r "$repo" init >/dev/null
    measure "$round" "$name" backup "$tool" backup "$repo" "disk.img=$IMG/day1.raw"
    [ "$OPS" = backup ] && return 0
    rm -f "$WORK/out.raw"
    measure "$round" "$name" restore "$tool" restore "$repo" latest disk.img "$WORK/out.raw"
    cmp -s "$IMG/day1.raw" "$WORK/out.raw" || { echo "$name: restore differs" >&2; exit 1; }
    rm -f "$WORK/out.raw"
}
run_store() { # ROUND STORE
    local round=$1
    case $2 in
    local)
        rm -rf "$WORK/local"
        run_vmshadow "$round" local "$WORK/local"
        rm -rf "$WORK/local" ;;
    rados) run_vmshadow "$round" rados "rados://$VMSH_CEPH_POOL/$U-r$round" ;;
    s3) run_vmshadow "$round" s3 "s3+http://$VMSH_S3_ENDPOINT/$U-s$round/repo" ;;
    rados-old) run_vmshadow "$round" rados-old "rados://$VMSH_CEPH_POOL/$U-ro$round" "$OLD_TOOL" ;;
    s3-old) run_vmshadow "$round" s3-old "s3+http://$VMSH_S3_ENDPOINT/$U-so$round/repo" "$OLD_TOOL" ;;
    restic)
        export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:http://$VMSH_S3_ENDPOINT/$U-t$round
        restic init >/dev/null 2>&1
        measure "$round" restic backup restic backup "$IMG/day1.raw"
        [ "$OPS" = backup ] && { drop_remote "$U-[a-z]+$round"; return 0; }
        rm -rf "$WORK/restic-out"
        measure "$round" restic restore restic restore latest --target "$WORK/restic-out"
        cmp -s "$IMG/day1.raw" "$WORK/restic-out$IMG/day1.raw" ||
            { echo "restic: restore differs" >&2; exit 1; }
        rm -rf "$WORK/restic-out" ;;
    esac
    drop_remote "$U-[a-z]+$round"
}
read -ra order <<<"$STORES"
for ((r = 1; r <= ROUNDS; r++)); do
    # rotate the order each round
    n=${#order[@]}
    for ((i = 0; i < n; i++)); do
        run_store "$r" "${order[(i + r - 1) % n]}"
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "image: $SIZE bytes logical; $ROUNDS rounds; load average at start $load_start, at end $load_end"
echo "| store | operation | wall s median [min-max] | MB/s | CPU s | peak RSS MiB |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
range() { sort -g | awk 'NR==1{a=$1} {b=$1} END {printf "%s-%s", a, b}'; }
col() { awk -F'\t' -v n="$1" -v o="$2" -v c="$3" '$2==n && $3==o {print $c}' "$RES"; }
for name in $STORES; do
    for op in $OPS; do
        w=$(col "$name" "$op" 4 | median)
        printf '| %s | %s | %s [%s] | %.0f | %s | %.0f |\n' "$name" "$op" "$w" \
            "$(col "$name" "$op" 4 | range)" "$(echo "$SIZE / $w / 1000000" | bc -l)" \
            "$(col "$name" "$op" 6 | median)" "$(echo "$(col "$name" "$op" 5 | median) / 1024" | bc -l)"
    done
done
# per round: ratio of throughputs = ratio of the other's time to this one's
ratios() { # A B OP: per-round t(B)/t(A), i.e. A's throughput over B's
    awk -F'\t' -v a="$1" -v b="$2" -v o="$3" '$3==o && $2==a {ta[$1]=$4} $3==o && $2==b {tb[$1]=$4}
        END {for (r in ta) if (r in tb) printf "%.3f\n", tb[r]/ta[r]}' "$RES"
}
report() { # LABEL A B TARGET
    for op in $OPS; do
        local v
        v=$(ratios "$2" "$3" "$op")
        [ -n "$v" ] || continue
        printf '%s %s: median %.2fx [%s] per round (%s) target %s\n' "$1" "$op" \
            "$(echo "$v" | median)" "$(echo "$v" | range)" "$(echo "$v" | tr '\n' ' ' | sed 's/ $//')" "$4"
    done
}
echo
report "RADOS/local throughput" rados local ">= 0.7x"
report "S3/local throughput   " s3 local "-"
report "S3/restic throughput  " s3 restic ">= 3x"
if [ -n "${OLD_TOOL:-}" ]; then
    report "RADOS old/local       " rados-old local ">= 0.7x"
    report "S3 old/restic         " s3-old restic ">= 3x"
    report "RADOS new/old         " rados rados-old "-"
    report "S3 new/old            " s3 s3-old "-"
fi
