#!/bin/bash
# vm-bench.sh - what a backup costs the VMs (issue 5), against bare virsh on
# the same guest in the same run:
#   freeze window: `vmshadow backup --method guest` (freeze_window_ms, first
#     freeze to last thaw) vs `virsh domfsfreeze; virsh backup-begin (pull);
#     virsh domfsthaw`, timed from before the freeze to after the thaw;
#     target <= 1.5x;
#   saved-state downtime: `vmshadow backup --method saved-state` (downtime_ms,
#     save to resume) vs `virsh save; virsh restore`; target <= 1.2x.
# Usage (root): bench/vm-bench.sh [ROUNDS]   (default 5; medians reported)
# Needs a built vmshadow (build/src/vmshadow, or $VMSHADOW).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-5}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
[ -x "$VMSHADOW" ] || { echo "vm-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
. "$top/tests/lab/lab.sh"
lab_init
export VMSHADOW_REPO=$LAB_WORK/repo VMSHADOW_STATE_DIR=$LAB_WORK/state
export VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"; : > "$VMSHADOW_CONFIG"
"$VMSHADOW" -q init >/dev/null || exit 1

lab_guest_define g
lab_guest_start g
D=$(lab_domname g)
ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mkdir -p "$LAB_WORK/nbd"; chmod 0777 "$LAB_WORK/nbd"

: > "$LAB_WORK/fw.vmshadow"; : > "$LAB_WORK/fw.virsh"; : > "$LAB_WORK/dt.vmshadow"; : > "$LAB_WORK/dt.virsh"
vmshadow_guest() {
    out=$("$VMSHADOW" --json backup --method guest "$D") || { echo "vm-bench: vmshadow backup failed" >&2; exit 1; }
    jq -r .freeze_window_ms <<<"$out" >> "$LAB_WORK/fw.vmshadow"
}
virsh_guest() { # freeze, start a pull backup (the point-in-time copy), thaw
    cat > "$LAB_WORK/pull.xml" <<X
<domainbackup mode='pull'><server transport='unix' socket='$LAB_WORK/nbd/b.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='$LAB_WORK/scratch.qcow2'/></disk></disks></domainbackup>
X
    local t0 t1
    t0=$(ms)
    lab_virsh domfsfreeze "$D" >/dev/null && lab_virsh backup-begin "$D" "$LAB_WORK/pull.xml" >/dev/null
    lab_virsh domfsthaw "$D" >/dev/null
    t1=$(ms)
    echo $((t1 - t0)) >> "$LAB_WORK/fw.virsh"
    lab_virsh domjobabort "$D" >/dev/null 2>&1; rm -f "$LAB_WORK/scratch.qcow2"
}
vmshadow_saved() {
    out=$("$VMSHADOW" --json backup --method saved-state "$D") || { echo "vm-bench: vmshadow backup failed" >&2; exit 1; }
    jq -r '.vms[0].downtime_ms' <<<"$out" >> "$LAB_WORK/dt.vmshadow"
}
virsh_saved() { # save, restore
    local t0 t1
    t0=$(ms)
    lab_virsh save "$D" "$LAB_WORK/state.sav" >/dev/null && lab_virsh restore "$LAB_WORK/state.sav" >/dev/null
    t1=$(ms)
    echo $((t1 - t0)) >> "$LAB_WORK/dt.virsh"
    rm -f "$LAB_WORK/state.sav"
}
# Rounds alternate which tool goes first, so that neither always inherits
# the other's page cache and guest state.
for i in $(seq "$ROUNDS"); do
    if [ $((i % 2)) = 1 ]; then
        vmshadow_guest; virsh_guest; vmshadow_saved; virsh_saved
    else
        virsh_guest; vmshadow_guest; virsh_saved; vmshadow_saved
    fi
    lab_wait_ready g
done
fv=$(median < "$LAB_WORK/fw.vmshadow"); fb=$(median < "$LAB_WORK/fw.virsh")
dv=$(median < "$LAB_WORK/dt.vmshadow"); db=$(median < "$LAB_WORK/dt.virsh")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "vm-bench: $ROUNDS rounds, TCG guest of 128 MiB, medians (ms)"
printf '%-34s %10s %10s %8s %8s\n' "" vmshadow "bare virsh" ratio target
printf '%-34s %10s %10s %8s %8s\n' "guest method: freeze window" "$fv" "$fb" "$(ratio "$fv" "$fb")" "<= 1.5"
printf '%-34s %10s %10s %8s %8s\n' "saved-state: VM downtime" "$dv" "$db" "$(ratio "$dv" "$db")" "<= 1.2"
echo "raw: freeze vmshadow [$(tr '\n' ' ' < "$LAB_WORK/fw.vmshadow")] virsh [$(tr '\n' ' ' < "$LAB_WORK/fw.virsh")]"
echo "raw: downtime vmshadow [$(tr '\n' ' ' < "$LAB_WORK/dt.vmshadow")] virsh [$(tr '\n' ' ' < "$LAB_WORK/dt.virsh")]"
