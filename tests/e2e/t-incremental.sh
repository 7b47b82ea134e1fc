#!/bin/bash
# Incremental backups from dirty bitmaps (issue 7), on a real guest:
#  - the first backup of a qcow2 disk reads it in full and leaves a libvirt
#    checkpoint; after a 1 MiB write in the guest, the next backup reads only
#    about what changed (bytes_read counted), and its index is complete: the
#    disk extracted from it is byte-identical to a --full backup taken right
#    after it with nothing written between them (the guest's filesystem is
#    remounted read-only across both backups, so neither the guest nor the
#    freeze hook writes to the disk), and to the live disk itself;
#  - only the checkpoint the next backup needs is kept;
#  - after `virsh destroy` + start (an unclean stop) the next backup reads in
#    full and says why; the one after is incremental again;
#  - a restore that replaces the VM defines the checkpoint of the restored
#    backup again, with its bitmap (new, empty) in the restored qcow2: a
#    backup while the VM stays off is incremental and identical to the
#    restored backup; once the VM runs, the next backup is full, with the
#    reason, and the chain starts over;
#  - a VM shut down cleanly is read incrementally from the persistent bitmap
#    QEMU stored in its qcow2 (qemu-nbd --bitmap), byte-identical to a --full
#    backup of it; it stays incremental while the VM stays off; after its
#    QEMU was killed (bitmap left "in-use") it is read in full, saying why;
#  - raw disks and VMs without a usable checkpoint are read in full, with
#    the reason;
#  - `list` and `show` say which backups were incremental.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
# one guest at a time: shares the lab with another one-guest test (lab.sh)
LAB_GUESTS=1
lab_init
e2e_env

lab_guest_define g
lab_guest_define r --raw
lab_guest_define o
lab_guest_start g
G=$(lab_domname g); R=$(lab_domname r); O=$(lab_domname o)
MiB=$((1024 * 1024))

vsh init
check "init" test "$RC" = 0
# 32 MiB of data that does not compress, so that a full read is large
lab_gexec g 'dd if=/dev/urandom of=/mnt/data/big bs=1M count=32 2>/dev/null; sync' ||
    fail "guest write"

disk() { jq -e --arg v "$1" --arg d "${2:-vda}" '.vms[] | select(.name == $v) | .disks[] | select(.name == $d)' <<<"$OUT"; }
read_of() { disk "$@" | jq -r .read; }
why_of() { disk "$@" | jq -r .reason; }
bytes_of() { disk "$@" | jq -r .bytes_read; }
cps() { lab_virsh checkpoint-list "$G" --name | grep -c .; }

vsh --json backup "$G"
check "first backup" test "$RC" = 0
B1=$(jq -r .backup <<<"$OUT")
check "first backup reads in full" test "$(read_of "$G")" = full
check "... because it is the first" grep -q "first backup" <<<"$(why_of "$G")"
full_bytes=$(bytes_of "$G")
check "the full read read the data ($full_bytes bytes)" test "$full_bytes" -ge $((32 * MiB))
check "it left one checkpoint" test "$(cps)" = 1

# 1 MiB rewritten in the middle of the file, then the filesystem goes
# read-only: from here to the --full backup nothing writes to the disk.
lab_gexec g 'dd if=/dev/urandom of=/mnt/data/big bs=1M count=1 seek=10 conv=notrunc 2>/dev/null; sync; mount -o remount,ro /mnt/data' ||
    fail "guest rewrite"
vsh --json backup "$G"
check "second backup" test "$RC" = 0
B2=$(jq -r .backup <<<"$OUT")
check "second backup is incremental" test "$(read_of "$G")" = incremental
check "... from the first one's checkpoint" grep -q "changes since checkpoint vmshadow-.* of backup $B1" <<<"$(why_of "$G")"
incr_bytes=$(bytes_of "$G")
echo "  full read: $full_bytes bytes, incremental read: $incr_bytes bytes"
check "the incremental read about what changed (1 MiB written, $incr_bytes read)" \
    test "$incr_bytes" -ge $MiB -a "$incr_bytes" -le $((3 * MiB))
check "the VM is marked incremental" test "$(jq -r --arg v "$G" '.vms[] | select(.name == $v) | .incremental' <<<"$OUT")" = true

vsh --json backup "$G" --full
check "--full backup" test "$RC" = 0
B3=$(jq -r .backup <<<"$OUT")
check "--full reads in full" test "$(read_of "$G")" = full
check "... and says so" grep -q -- "--full" <<<"$(why_of "$G")"
check "--full read everything again" test "$(bytes_of "$G")" -ge $((32 * MiB))
B3_SET=$(jq -r .set_id <<<"$OUT")

vsh extract "$B2" "$G/disk/vda" "$LAB_WORK/incr.raw"
check "extract the incremental" test "$RC" = 0
vsh extract "$B3" "$G/disk/vda" "$LAB_WORK/full.raw"
check "extract the full" test "$RC" = 0
check "the disk from the incremental is byte-identical to the full backup's" cmp "$LAB_WORK/incr.raw" "$LAB_WORK/full.raw"
qemu-img convert -U -f qcow2 -O raw "$(lab_disk g)" "$LAB_WORK/live.raw"
check "... and to the live disk (read-only in the guest)" cmp "$LAB_WORK/incr.raw" "$LAB_WORK/live.raw"
check "the incremental's filesystem passes e2fsck -fn" e2fsck -fn "$LAB_WORK/incr.raw"
rm -f "$LAB_WORK/incr.raw" "$LAB_WORK/full.raw" "$LAB_WORK/live.raw"
# named per repository since issue 26 (point 5): vmshadow-r<16 hex>-<set>
cps=$(lab_virsh checkpoint-list "$G" --name | tr -d ' ' | grep .)
check "only the checkpoint the next backup needs is kept" \
    test "$(grep -c . <<<"$cps")" = 1 -a -n "$(grep -x "vmshadow-r[0-9a-f]\{16\}-$B3_SET" <<<"$cps")"

# An unclean stop: the next backup must not trust the bitmap.
lab_virsh destroy "$G" >/dev/null
lab_virsh start "$G" >/dev/null
lab_wait_ready g
lab_gexec g 'echo x > /mnt/data/after-destroy; sync' || fail "guest write after destroy"
vsh --json backup "$G"
check "backup after virsh destroy + start" test "$RC" = 0
check "it reads in full" test "$(read_of "$G")" = full
check "... because the VM was stopped" grep -q "stopped and started" <<<"$(why_of "$G")"
lab_gexec g 'echo y > /mnt/data/again; sync' || fail "guest write"
vsh --json backup "$G"
B5=$(jq -r .backup <<<"$OUT")
check "the chain starts again: the next is incremental" test "$(read_of "$G")" = incremental
check "... reading little" test "$(bytes_of "$G")" -le $((2 * MiB))

# The saved-state method (R1) reads the images in full; it stops the VM, so
# the guest method's next backup cannot trust the bitmap either.
vsh --json backup "$G" --method saved-state
check "saved-state backup of a VM with a checkpoint" test "$RC" = 0
check "it reads in full, saying why" grep -q "saved-state method" <<<"$(why_of "$G")"
vsh --json backup "$G"
check "the guest method's next backup reads in full" test "$(read_of "$G")" = full
lab_gexec g 'echo z > /mnt/data/again; sync' || fail "guest write"
vsh --json backup "$G"
B5=$(jq -r .backup <<<"$OUT")
check "and the one after is incremental" test "$(read_of "$G")" = incremental

# list and show
vsh list
check "list says the second backup was incremental" grep -q "^$B2 .* incremental " <<<"$OUT"
check "list says the first was full" grep -q "^$B1 .* full " <<<"$OUT"
vsh show "$B2"
check "show says the disk was read incrementally" grep -q "$G vda: incremental" <<<"$OUT"

# A restore replaces the VM and defines the checkpoint of the restored
# backup again (point 3), with a new empty bitmap of that name in the
# restored qcow2: the disk holds exactly the backup's data, so the bitmap
# records every change from that point on.
cp5=$(lab_virsh checkpoint-list "$G" --name | tr -d ' ' | grep .)
vsh --json restore "$B5" --force
check "restore over the VM" test "$RC" = 0
check "the restore reports the checkpoint defined again" \
    test "$(jq -r '.vms[0].result.checkpoint.redefined' <<<"$OUT")" = true
check "libvirt has the checkpoint of the restored backup, and only it" \
    test "$(lab_virsh checkpoint-list "$G" --name | tr -d ' ' | grep .)" = "$cp5"
check "the restored qcow2 carries its bitmap, enabled" \
    jq -e --arg b "$cp5" '.["format-specific"].data.bitmaps | any(.name == $b and (.flags | index("auto")))' \
    <<<"$(qemu-img info -U --output=json "$(lab_disk g)")"
check "the restored VM is shut off" test "$(lab_state g)" = "shut off"
vsh --json backup "$G"
B_RST=$(jq -r .backup <<<"$OUT")
check "backup of the restored VM, still off" test "$RC" = 0
check "it is incremental from the restored backup's checkpoint" test "$(read_of "$G")" = incremental
check "... reading next to nothing" test "$(bytes_of "$G")" -le $MiB
vsh extract "$B5" "$G/disk/vda" "$LAB_WORK/b5.raw"
vsh extract "$B_RST" "$G/disk/vda" "$LAB_WORK/rst.raw"
check "... and is byte-identical to the restored backup" cmp "$LAB_WORK/b5.raw" "$LAB_WORK/rst.raw"
rm -f "$LAB_WORK/b5.raw" "$LAB_WORK/rst.raw"
lab_virsh start "$G" >/dev/null
lab_wait_ready g
vsh --json backup "$G"
check "backup after the restored VM started" test "$RC" = 0
check "it reads in full: the chain starts over" test "$(read_of "$G")" = full
check "... because the VM was started since" grep -q "stopped and started" <<<"$(why_of "$G")"
check "it left a checkpoint for the next" test "$(cps)" = 1

# QEMU's view: a bitmap that is gone while libvirt still lists its
# checkpoint (as after a crash that lost it). libvirt refuses the
# incremental job; the job runs in full at the same point and says why.
cp=$(lab_virsh checkpoint-list "$G" --name | tr -d ' ' | grep .)
node=$(lab_virsh qemu-monitor-command "$G" '{"execute":"query-named-block-nodes","arguments":{"flat":true}}' |
    jq -r --arg b "$cp" '.return[] | select(any(.["dirty-bitmaps"][]?; .name == $b)) | .["node-name"]' | head -n 1)
lab_virsh qemu-monitor-command "$G" "{\"execute\":\"block-dirty-bitmap-remove\",\"arguments\":{\"node\":\"$node\",\"name\":\"$cp\"}}" >/dev/null ||
    fail "cannot remove bitmap $cp from node $node"
vsh --json backup "$G"
check "backup with a lost bitmap succeeds" test "$RC" = 0
check "it reads in full" test "$(read_of "$G")" = full
check "... because libvirt refused the bitmap" grep -q "libvirt refused the dirty bitmap" <<<"$(why_of "$G")"
lab_gexec g 'echo w > /mnt/data/w; sync' || fail "guest write"
vsh --json backup "$G"
check "the next backup is incremental again" test "$(read_of "$G")" = incremental
check "one checkpoint is left" test "$(cps)" = 1

# A shut-off VM (issue 7, point 4): a clean shutdown stores the bitmap in
# the qcow2, and the backup reads only what changed from it.
lab_gexec g 'dd if=/dev/urandom of=/mnt/data/off bs=1M count=1 2>/dev/null; sync' || fail "guest write"
lab_virsh shutdown "$G" >/dev/null
check "the guest shut down cleanly" lab_wait_off g
vsh --json backup "$G"
check "backup of the shut-off VM" test "$RC" = 0
B_OFF=$(jq -r .backup <<<"$OUT")
check "it is incremental" test "$(read_of "$G")" = incremental
check "... from the bitmap in the image" grep -q "from the bitmap in the image" <<<"$(why_of "$G")"
off_bytes=$(bytes_of "$G")
check "it read about what changed (1 MiB written, $off_bytes read)" \
    test "$off_bytes" -ge $MiB -a "$off_bytes" -le $((3 * MiB))
check "the VM is still shut off" test "$(lab_state g)" = "shut off"
vsh list
check "list says the shut-off VM's backup was incremental" grep -q "^$B_OFF .* incremental " <<<"$OUT"
vsh --json backup "$G" --full
check "--full backup of the shut-off VM" test "$RC" = 0
B_OFF_FULL=$(jq -r .backup <<<"$OUT")
check "... reads in full" test "$(read_of "$G")" = full
vsh extract "$B_OFF" "$G/disk/vda" "$LAB_WORK/incr.raw"
vsh extract "$B_OFF_FULL" "$G/disk/vda" "$LAB_WORK/full.raw"
check "the shut-off incremental is byte-identical to the --full backup" cmp "$LAB_WORK/incr.raw" "$LAB_WORK/full.raw"
qemu-img convert -U -f qcow2 -O raw "$(lab_disk g)" "$LAB_WORK/live.raw"
check "... and to the image" cmp "$LAB_WORK/incr.raw" "$LAB_WORK/live.raw"
rm -f "$LAB_WORK/incr.raw" "$LAB_WORK/full.raw" "$LAB_WORK/live.raw"
vsh --json backup "$G"
check "while the VM stays off, the next backup is incremental too" test "$(read_of "$G")" = incremental
check "... reading little" test "$(bytes_of "$G")" -le $((3 * MiB))
check "no checkpoint piled up" test "$(cps)" = 1

# A killed QEMU leaves the bitmap "in-use" (inconsistent): read in full.
lab_virsh start "$G" >/dev/null
lab_wait_ready g
lab_gexec g 'echo k > /mnt/data/k; sync' || fail "guest write"
qpid=$(cat "/run/libvirt/qemu/$G.pid")
kill -9 "$qpid"
check "the killed VM is shut off" lab_wait_off g
vsh --json backup "$G"
check "backup after a killed QEMU" test "$RC" = 0
check "it reads in full" test "$(read_of "$G")" = full
check "... because the bitmap is inconsistent" grep -q "inconsistent" <<<"$(why_of "$G")"

# Raw disks and VMs never backed up: full, with the reason.
vsh --json backup "$R" "$O"
check "backup of a raw and a shut-off VM" test "$RC" = 0
check "raw: full" test "$(read_of "$R")" = full
check "... raw disks carry no bitmap" grep -q "raw disks carry no bitmap" <<<"$(why_of "$R")"
check "a shut-off VM never backed up: full, with the reason" grep -q "first backup" <<<"$(why_of "$O")"
vsh --json backup "$R"
check "a second raw backup stores next to nothing (dedup)" test "$(jq -r .bytes_stored <<<"$OUT")" -lt $((64 * 1024))

vsh verify
check "verify passes" test "$RC" = 0
e2e_done
