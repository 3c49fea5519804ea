/* parse.c - the glue around the generated scanner and parser: a source file,
 * one expression (plugin defaults) or --target text into the AST. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "parser.h"
#include "lexer.h"

/* Runs the parser over `text` with the given start token. */
static int run_parser(flow_compilation *c, int fi, const char *text,
                      size_t len, int start, parse_ctx *p)
{
    lex_state ls;
    yyscan_t scanner;
    YY_BUFFER_STATE buf;
    size_t before = c->n_errors;

    memset(&ls, 0, sizeof ls);
    ls.c = c;
    ls.file = fi;
    ls.start_token = start;
    ls.line = 1;
    ls.col = 1;
    memset(p, 0, sizeof *p);
    p->c = c;
    p->ls = &ls;
    if (setjmp(ls.fatal)) {
        /* the scanner's memory is in the arena: nothing to free */
        c->mem.failed = 1;
        return 1;
    }
    if (flowyylex_init_extra(&ls, &scanner) != 0) {
        c->mem.failed = 1;
        return 1;
    }
    buf = flowyy_scan_bytes(text, (int)len, scanner);
    if (!buf) {
        flowyylex_destroy(scanner);
        c->mem.failed = 1;
        return 1;
    }
    p->scanner = scanner;
    flowyyparse(scanner, p);
    flowyy_delete_buffer(buf, scanner);
    flowyylex_destroy(scanner);
    return (int)(c->n_errors - before);
}

/* Length of the valid UTF-8 sequence at s (RFC 3629 sec. 4: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 when invalid. */
static size_t utf8_len(const unsigned char *s, const unsigned char *end)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;                  /* overlong */
        else if (c == 0xED)
            hi = 0x9F;                  /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;                  /* overlong */
        else if (c == 0xF4)
            hi = 0x8F;                  /* above U+10FFFF */
    } else
        return 0;
    if ((size_t)(end - s) < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A NUL byte means binary data, and so does a byte sequence that is not
 * UTF-8: one located error instead of a flood. */
static int check_text(flow_compilation *c, int fi)
{
    const source_file *sf = &c->files[fi];
    const unsigned char *s = (const unsigned char *)sf->text;
    const unsigned char *end = s + sf->len, *bad = NULL;
    flow_loc loc = {fi, 1, 1, 1, 1};
    size_t k;
    while (s < end) {
        if (*s == '\0' || !(k = utf8_len(s, end))) {
            bad = s;
            break;
        }
        /* line ends as the lexer counts them: LF, CRLF and a lone CR */
        if (*s == '\n' || (*s == '\r' && (s + 1 == end || s[1] != '\n'))) {
            loc.line++;
            loc.col = 1;
        } else if (loc.col < INT_MAX - 4) {
            loc.col += (int)k;  /* columns count bytes, as the lexer's */
        }
        s += k;
    }
    if (!bad)
        return 0;
    loc.end_line = loc.line;
    loc.end_col = loc.col;
    if (*bad == '\0')
        diag_error(c, "F0012", loc, "a .flow spec is UTF-8 or ASCII text",
                   "file is not text (NUL byte at offset %zu)",
                   (size_t)(bad - (const unsigned char *)sf->text));
    else
        diag_error(c, "F0012", loc, "a .flow spec is UTF-8 or ASCII text",
                   "file is not text (invalid UTF-8: byte 0x%02x at offset "
                   "%zu)", *bad,
                   (size_t)(bad - (const unsigned char *)sf->text));
    return 1;
}

int parse_file(flow_compilation *c, int fi)
{
    parse_ctx p;
    int errs;
    if (c->files[fi].parsed)
        return 0;
    c->files[fi].parsed = 1;
    if (check_text(c, fi))
        return 1;
    errs = run_parser(c, fi, c->files[fi].text, c->files[fi].len, START_FILE,
                      &p);
    c->files[fi].items = p.items;
    return errs;
}

expr *parse_expr_string(flow_compilation *c, const char *text, char *err,
                        size_t cap)
{
    /* Defaults are parsed into a scratch compilation so that their
     * errors do not become diagnostics of the spec. */
    flow_compilation tmp;
    parse_ctx p;
    expr *e = NULL;
    int fi;

    memset(&tmp, 0, sizeof tmp);
    tmp.mem = c->mem;              /* allocate in c's arena ...           */
    fi = source_add(&tmp, "<default>", NULL, text, strlen(text));
    if (fi < 0)
        tmp.mem.failed = 1;        /* out of memory: fails c too */
    if (fi >= 0 && run_parser(&tmp, fi, text, strlen(text), START_EXPR, &p)
                       == 0)
        e = p.expr;
    if (!e)
        snprintf(err, cap, "%s", tmp.n_diags ? tmp.diags[0].pub.message
                                             : "out of memory");
    c->mem = tmp.mem;              /* ... and hand the chunks back        */
    free(tmp.files);
    free(tmp.diags);
    return e;
}

/* --target TEXT: a target statement without the keyword, parsed as one
 * expression (NAME or NAME(args)) from a source file of its own. */
stmt *parse_target_text(flow_compilation *c, const char *text)
{
    parse_ctx p;
    stmt *s;
    expr *e;
    int fi = source_add(c, "<--target>", NULL, text, strlen(text));
    if (fi < 0) {
        c->mem.failed = 1;
        return NULL;
    }
    c->files[fi].parsed = 1;
    if (check_text(c, fi)
        || run_parser(c, fi, text, strlen(text), START_EXPR, &p) != 0
        || !(e = p.expr))
        return NULL;
    if (e->kind != E_NAME && e->kind != E_CALL) {
        diag_error(c, "F0704", e->loc, "write NAME or NAME(attr = value, "
                   "...), e.g. funnel(scale = 3)", "--target: expected a "
                   "target type and its attributes");
        return NULL;
    }
    if (!(s = arena_alloc(&c->mem, sizeof *s)))
        return NULL;
    s->kind = S_TARGET;
    s->loc = e->loc;
    s->name = e->s;
    s->name_loc = e->loc;
    s->name_loc.end_line = e->loc.line;
    s->name_loc.end_col = e->loc.col + (int)strlen(e->s) - 1;
    s->args = e->args;
    s->n = e->n;
    s->has_parens = e->kind == E_CALL;
    return s;
}
