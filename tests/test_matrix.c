/* test_matrix.c - the shape-checked GEMM against a naive product and on
 * bad shapes, OpenBLAS threading, and the LAPACK helpers. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../runtime/matrix.h"
#include "../runtime/rng.h"
#include "flow/flow.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define MAT_TOL 1e-12
#else
# define MAT_TOL 2e-5
#endif

static void fill(flow_rng *r, flow_real *v, size_t n) { rng_normal(r, v, n); }

START_TEST(test_gemm_all_transposes)
{
    enum { M = 7, N = 5, K = 6 };
    flow_real a[M * K], b[K * N], c[M * N], c0[M * N];
    flow_rng r;
    rng_seed(&r, 3);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            fill(&r, a, M * K);
            fill(&r, b, K * N);
            fill(&r, c0, M * N);
            for (int i = 0; i < M * N; i++)
                c[i] = c0[i];
            /* op(A) m x k stored with lda = stored columns */
            ck_assert_int_eq(blas_gemm(ta, tb, M, N, K, 0.5f, a, ta ? M : K,
                                       b, tb ? K : N, 2.0f, c, N), FLOW_OK);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? a[k * M + i] : a[i * K + k]) *
                             (tb ? b[j * K + k] : b[k * N + j]);
                    ck_assert_double_eq_tol(c[i * N + j],
                                            0.5 * s + 2.0 * c0[i * N + j],
                                            MAT_TOL * 20);
                }
        }
}
END_TEST

START_TEST(test_gemm_shapes)
{
    /* A 3 x 4, B 4 x 2, C 3 x 2, row-major and dense */
    flow_real a[12] = {0}, b[8] = {0}, c[6] = {0};
    a[0 * 4 + 0] = 1;
    a[2 * 4 + 3] = 2;
    b[0 * 2 + 1] = 3;
    b[3 * 2 + 0] = 5;
    ck_assert_int_eq(blas_gemm(0, 0, 3, 2, 4, 1, a, 4, b, 2, 0, c, 2),
                     FLOW_OK);
    ck_assert_double_eq_tol(c[0 * 2 + 1], 3, MAT_TOL);
    ck_assert_double_eq_tol(c[2 * 2 + 0], 10, MAT_TOL);
    /* leading dimensions below the stored widths (A: k, B: n, C: n;
     * transposed A is stored k x m, transposed B n x k) and a dimension
     * beyond the BLAS integer: refused, C untouched */
    ck_assert_int_eq(blas_gemm(0, 0, 3, 2, 4, 1, a, 3, b, 2, 0, c, 2),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(blas_gemm(0, 0, 3, 2, 4, 1, a, 4, b, 1, 0, c, 2),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(blas_gemm(0, 0, 3, 2, 4, 1, a, 4, b, 2, 0, c, 1),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(blas_gemm(1, 0, 3, 2, 4, 1, a, 2, b, 2, 0, c, 2),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(blas_gemm(0, 1, 3, 2, 4, 1, a, 4, b, 2, 0, c, 2),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(blas_gemm(0, 0, (size_t)INT32_MAX + 1, 2, 4, 1, a, 4,
                               b, 2, 0, c, 2), FLOW_ERR_INVAL);
    ck_assert_double_eq_tol(c[2 * 2 + 0], 10, MAT_TOL);
    /* the host entry (void) refuses the same call and leaves C alone */
    flow_host_services()->gemm(0, 0, 3, 2, 4, 1, a, 3, b, 2, 0, c, 2);
    ck_assert_double_eq_tol(c[2 * 2 + 0], 10, MAT_TOL);
    flow_host_services()->gemm(0, 0, 3, 2, 4, 2, a, 4, b, 2, 0, c, 2);
    ck_assert_double_eq_tol(c[2 * 2 + 0], 20, MAT_TOL);
}
END_TEST

START_TEST(test_single_threaded)
{
    ck_assert_int_eq(blas_threads(), 1);
}
END_TEST

START_TEST(test_slogdet_and_inverse)
{
    /* det [[0 2 0] [1 0 0] [0 0 -3]] = 6 (one swap, negative pivot) */
    flow_real a[9] = {0, 2, 0, 1, 0, 0, 0, 0, -3};
    flow_real s[9] = {1, 2, 3, 2, 4, 6, 0, 1, 1};   /* singular */
    flow_real m[9] = {4, 1, 0, 1, 3, 1, 0, 1, 2}, mi[9];
    const flow_host *h = flow_host_services();
    double la;
    int sign;
    ck_assert_int_eq(h->slogdet(3, a, &la, &sign), FLOW_OK);
    ck_assert_int_eq(sign, 1);
    ck_assert_double_eq_tol(la, log(6.0), 1e-6);
    ck_assert_int_eq(h->slogdet(3, s, &la, &sign), FLOW_OK);
    ck_assert_int_eq(sign, 0);
    ck_assert_double_infinite(la);
    ck_assert_double_lt(la, 0);
    for (int i = 0; i < 9; i++)
        mi[i] = m[i];
    ck_assert_int_eq(h->matinv(3, mi), FLOW_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double p = 0;
            for (int k = 0; k < 3; k++)
                p += (double)m[i * 3 + k] * mi[k * 3 + j];
            ck_assert_double_eq_tol(p, i == j, 1e-5);
        }
    for (int i = 0; i < 9; i++)
        s[i] = (flow_real)(i % 3 + 1) * (i < 3 ? 1 : 2);
    ck_assert_int_eq(h->matinv(3, s), FLOW_ERR_NUMERIC);
    ck_assert_int_eq(h->matinv(0, s), FLOW_ERR_INVAL);
}
END_TEST

START_TEST(test_top_singular)
{
    /* 3 x 4 with singular values 5, 3, 1: sigma 5, a v = 5 u at e_2 */
    flow_real a[12] = {3, 0, 0, 0, 0, -5, 0, 0, 0, 0, 1, 0}, z[12] = {0};
    double sigma, u[3], v[4];
    void *scr = malloc(la_top_singular_scratch(3, 4));
    ck_assert_ptr_nonnull(scr);
    ck_assert_int_eq(la_top_singular(3, 4, a, &sigma, u, v, scr), FLOW_OK);
    ck_assert_double_eq_tol(sigma, 5, 1e-6);
    ck_assert_double_eq_tol(fabs(u[1]), 1, 1e-6);
    ck_assert_double_eq_tol(u[1] * v[1], -1, 1e-6);   /* a_22 = -5 */
    /* the transposed shape goes through the other Gram matrix */
    {
        flow_real at[12];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++)
                at[j * 3 + i] = a[i * 4 + j];
        ck_assert_int_eq(la_top_singular(4, 3, at, &sigma, v, u, scr),
                         FLOW_OK);
        ck_assert_double_eq_tol(sigma, 5, 1e-6);
        ck_assert_double_eq_tol(u[1] * v[1], -1, 1e-6);
    }
    ck_assert_int_eq(la_top_singular(3, 4, z, &sigma, u, v, scr), FLOW_OK);
    ck_assert_double_eq(sigma, 0);
    ck_assert_int_eq(la_top_singular(0, 4, z, &sigma, u, v, scr),
                     FLOW_ERR_INVAL);
    free(scr);
}
END_TEST

Suite *suite_matrix(void)
{
    Suite *s = suite_create("matrix");
    TCase *tc = tcase_create("linalg");
    tcase_add_test(tc, test_gemm_all_transposes);
    tcase_add_test(tc, test_gemm_shapes);
    tcase_add_test(tc, test_single_threaded);
    tcase_add_test(tc, test_slogdet_and_inverse);
    tcase_add_test(tc, test_top_singular);
    suite_add_tcase(s, tc);
    return s;
}
