#!/bin/bash
# SIGTERM or SIGINT (Ctrl-C) during a set (SPEC R5, R7): vmshadow stops the
# command in progress, thaws what was frozen, sends abort to every writer,
# stores nothing, leaves no journal, and exits 1 saying it was interrupted.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
pid=
scratch_stop() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; return 0; }
run "$VMSHADOW" init; [ $RC = 0 ] || fail "init: $ERR"

writer() {
    local ev name=$1 f=$VMSHADOW_WRITERS_DIR/$1.conf
    echo "name = $name" > "$f"
    for ev in prepare-snapshot freeze thaw post-snapshot backup-complete abort; do
        if [ "$name $ev" = "b freeze" ]; then
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT\" >> \"\$0\"; touch $T/frozen; exec sleep 300' $T/log" >> "$f"
        else
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT\" >> \"\$0\"' $T/log" >> "$f"
        fi
    done
    echo "timeout = 600" >> "$f"
}
writer a; writer b

for sig in TERM INT; do
    : > "$T/log"; rm -f "$T/frozen"
    "$VMSHADOW" --json backup > "$T/out" 2> "$T/bg.err" &
    pid=$!
    for _ in $(seq 600); do [ -e "$T/frozen" ] && break; sleep 0.1; done
    [ -e "$T/frozen" ] || fail "the set never reached freeze: $(cat "$T/bg.err")"
    kill -s $sig "$pid"
    wait "$pid"; rc=$?; pid=
    [ $rc = 1 ] || fail "SIG$sig: exit $rc: $(cat "$T/bg.err")"
    grep -q "interrupted" "$T/bg.err" || fail "SIG$sig: message: $(cat "$T/bg.err")"
    [ "$(jget 'd["backup"]' < "$T/out")" = None ] || fail "SIG$sig: backup stored: $(cat "$T/out")"
    [ "$(cat "$T/log")" = "a prepare-snapshot
b prepare-snapshot
a freeze
b freeze
b thaw
a thaw
b abort
a abort" ] || fail "SIG$sig: events: $(cat "$T/log")"
    [ -z "$(ls "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)" ] || fail "SIG$sig: journal left"
    run "$VMSHADOW" --json list
    [ "$(echo "$OUT" | jget 'len(d["backups"])')" = 0 ] || fail "SIG$sig: a backup is listed: $OUT"
    pass "SIG$sig while frozen: the freeze command is stopped, both writers thawed and aborted, nothing stored"
done
echo "1..$n"
