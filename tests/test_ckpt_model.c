/* test_ckpt_model.c - model checkpoints through the public API: save ->
 * open -> recompile -> restore reproduces log-probabilities bit for bit;
 * training state restores; non-finite parameters are never written;
 * imports are embedded and compiled from the checkpoint alone; tensors of
 * another model are refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow/flowc.h"
#include "model_util.h"
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
    ctx = tu_ctx_with_plugins();
    snprintf(path, sizeof path, "/tmp/flowkit-ckm-%ld.ckpt", (long)getpid());
}

static void teardown(void)
{
    unlink(path);
    flow_ctx_free(ctx);
}

static flow_model *build(const char *src, flow_compilation **comp)
{
    return tu_build_model(ctx, "ck.flow", src, 7, comp);
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
    {
        char want[512];
        snprintf(want, sizeof want, "%s: checkpoint has no training state "
                 "(it was saved without an optimizer, e.g. by flowkit export "
                 "--slim): it can be evaluated and sampled, not resumed",
                 path);
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
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

static void write_text(const char *file, const char *text)
{
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* A spec with an import is stored with the imported file (its path as
 * written and resolved), compiles again from the checkpoint alone after
 * the files on disk are gone, and gives the same numbers; the training
 * column names come back too. */
START_TEST(test_imports_embedded)
{
    enum { N = 16, D = 3 };
    char dir[] = "/tmp/flowkit-ckm-XXXXXX", main_path[4096], lib[4096];
    char want[8192];
    static const char *const cols[] = {"a", "b", "c"};
    flow_compilation *c1, *c2;
    const flow_graph *g;
    flow_model *a, *b;
    flow_checkpoint *ck;
    flow_checkpoint_info in;
    flow_spec_file f[2];
    const flow_spec_file *e;
    const char *const *names;
    size_t n, nd, nc;
    flow_real x[N * D], la[N], lb[N];

    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(1.5 * cos(0.71 * i));
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(lib, sizeof lib, "%s/lib.flow", dir);
    snprintf(main_path, sizeof main_path, "%s/m.flow", dir);
    write_text(lib, "const H = 8;\n");
    write_text(main_path, "import \"lib.flow\";\nflow m {\n"
               "  input x : real[3];\n"
               "  maf(hidden = [H]);\n"
               "  output z ~ normal;\n}\n");
    c1 = flow_compile_file(ctx, main_path);
    ck_assert_ptr_nonnull(c1);
    ck_assert_ptr_nonnull(g = flow_compile_graph(c1));
    ck_assert_int_eq(flow_graph_build_model(ctx, g, 3, &a), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(a, N, x, NULL, la), FLOW_OK);
    ck_assert_uint_eq(flow_graph_spec_file_count(g), 2);
    flow_graph_spec_file(g, 0, &f[0]);
    flow_graph_spec_file(g, 1, &f[1]);
    memset(&in, 0, sizeof in);
    in.struct_size = sizeof in;
    in.files = f;
    in.n_files = 2;
    in.columns = cols;
    ck_assert_msg(flow_checkpoint_write(a, NULL, &in, path) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    remove(lib);
    remove(main_path);
    remove(dir);

    ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
    e = flow_checkpoint_sources(ck, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(e[0].path, main_path);
    ck_assert_str_eq(e[1].path, lib);
    ck_assert_str_eq(e[1].import, "lib.flow");
    ck_assert_str_eq(e[1].text, "const H = 8;\n");
    snprintf(want, sizeof want, "%s[%s]", path, lib);
    ck_assert_str_eq(e[1].name, want);
    names = flow_checkpoint_columns(ck, &nd, &nc);
    ck_assert_uint_eq(nd, 3);
    ck_assert_uint_eq(nc, 0);
    ck_assert_str_eq(names[0], "a");
    ck_assert_str_eq(names[2], "c");
    c2 = flow_compile_sources(ctx, e, n, NULL);
    ck_assert_ptr_nonnull(c2);
    if (flow_compile_diag_count(c2))
        flow_compile_print_diags(c2, stderr, FLOW_DIAG_TEXT);
    ck_assert_ptr_nonnull(flow_compile_graph(c2));
    snprintf(want, sizeof want, "%s[%s]", path, main_path);
    ck_assert_str_eq(flow_graph_node_get(flow_compile_graph(c2), 0)->file,
                     want);
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(c2), 9,
                                            &b), FLOW_OK);
    ck_assert_int_eq(flow_checkpoint_restore(ck, b, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_log_prob(b, N, x, NULL, lb), FLOW_OK);
    ck_assert_mem_eq(la, lb, sizeof la);
    /* --resume compares every file */
    ck_assert_int_eq(flow_checkpoint_check_sources(ck, f, 2), FLOW_OK);
    f[1].text = "const H = 9;\n";
    ck_assert_int_eq(flow_checkpoint_check_sources(ck, f, 2),
                     FLOW_ERR_INVAL);
    snprintf(want, sizeof want, "%s: checkpoint was made by a different spec "
             "(first difference at line 1 of %s)", path, lib);
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_int_eq(flow_checkpoint_check_sources(ck, f, 1),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "(it embeds 1 imported file, "
                         "this spec imports 0)") != NULL, "%s",
                  flow_errmsg(ctx));
    flow_checkpoint_free(ck);
    flow_model_free(a);
    flow_model_free(b);
    flow_compile_free(c1);
    flow_compile_free(c2);
}
END_TEST

/* A checkpoint whose tensors are another model's is refused even when the
 * tensors this model needs are all there: every tensor must be part of
 * the model. */
START_TEST(test_unknown_tensor_refused)
{
    static const char more[] =
        "flow ck {\n"
        "  input x : real[3];\n"
        "  actnorm();\n"
        "  repeat 2 as i {\n"
        "    coupling(mask = parity(i), hidden = [16], transformer = spline);\n"
        "    maf(hidden = [16, 16]);\n"
        "  }\n"
        "  exit 1 -> z1 ~ mixture(k = 3);\n"
        "  batchnorm();\n"
        "  actnorm();\n"
        "  output z ~ diag_normal;\n"
        "}\n";
    flow_compilation *c1, *c2;
    flow_model *big = build(more, &c1), *m = build(spec, &c2);
    flow_checkpoint *ck;
    ck_assert_int_eq(flow_checkpoint_save(big, NULL, spec, NULL, NULL, path),
                     FLOW_OK);
    ck_assert_int_eq(flow_checkpoint_open(ctx, path, &ck), FLOW_OK);
    ck_assert_int_eq(flow_checkpoint_restore(ck, m, NULL), FLOW_ERR_FORMAT);
    ck_assert_msg(strstr(flow_errmsg(ctx), ": tensor 'buffers/actnorm#7' "
                         "is not part of this model") != NULL, "%s",
                  flow_errmsg(ctx));
    flow_checkpoint_free(ck);
    flow_model_free(big);
    flow_model_free(m);
    flow_compile_free(c1);
    flow_compile_free(c2);
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
    tcase_add_test(tc, test_imports_embedded);
    tcase_add_test(tc, test_unknown_tensor_refused);
    suite_add_tcase(s, tc);
    return s;
}
