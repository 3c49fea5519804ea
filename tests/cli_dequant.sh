#!/bin/sh
# cli_dequant.sh - the `dequantize` layer end to end: its log-det is
# exactly -D log(levels), evaluation-mode log-densities are deterministic,
# decode undoes encode, and specs/dequant_tiny.flow trained on binary 4x4
# shapes reports discrete bits/dim that are finite, below the 8 bits of
# the uniform model and below the untrained model's (run by make check
# with FLOWKIT set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
check_log=$t/err

# json_num FILE KEY: the number after "KEY": in a one-line JSON object
json_num() { sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1"; }
# truth NAME AWK-CONDITION: an inequality between numbers holds
truth() {
    if awk "BEGIN { exit !($2) }"; then ok; else bad "$1: $2 is false"; fi
}

# --- the log-det, alone before a standard normal base ----------------
# log p(x) = sum_i log N((x_i + 1/2) / L) - D log L (eval mode: u = 1/2)
cat >"$t/dq.flow" <<'SPEC'
flow dq {
    input x : real[1, 2, 2] in [0, 255];
    dequantize(levels = 256);
    output z ~ normal;
}
SPEC
printf 'x0,x1,x2,x3\n0,255,17,128\n3,3,200,1\n' >"$t/px.csv"
"$F" train "$t/dq.flow" --data "$t/px.csv" --steps 1 --quiet \
    -o "$t/dq.ckpt" 2>"$t/err"
check dq-train 0 $?
"$F" logprob "$t/dq.ckpt" --data "$t/px.csv" -o "$t/lp.csv" 2>"$t/err"
check dq-logprob 0 $?
awk -F, 'NR == FNR { if (FNR > 1) want[FNR] = 0
        for (i = 1; i <= NF && FNR > 1; i++) {
            y = ($i + 0.5) / 256
            want[FNR] += -0.5 * y * y - 0.5 * log(2 * 3.14159265358979)
        }
        if (FNR > 1) want[FNR] -= 4 * log(256); next }
    FNR > 1 { e = $1 - want[FNR]; if (e < 0) e = -e
        if (e > 1e-4 * (-want[FNR])) { print "row", FNR - 1, $1, want[FNR]; bad = 1 } }
    END { exit bad }' "$t/px.csv" "$t/lp.csv"
check dq-logdet-exact 0 $?
"$F" logprob "$t/dq.ckpt" --data "$t/px.csv" -o "$t/lp2.csv" 2>"$t/err"
same_file dq-eval-deterministic "$t/lp.csv" "$t/lp2.csv"
"$F" encode "$t/dq.ckpt" --data "$t/px.csv" -o "$t/z.csv" 2>"$t/err"
check dq-encode 0 $?
same dq-encode-midpoints "0.001953125 0.998046875 0.068359375 0.501953125" \
    "$(sed -n 2p "$t/z.csv" | awk -F, '{ printf "%.9g %.9g %.9g %.9g", $1, $2, $3, $4 }')"
"$F" decode "$t/dq.ckpt" --data "$t/z.csv" -o "$t/x.csv" 2>"$t/err"
check dq-decode 0 $?
same dq-decode-inverse "0 255 17 128" \
    "$(sed -n 2p "$t/x.csv" | awk -F, '{ printf "%.4g %.4g %.4g %.4g", $1, $2, $3, $4 }')"
printf 'x0,x1,x2,x3\n0,256,17,128\n' >"$t/out_of_range.csv"
"$F" logprob "$t/dq.ckpt" --data "$t/out_of_range.csv" -o "$t/o.csv" \
    2>"$t/out"
check dq-domain 1 $?
has dq-domain "$t/out" "outside the bounds [0, 255]"

# --- dequant_tiny on 4x4 shapes: discrete bits/dim --------------------
"$F" data shapes --size 4 -n 2000 --seed 1 -o "$t/tr.npy" 2>"$t/err"
check shapes-train 0 $?
"$F" data shapes --size 4 -n 1000 --seed 2 -o "$t/te.npy" 2>"$t/err"
check shapes-test 0 $?
S="$top_srcdir/specs/dequant_tiny.flow"
"$F" train "$S" --data "$t/tr.npy" --steps 1 --seed 0 --quiet \
    -o "$t/u.ckpt" 2>"$t/err"
check untrained 0 $?
"$F" train "$S" --data "$t/tr.npy" --epochs 5 --seed 0 --quiet \
    -o "$t/m.ckpt" 2>"$t/err"
check trained 0 $?
"$F" eval "$t/u.ckpt" --data "$t/te.npy" --json >"$t/u.json" 2>"$t/err"
check eval-untrained 0 $?
"$F" eval "$t/m.ckpt" --data "$t/te.npy" --json >"$t/m.json" 2>"$t/err"
check eval-trained 0 $?
"$F" eval "$t/m.ckpt" --data "$t/te.npy" >"$t/m.txt" 2>"$t/err"
check eval-text 0 $?
has eval-scale "$t/m.txt" "bits/dim (discrete, 256 levels, bin midpoints)"
has eval-unit "$t/m.txt" "bits/dim on the [0, 1] scale"
has json-scale "$t/m.json" '"scale": "discrete", "levels": 256'
u=$(json_num "$t/u.json" bits_per_dim)
m=$(json_num "$t/m.json" bits_per_dim)
mu=$(json_num "$t/m.json" bits_per_dim_unit)
ll=$(json_num "$t/m.json" loglik)
llu=$(json_num "$t/m.json" loglik_unit)
# measured, seed 0: untrained 7.14, after 5 epochs 5.51 bits/dim
truth bpd-finite "\"$m\" + 0 == \"$m\" + 0 && $m > 0"
truth bpd-below-uniform "$m < 8"
truth bpd-below-untrained "$m < $u - 1"
# the [0, 1] scale differs by log2(256) = 8 bits/dim, D log 256 nats
truth bpd-unit "($m - $mu - 8) ^ 2 < 1e-10"
truth loglik-unit "(($llu - $ll) - 16 * log(256)) ^ 2 < 1e-8"
# the same bytes at 1, 2 and 3 threads (rows in a fixed grid of blocks,
# the mean summed row by row)
for th in 1 2 3; do
    "$F" eval "$t/m.ckpt" --data "$t/te.npy" --json --threads $th \
        >"$t/t$th.json" 2>"$t/err"
done
same_file eval-threads-2 "$t/t1.json" "$t/t2.json"
same_file eval-threads-3 "$t/t1.json" "$t/t3.json"

# --- eval --noise K: the dequantization bound, against its closed form ---
# No layer after dequantize(levels = 2): log p = sum_j log N((x_j + u_j)
# / 2), so the bound E_u log p lies below the midpoint's (u = 1/2) by
# exactly D Var(y) / 2 = 4 (1/12) / 4 / 2 = 1/24 nats per row.
cat >"$t/dq2.flow" <<'EOF'
flow dq2 {
    input x : real[4] in [0, 1];
    dequantize(levels = 2);
    output z ~ normal;
    train { epochs = 1; batch = 64; }
}
EOF
awk 'BEGIN { srand(3); print "a,b,c,d"
    for (i = 0; i < 2000; i++)
        printf "%d,%d,%d,%d\n", rand() < 0.5, rand() < 0.3, rand() < 0.7, 1 }' \
    >"$t/bin4.csv"
"$F" train "$t/dq2.flow" --data "$t/bin4.csv" -o "$t/dq2.ckpt" --quiet \
    2>"$t/err"
check noise-train 0 $?
"$F" eval "$t/dq2.ckpt" --data "$t/bin4.csv" --json >"$t/mid.json" 2>"$t/err"
check noise-midpoint 0 $?
has noise-midpoint-label "$t/mid.json" '"dequantization": "midpoint", "noise_draws": 0'
"$F" eval "$t/dq2.ckpt" --data "$t/bin4.csv" --json --noise 50 --seed 1 \
    >"$t/b1.json" 2>"$t/err"
check noise-bound 0 $?
has noise-bound-label "$t/b1.json" '"dequantization": "bound", "noise_draws": 50'
# 100,000 draws of 4 dimensions: the Monte Carlo error is about 3e-4
truth noise-closed-form "($(json_num "$t/b1.json" loglik)) - ($(json_num "$t/mid.json" loglik)) + 1/24 < 0.002 && ($(json_num "$t/b1.json" loglik)) - ($(json_num "$t/mid.json" loglik)) + 1/24 > -0.002"
"$F" eval "$t/dq2.ckpt" --data "$t/bin4.csv" --json --noise 50 --seed 1 \
    >"$t/b1b.json" 2>"$t/err"
same_file noise-seeded "$t/b1.json" "$t/b1b.json"
"$F" eval "$t/dq2.ckpt" --data "$t/bin4.csv" --json --noise 50 --seed 2 \
    >"$t/b2.json" 2>"$t/err"
if cmp -s "$t/b1.json" "$t/b2.json"; then bad "noise-seed: seeds 1 and 2 agree"
else ok; fi
"$F" eval "$t/m.ckpt" --data "$t/te.npy" --noise 0 >"$t/out" 2>&1
check noise-zero 2 $?
"$F" logprob "$t/m.ckpt" --data "$t/te.npy" --noise 2 -o "$t/x.csv" \
    >"$t/out" 2>&1
check noise-logprob 2 $?
sed -e 's/ in \[0, 1\]//' -e 's/dequantize(levels = 2);/actnorm;/' \
    "$t/dq2.flow" >"$t/flat.flow"
"$F" train "$t/flat.flow" --data "$t/bin4.csv" -o "$t/flat.ckpt" --quiet \
    2>"$t/err"
check noise-flat-train 0 $?
"$F" eval "$t/flat.ckpt" --data "$t/bin4.csv" --noise 2 >"$t/out" 2>&1
check noise-flat 2 $?
has noise-flat "$t/out" "--noise draws the dequantization noise of a model whose first layer is \`dequantize\`"

# --json names the log-det's kind: exact, or estimated when a layer
# estimates it in evaluation (an ode with hutchinson(in_eval = true))
has json-logdet-exact "$t/m.json" '"logdet": "exact"'
sed -e 's/ in \[0, 1\]//' -e 's/dequantize(levels = 2);/ode(hidden = [4], solver = rk4(steps = 1), gradient = backprop, trace = hutchinson(in_eval = true));/' \
    "$t/dq2.flow" >"$t/est.flow"
"$F" train "$t/est.flow" --data "$t/bin4.csv" --steps 1 -o "$t/est.ckpt" \
    --quiet 2>"$t/err"
check logdet-estimated-train 0 $?
"$F" eval "$t/est.ckpt" --data "$t/bin4.csv" --json >"$t/est.json" 2>"$t/err"
check logdet-estimated-eval 0 $?
has json-logdet-estimated "$t/est.json" '"logdet": "estimated"'

finish cli_dequant
