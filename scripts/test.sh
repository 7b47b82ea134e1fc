#!/bin/bash
# test.sh - the whole test suite, as CI runs it (README.md, .ci/run):
# installs what is missing, builds with warnings as errors, runs the unit
# tests, static checks and end-to-end tests against real guests; then does the
# same in an ASan+UBSan build. Ends with "N passed, N failed" and fails when
# any test failed.
#   VMSH_TEST_SANITIZE=0   skip the sanitizer pass
#   VMSH_TEST_FILTER=RE    only tests matching RE (ctest -R)
#   VMSH_TEST_FUZZ=0       skip the libFuzzer pass (clang build; each fuzz
#                          target runs VMSH_FUZZ_SECONDS, default 17 s)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "test.sh: the end-to-end tests drive qemu:///system: run as root" >&2; exit 2; }
scripts/install-deps.sh || exit 1

# One libvirt daemon for the whole run (the lab reuses it); stopped at the end
# if this script started it.
. tests/lab/lab.sh
lab_libvirt_up
# One single-node Ceph (RADOS and radosgw) for the whole run, shared by the
# object-store tests (issue 26; tests/lab/ceph.sh): started here unless one
# runs, stopped at the end only if this script started it.
. tests/lab/ceph.sh
ceph_started=0
if ! ceph_lab_running; then
    if ceph_lab_up; then ceph_started=1; else ceph_lab_down; echo "test.sh: no Ceph lab: the store tests start their own" >&2; fi
fi
# One single-node Pacemaker cluster for the run (tests/lab/pcmk.sh, issue 22)
# when an end-to-end test that needs it is selected and none answers yet;
# stopped at the end by the PIDs it recorded, only when this script started
# it. A test that finds no cluster starts its own.
. tests/lab/pcmk.sh
PCMK_STARTED=0
if [ -z "${VMSH_TEST_FILTER:-}" ] || grep -q cluster <<<"$VMSH_TEST_FILTER"; then
    if command -v corosync >/dev/null && ! pcmk_answers; then
        pcmk_up && PCMK_STARTED=1
    fi
fi
test_exit() {
    [ "$ceph_started" = 1 ] && ceph_lab_down
    [ "$PCMK_STARTED" = 1 ] && pcmk_down
    lab_libvirt_down
}
trap test_exit EXIT

jobs=$(nproc)
passed=0
failed=0
# run_pass NAME BUILD-DIR "CTEST-SELECTION..." CMAKE-ARGS...
run_pass() {
    local name=$1 dir=$2 sel=$3; shift 3
    echo "=== $name: configure and build ($dir)"
    cmake -S . -B "$dir" -G Ninja -DVMSH_WERROR=ON -DVMSH_E2E=ON "$@" >"$dir.configure.log" 2>&1 ||
        { cat "$dir.configure.log"; failed=$((failed + 1)); return; }
    ninja -C "$dir" || { failed=$((failed + 1)); return; }
    local i=0 one p f
    # each selection is one ctest run ("-LE e2e", "-L smoke", ...)
    while IFS= read -r one; do
        [ -n "$one" ] || continue
        i=$((i + 1))
        echo "=== $name: tests ($one)"
        # shellcheck disable=SC2086
        (cd "$dir" && ctest -j "$jobs" --output-on-failure $one \
            ${VMSH_TEST_FILTER:+-R "$VMSH_TEST_FILTER"} --output-junit "junit-$i.xml")
        p=$(grep -o '<testcase [^>]*status="run"' "$dir/junit-$i.xml" | wc -l)
        f=$(grep -o '<testcase [^>]*status="fail"' "$dir/junit-$i.xml" | wc -l)
        passed=$((passed + p))
        failed=$((failed + f))
    done <<<"$sel"
}
mkdir -p build-ci
# The optimised build runs everything but the end-to-end tests, and a smoke
# set of them (label "smoke"); the sanitizer build runs every test, end to
# end included (issue 8): each e2e test runs once under ASan+UBSan, which
# keeps CI well within its time.
run_pass "warnings-as-errors build" build-ci/release $'-LE e2e\n-L smoke' \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
# The Debian package (issue 24): built from a copy of the tree (the clone
# stays clean), lintian errors fail, installed into an empty root (dpkg --root) where its
# vmshadow --version, man -l and systemd-analyze verify run
# (packaging/check-deb.sh; logs in build-ci/deb/).
if [ -z "${VMSH_TEST_FILTER:-}" ]; then
    echo "=== Debian package: build, lintian, install into a clean root, run"
    if packaging/check-deb.sh build-ci/deb >build-ci/deb.log 2>&1; then
        cat build-ci/deb.log
        echo "Debian package: passed"
        passed=$((passed + 1))
    else
        tail -n 60 build-ci/deb.log
        echo "Debian package: FAILED (build-ci/deb.log)"
        failed=$((failed + 1))
    fi
fi
if [ "${VMSH_TEST_SANITIZE:-1}" = 1 ]; then
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        run_pass "ASan+UBSan build" build-ci/sanitize "-L ." -DCMAKE_BUILD_TYPE=Debug \
        -DVMSH_SANITIZE=ON
fi
# t-fault-env restarts libvirtd in the middle of a backup only when the
# daemon is its own (a test never touches a daemon it did not start), so with
# the shared daemon above that case is skipped: run it once more, alone, with
# the shared daemon stopped (only when this script started it).
if [ "$LAB_STARTED_DAEMON" = 1 ] && [ -z "${VMSH_TEST_FILTER:-}" ] && [ -x build-ci/release/src/vmshadow ]; then
    echo "=== libvirt daemon restart: e2e.t-fault-env with a daemon of its own"
    lab_libvirt_down
    if (cd build-ci/release && ctest -V -R '^e2e\.t-fault-env$') >build-ci/daemon-restart.log 2>&1 &&
        grep -q "libvirtd restarted while the backup job ran" build-ci/daemon-restart.log; then
        echo "libvirt daemon restart case: passed"
        passed=$((passed + 1))
    else
        tail -n 60 build-ci/daemon-restart.log
        echo "libvirt daemon restart case: FAILED (or skipped; build-ci/daemon-restart.log)"
        failed=$((failed + 1))
    fi
fi
if [ "${VMSH_TEST_FUZZ:-1}" = 1 ]; then
    # docs/reliability.md, "Fuzzing": every target briefly, from its corpus;
    # a finding fails the run (the input is printed with the stack).
    echo "=== libFuzzer build (clang): fuzz each target ${VMSH_FUZZ_SECONDS:-17}s"
    if CC=clang cmake -S . -B build-ci/fuzz -G Ninja -DVMSH_FUZZ=ON -DVMSH_E2E=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >build-ci/fuzz.configure.log 2>&1 &&
        ninja -C build-ci/fuzz fuzzers; then
        VMSH_FUZZ_WORK=$top/build-ci/fuzz-work scripts/fuzz.sh build-ci/fuzz \
            "${VMSH_FUZZ_SECONDS:-17}" | tee build-ci/fuzz.log
        passed=$((passed + $(grep -c ', no finding$' build-ci/fuzz.log)))
        failed=$((failed + $(grep -c ': FINDING' build-ci/fuzz.log)))
    else
        cat build-ci/fuzz.configure.log
        failed=$((failed + 1))
    fi
fi
echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
