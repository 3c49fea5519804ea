/* test_datasets.c - the built-in data sets: statistics each definition
 * implies, densities that integrate to 1, determinism per seed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/data.h"
#include "../runtime/datasets.h"
#include "suites.h"

#define PI 3.14159265358979323846

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
}

static void teardown(void) { flow_ctx_free(ctx); }

static flow_data *gen(const char *name, size_t n, uint64_t seed,
                      flow_real **logp)
{
    datasets_params p;
    flow_data *d = NULL;
    memset(&p, 0, sizeof p);
    p.name = name;
    p.n = n;
    p.seed = seed;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, logp), FLOW_OK);
    ck_assert_uint_eq(d->n, n);
    ck_assert_uint_eq(d->d, 2);
    for (size_t i = 0; i < 2 * n; i++)
        ck_assert_msg(isfinite(d->x[i]), "x[%zu] = %g", i, (double)d->x[i]);
    return d;
}

START_TEST(test_8gaussians)
{
    /* 8 clusters at radius 4 / 1.414 with std s = 0.5 / 1.414 */
    enum { N = 400000 };
    flow_real *lp;
    flow_data *d = gen("8gaussians", N, 5, &lp);
    const double R = 4 / 1.414, s = 0.5 / 1.414;
    size_t count[8] = {0};
    double cx[8] = {0}, cy[8] = {0}, mlp = 0, entropy;
    for (size_t i = 0; i < N; i++) {
        double x = d->x[2 * i], y = d->x[2 * i + 1];
        /* nearest centre by angle: 8 sectors around pi k / 4 */
        int k = ((int)lround(atan2(y, x) / (PI / 4)) + 8) % 8;
        count[k]++;
        cx[k] += x;
        cy[k] += y;
        mlp += lp[i];
    }
    for (int k = 0; k < 8; k++) {
        /* share 1/8, sd sqrt(p(1-p)/N) = 0.0005 */
        ck_assert_double_eq_tol((double)count[k] / N, 0.125, 0.003);
        /* centre of the cluster: sd s / sqrt(N / 8) = 0.0016 */
        ck_assert_double_eq_tol(cx[k] / count[k], R * cos(PI / 4 * k), 0.01);
        ck_assert_double_eq_tol(cy[k] / count[k], R * sin(PI / 4 * k), 0.01);
    }
    /* E[log p] = -log 8 - H(N(0, s^2 I_2)) + overlap, H = log(2 pi e s^2).
     * The overlap term: a point of component k has log p = log(N_k / 8) +
     * log(1 + sum_j N_j / N_k); for the two neighbours (distance
     * a s, a = 2 R sin(pi / 8) / s = 6.12) N_j / N_k = exp(a z - a^2 / 2)
     * with z ~ N(0, 1), so each adds E[log(1 + exp(a z - a^2 / 2))]
     * (about 0.003); farther centres (11.3 s) add < 1e-7. */
    entropy = log(2 * PI * exp(1.0) * s * s);
    {
        double a = 2 * R * sin(PI / 8) / s, h = 1e-3, overlap = 0;
        for (double z = -12; z < 12; z += h) {
            double zm = z + h / 2;
            overlap += h * exp(-zm * zm / 2) / sqrt(2 * PI)
                       * log1p(exp(a * zm - a * a / 2));
        }
        /* sd of log p is about 1 */
        ck_assert_double_eq_tol(mlp / N,
                                -log(8.0) - entropy + 2 * overlap,
                                5.0 / sqrt(N));
        /* and the correction is resolved at this N */
        ck_assert_double_gt(2 * overlap, 2.5 / sqrt(N));
    }
    free(lp);
    data_free(d);
}
END_TEST

START_TEST(test_8gaussians_labels)
{
    datasets_params p;
    flow_data *d;
    memset(&p, 0, sizeof p);
    p.name = "8gaussians";
    p.n = 2000;
    p.seed = 9;
    p.labels = 1;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL), FLOW_OK);
    ck_assert_uint_eq(d->c, 8);
    ck_assert_str_eq(d->names[2], "label0");
    for (size_t i = 0; i < p.n; i++) {
        /* exactly one hot, and it names the centre the point is near:
         * centres in the order E, W, N, S, NE, SE, NW, SW */
        static const double ang[8] = {0, 4, 2, 6, 1, 7, 3, 5};
        double sum = 0, x = d->x[2 * i], y = d->x[2 * i + 1];
        int k = -1;
        for (int j = 0; j < 8; j++) {
            sum += d->ctx[i * 8 + j];
            if (d->ctx[i * 8 + j] == 1)
                k = j;
        }
        ck_assert_msg(sum == 1 && k >= 0, "row %zu: one-hot sum %g, hot %d",
                      i, sum, k);
        ck_assert_double_eq_tol(x, 4 / 1.414 * cos(PI / 4 * ang[k]), 2.0);
        ck_assert_double_eq_tol(y, 4 / 1.414 * sin(PI / 4 * ang[k]), 2.0);
    }
    data_free(d);
}
END_TEST

START_TEST(test_checkerboard)
{
    enum { N = 40000 };
    flow_real *lp;
    flow_data *d = gen("checkerboard", N, 2, &lp);
    size_t cells[4][4] = {{0}};
    for (size_t i = 0; i < N; i++) {
        double x = d->x[2 * i], y = d->x[2 * i + 1];
        int a = (int)floor(x / 2), b = (int)floor(y / 2);
        ck_assert_msg(x >= -4 && x < 4 && y >= -4 && y < 4,
                      "row %zu: (%g, %g) outside [-4, 4)^2", i, x, y);
        /* black squares: a + b even */
        ck_assert_msg(((a + b) % 2 + 2) % 2 == 0, "(%g, %g) on white", x, y);
        cells[a + 2][b + 2]++;
        ck_assert_double_eq_tol(lp[i], -log(32.0), TEST_EPS);
    }
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            if ((a + b) % 2 == 0)     /* 1/8 each, sd 0.0017 */
                ck_assert_double_eq_tol((double)cells[a][b] / N, 0.125,
                                        0.01);
    free(lp);
    data_free(d);
}
END_TEST

/* Integral of exp(log p) over [-L, L]^2 by the midpoint rule. */
static double integrate(const datasets_params *p, double L, size_t m)
{
    double h = 2 * L / (double)m, sum = 0;
    flow_real *x = malloc(2 * m * sizeof *x);
    double *lp = malloc(m * sizeof *lp);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(lp);
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < m; j++) {
            x[2 * j] = (flow_real)(-L + h * ((double)i + 0.5));
            x[2 * j + 1] = (flow_real)(-L + h * ((double)j + 0.5));
        }
        ck_assert_int_eq(datasets_logprob(ctx, p, x, m, lp), FLOW_OK);
        for (size_t j = 0; j < m; j++)
            sum += exp(lp[j]);
    }
    free(x);
    free(lp);
    return sum * h * h;
}

START_TEST(test_densities_integrate_to_one)
{
    datasets_params p;
    memset(&p, 0, sizeof p);
    p.name = "8gaussians";
    ck_assert_double_eq_tol(integrate(&p, 5, 500), 1.0, 1e-3);
    p.name = "checkerboard";
    ck_assert_double_eq_tol(integrate(&p, 5, 500), 1.0, 1e-3);
    p.name = "gmm";
    p.means_seed = 3;
    ck_assert_double_eq_tol(integrate(&p, 7, 700), 1.0, 1e-3);
    /* the integral is not trivially 1: [-2, 2]^2 holds 2 of the 8 black
     * squares */
    p.name = "checkerboard";
    ck_assert_double_eq_tol(integrate(&p, 2, 400), 0.25, 1e-3);
}
END_TEST

START_TEST(test_gmm)
{
    enum { N = 20000 };
    datasets_params p;
    flow_data *d;
    flow_real *lp;
    double mean[5] = {0}, mlp = 0;
    memset(&p, 0, sizeof p);
    p.name = "gmm";
    p.n = N;
    p.dim = 5;
    p.components = 1;       /* one component: N(mu, 0.25 I) */
    p.means_seed = 4;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, &lp), FLOW_OK);
    ck_assert_uint_eq(d->d, 5);
    for (size_t i = 0; i < N; i++) {
        for (int j = 0; j < 5; j++)
            mean[j] += d->x[i * 5 + j];
        mlp += lp[i];
    }
    for (int j = 0; j < 5; j++) {
        mean[j] /= N;
        ck_assert_msg(mean[j] > -4 && mean[j] < 4, "mean[%d] = %g", j,
                      mean[j]);
    }
    /* E[log p] = -H = -(D/2) log(2 pi e s^2); sd of log p sqrt(D/2) */
    ck_assert_double_eq_tol(mlp / N, -2.5 * log(2 * PI * exp(1.0) * 0.25),
                            5 * sqrt(2.5 / N));
    free(lp);
    data_free(d);
    /* the means depend on means_seed only, not on the sample seed */
    p.n = 1;
    p.components = 3;
    {
        flow_real x[5] = {0};
        double a, b, c;
        ck_assert_int_eq(datasets_logprob(ctx, &p, x, 1, &a), FLOW_OK);
        p.seed = 77;
        ck_assert_int_eq(datasets_logprob(ctx, &p, x, 1, &b), FLOW_OK);
        p.means_seed = 5;
        ck_assert_int_eq(datasets_logprob(ctx, &p, x, 1, &c), FLOW_OK);
        ck_assert_double_eq(a, b);
        ck_assert_double_ne(a, c);
    }
}
END_TEST

/* Mean of the rows and mean distance from the origin. */
static void moments(const flow_data *d, double *mx, double *my, double *mr)
{
    *mx = *my = *mr = 0;
    for (size_t i = 0; i < d->n; i++) {
        *mx += d->x[2 * i];
        *my += d->x[2 * i + 1];
        *mr += hypot(d->x[2 * i], d->x[2 * i + 1]);
    }
    *mx /= (double)d->n;
    *my /= (double)d->n;
    *mr /= (double)d->n;
}

START_TEST(test_shapes)
{
    enum { N = 40000 };
    double mx, my, mr;
    flow_data *d;
    /* moons: E = 2 (1/2, 1/4) + (-1, -0.2) = (0, 0.3), from E[cos t] = 0
     * and E[sin t] = 2/pi on (0, pi) */
    d = gen("moons", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mx, 0.0, 0.03);
    ck_assert_double_eq_tol(my, 0.3, 0.03);
    data_free(d);
    /* circles: radii 3 and 1.5 half each: mean radius 2.25 (+ the small
     * bias of the noise, 3 * 0.08^2 / (2 r) < 0.01) */
    d = gen("circles", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mx, 0.0, 0.05);
    ck_assert_double_eq_tol(mr, 2.25, 0.03);
    data_free(d);
    /* rings: mean radius 3 * (1.2 + 0.9 + 0.55 + 0.25) / 4 = 2.175 */
    d = gen("rings", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mr, 2.175, 0.03);
    data_free(d);
    /* pinwheel and 2spirals are symmetric about the origin */
    d = gen("pinwheel", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mx, 0.0, 0.05);
    ck_assert_double_eq_tol(my, 0.0, 0.05);
    data_free(d);
    d = gen("2spirals", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mx, 0.0, 0.05);
    ck_assert_double_eq_tol(my, 0.0, 0.05);
    data_free(d);
    /* swissroll: radius t / 5 with t uniform in [1.5 pi, 4.5 pi]: mean
     * 3 pi / 5 = 1.885 (noise adds ~ 1 / (5^2 2 r) < 0.01) */
    d = gen("swissroll", N, 1, NULL);
    moments(d, &mx, &my, &mr);
    ck_assert_double_eq_tol(mr, 3 * PI / 5, 0.03);
    data_free(d);
}
END_TEST

START_TEST(test_determinism)
{
    const char *const *n = datasets_names();
    for (; *n; n++) {
        flow_data *a, *b, *c;
        datasets_params p;
        memset(&p, 0, sizeof p);
        p.name = *n;
        p.n = 300;
        p.seed = 123;
        ck_assert_int_eq(datasets_generate(ctx, &p, &a, NULL), FLOW_OK);
        ck_assert_int_eq(datasets_generate(ctx, &p, &b, NULL), FLOW_OK);
        p.seed = 124;
        ck_assert_int_eq(datasets_generate(ctx, &p, &c, NULL), FLOW_OK);
        ck_assert_int_eq(memcmp(a->x, b->x, 600 * sizeof(flow_real)), 0);
        ck_assert_int_ne(memcmp(a->x, c->x, 600 * sizeof(flow_real)), 0);
        data_free(a);
        data_free(b);
        data_free(c);
    }
}
END_TEST

START_TEST(test_errors)
{
    datasets_params p;
    flow_data *d = (flow_data *)1;
    flow_real *lp;
    memset(&p, 0, sizeof p);
    p.name = "moons";
    p.n = 10;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, &lp),
                     FLOW_ERR_UNSUPPORTED);
    ck_assert_ptr_null(d);
    ck_assert_str_eq(flow_errmsg(ctx), "data set 'moons' has no known "
                     "density (only 8gaussians, checkerboard and gmm have "
                     "one)");
    p.labels = 1;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL),
                     FLOW_ERR_UNSUPPORTED);
    ck_assert_str_eq(flow_errmsg(ctx), "labels are only defined for "
                     "8gaussians, not 'moons'");
    p.labels = 0;
    p.dim = 3;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "dimension and components apply to "
                     "gmm only, not 'moons'");
    p.name = "moon";
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "unknown data set 'moon' (known: "
                     "moons, circles, 8gaussians, checkerboard, pinwheel, "
                     "2spirals, rings, swissroll, gmm, shapes)");
    p.name = NULL;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "no data set name given");
    p.name = "gmm";
    p.n = 0;
    ck_assert_int_eq(datasets_generate(ctx, &p, &d, NULL), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "gmm: the number of samples must be "
                     "in 1..100000000");
}
END_TEST

START_TEST(test_public_generate)
{
    flow_dataset_params p;
    flow_data *d;
    memset(&p, 0, sizeof p);
    p.name = "8gaussians";
    p.n = 100;
    p.labels = 1;
    p.with_logprob = 1;
    ck_assert_int_eq(flow_data_generate(ctx, &p, &d), FLOW_OK);
    ck_assert_uint_eq(flow_data_dim(d), 2);
    ck_assert_uint_eq(flow_data_context_dim(d), 9);
    ck_assert_str_eq(flow_data_column_name(d, 10), "logprob");
    ck_assert_double_lt(flow_data_context(d)[8], 0);
    flow_data_free(d);
}
END_TEST

Suite *suite_datasets(void)
{
    Suite *s = suite_create("datasets");
    TCase *tc = tcase_create("samples");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_8gaussians);
    tcase_add_test(tc, test_8gaussians_labels);
    tcase_add_test(tc, test_checkerboard);
    tcase_add_test(tc, test_gmm);
    tcase_add_test(tc, test_shapes);
    suite_add_tcase(s, tc);
    tc = tcase_create("densities");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_densities_integrate_to_one);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_public_generate);
    suite_add_tcase(s, tc);
    return s;
}
