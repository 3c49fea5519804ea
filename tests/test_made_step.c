/* test_made_step.c - the MADE speed paths: sampling degree by
 * degree (nn_made_step) against dense forward passes on random weights,
 * masked weights included, and through 64 sequential affine inversions;
 * premasked nets (gradients of masked weights exactly 0, the check and
 * repair of parameters from elsewhere); Adam keeping the masked weights of
 * a trained maf layer at exactly 0; MADE in degree order (blocked)
 * against the dense passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/nn.h"
#include "../runtime/rng.h"
#include "../runtime/transform.h"
#include "flow/flow.h"
#include "suites.h"

/* relative agreement of two computations of the same sums in another
 * order of additions */
#if FLOW_REAL_DOUBLE
# define STEP_TOL 1e-12
#else
# define STEP_TOL 1e-6
#endif
/* gradients: two more GEMM chains (sums of up to 512 float products
 * each, in another order) on top of the forward's */
#if FLOW_REAL_DOUBLE
# define GRAD_TOL 1e-11
#else
# define GRAD_TOL 1e-5
#endif

typedef struct mcase {
    size_t d, k, out, nh, hidden[2];
    flow_activation act;
    int shuffle;               /* order: 0 natural, 1 a seeded permutation */
} mcase;

static flow_net *made(const mcase *mc, int32_t *order, int premasked)
{
    flow_net_spec sp;
    char err[256];
    flow_net *net;
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_MADE;
    sp.in = mc->d;
    sp.context = mc->k;
    sp.out = mc->out;
    sp.n_hidden = mc->nh;
    sp.hidden = mc->hidden;
    sp.act = mc->act;
    sp.order = order;
    sp.seed = 5;
    sp.premasked = premasked;
    net = nn_create(&sp, err, sizeof err);
    ck_assert_msg(net != NULL, "nn_create: %s", err);
    return net;
}

static void make_order(const mcase *mc, int32_t *order, flow_rng *r)
{
    for (size_t i = 0; i < mc->d; i++)
        order[i] = (int32_t)i;
    for (size_t i = mc->d; mc->shuffle && i > 1; i--) {
        size_t j = (size_t)rng_below(r, i);
        int32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

static void *ws_alloc(const flow_net *net, size_t n)
{
    size_t b = nn_workspace(net, n);
    void *ws;
    ck_assert_uint_gt(b, 0);
    ws = aligned_alloc(64, (b + 63) / 64 * 64);
    ck_assert_ptr_nonnull(ws);
    return ws;
}

static const mcase cases[] = {
    {64, 0, 2, 2, {96, 80}, FLOW_ACT_RELU, 0},   /* maf64-like, narrow   */
    {64, 3, 2, 2, {128, 128}, FLOW_ACT_TANH, 1}, /* context, shuffled    */
    {5, 0, 3, 1, {3}, FLOW_ACT_RELU, 1},         /* fewer units than D-1 */
    {1, 2, 2, 1, {6}, FLOW_ACT_ELU, 0},          /* D = 1: context only  */
    {7, 0, 2, 0, {0}, FLOW_ACT_RELU, 1},         /* no hidden layer      */
    {9, 1, 2, 2, {40, 7}, FLOW_ACT_LEAKY_RELU, 1},
};

/* Step s gives the outputs of the dimension of degree s + 1 that a dense
 * forward pass on the same inputs gives (random weights: the masked ones
 * are not 0 and must be ignored). */
START_TEST(test_step_matches_forward)
{
    enum { N = 9 };
    const mcase *mc = &cases[_i];
    size_t d = mc->d, k = mc->k, out = mc->out, np;
    int32_t *order = malloc(d * sizeof *order);
    size_t *by_deg = malloc(d * sizeof *by_deg);
    flow_rng r;
    flow_net *net;
    flow_real *p, *x, *c, *y, *th, *xp;
    void *ws, *ws2;
    double err = 0, ref = 0;
    rng_seed(&r, 40 + (uint64_t)_i);
    make_order(mc, order, &r);
    for (size_t i = 0; i < d; i++)
        by_deg[order[i]] = i;
    net = made(mc, order, 0);
    np = nn_params(net);
    p = malloc(np * sizeof *p);
    x = malloc(N * d * sizeof *x);
    c = malloc((N * k + 1) * sizeof *c);
    y = malloc(N * d * out * sizeof *y);
    th = malloc(N * out * sizeof *th);
    xp = malloc(N * sizeof *xp);
    ck_assert_ptr_nonnull(order);
    ck_assert_ptr_nonnull(by_deg);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(th);
    ck_assert_ptr_nonnull(xp);
    rng_normal(&r, p, np);               /* every weight, masked or not */
    rng_normal(&r, x, N * d);
    rng_normal(&r, c, N * k);
    ws = ws_alloc(net, N);
    ws2 = ws_alloc(net, N);
    ck_assert_int_eq(nn_forward(net, p, N, x, k ? c : NULL, 0, y, ws),
                     FLOW_OK);
    for (size_t s = 0; s < d; s++) {
        size_t i = by_deg[s];
        if (s)
            for (size_t rr = 0; rr < N; rr++)
                xp[rr] = x[rr * d + by_deg[s - 1]];
        ck_assert_int_eq(nn_made_step(net, p, N, k ? c : NULL, s,
                                      s ? xp : NULL, th, ws2), FLOW_OK);
        for (size_t rr = 0; rr < N; rr++)
            for (size_t q = 0; q < out; q++) {
                double a = th[rr * out + q], b = y[rr * d * out + i * out + q];
                err = fmax(err, fabs(a - b));
                ref = fmax(ref, fabs(b));
            }
    }
    ck_assert_msg(ref > 0.1, "case %d: degenerate reference", _i);
    ck_assert_msg(err <= STEP_TOL * ref, "case %d: max |step - forward| = "
                  "%g, max |forward| = %g", _i, err, ref);
    free(ws);
    free(ws2);
    free(order);
    free(by_deg);
    free(p);
    free(x);
    free(c);
    free(y);
    free(th);
    free(xp);
    nn_destroy(net);
}
END_TEST

/* MAF sampling on 64 dimensions both ways, each path feeding its own
 * samples forward: D dense passes (the previous sampler) against the D
 * steps, through the layer's affine transformer; the samples agree to
 * STEP_TOL relative to their largest magnitude. */
START_TEST(test_step_sampling_64d)
{
    enum { N = 12, D = 64, OUT = 2 };
    mcase mc = {D, 0, OUT, 2, {256, 256}, FLOW_ACT_RELU, 1};
    int32_t order[D];
    size_t by_deg[D];
    flow_tf tf = {sizeof tf, FLOW_TF_AFFINE, 0, 0, 0, 0, 0};
    flow_rng r;
    flow_net *net;
    flow_real *p, z[N * D], xa[N * D], xb[N * D], y[N * D * OUT];
    flow_real th[N * OUT], col[N], xn[N], lad[N];
    void *ws, *ws2;
    double err = 0, big = 0;
    size_t np;
    rng_seed(&r, 77);
    make_order(&mc, order, &r);
    for (size_t i = 0; i < D; i++)
        by_deg[order[i]] = i;
    net = made(&mc, order, 0);
    np = nn_params(net);
    p = malloc(np * sizeof *p);
    ck_assert_ptr_nonnull(p);
    nn_init(net, p, &r);
    for (size_t i = 0; i < np; i++)       /* a non-trivial last layer */
        p[i] = (flow_real)(p[i] + 0.05 * rng_normal1(&r));
    rng_normal(&r, z, N * D);
    ws = ws_alloc(net, N);
    ws2 = ws_alloc(net, N);
    memset(xa, 0, sizeof xa);
    for (size_t s = 0; s < D; s++) {
        size_t i = by_deg[s];
        /* dense: the whole MADE on what is known so far */
        ck_assert_int_eq(nn_forward(net, p, N, xa, NULL, 0, y, ws), FLOW_OK);
        for (size_t rr = 0; rr < N; rr++) {
            memcpy(th + rr * OUT, y + rr * D * OUT + i * OUT,
                   OUT * sizeof *th);
            col[rr] = z[rr * D + i];
        }
        ck_assert_int_eq(tf_inverse(&tf, N, col, th, xn, lad), FLOW_OK);
        for (size_t rr = 0; rr < N; rr++)
            xa[rr * D + i] = xn[rr];
        /* by degree */
        if (s)
            for (size_t rr = 0; rr < N; rr++)
                xn[rr] = xb[rr * D + by_deg[s - 1]];
        ck_assert_int_eq(nn_made_step(net, p, N, NULL, s, s ? xn : NULL, th,
                                      ws2), FLOW_OK);
        ck_assert_int_eq(tf_inverse(&tf, N, col, th, xn, lad), FLOW_OK);
        for (size_t rr = 0; rr < N; rr++)
            xb[rr * D + i] = xn[rr];
    }
    for (size_t q = 0; q < N * D; q++) {
        err = fmax(err, fabs((double)xa[q] - xb[q]));
        big = fmax(big, fabs((double)xa[q]));
    }
    ck_assert_msg(err <= STEP_TOL * big, "samples differ by %g (largest "
                  "%g)", err, big);
    free(ws);
    free(ws2);
    free(p);
    nn_destroy(net);
}
END_TEST

START_TEST(test_step_errors)
{
    mcase mc = {4, 0, 2, 1, {8}, FLOW_ACT_RELU, 0};
    flow_net *net = made(&mc, NULL, 0);
    flow_real *p = calloc(nn_params(net), sizeof *p);
    flow_real x[2 * 4] = {0}, th[2 * 2], y[2 * 8], xp[2] = {0};
    void *ws = ws_alloc(net, 2);
    ck_assert_ptr_nonnull(p);
    /* out of order: step 1 before step 0, a skipped step, another n */
    memset(ws, 0, nn_workspace(net, 2));
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 1, xp, th, ws),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 0, NULL, th, ws), FLOW_OK);
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 2, xp, th, ws),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_step(net, p, 1, NULL, 1, xp, th, ws),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 1, NULL, th, ws),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 4, xp, th, ws),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 1, xp, th, ws), FLOW_OK);
    /* no tape after steps */
    ck_assert_int_eq(nn_backward(net, p, 2, ws, y, x, NULL, NULL),
                     FLOW_ERR_INVAL);
    nn_destroy(net);
    /* an MLP has no degrees */
    {
        flow_net_spec sp;
        size_t h = 4;
        char err[128];
        memset(&sp, 0, sizeof sp);
        sp.struct_size = sizeof sp;
        sp.kind = FLOW_NET_MLP;
        sp.in = 4;
        sp.out = 2;
        sp.n_hidden = 1;
        sp.hidden = &h;
        net = nn_create(&sp, err, sizeof err);
        ck_assert_ptr_nonnull(net);
        ck_assert_int_eq(nn_made_step(net, p, 2, NULL, 0, NULL, th, ws),
                         FLOW_ERR_UNSUPPORTED);
        ck_assert_int_eq(nn_mask_params(net, p, NULL), 0);
        nn_destroy(net);
        /* a spec from before `premasked` was appended is still read */
        sp.struct_size = (uint32_t)offsetof(flow_net_spec, premasked);
        sp.kind = FLOW_NET_MADE;
        net = nn_create(&sp, err, sizeof err);
        ck_assert_msg(net != NULL, "%s", err);
        nn_destroy(net);
    }
    {
        const flow_host *h = flow_host_services();
        ck_assert_msg(FLOW_HOST_HAS(h, net_mask_params), "host table of "
                      "%zu bytes lacks net_mask_params",
                      (size_t)h->struct_size);
        ck_assert_msg(h->net_made_step == nn_made_step,
                      "host net_made_step is not nn_made_step");
        ck_assert_msg(h->net_mask_params == nn_mask_params,
                      "host net_mask_params is not nn_mask_params");
    }
    free(ws);
    free(p);
}
END_TEST

/* Premasked: the masked weights of the gradient are exactly 0, the rest
 * equals the masking net's gradient bit for bit; parameters with masked
 * weights set are found and repaired, and the repaired copy computes what
 * the masking net computes on the original. */
START_TEST(test_premasked)
{
    enum { N = 16 };
    mcase mc = {10, 2, 2, 2, {30, 30}, FLOW_ACT_RELU, 1};
    int32_t order[10];
    flow_rng r;
    flow_net *pm, *mk;
    size_t np;
    flow_real *p, *q, *ga, *gb, x[N * 10], c[N * 2], ya[N * 20], yb[N * 20];
    flow_real dy[N * 20], dxa[N * 10], dxb[N * 10];
    void *wa, *wb;
    rng_seed(&r, 9);
    make_order(&mc, order, &r);
    pm = made(&mc, order, 1);
    mk = made(&mc, order, 0);
    np = nn_params(pm);
    ck_assert_uint_eq(np, nn_params(mk));
    p = malloc(np * sizeof *p);
    q = malloc(np * sizeof *q);
    ga = calloc(np, sizeof *ga);
    gb = calloc(np, sizeof *gb);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_nonnull(ga);
    ck_assert_ptr_nonnull(gb);
    nn_init(pm, p, &r);
    ck_assert_int_eq(nn_mask_params(pm, p, NULL), 0);   /* init is clean */
    rng_normal(&r, p, np);                              /* now it is not */
    ck_assert_int_eq(nn_mask_params(pm, p, NULL), 1);
    ck_assert_int_eq(nn_mask_params(pm, p, q), 1);
    ck_assert_int_eq(nn_mask_params(pm, q, NULL), 0);
    rng_normal(&r, x, N * 10);
    rng_normal(&r, c, N * 2);
    rng_normal(&r, dy, N * 20);
    wa = ws_alloc(pm, N);
    wb = ws_alloc(mk, N);
    ck_assert_int_eq(nn_forward(pm, q, N, x, c, 0, ya, wa), FLOW_OK);
    ck_assert_int_eq(nn_forward(mk, p, N, x, c, 0, yb, wb), FLOW_OK);
    ck_assert_int_eq(memcmp(ya, yb, sizeof ya), 0);
    ck_assert_int_eq(nn_backward(pm, q, N, wa, dy, dxa, NULL, ga), FLOW_OK);
    ck_assert_int_eq(nn_backward(mk, p, N, wb, dy, dxb, NULL, gb), FLOW_OK);
    ck_assert_int_eq(memcmp(dxa, dxb, sizeof dxa), 0);
    for (size_t l = 0; l < nn_layers(pm); l++) {
        size_t rows, cols, wo, bo;
        const uint8_t *m = nn_layer_mask(pm, l);
        ck_assert_int_eq(nn_layer_shape(pm, l, &rows, &cols, &wo, &bo),
                         FLOW_OK);
        for (size_t i = 0; i < rows * cols; i++) {
            if (!m[i]) {
                ck_assert_msg(ga[wo + i] == 0 && !signbit(ga[wo + i]),
                              "masked gradient %zu.%zu = %g", l, i,
                              (double)ga[wo + i]);
                ck_assert_msg(q[wo + i] == 0, "masked weight %zu.%zu = %g", l,
                              i, (double)q[wo + i]);
            } else {
                ck_assert_msg(ga[wo + i] == gb[wo + i], "gradient %zu.%zu: "
                              "%.9g vs %.9g", l, i, (double)ga[wo + i],
                              (double)gb[wo + i]);
                ck_assert_msg(q[wo + i] == p[wo + i], "weight %zu.%zu: %.9g "
                              "vs %.9g", l, i, (double)q[wo + i],
                              (double)p[wo + i]);
            }
        }
        for (size_t j = 0; j < rows; j++)
            ck_assert_msg(ga[bo + j] == gb[bo + j], "bias gradient %zu.%zu: "
                          "%.9g vs %.9g", l, j, (double)ga[bo + j],
                          (double)gb[bo + j]);
    }
    free(wa);
    free(wb);
    free(p);
    free(q);
    free(ga);
    free(gb);
    nn_destroy(pm);
    nn_destroy(mk);
}
END_TEST

/* A maf layer (premasked MADE) trained with Adam and weight decay keeps
 * every masked weight at exactly 0: their gradients are exactly 0, so
 * Adam's moments stay 0 and so do its updates. */
START_TEST(test_adam_keeps_masks)
{
    enum { D = 6, H = 16, ROWS = 200 };
    flow_ctx *ctx = flow_ctx_new();
    flow_model *m;
    flow_trainer *t;
    flow_train_config cfg;
    flow_attr_value v[5];
    int64_t hidden[2] = {H, H};
    size_t hid[2] = {H, H};
    flow_net_spec sp;
    flow_net *net;
    flow_real x[ROWS * D], *p;
    flow_rng r;
    char err[128];
    double loss = 0, first = 0;
    size_t nz = 0;
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    memset(v, 0, sizeof v);
    v[0].type = FLOW_ATTR_VARIANT;       /* affine */
    v[1].type = FLOW_ATTR_VARIANT;       /* natural order */
    v[2].type = FLOW_ATTR_INT_LIST;
    v[2].ilist = hidden;
    v[2].n = 2;
    v[3].type = FLOW_ATTR_ENUM;
    v[3].i = 0;                          /* relu */
    v[4].type = FLOW_ATTR_BOOL;
    v[4].i = 1;
    m = flow_model_new(ctx, D, 0);
    ck_assert_ptr_nonnull(m);
    ck_assert_msg(flow_model_add_layer(m, "maf", NULL, v, 5, 0, 0, 0)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_finish(m, 3), FLOW_OK);
    rng_seed(&r, 12);
    for (size_t i = 0; i < ROWS * D; i++)
        x[i] = (flow_real)(rng_normal1(&r) * (1 + (double)(i % D)) +
                           (i % D ? 0.5 * x[i - 1] : 0));
    flow_train_config_default(&cfg);
    cfg.batch = 50;
    cfg.lr = 1e-2;
    cfg.weight_decay = 1e-3;
    t = flow_trainer_new(m, &cfg, x, NULL, ROWS);
    ck_assert_ptr_nonnull(t);
    for (int s = 0; s < 40; s++) {
        ck_assert_int_eq(flow_trainer_step(t, &loss), FLOW_OK);
        if (s == 0)
            first = loss;
    }
    ck_assert_msg(loss < first - 0.5, "training did not progress: %g -> %g",
                  first, loss);
    /* the plugin's MADE: natural order, seed 0, two outputs per dim */
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_MADE;
    sp.in = D;
    sp.out = 2;
    sp.n_hidden = 2;
    sp.hidden = hid;
    sp.act = FLOW_ACT_RELU;
    net = nn_create(&sp, err, sizeof err);
    ck_assert_msg(net != NULL, "%s", err);
    ck_assert_uint_eq(nn_params(net), flow_model_num_params(m));
    p = flow_model_params(m);
    ck_assert_int_eq(nn_mask_params(net, p, NULL), 0);
    for (size_t l = 0; l < nn_layers(net); l++) {
        size_t rows, cols, wo;
        const uint8_t *mk = nn_layer_mask(net, l);
        ck_assert_int_eq(nn_layer_shape(net, l, &rows, &cols, &wo, NULL),
                         FLOW_OK);
        for (size_t i = 0; i < rows * cols; i++) {
            if (!mk[i])
                ck_assert_msg(p[wo + i] == 0 && flow_trainer_adam_m(t)[wo + i]
                              == 0 && flow_trainer_adam_v(t)[wo + i] == 0,
                              "masked %zu.%zu: weight %g, Adam m %g, v %g", l,
                              i, (double)p[wo + i],
                              (double)flow_trainer_adam_m(t)[wo + i],
                              (double)flow_trainer_adam_v(t)[wo + i]);
            else
                nz += p[wo + i] != 0;
        }
    }
    ck_assert_uint_gt(nz, 100);
    nn_destroy(net);
    flow_trainer_free(t);
    flow_model_free(m);
    flow_ctx_free(ctx);
}
END_TEST

/* MADE in degree order (nn_made_sort / _forward / _backward / _grad)
 * against the dense premasked passes on the same parameters: outputs,
 * input, context and parameter gradients, their masked entries 0.  Twice:
 * masked weights holding garbage in the parameters (the sort must ignore
 * it: every layer copied with the mask applied), then premasked (the
 * layers stored in degree order read in place, their blocks' masked
 * gradients set to 0 by nn_made_grad).
 * Widths cover several row blocks with ragged ends (MADE_BLOCK = 64).
 * In the float build on AVX2 CPUs the degree-order passes run on tgemm
 * and the dense ones on OpenBLAS: each case at 1, 5, 37 and 70 rows
 * (tgemm's row tiles with ragged ends) checks that the two kernels agree
 * within float rounding. */
enum { N_ROWS = 4 };
static const size_t sorted_rows[N_ROWS] = {1, 5, 37, 70};
static const mcase sorted_cases[] = {
    {64, 0, 2, 2, {512, 512}, FLOW_ACT_RELU, 0}, /* maf64's layers       */
    {16, 2, 3, 2, {200, 150}, FLOW_ACT_TANH, 1}, /* context, ragged      */
    {5, 0, 3, 1, {3}, FLOW_ACT_RELU, 1},         /* fewer units than D-1 */
    {1, 2, 2, 1, {6}, FLOW_ACT_ELU, 0},          /* D = 1: context only  */
    {7, 0, 2, 0, {0}, FLOW_ACT_RELU, 1},         /* no hidden layer      */
    {9, 1, 2, 2, {40, 70}, FLOW_ACT_LEAKY_RELU, 1},
    /* 70 outputs per dimension: the first output block's 64 rows see no
     * hidden unit (bias only), by column blocks (120 >= 210 / 2 inputs)
     * and by row blocks (20) */
    {3, 0, 70, 1, {120}, FLOW_ACT_RELU, 0},
    {3, 0, 70, 1, {20}, FLOW_ACT_RELU, 1},
};

static double rel_err(const flow_real *a, const flow_real *b, size_t n,
                      double *ref)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - (double)b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    *ref = m;
    return m > 0 ? e / m : e;
}

START_TEST(test_sorted_matches_dense)
{
    const size_t N = sorted_rows[_i % N_ROWS];
    const mcase *mc = &sorted_cases[_i / N_ROWS];
    size_t d = mc->d, k = mc->k, yw = mc->d * mc->out, np, ns;
    int32_t *order = malloc(d * sizeof *order);
    flow_rng r;
    flow_net *net;
    flow_real *p, *pm, *sw, *x, *c, *y1, *y2, *dy, *dx1, *dx2, *dc1, *dc2;
    flow_real *g1, *g2;
    void *ws1, *ws2;
    double ref;
    rng_seed(&r, 70 + (uint64_t)_i);
    make_order(mc, order, &r);
    net = made(mc, order, 1);
    np = nn_params(net);
    ns = nn_made_sorted_count(net);
    ck_assert_uint_gt(ns, 0);
    p = malloc(np * sizeof *p);
    pm = malloc(np * sizeof *pm);
    g1 = calloc(np, sizeof *g1);
    g2 = calloc(np, sizeof *g2);
    sw = malloc(ns * sizeof *sw);
    x = malloc(N * d * sizeof *x);
    c = malloc((N * k + 1) * sizeof *c);
    dc1 = calloc(N * k + 1, sizeof *dc1);
    dc2 = calloc(N * k + 1, sizeof *dc2);
    y1 = malloc(N * yw * sizeof *y1);
    y2 = malloc(N * yw * sizeof *y2);
    dy = malloc(N * yw * sizeof *dy);
    dx1 = malloc(N * d * sizeof *dx1);
    dx2 = malloc(N * d * sizeof *dx2);
    ck_assert_ptr_nonnull(order);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(pm);
    ck_assert_ptr_nonnull(g1);
    ck_assert_ptr_nonnull(g2);
    ck_assert_ptr_nonnull(sw);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(dc1);
    ck_assert_ptr_nonnull(dc2);
    ck_assert_ptr_nonnull(y1);
    ck_assert_ptr_nonnull(y2);
    ck_assert_ptr_nonnull(dy);
    ck_assert_ptr_nonnull(dx1);
    ck_assert_ptr_nonnull(dx2);
    rng_normal(&r, p, np);               /* masked weights too: garbage */
    ck_assert_int_eq(nn_mask_params(net, p, pm), 1);
    rng_normal(&r, x, N * d);
    rng_normal(&r, c, N * k);
    rng_normal(&r, dy, N * yw);
    ws1 = ws_alloc(net, N);
    ws2 = ws_alloc(net, N);
    ck_assert_int_eq(nn_forward(net, pm, N, x, k ? c : NULL, 0, y1, ws1),
                     FLOW_OK);
    ck_assert_int_eq(nn_backward(net, pm, N, ws1, dy, dx1, k ? dc1 : NULL,
                                 g1), FLOW_OK);
    for (int src = 0; src < 2; src++) {
        memset(g2, 0, np * sizeof *g2);
        memset(dc2, 0, (N * k + 1) * sizeof *dc2);
        ck_assert_int_eq(nn_made_sort(net, src ? pm : p, sw), FLOW_OK);
        ck_assert_int_eq(nn_made_forward(net, sw, N, x, k ? c : NULL, y2,
                                         ws2), FLOW_OK);
        ck_assert_msg(rel_err(y2, y1, N * yw, &ref) <= STEP_TOL
                      && ref > 0.1, "case %d/%d: outputs differ by %g "
                      "(rel.)", _i, src, rel_err(y2, y1, N * yw, &ref));
        /* twice: dparams and dctx accumulate, dx is written */
        for (int rep = 0; rep < 2; rep++)
            ck_assert_int_eq(nn_made_backward(net, sw, N, ws2, dy, dx2,
                                              k ? dc2 : NULL, g2), FLOW_OK);
        ck_assert_int_eq(nn_made_grad(net, g2, sw), FLOW_OK);
        for (size_t i = 0; i < np; i++)
            g2[i] /= 2;
        for (size_t i = 0; i < N * k; i++)
            dc2[i] /= 2;
        ck_assert_msg(rel_err(dx2, dx1, N * d, &ref) <= GRAD_TOL,
                      "case %d/%d: dx differs by %g", _i, src,
                      rel_err(dx2, dx1, N * d, &ref));
        ck_assert_msg(rel_err(dc2, dc1, N * k, &ref) <= GRAD_TOL,
                      "case %d/%d: dctx differs by %g", _i, src,
                      rel_err(dc2, dc1, N * k, &ref));
        ck_assert_msg(rel_err(g2, g1, np, &ref) <= GRAD_TOL && ref > 0.1,
                      "case %d/%d: dparams differ by %g (rel.)", _i, src,
                      rel_err(g2, g1, np, &ref));
        for (size_t l = 0; l < nn_layers(net); l++) {  /* masked: 0 */
            size_t rows, cols, wo;
            const uint8_t *mk = nn_layer_mask(net, l);
            nn_layer_shape(net, l, &rows, &cols, &wo, NULL);
            for (size_t i = 0; i < rows * cols; i++)
                if (!mk[i])
                    ck_assert_msg(g2[wo + i] == 0, "case %d/%d: masked "
                                  "gradient %zu.%zu = %g", _i, src, l, i,
                                  (double)g2[wo + i]);
        }
    }
    /* a tape of another kind is refused both ways */
    ck_assert_int_eq(nn_made_backward(net, sw, N, ws1, dy, dx2, NULL, NULL),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_backward(net, pm, N, ws2, dy, dx1, NULL, NULL),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(nn_made_backward(net, sw, N + 1, ws2, dy, dx2, NULL,
                                      NULL), FLOW_ERR_INVAL);
    free(ws1);
    free(ws2);
    free(order);
    free(p);
    free(pm);
    free(g1);
    free(g2);
    free(sw);
    free(x);
    free(c);
    free(dc1);
    free(dc2);
    free(y1);
    free(y2);
    free(dy);
    free(dx1);
    free(dx2);
    nn_destroy(net);
}
END_TEST

/* Sampling steps on the sorted weights give the same bits as on the raw
 * parameters (the same values and products: every row reads within its
 * prefix), masked weights holding garbage (every layer copied by the
 * sort), then premasked (the layers in degree order read in place). */
START_TEST(test_step_sorted_same)
{
    enum { N = 11 };
    const mcase *mc = &sorted_cases[_i];
    size_t d = mc->d, k = mc->k, out = mc->out, np;
    int32_t *order = malloc(d * sizeof *order);
    flow_rng r;
    flow_net *net;
    flow_real *p, *pm, *sw, *c, *t1, *t2, *xp;
    void *ws1, *ws2;
    rng_seed(&r, 110 + (uint64_t)_i);
    make_order(mc, order, &r);
    net = made(mc, order, 1);
    np = nn_params(net);
    p = malloc(np * sizeof *p);
    pm = malloc(np * sizeof *pm);
    sw = malloc(nn_made_sorted_count(net) * sizeof *sw);
    c = malloc((N * k + 1) * sizeof *c);
    t1 = malloc(N * out * sizeof *t1);
    t2 = malloc(N * out * sizeof *t2);
    xp = malloc(N * sizeof *xp);
    ck_assert_ptr_nonnull(order);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(pm);
    ck_assert_ptr_nonnull(sw);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(t1);
    ck_assert_ptr_nonnull(t2);
    ck_assert_ptr_nonnull(xp);
    rng_normal(&r, p, np);
    rng_normal(&r, c, N * k);
    nn_mask_params(net, p, pm);
    ws1 = ws_alloc(net, N);
    ws2 = ws_alloc(net, N);
    for (int src = 0; src < 2; src++) {
        ck_assert_int_eq(nn_made_sort(net, src ? pm : p, sw), FLOW_OK);
        for (size_t s = 0; s < d; s++) {
            ck_assert_int_eq(nn_made_step(net, p, N, k ? c : NULL, s,
                                          s ? xp : NULL, t1, ws1), FLOW_OK);
            ck_assert_int_eq(nn_made_step_sorted(net, sw, N, k ? c : NULL, s,
                                                 s ? xp : NULL, t2, ws2),
                             FLOW_OK);
            ck_assert_msg(memcmp(t1, t2, N * out * sizeof *t1) == 0,
                          "case %d/%d step %zu: sorted step differs", _i,
                          src, s);
            for (size_t rr = 0; rr < N; rr++)   /* the next input: any */
                xp[rr] = t1[rr * out] * 0.5f;
        }
    }
    free(ws1);
    free(ws2);
    free(order);
    free(p);
    free(pm);
    free(sw);
    free(c);
    free(t1);
    free(t2);
    free(xp);
    nn_destroy(net);
}
END_TEST

/* Nets the sorted path does not take: count 0, FLOW_ERR_UNSUPPORTED. */
START_TEST(test_sorted_unsupported)
{
    size_t hid[1] = {8};
    flow_net_spec sp;
    char err[256];
    flow_real buf[4];
    double wsd[8];
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_MADE;
    sp.in = 3;
    sp.out = 2;
    sp.n_hidden = 1;
    sp.hidden = hid;
    sp.act = FLOW_ACT_RELU;
    for (int v = 0; v < 3; v++) {
        flow_net *net;
        sp.premasked = v != 0;                     /* 0: not premasked   */
        sp.kind = v == 1 ? FLOW_NET_MLP : FLOW_NET_MADE;  /* 1: an MLP   */
        sp.time = v == 2 ? FLOW_TIME_CONCAT : FLOW_TIME_NONE; /* 2: time */
        net = nn_create(&sp, err, sizeof err);
        ck_assert_msg(net != NULL, "%s", err);
        ck_assert_uint_eq(nn_made_sorted_count(net), 0);
        ck_assert_int_eq(nn_made_sort(net, buf, buf), FLOW_ERR_UNSUPPORTED);
        ck_assert_int_eq(nn_made_grad(net, buf, buf), FLOW_ERR_UNSUPPORTED);
        ck_assert_int_eq(nn_made_step_sorted(net, buf, 1, NULL, 0, NULL, buf,
                                             wsd), FLOW_ERR_UNSUPPORTED);
        nn_destroy(net);
    }
}
END_TEST

Suite *suite_made_step(void)
{
    Suite *s = suite_create("made_step");
    TCase *tc = tcase_create("step");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_step_matches_forward, 0,
                        (int)(sizeof cases / sizeof cases[0]));
    tcase_add_test(tc, test_step_sampling_64d);
    tcase_add_test(tc, test_step_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("sorted");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_sorted_matches_dense, 0,
                        N_ROWS * (int)(sizeof sorted_cases
                                       / sizeof sorted_cases[0]));
    tcase_add_test(tc, test_sorted_unsupported);
    tcase_add_loop_test(tc, test_step_sorted_same, 0,
                        (int)(sizeof sorted_cases / sizeof sorted_cases[0]));
    suite_add_tcase(s, tc);
    tc = tcase_create("masks");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_premasked);
    tcase_add_test(tc, test_adam_keeps_masks);
    suite_add_tcase(s, tc);
    return s;
}
