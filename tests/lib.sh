# lib.sh - the helpers every test script shares, sourced after `set -u`:
# the pass/fail counters, the checks that count into them, the summary line.
#
# Each check takes a NAME first and, when it fails, prints "FAIL: NAME: ..."
# with what it got.  A script whose commands write their diagnostics to one
# file sets check_log to it (check_log=$t/err): a failed `check` shows it.

pass=0
fail=0
check_log=

# ok: one check passed.  bad MESSAGE: one failed, and why.
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

# check NAME EXPECTED_RC ACTUAL_RC: a command's exit status
check() {
    if [ "$2" = "$3" ]; then ok; else
        bad "$1: exit $3, expected $2"
        if [ -n "$check_log" ] && [ -f "$check_log" ]; then
            cat "$check_log"
        fi
    fi
}

# has NAME FILE TEXT: FILE contains TEXT (a fixed string)
has() {
    if grep -qF -- "$3" "$2"; then ok; else
        bad "$1: output lacks '$3':"; cat "$2"; fi
}

# same NAME EXPECTED ACTUAL: two strings are equal (values of several
# lines are shown one block after the other)
same() {
    if [ "$2" = "$3" ]; then ok; return; fi
    case "$2$3" in
    *'
'*) bad "$1:"; printf '%s\n' '--- expected' "$2" '--- got' "$3" ;;
    *) bad "$1: got '$3', expected '$2'" ;;
    esac
}

# same_file NAME EXPECTED_FILE ACTUAL_FILE: byte-identical files ("-" for
# standard input).  With same_file_update=1 (golden.sh --update) a
# differing EXPECTED_FILE is first replaced by ACTUAL_FILE.
same_file() {
    if [ "${same_file_update:-0}" = 1 ] && ! cmp -s "$2" "$3"; then
        cp "$3" "$2"; echo "updated $2"
    fi
    if cmp -s "$2" "$3"; then ok; else
        bad "$1: output differs from $2:"
        if [ "$2" != - ]; then diff -u "$2" "$3" | head -n 40; fi
    fi
}

# absent NAME PATH: PATH does not exist (a failed command left no output)
absent() {
    if [ ! -e "$2" ]; then ok; else bad "$1: $2 exists"; fi
}

# truth NAME AWK-CONDITION [FILE]: the condition holds; FILE is shown if not
truth() {
    if awk "BEGIN { exit !($2) }"; then ok; else
        bad "$1: not ($2)"
        if [ $# -ge 3 ]; then cat "$3"; fi
    fi
}

# finish NAME: the summary line "NAME: N passed, M failed" (./quickstart
# parses it), then exit 0 if nothing failed, 1 otherwise
finish() {
    echo "$1: $pass passed, $fail failed"
    [ "$fail" -eq 0 ] && exit 0
    exit 1
}

# python_sanitizer_env: in a sanitizer build (TEST_CFLAGS), exports what
# a Python interpreter needs to load the ASan-built libraries: libasan
# preloaded (an interpreter not built with it does not load it first)
# and leak detection off (it would list the interpreter's own
# allocations); FLOWKIT_TEST_ASAN=1 tells the tests.  Returns 1 when the
# build is sanitized and there is no libasan.so to preload.
python_sanitizer_env() {
    case " ${TEST_CFLAGS:-} " in *fsanitize=address*) ;; *) return 0 ;; esac
    _asan=$(${CC:-cc} -print-file-name=libasan.so)
    [ -f "$_asan" ] || return 1
    LD_PRELOAD="$_asan${LD_PRELOAD:+:$LD_PRELOAD}"
    ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    FLOWKIT_TEST_ASAN=1
    export LD_PRELOAD ASAN_OPTIONS FLOWKIT_TEST_ASAN
}
