# valgrind-common.sh - shared by tests/valgrind-*.sh (bash; source it after
# setting VMSHADOW and VG_DIR, a private scratch directory).
#   vg WANT-EXIT ARGS...   runs vmshadow ARGS under valgrind; counts a
#                          failure when valgrind reports anything or the
#                          exit code is not WANT-EXIT. Output in
#                          $VG_DIR/out and $VG_DIR/err.
# n and failed count the checks; end with vg_summary (its exit status).
n=0 failed=0
vg() {
    local want=$1; shift
    n=$((n + 1))
    # 99 is valgrind's own exit code (an error or a leak), distinct from
    # vmshadow's 0-4.
    valgrind -q --leak-check=full --error-exitcode=99 --log-file="$VG_DIR/vg.$n" \
        "$VMSHADOW" "$@" >"$VG_DIR/out" 2>"$VG_DIR/err"
    local rc=$?
    # "==PID==" lines are valgrind's reports; "--PID--" lines are notes about
    # itself (valgrind 3.19 does not know pidfd_open, which proc.c then does
    # without).
    if [ $rc = 99 ] || grep -q '^==' "$VG_DIR/vg.$n"; then
        echo "not ok $n - vmshadow $*: valgrind reports:"; cat "$VG_DIR/vg.$n"; failed=$((failed + 1))
    elif [ $rc != "$want" ]; then
        echo "not ok $n - vmshadow $*: exit $rc, wanted $want"; cat "$VG_DIR/err"; failed=$((failed + 1))
    else
        echo "ok $n - vmshadow $* (exit $rc, no error or leak)"
    fi
}
vg_summary() {
    echo "$n checks, $failed failed"
    [ $failed = 0 ]
}
