#!/bin/bash
# completion.sh - the shell completion scripts (completions/): bash's
# completions of subcommands, options, option values and files, got by
# calling the registered function as bash does; every option and value
# that a --help shows is offered (a new option without completion fails
# here) and every option offered is one the command knows; zsh's scripts
# parse, compinit binds them, and they complete when zsh is installed.
set -u
. "$top_srcdir/tests/lib.sh"
# the expected lists below are in C collation order
LC_ALL=C
export LC_ALL
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
bashdir="$top_srcdir/completions/bash"
zshdir="$top_srcdir/completions/zsh"

. "$bashdir/flowkit"; check source-flowkit 0 $?
. "$bashdir/flowc"; check source-flowc 0 $?
same complete-flowkit "complete -F _flowkit flowkit" "$(complete -p flowkit)"
same complete-flowc "complete -F _flowc flowc" "$(complete -p flowc)"

# comp LINE: the completions of LINE (cursor at its end), sorted, on one
# line.  The words are split as readline splits them with the default
# COMP_WORDBREAKS ('=' a word of its own; with nosplit=1 as without '='
# in COMP_WORDBREAKS: part of the word); the first word names the
# command and is replaced by the build tree's program, which the
# completion functions run for plugin and data set names.
comp() {
    local s=$1 fn name
    [[ ${nosplit:-0} == 1 ]] || s=${s//=/ = }
    COMP_LINE=$1
    COMP_POINT=${#1}
    read -ra COMP_WORDS <<<"$s"
    [[ $1 == *' ' ]] && COMP_WORDS+=('')
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    name=${COMP_WORDS[0]}
    fn=$(complete -p "$name" | awk '{ print $3 }')
    case $name in
    flowkit) COMP_WORDS[0]=$FLOWKIT ;;
    flowc) COMP_WORDS[0]=$FLOWC ;;
    esac
    COMPREPLY=()
    "$fn" "$name" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}

# subcommands, options, fixed values
same cmd-tr "train" "$(comp 'flowkit tr')"
same cmd-e "encode eval export" "$(comp 'flowkit e')"
same global-opts "--help --version" "$(comp 'flowkit --')"
same help-cmd "check compare" "$(comp 'flowkit help c')"
same train-ep "--epochs" "$(comp 'flowkit train --ep')"
same train-ep-after-spec "--epochs" "$(comp 'flowkit train m.flow --ep')"
same fit-no-epochs "" "$(comp 'flowkit fit --ep')"
same schedule "constant cosine" "$(comp 'flowkit train m.flow --schedule ')"
same schedule-co "constant cosine" "$(comp 'flowkit fit m.flow --schedule co')"
same schedule-eq "cosine" "$(comp 'flowkit train --schedule=cos')"
same format "csv npy" "$(comp 'flowkit sample m.ckpt --format ')"
same number-no-files "" "$(comp 'flowkit train m.flow --epochs ')"
same params "all" "$(comp 'flowkit check coupling --params ')"
same data-sets "$("$FLOWKIT" data --list | sort | tr '\n' ' ' | sed 's/ $//')" \
    "$(comp 'flowkit data ')"
same data-m "moons" "$(comp 'flowkit data m')"
same targets "banana funnel gmm u1 u2 u3 u4" "$(comp 'flowkit fit m.flow --target ')"
same flowc-opt "--emit=" "$(comp 'flowc --em')"
same flowc-emit "c dot json" "$(comp 'flowc --emit=')"
same flowc-emit-d "dot" "$(comp 'flowc --emit=d')"
same flowc-diag "json text" "$(comp 'flowc --diagnostics=')"
same flowc-layer "permute" "$(comp 'flowc --layer=per')"

# files by position and option: .flow specs, .ckpt checkpoints, .csv and
# .npy data, .so plugins; directories everywhere a file goes
mkdir "$t/w" "$t/w/sub"
for f in a.flow b.flow m.ckpt d.csv d.npy notes.txt x.so; do : >"$t/w/$f"; done
cd "$t/w" || exit 1
same spec "a.flow b.flow sub" "$(comp 'flowkit train ')"
same spec-a "a.flow" "$(comp 'flowkit train a')"
same fit-spec "a.flow b.flow sub" "$(comp 'flowkit fit --steps 9 ')"
same second-positional "" "$(comp 'flowkit train a.flow ')"
same after-attr "" "$(comp "flowkit check coupling --attr transformer=spline ")"
same flag-eq "" "$(comp 'flowkit train --json=')"
same ckpt "m.ckpt sub" "$(comp 'flowkit eval ')"
same ckpt-after-opts "m.ckpt sub" "$(comp 'flowkit sample -n 5 --seed=3 ')"
same compare-ckpts "m.ckpt sub" "$(comp 'flowkit compare m.ckpt ')"
same data "d.csv d.npy sub" "$(comp 'flowkit train a.flow --data ')"
same data-eq "--data=d.csv --data=d.npy" "$(nosplit=1 comp 'flowkit eval --data=d')"
same data-eq-split "d.csv d.npy sub" "$(comp 'flowkit eval m.ckpt --data=')"
same valid "d.csv d.npy sub" "$(comp 'flowkit train a.flow --valid ')"
same out-ckpt "m.ckpt sub" "$(comp 'flowkit train a.flow -o ')"
same out-data "d.csv d.npy sub" "$(comp 'flowkit sample m.ckpt --output ')"
same resume "m.ckpt sub" "$(comp 'flowkit fit a.flow --resume ')"
same sample-context "d.csv d.npy sub" "$(comp 'flowkit sample m.ckpt --context ')"
same layer-co "conv1x1 coupling" "$(comp 'flowkit check co')"
same plugins-layer "maf" "$(comp 'flowkit plugins ma')"
same check-spec "a.flow" "$(comp 'flowkit check a.')"
same check-plugin "x.so" "$(comp 'flowkit check x')"
same check-plugin-opt "sub x.so" "$(comp 'flowkit check coupling --plugin ')"
same flowc-spec "a.flow b.flow sub" "$(comp 'flowc --report ')"
same flowc-out "a.flow b.flow d.csv d.npy m.ckpt notes.txt sub x.so" \
    "$(comp 'flowc a.flow -o ')"
same flowc-plugin "x.so" "$(comp 'flowc --plugin=x')"
cd "$top_builddir" || exit 1

# help_opts: the options a --help text on stdin documents: those of the
# usage lines (up to the first blank line; not in parentheses, "(or
# flowkit --version)" names another command) and those that open an
# option-table line ("  -o, --output CKPT", "  --dim D, --components K";
# not the deeper continuation lines)
help_opts() {
    awk '
        /^usage:/ { usage = 1 }
        usage && /^$/ { usage = 0 }
        usage {
            s = $0; gsub(/\([^)]*\)/, "", s)
            while (match(s, /(^|[ [|])--?[a-zA-Z][a-zA-Z0-9-]*/)) {
                o = substr(s, RSTART, RLENGTH); sub(/^[ [|]/, "", o)
                print o; s = substr(s, RSTART + RLENGTH)
            }
            next
        }
        /^ +-/ && !/^     / {
            s = $0; sub(/^ +/, "", s)
            while (match(s, /^--?[a-zA-Z][a-zA-Z0-9-]*/)) {
                print substr(s, 1, RLENGTH)
                s = substr(s, RLENGTH + 1)
                if (!match(s, /^( [A-Z][A-Z|,]*)?, /)) break
                s = substr(s, RLENGTH + 1)
            }
        }' | sort -u
}

# help_values: "OPT VALUE..." for each option whose help shows its values
# as "a | b" or "a|b" ("--schedule S  constant | cosine", "[--format
# csv|npy]", "[--precision fp32|bf16-gemm]")
help_values() {
    grep -oE -- '--?[a-z][a-z0-9-]*( [A-Z]+)? +[a-z0-9]+(-[a-z0-9]+)*( ?\| ?[a-z0-9]+(-[a-z0-9]+)*)+' \
        | sed -E 's/ [A-Z]+ / /; s/ *\| */ /g; s/  +/ /g' | sort -u
}

# Drift: every subcommand of `flowkit --help` and every option and value
# of its own --help is offered; every option offered is one it knows.
cmds=$("$FLOWKIT" --help | awk '/^commands:/ { on = 1; next }
    on && /^$/ { exit } on && /^  [a-z]/ { print $1 }')
n=$(echo "$cmds" | wc -w)
truth n-commands "$n >= 13"
offered=" $(comp 'flowkit ') "
for c in $cmds; do
    case $offered in *" $c "*) ok ;; *) bad "command $c not completed" ;; esac
done
for o in $("$FLOWKIT" --help | help_opts); do
    case " $(comp 'flowkit -') " in *" $o "*) ok ;;
    *) bad "flowkit $o not completed" ;; esac
done
n_opts=0
for c in $cmds; do
    [ "$c" = help ] && continue
    "$FLOWKIT" "$c" --help >"$t/help" 2>&1
    offered=" $(comp "flowkit $c -") "
    for o in $(help_opts <"$t/help"); do
        n_opts=$((n_opts + 1))
        case $offered in *" $o "*) ok ;;
        *) bad "flowkit $c: $o (in its --help) not completed" ;; esac
    done
    help_values <"$t/help" | while read -r o vals; do
        got=" $(comp "flowkit $c $o ") "
        for v in $vals; do
            case $got in *" $v "*) ;;
            *) echo "FAIL: flowkit $c $o: value $v not completed"; exit 1 ;;
            esac
        done
    done
    check "values-$c" 0 $?
    for o in $offered; do
        "$FLOWKIT" "$c" "$o" </dev/null >"$t/out" 2>&1
        if grep -q "unknown option" "$t/out"; then
            bad "flowkit $c: $o completed, but: $(head -n 1 "$t/out")"
        else ok; fi
    done
done
truth n-options "$n_opts >= 100"

# flowc: options as --name, --name=VALUE (values listed) or --name=WORD
"$FLOWC" --help >"$t/help" 2>&1
offered=" $(comp 'flowc -') "
n_opts=0
for o in $(sed -n 's/^ \{1,4\}\(-[^ ]*\).*/\1/p' "$t/help" | sort -u); do
    n_opts=$((n_opts + 1))
    name=${o%%=*}
    case $o in *=*) name=$name= ;; esac
    case $offered in *" $name "*) ok ;;
    *) bad "flowc $name (in its --help) not completed" ;; esac
    case $o in
    *=[a-z]*)
        case " $(comp "flowc $name") " in *" ${o#*=} "*) ok ;;
        *) bad "flowc $o: value not completed" ;; esac ;;
    esac
done
truth n-flowc-options "$n_opts >= 14"
for o in $offered; do
    case $o in *=) o=${o}x ;; esac
    "$FLOWC" "$o" </dev/null >"$t/out" 2>&1
    if grep -q "unknown option" "$t/out"; then
        bad "flowc: $o completed, but: $(head -n 1 "$t/out")"
    else ok; fi
done

# `make install` puts them where configure said (bash-completion's and
# zsh's directories by default; only the completion files are installed
# here: the programs' relinking is tests/install.sh's)
${MAKE:-make} -s -C "$top_builddir" install-bashcompletionDATA \
    install-zshcompletionDATA DESTDIR="$t/root" >"$t/out" 2>&1
check install 0 $?
for pair in bash:flowkit bash:flowc zsh:_flowkit zsh:_flowc; do
    grep -q "^${pair%%:*}completiondir = ..*" "$top_builddir/Makefile" \
        || continue
    got=$(find "$t/root" -type f -name "${pair#*:}")
    if [ -n "$got" ] && cmp -s "$got" \
            "$top_srcdir/completions/${pair%%:*}/${pair#*:}"; then ok
    else bad "${pair%%:*} completion ${pair#*:} not installed ($got)"; fi
done
# ... and bash-completion's on-demand loader finds them there (when the
# bash-completion package is installed)
bc=/usr/share/bash-completion/bash_completion
got=$(find "$t/root" -type f -path '*/bash-completion/completions/flowkit')
if [ -f "$bc" ] && [ -n "$got" ]; then
    for c in flowkit flowc; do
        out=$(XDG_DATA_DIRS=${got%/bash-completion/completions/flowkit} \
              bash -c '. "$1"; __load_completion "$2" && complete -p "$2"' \
              bash "$bc" "$c" 2>&1)
        same "bash-completion-loads-$c" "complete -F _$c $c" "$out"
    done
else
    echo "bash-completion not installed: its loader's check skipped"
fi

# zsh: the scripts parse, compinit binds them to the commands, and an
# interactive zsh on a pseudo-terminal completes through them (zcomp
# prints the matches its compadd is given; the work files as above)
if command -v zsh >/dev/null 2>&1; then
    for f in _flowkit _flowc; do
        zsh -n "$zshdir/$f" >"$t/out" 2>&1; check "zsh-n-$f" 0 $?
        [ -s "$t/out" ] && cat "$t/out"
    done
    zsh -f -c 'fpath=("$1" $fpath); autoload -Uz compinit
        compinit -u -D; print -r -- $_comps[flowkit] $_comps[flowc]' \
        zsh "$zshdir" >"$t/out" 2>&1
    same zsh-compinit "_flowkit _flowc" "$(cat "$t/out")"
    cat >"$t/zcomp.zsh" <<'EOF_Z'
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z 'stty -echo'
zpty -w z "fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z 'compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a hits; builtin compadd -O hits "$@"
  local h; for h in $hits; do print -r -- "<<M""|$h>>"; done
  builtin compadd "$@"
}'
zpty -w z '_done() { print -r -- "<<DO""NE>>"; exit }; comppostfuncs=(_done)'
zpty -n -w z "$2"$'\t'
out=
while zpty -r -t z chunk || sleep 0.05; do
  out+=$chunk
  [[ $out == *'<<DONE>>'* ]] && break
done
zpty -d z
print -r -- "$out" | tr -d '\r' | grep -o '<<M|[^>]*>>' \
  | sed 's/^<<M|\(.*\)>>$/\1/' | sort -u | tr '\n' ' ' | sed 's/ $//'
EOF_Z
    # zcomp LINE: what zsh offers for LINE, sorted, on one line
    zcomp() {
        (cd "$t/w" && PATH="$(dirname "$FLOWKIT"):$PATH" timeout 30 \
            zsh -f "$t/zcomp.zsh" "$zshdir" "$1")
    }
    same zsh-cmd-tr "train" "$(zcomp 'flowkit tr')"
    same zsh-train-ep "--epochs" "$(zcomp 'flowkit train a.flow --ep')"
    same zsh-schedule "constant cosine" "$(zcomp 'flowkit train a.flow --schedule ')"
    same zsh-spec "a.flow b.flow sub" "$(zcomp 'flowkit train ')"
    same zsh-ckpt "m.ckpt sub" "$(zcomp 'flowkit eval ')"
    same zsh-data "d.csv d.npy sub" "$(zcomp 'flowkit eval m.ckpt --data ')"
    same zsh-check "conv1x1 coupling" "$(zcomp 'flowkit check co')"
    same zsh-target "banana" "$(zcomp 'flowkit fit a.flow --target b')"
    same zsh-flowc-emit "c dot json" "$(zcomp 'flowc --emit=')"
    same zsh-flowc-spec "a.flow b.flow sub" "$(zcomp 'flowc --report ')"

    # drift: each subcommand's branch of _flowkit names every option of
    # its --help; _flowc every option of flowc's
    for c in $cmds; do
        [ "$c" = help ] && continue
        awk -v c="$c" '
            /^    [a-z|]+\)$/ { n = split(substr($1, 1, length($1) - 1), a, "|")
                              on = 0; for (i = 1; i <= n; i++) if (a[i] == c) on = 1 }
            on { print } on && /;;$/ { exit }' "$zshdir/_flowkit" >"$t/branch"
        for o in $("$FLOWKIT" "$c" --help | help_opts); do
            if grep -qE -- "(^|[^a-z0-9-])$o([^a-z0-9-]|\$)" "$t/branch"; then ok
            else bad "_flowkit: $c's $o (in its --help) not completed"; fi
        done
    done
    "$FLOWC" --help >"$t/help" 2>&1
    for o in $(sed -n 's/^ \{1,4\}\(-[^ =]*\).*/\1/p' "$t/help" | sort -u); do
        if grep -qE -- "(^|[^a-z0-9-])$o([^a-z0-9-]|\$)" "$zshdir/_flowc"; then ok
        else bad "_flowc: $o (in flowc's --help) not completed"; fi
    done
else
    echo "zsh not installed: its checks skipped"
fi

finish completion
