/* test_residual.c - the residual layer beyond the generic conformance
 * checks: series and Russian-roulette log-det estimates (and their
 * gradients) are unbiased for the exact values, the fixed-point inverse
 * fails loudly, and the Lipschitz certificate refuses a non-contraction. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "../runtime/rng.h"
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

void res_attrs_make(res_attrs *r, int act, double coeff, int mode, double a,
                    int b, double tol, int iters)
{
    memset(r, 0, sizeof *r);
    r->hidden[0] = 16;
    r->hidden[1] = 16;
    r->v[0].type = FLOW_ATTR_INT_LIST;
    r->v[0].ilist = r->hidden;
    r->v[0].n = 2;
    r->v[1].type = FLOW_ATTR_ENUM;
    r->v[1].i = act;
    r->v[2].type = FLOW_ATTR_REAL;
    r->v[2].r = coeff;
    r->v[3].type = FLOW_ATTR_VARIANT;
    r->v[3].i = mode;
    r->v[3].sub = mode ? r->sub : NULL;
    if (mode == 1) {
        r->sub[0].type = FLOW_ATTR_INT;
        r->sub[0].i = (int64_t)a;
    } else if (mode == 2) {
        r->sub[0].type = FLOW_ATTR_REAL;
        r->sub[0].r = a;
        r->sub[1].type = FLOW_ATTR_INT;
        r->sub[1].i = b;
    }
    r->v[4].type = FLOW_ATTR_ENUM;      /* probe: rademacher */
    r->v[5].type = FLOW_ATTR_REAL;
    r->v[5].r = tol;
    r->v[6].type = FLOW_ATTR_INT;
    r->v[6].i = iters;
}

/* --- a layer driven through the plugin ABI directly -------------------- */

typedef struct rl {
    const flow_layer_type *t;
    void *self;
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t dep[16];
    size_t d, n;
    flow_real *params, *grad;
    void *ws;
    flow_rng rng;
    char err[512];
} rl;

static void rl_open(rl *L, const res_attrs *a, size_t d, size_t n)
{
    flow_diag diag;
    flow_call c;
    memset(L, 0, sizeof *L);
    L->t = flow_layer_type_find(ctx, "residual", NULL);
    ck_assert_ptr_nonnull(L->t);
    L->d = d;
    L->n = n;
    L->cfg.struct_size = sizeof L->cfg;
    L->cfg.name = "residual";
    L->cfg.dim = d;
    L->cfg.attrs = a->v;
    L->cfg.host = flow_host_services();
    L->desc.struct_size = sizeof L->desc;
    L->desc.dep_vec = L->dep;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    ck_assert_msg(L->t->describe(&L->cfg, &L->desc, &diag) == FLOW_OK, "%s",
                  diag.message);
    L->self = L->t->create(flow_host_services(), &L->cfg, &diag);
    ck_assert_msg(L->self != NULL, "%s", diag.message);
    L->params = calloc(L->desc.n_params, sizeof *L->params);
    L->grad = calloc(L->desc.n_params, sizeof *L->grad);
    L->ws = aligned_alloc(64, (L->t->workspace(L->self, n, 0) + 63) / 64
                          * 64);
    ck_assert_ptr_nonnull(L->params);
    ck_assert_ptr_nonnull(L->grad);
    ck_assert_ptr_nonnull(L->ws);
    rng_seed(&L->rng, 5);
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.host = flow_host_services();
    c.rng = &L->rng;
    ck_assert_int_eq(L->t->init(L->self, &c, L->params), FLOW_OK);
}

static void rl_close(rl *L)
{
    L->t->destroy(L->self);
    free(L->params);
    free(L->grad);
    free(L->ws);
}

static void rl_call(rl *L, flow_call *c, int training)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->host = flow_host_services();
    c->n = L->n;
    c->dim = L->d;
    c->params = L->params;
    c->grad = L->grad;
    c->ws = L->ws;
    c->ws_bytes = L->t->workspace(L->self, L->n, 0);
    c->rng = &L->rng;
    c->training = training;
    c->err = L->err;
    c->err_cap = sizeof L->err;
}

/* The mean over rows of log det and of its gradient (parameters, then the
 * input x), every row at the same point x0; training = 1 draws an
 * estimate. */
static void logdet_and_grad(rl *L, const flow_real *x0, int training,
                            double *ld_mean, double *g)
{
    size_t n = L->n, d = L->d, np = L->desc.n_params;
    flow_real *x = malloc(n * d * sizeof *x), *z = malloc(n * d * sizeof *z);
    flow_real *dz = calloc(n * d, sizeof *dz), *dx = malloc(n * d * sizeof *dx);
    flow_real *ld = malloc(n * sizeof *ld), *dl = malloc(n * sizeof *dl);
    flow_call c;
    double s = 0;
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(z);
    ck_assert_ptr_nonnull(dz);
    ck_assert_ptr_nonnull(dx);
    ck_assert_ptr_nonnull(ld);
    ck_assert_ptr_nonnull(dl);
    for (size_t r = 0; r < n; r++) {
        memcpy(x + r * d, x0, d * sizeof *x);
        dl[r] = (flow_real)(1.0 / (double)n);
    }
    rl_call(L, &c, training);
    ck_assert_msg(L->t->forward(L->self, &c, x, z, ld) == FLOW_OK, "%s",
                  L->err);
    for (size_t r = 0; r < n; r++)
        s += ld[r];
    *ld_mean = s / (double)n;
    memset(L->grad, 0, np * sizeof *L->grad);
    ck_assert_msg(L->t->forward_backward(L->self, &c, x, z, dz, dl, dx)
                  == FLOW_OK, "%s", L->err);
    for (size_t i = 0; i < np; i++)
        g[i] = L->grad[i];
    for (size_t j = 0; j < d; j++) {
        double t = 0;
        for (size_t r = 0; r < n; r++)
            t += dx[r * d + j];
        g[np + j] = t;
    }
    free(x);
    free(z);
    free(dz);
    free(dx);
    free(ld);
    free(dl);
}

/* Scales the initial weights up so that spectral normalisation binds. */
static void big_weights(rl *L)
{
    for (size_t i = 0; i < L->desc.n_params; i++)
        L->params[i] = (flow_real)(L->params[i] * 6);
}

/* Mean of C calls' estimates (each the mean of n probes) against the exact
 * log-det and gradient: every |mean - exact| within `zmax` standard errors
 * (plus a rounding allowance).  Returns the log-det's z-score. */
static double check_unbiased(const res_attrs *a, int probe, size_t calls,
                             double zmax, const char *what)
{
    enum { D = 3, N = 25 };
    static const flow_real x0[D] = {0.7f, -1.1f, 0.4f};
    rl L;
    double exact, *gx, *gs, *gs2, ls = 0, ls2 = 0, mean, se, zl;
    size_t m;
    res_attrs b = *a;
    b.v[0].ilist = b.hidden;
    b.v[3].sub = b.v[3].i ? b.sub : NULL;
    b.v[4].i = probe;
    rl_open(&L, &b, D, N);
    big_weights(&L);
    m = L.desc.n_params + D;
    gx = malloc(m * sizeof *gx);
    gs = calloc(m, sizeof *gs);
    gs2 = calloc(m, sizeof *gs2);
    ck_assert_ptr_nonnull(gx);
    ck_assert_ptr_nonnull(gs);
    ck_assert_ptr_nonnull(gs2);
    logdet_and_grad(&L, x0, 0, &exact, gx);
    for (size_t c = 0; c < calls; c++) {
        double l, *g = malloc(m * sizeof *g);
        ck_assert_ptr_nonnull(g);
        logdet_and_grad(&L, x0, 1, &l, g);
        ls += l;
        ls2 += l * l;
        for (size_t i = 0; i < m; i++) {
            gs[i] += g[i];
            gs2[i] += g[i] * g[i];
        }
        free(g);
    }
    mean = ls / (double)calls;
    se = sqrt(fmax(0.0, ls2 / (double)calls - mean * mean)
              / (double)(calls - 1));
    zl = (mean - exact) / se;
    ck_assert_msg(se > 0 && fabs(zl) < zmax, "%s: log-det mean %.6f +- %.2g "
                  "vs exact %.6f (z = %.2f)", what, mean, se, exact, zl);
    for (size_t i = 0; i < m; i++) {
        double gm = gs[i] / (double)calls;
        double gse = sqrt(fmax(0.0, gs2[i] / (double)calls - gm * gm)
                          / (double)(calls - 1));
        double allow = zmax * gse + 1e-5 * (1 + fabs(gx[i]));
        ck_assert_msg(fabs(gm - gx[i]) <= allow, "%s: gradient %zu (%s) "
                      "mean %.6g +- %.2g vs exact %.6g", what, i,
                      i < L.desc.n_params ? "param" : "input", gm, gse,
                      gx[i]);
    }
    free(gx);
    free(gs);
    free(gs2);
    rl_close(&L);
    return zl;
}

START_TEST(test_series_estimates_unbiased)
{
    res_attrs a;
    /* 40 terms: the truncation error (<= D 0.9^(3*41) / 41) is negligible */
    res_attrs_make(&a, 3, 0.9, 1, 40, 0, 1e-6, 100);
    check_unbiased(&a, 0, 400, 4.0, "series(40), rademacher");
    check_unbiased(&a, 1, 400, 4.0, "series(40), gaussian");
    /* g(x) = W x + b with ||W|| = 0.8: large power-series terms */
    res_attrs_make(&a, 3, 0.8, 1, 40, 0, 1e-6, 100);
    a.v[0].n = 0;
    check_unbiased(&a, 0, 2000, 4.0, "series(40), linear g");
}
END_TEST

START_TEST(test_roulette_estimates_unbiased)
{
    res_attrs a;
    res_attrs_make(&a, 3, 0.9, 2, 3, 1, 1e-6, 100);
    check_unbiased(&a, 0, 600, 4.0, "roulette(3, 1), rademacher");
    res_attrs_make(&a, 2, 0.95, 2, 2.5, 2, 1e-6, 100);
    check_unbiased(&a, 1, 600, 4.0, "roulette(2.5, 2), tanh, gaussian");
    /* linear g, ||W|| = 0.7 < q = 0.8: finite variance */
    res_attrs_make(&a, 3, 0.7, 2, 6, 2, 1e-6, 100);
    a.v[0].n = 0;
    check_unbiased(&a, 0, 2000, 4.0, "roulette(6, 2), linear g");
}
END_TEST

/* A 2-term series is biased by exactly the dropped tail: its mean is
 * tr(J) - tr(J^2) / 2 (J by central differences), not log det(I + J). */
START_TEST(test_truncated_series_is_biased)
{
    enum { D = 3, N = 50, CALLS = 400 };
    static const flow_real x0[D] = {0.7f, -1.1f, 0.4f};
    double J[D][D], t1 = 0, t2 = 0, s = 0, s2 = 0, mean, se, exact, *g;
    const double h = FLOW_REAL_DOUBLE ? 1e-5 : 1e-2;
    flow_real xp[D], zp[D], zm[D], ld[1];
    res_attrs a;
    flow_call c;
    rl L;
    res_attrs_make(&a, 3, 0.9, 1, 2, 0, 1e-6, 100);
    a.v[0].n = 0;               /* g(x) = W x + b, ||W|| = 0.9: a large J */
    rl_open(&L, &a, D, 1);
    big_weights(&L);
    for (int j = 0; j < D; j++) {
        memcpy(xp, x0, sizeof xp);
        xp[j] = (flow_real)(x0[j] + h);
        rl_call(&L, &c, 0);
        ck_assert_int_eq(L.t->forward(L.self, &c, xp, zp, ld), FLOW_OK);
        xp[j] = (flow_real)(x0[j] - h);
        ck_assert_int_eq(L.t->forward(L.self, &c, xp, zm, ld), FLOW_OK);
        for (int i = 0; i < D; i++)
            J[i][j] = ((double)zp[i] - zm[i]) / (2 * h) - (i == j);
    }
    for (int i = 0; i < D; i++) {
        t1 += J[i][i];
        for (int k = 0; k < D; k++)
            t2 += J[i][k] * J[k][i];
    }
    rl_close(&L);
    rl_open(&L, &a, D, N);
    big_weights(&L);
    g = malloc((L.desc.n_params + D) * sizeof *g);
    ck_assert_ptr_nonnull(g);
    logdet_and_grad(&L, x0, 0, &exact, g);
    for (int k = 0; k < CALLS; k++) {
        double l;
        logdet_and_grad(&L, x0, 1, &l, g);
        s += l;
        s2 += l * l;
    }
    mean = s / CALLS;
    se = sqrt((s2 / CALLS - mean * mean) / (CALLS - 1));
    ck_assert_msg(fabs(mean - (t1 - t2 / 2)) < 4 * se + 1e-3, "series(2) "
                  "mean %.6f +- %.2g vs tr(J) - tr(J^2)/2 = %.6f", mean, se,
                  t1 - t2 / 2);
    /* and the bias is visible: the cubic term tr(J^3)/3 is not small here */
    ck_assert_msg(fabs(mean - exact) > 4 * se, "series(2) mean %.6f +- %.2g "
                  "is indistinguishable from the exact %.6f", mean, se,
                  exact);
    free(g);
    rl_close(&L);
}
END_TEST

/* Evaluation mode is always exact, whatever the training estimator. */
START_TEST(test_eval_mode_is_exact)
{
    enum { D = 3 };
    static const flow_real x0[D] = {0.2f, 0.5f, -0.9f};
    res_attrs a, e;
    rl L, E;
    double l1, l2, *g1, *g2;
    res_attrs_make(&a, 3, 0.9, 2, 4, 1, 1e-6, 100);
    res_attrs_make(&e, 3, 0.9, 0, 0, 0, 1e-6, 100);
    rl_open(&L, &a, D, 4);
    rl_open(&E, &e, D, 4);
    ck_assert_uint_ne(L.desc.flags & FLOW_LAYER_STOCHASTIC, 0);
    ck_assert_int_eq(L.desc.logdet_exact, 0);
    ck_assert_uint_eq(E.desc.flags & FLOW_LAYER_STOCHASTIC, 0);
    ck_assert_int_eq(E.desc.logdet_exact, 1);
    ck_assert_uint_eq(L.desc.n_params, E.desc.n_params);
    g1 = malloc((L.desc.n_params + D) * sizeof *g1);
    g2 = malloc((L.desc.n_params + D) * sizeof *g2);
    ck_assert_ptr_nonnull(g1);
    ck_assert_ptr_nonnull(g2);
    logdet_and_grad(&L, x0, 0, &l1, g1);
    logdet_and_grad(&E, x0, 0, &l2, g2);
    ck_assert_double_eq(l1, l2);
    ck_assert_mem_eq(g1, g2, (L.desc.n_params + D) * sizeof *g1);
    free(g1);
    free(g2);
    rl_close(&L);
    rl_close(&E);
}
END_TEST

START_TEST(test_certificate)
{
    res_attrs a;
    rl L;
    res_attrs_make(&a, 0, 0.8, 0, 0, 0, 1e-6, 100);
    rl_open(&L, &a, 2, 1);
    ck_assert_int_eq(L.desc.cert, FLOW_CERT_LIPSCHITZ);
    ck_assert_int_eq(L.desc.jac, FLOW_JAC_RESIDUAL);
    ck_assert_int_eq(L.desc.dep, FLOW_DEP_DENSE);
    ck_assert_double_eq_tol(L.desc.cert_value, 0.8 * 0.8 * 0.8, 1e-15);
    rl_close(&L);
}
END_TEST

static void add_expect(const res_attrs *a, int rc, const char *msg)
{
    flow_model *m = flow_model_new(ctx, 3, 0);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(flow_model_add_layer(m, "residual", "res1", a->v, 7, 0,
                                          0, 0), rc);
    ck_assert_msg(strstr(flow_errmsg(ctx), msg) != NULL, "got: %s",
                  flow_errmsg(ctx));
    flow_model_free(m);
}

START_TEST(test_lipschitz_refused)
{
    res_attrs a;
    res_attrs_make(&a, 3, 1.0, 0, 0, 0, 1e-6, 100);
    add_expect(&a, FLOW_ERR_INVAL, "residual.so): Lipschitz bound of the "
               "residual branch is coeff^L = 1^3 = 1, not < 1: x + g(x) is "
               "not provably invertible");
    res_attrs_make(&a, 3, 1.5, 0, 0, 0, 1e-6, 100);
    a.v[0].n = 0;               /* g linear: L = 1 */
    add_expect(&a, FLOW_ERR_INVAL, "coeff^L = 1.5^1 = 1.5, not < 1");
    res_attrs_make(&a, 2, 4, 2, 1, 1, 1e-6, 100);
    a.v[2].r = 0.5;
    add_expect(&a, FLOW_ERR_INVAL, "residual.so): roulette: expected number "
               "of terms 1 must exceed min_terms 1");
}
END_TEST

/* Too few iterations: a clear error naming the layer, never a silent
 * wrong answer; enough iterations: a tight round trip. */
START_TEST(test_fixed_point_nonconvergence)
{
    enum { N = 5, D = 3 };
    flow_real x[N * D], z[N * D], back[N * D], l1[N], l2[N];
    const char *msg;
    double err = 0;
    for (int it = 0; it < 2; it++) {
        res_attrs a;
        flow_model *m = flow_model_new(ctx, D, 0);
        ck_assert_ptr_nonnull(m);
        res_attrs_make(&a, 3, 0.97, 0, 0, 0, 1e-12, it ? 500 : 3);
        ck_assert_msg(flow_model_add_layer(m, "residual", "res1", a.v, 7, 0,
                                           4, 5) == FLOW_OK, "%s",
                      flow_errmsg(ctx));
        ck_assert_int_eq(flow_model_finish(m, 3), FLOW_OK);
        for (int i = 0; i < N * D; i++)
            x[i] = (flow_real)(1.5 * sin(0.9 * i + 0.3));
        ck_assert_int_eq(flow_model_forward(m, N, x, NULL, z, l1), FLOW_OK);
        if (it == 0) {
            ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, back, l2),
                             FLOW_ERR_NUMERIC);
            msg = flow_errmsg(ctx);
            ck_assert_msg(strncmp(msg, "res1 (line 4:5, ", 16) == 0
                          && strstr(msg, "residual.so): inverse: fixed-point "
                                    "inverse x = z - g(x) did not converge "
                                    "in 3 iterations: 5 of 5 rows still "
                                    "moving (row ")
                          && strstr(msg, "; Lip(g) <= 0.912673"),
                          "got: %s", msg);
        } else {
            ck_assert_msg(flow_model_inverse(m, N, z, NULL, back, l2)
                          == FLOW_OK, "%s", flow_errmsg(ctx));
            for (int i = 0; i < N * D; i++)
                err = fmax(err, fabs((double)back[i] - x[i]));
            ck_assert_msg(err < (FLOW_REAL_DOUBLE ? 1e-11 : 1e-5),
                          "round trip error %g", err);
            for (int r = 0; r < N; r++)
                ck_assert_double_eq_tol(l1[r], -l2[r], TEST_EPS);
        }
        flow_model_free(m);
    }
}
END_TEST

/* Whether the model's forward pass gives every row the same bits alone as
 * in the batch.  Not a property of flowkit but of the BLAS: OpenBLAS
 * 0.3.21's Haswell and Zen sgemm kernels round a row differently for
 * different row counts (measured on an AMD EPYC, OPENBLAS_CORETYPE=Haswell:
 * 24 of 35 rows differ in the last bits for k >= 16), its SkylakeX and
 * Sandybridge kernels do not. */
static int forward_rows_exact(flow_model *m, const flow_real *z, int n, int d)
{
    flow_real y[64], one[8], l[8], l1[1];
    ck_assert_int_le(n * d, 64);
    ck_assert_int_eq(flow_model_forward(m, (size_t)n, z, NULL, y, l), FLOW_OK);
    for (int r = 0; r < n; r++) {
        ck_assert_int_eq(flow_model_forward(m, 1, z + r * d, NULL, one, l1),
                         FLOW_OK);
        if (memcmp(one, y + r * d, (size_t)d * sizeof *one)
            || memcmp(l1, l + r, sizeof l1))
            return 0;
    }
    return 1;
}

/* Rows of the fixed-point inverse converge independently: a row's result
 * is bit-identical whether it is inverted alone or with others that need
 * many more iterations -- where the BLAS computes a row's product the
 * same whatever the row count (forward_rows_exact).  Elsewhere the rows
 * agree to the fixed point's accuracy: both runs stop within
 * tol / (1 - Lip) = 1e-6 / 0.03 of the fixed point (relative). */
START_TEST(test_inverse_rows_independent)
{
    enum { N = 6, D = 2 };
    flow_real z[N * D], x[N * D], one[D], l[N], l1[1];
    res_attrs a;
    int exact;
    flow_model *m = flow_model_new(ctx, D, 0);
    ck_assert_ptr_nonnull(m);
    res_attrs_make(&a, 2, 0.97, 0, 0, 0, 1e-6, 1000);
    ck_assert_msg(flow_model_add_layer(m, "residual", "r", a.v, 7, 0, 0, 0)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
    ck_assert_int_eq(flow_model_finish(m, 8), FLOW_OK);
    for (int i = 0; i < N * D; i++)  /* from tiny to large: slow rows */
        z[i] = (flow_real)((i % 2 ? -1 : 1) * 0.05 * (i + 1) * (i + 1));
    exact = forward_rows_exact(m, z, N, D);
    ck_assert_int_eq(flow_model_inverse(m, N, z, NULL, x, l), FLOW_OK);
    for (int r = 0; r < N; r++) {
        ck_assert_int_eq(flow_model_inverse(m, 1, z + r * D, NULL, one, l1),
                         FLOW_OK);
        if (exact) {
            ck_assert_mem_eq(one, x + r * D, sizeof one);
            ck_assert_mem_eq(l1, l + r, sizeof l1);
            continue;
        }
        for (int j = 0; j < D; j++)
            ck_assert_double_eq_tol(one[j], x[r * D + j], 1e-6 / 0.03
                                    * fmax(1.0, fabs(x[r * D + j])));
        ck_assert_double_eq_tol(l1[0], l[r], 1e-4);
    }
    flow_model_free(m);
}
END_TEST

Suite *suite_residual(void)
{
    Suite *s = suite_create("residual");
    TCase *tc = tcase_create("certificate");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_certificate);
    tcase_add_test(tc, test_lipschitz_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("inverse");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fixed_point_nonconvergence);
    suite_add_tcase(s, tc);
    /* bit-identical rows across batch sizes: holds for one BLAS kernel
     * choice, so not under valgrind (OpenBLAS sees another CPU there) */
    tc = tcase_create("batch_invariance");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_inverse_rows_independent);
    suite_add_tcase(s, tc);
    tc = tcase_create("estimators");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_eval_mode_is_exact);
    tcase_add_test(tc, test_series_estimates_unbiased);
    tcase_add_test(tc, test_roulette_estimates_unbiased);
    tcase_add_test(tc, test_truncated_series_is_biased);
    suite_add_tcase(s, tc);
    return s;
}
