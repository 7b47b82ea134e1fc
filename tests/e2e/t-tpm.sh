#!/bin/bash
# An emulated TPM's state is part of the VM (issue 5 item 1): it is backed up
# and restored to libvirt's place for it (or under --to, linked from there,
# R12), and a copy restored with --as gets a TPM of its own.
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
e2e_done
