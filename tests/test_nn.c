/* test_nn.c - MLP and MADE: forward against a naive double-precision
 * reference built from the documented parameter layout, VJPs, JVPs and
 * the JVP's VJP against central differences of that reference, the
 * autoregressive property, masked gradients, zero_last, error paths. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/nn.h"
#include "../runtime/rng.h"
#include "flow/flow.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define FWD_TOL 1e-12     /* forward vs reference, relative to 1 + |y| */
# define GRAD_TOL 1e-7     /* analytic vs FD, relative to the largest entry */
#else
# define FWD_TOL 2e-5
# define GRAD_TOL 2e-4
#endif
#define FD_H 1e-6          /* the reference runs in double */

enum { MAXL = 4, N = 3 };

typedef struct netcase {
    flow_net_kind kind;
    size_t d, k, out, nh, hidden[MAXL - 1];
    flow_activation act;
    flow_time_mode time;
    int zero_last;
    double sn;             /* spectral_norm (0 = off) */
} netcase;

/* The reference: shapes and offsets derived here from the documented
 * layout (nn.h), masks taken from the net (checked separately). */
typedef struct refnet {
    netcase nc;
    size_t nl, rows[MAXL], in[MAXL], cols[MAXL];
    size_t w[MAXL], b[MAXL], ga[MAXL], gc[MAXL], gd[MAXL], np;
    const uint8_t *mask[MAXL];
} refnet;

static flow_net *make_net(const netcase *nc, const int32_t *order,
                          refnet *rn)
{
    flow_net_spec sp;
    char err[256];
    flow_net *net;
    size_t p = 0, prev;
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = nc->kind;
    sp.in = nc->d;
    sp.context = nc->k;
    sp.out = nc->out;
    sp.n_hidden = nc->nh;
    sp.hidden = nc->hidden;
    sp.act = nc->act;
    sp.zero_last = nc->zero_last;
    sp.time = nc->time;
    sp.order = order;
    sp.seed = 99;
    sp.spectral_norm = nc->sn;
    net = nn_create(&sp, err, sizeof err);
    ck_assert_msg(net != NULL, "nn_create: %s", err);
    memset(rn, 0, sizeof *rn);
    rn->nc = *nc;
    rn->nl = nc->nh + 1;
    prev = nc->d + nc->k;
    for (size_t l = 0; l < rn->nl; l++) {
        size_t rw, cl, wo, bo;
        rn->in[l] = prev;
        rn->rows[l] = l < nc->nh ? nc->hidden[l]
                      : nc->kind == FLOW_NET_MADE ? nc->out * nc->d : nc->out;
        rn->cols[l] = prev + (nc->time == FLOW_TIME_CONCAT);
        rn->w[l] = p;
        p += rn->rows[l] * rn->cols[l];
        rn->b[l] = p;
        p += rn->rows[l];
        if (nc->time == FLOW_TIME_CONCATSQUASH) {
            rn->ga[l] = p;
            rn->gc[l] = p + rn->rows[l];
            rn->gd[l] = p + 2 * rn->rows[l];
            p += 3 * rn->rows[l];
        }
        /* the layout the header documents is the one the net uses */
        ck_assert_int_eq(nn_layer_shape(net, l, &rw, &cl, &wo, &bo), FLOW_OK);
        ck_assert_uint_eq(rw, rn->rows[l]);
        ck_assert_uint_eq(cl, rn->cols[l]);
        ck_assert_uint_eq(wo, rn->w[l]);
        ck_assert_uint_eq(bo, rn->b[l]);
        rn->mask[l] = nn_layer_mask(net, l);
        ck_assert_msg((nc->kind == FLOW_NET_MADE) == (rn->mask[l] != NULL),
                      "layer %zu: kind %d, mask %p", l, (int)nc->kind,
                      (const void *)rn->mask[l]);
        prev = rn->rows[l];
    }
    rn->np = p;
    ck_assert_uint_eq(nn_params(net), p);
    return net;
}

static double sgm(double z) { return 1 / (1 + exp(-z)); }

/* Reference spectral scales min(1, c / sigma(M o W)) per layer: sigma^2 as
 * the top eigenvalue of A^T A by plain power iteration from a start other
 * than the runtime's, run to convergence. */
static void ref_scales(const refnet *rn, const double *p, double *scale)
{
    for (size_t l = 0; l < rn->nl; l++) {
        size_t rows = rn->rows[l], cols = rn->cols[l];
        double a[64 * 64], v[64], w[64], lam = 0, prev = -1;
        scale[l] = 1;
        if (rn->nc.sn <= 0)
            continue;
        for (size_t i = 0; i < rows * cols; i++)
            a[i] = rn->mask[l] && !rn->mask[l][i] ? 0 : p[rn->w[l] + i];
        for (size_t j = 0; j < cols; j++)
            v[j] = 1.0 + 0.37 * (double)((j * 7) % 5);
        for (int it = 0; it < 100000 && fabs(lam - prev) > 1e-15 * lam;
             it++) {
            double nrm = 0;
            prev = lam;
            for (size_t j = 0; j < cols; j++)
                w[j] = 0;
            for (size_t i = 0; i < rows; i++) {
                double t = 0;
                for (size_t j = 0; j < cols; j++)
                    t += a[i * cols + j] * v[j];
                for (size_t j = 0; j < cols; j++)
                    w[j] += a[i * cols + j] * t;
            }
            for (size_t j = 0; j < cols; j++)
                nrm += w[j] * w[j];
            nrm = sqrt(nrm);
            lam = 0;
            for (size_t j = 0; j < cols; j++)
                lam += v[j] * w[j];
            {
                double nv = 0;
                for (size_t j = 0; j < cols; j++)
                    nv += v[j] * v[j];
                lam /= nv;                  /* Rayleigh quotient */
            }
            if (nrm == 0)
                break;
            for (size_t j = 0; j < cols; j++)
                v[j] = w[j] / nrm;
        }
        if (sqrt(lam) > rn->nc.sn)
            scale[l] = rn->nc.sn / sqrt(lam);
    }
}

static void ref_act(flow_activation a, double z, double *f, double *f1)
{
    switch (a) {
    case FLOW_ACT_RELU: *f = z > 0 ? z : 0; *f1 = z > 0; break;
    case FLOW_ACT_LEAKY_RELU: *f = z > 0 ? z : 0.01 * z;
        *f1 = z > 0 ? 1 : 0.01; break;
    case FLOW_ACT_TANH: *f = tanh(z); *f1 = 1 - *f * *f; break;
    case FLOW_ACT_ELU: *f = z > 0 ? z : exp(z) - 1;
        *f1 = z > 0 ? 1 : exp(z); break;
    case FLOW_ACT_SOFTPLUS: *f = log(1 + exp(z)); *f1 = sgm(z); break;
    case FLOW_ACT_SIGMOID: *f = sgm(z); *f1 = *f * (1 - *f); break;
    default: *f = z; *f1 = 1; break;
    }
}

/* One row: y and the tangent ty = (dy/dx) tx, naive loops in double. */
static void ref_row(const refnet *rn, const double *p, const double *x,
                    const double *c, const double *tx, double t, double *y,
                    double *ty)
{
    double scale[MAXL];
    double h[64], th[64], hn[64], thn[64];
    size_t d = rn->nc.d, k = rn->nc.k;
    for (size_t i = 0; i < d; i++)
        h[i] = x[i], th[i] = tx[i];
    for (size_t i = 0; i < k; i++)
        h[d + i] = c[i], th[d + i] = 0;
    ref_scales(rn, p, scale);
    for (size_t l = 0; l < rn->nl; l++) {
        int last = l + 1 == rn->nl;
        for (size_t j = 0; j < rn->rows[l]; j++) {
            double u = p[rn->b[l] + j], tu = 0, z, tz, f, f1;
            for (size_t i = 0; i < rn->cols[l]; i++) {
                double wv = p[rn->w[l] + j * rn->cols[l] + i];
                if (rn->mask[l] && !rn->mask[l][j * rn->cols[l] + i])
                    wv = 0;
                wv *= scale[l];
                u += wv * (i < rn->in[l] ? h[i] : t);
                tu += i < rn->in[l] ? wv * th[i] : 0;
            }
            z = u, tz = tu;
            if (rn->nc.time == FLOW_TIME_CONCATSQUASH) {
                double g = sgm(p[rn->ga[l] + j] * t + p[rn->gc[l] + j]);
                z = u * g + p[rn->gd[l] + j] * t;
                tz = tu * g;
            }
            if (last) {
                y[j] = z;
                ty[j] = tz;
            } else {
                ref_act(rn->nc.act, z, &f, &f1);
                hn[j] = f;
                thn[j] = f1 * tz;
            }
        }
        if (!last)
            for (size_t j = 0; j < rn->rows[l]; j++)
                h[j] = hn[j], th[j] = thn[j];
    }
}

static size_t ywidth(const refnet *rn) { return rn->rows[rn->nl - 1]; }

/* sum_r wy . y_r + wty . ty_r over N rows */
static double ref_obj(const refnet *rn, const double *p, const double *x,
                      const double *c, const double *tx, double t,
                      const double *wy, const double *wty)
{
    double y[64], ty[64], s = 0;
    size_t d = rn->nc.d, k = rn->nc.k, m = ywidth(rn);
    for (size_t r = 0; r < N; r++) {
        ref_row(rn, p, x + r * d, c + r * k, tx + r * d, t, y, ty);
        for (size_t j = 0; j < m; j++)
            s += wy[r * m + j] * y[j] + wty[r * m + j] * ty[j];
    }
    return s;
}

/* Central difference of ref_obj in v[i] for every i < len, into fd. */
static void fd_vec(const refnet *rn, double *p, double *x, double *c,
                   double *tx, double t, const double *wy, const double *wty,
                   double *v, size_t len, double *fd)
{
    for (size_t i = 0; i < len; i++) {
        double old = v[i], fp, fm;
        v[i] = old + FD_H;
        fp = ref_obj(rn, p, x, c, tx, t, wy, wty);
        v[i] = old - FD_H;
        fm = ref_obj(rn, p, x, c, tx, t, wy, wty);
        v[i] = old;
        fd[i] = (fp - fm) / (2 * FD_H);
    }
}

static void to_d(const flow_real *a, double *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b[i] = a[i];
}

static double maxabs(const double *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

/* analytic (flow_real, minus a pre-filled offset) vs FD */
static void cmp(const char *what, const flow_real *an, double off,
                const double *fd, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)an[i] - off - fd[i]) <= GRAD_TOL * scale,
                      "%s[%zu]: analytic %.9g vs fd %.9g", what, i,
                      (double)an[i] - off, fd[i]);
}

/* Everything for one net: forward vs reference, backward and (with_jvp)
 * JVP and its backward vs finite differences. */
static void check_net(const netcase *nc, const int32_t *order, double t,
                      int with_jvp, uint64_t seed)
{
    refnet rn;
    flow_net *net = make_net(nc, order, &rn);
    size_t d = nc->d, k = nc->k, m, P = rn.np;
    flow_real *p = malloc(P * sizeof *p), *dp = malloc(P * sizeof *dp);
    double *pd = malloc(P * sizeof *pd), *fdp = malloc(P * sizeof *fdp);
    flow_real x[N * 8], c[N * 4], tx[N * 8], y[N * 64], ty[N * 64];
    flow_real dy[N * 64], dx[N * 8], dc[N * 4], dtx[N * 8];
    double xd[N * 8], cd[N * 4], txd[N * 8], wy[N * 64], zero[N * 64];
    double fdx[N * 8], fdc[N * 4], fdt[N * 8], yr[64], tyr[64], scale;
    void *ws = NULL;
    flow_rng r;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(dp);
    ck_assert_ptr_nonnull(pd);
    ck_assert_ptr_nonnull(fdp);
    rng_seed(&r, seed);
    m = ywidth(&rn);
    nn_init(net, p, &r);
    /* perturb so biases, gates and a zero_last layer are generic too */
    for (size_t i = 0; i < P; i++)
        p[i] = (flow_real)(p[i] + 0.3 * rng_normal1(&r));
    rng_normal(&r, x, N * d);
    rng_normal(&r, c, N * k);
    rng_normal(&r, tx, N * d);
    rng_normal(&r, dy, N * m);
    to_d(p, pd, P);
    to_d(x, xd, N * d);
    to_d(c, cd, N * k);
    to_d(tx, txd, N * d);
    to_d(dy, wy, N * m);
    memset(zero, 0, sizeof zero);
    ws = malloc(nn_workspace(net, N));
    ck_assert_ptr_nonnull(ws);

    ck_assert_int_eq(nn_forward(net, p, N, x, k ? c : NULL, t, y, ws),
                     FLOW_OK);
    for (size_t rr = 0; rr < N; rr++) {
        ref_row(&rn, pd, xd + rr * d, cd + rr * k, txd + rr * d, t, yr, tyr);
        for (size_t j = 0; j < m; j++)
            ck_assert_msg(fabs(y[rr * m + j] - yr[j]) <= FWD_TOL *
                          (1 + fabs(yr[j])), "y[%zu,%zu] %.9g vs ref %.9g",
                          rr, j, (double)y[rr * m + j], yr[j]);
    }

    /* backward: dx written, dctx and dparams accumulated onto 1.0 */
    for (size_t i = 0; i < P; i++)
        dp[i] = 1;
    for (size_t i = 0; i < N * k; i++)
        dc[i] = 1;
    ck_assert_int_eq(nn_backward(net, p, N, ws, dy, dx, k ? dc : NULL, dp),
                     FLOW_OK);
    fd_vec(&rn, pd, xd, cd, txd, t, wy, zero, xd, N * d, fdx);
    fd_vec(&rn, pd, xd, cd, txd, t, wy, zero, cd, N * k, fdc);
    fd_vec(&rn, pd, xd, cd, txd, t, wy, zero, pd, P, fdp);
    scale = fmax(fmax(maxabs(fdx, N * d), maxabs(fdc, N * k)),
                 maxabs(fdp, P));
    ck_assert_double_gt(scale, 1e-3);   /* a gradient worth checking */
    cmp("dx", dx, 0, fdx, N * d, scale);
    cmp("dctx", dc, 1, fdc, N * k, scale);
    cmp("dparams", dp, 1, fdp, P, scale);
    if (nc->kind == FLOW_NET_MADE)       /* masked entries untouched */
        for (size_t l = 0; l < rn.nl; l++)
            for (size_t i = 0; i < rn.rows[l] * rn.cols[l]; i++)
                if (!rn.mask[l][i])
                    ck_assert_msg(dp[rn.w[l] + i] == 1, "masked %zu.%zu: %g",
                                  l, i, (double)dp[rn.w[l] + i]);

    if (with_jvp) {
        double wty[N * 64];
        ck_assert_int_eq(nn_jvp(net, p, N, ws, tx, ty), FLOW_OK);
        /* ty against the reference's tangent and FD of y along tx */
        for (size_t rr = 0; rr < N; rr++) {
            double yp[64], ym[64], xs[8], dum[64];
            ref_row(&rn, pd, xd + rr * d, cd + rr * k, txd + rr * d, t, yr,
                    tyr);
            for (size_t i = 0; i < d; i++)
                xs[i] = xd[rr * d + i] + FD_H * txd[rr * d + i];
            ref_row(&rn, pd, xs, cd + rr * k, txd + rr * d, t, yp, dum);
            for (size_t i = 0; i < d; i++)
                xs[i] = xd[rr * d + i] - FD_H * txd[rr * d + i];
            ref_row(&rn, pd, xs, cd + rr * k, txd + rr * d, t, ym, dum);
            for (size_t j = 0; j < m; j++) {
                double fd = (yp[j] - ym[j]) / (2 * FD_H);
                ck_assert_double_eq_tol(tyr[j], fd, 1e-6 * (1 + fabs(fd)));
                ck_assert_msg(fabs(ty[rr * m + j] - tyr[j]) <= FWD_TOL *
                              (1 + fabs(tyr[j])), "ty %.9g vs %.9g",
                              (double)ty[rr * m + j], tyr[j]);
            }
        }
        /* L = sum dty . ty: gradients in x, tx and params */
        to_d(dy, wty, N * m);
        for (size_t i = 0; i < P; i++)
            dp[i] = 1;
        ck_assert_int_eq(nn_jvp_backward(net, p, N, ws, tx, dy, dx, dtx, dp),
                         FLOW_OK);
        fd_vec(&rn, pd, xd, cd, txd, t, zero, wty, xd, N * d, fdx);
        fd_vec(&rn, pd, xd, cd, txd, t, zero, wty, txd, N * d, fdt);
        fd_vec(&rn, pd, xd, cd, txd, t, zero, wty, pd, P, fdp);
        scale = fmax(fmax(maxabs(fdx, N * d), maxabs(fdt, N * d)),
                     maxabs(fdp, P));
        ck_assert_double_gt(scale, 1e-3);
        cmp("jvp dx", dx, 0, fdx, N * d, scale);
        cmp("jvp dtx", dtx, 0, fdt, N * d, scale);
        cmp("jvp dparams", dp, 1, fdp, P, scale);
        if (nc->kind == FLOW_NET_MADE)
            for (size_t l = 0; l < rn.nl; l++)
                for (size_t i = 0; i < rn.rows[l] * rn.cols[l]; i++)
                    if (!rn.mask[l][i])
                        ck_assert_msg(dp[rn.w[l] + i] == 1, "masked %zu.%zu: "
                                      "%g", l, i, (double)dp[rn.w[l] + i]);
    }
    free(ws);
    free(p);
    free(dp);
    free(pd);
    free(fdp);
    nn_destroy(net);
}

/* MLP with context, each activation (loop index) */
START_TEST(test_mlp_activations)
{
    netcase nc = {FLOW_NET_MLP, 3, 2, 2, 2, {5, 4}, (flow_activation)_i,
                  FLOW_TIME_NONE, 0, 0};
    check_net(&nc, NULL, 0, 1, 100 + (uint64_t)_i);
}
END_TEST

/* MLPs that the float build runs on tgemm.c's kernels (nn.c, fast_net:
 * no time, no mask; hidden widths of multiples of 8): a 2-D coupling's
 * conditioner (one input, two outputs: tgemm_dot on both ends), a
 * context block, an 8-wide input and output (tgemm both ways), one
 * output, and no hidden layer; each activation's epilogue or pass.  In
 * the float64 build the same nets check the OpenBLAS path. */
START_TEST(test_mlp_fast)
{
    static const netcase cs[] = {
        {FLOW_NET_MLP, 1, 0, 2, 2, {16, 24}, FLOW_ACT_RELU, FLOW_TIME_NONE,
         0, 0},
        {FLOW_NET_MLP, 2, 3, 3, 2, {8, 16}, FLOW_ACT_TANH, FLOW_TIME_NONE, 0,
         0},
        {FLOW_NET_MLP, 8, 0, 8, 2, {16, 8}, FLOW_ACT_ELU, FLOW_TIME_NONE, 0,
         0},
        {FLOW_NET_MLP, 3, 0, 1, 1, {8}, FLOW_ACT_LEAKY_RELU, FLOW_TIME_NONE,
         0, 0},
        {FLOW_NET_MLP, 2, 0, 3, 0, {0}, FLOW_ACT_RELU, FLOW_TIME_NONE, 0, 0},
    };
    check_net(&cs[_i], NULL, 0, 1, 300 + (uint64_t)_i);
}
END_TEST

/* time conditioning: concat and concatsquash, with context and zero_last */
START_TEST(test_mlp_time)
{
    netcase nc = {FLOW_NET_MLP, 3, 1, 3, 2, {6, 5}, FLOW_ACT_TANH,
                  _i < 2 ? FLOW_TIME_CONCAT : FLOW_TIME_CONCATSQUASH, _i % 2,
                  0};
    check_net(&nc, NULL, 0.7, 1, 200 + (uint64_t)_i);
    nc.act = FLOW_ACT_SOFTPLUS;
    nc.k = 0;
    check_net(&nc, NULL, -1.3, 1, 300 + (uint64_t)_i);
}
END_TEST

START_TEST(test_made_gradients)
{
    int32_t order[4] = {2, 0, 3, 1};
    netcase nc = {FLOW_NET_MADE, 4, 2, 3, 2, {9, 7}, FLOW_ACT_TANH,
                  FLOW_TIME_NONE, 0, 0};
    check_net(&nc, order, 0, 1, 400);
    nc.act = FLOW_ACT_ELU;
    nc.time = FLOW_TIME_CONCATSQUASH;
    check_net(&nc, NULL, 0.4, 1, 401);
    nc.act = FLOW_ACT_RELU;
    nc.time = FLOW_TIME_CONCAT;
    nc.nh = 0;                       /* a masked linear map */
    check_net(&nc, order, 0.4, 1, 402);
}
END_TEST

/* Output block i must not change when any input j with order[j] >=
 * order[i] changes (Germain et al. 2015, eq. 1), must change for some
 * earlier input, and every output depends on the context. */
/* spectral normalisation: forward, VJP, JVP and JVP-VJP through sigma */
START_TEST(test_spectral_norm)
{
    netcase mlp = {FLOW_NET_MLP, 3, 2, 2, 2, {5, 4}, FLOW_ACT_TANH,
                   FLOW_TIME_CONCAT, 0, 0.7};
    netcase made = {FLOW_NET_MADE, 4, 1, 2, 1, {9}, FLOW_ACT_ELU,
                    FLOW_TIME_NONE, 0, 0.5};
    check_net(&mlp, NULL, 0.3, 1, 700);
    check_net(&made, NULL, 0, 1, 701);
    mlp.sn = 50;                        /* inactive: plain weights */
    check_net(&mlp, NULL, 0.3, 1, 702);
}
END_TEST

START_TEST(test_made_autoregressive)
{
    enum { D = 6, K = 2, OUT = 3, W = D * OUT };
    int32_t order[D] = {3, 5, 0, 2, 4, 1};
    netcase nc = {FLOW_NET_MADE, D, K, OUT, 2, {24, 24}, FLOW_ACT_TANH,
                  FLOW_TIME_NONE, 0, 0};
    refnet rn;
    flow_net *net = make_net(&nc, order, &rn);
    size_t P = nn_params(net);
    flow_real *p = malloc(P * sizeof *p), x[D], c[K], y0[W], y1[W];
    void *ws = malloc(nn_workspace(net, 1));
    flow_rng r;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(ws);
    rng_seed(&r, 500);
    nn_init(net, p, &r);
    for (size_t i = 0; i < P; i++)
        p[i] = (flow_real)(p[i] + 0.2 * rng_normal1(&r));
    rng_normal(&r, x, D);
    rng_normal(&r, c, K);
    ck_assert_int_eq(nn_forward(net, p, 1, x, c, 0, y0, ws), FLOW_OK);
    for (size_t j = 0; j < D; j++) {
        flow_real old = x[j];
        x[j] = (flow_real)(old + 3.0);
        ck_assert_int_eq(nn_forward(net, p, 1, x, c, 0, y1, ws), FLOW_OK);
        x[j] = old;
        for (size_t i = 0; i < D; i++)
            for (size_t k = 0; k < OUT; k++) {
                int changed = y1[i * OUT + k] != y0[i * OUT + k];
                if (order[j] >= order[i])
                    ck_assert_msg(!changed, "output %zu.%zu depends on "
                                  "input %zu", i, k, j);
                else
                    ck_assert_msg(changed, "output %zu.%zu ignores input %zu",
                                  i, k, j);
            }
    }
    c[0] = (flow_real)(c[0] + 1);
    ck_assert_int_eq(nn_forward(net, p, 1, x, c, 0, y1, ws), FLOW_OK);
    for (size_t i = 0; i < W; i++)
        ck_assert_msg(y1[i] != y0[i], "output %zu ignores the context: %g",
                      i, (double)y0[i]);
    free(ws);
    free(p);
    nn_destroy(net);
}
END_TEST

/* D = 1: the single output block sees the context only, never x */
START_TEST(test_made_one_dim)
{
    netcase nc = {FLOW_NET_MADE, 1, 2, 2, 1, {6}, FLOW_ACT_TANH,
                  FLOW_TIME_NONE, 0, 0};
    refnet rn;
    flow_net *net = make_net(&nc, NULL, &rn);
    size_t P = nn_params(net);
    flow_real *p = malloc(P * sizeof *p), x = 0.5f, c[2] = {0.1f, -0.4f};
    flow_real y0[2], y1[2];
    void *ws = malloc(nn_workspace(net, 1));
    flow_rng r;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(ws);
    rng_seed(&r, 800);
    nn_init(net, p, &r);
    ck_assert_int_eq(nn_forward(net, p, 1, &x, c, 0, y0, ws), FLOW_OK);
    x = -2;
    ck_assert_int_eq(nn_forward(net, p, 1, &x, c, 0, y1, ws), FLOW_OK);
    ck_assert_double_eq(y0[0], y1[0]);
    ck_assert_double_eq(y0[1], y1[1]);
    c[1] = 1;
    ck_assert_int_eq(nn_forward(net, p, 1, &x, c, 0, y1, ws), FLOW_OK);
    ck_assert_double_ne(y0[0], y1[0]);
    ck_assert_double_ne(y0[1], y1[1]);
    free(ws);
    free(p);
    nn_destroy(net);
    check_net(&nc, NULL, 0, 0, 801);     /* (its JVP is 0) */
}
END_TEST

/* One net shared by threads with private workspaces gives the serial
 * result bit for bit (the net is read-only after creation). */
typedef struct job {
    const flow_net *net;
    const flow_real *p, *x;
    flow_real *y, *dx, *dp;
    size_t n, d, P;
    int status;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    /* 64-byte aligned like host->alloc: OpenBLAS's kernels may round
     * differently for differently aligned operands */
    void *ws = aligned_alloc(64, (nn_workspace(j->net, j->n) + 63) / 64 * 64);
    flow_real *dy = malloc(j->n * 4 * sizeof *dy);
    j->status = FLOW_ERR_NOMEM;
    if (ws && dy) {
        for (size_t i = 0; i < j->n * 4; i++)
            dy[i] = (flow_real)((double)i / 7.0 - 1);
        memset(j->dp, 0, j->P * sizeof *j->dp);
        for (int rep = 0; rep < 20; rep++) {
            j->status = nn_forward(j->net, j->p, j->n, j->x, NULL, 0, j->y,
                                   ws);
            if (j->status == FLOW_OK)
                j->status = nn_backward(j->net, j->p, j->n, ws, dy, j->dx,
                                        NULL, rep == 0 ? j->dp : NULL);
        }
    }
    free(ws);
    free(dy);
    return NULL;
}

START_TEST(test_threads_share_net)
{
    enum { T = 4, R = 64, D = 4 };
    netcase nc = {FLOW_NET_MADE, D, 0, 1, 2, {32, 32}, FLOW_ACT_RELU,
                  FLOW_TIME_NONE, 0, 0.9};
    refnet rn;
    flow_net *net = make_net(&nc, NULL, &rn);
    size_t P = nn_params(net);
    flow_real *p = malloc(P * sizeof *p), x[R * D];
    flow_real *y = malloc((T + 1) * R * D * sizeof *y);
    flow_real *dx = malloc((T + 1) * R * D * sizeof *dx);
    flow_real *dp = malloc((T + 1) * P * sizeof *dp);
    pthread_t th[T];
    job jobs[T + 1];
    flow_rng r;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(dx);
    ck_assert_ptr_nonnull(dp);
    rng_seed(&r, 900);
    nn_init(net, p, &r);
    rng_normal(&r, x, R * D);
    for (int t = 0; t <= T; t++)
        jobs[t] = (job){net, p, x, y + t * R * D, dx + t * R * D, dp + t * P,
                        R, D, P, -1};
    run_job(&jobs[T]);                              /* serial reference */
    ck_assert_int_eq(jobs[T].status, FLOW_OK);
    for (int t = 0; t < T; t++)
        ck_assert_int_eq(pthread_create(&th[t], NULL, run_job, &jobs[t]), 0);
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
        ck_assert_int_eq(jobs[t].status, FLOW_OK);
        ck_assert_mem_eq(jobs[t].y, jobs[T].y, R * D * sizeof *y);
        ck_assert_mem_eq(jobs[t].dx, jobs[T].dx, R * D * sizeof *dx);
        for (size_t i = 0; i < P; i++)
            ck_assert_msg(jobs[t].dp[i] == jobs[T].dp[i], "thread %d dp[%zu]"
                          " %.17g vs %.17g", t, i, (double)jobs[t].dp[i],
                          (double)jobs[T].dp[i]);
    }
    free(p);
    free(y);
    free(dx);
    free(dp);
    nn_destroy(net);
}
END_TEST

START_TEST(test_zero_last_and_init)
{
    netcase cases[3] = {
        {FLOW_NET_MLP, 4, 2, 3, 2, {8, 8}, FLOW_ACT_RELU, FLOW_TIME_NONE, 1,
         0},
        {FLOW_NET_MADE, 4, 0, 2, 1, {12}, FLOW_ACT_TANH, FLOW_TIME_NONE, 1,
         0},
        {FLOW_NET_MLP, 3, 0, 3, 1, {8}, FLOW_ACT_ELU,
         FLOW_TIME_CONCATSQUASH, 1, 0},
    };
    for (int q = 0; q < 3; q++) {
        refnet rn;
        flow_net *net = make_net(&cases[q], NULL, &rn);
        size_t P = nn_params(net), nz = 0, l0 = rn.rows[0] * rn.cols[0];
        flow_real *p = malloc(P * sizeof *p), *p2 = malloc(P * sizeof *p2);
        flow_real x[N * 4], c[N * 2], y[N * 12];
        void *ws = malloc(nn_workspace(net, N));
        flow_rng r;
        double bound = sqrt(6.0 / (double)rn.cols[0]);
        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(p2);
        ck_assert_ptr_nonnull(ws);
        rng_seed(&r, 600);
        nn_init(net, p, &r);
        rng_seed(&r, 600);
        nn_init(net, p2, &r);
        ck_assert_mem_eq(p, p2, P * sizeof *p);   /* deterministic */
        for (size_t i = 0; i < l0; i++) {
            nz += p[rn.w[0] + i] != 0;
            /* He/Glorot range */
            ck_assert_msg(fabs(p[rn.w[0] + i]) <= bound, "weight %zu = %g, "
                          "bound %g", i, (double)p[rn.w[0] + i], bound);
        }
        ck_assert_uint_gt(nz, l0 / 3);
        rng_normal(&r, x, N * 4);
        rng_normal(&r, c, N * 2);
        ck_assert_int_eq(nn_forward(net, p, N, x, cases[q].k ? c : NULL, 0.5,
                                    y, ws), FLOW_OK);
        for (size_t i = 0; i < N * ywidth(&rn); i++)
            ck_assert_msg(y[i] == 0, "case %d: output %zu = %g", q, i,
                          (double)y[i]);
        free(ws);
        free(p);
        free(p2);
        nn_destroy(net);
    }
}
END_TEST

START_TEST(test_errors)
{
    flow_net_spec sp;
    size_t hid[2] = {8, 0};
    int32_t bad_order[3] = {0, 2, 2};
    char err[256];
    flow_net *net;
    flow_real x[6] = {0}, y[12] = {0};   /* MADE: 2 rows x 3 dims x 2 */
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_MLP;
    sp.in = 3;
    sp.out = 2;
    sp.n_hidden = 1;
    sp.hidden = hid;
    sp.act = FLOW_ACT_RELU;
    sp.spectral_norm = -1;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "spectral_norm"));
    sp.spectral_norm = 0;
    sp.n_hidden = 2;                 /* width 0 */
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "width 0"));
    sp.n_hidden = 1;
    sp.kind = FLOW_NET_MADE;
    sp.order = bad_order;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "permutation"));
    sp.order = NULL;
    sp.in = 0;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    sp.in = 3;
    net = nn_create(&sp, err, sizeof err);
    ck_assert_ptr_nonnull(net);
    /* a row count whose tape cannot be sized: 0, not a wrapped size */
    ck_assert_uint_eq(nn_workspace(net, SIZE_MAX / 2), 0);
    /* backward / JVP without a matching forward on this workspace */
    {
        void *ws = calloc(1, nn_workspace(net, 2));
        flow_real *pp = calloc(nn_params(net), sizeof *pp);
        ck_assert_ptr_nonnull(ws);
        ck_assert_ptr_nonnull(pp);
        ck_assert_int_eq(nn_backward(net, pp, 2, ws, y, x, NULL, NULL),
                         FLOW_ERR_INVAL);
        ck_assert_int_eq(nn_forward(net, pp, 2, x, NULL, 0, y, ws), FLOW_OK);
        ck_assert_int_eq(nn_backward(net, pp, 1, ws, y, x, NULL, NULL),
                         FLOW_ERR_INVAL);         /* row count differs */
        ck_assert_int_eq(nn_jvp_backward(net, pp, 2, ws, x, y, NULL, NULL,
                                         NULL), FLOW_ERR_INVAL);
        free(ws);
        free(pp);
    }
    nn_destroy(net);
    /* the host table hands out the numerical core, every entry set */
    {
        const flow_host *h = flow_host_services();
#define HOST_SET(f) ck_assert_msg(h->f != NULL, "host entry " #f " is NULL")
#define HOST_HAS(f) ck_assert_msg(FLOW_HOST_HAS(h, f), "host table of %zu " \
                                  "bytes lacks " #f, (size_t)h->struct_size)
        ck_assert_msg(h->net_create == nn_create,
                      "host net_create is not nn_create");
        HOST_SET(gemm);
        HOST_SET(net_destroy);
        HOST_SET(net_params);
        HOST_SET(net_init);
        HOST_SET(net_workspace);
        HOST_SET(net_forward);
        HOST_SET(net_backward);
        HOST_SET(net_jvp);
        HOST_SET(net_jvp_backward);
        HOST_SET(tf_params);
        HOST_SET(tf_forward);
        HOST_SET(tf_inverse);
        HOST_SET(tf_backward);
        HOST_SET(tf_inverse_backward);
        HOST_SET(slogdet);
        HOST_SET(matinv);
        HOST_HAS(matinv);
        HOST_HAS(net_div_backward);
        HOST_SET(net_div_workspace);
        HOST_SET(net_div_forward);
        HOST_SET(net_div_backward);
#undef HOST_SET
#undef HOST_HAS
    }
}
END_TEST

/* --- net_div: the stacked divergence against per-tangent JVPs and FD --- */

#if FLOW_REAL_DOUBLE
# define DIV_TOL 1e-12     /* vs nn_forward + nn_jvp (libm tanh on both) */
# define DIV_GTOL 1e-11
# define DIV_FD_H 1e-6
# define DIV_FD_TOL 1e-6
#else
# define DIV_TOL 1e-5      /* float tanh approximation vs libm's (7 ulp) */
# define DIV_GTOL 1e-4
# define DIV_FD_H 3e-3
# define DIV_FD_TOL 1e-2   /* central differences of float evaluations */
#endif

static double maxabs_r(const flow_real *v, size_t m)
{
    double a = 0;
    for (size_t i = 0; i < m; i++)
        a = fmax(a, fabs((double)v[i]));
    return a;
}

/* L = sum dy . y + sum dtr . tr through nn_div_forward */
static double div_loss(const flow_net *net, const flow_real *p, size_t n,
                       const flow_real *x, double t, const flow_real *eps,
                       const flow_real *dy, const flow_real *dtr,
                       void *tape, void *scr, flow_real *y, flow_real *tr)
{
    double s = 0;
    size_t D;
    ck_assert_int_eq(nn_layer_shape(net, nn_layers(net) - 1, &D, NULL, NULL,
                                    NULL), FLOW_OK);
    ck_assert_int_eq(nn_div_forward(net, p, n, x, t, eps, y, tr, tape, scr),
                     FLOW_OK);
    for (size_t i = 0; i < n * D; i++)
        s += (double)dy[i] * y[i];
    for (size_t r = 0; r < n; r++)
        s += (double)dtr[r] * tr[r];
    return s;
}

/* One net: y and tr against nn_forward + one nn_jvp per tangent (unit
 * vectors, or the probes with `hutch`), the backward against nn_backward
 * + nn_jvp_backward per tangent with dty = dtr e_b (the recipe of
 * docs/runtime.md), and both against central differences. */
static void check_div(const netcase *nc, int hutch, uint64_t seed)
{
    enum { NR = 5 };
    refnet rn;
    flow_net *net = make_net(nc, NULL, &rn);
    size_t d = nc->d, D = nc->out, np = nn_params(net), sc = 0;
    size_t tb = nn_div_workspace(net, NR, &sc);
    double t = 0.3, ymax, gmax, xmax;
    flow_real *p = malloc(np * sizeof *p), *dp = calloc(np, sizeof *dp);
    flow_real *dpr = calloc(np, sizeof *dpr);
    flow_real x[NR * 8], y[NR * 8], yr[NR * 8], tr[NR], trr[NR];
    flow_real tx[NR * 8], ty[NR * 8], dty[NR * 8], eps[NR * 8];
    flow_real dy[NR * 8], dtr[NR], dx[NR * 8], dxr[NR * 8], dxb[NR * 8];
    void *tape, *scr, *ws;
    flow_rng rng;
    ck_assert_uint_le(d, 8);
    ck_assert_uint_le(D, d);
    ck_assert_uint_gt(tb, 0);
    ck_assert_uint_gt(sc, 0);
    tape = aligned_alloc(64, (tb + 63) / 64 * 64);
    scr = aligned_alloc(64, (sc + 63) / 64 * 64);
    ws = aligned_alloc(64, (nn_workspace(net, NR) + 63) / 64 * 64);
    rng_seed(&rng, seed);
    nn_init(net, p, &rng);
    for (size_t i = 0; i < NR * d; i++)
        x[i] = (flow_real)(2 * rng_uniform(&rng) - 1);
    for (size_t i = 0; i < NR * D; i++) {
        eps[i] = (flow_real)(2 * rng_uniform(&rng) - 1);
        dy[i] = (flow_real)(2 * rng_uniform(&rng) - 1);
    }
    for (size_t r = 0; r < NR; r++)
        dtr[r] = (flow_real)(2 * rng_uniform(&rng) - 1);
    ck_assert_int_eq(nn_div_forward(net, p, NR, x, t, hutch ? eps : NULL, y,
                                    tr, tape, scr), FLOW_OK);
    /* reference: forward, then the tangents one at a time */
    ck_assert_int_eq(nn_forward(net, p, NR, x, NULL, t, yr, ws), FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, NR, ws, dy, dxr, NULL, dpr),
                     FLOW_OK);
    memset(trr, 0, sizeof trr);
    for (size_t b = 0; b < (hutch ? 1 : D); b++) {
        memset(tx, 0, sizeof tx);
        memset(dty, 0, sizeof dty);
        for (size_t r = 0; r < NR; r++)
            for (size_t j = 0; j < D; j++) {
                flow_real e = hutch ? eps[r * D + j] : (flow_real)(j == b);
                tx[r * d + j] = e;
                dty[r * D + j] = dtr[r] * e;
            }
        ck_assert_int_eq(nn_jvp(net, p, NR, ws, tx, ty), FLOW_OK);
        for (size_t r = 0; r < NR; r++)
            for (size_t j = 0; j < D; j++)
                trr[r] += (hutch ? eps[r * D + j] : (flow_real)(j == b)) *
                          ty[r * D + j];
        ck_assert_int_eq(nn_jvp_backward(net, p, NR, ws, tx, dty, dxb, NULL,
                                         dpr), FLOW_OK);
        for (size_t i = 0; i < NR * d; i++)
            dxr[i] += dxb[i];
    }
    ymax = 1 + maxabs_r(yr, NR * D) + maxabs_r(trr, NR);
    for (size_t i = 0; i < NR * D; i++)
        ck_assert_msg(fabs((double)y[i] - yr[i]) <= DIV_TOL * ymax,
                      "y[%zu] %g vs %g", i, (double)y[i], (double)yr[i]);
    for (size_t r = 0; r < NR; r++)
        ck_assert_msg(fabs((double)tr[r] - trr[r]) <= DIV_TOL * ymax,
                      "tr[%zu] %g vs %g", r, (double)tr[r], (double)trr[r]);
    /* the map does not depend on the tangents: the other mode's y */
    {
        flow_real y2[NR * 8], tr2[NR];
        ck_assert_int_eq(nn_div_forward(net, p, NR, x, t, hutch ? NULL : eps,
                                        y2, tr2, tape, scr), FLOW_OK);
        ck_assert_mem_eq(y, y2, NR * D * sizeof *y);
        /* nor on whether there are any: tr NULL gives y alone (a layer
         * skipping its log-det), on a tape the backward refuses */
        ck_assert_int_eq(nn_div_forward(net, p, NR, x, t, hutch ? eps : NULL,
                                        y2, NULL, tape, scr), FLOW_OK);
        ck_assert_mem_eq(y, y2, NR * D * sizeof *y);
        ck_assert_int_eq(nn_div_backward(net, p, NR, tape, scr,
                                         hutch ? eps : NULL, dy, dtr, dx,
                                         dp), FLOW_ERR_INVAL);
        ck_assert_int_eq(nn_div_forward(net, p, NR, x, t, hutch ? eps : NULL,
                                        y2, tr2, tape, scr), FLOW_OK);
    }
    ck_assert_int_eq(nn_div_backward(net, p, NR, tape, scr, hutch ? eps : NULL,
                                     dy, dtr, dx, dp), FLOW_OK);
    /* a NULL cotangent is a zero one, bit for bit */
    for (int which = 0; which < 2; which++) {
        flow_real zy[NR * 8] = {0}, ztr[NR] = {0}, dxa[NR * 8], dxz[NR * 8];
        flow_real *da = calloc(np, sizeof *da), *dz = calloc(np, sizeof *dz);
        const flow_real *e = hutch ? eps : NULL;
        ck_assert_int_eq(nn_div_backward(net, p, NR, tape, scr, e,
                                         which ? dy : NULL,
                                         which ? NULL : dtr, dxa, da),
                         FLOW_OK);
        ck_assert_int_eq(nn_div_backward(net, p, NR, tape, scr, e,
                                         which ? dy : zy, which ? ztr : dtr,
                                         dxz, dz), FLOW_OK);
        ck_assert_mem_eq(da, dz, np * sizeof *da);
        ck_assert_mem_eq(dxa, dxz, NR * d * sizeof *dxa);
        free(da);
        free(dz);
    }
    gmax = 1e-3 + maxabs_r(dpr, np);
    xmax = 1e-3 + maxabs_r(dxr, NR * d);
    for (size_t i = 0; i < np; i++)
        ck_assert_msg(fabs((double)dp[i] - dpr[i]) <= DIV_GTOL * gmax,
                      "dparams[%zu] %g vs %g", i, (double)dp[i],
                      (double)dpr[i]);
    for (size_t i = 0; i < NR * d; i++)
        ck_assert_msg(fabs((double)dx[i] - dxr[i]) <= DIV_GTOL * xmax,
                      "dx[%zu] %g vs %g", i, (double)dx[i], (double)dxr[i]);
    /* central differences of L through nn_div_forward itself */
    for (size_t i = 0; i < np; i += 1 + np / 40) {
        flow_real keep = p[i];
        double lp, lm, h = DIV_FD_H * fmax(1, fabs((double)keep));
        p[i] = (flow_real)(keep + h);
        lp = div_loss(net, p, NR, x, t, hutch ? eps : NULL, dy, dtr, tape,
                      scr, y, tr);
        p[i] = (flow_real)(keep - h);
        lm = div_loss(net, p, NR, x, t, hutch ? eps : NULL, dy, dtr, tape,
                      scr, y, tr);
        p[i] = keep;
        ck_assert_msg(fabs((lp - lm) / (2 * h) - dp[i]) <= DIV_FD_TOL * gmax,
                      "param %zu: FD %g vs %g", i, (lp - lm) / (2 * h),
                      (double)dp[i]);
    }
    for (size_t i = 0; i < NR * d; i++) {
        flow_real keep = x[i];
        double lp, lm, h = DIV_FD_H;
        x[i] = (flow_real)(keep + h);
        lp = div_loss(net, p, NR, x, t, hutch ? eps : NULL, dy, dtr, tape,
                      scr, y, tr);
        x[i] = (flow_real)(keep - h);
        lm = div_loss(net, p, NR, x, t, hutch ? eps : NULL, dy, dtr, tape,
                      scr, y, tr);
        x[i] = keep;
        ck_assert_msg(fabs((lp - lm) / (2 * h) - dx[i]) <= DIV_FD_TOL * xmax,
                      "x %zu: FD %g vs %g", i, (lp - lm) / (2 * h),
                      (double)dx[i]);
    }
    free(tape);
    free(scr);
    free(ws);
    free(p);
    free(dp);
    free(dpr);
    nn_destroy(net);
}

/* the ode layer's nets: D outputs of D (+ K context columns as inputs),
 * each time mode, smooth activations; exact and Hutchinson */
START_TEST(test_div)
{
    static const struct {
        size_t d, out, nh, h0, h1;
        flow_activation act;
        flow_time_mode time;
    } cs[] = {
        {2, 2, 3, 7, 6, FLOW_ACT_TANH, FLOW_TIME_CONCAT},
        {3, 3, 2, 6, 5, FLOW_ACT_TANH, FLOW_TIME_CONCATSQUASH},
        {4, 2, 2, 5, 6, FLOW_ACT_SOFTPLUS, FLOW_TIME_CONCAT},
        {3, 2, 1, 6, 0, FLOW_ACT_ELU, FLOW_TIME_NONE},
        {2, 2, 0, 0, 0, FLOW_ACT_TANH, FLOW_TIME_CONCAT},
        {2, 1, 2, 4, 4, FLOW_ACT_SIGMOID, FLOW_TIME_CONCATSQUASH},
        /* more than DIV_SMALL_IN inputs (layer 0 by GEMM) and more than
         * DIV_FUSE_D outputs (the output layer's backward unfused) */
        {6, 6, 2, 7, 5, FLOW_ACT_TANH, FLOW_TIME_CONCAT},
        {5, 3, 2, 6, 5, FLOW_ACT_SOFTPLUS, FLOW_TIME_CONCATSQUASH},
        {6, 5, 0, 0, 0, FLOW_ACT_TANH, FLOW_TIME_CONCATSQUASH},
        {7, 5, 1, 9, 0, FLOW_ACT_ELU, FLOW_TIME_CONCAT},
        /* hidden widths of multiples of 8: tgemm's 16- and 8-column
         * tiles (where the CPU has AVX2 + FMA) */
        {2, 2, 2, 16, 24, FLOW_ACT_TANH, FLOW_TIME_CONCAT},
        {3, 3, 3, 8, 16, FLOW_ACT_SOFTPLUS, FLOW_TIME_CONCATSQUASH},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        netcase nc = {FLOW_NET_MLP, cs[c].d, 0, cs[c].out, cs[c].nh,
                      {cs[c].h0, cs[c].h1, cs[c].h1}, cs[c].act, cs[c].time,
                      0, 0};
        check_div(&nc, _i, 500 + c);
    }
}
END_TEST

START_TEST(test_div_errors)
{
    netcase made = {FLOW_NET_MADE, 3, 0, 1, 1, {6}, FLOW_ACT_TANH,
                    FLOW_TIME_NONE, 0, 0};
    netcase ctxn = {FLOW_NET_MLP, 2, 1, 2, 1, {4}, FLOW_ACT_TANH,
                    FLOW_TIME_NONE, 0, 0};
    netcase wide = {FLOW_NET_MLP, 2, 0, 3, 1, {4}, FLOW_ACT_TANH,
                    FLOW_TIME_NONE, 0, 0};
    netcase ok = {FLOW_NET_MLP, 2, 0, 2, 1, {4}, FLOW_ACT_TANH,
                  FLOW_TIME_NONE, 0, 0};
    const netcase *bad[] = {&made, &ctxn, &wide};
    flow_real p[64] = {0}, x[4] = {0}, y[4], tr[2];
    double tape[256], scr[256];
    refnet rn;
    for (size_t i = 0; i < 3; i++) {
        flow_net *net = make_net(bad[i], NULL, &rn);
        size_t sc = 1;
        ck_assert_uint_eq(nn_div_workspace(net, 2, &sc), 0);
        ck_assert_uint_eq(sc, 0);
        ck_assert_int_eq(nn_div_forward(net, p, 2, x, 0, NULL, y, tr, tape,
                                        scr), FLOW_ERR_UNSUPPORTED);
        nn_destroy(net);
    }
    {
        flow_net *net = make_net(&ok, NULL, &rn);
        size_t sc;
        ck_assert_uint_le(nn_div_workspace(net, 2, &sc), sizeof tape);
        ck_assert_uint_le(sc, sizeof scr);
        ck_assert_uint_le(nn_params(net), 64);
        memset(tape, 0, sizeof tape);
        /* backward without a forward on this tape */
        ck_assert_int_eq(nn_div_backward(net, p, 2, tape, scr, NULL, NULL,
                                         NULL, NULL, NULL), FLOW_ERR_INVAL);
        ck_assert_int_eq(nn_div_forward(net, p, 2, x, 0, NULL, y, tr, tape,
                                        scr), FLOW_OK);
        /* with probes after an exact forward: blocks differ */
        ck_assert_int_eq(nn_div_backward(net, p, 2, tape, scr, x, NULL,
                                         NULL, NULL, NULL), FLOW_ERR_INVAL);
        ck_assert_int_eq(nn_div_backward(net, p, 2, tape, scr, NULL, NULL,
                                         NULL, NULL, NULL), FLOW_OK);
        nn_destroy(net);
    }
}
END_TEST

Suite *suite_nn(void)
{
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("mlp");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_mlp_activations, FLOW_ACT_IDENTITY,
                        FLOW_ACT_SIGMOID + 1);
    tcase_add_loop_test(tc, test_mlp_time, 0, 4);
    tcase_add_loop_test(tc, test_mlp_fast, 0, 5);
    tcase_add_test(tc, test_spectral_norm);
    suite_add_tcase(s, tc);
    tc = tcase_create("made");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_made_gradients);
    tcase_add_test(tc, test_made_autoregressive);
    tcase_add_test(tc, test_made_one_dim);
    suite_add_tcase(s, tc);
    tc = tcase_create("threads");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_threads_share_net);
    suite_add_tcase(s, tc);
    tc = tcase_create("init_and_errors");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_zero_last_and_init);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("divergence");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_div, 0, 2);
    tcase_add_test(tc, test_div_errors);
    suite_add_tcase(s, tc);
    return s;
}
