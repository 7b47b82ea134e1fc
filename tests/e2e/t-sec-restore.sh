#!/bin/bash
# A crafted backup cannot make a restore hurt the host (issue 20 points 1-3),
# on shut-off lab VMs (no guest boots):
#  1. confinement (R10, R12): backups whose firmware-variables, TPM-state or
#     disk "default places" name unrelated host files, or climb with '..'
#     after a trusted prefix, restored --to DIR, in place and --as: the
#     unrelated files stay untouched; what cannot be placed safely is refused
#     with a clear message before anything changes;
#  2. host resources: a definition holding one of each kind of host resource
#     (issue 20 point 2) is registered with none of them without
#     --host-devices, and --dry-run lists each;
#  3. names agree (R9): a backup of VM a whose definition names VM b, or
#     carries b's UUID, is refused and changes nothing.
# Crafted backups are made with the repository tool (bench/vmshadow-repo-tool)
# from a real backup's files and an edited copy of its document (as
# t-hostile.sh). T_SECT=1|2|3 runs one part (to try a part on older code).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
[ -x "$TOOL" ] || fail "the repository tool is not built ($TOOL)"
part() { [ -z "${T_SECT:-}" ] || [ "$T_SECT" = "$1" ]; }
lab_init
e2e_env
NVDIR=/var/lib/libvirt/qemu/nvram
T=$LAB_WORK/sec
mkdir -p "$T" "$NVDIR"
UNRELATED=$NVDIR/$LAB_ID-unrelated_VARS.fd # in libvirt's place, of no VM
cleanup_s() { rm -f "$UNRELATED" "$NVDIR/$LAB_ID"-*_VARS.fd; return 0; }
trap 'cleanup_s; lab_cleanup' EXIT
vsh init
check "init" test "$RC" = 0

# VM a: shut off, with firmware variables in libvirt's place (read as they
# are: no firmware runs); VM b: shut off, the one a backup must not reach.
lab_guest_define a --raw
lab_guest_define b --raw
A=$(lab_domname a); B=$(lab_domname b)
echo "not firmware" >"$LAB_WORK/CODE.fd"
NV=$NVDIR/${A}_VARS.fd
head -c 65536 /dev/urandom >"$NV"
lab_virsh dumpxml "$A" | sed "s|</initrd>|</initrd><loader readonly='yes' type='pflash'>$LAB_WORK/CODE.fd</loader><nvram>$NV</nvram>|" >"$T/a.xml"
lab_virsh define "$T/a.xml" >/dev/null || fail "define $A with firmware variables"
vsh --json backup "$A"
AID=$(jq -r .backup <<<"$OUT")
check "backup of $A (disk, firmware variables, definition)" test "$RC" = 0 -a "$AID" != null
vsh --json show "$AID"
jq .document <<<"$OUT" >"$T/doc.json"
check "the backup holds the firmware variables" jq -e '.writers[].components[]? | .files[] | select(.kind == "nvram")' "$T/doc.json"
for f in disk/vda config/domain.xml nvram; do
    vsh extract "$AID" "$A/$f" "$T/$(basename $f)"
    check "extract $A/$f" test "$RC" = 0
done
head -c 4096 /dev/urandom >"$T/tpmstate"
comp='.writers[] | select(.components | length > 0) | .components[0]'
# craft JQ-FILTER [XML-FILE]: a backup of VM a whose document is doc.json |
# FILTER, with the files disk/vda, config/domain.xml (XML-FILE, default the
# real one), nvram and tpm/x; prints its ID
craft() {
    local doc; doc=$(jq -c "$1" "$T/doc.json")
    "$TOOL" backup --doc "$doc" "$VMSHADOW_REPO" "$A/disk/vda=$T/vda" \
        "$A/config/domain.xml=${2:-$T/domain.xml}" "$A/nvram=$T/nvram" "$A/tpm/x=$T/tpmstate" \
        2>"$T/craft.err" | jq -r .backup
}
set_path() { # set_path KIND PATH: a filter giving the file of KIND the path PATH
    echo "(($comp).files[] | select(.kind == \"$1\") | .path) = \"$2\""
}
add_tpm() { # add_tpm PATH: a filter adding the file tpm/x at PATH
    echo "(($comp).files) += [{\"name\": \"tpm/x\", \"kind\": \"tpm\", \"path\": \"$1\"}]"
}
victim() { echo "victim $1" >"$1"; }
lacks() { ! grep -qF -- "$1" <<<"$2"; }
untouched() { test -f "$1" -a ! -L "$1" && test "$(cat "$1")" = "victim $1"; }
xml_a=$(lab_virsh dumpxml --inactive "$A")
a_unchanged() { test "$(lab_virsh dumpxml --inactive "$A")" = "$xml_a"; }

if part 1; then
    # Refusals first, while $A's definition names its files where the
    # backup has them: nothing may change.
    # -- firmware variables whose "default place" is an unrelated host file
    victim "$T/host-file"
    NVHOST=$(craft "$(set_path nvram "$T/host-file")")
    check "crafted: NVRAM default place on an unrelated host file" test -n "$NVHOST" -a "$NVHOST" != null
    vsh restore "$NVHOST" --force
    check "in place: refused" test "$RC" != 0
    check "in place: the message names the file and says why" \
        grep -q "$T/host-file.*belongs to no VM" <<<"$ERR"
    check "in place: the unrelated file is untouched" untouched "$T/host-file"
    check "in place: $A is defined as it was" a_unchanged
    # climbing out of libvirt's place
    NVCLIMB=$(craft "$(set_path nvram "$NVDIR/../../../../..$T/host-file")")
    vsh restore "$NVCLIMB" --force
    check "in place, NVRAM path climbing after libvirt's prefix: refused" test "$RC" != 0
    check "and says why" grep -q "'\.' or '\.\.'" <<<"$ERR"
    check "the file it points at is untouched" untouched "$T/host-file"
    check "$A is defined as it was" a_unchanged
    # in libvirt's own place, but another file than the VM's: a link there
    # would replace a file of no VM
    victim "$UNRELATED"
    ID=$(craft "$(set_path nvram "$UNRELATED")")
    vsh restore "$ID" --force --to "$T/to2"
    check "--to, NVRAM default place on a file of no VM in libvirt's place: refused" test "$RC" != 0
    check "and says it belongs to no VM (R12)" grep -q "$UNRELATED.*belongs to no VM" <<<"$ERR"
    check "and leaves it untouched" untouched "$UNRELATED"
    check "and writes nothing under the target" test -z "$(find "$T/to2" -type f 2>/dev/null)"
    check "$A is defined as it was" a_unchanged

    # -- TPM state climbing out of libvirt's place after its prefix
    victim "$T/tpm-victim"
    ID=$(craft "$(add_tpm "/var/lib/libvirt/swtpm/../../..$T/tpm-victim")")
    check "crafted: a TPM state path /var/lib/libvirt/swtpm/../../..$T/tpm-victim" test -n "$ID" -a "$ID" != null
    vsh restore "$ID" --force
    check "in place: refused" test "$RC" != 0
    check "in place: says it is not libvirt's place" grep -q "TPM state path.*not libvirt's place" <<<"$ERR"
    check "in place: the file is untouched" untouched "$T/tpm-victim"
    vsh restore "$ID" --force --to "$T/to4"
    check "--to: refused (no link at that path)" test "$RC" != 0
    check "--to: the file is untouched" untouched "$T/tpm-victim"
    check "$A is defined as it was" a_unchanged

    # -- short names (issue 20 point 7): a TPM file named "t" and a disk
    # named "x" were sliced past their ends ("tpm/", "disk/" taken as
    # there); now each is refused by name, and nothing changes
    for short in "tpm t /var/lib/libvirt/swtpm/$(lab_virsh domuuid "$A")/t" "disk x /dev/null"; do
        set -- $short
        doc=$(jq -c "(($comp).files) += [{\"name\": \"$2\", \"kind\": \"$1\", \"path\": \"$3\"}]" "$T/doc.json")
        ID=$("$TOOL" backup --doc "$doc" "$VMSHADOW_REPO" "$A/disk/vda=$T/vda" \
            "$A/config/domain.xml=$T/domain.xml" "$A/nvram=$T/nvram" "$A/$2=$T/tpmstate" \
            2>"$T/craft.err" | jq -r .backup)
        check "crafted: a $1 file named '$2'" test -n "$ID" -a "$ID" != null
        vsh restore "$ID" --force --to "$T/to-short-$2"
        check "  --to: refused with exit 1 (no crash)" test "$RC" = 1
        check "  and the message names the file" grep -q "'$2'" <<<"$ERR"
        check "  nothing written under the target" test -z "$(find "$T/to-short-$2" -type f 2>/dev/null)"
        check "  $A is defined as it was" a_unchanged
    done

    # -- disk whose place is an unrelated host file
    victim "$T/disk-victim"
    ID=$(craft "$(set_path disk "$T/disk-victim")")
    vsh restore "$ID" --force
    check "in place, disk path on an unrelated file: refused" test "$RC" != 0
    check "and says it belongs to no VM" grep -q "$T/disk-victim.*belongs to no VM" <<<"$ERR"
    check "the file is untouched" untouched "$T/disk-victim"
    check "$A is defined as it was" a_unchanged
    victim "$T/$A-copy-disk-victim"
    vsh restore "$ID" "$A" --as "$A-copy"
    check "--as over an unrelated file of the derived name: refused" test "$RC" != 0
    check "the file is untouched" untouched "$T/$A-copy-disk-victim"
    check "no copy was defined" sh -c "! virsh -q -c $LAB_URI dominfo $A-copy >/dev/null 2>&1"
    check "no empty restore-<set> directory is left in the state directory" \
        test -z "$(find "$VMSHADOW_STATE_DIR" -maxdepth 2 -type d -name 'restore-*')"

    # -- what can be restored safely is, without touching the host file
    vsh restore "$NVHOST" --force --to "$T/to1"
    check "--to: restores" test "$RC" = 0
    check "--to: the unrelated file is untouched (not replaced by a link)" untouched "$T/host-file"
    check "--to: the variables are restored inside the target" cmp -s "$T/nvram" "$T/to1/$A/host-file"
    check "--to: the definition names them there, not the host file" \
        sh -c "virsh -q -c $LAB_URI dumpxml $A | grep -q '<nvram>$T/to1/$A/host-file</nvram>'"
    check "no restore-<set> directory is left after a successful restore" \
        test -z "$(find "$VMSHADOW_STATE_DIR" -maxdepth 2 -type d -name 'restore-*')"
    vsh restore "$NVCLIMB" --force --to "$T/to3"
    check "--to, climbing NVRAM path: restores inside the target" test "$RC" = 0 -a -f "$T/to3/$A/host-file"
    check "--to: the file it points at is untouched" untouched "$T/host-file"
    vsh restore "$NVCLIMB" "$A" --as "$A-copy"
    check "--as, climbing NVRAM path: refused ('..' is accepted nowhere)" test "$RC" != 0
    check "no copy was defined" sh -c "! virsh -q -c $LAB_URI dominfo $A-copy >/dev/null 2>&1"
    # --as: the copy's variables get a name of vmshadow's own
    vsh restore "$NVHOST" "$A" --as "$A-copy"
    check "--as: restores" test "$RC" = 0
    check "--as: the copy's variables are $NVDIR/$A-copy_VARS.fd" cmp -s "$T/nvram" "$NVDIR/$A-copy_VARS.fd"
    check "--as: the file the backup named is untouched" untouched "$T/host-file"
    lab_virsh undefine "$A-copy" --nvram >/dev/null 2>&1
    rm -f "$LAB_WORK/$A-copy-a.data.raw"
fi

if part 2; then
    # -- a definition with one of each host resource (issue 20 point 2)
    xml=$(cat "$T/domain.xml")
    host_parts="<disk type='file' device='disk'><source file='/dev/null'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/etc/hostname'/><target dev='vdc' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/etc/os-release'/><target dev='sdc' bus='sata'/><readonly/></disk>
<disk type='block' device='disk'><source dev='/dev/null'/><target dev='vdd' bus='virtio'/></disk>
<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>
<filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='hostroot'/></filesystem>
<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
<input type='evdev'><source dev='/dev/input/event0'/></input>
<serial type='file'><source path='$T/serial-out'/><target port='1'/></serial>
<parallel type='dev'><source path='/dev/parport0'/><target port='0'/></parallel>
<channel type='unix'><source mode='connect' path='$T/host.sock'/><target type='virtio' name='evil.0'/></channel>
<interface type='ethernet'><script path='$T/evil.sh'/><model type='virtio'/></interface>"
    evil_xml=$(python3 -c '
import sys
x = open(sys.argv[1]).read()
x = x.replace("<domain ", "<domain xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\" ", 1)
import re
x = re.sub(r"<emulator>[^<]*</emulator>", "<emulator>/tmp/evil/qemu-system-x86_64</emulator>", x)
x = x.replace("</devices>", sys.argv[2] + "</devices>", 1)
x = x.replace("</domain>", "<qemu:commandline><qemu:arg value=\"-name\"/><qemu:arg value=\"evil-cmdline\"/></qemu:commandline></domain>", 1)
print(x)' "$T/domain.xml" "$host_parts")
    printf '%s\n' "$evil_xml" >"$T/evil.xml"
    check "the hostile definition is well-formed" xmllint --noout "$T/evil.xml"
    # (without the firmware variables: part 1 left $A's elsewhere)
    ID=$(craft "(($comp).files) |= map(select(.kind != \"nvram\"))" "$T/evil.xml")
    check "crafted: a definition with host resources" test -n "$ID" -a "$ID" != null
    vsh --json restore "$ID" --force --to "$T/hd" --dry-run
    check "--dry-run --json exits 0" test "$RC" = 0
    listed=$(jq -r '.vms[0].host_devices_not_attached[]' <<<"$OUT")
    for m in "disk vdb (file /dev/null" "disk vdc (file /etc/hostname" "disk sdc (file /etc/os-release" \
        "disk vdd (block /dev/null)" "hostdev (subsystem pci)" "filesystem (mount /)" \
        "tpm (passthrough /dev/tpm0)" "input (evdev /dev/input/event0)" "serial (file $T/serial-out)" \
        "parallel (dev /dev/parport0)" "channel (unix $T/host.sock)" "interface script $T/evil.sh" \
        "qemu:commandline" "emulator /tmp/evil/qemu-system-x86_64"; do
        check "--dry-run --json lists: $m" grep -qF "$m" <<<"$listed"
    done
    vsh restore "$ID" --force --to "$T/hd" --dry-run
    check "--dry-run (text) lists them" test "$(grep -c 'host device not attached' <<<"$OUT")" -ge 14
    vsh restore "$ID" --force --to "$T/hd"
    check "restore without --host-devices exits 0" test "$RC" = 0
    got=$(lab_virsh dumpxml --inactive "$A")
    for m in /dev/null /etc/hostname /etc/os-release "<hostdev" hostroot /dev/tpm0 /dev/input/event0 \
        "$T/serial-out" /dev/parport0 "$T/host.sock" "$T/evil.sh" evil-cmdline qemu:commandline /tmp/evil; do
        check "the registered definition holds no $m" lacks "$m" "$got"
    done
    check "the restored disk is there" grep -qF "$T/hd/$A/" <<<"$got"
    check "the CD-ROM drive stays, empty" grep -qF "dev='sdc'" <<<"$got"
    check "the serial port stays, connected to nothing" grep -qF "<serial type='null'>" <<<"$got"
    check "libvirt picked the host's emulator" grep -q "<emulator>/usr/" <<<"$got"
fi

if part 3; then
    # -- names agree (R9)
    xml_a=$(lab_virsh dumpxml --inactive "$A")
    xml_b=$(lab_virsh dumpxml --inactive "$B")
    UB=$(lab_virsh domuuid "$B")
    UA=$(lab_virsh domuuid "$A")
    # $B's name and UUID: libvirt would take it as a new definition of $B
    sed "s|<name>$A</name>|<name>$B</name>|; s|<uuid>$UA</uuid>|<uuid>$UB</uuid>|" "$T/domain.xml" >"$T/named-b.xml"
    ID=$(craft . "$T/named-b.xml")
    check "crafted: a backup of $A whose definition names $B" test -n "$ID" -a "$ID" != null
    vsh restore "$ID" --force
    check "restore in place: refused" test "$RC" != 0
    check "and says the definition names another VM" grep -q "defines a VM named '$B', not $A" <<<"$ERR"
    check "$B is unchanged" test "$(lab_virsh dumpxml --inactive "$B")" = "$xml_b"
    check "$A is unchanged" a_unchanged
    vsh restore "$ID" --force --to "$T/n1"
    check "restore --to: refused" test "$RC" != 0
    check "$B is unchanged" test "$(lab_virsh dumpxml --inactive "$B")" = "$xml_b"
    vsh --json restore "$ID" --force --dry-run
    check "--dry-run: refused as well" test "$RC" != 0
    # the UUID of another VM
    sed "s|<uuid>$UA</uuid>|<uuid>$UB</uuid>|" "$T/domain.xml" >"$T/uuid-b.xml"
    ID=$(craft "(($comp).extra.uuid) = \"$UB\"" "$T/uuid-b.xml")
    vsh restore "$ID" --force
    check "a backup of $A carrying $B's UUID: refused" test "$RC" != 0
    check "and says the UUID is $B's" grep -q "UUID $UB is the one of VM $B" <<<"$ERR"
    check "$A is unchanged" a_unchanged
    check "$B is unchanged" test "$(lab_virsh dumpxml --inactive "$B")" = "$xml_b"
    ID=$(craft . "$T/uuid-b.xml")
    vsh restore "$ID" --force
    check "a definition whose UUID is not its component's: refused" test "$RC" != 0
    check "and says so" grep -q "has the UUID $UB" <<<"$ERR"
    check "$A is unchanged" a_unchanged
fi
e2e_done
