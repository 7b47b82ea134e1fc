#!/bin/bash
# Issue 25 point 5 (SPEC R6, "nothing is left out silently"), on shut-off
# VMs (no guest is started):
#  - a VM with a device='lun' pass-through, a <hostdev> and a <shareable/>
#    disk beside its image file: those three excluded with their reasons in
#    the backup document, `show` and `list`, the image captured; with
#    --include-shared the shared disk is captured too;
#  - a VM whose only disk is excluded fails the set (exit 1, nothing
#    stored, the message names --allow-excluded); with --allow-excluded it
#    is stored and `backup` exits 5 (docs/cli.md "Exit codes");
#  - a VM whose NVRAM is not a file of this host (type='network') fails the
#    set the same way.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
truncate -s 16M "$LAB_WORK/lun.img" "$LAB_WORK/shared.raw"
lab_loop_attach "$LAB_WORK/lun.img"; LLUN=$LAB_LOOP
LUN_XML="<disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='$LLUN'/><target dev='sdb' bus='scsi'/></disk>"
lab_guest_define x --no-agent --raw --disk-xml "$LUN_XML
    <hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x7e' slot='0x1f' function='0x7'/></source></hostdev>
    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='$LAB_WORK/shared.raw'/><target dev='vdc' bus='virtio'/><shareable/></disk>"
X=$(lab_domname x)
# a VM whose only disk is a LUN pass-through (the lab's image file detached)
lab_guest_define only --no-agent --raw --disk-xml "<disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='$LLUN'/><target dev='sdc' bus='scsi'/></disk>"
ONLY=$(lab_domname only)
lab_virsh detach-disk "$ONLY" vda --config >/dev/null || fail "cannot detach vda of $ONLY"
vsh --json vms "$ONLY"
check "the only-excluded VM has no captured disk" \
    test "$(jq '[.vms[0].disks[] | select(.excluded == false)] | length' <<<"$OUT")" = 0

vsh init
check "init" test "$RC" = 0

# ---- pass-through, host device and shared disk: excluded with reasons
vsh --json backup "$X"
check "backup of the VM with excluded devices exits 0" test "$RC" = 0
ID=$(jq -r .backup <<<"$OUT")
ex() { jq -r --arg n "$X" '.vms[] | select(.name == $n) | .excluded_disks[] | "\(.name): \(.reason)"' <<<"$OUT"; }
check "the LUN is excluded as a pass-through" grep -q "^sdb .*LUN pass-through" <<<"$(ex)"
check "the hostdev is excluded as a host device" grep -q "^hostdev0 .*<hostdev>" <<<"$(ex)"
check "the shared disk is excluded as shared" grep -q "^vdc .*shared with other VMs" <<<"$(ex)"
check "each exclusion is warned about" grep -q "warning: VM $X: sdb .*not backed up: SCSI LUN pass-through" <<<"$ERR"
vsh show "$ID"
check "show names the LUN and why" grep -q "$X sdb .*: excluded: SCSI LUN pass-through" <<<"$OUT"
check "show names the host device and why" grep -q "$X hostdev0 .*: excluded: host device passed through" <<<"$OUT"
check "show names the shared disk and why" grep -q "$X vdc .*: excluded: shared with other VMs" <<<"$OUT"
check "show lists the image file" grep -q "$X/disk/vda" <<<"$OUT"
nofiles() { ! grep -q "/disk/sdb\|/disk/vdc" <<<"$OUT"; }
check "show does not list the excluded disks as files" nofiles
vsh list
check "list says the backup has exclusions" grep -q "$X:saved-state([0-9]* excluded)" <<<"$OUT"
vsh --json backup --include-shared "$X"
check "--include-shared: exit 0" test "$RC" = 0
vsh --json show "$(jq -r .backup <<<"$OUT")"
check "--include-shared captures the shared disk" jq -e --arg f "$X/disk/vdc" '.files[] | select(.name == $f)' <<<"$OUT"

# ---- only excluded disks: the set fails, unless --allow-excluded
vsh --json list
N0=$(jq '.backups | length' <<<"$OUT")
vsh backup "$X" "$ONLY"
check "a set with a VM whose disks are all excluded fails: exit 1" test "$RC" = 1
check "the error names the VM, the reason and --allow-excluded" \
    grep -q "$ONLY: every disk: all of its disks are excluded.*--allow-excluded" <<<"$ERR"
vsh --json list
check "nothing stored" test "$(jq '.backups | length' <<<"$OUT")" = "$N0"
vsh --json backup --allow-excluded "$X" "$ONLY"
check "with --allow-excluded: stored, exit 5" test "$RC" = 5 -a "$(jq -r .backup <<<"$OUT")" != null
check "the document records that every disk is excluded" \
    jq -e --arg n "$ONLY" '.vms[] | select(.name == $n) | .excluded_disks[] | select(.name == "every disk")' <<<"$OUT"

# ---- firmware variables that cannot be read
lab_virsh destroy "$X" >/dev/null 2>&1
sed -e "s|<name>$X</name>|<name>$LAB_ID-nv</name>|" -e "s|<hostdev.*</hostdev>||" \
    -e "s|</os>|<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram type='network'><source protocol='iscsi' name='iqn.2013-07.com.example:nv/0'><host name='192.0.2.1' port='3260'/></source></nvram></os>|" \
    "$LAB_WORK/x.xml" >"$LAB_WORK/nv.xml"
if lab_virsh define "$LAB_WORK/nv.xml" >/dev/null 2>&1; then
    LAB_DOMAINS+=("$LAB_ID-nv")
    vsh backup "$LAB_ID-nv"
    check "a VM whose NVRAM is a network source fails the set" test "$RC" = 1
    check "  naming the NVRAM" grep -q "nvram: the firmware variables are a network source" <<<"$ERR"
    vsh backup --allow-excluded "$LAB_ID-nv"
    check "  and is stored with --allow-excluded, exit 5" test "$RC" = 5
else
    echo "# libvirt refuses a network NVRAM without firmware: NVRAM case skipped"
fi
e2e_done
