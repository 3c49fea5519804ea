#!/bin/sh
# emit_c.sh - flowc --emit=c writes C that compiles against the public
# headers and libflowkit, and builds the same model as the in-process path:
# bit-identical log-probabilities on the same parameters (tests/emit/harness.c).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# funnel_iaf.flow has a target statement: its emitted target is checked too
for spec in multiscale.flow cond_maf.flow nsf_8gaussians.flow maf_gmm.flow image_tiny.flow glow_tiny.flow \
        resflow_moons.flow funnel_iaf.flow; do
    tdef=
    [ "$spec" = funnel_iaf.flow ] && tdef=-DHARNESS_TARGET
    if ! "$FLOWC" --emit=c --function=emitted_build -o "$t/model.c" \
            "$top_srcdir/specs/$spec" 2>"$t/err"; then
        cat "$t/err"; bad "$spec: flowc --emit=c"; continue
    fi
    if ! $CC $TEST_CFLAGS $tdef -I"$top_builddir/include" -I"$top_srcdir/include" \
            -o "$t/harness" "$top_srcdir/tests/emit/harness.c" "$t/model.c" \
            -L"$top_builddir/.libs" -lflowc -lflowkit \
            -Wl,-rpath,"$top_builddir/.libs" -lm 2>"$t/err"; then
        cat "$t/err"; bad "$spec: emitted C does not compile"; continue
    fi
    if "$t/harness" "$top_srcdir/specs/$spec"; then ok; else
        bad "$spec: emitted model differs"; fi
done
# no half-written file when emission fails
printf 'flow f {\n input x : real[2];\n output z ~ nosuch;\n}\n' >"$t/bad.flow"
"$FLOWC" --emit=c -o "$t/never.c" "$t/bad.flow" 2>/dev/null
if [ $? -eq 1 ] && [ ! -e "$t/never.c" ] && [ -z "$(ls "$t" | grep tmp)" ]; then
    ok; else bad "a failed emission left a file"; fi
finish emit_c
