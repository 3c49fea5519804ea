#!/bin/sh
# man.sh - the manual pages (man/, written from docs/ by man/md2man.awk):
# each renders with groff and man without a warning, flowkit(1) has a
# section for every command `flowkit --help` lists and names every option
# each `flowkit CMD --help` prints (in that command's section when its
# usage or option list shows it), flowc(1) every option of `flowc --help`,
# flow(5) every keyword of the scanner's table, flowkit-plugin(7) the
# header it describes, and each page names the others.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
m="$top_builddir/man"
pages="flowkit.1 flowc.1 flow.5 flowkit-plugin.7"

for tool in groff man; do
    if command -v "$tool" >/dev/null 2>&1; then ok; else
        bad "$tool not found: install groff-base and man-db"; finish man; fi
done

# render PAGE: its text, as a reader sees it, in $t/PAGE.txt
bs=$(printf '\b')
for p in $pages; do
    if [ ! -s "$m/$p" ]; then bad "$p: not built in $m"; continue; fi
    groff -man -Tutf8 -ww -z "$m/$p" 2>"$t/warn"
    check "$p: groff -ww" 0 $?
    if [ ! -s "$t/warn" ]; then ok; else
        bad "$p: roff warnings:"; head -n 20 "$t/warn"; fi
    LC_ALL=C.UTF-8 MANWIDTH=100 MAN_KEEP_FORMATTING= man -l "$m/$p" \
        2>"$t/warn" | sed "s/.$bs//g" >"$t/$p.txt"
    if [ ! -s "$t/warn" ]; then ok; else
        bad "$p: man -l:"; head -n 20 "$t/warn"; fi
    name=${p%.*}
    has "$p: NAME" "$t/$p.txt" "$name - "
    n=$(wc -l <"$t/$p.txt")
    truth "$p: $n lines rendered" "$n >= 150"
    for o in $pages; do
        [ "$o" = "$p" ] && continue
        has "$p: SEE ALSO $o" "$t/$p.txt" "${o%.*}(${o##*.})"
    done
done

# section FILE WORD: the text of the sections whose heading has WORD
section() {
    awk -v w="$2" '/^[^ ]/ { n = split($0, a, /[^A-Za-z0-9_-]+/); in_ = 0
                             for (i = 1; i <= n; i++) if (a[i] == w) in_ = 1
                             next }
                   in_' "$1"
}
# mentions FILE OPTION: FILE names OPTION as a whole word
mentions() {
    grep -qE -e "(^|[^A-Za-z0-9-])$2([^A-Za-z0-9-]|\$)" "$1"
}
# options: the options a --help text on stdin names, one a line; with
# "listed", only those of its usage and option list lines
options() {
    if [ "${1:-}" = listed ]; then
        awk '/^usage:/ { u = 1 } u && /^$/ { u = 0 } u || /^ +-/' ; else cat; fi \
    | grep -oE -e '(^|[][ (,|`'"'"'])(--[a-z][a-z0-9-]*|-[a-zA-Z])([^A-Za-z0-9-]|$)' \
    | sed 's/^[^-]*//; s/[^a-z0-9-]$//' | sort -u
}

fk="$t/flowkit.1.txt"
"$FLOWKIT" --help >"$t/help" 2>&1
check "flowkit --help" 0 $?
awk '/^commands:/ { c = 1; next } c && /^$/ { exit }
     c && /^  [a-z]/ { print $1 }' "$t/help" >"$t/cmds"
n=$(wc -l <"$t/cmds")
truth "flowkit --help lists $n commands" "$n >= 14" "$t/help"
for o in $(options <"$t/help"); do
    if mentions "$fk" "$o"; then ok; else bad "flowkit(1) lacks $o (flowkit --help)"; fi
done
for c in $(cat "$t/cmds"); do
    up=$(printf '%s' "$c" | tr a-z A-Z)
    section "$fk" "$up" >"$t/sec"
    if [ -s "$t/sec" ]; then ok; else
        bad "flowkit(1) has no section for the command '$c'"; continue; fi
    [ "$c" = help ] && continue
    "$FLOWKIT" "$c" --help >"$t/chelp" 2>&1
    check "flowkit $c --help" 0 $?
    for o in $(options listed <"$t/chelp"); do
        if mentions "$t/sec" "$o"; then ok; else
            bad "flowkit(1), section $up, lacks $o (flowkit $c --help)"; fi
    done
    for o in $(options <"$t/chelp"); do
        if mentions "$fk" "$o"; then ok; else
            bad "flowkit(1) lacks $o (flowkit $c --help)"; fi
    done
done

# flowc(1): every option of flowc --help (--emit=json: the name before =)
"$FLOWC" --help >"$t/fchelp" 2>&1
check "flowc --help" 0 $?
k=0
for o in $(options <"$t/fchelp"); do
    k=$((k + 1))
    if mentions "$t/flowc.1.txt" "$o"; then ok; else
        bad "flowc(1) lacks $o (flowc --help)"; fi
done
truth "flowc --help names $k options" "$k >= 10" "$t/fchelp"

# flow(5): the keywords of the scanner's table, in the list of reserved words
grep -oE '\{"[a-z]+", [A-Z]+\}' "$top_srcdir/compiler/lexer.l" |
    sed 's/{"\([a-z]*\)".*/\1/' >"$t/kw"
n=$(wc -l <"$t/kw")
truth "lexer.l has $n keywords" "$n >= 14"
tr '\n' ' ' <"$t/flow.5.txt" | sed 's/.*Keywords (reserved)://; s/\. .*//' >"$t/kwtext"
for w in $(cat "$t/kw"); do
    if mentions "$t/kwtext" "$w"; then ok; else
        bad "flow(5): keyword '$w' not in its list of keywords:"; cat "$t/kwtext"; fi
done

# flowkit-plugin(7): the header, where it is installed
has "flowkit-plugin(7) names the header" "$t/flowkit-plugin.7.txt" "flow/flow_plugin.h"
has "flowkit-plugin(7): FILES" "$t/flowkit-plugin.7.txt" "$includedir/flow/flow_plugin.h"

finish man
