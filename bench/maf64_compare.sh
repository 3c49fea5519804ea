#!/bin/sh
# maf64_compare.sh - flowkit against PyTorch on bench/maf64.flow, pair by
# pair: each phase (train, logprob, sample) runs flowkit then PyTorch
# alternately, REPS times, with the machine's OpenBLAS environment and
# again with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (for both sides);
# one JSON line per run into OUT, then medians and ratios
# (bench/maf64_summary.py).  Both sides use THREADS threads.
#
#   bench/maf64_compare.sh build/default [OUT] [REPS]
#
# Environment: THREADS (2), STEPS (60), LP_REPS (6), SAMPLE_N (512),
# TORCH_STEPS / TORCH_SAMPLE_N (default: the same), PYTHON
# (/usr/bin/python3).
set -eu
build=${1:?usage: maf64_compare.sh BUILD_DIR [OUT] [REPS]}
out=${2:-maf64_results.jsonl}
reps=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
threads=${THREADS:-2}
steps=${STEPS:-60}
lpr=${LP_REPS:-6}
sn=${SAMPLE_N:-512}
tsteps=${TORCH_STEPS:-$steps}
tsn=${TORCH_SAMPLE_N:-$sn}
py=${PYTHON:-/usr/bin/python3}
FLOW_PLUGIN_PATH=$build/plugins/.libs
export FLOW_PLUGIN_PATH
: > "$out"

run() {  # ENVLABEL SIDE PHASE COMMAND...
    label=$1 side=$2 phase=$3
    shift 3
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$("$@") || { echo "maf64_compare: $side $phase failed" >&2; exit 1; }
    printf '{"env": "%s", "side": "%s", "phase": "%s", "load": %s, "run": %s}\n' \
        "$label" "$side" "$phase" "$load" "$line" >> "$out"
    echo "$label $side $phase load $load: $line" >&2
}

for label in default unset; do
    if [ "$label" = unset ]; then
        envcmd="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
    else
        envcmd="env"
    fi
    for phase in train logprob sample; do
        i=0
        while [ "$i" -lt "$reps" ]; do
            run "$label" flowkit "$phase" $envcmd "$build/bench/maf_bench" \
                "$here/maf64.flow" --threads "$threads" --steps "$steps" \
                --logprob-reps "$lpr" --sample-n "$sn" --sample-reps 1 \
                --only "$phase"
            run "$label" pytorch "$phase" $envcmd "$py" "$here/maf64_torch.py" \
                --threads "$threads" --steps "$tsteps" --logprob-reps "$lpr" \
                --sample-n "$tsn" --sample-reps 1 --only "$phase"
            i=$((i + 1))
        done
    done
done
"$py" "$here/maf64_summary.py" "$out"
