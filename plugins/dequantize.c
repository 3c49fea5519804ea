/* dequantize.c - the `dequantize` layer: uniform dequantization of integer
 * data as part of the density, y = (x + u) / levels (Theis et al. 2016,
 * "A note on the evaluation of generative models", sec. 3.1; Ho et al.
 * 2019, Flow++, sec. 3.1, whose uniform case this is).
 *
 * Density direction.  x holds integers in {0, ..., levels - 1} (pixels,
 * never rescaled by the readers).  In training, u ~ U[0, 1)^D is drawn
 * from the call's stream, so that maximising log p(y) maximises a lower
 * bound on the discrete log-likelihood: log P(x) >= E_u log p_pix(x + u)
 * (Theis et al. 2016, sec. 3.1, by Jensen's inequality).  In evaluation
 * mode u = 1/2, the midpoint of each bin, so that the log-probabilities
 * flowkit reports (eval, logprob) are deterministic: a one-point estimate
 * of that expectation rather than the fresh-noise Monte Carlo estimate
 * RealNVP and Glow evaluate with (no longer a bound itself, but without
 * the noise).  The map is a scaling, so
 *
 *     log |det dy/dx| = -D log(levels)     (every row, either mode)
 *
 * and the model's log p is a density of y in [0, 1]^D; a density of the
 * pixels x + u in [0, levels]^D is log p - D log(levels), which is what
 * this log-det already adds.  See docs/language.md for the scales.
 *
 * Sampling direction.  The exact inverse of the evaluation-mode map,
 * x = levels y - 1/2: continuous, a bijection of the real line, with
 * log-det +D log(levels).  Rounding it to the nearest integer and
 * clamping to [0, levels - 1] gives floor(levels y), the quantizer; that
 * rounding is left to the writers of integer formats (IDX, PNG, `--range`)
 * so that the layer stays invertible and differentiable and passes the
 * conformance checker's round-trip and Jacobian rows like any other. */
#include <math.h>
#include <stdio.h>

#include "flow/flow_plugin.h"

enum { ATTR_LEVELS };

static const flow_attr_spec dequantize_attrs[] = {
    {.name = "levels", .type = FLOW_ATTR_INT,
     .doc = "number of integer levels of the data (256 for 8-bit pixels)",
     .def_int = 256, .has_min = 1, .min = 2, .has_max = 1, .max = 65536},
    {0}};

typedef struct dequantize {
    size_t d;
    double levels;
    const flow_host *host;
} dequantize;

/* Stochastic: the training-mode forward draws u from c->rng, so the host
 * seeds its per-thread streams from the model's (deterministic given the
 * seed and the thread count).  The log-det is exact in both modes.  The
 * domain is the integer range, closed: training adds u < 1 to it, so the
 * outputs lie in [0, 1] (the range, ABI 1.8), where `logit` is defined. */
static int dequantize_describe(const flow_layer_config *cfg,
                               flow_layer_desc *out, flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE
               | FLOW_LAYER_STOCHASTIC;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_MONOTONE;
    out->cert_text = "increasing affine map (x + u) / levels";
    out->cost_forward = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    out->domain = FLOW_DOMAIN_CLOSED;
    out->domain_lo = 0;
    out->domain_hi = (double)cfg->attrs[ATTR_LEVELS].i - 1;
    out->range = FLOW_DOMAIN_CLOSED;    /* (x + u) / levels, 0 <= u < 1 */
    out->range_lo = 0;
    out->range_hi = 1;
    return FLOW_OK;
}

static void *dequantize_create(const flow_host *host,
                               const flow_layer_config *cfg, flow_diag *diag)
{
    dequantize *l = host->calloc(1, sizeof *l);
    if (!l) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    l->d = cfg->dim;
    l->levels = (double)cfg->attrs[ATTR_LEVELS].i;
    l->host = host;
    return l;
}

static void dequantize_destroy(void *self)
{
    dequantize *l = self;
    if (l)
        l->host->free(l);
}

/* y = (x + u) / levels, u ~ U(0, 1) in training (rng_uniform draws the
 * open interval), 1/2 in evaluation; logdet = -D log(levels). */
static int dequantize_forward(void *self, const flow_call *c,
                              const flow_real *x, flow_real *z,
                              flow_real *logdet)
{
    const dequantize *l = self;
    double ld = -(double)l->d * log(l->levels);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < l->d; i++) {
            double u = c->training ? c->host->rng_uniform(c->rng) : 0.5;
            z[r * l->d + i] = (flow_real)(((double)x[r * l->d + i] + u)
                                          / l->levels);
        }
        if (!flow_call_skip_logdet(c))
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* x = levels y - 1/2 (the evaluation-mode map undone); logdet = +D log L */
static int dequantize_inverse(void *self, const flow_call *c,
                              const flow_real *z, flow_real *x,
                              flow_real *logdet)
{
    const dequantize *l = self;
    double ld = (double)l->d * log(l->levels);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < l->d; i++)
            x[r * l->d + i] = (flow_real)(l->levels * (double)z[r * l->d + i]
                                          - 0.5);
        if (!flow_call_skip_logdet(c))
            logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* dy/dx = 1 / levels; the log-det does not depend on x */
static int dequantize_forward_backward(void *self, const flow_call *c,
                                       const flow_real *x, const flow_real *z,
                                       const flow_real *dz,
                                       const flow_real *dlogdet, flow_real *dx)
{
    const dequantize *l = self;
    (void)x, (void)z, (void)dlogdet;
    for (size_t k = 0; k < c->n * l->d; k++)
        dx[k] = (flow_real)((double)dz[k] / l->levels);
    return FLOW_OK;
}

/* dx/dy = levels */
static int dequantize_inverse_backward(void *self, const flow_call *c,
                                       const flow_real *z, const flow_real *x,
                                       const flow_real *dx,
                                       const flow_real *dlogdet, flow_real *dz)
{
    const dequantize *l = self;
    (void)z, (void)x, (void)dlogdet;
    for (size_t k = 0; k < c->n * l->d; k++)
        dz[k] = (flow_real)((double)dx[k] * l->levels);
    return FLOW_OK;
}

/* Portable export: no tensors, levels is an attribute; the exported
 * density is the evaluation-mode one (u = 1/2). */
static int dequantize_export(void *self, const flow_call *c, flow_export *ex)
{
    (void)self, (void)c, (void)ex;
    return FLOW_OK;
}

static const flow_layer_type dequantize_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "dequantize",
    .summary = "uniform dequantization of integer data, (x + u) / levels",
    .attrs = dequantize_attrs,
    .describe = dequantize_describe,
    .create = dequantize_create,
    .destroy = dequantize_destroy,
    .forward = dequantize_forward,
    .inverse = dequantize_inverse,
    .forward_backward = dequantize_forward_backward,
    .inverse_backward = dequantize_inverse_backward,
    .export_tensors = dequantize_export,
};

FLOW_PLUGIN_LAYERS("dequantize", FLOW_VERSION_STRING,
                   "uniform dequantization of integer data",
                   &dequantize_type);
