/* test_bf16.c - bf16 products with float sums (tgemm_bf16_ep, runtime/
 * tgemm.c) and the model setting that uses them (flow_model_set_precision). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
#include "../runtime/rng.h"
#include "../runtime/tgemm.h"
#include "model_util.h"
#include "suites.h"

/* 1 where the bf16 kernel runs; else a message and the check is skipped */
static int bf16_here(const char *test)
{
    if (tgemm_bf16_level())
        return 1;
    fprintf(stderr, "%s: skipped: this CPU has no AVX512-BF16\n", test);
    return 0;
}

/* x rounded to bf16 as VCVTNE2PS2BF16 does: nearest, ties to even, a
 * subnormal read as a signed 0 (no NaN or infinity in these tests) */
static double bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if (!(u & 0x7f800000u))
        u &= 0x80000000u;
    else
        u = (u + 0x7fffu + (u >> 16 & 1)) & 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float urand(flow_rng *r)
{
    return (float)(2 * rng_uniform(r) - 1);
}

/* Layouts of A: row-major, transposed, general strides (neither 1). */
enum { A_ROWS, A_TRANS, A_STRIDED };

/* One call against the reference: the operands rounded to bf16, the sum
 * in double.  The pairs' products are exact in float (8-bit significands)
 * and VDPBF16PS adds them to the float accumulator one by one, so the
 * bound is that of a float sum of k exact terms and one more addition:
 * (k + 2) u (sum_q |A B| + |C0|), u = 2^-24 (Higham 2002, sec. 3.1). */
static void check_one(size_t m, size_t n, size_t k, int lay, int mode,
                      int relu, flow_rng *rng)
{
    size_t lda = lay == A_TRANS ? m + 3 : lay == A_STRIDED ? 2 * k + 5
                                                           : k + 3;
    size_t ars = lay == A_TRANS ? 1 : lda, acs = lay == A_TRANS ? lda
                                             : lay == A_STRIDED ? 2 : 1;
    size_t arows = lay == A_TRANS ? k : m, ldb = n + 5, ldc = n + 7;
    float *a = malloc(arows * lda * sizeof *a);
    float *b = malloc(k * ldb * sizeof *b);
    float *c = malloc(m * ldc * sizeof *c);
    float *c0 = malloc(m * ldc * sizeof *c0);
    float bias[80], colsum[80];
    double ref_cs[80];
    tgemm_epi ep = {0};
    ck_assert_uint_le(n, 80);
    for (size_t i = 0; i < arows * lda; i++)
        a[i] = urand(rng);
    for (size_t i = 0; i < k * ldb; i++)
        b[i] = urand(rng);
    for (size_t j = 0; j < n; j++) {
        bias[j] = urand(rng);
        colsum[j] = urand(rng);
        ref_cs[j] = colsum[j];
    }
    for (size_t i = 0; i < m * ldc; i++)
        c0[i] = (mode == 1 || i % ldc >= n) ? urand(rng) : NAN;
    memcpy(c, c0, m * ldc * sizeof *c);
    ep.bias = mode == 2 ? bias : NULL;
    ep.acc = mode == 1;
    ep.relu = relu;
    ep.colsum = relu ? colsum : NULL;
    ck_assert_int_eq(tgemm_bf16_ep(m, n, k, a, ars, acs, b, ldb, &ep, c,
                                   ldc), 1);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < ldc; j++) {
            double s = 0, sa = 0, add, tol, v = c[i * ldc + j];
            if (j >= n) {     /* outside C: untouched, bit for bit */
                ck_assert_mem_eq(&c[i * ldc + j], &c0[i * ldc + j],
                                 sizeof *c);
                continue;
            }
            for (size_t q = 0; q < k; q++) {
                double p = bf16_round(a[i * ars + q * acs]) *
                           bf16_round(b[q * ldb + j]);
                s += p;
                sa += fabs(p);
            }
            add = mode == 1 ? c0[i * ldc + j] : mode == 2 ? bias[j] : 0;
            s += add;
            tol = (double)(k + 2) * ldexp(1, -24) * (sa + fabs(add));
            if (relu) {
                s = s > 0 ? s : 0;
                ref_cs[j] += v;
            }
            ck_assert_msg(isfinite(v) && fabs(v - s) <= tol,
                          "m %zu n %zu k %zu layout %d mode %d: C[%zu][%zu] "
                          "%.9g vs %.9g (tol %g)", m, n, k, lay, mode, i, j,
                          v, s, tol);
        }
    /* the column sums: the stored values added in float, row by row */
    for (size_t j = 0; relu && j < n; j++)
        ck_assert_double_eq_tol(colsum[j], ref_cs[j],
                                (double)(m + 1) * ldexp(1, -24) *
                                    (fabs(ref_cs[j]) + (double)m));
    free(a);
    free(b);
    free(c);
    free(c0);
}

/* Every tile shape: row tails 1-11 past 12-row tiles, 32-, 16- and
 * 8-column tiles, k odd (the zero pad) and even, three layouts of A */
START_TEST(test_bf16_gemm_shapes)
{
    static const size_t ms[] = {1, 5, 11, 12, 13, 25, 30};
    static const size_t ns[] = {8, 16, 24, 40, 72};
    static const size_t ks[] = {1, 2, 3, 16, 33, 128};
    flow_rng rng;
    if (!bf16_here("test_bf16_gemm_shapes"))
        return;
    rng_seed(&rng, 11);
    for (size_t x = 0; x < sizeof ms / sizeof *ms; x++)
        for (size_t y = 0; y < sizeof ns / sizeof *ns; y++)
            for (size_t z = 0; z < sizeof ks / sizeof *ks; z++)
                for (int lay = A_ROWS; lay <= A_STRIDED; lay++)
                    check_one(ms[x], ns[y], ks[z], lay,
                              (int)((x + y + z + (size_t)lay) % 3), 0, &rng);
}
END_TEST

/* The epilogue (ReLU and the column sums) after the bf16 products */
START_TEST(test_bf16_gemm_epilogue)
{
    flow_rng rng;
    if (!bf16_here("test_bf16_gemm_epilogue"))
        return;
    rng_seed(&rng, 12);
    check_one(37, 40, 129, A_ROWS, 2, 1, &rng);
    check_one(24, 72, 64, A_TRANS, 1, 1, &rng);
    check_one(7, 8, 5, A_STRIDED, 0, 1, &rng);
}
END_TEST

/* Rounding to nearest, ties to even, not truncation: with B = 1, C is
 * bf16(A) (8 significand bits: a step of 2^-7 above 1) */
START_TEST(test_bf16_gemm_rounding)
{
    const float a[4] = {1 + 0x1p-8f,           /* tie, even below: 1  */
                        1 + 0x1p-8f + 0x1p-9f, /* above the tie       */
                        1 + 0x1p-7f + 0x1p-8f, /* tie, even above     */
                        1 + 0x1p-9f};          /* below the tie       */
    const float want[4] = {1, 1 + 0x1p-7f, 1 + 0x1p-6f, 1};
    float b[8], c[4 * 8];
    if (!bf16_here("test_bf16_gemm_rounding"))
        return;
    for (int j = 0; j < 8; j++)
        b[j] = 1;
    ck_assert_int_eq(tgemm_bf16_ep(4, 8, 1, a, 1, 1, b, 8, NULL, c, 8), 1);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(c[i * 8] == want[i] && c[i * 8 + 7] == want[i],
                      "row %d: %.9g, want %.9g", i, (double)c[i * 8],
                      (double)want[i]);
}
END_TEST

/* Rows independent of m, as tgemm.h promises: the first rows of a big
 * call equal a call on those rows alone, bit for bit */
START_TEST(test_bf16_gemm_rows_independent)
{
    enum { M = 40, N = 48, K = 31 };
    float a[M * K], b[K * N], c1[M * N], c2[M * N];
    flow_rng rng;
    if (!bf16_here("test_bf16_gemm_rows_independent"))
        return;
    rng_seed(&rng, 13);
    for (size_t i = 0; i < M * K; i++)
        a[i] = urand(&rng);
    for (size_t i = 0; i < K * N; i++)
        b[i] = urand(&rng);
    ck_assert_int_eq(tgemm_bf16_ep(M, N, K, a, K, 1, b, N, NULL, c1, N), 1);
    ck_assert_int_eq(tgemm_bf16_ep(7, N, K, a + 17 * K, K, 1, b, N, NULL,
                                   c2, N), 1);
    ck_assert_mem_eq(c1 + 17 * N, c2, 7 * N * sizeof *c1);
}
END_TEST

/* Declines: n not a multiple of 8 */
START_TEST(test_bf16_gemm_declines)
{
    float a[4] = {1, 2, 3, 4}, b[12] = {0}, c[12] = {0};
    ck_assert_int_eq(tgemm_bf16_ep(1, 12, 1, a, 1, 1, b, 12, NULL, c, 12),
                     0);
    ck_assert_float_eq(c[0], 0);
}
END_TEST

/* tgemm_mixed_ep with bf16 on, n = 92: the first 88 columns are
 * tgemm_bf16_ep's (bias, ReLU and column sums included), the last 4 the
 * float tiles' (tgemm_ep) with their own bias and column sums */
START_TEST(test_bf16_mixed_tail_columns)
{
    enum { M = 21, N = 92, N8 = 88, K = 40 };
    float a[M * K], b[K * N], bias[N], c1[M * N], c2[M * N8], c3[M * 4];
    float cs1[N] = {0}, cs2[N8] = {0}, cs3[4] = {0};
    tgemm_epi ep = {.bias = bias, .relu = 1, .colsum = cs1};
    flow_rng rng;
    if (!bf16_here("test_bf16_mixed_tail_columns"))
        return;
    rng_seed(&rng, 17);
    for (size_t i = 0; i < M * K; i++)
        a[i] = urand(&rng);
    for (size_t i = 0; i < K * N; i++)
        b[i] = urand(&rng);
    for (size_t j = 0; j < N; j++)
        bias[j] = urand(&rng);
    tgemm_set_bf16(1);
    ck_assert_int_eq(tgemm_mixed_ep(M, N, K, a, K, 1, b, N, &ep, c1, N), 1);
    tgemm_set_bf16(0);
    ep.colsum = cs2;
    ck_assert_int_eq(tgemm_bf16_ep(M, N8, K, a, K, 1, b, N, &ep, c2, N8), 1);
    ep.bias = bias + N8;
    ep.colsum = cs3;
    ck_assert_int_eq(tgemm_ep(M, 4, K, a, K, 1, b + N8, N, &ep, c3, 4), 1);
    for (size_t i = 0; i < M; i++) {
        ck_assert_mem_eq(c1 + i * N, c2 + i * N8, N8 * sizeof *c1);
        ck_assert_mem_eq(c1 + i * N + N8, c3 + i * 4, 4 * sizeof *c1);
    }
    ck_assert_mem_eq(cs1, cs2, N8 * sizeof *cs1);
    ck_assert_mem_eq(cs1 + N8, cs3, 4 * sizeof *cs1);
}
END_TEST

static flow_ctx *ctx;

static void setup(void)
{
    ctx = tu_ctx_with_plugins();
}

static void teardown(void) { flow_ctx_free(ctx); }

static flow_model *build(const char *src, flow_compilation **comp)
{
    return tu_build_model(ctx, "bf16.flow", src, 5, comp);
}

/* An affine-coupling model (MLP conditioners) and a MAF (MADE), their
 * weights moved off the initialisation (zero output layers) by 5
 * gradient steps, 2 threads: log-prob in bf16-gemm within 0.01 nats of
 * fp32 on every row (bf16 keeps 8 significand bits, 2^-9 relative per
 * operand; over sums of 32-48 terms of mixed signs a conditioner output
 * of O(1) moves by ~1e-3, a log-prob by a few of those per layer: 7e-4
 * and 8e-4 measured on these models), different from it (the bf16 path
 * ran), and fp32 again after switching back, bit for bit. */
START_TEST(test_bf16_model_logprob)
{
    static const char *srcs[] = {
        "flow c { input x : real[4]; repeat 4 as i {"
        " coupling(mask = parity(i), hidden = [32, 32],"
        " transformer = affine); } output z ~ normal; }",
        "flow m { input x : real[6]; repeat 2 as i {"
        " maf(hidden = [48, 48], transformer = affine);"
        " permute(order = reverse); } output z ~ normal; }"};
    enum { N = 300 };
#if FLOW_REAL_DOUBLE
    fprintf(stderr, "test_bf16_model_logprob: skipped: float64 build\n");
    (void)srcs;
#else
    if (!bf16_here("test_bf16_model_logprob"))
        return;
    for (size_t s = 0; s < sizeof srcs / sizeof *srcs; s++) {
        flow_compilation *comp;
        flow_model *m = build(srcs[s], &comp);
        size_t d = flow_model_dim(m);
        float *x = malloc(N * d * sizeof *x);
        float lp0[N], lp1[N], lp2[N];
        double maxd = 0;
        flow_rng rng;
        rng_seed(&rng, 14 + s);
        for (size_t i = 0; i < N * d; i++)
            x[i] = 2 * urand(&rng);
        {   /* the output layers start at 0: a few ascent steps first */
            size_t np = flow_model_num_params(m);
            flow_real *p = flow_model_params(m);
            flow_real *g = malloc(np * sizeof *g);
            double mean;
            ck_assert_ptr_nonnull(g);
            for (int step = 0; step < 5; step++) {
                ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &mean,
                                                        g), FLOW_OK);
                for (size_t i = 0; i < np; i++)
                    p[i] += (flow_real)0.05 * g[i];
            }
            free(g);
        }
        ck_assert_int_eq(flow_model_set_threads(m, 2), FLOW_OK);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp0), FLOW_OK);
        ck_assert_int_eq(flow_model_set_precision(m,
                                                  FLOW_PRECISION_BF16_GEMM),
                         FLOW_OK);
        ck_assert_int_eq(flow_model_get_precision(m),
                         FLOW_PRECISION_BF16_GEMM);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp1), FLOW_OK);
        ck_assert_int_eq(flow_model_set_precision(m, FLOW_PRECISION_FP32),
                         FLOW_OK);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp2), FLOW_OK);
        for (size_t i = 0; i < N; i++) {
            double dd = fabs((double)lp1[i] - lp0[i]);
            ck_assert_msg(isfinite(lp1[i]) && dd <= 0.01,
                          "model %zu row %zu: %.7g (bf16) vs %.7g", s, i,
                          (double)lp1[i], (double)lp0[i]);
            maxd = dd > maxd ? dd : maxd;
        }
        ck_assert_msg(maxd > 0, "model %zu: bf16-gemm gave fp32's bits", s);
        ck_assert_mem_eq(lp0, lp2, sizeof lp0);
        free(x);
        flow_model_free(m);
        flow_compile_free(comp);
    }
#endif
}
END_TEST

/* The refusals: float64 build, CPU without AVX512-BF16, unknown value */
START_TEST(test_bf16_model_refused)
{
    flow_compilation *comp;
    flow_model *m = build("flow r { input x : real[2];"
                          " coupling(mask = parity(0), hidden = [8],"
                          " transformer = affine); output z ~ normal; }",
                          &comp);
    int rc = flow_model_set_precision(m, FLOW_PRECISION_BF16_GEMM);
#if FLOW_REAL_DOUBLE
    ck_assert_int_eq(rc, FLOW_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(flow_errmsg(ctx), "bf16-gemm needs the float build"),
                  "%s", flow_errmsg(ctx));
#else
    if (tgemm_bf16_level())
        ck_assert_int_eq(rc, FLOW_OK);
    else {
        ck_assert_int_eq(rc, FLOW_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(flow_errmsg(ctx), "bf16-gemm needs a CPU with "
                                               "AVX512-BF16 (this one has "
                                               "not)"),
                      "%s", flow_errmsg(ctx));
    }
#endif
    ck_assert_int_eq(flow_model_set_precision(m, 7), FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_model_set_precision(m, FLOW_PRECISION_FP32),
                     FLOW_OK);
    ck_assert_int_eq(flow_model_get_precision(m), FLOW_PRECISION_FP32);
    flow_model_free(m);
    flow_compile_free(comp);
}
END_TEST

Suite *suite_bf16(void)
{
    Suite *s = suite_create("bf16");
    TCase *tc = tcase_create("kernel");
    TCase *tm = tcase_create("model");
    tcase_add_test(tc, test_bf16_gemm_shapes);
    tcase_add_test(tc, test_bf16_gemm_epilogue);
    tcase_add_test(tc, test_bf16_gemm_rounding);
    tcase_add_test(tc, test_bf16_gemm_rows_independent);
    tcase_add_test(tc, test_bf16_gemm_declines);
    tcase_add_test(tc, test_bf16_mixed_tail_columns);
    suite_add_tcase(s, tc);
    tcase_add_checked_fixture(tm, setup, teardown);
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, test_bf16_model_logprob);
    tcase_add_test(tm, test_bf16_model_refused);
    suite_add_tcase(s, tm);
    return s;
}
