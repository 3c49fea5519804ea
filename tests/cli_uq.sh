#!/bin/sh
# cli_uq.sh - flowkit compare and flowkit hdr end to end (docs/uq.md).
# compare: its means, standard errors and paired differences are those
# recomputed here with awk from `flowkit logprob` (and agree with `flowkit
# eval`); a model against itself differs by 0 with s.e. 0.  hdr: on
# standard normal models (identity-initialised couplings) the threshold's
# stated interval holds the chi-square value, a row's density quantile is
# exp(-r^2/2), far rows are outside with quantile 0; the threshold is the
# order statistic of `flowkit sample --with-logprob`; a conditional model
# gets a region per context.  Bad inputs: clear errors, non-zero exit, no
# output file.
set -u
. "$top_srcdir/tests/lib.sh"
# near NAME GOT WANT TOL: |GOT - WANT| <= TOL
near() {
    if awk -v g="$2" -v w="$3" -v t="$4" 'BEGIN { d = g - w; if (d < 0) d = -d
            exit !(g != "" && d <= t) }'; then ok; echo "$1: $2 (want $3 +- $4)"
    else bad "$1: got '$2', want $3 +- $4"; fi
}
# jnum FILE KEY [N]: the N-th (default 1st) number after "KEY": in FILE
jnum() { tr ',{}[' '\n\n\n\n' <"$1" | sed -n "s/^ *\"$2\": *\\([-+0-9.eE]*\\|null\\)\$/\\1/p" \
    | sed -n "${3:-1}p"; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
S=$top_srcdir/specs
X2=x0,x1
LAB=label0,label1,label2,label3,label4,label5,label6,label7

# ------------------------------------------------------------ compare
"$F" data moons -n 2000 --seed 1 -o "$t/tr.csv"
"$F" data moons -n 1000 --seed 2 -o "$t/te.csv"
# a MAF and a RealNVP (specs/maf_moons.flow, specs/moons.flow), briefly
"$F" train "$S/maf_moons.flow" --data "$t/tr.csv" --steps 120 --batch 256 -o "$t/maf.ckpt" 2>/dev/null
check train-maf 0 $?
"$F" train "$S/moons.flow" --data "$t/tr.csv" --steps 120 --batch 256 -o "$t/rnvp.ckpt" 2>/dev/null
check train-rnvp 0 $?

"$F" compare "$t/maf.ckpt" "$t/rnvp.ckpt" --data "$t/te.csv" --json >"$t/cmp.json"
check compare-json 0 $?
"$F" logprob "$t/maf.ckpt" --data "$t/te.csv" -o "$t/lpa.csv"
"$F" logprob "$t/rnvp.ckpt" --data "$t/te.csv" -o "$t/lpb.csv"
# the same statistics from the per-row log-densities: mean, sd/sqrt(n) of
# each, and of the paired differences (model B - model A)
paste -d, "$t/lpa.csv" "$t/lpb.csv" | awk -F, 'NR > 1 { a[++n] = $1; b[n] = $2; sa += $1; sb += $2 }
    END { ma = sa / n; mb = sb / n; md = mb - ma
        for (i = 1; i <= n; i++) { va += (a[i] - ma) ^ 2; vb += (b[i] - mb) ^ 2
            vd += (b[i] - a[i] - md) ^ 2 }
        printf "%.9f %.9f %.9f %.9f %.9f %.9f\n", ma, sqrt(va / (n - 1) / n),
            mb, sqrt(vb / (n - 1) / n), md, sqrt(vd / (n - 1) / n) }' >"$t/ref"
read -r ma sea mb seb md sed <"$t/ref"
best=$(sed -n 's/.*"best": "\([^"]*\)".*/\1/p' "$t/cmp.json")
# ranked: rank 1 is the better mean; its diff is 0, rank 2's is worse - best
if awk -v a="$ma" -v b="$mb" 'BEGIN { exit !(a > b) }'; then
    want="$t/maf.ckpt"; m1=$ma; s1=$sea; m2=$mb; s2=$seb; d=$md
else
    want="$t/rnvp.ckpt"; m1=$mb; s1=$seb; m2=$ma; s2=$sea; d=$(awk -v x="$md" 'BEGIN { print -x }')
fi
if [ "$best" = "$want" ]; then ok; else bad "compare: best is '$best', want '$want'"; fi
near "compare: rank 1 loglik" "$(jnum "$t/cmp.json" loglik 1)" "$m1" 1e-6
near "compare: rank 1 s.e." "$(jnum "$t/cmp.json" stderr 1)" "$s1" 1e-7
near "compare: rank 2 loglik" "$(jnum "$t/cmp.json" loglik 2)" "$m2" 1e-6
near "compare: rank 2 s.e." "$(jnum "$t/cmp.json" stderr 2)" "$s2" 1e-7
near "compare: rank 1 diff" "$(jnum "$t/cmp.json" diff 1)" 0 0
near "compare: paired diff (rank 2 - rank 1)" "$(jnum "$t/cmp.json" diff 2)" "$d" 1e-6
sed_=$(jnum "$t/cmp.json" diff_stderr 2)
near "compare: paired s.e." "$sed_" "$sed" 1e-7
# z = -diff / se and confidence = Phi(z) (erfc-free check: the table of
# Phi is not in awk, so check z and that confidence is in (0.5, 1])
near "compare: z" "$(jnum "$t/cmp.json" z 2)" "$(awk -v d="$d" -v s="$sed" 'BEGIN { print -d / s }')" 1e-3
conf=$(jnum "$t/cmp.json" confidence 2)
if awk -v c="$conf" 'BEGIN { exit !(c > 0.5 && c <= 1) }'; then ok; else bad "compare: confidence $conf"; fi
# pairing pays: the paired s.e. is below the unpaired one on the same rows
if awk -v p="$sed_" -v u="$(jnum "$t/cmp.json" unpaired_stderr 2)" 'BEGIN { exit !(p < u) }'; then ok
else bad "compare: paired s.e. $sed_ not below the unpaired one"; fi
# and flowkit eval says the same per model
"$F" eval "$t/maf.ckpt" --data "$t/te.csv" --json >"$t/eval.json"
near "compare vs eval: loglik" "$(jnum "$t/eval.json" loglik)" "$ma" 1e-5
near "compare vs eval: s.e." "$(jnum "$t/eval.json" stderr)" "$sea" 1e-6

# the text table and the verdict; the order of the arguments does not
# change the ranking
"$F" compare "$t/rnvp.ckpt" "$t/maf.ckpt" --data "$t/te.csv" >"$t/cmp.txt"
check compare-text 0 $?
has compare-text "$t/cmp.txt" "2 models on 1000 rows of $t/te.csv"
has compare-text "$t/cmp.txt" "1     $want"
has compare-text "$t/cmp.txt" "$want is better than "

# a model against itself: difference 0, s.e. 0
"$F" compare "$t/maf.ckpt" "$t/maf.ckpt" --data "$t/te.csv" --json >"$t/self.json"
check compare-self 0 $?
near "compare self: diff" "$(jnum "$t/self.json" diff 2)" 0 0
near "compare self: s.e." "$(jnum "$t/self.json" diff_stderr 2)" 0 0
"$F" compare "$t/maf.ckpt" "$t/maf.ckpt" --data "$t/te.csv" >"$t/self.txt"
has compare-self-text "$t/self.txt" "give the same log-density on every row"

# three models, a small n: ranked table and the small-n note
head -n 11 "$t/te.csv" >"$t/te10.csv"
"$F" compare "$t/maf.ckpt" "$t/rnvp.ckpt" "$t/maf.ckpt" --data "$t/te10.csv" >"$t/three.txt"
check compare-three 0 $?
has compare-three "$t/three.txt" "3 models on 10 rows"
has compare-three "$t/three.txt" "note: n = 10 rows is small"

# ------------------------------------------------------------ hdr, known
# standard normal models: identity-initialised couplings, one Adam step
# of lr 1e-12 to write a checkpoint (parameters move by ~1e-12)
cat >"$t/id2.flow" <<'EOF'
flow id2 {
    input x : real[2];
    coupling(mask = parity(0), hidden = [8], identity_init = true);
    coupling(mask = parity(1), hidden = [8], identity_init = true);
    output z ~ normal;
}
EOF
sed -e 's/id2/id3/; s/real\[2\]/real[3]/' "$t/id2.flow" >"$t/id3.flow"
"$F" data gmm --dim 3 -n 64 -o "$t/g3.csv"
"$F" train "$t/id2.flow" --data "$t/tr.csv" --steps 1 --lr 1e-12 -o "$t/id2.ckpt" 2>/dev/null
check train-id2 0 $?
"$F" train "$t/id3.flow" --data "$t/g3.csv" --steps 1 --lr 1e-12 -o "$t/id3.ckpt" 2>/dev/null
check train-id3 0 $?

# the threshold's interval holds the true value
#   log p threshold = -D/2 log(2 pi) - q/2, q the mass-quantile of chi2_D
# and is tight enough to mean something
hdr_known() { # NAME CKPT MASS TRUE [flags]
    name=$1 ck=$2 mass=$3 truth=$4; shift 4
    "$F" hdr "$ck" --mass "$mass" --json "$@" >"$t/h.json"
    check "$name" 0 $?
    th=$(jnum "$t/h.json" threshold) lo=$(jnum "$t/h.json" lower) hi=$(jnum "$t/h.json" upper)
    if awk -v l="$lo" -v h="$hi" -v v="$truth" 'BEGIN { exit !(l <= v && v <= h && h - l < 0.12) }'
    then ok; echo "$name: threshold $th, interval [$lo, $hi] holds $truth"
    else bad "$name: interval [$lo, $hi] (threshold $th) misses $truth or is wide"; fi
}
hdr_known "hdr D=2 mass 0.95" "$t/id2.ckpt" 0.95 \
    "$(awk 'BEGIN { print -log(2 * 3.141592653589793) - 5.991464547107979 / 2 }')"
hdr_known "hdr D=2 mass 0.5" "$t/id2.ckpt" 0.5 \
    "$(awk 'BEGIN { print -log(2 * 3.141592653589793) - 1.386294361119891 / 2 }')" --seed 7
hdr_known "hdr D=3 mass 0.95" "$t/id3.ckpt" 0.95 \
    "$(awk 'BEGIN { print -1.5 * log(2 * 3.141592653589793) - 7.814727903251178 / 2 }')"
# the mass of the estimated region: 0.95 with s.e. sqrt(a (1-a) / N)
near "hdr region mass" "$(jnum "$t/h.json" region_mass)" 0.95 1e-5
near "hdr region mass s.e." "$(jnum "$t/h.json" region_mass_stderr)" \
    "$(awk 'BEGIN { print sqrt(0.05 * 0.95 / 100000) }')" 1e-5

# the threshold is the ceil(0.05 N)-th smallest log-density of the
# model's own samples (same seed, same stream as flowkit sample)
"$F" hdr "$t/id2.ckpt" --samples 20000 --seed 5 --json >"$t/h.json"
"$F" sample "$t/id2.ckpt" -n 20000 --seed 5 --with-logprob --no-header -o "$t/s.csv"
near "hdr = order statistic of flowkit sample" "$(jnum "$t/h.json" threshold)" \
    "$(cut -d, -f3 "$t/s.csv" | sort -g | sed -n 1000p)" 1e-6

# rows: the centre, a far row, rows at radius r whose density quantile is
# P(|Y|^2 >= r^2) = exp(-r^2 / 2), and a row so far that |x|^2 overflows
# (log p = -inf: an error naming the row, unless --allow-nonfinite)
big=1e30
case "$("$F" --version)" in *float64*) big=1e300 ;; esac
printf 'x0,x1\n0,0\n10,10\n2,1.5\n-0.5,1\n%s,%s\n' $big $big >"$t/rows.csv"
"$F" hdr "$t/id2.ckpt" --data "$t/rows.csv" -o "$t/rows_out.csv" 2>"$t/e.txt"
check hdr-rows-nonfinite 1 $?
has hdr-rows-nonfinite "$t/e.txt" "rows.csv:6: the log-density is -inf under the model"
"$F" hdr "$t/id2.ckpt" --data "$t/rows.csv" --allow-nonfinite \
    -o "$t/rows_out.csv" >"$t/hs.txt"
check hdr-rows 0 $?
if [ "$(head -n 1 "$t/rows_out.csv")" = "logprob,threshold,inside,quantile" ]; then ok
else bad "hdr rows header: $(head -n 1 "$t/rows_out.csv")"; fi
row() { sed -n "$(($1 + 1))p" "$t/rows_out.csv" | cut -d, -f"$2"; }
near "hdr centre inside" "$(row 1 3)" 1 0
near "hdr centre quantile" "$(row 1 4)" 1 0
near "hdr (10,10) inside" "$(row 2 3)" 0 0
near "hdr (10,10) quantile" "$(row 2 4)" 0 0
near "hdr (10,10) log p" "$(row 2 1)" -101.837877 1e-3
near "hdr (2,1.5) inside" "$(row 3 3)" 0 0
# binomial s.e. of a quantile from N = 100000 samples: sqrt(q (1-q) / N),
# 0.00065 and 0.0016 here; the tolerances are 4 s.e.
near "hdr (2,1.5) quantile" "$(row 3 4)" "$(awk 'BEGIN { print exp(-3.125) }')" 0.0026
near "hdr (-0.5,1) inside" "$(row 4 3)" 1 0
near "hdr (-0.5,1) quantile" "$(row 4 4)" "$(awk 'BEGIN { print exp(-0.625) }')" 0.0064
near "hdr (big,big) inside" "$(row 5 3)" 0 0
near "hdr (big,big) quantile" "$(row 5 4)" 0 0
# log p = -inf is written as -inf, not as a finite number
if [ "$(row 5 1)" = -inf ]; then ok; else bad "hdr big row log p $(row 5 1)"; fi
has hdr-summary "$t/hs.txt" "rows: 5; outside the region: 3 (60.00%)"
has hdr-summary "$t/hs.txt" "95% interval ["
# rows to stdout, the summary to stderr
"$F" hdr "$t/id2.ckpt" --data "$t/rows.csv" --samples 1000 --allow-nonfinite \
    >"$t/o.csv" 2>"$t/e.txt"
if [ "$(wc -l <"$t/o.csv" | tr -d ' ')" = 6 ]; then ok; else bad "hdr stdout rows"; cat "$t/o.csv"; fi
has hdr-stderr-summary "$t/e.txt" "highest-density region of mass 0.95 from 1000 model samples"

# ------------------------------------------------------------ hdr, conditional
"$F" data 8gaussians --labels -n 3000 --seed 1 -o "$t/gl.csv"
"$F" train "$S/cond_maf.flow" --data "$t/gl.csv" --columns $X2 --context $LAB \
    --steps 200 --batch 256 -o "$t/cmaf.ckpt" 2>/dev/null
check train-cond 0 $?
# the centre of components 0 and 4 (means of their training rows), each
# scored given its own label and given the other's
awk -F, 'NR > 1 { for (k = 0; k < 8; k++) if ($(3 + k) == 1) { sx[k] += $1; sy[k] += $2; n[k]++ } }
    END { print "x0,x1,label0,label1,label2,label3,label4,label5,label6,label7"
        split("0 4", ks, " ")
        for (i = 1; i <= 2; i++) for (j = 1; j <= 2; j++) { k = ks[i]; c = ks[j]
            printf "%.5f,%.5f", sx[k] / n[k], sy[k] / n[k]
            for (l = 0; l < 8; l++) printf ",%d", l == c; print "" } }' "$t/gl.csv" >"$t/crows.csv"
"$F" hdr "$t/cmaf.ckpt" --data "$t/crows.csv" --columns $X2 --context $LAB --samples 20000 \
    -o "$t/cout.csv" --json >"$t/c.json"
check hdr-cond 0 $?
row() { sed -n "$(($1 + 1))p" "$t/cout.csv" | cut -d, -f"$2"; }
# centre 0 given label 0: inside, dense; given label 4: outside, quantile 0
near "hdr cond: centre 0 | label 0 inside" "$(row 1 3)" 1 0
if awk -v q="$(row 1 4)" 'BEGIN { exit !(q > 0.5) }'; then ok; else bad "hdr cond: quantile $(row 1 4)"; fi
near "hdr cond: centre 0 | label 4 inside" "$(row 2 3)" 0 0
near "hdr cond: centre 0 | label 4 quantile" "$(row 2 4)" 0 0
near "hdr cond: centre 4 | label 0 inside" "$(row 3 3)" 0 0
near "hdr cond: centre 4 | label 4 inside" "$(row 4 3)" 1 0
# two regions (labels 0 and 4), each holding its rows
if [ "$(grep -o '"context": \[' "$t/c.json" | wc -l | tr -d ' ')" = 2 ]; then ok
else bad "hdr cond: want 2 regions"; cat "$t/c.json"; fi
# a region's threshold agrees with the one estimated independently from
# `flowkit sample --context` (another random stream) within the intervals
th0=$(jnum "$t/c.json" threshold 1) lo0=$(jnum "$t/c.json" lower 1) hi0=$(jnum "$t/c.json" upper 1)
printf 'label0,label1,label2,label3,label4,label5,label6,label7\n1,0,0,0,0,0,0,0\n' >"$t/onehot0.csv"
"$F" sample "$t/cmaf.ckpt" -n 20000 --seed 99 --context "$t/onehot0.csv" --with-logprob \
    --no-header -o "$t/cs.csv"
near "hdr cond: threshold | label 0 vs flowkit sample" "$th0" \
    "$(awk -F, '{ print $NF }' "$t/cs.csv" | sort -g | sed -n 1000p)" \
    "$(awk -v l="$lo0" -v h="$hi0" 'BEGIN { print 1.5 * (h - l) }')"
# a conditional model needs the data's contexts
"$F" hdr "$t/cmaf.ckpt" >"$t/out" 2>"$t/err"
check hdr-cond-nodata 2 $?
has hdr-cond-nodata "$t/err" "the model is conditional: give --data FILE"
# more distinct contexts than --max-contexts: refused before any output
"$F" hdr "$t/cmaf.ckpt" --data "$t/gl.csv" --columns $X2 --context $LAB --max-contexts 3 \
    -o "$t/many.csv" 2>"$t/err"
check hdr-max-contexts 1 $?
has hdr-max-contexts "$t/err" "more than 3 distinct contexts"
absent hdr-max-contexts "$t/many.csv"
# compare with conditional models: the context columns as eval takes them
"$F" compare "$t/cmaf.ckpt" "$t/cmaf.ckpt" --data "$t/gl.csv" --columns $X2 --context $LAB \
    --json >"$t/cc.json"
check compare-cond 0 $?
"$F" eval "$t/cmaf.ckpt" --data "$t/gl.csv" --columns $X2 --context $LAB --json >"$t/ce.json"
near "compare cond vs eval" "$(jnum "$t/cc.json" loglik)" "$(jnum "$t/ce.json" loglik)" 1e-5

# ------------------------------------------------------------ bad inputs
"$F" compare "$t/maf.ckpt" "$t/nope.ckpt" --data "$t/te.csv" >"$t/out" 2>"$t/err"
check compare-missing 1 $?
has compare-missing "$t/err" "nope.ckpt"
"$F" compare "$t/maf.ckpt" "$t/id3.ckpt" --data "$t/te.csv" >"$t/out" 2>"$t/err"
check compare-dims 1 $?
has compare-dims "$t/err" "id3.ckpt: the model has dimension 3"
"$F" compare "$t/maf.ckpt" "$t/cmaf.ckpt" --data "$t/te.csv" >"$t/out" 2>"$t/err"
check compare-context 1 $?
has compare-context "$t/err" "cmaf.ckpt: the model has dimension 2 and 8 context columns"
"$F" compare "$t/maf.ckpt" --data "$t/te.csv" 2>"$t/err"
check compare-one 2 $?
has compare-one "$t/err" "give at least two checkpoints"
"$F" compare "$t/maf.ckpt" "$t/rnvp.ckpt" 2>"$t/err"
check compare-nodata 2 $?
"$F" compare "$t/maf.ckpt" "$t/rnvp.ckpt" --data "$t/rows.csv" >"$t/out" 2>"$t/err"
check compare-nonfinite 1 $?
has compare-nonfinite "$t/err" "$t/rows.csv:6: the log-density is -inf under the model $t/maf.ckpt"
"$F" compare "$t/maf.ckpt" "$t/rnvp.ckpt" --data "$t/g3.csv" >"$t/out" 2>"$t/err"
check compare-data-dims 1 $?
has compare-data-dims "$t/err" "g3.csv"
for m in 0 1 1.5 -0.1 abc ""; do
    "$F" hdr "$t/id2.ckpt" --mass "$m" --data "$t/rows.csv" -o "$t/bad.csv" 2>"$t/err"
    check "hdr --mass '$m'" 2 $?
    has "hdr --mass '$m'" "$t/err" "--mass: '$m' is not a number strictly between 0 and 1"
    absent "hdr --mass '$m'" "$t/bad.csv"
done
"$F" hdr "$t/nope.ckpt" --data "$t/rows.csv" -o "$t/bad.csv" 2>"$t/err"
check hdr-missing 1 $?
has hdr-missing "$t/err" "nope.ckpt"
absent hdr-missing "$t/bad.csv"
"$F" hdr "$t/id2.ckpt" --data "$t/g3.csv" -o "$t/bad.csv" 2>"$t/err"
check hdr-dims 1 $?
has hdr-dims "$t/err" "g3.csv"
absent hdr-dims "$t/bad.csv"
"$F" hdr "$t/id2.ckpt" -o "$t/bad.csv" 2>"$t/err"
check hdr-o-without-data 2 $?
absent hdr-o-without-data "$t/bad.csv"
"$F" hdr "$t/id2.ckpt" --samples 0 2>"$t/err"
check hdr-samples-0 2 $?
"$F" hdr "$t/id2.ckpt" --level 1 2>"$t/err"
check hdr-level-1 2 $?
"$F" hdr --help >"$t/out"; check hdr-help 0 $?
has hdr-help "$t/out" "usage: flowkit hdr CKPT"
"$F" compare --help >"$t/out"; check compare-help 0 $?
has compare-help "$t/out" "usage: flowkit compare CKPT CKPT..."
"$F" --help >"$t/out"
has help-lists "$t/out" "  compare   rank models by mean log-likelihood"
has help-lists "$t/out" "  hdr       highest-density region threshold"

finish cli_uq
