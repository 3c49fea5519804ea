/* test_support.c - the gradient's support (flow_layer_type.grad_support,
 * model_support): the gradient outside it is exactly 0, the MADE's count
 * is the one worked out by hand, training over it gives the bits of the
 * full passes, and invalid lists from a plugin are refused by name. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flowc.h"
#include "../runtime/model.h"
#include "../runtime/train.h"
#include "model_util.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = tu_ctx_with_plugins();
}

static void teardown(void) { flow_ctx_free(ctx); }

static flow_model *build(const char *src, uint64_t seed)
{
    return tu_build_model(ctx, "s.flow", src, seed, NULL);
}

/* A uniform draw in [-1, 1) from a 64-bit LCG (Knuth's MMIX constants). */
static double draw(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 4503599627370496.0 - 1.0;
}

/* MAFs whose layers are in degree order (natural order, no context: every
 * MADE layer direct), partly not (reverse and explicit orders: the first
 * and last layers are not; context: the first is not), an IAF.  Up to
 * MADE_BLOCK (64) rows a layer is one block, whose prefix covers every
 * column but for the first layer's last input: the 70-unit hidden
 * layers give a second layer of two blocks, the first of which sees
 * only a prefix of the units below. */
static const char *const maf_specs[] = {
    "flow a {\n"
    "  input x : real[5];\n"
    "  maf(hidden = [12, 10], transformer = affine, activation = tanh,\n"
    "      identity_init = false);\n"
    "  permute(order = reverse);\n"
    "  maf(hidden = [16], transformer = affine, activation = tanh,\n"
    "      order = reverse, identity_init = false);\n"
    "  maf(hidden = [9], transformer = affine, activation = tanh,\n"
    "      order = [2, 0, 4, 1, 3], identity_init = false);\n"
    "  output z ~ normal;\n"
    "}\n",
    "flow b {\n"
    "  input x : real[12];\n"
    "  context c : real[3];\n"
    "  maf(hidden = [70, 70], transformer = affine, activation = tanh,\n"
    "      identity_init = false) given c;\n"
    "  maf(hidden = [10, 10], transformer = affine, activation = tanh,\n"
    "      order = reverse, identity_init = false) given c;\n"
    "  output z ~ normal;\n"
    "}\n",
    "flow c {\n"
    "  input x : real[4];\n"
    "  iaf(hidden = [12], transformer = affine, activation = tanh,\n"
    "      identity_init = false);\n"
    "  iaf(hidden = [8], transformer = affine, activation = tanh,\n"
    "      order = reverse, identity_init = false);\n"
    "  output z ~ normal;\n"
    "}\n",
};

/* 1 when parameter i lies in a run of runs (n of them) */
static int in_support(const size_t *runs, size_t n, size_t i)
{
    for (size_t r = 0; r < n; r++)
        if (i >= runs[2 * r] && i - runs[2 * r] < runs[2 * r + 1])
            return 1;
    return 0;
}

/* The full gradient of random data, on the initialised parameters (a
 * MADE's masked weights 0: the layers read in place) and on random ones
 * (masked weights too: the layers copied sorted, the mask applied): 0
 * outside the support, bit for bit, and non-zero somewhere in each run;
 * the runs increasing, disjoint, merged, within the parameters. */
START_TEST(test_gradient_zero_outside_support)
{
    enum { N = 60 };
    for (size_t s = 0; s < sizeof maf_specs / sizeof *maf_specs; s++) {
        flow_model *m = build(maf_specs[s], 11 + s);
        size_t np = flow_model_num_params(m), d = flow_model_dim(m);
        size_t k = flow_model_context_dim(m), n_runs, n_live, sum = 0;
        const size_t *pre;
        const size_t *runs = model_support(m, &n_runs, &n_live, &pre);
        flow_real *x = malloc(N * d * sizeof *x);
        flow_real *c = k ? malloc(N * k * sizeof *c) : NULL;
        flow_real *g = malloc(np * sizeof *g);
        uint64_t st = 99 + s;
        double mean;
        ck_assert_ptr_nonnull(x);
        ck_assert_ptr_nonnull(g);
        ck_assert_uint_gt(n_runs, 0);
        ck_assert_msg(n_live < np, "spec %zu: %zu live of %zu", s, n_live,
                      np);
        for (size_t r = 0; r < n_runs; r++) {
            ck_assert_uint_gt(runs[2 * r + 1], 0);
            ck_assert_uint_eq(pre[r], sum);
            sum += runs[2 * r + 1];
            if (r)  /* merged: a gap between two runs */
                ck_assert_uint_gt(runs[2 * r],
                                  runs[2 * r - 2] + runs[2 * r - 1]);
        }
        ck_assert_uint_eq(sum, n_live);
        ck_assert_uint_eq(pre[n_runs], n_live);
        ck_assert_uint_le(runs[2 * n_runs - 2] + runs[2 * n_runs - 1], np);
        for (size_t i = 0; i < N * d; i++)
            x[i] = (flow_real)(1.5 * draw(&st));
        for (size_t i = 0; k && i < N * k; i++)
            c[i] = (flow_real)draw(&st);
        for (int randomised = 0; randomised <= 1; randomised++) {
            flow_real *p = flow_model_params(m);
            if (randomised)
                for (size_t i = 0; i < np; i++)
                    p[i] = (flow_real)(0.3 * draw(&st));
            ck_assert_msg(flow_model_loglik_grad(m, N, x, c, &mean, g)
                          == FLOW_OK, "%s", flow_errmsg(ctx));
            ck_assert_msg(isfinite(mean), "spec %zu: mean %g", s, mean);
            for (size_t i = 0; i < np; i++)
                if (!in_support(runs, n_runs, i))
                    ck_assert_msg(g[i] == 0, "spec %zu (%s): parameter %zu "
                                  "outside the support has gradient %g",
                                  s, randomised ? "random" : "init", i,
                                  (double)g[i]);
            for (size_t r = 0; r < n_runs; r++) {
                size_t nz = 0;
                for (size_t i = 0; i < runs[2 * r + 1]; i++)
                    nz += g[runs[2 * r] + i] != 0;
                ck_assert_msg(nz > 0, "spec %zu: run %zu (%zu, %zu) all 0",
                              s, r, runs[2 * r], runs[2 * r + 1]);
            }
        }
        free(x);
        free(c);
        free(g);
        flow_model_free(m);
    }
}
END_TEST

/* D = 4, one hidden layer of 8 units, affine (2 outputs per dimension),
 * the natural order, no context.  Hidden units have degrees 1..3 (each
 * present), sorted; MADE_BLOCK (64) rows make one block, so every row
 * takes the prefix of the block's last (degree 3): 3 of the 4 input
 * columns, 8 x 3 = 24 of the 32 first-layer weights.  The 8 outputs'
 * block ends with dimension 4's, which sees every hidden unit of degree
 * <= 3: all 8 x 8 = 64 weights.  Biases 8 + 8.  Live: 24 + 8 + 64 + 8 =
 * 104 of 32 + 8 + 64 + 8 = 112, in one run per first-layer row (4 apart,
 * each ending before the row's last column) and one run of the rest
 * from the first biases on: 9 runs. */
START_TEST(test_tiny_made_count)
{
    static const char src[] =
        "flow t {\n"
        "  input x : real[4];\n"
        "  maf(hidden = [8], transformer = affine);\n"
        "  output z ~ normal;\n"
        "}\n";
    for (uint64_t seed = 1; seed <= 3; seed++) {
        flow_model *m = build(src, seed);
        size_t n_runs, n_live;
        const size_t *runs = model_support(m, &n_runs, &n_live, NULL);
        ck_assert_uint_eq(flow_model_num_params(m), 112);
        ck_assert_uint_eq(n_live, 104);
        ck_assert_uint_eq(n_runs, 9);
        for (size_t r = 0; r < 8; r++) {
            ck_assert_uint_eq(runs[2 * r], 4 * r);
            ck_assert_uint_eq(runs[2 * r + 1], 3);
        }
        ck_assert_uint_eq(runs[16], 32);
        ck_assert_uint_eq(runs[17], 8 + 64 + 8);
        flow_model_free(m);
    }
}
END_TEST

/* The parameters and Adam's moments after `steps` steps with weight
 * decay and clipping, with the support passes or the full ones, on
 * `threads` threads. */
static void train_run(const char *src, int full, size_t threads,
                      size_t steps, flow_real *out)
{
    enum { N = 600 };
    flow_model *m = build(src, 5);
    size_t np = flow_model_num_params(m), d = flow_model_dim(m);
    flow_real *x = malloc(N * d * sizeof *x);
    flow_train_config cfg;
    flow_trainer *t;
    uint64_t st = 42;
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < N * d; i++)
        x[i] = (flow_real)(2 * draw(&st) + 0.5 * (double)(i % d));
    ck_assert_int_eq(flow_model_set_threads(m, threads), FLOW_OK);
    flow_train_config_default(&cfg);
    cfg.batch = 300;            /* blocks of 128, 128 and 44 rows */
    cfg.lr = 3e-3;
    cfg.weight_decay = 1e-2;
    cfg.clip_norm = 0.5;
    cfg.seed = 3;
    t = flow_trainer_new(m, &cfg, x, NULL, N);
    ck_assert_msg(t != NULL, "%s", flow_errmsg(ctx));
    train_set_full_passes(t, full);
    for (size_t s = 0; s < steps; s++) {
        double loss;
        ck_assert_msg(flow_trainer_step(t, &loss) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
        ck_assert_msg(isfinite(loss), "step %zu: loss %g", s, loss);
    }
    memcpy(out, flow_model_params(m), np * sizeof *out);
    memcpy(out + np, flow_trainer_adam_m(t), np * sizeof *out);
    memcpy(out + 2 * np, flow_trainer_adam_v(t), np * sizeof *out);
    flow_trainer_free(t);
    flow_model_free(m);
    free(x);
}

static const char *const train_specs[] = {
    "flow tm {\n"
    "  input x : real[6];\n"
    "  maf(hidden = [24, 24], transformer = affine);\n"
    "  permute(order = reverse);\n"
    "  maf(hidden = [20], transformer = affine, order = reverse);\n"
    "  output z ~ normal;\n"
    "}\n",
    "flow tr {\n"
    "  input x : real[6];\n"
    "  repeat 3 as i {\n"
    "    coupling(mask = parity(i), hidden = [16, 16], transformer = affine);\n"
    "  }\n"
    "  output z ~ normal;\n"
    "}\n",
};

/* 20 steps with weight decay and clipping (the clip active: the norm's
 * bits matter): the support passes and the full ones, on 1 and 2
 * threads, leave the same parameters and moments, bit for bit; a MAF
 * has a dead part (whose values stay as they were), a RealNVP none. */
START_TEST(test_training_bits_match_full_passes)
{
    for (size_t s = 0; s < sizeof train_specs / sizeof *train_specs; s++) {
        flow_model *m = build(train_specs[s], 5);
        size_t np = flow_model_num_params(m), n_runs, n_live;
        flow_real *ref = malloc(3 * np * sizeof *ref);
        flow_real *got = malloc(3 * np * sizeof *got);
        flow_real *init = malloc(np * sizeof *init);
        const size_t *runs = model_support(m, &n_runs, &n_live, NULL);
        size_t moved = 0;
        ck_assert_ptr_nonnull(ref);
        ck_assert_ptr_nonnull(got);
        ck_assert_ptr_nonnull(init);
        if (s == 0)
            ck_assert_uint_lt(n_live, np);
        else
            ck_assert_uint_eq(n_live, np);
        memcpy(init, flow_model_params(m), np * sizeof *init);
        train_run(train_specs[s], 1, 1, 20, ref);
        /* the training moved the live parameters, not the others */
        for (size_t i = 0; i < np; i++) {
            int live = in_support(runs, n_runs, i);
            moved += live && ref[i] != init[i];
            if (!live)
                ck_assert_msg(ref[i] == init[i] && ref[np + i] == 0
                              && ref[2 * np + i] == 0, "parameter %zu "
                              "outside the support changed", i);
        }
        ck_assert_msg(moved > n_live / 2, "spec %zu: %zu of %zu live "
                      "parameters moved", s, moved, n_live);
        flow_model_free(m);
        free(init);
        for (int full = 0; full <= 1; full++)
            for (size_t threads = 1; threads <= 2; threads++) {
                if (full && threads == 1)
                    continue;
                train_run(train_specs[s], full, threads, 20, got);
                ck_assert_msg(memcmp(ref, got, 3 * np * sizeof *ref) == 0,
                              "spec %zu, %s passes, %zu threads: the "
                              "parameters or moments differ from the full "
                              "passes on 1 thread", s,
                              full ? "full" : "support", threads);
            }
        free(ref);
        free(got);
    }
}
END_TEST

/* A layer whose grad_support lists overlapping runs, or a run past its
 * parameters, is refused when the model is finished, by name; one that
 * lists more runs than the host's first call has room for is asked
 * again and its runs merged. */
START_TEST(test_invalid_support_refused)
{
    enum { D = 20 };
    static const char *const bad[] = {"minimal_overlap", "minimal_past"};
    static const char *const why[] = {"increasing and disjoint",
                                      "past the layer's"};
    size_t n_runs, n_live;
    const size_t *runs;
    flow_model *m;
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("minsupport")), FLOW_OK);
    for (size_t i = 0; i < 2; i++) {
        m = flow_model_new(ctx, D, 0);
        ck_assert_ptr_nonnull(m);
        ck_assert_msg(flow_model_add_layer(m, bad[i], NULL, NULL, 0, 0, 0, 0)
                      == FLOW_OK, "%s", flow_errmsg(ctx));
        ck_assert_int_eq(flow_model_finish(m, 7), FLOW_ERR_PLUGIN);
        ck_assert_msg(strstr(flow_errmsg(ctx), bad[i]) != NULL
                      && strstr(flow_errmsg(ctx), "minsupport.so") != NULL
                      && strstr(flow_errmsg(ctx), "grad_support") != NULL
                      && strstr(flow_errmsg(ctx), why[i]) != NULL, "%s",
                      flow_errmsg(ctx));
        flow_model_free(m);
    }
    m = flow_model_new(ctx, D, 0);
    ck_assert_ptr_nonnull(m);
    ck_assert_msg(flow_model_add_layer(m, "minimal_runs", NULL, NULL, 0, 0, 0,
                                       0) == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_msg(flow_model_finish(m, 7) == FLOW_OK, "%s", flow_errmsg(ctx));
    runs = model_support(m, &n_runs, &n_live, NULL);
    ck_assert_uint_eq(n_live, flow_model_num_params(m));
    ck_assert_uint_eq(n_runs, 1);
    ck_assert_uint_eq(runs[0], 0);
    ck_assert_uint_eq(runs[1], flow_model_num_params(m));
    flow_model_free(m);
}
END_TEST

Suite *suite_support(void)
{
    Suite *s = suite_create("support");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gradient_zero_outside_support);
    tcase_add_test(tc, test_tiny_made_count);
    tcase_add_test(tc, test_training_bits_match_full_passes);
    tcase_add_test(tc, test_invalid_support_refused);
    suite_add_tcase(s, tc);
    return s;
}
