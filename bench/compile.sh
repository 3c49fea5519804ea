#!/bin/sh
# bench/compile.sh - compile time and peak memory of flowc on generated
# specs of N layers (4 layer types, 16 dimensions), for N = 1000 .. 100000.
# Usage: FLOW_PLUGIN_PATH=build/default/plugins/.libs bench/compile.sh [FLOWC]
set -eu
flowc=${1:-build/default/flowc}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
printf '%8s %10s %12s\n' layers seconds peak_KiB
for reps in 250 1250 2500 12500 25000; do
    {
        echo "flow big {"
        echo "    input x : real[16];"
        # repeat counts are capped at 4096 per loop: nest two
        echo "    repeat $((reps / 250)) as j { repeat 250 as i {"
        echo "        coupling(mask = parity(i), hidden = [32], transformer = affine);"
        echo "        maf(hidden = [32], order = reverse);"
        echo "        actnorm();"
        echo "        permute(order = random(i + j));"
        echo "    } }"
        echo "    output z ~ normal;"
        echo "}"
    } >"$t/big.flow"
    /usr/bin/time -f "%e %M" -o "$t/time" "$flowc" --check "$t/big.flow"
    read -r secs kib <"$t/time"
    printf '%8d %10s %12s\n' $((reps * 4)) "$secs" "$kib"
done
