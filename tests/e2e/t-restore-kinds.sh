#!/bin/bash
# Restore plans onto storage of every kind (issue 25 point 4), on real
# storage: loop devices as host block devices, a libvirt dir pool, the Ceph
# lab's RBD pool. The backups are crafted from a real one (its disk record
# made a block device, a pool volume or an RBD image, as the disk capture
# records them), so that the restore's plan is checked before capture of
# such disks lands:
#  - a block device that exists and is large enough: "written" onto it; one
#    too small, one another VM uses: refused before any change;
#  - --as of a plain block device asks for --to; --to converts any disk into
#    an image file and that restore works (identical to extract, type='file');
#    restored --to again with --force, the image it replaces is freed after
#    the restore, not in its rename (listed in replaced_freed_later, issue 23);
#  - a pool volume: "written" when it exists, "created" (volume XML) when not,
#    refused when the pool is gone;
#  - an RBD image: "written", "created" (rbd create), too small, pool absent;
#  - a device, volume or RBD image the VM defined here does not use (the
#    crafted backup names it): refused before any change (R12);
#  - a real restore in place onto a device: without --force refused before
#    any change (the VM and the device unchanged); with --force written onto
#    the device (identical to extract), the definition naming it.
# Everything created is removed at exit.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
e2e_env
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
T=$LAB_WORK
POOL=vmsh-kinds-$$
RBD_IMGS=()
cleanup() {
    virsh -q -c "$LAB_URI" pool-destroy "$POOL" >/dev/null 2>&1
    virsh -q -c "$LAB_URI" pool-undefine "$POOL" >/dev/null 2>&1
    for i in "${RBD_IMGS[@]}"; do rbd rm -p "$VMSH_CEPH_POOL" "$i" >/dev/null 2>&1; done
    ceph_lab_release
    lab_cleanup
}
trap cleanup EXIT

lab_guest_define g
G=$(lab_domname g)
vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of the shut-off $G" test "$RC" = 0 -a "$ID" != null
vsh --json show "$ID"
jq .document <<<"$OUT" >"$T/doc.json"
for f in disk/vda config/domain.xml; do
    vsh extract "$ID" "$G/$f" "$T/$(basename $f)"
    check "extract $G/$f" test "$RC" = 0
done
comp='.writers[] | select(.components | length > 0) | .components[0]'
SIZE=$(jq -r "$comp | .files[] | select(.name == \"disk/vda\") | .size" "$T/doc.json")
check "the backup knows the disk's size" test "$SIZE" -gt 0
# craft RECORD-JQ: a backup whose disk record is changed by RECORD-JQ
craft() {
    local doc
    doc=$(jq -c "(($comp).extra.disks[0]) |= ($1) | (($comp).files[] | select(.name == \"disk/vda\") | .path) = (($comp).extra.disks[0].path)" "$T/doc.json")
    "$TOOL" backup --doc "$doc" "$VMSHADOW_REPO" "$G/disk/vda=$T/vda" "$G/config/domain.xml=$T/domain.xml" 2>"$T/craft.err" |
        jq -r .backup
}
storage() { jq -c '.vms[0].files[] | select(.file == "disk/vda") | .storage' <<<"$OUT"; }
# loopdev NAME SIZE: a loop device over a new file, in LAB_LOOP; run in the
# test's shell (not in $(...), where the list of devices to detach at the
# end would be lost: every run left its two devices attached)
loopdev() { truncate -s "$2" "$T/$1.img" && lab_loop_attach "$T/$1.img"; }

# ---- block devices (loop devices)
loopdev big $((SIZE + 1048576)); BIG=$LAB_LOOP
loopdev small $((SIZE / 2)); SMALL=$LAB_LOOP
B=$(craft ".kind = \"block\" | .path = \"$BIG\" | .format = \"raw\"")
check "a backup of a block disk can be crafted" test -n "$B" -a "$B" != null
# the crafted definition names $BIG, which the VM defined here does not use:
# a backup never chooses a device of the host to overwrite (R12)
vsh restore "$B" --dry-run
check "a device the VM defined here does not use: refused" test "$RC" != 0
check "... saying why" grep -q "only in place of the VM that uses it" <<<"$ERR"
# from here on the VM uses the device (a second disk of its definition)
lab_virsh attach-disk "$G" "$BIG" vdz --config --sourcetype block >/dev/null ||
    fail "cannot attach $BIG to $G"
vsh --json restore "$B" --dry-run
check "in place onto an existing, large enough block device: planned" test "$RC" = 0
check "... written onto it" test "$(storage | jq -r '.action + " " + .target')" = "written $BIG"
S=$(craft ".kind = \"block\" | .path = \"$SMALL\" | .format = \"raw\"")
vsh restore "$S" --dry-run
check "a block device too small: refused" test "$RC" != 0
check "... saying so" grep -q "too small" <<<"$ERR"
lab_guest_define o --block "$BIG"
vsh restore "$B" --dry-run
check "a block device another VM uses: refused" test "$RC" != 0
check "... naming that VM" grep -q "used by VM $(lab_domname o)" <<<"$ERR"
lab_virsh undefine "$(lab_domname o)" >/dev/null
vsh restore "$B" "$G" --dry-run --as "$G-copy"
check "--as of a plain block device: refused" test "$RC" != 0
check "... asking for --to" grep -q -- "--to DIR" <<<"$ERR"
# in place onto the device (issue 25 point 4): refused without --force,
# before any change; with it, written onto the device, which the definition
# then names
dd if=/dev/urandom of="$BIG" bs=64K count=4 conv=notrunc status=none
sum_before=$(sha256sum <"$BIG"); xml_before=$(lab_virsh dumpxml "$G")
vsh restore "$B"
check "in place without --force: refused" test "$RC" != 0
check "... asking for --force" grep -q -- "--force" <<<"$ERR"
check "the device is unchanged" test "$(sha256sum <"$BIG")" = "$sum_before"
check "the VM is defined as it was" test "$(lab_virsh dumpxml "$G")" = "$xml_before"
vsh --json restore "$B" --force
check "restore --force in place onto the device exits 0" test "$RC" = 0
check "the device holds the backup's bytes" cmp -s -n "$SIZE" "$BIG" "$T/vda"
check "the definition names the device (type='block')" sh -c "virsh -q -c $LAB_URI dumpxml $G | grep -q \"dev='$BIG'\""
check "no temporary file" test -z "$(find "$T" /dev -maxdepth 1 -name '*.vmshadow-restore*' 2>/dev/null)"
check "the device node is still there" test -b "$BIG"
# --to: an image file, restored
vsh --json restore "$B" --dry-run --to "$T/to"
check "--to: converted into an image file" test "$(storage | jq -r '.action + " " + .target')" = "converted $T/to/$G/vda.img"
vsh --json restore "$B" --force --to "$T/to"
check "restore --to of the block disk exits 0" test "$RC" = 0
check "the image file holds the backup's bytes" cmp -s "$T/to/$G/vda.img" "$T/vda"
check "the definition names the file (type='file')" sh -c "virsh -q -c $LAB_URI dumpxml $G | grep -q \"file='$T/to/$G/vda.img'\""
# issue 23: restored --to again with --force, over the image the restore
# above put there (every block of it allocated: fallocate); the rename drops
# its last link, and the kernel frees it after the restore, in a process of
# its own, not inside the rename (the old code: freed in the rename, listed
# nowhere)
OLD=$T/to/$G/vda.img
fallocate -l "$SIZE" "$OLD" || fail "fallocate $OLD"
echo "# the image replaced: $(du -m "$OLD" | cut -f1) MiB allocated"
jqe() { jq -e "$@" >/dev/null; }
held_deleted() { local fd; for fd in /proc/[0-9]*/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$1 (deleted)" ] && return 0; done; return 1; }
freed_soon() { for _ in $(seq 300); do held_deleted "$1" || return 0; sleep 0.1; done; return 1; }
vsh --json restore "$B" --force --to "$T/to"
check "restore --to --force over the former restore's image exits 0" test "$RC" = 0
check "the image it replaced is freed after the restore, not in its rename (replaced_freed_later)" \
    jqe --arg f "$OLD" '.vms[0].result.replaced_freed_later == [$f]' <<<"$OUT"
check "... and no process holds it a moment later (nothing left)" freed_soon "$OLD"
check "the new image holds the backup's bytes" cmp -s "$OLD" "$T/vda"

# ---- pool volumes (a dir pool)
mkdir -p "$T/pool"
lab_virsh pool-create-as "$POOL" dir --target "$T/pool" >/dev/null || fail "cannot create the pool"
V=$(craft ".kind = \"volume\" | .pool = \"$POOL\" | .volume = \"v.img\" | .path = \"$T/pool/v.img\" | .format = \"raw\"")
vsh --json restore "$V" --dry-run
check "a missing volume in an active pool: created" test "$(storage | jq -r .action)" = created
check "... from a volume XML of the disk's size" grep -q "<capacity unit='bytes'>$SIZE</capacity>" <<<"$(storage | jq -r .create_xml)"
lab_virsh vol-create-as "$POOL" v.img "$SIZE" --format raw >/dev/null || fail "vol-create-as"
vsh restore "$V" --dry-run
check "an existing volume the VM defined here does not use: refused (R12)" test "$RC" != 0 -a -n "$(grep 'only in place of the VM that uses it' <<<"$ERR")"
attach_xml() { # attach_xml DISK-XML: a further disk of g's definition
    echo "$1" >"$T/attach.xml"
    lab_virsh attach-device "$G" "$T/attach.xml" --config >/dev/null || fail "cannot attach to $G: $1"
}
attach_xml "<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$POOL' volume='v.img'/><target dev='vdy' bus='virtio'/></disk>"
vsh --json restore "$V" --dry-run
check "an existing volume: written" test "$(storage | jq -r '.action + " " + .target')" = "written v.img"
vsh --json restore "$V" "$G" --dry-run --as "$G-copy"
check "--as: a new volume from the name" test "$(storage | jq -r '.action + " " + .target')" = "created $G-copy-v.img"
V2=$(craft ".kind = \"volume\" | .pool = \"vmsh-gone-$$\" | .volume = \"v.img\" | .path = \"/nonexistent/v.img\"")
vsh restore "$V2" --dry-run
check "a volume whose pool is gone: refused" test "$RC" != 0
check "... naming the pool" grep -q "storage pool vmsh-gone-$$" <<<"$ERR"

# ---- RBD images (the Ceph lab)
ceph_lab_need || fail "no Ceph lab"
IMG=vmsh-kinds-$$
RBD_IMGS+=("$IMG" "$IMG-small")
R=$(craft ".kind = \"network\" | .protocol = \"rbd\" | .path = \"$VMSH_CEPH_POOL/$IMG\" | .format = \"raw\"")
vsh --json restore "$R" --dry-run
check "a missing RBD image in a reachable pool: created" test "$(storage | jq -r .action)" = created
check "... with rbd create" test "$(storage | jq -r '.create_command | join(" ")')" = "rbd create --size $(( (SIZE + 1048575) / 1048576 ))M $VMSH_CEPH_POOL/$IMG"
rbd create --size $(( (SIZE + 1048575) / 1048576 ))M "$VMSH_CEPH_POOL/$IMG" || fail "rbd create"
vsh restore "$R" --dry-run
check "an existing RBD image the VM defined here does not use: refused (R12)" test "$RC" != 0 -a -n "$(grep 'only in place of the VM that uses it' <<<"$ERR")"
attach_xml "<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='$VMSH_CEPH_POOL/$IMG'/><target dev='vdx' bus='virtio'/></disk>"
vsh --json restore "$R" --dry-run
check "an existing RBD image: written" test "$(storage | jq -r '.action + " " + .target')" = "written $VMSH_CEPH_POOL/$IMG"
rbd create --size 1M "$VMSH_CEPH_POOL/$IMG-small" || fail "rbd create"
RS=$(craft ".kind = \"network\" | .protocol = \"rbd\" | .path = \"$VMSH_CEPH_POOL/$IMG-small\" | .format = \"raw\"")
vsh restore "$RS" --dry-run
check "an RBD image too small: refused" test "$RC" != 0 -a -n "$(grep 'too small' <<<"$ERR")"
RN=$(craft ".kind = \"network\" | .protocol = \"rbd\" | .path = \"vmsh-nopool-$$/$IMG\" | .format = \"raw\"")
vsh restore "$RN" --dry-run
check "an RBD image in a pool that does not exist: refused" test "$RC" != 0 -a -n "$(grep 'does not exist' <<<"$ERR")"
e2e_done
