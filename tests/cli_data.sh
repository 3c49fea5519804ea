#!/bin/sh
# cli_data.sh - `flowkit data`: built-in data sets, formats, exit codes and
# messages (run by make check with FLOWKIT set).
set -u
fail=0
pass=0
check() {  # check NAME EXPECTED_RC ACTUAL_RC
    if [ "$2" = "$3" ]; then pass=$((pass + 1)); else
        echo "FAIL: $1: exit $3, expected $2"; fail=$((fail + 1)); fi
}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

"$FLOWKIT" --version >"$t/out" 2>&1; check version 0 $?

echo "cli_data: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
