/* test_target_callback.c - targets whose log-density is the caller's
 * function (flow_target_new_callback): values and gradients pass through,
 * a failing callback's message reaches flow_errmsg, and a flow fitted to a
 * callback Gaussian finds its mean and its log Z. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
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

/* N(mu, I) in D dimensions, normalised: log p = -|x - mu|^2 / 2 -
 * D/2 log(2 pi), gradient mu - x.  Fails on a row whose first value is
 * above `fail_above`, with a message naming the row. */
typedef struct gauss {
    size_t dim;
    double mu[4];
    double fail_above;
    size_t calls, rows;
} gauss;

static int gauss_fn(void *arg, size_t n, size_t dim, const flow_real *x,
                    flow_real *logp, flow_real *grad, char *err,
                    size_t err_cap)
{
    gauss *g = arg;
    g->calls++;
    g->rows += n;
    if (dim != g->dim) {
        snprintf(err, err_cap, "dimension %zu, expected %zu", dim, g->dim);
        return 1;
    }
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        if (x[r * dim] > g->fail_above) {
            snprintf(err, err_cap, "row %zu is out of the support", r);
            return 7;
        }
        for (size_t j = 0; j < dim; j++) {
            double d = x[r * dim + j] - g->mu[j];
            s += d * d;
            if (grad)
                grad[r * dim + j] = (flow_real)-d;
        }
        logp[r] = (flow_real)(-0.5 * s - 0.5 * (double)dim * log(2 * M_PI));
    }
    return 0;
}

START_TEST(test_callback_values_pass_through)
{
    gauss g = {2, {1, -2}, INFINITY, 0, 0};
    flow_target *t;
    flow_real x[6] = {1, -2, 0, 0, 2, -1}, lp[3], gr[6];
    double c = -log(2 * M_PI);
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_fn, &g, 0.0, &t),
                     FLOW_OK);
    ck_assert_str_eq(flow_target_name(t), "callback");
    ck_assert_uint_eq(flow_target_dim(t), 2);
    ck_assert_double_eq_tol(flow_target_log_normalizer(t), 0.0, 1e-15);
    ck_assert_int_eq(flow_target_log_density(t, 3, x, lp, gr), FLOW_OK);
    ck_assert_uint_eq(g.calls, 1);
    ck_assert_uint_eq(g.rows, 3);
    ck_assert_double_eq_tol(lp[0], c, 1e-6);
    ck_assert_double_eq_tol(lp[1], c - 2.5, 1e-6);
    ck_assert_double_eq_tol(lp[2], c - 1.0, 1e-6);
    ck_assert_double_eq_tol(gr[2], 1.0, 1e-7);
    ck_assert_double_eq_tol(gr[3], -2.0, 1e-7);
    ck_assert_double_eq_tol(gr[4], -1.0, 1e-7);
    /* no gradient asked: the callback sees NULL and still gives logp */
    ck_assert_int_eq(flow_target_log_density(t, 1, x + 2, lp, NULL), FLOW_OK);
    ck_assert_double_eq_tol(lp[0], c - 2.5, 1e-6);
    flow_target_free(t);
    /* an unknown normaliser */
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_fn, &g, NAN, &t),
                     FLOW_OK);
    ck_assert_msg(isnan(flow_target_log_normalizer(t)), "log Z %g",
                  flow_target_log_normalizer(t));
    flow_target_free(t);
}
END_TEST

START_TEST(test_callback_failure_message)
{
    gauss g = {2, {0, 0}, 1.5, 0, 0};
    flow_target *t = (flow_target *)&g;
    flow_real x[4] = {0, 0, 2, 0}, lp[2];
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_fn, &g, NAN, &t),
                     FLOW_OK);
    ck_assert_int_eq(flow_target_log_density(t, 2, x, lp, NULL),
                     FLOW_ERR_PLUGIN);
    ck_assert_msg(strstr(flow_errmsg(ctx), "target 'callback': row 1 is out "
                         "of the support") != NULL, "message '%s'",
                  flow_errmsg(ctx));
    flow_target_free(t);
    /* refused arguments leave *out NULL */
    t = (flow_target *)&g;
    ck_assert_int_eq(flow_target_new_callback(ctx, 0, gauss_fn, &g, NAN, &t),
                     FLOW_ERR_INVAL);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(flow_errmsg(ctx), "dimension 0") != NULL, "'%s'",
                  flow_errmsg(ctx));
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, NULL, &g, NAN, &t),
                     FLOW_ERR_INVAL);
    ck_assert_ptr_null(t);
}
END_TEST

/* A failing callback stops a fit's step with its message and leaves the
 * parameters as they were. */
START_TEST(test_callback_failure_stops_step)
{
    static const char src[] = "flow t {\n input x : real[2];\n"
        " coupling(mask = half, hidden = [8], transformer = affine);\n"
        " output z ~ normal;\n}\n";
    gauss g = {2, {0, 0}, -INFINITY, 0, 0};
    flow_compilation *c = flow_compile_string(ctx, "t.flow", src,
                                              strlen(src));
    flow_model *m = NULL;
    flow_target *t;
    flow_trainer *tr;
    flow_train_config cfg;
    flow_real *before;
    double loss;
    size_t np;
    ck_assert_ptr_nonnull(flow_compile_graph(c));
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(c), 3,
                                            &m), FLOW_OK);
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_fn, &g, 0, &t),
                     FLOW_OK);
    flow_train_config_default(&cfg);
    cfg.batch = 16;
    ck_assert_ptr_nonnull(tr = flow_trainer_new_target(m, &cfg, t));
    np = flow_model_num_params(m);
    before = malloc(np * sizeof *before);
    ck_assert_ptr_nonnull(before);
    memcpy(before, flow_model_params(m), np * sizeof *before);
    ck_assert_int_eq(flow_trainer_step(tr, &loss), FLOW_ERR_PLUGIN);
    ck_assert_msg(strstr(flow_errmsg(ctx), "out of the support") != NULL,
                  "'%s'", flow_errmsg(ctx));
    ck_assert_int_eq(memcmp(before, flow_model_params(m),
                            np * sizeof *before), 0);
    free(before);
    flow_trainer_free(tr);
    flow_target_free(t);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

/* Reverse KL against N(mu, I) through the callback: the fitted flow's
 * sample mean lies near mu (4000 samples: s.e. 0.016 per coordinate) and
 * the importance estimate of log Z near 0, the normaliser given. */
START_TEST(test_callback_fit_finds_mean)
{
    static const char src[] = "flow t {\n input x : real[2];\n"
        " repeat 2 { coupling(mask = half, hidden = [16], "
        "transformer = affine); permute(order = reverse); }\n"
        " output z ~ normal;\n}\n";
    gauss g = {2, {1.5, -2}, INFINITY, 0, 0};
    flow_compilation *c = flow_compile_string(ctx, "t.flow", src,
                                              strlen(src));
    flow_model *m = NULL;
    flow_target *t;
    flow_trainer *tr;
    flow_train_config cfg;
    flow_is_stats s;
    flow_real *x;
    double loss, mean[2] = {0, 0};
    const size_t ns = 4000;
    ck_assert_ptr_nonnull(flow_compile_graph(c));
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(c), 1,
                                            &m), FLOW_OK);
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_fn, &g, 0, &t),
                     FLOW_OK);
    flow_train_config_default(&cfg);
    cfg.batch = 128;
    cfg.lr = 1e-2;
    ck_assert_ptr_nonnull(tr = flow_trainer_new_target(m, &cfg, t));
    for (int i = 0; i < 400; i++)
        ck_assert_msg(flow_trainer_step(tr, &loss) == FLOW_OK, "step %d: %s",
                      i, flow_errmsg(ctx));
    ck_assert_uint_eq(g.rows, 400 * 128);
    x = malloc(ns * 2 * sizeof *x);
    ck_assert_ptr_nonnull(x);
    ck_assert_int_eq(flow_model_importance(m, t, ns, 0, &s, x, NULL),
                     FLOW_OK);
    for (size_t r = 0; r < ns; r++) {
        mean[0] += x[2 * r] / (double)ns;
        mean[1] += x[2 * r + 1] / (double)ns;
    }
    ck_assert_double_eq_tol(mean[0], 1.5, 0.08);
    ck_assert_double_eq_tol(mean[1], -2.0, 0.08);
    ck_assert_msg(fabs(s.log_z) < 4 * s.log_z_se + 0.01, "log Z %g +- %g",
                  s.log_z, s.log_z_se);
    ck_assert_msg(s.ess_per_sample > 0.9, "ESS/n %g", s.ess_per_sample);
    free(x);
    flow_trainer_free(tr);
    flow_target_free(t);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

Suite *suite_target_callback(void)
{
    Suite *s = suite_create("target_callback");
    TCase *tc = tcase_create("callback");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_callback_values_pass_through);
    tcase_add_test(tc, test_callback_failure_message);
    tcase_add_test(tc, test_callback_failure_stops_step);
    tcase_add_test(tc, test_callback_fit_finds_mean);
    suite_add_tcase(s, tc);
    return s;
}
