#!/bin/sh
# cli.sh - the flowkit command's exit codes and output (run by make check
# with FLOWKIT, FLOW_PLUGIN_PATH and FLOW_TEST_PLUGINS set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

"$FLOWKIT" --version >"$t/out" 2>&1; check version 0 $?
has version "$t/out" "flowkit "
has version "$t/out" "plugin ABI 1"

"$FLOWKIT" --help >"$t/out" 2>&1; check help 0 $?
has help "$t/out" "usage: flowkit COMMAND"

"$FLOWKIT" >"$t/out" 2>&1; check no-args 2 $?
"$FLOWKIT" frobnicate >"$t/out" 2>&1; check unknown 2 $?
has unknown "$t/out" "unknown command 'frobnicate'"

"$FLOWKIT" plugins >"$t/out" 2>&1; check plugins 0 $?
has plugins "$t/out" "permute.so"
has plugins "$t/out" "permute        fixed permutation of dimensions"

"$FLOWKIT" plugins --json >"$t/out" 2>&1; check plugins-json 0 $?
has plugins-json "$t/out" '"name": "permute"'

"$FLOWKIT" plugins --bogus >"$t/out" 2>&1; check plugins-usage 2 $?

mkdir "$t/bad"
cp "$FLOW_TEST_PLUGINS/badabi.so" "$t/bad/zz.so"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/bad" "$FLOWKIT" plugins >"$t/out" 2>&1
check plugins-bad 1 $?
has plugins-bad "$t/out" "$t/bad/zz.so: ABI version mismatch: expected 1, got 2"

# A MAF checkpoint of format 2 (tests/data/made_v2.ckpt: MADE hidden units
# in the masks' cyclic order, written by the float32 flowkit of that
# format) is converted on load (docs/formats.md, "Inside params/<label>"):
# the log-densities, samples and a resumed run are those that flowkit
# computed (tests/data/made_v2_*.csv), within 1e-5 relative (they agree
# to the bit today; float32 rounding of a changed summation order would
# stay far below).  The same file relabelled as format 3 (no conversion)
# is off by more than 0.01 somewhere: the tolerance can tell.
if "$FLOWKIT" --version | grep -q float32; then
    D=$top_srcdir/tests/data
    "$FLOWKIT" data gmm --dim 5 --components 3 -n 400 --seed 2 \
        -o "$t/g5.csv" >/dev/null 2>&1; check "made v2: data" 0 $?
    head -n 21 "$t/g5.csv" >"$t/g5x.csv"
    # close NAME EXPECTED_CSV COLUMN GOT_CSV: column COLUMN of the first
    # within 1e-5 relative of every number of the second, row by row
    close() {
        if paste -d, "$2" "$4" | awk -F, -v c="$3" -v w="$(head -n 1 "$2" |
            awk -F, '{ print NF }')" 'NR > 1 { for (j = 1; j <= NF - w;
            j++) { e = c ? $c : $j; g = $(w + j); d = e - g; if (d < 0)
            d = -d; a = e < 0 ? -e : e; if (d > 1e-5 * (1 + a)) exit 1;
            n++ } } END { exit n == 0 }'; then ok; else
            bad "$1: differs from $2:"; paste -d, "$2" "$4" | head -n 8
        fi
    }
    "$FLOWKIT" logprob "$D/made_v2.ckpt" --data "$t/g5x.csv" \
        -o "$t/v2lp.csv" 2>"$t/err"; check "made v2: logprob" 0 $?
    close "made v2: log-densities" "$D/made_v2_logprob.csv" 1 "$t/v2lp.csv"
    "$FLOWKIT" sample "$D/made_v2.ckpt" -n 5 --seed 3 --with-logprob \
        -o "$t/v2s.csv" 2>"$t/err"; check "made v2: sample" 0 $?
    close "made v2: samples" "$D/made_v2_sample.csv" 0 "$t/v2s.csv"
    "$FLOWKIT" train "$D/made_v2.flow" --data "$t/g5.csv" --resume \
        "$D/made_v2.ckpt" --steps 50 --batch 64 --lr 1e-2 --seed 4 \
        -o "$t/v2r.ckpt" >/dev/null 2>"$t/err"
    check "made v2: resumed (Adam's moments converted too)" 0 $?
    "$FLOWKIT" logprob "$t/v2r.ckpt" --data "$t/g5x.csv" \
        -o "$t/v2rlp.csv" 2>"$t/err"; check "made v2: resumed logprob" 0 $?
    close "made v2: resumed log-densities" "$D/made_v2_logprob.csv" 2 \
        "$t/v2rlp.csv"
    # a seed gives the network it gave in format 2 (nn_made_net_init): the
    # fixture's own training run, from scratch, ends where it ended
    "$FLOWKIT" train "$D/made_v2.flow" --data "$t/g5.csv" --steps 40 \
        --batch 64 --lr 1e-2 --seed 4 -o "$t/v2t.ckpt" >/dev/null 2>"$t/err"
    check "made v2: trained again" 0 $?
    "$FLOWKIT" logprob "$t/v2t.ckpt" --data "$t/g5x.csv" \
        -o "$t/v2tlp.csv" 2>"$t/err"; check "made v2: retrained logprob" 0 $?
    close "made v2: trained again from the same seed" \
        "$D/made_v2_logprob.csv" 1 "$t/v2tlp.csv"
    "$FLOWKIT" info "$t/v2r.ckpt" >"$t/out" 2>&1
    has "made v2: rewritten as format 3" "$t/out" "format_version 3"
    "$top_builddir/tests/ckpt_edit" --rehash "$D/made_v2.ckpt" \
        "$t/v2as3.ckpt" '"format_version":"2"' '"format_version":"3"'
    check "made v2: relabelled" 0 $?
    "$FLOWKIT" logprob "$t/v2as3.ckpt" --data "$t/g5x.csv" \
        -o "$t/v2x.csv" 2>"$t/err"; check "made v2 as 3: logprob" 0 $?
    paste -d, "$D/made_v2_logprob.csv" "$t/v2x.csv" | awk -F, 'NR > 1 {
        d = $1 - $3; if (d < 0) d = -d; if (d > m) m = d } END {
        print m }' >"$t/maxd"
    truth "made v2 as 3: unconverted differs ($(cat "$t/maxd"))" \
        "$(cat "$t/maxd") > 0.01"
fi

finish cli
