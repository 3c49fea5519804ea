#!/bin/sh
# crash.sh - crash safety of training: SIGTERM / SIGINT finish the step,
# write the checkpoint and exit 143 / 130; SIGKILL at 50 random moments
# never leaves a checkpoint that fails to load, and a run resumed after
# every kill ends bit-identical to an uninterrupted one with the same seed.
set -u
. "$top_srcdir/tests/lib.sh"
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
    # wait until training is under way (the first epoch line; up to 60 s
    # on a loaded machine: a SIGINT that reaches a background job before
    # flowkit installs its handler is ignored, as the shell set it up)
    i=0
    while [ $i -lt 600 ] && ! grep -q "^epoch" "$t/err"; do sleep 0.1; i=$((i + 1)); done
    kill -$sig $pid
    wait $pid
    rc=$?
    want=143
    [ $sig = INT ] && want=130
    [ $rc -eq $want ] && ok || bad "SIG$sig: exit $rc, expected $want"
    grep -q "interrupted by signal" "$t/err" && ok || bad "SIG$sig: no message"
    "$F" info "$t/sig.ckpt" >/dev/null 2>&1 && ok || bad "SIG$sig: checkpoint does not load"
done

# SIGKILL at 50 random moments, resuming from the last checkpoint each time.
# A run that completes between two kills (a fast machine) is compared with
# the reference and a new chain starts, until 50 kills have landed.
same_as_ref() {  # same_as_ref WHAT: run.ckpt's log-densities == the reference's
    "$F" logprob "$t/run.ckpt" --data "$t/te.csv" -o "$t/run.csv"
    if cmp -s "$t/ref.csv" "$t/run.csv"; then ok; else bad "$1"; fi
}
seed=1
kills=0
mid=0
chains=1
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
        same_as_ref "chain $chains (completed after $kills kills in all) differs from the uninterrupted run"
        rm -f "$t/run.ckpt"
        chains=$((chains + 1))
    fi
    # a kill while a checkpoint is written leaves its temporary file (no
    # process survives to remove it), never a partial run.ckpt: the check
    # above loads run.ckpt each time
    for f in "$t"/.run.ckpt.tmp.*; do
        [ -e "$f" ] && mid=$((mid + 1))
        rm -f "$f"
    done
done
echo "crash: $kills kills landed ($mid while a checkpoint was being written;" \
     "$chains chains), each followed by a check and a resume"
# finish the run and compare with the uninterrupted one
set --
[ -e "$t/run.ckpt" ] && set -- --resume "$t/run.ckpt"
"$F" train "$SPEC" $TRAIN --checkpoint-every 1 "$@" -o "$t/run.ckpt" 2>/dev/null \
    || bad "final resume"
same_as_ref "the run killed and resumed differs from the uninterrupted one"

finish crash
