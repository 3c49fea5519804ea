/* test_nologdet.c - passes that ask for no log-det (flow_call.skip_logdet,
 * ABI 1.10): every bundled layer gives the same bits with and without it,
 * and the host sets the flag exactly where no log-det is read. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
#include "model_util.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = tu_ctx_with_plugins();
    ck_assert_msg(flow_plugin_load(ctx, test_plugin("ldbugs")) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

/* One small model per bundled layer type (and solver where it matters):
 * each body follows `flow NAME {`. */
typedef struct spec_case {
    const char *name;
    const char *body;
} spec_case;

static const spec_case cases[] = {
    /* fixed steps: the trace is left out (net_div without tangents) */
    {"ode_rk4", "input x : real[2];"
     "ode(hidden = [16, 16], activation = tanh, time = concat,"
     "    solver = rk4(steps = 4), trace = exact, gradient = backprop);"},
    /* probes drawn in evaluation too: the stream must not change */
    {"ode_rk4_hutchinson", "input x : real[3];"
     "ode(hidden = [8], activation = softplus, time = concatsquash,"
     "    solver = rk4(steps = 3), trace = hutchinson(in_eval = true),"
     "    gradient = adjoint);"},
    /* adaptive steps: the trace stays (its column is in the step
     * control) */
    {"ode_dopri5", "input x : real[2];"
     "ode(hidden = [16], activation = tanh,"
     "    solver = dopri5(rtol = 1e-4, atol = 1e-4));"},
    {"residual", "input x : real[3];"
     "residual(hidden = [16], logdet = exact);"
     "permute(order = reverse);"
     "residual(hidden = [16], activation = tanh,"
     "         logdet = series(terms = 4));"},
    {"spline_coupling", "input x : real[4];"
     "repeat 2 as i {"
     "  coupling(mask = parity(i), hidden = [16],"
     "           transformer = spline(bins = 4, bound = 3));"
     "}"},
    {"affine_coupling_batchnorm", "input x : real[4];"
     "coupling(mask = parity(0), hidden = [16], transformer = affine);"
     "batchnorm;"
     "coupling(mask = parity(1), hidden = [16], transformer = additive);"
     "permute(order = random(seed = 3));"},
    {"maf", "input x : real[4];"
     "maf(hidden = [16, 16], transformer = spline(bins = 4));"
     "maf(hidden = [16, 16], order = reverse, transformer = affine);"},
    {"iaf", "input x : real[4];"
     "iaf(hidden = [16, 16], transformer = spline(bins = 4));"
     "iaf(hidden = [16, 16], order = reverse, transformer = affine);"},
    {"actnorm_linear", "input x : real[3];"
     "actnorm; linear; actnorm;"},
    {"image", "input x : real[1, 4, 4] in [0, 255];"
     "dequantize(levels = 256);"
     "logit(alpha = 0.05);"
     "squeeze(factor = 2);"
     "actnorm; conv1x1;"
     "coupling(mask = channel, net = conv(hidden = 4),"
     "         transformer = affine(scale = sigmoid));"
     "exit 2 -> z1 ~ normal;"
     "actnorm; conv1x1;"},
};

static flow_model *build(const char *name, const char *body,
                         flow_compilation **comp)
{
    char src[2048];
    snprintf(src, sizeof src, "flow %s { %s output z ~ normal; }", name,
             body);
    return tu_build_model(ctx, "nologdet.flow", src, 7, comp);
}

/* Parameters moved off their initial values (identity-initialised nets,
 * unit scales) by up to +-scale/2, reproducibly. */
static void perturb(flow_model *m, double scale, unsigned seed)
{
    flow_real *p = flow_model_params(m);
    srand(seed);
    for (size_t i = 0; i < flow_model_num_params(m); i++)
        p[i] = (flow_real)(p[i] + scale * ((double)rand() / RAND_MAX - 0.5));
}

/* a and b hold the same bits; the first difference is reported */
static void same_bits(const char *name, const char *what, size_t th,
                      const flow_real *a, const flow_real *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(&a[i], &b[i], sizeof a[i]) == 0,
                      "%s, %zu thread(s), %s: value %zu differs: %.9g with "
                      "the log-det, %.9g without", name, th, what, i,
                      (double)a[i], (double)b[i]);
}

static void all_finite(const char *name, const char *what,
                       const flow_real *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite((double)v[i]), "%s: %s[%zu] = %g", name,
                      what, i, (double)v[i]);
}

enum { N = 80 };    /* one block of the 256-row grid */

/* Sampling, the inverse and the forward of case k give the same bits
 * with and without log-densities, and draw the same numbers. */
static void check_case(const spec_case *sc, size_t th)
{
    flow_compilation *comp;
    flow_model *m = build(sc->name, sc->body, &comp);
    size_t d = flow_model_dim(m);
    flow_real *x1 = malloc(N * d * sizeof *x1), *x2 = malloc(N * d *
                                                             sizeof *x2);
    flow_real *z = malloc(N * d * sizeof *z), lp[N];
    uint64_t r0[6], r1[6], r2[6];
    double nfe1, nfe2;
    ck_assert(x1 && x2 && z);
    perturb(m, 0.3, 11);
    ck_assert_int_eq(flow_model_set_threads(m, th), FLOW_OK);
    flow_model_get_rng(m, r0);
    ck_assert_msg(flow_model_sample(m, N, NULL, x1, lp) == FLOW_OK, "%s: %s",
                  sc->name, flow_errmsg(ctx));
    nfe1 = flow_model_nfe(m);
    flow_model_get_rng(m, r1);
    all_finite(sc->name, "logp", lp, N);
    all_finite(sc->name, "x", x1, N * d);
    flow_model_set_rng(m, r0);
    ck_assert_msg(flow_model_sample(m, N, NULL, x2, NULL) == FLOW_OK,
                  "%s: %s", sc->name, flow_errmsg(ctx));
    nfe2 = flow_model_nfe(m);
    flow_model_get_rng(m, r2);
    same_bits(sc->name, "sample", th, x1, x2, N * d);
    ck_assert_msg(memcmp(r1, r2, sizeof r1) == 0, "%s: the random stream "
                  "moved differently without log-densities", sc->name);
    /* the same solver steps (ODE layers; -1 for the others) */
    ck_assert_double_eq(nfe1, nfe2);

    /* the inverse at given latents */
    for (size_t i = 0; i < N * d; i++)
        z[i] = (flow_real)(1.3 * sin(0.37 * (double)i + 0.2));
    flow_model_set_rng(m, r0);
    ck_assert_msg(flow_model_inverse(m, N, z, NULL, x1, lp) == FLOW_OK,
                  "%s: %s", sc->name, flow_errmsg(ctx));
    all_finite(sc->name, "inverse logdet", lp, N);
    flow_model_set_rng(m, r0);
    ck_assert_msg(flow_model_inverse(m, N, z, NULL, x2, NULL) == FLOW_OK,
                  "%s: %s", sc->name, flow_errmsg(ctx));
    same_bits(sc->name, "inverse", th, x1, x2, N * d);

    /* the forward at those points (inside every layer's domain) */
    memcpy(z, x1, N * d * sizeof *z);
    flow_model_set_rng(m, r0);
    ck_assert_msg(flow_model_forward(m, N, z, NULL, x1, lp) == FLOW_OK,
                  "%s: %s", sc->name, flow_errmsg(ctx));
    all_finite(sc->name, "forward logdet", lp, N);
    flow_model_set_rng(m, r0);
    ck_assert_msg(flow_model_forward(m, N, z, NULL, x2, NULL) == FLOW_OK,
                  "%s: %s", sc->name, flow_errmsg(ctx));
    same_bits(sc->name, "forward", th, x1, x2, N * d);
    free(x1);
    free(x2);
    free(z);
    flow_model_free(m);
    flow_compile_free(comp);
}

START_TEST(test_same_bits_without_logdet)
{
    for (size_t th = 1; th <= 2; th++)
        check_case(&cases[_i], th);
}
END_TEST

/* The temperature path (flow_model_sample_tempered) skips too, with the
 * bits of the tempered draw with log-densities. */
START_TEST(test_tempered_same_bits)
{
    flow_compilation *comp;
    flow_model *m = build(cases[0].name, cases[0].body, &comp);
    flow_real x1[N * 2], x2[N * 2], lp[N];
    uint64_t r0[6];
    perturb(m, 0.3, 5);
    flow_model_get_rng(m, r0);
    ck_assert_int_eq(flow_model_sample_tempered(m, N, 0.7, NULL, x1, lp),
                     FLOW_OK);
    flow_model_set_rng(m, r0);
    ck_assert_int_eq(flow_model_sample_tempered(m, N, 0.7, NULL, x2, NULL),
                     FLOW_OK);
    same_bits(cases[0].name, "tempered sample", 1, x1, x2, N * 2);
    all_finite(cases[0].name, "logp", lp, N);
    flow_model_free(m);
    flow_compile_free(comp);
}
END_TEST

/* skip_logdet calls of ld_lazy so far (both layers) */
static double skipped(const flow_model *m)
{
    double sum = 0;
    for (size_t i = 0; i < flow_model_num_layers(m); i++) {
        const char *name;
        double v;
        if (flow_model_layer_stat(m, i, &name, &v)
            && strcmp(name, "skipped") == 0)
            sum += v;
    }
    return sum;
}

/* The host sets flow_call.skip_logdet exactly on the calls whose log-det
 * nobody reads: ld_lazy counts them and writes NaN there, so a log-det
 * read after all would show as NaN. */
START_TEST(test_flag_set_where_no_logdet_is_read)
{
    enum { D = 3 };
    flow_compilation *comp;
    flow_model *m = build("lazy", "input x : real[3]; ld_lazy;"
                          "coupling(mask = parity(0), hidden = [8]);"
                          "ld_lazy;", &comp);
    flow_real x[N * D], z[N * D], ld[N], *g;
    double mean;
    g = malloc(flow_model_num_params(m) * sizeof *g);
    ck_assert_ptr_nonnull(g);
    perturb(m, 0.2, 3);
    /* densities asked for: never set */
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, ld), FLOW_OK);
    all_finite("lazy", "sample logp", ld, N);
    ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, ld), FLOW_OK);
    all_finite("lazy", "log_prob", ld, N);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, ld), FLOW_OK);
    all_finite("lazy", "forward logdet", ld, N);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, x, ld), FLOW_OK);
    all_finite("lazy", "inverse logdet", ld, N);
    ck_assert_double_eq(skipped(m), 0);
    /* none asked for: once per layer and call on one thread */
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 2);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, x, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 4);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 6);
    ck_assert_int_eq(flow_model_data_init(m, N, x, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 8);
    /* on two threads, once per layer and block of the 256-row grid (N
     * rows: one block, one call) */
    ck_assert_int_eq(flow_model_set_threads(m, 2), FLOW_OK);
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 10);
    /* gradients and training mode: never */
    ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &mean, g),
                     FLOW_OK);
    ck_assert_msg(isfinite(mean), "mean log-likelihood %g", mean);
    ck_assert_int_eq(flow_model_inverse_grad(m, N, z, NULL, x, NULL, g,
                                             NULL), FLOW_OK);
    flow_model_set_training(m, 1);
    ck_assert_int_eq(flow_model_sample(m, N, NULL, x, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, NULL), FLOW_OK);
    ck_assert_double_eq(skipped(m), 10);
    free(g);
    flow_model_free(m);
    flow_compile_free(comp);
}
END_TEST

Suite *suite_nologdet(void)
{
    Suite *s = suite_create("nologdet");
    TCase *tc = tcase_create("nologdet");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_same_bits_without_logdet, 0,
                        (int)(sizeof cases / sizeof cases[0]));
    tcase_add_test(tc, test_tempered_same_bits);
    tcase_add_test(tc, test_flag_set_where_no_logdet_is_read);
    suite_add_tcase(s, tc);
    return s;
}
