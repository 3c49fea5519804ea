#!/bin/sh
# tests/fuzz/run.sh - builds a libFuzzer target (clang, ASan + UBSan) from
# the sources and runs it for SECONDS on its seed corpus.
#   tests/fuzz/run.sh spec|data|ckpt SECONDS [BUILD_DIR]
# BUILD_DIR (default build/default) provides the generated scanner/parser,
# flow_version.h and the plugins.  Crashes land in tests/fuzz/out/TARGET/;
# turn each into a regression test.  Results: tests/fuzz/README.md.
set -eu
target=${1:?usage: run.sh spec|data|ckpt SECONDS [BUILD_DIR]}
secs=${2:?usage: run.sh spec|data|ckpt SECONDS [BUILD_DIR]}
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${3:-$top/build/default}" && pwd)
work=$top/tests/fuzz/out/$target
FLOW_PLUGIN_PATH="$build/plugins/.libs:$build/tests/specplugins/.libs"
export FLOW_PLUGIN_PATH
mkdir -p "$work/corpus" "$work/crashes"
case $target in
spec) def=FUZZ_SPEC
      find "$top/specs" "$top/tests/specs" -name '*.flow' -exec cp {} "$work/corpus/" \; ;;
data) def=FUZZ_DATA
      printf 'x0,x1\n1,2\n3.5,-4e-3\n' >"$work/corpus/a.csv"
      "$build/flowkit" data moons -n 20 --format npy -o "$work/corpus/b.npy"
      "$build/flowkit" data moons -n 20 -o "$work/corpus/c.csv" ;;
ckpt) def=FUZZ_CKPT
      "$build/flowkit" data moons -n 64 -o "$work/m.csv"
      "$build/flowkit" train "$top/specs/moons.flow" --data "$work/m.csv" --steps 2 \
          --batch 32 -o "$work/corpus/a.ckpt" 2>/dev/null ;;
*) echo "run.sh: unknown target '$target'" >&2; exit 2 ;;
esac
make -s -C "$build" compiler/parser.c compiler/lexer.c
clang -g -O1 -fsanitize=fuzzer,address,undefined -D$def \
    -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
    -DFLOW_PLUGIN_DIR='"/nonexistent"' \
    -I"$build/include" -I"$top/include" -I"$build/compiler" -I"$top/compiler" \
    -I"$top/runtime" $(pkg-config --cflags openblas lapacke) \
    -o "$work/fuzz_$target" "$top/tests/fuzz/fuzz_targets.c" \
    "$top"/runtime/[a-eg-z]*.c "$top"/runtime/fileio.c \
    "$top"/compiler/[a-eg-z]*.c "$build/compiler/parser.c" "$build/compiler/lexer.c" \
    $(pkg-config --libs openblas lapacke) -ldl -lm -lpthread
"$work/fuzz_$target" -max_total_time="$secs" -max_len=8192 \
    -artifact_prefix="$work/crashes/" -print_final_stats=1 "$work/corpus" 2>&1 \
    | tail -n 25
