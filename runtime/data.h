/* data.h - internal: data sets (n x d matrices of flow_real plus optional
 * context columns), their readers (CSV, NPY, IDX, PNG directories) and
 * writers (CSV, NPY, IDX, PNG grids). */
#ifndef FLOW_RUNTIME_DATA_H
#define FLOW_RUNTIME_DATA_H

#include <stddef.h>
#include <stdio.h>

#include "flow/flow.h"

/* Longest CSV line accepted, and longest single CSV cell. */
#define DATA_LINE_MAX ((size_t)1 << 20)
#define DATA_CELL_MAX 1024
/* Longest NPY header accepted. */
#define DATA_NPY_HEADER_MAX ((size_t)1 << 20)

/* The struct behind the public flow_data handle. */
struct flow_data {
    size_t n;           /* rows */
    size_t d;           /* data columns */
    size_t c;           /* context columns (0: none) */
    flow_real *x;       /* n x d, row-major, owned; NULL when n * d == 0 */
    flow_real *ctx;     /* n x c, row-major, owned; NULL when c == 0 */
    char **names;       /* d + c column names, owned; NULL when unnamed */
    /* where the values came from, for located messages (data_locate) */
    char *source;       /* file name, owned; NULL when made in memory */
    int npy;            /* read from NPY: places are [row, column] */
    size_t line0;       /* CSV: the line of row 0, when lines is NULL */
    size_t *lines;      /* CSV: the line of each row, owned; NULL while
                           the rows sit on consecutive lines */
    size_t *cols;       /* the file's 0-based column of each of the d + c
                           columns, owned; NULL: column j is column j */
    char *note;         /* a warning about the values read, owned; NULL
                           when none */
    int nonfinite_ok;   /* data_write may write NaN and Inf */
    /* the shape of one sample (row): rank 0 while flat, else 2..4 dims
     * whose product is d, C order (image rows are [C, H, W], NCHW) */
    int rank;
    size_t shape[4];
    /* IDX (u8) and PNG writers: values lo..hi map onto 0..255; without
     * a range, values are the pixel integers themselves */
    int has_range;
    double lo, hi;
    /* one process's share of a data set split over a communicator
     * (shard.c): its rows are [first, first + n) of `total`; places in
     * messages count from first */
    int part;
    size_t first, total;
};

typedef struct data_opts {
    const char *columns;  /* data columns: "a,b" names or "0,2" indices;
                             NULL: every column not selected as context */
    const char *context;  /* context columns, same syntax; NULL: none */
    size_t expect_dim;    /* required number of data columns, 0: any */
} data_opts;

/* A buffered input stream (runtime/data_src.c): bytes of a FILE, or of
 * the gzip stream in it (RFC 1952, inflated with zlib when configure
 * found it), so that every reader takes gzip'd input alike. */
typedef struct data_src {
    FILE *f;
    const char *name;
    unsigned char *buf;
    size_t pos, len;
    int eof, ioerr;
    int gz;                 /* inflating a gzip stream */
    int gzerr;              /* corrupt or truncated gzip stream */
    void *z;                /* z_stream, owned */
    unsigned char *zbuf;    /* compressed bytes, owned */
    unsigned long long zin; /* compressed bytes consumed (messages) */
    unsigned long long base;/* not gzip: the file offset of buf[0] */
    unsigned long long left;/* bytes the stream may still read from f
                               (data_src_seek's limit) */
} data_src;

#define DATA_SRC_BUF 65536

/* Opens s on f (buffers allocated; the first block read; gzip recognised
 * by its magic 1f 8b).  FLOW_OK, or an error in ctx naming `name`. */
int data_src_open(flow_ctx *ctx, data_src *s, FILE *f, const char *name);
/* Frees what data_src_open allocated (f stays open). */
void data_src_close(data_src *s);
/* Refills s->buf; 0 at the end (or on an error: s->ioerr, s->gzerr). */
int data_src_fill(data_src *s);
/* The next byte, or -1 at the end. */
int data_src_get(data_src *s);
/* Up to n bytes into dst; fewer only at the end. */
size_t data_src_read(data_src *s, void *dst, size_t n);
/* An error in ctx for a read that ended early because of s's stream
 * (read or gzip error), or FLOW_OK when the data really ended. */
int data_src_error(flow_ctx *ctx, const data_src *s);
/* Not gzip: the stream goes on at file offset `off` and ends after
 * `limit` bytes (or the file's end).  0, or -1 when s inflates gzip or f
 * cannot seek (a pipe). */
int data_src_seek(data_src *s, unsigned long long off,
                  unsigned long long limit);
/* Not gzip: the file offset of the next byte. */
unsigned long long data_src_tell(const data_src *s);

/* The NPY magic (NumPy format, numpy/lib/format.py). */
#define DATA_NPY_MAGIC "\x93NUMPY"

/* Column selection: map[j] = destination of input column j: -1 skipped,
 * 0..d-1 data column, d..d+c-1 context column. */
typedef struct data_sel {
    long *map;
    size_t ncols, d, c;
} data_sel;

/* The selection opts make of ncols input columns (names: the header's,
 * or NULL; first_line: the header's line for messages, or 0).  sel->map
 * is allocated even on failure (the caller frees it). */
int data_build_selection(flow_ctx *ctx, const char *name,
                         const data_opts *opts, char **names, size_t ncols,
                         size_t first_line, data_sel *sel);
/* Every column, in order, and no context. */
int data_sel_identity(const data_sel *sel);
/* Remembers the file and its selected columns for data_locate. */
int data_set_places(flow_ctx *ctx, const char *name, const data_sel *sel,
                    flow_data *data);

/* Applies opts to a data set read whole (d columns, no context, from an
 * image file): column selection, context columns, the expected
 * dimension.  A selection other than all columns in order makes the
 * rows flat (rank 0). */
int data_apply_opts(flow_ctx *ctx, const char *name, const data_opts *opts,
                    flow_data *data);
/* Grows data->x and data->ctx to hold at least `rows` rows, *cap being
 * the rows they hold now (amortised doubling). */
int data_grow(flow_ctx *ctx, const char *name, flow_data *data, size_t *cap,
              size_t rows);
/* A copy of name as data->source (messages, data_locate). */
int data_set_source(flow_ctx *ctx, flow_data *data, const char *name);

/* A part of a file for one of `size` processes (shard.c).  NPY and IDX:
 * the rows [rank n / size, (rank + 1) n / size), n from the header.
 * CSV: the lines that start in the rank-th of `size` equal byte ranges
 * of the text after the header, each line belonging to the range that
 * holds its first byte.  Out: whole = 1 when the file cannot be read in
 * parts (stdin, a pipe, gzip, a PNG directory) or, for CSV, when the
 * part ends inside a quoted value (a line break in quotes): then it is
 * read whole by one process; the rest is valid when whole = 0. */
typedef struct data_part {
    int rank, size;
    int whole;
    int csv;                /* CSV: line numbers are the part's own */
    size_t total;           /* NPY, IDX: the file's rows */
    size_t line_head;       /* CSV: the file's line where the rows
                               begin (after the header) */
    size_t lines;           /* CSV: line breaks in the part */
    size_t line_base;       /* CSV in: the file's line of the part's
                               first byte (0: unknown, counted from 1) */
    size_t underflows;      /* values read as 0 from non-zero text */
    size_t uf_place, uf_col;/* the first of them: line (CSV, counted as
                               the part's lines are) or row, column */
    char uf_text[48];
} data_part;

/* Reads part->rank's part of `path` (never "-") into *out (NULL when
 * part->whole is set).  FLOW_OK or an error in ctx; a CSV part whose
 * line numbers are its own (line_base 0) names its lines from 1. */
int data_read_part(flow_ctx *ctx, const char *path, const data_opts *opts,
                   data_part *part, flow_data **out);
/* The note data_read leaves about values that underflowed to 0: count
 * of them, the first at place (CSV line, else row) and column. */
int data_underflow_note(flow_ctx *ctx, const char *name, size_t count,
                        size_t place, size_t col, const char *text,
                        flow_data *data);

/* The rows [rank n / size, (rank + 1) n / size) of part's share of n. */
void data_part_rows(size_t n, const data_part *part, size_t *lo,
                    size_t *hi);
/* NPY (runtime/npy.c): s positioned at the magic; part NULL for the whole
 * file. */
int data_read_npy(flow_ctx *ctx, data_src *s, const data_opts *opts,
                  data_part *part, flow_data **out);
/* IDX (runtime/images.c): s positioned at the magic; part NULL for the
 * whole file. */
int data_read_idx(flow_ctx *ctx, data_src *s, const data_opts *opts,
                  data_part *part, flow_data **out);
/* A directory of PNG files, sorted by name (runtime/images.c). */
int data_read_png_dir(flow_ctx *ctx, const char *dir, const data_opts *opts,
                      flow_data **out);
/* Writers of runtime/images.c, on an open stream. */
int data_write_idx(flow_ctx *ctx, const flow_data *data, const char *path,
                   FILE *f);
int data_write_png(flow_ctx *ctx, const flow_data *data, const char *path,
                   FILE *f);
/* A value as an 8-bit pixel: mapped by the data set's range when it has
 * one, rounded to the nearest integer and clamped to 0..255. */
unsigned data_pixel_u8(const flow_data *data, flow_real v);


/* New zero-filled data set, or NULL (message in ctx) on overflow or when
 * out of memory.  Free with data_free. */
flow_data *data_new(flow_ctx *ctx, size_t n, size_t d, size_t c);
void data_free(flow_data *data);
/* Gives the data set column names (copied); names has d + c entries. */
int data_set_names(flow_ctx *ctx, flow_data *data, const char *const *names);

/* Reads `path` ("-": stdin, read fully).  NPY is recognised by its magic
 * bytes, anything else is parsed as CSV.  opts may be NULL.  On success
 * *out is a new data set owned by the caller. */
int data_read(flow_ctx *ctx, const char *path, const data_opts *opts,
              flow_data **out);
/* The same from an open stream; `name` is used in messages. */
int data_read_stream(flow_ctx *ctx, const char *name, FILE *f,
                     const data_opts *opts, flow_data **out);

/* The place of value (row, col) in the file it was read from, into buf:
 * "FILE:LINE:COLUMN" for CSV (1-based, as editors count), "FILE: [ROW,
 * COL]" for NPY (0-based indices, as numpy counts); col SIZE_MAX gives
 * the row only ("FILE:LINE", "FILE: [ROW, :]").  col counts the data
 * columns first, then the context columns.  A data set made in memory
 * gives "row R" (1-based). */
void data_locate(const flow_data *data, size_t row, size_t col, char *buf,
                 size_t cap);

/* Writes data (its d data columns, then its c context columns) to path
 * ("-": stdout).  FLOW_DATA_AUTO picks NPY for a name ending in ".npy" and
 * CSV otherwise.  A header row (CSV only) uses the column names, or x0..,
 * c0.. when the data set has none.  Writing to a path is atomic. */
int data_write(flow_ctx *ctx, const flow_data *data, const char *path,
               flow_data_format format, int header);

#endif
