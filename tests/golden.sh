#!/bin/sh
# golden.sh - golden diagnostics of flowc (run by make check with FLOWC,
# FLOW_PLUGIN_PATH, FLOW_SPEC_PLUGINS and top_srcdir set):
#   tests/specs/bad/NAME.flow   flowc --check exits 1, stderr == NAME.err
#   tests/specs/warn/NAME.flow  flowc --check exits 0, stderr == NAME.err
#   tests/specs/good/NAME.flow  exits 0 with nothing on stderr; NAME.report,
#                               when present, is the exact --report output
# plus the command line's formats and exit codes.  Paths are relative to
# the source tree so that the expected output is the same everywhere.
# Regenerate an expected file (after checking the new output by eye) with
#   FLOWC=... sh tests/golden.sh --update
set -u
update=0
[ "${1:-}" = "--update" ] && update=1
cd "$top_srcdir" || exit 99
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$FLOW_SPEC_PLUGINS"
export FLOW_PLUGIN_PATH
. "$top_srcdir/tests/lib.sh"
same_file_update=$update
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# golden DIR EXPECTED_RC
golden() {
    for f in tests/specs/$1/*.flow; do
        [ -f "$f" ] || continue
        "$FLOWC" --check "$f" >"$t/out" 2>"$t/err"
        rc=$?
        if [ $rc -ne "$2" ]; then
            bad "$f: exit $rc, expected $2"; cat "$t/err"; continue
        fi
        same_file "$f" "${f%.flow}.err" "$t/err"
    done
}
golden bad 1
golden warn 0

for f in tests/specs/good/*.flow; do
    "$FLOWC" --check "$f" >"$t/out" 2>"$t/err"
    rc=$?
    if [ $rc -ne 0 ] || [ -s "$t/err" ]; then
        bad "$f: exit $rc, expected 0 and no diagnostics:"; cat "$t/err"
    else ok; fi
    if [ -f "${f%.flow}.report" ]; then
        "$FLOWC" --report "$f" >"$t/out" 2>&1
        same_file "$f --report" "${f%.flow}.report" "$t/out"
    fi
done

# --- command line ------------------------------------------------------
B=tests/specs/bad/unknown_attr.flow
"$FLOWC" --terse "$B" >"$t/out" 2>"$t/err"; rc=$?
[ $rc -eq 1 ] && ok || bad "--terse: exit $rc"
grep -v ': error\[F0' "$t/err" >"$t/rest"
[ "$(wc -l <"$t/err")" -eq 2 ] && [ ! -s "$t/rest" ] && ok \
    || { bad "--terse prints more than first lines:"; cat "$t/err"; }

"$FLOWC" --diagnostics=json "$B" >"$t/out" 2>"$t/json"; rc=$?
[ $rc -eq 1 ] && ok || bad "--diagnostics=json: exit $rc"
cat >"$t/want" <<'EOF'
[
  {"file": "tests/specs/bad/unknown_attr.flow", "line": 3, "column": 26, "end_line": 3, "end_column": 30, "severity": "error", "code": "F0103", "message": "unknown attribute 'hiden' for layer 'tcoupling'", "help": "did you mean 'hidden'?"},
  {"file": "tests/specs/bad/unknown_attr.flow", "line": 4, "column": 26, "end_line": 4, "end_column": 31, "severity": "error", "code": "F0103", "message": "unknown attribute 'colour' for layer 'tcoupling'", "help": "layer 'tcoupling' accepts: mask, hidden, transformer"}
]
EOF
same_file "--diagnostics=json" "$t/want" "$t/json"

"$FLOWC" --check --werror tests/specs/warn/unused_context.flow \
    >"$t/out" 2>&1; rc=$?
[ $rc -eq 1 ] && ok || bad "--werror with a warning: exit $rc, expected 1"

"$FLOWC" >"$t/out" 2>&1; rc=$?
[ $rc -eq 2 ] && ok || bad "no arguments: exit $rc, expected 2"
"$FLOWC" --frobnicate x.flow >"$t/out" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -qF "unknown option '--frobnicate'" "$t/out" && ok \
    || bad "unknown option: exit $rc"
"$FLOWC" --emit=rust x.flow >"$t/out" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -qF "unknown emitter 'rust' (use json, dot or c)" "$t/out" \
    && ok || bad "--emit=rust: exit $rc, expected 2"
"$FLOWC" a.flow b.flow >"$t/out" 2>&1; rc=$?
[ $rc -eq 2 ] && ok || bad "two files: exit $rc, expected 2"
"$FLOWC" --help >"$t/out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -qF -- "--diagnostics=FMT" "$t/out" && ok \
    || bad "--help: exit $rc"
"$FLOWC" --check tests/specs/bad/no_such_file.flow >"$t/out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -qF "no_such_file.flow: error[F0010]: cannot read spec" \
    "$t/out" && ok || { bad "missing file: exit $rc"; cat "$t/out"; }

G=tests/specs/good/conditional.flow
"$FLOWC" --emit=json "$G" >"$t/out" 2>"$t/err"; rc=$?
[ $rc -eq 0 ] && grep -qF '"dep_vec": [0, 0, 1, 1]' "$t/out" \
    && grep -qF '"context": {"name": "c", "dim": 2}' "$t/out" \
    && grep -qF '"target": null,' "$t/out" && ok \
    || { bad "--emit=json: exit $rc"; head -20 "$t/out"; }
# a spec's target statement in the JSON and the report
T=specs/funnel_iaf.flow
"$FLOWC" --emit=json "$T" >"$t/out" 2>"$t/err"; rc=$?
[ $rc -eq 0 ] && grep -qF '"target": {"type": "funnel", "text": "funnel(scale = 3)", "file": "specs/funnel_iaf.flow", "line": 18, "col": 5, "plugin": ' "$t/out" \
    && grep -qF '"dim": 4, "attrs": {"scale": 3}},' "$t/out" && ok \
    || { bad "--emit=json with a target: exit $rc"; grep target "$t/out"; }
"$FLOWC" --report "$T" >"$t/out" 2>"$t/err"; rc=$?
[ $rc -eq 0 ] && grep -qF 'target: funnel(scale = 3) (specs/funnel_iaf.flow:18:5, ' "$t/out" \
    && ok || { bad "--report with a target: exit $rc"; cat "$t/out"; }
"$FLOWC" --emit=dot "$G" >"$t/out" 2>"$t/err"; rc=$?
[ $rc -eq 0 ] && grep -qF 'context -> n0 [style=dashed];' "$t/out" && ok \
    || { bad "--emit=dot: exit $rc"; head -20 "$t/out"; }

# --layers, --layer=TYPE: the attribute tables the checks use
"$FLOWC" --layers >"$t/out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -qF "tcoupling        test: coupling (identity stub)" \
    "$t/out" && grep -qF "permute          fixed permutation" "$t/out" && ok \
    || { bad "--layers: exit $rc"; cat "$t/out"; }
"$FLOWC" --layer=tresidual 2>&1 | sed 1,2d >"$t/out"
cat >"$t/want" <<'EOF'
attributes:
  coeff          real, default 0.9, in [0, 10]
                 spectral norm bound of each weight
  activation     enum
                 nonlinearity
                 one of: relu tanh (default) elu sigmoid
  hidden         int list, default [64, 64], in [1, 65536], 1..8 items
                 hidden layer widths of the conditioner
EOF
same_file "--layer=tresidual" "$t/want" "$t/out"
"$FLOWC" --layer=nope >"$t/out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -qF "no layer type 'nope'" "$t/out" && ok \
    || bad "--layer=nope: exit $rc"

# plugins: an extra one by path, and a broken one on the search path
FLOW_PLUGIN_PATH="${FLOW_PLUGIN_PATH%%:*}" "$FLOWC" --check \
    --plugin="$FLOW_SPEC_PLUGINS/testlayers.so" "$G" >"$t/out" 2>&1; rc=$?
[ $rc -eq 0 ] && [ ! -s "$t/out" ] && ok \
    || { bad "--plugin: exit $rc"; cat "$t/out"; }
mkdir "$t/broken"
cp "$FLOW_TEST_PLUGINS/badabi.so" "$t/broken/zz.so"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/broken" "$FLOWC" --check "$G" \
    >"$t/out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -qF "zz.so: ABI version mismatch" "$t/out" && ok \
    || { bad "broken plugin: exit $rc"; cat "$t/out"; }

# -o writes the report to a file and nothing to standard output
"$FLOWC" --report -o "$t/report" tests/specs/good/maf64.flow >"$t/out" 2>&1
rc=$?
[ $rc -eq 0 ] && [ ! -s "$t/out" ] && ok || bad "-o: exit $rc"
same_file "-o report" tests/specs/good/maf64.report "$t/report"

finish golden
