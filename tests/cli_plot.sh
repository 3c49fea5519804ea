#!/bin/sh
# cli_plot.sh - `flowkit plot`: picture sizes and formats, the density of a
# trained 8gaussians model peaking at the 8 modes, panel counts, curves,
# image grids, usage errors and outputs left untouched on failure (run by
# make check with FLOWKIT set; skipped, 77, in a build without cairo).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$t"' EXIT
F=$FLOWKIT
check_log=$t/err

"$F" plot --help >"$t/out" 2>&1; check help 0 $?
has help "$t/out" "usage: flowkit plot density CKPT"
"$F" help plot >"$t/out2" 2>&1; check help-cmd 0 $?
same_file help-same "$t/out" "$t/out2"
"$F" plot history "$t/none.ckpt" -o "$t/x.png" >"$t/out" 2>&1
if grep -q "built without cairo" "$t/out"; then
    echo "cli_plot: flowkit was built without cairo: skipped"
    exit 77
fi

# png_size FILE: "WIDTH HEIGHT" from the IHDR chunk (bytes 16..23, big
# endian), after checking the 8-byte signature
png_size() {
    sig=$(od -An -tx1 -N8 "$1" | tr -d ' \n')
    [ "$sig" = 89504e470d0a1a0a ] || { echo "not-png"; return; }
    od -An -tu1 -j16 -N8 "$1" | awk '{
        w = $1 * 16777216 + $2 * 65536 + $3 * 256 + $4
        h = $5 * 16777216 + $6 * 65536 + $7 * 256 + $8
        print w, h }'
}

# --- a small model of the 8gaussians data ------------------------------
"$F" data 8gaussians -n 10000 --seed 1 -o "$t/g.csv" 2>"$t/err"
check data 0 $?
cat >"$t/nsf.flow" <<'FLOW'
flow small_nsf {
    input x : real[2];
    repeat 4 as i {
        coupling(mask = parity(i), hidden = [32, 32],
                 transformer = spline(bins = 8, bound = 4));
    }
    output z ~ normal;
    train { lr = 3e-3; batch = 256; epochs = 15; }
}
FLOW
"$F" train "$t/nsf.flow" --data "$t/g.csv" --valid-fraction 0.1 --seed 1 \
    -o "$t/m.ckpt" --quiet 2>"$t/err"
check train 0 $?
"$F" train "$t/nsf.flow" --data "$t/g.csv" --epochs 4 --lr 1e-3 --seed 2 \
    -o "$t/m2.ckpt" --quiet 2>"$t/err"
check train-2 0 $?

# --- density: sizes and formats ----------------------------------------
"$F" plot density "$t/m.ckpt" -o "$t/d.png" 2>"$t/err"; check density 0 $?
same density-default-size "640 480" "$(png_size "$t/d.png")"
"$F" plot density "$t/m.ckpt" -o "$t/d2.png" --width 300 --height 200 \
    --data "$t/g.csv" --samples 200 --grid 40 --title "eight" 2>"$t/err"
check density-sized 0 $?
same density-size "300 200" "$(png_size "$t/d2.png")"
"$F" plot density "$t/m.ckpt" -o "$t/d.svg" --grid 20 2>"$t/err"
check density-svg 0 $?
same svg-magic "<?xml" "$(head -c 5 "$t/d.svg")"
has svg-root "$t/d.svg" "<svg"
"$F" plot density "$t/m.ckpt" -o "$t/d.pdf" --grid 20 2>"$t/err"
check density-pdf 0 $?
same pdf-magic "%PDF-" "$(head -c 5 "$t/d.pdf")"
same no-temp-files 0 "$(ls -A "$t" | grep -c '\.tmp\.')"

# --- density: the brightest cells are the 8 modes -----------------------
# The modes of 8gaussians are at radius 4/1.414 on the angles k*pi/4
# (runtime/datasets.c), with a noise std of 0.35.  The bright local
# maxima of the density over a grid of 0.1-wide cells (at least a tenth
# of the highest: log p within 2.3 of it) must each lie within 0.75 of a
# mode (2.1 noise std; neighbouring modes are 2.17 apart), and cover all 8
# modes (a mode may have a second bump of its own: a spline flow's is not
# a perfect Gaussian).
"$F" plot density "$t/m.ckpt" -o "$t/d3.png" --grid 80 \
    --range -4,4,-4,4 --dump-grid "$t/grid.csv" 2>"$t/err"
check dump-grid 0 $?
same grid-rows 6401 "$(wc -l <"$t/grid.csv" | tr -d ' ')"
same grid-header "x,y,logp" "$(head -n 1 "$t/grid.csv")"
awk -F, -v g=80 'NR > 1 { k = NR - 2; v[k % g, int(k / g)] = $3
                          x[k % g, int(k / g)] = $1; y[k % g, int(k / g)] = $2 }
    END {
        n = 0
        for (i = 1; i < g - 1; i++) for (j = 1; j < g - 1; j++) {
            m = 1
            for (a = -1; a <= 1; a++) for (b = -1; b <= 1; b++)
                if ((a || b) && v[i + a, j + b] >= v[i, j]) m = 0
            if (m) { n++; mv[n] = v[i, j]; mx[n] = x[i, j]; my[n] = y[i, j] }
        }
        for (p = 1; p <= n; p++) for (q = p + 1; q <= n; q++)
            if (mv[q] > mv[p]) {
                s = mv[p]; mv[p] = mv[q]; mv[q] = s
                s = mx[p]; mx[p] = mx[q]; mx[q] = s
                s = my[p]; my[p] = my[q]; my[q] = s
            }
        pi = atan2(0, -1); r = 4 / 1.414
        for (p = 1; p <= n && mv[p] > mv[1] - 2.3; p++) {
            best = -1; bd = 1e9
            for (k = 0; k < 8; k++) {
                dx = mx[p] - r * cos(k * pi / 4)
                dy = my[p] - r * sin(k * pi / 4)
                d = sqrt(dx * dx + dy * dy)
                if (d < bd) { bd = d; best = k }
            }
            printf "%d %.3f %.3f %d %.3f\n", p, mx[p], my[p], best, bd
        }
    }' "$t/grid.csv" >"$t/peaks"
n=$(wc -l <"$t/peaks" | tr -d ' ')
truth "8 to 16 bright peaks ($n)" "$n >= 8 && $n <= 16" "$t/peaks"
same peaks-cover-modes 8 "$(awk '{ print $4 }' "$t/peaks" | sort -u | wc -l | tr -d ' ')"
truth "peaks within 0.75 of their modes" \
    "$(awk 'BEGIN { m = 0 } { if ($5 > m) m = $5 } END { print m }' "$t/peaks") < 0.75" \
    "$t/peaks"

# --- density of a 3-D model: --dims, --fix, marginals --------------------
"$F" data gmm --dim 3 -n 1000 --seed 3 -o "$t/g3.csv" 2>"$t/err"
cat >"$t/maf3.flow" <<'FLOW'
flow maf3 {
    input x : real[3];
    repeat 2 as i { maf(hidden = [16], transformer = affine); permute(order = reverse); }
    output z ~ normal;
    train { lr = 3e-3; batch = 256; epochs = 2; }
}
FLOW
"$F" train "$t/maf3.flow" --data "$t/g3.csv" -o "$t/m3.ckpt" --quiet 2>"$t/err"
check train-3d 0 $?
"$F" plot density "$t/m3.ckpt" -o "$t/e.png" >"$t/out" 2>"$t/err"
check 3d-without-dims 2 $?
has 3d-without-dims-msg "$t/err" "the model has 3 dimensions: choose two with --dims I,J"
absent 3d-without-dims-nothing "$t/e.png"
"$F" plot density "$t/m3.ckpt" -o "$t/s3.png" --dims 0,2 --fix 0.5 \
    --grid 30 --dump-grid "$t/s3.csv" 2>"$t/err"
check 3d-slice 0 $?
same 3d-slice-header "x,y,logp" "$(head -n 1 "$t/s3.csv")"
"$F" plot density "$t/m3.ckpt" -o "$t/m3.png" --dims 1,0 --draws 20000 \
    --grid 30 --range -6,6,-6,6 --dump-grid "$t/mg.csv" 2>"$t/err"
check 3d-marginal 0 $?
# a histogram density: sums to (fraction inside the range) / cell area
truth "marginal mass in (0.9, 1]" "$(awk -F, 'NR > 1 { s += $3 } END {
    print s * 0.4 * 0.4 }' "$t/mg.csv") > 0.9 && $(awk -F, 'NR > 1 {
    s += $3 } END { print s * 0.4 * 0.4 }' "$t/mg.csv") <= 1.0001"
"$F" plot density "$t/m3.ckpt" -o "$t/e.png" --dims 0,2 --fix 1,2 \
    2>"$t/err"
check 3d-fix-count 2 $?
has 3d-fix-count-msg "$t/err" "give 1 value"

# --- pairs ---------------------------------------------------------------
"$F" sample "$t/m.ckpt" -n 1000 --seed 4 -o "$t/s.csv" 2>"$t/err"
"$F" plot pairs "$t/g.csv" "$t/s.csv" -o "$t/p.png" --layout \
    >"$t/lay" 2>"$t/err"
check pairs-2d 0 $?
same pairs-2d-panels 3 "$(wc -l <"$t/lay" | tr -d ' ')"
"$F" data gmm --dim 5 -n 800 --seed 5 -o "$t/g5.csv" 2>"$t/err"
"$F" plot pairs "$t/g5.csv" -o "$t/p5.svg" --layout >"$t/lay" 2>"$t/err"
check pairs-5d 0 $?
same pairs-default-k4-panels 10 "$(wc -l <"$t/lay" | tr -d ' ')"
same pairs-diagonal 4 "$(grep -c '^hist' "$t/lay")"
same pairs-scatter 6 "$(grep -c '^scatter' "$t/lay")"
"$F" plot pairs "$t/g5.csv" -o "$t/p5.png" --dims 5 --layout >"$t/lay" \
    2>"$t/err"
same pairs-k5-panels 15 "$(wc -l <"$t/lay" | tr -d ' ')"
"$F" plot pairs "$t/g5.csv" -o "$t/p5.png" --dims 4,0 --layout \
    >"$t/lay" 2>"$t/err"
same pairs-list-panels 3 "$(wc -l <"$t/lay" | tr -d ' ')"
"$F" plot pairs "$t/g5.csv" -o "$t/e.png" --dims 6 2>"$t/err"
check pairs-too-many 2 $?

# --- history -------------------------------------------------------------
"$F" plot history "$t/m.ckpt" "$t/m2.ckpt" -o "$t/h.png" --width 480 \
    --height 360 --layout >"$t/lay" 2>"$t/err"
check history 0 $?
same history-size "480 360" "$(png_size "$t/h.png")"
same history-panel 1 "$(grep -c '^curves' "$t/lay")"

# --- images --------------------------------------------------------------
awk 'BEGIN { for (r = 0; r < 12; r++) { s = ""
    for (i = 0; i < 3 * 4 * 6; i++) s = s (i ? "," : "") (r * 7 + i) % 10
    print s } }' >"$t/img.csv"
"$F" plot images "$t/img.csv" --shape 3,4,6 --rows 2 --cols 3 \
    -o "$t/i.png" --layout >"$t/lay" 2>"$t/err"
check images 0 $?
same images-grid 6 "$(grep -c '^image' "$t/lay")"
same images-last-cell "image 1 2" "$(tail -n 1 "$t/lay" | cut -d' ' -f1-3)"
# cells keep the images' aspect: W/H = 6/4
truth "image aspect 1.5" "$(awk '{ a = $6 / $7 } END { print (a > 1.49 && a < 1.51) }' "$t/lay") == 1" "$t/lay"
"$F" plot images "$t/img.csv" --shape 1,6,12 --range 0,9 -o "$t/ig.png" \
    --layout >"$t/lay" 2>"$t/err"
check images-grey 0 $?
same images-default-grid 12 "$(grep -c '^image' "$t/lay")"

# --- errors --------------------------------------------------------------
"$F" plot histogram "$t/m.ckpt" -o "$t/e.png" >"$t/out" 2>"$t/err"
check unknown-kind 2 $?
has unknown-kind-msg "$t/err" "unknown kind 'histogram'"
"$F" plot density "$t/m.ckpt" -o "$t/e.png" --sampels 3 2>"$t/err"
check unknown-option 2 $?
has unknown-option-msg "$t/err" "did you mean '--samples'?"
"$F" plot pairs "$t/g.csv" -o "$t/e.png" --grid 3 2>"$t/err"
check option-of-another-kind 2 $?
"$F" plot images "$t/img.csv" --shape 2,4,6 -o "$t/e.png" 2>"$t/err"
check bad-shape-c 2 $?
has bad-shape-c-msg "$t/err" "C 1 (grey) or 3 (RGB)"
"$F" plot images "$t/img.csv" --shape 3,4 -o "$t/e.png" 2>"$t/err"
check bad-shape-text 2 $?
"$F" plot images "$t/img.csv" --shape 1,4,4 -o "$t/e.png" 2>"$t/err"
check shape-mismatch 1 $?
has shape-mismatch-msg "$t/err" "img.csv: 72 columns, but --shape 1,4,4 needs 16"
"$F" plot density "$t/missing.ckpt" -o "$t/e.png" 2>"$t/err"
check missing-file 1 $?
has missing-file-msg "$t/err" "missing.ckpt"
"$F" plot density "$t/m.ckpt" -o "$t/e.gif" 2>"$t/err"
check bad-extension 2 $?
"$F" plot density "$t/m.ckpt" -o "$t/no/such/dir/e.png" 2>"$t/err"
check unwritable 1 $?
absent unwritable-nothing "$t/no"
absent errors-nothing "$t/e.png"
# a failing run leaves an existing picture as it was
cp "$t/d.png" "$t/keep.png"
"$F" plot history "$t/g.csv" -o "$t/keep.png" 2>"$t/err"
check history-not-ckpt 1 $?
same_file keep-untouched "$t/d.png" "$t/keep.png"
"$F" plot density "$t/m.ckpt" -o "$t/m.ckpt.png" --data "$t/m.ckpt.png" \
    2>"$t/err"
check output-is-input 1 $?
same no-temp-files-at-end 0 "$(ls -A "$t" | grep -c '\.tmp\.')"

finish cli_plot
