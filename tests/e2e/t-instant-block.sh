#!/bin/bash
# Instant restore onto a block device (issue 23 point 2, "block copy onto
# the target and pivot"), on a lab guest with a raw disk (vdb) on a loop
# device beside its qcow2 data disk (vda, pulled as in t-instant.sh):
#  - a backup whose definition names a device the VM it replaces does not
#    use is refused before anything changes (R12): both devices and the
#    definition are unchanged;
#  - `restore --instant --force` starts the VM at once on a qcow2 overlay
#    of the served vdb (beside the journal, in the state directory, which
#    QEMU's user may pass through, nobody else), block-copies it onto the
#    device while the guest runs (throttled, so that the checks happen
#    during the copy): the agent answers, `jobs` shows the copy, bytes the
#    guest writes to vdb during the copy reach the device (mirrored); then
#    pivots: the device holds the backup's bytes plus the guest's write, the
#    live and the persistent definition name the device, no server and no
#    overlay are left;
#  - SIGKILL of vmshadow mid-copy: the VM runs on, `recover` pivots and
#    finishes; the device holds the backup's bytes;
#  - `recover --abandon` mid-copy tears down (VM, overlay, server, journal)
#    and says the device holds a partial restore;
#  - onto an RBD image (the Ceph lab, QEMU's rbd driver): a VM whose vdb is
#    an RBD image with a libvirt secret, backed up shut off, its image then
#    overwritten; `restore --instant --force` copies onto the image through
#    the VM's own source and auth while the guest writes to it, pivots; the
#    image holds the backup's bytes plus the guest's write, the definition
#    names the image with its secret, nothing is left;
#  - a host reboot in spirit mid-copy and mid-pull (reboot_mid_copy):
#    vmshadow and its servers SIGKILLed, the VM destroyed (its QEMU gone as
#    after a power loss), the run directory removed (/run is a tmpfs); only
#    the state directory is kept: `recover` brings the VM back on its
#    overlays (the block copy's overlay lies beside the journal, not in the
#    run directory) and finishes; the device holds the backup's bytes plus
#    the guest's write made before the "reboot";
#  - on the RBD image (rbd_kill_cases): SIGKILL of vmshadow mid-copy, a
#    guest write before the kill, `recover`: the image holds the backup's
#    bytes plus that write; `recover --abandon` mid-copy: VM, overlay,
#    server, journal gone, the warning says the image holds a partial
#    restore, image and secret kept.
#  - onto libvirt pool volumes (issue 23): a VM whose vdb is a raw volume
#    of a dir pool (a file) and vdc the volume of a 'disk' pool on a loop
#    device (a partition: a block device), backed up shut off, both then
#    overwritten; `restore --instant --force` puts vdb's overlay in the
#    volume's file and pulls it, block-copies vdc onto the partition and
#    pivots, while the guest writes to both; after completion each volume
#    holds the backup's bytes plus the guest's write, the definition names
#    both volumes (pool and volume), nothing is left (server, overlay,
#    journal).
set -u
LAB_GUESTS=1
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
e2e_env
export VMSHADOW_RUN_DIR=$LAB_WORK/run
BG=
stop_bg() { [ -n "$BG" ] && kill "$BG" 2>/dev/null; wait "$BG" 2>/dev/null; BG=; return 0; }
servers() { for p in /proc/[0-9]*; do { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -q "^nbdkit .*--unix $VMSHADOW_RUN_DIR/" && echo "${p#/proc/}"; done; }
kill_servers() { local p; for p in $(servers); do kill -9 "$p" 2>/dev/null; done; }
SECRET= IMG=vmsh-ib-$$
cleanup_ib() {
    stop_bg
    # the VM first: a running one keeps a watch on its RBD image
    lab_cleanup
    kill_servers
    [ -n "$SECRET" ] && virsh -q -c "$LAB_URI" secret-undefine "$SECRET" >/dev/null 2>&1
    [ -n "${VMSH_CEPH_POOL:-}" ] && rbd -p "$VMSH_CEPH_POOL" rm --no-progress "$IMG" >/dev/null 2>&1
    ceph_lab_release 2>/dev/null
    return 0
}
trap cleanup_ib EXIT
jqe() { jq -e "$@" >/dev/null; }
MiB=$((1 << 20))

truncate -s 48M "$LAB_WORK/raw.img"
lab_loop_attach "$LAB_WORK/raw.img"; LRAW=$LAB_LOOP
truncate -s 48M "$LAB_WORK/other.img"
lab_loop_attach "$LAB_WORK/other.img"; LOTHER=$LAB_LOOP
qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 5M 512k' -c 'write -P 0x33 40M 64k' "$LRAW" >/dev/null ||
    fail "cannot write test data to $LRAW"
qemu-io -f raw -c 'write -P 0x77 0 48M' "$LOTHER" >/dev/null || fail "cannot write $LOTHER"
lab_guest_define g --block "$LRAW"
G=$(lab_domname g)
# backed up shut off (read directly: no boot, no freeze; the test is about
# the restore)

vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of $G (vdb a raw disk on $LRAW)" test "$RC" = 0 -a "$ID" != null
vsh extract "$ID" "$G/disk/vdb" "$LAB_WORK/vdb.ref"
check "extract of the block disk" test "$RC" = 0
check "the backup holds the device's bytes" cmp -s "$LAB_WORK/vdb.ref" "$LRAW"

# ---- 0. R12: the VM defined here now uses another device for vdb; the
# backup names $LRAW: refused, nothing changed
virsh -q -c "$LAB_URI" dumpxml --inactive "$G" >"$LAB_WORK/g-own.xml"
sed "s|dev='$LRAW'|dev='$LOTHER'|" "$LAB_WORK/g-own.xml" >"$LAB_WORK/g-other.xml"
lab_virsh define "$LAB_WORK/g-other.xml" >/dev/null || fail "redefine on $LOTHER"
dd if=/dev/urandom of="$LRAW" bs=1M count=48 conv=notrunc,fsync status=none
sum_raw=$(sha256sum <"$LRAW")
sum_other=$(sha256sum <"$LOTHER")
def_before=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
vsh restore --instant --force "$ID" "$G"
check "instant restore onto a device the replaced VM does not use: refused" test "$RC" != 0
check "... citing R12" grep -q "R12" <<<"$ERR"
check "the backup's device is unchanged" test "$(sha256sum <"$LRAW")" = "$sum_raw"
check "the VM's own device is unchanged" test "$(sha256sum <"$LOTHER")" = "$sum_other"
check "the definition is unchanged" test "$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")" = "$def_before"
check "no instant restore left" bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "no server left" test -z "$(servers)"
lab_virsh define "$LAB_WORK/g-own.xml" >/dev/null || fail "define back on $LRAW"

jobs_json() { "$VMSHADOW" --json jobs 2>/dev/null; }
vdb_job() { jobs_json | jq -c '.jobs[0].disks[]? | select(.disk == "vdb")'; }
wait_copying() {
    for _ in $(seq 600); do
        local o; o=$(vdb_job)
        # (jq 1.6 -e exits 0 on empty input: no job is no copy)
        [ -n "$o" ] && jqe --arg d "$LRAW" '.copy_to == $d and .pulling and .bytes_done > 0' <<<"$o" && return 0
        sleep 0.1
    done
    return 1
}
agent_ok() { lab_virsh qemu-agent-command "$G" '{"execute":"guest-ping"}' --timeout 5 >/dev/null 2>&1; }
wait_agent() { for _ in $(seq 600); do agent_ok && return 0; sleep 0.1; done; return 1; }
# unthrottles both disks' jobs once the checks that need them running are done
speed_up() {
    local d
    for d in vda vdb; do
        for _ in $(seq 600); do
            virsh -q -c "$LAB_URI" blockjob "$G" $d --bandwidth 0 >/dev/null 2>&1 && break
            virsh -q -c "$LAB_URI" domblklist "$G" | grep -q "^ *$d *$LRAW" && break # pivoted
            kill -0 "$1" 2>/dev/null || return 0
            sleep 0.1
        done
    done
}
no_overlay() { test -z "$(find "$VMSHADOW_RUN_DIR" "$VMSHADOW_STATE_DIR/instant" -name '*.overlay' 2>/dev/null)"; }
# nothing_left [OVERLAY]: no server, no overlay (the one named, and none in
# the run or state directories), no journal or kept definition, no job
nothing_left() {
    test -z "$(servers)" && { [ -z "${1:-}" ] || test ! -e "$1"; } && no_overlay &&
        test -z "$(find "$VMSHADOW_STATE_DIR/instant" -maxdepth 1 -type f 2>/dev/null)" &&
        "$VMSHADOW" --json jobs | jq -e '.jobs | length == 0' >/dev/null
}
on_device() {
    lab_virsh domblklist "$G" | grep -q "^ *vdb *$LRAW *$" &&
        virsh -q -c "$LAB_URI" dumpxml --inactive "$G" | grep -q "<source dev='$LRAW'"
}

# ---- a host reboot in spirit in the middle of a block copy (vdb onto the
# device) and a pull (vda): every process of the instant restore and the
# VM's QEMU killed, the run directory gone; the state directory kept
reboot_mid_copy() {
    dd if=/dev/urandom of="$LRAW" bs=1M count=48 conv=notrunc,fsync status=none
    "$VMSHADOW" -v restore --instant --force --bandwidth 1M "$ID" "$G" >"$LAB_WORK/r6.out" 2>"$LAB_WORK/r6.err" &
    BG=$!
    wait_agent || { cat "$LAB_WORK/r6.err" >&2; fail "reboot case: the VM runs and its agent answers"; }
    check "reboot case: copy under way" wait_copying
    OVL=$(vdb_job | jq -r .overlay)
    check "the copy's overlay lies beside the journal (state directory), not in the run directory" \
        bash -c "[[ '$OVL' == '$VMSHADOW_STATE_DIR'/instant/overlays/* ]] && test -f '$OVL'"
    check "QEMU's user reaches the overlay, another user not even its directory" \
        bash -c "runuser -u libvirt-qemu -- test -r '$OVL' && ! runuser -u nobody -- test -e '$OVL' && ! runuser -u nobody -- ls '$VMSHADOW_STATE_DIR' >/dev/null 2>&1"
    local off=$((44 * MiB + 512))
    lab_gexec g "printf 'before-reboot!!!' | dd of=/dev/vdb bs=16 seek=$((off / 16)) conv=notrunc,fsync 2>/dev/null" ||
        fail "guest write before the reboot"
    # the "reboot": nothing of the run survives
    kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
    kill_servers
    lab_virsh destroy "$G" >/dev/null
    rm -rf "$VMSHADOW_RUN_DIR"
    check "after the 'reboot' the VM is shut off" test "$(lab_state g)" = "shut off"
    check "jobs: vdb not served, not done" \
        bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs[0].vm_state == \"shut off\" and ([.jobs[0].disks[] | select(.disk == \"vdb\") | .served] == [false])' >/dev/null"
    # an overlay that did not survive (a run directory or a tmpfs emptied by
    # a real reboot): recover says so and leaves the VM shut off
    mv "$OVL" "$OVL.away"
    vsh recover
    check "recover without the overlay fails" test "$RC" != 0
    check "... saying the overlay is gone, the guest's writes lost, what to do" \
        bash -c "grep -q 'its overlay $OVL is gone' <<<\"\$0\" && grep -q 'recover --abandon' <<<\"\$0\"" "$ERR"
    check "... and leaving the VM shut off, the journal in place" \
        bash -c "test \"\$(virsh -q -c $LAB_URI domstate '$G')\" = 'shut off' && \"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 1' >/dev/null"
    mv "$OVL.away" "$OVL"
    "$VMSHADOW" recover >"$LAB_WORK/rec6.out" 2>"$LAB_WORK/rec6.err" &
    BG=$!
    speed_up "$BG"
    wait "$BG"; RC=$?; BG=
    cat "$LAB_WORK/rec6.err" >&2
    check "recover after the reboot finishes the instant restore" test "$RC" = 0
    check "recover says so" grep -q "finished 1 instant restore" "$LAB_WORK/rec6.out"
    check "the VM runs again, on the device, and is defined on it" on_device
    check "no job, no server, no overlay left" nothing_left "$OVL"
    check "the guest answers after the reboot and recover" wait_agent
    lab_virsh destroy "$G" >/dev/null
    lab_wait_off g
    cp "$LAB_WORK/vdb.ref" "$LAB_WORK/vdb6.exp"
    printf 'before-reboot!!!' | dd of="$LAB_WORK/vdb6.exp" bs=16 seek=$((off / 16)) conv=notrunc status=none
    check "the device holds the backup's bytes plus the guest's write made before the reboot" \
        cmp "$LAB_WORK/vdb6.exp" "$LRAW"
}

# rbd_done WRITE OFFSET IMAGE: an instant restore onto the RBD image has
# ended: the VM runs on the image, its definition names it with the VM's own
# secret, nothing is left; then, the VM stopped, IMAGE (as qemu-img names it)
# holds the backup's bytes plus the guest's 16-byte WRITE at OFFSET
rbd_done() {
    check "the VM runs on the RBD image" bash -c "virsh -q -c $LAB_URI domblklist '$G' | grep -q '^ *vdb *$LRAW *\$'"
    X=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
    check "the definition names the RBD image with the VM's own secret" \
        bash -c "grep -q \"protocol='rbd' name='$LRAW'\" <<<\"\$0\" && grep -q \"uuid='$SECRET'\" <<<\"\$0\" && ! grep -q '.overlay' <<<\"\$0\"" "$X"
    check "no job, no server, no overlay, no kept definition left" nothing_left "$OVL"
    lab_virsh destroy "$G" >/dev/null
    lab_wait_off r
    cp "$LAB_WORK/rbd.ref" "$LAB_WORK/rbd.exp"
    printf '%s' "$1" | dd of="$LAB_WORK/rbd.exp" bs=16 seek=$(($2 / 16)) conv=notrunc status=none
    check "the RBD image holds the backup's bytes plus the guest's write ($1)" \
        qemu-img compare -q -U -f raw -F raw "$3" "$LAB_WORK/rbd.exp"
}

# ---- SIGKILL of vmshadow mid-copy onto the RBD image, then recover; then
# recover --abandon mid-copy
rbd_kill_cases() {
    local off=$((24 * MiB + 512)) img="$R/$IMG:conf=$CEPH_CONF"
    qemu-io -f raw -c 'write -P 0xee 0 2M' -c 'write -P 0x11 29M 2M' "$img" >/dev/null || fail "overwrite $IMG"
    "$VMSHADOW" -v restore --instant --force --bandwidth 1M "$RID" "$G" >"$LAB_WORK/r5.out" 2>"$LAB_WORK/r5.err" &
    BG=$!
    wait_agent || { cat "$LAB_WORK/r5.err" >&2; fail "RBD kill: the VM runs and its agent answers"; }
    check "RBD kill: copy onto the image under way" wait_copying
    OVL=$(vdb_job | jq -r .overlay)
    gexec_r "printf 'killed-mid-copy!' | dd of=/dev/vdb bs=16 seek=$((off / 16)) conv=notrunc,fsync 2>/dev/null" ||
        fail "guest write before the kill"
    kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
    check "after SIGKILL of vmshadow the VM on RBD still runs" test "$(lab_state r)" = running
    check "and its copy onto the image goes on" wait_copying
    "$VMSHADOW" recover >"$LAB_WORK/rec5.out" 2>"$LAB_WORK/rec5.err" &
    BG=$!
    speed_up "$BG"
    wait "$BG"; RC=$?; BG=
    cat "$LAB_WORK/rec5.err" >&2
    check "recover finishes the instant restore onto RBD" test "$RC" = 0
    check "recover says so" grep -q "finished 1 instant restore" "$LAB_WORK/rec5.out"
    rbd_done 'killed-mid-copy!' "$off" "$img"

    # abandon mid-copy
    qemu-io -f raw -c 'write -P 0xee 0 2M' "$img" >/dev/null || fail "overwrite $IMG"
    vsh restore --instant --force --no-wait --bandwidth 1M "$RID" "$G"
    check "RBD abandon: restore --instant --no-wait returns once the VM runs" test "$RC" = 0
    check "copy onto the image under way" wait_copying
    OVL=$(vdb_job | jq -r .overlay)
    vsh recover --abandon "$G"
    check "recover --abandon mid-copy onto RBD tears it down" test "$RC" = 0
    check "... saying the image holds a partial restore" grep -q "$LRAW now holds a partial restore" <<<"$ERR$OUT"
    check "the VM is gone" bash -c "! virsh -q -c $LAB_URI dominfo '$G' >/dev/null 2>&1"
    check "no job, no server, no overlay, no journal left" nothing_left "$OVL"
    check "the image and the VM's secret are kept" \
        bash -c "rbd -p '$VMSH_CEPH_POOL' info '$IMG' >/dev/null 2>&1 9>&- && virsh -q -c $LAB_URI secret-dumpxml '$SECRET' >/dev/null"
}

# ---- 1. instant restore in place onto the device, copy throttled
T0=$(date +%s.%N)
"$VMSHADOW" -v restore --instant --force --bandwidth 1M "$ID" "$G" >"$LAB_WORK/r1.out" 2>"$LAB_WORK/r1.err" &
BG=$!
wait_agent || { cat "$LAB_WORK/r1.err" >&2; fail "the VM runs at once and its agent answers"; }
pass "the VM runs at once and its agent answers"
echo "# the guest agent answered $(echo "$(date +%s.%N) - $T0" | bc) s after restore --instant started"
check "during the copy: jobs shows vdb copying onto $LRAW" wait_copying
OVL=$(vdb_job | jq -r .overlay)
# the overlay lies beside the journal (STATE_DIR/instant/overlays), never
# in the run directory, which a host reboot empties (reboot_mid_copy)
on_overlay() { lab_virsh domblklist "$G" | grep -q "^ *vdb *$OVL *$" && [[ $OVL == "$VMSHADOW_STATE_DIR"/instant/overlays/* ]]; }
check "vdb runs on a qcow2 overlay beside the journal (the state directory)" on_overlay
check "the overlay's backing is the served disk" \
    bash -c "qemu-img info --force-share '$OVL' | grep -q 'backing file: nbd+unix:///?socket=$VMSHADOW_RUN_DIR/'"
check "jobs (text) shows the copy" bash -c "\"$VMSHADOW\" jobs | grep -q 'vdb  copying onto $LRAW'"
# the guest writes 16 bytes at 44 MiB + 512 (past what 1 MiB/s has copied)
OFF=$((44 * MiB + 512))
lab_gexec g "printf 'written-in-copy!' | dd of=/dev/vdb bs=16 seek=$((OFF / 16)) conv=notrunc,fsync 2>/dev/null" ||
    fail "guest write during the copy"
check "the guest reads its write back" test "$(lab_gexec g "dd if=/dev/vdb bs=16 skip=$((OFF / 16)) count=1 2>/dev/null")" = "written-in-copy!"
check "the guest reads the backup's bytes during the copy (0x33 at 40 MiB)" \
    test "$(lab_gexec g "dd if=/dev/vdb bs=1 skip=$((40 * MiB)) count=1 2>/dev/null" | od -An -tx1 | tr -d ' ')" = 33
still_copying() { local o; o=$(vdb_job); [ -n "$o" ] && jqe '.pulling and (.done | not)' <<<"$o"; }
check "the copy is still running after those checks" still_copying
speed_up "$BG"
wait "$BG"; RC=$?; BG=
cat "$LAB_WORK/r1.err" | grep -v '^debug' >&2
check "restore --instant ends with exit 0 once the copy is pivoted" test "$RC" = 0
check "the VM runs on the device and is defined on it" on_device
check "the definition lost the stop-on-error policy" \
    bash -c "! virsh -q -c $LAB_URI dumpxml --inactive '$G' | grep -q rerror_policy"
check "no instant restore is left in jobs" bash -c "\"$VMSHADOW\" --json jobs | jq -e '.jobs | length == 0' >/dev/null"
check "no server is left" test -z "$(servers)"
check "no overlay is left" no_overlay
check "the agent answers after the pivot" agent_ok
lab_virsh destroy "$G" >/dev/null
lab_wait_off g
cp "$LAB_WORK/vdb.ref" "$LAB_WORK/vdb.exp"
printf 'written-in-copy!' | dd of="$LAB_WORK/vdb.exp" bs=16 seek=$((OFF / 16)) conv=notrunc status=none
check "the device holds the backup's bytes plus the guest's write during the copy" cmp "$LAB_WORK/vdb.exp" "$LRAW"

# ---- 2. SIGKILL of vmshadow mid-copy, then recover
dd if=/dev/urandom of="$LRAW" bs=1M count=48 conv=notrunc,fsync status=none
"$VMSHADOW" -v restore --instant --force --bandwidth 1M "$ID" "$G" >"$LAB_WORK/r2.out" 2>"$LAB_WORK/r2.err" &
BG=$!
check "copy under way" wait_copying
OVL=$(vdb_job | jq -r .overlay)
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
check "after SIGKILL of vmshadow the VM still runs" test "$(lab_state g)" = running
check "and the copy goes on" wait_copying
"$VMSHADOW" recover >"$LAB_WORK/rec.out" 2>"$LAB_WORK/rec.err" &
BG=$!
speed_up "$BG"
wait "$BG"; RC=$?; BG=
cat "$LAB_WORK/rec.err" >&2
check "recover finishes the instant restore" test "$RC" = 0
check "recover says so" grep -q "finished 1 instant restore" "$LAB_WORK/rec.out"
check "the VM runs on the device and is defined on it" on_device
check "no job, no server, no overlay left" nothing_left "$OVL"
lab_virsh destroy "$G" >/dev/null
lab_wait_off g
check "the device holds the backup's bytes after the kill and recover" cmp "$LAB_WORK/vdb.ref" "$LRAW"

reboot_mid_copy

# ---- 3. abandon mid-copy
vsh restore --instant --force --no-wait --bandwidth 1M "$ID" "$G"
check "restore --instant --no-wait returns once the VM runs" test "$RC" = 0
check "copy under way" wait_copying
OVL=$(vdb_job | jq -r .overlay)
vsh recover --abandon "$G"
check "recover --abandon tears it down" test "$RC" = 0
check "... saying the device holds a partial restore" grep -q "$LRAW now holds a partial restore" <<<"$ERR$OUT"
check "the VM is gone" bash -c "! virsh -q -c $LAB_URI dominfo '$G' >/dev/null 2>&1"
check "no job, no server, no overlay left" nothing_left "$OVL"
check "the device node is still a block device" test -b "$LRAW"

# ---- 4. onto an RBD image
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || fail "QEMU's rbd driver is missing: install qemu-block-extra"
ceph_lab_need || fail "no Ceph lab"
R="rbd:$VMSH_CEPH_POOL"
rbd -p "$VMSH_CEPH_POOL" create "$IMG" --size 32M 9>&- || fail "rbd create $IMG"
qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0x33 30M 64k' "$R/$IMG:conf=$CEPH_CONF" >/dev/null ||
    fail "cannot write test data to $IMG"
SECRET=$(uuidgen)
echo "<secret ephemeral='no' private='yes'><uuid>$SECRET</uuid><usage type='ceph'><name>vmshadow-lab-ib-$$</name></usage></secret>" >"$LAB_WORK/secret.xml"
lab_virsh secret-define "$LAB_WORK/secret.xml" >/dev/null || fail "secret-define"
KEY=$(ceph auth get-key client.admin 2>/dev/null) || fail "no client.admin key"
lab_virsh secret-set-value "$SECRET" --base64 "$KEY" >/dev/null 2>&1 ||
    printf '%s' "$KEY" | lab_virsh secret-set-value "$SECRET" --file /dev/stdin --plain >/dev/null || fail "secret-set-value"
set -- $(sed -n 's/^mon host = \[v2:\([0-9.]*\):\([0-9]*\),.*/\1 \2/p' "$CEPH_CONF")
lab_guest_define r --disk-xml "<disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='$SECRET'/></auth><source protocol='rbd' name='$VMSH_CEPH_POOL/$IMG'><host name='$1' port='$2'/></source><target dev='vdb' bus='virtio'/></disk>"
G=$(lab_domname r)
LRAW=$VMSH_CEPH_POOL/$IMG # what jobs names as the copy's target
vsh --json backup "$G"
RID=$(jq -r .backup <<<"$OUT")
check "backup of $G (vdb an RBD image), shut off" test "$RC" = 0 -a "$RID" != null
vsh extract "$RID" "$G/disk/vdb" "$LAB_WORK/rbd.ref"
check "extract of the RBD disk" test "$RC" = 0
qemu-io -f raw -c 'write -P 0xee 0 2M' -c 'write -P 0x11 29M 2M' "$R/$IMG:conf=$CEPH_CONF" >/dev/null ||
    fail "cannot overwrite $IMG"
"$VMSHADOW" -v restore --instant --force --bandwidth 1M "$RID" "$G" >"$LAB_WORK/r4.out" 2>"$LAB_WORK/r4.err" &
BG=$!
wait_agent || { cat "$LAB_WORK/r4.err" >&2; fail "the VM on RBD runs at once and its agent answers"; }
pass "the VM on RBD runs at once and its agent answers"
check "during the copy: jobs shows vdb copying onto $LRAW" wait_copying
OVL=$(vdb_job | jq -r .overlay)
check "vdb runs on a qcow2 overlay beside the journal (the state directory)" on_overlay
OFF=$((20 * MiB + 512))
gexec_r() { lab_gexec r "$1"; }
gexec_r "printf 'written-in-copy!' | dd of=/dev/vdb bs=16 seek=$((OFF / 16)) conv=notrunc,fsync 2>/dev/null" ||
    fail "guest write during the copy onto RBD"
check "the copy onto RBD is still running after the write" still_copying
speed_up "$BG"
wait "$BG"; RC=$?; BG=
grep -v '^vmshadow: debug' "$LAB_WORK/r4.err" >&2
check "restore --instant onto RBD ends with exit 0" test "$RC" = 0
rbd_done 'written-in-copy!' "$OFF" "$R/$IMG:conf=$CEPH_CONF"
rbd_kill_cases

# ---- 5. onto pool volumes: a dir pool's file, a disk pool's partition
PD=$LAB_ID-idir PB=$LAB_ID-idisk
lab_pool_dir "$PD" "$LAB_WORK/pool"
truncate -s 32M "$LAB_WORK/pool/v.raw"
qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0x33 24M 64k' "$LAB_WORK/pool/v.raw" >/dev/null ||
    fail "cannot write test data to the dir pool's volume"
lab_virsh pool-refresh "$PD" >/dev/null || fail "pool-refresh $PD"
truncate -s 40M "$LAB_WORK/part.img"
parted -s "$LAB_WORK/part.img" mklabel msdos mkpart primary 1MiB 39MiB || fail "parted"
LP=$(losetup -f --show -P "$LAB_WORK/part.img") || fail "losetup -P"
LAB_LOOPS+=("$LP")
[ -b "${LP}p1" ] || partx -a "$LP" 2>/dev/null
[ -b "${LP}p1" ] || fail "no partition device ${LP}p1"
PART=${LP}p1 PVOL=$(basename "$LP")p1
lab_virsh pool-define-as "$PB" disk --source-dev "$LP" --target /dev >/dev/null || fail "define the disk pool"
LAB_POOLS=("$PB" "${LAB_POOLS[@]}") # destroyed before its loop device goes
lab_virsh pool-start "$PB" >/dev/null || fail "start the disk pool on $LP"
check "the disk pool's volume is the partition, a block device" \
    bash -c "virsh -q -c $LAB_URI vol-list '$PB' --details | grep -q '^ *$PVOL *$PART *block'"
qemu-io -f raw -c 'write -P 0xa5 0 1M' -c 'write -P 0x77 30M 64k' "$PART" >/dev/null ||
    fail "cannot write test data to $PART"
vdisk() { echo "<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='$1' volume='$2'/><target dev='$3' bus='virtio'/></disk>"; }
lab_guest_define v --disk-xml "$(vdisk "$PD" v.raw vdb)$(vdisk "$PB" "$PVOL" vdc)"
G=$(lab_domname v)
vsh --json backup "$G"
VID=$(jq -r .backup <<<"$OUT")
check "backup of $G (vdb a dir pool's volume, vdc a disk pool's), shut off" test "$RC" = 0 -a "$VID" != null
vsh extract "$VID" "$G/disk/vdb" "$LAB_WORK/vvdb.ref" && vsh extract "$VID" "$G/disk/vdc" "$LAB_WORK/vvdc.ref"
check "extract of both volumes" test "$RC" = 0
check "  the backup holds the partition's bytes" cmp -s -n $((38 << 20)) "$LAB_WORK/vvdc.ref" "$PART"
dd if=/dev/urandom of="$LAB_WORK/pool/v.raw" bs=1M count=32 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$PART" bs=1M count=38 conv=notrunc,fsync status=none
"$VMSHADOW" -v restore --instant --force --bandwidth 1M "$VID" "$G" >"$LAB_WORK/r5.out" 2>"$LAB_WORK/r5.err" &
BG=$!
wait_agent || { cat "$LAB_WORK/r5.err" >&2; fail "the VM on pool volumes runs at once and its agent answers"; }
pass "the VM on pool volumes runs at once and its agent answers"
disk_job() { jobs_json | jq -c --arg d "$1" '.jobs[0].disks[]? | select(.disk == $d)'; }
wait_job() { # wait_job DISK JQ-CONDITION
    for _ in $(seq 600); do
        local o; o=$(disk_job "$1")
        [ -n "$o" ] && jqe "$2" <<<"$o" && return 0
        sleep 0.1
    done
    return 1
}
# a VM's pulls run one at a time, vda's (the guest's own disk) first, vdb's
# waiting (QEMU 7.2 crashed when a pull ended beside another pull); vda's is
# lifted so that vdb's starts
one_pull_at_a_time() {
    local o p
    for _ in $(seq 600); do
        o=$(disk_job vda) p=$(disk_job vdb)
        if [ -n "$o" ] && jqe .pulling <<<"$o"; then
            jqe '.pulling | not' <<<"$p" || return 1
            virsh -q -c "$LAB_URI" blockjob "$G" vda --bandwidth 0 >/dev/null 2>&1
            return 0
        fi
        sleep 0.1
    done
    return 1
}
check "one pull at a time: vda's runs, vdb's waits" one_pull_at_a_time
check "during the restore: jobs shows vdb pulled into the volume's file" \
    wait_job vdb "(.overlay == \"$LAB_WORK/pool/v.raw\") and .copy_to == null and .pulling and (.done | not)"
check "  and vdc copying onto the disk pool's partition" \
    wait_job vdc "(.copy_to == \"$PART\") and .pulling and .bytes_done > 0"
OFF=$((20 * MiB + 512))
lab_gexec v "printf 'written-in-vol-1' | dd of=/dev/vdb bs=16 seek=$((OFF / 16)) conv=notrunc,fsync 2>/dev/null && printf 'written-in-vol-2' | dd of=/dev/vdc bs=16 seek=$((OFF / 16)) conv=notrunc,fsync 2>/dev/null" ||
    fail "guest writes to the volumes during the restore"
both_moving() { local o p; o=$(disk_job vdb); p=$(disk_job vdc); [ -n "$o" ] && [ -n "$p" ] && jqe .pulling <<<"$o" && jqe .pulling <<<"$p"; }
check "the moves are still running after the guest's writes" both_moving
# then unthrottled until the command ends (the copy restarts nothing)
while kill -0 "$BG" 2>/dev/null; do
    for d in vda vdb vdc; do virsh -q -c "$LAB_URI" blockjob "$G" $d --bandwidth 0 >/dev/null 2>&1; done
    sleep 0.2
done
wait "$BG"; RC=$?; BG=
grep -v '^vmshadow: debug' "$LAB_WORK/r5.err" >&2
check "restore --instant onto pool volumes ends with exit 0" test "$RC" = 0
X=$(virsh -q -c "$LAB_URI" dumpxml --inactive "$G")
names_volumes() {
    grep -q "<source pool='$PD' volume='v.raw'/>" <<<"$X" && grep -q "<source pool='$PB' volume='$PVOL'/>" <<<"$X" &&
        ! grep -q -e '.overlay' -e rerror_policy <<<"$X"
}
check "the definition names both volumes (pool and volume)" names_volumes
check "the VM runs on the partition" bash -c "virsh -q -c $LAB_URI domblklist '$G' | grep -q '^ *vdc *$PART *\$'"
check "no job, no server, no overlay, no journal left" nothing_left
check "nothing beside the volume's file" test -z "$(ls -A "$LAB_WORK/pool" | grep -v '^v.raw$')"
lab_virsh destroy "$G" >/dev/null
lab_wait_off v
check "vdb's volume file has no backing file left" bash -c "! qemu-img info -U '$LAB_WORK/pool/v.raw' | grep -q 'backing file'"
cp "$LAB_WORK/vvdb.ref" "$LAB_WORK/vvdb.exp"
printf 'written-in-vol-1' | dd of="$LAB_WORK/vvdb.exp" bs=16 seek=$((OFF / 16)) conv=notrunc status=none
cp "$LAB_WORK/vvdc.ref" "$LAB_WORK/vvdc.exp"
printf 'written-in-vol-2' | dd of="$LAB_WORK/vvdc.exp" bs=16 seek=$((OFF / 16)) conv=notrunc status=none
check "the dir pool's volume holds the backup's bytes plus the guest's write" \
    qemu-img compare -q -U -F raw "$LAB_WORK/pool/v.raw" "$LAB_WORK/vvdb.exp"
check "the partition holds the backup's bytes plus the guest's write" \
    qemu-img compare -q -U -f raw -F raw "$PART" "$LAB_WORK/vvdc.exp"
e2e_done
