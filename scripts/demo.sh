#!/bin/bash
# demo.sh - vmshadow's main job on a built-in demo, from a fresh Debian 12:
# installs what is missing, builds vmshadow, starts a libvirt daemon if none
# runs, boots two tiny guests (one with a guest agent, one without), backs
# them up as one snapshot set, destroys one and restores it, and shows it
# running with its data. Everything it made is removed at the end
# (DEMO_KEEP=1 keeps the guests and the repository for a look around).
# VMSHADOW=PATH uses that binary and skips the install and the build (the
# end-to-end test tests/e2e/t-demo.sh runs the demo so). Exits 0 only when
# the restored VM runs and holds the data of the backup.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "demo.sh: the demo drives qemu:///system: run as root (sudo $0)" >&2; exit 2; }
if [ -z "${VMSHADOW:-}" ]; then
    scripts/install-deps.sh || exit 1
    echo "== building vmshadow"
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && ninja -C build >/dev/null || exit 1
    VMSHADOW=$top/build/src/vmshadow
fi
[ -x "$VMSHADOW" ] || { echo "demo.sh: $VMSHADOW is not an executable" >&2; exit 1; }

. tests/lab/lab.sh
LAB_KEEP=${DEMO_KEEP:-0}
lab_init
[ "${DEMO_KEEP:-0}" = 1 ] && trap - EXIT
export VMSHADOW_REPO=$LAB_WORK/repo VMSHADOW_STATE_DIR=$LAB_WORK/state
export VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"; : > "$VMSHADOW_CONFIG"

run() { echo; echo "\$ vmshadow $*"; "$VMSHADOW" "$@"; }

echo "== booting two tiny guests (TCG): 'web' with a guest agent, 'legacy' without"
lab_guest_define web
lab_guest_define legacy --no-agent
lab_guest_start web
lab_guest_start legacy
WEB=$(lab_domname web); LEGACY=$(lab_domname legacy)
lab_gexec web 'echo "order 1001: 3 widgets" > /mnt/data/orders.txt; sync'
echo "web's data disk holds: $(lab_gexec web 'cat /mnt/data/orders.txt')"

run vms
run init || exit 1
echo
echo "== one snapshot set over both VMs: 'web' by the guest method (frozen through its"
echo "   agent, no downtime), 'legacy' from a saved state (its memory is in the backup)"
run backup "$WEB" "$LEGACY" || exit 1
run list
lab_gexec web 'echo "order 1002: 1 gadget (after the backup)" >> /mnt/data/orders.txt; sync'

echo
echo "== disaster: 'web' is destroyed, deleted, and its disk is gone"
# libvirt keeps a VM with checkpoints (vmshadow's incremental backups leave
# one) unless told to drop their metadata too
virsh -q destroy "$WEB" >/dev/null &&
    virsh -q undefine "$WEB" --checkpoints-metadata >/dev/null &&
    rm -f "$(lab_disk web)" || { echo "demo.sh: could not stage the disaster" >&2; exit 1; }
run restore latest "$WEB" || exit 1
virsh -q start "$WEB" >/dev/null && lab_wait_ready web
echo
echo "web is $(lab_state web) again; its data disk holds:"
data=$(lab_gexec web 'cat /mnt/data/orders.txt')
echo "$data"
[ "$data" = "order 1001: 3 widgets" ] ||
    { echo "demo.sh: FAIL: the restored disk does not hold the backup's data" >&2; exit 1; }
run verify || exit 1
echo
echo "The demo VMs are $WEB and $LEGACY; work dir $LAB_WORK."
if [ "${DEMO_KEEP:-0}" = 1 ]; then
    echo "DEMO_KEEP=1: they are kept; remove them with virsh destroy/undefine."
fi
exit 0
