/* test_ode.c - the ode layer beyond the generic conformance checks: both
 * solvers on dz/dt = -a z against the closed form (solutions and gradients
 * in z0, a, t1, t0), the exact trace and its VJP against finite
 * differences, Hutchinson estimates unbiased, adjoint against backprop
 * gradients, function-evaluation counts, and describe/run-time errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
#include "../plugins/ode_dyn.h"
#include "../plugins/ode_solver.h"
#include "../runtime/rng.h"
#include "suites.h"

#if FLOW_REAL_DOUBLE
# define SOLVE_TOL 1e-12        /* agreement with an exact discrete form */
# define FD_H 1e-5
# define FD_TOL 1e-7
# define GRAD_TOL 1e-6          /* adjoint vs backprop, tight solvers */
#else
# define SOLVE_TOL 2e-6
# define FD_H 1e-2
# define FD_TOL 2e-3
# define GRAD_TOL 2e-3
#endif

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

static void *ws_alloc(size_t bytes)
{
    void *p = NULL;
    ck_assert_int_eq(posix_memalign(&p, 64, bytes ? bytes : 64), 0);
    return p;
}

/* ---------------------------------------------------------------------
 * The scalar test system dz/dt = -a z + b cos(t) on m independent
 * components; the parameter is a (gp has one entry).
 * ------------------------------------------------------------------- */
typedef struct lin {
    double a, b;
    size_t m;
} lin;

static int lin_f(void *env, double t, const flow_real *y, flow_real *dy)
{
    const lin *L = env;
    for (size_t i = 0; i < L->m; i++)
        dy[i] = (flow_real)(-L->a * y[i] + L->b * cos(t));
    return FLOW_OK;
}

static int lin_vjp(void *env, double t, const flow_real *y,
                   const flow_real *w, flow_real *fy, flow_real *gy,
                   flow_real *gp, double *gt)
{
    const lin *L = env;
    double ga = 0, g_t = 0;
    for (size_t i = 0; i < L->m; i++) {
        gy[i] = (flow_real)(-L->a * w[i]);
        ga -= (double)y[i] * w[i];
        g_t -= L->b * sin(t) * w[i];
        if (fy)
            fy[i] = (flow_real)(-L->a * y[i] + L->b * cos(t));
    }
    gp[0] = (flow_real)(gp[0] + ga);
    if (gt)
        *gt += g_t;
    return FLOW_OK;
}

static ode_sys lin_sys(lin *L)
{
    ode_sys s = {L->m, 1, L, lin_f, lin_vjp, NULL};
    return s;
}

static ode_opts rk4_opts(size_t steps)
{
    ode_opts o = {ODE_RK4, steps, 0, 0, 0};
    return o;
}

static ode_opts dopri5_opts(double tol, size_t max_steps)
{
    ode_opts o = {ODE_DOPRI5, 0, tol, tol, max_steps};
    return o;
}

/* solves the linear system; y holds y(ta) in, y(tb) out */
static int lin_solve(lin *L, const ode_opts *o, double ta, double tb,
                     flow_real *y, ode_stats *st)
{
    ode_sys s = lin_sys(L);
    void *ws = ws_alloc(ode_ws_solve(o, L->m));
    char err[256] = "";
    int rc;
    memset(st, 0, sizeof *st);
    rc = ode_solve(&s, o, ta, tb, y, ws, NULL, st, err, sizeof err);
    free(ws);
    ck_assert_msg(rc == FLOW_OK, "%s", err);
    return rc;
}

/* RK4's stability function R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24: one step
 * of RK4 on y' = -a y multiplies by R(-a h) exactly. */
static double rk4_R(double z)
{
    return 1 + z + z * z / 2 + z * z * z / 6 + z * z * z * z / 24;
}

static double rk4_dR(double z)
{
    return 1 + z + z * z / 2 + z * z * z / 6;
}

START_TEST(test_rk4_linear)
{
    const double a = 1.3, t0 = 0.2, t1 = 1.7, y0[3] = {1, -2, 0.5};
    double err[2];
    for (int lv = 0; lv < 2; lv++) {
        size_t n = lv ? 40 : 20;
        lin L = {a, 0, 3};
        ode_opts o = rk4_opts(n);
        ode_stats st;
        flow_real y[3];
        double R = pow(rk4_R(-a * (t1 - t0) / (double)n), (double)n);
        for (int i = 0; i < 3; i++)
            y[i] = (flow_real)y0[i];
        lin_solve(&L, &o, t0, t1, y, &st);
        ck_assert_uint_eq(st.nfe, 4 * n);
        ck_assert_uint_eq(st.steps, n);
        err[lv] = 0;
        for (int i = 0; i < 3; i++) {
            /* the discrete map exactly, and the closed form to O(h^4) */
            ck_assert_double_eq_tol(y[i], R * y0[i], SOLVE_TOL);
            err[lv] = fmax(err[lv], fabs(y[i] - y0[i] * exp(-a * (t1 - t0))));
        }
    }
    /* fourth order: halving h divides the error by 2^4 */
    ck_assert_double_lt(err[0], 2e-5);
    if (FLOW_REAL_DOUBLE) {
        ck_assert_double_gt(err[0] / err[1], 14);
        ck_assert_double_lt(err[0] / err[1], 18);
    }
}
END_TEST

START_TEST(test_dopri5_linear)
{
    const double tols[] = {1e-4, 1e-6, FLOW_REAL_DOUBLE ? 1e-10 : 1e-7};
    size_t prev_steps = 0;
    double prev_err = INFINITY;
    for (size_t q = 0; q < 3; q++) {
        lin L = {1.3, 0, 2};
        ode_opts o = dopri5_opts(tols[q], 1000);
        ode_stats st;
        flow_real y[2] = {1, -2};
        double e = 0;
        lin_solve(&L, &o, 0.5, -1.0, y, &st);      /* backwards in time */
        for (int i = 0; i < 2; i++)
            e = fmax(e, fabs(y[i] / (i ? -2.0 : 1.0) - exp(1.3 * 1.5)));
        /* relative error within a small multiple of the tolerance */
        ck_assert_msg(e < 20 * tols[q] + 4 * TEST_EPS, "tol %g: error %g",
                      tols[q], e);
        /* first same as last: 2 evaluations to start, 6 per attempt */
        ck_assert_uint_eq(st.nfe, 2 + 6 * (st.steps + st.rejected));
        ck_assert_uint_gt(st.steps, prev_steps);
        ck_assert_double_le(e, prev_err);
        prev_steps = st.steps;
        prev_err = e;
    }
    {
        /* a fast transient: the first steps are rejected, the solution
         * still meets the tolerance */
        lin L = {40, 0, 1};
        ode_opts o = dopri5_opts(1e-5, 1000);
        ode_stats st;
        flow_real y[1] = {1};
        lin_solve(&L, &o, 0, 1, y, &st);
        ck_assert_double_eq_tol(y[0], exp(-40.0), 1e-5);
        ck_assert_uint_gt(st.rejected, 0);
        ck_assert_uint_eq(st.nfe, 2 + 6 * (st.steps + st.rejected));
    }
}
END_TEST

/* Gradients of L = sum_i w_i y_i(t1) by one method; gp[0] = dL/da. */
static void lin_grads(lin *L, const ode_opts *o, int adjoint, double t0,
                      double t1, const flow_real *y0, const flow_real *w,
                      flow_real *dy0, double *da, double *dt0, double *dt1,
                      flow_real *y1, ode_stats *st)
{
    ode_sys s = lin_sys(L);
    size_t m = L->m;
    void *ws = ws_alloc(ode_ws_solve(o, m) + ode_ws_backprop(o, m)
                        + ode_ws_adjoint(o, m, 1));
    void *tws = ws_alloc(ode_ws_tape(o, m));
    char err[256] = "";
    ode_tape tape;
    flow_real gp[1] = {0};
    int rc;
    memset(st, 0, sizeof *st);
    memcpy(y1, y0, m * sizeof *y1);
    ode_tape_carve(o, m, tws, &tape);
    rc = ode_solve(&s, o, t0, t1, y1, ws, adjoint ? NULL : &tape, st, err,
                   sizeof err);
    ck_assert_msg(rc == FLOW_OK, "%s", err);
    memcpy(dy0, w, m * sizeof *dy0);
    if (adjoint) {
        flow_real *yr = malloc(m * sizeof *yr);
        memcpy(yr, y1, m * sizeof *yr);
        rc = ode_adjoint(&s, o, t0, t1, yr, dy0, gp, dt0, dt1, ws, st, err,
                         sizeof err);
        /* the backward solve reconstructs y(t0) */
        for (size_t i = 0; rc == FLOW_OK && i < m; i++)
            ck_assert_double_eq_tol(yr[i], y0[i], 1e-4);
        free(yr);
    } else {
        rc = ode_backprop(&s, o, t0, t1, &tape, y1, dy0, gp, dt0, dt1, ws,
                          st, err, sizeof err);
    }
    ck_assert_msg(rc == FLOW_OK, "%s", err);
    *da = gp[0];
    free(ws);
    free(tws);
}

/* relative agreement */
static void near(const char *what, double got, double want, double tol)
{
    ck_assert_msg(fabs(got - want) <= tol * fmax(1.0, fabs(want)),
                  "%s: got %.12g, want %.12g (tol %g)", what, got, want, tol);
}

START_TEST(test_gradients_linear)
{
    const double a = 0.9, t0 = 0.1, t1 = 1.3, T = t1 - t0;
    const flow_real y0[2] = {(flow_real)1.5, (flow_real)-0.7};
    const flow_real w[2] = {(flow_real)0.8, (flow_real)-1.1};
    double Lexact = 0;
    for (int i = 0; i < 2; i++)
        Lexact += w[i] * y0[i] * exp(-a * T);
    for (int method = 0; method < 4; method++) {
        int adjoint = method & 1, dp = method >> 1;
        size_t N = 24;
        ode_opts o = dp ? dopri5_opts(FLOW_REAL_DOUBLE ? 1e-11 : 1e-7, 1000)
                        : rk4_opts(N);
        /* solver error of each method, relative */
        double tol = dp ? (FLOW_REAL_DOUBLE ? 1e-8 : 1e-5)
                        : (FLOW_REAL_DOUBLE ? 5e-7 : 2e-5);
        lin L = {a, 0, 2};
        flow_real dy0[2], y1[2];
        double da, dt0, dt1;
        ode_stats st;
        char what[64];
        lin_grads(&L, &o, adjoint, t0, t1, y0, w, dy0, &da, &dt0, &dt1, y1,
                  &st);
        /* closed form: y(t1) = y0 exp(-a (t1 - t0)) */
        for (int i = 0; i < 2; i++) {
            snprintf(what, sizeof what, "method %d: dL/dz0[%d]", method, i);
            near(what, dy0[i], w[i] * exp(-a * T), tol);
        }
        snprintf(what, sizeof what, "method %d: dL/da", method);
        near(what, da, -T * Lexact, tol);
        snprintf(what, sizeof what, "method %d: dL/dt1", method);
        near(what, dt1, -a * Lexact, tol);
        snprintf(what, sizeof what, "method %d: dL/dt0", method);
        near(what, dt0, a * Lexact, tol);
        if (!dp && !adjoint) {
            /* backprop is the exact derivative of the discrete map
             * y_N = R(-a h)^N y0, h = (t1 - t0) / N */
            double h = T / (double)N, z = -a * h;
            double RN = pow(rk4_R(z), (double)N);
            double dRN = (double)N * pow(rk4_R(z), (double)N - 1) * rk4_dR(z);
            double S = 0;
            for (int i = 0; i < 2; i++) {
                S += w[i] * y0[i];
                near("rk4 backprop dL/dz0", dy0[i], w[i] * RN, SOLVE_TOL);
            }
            near("rk4 backprop dL/da", da, dRN * -h * S, SOLVE_TOL);
            near("rk4 backprop dL/dt1", dt1, dRN * -a / (double)N * S,
                 SOLVE_TOL);
            near("rk4 backprop dL/dt0", dt0, dRN * a / (double)N * S,
                 SOLVE_TOL);
            /* 4 VJPs per step */
            ck_assert_uint_eq(st.nfe, 4 * N + 4 * N);
        }
    }
}
END_TEST

/* dz/dt = -a z + cos(t): time enters f, so dL/dt0 and dL/dt1 need the
 * stage times (backprop) or the end points' f (adjoint); both against
 * central differences of the solve itself. */
START_TEST(test_time_gradients)
{
    const flow_real y0[1] = {(flow_real)0.6}, w[1] = {1};
    const double t0 = 0.3, t1 = 2.1, h = FLOW_REAL_DOUBLE ? 1e-5 : 1e-2;
    for (int method = 0; method < 4; method++) {
        int adjoint = method & 1, dp = method >> 1;
        ode_opts o = dp ? dopri5_opts(FLOW_REAL_DOUBLE ? 1e-11 : 1e-7, 1000)
                        : rk4_opts(30);
        double tol = FLOW_REAL_DOUBLE ? (adjoint || dp ? 1e-7 : 1e-8) : 5e-3;
        lin L = {0.7, 1, 1};
        flow_real dy0[1], y1[1], yp[1], ym[1];
        double da, dt0, dt1, fd1, fd0;
        ode_stats st;
        lin_grads(&L, &o, adjoint, t0, t1, y0, w, dy0, &da, &dt0, &dt1, y1,
                  &st);
        yp[0] = ym[0] = y0[0];
        lin_solve(&L, &o, t0, t1 + h, yp, &st);
        lin_solve(&L, &o, t0, t1 - h, ym, &st);
        fd1 = ((double)yp[0] - ym[0]) / (2 * h);
        yp[0] = ym[0] = y0[0];
        lin_solve(&L, &o, t0 + h, t1, yp, &st);
        lin_solve(&L, &o, t0 - h, t1, ym, &st);
        fd0 = ((double)yp[0] - ym[0]) / (2 * h);
        near(adjoint ? "adjoint dL/dt1" : "backprop dL/dt1", dt1, fd1, tol);
        near(adjoint ? "adjoint dL/dt0" : "backprop dL/dt0", dt0, fd0, tol);
        /* and the exact values: dL/dt1 = f(t1, y1), dL/dt0 = -w.J f(t0) */
        near("dL/dt1 = f(t1, y(t1))", dt1, -0.7 * y1[0] + cos(t1),
             FLOW_REAL_DOUBLE ? 1e-6 : 1e-3);
    }
}
END_TEST

/* ---------------------------------------------------------------------
 * The dynamics: a host MLP on [z | context] with time conditioning.
 * ------------------------------------------------------------------- */
typedef struct dyn_fix {
    const flow_host *h;
    flow_net *net;
    flow_real *params, *ctxv, *eps;
    ode_dyn e;
    ode_sys s;
    void *ws;
    flow_call c;
    char err[256];
    size_t n, d, k, np;
} dyn_fix;

static void dyn_open(dyn_fix *F, size_t n, size_t d, size_t k,
                     flow_time_mode time, flow_activation act, uint64_t seed)
{
    static const size_t hidden[2] = {16, 12};
    flow_net_spec spec;
    flow_rng rng;
    memset(F, 0, sizeof *F);
    F->h = flow_host_services();
    F->n = n;
    F->d = d;
    F->k = k;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.kind = FLOW_NET_MLP;
    spec.in = d + k;
    spec.out = d;
    spec.n_hidden = 2;
    spec.hidden = hidden;
    spec.act = act;
    spec.time = time;
    F->net = F->h->net_create(&spec, F->err, sizeof F->err);
    ck_assert_msg(F->net != NULL, "%s", F->err);
    F->np = F->h->net_params(F->net);
    F->params = calloc(F->np, sizeof *F->params);
    F->ctxv = calloc(n * k + 1, sizeof *F->ctxv);
    F->eps = calloc(n * d, sizeof *F->eps);
    rng_seed(&rng, seed);
    F->h->net_init(F->net, F->params, &rng);
    for (size_t i = 0; i < F->np; i++)
        F->params[i] = (flow_real)(F->params[i] + 0.3 * rng_normal1(&rng));
    for (size_t i = 0; i < n * k; i++)
        F->ctxv[i] = (flow_real)rng_normal1(&rng);
    F->ws = ws_alloc(ode_dyn_ws(F->h, F->net, n, d, k));
    F->c.struct_size = sizeof F->c;
    F->c.host = F->h;
    F->c.err = F->err;
    F->c.err_cap = sizeof F->err;
    F->e.host = F->h;
    F->e.net = F->net;
    F->e.params = F->params;
    F->e.n = n;
    F->e.d = d;
    F->e.k = k;
    F->e.np = F->np;
    F->e.ctx = k ? F->ctxv : NULL;
    F->e.c = &F->c;
    ode_dyn_carve(&F->e, F->ws);
    ode_dyn_sys(&F->e, &F->s);
}

static void dyn_close(dyn_fix *F)
{
    F->h->net_destroy(F->net);
    free(F->params);
    free(F->ctxv);
    free(F->eps);
    free(F->ws);
}

static void draw(flow_real *v, size_t n, double scale, uint64_t seed)
{
    flow_rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        v[i] = (flow_real)(scale * rng_normal1(&r));
}

/* f and the trace column at (t, y) */
static void dyn_eval(dyn_fix *F, double t, const flow_real *y, flow_real *dy)
{
    ck_assert_msg(F->s.f(F->s.env, t, y, dy) == FLOW_OK, "%s", F->err);
}

START_TEST(test_exact_trace_vs_fd)
{
    static const struct {
        size_t d, k;
        flow_time_mode time;
        flow_activation act;
    } cases[] = {
        {2, 0, FLOW_TIME_CONCAT, FLOW_ACT_TANH},
        {3, 2, FLOW_TIME_CONCATSQUASH, FLOW_ACT_SOFTPLUS},
        {4, 1, FLOW_TIME_CONCATSQUASH, FLOW_ACT_TANH},
    };
    for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) {
        enum { N = 3 };
        size_t d = cases[q].d, m = N * (d + 1);
        dyn_fix F;
        flow_real *y = calloc(m, sizeof *y), *dy = calloc(m, sizeof *dy);
        flow_real *yp = calloc(m, sizeof *yp), *fp = calloc(m, sizeof *fp);
        flow_real *fm = calloc(m, sizeof *fm);
        dyn_open(&F, N, d, cases[q].k, cases[q].time, cases[q].act, 5 + q);
        draw(y, N * d, 1.2, 40 + q);
        dyn_eval(&F, 0.37, y, dy);
        for (size_t r = 0; r < N; r++) {
            double tr = 0;
            for (size_t j = 0; j < d; j++) {
                /* central difference of f_j in z_j, the others fixed */
                memcpy(yp, y, m * sizeof *yp);
                yp[r * d + j] = (flow_real)(y[r * d + j] + FD_H);
                dyn_eval(&F, 0.37, yp, fp);
                yp[r * d + j] = (flow_real)(y[r * d + j] - FD_H);
                dyn_eval(&F, 0.37, yp, fm);
                tr += ((double)fp[r * d + j] - fm[r * d + j]) / (2 * FD_H);
            }
            ck_assert_msg(fabs(dy[N * d + r] - tr)
                          <= FD_TOL * fmax(1, fabs(tr)),
                          "case %zu row %zu: trace %.10g, FD %.10g", q, r,
                          (double)dy[N * d + r], tr);
        }
        dyn_close(&F);
        free(y);
        free(dy);
        free(yp);
        free(fp);
        free(fm);
    }
}
END_TEST

/* The VJP of [f | tr] (what both gradient methods use) against central
 * differences of w . [f | tr] in the state, the context and parameters. */
START_TEST(test_dynamics_vjp_vs_fd)
{
    enum { N = 2, D = 3, K = 2 };
    size_t m = N * (D + 1);
    dyn_fix F;
    flow_real y[N * (D + 1)], w[N * (D + 1)], gy[N * (D + 1)], f[N * (D + 1)];
    flow_real fy[N * (D + 1)], *gp;
    double worst = 0;
    dyn_open(&F, N, D, K, FLOW_TIME_CONCATSQUASH, FLOW_ACT_TANH, 3);
    gp = calloc(F.s.np, sizeof *gp);
    draw(y, m, 1.0, 8);
    draw(w, m, 1.0, 9);
    ck_assert_int_eq(F.s.vjp(F.s.env, 0.61, y, w, fy, gy, gp, NULL), FLOW_OK);
    dyn_eval(&F, 0.61, y, f);
    /* fy is f itself */
    for (size_t i = 0; i < m; i++)
        ck_assert_double_eq_tol(fy[i], f[i], 10 * TEST_EPS);
    /* nothing depends on the log-det column */
    for (size_t r = 0; r < N; r++)
        ck_assert_double_eq(gy[N * D + r], 0);
    for (size_t v = 0; v < N * D + F.np + N * K; v += (v < N * D ? 1 : 7)) {
        flow_real *slot = v < N * D ? &y[v]
                          : v < N * D + F.np ? &F.params[v - N * D]
                                             : &F.ctxv[v - N * D - F.np];
        double an = v < N * D ? gy[v] : gp[v - N * D], fd, s[2];
        flow_real keep = *slot;
        for (int sg = 0; sg < 2; sg++) {
            *slot = (flow_real)(keep + (sg ? -FD_H : FD_H));
            dyn_eval(&F, 0.61, y, f);
            s[sg] = 0;
            for (size_t i = 0; i < m; i++)
                s[sg] += (double)w[i] * f[i];
        }
        *slot = keep;
        fd = (s[0] - s[1]) / (2 * FD_H);
        worst = fmax(worst, fabs(an - fd) / fmax(1, fabs(fd)));
    }
    ck_assert_msg(worst <= FD_TOL * 5, "VJP vs FD: worst relative error %g",
                  worst);
    free(gp);
    dyn_close(&F);
}
END_TEST

/* Hutchinson (1990): E[e^T A e] = tr A for probes with E[e e^T] = I.  The
 * mean over many probes lies within 4 standard errors of the exact trace
 * (a biased estimator, e.g. one that skipped the e^T, fails at once). */
START_TEST(test_hutchinson_unbiased_dynamics)
{
    enum { N = 2, D = 4, PROBES = 3000 };
    size_t m = N * (D + 1);
    dyn_fix F;
    flow_real y[N * (D + 1)], dy[N * (D + 1)], exact[N];
    flow_rng rng;
    dyn_open(&F, N, D, 0, FLOW_TIME_CONCATSQUASH, FLOW_ACT_TANH, 12);
    draw(y, m, 1.0, 13);
    dyn_eval(&F, 0.2, y, dy);
    memcpy(exact, dy + N * D, sizeof exact);
    rng_seed(&rng, 99);
    for (int noise = 0; noise < 2; noise++) {
        double s1[N] = {0}, s2[N] = {0};
        F.e.eps = F.eps;
        for (int p = 0; p < PROBES; p++) {
            if (noise)
                rng_normal(&rng, F.eps, N * D);
            else
                rng_rademacher(&rng, F.eps, N * D);
            dyn_eval(&F, 0.2, y, dy);
            for (size_t r = 0; r < N; r++) {
                s1[r] += dy[N * D + r];
                s2[r] += (double)dy[N * D + r] * dy[N * D + r];
            }
        }
        for (size_t r = 0; r < N; r++) {
            double mean = s1[r] / PROBES;
            double sd = sqrt(fmax(0, s2[r] / PROBES - mean * mean));
            double se = sd / sqrt((double)PROBES);
            ck_assert_double_gt(sd, 1e-3);  /* really an estimate */
            ck_assert_msg(fabs(mean - exact[r]) < 4 * se, "noise %d row %zu: "
                          "mean %g, exact %g, se %g", noise, r, mean,
                          (double)exact[r], se);
        }
        F.e.eps = NULL;
    }
    {
        /* Rademacher probes: the average over all 2^D sign patterns is the
         * trace exactly (the cross terms e_i e_j cancel), so any scale or
         * index error shows beyond rounding */
        double s1[N] = {0};
        F.e.eps = F.eps;
        for (unsigned pat = 0; pat < 1u << D; pat++) {
            for (size_t r = 0; r < N; r++)
                for (size_t j = 0; j < D; j++)
                    F.eps[r * D + j] = (pat >> j) & 1 ? 1 : -1;
            dyn_eval(&F, 0.2, y, dy);
            for (size_t r = 0; r < N; r++)
                s1[r] += dy[N * D + r];
        }
        for (size_t r = 0; r < N; r++)
            ck_assert_double_eq_tol(s1[r] / (1u << D), exact[r],
                                    10 * TEST_EPS);
        F.e.eps = NULL;
    }
    dyn_close(&F);
}
END_TEST

/* ---------------------------------------------------------------------
 * The layer through its type table.
 * ------------------------------------------------------------------- */
typedef struct ode_set {
    int dopri5;
    size_t steps, max_steps;
    double tol;
    int hutch, gaussian, in_eval, backprop, act, concat;
    double t0, t1;
} ode_set;

static ode_set set_default(void)
{
    ode_set s = {0, 8, 1000, 1e-8, 0, 0, 0, 0, 2, 0, 0, 1};
    return s;
}

/* resolved attributes in the table order of plugins/ode.c */
typedef struct ode_cfg {
    flow_attr_value v[9], solver[3], hut[2];
    int64_t hidden[2];
} ode_cfg;

static void ode_config(ode_cfg *a, const ode_set *s)
{
    memset(a, 0, sizeof *a);
    a->hidden[0] = 16;
    a->hidden[1] = 16;
    a->v[0].type = FLOW_ATTR_INT_LIST;
    a->v[0].ilist = a->hidden;
    a->v[0].n = 2;
    a->v[1].type = FLOW_ATTR_ENUM;
    a->v[1].i = s->act;
    a->v[1].s = s->act == 0 ? "relu" : s->act == 1 ? "leaky_relu" : "tanh";
    a->v[2].type = FLOW_ATTR_ENUM;
    a->v[2].i = s->concat ? 0 : 1;
    a->v[3].type = FLOW_ATTR_VARIANT;
    a->v[3].i = s->dopri5;
    a->v[3].sub = a->solver;
    if (s->dopri5) {
        a->solver[0].type = a->solver[1].type = FLOW_ATTR_REAL;
        a->solver[0].r = a->solver[1].r = s->tol;
        a->solver[2].type = FLOW_ATTR_INT;
        a->solver[2].i = (int64_t)s->max_steps;
    } else {
        a->solver[0].type = FLOW_ATTR_INT;
        a->solver[0].i = (int64_t)s->steps;
    }
    a->v[4].type = FLOW_ATTR_VARIANT;
    a->v[4].i = s->hutch;
    a->v[4].sub = s->hutch ? a->hut : NULL;
    a->hut[0].type = FLOW_ATTR_ENUM;
    a->hut[0].i = s->gaussian;
    a->hut[1].type = FLOW_ATTR_BOOL;
    a->hut[1].i = s->in_eval;
    a->v[5].type = FLOW_ATTR_ENUM;
    a->v[5].i = s->backprop;
    a->v[6].type = a->v[7].type = FLOW_ATTR_REAL;
    a->v[6].r = s->t0;
    a->v[7].r = s->t1;
    a->v[8].type = FLOW_ATTR_BOOL;
}

typedef struct lay {
    const flow_layer_type *t;
    void *self;
    ode_cfg a;
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t dep[16];
    size_t n, d, k;
    flow_real *params, *grad, *ctxv, *dctx;
    void *ws;
    flow_rng rng;
    char err[512];
} lay;

static const flow_layer_type *ode_type(void)
{
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, "ode", &file);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* describe() of a setting on D = 2; the status, diag filled */
static int describe(const ode_set *s, flow_layer_desc *desc, flow_diag *dg)
{
    const flow_layer_type *t = ode_type();
    static int32_t dep[2];
    flow_layer_config cfg;
    ode_cfg a;
    ode_config(&a, s);
    memset(&cfg, 0, sizeof cfg);
    cfg.struct_size = sizeof cfg;
    cfg.dim = 2;
    cfg.attrs = a.v;
    cfg.host = flow_host_services();
    memset(desc, 0, sizeof *desc);
    desc->struct_size = sizeof *desc;
    desc->dep_vec = dep;
    memset(dg, 0, sizeof *dg);
    dg->struct_size = sizeof *dg;
    dg->attr = -1;
    return t->describe(&cfg, desc, dg);
}

static void lay_open(lay *L, const ode_set *s, size_t n, size_t d, size_t k,
                     uint64_t seed)
{
    flow_diag dg;
    flow_call c;
    memset(L, 0, sizeof *L);
    L->t = ode_type();
    ode_config(&L->a, s);
    L->n = n;
    L->d = d;
    L->k = k;
    L->cfg.struct_size = sizeof L->cfg;
    L->cfg.name = "ode#0";
    L->cfg.dim = d;
    L->cfg.context_dim = k;
    L->cfg.attrs = L->a.v;
    L->cfg.host = flow_host_services();
    L->desc.struct_size = sizeof L->desc;
    L->desc.dep_vec = L->dep;
    memset(&dg, 0, sizeof dg);
    dg.struct_size = sizeof dg;
    ck_assert_msg(L->t->describe(&L->cfg, &L->desc, &dg) == FLOW_OK, "%s",
                  dg.message);
    L->self = L->t->create(flow_host_services(), &L->cfg, &dg);
    ck_assert_msg(L->self != NULL, "%s", dg.message);
    L->params = calloc(L->desc.n_params, sizeof *L->params);
    L->grad = calloc(L->desc.n_params, sizeof *L->grad);
    L->ctxv = calloc(n * k + 1, sizeof *L->ctxv);
    L->dctx = calloc(n * k + 1, sizeof *L->dctx);
    L->ws = ws_alloc(L->t->workspace(L->self, n, 0) > L->t->workspace(
                         L->self, n, 1) ? L->t->workspace(L->self, n, 0)
                                        : L->t->workspace(L->self, n, 1));
    rng_seed(&L->rng, seed);
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.host = flow_host_services();
    c.rng = &L->rng;
    ck_assert_int_eq(L->t->init(L->self, &c, L->params), FLOW_OK);
    for (size_t i = 0; i < L->desc.n_params; i++)
        L->params[i] = (flow_real)(L->params[i] + 0.3 * rng_normal1(&L->rng));
    for (size_t i = 0; i < n * k; i++)
        L->ctxv[i] = (flow_real)rng_normal1(&L->rng);
}

static void lay_call(lay *L, flow_call *c, int training, int grads)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->host = flow_host_services();
    c->n = L->n;
    c->dim = L->d;
    c->context_dim = L->k;
    c->params = L->params;
    c->grad = grads ? L->grad : NULL;
    c->ctx = L->k ? L->ctxv : NULL;
    c->dctx = grads && L->k ? L->dctx : NULL;
    c->ws = L->ws;
    c->ws_bytes = L->t->workspace(L->self, L->n, 0);
    c->rng = &L->rng;
    c->training = training;
    c->err = L->err;
    c->err_cap = sizeof L->err;
}

/* prepare + forward (dir 0) or inverse (dir 1); the status */
static int lay_run(lay *L, int dir, int training, const flow_real *in,
                   flow_real *out, flow_real *ld)
{
    flow_call c;
    lay_call(L, &c, training, 0);
    ck_assert_int_eq(L->t->prepare(L->self, &c), FLOW_OK);
    L->err[0] = '\0';
    return dir ? L->t->inverse(L->self, &c, in, out, ld)
               : L->t->forward(L->self, &c, in, out, ld);
}

static int lay_back(lay *L, int dir, const flow_real *in,
                    const flow_real *out, const flow_real *dout,
                    const flow_real *dld, flow_real *din)
{
    flow_call c;
    lay_call(L, &c, 1, 1);
    memset(L->grad, 0, L->desc.n_params * sizeof *L->grad);
    if (L->k)
        memset(L->dctx, 0, L->n * L->k * sizeof *L->dctx);
    return dir ? L->t->inverse_backward(L->self, &c, in, out, dout, dld, din)
               : L->t->forward_backward(L->self, &c, in, out, dout, dld, din);
}

static void lay_close(lay *L)
{
    L->t->destroy(L->self);
    free(L->params);
    free(L->grad);
    free(L->ctxv);
    free(L->dctx);
    free(L->ws);
}

/* Per-row log-det estimates of the whole layer in training mode: unbiased
 * for RK4's exact-trace log-det (the estimate is linear in e e^T at every
 * stage and the state path does not depend on e); in evaluation the layer
 * uses the exact trace and gives it bit for bit. */
START_TEST(test_hutchinson_unbiased_layer)
{
    enum { N = 3, D = 3, CALLS = 1500 };
    for (int noise = 0; noise < 2; noise++) {
        ode_set s = set_default();
        lay L;
        flow_real x[N * D], z[N * D], ex[N], ld[N], zx[N * D];
        double s1[N] = {0}, s2[N] = {0};
        s.steps = 4;
        s.hutch = 1;
        s.gaussian = noise;
        lay_open(&L, &s, N, D, 0, 77 + noise);
        ck_assert_uint_ne(L.desc.flags & FLOW_LAYER_STOCHASTIC, 0);
        ck_assert_int_eq(L.desc.logdet_exact, 1);
        draw(x, N * D, 1.0, 5);
        ck_assert_int_eq(lay_run(&L, 0, 0, x, zx, ex), FLOW_OK);
        for (int p = 0; p < CALLS; p++) {
            ck_assert_int_eq(lay_run(&L, 0, 1, x, z, ld), FLOW_OK);
            /* the map itself does not depend on the probes */
            ck_assert_mem_eq(z, zx, sizeof z);
            for (size_t r = 0; r < N; r++) {
                s1[r] += ld[r];
                s2[r] += (double)ld[r] * ld[r];
            }
        }
        for (size_t r = 0; r < N; r++) {
            double mean = s1[r] / CALLS;
            double se = sqrt(fmax(0, s2[r] / CALLS - mean * mean) / CALLS);
            ck_assert_double_gt(se, 1e-4);
            ck_assert_msg(fabs(mean - ex[r]) < 4 * se, "noise %d row %zu: "
                          "mean %g, exact %g, se %g", noise, r, mean,
                          (double)ex[r], se);
        }
        lay_close(&L);
    }
    {
        /* in_eval = true: evaluation estimates too, and says so */
        ode_set s = set_default();
        flow_layer_desc desc;
        flow_diag dg;
        s.hutch = 1;
        s.in_eval = 1;
        ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_OK);
        ck_assert_int_eq(desc.logdet_exact, 0);
    }
}
END_TEST

/* Training with Hutchinson probes: the backward pass reuses the forward's
 * probes (kept in the workspace).  With the stream reseeded before every
 * forward, the estimated log-det is a fixed function, and backprop's
 * gradients (inputs, parameters, context) match its central differences;
 * the adjoint matches backprop. */
START_TEST(test_hutchinson_gradients)
{
    enum { N = 3, D = 3, K = 1 };
    flow_real x[N * D], z[N * D], ld[N], dz[N * D], dld[N], dx[2][N * D];
    flow_real *gp[2];
    double worst = 0, wadj = 0, scale = 0;
    lay L[2];
    draw(x, N * D, 1.2, 3);
    draw(dz, N * D, 1.0, 4);
    draw(dld, N, 1.0, 5);
    for (int g = 0; g < 2; g++) {
        ode_set s = set_default();
        s.hutch = 1;
        s.gaussian = 1;
        s.steps = 24;
        s.backprop = !g;
        lay_open(&L[g], &s, N, D, K, 41);
        rng_seed(&L[g].rng, 5);
        ck_assert_int_eq(lay_run(&L[g], 0, 1, x, z, ld), FLOW_OK);
        ck_assert_msg(lay_back(&L[g], 0, x, z, dz, dld, dx[g]) == FLOW_OK,
                      "%s", L[g].err);
        gp[g] = L[g].grad;
    }
    /* backprop (L[0]) against central differences with the same probes */
    for (size_t v = 0; v < N * D + 40; v++) {
        flow_real *slot = v < N * D ? &x[v] : &L[0].params[(v - N * D) * 7];
        double an = v < N * D ? dx[0][v] : gp[0][(v - N * D) * 7], s2[2];
        flow_real keep = *slot;
        for (int sg = 0; sg < 2; sg++) {
            *slot = (flow_real)(keep + (sg ? -FD_H : FD_H));
            rng_seed(&L[0].rng, 5);
            ck_assert_int_eq(lay_run(&L[0], 0, 1, x, z, ld), FLOW_OK);
            s2[sg] = 0;
            for (size_t i = 0; i < N * D; i++)
                s2[sg] += (double)dz[i] * z[i];
            for (size_t r = 0; r < N; r++)
                s2[sg] += (double)dld[r] * ld[r];
        }
        *slot = keep;
        worst = fmax(worst, fabs(an - (s2[0] - s2[1]) / (2 * FD_H))
                                / fmax(1, fabs(an)));
    }
    ck_assert_msg(worst <= 5 * FD_TOL, "Hutchinson backprop vs FD: %g",
                  worst);
    for (size_t i = 0; i < N * D; i++) {
        scale = fmax(scale, fabs(dx[0][i]));
        wadj = fmax(wadj, fabs(dx[0][i] - dx[1][i]));
    }
    for (size_t i = 0; i < L[0].desc.n_params; i++) {
        scale = fmax(scale, fabs(gp[0][i]));
        wadj = fmax(wadj, fabs(gp[0][i] - gp[1][i]));
    }
    for (size_t i = 0; i < N * K; i++)
        wadj = fmax(wadj, fabs(L[0].dctx[i] - L[1].dctx[i]));
    ck_assert_msg(wadj <= (FLOW_REAL_DOUBLE ? 1e-5 : 2e-3) * scale,
                  "Hutchinson adjoint vs backprop: %g (scale %g)", wadj,
                  scale);
    lay_close(&L[0]);
    lay_close(&L[1]);
}
END_TEST

/* Adjoint against backprop on one layer with context, both directions:
 * input, parameter and context gradients agree within solver tolerance
 * (dopri5, tight), and within RK4's O(h^4) for fixed steps. */
START_TEST(test_adjoint_matches_backprop)
{
    enum { N = 4, D = 2, K = 2 };
    for (int solver = 0; solver < 2; solver++)
        for (int dir = 0; dir < 2; dir++) {
            lay L[2];
            flow_real x[N * D], y[2][N * D], ld[2][N], dy[N * D], dld[N];
            flow_real dx[2][N * D], *gp[2], *gc[2];
            size_t np;
            double worst = 0, scale = 0;
            double tol = solver ? GRAD_TOL : (FLOW_REAL_DOUBLE ? 1e-5 : 2e-3);
            for (int g = 0; g < 2; g++) {
                ode_set s = set_default();
                s.dopri5 = solver;
                s.steps = 16;
                s.tol = FLOW_REAL_DOUBLE ? 1e-10 : 1e-6;
                s.backprop = g;
                s.t1 = 0.8;
                lay_open(&L[g], &s, N, D, K, 31);   /* same parameters */
                draw(x, N * D, 1.3, 4);
                draw(dy, N * D, 1.0, 6);
                draw(dld, N, 1.0, 7);
                ck_assert_int_eq(lay_run(&L[g], dir, 1, x, y[g], ld[g]),
                                 FLOW_OK);
                ck_assert_msg(lay_back(&L[g], dir, x, y[g], dy, dld, dx[g])
                              == FLOW_OK, "%s", L[g].err);
                gp[g] = L[g].grad;
                gc[g] = L[g].dctx;
            }
            np = L[0].desc.n_params;
            ck_assert_uint_eq(np, L[1].desc.n_params);
            ck_assert_mem_eq(L[0].params, L[1].params, np * sizeof(flow_real));
            for (size_t i = 0; i < N * D; i++)
                scale = fmax(scale, fabs(dx[1][i]));
            for (size_t i = 0; i < np; i++)
                scale = fmax(scale, fabs(gp[1][i]));
            for (size_t i = 0; i < N * D; i++)
                worst = fmax(worst, fabs(dx[0][i] - dx[1][i]));
            for (size_t i = 0; i < np; i++)
                worst = fmax(worst, fabs(gp[0][i] - gp[1][i]));
            for (size_t i = 0; i < N * K; i++)
                worst = fmax(worst, fabs(gc[0][i] - gc[1][i]));
            ck_assert_double_gt(scale, 0.1);
            ck_assert_msg(worst <= tol * scale, "solver %d dir %d: adjoint vs "
                          "backprop differ by %g (scale %g)", solver, dir,
                          worst, scale);
            lay_close(&L[0]);
            lay_close(&L[1]);
        }
}
END_TEST

/* The adaptive layer against a fine fixed-step reference (RK4, 2000
 * steps) on lively dynamics: state and log-det within 20 tolerances
 * (measured 0.4 in float64, 3 in float32); a step control that accepted
 * 1000x larger errors fails by far. */
START_TEST(test_dopri5_layer_accuracy)
{
    enum { N = 5, D = 2 };
    flow_real x[N * D], z[2][N * D], ld[2][N];
    double tol = FLOW_REAL_DOUBLE ? 1e-8 : 1e-5, e = 0, el = 0;
    draw(x, N * D, 1.5, 8);
    for (int g = 0; g < 2; g++) {
        ode_set s = set_default();
        lay L;
        s.dopri5 = g;
        s.steps = 2000;
        s.tol = tol;
        s.t1 = 3;
        lay_open(&L, &s, N, D, 0, 17);
        for (size_t i = 0; i < L.desc.n_params; i++)
            L.params[i] *= 2;           /* livelier dynamics */
        ck_assert_int_eq(lay_run(&L, 0, 0, x, z[g], ld[g]), FLOW_OK);
        lay_close(&L);
    }
    for (size_t i = 0; i < N * D; i++)
        e = fmax(e, fabs(z[1][i] - z[0][i]) / fmax(1, fabs(z[0][i])));
    for (size_t r = 0; r < N; r++)
        el = fmax(el, fabs(ld[1][r] - ld[0][r]) / fmax(1, fabs(ld[0][r])));
    ck_assert_msg(e < 20 * tol && el < 20 * tol, "dopri5 at tol %g: state "
                  "error %g, log-det error %g", tol, e, el);
    ck_assert_double_gt(fabs(ld[0][0]), 1e-2);   /* a real log-det */
}
END_TEST

START_TEST(test_nfe_counted)
{
    enum { N = 3, D = 2 };
    flow_real x[N * D], z[N * D], ld[N], dz[N * D], dld[N], dx[N * D];
    const flow_layer_type *t = ode_type();
    ck_assert_str_eq(t->stat_name, "nfe");
    draw(x, N * D, 1.0, 2);
    draw(dz, N * D, 1.0, 3);
    draw(dld, N, 1.0, 4);
    for (int g = 0; g < 2; g++) {
        ode_set s = set_default();
        lay L;
        s.steps = 5;
        s.backprop = g;
        lay_open(&L, &s, N, D, 0, 9);
        ck_assert_int_eq(lay_run(&L, 0, 1, x, z, ld), FLOW_OK);
        ck_assert_double_eq(t->stat(L.self), 20);
        ck_assert_int_eq(lay_back(&L, 0, x, z, dz, dld, dx), FLOW_OK);
        /* backprop: 4 VJPs per step; adjoint: 4 augmented evaluations */
        ck_assert_double_eq(t->stat(L.self), 40);
        /* prepare() starts a new batch */
        ck_assert_int_eq(lay_run(&L, 1, 0, z, x, ld), FLOW_OK);
        ck_assert_double_eq(t->stat(L.self), 20);
        lay_close(&L);
    }
    {
        ode_set s = set_default();
        lay L;
        double nfe;
        s.dopri5 = 1;
        s.tol = 1e-6;
        lay_open(&L, &s, N, D, 0, 9);
        ck_assert_int_eq(lay_run(&L, 0, 0, x, z, ld), FLOW_OK);
        nfe = t->stat(L.self);
        /* 2 to start, then 6 per step attempt */
        ck_assert_double_gt(nfe, 7);
        ck_assert_double_eq(fmod(nfe - 2, 6), 0);
        lay_close(&L);
    }
}
END_TEST

/* The model-level count (flow_model_nfe, flow_model_layer_stat): per
 * batch, the same with 1 and 2 threads (row chunks of a split batch count
 * once), forward 4 steps for RK4, doubled by a training step's backward;
 * dopri5's grows with a tighter tolerance. */
static flow_model *nfe_model(const char *solver, flow_compilation **comp)
{
    char src[512];
    flow_model *m = NULL;
    snprintf(src, sizeof src, "flow f { input x : real[2]; ode(hidden = "
             "[8, 8], time = concat, solver = %s, gradient = backprop); "
             "output z ~ normal; }", solver);
    *comp = flow_compile_string(ctx, "nfe.flow", src, strlen(src));
    ck_assert_ptr_nonnull(*comp);
    ck_assert_uint_eq(flow_compile_errors(*comp), 0);
    ck_assert_msg(flow_graph_build_model(ctx, flow_compile_graph(*comp), 3,
                                         &m) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    return m;
}

START_TEST(test_model_nfe)
{
    enum { N = 128 };
    flow_real x[N * 2], lp[N];
    double nfe[2];
    const char *name;
    double v;
    draw(x, N * 2, 1.0, 21);
    for (size_t th = 1; th <= 2; th++) {
        flow_compilation *comp;
        flow_model *m = nfe_model("rk4(steps = 10)", &comp);
        flow_real *g = malloc(flow_model_num_params(m) * sizeof *g);
        double mean;
        ck_assert_int_eq(flow_model_set_threads(m, th), FLOW_OK);
        ck_assert_double_eq(flow_model_nfe(m), 0);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp), FLOW_OK);
        ck_assert_double_eq(flow_model_nfe(m), 40);
        ck_assert_int_eq(flow_model_layer_stat(m, 0, &name, &v), 1);
        ck_assert_str_eq(name, "nfe");
        ck_assert_double_eq(v, 40);
        ck_assert_int_eq(flow_model_layer_stat(m, 1, &name, &v), 0);
        flow_model_set_training(m, 1);
        ck_assert_int_eq(flow_model_loglik_grad(m, N, x, NULL, &mean, g),
                         FLOW_OK);
        /* 40 evaluations forward, 40 stage VJPs backward */
        ck_assert_double_eq(flow_model_nfe(m), 80);
        free(g);
        flow_model_free(m);
        flow_compile_free(comp);
    }
    for (int i = 0; i < 2; i++) {
        flow_compilation *comp;
        flow_model *m = nfe_model(i ? "dopri5(rtol = 1e-7, atol = 1e-7)"
                                    : "dopri5(rtol = 1e-3, atol = 1e-3)",
                                  &comp);
        ck_assert_int_eq(flow_model_log_prob(m, N, x, NULL, lp), FLOW_OK);
        nfe[i] = flow_model_nfe(m);
        ck_assert_double_eq(fmod(nfe[i] - 2, 6), 0);
        flow_model_free(m);
        flow_compile_free(comp);
    }
    ck_assert_msg(nfe[1] > nfe[0] + 6, "dopri5 nfe %g (rtol 1e-7) vs %g "
                  "(1e-3)", nfe[1], nfe[0]);
    {
        /* no ode layer: no count */
        flow_compilation *comp = flow_compile_string(ctx, "c.flow",
            "flow c { input x : real[2]; coupling(mask = parity(0), "
            "hidden = [4]); output z ~ normal; }", (size_t)90);
        flow_model *m = NULL;
        ck_assert_uint_eq(flow_compile_errors(comp), 0);
        ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(comp),
                                                1, &m), FLOW_OK);
        ck_assert_double_eq(flow_model_nfe(m), -1);
        ck_assert_int_eq(flow_model_layer_stat(m, 0, &name, &v), 0);
        flow_model_free(m);
        flow_compile_free(comp);
    }
}
END_TEST

START_TEST(test_describe)
{
    flow_layer_desc desc;
    flow_diag dg;
    ode_set s = set_default();
    s.steps = 7;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_OK);
    ck_assert_int_eq(desc.jac, FLOW_JAC_ODE);
    ck_assert_int_eq(desc.dep, FLOW_DEP_DENSE);
    ck_assert_int_eq(desc.cert, FLOW_CERT_ODE);
    ck_assert_double_eq(desc.cert_value, 0);
    ck_assert_str_eq(desc.cert_text, "rk4 fixed steps, exact trace");
    ck_assert_uint_eq(desc.cost_forward.passes, 28);
    ck_assert_int_eq(desc.cost_forward.sequential, 1);
    ck_assert_uint_eq(desc.cost_inverse.passes, 28);
    ck_assert_int_eq(desc.logdet_exact, 1);
    ck_assert_uint_eq(desc.flags, FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
                      | FLOW_LAYER_BACKWARD_FORWARD
                      | FLOW_LAYER_BACKWARD_INVERSE);
    /* D = 2, hidden [16, 16], concatsquash: (2*16+16+3*16) + (16*16+16+3*16)
     * + (16*2+2+3*2) */
    ck_assert_uint_eq(desc.n_params, 96 + 320 + 40);
    s.dopri5 = 1;
    s.tol = 3e-6;
    s.hutch = 1;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_OK);
    ck_assert_double_eq(desc.cert_value, 3e-6);
    ck_assert_str_eq(desc.cert_text, "dopri5 adaptive steps, Hutchinson "
                     "trace in training");
    ck_assert_uint_ne(desc.flags & FLOW_LAYER_WHOLE_BATCH, 0);
    ck_assert_uint_ne(desc.flags & FLOW_LAYER_STOCHASTIC, 0);

    s = set_default();
    s.act = 0;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_ERR_INVAL);
    ck_assert_int_eq(dg.attr, 1);
    ck_assert_str_eq(dg.message, "activation 'relu' is not smooth: ODE "
                     "dynamics need a Lipschitz, continuously differentiable "
                     "vector field (unique solutions, error control, and the "
                     "exact trace's gradient uses f'')");
    ck_assert_str_eq(dg.help, "use tanh, softplus or elu");
    s.act = 1;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_ERR_INVAL);
    ck_assert_msg(strstr(dg.message, "activation 'leaky_relu' is not smooth"),
                  "%s", dg.message);

    s = set_default();
    s.t0 = s.t1 = 0.5;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_ERR_INVAL);
    ck_assert_int_eq(dg.attr, 7);
    ck_assert_str_eq(dg.message, "t1 = t0 = 0.5: the integration interval "
                     "is empty");
    ck_assert_str_eq(dg.help, "give an interval of non-zero length, e.g. "
                     "t0 = 0, t1 = 1");

    s = set_default();
    s.dopri5 = 1;
    s.tol = 0;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_ERR_INVAL);
    ck_assert_int_eq(dg.attr, 3);
    ck_assert_str_eq(dg.message, "dopri5: rtol and atol must be > 0, got "
                     "rtol = 0, atol = 0");

    s = set_default();
    s.steps = 0;
    ck_assert_int_eq(describe(&s, &desc, &dg), FLOW_ERR_INVAL);
    ck_assert_str_eq(dg.message, "rk4: steps must be >= 1, got 0");
}
END_TEST

START_TEST(test_runtime_errors)
{
    enum { N = 2, D = 2 };
    flow_real x[N * D], z[N * D], ld[N], dz[N * D] = {0}, dld[N] = {0};
    flow_real dx[N * D];
    ode_set s = set_default();
    lay L;
    draw(x, N * D, 1.0, 1);
    /* backward with no forward on the workspace */
    lay_open(&L, &s, N, D, 0, 3);
    memset(L.ws, 0, 64);
    ck_assert_int_ne(lay_back(&L, 0, x, z, dz, dld, dx), FLOW_OK);
    ck_assert_str_eq(L.err, "backward without a matching forward on this "
                     "workspace");
    /* ... or after the other direction */
    ck_assert_int_eq(lay_run(&L, 1, 0, x, z, ld), FLOW_OK);
    ck_assert_int_ne(lay_back(&L, 0, x, z, dz, dld, dx), FLOW_OK);
    /* a non-finite input */
    x[1] = (flow_real)NAN;
    ck_assert_int_eq(lay_run(&L, 0, 0, x, z, ld), FLOW_ERR_NUMERIC);
    ck_assert_str_eq(L.err, "non-finite initial state");
    lay_close(&L);
    /* dopri5 out of step attempts */
    draw(x, N * D, 1.0, 1);
    s.dopri5 = 1;
    s.tol = 1e-9;
    s.max_steps = 3;
    lay_open(&L, &s, N, D, 0, 3);
    ck_assert_int_eq(lay_run(&L, 0, 0, x, z, ld), FLOW_ERR_NUMERIC);
    ck_assert_msg(strstr(L.err, "dopri5: no solution within max_steps = 3 "
                         "step attempts (") == L.err, "%s", L.err);
    ck_assert_msg(strstr(L.err, "raise max_steps or loosen rtol/atol"), "%s",
                  L.err);
    lay_close(&L);
}
END_TEST

Suite *suite_ode(void)
{
    Suite *s = suite_create("ode");
    TCase *tc = tcase_create("solver");
    tcase_add_test(tc, test_rk4_linear);
    tcase_add_test(tc, test_dopri5_linear);
    tcase_add_test(tc, test_gradients_linear);
    tcase_add_test(tc, test_time_gradients);
    suite_add_tcase(s, tc);
    tc = tcase_create("layer_gradients");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_exact_trace_vs_fd);
    tcase_add_test(tc, test_dynamics_vjp_vs_fd);
    tcase_add_test(tc, test_adjoint_matches_backprop);
    suite_add_tcase(s, tc);
    tc = tcase_create("hutchinson");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_hutchinson_unbiased_dynamics);
    tcase_add_test(tc, test_hutchinson_unbiased_layer);
    tcase_add_test(tc, test_hutchinson_gradients);
    suite_add_tcase(s, tc);
    tc = tcase_create("layer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_dopri5_layer_accuracy);
    tcase_add_test(tc, test_nfe_counted);
    tcase_add_test(tc, test_model_nfe);
    tcase_add_test(tc, test_describe);
    tcase_add_test(tc, test_runtime_errors);
    suite_add_tcase(s, tc);
    return s;
}
