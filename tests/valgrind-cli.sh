#!/bin/bash
# valgrind-cli.sh - the CLI's main paths that need no VM, each under
# valgrind (issue 8 item 5, docs/reliability.md "Valgrind"): init, backup
# with script writers only against test:///default, list, show, verify,
# extract, prune, gc, writers, recover and vms. Fails when valgrind reports
# a memory error or a leak (definite or possible) in any of them, and when a
# command does not do its job. Exit 77 (skipped) without valgrind.
set -uo pipefail
VMSHADOW=${VMSHADOW:-$VMSH_BUILD_DIR/src/vmshadow}
command -v valgrind >/dev/null || { echo "valgrind is not installed: skipped"; exit 77; }
T=$(mktemp -d /tmp/valgrind-cli.XXXXXX); trap 'rm -rf "$T"' EXIT
export VMSHADOW_STATE_DIR=$T/state VMSHADOW_WRITERS_DIR=$T/writers.d VMSHADOW_REPO=$T/repo
export VMSHADOW_CONFIG=$T/vmshadow.conf LIBVIRT_DEFAULT_URI=test:///default
: > "$VMSHADOW_CONFIG"
mkdir -p "$VMSHADOW_WRITERS_DIR"
for w in alpha beta; do
    printf 'name = %s\nfreeze = /bin/true\nthaw = /bin/true\ntimeout = 10\n' $w \
        > "$VMSHADOW_WRITERS_DIR/$w.conf"
done
VG_DIR=$T
. "$(dirname "$0")/valgrind-common.sh"
vg 0 init
vg 0 --json backup
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["backup"])' "$T/out" 2>/dev/null)
[ -n "$id" ] || { echo "not ok - backup printed no ID: $(cat "$T/out")"; exit 1; }
vg 0 backup
vg 0 list
vg 0 --json list
vg 0 show "$id"
vg 0 --json show latest
vg 0 verify
vg 0 writers
vg 0 --json writers
vg 0 recover
vg 0 vms
vg 0 --json vms
vg 2 extract "$id"
vg 1 extract "$id" no-such-file "$T/x"
# a backup with data: the golden repository (copied: gc and prune write)
cp -r "${VMSH_SOURCE_DIR:-$(dirname "$0")/..}/tests/golden/repo-v1" "$T/golden"
vg 0 -r "$T/golden" verify
vg 0 -r "$T/golden" show 2a64f75c7c5c789d
vg 0 -r "$T/golden" extract 2a64f75c7c5c789d golden/disk.img "$T/disk.img"
[ "$(stat -c %s "$T/disk.img" 2>/dev/null)" = 328457 ] ||
    { echo "not ok - extract wrote nothing"; failed=$((failed + 1)); }
vg 0 -r "$T/golden" prune --keep-last 1
vg 0 -r "$T/golden" gc
vg 0 prune --keep-last 1
vg 0 gc
vg 0 list
# error paths: the messages a user sees on a wrong repository or option
vg 1 -r "$T/nowhere" list
vg 2 list --bogus
vg 2 bogus-command
vg_summary
