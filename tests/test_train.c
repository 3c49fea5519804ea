/* test_train.c - training: convergence to the closed-form MLE, bit-identical
 * resume, schedules, clipping, early stopping, divergence handling. */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "../runtime/rng.h"
#include "../runtime/train.h"
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

/* actnorm + standard normal base on D dims: a diagonal Gaussian model. */
static flow_model *gauss_model(size_t d)
{
    flow_attr_value eps;
    flow_model *m = flow_model_new(ctx, d, 0);
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 0, 0,
                                          0), FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 3), FLOW_OK);
    return m;
}

/* n rows of dimension 2 from N((1, -2), diag(0.5^2, 3^2)), fixed seed. */
static flow_real *gauss_data(size_t n)
{
    flow_real *x = malloc(n * 2 * sizeof *x);
    srand(17);
    for (size_t r = 0; r < n; r++)
        for (int i = 0; i < 2; i++) {
            double u1 = (rand() + 1.0) / (RAND_MAX + 2.0);
            double u2 = (rand() + 1.0) / (RAND_MAX + 2.0);
            double g = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
            x[r * 2 + i] = (flow_real)(i ? -2 + 3 * g : 1 + 0.5 * g);
        }
    return x;
}

START_TEST(test_converges_to_gaussian_mle)
{
    enum { N = 2000 };
    flow_real *x = gauss_data(N), *p;
    flow_model *m = gauss_model(2);
    flow_train_config cfg;
    flow_trainer *t;
    double mu[2] = {0, 0}, var[2] = {0, 0}, loss, mean, se, want = 0;
    flow_train_config_default(&cfg);
    cfg.batch = 256;
    cfg.lr = 0.05;
    t = flow_trainer_new(m, &cfg, x, NULL, N);
    ck_assert_ptr_nonnull(t);
    for (int s = 0; s < 3000; s++)
        ck_assert_int_eq(flow_trainer_step(t, &loss), FLOW_OK);
    for (size_t r = 0; r < N; r++)
        for (int i = 0; i < 2; i++)
            mu[i] += x[r * 2 + i] / N;
    for (size_t r = 0; r < N; r++)
        for (int i = 0; i < 2; i++)
            var[i] += (x[r * 2 + i] - mu[i]) * (x[r * 2 + i] - mu[i]) / N;
    p = flow_model_params(m);
    /* MLE of z = x e^s + t with z ~ N(0, 1): e^-s = sd, t = -mu / sd */
    for (int i = 0; i < 2; i++) {
        double sd = sqrt(var[i]);
        ck_assert_double_eq_tol(exp(-p[i]), sd, 0.02 * sd);
        ck_assert_double_eq_tol(p[2 + i], -mu[i] / sd, 0.02);
        want += -0.5 * log(2 * M_PI * var[i]) - 0.5;
    }
    ck_assert_int_eq(flow_model_evaluate(m, N, x, NULL, 500, &mean, &se),
                     FLOW_OK);
    ck_assert_double_eq_tol(mean, want, 2e-3);   /* the MLE's log-lik */
    ck_assert_double_gt(se, 0.01);
    ck_assert_double_lt(se, 0.1);
    flow_trainer_free(t);
    flow_model_free(m);
    free(x);
}
END_TEST

/* 30 steps straight == 13 steps, save, fresh objects, restore, 17 steps. */
START_TEST(test_resume_is_bit_identical)
{
    enum { N = 300 };
    flow_real *x = gauss_data(N);
    flow_model *a = gauss_model(2), *b, *c;
    flow_train_config cfg;
    flow_trainer *ta, *tb, *tc;
    flow_train_state st;
    uint64_t rng[6];
    size_t np = flow_model_num_params(a);
    flow_train_config_default(&cfg);
    cfg.batch = 64;                 /* 5 steps an epoch, the last partial */
    cfg.lr = 0.01;
    cfg.seed = 99;
    cfg.schedule = FLOW_LR_COSINE;
    cfg.total_steps = 30;
    ta = flow_trainer_new(a, &cfg, x, NULL, N);
    for (int s = 0; s < 30; s++)
        ck_assert_int_eq(flow_trainer_step(ta, NULL), FLOW_OK);

    b = gauss_model(2);
    tb = flow_trainer_new(b, &cfg, x, NULL, N);
    for (int s = 0; s < 13; s++)
        ck_assert_int_eq(flow_trainer_step(tb, NULL), FLOW_OK);
    flow_trainer_get_state(tb, &st);
    flow_model_get_rng(b, rng);
    c = gauss_model(2);
    tc = flow_trainer_new(c, &cfg, x, NULL, N);
    memcpy(flow_model_params(c), flow_model_params(b), np * sizeof(flow_real));
    memcpy(flow_trainer_adam_m(tc), flow_trainer_adam_m(tb),
           np * sizeof(flow_real));
    memcpy(flow_trainer_adam_v(tc), flow_trainer_adam_v(tb),
           np * sizeof(flow_real));
    ck_assert_int_eq(flow_trainer_set_state(tc, &st), FLOW_OK);
    flow_model_set_rng(c, rng);
    for (int s = 0; s < 17; s++)
        ck_assert_int_eq(flow_trainer_step(tc, NULL), FLOW_OK);
    ck_assert_mem_eq(flow_model_params(a), flow_model_params(c),
                     np * sizeof(flow_real));
    ck_assert_mem_eq(flow_trainer_adam_v(ta), flow_trainer_adam_v(tc),
                     np * sizeof(flow_real));
    /* and different from a run with another seed */
    flow_trainer_free(tb);
    flow_model_free(b);
    cfg.seed = 100;
    b = gauss_model(2);
    tb = flow_trainer_new(b, &cfg, x, NULL, N);
    for (int s = 0; s < 30; s++)
        ck_assert_int_eq(flow_trainer_step(tb, NULL), FLOW_OK);
    ck_assert_mem_ne(flow_model_params(a), flow_model_params(b),
                     np * sizeof(flow_real));
    flow_trainer_free(ta);
    flow_trainer_free(tb);
    flow_trainer_free(tc);
    flow_model_free(a);
    flow_model_free(b);
    flow_model_free(c);
    free(x);
}
END_TEST

START_TEST(test_schedules)
{
    flow_real x[4] = {0, 1, 2, 3};
    flow_model *m = gauss_model(1);
    flow_train_config cfg;
    flow_trainer *t;
    flow_train_config_default(&cfg);
    cfg.lr = 0.1;
    cfg.schedule = FLOW_LR_COSINE;
    cfg.warmup_steps = 4;
    cfg.total_steps = 24;
    cfg.batch = 2;
    t = flow_trainer_new(m, &cfg, x, NULL, 4);
    /* warm-up: 0.025, 0.05, 0.075, 0.1; then cosine over 20 steps */
    for (int s = 0; s < 4; s++) {
        ck_assert_double_eq_tol(flow_trainer_lr(t), 0.1 * (s + 1) / 4, 1e-12);
        ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    }
    ck_assert_double_eq_tol(flow_trainer_lr(t), 0.1, 1e-12);
    for (int s = 0; s < 10; s++)
        ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    ck_assert_double_eq_tol(flow_trainer_lr(t), 0.05, 1e-12);
    for (int s = 0; s < 10; s++)
        ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    ck_assert_double_eq_tol(flow_trainer_lr(t), 0.0, 1e-12);
    flow_trainer_free(t);
    flow_model_free(m);
}
END_TEST

/* With clipping the first Adam moment is (1 - beta1) times the clipped
 * gradient, whose norm is the clip value. */
START_TEST(test_clipping)
{
    enum { N = 64 };
    flow_real *x = gauss_data(N);
    flow_model *m = gauss_model(2);
    flow_train_config cfg;
    flow_trainer *t;
    double norm = 0;
    flow_train_config_default(&cfg);
    cfg.clip_norm = 1e-3;
    cfg.batch = N;
    t = flow_trainer_new(m, &cfg, x, NULL, N);
    ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    for (size_t i = 0; i < flow_model_num_params(m); i++)
        norm += (double)flow_trainer_adam_m(t)[i] * flow_trainer_adam_m(t)[i];
    ck_assert_double_eq_tol(sqrt(norm), 0.1 * 1e-3, 1e-7);
    flow_trainer_free(t);
    flow_model_free(m);
    free(x);
}
END_TEST

/* Subnormal Adam moments are stored as zero (train.c, FLUSH_SUB): with
 * the gradient clipped to 5 x the smallest normal, every first moment
 * (1 - beta1) g is below it, every second moment underflows; both must
 * read exactly 0 and the parameters stay as they were (the update is
 * 0 / eps).  Without the flush m would hold the subnormals. */
START_TEST(test_subnormal_moments_flushed)
{
    enum { N = 64 };
    flow_real *x = gauss_data(N);
    flow_model *m = gauss_model(2);
    size_t np = flow_model_num_params(m);
    flow_real *p0 = malloc(np * sizeof *p0);
    flow_train_config cfg;
    flow_trainer *t;
    size_t nonzero_grad = 0;
#if FLOW_REAL_DOUBLE
    const double tiny = DBL_MIN;
#else
    const double tiny = FLT_MIN;
#endif
    flow_train_config_default(&cfg);
    cfg.clip_norm = 5 * tiny;
    cfg.batch = N;
    t = flow_trainer_new(m, &cfg, x, NULL, N);
    ck_assert_ptr_nonnull(t);
    memcpy(p0, flow_model_params(m), np * sizeof *p0);
    ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    for (size_t i = 0; i < np; i++) {
        ck_assert_msg(flow_trainer_adam_m(t)[i] == 0, "m[%zu] = %g", i,
                      (double)flow_trainer_adam_m(t)[i]);
        ck_assert_msg(flow_trainer_adam_v(t)[i] == 0, "v[%zu] = %g", i,
                      (double)flow_trainer_adam_v(t)[i]);
    }
    ck_assert_mem_eq(flow_model_params(m), p0, np * sizeof *p0);
    /* the step did see a gradient (the clip scaled it, not zeroed it):
     * one more step without the clip moves the parameters */
    flow_trainer_free(t);
    cfg.clip_norm = 0;
    t = flow_trainer_new(m, &cfg, x, NULL, N);
    ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    for (size_t i = 0; i < np; i++)
        nonzero_grad += flow_trainer_adam_m(t)[i] != 0;
    ck_assert_uint_eq(nonzero_grad, np);
    flow_trainer_free(t);
    flow_model_free(m);
    free(p0);
    free(x);
}
END_TEST

START_TEST(test_early_stopping_restores_best)
{
    flow_real x[4] = {0, 1, 2, 3}, keep;
    flow_model *m = gauss_model(1);
    flow_train_config cfg;
    flow_trainer *t;
    flow_train_config_default(&cfg);
    cfg.patience = 2;
    t = flow_trainer_new(m, &cfg, x, NULL, 4);
    ck_assert_int_eq(flow_trainer_restore_best(t), FLOW_ERR_INVAL);
    flow_model_params(m)[0] = 0.5f;
    flow_trainer_validated(t, -1.0);
    keep = flow_model_params(m)[0];
    flow_model_params(m)[0] = 0.7f;
    flow_trainer_validated(t, -1.5);
    ck_assert_int_eq(flow_trainer_should_stop(t), 0);
    flow_model_params(m)[0] = 0.9f;
    flow_trainer_validated(t, -1.2);
    ck_assert_int_ne(flow_trainer_should_stop(t), 0);
    ck_assert_int_eq(flow_trainer_restore_best(t), FLOW_OK);
    ck_assert_double_eq(flow_model_params(m)[0], keep);
    flow_trainer_free(t);
    flow_model_free(m);
}
END_TEST

/* The 16-lane Adam (AVX-512) gives the portable loop's bits on every
 * kind of value: normal, subnormal and zero moments (FLUSH_SUB's both
 * sides), +-0, huge and tiny gradients and parameters, NaN and inf, over
 * lengths that end mid-vector; with and without weight decay. */
START_TEST(test_adam_wide_same_bits)
{
    enum { N = 1000 };
    static const float special[] = {0.0f, -0.0f, 1e-40f, -1e-40f, FLT_MIN,
                                    -FLT_MIN, 1e30f, -1e30f, 3e38f, NAN,
                                    INFINITY, -INFINITY, 1.0f, -2.5f};
    const size_t ns = sizeof special / sizeof special[0];
    flow_real *v[2][4];
    flow_rng r;
    if (!train_adam_wide()) {
        fputs("test_adam_wide_same_bits: no AVX-512 here, skipped\n",
              stderr);
        return;
    }
    rng_seed(&r, 5);
    for (int w = 0; w < 2; w++)
        for (int a = 0; a < 4; a++) {
            v[w][a] = malloc(N * sizeof **v);
            ck_assert_ptr_nonnull(v[w][a]);
        }
    for (int a = 0; a < 4; a++)
        for (size_t i = 0; i < N; i++) {
            double u = rng_uniform(&r);
            flow_real x = (flow_real)((2 * u - 1) * (a == 3 ? 1e-3 : 1));
            if (i % 7 == (size_t)a)      /* specials in every array */
                x = (flow_real)special[(i / 7 + (size_t)a) % ns];
            if (i % 7 == 5)              /* and in all four at once */
                x = (flow_real)special[(i / 7) % ns];
            if (a == 3 && x < 0)         /* second moments stay >= 0 */
                x = -x;
            v[0][a][i] = v[1][a][i] = x;
        }
    for (int rep = 0; rep < 3; rep++)
        for (size_t len = N; len > 0; len = len > 37 ? len - 333 : 0)
            for (int w = 0; w < 2; w++)
                train_adam_kernel(w, len, v[w][0], v[w][1], v[w][2],
                                  v[w][3], 0.9, 0.999, rep ? 1e-2 : 0,
                                  1e-3, 1.0 / (1 - pow(0.999, rep + 1)),
                                  1e-8);
    for (int a = 0; a < 4; a++)
        ck_assert_msg(memcmp(v[0][a], v[1][a], N * sizeof **v) == 0,
                      "array %d differs between the two Adam kernels", a);
    for (int w = 0; w < 2; w++)
        for (int a = 0; a < 4; a++)
            free(v[w][a]);
}
END_TEST

START_TEST(test_divergence_is_reported)
{
    flow_real x[4] = {0, NAN, 2, 3};
    flow_model *m = gauss_model(1);
    flow_train_config cfg;
    flow_trainer *t;
    flow_train_state st;
    int rc = FLOW_OK, steps = 0;
    flow_train_config_default(&cfg);
    cfg.batch = 4;
    cfg.max_skipped = 3;
    t = flow_trainer_new(m, &cfg, x, NULL, 4);
    while (rc == FLOW_OK && steps < 10) {
        rc = flow_trainer_step(t, NULL);
        steps++;
    }
    ck_assert_int_eq(rc, FLOW_ERR_NUMERIC);
    ck_assert_int_eq(steps, 3);
    ck_assert_str_eq(flow_errmsg(ctx), "training diverged: 3 steps in a row "
                     "had a non-finite loss or gradient (lower the learning "
                     "rate or clip gradients)");
    flow_trainer_get_state(t, &st);
    ck_assert_uint_eq(st.skipped, 3);
    ck_assert_uint_eq(st.step, 0);          /* no update was applied */
    ck_assert_double_eq(flow_model_params(m)[0], 0);
    flow_trainer_free(t);
    flow_model_free(m);
}
END_TEST

/* --- the configuration's struct_size and target ---------------------- */

/* t, asserted made (the message of its failure otherwise). */
static flow_trainer *made(flow_trainer *t)
{
    ck_assert_msg(t != NULL, "%s", flow_errmsg(ctx));
    return t;
}

/* k steps of t, the model's stream seeded first; the losses into loss. */
static void run_steps(flow_model *m, flow_trainer *t, int k, double *loss)
{
    flow_model_seed(m, 2);
    for (int s = 0; s < k; s++)
        ck_assert_msg(flow_trainer_step(t, &loss[s]) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
}

/* Rezende & Mohamed's ring energy U1, 2-D (plugins/targets.c). */
static flow_target *u1_target(void)
{
    flow_target *t = NULL;
    ck_assert_msg(flow_target_new(ctx, "u1", NULL, 0, 2, &t) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    return t;
}

START_TEST(test_target_in_config_matches_wrapper)
{
    enum { K = 20 };
    flow_target *u = u1_target();
    flow_model *a = gauss_model(2), *b = gauss_model(2);
    flow_real x[4] = {0, 1, 2, 3}, p0[4];
    flow_train_config cfg;
    flow_trainer *ta, *tb;
    double la[K], lb[K];
    ck_assert_uint_eq(flow_model_num_params(a), 4);
    memcpy(p0, flow_model_params(a), sizeof p0);
    flow_train_config_default(&cfg);
    cfg.batch = 64;
    cfg.lr = 0.05;
    ck_assert_ptr_null(cfg.target);
    ta = made(flow_trainer_new_target(a, &cfg, u));
    cfg.target = u;
    tb = made(flow_trainer_new(b, &cfg, NULL, NULL, 0));
    run_steps(a, ta, K, la);
    run_steps(b, tb, K, lb);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_mem_eq(flow_model_params(a), flow_model_params(b),
                     sizeof p0);
    for (int s = 0; s < K; s++)
        ck_assert_msg(isfinite(la[s]), "loss %g at step %d", la[s], s);
    ck_assert_msg(memcmp(p0, flow_model_params(a), sizeof p0) != 0,
                  "the fit left the parameters alone");
    /* a trainer fits data or a target, not both */
    ck_assert_ptr_null(flow_trainer_new(b, &cfg, x, NULL, 2));
    ck_assert_str_eq(flow_errmsg(ctx), "a trainer fits either data or a "
                     "target: with cfg->target, x and c must be NULL and n 0 "
                     "(got 2 rows)");
    cfg.target = NULL;
    ck_assert_ptr_null(flow_trainer_new_target(b, &cfg, NULL));
    ck_assert_str_eq(flow_errmsg(ctx), "no target to fit");
    flow_trainer_free(ta);
    flow_trainer_free(tb);
    flow_model_free(a);
    flow_model_free(b);
    flow_target_free(u);
}
END_TEST

/* A caller whose flow_train_config ends early: the fields past its
 * struct_size take their defaults, whatever the memory there holds. */
START_TEST(test_config_older_struct_size)
{
    enum { N = 300, K = 12 };
    flow_real *x = gauss_data(N);
    flow_target *u = u1_target();
    flow_model *a = gauss_model(2), *b = gauss_model(2);
    flow_train_config cfg, old;
    flow_trainer *ta, *tb;
    double la[K], lb[K];
    flow_train_config_default(&cfg);
    cfg.batch = 64;
    cfg.lr = 0.01;
    cfg.seed = 7;

    /* data: a struct ending before `target` fits the data it was given */
    old = cfg;
    old.struct_size = (uint32_t)offsetof(flow_train_config, target);
    old.target = u;
    ta = made(flow_trainer_new(a, &cfg, x, NULL, N));
    tb = made(flow_trainer_new(b, &old, x, NULL, N));
    run_steps(a, ta, K, la);
    run_steps(b, tb, K, lb);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_mem_eq(flow_model_params(a), flow_model_params(b),
                     4 * sizeof(flow_real));
    flow_trainer_free(ta);
    flow_trainer_free(tb);
    flow_model_free(a);
    flow_model_free(b);

    /* a target fit: a struct ending before anneal_steps does not anneal */
    a = gauss_model(2);
    b = gauss_model(2);
    old = cfg;
    old.struct_size = (uint32_t)offsetof(flow_train_config, anneal_steps);
    old.anneal_steps = 50;
    ta = made(flow_trainer_new_target(a, &cfg, u));
    tb = made(flow_trainer_new_target(b, &old, u));
    run_steps(a, ta, K, la);
    run_steps(b, tb, K, lb);
    ck_assert_mem_eq(la, lb, sizeof la);
    flow_trainer_free(tb);
    flow_model_free(b);
    /* ... and one that covers it does */
    b = gauss_model(2);
    old.struct_size = (uint32_t)offsetof(flow_train_config, target);
    tb = made(flow_trainer_new_target(b, &old, u));
    run_steps(b, tb, K, lb);
    ck_assert_msg(la[0] != lb[0], "annealed loss %.17g, plain %.17g", lb[0],
                  la[0]);
    flow_trainer_free(ta);
    flow_trainer_free(tb);
    flow_model_free(a);
    flow_model_free(b);
    flow_target_free(u);
    free(x);
}
END_TEST

START_TEST(test_config_refuses_short_struct)
{
    flow_real x[4] = {0, 1, 2, 3};
    flow_target *u = u1_target();
    flow_model *m = gauss_model(2);
    flow_train_config cfg;
    flow_trainer *t;
    char want[200];
    size_t required = offsetof(flow_train_config, max_skipped)
                      + sizeof(size_t);
    flow_train_config_default(&cfg);
    /* max_skipped not covered */
    cfg.struct_size = (uint32_t)offsetof(flow_train_config, max_skipped);
    snprintf(want, sizeof want, "training configuration: struct_size %u "
             "does not cover the required fields (%zu bytes; initialise it "
             "with flow_train_config_default)", (unsigned)cfg.struct_size,
             required);
    ck_assert_ptr_null(flow_trainer_new(m, &cfg, x, NULL, 2));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_ptr_null(flow_trainer_new_target(m, &cfg, u));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    cfg.struct_size = 0;
    ck_assert_ptr_null(flow_trainer_new(m, &cfg, x, NULL, 2));
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), "struct_size 0 does not"));
    ck_assert_ptr_null(flow_trainer_new(m, NULL, x, NULL, 2));
    ck_assert_str_eq(flow_errmsg(ctx), "training configuration not "
                     "initialised (use flow_train_config_default)");
    /* exactly the required fields: taken */
    cfg.struct_size = (uint32_t)required;
    ck_assert_ptr_nonnull(t = flow_trainer_new(m, &cfg, x, NULL, 2));
    flow_trainer_free(t);
    flow_model_free(m);
    flow_target_free(u);
}
END_TEST

Suite *suite_train(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("optimiser");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_converges_to_gaussian_mle);
    tcase_add_test(tc, test_schedules);
    tcase_add_test(tc, test_clipping);
    tcase_add_test(tc, test_subnormal_moments_flushed);
    suite_add_tcase(s, tc);
    tc = tcase_create("resume");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_resume_is_bit_identical);
    suite_add_tcase(s, tc);
    tc = tcase_create("stopping");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_early_stopping_restores_best);
    tcase_add_test(tc, test_divergence_is_reported);
    tcase_add_test(tc, test_adam_wide_same_bits);
    suite_add_tcase(s, tc);
    tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_target_in_config_matches_wrapper);
    tcase_add_test(tc, test_config_older_struct_size);
    tcase_add_test(tc, test_config_refuses_short_struct);
    suite_add_tcase(s, tc);
    return s;
}
