#!/bin/bash
# Bad input (issue 4): truncated, bit-flipped or missing pack, index and
# manifest files, and a repository of a newer version. `vmshadow verify`
# must find every injected damage, name the backup and file, and exit 3;
# restores of damaged files fail with exit 3 and leave nothing at the target.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
unset VMSHADOW_REPO # every command names its repository
flip() { # flip one bit of $1 at byte offset $2
    python3 -c "
import sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0x10]))" "$1" "$2"
}

truncate -s 4M "$T/a.img"; head -c 1M /dev/urandom | dd of="$T/a.img" conv=notrunc status=none
yes "some text for compression" | head -c 1M | dd of="$T/a.img" bs=1M seek=2 conv=notrunc status=none
truncate -s 2M "$T/b.img"; head -c 1M /dev/urandom | dd of="$T/b.img" conv=notrunc status=none

# fresh: a repository with backup A (a.img, small.txt) then B (b.img)
fresh() {
    rm -rf "$T/repo"; export VMSHADOW_REPO=$T/repo
    "$VMSHADOW" init >/dev/null || fail "init"
    A=$("$TOOL" backup "$VMSHADOW_REPO" disk=$T/a.img small.txt=buf:hello 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["backup"])')
    B=$("$TOOL" backup "$VMSHADOW_REPO" other=$T/b.img 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["backup"])')
    [ -n "$A" ] && [ -n "$B" ] || fail "backups"
    run "$VMSHADOW" verify; [ $RC = 0 ] || fail "fresh repository does not verify: $OUT"
}
# expect_damage WHAT BACKUP [FILE]: verify exits 3 and names them
expect_damage() {
    run "$VMSHADOW" verify
    [ $RC = 3 ] || fail "$1: verify exit $RC, expected 3 ($OUT $ERR)"
    local line="DAMAGED backup $2"; [ -n "${3:-}" ] && line+=", file $3"
    [[ $OUT == *"$line"* ]] || fail "$1: verify does not name '$line': $OUT"
    pass "$1: verify exits 3 naming backup${3:+ and file}"
}
packs_of() { ls -tr "$VMSHADOW_REPO"/packs/*/*.pack; } # oldest (backup A) first
index_of() { # index object of file $2 in backup $1
    "$VMSHADOW" --json show "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print([f['index'] for f in d['files'] if f['name']=='$2'][0])"
}

fresh
P=$(packs_of | head -1); flip "$P" 20000
expect_damage "bit flip in a pack's data" "$A" disk
run "$TOOL" restore "$VMSHADOW_REPO" "$A" disk "$T/out.img"
[ $RC = 3 ] && [ ! -e "$T/out.img" ] && [[ $ERR == *"$A"* ]] || fail "restore of damaged data: rc $RC, $ERR"
ls "$T"/out.img.tmp.* >/dev/null 2>&1 && fail "restore left a temporary file"
pass "restore of a damaged chunk exits 3 and leaves nothing at the target"
run "$VMSHADOW" verify "$B"; [ $RC = 0 ] || fail "verify of the undamaged backup B: $RC $OUT"
pass "verify of an undamaged backup alone passes"

fresh
P=$(packs_of | head -1); sz=$(stat -c %s "$P"); truncate -s $((sz - 100)) "$P"
expect_damage "truncated pack" "$A" disk
[[ $OUT == *"DAMAGED repository"* ]] || fail "truncated pack not reported as such: $OUT"
pass "truncated pack is named"

fresh
for p in $(packs_of); do rm "$p"; done
expect_damage "missing packs" "$A" disk
[[ $OUT == *"DAMAGED backup $B, file other"* ]] || fail "missing packs: backup B not named: $OUT"
pass "missing packs name every backup"

fresh
I=$(index_of "$A" disk); flip "$VMSHADOW_REPO/index/${I:0:2}/$I" 40
expect_damage "bit flip in an index" "$A" disk

fresh
I=$(index_of "$A" small.txt); rm "$VMSHADOW_REPO/index/${I:0:2}/$I"
expect_damage "missing index" "$A" small.txt

fresh
I=$(index_of "$A" disk); f="$VMSHADOW_REPO/index/${I:0:2}/$I"; truncate -s $(( $(stat -c %s "$f") - 1 )) "$f"
expect_damage "truncated index" "$A" disk

fresh
flip "$VMSHADOW_REPO/backups/$A" 60
expect_damage "bit flip in a manifest" "$A"
run "$VMSHADOW" list
[ $RC = 3 ] && [[ $OUT == *"$A  DAMAGED"* ]] && [[ $OUT == *"$B  "* ]] || fail "list with a damaged manifest: $RC $OUT $ERR"
pass "list shows the sound backups, names the damaged manifest and exits 3"
run "$VMSHADOW" --json list
echo "$OUT" | python3 -c "import json,sys; d=json.load(sys.stdin); assert [b['id'] for b in d['backups']]==['$B'] and d['damaged'][0]['backup']=='$A'" || fail "list --json with a damaged manifest: $OUT"
pass "list --json reports the damaged manifest"

fresh
truncate -s 30 "$VMSHADOW_REPO/backups/$B"
expect_damage "truncated manifest" "$B"

fresh
run "$VMSHADOW" gc; [ $RC = 0 ] || fail "gc on a sound repository"
flip "$VMSHADOW_REPO/backups/$B" 70
run "$VMSHADOW" gc; [ $RC = 3 ] && [[ $ERR == *"nothing deleted"* ]] || fail "gc with a damaged manifest: $RC $ERR"
pass "gc refuses to run on a damaged manifest (exit 3, nothing deleted)"

fresh
sed -i 's/"version": 2/"version": 3/' "$VMSHADOW_REPO/config"
run "$VMSHADOW" list; [ $RC = 1 ] && [[ $ERR == *"newer"* ]] && [[ $ERR == *"upgrade"* ]] || fail "newer version: $RC $ERR"
pass "a repository of a newer version is refused with a clear message"

fresh
printf 'garbage' > "$VMSHADOW_REPO/config"
run "$VMSHADOW" verify; [ $RC = 1 ] && [[ $ERR == *"not a vmshadow repository"* ]] || fail "garbage config: $RC $ERR"
pass "a damaged config is refused"

fresh
python3 - "$VMSHADOW_REPO" <<'PY' || fail "cannot patch pack version"
import glob,sys
p=sorted(glob.glob(sys.argv[1]+"/packs/*/*.pack"))[0]
f=open(p,"r+b"); f.seek(8); f.write((2).to_bytes(4,"little"))
PY
run "$VMSHADOW" verify; [ $RC = 1 ] && [[ $ERR == *"newer"* ]] || fail "pack of a newer version: $RC $OUT $ERR"
pass "a pack of a newer version is refused"
echo "1..$n"
