/* vi.c - variational fits: target densities from plugins, the
 * reparameterised ELBO gradient and importance-sampling summaries
 * (log Z, effective sample size).  docs/vi.md. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "model.h"
#include "rng.h"
#include "vi.h"

struct flow_target {
    flow_ctx *ctx;
    const flow_target_type *type;
    const char *file;           /* providing plugin, owned by ctx */
    void *self;
    size_t dim;
    char err[512];
};

static size_t table_len(const flow_attr_spec *tab)
{
    size_t n = 0;
    while (tab && tab[n].name)
        n++;
    return n;
}

int flow_target_new(flow_ctx *ctx, const char *type,
                    const flow_attr_value *attrs, size_t n_attrs, size_t dim,
                    flow_target **out)
{
    const char *file = NULL;
    const flow_target_type *tt = flow_target_type_find(ctx, type, &file);
    flow_target_config cfg;
    flow_diag diag;
    flow_target *t;
    size_t want = 0;

    *out = NULL;
    ctx_clear_error(ctx);
    if (!tt)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "unknown target type '%s' "
                              "(`flowkit plugins` lists the targets found)",
                              type);
    if (n_attrs != table_len(tt->attrs) || (n_attrs && !attrs))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s': %zu "
                              "attribute values for a table of %zu", type,
                              n_attrs, table_len(tt->attrs));
    if (dim == 0)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s': dimension 0",
                              type);
    memset(&cfg, 0, sizeof cfg);
    cfg.struct_size = sizeof cfg;
    cfg.dim = dim;
    cfg.attrs = attrs;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    if (tt->describe(&cfg, &want, &diag) != FLOW_OK) {
        diag.message[sizeof diag.message - 1] = '\0';
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s' (%s): %s",
                              type, file, diag.message[0] ? diag.message
                              : "rejected by its plugin (no message)");
    }
    if (want && want != dim)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s' is %zu-"
                              "dimensional, the flow has %zu dimensions", type,
                              want, dim);
    if (!(t = calloc(1, sizeof *t)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    t->ctx = ctx;
    t->type = tt;
    t->file = file;
    t->dim = dim;
    if (!(t->self = tt->create(flow_host_services(), &cfg, &diag))) {
        diag.message[sizeof diag.message - 1] = '\0';
        free(t);
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "target '%s' (%s): create "
                              "failed: %s", type, file, diag.message[0]
                              ? diag.message : "no message");
    }
    *out = t;
    return FLOW_OK;
}

void flow_target_free(flow_target *t)
{
    if (!t)
        return;
    t->type->destroy(t->self);
    free(t);
}

size_t flow_target_dim(const flow_target *t) { return t->dim; }
const char *flow_target_name(const flow_target *t) { return t->type->name; }

double flow_target_log_normalizer(const flow_target *t)
{
    return t->type->log_normalizer ? t->type->log_normalizer(t->self) : NAN;
}

/* --- targets written by the caller ------------------------------------ */

/* A callback target's state: the caller's function and its argument. */
typedef struct callback_target {
    flow_target_fn fn;
    void *arg;
    double log_z;
} callback_target;

static void callback_destroy(void *self)
{
    free(self);
}

static int callback_log_density(void *self, const flow_call *c,
                                const flow_real *x, flow_real *logp,
                                flow_real *grad)
{
    const callback_target *cb = self;
    int rc = cb->fn(cb->arg, c->n, c->dim, x, logp, grad, c->err, c->err_cap);
    /* any non-zero status of the caller's is a failure of the plugin kind:
     * the host's codes are not the caller's to know */
    return rc == 0 ? FLOW_OK : FLOW_ERR_PLUGIN;
}

static double callback_log_normalizer(void *self)
{
    return ((const callback_target *)self)->log_z;
}

/* Never found by name (no plugin provides it): flow_target_name and the
 * messages of a callback target read "callback". */
static const flow_target_type callback_type = {
    .struct_size = sizeof(flow_target_type),
    .name = "callback",
    .summary = "a log-density computed by the caller's function",
    .destroy = callback_destroy,
    .log_density = callback_log_density,
    .log_normalizer = callback_log_normalizer,
};

int flow_target_new_callback(flow_ctx *ctx, size_t dim, flow_target_fn fn,
                             void *arg, double log_z, flow_target **out)
{
    callback_target *cb;
    flow_target *t;
    *out = NULL;
    ctx_clear_error(ctx);
    if (!fn)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "callback target: no "
                              "function");
    if (dim == 0)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "callback target: "
                              "dimension 0");
    if (!(t = calloc(1, sizeof *t)) || !(cb = calloc(1, sizeof *cb))) {
        free(t);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    cb->fn = fn;
    cb->arg = arg;
    cb->log_z = log_z;
    t->ctx = ctx;
    t->type = &callback_type;
    t->file = NULL;
    t->self = cb;
    t->dim = dim;
    *out = t;
    return FLOW_OK;
}

int flow_target_log_density(flow_target *t, size_t n, const flow_real *x,
                            flow_real *logp, flow_real *grad)
{
    flow_call c;
    int rc;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.host = flow_host_services();
    c.n = n;
    c.dim = t->dim;
    c.err = t->err;
    c.err_cap = sizeof t->err;
    t->err[0] = '\0';
    if (n == 0)
        return FLOW_OK;
    rc = t->type->log_density(t->self, &c, x, logp, grad);
    if (rc != FLOW_OK)
        return flow_ctx_error(t->ctx, rc, "target '%s': %s", t->type->name,
                              t->err[0] ? t->err : "log_density failed");
    return FLOW_OK;
}

/* --- the ELBO gradient -------------------------------------------------- */

/* Variational fits reparameterise z ~ p_base with fixed bases: a base with
 * learnable parameters would need their pathwise gradient too. */
static int check_fit_model(flow_model *m, const flow_target *t)
{
    flow_ctx *ctx = model_ctx(m);
    if (flow_model_context_dim(m))
        return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "variational fits "
                              "need an unconditional flow (this one takes a "
                              "%zu-dimensional context)",
                              flow_model_context_dim(m));
    if (flow_model_dim(m) != t->dim)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s' has %zu "
                              "dimensions, the flow %zu", t->type->name,
                              t->dim, flow_model_dim(m));
    for (size_t i = 0; i < model_slice_count(m); i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        if ((s.is_exit || i + 1 == model_slice_count(m)) && s.n_params)
            return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "variational "
                                  "fits need parameter-free base "
                                  "distributions (normal, logistic): %s%s has "
                                  "%zu learnable parameters",
                                  s.is_exit ? "exit " : "", s.name,
                                  s.n_params);
    }
    return FLOW_OK;
}

typedef struct elbo_mid {
    flow_target *t;
    const flow_real *lpb;       /* log p_base(z) */
    flow_real *lp;              /* scratch: log p~(x) */
    double beta;                /* annealing: beta log p~ */
    double total;               /* samples of the whole batch */
    double sum;                 /* these samples' ELBO terms, summed */
} elbo_mid;

/* After x = f^-1(z): the sum of the samples' ELBO terms, and the output
 * gradients of the batch mean, dELBO/dx_r = beta grad log p~(x_r) / n and
 * dELBO/dlogdet_r = 1 / n (n: the whole batch's samples, of which these
 * are all or one block), since log q(x_r) = log p_base(z_r) - logdet_r
 * with z_r fixed (the objective E[beta log p~(x) - log q(x)]; beta = 1
 * but when annealing). */
static int elbo_outputs(void *arg, size_t n, const flow_real *x,
                        const flow_real *logdet, flow_real *dx,
                        flow_real *dlogdet)
{
    elbo_mid *e = arg;
    size_t d = e->t->dim;
    double sum = 0;
    flow_real w = (flow_real)(1.0 / e->total);
    flow_real bw = (flow_real)(e->beta / e->total);
    int rc = flow_target_log_density(e->t, n, x, e->lp, dx);
    if (rc != FLOW_OK)
        return rc;
    for (size_t r = 0; r < n; r++) {
        sum += e->beta * (double)e->lp[r] - (double)e->lpb[r]
             + (double)logdet[r];
        dlogdet[r] = w;
        for (size_t i = 0; i < d; i++)
            dx[r * d + i] *= bw;
    }
    e->sum = sum;
    return FLOW_OK;
}

int flow_model_elbo_grad(flow_model *m, flow_target *t, size_t n,
                         double *elbo, flow_real *grad)
{
    return vi_elbo_grad(m, t, n, 1.0, elbo, grad);
}

/* n samples of a batch of `total` drawn with the model's stream as it
 * is: *sum of their ELBO terms, grad the gradient of their share of the
 * batch mean. */
static int elbo_part(flow_model *m, flow_target *t, size_t n, double total,
                     double beta, double *sum, flow_real *grad)
{
    flow_ctx *ctx = model_ctx(m);
    size_t d = flow_model_dim(m);
    flow_real *z = NULL, *lpb = NULL, *lp = NULL;
    elbo_mid e;
    int rc;

    *sum = NAN;
    if ((rc = check_fit_model(m, t)) != FLOW_OK)
        return rc;
    if (n == 0 || n > SIZE_MAX / sizeof *z / (d + 2))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "ELBO: %zu samples", n);
    z = malloc(n * d * sizeof *z);
    lpb = malloc(n * sizeof *lpb);
    lp = malloc(n * sizeof *lp);
    if (!z || !lpb || !lp) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = flow_model_sample_latent(m, n, z, lpb)) != FLOW_OK)
        goto out;
    e.t = t;
    e.lpb = lpb;
    e.lp = lp;
    e.beta = beta;
    e.total = total;
    e.sum = NAN;
    rc = model_inverse_grad_mid(m, n, z, NULL, elbo_outputs, &e, grad, NULL);
    *sum = e.sum;
out:
    free(z);
    free(lpb);
    free(lp);
    return rc;
}

int vi_elbo_grad(flow_model *m, flow_target *t, size_t n, double beta,
                 double *elbo, flow_real *grad)
{
    double sum;
    int rc = elbo_part(m, t, n, (double)n, beta, &sum, grad);
    if (elbo)
        *elbo = sum / (double)n;
    return rc;
}

void vi_block_stream(uint64_t out[6], uint64_t key, size_t k)
{
    flow_rng r;
    /* xoshiro's state from words 4k + 1 .. 4k + 4 of the splitmix64
     * sequence that starts at key (rng_seed takes words 1 .. 4): the
     * blocks' states are disjoint stretches of one sequence, fixed by
     * (key, k) alone */
    rng_seed(&r, key + (uint64_t)k * 4 * 0x9E3779B97F4A7C15ull);
    memcpy(out, r.s, 4 * sizeof *out);
    out[4] = 0;                 /* no cached normal deviate */
    out[5] = 0;
}

int vi_elbo_block(flow_model *m, flow_target *t, uint64_t key, size_t k,
                  size_t n, size_t total, double beta, double *sum,
                  flow_real *grad)
{
    uint64_t s[6];
    vi_block_stream(s, key, k);
    flow_model_set_rng(m, s);
    return elbo_part(m, t, n, (double)total, beta, sum, grad);
}

/* The block pass's view of the ELBO terms: block k's rows r0.. of the
 * batch's z, lpb and scratch, and its sum of terms into sums[k]. */
typedef struct elbo_blocks {
    elbo_mid e;
    const flow_real *lpb;
    flow_real *lp;
    double *sums;
} elbo_blocks;

static int elbo_block_outputs(void *arg, size_t k, size_t r0, size_t n,
                              const flow_real *x, const flow_real *logdet,
                              flow_real *dx, flow_real *dlogdet)
{
    elbo_blocks *eb = arg;
    int rc;
    eb->e.lpb = eb->lpb + r0;
    eb->e.lp = eb->lp + r0;
    rc = elbo_outputs(&eb->e, n, x, logdet, dx, dlogdet);
    eb->sums[k] = eb->e.sum;
    return rc;
}

int vi_elbo_blocks(flow_model *m, flow_target *t, uint64_t key,
                   size_t first, size_t n, size_t rows, flow_comm *comm,
                   size_t total, double beta, double *sums, flow_real *bgrad)
{
    flow_ctx *ctx = model_ctx(m);
    size_t d = flow_model_dim(m), nb = rows ? (n + rows - 1) / rows : 0;
    flow_real *z = NULL, *lpb = NULL, *lp = NULL;
    uint64_t *streams = NULL;
    elbo_blocks eb;
    int rc;

    if ((rc = check_fit_model(m, t)) != FLOW_OK)
        return rc;
    if (total == 0 || n > SIZE_MAX / sizeof *z / (d + 2)
        || nb > SIZE_MAX / sizeof *streams / 6)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "ELBO: %zu samples of "
                              "%zu", n, total);
    z = malloc((n * d + 1) * sizeof *z);
    lpb = malloc((n + 1) * sizeof *lpb);
    lp = malloc((n + 1) * sizeof *lp);
    streams = malloc((6 * nb + 1) * sizeof *streams);
    if (!z || !lpb || !lp || !streams) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < nb; k++)
        vi_block_stream(streams + 6 * k, key, first + k);
    eb.e.t = t;
    eb.e.beta = beta;
    eb.e.total = (double)total;
    eb.e.sum = NAN;
    eb.lpb = lpb;
    eb.lp = lp;
    eb.sums = sums;
    rc = model_inverse_grad_blocks(m, n, rows, streams, comm, total, z, lpb,
                                   elbo_block_outputs, &eb, bgrad);
out:
    free(z);
    free(lpb);
    free(lp);
    free(streams);
    return rc;
}

/* --- importance sampling ------------------------------------------------ */

int flow_importance_stats(size_t n, const double *logw, flow_is_stats *out)
{
    double mx = -INFINITY, s1 = 0, s2 = 0, m1 = 0, m2 = 0;
    size_t k = 0;
    memset(out, 0, sizeof *out);
    out->n = n;
    for (size_t r = 0; r < n; r++)
        if (isfinite(logw[r])) {
            if (logw[r] > mx)
                mx = logw[r];
            m1 += logw[r];
            k++;
        }
    out->n_finite = k;
    if (k == 0) {
        out->elbo = out->log_z = -INFINITY;
        out->elbo_se = out->log_z_se = NAN;
        return FLOW_OK;
    }
    m1 /= (double)k;
    for (size_t r = 0; r < n; r++)
        if (isfinite(logw[r])) {
            double e = exp(logw[r] - mx);
            s1 += e;
            s2 += e * e;
            m2 += (logw[r] - m1) * (logw[r] - m1);
        }
    /* the ELBO over the samples with a finite weight; a non-finite one
     * (log p~ = -inf) makes the true ELBO -inf */
    out->elbo = k == n ? m1 : -INFINITY;
    out->elbo_se = n > 1 && k == n ? sqrt(m2 / (double)(n - 1) / (double)n)
                 : NAN;
    /* log Z ~ log mean exp(w) over all n (zero weights included); delta
     * method: se(log mean e) = sd(e) / (sqrt(n) mean(e)) */
    {
        double mean = s1 / (double)n;
        double var = n > 1 ? (s2 - (double)n * mean * mean) / (double)(n - 1)
                   : 0;
        out->log_z = mx + log(mean);
        out->log_z_se = var > 0 ? sqrt(var) / (sqrt((double)n) * mean) : 0;
    }
    /* Kish's effective sample size (sum w)^2 / sum w^2 */
    out->ess = s1 * s1 / s2;
    out->ess_per_sample = out->ess / (double)n;
    return FLOW_OK;
}

int flow_model_importance(flow_model *m, flow_target *t, size_t n,
                          size_t batch, flow_is_stats *out, flow_real *x,
                          double *logw)
{
    flow_ctx *ctx = model_ctx(m);
    size_t d = flow_model_dim(m);
    flow_real *xb = NULL, *lq = NULL, *lp = NULL;
    double *w = logw;
    int rc = FLOW_OK;

    if (flow_model_context_dim(m))
        return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "importance weights "
                              "need an unconditional flow");
    if (d != t->dim)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "target '%s' has %zu "
                              "dimensions, the flow %zu", t->type->name,
                              t->dim, d);
    if (n == 0)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "importance sampling needs "
                              "at least one sample");
    if (batch == 0)
        batch = 4096;
    if (batch > n)
        batch = n;
    if (n > SIZE_MAX / sizeof(double) / (d + 2))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "too many samples: %zu", n);
    xb = malloc(batch * d * sizeof *xb);
    lq = malloc(batch * sizeof *lq);
    lp = malloc(batch * sizeof *lp);
    if (!w)
        w = malloc(n * sizeof *w);
    if (!xb || !lq || !lp || !w) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t r = 0; r < n; r += batch) {
        size_t b = n - r < batch ? n - r : batch;
        if ((rc = flow_model_sample(m, b, NULL, xb, lq)) != FLOW_OK
            || (rc = flow_target_log_density(t, b, xb, lp, NULL)) != FLOW_OK)
            goto out;
        for (size_t i = 0; i < b; i++)
            w[r + i] = (double)lp[i] - (double)lq[i];
        if (x)
            memcpy(x + r * d, xb, b * d * sizeof *xb);
    }
    if (out)
        rc = flow_importance_stats(n, w, out);
out:
    free(xb);
    free(lq);
    free(lp);
    if (w != logw)
        free(w);
    return rc;
}
