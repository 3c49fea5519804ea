/* conform.c - numerical conformance checks of a layer type through the
 * plugin ABI alone: what `flowkit check` and the plugin tests run. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lapacke.h>

#include "conform_impl.h"

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

void conform_set_shape(flow_layer_config *cfg, const conform_opts *o)
{
    memset(cfg->shape, 0, sizeof cfg->shape);
    if (o->rank > 1 && o->rank <= 4) {
        cfg->rank = o->rank;
        memcpy(cfg->shape, o->shape, o->rank * sizeof *o->shape);
    } else {
        cfg->rank = 1;
        cfg->shape[0] = cfg->dim;
    }
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

conform_row *conform_add_row(conform_report *rep, const char *name, double err,
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

void conform_note(conform_row *r, const char *fmt, ...)
{
    va_list ap;
    if (!r)
        return;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
}

void conform_skip_row(conform_report *rep, const char *name, const char *why)
{
    conform_row *r = conform_add_row(rep, name, 0, 0);
    if (r) {
        r->pass = 1;
        r->skipped = 1;
        conform_note(r, "%s", why);
    }
}

void conform_fill_call(layer_run *L, flow_call *c, size_t n, flow_real *grad,
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
flow_real *conform_stage_call(layer_run *L, guard_call *f, const char *call,
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
int conform_no_stage(layer_run *L)
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
    conform_fill_call(L, &c, n, NULL, NULL);
    conform_stage_call(L, &f, "prepare", &c, 0);
    rc = f.nomem ? conform_no_stage(L) : L->t->prepare(L->self, &c);
    guard_end(&f);
    return rc;
}

/* dir 0: forward x -> y; dir 1: inverse.  Returns the plugin's status. */
int conform_run(layer_run *L, int dir, size_t n, const flow_real *in,
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
    conform_fill_call(L, &c, n, NULL, NULL);
    conform_stage_call(L, &f, dir ? "inverse" : "forward", &c, 0);
    gin = guard_in(&f, &L->stage[ST_X], dir ? "z" : "x", in, n, L->d);
    gout = guard_out(&f, &L->stage[ST_Y], dir ? "x" : "z", out, n, L->d);
    gld = guard_out(&f, &L->stage[ST_LD], "logdet", ld, n, 1);
    rc = f.nomem ? conform_no_stage(L)
       : dir ? L->t->inverse(L->self, &c, gin, gout, gld)
             : L->t->forward(L->self, &c, gin, gout, gld);
    guard_end(&f);
    return rc;
}

/* The backward of direction dir after the matching conform_run(): inputs x,
 * outputs y, their cotangents w and u; writes the input gradient gx and
 * accumulates into L->grad and dctx (NULL: none); then finish_grad. */
int conform_run_backward(layer_run *L, int dir, size_t n, const flow_real *x,
                         const flow_real *y, const flow_real *w,
                         const flow_real *u, flow_real *gx, flow_real *dctx)
{
    size_t d = L->d;
    flow_call c;
    guard_call f;
    const flow_real *gx_in, *gy, *gw, *gu;
    flow_real *gdx;
    int rc;
    conform_fill_call(L, &c, n, L->grad, dctx);
    conform_stage_call(L, &f, dir ? "inverse_backward" : "forward_backward",
                       &c, 0);
    gx_in = guard_in(&f, &L->stage[ST_X], dir ? "z" : "x", x, n, d);
    gy = guard_in(&f, &L->stage[ST_Y], dir ? "x" : "z", y, n, d);
    gw = guard_in(&f, &L->stage[ST_DY], dir ? "dx" : "dz", w, n, d);
    gu = guard_in(&f, &L->stage[ST_LD], "dlogdet", u, n, 1);
    gdx = guard_out(&f, &L->stage[ST_DX], dir ? "dz" : "dx", gx, n, d);
    rc = f.nomem ? conform_no_stage(L)
       : dir ? L->t->inverse_backward(L->self, &c, gx_in, gy, gw, gu, gdx)
             : L->t->forward_backward(L->self, &c, gx_in, gy, gw, gu, gdx);
    guard_end(&f);
    if (rc != FLOW_OK || !L->t->finish_grad)
        return rc;
    conform_fill_call(L, &c, n, L->grad, dctx);
    conform_stage_call(L, &f, "finish_grad", &c, 0);
    rc = f.nomem ? conform_no_stage(L)
                 : L->t->finish_grad(L->self, &c, c.grad);
    guard_end(&f);
    return rc;
}

int conform_has(const layer_run *L, uint32_t flag)
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

int conform_all_finite(const flow_real *v, size_t n)
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
    r = conform_add_row(rep, name, rc == FLOW_OK && i == n * d && j == n
                                   ? 0 : 1, 0);
    if (rc != FLOW_OK)
        conform_note(r, "error: %s", L->err);
    else if (i < n * d && i / d <= j)   /* a NaN without its sign */
        conform_note(r, "row %zu%s, column %zu: %s = %g", i / d,
                     i / d < L->nrand ? "" : " (an edge row)", i % d,
                     out_name, isnan(out[i]) ? NAN : (double)out[i]);
    else if (j < n)
        conform_note(r, "row %zu%s: logdet = %g", j, j < L->nrand ? ""
                     : " (an edge row)", isnan(ld[j]) ? NAN : (double)ld[j]);
    else
        conform_note(r, "%zu rows: %zu random, %zu at the domain's edges", n,
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
static void calibrate(layer_run *L, const flow_real *x, flow_real *y,
                      flow_real *ld)
{
    for (int tries = 0; tries < CALIBRATE_TRIES; tries++) {
        double worst = 0;
        if (conform_run(L, 0, L->nrand, x, y, ld) != FLOW_OK)
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
int conform_describe_named(layer_run *L, flow_layer_desc *desc,
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
    conform_set_shape(&L->cfg, o);
    L->desc.struct_size = sizeof L->desc;
    if (!(L->dep_vec = calloc(L->d, sizeof *L->dep_vec)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    L->desc.dep_vec = L->dep_vec;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    if ((rc = conform_describe_named(L, &L->desc, &L->tensors, &L->tensors_cap,
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
        conform_fill_call(L, &c, 0, NULL, NULL);
        c.rng = &L->rng;
        p = conform_stage_call(L, &f, "init", &c, 1);
        rc = f.nomem ? conform_no_stage(L) : t->init(L->self, &c, p);
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

    rc = conform_run(L, 0, n, x, y, ld);
    fwd_finite = finite_row(L, rep, "forward runs, finite", rc, "z", y, ld);
    if (rc != FLOW_OK)
        return;
    if (!conform_has(L, FLOW_LAYER_INVERSE)) {
        conform_skip_row(rep, "round trip", "layer has no inverse");
    } else if (!fwd_finite) {
        /* the inverse of a NaN says nothing about the inverse */
        conform_skip_row(rep, "inverse runs, finite", "not run: the forward "
                         "produced non-finite values");
        conform_skip_row(rep, "round trip x -> z -> x", "not run: the forward "
                         "produced non-finite values");
    } else {
        rc = conform_run(L, 1, n, y, xb, ld2);
        finite_row(L, rep, "inverse runs, finite", rc, "x", xb, ld2);
        if (rc != FLOW_OK) {
            r = conform_add_row(rep, "round trip x -> z -> x", INFINITY,
                                TOL_ROUNDTRIP);
            conform_note(r, "inverse failed: %s", L->err);
        } else {
            for (size_t i = 0; i < nd; i++) {
                double ei = rel_err(xb[i], x[i]);
                if (!(ei <= e)) {
                    e = ei;
                    worst = i;
                }
            }
            r = conform_add_row(rep, "round trip x -> z -> x", e,
                                TOL_ROUNDTRIP);
            conform_note(r, "worst: row %zu, x = %.9g, back %.9g", worst / d,
                         (double)x[worst], (double)xb[worst]);
            if (!L->desc.logdet_exact) {
                conform_skip_row(rep, "logdet forward + inverse = 0",
                                 "estimated log-det (see 'logdet estimate "
                                 "unbiased')");
            } else {
                for (size_t i = 0; i < n; i++) {
                    double ei = fabs((double)ld[i] + ld2[i])
                              / fmax(1.0, fabs(ld[i]));
                    if (ei > el) {
                        el = ei;
                        wl = i;
                    }
                }
                r = conform_add_row(rep, "logdet forward + inverse = 0", el,
                                    TOL_LOGDET);
                conform_note(r, "worst row %zu: forward %.9g, inverse %.9g",
                             wl, (double)ld[wl], (double)ld2[wl]);
            }
        }
    }
    /* determinism: the same call twice gives the same bits (a stochastic
     * layer gets the same stream both times) */
    rc = conform_run(L, 0, n, x, y2, ld2);
    r = conform_add_row(rep, "deterministic", rc == FLOW_OK
                        && !memcmp(y, y2, nd * sizeof *y)
                        && !memcmp(ld, ld2, n * sizeof *ld) ? 0 : 1, 0);
    conform_note(r, "same inputs and stream, same bits");
    /* batch independence: change row 0, rows 1.. must not move at all */
    if (n > 1 && !conform_has(L, FLOW_LAYER_WHOLE_BATCH)) {
        double moved = 0;
        memcpy(xb, x, nd * sizeof *x);
        for (size_t j = 0; j < d; j++)
            xb[j] = (flow_real)(xb[j] * 0.5 + 0.25);
        conform_run(L, 0, n, xb, y2, ld2);
        for (size_t i = d; i < nd; i++)
            moved = fmax(moved, fabs((double)y2[i] - y[i]));
        for (size_t i = 1; i < n; i++)
            moved = fmax(moved, fabs((double)ld2[i] - ld[i]));
        r = conform_add_row(rep, "rows independent", moved, 0);
        conform_note(r, "row 0 changed; max change in other rows");
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
        r = conform_add_row(rep, "same seed, same bits", INFINITY, 0);
        conform_note(r, "second instance: %s", rc ? flow_errmsg(ctx)
                                                  : "out of memory");
    } else {
        int same_p = !memcmp(L->params, L2.params,
                             L->desc.n_params * sizeof *L->params);
        rc = conform_run(&L2, 0, L->n, x, y2, ld2);
        r = conform_add_row(rep, "same seed, same bits", rc == FLOW_OK
                            && same_p && !memcmp(y, y2, nd * sizeof *y)
                            && !memcmp(ld, ld2, L->n * sizeof *ld) ? 0 : 1,
                            0);
        conform_note(r, "a second instance from the same seed: %s",
                     !same_p ? "parameters differ" : rc != FLOW_OK ? L2.err
                     : "parameters and outputs compared");
    }
    layer_free(&L2);
    free(y2);
    free(ld2);
}

/* f at the FD_POINTS steps of h, with m outputs: each output's kink-aware
 * derivative and its error bound (runtime/fd.h). */
static int fd_robust(fd_eval f, void *env, double h, size_t m, double *deriv,
                     double *unc, double *buf /* FD_POINTS * m */)
{
    double a[FD_POINTS];
    for (int p = 0; p < FD_POINTS; p++)
        if (f(env, fd_frac[p] * h, &a[p], buf + (size_t)p * m) != 0)
            return -1;
    for (size_t i = 0; i < m; i++) {
        double v[FD_POINTS];
        for (int p = 0; p < FD_POINTS; p++)
            v[p] = buf[(size_t)p * m + i];
        deriv[i] = fd_extrapolate(v, a, &unc[i]);
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
    if (conform_run(je->L, je->dir, 1, je->xp, je->yp, je->ld) != FLOW_OK)
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
    if (conform_run(L, dir, 1, x, buf, ld) != FLOW_OK) {
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
        conform_add_row(rep, name, INFINITY, 0);
        goto done;
    }
    if (pattern && declared_pattern(L, dep) != 0) {
        r = conform_add_row(rep, "declared pattern vs Jacobian", INFINITY, 0);
        conform_note(r, "cannot expand the declared pattern");
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
        r = conform_add_row(rep, name, INFINITY, TOL_FD);
        conform_note(r, "layer failed at or near row %zu: %s", failed_row,
                     L->err);
        goto done;
    }
    if (!L->desc.logdet_exact) {
        conform_skip_row(rep, name, "estimated log-det (see 'logdet estimate "
                         "unbiased')");
    } else {
        r = conform_add_row(rep, name, best, TOL_FD);
        conform_note(r, "worst row %zu: layer %.9g, log|det| of FD "
                     "Jacobian %.9g +- %.2g", worst_row, at.ldv, at.lfd,
                     at.unc);
    }
    if (pattern) {
        r = conform_add_row(rep, "declared zeros are zero", worst, TOL_FD);
        if (worst > 0)
            conform_note(r, "worst row %zu: dz_%zu/dx_%zu = %.6g (max |J| "
                         "%.3g) where the layer declares no dependence",
                         zrow, zat.zi, zat.zj, zat.zval, zat.jmax);
        else
            conform_note(r, "max |J_ij| / max|J| where the layer declares no "
                         "dependence");
        if (L->desc.dep != FLOW_DEP_PERMUTATION
            && L->desc.dep != FLOW_DEP_DENSE) {
            r = conform_add_row(rep, "diagonal non-zero",
                                diagmin > 0 ? 0 : 1, 0);
            conform_note(r, "min |J_ii| = %.3g", diagmin);
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

double conform_obj_eval(const objective *o)
{
    size_t n = o->L->n, nd = n * o->L->d;
    double s = 0;
    if (conform_run(o->L, o->dir, n, o->x, o->y, o->ld) != FLOW_OK)
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
    *out = conform_obj_eval(se->o);
    *se->slot = se->keep;
    return isfinite(*out) ? 0 : -1;
}

/* The three Richardson-extrapolated estimates of a scalar derivative
 * (central, forward, backward) and their uncertainties. */
static int fd_sides(fd_eval f, void *env, double h, double est[3],
                    double unc[3])
{
    double a[FD_POINTS], v[FD_POINTS], dis[3];
    for (int p = 0; p < FD_POINTS; p++)
        if (f(env, fd_frac[p] * h, &a[p], &v[p]) != 0)
            return -1;
    fd_estimates(v, a, est, unc, dis);
    return 0;
}

/* Relative disagreement of an analytic derivative with its finite
 * difference, beyond the finite difference's own uncertainty, at the best
 * of FD_LEVELS step sizes (steps at most hmax).  At a kink the analytic
 * value may be either one-sided derivative (a subgradient), so it is
 * compared with the central and both one-sided estimates, and the closest
 * counts; a wrong formula disagrees with all of them. */
double conform_fd_err_fn(double analytic, fd_eval f, void *env, double h,
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

/* conform_fd_err_fn for one slot (an input, parameter or context value). */
double conform_fd_err_at(double analytic, const objective *o, flow_real *slot,
                         double hmax, double *fd)
{
    slot_env se = {o, slot, *slot};
    return conform_fd_err_fn(analytic, slot_eval, &se,
                             fmin(FD_STEP * fmax(1.0, fabs(se.keep)), hmax),
                             fd);
}

static double fd_err(double analytic, const objective *o, flow_real *slot,
                     double hmax)
{
    return conform_fd_err_at(analytic, o, slot, hmax, NULL);
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
    if ((rc = conform_run(L, dir, n, ob->x, ob->y, ob->ld)) != FLOW_OK)
        return rc;
    memset(L->grad, 0, (np + 1) * sizeof *L->grad);
    memset(L->dctx, 0, (n * k + 1) * sizeof *L->dctx);
    rc = conform_run_backward(L, dir, n, ob->x, ob->y, ob->w, ob->u, gx,
                              k ? L->dctx : NULL);
    if (rc != FLOW_OK)
        return rc;
    if (!conform_all_finite(gx, nd) || !conform_all_finite(L->grad, np)
        || !conform_all_finite(L->dctx, n * k))
        return -1;
    for (size_t i = 0; i < nd; i++) {
        double fd, ei = conform_fd_err_at(gx[i], ob, &ob->x[i],
                                          max_step(L, dir, ob->x[i]), &fd);
        if (i == 0 || ei > e->x) {
            e->x = ei;
            e->x_at = i;
            e->x_an = gx[i];
            e->x_fd = fd;
        }
    }
    if (np && (rc = conform_check_params(L, o, ob, columns, gx, e))
              != FLOW_OK)
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
        conform_add_row(rep, name, INFINITY, 0);
        goto done;
    }
    memcpy(x, x0, nd * sizeof *x);
    if (dir == 1 && conform_run(L, 0, n, x0, x, ld) != FLOW_OK) {
        r = conform_add_row(rep, name, INFINITY, 0); /* the inverse at f(x0) */
        conform_note(r, "forward failed: %s", L->err);
        goto done;
    }
    /* cotangents scaled per row by the row's magnitude, so that rows of
     * large values do not drown the others in rounding noise */
    if (conform_run(L, dir, n, x, y, ld) != FLOW_OK) {
        r = conform_add_row(rep, name, INFINITY, 0);
        conform_note(r, "error: %s", L->err);
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
    r = conform_add_row(rep, name, rc == FLOW_OK ? 0 : 1, 0);
    if (rc != FLOW_OK) {
        conform_note(r, "%s", rc < 0 ? "non-finite gradient" : L->err);
        goto done;
    }
    snprintf(name, sizeof name, "d/d input vs FD (%s)", tag);
    r = conform_add_row(rep, name, e.x, TOL_FD);
    conform_note(r, "worst row %zu, column %zu: layer %.9g, FD %.9g",
                 e.x_at / d, e.x_at % d, e.x_an, e.x_fd);
    if (np) {
        snprintf(name, sizeof name, "d/d params vs FD (%s)", tag);
        r = conform_add_row(rep, name, e.p, TOL_FD);
        conform_params_note(L, &e, pnote, sizeof pnote);
        conform_note(r, "%s", pnote);
    }
    if (k) {
        snprintf(name, sizeof name, "d/d context vs FD (%s)", tag);
        conform_add_row(rep, name, e.c, TOL_FD);
    }
    /* the log-det's own gradient (dL/dout = 0) */
    memcpy(x, x0, nd * sizeof *x);
    if (dir == 1)
        conform_run(L, 0, n, x0, x, ld);
    memset(w, 0, nd * sizeof *w);
    rc = vjp_compare(L, o, &ob, 0, gx, &e);
    snprintf(name, sizeof name, "d logdet vs FD (%s)", tag);
    r = conform_add_row(rep, name, rc == FLOW_OK ? fmax(e.x, fmax(e.p, e.c))
                                                 : INFINITY, TOL_FD);
    if (rc != FLOW_OK)
        conform_note(r, "%s", rc < 0 ? "non-finite gradient" : L->err);
    else if (np && e.p > TOL_FD) {
        conform_params_note(L, &e, pnote, sizeof pnote);
        conform_note(r, "params %.2g, %s", e.p, pnote);
    } else
        conform_note(r, "inputs %.2g, params %.2g, context %.2g", e.x, e.p,
                     e.c);
done:
    free(x);
    free(y);
    free(w);
    free(u);
    free(gx);
    free(ld);
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
        conform_add_row(rep, "logdet estimate unbiased", INFINITY, TOL_ZSCORE);
        goto done;
    }
    if (L->desc.logdet_exact) {
        L->training = 0;
        rc = conform_run(L, 0, n, x, y, ld);
        for (size_t i = 0; i < n; i++)
            ref[i] = ld[i];
    } else {
        for (size_t i = 0; i < n; i++)
            ref[i] = ld_fd[i];
    }
    L->training = 1;
    for (size_t s = 0; s < m && rc == FLOW_OK; s++) {
        rng_seed(&L->crng0, o->seed * 1000003u + s + 1);
        if ((rc = conform_run(L, 0, n, x, y, ld)) != FLOW_OK)
            break;
        for (size_t i = 0; i < n; i++) {
            s1[i] += ld[i];
            s2[i] += (double)ld[i] * ld[i];
        }
    }
    L->training = 0;
    L->crng0 = keep;
    if (rc != FLOW_OK) {
        r = conform_add_row(rep, "logdet estimate unbiased", INFINITY,
                            TOL_ZSCORE);
        conform_note(r, "error: %s", L->err);
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
    r = conform_add_row(rep, "logdet estimate unbiased", zmax, TOL_ZSCORE);
    conform_note(r, "standard errors; worst row %zu: mean of %zu estimates "
                 "%.6g, exact %.6g", at, m, at_mean, at_ref);
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

    if (!conform_has(L, FLOW_LAYER_DATA_INIT) || !L->t->data_init
        || !(keep = malloc((np + nb + 1) * sizeof *keep)))
        return;
    memcpy(keep, L->params, np * sizeof *keep);
    memcpy(keep + np, L->buffers, nb * sizeof *keep);
    if (ensure_ws(L, L->n, 0) == 0 && call_prepare(L, L->n) == FLOW_OK) {
        L->crng = L->crng0;
        conform_fill_call(L, &c, L->n, NULL, NULL);
        p = conform_stage_call(L, &f, "data_init", &c, 1);
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
    conform_row *r = conform_add_row(rep, "writes stay in bounds",
                                     (double)g->oob, 0);
    if (g->oob)
        conform_note(r, "%s (%zu of %zu calls)", g->oob_note, g->oob,
                     g->calls);
    else
        conform_note(r, "%zu calls; guards of %zu bytes around every "
                     "buffer", g->calls, L->guard);
    r = conform_add_row(rep, "inputs unchanged", (double)g->inw, 0);
    if (g->inw)
        conform_note(r, "%s (%zu of %zu calls)", g->inw_note, g->inw,
                     g->calls);
    else
        conform_note(r, "inputs, parameters and context of %zu calls bit "
                     "for bit", g->calls);
    return g->oob || g->inw;
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
    conform_set_shape(&cfg, o);
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
    conform_check_describe(&L, rep);
    check_jacobian(&L, rep, x, 0, "forward", ld_fd);
    if (conform_has(&L, FLOW_LAYER_INVERSE))
        check_jacobian(&L, rep, y, 1, "inverse", NULL);
    if (conform_has(&L, FLOW_LAYER_STOCHASTIC) || !L.desc.logdet_exact)
        check_estimator(&L, o, rep, x, ld_fd);
    /* training mode differs for batch statistics: their backward is
     * checked there too (the buffers its calls update, running averages,
     * are put back).  A stochastic layer's training-mode backward may be an
     * unbiased estimator of the true gradient rather than the derivative
     * of its own sample (the Neumann-series estimator of Residual Flows,
     * Chen et al. 2019, eq. 8), so finite differences do not apply there:
     * its log-det is checked for unbiasedness above instead. */
    train_too = conform_has(&L, FLOW_LAYER_WHOLE_BATCH);
    if (conform_has(&L, FLOW_LAYER_STOCHASTIC))
        conform_skip_row(rep, "backward (training)", "stochastic layer: "
                         "training gradients are estimates; unbiasedness of "
                         "the log-det is checked instead");
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
        if (conform_has(&L, FLOW_LAYER_BACKWARD_FORWARD)
            && L.t->forward_backward)
            check_vjp(&L, o, rep, x, 0, mode);
        else if (!train)
            conform_skip_row(rep, "backward (forward)", "not provided");
        if (train && conform_has(&L, FLOW_LAYER_INVERSE_TRAINING_ERROR))
            conform_skip_row(rep, "backward (inverse, training)", "the "
                             "inverse runs in evaluation mode only");
        else if (conform_has(&L, FLOW_LAYER_BACKWARD_INVERSE)
                 && L.t->inverse_backward)
            check_vjp(&L, o, rep, x, 1, mode);
        else if (!train)
            conform_skip_row(rep, "backward (inverse)", "not provided");
    }
    L.training = 0;
    if (train_too)
        memcpy(L.buffers, keep_buf, L.desc.n_buffers * sizeof *keep_buf);
    guard_data_init(&L, x);
    conform_check_unused(&L, o, rep, x);
    /* through the runtime, a stray write corrupts its memory (or its
     * caller's data) instead of a guard */
    if (guard_rows(&L, rep) && o->model_checks) {
        const char *why = "not run: the layer writes out of bounds or to "
                          "its inputs (see above)";
        conform_skip_row(rep, "checkpoint round trip", why);
        conform_skip_row(rep, "density integrates to 1", L.d == 2 ? why
                         : "only for D = 2");
    } else if (o->model_checks) {
        conform_check_model(ctx, &L, o, rep, x);
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
