#!/bin/sh
# cli_precision.sh - --precision fp32|bf16-gemm on the commands that run a
# model: bf16-gemm trains (the same bits at any thread count, other bits
# than fp32's), evaluates and samples where the CPU has AVX512-BF16 in the
# float build, with log-densities near fp32's and a checkpoint of the same
# form; elsewhere it is refused with exit 2 and a
# message naming the flag; an unknown value is a usage error (run by make
# check with FLOWKIT set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT

"$F" data 8gaussians -n 600 --seed 1 -o "$t/g2.csv"
"$F" data 8gaussians -n 200 --seed 2 -o "$t/te.csv"
spec=$top_srcdir/bench/specs/realnvp2d.flow
"$F" train "$spec" --data "$t/g2.csv" --steps 30 --batch 200 --quiet \
    -o "$t/fp32.ckpt"
check "train fp32" 0 $?

# unknown values: usage errors naming the flag, nothing written
for c in train eval logprob sample fit; do
    case $c in
    train) set -- "$spec" --data "$t/g2.csv" -o "$t/no.ckpt" ;;
    fit) set -- "$top_srcdir/specs/funnel_iaf.flow" -o "$t/no.ckpt" ;;
    sample) set -- "$t/fp32.ckpt" -n 5 -o "$t/no.csv" ;;
    *) set -- "$t/fp32.ckpt" --data "$t/te.csv" ;;
    esac
    "$F" $c "$@" --precision nope >"$t/out" 2>"$t/err"
    check "$c --precision nope" 2 $?
    same "$c --precision nope: message" \
        "flowkit $c: --precision must be fp32 or bf16-gemm, got 'nope' (try 'flowkit $c --help')" \
        "$(cat "$t/err")"
done
absent "no checkpoint" "$t/no.ckpt"
absent "no samples" "$t/no.csv"

# where bf16-gemm runs: the float build on a CPU with AVX512-BF16
want=2
if "$F" --version | grep -q 'float32' \
    && grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then
    want=0
fi
"$F" train "$spec" --data "$t/g2.csv" --steps 30 --batch 200 --quiet \
    --precision bf16-gemm -o "$t/bf16.ckpt" 2>"$t/err"
check "train bf16-gemm" $want $?
if [ $want = 2 ]; then
    has "refused: names the flag" "$t/err" \
        "flowkit train: --precision bf16-gemm: bf16-gemm needs"
    absent "refused: no checkpoint" "$t/bf16.ckpt"
    "$F" logprob "$t/fp32.ckpt" --data "$t/te.csv" --precision bf16-gemm \
        -o "$t/lp.csv" 2>"$t/err"
    check "logprob bf16-gemm refused" 2 $?
    has "logprob refused: names the flag" "$t/err" \
        "flowkit logprob: --precision bf16-gemm: bf16-gemm needs"
    finish cli_precision
fi

# the thread count changes no bits in bf16-gemm either
for th in 1 3; do
    "$F" train "$spec" --data "$t/g2.csv" --steps 30 --batch 200 --quiet \
        --precision bf16-gemm --threads $th -o "$t/bf16-$th.ckpt"
    check "train bf16-gemm, $th threads" 0 $?
done
same_file "bf16-gemm: 3 threads = 1" "$t/bf16-1.ckpt" "$t/bf16-3.ckpt"
if cmp -s "$t/fp32.ckpt" "$t/bf16-1.ckpt"; then
    bad "bf16-gemm: the checkpoint of fp32"
else ok; fi
# the checkpoint holds float weights as fp32's does: it evaluates in fp32
"$F" eval "$t/bf16.ckpt" --data "$t/te.csv" --json >"$t/e.json"
check "eval fp32 of a bf16-gemm checkpoint" 0 $?
# fp32's weights evaluated both ways: every log-density within 0.01 nats
"$F" logprob "$t/fp32.ckpt" --data "$t/te.csv" -o "$t/lp32.csv"
check "logprob fp32" 0 $?
"$F" logprob "$t/fp32.ckpt" --data "$t/te.csv" --precision bf16-gemm \
    -o "$t/lp16.csv"
check "logprob bf16-gemm" 0 $?
paste -d, "$t/lp32.csv" "$t/lp16.csv" | awk -F, 'NR > 1 {
        d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; n++ }
    END { print n, m }' >"$t/diff"
read -r n maxd <"$t/diff"
truth "logprob: 200 rows" "$n == 200"
truth "logprob: bf16-gemm within 0.01 nats of fp32 (max $maxd)" \
    "$maxd <= 0.01" "$t/diff"
for c in eval sample; do
    case $c in
    sample) set -- "$t/fp32.ckpt" -n 50 --with-logprob -o "$t/s.csv" ;;
    *) set -- "$t/fp32.ckpt" --data "$t/te.csv" ;;
    esac
    "$F" $c "$@" --precision bf16-gemm >"$t/out" 2>"$t/err"
    check "$c bf16-gemm" 0 $?
done
truth "sample bf16-gemm: 50 rows" "$(($(wc -l <"$t/s.csv") - 1)) == 50"
"$F" fit "$top_srcdir/specs/funnel_iaf.flow" --steps 5 --eval-samples 100 \
    --precision bf16-gemm -o "$t/fit.ckpt" >"$t/out" 2>&1
check "fit bf16-gemm" 0 $?

finish cli_precision
