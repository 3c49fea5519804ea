/* test_model.c - models built by calls and run in both directions: round
 * trips, exits, log-densities against hand computation and normalisation,
 * gradients against finite differences, data-dependent init, errors. */
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/ctx.h"
#include "flow/flow.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

static void add_actnorm(flow_model *m)
{
    flow_attr_value eps;
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    eps.r = 1e-6;
    ck_assert_msg(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 0, 0, 0)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
}

static void add_reverse(flow_model *m)
{
    flow_attr_value order;
    memset(&order, 0, sizeof order);
    order.type = FLOW_ATTR_VARIANT;
    order.i = 0;
    order.s = "reverse";
    ck_assert_msg(flow_model_add_layer(m, "permute", NULL, &order, 1, 0, 0, 0)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
}

/* Random parameters in [-0.5, 0.5]. */
static void randomise(flow_model *m, unsigned seed)
{
    flow_real *p = flow_model_params(m);
    srand(seed);
    for (size_t i = 0; i < flow_model_num_params(m); i++)
        p[i] = (flow_real)((double)rand() / RAND_MAX - 0.5);
}

static flow_model *two_exit_model(void)
{
    flow_model *m = flow_model_new(ctx, 4, 0);
    ck_assert_ptr_nonnull(m);
    add_actnorm(m);
    add_reverse(m);
    ck_assert_int_eq(flow_model_add_exit(m, 1, "z1", FLOW_BASE_NORMAL, NULL,
                                         0), FLOW_OK);
    add_actnorm(m);
    add_reverse(m);
    ck_assert_int_eq(flow_model_set_base(m, FLOW_BASE_LOGISTIC, NULL, 0),
                     FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    return m;
}

START_TEST(test_round_trip_with_exit)
{
    enum { N = 5, D = 4 };
    flow_model *m = two_exit_model();
    flow_real x[N * D], z[N * D], back[N * D], ldf[N], ldi[N];
    ck_assert_uint_eq(flow_model_num_params(m), 2 * 4 + 2 * 3);
    randomise(m, 3);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)sin(1.3 * i);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, ldf), FLOW_OK);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, ldi), FLOW_OK);
    for (int i = 0; i < N * D; i++)
        ck_assert_double_eq_tol(back[i], x[i], 10 * TEST_EPS);
    for (int r = 0; r < N; r++)
        ck_assert_double_eq_tol(ldf[r] + ldi[r], 0.0, 10 * TEST_EPS);
    flow_model_free(m);
}
END_TEST

/* Exit layout and log p by hand: x -> actnorm(s1, t1) -> reverse -> exit 1
 * (normal) -> actnorm(s2, t2) -> reverse -> logistic base. */
START_TEST(test_log_prob_by_hand)
{
    enum { D = 4 };
    flow_model *m = two_exit_model();
    flow_real *p = flow_model_params(m);
    flow_real x[D] = {0.3f, -1.2f, 2.0f, 0.7f}, z[D], lp;
    double h[D], u[3], ld = 0, want;
    randomise(m, 5);
    for (int i = 0; i < D; i++) {
        h[i] = x[i] * exp(p[i]) + p[D + i];
        ld += p[i];
    }
    /* reverse: state = h3 h2 h1 h0; exit takes h3 */
    for (int i = 0; i < 3; i++) {
        double v = h[2 - i];
        u[i] = v * exp(p[2 * D + i]) + p[2 * D + 3 + i];
        ld += p[2 * D + i];
    }
    ck_assert_int_eq(flow_model_forward(m, 1, x, NULL, z, NULL), FLOW_OK);
    ck_assert_double_eq_tol(z[0], h[3], 10 * TEST_EPS);
    for (int i = 0; i < 3; i++)   /* final reverse */
        ck_assert_double_eq_tol(z[1 + i], u[2 - i], 10 * TEST_EPS);
    want = ld - 0.5 * (h[3] * h[3] + log(2 * M_PI));
    for (int i = 0; i < 3; i++)
        want += -u[i] - 2 * log1p(exp(-u[i]));
    ck_assert_int_eq(flow_model_log_prob(m, 1, x, NULL, &lp), FLOW_OK);
    ck_assert_double_eq_tol(lp, want, 1e3 * TEST_EPS);
    flow_model_free(m);
}
END_TEST

/* A 1-D model's density integrates to 1 (logistic and normal bases). */
START_TEST(test_density_integrates_to_one)
{
    for (int b = 0; b < 2; b++) {
        enum { G = 20001 };
        static flow_real grid[G], lp[G];
        flow_model *m = flow_model_new(ctx, 1, 0);
        double lo = -60, hi = 60, dx = (hi - lo) / (G - 1), mass = 0;
        add_actnorm(m);
        add_actnorm(m);
        ck_assert_int_eq(flow_model_set_base(m, b ? FLOW_BASE_LOGISTIC
                                                  : FLOW_BASE_NORMAL,
                                             NULL, 0), FLOW_OK);
        ck_assert_int_eq(flow_model_finish(m, 2), FLOW_OK);
        randomise(m, 11);
        for (int i = 0; i < G; i++)
            grid[i] = (flow_real)(lo + i * dx);
        ck_assert_int_eq(flow_model_log_prob(m, G, grid, NULL, lp), FLOW_OK);
        for (int i = 0; i < G; i++)   /* trapezoid */
            mass += (i == 0 || i == G - 1 ? 0.5 : 1.0) * exp(lp[i]) * dx;
        ck_assert_double_eq_tol(mass, 1.0, 1e-3);
        flow_model_free(m);
    }
}
END_TEST

/* Samples' reported log-density equals log_prob at the sample. */
START_TEST(test_sample_logp_consistent)
{
    enum { N = 64, D = 4 };
    flow_model *m = two_exit_model();
    flow_real x[N * D], lps[N], lpe[N];
    randomise(m, 9);
    flow_model_seed(m, 4);
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, lps), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lpe), FLOW_OK);
    for (int r = 0; r < N; r++)
        ck_assert_double_eq_tol(lps[r], lpe[r], 1e3 * TEST_EPS);
    flow_model_free(m);
}
END_TEST

/* Gradient of the mean log-likelihood against central differences. */
START_TEST(test_gradient_matches_finite_differences)
{
    enum { N = 7, D = 4 };
    flow_model *m = two_exit_model();
    size_t np = flow_model_num_params(m);
    flow_real x[N * D], *g = malloc(np * sizeof *g), *p;
    double f0;
    randomise(m, 21);
    p = flow_model_params(m);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)cos(0.7 * i + 0.1);
    ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &f0, g), FLOW_OK);
    for (size_t j = 0; j < np; j++) {
        double h = FLOW_REAL_DOUBLE ? 1e-6 : 1e-2, fp, fm, fd;
        flow_real keep = p[j];
        p[j] = (flow_real)(keep + h);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &fp, g),
                         FLOW_OK);
        p[j] = (flow_real)(keep - h);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &fm, g),
                         FLOW_OK);
        p[j] = keep;
        fd = (fp - fm) / (2 * h);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &f0, g),
                         FLOW_OK);
        ck_assert_msg(fabs(g[j] - fd) <= (FLOW_REAL_DOUBLE ? 1e-6 : 2e-3)
                                             * (1 + fabs(fd)),
                      "param %zu: analytic %g, finite difference %g", j,
                      (double)g[j], fd);
    }
    free(g);
    flow_model_free(m);
}
END_TEST

/* Learnable bases: a GMM exit and a diagonal-normal output; gradients of
 * every parameter (layers and bases) against central differences, and the
 * samples' log-densities against log_prob. */
START_TEST(test_learnable_bases)
{
    enum { N = 9, D = 3 };
    double k = 3, f0;
    flow_model *m = flow_model_new(ctx, D, 0);
    flow_real x[N * D], lps[N], lpe[N], *g, *p;
    size_t np;
    add_actnorm(m);
    ck_assert_int_eq(flow_model_add_exit(m, 1, "z1", FLOW_BASE_GMM, &k, 1),
                     FLOW_OK);
    add_actnorm(m);
    ck_assert_int_eq(flow_model_set_base(m, FLOW_BASE_DIAG_NORMAL, NULL, 0),
                     FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 5), FLOW_OK);
    np = flow_model_num_params(m);
    /* actnorm 2*3 + 2*2, GMM 3 + 3*1 + 3*1, diagonal normal 2*2 */
    ck_assert_uint_eq(np, 6 + 4 + 9 + 4);
    randomise(m, 12);
    p = flow_model_params(m);
    g = malloc(np * sizeof *g);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(1.5 * sin(0.37 * i + 0.2));
    ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &f0, g), FLOW_OK);
    for (size_t j = 0; j < np; j++) {
        double h = FLOW_REAL_DOUBLE ? 1e-6 : 1e-2, fp, fm, fd;
        flow_real keep = p[j], *g2 = malloc(np * sizeof *g2);
        p[j] = (flow_real)(keep + h);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &fp, g2),
                         FLOW_OK);
        p[j] = (flow_real)(keep - h);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &fm, g2),
                         FLOW_OK);
        p[j] = keep;
        free(g2);
        fd = (fp - fm) / (2 * h);
        ck_assert_msg(fabs(g[j] - fd) <= (FLOW_REAL_DOUBLE ? 1e-6 : 3e-3)
                                             * (1 + fabs(fd)),
                      "param %zu: analytic %g, FD %g", j, (double)g[j], fd);
    }
    flow_model_seed(m, 2);
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, lps), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lpe), FLOW_OK);
    for (int r = 0; r < N; r++)
        ck_assert_double_eq_tol(lps[r], lpe[r], 1e3 * TEST_EPS);
    ck_assert_int_eq(flow_model_set_base(m, FLOW_BASE_GMM, &k, 1),
                     FLOW_ERR_INVAL);   /* finished */
    free(g);
    flow_model_free(m);
    m = flow_model_new(ctx, 2, 0);
    k = 0;
    ck_assert_int_eq(flow_model_set_base(m, FLOW_BASE_GMM, &k, 1),
                     FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "a Gaussian mixture base needs a "
                     "number of components in 1..256");
    flow_model_free(m);
}
END_TEST

START_TEST(test_data_init_normalises_once)
{
    enum { N = 1000, D = 3 };
    static flow_real x[N * D], z[N * D];
    flow_model *m = flow_model_new(ctx, D, 0);
    add_actnorm(m);
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    for (int r = 0; r < N; r++)
        for (int i = 0; i < D; i++)
            x[r * D + i] = (flow_real)(5.0 * i - 2
                                       + (i + 1) * sin(r * 0.37 + i));
    ck_assert_int_eq(flow_model_data_init(m, N, x, NULL), FLOW_OK);
    ck_assert_double_eq(flow_model_buffers(m)[0], 1);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    for (int i = 0; i < D; i++) {
        double mean = 0, var = 0;
        for (int r = 0; r < N; r++)
            mean += z[r * D + i];
        mean /= N;
        for (int r = 0; r < N; r++)
            var += (z[r * D + i] - mean) * (z[r * D + i] - mean);
        ck_assert_double_eq_tol(mean, 0.0, 1e-4);
        ck_assert_double_eq_tol(var / N, 1.0, 1e-4);
    }
    /* a second data init (e.g. after loading a checkpoint) changes nothing */
    flow_model_params(m)[0] = 0.25f;
    ck_assert_int_eq(flow_model_data_init(m, N, x, NULL), FLOW_OK);
    ck_assert_double_eq(flow_model_params(m)[0], 0.25f);
    flow_model_free(m);
}
END_TEST

/* An image input [C, H, W]: actnorm normalises each channel over the
 * rows and the channel's H*W values (Glow, sec. 3.1) with C scales; an
 * exit takes whole channels; the shape is set before any layer. */
START_TEST(test_input_shape_per_channel)
{
    enum { N = 500, C = 3, HW = 4, D = C * HW };
    static flow_real x[N * D], z[N * D];
    const size_t shape[3] = {C, 2, 2}, odd[3] = {2, 2, 2};
    size_t got[4];
    flow_model *m = flow_model_new(ctx, D, 0);
    ck_assert_uint_eq(flow_model_input_shape(m, got), 1);
    ck_assert_uint_eq(got[0], D);
    ck_assert_int_eq(flow_model_set_input_shape(m, 2, shape), FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_model_set_input_shape(m, 3, odd), FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "a shape of 8 values for a model "
                         "of 12 dimensions") != NULL, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_set_input_shape(m, 3, shape), FLOW_OK);
    add_actnorm(m);
    ck_assert_int_eq(flow_model_set_input_shape(m, 3, shape), FLOW_ERR_INVAL);
    /* the input's shape, not the state's after the layers */
    ck_assert_uint_eq(flow_model_input_shape(m, got), 3);
    ck_assert_uint_eq(got[0], C);
    ck_assert_uint_eq(got[1], 2);
    ck_assert_uint_eq(got[2], 2);
    ck_assert_uint_eq(got[3], 0);
    ck_assert_int_eq(flow_model_add_exit(m, 6, "z1", FLOW_BASE_NORMAL, NULL,
                                         0), FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "whole channels (a multiple of "
                         "4)") != NULL, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_add_exit(m, 4, "z1", FLOW_BASE_NORMAL, NULL,
                                         0), FLOW_OK);
    add_actnorm(m);                     /* [2, 2, 2] now: 2 channels */
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    ck_assert_uint_eq(flow_model_num_params(m), 2 * C + 2 * 2);
    for (int r = 0; r < N; r++)
        for (int i = 0; i < D; i++)
            x[r * D + i] = (flow_real)(3.0 * (i / HW) - 2
                                       + (i + 1) * sin(r * 0.37 + i));
    ck_assert_int_eq(flow_model_data_init(m, N, x, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    /* z holds the exit's 4 columns, then the 8 of the final state: both
     * come from channels normalised as wholes */
    for (int k = 0; k < C; k++) {
        double mean = 0, var = 0;
        for (int r = 0; r < N; r++)
            for (int j = 0; j < HW; j++)
                mean += z[r * D + k * HW + j];
        mean /= N * HW;
        for (int r = 0; r < N; r++)
            for (int j = 0; j < HW; j++) {
                double v = z[r * D + k * HW + j] - mean;
                var += v * v;
            }
        ck_assert_double_eq_tol(mean, 0.0, 1e-4);
        ck_assert_double_eq_tol(var / (N * HW), 1.0, 1e-4);
    }
    flow_model_free(m);
}
END_TEST

START_TEST(test_build_errors)
{
    flow_attr_value eps;
    flow_real x[2] = {0, 0}, z[2];
    flow_model *m = flow_model_new(ctx, 2, 0);
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    ck_assert_int_eq(flow_model_add_layer(m, "nosuch", NULL, NULL, 0, 0, 0, 0),
                     FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "unknown layer type 'nosuch' (no "
                                       "loaded plugin provides it)");
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 1, 0,
                                          0), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "layer 'actnorm' uses the context, but "
                                       "the model has none");
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 0, 0, 0,
                                          0), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "layer 'actnorm' takes 1 resolved "
                                       "attributes, got 0");
    eps.type = FLOW_ATTR_INT;
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 0, 0,
                                          0), FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_model_add_exit(m, 2, "e", FLOW_BASE_NORMAL, NULL, 0),
                     FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "exit of 2 dimensions from a state of "
                                       "2: must leave at least one and take "
                                       "at least one");
    ck_assert_int_eq(flow_model_forward(m, 1, x, NULL, z, NULL),
                     FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "model is not finished (call "
                                       "flow_model_finish)");
    ck_assert_int_eq(flow_model_num_layers(m), 0);
    flow_model_free(m);
    ck_assert_ptr_null(flow_model_new(ctx, 0, 0));
    ck_assert_str_eq(flow_errmsg(ctx), "a model needs at least 1 dimension");
}
END_TEST

START_TEST(test_data_init_error_names_layer)
{
    flow_real x[2] = {1, 2};
    flow_model *m = flow_model_new(ctx, 2, 0);
    flow_attr_value eps;
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", "norm1", &eps, 1, 0, 7,
                                          5), FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    ck_assert_int_eq(flow_model_data_init(m, 1, x, NULL), FLOW_ERR);
    ck_assert_msg(strstr(flow_errmsg(ctx), "norm1 (line 7:5, ") != NULL
                  && strstr(flow_errmsg(ctx), "actnorm.so): data-dependent "
                            "init: data-dependent initialisation needs at "
                            "least 2 rows, got 1") != NULL, "%s",
                  flow_errmsg(ctx));
    flow_model_free(m);
}
END_TEST

/* batchnorm in training mode: gradients through the batch statistics, and
 * its inverse refused until evaluation mode. */
START_TEST(test_batchnorm_training)
{
    enum { N = 16, D = 3 };
    flow_attr_value a[2];
    flow_model *m = flow_model_new(ctx, D, 0);
    flow_real x[N * D], z[N * D], back[N * D], lp[N], *g, *p;
    size_t np;
    double f0;
    memset(a, 0, sizeof a);
    a[0].type = a[1].type = FLOW_ATTR_REAL;
    a[0].r = 0.1;
    a[1].r = 1e-5;
    add_actnorm(m);
    ck_assert_int_eq(flow_model_add_layer(m, "batchnorm", NULL, a, 2, 0, 0, 0),
                     FLOW_OK);
    add_actnorm(m);
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    randomise(m, 8);
    np = flow_model_num_params(m);
    p = flow_model_params(m);
    g = malloc(np * sizeof *g);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(2 * sin(0.91 * i) + (i % D));
    flow_model_set_training(m, 1);
    ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &f0, g), FLOW_OK);
    for (size_t j = 0; j < np; j++) {
        double h = FLOW_REAL_DOUBLE ? 1e-6 : 1e-2, fp = 0, fm = 0;
        flow_real keep = p[j];
        p[j] = (flow_real)(keep + h);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp), FLOW_OK);
        for (int r = 0; r < N; r++)
            fp += lp[r] / N;
        p[j] = (flow_real)(keep - h);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp), FLOW_OK);
        for (int r = 0; r < N; r++)
            fm += lp[r] / N;
        p[j] = keep;
        ck_assert_msg(fabs(g[j] - (fp - fm) / (2 * h))
                      <= (FLOW_REAL_DOUBLE ? 1e-6 : 5e-3)
                             * (1 + fabs((fp - fm) / (2 * h))),
                      "param %zu: analytic %g, FD %g", j, (double)g[j],
                      (fp - fm) / (2 * h));
    }
    /* the input gradient through the batch statistics: nudging one row
     * moves the mean log-likelihood as the chain rule says (checked via
     * the next layer's parameters above); the inverse waits for eval */
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, NULL), FLOW_ERR);
    ck_assert_msg(strstr(flow_errmsg(ctx), "the inverse of batchnorm needs "
                         "evaluation mode") != NULL, "%s", flow_errmsg(ctx));
    flow_model_set_training(m, 0);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, NULL), FLOW_OK);
    for (int i = 0; i < N * D; i++)
        ck_assert_double_eq_tol(back[i], x[i], 100 * TEST_EPS);
    free(g);
    flow_model_free(m);
}
END_TEST

/* Threads split a batch by rows: results match one thread up to rounding
 * (different GEMM shapes), and the same thread count gives the same bits. */
START_TEST(test_threads)
{
    enum { N = 300, D = 3 };
    static const char *const types[] = {"linear", "actnorm", "batchnorm"};
    flow_attr_value perm, seed, bn[2], eps;
    flow_model *m1 = flow_model_new(ctx, D, 0), *m2 = flow_model_new(ctx, D, 0);
    flow_model *ms[2] = {m1, m2};
    static flow_real x[N * D], l1[N], l2[N], l3[N];
    flow_real *g1, *g2, *g3;
    size_t np;
    double f1, f2, f3;
    memset(&perm, 0, sizeof perm);
    memset(&seed, 0, sizeof seed);
    memset(bn, 0, sizeof bn);
    memset(&eps, 0, sizeof eps);
    perm.type = FLOW_ATTR_VARIANT;
    perm.i = 2;
    perm.sub = &seed;
    seed.type = FLOW_ATTR_INT;
    bn[0].type = bn[1].type = eps.type = FLOW_ATTR_REAL;
    bn[0].r = 0.1;
    bn[1].r = 1e-5;
    for (int k = 0; k < 2; k++) {
        for (int l = 0; l < 3; l++) {
            const flow_attr_value *a = l == 0 ? &perm : l == 1 ? &eps : bn;
            ck_assert_int_eq(flow_model_add_layer(ms[k], types[l], NULL, a,
                                                  l == 2 ? 2 : 1, 0, 0, 0),
                             FLOW_OK);
        }
        ck_assert_int_eq(flow_model_finish(ms[k], 1), FLOW_OK);
        randomise(ms[k], 4);
        flow_model_set_training(ms[k], 1);
    }
    ck_assert_int_eq(flow_model_set_threads(m2, 2), FLOW_OK);
    ck_assert_int_eq(flow_model_set_threads(m2, 0), FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_model_set_threads(m2, 2), FLOW_OK);
    np = flow_model_num_params(m1);
    g1 = malloc(np * sizeof *g1);
    g2 = malloc(np * sizeof *g2);
    g3 = malloc(np * sizeof *g3);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(2 * sin(0.7 * i) + 0.1 * (i % 7));
    ck_assert_int_eq(flow_model_loglik_grad(m1, N, x, NULL, &f1, g1), FLOW_OK);
    ck_assert_int_eq(flow_model_loglik_grad(m2, N, x, NULL, &f2, g2), FLOW_OK);
    ck_assert_int_eq(flow_model_loglik_grad(m2, N, x, NULL, &f3, g3), FLOW_OK);
    ck_assert_double_eq_tol(f1, f2, 1e3 * TEST_EPS * (1 + fabs(f1)));
    for (size_t j = 0; j < np; j++)
        ck_assert_msg(fabs(g1[j] - g2[j]) <= 1e3 * TEST_EPS * (1 + fabs(g1[j])),
                      "param %zu: 1 thread %g, 2 threads %g", j,
                      (double)g1[j], (double)g2[j]);
    ck_assert_mem_eq(g2, g3, np * sizeof *g2);
    flow_model_set_training(m1, 0);
    flow_model_set_training(m2, 0);
    /* m2 ran one more training pass: same running statistics for both */
    memcpy(flow_model_buffers(m2), flow_model_buffers(m1),
           flow_model_num_buffers(m1) * sizeof(flow_real));
    ck_assert_int_eq(flow_model_log_prob(m1, N, x, NULL, l1), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(m2, N, x, NULL, l2), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(m2, N, x, NULL, l3), FLOW_OK);
    for (int r = 0; r < N; r++)
        ck_assert_double_eq_tol(l1[r], l2[r],
                                1e2 * TEST_EPS * (1 + fabs(l1[r])));
    ck_assert_mem_eq(l2, l3, sizeof l2);
    free(g1);
    free(g2);
    free(g3);
    flow_model_free(m1);
    flow_model_free(m2);
}
END_TEST

/* Adds `info` to c's plugins as if a plugin file had provided it: layer
 * types the loader would check differently (here: without the optional
 * callbacks) reach the executor directly. */
static void add_inline_plugin(flow_ctx *c, const flow_plugin_info *info)
{
    loaded_plugin *p;
    if (c->n_plugins == c->cap_plugins) {
        size_t cap = c->cap_plugins ? 2 * c->cap_plugins : 4;
        p = realloc(c->plugins, cap * sizeof *p);
        ck_assert_ptr_nonnull(p);
        c->plugins = p;
        c->cap_plugins = cap;
    }
    p = &c->plugins[c->n_plugins];
    p->file = strdup("inline-test-plugin");
    p->handle = dlopen(NULL, RTLD_NOW);     /* dlclose'd with the rest */
    p->info = info;
    ck_assert_ptr_nonnull(p->file);
    ck_assert_ptr_nonnull(p->handle);
    c->n_plugins++;
}

/* A layer type without `workspace` and `init` (both optional) runs like
 * the same type with the stubs "0 bytes" and "nothing to do": linear's
 * return 0 and zero the parameters the host already zeroed, so the two
 * models give the same bits, on one thread and on two. */
START_TEST(test_optional_callbacks_null)
{
    enum { N = 300, D = 3 };
    static flow_layer_type bare;
    static const flow_layer_type *const bare_layers[] = {&bare};
    static const flow_plugin_info bare_info = {
        FLOW_PLUGIN_INFO_HEAD, "bare", "0", "linear without the optional "
        "callbacks", 1, bare_layers, 0, NULL};
    static flow_real x[N * D], z1[N * D], z2[N * D], x2[N * D];
    static flow_real ld1[N], ld2[N], lp1[N], lp2[N];
    const flow_layer_type *lin = flow_layer_type_find(ctx, "linear", NULL);
    flow_attr_value perm;
    flow_model *ms[2];
    flow_real *g[2];
    double f[2];
    size_t np;
    ck_assert_ptr_nonnull(lin);
    bare = *lin;
    bare.name = "linear_bare";
    bare.workspace = NULL;
    bare.init = NULL;
    add_inline_plugin(ctx, &bare_info);
    memset(&perm, 0, sizeof perm);
    perm.type = FLOW_ATTR_VARIANT;
    perm.i = 1;                             /* reverse */
    for (int threads = 1; threads <= 2; threads++) {
        for (int k = 0; k < 2; k++) {
            ms[k] = flow_model_new(ctx, D, 0);
            ck_assert_ptr_nonnull(ms[k]);
            ck_assert_msg(flow_model_add_layer(ms[k], k ? "linear_bare"
                                               : "linear", NULL, &perm, 1, 0,
                                               0, 0) == FLOW_OK, "%s",
                          flow_errmsg(ctx));
            ck_assert_msg(flow_model_finish(ms[k], 1) == FLOW_OK, "%s",
                          flow_errmsg(ctx));
            ck_assert_int_eq(flow_model_set_threads(ms[k], (size_t)threads),
                             FLOW_OK);
        }
        np = flow_model_num_params(ms[0]);
        ck_assert_uint_eq(flow_model_num_params(ms[1]), np);
        for (size_t j = 0; j < np; j++)
            ck_assert_msg(flow_model_params(ms[1])[j] == 0,
                          "param %zu of the layer without init: %g", j,
                          (double)flow_model_params(ms[1])[j]);
        randomise(ms[0], 5);
        randomise(ms[1], 5);
        for (int i = 0; i < N * D; i++)
            x[i] = (flow_real)(1.5 * sin(0.3 * i) + 0.05 * (i % 5));
        ck_assert_int_eq(flow_model_forward(ms[0], N, x, NULL, z1, ld1),
                         FLOW_OK);
        ck_assert_msg(flow_model_forward(ms[1], N, x, NULL, z2, ld2)
                      == FLOW_OK, "%s", flow_errmsg(ctx));
        ck_assert_mem_eq(z1, z2, sizeof z1);
        ck_assert_mem_eq(ld1, ld2, sizeof ld1);
        ck_assert_int_eq(flow_model_inverse(ms[1], N, z2, NULL, x2, NULL),
                         FLOW_OK);
        for (int i = 0; i < N * D; i++)
            ck_assert_double_eq_tol(x2[i], x[i], 1e2 * TEST_EPS
                                    * (1 + fabs(x[i])));
        ck_assert_int_eq(flow_model_log_prob(ms[0], N, x, NULL, lp1), FLOW_OK);
        ck_assert_int_eq(flow_model_log_prob(ms[1], N, x, NULL, lp2), FLOW_OK);
        ck_assert_mem_eq(lp1, lp2, sizeof lp1);
        for (int k = 0; k < 2; k++) {
            g[k] = malloc(np * sizeof *g[k]);
            ck_assert_ptr_nonnull(g[k]);
            ck_assert_int_eq(flow_model_loglik_grad(ms[k], N, x, NULL, &f[k],
                                                    g[k]), FLOW_OK);
        }
        ck_assert_double_eq(f[0], f[1]);
        ck_assert_mem_eq(g[0], g[1], np * sizeof *g[0]);
        for (int k = 0; k < 2; k++) {
            free(g[k]);
            flow_model_free(ms[k]);
        }
    }
}
END_TEST

/* --- flow_model_add and its wrappers ----------------------------------- */

static flow_attr_value real_attr(double r)
{
    flow_attr_value v;
    memset(&v, 0, sizeof v);
    v.type = FLOW_ATTR_REAL;
    v.r = r;
    return v;
}

/* A finished 2-D model of actnorm "norm1" and a reversal, its parameters
 * randomised; the message of data-dependent init on one row (which
 * actnorm refuses, naming the layer's place) copied into msg. */
static flow_model *finish_probe(flow_model *m, char *msg, size_t cap)
{
    flow_real x[2] = {0.25, -1.5};
    ck_assert_msg(flow_model_finish(m, 5) == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_data_init(m, 1, x, NULL), FLOW_ERR);
    snprintf(msg, cap, "%s", flow_errmsg(ctx));
    randomise(m, 11);
    return m;
}

START_TEST(test_add_struct_matches_wrappers)
{
    enum { N = 4 };
    flow_attr_value eps = real_attr(1e-6), order;
    flow_model *a = flow_model_new(ctx, 2, 0), *b = flow_model_new(ctx, 2, 0);
    flow_real x[N * 2], la[N], lb[N];
    char ma[512], mb[512];
    flow_layer_args la1 = {.struct_size = sizeof la1, .type = "actnorm",
                           .label = "norm1", .attrs = &eps, .n_attrs = 1,
                           .file = "spec.flow", .line = 7, .col = 5};
    flow_layer_args la2 = {.struct_size = sizeof la2, .type = "permute",
                           .attrs = &order, .n_attrs = 1};
    memset(&order, 0, sizeof order);
    order.type = FLOW_ATTR_VARIANT;
    order.s = "reverse";
    ck_assert_msg(flow_model_add(a, &la1) == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_msg(flow_model_add(a, &la2) == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_add_layer_at(b, "actnorm", "norm1", &eps, 1,
                                             0, "spec.flow", 7, 5), FLOW_OK);
    ck_assert_int_eq(flow_model_add_layer(b, "permute", NULL, &order, 1, 0,
                                          0, 0), FLOW_OK);
    finish_probe(a, ma, sizeof ma);
    finish_probe(b, mb, sizeof mb);
    /* the file reaches the layer's messages through both calls */
    ck_assert_msg(strstr(ma, "norm1 (spec.flow:7:5, ") != NULL, "%s", ma);
    ck_assert_str_eq(ma, mb);
    ck_assert_uint_eq(flow_model_num_layers(a), 2);
    ck_assert_uint_eq(flow_model_num_layers(b), 2);
    ck_assert_uint_eq(flow_model_num_params(a), 4);
    ck_assert_uint_eq(flow_model_num_params(b), 4);
    ck_assert_mem_eq(flow_model_params(a), flow_model_params(b),
                     4 * sizeof(flow_real));
    for (int i = 0; i < N * 2; i++)
        x[i] = (flow_real)cos(0.7 * i);
    ck_assert_int_eq(flow_model_log_prob(a, N, x, NULL, la), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(b, N, x, NULL, lb), FLOW_OK);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_msg(isfinite(la[0]) && la[0] < 0, "log p = %g", (double)la[0]);
    flow_model_free(a);
    flow_model_free(b);
}
END_TEST

/* A caller whose flow_layer_args ends early: the fields past its
 * struct_size take their defaults, whatever the memory there holds. */
START_TEST(test_add_older_struct_size)
{
    flow_attr_value eps = real_attr(1e-6);
    char msg[512];
    flow_layer_args args = {.struct_size = sizeof args, .type = "actnorm",
                            .label = "norm1", .attrs = &eps, .n_attrs = 1,
                            .file = "spec.flow", .line = 7, .col = 5};
    flow_model *m = flow_model_new(ctx, 2, 0);
    args.struct_size = (uint32_t)offsetof(flow_layer_args, file);
    ck_assert_msg(flow_model_add(m, &args) == FLOW_OK, "%s", flow_errmsg(ctx));
    finish_probe(m, msg, sizeof msg);
    /* no position: "label (plugin): ..." */
    ck_assert_msg(strncmp(msg, "norm1 (", 7) == 0 && !strstr(msg, "spec.flow")
                  && !strstr(msg, ":7:") && strstr(msg, "actnorm.so): "),
                  "%s", msg);
    flow_model_free(m);

    /* file and line covered, col not: col 0 */
    m = flow_model_new(ctx, 2, 0);
    args.struct_size = (uint32_t)offsetof(flow_layer_args, col);
    ck_assert_msg(flow_model_add(m, &args) == FLOW_OK, "%s", flow_errmsg(ctx));
    finish_probe(m, msg, sizeof msg);
    ck_assert_msg(strstr(msg, "norm1 (spec.flow:7:0, ") != NULL, "%s", msg);
    flow_model_free(m);
}
END_TEST

START_TEST(test_add_refuses_short_struct)
{
    flow_attr_value eps = real_attr(1e-6);
    flow_layer_args args = {.struct_size = sizeof args, .type = "actnorm",
                            .attrs = &eps, .n_attrs = 1};
    flow_model *m = flow_model_new(ctx, 2, 0);
    char want[160];
    /* `given` not covered */
    args.struct_size = (uint32_t)offsetof(flow_layer_args, given);
    snprintf(want, sizeof want, "flow_model_add: struct_size %u does not "
             "cover the required fields (%zu bytes): set it to "
             "sizeof(flow_layer_args)", (unsigned)args.struct_size,
             offsetof(flow_layer_args, given) + sizeof(int));
    ck_assert_int_eq(flow_model_add(m, &args), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), want);
    args.struct_size = 0;
    ck_assert_int_eq(flow_model_add(m, &args), FLOW_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "struct_size 0 does not"));
    ck_assert_int_eq(flow_model_add(m, NULL), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "flow_model_add: no layer arguments");
    args.struct_size = sizeof args;
    args.type = NULL;
    ck_assert_int_eq(flow_model_add(m, &args), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "flow_model_add: no layer type");
    ck_assert_uint_eq(flow_model_num_layers(m), 0);
    /* the same struct, complete, is taken */
    args.type = "actnorm";
    ck_assert_int_eq(flow_model_add(m, &args), FLOW_OK);
    ck_assert_uint_eq(flow_model_num_layers(m), 1);
    flow_model_free(m);
}
END_TEST

Suite *suite_model(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("build_and_passes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_round_trip_with_exit);
    tcase_add_test(tc, test_log_prob_by_hand);
    tcase_add_test(tc, test_density_integrates_to_one);
    tcase_add_test(tc, test_sample_logp_consistent);
    tcase_add_test(tc, test_gradient_matches_finite_differences);
    tcase_add_test(tc, test_data_init_normalises_once);
    tcase_add_test(tc, test_build_errors);
    tcase_add_test(tc, test_input_shape_per_channel);
    tcase_add_test(tc, test_data_init_error_names_layer);
    tcase_add_test(tc, test_batchnorm_training);
    tcase_add_test(tc, test_learnable_bases);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_optional_callbacks_null);
    suite_add_tcase(s, tc);
    tc = tcase_create("add_call");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_add_struct_matches_wrappers);
    tcase_add_test(tc, test_add_older_struct_size);
    tcase_add_test(tc, test_add_refuses_short_struct);
    suite_add_tcase(s, tc);
    return s;
}
