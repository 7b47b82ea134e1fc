#!/bin/bash
# Backups and restores of a VM that a Pacemaker cluster manages, which the
# cluster does not take for failures (SPEC R16, issue 22 points 2-5), on a real
# single-node Corosync + Pacemaker (tests/lab/pcmk.sh) with an
# ocf:heartbeat:VirtualDomain resource (monitor every second) whose VM is a
# lab guest:
#  - a saved-state backup: the resource is put in maintenance for the save
#    window only (seen while the backup runs), and afterwards crm_mon shows it
#    started and managed, no failed action, fail count 0; the guest's memory
#    (a marker file in its RAM root) and uptime show it was not restarted;
#  - a guest-method backup: the resource is left alone, same QEMU process;
#  - SIGKILL of vmshadow during the save while the resource is held, then
#    `recover`: the VM runs again from its state file (marker kept), the
#    resource is managed again, nothing is left in the journal;
#  - refusals that change nothing: a failed resource (made by the negative
#    control: a bare `virsh save` behind the cluster's back, which the
#    cluster does record as a failure), no quorum (expected votes
#    raised by a configuration reload), a config file that cannot be written
#    (immutable), a config file that names another domain (another UUID);
#  - restore --dry-run lists the cluster steps; a restore stops the resource
#    through the cluster, rewrites its config file with the restored
#    definition (memory 128 MiB, changed to 160 MiB after the backup), and the
#    cluster starts it; `crm_resource --restart` starts the restored
#    definition; no failed action.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/pcmk.sh"
command -v crm_mon >/dev/null || { echo "SKIP: Pacemaker is not installed (scripts/install-deps.sh)"; exit 77; }
lab_init
e2e_env

R=vmsh-cops-$$-g
BG=
QUORUM_CHANGED=0
cluster_cleanup() {
    local rc=$?
    [ -n "$BG" ] && kill -9 "$BG" 2>/dev/null
    [ "$QUORUM_CHANGED" = 1 ] && quorum_set 1
    [ -n "${CFG:-}" ] && chattr -i "$CFG" 2>/dev/null
    pcmk_rsc_remove "$R"
    pcmk_test_release
    (exit $rc)
    lab_cleanup
}
trap cluster_cleanup EXIT
pcmk_test_need "$LAB_WORK/pcmk" || fail "cannot start a single-node cluster"
NODE=$(crm_node -n)

lab_guest_define g
G=$(lab_domname g)
CFG=$LAB_WORK/g.cluster.xml
lab_virsh dumpxml --inactive "$G" >"$CFG"
# a monitor every second: a VM the cluster finds saved (gone) is noticed
pcmk_vm_add "$R" "$CFG" 1s >/dev/null || fail "cannot add resource $R"
pcmk_rsc_wait "$R" "^Started $NODE\$" 120 || fail "$R did not start"
lab_wait_ready g
vsh init
check "init" test "$RC" = 0

qemu_pid() { cat "/run/libvirt/qemu/$G.pid" 2>/dev/null; }
mon_ok() {
    local x; x=$(crm_mon --output-as=xml --inactive) || return 1
    grep -q "<resource id=\"$R\" [^>]*role=\"Started\"[^>]*managed=\"true\" failed=\"false\"" <<<"$x" &&
        ! grep -q "<failure op_key=\"${R}_" <<<"$x" &&
        ! grep -q "<resource_history id=\"$R\" [^>]*fail-count=\"[1-9]" <<<"$x" &&
        test "$(pcmk_rsc_role "$R")" = "Started $NODE"
}
# a few monitor cycles (1 s each) so that a failure would show
settle() { sleep 3; }
meta() { crm_resource --resource "$R" --meta --get-parameter "$1" 2>/dev/null; }
uptime_s() { lab_gexec g 'cut -d. -f1 /proc/uptime'; }
MARK=cops-$$-$RANDOM
lab_gexec g "echo $MARK > /tmp/vmsh-marker" || fail "cannot write the marker"
has_mark() { test "$(lab_gexec g 'cat /tmp/vmsh-marker' 2>/dev/null)" = "$MARK"; }
check "the marker is in the guest's memory" has_mark
check "crm_mon: started, managed, no failure" mon_ok

# --- saved-state backup (point 2): held for the save window only
up0=$(uptime_s)
pid0=$(qemu_pid)
"$VMSHADOW" --json backup --method saved-state "$G" >"$LAB_WORK/bg.out" 2>"$LAB_WORK/bg.err" &
BG=$!
seen_held=0
while kill -0 "$BG" 2>/dev/null; do
    [ "$(meta maintenance)" = true ] && seen_held=1
    sleep 0.05
done
wait "$BG"; rc=$?; BG=
cat "$LAB_WORK/bg.err" | sed 's/^/  stderr: /' >&2
check "saved-state backup exits 0" test "$rc" = 0
check "the VM was saved (a new QEMU: the state file was loaded)" test "$(qemu_pid)" != "$pid0"
check "the resource was in maintenance during the backup" test "$seen_held" = 1
check "maintenance is not set afterwards (prior value: none)" test -z "$(meta maintenance)"
settle
check "after the saved-state backup: started, managed, no failed action, fail count 0" mon_ok
check "the guest was not restarted: its memory (marker) is there" has_mark
up1=$(uptime_s)
check "the guest was not restarted: uptime went on ($up0 s -> $up1 s)" test "$up1" -ge "$up0"
check "the backup's journal is gone" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"

# --- guest-method backup: the resource is left alone
pid1=$(qemu_pid)
"$VMSHADOW" --json backup --method guest "$G" >"$LAB_WORK/bg.out" 2>"$LAB_WORK/bg.err" &
BG=$!
seen_held=0
while kill -0 "$BG" 2>/dev/null; do
    [ "$(meta maintenance)" = true ] && seen_held=1
    sleep 0.05
done
wait "$BG"; rc=$?; BG=
check "guest-method backup exits 0" test "$rc" = 0
GID=$(jq -r .backup <"$LAB_WORK/bg.out")
check "the resource was not touched" test "$seen_held" = 0
check "same QEMU process" test "$(qemu_pid)" = "$pid1"
settle
check "after the guest-method backup: started, managed, no failure" mon_ok
check "marker still there" has_mark

# --- SIGKILL while held, then recover (R7)
"$VMSHADOW" backup --method saved-state "$G" >/dev/null 2>"$LAB_WORK/bg.err" &
BG=$!
for _ in $(seq 3000); do
    ls "$VMSHADOW_STATE_DIR"/run/*/vm0.state >/dev/null 2>&1 && break
    sleep 0.02
done
check "the save began while the resource is held" test "$(meta maintenance)" = true
kill -9 "$BG"; wait "$BG" 2>/dev/null; BG=
settle
check "killed: the resource stays in maintenance (the cluster does not recover the saved VM)" \
    test "$(meta maintenance)" = true
vsh recover
echo "$OUT" | sed 's/^/  recover: /'
check "recover exits 0" test "$RC" = 0
check "recover: the VM runs" test "$(lab_state g)" = running
check "recover: maintenance is gone" test -z "$(meta maintenance)"
pcmk_rsc_wait "$R" "^Started $NODE\$" 60
settle
check "recover: started, managed, no failure" mon_ok
check "recover: the VM came back from its state file (marker kept)" has_mark
check "recover: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"

# --- refusals (point 4): nothing changes
# (a) the negative control: a bare save behind the cluster's back is
#     recorded as a failure (not restored: see t-cluster.sh, a restore
#     racing the cluster's recovery left the resource Stopped); then a
#     backup of the failed resource is refused
pid2=$(qemu_pid)
lab_virsh save "$G" "$LAB_WORK/bare.state" >/dev/null || fail "virsh save"
for _ in $(seq 1 150); do
    crm_mon --output-as=xml | grep -q "<failure op_key=\"${R}_" && break
    sleep 0.2
done
rm -f "$LAB_WORK/bare.state"
check "negative control: the bare save is recorded as a failed action" \
    grep -q "<failure op_key=\"${R}_" <<<"$(crm_mon --output-as=xml)"
if mon_ok; then fail "negative control: mon_ok does not see the failure"; else pass "negative control: mon_ok sees the failure"; fi
pcmk_rsc_wait "$R" "^Started $NODE" 120 || fail "$R was not recovered"
lab_wait_ready g
pid3=$(qemu_pid)
vsh backup --method saved-state "$G"
check "a failed resource: saved-state backup refused" test "$RC" != 0
check "the error says so" grep -q "failed state" <<<"$ERR"
check "the VM was not touched" test "$(qemu_pid)" = "$pid3"
check "the resource was not touched" test -z "$(meta maintenance)"
crm_resource --cleanup --resource "$R" >/dev/null
for _ in $(seq 1 100); do mon_ok && break; sleep 0.2; done
check "after cleanup: no failure" mon_ok
lab_wait_ready g

# (b) no quorum: votequorum's expected votes can only be lowered at run
#     time (corosync-quorumtool -e 2 is refused), so the running corosync's
#     configuration file gets expected_votes: 2 and is reloaded
#     (corosync-cfgtool -R); a one-node cluster then has no quorum, and
#     no-quorum-policy=ignore keeps the VM running. Undone the same way.
QCONF=$(pid=$(pgrep -xo corosync) && tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n '/^-c$/{n;p;q}')
quorum_set() { # 2: take quorum away, 1: give it back
    if [ "$1" = 2 ]; then
        sed -i 's/^\([[:space:]]*provider: corosync_votequorum\)$/\1\n    expected_votes: 2/' "$QCONF"
    else
        sed -i '/^    expected_votes: 2$/d' "$QCONF"
    fi
    corosync-cfgtool -R >/dev/null 2>&1 || return 1
    [ "$1" = 1 ] && corosync-quorumtool -e 1 >/dev/null 2>&1
    return 0
}
if [ -n "$QCONF" ] && [ -w "$QCONF" ] && quorum_set 2; then
    QUORUM_CHANGED=1
    for _ in $(seq 1 100); do
        crm_mon --output-as=xml | grep -q 'with_quorum="false"' && break
        sleep 0.1
    done
    check "no quorum: crm_mon says so" grep -q 'with_quorum="false"' <<<"$(crm_mon --output-as=xml)"
    pid4=$(qemu_pid)
    vsh backup --method saved-state "$G"
    check "no quorum: saved-state backup refused" test "$RC" != 0
    check "the error names the quorum" grep -q "no quorum" <<<"$ERR"
    vsh restore --force "$GID" "$G"
    check "no quorum: restore refused" test "$RC" != 0
    check "no quorum: the VM was not touched" test "$(qemu_pid)" = "$pid4"
    check "no quorum: the resource was not touched" test -z "$(meta maintenance)$(meta target-role)"
    quorum_set 1; QUORUM_CHANGED=0
    for _ in $(seq 1 100); do
        crm_mon --output-as=xml | grep -q 'with_quorum="true"' && break
        sleep 0.1
    done
    check "quorum is back" grep -q 'with_quorum="true"' <<<"$(crm_mon --output-as=xml)"
else
    fail "no quorum: cannot change the running corosync's expected votes (configuration file ${QCONF:-not found})"
fi

# (c) a config file that cannot be written (immutable, which binds root too)
if chattr +i "$CFG" 2>/dev/null; then
    pid5=$(qemu_pid)
    vsh restore --force "$GID" "$G"
    chattr -i "$CFG"
    check "unwritable config: restore refused" test "$RC" != 0
    check "the error names the config file" grep -q "not writable" <<<"$ERR"
    check "unwritable config: the VM was not touched" test "$(qemu_pid)" = "$pid5"
    check "unwritable config: the resource was not touched" test -z "$(meta target-role)"
else
    echo "# unwritable config: chattr +i is not supported here; tests/unit/test_cluster.c covers the refusal"
fi
# (d) a config file that names another domain: same name, another UUID (the
#     agent's monitor goes by the name only, so the cluster sees no change)
cp "$CFG" "$LAB_WORK/cfg.saved"
sed -i "s|<uuid>[^<]*</uuid>|<uuid>$(cat /proc/sys/kernel/random/uuid)</uuid>|" "$CFG"
pid6=$(qemu_pid)
vsh backup --method saved-state "$G"
check "config of another domain: saved-state backup refused" test "$RC" != 0
check "the error names the other domain's UUID" grep -q "names domain $G (UUID" <<<"$ERR"
vsh restore --force "$GID" "$G"
check "config of another domain: restore refused" test "$RC" != 0
cp "$LAB_WORK/cfg.saved" "$CFG"
check "config of another domain: the VM was not touched" test "$(qemu_pid)" = "$pid6"
check "config of another domain: the resource was not touched" \
    test -z "$(meta maintenance)$(meta target-role)"
check "after the refusals: started, managed, no failure" mon_ok

# --- restore (point 3)
sed -i "s|<memory unit='KiB'>131072</memory>|<memory unit='KiB'>163840</memory>|; s|<currentMemory unit='KiB'>131072</currentMemory>|<currentMemory unit='KiB'>163840</currentMemory>|" "$CFG"
check "the config file now says 160 MiB (a change after the backup)" grep -q ">163840<" "$CFG"
vsh --json restore --dry-run "$GID" "$G"
check "restore --dry-run exits 0" test "$RC" = 0
check "--dry-run: the cluster steps are listed" \
    test "$(jq -r '.vms[0].cluster.resource' <<<"$OUT") $(jq '.vms[0].cluster.steps | length' <<<"$OUT")" = "$R 4"
check "--dry-run: nothing changed" test -z "$(meta target-role)"
vsh restore --dry-run "$GID" "$G"
check "--dry-run text: the cluster steps" grep -q "cluster: stop resource $R" <<<"$OUT"
vsh --json restore --force "$GID" "$G"
check "restore exits 0" test "$RC" = 0
check "restore: registered" test "$(jq -r '.vms[0].result.registered' <<<"$OUT")" = true
check "restore: the config file has the restored definition (128 MiB)" grep -q ">131072<" "$CFG"
check "restore: target-role as before (not set)" test -z "$(meta target-role)"
check "restore: no prior copy left" test ! -e "$CFG.vmshadow-prior"
check "restore: no location constraint" test -z "$(cibadmin -Q -o constraints | grep -F "$R")"
pcmk_rsc_wait "$R" "^Started $NODE\$" 60
lab_wait_ready g
settle
check "restore: the cluster started it; no failed action" mon_ok
check "restore: the restored VM is the cluster's (transient)" \
    test "$(lab_virsh dominfo "$G" | awk '/^Persistent:/ {print $2}')" = no
check "restore: no journal left" test -z "$(ls -A "$VMSHADOW_STATE_DIR/journal" 2>/dev/null)"
crm_resource --restart --resource "$R" >/dev/null 2>&1 || fail "crm_resource --restart"
pcmk_rsc_wait "$R" "^Started $NODE\$" 120 || fail "$R did not start again"
lab_wait_ready g
check "crm_resource --restart starts the restored definition (128 MiB)" \
    test "$(lab_virsh dominfo "$G" | awk '/^Max memory:/ {print $3}')" = 131072
settle
check "after --restart: no failed action" mon_ok

e2e_done
