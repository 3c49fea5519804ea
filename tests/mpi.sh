#!/bin/sh
# mpi.sh - data-parallel training under mpirun: 1, 2 and 3 ranks end with
# bit-identical checkpoints, equal to one process's --reproducible run and
# to a resume with another rank count; a killed rank ends the job, and so
# does a stopped one, by the collectives' timeout.
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
# the other waits FLOWKIT_MPI_TIMEOUT seconds in its next collective,
# names it and ends the job; `timeout 60` only keeps a failure from
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
    '^flowkit: rank 0 of 2: allreduce ([a-z]*) of [0-9]* values\{0,1\} waited 3 s for the other ranks; ending the job (FLOWKIT_MPI_TIMEOUT=3; 0 waits for ever)$' \
    "$t/hout")"
# a timeout that is not a number of seconds: every rank refuses to start
# (mpirun may end one before it prints, once the other exits 1)
FLOWKIT_MPI_TIMEOUT=soon run 2 "$F" train "$SPEC" --data "$t/tr.csv" \
    --steps 1 -o "$t/never.ckpt" >"$t/out" 2>"$t/err"
check "FLOWKIT_MPI_TIMEOUT=soon: exit" 1 $?
has "FLOWKIT_MPI_TIMEOUT=soon: message" "$t/err" \
    "flowkit train: FLOWKIT_MPI_TIMEOUT='soon' is not a number of seconds from 0 (no limit) to 604800"
absent "FLOWKIT_MPI_TIMEOUT=soon: no checkpoint" "$t/never.ckpt"

finish mpi.sh
