#!/bin/sh
# cli_coupling.sh - the coupling layer on images: `flowkit check` of the
# channel and checkerboard masks with the convolutional conditioner (every
# transformer, odd and even channel counts, a context, several net
# shapes), the MLP on a channel mask, the located errors of a mask or net
# that does not fit the input, and specs/glow_tiny.flow trained on 8x8
# shapes to a discrete bits/dim well below the untrained model's (run by
# make check with FLOWKIT, FLOWC, FLOW_PLUGIN_PATH and top_srcdir set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
check_log=$t/out

run_ok() {
    name=$1; shift
    "$F" check "$@" >"$t/out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then ok; else
        bad "$name: flowkit check $* (exit $rc):"; grep -E 'FAIL|error' "$t/out"; fi
}
# json_num FILE KEY: the number after "KEY": in a one-line JSON object
json_num() { sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1"; }
truth() {
    if awk "BEGIN { exit !($2) }"; then ok; else bad "$1: $2 is false"; fi
}

# --- flowkit check: round trips, log-dets vs FD, gradients, patterns ---
net='net = conv(hidden = 6)'
for tf in affine additive 'spline(bins = 4, bound = 2.5)'; do
    for mask in 'channel(0)' 'channel(1)' 'checkerboard(0)' 'checkerboard(1)'; do
        for shape in 4,4,4 3,4,4; do
            run_ok "conv $tf $mask $shape" coupling --shape $shape \
                --attr "mask = $mask" --attr "$net" --attr "transformer = $tf"
        done
    done
done
run_ok conv-residual coupling --shape 3,4,5 --attr 'mask = checkerboard(1)' \
    --attr 'net = conv(hidden = 5, kernel = 5, blocks = 2, residual = true)'
run_ok conv-no-blocks coupling --shape 2,3,3 --attr 'mask = channel' \
    --attr 'net = conv(hidden = 4, kernel = 1, blocks = 0)'
for mask in 'channel(1)' 'checkerboard(0)'; do
    run_ok "conv-context $mask" coupling --shape 3,4,4 --context 2 \
        --attr "mask = $mask" --attr "$net"
done
for mask in 'channel(0)' 'channel(1)' 'checkerboard(1)'; do
    run_ok "mlp $mask" coupling --shape 3,2,2 --attr "mask = $mask" \
        --attr 'hidden = [12]' --attr activation=tanh
done
# the parameter count: channel(0) on 3 channels conditions on 1 and
# transforms 2: (1 * 9 + 1) 6 + (6 + 1) 6 + (6 * 9 + 1) (2 * 2) = 322;
# channel(1) the reverse: (2 * 9 + 1) 6 + 42 + (6 * 9 + 1) 2 = 266
"$F" check coupling --shape 3,4,4 --attr 'mask = channel' --attr "$net" \
    >"$t/out" 2>&1
check params 0 $?
has params "$t/out" "each of 322 entries changes outputs or log-dets"
"$F" check coupling --shape 3,4,4 --attr 'mask = channel(1)' --attr "$net" \
    >"$t/out" 2>&1
has params-flip "$t/out" "each of 266 entries changes outputs or log-dets"

# --- located errors ----------------------------------------------------
"$F" check coupling --dim 6 --attr 'mask = channel' >"$t/out" 2>&1
check flat-channel 2 $?
has flat-channel "$t/out" "<check>:4:14: error[F0207]: coupling#0: mask channel needs an image input [C, H, W]; this input is [6]"
has flat-channel "$t/out" "help: declare the input as real[C, H, W]"
"$F" check coupling --dim 6 --attr 'mask = checkerboard(1)' >"$t/out" 2>&1
check flat-checker 2 $?
has flat-checker "$t/out" "mask checkerboard needs an image input [C, H, W]; this input is [6]"
"$F" check coupling --shape 2,4,4 --attr 'net = conv' >"$t/out" 2>&1
check conv-parity 2 $?
has conv-parity "$t/out" "net = conv needs mask = channel or checkerboard (a mask of whole channels or pixels), not parity"
"$F" check coupling --shape 1,4,4 --attr 'mask = channel' >"$t/out" 2>&1
check one-channel 2 $?
has one-channel "$t/out" "mask channel needs at least 2 channels; this input is [1, 4, 4]"
"$F" check coupling --shape 2,1,1 --attr 'mask = checkerboard' >"$t/out" 2>&1
check one-pixel 2 $?
has one-pixel "$t/out" "mask checkerboard needs at least 2 pixels; this input is [2, 1, 1]"
"$F" check coupling --shape 2,4,4 --attr 'mask = channel' \
    --attr 'net = conv' --attr activation=tanh >"$t/out" 2>&1
check conv-tanh 2 $?
has conv-tanh "$t/out" "net = conv uses ReLU only, not tanh"
"$F" check coupling --shape 2,4,4 --attr 'mask = channel' \
    --attr 'net = conv(kernel = 2)' >"$t/out" 2>&1
check conv-even 2 $?
has conv-even "$t/out" "net = conv: kernel must be odd (same padding), got 2"
"$F" check coupling --shape 2,4,4 --attr 'mask = checkerboard' \
    --attr 'net = conv(kernel = 1)' >"$t/out" 2>&1
check conv-1x1-checker 2 $?
has conv-1x1-checker "$t/out" "cannot see the conditioning pixels of a checkerboard mask"

# --- glow_tiny: shapes in the report, training lowers the bits/dim -----
S="$top_srcdir/specs/glow_tiny.flow"
"$FLOWC" --report "$S" >"$t/report" 2>&1
check report 0 $?
has report "$t/report" "coupling#5         coupling              64 4x4x4                1156     17920"
has report "$t/report" "exit#9             exit                  64 4x4x4 -> 2x4x4"
has report "$t/report" "coupling#16        coupling              32 8x2x2                2024      7936"
"$F" data shapes --size 8 -n 2000 --seed 1 -o "$t/tr.npy" 2>"$t/out"
check shapes-train 0 $?
"$F" data shapes --size 8 -n 500 --seed 2 -o "$t/te.npy" 2>"$t/out"
check shapes-test 0 $?
"$F" train "$S" --data "$t/tr.npy" --steps 1 --seed 0 --quiet \
    -o "$t/u.ckpt" 2>"$t/out"
check untrained 0 $?
"$F" train "$S" --data "$t/tr.npy" --epochs 5 --seed 0 --quiet \
    -o "$t/m.ckpt" 2>"$t/out"
check trained 0 $?
"$F" eval "$t/u.ckpt" --data "$t/te.npy" --json >"$t/u.json" 2>"$t/out"
check eval-untrained 0 $?
"$F" eval "$t/m.ckpt" --data "$t/te.npy" --json >"$t/m.json" 2>"$t/out"
check eval-trained 0 $?
has eval-scale "$t/m.json" '"scale": "discrete", "levels": 256'
u=$(json_num "$t/u.json" bits_per_dim)
m=$(json_num "$t/m.json" bits_per_dim)
# measured, seed 0 (float32): untrained 6.87, after 5 epochs 4.07 bits/dim
# (seeds 1, 2: 4.17, 3.96)
truth bpd-finite "\"$m\" + 0 == \"$m\" + 0 && $m > 0"
truth bpd-below-untrained "$m < $u - 2"
"$F" sample "$t/m.ckpt" -n 4 --seed 3 -o "$t/s.csv" 2>"$t/out"
check sample 0 $?
same sample-rows 5 "$(wc -l <"$t/s.csv" | tr -d ' ')"

finish cli_coupling
