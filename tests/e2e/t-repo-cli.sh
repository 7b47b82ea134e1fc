#!/bin/bash
# The repository commands on files, no VMs (CLI.md): init, list, show,
# verify, prune (--dry-run), gc, their --json forms and exit codes. Backups
# are made with vmshadow-repo-tool, which calls the same library API as the
# VM writer (include/vmshadow/repo).
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE

# an 8 MiB image: holes, text, random
truncate -s 8M "$T/a.img"
yes "vmshadow test line" | head -c 2M | dd of="$T/a.img" conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$T/a.img" bs=1M seek=5 conv=notrunc status=none
cp --sparse=always "$T/a.img" "$T/b.img"
head -c 64K /dev/urandom | dd of="$T/b.img" bs=64K seek=3 conv=notrunc status=none

run "$VMSHADOW" init; [ $RC = 0 ] && [[ $OUT == *"created repository"* ]] || fail "init ($RC: $ERR)"; pass "init"
run "$VMSHADOW" init; [ $RC = 1 ] && [[ $ERR == *"not empty"* ]] || fail "init twice refused ($RC: $ERR)"; pass "init refuses an existing repository"
run "$VMSHADOW" list; [ $RC = 0 ] || fail "empty list"; pass "list of an empty repository"
run "$VMSHADOW" show latest; [ $RC = 1 ] || fail "show latest on empty: $RC"; pass "show latest without backups fails"

ids=()
for img in a b a; do
    run "$TOOL" backup --doc "{\"vms\":[{\"name\":\"vm-$img\",\"method\":\"saved-state\"}]}" "$VMSHADOW_REPO" "vm/disk.img=$T/$img.img" "vm/domain.xml=buf:<domain/>"
    [ $RC = 0 ] || fail "backup of $img: $ERR"
    ids+=("$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backup"])')")
    sleep 1.1 # distinct seconds in the listing
done
pass "three backups made"

run "$VMSHADOW" list
[ $RC = 0 ] && [ "$(echo "$OUT" | grep -c saved-state)" = 3 ] && [[ $OUT == *"${ids[0]}"* ]] || fail "list: $OUT"
pass "list shows 3 backups with VM and method"
run "$VMSHADOW" --json list
echo "$OUT" | python3 -c '
import json,sys; d=json.load(sys.stdin); b=d["backups"]
assert len(b)==3, b
assert b[0]["document"]["vms"][0]["name"]=="vm-a"
assert {f["name"] for f in b[1]["files"]}=={"vm/disk.img","vm/domain.xml"}
assert b[1]["files"][0]["size"]==8<<20 or b[1]["files"][1]["size"]==8<<20
' || fail "list --json: $OUT"
pass "list --json has documents and files"

run "$VMSHADOW" show "${ids[1]:0:6}"
[ $RC = 0 ] && [[ $OUT == *"vm/disk.img"* ]] && [[ $OUT == *"vm-b"* ]] && [[ $OUT == *"${ids[1]}"* ]] || fail "show prefix: $OUT $ERR"
pass "show by unique prefix"
run "$VMSHADOW" --json show latest
echo "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['id']=='${ids[2]}'" || fail "show --json latest"
pass "show --json latest"
run "$VMSHADOW" show ffffffffffffffff; [ $RC = 1 ] || fail "show unknown: $RC"; pass "show of an unknown backup fails"
run "$VMSHADOW" show; [ $RC = 2 ] || fail "show without arg: $RC"; pass "show without BACKUP is a usage error"

run "$VMSHADOW" verify; [ $RC = 0 ] && [[ $OUT == *"verified 3 backups"* ]] && [[ $OUT == *"no damage"* ]] || fail "verify: $OUT $ERR"; pass "verify of a sound repository"
run "$VMSHADOW" --json verify "${ids[0]}"
echo "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['ok'] and d['backups_checked']==1 and d['chunks_checked']>0" || fail "verify --json one backup: $OUT"
pass "verify --json of one backup"

run "$VMSHADOW" prune; [ $RC = 2 ] || fail "prune without rules: $RC"; pass "prune without a rule is a usage error"
run "$VMSHADOW" prune --keep-last 1 --dry-run
[ $RC = 0 ] && [ "$(echo "$OUT" | grep -c 'would forget')" = 2 ] || fail "prune dry run: $OUT"
run "$VMSHADOW" --json list; [ "$(echo "$OUT" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["backups"]))')" = 3 ] || fail "dry run changed something"
pass "prune --dry-run reports and changes nothing"
run "$VMSHADOW" --json prune --keep-last 1
echo "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['keep']==['${ids[2]}'] and sorted(d['forget'])==sorted(['${ids[0]}','${ids[1]}'])" || fail "prune: $OUT"
run "$VMSHADOW" --json list; [ "$(echo "$OUT" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["backups"]))')" = 1 ] || fail "prune left: $OUT"
pass "prune --keep-last 1 keeps the newest"

before=$(du -sb "$VMSHADOW_REPO" | cut -f1)
run "$VMSHADOW" --json gc; [ $RC = 0 ] || fail "gc: $ERR"
echo "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['indexes_deleted']>=1" || fail "gc deleted no index: $OUT"
after=$(du -sb "$VMSHADOW_REPO" | cut -f1)
[ "$after" -lt "$before" ] || fail "gc freed nothing ($before -> $after)"
pass "gc frees what the pruned backups alone needed"
run "$VMSHADOW" verify; [ $RC = 0 ] || fail "verify after gc: $OUT"; pass "verify after gc"
run "$TOOL" restore "$VMSHADOW_REPO" latest vm/disk.img "$T/out.img"; [ $RC = 0 ] || fail "restore: $ERR"
cmp "$T/a.img" "$T/out.img" || fail "restored image differs"
[ "$(stat -c %b "$T/out.img")" -lt $((6 * 2048)) ] || fail "restored image is not sparse"
pass "restore after gc is byte-identical and sparse"
echo "1..$n"
