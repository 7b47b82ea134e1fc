#!/bin/bash
# Clock skew between a host and the repository store (issue 26, point 7;
# docs/formats/gc.md, "Times"), on rados:// and s3:// of the real Ceph lab:
# a host whose whole clock is 10 minutes off (libfaketime shifts every clock
# call of the process, librados's included) is refused by backup and gc
# with "clock skew", writing nothing; the same commands with the true clock
# work. On rados:// an object's mtime is the time the client sends, so
# before issue 26 point 3 the check compared the host with itself and a
# skewed host passed; the OSD's clock is now read through a cls_lock lease.
set -u
# no guest: the lab is shared (lab.sh)
LAB_GUESTS=1
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
lab_init
e2e_env
U=vmsh-fleetclk-$$-$RANDOM
clk_cleanup() {
    ceph_lab_forget "$U"
    ceph_lab_release 2>/dev/null
    lab_cleanup
}
trap clk_cleanup EXIT
command -v faketime >/dev/null || fail "faketime is not installed (scripts/debian-packages.txt)"
ceph_lab_need || fail "cannot start the Ceph lab (tests/lab/ceph.sh)"
unset VMSHADOW_KEY_FILE
# libfaketime is preloaded: an ASan build must not insist on coming first
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
# the default margin (300 s) against a host 600 s off
unset VMSHADOW_STORE_GC_MARGIN_SECONDS
head -c 3M /dev/urandom >"$LAB_WORK/disk.img"

# skewed OFFSET CMD...: CMD with every clock of the process OFFSET off
skewed() { faketime -f "$1" "${@:2}"; }

run_store() {
    local store=$1 repo=$2 off out rc
    VMSHADOW_REPO=$repo vsh init
    check "$store: init" test "$RC" = 0
    for off in +600s -600s; do
        out=$(skewed "$off" "$TOOL" backup "$repo" "vm/disk.img=$LAB_WORK/disk.img" 2>&1)
        rc=$?
        [ $rc != 0 ] && grep -q "clock skew" <<<"$out" ||
            fail "$store: a backup from a host $off off was not refused for clock skew (exit $rc): $out"
        pass "$store: a backup from a host $off off is refused: clock skew"
        out=$(VMSHADOW_REPO=$repo skewed "$off" "$VMSHADOW" gc 2>&1)
        rc=$?
        [ $rc = 1 ] && grep -q "clock skew" <<<"$out" ||
            fail "$store: gc on a host $off off was not refused for clock skew (exit $rc): $out"
        pass "$store: gc on a host $off off is refused (exit 1): clock skew"
    done
    VMSHADOW_REPO=$repo vsh --json list
    check "$store: the refused backups left nothing visible" test "$(jq '.backups | length' <<<"$OUT")" = 0
    "$TOOL" backup "$repo" "vm/disk.img=$LAB_WORK/disk.img" >/dev/null 2>"$LAB_WORK/b.err"
    check "$store: the same backup with the true clock works" test $? = 0
    VMSHADOW_REPO=$repo vsh --json gc
    check "$store: gc with the true clock works, no session left" \
        test "$RC" = 0 -a "$(jq .sessions_live <<<"$OUT")" = 0
    VMSHADOW_REPO=$repo vsh verify
    check "$store: verify" test "$RC" = 0
}

run_store rados "rados://$VMSH_CEPH_POOL/$U"
run_store s3 "s3+http://$VMSH_S3_ENDPOINT/$U/repo"
echo "1..$E2E_CHECKS"
