#!/bin/sh
# emit_c.sh - flowc --emit=c writes C that compiles against the public
# headers and libflowkit, and builds the same model as the in-process path:
# bit-identical log-probabilities on the same parameters (tests/emit/harness.c).
set -u
pass=0
fail=0
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# funnel_iaf.flow has a target statement: its emitted target is checked too
for spec in multiscale.flow cond_maf.flow nsf_8gaussians.flow maf_gmm.flow \
        resflow_moons.flow funnel_iaf.flow; do
    tdef=
    [ "$spec" = funnel_iaf.flow ] && tdef=-DHARNESS_TARGET
    if ! "$FLOWC" --emit=c --function=emitted_build -o "$t/model.c" \
            "$top_srcdir/specs/$spec" 2>"$t/err"; then
        cat "$t/err"; echo "FAIL: $spec: flowc --emit=c"; fail=$((fail + 1)); continue
    fi
    if ! $CC $TEST_CFLAGS $tdef -I"$top_builddir/include" -I"$top_srcdir/include" \
            -o "$t/harness" "$top_srcdir/tests/emit/harness.c" "$t/model.c" \
            -L"$top_builddir/.libs" -lflowc -lflowkit \
            -Wl,-rpath,"$top_builddir/.libs" -lm 2>"$t/err"; then
        cat "$t/err"; echo "FAIL: $spec: emitted C does not compile"
        fail=$((fail + 1)); continue
    fi
    if "$t/harness" "$top_srcdir/specs/$spec"; then pass=$((pass + 1)); else
        echo "FAIL: $spec: emitted model differs"; fail=$((fail + 1)); fi
done
# no half-written file when emission fails
printf 'flow f {\n input x : real[2];\n output z ~ nosuch;\n}\n' >"$t/bad.flow"
"$FLOWC" --emit=c -o "$t/never.c" "$t/bad.flow" 2>/dev/null
if [ $? -eq 1 ] && [ ! -e "$t/never.c" ] && [ -z "$(ls "$t" | grep tmp)" ]; then
    pass=$((pass + 1)); else echo "FAIL: a failed emission left a file"; fail=$((fail + 1)); fi
echo "emit_c: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
