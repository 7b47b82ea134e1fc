#!/bin/bash
# Encryption at rest (issue 4): init --encrypt --key-file; backups and
# restores with the key; deduplication still works; no plaintext (data,
# names, documents) appears in the repository's files; a missing or wrong
# key is a clear error; damage is still found by verify (exit 3).
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo "correct horse battery staple" > "$T/key"
echo "wrong passphrase" > "$T/badkey"
truncate -s 4M "$T/d.img"
yes "PLAINTEXT-MARKER-7f3a in the guest" | head -c 1M | dd of="$T/d.img" conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$T/d.img" bs=1M seek=2 conv=notrunc status=none

run "$VMSHADOW" init --encrypt; [ $RC = 2 ] || fail "--encrypt without key file: $RC"
pass "--encrypt without --key-file is a usage error"
run "$VMSHADOW" init --encrypt --key-file "$T/key"; [ $RC = 0 ] && [[ $OUT == *encrypted* ]] || fail "init: $ERR"
pass "init --encrypt --key-file"
grep -q '"aes-256-gcm"' "$VMSHADOW_REPO/config" || fail "config does not say aes-256-gcm"

run "$TOOL" backup --key-file "$T/key" --doc '{"vms":[{"name":"SECRET-VM-NAME"}]}' "$VMSHADOW_REPO" "SECRET-FILE-NAME=$T/d.img"
[ $RC = 0 ] || fail "encrypted backup: $ERR"
run "$TOOL" backup --key-file "$T/key" "$VMSHADOW_REPO" "again=$T/d.img"
[ "$(echo "$OUT" | field new_chunks)" = 0 ] || fail "no deduplication in an encrypted repository: $OUT"
pass "deduplication works in an encrypted repository"
for s in PLAINTEXT-MARKER-7f3a SECRET-VM-NAME SECRET-FILE-NAME; do
    grep -rqa "$s" "$VMSHADOW_REPO" && fail "'$s' readable in the repository"
done
pass "no data, file name or document readable without the key"

run "$VMSHADOW" list; [ $RC = 1 ] && [[ $ERR == *"encrypted"* ]] && [[ $ERR == *"key"* ]] || fail "list without key: $RC $ERR"
pass "a missing key is a clear error"
VMSHADOW_KEY_FILE=$T/badkey run "$VMSHADOW" list; [ $RC = 1 ] && [[ $ERR == *"wrong key"* ]] || fail "wrong key: $RC $ERR"
pass "a wrong key is a clear error"
VMSHADOW_KEY_FILE=$T/key run "$VMSHADOW" list; [ $RC = 0 ] && [[ $OUT == *SECRET-VM-NAME* ]] || fail "list with key: $RC $OUT $ERR"
echo "key-file = $T/key" > "$VMSHADOW_CONFIG"
run "$VMSHADOW" show latest; [ $RC = 0 ] && [[ $OUT == *again* ]] || fail "show with key-file from config: $RC $ERR"
pass "the key comes from \$VMSHADOW_KEY_FILE or the config key key-file"
run "$TOOL" restore --key-file "$T/key" "$VMSHADOW_REPO" latest again "$T/out.img"; [ $RC = 0 ] || fail "restore: $ERR"
cmp "$T/d.img" "$T/out.img" || fail "encrypted restore differs"
pass "encrypted restore is byte-identical"
run "$VMSHADOW" verify; [ $RC = 0 ] || fail "verify: $OUT"
P=$(ls "$VMSHADOW_REPO"/packs/*/*.pack | head -1)
python3 -c "
import sys; f=open(sys.argv[1],'r+b'); f.seek(3000); b=f.read(1); f.seek(3000); f.write(bytes([b[0]^1]))" "$P"
run "$VMSHADOW" verify; [ $RC = 3 ] && [[ $OUT == *"fails authentication"* ]] || fail "damage in an encrypted pack: $RC $OUT"
pass "damage in an encrypted pack is found (exit 3)"
echo "1..$n"
