#!/bin/bash
# SPEC R7: vmshadow is SIGKILLed between journal steps; the next command
# (here `vmshadow writers`, and `vmshadow recover`) undoes what was done:
# the script writers' thaw and abort commands run for the dead set, the
# journal goes, the writers' state says "interrupted", and no backup exists.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
pid=
scratch_stop() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    [ -s "$T/sleeper" ] && kill -9 "$(cat "$T/sleeper")" 2>/dev/null
    return 0
}
run "$VMSHADOW" init; [ $RC = 0 ] || fail "init: $ERR"

# writer NAME STUCK_EVENT: logs "<name> <event> <set>"; at STUCK_EVENT it
# records its PID and blocks, so that the test can kill vmshadow there.
writer() {
    local ev name=$1 stuck=$2 f=$VMSHADOW_WRITERS_DIR/$1.conf
    echo "name = $name" > "$f"
    for ev in prepare-snapshot freeze thaw post-snapshot backup-complete abort; do
        if [ "$ev" = "$stuck" ]; then
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT \$VMSHADOW_SET_ID\" >> \"\$0\"; echo \$\$ > $T/sleeper; exec sleep 300' $T/log" >> "$f"
        else
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT \$VMSHADOW_SET_ID\" >> \"\$0\"' $T/log" >> "$f"
        fi
    done
    echo "timeout = 600" >> "$f"
}

# kill_at EVENT NEXT-COMMAND...: starts a backup, SIGKILLs it while writer b
# is at EVENT, then runs the next command.
kill_at() {
    local ev=$1; shift
    rm -f "$VMSHADOW_WRITERS_DIR"/*.conf "$T/sleeper"; : > "$T/log"
    writer a none; writer b "$ev"
    "$VMSHADOW" backup > /dev/null 2> "$T/bg.err" &
    pid=$!
    for _ in $(seq 600); do [ -s "$T/sleeper" ] && break; sleep 0.1; done
    [ -s "$T/sleeper" ] || fail "backup never reached $ev: $(cat "$T/bg.err")"
    kill -9 "$pid"; wait "$pid" 2>/dev/null; pid=
    # The command it was running is ours to stop too (its own process group).
    kill -9 "$(cat "$T/sleeper")" 2>/dev/null
    set_id=$(awk '{print $3; exit}' "$T/log")
    [ -n "$(ls "$VMSHADOW_STATE_DIR/journal/")" ] || fail "no journal after the kill"
    : > "$T/log.before"; cp "$T/log" "$T/log.before"
    run "$@"
    tail -n +"$(( $(wc -l < "$T/log.before") + 1 ))" "$T/log" > "$T/after"
}

# Killed while b is frozen: both writers' freeze is undone by thaw, newest
# first, then their prepare-snapshot by abort.
kill_at freeze "$VMSHADOW" writers
[ $RC = 0 ] || fail "writers after kill: $RC $ERR"
[ "$(cat "$T/after")" = "b thaw $set_id
a thaw $set_id
b abort $set_id
a abort $set_id" ] || fail "undo after kill at freeze: $(cat "$T/after")"
[[ $ERR == *"undid freeze of b"* ]] || fail "the next command did not say what it undid: $ERR"
[ -z "$(ls "$VMSHADOW_STATE_DIR/journal/")" ] || fail "journal left after recovery"
run "$VMSHADOW" --json writers
echo "$OUT" | jget '[w["state"] for w in d["writers"] if w["name"] in ("a", "b")]' | grep -qx "\['interrupted', 'interrupted'\]" \
    || fail "states after recovery: $OUT"
pass "killed at freeze: the next command thaws and aborts both writers of the dead set"

run "$VMSHADOW" --json list
echo "$OUT" | grep -q "$set_id" && fail "the killed set was stored"
pass "the killed set left no backup"

# Killed while b runs prepare-snapshot (begun, not done): `vmshadow recover`
# undoes b's and a's prepare-snapshot with abort, and says so.
kill_at prepare-snapshot "$VMSHADOW" --json recover
[ $RC = 0 ] || fail "recover: $RC $ERR"
[ "$(cat "$T/after")" = "b abort $set_id
a abort $set_id" ] || fail "undo after kill at prepare-snapshot: $(cat "$T/after")"
echo "$OUT" | jget 'd["undone"], d["left"], d["runs_recovered"], sorted(a["was"] for a in d["actions"])' \
    | grep -qx "2 0 1 \['begun', 'done'\]" || fail "recover --json: $OUT"
pass "killed at prepare-snapshot: recover runs abort for both and reports it"

run "$VMSHADOW" recover
[ $RC = 0 ] && [[ $ERR == *"nothing to recover"* ]] || fail "second recover: $RC $OUT $ERR"
pass "a second recover finds nothing"

# Killed after thaw, during post-snapshot: freeze was already undone by
# thaw, so only abort runs.
kill_at post-snapshot "$VMSHADOW" recover
[ "$(cat "$T/after")" = "b abort $set_id
a abort $set_id" ] || fail "undo after kill at post-snapshot: $(cat "$T/after")"
pass "killed at post-snapshot: only what still needed undoing is undone"
echo "1..$n"
