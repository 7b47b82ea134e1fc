#!/bin/bash
# fuzz.sh - runs libFuzzer targets (docs/reliability.md, "Fuzzing").
#   scripts/fuzz.sh BUILD-DIR SECONDS [NAME...]
# BUILD-DIR was configured with clang and -DVMSH_FUZZ=ON and built with
# `ninja fuzzers`. Each NAME (default: every fuzz/fuzz_*.c) runs for SECONDS
# from its seed corpus fuzz/corpus/NAME (read only: new inputs go to a scratch
# corpus, $VMSH_FUZZ_WORK/NAME, default a temporary directory). A finding
# (crash, leak, timeout, out-of-memory) leaves its input in
# $VMSH_FUZZ_WORK/NAME/crash-* and fails the run. Prints one line per target:
# name, seconds, executions, result (in NAME order; VMSH_FUZZ_JOBS targets
# run at once, default one per core).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 BUILD-DIR SECONDS [NAME...]" >&2; exit 2; }
build=$1 secs=$2
shift 2
names=("$@")
if [ ${#names[@]} = 0 ]; then
    for f in "$top"/fuzz/fuzz_*.c; do
        n=$(basename "$f" .c)
        names+=("${n#fuzz_}")
    done
fi
work=${VMSH_FUZZ_WORK:-$(mktemp -d)}
# Targets run VMSH_FUZZ_JOBS at a time (default: one per core), each for the
# full SECONDS: the same fuzzing per target in less wall time (CI's budget).
jobs=${VMSH_FUZZ_JOBS:-$(nproc)}
failed=0
# fuzz_one NAME: runs one target; writes its verdict line(s) to $work/NAME/result
# and exits 1 on a finding.
fuzz_one() {
    local n=$1 bin=$build/fuzz/fuzz_$1 log=$work/$1/log rc execs
    local -a extra=()
    # The CLI prints on every run: its output would fill the log.
    [ "$n" = cli ] && extra=(-close_fd_mask=3)
    # rss/malloc limits catch unbounded allocation; -timeout catches hangs.
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1536 -malloc_limit_mb=1024 \
        -print_final_stats=1 "${extra[@]}" -artifact_prefix="$work/$n/" "$work/$n/corpus" "$top/fuzz/corpus/$n" \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ $rc = 0 ]; then
        echo "fuzz $n: ${secs}s, ${execs:-?} executions, no finding" >"$work/$n/result"
        return 0
    fi
    {
        echo "fuzz $n: FINDING (exit $rc) after ${execs:-?} executions; input: $(ls "$work/$n"/crash-* "$work/$n"/leak-* "$work/$n"/timeout-* "$work/$n"/oom-* 2>/dev/null | head -1)"
        grep -E "ERROR|SUMMARY|runtime error|^    #[0-9] " "$log" | head -20
    } >"$work/$n/result"
    return 1
}
ran=()
running=0
for n in "${names[@]}"; do
    bin=$build/fuzz/fuzz_$n
    [ -x "$bin" ] || { echo "fuzz.sh: $bin is missing (ninja -C $build fuzzers)" >&2; failed=1; continue; }
    mkdir -p "$work/$n/corpus"
    rm -f "$work/$n"/crash-* "$work/$n"/leak-* "$work/$n"/timeout-* "$work/$n"/oom-* "$work/$n/result"
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    fuzz_one "$n" &
    running=$((running + 1))
    ran+=("$n")
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
# verdicts in the targets' order, whatever order they ended in
for n in "${ran[@]}"; do
    if [ -f "$work/$n/result" ]; then
        cat "$work/$n/result"
    else
        echo "fuzz $n: FINDING (no verdict: the runner died)"
        failed=1
    fi
done
[ -n "${VMSH_FUZZ_WORK:-}" ] || rm -rf "$work"
exit $failed
