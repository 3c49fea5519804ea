#!/bin/sh
# mpi.sh - data-parallel training under mpirun: 1, 2 and 3 ranks end with
# bit-identical checkpoints, equal to one process's --reproducible run and
# to a resume with another rank count, each rank holding only its share
# of the data; a killed rank ends the job, and so does a stopped one, by
# the collectives' timeout.  eval, logprob, encode and compare on 1, 2 and
# 3 ranks print and write the bytes of one process; a failing row ends
# every rank.  The same for variational fits (flowkit fit), which also
# converge; a rank whose target fails, a divergence, or a signal on one
# rank ends every rank.
set -u
. "$top_srcdir/tests/lib.sh"
if [ "${MPI_BUILT:-no}" != yes ]; then
    echo "mpi.sh: skipped: flowkit was configured without MPI"
    exit 77
fi
if ! command -v mpirun >/dev/null 2>&1; then
    echo "mpi.sh: skipped: no mpirun on PATH (apt-get install openmpi-bin)"
    exit 77
fi
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
SPEC=$top_srcdir/specs/moons.flow
# Open MPI refuses root (CI's containers) without these
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# one machine, more ranks than cores; no network interfaces probed
OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_btl \
    OMPI_MCA_rmaps_base_oversubscribe
# Open MPI's own allocations at exit are not flowkit's leaks
case " ${TEST_CFLAGS:-} " in *fsanitize=address*)
    ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export ASAN_OPTIONS ;;
esac
run() { timeout 120 mpirun --oversubscribe -np "$@"; }

"$F" data moons -n 300 --seed 1 -o "$t/tr.csv"
# batch 70: blocks of 32, 32 and 6 rows (3 blocks: one per rank at 3, two
# and one at 2, and a rank with none at 4); 300 rows: the fifth step's
# batch is 20 rows, then a new shuffle; a held-out fifth validated at each
# epoch's end
A="--data $t/tr.csv --batch 70 --epochs 3 --seed 3 --threads 2 --valid-fraction 0.2 --quiet"
"$F" train "$SPEC" $A --reproducible -o "$t/r.ckpt"; check reproducible 0 $?
for n in 1 2 3 4; do
    run $n "$F" train "$SPEC" $A -o "$t/m$n.ckpt" 2>"$t/err$n"
    check "np $n" 0 $?
    same_file "np $n = one process --reproducible" "$t/r.ckpt" "$t/m$n.ckpt"
done
# without --reproducible one process adds blocks of up to 128 rows in
# block order: other bits
"$F" train "$SPEC" $A -o "$t/plain.ckpt"
if cmp -s "$t/plain.ckpt" "$t/r.ckpt"; then
    bad "plain: the local block sum gave the block sum's bits"; else ok; fi
# a layer that draws in its passes (dequantize's noise): block k draws
# from the stream of (step, k), so the bits do not follow the split
"$F" data shapes --size 4 -n 300 --seed 1 -o "$t/sh.npy"
D="--data $t/sh.npy --batch 70 --steps 6 --seed 2 --quiet"
"$F" train "$top_srcdir/specs/dequant_tiny.flow" $D --reproducible \
    -o "$t/dr.ckpt"; check "stochastic: reproducible" 0 $?
for n in 2 3; do
    run $n "$F" train "$top_srcdir/specs/dequant_tiny.flow" $D \
        -o "$t/dm$n.ckpt"; check "stochastic: np $n" 0 $?
    same_file "stochastic: np $n = one process" "$t/dr.ckpt" "$t/dm$n.ckpt"
done
# batch normalisation with the statistics of the whole global batch
# (each block's sums added in block order over every rank): the
# checkpoint, running averages included, is the same bits for any N and
# any thread count; at 4 ranks one rank holds none of the 3 blocks and
# still takes part in the sums
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
BN="--data $t/tr.csv --batch 70 --steps 6 --seed 2 --quiet"
"$F" train "$t/bn.flow" $BN --reproducible -o "$t/br.ckpt"
check "batchnorm: reproducible" 0 $?
"$F" train "$t/bn.flow" $BN --reproducible --threads 3 -o "$t/br3.ckpt"
check "batchnorm: reproducible, 3 threads" 0 $?
same_file "batchnorm: 3 threads = 1 thread" "$t/br.ckpt" "$t/br3.ckpt"
for n in 2 3 4; do
    run $n "$F" train "$t/bn.flow" $BN --threads 2 -o "$t/bm$n.ckpt"
    check "batchnorm: np $n" 0 $?
    same_file "batchnorm: np $n = one process" "$t/br.ckpt" "$t/bm$n.ckpt"
done

# rank 0 alone prints (and no watchdog: FLOWKIT_MPI_TIMEOUT=0)
FLOWKIT_MPI_TIMEOUT=0 run 2 "$F" train "$SPEC" --data "$t/tr.csv" \
    --batch 70 --steps 2 --json -o "$t/j.ckpt" >"$t/out" 2>"$t/err"
check json 0 $?
same "json: one summary" 1 "$(grep -c '"checkpoint"' "$t/out")"

# --resume with another rank count: 2 ranks stop after 4 steps (inside
# the first epoch), 3 ranks go on; the same bits as 3 ranks throughout
B="--data $t/tr.csv --batch 70 --seed 3 --quiet"
run 3 "$F" train "$SPEC" $B --steps 9 -o "$t/full.ckpt"; check full 0 $?
run 2 "$F" train "$SPEC" $B --steps 4 -o "$t/half.ckpt"; check half 0 $?
run 3 "$F" train "$SPEC" $B --steps 9 --resume "$t/half.ckpt" \
    -o "$t/resumed.ckpt"
check resume 0 $?
"$F" export "$t/full.ckpt" -o "$t/full.st" && \
    "$F" export "$t/resumed.ckpt" -o "$t/resumed.st"
same_file "resume 2 -> 3 ranks" "$t/full.st" "$t/resumed.st"

# eval, logprob, encode, compare: 250 rows in --batch 40 blocks, 7 blocks
# split 3 + 4 on 2 ranks and 2 + 2 + 3 on 3; rank 0 gathers the rows in
# input order and prints or writes the bytes of one process
"$F" data moons -n 250 --seed 2 -o "$t/te.csv"
E="--data $t/te.csv --batch 40"
# dequantize, then an ode that estimates its trace in evaluation too: the
# --noise draws (per row) and the Hutchinson probes (per block) must not
# follow the split
cat >"$t/dqode.flow" <<'EOF'
flow dqode {
    input x : real[2] in [0, 1];
    dequantize(levels = 2);
    ode(hidden = [8], solver = rk4(steps = 2), gradient = backprop,
        trace = hutchinson(in_eval = true));
    output z ~ normal;
}
EOF
awk 'BEGIN { srand(3); print "a,b"
    for (i = 0; i < 250; i++) printf "%d,%d\n", rand() < 0.5, rand() < 0.3 }' \
    >"$t/bin.csv"
"$F" train "$t/dqode.flow" --data "$t/bin.csv" --steps 2 --batch 64 --quiet \
    -o "$t/dq.ckpt"
check "dqode: train" 0 $?
N="$t/dq.ckpt --data $t/bin.csv --batch 40 --noise 3 --seed 5 --json"
"$F" eval "$t/r.ckpt" $E >"$t/ev.txt" \
    && "$F" eval "$t/r.ckpt" $E --json >"$t/ev.json" \
    && "$F" eval $N >"$t/noise.json" \
    && "$F" logprob "$t/r.ckpt" $E -o "$t/lp.csv" \
    && "$F" logprob "$t/dq.ckpt" --data "$t/bin.csv" --batch 40 \
        --format npy >"$t/lp.npy" \
    && "$F" compare "$t/r.ckpt" "$t/full.ckpt" $E >"$t/cmp.txt" \
    && "$F" compare "$t/full.ckpt" "$t/r.ckpt" "$t/full.ckpt" $E --json \
        >"$t/cmp.json"
check "one process: eval, logprob, compare" 0 $?
for n in 1 2 3; do
    run $n "$F" eval "$t/r.ckpt" $E >"$t/ev$n.txt"; check "eval np $n" 0 $?
    same_file "eval np $n" "$t/ev.txt" "$t/ev$n.txt"
    run $n "$F" eval "$t/r.ckpt" $E --json >"$t/ev$n.json"
    same_file "eval --json np $n" "$t/ev.json" "$t/ev$n.json"
    run $n "$F" eval $N >"$t/noise$n.json"
    same_file "eval --noise, stochastic trace: np $n" "$t/noise.json" \
        "$t/noise$n.json"
    run $n "$F" logprob "$t/r.ckpt" $E -o "$t/lp$n.csv"
    check "logprob np $n" 0 $?
    same_file "logprob np $n" "$t/lp.csv" "$t/lp$n.csv"
    run $n "$F" logprob "$t/dq.ckpt" --data "$t/bin.csv" --batch 40 \
        --format npy >"$t/lp$n.npy"
    same_file "logprob npy on stdout, stochastic trace: np $n" "$t/lp.npy" \
        "$t/lp$n.npy"
    run $n "$F" compare "$t/r.ckpt" "$t/full.ckpt" $E >"$t/cmp$n.txt"
    check "compare np $n" 0 $?
    same_file "compare np $n" "$t/cmp.txt" "$t/cmp$n.txt"
    run $n "$F" compare "$t/full.ckpt" "$t/r.ckpt" "$t/full.ckpt" $E --json \
        >"$t/cmp$n.json"
    same_file "compare --json np $n" "$t/cmp.json" "$t/cmp$n.json"
done
same "logprob np 3: a header and 250 rows" 251 "$(wc -l <"$t/lp3.csv")"
# more ranks than blocks: 2 blocks of 200 rows on 3 ranks, rank 0 has none
"$F" logprob "$t/r.ckpt" --data "$t/te.csv" --batch 200 -o "$t/lpb.csv"
run 3 "$F" logprob "$t/r.ckpt" --data "$t/te.csv" --batch 200 \
    -o "$t/lpb3.csv"
same_file "logprob: a rank without rows" "$t/lpb.csv" "$t/lpb3.csv"
"$F" encode "$t/r.ckpt" $E -o "$t/z.csv"
run 3 "$F" encode "$t/r.ckpt" $E -o "$t/z3.csv"
same_file "encode np 3" "$t/z.csv" "$t/z3.csv"

# a failing row in rank 2's blocks (line 232: row 230, block 5 of 7): that
# rank names it, every rank stops, mpirun exits non-zero, nothing written
FP="$FLOW_PLUGIN_PATH:$FLOW_FAULT_PLUGINS"
cat >"$t/faulty.flow" <<'EOF'
flow faulty {
    input x : real[2];
    coupling(mask = half, hidden = [8]);
    fault_error(at = 100);
    fault_nan(at = 50);
    output z ~ normal;
}
EOF
FLOW_PLUGIN_PATH=$FP "$F" train "$t/faulty.flow" --data "$t/tr.csv" \
    --steps 3 --batch 64 --quiet -o "$t/f.ckpt"
check "faulty: train" 0 $?
awk -F, 'NR == 232 { $1 = 500 } { print }' OFS=, "$t/te.csv" >"$t/spike.csv"
awk -F, 'NR == 232 { $1 = 70 } { print }' OFS=, "$t/te.csv" >"$t/nan.csv"
# fails_all NAME TEXT COMMAND...: 3 ranks, exit neither 0 nor the timeout's
fails_all() {
    name=$1 text=$2
    shift 2
    FLOW_PLUGIN_PATH=$FP timeout 60 mpirun --oversubscribe -np 3 "$@" \
        >"$t/fout" 2>"$t/ferr"
    frc=$?
    truth "$name: exit $frc" "$frc != 0 && $frc != 124" "$t/ferr"
    has "$name: message" "$t/ferr" "$text"
}
fails_all "logprob, failing row on rank 2" "spike.csv:232: fault_error#1" \
    "$F" logprob "$t/f.ckpt" --data "$t/spike.csv" --batch 40 -o "$t/no.csv"
absent "logprob, failing row: no output" "$t/no.csv"
has "logprob, failing row: rank 0 names the rank" "$t/ferr" \
    "rank 2 of 3 failed on its rows"
fails_all "eval, failing row on rank 2" "spike.csv:232: fault_error#1" \
    "$F" eval "$t/f.ckpt" --data "$t/spike.csv" --batch 40
fails_all "compare, failing row on rank 2" "spike.csv:232: fault_error#1" \
    "$F" compare "$t/r.ckpt" "$t/f.ckpt" --data "$t/spike.csv" --batch 40
# training with batchnorm, a row failing before it on one rank (line 250,
# past the first batch that initialisation reads): that rank takes part
# in batchnorm's sums over the blocks all the same, so the others do not
# wait for it; every rank learns of the failure in that step
cat >"$t/fbn.flow" <<'EOF'
flow fbn {
    input x : real[2];
    coupling(mask = half, hidden = [8]);
    fault_error(at = 100);
    batchnorm;
    coupling(mask = half, hidden = [8]);
    output z ~ normal;
}
EOF
awk -F, 'NR == 250 { $1 = 500 } { print }' OFS=, "$t/tr.csv" >"$t/spk.csv"
fails_all "batchnorm, failing row on one rank" \
    "blocks of the batch failed in step 2" \
    "$F" train "$t/fbn.flow" --data "$t/spk.csv" --steps 3 --batch 100 \
    --quiet -o "$t/fb.ckpt"
absent "batchnorm, failing row: no checkpoint" "$t/fb.ckpt"
# a NaN log-density, found by rank 0 among the gathered rows
fails_all "logprob, NaN row" "nan.csv:232: the log-density is nan" \
    "$F" logprob "$t/f.ckpt" --data "$t/nan.csv" --batch 40 -o "$t/no.csv"
absent "logprob, NaN row: no output" "$t/no.csv"
fails_all "eval --data - under mpirun" "only rank 0 reads standard input" \
    "$F" eval "$t/r.ckpt" --data -

# each rank reads only its share of the file: NPY rows [r n/3, (r+1) n/3)
# by offset, CSV the lines that start in its third of the bytes; 301 rows
# (not a multiple of 3), the same bits as one process either way
"$F" data moons -n 301 --seed 2 -o "$t/s.npy"
"$F" data moons -n 301 --seed 2 -o "$t/s.csv"
C="--batch 70 --epochs 2 --seed 3 --valid-fraction 0.2 --quiet"
for f in s.npy s.csv; do
    "$F" train "$SPEC" --data "$t/$f" $C --reproducible -o "$t/r.ckpt"
    run 3 "$F" train "$SPEC" --data "$t/$f" $C --verbose -o "$t/m.ckpt" \
        2>"$t/err"
    check "$f: np 3" 0 $?
    same_file "$f: np 3 reading shares = one process" "$t/r.ckpt" "$t/m.ckpt"
    grep " of 301 of $t/$f" "$t/err" | sed 's/.*rank \([0-9]\) of 3 holds rows \[\([0-9]*\), \([0-9]*\)).*/\1 \2 \3/' \
        | sort >"$t/shares"
    case $f in
    *.npy) same "$f: rows per rank" "0 0 100
1 100 200
2 200 301" "$(cat "$t/shares")" ;;
    *) truth "$f: shares follow each other, about a third each" \
           "$(awk 'BEGIN { ok = 1; at = 0 }
                   { ok = ok && $2 == at && $3 - $2 > 80 && $3 - $2 < 120
                     at = $3 }
                   END { print ok && NR == 3 && at == 301 }' "$t/shares")" \
           "$t/err" ;;
    esac
done
# the training and validation parts of the split are shares too
has "split shares" "$t/err" "rank 2 of 3 holds rows [160, 241) of 241 of the training part of"

# a conditional spec (context columns) with a --valid file; the
# validation shares are whole blocks of 4096 rows
"$F" data 8gaussians --labels -n 400 --seed 4 -o "$t/g.csv"
"$F" data 8gaussians --labels -n 100 --seed 5 -o "$t/gv.csv"
C="--data $t/g.csv --valid $t/gv.csv --context label0,label1,label2,label3,label4,label5,label6,label7 --batch 64 --steps 8 --seed 3 --quiet"
"$F" train "$top_srcdir/specs/cond_maf.flow" $C --reproducible -o "$t/r.ckpt"
run 3 "$F" train "$top_srcdir/specs/cond_maf.flow" $C -o "$t/m.ckpt"
check "context: np 3" 0 $?
same_file "context: np 3 = one process" "$t/r.ckpt" "$t/m.ckpt"

# what cannot be read in parts, rank 0 reads and deals out: stdin, gzip
C="--batch 70 --steps 5 --seed 3 --quiet"
"$F" train "$SPEC" --data "$t/s.csv" $C --reproducible -o "$t/r.ckpt"
run 2 "$F" train "$SPEC" --data - $C -o "$t/m.ckpt" <"$t/s.csv"
same_file "stdin: np 2 = one process" "$t/r.ckpt" "$t/m.ckpt"
if gzip -c "$t/s.csv" >"$t/s.csv.gz" 2>/dev/null \
   && "$F" train "$SPEC" --data "$t/s.csv.gz" $C -o "$t/z.ckpt" 2>/dev/null
then
    run 3 "$F" train "$SPEC" --data "$t/s.csv.gz" $C --verbose \
        -o "$t/m.ckpt" 2>"$t/err"
    same_file "gzip: np 3 = one process" "$t/r.ckpt" "$t/m.ckpt"
    has "gzip: dealt out as NPY rows" "$t/err" \
        "rank 1 of 3 holds rows [100, 200) of 301 of $t/s.csv.gz"
fi

# an error in the third rank's part names the file's line, as one
# process does
awk 'NR == 250 { print "1.0,abc"; next } { print }' "$t/s.csv" >"$t/bad.csv"
run 3 "$F" train "$SPEC" --data "$t/bad.csv" $C -o "$t/x.ckpt" >"$t/out" 2>&1
truth "bad cell: np 3 fails" "$? != 0"
has "bad cell: the file's line" "$t/out" "$t/bad.csv:250:2: non-numeric value 'abc'"

# a rank killed mid-run (kill -9): mpirun exits non-zero, no hang, and the
# checkpoint is a whole one or none
"$F" data moons -n 4000 --seed 1 -o "$t/big.csv"
mkdir "$t/k"
( timeout 60 mpirun --oversubscribe -np 2 sh -c \
    'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$t/k" \
    "$F" train "$SPEC" --data "$t/big.csv" --batch 64 --epochs 100000 \
    --checkpoint-every 1 --quiet -o "$t/k/kill.ckpt" >"$t/kout" 2>&1
  echo $? >"$t/krc" ) &
i=0
while [ ! -s "$t/k/kill.ckpt" ] && [ $i -lt 400 ]; do
    sleep 0.1; i=$((i + 1)); done
if [ -s "$t/k/pid.1" ]; then kill -9 "$(cat "$t/k/pid.1")"; fi
wait
krc=$(cat "$t/krc")
truth "killed rank: mpirun fails ($krc), not by the timeout" \
    "$krc != 0 && $krc != 124" "$t/kout"
if [ -e "$t/k/kill.ckpt" ]; then
    "$F" info "$t/k/kill.ckpt" >/dev/null 2>"$t/err"
    check "killed rank: whole checkpoint" 0 $?
else ok; fi

# SIGTERM to rank 1 alone: both ranks stop after the same step, rank 0
# writes the checkpoint with the whole state, exit 143
mkdir "$t/s"
( timeout 60 mpirun --oversubscribe -np 2 sh -c \
    'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$t/s" \
    "$F" train "$SPEC" --data "$t/big.csv" --batch 64 --epochs 100000 \
    --checkpoint-every 1 --quiet -o "$t/s/sig.ckpt" >"$t/sout" 2>&1
  echo $? >"$t/src" ) &
i=0      # the first epoch's checkpoint: both ranks are in the loop
while [ ! -s "$t/s/sig.ckpt" ] && [ $i -lt 400 ]; do
    sleep 0.1; i=$((i + 1)); done
kill -TERM "$(cat "$t/s/pid.1")"
wait
same "SIGTERM on rank 1: exit" 143 "$(cat "$t/src")"
same "SIGTERM on rank 1: one message" 1 \
    "$(grep -c 'interrupted by signal 15 after step' "$t/sout")"
"$F" info "$t/s/sig.ckpt" >/dev/null 2>"$t/err"
check "SIGTERM on rank 1: checkpoint" 0 $?

# a rank that hangs without dying (SIGSTOP: mpirun sees nothing wrong):
# the other waits FLOWKIT_MPI_TIMEOUT seconds in its next collective (the
# step's exchange of rows or an allreduce), names it and ends the job; `timeout 60` only keeps a failure from
# hanging the test
mkdir "$t/h"
( FLOWKIT_MPI_TIMEOUT=3 timeout 60 mpirun --oversubscribe -np 2 sh -c \
    'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$t/h" \
    "$F" train "$SPEC" --data "$t/big.csv" --batch 64 --epochs 100000 \
    --checkpoint-every 1 --quiet -o "$t/h/hang.ckpt" >"$t/hout" 2>&1
  echo $? >"$t/hrc" ) &
i=0      # the first epoch's checkpoint: both ranks are in the loop
while [ ! -s "$t/h/hang.ckpt" ] && [ $i -lt 400 ]; do
    sleep 0.1; i=$((i + 1)); done
kill -STOP "$(cat "$t/h/pid.1")"
s0=$(date +%s)
wait
s1=$(date +%s)
# a stopped process that outlived the job would never exit
kill -CONT "$(cat "$t/h/pid.1")" 2>/dev/null
kill -9 "$(cat "$t/h/pid.1")" 2>/dev/null
hrc=$(cat "$t/hrc")
truth "stopped rank: the job fails ($hrc), not by the test's timeout" \
    "$hrc != 0 && $hrc != 124" "$t/hout"
truth "stopped rank: the job ends $((s1 - s0)) s after the stop, <= 20" \
    "$((s1 - s0)) <= 20" "$t/hout"
same "stopped rank: rank 0 names its wait" 1 "$(grep -c \
    '^flowkit: rank 0 of 2: [a-z(].* waited 3 s for the other ranks; ending the job (FLOWKIT_MPI_TIMEOUT=3; 0 waits for ever)$' \
    "$t/hout")"
# a timeout that is not a number of seconds: every rank refuses to start
# (mpirun may end one before it prints, once the other exits 1)
FLOWKIT_MPI_TIMEOUT=soon run 2 "$F" train "$SPEC" --data "$t/tr.csv" \
    --steps 1 -o "$t/never.ckpt" >"$t/out" 2>"$t/err"
check "FLOWKIT_MPI_TIMEOUT=soon: exit" 1 $?
has "FLOWKIT_MPI_TIMEOUT=soon: message" "$t/err" \
    "flowkit train: FLOWKIT_MPI_TIMEOUT='soon' is not a number of seconds from 0 (no limit) to 604800"
absent "FLOWKIT_MPI_TIMEOUT=soon: no checkpoint" "$t/never.ckpt"

# flowkit fit: each rank draws its blocks of every batch of samples.  Batch
# 200: 6 blocks of 32 and one of 8 (uneven at 2 and 3 ranks); the funnel
# in 4-D (specs/funnel_iaf.flow), whose log Z is known
FS=$top_srcdir/specs/funnel_iaf.flow
FA="--steps 300 --batch 200 --seed 5 --eval-samples 4000 --json"
"$F" fit "$FS" $FA --reproducible -o "$t/fr.ckpt" >"$t/fr.json" 2>"$t/err"
check "fit --reproducible" 0 $?
for n in 1 2 3; do
    run $n "$F" fit "$FS" $FA -o "$t/fm$n.ckpt" >"$t/fm$n.json" 2>"$t/err$n"
    check "fit np $n" 0 $?
    same_file "fit np $n = one process --reproducible" "$t/fr.ckpt" \
        "$t/fm$n.ckpt"
done
same "fit: rank 0 alone reports" 1 "$(grep -c '"checkpoint"' "$t/fm3.json")"
same "fit: rank 0 alone prints progress" 3 "$(grep -c '^step ' "$t/err3")"
"$F" fit "$FS" $FA -o "$t/fplain.ckpt" >/dev/null 2>&1
if cmp -s "$t/fplain.ckpt" "$t/fr.ckpt"; then
    bad "fit: the plain run drew the block draws' samples"; else ok; fi
# converged: log Z within 4 standard errors of the truth, KL(q || p) =
# log Z - ELBO below 0.05 nats (1.35 after one step), ESS above 0.9 of
# the samples (0.05 after one step)
jget() { sed 's/.*"'"$2"'": \([-0-9.e+]*\).*/\1/' "$1"; }
lz=$(jget "$t/fm3.json" log_z); se=$(jget "$t/fm3.json" log_z_se)
tz=$(jget "$t/fm3.json" log_z_true); el=$(jget "$t/fm3.json" elbo)
ess=$(jget "$t/fm3.json" ess_per_sample)
echo "fit funnel, 300 steps on 3 ranks: ELBO $el, log Z $lz +- $se (true $tz), ESS/n $ess"
truth "fit: log Z" "($lz - $tz) < 4 * $se && ($tz - $lz) < 4 * $se" "$t/fm3.json"
truth "fit: KL" "$tz - $el < 0.05 && $tz - $el > -4 * $se" "$t/fm3.json"
truth "fit: ESS" "$ess > 0.9" "$t/fm3.json"

# a fit resumed on another rank count: 2 ranks for 40 steps, 3 to 100,
# as 3 ranks throughout (a constant learning rate: the spec's cosine
# schedule would depend on --steps)
FB="--batch 200 --seed 5 --schedule constant --eval-samples 100"
run 3 "$F" fit "$FS" $FB --steps 100 -o "$t/ffull.ckpt" >/dev/null 2>&1
check "fit full" 0 $?
run 2 "$F" fit "$FS" $FB --steps 40 -o "$t/fhalf.ckpt" >/dev/null 2>&1
check "fit half" 0 $?
run 3 "$F" fit "$FS" $FB --steps 100 --resume "$t/fhalf.ckpt" \
    -o "$t/fres.ckpt" >/dev/null 2>"$t/err"
check "fit resume" 0 $?
"$F" export "$t/ffull.ckpt" -o "$t/ffull.st" && \
    "$F" export "$t/fres.ckpt" -o "$t/fres.st"
same_file "fit resume 2 -> 3 ranks" "$t/ffull.st" "$t/fres.st"

cat >"$t/g2.flow" <<'SPEC'
flow g2 {
  input x : real[2];
  repeat 2 { iaf(hidden = [16], order = natural); iaf(hidden = [16], order = reverse); }
  output z ~ normal;
}
SPEC
# the target fails on one rank's samples (a coordinate beyond mu +- 4;
# this seed's first such sample is on rank 1): both ranks stop in that
# step with a message, no hang, no checkpoint
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$FLOW_TARGET_PLUGINS" run 2 "$F" fit \
    "$t/g2.flow" --target 'shifted_normal(fail_beyond = 4)' --steps 50 \
    --eval-samples 100 -o "$t/ff.ckpt" >"$t/out" 2>"$t/err"
frc=$?
truth "fit, a failing rank: exit ($frc)" "$frc != 0 && $frc != 124" "$t/err"
has "fit, a failing rank: its message" "$t/err" "further than 4 from 1"
has "fit, a failing rank: the other's" "$t/err" \
    "rank 1's blocks of the batch failed in step"
absent "fit, a failing rank: no checkpoint" "$t/ff.ckpt"

# a target whose log-density overflows to -inf everywhere: every rank
# skips the same steps and stops after 10 with exit 3, no checkpoint
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$FLOW_TARGET_PLUGINS" run 2 "$F" fit \
    "$t/g2.flow" --target 'shifted_normal(mu = 1e200)' \
    --steps 30 -o "$t/fd.ckpt" >"$t/out" 2>"$t/err"
check "fit diverged: exit" 3 $?
has "fit diverged: the message" "$t/err" "10 steps in a row had a non-finite ELBO"
absent "fit diverged: no checkpoint" "$t/fd.ckpt"

# SIGTERM to rank 1 alone: both ranks stop after the same step, rank 0
# writes the checkpoint and says so once, exit 143; it resumes
mkdir "$t/fs"
( timeout 60 mpirun --oversubscribe -np 2 sh -c \
    'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$t/fs" \
    "$F" fit "$FS" --steps 1000000 --log-every 20 --eval-samples 100 \
    -o "$t/fs/sig.ckpt" >"$t/fsout" 2>&1
  echo $? >"$t/fsrc" ) &
i=0      # a progress line: both ranks are in the loop
while ! grep -q '^step 20/' "$t/fsout" 2>/dev/null && [ $i -lt 400 ]; do
    sleep 0.1; i=$((i + 1)); done
kill -TERM "$(cat "$t/fs/pid.1")"
wait
same "fit, SIGTERM on rank 1: exit" 143 "$(cat "$t/fsrc")"
same "fit, SIGTERM on rank 1: one message" 1 \
    "$(grep -c 'interrupted by signal 15 after step' "$t/fsout")"
k=$(sed -n 's/.*after step \([0-9]*\);.*/\1/p' "$t/fsout")
run 2 "$F" fit "$FS" --steps $((${k:-0} + 10)) --eval-samples 100 --json \
    --resume "$t/fs/sig.ckpt" -o "$t/fs/more.ckpt" >"$t/out" 2>"$t/err"
check "fit, SIGTERM on rank 1: the checkpoint resumes" 0 $?
has "fit, SIGTERM on rank 1: 10 steps more" "$t/out" \
    "\"steps\": $((${k:-0} + 10)),"

finish mpi.sh
