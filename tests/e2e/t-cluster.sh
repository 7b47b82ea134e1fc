#!/bin/bash
# A VM that a Pacemaker cluster manages (SPEC R16, issue 22), on a real
# single-node Corosync + Pacemaker (tests/lab/pcmk.sh; the one scripts/test.sh
# started, else one of its own) with an ocf:heartbeat:VirtualDomain resource
# whose VM is a lab guest:
#  - detection: `vms` shows the resource, its node and managed/maintenance
#    state (text and --json); a VM no resource manages shows none; without
#    the Pacemaker tools in PATH nothing is shown and nothing warns;
#  - the negative control: a bare `virsh save` behind the cluster's back
#    (what a backup tool that ignores the cluster does) makes the cluster
#    record a failure and recover the VM, so the checks below that there is
#    none can fail.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/pcmk.sh"
command -v crm_mon >/dev/null || { echo "SKIP: Pacemaker is not installed (scripts/install-deps.sh)"; exit 77; }
lab_init
e2e_env

R=vmsh-cluster-$$-g
cluster_cleanup() {
    local rc=$?
    pcmk_rsc_remove "$R"
    pcmk_test_release
    (exit $rc)
    lab_cleanup
}
trap cluster_cleanup EXIT
pcmk_test_need "$LAB_WORK/pcmk" || fail "cannot start a single-node cluster"
NODE=$(crm_node -n)

lab_guest_define g
lab_guest_define s --no-agent # never started: a VM no resource manages
G=$(lab_domname g); S=$(lab_domname s)
CFG=$LAB_WORK/g.cluster.xml
lab_virsh dumpxml --inactive "$G" >"$CFG"
pcmk_vm_add "$R" "$CFG" 5s >/dev/null || fail "cannot add resource $R"
pcmk_rsc_wait "$R" "^Started $NODE\$" 120 || fail "$R did not start"
lab_wait_ready g
check "the cluster started the VM (a transient domain made from the config file)" \
    test "$(lab_virsh dominfo "$G" | awk '/^Persistent:/ {print $2}')" = no

qemu_pid() { cat "/run/libvirt/qemu/$G.pid" 2>/dev/null; }
# mon_ok: started on the node, managed, no failed action, fail count 0
mon_ok() {
    local x; x=$(crm_mon --output-as=xml --inactive) || return 1
    grep -q "<resource id=\"$R\" [^>]*role=\"Started\"[^>]*managed=\"true\" failed=\"false\"" <<<"$x" &&
        ! grep -q "<failure op_key=\"${R}_" <<<"$x" &&
        ! grep -q "<resource_history id=\"$R\" [^>]*fail-count=\"[1-9]" <<<"$x" &&
        test "$(pcmk_rsc_role "$R")" = "Started $NODE"
}
check "crm_mon: started, managed, no failure" mon_ok

# --- detection (issue 22 point 1)
vsh vms "$G" "$S"
echo "$OUT" | sed "s/^/  vms: /"
check "vms exits 0" test "$RC" = 0
check "vms names the resource, node and state" \
    grep -qE "cluster: resource $R on $NODE, Started, managed\$" <<<"$OUT"
check "one cluster line only (none for $S)" test "$(grep -c 'cluster:' <<<"$OUT")" = 1
vsh --json vms "$G" "$S"
vmj() { jq -c --arg n "$1" '.vms[] | select(.name == $n) | .cluster' <<<"$OUT"; }
check "--json: resource, node, role, mode" test "$(vmj "$G" | jq -r '"\(.resource) \(.node) \(.role) \(.mode) \(.managed) \(.maintenance) \(.fail_count)"')" = \
    "$R $NODE Started managed true false 0"
check "--json: config file" test "$(vmj "$G" | jq -r .config)" = "$CFG"
check "--json: null for a VM no resource manages" test "$(vmj "$S")" = null

crm_resource --resource "$R" --meta --set-parameter maintenance --parameter-value true >/dev/null
pcmk_rsc_wait "$R" unmanaged 30 || fail "maintenance did not show"
vsh --json vms "$G"
check "--json: maintenance" test "$(vmj "$G" | jq -r '"\(.mode) \(.managed) \(.maintenance)"')" = "maintenance false true"
crm_resource --resource "$R" --meta --delete-parameter maintenance >/dev/null
crm_resource --resource "$R" --meta --set-parameter is-managed --parameter-value false >/dev/null
pcmk_rsc_wait "$R" unmanaged 30 || fail "unmanaged did not show"
vsh vms "$G"
check "text: unmanaged" grep -qE "cluster: resource $R on $NODE, Started, unmanaged\$" <<<"$OUT"
crm_resource --resource "$R" --meta --delete-parameter is-managed >/dev/null
pcmk_rsc_wait "$R" "^Started $NODE\$" 30 || fail "$R not managed again"

# A host without Pacemaker: no tool in PATH, nothing shown, nothing said.
nopcmk=$LAB_WORK/nopcmk-bin
mkdir -p "$nopcmk"
for t in virsh qemu-img; do ln -sf "$(command -v $t)" "$nopcmk/$t"; done
OUT=$(PATH=$nopcmk "$VMSHADOW" --json vms "$G" 2>"$LAB_WORK/nopcmk.err"); RC=$?
check "without Pacemaker tools: vms exits 0" test "$RC" = 0
check "without Pacemaker tools: no cluster shown" test "$(vmj "$G")" = null
check "without Pacemaker tools: no warning" test ! -s "$LAB_WORK/nopcmk.err"
check "the VM was left alone so far" mon_ok

# --- the negative control: a bare save behind the cluster's back
pid0=$(qemu_pid)
lab_virsh save "$G" "$LAB_WORK/bare.state" >/dev/null || fail "virsh save"
# the monitor (every 5 s) sees the VM gone (transient: a save removes it)
# and the cluster recovers it from its configuration at once (stop, start).
# The state is not restored: a `virsh restore` racing that start made it
# fail ("domain ... is already active"; fail count INFINITY, the resource
# left Stopped: CI of 2026-12-06), and the failure alone is the control.
for _ in $(seq 1 150); do
    crm_mon --output-as=xml | grep -q "<failure op_key=\"${R}_" && break
    sleep 0.2
done
rm -f "$LAB_WORK/bare.state"
check "negative control: the cluster recorded a failed action" \
    grep -q "<failure op_key=\"${R}_" <<<"$(crm_mon --output-as=xml)"
if mon_ok; then fail "negative control: mon_ok does not see the failure"; else pass "negative control: mon_ok sees the failure"; fi
# `vms` lists the VMs libvirt knows: the transient domain exists again only
# once the cluster started it (the failure stays recorded until the cleanup)
pcmk_rsc_wait "$R" "^Started $NODE\$" 120 || fail "$R was not recovered"
lab_wait_ready g
vsh --json vms "$G"
check "negative control: vms shows the failure" test "$(vmj "$G" | jq -r '.fail_count > 0 or .failed')" = true
check "negative control: the cluster started a new QEMU" test "$(qemu_pid)" != "$pid0"
crm_resource --cleanup --resource "$R" >/dev/null
for _ in $(seq 1 100); do mon_ok && break; sleep 0.2; done
check "after cleanup: no failure" mon_ok

e2e_done
