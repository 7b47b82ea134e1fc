#!/bin/bash
# Several repositories per VM (issue 26, point 5): one running VM backed up
# alternately into a local repository and a rados:// one, four times (A B A
# B): checkpoints are named per repository ("vmshadow-r<16 hex of the
# repository ID>-<set>") and each repository's backups delete only their
# own, so the third and fourth backups are incremental in both, reading
# about what changed. Before issue 26 each backup deleted the other
# repository's checkpoint and every backup read the whole disk.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
lab_init
e2e_env
U=vmsh-fleetcp-$$-$RANDOM
cp_cleanup() {
    ceph_lab_forget "$U" rados
    ceph_lab_release 2>/dev/null
    lab_cleanup
}
trap cp_cleanup EXIT
ceph_lab_need || fail "cannot start the Ceph lab (tests/lab/ceph.sh)"
unset VMSHADOW_KEY_FILE
LOCAL=$LAB_WORK/repo
RADOS=rados://$VMSH_CEPH_POOL/$U
MiB=$((1024 * 1024))

lab_guest_define g
lab_guest_start g
G=$(lab_domname g)
VMSHADOW_REPO=$LOCAL vsh init
check "init local" test "$RC" = 0
VMSHADOW_REPO=$RADOS vsh init
check "init rados" test "$RC" = 0
lab_gexec g 'dd if=/dev/urandom of=/mnt/data/big bs=1M count=24 2>/dev/null; sync' ||
    fail "guest write"

disk() { jq -e --arg v "$G" '.vms[] | select(.name == $v) | .disks[] | select(.name == "vda")' <<<"$OUT"; }
n=0
for repo in "$LOCAL" "$RADOS" "$LOCAL" "$RADOS"; do
    n=$((n + 1))
    # 1 MiB changes between backups
    lab_gexec g "dd if=/dev/urandom of=/mnt/data/big bs=1M count=1 seek=$((n * 3)) conv=notrunc 2>/dev/null; sync" ||
        fail "guest rewrite $n"
    VMSHADOW_REPO=$repo vsh --json backup "$G"
    check "backup $n into $repo" test "$RC" = 0
    read=$(disk | jq -r .read)
    bytes=$(disk | jq -r .bytes_read)
    why=$(disk | jq -r .reason)
    echo "  backup $n ($repo): $read, $bytes bytes read ($why)"
    if [ $n -le 2 ]; then
        check "backup $n, the first into its repository, reads in full" test "$read" = full
    else
        check "backup $n is incremental in its repository ($why)" test "$read" = incremental
        check "backup $n read about what changed ($bytes bytes, 2 MiB written since)" \
            test "$bytes" -le $((8 * MiB))
    fi
    cps=$(lab_virsh checkpoint-list "$G" --name | tr -d ' ' | grep .)
    check "after backup $n: one checkpoint per repository used ($(echo $cps))" \
        test "$(grep -c . <<<"$cps")" = "$([ $n = 1 ] && echo 1 || echo 2)"
done
for repo in "$LOCAL" "$RADOS"; do
    VMSHADOW_REPO=$repo vsh verify
    check "verify $repo" test "$RC" = 0
done
# the last backups of both hold the same disk as the live one (read-only now)
lab_gexec g 'sync; mount -o remount,ro /mnt/data' || fail "remount ro"
for repo in "$LOCAL" "$RADOS"; do
    VMSHADOW_REPO=$repo vsh --json backup "$G"
    check "a fifth backup into $repo is incremental" test "$RC" = 0 -a "$(disk | jq -r .read)" = incremental
    B=$(jq -r .backup <<<"$OUT")
    VMSHADOW_REPO=$repo vsh extract "$B" "$G/disk/vda" "$LAB_WORK/x.raw"
    check "extract from $repo" test "$RC" = 0
    qemu-img convert -U -f qcow2 -O raw "$(lab_disk g)" "$LAB_WORK/live.raw"
    check "the incremental in $repo is byte-identical to the live disk" cmp -s "$LAB_WORK/x.raw" "$LAB_WORK/live.raw"
    rm -f "$LAB_WORK/x.raw" "$LAB_WORK/live.raw"
done
echo "1..$E2E_CHECKS"
