/* batchnorm.c - the `batchnorm` flow layer (Dinh et al. 2017, RealNVP,
 * sec. 3.7; Papamakarios et al. 2017, MAF, sec. 3.4):
 * z = (x - mu) / sqrt(var + eps) * exp(gamma) + beta, with batch statistics
 * in training and running averages in evaluation. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_MOMENTUM, ATTR_EPS };

static const flow_attr_spec batchnorm_attrs[] = {
    {.name = "momentum", .type = FLOW_ATTR_REAL,
     .doc = "weight of the batch in the running averages",
     .def_real = 0.1, .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {.name = "eps", .type = FLOW_ATTR_REAL,
     .doc = "added to the variance", .def_real = 1e-5, .has_min = 1,
     .min = 0, .has_max = 1, .max = 1},
    {0}};

typedef struct batchnorm {
    size_t d;
    double momentum, eps;
    const flow_host *host;
} batchnorm;

/* Buffers: running mean (D), running variance (D).  Params: gamma (D),
 * beta (D).  Workspace: the statistics used by the last call (mu, var as
 * doubles), read by its backward; then, for a call in the block pass
 * (flow_call_block_rows), the batch sums (2D + 1) and each block's
 * partial sums (2D + 1 a block, at most one block a row, plus one). */
static int batchnorm_describe(const flow_layer_config *cfg,
                              flow_layer_desc *out, flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE
               | FLOW_LAYER_WHOLE_BATCH | FLOW_LAYER_INVERSE_TRAINING_ERROR;
    out->n_params = 2 * cfg->dim;
    out->n_buffers = 2 * cfg->dim;
    common_tensor(out, 0, "gamma", cfg->dim, 0);
    common_tensor(out, 1, "beta", cfg->dim, 0);
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "positive scale";
    out->cost_forward = (flow_cost){0, 0, 4.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 4.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void *batchnorm_create(const flow_host *host,
                              const flow_layer_config *cfg, flow_diag *diag)
{
    batchnorm *b = host->calloc(1, sizeof *b);
    if (!b) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    b->d = cfg->dim;
    b->momentum = cfg->attrs[ATTR_MOMENTUM].r;
    b->eps = cfg->attrs[ATTR_EPS].r;
    b->host = host;
    return b;
}

static void batchnorm_destroy(void *self)
{
    batchnorm *b = self;
    if (b)
        b->host->free(b);
}

static size_t batchnorm_workspace(void *self, size_t n, int dir)
{
    const batchnorm *b = self;
    (void)dir;
    return (2 * b->d + 1 + (n + 2) * (2 * b->d + 1)) * sizeof(double);
}

static int batchnorm_init(void *self, const flow_call *c, flow_real *params)
{
    const batchnorm *b = self;
    memset(params, 0, 2 * b->d * sizeof *params);
    for (size_t i = 0; i < b->d; i++) {
        c->buffers[i] = 0;              /* running mean */
        c->buffers[b->d + i] = 1;       /* running variance */
    }
    return FLOW_OK;
}

/* Statistics for this call into ws: batch (training) or running (eval). */
static int stats(const batchnorm *b, const flow_call *c, const flow_real *x,
                 double *mu, double *var)
{
    size_t d = b->d, n = c->n;
    if (!c->training) {
        for (size_t i = 0; i < d; i++) {
            mu[i] = c->buffers[i];
            var[i] = c->buffers[d + i];
        }
        return FLOW_OK;
    }
    if (n < 2)
        return c->host->error(c, "batch statistics need at least 2 rows, got "
                              "%zu", n);
    for (size_t i = 0; i < d; i++) {
        double m = 0, v = 0;
        for (size_t r = 0; r < n; r++)
            m += x[r * d + i];
        m /= (double)n;
        for (size_t r = 0; r < n; r++)
            v += (x[r * d + i] - m) * (x[r * d + i] - m);
        mu[i] = m;
        var[i] = v / (double)n;         /* biased, as in the papers */
        /* running averages (unbiased variance), training only */
        c->buffers[i] = (flow_real)((1 - b->momentum) * c->buffers[i]
                                    + b->momentum * m);
        c->buffers[d + i] = (flow_real)((1 - b->momentum) * c->buffers[d + i]
                                        + b->momentum * v / (double)(n - 1));
    }
    return FLOW_OK;
}

/* The block pass's workspace: after mu and var, the batch's row count,
 * the sums, then the blocks' partials. */
static double *ws_count(const batchnorm *b, const flow_call *c)
{
    return (double *)c->ws + 2 * b->d;
}

static double *ws_sums(const batchnorm *b, const flow_call *c)
{
    return ws_count(b, c) + 1;
}

static double *ws_parts(const batchnorm *b, const flow_call *c)
{
    return ws_sums(b, c) + 2 * b->d + 1;
}

/* Statistics of the whole batch in the block pass: N rows, mu = S1 / N,
 * var = S2 / N with S1 = sum x and S2 = sum (x - mu)^2 summed over every
 * process's blocks (c->block_sum: each block's rows in row order, in
 * double, the blocks in the batch's order, so the same bits for any
 * number of processes); the two-pass variance of stats(), over the
 * batch.  The running averages as stats() updates them, with N. */
static int block_stats(const batchnorm *b, const flow_call *c,
                       const flow_real *x, double *mu, double *var)
{
    size_t d = b->d, n = c->n, R = flow_call_block_rows(c);
    size_t nbl = (n + R - 1) / R;
    double *sums = ws_sums(b, c), *part = ws_parts(b, c), N;
    int rc;
    for (size_t j = 0; j < nbl; j++) {
        size_t r0 = j * R, r1 = n - r0 < R ? n : r0 + R;
        double *p = part + j * (d + 1);
        p[0] = (double)(r1 - r0);
        for (size_t i = 0; i < d; i++) {
            double s = 0;
            for (size_t r = r0; r < r1; r++)
                s += x[r * d + i];
            p[1 + i] = s;
        }
    }
    if ((rc = c->block_sum(c, d + 1, part, sums)) != FLOW_OK)
        return rc;
    N = *ws_count(b, c) = sums[0];
    for (size_t i = 0; i < d; i++)
        mu[i] = N > 0 ? sums[1 + i] / N : 0;
    for (size_t j = 0; j < nbl; j++) {
        size_t r0 = j * R, r1 = n - r0 < R ? n : r0 + R;
        for (size_t i = 0; i < d; i++) {
            double s = 0;
            for (size_t r = r0; r < r1; r++)
                s += (x[r * d + i] - mu[i]) * (x[r * d + i] - mu[i]);
            part[j * d + i] = s;
        }
    }
    if ((rc = c->block_sum(c, d, part, sums)) != FLOW_OK)
        return rc;
    if (N < 2)      /* the same on every process: after both sums */
        return c->host->error(c, "batch statistics need at least 2 rows, "
                              "got %.0f", N);
    for (size_t i = 0; i < d; i++) {
        var[i] = sums[i] / N;
        c->buffers[i] = (flow_real)((1 - b->momentum) * c->buffers[i]
                                    + b->momentum * mu[i]);
        c->buffers[d + i] = (flow_real)((1 - b->momentum) * c->buffers[d + i]
                                        + b->momentum * sums[i] / (N - 1));
    }
    return FLOW_OK;
}

static int batchnorm_forward(void *self, const flow_call *c,
                             const flow_real *x, flow_real *z,
                             flow_real *logdet)
{
    const batchnorm *b = self;
    const flow_real *g = c->params, *be = c->params + b->d;
    double *mu = c->ws, *var = mu + b->d, ld = 0;
    int rc, skip = flow_call_skip_logdet(c);
    if ((rc = c->training && flow_call_block_rows(c)
                  ? block_stats(b, c, x, mu, var)
                  : stats(b, c, x, mu, var)) != FLOW_OK)
        return rc;
    for (size_t i = 0; !skip && i < b->d; i++)
        ld += g[i] - 0.5 * log(var[i] + b->eps);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < b->d; i++)
            z[r * b->d + i] = (flow_real)((x[r * b->d + i] - mu[i])
                              / sqrt(var[i] + b->eps) * exp(g[i]) + be[i]);
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int batchnorm_inverse(void *self, const flow_call *c,
                             const flow_real *z, flow_real *x,
                             flow_real *logdet)
{
    const batchnorm *b = self;
    const flow_real *g = c->params, *be = c->params + b->d;
    double *mu = c->ws, *var = mu + b->d, ld = 0;
    int skip = flow_call_skip_logdet(c);
    if (c->training)
        return c->host->error(c, "the inverse of batchnorm needs evaluation "
                              "mode (batch statistics of the output are "
                              "unknown)");
    stats(b, c, z, mu, var);
    for (size_t i = 0; !skip && i < b->d; i++)
        ld -= g[i] - 0.5 * log(var[i] + b->eps);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < b->d; i++)
            x[r * b->d + i] = (flow_real)((z[r * b->d + i] - be[i])
                              * exp(-g[i]) * sqrt(var[i] + b->eps) + mu[i]);
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* The backward below in the block pass: the sums over the rows, S (of
 * dlogdet), sum dz and sum dz xhat per column, are the whole batch's
 * (c->block_sum, as block_stats), and each block's gamma and beta
 * gradients, its own rows' sums, go to its slot (grad + j grad_stride). */
static int block_backward(const batchnorm *b, const flow_call *c,
                          const flow_real *x, const flow_real *dz,
                          const flow_real *dlogdet, flow_real *dx)
{
    const flow_real *g = c->params;
    const double *mu = c->ws, *var = mu + b->d;
    size_t n = c->n, d = b->d, R = flow_call_block_rows(c);
    size_t nbl = (n + R - 1) / R, w = 2 * d + 1;
    double *sums = ws_sums(b, c), *part = ws_parts(b, c), N;
    int rc;
    for (size_t j = 0; j < nbl; j++) {
        size_t r0 = j * R, r1 = n - r0 < R ? n : r0 + R;
        double *p = part + j * w, S = 0;
        for (size_t r = r0; r < r1; r++)
            S += dlogdet[r];
        p[0] = S;
        for (size_t i = 0; i < d; i++) {
            double sd = sqrt(var[i] + b->eps), s1 = 0, s2 = 0;
            for (size_t r = r0; r < r1; r++) {
                double gz = dz[r * d + i];
                s1 += gz;
                s2 += gz * (x[r * d + i] - mu[i]) / sd;
            }
            p[1 + i] = s1;
            p[1 + d + i] = s2;
        }
    }
    if ((rc = c->block_sum(c, w, part, sums)) != FLOW_OK)
        return rc;
    N = *ws_count(b, c);
    for (size_t i = 0; i < d; i++) {
        double sd = sqrt(var[i] + b->eps), e = exp(g[i]);
        double mdx = e * sums[1 + i] / N, mdxx = e * sums[1 + d + i] / N;
        for (size_t r = 0; r < n; r++) {
            double xh = (x[r * d + i] - mu[i]) / sd, dxh = dz[r * d + i] * e;
            dx[r * d + i] = (flow_real)((dxh - mdx - xh * mdxx) / sd
                                        - sums[0] * xh / (N * sd));
        }
        for (size_t j = 0; c->grad && j < nbl; j++) {
            flow_real *gj = c->grad + j * c->grad_stride;
            const double *p = part + j * w;
            gj[i] += (flow_real)(e * p[1 + d + i] + p[0]);
            gj[d + i] += (flow_real)p[1 + i];
        }
    }
    return FLOW_OK;
}

/* Backward of z = xhat e^g + beta, xhat = (x - mu)/sd, sd = sqrt(var+eps),
 * logdet = sum(g - log sd).  In training mode mu and var depend on the
 * batch (Ioffe & Szegedy 2015, sec. 3, the chain rule through the batch
 * statistics), and the logdet's -log sd term adds -S xhat / (n sd) with
 * S = sum_r dlogdet_r. */
static int batchnorm_forward_backward(void *self, const flow_call *c,
                                      const flow_real *x, const flow_real *z,
                                      const flow_real *dz,
                                      const flow_real *dlogdet, flow_real *dx)
{
    const batchnorm *b = self;
    const flow_real *g = c->params;
    const double *mu = c->ws, *var = mu + b->d;
    size_t n = c->n, d = b->d;
    double S = 0;
    (void)z;
    if (c->training && flow_call_block_rows(c))
        return block_backward(b, c, x, dz, dlogdet, dx);
    for (size_t r = 0; r < n; r++)
        S += dlogdet[r];
    for (size_t i = 0; i < d; i++) {
        double sd = sqrt(var[i] + b->eps), e = exp(g[i]);
        double mdx = 0, mdxx = 0, gg = 0, gb = 0;
        for (size_t r = 0; r < n; r++) {
            double xh = (x[r * d + i] - mu[i]) / sd, gz = dz[r * d + i];
            mdx += gz * e;
            mdxx += gz * e * xh;
            gg += gz * xh * e;
            gb += gz;
        }
        mdx /= (double)n;
        mdxx /= (double)n;
        for (size_t r = 0; r < n; r++) {
            double xh = (x[r * d + i] - mu[i]) / sd, dxh = dz[r * d + i] * e;
            double v = c->training
                     ? (dxh - mdx - xh * mdxx) / sd - S * xh / ((double)n * sd)
                     : dxh / sd;
            dx[r * d + i] = (flow_real)v;
        }
        if (c->grad) {
            c->grad[i] += (flow_real)(gg + S);
            c->grad[d + i] += (flow_real)gb;
        }
    }
    return FLOW_OK;
}

/* Inverse (evaluation mode only): x = (z - beta) e^-g sd + mu. */
static int batchnorm_inverse_backward(void *self, const flow_call *c,
                                      const flow_real *z, const flow_real *x,
                                      const flow_real *dx,
                                      const flow_real *dlogdet, flow_real *dz)
{
    const batchnorm *b = self;
    const flow_real *g = c->params, *be = c->params + b->d;
    const double *var = (const double *)c->ws + b->d;
    size_t n = c->n, d = b->d;
    (void)x;
    if (c->training)
        return c->host->error(c, "the inverse of batchnorm needs evaluation "
                              "mode");
    for (size_t i = 0; i < d; i++) {
        double sd = sqrt(var[i] + b->eps), e = exp(-g[i]), gg = 0, gb = 0;
        for (size_t r = 0; r < n; r++) {
            double gx = dx[r * d + i];
            dz[r * d + i] = (flow_real)(gx * e * sd);
            gg += -gx * (z[r * d + i] - be[i]) * e * sd - dlogdet[r];
            gb += -gx * e * sd;
        }
        if (c->grad) {
            c->grad[i] += (flow_real)gg;
            c->grad[d + i] += (flow_real)gb;
        }
    }
    return FLOW_OK;
}

/* Portable export: in evaluation mode (the density of a trained model)
 * z = (x - running_mean) / sqrt(running_var + eps) exp(log_gamma) +
 * beta (docs/export.md). */
static int batchnorm_export(void *self, const flow_call *c, flow_export *ex)
{
    const batchnorm *b = self;
    static const char *const name[4] = {"log_gamma", "beta", "running_mean",
                                        "running_var"};
    size_t shape[1] = {b->d};
    int rc = FLOW_OK;
    for (int i = 0; i < 4 && rc == FLOW_OK; i++)
        rc = ex->tensor(ex, name[i], FLOW_DTYPE_REAL, 1, shape,
                        (i < 2 ? c->params : c->buffers) + (i % 2) * b->d);
    return rc;
}

static const flow_layer_type batchnorm_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "batchnorm",
    .summary = "batch normalisation as a flow (batch statistics in "
               "training, running averages in evaluation)",
    .attrs = batchnorm_attrs,
    .describe = batchnorm_describe,
    .create = batchnorm_create,
    .destroy = batchnorm_destroy,
    .workspace = batchnorm_workspace,
    .init = batchnorm_init,
    .forward = batchnorm_forward,
    .inverse = batchnorm_inverse,
    .forward_backward = batchnorm_forward_backward,
    .inverse_backward = batchnorm_inverse_backward,
    .export_tensors = batchnorm_export,
};

FLOW_PLUGIN_LAYERS("batchnorm", FLOW_VERSION_STRING,
                   "batch normalisation flow layer", &batchnorm_type);
