#!/bin/bash
# Firmware variables (NVRAM) and an emulated TPM's state are part of the VM
# (issue 5 item 1): they are backed up and restored to libvirt's place for
# them, or under --to with a link from that place (R12); a copy restored with
# --as gets a TPM of its own.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
command -v swtpm >/dev/null || fail "swtpm is not installed (scripts/install-deps.sh)"
lab_init
e2e_env
lab_guest_define t --tpm
lab_guest_start t
T=$(lab_domname t)
U=$(lab_virsh domuuid "$T")
STATE=/var/lib/libvirt/swtpm/$U/tpm2/tpm2-00.permall
check "libvirt keeps the TPM state in $STATE" test -s "$STATE"
vsh init
vsh --json backup "$T"
ID=$(jq -r .backup <<<"$OUT")
check "backup of a VM with a TPM" test "$RC" = 0 -a "$ID" != null
vsh --json show "$ID"
check "the TPM state is a file of the backup" jq -e --arg f "$T/tpm/tpm2/tpm2-00.permall" '.files[] | select(.name == $f)' <<<"$OUT"
vsh extract "$ID" "$T/tpm/tpm2/tpm2-00.permall" "$LAB_WORK/tpm.backup"
check "and extracts to what libvirt had" cmp -s "$LAB_WORK/tpm.backup" "$STATE"

# Lose the TPM state, then restore the VM in place.
lab_virsh destroy "$T" >/dev/null
head -c 6000 /dev/urandom > "$STATE"
vsh restore "$ID" --force
check "restore --force exits 0" test "$RC" = 0
check "the TPM state is back in libvirt's place" cmp -s "$LAB_WORK/tpm.backup" "$STATE"
lab_virsh start "$T" >/dev/null
lab_wait_ready t
check "the VM starts with it" test "$(lab_state t)" = running

# Under --to: the file lives there, libvirt's place links to it.
lab_virsh destroy "$T" >/dev/null
vsh restore "$ID" --force --to "$LAB_WORK/to"
check "restore --to exits 0" test "$RC" = 0
check "the TPM state is under --to" cmp -s "$LAB_WORK/tpm.backup" "$LAB_WORK/to/$T/tpm/tpm2/tpm2-00.permall"
check "libvirt's place links to it (R12)" test "$(readlink "$STATE")" = "$LAB_WORK/to/$T/tpm/tpm2/tpm2-00.permall"
lab_virsh start "$T" >/dev/null
lab_wait_ready t
check "the VM starts through the link" test "$(lab_state t)" = running

# --as: a copy gets a TPM of its own.
vsh --json restore "$ID" "$T" --as "$T-copy" --dry-run
check "the plan says the copy gets a TPM of its own" jq -e '.vms[0].files[] | select(.kind == "tpm") | .note | test("TPM of its own")' <<<"$OUT"
# NVRAM of a shut-off VM (no firmware needs to run: the files are read as
# they are, SPEC R1 "shut off -> untouched").
lab_guest_define n
N=$(lab_domname n)
echo "not firmware" > "$LAB_WORK/CODE.fd"
NV=/var/lib/libvirt/qemu/nvram/${N}_VARS.fd
mkdir -p /var/lib/libvirt/qemu/nvram
head -c 131072 /dev/urandom > "$NV"
cp "$NV" "$LAB_WORK/nvram.orig"
lab_virsh dumpxml "$N" | sed "s|</initrd>|</initrd><loader readonly='yes' type='pflash'>$LAB_WORK/CODE.fd</loader><nvram>$NV</nvram>|" > "$LAB_WORK/n2.xml"
lab_virsh define "$LAB_WORK/n2.xml" >/dev/null || fail "define with nvram"
vsh --json backup "$N"
NID=$(jq -r .backup <<<"$OUT")
check "backup of a VM with firmware variables" test "$RC" = 0 -a "$NID" != null
head -c 131072 /dev/urandom > "$NV" # the variables change after the backup
vsh restore "$NID" --force --to "$LAB_WORK/to"
check "restore --to exits 0" test "$RC" = 0
check "the variables are restored under --to" cmp -s "$LAB_WORK/nvram.orig" "$LAB_WORK/to/$N/${N}_VARS.fd"
check "the default place links to them (R12)" test "$(readlink "$NV")" = "$LAB_WORK/to/$N/${N}_VARS.fd"
check "the XML keeps the default place" grep -q "<nvram>$NV</nvram>" <<<"$(lab_virsh dumpxml "$N")"
lab_virsh undefine "$N" --nvram >/dev/null 2>&1
rm -f "$NV"
e2e_done
