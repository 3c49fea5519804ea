#!/bin/sh
# bench.sh - smoke test of bench/flowbench, the timing driver behind
# bench/run: it runs, prints well-formed JSON with consistent positive
# figures, the benchmark specs have the issue's architectures (parameter
# counts), and bad input gets a clear error.  No timing is asserted (speed
# is measured by bench/run, never by tests).
set -u
. "$top_srcdir/tests/lib.sh"
# field FILE KEY: the value of "KEY": in a one-line JSON object
field() { sed -n "s/.*\"$2\": *\"\{0,1\}\([^,\"}]*\)\"\{0,1\}[,}].*/\1/p" "$1"; }
# one JSON object on one line, braces balanced, no NaN/inf
wellformed() {
    same "$1-lines" 1 "$(wc -l <"$t/out" | tr -d ' ')"
    has "$1-object" "$t/out" "{\"mode\": "
    if grep -qiE 'nan|inf' "$t/out"; then
        bad "$1: non-finite value:"; cat "$t/out"
    else ok; fi
    same "$1-close" "}" "$(tail -c 2 "$t/out" | head -c 1)"
}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
check_log=$t/err
fb="$top_builddir/bench/flowbench"
specs="$top_srcdir/bench/specs"

"$fb" --help >"$t/out" 2>"$t/err"; check help 0 $?
has help "$t/out" "usage: flowbench sgemm"

# --- sgemm
"$fb" sgemm --n 64 --reps 3 --blas-threads 1 >"$t/out" 2>"$t/err"
check sgemm 0 $?
wellformed sgemm
same sgemm-n 64 "$(field "$t/out" n)"
same sgemm-threads 1 "$(field "$t/out" blas_threads_effective)"
g=$(field "$t/out" gflops_best); m=$(field "$t/out" gflops_median)
truth sgemm-gflops "$g > 0 && $m > 0 && $g >= $m"

# --- data
"$FLOWKIT" data 8gaussians -n 300 --seed 1 -o "$t/g2.npy" || exit 1
"$FLOWKIT" data gmm --dim 8 -n 300 --seed 1 -o "$t/g8.npy" || exit 1
"$FLOWKIT" data gmm --dim 64 -n 300 --seed 1 -o "$t/g64.npy" || exit 1
"$FLOWKIT" data 8gaussians -n 300 --seed 1 -o "$t/g2.csv" || exit 1

# --- every metric on realnvp2d, 2 executor threads
for metric in train logprob sample; do
    "$fb" model "$specs/realnvp2d.flow" --data "$t/g2.npy" --metric $metric \
        --batch 64 --warmup 1 --iters 2 --threads 2 >"$t/out" 2>"$t/err"
    check "$metric" 0 $?
    wellformed "$metric"
    same "$metric-metric" "$metric" "$(field "$t/out" metric)"
    same "$metric-iters" 2 "$(field "$t/out" iters)"
    same "$metric-threads" 2 "$(field "$t/out" threads)"
    same "$metric-batch" 64 "$(field "$t/out" batch)"
    ips=$(field "$t/out" iters_per_s); rps=$(field "$t/out" rows_per_s)
    sec=$(field "$t/out" seconds)
    truth "$metric-rates" "$ips > 0 && $sec > 0"
    # rows/s = batch x iterations/s; iterations/s = iterations / seconds
    truth "$metric-consistent" "($rps / ($ips * 64) - 1)^2 < 1e-6 \
        && ((2 / $sec) / $ips - 1)^2 < 1e-6"
    peak=$(field "$t/out" peak_rss_kib); base=$(field "$t/out" base_rss_kib)
    truth "$metric-memory" "$base > 0 && $peak >= $base"
done
# the CSV form of the same data, and --min-time keeps going past --iters
"$fb" model "$specs/realnvp2d.flow" --data "$t/g2.csv" --metric train \
    --batch 32 --warmup 0 --iters 1 --min-time 0.05 --threads 1 \
    >"$t/out" 2>"$t/err"
check min-time 0 $?
wellformed min-time
sec=$(field "$t/out" seconds)
truth min-time-seconds "$sec >= 0.05 && $(field "$t/out" iters) >= 1"

# --- the four configurations have the issue's architectures: parameter
# counts computed by hand (bench/README.md; PyTorch's models agree)
#   realnvp2d 8 x (1*128+128 + 128*128+128 + 128*2+2)         = 136208
#   maf64     5 x (64*512+512 + 512*512+512 + 512*128+128)    = 1808000
#   nsf8      6 x (4*128+128 + 128*128+128 + 128*92+92)       = 174120
#   cnf2d     3*64+64 + 65*64+64 + 65*64+64 + 65*2+2          = 8836
for c in realnvp2d:g2:136208 maf64:g64:1808000 nsf8:g8:174120 \
         cnf2d:g2:8836; do
    name=${c%%:*}; rest=${c#*:}; data=${rest%%:*}; params=${rest#*:}
    "$fb" model "$specs/$name.flow" --data "$t/$data.npy" --metric train \
        --batch 16 --warmup 0 --iters 1 >"$t/out" 2>"$t/err"
    check "$name" 0 $?
    wellformed "$name"
    same "$name-params" "$params" "$(field "$t/out" params)"
done

# --- regression: the ode layer's evaluation calls on 2 threads (blocks of
# 256 rows, no tape) overran a workspace sized for 2048 rows when the
# recorded tapes fit only the smaller call (intermittent segfault; the
# sanitizer build sees the overflow every time)
"$fb" model "$specs/cnf2d.flow" --data "$t/g2.npy" --metric logprob \
    --threads 2 --batch 4096 --warmup 0 --iters 2 >"$t/out" 2>"$t/err"
check cnf2d-logprob-2-threads 0 $?

# --- bad input
"$fb" >"$t/out" 2>"$t/err"; check no-command 2 $?
"$fb" frobnicate >"$t/out" 2>"$t/err"; check bad-command 2 $?
has bad-command-msg "$t/err" "unknown command 'frobnicate'"
"$fb" model --data "$t/g2.npy" --metric train >"$t/out" 2>"$t/err"
check no-spec 2 $?
has no-spec-msg "$t/err" "no spec given"
"$fb" model "$specs/realnvp2d.flow" --data "$t/g2.npy" --metric fast \
    >"$t/out" 2>"$t/err"
check bad-metric 2 $?
has bad-metric-msg "$t/err" "unknown metric 'fast'"
"$fb" model "$specs/realnvp2d.flow" --data "$t/g2.npy" --metric train \
    --batch 0 >"$t/out" 2>"$t/err"
check zero-batch 2 $?
has zero-batch-msg "$t/err" "--batch: '0' is not an integer"
"$fb" sgemm --n x >"$t/out" 2>"$t/err"; check bad-n 2 $?
"$fb" model "$specs/realnvp2d.flow" --data "$t/missing.npy" --metric train \
    >"$t/out" 2>"$t/err"
check missing-data 1 $?
has missing-data-msg "$t/err" "missing.npy"
"$fb" model "$specs/maf64.flow" --data "$t/g2.npy" --metric train \
    >"$t/out" 2>"$t/err"
check wrong-dim 1 $?
has wrong-dim-msg "$t/err" "g2.npy"
"$fb" model "$specs/realnvp2d.flow" --data "$t/g2.npy" --metric train \
    --batch 1000 >"$t/out" 2>"$t/err"
check small-data 1 $?
has small-data-msg "$t/err" "300 rows, fewer than the batch (1000)"
printf 'flow broken {\n    input x : real[2];\n    bogus();\n}\n' >"$t/bad.flow"
"$fb" model "$t/bad.flow" --data "$t/g2.npy" --metric train \
    >"$t/out" 2>"$t/err"
check bad-spec 1 $?
has bad-spec-msg "$t/err" "bad.flow:3"
same bad-spec-stdout 0 "$(wc -c <"$t/out" | tr -d ' ')"

finish bench
