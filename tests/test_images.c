/* test_images.c - image data files: IDX (plain and gzip'd), NPY images,
 * directories of PNG files, their exact values, shapes and errors, and
 * the IDX, NPY and PNG-grid writers. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef FLOW_HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef FLOW_HAVE_PNG
#include <png.h>
#endif

#include "../runtime/data.h"
#include "../runtime/fileio.h"
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
    DIR *d = opendir(dir);
    struct dirent *e;
    char sub[512];
    /* the PNG directories first: tu_rmtree removes plain files only */
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            struct stat st;
            snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
            if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
                tu_rmtree(sub);
        }
    if (d)
        closedir(d);
    flow_ctx_free(ctx);
    tu_rmtree(dir);
}

/* Asserts the failure of reading path and its message "path" + suffix. */
static void expect_error(const char *path, const char *suffix)
{
    flow_data *d = (flow_data *)1;
    char want[1024];
    ck_assert_int_ne(data_read(ctx, path, NULL, &d), FLOW_OK);
    ck_assert_ptr_null(d);
    snprintf(want, sizeof want, "%s%s", path, suffix);
    ck_assert_str_eq(flow_errmsg(ctx), want);
}

static void assert_shape(const flow_data *d, int rank, size_t a, size_t b,
                         size_t c)
{
    size_t s[4];
    int r = flow_data_shape(d, s);
    ck_assert_int_eq(r, rank);
    ck_assert_uint_eq(s[0], a);
    ck_assert_uint_eq(s[1], b);
    ck_assert_uint_eq(s[2], c);
    ck_assert_uint_eq(s[3], 0);
}

/* ------------------------------------------------------------ IDX */

/* An IDX file: type, dims, then nbody bytes of values. */
static size_t make_idx(unsigned char *buf, int type, int nd,
                       const uint32_t *dims, const void *body, size_t nbody)
{
    size_t at = 4;
    buf[0] = buf[1] = 0;
    buf[2] = (unsigned char)type;
    buf[3] = (unsigned char)nd;
    for (int k = 0; k < nd; k++)
        for (int b = 0; b < 4; b++)
            buf[at++] = (unsigned char)(dims[k] >> (24 - 8 * b));
    memcpy(buf + at, body, nbody);
    return at + nbody;
}

START_TEST(test_idx_u8_images)
{
    /* 2 images of 2 x 3, as MNIST stores them: [N, H, W] */
    unsigned char body[12] = {0, 1, 2, 253, 254, 255, 7, 8, 9, 10, 11, 12};
    uint32_t dims[3] = {2, 2, 3};
    unsigned char buf[128];
    size_t n = make_idx(buf, 0x08, 3, dims, body, sizeof body);
    flow_data *d;
    tu_write(tu_path(dir, "train-images-idx3-ubyte"), buf, n);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "train-images-idx3-ubyte"),
                               NULL, &d), FLOW_OK);
    ck_assert_uint_eq(d->n, 2);
    ck_assert_uint_eq(d->d, 6);
    assert_shape(d, 3, 1, 2, 3);
    for (int i = 0; i < 12; i++)
        ck_assert_msg(d->x[i] == body[i], "x[%d] = %g, want %d", i,
                      (double)d->x[i], body[i]);
    {
        char at[256];
        data_locate(d, 1, 4, at, sizeof at);
        ck_assert_str_eq(at + strlen(dir) + 1, "train-images-idx3-ubyte: "
                         "[1, 4]");
    }
    data_free(d);
}
END_TEST

START_TEST(test_idx_types)
{
    unsigned char buf[256];
    flow_data *d;
    size_t n;
    {   /* i16, big-endian, [N, C, H, W] = [1, 2, 1, 2] */
        unsigned char body[8] = {0xFF, 0xFE, 0x01, 0x00, 0x80, 0x00,
                                 0x7F, 0xFF};
        uint32_t dims[4] = {1, 2, 1, 2};
        const double want[4] = {-2, 256, -32768, 32767};
        n = make_idx(buf, 0x0B, 4, dims, body, sizeof body);
        tu_write(tu_path(dir, "a.idx"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "a.idx"), NULL, &d),
                         FLOW_OK);
        assert_shape(d, 3, 2, 1, 2);
        for (int i = 0; i < 4; i++)
            ck_assert_double_eq(d->x[i], want[i]);
        data_free(d);
    }
    {   /* f32 [N, D]: flat rows */
        unsigned char body[8] = {0x3F, 0xC0, 0, 0, 0xC0, 0x20, 0, 0};
        uint32_t dims[2] = {1, 2};
        n = make_idx(buf, 0x0D, 2, dims, body, sizeof body);
        tu_write(tu_path(dir, "b.idx"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "b.idx"), NULL, &d),
                         FLOW_OK);
        assert_shape(d, 1, 2, 0, 0);
        ck_assert_double_eq(d->x[0], 1.5);
        ck_assert_double_eq(d->x[1], -2.5);
        data_free(d);
    }
    {   /* f64, i8, i32: one value each; labels [N] are one column */
        unsigned char f64[8] = {0x40, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D,
                                0x18};
        unsigned char i8[3] = {0xFF, 0x05, 0x80};
        unsigned char i32[4] = {0xFF, 0xFF, 0xFF, 0x00};
        uint32_t one[1] = {1}, three[1] = {3};
        n = make_idx(buf, 0x0E, 1, one, f64, sizeof f64);
        tu_write(tu_path(dir, "c.idx"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "c.idx"), NULL, &d),
                         FLOW_OK);
        ck_assert_double_eq_tol(d->x[0], 3.141592653589793, 1e-6);
        data_free(d);
        n = make_idx(buf, 0x09, 1, three, i8, sizeof i8);
        tu_write(tu_path(dir, "labels.idx"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "labels.idx"), NULL,
                                   &d), FLOW_OK);
        ck_assert_uint_eq(d->n, 3);
        ck_assert_uint_eq(d->d, 1);
        assert_shape(d, 1, 1, 0, 0);
        ck_assert_double_eq(d->x[0], -1);
        ck_assert_double_eq(d->x[1], 5);
        ck_assert_double_eq(d->x[2], -128);
        data_free(d);
        n = make_idx(buf, 0x0C, 1, one, i32, sizeof i32);
        tu_write(tu_path(dir, "d.idx"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "d.idx"), NULL, &d),
                         FLOW_OK);
        ck_assert_double_eq(d->x[0], -256);
        data_free(d);
    }
}
END_TEST

START_TEST(test_idx_errors)
{
    unsigned char buf[256], body[16] = {0};
    uint32_t dims[3] = {2, 2, 3}, huge[3] = {1, 65536, 65536};
    const char *p = tu_path(dir, "e.idx");
    size_t n = make_idx(buf, 0x08, 3, dims, body, 12);
    /* cut in the dimensions, in the data; bytes left over */
    tu_write(p, buf, 9);
    expect_error(p, ": IDX truncated in the 3 dimensions (bytes 4..15)");
    tu_write(p, buf, n - 2);
    expect_error(p, ": IDX truncated: sample 1 of 2 ends after 4 of its 6 "
                 "bytes (the dimensions need 12 data bytes)");
    n = make_idx(buf, 0x08, 3, dims, body, 13);
    tu_write(p, buf, n);
    expect_error(p, ": IDX has bytes after its 2 samples of 6 values (the "
                 "dimensions disagree with the file's size)");
    n = make_idx(buf, 0x08, 3, huge, body, 4);
    tu_write(p, buf, n);
    expect_error(p, ": IDX dimensions give more than 1048576 values per "
                 "sample");
    dims[0] = 0;
    n = make_idx(buf, 0x08, 3, dims, body, 0);
    tu_write(p, buf, n);
    expect_error(p, ": empty input (IDX with 0 samples of 6 values)");
    {   /* a NaN float; an int32 beyond float32's exact integers */
        unsigned char nan[4] = {0x7F, 0xC0, 0, 0}, big[4] = {0x01, 0, 0, 1};
        uint32_t one[2] = {1, 1};
        n = make_idx(buf, 0x0D, 2, one, nan, 4);
        tu_write(p, buf, n);
        expect_error(p, ": [0, 0]: NaN or Inf value nan");
        n = make_idx(buf, 0x0C, 2, one, big, 4);
        tu_write(p, buf, n);
        if (!FLOW_REAL_DOUBLE)
            expect_error(p, ": [0, 0]: integer 16777217 is not exact in "
                         "float32");
    }
    /* a bad type code is not IDX: a name that says IDX gets told */
    n = make_idx(buf, 0x0A, 3, dims, body, 12);
    tu_write(p, buf, n);
    expect_error(p, ": not an IDX file (bad magic: need 00 00, a type code "
                 "08 09 0B 0C 0D 0E and 1 to 4 dimensions)");
    {   /* the expected dimension */
        data_opts o = {NULL, NULL, 16};
        flow_data *d = NULL;
        dims[0] = 2;
        n = make_idx(buf, 0x08, 3, dims, body, 12);
        tu_write(p, buf, n);
        ck_assert_int_ne(data_read(ctx, p, &o, &d), FLOW_OK);
        ck_assert_ptr_null(d);
        ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), ": 6 data columns, "
                                     "expected 16"));
    }
}
END_TEST

START_TEST(test_idx_columns)
{
    /* columns picked out of images make flat rows; context columns too */
    unsigned char body[8] = {1, 2, 3, 4, 5, 6, 7, 8}, buf[64];
    uint32_t dims[3] = {2, 2, 2};
    data_opts o = {"3,0", "1", 0};
    flow_data *d;
    size_t n = make_idx(buf, 0x08, 3, dims, body, sizeof body);
    tu_write(tu_path(dir, "s.idx"), buf, n);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "s.idx"), &o, &d), FLOW_OK);
    ck_assert_uint_eq(d->d, 2);
    ck_assert_uint_eq(d->c, 1);
    assert_shape(d, 1, 2, 0, 0);
    ck_assert_double_eq(d->x[0], 4);
    ck_assert_double_eq(d->x[1], 1);
    ck_assert_double_eq(d->x[2], 8);
    ck_assert_double_eq(d->x[3], 5);
    ck_assert_double_eq(d->ctx[0], 2);
    ck_assert_double_eq(d->ctx[1], 6);
    data_free(d);
}
END_TEST

#ifdef FLOW_HAVE_ZLIB
/* Writes bytes as a gzip file of one member per part. */
static void write_gz(const char *path, const unsigned char *b, size_t n,
                     int parts)
{
    size_t at = 0;
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    for (int k = 0; k < parts; k++) {
        size_t len = k == parts - 1 ? n - at : n / (size_t)parts;
        gzFile g = gzopen(path, "ab");
        ck_assert_ptr_nonnull(g);
        ck_assert_int_eq(gzwrite(g, b + at, (unsigned)len), (int)len);
        ck_assert_int_eq(gzclose(g), Z_OK);
        at += len;
    }
}

/* The message starts with path + prefix (the byte offset depends on
 * zlib's compressor). */
static void expect_gz_error(const char *path, const char *prefix)
{
    flow_data *d = (flow_data *)1;
    char want[1024];
    ck_assert_int_ne(data_read(ctx, path, NULL, &d), FLOW_OK);
    ck_assert_ptr_null(d);
    snprintf(want, sizeof want, "%s%s", path, prefix);
    ck_assert_msg(!strncmp(flow_errmsg(ctx), want, strlen(want)),
                  "got '%s', want '%s...'", flow_errmsg(ctx), want);
}

START_TEST(test_idx_gzip)
{
    enum { N = 300, H = 5, W = 7 };
    unsigned char body[N * H * W], buf[N * H * W + 64], *z;
    uint32_t dims[3] = {N, H, W};
    size_t n, zn;
    flow_data *d;
    const char *p = tu_path(dir, "t10k-images-idx3-ubyte.gz");
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (unsigned char)(i * 7 % 251);
    n = make_idx(buf, 0x08, 3, dims, body, sizeof body);
    for (int parts = 1; parts <= 3; parts += 2) {
        write_gz(p, buf, n, parts);
        ck_assert_int_eq(data_read(ctx, p, NULL, &d), FLOW_OK);
        ck_assert_uint_eq(d->n, N);
        assert_shape(d, 3, 1, H, W);
        for (size_t i = 0; i < sizeof body; i++)
            ck_assert_msg(d->x[i] == body[i], "%d parts: x[%zu] = %g, want "
                          "%d", parts, i, (double)d->x[i], body[i]);
        data_free(d);
    }
    /* a gzip'd CSV reads too: gzip is below every format */
    write_gz(tu_path(dir, "c.csv.gz"), (const unsigned char *)"a,b\n1,2\n", 8,
             1);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "c.csv.gz"), NULL, &d),
                     FLOW_OK);
    ck_assert_uint_eq(d->n, 1);
    ck_assert_double_eq(d->x[1], 2);
    data_free(d);
    /* cut short; a corrupt byte (the CRC or the deflate data); junk
     * after the member */
    write_gz(p, buf, n, 1);
    z = tu_read(p, &zn);
    tu_write(p, z, zn - 6);
    expect_gz_error(p, ": corrupt or truncated gzip stream (at compressed "
                    "byte ");
    z[zn / 2] ^= 0x55;
    tu_write(p, z, zn);
    expect_gz_error(p, ": corrupt or truncated gzip stream (at compressed "
                    "byte ");
    z[zn / 2] ^= 0x55;
    z = realloc(z, zn + 3);
    ck_assert_ptr_nonnull(z);
    memcpy(z + zn, "abc", 3);
    tu_write(p, z, zn + 3);
    expect_gz_error(p, ": bytes after the gzip stream (at compressed byte ");
    free(z);
}
END_TEST
#endif

/* ------------------------------------------------------------ NPY */

static size_t make_npy(unsigned char *buf, const char *dict, const void *body,
                       size_t nbody)
{
    size_t dl = strlen(dict);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    fio_put_le(buf + 8, dl, 2);
    memcpy(buf + 10, dict, dl);
    memcpy(buf + 10 + dl, body, nbody);
    return 10 + dl + nbody;
}

START_TEST(test_npy_images)
{
    unsigned char buf[512];
    flow_data *d;
    size_t n;
    {   /* |u1 (N, H, W) */
        unsigned char u8[8] = {0, 255, 3, 4, 5, 6, 7, 128};
        n = make_npy(buf, "{'descr': '|u1', 'fortran_order': False, "
                     "'shape': (2, 2, 2), }", u8, sizeof u8);
        tu_write(tu_path(dir, "a.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "a.npy"), NULL, &d),
                         FLOW_OK);
        ck_assert_uint_eq(d->n, 2);
        assert_shape(d, 3, 1, 2, 2);
        for (int i = 0; i < 8; i++)
            ck_assert_double_eq(d->x[i], u8[i]);
        data_free(d);
    }
    {   /* <f4 (N, C, H, W) */
        float f4[12];
        for (int i = 0; i < 12; i++)
            f4[i] = (float)i * 0.25f - 1;
        n = make_npy(buf, "{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (2, 3, 1, 2), }", f4, sizeof f4);
        tu_write(tu_path(dir, "b.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "b.npy"), NULL, &d),
                         FLOW_OK);
        assert_shape(d, 3, 3, 1, 2);
        for (int i = 0; i < 12; i++)
            ck_assert_double_eq(d->x[i], f4[i]);
        data_free(d);
    }
    {   /* >i2 and <i8, |i1, <u2 in (N, D) */
        unsigned char be[4] = {0xFF, 0xFE, 0x01, 0x02};
        int64_t i8[2] = {-5, 16777216};
        unsigned char i1[2] = {0x80, 0x7F}, u2[2] = {0xFF, 0xFF};
        n = make_npy(buf, "{'descr': '>i2', 'fortran_order': False, "
                     "'shape': (1, 2), }", be, sizeof be);
        tu_write(tu_path(dir, "c.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "c.npy"), NULL, &d),
                         FLOW_OK);
        assert_shape(d, 1, 2, 0, 0);
        ck_assert_double_eq(d->x[0], -2);
        ck_assert_double_eq(d->x[1], 258);
        data_free(d);
        n = make_npy(buf, "{'descr': '<i8', 'fortran_order': False, "
                     "'shape': (2,), }", i8, sizeof i8);
        tu_write(tu_path(dir, "d.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "d.npy"), NULL, &d),
                         FLOW_OK);
        ck_assert_double_eq(d->x[0], -5);
        ck_assert_double_eq(d->x[1], 16777216);
        data_free(d);
        n = make_npy(buf, "{'descr': '|i1', 'fortran_order': False, "
                     "'shape': (1, 2), }", i1, sizeof i1);
        tu_write(tu_path(dir, "e.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "e.npy"), NULL, &d),
                         FLOW_OK);
        ck_assert_double_eq(d->x[0], -128);
        ck_assert_double_eq(d->x[1], 127);
        data_free(d);
        n = make_npy(buf, "{'descr': '<u2', 'fortran_order': False, "
                     "'shape': (1, 1), }", u2, sizeof u2);
        tu_write(tu_path(dir, "f.npy"), buf, n);
        ck_assert_int_eq(data_read(ctx, tu_path(dir, "f.npy"), NULL, &d),
                         FLOW_OK);
        ck_assert_double_eq(d->x[0], 65535);
        data_free(d);
    }
    {   /* an integer flow_real cannot hold exactly */
        int64_t big[1] = {FLOW_REAL_DOUBLE ? 9007199254740993LL : 16777217};
        n = make_npy(buf, "{'descr': '<i8', 'fortran_order': False, "
                     "'shape': (1, 1), }", big, sizeof big);
        tu_write(tu_path(dir, "g.npy"), buf, n);
        expect_error(tu_path(dir, "g.npy"), FLOW_REAL_DOUBLE
                     ? ": [0, 0]: integer 9007199254740992 is not exact in "
                       "float64"
                     : ": [0, 0]: integer 16777217 is not exact in float32");
    }
}
END_TEST

/* ------------------------------------------------------------ writers */

START_TEST(test_write_npy_idx_shape)
{
    flow_data *a = data_new(ctx, 3, 4, 0), *b;
    const size_t shape[3] = {1, 2, 2}, bad[3] = {1, 2, 3};
    const flow_real v[12] = {-3, 0, 0.49f, 0.5f, 1.5f, 2.6f, 254.4f, 300,
                             7, 8, 9, 10};
    const unsigned char want[12] = {0, 0, 0, 1, 2, 3, 254, 255, 7, 8, 9, 10};
    unsigned char *bytes;
    size_t n;
    ck_assert_ptr_nonnull(a);
    memcpy(a->x, v, sizeof v);
    ck_assert_int_eq(flow_data_set_shape(ctx, a, bad, 3), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "sample shape of 6 values for rows "
                     "of 4");
    ck_assert_int_eq(flow_data_set_shape(ctx, a, shape, 3), FLOW_OK);
    /* NPY: (N, C, H, W), values exact */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "o.npy"), FLOW_DATA_AUTO,
                               1), FLOW_OK);
    bytes = tu_read(tu_path(dir, "o.npy"), &n);
    ck_assert_ptr_nonnull(strstr((char *)bytes + 10,
                                 "'shape': (3, 1, 2, 2), }"));
    free(bytes);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "o.npy"), NULL, &b),
                     FLOW_OK);
    assert_shape(b, 3, 1, 2, 2);
    for (int i = 0; i < 12; i++)
        ck_assert_double_eq(b->x[i], v[i]);
    data_free(b);
    /* IDX: unsigned bytes, rounded and clamped; [1, H, W] as [N, H, W] */
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "o.idx"), FLOW_DATA_AUTO,
                               1), FLOW_OK);
    bytes = tu_read(tu_path(dir, "o.idx"), &n);
    ck_assert_uint_eq(n, 4 + 3 * 4 + 12);
    ck_assert_int_eq(memcmp(bytes, "\0\0\x08\x03\0\0\0\x03\0\0\0\x02\0\0\0"
                            "\x02", 16), 0);
    for (int i = 0; i < 12; i++)
        ck_assert_uint_eq(bytes[16 + i], want[i]);
    free(bytes);
    ck_assert_int_eq(data_read(ctx, tu_path(dir, "o.idx"), NULL, &b),
                     FLOW_OK);
    assert_shape(b, 3, 1, 2, 2);
    data_free(b);
    /* a range maps lo..hi onto 0..255 */
    ck_assert_int_eq(flow_data_set_pixel_range(ctx, a, -1, 1), FLOW_OK);
    ck_assert_uint_eq(data_pixel_u8(a, -1), 0);
    ck_assert_uint_eq(data_pixel_u8(a, 0), 128);
    ck_assert_uint_eq(data_pixel_u8(a, 0.5f), 191);
    ck_assert_uint_eq(data_pixel_u8(a, 2), 255);
    ck_assert_int_eq(flow_data_set_pixel_range(ctx, a, 1, 1),
                     FLOW_ERR_INVAL);
    /* flat rows: IDX [N, D] */
    ck_assert_int_eq(flow_data_set_shape(ctx, a, (const size_t[]){4}, 1),
                     FLOW_OK);
    assert_shape(a, 1, 4, 0, 0);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "f.idx"), FLOW_DATA_IDX,
                               1), FLOW_OK);
    bytes = tu_read(tu_path(dir, "f.idx"), &n);
    ck_assert_int_eq(memcmp(bytes, "\0\0\x08\x02\0\0\0\x03\0\0\0\x04", 12),
                     0);
    free(bytes);
    /* NaN: refused, nothing written */
    a->x[5] = NAN;
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "n.idx"), FLOW_DATA_IDX,
                               1), FLOW_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "n.idx: cannot write NaN "
                                 "or Inf as a pixel (row 1, column 1)"));
    ck_assert_int_eq(tu_count_entries(dir), 3);
    data_free(a);
    /* context columns do not fit an image format */
    a = data_new(ctx, 1, 1, 1);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "c.idx"), FLOW_DATA_IDX,
                               1), FLOW_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "c.idx: IDX holds the data "
                                 "values only, and these rows have 1 more "
                                 "columns"));
    data_free(a);
}
END_TEST

#ifdef FLOW_HAVE_PNG
/* Writes a PNG of w x h with the given colour type and depth from rows
 * of packed bytes as PNG stores them (palette: 3 entries, the first
 * half transparent). */
static void write_png(const char *path, int w, int h, int ctype, int depth,
                      const unsigned char *bytes, size_t rowbytes)
{
    FILE *f = fopen(path, "wb");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL,
                                              NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(setjmp(png_jmpbuf(png)), 0);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ctype,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[3] = {{10, 20, 30}, {40, 50, 60}, {70, 80, 90}};
        png_byte alpha[1] = {128};
        png_set_PLTE(png, info, pal, 3);
        png_set_tRNS(png, info, alpha, 1, NULL);    /* dropped on reading */
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(bytes + (size_t)y * rowbytes));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static const char *mkdir_in(const char *name)
{
    const char *p = tu_path(dir, name);
    ck_assert_int_eq(mkdir(p, 0777), 0);
    return p;
}

START_TEST(test_png_dir_kinds)
{
    struct {
        int ctype, depth;
        unsigned char bytes[24];
        size_t rowbytes;
        size_t c;
        double want[6];
    } k[] = {
        /* grey 8 bits: 2 x 2 */
        {PNG_COLOR_TYPE_GRAY, 8, {0, 7, 200, 255}, 2, 1, {0, 7, 200, 255}},
        /* grey + alpha: alpha dropped */
        {PNG_COLOR_TYPE_GRAY_ALPHA, 8, {1, 9, 2, 9, 3, 9, 4, 9}, 4, 1,
         {1, 2, 3, 4}},
        /* grey 16 bits: big-endian samples */
        {PNG_COLOR_TYPE_GRAY, 16, {0x01, 0x02, 0xFF, 0xFF, 0, 0, 0, 9}, 4, 1,
         {258, 65535, 0, 9}},
        /* grey 1 bit: levels 0 and 1 */
        {PNG_COLOR_TYPE_GRAY, 1, {0x40, 0x80}, 1, 1, {0, 1, 1, 0}},
        /* RGB: planes [C, H, W] from interleaved pixels, 1 x 2 */
        {PNG_COLOR_TYPE_RGB, 8, {1, 2, 3, 4, 5, 6}, 6, 3,
         {1, 4, 2, 5, 3, 6}},
        /* RGBA */
        {PNG_COLOR_TYPE_RGB_ALPHA, 8, {1, 2, 3, 0, 4, 5, 6, 0}, 8, 3,
         {1, 4, 2, 5, 3, 6}},
        /* palette: its colours, 1 x 2 */
        {PNG_COLOR_TYPE_PALETTE, 8, {2, 0}, 2, 3, {70, 10, 80, 20, 90, 30}},
    };
    for (size_t t = 0; t < sizeof k / sizeof k[0]; t++) {
        char name[16];
        const char *sub;
        flow_data *d;
        int h = k[t].c == 3 ? 1 : 2, w = 2;
        snprintf(name, sizeof name, "k%zu", t);
        sub = mkdir_in(name);
        /* two files, named so that sorting matters: b after a10 */
        write_png(tu_path(sub, "b.png"), w, h, k[t].ctype, k[t].depth,
                  k[t].bytes, k[t].rowbytes);
        write_png(tu_path(sub, "a10.png"), w, h, k[t].ctype, k[t].depth,
                  k[t].bytes, k[t].rowbytes);
        ck_assert_int_eq(data_read(ctx, sub, NULL, &d), FLOW_OK);
        ck_assert_uint_eq(d->n, 2);
        assert_shape(d, 3, k[t].c, (size_t)h, (size_t)w);
        for (size_t i = 0; i < d->d; i++) {
            ck_assert_msg(d->x[i] == k[t].want[i], "kind %zu: x[%zu] = %g, "
                          "want %g", t, i, (double)d->x[i], k[t].want[i]);
            ck_assert_double_eq(d->x[d->d + i], k[t].want[i]);
        }
        data_free(d);
    }
}
END_TEST

START_TEST(test_png_dir_errors)
{
    const unsigned char g4[4] = {1, 2, 3, 4}, g6[6] = {0};
    const unsigned char g16[8] = {0};
    const char *sub;
    char suffix[512];
    unsigned char *bytes;
    size_t n;
    sub = mkdir_in("empty");
    expect_error(sub, ": empty input (no PNG files in the directory)");
    /* shapes differ */
    sub = mkdir_in("shapes");
    write_png(tu_path(sub, "a.png"), 2, 2, PNG_COLOR_TYPE_GRAY, 8, g4, 2);
    write_png(tu_path(sub, "b.png"), 3, 2, PNG_COLOR_TYPE_GRAY, 8, g6, 3);
    snprintf(suffix, sizeof suffix, ": image of shape [1, 2, 3] ([C, H, W]), "
             "but %s is [1, 2, 2]: every image needs the same shape",
             tu_path(sub, "a.png"));
    {
        flow_data *d = (flow_data *)1;
        char want[1024];
        ck_assert_int_ne(data_read(ctx, sub, NULL, &d), FLOW_OK);
        ck_assert_ptr_null(d);
        snprintf(want, sizeof want, "%s%s", tu_path(sub, "b.png"), suffix);
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
    /* depths differ */
    sub = mkdir_in("depths");
    write_png(tu_path(sub, "a.png"), 2, 2, PNG_COLOR_TYPE_GRAY, 8, g4, 2);
    write_png(tu_path(sub, "b.png"), 2, 2, PNG_COLOR_TYPE_GRAY, 16, g16, 4);
    {
        flow_data *d = (flow_data *)1;
        ck_assert_int_ne(data_read(ctx, sub, NULL, &d), FLOW_OK);
        ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "b.png: 16-bit "
                                     "samples, but "));
        ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "a.png has 8-bit "
                                     "ones: every image needs the same "
                                     "levels"));
    }
    /* a file that is no PNG; a cut PNG; a subdirectory */
    sub = mkdir_in("mixed");
    write_png(tu_path(sub, "a.png"), 2, 2, PNG_COLOR_TYPE_GRAY, 8, g4, 2);
    tu_write(tu_path(sub, "notes.txt"), "hello\n", 6);
    {
        flow_data *d = (flow_data *)1;
        char want[1024];
        ck_assert_int_ne(data_read(ctx, sub, NULL, &d), FLOW_OK);
        snprintf(want, sizeof want, "%s: not a PNG file (bad signature; a "
                 "directory of PNG files holds only PNG files)",
                 tu_path(sub, "notes.txt"));
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
    sub = mkdir_in("cut");
    write_png(tu_path(sub, "a.png"), 2, 2, PNG_COLOR_TYPE_GRAY, 8, g4, 2);
    bytes = tu_read(tu_path(sub, "a.png"), &n);
    tu_write(tu_path(sub, "a.png"), bytes, n - 20);
    free(bytes);
    {
        flow_data *d = (flow_data *)1;
        char want[1024];
        ck_assert_int_ne(data_read(ctx, sub, NULL, &d), FLOW_OK);
        ck_assert_ptr_null(d);
        snprintf(want, sizeof want, "%s: bad PNG: ", tu_path(sub, "a.png"));
        ck_assert_msg(!strncmp(flow_errmsg(ctx), want, strlen(want)), "%s",
                      flow_errmsg(ctx));
    }
    /* a single PNG file is not a data file */
    expect_error(tu_path(dir, "mixed/a.png"), ": a single PNG file: give the "
                 "directory of PNG files instead");
}
END_TEST

/* The grey values of a PNG (8-bit grey), its width and height. */
static unsigned char *read_grey(const char *path, unsigned *w, unsigned *h)
{
    png_image im;
    unsigned char *buf;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    ck_assert_int_ne(png_image_begin_read_from_file(&im, path), 0);
    im.format = PNG_FORMAT_GRAY;
    buf = malloc(PNG_IMAGE_SIZE(im));
    ck_assert_int_ne(png_image_finish_read(&im, NULL, buf, 0, NULL), 0);
    *w = im.width;
    *h = im.height;
    return buf;
}

START_TEST(test_png_grid)
{
    /* 5 images of 2 x 3: a grid of 3 across, 2 down, 1-pixel gaps */
    flow_data *a = data_new(ctx, 5, 6, 0);
    const size_t shape[3] = {1, 2, 3};
    unsigned char *px;
    unsigned w, h;
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < 30; i++)
        a->x[i] = (flow_real)(i * 5);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "g.png"), FLOW_DATA_AUTO,
                               1), FLOW_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "g.png: a PNG grid needs "
                                 "images of shape [C, H, W] with C 1 (grey) "
                                 "or 3 (RGB)"));
    ck_assert_int_eq(tu_count_entries(dir), 0);
    ck_assert_int_eq(flow_data_set_shape(ctx, a, shape, 3), FLOW_OK);
    ck_assert_int_eq(data_write(ctx, a, tu_path(dir, "g.png"), FLOW_DATA_AUTO,
                               1), FLOW_OK);
    px = read_grey(tu_path(dir, "g.png"), &w, &h);
    ck_assert_uint_eq(w, 3 * 3 + 2);
    ck_assert_uint_eq(h, 2 * 2 + 1);
    /* image k, pixel (y, x) holds 5 * (6k + 3y + x) */
    ck_assert_uint_eq(px[0], 0);
    ck_assert_uint_eq(px[2], 10);
    ck_assert_uint_eq(px[3], 0);        /* the gap */
    ck_assert_uint_eq(px[4], 30);       /* image 1, (0, 0) */
    ck_assert_uint_eq(px[(3 + 1) * w + 4 + 2], 145); /* image 4, (1, 2) */
    ck_assert_uint_eq(px[2 * w + 0], 0);            /* the row gap */
    ck_assert_uint_eq(px[4 * w + 8], 0);            /* no image 5 */
    free(px);
    data_free(a);
}
END_TEST
#endif

Suite *suite_images(void)
{
    Suite *s = suite_create("images");
    TCase *tc = tcase_create("idx");
    tcase_add_checked_fixture(tc, setup, teardown);
    suite_add_tcase(s, tc);
    tcase_add_test(tc, test_idx_u8_images);
    tcase_add_test(tc, test_idx_types);
    tcase_add_test(tc, test_idx_errors);
    tcase_add_test(tc, test_idx_columns);
#ifdef FLOW_HAVE_ZLIB
    tcase_add_test(tc, test_idx_gzip);
#endif
    tc = tcase_create("npy");
    tcase_add_checked_fixture(tc, setup, teardown);
    suite_add_tcase(s, tc);
    tcase_add_test(tc, test_npy_images);
    tcase_add_test(tc, test_write_npy_idx_shape);
#ifdef FLOW_HAVE_PNG
    tc = tcase_create("png");
    tcase_add_checked_fixture(tc, setup, teardown);
    suite_add_tcase(s, tc);
    tcase_add_test(tc, test_png_dir_kinds);
    tcase_add_test(tc, test_png_dir_errors);
    tcase_add_test(tc, test_png_grid);
#endif
    return s;
}
