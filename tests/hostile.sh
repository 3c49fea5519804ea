#!/bin/sh
# hostile.sh - hostile inputs and numerical faults end to end (issue 9;
# docs/reliability.md maps each case to the issue): broken checkpoints,
# specs, data files and plugins make every command exit 1 with a message
# that names the file and the place, and never leave an output file (nor
# a temporary one) behind.  Also: a layer that fails in the middle of a
# batch is named with its spec position and plugin file; non-finite steps
# are skipped and counted, and 10 in a row stop training without a
# checkpoint; solver and fixed-point budgets are errors.
# Run by make check with FLOWKIT, FLOW_PLUGIN_PATH, FLOW_SPEC_PLUGINS,
# FLOW_FAULT_PLUGINS, top_srcdir and top_builddir set.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
EDIT=$top_builddir/tests/ckpt_edit
O=$t/out                        # every output goes here; must stay empty
mkdir "$O"

# fails NAME TEXT CMD...: exit 1, TEXT on stderr, nothing left in $O
fails() { fails_rc 1 "$@"; }
# fails_rc CODE NAME TEXT CMD...: the same with exit status CODE
fails_rc() {
    want=$1; name=$2; text=$3; shift 3
    "$@" >"$t/stdout" 2>"$t/err"
    check "$name" "$want" $?
    has "$name" "$t/err" "$text"
    if [ -z "$(ls -A "$O")" ]; then ok; else
        bad "$name: left behind: $(ls -A "$O")"
        rm -f "$O"/* "$O"/.[!.]*
    fi
}

# flip FILE OFFSET: xor one byte with 0x20
flip() {
    v=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
    # shellcheck disable=SC2059
    printf "\\$(printf %o $((v ^ 32)))" | dd of="$1" bs=1 seek="$2" \
        conv=notrunc 2>/dev/null
}

# npy FILE DESCR FORTRAN SHAPE BODY_BYTES: an NPY 1.0 file, zero body
npy() {
    dict="{'descr': '$2', 'fortran_order': $3, 'shape': $4, }"
    hl=$(( (10 + ${#dict} + 1 + 63) / 64 * 64 - 10 ))
    {
        # shellcheck disable=SC2059
        printf "\\223NUMPY\\001\\000\\$(printf %o $((hl % 256)))\\$(printf %o $((hl / 256)))"
        printf '%s%*s\n' "$dict" $((hl - ${#dict} - 1)) ""
        head -c "$5" /dev/zero
    } >"$1"
}

"$F" data moons -n 300 --seed 1 -o "$t/tr.csv"
"$F" data moons -n 100 --seed 2 -o "$t/te.csv"
cat >"$t/small.flow" <<'EOF'
flow small {
    input x : real[2];
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o "$t/a.ckpt" 2>/dev/null
check base-checkpoint 0 $?
"$F" encode "$t/a.ckpt" --data "$t/te.csv" -o "$t/z.csv"
check base-encode 0 $?

# --------------------------------------------------------- checkpoints
A=$t/a.ckpt
size=$(wc -c <"$A" | tr -d ' ')
hlen=$(od -An -tu4 -N4 "$A" | tr -d ' ')
for cut in 4 $((8 + hlen / 2)) $((size - 1)); do
    head -c $cut "$A" >"$t/cut.ckpt"
    case $cut in
    4) want="cut.ckpt: truncated checkpoint (4 bytes)" ;;
    $((size - 1))) want="beyond the data section" ;;
    *) want="cut.ckpt: truncated checkpoint: header length $hlen but only" ;;
    esac
    fails "truncated at $cut: sample" "$want" \
        "$F" sample "$t/cut.ckpt" -n 5 -o "$O/s.csv"
done
fails "truncated: logprob" "cut.ckpt: " \
    "$F" logprob "$t/cut.ckpt" --data "$t/te.csv" -o "$O/lp.csv"
fails "truncated: train --resume" "cut.ckpt: " \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 5 \
    --resume "$t/cut.ckpt" -o "$O/r.ckpt"
# one flipped byte: in the header (its start, the spec), its padding, the
# data
inspec=$(( $(grep -abo '"spec":"' "$A" | head -n 1 | cut -d: -f1) + 10 ))
for pos in 8 $inspec $((8 + hlen - 1)) $((8 + hlen)) \
           $((8 + hlen + (size - 8 - hlen) / 2)) $((size - 1)); do
    cp "$A" "$t/flip.ckpt"
    flip "$t/flip.ckpt" $pos
    if [ $pos -lt $((8 + hlen)) ]; then
        want="flip.ckpt: header checksum"  # mismatch, or the stored one broken
    else
        want="flip.ckpt: data checksum mismatch"
    fi
    fails "byte $pos flipped: sample" "$want" \
        "$F" sample "$t/flip.ckpt" -n 5 -o "$O/s.csv"
done
fails "flipped: encode" "flip.ckpt: data checksum mismatch" \
    "$F" encode "$t/flip.ckpt" --data "$t/te.csv" -o "$O/z.csv"
fails "flipped: eval" "flip.ckpt: data checksum mismatch" \
    "$F" eval "$t/flip.ckpt" --data "$t/te.csv"
# a flipped bit in the header's length field
cp "$A" "$t/flip.ckpt"
flip "$t/flip.ckpt" 0
fails "length byte flipped: decode" "flip.ckpt: " \
    "$F" decode "$t/flip.ckpt" --data "$t/z.csv" -o "$O/x.csv"
# another spec's checkpoint for --resume
sed 's/hidden = \[8\]/hidden = [9]/' "$t/small.flow" >"$t/other.flow"
fails "other spec: train --resume" "checkpoint was made by a different spec" \
    "$F" train "$t/other.flow" --data "$t/tr.csv" --steps 5 --resume "$A" \
    -o "$O/r.ckpt"
# other precision, newer format, huge tensors: consistent checksums
if "$F" --version | grep -q float64; then mine=float64 other=float32
else mine=float32 other=float64; fi
"$EDIT" "$A" "$t/prec.ckpt" "\"precision\":\"$mine\"" "\"precision\":\"$other\""
fails "other precision: sample" "prec.ckpt: checkpoint precision is $other but this flowkit computes in $mine" \
    "$F" sample "$t/prec.ckpt" -n 5 -o "$O/s.csv"
fails "other precision: train --resume" "prec.ckpt: checkpoint precision is $other" \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 5 \
    --resume "$t/prec.ckpt" -o "$O/r.ckpt"
"$EDIT" "$A" "$t/ver.ckpt" '"format_version":"3"' '"format_version":"4"'
fails "newer format: logprob" "ver.ckpt: checkpoint format version 4 is newer than this flowkit supports (3): upgrade flowkit" \
    "$F" logprob "$t/ver.ckpt" --data "$t/te.csv" -o "$O/lp.csv"
shape=$(head -c $((8 + hlen)) "$A" | grep -ao '"params/coupling#0":{"dtype":"F[0-9]*","shape":\[[0-9]*\]' \
        | sed 's/.*"shape"://')
"$EDIT" "$A" "$t/huge.ckpt" "\"shape\":$shape" '"shape":[4294967296,4294967296]'
fails "huge tensor shape: sample" "huge.ckpt: tensor 'params/coupling#0': shape too large" \
    "$F" sample "$t/huge.ckpt" -n 5 -o "$O/s.csv"
"$EDIT" "$A" "$t/huge2.ckpt" "\"shape\":$shape" '"shape":[1000000000000]'
fails "huge tensor: sample" "huge2.ckpt: tensor 'params/coupling#0': data_offsets" \
    "$F" sample "$t/huge2.ckpt" -n 5 -o "$O/s.csv"
# a header length of 2^40
printf '\000\000\000\000\000\001\000\000{}' >"$t/hlen.ckpt"
fails "huge header: sample" "hlen.ckpt: header length 1099511627776 exceeds the limit" \
    "$F" sample "$t/hlen.ckpt" -n 5 -o "$O/s.csv"
# the edit itself keeps a checkpoint valid (so the refusals above are
# about what the edits say)
"$EDIT" "$A" "$t/same.ckpt" '"step":"3"' '"step":"3"'
"$F" sample "$t/same.ckpt" -n 5 -o "$t/same.csv" 2>"$t/err"
check "unedited rewrite loads" 0 $?

# --------------------------------------------------------------- specs
SP="$FLOW_PLUGIN_PATH:$FLOW_SPEC_PLUGINS"
B=$top_srcdir/tests/specs/bad
for c in "huge_dim:2:18: error[F0400]" "huge_repeat:3:10: error[F0400]" \
         "deep_nesting:3:76: error[F0400]" "deep_blocks:64:15: error[F0400]" \
         "import_missing:1:8: error[F0010]" "binary:3:3: error[F0012]" \
         "invalid_utf8:5:33: error[F0012]"; do
    name=${c%%:*}
    FLOW_PLUGIN_PATH=$SP fails "spec $name: train" "$name.flow:${c#*:}" \
        "$F" train "$B/$name.flow" --data "$t/tr.csv" --steps 1 -o "$O/x.ckpt"
done
FLOW_PLUGIN_PATH=$SP fails "spec import_cycle: train" \
    "cycle_b.flow:2:8: error[F0011]: import cycle: " \
    "$F" train "$B/import_cycle.flow" --data "$t/tr.csv" --steps 1 -o "$O/x.ckpt"

# ---------------------------------------------------------------- data
printf 'x0,x1\n1,2\nnan,1\n' >"$t/nan.csv"
printf 'x0,x1\n1,inf\n' >"$t/inf.csv"
printf 'x0,x1\n1,2\n3\n' >"$t/ragged.csv"
: >"$t/empty.csv"
yes '1,' | head -n 5242880 | tr -d '\n' >"$t/long.csv"    # 10 MB, one line
echo 1 >>"$t/long.csv"
npy "$t/cplx.npy" '<c8' False '(2, 2)' 32
printf '\000\000\010\002\000\000\000\002\000\000\000\002\001' >"$t/cut.idx"
npy "$t/fortran.npy" '<f8' True '(2, 2)' 32
npy "$t/short.npy" '<f8' False '(2, 2)' 20
for c in "nan.csv:3:1: NaN or Inf value 'nan'" \
         "inf.csv:2:2: NaN or Inf value 'inf'" \
         "ragged.csv:3:2: ragged row: 1 columns where line 1 has 2" \
         "empty.csv: empty input" \
         "long.csv:1: line longer than 1048576 bytes" \
         "cplx.npy: NPY dtype '<c8' not supported (need float f4 or f8" \
         "cut.idx: IDX truncated: sample 0 of 2 ends after 1 of its 2 bytes" \
         "fortran.npy: NPY Fortran order not supported" \
         "short.npy: NPY truncated: data has 20 bytes, expected 32"; do
    file=${c%%:*}
    fails "$file: logprob" "$t/$c" \
        "$F" logprob "$A" --data "$t/$file" -o "$O/lp.csv"
    fails "$file: train" "$t/$c" \
        "$F" train "$t/small.flow" --data "$t/$file" --steps 1 -o "$O/x.ckpt"
done
fails "long line: encode" "long.csv:1: line longer than" \
    "$F" encode "$A" --data "$t/long.csv" -o "$O/z.csv"
fails "NaN: decode" "nan.csv:3:1: NaN or Inf value" \
    "$F" decode "$A" --data "$t/nan.csv" -o "$O/x.csv"
fails "NaN: --valid" "nan.csv:3:1: NaN or Inf value" \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --valid "$t/nan.csv" \
    --steps 1 -o "$O/x.ckpt"
fails "ragged: eval" "ragged.csv:3:2: ragged row" \
    "$F" eval "$A" --data "$t/ragged.csv"
# a failing command leaves an existing output file as it was
printf 'keep me\n' >"$t/keep.csv"
cp "$A" "$t/keep.ckpt"
"$F" logprob "$A" --data "$t/nan.csv" -o "$t/keep.csv" 2>/dev/null
check "existing output: logprob fails" 1 $?
"$F" train "$t/small.flow" --data "$t/ragged.csv" --steps 1 -o "$t/keep.ckpt" 2>/dev/null
check "existing output: train fails" 1 $?
printf 'keep me\n' >"$t/kept.csv"
same_file "existing output kept: logprob" "$t/kept.csv" "$t/keep.csv"
same_file "existing output kept: train" "$A" "$t/keep.ckpt"

# ------------------------------------------------------------- plugins
# fault_error fails on rows reaching `at` (tests/plugins/faulty.c): one
# row in the middle of 300 does; the message names the layer, its spec
# position and the plugin file (its row number counts within the layer's
# call: passes with no backward run at most 256 rows per call, docs/runtime.md)
FP="$FLOW_PLUGIN_PATH:$FLOW_FAULT_PLUGINS"
cat >"$t/faulty.flow" <<'EOF'
flow faulty {
    input x : real[2];
    coupling(mask = half, hidden = [8]);
    fault_error(at = 100);
    coupling(mask = parity(1), hidden = [8]);
    output z ~ normal;
}
EOF
awk -F, 'NR == 151 { $1 = 500 } { print }' OFS=, "$t/tr.csv" >"$t/spike.csv"
awk -F, 'NR == 31 { $1 = 500 } { print }' OFS=, "$t/z.csv" >"$t/zspike.csv"
FLOW_PLUGIN_PATH=$FP "$F" train "$t/faulty.flow" --data "$t/tr.csv" --steps 3 \
    --batch 64 -o "$t/f.ckpt" 2>/dev/null
check "faulty: clean training" 0 $?
# a model loaded from a checkpoint names its embedded spec "CKPT[SPEC]"
where="fault_error#1 ($t/f.ckpt[$t/faulty.flow]:4:5, $FLOW_FAULT_PLUGINS/faulty.so)"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: logprob" \
    "$where: forward: row 149 of " \
    "$F" logprob "$t/f.ckpt" --data "$t/spike.csv" -o "$O/lp.csv"
# with two threads the grid's second block (rows 256-299) is another
# call (on the second thread): its message comes out whole
awk -F, 'NR == 282 { $1 = 500 } { print }' OFS=, "$t/tr.csv" >"$t/spike2.csv"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: logprob --threads 2" \
    "$where: forward: row 24 of 44: value 500 reached the test fault threshold 100" \
    "$F" logprob "$t/f.ckpt" --data "$t/spike2.csv" --threads 2 -o "$O/lp.csv"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: eval" "$where: forward: row 149 of " \
    "$F" eval "$t/f.ckpt" --data "$t/spike.csv"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: encode" "$where: forward: row 149" \
    "$F" encode "$t/f.ckpt" --data "$t/spike.csv" -o "$O/z.csv"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: decode" "$where: inverse: row 29 of 100" \
    "$F" decode "$t/f.ckpt" --data "$t/zspike.csv" -o "$O/x.csv"
FLOW_PLUGIN_PATH=$FP fails "plugin error mid-batch: train" \
    "fault_error#1 ($t/faulty.flow:4:5, $FLOW_FAULT_PLUGINS/faulty.so): forward: row " \
    "$F" train "$t/faulty.flow" --data "$t/spike.csv" --steps 20 --batch 64 \
    -o "$O/x.ckpt"
# ... in an imported block: the file of the statement is named
mkdir "$t/lib"
printf 'block trap() { fault_error(at = 100); }\n' >"$t/lib/trap.flow"
printf 'import "lib/trap.flow";\nflow imp {\n    input x : real[2];\n    trap();\n    output z ~ normal;\n}\n' \
    >"$t/imp.flow"
FLOW_PLUGIN_PATH=$FP fails "plugin error in an imported block" \
    "($t/lib/trap.flow:1:16, $FLOW_FAULT_PLUGINS/faulty.so): forward: row 149" \
    "$F" train "$t/imp.flow" --data "$t/spike.csv" --steps 2 --batch 300 \
    -o "$O/x.ckpt"

# fault_prepare (FLOW_LAYER_CONCURRENT_PREPARE): the host runs several
# layers' prepare / finish_grad at once on its threads; the error named is
# the first failing layer in spec order, whichever thread ran it
cat >"$t/prep.flow" <<'EOF'
flow prep {
    input x : real[2];
    fault_prepare(at = 0);
    fault_prepare(at = 0);
    fault_prepare(at = -1);
    fault_prepare(at = -1);
    fault_prepare(at = -2);
    output z ~ normal;
}
EOF
for th in 1 2; do
    FLOW_PLUGIN_PATH=$FP fails "concurrent prepare fails, --threads $th" \
        "fault_prepare#2 ($t/prep.flow:5:5, $FLOW_FAULT_PLUGINS/faulty.so): prepare: test prepare failure" \
        "$F" train "$t/prep.flow" --data "$t/tr.csv" --steps 2 --batch 64 \
        --threads $th -o "$O/x.ckpt"
done
sed 's/at = -1/at = 0/' "$t/prep.flow" >"$t/fin.flow"
for th in 1 2; do
    FLOW_PLUGIN_PATH=$FP fails "concurrent finish_grad fails, --threads $th" \
        "fault_prepare#4 ($t/fin.flow:7:5, $FLOW_FAULT_PLUGINS/faulty.so): gradient: test finish_grad failure" \
        "$F" train "$t/fin.flow" --data "$t/tr.csv" --steps 2 --batch 64 \
        --threads $th -o "$O/x.ckpt"
done
sed 's/at = -2/at = 0/' "$t/fin.flow" >"$t/ok.flow"
FLOW_PLUGIN_PATH=$FP "$F" train "$t/ok.flow" --data "$t/tr.csv" --steps 2 \
    --batch 64 --threads 2 -o "$t/ok.ckpt" 2>"$t/err"
check "concurrent prepare, no failure" 0 $?

# ---------------------------------------------------- numerical faults
# fault_nan: a NaN log-det (so a NaN loss) on rows reaching `at`.  One
# row of 300 in batches of 64: one of the 5 batches of every epoch is
# skipped, so 12 steps take 3 epochs and skip 3.
sed 's/fault_error/fault_nan/' "$t/faulty.flow" >"$t/nan.flow"
FLOW_PLUGIN_PATH=$FP "$F" train "$t/nan.flow" --data "$t/spike.csv" --steps 12 \
    --batch 64 --json -o "$t/n.ckpt" >"$t/json" 2>"$t/err"
check "NaN steps skipped" 0 $?
has "NaN steps skipped" "$t/json" '"steps": 12, "epochs": 3,'
has "NaN steps skipped" "$t/json" '"skipped_steps": 3,'
FLOW_PLUGIN_PATH=$FP "$F" train "$t/nan.flow" --data "$t/spike.csv" --steps 12 \
    --batch 64 -o "$t/n2.ckpt" 2>"$t/err"
has "NaN steps reported" "$t/err" "3 steps skipped: non-finite loss or gradient"
cmp -s "$t/n.ckpt" "$t/n2.ckpt"; check "NaN steps: deterministic" 0 $?
# fault_nangrad: a finite loss, a NaN parameter gradient from the same
# row: the same 3 steps skipped, whether the trainer takes the gradient's
# norm (--clip) or sees its finiteness while adding the blocks (no clip)
sed 's/fault_error/fault_nangrad/' "$t/faulty.flow" >"$t/ng.flow"
for clip in "" "--clip 1"; do
    FLOW_PLUGIN_PATH=$FP "$F" train "$t/ng.flow" --data "$t/spike.csv" \
        --steps 12 --batch 64 --threads 2 $clip --json -o "$t/ng.ckpt" \
        >"$t/json" 2>"$t/err"
    check "NaN gradient steps skipped ${clip:-no clip}" 0 $?
    has "NaN gradient steps skipped ${clip:-no clip}" "$t/json" \
        '"skipped_steps": 3,'
    FLOW_PLUGIN_PATH=$FP "$F" logprob "$t/ng.ckpt" --data "$t/te.csv" \
        -o "$t/nglp.csv"
    check "NaN gradient steps: parameters finite ${clip:-no clip}" 0 $?
done
FLOW_PLUGIN_PATH=$FP "$F" logprob "$t/n.ckpt" --data "$t/te.csv" -o "$t/nlp.csv"
check "NaN steps: parameters finite" 0 $?
# every row: 10 non-finite steps in a row stop training (exit 3: the run
# diverged), no checkpoint.  The plugin probe would stop this layer before
# the first step (exit 1, tests/cli_verify.sh): off, to reach the guard.
sed 's/at = 100/at = -100/' "$t/nan.flow" >"$t/allnan.flow"
FLOW_PLUGIN_PATH=$FP fails_rc 3 "10 non-finite steps in a row" \
    "flowkit train: training diverged: 10 steps in a row had a non-finite loss or gradient (lower the learning rate or clip gradients); no checkpoint written" \
    "$F" train "$t/allnan.flow" --data "$t/tr.csv" --steps 50 --batch 64 \
    --no-verify-plugins -o "$O/x.ckpt"

# solver and fixed-point budgets are errors, not garbage
cat >"$t/ode.flow" <<'EOF'
flow o {
    input x : real[2];
    ode(hidden = [8], solver = dopri5(rtol = 1e-9, atol = 1e-9, max_steps = 2));
    output z ~ normal;
}
EOF
fails "dopri5 step budget: train" \
    "ode#0 ($t/ode.flow:3:5, ${FLOW_PLUGIN_PATH%%:*}/ode.so): forward: dopri5: no solution within max_steps = 2 step attempts" \
    "$F" train "$t/ode.flow" --data "$t/tr.csv" --steps 1 --batch 16 -o "$O/x.ckpt"
cat >"$t/res.flow" <<'EOF'
flow r {
    input x : real[2];
    residual(hidden = [16], coeff = 0.97, inverse_iters = 2);
    output z ~ normal;
}
EOF
"$F" train "$t/res.flow" --data "$t/tr.csv" --steps 2 --batch 64 \
    -o "$t/r.ckpt" 2>/dev/null
check "residual: training" 0 $?
fails "fixed-point budget: sample" \
    "residual#0 ($t/r.ckpt[$t/res.flow]:3:5, ${FLOW_PLUGIN_PATH%%:*}/residual.so): inverse: fixed-point inverse x = z - g(x) did not converge in 2 iterations" \
    "$F" sample "$t/r.ckpt" -n 50 -o "$O/s.csv"
fails "fixed-point budget: decode" "did not converge in 2 iterations" \
    "$F" decode "$t/r.ckpt" --data "$t/z.csv" -o "$O/x.csv"

# ======================================= self-contained checkpoints
# A checkpoint embeds every imported file and loads only from those
# copies; its spec is checked against spec_hash on every load, tensors by
# shape and name, random states and training state by value; columns are
# matched by name; diagnostics about the embedded spec name the
# checkpoint; a step that does not finish still yields to SIGINT/SIGTERM.
# lacks NAME FILE TEXT: FILE does not contain TEXT
lacks() { if grep -qF -- "$3" "$2"; then bad "$1: output has '$3':"
    cat "$2"; else ok; fi; }
SC=$t/sc
mkdir -p "$SC/lib" "$t/elsewhere"
printf 'const H = 8;\n' >"$SC/lib/c.flow"
printf 'import "lib/c.flow";\nflow s {\n    input x : real[2];\n    repeat 2 as i { coupling(mask = parity(i), hidden = [H]); }\n    output z ~ normal;\n}\n' \
    >"$SC/s.flow"
"$F" train "$SC/s.flow" --data "$t/tr.csv" --steps 6 --batch 64 \
    -o "$t/sc.ckpt" 2>/dev/null
check "imports: train" 0 $?
"$F" eval "$t/sc.ckpt" --data "$t/te.csv" >"$t/sc.ref" 2>&1
check "imports: eval" 0 $?
# the imported file edited, the spec's directory elsewhere, the files gone
printf 'const H = 16;\n' >"$SC/lib/c.flow"
"$F" eval "$t/sc.ckpt" --data "$t/te.csv" >"$t/sc.out" 2>&1
same_file "import edited after training: eval" "$t/sc.ref" "$t/sc.out"
(cd "$t/elsewhere" && "$F" eval ../sc.ckpt --data ../te.csv) >"$t/sc.out" 2>&1
same_file "eval from another directory" "$t/sc.ref" "$t/sc.out"
mv "$SC" "$t/sc.moved"
"$F" eval "$t/sc.ckpt" --data "$t/te.csv" >"$t/sc.out" 2>&1
same_file "imports deleted after training: eval" "$t/sc.ref" "$t/sc.out"
mv "$t/sc.moved" "$SC"
printf 'const H = 8;\n' >"$SC/lib/c.flow"
# the embedded spec or import edited, checksums recomputed: spec_hash
"$EDIT" "$t/sc.ckpt" "$t/e1.ckpt" 'hidden = [H]' 'hidden = [H, H]'
fails "edited spec, checksums recomputed: eval" \
    "e1.ckpt: the embedded spec does not match its spec_hash (stored fnv1a64:" \
    "$F" eval "$t/e1.ckpt" --data "$t/te.csv"
"$EDIT" "$t/sc.ckpt" "$t/e2.ckpt" 'const H = 8;' 'const H = 9;'
fails "edited import, checksums recomputed: sample" \
    "e2.ckpt: the embedded spec does not match its spec_hash" \
    "$F" sample "$t/e2.ckpt" -n 5 -o "$O/s.csv"
# tensors: the shape, not only the element count; no tensor of another model
td=$(head -c $((8 + hlen)) "$A" | grep -ao '"params/coupling#0":{"dtype":"F[0-9]*"' | sed 's/.*"dtype":"//; s/"//')
n0=$(echo "$shape" | tr -d '[]')
"$EDIT" "$A" "$t/e3.ckpt" "\"shape\":$shape" "\"shape\":[2,$((n0 / 2))]"
fails "tensor reshaped, same element count: logprob" \
    "e3.ckpt: tensor 'params/coupling#0' is $td of shape [2, $((n0 / 2))], expected $td of shape [$n0]" \
    "$F" logprob "$t/e3.ckpt" --data "$t/te.csv" -o "$O/lp.csv"
"$EDIT" "$A" "$t/e4.ckpt" '"rng/model"' '"rng/other"'
fails "unknown tensor: encode" "e4.ckpt: tensor 'rng/other' is not part of this model" \
    "$F" encode "$t/e4.ckpt" --data "$t/te.csv" -o "$O/z.csv"
# random and training state: an all-zero generator spins for ever in the
# normal sampler (fit --resume), ignoring SIGTERM: timeout -k makes a
# failure here a time limit, not a hang
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o "$t/t3.ckpt" 2>/dev/null
"$EDIT" --zero rng/model "$t/t3.ckpt" "$t/z1.ckpt"
fails "all-zero model RNG: train --resume" \
    "z1.ckpt: tensor 'rng/model' is not a random generator state: the xoshiro256** state is all zero" \
    timeout -k 5 60 "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 6 \
    --batch 64 --resume "$t/z1.ckpt" -o "$O/r.ckpt"
fails "all-zero model RNG: sample" "z1.ckpt: tensor 'rng/model' is not a random generator state" \
    timeout -k 5 60 "$F" sample "$t/z1.ckpt" -n 5 -o "$O/s.csv"
"$EDIT" --zero train/epoch_rng "$t/t3.ckpt" "$t/z2.ckpt"
fails "all-zero shuffle RNG: train --resume" \
    "z2.ckpt: tensor 'train/epoch_rng' is not a random generator state: the xoshiro256** state is all zero" \
    timeout -k 5 60 "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 6 \
    --batch 64 --resume "$t/z2.ckpt" -o "$O/r.ckpt"
"$EDIT" --zero train/state "$t/t3.ckpt" "$t/z3.ckpt"
fails "zeroed training state: train --resume" \
    "z3.ckpt: training state: step or epoch differ from the metadata" \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 6 --batch 64 \
    --resume "$t/z3.ckpt" -o "$O/r.ckpt"
"$F" fit "$t/small.flow" --target banana --steps 3 --batch 16 \
    -o "$t/fit.ckpt" >/dev/null 2>&1
check "fit: checkpoint" 0 $?
"$EDIT" --zero rng/model "$t/fit.ckpt" "$t/z4.ckpt"
fails "all-zero model RNG: fit --resume" \
    "z4.ckpt: tensor 'rng/model' is not a random generator state: the xoshiro256** state is all zero" \
    timeout -k 5 60 "$F" fit "$t/small.flow" --target banana --steps 6 \
    --batch 16 --resume "$t/z4.ckpt" -o "$O/r.ckpt"
# columns by name: a header x1,x0 gives the numbers of x0,x1; other names
# are refused naming both lists; no header: by position
"$F" logprob "$A" --data "$t/te.csv" -o "$t/lp.ref"
awk -F, '{ print $2, $1 }' OFS=, "$t/te.csv" >"$t/swapped.csv"
"$F" logprob "$A" --data "$t/swapped.csv" -o "$t/lp.out"
check "header x1,x0: logprob" 0 $?
same_file "header x1,x0: same log-densities" "$t/lp.ref" "$t/lp.out"
tail -n +2 "$t/te.csv" >"$t/nohead.csv"
"$F" logprob "$A" --data "$t/nohead.csv" -o "$t/lp.out"
same_file "no header: by position" "$t/lp.ref" "$t/lp.out"
sed '1s/.*/a,b/' "$t/te.csv" >"$t/ab.csv"
fails "header a,b: eval" \
    "ab.csv: no column 'x0' (the model was trained on columns x0, x1; the file has a, b)" \
    "$F" eval "$A" --data "$t/ab.csv"
awk -F, '{ print $0 "," (NR == 1 ? "x2" : 1) }' "$t/te.csv" >"$t/x3.csv"
fails "extra column x2: eval" \
    "x3.csv: 3 columns (x0, x1, x2), the model was trained on 2 (x0, x1): select them with --columns" \
    "$F" eval "$A" --data "$t/x3.csv"
fails "other columns: train --resume" \
    "ab.csv: the columns are a, b, the checkpoint was trained on x0, x1" \
    "$F" train "$t/small.flow" --data "$t/ab.csv" --steps 6 --batch 64 \
    --resume "$A" -o "$O/r.ckpt"
"$F" train "$t/small.flow" --data "$t/tr.csv" --valid "$t/te.csv" --steps 3 \
    --batch 64 --json -o "$t/v1.ckpt" 2>/dev/null \
    | sed 's/"seconds.*//; s/v1.ckpt//' >"$t/v1.json"
"$F" train "$t/small.flow" --data "$t/tr.csv" --valid "$t/swapped.csv" \
    --steps 3 --batch 64 --json -o "$t/v2.ckpt" 2>/dev/null \
    | sed 's/"seconds.*//; s/v2.ckpt//' >"$t/v2.json"
has "--valid: a summary" "$t/v1.json" '"valid_loglik": '
same_file "--valid with header x1,x0: same validation" "$t/v1.json" "$t/v2.json"
# the names go through to the outputs (latents are z0..)
sed '1s/.*/u,v/' "$t/tr.csv" >"$t/uv.csv"
"$F" train "$t/small.flow" --data "$t/uv.csv" --steps 3 --batch 64 \
    -o "$t/uv.ckpt" 2>/dev/null
"$F" sample "$t/uv.ckpt" -n 3 -o "$t/uv.s.csv"
has "names kept: sample" "$t/uv.s.csv" "u,v"
"$F" encode "$t/uv.ckpt" --data "$t/uv.csv" -o "$t/uv.z.csv"
has "latents: encode" "$t/uv.z.csv" "z0,z1"
"$F" decode "$t/uv.ckpt" --data "$t/uv.z.csv" -o "$t/uv.x.csv"
has "names kept: decode" "$t/uv.x.csv" "u,v"
# diagnostics about an embedded spec name the checkpoint, and only the
# embedded copies are read: an import of /etc/passwd is refused before
# any file is opened; an absolute .flow import that exists on disk but
# was not embedded is not read
fails "embedded spec diagnostic names the checkpoint" \
    "$t/f.ckpt[$t/faulty.flow]:4:5: error[" \
    "$F" eval "$t/f.ckpt" --data "$t/te.csv"
has "embedded spec summary names the checkpoint" "$t/err" \
    "flowkit eval: $t/f.ckpt[$t/faulty.flow]: 1 error in the embedded spec"
"$EDIT" --rehash "$t/sc.ckpt" "$t/pw.ckpt" 'import \"lib/c.flow\";' 'import \"/etc/passwd\";'
fails "embedded import of /etc/passwd" \
    "$t/pw.ckpt[$SC/s.flow]:1:8: error[F0010]: cannot import '/etc/passwd': an imported file must be a .flow spec" \
    "$F" eval "$t/pw.ckpt" --data "$t/te.csv"
lacks "embedded import of /etc/passwd: not shown" "$t/err" "root:"
printf 'const H = 8;\nconst SECRET_LINE = 1;\n' >"$t/secret.flow"
"$EDIT" --rehash "$t/sc.ckpt" "$t/ne.ckpt" 'import \"lib/c.flow\";' "import \\\"$t/secret.flow\\\";"
fails "embedded import not embedded: never read from disk" \
    "cannot import '$t/secret.flow': $t/secret.flow is not among the embedded source files" \
    "$F" eval "$t/ne.ckpt" --data "$t/te.csv"
lacks "embedded import not embedded: not shown" "$t/err" "SECRET_LINE"
# format 1 (no embedded imports): refused with the way out, which works
"$EDIT" --rehash "$t/sc.ckpt" "$t/v1f.ckpt" '"format_version":"3"' \
    '"format_version":"1"' '"imports":' '"unused":'
fails "format 1 with imports: eval" \
    "note: $t/v1f.ckpt has checkpoint format 1, which does not embed imported files" \
    "$F" eval "$t/v1f.ckpt" --data "$t/te.csv"
"$F" train "$SC/s.flow" --data "$t/tr.csv" --steps 6 --batch 64 \
    --resume "$t/v1f.ckpt" -o "$t/v2f.ckpt" 2>"$t/err"
check "format 1: written again by train --resume" 0 $?
has "format 1: resume note" "$t/err" "does not record what $SC/s.flow imported"
"$F" eval "$t/v2f.ckpt" --data "$t/te.csv" >"$t/sc.out" 2>&1
same_file "format 1: the rewritten checkpoint" "$t/sc.ref" "$t/sc.out"
# a step that never returns (fault_hang) still yields: after the grace
# period of the first signal, or at once on a second one; exit 128 + the
# signal, no checkpoint
printf 'flow hang {\n    input x : real[2];\n    coupling(mask = half, hidden = [8]);\n    fault_hang(at = 100);\n    output z ~ normal;\n}\n' \
    >"$t/hang.flow"
# hang NAME GRACE SIG [SIG2]: the exit status into $t/rc ("none" when
# the run is still going 30 s after the signal)
hang() {
    rm -f "$t/rc" "$t/pid"
    ( FLOW_PLUGIN_PATH=$FP FLOWKIT_STOP_GRACE=$2 \
        sh -c 'echo $$ >"$0"; exec "$@"' "$t/pid" "$F" train "$t/hang.flow" \
        --data "$t/spike.csv" --batch 64 --steps 1000 -o "$O/h.ckpt" \
        2>"$t/err"; echo $? >"$t/rc" ) &
    i=0; while [ ! -s "$t/pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    sleep 3                     # in the hung step by now
    kill -"$3" "$(cat "$t/pid")"
    if [ $# -gt 3 ]; then sleep 0.5; kill -"$4" "$(cat "$t/pid")"; fi
    i=0; while [ ! -s "$t/rc" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -s "$t/rc" ]; then
        bad "$1: still running 30 s after the signal"
        kill -9 "$(cat "$t/pid")"
        wait
        echo none >"$t/rc"
    fi
    wait
}
hang "hung step, SIGINT, 1 s grace" 1 INT
check "hung step, SIGINT, 1 s grace: exit" 130 "$(cat "$t/rc")"
has "hung step, SIGINT, 1 s grace: message" "$t/err" \
    "the step did not finish within FLOWKIT_STOP_GRACE seconds of the interrupt: exiting at once, no checkpoint written"
hang "hung step, two SIGTERMs" 600 TERM TERM
check "hung step, two SIGTERMs: exit" 143 "$(cat "$t/rc")"
has "hung step, two SIGTERMs: message" "$t/err" \
    "second interrupt: exiting at once, no checkpoint written"
if [ -z "$(ls -A "$O")" ]; then ok; else
    bad "hung step: left behind: $(ls -A "$O")"
    rm -f "$O"/* "$O"/.[!.]*
fi

# ================================== wrong numbers that must become errors
# A non-finite result is an error naming the data file and line (exit 1)
# unless --allow-nonfinite; JSON never holds -inf; a diverging run says
# so and, when its numbers are not finite, exits 3.  Each case failed
# before: eval printed "-inf" with exit 0, logprob -o - wrote rows first.
prec=float32
"$F" --version | grep -q float64 && prec=float64
# a value whose square overflows flow_real: log p = -inf under the model
if [ $prec = float64 ]; then big=1e300 tiny=1e-400; else big=1e30 tiny=1e-50; fi
awk -F, -v b=$big 'NR == 101 { $1 = b } { print }' OFS=, "$t/tr.csv" >"$t/big.csv"
fails "non-finite: eval" "big.csv:101: the log-density is -inf under the model (--allow-nonfinite accepts it)" \
    "$F" eval "$A" --data "$t/big.csv"
fails "non-finite: eval --json" "big.csv:101: the log-density is -inf" \
    "$F" eval "$A" --data "$t/big.csv" --json
"$F" eval "$A" --data "$t/big.csv" --json --allow-nonfinite >"$t/json" 2>"$t/err"
check "non-finite: eval --allow-nonfinite" 0 $?
has "non-finite: eval --allow-nonfinite" "$t/json" '{"rows": 300, "loglik": null, "stderr": null, "bits_per_dim": null,'
if grep -qi 'inf\|nan' "$t/json"; then
    echo "FAIL: eval --json wrote a non-JSON number:"; cat "$t/json"
    fail=$((fail + 1)); else pass=$((pass + 1)); fi
fails "non-finite: logprob" "big.csv:101: the log-density is -inf" \
    "$F" logprob "$A" --data "$t/big.csv" -o "$O/lp.csv"
# to standard output: found before the first row is written
fails "non-finite: logprob -o -" "big.csv:101: the log-density is -inf" \
    "$F" logprob "$A" --data "$t/big.csv" -o -
if [ -s "$t/stdout" ]; then echo "FAIL: logprob -o - wrote rows before failing"
    fail=$((fail + 1)); else pass=$((pass + 1)); fi
"$F" logprob "$A" --data "$t/big.csv" --allow-nonfinite -o "$t/lpinf.csv" 2>"$t/err"
check "non-finite: logprob --allow-nonfinite" 0 $?
check "non-finite: logprob --allow-nonfinite writes -inf" -inf "$(sed -n 101p "$t/lpinf.csv")"
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 2 --batch 64 --seed 5 \
    -o "$t/b.ckpt" 2>/dev/null
fails "non-finite: compare" "big.csv:101: the log-density is -inf under the model $A; compare needs a finite value on every row" \
    "$F" compare "$A" "$t/b.ckpt" --data "$t/big.csv" --json
fails "non-finite: hdr" "big.csv:101: the log-density is -inf" \
    "$F" hdr "$A" --data "$t/big.csv" --samples 1000 -o "$O/h.csv"
"$F" hdr "$A" --data "$t/big.csv" --samples 1000 --allow-nonfinite \
    -o "$t/h.csv" >"$t/json" 2>"$t/err"
check "non-finite: hdr --allow-nonfinite" 0 $?
# -inf, not the lowest finite number: outside the region, quantile 0
check "non-finite: hdr writes -inf" "-inf,0,0" \
    "$(sed -n 101p "$t/h.csv" | cut -d, -f1,3,4)"

# flowkit data: 0 is no dimension and no number of components
for o in --dim --components; do
    "$F" data gmm -n 3 $o 0 -o "$O/g.csv" 2>"$t/err"
    check "data gmm $o 0: usage" 2 $?
    has "data gmm $o 0: usage" "$t/err" "flowkit data: $o: must be at least 1"
done

# CSV: a hexadecimal float is refused where it is; values that underflow
# to 0 are counted and said once per file
printf 'x0,x1\n1,2\n0x1p3,1\n' >"$t/hex.csv"
fails "hex float: logprob" "hex.csv:3:1: hexadecimal value '0x1p3' (write numbers in decimal)" \
    "$F" logprob "$A" --data "$t/hex.csv" -o "$O/lp.csv"
fails "hex float: train" "hex.csv:3:1: hexadecimal value" \
    "$F" train "$t/small.flow" --data "$t/hex.csv" --steps 1 -o "$O/x.ckpt"
printf 'x0,x1\n1,2\n%s,1\n3,-%s\n' $tiny $tiny >"$t/tiny.csv"
"$F" logprob "$A" --data "$t/tiny.csv" -o "$t/lp.csv" 2>"$t/err"
check "underflow: logprob" 0 $?
has "underflow: said once" "$t/err" "flowkit logprob: warning: $t/tiny.csv:3:1: 2 non-zero values underflowed to 0 in $prec (the first: '$tiny')"
check "underflow: one line" 1 "$(wc -l <"$t/err" | tr -d ' ')"

# divergence: --lr 5 blows the loss up, finite (a warning, exit 0)
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 30 --batch 300 --lr 5 \
    -o "$t/lr5.ckpt" 2>"$t/err"
check "divergence --lr 5: exit" 0 $?
has "divergence --lr 5: warning" "$t/err" "flowkit train: warning: the training loss rose from "
has "divergence --lr 5: warning" "$t/err" "the run is diverging; lower --lr (it is 5) or set --clip"
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 30 --batch 300 \
    -o "$t/lr3.ckpt" 2>"$t/err"
if grep -q "warning" "$t/err"; then echo "FAIL: divergence: a normal run warns:"
    cat "$t/err"; fail=$((fail + 1)); else pass=$((pass + 1)); fi
# fit: the same guard, the same exit status
cat >"$t/fitnan.flow" <<'EOF'
flow fitnan {
    input x : real[2];
    coupling(mask = half, hidden = [8]);
    fault_nan(at = -100);
    output z ~ normal;
    target funnel(scale = 3);
}
EOF
FLOW_PLUGIN_PATH=$FP fails_rc 3 "fit: 10 non-finite steps in a row" \
    "flowkit fit: training diverged: 10 steps in a row had a non-finite ELBO or gradient (lower the learning rate or clip gradients); no checkpoint written" \
    "$F" fit "$t/fitnan.flow" --steps 50 --batch 16 -o "$O/x.ckpt"
# a validation score of -inf: the checkpoint is written, the run failed
"$F" train "$t/small.flow" --data "$t/tr.csv" --valid "$t/big.csv" --steps 3 \
    --batch 64 --json -o "$t/v.ckpt" >"$t/json" 2>"$t/err"
check "non-finite validation: exit 3" 3 $?
has "non-finite validation" "$t/err" "flowkit train: $t/big.csv:101: the log-density is -inf under the model"
has "non-finite validation" "$t/err" "flowkit train: the validation log-likelihood is -inf, not finite: $t/v.ckpt was written, but the run failed"
has "non-finite validation: JSON null" "$t/json" '"valid_loglik": null'
"$F" info "$t/v.ckpt" >/dev/null 2>&1
check "non-finite validation: checkpoint (with its history) loads" 0 $?

# ================================================================ locations
# A value outside the input's declared bounds is named by data file, line
# and column before any layer runs (it was "row 187" of an internal block,
# after the spec's name); a layer's failure names the line of the row.
cat >"$t/unit.flow" <<'EOF'
flow unit {
    input x : real[2] in [0, 1];
    logit();
    coupling(mask = half, hidden = [8]);
    output z ~ normal;
}
EOF
awk 'BEGIN { print "a,b"; for (i = 1; i <= 1000; i++)
    printf "%.4f,%.4f\n", 0.05 + 0.9 * ((i * 37) % 101) / 101,
                          0.05 + 0.9 * ((i * 53) % 97) / 97 }' >"$t/unit.csv"
"$F" train "$t/unit.flow" --data "$t/unit.csv" --steps 3 -o "$t/u.ckpt" 2>/dev/null
check "bounds: clean training" 0 $?
awk -F, 'NR == 701 { $2 = 1.5 } { print }' OFS=, "$t/unit.csv" >"$t/out.csv"
want="out.csv:701:2: value 1.5 is outside the bounds [0, 1] that the spec declares for its input 'x'"
fails "bounds: eval" "$want" "$F" eval "$t/u.ckpt" --data "$t/out.csv"
fails "bounds: logprob" "$want" "$F" logprob "$t/u.ckpt" --data "$t/out.csv" -o "$O/lp.csv"
fails "bounds: encode" "$want" "$F" encode "$t/u.ckpt" --data "$t/out.csv" -o "$O/z.csv"
fails "bounds: train" "$want" "$F" train "$t/unit.flow" --data "$t/out.csv" --steps 3 -o "$O/x.ckpt"
fails "bounds: train --valid" "$want" \
    "$F" train "$t/unit.flow" --data "$t/unit.csv" --valid "$t/out.csv" --steps 3 -o "$O/x.ckpt"
fails "bounds: compare" "$want" \
    "$F" compare "$t/u.ckpt" "$t/u.ckpt" --data "$t/out.csv"
fails "bounds: hdr" "$want" \
    "$F" hdr "$t/u.ckpt" --data "$t/out.csv" --samples 100 -o "$O/h.csv"
# lines, not rows: a blank line and a line break in a quoted note (a
# column not selected) move the row down
awk -F, 'NR == 1 { print $0 ",note"; next } NR == 3 { print "" }
         NR == 701 { $1 = -2 } { print $0 "," (NR == 5 ? "\"two\nlines\"" : "x") }' \
    OFS=, "$t/unit.csv" >"$t/out2.csv"
fails "bounds: lines count blank and quoted lines" \
    "out2.csv:703:1: value -2 is outside the bounds" \
    "$F" logprob "$t/u.ckpt" --data "$t/out2.csv" --columns a,b -o "$O/lp.csv"
# a layer's failure: the first failing row of the data file, found by
# running the failed batch again (spike.csv: line 151 holds x0 = 500)
FLOW_PLUGIN_PATH=$FP fails "located layer error: logprob" \
    "flowkit logprob: $t/spike.csv:151: $where: forward: row 149 of " \
    "$F" logprob "$t/f.ckpt" --data "$t/spike.csv" -o "$O/lp.csv"
FLOW_PLUGIN_PATH=$FP fails "located layer error: eval --batch 100" \
    "flowkit eval: $t/spike.csv:151: $where" \
    "$F" eval "$t/f.ckpt" --data "$t/spike.csv" --batch 100
# train compiles the spec on disk: the layer is named by the spec file
FLOW_PLUGIN_PATH=$FP fails "located layer error: train" \
    "flowkit train: $t/spike.csv:151: fault_error#1 ($t/faulty.flow:4:5, $FLOW_FAULT_PLUGINS/faulty.so): forward: row " \
    "$F" train "$t/faulty.flow" --data "$t/spike.csv" --steps 20 --batch 64 \
    -o "$O/x.ckpt"

# specs: the statement that cannot be inside an unclosed repeat is named
# with the repeat's line (it was "'}' expected (to close 'flow' at line
# 1)" at the end of the file); exits named twice; conditional bases; a
# file with CR line ends counts its lines
for c in "unclosed:5:3: error[F0002]: '}' expected (to close 'repeat' at line 3) before 'output'" \
         "dup_exit_repeat:7:15: error[F0101]: exit name 'y' is given again" \
         "dup_latent:7:13: error[F0101]: exit name 'x' is already the input's" \
         "base_given:8:32: error[F0305]: a base conditioned on a context" \
         "cr_lines:5:26: error[F0103]"; do
    name=${c%%:*}
    FLOW_PLUGIN_PATH=$SP fails "spec $name: train" "$name.flow:${c#*:}" \
        "$F" train "$B/$name.flow" --data "$t/tr.csv" --steps 1 -o "$O/x.ckpt"
done
printf '\357\273\277flow bom {\n    input x : real[2];\n    coupling(mask = half, hidden = [8]);\n    output z ~ normal;\n}\n' >"$t/bom.flow"
"$F" train "$t/bom.flow" --data "$t/tr.csv" --steps 1 -o "$t/bom.ckpt" 2>"$t/err"
check "spec with a byte order mark: train" 0 $?

# ------------------------------------------------------- weak messages
# out of memory: say so, and for what (it printed an empty message)
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1 \
    fails "sample: out of memory" \
    "flowkit sample: out of memory for 35184372088832 samples of 3 values" \
    "$F" sample "$A" -n 35184372088832 -o "$O/s.csv"
# usage errors (exit 2) that say the range
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 1 --threads 65 -o "$O/x.ckpt" 2>"$t/err"
check "--threads 65: usage" 2 $?
has "--threads 65: usage" "$t/err" "--threads: '65' is not an integer in [1, 64]"
"$F" eval "$A" --data "$t/tr.csv" --threads 65 2>"$t/err"
check "--threads 65: eval usage" 2 $?
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 1 --seed 18446744073709551616 \
    -o "$O/x.ckpt" 2>"$t/err"
check "--seed 2^64: usage" 2 $?
has "--seed 2^64: usage" "$t/err" "--seed: '18446744073709551616' is not an integer in [0, 18446744073709551615]"
"$F" train "$t/small.flow" --data "$t/tr.csv" --steps 1 --seed 9223372036854775808 \
    -o "$t/seed.ckpt" 2>"$t/err"
check "--seed 2^63: a seed" 0 $?
for c in "eval $A --data $t/tr.csv --json=yes" \
         "train $t/small.flow --data $t/tr.csv --steps 1 -o $O/x.ckpt --json=yes" \
         "logprob $A --data $t/tr.csv -o $O/lp.csv --no-header=1" \
         "sample $A -n 3 --with-logprob=no -o $O/s.csv"; do
    # shellcheck disable=SC2086
    "$F" $c >/dev/null 2>"$t/err"
    check "flag with a value: $c" 2 $?
    has "flag with a value: $c" "$t/err" "takes no value"
done
cat >"$t/tgt.flow" <<'EOF'
flow tgt {
    input x : real[2];
    coupling(mask = half, hidden = [8]);
    output z ~ normal;
}
EOF
"$F" fit "$t/tgt.flow" --target '' --steps 2 -o "$O/x.ckpt" 2>"$t/err"
check "fit --target '': usage" 2 $?
has "fit --target '': usage" "$t/err" "flowkit fit: --target is empty"
if grep -q "tgt.flow" "$t/err"; then echo "FAIL: fit --target '' blames the spec"
    fail=$((fail + 1)); else pass=$((pass + 1)); fi
# a history that is not JSON: refused when the checkpoint is opened, not
# after the training it resumes
"$EDIT" "$A" "$t/hist.ckpt" '"history":"[' '"history":"x['
fails "non-JSON history: train --resume" \
    "hist.ckpt: metadata 'history':1:1: expected a value" \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 5 --resume "$t/hist.ckpt" \
    -o "$O/r.ckpt"
if grep -q "^epoch" "$t/err"; then echo "FAIL: non-JSON history: trained first"
    fail=$((fail + 1)); else pass=$((pass + 1)); fi
# actnorm on a constant column: a warning at the data-dependent
# initialisation (the run reached a loss of 4.6e6 silently)
cat >"$t/an.flow" <<'EOF'
flow an {
    input x : real[2];
    actnorm();
    coupling(mask = half, hidden = [8]);
    output z ~ normal;
}
EOF
awk -F, 'NR == 1 { print; next } { print $1 ",0.5" }' "$t/tr.csv" >"$t/const.csv"
"$F" train "$t/an.flow" --data "$t/const.csv" --steps 1 -o "$t/an.ckpt" 2>"$t/err"
check "actnorm constant column: trains" 0 $?
has "actnorm constant column: warning" "$t/err" "flowkit: warning: actnorm: input dimension 1 of 2 has (almost) no variance in the 300 rows of the first batch"
"$F" train "$t/an.flow" --data "$t/tr.csv" --steps 1 -o "$t/an2.ckpt" 2>"$t/err"
if grep -q "actnorm" "$t/err"; then echo "FAIL: actnorm warns on varied data"
    fail=$((fail + 1)); else pass=$((pass + 1)); fi

# ------------------------------ hangs, overflows, undefined behaviour
# a step budget that overflows: 3689348814741910324 epochs x 5 steps
# wrapped to 4 steps and exited 0
fails_rc 2 "--epochs overflow" "--epochs 3689348814741910324 x 5 steps per epoch" \
    "$F" train "$t/small.flow" --data "$t/tr.csv" --batch 64 \
    --epochs 3689348814741910324 -o "$O/e.ckpt"
sed 's/output z ~ normal;/output z ~ normal;\n    train { epochs = 9223372036854775807; }/' \
    "$t/small.flow" >"$t/ep.flow"
fails_rc 2 "train epochs overflow" "train setting epochs = 9223372036854775808 x 5 steps per epoch" \
    "$F" train "$t/ep.flow" --data "$t/tr.csv" --batch 64 -o "$O/e.ckpt"

# batchnorm(eps = 0) on a constant column: 0 / 0 in batchnorm; the
# coupling after it failed on the NaN and was blamed (and the float
# build's vectorised exp converted the NaN to an integer: UBSan)
cat >"$t/bn0.flow" <<'EOF'
flow bn0 {
    input x : real[2];
    batchnorm(eps = 0);
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
fails "batchnorm eps 0: the layer that made the NaN" \
    "batchnorm#0 ($t/bn0.flow:3:5, " \
    "$F" train "$t/bn0.flow" --data "$t/const.csv" --steps 2 -o "$O/bn.ckpt"
has "batchnorm eps 0: its row and the later failure" "$t/err" \
    "forward: row 0 of 300: finite input, non-finite output (then coupling#1 ($t/bn0.flow:4:21"

# a FIFO with no writer as a checkpoint, spec or import blocked open()
# for ever: refused as not a regular file (data may be a FIFO: streamed)
mkfifo "$t/fifo"
fails "FIFO checkpoint: info" "fifo: not a regular file" \
    timeout 10 "$F" info "$t/fifo"
fails "FIFO checkpoint: eval" "fifo: not a regular file" \
    timeout 10 "$F" eval "$t/fifo" --data "$t/te.csv"
fails "FIFO spec: train" "cannot read spec: not a regular file (a FIFO, device or socket)" \
    timeout 10 "$F" train "$t/fifo" --data "$t/tr.csv" -o "$O/f.ckpt"
mkfifo "$t/fifo.flow"
printf 'import "fifo.flow";\n' | cat - "$t/small.flow" >"$t/impfifo.flow"
fails "FIFO import: train" "impfifo.flow:1:8: error[F0010]: cannot read import '$t/fifo.flow': not a regular file" \
    timeout 10 "$F" train "$t/impfifo.flow" --data "$t/tr.csv" -o "$O/f.ckpt"

# a relative FLOW_PLUGIN_PATH entry searched below the current directory
# (FLOW_PLUGIN_PATH=sub loaded ./sub/*.so): ignored with a warning; a
# missing directory and a file get a warning
mkdir "$t/cwd" "$t/cwd/sub"
cp "${FLOW_PLUGIN_PATH%%:*}/coupling.so" "$t/cwd/sub/"
(cd "$t/cwd" && FLOW_PLUGIN_PATH="sub:$t/none:$t/tr.csv" "$F" plugins \
    >"$t/plist" 2>"$t/err")
has "relative plugin path: warned" "$t/err" \
    "flowkit: warning: FLOW_PLUGIN_PATH entry 'sub' is a relative path: ignored (give absolute directories; the current directory is never searched)"
has "missing plugin directory: warned" "$t/err" \
    "flowkit: warning: FLOW_PLUGIN_PATH entry '$t/none': No such file or directory"
has "plugin path entry is a file: warned" "$t/err" \
    "flowkit: warning: FLOW_PLUGIN_PATH entry '$t/tr.csv' is not a directory"
if grep -q "coupling" "$t/plist"; then
    bad "relative plugin path: ./sub/coupling.so loaded: $(cat "$t/plist")"
else ok; fi

# a plugin on the path that aborts in its constructor killed every
# command, naming no file: plugins load on demand (NAME.so first), so a
# command whose spec does not need it runs; one that looks for an unknown
# type loads everything and the fatal signal names the file
mkdir "$t/crash"
printf '#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\nvoid *flow_plugin_entry(void) { return 0; }\n' >"$t/crash/boom.c"
${CC:-cc} -shared -fPIC -o "$t/crash/zz.so" "$t/crash/boom.c"
CP="$FLOW_PLUGIN_PATH:$t/crash"
FLOW_PLUGIN_PATH=$CP "$F" eval "$t/a.ckpt" --data "$t/te.csv" >"$t/stdout" 2>"$t/err"
check "crashing plugin on the path: eval" 0 $?
FLOW_PLUGIN_PATH=$CP "$F" train "$t/small.flow" --data "$t/tr.csv" --steps 1 \
    -o "$t/cr.ckpt" 2>"$t/err"
check "crashing plugin on the path: train" 0 $?
sed 's/coupling(/nosuch(/' "$t/small.flow" >"$t/nosuch.flow"
FLOW_PLUGIN_PATH=$CP "$F" check "$t/nosuch.flow" >"$t/stdout" 2>"$t/err"
check "crashing plugin, unknown type: dies of SIGABRT" 134 $?
has "crashing plugin, unknown type: the file named" "$t/err" \
    "flowkit: fatal signal while loading plugin $t/crash/zz.so (its constructor or flow_plugin_entry())"
# a plugin that fails to load (another ABI) is named where a type is not
# found, and harms no other command
mkdir "$t/badabi"
cp "$FLOW_TEST_PLUGINS/badabi.so" "$t/badabi/zz.so"
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/badabi" "$F" eval "$t/a.ckpt" \
    --data "$t/te.csv" >"$t/stdout" 2>"$t/err"
check "broken plugin on the path: eval" 0 $?
FLOW_PLUGIN_PATH="$FLOW_PLUGIN_PATH:$t/badabi" fails "broken plugin, unknown type: named" \
    "help: a plugin on the search path failed to load: plugin $t/badabi/zz.so: ABI version mismatch" \
    "$F" check "$t/nosuch.flow"

# no limit on a flow's parameters: a 12.9e9-parameter spec compiled and
# `check --attr hidden=[65536,65536]` ran for ever; F0402 at the layer
# that tips it past 2^30, and check refuses what would not fit in memory
fails_rc 2 "4.3e9 parameters: check" \
    "error[F0402]: coupling#0: 4295294978 parameters, 0 before it: the flow would have more than 1073741824 learnable parameters" \
    timeout 20 "$F" check coupling --dim 2 --attr 'hidden=[65536,65536]'
fails "1.2e9 parameters: train" "too_many_params.flow:5:3: error[F0402]" \
    timeout 20 "$F" train "$top_srcdir/tests/specs/bad/too_many_params.flow" \
    --data "$t/tr.csv" -o "$O/p.ckpt"
# under a 4 GB address-space limit, 67M parameters (about 2 GiB to check)
# are refused before any check runs (not under ASan, which needs more)
if (ulimit -v 4000000 && "$F" --version) >/dev/null 2>&1; then
    (ulimit -v 4000000; timeout 20 "$F" check coupling --dim 2 \
        --attr 'hidden=[8192,8192]' >"$t/stdout" 2>"$t/err")
    check "check: does not fit in memory" 1 $?
    has "check: does not fit in memory: said" "$t/err" \
        "flowkit check: coupling: 67149826 parameters: checking it needs about 2.0 GiB, more than half of the 3.8 GiB of memory here"
else
    echo "check: does not fit in memory: skipped (no run under ulimit -v)"
fi

finish hostile
