# repo-store.sh - the repository on an object store, end to end (issue 26,
# points 1, 6 and 7); sourced by t-repo-rados.sh and t-repo-s3.sh with
# STORE=rados or s3. Against the real single-node Ceph (tests/lab/ceph.sh:
# reused when running, else started here and stopped at the end):
#  - init, backups (the repository tool's, and one real VM backup of a
#    shut-off lab VM), list, show, verify, restore/extract byte-identical,
#    prune and gc, as on a local repository;
#  - wrong credentials, a pool or bucket that does not exist: a clear error;
#  - the store's daemon stopped in the middle of a backup (the OSD for
#    RADOS, radosgw for S3): the backup fails with a clear error, nothing of
#    it is visible, and the next backup after the daemon returns succeeds;
#  - S3: an endpoint that accepts and never answers times out (store-timeout),
#    never a hang.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
. "$VMSH_SOURCE_DIR/tests/lab/ceph.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
# VMSH_STORE_NO_GUESTS=1 (a developer's knob): no lab lock and no VM part,
# for running the store checks while the guest lab is busy
if [ "${VMSH_STORE_NO_GUESTS:-0}" = 1 ]; then
    LAB_WORK=$(mktemp -d "/var/tmp/repo-store.XXXXXX")
    lab_cleanup() { rm -rf "$LAB_WORK"; }
else
    lab_init
fi
e2e_env
STALL_PID=
BG_PID=
store_cleanup() {
    [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null
    [ -n "$STALL_PID" ] && kill "$STALL_PID" 2>/dev/null
    # a daemon this test stopped comes back for the next test
    if [ "${RESTART:-}" = osd ]; then "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" start-osd >/dev/null 2>&1; fi
    if [ "${RESTART:-}" = rgw ]; then "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" start-rgw >/dev/null 2>&1; fi
    # the test's repository goes (the pool and the gateway are shared)
    ceph_lab_forget "${U:-}" "$STORE"
    ceph_lab_release
    lab_cleanup
}
trap store_cleanup EXIT
ceph_lab_need || fail "cannot start the Ceph lab (tests/lab/ceph.sh)"
pass "the Ceph lab runs ($([ "$CEPH_LAB_OWNED" = 1 ] && echo "started here" || echo shared))"
unset VMSHADOW_KEY_FILE
# quick failures in the fault cases: the config's keys (docs/config.md)
# for vmshadow, the environment's for the repository tool
printf 'store-timeout = 5\nstore-lease-seconds = 10\n' >"$VMSHADOW_CONFIG"
export VMSHADOW_STORE_TIMEOUT=5 VMSHADOW_STORE_LEASE_SECONDS=10

U=vmsh-e2e-$$-$RANDOM
case $STORE in
rados)
    export VMSHADOW_REPO=rados://$VMSH_CEPH_POOL/$U
    MISSING=rados://no-such-pool-$$/r
    ;;
s3)
    export VMSHADOW_REPO=s3+http://$VMSH_S3_ENDPOINT/$U/repo
    MISSING=s3+http://$VMSH_S3_ENDPOINT/no-such-bucket-$$/r
    ;;
esac

# images: holes, text, random; b differs from a in 64 KiB
truncate -s 16M "$LAB_WORK/a.img"
yes "vmshadow store line" | head -c 3M | dd of="$LAB_WORK/a.img" conv=notrunc status=none
head -c 6M /dev/urandom | dd of="$LAB_WORK/a.img" bs=1M seek=8 conv=notrunc status=none
cp --sparse=always "$LAB_WORK/a.img" "$LAB_WORK/b.img"
head -c 64K /dev/urandom | dd of="$LAB_WORK/b.img" bs=64K seek=3 conv=notrunc status=none

vsh list
check "list before init: no repository (exit 1)" test "$RC" = 1
check "and says so" grep -qE "no repository|no bucket" <<<"$ERR"
vsh init
check "init of $VMSHADOW_REPO" test "$RC" = 0
check "init says where" grep -q "created repository .* at $VMSHADOW_REPO" <<<"$OUT"
vsh init
check "a second init is refused" test "$RC" = 1
check "as not empty" grep -q "not empty" <<<"$ERR"

tool_backup() { # IMG -> ID in $BID
    OUT=$("$TOOL" backup --doc "{\"vms\":[{\"name\":\"vm-$1\",\"method\":\"saved-state\"}]}" \
        "$VMSHADOW_REPO" "vm/disk.img=$LAB_WORK/$1.img" "vm/domain.xml=buf:<domain/>" 2>"$LAB_WORK/stderr")
    RC=$?
    ERR=$(cat "$LAB_WORK/stderr")
    BID=$(jq -r .backup <<<"$OUT" 2>/dev/null)
}
ids=()
for img in a b a; do
    tool_backup "$img"
    [ "$RC" = 0 ] || fail "backup of $img: $ERR"
    ids+=("$BID")
    sleep 1.1
done
pass "three backups into $STORE"
vsh --json list
check "list shows 3 backups" test "$(jq '.backups | length' <<<"$OUT")" = 3
check "the third deduplicated against the first" \
    test "$(jq "[.backups[] | select(.id == \"${ids[2]}\")][0].stored_bytes" <<<"$OUT")" -lt 1048576
vsh show "${ids[1]:0:8}"
check "show by prefix" grep -q "vm/disk.img" <<<"$OUT"
vsh verify
check "verify: no damage" test "$RC" = 0
check "verify checked 3 backups" grep -q "verified 3 backups" <<<"$OUT"
for i in 0 1; do
    img=$([ $i = 0 ] && echo a || echo b)
    "$TOOL" restore "$VMSHADOW_REPO" "${ids[$i]}" vm/disk.img "$LAB_WORK/out.img" 2>"$LAB_WORK/stderr" ||
        fail "restore: $(cat "$LAB_WORK/stderr")"
    check "restore of backup $((i + 1)) is byte-identical" cmp -s "$LAB_WORK/$img.img" "$LAB_WORK/out.img"
    rm -f "$LAB_WORK/out.img"
done
vsh extract "${ids[1]}" vm/disk.img "$LAB_WORK/x.img"
check "extract is byte-identical" cmp -s "$LAB_WORK/b.img" "$LAB_WORK/x.img"

# One real VM backup: a shut-off lab VM, read from its disk image.
if [ "${VMSH_STORE_NO_GUESTS:-0}" != 1 ]; then
lab_guest_define s --no-agent
SD=$(lab_domname s)
vsh --json backup "$SD"
VID=$(jq -r .backup <<<"$OUT" 2>/dev/null)
check "backup of a shut-off VM into $STORE" test "$RC" = 0 -a -n "$VID" -a "$VID" != null
src=$(lab_virsh domblklist "$SD" --details | awk '$2 == "disk" {print $4; exit}')
vsh extract "$VID" "$SD/disk/vda" "$LAB_WORK/vda.raw"
check "its disk, extracted, equals the VM's image" \
    qemu-img compare -q -f raw "$LAB_WORK/vda.raw" "$src"
rm -f "$LAB_WORK/vda.raw"
fi

# keep the last file backup (and the VM's): the first two go, b's index with them
KEEP=$([ "${VMSH_STORE_NO_GUESTS:-0}" = 1 ] && echo 1 || echo 2)
vsh --json prune --keep-last "$KEEP"
check "prune --keep-last $KEEP" test "$RC" = 0 -a "$(jq '.forget | length' <<<"$OUT")" = 2
vsh --json gc
check "gc" test "$RC" = 0
check "gc deleted what only the pruned backups needed" test "$(jq .indexes_deleted <<<"$OUT")" -ge 1
vsh verify
check "verify after prune and gc" test "$RC" = 0
"$TOOL" restore "$VMSHADOW_REPO" "${ids[2]}" vm/disk.img "$LAB_WORK/out.img" 2>"$LAB_WORK/stderr" ||
    fail "restore after gc: $(cat "$LAB_WORK/stderr")"
check "restore after gc is byte-identical" cmp -s "$LAB_WORK/a.img" "$LAB_WORK/out.img"
rm -f "$LAB_WORK/out.img"

# ---- bad input ----
if [ "$STORE" = s3 ]; then
    AWS_SECRET_ACCESS_KEY=wrong-secret vsh list
    check "wrong S3 secret: exit 1" test "$RC" = 1
    check "says wrong credentials" grep -q "wrong credentials" <<<"$ERR"
    AWS_ACCESS_KEY_ID=NOSUCHKEY0000000 vsh list
    check "unknown S3 access key: exit 1 and says so" \
        bash -c '[ "$1" = 1 ] && grep -q "wrong credentials" <<<"$2"' _ "$RC" "$ERR"
else
    printf '[client.admin]\n\tkey = AQBvaVFlAAAAABAAcDdW2yPGfqhXkZ4tQmw3zQ==\n' >"$LAB_WORK/bad.keyring"
    printf 'store-timeout = 5\nceph-keyring = %s\n' "$LAB_WORK/bad.keyring" >"$LAB_WORK/bad.conf"
    VMSHADOW_CONFIG=$LAB_WORK/bad.conf vsh list
    check "wrong Ceph key: exit 1" test "$RC" = 1
    check "says so" grep -qi "ceph" <<<"$ERR"
fi
vsh -r "$MISSING" list
check "a missing pool/bucket: exit 1" test "$RC" = 1
check "named in the error" grep -qE "no (Ceph pool|bucket)" <<<"$ERR"
vsh -r "${STORE}://" list
check "a bad URL is refused" test "$RC" != 0
check "with the URL's form" grep -qi "want\|bad repository URL\|unknown repository" <<<"$ERR"

# ---- the store goes away in the middle of a backup ----
# The daemon goes once the backup has stored its first pack: mid-backup
# (512 MiB of random data is 8 packs; one upload thread).
head -c 512M /dev/urandom >"$LAB_WORK/big.img"
packs() {
    if [ "$STORE" = rados ]; then
        rados -p "$VMSH_CEPH_POOL" ls 2>/dev/null | grep -c "^$U/packs/"
    else
        radosgw-admin bucket list --bucket="$U" --max-entries=10000 2>/dev/null | grep -c '"name": "repo/packs/'
    fi
}
vsh --json list
before=$(jq -c '[.backups[].id] | sort' <<<"$OUT")
p0=$(packs)
VMSHADOW_STORE_THREADS=1 "$TOOL" backup --doc '{"vms":[{"name":"vm-big","method":"saved-state"}]}' "$VMSHADOW_REPO" \
    "vm/disk.img=$LAB_WORK/big.img" >"$LAB_WORK/big.out" 2>"$LAB_WORK/big.err" &
BG_PID=$!
for _ in $(seq 300); do
    [ "$(packs)" -gt "$p0" ] && break
    kill -0 "$BG_PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$BG_PID" 2>/dev/null || fail "the backup ended before its first pack was seen: $(cat "$LAB_WORK/big.err")"
np=$(($(packs) - p0))
if [ "$STORE" = rados ]; then
    RESTART=osd
    "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" stop-osd
else
    RESTART=rgw
    "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" stop-rgw
fi
pass "the $([ "$STORE" = rados ] && echo OSD || echo gateway) went away after $np of the backup's packs"
t0=$(date +%s)
wait "$BG_PID"
brc=$?
BG_PID=
check "the backup fails when the store goes away (exit $brc)" test "$brc" != 0
check "with a clear error" grep -qiE "timed out|did not answer|stalled|connect|failed" "$LAB_WORK/big.err"
echo "# error: $(head -c 300 "$LAB_WORK/big.err")"
echo "# it failed $(($(date +%s) - t0)) s after the store went away"
if [ "$STORE" = rados ]; then
    "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" start-osd || fail "OSD restart"
else
    "$VMSH_SOURCE_DIR/tests/lab/ceph.sh" start-rgw || fail "radosgw restart"
fi
RESTART=
vsh --json list
check "nothing of the failed backup is visible" test "$(jq -c '[.backups[].id] | sort' <<<"$OUT")" = "$before"
vsh verify
check "verify after the failure: no damage" test "$RC" = 0
# The failed backup could not release its lease while the store was away:
# it expires (store-lease-seconds, 10 s here); until then a backup is busy.
t0=$(date +%s)
for _ in $(seq 30); do
    tool_backup b
    [ "$RC" = 0 ] && break
    grep -q "busy" <<<"$ERR" || break
    sleep 1
done
check "the next backup succeeds ($ERR)" test "$RC" = 0
echo "# it succeeded $(($(date +%s) - t0)) s after the store returned (the dead backup's lease expiring)"
"$TOOL" restore "$VMSHADOW_REPO" "$BID" vm/disk.img "$LAB_WORK/out.img" 2>/dev/null
check "and restores byte-identical" cmp -s "$LAB_WORK/b.img" "$LAB_WORK/out.img"
vsh --json gc
check "gc after the failure" test "$RC" = 0
vsh verify
check "verify at the end" test "$RC" = 0

# ---- a stalling store: accepts, never answers ----
if [ "$STORE" = s3 ]; then
    python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' >"$LAB_WORK/stall.port" &
    STALL_PID=$!
    for _ in $(seq 50); do [ -s "$LAB_WORK/stall.port" ] && break; sleep 0.1; done
    PORT=$(cat "$LAB_WORK/stall.port")
    t0=$(date +%s)
    OUT=$(timeout 120 "$VMSHADOW" -r "s3+http://127.0.0.1:$PORT/b/r" list 2>"$LAB_WORK/stderr")
    RC=$?
    ERR=$(cat "$LAB_WORK/stderr")
    check "a stalling endpoint fails, no hang (exit $RC)" test "$RC" = 1
    check "and says it stalled" grep -q "stalled" <<<"$ERR"
    echo "# stalled store gave up after $(($(date +%s) - t0)) s: $ERR"
    kill "$STALL_PID" 2>/dev/null
    wait "$STALL_PID" 2>/dev/null
    STALL_PID=

    # ---- a server that repeats its listing's continuation token ----
    # (R7: a store that misbehaves ends in an error, never a loop; init lists
    # the prefix to see that it is empty)
    python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, body=b""):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_HEAD(self): self.reply()
    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0))); self.reply()
    def do_GET(self):
        self.reply(b"<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated>"
                   b"<NextContinuationToken>again</NextContinuationToken></ListBucketResult>")
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
' >"$LAB_WORK/loop.port" &
    STALL_PID=$! # the cleanup ends it too
    for _ in $(seq 50); do [ -s "$LAB_WORK/loop.port" ] && break; sleep 0.1; done
    PORT=$(cat "$LAB_WORK/loop.port")
    OUT=$(timeout 60 "$VMSHADOW" -r "s3+http://127.0.0.1:$PORT/b/r" init 2>"$LAB_WORK/stderr")
    RC=$?
    ERR=$(cat "$LAB_WORK/stderr")
    check "a repeated continuation token fails, no loop (exit $RC)" test "$RC" = 1
    check "and says so" grep -q "repeated its continuation token" <<<"$ERR"
    kill "$STALL_PID" 2>/dev/null
    wait "$STALL_PID" 2>/dev/null
    STALL_PID=
fi

e2e_done
