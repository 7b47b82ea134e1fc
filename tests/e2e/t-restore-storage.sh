#!/bin/bash
# Issue 25 point 4 (Done when): restore puts each disk back onto storage of
# its kind. Guest g has a qcow2 file disk (vda), a raw block device (vdb, a
# loop device), a qcow2 image written directly on a block device (vdc, a
# loop device), a storage-pool volume (vdd, qcow2 in a libvirt dir pool) and
# an RBD disk (vde, the Ceph lab, QEMU's rbd driver); VM h, shut off, has a
# qcow2 file, a raw pool volume and an RBD disk. Both are backed up as one
# set (g by the guest method), then:
#  - g again by the saved-state method, in a second two-VM set with h
#    (overlays in scratch-dir): backup --json, show --json and show say
#    each disk's read mode (all full; vdb and vde because they are raw
#    block / raw network disks, the qcow2 ones because of the method); no
#    overlay, journal or paused VM left; restored in place (--force) over
#    what the guest and then the host wrote since: each of the five disks
#    byte-identical with that backup (holding the marks the guest wrote
#    just before the save), and g resumes from its saved memory (a marker
#    in the guest's /run) on its own storage;
#  - in place (--force, after the storage was overwritten): each disk
#    written back onto its own device / volume / RBD image, byte-identical
#    with the backup (qemu-img compare), the definition naming that storage,
#    and the VM starts;
#  - --as of g: refused before anything is created, naming the block disks
#    and asking for --to; --as of h: a new RBD image and a new pool volume
#    created (names NAME-TARGET / NAME-VOLUME), byte-identical;
#  - --to DIR (with --as): every disk an image file, byte-identical;
#  - failures: a Ceph cluster that does not answer (a client configuration
#    with a wrong monitor address) refuses the restore before anything
#    changes; a device write that fails in the middle (its loop file on a
#    full tmpfs) says the device holds a partial restore, and the VM it
#    replaces is defined again as it was.
# Everything created is removed at exit, also after a failure.
set -u
LAB_GUESTS=1 # one guest runs (g); h stays shut off
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
e2e_env
T=$LAB_WORK
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || fail "QEMU's rbd driver is missing: install qemu-block-extra"
ceph_lab_need || fail "no Ceph lab"
SECRET=
IMG_G=vmsh-rs-g-$$
IMG_H=vmsh-rs-h-$$
MNT=$T/full
cleanup_st() {
    [ -n "$SECRET" ] && virsh -q -c "$LAB_URI" secret-undefine "$SECRET" >/dev/null 2>&1
    # g first: a running g keeps a watch on its RBD image, which rbd rm refuses
    virsh -q -c "$LAB_URI" destroy "$(lab_domname g)" >/dev/null 2>&1
    for d in "$(lab_domname h2)" "$(lab_domname g3)"; do
        virsh -q -c "$LAB_URI" destroy "$d" >/dev/null 2>&1
        virsh -q -c "$LAB_URI" undefine "$d" >/dev/null 2>&1
    done
    for i in "$IMG_G" "$IMG_H" "$(lab_domname h2)-vde" "$(lab_domname g2)-vde"; do
        rbd -p "$VMSH_CEPH_POOL" rm --no-progress "$i" >/dev/null 2>&1
    done
    ceph_lab_release 2>/dev/null
    lab_cleanup
    # the tmpfs outlives lab_cleanup (its loop device is detached there), so
    # lab_cleanup could not remove the work directory: emptied here
    # (a loop device lab_cleanup detached may hold it a moment longer)
    for _ in $(seq 1 50); do
        mountpoint -q "$MNT" || break
        umount "$MNT" 2>/dev/null || sleep 0.1
    done
    rmdir "$MNT" "$T" 2>/dev/null
    return 0
}
trap cleanup_st EXIT
fill() { # fill TARGET FORMAT
    qemu-io -f "$2" -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 5M 512k' -c 'write -P 0x33 30M 64k' "$1" >/dev/null ||
        fail "cannot write test data to $1"
}
scribble() { # scribble TARGET FORMAT: other bytes where the data was
    qemu-io -f "$2" -c 'write -P 0xee 0 2M' -c 'write -P 0x11 31M 1M' "$1" >/dev/null ||
        fail "cannot overwrite $1"
}

# ---- the storage
truncate -s 32M "$T/raw.img"
lab_loop_attach "$T/raw.img"; LRAW=$LAB_LOOP
fill "$LRAW" raw
truncate -s 48M "$T/qblk.img"
lab_loop_attach "$T/qblk.img"; LQC=$LAB_LOOP
qemu-img create -q -f qcow2 "$LQC" 32M || fail "qemu-img create on $LQC"
fill "$LQC" qcow2
POOL=$LAB_ID-pool
lab_pool_dir "$POOL" "$T/pool"
qemu-img create -q -f qcow2 "$T/pool/g.qcow2" 32M || fail "qemu-img create g.qcow2"
lab_virsh pool-refresh "$POOL" >/dev/null || fail "pool-refresh"
lab_virsh vol-create-as "$POOL" h.raw 32M --format raw >/dev/null || fail "vol-create-as h.raw"
fill "$T/pool/g.qcow2" qcow2
fill "$T/pool/h.raw" raw
R="rbd:$VMSH_CEPH_POOL"
for i in "$IMG_G" "$IMG_H"; do
    rbd -p "$VMSH_CEPH_POOL" create "$i" --size 32M 9>&- || fail "rbd create $i"
    fill "$R/$i:conf=$CEPH_CONF" raw
done
SECRET=$(uuidgen)
cat >"$T/secret.xml" <<EOF
<secret ephemeral='no' private='yes'><uuid>$SECRET</uuid><usage type='ceph'><name>vmshadow-lab-rs-$$</name></usage></secret>
EOF
lab_virsh secret-define "$T/secret.xml" >/dev/null || fail "secret-define"
KEY=$(ceph auth get-key client.admin 2>/dev/null) || fail "no client.admin key"
lab_virsh secret-set-value "$SECRET" --base64 "$KEY" >/dev/null 2>&1 ||
    printf '%s' "$KEY" | lab_virsh secret-set-value "$SECRET" --file /dev/stdin --plain >/dev/null || fail "secret-set-value"
MON=$(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
set -- $MON
rbd_disk() { # rbd_disk IMAGE TARGET
    echo "<disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='$SECRET'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$1'><host name='$MON_HOST' port='$MON_PORT'/></source><target dev='$2' bus='virtio'/></disk>"
}
MON_HOST=$1 MON_PORT=$2
lab_guest_define g --block "$LRAW" --disk-xml "
    <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='$LQC'/><target dev='vdc' bus='virtio'/></disk>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$POOL' volume='g.qcow2'/><target dev='vdd' bus='virtio'/></disk>
    $(rbd_disk "$IMG_G" vde)"
lab_guest_define h --disk-xml "
    <disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$POOL' volume='h.raw'/><target dev='vdd' bus='virtio'/></disk>
    $(rbd_disk "$IMG_H" vde)"
G=$(lab_domname g); H=$(lab_domname h)
lab_guest_start g

# ---- the backup: a two-VM set, g by the guest method, h shut off
vsh init
check "init" test "$RC" = 0
vsh --json backup "$G" "$H"
check "backup of the set exits 0" test "$RC" = 0
check "g got the guest method" test "$(jq -r --arg n "$G" '.vms[] | select(.name == $n) | .method' <<<"$OUT")" = guest
B=$(jq -r .backup <<<"$OUT")
for f in "$G/disk/vda" "$G/disk/vdb" "$G/disk/vdc" "$G/disk/vdd" "$G/disk/vde" "$H/disk/vdd" "$H/disk/vde"; do
    vsh extract "$B" "$f" "$T/ref.$(tr / _ <<<"$f")"
    check "extract $f" test "$RC" = 0
done
ref() { echo "$T/ref.$1_disk_$2"; }
same() { # same TARGET FORMAT REFERENCE
    qemu-img compare -q -U -f "$2" -F raw "$1" "$3"
}
check "the backup of g/vdb is the device's data" same "$LRAW" raw "$(ref "$G" vdb)"
check "the backup of g/vde is the RBD image's data" same "$R/$IMG_G:conf=$CEPH_CONF" raw "$(ref "$G" vde)"

# ---- the saved-state method: the same five-kind g, h again, a second set
# Overlays go to scratch-dir (never beside a device node). The guest marks
# each disk and its memory first (/run is a tmpfs in the guest), so the
# backup must hold what the guest had at the save, and the restored VM must
# resume from that memory.
mkdir -m 0755 "$T/scratch"
echo "scratch-dir = $T/scratch" >>"$VMSHADOW_CONFIG"
lab_gexec g 'for d in vdb vdc vdd vde; do printf "VMSHADOW-SS-$d" | dd of=/dev/$d bs=512 seek=20000 conv=fsync 2>/dev/null; done; echo ss-file > /mnt/data/ss.txt; echo ss-memory > /run/ss-marker; sync' ||
    fail "guest write before the saved-state backup"
up_before=$(lab_gexec g 'cut -d. -f1 /proc/uptime')
vsh --json backup --method saved-state "$G" "$H"
check "saved-state backup of the set exits 0" test "$RC" = 0
vmj() { jq -e --arg n "$1" '.vms[] | select(.name == $n)' <<<"$OUT"; }
check "g got the saved-state method" test "$(vmj "$G" | jq -r .method)" = saved-state
check "g running before and after" test "$(vmj "$G" | jq -r '"\(.state_before) \(.state_after)"')" = "running running"
check "h shut off before and after" test "$(vmj "$H" | jq -r '"\(.state_before) \(.state_after)"')" = "shut off shut off"
check "g runs (not paused)" test "$(lab_state g)" = running
BS=$(jq -r .backup <<<"$OUT")
rd() { jq -r --arg d "$2" '.disks[] | select(.name == $d) | "\(.read): \(.reason)"' <<<"$1"; }
ssread() { # ssread JSON-OF-VM: each disk's read mode, as the brief asks
    check "  vda (qcow2 file): full, saved-state method" grep -q "^full: saved-state method (R1)" <<<"$(rd "$1" vda)"
    check "  vdb (raw block device): full, with the reason" grep -q "^full: raw block device: only qcow2 images carry dirty bitmaps" <<<"$(rd "$1" vdb)"
    check "  vdc (qcow2 on a block device): full, saved-state method" grep -q "^full: saved-state method (R1)" <<<"$(rd "$1" vdc)"
    check "  vdd (pool volume): full, saved-state method" grep -q "^full: saved-state method (R1)" <<<"$(rd "$1" vdd)"
    check "  vde (RBD, raw): full, with the reason" grep -q "^full: raw network disk: only qcow2 images carry dirty bitmaps" <<<"$(rd "$1" vde)"
}
echo "# read modes in backup --json"
ssread "$(vmj "$G")"
vsh --json show "$BS"
echo "# read modes in show --json (the backup document)"
ssread "$(jq --arg n "$G" '.document.vms[] | select(.name == $n)' <<<"$OUT")"
vsh show "$BS"
check "show (text) says vdb is read in full because it is a raw block device" grep -q "$G vdb: full.*raw block device" <<<"$OUT"
check "show (text) says vde is read in full because it is a raw network disk" grep -q "$G vde: full.*raw network disk" <<<"$OUT"
check "show lists g's saved state" grep -q "$G/saved-state" <<<"$OUT"
check "no overlay left in scratch-dir" test -z "$(ls -A "$T/scratch")"
check "none beside a device node or in the pool" test -z "$(find /dev "$T/pool" -maxdepth 1 -name '*.vmshadow-*' 2>/dev/null)"
check "no journal, state file or socket left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)$(ls -A "$VMSHADOW_STATE_DIR/run" 2>/dev/null)"
# (virsh domblklist names a volume disk by its volume; after the block
# commit's pivot libvirt describes vdd by its path until g restarts)
on_own_storage() {
    local bl; bl=$(lab_virsh domblklist "$G" | awk '{print $1, $2}')
    [ "$(grep -c -e "^vdb $LRAW\$" -e "^vdc $LQC\$" -e "^vdd \($T/pool/\)\?g.qcow2\$" -e "^vde $VMSH_CEPH_POOL/$IMG_G\$" <<<"$bl")" = 4 ] ||
        { echo "  domblklist: $bl" >&2; return 1; }
}
check "g runs on its own storage again" on_own_storage
check "g's persistent definition still names vdd's pool volume" grep -q "pool='$POOL' volume='g.qcow2'" <<<"$(lab_virsh dumpxml --inactive "$G")"
# what vmshadow reads of the running g (vms, and so the next backup) names
# the volume again, from the persistent definition (issue 25, R6)
vsh --json vms
check "vms: g's vdd is still a pool volume after the saved-state backup" test "$(jq -r --arg n "$G" '.vms[] | select(.name == $n) | .disks[] | select(.target == "vdd") | "\(.kind) \(.pool)"' <<<"$OUT")" = "volume $POOL"
echo "# g's live vdd after the saved-state backup: $(lab_virsh dumpxml "$G" | grep -B2 -A1 "dev='vdd'" | grep -o "<disk [^>]*>\|<source [^>]*>" | tr '\n' ' ')"
for f in "$G/disk/vda" "$G/disk/vdb" "$G/disk/vdc" "$G/disk/vdd" "$G/disk/vde"; do
    vsh extract "$BS" "$f" "$T/ss.$(tr / _ <<<"$f")"
    check "extract $f of the saved-state backup" test "$RC" = 0
done
sref() { echo "$T/ss.$G""_disk_$1"; }
for d in vdb vdc vdd vde; do
    check "the saved-state backup of $d holds the guest's mark" \
        sh -c "dd if=$(sref $d) bs=512 skip=20000 count=1 2>/dev/null | grep -q VMSHADOW-SS-$d"
done
check "the saved-state backup of vda holds the guest's file" test "$(debugfs -R 'cat /ss.txt' "$(sref vda)" 2>/dev/null)" = ss-file
# after the save: the guest writes other bytes, then the storage is
# scribbled over; the restore must bring back the state at the save
lab_gexec g 'for d in vdb vdc vdd vde; do printf "VMSHADOW-AFTER" | dd of=/dev/$d bs=512 seek=20000 conv=fsync 2>/dev/null; done; echo after > /mnt/data/ss.txt; sync' >/dev/null ||
    fail "guest write after the saved-state backup"
lab_virsh destroy "$G" >/dev/null
check "the guest's write after the backup reached the raw device" \
    sh -c "dd if=$LRAW bs=512 skip=20000 count=1 2>/dev/null | grep -q VMSHADOW-AFTER"
scribble "$LRAW" raw
scribble "$LQC" qcow2
scribble "$T/pool/g.qcow2" qcow2
scribble "$R/$IMG_G:conf=$CEPH_CONF" raw
differs() { ! same "$@"; }
none_as_saved() {
    differs "$T/g.data.qcow2" qcow2 "$(sref vda)" && differs "$LRAW" raw "$(sref vdb)" &&
        differs "$LQC" qcow2 "$(sref vdc)" && differs "$T/pool/g.qcow2" qcow2 "$(sref vdd)" &&
        differs "$R/$IMG_G:conf=$CEPH_CONF" raw "$(sref vde)"
}
check "before the restore, no disk is as at the save (vda: the guest's file changed since)" none_as_saved
vsh --json restore "$BS" "$G" --force
check "restore of the saved-state backup in place --force exits 0" test "$RC" = 0
check "vda (qcow2 file) as at the save" same "$T/g.data.qcow2" qcow2 "$(sref vda)"
check "vdb (raw block device) as at the save" same "$LRAW" raw "$(sref vdb)"
check "vdc (qcow2 on a block device) as at the save" same "$LQC" qcow2 "$(sref vdc)"
check "vdd (pool volume) as at the save" same "$T/pool/g.qcow2" qcow2 "$(sref vdd)"
check "vde (RBD image) as at the save" same "$R/$IMG_G:conf=$CEPH_CONF" raw "$(sref vde)"
check "g has its managed saved state (dominfo)" grep -q "Managed save: *yes" <<<"$(lab_virsh dominfo "$G")"
check "g is shut off, not paused" test "$(lab_state g)" = "shut off"
check "no overlay in scratch-dir, no temporary file beside the storage" \
    test -z "$(ls -A "$T/scratch")$(find /dev "$T/pool" "$T" -maxdepth 1 -name '*.vmshadow-*' 2>/dev/null)"
check "no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
lab_virsh start "$G" >/dev/null || fail "cannot start the restored g"
lab_wait_ready g
up_after=$(lab_gexec g 'cut -d. -f1 /proc/uptime')
echo "  uptime at the save: $up_before s; right after the restored g started: $up_after s"
check "g resumed from its saved state (the in-memory marker is there)" test "$(lab_gexec g 'cat /run/ss-marker 2>/dev/null')" = ss-memory
check "  and its uptime continues" test "$up_after" -ge "$up_before"
check "  on its own storage" on_own_storage
check "  vdd on its pool volume again" grep -q "pool='$POOL' volume='g.qcow2'" <<<"$(lab_virsh dumpxml "$G")"
check "  and reads the raw device's bytes of the save" test "$(lab_gexec g 'dd if=/dev/vdb bs=512 skip=20000 count=1 iflag=direct 2>/dev/null | head -c 15')" = VMSHADOW-SS-vdb
check "the managed saved state was consumed" grep -q "Managed save: *no" <<<"$(lab_virsh dominfo "$G")"

# ---- the dry run says, per disk, what would be written where
lab_virsh destroy "$G" >/dev/null
vsh --json restore "$B" "$G" --dry-run
act() { jq -r --arg f "disk/$1" '.vms[0].files[] | select(.file == $f) | .storage | "\(.action) \(.restored_as) \(.target)"' <<<"$OUT"; }
check "dry run: vdb written onto the device" test "$(act vdb)" = "written block $LRAW"
check "dry run: vdc written onto the device (qcow2 on it)" test "$(act vdc)" = "written block $LQC"
check "dry run: vdd written onto the volume" test "$(act vdd)" = "written volume g.qcow2"
check "dry run: vde written onto the RBD image" test "$(act vde)" = "written rbd $VMSH_CEPH_POOL/$IMG_G"

# ---- failure: a Ceph cluster that does not answer, before anything changes
sed 's/^mon host = .*/mon host = [v2:127.0.0.1:9,v1:127.0.0.1:9]/' "$CEPH_CONF" >"$T/down.conf"
scribble "$LRAW" raw
sum_before=$(sha256sum <"$LRAW"); xml_before=$(lab_virsh dumpxml "$G")
OUT=$(CEPH_CONF=$T/down.conf "$VMSHADOW" restore "$B" "$G" --force 2>"$T/stderr"); RC=$?; ERR=$(cat "$T/stderr")
check "restore into a Ceph pool that cannot be reached: refused" test "$RC" != 0
check "... saying the pool cannot be reached and nothing changed" grep -q "cannot be reached.*nothing was changed" <<<"$ERR"
check "... the device untouched" test "$(sha256sum <"$LRAW")" = "$sum_before"
check "... the VM defined as it was" test "$(lab_virsh dumpxml "$G")" = "$xml_before"

# ---- in place, over other bytes
scribble "$LQC" qcow2
scribble "$T/pool/g.qcow2" qcow2
scribble "$R/$IMG_G:conf=$CEPH_CONF" raw
check "the storage now differs from the backup" sh -c "! qemu-img compare -q -U -f raw -F raw $R/$IMG_G:conf=$CEPH_CONF $(ref "$G" vde)"
vsh restore "$B" "$G"
check "in place without --force: refused" test "$RC" != 0 -a -n "$(grep -- --force <<<"$ERR")"
vsh --json restore "$B" "$G" --force
check "restore in place --force exits 0" test "$RC" = 0
# the pool's probe (`rbd ls`) prints the pool's images: never on the
# user's terminal (h's image is another VM's)
check "the restore's stderr names no other VM's RBD image" sh -c "! grep -q -- '$IMG_H' '$LAB_WORK/stderr'"
check "vda (qcow2 file) byte-identical" same "$T/g.data.qcow2" qcow2 "$(ref "$G" vda)"
check "vdb (raw block device) byte-identical" same "$LRAW" raw "$(ref "$G" vdb)"
check "vdc (qcow2 on a block device) byte-identical" same "$LQC" qcow2 "$(ref "$G" vdc)"
check "vdd (pool volume) byte-identical" same "$T/pool/g.qcow2" qcow2 "$(ref "$G" vdd)"
check "vde (RBD image) byte-identical" same "$R/$IMG_G:conf=$CEPH_CONF" raw "$(ref "$G" vde)"
X=$(lab_virsh dumpxml "$G")
check "the definition names the device of vdb" grep -q "dev='$LRAW'" <<<"$X"
check "... the device of vdc, as qcow2" bash -c "grep -B3 \"dev='$LQC'\" <<<\"\$0\" | grep -q \"type='qcow2'\"" "$X"
check "... the volume of vdd" grep -q "pool='$POOL' volume='g.qcow2'" <<<"$X"
check "... the RBD image of vde, with its auth" bash -c "grep -q \"protocol='rbd' name='$VMSH_CEPH_POOL/$IMG_G'\" <<<\"\$0\" && grep -q \"uuid='$SECRET'\" <<<\"\$0\"" "$X"
check "the restored VM starts on its storage" lab_virsh start "$G"
lab_virsh destroy "$G" >/dev/null 2>&1
check "no temporary file beside the devices or in the pool" test -z "$(find /dev "$T/pool" -maxdepth 1 -name '*.vmshadow-restore*' 2>/dev/null)"

# ---- --as: g has block devices, which cannot be created: refused
G2=$(lab_domname g2)
vsh restore "$B" "$G" --as "$G2"
check "--as of g: refused" test "$RC" != 0
check "... asking for --to for the block disk" grep -q -- "block device.*cannot be created.*--to DIR" <<<"$ERR"
check "... nothing created (no RBD image for the copy)" sh -c "! rbd -p $VMSH_CEPH_POOL info $G2-vde >/dev/null 2>&1"
check "... no volume for the copy" test -z "$(ls "$T/pool" | grep -F "$G2")"
check "... no VM $G2" sh -c "! virsh -q -c $LAB_URI dominfo $G2 >/dev/null 2>&1"
# h: a new RBD image and a new pool volume, named from the new name
H2=$(lab_domname h2)
vsh --json restore "$B" "$H" --as "$H2" --dry-run
check "--as h2 (dry run): a new volume" test "$(act vdd)" = "created volume $H2-h.raw"
check "--as h2 (dry run): a new RBD image" test "$(act vde)" = "created rbd $VMSH_CEPH_POOL/$H2-vde"
vsh --json restore "$B" "$H" --as "$H2"
check "restore --as h2 exits 0" test "$RC" = 0
check "the new volume holds h's vdd" same "$T/pool/$H2-h.raw" raw "$(ref "$H" vdd)"
check "the new RBD image holds h's vde" same "$R/$H2-vde:conf=$CEPH_CONF" raw "$(ref "$H" vde)"
check "h's own volume untouched" same "$T/pool/h.raw" raw "$(ref "$H" vdd)"
check "h's own RBD image untouched" same "$R/$IMG_H:conf=$CEPH_CONF" raw "$(ref "$H" vde)"
X=$(lab_virsh dumpxml "$H2")
check "h2's definition names the new volume and image" bash -c "grep -q \"volume='$H2-h.raw'\" <<<\"\$0\" && grep -q \"name='$VMSH_CEPH_POOL/$H2-vde'\" <<<\"\$0\"" "$X"

# ---- --to DIR: every disk an image file
G3=$(lab_domname g3)
vsh --json restore "$B" "$G" --as "$G3" --to "$T/to"
check "restore --as g3 --to DIR exits 0" test "$RC" = 0
check "vda as a file" same "$T/to/$G3/g.data.qcow2" qcow2 "$(ref "$G" vda)"
check "vdb as a file" same "$T/to/$G3/vdb.img" raw "$(ref "$G" vdb)"
check "vdc as a file" same "$T/to/$G3/vdc.qcow2" qcow2 "$(ref "$G" vdc)"
check "vdd as a file" same "$T/to/$G3/vdd.qcow2" qcow2 "$(ref "$G" vdd)"
check "vde as a file" same "$T/to/$G3/vde.img" raw "$(ref "$G" vde)"
check "g3's disks are all files" test "$(lab_virsh dumpxml "$G3" | grep -c "<disk type='file'")" = 5

# ---- failure in the middle of a device write: the loop file on a full tmpfs
mkdir -p "$MNT"
mount -t tmpfs -o size=40m tmpfs "$MNT" || fail "cannot mount a tmpfs"
truncate -s 32M "$MNT/f.img"
lab_loop_attach "$MNT/f.img"; LF=$LAB_LOOP
fill "$LF" raw
lab_guest_define f --no-agent --block "$LF"
F=$(lab_domname f)
vsh --json backup "$F"
check "backup of the shut-off f (raw disk on a loop device)" test "$RC" = 0
BF=$(jq -r .backup <<<"$OUT")
# the loop file emptied (its pages freed) and the tmpfs then filled but for
# 1 MiB: the restore's first MiB fits, the next write fails
fallocate -p -o 0 -l 32M "$MNT/f.img" || fail "cannot punch the loop file"
dd if=/dev/zero of="$MNT/filler" bs=1M count=64 status=none 2>/dev/null
truncate -s -1M "$MNT/filler" || fail "cannot shorten the filler"
xml_before=$(lab_virsh dumpxml "$F")
vsh restore "$BF" "$F" --force
check "a device write that fails midway: the restore fails" test "$RC" != 0
check "... saying the device holds a partial restore" grep -q "$LF now holds a partial restore" <<<"$ERR"
check "... and that the VM was not registered (R11)" grep -q "not registered" <<<"$ERR"
check "... the VM it replaces defined again as it was" test "$(lab_virsh dumpxml "$F")" = "$xml_before"
e2e_done
