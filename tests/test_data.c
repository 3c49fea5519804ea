/* test_data.c - CSV and NPY data files: parsing, column selection, the
 * exact message of every bad input, bit-exact round trips, atomic writes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../runtime/data.h"
#include "../runtime/fileio.h"
#include "../runtime/rng.h"
#include "files_util.h"
#include "suites.h"

static flow_ctx *ctx;
static char dir[256];

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    snprintf(dir, sizeof dir, "%s", tu_mkdtemp());
}

static void teardown(void)
{
    flow_ctx_free(ctx);
    tu_rmtree(dir);
}

/* Writes `text` to DIR/NAME, reads it with opts; returns the status and
 * leaves the data set in *out (NULL on failure). */
static int read_text(const char *name, const char *text, const data_opts *o,
                     flow_data **out)
{
    const char *p = tu_path(dir, name);
    tu_write(p, text, strlen(text));
    return data_read(ctx, p, o, out);
}

/* Asserts that reading `text` fails with "DIR/in.csv" + suffix. */
static void expect_csv_error(const char *text, const data_opts *o,
                             const char *suffix)
{
    flow_data *d = (flow_data *)1;
    char want[1024];
    int rc = read_text("in.csv", text, o, &d);
    snprintf(want, sizeof want, "%s%s", tu_path(dir, "in.csv"), suffix);
    ck_assert_int_ne(rc, FLOW_OK);
    ck_assert_ptr_null(d);
    ck_assert_str_eq(flow_errmsg(ctx), want);
}

START_TEST(test_csv_header_and_values)
{
    flow_data *d;
    ck_assert_int_eq(read_text("a.csv", "x, y\n1,2.5\r\n-3e2 , 4\n\n", NULL,
                               &d), FLOW_OK);
    ck_assert_uint_eq(d->n, 2);
    ck_assert_uint_eq(d->d, 2);
    ck_assert_uint_eq(d->c, 0);
    ck_assert_str_eq(flow_data_column_name(d, 0), "x");
    ck_assert_str_eq(flow_data_column_name(d, 1), "y");
    ck_assert_double_eq(d->x[0], 1);
    ck_assert_double_eq(d->x[1], 2.5);
    ck_assert_double_eq(d->x[2], -300);
    ck_assert_double_eq(d->x[3], 4);
    data_free(d);
    /* no header, no final newline, quoted values, blank lines */
    ck_assert_int_eq(read_text("b.csv", "\n1,\"2\"\n\n3,4", NULL, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 2);
    ck_assert_ptr_null(d->names);
    ck_assert_double_eq(d->x[1], 2);
    ck_assert_double_eq(d->x[3], 4);
    data_free(d);
    /* a quoted header name with a comma and a quote */
    ck_assert_int_eq(read_text("c.csv", "\"a,\"\"b\",c\n1,2\n", NULL, &d),
                     FLOW_OK);
    ck_assert_str_eq(flow_data_column_name(d, 0), "a,\"b");
    data_free(d);
    /* a UTF-8 byte order mark is skipped */
    ck_assert_int_eq(read_text("d.csv", "\xEF\xBB\xBFx,y\n1,2\n", NULL, &d),
                     FLOW_OK);
    ck_assert_str_eq(flow_data_column_name(d, 0), "x");
    data_free(d);
}
END_TEST

START_TEST(test_csv_selection)
{
    flow_data *d;
    data_opts o = {"d, a", "2", 0};
    ck_assert_int_eq(read_text("a.csv", "a,b,c,d\n1,2,3,4\n5,6,7,8\n", &o,
                               &d), FLOW_OK);
    ck_assert_uint_eq(d->d, 2);
    ck_assert_uint_eq(d->c, 1);
    ck_assert_double_eq(d->x[0], 4);
    ck_assert_double_eq(d->x[1], 1);
    ck_assert_double_eq(d->x[2], 8);
    ck_assert_double_eq(d->x[3], 5);
    ck_assert_double_eq(d->ctx[0], 3);
    ck_assert_double_eq(d->ctx[1], 7);
    ck_assert_str_eq(flow_data_column_name(d, 0), "d");
    ck_assert_str_eq(flow_data_column_name(d, 2), "c");
    data_free(d);
    /* context only: the data are all other columns, in file order; an
     * unselected column is not parsed at all */
    o.columns = NULL;
    o.context = "b";
    ck_assert_int_eq(read_text("a.csv", "a,b,c\n1,2,x\n", &o, &d),
                     FLOW_ERR_FORMAT);
    o.context = "c";
    ck_assert_int_eq(read_text("a.csv", "a,b,c\n1,2,3\n", &o, &d), FLOW_OK);
    ck_assert_uint_eq(d->d, 2);
    ck_assert_double_eq(d->x[0], 1);
    ck_assert_double_eq(d->x[1], 2);
    ck_assert_double_eq(d->ctx[0], 3);
    data_free(d);
    o.columns = "0";
    o.context = NULL;
    ck_assert_int_eq(read_text("a.csv", "1,label\n2,other\n", &o, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 2);
    ck_assert_double_eq(d->x[0], 1);
    ck_assert_double_eq(d->x[1], 2);
    data_free(d);
}
END_TEST

START_TEST(test_csv_errors)
{
    data_opts o = {NULL, NULL, 0};
    char range[128];
    expect_csv_error("1,2\n3,abc\n", NULL, ":2:2: non-numeric value 'abc'");
    expect_csv_error("x,y\n\n1,2\n\n3,zz\n", NULL,
                     ":5:2: non-numeric value 'zz'");
    expect_csv_error("\"x\nlong\",y\n1,2\n3,q\n", NULL,
                     ":4:2: non-numeric value 'q'");
    expect_csv_error("1,2\n3\n", NULL,
                     ":2:2: ragged row: 1 columns where line 1 has 2");
    expect_csv_error("a,b\n1,2\n3,4,5\n", NULL,
                     ":3:3: ragged row: more columns than the 2 of line 1");
    expect_csv_error("1,nan\n", NULL, ":1:2: NaN or Inf value 'nan'");
    expect_csv_error("1,2\n-Infinity,2\n", NULL,
                     ":2:1: NaN or Inf value '-Infinity'");
    snprintf(range, sizeof range,
             ":1:2: value '1e999' out of range for %s", FLOW_REAL_NAME);
    expect_csv_error("1,1e999\n", NULL, range);
    expect_csv_error("", NULL, ": empty input");
    expect_csv_error("\n \r\n\n", NULL, ": empty input");
    expect_csv_error("x,y\n", NULL, ": no data rows after the header");
    expect_csv_error("1,,2\n", NULL, ":1:2: empty value");
    expect_csv_error("a,,c\n1,2,3\n", NULL,
                     ":1:2: empty column name in the header");
    expect_csv_error("1,\"2\n3,4\n", NULL,
                     ":1:2: unterminated quoted value");
    expect_csv_error("\"1\"x,2\n", NULL,
                     ":1:1: unexpected character after a closing quote");
    o.expect_dim = 3;
    expect_csv_error("1,2\n", &o, ":1: 2 data columns, expected 3");
    expect_csv_error("a,b\n1,2\n", &o, ":1: 2 data columns, expected 3");
    o.expect_dim = 0;
    o.columns = "z";
    expect_csv_error("x,y\n1,2\n", &o, ": no column named 'z'");
    expect_csv_error("1,2\n", &o, ": no column named 'z' (the file has no "
                     "header: select columns by 0-based index)");
    o.columns = "5";
    expect_csv_error("1,2\n", &o, ": column 5 out of range (2 columns, "
                     "indices start at 0)");
    o.columns = "x,0";
    expect_csv_error("x,y\n1,2\n", &o, ": column '0' selected twice");
    o.columns = "x";
    o.context = "x";
    expect_csv_error("x,y\n1,2\n", &o, ": column 'x' selected twice");
    o.columns = "x,,y";
    o.context = NULL;
    expect_csv_error("x,y\n1,2\n", &o, ": bad column list 'x,,y'");
    o.columns = "x";
    expect_csv_error("x,x\n1,2\n", &o,
                     ": column name 'x' is ambiguous (columns 0 and 1)");
}
END_TEST

START_TEST(test_csv_long_lines)
{
    /* a 10 MB line of short cells: refused at the limit, streamed */
    size_t n = 10u << 20;
    char *big = malloc(n + 2), want[128];
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i < n; i += 2)
        big[i] = '1', big[i + 1] = ',';
    big[n - 1] = '1';
    big[n] = '\n';
    big[n + 1] = 0;
    snprintf(want, sizeof want, ":2: line longer than %zu bytes",
             DATA_LINE_MAX);
    big[0] = '\n';          /* the long line is line 2 */
    expect_csv_error(big, NULL, want);
    /* one huge cell */
    memset(big, '1', n);
    snprintf(want, sizeof want, ":1:1: value longer than %d bytes",
             DATA_CELL_MAX);
    expect_csv_error(big, NULL, want);
    free(big);
}
END_TEST

/* Random values over many magnitudes, subnormals included. */
static flow_data *random_data(size_t n, size_t d, size_t c, uint64_t seed)
{
    flow_data *data = data_new(ctx, n, d, c);
    flow_rng r;
    rng_seed(&r, seed);
    ck_assert_ptr_nonnull(data);
    for (size_t i = 0; i < n * d; i++)
        data->x[i] = (flow_real)(rng_normal1(&r)
                                 * pow(10.0, (double)rng_below(&r, 60) - 30));
    for (size_t i = 0; i < n * c; i++)
        data->ctx[i] = (flow_real)rng_normal1(&r);
    data->x[0] = (flow_real)1e-40;     /* subnormal in binary32 */
    data->x[1] = -0.0f;
    return data;
}

static void assert_same(const flow_data *a, const flow_data *b)
{
    ck_assert_uint_eq(a->n, b->n);
    ck_assert_uint_eq(a->d, b->d);
    ck_assert_uint_eq(a->c, b->c);
    ck_assert_int_eq(memcmp(a->x, b->x, a->n * a->d * sizeof(flow_real)), 0);
    if (a->c)
        ck_assert_int_eq(memcmp(a->ctx, b->ctx,
                                a->n * a->c * sizeof(flow_real)), 0);
}

START_TEST(test_round_trip_bits)
{
    flow_data *a = random_data(500, 3, 2, 11), *b;
    const char *names[] = {"p", "q", "r", "lab,1", "lab 2"};
    data_opts o = {NULL, "\"lab,1\"", 0};
    ck_assert_int_eq(data_set_names(ctx, a, names), FLOW_OK);
    /* CSV with a header: context read back by index */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "a.csv"),
                                FLOW_DATA_AUTO, 1), FLOW_OK);
    o.context = "3,4";
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "a.csv"), &o, &b), FLOW_OK);
    assert_same(a, b);
    ck_assert_str_eq(b->names[3], "lab,1");
    data_free(b);
    /* NPY: magic detected even without the .npy suffix */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "a.bin"), FLOW_DATA_NPY,
                                0), FLOW_OK);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "a.bin"), &o, &b), FLOW_OK);
    assert_same(a, b);
    data_free(b);
    /* CSV without header */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "b.csv"), FLOW_DATA_CSV,
                                0), FLOW_OK);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "b.csv"), &o, &b), FLOW_OK);
    assert_same(a, b);
    data_free(b);
    data_free(a);
    ck_assert_int_eq(tu_count_entries(dir), 3);
}
END_TEST

START_TEST(test_csv_many_rows)
{
    /* 200k rows: linear growth, values at the right place */
    enum { N = 200000 };
    FILE *f = fopen(tu_path(dir, "big.csv"), "w");
    flow_data *d;
    ck_assert_ptr_nonnull(f);
    fputs("a,b\n", f);
    for (int i = 0; i < N; i++)
        fprintf(f, "%d,%d\n", i, -i);
    fclose(f);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "big.csv"), NULL, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, N);
    ck_assert_double_eq(d->x[2 * (N - 1)], N - 1);
    ck_assert_double_eq(d->x[2 * (N - 1) + 1], -(N - 1));
    data_free(d);
}
END_TEST

/* An NPY file: preamble (version v), header dict, body. */
static size_t make_npy(unsigned char *buf, int v, const char *dict,
                       const void *body, size_t nbody)
{
    size_t dl = strlen(dict), pre = v == 1 ? 10 : 12;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)v;
    buf[7] = 0;
    fio_put_le(buf + 8, dl, pre - 8);
    memcpy(buf + pre, dict, dl);
    memcpy(buf + pre + dl, body, nbody);
    return pre + dl + nbody;
}

static void expect_npy_error(int v, const char *dict, const void *body,
                             size_t nbody, const char *suffix)
{
    unsigned char buf[1024];
    char want[512];
    flow_data *d = NULL;
    size_t n = make_npy(buf, v, dict, body, nbody);
    tu_write(tu_path(dir, "e.npy"), buf, n);
    ck_assert_int_ne(data_read(ctx, tu_path(dir, "e.npy"), NULL, &d),
                     FLOW_OK);
    ck_assert_ptr_null(d);
    snprintf(want, sizeof want, "%s%s", tu_path(dir, "e.npy"), suffix);
    ck_assert_str_eq(flow_errmsg(ctx), want);
}

START_TEST(test_npy_read)
{
    unsigned char buf[1024];
    double v8[6] = {1, 2, 3, 4.25, -5, 6e-3};
    float v4[3] = {0.5f, -1.5f, 3e-3f};
    flow_data *d;
    size_t n;
    /* 2-D <f8, version 2.0 */
    n = make_npy(buf, 2, "{'descr': '<f8', 'fortran_order': False, "
                 "'shape': (3, 2), }\n", v8, sizeof v8);
    tu_write(tu_path(dir, "a.npy"), buf, n);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "a.npy"), NULL, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 3);
    ck_assert_uint_eq(d->d, 2);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(d->x[i] == (flow_real)v8[i], "x[%d] = %.17g, want %.17g",
                      i, (double)d->x[i], (double)(flow_real)v8[i]);
    data_free(d);
    /* 1-D <f4 is one column */
    n = make_npy(buf, 1, "{\"shape\": (3,), \"fortran_order\": False, "
                 "\"descr\": \"<f4\"}", v4, sizeof v4);
    tu_write(tu_path(dir, "b.npy"), buf, n);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "b.npy"), NULL, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 3);
    ck_assert_uint_eq(d->d, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(d->x[i] == (flow_real)v4[i], "x[%d] = %.17g, want %.17g",
                      i, (double)d->x[i], (double)(flow_real)v4[i]);
    data_free(d);
}
END_TEST

START_TEST(test_npy_errors)
{
    double v8[6] = {1, 2, 3, 4, 5, 6};
    const double bad[2] = {1, NAN};
    const char *ok = "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (3, 2), }";
    expect_npy_error(3, ok, v8, sizeof v8,
                     ": NPY version 3.0 not supported (only 1.0 and 2.0)");
    expect_npy_error(1, "{'descr': '<c8', 'fortran_order': False, "
                     "'shape': (3, 2), }", v8, sizeof v8,
                     ": NPY dtype '<c8' not supported (need float f4 or f8, "
                     "or integer i1 u1 i2 u2 i4 u4 i8 u8, with byte order "
                     "'<', '>' or '|')");
    expect_npy_error(1, "{'descr': '=f8', 'fortran_order': False, "
                     "'shape': (3, 2), }", v8, sizeof v8,
                     ": NPY dtype '=f8' not supported (need float f4 or f8, "
                     "or integer i1 u1 i2 u2 i4 u4 i8 u8, with byte order "
                     "'<', '>' or '|')");
    expect_npy_error(1, "{'descr': '|i4', 'fortran_order': False, "
                     "'shape': (3, 2), }", v8, sizeof v8,
                     ": NPY dtype '|i4' not supported (need float f4 or f8, "
                     "or integer i1 u1 i2 u2 i4 u4 i8 u8, with byte order "
                     "'<', '>' or '|')");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': True, "
                     "'shape': (3, 2), }", v8, sizeof v8,
                     ": NPY Fortran order not supported (save a C-order "
                     "array: np.ascontiguousarray)");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (1, 1, 1, 3, 2), }", v8, sizeof v8,
                     ": NPY array has 5 dimensions, need 1 to 4 ((N), (N, D), "
                     "(N, H, W) or (N, C, H, W))");
    expect_npy_error(1, ok, v8, sizeof v8 - 3,
                     ": NPY truncated: data has 45 bytes, expected 48");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (1000000000000, 2), }", v8, sizeof v8,
                     ": NPY truncated: data has 48 bytes, expected "
                     "16000000000000");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (2, 2), }", v8, sizeof v8,
                     ": NPY has trailing bytes after 2 x 2 values");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (0, 2), }", v8, 0,
                     ": empty input (NPY shape with 0 rows of 2 values)");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (1, 2), }", bad, sizeof bad,
                     ": [0, 1]: NaN or Inf value nan");
    expect_npy_error(1, "{'descr': '<f8', 'fortran_order': False}", v8,
                     sizeof v8, ": malformed NPY header: missing descr, "
                     "fortran_order or shape");
    expect_npy_error(1, "{'descr': '<f8', 'colour': 1}", v8, sizeof v8,
                     ": malformed NPY header: unknown key");
    {
        flow_data *d = NULL;
        char want[512];
        tu_write(tu_path(dir, "x.npy"), "1,2\n", 4);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "x.npy"), NULL, &d),
                         FLOW_ERR_FORMAT);
        snprintf(want, sizeof want, "%s: not an NPY file (bad magic)",
                 tu_path(dir, "x.npy"));
        ck_assert_str_eq(flow_errmsg(ctx), want);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "none.csv"), NULL, &d),
                         FLOW_ERR_IO);
        snprintf(want, sizeof want, "%s: cannot open: No such file or "
                 "directory", tu_path(dir, "none.csv"));
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
}
END_TEST

START_TEST(test_atomic_write)
{
    flow_data *a = random_data(10, 2, 0, 3), *b;
    char want[512];
    size_t n;
    unsigned char *bytes;
    /* a NaN in row 4: error, and the temp file is gone */
    a->x[9] = NAN;
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "o.csv"), FLOW_DATA_CSV,
                                1), FLOW_ERR_NUMERIC);
    snprintf(want, sizeof want, "%s: cannot write NaN or Inf (row 4, "
             "column 1)", tu_path(dir, "o.csv"));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_int_eq(tu_count_entries(dir), 0);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "o.npy"), FLOW_DATA_AUTO,
                                1), FLOW_ERR_NUMERIC);
    ck_assert_int_eq(tu_count_entries(dir), 0);
    a->x[9] = 1;
    /* the target is a directory: refused, nothing is left over */
    ck_assert_int_eq(mkdir(tu_path(dir, "sub"), 0755), 0);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "sub"), FLOW_DATA_CSV,
                                0), FLOW_ERR_IO);
    snprintf(want, sizeof want, "%s: is a directory", tu_path(dir, "sub"));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_int_eq(tu_count_entries(dir), 1);
    /* a missing directory */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "no/o.csv"),
                                FLOW_DATA_CSV, 0), FLOW_ERR_IO);
    snprintf(want, sizeof want, "%s: cannot create a file in directory "
             "'%s': No such file or directory", tu_path(dir, "no/o.csv"),
             tu_path(dir, "no"));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    /* an existing file is replaced whole */
    tu_write(tu_path(dir, "o.csv"), "old contents that are longer\n", 29);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "o.csv"), FLOW_DATA_CSV,
                                0), FLOW_OK);
    bytes = tu_read(tu_path(dir, "o.csv"), &n);
    ck_assert_ptr_null(strstr((char *)bytes, "old"));
    free(bytes);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "o.csv"), NULL, &b),
                     FLOW_OK);
    assert_same(a, b);
    data_free(b);
    ck_assert_int_eq(tu_count_entries(dir), 2);
    data_free(a);
}
END_TEST

START_TEST(test_stdin)
{
    /* "-" reads stdin (this test runs in its own forked process) */
    flow_data *a = random_data(20, 2, 0, 5), *b;
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "s.npy"), FLOW_DATA_NPY,
                                0), FLOW_OK);
    ck_assert_ptr_nonnull(freopen(tu_path(dir, "s.npy"), "rb", stdin));
    ck_assert_int_eq(data_read(ctx, "-", NULL, &b), FLOW_OK);
    assert_same(a, b);
    data_free(b);
    data_free(a);
    tu_write(tu_path(dir, "s.csv"), "x,y\n1,2\n3,?\n", 12);
    ck_assert_ptr_nonnull(freopen(tu_path(dir, "s.csv"), "rb", stdin));
    ck_assert_int_eq(flow_data_read(ctx, "-", NULL, NULL, 0, &b),
                     FLOW_ERR_FORMAT);
    ck_assert_str_eq(flow_errmsg(ctx), "<stdin>:3:2: non-numeric value '?'");
}
END_TEST

/* Applies 1..4 random edits (flip, insert, delete, truncate) to buf. */
static size_t mutate(flow_rng *r, unsigned char *buf, size_t n, size_t cap)
{
    int k = 1 + (int)rng_below(r, 4);
    while (k--) {
        size_t at = n ? (size_t)rng_below(r, n) : 0;
        switch (rng_below(r, 4)) {
        case 0:
            if (n)
                buf[at] ^= (unsigned char)(1u << rng_below(r, 8));
            break;
        case 1:
            if (n < cap) {
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = "0123456789,.-e\"\n\r x\0"[rng_below(r, 19)];
                n++;
            }
            break;
        case 2:
            if (n) {
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            }
            break;
        default:
            n = at;
        }
    }
    return n;
}

START_TEST(test_mutations)
{
    /* 3000 damaged inputs: each is read cleanly or refused with a message
     * naming the file (ASan/UBSan watch the rest) */
    static const char csv_base[] = "a,\"b\"\r\n1.5,-2e3\n\n3,4\n5,6";
    unsigned char npy_base[512], buf[640];
    size_t npy_n, ok = 0;
    flow_data *src = random_data(6, 3, 0, 8);
    flow_rng r;
    const char *p = tu_path(dir, "m.dat");
    ck_assert_int_eq(data_write(ctx, src, tu_path(dir, "b.npy"),
                                FLOW_DATA_NPY, 0), FLOW_OK);
    {
        unsigned char *b = tu_read(tu_path(dir, "b.npy"), &npy_n);
        ck_assert_uint_le(npy_n, sizeof npy_base);
        memcpy(npy_base, b, npy_n);
        free(b);
    }
    rng_seed(&r, 2024);
    for (int it = 0; it < 3000; it++) {
        flow_data *d = NULL;
        size_t n;
        int rc;
        if (it % 2) {
            n = sizeof csv_base - 1;
            memcpy(buf, csv_base, n);
        } else {
            n = npy_n;
            memcpy(buf, npy_base, n);
        }
        n = mutate(&r, buf, n, sizeof buf);
        tu_write(p, buf, n);
        rc = data_read(ctx, p, NULL, &d);
        if (rc == FLOW_OK) {
            ck_assert_ptr_nonnull(d);
            ck_assert_uint_gt(d->n, 0);
            ck_assert_uint_gt(d->d, 0);
            for (size_t i = 0; i < d->n * d->d; i++)
                ck_assert_msg(isfinite(d->x[i]), "x[%zu] = %g", i,
                              (double)d->x[i]);
            ok++;
            data_free(d);
        } else {
            ck_assert_ptr_null(d);
            ck_assert_msg(!strncmp(flow_errmsg(ctx), p, strlen(p)),
                          "message without the file: %s", flow_errmsg(ctx));
        }
    }
    /* both outcomes happen */
    ck_assert_uint_gt(ok, 100);
    ck_assert_uint_lt(ok, 2900);
    data_free(src);
}
END_TEST

START_TEST(test_crc32c)
{
    /* check value of the CRC catalogue (CRC-32/ISCSI) and chaining */
    ck_assert_uint_eq(fio_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(fio_crc32c(fio_crc32c(0, "1234", 4), "56789", 5),
                      0xE3069283u);
    ck_assert_uint_eq(fio_crc32c(0, "", 0), 0);
}
END_TEST

/* Hexadecimal floats are refused where they are (strtod would read 0x1p3
 * as 8); non-zero values that underflow to 0 are counted in one note. */
START_TEST(test_csv_hex_and_underflow)
{
    flow_data *d;
    char want[512];
    /* the smallest positive normal of the other precision underflows in
     * float32; 1e-400 underflows in float64 */
    const char *tiny = FLOW_REAL_DOUBLE ? "1e-400" : "1e-50";
    char text[128];
    expect_csv_error("x,y\n1,2\n3,0x1p3\n", NULL,
                     ":3:2: hexadecimal value '0x1p3' (write numbers in "
                     "decimal)");
    expect_csv_error("1,-0X10\n", NULL,
                     ":1:2: hexadecimal value '-0X10' (write numbers in "
                     "decimal)");
    snprintf(text, sizeof text, "x,y\n1,2\n%s,3\n4,-%s\n5,0e-999\n", tiny,
             tiny);
    ck_assert_int_eq(read_text("u.csv", text, NULL, &d), FLOW_OK);
    ck_assert_uint_eq(d->n, 4);
    ck_assert_double_eq(d->x[2], 0);
    ck_assert_double_eq(d->x[5], 0);
    /* "0e-999" is a zero, not an underflow: two values are counted */
    snprintf(want, sizeof want, "%s:3:1: 2 non-zero values underflowed to 0 "
             "in %s (the first: '%s')", tu_path(dir, "u.csv"),
             FLOW_REAL_NAME, tiny);
    ck_assert_str_eq(flow_data_note(d), want);
    data_free(d);
    ck_assert_int_eq(read_text("v.csv", "1,2\n0,0.0\n", NULL, &d), FLOW_OK);
    ck_assert_ptr_null(flow_data_note(d));
    data_free(d);
}
END_TEST

/* data_locate: the file's line and column of a value, through blank
 * lines, quoted line breaks and a column selection; NPY indices; a data
 * set made in memory. */
START_TEST(test_locate)
{
    data_opts o = {"b,a", "c", 0};
    flow_data *d;
    char buf[512], want[512];
    double v8[4] = {1, 2, 3, 4};
    unsigned char npy[512];
    size_t n;
    ck_assert_int_eq(read_text("l.csv", "a,note,b,c\n1,x,2,3\n\n"
                               "4,\"two\nlines\",5,6\n7,y,8,9\n", &o, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 3);
    /* rows on lines 2, 4 (its note runs to line 5) and 6; data columns
     * b (file column 3) and a (1), context c (4) */
    data_locate(d, 0, 0, buf, sizeof buf);
    snprintf(want, sizeof want, "%s:2:3", tu_path(dir, "l.csv"));
    ck_assert_str_eq(buf, want);
    data_locate(d, 1, 1, buf, sizeof buf);
    snprintf(want, sizeof want, "%s:4:1", tu_path(dir, "l.csv"));
    ck_assert_str_eq(buf, want);
    flow_data_locate(d, 2, 2, buf, sizeof buf);
    snprintf(want, sizeof want, "%s:6:4", tu_path(dir, "l.csv"));
    ck_assert_str_eq(buf, want);
    data_locate(d, 2, SIZE_MAX, buf, sizeof buf);
    snprintf(want, sizeof want, "%s:6", tu_path(dir, "l.csv"));
    ck_assert_str_eq(buf, want);
    data_free(d);
    /* consecutive lines keep no table */
    ck_assert_int_eq(read_text("m.csv", "x\n1\n2\n3\n", NULL, &d), FLOW_OK);
    ck_assert_ptr_null(d->lines);
    data_locate(d, 2, 0, buf, sizeof buf);
    snprintf(want, sizeof want, "%s:4:1", tu_path(dir, "m.csv"));
    ck_assert_str_eq(buf, want);
    data_free(d);
    /* NPY: 0-based [row, column] as numpy indexes it */
    n = make_npy(npy, 1, "{'descr': '<f8', 'fortran_order': False, "
                 "'shape': (2, 2), }", v8, sizeof v8);
    tu_write(tu_path(dir, "l.npy"), npy, n);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "l.npy"), NULL, &d),
                     FLOW_OK);
    data_locate(d, 1, 0, buf, sizeof buf);
    snprintf(want, sizeof want, "%s: [1, 0]", tu_path(dir, "l.npy"));
    ck_assert_str_eq(buf, want);
    data_locate(d, 1, SIZE_MAX, buf, sizeof buf);
    snprintf(want, sizeof want, "%s: [1, :]", tu_path(dir, "l.npy"));
    ck_assert_str_eq(buf, want);
    data_free(d);
    /* made in memory: the row, 1-based */
    d = data_new(ctx, 3, 1, 0);
    ck_assert_ptr_nonnull(d);
    data_locate(d, 2, 0, buf, sizeof buf);
    ck_assert_str_eq(buf, "row 3");
    data_free(d);
}
END_TEST

/* NaN and Inf are written only when asked (flow_data_allow_nonfinite). */
START_TEST(test_write_nonfinite)
{
    flow_data *d = data_new(ctx, 2, 1, 0);
    const char *p = tu_path(dir, "nf.csv");
    char want[256], *text;
    size_t len;
    ck_assert_ptr_nonnull(d);
    d->x[0] = 1;
    d->x[1] = -INFINITY;
    ck_assert_int_eq(data_write(ctx, d, p, FLOW_DATA_CSV, 1),
                     FLOW_ERR_NUMERIC);
    snprintf(want, sizeof want, "%s: cannot write NaN or Inf (row 1, "
             "column 0)", p);
    ck_assert_str_eq(flow_errmsg(ctx), want);
    flow_data_allow_nonfinite(d, 1);
    ck_assert_int_eq(data_write(ctx, d, p, FLOW_DATA_CSV, 1), FLOW_OK);
    text = (char *)tu_read(p, &len);
    ck_assert_str_eq(text, "x0\n1\n-inf\n");
    free(text);
    data_free(d);
}
END_TEST

Suite *suite_data(void)
{
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("csv");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_csv_header_and_values);
    tcase_add_test(tc, test_csv_selection);
    tcase_add_test(tc, test_csv_errors);
    tcase_add_test(tc, test_csv_long_lines);
    tcase_add_test(tc, test_round_trip_bits);
    tcase_add_test(tc, test_csv_many_rows);
    suite_add_tcase(s, tc);
    tc = tcase_create("npy");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_npy_read);
    tcase_add_test(tc, test_npy_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_atomic_write);
    tcase_add_test(tc, test_stdin);
    tcase_add_test(tc, test_crc32c);
    tcase_add_test(tc, test_csv_hex_and_underflow);
    tcase_add_test(tc, test_locate);
    tcase_add_test(tc, test_write_nonfinite);
    suite_add_tcase(s, tc);
    tc = tcase_create("mutations");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mutations);
    suite_add_tcase(s, tc);
    return s;
}
