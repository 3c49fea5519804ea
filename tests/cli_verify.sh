#!/bin/sh
# cli_verify.sh - `flowkit train` probes third-party plugin layers before
# the first step: the log-det bugs of tests/plugins/ldbugs.c stop it with
# exit 1, a message naming the layer, its plugin, the row and both values,
# and no output; --no-verify-plugins trains anyway; flowkit's own layers
# are probed only with --verify-plugins, pass, and the probe changes no
# bit of what training writes.  Run by make check with FLOWKIT,
# FLOW_PLUGIN_PATH, FLOW_TEST_PLUGINS and top_srcdir set.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
S=$top_srcdir/specs
check_log=$t/err

# the test plugin alone in a directory on FLOW_PLUGIN_PATH, as a user's
mkdir "$t/plug"
cp "$FLOW_TEST_PLUGINS/ldbugs.so" "$t/plug/"
PLUG=$t/plug/ldbugs.so
UP="$FLOW_PLUGIN_PATH:$t/plug"
"$F" data moons -n 400 --seed 1 -o "$t/moons.csv" 2>"$t/err"
check data 0 $?
layer_spec() {
    cat >"$t/$1.flow" <<EOF
flow $1 {
    input x : real[2];
    $1();
    coupling(mask = half, hidden = [8]);
    output z ~ normal;
}
EOF
}
for ty in ld_ok ld_flip ld_plus ld_flip0 ld_noshift; do layer_spec $ty; done
# the number after KEY in $t/err
num_after() { sed -n "s/.*$1\([-0-9.e+]*\).*/\1/p" "$t/err" | head -n 1; }
utrain() { spec=$1; shift
    FLOW_PLUGIN_PATH=$UP "$F" train "$t/$spec.flow" --data "$t/moons.csv" \
        --steps 5 --batch 50 "$@" >"$t/out" 2>"$t/err"; }

# a sign-flipped log-det (s = 0.5 per dimension: log|det J| = 1, the
# layer says -1): exit 1, the message, nothing written
utrain ld_flip -o "$t/flip.ckpt"
check "flipped log-det: train" 1 $?
has "flipped log-det: layer and plugin" "$t/err" \
    "flowkit train: ld_flip#0 ($t/ld_flip.flow:3:5, $PLUG): plugin check failed: log-det vs FD Jacobian, row 0 of the first batch: layer -1, log|det| of the FD Jacobian "
truth "flipped log-det: FD value" "$(num_after 'of the FD Jacobian ') > 0.998 && $(num_after 'of the FD Jacobian ') < 1.002" "$t/err"
has "flipped log-det: the full report" "$t/err" \
    "run \`flowkit check ld_flip --plugin $PLUG --dim 2\` for the full report"
has "flipped log-det: nothing written" "$t/err" \
    "flowkit train: training not started, nothing written (--no-verify-plugins skips this probe)"
absent "flipped log-det: no checkpoint" "$t/flip.ckpt"
# the same with --checkpoint-every and in place of an existing file
printf 'keep me\n' >"$t/keep.ckpt"
utrain ld_flip --checkpoint-every 1 -o "$t/keep.ckpt"
check "flipped log-det: existing output" 1 $?
same "flipped log-det: existing output kept" "keep me" "$(cat "$t/keep.ckpt")"

# +0.1 per row: the same, with both values
utrain ld_plus -o "$t/plus.ckpt"
check "log-det + 0.1: train" 1 $?
has "log-det + 0.1: values" "$t/err" \
    "row 0 of the first batch: layer 1.1"
truth "log-det + 0.1: FD value" "$(num_after 'of the FD Jacobian ') > 0.998 && $(num_after 'of the FD Jacobian ') < 1.002" "$t/err"
absent "log-det + 0.1: no checkpoint" "$t/plus.ckpt"

# bugs the identity hides show at the perturbed parameters
utrain ld_flip0 -o "$t/flip0.ckpt"
check "flipped log-det at the identity: train" 1 $?
has "flipped log-det at the identity: where" "$t/err" \
    "log-det vs FD Jacobian, row 0 of the first batch, parameters moved by 0.2 x N(0, 1) (seed 1): layer -"
utrain ld_noshift -o "$t/noshift.ckpt"
check "inverse without its shift: train" 1 $?
has "inverse without its shift: round trip" "$t/err" \
    "plugin check failed: round trip x -> z -> x, row "

# --no-verify-plugins trains the buggy layer anyway
utrain ld_flip --no-verify-plugins -o "$t/flip.ckpt"
check "--no-verify-plugins: train" 0 $?
test -s "$t/flip.ckpt"; check "--no-verify-plugins: checkpoint" 0 $?
# ... and the bug flatters eval by exactly 0.1 per layer: why the probe
utrain ld_ok --no-verify-plugins --seed 3 -o "$t/ok_nv.ckpt"
utrain ld_plus --no-verify-plugins --seed 3 -o "$t/plus.ckpt"
a=$(FLOW_PLUGIN_PATH=$UP "$F" eval "$t/ok_nv.ckpt" --data "$t/moons.csv" --json)
b=$(FLOW_PLUGIN_PATH=$UP "$F" eval "$t/plus.ckpt" --data "$t/moons.csv" --json)
gap=$(printf '%s\n%s\n' "$a" "$b" | sed 's/.*"loglik": \([-0-9.e]*\).*/\1/' |
      awk 'NR == 1 { a = $1 } NR == 2 { printf "%.4f", $1 - a }')
same "log-det + 0.1 flatters eval by 0.1" 0.1000 "$gap"

# the correct layer trains with the probe on; --verbose says what ran
utrain ld_ok --verbose -o "$t/ok.ckpt"
check "correct layer: train" 0 $?
has "correct layer: probed" "$t/err" \
    "flowkit train: verify: ld_ok#0 ($t/ld_ok.flow:3:5, $PLUG): round trip error "
has "correct layer: FD" "$t/err" \
    "on 8 rows; log-det vs FD Jacobian error "
has "correct layer: count" "$t/err" \
    "flowkit train: verify: 1 layer probed in "
# the probe leaves no trace: same checkpoint as without it
utrain ld_ok --no-verify-plugins -o "$t/ok2.ckpt"
cmp -s "$t/ok.ckpt" "$t/ok2.ckpt"; check "correct layer: same bits" 0 $?
# a resumed run is probed too
utrain ld_flip --no-verify-plugins --steps 2 -o "$t/half.ckpt"
utrain ld_flip --resume "$t/half.ckpt" -o "$t/resumed.ckpt"
check "resume: probed" 1 $?
absent "resume: no checkpoint" "$t/resumed.ckpt"

# both flags: a usage error
utrain ld_ok --verify-plugins --no-verify-plugins -o "$t/x.ckpt"
check "both flags" 2 $?
has "both flags: message" "$t/err" \
    "give --verify-plugins or --no-verify-plugins, not both"

# flowkit's own layers: not probed by default, all pass when asked, and
# the checkpoint is the same bits either way
"$F" data 8gaussians -n 300 --seed 1 --labels -o "$t/g.csv" 2>"$t/err"
"$F" data gmm --dim 8 --components 4 -n 300 --seed 1 -o "$t/m8.csv" 2>"$t/err"
"$F" data gmm --dim 4 --components 4 -n 300 --seed 1 -o "$t/m4.csv" 2>"$t/err"
awk 'BEGIN { srand(3); print "x0,x1,x2,x3,x4,x5,c0,c1"
    for (i = 0; i < 300; i++) { for (j = 0; j < 6; j++)
        printf "%.4f,", 0.02 + 0.96 * rand(); printf "%.3f,%.3f\n", rand(), rand() } }' \
    >"$t/mixed.csv"
LAB=label0,label1,label2,label3,label4,label5,label6,label7
btrain() { name=$1; spec=$2; shift 2
    "$F" train "$spec" --steps 3 --batch 64 --verbose -o "$t/d.ckpt" "$@" \
        >"$t/out" 2>"$t/err"
    check "$name: default" 0 $?
    has "$name: not probed by default" "$t/err" "flowkit train: verify: 0 layers probed"
    "$F" train "$spec" --steps 3 --batch 64 --verbose --verify-plugins \
        -o "$t/v.ckpt" "$@" >"$t/out" 2>"$t/err"
    check "$name: --verify-plugins" 0 $?
    if grep -q "flowkit train: verify: [1-9][0-9]* layers\{0,1\} probed" "$t/err"
    then ok; else bad "$name: no layer probed"; cat "$t/err"; fi
    cmp -s "$t/d.ckpt" "$t/v.ckpt"; check "$name: same bits" 0 $?
}
btrain moons "$S/moons.flow" --data "$t/moons.csv"
btrain nice "$S/nice.flow" --data "$t/g.csv" --columns x0,x1
btrain nsf "$S/nsf_8gaussians.flow" --data "$t/g.csv" --columns x0,x1
btrain maf_gmm "$S/maf_gmm.flow" --data "$t/m8.csv"
btrain iaf "$S/iaf.flow" --data "$t/moons.csv"
btrain cond_maf "$S/cond_maf.flow" --data "$t/g.csv" --columns x0,x1 --context $LAB
btrain multiscale "$S/multiscale.flow" --data "$t/m4.csv"
btrain resflow "$S/resflow_moons.flow" --data "$t/moons.csv"
btrain ffjord "$S/ffjord_8gaussians.flow" --data "$t/g.csv" --columns x0,x1
btrain funnel_iaf "$S/funnel_iaf.flow" --data "$t/m4.csv"
# every bundled type: logit, actnorm, spline coupling, linear, maf, iaf,
# batchnorm, permute, additive coupling
btrain mixed "$top_srcdir/tests/specs/good/plugins_mixed.flow" \
    --data "$t/mixed.csv" --columns x0,x1,x2,x3,x4,x5 --context c0,c1
has "mixed: batchnorm probed" "$t/err" "flowkit train: verify: batchnorm#9 ("
has "mixed: 12 layers" "$t/err" "flowkit train: verify: 12 layers probed"

finish cli_verify
