/* sinharcsinh.c - an out-of-tree flowkit plugin: the elementwise
 * sinh-arcsinh flow of Jones & Pewsey (2009), a layer flowkit does not
 * bundle.  Built against the installed headers alone (see Makefile).
 *
 * Per dimension i, with skew e_i and tail weight d_i = exp(h_i) > 0:
 *
 *     forward (density):  z = sinh(d asinh(x) - e)
 *     inverse (sampling): x = sinh((asinh(z) + e) / d)
 *     log|dz/dx| = h + log cosh(u) - log(1 + x^2) / 2,  u = d asinh(x) - e
 *
 * Strictly increasing in x for every (e, h), so invertible everywhere;
 * e = 0, h = 0 is the identity.  d < 1 gives lighter tails to z than to
 * x (heavier-tailed data), d > 1 the opposite; e shifts the skew. */
#include <math.h>

#include <flow/flow_plugin.h>

/* Attributes, in table order (cfg->attrs[ATTR_SKEW] and so on). */
enum { ATTR_SKEW, ATTR_TAIL };

static const flow_attr_spec sas_attrs[] = {
    {.name = "skew", .type = FLOW_ATTR_REAL,
     .doc = "initial skew e of every dimension", .def_real = 0,
     .has_min = 1, .min = -10, .has_max = 1, .max = 10},
    {.name = "tail", .type = FLOW_ATTR_REAL,
     .doc = "initial tail weight d > 0 of every dimension", .def_real = 1,
     .has_min = 1, .min = 1e-3, .has_max = 1, .max = 1e3},
    {0}};

/* What init() needs of the config; the host pointer comes first, as
 * flow_instance_new and flow_instance_free require. */
typedef struct sas {
    const flow_host *host;
    double skew0, tail0;
} sas;

/* Parameters: e (D values) then h = log d (D values). */
static int sas_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    (void)diag;
    return flow_desc_fill(out, 2 * cfg->dim, FLOW_JAC_DIAGONAL,
                          FLOW_DEP_ELEMENTWISE, FLOW_CERT_MONOTONE,
                          "sinh-arcsinh, strictly increasing "
                          "(tail weight > 0)",
                          (flow_cost){0, 0, 12.0 * (double)cfg->dim});
}

static void *sas_create(const flow_host *host, const flow_layer_config *cfg,
                        flow_diag *diag)
{
    sas s = {host, cfg->attrs[ATTR_SKEW].r, cfg->attrs[ATTR_TAIL].r};
    return flow_instance_new(host, sizeof s, &s, diag);
}

static int sas_init(void *self, const flow_call *c, flow_real *params)
{
    const sas *s = self;
    for (size_t i = 0; i < c->dim; i++) {
        params[i] = (flow_real)s->skew0;
        params[c->dim + i] = (flow_real)log(s->tail0);
    }
    return FLOW_OK;
}

/* log cosh(u) without overflow: |u| + log1p(exp(-2|u|)) - log 2. */
static double log_cosh(double u)
{
    double a = fabs(u);
    return a + log1p(exp(-2 * a)) - M_LN2;
}

static int sas_forward(void *self, const flow_call *c, const flow_real *x,
                       flow_real *z, flow_real *logdet)
{
    size_t dim = c->dim;
    const flow_real *e = c->params, *h = c->params + dim;
    (void)self;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t i = 0; i < dim; i++) {
            double xi = x[r * dim + i];
            double u = exp(h[i]) * asinh(xi) - e[i];
            z[r * dim + i] = (flow_real)sinh(u);
            ld += h[i] + log_cosh(u) - 0.5 * log1p(xi * xi);
        }
        if (!isfinite(ld))
            return c->host->error(c, "non-finite log-det in row %zu", r);
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int sas_inverse(void *self, const flow_call *c, const flow_real *z,
                       flow_real *x, flow_real *logdet)
{
    size_t dim = c->dim;
    const flow_real *e = c->params, *h = c->params + dim;
    (void)self;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t i = 0; i < dim; i++) {
            double zi = z[r * dim + i];
            double w = (asinh(zi) + e[i]) * exp(-h[i]);
            x[r * dim + i] = (flow_real)sinh(w);
            /* -(h + log cosh(asinh z) - log cosh(w)) */
            ld += -h[i] - 0.5 * log1p(zi * zi) + log_cosh(w);
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* VJP of the forward: g = dL/dz, q = dL/dlogdet. */
static int sas_forward_backward(void *self, const flow_call *c,
                                const flow_real *x, const flow_real *z,
                                const flow_real *dz, const flow_real *dlogdet,
                                flow_real *dx)
{
    size_t dim = c->dim;
    const flow_real *e = c->params, *h = c->params + dim;
    (void)self;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < dim; i++) {
            size_t k = r * dim + i;
            double xi = x[k], d = exp(h[i]), a = asinh(xi);
            double u = d * a - e[i], g = dz[k], q = dlogdet[r];
            double du = g * cosh(u) + q * tanh(u);   /* dL/du */
            dx[k] = (flow_real)(du * d / sqrt(1 + xi * xi)
                                - q * xi / (1 + xi * xi));
            if (c->grad) {
                c->grad[i] += (flow_real)(-du);
                c->grad[dim + i] += (flow_real)(du * d * a + q);
            }
        }
    return FLOW_OK;
}

/* VJP of the inverse: g = dL/dx, q = dL/dlogdet (of the inverse). */
static int sas_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    size_t dim = c->dim;
    const flow_real *e = c->params, *h = c->params + dim;
    (void)self;
    (void)x;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < dim; i++) {
            size_t k = r * dim + i;
            double zi = z[k], d = exp(h[i]), w = (asinh(zi) + e[i]) / d;
            double g = dx[k], q = dlogdet[r];
            double dw = g * cosh(w) + q * tanh(w);   /* dL/dw */
            dz[k] = (flow_real)(dw / (d * sqrt(1 + zi * zi))
                                - q * zi / (1 + zi * zi));
            if (c->grad) {
                c->grad[i] += (flow_real)(dw / d);
                c->grad[dim + i] += (flow_real)(-dw * w - q);
            }
        }
    return FLOW_OK;
}

static const flow_layer_type sas_type = {
    FLOW_LAYER_TYPE_HEAD("sinh_arcsinh", "elementwise sinh-arcsinh flow "
                         "(Jones & Pewsey 2009)", sas_attrs),
    .describe = sas_describe,
    .create = sas_create,
    .destroy = flow_instance_free,   /* the instance owns nothing else */
    /* no .workspace: the backward recomputes from x, z and params */
    .init = sas_init,
    .forward = sas_forward,
    .inverse = sas_inverse,
    .forward_backward = sas_forward_backward,
    .inverse_backward = sas_inverse_backward,
};

FLOW_PLUGIN_LAYERS("sinharcsinh", "1.0",
                   "example out-of-tree plugin: sinh-arcsinh layers",
                   &sas_type);
