/* test_base.c - base distributions: closed forms, normalisation by
 * numeric integration, gradients against central differences, sampling
 * moments. */
#include <math.h>
#include <stdlib.h>

#include "../runtime/base.h"
#include "../runtime/rng.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define FD_H 1e-5
# define GRAD_TOL 1e-7     /* relative to the largest gradient entry */
# define LP_TOL 1e-12
#else
# define FD_H 1e-2
# define GRAD_TOL 2e-3
# define LP_TOL 2e-6
#endif

#define LOG_2PI 1.8378770664093454836

START_TEST(test_closed_forms)
{
    base_dist b;
    flow_real x[6] = {0.3f, -1.2f, 2.0f, -0.7f, 0.0f, 4.5f}, lp[2];
    flow_real pd[6] = {0.5f, -1, 2, 0.1f, -0.3f, 0.7f};   /* mu, log s */
    flow_real pg[7] = {0.4f, 0.5f, -1, 2, 0.1f, -0.3f, 0.7f}; /* K = 1 */
    flow_real lq[2];
    ck_assert_int_eq(base_make(&b, BASE_NORMAL, 3, 0), FLOW_OK);
    ck_assert_int_eq(base_log_prob(&b, NULL, 2, x, lp), FLOW_OK);
    for (int r = 0; r < 2; r++) {
        double s = 0;
        for (int j = 0; j < 3; j++)
            s += x[3 * r + j] * (double)x[3 * r + j];
        ck_assert_double_eq_tol(lp[r], -0.5 * s - 1.5 * LOG_2PI,
                                LP_TOL * 10);
    }
    ck_assert_int_eq(base_make(&b, BASE_DIAG_NORMAL, 3, 0), FLOW_OK);
    ck_assert_int_eq(base_log_prob(&b, pd, 2, x, lp), FLOW_OK);
    for (int r = 0; r < 2; r++) {
        double s = 0;
        for (int j = 0; j < 3; j++) {
            double sd = exp((double)pd[3 + j]);
            s += log(exp(-0.5 * pow((x[3 * r + j] - pd[j]) / sd, 2)) /
                     (sd * sqrt(2 * M_PI)));
        }
        ck_assert_double_eq_tol(lp[r], s, LP_TOL * 10);
    }
    /* a one-component mixture is that diagonal normal */
    ck_assert_int_eq(base_make(&b, BASE_GMM, 3, 1), FLOW_OK);
    ck_assert_int_eq(base_log_prob(&b, pg, 2, x, lq), FLOW_OK);
    ck_assert_double_eq_tol(lq[0], lp[0], LP_TOL * 10);
    ck_assert_double_eq_tol(lq[1], lp[1], LP_TOL * 10);
    ck_assert_int_eq(base_make(&b, BASE_LOGISTIC, 3, 0), FLOW_OK);
    ck_assert_int_eq(base_log_prob(&b, NULL, 2, x, lp), FLOW_OK);
    for (int r = 0; r < 2; r++) {
        double s = 0;
        for (int j = 0; j < 3; j++) {
            double v = x[3 * r + j], e = exp(-v);
            s += log(e / ((1 + e) * (1 + e)));
        }
        ck_assert_double_eq_tol(lp[r], s, LP_TOL * 10);
    }
    /* invalid */
    ck_assert_int_eq(base_make(&b, BASE_GMM, 2, 0), FLOW_ERR_INVAL);
    ck_assert_int_eq(base_make(&b, BASE_NORMAL, 0, 0), FLOW_ERR_INVAL);
    ck_assert_int_eq(base_make(&b, (base_kind)7, 2, 0), FLOW_ERR_INVAL);
}
END_TEST

/* parameters of each kind for the tests below */
static void setup(base_dist *b, int kind, size_t d, flow_real *p,
                  flow_rng *r)
{
    size_t k = kind == BASE_GMM ? 3 : 0;
    ck_assert_int_eq(base_make(b, (base_kind)kind, d, k), FLOW_OK);
    base_init(b, p, r);
    for (size_t i = 0; i < base_params(b); i++)
        p[i] = (flow_real)(p[i] + 0.4 * rng_normal1(r));
}

/* 1-D densities integrate to 1 (trapezoid on [-40, 40], error far below
 * the tolerance for these smooth tails) */
START_TEST(test_normalised_1d)
{
    enum { G = 80001 };
    int kind = BASE_NORMAL + _i;
    base_dist b;
    flow_real p[16], x, lp;
    double s = 0, h = 80.0 / (G - 1);
    flow_rng r;
    rng_seed(&r, 5);
    setup(&b, kind, 1, p, &r);
    for (int i = 0; i < G; i++) {
        x = (flow_real)(-40 + h * i);
        ck_assert_int_eq(base_log_prob(&b, p, 1, &x, &lp), FLOW_OK);
        s += (i == 0 || i == G - 1 ? 0.5 : 1) * exp((double)lp);
    }
    ck_assert_double_eq_tol(s * h, 1.0, 1e-5);
}
END_TEST

START_TEST(test_gmm_normalised_2d)
{
    enum { G = 401 };
    base_dist b;
    flow_real p[16], x[2], lp;
    double s = 0, h = 24.0 / (G - 1);
    flow_rng r;
    rng_seed(&r, 6);
    setup(&b, BASE_GMM, 2, p, &r);
    for (int i = 0; i < G; i++)
        for (int j = 0; j < G; j++) {
            x[0] = (flow_real)(-12 + h * i);
            x[1] = (flow_real)(-12 + h * j);
            base_log_prob(&b, p, 1, x, &lp);
            s += (i == 0 || i == G - 1 ? 0.5 : 1) *
                 (j == 0 || j == G - 1 ? 0.5 : 1) * exp((double)lp);
        }
    ck_assert_double_eq_tol(s * h * h, 1.0, 1e-4);
}
END_TEST

/* sum_r w_r log p(x_r) in double */
static double objective(const base_dist *b, const flow_real *p, size_t n,
                        const flow_real *x, const flow_real *w)
{
    flow_real lp[8];
    double s = 0;
    base_log_prob(b, p, n, x, lp);
    for (size_t r = 0; r < n; r++)
        s += (double)w[r] * lp[r];
    return s;
}

static double fd_entry(const base_dist *b, flow_real *p, size_t n,
                       flow_real *x, const flow_real *w, flow_real *v)
{
    flow_real old = *v;
    double f[2], step[2];
    for (int s = 0; s < 2; s++) {
        *v = (flow_real)(old + (s ? -FD_H : FD_H));
        step[s] = (double)*v - old;        /* the step actually taken */
        f[s] = objective(b, p, n, x, w);
    }
    *v = old;
    return (f[0] - f[1]) / (step[0] - step[1]);
}

START_TEST(test_gradients_fd)
{
    enum { N = 4, D = 2 };
    int kind = BASE_NORMAL + _i;
    base_dist b;
    flow_real p[32], x[N * D], w[N], dx[N * D], dp[32] = {0};
    double mx = 0;
    flow_rng r;
    rng_seed(&r, 7 + (uint64_t)_i);
    setup(&b, kind, D, p, &r);
    rng_normal(&r, x, N * D);
    rng_normal(&r, w, N);
    ck_assert_int_eq(base_grad(&b, p, N, x, w, dx, dp), FLOW_OK);
    for (size_t i = 0; i < N * D; i++)
        mx = fmax(mx, fabs(dx[i]));
    for (size_t i = 0; i < base_params(&b); i++)
        mx = fmax(mx, fabs(dp[i]));
    for (size_t i = 0; i < N * D; i++) {
        double fd = fd_entry(&b, p, N, x, w, &x[i]);
        ck_assert_msg(fabs(fd - dx[i]) <= GRAD_TOL * mx,
                      "kind %d dx[%zu] %g vs fd %g", kind, i, (double)dx[i],
                      fd);
    }
    for (size_t i = 0; i < base_params(&b); i++) {
        double fd = fd_entry(&b, p, N, x, w, &p[i]);
        ck_assert_msg(fabs(fd - dp[i]) <= GRAD_TOL * mx,
                      "kind %d dparam[%zu] %g vs fd %g", kind, i,
                      (double)dp[i], fd);
    }
    /* accumulation: a second call adds the same again */
    {
        flow_real dp2[32];
        for (size_t i = 0; i < base_params(&b); i++)
            dp2[i] = dp[i];
        base_grad(&b, p, N, x, w, NULL, dp2);
        for (size_t i = 0; i < base_params(&b); i++)
            ck_assert_double_eq_tol(dp2[i], 2 * dp[i], 1e-5 * (1 + mx));
    }
}
END_TEST

START_TEST(test_sampling_moments)
{
    enum { N = 100000, D = 2 };
    static flow_real x[N * D], lp[N], lq[N];
    base_dist b;
    flow_real pd[4] = {1.0f, -2.0f, (flow_real)log(0.5), (flow_real)log(2.0)};
    /* GMM, K = 2, D = 2: weights 0.25 / 0.75, means (-3, 0) / (1, 2),
     * unit and 0.5 scales */
    flow_real pg[2 + 4 + 4] = {0, (flow_real)log(3.0), -3, 0, 1, 2,
                               0, 0, (flow_real)log(0.5), (flow_real)log(0.5)};
    double m[D] = {0}, v[D] = {0};
    double mu_g[D] = {0.25 * -3 + 0.75 * 1, 0.25 * 0 + 0.75 * 2};
    double var_g[D] = {0.25 * (1 + 9) + 0.75 * (0.25 + 1) - mu_g[0] * mu_g[0],
                       0.25 * (1 + 0) + 0.75 * (0.25 + 4) - mu_g[1] * mu_g[1]};
    double sd[D] = {0.5, 2.0}, mean[D] = {1, -2};
    flow_rng r;
    rng_seed(&r, 8);
    ck_assert_int_eq(base_make(&b, BASE_DIAG_NORMAL, D, 0), FLOW_OK);
    ck_assert_int_eq(base_sample(&b, pd, N, 1.0, &r, x, lp), FLOW_OK);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++)
            m[j] += x[i * D + j] / (double)N;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++)
            v[j] += pow(x[i * D + j] - m[j], 2) / (double)N;
    for (int j = 0; j < D; j++) {
        /* 5 standard errors: mean sd/sqrt(N), variance sd^2 sqrt(2/N) */
        ck_assert_double_eq_tol(m[j], mean[j], 5 * sd[j] / sqrt(N));
        ck_assert_double_eq_tol(v[j], sd[j] * sd[j],
                                5 * sd[j] * sd[j] * sqrt(2.0 / N));
    }
    /* returned log-densities are those of the samples */
    base_log_prob(&b, pd, N, x, lq);
    for (int i = 0; i < N; i += 997)
        ck_assert_double_eq_tol(lp[i], lq[i], LP_TOL * 10);

    ck_assert_int_eq(base_make(&b, BASE_GMM, D, 2), FLOW_OK);
    ck_assert_int_eq(base_sample(&b, pg, N, 1.0, &r, x, NULL), FLOW_OK);
    for (int j = 0; j < D; j++) {
        m[j] = v[j] = 0;
        for (int i = 0; i < N; i++)
            m[j] += x[i * D + j] / (double)N;
        for (int i = 0; i < N; i++)
            v[j] += pow(x[i * D + j] - m[j], 2) / (double)N;
        ck_assert_double_eq_tol(m[j], mu_g[j], 5 * sqrt(var_g[j] / N));
        /* generous: the mixture's fourth moment is larger than normal */
        ck_assert_double_eq_tol(v[j], var_g[j], 10 * var_g[j] * sqrt(2.0 / N));
    }

    ck_assert_int_eq(base_make(&b, BASE_LOGISTIC, 1, 0), FLOW_OK);
    ck_assert_int_eq(base_sample(&b, NULL, N, 1.0, &r, x, NULL), FLOW_OK);
    m[0] = v[0] = 0;
    for (int i = 0; i < N; i++)
        m[0] += x[i] / (double)N;
    for (int i = 0; i < N; i++)
        v[0] += pow(x[i] - m[0], 2) / (double)N;
    /* variance pi^2/3; its SE is sigma^2 sqrt((kurtosis - 1) / N), excess
     * kurtosis 1.2 */
    ck_assert_double_eq_tol(m[0], 0, 5 * sqrt(M_PI * M_PI / 3 / N));
    ck_assert_double_eq_tol(v[0], M_PI * M_PI / 3,
                            5 * M_PI * M_PI / 3 * sqrt(3.2 / N));
}
END_TEST

Suite *suite_base(void)
{
    Suite *s = suite_create("base");
    TCase *tc = tcase_create("densities");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_closed_forms);
    tcase_add_loop_test(tc, test_normalised_1d, 0, 4);
    tcase_add_test(tc, test_gmm_normalised_2d);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_gradients_fd, 0, 4);
    suite_add_tcase(s, tc);
    tc = tcase_create("sampling");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sampling_moments);
    suite_add_tcase(s, tc);
    return s;
}
