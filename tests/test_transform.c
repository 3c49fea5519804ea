/* test_transform.c - elementwise transformers (affine with exp or sigmoid
 * scale, additive, spline): round trips (inside, at and beyond the spline
 * bound), log-det and VJPs against central differences in double,
 * monotonicity, identity at zero parameters, robustness; the float
 * build's lanes against the double core and 2 against 8 lanes. */
#include <math.h>
#include <string.h>

#include "../runtime/rng.h"
#include "../runtime/transform.h"
#include "flow/flow.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define RT_TOL 1e-11      /* round trip, relative to 1 + |x|            */
# define GRAD_TOL 1e-6     /* analytic VJP vs FD, relative to the max    */
# define REAL_EPS 2.2e-16
#else
# define RT_TOL 1e-5
# define GRAD_TOL 2e-5
# define REAL_EPS 1.2e-7
#endif

enum { NKINDS = 4 };
static const flow_tf kinds[NKINDS] = {
    {sizeof(flow_tf), FLOW_TF_AFFINE, 0, 0, 0, 0, 0},
    {sizeof(flow_tf), FLOW_TF_ADDITIVE, 0, 0, 0, 0, 0},
    {sizeof(flow_tf), FLOW_TF_SPLINE, 8, 3.0, 0, 0, 0},
    {sizeof(flow_tf), FLOW_TF_AFFINE_SIGMOID, 0, 0, 0, 0, 0},
};

/* random raw parameters, scale `sc` */
static void rand_theta(flow_rng *r, flow_real *th, size_t n, double sc)
{
    for (size_t i = 0; i < n; i++)
        th[i] = (flow_real)(sc * rng_normal1(r));
}

/* How far (in float ulps of the result) the batch calls may be from the
 * double core rounded: 1, except the exp-scale affine transformer in
 * float, which runs its own vectorised exp and tanh (transform.c, "affine,
 * float fast path"; measured within 1.6 ulp of the core rounded,
 * docs/runtime.md).  The sigmoid scale's vector path (exp and log) holds
 * 1 ulp here. */
#if FLOW_REAL_DOUBLE
# define BATCH_ULPS(tf) 1.0
#else
# define BATCH_ULPS(tf) ((tf)->kind == FLOW_TF_AFFINE ? 2.0 : 1.0)
#endif

/* loop index: kind (0..NKINDS-1) + NKINDS * scale (0: theta ~ N(0,
 * 0.5^2), a moderately curved map; 1: N(0, 1.5^2), nearly flat pieces) */
START_TEST(test_round_trip)
{
    enum { M = 400 };
    const flow_tf *tf = &kinds[_i % NKINDS];
    double sc = _i < NKINDS ? 0.5 : 1.5;
    const flow_host *h = flow_host_services();
    size_t p = h->tf_params(tf);
    static flow_real th[M * 3 * TF_MAX_BINS];
    flow_real x[M], y[M], xb[M], lf[M], li[M];
    double thd[3 * TF_MAX_BINS];
    tf_cfg c;
    double b = 3.0;
    flow_rng r;
    rng_seed(&r, 11 + (uint64_t)_i);
    ck_assert_uint_gt(p, 0);
    rand_theta(&r, th, M * p, sc);
    for (int i = 0; i < M; i++)
        x[i] = (flow_real)(1.6 * b * (2 * rng_uniform(&r) - 1));
    /* exactly at and just around the bound, far outside, zero */
    x[0] = (flow_real)b;
    x[1] = (flow_real)-b;
    x[2] = nextafterf((float)b, 10.0f);
    x[3] = nextafterf((float)-b, -10.0f);
    x[4] = nextafterf((float)b, 0.0f);
    x[5] = 1e6f;
    x[6] = -1e6f;
    x[7] = 0;
    ck_assert_int_eq(h->tf_forward(tf, M, x, th, y, lf), FLOW_OK);
    ck_assert_int_eq(h->tf_inverse(tf, M, y, th, xb, li), FLOW_OK);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    for (int i = 0; i < M; i++) {
        /* 1e-5 (float32) plus the conditioning of the inverse: y is
         * rounded to flow_real, an error of 2 ulp(y) / tau'(x) in x is
         * unavoidable where the map is flat (tiny bins, min_deriv; a
         * sigmoid scale far below 1) */
        double cond = ((tf->kind == FLOW_TF_SPLINE && sc > 0.6)
                       || tf->kind == FLOW_TF_AFFINE_SIGMOID)
                          ? 2 * REAL_EPS * (1 + fabs(y[i])) / exp((double)lf[i])
                          : 0;
        ck_assert_msg(fabs((double)xb[i] - x[i]) <= RT_TOL * (1 + fabs(x[i]))
                      + cond,
                      "kind %d: x %.9g -> y %.9g -> %.9g", tf->kind, x[i],
                      y[i], xb[i]);
        /* the inverse's log-det is the double core's (which test_logdet_fd
         * checks is minus the forward's at the exact inverse), rounded:
         * comparing with lf[i] would measure float conditioning instead */
        for (size_t j = 0; j < p; j++)
            thd[j] = th[i * p + j];
        {
            double xe, le;
            tf_eval1(&c, 1, (double)y[i], thd, &xe, &le);
            ck_assert_msg(fabs(li[i] - le) <= RT_TOL * (1 + fabs(le)),
                          "i %d: lad of inverse %.9g vs %.9g", i,
                          (double)li[i], le);
            /* the float spline's lanes differ from the core in exp and
             * log1p at about an ulp of double, so their knots by a few
             * ulps of B (the cumulative sums): 16 ulp(B) in x and in y,
             * the latter divided by the slope, allows for 8 bins */
            double kab = tf->kind == FLOW_TF_SPLINE && !FLOW_REAL_DOUBLE
                             ? 16 * 2.2e-16 * b * (1 + exp(-(double)lf[i]))
                             : 0;
            ck_assert_msg(fabs(xe - xb[i]) <= 1e-15 + kab + BATCH_ULPS(tf) *
                                                      1.2e-7 * fabs(xe),
                          "i %d: inverse %.9g vs core %.9g", i,
                          (double)xb[i], xe);
        }
        if (tf->kind == FLOW_TF_SPLINE && fabs(x[i]) > b) {
            /* linear tails: the identity, log-det exactly 0 */
            ck_assert_msg(y[i] == x[i] && lf[i] == 0 && xb[i] == x[i],
                          "tail i %d: x %.9g, y %.9g, lad %g, inverse %.9g", i,
                          (double)x[i], (double)y[i], (double)lf[i],
                          (double)xb[i]);
        }
    }
    if (tf->kind == FLOW_TF_SPLINE) {
        /* the bound maps to itself (continuity with the tails) */
        ck_assert_double_eq_tol(y[0], b, RT_TOL * b);
        ck_assert_double_eq_tol(y[1], -b, RT_TOL * b);
    }
}
END_TEST

/* log|tau'| against a central difference of the map, in double */
START_TEST(test_logdet_fd)
{
    const flow_tf *tf = &kinds[_i];
    tf_cfg c;
    double th[3 * TF_MAX_BINS], hd = 1e-6;
    flow_rng r;
    rng_seed(&r, 21 + (uint64_t)_i);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    for (int trial = 0; trial < 200; trial++) {
        double x = 3.6 * (2 * rng_uniform(&r) - 1), y, l, yp, ym, lp;
        for (size_t j = 0; j < c.n_theta; j++)
            th[j] = 1.5 * rng_normal1(&r);
        tf_eval1(&c, 0, x, th, &y, &l);
        tf_eval1(&c, 0, x + hd, th, &yp, &lp);
        tf_eval1(&c, 0, x - hd, th, &ym, &lp);
        ck_assert_double_eq_tol(l, log((yp - ym) / (2 * hd)), 1e-6);
        /* and the inverse's log-det is minus the forward's at x */
        tf_eval1(&c, 1, y, th, &yp, &lp);
        ck_assert_double_eq_tol(lp, -l, 1e-9);
        ck_assert_double_eq_tol(yp, x, 1e-9 * (1 + fabs(x)));
    }
}
END_TEST

/* VJPs of both directions (wrt the input and theta, through the log-det)
 * from the flow_real API against central differences of the double core */
START_TEST(test_vjp_fd)
{
    const flow_tf *tf = &kinds[_i / 2];
    int dir = _i % 2;
    const flow_host *h = flow_host_services();
    tf_cfg c;
    flow_real th[3 * TF_MAX_BINS], in, out, lad, gin, gth[3 * TF_MAX_BINS];
    flow_real gout, glad;
    double thd[3 * TF_MAX_BINS], fd[1 + 3 * TF_MAX_BINS], hd = 1e-7;
    flow_rng r;
    rng_seed(&r, 31 + (uint64_t)_i);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    for (int trial = 0; trial < 100; trial++) {
        double mx = 0;
        rand_theta(&r, th, c.n_theta, 1.0);
        in = (flow_real)(3.3 * (2 * rng_uniform(&r) - 1));
        gout = (flow_real)rng_normal1(&r);
        glad = (flow_real)rng_normal1(&r);
        if (dir == 0) {
            ck_assert_int_eq(h->tf_backward(tf, 1, &in, th, &gout, &glad,
                                            &gin, gth), FLOW_OK);
        } else {
            ck_assert_int_eq(h->tf_inverse(tf, 1, &in, th, &out, &lad),
                             FLOW_OK);
            /* once with x passed in, once recomputed: same result */
            ck_assert_int_eq(h->tf_inverse_backward(tf, 1, &in, NULL, th,
                                                    &gout, &glad, &gin, gth),
                             FLOW_OK);
            {
                flow_real gin2, gth2[3 * TF_MAX_BINS];
                ck_assert_int_eq(h->tf_inverse_backward(tf, 1, &in, &out, th,
                                 &gout, &glad, &gin2, gth2), FLOW_OK);
                ck_assert_double_eq_tol(gin2, gin, 1e-4 * (1 + fabs(gin)));
            }
        }
        for (size_t j = 0; j < c.n_theta; j++)
            thd[j] = th[j];
        /* L = gout * out + glad * lad; FD wrt in, then each theta */
        for (size_t j = 0; j <= c.n_theta; j++) {
            double v[2];
            for (int s = 0; s < 2; s++) {
                double e = s ? -hd : hd, o, l, xin = in;
                if (j == 0)
                    xin += e;
                else
                    thd[j - 1] += e;
                tf_eval1(&c, dir, xin, thd, &o, &l);
                if (j > 0)
                    thd[j - 1] = th[j - 1];
                v[s] = (double)gout * o + (double)glad * l;
            }
            fd[j] = (v[0] - v[1]) / (2 * hd);
            mx = fmax(mx, fabs(fd[j]));
        }
        ck_assert_msg(fabs(gin - fd[0]) <= GRAD_TOL * (mx + 1e-3),
                      "kind %d dir %d d/din %g vs fd %g", tf->kind, dir,
                      (double)gin, fd[0]);
        for (size_t j = 0; j < c.n_theta; j++)
            ck_assert_msg(fabs(gth[j] - fd[j + 1]) <= GRAD_TOL * (mx + 1e-3),
                          "kind %d dir %d d/dtheta[%zu] %g vs fd %g",
                          tf->kind, dir, j, (double)gth[j], fd[j + 1]);
    }
}
END_TEST

START_TEST(test_spline_monotone_and_identity)
{
    enum { G = 20001 };
    const flow_tf *tf = &kinds[2];
    tf_cfg c;
    double th[3 * TF_MAX_BINS], prev = -INFINITY, y, l;
    flow_rng r;
    rng_seed(&r, 41);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    /* theta = 0: uniform bins, derivatives 1: the identity */
    memset(th, 0, sizeof th);
    for (int i = 0; i < 101; i++) {
        double x = -4 + 8.0 * i / 100;
        tf_eval1(&c, 0, x, th, &y, &l);
        ck_assert_double_eq_tol(y, x, 1e-12);
        ck_assert_double_eq_tol(l, 0, 1e-12);
    }
    /* extreme parameters: still strictly increasing with finite log-det */
    for (size_t j = 0; j < c.n_theta; j++)
        th[j] = 6 * rng_normal1(&r);
    for (int i = 0; i < G; i++) {
        double x = -4.5 + 9.0 * i / (G - 1);
        tf_eval1(&c, 0, x, th, &y, &l);
        ck_assert_msg(y > prev, "not increasing at x = %g", x);
        ck_assert_msg(isfinite(l), "lad %g at x = %g", l, x);
        prev = y;
    }
}
END_TEST

START_TEST(test_spline_robust)
{
    const flow_tf *tf = &kinds[2];
    tf_cfg c;
    double th[3 * TF_MAX_BINS], ys[] = {3.0, -3.0, nextafter(3.0, 0),
        nextafter(-3.0, 0), 3 + 1e-12, -3 - 1e-12, 0, 1e300, -1e300};
    flow_rng r;
    rng_seed(&r, 51);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    for (int trial = 0; trial < 50; trial++) {
        for (size_t j = 0; j < c.n_theta; j++)
            th[j] = 40 * (2 * rng_uniform(&r) - 1);
        for (size_t i = 0; i < sizeof ys / sizeof ys[0]; i++) {
            double x, l, yb, lb, gin, gth[3 * TF_MAX_BINS];
            tf_eval1(&c, 1, ys[i], th, &x, &l);
            ck_assert_msg(isfinite(x) && isfinite(l), "y %g: x %g, lad %g",
                          ys[i], x, l);
            ck_assert_msg(fabs(x) <= 3 || x == ys[i], "y %g: x %g", ys[i], x);
            tf_eval1(&c, 0, x, th, &yb, &lb);
            ck_assert_double_eq_tol(yb, ys[i], 1e-9 * (1 + fabs(ys[i])));
            tf_vjp1(&c, 1, ys[i], th, 1.0, 1.0, &gin, gth);
            ck_assert_msg(isfinite(gin), "y %g: dx %g", ys[i], gin);
            for (size_t j = 0; j < c.n_theta; j++)
                ck_assert_msg(isfinite(gth[j]), "y %g: dtheta[%zu] %g", ys[i],
                              j, gth[j]);
        }
    }
}
END_TEST

START_TEST(test_invalid_and_numeric)
{
    const flow_host *h = flow_host_services();
    flow_tf bad = kinds[2];
    flow_real x = 0.5f, y, l, th[32] = {0};
    bad.bins = TF_MAX_BINS + 1;
    ck_assert_uint_eq(h->tf_params(&bad), 0);
    ck_assert_int_eq(h->tf_forward(&bad, 1, &x, th, &y, &l), FLOW_ERR_INVAL);
    bad = kinds[2];
    bad.min_width = 0.2;                 /* 8 bins x 0.2 >= 1 */
    ck_assert_uint_eq(h->tf_params(&bad), 0);
    bad = kinds[2];
    bad.bound = -1;
    ck_assert_uint_eq(h->tf_params(&bad), 0);
    bad = kinds[2];
    bad.kind = (flow_tf_kind)9;
    ck_assert_uint_eq(h->tf_params(&bad), 0);
    ck_assert_uint_eq(h->tf_params(&kinds[2]), 3 * 8 - 1);
    ck_assert_uint_eq(h->tf_params(&kinds[0]), 2);
    ck_assert_uint_eq(h->tf_params(&kinds[1]), 1);
    ck_assert_uint_eq(h->tf_params(&kinds[3]), 2);
    /* a non-finite parameter is reported, not silently propagated */
    th[0] = (flow_real)NAN;
    ck_assert_int_eq(h->tf_forward(&kinds[2], 1, &x, th, &y, &l),
                     FLOW_ERR_NUMERIC);
    ck_assert_int_eq(h->tf_forward(&kinds[0], 1, &x, th, &y, &l),
                     FLOW_ERR_NUMERIC);
}
END_TEST

/* A scalar's result does not depend on its place in the batch or the
 * batch's length (the float affine path runs scalars in vector lanes, an
 * odd last one padded): every kind, forward, inverse and both VJPs, a
 * batch of 9 against 9 batches of 1, bit for bit; a NaN parameter in the
 * padded last place is still reported. */
START_TEST(test_batch_position)
{
    enum { M = 9 };
    const flow_tf *tf = &kinds[_i];
    const flow_host *h = flow_host_services();
    size_t p = h->tf_params(tf);
    flow_real th[M * 3 * TF_MAX_BINS], x[M], g[M], gl[M];
    flow_real y[M], l[M], dx[M], dth[M * 3 * TF_MAX_BINS];
    flow_rng r;
    rng_seed(&r, 90 + (uint64_t)_i);
    rand_theta(&r, th, M * p, 1.0);
    for (int i = 0; i < M; i++) {
        x[i] = (flow_real)(2 * rng_normal1(&r));
        g[i] = (flow_real)rng_normal1(&r);
        gl[i] = (flow_real)rng_normal1(&r);
    }
    for (int dir = 0; dir < 2; dir++) {
        ck_assert_int_eq((dir ? h->tf_inverse : h->tf_forward)(tf, M, x, th,
                                                               y, l),
                         FLOW_OK);
        ck_assert_int_eq(dir ? h->tf_inverse_backward(tf, M, x, NULL, th, g,
                                                      gl, dx, dth)
                             : h->tf_backward(tf, M, x, th, g, gl, dx, dth),
                         FLOW_OK);
        for (int i = 0; i < M; i++) {
            flow_real y1, l1, dx1, dth1[3 * TF_MAX_BINS];
            const flow_real *t1 = th + i * p;
            (dir ? h->tf_inverse : h->tf_forward)(tf, 1, &x[i], t1, &y1, &l1);
            if (dir)
                h->tf_inverse_backward(tf, 1, &x[i], NULL, t1, &g[i], &gl[i],
                                       &dx1, dth1);
            else
                h->tf_backward(tf, 1, &x[i], t1, &g[i], &gl[i], &dx1, dth1);
            ck_assert_msg(y1 == y[i] && l1 == l[i] && dx1 == dx[i],
                          "kind %d dir %d: scalar %d differs alone", tf->kind,
                          dir, i);
            for (size_t j = 0; j < p; j++)
                ck_assert_msg(dth1[j] == dth[i * p + j], "kind %d dir %d: "
                              "scalar %d dtheta[%zu] %.9g vs %.9g", tf->kind,
                              dir, i, j, (double)dth1[j],
                              (double)dth[i * p + j]);
        }
    }
    th[(M - 1) * p] = (flow_real)NAN;
    x[M - 1] = 0.5f;            /* inside the spline's bound */
    ck_assert_int_eq(h->tf_forward(tf, M, x, th, y, l), FLOW_ERR_NUMERIC);
}
END_TEST

/* The affine transformer on non-finite and huge values (the float path's
 * vectorised exp and tanh took a NaN to an integer conversion that
 * overflowed): infinite and huge log-scales saturate at +-C, an infinite
 * or NaN input goes through as itself, a NaN parameter or an overflowing
 * result is FLOW_ERR_NUMERIC with NaN / inf in its place.  Seven scalars:
 * the last goes through the float path's padded pair. */
START_TEST(test_affine_nonfinite)
{
    enum { M = 7 };
    const flow_host *h = flow_host_services();
    const double huge = FLOW_REAL_DOUBLE ? 1e308 : 3e38, C = TF_AFFINE_CLAMP;
    const double xs[M] = {1, 1, 1, 1, INFINITY, -INFINITY, NAN};
    const double ss[M] = {INFINITY, -INFINITY, huge, -huge, 0, 1, 0};
    const double tol = FLOW_REAL_DOUBLE ? 1e-14 : 4e-7;
    flow_real x[M], th[2 * M], y[M], l[M], back[M], lb[M];
    for (int i = 0; i < M; i++) {
        x[i] = (flow_real)xs[i];
        th[2 * i] = (flow_real)ss[i];
        th[2 * i + 1] = 0;
    }
    ck_assert_int_eq(h->tf_forward(&kinds[0], M, x, th, y, l), FLOW_OK);
    ck_assert_int_eq(h->tf_inverse(&kinds[0], M, y, th, back, lb), FLOW_OK);
    for (int i = 0; i < M; i++) {
        double lw = C * tanh(ss[i] / C), yw = xs[i] * exp(lw);
        ck_assert_double_eq_tol((double)l[i], lw, tol * C);
        ck_assert_double_eq_tol((double)lb[i], -lw, tol * C);
        if (isfinite(yw)) {
            ck_assert_double_eq_tol((double)y[i], yw, tol * fabs(yw));
            ck_assert_double_eq_tol((double)back[i], xs[i], 4 * tol);
        } else if (isnan(yw)) {
            ck_assert_msg(isnan((double)y[i]) && isnan((double)back[i]),
                          "scalar %d: %g, %g, expected NaN", i, (double)y[i],
                          (double)back[i]);
        } else {
            ck_assert_double_eq((double)y[i], yw);
            ck_assert_double_eq((double)back[i], yw);
        }
    }
    /* a NaN log-scale parameter (the last, padded scalar) and a finite
     * input that overflows (the first) are reported, NaN / inf in place */
    th[2 * (M - 1)] = (flow_real)NAN;
    x[M - 1] = 1;
    ck_assert_int_eq(h->tf_forward(&kinds[0], M, x, th, y, l),
                     FLOW_ERR_NUMERIC);
    ck_assert_msg(isnan((double)y[M - 1]) && isnan((double)l[M - 1]),
                  "NaN parameter: y %g, lad %g", (double)y[M - 1],
                  (double)l[M - 1]);
    ck_assert_int_eq(h->tf_inverse(&kinds[0], M, x, th, y, l),
                     FLOW_ERR_NUMERIC);
    ck_assert_msg(isnan((double)y[M - 1]), "NaN parameter: x %g",
                  (double)y[M - 1]);
    th[2 * (M - 1)] = 0;
    x[0] = (flow_real)huge;
    ck_assert_int_eq(h->tf_forward(&kinds[0], M, x, th, y, l),
                     FLOW_ERR_NUMERIC);
    ck_assert_double_eq((double)y[0], INFINITY);
    ck_assert_double_eq_tol((double)l[0], C, tol * C);
}
END_TEST

/* Glow's sigmoid scale, floored: l = log(m + (1 - m) sigma(s + 2))
 * against its closed form on both sides of a = 0, and at s = +-40 and
 * +-1e4 (saturation: the scale tends to 1 and to the floor m, so the
 * inverse stays finite) finite log-dets, round trips and VJPs, in double
 * through the core and in flow_real through the batch calls. */
START_TEST(test_sigmoid_scale)
{
    enum { M = 8 };
    const flow_tf *tf = &kinds[3];
    const flow_host *h = flow_host_services();
    const double ss[M] = {-40, -3, -2, 0, 1.5, 40, -1e4, 1e4};
    const double m = TF_SIGMOID_MIN;
    tf_cfg c;
    flow_real x[M], th[2 * M], y[M], l[M], back[M], lb[M], g[M], gl[M];
    flow_real dx[M], dth[2 * M];
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    ck_assert_uint_eq(c.n_theta, 2);
    for (int i = 0; i < M; i++) {
        double a = ss[i] + TF_SIGMOID_SHIFT, t = 0.25 * i - 1, xi = 1.5;
        double sc = m + (1 - m) / (1 + exp(-a)), lw = log(sc);
        double th2[2] = {ss[i], t}, yv, lv, xv, lbv, gin, gth[2];
        tf_eval1(&c, 0, xi, th2, &yv, &lv);
        ck_assert_double_eq_tol(lv, lw, 1e-15 * (1 + fabs(lw)));
        ck_assert_double_eq_tol(yv, xi * sc + t, 1e-15 * (1 + fabs(yv)));
        /* scale in (m, 1): m or 1 once rounded for |s| large */
        ck_assert_msg(lv >= log(m) && (lv < 0 || (ss[i] > 30 && lv == 0)),
                      "s %g: log scale %g outside (log %g, 0)", ss[i], lv, m);
        tf_eval1(&c, 1, yv, th2, &xv, &lbv);
        ck_assert_double_eq_tol(lbv, -lv, 1e-15 * (1 + fabs(lv)));
        /* (y - t) loses y's rounding of x scale: relative eps / scale */
        ck_assert_double_eq_tol(xv, xi, 4 * 2.2e-16 * (2 + fabs(t)) / sc);
        for (int dir = 0; dir < 2; dir++) {
            tf_vjp1(&c, dir, dir ? yv : xi, th2, 1.0, 1.0, &gin, gth);
            ck_assert_msg(isfinite(gin) && isfinite(gth[0]) &&
                          isfinite(gth[1]), "s %g dir %d: VJP %g, %g, %g",
                          ss[i], dir, gin, gth[0], gth[1]);
        }
        x[i] = (flow_real)xi;
        th[2 * i] = (flow_real)ss[i];
        th[2 * i + 1] = (flow_real)t;
        g[i] = 1;
        gl[i] = 1;
    }
    ck_assert_int_eq(h->tf_forward(tf, M, x, th, y, l), FLOW_OK);
    ck_assert_int_eq(h->tf_backward(tf, M, x, th, g, gl, dx, dth), FLOW_OK);
    ck_assert_int_eq(h->tf_inverse(tf, M, y, th, back, lb), FLOW_OK);
    ck_assert_int_eq(h->tf_inverse_backward(tf, M, y, back, th, g, gl, dx,
                                            dth), FLOW_OK);
    for (int i = 0; i < M; i++) {
        ck_assert_msg(isfinite((double)l[i]) && isfinite((double)y[i]) &&
                      isfinite((double)dx[i]), "s %g: y %g, lad %g, dx %g",
                      ss[i], (double)y[i], (double)l[i], (double)dx[i]);
        /* float: y's rounding (|y| < 2.5) amplified by 1 / scale */
        ck_assert_double_eq_tol((double)back[i], 1.5, 2 * REAL_EPS * 2.5 /
                                exp((double)l[i]) + RT_TOL);
    }
    ck_assert_double_eq_tol((double)l[6], log(m), 1e-6);
    ck_assert_double_eq_tol((double)l[7], 0, 1e-30);
}
END_TEST

#if !FLOW_REAL_DOUBLE
/* The float spline's lanes (runtime/transform_lanes.h) against the double
 * core rounded.  The lanes differ from the core only in exp, log1p and log
 * (polynomials accurate to an ulp or two of double), so their knots (the
 * cumulative sums of 2B w_j) differ by at most about 8 ulp(B) (the sum of
 * 2B w_j 2 eps over j, 2 eps per weight), taken twice: dk = 16 eps B.  An
 * output then differs by at most an ulp of float (the rounding of a
 * double that moved) plus dk (1 + slope), slope = exp(lad) being
 * dy/dx for the forward and dx/dy for the inverse; a log-det by an ulp of
 * float plus dk times the log-slope's sensitivity to a knot, at most
 * 1 / W + 1 / H through xi and s, both at least 2B min: 2 dk / (2B
 * min). */
#define LANE_DK (16 * 2.2204460492503131e-16 * 3.0)

static double ulpf(double v)
{
    float f = fabsf((float)v);
    return isfinite(f) ? (double)nextafterf(f, INFINITY) - f : 0;
}

/* parameters of one scalar, by kind: 0 N(0, 1); 1 N(0, 5^2) (near-empty
 * and near-full bins, derivatives near min_d and large); 2 N(0, 30^2)
 * (bins at the floors, derivatives up to 1e1); 3 a few logits at +-80
 * (softmax weights underflowing) */
static void lane_theta(flow_rng *r, int kind, float *th, size_t p)
{
    double sc = kind == 0 ? 1 : kind == 1 ? 5 : 30;
    for (size_t j = 0; j < p; j++)
        th[j] = (float)(sc * rng_normal1(r));
    if (kind == 3)
        for (size_t j = 0; j < p; j += 5)
            th[j] = (float)(rng_uniform(r) < 0.5 ? -80 : 80);
}

/* the knots x_k of the forward (dir 0) or y_k (dir 1), as make_knots */
static void lane_knots(const tf_cfg *c, const float *th, int dir,
                       double *q)
{
    const size_t K = c->bins;
    const double *mn = dir ? &c->min_h : &c->min_w;
    double mx = -INFINITY, sum = 0, e[TF_MAX_BINS];
    const float *v = th + (dir ? K : 0);
    for (size_t j = 0; j < K; j++)
        mx = fmax(mx, v[j]);
    for (size_t j = 0; j < K; j++)
        sum += e[j] = exp(v[j] - mx);
    q[0] = -c->bound;
    for (size_t j = 0; j < K; j++)
        q[j + 1] = q[j] + 2 * c->bound * (*mn + (1 - (double)K * *mn) *
                                          e[j] / sum);
}

/* bin counts beside the default 8 (one parameter group of 2, 8, 50 and
 * 383: the transposes' partial blocks); loop index _i >= 8 of the lanes
 * tests: dir + 2 * the count's index, parameters of kind 1 */
static const size_t lane_bins[4] = {1, 3, 17, TF_MAX_BINS};

static flow_tf lane_tf(int i)
{
    flow_tf t = kinds[2];
    if (i >= 8)
        t.bins = lane_bins[(i - 8) / 2];
    return t;
}

/* loop index: dir (0, 1) + 2 * parameter kind (0..3), then other bin
 * counts */
START_TEST(test_spline_lanes_core)
{
    enum { M = 1203 };                     /* not a multiple of 8 */
    const flow_tf tfv = lane_tf(_i), *tf = &tfv;
    const int dir = _i % 2, kind = _i < 8 ? _i / 2 : 1;
    tf_cfg c;
    static float th[M * 3 * TF_MAX_BINS];
    float in[M], out[M], lad[M], out2[M], lad2[M];
    double thd[3 * TF_MAX_BINS], q[TF_MAX_BINS + 1], worst = 0;
    flow_rng r;
    size_t p;
    rng_seed(&r, 300 + (uint64_t)_i);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    p = c.n_theta;
    for (int i = 0; i < M; i++) {
        lane_theta(&r, kind, th + i * p, p);
        in[i] = (float)(3.6 * (2 * rng_uniform(&r) - 1));
        if (i % 4 == 1) {                /* at a knot and beside it */
            lane_knots(&c, th + i * p, dir, q);
            in[i] = (float)q[(size_t)i % (c.bins + 1)];
            if (i % 8 == 5)
                in[i] = nextafterf(in[i], (i % 16) < 8 ? 10.0f : -10.0f);
        }
    }
    in[0] = 3.0f;                         /* the bound, just outside */
    in[2] = -3.0f;
    in[4] = nextafterf(3.0f, 10.0f);
    in[6] = nextafterf(-3.0f, 0.0f);
    ck_assert_int_eq((dir ? tf_inverse : tf_forward)(tf, M, in, th, out,
                                                     lad), FLOW_OK);
    for (int i = 0; i < M; i++) {
        double o, l, to, tl;
        for (size_t j = 0; j < p; j++)
            thd[j] = th[i * p + j];
        ck_assert_int_eq(tf_eval1(&c, dir, in[i], thd, &o, &l), FLOW_OK);
        to = ulpf(o) + LANE_DK * (1 + exp(l));
        tl = ulpf(l) + 2 * LANE_DK / (2 * c.bound * c.min_w);
        ck_assert_msg(fabs(out[i] - o) <= to && fabs(lad[i] - l) <= tl,
                      "dir %d kind %d i %d: in %.9g out %.9g vs core %.17g,"
                      " lad %.9g vs %.17g", dir, kind, i, (double)in[i],
                      (double)out[i], o, (double)lad[i], l);
        worst = fmax(worst, fmax(fabs(out[i] - o) / to,
                                 fabs(lad[i] - l) / tl));
        if (fabs(in[i]) > 3)
            ck_assert_msg(out[i] == in[i] && lad[i] == 0,
                          "tail i %d: %.9g -> %.9g, lad %g", i,
                          (double)in[i], (double)out[i], (double)lad[i]);
    }
    ck_assert_double_le(worst, 1.0);
    /* the 2-lane path: the same bits, for every tail length */
    ck_assert_int_eq(tf_lanes(2), 2);
    for (int m = M - 17; m <= M; m++) {
        ck_assert_int_eq((dir ? tf_inverse : tf_forward)(tf, (size_t)m, in,
                                                         th, out2, lad2),
                         FLOW_OK);
        ck_assert_int_eq(memcmp(out, out2, (size_t)m * sizeof *out), 0);
        ck_assert_int_eq(memcmp(lad, lad2, (size_t)m * sizeof *lad), 0);
    }
    tf_lanes(0);
}
END_TEST

/* The spline's VJP lanes against the double core (tf_vjp1), each entry
 * within an ulp of float of the core's plus the knots' difference
 * carried through the partials: those are rational in the knots with
 * denominators down to the smallest bin (2B min), dk / (2B min)^2 = 4e-10
 * of the row's largest gradient (a margin of 2.5 in 1e-9).  Loop index
 * as test_spline_lanes_core's. */
START_TEST(test_spline_lanes_vjp)
{
    enum { M = 1203 };
    const flow_tf tfv = lane_tf(_i), *tf = &tfv;
    const int dir = _i % 2, kind = _i < 8 ? _i / 2 : 1;
    tf_cfg c;
    static float th[M * 3 * TF_MAX_BINS], gt[M * 3 * TF_MAX_BINS],
        gt2[M * 3 * TF_MAX_BINS];
    float in[M], g[M], gl[M], gi[M], gi2[M], xs[M];
    double thd[3 * TF_MAX_BINS], gtd[3 * TF_MAX_BINS], worst = 0;
    flow_rng r;
    size_t p;
    rng_seed(&r, 500 + (uint64_t)_i);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    p = c.n_theta;
    for (int i = 0; i < M; i++) {
        lane_theta(&r, kind, th + i * p, p);
        in[i] = (float)(3.6 * (2 * rng_uniform(&r) - 1));
        g[i] = (float)rng_normal1(&r);
        gl[i] = (float)rng_normal1(&r);
    }
    in[0] = 3.0f;
    in[2] = nextafterf(-3.0f, -10.0f);
    ck_assert_int_eq(dir ? tf_inverse_backward(tf, M, in, NULL, th, g, gl,
                                               gi, gt)
                         : tf_backward(tf, M, in, th, g, gl, gi, gt),
                     FLOW_OK);
    for (int i = 0; i < M; i++) {
        double gid, sc, tol;
        for (size_t j = 0; j < p; j++)
            thd[j] = th[i * p + j];
        ck_assert_int_eq(tf_vjp1(&c, dir, in[i], thd, g[i], gl[i], &gid,
                                 gtd), FLOW_OK);
        sc = fabs(gid);
        for (size_t j = 0; j < p; j++)
            sc = fmax(sc, fabs(gtd[j]));
        tol = 1e-9 * sc;
        ck_assert_msg(fabs(gi[i] - gid) <= ulpf(gid) + tol,
                      "dir %d kind %d i %d: dL/din %.9g vs %.17g", dir, kind,
                      i, (double)gi[i], gid);
        worst = fmax(worst, fabs(gi[i] - gid) / (ulpf(gid) + tol));
        for (size_t j = 0; j < p; j++) {
            double e = fabs(gt[i * p + j] - gtd[j]);
            ck_assert_msg(e <= ulpf(gtd[j]) + tol,
                          "dir %d kind %d i %d: dL/dtheta[%zu] %.9g vs "
                          "%.17g", dir, kind, i, j, (double)gt[i * p + j],
                          gtd[j]);
            worst = fmax(worst, e / (ulpf(gtd[j]) + tol));
        }
    }
    ck_assert_double_le(worst, 1.0);
    /* the 2-lane path: the same bits, with and without the inverse */
    if (dir)
        ck_assert_int_eq(tf_inverse(tf, M, in, th, xs, NULL), FLOW_OK);
    for (int w = 0; w < 2; w++)
        for (int m = M - 9; m <= M; m++) {
            const float *xh = w ? xs : NULL;
            if (w && !dir)
                break;
            tf_lanes(0);
            ck_assert_int_eq(dir ? tf_inverse_backward(tf, (size_t)m, in, xh,
                                                       th, g, gl, gi, gt)
                                 : tf_backward(tf, (size_t)m, in, th, g, gl,
                                               gi, gt), FLOW_OK);
            ck_assert_int_eq(tf_lanes(2), 2);
            ck_assert_int_eq(dir ? tf_inverse_backward(tf, (size_t)m, in, xh,
                                                       th, g, gl, gi2, gt2)
                                 : tf_backward(tf, (size_t)m, in, th, g, gl,
                                               gi2, gt2), FLOW_OK);
            ck_assert_int_eq(memcmp(gi, gi2, (size_t)m * sizeof *gi), 0);
            ck_assert_int_eq(memcmp(gt, gt2, (size_t)m * p * sizeof *gt), 0);
        }
    tf_lanes(0);
}
END_TEST

/* Non-finite parameters: FLOW_ERR_NUMERIC exactly when the scalar path
 * gives it (a finite input inside the bound with a non-finite result);
 * the other scalars of the group keep their values; inputs outside stay
 * the identity. */
START_TEST(test_spline_lanes_nonfinite)
{
    enum { M = 21 };
    const flow_tf *tf = &kinds[2];
    tf_cfg c;
    float th[M * 3 * 8], in[M], out[M], lad[M];
    double thd[3 * 8];
    flow_rng r;
    size_t p;
    rng_seed(&r, 77);
    ck_assert_int_eq(tf_resolve(tf, &c), FLOW_OK);
    p = c.n_theta;
    for (int dir = 0; dir < 2; dir++)
        for (int bad = 0; bad < 4; bad++) {
            int want = FLOW_OK;
            for (int i = 0; i < M; i++) {
                lane_theta(&r, 0, th + i * p, p);
                in[i] = (float)(2.9 * (2 * rng_uniform(&r) - 1));
            }
            /* row 3: a NaN or +inf width logit, +inf derivative params,
             * or a NaN input (not flagged: not finite) */
            if (bad == 0)
                th[3 * p + 2] = NAN;
            else if (bad == 1)
                th[3 * p + 1] = INFINITY;
            else if (bad == 2)
                for (size_t j = 2 * 8; j < p; j++)
                    th[3 * p + j] = INFINITY;
            else
                in[3] = NAN;
            th[9 * p] = NAN;               /* row 9: outside, unflagged */
            in[9] = 5.0f;
            for (int i = 0; i < M; i++) {
                double o, l;
                for (size_t j = 0; j < p; j++)
                    thd[j] = th[i * p + j];
                tf_eval1(&c, dir, in[i], thd, &o, &l);
                if (isfinite(in[i]) && !(isfinite(o) && isfinite(l)))
                    want = FLOW_ERR_NUMERIC;
            }
            ck_assert_int_eq((dir ? tf_inverse : tf_forward)(tf, M, in, th,
                                                             out, lad),
                             want);
            ck_assert_int_eq(want, bad < 3 ? FLOW_ERR_NUMERIC : FLOW_OK);
            ck_assert_msg(out[9] == 5.0f && lad[9] == 0, "out %g lad %g",
                          (double)out[9], (double)lad[9]);
            {
                /* in place (out = in), the rejected row redone from its
                 * input: the same values */
                float io[M];
                memcpy(io, in, sizeof io);
                ck_assert_int_eq((dir ? tf_inverse : tf_forward)(
                                     tf, M, io, th, io, lad), want);
                for (int i = 0; i < M; i++)
                    ck_assert_msg(io[i] == out[i] ||
                                  (isnan(io[i]) && isnan(out[i])),
                                  "in place i %d: %g vs %g", i,
                                  (double)io[i], (double)out[i]);
            }
            for (int i = 0; i < M; i++)
                if (i != 3 && i != 9) {
                    double o, l;
                    for (size_t j = 0; j < p; j++)
                        thd[j] = th[i * p + j];
                    tf_eval1(&c, dir, in[i], thd, &o, &l);
                    ck_assert_msg(fabs(out[i] - o) <= ulpf(o) + LANE_DK *
                                  (1 + exp(l)), "bad %d i %d: %.9g vs %.9g",
                                  bad, i, (double)out[i], o);
                }
        }
}
END_TEST

/* The affine kinds: the 8-lane path's bits are the 2-lane path's */
START_TEST(test_affine_lanes_bits)
{
    enum { M = 203 };
    const flow_tf *tf = &kinds[_i ? 3 : 0];
    float th[2 * M], in[M], g[M], gl[M], o[2][M], l[2][M], gi[2][M];
    float gt[2][2 * M];
    flow_rng r;
    rng_seed(&r, 91 + (uint64_t)_i);
    for (int i = 0; i < M; i++) {
        th[2 * i] = (float)(4 * rng_normal1(&r));
        th[2 * i + 1] = (float)rng_normal1(&r);
        in[i] = (float)(3 * rng_normal1(&r));
        g[i] = (float)rng_normal1(&r);
        gl[i] = (float)rng_normal1(&r);
    }
    for (int dir = 0; dir < 2; dir++)
        for (int m = M - 9; m <= M; m++) {
            for (int w = 0; w < 2; w++) {
                tf_lanes(w ? 2 : 0);
                ck_assert_int_eq((dir ? tf_inverse : tf_forward)(
                                     tf, (size_t)m, in, th, o[w], l[w]),
                                 FLOW_OK);
                ck_assert_int_eq(
                    dir ? tf_inverse_backward(tf, (size_t)m, in, NULL, th, g,
                                              gl, gi[w], gt[w])
                        : tf_backward(tf, (size_t)m, in, th, g, gl, gi[w],
                                      gt[w]), FLOW_OK);
            }
            tf_lanes(0);
            ck_assert_int_eq(memcmp(o[0], o[1], (size_t)m * 4), 0);
            ck_assert_int_eq(memcmp(l[0], l[1], (size_t)m * 4), 0);
            ck_assert_int_eq(memcmp(gi[0], gi[1], (size_t)m * 4), 0);
            ck_assert_int_eq(memcmp(gt[0], gt[1], (size_t)m * 8), 0);
        }
}
END_TEST
#endif

Suite *suite_transform(void)
{
    Suite *s = suite_create("transform");
    TCase *tc = tcase_create("round_trip");
    tcase_add_loop_test(tc, test_round_trip, 0, 2 * NKINDS);
    suite_add_tcase(s, tc);
    /* a row's result does not depend on its place in the batch */
    tc = tcase_create("batch");
    tcase_add_loop_test(tc, test_batch_position, 0, NKINDS);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_add_loop_test(tc, test_logdet_fd, 0, NKINDS);
    tcase_add_loop_test(tc, test_vjp_fd, 0, 2 * NKINDS);
    suite_add_tcase(s, tc);
    tc = tcase_create("spline");
    tcase_add_test(tc, test_spline_monotone_and_identity);
    tcase_add_test(tc, test_spline_robust);
    suite_add_tcase(s, tc);
    tc = tcase_create("sigmoid");
    tcase_add_test(tc, test_sigmoid_scale);
    suite_add_tcase(s, tc);
#if !FLOW_REAL_DOUBLE
    tc = tcase_create("lanes");
    tcase_add_loop_test(tc, test_spline_lanes_core, 0, 16);
    tcase_add_loop_test(tc, test_spline_lanes_vjp, 0, 16);
    tcase_add_test(tc, test_spline_lanes_nonfinite);
    tcase_add_loop_test(tc, test_affine_lanes_bits, 0, 2);
    suite_add_tcase(s, tc);
#endif
    tc = tcase_create("errors");
    tcase_add_test(tc, test_invalid_and_numeric);
    tcase_add_test(tc, test_affine_nonfinite);
    suite_add_tcase(s, tc);
    return s;
}
