#!/bin/sh
# valgrind.sh - the unit suites under valgrind memcheck (no fork, so every
# allocation is seen), failing on any error or definite leak.  The slow
# numerical suites (conform, datasets, data, base, rng) run under ASan/LSan
# in the sanitizer build instead (and vi_fit, whose fits take seconds
# natively), and so does residual: one of its tests
# asserts bit-identical rows across batch sizes, which holds natively but
# not under valgrind, where OpenBLAS detects another CPU and picks other
# kernels.  Skipped (exit 77) in sanitizer builds and
# where valgrind is missing.
set -u
case " $TEST_CFLAGS " in *fsanitize*) echo "valgrind: skipped (sanitizer build)"; exit 77 ;; esac
command -v valgrind >/dev/null 2>&1 || { echo "valgrind: not installed"; exit 77; }
pass=0
fail=0
runner=$(dirname "$FLOWKIT")/tests/flowkit_tests
for s in loader permute model train layers ckpt_model compiler matrix nn \
         transform json checkpoint vi tgemm alloc_fail; do
    if CK_FORK=no CK_RUN_SUITE=$s valgrind -q --error-exitcode=1 \
            --leak-check=full --errors-for-leak-kinds=definite \
            "$runner" >"$s.vg.log" 2>&1; then
        pass=$((pass + 1))
    else
        echo "FAIL: suite $s under valgrind:"; tail -n 30 "$s.vg.log"
        fail=$((fail + 1))
    fi
    rm -f "$s.vg.log"
done
echo "valgrind: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
