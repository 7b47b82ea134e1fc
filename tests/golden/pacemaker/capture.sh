#!/bin/bash
# capture.sh - re-captures the Pacemaker samples of this directory from the
# lab cluster (tests/lab/pcmk.sh) with a VirtualDomain resource on a lab
# guest; tests/unit/test_cluster.c parses them. Run as root:
#   tests/golden/pacemaker/capture.sh
# The samples keep the lab's names (domain vmsh-capture-<pid>-g1, resource
# vm-g1) and are rewritten to fixed names so the tests need not know the pid.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../lab/lab.sh"
. "$here/../../lab/pcmk.sh"
lab_init
own=0
pcmk_answers || { pcmk_up || exit 1; own=1; }
R=vm-g1
finish() { pcmk_rsc_remove $R; [ $own = 1 ] && pcmk_down; lab_cleanup; }
trap finish EXIT
lab_guest_define g1
dom=$(lab_domname g1)
cfg=$LAB_WORK/g1.cluster.xml
lab_virsh dumpxml --inactive "$dom" >"$cfg"
lab_virsh undefine "$dom" >/dev/null
pcmk_vm_add $R "$cfg"
pcmk_rsc_wait $R '^Started' 120 || exit 1
fix() { sed -e "s|$dom|vmsh-golden-g1|g" -e "s|$LAB_WORK|/var/lib/vmsh-golden|g"; }
cibadmin --query | fix >"$here/cib-started.xml"
crm_mon --output-as=xml --inactive | fix >"$here/mon-started.xml"
fix <"$cfg" >"$here/g1-config.xml"
crm_resource --resource $R --meta --set-parameter is-managed --parameter-value false
pcmk_rsc_wait $R 'unmanaged' 30
crm_mon --output-as=xml --inactive | fix >"$here/mon-unmanaged.xml"
cibadmin --query | fix >"$here/cib-unmanaged.xml"
crm_resource --resource $R --meta --delete-parameter is-managed
# a bare save behind the cluster's back: the monitor fails, a recovery follows
lab_virsh save "$dom" "$LAB_WORK/g1.state" >/dev/null
for _ in $(seq 1 100); do
    crm_mon --output-as=xml | grep -q '<failure ' && break
    sleep 0.2
done
crm_mon --output-as=xml --inactive | fix >"$here/mon-failed.xml"
pcmk_rsc_wait $R '^Started' 120
crm_resource --resource $R --cleanup >/dev/null
crm_resource --resource $R --meta --set-parameter target-role --parameter-value Stopped
pcmk_rsc_wait $R '^Stopped' 60
crm_mon --output-as=xml --inactive | fix >"$here/mon-stopped.xml"
cibadmin --query | fix >"$here/cib-stopped.xml"
ls -l "$here"
