/* test_ckpt_model.c - model checkpoints through the public API: save ->
 * open -> recompile -> restore reproduces log-probabilities bit for bit;
 * training state restores; non-finite parameters are never written. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow/flowc.h"
#include "suites.h"

static const char spec[] =
    "flow ck {\n"
    "  input x : real[3];\n"
    "  actnorm();\n"
    "  repeat 2 as i {\n"
    "    coupling(mask = parity(i), hidden = [16], transformer = spline);\n"
    "    maf(hidden = [16, 16]);\n"
    "  }\n"
    "  exit 1 -> z1 ~ mixture(k = 3);\n"
    "  batchnorm();\n"
    "  output z ~ diag_normal;\n"
    "}\n";

static flow_ctx *ctx;
static char path[64];

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    snprintf(path, sizeof path, "/tmp/flowkit-ckm-%ld.ckpt", (long)getpid());
}

static void teardown(void)
{
    unlink(path);
    flow_ctx_free(ctx);
}

static flow_model *build(const char *src, flow_compilation **comp)
{
    flow_model *m = NULL;
    *comp = flow_compile_string(ctx, "ck.flow", src, strlen(src));
    ck_assert_ptr_nonnull(*comp);
    if (flow_compile_errors(*comp))
        flow_compile_print_diags(*comp, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_errors(*comp), 0);
    ck_assert_msg(flow_graph_build_model(ctx, flow_compile_graph(*comp), 7,
                                         &m) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    return m;
}

START_TEST(test_save_load_bit_identical)
{
    enum { N = 64, D = 3 };
    flow_compilation *c1, *c2;
    flow_model *a = build(spec, &c1), *b;
    flow_checkpoint *ck;
    flow_trainer *t;
    flow_train_config cfg;
    flow_real x[N * D], la[N], lb[N];
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(2 * sin(0.37 * i + 0.5));
    /* a few training steps: parameters, Adam moments and running
     * statistics all move away from their initial values */
    flow_train_config_default(&cfg);
    cfg.batch = 32;
    cfg.lr = 1e-2;
    t = flow_trainer_new(a, &cfg, x, NULL, N);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(flow_model_data_init(a, N, x, NULL), FLOW_OK);
    for (int s = 0; s < 5; s++)
        ck_assert_int_eq(flow_trainer_step(t, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(a, N, x, NULL, la), FLOW_OK);
    ck_assert_msg(flow_checkpoint_save(a, t, spec, "ck.flow", "[]", path)
                  == FLOW_OK, "%s", flow_errmsg(ctx));

    ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
    ck_assert_str_eq(flow_checkpoint_spec(ck), spec);
    ck_assert_str_eq(flow_checkpoint_meta(ck, "spec_path"), "ck.flow");
    ck_assert_int_ne(flow_checkpoint_has_training(ck), 0);
    b = build(flow_checkpoint_spec(ck), &c2);
    ck_assert_int_eq(flow_checkpoint_restore(ck, b, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(b, N, x, NULL, lb), FLOW_OK);
    ck_assert_mem_eq(la, lb, sizeof la);
    ck_assert_mem_eq(flow_model_params(a), flow_model_params(b),
                     flow_model_num_params(a) * sizeof(flow_real));
    ck_assert_mem_eq(flow_model_buffers(a), flow_model_buffers(b),
                     flow_model_num_buffers(a) * sizeof(flow_real));
    flow_checkpoint_free(ck);
    flow_trainer_free(t);
    flow_model_free(a);
    flow_model_free(b);
    flow_compile_free(c1);
    flow_compile_free(c2);
}
END_TEST

START_TEST(test_nonfinite_never_written)
{
    flow_compilation *c;
    flow_model *m = build(spec, &c);
    flow_model_params(m)[5] = (flow_real)NAN;
    ck_assert_int_eq(flow_checkpoint_save(m, NULL, spec, NULL, NULL, path),
                     FLOW_ERR_NUMERIC);
    ck_assert_msg(strstr(flow_errmsg(ctx), ": not written: parameter 5 of "
                         "actnorm#0 is nan (training diverged)") != NULL, "%s",
                  flow_errmsg(ctx));
    ck_assert_int_ne(access(path, F_OK), 0);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_restore_needs_training_state)
{
    flow_compilation *c;
    flow_model *m = build(spec, &c);
    flow_checkpoint *ck;
    flow_trainer *t;
    flow_train_config cfg;
    flow_real x[6] = {0, 1, 2, 3, 4, 5};
    ck_assert_int_eq(flow_checkpoint_save(m, NULL, spec, NULL, NULL, path),
                     FLOW_OK);
    ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
    ck_assert_int_eq(flow_checkpoint_has_training(ck), 0);
    flow_train_config_default(&cfg);
    t = flow_trainer_new(m, &cfg, x, NULL, 2);
    ck_assert_int_eq(flow_checkpoint_restore(ck, m, t), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "checkpoint has no training state (it "
                     "was saved without an optimizer)");
    flow_trainer_free(t);
    flow_checkpoint_free(ck);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

/* Optimizer state a saved run cannot have (a NaN first moment, a negative
 * or infinite second moment) is refused on restore, naming the file and
 * the tensor; the same state restores once the values are valid. */
START_TEST(test_restore_refuses_bad_adam)
{
    static const struct {
        int v;                  /* 0: adam/m, 1: adam/v */
        double value;
        const char *said;
    } bad[] = {
        {0, NAN, "tensor 'adam/m': value 3 is nan (must be finite)"},
        {1, -1.0, "tensor 'adam/v': value 3 is -1 (Adam's second moment "
                  "must be finite and >= 0)"},
        {1, INFINITY, "tensor 'adam/v': value 3 is inf (Adam's second "
                      "moment must be finite and >= 0)"},
    };
    flow_compilation *c;
    flow_model *m = build(spec, &c);
    flow_train_config cfg;
    flow_real x[6] = {0, 1, 2, 3, 4, 5};
    flow_trainer *t;
    flow_train_config_default(&cfg);
    t = flow_trainer_new(m, &cfg, x, NULL, 2);
    ck_assert_ptr_nonnull(t);
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        flow_checkpoint *ck;
        flow_real *a = bad[k].v ? flow_trainer_adam_v(t)
                                : flow_trainer_adam_m(t);
        a[3] = (flow_real)bad[k].value;
        ck_assert_int_eq(flow_checkpoint_save(m, t, spec, NULL, NULL, path),
                         FLOW_OK);
        a[3] = 0;
        ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
        ck_assert_int_eq(flow_checkpoint_restore(ck, m, t), FLOW_ERR_FORMAT);
        ck_assert_msg(strstr(flow_errmsg(ctx), path) != NULL
                      && strstr(flow_errmsg(ctx), bad[k].said) != NULL,
                      "case %zu: %s", k, flow_errmsg(ctx));
        flow_checkpoint_free(ck);
        /* the refused restore had read the value in */
        flow_trainer_adam_m(t)[3] = 0;
        flow_trainer_adam_v(t)[3] = 0;
    }
    ck_assert_int_eq(flow_checkpoint_save(m, t, spec, NULL, NULL, path),
                     FLOW_OK);
    {
        flow_checkpoint *ck;
        ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
        ck_assert_msg(flow_checkpoint_restore(ck, m, t) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
        flow_checkpoint_free(ck);
    }
    flow_trainer_free(t);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

Suite *suite_ckpt_model(void)
{
    Suite *s = suite_create("ckpt_model");
    TCase *tc = tcase_create("round_trip");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_save_load_bit_identical);
    suite_add_tcase(s, tc);
    tc = tcase_create("refusals");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_nonfinite_never_written);
    tcase_add_test(tc, test_restore_needs_training_state);
    tcase_add_test(tc, test_restore_refuses_bad_adam);
    suite_add_tcase(s, tc);
    return s;
}
