/* actnorm.c - the `actnorm` layer: per-dimension (per-channel on images)
 * scale and shift, z = x * exp(s) + t (Kingma & Dhariwal 2018, Glow,
 * Table 1), with data-dependent initialisation that gives the first batch
 * zero mean and unit variance.  Whether it ran is a buffer saved in
 * checkpoints. */
#include <math.h>
#include <stdio.h>

#include "common.h"

enum { ATTR_EPS };

static const flow_attr_spec actnorm_attrs[] = {
    {.name = "eps", .type = FLOW_ATTR_REAL,
     .doc = "added to the batch standard deviation at initialisation",
     .def_real = 1e-6, .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {0}};

typedef struct actnorm {
    size_t d;
    size_t nc;                  /* scales: D, or C on an image [C, H, W] */
    size_t g;                   /* values per scale: 1, or H*W           */
    double eps;
    const flow_host *host;
} actnorm;

/* On an image [C, H, W] (stored flat in C order) one scale and shift per
 * channel, shared by its H*W values, as Glow's actnorm (Kingma & Dhariwal
 * 2018, table 1); otherwise one per dimension. */
static void groups(const flow_layer_config *cfg, size_t *nc, size_t *g)
{
    size_t shape[4];
    if (flow_config_shape(cfg, shape) == 3) {
        *nc = shape[0];
        *g = shape[1] * shape[2];
    } else {
        *nc = cfg->dim;
        *g = 1;
    }
}

static int actnorm_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    size_t nc, g;
    (void)diag;
    groups(cfg, &nc, &g);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE
               | FLOW_LAYER_DATA_INIT;
    /* no init: the host's zeros are the identity and say "not yet
     * initialised from data" */
    out->n_params = 2 * nc;             /* s then t */
    out->n_buffers = 1;                 /* 1 once initialised from data */
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = g > 1 ? "positive scale exp(s) per channel"
                           : "positive scale exp(s)";
    out->cost_forward = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    common_tensor(out, 0, "scale", nc, 0);    /* log-scale s */
    common_tensor(out, 1, "shift", nc, 0);
    return FLOW_OK;
}

static void *actnorm_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    actnorm *a = host->calloc(1, sizeof *a);
    if (!a) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    a->d = cfg->dim;
    groups(cfg, &a->nc, &a->g);
    a->eps = cfg->attrs[ATTR_EPS].r;
    a->host = host;
    return a;
}

static void actnorm_destroy(void *self)
{
    actnorm *a = self;
    if (a)
        a->host->free(a);
}

/* Sets s, t so that the batch leaves with mean 0 and variance 1 per
 * dimension, or per channel over its rows and pixels (Glow, sec. 3.1). */
static int actnorm_data_init(void *self, const flow_call *c,
                             flow_real *params, const flow_real *x)
{
    actnorm *a = self;
    size_t d = a->d, nc = a->nc, g = a->g, n = c->n, flat = 0, first = 0;
    const char *what = g > 1 ? "channel" : "dimension";
    char list[96] = "";
    size_t used = 0;
    double flat_sd = 0;
    if (c->buffers[0] != 0)
        return FLOW_OK;             /* initialised before (checkpoint) */
    if (n < 2)
        return c->host->error(c, "data-dependent initialisation needs at "
                              "least 2 rows, got %zu", n);
    for (size_t k = 0; k < nc; k++) {
        double mean = 0, var = 0, sd, cnt = (double)n * (double)g;
        for (size_t r = 0; r < n; r++)
            for (size_t j = 0; j < g; j++)
                mean += x[r * d + k * g + j];
        mean /= cnt;
        for (size_t r = 0; r < n; r++)
            for (size_t j = 0; j < g; j++) {
                double v = x[r * d + k * g + j] - mean;
                var += v * v;
            }
        sd = sqrt(var / cnt) + a->eps;
        if (!(sd > 0) || !isfinite(sd))
            return c->host->error(c, "%s %zu is constant in the first "
                                  "batch; cannot initialise its scale", what,
                                  k);
        /* eps dominates the spread: the scale becomes about 1/eps, and
         * the first steps see huge values (a constant column) */
        if (sd - a->eps <= a->eps) {
            if (!flat++) {
                first = k;
                flat_sd = sd - a->eps;
            }
            if (used + 24 < sizeof list)
                used += (size_t)snprintf(list + used, sizeof list - used,
                                         "%s%zu", flat > 1 ? ", " : "", k);
            else if (used + 5 < sizeof list && list[used - 1] != '.')
                used += (size_t)snprintf(list + used, sizeof list - used,
                                         ", ...");
        }
        params[k] = (flow_real)(-log(sd));
        params[nc + k] = (flow_real)(-mean / sd);
    }
    if (flat)
        c->host->log(FLOW_LOG_WARN, "actnorm: input %s%s %s of %zu "
                     "ha%s (almost) no variance in the %zu rows of the "
                     "first batch (sd %g <= eps %g at %s %zu): the "
                     "scale becomes about 1/eps = %g and training may "
                     "diverge; drop constant columns or raise eps",
                     what, flat > 1 ? "s" : "", list, nc,
                     flat > 1 ? "ve" : "s", n, flat_sd, a->eps, what, first,
                     1 / (flat_sd + a->eps));
    c->buffers[0] = 1;
    return FLOW_OK;
}

/* log|det| = g * sum_k s_k: each scale acts on g values (H*W on images,
 * Glow table 1). */
static double sum_scales(const actnorm *a, const flow_real *s)
{
    double ld = 0;
    for (size_t k = 0; k < a->nc; k++)
        ld += s[k];
    return ld * (double)a->g;
}

static int actnorm_forward(void *self, const flow_call *c, const flow_real *x,
                           flow_real *z, flow_real *logdet)
{
    const actnorm *a = self;
    const flow_real *s = c->params, *t = c->params + a->nc;
    int skip = flow_call_skip_logdet(c);
    double ld = skip ? 0 : sum_scales(a, s);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t k = 0; k < a->nc; k++) {
            flow_real e = (flow_real)exp(s[k]);
            size_t o = r * a->d + k * a->g;
            for (size_t j = 0; j < a->g; j++)
                z[o + j] = x[o + j] * e + t[k];
        }
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int actnorm_inverse(void *self, const flow_call *c, const flow_real *z,
                           flow_real *x, flow_real *logdet)
{
    const actnorm *a = self;
    const flow_real *s = c->params, *t = c->params + a->nc;
    int skip = flow_call_skip_logdet(c);
    double ld = skip ? 0 : -sum_scales(a, s);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t k = 0; k < a->nc; k++) {
            flow_real e = (flow_real)exp(-s[k]);
            size_t o = r * a->d + k * a->g;
            for (size_t j = 0; j < a->g; j++)
                x[o + j] = (z[o + j] - t[k]) * e;
        }
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* z = x e^s + t, logdet = g sum s:  dx = dz e^s;
 * ds = sum dz x e^s + g dlogdet;  dt = sum dz (sums over rows and the
 * scale's g values) */
static int actnorm_forward_backward(void *self, const flow_call *c,
                                    const flow_real *x, const flow_real *z,
                                    const flow_real *dz,
                                    const flow_real *dlogdet, flow_real *dx)
{
    const actnorm *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t k = 0; k < a->nc; k++) {
        double e = exp(s[k]), gs = 0, gt = 0;
        for (size_t r = 0; r < c->n; r++) {
            size_t o = r * a->d + k * a->g;
            for (size_t j = 0; j < a->g; j++) {
                double g = dz[o + j];
                dx[o + j] = (flow_real)(g * e);
                gs += g * x[o + j] * e;
                gt += g;
            }
            gs += (double)a->g * dlogdet[r];
        }
        if (c->grad) {
            c->grad[k] += (flow_real)gs;
            c->grad[a->nc + k] += (flow_real)gt;
        }
    }
    return FLOW_OK;
}

/* x = (z - t) e^-s, logdet = -g sum s:
 * dz = dx e^-s;  dt = -sum dx e^-s;  ds = -sum dx x - g dlogdet */
static int actnorm_inverse_backward(void *self, const flow_call *c,
                                    const flow_real *z, const flow_real *x,
                                    const flow_real *dx,
                                    const flow_real *dlogdet, flow_real *dz)
{
    const actnorm *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t k = 0; k < a->nc; k++) {
        double e = exp(-s[k]), gs = 0, gt = 0;
        for (size_t r = 0; r < c->n; r++) {
            size_t o = r * a->d + k * a->g;
            for (size_t j = 0; j < a->g; j++) {
                double g = dx[o + j];
                dz[o + j] = (flow_real)(g * e);
                gs += -g * x[o + j];
                gt += -g * e;
            }
            gs -= (double)a->g * dlogdet[r];
        }
        if (c->grad) {
            c->grad[k] += (flow_real)gs;
            c->grad[a->nc + k] += (flow_real)gt;
        }
    }
    return FLOW_OK;
}

/* Portable export: z = x exp(log_scale) + shift (Glow, table 1), with
 * `per` saying whether the tensors hold one entry per dimension ([D]) or
 * per channel ([C], each broadcast over the channel's H*W values of the
 * flat C-order state). */
static int actnorm_export(void *self, const flow_call *c, flow_export *ex)
{
    const actnorm *a = self;
    size_t shape[1] = {a->nc};
    int rc = ex->attr(ex, "per", a->g > 1 ? "\"channel\"" : "\"dimension\"");
    if (!rc)
        rc = ex->tensor(ex, "log_scale", FLOW_DTYPE_REAL, 1, shape,
                        c->params);
    return rc ? rc : ex->tensor(ex, "shift", FLOW_DTYPE_REAL, 1, shape,
                                c->params + a->nc);
}

static const flow_layer_type actnorm_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "actnorm",
    .summary = "per-dimension (per-channel on images) scale and shift, "
               "initialised from the first batch",
    .attrs = actnorm_attrs,
    .describe = actnorm_describe,
    .create = actnorm_create,
    .destroy = actnorm_destroy,
    .data_init = actnorm_data_init,
    .forward = actnorm_forward,
    .inverse = actnorm_inverse,
    .forward_backward = actnorm_forward_backward,
    .inverse_backward = actnorm_inverse_backward,
    .export_tensors = actnorm_export,
};

FLOW_PLUGIN_LAYERS("actnorm", FLOW_VERSION_STRING, "activation normalisation",
                   &actnorm_type);
