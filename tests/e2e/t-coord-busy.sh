#!/bin/bash
# One snapshot set at a time per host (CLI.md exit code 4): while a backup
# runs, a second `vmshadow backup` exits 4 at once instead of waiting, and
# the first one completes unharmed. The recovery every command runs first
# leaves the live set's journal alone.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
first=
scratch_stop() { [ -n "$first" ] && kill "$first" 2>/dev/null; return 0; }

# The freeze command signals that the set is under way, then waits for the
# test to let it go (a file), so the first set is live for as long as needed.
cat > "$VMSHADOW_WRITERS_DIR/slow.conf" <<CONF
name = slow
freeze = sh -c 'touch $T/frozen; while [ ! -e $T/go ]; do sleep 0.1; done'
thaw = sh -c 'echo thaw >> $T/log'
abort = sh -c 'echo abort >> $T/log'
timeout = 120
CONF
run "$VMSHADOW" init; [ $RC = 0 ] || fail "init: $ERR"

"$VMSHADOW" backup > "$T/first.out" 2> "$T/first.err" &
first=$!
for _ in $(seq 600); do [ -e "$T/frozen" ] && break; sleep 0.1; done
[ -e "$T/frozen" ] || fail "the first set never reached freeze: $(cat "$T/first.err")"

run "$VMSHADOW" backup
[ $RC = 4 ] || fail "second backup: exit $RC, want 4: $ERR"
[[ $ERR == *"busy"* ]] || fail "second backup message: $ERR"
# It returned while the first still holds the set: it did not wait for it.
kill -0 "$first" 2>/dev/null || fail "the first backup ended before the second returned"
[ ! -e "$T/go" ] || fail "impossible"
pass "a second backup exits 4 at once while a set runs"

run "$VMSHADOW" writers
[ $RC = 0 ] || fail "writers during a set: $RC $ERR"
[ ! -s "$T/log" ] || fail "recovery touched the live set: $(cat "$T/log")"
pass "other commands run beside the set and leave its journal alone"

touch "$T/go"
wait "$first"; rc=$?; first=
[ $rc = 0 ] || fail "first backup: exit $rc: $(cat "$T/first.err")"
[ "$(cat "$T/log")" = thaw ] || fail "first set's events: $(cat "$T/log")"
id=$(cat "$T/first.out")
run "$VMSHADOW" list; [[ $OUT == *"$id"* ]] || fail "list: $OUT"
pass "the first set completes and is stored"
echo "1..$n"
