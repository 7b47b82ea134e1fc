#!/bin/bash
# The coordinator through the real `vmshadow`, with script writers and no VMs
# (CLI.md "Script writers", SPEC "The model"): a good set sends every writer
# its events in order with the set ID in the environment, stores one backup,
# and records each writer's state, shown by `vmshadow writers` together with
# the VM writer's fixed identity (R17).
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"

# Each command appends "<writer> <event> <set id>" to the log.
writer() {
    local ev name=$1 f=$VMSHADOW_WRITERS_DIR/$1.conf
    echo "name = $name" > "$f"
    for ev in prepare-snapshot freeze thaw post-snapshot backup-complete abort; do
        echo "$ev = sh -c 'echo \"$name \$VMSHADOW_EVENT \$VMSHADOW_SET_ID\" >> \"\$0\"' $T/log" >> "$f"
    done
    echo "timeout = 10" >> "$f"
}
writer alpha
writer beta

run "$VMSHADOW" init; [ $RC = 0 ] || fail "init: $ERR"

run "$VMSHADOW" --json backup
[ $RC = 0 ] || fail "backup exit $RC: $ERR"
id=$(echo "$OUT" | jget 'd["backup"]'); set_id=$(echo "$OUT" | jget 'd["set_id"]')
[ "$id" != None ] && [ -n "$set_id" ] || fail "backup --json: $OUT"
echo "$OUT" | jget 'd["vms"] == [] and d["freeze_window_ms"] >= 0 and "bytes_read" in d and "bytes_stored" in d' | grep -qx True \
    || fail "backup --json shape: $OUT"
pass "a set of two script writers is stored as backup $id"

expected=""
for ev in prepare-snapshot:"alpha beta" freeze:"alpha beta" thaw:"beta alpha" \
          post-snapshot:"alpha beta" backup-complete:"alpha beta"; do
    for w in ${ev#*:}; do expected+="$w ${ev%%:*} $set_id"$'\n'; done
done
[ "$(cat "$T/log")" = "${expected%$'\n'}" ] || fail "events: $(cat "$T/log") / wanted $expected"
pass "events arrive in order, with VMSHADOW_EVENT and VMSHADOW_SET_ID"

run "$VMSHADOW" list; [[ $OUT == *"$id"* ]] || fail "list: $OUT"
pass "the backup is listed"
run "$VMSHADOW" --json show "$id"
echo "$OUT" | jget 'd["document"]["set_id"] + " " + " ".join(w["writer"]["name"] for w in d["document"]["writers"])' \
    | grep -qx "$set_id vmshadow VM writer alpha beta" || fail "show: $OUT"
pass "the backup document names the set and its writers"

run "$VMSHADOW" --json writers; [ $RC = 0 ] || fail "writers: $ERR"
echo "$OUT" | jget '[(w["name"], w["id"], w["state"], (w["last_run"] or {}).get("set_id")) for w in d["writers"]]' > "$T/w"
grep -q "('vmshadow VM writer', 'f4bd47b3-8031-4044-ac08-38a03cf3d71d', 'stable', '$set_id')" "$T/w" || fail "VM writer: $(cat "$T/w")"
grep -q "('alpha', '[0-9a-f-]\{36\}', 'stable', '$set_id')" "$T/w" || fail "alpha: $(cat "$T/w")"
pass "writers shows the VM writer's fixed identity and each script writer, stable"
run "$VMSHADOW" writers; [[ $OUT == *"beta"*"stable"* ]] || fail "writers text: $OUT"
pass "writers as text"

[ -z "$(ls "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)" ] || fail "journal left: $(ls "$VMSHADOW_STATE_DIR/journal")"
pass "no journal is left after a good set"

# A writer file that does not load keeps every set from starting.
echo "freez = true" > "$VMSHADOW_WRITERS_DIR/typo.conf"
: > "$T/log"
run "$VMSHADOW" backup
[ $RC = 1 ] && [[ $ERR == *"typo.conf:1"*"freez"* ]] || fail "broken writer file: $RC $ERR"
[ ! -s "$T/log" ] || fail "a writer was called: $(cat "$T/log")"
run "$VMSHADOW" --json writers
echo "$OUT" | jget '[w["state"] for w in d["writers"] if w["name"] == "typo"]' | grep -q invalid || fail "writers typo: $OUT"
pass "a broken writer file stops the backup before any event, and writers shows it invalid"
echo "1..$n"
