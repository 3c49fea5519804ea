/* data.h - internal: data sets (n x d matrices of flow_real plus optional
 * context columns) and their CSV and NumPy .npy readers and writers. */
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
};

typedef struct data_opts {
    const char *columns;  /* data columns: "a,b" names or "0,2" indices;
                             NULL: every column not selected as context */
    const char *context;  /* context columns, same syntax; NULL: none */
    size_t expect_dim;    /* required number of data columns, 0: any */
} data_opts;

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
