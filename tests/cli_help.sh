#!/bin/sh
# cli_help.sh - help and suggestions of flowkit and flowc: "did you mean"
# for commands, options and layer types, `flowkit help [CMD]`, the layer
# attribute reference, `flowkit --version`'s plugin search path (run by
# make check with FLOWKIT, FLOWC and FLOW_PLUGIN_PATH set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# usage_msg NAME EXPECTED_LINE CMD...: CMD exits 2 and its stderr is
# exactly EXPECTED_LINE, with nothing on standard output
usage_msg() {
    name=$1 want=$2
    shift 2
    "$@" >"$t/out" 2>"$t/err"
    check "$name" 2 $?
    same "$name-msg" "$want" "$(cat "$t/err")"
    same "$name-stdout" "" "$(cat "$t/out")"
}

# --- unknown commands --------------------------------------------------
usage_msg cmd-trian "flowkit: unknown command 'trian'; did you mean 'train'? (try 'flowkit help')" \
    "$FLOWKIT" trian
usage_msg cmd-smaple "flowkit: unknown command 'smaple'; did you mean 'sample'? (try 'flowkit help')" \
    "$FLOWKIT" smaple
usage_msg cmd-far "flowkit: unknown command 'frobnicate' (try 'flowkit help')" \
    "$FLOWKIT" frobnicate
usage_msg top-option "flowkit: unknown option '--verison'; did you mean '--version'? (try 'flowkit help')" \
    "$FLOWKIT" --verison

# --- unknown options, every subcommand ----------------------------------
usage_msg train-epoch "flowkit train: unknown option '--epoch'; did you mean '--epochs'? (try 'flowkit train --help')" \
    "$FLOWKIT" train --epoch 2
usage_msg train-underscore "flowkit train: unknown option '--valid_fraction'; did you mean '--valid-fraction'? (try 'flowkit train --help')" \
    "$FLOWKIT" train --valid_fraction 0.1
usage_msg train-inline "flowkit train: unknown option '--epoch'; did you mean '--epochs'? (try 'flowkit train --help')" \
    "$FLOWKIT" train --epoch=2
usage_msg sample-logprob "flowkit sample: unknown option '--logprob'; did you mean '--with-logprob'? (try 'flowkit sample --help')" \
    "$FLOWKIT" sample --logprob
# eval has no --with-logprob: sample's options are not eval's
usage_msg eval-logprob "flowkit eval: unknown option '--logprob' (try 'flowkit eval --help')" \
    "$FLOWKIT" eval --logprob
usage_msg logprob-colums "flowkit logprob: unknown option '--colums'; did you mean '--columns'? (try 'flowkit logprob --help')" \
    "$FLOWKIT" logprob --colums a
usage_msg encode-batch "flowkit encode: unknown option '--bacth'; did you mean '--batch'? (try 'flowkit encode --help')" \
    "$FLOWKIT" encode --bacth 8
usage_msg decode-format "flowkit decode: unknown option '--fromat'; did you mean '--format'? (try 'flowkit decode --help')" \
    "$FLOWKIT" decode --fromat csv
usage_msg info-json "flowkit info: unknown option '--jsn'; did you mean '--json'? (try 'flowkit info --help')" \
    "$FLOWKIT" info --jsn
usage_msg fit-steps "flowkit fit: unknown option '--step'; did you mean '--steps'? (try 'flowkit fit --help')" \
    "$FLOWKIT" fit --step 10
usage_msg check-seed "flowkit check: unknown option '--seeds'; did you mean '--seed'? (try 'flowkit check --help')" \
    "$FLOWKIT" check --seeds 1
usage_msg check-far "flowkit check: unknown option '--frob' (try 'flowkit check --help')" \
    "$FLOWKIT" check --frob
usage_msg compare-threads "flowkit compare: unknown option '--thread'; did you mean '--threads'? (try 'flowkit compare --help')" \
    "$FLOWKIT" compare --thread 2
usage_msg hdr-level "flowkit hdr: unknown option '--levle'; did you mean '--level'? (try 'flowkit hdr --help')" \
    "$FLOWKIT" hdr --levle 0.9
usage_msg data-labels "flowkit data: unknown option '--labls'; did you mean '--labels'? (try 'flowkit data --help')" \
    "$FLOWKIT" data --labls
usage_msg plot-samples "flowkit plot density: unknown option '--sampels'; did you mean '--samples'? (try 'flowkit plot density --help')" \
    "$FLOWKIT" plot density --sampels 3
# an option of another kind: suggested among the kind's own options
usage_msg plot-kind-option "flowkit plot pairs: unknown option '--grid' (try 'flowkit plot pairs --help')" \
    "$FLOWKIT" plot pairs --grid 3
usage_msg plot-kind "flowkit plot: unknown kind 'densty'; did you mean 'density'? (kinds: density, pairs, history, images; try 'flowkit plot --help')" \
    "$FLOWKIT" plot densty
usage_msg plugins-json "flowkit plugins: unknown option '--jsno'; did you mean '--json'? (try 'flowkit plugins --help')" \
    "$FLOWKIT" plugins --jsno
usage_msg version-opt "flowkit version: unknown option '--bogus' (try 'flowkit version --help')" \
    "$FLOWKIT" version --bogus
# one-letter options get no suggestion (-x is as near -o as -n)
usage_msg short-opt "flowkit sample: unknown option '-x' (try 'flowkit sample --help')" \
    "$FLOWKIT" sample -x

# --- flowc's options ----------------------------------------------------
"$FLOWC" --werorr x.flow >"$t/out" 2>"$t/err"; check flowc-werror 2 $?
has flowc-werror-msg "$t/err" "flowc: unknown option '--werorr'; did you mean '--werror'?"
"$FLOWC" --layer coupling >"$t/out" 2>"$t/err"; check flowc-layer 2 $?
has flowc-layer-msg "$t/err" "flowc: unknown option '--layer'; did you mean '--layer=TYPE'?"
"$FLOWC" --emit x.flow >"$t/out" 2>"$t/err"; check flowc-emit 2 $?
has flowc-emit-msg "$t/err" "did you mean '--emit=json|dot|c'?"
"$FLOWC" --diagnostic=json x.flow >"$t/out" 2>"$t/err"
check flowc-diag 2 $?
has flowc-diag-msg "$t/err" "did you mean '--diagnostics=text|json'?"
"$FLOWC" --frobnicate x.flow >"$t/out" 2>"$t/err"; check flowc-far 2 $?
same flowc-far-msg "flowc: unknown option '--frobnicate'
(see flowc --help)" "$(cat "$t/err")"
"$FLOWC" --layer=couplng >"$t/out" 2>"$t/err"; check flowc-type 1 $?
has flowc-type-msg "$t/err" "flowc: no layer type 'couplng' in the loaded plugins; did you mean 'coupling'? (see flowc --layers)"

# --- flowkit help --------------------------------------------------------
"$FLOWKIT" help >"$t/help" 2>"$t/err"; check help 0 $?
"$FLOWKIT" --help >"$t/help2" 2>&1; check help-opt 0 $?
same_file help-same "$t/help" "$t/help2"
# every command, one line each, in the list
for c in train fit eval logprob sample encode decode info compare hdr \
         check plugins layers data help version; do
    n=$(grep -c "^  $c  *[a-z]" "$t/help")
    same "help-lists-$c" 1 "$n"
    # help CMD prints exactly what CMD --help prints, exit 0 both
    "$FLOWKIT" help "$c" >"$t/a" 2>&1; check "help-$c" 0 $?
    "$FLOWKIT" "$c" --help >"$t/b" 2>&1; check "help-opt-$c" 0 $?
    same_file "help-$c-same" "$t/b" "$t/a"
done
has help-train-usage "$t/help" "'flowkit help COMMAND'"
"$FLOWKIT" help train >"$t/a" 2>&1
has help-train-own "$t/a" "usage: flowkit train"
usage_msg help-nosuch "flowkit: unknown command 'nosuch' (try 'flowkit help')" \
    "$FLOWKIT" help nosuch
usage_msg help-trian "flowkit: unknown command 'trian'; did you mean 'train'? (try 'flowkit help')" \
    "$FLOWKIT" help trian
usage_msg help-two "flowkit help: one command at a time (got 'eval' after 'train')" \
    "$FLOWKIT" help train eval

# --- a layer type's attribute reference ---------------------------------
"$FLOWC" --layer=coupling >"$t/flowc" 2>&1; check flowc-ref 0 $?
for c in "plugins coupling" "layers coupling"; do
    # shellcheck disable=SC2086
    "$FLOWKIT" $c >"$t/ref" 2>&1; check "ref-$c" 0 $?
    same_file "ref-$c-as-flowc" "$t/flowc" "$t/ref"
done
has ref-attrs "$t/ref" "attributes:"
has ref-transformer "$t/ref" "transformer    variant, default affine"
usage_msg ref-near "flowkit plugins: no layer type 'couplng' in the loaded plugins; did you mean 'coupling'? (try 'flowkit layers')" \
    "$FLOWKIT" plugins couplng
usage_msg ref-near-layers "flowkit layers: no layer type 'actnrom' in the loaded plugins; did you mean 'actnorm'? (try 'flowkit layers')" \
    "$FLOWKIT" layers actnrom
usage_msg ref-far "flowkit plugins: no layer type 'zzzzzz' in the loaded plugins (try 'flowkit layers')" \
    "$FLOWKIT" plugins zzzzzz
usage_msg ref-json "flowkit plugins: --json lists the plugins: give no TYPE (try 'flowkit plugins --help')" \
    "$FLOWKIT" plugins --json coupling
"$FLOWKIT" layers >"$t/out" 2>&1; check layers 0 $?
"$FLOWC" --layers >"$t/flowc" 2>&1
same_file layers-as-flowc "$t/flowc" "$t/out"

# --- flowkit --version: the plugin directory and search path --------------
"$FLOWKIT" --version >"$t/v" 2>"$t/err"; check version 0 $?
"$FLOWKIT" version >"$t/v2" 2>&1; check version-cmd 0 $?
same_file version-same "$t/v" "$t/v2"
dir=$(sed -n 's/^plugin directory: //p' "$t/v")
truth version-dir "\"$dir\" ~ /^\//" "$t/v"
same version-path "plugin search path:
  $FLOW_PLUGIN_PATH
  $dir" "$(sed -n '3,$p' "$t/v")"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:rel/dir::$t" "$FLOWKIT" --version \
    >"$t/v" 2>"$t/err"
check version-rel 0 $?
same version-rel-path "plugin search path:
  $FLOW_PLUGIN_PATH
  rel/dir (ignored: a relative path)
  $t
  $dir" "$(sed -n '3,$p' "$t/v")"
has version-rel-warn "$t/err" "FLOW_PLUGIN_PATH entry 'rel/dir' is a relative path: ignored"
env -u FLOW_PLUGIN_PATH "$FLOWKIT" --version >"$t/v" 2>&1
check version-unset 0 $?
same version-unset-path "plugin search path: (FLOW_PLUGIN_PATH not set)
  $dir" "$(sed -n '3,$p' "$t/v")"

finish cli_help
