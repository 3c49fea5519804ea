#!/bin/sh
# cnf2d_pair.sh - one flowkit / PyTorch pair for the cnf2d configuration
# (FFJORD on 8gaussians: MLP 64x64x64 tanh with time concatenated, RK4 10
# steps, exact trace, backprop, batch 512, 300 steps, 2 threads each).
# Run from a directory holding train.csv and test.csv (bench/README.md):
#   B=build/default sh bench/cnf2d_pair.sh TAG [env -u OPENBLAS_CORETYPE ...]
# prints one line per side: flowkit's JSON summary and test log-likelihood,
# PyTorch's JSON (steps/s, KL).  KL for flowkit = mean true logprob of
# test.csv - eval_ll.
top=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$top/build/default}
case $B in /*) ;; *) B=$top/$B ;; esac
export FLOW_PLUGIN_PATH=$B/plugins/.libs
tag=$1; shift
pre="$*"
$pre $B/flowkit train $top/specs/ffjord_8gaussians.flow --data train.csv --steps 300 --batch 512 --threads 2 -o fk_$tag.ckpt --json > fk_$tag.json 2>/dev/null
ll=$($B/flowkit eval fk_$tag.ckpt --data test.csv --columns x0,x1 --json | sed "s/.*\"loglik\": *\([-0-9.e]*\).*/\1/")
echo "flowkit $tag $(cat fk_$tag.json) eval_ll $ll"
$pre /usr/bin/python3 $top/bench/ref_torch.py ffjord --train train.csv --test test.csv --steps 300 --threads 2 2>/dev/null | sed "s/^/torch $tag /"
