#!/bin/bash
# File-level restore at scale and under SIGKILL (issue 23 point 4). The
# guest's second disk is an xfs image made offline (mkfs.xfs -p, no boot):
# a directory of T_FILES_SCALE_N (default 120000) empty files and a tree of
# 12 files of 16 MiB of random data. Three appliances (TCG: slow):
#  - `files --json` of the big directory lists every entry, in order, with
#    a bounded peak RSS (measured; the listing is streamed: the old code
#    held the whole document, about 1 KiB per entry, in json-c objects);
#  - `files get` of the tree is SIGKILLed in the middle of its copy: then no
#    server, no appliance (libguestfs's QEMU), nothing of them left but
#    their directories (listed), the repository's lock free (gc runs), and
#    every file under a final name in the target complete and equal to the
#    original (copies are written nameless, O_TMPFILE, and linked when
#    complete: the old code wrote under the final name); its session
#    directory (sockets, libguestfs's temporary directory) is left in the
#    run directory, locked by nobody, and libguestfs's socket directory in
#    /tmp; the next command (gc) removes both: nothing is left in the run
#    directory, $TMPDIR or $XDG_RUNTIME_DIR (the old code left
#    vmshadow-serve.* and libguestfs* there for ever);
#  - `files` is SIGKILLed during libguestfs's launch (its QEMU held at a
#    gate: LIBGUESTFS_HV is a wrapper): the QEMU and libguestfs's recovery
#    process end, and the next command removes the session and the socket
#    directory libguestfs made in /tmp during the launch (the old code noted
#    it only after the launch: left there).
set -u
export TZ=UTC
LAB_GUESTS=1 # no guest boots: the shared lab lock is enough
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
lab_init
e2e_env
E2E_T0=$SECONDS
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# the appliance cache where t-files has it; everything else of this test's
# commands (libguestfs's and the servers' directories) under LAB_WORK
export LIBGUESTFS_CACHEDIR=${LIBGUESTFS_CACHEDIR:-/var/tmp}
export TMPDIR=$LAB_WORK/tmp XDG_RUNTIME_DIR=$LAB_WORK/xdg VMSHADOW_RUN_DIR=$LAB_WORK/run
mkdir -p "$TMPDIR" "$XDG_RUNTIME_DIR"
command -v guestfish >/dev/null || fail "guestfish missing: run scripts/install-deps.sh"
N=${T_FILES_SCALE_N:-120000}
MiB=$((1 << 20))
# this test's servers and appliances: they name its directories
mine() { pgrep -f "[n]bdkit.*$LAB_WORK/|[q]emu.*$LAB_WORK/" || true; }

# ---- the image, offline: xfs from a prototype file (mkfs.xfs -p: about
# 7 s for 120000 entries here; mkfs.ext4 -d took more than 3 minutes, its
# directory insertion being linear in the directory's size). The big
# directory's files are empty (/dev/null is their source).
SRC=$LAB_WORK/src
mkdir -p "$SRC"
for i in $(seq 12); do
    head -c $((16 * MiB)) /dev/urandom > "$SRC/part$i.bin" || fail "random data"
done
{
    echo /dev/null; echo "0 0"; echo "d--755 0 0"
    echo "big d--755 0 0"
    seq -f 'f%06g ---644 0 0 /dev/null' 1 "$N"
    echo '$'
    echo "tree d--755 0 0"
    for i in $(seq 12); do echo "part$i.bin ---644 0 0 $SRC/part$i.bin"; done
    echo '$'
    echo '$'
} > "$LAB_WORK/proto"
IMG=$LAB_WORK/scale.raw
truncate -s 768M "$IMG"
t0=$SECONDS
mkfs.xfs -q -f -p "$LAB_WORK/proto" "$IMG" || fail "mkfs.xfs -p"
echo "# mkfs.xfs -p of $N entries and 192 MiB: $((SECONDS - t0)) s"
qemu-img convert -f raw -O qcow2 "$IMG" "$LAB_WORK/scale.qcow2" && rm -f "$IMG" || fail "qemu-img convert"
mkdir -p "$SRC/tree" && mv "$SRC"/part*.bin "$SRC/tree/"

lab_guest_define g --disk-xml "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$LAB_WORK/scale.qcow2'/><target dev='vdb' bus='virtio'/></disk>"
G=$(lab_domname g)
vsh init
check "init" test "$RC" = 0
vsh --json backup "$G"
ID=$(jq -r .backup <<<"$OUT")
check "backup of the shut-off VM (its second disk: the image)" test "$RC" = 0 -a -n "$ID" -a "$ID" != null

# ---- 1. the listing (appliance 1), its peak RSS: vmshadow's own (VmHWM,
# sampled until it ends; /usr/bin/time's would be the appliance's QEMU,
# a child that is waited for)
t0=$SECONDS
"$VMSHADOW" --json files "$ID" "$G" vdb /big >"$LAB_WORK/list.json" 2>"$LAB_WORK/list.err" &
P=$!
RSS_KB=0
while kill -0 "$P" 2>/dev/null; do
    h=$(awk '/^VmHWM:/ { print $2 }' "/proc/$P/status" 2>/dev/null)
    [ -n "$h" ] && RSS_KB=$h
    sleep 0.2
done
wait "$P"
RC=$?
echo "# files --json of $N entries: $((SECONDS - t0)) s, peak RSS $((RSS_KB / 1024)) MiB"
check "files --json of a directory of $N entries: exit 0" test "$RC" = 0
check "one valid document, no error" bash -c "jq -e '.error == null' '$LAB_WORK/list.json' >/dev/null"
check "every entry, in order" \
    bash -c "jq -r '.entries[].name' '$LAB_WORK/list.json' | diff -q - <(seq -f 'f%06g' 1 $N) >/dev/null"
check "  with its type and size" \
    bash -c "jq -e '[.entries[] | select(.type == \"file\" and .size == 0)] | length == $N' '$LAB_WORK/list.json' >/dev/null"
# The bound: the sorted entries of one directory (about 100 bytes each) and
# the appliance's replies; the old code's whole document took more than
# this. ASan's shadow memory and quarantine make RSS meaningless there.
if ldd "$VMSHADOW" | grep -q 'libasan'; then
    echo "# ASan build: the RSS bound is not checked"
else
    check "peak RSS bounded: $((RSS_KB / 1024)) MiB < 96 MiB" test "$RSS_KB" -lt $((96 * 1024))
fi
check "no server or appliance left after the listing" test -z "$(mine)"

# ---- 2. files get, SIGKILLed in the middle (appliance 2)
OUTD=$LAB_WORK/out
mkdir -p "$OUTD"
"$VMSHADOW" files get --disk vdb "$ID" "$G" /tree --to "$OUTD" \
    >"$LAB_WORK/get.out" 2>"$LAB_WORK/get.err" &
BG=$!
trap 'kill -9 $BG 2>/dev/null; lab_cleanup' EXIT
# in the middle: two files complete (named), not all of them
for _ in $(seq 3000); do
    [ "$(ls -A "$OUTD/tree" 2>/dev/null | wc -l)" -ge 2 ] && break
    kill -0 "$BG" 2>/dev/null || break
    sleep 0.1
done
check "the copy is under way (two files named, vmshadow running)" \
    bash -c "kill -0 $BG && test \$(ls -A '$OUTD/tree' | wc -l) -ge 2"
check "its server and appliance run" test -n "$(mine)"
# the appliance's socket directory: root's libguestfs puts it in /tmp
# whatever TMPDIR and XDG_RUNTIME_DIR say
GSOCK=
for p in $(mine); do
    GSOCK=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | sed -n 's|.*path=\([^,]*\)/guestfsd\.sock.*|\1|p' | head -n 1)
    [ -n "$GSOCK" ] && break
done
check "the appliance's socket directory is known ($GSOCK)" test -n "$GSOCK" -a -d "$GSOCK"
kill -9 "$BG"
wait "$BG" 2>/dev/null
BG=
check "killed before the end: not every file is there" test "$(ls -A "$OUTD/tree" | wc -l)" -lt 12
gone() { for _ in $(seq 300); do [ -z "$(mine)" ] && return 0; sleep 0.1; done; return 1; }
check "no server, no appliance left (they end with vmshadow)" gone
complete() {
    local f
    for f in "$OUTD"/tree/*; do
        case $(basename "$f") in part[0-9]*.bin) ;; *) echo "unexpected: $f" >&2; return 1 ;; esac
        cmp -s "$f" "$SRC/tree/$(basename "$f")" || { echo "not complete: $f" >&2; return 1; }
    done
}
check "every file under a final name is complete and equal to the original (no half-written file)" complete
check "nothing else in the target (no temporary name)" \
    bash -c "test -z \"\$(ls -A '$OUTD/tree' | grep -vE '^part[0-9]+\.bin\$')\""
left() { (cd "$LAB_WORK" && find tmp xdg run -mindepth 1 -maxdepth 1 2>/dev/null | tr '\n' ' '); }
echo "# left by the kill: $(left) $GSOCK"
check "the killed command's session directory is left in the run directory (its owner is dead)" \
    bash -c "ls -d '$VMSHADOW_RUN_DIR'/session-* >/dev/null 2>&1"
vsh gc
check "the repository's lock is free: gc runs" test "$RC" = 0
echo "# left after the next command: $(left)"
check "the next command removed the session directory: nothing left in the run directory, TMPDIR, XDG_RUNTIME_DIR" \
    test -z "$(left)"
check "nor libguestfs's socket directory in /tmp" test ! -e "$GSOCK"

# ---- 3. `files` SIGKILLed during libguestfs's launch (appliance 3).
# libguestfs makes its socket directory during the launch (root's:
# /tmp/libguestfsXXXXXX); the old code noted it in the session only once
# the launch had returned, so this kill left it in /tmp for ever. Now it is
# noted the moment libguestfs binds its socket there, before QEMU starts,
# and the next command removes it. The launch is held at a known point: the
# appliance's QEMU (LIBGUESTFS_HV, a wrapper) waits at a gate before it
# execs the real one, so libguestfs is inside guestfs_launch, waiting for
# QEMU to connect, when vmshadow is killed (the gate never opens).
T3=$SECONDS
GATE=$LAB_WORK/hv-gate
cat >"$LAB_WORK/hv" <<EOF
#!/bin/sh
# the appliance's QEMU (its command line names guestfsd.sock) waits; the
# queries of QEMU's features run the real one at once. Never for ever: 120 s
case "\$*" in
*guestfsd.sock*)
    : >"$GATE.reached"
    i=0
    while [ ! -e "$GATE" ]; do i=\$((i + 1)); [ \$i -gt 1200 ] && exit 1; sleep 0.1; done ;;
esac
exec $(guestfish get-hv) "\$@"
EOF
chmod +x "$LAB_WORK/hv"
LIBGUESTFS_HV=$LAB_WORK/hv "$VMSHADOW" files "$ID" "$G" vdb / >"$LAB_WORK/launch.out" 2>"$LAB_WORK/launch.err" &
BG=$!
for _ in $(seq 3000); do
    [ -e "$GATE.reached" ] && break
    kill -0 "$BG" 2>/dev/null || break
    sleep 0.05
done
check "the appliance's QEMU is about to start (at the gate)" test -e "$GATE.reached"
# the appliance's QEMU (the wrapper, libguestfs's child) and the socket
# directory its command line names
QPID= GSOCK=
for p in $(pgrep -P "$BG"); do
    d=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | sed -n 's|.*path=\([^,]*\)/guestfsd\.sock.*|\1|p' | head -n 1)
    [ -n "$d" ] && { QPID=$p; GSOCK=$d; break; }
done
KIDS=$(pgrep -P "$BG" | tr "\n" " ") # its server, the QEMU, libguestfs's recovery process
check "  its socket directory is there ($GSOCK, QEMU $QPID)" test -n "$QPID" -a -d "$GSOCK"
# nothing connected yet: libguestfs listens (/proc/net/unix flag 00010000),
# inside guestfs_launch
listening() { awk -v p="$GSOCK/guestfsd.sock" '$NF == p && $4 == "00010000"' /proc/net/unix | grep -q .; }
check "  libguestfs is in its launch (it listens on $GSOCK/guestfsd.sock)" listening
kill -9 "$BG"
wait "$BG" 2>/dev/null
BG=
check "  killed before it listed anything" test ! -s "$LAB_WORK/launch.out"
kids_gone() {
    local k
    for _ in $(seq 300); do
        for k in $KIDS; do kill -0 "$k" 2>/dev/null && break; k=; done
        [ -z "$k" ] && return 0
        sleep 0.1
    done
    return 1
}
check "no child of it lingers: server, QEMU, libguestfs's recovery process ($KIDS)" kids_gone
check "no server or appliance left" gone
echo "# left by the kill during the launch: $(left) $GSOCK"
check "its socket directory is left until the next command" test -d "$GSOCK"
vsh gc
check "the next command runs (gc)" test "$RC" = 0
check "the next command removed the session directory: nothing left in the run directory, TMPDIR, XDG_RUNTIME_DIR" \
    test -z "$(left)"
check "and libguestfs's socket directory made during the launch ($GSOCK)" test ! -e "$GSOCK"
echo "# the kill during the launch, then the next command: $((SECONDS - T3)) s"

echo "# t-files-scale took $((SECONDS - E2E_T0)) s (after the lab lock)"
e2e_done
