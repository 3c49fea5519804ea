#!/bin/sh
# cli_export.sh - `flowkit export`: portable safetensors files of the bundled
# specs read back by a reader written from the published format, parameter
# counts, --slim checkpoints, and errors that leave no file (run by make
# check with FLOWKIT, FLOW_PLUGIN_PATH and top_srcdir set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
S=$top_srcdir/specs
check_log=$t/err

"$F" data moons -n 2000 --seed 1 -o "$t/moons.csv"
"$F" data 8gaussians --labels -n 2000 --seed 2 -o "$t/8gl.csv"
ctx=label0,label1,label2,label3,label4,label5,label6,label7

# train NAME SPEC DATA [OPTIONS...]: one short epoch into $t/NAME.ckpt
train() {
    n=$1 s=$2 d=$3
    shift 3
    "$F" train "$s" --data "$d" --epochs 1 --quiet -o "$t/$n.ckpt" "$@" \
        >"$t/err" 2>&1
    check "train-$n" 0 $?
}

# params CKPT: the checkpoint's parameter count (flowkit info --json)
params() {
    "$F" info --json "$1" | sed -n 's/.*"parameters": \([0-9]*\).*/\1/p'
}

# The reader: the layout of https://github.com/huggingface/safetensors
# (8-byte little-endian header length, JSON header, contiguous data),
# checked strictly; prints one line of facts the checks below compare.
cat >"$t/read.py" <<'EOF'
import json, struct, sys
path = sys.argv[1]
raw = open(path, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
assert 8 + n <= len(raw), 'header runs past the file'
assert n % 8 == 0, 'header not padded to 8 bytes'
head = json.loads(raw[8:8 + n].decode('utf-8'))
meta = head.pop('__metadata__')
assert all(isinstance(v, str) for v in meta.values()), 'metadata not strings'
size = {'F32': 4, 'F64': 8, 'I64': 8, 'U8': 1}
end, reals, kinds = 0, 0, set()
for name, t in sorted(head.items(), key=lambda kv: kv[1]['data_offsets']):
    b, e = t['data_offsets']
    count = 1
    for d in t['shape']:
        count *= d
    assert b == end, '%s: hole or overlap at %d' % (name, b)
    assert e - b == count * size[t['dtype']], '%s: wrong byte count' % name
    assert b % size[t['dtype']] == 0, '%s: misaligned' % name
    end = e
    if t['dtype'] == meta['dtype']:
        reals += count
    kinds.add(t['dtype'])
assert end == len(raw) - 8 - n, 'data section not covered'
arch = json.loads(meta['architecture'])
lp = sum(l['n_params'] for l in arch['layers'])
portable = all(l['portable'] for l in arch['layers'])
assert len(set(head)) == len(head)
for l in arch['layers']:
    if l['type'] in ('coupling', 'maf', 'iaf'):
        w = head['layers.%d.net.0.weight' % l['index']]['shape']
        assert w[1] == l['net']['in'] + l['net']['context'], 'net inputs'
print(meta['format'], meta['format_version'], arch['n_params'], reals,
      'portable' if portable else 'not-portable', len(arch['layers']),
      arch['context_dim'])
EOF

if command -v python3 >/dev/null 2>&1; then have_py=1; else
    have_py=0; echo "SKIP: python3 missing: the files are not read back"
fi

# exported NAME [EXTRA]: export $t/NAME.ckpt and read it back: the
# format, every parameter once as a weight tensor (plus EXTRA real values
# of derived tensors: the assembled weights of LU layers), all layers
# portable
exported() {
    n=$1 extra=${2:-0}
    "$F" export "$t/$n.ckpt" -o "$t/$n.st" >"$t/err" 2>&1
    check "export-$n" 0 $?
    same "export-$n-quiet" "" "$(cat "$t/err")"
    [ $have_py = 1 ] || return 0
    np=$(params "$t/$n.ckpt")
    out=$(python3 "$t/read.py" "$t/$n.st" 2>&1 | tail -n 1)
    set -- $out
    same "read-$n" "flowkit.export 1 $np $((np + extra)) portable" \
        "$1 $2 $3 $4 $5"
}

train moons "$S/moons.flow" "$t/moons.csv" --valid-fraction 0.1
exported moons
train nsf "$S/nsf_8gaussians.flow" "$t/moons.csv"
exported nsf
train maf "$S/maf_moons.flow" "$t/moons.csv"
exported maf
train nice "$S/nice.flow" "$t/moons.csv"
exported nice
train cond "$S/cond_maf.flow" "$t/8gl.csv" --context $ctx
exported cond
if [ $have_py = 1 ]; then
    same cond-context 8 "$(python3 "$t/read.py" "$t/cond.st" | cut -d' ' -f7)"
fi

# an image flow: squeeze exports its flat permutation (perm[1] = 2: the
# second value of channel 0 comes from column 2), actnorm says it is per
# channel, and every layer gives its shapes
"$F" data gmm --dim 32 --components 4 -n 1000 --seed 1 -o "$t/g32.csv"
train image "$S/image_tiny.flow" "$t/g32.csv"
# each conv1x1 of C channels writes weight, lower and upper as full C x C
# matrices, log_diag and bias: 3 C^2 + 2 C values for its C^2 + C
# parameters, 2 C^2 + C more (C = 8, 8, 4, 4)
exported image $((2 * (2 * 64 + 8) + 2 * (2 * 16 + 4)))
if [ $have_py = 1 ]; then
    cat >"$t/shapes.py" <<'EOF'
import json, struct, sys
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
head = json.loads(raw[8:8 + n].decode('utf-8'))
arch = json.loads(head['__metadata__']['architecture'])
sq, an = arch['layers'][1], arch['layers'][2]
b = head['layers.1.perm']['data_offsets'][0] + 8 + n
perm1 = struct.unpack('<q', raw[b + 8:b + 16])[0]
print('%s %s %s perm %s %d; %s %s %s' % (sq['type'], sq['shape'],
      sq['out_shape'], head['layers.1.perm']['shape'], perm1, an['type'],
      an['per'], head['layers.2.log_scale']['shape']))
EOF
    same image-shapes "squeeze [2, 4, 4] [8, 2, 2] perm [32] 2; actnorm channel [8]" \
        "$(python3 "$t/shapes.py" "$t/image.st" 2>&1)"
fi

# a layer the export cannot make exact: warned about and marked
"$F" train "$S/ffjord_8gaussians.flow" --data "$t/moons.csv" --steps 1 \
    --batch 64 --quiet -o "$t/ode.ckpt" >"$t/err" 2>&1; check train-ode 0 $?
"$F" export "$t/ode.ckpt" -o "$t/ode.st" >"$t/err" 2>&1; check export-ode 0 $?
has export-ode-warns "$t/err" "flowkit export: warning: layer 0, ode#0"
if [ $have_py = 1 ]; then
    same export-ode-marked not-portable \
        "$(python3 "$t/read.py" "$t/ode.st" | cut -d' ' -f5)"
fi

# --slim: a checkpoint without the training state, about a quarter of a
# full one (parameters, Adam's two moments and the best copy), that
# evaluates to the same numbers and refuses to resume
"$F" export "$t/moons.ckpt" --slim -o "$t/slim.ckpt" >"$t/err" 2>&1
check slim 0 $?
full=$(wc -c <"$t/moons.ckpt")
slim=$(wc -c <"$t/slim.ckpt")
truth "slim-size ($slim of $full bytes)" \
    "$slim / $full > 0.24 && $slim / $full < 0.27"
"$F" eval "$t/moons.ckpt" --data "$t/moons.csv" >"$t/e1" 2>&1
"$F" eval "$t/slim.ckpt" --data "$t/moons.csv" >"$t/e2" 2>&1
check slim-eval 0 $?
same slim-eval-same "$(cat "$t/e1")" "$(cat "$t/e2")"
same slim-params "$(params "$t/moons.ckpt")" "$(params "$t/slim.ckpt")"
# the slim copy says how much training its parameters had
same slim-counts "$("$F" info "$t/moons.ckpt" | grep -E '^(epochs|step) ')" \
    "$("$F" info "$t/slim.ckpt" | grep -E '^(epochs|step) ')"
"$F" export "$t/slim.ckpt" -o "$t/slim.st" >"$t/err" 2>&1
check slim-exports 0 $?
cmp -s "$t/moons.st" "$t/slim.st"; check slim-same-export 0 $?
"$F" train "$S/moons.flow" --data "$t/moons.csv" --resume "$t/slim.ckpt" \
    --epochs 2 --quiet -o "$t/resumed.ckpt" >"$t/err" 2>&1
check slim-resume 1 $?
has slim-resume-why "$t/err" "$t/slim.ckpt: checkpoint has no training state"
absent slim-resume-nothing "$t/resumed.ckpt"

# usage
"$F" export --help >"$t/out" 2>&1; check help 0 $?
has help "$t/out" "usage: flowkit export CKPT -o OUT [--slim]"
"$F" help export >"$t/out2" 2>&1; check help-command 0 $?
same_file help-same "$t/out" "$t/out2"
"$F" --help >"$t/out" 2>&1
has listed "$t/out" "  export    portable weights"
"$F" export "$t/moons.ckpt" >"$t/err" 2>&1; check no-output 2 $?
has no-output-why "$t/err" "missing -o OUT"
"$F" export -o "$t/x.st" >"$t/err" 2>&1; check no-ckpt 2 $?
absent no-ckpt-nothing "$t/x.st"
"$F" export "$t/moons.ckpt" -o "$t/x.st" --slimm >"$t/err" 2>&1
check bad-option 2 $?
has bad-option-hint "$t/err" "did you mean '--slim'"
"$F" export "$t/moons.ckpt" -o "$t/x.st" --slim=yes >"$t/err" 2>&1
check flag-value 2 $?

# bad inputs and outputs: exit 1, the file named, nothing written
"$F" export "$t/none.ckpt" -o "$t/x.st" >"$t/err" 2>&1; check missing 1 $?
has missing-named "$t/err" "$t/none.ckpt"
absent missing-nothing "$t/x.st"
head -c 3000 "$t/moons.ckpt" >"$t/cut.ckpt"
"$F" export "$t/cut.ckpt" -o "$t/x.st" >"$t/err" 2>&1; check corrupt 1 $?
has corrupt-named "$t/err" "$t/cut.ckpt"
absent corrupt-nothing "$t/x.st"
"$F" export "$t/moons.st" -o "$t/x.st" >"$t/err" 2>&1; check not-ckpt 1 $?
has not-ckpt-named "$t/err" "$t/moons.st"
absent not-ckpt-nothing "$t/x.st"
"$F" export "$t/moons.ckpt" -o "$t/nodir/x.st" >"$t/err" 2>&1
check no-dir 1 $?
has no-dir-named "$t/err" "$t/nodir/x.st"
mkdir "$t/ro"
chmod 555 "$t/ro"
if ! touch "$t/ro/probe" 2>/dev/null; then
    "$F" export "$t/moons.ckpt" -o "$t/ro/x.st" >"$t/err" 2>&1
    check read-only 1 $?
    has read-only-named "$t/err" "$t/ro"
    same read-only-empty "" "$(ls -A "$t/ro")"
fi
chmod 755 "$t/ro"
"$F" export "$t/moons.ckpt" -o "$t/moons.ckpt" >"$t/err" 2>&1
check same-file 1 $?
same same-file-kept "$full" "$(wc -c <"$t/moons.ckpt")"

finish cli_export
