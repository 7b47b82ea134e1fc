#!/bin/bash
# The README's first command: scripts/demo.sh runs vmshadow's main job on its
# built-in demo (two guests, one snapshot set, a VM destroyed and deleted,
# restored with the backup's data). Run here with the build's binary; the
# demo itself checks the restored data and exits 1 otherwise.
set -u
out=$(VMSHADOW=$VMSHADOW "$VMSH_SOURCE_DIR/scripts/demo.sh" 2>&1)
rc=$?
echo "$out" | tail -n 30
[ "$rc" = 0 ] || { echo "not ok - scripts/demo.sh exited $rc" >&2; exit 1; }
echo "ok 1 - scripts/demo.sh exits 0"
grep -q "^order 1001: 3 widgets$" <<<"$out" || { echo "not ok - the restored data is not shown" >&2; exit 1; }
echo "ok 2 - the restored VM holds the backup's data"
grep -q "order 1002" <<<"$(sed -n '/== disaster/,$p' <<<"$out")" &&
    { echo "not ok - data written after the backup came back" >&2; exit 1; }
echo "ok 3 - data written after the backup is not in the restored VM"
