/* test_matrix.c - matrix views, the shape-checked GEMM against a naive
 * product, OpenBLAS threading, and the LAPACK helpers (slogdet, inverse). */
#include <math.h>
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
    mat *a = mat_alloc(3, 4), *b = mat_alloc(4, 2), *c = mat_alloc(3, 2);
    mat bad;
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(c);
    mat_set(a, 0, 0, 1);
    mat_set(a, 2, 3, 2);
    mat_set(b, 0, 1, 3);
    mat_set(b, 3, 0, 5);
    ck_assert_int_eq(mat_gemm(0, 0, 1, a, b, 0, c), FLOW_OK);
    ck_assert_double_eq_tol(mat_get(c, 0, 1), 3, MAT_TOL);
    ck_assert_double_eq_tol(mat_get(c, 2, 0), 10, MAT_TOL);
    /* mismatched inner dimension and output shape: refused, C untouched */
    ck_assert_int_eq(mat_gemm(1, 0, 1, a, b, 0, c), FLOW_ERR_INVAL);
    ck_assert_int_eq(mat_gemm(0, 1, 1, a, b, 0, c), FLOW_ERR_INVAL);
    ck_assert_double_eq_tol(mat_get(c, 2, 0), 10, MAT_TOL);
    /* a view of a sub-block with the parent's stride */
    bad = mat_submatrix(a, 1, 1, 2, 3);
    ck_assert_uint_eq(bad.stride, 4);
    ck_assert_double_eq_tol(mat_get(&bad, 1, 2), 2, 1e-12);
    /* leading dimension smaller than the stored width */
    ck_assert_int_eq(blas_gemm(0, 0, 3, 2, 4, 1, a->data, 3, b->data, 2, 0,
                               c->data, 2), FLOW_ERR_INVAL);
    /* the host entry (void) refuses the same call and leaves C alone */
    flow_host_services()->gemm(0, 0, 3, 2, 4, 1, a->data, 3, b->data, 2, 0,
                               c->data, 2);
    ck_assert_double_eq_tol(mat_get(c, 2, 0), 10, MAT_TOL);
    flow_host_services()->gemm(0, 0, 3, 2, 4, 2, a->data, 4, b->data, 2, 0,
                               c->data, 2);
    ck_assert_double_eq_tol(mat_get(c, 2, 0), 20, MAT_TOL);
    mat_free(a);
    mat_free(b);
    mat_free(c);
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
