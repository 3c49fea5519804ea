/* data.c - data sets: a streaming CSV reader (header detection, column
 * selection, located errors; whole, or a part of the lines), the CSV and
 * NPY writers, and the choice of a format (npy.c reads NPY, images.c
 * reads and writes the image formats). */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"
#include "fileio.h"

/* ------------------------------------------------------------ data sets */

flow_data *data_new(flow_ctx *ctx, size_t n, size_t d, size_t c)
{
    flow_data *data = calloc(1, sizeof *data);
    if (!data)
        goto nomem;
    data->n = n;
    data->d = d;
    data->c = c;
    if ((d && n > SIZE_MAX / d) || (c && n > SIZE_MAX / c)
        || (d && n * d > SIZE_MAX / sizeof(flow_real))
        || (c && n * c > SIZE_MAX / sizeof(flow_real))) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "data set of %zu x %zu is too "
                       "large", n, d + c);
        free(data);
        return NULL;
    }
    if (n && d && !(data->x = calloc(n * d, sizeof(flow_real))))
        goto nomem;
    if (n && c && !(data->ctx = calloc(n * c, sizeof(flow_real))))
        goto nomem;
    return data;
nomem:
    data_free(data);
    flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    return NULL;
}

static void free_names(char **names, size_t k)
{
    if (!names)
        return;
    for (size_t i = 0; i < k; i++)
        free(names[i]);
    free(names);
}

void data_free(flow_data *data)
{
    if (!data)
        return;
    free(data->x);
    free(data->ctx);
    free_names(data->names, data->d + data->c);
    free(data->source);
    free(data->lines);
    free(data->cols);
    free(data->note);
    free(data);
}

int data_set_names(flow_ctx *ctx, flow_data *data, const char *const *names)
{
    size_t k = data->d + data->c;
    char **nn = calloc(k ? k : 1, sizeof *nn);
    if (!nn)
        goto nomem;
    for (size_t i = 0; i < k; i++) {
        size_t len = strlen(names[i]) + 1;
        if (!(nn[i] = malloc(len)))
            goto nomem;
        memcpy(nn[i], names[i], len);
    }
    free_names(data->names, k);
    data->names = nn;
    return FLOW_OK;
nomem:
    free_names(nn, k);
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
}

int flow_data_set_column_names(flow_ctx *ctx, flow_data *data,
                               const char *const *names)
{
    return data_set_names(ctx, data, names);
}

/* Grows x and ctx to hold at least `rows` rows (data.h). */
int data_grow(flow_ctx *ctx, const char *name, flow_data *data,
              size_t *cap, size_t rows)
{
    size_t width = data->d + data->c, ncap = *cap;
    flow_real *p;
    if (rows <= *cap)
        return FLOW_OK;
    /* start with about 64 KiB of rows: wide data must not reserve 256
     * rows of a million columns for a one-row file */
    if (!ncap)
        ncap = width < 65536 / sizeof(flow_real)
               ? 65536 / sizeof(flow_real) / width : 1;
    while (ncap < rows) {
        if (ncap > SIZE_MAX / 2)
            goto toobig;
        ncap *= 2;
    }
    if ((data->d && ncap > SIZE_MAX / sizeof(flow_real) / data->d)
        || (data->c && ncap > SIZE_MAX / sizeof(flow_real) / data->c))
        goto toobig;
    if (data->d) {
        if (!(p = realloc(data->x, ncap * data->d * sizeof(flow_real))))
            goto nomem;
        data->x = p;
    }
    if (data->c) {
        if (!(p = realloc(data->ctx, ncap * data->c * sizeof(flow_real))))
            goto nomem;
        data->ctx = p;
    }
    if (data->lines) {
        size_t *l = realloc(data->lines, ncap * sizeof *l);
        if (!l)
            goto nomem;
        data->lines = l;
    }
    *cap = ncap;
    return FLOW_OK;
toobig:
    return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: too many rows", name);
nomem:
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
}

/* ------------------------------------------------------------ input */

/* Bounded, printable copy of a cell for messages. */
static const char *show(const char *text, char *out, size_t cap)
{
    size_t n = strlen(text), k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++) {
        unsigned char ch = (unsigned char)text[i];
        out[k++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
        if (k >= 40 && i + 1 < n) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
    }
    out[k] = '\0';
    return out;
}

/* Index of column `tok` (a header name or a 0-based index). */
static int find_column(flow_ctx *ctx, const char *name, const char *tok,
                       char **names, size_t ncols, size_t *out)
{
    char *end;
    unsigned long long v;
    size_t hit = ncols;
    if (names)
        for (size_t j = 0; j < ncols; j++)
            if (!strcmp(names[j], tok)) {
                if (hit != ncols)
                    return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                                          "%s: column name '%s' is ambiguous "
                                          "(columns %zu and %zu)",
                                          name, tok, hit, j);
                hit = j;
            }
    if (hit != ncols) {
        *out = hit;
        return FLOW_OK;
    }
    if (*tok >= '0' && *tok <= '9') {
        errno = 0;
        v = strtoull(tok, &end, 10);
        if (!*end && errno == 0) {
            if (v >= ncols)
                return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                                      "%s: column %s out of range (%zu "
                                      "columns, indices start at 0)", name,
                                      tok, ncols);
            *out = (size_t)v;
            return FLOW_OK;
        }
    }
    if (!names)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                              "%s: no column named '%s' (the file has no "
                              "header: select columns by 0-based index)",
                              name, tok);
    return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: no column named '%s'", name,
                          tok);
}

/* Marks the columns listed in `list` with destinations base, base+1, ... */
static int select_list(flow_ctx *ctx, const char *name, const char *list,
                       char **names, data_sel *sel, long base, size_t *count)
{
    const char *p = list;
    char tok[256];
    *count = 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p), j = 0;
        int rc;
        while (len && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0 || len >= sizeof tok)
            return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                                  "%s: bad column list '%s'", name, list);
        memcpy(tok, p, len);
        tok[len] = '\0';
        if ((rc = find_column(ctx, name, tok, names, sel->ncols, &j)))
            return rc;
        if (sel->map[j] != -1)
            return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                                  "%s: column '%s' selected twice", name, tok);
        sel->map[j] = base + (long)*count;
        (*count)++;
        if (!comma)
            break;
        p = comma + 1;
    }
    return FLOW_OK;
}

int data_build_selection(flow_ctx *ctx, const char *name,
                         const data_opts *o, char **names, size_t ncols,
                         size_t first_line, data_sel *sel)
{
    size_t nd = 0, nc = 0;
    int rc;
    if (!(sel->map = malloc(ncols * sizeof *sel->map)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    sel->ncols = ncols;
    for (size_t j = 0; j < ncols; j++)
        sel->map[j] = -1;
    /* context first (temporarily numbered from 0), so that "all other
     * columns" can be computed for the data */
    if (o && o->context && (rc = select_list(ctx, name, o->context, names,
                                             sel, -1000000000L, &nc)))
        return rc;
    if (o && o->columns) {
        if ((rc = select_list(ctx, name, o->columns, names, sel, 0, &nd)))
            return rc;
    } else {
        for (size_t j = 0; j < ncols; j++)
            if (sel->map[j] == -1)
                sel->map[j] = (long)nd++;
    }
    for (size_t j = 0; j < ncols; j++)
        if (sel->map[j] < -1)
            sel->map[j] += 1000000000L + (long)nd;
    sel->d = nd;
    sel->c = nc;
    if (nd == 0)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL,
                              "%s: no data columns selected", name);
    if (o && o->expect_dim && nd != o->expect_dim) {
        if (first_line)
            return flow_ctx_error(ctx, FLOW_ERR_FORMAT,
                                  "%s:%zu: %zu data columns, expected %zu",
                                  name, first_line, nd, o->expect_dim);
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT,
                              "%s: %zu data columns, expected %zu", name, nd,
                              o->expect_dim);
    }
    return FLOW_OK;
}

int data_sel_identity(const data_sel *sel)
{
    if (sel->c || sel->d != sel->ncols)
        return 0;
    for (size_t j = 0; j < sel->ncols; j++)
        if (sel->map[j] != (long)j)
            return 0;
    return 1;
}

int data_apply_opts(flow_ctx *ctx, const char *name, const data_opts *opts,
                    flow_data *data)
{
    data_sel sel = {0};
    flow_real *x = NULL, *c = NULL;
    size_t n = data->n, k = data->d;
    int rc;
    if ((rc = data_build_selection(ctx, name, opts, NULL, k, 0, &sel)))
        goto done;
    if (data_sel_identity(&sel))
        goto done;
    if ((sel.d && !(x = malloc(n * sel.d * sizeof *x)))
        || (sel.c && !(c = malloc(n * sel.c * sizeof *c)))
        || !(data->cols = malloc(sel.d + sel.c ? (sel.d + sel.c)
                                 * sizeof *data->cols : 1))) {
        free(x);
        free(c);
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (size_t j = 0; j < k; j++) {
        long dst = sel.map[j];
        if (dst < 0)
            continue;
        data->cols[dst] = j;
        for (size_t i = 0; i < n; i++) {
            if ((size_t)dst < sel.d)
                x[i * sel.d + (size_t)dst] = data->x[i * k + j];
            else
                c[i * sel.c + (size_t)dst - sel.d] = data->x[i * k + j];
        }
    }
    free(data->x);
    data->x = x;
    data->ctx = c;
    data->d = sel.d;
    data->c = sel.c;
    data->rank = 0;
done:
    free(sel.map);
    return rc;
}

/* Parses a number; 0 ok, 1 not a number, 2 NaN/Inf, 3 out of range,
 * 4 a hexadecimal float (strtod reads 0x1p3 as 8, but no CSV writer
 * means a number by it), 5 a non-zero number that underflowed to 0. */
static int parse_real(const char *text, flow_real *out)
{
    char *end;
    const char *p = text, *q;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return 1;
    q = p + (*p == '+' || *p == '-');
    if (q[0] == '0' && (q[1] == 'x' || q[1] == 'X'))
        return 4;
    errno = 0;
#if FLOW_REAL_DOUBLE
    *out = strtod(p, &end);
#else
    *out = strtof(p, &end);
#endif
    if (end == p)
        return 1;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end)
        return 1;
    if (isnan(*out))
        return 2;
    if (isinf(*out))
        return errno == ERANGE ? 3 : 2;
    if (*out == 0 && errno == ERANGE)
        return 5;
    return 0;
}

/* ------------------------------------------------------------ CSV */

typedef struct csv {
    flow_ctx *ctx;
    data_src *s;
    const data_opts *opts;
    flow_data *data;
    size_t cap;             /* row capacity of data */
    data_sel sel;
    char **header;          /* first record's cells */
    size_t n_header, cap_header;
    int first_done;         /* first record classified */
    size_t first_line;      /* line of the first record */
    size_t first_data_line;
    size_t underflows;      /* values read as 0 from non-zero text */
    size_t uf_line, uf_col; /* the first of them */
    char uf_text[48];
    /* reading a part (read_csv_part) */
    int head_only;          /* stop after the first record */
    int body;               /* the first record was read before */
    int at_end;             /* head_only: the input ended with it */
    int open_quote;         /* the input ended inside a quoted value */
    size_t line_start;      /* the line of the first byte (0: 1) */
    size_t line_end;        /* the line after the last byte */
} csv;

static int csv_cell_error(csv *p, size_t line, size_t col, const char *what,
                          const char *text)
{
    char buf[64];
    return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT, "%s:%zu:%zu: %s '%s'",
                          p->s->name, line, col, what,
                          show(text, buf, sizeof buf));
}

/* A cell of a data row. */
static int csv_data_cell(csv *p, size_t line, size_t col, const char *text)
{
    long dst;
    flow_real v = 0;
    int k;
    if (col > p->sel.ncols)
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                              "%s:%zu:%zu: ragged row: more columns than "
                              "the %zu of line %zu", p->s->name, line, col,
                              p->sel.ncols, p->first_line);
    dst = p->sel.map[col - 1];
    if (dst < 0)
        return FLOW_OK;     /* unselected columns are not validated */
    k = parse_real(text, &v);
    if (k == 1) {
        const char *q = text;
        while (*q == ' ' || *q == '\t')
            q++;
        if (!*q)
            return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                                  "%s:%zu:%zu: empty value", p->s->name,
                                  line, col);
        return csv_cell_error(p, line, col, "non-numeric value", text);
    }
    if (k == 2)
        return csv_cell_error(p, line, col, "NaN or Inf value", text);
    if (k == 3) {
        char buf[64];
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                              "%s:%zu:%zu: value '%s' out of range for %s",
                              p->s->name, line, col,
                              show(text, buf, sizeof buf), FLOW_REAL_NAME);
    }
    if (k == 4) {
        char buf[64];
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                              "%s:%zu:%zu: hexadecimal value '%s' (write "
                              "numbers in decimal)", p->s->name, line, col,
                              show(text, buf, sizeof buf));
    }
    if (k == 5 && !p->underflows++) {
        p->uf_line = line;
        p->uf_col = col;
        show(text, p->uf_text, sizeof p->uf_text);
    }
    if ((size_t)dst < p->sel.d)
        p->data->x[(p->data->n) * p->sel.d + (size_t)dst] = v;
    else
        p->data->ctx[(p->data->n) * p->sel.c + ((size_t)dst - p->sel.d)] = v;
    return FLOW_OK;
}

static int csv_row_begin(csv *p)
{
    return data_grow(p->ctx, p->s->name, p->data, &p->cap, p->data->n + 1);
}

/* Records that row n of the data set is on `line`: nothing while the
 * rows sit on consecutive lines, a table from the first gap (a blank line,
 * a quoted line break) on. */
static int csv_row_line(csv *p, size_t line)
{
    flow_data *d = p->data;
    if (!d->lines) {
        if (d->n == 0)
            d->line0 = line;
        if (line == d->line0 + d->n)
            return FLOW_OK;
        if (!(d->lines = malloc(p->cap * sizeof *d->lines)))
            return flow_ctx_error(p->ctx, FLOW_ERR_NOMEM, "%s: out of memory",
                                  p->s->name);
        for (size_t r = 0; r < d->n; r++)
            d->lines[r] = d->line0 + r;
    }
    d->lines[d->n] = line;
    return FLOW_OK;
}

static int csv_row_end(csv *p, size_t line, size_t ncells)
{
    int rc;
    if (ncells < p->sel.ncols)
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                              "%s:%zu:%zu: ragged row: %zu columns where "
                              "line %zu has %zu", p->s->name, line,
                              ncells + 1, ncells,
                              p->first_line, p->sel.ncols);
    if ((rc = csv_row_line(p, line)))
        return rc;
    p->data->n++;
    return FLOW_OK;
}

/* Decides whether the first record is a header (every cell non-numeric),
 * builds the selection, and feeds the record as data when it is not. */
static int csv_first_record(csv *p, size_t line)
{
    int is_header = 1, rc;
    flow_real v;
    for (size_t j = 0; j < p->n_header; j++)
        if (parse_real(p->header[j], &v) != 1)
            is_header = 0;
    p->first_line = line;
    p->first_done = 1;
    if (is_header) {
        for (size_t j = 0; j < p->n_header; j++) {   /* trim the names */
            char *h = p->header[j], *e;
            size_t off = strspn(h, " \t");
            memmove(h, h + off, strlen(h + off) + 1);
            e = h + strlen(h);
            while (e > h && (e[-1] == ' ' || e[-1] == '\t'))
                *--e = '\0';
            if (!*h)
                return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT, "%s:%zu:%zu: "
                                      "empty column name in the header",
                                      p->s->name, line, j + 1);
        }
        return data_build_selection(p->ctx, p->s->name, p->opts,
                                    p->header, p->n_header, line, &p->sel);
    }
    if ((rc = data_build_selection(p->ctx, p->s->name, p->opts, NULL,
                                   p->n_header, line, &p->sel)))
        return rc;
    p->data->d = p->sel.d;
    p->data->c = p->sel.c;
    if ((rc = csv_row_begin(p)))
        return rc;
    for (size_t j = 0; j < p->n_header; j++)
        if ((rc = csv_data_cell(p, line, j + 1, p->header[j])))
            return rc;
    free_names(p->header, p->n_header);
    p->header = NULL;
    p->first_data_line = line;
    return csv_row_end(p, line, p->n_header);
}

static int csv_keep_first_cell(csv *p, const char *text, size_t len)
{
    char *c;
    if (p->n_header == p->cap_header) {
        size_t ncap = p->cap_header ? p->cap_header * 2 : 16;
        char **nh;
        if (ncap > SIZE_MAX / sizeof *nh
            || !(nh = realloc(p->header, ncap * sizeof *nh)))
            return flow_ctx_error(p->ctx, FLOW_ERR_NOMEM, "out of memory");
        p->header = nh;
        p->cap_header = ncap;
    }
    if (!(c = malloc(len + 1)))
        return flow_ctx_error(p->ctx, FLOW_ERR_NOMEM, "out of memory");
    memcpy(c, text, len + 1);
    p->header[p->n_header++] = c;
    return FLOW_OK;
}

/* After the header row: the data set's dimensions and names. */
static int csv_after_header(csv *p)
{
    size_t k = p->sel.d + p->sel.c;
    char **names = calloc(k, sizeof *names);
    if (!names)
        return flow_ctx_error(p->ctx, FLOW_ERR_NOMEM, "out of memory");
    p->data->d = p->sel.d;
    p->data->c = p->sel.c;
    for (size_t j = 0; j < p->sel.ncols; j++)
        if (p->sel.map[j] >= 0) {
            names[p->sel.map[j]] = p->header[j];
            p->header[j] = NULL;
        }
    p->data->names = names;
    free_names(p->header, p->n_header);
    p->header = NULL;
    return FLOW_OK;
}

/* The tokenizer: RFC 4180 fields (comma separated, optional double
 * quotes with "" for a quote, quoted newlines allowed), LF or CRLF line
 * ends, blank lines skipped.  Memory is bounded by DATA_CELL_MAX per cell
 * and DATA_LINE_MAX per line, never by the input size. */
static int csv_parse(csv *p)
{
    char cell[DATA_CELL_MAX + 1];
    size_t line = p->line_start ? p->line_start : 1, rec_line = line;
    size_t cl = 0, col = 1, line_bytes = 0, quote_line = 0;
    int ch, rc, quoted = 0, after_quote = 0, was_quoted = 0;
    int in_row = 0;     /* a data row has been started */

    for (;;) {
        ch = data_src_get(p->s);
        if (ch != -1 && ch != '\n' && ++line_bytes > DATA_LINE_MAX)
            return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                                  "%s:%zu: line longer than %zu bytes",
                                  p->s->name, line, DATA_LINE_MAX);
        if (quoted) {
            if (ch == -1) {
                p->open_quote = 1;
                return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                                      "%s:%zu:%zu: unterminated quoted value",
                                      p->s->name, quote_line, col);
            }
            if (ch == '"') {
                int nx = data_src_get(p->s);
                if (nx == '"') {
                    line_bytes++;
                    goto append;   /* "" is a literal quote */
                }
                if (nx != -1)
                    p->s->pos--;   /* one byte back into the buffer */
                quoted = 0;
                after_quote = 1;
                continue;
            }
            if (ch == '\n') {
                line++;
                line_bytes = 0;
            }
            goto append;
        }
        if (ch == ',' || ch == '\n' || ch == -1) {
            int blank;
            if (cl && cell[cl - 1] == '\r' && !after_quote)
                cl--;
            cell[cl] = '\0';
            blank = ch != ',' && col == 1 && !was_quoted
                    && strspn(cell, " \t\r") == cl;
            if (blank && ch == -1)
                break;
            if (!blank) {
                if (!p->first_done) {
                    if ((rc = csv_keep_first_cell(p, cell, cl)))
                        return rc;
                    if (ch != ',') {
                        if ((rc = csv_first_record(p, rec_line)))
                            return rc;
                        if (p->header && (rc = csv_after_header(p)))
                            return rc;
                        if (p->head_only) {
                            p->at_end = ch == -1;
                            p->line_end = line + (ch == '\n');
                            return FLOW_OK;
                        }
                    }
                } else {
                    if (!in_row) {
                        if ((rc = csv_row_begin(p)))
                            return rc;
                        if (!p->first_data_line)
                            p->first_data_line = rec_line;
                        in_row = 1;
                    }
                    if ((rc = csv_data_cell(p, rec_line, col, cell)))
                        return rc;
                    if (ch != ',') {
                        if ((rc = csv_row_end(p, rec_line, col)))
                            return rc;
                        in_row = 0;
                    }
                }
            }
            cl = 0;
            after_quote = was_quoted = 0;
            if (ch == ',') {
                col++;
                continue;
            }
            if (ch == -1)
                break;
            col = 1;
            line++;
            rec_line = line;
            line_bytes = 0;
            continue;
        }
        if (after_quote) {
            if (ch == ' ' || ch == '\t' || ch == '\r')
                continue;
            return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                                  "%s:%zu:%zu: unexpected character after a "
                                  "closing quote", p->s->name, line, col);
        }
        if (ch == '"') {
            cell[cl] = '\0';        /* strspn reads up to a terminator */
            if (strspn(cell, " \t") == cl) {
                cl = 0;
                quoted = was_quoted = 1;
                quote_line = line;
                continue;
            }
        }
append:
        if (cl == DATA_CELL_MAX) {
            cell[cl] = '\0';
            return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                                  "%s:%zu:%zu: value longer than %d bytes",
                                  p->s->name, rec_line, col, DATA_CELL_MAX);
        }
        cell[cl++] = (char)ch;
        if (ch == '\0')
            cell[cl - 1] = '\x01';  /* keep C strings intact; not numeric */
    }
    if (p->s->ioerr)
        return flow_ctx_error(p->ctx, FLOW_ERR_IO, "%s: read error: %s",
                              p->s->name, strerror(errno));
    p->line_end = line;
    if (p->body)
        return FLOW_OK;
    if (!p->first_done)
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT, "%s: empty input",
                              p->s->name);
    if (p->data->n == 0)
        return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT,
                              "%s: no data rows after the header", p->s->name);
    return FLOW_OK;
}

static char *dup_text(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int data_set_source(flow_ctx *ctx, flow_data *data, const char *name)
{
    free(data->source);
    if (!(data->source = dup_text(name)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
    return FLOW_OK;
}

int data_set_places(flow_ctx *ctx, const char *name, const data_sel *sel,
                    flow_data *data)
{
    size_t k = data->d + data->c;
    if (!(data->source = dup_text(name))
        || !(data->cols = malloc((k ? k : 1) * sizeof *data->cols)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
    for (size_t j = 0; j < sel->ncols; j++)
        if (sel->map[j] >= 0)
            data->cols[sel->map[j]] = j;
    return FLOW_OK;
}

/* Non-zero values too small for flow_real read as 0: said once per file,
 * at the first of them. */
int data_underflow_note(flow_ctx *ctx, const char *name, size_t count,
                        size_t line, size_t col, const char *text,
                        flow_data *data)
{
    char buf[512];
    if (data->npy)
        snprintf(buf, sizeof buf, "%s: [%zu, %zu]: %zu non-zero value%s "
                 "underflowed to 0 in %s (the first: %s)", name, line, col,
                 count, count == 1 ? "" : "s", FLOW_REAL_NAME, text);
    else
        snprintf(buf, sizeof buf, "%s:%zu:%zu: %zu non-zero value%s "
                 "underflowed to 0 in %s (the first: '%s')", name, line, col,
                 count, count == 1 ? "" : "s", FLOW_REAL_NAME, text);
    if (!(data->note = dup_text(buf)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
    return FLOW_OK;
}

static int read_csv(flow_ctx *ctx, data_src *s, const data_opts *opts,
                    flow_data **out)
{
    csv p;
    int rc;
    memset(&p, 0, sizeof p);
    p.ctx = ctx;
    p.s = s;
    p.opts = opts;
    /* a UTF-8 byte order mark (spreadsheet exports) is not data */
    if (s->len >= 3 && !memcmp(s->buf, "\xEF\xBB\xBF", 3))
        s->pos = 3;
    if (!(p.data = calloc(1, sizeof *p.data)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    rc = csv_parse(&p);
    free_names(p.header, p.n_header);
    if (rc == FLOW_OK)
        rc = data_set_places(ctx, s->name, &p.sel, p.data);
    if (rc == FLOW_OK && p.underflows)
        rc = data_underflow_note(ctx, s->name, p.underflows, p.uf_line,
                                 p.uf_col, p.uf_text, p.data);
    free(p.sel.map);
    if (rc != FLOW_OK) {
        data_free(p.data);
        return rc;
    }
    *out = p.data;
    return FLOW_OK;
}

/* The k-th of n cuts of the bytes [start, size): start + len k / n
 * without overflow. */
static unsigned long long byte_cut(unsigned long long start,
                                   unsigned long long size, int k, int n)
{
    unsigned long long len = size - start;
    return start + len / (unsigned)n * (unsigned)k
           + len % (unsigned)n * (unsigned)k / (unsigned)n;
}

/* The first line start at or after byte `at` of a CSV body that begins
 * at `start`: `at` itself when a line starts there, else the byte after
 * the next line feed (size when there is none).  -1: f cannot seek. */
static int line_start(data_src *s, unsigned long long start,
                      unsigned long long size, unsigned long long at,
                      unsigned long long *out)
{
    int ch;
    if (at <= start || at >= size) {
        *out = at <= start ? start : size;
        return 0;
    }
    if (data_src_seek(s, at - 1, size - (at - 1)))
        return -1;
    while ((ch = data_src_get(s)) != -1 && ch != '\n')
        ;
    *out = data_src_tell(s);
    return 0;
}

/* A part of a CSV file (data_part): the first record (a header or the
 * first row) decides the columns as read_csv does; then the lines that
 * start in this part's share of the bytes after it, parsed as the rows
 * that follow a first record. */
static int read_csv_part(flow_ctx *ctx, data_src *s, const data_opts *opts,
                         data_part *part, flow_data **out)
{
    csv p;
    struct stat st;
    unsigned long long start, size, from, to;
    int rc;
    memset(&p, 0, sizeof p);
    p.ctx = ctx;
    p.s = s;
    p.opts = opts;
    p.head_only = 1;
    part->csv = 1;
    if (s->len >= 3 && !memcmp(s->buf, "\xEF\xBB\xBF", 3))
        s->pos = 3;
    start = s->pos;
    if (fstat(fileno(s->f), &st) != 0 || !S_ISREG(st.st_mode)) {
        part->whole = 1;
        return FLOW_OK;
    }
    size = (unsigned long long)st.st_size;
    if (!(p.data = calloc(1, sizeof *p.data)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if ((rc = csv_parse(&p)) != FLOW_OK)
        goto done;
    if (p.data->names) {
        /* the rows begin after the header's line feed */
        start = p.at_end ? size : data_src_tell(s);
        part->line_head = p.line_end;
    } else {
        /* no header: the first record is a row like the others */
        part->line_head = 1;
        p.data->n = 0;
    }
    p.underflows = 0;
    if (line_start(s, start, size, byte_cut(start, size, part->rank,
                                            part->size), &from)
        || line_start(s, start, size, byte_cut(start, size, part->rank + 1,
                                               part->size), &to)
        || data_src_seek(s, from, to - from)) {
        part->whole = 1;
        goto done;
    }
    if ((rc = data_src_error(ctx, s)) != FLOW_OK)
        goto done;
    p.head_only = 0;
    p.body = 1;
    p.line_start = part->line_base ? part->line_base : 1;
    if ((rc = csv_parse(&p)) != FLOW_OK) {
        /* a line feed in quotes at the part's end: the parts cannot be
         * told apart at line feeds, and the next part began inside the
         * quotes */
        if (p.open_quote && to < size) {
            part->whole = 1;
            rc = FLOW_OK;
        }
        goto done;
    }
    part->lines = p.line_end - p.line_start;
    part->underflows = p.underflows;
    part->uf_place = p.uf_line;
    part->uf_col = p.uf_col;
    memcpy(part->uf_text, p.uf_text, sizeof part->uf_text);
    rc = data_set_places(ctx, s->name, &p.sel, p.data);
done:
    free_names(p.header, p.n_header);
    free(p.sel.map);
    if (rc == FLOW_OK && !part->whole)
        *out = p.data;
    else
        data_free(p.data);
    return rc;
}

/* ------------------------------------------------------------ reading */

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

/* The IDX magic: two zero bytes, a type code, 1..4 dimensions (LeCun et
 * al., "THE MNIST DATABASE", file formats). */
static int idx_magic(const unsigned char *b, size_t len)
{
    return len >= 4 && b[0] == 0 && b[1] == 0 && b[3] >= 1 && b[3] <= 4
           && (b[2] == 0x08 || b[2] == 0x09 || b[2] == 0x0B
               || b[2] == 0x0C || b[2] == 0x0D || b[2] == 0x0E);
}

/* The name without a ".gz" ending, to tell what a file claims to be. */
static int claims(const char *name, const char *tail)
{
    char base[512];
    size_t n = strlen(name);
    if (ends_with(name, ".gz") && n - 3 < sizeof base) {
        memcpy(base, name, n - 3);
        base[n - 3] = '\0';
        return ends_with(base, tail);
    }
    return ends_with(name, tail);
}

/* data_read_stream, or a part of the file (part not NULL). */
static int read_stream(flow_ctx *ctx, const char *name, FILE *f,
                       const data_opts *opts, data_part *part,
                       flow_data **out)
{
    data_src s;
    int rc, erc;
    *out = NULL;
    if ((rc = data_src_open(ctx, &s, f, name)) != FLOW_OK) {
        data_src_close(&s);
        return rc;
    }
    if (part && s.gz) {
        part->whole = 1;
        rc = FLOW_OK;
    } else if (s.len >= 6 && !memcmp(s.buf, DATA_NPY_MAGIC, 6))
        rc = data_read_npy(ctx, &s, opts, part, out);
    else if (idx_magic(s.buf, s.len))
        rc = data_read_idx(ctx, &s, opts, part, out);
    else if (s.len >= 8 && !memcmp(s.buf, "\x89PNG\r\n\x1a\n", 8))
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: a single PNG file: "
                            "give the directory of PNG files instead", name);
    else if (claims(name, ".npy"))
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: not an NPY file "
                            "(bad magic)", name);
    else if (claims(name, ".idx") || claims(name, "-ubyte"))
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: not an IDX file (bad "
                            "magic: need 00 00, a type code 08 09 0B 0C 0D "
                            "0E and 1 to 4 dimensions)", name);
    else if (part)
        rc = read_csv_part(ctx, &s, opts, part, out);
    else
        rc = read_csv(ctx, &s, opts, out);
    /* a reader that met the end early says "truncated"; the stream
     * knows better when a read or the gzip stream failed */
    if ((erc = data_src_error(ctx, &s)) != FLOW_OK)
        rc = erc;
    if (rc != FLOW_OK && *out) {
        data_free(*out);
        *out = NULL;
    }
    data_src_close(&s);
    return rc;
}

int data_read_stream(flow_ctx *ctx, const char *name, FILE *f,
                     const data_opts *opts, flow_data **out)
{
    return read_stream(ctx, name, f, opts, NULL, out);
}

int data_read_part(flow_ctx *ctx, const char *path, const data_opts *opts,
                   data_part *part, flow_data **out)
{
    FILE *f;
    struct stat st;
    int rc;
    *out = NULL;
    part->whole = 0;
    /* what cannot seek, and what is missing (the whole read names it) */
    if (!strcmp(path, "-") || stat(path, &st) != 0 || !S_ISREG(st.st_mode)
        || !(f = fopen(path, "rb"))) {
        part->whole = 1;
        return FLOW_OK;
    }
    rc = read_stream(ctx, path, f, opts, part, out);
    fclose(f);
    if (part->whole && *out) {
        data_free(*out);
        *out = NULL;
    }
    return rc;
}

int data_read(flow_ctx *ctx, const char *path, const data_opts *opts,
              flow_data **out)
{
    FILE *f;
    struct stat st;
    int rc;
    *out = NULL;
    if (!strcmp(path, "-"))
        return data_read_stream(ctx, "<stdin>", stdin, opts, out);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return data_read_png_dir(ctx, path, opts, out);
    if (!(f = fopen(path, "rb")))
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot open: %s", path,
                              strerror(errno));
    rc = data_read_stream(ctx, path, f, opts, out);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------ writing */

static flow_real value_at(const flow_data *data, size_t i, size_t j)
{
    return j < data->d ? data->x[i * data->d + j]
                       : data->ctx[i * data->c + (j - data->d)];
}

static int check_finite(flow_ctx *ctx, const char *path,
                        const flow_data *data, size_t i, size_t j)
{
    if (data->nonfinite_ok || isfinite(value_at(data, i, j)))
        return FLOW_OK;
    return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: cannot write NaN or Inf "
                          "(row %zu, column %zu)", path, i, j);
}

static void csv_name(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n") && s[strspn(s, " \t")]) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int write_csv(flow_ctx *ctx, const flow_data *data, const char *path,
                     FILE *f, int header)
{
    size_t k = data->d + data->c;
    int rc;
    if (header) {
        for (size_t j = 0; j < k; j++) {
            if (j)
                fputc(',', f);
            if (data->names)
                csv_name(f, data->names[j]);
            else
                fprintf(f, "%c%zu", j < data->d ? 'x' : 'c',
                        j < data->d ? j : j - data->d);
        }
        fputc('\n', f);
    }
    for (size_t i = 0; i < data->n; i++) {
        for (size_t j = 0; j < k; j++) {
            if ((rc = check_finite(ctx, path, data, i, j)))
                return rc;
            /* shortest widths that round-trip: 9 significant digits for
             * binary32, 17 for binary64 (IEEE 754-2008, sec. 5.12.2) */
            fprintf(f, FLOW_REAL_DOUBLE ? "%s%.17g" : "%s%.9g",
                    j ? "," : "", (double)value_at(data, i, j));
        }
        fputc('\n', f);
    }
    return FLOW_OK;
}

static int write_npy(flow_ctx *ctx, const flow_data *data, const char *path,
                     FILE *f)
{
    char dict[224], shape[96];
    unsigned char pre[12];
    size_t k = data->d + data->c, dl, total, prelen = 10;
    int rc;
    if (data->rank && !data->c) {
        int at = snprintf(shape, sizeof shape, "%zu", data->n);
        for (int r = 0; r < data->rank; r++)
            at += snprintf(shape + at, sizeof shape - (size_t)at, ", %zu",
                           data->shape[r]);
    } else
        snprintf(shape, sizeof shape, "%zu, %zu", data->n, k);
    dl = (size_t)snprintf(dict, sizeof dict, "{'descr': '<%s', "
                          "'fortran_order': False, 'shape': (%s), }",
                          FLOW_REAL_DOUBLE ? "f8" : "f4", shape);
    /* pad with spaces so that data starts at a multiple of 64, and end
     * the header with '\n' (NPY 1.0, numpy/lib/format.py) */
    total = (prelen + dl + 1 + 63) / 64 * 64;
    memcpy(pre, DATA_NPY_MAGIC, 6);
    pre[6] = 1;
    pre[7] = 0;
    fio_put_le(pre + 8, total - prelen, 2);
    fwrite(pre, 1, prelen, f);
    fwrite(dict, 1, dl, f);
    for (size_t i = prelen + dl; i + 1 < total; i++)
        fputc(' ', f);
    fputc('\n', f);
    for (size_t i = 0; i < data->n; i++)
        for (size_t j = 0; j < k; j++) {
            flow_real v = value_at(data, i, j);
            unsigned char b[sizeof(flow_real)];
            if ((rc = check_finite(ctx, path, data, i, j)))
                return rc;
            fio_swap_le(b, &v, 1, sizeof v);
            fwrite(b, 1, sizeof b, f);
        }
    return FLOW_OK;
}

int data_write(flow_ctx *ctx, const flow_data *data, const char *path,
               flow_data_format format, int header)
{
    fio_out o;
    int rc;
    if (format == FLOW_DATA_AUTO)
        format = ends_with(path, ".npy") ? FLOW_DATA_NPY
               : ends_with(path, ".idx") ? FLOW_DATA_IDX
               : ends_with(path, ".png") ? FLOW_DATA_PNG : FLOW_DATA_CSV;
    if (format < FLOW_DATA_CSV || format > FLOW_DATA_PNG)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "unknown data format %d",
                              (int)format);
    if ((rc = fio_open_out(ctx, path, &o)))
        return rc;
    if (format == FLOW_DATA_CSV)
        rc = write_csv(ctx, data, path, o.f, header);
    else if (format == FLOW_DATA_NPY)
        rc = write_npy(ctx, data, path, o.f);
    else if (format == FLOW_DATA_IDX)
        rc = data_write_idx(ctx, data, path, o.f);
    else
        rc = data_write_png(ctx, data, path, o.f);
    if (rc != FLOW_OK) {
        fio_abort(&o);
        return rc;
    }
    return fio_commit(ctx, &o);
}

/* ------------------------------------------------------------ public */

int flow_data_read(flow_ctx *ctx, const char *path, const char *columns,
                   const char *context, size_t dim, flow_data **out)
{
    data_opts o = {columns, context, dim};
    return data_read(ctx, path, &o, out);
}

int flow_data_write(flow_ctx *ctx, const flow_data *data, const char *path,
                    flow_data_format format, int header)
{
    return data_write(ctx, data, path, format, header);
}

flow_data *flow_data_new(flow_ctx *ctx, size_t n, size_t dim,
                         size_t context_dim)
{
    return data_new(ctx, n, dim, context_dim);
}

void flow_data_free(flow_data *data) { data_free(data); }
size_t flow_data_rows(const flow_data *data) { return data->n; }
size_t flow_data_dim(const flow_data *data) { return data->d; }
size_t flow_data_context_dim(const flow_data *data) { return data->c; }
flow_real *flow_data_values(flow_data *data) { return data->x; }
flow_real *flow_data_context(flow_data *data) { return data->ctx; }

void data_locate(const flow_data *data, size_t row, size_t col, char *buf,
                 size_t cap)
{
    size_t fc, row_in_file = row;
    if (!cap)
        return;
    /* a share's rows count from the whole set's first (its CSV lines
     * are the file's already) */
    if (data->part)
        row_in_file = data->first + row;
    if (!data->source) {
        snprintf(buf, cap, "row %zu", row_in_file + 1);
        return;
    }
    fc = col < data->d + data->c && data->cols ? data->cols[col] : col;
    if (data->npy) {
        row = row_in_file;
        if (col == SIZE_MAX)
            snprintf(buf, cap, "%s: [%zu, :]", data->source, row);
        else
            snprintf(buf, cap, "%s: [%zu, %zu]", data->source, row, fc);
        return;
    }
    {
        size_t line = data->lines ? data->lines[row] : data->line0 + row;
        if (col == SIZE_MAX)
            snprintf(buf, cap, "%s:%zu", data->source, line);
        else
            snprintf(buf, cap, "%s:%zu:%zu", data->source, line, fc + 1);
    }
}

void flow_data_locate(const flow_data *data, size_t row, size_t col,
                      char *buf, size_t cap)
{
    data_locate(data, row, col, buf, cap);
}

const char *flow_data_note(const flow_data *data) { return data->note; }

void flow_data_allow_nonfinite(flow_data *data, int on)
{
    data->nonfinite_ok = on != 0;
}

int flow_data_reorder(flow_ctx *ctx, flow_data *data, const size_t *order,
                      size_t cdim)
{
    size_t k = data->d + data->c, n = data->n, dim = k - cdim;
    flow_real *x = NULL, *c = NULL;
    size_t *cols = NULL;
    char **names = NULL;
    if (data->c || cdim > k)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_reorder: %zu "
                              "context columns of %zu", cdim, k);
    for (size_t j = 0; j < k; j++)
        if (order[j] >= k)
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_reorder: "
                                  "column %zu of %zu", order[j], k);
    if ((n && dim && !(x = malloc(n * dim * sizeof *x)))
        || (n && cdim && !(c = malloc(n * cdim * sizeof *c)))
        || !(cols = malloc((k ? k : 1) * sizeof *cols))
        || (data->names && !(names = malloc((k ? k : 1) * sizeof *names)))) {
        free(x);
        free(c);
        free(cols);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < k; j++) {
            flow_real v = data->x[r * k + order[j]];
            if (j < dim)
                x[r * dim + j] = v;
            else
                c[r * cdim + j - dim] = v;
        }
    for (size_t j = 0; j < k; j++) {
        cols[j] = data->cols ? data->cols[order[j]] : order[j];
        if (names)
            names[j] = data->names[order[j]];
    }
    free(data->x);
    free(data->cols);
    if (names) {
        free(data->names);
        data->names = names;
    }
    data->x = x;
    data->ctx = c;
    data->cols = cols;
    data->d = dim;
    data->c = cdim;
    for (size_t j = 0; j < k; j++)
        if (order[j] != j)
            data->rank = 0;     /* a sample shape holds columns in order */
    if (cdim)
        data->rank = 0;
    return FLOW_OK;
}

const char *flow_data_column_name(const flow_data *data, size_t j)
{
    if (!data->names || j >= data->d + data->c)
        return NULL;
    return data->names[j];
}
