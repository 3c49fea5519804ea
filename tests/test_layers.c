/* test_layers.c - layer-specific properties beyond the generic conformance
 * checks: IAF with a MAF's weights is that MAF's inverse; MAF sampling and
 * IAF density invert to 1e-5 on 64 dimensions; coupling masks; a glow
 * model's bits on any thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/conv.h"
#include "flow/flow.h"
#include "flow/flowc.h"
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

/* maf/iaf attributes: affine or spline transformer, the given order
 * alternative, hidden [h, h], tanh, identity init. */
typedef struct ar_cfg {
    flow_attr_value v[5], spline[5], seed;
    int64_t hidden[2];
} ar_cfg;

static void ar_config(ar_cfg *a, int spline, int order_alt, int64_t h)
{
    memset(a, 0, sizeof *a);
    a->v[0].type = FLOW_ATTR_VARIANT;
    a->v[0].i = spline ? 2 : 0;
    a->v[0].sub = spline ? a->spline : NULL;
    for (int i = 0; i < 5; i++)
        a->spline[i].type = i ? FLOW_ATTR_REAL : FLOW_ATTR_INT;
    a->spline[0].i = 8;
    a->spline[1].r = 3;
    a->spline[2].r = a->spline[3].r = a->spline[4].r = 1e-3;
    a->v[1].type = FLOW_ATTR_VARIANT;
    a->v[1].i = order_alt;
    a->v[1].sub = &a->seed;
    a->seed.type = FLOW_ATTR_INT;
    a->seed.i = 3;
    a->hidden[0] = a->hidden[1] = h;
    a->v[2].type = FLOW_ATTR_INT_LIST;
    a->v[2].ilist = a->hidden;
    a->v[2].n = 2;
    a->v[3].type = FLOW_ATTR_ENUM;
    a->v[3].i = 2;
    a->v[4].type = FLOW_ATTR_BOOL;
    a->v[4].i = 1;
}

static flow_model *ar_model(const char *type, size_t d, int spline,
                            int layers)
{
    flow_model *m = flow_model_new(ctx, d, 0);
    ar_cfg a;
    for (int l = 0; l < layers; l++) {
        ar_config(&a, spline, l % 2, 32);  /* natural, reverse, ... */
        ck_assert_msg(flow_model_add_layer(m, type, NULL, a.v, 5, 0, 0, 0)
                      == FLOW_OK, "%s", flow_errmsg(ctx));
    }
    ck_assert_int_eq(flow_model_finish(m, 1), FLOW_OK);
    return m;
}

static void perturb(flow_model *m, double scale, unsigned seed)
{
    flow_real *p = flow_model_params(m);
    srand(seed);
    for (size_t i = 0; i < flow_model_num_params(m); i++)
        p[i] = (flow_real)(p[i] + scale * ((double)rand() / RAND_MAX - 0.5));
}

START_TEST(test_iaf_with_maf_weights_is_maf_inverse)
{
    enum { N = 32, D = 6 };
    flow_model *maf = ar_model("maf", D, 0, 1), *iaf = ar_model("iaf", D, 0, 1);
    flow_real x[N * D], a[N * D], b[N * D], la[N], lb[N];
    size_t np = flow_model_num_params(maf);
    ck_assert_uint_eq(np, flow_model_num_params(iaf));
    perturb(maf, 0.6, 4);
    memcpy(flow_model_params(iaf), flow_model_params(maf),
           np * sizeof(flow_real));
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(1.7 * sin(0.31 * i + 1));
    /* IAF density direction == MAF sampling direction, bit for bit */
    ck_assert_int_eq(flow_model_forward(iaf, N, x, NULL, a, la), FLOW_OK);
    ck_assert_int_eq(flow_model_inverse(maf, N, x, NULL, b, lb), FLOW_OK);
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert_mem_eq(la, lb, sizeof la);
    /* and IAF sampling direction == MAF density direction */
    ck_assert_int_eq(flow_model_inverse(iaf, N, x, NULL, a, la), FLOW_OK);
    ck_assert_int_eq(flow_model_forward(maf, N, x, NULL, b, lb), FLOW_OK);
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert_mem_eq(la, lb, sizeof la);
    flow_model_free(maf);
    flow_model_free(iaf);
}
END_TEST

/* MAF sampling (sequential) and IAF density (sequential) on 64 dims: the
 * round trip through the parallel direction returns within 1e-5 in
 * float32 (1e-10 in float64). */
START_TEST(test_sequential_directions_64d)
{
    enum { N = 16, D = 64 };
    static const char *const types[] = {"maf", "iaf"};
    for (int t = 0; t < 2; t++)
        for (int spline = 0; spline < 2; spline++) {
            flow_model *m = ar_model(types[t], D, spline, 2);
            static flow_real x[N * D], z[N * D], back[N * D];
            flow_real l1[N], l2[N];
            double err = 0, lerr = 0;
            perturb(m, 0.2, 9);
            for (int i = 0; i < N * D; i++)
                x[i] = (flow_real)(2 * sin(0.77 * i) * cos(0.13 * i));
            /* sequential direction first for the iaf (density), last for
             * the maf (sampling) */
            ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, l1),
                             FLOW_OK);
            ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, l2),
                             FLOW_OK);
            for (int i = 0; i < N * D; i++)
                err = fmax(err, fabs((double)back[i] - x[i]));
            for (int r = 0; r < N; r++)
                lerr = fmax(lerr, fabs((double)l1[r] + l2[r]));
            ck_assert_msg(err <= (FLOW_REAL_DOUBLE ? 1e-10 : 1e-5),
                          "%s spline %d: round trip error %g", types[t],
                          spline, err);
            ck_assert_msg(lerr <= (FLOW_REAL_DOUBLE ? 1e-9 : 1e-4),
                          "%s spline %d: logdet sum %g", types[t], spline,
                          lerr);
            flow_model_free(m);
        }
}
END_TEST

START_TEST(test_coupling_errors)
{
    flow_attr_value v[6], sub;
    int64_t hidden[1] = {8}, mask[3] = {1, 1, 1};
    flow_model *m = flow_model_new(ctx, 3, 0);
    memset(v, 0, sizeof v);
    memset(&sub, 0, sizeof sub);
    v[0].type = FLOW_ATTR_VARIANT;
    v[1].type = FLOW_ATTR_VARIANT;
    v[1].i = 3;                 /* explicit */
    v[1].sub = &sub;
    sub.type = FLOW_ATTR_INT_LIST;
    sub.ilist = mask;
    sub.n = 3;
    v[2].type = FLOW_ATTR_INT_LIST;
    v[2].ilist = hidden;
    v[2].n = 1;
    v[3].type = FLOW_ATTR_ENUM;
    v[4].type = FLOW_ATTR_BOOL;
    v[5].type = FLOW_ATTR_VARIANT;  /* net = mlp */
    ck_assert_int_eq(flow_model_add_layer(m, "coupling", "c1", v, 6, 0, 0, 0),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "c1 (") && strstr(flow_errmsg(ctx),
                  "coupling.so): the mask transforms every dimension: a "
                  "coupling layer needs both a transformed and a "
                  "conditioning part (input has 3 dimensions)"),
                  "%s", flow_errmsg(ctx));
    sub.n = 2;
    ck_assert_int_eq(flow_model_add_layer(m, "coupling", "c1", v, 6, 0, 0, 0),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "mask has 2 entries but the "
                         "layer's input has 3 dimensions"), "%s",
                  flow_errmsg(ctx));
    flow_model_free(m);
}
END_TEST

/* A conv coupling on one 3x4x4 image against the same computation done
 * here: the host's conv net (runtime/conv.c) on the net's input (the
 * conditioning channels, or the image with the transformed pixels zeroed),
 * then RealNVP's affine map y = x exp(5 tanh(s / 5)) + t (Dinh et al.
 * 2017, eq. 6) with (s, t) of transformed scalar (c, hw) at output
 * channels 2c and 2c + 1 (the layout of plugins/coupling.c); then the
 * inverse gives x back.  checker: 1 = checkerboard(1), 0 = channel(1)
 * (C = 3: channel 0 transformed, 1 and 2 condition). */
static void conv_coupling_case(int checker)
{
    enum { C = 3, H = 4, W = 4, HW = H * W, D = C * HW };
    char src[512];
    flow_compilation *comp;
    flow_model *m = NULL;
    flow_net_spec sp;
    conv_net *net;
    flow_real x[D], z[D], xb[D], ld[1], ldi[1], xin[D], *y, *ws;
    int tr[D];
    size_t ct = checker ? C : 1, ccond = checker ? C : 2;
    double want_ld = 0, err = 0, err_inv = 0;
    char msg[256];
    snprintf(src, sizeof src, "flow f {\n  input x : real[%d, %d, %d];\n"
             "  coupling(mask = %s, net = conv(hidden = 5, blocks = 1));\n"
             "  output z ~ normal;\n}\n", C, H, W,
             checker ? "checkerboard(1)" : "channel(1)");
    comp = flow_compile_string(ctx, "conv.flow", src, strlen(src));
    ck_assert_ptr_nonnull(comp);
    if (flow_compile_errors(comp))
        flow_compile_print_diags(comp, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_errors(comp), 0);
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(comp), 7,
                                            &m), FLOW_OK);
    perturb(m, 0.8, 11);        /* the last conv starts at 0: move it */
    for (size_t i = 0; i < D; i++) {
        size_t c = i / HW, hw = i % HW;
        x[i] = (flow_real)sin(0.7 * (double)i + 0.3);
        tr[i] = checker ? (int)((hw / W + hw % W) % 2 == 1) : c == 0;
        xin[i] = 0;
    }
    ck_assert_int_eq(flow_model_forward(m, 1, x, NULL, z, ld), FLOW_OK);

    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_CONV;
    sp.act = FLOW_ACT_RELU;
    sp.channels = ccond;
    sp.height = H;
    sp.width = W;
    sp.conv_hidden = 5;
    sp.kernel = 3;
    sp.blocks = 1;
    sp.out_channels = ct * 2;
    sp.in = ccond * HW;
    sp.out = ct * 2 * HW;
    net = conv_net_create(&sp, msg, sizeof msg);
    ck_assert_msg(net != NULL, "%s", msg);
    ck_assert_uint_eq(conv_net_params(net), flow_model_num_params(m));
    for (size_t i = 0; i < D; i++) {
        if (checker)
            xin[i] = tr[i] ? 0 : x[i];
        else if (i >= HW)
            xin[i - HW] = x[i];
    }
    y = malloc(sp.out * sizeof *y);
    ws = aligned_alloc(64, (conv_net_workspace(net, 1) + 63) / 64 * 64);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(ws);
    ck_assert_int_eq(conv_net_forward(net, flow_model_params(m), 1, xin,
                                      NULL, y, ws), FLOW_OK);
    for (size_t i = 0; i < D; i++) {
        size_t c = i / HW, hw = i % HW;   /* transformed: c relative */
        double want = x[i];
        if (tr[i]) {
            double s = y[(c * 2) * HW + hw], t = y[(c * 2 + 1) * HW + hw];
            double l = 5 * tanh(s / 5);
            want = x[i] * exp(l) + t;
            want_ld += l;
        }
        if (fabs(z[i] - want) > err)
            err = fabs(z[i] - want);
    }
    /* float32: the net's sums of 45 products of O(1) values */
    ck_assert_msg(err < 1e-5, "%s: max |z - reference| = %g",
                  checker ? "checkerboard" : "channel", err);
    ck_assert_double_eq_tol(ld[0], want_ld, 1e-4);
    ck_assert_msg(fabs(want_ld) > 0.1, "the perturbed net must scale: "
                  "log-det %g", want_ld);
    ck_assert_int_eq(flow_model_inverse(m, 1, z, NULL, xb, ldi), FLOW_OK);
    for (size_t i = 0; i < D; i++)
        if (fabs(xb[i] - x[i]) > err_inv)
            err_inv = fabs(xb[i] - x[i]);
    ck_assert_msg(err_inv < 1e-5, "round trip: max |x - f^-1(f(x))| = %g",
                  err_inv);
    ck_assert_double_eq_tol(ldi[0], -ld[0], 1e-4);
    free(ws);
    free(y);
    conv_net_destroy(net);
    flow_model_free(m);
    flow_compile_free(comp);
}

START_TEST(test_conv_coupling_reference)
{
    conv_coupling_case(0);
    conv_coupling_case(1);
}
END_TEST

/* A log-density of many large images runs in blocks of rows (the density
 * pass keeps each conditioner's tape: here about 0.5 MB per 2x32x32
 * image, so blocks of 64): every row the same bits as alone, on one
 * thread and on two. */
START_TEST(test_log_prob_blocks)
{
    enum { N = 130, D = 2 * 32 * 32 };
    static const char src[] =
        "flow big {\n  input x : real[2, 32, 32];\n"
        "  coupling(mask = channel, net = conv(hidden = 64));\n"
        "  output z ~ normal;\n}\n";
    flow_compilation *comp = flow_compile_string(ctx, "big.flow", src,
                                                 strlen(src));
    flow_model *m = NULL;
    flow_real *x = malloc((size_t)N * D * sizeof *x);
    flow_real all[N], one[1];
    ck_assert_ptr_nonnull(comp);
    ck_assert_ptr_nonnull(x);
    ck_assert_uint_eq(flow_compile_errors(comp), 0);
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(comp), 3,
                                            &m), FLOW_OK);
    perturb(m, 0.3, 5);         /* the last conv starts at 0: move it */
    for (size_t i = 0; i < (size_t)N * D; i++)
        x[i] = (flow_real)sin(0.37 * (double)i + 0.1);
    for (int threads = 1; threads <= 2; threads++) {
        ck_assert_int_eq(flow_model_set_threads(m, (size_t)threads),
                         FLOW_OK);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, all), FLOW_OK);
        for (size_t r = 0; r < N; r++) {
            ck_assert_int_eq(flow_model_log_prob(m, 1, x + r * D, NULL, one),
                             FLOW_OK);
            ck_assert_msg(memcmp(&one[0], &all[r], sizeof one[0]) == 0,
                          "threads %d, row %zu: %.9g in the batch, %.9g "
                          "alone", threads, r, (double)all[r],
                          (double)one[0]);
        }
    }
    flow_model_free(m);
    flow_compile_free(comp);
    free(x);
}
END_TEST

/* glow_tiny's architecture (specs/glow_tiny.flow): dequantization,
 * logit, two scales of actnorm, conv1x1 and affine coupling with a
 * 16-channel convolutional conditioner on 4 x 4 and 2 x 2 planes. */
static const char glow_small[] =
    "flow glow_small {\n"
    "  input x : real[1, 8, 8] in [0, 255];\n"
    "  dequantize(levels = 256);\n"
    "  logit(alpha = 0.05);\n"
    "  squeeze(factor = 2);\n"
    "  repeat 2 {\n"
    "    actnorm;\n"
    "    conv1x1;\n"
    "    coupling(mask = channel, net = conv(hidden = 16),\n"
    "             transformer = affine);\n"
    "  }\n"
    "  exit 2 -> z1 ~ normal;\n"
    "  squeeze(factor = 2);\n"
    "  repeat 2 {\n"
    "    actnorm;\n"
    "    conv1x1;\n"
    "    coupling(mask = channel, net = conv(hidden = 16),\n"
    "             transformer = affine);\n"
    "  }\n"
    "  output z ~ normal;\n"
    "}\n";

typedef struct glow_out {
    flow_real lp[63], x[63 * 64], slp[63], *grad;
    double mean;
} glow_out;

/* Log-densities, samples (with their log-densities) and the training
 * gradient (dequantization noise drawn) of n rows, each from a fixed
 * seed of the model's stream. */
static void glow_run(flow_model *m, size_t n, const flow_real *x,
                     glow_out *o)
{
    ck_assert_int_eq(flow_model_log_prob(m, n, x, NULL, o->lp), FLOW_OK);
    flow_model_seed(m, 7);
    ck_assert_int_eq(flow_model_sample(m, n, NULL, o->x, o->slp), FLOW_OK);
    flow_model_seed(m, 9);
    ck_assert_int_eq(flow_model_loglik_grad(m, n, x, NULL, &o->mean,
                                            o->grad), FLOW_OK);
}

static void glow_same(const char *what, const char *how, size_t n,
                      const flow_real *a, const flow_real *b, size_t m)
{
    for (size_t q = 0; q < m; q++)
        ck_assert_msg(memcmp(&a[q], &b[q], sizeof *a) == 0,
                      "%zu rows, %s: %s[%zu] = %.9g, one thread %.9g", n, how,
                      what, q, (double)b[q], (double)a[q]);
}

/* The executor lends its pool to a batch of fewer than 2 x 32 rows (one
 * row chunk) and the conv conditioners split their channels over it
 * (runtime/conv_split.c): log-densities, samples and the parameter
 * gradient of 1, 5, 16 and 63 rows are the bits of one thread on 2 and 3
 * threads with the split forced on every call (work threshold 0), and on
 * 2 threads with it off (the unsplit path). */
START_TEST(test_glow_threads_bits)
{
    enum { NMAX = 63, D = 64 };
    static const size_t sizes[] = {1, 5, 16, 63};
    static const struct { size_t threads, split_min; const char *how; }
        runs[] = {{2, 0, "2 threads, split"}, {3, 0, "3 threads, split"},
                  {2, SIZE_MAX, "2 threads, not split"}};
    flow_compilation *comp = flow_compile_string(ctx, "glow.flow", glow_small,
                                                 strlen(glow_small));
    flow_model *m = NULL;
    flow_real x[NMAX * D];
    glow_out *o = malloc(2 * sizeof *o);
    size_t np, keep;
    ck_assert_ptr_nonnull(comp);
    ck_assert_ptr_nonnull(o);
    ck_assert_uint_eq(flow_compile_errors(comp), 0);
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(comp), 3,
                                            &m), FLOW_OK);
    np = flow_model_num_params(m);
    o[0].grad = malloc(np * sizeof *o[0].grad);
    o[1].grad = malloc(np * sizeof *o[1].grad);
    ck_assert_ptr_nonnull(o[0].grad);
    ck_assert_ptr_nonnull(o[1].grad);
    for (size_t i = 0; i < NMAX * D; i++)   /* integer pixels */
        x[i] = (flow_real)floor(127.5 + 127 * sin(0.37 * (double)i + 0.1));
    ck_assert_int_eq(flow_model_data_init(m, NMAX, x, NULL), FLOW_OK);
    perturb(m, 0.1, 3);         /* the last convs start at 0: move them */
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const size_t n = sizes[si];
        double gmax = 0;
        ck_assert_int_eq(flow_model_set_threads(m, 1), FLOW_OK);
        glow_run(m, n, x, &o[0]);
        for (size_t q = 0; q < np; q++)
            gmax = fmax(gmax, fabs(o[0].grad[q]));
        ck_assert_msg(gmax > 1e-3 && isfinite(o[0].mean),
                      "%zu rows: mean log-likelihood %g, largest gradient "
                      "%g", n, o[0].mean, gmax);
        for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
            keep = conv_set_split_min(runs[k].split_min);
            ck_assert_int_eq(flow_model_set_threads(m, runs[k].threads),
                             FLOW_OK);
            glow_run(m, n, x, &o[1]);
            conv_set_split_min(keep);
            glow_same("log p", runs[k].how, n, o[0].lp, o[1].lp, n);
            glow_same("sample", runs[k].how, n, o[0].x, o[1].x, n * D);
            glow_same("sample log p", runs[k].how, n, o[0].slp, o[1].slp, n);
            glow_same("gradient", runs[k].how, n, o[0].grad, o[1].grad, np);
            ck_assert_msg(memcmp(&o[0].mean, &o[1].mean, sizeof o[0].mean)
                          == 0, "%zu rows, %s: mean %.17g, one thread "
                          "%.17g", n, runs[k].how, o[1].mean, o[0].mean);
        }
    }
    free(o[0].grad);
    free(o[1].grad);
    free(o);
    flow_model_free(m);
    flow_compile_free(comp);
}
END_TEST

/* The sampling direction's backward through a whole model (MAF, IAF,
 * permutation and an exit) against central differences, in double. */
START_TEST(test_model_inverse_grad)
{
    enum { N = 5, D = 4 };
    flow_model *m = flow_model_new(ctx, D, 0);
    flow_attr_value order;
    ar_cfg a;
    flow_real z[N * D], x[N * D], w[N * D], u[N], ld[N], *g, *p, dz[N * D];
    size_t np;
    ar_config(&a, 1, 0, 8);
    ck_assert_int_eq(flow_model_add_layer(m, "maf", NULL, a.v, 5, 0, 0, 0),
                     FLOW_OK);
    memset(&order, 0, sizeof order);
    order.type = FLOW_ATTR_VARIANT;
    ck_assert_int_eq(flow_model_add_layer(m, "permute", NULL, &order, 1, 0, 0,
                                          0), FLOW_OK);
    ck_assert_int_eq(flow_model_add_exit(m, 1, "e", FLOW_BASE_NORMAL, NULL, 0),
                     FLOW_OK);
    ar_config(&a, 0, 1, 8);
    ck_assert_int_eq(flow_model_add_layer(m, "iaf", NULL, a.v, 5, 0, 0, 0),
                     FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 2), FLOW_OK);
    perturb(m, 0.4, 5);
    np = flow_model_num_params(m);
    p = flow_model_params(m);
    g = malloc(np * sizeof *g);
    for (int i = 0; i < N * D; i++) {
        z[i] = (flow_real)(1.3 * sin(0.9 * i + 0.2));
        w[i] = (flow_real)cos(0.4 * i);
    }
    for (int r = 0; r < N; r++)
        u[r] = (flow_real)(0.5 - 0.2 * r);
    ck_assert_int_eq(flow_model_inverse_grad(m, N, z, NULL, w, u, g, dz),
                     FLOW_OK);
    for (size_t j = 0; j < np; j += (np > 40 ? np / 40 : 1)) {
        double h = FLOW_REAL_DOUBLE ? 1e-6 : 1e-2, f[2];
        flow_real keep = p[j];
        for (int s2 = 0; s2 < 2; s2++) {
            p[j] = (flow_real)(keep + (s2 ? -h : h));
            ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, x, ld),
                             FLOW_OK);
            f[s2] = 0;
            for (int i = 0; i < N * D; i++)
                f[s2] += (double)w[i] * x[i];
            for (int r = 0; r < N; r++)
                f[s2] += (double)u[r] * ld[r];
        }
        p[j] = keep;
        ck_assert_msg(fabs(g[j] - (f[0] - f[1]) / (2 * h))
                      <= (FLOW_REAL_DOUBLE ? 1e-6 : 1e-2)
                             * (1 + fabs((f[0] - f[1]) / (2 * h))),
                      "param %zu: analytic %g, FD %g", j, (double)g[j],
                      (f[0] - f[1]) / (2 * h));
    }
    /* and d/dz, through the exit too */
    for (int i = 0; i < N * D; i++) {
        double h = FLOW_REAL_DOUBLE ? 1e-6 : 1e-2, f[2];
        flow_real keep = z[i];
        for (int s2 = 0; s2 < 2; s2++) {
            z[i] = (flow_real)(keep + (s2 ? -h : h));
            ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, x, ld),
                             FLOW_OK);
            f[s2] = 0;
            for (int q = 0; q < N * D; q++)
                f[s2] += (double)w[q] * x[q];
            for (int r = 0; r < N; r++)
                f[s2] += (double)u[r] * ld[r];
        }
        z[i] = keep;
        ck_assert_msg(fabs(dz[i] - (f[0] - f[1]) / (2 * h))
                      <= (FLOW_REAL_DOUBLE ? 1e-6 : 1e-2)
                             * (1 + fabs((f[0] - f[1]) / (2 * h))),
                      "z %d: analytic %g, FD %g", i, (double)dz[i],
                      (f[0] - f[1]) / (2 * h));
    }
    free(g);
    flow_model_free(m);
}
END_TEST

Suite *suite_layers(void)
{
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("autoregressive");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_iaf_with_maf_weights_is_maf_inverse);
    tcase_add_test(tc, test_sequential_directions_64d);
    suite_add_tcase(s, tc);
    tc = tcase_create("coupling");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_coupling_errors);
    tcase_add_test(tc, test_conv_coupling_reference);
    tcase_add_test(tc, test_log_prob_blocks);
    tcase_add_test(tc, test_glow_threads_bits);
    suite_add_tcase(s, tc);
    tc = tcase_create("inverse_gradients");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_model_inverse_grad);
    suite_add_tcase(s, tc);
    return s;
}
