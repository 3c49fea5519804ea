/* logit.c - the `logit` layer: z = logit(alpha + (1 - 2 alpha) x) for data
 * in (0, 1), e.g. dequantised pixels (Dinh et al. 2017, RealNVP, sec. 4.1;
 * Papamakarios et al. 2017, MAF, sec. 4.3). */
#include <math.h>
#include <stdio.h>

#include "flow/flow_plugin.h"

enum { ATTR_ALPHA };

static const flow_attr_spec logit_attrs[] = {
    {.name = "alpha", .type = FLOW_ATTR_REAL,
     .doc = "squeeze x into [alpha, 1 - alpha] before the logit",
     .def_real = 1e-6, .has_min = 1, .min = 0, .has_max = 1, .max = 0.49},
    {0}};

typedef struct logit {
    size_t d;
    double alpha, k;            /* k = 1 - 2 alpha */
    const flow_host *host;
} logit;

/* The domain is declared, not tested here: the compiler checks declared
 * bounds against it, the data reader the data, and `flowkit check` draws
 * inside it.  With alpha > 0, x = 0 and x = 1 squeeze into (0, 1): the
 * closed interval; with alpha = 0 the ends map to -+inf. */
static int logit_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                          flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_MONOTONE;
    out->cert_text = "strictly increasing logit";
    out->cost_forward = (flow_cost){0, 0, 4.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 4.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    out->domain = cfg->attrs[ATTR_ALPHA].r > 0 ? FLOW_DOMAIN_CLOSED
                                                : FLOW_DOMAIN_OPEN;
    out->domain_lo = 0;
    out->domain_hi = 1;
    return FLOW_OK;
}

static void *logit_create(const flow_host *host, const flow_layer_config *cfg,
                          flow_diag *diag)
{
    logit *l = host->calloc(1, sizeof *l);
    if (!l) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    l->d = cfg->dim;
    l->alpha = cfg->attrs[ATTR_ALPHA].r;
    l->k = 1 - 2 * l->alpha;
    l->host = host;
    return l;
}

static void logit_destroy(void *self)
{
    logit *l = self;
    if (l)
        l->host->free(l);
}

/* s = alpha + k x must lie strictly inside (0, 1) */
static int squeeze(const logit *l, const flow_call *c, size_t r, size_t i,
                   double x, double *s)
{
    *s = l->alpha + l->k * x;
    if (!(*s > 0 && *s < 1))
        return c->host->error(c, "input %g at row %zu, dimension %zu is "
                              "outside (0, 1)", x, r, i);
    return FLOW_OK;
}

/* z = log s - log(1 - s);  log dz/dx = log k - log s - log(1 - s) */
static int logit_forward(void *self, const flow_call *c, const flow_real *x,
                         flow_real *z, flow_real *logdet)
{
    const logit *l = self;
    int skip = flow_call_skip_logdet(c);
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0, s;
        for (size_t i = 0; i < l->d; i++) {
            if (squeeze(l, c, r, i, x[r * l->d + i], &s) != FLOW_OK)
                return FLOW_ERR_NUMERIC;
            z[r * l->d + i] = (flow_real)(log(s) - log1p(-s));
            if (!skip)
                ld += log(l->k) - log(s) - log1p(-s);
        }
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static double sigmoid(double z)
{
    return z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z));
}

static double softplus(double v)
{
    return v > 0 ? v + log1p(exp(-v)) : log1p(exp(v));
}

/* x = (sigmoid(z) - alpha) / k;  log dx/dz = log s + log(1 - s) - log k,
 * with log s = -softplus(-z), log(1 - s) = -softplus(z) for stability */
static int logit_inverse(void *self, const flow_call *c, const flow_real *z,
                         flow_real *x, flow_real *logdet)
{
    const logit *l = self;
    int skip = flow_call_skip_logdet(c);
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t i = 0; i < l->d; i++) {
            double v = z[r * l->d + i];
            x[r * l->d + i] = (flow_real)((sigmoid(v) - l->alpha) / l->k);
            if (!skip)
                ld += -softplus(-v) - softplus(v) - log(l->k);
        }
        if (!skip)
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int logit_forward_backward(void *self, const flow_call *c,
                                  const flow_real *x, const flow_real *z,
                                  const flow_real *dz,
                                  const flow_real *dlogdet, flow_real *dx)
{
    const logit *l = self;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < l->d; i++) {
            double s;
            if (squeeze(l, c, r, i, x[r * l->d + i], &s) != FLOW_OK)
                return FLOW_ERR_NUMERIC;
            /* dz/dx = k / (s (1 - s)); d logdet/dx = k (2s - 1)/(s(1 - s)) */
            dx[r * l->d + i] = (flow_real)(l->k / (s * (1 - s))
                               * (dz[r * l->d + i] + dlogdet[r] * (2 * s - 1)));
        }
    return FLOW_OK;
}

static int logit_inverse_backward(void *self, const flow_call *c,
                                  const flow_real *z, const flow_real *x,
                                  const flow_real *dx,
                                  const flow_real *dlogdet, flow_real *dz)
{
    const logit *l = self;
    (void)x;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < l->d; i++) {
            double s = sigmoid(z[r * l->d + i]);
            /* dx/dz = s (1 - s) / k; d logdet/dz = 1 - 2 s */
            dz[r * l->d + i] = (flow_real)(dx[r * l->d + i] * s * (1 - s)
                                           / l->k + dlogdet[r] * (1 - 2 * s));
        }
    return FLOW_OK;
}

/* Portable export: no tensors, alpha is an attribute. */
static int logit_export(void *self, const flow_call *c, flow_export *ex)
{
    (void)self, (void)c, (void)ex;
    return FLOW_OK;
}

static const flow_layer_type logit_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "logit",
    .summary = "elementwise logit for data in (0, 1)",
    .attrs = logit_attrs,
    .describe = logit_describe,
    .create = logit_create,
    .destroy = logit_destroy,
    .forward = logit_forward,
    .inverse = logit_inverse,
    .forward_backward = logit_forward_backward,
    .inverse_backward = logit_inverse_backward,
    .export_tensors = logit_export,
};

FLOW_PLUGIN_LAYERS("logit", FLOW_VERSION_STRING,
                   "logit transform for bounded data", &logit_type);
