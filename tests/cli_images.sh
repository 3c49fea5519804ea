#!/bin/sh
# cli_images.sh - image data end to end: `flowkit data shapes` as IDX,
# gzip'd, trained on with a flat spec, samples written as NPY, IDX and a
# PNG grid whose headers are checked, a directory of PNG files read
# back, and the errors (run by make check with FLOWKIT set; the PNG and
# gzip parts are skipped in a build without libpng or zlib).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT

# bytes FILE OFFSET COUNT: the bytes as hex, without spaces
bytes() { od -An -tx1 -j"$2" -N"$3" "$1" | tr -d ' \n'; }
# size FILE: its size in bytes
size() { wc -c <"$1" | tr -d ' '; }
# png_size FILE: "WIDTH HEIGHT" from the IHDR chunk (bytes 16..23, big
# endian), after checking the 8-byte signature
png_size() {
    [ "$(bytes "$1" 0 8)" = 89504e470d0a1a0a ] || { echo "not-png"; return; }
    od -An -tu1 -j16 -N8 "$1" | awk '{
        w = $1 * 16777216 + $2 * 65536 + $3 * 256 + $4
        h = $5 * 16777216 + $6 * 65536 + $7 * 256 + $8
        print w, h }'
}

# --- the data: 256 binary images of 4 x 4 as IDX [256, 4, 4] ----------
"$F" data shapes -n 256 --size 4 --seed 1 -o "$t/train.idx" 2>"$t/err"
check data 0 $?
same idx-magic-dims 0000080300000100000000040000000400 \
    "$(bytes "$t/train.idx" 0 17)"
same idx-size 4112 "$(size "$t/train.idx")"
same idx-binary "0 255" "$(od -An -tu1 -v -j16 "$t/train.idx" \
    | tr -s ' ' '\n' | grep -v '^$' | sort -nu | tr '\n' ' ' | sed 's/ $//')"
"$F" data shapes -n 3 --size 4 --seed 1 -o "$t/a.csv"
"$F" data shapes -n 3 --size 4 --seed 1 -o "$t/b.csv"
same_file data-determinism "$t/a.csv" "$t/b.csv"
"$F" data shapes -n 3 --dim 4 >"$t/out" 2>&1; check shapes-dim 2 $?
has shapes-dim "$t/out" "shapes: give the image side with --size, not --dim"

# --- training a flat spec on the images ----------------------------------
cat >"$t/img.flow" <<'FLOW'
flow img {
    input x : real[16];
    actnorm();
    repeat 2 as i {
        coupling(mask = parity(i), hidden = [16], transformer = affine);
    }
    output z ~ normal;
    train { optimizer = adam; lr = 1e-3; batch = 64; epochs = 2; }
}
FLOW
"$F" train "$t/img.flow" --data "$t/train.idx" -o "$t/m.ckpt" >"$t/out" 2>&1
check train 0 $?
has train "$t/out" "8 steps"
"$F" logprob "$t/m.ckpt" --data "$t/train.idx" -o "$t/lp.csv" 2>"$t/err"
check logprob 0 $?
same logprob-rows 257 "$(wc -l <"$t/lp.csv" | tr -d ' ')"
# the same file gzip'd: the same rows
gz=1
gzip -c "$t/train.idx" >"$t/train.idx.gz"
"$F" logprob "$t/m.ckpt" --data "$t/train.idx.gz" -o "$t/lpz.csv" \
    >"$t/out" 2>&1
rc=$?
if grep -q "built without zlib" "$t/out"; then
    echo "cli_images: built without zlib: gzip'd files skipped"; gz=0
else
    check logprob-gz 0 $rc
    same_file logprob-gz "$t/lp.csv" "$t/lpz.csv"
fi

# --- samples as NPY (N, C, H, W), IDX [N, H, W] (bytes), a PNG grid -------
"$F" sample "$t/m.ckpt" -n 10 --shape 1,4,4 -o "$t/s.npy" 2>"$t/err"
check npy 0 $?
has npy-shape "$t/s.npy" "'shape': (10, 1, 4, 4), }"
esize=$(grep -q "'<f8'" "$t/s.npy" && echo 8 || echo 4)
same npy-size $((128 + 160 * esize)) "$(size "$t/s.npy")"
"$F" sample "$t/m.ckpt" -n 10 --shape 1,4,4 -o "$t/s.idx" 2>"$t/err"
check idx 0 $?
same idx-header 000008030000000a0000000400000004 "$(bytes "$t/s.idx" 0 16)"
same idx-sample-size 176 "$(size "$t/s.idx")"
"$F" sample "$t/m.ckpt" -n 10 -o "$t/f.idx"; check idx-flat 0 $?
same idx-flat-header 000008020000000a00000010 "$(bytes "$t/f.idx" 0 12)"

png=1
"$F" sample "$t/m.ckpt" -n 10 --shape 1,4,4 --range -3,3 -o "$t/g.png" \
    >"$t/out" 2>&1
rc=$?
if grep -q "built without it" "$t/out"; then
    echo "cli_images: built without libpng: PNG skipped"; png=0
    absent png-none "$t/g.png"
else
    check png 0 $rc
    # 10 images: 4 across, 3 down, 1-pixel gaps
    same png-size "19 14" "$(png_size "$t/g.png")"
    same png-grey-8bit 0800 "$(bytes "$t/g.png" 24 2)"
fi

# --- an image model: samples take its shape and bounds without flags ---
cat >"$t/pix.flow" <<'FLOW'
flow pix {
    input x : real[1, 4, 4] in [0, 255];
    dequantize(levels = 256);
    logit(alpha = 0.05);
    actnorm;
    output z ~ normal;
    train { optimizer = adam; lr = 1e-3; batch = 64; epochs = 1; }
}
FLOW
"$F" train "$t/pix.flow" --data "$t/train.idx" -o "$t/p.ckpt" >"$t/out" 2>&1
check pix-train 0 $?
"$F" sample "$t/p.ckpt" -n 10 -o "$t/p.npy" 2>"$t/err"
check pix-npy 0 $?
has pix-npy-shape "$t/p.npy" "'shape': (10, 1, 4, 4), }"
"$F" sample "$t/p.ckpt" -n 10 -o "$t/p.idx" 2>"$t/err"
check pix-idx 0 $?
same pix-idx-header 000008030000000a0000000400000004 "$(bytes "$t/p.idx" 0 16)"
# the bounds [0, 255] are the pixel range: the same bytes as --range 0,255
"$F" sample "$t/p.ckpt" -n 10 --range 0,255 -o "$t/q.idx" 2>"$t/err"
same_file pix-range "$t/p.idx" "$t/q.idx"
"$F" sample "$t/p.ckpt" -n 10 --range 0,1 -o "$t/r.idx" 2>"$t/err"
if cmp -s "$t/p.idx" "$t/r.idx"; then bad "pix-range-flag: --range ignored"
else ok; fi

# --- errors: shapes that do not fit, image formats with extra columns ---
"$F" sample "$t/m.ckpt" -n 2 --shape 1,4,5 -o "$t/x.npy" >"$t/out" 2>&1
check shape-mismatch 2 $?
has shape-mismatch "$t/out" \
    "--shape does not hold the 16 values of a sample of the model"
absent shape-mismatch-none "$t/x.npy"
"$F" sample "$t/m.ckpt" -n 2 --shape 1,x -o "$t/x.npy" >"$t/out" 2>&1
check shape-syntax 2 $?
has shape-syntax "$t/out" "--shape: '1,x' is not 1 to 4 positive sizes"
"$F" sample "$t/m.ckpt" -n 2 --range 3,1 -o "$t/x.idx" >"$t/out" 2>&1
check range-syntax 2 $?
has range-syntax "$t/out" "--range: '3,1' is not lo,hi with lo < hi"
"$F" sample "$t/m.ckpt" -n 2 -o "$t/x.png" >"$t/out" 2>&1
check png-no-shape 1 $?
has png-no-shape "$t/out" "a PNG grid needs images of shape [C, H, W]"
absent png-no-shape-none "$t/x.png"
"$F" sample "$t/m.ckpt" -n 2 --with-logprob --shape 1,4,4 -o "$t/x.idx" \
    >"$t/out" 2>&1
check idx-logprob 1 $?
has idx-logprob "$t/out" "x.idx: IDX holds the data values only"
absent idx-logprob-none "$t/x.idx"
"$F" data shapes -n 4 --size 5 -o "$t/five.idx"
"$F" logprob "$t/m.ckpt" --data "$t/five.idx" >"$t/out" 2>&1
check dim-mismatch 1 $?
has dim-mismatch "$t/out" "five.idx: 25 data columns, expected 16"
head -c 100 "$t/train.idx" >"$t/cut.idx"
"$F" logprob "$t/m.ckpt" --data "$t/cut.idx" >"$t/out" 2>&1
check idx-cut 1 $?
has idx-cut "$t/out" "cut.idx: IDX truncated: sample 5 of 256 ends after 4"
if [ $gz = 1 ]; then
    head -c 200 "$t/train.idx.gz" >"$t/cut.idx.gz"
    "$F" logprob "$t/m.ckpt" --data "$t/cut.idx.gz" >"$t/out" 2>&1
    check gz-cut 1 $?
    has gz-cut "$t/out" "cut.idx.gz: corrupt or truncated gzip stream"
fi

# --- a directory of PNG files: one 4 x 4 image each ------------------------
if [ $png = 1 ]; then
    mkdir "$t/pngs"
    for s in 3 1 2; do
        "$F" sample "$t/m.ckpt" -n 1 --seed $s --shape 1,4,4 --range -3,3 \
            -o "$t/pngs/img$s.png"
    done
    same png-one "4 4" "$(png_size "$t/pngs/img1.png")"
    "$F" logprob "$t/m.ckpt" --data "$t/pngs" -o "$t/lp.csv" 2>"$t/err"
    check png-dir 0 $?
    same png-dir-rows 4 "$(wc -l <"$t/lp.csv" | tr -d ' ')"
    "$F" sample "$t/m.ckpt" -n 2 --shape 1,4,4 -o "$t/pngs/two.png"
    "$F" logprob "$t/m.ckpt" --data "$t/pngs" >"$t/out" 2>&1
    check png-dir-shape 1 $?
    has png-dir-shape "$t/out" "pngs/two.png: image of shape [1, 4, 9]"
    rm "$t/pngs/two.png"
    echo "not a png" >"$t/pngs/notes.txt"
    "$F" logprob "$t/m.ckpt" --data "$t/pngs" >"$t/out" 2>&1
    check png-dir-junk 1 $?
    has png-dir-junk "$t/out" "pngs/notes.txt: not a PNG file"
fi

# --- images against the model's input shape -------------------------------
# an image input [2, 4, 4] takes flat rows of 32 and images of that shape;
# images of another shape with the same 32 values are refused, naming both
# (a flat model reads images of any shape as rows: png-dir above)
"$F" data gmm --dim 32 -n 256 --seed 3 -o "$t/g32.csv"
"$F" train "$top_srcdir/specs/image_tiny.flow" --data "$t/g32.csv" --epochs 1 --quiet \
    -o "$t/img.ckpt" >"$t/out" 2>&1
check shape-flat-rows 0 $?
"$F" sample "$t/img.ckpt" -n 64 --seed 1 --shape 2,4,4 -o "$t/good.npy"
"$F" sample "$t/img.ckpt" -n 64 --seed 1 --shape 1,8,4 -o "$t/other.npy"
"$F" train "$top_srcdir/specs/image_tiny.flow" --data "$t/good.npy" --epochs 1 --quiet \
    -o "$t/img2.ckpt" >"$t/out" 2>&1
check shape-same 0 $?
"$F" train "$top_srcdir/specs/image_tiny.flow" --data "$t/other.npy" --epochs 1 --quiet \
    -o "$t/img3.ckpt" >"$t/out" 2>&1
check shape-other 1 $?
has shape-other "$t/out" \
    "other.npy: images of shape 1x8x4, the model's input is 2x4x4"
absent shape-other-nothing "$t/img3.ckpt"
"$F" train "$top_srcdir/specs/image_tiny.flow" --data "$t/g32.csv" --valid "$t/other.npy" \
    --epochs 1 --quiet -o "$t/img3.ckpt" >"$t/out" 2>&1
check shape-other-valid 1 $?
has shape-other-valid "$t/out" "other.npy: images of shape 1x8x4"
"$F" logprob "$t/img.ckpt" --data "$t/other.npy" >"$t/out" 2>&1
check shape-other-logprob 1 $?
has shape-other-logprob "$t/out" "the model's input is 2x4x4"
"$F" logprob "$t/img.ckpt" --data "$t/good.npy" -o "$t/lp2.csv" 2>"$t/err"
check shape-same-logprob 0 $?

finish cli_images
