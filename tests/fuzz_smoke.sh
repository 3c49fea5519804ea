#!/bin/sh
# fuzz_smoke.sh - a few seconds (FUZZ_SMOKE_SECONDS, default 3) of each
# libFuzzer target of tests/fuzz/run.sh (spec, csv, npy, idx, ckpt,
# ckpt_fixed) from its seeds, built at -O0 into the build tree: the
# targets build, run, and find nothing quickly.  The long runs are recorded in
# tests/fuzz/README.md.
# Skipped (exit 77) in sanitizer builds (the targets carry their own ASan
# and UBSan; one build is enough) and where clang or its libFuzzer runtime
# is missing (./quickstart installs clang).
set -u
case " $TEST_CFLAGS " in *fsanitize*)
    echo "fuzz_smoke: skipped (sanitizer build; runs in build/default)"; exit 77 ;;
esac
command -v clang >/dev/null 2>&1 || {
    echo "fuzz_smoke: skipped (clang not installed)"; exit 77; }
out=$top_builddir/tests/fuzz-smoke
mkdir -p "$out"
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
    >"$out/probe.c"
clang -fsanitize=fuzzer -o "$out/probe" "$out/probe.c" >/dev/null 2>&1 || {
    echo "fuzz_smoke: skipped (clang cannot link -fsanitize=fuzzer)"; exit 77; }
. "$top_srcdir/tests/lib.sh"
for target in spec csv npy idx ckpt ckpt_fixed; do
    rm -rf "${out:?}/$target"        # fresh corpus and crashes: seeds only
    if FUZZ_OUT=$out FUZZ_OPT=-O0 FUZZ_ARGS="-seed=1" \
            sh "$top_srcdir/tests/fuzz/run.sh" $target \
            "${FUZZ_SMOKE_SECONDS:-3}" "$top_builddir" >"$out/$target.log" 2>&1 \
            && grep -q "^Done [0-9]* runs" "$out/$target.log"; then
        echo "fuzz_smoke: $target: $(grep "^Done" "$out/$target.log")"
        ok
    else
        bad "fuzz target $target:"; tail -n 40 "$out/$target.log"
    fi
done
finish fuzz_smoke
