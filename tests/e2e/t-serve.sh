#!/bin/bash
# Serving a backed-up disk over NBD (issue 23 point 1, issue 21 point 3), on
# a real backup of a shut-off lab VM:
#  - `qemu-img compare` of the export (nbd+unix) against `extract` of the
#    same disk passes;
#  - four concurrent readers (qemu-img convert) and one nbdcopy with
#    multi-conn get the same bytes;
#  - `nbdinfo --map` reports exactly the stored chunks as data and the rest
#    as holes/zeros; the export is read-only and advertises multi-conn;
#  - gc refuses while serving, naming serve and the PID; it runs after;
#  - SIGTERM ends it cleanly: exit 0, servers gone, sockets and the private
#    directory removed; SIGKILL of `serve` takes its servers with it, and the
#    socket left behind is refused without --force and replaced with it;
#  - a damaged chunk is a read error, never wrong bytes;
#  - an encrypted repository is served with its key file and refused
#    without it;
#  - bad input (no such backup, VM, disk; --socket on a regular file;
#    wrong arguments) is a clear error and changes nothing.
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
# one guest at a time: shares the lab with another one-guest test (lab.sh)
LAB_GUESTS=1
lab_init
e2e_env
SERVE_PID=
stop_serve() { [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null; SERVE_PID=; return 0; }
trap 'stop_serve; lab_cleanup' EXIT
jqe() { jq -e "$@" >/dev/null; }

lab_guest_define g
G=$(lab_domname g)
DISK=$(lab_disk g)
# Data where the ext4 image has none, with a hole between: the export must
# carry both (the VM stays shut off: nothing else writes the image).
qemu-io -f qcow2 -c 'write -P 0x5a 40M 3M' -c 'write -P 0xa5 50M 100k' "$DISK" >/dev/null ||
    fail "qemu-io"

vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of the shut-off VM" test "$RC" = 0 -a -n "$ID" -a "$ID" != null
vsh extract "$ID" "$G/disk/vda" "$LAB_WORK/vda.raw"
check "extract of its disk" test "$RC" = 0

# start_serve ARGS...: runs `vmshadow --json serve ARGS` in the background and
# waits for its document (printed once every server listens).
start_serve() {
    : > "$LAB_WORK/serve.json"
    "$VMSHADOW" --json serve "$@" >"$LAB_WORK/serve.json" 2>"$LAB_WORK/serve.err" &
    SERVE_PID=$!
    for _ in $(seq 300); do
        # (jq -e succeeds on an empty file: the document must be there)
        [ -s "$LAB_WORK/serve.json" ] && jq -e .disks "$LAB_WORK/serve.json" >/dev/null 2>&1 && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$LAB_WORK/serve.err" >&2
    return 1
}

start_serve "$ID" "$G"
check "serve starts and prints its document" test $? = 0
URI=$(jq -r '.disks[0].uri' "$LAB_WORK/serve.json")
SOCK=$(jq -r '.disks[0].socket' "$LAB_WORK/serve.json")
NBDKIT=$(jq -r '.disks[0].pid' "$LAB_WORK/serve.json")
check "one disk, vda, its file and size" \
    jqe --arg f "$G/disk/vda" --argjson s "$(stat -c %s "$LAB_WORK/vda.raw")" \
    '(.disks | length) == 1 and .disks[0].disk == "vda" and .disks[0].file == $f and .disks[0].size == $s and .error == null' \
    "$LAB_WORK/serve.json"
check "the URI is nbd+unix on the socket" test "$URI" = "nbd+unix:///?socket=$SOCK" -a -S "$SOCK"
check "the socket is in a private directory" test "$(stat -c %a "$(dirname "$SOCK")")" = 700

check "qemu-img compare of the export against extract passes" \
    qemu-img compare -q -f raw -F raw "$LAB_WORK/vda.raw" "$URI"
check "the export holds the data written before the backup" \
    cmp -s <(qemu-io -r -f raw -c 'read -P 0x5a 40M 3M' "$URI" | grep -c 'read 3145728') <(echo 1)

readers=()
for i in 1 2 3 4; do
    qemu-img convert -f raw -O raw "$URI" "$LAB_WORK/reader$i.raw" &
    readers+=($!)
done
wait "${readers[@]}"
for i in 1 2 3 4; do
    check "concurrent reader $i read the same bytes" cmp -s "$LAB_WORK/vda.raw" "$LAB_WORK/reader$i.raw"
done
nbdcopy --connections=4 "$URI" "$LAB_WORK/nbdcopy.raw"
check "nbdcopy over 4 connections read the same bytes" cmp -s "$LAB_WORK/vda.raw" "$LAB_WORK/nbdcopy.raw"

INFO=$(nbdinfo --json "$URI")
check "read-only, multi-conn" jqe '.exports[0]."is_read_only" == true and .exports[0]."can_multi_conn" == true' <<<"$INFO"
# The map: data exactly where extract's image has a non-zero 64 KiB chunk
# (backups store only those), holes/zeros elsewhere.
nbdinfo --map "$URI" > "$LAB_WORK/map.txt"
check "the map reports holes" grep -q 'hole,zero' "$LAB_WORK/map.txt"
map_data=$(awk '$3 == 0 { s += $2 } END { print s + 0 }' "$LAB_WORK/map.txt")
want_data=$(python3 - "$LAB_WORK/vda.raw" <<'PY'
import sys
n = 0
with open(sys.argv[1], 'rb') as f:
    while True:
        b = f.read(65536)
        if not b:
            break
        if b.count(0) != len(b):
            n += len(b)
print(n)
PY
)
check "data extents = the non-zero chunks ($map_data = $want_data bytes)" test "$map_data" = "$want_data"
check "the 3 MiB written at 40 MiB is data" \
    awk '$3 == 0 && $1 <= 41943040 && $1 + $2 >= 41943040 + 3145728 { ok = 1 } END { exit !ok }' "$LAB_WORK/map.txt"

vsh gc
check "gc refuses while serving (exit 4)" test "$RC" = 4
check "and says serve holds the read lock, naming a PID" grep -q 'serve.*PID [0-9]' <<<"$ERR"

kill -TERM "$SERVE_PID"
wait "$SERVE_PID"; rc=$?
SERVE_PID=
check "SIGTERM: serve exits 0" test "$rc" = 0
check "the server is gone" test ! -e "/proc/$NBDKIT"
check "the socket and its directory are gone" test ! -e "$SOCK" -a ! -e "$(dirname "$SOCK")"
vsh gc
check "gc runs once serving ended" test "$RC" = 0

# --socket, and a serve killed by SIGKILL: its server goes with it; the
# stale socket is refused, then replaced with --force.
S2=$LAB_WORK/vda.sock
start_serve --socket "$S2" "$ID" "$G" vda
check "serve --socket DISK" test $? = 0 -a -S "$S2"
NBDKIT=$(jq -r '.disks[0].pid' "$LAB_WORK/serve.json")
kill -KILL "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null; SERVE_PID=
for _ in $(seq 50); do [ -e "/proc/$NBDKIT" ] || break; sleep 0.1; done
check "SIGKILL of serve: its server exits too" test ! -e "/proc/$NBDKIT"
# nbdkit may have removed it on its way out: leave one as a killed host would
if [ ! -S "$S2" ]; then python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$S2"; fi
vsh serve --socket "$S2" "$ID" "$G" vda
check "a socket left behind is refused without --force (exit 1)" test "$RC" = 1
check "and says so" grep -q 'exists; give --force' <<<"$ERR"
start_serve --force --socket "$S2" "$ID" "$G" vda
check "--force replaces it" test $? = 0
check "and the export reads right" qemu-img compare -q -f raw -F raw "$LAB_WORK/vda.raw" "nbd+unix:///?socket=$S2"
vsh serve --force --socket "$S2" "$ID" "$G" vda
check "--force never takes a socket something serves on (exit 4)" test "$RC" = 4
stop_serve

# Bad input: clear errors, nothing started, nothing changed.
vsh serve ffffffffffffffff "$G"
check "no such backup: exit 1" test "$RC" = 1 -a -n "$ERR"
vsh serve "$ID" nosuchvm
check "no such VM: exit 1, the VMs it has named" test "$RC" = 1
check "  message" grep -q "no VM named \"nosuchvm\" (it has: $G)" <<<"$ERR"
vsh --json serve "$ID" "$G" vdz
check "no such disk: exit 1, the disks named, a --json error document" \
    test "$RC" = 1 -a "$(jq -r .error.errno <<<"$OUT")" = ENOENT
check "  message" grep -q 'no disk "vdz" (its disks: vda)' <<<"$ERR"
echo precious > "$LAB_WORK/file"
vsh serve --force --socket "$LAB_WORK/file" "$ID" "$G" vda
check "--socket on a regular file: refused even with --force" test "$RC" = 1 -a "$(cat "$LAB_WORK/file")" = precious
vsh serve "$ID"
check "missing VM argument: usage error (exit 2)" test "$RC" = 2
check "nothing left serving" test -z "$(pgrep -f "nbdkit.*$LAB_WORK/repo" || true)"

# A damaged chunk: the read fails, no wrong bytes (a copy of the repository).
cp -a "$VMSHADOW_REPO" "$LAB_WORK/repo-damaged"
# the largest pack, a third of the way in: inside its blobs (the table is
# at the end), most likely a disk chunk
pack=$(find "$LAB_WORK/repo-damaged/packs" -name '*.pack' -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
printf '\xff\xff\xff\xff' | dd of="$pack" bs=1 seek=$(($(stat -c %s "$pack") / 3)) conv=notrunc status=none
start_serve -r "$LAB_WORK/repo-damaged" "$ID" "$G" vda
check "serve of the damaged copy starts (the index is intact)" test $? = 0
URI=$(jq -r '.disks[0].uri' "$LAB_WORK/serve.json")
qemu-img convert -f raw -O raw "$URI" "$LAB_WORK/damaged.raw" 2>"$LAB_WORK/convert.err"
check "reading it fails" test $? != 0
check "the server says which chunk" grep -q 'chunk .*\(damaged\|decompress\|authentication\)' "$LAB_WORK/serve.err"
stop_serve

# Encrypted repository: served with the key file (by path), refused without.
echo "serve test passphrase" > "$LAB_WORK/key"
vsh -r "$LAB_WORK/enc" init --encrypt --key-file "$LAB_WORK/key"
check "encrypted init" test "$RC" = 0
VMSHADOW_KEY_FILE=$LAB_WORK/key vsh --json -r "$LAB_WORK/enc" backup "$G"
EID=$(jq -r .backup <<<"$OUT")
check "encrypted backup" test "$RC" = 0 -a "$EID" != null
vsh -r "$LAB_WORK/enc" serve "$EID" "$G"
check "without the key: exit 1, nothing served" test "$RC" = 1
check "  says the key is needed" grep -qi 'key' <<<"$ERR"
export VMSHADOW_KEY_FILE=$LAB_WORK/key
start_serve -r "$LAB_WORK/enc" "$EID" "$G"
check "with the key file: serving" test $? = 0
check "the passphrase is not on the server's command line" \
    bash -c "! grep -q 'serve test passphrase' /proc/$(jq -r '.disks[0].pid' "$LAB_WORK/serve.json")/cmdline"
check "the encrypted export equals extract" \
    qemu-img compare -q -f raw -F raw "$LAB_WORK/vda.raw" "$(jq -r '.disks[0].uri' "$LAB_WORK/serve.json")"
stop_serve
unset VMSHADOW_KEY_FILE

e2e_done
