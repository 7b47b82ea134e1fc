#!/bin/bash
# demo.sh - vmshadow's main job on a built-in demo, from a fresh Debian 12:
# installs what is missing, builds vmshadow, starts a libvirt daemon if none
# runs, boots two tiny guests (one with a guest agent, one without), backs
# them up as one snapshot set, destroys one and restores it, and shows it
# running with its data. Everything it made is removed at the end
# (DEMO_KEEP=1 keeps the guests and the repository for a look around).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "demo.sh: the demo drives qemu:///system: run as root (sudo $0)" >&2; exit 2; }
scripts/install-deps.sh || exit 1
echo "== building vmshadow"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && ninja -C build >/dev/null || exit 1
VMSHADOW=$top/build/src/vmshadow

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
virsh -q destroy "$WEB" >/dev/null; virsh -q undefine "$WEB" >/dev/null; rm -f "$(lab_disk web)"
run restore latest "$WEB" || exit 1
virsh -q start "$WEB" >/dev/null && lab_wait_ready web
echo
echo "web is $(lab_state web) again; its data disk holds:"
lab_gexec web 'cat /mnt/data/orders.txt'
run verify
echo
echo "The demo VMs are $WEB and $LEGACY; work dir $LAB_WORK."
if [ "${DEMO_KEEP:-0}" = 1 ]; then
    echo "DEMO_KEEP=1: they are kept; remove them with virsh destroy/undefine."
fi
exit 0
