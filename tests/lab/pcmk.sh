#!/bin/bash
# pcmk.sh - a single-node Corosync 3 + Pacemaker 2.1 cluster for the tests
# (issue 22, SPEC R16), started and stopped without systemd.
#
#   tests/lab/pcmk.sh up        start it (fails if a corosync already runs)
#   tests/lab/pcmk.sh down      stop what `up` started, by PID, and remove its dir
#   tests/lab/pcmk.sh status    exit 0 when a cluster answers (crm_mon -1)
# or source it and call pcmk_up / pcmk_down / pcmk_answers / pcmk_rsc_wait.
#
# How: corosync (knet on 127.0.0.1, one node "labnode") and pacemakerd run as
# plain background processes in a private mount namespace in which
# /var/lib/pacemaker, /var/log/pacemaker and /run/resource-agents are bind
# mounts of directories under $PCMK_DIR, so all state stays there. The CIB is
# seeded (stonith off, no-quorum-policy=ignore, dc-deadtime=2s: a lone node
# waits 20 s for a DC otherwise), which brings the node online as DC in a
# few seconds. The command-line tools (cibadmin, crm_mon, crm_resource) talk to
# the daemons over libqb IPC (abstract sockets, /dev/shm) from anywhere.
# Outside $PCMK_DIR only corosync's lock /var/run/corosync.pid and the libqb
# files in /dev/shm are written; the daemons remove both when they stop.
#
# Environment: VMSH_PCMK_DIR (default /var/tmp/vmshadow-pcmk),
# VMSH_PCMK_PORT (knet port on 127.0.0.1, default 45405).

PCMK_DIR=${VMSH_PCMK_DIR:-/var/tmp/vmshadow-pcmk}
PCMK_PORT=${VMSH_PCMK_PORT:-45405}
PCMK_NODE=labnode

pcmk_log() { echo "pcmk: $*" >&2; }

# 0 when a cluster's CIB answers (ours or one already running).
pcmk_answers() { command -v cibadmin >/dev/null && cibadmin -Q -o nodes >/dev/null 2>&1; }

# alive PID: exists and is not a zombie
pcmk_alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null; }
pcmk_is_ours() { pcmk_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"; }

pcmk_up() {
    local i
    for i in corosync pacemakerd cibadmin crm_mon crm_resource; do
        command -v "$i" >/dev/null || { pcmk_log "$i is not installed (scripts/install-deps.sh)"; return 1; }
    done
    if [ -e "$PCMK_DIR/corosync.conf" ]; then
        pcmk_log "$PCMK_DIR exists (a cluster of ours runs, or a stale one: tests/lab/pcmk.sh down)"
        return 1
    fi
    if [ -e /var/run/corosync.pid ] && pgrep -F /var/run/corosync.pid >/dev/null 2>&1; then
        pcmk_log "another corosync runs on this host"
        return 1
    fi
    mkdir -p "$PCMK_DIR"/{log,run,corosync,lib/{cib,pengine,blackbox,cores},ra-tmp}
    chown -R hacluster:haclient "$PCMK_DIR/lib" "$PCMK_DIR/log"
    chmod 750 "$PCMK_DIR"/lib/*
    chmod 770 "$PCMK_DIR/log"
    cat >"$PCMK_DIR/corosync.conf" <<EOF
totem {
    version: 2
    cluster_name: vmshlab
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
    interface {
        linknumber: 0
        mcastport: $PCMK_PORT
    }
}
nodelist {
    node {
        ring0_addr: 127.0.0.1
        name: $PCMK_NODE
        nodeid: 1
    }
}
quorum {
    provider: corosync_votequorum
}
logging {
    to_logfile: yes
    logfile: $PCMK_DIR/log/corosync.log
    to_syslog: no
    to_stderr: no
    timestamp: on
}
system {
    state_dir: $PCMK_DIR/corosync
}
EOF
    corosync -t -c "$PCMK_DIR/corosync.conf" >/dev/null || { pcmk_log "corosync.conf refused"; return 1; }
    # no-quorum-policy=ignore keeps resources running, but the CIB still says
    # whether there is quorum (one node of one has it); vmshadow refuses to act
    # without it (issue 22 point 4).
    cat >"$PCMK_DIR/lib/cib/cib.xml" <<'EOF'
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="opt-no-quorum-policy" name="no-quorum-policy" value="ignore"/>
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-pe-input-series-max" name="pe-input-series-max" value="20"/>
        <nvpair id="opt-cluster-recheck-interval" name="cluster-recheck-interval" value="1min"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
EOF
    chown hacluster:haclient "$PCMK_DIR/lib/cib/cib.xml"
    chmod 600 "$PCMK_DIR/lib/cib/cib.xml"
    cat >"$PCMK_DIR/run/launch.sh" <<EOF
#!/bin/bash
set -e
mount --bind "$PCMK_DIR/lib" /var/lib/pacemaker
mount --bind "$PCMK_DIR/log" /var/log/pacemaker
mkdir -p /run/resource-agents
mount --bind "$PCMK_DIR/ra-tmp" /run/resource-agents
setsid corosync -f -c "$PCMK_DIR/corosync.conf" </dev/null >>"$PCMK_DIR/log/corosync.stdout" 2>&1 &
echo \$! >"$PCMK_DIR/run/corosync.pid"
for i in \$(seq 1 100); do corosync-cfgtool -s >/dev/null 2>&1 && break; sleep 0.1; done
export PCMK_logfile="$PCMK_DIR/log/pacemaker.log" PCMK_logfacility=none PCMK_blackbox=no
setsid pacemakerd </dev/null >>"$PCMK_DIR/log/pacemakerd.stdout" 2>&1 &
echo \$! >"$PCMK_DIR/run/pacemakerd.pid"
EOF
    chmod +x "$PCMK_DIR/run/launch.sh"
    # 9>&-: the daemons must not hold the lab's lock descriptor
    unshare --mount --propagation private "$PCMK_DIR/run/launch.sh" 8>&- 9>&- ||
        { pcmk_log "launch failed"; pcmk_down; return 1; }
    for i in $(seq 1 300); do
        pcmk_answers && break
        [ "$i" = 300 ] && { pcmk_log "the CIB does not answer after 30 s"; pcmk_down; return 1; }
        sleep 0.1
    done
    for i in $(seq 1 600); do
        crm_mon -1 2>/dev/null | grep -q "Current DC: $PCMK_NODE" &&
            crm_mon -1 2>/dev/null | grep -q "Online: \[ $PCMK_NODE \]" && break
        [ "$i" = 600 ] && { pcmk_log "$PCMK_NODE is not DC after 120 s"; crm_mon -1 >&2; pcmk_down; return 1; }
        sleep 0.2
    done
    pcmk_log "cluster up: corosync $(cat "$PCMK_DIR/run/corosync.pid"), pacemakerd $(cat "$PCMK_DIR/run/pacemakerd.pid") ($PCMK_DIR)"
}

# Stops what pcmk_up started, by the PIDs it recorded (pacemakerd first: it
# stops the resources, then its children; then corosync), and removes the dir.
pcmk_down() {
    local p c kids k i
    if [ -f "$PCMK_DIR/run/pacemakerd.pid" ]; then
        p=$(cat "$PCMK_DIR/run/pacemakerd.pid")
        if pcmk_is_ours "$p" pacemakerd; then
            kids=$(pgrep -P "$p" | paste -sd' ')
            kill -TERM "$p"
            for i in $(seq 1 600); do pcmk_alive "$p" || break; sleep 0.1; done
            pcmk_alive "$p" && { pcmk_log "pacemakerd $p still alive after 60 s: SIGKILL"; kill -KILL "$p" $kids 2>/dev/null; }
            for k in $kids; do
                for i in $(seq 1 50); do pcmk_alive "$k" || break; sleep 0.1; done
                pcmk_alive "$k" && kill -KILL "$k" 2>/dev/null
            done
        fi
        rm -f "$PCMK_DIR/run/pacemakerd.pid"
    fi
    if [ -f "$PCMK_DIR/run/corosync.pid" ]; then
        c=$(cat "$PCMK_DIR/run/corosync.pid")
        if pcmk_is_ours "$c" "corosync -f -c $PCMK_DIR"; then
            kill -TERM "$c"
            for i in $(seq 1 100); do pcmk_alive "$c" || break; sleep 0.1; done
            pcmk_alive "$c" && { pcmk_log "corosync $c still alive: SIGKILL"; kill -KILL "$c"; }
        fi
        rm -f "$PCMK_DIR/run/corosync.pid"
    fi
    if [ "${PCMK_KEEP:-0}" != 1 ]; then rm -rf "$PCMK_DIR"; fi
    return 0
}

# In a test: the cluster that answers (the run's shared one), else one of
# the test's own under DIR (never a shared cluster's directory), which
# pcmk_test_release stops. PCMK_OWN says which.
PCMK_OWN=0
pcmk_test_need() {
    PCMK_OWN=0
    pcmk_answers && return 0
    PCMK_DIR=$1
    pcmk_up || return 1
    PCMK_OWN=1
}
pcmk_test_release() {
    [ "$PCMK_OWN" = 1 ] && pcmk_down
    return 0
}

# pcmk_rsc_role RSC: "Started NODE", "Stopped", "Failed ..." etc. from
# crm_mon's XML (role and node of the resource's single instance).
pcmk_rsc_role() {
    crm_mon --output-as=xml 2>/dev/null | awk -v r="$1" '
        /<resource / && index($0, "id=\"" r "\"") {
            role = $0; sub(/.*role="/, "", role); sub(/".*/, "", role)
            failed = ($0 ~ /failed="true"/) ? " failed" : ""
            managed = ($0 ~ /managed="false"/) ? " unmanaged" : ""
            getline nxt
            node = ""
            if (nxt ~ /<node /) { node = nxt; sub(/.*name="/, "", node); sub(/".*/, "", node) }
            print role (node != "" ? " " node : "") failed managed; exit }'
}

# pcmk_rsc_wait RSC REGEX [SECONDS]: until pcmk_rsc_role matches (default 60 s).
pcmk_rsc_wait() {
    local i n=$((${3:-60} * 5)) r
    for i in $(seq 1 "$n"); do
        r=$(pcmk_rsc_role "$1")
        [[ $r =~ $2 ]] && return 0
        sleep 0.2
    done
    pcmk_log "$1: '$r' never matched '$2'"
    return 1
}

# pcmk_vm_add RSC CONFIG_XML [MONITOR_INTERVAL]: an ocf:heartbeat:VirtualDomain
# resource whose `config` is CONFIG_XML (the agent defines and starts the
# domain from that file; qemu:///system), with a monitor every 5 s by default.
pcmk_vm_add() {
    local r=$1 cfg=$2 iv=${3:-5s}
    cibadmin --create -o resources --xml-text "<primitive id='$r' class='ocf' provider='heartbeat' type='VirtualDomain'>
  <instance_attributes id='$r-ia'>
    <nvpair id='$r-config' name='config' value='$cfg'/>
    <nvpair id='$r-hypervisor' name='hypervisor' value='qemu:///system'/>
  </instance_attributes>
  <meta_attributes id='$r-meta'/>
  <operations>
    <op id='$r-start' name='start' interval='0s' timeout='120s'/>
    <op id='$r-stop' name='stop' interval='0s' timeout='90s'/>
    <op id='$r-monitor' name='monitor' interval='$iv' timeout='30s'/>
  </operations>
</primitive>"
}

# pcmk_rsc_remove RSC: stops it through the cluster, then deletes it and its
# history (nothing of a test stays in a shared cluster).
pcmk_rsc_remove() {
    local r=$1
    cibadmin -Q -o resources 2>/dev/null | grep -q "id=\"$r\"" || return 0
    crm_resource --resource "$r" --meta --set-parameter is-managed --parameter-value true >/dev/null 2>&1
    crm_resource --resource "$r" --meta --set-parameter target-role --parameter-value Stopped >/dev/null 2>&1
    pcmk_rsc_wait "$r" '^Stopped' 90 || true
    cibadmin --delete -o resources --xml-text "<primitive id='$r'/>" >/dev/null 2>&1
    crm_resource --cleanup --resource "$r" >/dev/null 2>&1
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case ${1:-} in
    up) pcmk_up ;;
    down) pcmk_down ;;
    status) pcmk_answers && crm_mon -1 ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
    esac
fi
