/* test_export.c - portable exports (runtime/export.c, docs/export.md):
 * tensor names, shapes, dtypes and values, duplicate names refused,
 * layers without an export hook flagged. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow/flowc.h"
#include "model_util.h"
#include "suites.h"
#include "../runtime/json.h"

static flow_ctx *ctx;
static char path[64];
static unsigned char *file;     /* the export read back */
static json_doc *head, *arch;

static void setup(void)
{
    ctx = tu_ctx_with_plugins();
    snprintf(path, sizeof path, "/tmp/flowkit-exp-%ld.st", (long)getpid());
    file = NULL;
    head = arch = NULL;
}

static void teardown(void)
{
    unlink(path);
    free(file);
    json_free(head);
    json_free(arch);
    flow_ctx_free(ctx);
}

static flow_model *build(const char *src, flow_compilation **comp)
{
    return tu_build_model(ctx, "ex.flow", src, 3, comp);
}

/* Reads path: the header into `head`, the architecture into `arch`;
 * returns the start of the data section. */
static const unsigned char *read_back(void)
{
    FILE *f = fopen(path, "rb");
    long size;
    uint64_t n = 0;
    const json_value *md, *a;
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    rewind(f);
    file = malloc((size_t)size);
    ck_assert_uint_eq(fread(file, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    for (int i = 7; i >= 0; i--)
        n = n << 8 | file[i];
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_uint_le(8 + n, (uint64_t)size);
    ck_assert_int_eq(json_parse(ctx, "header", (const char *)file + 8,
                                (size_t)n, 64, &head), FLOW_OK);
    md = json_get(json_root(head), "__metadata__");
    ck_assert_ptr_nonnull(md);
    ck_assert_str_eq(json_get(md, "format")->str, "flowkit.export");
    ck_assert_str_eq(json_get(md, "format_version")->str, "1");
    ck_assert_str_eq(json_get(md, "dtype")->str,
                     FLOW_REAL_DOUBLE ? "F64" : "F32");
    a = json_get(md, "architecture");
    ck_assert_int_eq(json_parse(ctx, "architecture", a->str, a->len, 64,
                                &arch), FLOW_OK);
    return file + 8 + n;
}

/* Tensor `name`: dtype, shape (ndim entries) and its data. */
static const unsigned char *tensor(const unsigned char *data,
                                   const char *name, const char *dtype,
                                   size_t ndim, const size_t *shape)
{
    const json_value *t = json_get(json_root(head), name), *sh, *off;
    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_str_eq(json_get(t, "dtype")->str, dtype);
    sh = json_get(t, "shape");
    ck_assert_uint_eq(sh->len, ndim);
    for (size_t i = 0; i < ndim; i++)
        ck_assert_msg(sh->items[i].num == (double)shape[i], "%s: dimension "
                      "%zu is %g, want %zu", name, i, sh->items[i].num,
                      shape[i]);
    off = json_get(t, "data_offsets");
    return data + (size_t)off->items[0].num;
}

static const char spec[] =
    "flow ex {\n"
    "  input x : real[3];\n"
    "  coupling(mask = parity(0), hidden = [5]);\n"
    "  permute(order = reverse);\n"
    "  maf(hidden = [4], transformer = spline(bins = 3, bound = 2));\n"
    "  actnorm();\n"
    "  output z ~ diag_normal;\n"
    "}\n";

START_TEST(test_names_shapes_values)
{
    flow_compilation *c;
    flow_model *m = build(spec, &c);
    const unsigned char *data;
    const flow_real *p = flow_model_params(m);
    const char *real = FLOW_REAL_DOUBLE ? "F64" : "F32";
    size_t s31[1] = {3}, s53[2] = {5, 1}, s45[2] = {4, 5}, s4x3[2] = {4, 3};
    size_t s8x4[2] = {3 * 8, 4}, s5[1] = {5};
    const uint8_t *mask, *mmask;
    const int64_t *perm, *order;
    const flow_real *w, *mw;
    const json_value *layers, *l0, *tf;
    size_t reals = 0;
    /* coupling D = 3, parity(0): dimensions 0 and 2 transformed by an
     * affine transformer (P = 2) conditioned on dimension 1 */
    ck_assert_msg(flow_model_export(m, spec, path, NULL, NULL) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    data = read_back();
    mask = tensor(data, "layers.0.mask", "U8", 1, s31);
    ck_assert_int_eq(mask[0], 0);
    ck_assert_int_eq(mask[1], 1);
    ck_assert_int_eq(mask[2], 0);
    w = (const flow_real *)(const void *)tensor(data,
                                                "layers.0.net.0.weight",
                                                real, 2, s53);
    /* the first map's weight is the first 5 parameters of the layer */
    ck_assert_mem_eq(w, p, 5 * sizeof *w);
    tensor(data, "layers.0.net.0.bias", real, 1, s5);
    tensor(data, "layers.0.net.1.weight", real, 2, s45);
    perm = (const int64_t *)(const void *)tensor(data, "layers.1.perm",
                                                 "I64", 1, s31);
    ck_assert_int_eq(perm[0], 2);
    ck_assert_int_eq(perm[2], 0);
    order = (const int64_t *)(const void *)tensor(data, "layers.2.order",
                                                  "I64", 1, s31);
    ck_assert_int_eq(order[1], 1);
    /* MADE: masked weights exported as 0, the mask beside them */
    mw = (const flow_real *)(const void *)tensor(data,
                                                 "layers.2.net.0.weight",
                                                 real, 2, s4x3);
    mmask = tensor(data, "layers.2.net.0.mask", "U8", 2, s4x3);
    for (size_t i = 0; i < 12; i++)
        if (!mmask[i])
            ck_assert_msg(mw[i] == 0, "masked weight %zu is %g", i,
                          (double)mw[i]);
    /* spline with 3 bins: P = 3 * 3 - 1 = 8 outputs per dimension */
    tensor(data, "layers.2.net.1.weight", real, 2, s8x4);
    tensor(data, "layers.3.log_scale", real, 1, s31);
    tensor(data, "layers.3.shift", real, 1, s31);
    tensor(data, "base.mean", real, 1, s31);
    tensor(data, "base.log_std", real, 1, s31);
    /* every parameter exactly once as a weight tensor */
    for (size_t i = 0; i < json_root(head)->len; i++) {
        const json_value *t = &json_root(head)->items[i], *sh;
        size_t count = 1;
        if (!strcmp(json_root(head)->keys[i], "__metadata__")
            || strcmp(json_get(t, "dtype")->str, real))
            continue;
        sh = json_get(t, "shape");
        for (size_t k = 0; k < sh->len; k++)
            count *= (size_t)sh->items[k].num;
        reals += count;
    }
    ck_assert_uint_eq(reals, flow_model_num_params(m));
    layers = json_get(json_root(arch), "layers");
    ck_assert_uint_eq(layers->len, 4);
    l0 = &layers->items[0];
    ck_assert_str_eq(json_get(l0, "type")->str, "coupling");
    ck_assert_int_eq(json_get(l0, "portable")->type, JSON_TRUE);
    ck_assert_str_eq(json_get(json_get(l0, "net"), "kind")->str, "mlp");
    tf = json_get(&layers->items[2], "transformer");
    ck_assert_str_eq(json_get(tf, "kind")->str, "spline");
    ck_assert_double_eq_tol(json_get(tf, "bound")->num, 2.0, 1e-12);
    ck_assert_double_eq(json_get(tf, "params_per_scalar")->num, 8);
    ck_assert_str_eq(json_get(json_get(json_root(arch), "base"),
                              "kind")->str, "diag_normal");
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

static int notes;
static char note[512];

static void on_note(void *arg, const char *line)
{
    (void)arg;
    notes++;
    snprintf(note, sizeof note, "%s", line);
}

START_TEST(test_layer_without_hook_flagged)
{
    static const char src[] =
        "flow nh {\n"
        "  input x : real[2];\n"
        "  actnorm();\n"
        "  minimal_shift();\n"
        "  output z ~ normal;\n"
        "}\n";
    flow_compilation *c;
    flow_model *m;
    const unsigned char *data;
    const json_value *layers;
    size_t s2[1] = {2};
    ck_assert_msg(flow_plugin_load(ctx, test_plugin("minimal")) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    m = build(src, &c);
    flow_model_params(m)[4] = (flow_real)0.25;   /* the shift's b[0] */
    notes = 0;
    ck_assert_msg(flow_model_export(m, src, path, on_note, NULL) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    ck_assert_int_eq(notes, 1);
    ck_assert_msg(strstr(note, "layer 1, minimal_shift#1") != NULL
                  && strstr(note, "no export hook") != NULL, "%s", note);
    data = read_back();
    layers = json_get(json_root(arch), "layers");
    ck_assert_int_eq(json_get(&layers->items[0], "portable")->type,
                     JSON_TRUE);
    ck_assert_int_eq(json_get(&layers->items[1], "portable")->type,
                     JSON_FALSE);
    ck_assert_double_eq(((const flow_real *)(const void *)tensor(
        data, "layers.1.params", FLOW_REAL_DOUBLE ? "F64" : "F32", 1,
        s2))[0], 0.25);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

/* The faulty plugin lives in tests/faultplugins, beside tests/plugins. */
static const char *faulty_plugin(void)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/../../faultplugins/.libs/faulty.so",
             getenv("FLOW_TEST_PLUGINS") ? getenv("FLOW_TEST_PLUGINS")
                                         : "tests/plugins/.libs");
    return buf;
}

START_TEST(test_duplicate_names_refused)
{
    static const char src[] =
        "flow dup {\n"
        "  input x : real[2];\n"
        "  actnorm();\n"
        "  fault_export();\n"
        "  output z ~ normal;\n"
        "}\n";
    flow_compilation *c;
    flow_model *m;
    ck_assert_msg(flow_plugin_load(ctx, faulty_plugin()) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    m = build(src, &c);
    ck_assert_int_eq(flow_model_export(m, src, path, NULL, NULL),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "layer 1, fault_export#1") != NULL
                  && strstr(flow_errmsg(ctx), "tensor 'layers.1.shift' of "
                            "fault_export#1 is written twice") != NULL,
                  "%s", flow_errmsg(ctx));
    ck_assert_int_ne(access(path, F_OK), 0);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_bad_attribute_refused)
{
    static const char src[] =
        "flow bad {\n"
        "  input x : real[2];\n"
        "  fault_export(at = -1);\n"
        "  output z ~ normal;\n"
        "}\n";
    flow_compilation *c;
    flow_model *m;
    ck_assert_msg(flow_plugin_load(ctx, faulty_plugin()) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    m = build(src, &c);
    ck_assert_int_eq(flow_model_export(m, src, path, NULL, NULL),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "attribute 'broken' is not JSON")
                  != NULL, "%s", flow_errmsg(ctx));
    ck_assert_int_ne(access(path, F_OK), 0);
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

Suite *suite_export(void)
{
    Suite *s = suite_create("export");
    TCase *tc = tcase_create("writer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_names_shapes_values);
    tcase_add_test(tc, test_layer_without_hook_flagged);
    tcase_add_test(tc, test_duplicate_names_refused);
    tcase_add_test(tc, test_bad_attribute_refused);
    suite_add_tcase(s, tc);
    return s;
}
