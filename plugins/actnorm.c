/* actnorm.c - the `actnorm` layer: per-dimension scale and shift,
 * z = x * exp(s) + t (Kingma & Dhariwal 2018, Glow, Table 1), with
 * data-dependent initialisation that gives the first batch zero mean and
 * unit variance.  Whether it ran is a buffer saved in checkpoints. */
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
    double eps;
    const flow_host *host;
} actnorm;

static int actnorm_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE
               | FLOW_LAYER_DATA_INIT;
    /* no init: the host's zeros are the identity and say "not yet
     * initialised from data" */
    out->n_params = 2 * cfg->dim;       /* s then t */
    out->n_buffers = 1;                 /* 1 once initialised from data */
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "positive scale exp(s)";
    out->cost_forward = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 2.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    common_tensor(out, 0, "scale", cfg->dim, 0);    /* log-scale s */
    common_tensor(out, 1, "shift", cfg->dim, 0);
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
 * dimension (Glow, sec. 3.1). */
static int actnorm_data_init(void *self, const flow_call *c,
                             flow_real *params, const flow_real *x)
{
    actnorm *a = self;
    size_t d = a->d, n = c->n, flat = 0, first = 0;
    char list[96] = "";
    size_t used = 0;
    double flat_sd = 0;
    if (c->buffers[0] != 0)
        return FLOW_OK;             /* initialised before (checkpoint) */
    if (n < 2)
        return c->host->error(c, "data-dependent initialisation needs at "
                              "least 2 rows, got %zu", n);
    for (size_t i = 0; i < d; i++) {
        double mean = 0, var = 0, sd;
        for (size_t r = 0; r < n; r++)
            mean += x[r * d + i];
        mean /= (double)n;
        for (size_t r = 0; r < n; r++) {
            double v = x[r * d + i] - mean;
            var += v * v;
        }
        sd = sqrt(var / (double)n) + a->eps;
        if (!(sd > 0) || !isfinite(sd))
            return c->host->error(c, "dimension %zu is constant in the first "
                                  "batch; cannot initialise its scale", i);
        /* eps dominates the spread: the scale becomes about 1/eps, and
         * the first steps see huge values (a constant column) */
        if (sd - a->eps <= a->eps) {
            if (!flat++) {
                first = i;
                flat_sd = sd - a->eps;
            }
            if (used + 24 < sizeof list)
                used += (size_t)snprintf(list + used, sizeof list - used,
                                         "%s%zu", flat > 1 ? ", " : "", i);
            else if (used + 5 < sizeof list && list[used - 1] != '.')
                used += (size_t)snprintf(list + used, sizeof list - used,
                                         ", ...");
        }
        params[i] = (flow_real)(-log(sd));
        params[d + i] = (flow_real)(-mean / sd);
    }
    if (flat)
        c->host->log(FLOW_LOG_WARN, "actnorm: input dimension%s %s of %zu "
                     "ha%s (almost) no variance in the %zu rows of the "
                     "first batch (sd %g <= eps %g at dimension %zu): the "
                     "scale becomes about 1/eps = %g and training may "
                     "diverge; drop constant columns or raise eps",
                     flat > 1 ? "s" : "", list, d, flat > 1 ? "ve" : "s", n,
                     flat_sd, a->eps, first, 1 / (flat_sd + a->eps));
    c->buffers[0] = 1;
    return FLOW_OK;
}

static int actnorm_forward(void *self, const flow_call *c, const flow_real *x,
                           flow_real *z, flow_real *logdet)
{
    const actnorm *a = self;
    const flow_real *s = c->params, *t = c->params + a->d;
    double ld = 0;
    for (size_t i = 0; i < a->d; i++)
        ld += s[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < a->d; i++)
            z[r * a->d + i] = x[r * a->d + i] * (flow_real)exp(s[i]) + t[i];
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int actnorm_inverse(void *self, const flow_call *c, const flow_real *z,
                           flow_real *x, flow_real *logdet)
{
    const actnorm *a = self;
    const flow_real *s = c->params, *t = c->params + a->d;
    double ld = 0;
    for (size_t i = 0; i < a->d; i++)
        ld -= s[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < a->d; i++)
            x[r * a->d + i] = (z[r * a->d + i] - t[i]) * (flow_real)exp(-s[i]);
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* z = x e^s + t:  dx = dz e^s;  ds = sum dz x e^s + dlogdet;  dt = sum dz */
static int actnorm_forward_backward(void *self, const flow_call *c,
                                    const flow_real *x, const flow_real *z,
                                    const flow_real *dz,
                                    const flow_real *dlogdet, flow_real *dx)
{
    const actnorm *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t i = 0; i < a->d; i++) {
        double e = exp(s[i]), gs = 0, gt = 0;
        for (size_t r = 0; r < c->n; r++) {
            double g = dz[r * a->d + i];
            dx[r * a->d + i] = (flow_real)(g * e);
            gs += g * x[r * a->d + i] * e + dlogdet[r];
            gt += g;
        }
        if (c->grad) {
            c->grad[i] += (flow_real)gs;
            c->grad[a->d + i] += (flow_real)gt;
        }
    }
    return FLOW_OK;
}

/* x = (z - t) e^-s, logdet = -sum s:
 * dz = dx e^-s;  dt = -sum dx e^-s;  ds = -sum dx x - dlogdet */
static int actnorm_inverse_backward(void *self, const flow_call *c,
                                    const flow_real *z, const flow_real *x,
                                    const flow_real *dx,
                                    const flow_real *dlogdet, flow_real *dz)
{
    const actnorm *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t i = 0; i < a->d; i++) {
        double e = exp(-s[i]), gs = 0, gt = 0;
        for (size_t r = 0; r < c->n; r++) {
            double g = dx[r * a->d + i];
            dz[r * a->d + i] = (flow_real)(g * e);
            gs += -g * x[r * a->d + i] - dlogdet[r];
            gt += -g * e;
        }
        if (c->grad) {
            c->grad[i] += (flow_real)gs;
            c->grad[a->d + i] += (flow_real)gt;
        }
    }
    return FLOW_OK;
}

/* Portable export: z = x exp(log_scale) + shift (Glow, table 1). */
static int actnorm_export(void *self, const flow_call *c, flow_export *ex)
{
    const actnorm *a = self;
    size_t shape[1] = {a->d};
    int rc = ex->tensor(ex, "log_scale", FLOW_DTYPE_REAL, 1, shape,
                        c->params);
    return rc ? rc : ex->tensor(ex, "shift", FLOW_DTYPE_REAL, 1, shape,
                                c->params + a->d);
}

static const flow_layer_type actnorm_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "actnorm",
    .summary = "per-dimension scale and shift, initialised from the first "
               "batch",
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
