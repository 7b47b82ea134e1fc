#!/bin/bash
# The scheduled backup as systemd runs it (issue 24; docs/config.md,
# "Scheduled backups" and "Metrics"): the files CMake installs (the package's
# contents) are installed into a scratch root; vmshadow-backup.service's
# ExecStart= runs with only the unit's Environment= (and systemd's default
# PATH), in a private mount namespace where /usr and /etc show the installed
# files and the test's /etc/vmshadow/vmshadow.conf over the host's (read-only
# overlays: the host sees nothing) and the unit's UMask=. Against a running
# lab guest (with its agent) and a shut-off one:
#  - three runs back up the config's schedule-vms and prune by keep-last 2:
#    the repository holds the two newest backups, each of both VMs; the
#    running guest runs on afterwards (the hardened unit's umask does not
#    keep QEMU out of what vmshadow hands it);
#  - the metrics files it leaves match `list --json`: the last backup's ID,
#    time, bytes read and stored per run and per VM, the repository's
#    backups per VM; the prune's run is recorded too; `status --json` agrees;
#  - a run whose backup fails (a VM that does not exist) prunes nothing,
#    exits non-zero, logs the error with journald's error priority, counts
#    an error and keeps the last success time;
#  - without schedule-vms the service fails with a message saying the key;
#  - the generator turns backup-schedule into the timer's OnCalendar=.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env

lab_guest_define a
lab_guest_define b --raw
lab_guest_start a
A=$(lab_domname a); B=$(lab_domname b)
vsh init
check "init" test "$RC" = 0

DEST=$LAB_WORK/dest
DESTDIR=$DEST cmake --install "$VMSH_BUILD_DIR" >"$LAB_WORK/install.log" 2>&1 ||
    fail "cmake --install: $(cat "$LAB_WORK/install.log")"
# the installed tree must hold the binary under test (an ASan build installs its own)
UNIT=$(find "$DEST" -name vmshadow-backup.service | head -n 1)
[ -n "$UNIT" ] || fail "no vmshadow-backup.service installed under $DEST"
read -r -a EXEC <<<"$(sed -n 's/^ExecStart=//p' "$UNIT")"
mapfile -t UNIT_ENV < <(sed -n 's/^Environment=//p' "$UNIT")
UMASK=$(sed -n 's/^UMask=//p' "$UNIT")
check "the unit sets a umask" test -n "$UMASK"
check "the unit sets VMSHADOW_CONFIG" grep -qx 'VMSHADOW_CONFIG=/etc/vmshadow/vmshadow.conf' <<<"${UNIT_ENV[*]}"
[ -x "$DEST${EXEC[0]}" ] || fail "ExecStart program ${EXEC[0]} is not installed"

METRICS=$LAB_WORK/metrics
mkdir -p "$METRICS" "$LAB_WORK/etc/vmshadow"
CONF=$LAB_WORK/etc/vmshadow/vmshadow.conf
write_conf() { # write_conf VMS: the service's config, pointing at this test's repository
    {
        echo "repo = $VMSHADOW_REPO"
        echo "state-dir = $VMSHADOW_STATE_DIR"
        echo "writers-dir = $VMSHADOW_WRITERS_DIR"
        echo "connect = $LAB_URI"
        [ -n "$1" ] && echo "schedule-vms = $1"
        echo "keep-last = 2"
        echo "metrics-dir = $METRICS"
        echo "backup-schedule = *-*-* 02:30:00"
    } >"$CONF"
}

# run_service: ExecStart with the unit's environment only, as systemd would;
# stdout+stderr in $SOUT, exit code in $SRC
run_service() {
    SOUT=$(unshare -m --propagation private bash -c '
        dest=$1 etc=$2 mask=$3; shift 3
        mount -t overlay overlay -o "lowerdir=$dest/usr:/usr" /usr &&
            mount -t overlay overlay -o "lowerdir=$etc:/etc" /etc || exit 99
        umask "$mask"
        exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' _ "$DEST" "$LAB_WORK/etc" "$UMASK" "${UNIT_ENV[@]}" "${EXEC[@]}" 2>&1)
    SRC=$?
    printf '  service: %s\n' "$SOUT" | tail -n 15 >&2
}

write_conf "$A $B"
ids=()
for i in 1 2 3; do
    run_service
    [ "$SRC" = 0 ] || fail "scheduled backup run $i exited $SRC"
    vsh --json list
    ids+=("$(jq -r '.backups[-1].id' <<<"$OUT")")
done
pass "three scheduled runs succeed"
vsh --json list
LIST=$OUT
check "prune kept the two newest backups" test "$(jq -c '[.backups[].id]' <<<"$LIST")" = "$(jq -nc --arg a "${ids[1]}" --arg b "${ids[2]}" '[$a,$b]')"
check "the running guest runs on" test "$(lab_state a)" = running
check "the running guest was captured while running" test "$(jq -r --arg v "$A" '[.backups[-1].document.vms[] | select(.name == $v) | .state_before] | first' <<<"$LIST")" = running
check "each backup holds both VMs" test "$(jq -c '[.backups[] | [.document.vms[].name] | sort | join(" ")] | unique' <<<"$LIST")" = "$(jq -nc --arg v "$(printf '%s\n' "$A" "$B" | sort | paste -sd' ')" '[$v]')"
check "the service's output says what prune kept" grep -q "keep" <<<"$SOUT"

# metric VALUE from a .prom file: metric NAME{LABELS} FILE
metric() { awk -v m="$1" '$1 == m { print $2 }' "$METRICS/$2"; }
num_eq() { python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-6 * max(1, abs(b)) else 1)' "$1" "$2"; }
P=vmshadow_backup.prom
check "backup metrics file written" test -s "$METRICS/$P"
check "metrics name the last backup" test "$(metric "vmshadow_backup_info{backup=\"${ids[2]}\"}" $P)" = 1
last=$(jq '.backups[-1]' <<<"$LIST")
check "last backup time matches list" num_eq "$(metric vmshadow_backup_timestamp_seconds $P)" "$(date -d "$(jq -r .time <<<"$last")" +%s)"
check "bytes read per run match the backup document" num_eq "$(metric vmshadow_backup_bytes_read $P)" "$(jq .document.bytes_read <<<"$last")"
check "bytes stored per run match the backup document" num_eq "$(metric vmshadow_backup_bytes_stored $P)" "$(jq .document.bytes_stored <<<"$last")"
check "logical bytes per run match the files' sizes" num_eq "$(metric vmshadow_backup_bytes_logical $P)" "$(jq '[.files[].size] | add' <<<"$last")"
for vm in "$A" "$B"; do
    check "$vm: bytes stored match list's files" num_eq "$(metric "vmshadow_backup_vm_bytes_stored{vm=\"$vm\"}" $P)" "$(jq --arg v "$vm/" '[.files[] | select(.name | startswith($v)) | .stored_bytes] | add' <<<"$last")"
    check "$vm: bytes read match the document's disks" num_eq "$(metric "vmshadow_backup_vm_bytes_read{vm=\"$vm\"}" $P)" "$(jq --arg v "$vm" '[.document.vms[] | select(.name == $v) | .disks[].bytes_read] | add' <<<"$last")"
    check "$vm: backups in the repository" test "$(metric "vmshadow_vm_backups{vm=\"$vm\"}" vmshadow_repository.prom)" = 2
    check "$vm: oldest backup time" num_eq "$(metric "vmshadow_vm_oldest_backup_timestamp_seconds{vm=\"$vm\"}" vmshadow_repository.prom)" "$(date -d "$(jq -r '.backups[0].time' <<<"$LIST")" +%s)"
done
check "bytes read are not zero (real disks were read)" test "$(metric vmshadow_backup_bytes_read $P)" != 0
check "backup run counted 3 times, no error" test "$(metric 'vmshadow_runs_total{command="backup"}' $P) $(metric 'vmshadow_errors_total{command="backup"}' $P)" = "3 0"
check "backup last run succeeded" test "$(metric 'vmshadow_last_run_success{command="backup"}' $P)" = 1
check "prune run recorded" test "$(metric 'vmshadow_last_run_success{command="prune"}' vmshadow_prune.prom)" = 1
check "repository backups" test "$(metric vmshadow_repository_backups vmshadow_repository.prom)" = 2
check "repository size is the directory's" num_eq "$(metric vmshadow_repository_size_bytes vmshadow_repository.prom)" "$(find "$VMSHADOW_REPO" -type f -printf '%s\n' | awk '{s += $1} END {print s}')"
check "metrics files are readable by node_exporter" test "$(stat -c %a "$METRICS/$P")" = 644
check "no temporary file left" test -z "$(find "$METRICS" -name '*.tmp*')"
success=$(metric 'vmshadow_last_success_timestamp_seconds{command="backup"}' $P)

vsh --json status
check "status exits 0" test "$RC" = 0
check "status: last backup run ok, with its ID" test "$(jq -r '.runs[] | select(.command == "backup") | "\(.ok) \(.backup)"' <<<"$OUT")" = "true ${ids[2]}"
check "status: newest and oldest backup of $A" test "$(jq -r --arg v "$A" '.repo.vms[] | select(.name == $v) | "\(.oldest.id) \(.newest.id) \(.backups)"' <<<"$OUT")" = "${ids[1]} ${ids[2]} 2"
vsh status
check "status text lists the VM" grep -q "^$A .* ${ids[1]} " <<<"$OUT"

# The bash completion (as installed): VM names from virsh, backup IDs from
# `vmshadow list --json`, with the -r given on the line.
COMP=$(find "$DEST" -path '*bash-completion/completions/vmshadow' | head -n 1)
[ -n "$COMP" ] || fail "bash completion not installed"
complete_line() { # complete_line WORDS...: the completions of the last word
    PATH=$(dirname "$VMSHADOW"):$PATH LIBVIRT_DEFAULT_URI=$LAB_URI VMSHADOW_REPO=/nonexistent \
        bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _vmshadow; printf "%s\n" "${COMPREPLY[@]}" | sort' _ "$COMP" "$@"
}
check "completion: VM names for backup" test "$(complete_line vmshadow backup "$LAB_ID-")" = "$(printf '%s\n' "$A" "$B" | sort)"
check "completion: backup IDs for show" test "$(complete_line vmshadow -r "$VMSHADOW_REPO" show '')" = "$(printf '%s\n' "${ids[1]}" "${ids[2]}" latest | sort)"
check "completion: options of prune" test "$(complete_line vmshadow prune --keep-w)" = "--keep-weekly"

# A failing backup: no prune, an error counted, the last success kept.
write_conf "$A $LAB_ID-no-such-vm"
run_service
check "a failing scheduled backup fails the service" test "$SRC" != 0
check "its error reaches the journal at error priority" grep -q '^<3>vmshadow: error: ' <<<"$SOUT"
vsh --json list
check "a failing backup prunes nothing" test "$(jq '.backups | length' <<<"$OUT")" = 2
check "error counted" test "$(metric 'vmshadow_errors_total{command="backup"}' $P)" = 1
check "failure is the last run" test "$(metric 'vmshadow_last_run_success{command="backup"}' $P)" = 0
check "last success time kept" test "$(metric 'vmshadow_last_success_timestamp_seconds{command="backup"}' $P)" = "$success"
check "last backup still named" test "$(metric "vmshadow_backup_info{backup=\"${ids[2]}\"}" $P)" = 1

write_conf ""
run_service
check "without schedule-vms the service fails" test "$SRC" = 2
check "and says which key to set" grep -q "schedule-vms" <<<"$SOUT"

# the generator: backup-schedule becomes the timer's OnCalendar=
GEN=$(find "$DEST" -path '*system-generators/vmshadow-generator' | head -n 1)
[ -n "$GEN" ] || fail "generator not installed"
write_conf "$A"
mkdir -p "$LAB_WORK/gen"
unshare -m --propagation private bash -c '
    mount -t overlay overlay -o "lowerdir=$1/usr:/usr" /usr && mount -t overlay overlay -o "lowerdir=$2:/etc" /etc &&
    exec env -i PATH=/usr/bin:/bin "$3" "$4" "$4.early" "$4.late"' _ "$DEST" "$LAB_WORK/etc" "$GEN" "$LAB_WORK/gen" ||
    fail "generator failed"
DROP=$LAB_WORK/gen/vmshadow-backup.timer.d/50-schedule.conf
check "generator writes the backup timer's schedule" grep -qx 'OnCalendar=\*-\*-\* 02:30:00' "$DROP"
check "generator resets the default schedule first" test "$(grep -c '^OnCalendar=' "$DROP")" = 2
check "no drop-in for timers without a schedule key" test ! -e "$LAB_WORK/gen/vmshadow-gc.timer.d"
if systemd-analyze calendar --help >/dev/null 2>&1; then
    check "the schedule is a valid calendar spec" systemd-analyze calendar "$(sed -n 's/^OnCalendar=\(..*\)/\1/p' "$DROP")" >/dev/null
fi
e2e_done
