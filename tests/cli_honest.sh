#!/bin/sh
# cli_honest.sh - declarations that can be honest (plugin ABI 1.5), through
# the command line: the layers of tests/plugins/honest.c (dense with an
# exact log-det, conditional elementwise, monotone elementwise) compile,
# pass `flowkit check` without flags, train, and show their class in
# `flowc --report`; their lying twins (liar.so) are refused with the
# plugin named and the same exit status however they are checked; logit
# declares its domain, which the compiler, the checker and the data reader
# use.  Run by make check with FLOWKIT, FLOWC, FLOW_PLUGIN_PATH,
# FLOW_TEST_PLUGINS and top_srcdir set.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
check_log=$t/err
liar="$FLOW_TEST_PLUGINS/liar.so"
# a search path with honest.so alone (tests/plugins also holds plugins
# that are broken on purpose)
mkdir "$t/hp"
ln -s "$FLOW_TEST_PLUGINS/honest.so" "$t/hp/honest.so"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/hp"
export FLOW_PLUGIN_PATH

# --- flowkit check without flags -----------------------------------------
for ty in householder_scale cond_affine mono; do
    "$FLOWKIT" check "$ty" >"$t/out" 2>"$t/err"; check "check-$ty" 0 $?
    has "check-$ty" "$t/out" "PASS: 1 layer, "
done
"$FLOWKIT" check cond_affine --context 3 --dim 4 >"$t/out" 2>"$t/err"
check check-cond-context 0 $?
has check-cond-context "$t/out" "honest.so): D = 4, K = 3"
has check-cond-context "$t/out" "PASS: 1 layer, "
"$FLOWKIT" check "$FLOW_TEST_PLUGINS/honest.so" --dim 5 --seed 7 >"$t/out" \
    2>"$t/err"
check check-plugin-file 0 $?
has check-plugin-file "$t/out" "PASS: 3 layers, "

# logit checks inside its declared domain, edge rows included
"$FLOWKIT" check logit --dim 4 >"$t/out" 2>"$t/err"; check logit-no-flags 0 $?
has logit-no-flags "$t/out" "7 rows: 4 random, 3 at the domain's edges"
has logit-no-flags "$t/out" "PASS: 1 layer, 22 checks, 0 failed"
"$FLOWKIT" check logit --attr alpha=0 >"$t/out" 2>"$t/err"
check logit-open 0 $?
has logit-open "$t/out" "density integrates to 1"

# --- compile, report, train -----------------------------------------------
cat >"$t/hh.flow" <<'EOF'
flow hh {
  input x : real[2];
  householder_scale;
  householder_scale;
  output z ~ normal;
}
EOF
cat >"$t/mono.flow" <<'EOF'
flow mono {
  input x : real[2];
  mono;
  householder_scale;
  mono;
  output z ~ normal;
}
EOF
cat >"$t/cond.flow" <<'EOF'
flow cond {
  input x : real[2];
  context c : real[8];
  cond_affine given c;
  mono;
  output z ~ normal;
}
EOF
"$FLOWC" --report "$t/hh.flow" >"$t/out" 2>"$t/err"; check report-hh 0 $?
has report-hh "$t/out" "   0  householder_scale#0 dense-exact            2          4  Householder reflection times exp(s) > 0; log-det exact, closed form by the layer"
"$FLOWC" --report "$t/cond.flow" >"$t/out" 2>"$t/err"; check report-cond 0 $?
has report-cond "$t/out" "   0  cond_affine#0      diagonal               2         36  positive scale exp(a(c)); given context"
has report-cond "$t/out" "   1  mono#1             diagonal               2          2  1 + a sech^2 x > 0"
# the layer column fits the longest label
printf 'flow long {\n  input x : real[2];\n  repeat 11 as i { mono; }\n  householder_scale;\n  output z ~ normal;\n}\n' >"$t/long.flow"
"$FLOWC" --report "$t/long.flow" >"$t/out" 2>"$t/err"; check report-long 0 $?
has report-long "$t/out" "   #  layer                jacobian "
has report-long "$t/out" "  11  householder_scale#11 dense-exact "
has report-long "$t/out" "  10  mono#10              diagonal "

"$FLOWKIT" data 8gaussians --labels -n 1200 --seed 1 -o "$t/g.csv"
ctx=label0,label1,label2,label3,label4,label5,label6,label7
# train NAME SPEC [flags]: trains 8 epochs; the loss of the last epoch is
# below that of the first
train() {
    name=$1 spec=$2
    shift 2
    "$FLOWKIT" train "$spec" --data "$t/g.csv" --columns x0,x1 --epochs 8 \
        --batch 100 --lr 0.02 --seed 3 -o "$t/$name.ckpt" "$@" \
        >"$t/out" 2>"$t/err"
    check "train-$name" 0 $?
    same "train-$name-loss" decreased "$(awk '/^epoch / {
        for (i = 1; i < NF; i++) if ($i == "loss") l[++n] = $(i + 1) }
        END { print (n >= 2 && l[n] < l[1] - 0.1) ? "decreased" : l[1] " -> " l[n] }' "$t/err")"
}
train hh "$t/hh.flow"
train mono "$t/mono.flow"
train cond "$t/cond.flow" --context "$ctx"
"$FLOWKIT" eval "$t/cond.ckpt" --data "$t/g.csv" --columns x0,x1 \
    --context "$ctx" >"$t/out" 2>"$t/err"
check eval-cond 0 $?
has eval-cond "$t/out" "nats per sample (n = 1200)"

# --- lies refused ---------------------------------------------------------
printf 'flow f {\n  input x : real[3];\n  householder_scale(declare = triangular);\n  output z ~ normal;\n}\n' >"$t/lie1.flow"
"$FLOWC" --check "$t/lie1.flow" >"$t/out" 2>"$t/err"; check lie-dense 1 $?
has lie-dense "$t/err" "error[F0506]: householder_scale#0: dense dependencies with a triangular Jacobian class; dense dependencies need the dense-exact, dense-LU, residual or ODE class"
printf 'flow f {\n  input x : real[3];\n  householder_scale(declare = dense_exact_monotone);\n  output z ~ normal;\n}\n' >"$t/lie2.flow"
"$FLOWC" --check "$t/lie2.flow" >"$t/out" 2>"$t/err"; check lie-cert 1 $?
has lie-cert "$t/err" "error[F0506]: householder_scale#0: a dense-exact Jacobian class with a monotone certificate"
printf 'flow f {\n  input x : real[3];\n  context c : real[2];\n  cond_affine(declare_context = false) given c;\n  output z ~ normal;\n}\n' >"$t/lie3.flow"
"$FLOWC" --check "$t/lie3.flow" >"$t/out" 2>"$t/err"; check lie-context 1 $?
has lie-context "$t/err" "error[F0507]: cond_affine#0: context given to a layer that does not consume one"

# a refused declaration is the plugin's fault, exit 1, whether the type is
# named or found in the plugin file; options the compiler refuses are
# usage, exit 2, both ways too
FLOW_PLUGIN_PATH=${FLOW_PLUGIN_PATH%:*}
want="$liar: layer 'liar_householder_scale' declares what the compiler refuses (F0506 above): a fault of the plugin, not of the options"
"$FLOWKIT" check liar_householder_scale --plugin "$liar" >"$t/out" 2>"$t/err"
check liar-type 1 $?
has liar-type "$t/err" "flowkit check: $want"
"$FLOWKIT" check "$liar" >"$t/out" 2>"$t/err"; check liar-file 1 $?
has liar-file "$t/err" "flowkit check: $want"
has liar-file "$t/out" "liar_mono ($liar): D = 2, K = 0"
"$FLOWKIT" check liar_cond_affine --plugin "$liar" --context 2 >"$t/out" \
    2>"$t/err"
check liar-context 1 $?
has liar-context "$t/err" "liar.so: layer 'liar_cond_affine' declares what the compiler refuses (F0507 above)"
"$FLOWKIT" check liar_mono --plugin "$liar" --attr nosuch=1 >"$t/out" 2>"$t/err"
check liar-options-type 2 $?
has liar-options-type "$t/err" "flowkit check: liar_mono: the attributes or options are not valid for this layer type"
"$FLOWKIT" check "$liar" --attr nosuch=1 >"$t/out" 2>"$t/err"
check liar-options-file 2 $?

# --- the domain in the compiler and the data reader ------------------------
cat >"$t/unit.flow" <<'EOF'
flow unit {
    input x : real[2];
    permute(order = reverse);
    logit;
    mono;
    output z ~ normal;
}
EOF
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/hp"
"$FLOWC" --check "$t/unit.flow" >"$t/out" 2>"$t/err"; check domain-warn 0 $?
has domain-warn "$t/err" "warning[F0904]: logit#1 is defined only on [0, 1], but the input 'x' declares no bounds"
sed 's/real\[2\];/real[2] in [-0.5, 1];/' "$t/unit.flow" >"$t/wide.flow"
"$FLOWC" --check "$t/wide.flow" >"$t/out" 2>"$t/err"; check domain-bounds 1 $?
has domain-bounds "$t/err" "wide.flow:4:5: error[F0510]: logit#1: the input 'x' is declared in [-0.5, 1] (line 2), not inside the layer's domain [0, 1]"
awk 'BEGIN { print "a,b"; for (i = 1; i <= 400; i++)
    printf "%.4f,%.4f\n", 0.05 + 0.9 * ((i * 37) % 101) / 101,
                          0.05 + 0.9 * ((i * 53) % 97) / 97 }' >"$t/unit.csv"
awk -F, 'NR == 201 { $1 = -0.25 } { print }' OFS=, "$t/unit.csv" >"$t/out.csv"
want="out.csv:201:1: value -0.25 is outside the domain [0, 1] of layer logit#1 ($t/unit.flow:4:5, "
"$FLOWKIT" train "$t/unit.flow" --data "$t/out.csv" --steps 3 -o "$t/x.ckpt" \
    >"$t/out" 2>"$t/err"
check domain-train 1 $?
has domain-train "$t/err" "flowkit train: $t/$want"
absent domain-train-no-ckpt "$t/x.ckpt"
"$FLOWKIT" train "$t/unit.flow" --data "$t/unit.csv" --steps 3 -o "$t/u.ckpt" \
    >"$t/out" 2>"$t/err"
check domain-clean-train 0 $?
"$FLOWKIT" eval "$t/u.ckpt" --data "$t/out.csv" >"$t/out" 2>"$t/err"
check domain-eval 1 $?
has domain-eval "$t/err" "flowkit eval: $t/out.csv:201:1: value -0.25 is outside the domain [0, 1] of layer logit#1"
"$FLOWKIT" logprob "$t/u.ckpt" --data "$t/out.csv" -o "$t/lp.csv" >"$t/out" \
    2>"$t/err"
check domain-logprob 1 $?
has domain-logprob "$t/err" "value -0.25 is outside the domain [0, 1] of layer logit#1"
absent domain-logprob-no-output "$t/lp.csv"

finish cli_honest
