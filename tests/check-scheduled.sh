#!/bin/bash
# check-scheduled.sh SOURCE_DIR - the scheduled jobs' wrapper
# (packaging/scheduled, issue 24) against a stand-in vmshadow that records
# its command lines: which commands each job runs for which config keys,
# that a failed backup is not followed by a prune, the OnFailure hook, and
# the generator's drop-ins. The real runs against guests are
# tests/e2e/t-systemd-service.sh.
set -u
src=$1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
S=$src/packaging/scheduled
n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
fail() { echo "not ok - $*" >&2; exit 1; }

cat >"$W/vmshadow" <<'EOF'
#!/bin/sh
echo "$*" >>"$CALLS"
[ "$1" = backup ] && [ -n "${FAIL_BACKUP:-}" ] && exit 1
if [ "$1" = verify ] && [ -n "${DAMAGED:-}" ]; then
    echo "DAMAGED backup 0123, file vm/disk/vda: bad chunk"
    echo "vmshadow: warning: a warning" >&2
    echo "vmshadow: an info line" >&2
    echo "vmshadow: error: the repository is damaged" >&2
    exit 3
fi
exit 0
EOF
chmod +x "$W/vmshadow"
export CALLS=$W/calls VMSHADOW=$W/vmshadow VMSHADOW_CONFIG=$W/conf
job() { # job ARGS...: runs the wrapper; its calls in $GOT, exit code in $RC
    : >"$CALLS"
    OUT=$("$S" "$@" 2>&1)
    RC=$?
    GOT=$(cat "$CALLS")
}
conf() { printf '%s\n' "$@" >"$W/conf"; }

conf "# a comment" "schedule-vms = web  db" "keep-last = 3" "keep-weekly = 4" "repo = /x"
job backup
[ "$RC" = 0 ] && [ "$GOT" = $'backup web db\nprune --keep-last 3 --keep-weekly 4' ] ||
    fail "backup then prune: $RC '$GOT' $OUT"
ok "backup of the named VMs, then prune with the keep-* keys"

conf "schedule-vms = all" "keep-daily=7" "keep-monthly =6"
job backup
[ "$RC" = 0 ] && [ "$GOT" = $'backup --all\nprune --keep-daily 7 --keep-monthly 6' ] ||
    fail "all: $RC '$GOT'"
ok "schedule-vms = all backs up --all; blanks around = do not matter"

FAIL_BACKUP=1 job backup
[ "$RC" = 1 ] && [ "$GOT" = "backup --all" ] || fail "failed backup: $RC '$GOT'"
ok "a failed backup fails the job and prunes nothing"

conf "schedule-vms = web"
job backup
[ "$RC" = 0 ] && [ "$GOT" = "backup web" ] && [[ $OUT == *"<5>"*"nothing pruned"* ]] ||
    fail "no keep: $RC '$GOT' $OUT"
ok "without keep-* nothing is pruned, and a notice says so"

conf "keep-last = 2"
job backup
[ "$RC" = 2 ] && [ -z "$GOT" ] && [[ $OUT == "<3>"*"schedule-vms"* ]] || fail "no vms: $RC '$GOT' $OUT"
ok "without schedule-vms the job fails (exit 2) naming the key, at error priority"

rm -f "$W/conf"
job backup
[ "$RC" = 2 ] && [ -z "$GOT" ] || fail "no config: $RC '$GOT'"
ok "a missing config is the same failure"

conf "verify-backups = all"
job verify
[ "$RC" = 0 ] && [ "$GOT" = "verify" ] || fail "verify all: $RC '$GOT'"
conf "schedule-vms = x"
job verify
[ "$RC" = 0 ] && [ "$GOT" = "verify latest" ] || fail "verify default: $RC '$GOT'"
conf "verify-backups = some"
job verify
[ "$RC" = 2 ] && [ -z "$GOT" ] || fail "verify bad value: $RC '$GOT'"
ok "verify: all, latest by default, anything else refused"

conf "verify-backups = latest"
: >"$CALLS"
DAMAGED=1 "$S" verify >"$W/stdout" 2>"$W/stderr"
RC=$?
[ "$RC" = 3 ] || fail "verify's exit code not passed on: $RC"
[ "$(cat "$W/stdout")" = "DAMAGED backup 0123, file vm/disk/vda: bad chunk" ] ||
    fail "verify's stdout: $(cat "$W/stdout")"
[ "$(cat "$W/stderr")" = $'<4>vmshadow: warning: a warning\nvmshadow: an info line\n<3>vmshadow: error: the repository is damaged' ] ||
    fail "verify's stderr: $(cat "$W/stderr")"
ok "vmshadow's exit code and stdout pass through; its errors and warnings get journald priorities"

job gc
[ "$RC" = 0 ] && [ "$GOT" = "gc" ] || fail "gc: $RC '$GOT'"
ok "gc"

cat >"$W/hook" <<EOF
#!/bin/sh
echo "hook \$*" >>"$CALLS"
EOF
chmod +x "$W/hook"
VMSHADOW_ON_FAILURE=$W/hook job failure vmshadow-backup.service
[ "$RC" = 0 ] && [ "$GOT" = "hook vmshadow-backup.service" ] &&
    [[ $OUT == "<3>"*"vmshadow-backup.service failed"* ]] || fail "failure hook: $RC '$GOT' $OUT"
VMSHADOW_ON_FAILURE=$W/absent job failure vmshadow-gc.service
[ "$RC" = 0 ] && [ -z "$GOT" ] || fail "failure without hook: $RC '$GOT'"
ok "failure logs at error priority and runs the on-failure hook when there is one"

conf "backup-schedule = Mon..Fri 22:00" "gc-schedule = monthly"
job generate "$W/gen"
[ "$RC" = 0 ] || fail "generate: $RC $OUT"
[ "$(grep '^OnCalendar=' "$W/gen/vmshadow-backup.timer.d/50-schedule.conf")" = $'OnCalendar=\nOnCalendar=Mon..Fri 22:00' ] ||
    fail "backup drop-in: $(cat "$W/gen/vmshadow-backup.timer.d/50-schedule.conf")"
grep -qx 'OnCalendar=monthly' "$W/gen/vmshadow-gc.timer.d/50-schedule.conf" || fail "gc drop-in"
[ ! -e "$W/gen/vmshadow-verify.timer.d" ] || fail "verify drop-in without a key"
ok "the generator writes a drop-in per *-schedule key, resetting OnCalendar= first"

job nonsense
[ "$RC" = 2 ] || fail "unknown job: $RC"
ok "an unknown job is a usage error"
echo "1..$n"
