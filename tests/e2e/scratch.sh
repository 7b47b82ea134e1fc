# scratch.sh - a private, throw-away vmshadow environment for end-to-end
# tests that need no guests (bash; source it after `set -uo pipefail`).
# Sets T (a temporary directory removed at exit), VMSHADOW, the VMSHADOW_*
# variables pointing into T, LIBVIRT_DEFAULT_URI=test:///default, and the
# helpers pass, fail, run (OUT, RC, ERR) and jget. A test that starts
# processes defines scratch_stop, which runs at exit before T goes.
VMSHADOW=${VMSHADOW:-$VMSH_BUILD_DIR/src/vmshadow}
T=$(mktemp -d "/tmp/$(basename "${0%.sh}").XXXXXX")
scratch_exit() {
    declare -F scratch_stop >/dev/null && scratch_stop
    rm -rf "$T"
}
trap scratch_exit EXIT
export VMSHADOW_STATE_DIR=$T/state VMSHADOW_WRITERS_DIR=$T/writers.d VMSHADOW_REPO=$T/repo
export VMSHADOW_CONFIG=$T/vmshadow.conf LIBVIRT_DEFAULT_URI=test:///default
: > "$VMSHADOW_CONFIG"
mkdir -p "$VMSHADOW_WRITERS_DIR"
n=0
pass() { n=$((n + 1)); echo "ok $n - $*"; }
fail() { echo "not ok - $*" >&2; exit 1; }
run() { OUT=$("$@" 2>"$T/err"); RC=$?; ERR=$(cat "$T/err"); }
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
