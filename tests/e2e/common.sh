# common.sh - helpers for end-to-end tests (bash; source after lab.sh).
# Each test runs the real `vmshadow` ($VMSHADOW) against the real lab.

VMSHADOW=${VMSHADOW:-$VMSH_BUILD_DIR/src/vmshadow}
[ -x "$VMSHADOW" ] || { echo "e2e: vmshadow binary not found (VMSHADOW=$VMSHADOW)" >&2; exit 1; }
E2E_CHECKS=0

# Private state for this test: repository, state dir, writers dir, config.
e2e_env() {
    export VMSHADOW_REPO=$LAB_WORK/repo
    export VMSHADOW_STATE_DIR=$LAB_WORK/state
    export VMSHADOW_WRITERS_DIR=$LAB_WORK/writers.d
    export VMSHADOW_CONFIG=$LAB_WORK/vmshadow.conf
    mkdir -p "$VMSHADOW_WRITERS_DIR"
    : > "$VMSHADOW_CONFIG"
}

pass() { E2E_CHECKS=$((E2E_CHECKS + 1)); echo "ok $E2E_CHECKS - $*"; }
fail() { echo "not ok - $*" >&2; exit 1; }
check() { # check "what" command...
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# vsh ARGS...: runs vmshadow, keeps stdout in $OUT, stderr in $ERR, exit code in $RC.
vsh() {
    OUT=$("$VMSHADOW" "$@" 2>"$LAB_WORK/stderr"); RC=$?
    ERR=$(cat "$LAB_WORK/stderr")
    [ -n "$ERR" ] && printf '  stderr: %s\n' "$ERR" | head -n 20 >&2
    return 0
}
e2e_done() { echo "# $E2E_CHECKS checks passed"; }
