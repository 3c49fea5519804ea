/* test_probe.c - flow_model_verify_layers: which layers it probes (by the
 * directory their plugin came from), the log-det and round-trip bugs of
 * tests/plugins/ldbugs.c it stops, its cost cap, and that it leaves the
 * model as it found it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/ctx.h"
#include "flow/flow.h"
#include "suites.h"

enum { ROWS = 16 };

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(flow_plugin_load(ctx, test_plugin("ldbugs")) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

#define ck_assert_errmsg_has(s) \
    ck_assert_msg(strstr(flow_errmsg(ctx), (s)) != NULL, \
                  "message lacks '%s': %s", (s), flow_errmsg(ctx))

/* A model of the given layer types (no attributes) on d dimensions. */
static flow_model *model_of(size_t d, const char *const *types, size_t n)
{
    flow_model *m = flow_model_new(ctx, d, 0);
    ck_assert_ptr_nonnull(m);
    for (size_t i = 0; i < n; i++) {
        const flow_layer_type *t = flow_layer_type_find(ctx, types[i], NULL);
        flow_attr_value v[4];
        size_t na = 0;
        ck_assert_msg(t != NULL, "no layer type %s", types[i]);
        memset(v, 0, sizeof v);
        if (!strcmp(types[i], "actnorm")) {
            v[0].type = FLOW_ATTR_REAL;
            v[0].r = 1e-6;
            na = 1;
        } else if (!strcmp(types[i], "batchnorm")) {
            v[0].type = v[1].type = FLOW_ATTR_REAL;
            v[0].r = 0.1;
            v[1].r = 1e-5;
            na = 2;
        } else if (!strcmp(types[i], "permute")) {
            v[0].type = FLOW_ATTR_VARIANT;
            v[0].s = "reverse";
            na = 1;
        }
        ck_assert_msg(flow_model_add_layer(m, types[i], NULL, v, na, 0, 0,
                                           0) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
    }
    ck_assert_msg(flow_model_finish(m, 7) == FLOW_OK, "%s", flow_errmsg(ctx));
    return m;
}

/* ROWS x d rows of a fixed pseudo-random pattern in about [-2, 2] */
static flow_real *rows_of(size_t d)
{
    flow_real *x = malloc(ROWS * d * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < ROWS * d; i++)
        x[i] = (flow_real)(2.0 * sin(1.7 * (double)i + 0.3));
    return x;
}

/* The number that follows `key` in the context's message (NAN if none). */
static double num_after(const char *key)
{
    const char *p = strstr(flow_errmsg(ctx), key);
    return p ? strtod(p + strlen(key), NULL) : NAN;
}

typedef struct notes {
    char text[8192];
    size_t n;
} notes;

static void collect(void *arg, const char *line)
{
    notes *nt = arg;
    size_t len = strlen(nt->text);
    snprintf(nt->text + len, sizeof nt->text - len, "%s\n", line);
    nt->n++;
}

START_TEST(test_probe_stops_flipped_logdet)
{
    const char *types[] = {"ld_flip"};
    flow_model *m = model_of(3, types, 1);
    flow_real *x = rows_of(3);
    size_t probed = 99;
    char want[128];
    int rc = flow_model_verify_layers(m, ROWS, x, NULL,
                                      FLOW_VERIFY_THIRD_PARTY, NULL, NULL,
                                      &probed);
    ck_assert_int_eq(rc, FLOW_ERR_NUMERIC);
    ck_assert_uint_eq(probed, 0);
    /* s = 0.5 per dimension: log|det J| = 1.5, the layer says -1.5 */
    ck_assert_errmsg_has("ld_flip#0 (");
    ck_assert_errmsg_has("ldbugs.so): plugin check failed: log-det vs FD "
                         "Jacobian, row 0 of the first batch: layer -1.5,");
    ck_assert_double_eq_tol(num_after("log|det| of the FD Jacobian "), 1.5,
                            1e-3);
    snprintf(want, sizeof want, "run `flowkit check ld_flip --plugin %s "
             "--dim 3` for the full report", test_plugin("ldbugs"));
    ck_assert_errmsg_has(want);
    flow_model_free(m);
    free(x);
}
END_TEST

START_TEST(test_probe_stops_constant_offset)
{
    const char *types[] = {"actnorm", "ld_plus"};
    flow_model *m = model_of(2, types, 2);
    flow_real *x = rows_of(2);
    ck_assert_int_eq(flow_model_data_init(m, ROWS, x, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_verify_layers(m, ROWS, x, NULL,
                                              FLOW_VERIFY_THIRD_PARTY, NULL,
                                              NULL, NULL), FLOW_ERR_NUMERIC);
    /* log|det J| = 1 (s = 0.5 twice); the layer adds 0.1 */
    ck_assert_errmsg_has("ld_plus#1 (");
    ck_assert_double_eq_tol(num_after("first batch: layer "), 1.1, 1e-6);
    ck_assert_double_eq_tol(num_after("log|det| of the FD Jacobian "), 1.0,
                            1e-3);
    ck_assert_double_eq_tol(num_after("(error "), 0.1, 2e-3);
    flow_model_free(m);
    free(x);
}
END_TEST

/* Bugs that the identity hides: caught at the perturbed parameters. */
START_TEST(test_probe_perturbed_parameters)
{
    const char *flip0[] = {"ld_flip0"}, *noshift[] = {"ld_noshift"};
    flow_model *m = model_of(2, flip0, 1);
    flow_real *x = rows_of(2);
    ck_assert_int_eq(flow_model_verify_layers(m, ROWS, x, NULL,
                                              FLOW_VERIFY_THIRD_PARTY, NULL,
                                              NULL, NULL), FLOW_ERR_NUMERIC);
    ck_assert_errmsg_has("log-det vs FD Jacobian, row 0 of the first batch, "
                         "parameters moved by 0.2 x N(0, 1) (seed 1)");
    flow_model_free(m);
    m = model_of(2, noshift, 1);
    ck_assert_int_eq(flow_model_verify_layers(m, ROWS, x, NULL,
                                              FLOW_VERIFY_THIRD_PARTY, NULL,
                                              NULL, NULL), FLOW_ERR_NUMERIC);
    ck_assert_errmsg_has("round trip x -> z -> x, row ");
    ck_assert_errmsg_has("parameters moved by 0.2 x N(0, 1) (seed 1): x = ");
    flow_model_free(m);
    free(x);
}
END_TEST

/* A correct third-party layer passes; bundled layers are probed only
 * when asked; the model comes back bit for bit (parameters, buffers,
 * random stream, outputs). */
START_TEST(test_probe_scope_and_no_trace)
{
    const char *types[] = {"actnorm", "ld_ok", "permute", "batchnorm"};
    flow_model *m = model_of(3, types, 4);
    flow_real *x = rows_of(3), *p0, *b0, z0[ROWS * 3], z1[ROWS * 3];
    flow_real ld0[ROWS], ld1[ROWS];
    size_t np = flow_model_num_params(m), nb = flow_model_num_buffers(m);
    uint64_t r0[6], r1[6];
    size_t probed = 0;
    notes nt = {"", 0};

    ck_assert_int_eq(flow_model_data_init(m, ROWS, x, NULL), FLOW_OK);
    /* move the parameters off their initial values */
    for (size_t i = 0; i < np; i++)
        flow_model_params(m)[i] += (flow_real)(0.05 * cos((double)i));
    p0 = malloc(np * sizeof *p0);
    b0 = malloc((nb + 1) * sizeof *b0);
    ck_assert_ptr_nonnull(p0);
    ck_assert_ptr_nonnull(b0);
    memcpy(p0, flow_model_params(m), np * sizeof *p0);
    memcpy(b0, flow_model_buffers(m), nb * sizeof *b0);
    flow_model_get_rng(m, r0);
    ck_assert_int_eq(flow_model_forward(m, ROWS, x, NULL, z0, ld0), FLOW_OK);

    ck_assert_msg(flow_model_verify_layers(m, ROWS, x, NULL,
                                           FLOW_VERIFY_THIRD_PARTY, collect,
                                           &nt, &probed) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_uint_eq(probed, 1);
    ck_assert_uint_eq(nt.n, 1);
    ck_assert_msg(strstr(nt.text, "ld_ok#1 (") && strstr(nt.text, "on 8 "
                  "rows; log-det vs FD Jacobian error ") && strstr(nt.text,
                  "on 4 rows (parameters as they are and moved by 0.2"),
                  "notes: %s", nt.text);

    nt.text[0] = '\0';
    nt.n = 0;
    ck_assert_msg(flow_model_verify_layers(m, ROWS, x, NULL, FLOW_VERIFY_ALL,
                                           collect, &nt, &probed) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    ck_assert_uint_eq(probed, 4);
    ck_assert_uint_eq(nt.n, 4);
    ck_assert_msg(strstr(nt.text, "batchnorm#3 (") != NULL, "notes: %s",
                  nt.text);

    ck_assert_int_eq(memcmp(p0, flow_model_params(m), np * sizeof *p0), 0);
    ck_assert_int_eq(memcmp(b0, flow_model_buffers(m), nb * sizeof *b0), 0);
    flow_model_get_rng(m, r1);
    ck_assert_int_eq(memcmp(r0, r1, sizeof r0), 0);
    ck_assert_int_eq(flow_model_forward(m, ROWS, x, NULL, z1, ld1), FLOW_OK);
    ck_assert_int_eq(memcmp(z0, z1, sizeof z0), 0);
    ck_assert_int_eq(memcmp(ld0, ld1, sizeof ld0), 0);

    /* no layer in scope: nothing runs, nothing is said */
    {
        const char *bundled[] = {"actnorm", "permute"};
        flow_model *mb = model_of(3, bundled, 2);
        nt.n = 0;
        ck_assert_int_eq(flow_model_verify_layers(mb, ROWS, x, NULL,
                                                  FLOW_VERIFY_THIRD_PARTY,
                                                  collect, &nt, &probed),
                         FLOW_OK);
        ck_assert_uint_eq(probed, 0);
        ck_assert_uint_eq(nt.n, 0);
        flow_model_free(mb);
    }
    flow_model_free(m);
    free(x);
    free(p0);
    free(b0);
}
END_TEST

/* The FD Jacobian is taken up to D = 64: a wider flipped layer passes
 * (the round trip still runs), and the note says why. */
START_TEST(test_probe_cost_cap)
{
    const char *types[] = {"ld_flip"};
    flow_model *m = model_of(65, types, 1);
    flow_real *x = rows_of(65);
    notes nt = {"", 0};
    ck_assert_msg(flow_model_verify_layers(m, 3, x, NULL,
                                           FLOW_VERIFY_THIRD_PARTY, collect,
                                           &nt, NULL) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(strstr(nt.text, "round trip error ") && strstr(nt.text,
                  "on 3 rows; log-det vs FD Jacobian skipped (D = 65 > 64, "
                  "the probe's cost cap)"), "notes: %s", nt.text);
    flow_model_free(m);
    m = model_of(64, types, 1);
    ck_assert_int_eq(flow_model_verify_layers(m, 3, x, NULL,
                                              FLOW_VERIFY_THIRD_PARTY, NULL,
                                              NULL, NULL), FLOW_ERR_NUMERIC);
    ck_assert_errmsg_has("layer -32,");
    ck_assert_double_eq_tol(num_after("log|det| of the FD Jacobian "), 32,
                            0.05);
    flow_model_free(m);
    free(x);
}
END_TEST

/* Bundled means the directory, not the name: the same file copied
 * elsewhere and loaded from there is third-party. */
START_TEST(test_probe_origin_by_directory)
{
    char dir[] = "/tmp/flowkit-origin-XXXXXX", cmd[8192], path[4200];
    const char *file = NULL;
    const flow_layer_type *t = flow_layer_type_find(ctx, "permute", &file);
    flow_ctx *c2;
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(loader_plugin_bundled(ctx, file), 1);
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "ld_ok", &file));
    ck_assert_int_eq(loader_plugin_bundled(ctx, file), 0);
    ck_assert_int_eq(loader_plugin_bundled(ctx, "/nowhere/x.so"), 0);
    flow_layer_type_find(ctx, "permute", &file);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/permute.so", dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", file, path);
    ck_assert_int_eq(system(cmd), 0);
    c2 = flow_ctx_new();
    ck_assert_ptr_nonnull(c2);
    ck_assert_int_eq(flow_plugin_load(c2, path), FLOW_OK);
    ck_assert_ptr_nonnull(flow_layer_type_find(c2, "permute", &file));
    ck_assert_int_eq(loader_plugin_bundled(c2, file), 0);
    flow_ctx_free(c2);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

Suite *suite_probe(void)
{
    Suite *s = suite_create("probe");
    TCase *tc = tcase_create("verify_layers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_probe_stops_flipped_logdet);
    tcase_add_test(tc, test_probe_stops_constant_offset);
    tcase_add_test(tc, test_probe_perturbed_parameters);
    tcase_add_test(tc, test_probe_scope_and_no_trace);
    tcase_add_test(tc, test_probe_cost_cap);
    tcase_add_test(tc, test_probe_origin_by_directory);
    suite_add_tcase(s, tc);
    return s;
}
