/* npy.c - the NumPy .npy reader (NumPy format 1.0 and 2.0, C order, float
 * and integer dtypes, image shapes): the whole file, or a part by offset. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fileio.h"

typedef struct npy_header {
    char kind;              /* 'f' float, 'i' signed, 'u' unsigned */
    int esize;              /* bytes per value: 1, 2, 4 or 8 */
    int big;                /* big-endian ('>') */
    int fortran;
    int ndim;
    unsigned long long shape[4];
} npy_header;

/* Reads a dtype string: a byte order ('<' little, '>' big, '|' not
 * applicable: one byte), a kind and a size (numpy/lib/format.py,
 * dtype.str).  '=' (native order) never reaches a file written by numpy
 * and would say nothing about the writer's machine: refused. */
static int npy_dtype(const char *val, npy_header *h)
{
    char order = val[0], kind = val[0] ? val[1] : 0;
    int size = kind ? atoi(val + 2) : 0;
    if (!kind || !val[2] || strspn(val + 2, "0123456789") != strlen(val + 2))
        return -1;
    if (kind == 'f' && (size == 4 || size == 8))
        ;
    else if ((kind == 'i' || kind == 'u')
             && (size == 1 || size == 2 || size == 4 || size == 8))
        ;
    else
        return -1;
    if (order == '|' ? size != 1 : order != '<' && order != '>')
        return -1;
    h->kind = kind;
    h->esize = size;
    h->big = order == '>';
    return 0;
}

static int npy_bad(flow_ctx *ctx, const char *name, const char *what)
{
    return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: malformed NPY header: %s",
                          name, what);
}

static void skip_ws(const char **p)
{
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
        (*p)++;
}

/* A Python string literal '...' (no escapes: numpy never writes any in
 * the three keys it uses). */
static int npy_string(const char **p, char *out, size_t cap)
{
    char q = **p;
    size_t n = 0;
    if (q != '\'' && q != '"')
        return -1;
    (*p)++;
    while (**p && **p != q) {
        if (n + 1 >= cap)
            return -1;
        out[n++] = *(*p)++;
    }
    if (**p != q)
        return -1;
    (*p)++;
    out[n] = '\0';
    return 0;
}

/* Parses the header dict {'descr': '<f4', 'fortran_order': False,
 * 'shape': (n, d), } (NumPy format spec, numpy/lib/format.py). */
static int npy_parse_dict(flow_ctx *ctx, const char *name, const char *text,
                          npy_header *h)
{
    const char *p = text;
    char key[32], val[32];
    int seen_descr = 0, seen_fo = 0, seen_shape = 0;
    skip_ws(&p);
    if (*p++ != '{')
        return npy_bad(ctx, name, "expected '{'");
    for (;;) {
        skip_ws(&p);
        if (*p == '}')
            break;
        if (npy_string(&p, key, sizeof key))
            return npy_bad(ctx, name, "expected a key string");
        skip_ws(&p);
        if (*p++ != ':')
            return npy_bad(ctx, name, "expected ':'");
        skip_ws(&p);
        if (!strcmp(key, "descr")) {
            if (npy_string(&p, val, sizeof val))
                return npy_bad(ctx, name, "descr is not a string");
            if (npy_dtype(val, h))
                return flow_ctx_error(ctx, FLOW_ERR_FORMAT,
                                      "%s: NPY dtype '%s' not supported (need "
                                      "float f4 or f8, or integer i1 u1 i2 u2 "
                                      "i4 u4 i8 u8, with byte order '<', '>' "
                                      "or '|')", name, val);
            seen_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            if (!strncmp(p, "True", 4))
                h->fortran = 1, p += 4;
            else if (!strncmp(p, "False", 5))
                h->fortran = 0, p += 5;
            else
                return npy_bad(ctx, name, "fortran_order is not a bool");
            seen_fo = 1;
        } else if (!strcmp(key, "shape")) {
            if (*p++ != '(')
                return npy_bad(ctx, name, "shape is not a tuple");
            h->ndim = 0;
            for (;;) {
                char *end;
                skip_ws(&p);
                if (*p == ')')
                    break;
                if (*p < '0' || *p > '9')
                    return npy_bad(ctx, name, "bad shape");
                errno = 0;
                if (h->ndim < 4)
                    h->shape[h->ndim] = strtoull(p, &end, 10);
                else
                    (void)strtoull(p, &end, 10);
                if (errno)
                    return npy_bad(ctx, name, "shape out of range");
                h->ndim++;
                p = end;
                skip_ws(&p);
                if (*p == ',')
                    p++;
                else if (*p != ')')
                    return npy_bad(ctx, name, "bad shape");
            }
            p++;
            seen_shape = 1;
        } else {
            return npy_bad(ctx, name, "unknown key");
        }
        skip_ws(&p);
        if (*p == ',')
            p++;
        else if (*p != '}')
            return npy_bad(ctx, name, "expected ',' or '}'");
    }
    if (!seen_descr || !seen_fo || !seen_shape)
        return npy_bad(ctx, name, "missing descr, fortran_order or shape");
    if (h->fortran)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT,
                              "%s: NPY Fortran order not supported (save a "
                              "C-order array: np.ascontiguousarray)", name);
    if (h->ndim < 1 || h->ndim > 4)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT,
                              "%s: NPY array has %d dimensions, need 1 to 4 "
                              "((N), (N, D), (N, H, W) or (N, C, H, W))",
                              name, h->ndim);
    return FLOW_OK;
}

/* One NPY value (esize bytes at p) as a double; for an integer dtype
 * *isint is set and *ival holds the integer (LLONG_MAX for a u8 beyond
 * it), since a double does not hold every 64-bit integer. */
static double npy_value(const npy_header *h, const unsigned char *p,
                        long long *ival, int *isint)
{
    unsigned char b[8];
    uint64_t u;
    for (int k = 0; k < h->esize; k++)
        b[k] = p[h->big ? h->esize - 1 - k : k];
    u = fio_get_le(b, (size_t)h->esize);
    *isint = h->kind != 'f';
    if (h->kind == 'f') {
        if (h->esize == 4) {
            uint32_t w = (uint32_t)u;
            float f;
            memcpy(&f, &w, 4);
            return f;
        } else {
            double v;
            memcpy(&v, &u, 8);
            return v;
        }
    }
    if (h->kind == 'i' && h->esize < 8 && (u >> (8 * h->esize - 1)) & 1)
        u |= ~(uint64_t)0 << (8 * h->esize);    /* sign extension */
    if (h->kind == 'u' && h->esize == 8 && u > (uint64_t)LLONG_MAX) {
        *ival = LLONG_MAX;      /* beyond every exact range anyway */
        return (double)u;
    }
    *ival = (long long)u;
    return (double)*ival;
}

/* An integer is exact in flow_real when it converts back to itself
 * (float32: every integer up to 2^24; float64: up to 2^53). */
static int int_exact(long long v)
{
    flow_real r = (flow_real)v;
    return fabs((double)r) < 9.2e18 && (long long)r == v;
}

void data_part_rows(size_t n, const data_part *part, size_t *lo,
                    size_t *hi)
{
    size_t q = n / (size_t)part->size, r = n % (size_t)part->size;
    size_t k = (size_t)part->rank;
    *lo = q * k + r * k / (size_t)part->size;
    *hi = q * (k + 1) + r * (k + 1) / (size_t)part->size;
}

int data_read_npy(flow_ctx *ctx, data_src *s, const data_opts *opts,
                  data_part *part, flow_data **out)
{
    unsigned char pre[12];
    char *text = NULL;
    npy_header h;
    flow_data *data = NULL;
    data_sel sel = {0};
    unsigned char *row = NULL;
    size_t hlen, lenbytes, ncols, nrows, rowbytes, cap = 0, lo, hi;
    size_t underflows = 0, uf_row = 0, uf_col = 0;
    char uf_text[32] = "";
    int rc = FLOW_OK;

    memset(&h, 0, sizeof h);
    if (data_src_read(s, pre, 8) != 8)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY truncated in the "
                              "preamble", s->name);
    if ((pre[6] != 1 && pre[6] != 2) || pre[7] != 0)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY version %u.%u not "
                              "supported (only 1.0 and 2.0)", s->name, pre[6],
                              pre[7]);
    lenbytes = pre[6] == 1 ? 2 : 4;
    if (data_src_read(s, pre + 8, lenbytes) != lenbytes)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY truncated in the "
                              "preamble", s->name);
    hlen = (size_t)fio_get_le(pre + 8, lenbytes);
    if (hlen > DATA_NPY_HEADER_MAX)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY header of %zu "
                              "bytes is too long (limit %zu)", s->name, hlen,
                              DATA_NPY_HEADER_MAX);
    if (!(text = malloc(hlen + 1)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (data_src_read(s, text, hlen) != hlen) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY truncated in the "
                            "header", s->name);
        goto fail;
    }
    text[hlen] = '\0';
    if (strlen(text) != hlen) {
        rc = npy_bad(ctx, s->name, "NUL byte");
        goto fail;
    }
    if ((rc = npy_parse_dict(ctx, s->name, text, &h)))
        goto fail;
    nrows = (size_t)h.shape[0];
    ncols = 1;
    for (int k = 1; k < h.ndim; k++) {
        if (h.shape[k] > SIZE_MAX || (h.shape[k] && ncols > SIZE_MAX
                                      / (size_t)h.shape[k])) {
            rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY shape too "
                                "large (the product of its dimensions after "
                                "the first overflows)", s->name);
            goto fail;
        }
        ncols *= (size_t)h.shape[k];
    }
    if (h.shape[0] > SIZE_MAX || ncols > SIZE_MAX / 8 / 2) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY shape too large",
                            s->name);
        goto fail;
    }
    if (nrows == 0 || ncols == 0) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: empty input (NPY shape "
                            "with %llu rows of %zu values)", s->name,
                            h.shape[0], ncols);
        goto fail;
    }
    if (ncols > DATA_LINE_MAX) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY array has %zu "
                            "values per row (limit %zu)", s->name, ncols,
                            DATA_LINE_MAX);
        goto fail;
    }
    if ((rc = data_build_selection(ctx, s->name, opts, NULL, ncols, 0,
                                   &sel)))
        goto fail;
    rowbytes = ncols * (size_t)h.esize;
    if (!(row = malloc(rowbytes)) || !(data = calloc(1, sizeof *data))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    data->d = sel.d;
    data->c = sel.c;
    lo = 0;
    hi = nrows;
    if (part) {
        /* the part's rows by offset; the last part also reads on to the
         * end, to find trailing bytes */
        unsigned long long at = data_src_tell(s);
        data_part_rows(nrows, part, &lo, &hi);
        part->total = nrows;
        if (nrows > (ULLONG_MAX - at) / rowbytes
            || data_src_seek(s, at + (unsigned long long)lo * rowbytes,
                             hi < nrows ? (unsigned long long)(hi - lo)
                                          * rowbytes : ~0ull)) {
            part->whole = 1;
            goto fail;
        }
    }
    /* rows arrive one by one: a header claiming a huge shape costs
     * nothing until the bytes are really there */
    for (size_t i = lo; i < hi; i++) {
        size_t got = data_src_read(s, row, rowbytes);
        if (got != rowbytes) {
            unsigned long long have = (unsigned long long)i * rowbytes + got;
            rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY truncated: data "
                                "has %llu bytes, expected %llu", s->name, have,
                                h.shape[0] * (unsigned long long)rowbytes);
            goto fail;
        }
        if ((rc = data_grow(ctx, s->name, data, &cap, i - lo + 1)))
            goto fail;
        for (size_t j = 0; j < ncols; j++) {
            long dst = sel.map[j];
            long long iv = 0;
            int isint;
            double v;
            flow_real r;
            if (dst < 0)
                continue;
            v = npy_value(&h, row + (size_t)h.esize * j, &iv, &isint);
            if (isint && !int_exact(iv)) {
                rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: [%zu, %zu]: "
                                    "integer %.17g is not exact in %s",
                                    s->name, i, j, v, FLOW_REAL_NAME);
                goto fail;
            }
            r = isint ? (flow_real)iv : (flow_real)v;
            if (r == 0 && v != 0 && !underflows++) {
                uf_row = i;
                uf_col = j;
                snprintf(uf_text, sizeof uf_text, "%g", v);
            }
            if (!isfinite(v) || !isfinite(r)) {
                rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: [%zu, %zu]: %s "
                                    "value %g", s->name, i, j, isfinite(v)
                                    ? "out of range" : "NaN or Inf", v);
                goto fail;
            }
            if ((size_t)dst < sel.d)
                data->x[(i - lo) * sel.d + (size_t)dst] = r;
            else
                data->ctx[(i - lo) * sel.c + ((size_t)dst - sel.d)] = r;
        }
        data->n = i - lo + 1;
    }
    if (hi == nrows && data_src_get(s) != -1) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: NPY has trailing bytes "
                            "after %llu x %zu values", s->name, h.shape[0],
                            ncols);
        goto fail;
    }
    data->npy = 1;
    /* (N, H, W) and (N, C, H, W): rows are images [1, H, W], [C, H, W],
     * unless columns were picked out of them */
    if (h.ndim >= 3 && data_sel_identity(&sel)) {
        data->rank = 3;
        data->shape[0] = h.ndim == 4 ? (size_t)h.shape[1] : 1;
        data->shape[1] = (size_t)h.shape[h.ndim - 2];
        data->shape[2] = (size_t)h.shape[h.ndim - 1];
    }
    if ((rc = data_set_places(ctx, s->name, &sel, data)))
        goto fail;
    if (part) {
        part->underflows = underflows;
        part->uf_place = uf_row;
        part->uf_col = uf_col;
        snprintf(part->uf_text, sizeof part->uf_text, "%s", uf_text);
    } else if (underflows
               && (rc = data_underflow_note(ctx, s->name, underflows, uf_row,
                                            uf_col, uf_text, data)))
        goto fail;
    *out = data;
    data = NULL;
fail:
    free(text);
    free(row);
    free(sel.map);
    data_free(data);
    return rc;
}
