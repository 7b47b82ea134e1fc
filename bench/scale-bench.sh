#!/bin/bash
# scale-bench.sh - issue 27: memory and start-up flat in the repository's
# size. Run as root from the project's root:
#
#   VMSHADOW=build/src/vmshadow bench/scale-bench.sh
#
# Builds a synthetic repository of CHUNKS (default 100 million) stored
# chunks - chunk index runs only, written by bench/scale_gen.c with the
# library's own run writer; their packs hold no data - and measures a backup
# of the benchmark image (bench/make_images.py, IMG_SIZE, default 4 GiB) into
# it against the same backup into an empty repository: peak RSS (GNU time)
# and total time over ROUNDS (5) pairs of backups, one into each repository
# in turn (time ratio: the median of the pairs' ratios), and the time to the
# first byte read from the source (and to the first run of chunks stored)
# as the median of TTFB_ROUNDS (15) backups of the image's first 256 MiB. Then verify, prune and gc on the big
# repository, each with its peak RSS, and gc merging it when MERGE=1 (the
# 100 M entries split over 9 runs). Then today's code (OLD_REV, default
# main's commit before issue 27: the merge base) built in a temporary
# directory, measured the same way on a repository of OLD_CHUNKS (default
# 4 million) entries in pack tables, which it loads whole; its memory is
# extrapolated to CHUNKS. Last line: chunks=N peak_rss_mib=X time_ratio=Y
# (X: the largest peak RSS of backup, verify, prune and gc on the big
# repository; Y: the larger of the first-byte and total time ratios,
# big repository against empty). Needs ~8 GB free under WORK per 100 M
# chunks, plus the image and two backups of it.
set -euo pipefail
: "${VMSHADOW:?VMSHADOW must name the vmshadow binary}"
VMSHADOW=$(readlink -f "$VMSHADOW")
BUILD=${BUILD:-$(dirname "$(dirname "$VMSHADOW")")}
TOOL=${TOOL:-$BUILD/bench/vmshadow-repo-tool}
GEN=${GEN:-$BUILD/bench/vmshadow-scale-gen}
CHUNKS=${CHUNKS:-100000000}
OLD_CHUNKS=${OLD_CHUNKS:-4000000}
IMG_SIZE=${IMG_SIZE:-4294967296}
ROUNDS=${ROUNDS:-5}
TTFB_ROUNDS=${TTFB_ROUNDS:-15}
MERGE=${MERGE:-0}
WORK=${WORK:-/var/tmp/vmshadow-scale}
SRC=$(pwd)
OLD_REV=${OLD_REV:-$(git merge-base HEAD main 2>/dev/null || echo HEAD~1)}
for f in "$VMSHADOW" "$TOOL" "$GEN"; do [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }; done
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 1; }
mkdir -p "$WORK"
LOG=$WORK/results.txt
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
t_start=$(date +%s)

# --- the image ---
IMG=$WORK/img/day1.raw
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != "$IMG_SIZE" ]; then
    rm -rf "$WORK/img"
    OUTDIR=$WORK/img SIZE=$IMG_SIZE python3 bench/make_images.py >/dev/null
fi
cat "$IMG" > /dev/null # from the page cache for every round

# rss_of CMD...: runs it under GNU time; sets RSS_KIB, WALL, OUT
rss_of() {
    /usr/bin/time -f "%M %e %U %S" -o "$WORK/time.out" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err" || {
        cat "$WORK/cmd.err" >&2
        return 1
    }
    read -r RSS_KIB WALL CPU_U CPU_S < "$WORK/time.out"
    CPU=$(echo "$CPU_U + $CPU_S" | bc)
    OUT=$(cat "$WORK/cmd.out")
}
jf() { echo "$OUT" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', -1))"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# backup_once TOOL REPO: one backup of the image into REPO, undone
# afterwards (the files it added removed), so that every round backs up
# into the same repository. Sets RSS_KIB, T (s), CPU (user+sys s).
backup_once() {
    local tool=$1 repo=$2
    (cd "$repo" && find . -type f | sort) > "$WORK/before.lst"
    sync
    rss_of "$tool" backup "$repo" "disk=$IMG"
    T=$(jf seconds)
    (cd "$repo" && find . -type f | sort) > "$WORK/after.lst"
    comm -13 "$WORK/before.lst" "$WORK/after.lst" | (cd "$repo" && xargs -r rm -f)
}

# pair_rounds TOOL1 REPO1 TOOL2 REPO2 PREFIX: ROUNDS pairs of backups, one
# into each repository in turn (the machine's load, shared with others,
# then weighs on both alike). Sets <PREFIX>_RSS1/_RSS2 (max KiB), _T1/_T2
# (median s), _RATIO (median of the pairs' ratios T2/T1), _CPU1/_CPU2
# (median user+sys s) and _ALL.
pair_rounds() {
    local rss1=0 rss2=0 t1=() t2=() c1=() c2=() rs=() all=""
    for i in $(seq "$ROUNDS"); do
        backup_once "$1" "$2"
        [ "$RSS_KIB" -gt "$rss1" ] && rss1=$RSS_KIB
        local a=$T
        t1+=("$T")
        c1+=("$CPU")
        backup_once "$3" "$4"
        [ "$RSS_KIB" -gt "$rss2" ] && rss2=$RSS_KIB
        t2+=("$T")
        c2+=("$CPU")
        rs+=("$(echo "scale=3; $T / $a" | bc)")
        all="$all $a/$T"
    done
    printf -v "${5}_RSS1" '%s' "$rss1"
    printf -v "${5}_RSS2" '%s' "$rss2"
    printf -v "${5}_T1" '%s' "$(median "${t1[@]}")"
    printf -v "${5}_T2" '%s' "$(median "${t2[@]}")"
    printf -v "${5}_CPU1" '%s' "$(median "${c1[@]}")"
    printf -v "${5}_CPU2" '%s' "$(median "${c2[@]}")"
    printf -v "${5}_RATIO" '%s' "$(median "${rs[@]}")"
    printf -v "${5}_ALL" '%s' "$all"
}

# ttfb_rounds TOOL REPO PREFIX: TTFB_ROUNDS backups of the image's first
# 256 MiB (time to first byte does not depend on the image's size, and
# milliseconds need many rounds on a busy machine), undone as above, with
# the tool's source wrapped to note its first read (VMSH_TOOL_TIME_READ).
# Sets <PREFIX>_F (median time to the first byte read, s), <PREFIX>_P
# (median time to the first progress report) and <PREFIX>_FALL.
ttfb_rounds() {
    local tool=$1 repo=$2 p=$3 fs=() ps=() all=""
    (cd "$repo" && find . -type f | sort) > "$WORK/before.lst"
    for i in $(seq "$TTFB_ROUNDS"); do
        VMSH_TOOL_TIME_READ=1 rss_of "$tool" backup "$repo" "disk=$WORK/img/head.raw"
        fs+=("$(jf first_read_s)")
        ps+=("$(jf first_progress_s)")
        all="$all $(jf first_read_s)"
        (cd "$repo" && find . -type f | sort) > "$WORK/after.lst"
        comm -13 "$WORK/before.lst" "$WORK/after.lst" | (cd "$repo" && xargs -r rm -f)
    done
    printf -v "${p}_F" '%s' "$(median "${fs[@]}")"
    printf -v "${p}_P" '%s' "$(median "${ps[@]}")"
    printf -v "${p}_FALL" '%s' "$all"
}
head -c 256M "$IMG" > "$WORK/img/head.raw"

# --- new code: empty repository and CHUNKS-chunk repository ---
EMPTY=$WORK/empty BIG=$WORK/big
rm -rf "$EMPTY" "$BIG"
VMSHADOW_REPO=$EMPTY "$VMSHADOW" init >/dev/null
VMSHADOW_REPO=$BIG "$VMSHADOW" init >/dev/null
k=1
[ "$MERGE" = 1 ] && k=9
t0=$(date +%s.%N)
"$GEN" runs "$BIG" "$CHUNKS" "$k" >/dev/null
gen_s=$(echo "$(date +%s.%N) - $t0" | bc)
say "generated $CHUNKS index entries in $k run(s): $(printf %.1f "$gen_s") s, $(du -sh "$BIG/index/runs" | cut -f1)"

pair_rounds "$TOOL" "$EMPTY" "$TOOL" "$BIG" N
ttfb_rounds "$TOOL" "$EMPTY" E
ttfb_rounds "$TOOL" "$BIG" B
say "time to first byte read (256 MiB prefix, median of $TTFB_ROUNDS): empty ${E_F} s (${E_FALL} ), $CHUNKS chunks ${B_F} s (${B_FALL} )"
say "time to first progress (the first run of chunks stored, median): empty ${E_P} s, $CHUNKS chunks ${B_P} s"
say "backup of the image, empty repository: peak RSS $((N_RSS1 / 1024)) MiB, total ${N_T1} s, CPU ${N_CPU1} s"
say "backup of the image, $CHUNKS chunks:     peak RSS $((N_RSS2 / 1024)) MiB, total ${N_T2} s, CPU ${N_CPU2} s"
say "  rounds empty/big (s):${N_ALL}; median ratio of the pairs ${N_RATIO}"
# one backup stays, for verify, prune and gc
rss_of "$TOOL" backup "$BIG" "disk=$IMG"
VER_RSS=0 PRU_RSS=0 GC_RSS=0
VMSHADOW_REPO=$BIG rss_of "$VMSHADOW" verify && VER_RSS=$RSS_KIB VER_T=$WALL
VMSHADOW_REPO=$BIG rss_of "$VMSHADOW" prune --keep-last 1 && PRU_RSS=$RSS_KIB PRU_T=$WALL
VMSHADOW_REPO=$BIG rss_of "$VMSHADOW" gc && GC_RSS=$RSS_KIB GC_T=$WALL
nruns=$(find "$BIG/index/runs" -name '*.run' | wc -l)
say "on $CHUNKS chunks: verify $((VER_RSS / 1024)) MiB ${VER_T} s, prune $((PRU_RSS / 1024)) MiB ${PRU_T} s, gc $((GC_RSS / 1024)) MiB ${GC_T} s (runs after gc: $nruns)"
peak=$(printf '%s\n' "$N_RSS2" "$VER_RSS" "$PRU_RSS" "$GC_RSS" | sort -n | tail -1)
r1=$(echo "scale=3; $B_F / $E_F" | bc)
rt=$N_RATIO
say "ratios (big/empty): first byte $r1, total $rt"
rm -rf "$BIG" "$EMPTY"

# --- today's code (before issue 27) ---
OLD=$WORK/old-src
if [ "${SKIP_OLD:-0}" != 1 ]; then
    rm -rf "$OLD"
    git -C "$SRC" worktree add -f --detach "$OLD" "$OLD_REV" >/dev/null 2>&1 \
        || git clone -q "$SRC" "$OLD"
    git -C "$OLD" checkout -q "$OLD_REV"
    cmake -S "$OLD" -B "$OLD/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    ninja -C "$OLD/build" bench/vmshadow-repo-tool src/vmshadow >/dev/null
    OE=$WORK/old-empty OB=$WORK/old-big
    rm -rf "$OE" "$OB"
    VMSHADOW_REPO=$OE "$OLD/build/src/vmshadow" init >/dev/null
    VMSHADOW_REPO=$OB "$OLD/build/src/vmshadow" init >/dev/null
    "$GEN" packs "$OB" "$OLD_CHUNKS" >/dev/null
    OT=$OLD/build/bench/vmshadow-repo-tool
    pair_rounds "$OT" "$OE" "$OT" "$OB" O
    VMSHADOW_REPO=$OB rss_of "$OLD/build/src/vmshadow" verify
    OV_RSS=$RSS_KIB
    say "today's code ($(git -C "$SRC" rev-parse --short "$OLD_REV")), empty repository: backup peak RSS $((O_RSS1 / 1024)) MiB, total ${O_T1} s, CPU ${O_CPU1} s"
    say "today's code, $OLD_CHUNKS chunks in pack tables: backup peak RSS $((O_RSS2 / 1024)) MiB, total ${O_T2} s, CPU ${O_CPU2} s (pairs:${O_ALL}; median ratio ${O_RATIO}); verify $((OV_RSS / 1024)) MiB"
    per=$(echo "scale=1; ($O_RSS2 - $O_RSS1) * 1024 / $OLD_CHUNKS" | bc)
    ext=$(echo "scale=0; ($O_RSS1 * 1024 + $per * $CHUNKS) / 1048576" | bc)
    say "today's code: $per bytes of RSS per stored chunk; extrapolated to $CHUNKS chunks: ~$ext MiB"
    rm -rf "$OE" "$OB"
    git -C "$SRC" worktree remove --force "$OLD" >/dev/null 2>&1 || rm -rf "$OLD"
fi
say "bench time: $(($(date +%s) - t_start)) s"
ratio=$(printf '%s\n' "$r1" "$rt" | sort -g | tail -1)
echo "chunks=$CHUNKS peak_rss_mib=$((peak / 1024)) time_ratio=$ratio"
