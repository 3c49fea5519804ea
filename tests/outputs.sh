#!/bin/sh
# outputs.sh - what `-o PATH` does to what is at PATH, for flowkit's
# writers (data files, checkpoints) and flowc's emitters (docs/cli.md,
# "Output files"; docs/reliability.md maps each case to the issue): FIFOs
# and /dev/fd/N are written in place, symbolic links are followed, a
# file's mode is kept, an output that is one of the inputs is refused,
# the output's place is checked before any work, temporaries of dead
# processes are removed, and checkpoints are read from "-".  Only FIFOs,
# pipes, links and files in a temporary directory are used as outputs,
# never a real device.
# Run by make check with FLOWKIT, FLOWC, FLOW_PLUGIN_PATH and
# top_builddir set.
set -u
. "$top_srcdir/tests/lib.sh"
# holds COMMAND...: one check, passed when COMMAND succeeds (the caller
# prints why it failed)
holds() { if "$@"; then ok; return 0; fi; fail=$((fail + 1)); return 1; }
t=$(mktemp -d)
bg=
trap '[ -n "$bg" ] && kill $bg 2>/dev/null; rm -rf "$t"' EXIT
F=$FLOWKIT
FC=$FLOWC
umask 022

# ends_within NAME PID SECONDS: PID must end within SECONDS; if it has not, it
# is killed and NAME fails (a reader left waiting on a FIFO that was
# replaced, or a command that worked before checking its output)
ends_within() {
    i=0
    while kill -0 "$2" 2>/dev/null && [ $i -lt $(($3 * 10)) ]; do
        sleep 0.1; i=$((i + 1))
    done
    if kill -0 "$2" 2>/dev/null; then
        kill "$2" 2>/dev/null
        echo "FAIL: $1: still running after $3 s"; fail=$((fail + 1))
    else
        pass=$((pass + 1))
    fi
    wait "$2" 2>/dev/null
    bg=
}
# mode FILE: its permission bits as ls shows them (rw-------)
mode() { ls -l "$1" | cut -c2-10; }
# notmp NAME DIR: no temporary file left in DIR
notmp() {
    if ls -A "$2" | grep -q '\.tmp\.'; then
        echo "FAIL: $1: temporary left in $2: $(ls -A "$2" | grep '\.tmp\.')"
        fail=$((fail + 1))
    else pass=$((pass + 1)); fi
}

"$F" data moons -n 300 --seed 1 -o "$t/tr.csv"
"$F" data moons -n 50 --seed 2 -o "$t/te.csv"
cat >"$t/s.flow" <<'EOF'
flow small {
    input x : real[2];
    repeat 2 as i { coupling(mask = parity(i), hidden = [8]); }
    output z ~ normal;
}
EOF
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o "$t/a.ckpt" 2>/dev/null
check base-checkpoint 0 $?
"$FC" --emit=json "$t/s.flow" >"$t/want.json"
check base-json 0 $?

# --------------------------------------------- not replaced: FIFOs
# the reader starts first; a FIFO replaced by a file would leave it
# waiting, and `ends_within` reports that
mkfifo "$t/fifo"
cat "$t/fifo" >"$t/from-fifo.csv" &
bg=$!
"$F" data moons -n 5 --seed 3 -o "$t/fifo" 2>"$t/err"
check "FIFO: data" 0 $?
ends_within "FIFO: data: the reader got the rows" $bg 10
holds [ -p "$t/fifo" ] || echo "FAIL: FIFO: data: $t/fifo is no longer a FIFO"
"$F" data moons -n 5 --seed 3 -o "$t/m5.csv"
holds cmp -s "$t/m5.csv" "$t/from-fifo.csv" \
    || echo "FAIL: FIFO: data: the reader got other rows"
cat "$t/fifo" >"$t/from-fifo.ckpt" &
bg=$!
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o "$t/fifo" 2>"$t/err"
check "FIFO: train" 0 $?
ends_within "FIFO: train: the reader got the checkpoint" $bg 30
holds [ -p "$t/fifo" ] || echo "FAIL: FIFO: train: $t/fifo is no longer a FIFO"
holds cmp -s "$t/a.ckpt" "$t/from-fifo.ckpt" \
    || echo "FAIL: FIFO: train: the checkpoint read differs from a file's"
cat "$t/fifo" >"$t/from-fifo.json" &
bg=$!
"$FC" --emit=json -o "$t/fifo" "$t/s.flow" 2>"$t/err"
check "FIFO: flowc --emit=json" 0 $?
ends_within "FIFO: flowc: the reader got the JSON" $bg 10
holds [ -p "$t/fifo" ] || echo "FAIL: FIFO: flowc: $t/fifo is no longer a FIFO"
holds cmp -s "$t/want.json" "$t/from-fifo.json" \
    || echo "FAIL: FIFO: flowc: the reader got other text"
notmp "FIFO" "$t"

# ------------------------------------------ not replaced: /dev/fd/N
# a pipe on descriptor 3 (what `-o >(gzip > f.gz)` passes)
{ "$F" logprob "$t/a.ckpt" --data "$t/te.csv" -o /dev/fd/3 3>&1 \
    >"$t/so"; echo $? >"$t/rc"; } | cat >"$t/piped.csv"
check "/dev/fd/3 (pipe): logprob" 0 "$(cat "$t/rc")"
"$F" logprob "$t/a.ckpt" --data "$t/te.csv" -o "$t/lp.csv"
holds cmp -s "$t/lp.csv" "$t/piped.csv" \
    || echo "FAIL: /dev/fd/3 (pipe): logprob: other rows through the pipe"
{ "$F" train "$t/s.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o /dev/fd/3 3>&1 >"$t/so" 2>/dev/null; echo $? >"$t/rc"; } \
    | cat >"$t/piped.ckpt"
check "/dev/fd/3 (pipe): train" 0 "$(cat "$t/rc")"
holds cmp -s "$t/a.ckpt" "$t/piped.ckpt" \
    || echo "FAIL: /dev/fd/3 (pipe): train: other checkpoint bytes"
{ "$FC" --emit=json -o /dev/fd/3 "$t/s.flow" 3>&1 >"$t/so"
    echo $? >"$t/rc"; } | cat >"$t/piped.json"
check "/dev/fd/3 (pipe): flowc" 0 "$(cat "$t/rc")"
holds cmp -s "$t/want.json" "$t/piped.json" \
    || echo "FAIL: /dev/fd/3 (pipe): flowc: other text"
# descriptor 3 on a file the shell opened: written through it
"$F" data moons -n 5 --seed 3 -o /dev/fd/3 3>"$t/fd3.csv"
check "/dev/fd/3 (file): data" 0 $?
holds cmp -s "$t/m5.csv" "$t/fd3.csv" \
    || echo "FAIL: /dev/fd/3 (file): data: other rows"
"$F" data moons -n 5 -o /dev/fd/7 2>"$t/err"
check "/dev/fd/7 not open" 1 $?
has "/dev/fd/7 not open" "$t/err" "/dev/fd/7: descriptor 7 is not open"
if command -v bash >/dev/null 2>&1 && command -v gzip >/dev/null 2>&1; then
    bash -c '"$1" data moons -n 5 --seed 3 -o >(gzip >"$2")' sh "$F" \
        "$t/m5.csv.gz"
    check "process substitution: data" 0 $?
    i=0; while [ ! -s "$t/m5.csv.gz" ] && [ $i -lt 50 ]; do
        sleep 0.1; i=$((i + 1)); done
    sleep 0.2
    gzip -dc "$t/m5.csv.gz" >"$t/gz.csv"
    holds cmp -s "$t/m5.csv" "$t/gz.csv" \
        || echo "FAIL: process substitution: data: other rows"
fi

# --------------------------------------------- symbolic links followed
mkdir "$t/real"
ln -s real/out.csv "$t/link.csv"              # relative, dangling at first
ln -s "$t/link.csv" "$t/link2.csv"            # a chain of two
for k in 1 2; do
    "$F" data moons -n 5 --seed 3 -o "$t/link2.csv"
    check "symlink ($k): data" 0 $?
    holds [ -L "$t/link.csv" ] && holds [ -L "$t/link2.csv" ] \
        || echo "FAIL: symlink ($k): a link was replaced"
    holds cmp -s "$t/m5.csv" "$t/real/out.csv" \
        || echo "FAIL: symlink ($k): the target does not hold the rows"
done
ln -s real/a.ckpt "$t/link.ckpt"
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 3 --batch 64 \
    -o "$t/link.ckpt" 2>/dev/null
check "symlink: train" 0 $?
holds [ -L "$t/link.ckpt" ] || echo "FAIL: symlink: train: the link was replaced"
holds cmp -s "$t/a.ckpt" "$t/real/a.ckpt" \
    || echo "FAIL: symlink: train: the target is not the checkpoint"
ln -s real/s.json "$t/link.json"
"$FC" --emit=json -o "$t/link.json" "$t/s.flow"
check "symlink: flowc" 0 $?
holds [ -L "$t/link.json" ] || echo "FAIL: symlink: flowc: the link was replaced"
holds cmp -s "$t/want.json" "$t/real/s.json" \
    || echo "FAIL: symlink: flowc: the target does not hold the JSON"
notmp "symlink" "$t"
notmp "symlink target" "$t/real"

# ------------------------------------------------------ mode kept
printf 'old\n' >"$t/m600.csv"; chmod 600 "$t/m600.csv"
"$F" data moons -n 5 -o "$t/m600.csv"
check "mode 600: data" 0 $?
same "mode 600: data" "rw-------" "$(mode "$t/m600.csv")"
cp "$t/a.ckpt" "$t/m640.ckpt"; chmod 640 "$t/m640.ckpt"
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 4 --batch 64 \
    --resume "$t/m640.ckpt" -o "$t/m640.ckpt" 2>/dev/null
check "mode 640: train --resume in place" 0 $?
same "mode 640: train" "rw-r-----" "$(mode "$t/m640.ckpt")"
printf 'old\n' >"$t/m600.json"; chmod 600 "$t/m600.json"
"$FC" --emit=json -o "$t/m600.json" "$t/s.flow"
check "mode 600: flowc" 0 $?
same "mode 600: flowc" "rw-------" "$(mode "$t/m600.json")"
"$F" data moons -n 5 -o "$t/new.csv"
same "new file: 0666 & ~umask" "rw-r--r--" "$(mode "$t/new.csv")"

# --------------------------------------------- an input is no output
# refuse NAME FILE TEXT CMD...: exit 1, TEXT on stderr, FILE unchanged
# (put back when it was not, so that one failure does not hide the next)
refuse() {
    name=$1; file=$2; text=$3; shift 3
    cp "$file" "$t/before"
    "$@" >"$t/so" 2>"$t/err"
    check "$name" 1 $?
    has "$name" "$t/err" "$text"
    holds cmp -s "$t/before" "$file" \
        || { echo "FAIL: $name: $file changed"; cp "$t/before" "$file"; }
}
cp "$t/te.csv" "$t/d.csv"
refuse "same file: logprob --data" "$t/d.csv" \
    "$t/d.csv: the output is the same file as the input $t/d.csv" \
    "$F" logprob "$t/a.ckpt" --data "$t/d.csv" -o "$t/d.csv"
refuse "same file: train --data" "$t/d.csv" \
    "$t/d.csv: the output is the same file as the input $t/d.csv" \
    "$F" train "$t/s.flow" --data "$t/d.csv" --steps 2 -o "$t/d.csv"
refuse "same file: train --valid" "$t/d.csv" \
    "the output is the same file as the input $t/d.csv" \
    "$F" train "$t/s.flow" --data "$t/tr.csv" --valid "$t/d.csv" --steps 2 \
    -o "$t/d.csv"
refuse "same file: train SPEC" "$t/s.flow" \
    "the output is the same file as the input $t/s.flow" \
    "$F" train "$t/s.flow" --data "$t/tr.csv" --steps 2 -o "$t/s.flow"
cp "$t/a.ckpt" "$t/b.ckpt"
refuse "same file: encode CKPT" "$t/b.ckpt" \
    "$t/b.ckpt: the output is the same file as the input $t/b.ckpt" \
    "$F" encode "$t/b.ckpt" --data "$t/d.csv" -o "$t/b.ckpt"
refuse "same file: decode --data" "$t/d.csv" \
    "the output is the same file as the input $t/d.csv" \
    "$F" decode "$t/a.ckpt" --data "$t/d.csv" -o "$t/d.csv"
refuse "same file: sample --context" "$t/d.csv" \
    "the output is the same file as the input $t/d.csv" \
    "$F" sample "$t/a.ckpt" -n 5 --context "$t/d.csv" -o "$t/d.csv"
refuse "same file: sample CKPT" "$t/b.ckpt" \
    "the output is the same file as the input $t/b.ckpt" \
    "$F" sample "$t/b.ckpt" -n 5 -o "$t/b.ckpt"
refuse "same file: hdr --data" "$t/d.csv" \
    "the output is the same file as the input $t/d.csv" \
    "$F" hdr "$t/a.ckpt" --samples 100 --data "$t/d.csv" -o "$t/d.csv"
refuse "same file: fit SPEC" "$t/s.flow" \
    "the output is the same file as the input $t/s.flow" \
    "$F" fit "$t/s.flow" --target 'banana()' --steps 2 -o "$t/s.flow"
refuse "same file: flowc" "$t/s.flow" \
    "$t/s.flow: the output is the same file as the input $t/s.flow" \
    "$FC" --emit=json -o "$t/s.flow" "$t/s.flow"
# the same file under another name: a symbolic or a hard link
ln -s d.csv "$t/dlink.csv"
ln "$t/d.csv" "$t/dhard.csv"
refuse "same file through a symlink: logprob" "$t/d.csv" \
    "$t/dlink.csv: the output is the same file as the input $t/d.csv" \
    "$F" logprob "$t/a.ckpt" --data "$t/d.csv" -o "$t/dlink.csv"
refuse "same file through a hard link: logprob" "$t/d.csv" \
    "$t/dhard.csv: the output is the same file as the input $t/d.csv" \
    "$F" logprob "$t/a.ckpt" --data "$t/d.csv" -o "$t/dhard.csv"
# an imported spec is an input too
mkdir "$t/lib"
printf 'block two() { coupling(mask = half, hidden = [4]); }\n' \
    >"$t/lib/two.flow"
printf 'import "lib/two.flow";\nflow imp {\n    input x : real[2];\n    two();\n    output z ~ normal;\n}\n' \
    >"$t/imp.flow"
refuse "same file: flowc, an import" "$t/lib/two.flow" \
    "the output is the same file as the input $t/lib/two.flow" \
    "$FC" --emit=json -o "$t/lib/two.flow" "$t/imp.flow"
refuse "same file: train, an import" "$t/lib/two.flow" \
    "the output is the same file as the input $t/lib/two.flow" \
    "$F" train "$t/imp.flow" --data "$t/tr.csv" --steps 2 \
    -o "$t/lib/two.flow"
# --resume CKPT -o CKPT continues a run in place (read whole first)
cp "$t/a.ckpt" "$t/r.ckpt"
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 6 --batch 64 \
    --resume "$t/r.ckpt" -o "$t/r.ckpt" 2>/dev/null
check "train --resume CKPT -o CKPT" 0 $?
"$F" info "$t/r.ckpt" --json >"$t/info"
has "train --resume CKPT -o CKPT: step 6" "$t/info" '"step": "6"'

# ------------------------------------ the output checked before any work
# a budget of 10^9 steps: a command that started training is still
# running when `finish` looks
far() {
    name=$1; text=$2; shift 2
    "$F" train "$t/s.flow" --data "$t/tr.csv" --steps 1000000000 \
        --batch 64 "$@" >"$t/so" 2>"$t/err" &
    bg=$!
    ends_within "$name: at once" $bg 20
    has "$name" "$t/err" "$text"
    if grep -q '^epoch' "$t/err"; then
        echo "FAIL: $name: trained first"; fail=$((fail + 1))
    else pass=$((pass + 1)); fi
}
far "-o missing_dir/x.ckpt" \
    "$t/missing/x.ckpt: cannot create a file in directory '$t/missing': No such file or directory" \
    -o "$t/missing/x.ckpt"
far "-o dir/" "$t/real/: is a directory" -o "$t/real/"
far "-o dir" "$t/real: is a directory" -o "$t/real"
far "-o file/x" "$t/tr.csv/x: Not a directory" -o "$t/tr.csv/x"
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 2 -o "$t/real/" \
    2>/dev/null
check "-o dir/: exit" 1 $?
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 2 -o '' 2>"$t/err"
check "-o '': train" 2 $?
has "-o '': train" "$t/err" "flowkit train: -o: empty file name"
for c in logprob encode decode; do
    "$F" $c "$t/a.ckpt" --data "$t/te.csv" -o '' 2>"$t/err"
    check "-o '': $c" 2 $?
done
"$F" sample "$t/a.ckpt" -n 5 -o '' 2>/dev/null; check "-o '': sample" 2 $?
"$F" data moons -n 5 -o '' 2>/dev/null; check "-o '': data" 2 $?
"$F" fit "$t/s.flow" --target 'banana()' -o '' 2>/dev/null
check "-o '': fit" 2 $?
"$FC" --emit=json -o '' "$t/s.flow" 2>/dev/null; check "-o '': flowc" 2 $?
"$FC" --emit=json -o "$t/missing/x.json" "$t/s.flow" 2>"$t/err"
check "flowc -o missing_dir/x" 1 $?
has "flowc -o missing_dir/x" "$t/err" "cannot create a file in directory"
"$F" data moons -n 5 -o "$t/missing/x.csv" 2>/dev/null
check "data -o missing_dir/x" 1 $?
notmp "checked before any work" "$t"

# --------------------------------- temporaries left by dead processes
sh -c 'exit 0' &
dead=$!
wait $dead
if kill -0 $dead 2>/dev/null; then dead=2147483647; fi
host=$(printf %s "$(uname -n)" | tr -c 'A-Za-z0-9-' '_' | cut -c1-64)
mkdir "$t/st"
for f in ".x.csv.tmp.$dead.0" ".x.csv.tmp.$host.$dead.1" \
         ".x.csv.tmp.$$.2" ".x.csv.tmp.$host.$$.3" \
         ".x.csv.tmp.other-host.$dead.4" ".y.csv.tmp.$dead.5" \
         ".a.ckpt.tmp.$host.$dead.6"; do
    printf 'half a file' >"$t/st/$f"
done
"$F" data moons -n 5 -o "$t/st/x.csv"
check "stale temporaries: data" 0 $?
# kept: another name's, another host's, a live process's (this shell)
same "stale temporaries: dead ones removed, the others kept" \
    "$(printf '%s\n' ".a.ckpt.tmp.$host.$dead.6" ".x.csv.tmp.$$.2" \
       ".x.csv.tmp.$host.$$.3" ".x.csv.tmp.other-host.$dead.4" \
       ".y.csv.tmp.$dead.5" x.csv | LC_ALL=C sort | tr '\n' ' ')" \
    "$(ls -A "$t/st" | LC_ALL=C sort | tr '\n' ' ')"
# checked before the work too: a run that fails later has removed them
"$F" train "$t/s.flow" --data "$t/te.csv" --valid "$t/missing.csv" \
    --steps 2 -o "$t/st/a.ckpt" 2>/dev/null
check "stale temporaries: train (fails on --valid)" 1 $?
holds [ ! -e "$t/st/.a.ckpt.tmp.$host.$dead.6" ] \
    || echo "FAIL: stale temporaries: train left .a.ckpt.tmp.$host.$dead.6"
printf 'half a file' >"$t/st/.s.json.tmp.$host.$dead.7"
"$FC" --emit=json -o "$t/st/s.json" "$t/s.flow"
check "stale temporaries: flowc" 0 $?
holds [ ! -e "$t/st/.s.json.tmp.$host.$dead.7" ] \
    || echo "FAIL: stale temporaries: flowc left .s.json.tmp.$host.$dead.7"

# ------------------------------------------ checkpoints from stdin
"$F" eval "$t/a.ckpt" --data "$t/te.csv" >"$t/want"
"$F" eval - --data "$t/te.csv" <"$t/a.ckpt" >"$t/got" 2>"$t/err"
check "stdin: eval" 0 $?
holds cmp -s "$t/want" "$t/got" || echo "FAIL: stdin: eval: other result"
"$F" sample "$t/a.ckpt" -n 20 --seed 4 -o "$t/want"
cat "$t/a.ckpt" | "$F" sample - -n 20 --seed 4 -o "$t/got"
check "stdin (pipe): sample" 0 $?
holds cmp -s "$t/want" "$t/got" || echo "FAIL: stdin: sample: other samples"
cat "$t/a.ckpt" | "$F" info - >"$t/got"
check "stdin: info" 0 $?
has "stdin: info" "$t/got" "parameters   68"
"$F" train "$t/s.flow" --data "$t/tr.csv" --steps 6 --batch 64 \
    --resume "$t/a.ckpt" -o "$t/want.ckpt" 2>/dev/null
cat "$t/a.ckpt" | "$F" train "$t/s.flow" --data "$t/tr.csv" --steps 6 \
    --batch 64 --resume - -o "$t/got.ckpt" 2>/dev/null
check "stdin: train --resume -" 0 $?
holds cmp -s "$t/want.ckpt" "$t/got.ckpt" \
    || echo "FAIL: stdin: train --resume -: another checkpoint"
# bounded and checksummed as a file is
size=$(wc -c <"$t/a.ckpt" | tr -d ' ')
hlen=$(od -An -tu4 -N4 "$t/a.ckpt" | tr -d ' ')
head -c 5 "$t/a.ckpt" | "$F" eval - --data "$t/te.csv" 2>"$t/err"
check "stdin: 5 bytes" 1 $?
has "stdin: 5 bytes" "$t/err" "<stdin>: truncated checkpoint (5 bytes)"
head -c $((8 + hlen / 2)) "$t/a.ckpt" | "$F" eval - --data "$t/te.csv" \
    2>"$t/err"
check "stdin: mid-header" 1 $?
has "stdin: mid-header" "$t/err" \
    "<stdin>: truncated checkpoint: header length $hlen but only $((hlen / 2)) bytes follow"
head -c $((size - 1)) "$t/a.ckpt" | "$F" eval - --data "$t/te.csv" \
    2>"$t/err"
check "stdin: 1 byte short" 1 $?
has "stdin: 1 byte short" "$t/err" "beyond the data section"
{ cat "$t/a.ckpt"; printf x; } | "$F" eval - --data "$t/te.csv" 2>"$t/err"
check "stdin: 1 byte more" 1 $?
has "stdin: 1 byte more" "$t/err" \
    "<stdin>: more data than its tensors declare ($((size - 8 - hlen)) bytes)"
cp "$t/a.ckpt" "$t/flip.ckpt"
printf '\377' | dd of="$t/flip.ckpt" bs=1 seek=$((size - 1)) conv=notrunc \
    2>/dev/null
"$F" eval - --data "$t/te.csv" <"$t/flip.ckpt" 2>"$t/err"
check "stdin: a flipped byte" 1 $?
has "stdin: a flipped byte" "$t/err" "<stdin>: data checksum mismatch"
shape=$(head -c $((8 + hlen)) "$t/a.ckpt" \
        | grep -ao '"params/coupling#0":{"dtype":"F[0-9]*","shape":\[[0-9]*\]' \
        | sed 's/.*"shape"://')
"$top_builddir/tests/ckpt_edit" "$t/a.ckpt" "$t/huge.ckpt" \
    "\"shape\":$shape" '"shape":[1000000000000]'
"$F" eval - --data "$t/te.csv" <"$t/huge.ckpt" 2>"$t/err"
check "stdin: a tensor of 10^12 elements" 1 $?
has "stdin: a tensor of 10^12 elements" "$t/err" \
    "<stdin>: tensor 'params/coupling#0': data_offsets"
"$F" eval - --data - <"$t/a.ckpt" 2>"$t/err"
check "stdin twice" 2 $?
has "stdin twice" "$t/err" "standard input can be read only once"

finish outputs
