#!/bin/sh
# mpi.sh - data-parallel training under mpirun: 1, 2 and 3 ranks end with
# bit-identical checkpoints, equal to one process's --reproducible run and
# to a resume with another rank count; a killed rank ends the job.  The
# same for variational fits (flowkit fit), which also converge; a rank
# whose target fails, a divergence, or a signal on one rank ends every
# rank.
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
# and one at 2); 300 rows: the fifth step's batch is 20 rows, then a new
# shuffle; a held-out fifth validated at each epoch's end
A="--data $t/tr.csv --batch 70 --epochs 3 --seed 3 --threads 2 --valid-fraction 0.2 --quiet"
"$F" train "$SPEC" $A --reproducible -o "$t/r.ckpt"; check reproducible 0 $?
for n in 1 2 3; do
    run $n "$F" train "$SPEC" $A -o "$t/m$n.ckpt" 2>"$t/err$n"
    check "np $n" 0 $?
    same_file "np $n = one process --reproducible" "$t/r.ckpt" "$t/m$n.ckpt"
done
# without --reproducible one process sums row by row: other bits
"$F" train "$SPEC" $A -o "$t/plain.ckpt"
if cmp -s "$t/plain.ckpt" "$t/r.ckpt"; then
    bad "plain: the row-by-row sum gave the block sum's bits"; else ok; fi
# rank 0 alone prints
run 2 "$F" train "$SPEC" --data "$t/tr.csv" --batch 70 --steps 2 --json \
    -o "$t/j.ckpt" >"$t/out" 2>"$t/err"
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
    "another process's blocks of the batch failed"
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
