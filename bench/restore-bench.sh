#!/bin/bash
# restore-bench.sh - restoring a VM with a 2 GiB qcow2 data disk (issue 27
# point 3 and "Done when"), in one run, ROUNDS rounds each (median and
# min-max):
#   vmshadow restore (in place, --force): the disk written once, straight as
#     qcow2 (vmshadow writes the image itself: docs/formats/qcow2-restore.md),
#     synced before the VM is defined;
#   the same through a private qemu-nbd (VMSHADOW_SINK_QEMU_NBD=1: the path
#     before, and still the one of other formats), for a before/after;
#   vmshadow extract of the same disk (a sparse raw file: the repository's
#     read and write speed, the bound the restore is measured against);
#   virtnbdrestore (Debian's virtnbdbackup) of a virtnbdbackup of the VM;
#   restic restore of the same qcow2 image file.
# Each restore is checked identical to the source (qemu-img compare / cmp).
# Times are the commands' wall times; "+sync" adds the `sync` after each
# (vmshadow restore syncs by itself; the others leave dirty pages behind).
# The tools' order rotates from round to round; the ratios are the medians
# of each round's own ratios, with their spread (a shared machine's load
# moves between rounds more than within one).
# The image: bench/make_images.py's mix (runs of holes, written zeros, text
# of this system's files, random data), converted to qcow2.
#
# Usage (root, from the project's root):
#   bench/restore-bench.sh [ROUNDS]   (default 5; VMSHADOW names the binary,
#   WORK the scratch directory, default /var/tmp/vmshadow-restore-bench,
#   SIZE the disk size, default 2 GiB; OLD_VMSHADOW another build's vmshadow
#   adds "vmshadow_restore_old", its restore of the same backup, for a
#   before/after in the same run; TOOLS="vmshadow_restore ..." runs only
#   those tools, e.g. TOOLS="vmshadow_restore vmshadow_restore_old")
# Installs virtnbdbackup from the distribution's mirror when missing (this
# bench's own install step; CI does not run it). Everything it defines or
# creates is removed at exit, except the source images (kept for re-runs).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-5}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
WORK=${WORK:-/var/tmp/vmshadow-restore-bench}
SIZE=${SIZE:-2147483648}
[ "$(id -u)" = 0 ] || { echo "restore-bench: run as root (qemu:///system)" >&2; exit 2; }
[ -x "$VMSHADOW" ] || { echo "restore-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
if ! command -v virtnbdrestore >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q virtnbdbackup >/dev/null ||
        { echo "restore-bench: cannot install virtnbdbackup" >&2; exit 2; }
fi
for t in restic qemu-img virsh jq; do
    command -v $t >/dev/null || { echo "restore-bench: $t is needed" >&2; exit 2; }
done

DOM=vmsh-rbench-$$
RUN=$WORK/run.$$
mkdir -p "$WORK/img" "$RUN"
cleanup() {
    virsh -q -c qemu:///system undefine "$DOM" >/dev/null 2>&1
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the source image, once
if [ ! -f "$WORK/img/data.qcow2" ] || [ "$(cat "$WORK/img/size" 2>/dev/null)" != "$SIZE" ]; then
    rm -f "$WORK/img/"*
    OUTDIR=$WORK/img SIZE=$SIZE CHANGE=0 python3 "$top/bench/make_images.py" >/dev/null || exit 1
    qemu-img convert -f raw -O qcow2 "$WORK/img/day1.raw" "$WORK/img/data.qcow2" || exit 1
    rm -f "$WORK/img/day2.raw"
    echo "$SIZE" > "$WORK/img/size"
fi
cp --sparse=always "$WORK/img/data.qcow2" "$RUN/data.qcow2"
cat > "$RUN/dom.xml" <<XML
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$RUN/data.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
XML
virsh -q -c qemu:///system define "$RUN/dom.xml" >/dev/null || exit 1

OLD_VMSHADOW=${OLD_VMSHADOW:-}
if [ -n "${TOOLS:-}" ]; then
    read -r -a TOOLS <<<"$TOOLS"
else
    TOOLS=(vmshadow_restore vmshadow_restore_nbd vmshadow_extract virtnbdrestore restic_restore)
    [ -n "$OLD_VMSHADOW" ] && TOOLS+=(vmshadow_restore_old)
fi
has() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

export VMSHADOW_REPO=$RUN/repo VMSHADOW_STATE_DIR=$RUN/state
export VMSHADOW_WRITERS_DIR=$RUN/writers.d VMSHADOW_CONFIG=$RUN/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"; : > "$VMSHADOW_CONFIG"
"$VMSHADOW" -q init >/dev/null || exit 1
ID=$("$VMSHADOW" backup "$DOM") || { echo "restore-bench: vmshadow backup failed" >&2; exit 1; }
if has virtnbdrestore; then
    virtnbdbackup -q -d "$DOM" -l copy -o "$RUN/vnb" >/dev/null 2>"$RUN/vnb.log" ||
        { echo "restore-bench: virtnbdbackup failed:" >&2; tail -5 "$RUN/vnb.log" >&2; exit 1; }
fi
export RESTIC_REPOSITORY=$RUN/restic RESTIC_PASSWORD=bench
if has restic_restore; then
    restic init -q >/dev/null && restic backup -q "$RUN/data.qcow2" >/dev/null || exit 1
fi

ms() { echo $(( $(date +%s%N) / 1000000 )); }
declare -A T TS C
timed() { # timed NAME command...: appends wall ms, wall+sync ms, CPU ms
    local name=$1; shift
    sync
    local t0; t0=$(ms)
    # user+sys CPU of the command and the children it waited for (qemu-nbd):
    # less disturbed than wall time by the other load of a shared machine
    /usr/bin/time -o "$RUN/cpu" -f "%U %S" bash -c "$*" >/dev/null 2>"$RUN/$name.err" || { echo "restore-bench: $name failed:" >&2; tail -5 "$RUN/$name.err" >&2; exit 1; }
    local t1; t1=$(ms)
    sync
    local t2; t2=$(ms)
    T[$name]+="$((t1 - t0)) "; TS[$name]+="$((t2 - t0)) "
    C[$name]+="$(awk '{printf "%d", ($1 + $2) * 1000}' "$RUN/cpu") "
}
vsh_restore() { "$VMSHADOW" -q restore "$ID" --force; }
vsh_restore_old() { "$OLD_VMSHADOW" -q restore "$ID" --force; }
vsh_restore_nbd() { VMSHADOW_SINK_QEMU_NBD=1 "$VMSHADOW" -q restore "$ID" --force; }
vsh_extract() { "$VMSHADOW" -q extract --force "$ID" "$DOM/disk/vda" "$RUN/extract.raw"; }
vnb_restore() { rm -rf "$RUN/vnr"; virtnbdrestore -i "$RUN/vnb" -o "$RUN/vnr"; }
restic_restore() { rm -rf "$RUN/rr"; restic restore -q latest --target "$RUN/rr"; }
export -f vsh_restore vsh_restore_old vsh_restore_nbd vsh_extract vnb_restore restic_restore
export VMSHADOW OLD_VMSHADOW ID DOM RUN
declare -A FN=([vmshadow_restore]=vsh_restore [vmshadow_restore_nbd]=vsh_restore_nbd
    [vmshadow_extract]=vsh_extract [virtnbdrestore]=vnb_restore [restic_restore]=restic_restore
    [vmshadow_restore_old]=vsh_restore_old)
for i in $(seq "$ROUNDS"); do
    n=${#TOOLS[@]}
    for ((k = 0; k < n; k++)); do
        t=${TOOLS[(k + i - 1) % n]}
        timed "$t" "${FN[$t]}"
    done
    # the in-place restore's image, checked after each round (the last
    # restore of the round may have been either path)
    qemu-img compare -q -f qcow2 -F raw "$RUN/data.qcow2" "$WORK/img/day1.raw" ||
        { echo "restore-bench: vmshadow restore differs (round $i)" >&2; exit 1; }
    qemu-img check -q "$RUN/data.qcow2" || { echo "restore-bench: qemu-img check failed" >&2; exit 1; }
done

# the same bytes everywhere
qemu-img compare -q -f qcow2 -F raw "$RUN/data.qcow2" "$WORK/img/day1.raw" || { echo "restore-bench: vmshadow restore differs" >&2; exit 1; }
[ "$(qemu-img info --output=json "$RUN/data.qcow2" | jq -r .format)" = qcow2 ] || { echo "restore-bench: not qcow2" >&2; exit 1; }
if has vmshadow_extract; then
    cmp -s "$RUN/extract.raw" "$WORK/img/day1.raw" || { echo "restore-bench: extract differs" >&2; exit 1; }
fi
if has virtnbdrestore; then
    vnr=$(find "$RUN/vnr" -type f -name '*data*' ! -name '*.xml' | head -n1)
    qemu-img compare -q -F raw "$vnr" "$WORK/img/day1.raw" || { echo "restore-bench: virtnbdrestore differs ($vnr)" >&2; exit 1; }
fi
if has restic_restore; then
    cmp -s "$RUN/rr$RUN/data.qcow2" "$WORK/img/data.qcow2" || { echo "restore-bench: restic differs" >&2; exit 1; }
fi

stats() { # "median [min-max]" in seconds of a list of ms
    tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f [%.2f-%.2f]", m/1000, a[1]/1000, a[NR]/1000}'
}
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
data=$(du -B1 "$WORK/img/day1.raw" | cut -f1)
echo "restore of a $((SIZE >> 20)) MiB qcow2 disk ($((data >> 20)) MiB allocated), $ROUNDS rounds, $(nproc) CPUs, $(date -u +%FT%TZ)"
echo
echo "| tool | wall s, median [min-max] | wall + sync s | CPU s (user+sys) |"
echo "| --- | ---: | ---: | ---: |"
for n in "${TOOLS[@]}"; do
    echo "| $n | $(stats <<<"${T[$n]}") | $(stats <<<"${TS[$n]}") | $(stats <<<"${C[$n]}") |"
done
# per-round ratios: "median [min-max]" of a/b over the rounds
pr() { # NAME_A NAME_B ARRAY(T|TS)
    local -n arr=$3
    paste <(tr ' ' '\n' <<<"${arr[$1]}" | grep .) <(tr ' ' '\n' <<<"${arr[$2]}" | grep .) |
        awk '{print $1 / $2}' | sort -g |
        awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2fx [%.2f-%.2f]", m, a[1], a[NR]}'
}
echo
echo "per-round ratios, median [min-max] (with sync in parentheses):"
has virtnbdrestore && echo "virtnbdrestore / vmshadow restore: $(pr virtnbdrestore vmshadow_restore T) ($(pr virtnbdrestore vmshadow_restore TS); target >= 3)"
has restic_restore && echo "restic restore / vmshadow restore: $(pr restic_restore vmshadow_restore T) ($(pr restic_restore vmshadow_restore TS); target >= 2)"
has vmshadow_extract && echo "vmshadow restore / extract: $(pr vmshadow_restore vmshadow_extract T) ($(pr vmshadow_restore vmshadow_extract TS); target <= 1.3)"
has vmshadow_restore_nbd && echo "restore through qemu-nbd / restore: $(pr vmshadow_restore_nbd vmshadow_restore T) ($(pr vmshadow_restore_nbd vmshadow_restore TS))"
has vmshadow_restore_old && echo "old build's restore / restore: $(pr vmshadow_restore_old vmshadow_restore T) ($(pr vmshadow_restore_old vmshadow_restore TS)); CPU: $(pr vmshadow_restore_old vmshadow_restore C)"
true
