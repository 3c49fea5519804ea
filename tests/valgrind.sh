#!/bin/sh
# valgrind.sh - every unit suite under valgrind memcheck (no fork, so every
# allocation is seen), failing on any error or definite leak.  The suites
# come from the runner itself (`flowkit_tests --list`), so a new suite runs
# here whole unless `partial` below names it.  The test cases left out are
# printed as "skipped: ..." with the reason; the sanitizer build runs them
# all under ASan/LSan.  Skipped (exit 77) in sanitizer builds and where
# valgrind is missing.
set -u
case " $TEST_CFLAGS " in *fsanitize*) echo "valgrind: skipped (sanitizer build)"; exit 77 ;; esac
command -v valgrind >/dev/null 2>&1 || { echo "valgrind: not installed"; exit 77; }
. "$top_srcdir/tests/lib.sh"
runner=$top_builddir/tests/flowkit_tests

# partial SUITE: true for a suite that runs only some of its test cases
# here; sets `cases` (those that run; none when empty) and `why` (why the
# others do not).  Times: wall seconds under valgrind on a loaded 2-core
# machine.
partial() {
    case $1 in
    base)
        cases="gradients sampling"
        why="densities integrates each density on grids of up to 80001
             points: 35 s; the same log-densities run in gradients" ;;
    conform)
        cases="simple_layers bug_detection"
        why="finite-difference Jacobians through networks, fixed-point
             inverses and ODE solves take 2-3 minutes per layer type; the
             code of those layers runs here in the layers, nn, made_step,
             residual and ode suites" ;;
    datasets)
        cases="densities api"
        why="samples draws up to 400000 points per data set to check
             their moments: 140 s" ;;
    residual)
        cases="certificate inverse"
        why="estimators averages hundreds of stochastic log-det
             estimates and their gradients: 110 s; batch_invariance
             asserts bit-identical rows across batch sizes, which holds
             natively but not here, where OpenBLAS detects another CPU and
             picks other kernels" ;;
    vi_fit)
        cases=
        why="each fit takes about a second natively, minutes here" ;;
    *) return 1 ;;
    esac
}

# vg SUITE [CASE]: the runner under valgrind on one suite (or one of its
# test cases).  A pass needs a clean report and at least one test run, so
# that a renamed case cannot pass by running nothing.
vg() {
    what="suite $1${2:+, case $2}"
    log=$top_builddir/tests/valgrind-$1${2:+-$2}.log
    start=$(date +%s)
    if env CK_FORK=no CK_RUN_SUITE="$1" ${2:+CK_RUN_CASE="$2"} \
            valgrind -q --error-exitcode=1 --leak-check=full \
            --errors-for-leak-kinds=definite "$runner" >"$log" 2>&1 \
            && grep -q 'Checks: [1-9][0-9]*, Failures: 0, Errors: 0' "$log"
    then
        ok; echo "$what: $(($(date +%s) - start)) s"
    else
        bad "$what under valgrind:"; tail -n 30 "$log"
    fi
    rm -f "$log"
}

suites=$("$runner" --list) || { bad "$runner --list"; finish valgrind; }
for s in $suites; do
    if partial "$s"; then
        for c in $cases; do
            vg "$s" "$c"
        done
        echo "skipped: suite $s${cases:+ except cases $cases}" \
             "($(printf '%s' "$why" | tr -s '\n ' ' '))"
    else
        vg "$s"
    fi
done
finish valgrind
