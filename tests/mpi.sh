#!/bin/sh
# mpi.sh - data-parallel training under mpirun: 1, 2 and 3 ranks end with
# bit-identical checkpoints, equal to one process's --reproducible run and
# to a resume with another rank count, each rank holding only its share
# of the data; a killed rank ends the job.
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

finish mpi.sh
