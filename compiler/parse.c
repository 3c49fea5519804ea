/* parse.c - the compiler driver: reading source files, running the
 * generated scanner and parser over them, and the flow_compile_* entry
 * points that chain parsing, semantic analysis and verification. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "parser.h"
#include "lexer.h"

int parse_add_file(flow_compilation *c, const char *path, const char *real,
                   const char *text, size_t len)
{
    source_file *sf;
    if (c->n_files == c->cap_files) {
        size_t cap = c->cap_files ? 2 * c->cap_files : 4;
        source_file *nf = realloc(c->files, cap * sizeof *nf);
        if (!nf)
            return -1;
        c->files = nf;
        c->cap_files = cap;
    }
    sf = &c->files[c->n_files];
    memset(sf, 0, sizeof *sf);
    sf->path = arena_strdup(&c->mem, path);
    sf->real = real ? arena_strdup(&c->mem, real) : sf->path;
    sf->text = arena_strndup(&c->mem, text ? text : "", text ? len : 0);
    sf->len = text ? len : 0;
    if (!sf->path || !sf->real || !sf->text)
        return -1;
    return (int)c->n_files++;
}

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
        if (*s == '\n') {
            loc.line++;
            loc.col = 1;
        } else if (loc.col < INT_MAX - 4) {
            loc.col += (int)k;          /* columns count bytes, as the lexer's */
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
    fi = parse_add_file(&tmp, "<default>", NULL, text, strlen(text));
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
    int fi = parse_add_file(c, "<--target>", NULL, text, strlen(text));
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

/* --- entry points ----------------------------------------------------- */

static flow_compilation *new_compilation(flow_ctx *ctx)
{
    flow_compilation *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ctx = ctx;
    c->graph.c = c;
    return c;
}

static flow_compilation *compile(flow_compilation *c)
{
    if (c->n_files > 0 && c->n_errors == 0)
        sema_run(c);
    if (c->mem.failed) {
        flow_compile_free(c);
        return NULL;
    }
    c->ok = c->n_errors == 0 && c->n_files > 0;
    return c;
}

/* Reads a whole file, refusing more than FLOW_MAX_FILE_BYTES; returns 0
 * or an errno-like code (EFBIG for too large). */
int parse_read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int err = 0;

    *text = NULL;
    *len = 0;
    if (!f)
        return errno ? errno : EIO;
    for (;;) {
        size_t got;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 8192;
            char *nb;
            if (cap > FLOW_MAX_FILE_BYTES) {
                err = EFBIG;
                break;
            }
            if (!(nb = realloc(buf, nc + 1))) {
                err = ENOMEM;
                break;
            }
            buf = nb;
            cap = nc;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                err = errno ? errno : EIO;
            break;
        }
    }
    if (!err && n > FLOW_MAX_FILE_BYTES)
        err = EFBIG;
    fclose(f);
    if (err) {
        free(buf);
        return err;
    }
    if (!buf && !(buf = malloc(1)))
        return ENOMEM;
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

static flow_compilation *compile_string(flow_ctx *ctx, const char *name,
                                        const char *text, size_t len,
                                        const char *target);

flow_compilation *flow_compile_string(flow_ctx *ctx, const char *name,
                                      const char *text, size_t len)
{
    return compile_string(ctx, name, text, len, NULL);
}

flow_compilation *flow_compile_string_target(flow_ctx *ctx, const char *name,
                                             const char *text, size_t len,
                                             const char *target)
{
    return compile_string(ctx, name, text, len, target);
}

static flow_compilation *compile_string(flow_ctx *ctx, const char *name,
                                        const char *text, size_t len,
                                        const char *target)
{
    flow_compilation *c = new_compilation(ctx);
    char real[PATH_MAX];
    int fi;
    if (!c)
        return NULL;
    if (len > FLOW_MAX_FILE_BYTES) {
        fi = parse_add_file(c, name, NULL, "", 0);
        if (fi >= 0)
            diag_error(c, "F0010", ((flow_loc){fi, 0, 0, 0, 0}), NULL,
                       "spec is larger than %u bytes",
                       (unsigned)FLOW_MAX_FILE_BYTES);
        return compile(c);
    }
    fi = parse_add_file(c, name, realpath(name, real) ? real : NULL, text,
                        len);
    if (fi < 0) {
        flow_compile_free(c);
        return NULL;
    }
    parse_file(c, fi);
    if (target && (c->cmdline_target = arena_strdup(&c->mem, target)))
        c->cmdline_stmt = parse_target_text(c, target);
    return compile(c);
}

flow_compilation *flow_compile_file(flow_ctx *ctx, const char *path)
{
    return flow_compile_file_target(ctx, path, NULL);
}

flow_compilation *flow_compile_file_target(flow_ctx *ctx, const char *path,
                                           const char *target)
{
    flow_compilation *c;
    char *text;
    size_t len;
    int err = parse_read_file(path, &text, &len);
    if (err == ENOMEM)
        return NULL;
    if (err) {
        int fi;
        if (!(c = new_compilation(ctx)))
            return NULL;
        fi = parse_add_file(c, path, NULL, "", 0);
        if (fi < 0) {
            flow_compile_free(c);
            return NULL;
        }
        diag_error(c, "F0010", ((flow_loc){fi, 0, 0, 0, 0}), NULL,
                   "cannot read spec: %s", err == EFBIG
                   ? "file is larger than 1 MiB" : strerror(err));
        return compile(c);
    }
    c = compile_string(ctx, path, text, len, target);
    free(text);
    return c;
}

void flow_compile_free(flow_compilation *c)
{
    if (!c)
        return;
    arena_free(&c->mem);
    free(c->files);
    free(c->diags);
    free(c);
}

const flow_graph *flow_compile_graph(const flow_compilation *c)
{
    return c && c->ok ? &c->graph : NULL;
}
