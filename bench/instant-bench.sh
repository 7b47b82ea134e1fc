#!/bin/bash
# instant-bench.sh - time until a restored VM's guest agent answers: instant
# restore (`restore --instant`: the VM runs at once on overlays over its
# served backup) against a full restore (`restore --force`, then `virsh
# start`), for data disks of 1 GiB and 8 GiB, in one run (issue 23,
# "Benchmark"; targets: instant flat in disk size, and at most 10 % of the
# full restore at 8 GiB).
#
# The guest is the lab's tiny guest (tests/lab: direct kernel boot, the agent
# in its initramfs) with one data disk: bench/make_images.py's mix (holes,
# zeros, text, random data) of SIZE bytes whose first 64 MiB are the lab's
# ext4 file system, as qcow2. It is backed up once per size while shut off;
# then each round, sizes and methods interleaved, the VM is destroyed,
# restored by one method and timed from the restore's start until the agent
# answers a guest-ping. After an instant restore the round lets `vmshadow
# recover` finish it (the data moved back, serving stopped; `jobs` empty)
# before the next one, untimed.
#
# The instant restore runs with -v: its debug line "VM ... runs after N ms:
# serve N ms, restore (overlays, definition) N ms, error policy N ms, start
# N ms" gives the breakdown of its time until the VM runs; the rest until
# the agent answers is the guest's boot (and the agent's start).
#
# Usage (root, from the project's root):
#   bench/instant-bench.sh [ROUNDS]   (default 3; VMSHADOW names the binary,
#   SIZES the disk sizes in MiB, default "1024 8192"; a size ending in "w"
#   ("8192w") is a disk fully written, half text, half random, no holes:
#   a full restore's worst case; WORK where the images are kept for
#   re-runs, default /var/tmp/vmshadow-instant-bench; OLD another build's
#   vmshadow (e.g. main's, copied with its nbdkit/ plugin directory):
#   both methods also run with it, interleaved round by round, and the
#   tables get its rows and new / old ratios per round)
# Takes the lab's lock for the whole run (no other test's guests meanwhile).
# Prints a Markdown table; the last line is
#   instant_s_SIZE=... full_s_SIZE=... ratio_SIZE=... for each size.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
VMSHADOW=${VMSHADOW:-$top/build/src/vmshadow}
SIZES=${SIZES:-"1024 8192"}
WORK=${WORK:-/var/tmp/vmshadow-instant-bench}
[ "$(id -u)" = 0 ] || { echo "instant-bench: run as root (qemu:///system)" >&2; exit 2; }
[ -x "$VMSHADOW" ] || { echo "instant-bench: build vmshadow first (ninja -C build)" >&2; exit 2; }
OLD=${OLD:-}
[ -z "$OLD" ] || [ -x "$OLD" ] || { echo "instant-bench: OLD=$OLD is not a program" >&2; exit 2; }
METHODS="full instant"
[ -n "$OLD" ] && METHODS="full instant full-old instant-old"
for t in qemu-img virsh jq bc python3; do
    command -v $t >/dev/null || { echo "instant-bench: $t is needed" >&2; exit 2; }
done
export VMSH_SOURCE_DIR=$top
. "$top/tests/lab/lab.sh"
lab_init
# servers an instant restore left behind when the bench stops early
kill_servers() {
    local p
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "^nbdkit .*--unix $VMSHADOW_RUN_DIR/" && kill "${p#/proc/}"
    done
    return 0
}
trap 'lab_cleanup; kill_servers' EXIT
mkdir -p "$WORK"
export VMSHADOW_REPO=$LAB_WORK/repo VMSHADOW_STATE_DIR=$LAB_WORK/state
export VMSHADOW_RUN_DIR=$LAB_WORK/run VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d
export VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
mkdir -p "$VMSHADOW_WRITERS_DIR"
: >"$VMSHADOW_CONFIG"
"$VMSHADOW" -q init >/dev/null || lab_die "init"

# image SIZE_MIB[w] -> path of its qcow2 (built once, kept in WORK)
image() {
    local mb=${1%w} full=0 img=$WORK/data-$1M.qcow2
    [ "$1" != "$mb" ] && full=1
    if [ ! -f "$img" ]; then
        local d=$WORK/build.$$
        mkdir -p "$d"
        FULL=$full OUTDIR=$d SIZE=$((mb << 20)) CHANGE=0 python3 "$top/bench/make_images.py" >/dev/null ||
            lab_die "make_images.py"
        dd if="$LAB_GUEST/data.raw" of="$d/day1.raw" bs=1M conv=notrunc status=none
        qemu-img convert -f raw -O qcow2 "$d/day1.raw" "$img.new" && mv "$img.new" "$img" ||
            lab_die "qemu-img convert"
        rm -rf "$d"
    fi
    echo "$img"
}

agent_ok() { lab_virsh qemu-agent-command "$1" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1; }
# seconds from $2 (date +%s.%N) until the agent of $1 answers
wait_agent() {
    for _ in $(seq 1800); do
        agent_ok "$1" && { echo "$(date +%s.%N) - $2" | bc; return 0; }
        sleep 0.05
    done
    return 1
}
# until no process holds a deleted file of the lab (a restore's replaced
# disk image, which the kernel frees after the restore: issue 23), then
# sync: the next round's timing must not pay the previous one's freeing
settle() {
    local fd
    for _ in $(seq 300); do
        for fd in /proc/[0-9]*/fd/*; do
            [[ "$(readlink "$fd" 2>/dev/null)" == "$LAB_WORK"/*" (deleted)" ]] && { sleep 0.1; continue 2; }
        done
        break
    done
    sync
}
stop_vm() {
    lab_virsh destroy "$1" >/dev/null 2>&1
    for _ in $(seq 100); do [ "$(lab_virsh domstate "$1" | head -n 1)" = "shut off" ] && return 0; sleep 0.1; done
}
# after --no-wait, `recover` finishes the instant restore (docs/cli.md):
# it waits for the pull, stops serving, gives the definition back
wait_moved() {
    "$VMSHADOW" -q recover >/dev/null 2>"$LAB_WORK/recover.err" || { cat "$LAB_WORK/recover.err" >&2; return 1; }
    [ "$("$VMSHADOW" --json jobs 2>/dev/null | jq '.jobs | length')" = 0 ]
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }

declare -A ID DOM T RATIO PART
for mb in $SIZES; do
    n=g$mb
    lab_guest_define "$n"
    DOM[$mb]=$(lab_domname "$n")
    cp --sparse=always "$(image "$mb")" "$(lab_disk "$n")" || lab_die "copy of the $mb MiB image"
    ID[$mb]=$("$VMSHADOW" --json backup "${DOM[$mb]}" 2>"$LAB_WORK/backup.err" | jq -r .backup)
    [ -n "${ID[$mb]}" ] && [ "${ID[$mb]}" != null ] || { cat "$LAB_WORK/backup.err" >&2; lab_die "backup of the $mb MiB VM"; }
done

for r in $(seq 1 "$ROUNDS"); do
    for mb in $SIZES; do
        # rotate which method goes first
        set -- $METHODS
        shift $(((r - 1) % $#))
        order="$* $(sed "s/ *$*\$//" <<<"$METHODS")"
        for m in $order; do
            d=${DOM[$mb]}
            bin=$VMSHADOW
            [ "${m%-old}" != "$m" ] && bin=$OLD
            stop_vm "$d"
            settle
            t0=$(date +%s.%N)
            if [ "${m%-old}" = full ]; then
                "$bin" -q restore --force "${ID[$mb]}" "$d" >/dev/null 2>"$LAB_WORK/r.err" &&
                    lab_virsh start "$d" >/dev/null || { cat "$LAB_WORK/r.err" >&2; lab_die "full restore of $d"; }
            else
                "$bin" -v restore --instant --no-wait --force "${ID[$mb]}" "$d" >/dev/null 2>"$LAB_WORK/r.err" ||
                    { cat "$LAB_WORK/r.err" >&2; lab_die "instant restore of $d"; }
            fi
            s=$(wait_agent "$d" "$t0") || lab_die "the agent of $d did not answer after the $m restore"
            T[$m.$mb]+="$s "
            echo "round $r: $m restore of the $mb MiB VM: agent after $s s" >&2
            if [ "${m%-old}" = instant ]; then
                # "runs after T ms: serve A ms, restore (...) B ms, error policy C ms, start D ms"
                line=$(grep -o 'runs after [0-9]* ms: serve [0-9]* ms, restore (overlays, definition) [0-9]* ms, error policy [0-9]* ms, start [0-9]* ms' "$LAB_WORK/r.err")
                read -r run serve rest pol start < <(grep -o '[0-9]\+ ms' <<<"$line" | tr -d ' ms' | tr '\n' ' ')
                [ -n "$start" ] || lab_die "no breakdown in restore --instant -v's output"
                boot=$(echo "scale=3; $s - $run / 1000" | bc)
                k=$mb${m#instant}
                PART[serve.$k]+="$serve "; PART[restore.$k]+="$rest "; PART[policy.$k]+="$pol "
                PART[start.$k]+="$start "; PART[boot.$k]+="$boot "
                echo "  serve $serve ms, restore $rest ms, error policy $pol ms, start $start ms, boot $boot s" >&2
            fi
            if [ "${m%-old}" = instant ]; then
                wait_moved || lab_die "the instant restore of $d did not complete"
            fi
        done
        # this round's ratio (both methods ran side by side: the machine's
        # load of the moment weighs on both)
        set -- ${T[full.$mb]}; f=${!#}
        set -- ${T[instant.$mb]}; i=${!#}
        RATIO[$mb]+="$(echo "scale=3; $i / $f" | bc) "
        if [ -n "$OLD" ]; then
            set -- ${T[full-old.$mb]}; fo=${!#}
            set -- ${T[instant-old.$mb]}; io=${!#}
            RATIO[full.$mb]+="$(echo "scale=3; $f / $fo" | bc) "
            RATIO[instant.$mb]+="$(echo "scale=3; $i / $io" | bc) "
        fi
    done
done
for mb in $SIZES; do stop_vm "${DOM[$mb]}"; done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
rng() { tr ' ' '\n' <<<"$1" | grep . | range; }
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
echo
echo "| data disk | full restore + start, s (median, range) | instant restore, s (median, range) | instant / full per round (median, range) |"
echo "| --- | --- | --- | --- |"
last=""
for mb in $SIZES; do
    f=$(med "${T[full.$mb]}")
    i=$(med "${T[instant.$mb]}")
    ratio=$(med "${RATIO[$mb]}")
    echo "| ${mb%w} MiB$([ "${mb%w}" != "$mb" ] && echo ', fully written') | $f ($(rng "${T[full.$mb]}")) | $i ($(rng "${T[instant.$mb]}")) | $ratio ($(rng "${RATIO[$mb]}")) |"
    last+="instant_s_$mb=$i full_s_$mb=$f ratio_$mb=$ratio "
done
echo
echo "Instant restore until the agent answers, medians: serve, restore (overlays and definition), error policy (a second define), start (libvirt, QEMU up), boot (the rest: the guest's kernel, init, agent)"
echo
echo "| data disk | serve, ms | restore, ms | error policy, ms | start, ms | boot, s |"
echo "| --- | --- | --- | --- | --- | --- |"
for mb in $SIZES; do
    echo "| $mb | $(med "${PART[serve.$mb]}") | $(med "${PART[restore.$mb]}") | $(med "${PART[policy.$mb]}") | $(med "${PART[start.$mb]}") | $(med "${PART[boot.$mb]}") |"
done
if [ -n "$OLD" ]; then
    echo
    echo "OLD ($OLD) against this build, same rounds:"
    echo
    echo "| data disk | full, old, s | full new / old per round | instant, old, s | instant new / old per round | old instant's restore step, ms |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for mb in $SIZES; do
        echo "| $mb | $(med "${T[full-old.$mb]}") ($(rng "${T[full-old.$mb]}")) | $(med "${RATIO[full.$mb]}") ($(rng "${RATIO[full.$mb]}")) | $(med "${T[instant-old.$mb]}") ($(rng "${T[instant-old.$mb]}")) | $(med "${RATIO[instant.$mb]}") ($(rng "${RATIO[instant.$mb]}")) | $(med "${PART[restore.$mb-old]}") |"
    done
fi
echo
echo "$last"
