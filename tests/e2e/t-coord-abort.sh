#!/bin/bash
# A script writer that fails (non-zero exit) or runs past its timeout at each
# event aborts the set (SPEC "The model", R5): exit 1, "backup": null, no new
# backup, every writer gets `abort`, Thaw follows Freeze, and `writers` shows
# the failing writer's state and error.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"

# writer NAME [EVENT COMMAND]: logs every event, runs COMMAND at EVENT.
writer() {
    local ev name=$1 bad_ev=${2:-} bad_cmd=${3:-} f=$VMSHADOW_WRITERS_DIR/$1.conf
    echo "name = $name" > "$f"
    for ev in prepare-snapshot freeze thaw post-snapshot backup-complete abort; do
        if [ "$ev" = "$bad_ev" ]; then
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT\" >> \"\$0\"; $bad_cmd' $T/log" >> "$f"
        else
            echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT\" >> \"\$0\"' $T/log" >> "$f"
        fi
    done
    echo "timeout = 1" >> "$f"
}

run "$VMSHADOW" init; [ $RC = 0 ] || fail "init: $ERR"
backups() { "$VMSHADOW" --json list | jget 'len(d["backups"]) if isinstance(d, dict) else len(d)'; }
before=$(backups)

for how in exit sleep; do
    for ev in prepare-snapshot freeze thaw post-snapshot backup-complete; do
        rm -f "$VMSHADOW_WRITERS_DIR"/*.conf; : > "$T/log"
        if [ $how = exit ]; then cmd="exit 7"; else cmd="exec sleep 30"; fi
        writer a; writer b "$ev" "$cmd"; writer c
        run "$VMSHADOW" --json backup
        [ $RC = 1 ] || fail "$how at $ev: exit $RC: $ERR"
        [ "$(echo "$OUT" | jget 'd["backup"]')" = None ] || fail "$how at $ev: backup not null: $OUT"
        if [ $how = exit ]; then [[ $ERR == *"writer b at $ev"*"exited with status 7"* ]] || fail "message: $ERR"
        else [[ $ERR == *"writer b at $ev"*"timeout"* ]] || fail "message: $ERR"; fi
        for w in a b c; do
            [ "$(grep -c "^$w abort$" "$T/log")" = 1 ] || fail "$how at $ev: $w did not get one abort: $(cat "$T/log")"
            [ "$(tail -n +"$(grep -n "^$w abort$" "$T/log" | cut -d: -f1)" "$T/log" | grep -c "^$w ")" = 1 ] \
                || fail "$how at $ev: $w got events after abort: $(cat "$T/log")"
            if grep -q "^$w freeze$" "$T/log"; then
                grep -q "^$w thaw$" "$T/log" || fail "$how at $ev: $w frozen, never thawed: $(cat "$T/log")"
            fi
        done
        if [ "$ev" != backup-complete ]; then
            ! grep -q "backup-complete" "$T/log" || fail "$how at $ev: backup-complete sent: $(cat "$T/log")"
        fi
        [ "$(backups)" = "$before" ] || fail "$how at $ev: a backup was stored"
        run "$VMSHADOW" --json writers
        echo "$OUT" | jget '{w["name"]: (w["state"], (w["last_error"] or {}).get("event")) for w in d["writers"]}' > "$T/st"
        grep -q "'b': ('failed-at-$ev', '$ev')" "$T/st" || fail "$how at $ev: states $(cat "$T/st")"
        grep -q "'a': ('stable', None)" "$T/st" || fail "$how at $ev: a's state $(cat "$T/st")"
        [ -z "$(ls "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)" ] || fail "$how at $ev: journal left behind"
        pass "writer b: $how at $ev aborts the set; a, b, c get abort; nothing stored; states recorded"
    done
done
echo "1..$n"
