#!/bin/bash
# Hostile guests and hostile backups (issue 8 item 3), on shut-off lab VMs
# (no guest boots):
#  - no poisoning through deduplication: two VMs whose disks share most of
#    their content (same blocks, same offsets, and a block moved) are backed
#    up together and restore byte-identical, each to its own bytes;
#  - a backup's names are sanitised: a crafted backup whose document names a
#    VM "../../etc", or a disk path with ".." components, is refused and
#    writes nothing outside the restore's target;
#  - a restore never follows a symbolic link it did not make: links planted
#    at its temporary paths, at its final path and at the qcow2 conversion's
#    output leave their targets untouched;
#  - host devices (a block device disk) of a backup are not attached without
#    --host-devices, and are with it.
# Crafted backups are made with the repository tool (bench/vmshadow-repo-tool)
# from a real backup's files and an edited copy of its document.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
[ -x "$TOOL" ] || fail "the repository tool is not built ($TOOL)"
lab_init
e2e_env
LOOP=
cleanup_h() { [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null; return 0; }
trap 'cleanup_h; lab_cleanup' EXIT
T=$LAB_WORK/h
mkdir -p "$T"
vsh init
check "init" test "$RC" = 0

# ---- 1. shared content restores byte-identical per VM (SHA-256 chunk IDs)
lab_guest_define a --raw
lab_guest_define b --raw
A=$(lab_domname a); B=$(lab_domname b)
AD=$(lab_disk a raw); BD=$(lab_disk b raw)
head -c 8M /dev/urandom >"$T/shared"
head -c 4M /dev/urandom >"$T/only-a"
head -c 4M /dev/urandom >"$T/only-b"
for d in "$AD" "$BD"; do dd if="$T/shared" of="$d" bs=1M seek=8 conv=notrunc status=none; done
dd if="$T/only-a" of="$AD" bs=1M seek=20 conv=notrunc status=none
dd if="$T/only-b" of="$BD" bs=1M seek=20 conv=notrunc status=none
# the same blocks at another offset in b, and one block differing by a bit
dd if="$T/shared" of="$BD" bs=1M seek=32 count=2 conv=notrunc status=none
dd if="$T/shared" of="$AD" bs=1M seek=40 count=1 conv=notrunc status=none
dd if="$T/shared" bs=1M count=1 status=none | python3 -c '
import sys; b=bytearray(sys.stdin.buffer.read()); b[4096]^=1; sys.stdout.buffer.write(b)' |
    dd of="$BD" bs=1M seek=40 conv=notrunc status=none
sa=$(sha256sum <"$AD"); sb=$(sha256sum <"$BD")
vsh --json backup "$A" "$B"
ID=$(jq -r .backup <<<"$OUT")
check "backup of two VMs sharing content" test "$RC" = 0 -a "$ID" != null
vsh --json show "$ID"
check "deduplication stored the shared blocks once (less than the two disks' data)" \
    test "$(jq .stored_bytes <<<"$OUT")" -lt $((26 * 1024 * 1024))
vsh --json restore "$ID" --force --to "$T/to"
check "restore of both exits 0" test "$RC" = 0
check "$A restores byte-identical" test "$(sha256sum <"$T/to/$A/a.data.raw")" = "$sa"
check "$B restores byte-identical" test "$(sha256sum <"$T/to/$B/b.data.raw")" = "$sb"

# ---- 2. crafted backups with hostile names
vsh --json backup "$A"
AID=$(jq -r .backup <<<"$OUT")
check "backup of $A for crafting" test "$RC" = 0 -a "$AID" != null
vsh --json show "$AID"
jq .document <<<"$OUT" >"$T/doc.json"
for f in disk/vda config/domain.xml; do
    vsh extract "$AID" "$A/$f" "$T/$(basename $f)"
    check "extract $A/$f" test "$RC" = 0
done
# craft NAME JQ-FILTER: a backup whose document is doc.json | FILTER, whose
# files are stored under NAME/disk/vda and NAME/config/domain.xml; prints its ID
craft() {
    local doc; doc=$(jq -c "$2" "$T/doc.json")
    "$TOOL" backup --doc "$doc" "$VMSHADOW_REPO" "$1/disk/vda=$T/vda" "$1/config/domain.xml=$T/domain.xml" 2>"$T/craft.err" |
        jq -r .backup
}
comp='.writers[] | select(.components | length > 0) | .components[0]'
EVIL=$(craft "../../etc" "(.vms[0].name = \"../../etc\") | ((($comp).name) = \"../../etc\")")
check "a backup naming its VM ../../etc can be crafted" test -n "$EVIL" -a "$EVIL" != null
mkdir -p "$T/target"
vsh restore "$EVIL" --to "$T/target/to"
check "restore of a VM named ../../etc fails" test "$RC" != 0
check "and says the name is not usable" grep -qi "cannot be used\|not safe\|name" <<<"$ERR"
check "nothing was written outside the target" test -z "$(find "$T" -newer "$T/doc.json" -name '*.raw' -not -path "$T/to/*")"
check "no etc directory appeared beside the target" test ! -e "$T/etc" -a ! -e "$T/target/etc"
vsh restore "$EVIL" --force
check "restore of it in place fails too" test "$RC" != 0
check "no VM named ../../etc was defined" sh -c "! virsh -q -c $LAB_URI dominfo ../../etc >/dev/null 2>&1"

mkdir -p "$T/in"
DOTS=$(craft "$A" "(($comp).files[] | select(.kind == \"disk\") | .path) = \"$T/in/../escaped.raw\"")
check "a backup whose disk path has .. can be crafted" test -n "$DOTS" -a "$DOTS" != null
vsh restore "$DOTS" --force
check "restore of a disk path with .. fails" test "$RC" != 0
check "and names the path" grep -q "escaped.raw" <<<"$ERR"
check "no file was written at the resolved path" test ! -e "$T/escaped.raw"
check "no temporary file either" test -z "$(find "$T" -name '*.vmshadow-restore*')"
check "$A is defined as it was" sh -c "virsh -q -c $LAB_URI dominfo $A >/dev/null"
vsh restore "$DOTS" --force --to "$T/dots"
check "under --to the file name alone is used: it lands inside the target" test "$RC" = 0 -a -f "$T/dots/$A/escaped.raw"

# ---- 3. symbolic links planted at the restore's paths
echo victim >"$T/victim"
plant() { mkdir -p "$(dirname "$1")"; ln -sfn "$T/victim" "$1"; }
victim_ok() { test "$(cat "$T/victim")" = victim; }
TO=$T/sym/$A
plant "$TO/a.data.raw.vmshadow-restore"
plant "$TO/a.data.raw.vmshadow-restore.tmp.1"
vsh restore "$AID" --force --to "$T/sym"
check "restore with links planted at its temporary paths exits 0" test "$RC" = 0
check "the link targets are untouched" victim_ok
check "the disk is a file of its own" test -f "$TO/a.data.raw" -a ! -L "$TO/a.data.raw"
plant "$TO/a.data.raw"
vsh restore "$AID" --force --to "$T/sym"
check "restore over a link planted at its final path" test "$RC" = 0
check "the link target is untouched" victim_ok
check "the disk replaced the link" test -f "$TO/a.data.raw" -a ! -L "$TO/a.data.raw"
# a qcow2 disk is converted through <tmp>.convert by qemu-img
lab_guest_define q
Q=$(lab_domname q)
vsh --json backup "$Q"
QID=$(jq -r .backup <<<"$OUT")
check "backup of a qcow2 VM" test "$RC" = 0 -a "$QID" != null
plant "$T/symq/$Q/q.data.qcow2.vmshadow-restore.convert"
vsh restore "$QID" --force --to "$T/symq"
check "restore with a link planted at the conversion's output exits 0" test "$RC" = 0
check "the link target is untouched" victim_ok
check "the qcow2 disk is a file of its own" test -f "$T/symq/$Q/q.data.qcow2" -a ! -L "$T/symq/$Q/q.data.qcow2"

# ---- 4. host devices are not attached without --host-devices
truncate -s 16M "$T/blockdev.img"
LOOP=$(losetup -f --show "$T/blockdev.img") || fail "no loop device"
# a SCSI LUN pass-through of it: a host device (a plain block device is a
# virtual disk and captured since issue 25)
lab_guest_define d --raw --disk-xml "<disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='$LOOP'/><target dev='sdb' bus='scsi'/></disk>"
D=$(lab_domname d)
vsh --json backup "$D"
DID=$(jq -r .backup <<<"$OUT")
check "backup of a VM with a LUN pass-through" test "$RC" = 0 -a "$DID" != null
check "the LUN pass-through was excluded (R6)" grep -q "LUN pass-through" <<<"$ERR$OUT"
vsh --json restore "$DID" --force
check "restore exits 0" test "$RC" = 0
check "the restored VM has no block device" sh -c "! virsh -q -c $LAB_URI dumpxml $D | grep -q \"$LOOP\""
vsh --json restore "$DID" --force --dry-run
check "the restore plan says the host device is not attached" \
    test "$(jq -r '.vms[0].host_devices_not_attached | length' <<<"$OUT")" -ge 1
vsh --json restore "$DID" --force --host-devices
check "restore --host-devices exits 0" test "$RC" = 0
check "with --host-devices the block device is attached" sh -c "virsh -q -c $LAB_URI dumpxml $D | grep -q \"$LOOP\""
e2e_done
