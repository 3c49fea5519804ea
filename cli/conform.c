/* conform.c - numerical conformance checks of a layer type through the
 * plugin ABI alone: what `flowkit check` and the plugin tests run. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <lapacke.h>

#include "conform.h"
#include "conform_guard.h"
#include "../runtime/rng.h"     /* the same streams as the runtime (runtime/librng.la) */

/* Tolerances (documented in docs/plugins.md): float64 builds are held to
 * near machine precision, float32 builds to what central differences in
 * single precision can resolve. */
#if FLOW_REAL_DOUBLE
# define TOL_ROUNDTRIP 1e-9
# define TOL_LOGDET 1e-9
# define FD_STEP 1e-6
# define TOL_FD 1e-6
#else
# define TOL_ROUNDTRIP 1e-4
# define TOL_LOGDET 1e-4
# define FD_STEP 1e-2
# define TOL_FD 2e-3
#endif
/* The density check's error is the grid's (midpoint rule, DENSITY_GRID^2
 * cells) and the mass outside it, not the precision's. */
#define TOL_DENSITY 2e-3
#define DENSITY_GRID 200
#define DENSITY_SAMPLES 4000
/* Estimated log-dets: the mean of the estimates may differ from the exact
 * value by at most this many standard errors. */
#define TOL_ZSCORE 5.0

/* Staging slots: each buffer of a call gets a guarded copy of its own,
 * sized to the call, so that a write one element past it hits a guard. */
enum stage { ST_X, ST_Y, ST_LD, ST_DY, ST_DX, ST_PARAMS, ST_GRAD, ST_BUF,
             ST_CTX, ST_DCTX, ST_N };

typedef struct layer_run {
    const flow_layer_type *t;
    void *self;
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t *dep_vec;
    flow_param_tensor *tensors; /* desc.tensors, host-owned               */
    size_t tensors_cap;         /* its entries                            */
    size_t n, d, k;
    size_t nrand;               /* random rows; edge rows follow          */
    size_t row0;                /* first row of the current call (context) */
    int training;               /* flow_call.training of the calls        */
    int has_bounds;
    double lo, hi;
    flow_real *params, *buffers, *grad, *ctxv, *dctx;
    flow_real *p0, *eps;        /* initial parameters, perturbation noise */
    double perturb;             /* params = p0 + perturb * eps            */
    void *ws;
    size_t ws_bytes;            /* what workspace() asked for this call   */
    guard_buf ws_g;             /* the workspace, guarded in place        */
    guard_buf stage[ST_N];      /* guarded copies of what calls are handed */
    size_t guard;               /* bytes per guard region                 */
    guard_log glog;             /* what the layer's calls did wrong       */
    flow_rng rng;               /* the checker's own draws                */
    flow_rng crng, crng0;       /* the layer's stream: every call starts
                                   from crng0, so a stochastic layer is a
                                   deterministic function of its inputs
                                   (common random numbers for the FDs)   */
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
    o->large = 100;
    o->model_checks = 1;
    o->estimates = 256;
    o->directions = 2;
}

void conform_tolerances(conform_tols *t)
{
    t->roundtrip = TOL_ROUNDTRIP;
    t->logdet = TOL_LOGDET;
    t->fd = TOL_FD;
    t->fd_step = FD_STEP;
    t->density = TOL_DENSITY;
    t->zscore = TOL_ZSCORE;
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
    c->ctx = L->k ? L->ctxv + L->row0 * L->k : NULL;
    c->dctx = dctx;
    c->ws = L->ws;
    c->ws_bytes = L->ws_bytes;
    c->rng = &L->crng;
    c->training = L->training;
    c->err = L->err;
    c->err_cap = sizeof L->err;
}

/* Every call into the layer goes through the functions below: the layer
 * sees guarded copies of its inputs and outputs (conform_guard.h), and
 * after the call the guards and inputs are checked (the rows "writes stay
 * in bounds" and "inputs unchanged") and the outputs copied back, so a
 * stray write neither corrupts the checker nor spoils later checks. */

/* Points c at guarded copies of the parameters (written by init and
 * data_init, an input to every other call), the buffers, the context and
 * the gradients, and at the guarded workspace; returns the parameters'
 * copy when they are written. */
static flow_real *stage_call(layer_run *L, guard_call *f, const char *call,
                             flow_call *c, int params_out)
{
    size_t np = L->desc.n_params;
    flow_real *p = NULL;
    guard_begin(f, &L->glog, call, L->guard);
    if (params_out)
        c->params = p = guard_out(f, &L->stage[ST_PARAMS], "params",
                                  L->params, np, 1);
    else
        c->params = guard_in(f, &L->stage[ST_PARAMS], "params", L->params,
                             np, 1);
    c->buffers = guard_out(f, &L->stage[ST_BUF], "buffers", L->buffers,
                           L->desc.n_buffers, 1);
    if (c->ctx)
        c->ctx = guard_in(f, &L->stage[ST_CTX], "ctx", c->ctx, c->n, L->k);
    if (c->grad)
        c->grad = guard_out(f, &L->stage[ST_GRAD], "grad", c->grad, np, 1);
    if (c->dctx)
        c->dctx = guard_out(f, &L->stage[ST_DCTX], "dctx", c->dctx, c->n,
                            L->k);
    c->ws = guard_keep(f, &L->ws_g, "ws", L->ws_bytes);
    return p;
}

/* the status of a call the checker could not stage */
static int no_stage(layer_run *L)
{
    snprintf(L->err, sizeof L->err, "the checker is out of memory");
    return FLOW_ERR_NOMEM;
}

/* The workspace of one call: exactly what workspace() asks for, so that
 * its guard starts where the layer's share ends. */
static int ensure_ws(layer_run *L, size_t n, int dir)
{
    L->ws_bytes = L->t->workspace ? L->t->workspace(L->self, n, dir) : 0;
    if (guard_reserve(&L->ws_g, L->ws_bytes, L->guard) != 0)
        return -1;
    L->ws = L->ws_g.p;
    return 0;
}

static int call_prepare(layer_run *L, size_t n)
{
    flow_call c;
    guard_call f;
    int rc;
    if (!L->t->prepare)
        return FLOW_OK;
    fill_call(L, &c, n, NULL, NULL);
    stage_call(L, &f, "prepare", &c, 0);
    rc = f.nomem ? no_stage(L) : L->t->prepare(L->self, &c);
    guard_end(&f);
    return rc;
}

/* dir 0: forward x -> y; dir 1: inverse.  Returns the plugin's status. */
static int run(layer_run *L, int dir, size_t n, const flow_real *in,
               flow_real *out, flow_real *ld)
{
    flow_call c;
    guard_call f;
    const flow_real *gin;
    flow_real *gout, *gld;
    int rc;
    if (ensure_ws(L, n, dir) != 0)
        return FLOW_ERR_NOMEM;
    L->crng = L->crng0;
    L->err[0] = '\0';
    if ((rc = call_prepare(L, n)) != FLOW_OK)
        return rc;
    fill_call(L, &c, n, NULL, NULL);
    stage_call(L, &f, dir ? "inverse" : "forward", &c, 0);
    gin = guard_in(&f, &L->stage[ST_X], dir ? "z" : "x", in, n, L->d);
    gout = guard_out(&f, &L->stage[ST_Y], dir ? "x" : "z", out, n, L->d);
    gld = guard_out(&f, &L->stage[ST_LD], "logdet", ld, n, 1);
    rc = f.nomem ? no_stage(L)
       : dir ? L->t->inverse(L->self, &c, gin, gout, gld)
             : L->t->forward(L->self, &c, gin, gout, gld);
    guard_end(&f);
    return rc;
}

/* The backward of direction dir after the matching run(): inputs x,
 * outputs y, their cotangents w and u; writes the input gradient gx and
 * accumulates into L->grad and dctx (NULL: none); then finish_grad. */
static int run_backward(layer_run *L, int dir, size_t n, const flow_real *x,
                        const flow_real *y, const flow_real *w,
                        const flow_real *u, flow_real *gx, flow_real *dctx)
{
    size_t d = L->d;
    flow_call c;
    guard_call f;
    const flow_real *gx_in, *gy, *gw, *gu;
    flow_real *gdx;
    int rc;
    fill_call(L, &c, n, L->grad, dctx);
    stage_call(L, &f, dir ? "inverse_backward" : "forward_backward", &c, 0);
    gx_in = guard_in(&f, &L->stage[ST_X], dir ? "z" : "x", x, n, d);
    gy = guard_in(&f, &L->stage[ST_Y], dir ? "x" : "z", y, n, d);
    gw = guard_in(&f, &L->stage[ST_DY], dir ? "dx" : "dz", w, n, d);
    gu = guard_in(&f, &L->stage[ST_LD], "dlogdet", u, n, 1);
    gdx = guard_out(&f, &L->stage[ST_DX], dir ? "dz" : "dx", gx, n, d);
    rc = f.nomem ? no_stage(L)
       : dir ? L->t->inverse_backward(L->self, &c, gx_in, gy, gw, gu, gdx)
             : L->t->forward_backward(L->self, &c, gx_in, gy, gw, gu, gdx);
    guard_end(&f);
    if (rc != FLOW_OK || !L->t->finish_grad)
        return rc;
    fill_call(L, &c, n, L->grad, dctx);
    stage_call(L, &f, "finish_grad", &c, 0);
    rc = f.nomem ? no_stage(L) : L->t->finish_grad(L->self, &c, c.grad);
    guard_end(&f);
    return rc;
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

/* "forward runs, finite" or its inverse twin (out named out_name): the
 * status, then where the first non-finite output or log-det is.  Returns
 * 1 when the call ran and everything is finite. */
static int finite_row(const layer_run *L, conform_report *rep,
                      const char *name, int rc, const char *out_name,
                      const flow_real *out, const flow_real *ld)
{
    size_t n = L->n, d = L->d, i = 0, j = 0;
    conform_row *r;
    while (i < n * d && isfinite(out[i]))
        i++;
    while (j < n && isfinite(ld[j]))
        j++;
    r = add_row(rep, name, rc == FLOW_OK && i == n * d && j == n ? 0 : 1, 0);
    if (rc != FLOW_OK)
        note(r, "error: %s", L->err);
    else if (i < n * d && i / d <= j)   /* a NaN without its sign */
        note(r, "row %zu%s, column %zu: %s = %g", i / d, i / d < L->nrand
             ? "" : " (an edge row)", i % d, out_name,
             isnan(out[i]) ? NAN : (double)out[i]);
    else if (j < n)
        note(r, "row %zu%s: logdet = %g", j, j < L->nrand ? ""
             : " (an edge row)", isnan(ld[j]) ? NAN : (double)ld[j]);
    else
        note(r, "%zu rows: %zu random, %zu at the domain's edges", n,
             L->nrand, n - L->nrand);
    return r && r->pass;
}

static void layer_free(layer_run *L)
{
    if (L->self)
        L->t->destroy(L->self);
    free(L->dep_vec);
    free(L->tensors);
    free(L->params);
    free(L->p0);
    free(L->eps);
    free(L->buffers);
    free(L->grad);
    free(L->ctxv);
    free(L->dctx);
    guard_free(&L->ws_g);
    for (int i = 0; i < ST_N; i++)
        guard_free(&L->stage[i]);
}

static void set_perturbation(layer_run *L, double s)
{
    L->perturb = s;
    for (size_t i = 0; i < L->desc.n_params; i++)
        L->params[i] = (flow_real)(L->p0[i] + s * L->eps[i]);
}

/* Random parameters of moderate strength: the perturbation is halved (at
 * most CALIBRATE_TRIES times) until the log-det of every random row stays
 * within +-CALIBRATE_LOGDET.  A wide conditioner perturbed by o->perturb
 * per weight can otherwise make splines so steep or so flat that no
 * finite difference (or density grid) resolves them in float32. */
#define CALIBRATE_LOGDET 2.0
#define CALIBRATE_TRIES 10
static void calibrate(layer_run *L, const flow_real *x, flow_real *y,
                      flow_real *ld)
{
    for (int tries = 0; tries < CALIBRATE_TRIES; tries++) {
        double worst = 0;
        if (run(L, 0, L->nrand, x, y, ld) != FLOW_OK)
            return;
        for (size_t i = 0; i < L->nrand; i++)
            worst = fmax(worst, isfinite(ld[i]) ? fabs(ld[i]) : INFINITY);
        if (worst <= CALIBRATE_LOGDET)
            return;
        set_perturbation(L, L->perturb / 2);
    }
}

/* describe() into `desc` (struct_size and dep_vec set by the caller) with
 * a host-owned tensor table of CONFORM_TENSORS entries, grown to the
 * layer's count and described again when it names more; *tab receives
 * the table (the caller frees it). */
#define CONFORM_TENSORS 64
static int describe_named(layer_run *L, flow_layer_desc *desc,
                          flow_param_tensor **tab, size_t *tab_cap,
                          flow_diag *diag)
{
    size_t cap = CONFORM_TENSORS;
    int32_t *vec = desc->dep_vec;
    int rc;
    for (int pass = 0; pass < 2; pass++) {
        free(*tab);
        *tab_cap = 0;
        if (!(*tab = calloc(cap, sizeof **tab)))
            return FLOW_ERR_NOMEM;
        *tab_cap = cap;
        memset(desc, 0, sizeof *desc);
        desc->struct_size = sizeof *desc;
        desc->dep_vec = vec;
        desc->tensors = *tab;
        desc->tensors_cap = cap;
        if ((rc = L->t->describe(&L->cfg, desc, diag)) != FLOW_OK)
            return rc;
        if (desc->n_tensors <= cap || desc->n_tensors > (1u << 20))
            break;
        cap = desc->n_tensors;
    }
    return FLOW_OK;
}

static int layer_build(flow_ctx *ctx, layer_run *L, const flow_layer_type *t,
                       const char *file, const flow_attr_value *attrs,
                       const conform_opts *o, size_t n_edge)
{
    flow_diag diag;
    flow_call c;
    int rc;
    memset(L, 0, sizeof *L);
    L->t = t;
    L->d = o->dim;
    L->k = o->context_dim;
    L->nrand = o->rows ? o->rows : 4;
    L->n = L->nrand + n_edge;
    L->has_bounds = o->has_bounds;
    L->lo = o->lo;
    L->hi = o->hi;
    L->guard = guard_size((L->d > L->k ? L->d : L->k) * sizeof(flow_real));
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
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    L->desc.dep_vec = L->dep_vec;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    if ((rc = describe_named(L, &L->desc, &L->tensors, &L->tensors_cap,
                             &diag)) != FLOW_OK)
        return flow_ctx_error(ctx, rc, "%s (%s): describe: %s", t->name, file,
                              diag.message);
    if (!(L->desc.flags & FLOW_LAYER_FORWARD) || !t->forward)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "%s (%s): layer has no "
                              "forward direction", t->name, file);
    if ((L->desc.flags & FLOW_LAYER_INVERSE) && !t->inverse)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "%s (%s): declares an "
                              "inverse but inverse() is NULL", t->name, file);
    L->params = calloc(L->desc.n_params + 1, sizeof *L->params);
    L->p0 = calloc(L->desc.n_params + 1, sizeof *L->p0);
    L->eps = calloc(L->desc.n_params + 1, sizeof *L->eps);
    L->grad = calloc(L->desc.n_params + 1, sizeof *L->grad);
    L->buffers = calloc(L->desc.n_buffers + 1, sizeof *L->buffers);
    L->ctxv = calloc(L->n * L->k + 1, sizeof *L->ctxv);
    L->dctx = calloc(L->n * L->k + 1, sizeof *L->dctx);
    if (!L->params || !L->p0 || !L->eps || !L->grad || !L->buffers
        || !L->ctxv || !L->dctx)
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (!(L->self = t->create(flow_host_services(), &L->cfg, &diag)))
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "%s (%s): create: %s",
                              t->name, file, diag.message);
    rng_seed(&L->rng, o->seed);
    rng_seed(&L->crng0, o->seed ^ 0xc0ffee5eedull);
    if (t->init) {
        guard_call f;
        flow_real *p;
        fill_call(L, &c, 0, NULL, NULL);
        c.rng = &L->rng;
        p = stage_call(L, &f, "init", &c, 1);
        rc = f.nomem ? no_stage(L) : t->init(L->self, &c, p);
        guard_end(&f);
        if (rc != FLOW_OK)
            return flow_ctx_error(ctx, rc, "%s (%s): init: %s", t->name,
                                  file, L->err);
    }
    memcpy(L->p0, L->params, L->desc.n_params * sizeof *L->p0);
    for (size_t i = 0; i < L->desc.n_params; i++)
        L->eps[i] = (flow_real)rng_normal1(&L->rng);
    set_perturbation(L, o->perturb);
    for (size_t i = 0; i < L->n * L->k; i++)
        L->ctxv[i] = (flow_real)rng_normal1(&L->rng);
    return FLOW_OK;
}

/* The spline bound B of a layer: a REAL attribute named "bound" at any
 * depth of the resolved attributes (0 when there is none). */
static double find_bound(const flow_attr_spec *spec, const flow_attr_value *v)
{
    for (size_t i = 0; spec && v && spec[i].name; i++) {
        if (spec[i].type == FLOW_ATTR_REAL && !strcmp(spec[i].name, "bound"))
            return v[i].r;
        if (spec[i].type == FLOW_ATTR_VARIANT && spec[i].alternatives
            && v[i].i >= 0) {
            const flow_variant_alt *alt = spec[i].alternatives;
            int64_t n = 0;
            while (alt[n].name)
                n++;
            if (v[i].i < n) {
                double b = find_bound(alt[v[i].i].attrs, v[i].sub);
                if (b > 0)
                    return b;
            }
        }
    }
    return 0;
}

/* Edge rows of the test batch (see conform_opts); writes them to x when
 * it is not NULL and returns how many there are. */
static size_t edge_rows(const conform_opts *o, double bound, size_t d,
                        flow_real *x)
{
    size_t n = 0;
    if (o->has_bounds) {
        double w = o->hi - o->lo, in = 0.005 * w;
        for (int flip = 0; flip < 2; flip++, n++)
            for (size_t j = 0; x && j < d; j++)
                x[n * d + j] = (flow_real)((j + (size_t)flip) % 2
                                           ? o->hi - in : o->lo + in);
        for (size_t j = 0; x && j < d; j++)
            x[n * d + j] = (flow_real)(o->lo + 0.5 * w);
        return n + 1;
    }
    for (size_t j = 0; x && j < d; j++)         /* zeros */
        x[j] = 0;
    n++;
    if (o->large > 0) {
        for (size_t j = 0; x && j < d; j++)
            x[n * d + j] = (flow_real)((j % 2 ? -1 : 1) * o->large
                                       * (1 + 0.25 * (double)(j % 3)));
        n++;
    }
    if (bound > 0) {
        /* at the bound, just inside, just outside, deep in the tail */
        static const double at[4] = {-1, 1 - 1e-3, -(1 + 1e-3), 3};
        for (int flip = 0; flip < 2; flip++, n++)
            for (size_t j = 0; x && j < d; j++)
                x[n * d + j] = (flow_real)((flip ? -1 : 1) * bound
                                           * at[(j + (size_t)flip) % 4]);
    }
    return n;
}

static void draw_inputs(layer_run *L, const conform_opts *o, double bound,
                        flow_real *x)
{
    for (size_t i = 0; i < L->nrand * L->d; i++) {
        double v = o->scale * rng_normal1(&L->rng);
        if (o->has_bounds) {
            double u = rng_uniform(&L->rng);
            v = o->lo + (o->hi - o->lo) * (0.02 + 0.96 * u);
        }
        x[i] = (flow_real)v;
    }
    edge_rows(o, bound, L->d, x + L->nrand * L->d);
}

/* Largest finite-difference step for input value v of direction dir: the
 * step must stay inside declared bounds. */
static double max_step(const layer_run *L, int dir, double v)
{
    if (dir != 0 || !L->has_bounds)
        return INFINITY;
    return 0.45 * fmin(v - L->lo, L->hi - v);
}

/* Round trip, log-det sum, determinism, finiteness, batch independence. */
static void check_maps(layer_run *L, conform_report *rep, flow_real *x,
                       flow_real *y, flow_real *xb, flow_real *ld,
                       flow_real *ld2, flow_real *y2)
{
    size_t n = L->n, d = L->d, nd = n * d;
    double e = 0, el = 0;
    size_t worst = 0, wl = 0;
    conform_row *r;
    int rc, fwd_finite;

    rc = run(L, 0, n, x, y, ld);
    fwd_finite = finite_row(L, rep, "forward runs, finite", rc, "z", y, ld);
    if (rc != FLOW_OK)
        return;
    if (!has(L, FLOW_LAYER_INVERSE)) {
        skip_row(rep, "round trip", "layer has no inverse");
    } else if (!fwd_finite) {
        /* the inverse of a NaN says nothing about the inverse */
        skip_row(rep, "inverse runs, finite", "not run: the forward "
                 "produced non-finite values");
        skip_row(rep, "round trip x -> z -> x", "not run: the forward "
                 "produced non-finite values");
    } else {
        rc = run(L, 1, n, y, xb, ld2);
        finite_row(L, rep, "inverse runs, finite", rc, "x", xb, ld2);
        if (rc != FLOW_OK) {
            r = add_row(rep, "round trip x -> z -> x", INFINITY,
                        TOL_ROUNDTRIP);
            note(r, "inverse failed: %s", L->err);
        } else {
            for (size_t i = 0; i < nd; i++) {
                double ei = rel_err(xb[i], x[i]);
                if (!(ei <= e)) {
                    e = ei;
                    worst = i;
                }
            }
            r = add_row(rep, "round trip x -> z -> x", e, TOL_ROUNDTRIP);
            note(r, "worst: row %zu, x = %.9g, back %.9g", worst / d,
                 (double)x[worst], (double)xb[worst]);
            if (!L->desc.logdet_exact) {
                skip_row(rep, "logdet forward + inverse = 0", "estimated "
                         "log-det (see 'logdet estimate unbiased')");
            } else {
                for (size_t i = 0; i < n; i++) {
                    double ei = fabs((double)ld[i] + ld2[i])
                              / fmax(1.0, fabs(ld[i]));
                    if (ei > el) {
                        el = ei;
                        wl = i;
                    }
                }
                r = add_row(rep, "logdet forward + inverse = 0", el,
                            TOL_LOGDET);
                note(r, "worst row %zu: forward %.9g, inverse %.9g", wl,
                     (double)ld[wl], (double)ld2[wl]);
            }
        }
    }
    /* determinism: the same call twice gives the same bits (a stochastic
     * layer gets the same stream both times) */
    rc = run(L, 0, n, x, y2, ld2);
    r = add_row(rep, "deterministic", rc == FLOW_OK
                && !memcmp(y, y2, nd * sizeof *y)
                && !memcmp(ld, ld2, n * sizeof *ld) ? 0 : 1, 0);
    note(r, "same inputs and stream, same bits");
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
}

/* A second instance built from the same seed computes the same bits. */
static void check_same_seed(flow_ctx *ctx, const layer_run *L,
                            const char *file, const conform_opts *o,
                            size_t n_edge, conform_report *rep,
                            const flow_real *x, const flow_real *y,
                            const flow_real *ld)
{
    layer_run L2;
    size_t nd = L->n * L->d;
    flow_real *y2 = malloc(nd * sizeof *y2), *ld2 = malloc(L->n * sizeof *ld2);
    conform_row *r;
    int rc;

    /* the same sequence of calls as the first instance had */
    rc = layer_build(ctx, &L2, L->t, file, L->cfg.attrs, o, n_edge);
    if (rc == FLOW_OK && y2 && ld2)
        calibrate(&L2, x, y2, ld2);
    if (rc != FLOW_OK || !y2 || !ld2) {
        r = add_row(rep, "same seed, same bits", INFINITY, 0);
        note(r, "second instance: %s", rc ? flow_errmsg(ctx)
                                          : "out of memory");
    } else {
        int same_p = !memcmp(L->params, L2.params,
                             L->desc.n_params * sizeof *L->params);
        rc = run(&L2, 0, L->n, x, y2, ld2);
        r = add_row(rep, "same seed, same bits", rc == FLOW_OK && same_p
                    && !memcmp(y, y2, nd * sizeof *y)
                    && !memcmp(ld, ld2, L->n * sizeof *ld) ? 0 : 1, 0);
        note(r, "a second instance from the same seed: %s",
             !same_p ? "parameters differ" : rc != FLOW_OK ? L2.err
             : "parameters and outputs compared");
    }
    layer_free(&L2);
    free(y2);
    free(ld2);
}

/* The first field in which two descriptors differ, as "NAME: A, then B"
 * in buf; 0 when they agree in every field. */
static int desc_diff(const layer_run *L, const flow_layer_desc *a,
                     const flow_param_tensor *ta, const flow_layer_desc *b,
                     const flow_param_tensor *tb, char *buf, size_t cap)
{
#define DIFF_INT(F) \
    if (a->F != b->F) \
        return snprintf(buf, cap, #F ": %llu, then %llu", \
                        (unsigned long long)a->F, \
                        (unsigned long long)b->F), 1
#define DIFF_REAL(F) \
    if (memcmp(&a->F, &b->F, sizeof a->F)) \
        return snprintf(buf, cap, #F ": %.17g, then %.17g", (double)a->F, \
                        (double)b->F), 1
    int vec = a->dep == FLOW_DEP_PERMUTATION || a->dep == FLOW_DEP_COUPLING
              || a->dep == FLOW_DEP_ORDER;
    size_t nt = a->n_tensors < L->tensors_cap ? a->n_tensors
                                              : L->tensors_cap;
    DIFF_INT(flags);
    DIFF_INT(n_params);
    DIFF_INT(n_buffers);
    DIFF_INT(jac);
    DIFF_INT(dep);
    for (size_t i = 0; vec && i < L->d; i++)
        if (a->dep_vec[i] != b->dep_vec[i])
            return snprintf(buf, cap, "dep_vec[%zu]: %ld, then %ld", i,
                            (long)a->dep_vec[i], (long)b->dep_vec[i]), 1;
    DIFF_INT(cert);
    DIFF_REAL(cert_value);
    if ((a->cert_text == NULL) != (b->cert_text == NULL)
        || (a->cert_text && strcmp(a->cert_text, b->cert_text)))
        return snprintf(buf, cap, "cert_text: \"%.40s\", then \"%.40s\"",
                        a->cert_text ? a->cert_text : "(null)",
                        b->cert_text ? b->cert_text : "(null)"), 1;
    DIFF_INT(cost_forward.passes);
    DIFF_INT(cost_forward.sequential);
    DIFF_REAL(cost_forward.flops_per_row);
    DIFF_INT(cost_inverse.passes);
    DIFF_INT(cost_inverse.sequential);
    DIFF_REAL(cost_inverse.flops_per_row);
    DIFF_INT(logdet_exact);
    DIFF_INT(domain);
    DIFF_REAL(domain_lo);
    DIFF_REAL(domain_hi);
    DIFF_INT(n_tensors);
    for (size_t i = 0; i < nt; i++) {
        const char *na = ta[i].name ? ta[i].name : "(null)";
        const char *nb = tb[i].name ? tb[i].name : "(null)";
        if (strcmp(na, nb))
            return snprintf(buf, cap, "tensors[%zu].name: \"%.40s\", then "
                            "\"%.40s\"", i, na, nb), 1;
        if (ta[i].count != tb[i].count || ta[i].flags != tb[i].flags)
            return snprintf(buf, cap, "tensors[%zu] (%.40s): count %zu flags "
                            "%#x, then count %zu flags %#x", i, na,
                            ta[i].count, (unsigned)ta[i].flags, tb[i].count,
                            (unsigned)tb[i].flags), 1;
    }
#undef DIFF_INT
#undef DIFF_REAL
    return 0;
}

/* describe() DESCRIBE_CALLS more times with the same config, after
 * create() and the calls so far: every field must match the first call's
 * (a count that changes makes the host's parameter slices, checkpoints
 * and reports disagree), and describe() must leave the host-owned fields
 * alone.  Then the parameter tensors: their counts sum to n_params. */
#define DESCRIBE_CALLS 3
static void check_describe(layer_run *L, conform_report *rep)
{
    flow_layer_desc d2;
    flow_param_tensor *tab = NULL;
    int32_t *vec = calloc(L->d, sizeof *vec);
    size_t cap = 0, np = L->desc.n_params, nt = L->desc.n_tensors, sum = 0;
    char what[200] = "out of memory";
    int bad = vec == NULL, call = 1, rc;
    conform_row *r;

    for (int k = 0; k < DESCRIBE_CALLS && !bad; k++) {
        flow_diag diag;
        memset(&diag, 0, sizeof diag);
        diag.struct_size = sizeof diag;
        diag.attr = -1;
        memset(vec, 0, L->d * sizeof *vec);
        memset(&d2, 0, sizeof d2);
        d2.dep_vec = vec;
        call = k + 2;
        rc = describe_named(L, &d2, &tab, &cap, &diag);
        diag.message[sizeof diag.message - 1] = '\0';
        if (rc != FLOW_OK)
            bad = snprintf(what, sizeof what, "failed (status %d): %s", rc,
                           diag.message) > 0;
        else if (d2.dep_vec != vec || d2.tensors != tab
                 || d2.tensors_cap != cap || d2.struct_size != sizeof d2)
            bad = snprintf(what, sizeof what, "overwrote a host-owned field "
                           "(struct_size, dep_vec, tensors, tensors_cap)") > 0;
        else if (cap != L->tensors_cap)
            bad = snprintf(what, sizeof what, "n_tensors: %zu, then %zu",
                           L->desc.n_tensors, d2.n_tensors) > 0;
        else
            bad = desc_diff(L, &L->desc, L->tensors, &d2, tab, what,
                            sizeof what);
    }
    r = add_row(rep, "describe() is stable", bad ? 1 : 0, 0);
    if (bad)
        note(r, "call %d: %s", call, what);
    else
        note(r, "%d calls, %d of them after create(): every field the same",
             DESCRIBE_CALLS + 1, DESCRIBE_CALLS);
    free(vec);
    free(tab);
    if (!np && !nt)
        return;
    for (size_t i = 0; i < nt && i < L->tensors_cap; i++)
        sum += L->tensors[i].count;
    if (nt == 0) {
        r = add_row(rep, "tensors sum to n_params", 0, 0);
        note(r, "no tensors named: one tensor of %zu entries", np);
        return;
    }
    for (size_t i = 0; i < nt && i < L->tensors_cap; i++)
        if (!L->tensors[i].name) {
            r = add_row(rep, "tensors sum to n_params", 1, 0);
            note(r, "tensors[%zu] has no name", i);
            return;
        }
    r = add_row(rep, "tensors sum to n_params", nt > L->tensors_cap
                || sum != np ? 1 : 0, 0);
    if (nt > L->tensors_cap)
        note(r, "%zu tensors: more than the %zu the host offered after "
             "asking again", nt, L->tensors_cap);
    else
        note(r, "%zu tensors (%s%s) of %zu entries in all; n_params %zu", nt,
             L->tensors[0].name, nt > 1 ? ", ..." : "", sum, np);
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
/* Checks take the best of four step sizes (h, h/4, h/16, h/64): a wrong
 * formula disagrees at every step, while a knot or strong curvature
 * spoils only some of them. */
#define FD_LEVELS 4
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

/* Jacobian (d x d, double) of the row at x (row L->row0 of the batch, for
 * its context) in direction `dir` with step scale `h0`, and the entries'
 * uncertainties in U. */
static int fd_jacobian(layer_run *L, int dir, const flow_real *x, double h0,
                       double *J, double *U, flow_real *xp, flow_real *yp,
                       flow_real *ld)
{
    size_t d = L->d;
    double *col = malloc(2 * d * sizeof *col);
    double *buf = malloc(FD_POINTS * d * sizeof *buf);
    jac_env je = {L, dir, x, xp, yp, ld, 0};
    int rc = 0;
    if (!col || !buf)
        rc = -1;
    for (size_t j = 0; j < d && rc == 0; j++) {
        double h = fmin(h0 * fmax(1.0, fabs(x[j])), max_step(L, dir, x[j]));
        je.j = j;
        rc = fd_robust(jac_eval, &je, h, d, col, col + d, buf);
        for (size_t i = 0; i < d && rc == 0; i++) {
            J[i * d + j] = col[i];
            U[i * d + j] = col[d + i];
        }
    }
    free(col);
    free(buf);
    return rc;
}

/* log|det J| and its uncertainty from the entries' uncertainties (the
 * spread over J + U and J - U); A and ipiv are scratch. */
static double logdet_fd(const double *J, const double *U, size_t d,
                        double *A, lapack_int *ipiv, double *unc)
{
    double l, alt;
    memcpy(A, J, d * d * sizeof *A);
    l = slogdet(A, d, ipiv);
    *unc = 0;
    for (int sgn = -1; sgn <= 1; sgn += 2) {
        for (size_t i = 0; i < d * d; i++)
            A[i] = J[i] + sgn * U[i];
        alt = slogdet(A, d, ipiv);
        if (isfinite(alt))
            *unc = fmax(*unc, fabs(alt - l));
    }
    return l;
}

/* Per-row results of the Jacobian checks. */
typedef struct jac_result {
    double ld_err, lfd, unc, ldv;   /* log-det error, FD value, layer value */
    double zeros, diagmin;          /* worst declared zero, min |J_ii|   */
    size_t zi, zj;                  /* where the worst declared zero is     */
    double zval, jmax;              /* its J_ij, and max |J|                */
    int failed;                     /* the layer failed near the point      */
} jac_result;

/* FD Jacobian of row `row` of the batch xs in direction dir: log-det
 * against the layer's (best of FD_LEVELS step sizes), declared zeros and
 * the diagonal (finest step). */
static void jacobian_row(layer_run *L, int dir, const flow_real *xs,
                         size_t row, const uint8_t *dep, double *J,
                         double *A, double *U, lapack_int *ipiv,
                         flow_real *buf, jac_result *res)
{
    size_t d = L->d;
    const flow_real *x = xs + row * d;
    double h0 = FD_STEP, jmax = 0;
    flow_real ld[1];

    memset(res, 0, sizeof *res);
    res->ld_err = INFINITY;
    res->lfd = NAN;
    res->diagmin = INFINITY;
    L->row0 = row;
    if (run(L, dir, 1, x, buf, ld) != FLOW_OK) {
        res->failed = 1;
        goto done;
    }
    res->ldv = ld[0];
    for (int lv = 0; lv < FD_LEVELS; lv++, h0 /= 4) {
        double e, unc, lv_l;
        if (fd_jacobian(L, dir, x, h0, J, U, buf, buf + d, ld) != 0) {
            res->failed = 1;
            goto done;
        }
        lv_l = logdet_fd(J, U, d, A, ipiv, &unc);
        e = fmax(0.0, fabs(res->ldv - lv_l) - unc) / fmax(1.0, fabs(lv_l));
        if (!(e >= res->ld_err)) {
            res->ld_err = e;
            res->lfd = lv_l;
            res->unc = unc;
        }
    }
    if (dep) {
        for (size_t i = 0; i < d * d; i++)
            jmax = fmax(jmax, fabs(J[i]));
        res->jmax = jmax;
        for (size_t i = 0; i < d; i++) {
            for (size_t j = 0; j < d; j++)
                if (!dep[i * d + j]
                    && fabs(J[i * d + j]) / fmax(1.0, jmax) > res->zeros) {
                    res->zeros = fabs(J[i * d + j]) / fmax(1.0, jmax);
                    res->zi = i;
                    res->zj = j;
                    res->zval = J[i * d + j];
                }
            res->diagmin = fmin(res->diagmin, fabs(J[i * d + i]));
        }
    }
done:
    L->row0 = 0;
}

/* Log-det against the FD Jacobian on every row of the batch xs; in the
 * forward direction also the declared pattern.  ld_fd (may be NULL)
 * receives each row's FD log|det|. */
static void check_jacobian(layer_run *L, conform_report *rep,
                           const flow_real *xs, int dir, const char *dname,
                           double *ld_fd)
{
    size_t d = L->d;
    double *J = malloc(d * d * sizeof *J), *A = malloc(d * d * sizeof *A);
    double *U = malloc(d * d * sizeof *U);
    double best = 0, worst = 0, diagmin = INFINITY;
    uint8_t *dep = malloc(d * d);
    lapack_int *ipiv = malloc(d * sizeof *ipiv);
    flow_real *buf = malloc(4 * d * sizeof *buf);
    jac_result res, at, zat;
    size_t worst_row = 0, failed_row = 0, zrow = 0;
    int failed = 0, pattern = dir == 0;
    char name[48];
    conform_row *r;

    snprintf(name, sizeof name, "logdet vs FD Jacobian (%s)", dname);
    if (!J || !A || !U || !dep || !ipiv || !buf) {
        add_row(rep, name, INFINITY, 0);
        goto done;
    }
    if (pattern && declared_pattern(L, dep) != 0) {
        r = add_row(rep, "declared pattern vs Jacobian", INFINITY, 0);
        note(r, "cannot expand the declared pattern");
        pattern = 0;
    }
    memset(&at, 0, sizeof at);
    memset(&zat, 0, sizeof zat);
    for (size_t row = 0; row < L->n; row++) {
        jacobian_row(L, dir, xs, row, pattern ? dep : NULL, J, A, U, ipiv,
                     buf, &res);
        if (ld_fd)
            ld_fd[row] = res.lfd;
        if (res.failed) {
            if (!failed++)
                failed_row = row;
            continue;
        }
        if (row == 0 || res.ld_err > best) {
            best = res.ld_err;
            worst_row = row;
            at = res;
        }
        if (res.zeros > worst) {
            worst = res.zeros;
            zrow = row;
            zat = res;
        }
        /* edge rows may sit on a kink (|x| at 0): the diagonal is judged
         * at the random rows */
        if (row < L->nrand)
            diagmin = fmin(diagmin, res.diagmin);
    }
    if (failed) {
        r = add_row(rep, name, INFINITY, TOL_FD);
        note(r, "layer failed at or near row %zu: %s", failed_row, L->err);
        goto done;
    }
    if (!L->desc.logdet_exact) {
        skip_row(rep, name, "estimated log-det (see 'logdet estimate "
                 "unbiased')");
    } else {
        r = add_row(rep, name, best, TOL_FD);
        note(r, "worst row %zu: layer %.9g, log|det| of FD Jacobian %.9g "
             "+- %.2g", worst_row, at.ldv, at.lfd, at.unc);
    }
    if (pattern) {
        r = add_row(rep, "declared zeros are zero", worst, TOL_FD);
        if (worst > 0)
            note(r, "worst row %zu: dz_%zu/dx_%zu = %.6g (max |J| %.3g) "
                 "where the layer declares no dependence", zrow, zat.zi,
                 zat.zj, zat.zval, zat.jmax);
        else
            note(r, "max |J_ij| / max|J| where the layer declares no "
                 "dependence");
        if (L->desc.dep != FLOW_DEP_PERMUTATION
            && L->desc.dep != FLOW_DEP_DENSE) {
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

/* The three Richardson-extrapolated estimates of a scalar derivative
 * (central, forward, backward) and their uncertainties. */
static int fd_sides(fd_eval f, void *env, double h, double est[3],
                    double unc[3])
{
    double a[FD_POINTS], v[FD_POINTS], c1, c2, f1, f2, b1, b2;
    for (int p = 0; p < FD_POINTS; p++)
        if (f(env, fd_frac[p] * h, &a[p], &v[p]) != 0)
            return -1;
    c1 = (v[1] - v[2]) / (a[1] - a[2]);
    c2 = (v[3] - v[4]) / (a[3] - a[4]);
    f1 = (v[3] - v[0]) / (a[3] - a[0]);
    f2 = (v[5] - v[0]) / (a[5] - a[0]);
    b1 = (v[0] - v[4]) / (a[0] - a[4]);
    b2 = (v[0] - v[6]) / (a[0] - a[6]);
    est[0] = (4 * c2 - c1) / 3;
    unc[0] = fabs(est[0] - c2);
    est[1] = 2 * f2 - f1;
    unc[1] = fabs(est[1] - f2);
    est[2] = 2 * b2 - b1;
    unc[2] = fabs(est[2] - b2);
    return 0;
}

/* Relative disagreement of an analytic derivative with its finite
 * difference, beyond the finite difference's own uncertainty, at the best
 * of FD_LEVELS step sizes (steps at most hmax).  At a kink the analytic
 * value may be either one-sided derivative (a subgradient), so it is
 * compared with the central and both one-sided estimates, and the closest
 * counts; a wrong formula disagrees with all of them. */
static double fd_err_fn(double analytic, fd_eval f, void *env, double h,
                        double *fd)
{
    double best = INFINITY, at = NAN;
    for (int lv = 0; lv < FD_LEVELS; lv++, h /= 4) {
        double est[3], unc[3];
        if (fd_sides(f, env, h, est, unc) != 0) {
            at = NAN;
            best = INFINITY;
            break;
        }
        for (int k = 0; k < 3; k++) {
            double e = fmax(0.0, fabs(analytic - est[k]) - unc[k])
                       / fmax(1.0, fabs(est[k]));
            if (e < best) {
                best = e;
                at = est[k];
            }
        }
    }
    if (fd)
        *fd = at;       /* the estimate closest to the analytic value */
    return best;
}

/* fd_err_fn for one slot (an input, parameter or context value). */
static double fd_err_at(double analytic, const objective *o, flow_real *slot,
                        double hmax, double *fd)
{
    slot_env se = {o, slot, *slot};
    return fd_err_fn(analytic, slot_eval, &se,
                     fmin(FD_STEP * fmax(1.0, fabs(se.keep)), hmax), fd);
}

static double fd_err(double analytic, const objective *o, flow_real *slot,
                     double hmax)
{
    return fd_err_at(analytic, o, slot, hmax, NULL);
}

/* Errors of one VJP against finite differences. */
typedef struct vjp_errs {
    double x, p, c;
    size_t checks;              /* parameters checked one by one          */
    size_t dirs;                /* directional checks                     */
    int have_at;                /* the parameter found wrong: at, an, fd  */
    int by_dir;                 /* ... by bisecting a directional check  */
    size_t at, lo, hi;          /* bisection ended on params [lo, hi)    */
    double an, fd;
    size_t x_at;                /* the worst input entry, its two values */
    double x_an, x_fd;
} vjp_errs;

/* ---------------------------------------------------------------------
 * Parameter gradients.  One entry at a time by finite differences is
 * exact but sees only the entries it samples; a directional check
 * compares <g, v> with the derivative of the objective along a dense
 * random direction v (every entry at once), so a single wrong entry j
 * among P moves it by |g_j' - g_j| against a total of about sqrt(P) |g|:
 * far above the tolerance for any sample.  A failing direction is
 * bisected (v restricted to halves of the index range) down to the entry.
 * ------------------------------------------------------------------- */

/* Output columns are exercised in at most this many groups (column i in
 * group i % COL_GROUPS), each by a cotangent selecting it. */
#define COL_GROUPS 16

/* Tensors whose counts sum to n_params, or 0 when the layer names none
 * (or names them inconsistently: the parameters are then "params[j]"). */
static size_t named_tensors(const layer_run *L)
{
    size_t n = L->desc.n_tensors, sum = 0;
    if (n == 0 || n > L->tensors_cap)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!L->tensors[i].name)
            return 0;
        sum += L->tensors[i].count;
    }
    return sum == L->desc.n_params ? n : 0;
}

/* "scale[137] (param 201)", or "params[201]" without named tensors. */
static void param_name(const layer_run *L, size_t j, char *buf, size_t cap)
{
    size_t nt = named_tensors(L), off = 0;
    for (size_t i = 0; i < nt; i++) {
        if (j < off + L->tensors[i].count) {
            snprintf(buf, cap, "%s[%zu] (param %zu)", L->tensors[i].name,
                     j - off, j);
            return;
        }
        off += L->tensors[i].count;
    }
    snprintf(buf, cap, "params[%zu]", j);
}

/* The layer's parameter gradient for ob's cotangents at ob->x, into g
 * (the context gradient is not asked for); gx is scratch.  Returns the
 * plugin's status, -1 for a non-finite gradient. */
static int param_grad(layer_run *L, const objective *ob, flow_real *gx,
                      double *g)
{
    size_t np = L->desc.n_params;
    int rc;
    if ((rc = run(L, ob->dir, L->n, ob->x, ob->y, ob->ld)) != FLOW_OK)
        return rc;
    memset(L->grad, 0, (np + 1) * sizeof *L->grad);
    rc = run_backward(L, ob->dir, L->n, ob->x, ob->y, ob->w, ob->u, gx,
                      NULL);
    if (rc != FLOW_OK)
        return rc;
    if (!all_finite(L->grad, np))
        return -1;
    for (size_t j = 0; j < np; j++)
        g[j] = L->grad[j];
    return FLOW_OK;
}

/* params[lo, hi) = base + delta * v, the objective, params put back.
 * The step reported is the one taken, projected on v: rounding to
 * flow_real moves each entry slightly off base + delta v. */
typedef struct dir_env {
    const objective *o;
    const double *v;
    const flow_real *base;
    size_t lo, hi;
} dir_env;

static int dir_eval(void *e, double delta, double *actual, double *out)
{
    dir_env *de = e;
    flow_real *p = de->o->L->params;
    double num = 0, den = 0;
    for (size_t j = de->lo; j < de->hi; j++) {
        p[j] = (flow_real)(de->base[j] + delta * de->v[j]);
        num += ((double)p[j] - de->base[j]) * de->v[j];
        den += de->v[j] * de->v[j];
    }
    *actual = den > 0 ? num / den : delta;
    *out = obj_eval(de->o);
    for (size_t j = de->lo; j < de->hi; j++)
        p[j] = de->base[j];
    return isfinite(*out) ? 0 : -1;
}

/* Error of <g, v> restricted to [lo, hi) against the FD derivative along
 * v.  v moves m = hi - lo entries by about their own magnitudes, so the
 * objective moves about sqrt(m) times as far as in one entry's check: the
 * step is FD_STEP * min(1, DIR_STEP / sqrt(m)), whose finer levels
 * (FD_LEVELS, each 4 times finer) come down to one entry's scale while
 * the coarser ones stay above float32 rounding of the objective (measured
 * on the bundled conditioners of 17k-29k weights: DIR_STEP 1 gave errors
 * up to half the tolerance, 16 none). */
#define DIR_STEP 16.0
static double dir_err(const objective *o, const double *g, const double *v,
                      const flow_real *base, size_t lo, size_t hi)
{
    dir_env de = {o, v, base, lo, hi};
    double a = 0;
    for (size_t j = lo; j < hi; j++)
        a += g[j] * v[j];
    return fd_err_fn(a, dir_eval, &de, FD_STEP * fmin(1.0, DIR_STEP
                                                  / sqrt((double)(hi - lo))),
                     NULL);
}

/* A direction: random signs, each entry scaled like its own FD step. */
static void draw_direction(flow_rng *rng, const flow_real *base, double *v,
                           size_t np)
{
    for (size_t j = 0; j < np; j++)
        v[j] = (rng_uniform(rng) < 0.5 ? -1 : 1) * fmax(1.0, fabs(base[j]));
}

/* A directional check; on the first failure the wrong entry is found by
 * bisection and checked on its own (analytic and FD values in e). */
static void dir_check(const objective *o, const double *g, const double *v,
                      const flow_real *base, vjp_errs *e)
{
    size_t np = o->L->desc.n_params, lo = 0, hi = np;
    double err = dir_err(o, g, v, base, 0, np);
    e->dirs++;
    e->p = fmax(e->p, err);
    if (!(err > TOL_FD) || e->by_dir || e->have_at)
        return;
    e->by_dir = 1;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (!(dir_err(o, g, v, base, lo, mid) <= TOL_FD))
            hi = mid;
        else if (!(dir_err(o, g, v, base, mid, hi) <= TOL_FD))
            lo = mid;
        else
            break;          /* the error needs entries of both halves */
    }
    e->lo = lo;
    e->hi = hi;
    if (hi - lo == 1) {
        e->have_at = 1;
        e->at = lo;
        e->an = g[lo];
        e->p = fmax(e->p, fd_err_at(g[lo], o, &o->L->params[lo], INFINITY,
                                    &e->fd));
    }
}

/* Cotangents selecting column group c of the outputs (c < ng) or the
 * log-det (c = ng), rows scaled as in check_vjp; positive weights, so
 * the rows cannot cancel.  Reads the outputs at ob->x. */
static int column_cotangent(layer_run *L, const objective *ob, size_t c,
                            size_t ng, flow_real *w, flow_real *u)
{
    size_t n = L->n, d = L->d;
    if (run(L, ob->dir, n, ob->x, ob->y, ob->ld) != FLOW_OK)
        return -1;
    for (size_t i = 0; i < n; i++) {
        double big = 1;
        for (size_t j = 0; j < d; j++)
            big = fmax(big, fabs(ob->y[i * d + j]));
        for (size_t j = 0; j < d; j++)
            w[i * d + j] = (flow_real)(c < ng && j % ng == c ? 1 / big : 0);
        u[i] = (flow_real)(c == ng ? 1 / fmax(1.0, fabs(ob->ld[i])) : 0);
    }
    return 0;
}

/* Adds to sel the entry of [lo, hi) with the largest |g| not yet in it
 * (the first entry when all are 0, if `any`). */
static void pick_largest(const double *g, size_t lo, size_t hi, int any,
                         unsigned char *sel, size_t *nsel)
{
    size_t at = hi;
    double best = 0;
    for (size_t j = lo; j < hi; j++)
        if (!sel[j] && fabs(g[j]) > best) {
            best = fabs(g[j]);
            at = j;
        }
    for (size_t j = lo; at == hi && any && j < hi; j++)
        if (!sel[j])
            at = j;
    if (at < hi) {
        sel[at] = 1;
        (*nsel)++;
    }
}

/* The parameter part of vjp_compare; L->grad holds the gradient for ob's
 * cotangents and is left so.  `columns`: also one cotangent per output
 * column group and one for the log-det, each with a directional check
 * and its entry of largest gradient checked one by one. */
static int check_params(layer_run *L, const conform_opts *o, objective *ob,
                        int columns, flow_real *gx, vjp_errs *e)
{
    size_t np = L->desc.n_params, n = L->n, d = L->d, nt = named_tensors(L);
    size_t ng = columns ? (d < COL_GROUPS ? d : COL_GROUPS) : 0, nsel = 0;
    size_t want = o->params_all ? np : o->max_param_checks, off = 0;
    size_t ndir = o->directions;
    double *g0 = malloc(np * sizeof *g0), *gc = malloc(np * sizeof *gc);
    double *v = malloc(np * sizeof *v);
    flow_real *base = malloc(np * sizeof *base);
    flow_real *w = malloc(n * d * sizeof *w), *u = malloc(n * sizeof *u);
    unsigned char *sel = calloc(np, 1);
    objective oc = *ob;
    flow_rng rng;
    double worst = 0;
    int rc = FLOW_ERR_NOMEM;

    if (!g0 || !gc || !v || !base || !w || !u || !sel)
        goto done;
    if (want > np)
        want = np;
    for (size_t j = 0; j < np; j++) {
        g0[j] = L->grad[j];
        base[j] = L->params[j];
    }
    rng_seed(&rng, o->seed + 29);       /* the same directions each time */
    for (size_t q = 0; q < ndir; q++) {
        draw_direction(&rng, base, v, np);
        dir_check(ob, g0, v, base, e);
    }
    oc.w = w;
    oc.u = u;
    for (size_t c = 0; columns && c <= ng; c++) {
        if (column_cotangent(L, ob, c, ng, w, u) != 0) {
            rc = FLOW_ERR_NUMERIC;
            goto done;
        }
        if ((rc = param_grad(L, &oc, gx, gc)) != FLOW_OK)
            goto done;
        pick_largest(gc, 0, np, 0, sel, &nsel);
        draw_direction(&rng, base, v, np);
        dir_check(&oc, gc, v, base, e);
    }
    /* the sample: `want` draws from the checker's stream (the same
     * sample, and the same stream left for the later checks, whatever
     * else is checked); then the largest entry of every named tensor not
     * yet covered */
    rng_seed(&L->rng, o->seed + 17);
    for (size_t q = 0; q < want; q++) {
        size_t j = want == np ? q : (size_t)rng_below(&L->rng, np);
        nsel += !sel[j];
        sel[j] = 1;
    }
    for (size_t i = 0; i < nt; off += L->tensors[i++].count) {
        int has = 0;
        for (size_t j = off; j < off + L->tensors[i].count && !has; j++)
            has = sel[j];
        if (!has)
            pick_largest(g0, off, off + L->tensors[i].count, 1, sel, &nsel);
    }
    for (size_t j = 0; j < np; j++) {
        double fd, err;
        if (!sel[j])
            continue;
        err = fd_err_at(g0[j], ob, &L->params[j], INFINITY, &fd);
        if (!(err <= fmax(worst, TOL_FD))) {    /* named over a bisection */
            worst = isfinite(err) ? err : INFINITY;
            e->have_at = 1;
            e->by_dir = 0;
            e->at = j;
            e->an = g0[j];
            e->fd = fd;
        }
        e->p = fmax(e->p, err);
    }
    e->checks = nsel;
    for (size_t j = 0; j < np; j++)
        L->grad[j] = (flow_real)g0[j];
    rc = FLOW_OK;
done:
    free(g0);
    free(gc);
    free(v);
    free(base);
    free(w);
    free(u);
    free(sel);
    return rc;
}

/* The parameter part of a row's note: the failing entry with both values,
 * and what was checked. */
static void params_note(const layer_run *L, const vjp_errs *e, char *buf,
                        size_t cap)
{
    char name[64];
    size_t np = L->desc.n_params;
    int k = 0;
    if (e->p > TOL_FD && e->have_at) {
        param_name(L, e->at, name, sizeof name);
        k = snprintf(buf, cap, "%s: analytic %.6g, FD %.6g%s; ", name, e->an,
                     e->fd, e->by_dir ? " (by bisection)" : "");
    } else if (e->p > TOL_FD && e->by_dir)
        k = snprintf(buf, cap, "a direction over params[%zu..%zu] "
                     "disagrees; ", e->lo, e->hi - 1);
    if (k < 0 || (size_t)k >= cap)
        return;
    snprintf(buf + k, cap - (size_t)k, "%zu of %zu parameters one by one, "
             "%zu directions", e->checks, np, e->dirs);
}


/* Backward of direction dir at the inputs in ob->x with cotangents ob->w
 * (outputs) and ob->u (log-dets), compared with finite differences of the
 * objective; rc is the plugin's status. */
static int vjp_compare(layer_run *L, const conform_opts *o, objective *ob,
                       int columns, flow_real *gx, vjp_errs *e)
{
    size_t n = L->n, d = L->d, nd = n * d, k = L->k, np = L->desc.n_params;
    int dir = ob->dir, rc;

    memset(e, 0, sizeof *e);
    if ((rc = run(L, dir, n, ob->x, ob->y, ob->ld)) != FLOW_OK)
        return rc;
    memset(L->grad, 0, (np + 1) * sizeof *L->grad);
    memset(L->dctx, 0, (n * k + 1) * sizeof *L->dctx);
    rc = run_backward(L, dir, n, ob->x, ob->y, ob->w, ob->u, gx,
                      k ? L->dctx : NULL);
    if (rc != FLOW_OK)
        return rc;
    if (!all_finite(gx, nd) || !all_finite(L->grad, np)
        || !all_finite(L->dctx, n * k))
        return -1;
    for (size_t i = 0; i < nd; i++) {
        double fd, ei = fd_err_at(gx[i], ob, &ob->x[i],
                                  max_step(L, dir, ob->x[i]), &fd);
        if (i == 0 || ei > e->x) {
            e->x = ei;
            e->x_at = i;
            e->x_an = gx[i];
            e->x_fd = fd;
        }
    }
    if (np && (rc = check_params(L, o, ob, columns, gx, e)) != FLOW_OK)
        return rc;
    for (size_t i = 0; i < n * k; i++)
        e->c = fmax(e->c, fd_err(L->dctx[i], ob, &L->ctxv[i], INFINITY));
    return FLOW_OK;
}

/* VJPs against finite differences for inputs, a sample of parameters and
 * the context, first for a random combination of outputs and log-dets,
 * then for the log-dets alone. */
static void check_vjp(layer_run *L, const conform_opts *o,
                      conform_report *rep, const flow_real *x0, int dir,
                      const char *mode)
{
    size_t n = L->n, d = L->d, nd = n * d, k = L->k, np = L->desc.n_params;
    flow_real *x = malloc(nd * sizeof *x), *y = malloc(nd * sizeof *y);
    flow_real *w = malloc(nd * sizeof *w), *u = malloc(n * sizeof *u);
    flow_real *gx = malloc(nd * sizeof *gx), *ld = malloc(n * sizeof *ld);
    const char *dname = dir ? "inverse" : "forward";
    objective ob = {L, dir, x, y, w, u, ld};
    char name[64], tag[32], pnote[160];
    vjp_errs e;
    conform_row *r;
    int rc;

    snprintf(tag, sizeof tag, "%s%s%s", dname, *mode ? ", " : "", mode);
    snprintf(name, sizeof name, "backward runs (%s)", tag);
    if (!x || !y || !w || !u || !gx || !ld) {
        add_row(rep, name, INFINITY, 0);
        goto done;
    }
    memcpy(x, x0, nd * sizeof *x);
    if (dir == 1 && run(L, 0, n, x0, x, ld) != FLOW_OK) {
        r = add_row(rep, name, INFINITY, 0);   /* the inverse at f(x0) */
        note(r, "forward failed: %s", L->err);
        goto done;
    }
    /* cotangents scaled per row by the row's magnitude, so that rows of
     * large values do not drown the others in rounding noise */
    if (run(L, dir, n, x, y, ld) != FLOW_OK) {
        r = add_row(rep, name, INFINITY, 0);
        note(r, "error: %s", L->err);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        double big = 1;
        for (size_t j = 0; j < d; j++)
            big = fmax(big, fabs(y[i * d + j]));
        for (size_t j = 0; j < d; j++)
            w[i * d + j] = (flow_real)(rng_normal1(&L->rng) / big);
        u[i] = (flow_real)(rng_normal1(&L->rng) / fmax(1.0, fabs(ld[i])));
    }
    rc = vjp_compare(L, o, &ob, 1, gx, &e);
    r = add_row(rep, name, rc == FLOW_OK ? 0 : 1, 0);
    if (rc != FLOW_OK) {
        note(r, "%s", rc < 0 ? "non-finite gradient" : L->err);
        goto done;
    }
    snprintf(name, sizeof name, "d/d input vs FD (%s)", tag);
    r = add_row(rep, name, e.x, TOL_FD);
    note(r, "worst row %zu, column %zu: layer %.9g, FD %.9g", e.x_at / d,
         e.x_at % d, e.x_an, e.x_fd);
    if (np) {
        snprintf(name, sizeof name, "d/d params vs FD (%s)", tag);
        r = add_row(rep, name, e.p, TOL_FD);
        params_note(L, &e, pnote, sizeof pnote);
        note(r, "%s", pnote);
    }
    if (k) {
        snprintf(name, sizeof name, "d/d context vs FD (%s)", tag);
        add_row(rep, name, e.c, TOL_FD);
    }
    /* the log-det's own gradient (dL/dout = 0) */
    memcpy(x, x0, nd * sizeof *x);
    if (dir == 1)
        run(L, 0, n, x0, x, ld);
    memset(w, 0, nd * sizeof *w);
    rc = vjp_compare(L, o, &ob, 0, gx, &e);
    snprintf(name, sizeof name, "d logdet vs FD (%s)", tag);
    r = add_row(rep, name, rc == FLOW_OK ? fmax(e.x, fmax(e.p, e.c))
                                         : INFINITY, TOL_FD);
    if (rc != FLOW_OK)
        note(r, "%s", rc < 0 ? "non-finite gradient" : L->err);
    else if (np && e.p > TOL_FD) {
        params_note(L, &e, pnote, sizeof pnote);
        note(r, "params %.2g, %s", e.p, pnote);
    } else
        note(r, "inputs %.2g, params %.2g, context %.2g", e.x, e.p, e.c);
done:
    free(x);
    free(y);
    free(w);
    free(u);
    free(gx);
    free(ld);
}

/* ---------------------------------------------------------------------
 * Unused parameters: every declared entry must change some output or
 * log-det.  An entry is used when the analytic gradient of a random
 * combination of outputs and log-dets is non-zero there (a non-zero
 * gradient for an entry that changes nothing is a wrong gradient, which
 * the "d/d params" rows report), or when moving it by +-UNUSED_STEP and
 * +-8 UNUSED_STEP times max(1, |p|) changes an output or log-det bit.
 * An entry may be inert on many rows legitimately: a ReLU unit dead on
 * every row makes its weights inert, and a spline's knot derivative
 * matters only to rows in the bins next to the knot, so the weight from
 * a unit alive on one side of the input range to a knot on the other is
 * inert (about half the time, for a one-input conditioner).  So besides
 * the checked parameters and batch there are UNUSED_POINTS - 1 more: the
 * layer's own init from other seeds plus noise of the calibrated strength
 * (so zero-initialised outputs are not zero), on the batch's edge rows and
 * fresh random rows of varying spread, UNUSED_ROWS in all (the batch's
 * count when larger), with a fresh context.  Gradients come first (one
 * backward pass per point, only while some entry is left); perturbations,
 * for what is left, at the first UNUSED_PERTURB_POINTS points.  Only
 * entries inert at every point count.  An entry of a tensor flagged
 * FLOW_TENSOR_MASKED may be inert (an autoregressive mask): such a tensor
 * fails only when no entry is used.
 * ------------------------------------------------------------------- */
#define UNUSED_POINTS 32
#define UNUSED_PERTURB_POINTS 8
#define UNUSED_ROWS 64
#define UNUSED_STEP 0.5

/* Scratch of check_unused; its row arrays hold `rows` rows. */
typedef struct unused_ws {
    flow_real *x, *y, *y2, *w, *gx, *ld, *ld2, *u, *keep, *buf, *ctx;
    double *g;
    unsigned char *used, *skip;
    size_t rows, n0;
    flow_real *ctx0;
} unused_ws;

/* Parameters, rows (L->n) and inputs of point pt (0: the checked ones);
 * 0, or -1 when the layer's init fails there. */
static int unused_point(layer_run *L, const conform_opts *o, int pt,
                        const flow_real *x0, unused_ws *s)
{
    size_t np = L->desc.n_params;
    flow_rng rng;
    flow_call c;
    L->n = s->n0;
    L->ctxv = s->ctx0;
    memcpy(s->x, x0, L->n * L->d * sizeof *s->x);
    memcpy(L->params, s->keep, np * sizeof *L->params);
    memcpy(L->buffers, s->buf, L->desc.n_buffers * sizeof *L->buffers);
    if (pt == 0)
        return 0;
    rng_seed(&rng, o->seed * 7919u + 41u + (uint64_t)pt);
    memset(L->params, 0, np * sizeof *L->params);
    memset(L->buffers, 0, L->desc.n_buffers * sizeof *L->buffers);
    if (L->t->init) {
        guard_call f;
        flow_real *p;
        int rc;
        fill_call(L, &c, 0, NULL, NULL);
        c.rng = &rng;
        p = stage_call(L, &f, "init", &c, 1);
        rc = f.nomem ? no_stage(L) : L->t->init(L->self, &c, p);
        guard_end(&f);
        if (rc != FLOW_OK)
            return -1;
    }
    memcpy(L->buffers, s->buf, L->desc.n_buffers * sizeof *L->buffers);
    for (size_t j = 0; j < np; j++)
        L->params[j] = (flow_real)(L->params[j] + L->perturb
                                   * rng_normal1(&rng));
    L->n = s->rows;
    for (size_t i = 0; i < L->n * L->d; i++)
        if (i < L->nrand * L->d || i >= s->n0 * L->d)   /* edge rows stay */
            s->x[i] = (flow_real)(L->has_bounds
                                  ? L->lo + (L->hi - L->lo)
                                    * (0.02 + 0.96 * rng_uniform(&rng))
                                  : o->scale * (0.5 + 0.5 * (pt % 4))
                                    * rng_normal1(&rng));
    for (size_t i = 0; i < L->n * L->k; i++)
        s->ctx[i] = (flow_real)rng_normal1(&rng);
    L->ctxv = s->ctx;
    return 0;
}

/* Entries with a non-zero gradient at the current point. */
static void used_by_gradient(layer_run *L, unused_ws *s, uint64_t seed)
{
    size_t n = L->n, nd = n * L->d, np = L->desc.n_params;
    objective ob = {L, 0, s->x, s->y, s->w, s->u, s->ld};
    flow_rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < nd; i++)
        s->w[i] = (flow_real)rng_normal1(&rng);
    for (size_t i = 0; i < n; i++)
        s->u[i] = (flow_real)rng_normal1(&rng);
    if (param_grad(L, &ob, s->gx, s->g) == FLOW_OK)
        for (size_t j = 0; j < np; j++)
            if (s->g[j] != 0)
                s->used[j] = 1;
}

/* Entries not in skip[] whose perturbation moves an output or log-det
 * bit at the current point. */
static void used_by_perturbation(layer_run *L, unused_ws *s)
{
    static const double steps[4] = {UNUSED_STEP, -UNUSED_STEP,
                                    8 * UNUSED_STEP, -8 * UNUSED_STEP};
    size_t n = L->n, nd = n * L->d, np = L->desc.n_params;
    if (run(L, 0, n, s->x, s->y, s->ld) != FLOW_OK)
        return;
    for (size_t j = 0; j < np; j++) {
        flow_real keep = L->params[j];
        if (s->used[j] || s->skip[j])
            continue;
        for (int k = 0; k < 4 && !s->used[j]; k++) {
            L->params[j] = (flow_real)(keep + steps[k] * fmax(1.0,
                                                              fabs(keep)));
            if (run(L, 0, n, s->x, s->y2, s->ld2) != FLOW_OK
                || memcmp(s->y, s->y2, nd * sizeof *s->y)
                || memcmp(s->ld, s->ld2, n * sizeof *s->ld))
                s->used[j] = 1;
        }
        L->params[j] = keep;
    }
}

/* skip[j] = 1 for the entries that need not be shown used: used ones,
 * and those of a masked tensor some entry of which is used.  Returns how
 * many are left. */
static size_t unused_left(const layer_run *L, unused_ws *s)
{
    size_t np = L->desc.n_params, nt = named_tensors(L), off = 0, left = 0;
    for (size_t t = 0; t < (nt ? nt : 1); t++) {
        size_t cnt = nt ? L->tensors[t].count : np;
        int masked = nt && (L->tensors[t].flags & FLOW_TENSOR_MASKED);
        int any = 0;
        for (size_t j = off; j < off + cnt && masked && !any; j++)
            any = s->used[j];
        for (size_t j = off; j < off + cnt; j++) {
            s->skip[j] = s->used[j] || any;
            left += !s->skip[j];
        }
        off += cnt;
    }
    return left;
}

static void check_unused(layer_run *L, const conform_opts *o,
                         conform_report *rep, const flow_real *x0)
{
    size_t n = L->n > UNUSED_ROWS ? L->n : UNUSED_ROWS, nd = n * L->d;
    size_t np = L->desc.n_params, left, inert = 0, first[4], nfirst = 0;
    int grad = has(L, FLOW_LAYER_BACKWARD_FORWARD)
               && L->t->forward_backward;
    char names[4][64], list[200];
    unused_ws s;
    conform_row *r;

    if (!np)
        return;
    memset(&s, 0, sizeof s);
    s.rows = n;
    s.n0 = L->n;
    s.ctx0 = L->ctxv;
    s.ctx = malloc((n * L->k + 1) * sizeof *s.ctx);
    s.x = malloc(nd * sizeof *s.x);
    s.y = malloc(nd * sizeof *s.y);
    s.y2 = malloc(nd * sizeof *s.y2);
    s.w = malloc(nd * sizeof *s.w);
    s.gx = malloc(nd * sizeof *s.gx);
    s.ld = malloc(n * sizeof *s.ld);
    s.ld2 = malloc(n * sizeof *s.ld2);
    s.u = malloc(n * sizeof *s.u);
    s.keep = malloc(np * sizeof *s.keep);
    s.buf = malloc((L->desc.n_buffers + 1) * sizeof *s.buf);
    s.g = malloc(np * sizeof *s.g);
    s.used = calloc(np, 1);
    s.skip = calloc(np, 1);
    if (!s.x || !s.y || !s.y2 || !s.w || !s.gx || !s.ld || !s.ld2 || !s.u
        || !s.keep || !s.buf || !s.g || !s.used || !s.skip || !s.ctx) {
        add_row(rep, "every parameter is used", INFINITY, 0);
        goto done;
    }
    memcpy(s.keep, L->params, np * sizeof *s.keep);
    memcpy(s.buf, L->buffers, L->desc.n_buffers * sizeof *s.buf);
    left = np;
    for (int pt = 0; grad && pt < UNUSED_POINTS && left; pt++)
        if (unused_point(L, o, pt, x0, &s) == 0) {
            used_by_gradient(L, &s, o->seed * 7919u + 43u + (uint64_t)pt);
            left = unused_left(L, &s);
        }
    for (int pt = 0; pt < UNUSED_PERTURB_POINTS
                     && (left = unused_left(L, &s)); pt++)
        if (unused_point(L, o, pt, x0, &s) == 0)
            used_by_perturbation(L, &s);
    left = unused_left(L, &s);
    L->n = s.n0;
    L->ctxv = s.ctx0;
    memcpy(L->params, s.keep, np * sizeof *L->params);
    memcpy(L->buffers, s.buf, L->desc.n_buffers * sizeof *L->buffers);
    for (size_t j = 0; j < np; j++) {
        inert += !s.used[j];
        if (!s.skip[j] && nfirst < 4)
            first[nfirst++] = j;
    }
    r = add_row(rep, "every parameter is used", (double)left, 0);
    if (!left) {
        if (inert)
            note(r, "%zu of %zu entries change outputs or log-dets; the "
                 "other %zu are in masked tensors", np - inert, np, inert);
        else
            note(r, "each of %zu entries changes outputs or log-dets", np);
        goto done;
    }
    list[0] = '\0';
    for (size_t i = 0; i < nfirst; i++) {
        size_t k = strlen(list);
        param_name(L, first[i], names[i], sizeof names[i]);
        snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", names[i]);
    }
    note(r, "no effect at any point tried: %s%s (%zu of %zu)", list,
         left > nfirst ? ", ..." : "", left, np);
done:
    free(s.x);
    free(s.y);
    free(s.y2);
    free(s.w);
    free(s.gx);
    free(s.ld);
    free(s.ld2);
    free(s.u);
    free(s.keep);
    free(s.buf);
    free(s.g);
    free(s.used);
    free(s.skip);
    free(s.ctx);
}

/* Estimated log-dets (Hutchinson, Russian roulette): the mean of
 * o->estimates independent estimates (training mode, a fresh stream
 * each) must match the exact value (evaluation mode when it is exact
 * there, else the FD Jacobian's log|det|) within TOL_ZSCORE standard
 * errors, where the standard error includes the reference's own
 * uncertainty. */
static void check_estimator(layer_run *L, const conform_opts *o,
                            conform_report *rep, const flow_real *x,
                            const double *ld_fd)
{
    size_t n = L->n, nd = n * L->d, m = o->estimates ? o->estimates : 256;
    flow_real *y = malloc(nd * sizeof *y), *ld = malloc(n * sizeof *ld);
    double *ref = calloc(n, sizeof *ref), *s1 = calloc(n, sizeof *s1);
    double *s2 = calloc(n, sizeof *s2), zmax = 0, at_mean = 0, at_ref = 0;
    flow_rng keep = L->crng0;
    size_t at = 0;
    conform_row *r;
    int rc = FLOW_OK;

    if (!y || !ld || !ref || !s1 || !s2) {
        add_row(rep, "logdet estimate unbiased", INFINITY, TOL_ZSCORE);
        goto done;
    }
    if (L->desc.logdet_exact) {
        L->training = 0;
        rc = run(L, 0, n, x, y, ld);
        for (size_t i = 0; i < n; i++)
            ref[i] = ld[i];
    } else {
        for (size_t i = 0; i < n; i++)
            ref[i] = ld_fd[i];
    }
    L->training = 1;
    for (size_t s = 0; s < m && rc == FLOW_OK; s++) {
        rng_seed(&L->crng0, o->seed * 1000003u + s + 1);
        if ((rc = run(L, 0, n, x, y, ld)) != FLOW_OK)
            break;
        for (size_t i = 0; i < n; i++) {
            s1[i] += ld[i];
            s2[i] += (double)ld[i] * ld[i];
        }
    }
    L->training = 0;
    L->crng0 = keep;
    if (rc != FLOW_OK) {
        r = add_row(rep, "logdet estimate unbiased", INFINITY, TOL_ZSCORE);
        note(r, "error: %s", L->err);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        double mean = s1[i] / (double)m;
        double var = fmax(0.0, s2[i] / (double)m - mean * mean);
        double se2 = var / (double)(m - 1) + pow(TOL_FD * fmax(1.0,
                                                   fabs(ref[i])), 2);
        double z = fabs(mean - ref[i]) / sqrt(se2);
        if (!(z <= zmax)) {
            zmax = z;
            at = i;
            at_mean = mean;
            at_ref = ref[i];
        }
    }
    r = add_row(rep, "logdet estimate unbiased", zmax, TOL_ZSCORE);
    note(r, "standard errors; worst row %zu: mean of %zu estimates %.6g, "
         "exact %.6g", at, m, at_mean, at_ref);
done:
    free(y);
    free(ld);
    free(ref);
    free(s1);
    free(s2);
}

/* data_init through the guards, on the test batch.  Its effect on the
 * parameters and buffers is undone: the model checks start from the
 * checker's parameters and run their own data_init. */
static void guard_data_init(layer_run *L, const flow_real *x)
{
    size_t np = L->desc.n_params, nb = L->desc.n_buffers;
    flow_real *keep, *p;
    const flow_real *gx;
    flow_call c;
    guard_call f;

    if (!has(L, FLOW_LAYER_DATA_INIT) || !L->t->data_init
        || !(keep = malloc((np + nb + 1) * sizeof *keep)))
        return;
    memcpy(keep, L->params, np * sizeof *keep);
    memcpy(keep + np, L->buffers, nb * sizeof *keep);
    if (ensure_ws(L, L->n, 0) == 0 && call_prepare(L, L->n) == FLOW_OK) {
        L->crng = L->crng0;
        fill_call(L, &c, L->n, NULL, NULL);
        p = stage_call(L, &f, "data_init", &c, 1);
        gx = guard_in(&f, &L->stage[ST_X], "x", x, L->n, L->d);
        /* its status is the model checks' business ("one-layer model") */
        if (!f.nomem)
            (void)L->t->data_init(L->self, &c, p, gx);
        guard_end(&f);
    }
    memcpy(L->params, keep, np * sizeof *keep);
    memcpy(L->buffers, keep + np, nb * sizeof *keep);
    free(keep);
}

/* The guards' rows: every call so far (conform_guard.h).  Returns 1 when
 * a call wrote out of bounds or to an input. */
static int guard_rows(const layer_run *L, conform_report *rep)
{
    const guard_log *g = &L->glog;
    conform_row *r = add_row(rep, "writes stay in bounds", (double)g->oob, 0);
    if (g->oob)
        note(r, "%s (%zu of %zu calls)", g->oob_note, g->oob, g->calls);
    else
        note(r, "%zu calls; guards of %zu bytes around every buffer", g->calls,
             L->guard);
    r = add_row(rep, "inputs unchanged", (double)g->inw, 0);
    if (g->inw)
        note(r, "%s (%zu of %zu calls)", g->inw_note, g->inw, g->calls);
    else
        note(r, "inputs, parameters and context of %zu calls bit for bit",
             g->calls);
    return g->oob || g->inw;
}

/* ---------------------------------------------------------------------
 * Model-level checks: the layer inside a one-layer model with a standard
 * normal base, built through the public model API.
 * ------------------------------------------------------------------- */

static size_t attr_count(const flow_layer_type *t)
{
    size_t n = 0;
    while (t->attrs && t->attrs[n].name)
        n++;
    return n;
}

static int model_build(flow_ctx *ctx, const layer_run *L, uint64_t seed,
                       flow_model **out)
{
    const flow_layer_type *t = L->t;
    flow_model *m = flow_model_new(ctx, L->d, L->k);
    size_t na = attr_count(t);
    int rc;
    *out = NULL;
    if (!m)
        return FLOW_ERR_NOMEM;
    rc = flow_model_add_layer(m, t->name, t->name, na ? L->cfg.attrs : NULL,
                              na, L->k > 0, 0, 0);
    if (rc == FLOW_OK)
        rc = flow_model_set_base(m, FLOW_BASE_NORMAL, NULL, 0);
    if (rc == FLOW_OK)
        rc = flow_model_finish(m, seed);
    if (rc != FLOW_OK) {
        flow_model_free(m);
        return rc;
    }
    *out = m;
    return FLOW_OK;
}

/* Saves the model to a temporary checkpoint, restores it into a model
 * built from another seed, and compares the log-probs of the test rows
 * bit for bit. */
static void check_checkpoint(flow_ctx *ctx, const layer_run *L,
                             const conform_opts *o, conform_report *rep,
                             flow_model *m, const flow_real *x)
{
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    size_t n = L->n;
    flow_real *lp1 = malloc(n * sizeof *lp1), *lp2 = malloc(n * sizeof *lp2);
    flow_model *m2 = NULL;
    flow_checkpoint *ck = NULL;
    double diff = 0;
    conform_row *r;
    int fd, rc = FLOW_ERR_NOMEM;

    snprintf(path, sizeof path, "%s/flowkit-check-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if ((fd = mkstemp(path)) < 0) {
        rc = flow_ctx_error(ctx, FLOW_ERR_IO, "cannot create a temporary file "
                            "%s", path);
        path[0] = '\0';
        goto done;
    }
    close(fd);
    if (!lp1 || !lp2)
        goto done;
    if ((rc = flow_checkpoint_save(m, NULL, o->spec_text ? o->spec_text
                                   : "// flowkit check\n", NULL, NULL, path))
        != FLOW_OK
        || (rc = flow_model_log_prob(m, n, x, L->k ? L->ctxv : NULL, lp1))
        != FLOW_OK
        || (rc = flow_checkpoint_open(ctx, path, &ck)) != FLOW_OK
        || (rc = model_build(ctx, L, o->seed + 1, &m2)) != FLOW_OK
        || (rc = flow_checkpoint_restore(ck, m2, NULL)) != FLOW_OK
        || (rc = flow_model_log_prob(m2, n, x, L->k ? L->ctxv : NULL, lp2))
        != FLOW_OK)
        goto done;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&lp1[i], &lp2[i], sizeof lp1[i]))
            diff = fmax(diff, isfinite(lp1[i] - lp2[i])
                              ? fmax(fabs((double)lp1[i] - lp2[i]), 1e-300)
                              : INFINITY);
done:
    r = add_row(rep, "checkpoint round trip", rc == FLOW_OK ? diff
                                                            : INFINITY, 0);
    if (rc != FLOW_OK)
        note(r, "%s", flow_errmsg(ctx));
    else
        note(r, "log-probs of %zu rows bit for bit after restoring into a "
             "model built from another seed", n);
    if (path[0])
        unlink(path);
    flow_checkpoint_free(ck);
    flow_model_free(m2);
    free(lp1);
    free(lp2);
}

/* log-probs of n rows in chunks (bounded workspaces) */
static int log_prob_chunked(flow_model *m, size_t n, const flow_real *x,
                            const flow_real *c, size_t k, flow_real *lp)
{
    const size_t chunk = 8192;
    for (size_t r = 0; r < n; r += chunk) {
        size_t m_rows = n - r < chunk ? n - r : chunk;
        int rc = flow_model_log_prob(m, m_rows, x + 2 * r, c ? c + r * k
                                                             : NULL, lp + r);
        if (rc != FLOW_OK)
            return rc;
    }
    return FLOW_OK;
}

/* For D = 2: the model's density integrates to 1 by the midpoint rule on
 * a DENSITY_GRID^2 grid over [lo, hi]^2 (bounded inputs) or over the box
 * of DENSITY_SAMPLES samples widened by half its size on every side (or
 * [-10, 10]^2 without an inverse).  Context: one fixed row.  A grid cannot
 * resolve arbitrarily sharp densities, so the perturbation is halved
 * until the samples' log-dets stay within +-CALIBRATE_LOGDET, as for the
 * layer checks. */
static void check_density(flow_ctx *ctx, const layer_run *L,
                          conform_report *rep, flow_model *m)
{
    size_t g = DENSITY_GRID, ns = DENSITY_SAMPLES, n = g * g;
    size_t k = L->k, rows = n > ns ? n : ns, np = L->desc.n_params;
    flow_real *pts = malloc(rows * 2 * sizeof *pts);
    flow_real *lp = malloc(rows * sizeof *lp);
    flow_real *cx = k ? malloc(rows * k * sizeof *cx) : NULL;
    flow_real *p = flow_model_params(m);
    double lo[2] = {-10, -10}, hi[2] = {10, 10}, mass = 0, cell;
    double s = L->perturb;
    conform_row *r;
    int rc = FLOW_ERR_NOMEM;

    if (!pts || !lp || (k && !cx))
        goto done;
    for (size_t i = 0; i < rows * k; i++)
        cx[i] = L->ctxv[i % k];
    if (L->desc.flags & FLOW_LAYER_INVERSE) {
        for (int tries = 0; tries < CALIBRATE_TRIES; tries++, s /= 2) {
            double worst = 0;
            for (size_t i = 0; i < np && np <= flow_model_num_params(m); i++)
                p[i] = (flow_real)(L->p0[i] + s * L->eps[i]);
            if ((rc = flow_model_sample(m, ns, cx, pts, NULL)) != FLOW_OK
                || (rc = flow_model_forward(m, ns, pts, cx, pts + 0, lp))
                != FLOW_OK)
                goto done;
            for (size_t i = 0; i < ns; i++)
                worst = fmax(worst, isfinite(lp[i]) ? fabs(lp[i])
                                                    : INFINITY);
            if (worst <= CALIBRATE_LOGDET)
                break;
        }
        if ((rc = flow_model_sample(m, ns, cx, pts, NULL)) != FLOW_OK)
            goto done;
    }
    if (L->has_bounds) {
        lo[0] = lo[1] = L->lo;
        hi[0] = hi[1] = L->hi;
    } else if (L->desc.flags & FLOW_LAYER_INVERSE) {
        lo[0] = lo[1] = INFINITY;
        hi[0] = hi[1] = -INFINITY;
        for (size_t i = 0; i < ns * 2; i++) {
            lo[i % 2] = fmin(lo[i % 2], pts[i]);
            hi[i % 2] = fmax(hi[i % 2], pts[i]);
        }
        for (int j = 0; j < 2; j++) {
            double w = fmax(hi[j] - lo[j], 1e-3);
            lo[j] -= 0.5 * w;
            hi[j] += 0.5 * w;
        }
    }
    for (size_t a = 0; a < g; a++)
        for (size_t b = 0; b < g; b++) {
            pts[2 * (a * g + b)] = (flow_real)(lo[0] + (hi[0] - lo[0])
                                               * ((double)a + 0.5) / g);
            pts[2 * (a * g + b) + 1] = (flow_real)(lo[1] + (hi[1] - lo[1])
                                                   * ((double)b + 0.5) / g);
        }
    if ((rc = log_prob_chunked(m, n, pts, cx, k, lp)) != FLOW_OK)
        goto done;
    cell = (hi[0] - lo[0]) * (hi[1] - lo[1]) / (double)n;
    for (size_t i = 0; i < n; i++)
        mass += exp((double)lp[i]) * cell;
done:
    r = add_row(rep, "density integrates to 1", rc == FLOW_OK
                ? fabs(mass - 1) : INFINITY, TOL_DENSITY);
    if (rc != FLOW_OK)
        note(r, "%s", flow_errmsg(ctx));
    else
        note(r, "mass %.6f on a %zux%zu grid over [%.3g, %.3g] x [%.3g, "
             "%.3g]%s", mass, g, g, lo[0], hi[0], lo[1], hi[1],
             s < L->perturb ? " (perturbation halved)" : "");
    free(pts);
    free(lp);
    free(cx);
}

static void check_model(flow_ctx *ctx, layer_run *L, const conform_opts *o,
                        conform_report *rep, const flow_real *x)
{
    flow_model *m = NULL;
    size_t np, nt = L->nrand > 1 ? L->nrand : L->n;
    flow_real *p;
    double mean;
    conform_row *r;
    int rc = model_build(ctx, L, o->seed, &m);

    /* data-dependent init (its parameters are replaced below; what stays
     * is its buffers, e.g. an "initialised" flag) on the whole batch, and
     * a training step on the random rows (all rows when there is only
     * one: batch statistics need two) */
    if (rc == FLOW_OK)
        rc = flow_model_data_init(m, L->n, x, L->k ? L->ctxv : NULL);
    if (rc == FLOW_OK) {
        /* the layer's (calibrated) parameters: the model's only slice */
        np = flow_model_num_params(m);
        p = flow_model_params(m);
        memcpy(p, L->params, (np < L->desc.n_params ? np : L->desc.n_params)
                             * sizeof *p);
        /* one training-mode pass moves running statistics (buffers) */
        if ((p = malloc((np + 1) * sizeof *p)) == NULL)
            rc = FLOW_ERR_NOMEM;
        else {
            flow_model_set_training(m, 1);
            rc = flow_model_loglik_grad(m, nt, x, L->k ? L->ctxv : NULL,
                                        &mean, p);
            flow_model_set_training(m, 0);
            free(p);
        }
    }
    if (rc != FLOW_OK) {
        r = add_row(rep, "one-layer model", INFINITY, 0);
        note(r, "%s", flow_errmsg(ctx));
        flow_model_free(m);
        return;
    }
    check_checkpoint(ctx, L, o, rep, m, x);
    if (L->d == 2)
        check_density(ctx, L, rep, m);
    else
        skip_row(rep, "density integrates to 1", "only for D = 2");
    flow_model_free(m);
}

/* Without bounds, a layer that declares an input domain (logit: the unit
 * interval) is checked inside it, edge rows included: `od` is o with the
 * domain as its bounds (an open domain's edge rows lie inside it too). */
static const conform_opts *domain_bounds(const flow_layer_type *t,
                                         const flow_attr_value *attrs,
                                         const conform_opts *o,
                                         conform_opts *od)
{
    flow_layer_config cfg;
    flow_layer_desc desc;
    flow_diag diag;
    int32_t *vec;
    int rc;
    if (o->has_bounds || o->dim == 0 || o->dim > 4096
        || !(vec = calloc(o->dim, sizeof *vec)))
        return o;
    memset(&cfg, 0, sizeof cfg);
    cfg.struct_size = sizeof cfg;
    cfg.name = t->name;
    cfg.dim = o->dim;
    cfg.context_dim = o->context_dim;
    cfg.attrs = attrs;
    cfg.host = flow_host_services();
    memset(&desc, 0, sizeof desc);
    desc.struct_size = sizeof desc;
    desc.dep_vec = vec;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    rc = t->describe(&cfg, &desc, &diag);
    free(vec);
    if (rc != FLOW_OK || desc.domain == FLOW_DOMAIN_NONE
        || !isfinite(desc.domain_lo) || !isfinite(desc.domain_hi)
        || !(desc.domain_lo < desc.domain_hi))
        return o;
    *od = *o;
    od->has_bounds = 1;
    od->lo = desc.domain_lo;
    od->hi = desc.domain_hi;
    return od;
}

int conform_layer(flow_ctx *ctx, const flow_layer_type *t, const char *file,
                  const flow_attr_value *attrs, const conform_opts *o_given,
                  conform_report *rep)
{
    conform_opts od;
    const conform_opts *o = domain_bounds(t, attrs, o_given, &od);
    layer_run L;
    flow_real *x = NULL, *y = NULL, *xb = NULL, *y2 = NULL, *ld = NULL,
              *ld2 = NULL;
    double *ld_fd = NULL;
    flow_real *keep_buf = NULL;
    int train_too;
    double bound = o->bound > 0 ? o->bound : find_bound(t->attrs, attrs);
    size_t nd, n_edge = edge_rows(o, bound, o->dim, NULL);
    int rc;

    memset(rep, 0, sizeof *rep);
    memset(&L, 0, sizeof L);
    if (o->dim == 0 || o->dim > 4096)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "check dimension must be "
                              "in 1..4096, got %zu", o->dim);
    rc = layer_build(ctx, &L, t, file, attrs, o, n_edge);
    if (rc != FLOW_OK)
        goto done;
    nd = L.n * L.d;
    x = malloc(nd * sizeof *x);
    y = malloc(nd * sizeof *y);
    xb = malloc(nd * sizeof *xb);
    y2 = malloc(nd * sizeof *y2);
    ld = malloc(L.n * sizeof *ld);
    ld2 = malloc(L.n * sizeof *ld2);
    ld_fd = malloc(L.n * sizeof *ld_fd);
    if (!x || !y || !xb || !y2 || !ld || !ld2 || !ld_fd) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    draw_inputs(&L, o, bound, x);
    calibrate(&L, x, y, ld);
    check_maps(&L, rep, x, y, xb, ld, ld2, y2);
    if (rep->n && !rep->rows[0].pass) {     /* forward failed: stop here */
        guard_rows(&L, rep);
        rc = FLOW_OK;
        goto done;
    }
    check_same_seed(ctx, &L, file, o, n_edge, rep, x, y, ld);
    check_describe(&L, rep);
    check_jacobian(&L, rep, x, 0, "forward", ld_fd);
    if (has(&L, FLOW_LAYER_INVERSE))
        check_jacobian(&L, rep, y, 1, "inverse", NULL);
    if (has(&L, FLOW_LAYER_STOCHASTIC) || !L.desc.logdet_exact)
        check_estimator(&L, o, rep, x, ld_fd);
    /* training mode differs for batch statistics: their backward is
     * checked there too (the buffers its calls update, running averages,
     * are put back).  A stochastic layer's training-mode backward may be an
     * unbiased estimator of the true gradient rather than the derivative
     * of its own sample (the Neumann-series estimator of Residual Flows,
     * Chen et al. 2019, eq. 8), so finite differences do not apply there:
     * its log-det is checked for unbiasedness above instead. */
    train_too = has(&L, FLOW_LAYER_WHOLE_BATCH);
    if (has(&L, FLOW_LAYER_STOCHASTIC))
        skip_row(rep, "backward (training)", "stochastic layer: training "
                 "gradients are estimates; unbiasedness of the log-det is "
                 "checked instead");
    if (train_too && !(keep_buf = malloc((L.desc.n_buffers + 1)
                                         * sizeof *keep_buf))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (train_too)
        memcpy(keep_buf, L.buffers, L.desc.n_buffers * sizeof *keep_buf);
    for (int train = 0; train <= train_too; train++) {
        const char *mode = train ? "training" : "";
        L.training = train;
        if (has(&L, FLOW_LAYER_BACKWARD_FORWARD) && L.t->forward_backward)
            check_vjp(&L, o, rep, x, 0, mode);
        else if (!train)
            skip_row(rep, "backward (forward)", "not provided");
        if (train && has(&L, FLOW_LAYER_INVERSE_TRAINING_ERROR))
            skip_row(rep, "backward (inverse, training)", "the inverse "
                     "runs in evaluation mode only");
        else if (has(&L, FLOW_LAYER_BACKWARD_INVERSE)
                 && L.t->inverse_backward)
            check_vjp(&L, o, rep, x, 1, mode);
        else if (!train)
            skip_row(rep, "backward (inverse)", "not provided");
    }
    L.training = 0;
    if (train_too)
        memcpy(L.buffers, keep_buf, L.desc.n_buffers * sizeof *keep_buf);
    guard_data_init(&L, x);
    check_unused(&L, o, rep, x);
    /* through the runtime, a stray write corrupts its memory (or its
     * caller's data) instead of a guard */
    if (guard_rows(&L, rep) && o->model_checks) {
        const char *why = "not run: the layer writes out of bounds or to "
                          "its inputs (see above)";
        skip_row(rep, "checkpoint round trip", why);
        skip_row(rep, "density integrates to 1", L.d == 2 ? why
                 : "only for D = 2");
    } else if (o->model_checks) {
        check_model(ctx, &L, o, rep, x);
    }
    rc = FLOW_OK;
done:
    layer_free(&L);
    free(x);
    free(y);
    free(xb);
    free(y2);
    free(ld);
    free(ld2);
    free(ld_fd);
    free(keep_buf);
    return rc;
}
