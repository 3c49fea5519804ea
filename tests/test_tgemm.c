/* test_tgemm.c - the register-tiled float GEMM (runtime/tgemm.c) against
 * a double-precision triple loop: every tile shape (row tails 1-5, 8- and
 * 16-column tiles), A plain and transposed, strides wider than the
 * matrices, the three modes (C = AB, C += AB, C = AB + bias), C never
 * read without acc (NaN-filled), nothing written outside C, and the
 * declines. */
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

/* widths that are not a multiple of 8 are declined with C untouched; on a
 * machine without AVX2 + FMA every call is */
START_TEST(test_tgemm_declines)
{
    float a[4 * 12], b[12 * 12], c[4 * 12], keep[4 * 12];
    for (size_t i = 0; i < 48; i++)
        a[i] = c[i] = keep[i] = (float)i;
    for (size_t i = 0; i < 144; i++)
        b[i] = 1;
    for (size_t n = 1; n <= 12; n++) {
        if (n == 8)
            continue;
        ck_assert_int_eq(tgemm(4, n, 12, a, 12, 1, b, 12, NULL, 0, c, 12),
                         0);
        ck_assert_mem_eq(c, keep, sizeof c);
    }
    if (!tg_on())
        ck_assert_int_eq(tgemm(4, 8, 12, a, 12, 1, b, 12, NULL, 0, c, 12),
                         0);
}
END_TEST

Suite *suite_tgemm(void)
{
    Suite *s = suite_create("tgemm");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_tgemm_shapes);
    tcase_add_test(tc, test_tgemm_rows_independent);
    suite_add_tcase(s, tc);
    tc = tcase_create("declines");
    tcase_add_test(tc, test_tgemm_declines);
    suite_add_tcase(s, tc);
    return s;
}
