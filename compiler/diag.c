/* diag.c - diagnostics: recording with the error limit, "did you mean"
 * suggestions, and the text, terse and JSON renderings. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"

/* --- recording -------------------------------------------------------- */

int diag_stopped(const flow_compilation *c)
{
    return c->too_many;
}

void diag_report(flow_compilation *c, flow_severity sev, const char *code,
                 flow_loc loc, const char *help, const char *fmt, ...)
{
    diag_rec *d;
    va_list ap;
    char msg[1024];

    if (c->too_many)
        return;
    if (sev == FLOW_SEV_ERROR && c->n_errors >= FLOW_MAX_ERRORS) {
        c->too_many = 1;
        code = "F0401";
        help = NULL;
        snprintf(msg, sizeof msg, "too many errors (%d), stopping",
                 FLOW_MAX_ERRORS);
    } else {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
    }
    if (c->n_diags == c->cap_diags) {
        size_t cap = c->cap_diags ? 2 * c->cap_diags : 16;
        diag_rec *nd = realloc(c->diags, cap * sizeof *nd);
        if (!nd) {
            c->mem.failed = 1;
            return;
        }
        c->diags = nd;
        c->cap_diags = cap;
    }
    d = &c->diags[c->n_diags];
    memset(d, 0, sizeof *d);
    d->loc = loc;
    d->pub.struct_size = sizeof d->pub;
    d->pub.severity = sev;
    d->pub.code = code;
    d->pub.file = loc.file >= 0 && (size_t)loc.file < c->n_files
                      ? c->files[loc.file].path : "<input>";
    d->pub.line = loc.line;
    d->pub.col = loc.col;
    d->pub.end_line = loc.end_line ? loc.end_line : loc.line;
    d->pub.end_col = loc.end_col ? loc.end_col : loc.col;
    d->pub.message = arena_strdup(&c->mem, msg);
    d->pub.help = help && *help ? arena_strdup(&c->mem, help) : NULL;
    if (!d->pub.message)
        return;
    c->n_diags++;
    if (sev == FLOW_SEV_ERROR)
        c->n_errors++;
    else
        c->n_warnings++;
}

/* --- suggestions ------------------------------------------------------ */

/* Levenshtein distance with one row; names are short (<= 255 bytes). */
size_t diag_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[FLOW_MAX_IDENT + 2];
    if (la > FLOW_MAX_IDENT || lb > FLOW_MAX_IDENT)
        return (size_t)-1;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            if (up + 1 < best)
                best = up + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const char *diag_suggest(const char *name, const char *const *cands,
                         size_t n)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    size_t limit = strlen(name) / 3 + 1;
    for (size_t i = 0; i < n; i++) {
        size_t d;
        if (!cands[i])
            continue;
        d = diag_edit_distance(name, cands[i]);
        if (d < best_d) {
            best_d = d;
            best = cands[i];
        }
    }
    return best_d <= limit && best_d > 0 ? best : NULL;
}

const char *flow_suggest(const char *name, const char *const *cands,
                         size_t n)
{
    return name ? diag_suggest(name, cands, n) : NULL;
}

/* --- rendering -------------------------------------------------------- */

/* The end of the line that starts at s: its LF, CR or CRLF, or end. */
static const char *line_end(const char *s, const char *end)
{
    while (s < end && *s != '\n' && *s != '\r')
        s++;
    return s;
}

/* The text of line `line` of file fi: start and length (without the line
 * end).  Lines end as the lexer counts them (LF, CRLF, a lone CR); a
 * byte order mark, which takes no column, is not shown. */
static const char *line_text(const flow_compilation *c, int fi, int line,
                             size_t *len)
{
    const char *s, *end, *nl;
    if (fi < 0 || (size_t)fi >= c->n_files || line < 1)
        return NULL;
    s = c->files[fi].text;
    end = s + c->files[fi].len;
    if (end - s >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3))
        s += 3;
    for (int l = 1; l < line; l++) {
        nl = line_end(s, end);
        if (nl == end)
            return NULL;
        s = nl + (nl[0] == '\r' && nl + 1 < end && nl[1] == '\n' ? 2 : 1);
    }
    *len = (size_t)(line_end(s, end) - s);
    return s;
}

#define SHOW_MAX 200   /* bytes of a source line shown */

static void print_text(const flow_compilation *c, const diag_rec *d, FILE *f,
                       int terse)
{
    const flow_diagnostic *p = &d->pub;
    const char *src;
    size_t len = 0;
    char num[16];
    int w;

    if (p->line > 0)
        fprintf(f, "%s:%d:%d: ", p->file, p->line, p->col);
    else
        fprintf(f, "%s: ", p->file);  /* about the file as a whole */
    fprintf(f, "%s[%s]: %s\n",
            p->severity == FLOW_SEV_ERROR ? "error" : "warning", p->code,
            p->message);
    if (terse)
        return;
    src = line_text(c, d->loc.file, p->line, &len);
    if (src && p->line > 0) {
        int from = p->col, to;
        w = snprintf(num, sizeof num, "%d", p->line);
        if (len > SHOW_MAX)
            len = SHOW_MAX;
        fprintf(f, " %s | ", num);
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)src[i];
            fputc(ch == '\t' || (ch >= 0x20 && ch < 0x7f) ? ch : '?', f);
        }
        fputc('\n', f);
        to = p->end_line == p->line ? p->end_col : (int)len;
        if (to < from)
            to = from;
        if (from >= 1 && (size_t)from <= len + 1) {
            fprintf(f, " %*s | ", w, "");
            for (int i = 1; i < from; i++)
                fputc(src[i - 1] == '\t' ? '\t' : ' ', f);
            fputc('^', f);
            for (int i = from + 1; i <= to && (size_t)i <= len; i++)
                fputc('~', f);
            fputc('\n', f);
        }
    }
    if (p->help)
        fprintf(f, "help: %s\n", p->help);
}

static void print_json(const diag_rec *d, FILE *f, int last)
{
    const flow_diagnostic *p = &d->pub;
    fputs("  {\"file\": ", f);
    flow_json_string(f, p->file);
    fprintf(f, ", \"line\": %d, \"column\": %d, \"end_line\": %d, "
               "\"end_column\": %d, \"severity\": \"%s\", \"code\": \"%s\", "
               "\"message\": ", p->line, p->col, p->end_line, p->end_col,
            p->severity == FLOW_SEV_ERROR ? "error" : "warning", p->code);
    flow_json_string(f, p->message);
    fputs(", \"help\": ", f);
    if (p->help)
        flow_json_string(f, p->help);
    else
        fputs("null", f);
    fputs(last ? "}\n" : "},\n", f);
}

void flow_compile_print_diags(const flow_compilation *c, FILE *f,
                              flow_diag_format fmt)
{
    if (fmt == FLOW_DIAG_JSON)
        fputs("[\n", f);
    for (size_t i = 0; i < c->n_diags; i++) {
        if (fmt == FLOW_DIAG_JSON)
            print_json(&c->diags[i], f, i + 1 == c->n_diags);
        else
            print_text(c, &c->diags[i], f, fmt == FLOW_DIAG_TERSE);
    }
    if (fmt == FLOW_DIAG_JSON)
        fputs("]\n", f);
}

size_t flow_compile_diag_count(const flow_compilation *c)
{
    return c ? c->n_diags : 0;
}

const flow_diagnostic *flow_compile_diag(const flow_compilation *c, size_t i)
{
    return c && i < c->n_diags ? &c->diags[i].pub : NULL;
}

size_t flow_compile_errors(const flow_compilation *c)
{
    return c ? c->n_errors : 0;
}

size_t flow_compile_warnings(const flow_compilation *c)
{
    return c ? c->n_warnings : 0;
}
