#!/bin/sh
# bench/cpl_pairs.sh - coupling flows against PyTorch, pair by pair: each
# round runs flowkit then PyTorch on the same configuration (realnvp2d
# and nsf8 training, realnvp2d log-densities at batch 4096), prints one
# line per run and the medians.  bench/README.md, "Coupling flows".
#
#   bench/cpl_pairs.sh BUILD_DIR [ROUNDS] [THREADS]
#
# Environment: RNVP_STEPS (default 500), NSF_STEPS (200), LP_REPS (100
# batches of 4096); UNSET_BLAS_ENV=1 runs both sides with
# `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`; RT=1 runs both sides
# under `chrt -f 1` (real-time FIFO: other jobs on a shared machine
# wait, so they cannot stretch one side's run and not the other's);
# TORCH_ENV, e.g. OPENBLAS_NUM_THREADS=1, is prepended to PyTorch's runs
# only (PyTorch's 2 threads with OpenBLAS's own threads under them
# oversubscribe 2 cores: bench/README.md).
set -eu
build=${1:?usage: cpl_pairs.sh BUILD_DIR [ROUNDS] [THREADS]}
rounds=${2:-3}
th=${3:-2}
src=$(cd "$(dirname "$0")/.." && pwd)
fk="$build/flowkit"
py="/usr/bin/python3 $src/bench/ref_torch.py"
FLOW_PLUGIN_PATH="$build/plugins/.libs"
export FLOW_PLUGIN_PATH
rs=${RNVP_STEPS:-500}
ns=${NSF_STEPS:-200}
lr=${LP_REPS:-100}
pre=""
[ "${UNSET_BLAS_ENV:-0}" = 1 ] && pre="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
[ "${RT:-0}" = 1 ] && pre="$pre chrt -f 1"
tpre="$pre${TORCH_ENV:+ env $TORCH_ENV}"
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
"$fk" data 8gaussians -n 20000 --seed 1 -o "$w/g2.csv"
"$fk" data gmm --dim 8 -n 20000 --seed 1 -o "$w/g8.csv"
"$fk" data 8gaussians -n $((4096 * lr)) --seed 3 -o "$w/lp.npy"
num() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p"; }
# one measurement: NAME VALUE PEAK_KB
rec() { printf '%-22s %12s %9s KB\n' "$1" "$2" "$3"; echo "$1 $2 $3" >> "$w/all"; }
mem() { sed -n "s/^maxrss=\([0-9]*\)$/\1/p" "$w/time"; }
T="/usr/bin/time -f maxrss=%M -o $w/time"
for r in $(seq 1 "$rounds"); do
    echo "# round $r (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    out=$($pre $T "$fk" train "$src/tests/specs/realnvp8.flow" --data "$w/g2.csv" \
        --steps "$rs" --batch 512 --threads "$th" -o "$w/r.ckpt" --json 2>/dev/null)
    rec flowkit_realnvp_steps_s "$(echo "$out" | num seconds | awk -v s="$rs" '{printf "%.1f", s / $1}')" "$(mem)"
    out=$($tpre $T $py realnvp --train "$w/g2.csv" --steps "$rs" --threads "$th" 2>/dev/null)
    rec torch_realnvp_steps_s "$(echo "$out" | num steps_per_s | awk '{printf "%.1f", $1}')" "$(mem)"
    out=$($pre $T "$fk" train "$src/bench/nsf8.flow" --data "$w/g8.csv" \
        --steps "$ns" --batch 512 --threads "$th" -o "$w/n.ckpt" --json 2>/dev/null)
    rec flowkit_nsf8_steps_s "$(echo "$out" | num seconds | awk -v s="$ns" '{printf "%.1f", s / $1}')" "$(mem)"
    out=$($tpre $T $py nsf --nsf 6,128,8,3 --train "$w/g8.csv" --steps "$ns" --threads "$th" 2>/dev/null)
    rec torch_nsf8_steps_s "$(echo "$out" | num steps_per_s | awk '{printf "%.1f", $1}')" "$(mem)"
    t0=$(date +%s.%N)
    $pre $T "$fk" eval "$w/r.ckpt" --data "$w/lp.npy" --batch 4096 --threads "$th" > /dev/null
    t1=$(date +%s.%N)
    rec flowkit_logprob_rows_s "$(echo "$t0 $t1" | awk -v n=$((4096 * lr)) '{printf "%.0f", n / ($2 - $1)}')" "$(mem)"
    out=$($tpre $T $py realnvp --train "$w/g2.csv" --steps 0 --threads "$th" \
        --logprob-batch 4096 --logprob-reps "$lr" 2>/dev/null)
    rec torch_logprob_rows_s "$(echo "$out" | num logprob_samples_per_s | awk '{printf "%.0f", $1}')" "$(mem)"
done
echo "# medians over $rounds rounds, $th threads${pre:+, $pre}${TORCH_ENV:+, PyTorch: $TORCH_ENV}"
for k in realnvp_steps_s nsf8_steps_s logprob_rows_s; do
    f=$(grep "^flowkit_$k " "$w/all" | awk '{print $2}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    t=$(grep "^torch_$k " "$w/all" | awk '{print $2}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    fm=$(grep "^flowkit_$k " "$w/all" | awk '{print $3}' | sort -g | tail -1)
    tm=$(grep "^torch_$k " "$w/all" | awk '{print $3}' | sort -g | tail -1)
    echo "$k flowkit $f torch $t ratio $(echo "$f $t" | awk '{printf "%.2f", $1 / $2}') peak_kb $fm $tm"
done
