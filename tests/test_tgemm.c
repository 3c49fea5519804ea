/* test_tgemm.c - the register-tiled float GEMM (runtime/tgemm.c) against
 * a double-precision triple loop: every tile shape (row tails 1-5, 8- and
 * 16-column tiles), A plain and transposed, strides wider than the
 * matrices, the three modes (C = AB, C += AB, C = AB + bias), C never
 * read without acc (NaN-filled), nothing written outside C, widths that
 * are not a multiple of 8 (masked tiles: a column's bits independent of
 * the call's width, the AVX2 path's bits equal to AVX-512's), and the
 * declines; the epilogues of tgemm_ep (ReLU, ReLU's derivative, column
 * sums) and the dot-product kernel tgemm_dot on odd shapes. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/rng.h"
#include "../runtime/tgemm.h"
#include "suites.h"

static float urand(flow_rng *r)
{
    return (float)(2 * rng_uniform(r) - 1);
}

/* 1 when tgemm runs on this machine (AVX2 + FMA); else it must decline
 * everything and the checks below are skipped */
static int tg_on(void)
{
    float a[8] = {0}, b[8] = {0}, c[8];
    return tgemm(1, 8, 1, a, 1, 1, b, 8, NULL, 0, c, 8);
}

/* one call against the reference: C = A B (+ C0 or bias), with the
 * rounding bound of a sum of k products and one addition, (k + 2) u
 * (sum_q |A B| + |C0| or |bias|), u = 2^-24 (the inner-product bound of
 * Higham 2002, sec. 3.1, gamma_k sum |a b|, plus the one addition) */
static void check_one(size_t m, size_t n, size_t k, int trans, int mode,
                      flow_rng *rng)
{
    size_t lda = (trans ? m : k) + 3, ldb = n + 5, ldc = n + 7;
    size_t ars = trans ? 1 : lda, acs = trans ? lda : 1;
    size_t arows = trans ? (k ? k : 1) : (m ? m : 1);
    float *a = malloc(arows * lda * sizeof *a);
    float *b = malloc((k ? k : 1) * ldb * sizeof *b);
    float *c = malloc((m ? m : 1) * ldc * sizeof *c);
    float *c0 = malloc((m ? m : 1) * ldc * sizeof *c0);
    float bias[64];
    ck_assert_uint_le(n, 64);
    for (size_t i = 0; i < arows * lda; i++)
        a[i] = urand(rng);
    for (size_t i = 0; i < (k ? k : 1) * ldb; i++)
        b[i] = urand(rng);
    for (size_t j = 0; j < n; j++)
        bias[j] = urand(rng);
    for (size_t i = 0; i < (m ? m : 1) * ldc; i++)
        c0[i] = (mode == 1 || i % ldc >= n) ? urand(rng) : NAN;
    memcpy(c, c0, (m ? m : 1) * ldc * sizeof *c);
    ck_assert_int_eq(tgemm(m, n, k, a, ars, acs, b, ldb,
                           mode == 2 ? bias : NULL, mode == 1, c, ldc), 1);
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < ldc; j++) {
            double s = 0, sa = 0, add = 0, tol;
            if (j >= n) {     /* outside C: untouched, bit for bit */
                ck_assert_mem_eq(&c[i * ldc + j], &c0[i * ldc + j],
                                 sizeof *c);
                continue;
            }
            for (size_t q = 0; q < k; q++) {
                double p = (double)a[i * ars + q * acs] * b[q * ldb + j];
                s += p;
                sa += fabs(p);
            }
            add = mode == 1 ? c0[i * ldc + j] : mode == 2 ? bias[j] : 0;
            tol = (double)(k + 2) * ldexp(1, -24) * (sa + fabs(add));
            ck_assert_msg(isfinite(c[i * ldc + j]) &&
                          fabs(c[i * ldc + j] - (s + add)) <= tol,
                          "m %zu n %zu k %zu trans %d mode %d: C[%zu][%zu] "
                          "%.9g vs %.9g (tol %g)", m, n, k, trans, mode, i,
                          j, (double)c[i * ldc + j], s + add, tol);
        }
    }
    free(a);
    free(b);
    free(c);
    free(c0);
}

START_TEST(test_tgemm_shapes)
{
    static const size_t ms[] = {1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 40};
    static const size_t ns[] = {8, 16, 24, 64};
    static const size_t ks[] = {0, 1, 7, 64, 100};
    flow_rng rng;
    if (!tg_on())
        return;     /* no AVX2 + FMA: test_tgemm_declines covers it */
    rng_seed(&rng, 77);
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                for (int trans = 0; trans < 2; trans++)
                    for (int mode = 0; mode < 3; mode++)
                        check_one(ms[a], ns[b], ks[c], trans, mode, &rng);
}
END_TEST

/* a row's values do not depend on m or on the other rows: each row of a
 * 13-row product equals the same row computed alone, bit for bit */
START_TEST(test_tgemm_rows_independent)
{
    enum { M = 13, N = 24, K = 50 };
    float a[M * K], b[K * N], c[M * N], c1[N], bias[N];
    flow_rng rng;
    if (!tg_on())
        return;
    rng_seed(&rng, 78);
    for (size_t i = 0; i < M * K; i++)
        a[i] = urand(&rng);
    for (size_t i = 0; i < K * N; i++)
        b[i] = urand(&rng);
    for (size_t i = 0; i < N; i++)
        bias[i] = urand(&rng);
    ck_assert_int_eq(tgemm(M, N, K, a, K, 1, b, N, bias, 0, c, N), 1);
    for (size_t i = 0; i < M; i++) {
        ck_assert_int_eq(tgemm(1, N, K, a + i * K, K, 1, b, N, bias, 0, c1,
                               N), 1);
        ck_assert_mem_eq(c1, c + i * N, sizeof c1);
    }
}
END_TEST

/* pos_mask of nn_impl.h: 1 for +0 and above, 0 for -0 and below */
static double ref_posmask(float z)
{
    return signbit(z) ? 0 : 1;
}

/* tgemm_ep on one shape against the triple loop: bias / acc / neither,
 * then relu, gate and colsum as asked; the bound of check_one per entry.
 * A ReLU'd entry whose exact value lies within the bound of 0 may take
 * either sign's branch: it must then be 0 or the unclipped value.  The
 * column sums are checked exactly against the float sums of the entries
 * written, row by row (tgemm.h's order). */
static void check_ep(size_t m, size_t n, size_t k, int trans, int mode,
                     int relu, int gate, int colsum, flow_rng *rng)
{
    size_t lda = (trans ? m : k) + 1, ldb = n + 3, ldc = n + 2, ldg = n + 5;
    size_t ars = trans ? 1 : lda, acs = trans ? lda : 1;
    size_t arows = trans ? k : m;
    float *a = malloc(arows * lda * sizeof *a);
    float *b = malloc(k * ldb * sizeof *b);
    float *c = malloc(m * ldc * sizeof *c);
    float *c0 = malloc(m * ldc * sizeof *c0);
    float *g = malloc(m * ldg * sizeof *g);
    float bias[160], cs[160], cs0[160];
    tgemm_epi ep = {0};
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(c0);
    ck_assert_ptr_nonnull(g);
    ck_assert_uint_le(n, 160);
    for (size_t i = 0; i < arows * lda; i++)
        a[i] = urand(rng);
    for (size_t i = 0; i < k * ldb; i++)
        b[i] = urand(rng);
    for (size_t j = 0; j < n; j++) {
        bias[j] = urand(rng);
        cs[j] = cs0[j] = urand(rng);
    }
    for (size_t i = 0; i < m * ldg; i++)   /* signed zeros among them */
        g[i] = i % 7 == 0 ? -0.0f : i % 7 == 1 ? 0.0f : urand(rng);
    for (size_t i = 0; i < m * ldc; i++)
        c0[i] = (mode == 1 || i % ldc >= n) ? urand(rng) : NAN;
    memcpy(c, c0, m * ldc * sizeof *c);
    ep.bias = mode == 2 ? bias : NULL;
    ep.acc = mode == 1;
    ep.relu = relu;
    ep.gate = gate ? g : NULL;
    ep.ldg = ldg;
    ep.colsum = colsum ? cs : NULL;
    ck_assert_int_eq(tgemm_ep(m, n, k, a, ars, acs, b, ldb, &ep, c, ldc), 1);
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < ldc; j++) {
            double s = 0, sa = 0, add, tol, v, got = c[i * ldc + j];
            if (j >= n) {
                ck_assert_mem_eq(&c[i * ldc + j], &c0[i * ldc + j],
                                 sizeof *c);
                continue;
            }
            for (size_t q = 0; q < k; q++) {
                double p = (double)a[i * ars + q * acs] * b[q * ldb + j];
                s += p;
                sa += fabs(p);
            }
            add = mode == 1 ? c0[i * ldc + j] : mode == 2 ? bias[j] : 0;
            tol = (double)(k + 2) * ldexp(1, -24) * (sa + fabs(add));
            v = s + add;
            if (relu && fabs(v) <= tol)      /* either branch */
                v = got == 0 ? 0 : v;
            else if (relu && v < 0)
                v = 0;
            if (gate)
                v *= ref_posmask(g[i * ldg + j]);
            ck_assert_msg(isfinite(got) && fabs(got - v) <= tol,
                          "m %zu n %zu k %zu trans %d mode %d relu %d gate "
                          "%d: C[%zu][%zu] %.9g vs %.9g (tol %g)", m, n, k,
                          trans, mode, relu, gate, i, j, got, v, tol);
        }
    }
    for (size_t j = 0; j < n; j++) {
        float want = cs0[j];
        for (size_t i = 0; i < m; i++)
            want += colsum ? c[i * ldc + j] : 0;
        ck_assert_msg(memcmp(&cs[j], &want, sizeof want) == 0,
                      "colsum[%zu] %.9g vs %.9g (m %zu n %zu k %zu)", j,
                      (double)cs[j], (double)want, m, n, k);
    }
    free(a);
    free(b);
    free(c);
    free(c0);
    free(g);
}

START_TEST(test_tgemm_epilogues)
{
    static const size_t ms[] = {1, 5, 7, 13, 25};
    static const size_t ns[] = {8, 16, 24, 40, 136};
    static const size_t ks[] = {1, 2, 3, 128};
    flow_rng rng;
    if (!tg_on())
        return;
    rng_seed(&rng, 79);
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                for (int f = 0; f < 3 * 8; f++)
                    check_ep(ms[a], ns[b], ks[c], f % 2, f / 8, f / 2 % 2,
                             f / 4 % 2, (f + (int)b) % 3 == 0, &rng);
}
END_TEST

/* ReLU and its gate on the values that decide them: +0 and -0, the
 * smallest subnormals, infinities, NaN (k = 1, B = 1: C = A + bias 0) */
START_TEST(test_tgemm_relu_signs)
{
    const float v[8] = {0.0f, -0.0f, 1e-45f, -1e-45f, INFINITY, -INFINITY,
                        NAN, -2.5f};
    float b[8], bias[8] = {0}, c[8], g[8];
    tgemm_epi ep = {.bias = bias, .relu = 1};
    if (!tg_on())
        return;
    for (int j = 0; j < 8; j++) {
        float a1 = v[j];
        b[j] = 1;
        ck_assert_int_eq(tgemm_ep(1, 8, 1, &a1, 1, 1, b, 8, &ep, c, 8), 1);
        {
            /* nn_impl.h's act_inplace: (0.5 + copysign(0.5, z)) z */
            float want = (0.5f + copysignf(0.5f, a1 + 0.0f)) * (a1 + 0.0f);
            ck_assert_msg(memcmp(&c[0], &want, sizeof want) == 0 ||
                          (isnan(c[0]) && isnan(want)),
                          "relu(%g) = %g, want %g", (double)a1, (double)c[0],
                          (double)want);
        }
    }
    /* the gate: C = 1 * pos_mask(g) */
    for (int j = 0; j < 8; j++) {
        g[j] = v[j];
        b[j] = 1;
    }
    {
        tgemm_epi eg = {.gate = g, .ldg = 8};
        float one = 1;
        ck_assert_int_eq(tgemm_ep(1, 8, 1, &one, 1, 1, b, 8, &eg, c, 8), 1);
        for (int j = 0; j < 8; j++)
            ck_assert_msg(c[j] == (signbit(v[j]) ? 0.0f : 1.0f),
                          "gate(%g) = %g", (double)v[j], (double)c[j]);
    }
}
END_TEST

/* tgemm_dot against the triple loop on the narrow shapes it serves and
 * odd ones (rows 1, 5, 7, 13; k 1, 2, 3, 17, 128; n 1, 2, 3, 17), the
 * three modes, strides wider than the matrices; nothing written outside
 * C; each row's values as computed alone (bit for bit) */
static void check_dot(size_t m, size_t n, size_t k, int mode, flow_rng *rng)
{
    size_t lda = k + 3, ldbt = k + 1, ldc = n + 2;
    float *a = malloc(m * lda * sizeof *a), *bt = malloc(n * ldbt * sizeof *bt);
    float *c = malloc(m * ldc * sizeof *c), *c0 = malloc(m * ldc * sizeof *c0);
    float bias[32], row[32];
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(bt);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(c0);
    for (size_t i = 0; i < m * lda; i++)
        a[i] = urand(rng);
    for (size_t i = 0; i < n * ldbt; i++)
        bt[i] = urand(rng);
    for (size_t j = 0; j < n; j++)
        bias[j] = urand(rng);
    for (size_t i = 0; i < m * ldc; i++)
        c0[i] = (mode == 1 || i % ldc >= n) ? urand(rng) : NAN;
    memcpy(c, c0, m * ldc * sizeof *c);
    ck_assert_int_eq(tgemm_dot(m, n, k, a, lda, bt, ldbt,
                               mode == 2 ? bias : NULL, mode == 1, c, ldc), 1);
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < ldc; j++) {
            double s = 0, sa = 0, add, tol;
            if (j >= n) {
                ck_assert_mem_eq(&c[i * ldc + j], &c0[i * ldc + j],
                                 sizeof *c);
                continue;
            }
            for (size_t q = 0; q < k; q++) {
                double p = (double)a[i * lda + q] * bt[j * ldbt + q];
                s += p;
                sa += fabs(p);
            }
            add = mode == 1 ? c0[i * ldc + j] : mode == 2 ? bias[j] : 0;
            tol = (double)(k + 2) * ldexp(1, -24) * (sa + fabs(add));
            ck_assert_msg(isfinite(c[i * ldc + j]) &&
                          fabs(c[i * ldc + j] - (s + add)) <= tol,
                          "dot m %zu n %zu k %zu mode %d: C[%zu][%zu] %.9g "
                          "vs %.9g (tol %g)", m, n, k, mode, i, j,
                          (double)c[i * ldc + j], s + add, tol);
        }
        if (mode != 1) {
            ck_assert_int_eq(tgemm_dot(1, n, k, a + i * lda, lda, bt, ldbt,
                                       mode == 2 ? bias : NULL, 0, row, n), 1);
            ck_assert_mem_eq(row, c + i * ldc, n * sizeof *row);
        }
    }
    free(a);
    free(bt);
    free(c);
    free(c0);
}

START_TEST(test_tgemm_dot)
{
    static const size_t ms[] = {1, 5, 7, 13};
    static const size_t ns[] = {1, 2, 3, 17};
    static const size_t ks[] = {1, 2, 3, 17, 128};
    flow_rng rng;
    if (tgemm_level() < 2) {     /* AVX-512 only: declined, C untouched */
        float a[4] = {1, 2, 3, 4}, c[2] = {5, 6};
        ck_assert_int_eq(tgemm_dot(1, 2, 2, a, 2, a, 2, NULL, 0, c, 2), 0);
        ck_assert_float_eq(c[0], 5);
        ck_assert_float_eq(c[1], 6);
        return;
    }
    rng_seed(&rng, 80);
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                for (int mode = 0; mode < 3; mode++)
                    check_dot(ms[a], ns[b], ks[c], mode, &rng);
}
END_TEST

/* tgemm_transpose on 16 x 16 blocks and ragged edges, strides wider than
 * the matrices: every entry moved bit for bit, nothing else written */
START_TEST(test_tgemm_transpose)
{
    static const size_t dims[] = {1, 2, 5, 15, 16, 17, 33, 128};
    enum { ND = sizeof dims / sizeof dims[0] };
    flow_rng rng;
    rng_seed(&rng, 81);
    for (size_t a = 0; a < ND; a++)
        for (size_t b = 0; b < ND; b++) {
            size_t rows = dims[a], cols = dims[b];
            size_t lds = cols + 3, ldd = rows + 5;
            float *src = malloc(rows * lds * sizeof *src);
            float *dst = malloc(cols * ldd * sizeof *dst);
            ck_assert_ptr_nonnull(src);
            ck_assert_ptr_nonnull(dst);
            for (size_t i = 0; i < rows * lds; i++)
                src[i] = urand(&rng);
            for (size_t i = 0; i < cols * ldd; i++)
                dst[i] = -7;
            tgemm_transpose(rows, cols, src, lds, dst, ldd);
            for (size_t c = 0; c < cols; c++)
                for (size_t r = 0; r < ldd; r++) {
                    float want = r < rows ? src[r * lds + c] : -7;
                    ck_assert_msg(memcmp(&dst[c * ldd + r], &want,
                                         sizeof want) == 0,
                                  "%zu x %zu: dst[%zu][%zu] %g vs %g", rows,
                                  cols, c, r, (double)dst[c * ldd + r],
                                  (double)want);
                }
            free(src);
            free(dst);
        }
}
END_TEST

/* widths that are not a multiple of 8 (the last columns in a masked
 * tile): every row tail of both paths' tiles, both A layouts, the three
 * modes, nothing written outside C (check_one) */
START_TEST(test_tgemm_tails)
{
    static const size_t ms[] = {1, 5, 6, 7, 12, 13, 25};
    static const size_t ks[] = {0, 1, 9, 64};
    flow_rng rng;
    if (!tg_on())
        return;
    rng_seed(&rng, 81);
    for (size_t n = 1; n <= 40; n++)
        for (size_t a = 0; n % 8 && a < sizeof ms / sizeof ms[0]; a++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                for (int trans = 0; trans < 2; trans++)
                    for (int mode = 0; mode < 3; mode++)
                        check_one(ms[a], n, ks[c], trans, mode, &rng);
}
END_TEST

/* the epilogues on the masked tiles (and a 92-wide layer, nsf8's spline
 * parameters: 64 + 16 + 12 columns on AVX-512, 80 + 8 + 4 on AVX2) */
START_TEST(test_tgemm_tail_epilogues)
{
    static const size_t ms[] = {1, 7, 13, 25};
    static const size_t ns[] = {1, 3, 4, 7, 9, 12, 15, 17, 23, 31, 39, 92};
    static const size_t ks[] = {1, 3, 128};
    flow_rng rng;
    if (!tg_on())
        return;
    rng_seed(&rng, 82);
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++)
                for (int f = 0; f < 3 * 8; f++)
                    check_ep(ms[a], ns[b], ks[c], f % 2, f / 8, f / 2 % 2,
                             f / 4 % 2, (f + (int)b) % 3 == 0, &rng);
}
END_TEST

enum { TW_M = 29, TW_K = 37, TW_W = 112 };

/* Inputs of the width tests: A (row-major TW_M x TW_K, or transposed),
 * B TW_K x TW_W, the gate (signed zeros among its values), bias */
typedef struct tw_in {
    float a[TW_M * TW_K], b[TW_K * TW_W], g[TW_M * TW_W], bias[TW_W];
    float c0[TW_M * TW_W], cs0[TW_W];
} tw_in;

static void tw_fill(tw_in *in, flow_rng *rng)
{
    for (size_t i = 0; i < TW_M * TW_K; i++)
        in->a[i] = urand(rng);
    for (size_t i = 0; i < TW_K * TW_W; i++)
        in->b[i] = urand(rng);
    for (size_t i = 0; i < TW_M * TW_W; i++) {
        in->g[i] = i % 5 == 0 ? -0.0f : i % 5 == 1 ? 0.0f : urand(rng);
        in->c0[i] = urand(rng);
    }
    for (size_t j = 0; j < TW_W; j++) {
        in->bias[j] = urand(rng);
        in->cs0[j] = urand(rng);
    }
}

/* C (TW_M x TW_W, from c0) and the column sums (from cs0) after one
 * tgemm_ep of m rows, n columns and k = TW_K, with the epilogue of
 * flags f: bits 0-1 the mode (bias, acc, none), 2 relu, 3 gate, 4
 * colsum, 5 A transposed */
static void tw_run(const tw_in *in, size_t m, size_t n, int f, float *c,
                   float *cs)
{
    int trans = f >> 5 & 1;
    tgemm_epi ep = {.bias = f % 4 == 0 ? in->bias : NULL,
                    .acc = f % 4 == 1, .relu = f >> 2 & 1,
                    .gate = f >> 3 & 1 ? in->g : NULL, .ldg = TW_W,
                    .colsum = f >> 4 & 1 ? cs : NULL};
    memcpy(c, in->c0, sizeof in->c0);
    memcpy(cs, in->cs0, sizeof in->cs0);
    ck_assert_int_eq(tgemm_ep(m, n, TW_K, in->a, trans ? 1 : TW_K,
                              trans ? TW_M : 1, in->b, TW_W, &ep, c, TW_W),
                     1);
}

/* a column's bits do not depend on the width of the call or on the tile
 * it falls in (tgemm.h): the first n columns of an n-wide product equal
 * those of wider ones, with every epilogue, and the n-wide call writes
 * nothing past column n of C or of the column sums */
START_TEST(test_tgemm_tail_columns)
{
    static const size_t extra[] = {1, 3, 8, 17};
    static const size_t pairs[][2] = {{88, 92}, {80, 92}, {92, 96},
                                      {92, 112}, {64, 92}};
    tw_in *in = malloc(sizeof *in);
    float *c = malloc(sizeof in->c0), *cw = malloc(sizeof in->c0);
    float cs[TW_W], csw[TW_W];
    flow_rng rng;
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(cw);
    if (tg_on()) {
        rng_seed(&rng, 83);
        tw_fill(in, &rng);
    }
    for (size_t t = 0; tg_on() && t < 40 * 4 + 5; t++) {
        size_t n = t < 160 ? t / 4 + 1 : pairs[t - 160][0];
        size_t nw = t < 160 ? n + extra[t % 4] : pairs[t - 160][1];
        for (int f = 0; f < 64; f++) {
            size_t m = f % 3 == 0 ? TW_M : f % 3 == 1 ? 13 : 5;
            if (f % 4 == 3)
                continue;
            tw_run(in, m, n, f, c, cs);
            tw_run(in, m, nw, f, cw, csw);
            for (size_t i = 0; i < TW_M; i++) {
                size_t w = i < m ? n : 0;
                ck_assert_msg(memcmp(c + i * TW_W, cw + i * TW_W,
                                     w * sizeof *c) == 0,
                              "row %zu: n %zu vs %zu differ (f %d)", i, n,
                              nw, f);
                ck_assert_msg(memcmp(c + i * TW_W + w, in->c0 + i * TW_W + w,
                                     (TW_W - w) * sizeof *c) == 0,
                              "row %zu: written past column %zu (f %d)", i,
                              w, f);
            }
            ck_assert_msg(memcmp(cs, csw, n * sizeof *cs) == 0 &&
                                  memcmp(cs + n, in->cs0 + n,
                                         (TW_W - n) * sizeof *cs) == 0,
                          "column sums: n %zu vs %zu (f %d)", n, nw, f);
        }
    }
    free(in);
    free(c);
    free(cw);
}
END_TEST

/* the AVX2 path (tgemm_cap_level(1)) gives the AVX-512 path's bits on
 * every width 1-40 and 92, every epilogue and row tail: tgemm.h's
 * promise that the CPU does not change a result */
START_TEST(test_tgemm_avx2_bits)
{
    tw_in *in = malloc(sizeof *in);
    float *c = malloc(sizeof in->c0), *c2 = malloc(sizeof in->c0);
    float cs[TW_W], cs2[TW_W];
    flow_rng rng;
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(c2);
    rng_seed(&rng, 84);
    tw_fill(in, &rng);
    for (size_t n = 1; tgemm_level() == 2 && n <= 41; n++) {
        size_t w = n <= 40 ? n : 92;
        for (int f = 0; f < 64; f++) {
            size_t m = f % 3 == 0 ? TW_M : f % 3 == 1 ? 24 : 7;
            if (f % 4 == 3)
                continue;
            tw_run(in, m, w, f, c, cs);
            tgemm_cap_level(1);
            ck_assert_int_eq(tgemm_level(), 1);
            tw_run(in, m, w, f, c2, cs2);
            tgemm_cap_level(2);
            ck_assert_msg(memcmp(c, c2, sizeof in->c0) == 0 &&
                                  memcmp(cs, cs2, sizeof cs) == 0,
                          "AVX2 vs AVX-512: m %zu n %zu f %d", m, w, f);
        }
    }
    free(in);
    free(c);
    free(c2);
}
END_TEST

/* with the kernels capped off (tgemm_cap_level(0)), as on a machine
 * without AVX2 + FMA, every call is declined with C untouched */
START_TEST(test_tgemm_declines)
{
    float a[4 * 12], b[12 * 12], c[4 * 12], keep[4 * 12], cs[12];
    for (size_t i = 0; i < 48; i++)
        a[i] = c[i] = keep[i] = (float)i;
    for (size_t i = 0; i < 144; i++)
        b[i] = 1;
    tgemm_cap_level(0);
    ck_assert_int_eq(tgemm_level(), 0);
    for (size_t n = 1; n <= 12; n++) {
        tgemm_epi ep = {.relu = 1, .colsum = cs};
        ck_assert_int_eq(tgemm(4, n, 12, a, 12, 1, b, 12, NULL, 0, c, 12),
                         0);
        ck_assert_int_eq(tgemm_ep(4, n, 12, a, 12, 1, b, 12, &ep, c, 12), 0);
        ck_assert_mem_eq(c, keep, sizeof c);
    }
    tgemm_cap_level(2);
}
END_TEST

Suite *suite_tgemm(void)
{
    Suite *s = suite_create("tgemm");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_tgemm_shapes);
    tcase_add_test(tc, test_tgemm_rows_independent);
    tcase_add_test(tc, test_tgemm_epilogues);
    tcase_add_test(tc, test_tgemm_relu_signs);
    tcase_add_test(tc, test_tgemm_dot);
    tcase_add_test(tc, test_tgemm_transpose);
    tcase_add_test(tc, test_tgemm_tails);
    tcase_add_test(tc, test_tgemm_tail_epilogues);
    tcase_add_test(tc, test_tgemm_tail_columns);
    tcase_add_test(tc, test_tgemm_avx2_bits);
    tcase_set_timeout(tc, 60);      /* seconds on a loaded machine */
    suite_add_tcase(s, tc);
    tc = tcase_create("declines");
    tcase_add_test(tc, test_tgemm_declines);
    suite_add_tcase(s, tc);
    return s;
}
