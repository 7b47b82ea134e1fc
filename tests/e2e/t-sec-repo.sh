#!/bin/bash
# A hostile repository writer (issue 20, points 4, 5, 7 and 8;
# docs/reliability.md "A hostile repository"), against the real binary with
# repositories made by vmshadow-repo-tool (no guests): an index or a manifest
# copied over another of the same size, in unencrypted and encrypted
# repositories; a config with its encryption removed, or with a field
# altered; a key file for an unencrypted repository; an index whose size
# disagrees with its manifest; a pack table entry whose offset wraps past
# 2^64. Each time `verify` names the backup (and file) and exits 3,
# `extract` refuses with exit 3 and writes nothing, and `gc` refuses with
# exit 3 and deletes nothing (garbage from an aborted backup stays).
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
unset VMSHADOW_KEY_FILE
echo "correct horse battery staple" >"$T/key"
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# fresh [--encrypt]: backups A and B, each of one file f of the same size
# (random bytes, stored raw), and garbage from an aborted backup
fresh() {
    rm -rf "$T/repo"
    KEYOPT=()
    unset VMSHADOW_KEY_FILE
    if [ "${1:-}" = --encrypt ]; then
        "$VMSHADOW" init --encrypt --key-file "$T/key" >/dev/null || fail "init --encrypt"
        KEYOPT=(--key-file "$T/key")
        export VMSHADOW_KEY_FILE=$T/key
    else
        "$VMSHADOW" init >/dev/null || fail "init"
    fi
    head -c 200000 /dev/urandom >"$T/a.bin"
    head -c 200000 /dev/urandom >"$T/b.bin"
    head -c 300000 /dev/urandom >"$T/c.bin"
    A=$("$TOOL" backup "${KEYOPT[@]}" --doc '{"d":1}' "$VMSHADOW_REPO" "f=$T/a.bin" 2>/dev/null | field backup)
    B=$("$TOOL" backup "${KEYOPT[@]}" --doc '{"d":1}' "$VMSHADOW_REPO" "f=$T/b.bin" 2>/dev/null | field backup)
    "$TOOL" backup "${KEYOPT[@]}" --abort "$VMSHADOW_REPO" "g=$T/c.bin" >/dev/null 2>&1
    [ -n "$A" ] && [ -n "$B" ] || fail "backups"
    run "$VMSHADOW" verify
    [ $RC = 0 ] || fail "a fresh repository does not verify: $OUT $ERR"
}
index_of() { "$VMSHADOW" --json show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['files'][0]['index'])"; }
ipath() { echo "$VMSHADOW_REPO/index/${1:0:2}/$1"; }
tree() { (cd "$VMSHADOW_REPO" && find . -type f ! -path './locks/*' | sort); }
copy_over() { # same size, as an attacker would pick
    [ "$(stat -c %s "$1")" = "$(stat -c %s "$2")" ] || fail "$1 and $2 differ in size"
    cp "$1" "$2.x" && mv -f "$2.x" "$2"
}

# expect WHAT BACKUP FILE-OR-EMPTY TEXT: verify, extract and gc all refuse
expect() {
    local what=$1 b=$2 file=$3 text=$4
    run "$VMSHADOW" verify
    local line="DAMAGED backup $b"
    [ -n "$file" ] && line+=", file $file"
    [ $RC = 3 ] && [[ $OUT == *"$line"* ]] && [[ $OUT$ERR == *"$text"* ]] ||
        fail "$what: verify exit $RC, expected 3 naming '$line' with '$text': $OUT $ERR"
    pass "$what: verify names the backup${file:+ and file} (exit 3)"
    rm -f "$T/out"
    run "$VMSHADOW" extract "$b" f "$T/out"
    [ $RC = 3 ] && [ ! -e "$T/out" ] && [[ $ERR == *"$text"* ]] ||
        fail "$what: extract exit $RC, expected 3 with '$text': $ERR"
    ls "$T"/out.tmp.* >/dev/null 2>&1 && fail "$what: extract left a temporary file"
    pass "$what: extract refuses (exit 3) and writes nothing"
    local before after
    before=$(tree)
    run "$VMSHADOW" gc
    after=$(tree)
    [ $RC = 3 ] && [[ $ERR == *"nothing deleted"* ]] && [[ $ERR == *"$b"* ]] && [[ $ERR == *verify* ]] ||
        fail "$what: gc exit $RC, expected 3 naming $b: $ERR"
    [ "$before" = "$after" ] || fail "$what: gc deleted files: $(diff <(echo "$before") <(echo "$after"))"
    pass "$what: gc refuses (exit 3), names the backup and deletes nothing"
}

for mode in plain encrypted; do
    opt=()
    [ $mode = encrypted ] && opt=(--encrypt)
    fresh "${opt[@]}"
    copy_over "$(ipath "$(index_of "$B")")" "$(ipath "$(index_of "$A")")"
    text="does not match its name"
    [ $mode = encrypted ] && text="fails authentication"
    expect "$mode: index copied over another" "$A" f "$text"

    fresh "${opt[@]}"
    copy_over "$VMSHADOW_REPO/backups/$B" "$VMSHADOW_REPO/backups/$A"
    text="another backup's manifest was copied over it"
    [ $mode = encrypted ] && text="fails authentication"
    expect "$mode: manifest copied over another" "$A" "" "$text"
done

# ---- the config ----
fresh
VMSHADOW_KEY_FILE=$T/key run "$VMSHADOW" list
[ $RC = 1 ] && [[ $ERR == *"not encrypted"* ]] && [[ $ERR == *"key file was given"* ]] ||
    fail "a key file for an unencrypted repository: $RC $ERR"
pass "a key file for an unencrypted repository is refused"

fresh --encrypt
cp "$VMSHADOW_REPO/config" "$T/config.orig"
python3 - "$VMSHADOW_REPO/config" <<'PY' || fail "cannot edit the config"
import json, sys
c = json.load(open(sys.argv[1]))
c["encryption"] = None
c.pop("mac", None)
c["hash"] = "sha256"
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
run "$VMSHADOW" list
[ $RC = 1 ] && [[ $ERR == *"key file was given"* ]] || fail "downgraded config with the key: $RC $ERR"
pass "encryption removed from the config: refused when the key is given"
unset VMSHADOW_KEY_FILE
run "$VMSHADOW" verify
[ $RC = 3 ] && [[ $OUT$ERR == *"is encrypted but the repository's config says unencrypted"* ]] ||
    fail "downgraded config, verify without key: $RC $OUT $ERR"
pass "encryption removed from the config: verify without a key refuses (exit 3)"
rm -f "$T/out"
run "$VMSHADOW" extract "$A" f "$T/out"
[ $RC = 3 ] && [ ! -e "$T/out" ] && [[ $ERR == *"config says unencrypted"* ]] ||
    fail "downgraded config, extract: $RC $ERR"
pass "encryption removed from the config: extract refuses (exit 3)"
before=$(tree)
run "$VMSHADOW" gc
[ $RC = 3 ] && [ "$before" = "$(tree)" ] || fail "downgraded config, gc: $RC $ERR"
pass "encryption removed from the config: gc refuses and deletes nothing"
run "$TOOL" backup "$VMSHADOW_REPO" "plain=buf:PLAINTEXT-AFTER-DOWNGRADE"
[ $RC != 0 ] && ! grep -rqa PLAINTEXT-AFTER-DOWNGRADE "$VMSHADOW_REPO" ||
    fail "a backup into the downgraded repository stored plaintext: $RC $OUT $ERR"
pass "encryption removed from the config: a backup without a key refuses to store plaintext"
cp "$T/config.orig" "$VMSHADOW_REPO/config"
sed -i 's/"compression_level": -\?[0-9]*/"compression_level": 9/' "$VMSHADOW_REPO/config"
grep -q '"compression_level": 9' "$VMSHADOW_REPO/config" || fail "cannot alter the config's compression_level"
VMSHADOW_KEY_FILE=$T/key run "$VMSHADOW" list
[ $RC = 3 ] && [[ $ERR == *"config fails authentication"* ]] || fail "altered config: $RC $ERR"
pass "an altered field of an encrypted config is noticed with the key (exit 3)"
cp "$T/config.orig" "$VMSHADOW_REPO/config"
sed -i 's/"version": 2/"version": 1/' "$VMSHADOW_REPO/config"
VMSHADOW_KEY_FILE=$T/key run "$VMSHADOW" list
[ $RC = 3 ] && [[ $ERR == *"made for version 2"* ]] || fail "lowered version: $RC $ERR"
pass "a lowered format version is noticed with the key (exit 3)"
cp "$T/config.orig" "$VMSHADOW_REPO/config"
VMSHADOW_KEY_FILE=$T/key run "$VMSHADOW" verify
[ $RC = 0 ] || fail "the original config does not verify again: $RC $OUT $ERR"

# ---- an index whose size disagrees with its manifest (point 8) ----
fresh
python3 - "$VMSHADOW_REPO/backups/$A" <<'PY' || fail "cannot edit the manifest"
import hashlib, json, struct, sys
p = sys.argv[1]
b = open(p, "rb").read()
n = struct.unpack_from("<Q", b, 16)[0]
m = json.loads(b[24:24 + n])
m["files"][0]["size"] *= 3
body = json.dumps(m).encode()
hdr = b[:16] + struct.pack("<Q", len(body))
out = hdr + body
open(p + ".x", "wb").write(out + hashlib.sha256(out).digest())
PY
mv -f "$VMSHADOW_REPO/backups/$A.x" "$VMSHADOW_REPO/backups/$A"
expect "index size differs from the manifest" "$A" f "index size does not match the manifest"

# ---- a pack table entry whose offset wraps (point 7) ----
fresh
P=$(ls -tr "$VMSHADOW_REPO"/packs/*/*.pack | head -1)
python3 - "$P" <<'PY' || fail "cannot edit the pack"
import hashlib, struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
ft = len(b) - 64
toff, tlen = struct.unpack_from("<QQ", b, ft)
# entry 0's blob offset: 2^64 - 8, so that offset + length wraps
struct.pack_into("<Q", b, toff + 32, 2**64 - 8)
b[ft + 24:ft + 56] = hashlib.sha256(bytes(b[toff:toff + tlen])).digest()
open(p, "wb").write(b)
PY
run "$VMSHADOW" verify
[ $RC = 3 ] && [[ $OUT == *"table entry 0 is damaged"* ]] && [[ $OUT == *"DAMAGED backup $A, file f"* ]] ||
    fail "a wrapping blob offset: verify $RC $OUT $ERR"
pass "a pack table offset near 2^64 is refused as damage (exit 3), its backup named"
run "$VMSHADOW" extract "$A" f "$T/out2"
[ $RC = 3 ] && [ ! -e "$T/out2" ] || fail "a wrapping blob offset: extract $RC $ERR"
pass "a pack table offset near 2^64: extract refuses (exit 3)"
echo "1..$n"
