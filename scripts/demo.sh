#!/bin/bash
# demo.sh - vmshadow's main job on a built-in demo, from a fresh Debian 12:
# installs what is missing, builds vmshadow, starts a libvirt daemon if none
# runs, boots two tiny guests (one with a guest agent, one without), and runs
# vmshadow against them. Everything it made is removed at the end
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
lab_guest_define web --cmdline lab.ticker=1
lab_guest_define legacy --no-agent
lab_guest_start web
lab_guest_start legacy
lab_gexec web 'echo "order 1001: 3 widgets" > /mnt/data/orders.txt; sync'

run vms
echo
echo "The demo VMs are $(lab_domname web) and $(lab_domname legacy); work dir $LAB_WORK."
