#!/bin/sh
# cli_progress.sh - what `flowkit train` says while and after it runs: the
# per-epoch and --log-every lines off a terminal, the redrawn line on one
# (through script(1)'s pseudo-terminal), --quiet, the closing summary's
# last-epoch mean and best validation epoch, `flowkit info`'s epochs done
# and history table, and the divergence and column-scale warnings.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
check_log=$t/err

cat >"$t/small.flow" <<'EOF'
flow small {
    input x : real[2];
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
# 610 rows in batches of 64: 9 full batches and one of 34 rows per epoch
"$F" data moons -n 610 --seed 1 -o "$t/tr.csv"

# ------------------------------------------------ not a terminal
"$F" train "$t/small.flow" --data "$t/tr.csv" --epochs 3 --batch 64 \
    -o "$t/a.ckpt" 2>"$t/err"
check plain 0 $?
same plain-epoch-lines 3 "$(grep -cE '^epoch [1-3] step (10|20|30)/30 loss -?[0-9]+\.[0-9]{5} time [0-9]+\.[0-9]s$' "$t/err")"
same plain-no-redraw 0 "$(tr -cd '\r' <"$t/err" | wc -c | tr -d ' ')"
same plain-lines 4 "$(wc -l <"$t/err" | tr -d ' ')"
# the summary's loss is the last epoch's mean (not its last, 34-row batch)
l3=$(sed -n 's/^epoch 3 step 30\/30 loss \([^ ]*\) .*/\1/p' "$t/err")
has summary-last-epoch "$t/err" "flowkit train: 30 steps, last epoch mean loss $l3 (epoch 3); wrote $t/a.ckpt"

"$F" train "$t/small.flow" --data "$t/tr.csv" --epochs 3 --batch 64 \
    --log-every 4 -o "$t/b.ckpt" 2>"$t/err"
check log-every 0 $?
same log-every-steps "4 8 12 16 20 24 28" "$(sed -n 's/^step \([0-9]*\)\/30 epoch [1-3] loss -\{0,1\}[0-9.]* steps\/s [0-9.]* time [0-9.]*s$/\1/p' "$t/err" | tr '\n' ' ' | sed 's/ $//')"
same log-every-epochs 3 "$(grep -c '^epoch ' "$t/err")"
cmp -s "$t/a.ckpt" "$t/b.ckpt"; check log-every-same-model 0 $?

"$F" train "$t/small.flow" --data "$t/tr.csv" --epochs 2 --batch 64 --quiet \
    --json -o "$t/q.ckpt" >"$t/out" 2>"$t/err"
check quiet 0 $?
same quiet-silent 0 "$(wc -c <"$t/err" | tr -d ' ')"
has quiet-json "$t/out" '"steps": 20, "epochs": 2, "last_epoch_loss": '
has quiet-json "$t/out" '"last_epoch": 2, "skipped_steps": 0'
"$F" train "$t/small.flow" --data "$t/tr.csv" --log-every 0 -o "$t/x.ckpt" \
    2>"$t/err"
check log-every-0 2 $?

# validation: the best epoch by validation log-likelihood, labelled
"$F" train "$t/small.flow" --data "$t/tr.csv" --epochs 4 --batch 64 \
    --valid-fraction 0.2 -o "$t/v.ckpt" 2>"$t/err"
check valid 0 $?
best=$(awk '/^epoch .* valid_loglik / { for (i = 1; i < NF; i++)
    if ($i == "valid_loglik" && (b == "" || $(i + 1) + 0 > b + 0)) {
        b = $(i + 1); e = $2 } } END { print b " nats (epoch " e ")" }' "$t/err")
has valid-best "$t/err" "flowkit train: best validation log-likelihood $best"

# ------------------------------------------------ flowkit info
"$F" info "$t/v.ckpt" >"$t/out"; check info 0 $?
has info-epochs "$t/out" "epochs       4 done"
has info-table "$t/out" "  epoch   step          loss  valid_loglik"
same info-rows "1 2 3 4" "$(awk '/^  epoch   step/ { on = 1; next }
    on && NF == 4 { printf "%s ", $1 } on && NF != 4 { on = 0 }' "$t/out" | sed 's/ $//')"
if grep -q '"epoch": ' "$t/out"; then bad "info: JSON history without --json"
    cat "$t/out"; else ok; fi
"$F" info "$t/v.ckpt" --json >"$t/out"; check info-json 0 $?
has info-json "$t/out" '"epochs_done": 4'
has info-json "$t/out" '"history": [{"epoch": 1, "step": 8, "loss": '
# a --steps budget ending inside epoch 3: two epochs done
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 25 --batch 64 --quiet \
    -o "$t/p.ckpt"
"$F" info "$t/p.ckpt" >"$t/out"
has info-part "$t/out" "epochs       2 done (and part of epoch 3: the step budget ended inside it)"
has info-part-row "$t/out" "     3*     25 "

# ------------------------------------------------ a terminal
if command -v script >/dev/null 2>&1 && script -qec true /dev/null \
    >/dev/null 2>&1; then
    # 305 steps per epoch: a redraw per step would be 610 of them
    script -qec "\"$F\" train \"$t/small.flow\" --data \"$t/tr.csv\" --epochs 2 --batch 2 -o \"$t/tty.ckpt\"" \
        "$t/ts" >/dev/null 2>&1
    check tty 0 $?
    # one line per redraw, without the erase-line sequences
    tr '\r' '\n' <"$t/ts" | sed 's/\x1b\[K//g' >"$t/tsl"
    same tty-epoch-lines 2 "$(grep -cE '^epoch [12] step (305|610)/610 loss ' "$t/tsl")"
    has tty-redraw "$t/tsl" "epoch 1/2 [            ] 1/305 loss "
    has tty-redraw-eta "$t/tsl" " steps/s ETA "
    n=$(grep -c ' steps/s ETA ' "$t/tsl")
    secs=$(sed -n 's/^epoch 2 step .* time \([0-9.]*\)s.*/\1/p' "$t/tsl")
    # one at each epoch's first batch, then at most one per 0.2 s
    if awk -v n="$n" -v s="$secs" 'BEGIN { exit !(n >= 2 && n <= 2 + s / 0.2 + 1) }'
    then ok; else bad "tty: $n redraws in ${secs}s"; fi
    has tty-summary "$t/tsl" "flowkit train: 610 steps, last epoch mean loss "
else
    echo "cli_progress: script(1) with a pseudo-terminal not available: terminal checks skipped"
fi

# ------------------------------------------------ warnings
# --lr 5 blows the loss up: said when it happens and again at the end
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 30 --batch 610 --lr 5 \
    -o "$t/lr5.ckpt" 2>"$t/err"
check diverge 0 $?
same diverge-warnings 2 "$(grep -c '^flowkit train: warning: the training loss rose from .* the run is diverging; lower --lr (it is 5) or set --clip$' "$t/err")"
first=$(grep -n 'warning: the training loss rose' "$t/err" | head -n 1 | cut -d: -f1)
summary=$(grep -n 'last epoch mean loss' "$t/err" | cut -d: -f1)
if [ "$first" -lt "$summary" ]; then ok; else
    bad "diverge: no warning before the summary"; cat "$t/err"; fi
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 30 --batch 610 --lr 5 \
    --clip 100 -o "$t/lr5.ckpt" 2>"$t/err"
has diverge-clip-hint "$t/err" "lower --lr (it is 5) or --clip (it is 100)"

# columns with standard deviations about 1, 0.01 and 3000
awk 'BEGIN { srand(7); print "a,b,c"
    for (i = 0; i < 400; i++) {
        u = rand() - 0.5; v = rand() - 0.5; w = rand() - 0.5
        printf "%.6f,%.8f,%.3f\n", 3.46 * u, 0.0346 * v, 10392 * w } }' \
    >"$t/scale.csv"
cat >"$t/s3.flow" <<'EOF'
flow s3 {
    input x : real[3];
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
sed 's/repeat 2/actnorm; repeat 2/' "$t/s3.flow" >"$t/s3a.flow"
"$F" train "$t/s3.flow" --data "$t/scale.csv" --steps 2 --batch 100 --quiet \
    -o "$t/s.ckpt" 2>"$t/err"
check scale 0 $?
same scale-one-line 1 "$(wc -l <"$t/err" | tr -d ' ')"
has scale-warning "$t/err" "flowkit train: warning: the data columns' standard deviations differ by "
same scale-columns "b c" "$(sed -n "s/.* ('\(.\)': \([0-9.e-]*\), '\(.\)': \([0-9.e+]*\)).*/\1 \3/p" "$t/err")"
if sed -n "s/.* ('b': \([0-9.e-]*\), 'c': \([0-9.e+]*\)).*/\1 \2/p" "$t/err" |
    awk '{ exit !($1 > 0.008 && $1 < 0.012 && $2 > 2500 && $2 < 3600) }'
then ok; else bad "scale: standard deviations not about 0.01 and 3000"; fi
has scale-hint "$t/err" "put \`actnorm;\` first in the flow"
# without a header: named as the spec's input
tail -n +2 "$t/scale.csv" >"$t/scale_nh.csv"
"$F" train "$t/s3.flow" --data "$t/scale_nh.csv" --steps 2 --batch 100 \
    --quiet -o "$t/s.ckpt" 2>"$t/err"
has scale-input-names "$t/err" "(x[1]: "
has scale-input-names "$t/err" ", x[2]: "
"$F" train "$t/s3a.flow" --data "$t/scale.csv" --steps 2 --batch 100 \
    --quiet -o "$t/s.ckpt" 2>"$t/err"
check scale-actnorm 0 $?
same scale-actnorm-silent 0 "$(wc -c <"$t/err" | tr -d ' ')"
# pixel levels: a dequantized 8-bit column of 0s and 1s next to one of
# 0..255 is the data, not a missing normalisation (dequantize declares
# its domain)
awk 'BEGIN { srand(9); print "a,b,c"
    for (i = 0; i < 400; i++)
        printf "%d,%d,%d\n", (i % 97 == 0), int(256 * rand()), int(256 * rand()) }' \
    >"$t/pix.csv"
cat >"$t/pix.flow" <<'EOF'
flow pix {
    input x : real[3] in [0, 255];
    dequantize(levels = 256);
    logit(alpha = 0.05);
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
"$F" train "$t/pix.flow" --data "$t/pix.csv" --steps 2 --batch 100 \
    --quiet -o "$t/s.ckpt" 2>"$t/err"
check scale-dequantize 0 $?
same scale-dequantize-silent 0 "$(wc -c <"$t/err" | tr -d ' ')"

echo "cli_progress: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
