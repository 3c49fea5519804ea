#!/bin/sh
# crash.sh - crash safety of training: SIGTERM / SIGINT finish the step,
# write the checkpoint and exit 143 / 130; SIGKILL at 50 random moments
# never leaves a checkpoint that fails to load, and a run resumed after
# every kill ends bit-identical to an uninterrupted one with the same seed.
set -u
pass=0
fail=0
ok()  { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
F=$FLOWKIT
SPEC=$top_srcdir/specs/moons.flow
"$F" data moons -n 256 --seed 1 -o "$t/tr.csv"
"$F" data moons -n 200 --seed 2 -o "$t/te.csv"
STEPS=3000
TRAIN="--data $t/tr.csv --batch 64 --steps $STEPS --seed 7"

# the reference: one uninterrupted run
"$F" train "$SPEC" $TRAIN -o "$t/ref.ckpt" 2>/dev/null || bad "reference run"
"$F" logprob "$t/ref.ckpt" --data "$t/te.csv" -o "$t/ref.csv"

# SIGTERM and SIGINT: exit 128 + signal, a loadable checkpoint, resumable
for sig in TERM INT; do
    "$F" train "$SPEC" --data "$t/tr.csv" --batch 64 --steps 100000000 \
        -o "$t/sig.ckpt" 2>"$t/err" &
    pid=$!
    # wait until training is under way (the first epoch line)
    i=0
    while [ $i -lt 100 ] && ! grep -q "^epoch" "$t/err"; do sleep 0.1; i=$((i + 1)); done
    kill -$sig $pid
    wait $pid
    rc=$?
    want=143
    [ $sig = INT ] && want=130
    [ $rc -eq $want ] && ok || bad "SIG$sig: exit $rc, expected $want"
    grep -q "interrupted by signal" "$t/err" && ok || bad "SIG$sig: no message"
    "$F" info "$t/sig.ckpt" >/dev/null 2>&1 && ok || bad "SIG$sig: checkpoint does not load"
done

# SIGKILL at random moments, resuming from the last checkpoint each time
seed=1
kills=0
while [ $kills -lt 50 ]; do
    if [ -e "$t/run.ckpt" ]; then
        "$F" info "$t/run.ckpt" >/dev/null 2>&1 || bad "after kill $kills: checkpoint does not load"
        set -- --resume "$t/run.ckpt"
    else
        set --
    fi
    "$F" train "$SPEC" $TRAIN --checkpoint-every 1 "$@" -o "$t/run.ckpt" 2>/dev/null &
    pid=$!
    delay=$(awk -v s=$seed 'BEGIN { srand(s); printf "%.3f", 0.01 + rand() * 0.1 }')
    seed=$((seed + 1))
    sleep "$delay"
    if kill -9 $pid 2>/dev/null; then
        kills=$((kills + 1))
        wait $pid 2>/dev/null
    else
        wait $pid 2>/dev/null || bad "a resumed run failed"
        break                   # the run completed between two kills
    fi
    ls "$t" | grep -q "run.ckpt.tmp" && bad "a temporary checkpoint file was left"
    rm -f "$t"/run.ckpt.tmp*
done
echo "crash: $kills kills landed, each followed by a check and a resume"
[ $kills -ge 20 ] && ok || bad "only $kills kills landed"
# finish the run and compare with the uninterrupted one
"$F" train "$SPEC" $TRAIN --checkpoint-every 1 --resume "$t/run.ckpt" -o "$t/run.ckpt" 2>/dev/null \
    || bad "final resume"
"$F" logprob "$t/run.ckpt" --data "$t/te.csv" -o "$t/run.csv"
if cmp -s "$t/ref.csv" "$t/run.csv"; then ok; else
    bad "the run killed $kills times and resumed differs from the uninterrupted one"; fi

echo "crash: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
