#!/bin/bash
# ceph.sh - a single-node Ceph for the tests (issue 26, point 6): one monitor,
# one manager, one OSD (bluestore on a sparse file), radosgw for S3, all on
# 127.0.0.1 with non-default ports, no systemd, everything under one
# directory. Started once per CI run (scripts/test.sh) and shared by the
# tests; a test that finds none starts its own and stops it at its end.
#
#   tests/lab/ceph.sh up | down | status | env
#   tests/lab/ceph.sh stop-rgw | start-rgw | stop-osd | start-osd   (fault tests)
#   . tests/lab/ceph.sh; ceph_lab_need   (in a test: reuse or start; exports
#                                         the env below; ceph_lab_release at
#                                         exit stops what it started)
#
# The env file ($CEPH_LAB_DIR/env) exports what tests need: CEPH_CONF,
# VMSH_CEPH_POOL (a pool for repositories), VMSH_S3_ENDPOINT (host:port of
# radosgw), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
CEPH_LAB_DIR=${CEPH_LAB_DIR:-/tmp/vmshadow-ceph-lab}
CEPH_LAB_MON_PORT=${CEPH_LAB_MON_PORT:-41300}
CEPH_LAB_RGW_PORT=${CEPH_LAB_RGW_PORT:-41480}
CEPH_LAB_MS_PORTS=${CEPH_LAB_MS_PORTS:-41800-41899}
CEPH_LAB_POOL=vmshadow-test
CEPH_LAB_AK=VMSHADOWLABACCESS000
CEPH_LAB_SK=vmshadowlabsecretkey000000000000000000000

_cl_log() { echo "ceph-lab: $*" >&2; }
# alive PID: exists and is not a zombie
_cl_alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null; }

_cl_conf() {
    local B=$CEPH_LAB_DIR
    cat >"$B/ceph.conf" <<EOF
[global]
fsid = $1
mon host = [v2:127.0.0.1:$CEPH_LAB_MON_PORT,v1:127.0.0.1:$((CEPH_LAB_MON_PORT + 1))]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind port min = ${CEPH_LAB_MS_PORTS%-*}
ms bind port max = ${CEPH_LAB_MS_PORTS#*-}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $B/\$name.keyring
run dir = $B/run
admin socket = $B/run/\$cluster-\$name.asok
pid file = $B/run/\$name.pid
log file = $B/log/\$name.log
log to syslog = false
err to syslog = false
crash dir = $B/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 5
mon data avail crit = 1

[mon]
keyring = $B/mon.\$id/keyring
mon data = $B/mon.\$id
mon cluster log file = $B/log/cluster.log
mon memory target = 536870912

[mgr]
mgr data = $B/mgr.\$id

[osd]
osd data = $B/osd.\$id
osd objectstore = bluestore
osd memory target = 1073741824
bluestore block create = true
bluestore block size = $((12 * 1024 * 1024 * 1024))
bluestore fsck on mkfs = false
bluestore fsck on mount = false

[client]
log file = $B/log/\$name.\$pid.log
admin socket =
# a client fails instead of waiting forever when the only OSD is gone
rados osd op timeout = 30
rados mon op timeout = 15
client mount timeout = 15

[client.rgw.x]
rgw data = $B/rgw.\$id
rgw frontends = beast endpoint=127.0.0.1:$CEPH_LAB_RGW_PORT
rgw dns name = localhost
log file = $B/log/\$name.log
admin socket = $B/run/\$cluster-\$name.asok
EOF
}

_cl_wait_osd() {
    local i
    for i in $(seq 1 120); do
        if ceph osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1' &&
            ceph mgr stat -f json 2>/dev/null | grep -q '"available":true'; then
            return 0
        fi
        sleep 1
    done
    _cl_log "OSD or mgr not up after 120 s"
    return 1
}

_cl_start_rgw() {
    local B=$CEPH_LAB_DIR i
    # 8>&- 9>&- (here and at every daemon start): a daemon must not inherit the
    # guest lab's lock descriptor, or it holds the lab for every later test
    radosgw -n client.rgw.x 8>&- 9>&- || return 1
    for i in $(seq 1 120); do
        curl -s -o /dev/null "http://127.0.0.1:$CEPH_LAB_RGW_PORT/" && return 0
        sleep 0.5
    done
    _cl_log "radosgw not answering after 60 s (log: $B/log/client.rgw.x.log)"
    return 1
}

_cl_start_osd() {
    ceph-osd -i 0 2>>"$CEPH_LAB_DIR/log/osd.0.start.err" 8>&- 9>&- && _cl_wait_osd || return 1
    # after a restart the monitor may still show the old OSD up: wait until
    # the pool really takes a write (not on the first start: no pool yet)
    ceph osd pool ls 2>/dev/null | grep -qx "$CEPH_LAB_POOL" || return 0
    local i
    for i in $(seq 1 60); do
        timeout 15 rados -p "$CEPH_LAB_POOL" put lab-probe /proc/self/stat 2>/dev/null && return 0
        sleep 1
    done
    _cl_log "the restarted OSD takes no writes after 60 tries"
    return 1
}

# Stops the daemons named by PID files (only if the PID is one of ours).
_cl_stop() {
    local f pid pids="" i
    for f in "$@"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq '(^|/)(ceph-(mon|mgr|osd)|radosgw) '; then
            kill -"${CEPH_LAB_SIG:-TERM}" "$pid" && pids="$pids $pid"
        fi
        rm -f "$f"
    done
    for pid in $pids; do
        for i in $(seq 1 100); do _cl_alive "$pid" || break; sleep 0.1; done
        _cl_alive "$pid" && kill -KILL "$pid"
    done
    return 0
}

ceph_lab_running() {
    [ -f "$CEPH_LAB_DIR/env" ] && [ -f "$CEPH_LAB_DIR/run/mon.a.pid" ] &&
        _cl_alive "$(cat "$CEPH_LAB_DIR/run/mon.a.pid")" &&
        CEPH_CONF=$CEPH_LAB_DIR/ceph.conf timeout 20 ceph health --connect-timeout 10 >/dev/null 2>&1
}

ceph_lab_up() {
    local B=$CEPH_LAB_DIR
    if [ -e "$B/ceph.conf" ]; then
        _cl_log "$B exists already: run '$0 down' first"
        return 1
    fi
    local cmd
    for cmd in ceph-mon ceph-mgr ceph-osd radosgw radosgw-admin ceph-authtool monmaptool; do
        command -v "$cmd" >/dev/null || { _cl_log "$cmd not installed (scripts/debian-packages.txt)"; return 1; }
    done
    mkdir -p "$B"/{log,run,mon.a,mgr.x,osd.0,rgw.x,tmp}
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    export CEPH_CONF=$B/ceph.conf
    _cl_conf "$fsid"
    ceph-authtool --create-keyring "$B/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null &&
        ceph-authtool --create-keyring "$B/client.admin.keyring" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null &&
        cp "$B/mon.keyring" "$B/tmp/mon-init.keyring" &&
        ceph-authtool "$B/tmp/mon-init.keyring" --import-keyring "$B/client.admin.keyring" >/dev/null &&
        monmaptool --create --fsid "$fsid" \
            --addv a "[v2:127.0.0.1:$CEPH_LAB_MON_PORT,v1:127.0.0.1:$((CEPH_LAB_MON_PORT + 1))]" \
            "$B/tmp/monmap" >/dev/null &&
        ceph-mon --mkfs -i a --monmap "$B/tmp/monmap" --keyring "$B/tmp/mon-init.keyring" &&
        ceph-mon -i a 8>&- 9>&- &&
        ceph -s --connect-timeout 30 >/dev/null &&
        ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$B/mgr.x.keyring" &&
        ceph-mgr -i x 8>&- 9>&- || { _cl_log "monitor or manager failed (logs in $B/log)"; return 1; }
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph osd new "$uuid") && [ "$id" = 0 ] &&
        ceph auth get-or-create osd.0 mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
            -o "$B/osd.0.keyring" &&
        ceph-osd -i 0 --mkfs --osd-uuid "$uuid" 2>"$B/log/osd.0.mkfs.err" &&
        _cl_start_osd || { _cl_log "OSD failed (logs in $B/log)"; return 1; }
    ceph osd pool create "$CEPH_LAB_POOL" 8 >/dev/null 2>&1 &&
        ceph osd pool application enable "$CEPH_LAB_POOL" rados >/dev/null 2>&1 ||
        { _cl_log "cannot create pool $CEPH_LAB_POOL"; return 1; }
    ceph auth get-or-create client.rgw.x mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
        -o "$B/client.rgw.x.keyring" && _cl_start_rgw || return 1
    radosgw-admin user create --uid=vmshadow-lab --display-name="vmshadow lab" \
        --access-key="$CEPH_LAB_AK" --secret-key="$CEPH_LAB_SK" >/dev/null 2>&1 ||
        { _cl_log "cannot create the S3 user"; return 1; }
    cat >"$B/env" <<EOF
export CEPH_CONF=$B/ceph.conf
export VMSH_CEPH_POOL=$CEPH_LAB_POOL
export VMSH_S3_ENDPOINT=127.0.0.1:$CEPH_LAB_RGW_PORT
export AWS_ACCESS_KEY_ID=$CEPH_LAB_AK
export AWS_SECRET_ACCESS_KEY=$CEPH_LAB_SK
export AWS_DEFAULT_REGION=us-east-1
EOF
    _cl_log "up: $(ceph health 2>/dev/null); env in $B/env"
}

ceph_lab_down() {
    local B=$CEPH_LAB_DIR
    [ -d "$B" ] || return 0
    _cl_stop "$B/run/client.rgw.x.pid"
    _cl_stop "$B/run/osd.0.pid" "$B/run/mgr.x.pid"
    _cl_stop "$B/run/mon.a.pid"
    rm -rf "$B"
}

# In a test: use the running lab or start one (stopped again by
# ceph_lab_release, which the test calls from its exit trap).
CEPH_LAB_OWNED=0
ceph_lab_need() {
    if ! ceph_lab_running; then
        (
            exec 9>"$CEPH_LAB_DIR.lock"
            flock 9
            ceph_lab_running && exit 0
            [ -e "$CEPH_LAB_DIR/ceph.conf" ] && ceph_lab_down # a dead one's remains
            ceph_lab_up >&2
        ) || { ceph_lab_down; return 1; }
        CEPH_LAB_OWNED=1
    fi
    # shellcheck disable=SC1091
    . "$CEPH_LAB_DIR/env"
}
# ceph_lab_forget NAME [rados|s3|both]: a test's repository goes from the
# shared pool (its objects under NAME/) and gateway (bucket NAME); nothing
# when the lab is the test's own (it goes whole) or no pool is known.
ceph_lab_forget() {
    [ -n "${1:-}" ] && [ "${CEPH_LAB_OWNED:-1}" = 0 ] && [ -n "${VMSH_CEPH_POOL:-}" ] || return 0
    if [ "${2:-both}" != s3 ]; then
        rados -p "$VMSH_CEPH_POOL" ls 2>/dev/null | grep "^$1/" | xargs -r -n 64 rados -p "$VMSH_CEPH_POOL" rm
    fi
    if [ "${2:-both}" != rados ]; then
        radosgw-admin bucket rm --bucket="$1" --purge-objects >/dev/null 2>&1
    fi
    return 0
}

ceph_lab_release() {
    [ "$CEPH_LAB_OWNED" = 1 ] && ceph_lab_down
    CEPH_LAB_OWNED=0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    export CEPH_CONF=$CEPH_LAB_DIR/ceph.conf
    case "${1:-}" in
    up)
        ceph_lab_running && { _cl_log "already running"; exit 0; }
        [ -e "$CEPH_LAB_DIR/ceph.conf" ] && ceph_lab_down
        ceph_lab_up || { ceph_lab_down; exit 1; }
        ;;
    down) ceph_lab_down ;;
    status) if ceph_lab_running; then ceph -s; else echo "not running"; exit 1; fi ;;
    env) cat "$CEPH_LAB_DIR/env" ;;
    stop-rgw) _cl_stop "$CEPH_LAB_DIR/run/client.rgw.x.pid" ;;
    start-rgw) _cl_start_rgw ;;
    stop-osd) CEPH_LAB_SIG=KILL _cl_stop "$CEPH_LAB_DIR/run/osd.0.pid" ;;
    start-osd) _cl_start_osd ;;
    *) echo "usage: $0 up|down|status|env|stop-rgw|start-rgw|stop-osd|start-osd" >&2; exit 2 ;;
    esac
fi
