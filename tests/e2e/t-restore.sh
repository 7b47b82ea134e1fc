#!/bin/bash
# Restoring VMs (SPEC R8-R15, issue 6), on real guests:
#  - restore without --force over a running VM refuses and changes nothing;
#    --dry-run prints the plan and changes nothing;
#  - a guest-method backup comes back: it boots from its disks, its agent
#    answers, a file written before the backup is on the restored disk and one
#    written after is not (R10, R12, R15);
#  - a saved-state backup resumes from its memory when started: its uptime
#    continues from the backup instead of starting over (R15);
#  - --to puts the files under the directory and the XML follows (R13), the
#    managed saved state is linked from its default place (R12), and libvirt
#    knows it (virsh dominfo);
#  - an interface whose host bridge is gone is left disconnected, with a
#    message, while one whose bridge exists is re-wired (R14);
#  - --as restores a copy beside the original: new name, UUID and MACs;
#  - a VM shut off in a managed saved state is backed up with that state
#    (read from libvirt's place, left as it was) and resumes from it after a
#    restore;
#  - a damaged chunk makes the restore fail cleanly: exit 3, the VM is not
#    registered and nothing of it is left half in place (R11).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
BR_KEEP=vmshk$$; BR_GONE=vmshg$$
del_bridges() { ip link del "$BR_KEEP" 2>/dev/null; ip link del "$BR_GONE" 2>/dev/null; return 0; }
trap 'lab_cleanup; del_bridges' EXIT
ip link add "$BR_KEEP" type bridge && ip link set "$BR_KEEP" up || fail "cannot create bridge"
ip link add "$BR_GONE" type bridge && ip link set "$BR_GONE" up || fail "cannot create bridge"

lab_guest_define g --bridge "$BR_KEEP" --bridge "$BR_GONE"
lab_guest_define s
lab_guest_start g
lab_guest_start s
G=$(lab_domname g); S=$(lab_domname s)
vsh init
check "init" test "$RC" = 0

lab_gexec g 'echo before > /mnt/data/before.txt; sync' || fail "guest write"
vsh backup "$G"
GID=$OUT
check "guest-method backup of $G" test "$RC" = 0 -a -n "$GID"
lab_gexec g 'echo after > /mnt/data/after.txt; sync' || fail "guest write"
# Let the guest live a while, so that a fresh boot (a few seconds of uptime)
# cannot pass for a resumed one.
for _ in $(seq 60); do [ "$(lab_gexec s 'cut -d. -f1 /proc/uptime')" -ge 20 ] && break; sleep 1; done
up_before=$(lab_gexec s 'cut -d. -f1 /proc/uptime')
# /run is a tmpfs in the guest: a marker there survives only in its memory
lab_gexec s 'echo before-backup > /run/saved-marker' || fail "guest write"
vsh --json backup --method saved-state "$S"
SID=$(jq -r .backup <<<"$OUT")
check "saved-state backup of $S" test "$RC" = 0 -a "$SID" != null

# Refusals and the dry run change nothing.
xml_before=$(lab_virsh dumpxml "$G")
vsh restore "$GID"
check "restore over a running VM without --force refuses (exit 1)" test "$RC" = 1
check "and says why" grep -q "exists.*--force" <<<"$ERR"
check "the VM still runs" test "$(lab_state g)" = running
check "its definition is unchanged" test "$(lab_virsh dumpxml "$G")" = "$xml_before"
check "no temporary file was left" test -z "$(find "$LAB_WORK" -name '*.vmshadow-restore*')"
vsh --json restore "$GID" --dry-run --to "$LAB_WORK/to"
check "--dry-run exits 0" test "$RC" = 0
check "the plan names the replaced VM" test "$(jq -r '.vms[0].replaces_existing' <<<"$OUT")" = true
check "the plan puts the disk under --to" test "$(jq -r '.vms[0].files[] | select(.file == "disk/vda") | .to' <<<"$OUT")" = "$LAB_WORK/to/$G/g.data.qcow2"
check "the plan re-wires one interface and disconnects none yet" test "$(jq -r '[.vms[0].interfaces[] | .connected] | join(",")' <<<"$OUT")" = "true,true"
check "--dry-run changed nothing: VM running" test "$(lab_state g)" = running
check "--dry-run changed nothing: no --to directory" test ! -e "$LAB_WORK/to"

# The bridge of the second interface goes away before the restore.
ip link del "$BR_GONE"

# Guest-method backup, restored in place.
vsh --json restore "$GID" --force
check "restore --force exits 0" test "$RC" = 0
check "registered" test "$(jq -r '.vms[0].result.registered' <<<"$OUT")" = true
check "interface on the existing bridge re-wired" test "$(jq -r --arg b "$BR_KEEP" '.vms[0].result.interfaces[] | select(.source == $b) | .connected' <<<"$OUT")" = true
check "interface on the deleted bridge left disconnected, and the restore says so" \
    jq -e --arg b "$BR_GONE" '.vms[0].result.interfaces[] | select(.source == $b) | (.connected == false) and (.action | test("disconnected"))' <<<"$OUT"
check "restored VM is shut off until started" test "$(lab_state g)" = "shut off"
lab_virsh start "$G" >/dev/null
lab_wait_ready g
check "the restored guest boots and its agent answers" test "$(lab_gexec g 'echo pong')" = pong
check "file written before the backup is there" test "$(lab_gexec g 'cat /mnt/data/before.txt')" = before
check "file written after the backup is not" lab_gexec g 'test ! -e /mnt/data/after.txt'
check "the kept interface is on its bridge" grep -q "$BR_KEEP" <<<"$(lab_virsh domiflist "$G")"
check "the other interface is disconnected (link down)" grep -q "link state=.down" <<<"$(lab_virsh dumpxml "$G")"

# Saved-state backup, restored under --to: resumes from its memory.
lab_virsh destroy "$S" >/dev/null
vsh --json restore "$SID" --force --to "$LAB_WORK/to"
check "restore --to exits 0" test "$RC" = 0
check "the disk is under --to" test -s "$LAB_WORK/to/$S/s.data.qcow2"
check "the XML follows the disk (R13)" grep -q "$LAB_WORK/to/$S/s.data.qcow2" <<<"$(lab_virsh domblklist "$S")"
check "the managed saved state is a link to the file under --to (R12)" \
    test "$(readlink "/var/lib/libvirt/qemu/save/$S.save")" = "$LAB_WORK/to/$S/$S.save"
check "libvirt knows the managed saved state (dominfo)" \
    grep -q "Managed save: *yes" <<<"$(lab_virsh dominfo "$S")"
check "no temporary state file is left" test -z "$(find "$LAB_WORK/to" /var/lib/libvirt/qemu/save -name '*.vmshadow-restore*')"
lab_virsh start "$S" >/dev/null
lab_wait_ready s
up_after=$(lab_gexec s 'cut -d. -f1 /proc/uptime')
echo "  uptime at backup: $up_before s; right after the restored VM started: $up_after s"
check "the saved-state VM resumed from its memory (uptime continues)" test "$up_after" -ge "$up_before"
# (The restored definition has no serial log file any more: without
# --host-devices a <serial type='file'> on a host path becomes 'null', issue
# 20; so the memory itself is the witness that the guest did not boot.)
check "and did not boot again (its in-memory marker is there)" \
    test "$(lab_gexec s 'cat /run/saved-marker 2>/dev/null')" = before-backup
check "the managed saved state was consumed" test ! -e "/var/lib/libvirt/qemu/save/$S.save"

# --as: a copy beside the original.
lab_virsh destroy "$S" >/dev/null
vsh --json restore "$SID" "$S" --as "$S-copy"
check "restore --as exits 0" test "$RC" = 0
LAB_DOMAINS+=("$S-copy")
check "the copy is defined" test "$(lab_virsh domstate "$S-copy")" = "shut off"
check "with a new UUID" test "$(lab_virsh domuuid "$S-copy")" != "$(lab_virsh domuuid "$S")"
check "its disk is a file of its own" grep -q "$S-copy-s.data.qcow2" <<<"$(lab_virsh domblklist "$S-copy")"
check "the original is untouched" grep -q "$LAB_WORK/to/$S/s.data.qcow2" <<<"$(lab_virsh domblklist "$S")"
lab_virsh undefine "$S-copy" >/dev/null

# A VM at rest in a managed saved state (virsh managedsave, as
# libvirt-guests does at host shutdown): its state is part of the backup,
# and the restored VM resumes from it.
lab_virsh start "$S" >/dev/null
lab_wait_ready s
# /run is a tmpfs in the guest: the marker there lives in its memory only
lab_gexec s 'echo resting > /mnt/data/resting.txt; sync; echo in-memory > /run/resting' ||
    fail "guest write"
lab_virsh managedsave "$S" >/dev/null || fail "virsh managedsave"
vsh --json backup "$S"
MID=$(jq -r .backup <<<"$OUT")
check "backup of the managed-saved VM" test "$RC" = 0 -a "$MID" != null
check "the VM was left as it was (shut off, managed saved state)" \
    sh -c "virsh -q -c $LAB_URI dominfo $S | grep -q 'Managed save: *yes'"
vsh show "$MID"
check "its backup holds the saved state" grep -q "$S/saved-state" <<<"$OUT"
lab_virsh managedsave-remove "$S" >/dev/null
vsh --json restore "$MID" --force
check "restore of the managed-saved VM exits 0" test "$RC" = 0
check "the restored VM has its managed saved state again" \
    grep -q "Managed save: *yes" <<<"$(lab_virsh dominfo "$S")"
lab_virsh start "$S" >/dev/null
lab_wait_ready s
check "it resumed from its memory (the in-memory marker is there)" \
    test "$(lab_gexec s 'cat /run/resting 2>/dev/null')" = in-memory
check "with its data" test "$(lab_gexec s 'cat /mnt/data/resting.txt')" = resting
lab_virsh destroy "$S" >/dev/null

# A damaged chunk: the VM is not registered and nothing of it is left.
export VMSHADOW_REPO=$LAB_WORK/repo2
vsh init
vsh backup "$S"
DID=$OUT
check "backup into a second repository" test "$RC" = 0
for p in "$VMSHADOW_REPO"/packs/*/*.pack; do # every pack: damage in the middle
    printf 'damage' | dd of="$p" bs=1 seek=$(($(stat -c %s "$p") / 2)) conv=notrunc status=none
done
vsh --json restore "$DID" --force --to "$LAB_WORK/damaged"
check "restore of damaged data exits 3" test "$RC" = 3
echo "  $ERR" | head -3
check "the VM is named as not restored" grep -q "$S.*not restored" <<<"$ERR"
check "the damaged copy is not registered: the VM as it was is defined again" \
    grep -q "$LAB_WORK/to/$S/s.data.qcow2" <<<"$(lab_virsh domblklist "$S")"
check "and the report says so" test "$(jq -r '.vms[0].result.previous_vm_defined_again' <<<"$OUT")" = true
check "nothing of it is left half in place" test -z "$(find "$LAB_WORK/damaged" -type f 2>/dev/null)"
e2e_done
