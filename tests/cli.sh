#!/bin/sh
# cli.sh - the flowkit command's exit codes and output (run by make check
# with FLOWKIT, FLOW_PLUGIN_PATH and FLOW_TEST_PLUGINS set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

"$FLOWKIT" --version >"$t/out" 2>&1; check version 0 $?
has version "$t/out" "flowkit "
has version "$t/out" "plugin ABI 1"

"$FLOWKIT" --help >"$t/out" 2>&1; check help 0 $?
has help "$t/out" "usage: flowkit COMMAND"

"$FLOWKIT" >"$t/out" 2>&1; check no-args 2 $?
"$FLOWKIT" frobnicate >"$t/out" 2>&1; check unknown 2 $?
has unknown "$t/out" "unknown command 'frobnicate'"

"$FLOWKIT" plugins >"$t/out" 2>&1; check plugins 0 $?
has plugins "$t/out" "permute.so"
has plugins "$t/out" "permute        fixed permutation of dimensions"

"$FLOWKIT" plugins --json >"$t/out" 2>&1; check plugins-json 0 $?
has plugins-json "$t/out" '"name": "permute"'

"$FLOWKIT" plugins --bogus >"$t/out" 2>&1; check plugins-usage 2 $?

mkdir "$t/bad"
cp "$FLOW_TEST_PLUGINS/badabi.so" "$t/bad/zz.so"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/bad" "$FLOWKIT" plugins >"$t/out" 2>&1
check plugins-bad 1 $?
has plugins-bad "$t/out" "$t/bad/zz.so: ABI version mismatch: expected 1, got 2"

finish cli
