#!/bin/sh
# editors.sh - the editor support under editors/: Vim's syntax file and
# ftdetect, Emacs's flow-mode and the TextMate grammar.  Each is loaded by
# its editor (or, for the grammar, by tests/tmgrammar.py) on specs/*.flow
# and a spec with every lexical form, and must report the expected
# highlight group, face or scope at chosen places; the keyword lists must
# be the scanner's (compiler/lexer.l) and the layer and target lists those
# of the bundled plugins (`flowkit plugins --json`), so none can drift.
# Emacs indentation must reproduce the layout of every spec under specs/.
# Run by make check with FLOWKIT, FLOW_PLUGIN_PATH, FLOW_SPEC_PLUGINS and
# top_srcdir set; vim, python3 and (outside CI) emacs are needed.
set -u
. "$top_srcdir/tests/lib.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
E=$top_srcdir/editors
S=$top_srcdir/specs
TM=$E/textmate/flow.tmLanguage.json
check_log=$t/err

# ---- word lists: the scanner's keywords, the bundled plugins' types ----
sed -n '/^static const struct { const char \*s; int tok; } keywords/,/^};/p' \
    "$top_srcdir/compiler/lexer.l" | grep -o '"[a-z_]*"' | tr -d '"' \
    | sed 's/^/keyword /' | sort >"$t/kw"
truth "lexer keywords found" "$(wc -l <"$t/kw") >= 14"
# the plugins of the build tree only: an installed flowkit's directory is
# searched too, and a user's own plugins there are not bundled ones
"$FLOWKIT" plugins --json >"$t/plugins.json" 2>"$t/err"
check "flowkit plugins --json" 0 $?
python3 -c '
import json, os, sys
d = os.path.realpath(sys.argv[1])
for p in json.load(open(sys.argv[2]))["plugins"]:
    if os.path.dirname(os.path.realpath(p["file"])) == d:
        for kind in ("layers", "targets"):
            for t in p[kind]:
                print(kind[:-1], t["name"])
' "$FLOW_PLUGIN_PATH" "$t/plugins.json" | sort >"$t/types"
truth "bundled layer types found" "$(grep -c '^layer ' "$t/types") >= 10"
sort "$t/kw" "$t/types" >"$t/want"

# vim: the words of `syn keyword flowKeyword|flowLayer|flowTarget` lines
awk '$1 == "syn" && $2 == "keyword" {
        k = $3 == "flowKeyword" ? "keyword" : $3 == "flowLayer" ? "layer" \
          : $3 == "flowTarget" ? "target" : ""
        if (k != "") for (i = 4; i <= NF && $i !~ /=/; i++) print k, $i
     }' "$E/vim/syntax/flow.vim" | sort >"$t/vim_words"
same_file "vim syntax: keywords and bundled types" "$t/want" "$t/vim_words"
# emacs: the strings of the defconsts flow-keywords, -layers, -targets
awk '/^\(defconst flow-(keywords|layers|targets)$/ {
        k = substr($2, 6); sub(/s$/, "", k)
        on = 1; next }
     on { n = split($0, w, "\""); for (i = 2; i <= n; i += 2) print k, w[i]
          if ($0 ~ /\)\)/) on = 0 }' "$E/emacs/flow-mode.el" \
    | sort >"$t/el_words"
same_file "emacs mode: keywords and bundled types" "$t/want" "$t/el_words"
python3 "$top_srcdir/tests/tmgrammar.py" "$TM" names 2>"$t/err" \
    | sort >"$t/tm_words"
same_file "textmate grammar: keywords and bundled types" "$t/want" \
    "$t/tm_words"

# the VS Code manifest: the grammar's scope and file, the project's version
version=$(sed -n 's/^AC_INIT(\[flowkit\], \[\([^]]*\)\].*/\1/p' \
          "$top_srcdir/configure.ac")
python3 -c '
import json, os, sys
d = os.path.dirname(sys.argv[1])
m = json.load(open(os.path.join(d, "package.json")))
g = m["contributes"]["grammars"][0]
lang = m["contributes"]["languages"][0]
json.load(open(os.path.join(d, lang["configuration"])))
print(m["version"], g["scopeName"], g["path"], lang["extensions"][0])
' "$TM" >"$t/out" 2>"$t/err"
check "vscode manifest loads" 0 $?
same "vscode manifest" "$version source.flow ./flow.tmLanguage.json .flow" \
    "$(cat "$t/out")"

# Every lexical form once: block and line comments, a constant, a block,
# strings with good and bad escapes, reals of every form, a target.
cat >"$t/all.flow" <<'SPEC'
/* a spec with
   every form */ const H = 2 * 64;
# a line comment
block cpl(p) {
    coupling(mask = parity(p), label = "a \"b\" \x41\q", hidden = [H, H]);
}
flow f {
    input x : real[2] in [-3, 3];
    repeat 2 as i { cpl(i % 2); }
    exit 1 -> z1 ~ normal;
    output z ~ mixture(k = 8);
    train { lr = .5e-3; clip = 2.; warmup = 3E+2; }
    target banana(scale = 1.5, flag = true);
}
SPEC
printf 'flow x {\n    input x : real[2];\n    tcoupling;\n}\n' >"$t/user.flow"

# count NAME: each line of $t/res ("ok", or what went wrong) is a check;
# no line at all means the editor or tool did not run
count() {
    if [ ! -s "$t/res" ]; then
        bad "$1: no results"; cat "$t/err"; return
    fi
    while IFS= read -r r; do
        case "$r" in ok) ok ;; *) bad "$1: $r" ;; esac
    done <"$t/res"
}

# ---- the TextMate grammar ----------------------------------------------
# tm_checks NAME SPEC: the scope at each "NEEDLE<TAB>SCOPE" of standard
# input
tm_checks() {
    python3 "$top_srcdir/tests/tmgrammar.py" "$TM" scopes "$2" \
        >"$t/res" 2>"$t/err"
    count "$1"
}
tm_checks "textmate moons.flow" "$S/moons.flow" <<'Q'
// moons.flow	comment.line.double-slash.flow
flow moons	keyword.control.flow
moons {	entity.name.function.flow
repeat 8	keyword.control.flow
8 as	constant.numeric.integer.flow
coupling(	support.function.layer.flow
hidden =	variable.parameter.attribute.flow
1e-3	constant.numeric.float.flow
normal;	support.type.base.flow
real[	storage.type.flow
Q
tm_checks "textmate all forms" "$t/all.flow" <<'Q'
every form	comment.block.flow
const H	keyword.control.flow
H = 2	variable.other.constant.flow
# a line	comment.line.number-sign.flow
cpl(p)	entity.name.function.flow
"a \"	string.quoted.double.flow
\"b	constant.character.escape.flow
\x41	constant.character.escape.flow
\q	invalid.illegal.escape.flow
, hidden	punctuation.separator.comma.flow
-> z1	keyword.operator.arrow.flow
mixture	support.type.base.flow
.5e-3	constant.numeric.float.flow
2.;	constant.numeric.float.flow
3E+2	constant.numeric.float.flow
banana	support.function.target.flow
scale	variable.parameter.attribute.flow
true	constant.language.boolean.flow
Q

# ---- Vim ---------------------------------------------------------------
# vim_checks NAME SPEC: Vim with only editors/vim on its runtime path
# opens SPEC: its filetype, then the group at each "NEEDLE<TAB>GROUP" of
# standard input ('' for none)
cat >"$t/probe.vim" <<'VIM'
set rtp^=$FLOW_EDITORS/vim
filetype on
syntax on
execute 'edit' fnameescape($FLOW_SPEC)
let g:out = [&filetype ==# 'flow' ? 'ok' : 'FAIL: filetype ' . &filetype]
for s:q in readfile($FLOW_QUERIES)
  let [s:needle, s:want] = split(s:q, "\t", 1)
  call cursor(1, 1)
  let [s:l, s:c] = searchpos('\V\C' . escape(s:needle, '\'), 'cW')
  let s:got = s:l ? synIDattr(synID(s:l, s:c, 1), 'name') : '(not found)'
  call add(g:out, s:got ==# s:want ? 'ok' : printf('%s at %d:%d is %s,'
        \ . ' expected %s', s:needle, s:l, s:c, s:got, s:want))
endfor
call writefile(g:out, $FLOW_OUT)
qall!
VIM
vim_checks() {
    cat >"$t/queries"
    rm -f "$t/res"
    FLOW_EDITORS=$E FLOW_SPEC=$2 FLOW_QUERIES=$t/queries FLOW_OUT=$t/res \
        vim -u NONE -N -es --cmd "let g:flow_query_plugins = $query" \
        -S "$t/probe.vim" </dev/null >"$t/err" 2>&1
    count "$1"
    if grep -q 'E[0-9][0-9]*:' "$t/err"; then
        bad "$1: vim reported errors:"; cat "$t/err"; else ok; fi
}
# A `flowkit` on $PATH that finds a user's plugin (tests/specplugins):
# with query=1 the editors ask it for the layer types.
mkdir "$t/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$FLOWKIT" >"$t/bin/flowkit"
chmod +x "$t/bin/flowkit"
user_path=$t/bin:$PATH
user_plugins=$FLOW_PLUGIN_PATH:$FLOW_SPEC_PLUGINS
saved_path=$PATH
saved_plugins=$FLOW_PLUGIN_PATH

if command -v vim >/dev/null 2>&1; then
    query=0
    vim_checks "vim moons.flow" "$S/moons.flow" <<'Q'
// moons.flow	flowComment
flow moons	flowKeyword
moons {	flowDefName
repeat 8	flowKeyword
8 as	flowNumber
coupling(	flowLayer
hidden =	flowAttribute
1e-3	flowFloat
normal;	flowBase
real[	flowType
Q
    vim_checks "vim all forms" "$t/all.flow" <<'Q'
every form	flowComment
const H	flowKeyword
H = 2	flowConstName
# a line	flowComment
cpl(p)	flowDefName
"a \"	flowString
\"b	flowEscape
\x41	flowEscape
\q	flowEscapeError
-> z1	flowOperator
mixture	flowBase
.5e-3	flowFloat
2.;	flowFloat
3E+2	flowFloat
banana	flowTarget
scale	flowAttribute
true	flowBoolean
Q
    # a user's plugin type: plain text alone, a layer once flowkit is asked
    PATH=$user_path FLOW_PLUGIN_PATH=$user_plugins
    vim_checks "vim user type, not asked" "$t/user.flow" <<'Q'
tcoupling	
Q
    query=1
    vim_checks "vim user type from flowkit plugins" "$t/user.flow" <<'Q'
tcoupling	flowLayer
Q
    PATH=$saved_path FLOW_PLUGIN_PATH=$saved_plugins
else
    bad "vim not found (./quickstart installs it)"
fi

# ---- Emacs -------------------------------------------------------------
# el_checks NAME SPEC: `emacs --batch -l editors/emacs/flow-mode.el` opens
# SPEC: its major mode, then the face at each "NEEDLE<TAB>FACE" of
# standard input (nil for none)
cat >"$t/probe.el" <<'EL'
(defun probe-face-ok (want pos)
  (let ((f (get-text-property pos 'face)))
    (cond ((null want) (null f))
          ((listp f) (memq want f))
          (t (eq want f)))))
(find-file (getenv "FLOW_SPEC"))
(font-lock-ensure)
(let ((case-fold-search nil)
      (out (list (if (eq major-mode 'flow-mode) "ok"
                   (format "major mode %s" major-mode)))))
  (dolist (q (with-temp-buffer
               (insert-file-contents (getenv "FLOW_QUERIES"))
               (split-string (buffer-string) "\n" t)))
    (let* ((nf (split-string q "\t"))
           (want (intern (nth 1 nf))))
      (goto-char (point-min))
      (push (cond
             ((not (search-forward (car nf) nil t))
              (format "%s not found" (car nf)))
             ((probe-face-ok want (match-beginning 0)) "ok")
             (t (format "%s at %d:%d is %S, expected %s" (car nf)
                        (line-number-at-pos (match-beginning 0))
                        (save-excursion (goto-char (match-beginning 0))
                                        (1+ (current-column)))
                        (get-text-property (match-beginning 0) 'face)
                        want)))
            out)))
  (with-temp-file (getenv "FLOW_OUT")
    (insert (mapconcat #'identity (nreverse out) "\n") "\n")))
EL
# Each spec with its indentation removed, indented again by flow-mode.
cat >"$t/indent.el" <<'EL'
(let (out)
  (dolist (f (directory-files (getenv "FLOW_SPECS") t "\\.flow\\'"))
    (with-temp-buffer
      (insert-file-contents f)
      (let ((want (split-string (buffer-string) "\n")))
        (goto-char (point-min))
        (while (re-search-forward "^[ \t]+" nil t) (replace-match ""))
        (flow-mode)
        (indent-region (point-min) (point-max))
        (let ((got (split-string (buffer-string) "\n")) (n 1) bad)
          (while (and want (not bad))
            (unless (equal (car want) (car got))
              (setq bad (format "%s:%d: got '%s', expected '%s'"
                                (file-name-nondirectory f) n
                                (car got) (car want))))
            (setq want (cdr want) got (cdr got) n (1+ n)))
          (push (or bad "ok") out)))))
  (with-temp-file (getenv "FLOW_OUT")
    (insert (mapconcat #'identity (nreverse out) "\n") "\n")))
EL
el_run() {
    rm -f "$t/res"
    FLOW_OUT=$t/res emacs -Q --batch \
        --eval "(setq flow-query-plugins $query)" \
        -l "$E/emacs/flow-mode.el" "$@" </dev/null >"$t/err" 2>&1
}
el_checks() {
    cat >"$t/queries"
    FLOW_SPEC=$2 FLOW_QUERIES=$t/queries el_run -l "$t/probe.el"
    count "$1"
}

if command -v emacs >/dev/null 2>&1; then
    query=nil
    el_checks "emacs moons.flow" "$S/moons.flow" <<'Q'
moons.flow - RealNVP	font-lock-comment-face
flow moons	font-lock-keyword-face
moons {	font-lock-function-name-face
repeat 8	font-lock-keyword-face
8 as	font-lock-constant-face
coupling(	font-lock-builtin-face
hidden =	font-lock-variable-name-face
1e-3	font-lock-constant-face
normal;	font-lock-type-face
real[	font-lock-type-face
Q
    el_checks "emacs all forms" "$t/all.flow" <<'Q'
every form	font-lock-comment-face
const H	font-lock-keyword-face
H = 2	font-lock-constant-face
a line	font-lock-comment-face
cpl(p)	font-lock-function-name-face
a \"	font-lock-string-face
\"b	flow-escape-face
\x41	flow-escape-face
mixture	font-lock-type-face
.5e-3	font-lock-constant-face
2.;	font-lock-constant-face
3E+2	font-lock-constant-face
banana	font-lock-builtin-face
scale	font-lock-variable-name-face
true	font-lock-constant-face
Q
    # compiles without a warning
    cp "$E/emacs/flow-mode.el" "$t/"
    emacs -Q --batch --eval '(setq byte-compile-error-on-warn t)' \
        -f batch-byte-compile "$t/flow-mode.el" >"$t/err" 2>&1
    check "emacs byte-compiles flow-mode.el" 0 $?
    FLOW_SPECS=$S el_run -l "$t/indent.el"
    count "emacs indentation of specs/"
    PATH=$user_path FLOW_PLUGIN_PATH=$user_plugins
    el_checks "emacs user type, not asked" "$t/user.flow" <<'Q'
tcoupling	nil
Q
    query=t
    el_checks "emacs user type from flowkit plugins" "$t/user.flow" <<'Q'
tcoupling	font-lock-builtin-face
Q
    PATH=$saved_path FLOW_PLUGIN_PATH=$saved_plugins
elif [ "${CI:-}" = true ]; then
    bad "emacs not found: ./quickstart installs emacs-nox"
else
    echo "emacs not found: its checks skipped (./quickstart installs emacs-nox)"
fi

finish editors
