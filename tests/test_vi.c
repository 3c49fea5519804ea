/* test_vi.c - variational fits: the bundled targets' log-densities against
 * finite differences and quadrature, the ELBO gradient against finite
 * differences, the importance-sampling log Z estimate against known
 * normalisers, and the effective sample size reached on U1-U4. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
#include "../runtime/vi.h"
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

/* Compiles `body` inside `flow t { input x : real[D]; ... }` and builds
 * its target (and model when m is not NULL). */
static flow_target *build(size_t d, const char *body, flow_model **m,
                          uint64_t seed)
{
    char src[2048];
    flow_compilation *c;
    flow_target *t = NULL;
    snprintf(src, sizeof src, "flow t {\n input x : real[%zu];\n%s\n}\n", d,
             body);
    c = flow_compile_string(ctx, "test.flow", src, strlen(src));
    ck_assert_ptr_nonnull(c);
    if (!flow_compile_graph(c))
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    ck_assert_ptr_nonnull(flow_compile_graph(c));
    ck_assert_msg(flow_graph_build_target(ctx, flow_compile_graph(c), &t)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
    if (m)
        ck_assert_msg(flow_graph_build_model(ctx, flow_compile_graph(c),
                                             seed, m) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
    flow_compile_free(c);
    return t;
}

static flow_target *target_only(size_t d, const char *decl)
{
    char body[512];
    snprintf(body, sizeof body, " output z ~ normal;\n target %s;", decl);
    return build(d, body, NULL, 0);
}

/* log p~ at one point, in double through flow_real. */
static double lp_at(flow_target *t, const flow_real *x)
{
    flow_real lp;
    ck_assert_int_eq(flow_target_log_density(t, 1, x, &lp, NULL), FLOW_OK);
    return lp;
}

/* --- target gradients against central differences ------------------- */

static const struct { size_t d; const char *decl; } targets[] = {
    {2, "banana(a = 1.5, b = 0.7)"},
    {4, "funnel(scale = 3)"},
    {2, "u1"},
    {2, "u2"},
    {2, "u3(wall = 2)"},
    {2, "u4"},
    {3, "gmm(components = 5, seed = 4, spread = 2, std = 0.8)"},
    {2, "gmm(means = [0, 1, 2, -1], stds = [0.5, 1], weights = [1, 3])"},
};

START_TEST(test_target_gradients)
{
    /* float32: h large enough that rounding (eps |f| / h) stays small */
#if FLOW_REAL_DOUBLE
    const double h = 1e-5, tol = 1e-6;
#else
    const double h = 1e-2, tol = 3e-3;
#endif
    flow_target *t = target_only(targets[_i].d, targets[_i].decl);
    size_t d = flow_target_dim(t);
    flow_real x[8], g[8], lp;
    srand(7 + _i);
    for (int pt = 0; pt < 20; pt++) {
        for (size_t i = 0; i < d; i++)
            x[i] = (flow_real)(4.5 * rand() / (double)RAND_MAX - 2.25);
        ck_assert_int_eq(flow_target_log_density(t, 1, x, &lp, g), FLOW_OK);
        ck_assert_double_finite(lp);
        for (size_t i = 0; i < d; i++) {
            flow_real xp[8], xm[8];
            double fd;
            memcpy(xp, x, sizeof xp);
            memcpy(xm, x, sizeof xm);
            xp[i] = (flow_real)(x[i] + h);
            xm[i] = (flow_real)(x[i] - h);
            fd = (lp_at(t, xp) - lp_at(t, xm))
               / ((double)xp[i] - (double)xm[i]);
            ck_assert_msg(fabs(fd - g[i]) <= tol * (1 + fabs(fd)),
                          "%s at point %d, d/dx%zu: analytic %.9g, finite "
                          "difference %.9g", targets[_i].decl, pt, i,
                          (double)g[i], fd);
        }
    }
    flow_target_free(t);
}
END_TEST

/* Midpoint rule of exp(log p~) over [-L, L]^2 on an n x n grid, the
 * log-densities in batches of one grid row. */
static double quad_log_z(flow_target *t, double L, int n)
{
    flow_real *x = malloc(2 * (size_t)n * sizeof *x);
    flow_real *lp = malloc((size_t)n * sizeof *lp);
    double hstep = 2 * L / n, mx = -INFINITY, s = 0;
    double *all = malloc((size_t)n * n * sizeof *all);
    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++) {
            x[2 * b] = (flow_real)(-L + (a + 0.5) * hstep);
            x[2 * b + 1] = (flow_real)(-L + (b + 0.5) * hstep);
        }
        ck_assert_int_eq(flow_target_log_density(t, (size_t)n, x, lp, NULL),
                         FLOW_OK);
        for (int b = 0; b < n; b++) {
            all[a * n + b] = lp[b];
            if (lp[b] > mx)
                mx = lp[b];
        }
    }
    for (int k = 0; k < n * n; k++)
        s += exp(all[k] - mx);
    free(x);
    free(lp);
    free(all);
    return mx + log(s * hstep * hstep);
}

/* The closed-form normalisers agree with 2-D quadrature. */
START_TEST(test_known_normalisers)
{
    static const char *const decls[] = {
        "banana(a = 1, b = 0.5)", "funnel(scale = 1)",
        "gmm(components = 3, seed = 2, spread = 1.5, std = 0.7)",
        "gmm(means = [0, 1, 2, -1], stds = [0.5, 1], weights = [1, 3])"};
    for (size_t k = 0; k < sizeof decls / sizeof decls[0]; k++) {
        flow_target *t = target_only(2, decls[k]);
        double want = flow_target_log_normalizer(t);
        /* the funnel's neck reaches far: a wide box */
        double got = quad_log_z(t, k == 1 ? 9 : 8, 800);
        ck_assert_msg(isfinite(want), "%s: no normaliser", decls[k]);
        ck_assert_msg(fabs(got - want) < 2e-3, "%s: log Z %.6f, quadrature "
                      "%.6f", decls[k], want, got);
        flow_target_free(t);
    }
    for (int k = 1; k <= 4; k++) {
        char name[16];
        flow_target *t;
        snprintf(name, sizeof name, "u%d", k);
        t = target_only(2, name);
        ck_assert_double_nan(flow_target_log_normalizer(t));
        flow_target_free(t);
    }
}
END_TEST

/* --- importance-sampling summaries ----------------------------------- */

START_TEST(test_importance_stats_by_hand)
{
    /* w = log 1, log 2, log 3: mean e^w = 2, ESS = 36 / 14 */
    double w[3] = {0, log(2.0), log(3.0)}, m = (0 + log(2.0) + log(3.0)) / 3;
    double sd = sqrt(((1 - 2.0) * (1 - 2.0) + 0 + 1) / 2.0);
    flow_is_stats s;
    ck_assert_int_eq(flow_importance_stats(3, w, &s), FLOW_OK);
    ck_assert_double_eq_tol(s.log_z, log(2.0), 1e-12);
    ck_assert_double_eq_tol(s.log_z_se, sd / (sqrt(3.0) * 2), 1e-12);
    ck_assert_double_eq_tol(s.ess, 36.0 / 14, 1e-12);
    ck_assert_double_eq_tol(s.ess_per_sample, 12.0 / 14, 1e-12);
    ck_assert_double_eq_tol(s.elbo, m, 1e-12);
    /* a zero weight (log p~ = -inf) counts in log Z and makes the ELBO
     * -inf */
    w[1] = -INFINITY;
    ck_assert_int_eq(flow_importance_stats(3, w, &s), FLOW_OK);
    ck_assert_double_eq_tol(s.log_z, log(4.0 / 3), 1e-12);
    ck_assert_double_infinite(s.elbo);
    ck_assert_double_lt(s.elbo, 0);
    ck_assert_uint_eq(s.n_finite, 2);
}
END_TEST

/* An untrained flow (identity at initialisation) as the proposal for a
 * Gaussian mixture: the estimate is consistent, so it must land within 4
 * standard errors of the known log Z. */
START_TEST(test_log_z_untrained_proposal)
{
    flow_model *m;
    flow_target *t = build(2, " repeat 2 { iaf(hidden = [8]); "
                              "permute(order = reverse); }\n"
                              " output z ~ normal;\n"
                              " target gmm(components = 3, seed = 5, "
                              "spread = 1, std = 1);", &m, 1);
    flow_is_stats s;
    double want = flow_target_log_normalizer(t);
    flow_model_seed(m, 11);
    ck_assert_int_eq(flow_model_importance(m, t, 20000, 0, &s, NULL, NULL),
                     FLOW_OK);
    ck_assert_msg(s.log_z_se > 0 && s.log_z_se < 0.03, "s.e. %g",
                  s.log_z_se);
    ck_assert_msg(fabs(s.log_z - want) < 4 * s.log_z_se, "log Z %.5f +- "
                  "%.5f, true %.5f", s.log_z, s.log_z_se, want);
    ck_assert_double_lt(s.elbo, want);  /* Jensen */
    flow_model_free(m);
    flow_target_free(t);
}
END_TEST

/* --- the ELBO gradient against finite differences --------------------- */

START_TEST(test_elbo_gradient_fd)
{
    /* an exit in the middle: its latent columns bypass the later layers */
    flow_model *m;
    flow_target *t = build(3, " iaf(hidden = [5], identity_init = false);\n"
                              " exit 1 -> z0 ~ normal;\n"
                              " coupling(mask = half, hidden = [4]);\n"
                              " output z ~ normal;\n"
                              " target gmm(components = 2, seed = 3, "
                              "std = 0.9);", &m, 5);
    size_t np = flow_model_num_params(m);
    flow_real *g = malloc(np * sizeof *g), *p = flow_model_params(m);
    double elbo, worst = 0;
#if FLOW_REAL_DOUBLE
    const double h = 1e-6, tol = 1e-6;
#else
    const double h = 3e-3, tol = 2e-2;
#endif
    /* the coupling starts as the identity with a zero last layer: move
     * every parameter off its initial value so each one matters */
    srand(3);
    for (size_t i = 0; i < np; i++)
        p[i] = (flow_real)(p[i] + 0.2 * (rand() / (double)RAND_MAX - 0.5));
    flow_model_seed(m, 99);
    ck_assert_int_eq(flow_model_elbo_grad(m, t, 64, &elbo, g), FLOW_OK);
    ck_assert_double_finite(elbo);
    for (size_t i = 0; i < np; i++) {
        flow_real keep = p[i], *dummy = malloc(np * sizeof *dummy);
        double ep, em, fd;
        p[i] = (flow_real)(keep + h);
        flow_model_seed(m, 99);              /* the same z */
        ck_assert_int_eq(flow_model_elbo_grad(m, t, 64, &ep, dummy), FLOW_OK);
        p[i] = (flow_real)(keep - h);
        flow_model_seed(m, 99);
        ck_assert_int_eq(flow_model_elbo_grad(m, t, 64, &em, dummy), FLOW_OK);
        p[i] = keep;
        free(dummy);
        fd = (ep - em) / (2 * h);
        if (fabs(fd - g[i]) / (1 + fabs(fd)) > worst)
            worst = fabs(fd - g[i]) / (1 + fabs(fd));
        ck_assert_msg(fabs(fd - g[i]) <= tol * (1 + fabs(fd)),
                      "parameter %zu of %zu: gradient %.9g, finite "
                      "difference %.9g", i, np, (double)g[i], fd);
    }
    free(g);
    flow_model_free(m);
    flow_target_free(t);
}
END_TEST

/* A block of a step's samples is drawn from the stream of (key, block)
 * alone, so that processes sharing the blocks out draw what one process
 * draws: the 4 blocks of a batch of 100 (32, 32, 32 and 4 samples)
 * computed in another order on a model whose stream has moved give the
 * same bits; a one-block batch is flow_model_elbo_grad on block 0's
 * stream, bit for bit; a block's gradient is its share of the batch
 * mean (32/100 of the one-block batch's). */
START_TEST(test_elbo_blocks_any_order)
{
    enum { B = 100, NBK = 4 };
    static const size_t order[NBK] = {3, 1, 0, 2};
    const uint64_t key = 0x5eedf00d1234ull;
    flow_model *m;
    flow_target *t = build(3, " iaf(hidden = [5], identity_init = false);\n"
                              " output z ~ normal;\n"
                              " target gmm(components = 2, seed = 3, "
                              "std = 0.9);", &m, 5);
    size_t np = flow_model_num_params(m);
    flow_real *ref = malloc(NBK * np * sizeof *ref);
    flow_real *g = malloc(np * sizeof *g), *g1 = malloc(np * sizeof *g1);
    double sref[NBK], sum, elbo, worst = 0;
    uint64_t st[6];
    ck_assert(ref && g && g1);
    for (size_t k = 0; k < NBK; k++) {
        ck_assert_int_eq(vi_elbo_block(m, t, key, k, k < 3 ? 32 : 4, B, 1.0,
                                       &sref[k], ref + k * np), FLOW_OK);
        ck_assert_double_finite(sref[k]);
    }
    ck_assert_msg(sref[0] != sref[1], "blocks 0 and 1 drew alike: %.17g",
                  sref[0]);
    flow_model_seed(m, 77);
    for (size_t i = 0; i < NBK; i++) {
        size_t k = order[i];
        ck_assert_int_eq(vi_elbo_block(m, t, key, k, k < 3 ? 32 : 4, B, 1.0,
                                       &sum, g), FLOW_OK);
        ck_assert_msg(memcmp(&sum, &sref[k], sizeof sum) == 0, "block %zu: "
                      "sum %.17g, in order %.17g", k, sum, sref[k]);
        ck_assert_msg(memcmp(g, ref + k * np, np * sizeof *g) == 0,
                      "block %zu: other gradient bits out of order", k);
    }
    /* block 0 as a batch of its own */
    ck_assert_int_eq(vi_elbo_block(m, t, key, 0, 32, 32, 1.0, &sum, g),
                     FLOW_OK);
    vi_block_stream(st, key, 0);
    flow_model_set_rng(m, st);
    ck_assert_int_eq(flow_model_elbo_grad(m, t, 32, &elbo, g1), FLOW_OK);
    ck_assert_msg(memcmp(g, g1, np * sizeof *g) == 0, "block 0 alone: "
                  "other bits than flow_model_elbo_grad");
    ck_assert_double_eq(elbo, sum / 32);
    ck_assert_double_eq(sum, sref[0]);
    for (size_t i = 0; i < np; i++) {
        double want = (double)g1[i] * 32 / B;
        double err = fabs((double)ref[i] - want) / (1e-6 + fabs(want));
        worst = err > worst ? err : worst;
    }
    ck_assert_msg(worst < 1e-5, "block 0 of 100: worst relative error %g "
                  "against 32/100 of the one-block gradient", worst);
    free(ref);
    free(g);
    free(g1);
    flow_model_free(m);
    flow_target_free(t);
}
END_TEST

START_TEST(test_fit_refusals)
{
    flow_model *m;
    flow_target *t = NULL;
    flow_real g[1024];
    double e;
    /* a learnable base is out of reach of the pathwise gradient */
    flow_target *tb = build(2, " coupling(mask = half, hidden = [4]);\n"
                               " output z ~ diag_normal;\n"
                               " target banana;", &m, 1);
    ck_assert_uint_le(flow_model_num_params(m), 1024);
    ck_assert_int_eq(flow_model_elbo_grad(m, tb, 8, &e, g),
                     FLOW_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "parameter-free base"));
    ck_assert_ptr_null(flow_trainer_new_target(m, NULL, tb));
    flow_model_free(m);
    flow_target_free(tb);
    /* runtime checks of flow_target_new */
    ck_assert_int_eq(flow_target_new(ctx, "nosuch", NULL, 0, 2, &t),
                     FLOW_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "unknown target type"));
    ck_assert_int_eq(flow_target_new(ctx, "u1", NULL, 0, 3, &t),
                     FLOW_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "2-dimensional"));
    ck_assert_ptr_null(t);
}
END_TEST

START_TEST(test_duplicate_target_plugin)
{
    int rc = flow_plugin_load(ctx, test_plugin("dup_target"));
    ck_assert_int_eq(rc, FLOW_ERR_PLUGIN);
    ck_assert_msg(strstr(flow_errmsg(ctx), "duplicate target type 'funnel'")
                  && strstr(flow_errmsg(ctx), "dup_target.so"), "%s",
                  flow_errmsg(ctx));
}
END_TEST

/* --- fits ------------------------------------------------------------ */

/* Fits `body` for `steps` steps; returns the importance summary of 20000
 * fresh samples and the target's log Z (or NaN). */
static void fit(size_t d, const char *body, size_t steps, size_t anneal,
                double lr, flow_is_stats *s, double *log_z,
                flow_target **keep)
{
    flow_model *m;
    flow_target *t = build(d, body, &m, 1);
    flow_train_config cfg;
    flow_trainer *tr;
    double loss;
    flow_train_config_default(&cfg);
    cfg.batch = 256;
    cfg.lr = lr;
    cfg.schedule = FLOW_LR_COSINE;
    cfg.total_steps = steps;
    cfg.anneal_steps = anneal;
    ck_assert_ptr_nonnull(tr = flow_trainer_new_target(m, &cfg, t));
    flow_model_seed(m, 2);
    for (size_t k = 0; k < steps; k++)
        ck_assert_msg(flow_trainer_step(tr, &loss) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
    flow_model_seed(m, 3);
    ck_assert_int_eq(flow_model_importance(m, t, 20000, 0, s, NULL, NULL),
                     FLOW_OK);
    *log_z = flow_target_log_normalizer(t);
    flow_trainer_free(tr);
    flow_model_free(m);
    if (keep)
        *keep = t;
    else
        flow_target_free(t);
}

#define FLOW2 " repeat 4 { coupling(mask = half, hidden = [32, 32], " \
              "transformer = spline(bins = 8, bound = 5)); " \
              "permute(order = reverse); }\n output z ~ normal;\n"

/* A fitted flow's log Z on Gaussian mixtures with known normalisers. */
START_TEST(test_fit_gmm_log_z)
{
    flow_is_stats s;
    double want;
    fit(2, FLOW2 " target gmm(components = 2, means = [-1, 0, 1, 0.5], "
        "std = 0.8, weights = [2, 5]);", 600, 0, 5e-3, &s, &want, NULL);
    fprintf(stderr, "vi: gmm 2-D: log Z %.5f +- %.5f (true %.5f), ESS/n "
            "%.3f\n", s.log_z, s.log_z_se, want, s.ess_per_sample);
    ck_assert_msg(s.log_z_se < 0.01, "s.e. %g", s.log_z_se);
    ck_assert_msg(fabs(s.log_z - want) < 4 * s.log_z_se, "log Z %.5f +- "
                  "%.5f, true %.5f", s.log_z, s.log_z_se, want);
    fit(4, " repeat 4 { iaf(hidden = [32, 32]); "
           "permute(order = reverse); }\n output z ~ normal;\n"
           " target gmm(components = 3, seed = 2, spread = 0.7, std = 1);",
        600, 0, 5e-3, &s, &want, NULL);
    fprintf(stderr, "vi: gmm 4-D: log Z %.5f +- %.5f (true %.5f), ESS/n "
            "%.3f\n", s.log_z, s.log_z_se, want, s.ess_per_sample);
    ck_assert_msg(s.log_z_se < 0.01, "s.e. %g", s.log_z_se);
    ck_assert_msg(fabs(s.log_z - want) < 4 * s.log_z_se, "log Z %.5f +- "
                  "%.5f, true %.5f", s.log_z, s.log_z_se, want);
}
END_TEST

/* U1-U4: the ESS per sample a small budget reaches, and log Z against
 * quadrature of the 2-D density. */
START_TEST(test_fit_energies)
{
    /* 1000 steps annealed over the first 500: without annealing the fit
     * of U4 can miss its second branch, and then the ESS stays high
     * (0.84) while log Z falls short by 0.17, which the quadrature check
     * below catches.  ESS is a heavy-tail statistic: over seeds it lands
     * at 0.88-0.99 in both builds, but single trajectories end lower
     * with a few large weights: u2 with this seed in the float64 build at
     * 0.57, u4 in the float build at 0.46 (seeds 4-7 there: 0.89-0.94),
     * u3 at 0.73 with another seed; the threshold sits below them
     * (measured figures: docs/vi.md), and the quadrature check below
     * still bounds log Z. */
    static const double min_ess[4] = {0.4, 0.4, 0.4, 0.4};
    char body[512], name[16];
    flow_is_stats s;
    flow_target *t;
    double lz, ref;
    snprintf(name, sizeof name, "u%d", _i + 1);
    snprintf(body, sizeof body, FLOW2 " target %s;", name);
    fit(2, body, 1000, 500, 5e-3, &s, &lz, &t);
    ref = quad_log_z(t, 6, 600);
    fprintf(stderr, "vi: %s: ESS/n %.3f, log Z %.4f +- %.4f "
            "(quadrature %.4f)\n", name, s.ess_per_sample, s.log_z,
            s.log_z_se, ref);
    ck_assert_msg(s.ess_per_sample > min_ess[_i], "%s: ESS per sample %.3f",
                  name, s.ess_per_sample);
    ck_assert_msg(fabs(s.log_z - ref) < 4 * s.log_z_se + 0.01, "%s: log Z "
                  "%.5f +- %.5f, quadrature %.5f", name, s.log_z,
                  s.log_z_se, ref);
    flow_target_free(t);
}
END_TEST

Suite *suite_vi(void)
{
    Suite *s = suite_create("vi");
    TCase *tc = tcase_create("targets");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_target_gradients, 0,
                        (int)(sizeof targets / sizeof targets[0]));
    tcase_add_test(tc, test_known_normalisers);
    tcase_add_test(tc, test_duplicate_target_plugin);
    suite_add_tcase(s, tc);
    tc = tcase_create("log_z");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_importance_stats_by_hand);
    tcase_add_test(tc, test_log_z_untrained_proposal);
    suite_add_tcase(s, tc);
    tc = tcase_create("elbo");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_elbo_gradient_fd);
    tcase_add_test(tc, test_elbo_blocks_any_order);
    suite_add_tcase(s, tc);
    tc = tcase_create("refusals");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fit_refusals);
    suite_add_tcase(s, tc);
    return s;
}

/* The fits take seconds natively: a suite of their own, run under the
 * sanitizers but not valgrind (tests/valgrind.sh). */
Suite *suite_vi_fit(void)
{
    Suite *s = suite_create("vi_fit");
    TCase *tc = tcase_create("fits");
    /* wall-clock: ~1 s of CPU per fit natively, a few under the
     * sanitizers, but the test machines are shared */
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fit_gmm_log_z);
    tcase_add_loop_test(tc, test_fit_energies, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}
