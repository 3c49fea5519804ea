#!/bin/sh
# tests/fuzz/run.sh - builds a libFuzzer target (clang, ASan + UBSan) from
# the sources and runs it for SECONDS on its seed corpus.
#   tests/fuzz/run.sh spec|csv|npy|idx|ckpt|ckpt_fixed|data SECONDS [BUILD_DIR]
# `data` runs csv, npy and idx, SECONDS each.  BUILD_DIR (default
# build/default) provides the generated scanner/parser, flow_version.h,
# the flowkit program (for the seed data and checkpoints) and the plugins.
# Environment:
#   FUZZ_OUT   where objects, corpora and crashes go (default tests/fuzz/out)
#   FUZZ_ARGS  extra libFuzzer options (e.g. -seed=1 -jobs=1)
#   FUZZ_OPT   optimisation and debug flags (default -g -O1; the smoke
#              test of make check uses -O0 to build fast)
# The instrumented objects are kept in FUZZ_OUT/obj and rebuilt only when
# a source or header is newer.  The fuzzer's whole output: FUZZ_OUT/TARGET/
# fuzz.log.  Crashes land in FUZZ_OUT/TARGET/crashes/;
# turn each into a regression test.  Results: tests/fuzz/README.md.
set -eu
usage="usage: run.sh spec|csv|npy|idx|ckpt|ckpt_fixed|data SECONDS [BUILD_DIR]"
target=${1:?$usage}
secs=${2:?$usage}
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${3:-$top/build/default}" && pwd)
out=${FUZZ_OUT:-$top/tests/fuzz/out}
if [ "$target" = data ]; then
    "$0" csv "$secs" "$build"
    "$0" npy "$secs" "$build"
    exec "$0" idx "$secs" "$build"
fi
case $target in
spec) def=FUZZ_SPEC ;; csv) def=FUZZ_CSV ;; npy) def=FUZZ_NPY ;;
idx) def=FUZZ_IDX ;;
ckpt) def=FUZZ_CKPT ;; ckpt_fixed) def=FUZZ_CKPT_FIXED ;;
*) echo "run.sh: unknown target '$target' ($usage)" >&2; exit 2 ;;
esac
command -v clang >/dev/null 2>&1 || { echo "run.sh: clang not found" >&2; exit 3; }
work=$out/$target
FLOW_PLUGIN_PATH="$build/plugins/.libs:$build/tests/specplugins/.libs"
export FLOW_PLUGIN_PATH
mkdir -p "$work/corpus" "$work/crashes" "$out/obj"

# ---- seeds (the corpus keeps what earlier runs found)
case $target in
spec) find "$top/specs" "$top/tests/specs" -name '*.flow' -exec cp {} "$work/corpus/" \;
      # not the specs that run into the expansion limits on purpose: each
      # takes 10-75 s under ASan + coverage (well under 1 s natively), and
      # so would every mutation of them (README: slow units)
      rm -f "$work/corpus/too_many_layers.flow" "$work/corpus/too_many_cells.flow" \
          "$work/corpus/huge_repeat.flow" "$work/corpus/huge_work.flow" ;;
csv) cp "$top"/tests/fuzz/seeds/csv/* "$work/corpus/"
     "$build/flowkit" data moons -n 20 -o "$work/corpus/moons.csv" ;;
npy) cp "$top"/tests/fuzz/seeds/npy/* "$work/corpus/"
     "$build/flowkit" data moons -n 20 --format npy -o "$work/corpus/moons.npy" ;;
idx) cp "$top"/tests/fuzz/seeds/idx/* "$work/corpus/"
     "$build/flowkit" data shapes -n 4 --size 4 -o "$work/corpus/shapes.idx" ;;
ckpt|ckpt_fixed)
    # checkpoints of this build's precision and format, trained for 2
    # steps: moons (too large for -max_len, the fuzzer sees its first
    # 8192 bytes) and the small specs of seeds/ckpt/, whole: couplings,
    # actnorm, batchnorm buffers, linear, a best-so-far copy; a
    # conditional MAF and spline; an exit; a variational fit and its target
    if [ ! -f "$work/corpus/tiny.ckpt" ]; then
        seeds=$top/tests/fuzz/seeds/ckpt
        if ! { "$build/flowkit" data moons -n 64 -o "$work/m.csv" &&
               "$build/flowkit" data gmm --dim 4 -n 32 -o "$work/g.csv" &&
               "$build/flowkit" data 8gaussians --labels -n 32 -o "$work/l.csv" &&
               "$build/flowkit" train "$top/specs/moons.flow" --data "$work/m.csv" \
                   --steps 2 --batch 32 -o "$work/corpus/moons.ckpt" &&
               "$build/flowkit" train "$seeds/tiny.flow" --data "$work/m.csv" \
                   --steps 2 --batch 8 --valid-fraction 0.25 \
                   -o "$work/corpus/tiny.ckpt" &&
               "$build/flowkit" train "$seeds/cond.flow" --data "$work/l.csv" \
                   --columns x0,x1 --context label0,label1 --steps 2 --batch 8 \
                   -o "$work/corpus/cond.ckpt" &&
               "$build/flowkit" train "$seeds/exits.flow" --data "$work/g.csv" \
                   --steps 2 --batch 8 -o "$work/corpus/exits.ckpt" &&
               "$build/flowkit" fit "$seeds/fit.flow" --steps 2 --batch 8 \
                   --eval-samples 16 -o "$work/corpus/fit.ckpt"; } \
               >"$work/seeds.log" 2>&1; then
            cat "$work/seeds.log" >&2
            echo "run.sh: cannot make the seed checkpoints" >&2
            exit 1
        fi
    fi ;;
esac

# ---- instrumented objects, shared by the targets, rebuilt when stale
make -s -C "$build" compiler/parser.c compiler/lexer.c
opt=${FUZZ_OPT:--g -O1}
# zlib when there is one: the readers inflate gzip'd input (PNG
# directories are no stream, and no target reads them)
zflags="" zlibs=""
if pkg-config --exists zlib 2>/dev/null; then
    zflags="-DFLOW_HAVE_ZLIB=1 $(pkg-config --cflags zlib)"
    zlibs=$(pkg-config --libs zlib)
fi
cflags="$opt -fsanitize=fuzzer-no-link,address,undefined
    -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DFLOW_PLUGIN_DIR=\"/nonexistent\"
    -I$build/include -I$top/include -I$build/compiler -I$top/compiler
    -I$top/runtime $(pkg-config --cflags openblas lapacke) $zflags"
newest=$(ls -t "$top"/include/flow/*.h "$top"/runtime/*.h "$top"/compiler/*.h \
         "$build"/include/flow/flow_version.h "$build"/compiler/parser.h \
         "$build"/compiler/lexer.h | head -n 1)
# other flags: start again
if [ "$(cat "$out/obj/flags" 2>/dev/null)" != "$cflags" ]; then
    rm -f "$out"/obj/*.o
    printf '%s\n' "$cflags" >"$out/obj/flags"
fi
objs=""
for src in "$top"/runtime/*.c \
           "$top"/compiler/*.c "$build/compiler/parser.c" \
           "$build/compiler/lexer.c"; do
    # the MPI communicator: comm.c without FLOW_HAVE_MPI never calls it,
    # and mpi.h is not on this include path
    [ "$(basename "$src")" = comm_mpi.c ] && continue
    o=$out/obj/$(basename "$(dirname "$src")")_$(basename "$src" .c).o
    if [ ! -f "$o" ] || [ "$src" -nt "$o" ] || [ "$newest" -nt "$o" ]; then
        # shellcheck disable=SC2086
        clang $cflags -c -o "$o" "$src"
    fi
    objs="$objs $o"
done
# shellcheck disable=SC2086
clang $cflags -fsanitize=fuzzer -D$def -o "$work/fuzz_$target" \
    "$top/tests/fuzz/fuzz_targets.c" $objs \
    $(pkg-config --libs openblas lapacke) $zlibs -ldl -lm -lpthread

dict=""
[ -f "$top/tests/fuzz/$target.dict" ] && dict="-dict=$top/tests/fuzz/$target.dict"
# an input of the checkpoint targets takes milliseconds: one that runs for
# 30 s hangs (a finding within the run, not after libFuzzer's 20 minutes)
timeout=""
case $target in ckpt|ckpt_fixed) timeout="-timeout=30" ;; esac
# shellcheck disable=SC2086
"$work/fuzz_$target" -max_total_time="$secs" -max_len=8192 $dict $timeout \
    -artifact_prefix="$work/crashes/" -print_final_stats=1 ${FUZZ_ARGS:-} \
    "$work/corpus" >"$work/fuzz.log" 2>&1 || true
# the last status line (DONE: executions, coverage, corpus; after a
# finding, the executions until then) and the statistics
grep -E '^#[0-9]+[[:space:]]' "$work/fuzz.log" | tail -n 1 || true
grep -E '^(Done|stat::)' "$work/fuzz.log" || true
# a crash (or leak, timeout, OOM) leaves a file in crashes/ (and the
# fuzzer's log ends with its report); slow units (> 10 s) are reported,
# not failed
if ls "$work/crashes" | grep -q '^slow-unit-'; then
    echo "run.sh: $target: slow units (not failures) in $work/crashes:" >&2
    ls "$work/crashes" | grep '^slow-unit-' >&2
fi
if ls "$work/crashes" | grep -qv '^slow-unit-'; then
    echo "run.sh: $target: findings in $work/crashes:" >&2
    ls "$work/crashes" | grep -v '^slow-unit-' >&2
    exit 1
fi
