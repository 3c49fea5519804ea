#!/bin/sh
# cli_fit.sh - `flowkit fit` end to end: the example spec specs/funnel_iaf.flow
# fits Neal's funnel on a small budget (log Z within 4 standard errors of
# the truth, ESS per sample above 0.8); a target from a user's plugin;
# sample --weights; --target replacing the spec's; resume bit for bit,
# with --reproducible too; bad or missing targets give clear errors, the
# right exit code and no output file.
set -u
. "$top_srcdir/tests/lib.sh"
# jget FILE KEY: a number from a one-line JSON report
jget() { sed 's/.*"'"$2"'": \([-0-9.e+]*\).*/\1/' "$1"; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
S=$top_srcdir/specs

"$F" plugins >"$t/out"; check plugins 0 $?
has plugins-targets "$t/out" "funnel         target: Neal's funnel"

# the example spec on a small budget (its own train section says 2000)
"$F" fit "$S/funnel_iaf.flow" --steps 500 -o "$t/fun.ckpt" --json \
    >"$t/fun.json" 2>"$t/err"
check fit-funnel 0 $?
has fit-progress "$t/err" "step 500/500 elbo "
has fit-json "$t/fun.json" '"target": "funnel(scale = 3)"'
lz=$(jget "$t/fun.json" log_z); se=$(jget "$t/fun.json" log_z_se)
tz=$(jget "$t/fun.json" log_z_true); ess=$(jget "$t/fun.json" ess_per_sample)
echo "funnel_iaf, 500 steps: log Z $lz +- $se (true $tz), ESS/n $ess"
truth funnel-log-z "($lz - $tz) < 4 * $se && ($tz - $lz) < 4 * $se && $se < 0.01"
truth funnel-ess "$ess > 0.8"
truth funnel-elbo "$(jget "$t/fun.json" elbo) < $tz"

# samples with self-normalised weights against the stored target
"$F" sample "$t/fun.ckpt" -n 2000 --seed 4 --weights --with-logprob \
    -o "$t/w.csv"; check sample-weights 0 $?
has weights-header "$t/w.csv" "x0,x1,x2,x3,logprob,weight"
truth weights-sum "$(awk -F, 'NR > 1 { s += $6; if ($6 < 0) neg = 1 }
    END { print (neg ? 9 : s) }' "$t/w.csv") > 0.999 && \
    $(awk -F, 'NR > 1 { s += $6 } END { print s }' "$t/w.csv") < 1.001"
"$F" sample "$t/fun.ckpt" -n 10 --weights --target 'funnel(scale = 1)' \
    -o "$t/w1.csv"; check sample-weights-target 0 $?
"$F" sample "$t/fun.ckpt" -n 10 --target 'funnel' -o "$t/w2.csv" 2>"$t/err"
check sample-target-alone 2 $?
absent sample-target-alone "$t/w2.csv"

# a checkpoint of maximum-likelihood training has no target to weigh by
"$F" data moons -n 200 --seed 1 -o "$t/moons.csv"
"$F" train "$S/moons.flow" --data "$t/moons.csv" --steps 2 -o "$t/ml.ckpt" \
    2>/dev/null
"$F" sample "$t/ml.ckpt" -n 10 --weights -o "$t/w3.csv" 2>"$t/err"
check weights-no-target 1 $?
has weights-no-target "$t/err" "declares no target"
absent weights-no-target "$t/w3.csv"

# --target replaces the spec's target; the checkpoint keeps it
"$F" fit "$S/funnel_iaf.flow" --steps 20 --eval-samples 100 \
    --target 'gmm(components = 2, std = 1.5)' -o "$t/g.ckpt" --json \
    >"$t/g.json" 2>/dev/null; check fit-target-flag 0 $?
has fit-target-flag "$t/g.json" '"target": "gmm(components = 2, std = 1.5)"'
"$F" sample "$t/g.ckpt" -n 10 --weights -o "$t/w4.csv"
check weights-flag-target 0 $?
"$F" info "$t/g.ckpt" >"$t/out"; check info-target 0 $?
has info-target "$t/out" "target       gmm(components = 2, std = 1.5)"

# a user's target plugin found on FLOW_PLUGIN_PATH
cat >"$t/g2.flow" <<'SPEC'
flow g2 {
  input x : real[2];
  repeat 2 { iaf(hidden = [16], order = natural); iaf(hidden = [16], order = reverse); }
  output z ~ normal;
}
SPEC
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$FLOW_TARGET_PLUGINS" "$F" fit "$t/g2.flow" \
    --target 'shifted_normal(mu = 1, sigma = 0.5, c = 2)' --steps 300 \
    --lr 1e-2 -o "$t/u.ckpt" --json >"$t/u.json" 2>/dev/null
check fit-user-target 0 $?
lz=$(jget "$t/u.json" log_z); se=$(jget "$t/u.json" log_z_se)
tz=$(jget "$t/u.json" log_z_true); ess=$(jget "$t/u.json" ess_per_sample)
echo "user target, 300 steps: log Z $lz +- $se (true $tz), ESS/n $ess"
truth user-log-z "($lz - $tz) < 4 * $se + 1e-4 && ($tz - $lz) < 4 * $se + 1e-4"
truth user-ess "$ess > 0.95"

# resume: 20 + 20 steps end where 40 steps end, bit for bit
"$F" fit "$t/g2.flow" --target u1 --steps 40 --eval-samples 100 \
    -o "$t/r40.ckpt" 2>/dev/null >/dev/null
"$F" fit "$t/g2.flow" --target u1 --steps 20 --eval-samples 100 \
    -o "$t/r20.ckpt" 2>/dev/null >/dev/null
"$F" fit "$t/g2.flow" --target u1 --steps 40 --eval-samples 100 \
    --resume "$t/r20.ckpt" -o "$t/rr.ckpt" 2>/dev/null >/dev/null
check fit-resume 0 $?
"$F" sample "$t/r40.ckpt" -n 20 --seed 1 -o "$t/s40.csv"
"$F" sample "$t/rr.ckpt" -n 20 --seed 1 -o "$t/srr.csv"
if cmp -s "$t/s40.csv" "$t/srr.csv"; then ok; else
    bad "resumed fit differs from an uninterrupted one"; fi
# --reproducible (the block draws of mpirun: tests/mpi.sh) resumes bit for
# bit too, and draws other samples than the plain fit
R="--target u1 --eval-samples 100 --reproducible"
"$F" fit "$t/g2.flow" $R --steps 40 -o "$t/b40.ckpt" 2>/dev/null >/dev/null
check fit-reproducible 0 $?
"$F" fit "$t/g2.flow" $R --steps 20 -o "$t/b20.ckpt" 2>/dev/null >/dev/null
"$F" fit "$t/g2.flow" $R --steps 40 --resume "$t/b20.ckpt" -o "$t/br.ckpt" \
    2>/dev/null >/dev/null
check fit-reproducible-resume 0 $?
"$F" export "$t/b40.ckpt" -o "$t/b40.st" && \
    "$F" export "$t/br.ckpt" -o "$t/br.st"
same_file fit-reproducible-resumed "$t/b40.st" "$t/br.st"
"$F" export "$t/r40.ckpt" -o "$t/r40.st"
if cmp -s "$t/r40.st" "$t/b40.st"; then
    bad "fit --reproducible: the plain fit's parameters"; else ok; fi

# errors: unknown target (with a suggestion), none at all, bad --target text,
# wrong dimension; never an output file
"$F" fit "$S/funnel_iaf.flow" --target 'funnle(scale = 3)' -o "$t/x.ckpt" 2>"$t/err"
check bad-target-name 1 $?
has bad-target-name "$t/err" "<--target>:1:1: error[F0700]: unknown target type 'funnle'"
has bad-target-name "$t/err" "did you mean 'funnel'?"
absent bad-target-name "$t/x.ckpt"
"$F" fit "$t/g2.flow" -o "$t/x.ckpt" 2>"$t/err"
check missing-target 2 $?
has missing-target "$t/err" "declares no target: add \`target NAME(...);\`"
absent missing-target "$t/x.ckpt"
"$F" fit "$t/g2.flow" --target '3 + 4' -o "$t/x.ckpt" 2>"$t/err"
check target-expression 1 $?
has target-expression "$t/err" "error[F0704]: --target: expected a target type"
"$F" fit "$t/g2.flow" --target 'funnel(scale = ' -o "$t/x.ckpt" 2>"$t/err"
check target-syntax 1 $?
has target-syntax "$t/err" "<--target>:1:16: error[F0002]: ')' expected"
"$F" fit "$S/funnel_iaf.flow" --target banana -o "$t/x.ckpt" 2>"$t/err"
check target-dim 1 $?
has target-dim "$t/err" "error[F0702]: target 'banana' is 2-dimensional, the input has 4 dimensions"
absent target-errors "$t/x.ckpt"
"$F" fit "$t/g2.flow" --target u1 -o "$t/x.ckpt" --steps 0 2>"$t/err"
check zero-steps 2 $?
"$F" fit "$t/g2.flow" -o 2>"$t/err"
check missing-value 2 $?

# a sequential sampling direction is warned about, and still fits
sed 's/iaf(/maf(/g' "$t/g2.flow" >"$t/m2.flow"
"$F" fit "$t/m2.flow" --target u2 --steps 5 --eval-samples 50 \
    -o "$t/m.ckpt" 2>"$t/err" >/dev/null
check fit-maf 0 $?
has fit-maf-warning "$t/err" "warning[F0903]: maf#0 (and 3 more layers) samples in 2 sequential passes"
has fit-maf-warning "$t/err" "help: use iaf instead of maf"

finish cli_fit
