/* test_shard.c - data split over processes: each part of a CSV, NPY or
 * IDX file read alone against the whole file, rows moved between
 * simulated processes, and the shard calls on one process. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/data.h"
#include "../runtime/shard.h"
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

static data_part part_of(int rank, int size)
{
    data_part part;
    memset(&part, 0, sizeof part);
    part.rank = rank;
    part.size = size;
    return part;
}

static size_t line_of(const flow_data *d, size_t i)
{
    return d->lines ? d->lines[i] : d->line0 + i;
}

/* Reads `path` in n parts and holds them to the whole file: the same
 * rows in order, each on the whole file's line once the part's lines
 * are counted from the parts before.  Returns 1 when a part asked for
 * the whole file: the parts after it may have begun inside quotes and
 * are not read. */
static int check_parts(const char *path, const data_opts *o, int n)
{
    flow_data *all = NULL;
    size_t at = 0, line = 0;
    int wholes = 0;
    ck_assert_int_eq(data_read(ctx, path, o, &all), FLOW_OK);
    for (int r = 0; r < n; r++) {
        data_part part = part_of(r, n);
        flow_data *d = (flow_data *)1;
        ck_assert_msg(data_read_part(ctx, path, o, &part, &d) == FLOW_OK,
                      "part %d of %d: %s", r, n, flow_errmsg(ctx));
        if (part.whole) {
            ck_assert_ptr_null(d);
            wholes = 1;
            break;
        }
        ck_assert_int_eq(part.csv, 1);
        if (r == 0)
            line = part.line_head;
        ck_assert_uint_eq(d->d, all->d);
        ck_assert_uint_le(at + d->n, all->n);
        for (size_t i = 0; i < d->n; i++, at++) {
            ck_assert_msg(!memcmp(d->x + i * d->d, all->x + at * all->d,
                                  all->d * sizeof *all->x),
                          "part %d of %d: row %zu differs from row %zu", r,
                          n, i, at);
            ck_assert_msg(line_of(d, i) + line - 1 == line_of(all, at),
                          "part %d of %d: row %zu on line %zu, the file's "
                          "row %zu on %zu", r, n, i, line_of(d, i) + line - 1,
                          at, line_of(all, at));
        }
        line += part.lines;
        data_free(d);
    }
    if (!wholes)
        ck_assert_uint_eq(at, all->n);
    data_free(all);
    return wholes;
}

static const char *put(const char *name, const char *text)
{
    const char *p = tu_path(dir, name);
    tu_write(p, text, strlen(text));
    return p;
}

/* Line starts at the cuts, inside lines, after a CR, blank lines, no
 * header, a byte order mark, no line feed at the end: 1 to 9 parts read
 * alone give the whole file's rows on its lines. */
START_TEST(test_csv_parts_split_at_line_starts)
{
    static const char *const texts[] = {
        /* 4-byte lines: with 2, 3, 4, 6 parts the cuts fall on starts */
        "a,b\n1,2\n3,4\n5,6\n7,8\n9,0\n1,3\n2,4\n3,5\n4,6\n5,7\n6,8\n7,9\n",
        "a,b\r\n1.5,2\r\n\r\n3,-4e2\r\n5,6\r\n  \r\n7,8\r\n9,10\r\n"
        "11,12\r\n13,14",
        "\xEF\xBB\xBF" "1,2\n3,4\n\n\n5,6\n7,8\n9,10\n11,12\n13,14\n15,16\n",
        "x,y\n\"1\",\"2\"\n3,\"4\"\n5,6\n",
        /* one row, no line feed: most parts find no line start */
        "1.00000000000000000000000000000000000000,2.5",
        "p,q\n1234567890.5,-1\n",
    };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        const char *p = put("in.csv", texts[k]);
        for (int n = 1; n <= 9; n++)
            ck_assert_msg(check_parts(p, NULL, n) == 0, "text %zu, %d "
                          "parts: a part asked to be read whole", k, n);
    }
}
END_TEST

/* A line feed inside quotes: a part that ends inside the quotes asks for
 * the whole file (the next one would begin in them); one part never. */
START_TEST(test_csv_parts_quoted_line_feed)
{
    char text[4096];
    size_t at = 0;
    int wholes = 0;
    const char *p;
    data_opts o = {"x0,x1", NULL, 0};
    at += (size_t)snprintf(text + at, sizeof text - at, "x0,x1,note\n");
    for (int i = 0; i < 40; i++)
        at += (size_t)snprintf(text + at, sizeof text - at, "%d,%d,%s\n", i,
                               -i, i % 2 ? "\"two\nlines\"" : "one");
    p = put("q.csv", text);
    ck_assert_int_eq(check_parts(p, &o, 1), 0);
    for (int n = 2; n <= 6; n++)
        wholes += check_parts(p, &o, n);
    ck_assert_msg(wholes > 0, "no part of 2 to 6 ended inside quotes");
}
END_TEST

/* A part's error names its line in its own count, and the file's line
 * once told where the part begins (line_base); values that underflow are
 * counted for the caller's note. */
START_TEST(test_csv_part_errors_and_underflows)
{
    const char *p = put("bad.csv", "a,b\n1,2\n3,4\n5,6\n7,8\n9,x\n1e-400,2\n");
    flow_data *all = NULL, *d = NULL;
    data_part part;
    char want[1024];
    size_t base = 0;
    ck_assert_int_ne(data_read(ctx, p, NULL, &all), FLOW_OK);
    snprintf(want, sizeof want, "%s", flow_errmsg(ctx));
    ck_assert_msg(strstr(want, ":6:2: non-numeric value 'x'") != NULL, "%s",
                  want);
    /* 3 parts of the 29 bytes after the header: lines 2-4, 5-6, 7 */
    for (int r = 0; r < 3; r++) {
        int rc;
        part = part_of(r, 3);
        rc = data_read_part(ctx, p, NULL, &part, &d);
        if (r == 0) {
            ck_assert_int_eq(rc, FLOW_OK);
            ck_assert_uint_eq(d->n, 3);
            base = part.line_head + part.lines;
            data_free(d);
        } else if (r == 1) {
            ck_assert_int_ne(rc, FLOW_OK);
            ck_assert_msg(strstr(flow_errmsg(ctx), ":2:2: non-numeric") !=
                          NULL, "%s", flow_errmsg(ctx));
            part.line_base = base;
            ck_assert_int_ne(data_read_part(ctx, p, NULL, &part, &d),
                             FLOW_OK);
            ck_assert_str_eq(flow_errmsg(ctx), want);
        } else {
            ck_assert_int_eq(rc, FLOW_OK);
            ck_assert_uint_eq(d->n, 1);
            ck_assert_uint_eq(part.underflows, 1);
            ck_assert_uint_eq(part.uf_place, 1);
            ck_assert_uint_eq(part.uf_col, 1);
            ck_assert_str_eq(part.uf_text, "1e-400");
            data_free(d);
        }
    }
}
END_TEST

/* What cannot be read in parts: stdin, a directory, a missing file (the
 * whole read names the problem).  (gzip: tests/mpi.sh.) */
START_TEST(test_parts_read_whole)
{
    const char *paths[3];
    paths[0] = "-";
    paths[1] = dir;
    paths[2] = tu_path(dir, "missing.csv");
    for (int k = 0; k < 3; k++) {
        data_part part = part_of(0, 2);
        flow_data *d = (flow_data *)1;
        ck_assert_int_eq(data_read_part(ctx, paths[k], NULL, &part, &d),
                         FLOW_OK);
        ck_assert_msg(part.whole == 1, "%s read in parts", paths[k]);
        ck_assert_ptr_null(d);
    }
}
END_TEST

/* NPY and IDX parts: rows [r n / N, (r + 1) n / N) by offset, with the
 * file's row numbers in messages; only the last part finds trailing
 * bytes, only the part that reaches a truncation reports it. */
START_TEST(test_npy_idx_parts_by_offset)
{
    flow_data *all = data_new(ctx, 10, 4, 0), *d;
    const char *np = tu_path(dir, "a.npy"), *ix = tu_path(dir, "a.idx");
    unsigned char *bytes;
    size_t len;
    char want[96];
    /* 8.5 of the 10 rows of 4 values: the part of rows [6, 10) meets it */
    snprintf(want, sizeof want, "NPY truncated: data has %zu bytes, "
             "expected %zu", 34 * sizeof(flow_real), 40 * sizeof(flow_real));
    ck_assert_ptr_nonnull(all);
    for (size_t i = 0; i < 40; i++)
        all->x[i] = (flow_real)(i * 3 % 251);
    ck_assert_int_eq(data_write(ctx, all, np, FLOW_DATA_NPY, 0), FLOW_OK);
    ck_assert_int_eq(data_write(ctx, all, ix, FLOW_DATA_IDX, 0), FLOW_OK);
    for (int f = 0; f < 2; f++)
        for (int n = 1; n <= 12; n++)
            for (int r = 0; r < n; r++) {
                data_part part = part_of(r, n);
                size_t lo = (size_t)r * 10 / (size_t)n;
                size_t hi = (size_t)(r + 1) * 10 / (size_t)n;
                ck_assert_int_eq(data_read_part(ctx, f ? ix : np, NULL, &part,
                                                &d), FLOW_OK);
                ck_assert_int_eq(part.whole, 0);
                ck_assert_uint_eq(part.total, 10);
                ck_assert_uint_eq(d->n, hi - lo);
                ck_assert_msg(hi == lo || !memcmp(d->x, all->x + lo * 4,
                                                  (hi - lo) * 4
                                                  * sizeof *d->x),
                              "%s part %d of %d", f ? "IDX" : "NPY", r, n);
                data_free(d);
            }
    /* one byte too many, then six values too few */
    bytes = tu_read(np, &len);
    {
        unsigned char *more = malloc(len + 1);
        ck_assert_ptr_nonnull(more);
        memcpy(more, bytes, len);
        more[len] = 0;
        tu_write(np, more, len + 1);
        free(more);
    }
    for (int r = 0; r < 3; r++) {
        data_part part = part_of(r, 3);
        int rc = data_read_part(ctx, np, NULL, &part, &d);
        if (r < 2) {
            ck_assert_int_eq(rc, FLOW_OK);
            data_free(d);
        } else
            ck_assert_msg(rc != FLOW_OK && strstr(flow_errmsg(ctx),
                                                  "trailing bytes"), "%s",
                          flow_errmsg(ctx));
    }
    tu_write(np, bytes, len - 6 * sizeof(flow_real));
    for (int r = 0; r < 3; r++) {
        data_part part = part_of(r, 3);
        int rc = data_read_part(ctx, np, NULL, &part, &d);
        if (r < 2) {
            ck_assert_int_eq(rc, FLOW_OK);
            data_free(d);
        } else
            ck_assert_msg(rc != FLOW_OK && strstr(flow_errmsg(ctx), want),
                          "%s", flow_errmsg(ctx));
    }
    free(bytes);
    data_free(all);
}
END_TEST

/* shard_range: align 1 gives floor(k n / N); units of align rows, the
 * last one short; N above the units leaves processes empty. */
START_TEST(test_shard_range)
{
    size_t lo, hi;
    for (size_t n = 0; n < 40; n++)
        for (size_t size = 1; size < 9; size++)
            for (size_t r = 0; r < size; r++) {
                shard_range(n, 1, r, size, &lo, &hi);
                ck_assert_uint_eq(lo, r * n / size);
                ck_assert_uint_eq(hi, (r + 1) * n / size);
            }
    shard_range(10, 4, 0, 2, &lo, &hi);
    ck_assert_uint_eq(lo, 0);
    ck_assert_uint_eq(hi, 4);
    shard_range(10, 4, 1, 2, &lo, &hi);
    ck_assert_uint_eq(lo, 4);
    ck_assert_uint_eq(hi, 10);
    shard_range(10, 4, 3, 5, &lo, &hi);     /* units 3 of 5: [1, 2) */
    ck_assert_uint_eq(lo, 4);
    ck_assert_uint_eq(hi, 8);
    shard_range(10, 4, 0, 5, &lo, &hi);
    ck_assert_uint_eq(hi - lo, 0);
    shard_range(10, 4, 4, 5, &lo, &hi);
    ck_assert_uint_eq(lo, 8);
    ck_assert_uint_eq(hi, 10);
}
END_TEST

/* Three simulated processes hold rows [0, 4), [4, 9), [9, 10) (values and
 * one context column); a permutation of the 10 rows goes to [0, 3), none,
 * [3, 10).  Packed, passed on as an all-to-all would, and unpacked, each
 * process holds exactly the rows it asked for, in its order. */
START_TEST(test_pack_unpack_three_processes)
{
    enum { P = 3, N = 10 };
    const size_t src[P + 1] = {0, 4, 9, 10}, dst[P + 1] = {0, 3, 3, 10};
    const uint32_t index[N] = {7, 2, 9, 0, 4, 8, 1, 3, 6, 5};
    flow_real x[N][2], c[N], got_x[N][2], got_c[N];
    shard_buf b[P];
    size_t send[P][P], recv[P], cursor[P];
    for (size_t i = 0; i < N; i++) {
        x[i][0] = (flow_real)i;
        x[i][1] = (flow_real)(100 + i);
        c[i] = (flow_real)(-1.0 * (double)i);
    }
    memset(b, 0, sizeof b);
    for (size_t p = 0; p < P; p++) {
        shard_cols cols[2] = {{x[src[p]], NULL, sizeof x[0]},
                              {&c[src[p]], NULL, sizeof c[0]}};
        ck_assert_int_eq(shard_pack(&b[p], p, P, src, index, dst, cols, 2,
                                    send[p]), 0);
    }
    for (size_t p = 0; p < P; p++) {
        unsigned char from[N * (sizeof x[0] + sizeof c[0])];
        size_t at = 0, w = sizeof x[0] + sizeof c[0];
        shard_cols cols[2] = {{NULL, got_x, sizeof x[0]},
                              {NULL, got_c, sizeof c[0]}};
        shard_recv_counts(p, P, src, index, dst, recv);
        for (size_t s = 0; s < P; s++) {
            size_t off = 0;
            ck_assert_uint_eq(recv[s], send[s][p]);
            for (size_t q = 0; q < p; q++)
                off += send[s][q];
            memcpy(from + at * w, b[s].send + off * w, send[s][p] * w);
            at += send[s][p];
        }
        shard_unpack(p, P, src, index, dst, from, recv, cursor, cols, 2);
        for (size_t i = dst[p]; i < dst[p + 1]; i++) {
            ck_assert_double_eq(got_x[i - dst[p]][0], index[i]);
            ck_assert_double_eq(got_x[i - dst[p]][1], 100 + index[i]);
            ck_assert_double_eq(got_c[i - dst[p]], -1.0 * index[i]);
        }
    }
    for (size_t p = 0; p < P; p++)
        shard_buf_free(&b[p]);
    ck_assert_uint_eq(shard_owner(src, P, 3), 0);
    ck_assert_uint_eq(shard_owner(src, P, 4), 1);
    ck_assert_uint_eq(shard_owner(src, P, 9), 2);
}
END_TEST

static flow_comm *single(void)
{
    flow_comm *c;
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    return c;
}

/* One process: the shard calls are the whole-set ones; the split keeps
 * every row once; the head is the first rows with their names. */
START_TEST(test_one_process_shard_calls)
{
    const char *p = put("s.csv", "u,v\n1,2\n3,4\n5,6\n7,8\n9,10\n");
    flow_comm *c = single();
    flow_data *d = NULL, *tr = NULL, *va = NULL, *h = NULL, *no = NULL;
    flow_data *no2 = NULL;
    flow_real seen[5] = {0};
    ck_assert_int_eq(flow_data_read_shard(ctx, c, p, NULL, NULL, 2, &d),
                     FLOW_OK);
    ck_assert_uint_eq(flow_data_first_row(d), 0);
    ck_assert_uint_eq(flow_data_total_rows(d), 5);
    ck_assert_int_eq(flow_data_realign(ctx, c, d, 4096), FLOW_OK);
    ck_assert_uint_eq(flow_data_rows(d), 5);
    ck_assert_int_eq(flow_data_split(ctx, NULL, d, 2, 9, 4096, &tr, &va),
                     FLOW_OK);
    ck_assert_uint_eq(flow_data_rows(tr), 3);
    ck_assert_uint_eq(flow_data_rows(va), 2);
    for (size_t i = 0; i < 3; i++)
        seen[(int)flow_data_values(tr)[2 * i] / 2] += 1;
    for (size_t i = 0; i < 2; i++)
        seen[(int)flow_data_values(va)[2 * i] / 2] += 1;
    for (size_t i = 0; i < 5; i++)
        ck_assert_double_eq(seen[i], 1);
    ck_assert_int_eq(flow_data_split(ctx, NULL, d, 5, 9, 1, &no, &no2),
                     FLOW_ERR_INVAL);
    ck_assert_ptr_null(no);
    ck_assert_int_eq(flow_data_head(ctx, c, d, 2, &h), FLOW_OK);
    ck_assert_uint_eq(flow_data_rows(h), 2);
    ck_assert_double_eq(flow_data_values(h)[3], 4);
    ck_assert_str_eq(flow_data_column_name(h, 1), "v");
    ck_assert_int_eq(flow_data_head(ctx, c, d, 6, &no), FLOW_ERR_INVAL);
    ck_assert_ptr_null(no);
    flow_data_free(d);
    flow_data_free(tr);
    flow_data_free(va);
    flow_data_free(h);
    flow_comm_free(c);
}
END_TEST

/* actnorm + standard normal base on 2 dims. */
static flow_model *gauss_model(void)
{
    flow_attr_value eps;
    flow_model *m = flow_model_new(ctx, 2, 0);
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 0, 0,
                                          0), FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 3), FLOW_OK);
    return m;
}

/* A trainer on a share (here the whole set, one process, rows fetched
 * through the exchange) gives the bits of a trainer on all rows with the
 * communicator; shares that do not tile are refused; the evaluation of
 * shares gives flow_model_evaluate_comm's bits and wants whole blocks. */
START_TEST(test_trainer_on_share_same_bits)
{
    enum { N = 300 };
    flow_real *x = malloc(N * 2 * sizeof *x);
    flow_model *m1, *m2;
    flow_train_config cfg;
    flow_trainer *t1, *t2;
    flow_comm *c = single();
    double l1 = 0, l2 = 0, e1, e2, s1, s2;
    ck_assert_int_eq(flow_plugin_load_all(ctx), FLOW_OK);
    m1 = gauss_model();
    m2 = gauss_model();
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < N * 2; i++)
        x[i] = (flow_real)(cos(0.3 * (double)i) * (i % 2 ? 2 : 0.5) - 1);
    flow_train_config_default(&cfg);
    cfg.batch = 70;
    cfg.lr = 0.02;
    ck_assert_int_eq(flow_model_data_init(m1, 70, x, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_data_init(m2, 70, x, NULL), FLOW_OK);
    t1 = flow_trainer_new(m1, &cfg, x, NULL, N);
    ck_assert_ptr_nonnull(t1);
    ck_assert_int_eq(flow_trainer_set_comm(t1, c), FLOW_OK);
    ck_assert_ptr_null(flow_trainer_new_shard(m2, &cfg, c, x, NULL, N - 1, 0,
                                              N));
    ck_assert_msg(strstr(flow_errmsg(ctx), "hold 299 rows of 300") != NULL,
                  "%s", flow_errmsg(ctx));
    t2 = flow_trainer_new_shard(m2, &cfg, c, x, NULL, N, 0, N);
    ck_assert_ptr_nonnull(t2);
    for (int s = 0; s < 12; s++) {
        ck_assert_int_eq(flow_trainer_step(t1, &l1), FLOW_OK);
        ck_assert_int_eq(flow_trainer_step(t2, &l2), FLOW_OK);
    }
    ck_assert_double_eq(l1, l2);
    ck_assert_int_eq(memcmp(flow_model_params(m1), flow_model_params(m2),
                            flow_model_num_params(m1) * sizeof(flow_real)),
                     0);
    ck_assert_int_eq(flow_model_evaluate_comm(m2, c, N, x, NULL, 64, &e1,
                                              &s1), FLOW_OK);
    ck_assert_int_eq(flow_model_evaluate_shard(m2, c, N, x, NULL, 0, N, 64,
                                               &e2, &s2), FLOW_OK);
    ck_assert_double_eq(e1, e2);
    ck_assert_double_eq(s1, s2);
    ck_assert_int_eq(flow_model_evaluate_shard(m2, c, N - 10, x + 20, NULL,
                                               10, N, 64, &e2, &s2),
                     FLOW_ERR_INVAL);
    flow_trainer_free(t1);
    flow_trainer_free(t2);
    flow_model_free(m1);
    flow_model_free(m2);
    flow_comm_free(c);
    free(x);
}
END_TEST

Suite *suite_shard(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("parts");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_csv_parts_split_at_line_starts);
    tcase_add_test(tc, test_csv_parts_quoted_line_feed);
    tcase_add_test(tc, test_csv_part_errors_and_underflows);
    tcase_add_test(tc, test_parts_read_whole);
    tcase_add_test(tc, test_npy_idx_parts_by_offset);
    suite_add_tcase(s, tc);
    tc = tcase_create("moves");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_shard_range);
    tcase_add_test(tc, test_pack_unpack_three_processes);
    tcase_add_test(tc, test_one_process_shard_calls);
    tcase_add_test(tc, test_trainer_on_share_same_bits);
    suite_add_tcase(s, tc);
    return s;
}
