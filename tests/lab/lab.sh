# lab.sh - the guest lab for vmshadow's end-to-end tests (bash; source it).
#
#   . tests/lab/lab.sh
#   lab_init                        # work dir, libvirt daemon, guest image; cleanup on exit
#   lab_guest_define NAME [opts]    # --no-agent --raw --cmdline "lab.x=1" --block DEV
#                                   # --network NET --bridge BR --mac MAC --paused-boot
#   lab_guest_start NAME            # virsh start + wait until the agent answers (or the
#                                   # kernel printed "LAB: ready" for --no-agent guests)
#   lab_gexec NAME 'shell command'  # run in the guest through the agent; prints stdout
#   lab_disk NAME                   # the data disk's path on the host
#   lab_state NAME / lab_wait_off NAME  # libvirt's state; wait until shut off
#   lab_loop_attach FILE            # a loop device over FILE (prints it); detached at exit
#   lab_pool_dir NAME DIR           # a libvirt 'dir' storage pool; destroyed at exit
#   lab_nbd_serve FILE FMT SOCK     # qemu-nbd serving FILE on a unix socket; stopped at exit
# lab_guest_define also takes --disk-xml '<disk ...>...</disk>' (any extra
# disk or device element, e.g. a pool volume, an RBD or NBD disk, a LUN).
#
# Rules it keeps: domains are type='qemu' (TCG; KVM does not work on these
# machines), names are unique (vmsh-<test>-<pid>-NAME), at most two guests
# run at once (LAB_GUESTS below), everything it made is removed at exit, and a libvirt daemon it
# started is stopped by PID. A daemon that was already running is used as is.
# Environment: VMSH_LAB_DIR (cache and daemon state, default
# /var/tmp/vmshadow-lab), LAB_KEEP=1 keeps the work dir for inspection.
#
# LAB_GUESTS (set by a test before lab_init): how many guests the test runs
# at once. 2 (the default) takes the whole lab: the machine-wide lock
# $LAB_DIR/guests.lock exclusively, on descriptor 9. 1 shares the lab with
# one other one-guest test: the lock shared, plus one of two slot locks
# (slot0.lock, slot1.lock) on descriptor 8, so two such tests run side by
# side (CI's ctest -j2) and still never more than two guests; such a test
# that starts a second guest of its own fails (lab_guest_start). A daemon a
# test starts must not inherit the locks: start it with `8>&- 9>&-`.

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${VMSH_LAB_DIR:-/var/tmp/vmshadow-lab}
LAB_URI=qemu:///system
LAB_GUEST=$LAB_DIR/guest
LAB_RUN=$LAB_DIR/libvirt
LAB_DOMAINS=()
LAB_LOOPS=()
LAB_POOLS=()
LAB_PIDS=()
LAB_STARTED_DAEMON=0
LAB_MAX_RUNNING=2
export LIBVIRT_DEFAULT_URI=$LAB_URI

lab_log() { echo "lab: $*" >&2; }
lab_die() { echo "lab: FAIL: $*" >&2; exit 1; }

lab_virsh() { virsh -q -c "$LAB_URI" "$@"; }

# Starts virtlogd + libvirtd without systemd unless a daemon already answers.
lab_libvirt_up() {
    if virsh -c "$LAB_URI" version >/dev/null 2>&1; then
        return 0
    fi
    command -v libvirtd >/dev/null || lab_die "libvirtd is not installed (run scripts/install-deps.sh)"
    mkdir -p "$LAB_RUN"
    if ! { [ -f "$LAB_RUN/virtlogd.pid" ] && kill -0 "$(cat "$LAB_RUN/virtlogd.pid")" 2>/dev/null; }; then
        LIBVIRT_LOG_OUTPUTS="3:file:$LAB_RUN/virtlogd.log" virtlogd -d -p "$LAB_RUN/virtlogd.pid" 8>&- 9>&- ||
            lab_die "virtlogd did not start"
    fi
    LIBVIRT_LOG_OUTPUTS="3:file:$LAB_RUN/libvirtd.log" libvirtd -d -p "$LAB_RUN/libvirtd.pid" 8>&- 9>&- ||
        lab_die "libvirtd did not start; see $LAB_RUN/libvirtd.log"
    LAB_STARTED_DAEMON=1
    local i
    for i in $(seq 1 300); do
        virsh -c "$LAB_URI" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    lab_die "libvirtd did not answer within 30 s; see $LAB_RUN/libvirtd.log"
}

# Stops the daemons this shell started (by PID), never others.
lab_libvirt_down() {
    [ "$LAB_STARTED_DAEMON" = 1 ] || return 0
    local f pid
    for f in libvirtd virtlogd; do
        if [ -f "$LAB_RUN/$f.pid" ]; then
            pid=$(cat "$LAB_RUN/$f.pid")
            kill "$pid" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$LAB_RUN/$f.pid"
        fi
    done
    LAB_STARTED_DAEMON=0
}

lab_cleanup() {
    local rc=$?
    local d
    for d in "${LAB_DOMAINS[@]}"; do
        lab_virsh destroy "$d" >/dev/null 2>&1
        local why
        why=$(lab_virsh undefine "$d" --managed-save --snapshots-metadata --checkpoints-metadata --nvram 2>&1 >/dev/null) ||
            lab_virsh undefine "$d" >/dev/null 2>&1 ||
            { lab_virsh dominfo "$d" >/dev/null 2>&1 && lab_log "cleanup: cannot undefine $d: $why"; }
    done
    # what the test attached, after the domains that used it (issue 25)
    for d in "${LAB_PIDS[@]}"; do
        kill "$d" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$d" 2>/dev/null || break; sleep 0.1; done
    done
    LAB_PIDS=()
    for d in "${LAB_POOLS[@]}"; do
        lab_virsh pool-destroy "$d" >/dev/null 2>&1
        lab_virsh pool-undefine "$d" >/dev/null 2>&1 ||
            { lab_virsh pool-info "$d" >/dev/null 2>&1 && lab_log "cleanup: cannot undefine pool $d"; }
    done
    LAB_POOLS=()
    for d in "${LAB_LOOPS[@]}"; do
        losetup -d "$d" 2>/dev/null || { losetup "$d" >/dev/null 2>&1 && lab_log "cleanup: cannot detach $d"; }
    done
    LAB_LOOPS=()
    if [ $rc != 0 ] && [ -n "${LAB_WORK:-}" ]; then
        for d in "$LAB_WORK"/*.console.log; do
            [ -f "$d" ] && { echo "--- $d (last lines)" >&2; tail -n 15 "$d" >&2; }
        done
    fi
    if [ -n "${LAB_WORK:-}" ] && [ "${LAB_KEEP:-0}" != 1 ]; then
        rm -rf "$LAB_WORK"
    fi
    lab_libvirt_down
    return $rc
}

# lab_lock: the machine's guest lab for this shell (LAB_GUESTS above).
lab_lock() {
    exec 9>"$LAB_DIR/guests.lock"
    if [ "${LAB_GUESTS:-2}" != 1 ]; then
        flock 9
        return 0
    fi
    flock -s 9
    local s
    while :; do
        for s in 0 1; do
            exec 8>"$LAB_DIR/slot$s.lock"
            flock -n 8 && return 0
            exec 8>&-
        done
        sleep 0.5
    done
}

# lab_init: work dir (readable by QEMU's user), daemon, guest image, exit trap.
lab_init() {
    [ "$(id -u)" = 0 ] || lab_die "the lab needs root (qemu:///system)"
    LAB_TEST=$(basename "${0%.sh}")
    LAB_ID="vmsh-${LAB_TEST#t-}-$$"
    mkdir -p "$LAB_DIR"
    # One lab user at a time on this machine (tests of several checkouts,
    # the demo, benchmarks): each uses at most two guests, and two guests are
    # the most two cores run well. The locks die with the shell.
    lab_lock
    LAB_WORK=$(mktemp -d "$LAB_DIR/work.${LAB_TEST}.XXXXXX")
    chmod 0755 "$LAB_DIR" "$LAB_WORK"
    trap lab_cleanup EXIT
    trap 'exit 130' INT TERM
    # one builder at a time: two one-guest tests start together in CI
    flock "$LAB_DIR/make-guest.lock" "$LAB_SRC/make-guest.sh" "$LAB_GUEST" 8>&- 9>&- ||
        lab_die "cannot build the test guest"
    lab_libvirt_up
}

lab_domname() { echo "$LAB_ID-$1"; }
lab_disk() { echo "$LAB_WORK/$1.data.${2:-qcow2}"; }

# lab_guest_define NAME [--no-agent] [--raw] [--cmdline ARGS] [--block DEV]
#                  [--network NET] [--bridge BR] [--mem MIB] [--tpm]
lab_guest_define() {
    local name=$1; shift
    local agent=1 fmt=qcow2 cmdline="" block="" nets="" mem=128 tpm="" extra_disks=""
    while [ $# -gt 0 ]; do
        case $1 in
        --no-agent) agent=0 ;;
        --raw) fmt=raw ;;
        --cmdline) cmdline="$cmdline $2"; shift ;;
        --block) block=$2; shift ;;
        --network) nets="$nets<interface type='network'><source network='$2'/><model type='virtio'/></interface>"; shift ;;
        --bridge) nets="$nets<interface type='bridge'><source bridge='$2'/><model type='virtio'/></interface>"; shift ;;
        --mem) mem=$2; shift ;;
        --tpm) tpm="<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>" ;;
        --disk-xml) extra_disks="$extra_disks$2"; shift ;;
        *) lab_die "lab_guest_define: unknown option $1" ;;
        esac
        shift
    done
    local dom; dom=$(lab_domname "$name")
    local disk="$LAB_WORK/$name.data.$fmt"
    cp --sparse=always "$LAB_GUEST/data.$fmt" "$disk"
    local extra=""
    if [ "$agent" = 1 ]; then
        extra="$extra<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    fi
    if [ -n "$block" ]; then
        extra="$extra<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='$block'/><target dev='vdb' bus='virtio'/></disk>"
    fi
    cat > "$LAB_WORK/$name.xml" <<EOF
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>$mem</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$LAB_GUEST/vmlinuz</kernel>
    <initrd>$LAB_GUEST/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet$cmdline</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='$fmt'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    $extra
    $extra_disks
    $nets
    $tpm
    <serial type='file'><source path='$LAB_WORK/$name.console.log' append='on'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    lab_virsh define "$LAB_WORK/$name.xml" >/dev/null || lab_die "cannot define $dom"
    LAB_DOMAINS+=("$dom")
}

# lab_loop_attach FILE: a loop device over FILE, printed; detached at exit
# (also after a failure: lab_cleanup). Callers run it in the test's shell
# (not in $(...)), then read LAB_LOOP, so that the list survives.
lab_loop_attach() {
    LAB_LOOP=$(losetup -f --show "$1") || lab_die "cannot attach a loop device to $1"
    LAB_LOOPS+=("$LAB_LOOP")
}

# lab_pool_dir NAME DIR: a libvirt 'dir' storage pool over DIR, started;
# destroyed and undefined at exit.
lab_pool_dir() {
    mkdir -p "$2"
    lab_virsh pool-define-as "$1" dir --target "$2" >/dev/null || lab_die "cannot define pool $1"
    LAB_POOLS+=("$1")
    lab_virsh pool-start "$1" >/dev/null || lab_die "cannot start pool $1"
}

# lab_nbd_serve FILE FORMAT SOCKET: qemu-nbd exports FILE on a unix socket
# that QEMU's user may connect to; stopped at exit. Closes the lab lock's
# descriptor: a daemon must not hold the lab.
lab_nbd_serve() {
    qemu-nbd --persistent --shared=4 --format="$2" --socket="$3" "$1" 8>&- 9>&- >/dev/null 2>&1 &
    LAB_PIDS+=("$!")
    for _ in $(seq 1 100); do [ -S "$3" ] && break; sleep 0.05; done
    [ -S "$3" ] || lab_die "qemu-nbd did not serve $1 on $3"
    chmod 0777 "$3"
}

lab_running_count() { lab_virsh list --name | grep -c . ; }

# lab_guest_start NAME: starts it and waits until it is usable.
lab_guest_start() {
    local dom; dom=$(lab_domname "$1")
    local running; running=$(lab_running_count)
    if [ "${LAB_GUESTS:-2}" = 1 ] && lab_virsh list --name | grep -q "^$LAB_ID-"; then
        lab_die "refusing to start $dom: this test declared LAB_GUESTS=1 (it shares the lab) and one of its guests runs"
    fi
    [ "$running" -lt "$LAB_MAX_RUNNING" ] ||
        lab_die "refusing to start $dom: $running guests already run (at most $LAB_MAX_RUNNING on this machine)"
    lab_virsh start "$dom" >/dev/null || lab_die "cannot start $dom"
    lab_wait_ready "$1"
}

# Waits for the agent when the guest has a channel, else for "LAB: ready".
lab_wait_ready() {
    local dom; dom=$(lab_domname "$1")
    local i
    if lab_virsh dumpxml "$dom" | grep -q "org.qemu.guest_agent.0"; then
        for i in $(seq 1 600); do
            lab_virsh qemu-agent-command "$dom" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1 && return 0
            sleep 0.1
        done
        lab_die "the agent of $dom did not answer within 60 s"
    fi
    for i in $(seq 1 600); do
        grep -q "LAB: ready" "$LAB_WORK/$1.console.log" 2>/dev/null && return 0
        sleep 0.1
    done
    lab_die "$dom did not boot within 60 s"
}

# lab_gexec NAME 'command': runs /bin/sh -c in the guest; prints its stdout
# (stderr to stderr) and returns its exit code.
lab_gexec() {
    local dom; dom=$(lab_domname "$1")
    local req pid out status
    req=$(jq -cn --arg c "$2" '{execute:"guest-exec",arguments:{path:"/bin/sh",arg:["-c",$c],"capture-output":true}}')
    out=$(lab_virsh qemu-agent-command "$dom" "$req") || return 99
    pid=$(jq -r '.return.pid' <<<"$out")
    for _ in $(seq 1 600); do
        status=$(lab_virsh qemu-agent-command "$dom" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}") || return 98
        if [ "$(jq -r '.return.exited' <<<"$status")" = true ]; then
            jq -r '.return["out-data"] // ""' <<<"$status" | base64 -d
            jq -r '.return["err-data"] // ""' <<<"$status" | base64 -d >&2
            return "$(jq -r '.return.exitcode // 0' <<<"$status")"
        fi
        sleep 0.1
    done
    return 97
}

lab_state() { lab_virsh domstate "$(lab_domname "$1")" | head -n 1; }

# Waits up to 60 s for a guest to be shut off (it powers off, or its QEMU
# ended); returns 1 if it is not.
lab_wait_off() {
    local _
    for _ in $(seq 300); do
        [ "$(lab_state "$1")" = "shut off" ] && return 0
        sleep 0.2
    done
    return 1
}
