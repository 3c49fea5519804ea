/* images.c - image data: sample shapes, the IDX reader and writer
 * (MNIST's format), directories of PNG files and PNG grids (libpng). */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef FLOW_HAVE_PNG
#include <png.h>
#endif

#include "data.h"

/* ------------------------------------------------------------ shapes */

int flow_data_shape(const flow_data *data, size_t shape[4])
{
    shape[0] = shape[1] = shape[2] = shape[3] = 0;
    if (!data->rank) {
        shape[0] = data->d;
        return 1;
    }
    for (int r = 0; r < data->rank; r++)
        shape[r] = data->shape[r];
    return data->rank;
}

int flow_data_set_shape(flow_ctx *ctx, flow_data *data, const size_t *shape,
                        int rank)
{
    size_t prod = 1;
    if (rank < 1 || rank > 4)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "a sample shape has 1 to 4 "
                              "dimensions, not %d", rank);
    for (int r = 0; r < rank; r++) {
        if (!shape[r] || prod > SIZE_MAX / shape[r])
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "sample shape: "
                                  "dimension %d is %zu", r + 1, shape[r]);
        prod *= shape[r];
    }
    if (prod != data->d)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "sample shape of %zu values "
                              "for rows of %zu", prod, data->d);
    data->rank = rank == 1 ? 0 : rank;
    for (int r = 0; r < 4; r++)
        data->shape[r] = r < rank ? shape[r] : 0;
    return FLOW_OK;
}

int flow_data_set_pixel_range(flow_ctx *ctx, flow_data *data, double lo,
                              double hi)
{
    if (!isfinite(lo) || !isfinite(hi) || !(lo < hi))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "pixel range %g,%g: need "
                              "finite lo < hi", lo, hi);
    data->has_range = 1;
    data->lo = lo;
    data->hi = hi;
    return FLOW_OK;
}

/* ------------------------------------------------------------ pixels */

unsigned data_pixel_u8(const flow_data *data, flow_real v)
{
    double p = v;
    if (data->has_range)
        p = (p - data->lo) / (data->hi - data->lo) * 255.0;
    p = floor(p + 0.5);
    return p <= 0 ? 0u : p >= 255 ? 255u : (unsigned)p;
}

/* The first NaN or Inf of the n x d values of data, as an error. */
static int nonfinite(flow_ctx *ctx, const char *path, const flow_data *data)
{
    for (size_t i = 0; i < data->n * data->d; i++)
        if (!isfinite(data->x[i]))
            return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: cannot write NaN "
                                  "or Inf as a pixel (row %zu, column %zu)",
                                  path, i / data->d, i % data->d);
    return FLOW_OK;
}

static int only_values(flow_ctx *ctx, const char *path, const flow_data *data,
                       const char *what)
{
    if (!data->c)
        return FLOW_OK;
    return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: %s holds the data values "
                          "only, and these rows have %zu more columns "
                          "(context, logprob or weights)", path, what,
                          data->c);
}

/* ------------------------------------------------------------ IDX */

/* IDX (LeCun et al., "THE MNIST DATABASE of handwritten digits", file
 * formats): bytes 0 0, a type code, the number of dimensions; then each
 * dimension as a big-endian 32-bit integer; then the values, big-endian,
 * in C order. */
static int idx_size(int type)
{
    switch (type) {
    case 0x08: case 0x09: return 1;     /* unsigned byte, signed byte */
    case 0x0B: return 2;                /* short */
    case 0x0C: case 0x0D: return 4;     /* int, float */
    case 0x0E: return 8;                /* double */
    default: return 0;
    }
}

static double idx_value(int type, const unsigned char *p)
{
    uint64_t u = 0;
    int size = idx_size(type);
    for (int k = 0; k < size; k++)
        u = u << 8 | p[k];
    switch (type) {
    case 0x08: return (double)u;
    case 0x09: return (double)(int8_t)(uint8_t)u;
    case 0x0B: return (double)(int16_t)(uint16_t)u;
    case 0x0C: return (double)(int32_t)(uint32_t)u;
    case 0x0D: {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        return f;
    }
    default: {
        double v;
        memcpy(&v, &u, 8);
        return v;
    }
    }
}

int data_read_idx(flow_ctx *ctx, data_src *s, const data_opts *opts,
                  data_part *part, flow_data **out)
{
    unsigned char head[4 + 4 * 4], *row = NULL;
    unsigned long long dims[4];
    flow_data *data = NULL;
    size_t nrows, ncols = 1, rowbytes, cap = 0, lo, hi;
    int type, ndims, esize, rc = FLOW_OK;

    if (data_src_read(s, head, 4) != 4)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: IDX truncated in the "
                              "magic", s->name);
    type = head[2];
    ndims = head[3];
    esize = idx_size(type);
    if (data_src_read(s, head + 4, 4 * (size_t)ndims) != 4 * (size_t)ndims)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: IDX truncated in the "
                              "%d dimensions (bytes 4..%d)", s->name, ndims,
                              3 + 4 * ndims);
    for (int k = 0; k < ndims; k++) {
        const unsigned char *b = head + 4 + 4 * k;
        dims[k] = (unsigned long long)b[0] << 24
                  | (unsigned long long)b[1] << 16
                  | (unsigned long long)b[2] << 8 | b[3];
        if (k && dims[k] && ncols > DATA_LINE_MAX / dims[k])
            return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: IDX dimensions "
                                  "give more than %zu values per sample",
                                  s->name, DATA_LINE_MAX);
        if (k)
            ncols *= (size_t)dims[k];
    }
    nrows = (size_t)dims[0];
    if (nrows == 0 || ncols == 0)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: empty input (IDX "
                              "with %zu samples of %zu values)", s->name,
                              nrows, ncols);
    rowbytes = ncols * (size_t)esize;
    if (!(row = malloc(rowbytes)) || !(data = calloc(1, sizeof *data))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    data->d = ncols;
    lo = 0;
    hi = nrows;
    if (part) {
        /* the part's samples by offset; the last part reads on to the
         * end, to find trailing bytes */
        unsigned long long at = data_src_tell(s);
        data_part_rows(nrows, part, &lo, &hi);
        part->total = nrows;
        if (data_src_seek(s, at + (unsigned long long)lo * rowbytes,
                          hi < nrows ? (unsigned long long)(hi - lo)
                                       * rowbytes : ~0ull)) {
            part->whole = 1;
            goto fail;
        }
    }
    /* rows arrive one by one: dimensions claiming far more than the file
     * holds cost nothing until the bytes are really there */
    for (size_t i = lo; i < hi; i++) {
        size_t got = data_src_read(s, row, rowbytes);
        if (got != rowbytes) {
            rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: IDX truncated: "
                                "sample %zu of %zu ends after %zu of its %zu "
                                "bytes (the dimensions need %llu data bytes)",
                                s->name, i, nrows, got, rowbytes,
                                (unsigned long long)nrows * rowbytes);
            goto fail;
        }
        if ((rc = data_grow(ctx, s->name, data, &cap, i - lo + 1)))
            goto fail;
        for (size_t j = 0; j < ncols; j++) {
            double v = idx_value(type, row + (size_t)esize * j);
            flow_real r = (flow_real)v;
            if (!isfinite(v) || !isfinite(r)) {
                rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: [%zu, %zu]: %s "
                                    "value %g", s->name, i, j, isfinite(v)
                                    ? "out of range" : "NaN or Inf", v);
                goto fail;
            }
            /* 32-bit integers beyond 2^24 have no exact float32 */
            if (type == 0x0C && (double)r != v) {
                rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: [%zu, %zu]: "
                                    "integer %.0f is not exact in %s", s->name,
                                    i, j, v, FLOW_REAL_NAME);
                goto fail;
            }
            data->x[(i - lo) * ncols + j] = r;
        }
        data->n = i - lo + 1;
    }
    if (hi == nrows && data_src_get(s) != -1) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: IDX has bytes after its "
                            "%zu samples of %zu values (the dimensions "
                            "disagree with the file's size)", s->name, nrows,
                            ncols);
        goto fail;
    }
    data->npy = 1;      /* places are [sample, value] */
    if (ndims >= 3) {
        data->rank = 3;
        data->shape[0] = ndims == 4 ? (size_t)dims[1] : 1;
        data->shape[1] = (size_t)dims[ndims - 2];
        data->shape[2] = (size_t)dims[ndims - 1];
    }
    if ((rc = data_set_source(ctx, data, s->name))
        || (rc = data_apply_opts(ctx, s->name, opts, data)))
        goto fail;
    *out = data;
    data = NULL;
fail:
    free(row);
    data_free(data);
    return rc;
}

int data_write_idx(flow_ctx *ctx, const flow_data *data, const char *path,
                   FILE *f)
{
    unsigned char head[4 + 4 * 5];
    size_t dims[5];
    int nd = 0, rc;
    unsigned char *row;
    if ((rc = only_values(ctx, path, data, "IDX"))
        || (rc = nonfinite(ctx, path, data)))
        return rc;
    dims[nd++] = data->n;
    if (!data->rank)
        dims[nd++] = data->d;
    /* [1, H, W] as MNIST's [N, H, W] */
    for (int r = data->rank == 3 && data->shape[0] == 1; r < data->rank; r++)
        dims[nd++] = data->shape[r];
    head[0] = head[1] = 0;
    head[2] = 0x08;
    head[3] = (unsigned char)nd;
    for (int k = 0; k < nd; k++) {
        if (dims[k] > 0xFFFFFFFFu)
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: IDX dimension %zu "
                                  "does not fit in 32 bits", path, dims[k]);
        for (int b = 0; b < 4; b++)
            head[4 + 4 * k + b] = (unsigned char)(dims[k] >> (24 - 8 * b));
    }
    fwrite(head, 1, 4 + 4 * (size_t)nd, f);
    if (!(row = malloc(data->d ? data->d : 1)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < data->n; i++) {
        for (size_t j = 0; j < data->d; j++)
            row[j] = (unsigned char)data_pixel_u8(data,
                                                  data->x[i * data->d + j]);
        fwrite(row, 1, data->d, f);
    }
    free(row);
    return FLOW_OK;
}

/* ------------------------------------------------------------ PNG */

/* [C, H, W] of the images a PNG grid shows: rank 2 is [H, W], C = 1. */
static int grid_shape(flow_ctx *ctx, const char *path, const flow_data *data,
                      size_t *c, size_t *h, size_t *w)
{
    if (data->rank == 2) {
        *c = 1, *h = data->shape[0], *w = data->shape[1];
        return FLOW_OK;
    }
    if (data->rank == 3 && (data->shape[0] == 1 || data->shape[0] == 3)) {
        *c = data->shape[0], *h = data->shape[1], *w = data->shape[2];
        return FLOW_OK;
    }
    return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: a PNG grid needs images of "
                          "shape [C, H, W] with C 1 (grey) or 3 (RGB) (flowkit "
                          "sample --shape C,H,W)", path);
}

#ifdef FLOW_HAVE_PNG

typedef struct png_err {
    char msg[256];
} png_err;

static void png_error_fn(png_structp png, png_const_charp msg)
{
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Warnings (an sRGB profile libpng dislikes, ...) are no reason to stop. */
static void png_warn_fn(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* One decoded image: c channels of 8 or 16 bits, h x w, in rows of
 * bytes as libpng returns them (channels interleaved, 16-bit values
 * big-endian). */
typedef struct png_img {
    size_t c, h, w;
    int depth;          /* the file's sample depth (palette: 8) */
    int bytes;          /* bytes per value after the transforms: 1 or 2 */
    unsigned char *pix; /* owned */
} png_img;

/* Decodes path (open as f) into im, as C = 1 (grey, grey + alpha) or C =
 * 3 (RGB, RGBA, palette) values that are the file's integers: alpha is
 * dropped, a palette becomes its RGB colours, grey of 1, 2 or 4 bits
 * keeps its levels 0..2^depth-1. */
static int png_decode(flow_ctx *ctx, const char *path, FILE *f, png_img *im)
{
    png_err err = {""};
    png_structp png;
    png_infop info = NULL;
    png_bytep *volatile rows = NULL;
    unsigned char *volatile pix = NULL;
    png_uint_32 w, h;
    int depth, ctype;
    size_t rowbytes;
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8))
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: not a PNG file (bad "
                              "signature; a directory of PNG files holds only "
                              "PNG files)", path);
    if (!(png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err,
                                       png_error_fn, png_warn_fn))
        || !(info = png_create_info_struct(png))) {
        png_destroy_read_struct(&png, NULL, NULL);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(pix);
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: bad PNG: %s", path,
                              err.msg);
    }
    /* images of a data set are small: far larger ones are a mistake */
    png_set_user_limits(png, 1u << 14, 1u << 14);
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, NULL, NULL, NULL);
    im->depth = ctype == PNG_COLOR_TYPE_PALETTE ? 8 : depth;
    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);    /* a tRNS chunk becomes alpha */
    if (depth < 8)
        png_set_packing(png);
    if (ctype & PNG_COLOR_MASK_ALPHA || ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    im->c = png_get_channels(png, info);
    im->bytes = png_get_bit_depth(png, info) == 16 ? 2 : 1;
    im->h = h;
    im->w = w;
    rowbytes = png_get_rowbytes(png, info);
    if ((im->c != 1 && im->c != 3) || rowbytes != im->c * im->w * im->bytes)
        png_error(png, "unexpected layout after conversion");
    if (!(pix = malloc(rowbytes * h)) || !(rows = malloc(h * sizeof *rows)))
        png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = pix + y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    im->pix = pix;
    return FLOW_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir, but for hidden ones (".", "..", ".DS_Store"),
 * sorted by strcmp so that the rows come in one order everywhere. */
static int list_dir(flow_ctx *ctx, const char *dir, char ***names, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t cap = 0;
    char **v = NULL;
    *n = 0;
    if (!d)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot open the "
                              "directory: %s", dir, strerror(errno));
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name) + 1;
        if (e->d_name[0] == '.')
            continue;
        if (*n == cap) {
            char **nv = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof *v);
            if (!nv)
                goto nomem;
            v = nv;
        }
        if (!(v[*n] = malloc(len)))
            goto nomem;
        memcpy(v[(*n)++], e->d_name, len);
    }
    closedir(d);
    if (*n)
        qsort(v, *n, sizeof *v, by_name);
    *names = v;
    return FLOW_OK;
nomem:
    closedir(d);
    for (size_t i = 0; i < *n; i++)
        free(v[i]);
    free(v);
    *n = 0;
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", dir);
}

/* Checks im against the first image and puts it in row i of data. */
static int png_store(flow_ctx *ctx, const char *path, const char *first,
                     const png_img *im, const png_img *im0, flow_data *data,
                     size_t i)
{
    size_t hw = im->h * im->w;
    flow_real *x = data->x + i * data->d;
    if (im->c != im0->c || im->h != im0->h || im->w != im0->w)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: image of shape [%zu, "
                              "%zu, %zu] ([C, H, W]), but %s is [%zu, %zu, "
                              "%zu]: every image needs the same shape", path,
                              im->c, im->h, im->w, first, im0->c, im0->h,
                              im0->w);
    if (im->depth != im0->depth)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: %d-bit samples, but "
                              "%s has %d-bit ones: every image needs the same "
                              "levels", path, im->depth, first, im0->depth);
    for (size_t p = 0; p < hw; p++)
        for (size_t c = 0; c < im->c; c++) {
            const unsigned char *b = im->pix + (p * im->c + c) * im->bytes;
            x[c * hw + p] = (flow_real)(im->bytes == 2 ? b[0] << 8 | b[1]
                                                       : b[0]);
        }
    return FLOW_OK;
}

int data_read_png_dir(flow_ctx *ctx, const char *dir, const data_opts *opts,
                      flow_data **out)
{
    char **names = NULL, *path = NULL, *first = NULL;
    size_t n = 0, cap = 0;
    png_img im0 = {0}, im = {0};
    flow_data *data = NULL;
    int rc;
    if ((rc = list_dir(ctx, dir, &names, &n)))
        return rc;
    if (!n) {
        rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: empty input (no PNG "
                            "files in the directory)", dir);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(names[i]) + 2;
        struct stat st;
        FILE *f;
        png_img *cur = i ? &im : &im0;
        if (len > cap) {
            char *p = realloc(path, cap = len);
            if (!p) {
                rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
                goto fail;
            }
            path = p;
        }
        snprintf(path, len, "%s/%s", dir, names[i]);
        if (stat(path, &st) || !S_ISREG(st.st_mode)) {
            rc = flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: not a regular "
                                "file (a directory of PNG files holds only "
                                "PNG files)", path);
            goto fail;
        }
        if (!(f = fopen(path, "rb"))) {
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot open: %s", path,
                                strerror(errno));
            goto fail;
        }
        rc = png_decode(ctx, path, f, cur);
        fclose(f);
        if (rc)
            goto fail;
        if (!i) {
            if (!(first = malloc(len))) {
                rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
                goto fail;
            }
            memcpy(first, path, len);
            if (!(data = data_new(ctx, n, im0.c * im0.h * im0.w, 0))) {
                rc = FLOW_ERR_NOMEM;
                goto fail;
            }
        }
        rc = png_store(ctx, path, first, cur, &im0, data, i);
        free(im.pix);
        im.pix = NULL;
        if (rc)
            goto fail;
    }
    data->npy = 1;      /* places are [sample, value] */
    data->rank = 3;
    data->shape[0] = im0.c;
    data->shape[1] = im0.h;
    data->shape[2] = im0.w;
    if ((rc = data_set_source(ctx, data, dir))
        || (rc = data_apply_opts(ctx, dir, opts, data)))
        goto fail;
    *out = data;
    data = NULL;
fail:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(path);
    free(first);
    free(im0.pix);
    free(im.pix);
    data_free(data);
    return rc;
}

typedef struct grid {
    size_t c, h, w;         /* each image */
    size_t cols, rows;      /* images across, down */
    size_t width, height;   /* the PNG */
} grid;

/* Writes the grid's PNG rows (kept apart from data_write_png so that
 * nothing setjmp must preserve lives in registers). */
static int png_grid(flow_ctx *ctx, const flow_data *data, const char *path,
                    FILE *f, const grid *g)
{
    png_err err = {""};
    png_structp png;
    png_infop info = NULL;
    unsigned char *volatile line = NULL;
    if (!(png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err,
                                        png_error_fn, png_warn_fn))
        || !(info = png_create_info_struct(png))) {
        png_destroy_write_struct(&png, NULL);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(line);
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: writing PNG: %s", path,
                              err.msg);
    }
    if (!(line = malloc(g->width * g->c)))
        png_error(png, "out of memory");
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)g->width, (png_uint_32)g->height, 8,
                 g->c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (size_t y = 0; y < g->height; y++) {
        size_t gy = y / (g->h + 1), iy = y % (g->h + 1);
        memset(line, 0, g->width * g->c);
        for (size_t gx = 0; iy < g->h && gx < g->cols; gx++) {
            size_t k = gy * g->cols + gx;
            const flow_real *img = data->x + k * data->d;
            if (k >= data->n)
                break;
            for (size_t x = 0; x < g->w; x++)
                for (size_t ch = 0; ch < g->c; ch++)
                    line[(gx * (g->w + 1) + x) * g->c + ch] = (unsigned char)
                        data_pixel_u8(data, img[(ch * g->h + iy) * g->w + x]);
        }
        png_write_row(png, line);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(line);
    return FLOW_OK;
}

/* A grid of ceil(sqrt(N)) images across, with a 1-pixel black gap
 * between them, as 8-bit grey or RGB (PNG, ISO/IEC 15948). */
int data_write_png(flow_ctx *ctx, const flow_data *data, const char *path,
                   FILE *f)
{
    grid g;
    int rc;
    if ((rc = only_values(ctx, path, data, "a PNG grid"))
        || (rc = grid_shape(ctx, path, data, &g.c, &g.h, &g.w))
        || (rc = nonfinite(ctx, path, data)))
        return rc;
    for (g.cols = 1; g.cols * g.cols < data->n; g.cols++)
        ;
    g.rows = data->n ? (data->n + g.cols - 1) / g.cols : 1;
    if (g.w > (0x7FFFFFFFu - g.cols) / g.cols
        || g.h > (0x7FFFFFFFu - g.rows) / g.rows)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: a grid of %zu x %zu "
                              "images of %zu x %zu is too large for PNG", path,
                              g.rows, g.cols, g.h, g.w);
    g.width = g.cols * g.w + g.cols - 1;
    g.height = g.rows * g.h + g.rows - 1;
    return png_grid(ctx, data, path, f, &g);
}

#else

int data_read_png_dir(flow_ctx *ctx, const char *dir, const data_opts *opts,
                      flow_data **out)
{
    (void)opts;
    *out = NULL;
    return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "%s: a directory (of PNG "
                          "files?), and this flowkit was built without libpng "
                          "(install libpng-dev and configure again)", dir);
}

int data_write_png(flow_ctx *ctx, const flow_data *data, const char *path,
                   FILE *f)
{
    size_t c, h, w;
    int rc;
    (void)f;
    if ((rc = grid_shape(ctx, path, data, &c, &h, &w)))
        return rc;
    return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "%s: writing PNG needs "
                          "libpng, and this flowkit was built without it "
                          "(install libpng-dev and configure again)", path);
}

#endif
