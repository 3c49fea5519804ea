# tmgrammar.py - a small TextMate tokenizer for tests/editors.sh: checks
# that a grammar's regexes compile and reports the scopes at given places.
#
#   tmgrammar.py GRAMMAR names          the words of its keyword, layer and
#                                       target rules, "KIND WORD" a line
#   tmgrammar.py GRAMMAR scopes FILE    reads "NEEDLE<TAB>SCOPE" lines on
#                                       stdin: "ok" or "FAIL ..." for each
#
# Python's re accepts the Oniguruma subset these grammars keep to (no \h,
# no possessive quantifiers, no \G); a rule outside it fails to compile
# here, which is the point.  Exit 1 on a grammar that does not load.
import json
import re
import sys


def load(path):
    g = json.load(open(path, encoding="utf-8"))
    if g.get("scopeName") != "source.flow":
        sys.exit("%s: scopeName is %r, not 'source.flow'" %
                 (path, g.get("scopeName")))
    rules = []

    def walk(r, where):
        for k in ("match", "begin", "end"):
            if k in r:
                try:
                    r["_" + k] = re.compile(r[k])
                except re.error as e:
                    sys.exit("%s: %s.%s does not compile: %s" %
                             (path, where, k, e))
        rules.append(r)
        for i, sub in enumerate(r.get("patterns", [])):
            walk(sub, "%s.patterns[%d]" % (where, i))

    walk(g, "grammar")
    for name, r in g.get("repository", {}).items():
        walk(r, "repository." + name)
    return g


def flatten(g, patterns):
    """The match and begin rules of a pattern list, includes expanded."""
    out = []
    for r in patterns:
        inc = r.get("include")
        if inc == "$self":
            out += flatten(g, g["patterns"])
        elif inc is not None:
            out += flatten(g, [g["repository"][inc[1:]]])
        elif "_match" in r or "_begin" in r:
            out.append(r)
        else:
            out += flatten(g, r.get("patterns", []))
    return out


def paint(scopes, m, name, captures):
    if name:
        for i in range(m.start(), m.end()):
            scopes[i] = scopes[i] + [name]
    for k, c in (captures or {}).items():
        k = int(k)
        if m.group(k) is not None and "name" in c:
            for i in range(m.start(k), m.end(k)):
                scopes[i] = scopes[i] + [c["name"]]


def tokenize(g, text):
    """The scope list of every character of every line."""
    stack = []                          # open begin/end rules
    result = []
    for line in text.split("\n"):
        base = [r["name"] for r in stack if "name" in r]
        scopes = [list(base) for _ in line]
        pos = 0
        while pos <= len(line):
            pats = flatten(g, stack[-1].get("patterns", []) if stack
                           else g["patterns"])
            best = None
            if stack:
                m = stack[-1]["_end"].search(line, pos)
                if m:
                    best = (m.start(), 0, m, None)
            for i, r in enumerate(pats):
                m = (r.get("_match") or r["_begin"]).search(line, pos)
                if m and (best is None or m.start() < best[0]):
                    best = (m.start(), i + 1, m, r)
            if best is None:
                break
            _, _, m, r = best
            if r is None:               # the open rule ends here
                top = stack.pop()
                for i in range(m.end(), len(line)):
                    if "name" in top:
                        scopes[i].remove(top["name"])
                paint(scopes, m, None, top.get("endCaptures")
                      or top.get("captures"))
            elif "_match" in r:
                paint(scopes, m, r.get("name"), r.get("captures"))
            else:
                for i in range(m.start(), len(line)):
                    if "name" in r:
                        scopes[i].append(r["name"])
                paint(scopes, m, None, r.get("beginCaptures")
                      or r.get("captures"))
                stack.append(r)
            pos = m.end() if m.end() > m.start() else m.end() + 1
        result.append((line, scopes))
    return result


def alternatives(rule):
    """The words of a rule written \\b(?:w1|w2|...)\\b."""
    return rule["match"].split("(?:", 1)[1].split(")", 1)[0].split("|")


def names(g):
    for rule in g["repository"]["keywords"]["patterns"]:
        for w in alternatives(rule):
            print("keyword", w)
    kinds = {"support.function.layer.flow": "layer",
             "support.function.target.flow": "target"}
    for rule in g["repository"]["names"]["patterns"]:
        if rule["name"] in kinds:
            for w in alternatives(rule):
                print(kinds[rule["name"]], w)


def scopes(g, path):
    lines = tokenize(g, open(path, encoding="utf-8").read())
    for q in sys.stdin.read().splitlines():
        needle, want = q.split("\t")
        for line, sc in lines:
            at = line.find(needle)
            if at >= 0:
                got = sc[at]
                if want in got:
                    print("ok")
                else:
                    print("FAIL: %r: scopes %s, expected %s"
                          % (needle, " ".join(got) or "(none)", want))
                break
        else:
            print("FAIL: %r not in %s" % (needle, path))


g = load(sys.argv[1])
if sys.argv[2] == "names":
    names(g)
else:
    scopes(g, sys.argv[3])
