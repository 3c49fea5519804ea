#!/bin/sh
# cli_train.sh - the model commands end to end: train, eval, logprob,
# sample, encode/decode, info; a resumed run ends bit-identical to an
# uninterrupted one; bad checkpoints, data and flags give clear errors, the
# right exit code, and no output file.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
SPEC=$top_srcdir/specs/moons.flow

"$F" data moons -n 600 --seed 1 -o "$t/tr.csv"
"$F" data moons -n 300 --seed 2 -o "$t/te.csv"

# train with a held-out fraction, JSON summary
"$F" train "$SPEC" --data "$t/tr.csv" --steps 40 --batch 64 --valid-fraction 0.25 \
    --patience 50 -o "$t/a.ckpt" --json >"$t/out" 2>"$t/err"
check train 0 $?
has train-json "$t/out" '"steps": 40'
has train-json "$t/out" '"valid_loglik": '
has train-progress "$t/err" "epoch 1 step "

"$F" eval "$t/a.ckpt" --data "$t/te.csv" >"$t/out"; check eval 0 $?
has eval "$t/out" "nats per sample (n = 300); "
has eval "$t/out" " bits/dim"

"$F" logprob "$t/a.ckpt" --data "$t/te.csv" -o "$t/lp.csv"; check logprob 0 $?
same logprob-rows 301 "$(wc -l <"$t/lp.csv" | tr -d ' ')"

"$F" sample "$t/a.ckpt" -n 50 --seed 3 --with-logprob -o "$t/s.csv"; check sample 0 $?
same sample-header "x0,x1,logprob" "$(head -n 1 "$t/s.csv")"
same sample-rows 51 "$(wc -l <"$t/s.csv" | tr -d ' ')"
"$F" sample "$t/a.ckpt" -n 50 --seed 3 --with-logprob -o "$t/s2.csv"
if cmp -s "$t/s.csv" "$t/s2.csv"; then ok; else
    bad "sample: same seed, different samples"; fi
# the samples' reported log-density is the model's log-density there
cut -d, -f1,2 "$t/s.csv" >"$t/sx.csv"
"$F" logprob "$t/a.ckpt" --data "$t/sx.csv" -o "$t/slp.csv"
same sample-logprob ok "$(paste -d, "$t/s.csv" "$t/slp.csv" | awk -F, 'NR > 1 {
    d = $3 - $4; if (d < 0) d = -d; if (d > m) m = d } END { print (m < 1e-3) ? "ok" : m }')"

# --temperature T: T = 1 is the plain sampler bit for bit; T = 0.5 draws
# the latents from N(0, 0.25 I): encoded back (a round trip within 1e-4),
# their standard deviation is 0.5 within 5 standard errors, 0.5 /
# sqrt(2 n) each = 0.028 for n = 4000; the logprob column stays the model's
"$F" sample "$t/a.ckpt" -n 50 --seed 3 --with-logprob --temperature 1 \
    -o "$t/s3.csv"; check sample-t1 0 $?
if cmp -s "$t/s.csv" "$t/s3.csv"; then ok; else
    bad "sample --temperature 1: not the bits of the plain sampler"; fi
"$F" sample "$t/a.ckpt" -n 4000 --seed 5 --with-logprob --temperature 0.5 \
    -o "$t/st.csv"; check sample-t05 0 $?
cut -d, -f1,2 "$t/st.csv" >"$t/stx.csv"
"$F" encode "$t/a.ckpt" --data "$t/stx.csv" -o "$t/stz.csv"
same sample-t05-std ok "$(awk -F, 'NR > 1 { for (i = 1; i <= 2; i++) {
    s[i] += $i; q[i] += $i * $i } n++ } END { r = "ok"
    for (i = 1; i <= 2; i++) { m = s[i] / n; sd = sqrt(q[i] / n - m * m)
        if (sd < 0.5 - 0.028 || sd > 0.5 + 0.028) r = "std " sd }
    print r }' "$t/stz.csv")"
"$F" logprob "$t/a.ckpt" --data "$t/stx.csv" -o "$t/stlp.csv"
same sample-t05-logprob ok "$(paste -d, "$t/st.csv" "$t/stlp.csv" | awk -F, 'NR > 1 {
    d = $3 - $4; if (d < 0) d = -d; if (d > m) m = d } END { print (m < 1e-3) ? "ok" : m }')"
for bad_t in 0 -1 abc nan inf; do
    "$F" sample "$t/a.ckpt" -n 5 --temperature "$bad_t" -o "$t/tbad.csv" \
        2>"$t/err"
    check "sample-temperature-$bad_t" 2 $?
    has "sample-temperature-$bad_t" "$t/err" "--temperature"
    absent "sample-temperature-$bad_t" "$t/tbad.csv"
done
"$F" sample "$t/a.ckpt" -n 5 --temperature 0 2>"$t/err"
has sample-temperature-0 "$t/err" "--temperature must be a finite number greater than 0"
"$F" sample "$t/a.ckpt" -n 5 --weights --temperature 0.5 2>"$t/err"
check sample-temperature-weights 2 $?
has sample-temperature-weights "$t/err" "--weights needs the model's own samples"

# encode then decode returns the data
"$F" encode "$t/a.ckpt" --data "$t/te.csv" -o "$t/z.csv"; check encode 0 $?
"$F" decode "$t/a.ckpt" --data "$t/z.csv" -o "$t/x.csv"; check decode 0 $?
same round-trip ok "$(paste -d, "$t/te.csv" "$t/x.csv" | awk -F, 'NR > 1 {
    for (i = 1; i <= 2; i++) { d = $i - $(i + 2); if (d < 0) d = -d; if (d > m) m = d } }
    END { print (m < 1e-4) ? "ok" : m }')"

"$F" info "$t/a.ckpt" >"$t/out"; check info 0 $?
has info "$t/out" "flow moons {"
has info "$t/out" "  epoch   step          loss  valid_loglik"
has info "$t/out" "precision"

# resume: 30 steps straight == 12 steps, then --resume to 30, bit for bit
"$F" train "$SPEC" --data "$t/tr.csv" --steps 30 --batch 64 -o "$t/full.ckpt" 2>/dev/null
"$F" train "$SPEC" --data "$t/tr.csv" --steps 12 --batch 64 -o "$t/half.ckpt" 2>/dev/null
"$F" train "$SPEC" --data "$t/tr.csv" --steps 30 --batch 64 --resume "$t/half.ckpt" \
    -o "$t/resumed.ckpt" 2>/dev/null
check resume 0 $?
"$F" logprob "$t/full.ckpt" --data "$t/te.csv" -o "$t/l1.csv"
"$F" logprob "$t/resumed.ckpt" --data "$t/te.csv" -o "$t/l2.csv"
if cmp -s "$t/l1.csv" "$t/l2.csv"; then ok; else
    bad "resumed run differs from the uninterrupted one"; fi

# two threads: the same bits twice
"$F" train "$SPEC" --data "$t/tr.csv" --steps 20 --batch 256 --threads 2 -o "$t/p1.ckpt" 2>/dev/null
"$F" train "$SPEC" --data "$t/tr.csv" --steps 20 --batch 256 --threads 2 -o "$t/p2.ckpt" 2>/dev/null
"$F" logprob "$t/p1.ckpt" --data "$t/te.csv" --threads 2 -o "$t/pl1.csv"
"$F" logprob "$t/p2.ckpt" --data "$t/te.csv" --threads 2 -o "$t/pl2.csv"
if cmp -s "$t/pl1.csv" "$t/pl2.csv"; then ok; else
    bad "two threads: runs differ"; fi

# a checkpoint of another spec is refused for --resume
"$F" train "$top_srcdir/specs/nice.flow" --data "$t/tr.csv" --steps 2 --resume "$t/half.ckpt" \
    -o "$t/x.ckpt" 2>"$t/err"
check resume-other-spec 1 $?
has resume-other-spec "$t/err" "checkpoint was made by a different spec"
absent resume-other-spec "$t/x.ckpt"

# bad checkpoints: a flipped byte, a truncated file
cp "$t/a.ckpt" "$t/flip.ckpt"
size=$(wc -c <"$t/flip.ckpt")
printf '\377' | dd of="$t/flip.ckpt" bs=1 seek=$((size - 7)) conv=notrunc 2>/dev/null
"$F" eval "$t/flip.ckpt" --data "$t/te.csv" >"$t/out" 2>"$t/err"
check flipped 1 $?
has flipped "$t/err" "checksum"
head -c $((size / 2)) "$t/a.ckpt" >"$t/trunc.ckpt"
"$F" sample "$t/trunc.ckpt" -n 5 -o "$t/never.csv" 2>"$t/err"
check truncated 1 $?
has truncated "$t/err" "trunc.ckpt"
absent truncated "$t/never.csv"

# bad data: located errors, exit 1, nothing written
printf 'x0,x1\n0.5,1\n0.25,abc\n' >"$t/bad.csv"
"$F" logprob "$t/a.ckpt" --data "$t/bad.csv" -o "$t/never.csv" 2>"$t/err"
check bad-data 1 $?
has bad-data "$t/err" "bad.csv:3:2: "
absent bad-data "$t/never.csv"
printf 'a,b,c\n1,2,3\n' >"$t/wide.csv"
"$F" eval "$t/a.ckpt" --data "$t/wide.csv" 2>"$t/err"
check wide-data 1 $?
has wide-data "$t/err" "wide.csv"
printf 'x0,x1\n1,nan\n' >"$t/nan.csv"
"$F" train "$SPEC" --data "$t/nan.csv" --steps 1 -o "$t/never.ckpt" 2>"$t/err"
check nan-data 1 $?
has nan-data "$t/err" "nan.csv:2:2: "
absent nan-data "$t/never.ckpt"

# usage errors exit 2
"$F" train "$SPEC" --data "$t/tr.csv" 2>"$t/err"; check no-output 2 $?
has no-output "$t/err" "missing -o CKPT"
"$F" train "$SPEC" --data "$t/tr.csv" -o "$t/x" --lr abc 2>"$t/err"; check bad-lr 2 $?
has bad-lr "$t/err" "--lr: 'abc' is not a number"
"$F" sample "$t/a.ckpt" 2>"$t/err"; check no-n 2 $?
"$F" eval --help >"$t/out"; check eval-help 0 $?
has eval-help "$t/out" "usage: flowkit eval CKPT"
# a spec with errors: diagnostics and exit 1
printf 'flow f {\n  input x : real[2];\n  coupling(hiden = [8]);\n  output z ~ normal;\n}\n' >"$t/bad.flow"
"$F" train "$t/bad.flow" --data "$t/tr.csv" -o "$t/never.ckpt" 2>"$t/err"
check bad-spec 1 $?
has bad-spec "$t/err" "bad.flow:3:"
absent bad-spec "$t/never.ckpt"

# ode layers: the function evaluations per step in the train log, the
# history and `flowkit info` (RK4 with 3 steps: 12 forward + 12 backward),
# the same with 2 threads; none for a model without ode layers
cat >"$t/ode.flow" <<'EOF2'
flow o {
    input x : real[2];
    ode(hidden = [8, 8], time = concat, solver = rk4(steps = 3),
        gradient = backprop);
    output z ~ normal;
}
EOF2
for th in 1 2; do
    "$F" train "$t/ode.flow" --data "$t/tr.csv" --epochs 2 --batch 200 \
        --threads $th -o "$t/o.ckpt" 2>"$t/err"
    check ode-train-$th 0 $?
    has ode-train-nfe-$th "$t/err" "epoch 2 step 6/6 loss "
    has ode-train-nfe-$th "$t/err" " nfe 24 time "
done
"$F" info "$t/o.ckpt" >"$t/out"; check ode-info 0 $?
has ode-info "$t/out" "nfe          24 per training step (last epoch, forward and backward)"
has ode-info "$t/out" "nfe          12 per density pass (256 sampled rows)"
has ode-info-history "$t/out" "  epoch   step          loss           nfe"
same ode-info-history-nfe "24 24" "$(awk '/^  epoch   step/ { on = 1; next }
    on && NF == 4 { printf "%s ", $4 } on && NF != 4 { on = 0 }' "$t/out" | sed 's/ $//')"
"$F" info "$t/o.ckpt" --json >"$t/out"; check ode-info-json 0 $?
has ode-info-json-history "$t/out" '"nfe": 24}]'
has ode-info-json "$t/out" '"train_nfe": 24, "forward_nfe": 12'
"$F" train "$SPEC" --data "$t/tr.csv" --steps 3 --batch 64 -o "$t/m.ckpt" \
    2>"$t/err"
check moons-no-nfe 0 $?
if grep -q "nfe" "$t/err"; then
    bad "moons-no-nfe: the log mentions nfe"
else ok; fi

finish cli_train
