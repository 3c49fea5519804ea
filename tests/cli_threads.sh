#!/bin/sh
# cli_threads.sh - the thread count changes no bits: training (coupling,
# MADE, batchnorm, actnorm, a layer that draws) and variational fits (iaf,
# an ODE drawing Hutchinson probes) give byte-identical checkpoints at 1,
# 2 and 3 threads, and eval, logprob, sample, encode and decode
# byte-identical outputs, an ODE that draws in evaluation too;
# --threads defaults to the CPUs, and FLOWKIT_THREADS sets it (run by
# make check with FLOWKIT set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT

"$F" data 8gaussians -n 400 --seed 1 -o "$t/g2.csv"
"$F" data 8gaussians -n 150 --seed 2 -o "$t/te.csv"
"$F" data gmm --dim 64 --components 8 -n 200 --seed 1 -o "$t/g64.csv"
"$F" data shapes --size 4 -n 200 --seed 1 -o "$t/sh.npy"
cat >"$t/bn.flow" <<'EOF'
flow bn {
    input x : real[2];
    repeat 2 as i {
        coupling(mask = parity(i), hidden = [16], transformer = affine);
        batchnorm;
    }
    output z ~ normal;
}
EOF

# train NAME SPEC ARGS...: 1, 2 and 3 threads, the same checkpoint.
# Batches of 100 and 70 rows end in a short block; the epoch's last
# batch is shorter still.
train() {
    name=$1; shift
    for th in 1 2 3; do
        "$F" train "$@" --threads $th --quiet -o "$t/$name$th.ckpt"
        check "$name: train, $th threads" 0 $?
    done
    same_file "$name: 2 threads = 1" "$t/${name}1.ckpt" "$t/${name}2.ckpt"
    same_file "$name: 3 threads = 1" "$t/${name}1.ckpt" "$t/${name}3.ckpt"
}
train rnvp "$top_srcdir/bench/specs/realnvp2d.flow" --data "$t/g2.csv" \
    --batch 100 --steps 6 --seed 2
# maf clips: the gradient's norm is summed in fixed chunks (train.c
# grad_norm2), not per thread
train maf "$top_srcdir/bench/specs/maf64.flow" --data "$t/g64.csv" \
    --batch 70 --steps 4 --seed 2 --clip 0.5
train bn "$t/bn.flow" --data "$t/g2.csv" --batch 70 --steps 8 --seed 2
train nice "$top_srcdir/specs/nice.flow" --data "$t/g2.csv" --batch 90 \
    --steps 8 --seed 2
train deq "$top_srcdir/specs/dequant_tiny.flow" --data "$t/sh.npy" \
    --batch 70 --steps 4 --seed 2
# fit NAME SPEC ARGS...: 1, 2 and 3 threads, the same checkpoint.  A
# batch of 100 samples ends in a short block (blocks of 64).
fit() {
    name=$1; shift
    for th in 1 2 3; do
        "$F" fit "$@" --threads $th -o "$t/$name$th.ckpt" >/dev/null \
            2>"$t/err"
        check "$name: fit, $th threads" 0 $?
    done
    same_file "$name: 2 threads = 1" "$t/${name}1.ckpt" "$t/${name}2.ckpt"
    same_file "$name: 3 threads = 1" "$t/${name}1.ckpt" "$t/${name}3.ckpt"
}
cat >"$t/odefit.flow" <<'EOF'
flow odefit {
    input x : real[2];
    coupling(mask = parity(0), hidden = [16], transformer = affine);
    ode(hidden = [16], time = concat, solver = rk4(steps = 3),
        trace = hutchinson(in_eval = true), gradient = backprop);
    output z ~ normal;
    target banana;
}
EOF
fit funnel "$top_srcdir/specs/funnel_iaf.flow" --batch 100 --steps 5 \
    --seed 3 --eval-samples 50
fit odefit "$t/odefit.flow" --batch 100 --steps 4 --seed 3 \
    --eval-samples 50
# --reproducible: the same bits at any thread count too
for th in 1 3; do
    "$F" fit "$top_srcdir/specs/funnel_iaf.flow" --batch 100 --steps 5 \
        --seed 3 --eval-samples 50 --reproducible --threads $th \
        -o "$t/funr$th.ckpt" >/dev/null 2>"$t/err"
    check "funnel: fit --reproducible, $th threads" 0 $?
done
same_file "funnel: --reproducible, 3 threads = 1" "$t/funr1.ckpt" \
    "$t/funr3.ckpt"

# the default (all the CPUs) and FLOWKIT_THREADS: the same bits again
"$F" train "$t/bn.flow" --data "$t/g2.csv" --batch 70 --steps 8 --seed 2 \
    --quiet -o "$t/bnd.ckpt"; check "bn: default threads" 0 $?
same_file "bn: default threads = 1" "$t/bn1.ckpt" "$t/bnd.ckpt"
FLOWKIT_THREADS=3 "$F" train "$t/bn.flow" --data "$t/g2.csv" --batch 70 \
    --steps 8 --seed 2 --quiet -o "$t/bne.ckpt"
check "bn: FLOWKIT_THREADS=3" 0 $?
same_file "bn: FLOWKIT_THREADS=3 = 1 thread" "$t/bn1.ckpt" "$t/bne.ckpt"

# evaluation: the same bytes at any thread count
for th in 1 2 3; do
    "$F" eval "$t/nice1.ckpt" --data "$t/te.csv" --json --threads $th \
        >"$t/ev$th.json"; check "eval, $th threads" 0 $?
    "$F" logprob "$t/nice1.ckpt" --data "$t/te.csv" --threads $th \
        -o "$t/lp$th.csv"; check "logprob, $th threads" 0 $?
    "$F" sample "$t/nice1.ckpt" -n 150 --seed 4 --threads $th \
        -o "$t/s$th.csv"; check "sample, $th threads" 0 $?
    "$F" encode "$t/nice1.ckpt" --data "$t/te.csv" --threads $th \
        -o "$t/z$th.csv"; check "encode, $th threads" 0 $?
    "$F" decode "$t/nice1.ckpt" --data "$t/z1.csv" --threads $th \
        -o "$t/x$th.csv"; check "decode, $th threads" 0 $?
    "$F" eval "$t/deq1.ckpt" --data "$t/sh.npy" --json --threads $th \
        >"$t/dq$th.json"; check "eval dequantize, $th threads" 0 $?
    "$F" logprob "$t/maf1.ckpt" --data "$t/g64.csv" --threads $th \
        -o "$t/mlp$th.csv"; check "logprob maf64, $th threads" 0 $?
    # Hutchinson probes in evaluation: each 256-row grid block's own
    "$F" eval "$t/odefit1.ckpt" --data "$t/g2.csv" --json --threads $th \
        >"$t/oev$th.json"; check "eval ode, $th threads" 0 $?
    "$F" logprob "$t/odefit1.ckpt" --data "$t/g2.csv" --threads $th \
        -o "$t/olp$th.csv"; check "logprob ode, $th threads" 0 $?
    "$F" sample "$t/odefit1.ckpt" -n 600 --seed 4 --with-logprob \
        --threads $th -o "$t/os$th.csv"; check "sample ode, $th threads" 0 $?
done
for th in 2 3; do
    for f in ev:json lp:csv s:csv z:csv x:csv dq:json mlp:csv oev:json \
             olp:csv os:csv; do
        same_file "${f%%:*}: $th threads = 1" "$t/${f%%:*}1.${f##*:}" \
            "$t/${f%%:*}$th.${f##*:}"
    done
done

# a FLOWKIT_THREADS that is not a count: a usage error naming it
for v in 0 abc 2x 65 -1 ""; do
    FLOWKIT_THREADS=$v "$F" logprob "$t/nice1.ckpt" --data "$t/te.csv" \
        -o "$t/bad.csv" 2>"$t/err"
    check "FLOWKIT_THREADS='$v'" 2 $?
    has "FLOWKIT_THREADS='$v': message" "$t/err" "FLOWKIT_THREADS='$v'"
done
# --threads overrides it
FLOWKIT_THREADS=abc "$F" logprob "$t/nice1.ckpt" --data "$t/te.csv" \
    --threads 2 -o "$t/lpo.csv"; check "--threads over FLOWKIT_THREADS" 0 $?
same_file "--threads over FLOWKIT_THREADS: output" "$t/lp1.csv" "$t/lpo.csv"

finish cli_threads
