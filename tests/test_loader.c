/* test_loader.c - the plugin loader: search path, ABI checks, the exact
 * message of every loader error, and a layer type without the optional
 * callbacks loaded and run in a model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flow/flow.h"
#include "../runtime/model.h"
#include "suites.h"

static flow_ctx *ctx;
static char *saved_path;

static void setup(void)
{
    const char *p = getenv("FLOW_PLUGIN_PATH");
    saved_path = p ? strdup(p) : NULL;
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
}

static void teardown(void)
{
    flow_ctx_free(ctx);
    if (saved_path)
        setenv("FLOW_PLUGIN_PATH", saved_path, 1);
    else
        unsetenv("FLOW_PLUGIN_PATH");
    free(saved_path);
}

/* Asserts that the context's message contains `needle`. */
#define ck_assert_errmsg_has(needle) \
    ck_assert_msg(strstr(flow_errmsg(ctx), (needle)) != NULL, \
                  "message '%s' lacks '%s'", flow_errmsg(ctx), (needle))

START_TEST(test_good_plugin_loads)
{
    const char *file = NULL;
    const flow_layer_type *t;
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("good")), FLOW_OK);
    ck_assert_uint_eq(flow_plugin_count(ctx), 1);
    ck_assert_str_eq(flow_plugin_get(ctx, 0)->name, "good");
    t = flow_layer_type_find(ctx, "good_identity", &file);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->name, "good_identity");
    ck_assert_ptr_nonnull(strstr(file, "good.so"));
    ck_assert_ptr_null(flow_layer_type_find(ctx, "no_such_layer", NULL));
    /* loading the same file again is a no-op */
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("good")), FLOW_OK);
    ck_assert_uint_eq(flow_plugin_count(ctx), 1);
}
END_TEST

START_TEST(test_not_found_lists_dirs)
{
    setenv("FLOW_PLUGIN_PATH", "/nonexistent/a::/nonexistent/b", 1);
    ck_assert_int_eq(flow_plugin_load(ctx, "nosuch"), FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("plugin 'nosuch' not found: no nosuch.so in "
                         "/nonexistent/a, /nonexistent/b, ");
    ck_assert_errmsg_has("FLOW_PLUGIN_PATH");
}
END_TEST

START_TEST(test_never_current_directory)
{
    char tmpl[] = "/tmp/flowkit-cwd-XXXXXX";
    char cwd[4096], cmd[8192];
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/cwdplugin.so'",
             test_plugin("good"), tmpl);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(tmpl), 0);
    /* empty entries must not mean "." */
    setenv("FLOW_PLUGIN_PATH", "::", 1);
    ck_assert_int_eq(flow_plugin_load(ctx, "cwdplugin"), FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("not found");
    ck_assert_int_eq(flow_plugin_load_all(ctx), FLOW_OK);
    ck_assert_ptr_null(flow_layer_type_find(ctx, "good_identity", NULL));
    ck_assert_int_eq(chdir(cwd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_dlerror_passed_through)
{
    char path[] = "/tmp/flowkit-notelf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "not an ELF file\n", 16), 16);
    close(fd);
    ck_assert_int_eq(flow_plugin_load(ctx, path), FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("cannot load plugin ");
    ck_assert_errmsg_has(path);
    /* dlerror() text follows the file name */
    ck_assert_errmsg_has(": /tmp/flowkit-notelf-");
    unlink(path);
    ck_assert_int_eq(flow_plugin_load(ctx, "/nonexistent/x.so"),
                     FLOW_ERR_PLUGIN);
    ck_assert_str_eq(flow_errmsg(ctx), "cannot load plugin /nonexistent/x.so: "
                                       "No such file or directory");
}
END_TEST

START_TEST(test_missing_entry)
{
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("noentry")),
                     FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("noentry.so: entry point 'flow_plugin_entry' not "
                         "found");
    ck_assert_uint_eq(flow_plugin_count(ctx), 0);
}
END_TEST

START_TEST(test_abi_mismatch)
{
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("badabi")),
                     FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("badabi.so: ABI version mismatch: expected 1, got 2");
    ck_assert_uint_eq(flow_plugin_count(ctx), 0);
}
END_TEST

START_TEST(test_descriptor_too_small)
{
    char want[128];
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("small")),
                     FLOW_ERR_PLUGIN);
    snprintf(want, sizeof want, "small.so: descriptor too small (16 bytes, "
             "need at least %zu)", sizeof(flow_plugin_info));
    ck_assert_errmsg_has(want);
}
END_TEST

START_TEST(test_precision_mismatch)
{
    char want[160];
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("badreal")),
                     FLOW_ERR_PLUGIN);
    snprintf(want, sizeof want, "badreal.so: built for float%zu, but this "
             "flowkit computes in %s", 3 * sizeof(flow_real) * 8,
             flow_precision());
    ck_assert_errmsg_has(want);
}
END_TEST

START_TEST(test_duplicate_layer_names_both_files)
{
    char a[4096], b[4096], want[8300];
    ck_assert_ptr_nonnull(realpath(test_plugin("dup_a"), a));
    ck_assert_ptr_nonnull(realpath(test_plugin("dup_b"), b));
    ck_assert_int_eq(flow_plugin_load(ctx, a), FLOW_OK);
    ck_assert_int_eq(flow_plugin_load(ctx, b), FLOW_ERR_PLUGIN);
    snprintf(want, sizeof want, "duplicate layer type 'dup_layer': provided "
             "by both %s and %s", a, b);
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_uint_eq(flow_plugin_count(ctx), 1);
}
END_TEST

START_TEST(test_load_all_and_shadowing)
{
    char d1[] = "/tmp/flowkit-d1-XXXXXX", d2[] = "/tmp/flowkit-d2-XXXXXX";
    char env[256], cmd[8192];
    const char *file;
    ck_assert_ptr_nonnull(mkdtemp(d1));
    ck_assert_ptr_nonnull(mkdtemp(d2));
    /* the same file name in both: the first directory wins, no duplicate */
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/x.so' && cp '%s' '%s/x.so' && "
             "cp '%s' '%s/y.so'", test_plugin("dup_a"), d1,
             test_plugin("dup_b"), d2, test_plugin("good"), d2);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(env, sizeof env, "%s:%s", d1, d2);
    setenv("FLOW_PLUGIN_PATH", env, 1);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "dup_layer", &file));
    ck_assert_ptr_nonnull(strstr(file, d1));
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "good_identity", NULL));
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", d1, d2);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_load_all_reports_bad_file)
{
    char d1[] = "/tmp/flowkit-bad-XXXXXX", cmd[8192];
    ck_assert_ptr_nonnull(mkdtemp(d1));
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/a.so'", test_plugin("badabi"), d1);
    ck_assert_int_eq(system(cmd), 0);
    setenv("FLOW_PLUGIN_PATH", d1, 1);
    ck_assert_int_eq(flow_plugin_load_all(ctx), FLOW_ERR_PLUGIN);
    ck_assert_errmsg_has("/a.so: ABI version mismatch: expected 1, got 2");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d1);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_bundled_plugins_found_by_name)
{
    /* make check puts the build tree's plugins on FLOW_PLUGIN_PATH */
    ck_assert_int_eq(flow_plugin_load(ctx, "permute"), FLOW_OK);
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "permute", NULL));
    ck_assert_int_eq(flow_plugin_load(ctx, "bad/name"), FLOW_ERR_PLUGIN);
    ck_assert_int_eq(flow_plugin_load(ctx, "bad-name"), FLOW_ERR_INVAL);
    ck_assert_errmsg_has("invalid plugin name 'bad-name'");
}
END_TEST

/* On demand, a type comes from NAME.so alone: a broken plugin next to it
 * is never loaded unless a type is missing, and then it is skipped (the
 * type found in a later file) or named (the type not found). */
START_TEST(test_on_demand)
{
    char d1[] = "/tmp/flowkit-demand-XXXXXX", cmd[8192], path[8192];
    const char *bundled = getenv("FLOW_PLUGIN_PATH"), *file = NULL;
    ck_assert_ptr_nonnull(bundled);
    ck_assert_ptr_nonnull(mkdtemp(d1));
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/a.so' && cp '%s' '%s/good.so'",
             test_plugin("badabi"), d1, test_plugin("good"), d1);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(path, sizeof path, "%s:%s", d1, bundled);
    setenv("FLOW_PLUGIN_PATH", path, 1);
    ck_assert_int_eq(flow_plugin_load_on_demand(ctx), FLOW_OK);
    ck_assert_uint_eq(flow_plugin_count(ctx), 0);
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "permute", &file));
    ck_assert_uint_eq(flow_plugin_count(ctx), 1);
    ck_assert_ptr_nonnull(strstr(file, "permute.so"));
    /* good.so provides good_identity: every file is tried, a.so fails */
    ck_assert_ptr_nonnull(flow_layer_type_find(ctx, "good_identity", &file));
    ck_assert_ptr_nonnull(strstr(file, "/good.so"));
    ck_assert_ptr_null(flow_layer_type_find(ctx, "no_such_type", NULL));
    ck_assert_errmsg_has("/a.so: ABI version mismatch: expected 1, got 2");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d1);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_version)
{
    ck_assert_str_eq(flow_version(), FLOW_VERSION_STRING);
    ck_assert_int_eq(flow_version_number(), FLOW_VERSION_NUMBER);
    ck_assert_str_eq(flow_precision(), FLOW_REAL_DOUBLE ? "float64"
                                                        : "float32");
    ck_assert_uint_eq(flow_host_services()->abi_version,
                      FLOW_PLUGIN_ABI_VERSION);
    ck_assert_uint_eq(flow_host_services()->real_size, sizeof(flow_real));
}
END_TEST

/* A layer type with NULL workspace and init (ABI 1.4) loads, starts from
 * the host's zero parameters and runs both directions and the gradient in
 * a model, on one thread and on two (each with an empty workspace). */
START_TEST(test_null_workspace_and_init)
{
    enum { N = 64, D = 3 };
    static const flow_real b[D] = {0.5f, -1.25f, 2.0f};
    flow_real x[N * D], z[N * D], back[N * D], ld[N], lp[N];
    flow_real grad[D];
    double mean_logp, want_mean = 0, want_grad[D] = {0};
    const flow_layer_type *t;
    flow_model *m;
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("minimal")), FLOW_OK);
    t = flow_layer_type_find(ctx, "minimal_shift", NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_null(t->workspace);
    ck_assert_ptr_null(t->init);
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(1.7 * sin(0.37 * i + 0.2));
    for (size_t threads = 1; threads <= 2; threads++) {
        m = flow_model_new(ctx, D, 0);
        ck_assert_ptr_nonnull(m);
        ck_assert_msg(flow_model_add_layer(m, "minimal_shift", NULL, NULL, 0,
                                           0, 0, 0) == FLOW_OK,
                      "%s", flow_errmsg(ctx));
        ck_assert_msg(flow_model_finish(m, 7) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
        ck_assert_int_eq(flow_model_set_threads(m, threads), FLOW_OK);
        ck_assert_uint_eq(flow_model_num_params(m), D);
        /* no init: the host's zeros, so the layer is the identity */
        for (int i = 0; i < D; i++)
            ck_assert_double_eq(flow_model_params(m)[i], 0.0);
        ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, ld), FLOW_OK);
        for (int i = 0; i < N * D; i++)
            ck_assert_double_eq(z[i], x[i]);
        memcpy(flow_model_params(m), b, sizeof b);
        ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, ld), FLOW_OK);
        ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, NULL),
                         FLOW_OK);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp), FLOW_OK);
        for (int r = 0; r < N; r++) {
            double want = -0.5 * D * log(2 * M_PI);
            for (int i = 0; i < D; i++) {
                double zi = (double)x[r * D + i] + b[i];
                ck_assert_double_eq_tol(z[r * D + i], zi, 4 * TEST_EPS);
                ck_assert_double_eq_tol(back[r * D + i], x[r * D + i],
                                        8 * TEST_EPS);
                want -= 0.5 * zi * zi;
            }
            ck_assert_double_eq(ld[r], 0.0);
            ck_assert_double_eq_tol(lp[r], want, 100 * TEST_EPS);
        }
        /* mean log p = mean(-|x + b|^2 / 2) + const: d/db = -mean(x + b) */
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &mean_logp,
                                                grad), FLOW_OK);
        for (int i = 0; i < D; i++) {
            want_grad[i] = 0;
            for (int r = 0; r < N; r++)
                want_grad[i] -= ((double)x[r * D + i] + b[i]) / N;
            ck_assert_double_eq_tol(grad[i], want_grad[i], 100 * TEST_EPS);
        }
        want_mean = 0;
        for (int r = 0; r < N; r++)
            want_mean += (double)lp[r] / N;
        ck_assert_double_eq_tol(mean_logp, want_mean, 100 * TEST_EPS);
        flow_model_free(m);
    }
}
END_TEST

/* Checkpoint formats 1 and 2 stored MADE weights in another order: a
 * layer holding a host MADE without the upgrade_params hook (a plugin
 * built before ABI 1.11) is refused for them, by name, and passes for
 * format 3; a layer without a MADE passes for any format. */
START_TEST(test_made_without_upgrade_refused)
{
    enum { D = 3 };
    flow_real vec[64];
    flow_model *m;
    ck_assert_int_eq(flow_plugin_load(ctx, test_plugin("minimal")), FLOW_OK);
    for (int made = 0; made <= 1; made++) {
        const char *type = made ? "minimal_made" : "minimal_shift";
        m = flow_model_new(ctx, D, 0);
        ck_assert_ptr_nonnull(m);
        ck_assert_msg(flow_model_add_layer(m, type, NULL, NULL, 0, 0, 0, 0)
                      == FLOW_OK, "%s", flow_errmsg(ctx));
        ck_assert_msg(flow_model_finish(m, 7) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
        ck_assert_uint_eq(flow_model_num_params(m), D);
        for (int i = 0; i < D; i++)
            vec[i] = (flow_real)(i + 1);
        ck_assert_int_eq(model_upgrade_params(m, 3, vec), FLOW_OK);
        for (uint32_t format = 1; format <= 2; format++) {
            int rc = model_upgrade_params(m, format, vec);
            if (!made) {
                ck_assert_int_eq(rc, FLOW_OK);
                continue;
            }
            ck_assert_int_eq(rc, FLOW_ERR_UNSUPPORTED);
            ck_assert_msg(strstr(flow_errmsg(ctx), "minimal_made") != NULL
                          && strstr(flow_errmsg(ctx), "minimal.so") != NULL
                          && strstr(flow_errmsg(ctx), "upgrade_params")
                             != NULL, "%s", flow_errmsg(ctx));
        }
        /* refused or not, the vector is as it was */
        for (int i = 0; i < D; i++)
            ck_assert_double_eq(vec[i], (double)(i + 1));
        flow_model_free(m);
    }
}
END_TEST

Suite *suite_loader(void)
{
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("plugins");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_good_plugin_loads);
    tcase_add_test(tc, test_not_found_lists_dirs);
    tcase_add_test(tc, test_never_current_directory);
    tcase_add_test(tc, test_dlerror_passed_through);
    tcase_add_test(tc, test_missing_entry);
    tcase_add_test(tc, test_abi_mismatch);
    tcase_add_test(tc, test_descriptor_too_small);
    tcase_add_test(tc, test_precision_mismatch);
    tcase_add_test(tc, test_duplicate_layer_names_both_files);
    tcase_add_test(tc, test_load_all_and_shadowing);
    tcase_add_test(tc, test_load_all_reports_bad_file);
    tcase_add_test(tc, test_bundled_plugins_found_by_name);
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_on_demand);
    suite_add_tcase(s, tc);
    tc = tcase_create("optional_callbacks");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_null_workspace_and_init);
    tcase_add_test(tc, test_made_without_upgrade_refused);
    suite_add_tcase(s, tc);
    return s;
}
