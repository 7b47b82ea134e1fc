#!/bin/bash
# Least exposure (issue 8 item 4): script-writer commands run without a
# shell. Each shell construct below is put in a writer's command (one at a
# time, so that a refusal of the first does not hide the others) and a
# backup is run (script writers only, test:///default): the construct's
# `touch` must never run. A command is either refused when the writer loads
# (exit 1, the message names the operator) or runs with the text as plain
# arguments.
set -uo pipefail
. "$VMSH_SOURCE_DIR/tests/e2e/scratch.sh"
"$VMSHADOW" init >/dev/null 2>&1 || fail "init"

P=$T/pwned
cases=(
    "/bin/echo a; touch $P"
    "/bin/echo \$(touch $P)"
    "/bin/echo \`touch $P\`"
    "/bin/echo a && touch $P"
    "/bin/echo a || touch $P"
    "/bin/echo a | touch $P"
    "/bin/echo a > $P"
    "/bin/echo a & touch $P"
    "/bin/echo \${X:-\$(touch $P)}"
    "'/bin/echo' a';'touch $P"
)
for c in "${cases[@]}"; do
    rm -f "$P"
    printf 'name = evil\nfreeze = %s\ntimeout = 30\n' "$c" >"$VMSHADOW_WRITERS_DIR/evil.conf"
    OUT=$("$VMSHADOW" backup 2>"$T/err"); RC=$?
    [ -e "$P" ] && fail "a shell ran: '$c' created $P"
    if [ "$RC" = 0 ]; then
        pass "'$c': ran without a shell (text as arguments)"
    elif grep -q "without a shell\|shell operator\|evil" "$T/err"; then
        pass "'$c': refused when the writer loads (exit $RC)"
    else
        fail "'$c': exit $RC without naming the writer: $(cat "$T/err")"
    fi
done
echo "# $n checks passed"
