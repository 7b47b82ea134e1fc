#!/bin/bash
# A command line without surprises, and safe to point at untrusted input
# (issue 20 points 9-10, issue 21 point 5, issue 24 point 4), against the
# real binary, on shut-off lab VMs (one is started paused: no guest boots):
#  1. empty values (-r '', -c '', --config '', empty VMSHADOW_* variables,
#     an empty config value) are errors, never a fall-back to a default;
#  2. --json prints exactly one document with an `error` object on every
#     failing command (bad arguments, a missing repository, usage errors);
#  3. names with control characters (a libvirt VM's, a crafted backup's VM
#     and file names) are printed escaped; bytes that are not UTF-8 are
#     escaped in JSON; a VM name that is not UTF-8 is refused by backup;
#  4. global options after the command; unknown VM names are errors;
#     an excluded disk's reason closes on its line (no stray "]");
#  5. connection errors say what failed, without libxml2's noise;
#  6. backup opens the repository like every command: VMSHADOW_KEY_FILE,
#     the config's compression-level; the config's scratch-dir is accepted
#     and the saved-state overlays go there.
# Crafted backups are made with the repository tool (bench/vmshadow-repo-tool).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
TOOL=$VMSH_BUILD_DIR/bench/vmshadow-repo-tool
[ -x "$TOOL" ] || fail "the repository tool is not built ($TOOL)"
lab_init
e2e_env
T=$LAB_WORK/cli
mkdir -p "$T"
SOCK_PID=
cleanup_c() { [ -n "$SOCK_PID" ] && kill "$SOCK_PID" 2>/dev/null; return 0; }
trap 'cleanup_c; lab_cleanup' EXIT
vsh init
check "init" test "$RC" = 0

# one_doc: stdout ($OUT) is exactly one JSON document
one_doc() { test "$(jq -s length <<<"$OUT" 2>/dev/null)" = 1; }
# json_error CODE: one document whose error is an object with that code and a message
json_error() {
    one_doc && jq -e --arg c "$1" \
        '(.error | type) == "object" and .error.code == $c and (.error.message | length) > 0' \
        <<<"$OUT" >/dev/null
}
usage_doc() { test "$RC" = 2 && json_error usage; }
# rc_err CODE TEXT: the exit code was CODE and stderr holds TEXT
rc_err() { test "$RC" = "$1" && grep -q -- "$2" <<<"$ERR"; }
not_in_err() { ! grep -qi -- "$1" <<<"$ERR"; }
utf8_ok() { python3 -c 'import sys; sys.stdin.buffer.read().decode("utf-8")'; }

# ---- 1. empty values never pick another repository (issue 20 point 9)
vsh -r '' list
check "-r '' is a usage error (not \$VMSHADOW_REPO's repository)" test "$RC" = 2
check "  and says the value is empty" grep -q "empty" <<<"$ERR"
vsh list -r ''
check "-r '' after the command too" rc_err 2 "empty"
vsh --repo= list
check "--repo= is a usage error" test "$RC" = 2
OUT=$(VMSHADOW_REPO= "$VMSHADOW" list 2>"$T/err"); RC=$?
check "an empty VMSHADOW_REPO is a usage error" test "$RC" = 2 -a -z "$OUT"
check "  naming the variable" grep -q VMSHADOW_REPO "$T/err"
OUT=$(VMSHADOW_CONFIG= "$VMSHADOW" list 2>/dev/null); RC=$?
check "an empty VMSHADOW_CONFIG is a usage error" test "$RC" = 2
vsh --config '' list
check "--config '' is a usage error" test "$RC" = 2
vsh -c '' vms
check "-c '' is a usage error" test "$RC" = 2
OUT=$(VMSHADOW_KEY_FILE= "$VMSHADOW" list 2>/dev/null); RC=$?
check "an empty VMSHADOW_KEY_FILE is a usage error" test "$RC" = 2
printf 'repo =\n' >"$T/empty-repo.conf"
OUT=$(env -u VMSHADOW_REPO "$VMSHADOW" --config "$T/empty-repo.conf" list 2>"$T/err"); RC=$?
check "an empty 'repo =' in the config is an error, not the default repository" \
    test "$RC" != 0 -a -z "$OUT"
check "  naming the key" grep -q "'repo' is empty" "$T/err"
vsh --json -r '' list
check "--json -r '': one document with a usage error" json_error usage

# ---- 2. every failing command prints one JSON document with an error
NOREPO=$T/no-such-repo
for cmdline in "list" "show latest" "verify" "gc" "prune --keep-last 1" \
    "extract latest x/disk/vda $T/x.raw" "restore latest --dry-run" "backup --all"; do
    # shellcheck disable=SC2086
    vsh --json -r "$NOREPO" $cmdline
    check "$cmdline --json, repository missing: exit 1 and one document with error" \
        json_error failed
    check "  the message names the repository" grep -q "$NOREPO" <<<"$(jq -r .error.message <<<"$OUT")"
done
for cmdline in "vms --bogus" "writers extra" "init --compression-level 99" "backup --method bogus" \
    "list extra" "show" "restore" "verify --bogus" "prune" "gc extra" "recover extra" \
    "extract latest" "no-such-command"; do
    # shellcheck disable=SC2086
    vsh --json $cmdline
    check "$cmdline --json: exit 2 and one document with a usage error" usage_doc
done
vsh vms --bogus --json
check "a usage error before --json on the command line is a document too" json_error usage
vsh --json init
check "init --json over an existing repository: one document with error" json_error failed
vsh --json show no-such-backup
check "show --json of an unknown backup: one document with error" json_error failed
vsh --json list
check "a command that succeeds has error null" \
    test "$RC" = 0 -a "$(jq -c 'has("error") and .error == null' <<<"$OUT")" = true

# ---- 3. names are printed safely (issue 20 point 10)
# a libvirt VM whose name holds a tab and a C1 control (U+009B, CSI), with
# a SCSI LUN pass-through disk (excluded, R6); never started
cp --sparse=always "$LAB_GUEST/data.raw" "$T/evil.raw"
EVIL_NAME="$LAB_ID-ev"$'\t'$'\xc2\x9b'"2J"
EVIL_XML_NAME="$LAB_ID-ev&#9;&#x9b;2J"
cat >"$T/evil.xml" <<EOF
<domain type='qemu'>
  <name>$EVIL_XML_NAME</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='$T/evil.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='lun'><driver name='qemu' type='raw'/>
      <source dev='/dev/null'/><target dev='sdb' bus='scsi'/></disk>
  </devices>
</domain>
EOF
lab_virsh define "$T/evil.xml" >/dev/null || fail "cannot define the VM with a crafted name"
LAB_DOMAINS+=("$EVIL_NAME")
vsh vms "$EVIL_NAME"
check "vms of a VM whose name holds control characters" test "$RC" = 0
check "  no raw tab or C1 control on stdout" sh -c '! printf "%s" "$1" | grep -q "$(printf "\t")\|$(printf "\302\233")"' _ "$OUT"
check "  the name is shown escaped" grep -qF -- "-ev\\t\\u009b2J" <<<"$OUT"
# 4 (layout): the exclusion reason on its own line, no "]" alone
check "an excluded disk's reason closes on the disk's line" \
    grep -q '^ *sdb  *passthrough .*/dev/null  \[excluded: .*LUN pass-through.*(R6)\]$' <<<"$OUT"
check "  and no line is a lone ']'" sh -c '! printf "%s\n" "$1" | grep -qx " *\]"' _ "$OUT"
vsh --json vms "$EVIL_NAME"
check "vms --json of it: one document with the name intact" \
    test "$RC" = 0 -a "$(jq -r '.vms[0].name' <<<"$OUT")" = "$EVIL_NAME"
vsh backup "$EVIL_NAME"
check "backup of it fails (the repository refuses control characters in file names)" test "$RC" = 1
check "  and the message shows the name escaped, no raw control character" \
    sh -c 'printf "%s" "$1" | grep -qF -- "-ev\\t\\u009b2J" && ! printf "%s" "$1" | grep -q "$(printf "\t")\|$(printf "\302\233")"' _ "$ERR"

# a crafted backup: its document names a VM with an ESC sequence and bytes
# that are not UTF-8, its file a name with such a byte
echo "some data" >"$T/f1"
DOC=$(printf '{"vms":[{"name":"ev\\u001b[31mil\xff","method":"saved-state"}],"note":"\xfe"}')
CID=$("$TOOL" backup --doc "$DOC" "$VMSHADOW_REPO" "$(printf 'ev\xffil/disk/vda')=$T/f1" 2>"$T/craft.err" | jq -r .backup)
check "a backup with hostile names can be crafted" test -n "$CID" -a "$CID" != null
"$VMSHADOW" list >"$T/list.txt" 2>&1
check "list: no raw ESC on the terminal" sh -c '! grep -q "$(printf "\033")" "$1"' _ "$T/list.txt"
check "  the VM name shown escaped" grep -qF 'ev\x1b[31mil\xff' "$T/list.txt"
"$VMSHADOW" show "$CID" >"$T/show.txt" 2>&1
check "show: no raw ESC, the file name escaped" \
    sh -c '! grep -q "$(printf "\033")" "$1" && grep -qF "ev\\xffil/disk/vda" "$1"' _ "$T/show.txt"
check "show's text is valid UTF-8" utf8_ok <"$T/show.txt"
"$VMSHADOW" --json list >"$T/list.json"
check "list --json is valid UTF-8 (bytes that are not are escaped)" utf8_ok <"$T/list.json"
check "  and valid JSON with the names escaped" \
    test "$(jq -r --arg id "$CID" '.backups[] | select(.id == $id) | .files[0].name' "$T/list.json")" = 'ev\xffil/disk/vda'
"$VMSHADOW" --json show "$CID" >"$T/show.json"
check "show --json is valid UTF-8" utf8_ok <"$T/show.json"
check "  the ESC stays a JSON escape" test "$(jq -r '.document.vms[0].name' "$T/show.json")" = $'ev\e[31mil\\xff'

# a VM name that is not UTF-8 is refused before the set starts
vsh backup $'web\xffname'
check "backup of a VM name that is not UTF-8: usage error" test "$RC" = 2
check "  saying why" grep -q "not valid UTF-8" <<<"$ERR"
check "  with the byte escaped" grep -qF 'web\xffname' <<<"$ERR"
vsh --json backup $'web\xffname'
check "  with --json: one document with a usage error" usage_doc
check "  that is valid UTF-8" utf8_ok <<<"$OUT"

# ---- 4. options after the command, unknown VM names (issue 24)
lab_guest_define p --raw --no-agent
P=$(lab_domname p)
vsh vms "$P" --json
check "vms NAME --json works" test "$RC" = 0 -a "$(jq -r '.vms[0].name' <<<"$OUT")" = "$P"
vsh vms --json -q "$P" -c "$LAB_URI"
check "--json -q -c after the command" test "$RC" = 0 -a "$(jq -r '.vms | length' <<<"$OUT")" = 1
vsh list -r "$VMSHADOW_REPO" --json
check "list -r DIR --json" one_doc
vsh show --json "$CID"
check "show --json BACKUP" test "$RC" = 0 -a "$(jq -r .id <<<"$OUT")" = "$CID"
vsh vms -- --json
check "after --, --json is a VM name (none such: exit 1)" test "$RC" = 1
vsh vms no-such-vm
check "vms of an unknown VM exits 1" test "$RC" = 1 -a -z "$OUT"
check "  saying which" grep -q "no VM named 'no-such-vm'" <<<"$ERR"
vsh --json vms "$P" no-such-vm
check "  with --json: one document with error, no partial list" \
    json_error failed
vsh backup no-such-vm
check "backup of an unknown VM exits 1 with the same words" rc_err 1 "no VM named 'no-such-vm'"

# ---- 5. connection errors say what failed (issue 24)
vsh -c test:///nonexistent-file vms
check "an unreadable test:/// file: exit 1" test "$RC" = 1
check "  says the file cannot be read or parsed" grep -q "cannot be read or parsed" <<<"$ERR"
check "  and no libxml2 warning leaks to stderr" not_in_err "I/O warning\|external entity"
vsh -c 'qemu+unix:///system?socket=/nonexistent/libvirt-sock' vms
check "a daemon socket that does not exist: says the daemon is not running" \
    rc_err 1 "daemon is not running"
# a socket nobody but root may connect to, tried as user nobody
python3 -c '
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o600); s.listen(1)
time.sleep(120)' "$T/private.sock" &
SOCK_PID=$!
for _ in $(seq 1 50); do [ -S "$T/private.sock" ] && break; sleep 0.1; done
ERR=$(runuser -u nobody -- env VMSHADOW_STATE_DIR=/nonexistent VMSHADOW_CONFIG=/dev/null \
    "$VMSHADOW" -c "qemu+unix:///system?socket=$T/private.sock" vms 2>&1 >/dev/null); RC=$?
check "a socket without permission: says permission denied" rc_err 1 "permission denied"
kill "$SOCK_PID" 2>/dev/null; SOCK_PID=

# ---- 6. backup opens the repository like every command (issue 21 point 5)
echo "a passphrase for the test" >"$T/key"
ENC=$T/enc-repo
vsh -r "$ENC" init --encrypt --key-file "$T/key"
check "an encrypted repository" test "$RC" = 0
OUT=$(VMSHADOW_KEY_FILE=$T/key "$VMSHADOW" --json -r "$ENC" backup "$P" 2>"$T/err"); RC=$?
check "backup into it with only VMSHADOW_KEY_FILE set" test "$RC" = 0 -a "$(jq -r .backup <<<"$OUT")" != null
OUT=$(VMSHADOW_KEY_FILE=$T/key "$VMSHADOW" --json -r "$ENC" verify 2>/dev/null); RC=$?
check "  and it verifies with that key" test "$RC" = 0 -a "$(jq -r .backups_checked <<<"$OUT")" = 1

# compression-level from the config: the same compressible disk backed up
# into two repositories made at level 1, once with compression-level = 19
python3 -c '
import random, sys
r = random.Random(7)
words = [("".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9)))) for _ in range(3000)]
out = []
n = 0
while n < 6 << 20:
    line = " ".join(r.choice(words) for _ in range(r.randint(4, 14))) + ".\n"
    out.append(line); n += len(line)
sys.stdout.write("".join(out))' | dd of="$(lab_disk p raw)" bs=1M conv=notrunc status=none
for lv in 1 19; do
    printf 'compression-level = %s\n' "$lv" >"$T/level$lv.conf"
    vsh -r "$T/repo-level$lv" --config /dev/null init --compression-level 1
    vsh --json -r "$T/repo-level$lv" --config "$T/level$lv.conf" backup "$P"
    check "backup with compression-level = $lv in the config" test "$RC" = 0
    eval "STORED$lv=$(jq -r .bytes_stored <<<"$OUT")"
done
check "compression-level = 19 from the config stores less than 1 ($STORED19 < $STORED1)" \
    test "$STORED19" -lt "$STORED1"

# scratch-dir: accepted, and the saved-state method's overlays go there
SCR=$T/scratch
mkdir -p "$SCR"
printf 'scratch-dir = %s\n' "$SCR" >"$VMSHADOW_CONFIG"
cat >"$T/observe.sh" <<EOF
#!/bin/sh
ls -a "$SCR" >"$T/seen"
EOF
chmod +x "$T/observe.sh"
printf 'name = observer\nfreeze = %s\n' "$T/observe.sh" >"$VMSHADOW_WRITERS_DIR/observer.conf"
vsh vms "$P"
check "the config key scratch-dir is accepted" test "$RC" = 0
lab_virsh start --paused "$P" >/dev/null || fail "cannot start $P paused"
vsh --json backup "$P" --method saved-state
check "backup of a paused VM with scratch-dir set" test "$RC" = 0 -a "$(jq -r .backup <<<"$OUT")" != null
check "  its overlay was in the scratch directory during the set" grep -q '^\.vmshadow-.*\.overlay$' "$T/seen"
check "  and nothing is left there" test -z "$(ls -A "$SCR")"
check "  nor beside the disk" test -z "$(ls -A "$LAB_WORK" | grep -F .overlay)"
check "  the VM is paused again" test "$(lab_state p)" = paused
rm -f "$VMSHADOW_WRITERS_DIR/observer.conf"
: >"$VMSHADOW_CONFIG"
# ---- journald priorities (issue 24 point 3): under systemd, whose
# JOURNAL_STREAM names stderr's device and inode, each line starts with its
# priority; anywhere else the lines are plain
JF=$T/journal-stream
exec 7>"$JF"
JS="$(stat -c %d "$JF"):$(stat -c %i "$JF")"
JOURNAL_STREAM=$JS "$VMSHADOW" -r "$NOREPO" list >/dev/null 2>&7
JOURNAL_STREAM=$JS "$VMSHADOW" --no-such-option >/dev/null 2>&7
JOURNAL_STREAM=1:1 "$VMSHADOW" -r "$NOREPO" list >/dev/null 2>&7
exec 7>&-
check "stderr is the journal: an error line starts with <3>" grep -q "^<3>vmshadow: error: no repository" "$JF"
check "  and a usage error too" grep -q "^<3>vmshadow: unknown option" "$JF"
check "stderr is something else (JOURNAL_STREAM names another file): plain lines" \
    grep -q "^vmshadow: error: no repository" "$JF"

e2e_done
