/* test_blocks.c - the block passes (model_loglik_grad_blocks, and a fit's
 * model_inverse_grad_blocks through vi_elbo_blocks): every block's
 * gradient and sum the same bits for any thread count and equal to a
 * pass over that block alone; stochastic layers draw per block;
 * batchnorm with the whole batch's statistics equals the plain pass. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flowc.h"
#include "../runtime/model.h"
#include "../runtime/vi.h"
#include "model_util.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = tu_ctx_with_plugins();
}

static void teardown(void) { flow_ctx_free(ctx); }

static flow_model *build(const char *src)
{
    return tu_build_model(ctx, "b.flow", src, 7, NULL);
}

/* Couplings, a MADE (its gradient mapped back by finish_grad), an LU
 * linear layer (finish_grad too) and an exit: every kind of per-block
 * gradient work. */
static const char det_spec[] =
    "flow blk {\n"
    "  input x : real[4];\n"
    "  actnorm;\n"
    "  coupling(mask = parity(0), hidden = [24, 24], transformer = affine);\n"
    "  linear;\n"
    "  maf(hidden = [32], transformer = affine);\n"
    "  exit 1 -> z1 ~ normal;\n"
    "  coupling(mask = parity(1), hidden = [16], transformer = spline);\n"
    "  output z ~ normal;\n"
    "}\n";

static const char dq_spec[] =
    "flow dq {\n"
    "  input x : real[4] in [0, 255];\n"
    "  dequantize(levels = 256);\n"
    "  logit(alpha = 0.05);\n"
    "  coupling(mask = parity(0), hidden = [16], transformer = affine);\n"
    "  dequantize(levels = 2);\n"
    "  output z ~ normal;\n"
    "}\n";

enum { N = 100, D = 4, R = 32, NB = (N + R - 1) / R };

static void fill(flow_real *x, int integers)
{
    for (int i = 0; i < N * D; i++)
        x[i] = integers ? (flow_real)((i * 37) % 200)
                        : (flow_real)(1.5 * sin(0.37 * i) + 0.2 * (i % D));
}

/* The block pass on T = 1, 2, 3 threads: the same bits; block k equal to
 * model_loglik_grad_w on its rows alone (on stream k where the model
 * draws). */
static void check_blocks(const char *src, int stochastic)
{
    flow_model *m = build(src);
    size_t np = flow_model_num_params(m);
    flow_real x[N * D], *g[3], *one = malloc((np + 1) * sizeof *one);
    double lp[3][NB], lone;
    uint64_t streams[NB * 6];
    fill(x, stochastic);
    for (size_t k = 0; k < NB; k++)
        vi_block_stream(streams + 6 * k, 0x5eedULL, k + 3);
    flow_model_set_training(m, 1);
    for (int t = 0; t < 3; t++) {
        g[t] = malloc(NB * np * sizeof *g[t]);
        ck_assert_int_eq(flow_model_set_threads(m, (size_t)t + 1), FLOW_OK);
        ck_assert_msg(model_loglik_grad_blocks(m, N, x, NULL, R, 1.0 / N,
                                               stochastic ? streams : NULL,
                                               NULL, N, lp[t], g[t])
                      == FLOW_OK,
                      "%s", flow_errmsg(ctx));
        if (t) {
            ck_assert_msg(memcmp(g[t], g[0], NB * np * sizeof *g[0]) == 0,
                          "%d threads: other gradient bits", t + 1);
            ck_assert_msg(memcmp(lp[t], lp[0], sizeof lp[0]) == 0,
                          "%d threads: other log-density bits", t + 1);
        }
    }
    ck_assert_int_eq(flow_model_set_threads(m, 1), FLOW_OK);
    for (size_t k = 0; k < NB; k++) {
        size_t r0 = k * R, nr = N - r0 < R ? N - r0 : R;
        if (stochastic)
            flow_model_set_rng(m, streams + 6 * k);
        /* the slot mapped by the layers' finish_grad, as alone */
        ck_assert_int_eq(model_blocks_finish(m, nr, g[0] + k * np), FLOW_OK);
        ck_assert_int_eq(model_loglik_grad_w(m, nr, x + r0 * D, NULL,
                                             1.0 / N, &lone, one), FLOW_OK);
        ck_assert_msg(memcmp(&lone, &lp[0][k], sizeof lone) == 0,
                      "block %zu: log-density sum %.17g, alone %.17g", k,
                      lp[0][k], lone);
        for (size_t j = 0; j < np; j++)
            ck_assert_msg(memcmp(&one[j], &g[0][k * np + j], sizeof *one)
                          == 0, "block %zu, parameter %zu of %zu: %.9g in "
                          "the block pass, %.9g alone", k, j, np,
                          (double)g[0][k * np + j], (double)one[j]);
    }
    for (int t = 0; t < 3; t++)
        free(g[t]);
    free(one);
    flow_model_free(m);
}

START_TEST(test_block_pass_any_threads)
{
    check_blocks(det_spec, 0);
}
END_TEST

START_TEST(test_block_pass_streams)
{
    check_blocks(dq_spec, 1);
}
END_TEST

/* A drawing model needs its streams. */
START_TEST(test_block_pass_needs_streams)
{
    flow_model *m = build(dq_spec);
    flow_real x[N * D], *g = malloc(NB * flow_model_num_params(m) *
                                     sizeof *g);
    double lp[NB];
    fill(x, 1);
    flow_model_set_training(m, 1);
    ck_assert_int_eq(model_loglik_grad_blocks(m, N, x, NULL, R, 1.0 / N,
                                              NULL, NULL, N, lp, g),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "no streams") != NULL, "%s",
                  flow_errmsg(ctx));
    free(g);
    flow_model_free(m);
}
END_TEST

static const char bn_spec[] =
    "flow bn {\n"
    "  input x : real[4];\n"
    "  coupling(mask = parity(0), hidden = [16], transformer = affine);\n"
    "  batchnorm;\n"
    "  coupling(mask = parity(1), hidden = [16], transformer = affine);\n"
    "  batchnorm(momentum = 0.3);\n"
    "  output z ~ normal;\n"
    "}\n";

/* Batchnorm in the block pass normalises with the whole batch's
 * statistics (summed over the blocks), so the blocks' gradients add up
 * to the plain pass's over the whole batch, the log-densities too, and
 * the running averages get the plain pass's one update; the sums differ
 * from the plain pass's only in their order of additions.  And the bits
 * do not depend on the thread count. */
START_TEST(test_block_pass_batchnorm_global)
{
    flow_model *m = build(bn_spec);
    size_t np = flow_model_num_params(m), nbuf = flow_model_num_buffers(m);
    flow_real x[N * D], *g = malloc(NB * np * sizeof *g);
    flow_real *g2 = malloc(NB * np * sizeof *g2);
    flow_real *plain = malloc(np * sizeof *plain);
    flow_real *buf0 = malloc(nbuf * sizeof *buf0);
    flow_real *bufb = malloc(nbuf * sizeof *bufb);
    double lp[NB], lp2[NB], mean, total = 0, worst = 0;
    const double tol = FLOW_REAL_DOUBLE ? 1e-10 : 2e-4;
    fill(x, 0);
    for (size_t j = 0; j < np; j++)     /* gamma, beta and nets off zero */
        flow_model_params(m)[j] = (flow_real)(0.2 * sin(1.7 * (double)j));
    memcpy(buf0, flow_model_buffers(m), nbuf * sizeof *buf0);
    flow_model_set_training(m, 1);
    ck_assert_msg(model_loglik_grad_blocks(m, N, x, NULL, R, 1.0 / N, NULL,
                                           NULL, N, lp, g) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    memcpy(bufb, flow_model_buffers(m), nbuf * sizeof *bufb);
    memcpy(flow_model_buffers(m), buf0, nbuf * sizeof *buf0);
    ck_assert_int_eq(flow_model_set_threads(m, 2), FLOW_OK);
    ck_assert_int_eq(model_loglik_grad_blocks(m, N, x, NULL, R, 1.0 / N,
                                              NULL, NULL, N, lp2, g2),
                     FLOW_OK);
    ck_assert_msg(memcmp(g, g2, NB * np * sizeof *g) == 0 &&
                  memcmp(lp, lp2, sizeof lp) == 0,
                  "2 threads: other bits");
    ck_assert_msg(memcmp(flow_model_buffers(m), bufb, nbuf * sizeof *bufb)
                  == 0, "2 threads: other running averages");
    ck_assert_int_eq(flow_model_set_threads(m, 1), FLOW_OK);
    memcpy(flow_model_buffers(m), buf0, nbuf * sizeof *buf0);
    ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &mean, plain),
                     FLOW_OK);
    for (size_t k = 0; k < NB; k++)
        total += lp[k];
    ck_assert_double_eq_tol(total / N, mean, tol * (1 + fabs(mean)));
    for (size_t j = 0; j < np; j++) {
        double s = 0;
        for (size_t k = 0; k < NB; k++)     /* no finish_grad here */
            s += g[k * np + j];
        ck_assert_msg(fabs(s - plain[j]) <= tol * (1 + fabs(plain[j])),
                      "parameter %zu of %zu: blocks sum to %.9g, the plain "
                      "pass %.9g", j, np, s, (double)plain[j]);
        if (fabs(plain[j]) > worst)
            worst = fabs(plain[j]);
    }
    ck_assert_msg(worst > 1e-2, "a gradient worth comparing (largest %g)",
                  worst);
    for (size_t j = 0; j < nbuf; j++)
        ck_assert_msg(fabs(bufb[j] - flow_model_buffers(m)[j])
                      <= tol * (1 + fabs(bufb[j])),
                      "buffer %zu: %.9g after the block pass, %.9g after the "
                      "plain pass", j, (double)bufb[j],
                      (double)flow_model_buffers(m)[j]);
    free(g);
    free(g2);
    free(plain);
    free(buf0);
    free(bufb);
    flow_model_free(m);
}
END_TEST

/* Fits: an unconditional flow with parameter-free bases, with the
 * layers of det_spec that map their gradient in finish_grad (iaf, LU
 * linear), a coupling and an exit; and one whose ODE draws Hutchinson
 * probes in its training-mode inverse. */
static const char fit_spec[] =
    "flow fit {\n"
    "  input x : real[4];\n"
    "  iaf(hidden = [32], transformer = affine);\n"
    "  linear;\n"
    "  exit 1 -> z1 ~ normal;\n"
    "  coupling(mask = parity(0), hidden = [16], transformer = affine);\n"
    "  iaf(hidden = [16, 16], transformer = affine, order = reverse);\n"
    "  output z ~ normal;\n"
    "}\n";

static const char fit_ode_spec[] =
    "flow fitode {\n"
    "  input x : real[4];\n"
    "  coupling(mask = parity(0), hidden = [16], transformer = affine);\n"
    "  ode(hidden = [16], time = concat, solver = rk4(steps = 3),\n"
    "      trace = hutchinson, gradient = backprop);\n"
    "  output z ~ normal;\n"
    "}\n";

/* log p~(x) = -|x - 0.3|^2 / 2 - x_0 x_1 / 4: a correlated Gaussian,
 * so that every parameter has a gradient. */
static int gauss_target(void *arg, size_t n, size_t dim, const flow_real *x,
                        flow_real *logp, flow_real *grad, char *err,
                        size_t err_cap)
{
    (void)arg, (void)err, (void)err_cap;
    for (size_t r = 0; r < n; r++) {
        const flow_real *xr = x + r * dim;
        double s = -0.25 * (double)xr[0] * (double)xr[1];
        for (size_t i = 0; i < dim; i++) {
            double u = (double)xr[i] - 0.3;
            s -= 0.5 * u * u;
            if (grad)
                grad[r * dim + i] = (flow_real)(-u);
        }
        if (grad) {
            grad[r * dim] -= (flow_real)(0.25 * xr[1]);
            grad[r * dim + 1] -= (flow_real)(0.25 * xr[0]);
        }
        logp[r] = (flow_real)s;
    }
    return 0;
}

/* The fit's block pass (vi_elbo_blocks) of a batch of N samples in
 * blocks of R on T = 1, 2, 3 threads: the same bits; block k's sum and
 * (mapped by model_blocks_finish) its slot the bits of vi_elbo_block on
 * block k alone; the slots' sum, mapped once, that of the blocks' own
 * gradients to rounding; and the model's stream left as it was. */
static void check_fit_blocks(const char *src, double beta)
{
    flow_model *m = build(src);
    flow_target *tg = NULL;
    size_t np = flow_model_num_params(m);
    flow_real *g[3], *one = malloc((np + 1) * sizeof *one);
    flow_real *sum = calloc(np + 1, sizeof *sum);
    double *ref = calloc(np + 1, sizeof *ref);
    double sums[3][NB], lone, worst = 0, big = 0;
    const double tol = FLOW_REAL_DOUBLE ? 1e-12 : 1e-5;
    uint64_t key = 0x5eedf17ULL, before[6], after[6];
    ck_assert_int_eq(flow_target_new_callback(ctx, D, gauss_target, NULL,
                                              NAN, &tg), FLOW_OK);
    for (size_t j = 0; j < np; j++)     /* off the identity's zeros */
        flow_model_params(m)[j] += (flow_real)(0.05 * sin(0.9 * (double)j));
    flow_model_set_training(m, 1);
    flow_model_get_rng(m, before);
    for (int t = 0; t < 3; t++) {
        g[t] = malloc(NB * np * sizeof *g[t]);
        ck_assert_int_eq(flow_model_set_threads(m, (size_t)t + 1), FLOW_OK);
        ck_assert_msg(vi_elbo_blocks(m, tg, key, 0, N, R, NULL, N, beta,
                                     sums[t], g[t]) == FLOW_OK,
                      "%s", flow_errmsg(ctx));
        flow_model_get_rng(m, after);
        ck_assert_msg(memcmp(before, after, sizeof after) == 0,
                      "%d threads: the model's stream moved", t + 1);
        if (t) {
            ck_assert_msg(memcmp(g[t], g[0], NB * np * sizeof *g[0]) == 0,
                          "%d threads: other gradient bits", t + 1);
            ck_assert_msg(memcmp(sums[t], sums[0], sizeof sums[0]) == 0,
                          "%d threads: other ELBO bits", t + 1);
        }
    }
    ck_assert_int_eq(flow_model_set_threads(m, 1), FLOW_OK);
    for (size_t k = 0; k < NB; k++)
        for (size_t j = 0; j < np; j++)
            sum[j] += g[0][k * np + j];
    ck_assert_int_eq(model_blocks_finish(m, N, sum), FLOW_OK);
    for (size_t k = 0; k < NB; k++) {
        size_t r0 = k * R, nr = N - r0 < R ? N - r0 : R;
        ck_assert_int_eq(vi_elbo_block(m, tg, key, k, nr, N, beta, &lone,
                                       one), FLOW_OK);
        ck_assert_double_finite(lone);
        ck_assert_msg(memcmp(&lone, &sums[0][k], sizeof lone) == 0,
                      "block %zu: ELBO sum %.17g, alone %.17g", k,
                      sums[0][k], lone);
        for (size_t j = 0; j < np; j++)
            ref[j] += one[j];
        ck_assert_int_eq(model_blocks_finish(m, nr, g[0] + k * np),
                         FLOW_OK);
        for (size_t j = 0; j < np; j++)
            ck_assert_msg(memcmp(&one[j], &g[0][k * np + j], sizeof *one)
                          == 0, "block %zu, parameter %zu of %zu: %.9g in "
                          "the block pass, %.9g alone", k, j, np,
                          (double)g[0][k * np + j], (double)one[j]);
    }
    for (size_t j = 0; j < np; j++) {
        double e = fabs((double)sum[j] - ref[j]);
        worst = e > worst ? e : worst;
        big = fabs(ref[j]) > big ? fabs(ref[j]) : big;
    }
    ck_assert_msg(big > 1e-2, "a gradient worth comparing (largest %g)",
                  big);
    ck_assert_msg(worst <= tol * big, "the slots' sum mapped once is off "
                  "the blocks' gradients by %g (largest %g)", worst, big);
    for (int t = 0; t < 3; t++)
        free(g[t]);
    free(one);
    free(sum);
    free(ref);
    flow_target_free(tg);
    flow_model_free(m);
}

START_TEST(test_fit_blocks_any_threads)
{
    check_fit_blocks(fit_spec, 1.0);
}
END_TEST

START_TEST(test_fit_blocks_streams)
{
    check_fit_blocks(fit_ode_spec, 0.4);
}
END_TEST

/* A refused call (blocks of 0 rows) says why and leaves the model's
 * stream where it was. */
START_TEST(test_fit_blocks_refusal)
{
    flow_model *m = build(fit_spec);
    flow_target *tg = NULL;
    flow_real *g = malloc(8 * flow_model_num_params(m) * sizeof *g);
    double sums[8];
    uint64_t before[6], after[6];
    ck_assert_int_eq(flow_target_new_callback(ctx, D, gauss_target, NULL,
                                              NAN, &tg), FLOW_OK);
    flow_model_get_rng(m, before);
    flow_model_set_training(m, 1);
    ck_assert_int_eq(vi_elbo_blocks(m, tg, 1, 0, N, 0, NULL, N, 1.0, sums,
                                    g), FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "blocks of 0 rows") != NULL,
                  "%s", flow_errmsg(ctx));
    flow_model_get_rng(m, after);
    ck_assert_msg(memcmp(before, after, sizeof after) == 0,
                  "a refused call moved the model's stream");
    free(g);
    flow_target_free(tg);
    flow_model_free(m);
}
END_TEST

Suite *suite_blocks(void)
{
    Suite *s = suite_create("blocks");
    TCase *tc = tcase_create("blocks");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_block_pass_any_threads);
    tcase_add_test(tc, test_block_pass_streams);
    tcase_add_test(tc, test_block_pass_needs_streams);
    tcase_add_test(tc, test_block_pass_batchnorm_global);
    tcase_add_test(tc, test_fit_blocks_any_threads);
    tcase_add_test(tc, test_fit_blocks_streams);
    tcase_add_test(tc, test_fit_blocks_refusal);
    suite_add_tcase(s, tc);
    return s;
}
