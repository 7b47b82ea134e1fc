#!/bin/bash
# Fault matrix (issue 8): damaged repository data and a wrong key, seen by a
# VM restore and a VM backup (t-repo-damage.sh and t-repo-encrypt.sh cover
# the repository commands). On a shut-off lab VM (no guest boots):
#  - a pack missing, truncated or with a flipped bit: `restore --force` of
#    the VM exits 3 naming the damage, the VM stays defined as it was, its
#    disk untouched, no temporary file left; verify exits 3;
#  - a wrong key: backup and restore fail with a clear message before any
#    VM is touched; no journal is left.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
lab_guest_define a --raw
A=$(lab_domname a); AD=$(lab_disk a raw)
head -c 6M /dev/urandom | dd of="$AD" bs=1M seek=4 conv=notrunc status=none
echo "right key" >"$LAB_WORK/key"
echo "wrong key" >"$LAB_WORK/badkey"
vsh init --encrypt --key-file "$LAB_WORK/key"
check "init (encrypted)" test "$RC" = 0
echo "key-file = $LAB_WORK/key" >>"$VMSHADOW_CONFIG"
vsh --json backup "$A"
ID=$(jq -r .backup <<<"$OUT")
check "backup of $A" test "$RC" = 0 -a "$ID" != null
cp -a "$VMSHADOW_REPO" "$LAB_WORK/repo.good"
sum_backup=$(sha256sum <"$AD")
printf 'CHANGED' | dd of="$AD" bs=1M seek=30 conv=notrunc status=none
xml_before=$(lab_virsh dumpxml "$A")
sum_before=$(sha256sum <"$AD")

unchanged() {
    check "$1: $A still defined as it was" test "$(lab_virsh dumpxml "$A" 2>/dev/null)" = "$xml_before"
    check "$1: its disk is untouched" test "$(sha256sum <"$AD")" = "$sum_before"
    check "$1: no temporary file left" test -z "$(find "$LAB_WORK" "$VMSHADOW_STATE_DIR" -name '*.vmshadow-restore*' -o -name 'restore-*')"
    check "$1: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
}
biggest_pack() { find "$VMSHADOW_REPO/packs" -type f -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2; }
damage() { # damage WHAT: a fresh copy of the good repository, damaged
    rm -rf "$VMSHADOW_REPO"; cp -a "$LAB_WORK/repo.good" "$VMSHADOW_REPO"
    local p; p=$(biggest_pack)
    case $1 in
    missing) rm -f "$p" ;;
    truncated) truncate -s $(($(stat -c %s "$p") / 2)) "$p" ;;
    bitflip) python3 -c "
import sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0x04]))" "$p" $(($(stat -c %s "$p") / 2)) ;;
    esac
}
for what in missing truncated bitflip; do
    damage $what
    vsh restore "$ID" --force
    check "pack $what: restore exits 3" test "$RC" = 3
    check "pack $what: the message says what is damaged" grep -Eqi "damaged|missing|corrupt|authentic|cannot read" <<<"$ERR"
    unchanged "pack $what"
    vsh verify
    check "pack $what: verify exits 3" test "$RC" = 3
done
rm -rf "$VMSHADOW_REPO"; cp -a "$LAB_WORK/repo.good" "$VMSHADOW_REPO"

# A wrong key.
sed -i "s|^key-file = .*|key-file = $LAB_WORK/badkey|" "$VMSHADOW_CONFIG"
vsh restore "$ID" --force
check "wrong key: restore fails" test "$RC" != 0
check "wrong key: the message says the key is wrong" grep -qi "key" <<<"$ERR"
unchanged "wrong key (restore)"
vsh backup "$A"
check "wrong key: backup fails" test "$RC" != 0
check "wrong key: the message says the key is wrong" grep -qi "key" <<<"$ERR"
unchanged "wrong key (backup)"
sed -i "s|^key-file = .*|key-file = $LAB_WORK/key|" "$VMSHADOW_CONFIG"
vsh restore "$ID" --force
check "with the right key the restore works" test "$RC" = 0
check "and brings the backed-up disk back" test "$(sha256sum <"$AD")" = "$sum_backup"
e2e_done
