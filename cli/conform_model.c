/* conform_model.c - the conformance checks of a layer inside a one-layer
 * model: checkpoint round trip and, for D = 2, the density's mass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "conform_impl.h"

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
    rc = L->cfg.rank > 1 ? flow_model_set_input_shape(m, L->cfg.rank,
                                                      L->cfg.shape)
                         : FLOW_OK;
    if (rc == FLOW_OK)
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
    r = conform_add_row(rep, "checkpoint round trip",
                        rc == FLOW_OK ? diff : INFINITY, 0);
    if (rc != FLOW_OK)
        conform_note(r, "%s", flow_errmsg(ctx));
    else
        conform_note(r, "log-probs of %zu rows bit for bit after restoring "
                     "into a model built from another seed", n);
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
    r = conform_add_row(rep, "density integrates to 1", rc == FLOW_OK
                        ? fabs(mass - 1) : INFINITY, TOL_DENSITY);
    if (rc != FLOW_OK)
        conform_note(r, "%s", flow_errmsg(ctx));
    else
        conform_note(r, "mass %.6f on a %zux%zu grid over [%.3g, %.3g] x "
                     "[%.3g, %.3g]%s", mass, g, g, lo[0], hi[0], lo[1], hi[1],
                     s < L->perturb ? " (perturbation halved)" : "");
    free(pts);
    free(lp);
    free(cx);
}

void conform_check_model(flow_ctx *ctx, layer_run *L, const conform_opts *o,
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
        r = conform_add_row(rep, "one-layer model", INFINITY, 0);
        conform_note(r, "%s", flow_errmsg(ctx));
        flow_model_free(m);
        return;
    }
    check_checkpoint(ctx, L, o, rep, m, x);
    /* a layer whose outputs lie in a bounded range (dequantize: [0, 1])
     * reaches only the base's mass there: it makes a density together with
     * a layer after it that maps that range onto the real line (logit) */
    if (L->d == 2 && L->desc.range == FLOW_DOMAIN_NONE)
        check_density(ctx, L, rep, m);
    else if (L->d == 2)
        conform_skip_row(rep, "density integrates to 1", "outputs in a "
                         "bounded range: the base's mass outside it is "
                         "out of reach");
    else
        conform_skip_row(rep, "density integrates to 1", "only for D = 2");
    flow_model_free(m);
}
