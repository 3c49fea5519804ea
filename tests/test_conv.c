/* test_conv.c - the convolutional net (runtime/conv.c): kernels against a
 * naive direct convolution, the net's gradients against central
 * differences of a double-precision reference, layout, determinism. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/conv.h"
#include "../runtime/nn.h"
#include "../runtime/pool.h"
#include "../runtime/rng.h"
#include "../runtime/tgemm.h"
#include "flow/flow.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define FWD_TOL 1e-12     /* vs the direct convolution, relative to 1 + |y| */
# define GRAD_TOL 1e-7     /* analytic vs FD, relative to the largest entry */
#else
# define FWD_TOL 2e-5
# define GRAD_TOL 2e-4
#endif
#define FD_H 1e-6          /* the reference runs in double */

/* ------------------------------------------------------------ reference */

/* The direct convolution, six loops, in double: y[o][y][x] = b[o] +
 * sum_{c, ky, kx} W[o][c][ky][kx] in[c][y + ky - k/2][x + kx - k/2]. */
static void direct_conv(size_t cin, size_t cout, size_t h, size_t w,
                        size_t k, const double *wt, const double *b,
                        const double *in, double *out)
{
    long p = (long)(k / 2);
    for (size_t o = 0; o < cout; o++)
        for (size_t y = 0; y < h; y++)
            for (size_t x = 0; x < w; x++) {
                double s = b[o];
                for (size_t c = 0; c < cin; c++)
                    for (size_t ky = 0; ky < k; ky++)
                        for (size_t kx = 0; kx < k; kx++) {
                            long sy = (long)y + (long)ky - p;
                            long sx = (long)x + (long)kx - p;
                            if (sy < 0 || sx < 0 || sy >= (long)h ||
                                sx >= (long)w)
                                continue;
                            s += wt[((o * cin + c) * k + ky) * k + kx] *
                                 in[(c * h + (size_t)sy) * w + (size_t)sx];
                        }
                out[(o * h + y) * w + x] = s;
            }
}

typedef struct ccase {
    size_t c, h, w, ctx, hid, k, blocks, cout;
    int residual;
} ccase;

static flow_net_spec spec_of(const ccase *cc, int zero_last)
{
    flow_net_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_CONV;
    sp.in = cc->c * cc->h * cc->w;
    sp.out = cc->cout * cc->h * cc->w;
    sp.context = cc->ctx;
    sp.act = FLOW_ACT_RELU;
    sp.zero_last = zero_last;
    sp.seed = 7;
    sp.channels = cc->c;
    sp.height = cc->h;
    sp.width = cc->w;
    sp.conv_hidden = cc->hid;
    sp.kernel = cc->k;
    sp.blocks = cc->blocks;
    sp.out_channels = cc->cout;
    sp.residual = cc->residual;
    return sp;
}

static flow_net *make(const ccase *cc, int zero_last)
{
    flow_net_spec sp = spec_of(cc, zero_last);
    char err[256];
    flow_net *net = nn_create(&sp, err, sizeof err);
    ck_assert_msg(net != NULL, "nn_create: %s", err);
    return net;
}

/* The count the layout documents (conv.h). */
static size_t count_formula(const ccase *cc)
{
    size_t kk = cc->k * cc->k;
    return (cc->c + cc->ctx) * cc->hid * kk + cc->hid +
           cc->blocks * (cc->hid * cc->hid + cc->hid) +
           cc->hid * cc->cout * kk + cc->cout;
}

/* The net in double from the documented layout: y (n images). */
static void ref_forward(const ccase *cc, const double *p, size_t n,
                        const double *x, const double *ctx, double *y)
{
    size_t hw = cc->h * cc->w, ca = cc->c + cc->ctx, off = 0;
    double *aug = malloc(ca * hw * sizeof *aug);
    double *h0 = malloc(cc->hid * hw * sizeof *h0);
    double *h1 = malloc(cc->hid * hw * sizeof *h1);
    ck_assert_ptr_nonnull(aug);
    ck_assert_ptr_nonnull(h0);
    ck_assert_ptr_nonnull(h1);
    for (size_t i = 0; i < n; i++) {
        memcpy(aug, x + i * cc->c * hw, cc->c * hw * sizeof *aug);
        for (size_t j = 0; j < cc->ctx; j++)
            for (size_t q = 0; q < hw; q++)
                aug[(cc->c + j) * hw + q] = ctx[i * cc->ctx + j];
        off = 0;
        direct_conv(ca, cc->hid, cc->h, cc->w, cc->k, p + off,
                    p + off + cc->hid * ca * cc->k * cc->k, aug, h0);
        off += cc->hid * ca * cc->k * cc->k + cc->hid;
        for (size_t q = 0; q < cc->hid * hw; q++)
            h0[q] = h0[q] > 0 ? h0[q] : 0;
        for (size_t b = 0; b < cc->blocks; b++) {
            direct_conv(cc->hid, cc->hid, cc->h, cc->w, 1, p + off,
                        p + off + cc->hid * cc->hid, h0, h1);
            off += cc->hid * cc->hid + cc->hid;
            for (size_t q = 0; q < cc->hid * hw; q++) {
                double r = h1[q] > 0 ? h1[q] : 0;
                h0[q] = cc->residual ? h0[q] + r : r;
            }
        }
        direct_conv(cc->hid, cc->cout, cc->h, cc->w, cc->k, p + off,
                    p + off + cc->cout * cc->hid * cc->k * cc->k, h0,
                    y + i * cc->cout * hw);
    }
    free(aug);
    free(h0);
    free(h1);
}

static void fill_normal(flow_rng *r, flow_real *v, size_t m, double s)
{
    for (size_t i = 0; i < m; i++)
        v[i] = (flow_real)(s * (2 * rng_uniform(r) - 1));
}

static void *ws_new(const flow_net *net, size_t n)
{
    size_t bytes = nn_workspace(net, n);
    void *ws;
    ck_assert_uint_gt(bytes, 0);
    /* exactly the bytes asked for: ASan sees any write past them */
    ws = aligned_alloc(64, (bytes + 63) / 64 * 64);
    ck_assert_ptr_nonnull(ws);
    return ws;
}

/* ------------------------------------------------------------ kernels */

START_TEST(test_kernel_vs_direct)
{
    static const size_t cases[][5] = {
        /* cin, cout, h, w, k */
        {1, 1, 1, 1, 3}, {1, 2, 5, 7, 3}, {3, 4, 6, 5, 3}, {2, 3, 4, 4, 1},
        {1, 1, 9, 3, 1}, {4, 8, 7, 9, 5}, {2, 5, 3, 11, 3}, {5, 2, 2, 2, 5},
    };
    flow_rng r;
    rng_seed(&r, 11);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        size_t cin = cases[t][0], cout = cases[t][1], h = cases[t][2],
               w = cases[t][3], k = cases[t][4], hw = h * w;
        size_t nw = cout * cin * k * k, ncol = conv_col_count(cin, h, w, k);
        flow_real *wt = malloc(nw * sizeof *wt), *b = malloc(cout * sizeof *b);
        flow_real *x = malloc(cin * hw * sizeof *x);
        flow_real *y = malloc(cout * hw * sizeof *y);
        flow_real *col = malloc((ncol + 1) * sizeof *col);
        double *dw = malloc(nw * sizeof *dw), *db = malloc(cout * sizeof *db);
        double *dx = malloc(cin * hw * sizeof *dx);
        double *ry = malloc(cout * hw * sizeof *ry);
        fill_normal(&r, wt, nw, 1);
        fill_normal(&r, b, cout, 1);
        fill_normal(&r, x, cin * hw, 2);
        for (size_t i = 0; i < nw; i++)
            dw[i] = wt[i];
        for (size_t i = 0; i < cout; i++)
            db[i] = b[i];
        for (size_t i = 0; i < cin * hw; i++)
            dx[i] = x[i];
        ck_assert_uint_eq(ncol, k == 1 ? 0 : cin * k * k * hw);
        ck_assert_int_eq(conv_apply(cin, cout, h, w, k, wt, b, x, y, col),
                         FLOW_OK);
        direct_conv(cin, cout, h, w, k, dw, db, dx, ry);
        for (size_t i = 0; i < cout * hw; i++)
            ck_assert_msg(fabs(y[i] - ry[i]) <= FWD_TOL * (1 + fabs(ry[i])),
                          "case %zu (%zu->%zu, %zux%zu, k %zu), y[%zu] = %.17g"
                          ", direct %.17g", t, cin, cout, h, w, k, i,
                          (double)y[i], ry[i]);
        free(wt);
        free(b);
        free(x);
        free(y);
        free(col);
        free(dw);
        free(db);
        free(dx);
        free(ry);
    }
}
END_TEST

/* The direct adjoint of direct_conv: dx = W^T g through the same index
 * map, dW += g (x) x, db += sum g. */
static void direct_conv_back(size_t cin, size_t cout, size_t h, size_t w,
                             size_t k, const double *wt, const double *x,
                             const double *g, double *dx, double *dw,
                             double *db)
{
    long p = (long)(k / 2);
    memset(dx, 0, cin * h * w * sizeof *dx);
    for (size_t o = 0; o < cout; o++)
        for (size_t y = 0; y < h; y++)
            for (size_t xx = 0; xx < w; xx++) {
                double go = g[(o * h + y) * w + xx];
                db[o] += go;
                for (size_t c = 0; c < cin; c++)
                    for (size_t ky = 0; ky < k; ky++)
                        for (size_t kx = 0; kx < k; kx++) {
                            long sy = (long)y + (long)ky - p;
                            long sx = (long)xx + (long)kx - p;
                            size_t wi, ii;
                            if (sy < 0 || sx < 0 || sy >= (long)h ||
                                sx >= (long)w)
                                continue;
                            wi = ((o * cin + c) * k + ky) * k + kx;
                            ii = (c * h + (size_t)sy) * w + (size_t)sx;
                            dx[ii] += wt[wi] * go;
                            dw[wi] += x[ii] * go;
                        }
            }
}

static void near(const char *what, size_t t, const flow_real *v,
                 const double *ref, size_t m)
{
    for (size_t i = 0; i < m; i++)
        ck_assert_msg(fabs(v[i] - ref[i]) <= FWD_TOL * 10 * (1 + fabs(ref[i])),
                      "case %zu: %s[%zu] = %.17g, direct %.17g", t, what, i,
                      (double)v[i], ref[i]);
}

/* conv_apply_backward, by col2im and by the flipped kernel, against the
 * direct adjoint. */
START_TEST(test_kernel_backward_vs_direct)
{
    static const size_t cases[][5] = {
        {1, 1, 1, 1, 3}, {3, 2, 5, 7, 3}, {2, 6, 4, 3, 3}, {4, 3, 3, 3, 1},
        {6, 2, 4, 5, 5}, {1, 3, 2, 9, 3},
    };
    flow_rng r;
    rng_seed(&r, 13);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        size_t cin = cases[t][0], cout = cases[t][1], h = cases[t][2],
               w = cases[t][3], k = cases[t][4], hw = h * w;
        size_t nw = cout * cin * k * k;
        /* the flipped path takes the im2col of g: cout channels */
        size_t ncol = conv_col_count(cin > cout ? cin : cout, h, w, k);
        flow_real *wt = malloc(nw * sizeof *wt), *wf = malloc(nw * sizeof *wf);
        flow_real *x = malloc(cin * hw * sizeof *x);
        flow_real *g = malloc(cout * hw * sizeof *g);
        flow_real *dx = malloc(cin * hw * sizeof *dx);
        flow_real *dw = calloc(nw, sizeof *dw), *db = calloc(cout, sizeof *db);
        flow_real *col = malloc((ncol + 1) * sizeof *col);
        flow_real *dcol = malloc((ncol + 1) * sizeof *dcol);
        double *rw = malloc(nw * sizeof *rw), *rx = malloc(cin * hw * 8);
        double *rg = malloc(cout * hw * sizeof *rg);
        double *rdx = malloc(cin * hw * 8), *rdw = calloc(nw, sizeof *rdw);
        double *rdb = calloc(cout, sizeof *rdb);
        fill_normal(&r, wt, nw, 1);
        fill_normal(&r, x, cin * hw, 1);
        fill_normal(&r, g, cout * hw, 1);
        for (size_t i = 0; i < nw; i++)
            rw[i] = wt[i];
        for (size_t i = 0; i < cin * hw; i++)
            rx[i] = x[i];
        for (size_t i = 0; i < cout * hw; i++)
            rg[i] = g[i];
        direct_conv_back(cin, cout, h, w, k, rw, rx, rg, rdx, rdw, rdb);
        ck_assert_int_eq(conv_apply_backward(cin, cout, h, w, k, wt, NULL, x,
                                             g, dx, dw, db, col, dcol),
                         FLOW_OK);
        near("dx (col2im)", t, dx, rdx, cin * hw);
        near("dW", t, dw, rdw, nw);
        near("db", t, db, rdb, cout);
        conv_flip(cin, cout, k, wt, wf);
        memset(dx, 0, cin * hw * sizeof *dx);
        ck_assert_int_eq(conv_apply_backward(cin, cout, h, w, k, wt, wf, x, g,
                                             dx, NULL, NULL, col, dcol),
                         FLOW_OK);
        near("dx (flipped kernel)", t, dx, rdx, cin * hw);
        free(wt);
        free(wf);
        free(x);
        free(g);
        free(dx);
        free(dw);
        free(db);
        free(col);
        free(dcol);
        free(rw);
        free(rx);
        free(rg);
        free(rdx);
        free(rdw);
        free(rdb);
    }
}
END_TEST

/* col2im is the adjoint of im2col: <im2col(a), B> = <a, col2im(B)>. */
START_TEST(test_col2im_adjoint)
{
    const size_t c = 3, h = 5, w = 4, k = 3, hw = h * w;
    size_t ncol = conv_col_count(c, h, w, k);
    flow_real *a = malloc(c * hw * sizeof *a), *ca = malloc(ncol * sizeof *ca);
    flow_real *bm = malloc(ncol * sizeof *bm);
    flow_real *cb = malloc(c * hw * sizeof *cb);
    double l = 0, rgt = 0;
    flow_rng r;
    rng_seed(&r, 3);
    fill_normal(&r, a, c * hw, 1);
    fill_normal(&r, bm, ncol, 1);
    conv_im2col(c, h, w, k, a, ca);
    conv_col2im(c, h, w, k, bm, cb);
    for (size_t i = 0; i < ncol; i++)
        l += (double)ca[i] * bm[i];
    for (size_t i = 0; i < c * hw; i++)
        rgt += (double)a[i] * cb[i];
    ck_assert_double_eq_tol(l, rgt, FWD_TOL * 100 * (1 + fabs(l)));
    free(a);
    free(ca);
    free(bm);
    free(cb);
}
END_TEST

/* ------------------------------------------------------------ the net */

static const ccase net_cases[] = {
    /* c, h, w, ctx, hid, k, blocks, cout, residual */
    {1, 5, 3, 0, 4, 3, 1, 2, 0},  /* Glow's conditioner, C = 1, odd H W */
    {2, 4, 5, 2, 3, 3, 2, 3, 1},  /* context planes, residual stages */
    {3, 3, 3, 0, 5, 1, 0, 2, 0},  /* 1x1 kernels, no middle stage */
    {2, 3, 4, 1, 3, 5, 1, 1, 0},  /* 5x5 kernel, wider than the image */
    {2, 5, 6, 1, 8, 3, 1, 3, 0},  /* hid a multiple of 8: the last layer's
                                     dW from the pixel-major copy */
    {1, 3, 4, 0, 8, 5, 1, 2, 1},  /* the same, 5x5, wider than the image */
};

START_TEST(test_net_forward_and_count)
{
    const ccase *cc = &net_cases[_i];
    const size_t n = 3, din = cc->c * cc->h * cc->w,
                 dout = cc->cout * cc->h * cc->w;
    flow_net *net = make(cc, 0);
    size_t np = nn_params(net);
    flow_real *p = malloc(np * sizeof *p), *x = malloc(n * din * sizeof *x);
    flow_real *cx = malloc((n * cc->ctx + 1) * sizeof *cx);
    flow_real *y = malloc(n * dout * sizeof *y);
    double *pd = malloc(np * sizeof *pd), *xd = malloc(n * din * sizeof *xd);
    double *cd = malloc((n * cc->ctx + 1) * sizeof *cd);
    double *yd = malloc(n * dout * sizeof *yd);
    void *ws = ws_new(net, n);
    flow_rng r;
    ck_assert_uint_eq(np, count_formula(cc));
    ck_assert_uint_eq(conv_net_layers(nn_conv(net)), cc->blocks + 2);
    rng_seed(&r, 5);
    nn_init(net, p, &r);
    fill_normal(&r, x, n * din, 1.5);
    fill_normal(&r, cx, n * cc->ctx, 1);
    for (size_t i = 0; i < np; i++)
        pd[i] = p[i];
    for (size_t i = 0; i < n * din; i++)
        xd[i] = x[i];
    for (size_t i = 0; i < n * cc->ctx; i++)
        cd[i] = cx[i];
    ck_assert_int_eq(nn_forward(net, p, n, x, cc->ctx ? cx : NULL, 0, y, ws),
                     FLOW_OK);
    ref_forward(cc, pd, n, xd, cd, yd);
    for (size_t i = 0; i < n * dout; i++)
        ck_assert_msg(fabs(y[i] - yd[i]) <= FWD_TOL * 10 * (1 + fabs(yd[i])),
                      "case %d: y[%zu] = %.17g, reference %.17g", _i, i,
                      (double)y[i], yd[i]);
    free(p);
    free(x);
    free(cx);
    free(y);
    free(pd);
    free(xd);
    free(cd);
    free(yd);
    free(ws);
    nn_destroy(net);
}
END_TEST

/* L = sum w_i y_i with fixed random weights w: its gradients wrt the
 * parameters, the input and the context against central differences of
 * the double reference at the same values. */
static double ref_loss(const ccase *cc, const double *p, size_t n,
                       const double *x, const double *cx, const double *wl,
                       double *ybuf)
{
    size_t dout = cc->cout * cc->h * cc->w;
    double s = 0;
    ref_forward(cc, p, n, x, cx, ybuf);
    for (size_t i = 0; i < n * dout; i++)
        s += wl[i] * ybuf[i];
    return s;
}

static void check_grad(const char *what, int ci, const flow_real *g,
                       const double *fd, size_t m)
{
    double mx = 0;
    for (size_t i = 0; i < m; i++)
        mx = fmax(mx, fabs(fd[i]));
    ck_assert_msg(mx > 1e-3, "case %d: %s: FD gradient vanishes (max %g), "
                  "the test would be void", ci, what, mx);
    for (size_t i = 0; i < m; i++)
        ck_assert_msg(fabs(g[i] - fd[i]) <= GRAD_TOL * mx,
                      "case %d: %s[%zu] = %.17g, FD %.17g (max %g)", ci, what,
                      i, (double)g[i], fd[i], mx);
}

/* central difference of the loss in coordinate v[i] */
static double fd_at(const ccase *cc, double *p, size_t n, double *x,
                    double *cx, const double *wl, double *yb, double *v,
                    size_t i)
{
    double keep = v[i], lp, lm;
    v[i] = keep + FD_H;
    lp = ref_loss(cc, p, n, x, cx, wl, yb);
    v[i] = keep - FD_H;
    lm = ref_loss(cc, p, n, x, cx, wl, yb);
    v[i] = keep;
    return (lp - lm) / (2 * FD_H);
}

START_TEST(test_net_gradients)
{
    const ccase *cc = &net_cases[_i];
    const size_t n = 2, din = cc->c * cc->h * cc->w,
                 dout = cc->cout * cc->h * cc->w, nc = n * cc->ctx;
    flow_net *net = make(cc, 0);
    size_t np = nn_params(net);
    flow_real *p = malloc(np * sizeof *p), *x = malloc(n * din * sizeof *x);
    flow_real *cx = malloc((nc + 1) * sizeof *cx);
    flow_real *y = malloc(n * dout * sizeof *y);
    flow_real *dy = malloc(n * dout * sizeof *dy);
    flow_real *gp = calloc(np, sizeof *gp), *gx = malloc(n * din * sizeof *gx);
    flow_real *gc = calloc(nc + 1, sizeof *gc);
    double *pd = malloc(np * sizeof *pd), *xd = malloc(n * din * sizeof *xd);
    double *cd = malloc((nc + 1) * sizeof *cd), *wl = malloc(n * dout * 8);
    double *yb = malloc(n * dout * sizeof *yb);
    double *fp = malloc(np * sizeof *fp), *fx = malloc(n * din * sizeof *fx);
    double *fc = malloc((nc + 1) * sizeof *fc);
    void *ws = ws_new(net, n);
    flow_rng r;
    rng_seed(&r, 17 + (uint64_t)_i);
    nn_init(net, p, &r);
    fill_normal(&r, x, n * din, 1.5);
    fill_normal(&r, cx, nc, 1);
    fill_normal(&r, dy, n * dout, 1);
    for (size_t i = 0; i < np; i++)
        pd[i] = p[i];
    for (size_t i = 0; i < n * din; i++)
        xd[i] = x[i];
    for (size_t i = 0; i < nc; i++)
        cd[i] = cx[i];
    for (size_t i = 0; i < n * dout; i++)
        wl[i] = dy[i];
    ck_assert_int_eq(nn_forward(net, p, n, x, nc ? cx : NULL, 0, y, ws),
                     FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, n, ws, dy, gx, nc ? gc : NULL, gp),
                     FLOW_OK);
    for (size_t i = 0; i < np; i++)
        fp[i] = fd_at(cc, pd, n, xd, cd, wl, yb, pd, i);
    for (size_t i = 0; i < n * din; i++)
        fx[i] = fd_at(cc, pd, n, xd, cd, wl, yb, xd, i);
    for (size_t i = 0; i < nc; i++)
        fc[i] = fd_at(cc, pd, n, xd, cd, wl, yb, cd, i);
    check_grad("dparams", _i, gp, fp, np);
    check_grad("dx", _i, gx, fx, n * din);
    if (nc)
        check_grad("dctx", _i, gc, fc, nc);
    /* accumulation: a second backward adds the same gradient again */
    ck_assert_int_eq(nn_backward(net, p, n, ws, dy, NULL, NULL, gp), FLOW_OK);
    for (size_t i = 0; i < np; i++)
        ck_assert_msg(fabs(gp[i] - 2 * fp[i]) <= 2 * GRAD_TOL *
                                                     (1 + fabs(fp[i])) * 10,
                      "case %d: dparams[%zu] after two calls %.17g, want "
                      "2 x %.17g", _i, i, (double)gp[i], fp[i]);
    free(p);
    free(x);
    free(cx);
    free(y);
    free(dy);
    free(gp);
    free(gx);
    free(gc);
    free(pd);
    free(xd);
    free(cd);
    free(wl);
    free(yb);
    free(fp);
    free(fx);
    free(fc);
    free(ws);
    nn_destroy(net);
}
END_TEST

START_TEST(test_zero_last)
{
    const ccase cc = {4, 14, 14, 0, 16, 3, 1, 8, 0};
    const size_t n = 2, din = 4 * 196, dout = 8 * 196;
    flow_net *net = make(&cc, 1);
    size_t np = nn_params(net), wo, bo, lo_w, nz = 0;
    flow_real *p = malloc(np * sizeof *p), *x = malloc(n * din * sizeof *x);
    flow_real *y = malloc(n * dout * sizeof *y);
    void *ws = ws_new(net, n);
    flow_rng r;
    rng_seed(&r, 1);
    nn_init(net, p, &r);
    fill_normal(&r, x, n * din, 3);
    ck_assert_int_eq(conv_net_layer(nn_conv(net), 2, NULL, NULL, NULL, &wo,
                                    &bo), FLOW_OK);
    for (size_t i = wo; i < np; i++)
        ck_assert_msg(p[i] == 0, "last layer parameter %zu = %g", i,
                      (double)p[i]);
    /* the other layers are not zero, and within 1/sqrt(fan_in) */
    ck_assert_int_eq(conv_net_layer(nn_conv(net), 0, NULL, NULL, NULL, &lo_w,
                                    NULL), FLOW_OK);
    for (size_t i = lo_w; i < wo; i++) {
        nz += p[i] != 0;
        ck_assert_msg(fabs(p[i]) <= 1 / sqrt(4 * 9.0) || i >= 4 * 16 * 9 + 16,
                      "layer 0 parameter %zu = %g beyond 1/6", i,
                      (double)p[i]);
    }
    ck_assert_uint_gt(nz, (wo - lo_w) / 2);
    ck_assert_int_eq(nn_forward(net, p, n, x, NULL, 0, y, ws), FLOW_OK);
    for (size_t i = 0; i < n * dout; i++)
        ck_assert_msg(y[i] == 0, "y[%zu] = %g at init with zero_last", i,
                      (double)y[i]);
    free(p);
    free(x);
    free(y);
    free(ws);
    nn_destroy(net);
}
END_TEST

/* ------------------------------------------------------------ threads */

typedef struct half_job {
    const flow_net *net;
    const flow_real *p, *x, *dy;
    size_t n;
    flow_real *y, *dx, *dp;
    void *ws;
    int rc;
} half_job;

static void *run_half(void *arg)
{
    half_job *j = arg;
    j->rc = nn_forward(j->net, j->p, j->n, j->x, NULL, 0, j->y, j->ws);
    if (j->rc == FLOW_OK)
        j->rc = nn_backward(j->net, j->p, j->n, j->ws, j->dy, j->dx, NULL,
                            j->dp);
    return NULL;
}

/* The executor's row split (docs/runtime.md, "Threading in the
 * executor"): each thread's images give the same output and input
 * gradient bits as in one call on the whole batch (every GEMM reads one
 * image); the parameter gradient of 2 threads, each into its own
 * vector, summed in thread order, equals the one-thread vector to
 * rounding, and the same bits in every run. */
START_TEST(test_thread_split)
{
    const ccase cc = {2, 7, 6, 0, 8, 3, 1, 3, 1};
    const size_t n = 6, h = 4, din = 2 * 42, dout = 3 * 42;
    flow_net *net = make(&cc, 0);
    size_t np = nn_params(net);
    flow_real *p = malloc(np * sizeof *p), *x = malloc(n * din * sizeof *x);
    flow_real *dy = malloc(n * dout * sizeof *dy);
    flow_real *y1 = malloc(n * dout * sizeof *y1);
    flow_real *y2 = malloc(n * dout * sizeof *y2);
    flow_real *dx1 = malloc(n * din * sizeof *dx1);
    flow_real *dx2 = malloc(n * din * sizeof *dx2);
    flow_real *g1 = calloc(np, sizeof *g1), *ga = calloc(np, sizeof *ga);
    flow_real *gb = calloc(np, sizeof *gb), *gs = calloc(np, sizeof *gs);
    void *ws1 = ws_new(net, n), *wsa = ws_new(net, h), *wsb = ws_new(net, h);
    half_job ja, jb;
    pthread_t ta, tb;
    double mx = 0;
    flow_rng r;
    rng_seed(&r, 23);
    nn_init(net, p, &r);
    fill_normal(&r, x, n * din, 1);
    fill_normal(&r, dy, n * dout, 1);
    /* nonzero last layer, so that every gradient is exercised */
    ck_assert_int_eq(nn_forward(net, p, n, x, NULL, 0, y1, ws1), FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, n, ws1, dy, dx1, NULL, g1), FLOW_OK);
    ja = (half_job){net, p, x, dy, h, y2, dx2, ga, wsa, -1};
    jb = (half_job){net, p, x + h * din, dy + h * dout, n - h, y2 + h * dout,
                    dx2 + h * din, gb, wsb, -1};
    ck_assert_int_eq(pthread_create(&ta, NULL, run_half, &ja), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, run_half, &jb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(ja.rc, FLOW_OK);
    ck_assert_int_eq(jb.rc, FLOW_OK);
    ck_assert_msg(memcmp(y1, y2, n * dout * sizeof *y1) == 0,
                  "outputs differ between 1 and 2 threads");
    ck_assert_msg(memcmp(dx1, dx2, n * din * sizeof *dx1) == 0,
                  "input gradients differ between 1 and 2 threads");
    for (size_t i = 0; i < np; i++) {
        gs[i] = ga[i] + gb[i];
        mx = fmax(mx, fabs(g1[i]));
    }
    ck_assert_double_gt(mx, 1e-3);
    for (size_t i = 0; i < np; i++)
        ck_assert_msg(fabs(gs[i] - g1[i]) <= FWD_TOL * 10 * mx,
                      "dparams[%zu]: 1 thread %.17g, 2 threads %.17g", i,
                      (double)g1[i], (double)gs[i]);
    /* one thread's gradient taken in two calls into one vector: the
     * images are summed in the same order, the same bits */
    memset(ga, 0, np * sizeof *ga);
    ck_assert_int_eq(nn_forward(net, p, h, x, NULL, 0, y2, wsa), FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, h, wsa, dy, NULL, NULL, ga), FLOW_OK);
    ck_assert_int_eq(nn_forward(net, p, n - h, x + h * din, NULL, 0, y2, wsb),
                     FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, n - h, wsb, dy + h * dout, NULL,
                                 NULL, ga), FLOW_OK);
    ck_assert_msg(memcmp(ga, g1, np * sizeof *ga) == 0,
                  "gradient of two calls differs from one call's");
    free(p);
    free(x);
    free(dy);
    free(y1);
    free(y2);
    free(dx1);
    free(dx2);
    free(g1);
    free(ga);
    free(gb);
    free(gs);
    free(ws1);
    free(wsa);
    free(wsb);
    nn_destroy(net);
}
END_TEST

/* One image's output and input gradient are the same bits in whatever
 * batch it is evaluated (docs/runtime.md, "Threading and determinism"):
 * glow_fashion's two conditioners (4 x 14 x 14 and 8 x 7 x 7 couplings,
 * 64 hidden channels), the image alone, then first and last in batches
 * of 3, 64 and 65 random others. */
START_TEST(test_batch_invariance)
{
    static const ccase cases[] = {
        {2, 14, 14, 0, 64, 3, 1, 4, 0},
        {4, 7, 7, 0, 64, 3, 1, 8, 0},
    };
    static const size_t sizes[] = {3, 64, 65};
    const ccase *cc = &cases[_i];
    const size_t din = cc->c * cc->h * cc->w, dout = cc->cout * cc->h * cc->w;
    const size_t nmax = 65;
    flow_net *net = make(cc, 0);
    size_t np = nn_params(net);
    flow_real *p = malloc(np * sizeof *p), *g = calloc(np, sizeof *g);
    flow_real *x = malloc(nmax * din * sizeof *x);
    flow_real *dy = malloc(nmax * dout * sizeof *dy);
    flow_real *y = malloc(nmax * dout * sizeof *y);
    flow_real *dx = malloc(nmax * din * sizeof *dx);
    flow_real *x1 = malloc(din * sizeof *x1), *dy1 = malloc(dout * sizeof *dy1);
    flow_real *y1 = malloc(dout * sizeof *y1), *dx1 = malloc(din * sizeof *dx1);
    void *ws = ws_new(net, nmax), *ws1 = ws_new(net, 1);
    double ymax = 0, dxmax = 0;
    flow_rng r;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(g);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(dy);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(dx);
    ck_assert_ptr_nonnull(x1);
    ck_assert_ptr_nonnull(dy1);
    ck_assert_ptr_nonnull(y1);
    ck_assert_ptr_nonnull(dx1);
    rng_seed(&r, 31 + (uint64_t)_i);
    nn_init(net, p, &r);        /* the last layer random: every product */
    fill_normal(&r, x1, din, 1);
    fill_normal(&r, dy1, dout, 1);
    ck_assert_int_eq(nn_forward(net, p, 1, x1, NULL, 0, y1, ws1), FLOW_OK);
    ck_assert_int_eq(nn_backward(net, p, 1, ws1, dy1, dx1, NULL, g), FLOW_OK);
    for (size_t q = 0; q < dout; q++)
        ymax = fmax(ymax, fabs(y1[q]));
    for (size_t q = 0; q < din; q++)
        dxmax = fmax(dxmax, fabs(dx1[q]));
    ck_assert_double_gt(ymax, 1e-2);
    ck_assert_double_gt(dxmax, 1e-4);
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const size_t n = sizes[si];
        const size_t at[2] = {0, n - 1};
        for (size_t a = 0; a < 2; a++) {
            const size_t pos = at[a];
            fill_normal(&r, x, n * din, 1);
            fill_normal(&r, dy, n * dout, 1);
            memcpy(x + pos * din, x1, din * sizeof *x);
            memcpy(dy + pos * dout, dy1, dout * sizeof *dy);
            ck_assert_int_eq(nn_forward(net, p, n, x, NULL, 0, y, ws),
                             FLOW_OK);
            ck_assert_int_eq(nn_backward(net, p, n, ws, dy, dx, NULL, g),
                             FLOW_OK);
            for (size_t q = 0; q < dout; q++)
                ck_assert_msg(memcmp(&y[pos * dout + q], &y1[q],
                                     sizeof *y) == 0,
                              "batch %zu, row %zu: y[%zu] = %.9g, alone "
                              "%.9g", n, pos, q, (double)y[pos * dout + q],
                              (double)y1[q]);
            for (size_t q = 0; q < din; q++)
                ck_assert_msg(memcmp(&dx[pos * din + q], &dx1[q],
                                     sizeof *dx) == 0,
                              "batch %zu, row %zu: dx[%zu] = %.9g, alone "
                              "%.9g", n, pos, q, (double)dx[pos * din + q],
                              (double)dx1[q]);
        }
    }
    free(p);
    free(g);
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(x1);
    free(dy1);
    free(y1);
    free(dx1);
    free(ws);
    free(ws1);
    nn_destroy(net);
}
END_TEST

/* ------------------------------------------------------------ channel split */

/* The nets of net_cases, then glow_fashion's two conditioners, a
 * residual one with context and 16 hidden channels, and one whose
 * backward keeps the gradients of 8 images at a time (64 planes of 32 x
 * 32: 512 kB per image, groups of 4 MiB). */
static const ccase split_cases[] = {
    {1, 5, 3, 0, 4, 3, 1, 2, 0},
    {2, 4, 5, 2, 3, 3, 2, 3, 1},
    {3, 3, 3, 0, 5, 1, 0, 2, 0},
    {2, 3, 4, 1, 3, 5, 1, 1, 0},
    {2, 5, 6, 1, 8, 3, 1, 3, 0},
    {1, 3, 4, 0, 8, 5, 1, 2, 1},
    {2, 14, 14, 0, 64, 3, 1, 4, 0},
    {4, 7, 7, 0, 64, 3, 1, 8, 0},
    {3, 6, 5, 2, 16, 3, 2, 6, 1},
    {2, 32, 32, 0, 64, 3, 1, 4, 0},
};

/* Whether the channel split can run here: every product of the net on
 * tgemm (float build, AVX2 + FMA). */
static int split_runs(void)
{
#if FLOW_REAL_DOUBLE
    return 0;
#else
    float a[8] = {0}, b[8] = {0}, c[8];
    return tgemm(1, 8, 1, a, 1, 1, b, 8, NULL, 0, c, 8);
#endif
}

typedef struct net_run {
    flow_real *y, *dx, *dcx, *dp;
} net_run;

/* A forward and a backward of n images with pl lent to this thread (NULL:
 * none), into r (dp accumulated onto its contents). */
static void run_net(const flow_net *net, const ccase *cc, pool *pl,
                    size_t n, const flow_real *p, const flow_real *x,
                    const flow_real *cx, const flow_real *dy, net_run *r)
{
    void *ws = ws_new(net, n);
    int fw, bw;
    pool_lend(pl);
    fw = nn_forward(net, p, n, x, cc->ctx ? cx : NULL, 0, r->y, ws);
    bw = fw == FLOW_OK ? nn_backward(net, p, n, ws, dy, r->dx,
                                     cc->ctx ? r->dcx : NULL, r->dp)
                       : fw;
    pool_lend(NULL);
    ck_assert_int_eq(fw, FLOW_OK);
    ck_assert_int_eq(bw, FLOW_OK);
    free(ws);
}

static void same_bits(const char *what, size_t threads, size_t n,
                      const flow_real *a, const flow_real *b, size_t m)
{
    for (size_t q = 0; q < m; q++)
        ck_assert_msg(memcmp(&a[q], &b[q], sizeof *a) == 0,
                      "%zu images, %zu threads: %s[%zu] = %.9g split, "
                      "%.9g on one thread", n, threads, what, q, (double)b[q],
                      (double)a[q]);
}

/* The channel split (conv.c) gives the bits of one thread: outputs,
 * input and context gradients, and the parameter gradient accumulated
 * onto a nonzero start, for 1, 5 and 16 images on 2 and 3 threads, with
 * the work threshold at 0 so that every call splits (checked: the
 * workers' scratch was used) where the split can run at all. */
START_TEST(test_channel_split)
{
    static const size_t sizes[] = {1, 5, 16};
    const ccase *cc = &split_cases[_i];
    const size_t din = cc->c * cc->h * cc->w, dout = cc->cout * cc->h * cc->w;
    const size_t nmax = 16, old = conv_set_split_min(0);
    flow_net *net = make(cc, 0);
    const size_t np = nn_params(net);
    flow_real *p = malloc(np * sizeof *p), *g0 = malloc(np * sizeof *g0);
    flow_real *x = malloc(nmax * din * sizeof *x);
    flow_real *dy = malloc(nmax * dout * sizeof *dy);
    flow_real *cx = malloc((nmax * cc->ctx + 1) * sizeof *cx);
    net_run r[2];
    flow_rng rng;
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(g0);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(dy);
    ck_assert_ptr_nonnull(cx);
    for (int k = 0; k < 2; k++) {
        r[k].y = malloc(nmax * dout * sizeof *r[k].y);
        r[k].dx = malloc(nmax * din * sizeof *r[k].dx);
        r[k].dcx = malloc((nmax * cc->ctx + 1) * sizeof *r[k].dcx);
        r[k].dp = malloc(np * sizeof *r[k].dp);
        ck_assert_ptr_nonnull(r[k].y);
        ck_assert_ptr_nonnull(r[k].dx);
        ck_assert_ptr_nonnull(r[k].dcx);
        ck_assert_ptr_nonnull(r[k].dp);
    }
    rng_seed(&rng, 41 + (uint64_t)_i);
    nn_init(net, p, &rng);      /* the last layer random: every product */
    fill_normal(&rng, x, nmax * din, 1);
    fill_normal(&rng, dy, nmax * dout, 1);
    fill_normal(&rng, cx, nmax * cc->ctx + 1, 1);
    fill_normal(&rng, g0, np, 0.5);
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const size_t n = sizes[si];
        memcpy(r[0].dp, g0, np * sizeof *g0);
        memset(r[0].dcx, 0, (nmax * cc->ctx + 1) * sizeof *r[0].dcx);
        run_net(net, cc, NULL, n, p, x, cx, dy, &r[0]);
        for (size_t threads = 2; threads <= 3; threads++) {
            pool *pl = pool_new(threads);
            ck_assert_ptr_nonnull(pl);
            memcpy(r[1].dp, g0, np * sizeof *g0);
            memset(r[1].dcx, 0, (nmax * cc->ctx + 1) * sizeof *r[1].dcx);
            run_net(net, cc, pl, n, p, x, cx, dy, &r[1]);
            ck_assert_msg((pool_scratch_size(pl, 1) > 0) == split_runs(),
                          "%zu images, %zu threads: worker scratch %zu "
                          "bytes, the split %s", n, threads,
                          pool_scratch_size(pl, 1),
                          split_runs() ? "can run" : "cannot run");
            same_bits("y", threads, n, r[0].y, r[1].y, n * dout);
            same_bits("dx", threads, n, r[0].dx, r[1].dx, n * din);
            same_bits("dctx", threads, n, r[0].dcx, r[1].dcx, n * cc->ctx);
            same_bits("dparams", threads, n, r[0].dp, r[1].dp, np);
            pool_free(pl);
        }
    }
    conv_set_split_min(old);
    for (int k = 0; k < 2; k++) {
        free(r[k].y);
        free(r[k].dx);
        free(r[k].dcx);
        free(r[k].dp);
    }
    free(p);
    free(g0);
    free(x);
    free(dy);
    free(cx);
    nn_destroy(net);
}
END_TEST

/* The default work threshold: glow_fashion's 4 x 14 x 14 conditioner
 * (246,000 multiply-adds a thread in a layer of an image on 2 threads)
 * splits, a 4-channel 5 x 3 net (310) does not. */
START_TEST(test_split_threshold)
{
    static const ccase big = {2, 14, 14, 0, 64, 3, 1, 4, 0};
    static const ccase tiny = {1, 5, 3, 0, 4, 3, 1, 2, 0};
    const ccase *cs[2] = {&big, &tiny};
    const size_t ns[2] = {16, 1};
    for (int c = 0; c < 2; c++) {
        const ccase *cc = cs[c];
        const size_t n = ns[c];
        const size_t din = cc->c * cc->h * cc->w;
        const size_t dout = cc->cout * cc->h * cc->w;
        flow_net *net = make(cc, 0);
        const size_t np = nn_params(net);
        flow_real *p = calloc(np, sizeof *p), *x = calloc(n * din, sizeof *x);
        flow_real *dy = calloc(n * dout, sizeof *dy);
        net_run r = {calloc(n * dout, sizeof(flow_real)),
                     calloc(n * din, sizeof(flow_real)), NULL,
                     calloc(np, sizeof(flow_real))};
        pool *pl = pool_new(2);
        ck_assert_ptr_nonnull(pl);
        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(x);
        ck_assert_ptr_nonnull(dy);
        ck_assert_ptr_nonnull(r.y);
        ck_assert_ptr_nonnull(r.dx);
        ck_assert_ptr_nonnull(r.dp);
        run_net(net, cc, pl, n, p, x, NULL, dy, &r);
        ck_assert_msg((pool_scratch_size(pl, 1) > 0) == (c == 0 &&
                                                         split_runs()),
                      "%zu images of %zu x %zu x %zu, %zu hidden: worker "
                      "scratch %zu bytes", n, cc->c, cc->h, cc->w, cc->hid,
                      pool_scratch_size(pl, 1));
        pool_free(pl);
        free(p);
        free(x);
        free(dy);
        free(r.y);
        free(r.dx);
        free(r.dp);
        nn_destroy(net);
    }
}
END_TEST

typedef struct lend_probe {
    pool *seen[4];
} lend_probe;

static void probe_task(void *arg, size_t t)
{
    ((lend_probe *)arg)->seen[t] = pool_lent();
}

/* A lent pool is the lending thread's only, and hidden inside a run of
 * it (a task that split again would wait for itself). */
START_TEST(test_pool_lend)
{
    pool *pl = pool_new(3);
    lend_probe pr = {{pl, pl, pl, pl}};
    ck_assert_ptr_nonnull(pl);
    ck_assert_ptr_null(pool_lent());
    pool_lend(pl);
    ck_assert_ptr_eq(pool_lent(), pl);
    pool_run(pl, 3, probe_task, &pr);
    for (int t = 0; t < 3; t++)
        ck_assert_msg(pr.seen[t] == NULL, "task %d saw the lent pool", t);
    ck_assert_ptr_eq(pool_lent(), pl);
    pool_lend(NULL);
    ck_assert_ptr_null(pool_lent());
    ck_assert_uint_eq(pool_threads(pl), 3);
    ck_assert_uint_eq(pool_scratch_size(pl, 2), 0);
    ck_assert_ptr_nonnull(pool_scratch(pl, 2, 100));
    ck_assert_uint_eq(pool_scratch_size(pl, 2), 100);
    ck_assert_ptr_null(pool_scratch(pl, 3, 100));
    pool_free(pl);
}
END_TEST

/* A team run's pieces (pool_team): every one claimed once, by whoever
 * comes first. */
typedef struct team_probe {
    atomic_size_t next, done;
    size_t pieces, threads;
    int owner[64];              /* thread that ran piece i, -1 none */
    int bad_t;
} team_probe;

static void team_probe_task(void *arg, size_t t)
{
    team_probe *tp = arg;
    size_t i;
    if (t >= tp->threads)
        tp->bad_t = 1;
    while ((i = atomic_fetch_add(&tp->next, 1)) < tp->pieces) {
        tp->owner[i] = (int)t;
        atomic_fetch_add_explicit(&tp->done, 1, memory_order_release);
    }
    pool_spin_until(&tp->done, tp->pieces);
}

static void run_probe_task(void *arg, size_t t)
{
    atomic_fetch_add((atomic_size_t *)arg, t + 1);
}

/* Team runs between plain runs, 2000 of each: every piece of a team run
 * runs once, on a thread of the pool, and the caller sees all of them
 * when pool_team returns (workers that come late take no piece and touch
 * no freed state: ASan builds would see it); every plain run runs each
 * task once. */
START_TEST(test_pool_team)
{
    pool *pl = pool_new(3);
    ck_assert_ptr_nonnull(pl);
    for (int it = 0; it < 2000; it++) {
        team_probe *tp = malloc(sizeof *tp);
        atomic_size_t sum;
        ck_assert_ptr_nonnull(tp);
        atomic_init(&tp->next, 0);
        atomic_init(&tp->done, 0);
        tp->pieces = 1 + (size_t)it % 64;
        tp->threads = 3;
        tp->bad_t = 0;
        for (int i = 0; i < 64; i++)
            tp->owner[i] = -1;
        pool_team(pl, team_probe_task, tp);
        ck_assert_int_eq(tp->bad_t, 0);
        for (size_t i = 0; i < tp->pieces; i++) {
            ck_assert_msg(tp->owner[i] >= 0 && tp->owner[i] < 3,
                          "run %d: piece %zu of %zu ran on %d", it, i,
                          tp->pieces, tp->owner[i]);
        }
        free(tp);               /* a late worker must not read it */
        atomic_init(&sum, 0);
        pool_run(pl, 3, run_probe_task, &sum);
        ck_assert_uint_eq(atomic_load(&sum), 1 + 2 + 3);
    }
    pool_free(pl);
}
END_TEST

/* ------------------------------------------------------------ host table */

typedef struct sink {
    flow_export ex;
    size_t n_tensors, shape0[4], ndim0;
    char names[8][64];
    char attr[2048];
} sink;

static int sink_tensor(flow_export *ex, const char *name, flow_dtype dt,
                       size_t ndim, const size_t *shape, const void *data)
{
    sink *s = (sink *)ex;
    (void)dt;
    (void)data;
    if (s->n_tensors == 0) {
        s->ndim0 = ndim;
        for (size_t i = 0; i < ndim && i < 4; i++)
            s->shape0[i] = shape[i];
    }
    if (s->n_tensors < 8)
        snprintf(s->names[s->n_tensors], sizeof s->names[0], "%s", name);
    s->n_tensors++;
    return FLOW_OK;
}

static int sink_attr(flow_export *ex, const char *key, const char *json)
{
    sink *s = (sink *)ex;
    (void)key;
    snprintf(s->attr, sizeof s->attr, "%s", json);
    return FLOW_OK;
}

/* Through the host table, as a plugin sees the net: the counts, the
 * unsupported entries and the export's names, shapes and description. */
START_TEST(test_host_entries)
{
    const flow_host *hs = flow_host_services();
    const ccase cc = {4, 14, 14, 0, 64, 3, 1, 8, 0};
    flow_net_spec sp = spec_of(&cc, 1);
    char err[256];
    flow_net *net;
    flow_real *p;
    void *ws;
    sink s;
    ck_assert(FLOW_HOST_HAS(hs, net_export));
    net = hs->net_create(&sp, err, sizeof err);
    ck_assert_msg(net != NULL, "net_create: %s", err);
    /* the conditioner: 4 -> 64 (3x3), 64 -> 64 (1x1), 64 -> 8 */
    ck_assert_uint_eq(hs->net_params(net),
                      4 * 64 * 9 + 64 + 64 * 64 + 64 + 64 * 8 * 9 + 8);
    p = malloc(hs->net_params(net) * sizeof *p);
    ws = ws_new(net, 1);
    hs->net_init(net, p, NULL);
    ck_assert_int_eq(hs->net_jvp(net, p, 1, ws, p, p), FLOW_ERR_UNSUPPORTED);
    ck_assert_uint_eq(hs->net_div_workspace(net, 1, NULL), 0);
    ck_assert_uint_eq(hs->net_made_sorted_count(net), 0);
    ck_assert_int_eq(hs->net_made_step(net, p, 1, NULL, 0, NULL, p, ws),
                     FLOW_ERR_UNSUPPORTED);
    ck_assert_int_eq(hs->net_mask_params(net, p, NULL), 0);
    /* backward without a forward on ws */
    memset(ws, 0, 64);
    ck_assert_int_eq(hs->net_backward(net, p, 1, ws, p, NULL, NULL, p),
                     FLOW_ERR_INVAL);
    memset(&s, 0, sizeof s);
    s.ex.struct_size = sizeof s.ex;
    s.ex.tensor = sink_tensor;
    s.ex.attr = sink_attr;
    ck_assert_int_eq(hs->net_export(net, p, "net", "s then t", &s.ex),
                     FLOW_OK);
    ck_assert_uint_eq(s.n_tensors, 6);
    ck_assert_str_eq(s.names[0], "net.0.weight");
    ck_assert_str_eq(s.names[1], "net.0.bias");
    ck_assert_str_eq(s.names[2], "net.1.weight");
    ck_assert_str_eq(s.names[5], "net.2.bias");
    ck_assert_uint_eq(s.ndim0, 4);
    ck_assert_uint_eq(s.shape0[0], 64);
    ck_assert_uint_eq(s.shape0[1], 4);
    ck_assert_uint_eq(s.shape0[2], 3);
    ck_assert_uint_eq(s.shape0[3], 3);
    ck_assert_msg(strstr(s.attr, "\"kind\": \"conv\"") &&
                      strstr(s.attr, "\"padding\": 1") &&
                      strstr(s.attr, "\"hidden_channels\": 64") &&
                      strstr(s.attr, "\"output_layout\": \"s then t\""),
                  "description: %s", s.attr);
    free(p);
    free(ws);
    hs->net_destroy(net);
}
END_TEST

START_TEST(test_spec_errors)
{
    const ccase ok = {2, 4, 4, 0, 3, 3, 1, 2, 0};
    flow_net_spec sp;
    char err[256];
    sp = spec_of(&ok, 0);
    sp.kernel = 2;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "odd") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.in = 31;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "do not match") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.act = FLOW_ACT_TANH;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "relu") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.conv_hidden = 0;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "> 0") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.struct_size = (uint32_t)offsetof(flow_net_spec, channels);
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "1.7") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.height = SIZE_MAX / 2;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "overflow") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.conv_hidden = (size_t)1 << 40;
    ck_assert_ptr_null(nn_create(&sp, err, sizeof err));
    ck_assert_msg(strstr(err, "overflow") != NULL, "%s", err);
    sp = spec_of(&ok, 0);
    sp.kernel = 0;               /* 0 = 3 */
    {
        flow_net *net = nn_create(&sp, err, sizeof err);
        ck_assert_msg(net != NULL, "%s", err);
        ck_assert_uint_eq(nn_params(net), 2 * 3 * 9 + 3 + 12 + 3 * 2 * 9 + 2);
        nn_destroy(net);
    }
}
END_TEST

Suite *suite_conv(void)
{
    Suite *s = suite_create("conv");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_kernel_vs_direct);
    tcase_add_test(tc, test_kernel_backward_vs_direct);
    tcase_add_test(tc, test_col2im_adjoint);
    suite_add_tcase(s, tc);
    tc = tcase_create("net");
    tcase_add_loop_test(tc, test_net_forward_and_count, 0,
                        (int)(sizeof net_cases / sizeof net_cases[0]));
    tcase_add_loop_test(tc, test_net_gradients, 0,
                        (int)(sizeof net_cases / sizeof net_cases[0]));
    tcase_add_test(tc, test_zero_last);
    tcase_add_test(tc, test_thread_split);
    tcase_add_loop_test(tc, test_batch_invariance, 0, 2);
    tcase_add_loop_test(tc, test_channel_split, 0,
                        (int)(sizeof split_cases / sizeof split_cases[0]));
    tcase_add_test(tc, test_split_threshold);
    tcase_add_test(tc, test_pool_lend);
    tcase_add_test(tc, test_pool_team);
    tcase_add_test(tc, test_host_entries);
    tcase_add_test(tc, test_spec_errors);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}
