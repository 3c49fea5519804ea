#!/bin/sh
# cli_data.sh - `flowkit data`: built-in data sets, formats, exit codes and
# messages (run by make check with FLOWKIT set).
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fk() { "$FLOWKIT" data "$@"; }

fk --help >"$t/out" 2>&1; check help 0 $?
has help "$t/out" "usage: flowkit data NAME -n N"
fk --list >"$t/out" 2>&1; check list 0 $?
same list-count 10 "$(wc -l <"$t/out" | tr -d ' ')"
has list "$t/out" "checkerboard"

fk moons -n 5 >"$t/out" 2>"$t/err"; check moons 0 $?
same moons-lines 6 "$(wc -l <"$t/out" | tr -d ' ')"
same moons-header "x0,x1" "$(head -n 1 "$t/out")"
fk moons -n 5 --no-header >"$t/out"; check no-header 0 $?
same no-header-lines 5 "$(wc -l <"$t/out" | tr -d ' ')"

fk 8gaussians -n 3 --labels --with-logprob >"$t/out"; check labels 0 $?
same labels-header \
    "x0,x1,label0,label1,label2,label3,label4,label5,label6,label7,logprob" \
    "$(head -n 1 "$t/out")"
same labels-onehot "3" "$(awk -F, 'NR > 1 { s = 0; for (i = 3; i <= 10; i++)
    s += $i; if (s == 1) n++ } END { print n }' "$t/out")"

fk gmm -n 4 --dim 3 --components 2 --with-logprob >"$t/out"; check gmm 0 $?
same gmm-header "x0,x1,x2,logprob" "$(head -n 1 "$t/out")"

fk checkerboard -n 50 --with-logprob --no-header >"$t/out"
check checker 0 $?
# log(1/32) = -3.4657359028, printed with 9 or 17 significant digits
same checker-logprob "-3.4657359" "$(cut -d, -f3 "$t/out" | sort -u | cut -c1-10)"

# determinism
fk pinwheel -n 20 --seed 7 >"$t/a"
fk pinwheel -n 20 --seed 7 >"$t/b"
fk pinwheel -n 20 --seed 8 >"$t/c"
cmp -s "$t/a" "$t/b"; check same-seed 0 $?
cmp -s "$t/a" "$t/c"; check other-seed 1 $?

# NPY to a file and to stdout
fk rings -n 10 -o "$t/r.npy"; check npy-file 0 $?
same npy-magic "NUMPY" "$(head -c 6 "$t/r.npy" | tail -c 5)"
# 128 header bytes, then 10 x 2 values of the build's precision
if "$FLOWKIT" --version | grep -q float64; then size=288; else size=208; fi
same npy-size "$size" "$(wc -c <"$t/r.npy" | tr -d ' ')"
fk rings -n 10 --format npy | cmp -s - "$t/r.npy"; check npy-stdout 0 $?
fk rings -n 10 --format csv -o "$t/r.npy"; check force-csv 0 $?
same force-csv-header "x0,x1" "$(head -n 1 "$t/r.npy")"

# usage errors: exit 2
fk moons -n 5 --with-logprob >"$t/out" 2>&1; check no-density 2 $?
has no-density "$t/out" "flowkit data: data set 'moons' has no known density"
fk moons -n 5 --labels >"$t/out" 2>&1; check labels-moons 2 $?
fk moons --dim 3 -n 5 >"$t/out" 2>&1; check dim-moons 2 $?
fk bogus -n 5 >"$t/out" 2>&1; check unknown 2 $?
has unknown "$t/out" "unknown data set 'bogus'"
fk moons >"$t/out" 2>&1; check no-n 2 $?
has no-n "$t/out" "-n N is required"
fk -n 5 >"$t/out" 2>&1; check no-name 2 $?
fk moons -n abc >"$t/out" 2>&1; check bad-n 2 $?
has bad-n "$t/out" "-n: 'abc' is not a non-negative integer"
fk moons -n 0 >"$t/out" 2>&1; check zero-n 2 $?
fk moons -n 5 --format xml >"$t/out" 2>&1; check bad-format 2 $?
fk moons -n 5 --frob >"$t/out" 2>&1; check bad-option 2 $?
fk moons -n >"$t/out" 2>&1; check missing-value 2 $?

# output errors: exit 1, nothing left behind
mkdir "$t/d" "$t/d/sub"
fk moons -n 5 -o "$t/d/sub" >"$t/out" 2>&1; check out-is-dir 1 $?
has out-is-dir "$t/out" "$t/d/sub: is a directory"
same out-is-dir-clean "sub" "$(ls -A "$t/d")"
fk moons -n 5 -o "$t/none/x.csv" >"$t/out" 2>&1; check out-no-dir 1 $?
if [ -w /dev/full ]; then
    fk moons -n 5 >/dev/full 2>"$t/out"; check stdout-full 1 $?
    has stdout-full "$t/out" "stdout: write error"
fi

finish cli_data
