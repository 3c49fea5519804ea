/* conform.c - numerical conformance checks of a layer type through the
 * plugin ABI alone: what `flowkit check` and the plugin tests run. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lapacke.h>

#include "conform.h"
#include "ctx.h"
#include "rng.h"

/* Tolerances (documented in docs/plugins.md): float64 builds are held to
 * near machine precision, float32 builds to what central differences in
 * single precision can resolve. */
#if FLOW_REAL_DOUBLE
# define TOL_ROUNDTRIP 1e-9
# define TOL_LOGDET 1e-9
# define FD_STEP 1e-6
# define TOL_FD 1e-6
# define TOL_ZERO 1e-9
#else
# define TOL_ROUNDTRIP 1e-4
# define TOL_LOGDET 1e-4
# define FD_STEP 1e-2
# define TOL_FD 2e-3
# define TOL_ZERO 1e-5
#endif

typedef struct layer_run {
    const flow_layer_type *t;
    void *self;
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t *dep_vec;
    size_t n, d, k;
    flow_real *params, *buffers, *grad, *ctxv, *dctx;
    void *ws;
    size_t ws_bytes;
    flow_rng rng;
    char err[512];
} layer_run;

void conform_default_opts(conform_opts *o)
{
    memset(o, 0, sizeof *o);
    o->dim = 2;
    o->rows = 4;
    o->seed = 1;
    o->perturb = 0.2;
    o->scale = 1.5;
    o->max_param_checks = 48;
}

static conform_row *add_row(conform_report *rep, const char *name, double err,
                            double tol)
{
    conform_row *r;
    if (rep->n >= CONFORM_MAX_ROWS)
        return NULL;
    r = &rep->rows[rep->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->err = err;
    r->tol = tol;
    r->pass = isfinite(err) && err <= tol;
    if (!r->pass)
        rep->failures++;
    return r;
}

static void note(conform_row *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void note(conform_row *r, const char *fmt, ...)
{
    va_list ap;
    if (!r)
        return;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
}

static void skip_row(conform_report *rep, const char *name, const char *why)
{
    conform_row *r = add_row(rep, name, 0, 0);
    if (r) {
        r->pass = 1;
        r->skipped = 1;
        note(r, "%s", why);
    }
}

static void fill_call(layer_run *L, flow_call *c, size_t n, flow_real *grad,
                      flow_real *dctx)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->host = flow_host_services();
    c->n = n;
    c->dim = L->d;
    c->context_dim = L->k;
    c->params = L->params;
    c->grad = grad;
    c->buffers = L->buffers;
    c->ctx = L->k ? L->ctxv : NULL;
    c->dctx = dctx;
    c->ws = L->ws;
    c->ws_bytes = L->ws_bytes;
    c->rng = &L->rng;
    c->err = L->err;
    c->err_cap = sizeof L->err;
}

static int ensure_ws(layer_run *L, size_t n, int dir)
{
    size_t need = L->t->workspace(L->self, n, dir);
    if (need <= L->ws_bytes)
        return 0;
    free(L->ws);
    L->ws_bytes = 0;
    if (posix_memalign(&L->ws, 64, need) != 0) {
        L->ws = NULL;
        return -1;
    }
    L->ws_bytes = need;
    return 0;
}

/* dir 0: forward x -> y; dir 1: inverse.  Returns the plugin's status. */
static int run(layer_run *L, int dir, size_t n, const flow_real *in,
               flow_real *out, flow_real *ld)
{
    flow_call c;
    int rc;
    if (ensure_ws(L, n, dir) != 0)
        return FLOW_ERR_NOMEM;
    if (L->t->prepare) {
        fill_call(L, &c, n, NULL, NULL);
        if ((rc = L->t->prepare(L->self, &c)) != FLOW_OK)
            return rc;
    }
    fill_call(L, &c, n, NULL, NULL);
    return dir ? L->t->inverse(L->self, &c, in, out, ld)
               : L->t->forward(L->self, &c, in, out, ld);
}

static int has(const layer_run *L, uint32_t flag)
{
    return (L->desc.flags & flag) != 0;
}

/* Expands the declared pattern into dep[i*D + j] (1 = may depend). */
static int declared_pattern(layer_run *L, uint8_t *dep)
{
    size_t d = L->d;
    memset(dep, 0, d * d);
    switch (L->desc.dep) {
    case FLOW_DEP_ELEMENTWISE:
        for (size_t i = 0; i < d; i++)
            dep[i * d + i] = 1;
        return 0;
    case FLOW_DEP_PERMUTATION:
        for (size_t i = 0; i < d; i++)
            dep[i * d + (size_t)L->dep_vec[i]] = 1;
        return 0;
    case FLOW_DEP_COUPLING:
        for (size_t i = 0; i < d; i++) {
            dep[i * d + i] = 1;
            if (L->dep_vec[i])
                for (size_t j = 0; j < d; j++)
                    if (!L->dep_vec[j])
                        dep[i * d + j] = 1;
        }
        return 0;
    case FLOW_DEP_ORDER:
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                if (i == j || L->dep_vec[j] < L->dep_vec[i])
                    dep[i * d + j] = 1;
        return 0;
    case FLOW_DEP_DENSE:
        memset(dep, 1, d * d);
        return 0;
    case FLOW_DEP_MATRIX:
        return L->t->dep_matrix ? L->t->dep_matrix(&L->cfg, dep) : -1;
    }
    return -1;
}

/* log|det a| of a d x d row-major double matrix (LAPACK LU); a is
 * overwritten.  -inf when singular. */
static double slogdet(double *a, size_t d, lapack_int *ipiv)
{
    double s = 0;
    lapack_int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, (lapack_int)d,
                                     (lapack_int)d, a, (lapack_int)d, ipiv);
    if (info < 0)
        return NAN;
    for (size_t i = 0; i < d; i++) {
        double v = fabs(a[i * d + i]);
        if (v == 0)
            return -INFINITY;
        s += log(v);
    }
    return s;
}

static double rel_err(double a, double b)
{
    return fabs(a - b) / fmax(1.0, fabs(b));
}

static int all_finite(const flow_real *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static void layer_free(layer_run *L)
{
    if (L->self)
        L->t->destroy(L->self);
    free(L->dep_vec);
    free(L->params);
    free(L->buffers);
    free(L->grad);
    free(L->ctxv);
    free(L->dctx);
    free(L->ws);
}

static int layer_build(flow_ctx *ctx, layer_run *L, const flow_layer_type *t,
                       const char *file, const flow_attr_value *attrs,
                       const conform_opts *o)
{
    flow_diag diag;
    flow_call c;
    int rc;
    memset(L, 0, sizeof *L);
    L->t = t;
    L->d = o->dim;
    L->k = o->context_dim;
    L->n = o->rows ? o->rows : 4;
    L->cfg.struct_size = sizeof L->cfg;
    L->cfg.name = t->name;
    L->cfg.dim = L->d;
    L->cfg.context_dim = L->k;
    L->cfg.attrs = attrs;
    L->cfg.has_bounds = o->has_bounds;
    L->cfg.lo = o->lo;
    L->cfg.hi = o->hi;
    L->cfg.host = flow_host_services();
    L->desc.struct_size = sizeof L->desc;
    if (!(L->dep_vec = calloc(L->d, sizeof *L->dep_vec)))
        return ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    L->desc.dep_vec = L->dep_vec;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    if ((rc = t->describe(&L->cfg, &L->desc, &diag)) != FLOW_OK)
        return ctx_error(ctx, rc, "%s (%s): describe: %s", t->name, file,
                         diag.message);
    L->params = calloc(L->desc.n_params + 1, sizeof *L->params);
    L->grad = calloc(L->desc.n_params + 1, sizeof *L->grad);
    L->buffers = calloc(L->desc.n_buffers + 1, sizeof *L->buffers);
    L->ctxv = calloc(L->n * L->k + 1, sizeof *L->ctxv);
    L->dctx = calloc(L->n * L->k + 1, sizeof *L->dctx);
    if (!L->params || !L->grad || !L->buffers || !L->ctxv || !L->dctx)
        return ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (!(L->self = t->create(flow_host_services(), &L->cfg, &diag)))
        return ctx_error(ctx, FLOW_ERR_PLUGIN, "%s (%s): create: %s", t->name,
                         file, diag.message);
    rng_seed(&L->rng, o->seed);
    fill_call(L, &c, 0, NULL, NULL);
    if ((rc = t->init(L->self, &c, L->params)) != FLOW_OK)
        return ctx_error(ctx, rc, "%s (%s): init: %s", t->name, file, L->err);
    for (size_t i = 0; i < L->desc.n_params; i++)
        L->params[i] += (flow_real)(o->perturb * rng_normal1(&L->rng));
    for (size_t i = 0; i < L->n * L->k; i++)
        L->ctxv[i] = (flow_real)rng_normal1(&L->rng);
    return FLOW_OK;
}

static void draw_inputs(layer_run *L, const conform_opts *o, flow_real *x)
{
    for (size_t i = 0; i < L->n * L->d; i++) {
        double v = o->scale * rng_normal1(&L->rng);
        if (o->has_bounds) {
            double u = rng_uniform(&L->rng);
            v = o->lo + (o->hi - o->lo) * (0.02 + 0.96 * u);
        }
        x[i] = (flow_real)v;
    }
}

/* Round trip, log-det sum, determinism, finiteness, batch independence. */
static void check_maps(layer_run *L, const conform_opts *o,
                       conform_report *rep, flow_real *x, flow_real *y,
                       flow_real *xb, flow_real *ld, flow_real *ld2,
                       flow_real *y2)
{
    size_t n = L->n, d = L->d, nd = n * d;
    double e = 0, el = 0;
    conform_row *r;
    int rc;

    rc = run(L, 0, n, x, y, ld);
    r = add_row(rep, "forward runs, finite", rc == FLOW_OK
                && all_finite(y, nd) && all_finite(ld, n) ? 0 : 1, 0);
    if (rc != FLOW_OK) {
        note(r, "error: %s", L->err);
        return;
    }
    if (!has(L, FLOW_LAYER_INVERSE)) {
        skip_row(rep, "round trip", "layer has no inverse");
    } else {
        rc = run(L, 1, n, y, xb, ld2);
        if (rc != FLOW_OK) {
            r = add_row(rep, "round trip", INFINITY, TOL_ROUNDTRIP);
            note(r, "inverse failed: %s", L->err);
        } else {
            for (size_t i = 0; i < nd; i++)
                e = fmax(e, rel_err(xb[i], x[i]));
            for (size_t i = 0; i < n; i++)
                el = fmax(el, fabs((double)ld[i] + ld2[i])
                                  / fmax(1.0, fabs(ld[i])));
            add_row(rep, "round trip x -> z -> x", e, TOL_ROUNDTRIP);
            add_row(rep, "logdet forward + inverse = 0", el, TOL_LOGDET);
        }
    }
    /* determinism: the same call twice gives the same bits */
    if (!has(L, FLOW_LAYER_STOCHASTIC)) {
        rc = run(L, 0, n, x, y2, ld2);
        r = add_row(rep, "deterministic", rc == FLOW_OK
                    && !memcmp(y, y2, nd * sizeof *y)
                    && !memcmp(ld, ld2, n * sizeof *ld) ? 0 : 1, 0);
        note(r, "same inputs, same bits");
    }
    /* batch independence: change row 0, rows 1.. must not move at all */
    if (n > 1 && !has(L, FLOW_LAYER_WHOLE_BATCH)) {
        double moved = 0;
        memcpy(xb, x, nd * sizeof *x);
        for (size_t j = 0; j < d; j++)
            xb[j] = (flow_real)(xb[j] * 0.5 + 0.25);
        run(L, 0, n, xb, y2, ld2);
        for (size_t i = d; i < nd; i++)
            moved = fmax(moved, fabs((double)y2[i] - y[i]));
        for (size_t i = 1; i < n; i++)
            moved = fmax(moved, fabs((double)ld2[i] - ld[i]));
        r = add_row(rep, "rows independent", moved, 0);
        note(r, "row 0 changed; max change in other rows");
    }
    (void)o;
}

/* Finite differences that survive kinks.  Maps such as splines are only
 * piecewise smooth (the log-derivative jumps at knots), so a central
 * difference straddling a knot is wrong by O(h * jump).  We evaluate
 * f at 0, +-h, +-h/2, +-h/4 and form three estimates, each with one
 * Richardson step: central (error O(h^4)), forward and backward one-sided
 * (O(h^2)).  The estimate whose two step sizes agree best is used: on a
 * smooth stretch that is the central one; next to a kink, the side that
 * does not cross it.  Steps are the ones actually taken after rounding. */
typedef int (*fd_eval)(void *env, double delta, double *actual, double *out);

#define FD_POINTS 7
static const double fd_frac[FD_POINTS] = {0, 1, -1, 0.5, -0.5, 0.25, -0.25};

static int fd_robust(fd_eval f, void *env, double h, size_t m, double *deriv,
                     double *unc, double *buf /* FD_POINTS * m */)
{
    double a[FD_POINTS];
    for (int p = 0; p < FD_POINTS; p++)
        if (f(env, fd_frac[p] * h, &a[p], buf + (size_t)p * m) != 0)
            return -1;
    for (size_t i = 0; i < m; i++) {
        const double *v[FD_POINTS];
        double c1, c2, f1, f2, b1, b2, best, dis, t, raw;
        for (int p = 0; p < FD_POINTS; p++)
            v[p] = buf + (size_t)p * m + i;
        c1 = (*v[1] - *v[2]) / (a[1] - a[2]);
        c2 = (*v[3] - *v[4]) / (a[3] - a[4]);
        f1 = (*v[3] - *v[0]) / (a[3] - a[0]);
        f2 = (*v[5] - *v[0]) / (a[5] - a[0]);
        b1 = (*v[0] - *v[4]) / (a[0] - a[4]);
        b2 = (*v[0] - *v[6]) / (a[0] - a[6]);
        best = (4 * c2 - c1) / 3;
        dis = fabs(c2 - c1);
        raw = c2;
        if ((t = fabs(f2 - f1)) < dis) {
            dis = t;
            best = 2 * f2 - f1;
            raw = f2;
        }
        if (fabs(b2 - b1) < dis) {
            best = 2 * b2 - b1;
            raw = b2;
        }
        deriv[i] = best;
        /* the extrapolation's own correction bounds its error from above
         * (it is the error of the finer raw estimate) */
        unc[i] = fabs(best - raw);
    }
    return 0;
}

/* x + delta in flow_real; *actual = the step really taken. */
static flow_real nudge(flow_real x, double delta, double *actual)
{
    flow_real v = (flow_real)(x + delta);
    *actual = (double)v - (double)x;
    return v;
}

/* Column j of the Jacobian of row 0. */
typedef struct jac_env {
    layer_run *L;
    int dir;
    const flow_real *x;
    flow_real *xp, *yp, *ld;
    size_t j;
} jac_env;

static int jac_eval(void *e, double delta, double *actual, double *out)
{
    jac_env *je = e;
    size_t d = je->L->d;
    memcpy(je->xp, je->x, d * sizeof *je->xp);
    je->xp[je->j] = nudge(je->x[je->j], delta, actual);
    if (run(je->L, je->dir, 1, je->xp, je->yp, je->ld) != FLOW_OK)
        return -1;
    for (size_t i = 0; i < d; i++)
        out[i] = je->yp[i];
    return 0;
}

/* Jacobian of row 0 (d x d, double) of direction `dir` at x, and the
 * entries' uncertainties in U. */
static int fd_jacobian(layer_run *L, int dir, const flow_real *x, double *J,
                       double *U, flow_real *xp, flow_real *yp, flow_real *ld)
{
    size_t d = L->d;
    double *col = malloc(2 * d * sizeof *col);
    double *buf = malloc((FD_POINTS + 2) * d * sizeof *buf);
    jac_env je = {L, dir, x, xp, yp, ld, 0};
    int rc = 0;
    if (!col || !buf)
        rc = -1;
    for (size_t j = 0; j < d && rc == 0; j++) {
        je.j = j;
        rc = fd_robust(jac_eval, &je, FD_STEP * fmax(1.0, fabs(x[j])), d,
                       col, col + d, buf);
        for (size_t i = 0; i < d && rc == 0; i++) {
            J[i * d + j] = col[i];
            U[i * d + j] = col[d + i];
        }
    }
    free(col);
    free(buf);
    return rc;
}

static void check_jacobian(layer_run *L, conform_report *rep,
                           const flow_real *x, int dir, const char *dname)
{
    size_t d = L->d;
    double *J = malloc(d * d * sizeof *J), *A = malloc(d * d * sizeof *A);
    double *U = malloc(d * d * sizeof *U);
    double jmax = 0, worst = 0, diagmin = INFINITY, lfd, lalt, unc, scale;
    uint8_t *dep = malloc(d * d);
    lapack_int *ipiv = malloc(d * sizeof *ipiv);
    flow_real *buf = malloc(4 * d * sizeof *buf), ld[1];
    char name[48];
    conform_row *r;

    if (!J || !A || !U || !dep || !ipiv || !buf) {
        add_row(rep, "jacobian", INFINITY, 0);
        goto done;
    }
    if (fd_jacobian(L, dir, x, J, U, buf, buf + d, ld) != 0
        || run(L, dir, 1, x, buf, ld) != FLOW_OK) {
        snprintf(name, sizeof name, "logdet vs FD Jacobian (%s)", dname);
        r = add_row(rep, name, INFINITY, TOL_FD);
        note(r, "layer failed near the test point: %s", L->err);
        goto done;
    }
    memcpy(A, J, d * d * sizeof *A);
    lfd = slogdet(A, d, ipiv);
    /* the uncertainty of log|det| from the entries' uncertainties: the
     * spread over J + U and J - U */
    for (size_t i = 0; i < d * d; i++)
        A[i] = J[i] + U[i];
    lalt = slogdet(A, d, ipiv);
    unc = fabs(lalt - lfd);
    for (size_t i = 0; i < d * d; i++)
        A[i] = J[i] - U[i];
    lalt = slogdet(A, d, ipiv);
    unc = fmax(unc, fabs(lalt - lfd));
    if (!isfinite(unc))
        unc = 0;
    snprintf(name, sizeof name, "logdet vs FD Jacobian (%s)", dname);
    r = add_row(rep, name, fmax(0.0, fabs(ld[0] - lfd) - unc)
                               / fmax(1.0, fabs(lfd)), TOL_FD);
    note(r, "layer %.9g, log|det| of FD Jacobian %.9g +- %.2g",
         (double)ld[0], lfd, unc);

    /* declared zeros must be zero; the diagonal must not be */
    if (dir == 0) {
        if (declared_pattern(L, dep) != 0) {
            r = add_row(rep, "declared pattern vs Jacobian", INFINITY, 0);
            note(r, "cannot expand the declared pattern");
            goto done;
        }
        for (size_t i = 0; i < d * d; i++)
            jmax = fmax(jmax, fabs(J[i]));
        scale = fmax(1.0, jmax);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                if (!dep[i * d + j])
                    worst = fmax(worst, fabs(J[i * d + j]) / scale);
            }
        r = add_row(rep, "declared zeros are zero", worst, TOL_FD);
        note(r, "max |J_ij| / max|J| where the layer declares no dependence");
        if (L->desc.dep != FLOW_DEP_PERMUTATION
            && L->desc.dep != FLOW_DEP_DENSE) {
            for (size_t i = 0; i < d; i++)
                diagmin = fmin(diagmin, fabs(J[i * d + i]));
            r = add_row(rep, "diagonal non-zero", diagmin > 0 ? 0 : 1, 0);
            note(r, "min |J_ii| = %.3g", diagmin);
        }
    }
done:
    free(J);
    free(A);
    free(U);
    free(dep);
    free(ipiv);
    free(buf);
}

/* L(v) = sum(w * out) + sum(u * logdet) of direction dir at input x. */
typedef struct objective {
    layer_run *L;
    int dir;
    flow_real *x, *y, *w, *u, *ld;
} objective;

static double obj_eval(const objective *o)
{
    size_t n = o->L->n, nd = n * o->L->d;
    double s = 0;
    if (run(o->L, o->dir, n, o->x, o->y, o->ld) != FLOW_OK)
        return NAN;
    for (size_t i = 0; i < nd; i++)
        s += (double)o->w[i] * o->y[i];
    for (size_t i = 0; i < n; i++)
        s += (double)o->u[i] * o->ld[i];
    return s;
}

typedef struct slot_env {
    const objective *o;
    flow_real *slot;
    flow_real keep;
} slot_env;

static int slot_eval(void *e, double delta, double *actual, double *out)
{
    slot_env *se = e;
    *se->slot = nudge(se->keep, delta, actual);
    *out = obj_eval(se->o);
    *se->slot = se->keep;
    return isfinite(*out) ? 0 : -1;
}

/* dL/d(*slot) by kink-aware finite differences (NaN if L fails). */
static double fd_slot(const objective *o, flow_real *slot, double *unc)
{
    slot_env se = {o, slot, *slot};
    double d, u, buf[FD_POINTS + 2];
    if (fd_robust(slot_eval, &se, FD_STEP * fmax(1.0, fabs(se.keep)), 1, &d,
                  &u, buf) != 0)
        return NAN;
    if (unc)
        *unc = u;
    return d;
}

/* Relative disagreement of an analytic derivative with its finite
 * difference, beyond the finite difference's own uncertainty. */
static double fd_err(double analytic, const objective *o, flow_real *slot)
{
    double u = 0, fd = fd_slot(o, slot, &u);
    return fmax(0.0, fabs(analytic - fd) - u) / fmax(1.0, fabs(fd));
}

/* VJPs against finite differences for inputs, a sample of parameters and
 * the context. */
static void check_vjp(layer_run *L, const conform_opts *o,
                      conform_report *rep, const flow_real *x0, int dir)
{
    size_t n = L->n, d = L->d, nd = n * d, k = L->k, np = L->desc.n_params;
    flow_real *x = malloc(nd * sizeof *x), *y = malloc(nd * sizeof *y);
    flow_real *w = malloc(nd * sizeof *w), *u = malloc(n * sizeof *u);
    flow_real *gx = malloc(nd * sizeof *gx), *ld = malloc(n * sizeof *ld);
    double ex = 0, ep = 0, ec = 0;
    const char *dname = dir ? "inverse" : "forward";
    objective ob = {L, dir, x, y, w, u, ld};
    char name[48];
    flow_call c;
    conform_row *r;
    int rc;

    if (!x || !y || !w || !u || !gx || !ld)
        goto done;
    memcpy(x, x0, nd * sizeof *x);
    if (dir == 1) {             /* test the inverse at the image of x0 */
        if (run(L, 0, n, x0, x, ld) != FLOW_OK)
            goto done;
    }
    for (size_t i = 0; i < nd; i++)
        w[i] = (flow_real)rng_normal1(&L->rng);
    for (size_t i = 0; i < n; i++)
        u[i] = (flow_real)rng_normal1(&L->rng);
    if ((rc = run(L, dir, n, x, y, ld)) != FLOW_OK)
        goto done;
    memset(L->grad, 0, (np + 1) * sizeof *L->grad);
    memset(L->dctx, 0, (n * k + 1) * sizeof *L->dctx);
    fill_call(L, &c, n, L->grad, k ? L->dctx : NULL);
    rc = dir ? L->t->inverse_backward(L->self, &c, x, y, w, u, gx)
             : L->t->forward_backward(L->self, &c, x, y, w, u, gx);
    if (rc == FLOW_OK && L->t->finish_grad)
        rc = L->t->finish_grad(L->self, &c, L->grad);
    snprintf(name, sizeof name, "backward runs (%s)", dname);
    r = add_row(rep, name, rc == FLOW_OK && all_finite(gx, nd) ? 0 : 1, 0);
    if (rc != FLOW_OK) {
        note(r, "error: %s", L->err);
        goto done;
    }
    for (size_t i = 0; i < nd; i++)
        ex = fmax(ex, fd_err(gx[i], &ob, &x[i]));
    snprintf(name, sizeof name, "d/d input vs FD (%s)", dname);
    add_row(rep, name, ex, TOL_FD);
    if (np) {
        size_t checks = np < o->max_param_checks ? np : o->max_param_checks;
        for (size_t q = 0; q < checks; q++) {
            size_t j = checks == np ? q : (size_t)rng_below(&L->rng, np);
            ep = fmax(ep, fd_err(L->grad[j], &ob, &L->params[j]));
        }
        snprintf(name, sizeof name, "d/d params vs FD (%s)", dname);
        r = add_row(rep, name, ep, TOL_FD);
        note(r, "%zu of %zu parameters", checks, np);
    }
    if (k) {
        for (size_t i = 0; i < n * k; i++)
            ec = fmax(ec, fd_err(L->dctx[i], &ob, &L->ctxv[i]));
        snprintf(name, sizeof name, "d/d context vs FD (%s)", dname);
        add_row(rep, name, ec, TOL_FD);
    }
done:
    free(x);
    free(y);
    free(w);
    free(u);
    free(gx);
    free(ld);
}

int conform_layer(flow_ctx *ctx, const flow_layer_type *t, const char *file,
                  const flow_attr_value *attrs, const conform_opts *o,
                  conform_report *rep)
{
    layer_run L;
    flow_real *x = NULL, *y = NULL, *xb = NULL, *y2 = NULL, *ld = NULL,
              *ld2 = NULL;
    size_t nd;
    int rc;

    memset(rep, 0, sizeof *rep);
    if (o->dim == 0 || o->dim > 4096)
        return ctx_error(ctx, FLOW_ERR_INVAL, "check dimension must be in "
                         "1..4096, got %zu", o->dim);
    rc = layer_build(ctx, &L, t, file, attrs, o);
    if (rc != FLOW_OK)
        goto done;
    nd = L.n * L.d;
    x = malloc(nd * sizeof *x);
    y = malloc(nd * sizeof *y);
    xb = malloc(nd * sizeof *xb);
    y2 = malloc(nd * sizeof *y2);
    ld = malloc(L.n * sizeof *ld);
    ld2 = malloc(L.n * sizeof *ld2);
    if (!x || !y || !xb || !y2 || !ld || !ld2) {
        rc = ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    draw_inputs(&L, o, x);
    check_maps(&L, o, rep, x, y, xb, ld, ld2, y2);
    check_jacobian(&L, rep, x, 0, "forward");
    if (has(&L, FLOW_LAYER_INVERSE))
        check_jacobian(&L, rep, y, 1, "inverse");
    if (has(&L, FLOW_LAYER_BACKWARD_FORWARD) && L.t->forward_backward)
        check_vjp(&L, o, rep, x, 0);
    else
        skip_row(rep, "backward (forward)", "not provided");
    if (has(&L, FLOW_LAYER_BACKWARD_INVERSE) && L.t->inverse_backward)
        check_vjp(&L, o, rep, x, 1);
    else
        skip_row(rep, "backward (inverse)", "not provided");
    rc = FLOW_OK;
done:
    layer_free(&L);
    free(x);
    free(y);
    free(xb);
    free(y2);
    free(ld);
    free(ld2);
    return rc;
}
