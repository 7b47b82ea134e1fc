#!/bin/bash
# issue 27: the on-disk chunk index (docs/formats/repository.md, "Chunk
# index runs"). Each backup adds a run of its own; a new backup finds old
# chunks through the runs; gc merges the runs, writing the merged run before
# deleting the old ones, so a kill -9 at any moment of the merge leaves a
# repository that verify finds undamaged, with every chunk still named by a
# run (VMSHADOW_TEST_INDEX_ONLY: no fallback to the pack tables, which would
# hide lost entries). No guests needed.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
BGPID=
scratch_stop() { [ -n "$BGPID" ] && kill -KILL "$BGPID" 2>/dev/null; }
RUNS=$VMSHADOW_REPO/index/runs
runs() { find "$RUNS" -name '*.run' | wc -l; }
tmps() { find "$RUNS" -name '*.tmp.*' | wc -l; }
check_all() { # $1: what happened before
    VMSHADOW_TEST_INDEX_ONLY=1 run "$VMSHADOW" verify
    [ $RC = 0 ] || fail "verify after $1: $OUT $ERR"
    for i in 2 7; do
        VMSHADOW_TEST_INDEX_ONLY=1 "$TOOL" restore "$VMSHADOW_REPO" "${IDS[$i]}" "d$i" "$T/out" \
            >/dev/null || fail "restore of d$i after $1"
        cmp -s "$T/out" "$T/d$i.img" || fail "d$i differs after $1"
    done
}

"$VMSHADOW" init >/dev/null || fail init
declare -A IDS
for i in $(seq 1 10); do
    head -c 4M /dev/urandom > "$T/d$i.img"
    out=$("$TOOL" backup "$VMSHADOW_REPO" "d$i=$T/d$i.img" 2>/dev/null) || fail "backup $i"
    IDS[$i]=$(echo "$out" | jget 'd["backup"]')
done
[ "$(runs)" = 10 ] || fail "expected one run per backup, got $(runs)"
pass "each backup adds a run of its own (10 runs)"
out=$(VMSHADOW_TEST_INDEX_ONLY=1 "$TOOL" backup "$VMSHADOW_REPO" "again=$T/d3.img" 2>/dev/null) \
    || fail "backup again"
[ "$(echo "$out" | jget 'd["new_chunks"]')" = 0 ] || fail "the same data stored again: $out"
pass "a backup of stored data finds every chunk through the runs (nothing stored)"
check_all "the backups"
pass "verify and restores find every chunk through the runs alone"

# 1. killed while the merged run is being written
before=$(runs)
VMSHADOW_TEST_MERGE_DELAY_MS=150 "$VMSHADOW" gc >/dev/null 2>&1 &
BGPID=$!
for _ in $(seq 200); do [ "$(tmps)" -gt 0 ] && break; sleep 0.05; done
[ "$(tmps)" -gt 0 ] || fail "the merge never started writing"
sleep 0.3
kill -KILL $BGPID; wait $BGPID 2>/dev/null; BGPID=
[ "$(runs)" = "$before" ] || fail "runs changed by a merge killed while writing: $(runs)"
pass "gc killed while writing the merged run: the old runs are all there"
check_all "a kill during the merge's write"
pass "verify: no damage after a kill during the merge's write"

# 2. killed while deleting the runs it merged (the new one already durable)
VMSHADOW_TEST_MERGE_DELAY_MS=300 "$VMSHADOW" gc >/dev/null 2>&1 &
BGPID=$!
for _ in $(seq 400); do [ "$(runs)" -gt "$before" ] && break; sleep 0.02; done
[ "$(runs)" -gt "$before" ] || fail "the merged run never appeared"
sleep 0.7
kill -KILL $BGPID; wait $BGPID 2>/dev/null; BGPID=
nr=$(runs)
[ "$nr" -gt 1 ] && [ "$nr" -le "$before" ] || fail "not killed while deleting the old runs ($nr runs)"
pass "gc killed while deleting the merged runs ($nr runs left)"
check_all "a kill during the merge's deletions"
pass "verify: no damage after a kill during the merge's deletions"

# 3. a gc that completes leaves one run, and everything still reads
run "$VMSHADOW" gc; [ $RC = 0 ] || fail "gc: $ERR"
[ "$(runs)" = 1 ] || fail "after gc: $(runs) runs"
[ -z "$(find "$VMSHADOW_REPO" -name '*.tmp.*' -o -name '*.part')" ] || fail "gc left temporary files"
check_all "a complete gc"
pass "a complete gc merges the runs into one; verify and restores pass"

# 4. an old repository (no runs: as vmshadow before issue 27 wrote it) is
# read as before, and upgraded by its first writer
rm -rf "$RUNS"
run "$VMSHADOW" verify; [ $RC = 0 ] || fail "verify without runs: $OUT $ERR"
[ ! -d "$RUNS" ] || [ "$(runs)" = 0 ] || fail "a reader wrote runs"
"$TOOL" backup "$VMSHADOW_REPO" x=buf:upgrade >/dev/null 2>&1 || fail "the upgrading backup"
[ "$(runs)" -ge 1 ] || fail "the first writer did not build runs"
check_all "the upgrade"
pass "a repository without runs is read as before and upgraded by its first writer"
