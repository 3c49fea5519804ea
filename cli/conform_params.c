/* conform_params.c - the conformance checks of a layer's parameters:
 * gradients against finite differences, unused entries, describe(). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conform_impl.h"

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
    if ((rc = conform_run(L, ob->dir, L->n, ob->x, ob->y, ob->ld))
        != FLOW_OK)
        return rc;
    memset(L->grad, 0, (np + 1) * sizeof *L->grad);
    rc = conform_run_backward(L, ob->dir, L->n, ob->x, ob->y, ob->w, ob->u,
                              gx, NULL);
    if (rc != FLOW_OK)
        return rc;
    if (!conform_all_finite(L->grad, np))
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
    *out = conform_obj_eval(de->o);
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
    return conform_fd_err_fn(a, dir_eval, &de,
                             FD_STEP * fmin(1.0, DIR_STEP
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
        e->p = fmax(e->p, conform_fd_err_at(g[lo], o, &o->L->params[lo],
                                            INFINITY, &e->fd));
    }
}

/* Cotangents selecting column group c of the outputs (c < ng) or the
 * log-det (c = ng), rows scaled as in check_vjp; positive weights, so
 * the rows cannot cancel.  Reads the outputs at ob->x. */
static int column_cotangent(layer_run *L, const objective *ob, size_t c,
                            size_t ng, flow_real *w, flow_real *u)
{
    size_t n = L->n, d = L->d;
    if (conform_run(L, ob->dir, n, ob->x, ob->y, ob->ld) != FLOW_OK)
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
int conform_check_params(layer_run *L, const conform_opts *o, objective *ob,
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
        err = conform_fd_err_at(g0[j], ob, &L->params[j], INFINITY, &fd);
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
void conform_params_note(const layer_run *L, const vjp_errs *e, char *buf,
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

/* Scratch of conform_check_unused; its row arrays hold `rows` rows. */
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
        conform_fill_call(L, &c, 0, NULL, NULL);
        c.rng = &rng;
        p = conform_stage_call(L, &f, "init", &c, 1);
        rc = f.nomem ? conform_no_stage(L) : L->t->init(L->self, &c, p);
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
    if (conform_run(L, 0, n, s->x, s->y, s->ld) != FLOW_OK)
        return;
    for (size_t j = 0; j < np; j++) {
        flow_real keep = L->params[j];
        if (s->used[j] || s->skip[j])
            continue;
        for (int k = 0; k < 4 && !s->used[j]; k++) {
            L->params[j] = (flow_real)(keep + steps[k] * fmax(1.0,
                                                              fabs(keep)));
            if (conform_run(L, 0, n, s->x, s->y2, s->ld2) != FLOW_OK
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

void conform_check_unused(layer_run *L, const conform_opts *o,
                          conform_report *rep, const flow_real *x0)
{
    size_t n = L->n > UNUSED_ROWS ? L->n : UNUSED_ROWS, nd = n * L->d;
    size_t np = L->desc.n_params, left, inert = 0, first[4], nfirst = 0;
    int grad = conform_has(L, FLOW_LAYER_BACKWARD_FORWARD)
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
        conform_add_row(rep, "every parameter is used", INFINITY, 0);
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
    r = conform_add_row(rep, "every parameter is used", (double)left, 0);
    if (!left) {
        if (inert)
            conform_note(r, "%zu of %zu entries change outputs or log-dets; "
                         "the other %zu are in masked tensors", np - inert,
                         np, inert);
        else
            conform_note(r, "each of %zu entries changes outputs or "
                         "log-dets", np);
        goto done;
    }
    list[0] = '\0';
    for (size_t i = 0; i < nfirst; i++) {
        size_t k = strlen(list);
        param_name(L, first[i], names[i], sizeof names[i]);
        snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", names[i]);
    }
    conform_note(r, "no effect at any point tried: %s%s (%zu of %zu)", list,
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
void conform_check_describe(layer_run *L, conform_report *rep)
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
        rc = conform_describe_named(L, &d2, &tab, &cap, &diag);
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
    r = conform_add_row(rep, "describe() is stable", bad ? 1 : 0, 0);
    if (bad)
        conform_note(r, "call %d: %s", call, what);
    else
        conform_note(r, "%d calls, %d of them after create(): every field "
                     "the same", DESCRIBE_CALLS + 1, DESCRIBE_CALLS);
    free(vec);
    free(tab);
    if (!np && !nt)
        return;
    for (size_t i = 0; i < nt && i < L->tensors_cap; i++)
        sum += L->tensors[i].count;
    if (nt == 0) {
        r = conform_add_row(rep, "tensors sum to n_params", 0, 0);
        conform_note(r, "no tensors named: one tensor of %zu entries", np);
        return;
    }
    for (size_t i = 0; i < nt && i < L->tensors_cap; i++)
        if (!L->tensors[i].name) {
            r = conform_add_row(rep, "tensors sum to n_params", 1, 0);
            conform_note(r, "tensors[%zu] has no name", i);
            return;
        }
    r = conform_add_row(rep, "tensors sum to n_params", nt > L->tensors_cap
                        || sum != np ? 1 : 0, 0);
    if (nt > L->tensors_cap)
        conform_note(r, "%zu tensors: more than the %zu the host offered "
                     "after asking again", nt, L->tensors_cap);
    else
        conform_note(r, "%zu tensors (%s%s) of %zu entries in all; "
                     "n_params %zu", nt, L->tensors[0].name,
                     nt > 1 ? ", ..." : "", sum, np);
}
