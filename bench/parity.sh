#!/bin/sh
# parity.sh - every example spec against the PyTorch reference at equal
# architecture, initialisation, data and budget, over several seeds.
#
#   bench/parity.sh [-s SEEDS] [-o DIR] [EXAMPLE...]
#
# FLOWKIT (default build/default/flowkit) and FLOW_PLUGIN_PATH (default
# build/default/plugins/.libs) name the build; PYTHON (default
# /usr/bin/python3) must import torch (Debian's python3-torch, for
# benchmarking only).  Each example trains with its spec's own `train { }`
# budget (20 epochs of 256 rows on 20000 rows = 1580 steps) with seeds
# 0..SEEDS-1 on both sides and is evaluated on 20000 fresh rows.  Printed:
# per side the mean test log-likelihood over seeds with its standard error
# (the spread between seeds, sd / sqrt(SEEDS)); the difference flowkit -
# PyTorch with the standard error of a difference of two independent means,
# sqrt(se_f^2 + se_t^2); and a verdict: "beats" when the difference is above
# +2 s.e., "behind" when below -2 s.e., otherwise "matches" (no difference
# detectable at this number of seeds).  Raw per-seed figures are kept in
# DIR/results.csv.
set -eu
seeds=5
dir=
while getopts s:o: opt; do
    case $opt in
    s) seeds=$OPTARG ;;
    o) dir=$OPTARG ;;
    *) echo "usage: $0 [-s SEEDS] [-o DIR] [EXAMPLE...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
here=$(cd "$(dirname "$0")/.." && pwd)
FLOWKIT=${FLOWKIT:-$here/build/default/flowkit}
FLOW_PLUGIN_PATH=${FLOW_PLUGIN_PATH:-$here/build/default/plugins/.libs}
export FLOW_PLUGIN_PATH
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$FLOWKIT" ] || { echo "$0: $FLOWKIT: not built" >&2; exit 1; }
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "$0: reference unavailable ($PYTHON cannot import torch;" \
         "apt-get install python3-torch)" >&2
    exit 1
fi
[ -n "$dir" ] || dir=$(mktemp -d)
mkdir -p "$dir"
examples=${*:-moons nice nsf maf_gmm iaf cond_maf multiscale}

# data: the same files for both sides
d=$dir/data
mkdir -p "$d"
if [ ! -f "$d/done" ]; then
    "$FLOWKIT" data moons -n 20000 --seed 1 -o "$d/moons_tr.csv"
    "$FLOWKIT" data moons -n 20000 --seed 2 -o "$d/moons_te.csv"
    "$FLOWKIT" data 8gaussians -n 20000 --seed 1 -o "$d/g_tr.csv"
    "$FLOWKIT" data 8gaussians -n 20000 --seed 2 --with-logprob -o "$d/g_te.csv"
    "$FLOWKIT" data 8gaussians -n 20000 --seed 1 --labels -o "$d/gl_tr.csv"
    "$FLOWKIT" data 8gaussians -n 20000 --seed 2 --labels --with-logprob -o "$d/gl_te.csv"
    "$FLOWKIT" data gmm --dim 8 --components 8 -n 20000 --seed 1 -o "$d/m8_tr.csv"
    "$FLOWKIT" data gmm --dim 8 --components 8 -n 20000 --seed 2 --with-logprob -o "$d/m8_te.csv"
    "$FLOWKIT" data gmm --dim 4 --components 4 -n 20000 --seed 1 -o "$d/m4_tr.csv"
    "$FLOWKIT" data gmm --dim 4 --components 4 -n 20000 --seed 2 --with-logprob -o "$d/m4_te.csv"
    touch "$d/done"
fi

# setup EXAMPLE: spec, reference model, data prefix, flowkit column flags,
# reference column flags
setup() {
    case $1 in
    moons) spec=moons.flow ref=moons data=moons fk="" rf="--columns 2" ;;
    nice) spec=nice.flow ref=nice data=g fk="--columns x0,x1" rf="--columns 2" ;;
    nsf) spec=nsf_8gaussians.flow ref=nsf data=g fk="--columns x0,x1" rf="--columns 2" ;;
    maf_gmm) spec=maf_gmm.flow ref=maf data=m8
        fk="--columns x0,x1,x2,x3,x4,x5,x6,x7" rf="--columns 8" ;;
    iaf) spec=iaf.flow ref=iaf data=moons fk="" rf="--columns 2" ;;
    cond_maf) spec=cond_maf.flow ref=cond_maf data=gl
        fk="--columns x0,x1 --context label0,label1,label2,label3,label4,label5,label6,label7"
        rf="--columns 2 --context 8" ;;
    multiscale) spec=multiscale.flow ref=multiscale data=m4
        fk="--columns x0,x1,x2,x3" rf="--columns 4" ;;
    *) echo "$0: unknown example '$1'" >&2; exit 2 ;;
    esac
}

res=$dir/results.csv
[ -f "$res" ] || echo "example,side,seed,loglik" >"$res"
for ex in $examples; do
    setup "$ex"
    s=0
    while [ "$s" -lt "$seeds" ]; do
        if ! grep -q "^$ex,flowkit,$s," "$res"; then
            # shellcheck disable=SC2086
            "$FLOWKIT" train "$here/specs/$spec" --data "$d/${data}_tr.csv" \
                $fk --seed "$s" -o "$dir/$ex.$s.ckpt" 2>"$dir/train.log" \
                || { cat "$dir/train.log" >&2; exit 1; }
            # shellcheck disable=SC2086
            v=$("$FLOWKIT" eval "$dir/$ex.$s.ckpt" --data "$d/${data}_te.csv" \
                $fk --json | sed 's/.*"loglik": \([-0-9.e]*\).*/\1/')
            echo "$ex,flowkit,$s,$v" >>"$res"
        fi
        if ! grep -q "^$ex,pytorch,$s," "$res"; then
            # shellcheck disable=SC2086
            v=$("$PYTHON" "$here/bench/ref_torch.py" "$ref" \
                --train "$d/${data}_tr.csv" --test "$d/${data}_te.csv" $rf \
                --steps 1580 --batch 256 --threads 1 --seed "$s" 2>/dev/null \
                | sed 's/.*"test_loglik": \([-0-9.e]*\).*/\1/')
            echo "$ex,pytorch,$s,$v" >>"$res"
        fi
        s=$((s + 1))
    done
done

awk -F, -v list="$examples" '
NR > 1 { k = $1 SUBSEP $2; n[k]++; s[k] += $4; q[k] += $4 * $4 }
END {
    printf "%-11s %22s %22s %22s  %s\n", "example", "flowkit", "PyTorch",
           "difference", "verdict"
    m = split(list, ex, " ")
    for (i = 1; i <= m; i++) {
        e = ex[i]
        for (j = 0; j < 2; j++) {
            side = j ? "pytorch" : "flowkit"; k = e SUBSEP side
            mu[j] = s[k] / n[k]
            v = n[k] > 1 ? (q[k] - n[k] * mu[j] * mu[j]) / (n[k] - 1) : 0
            se[j] = sqrt(v > 0 ? v / n[k] : 0)
        }
        dd = mu[0] - mu[1]; ds = sqrt(se[0] ^ 2 + se[1] ^ 2)
        verdict = dd > 2 * ds ? "beats" : (dd < -2 * ds ? "behind" : "matches")
        printf "%-11s %12.4f +- %6.4f %12.4f +- %6.4f %+12.4f +- %6.4f  %s (n = %d)\n",
               e, mu[0], se[0], mu[1], se[1], dd, ds, verdict, n[e SUBSEP "flowkit"]
    }
}' "$res"
