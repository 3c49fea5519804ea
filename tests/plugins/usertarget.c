/* usertarget.c - test-only target plugin, as a user would write one: a
 * Gaussian N(mu, sigma^2 I) scaled by e^c, so log Z = c + (D/2) log(2 pi
 * sigma^2) is known (tests/cli_fit.sh, tests/test_vi.c); with fail_beyond
 * set, a target that fails on far samples (tests/mpi.sh). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "flow/flow_plugin.h"

typedef struct shifted {
    const flow_host *host;
    size_t dim;
    double mu, sigma, c, fail_beyond;
} shifted;

static const flow_attr_spec attrs[] = {
    {.name = "mu", .type = FLOW_ATTR_REAL, .doc = "mean of every coordinate",
     .def_real = 1.0},
    {.name = "sigma", .type = FLOW_ATTR_REAL, .doc = "standard deviation",
     .def_real = 0.5, .has_min = 1, .min = 1e-3},
    {.name = "c", .type = FLOW_ATTR_REAL, .doc = "log of the scale factor",
     .def_real = 2.0},
    {.name = "fail_beyond", .type = FLOW_ATTR_REAL, .doc = "fail on a "
     "sample with a coordinate further than this from mu (0: never)",
     .def_real = 0.0, .has_min = 1, .min = 0},
    {0}};

static int describe(const flow_target_config *cfg, size_t *dim_out,
                    flow_diag *diag)
{
    (void)cfg, (void)diag;
    *dim_out = 0;
    return FLOW_OK;
}

static void *create(const flow_host *host, const flow_target_config *cfg,
                    flow_diag *diag)
{
    shifted *s = host->calloc(1, sizeof *s);
    (void)diag;
    if (!s)
        return NULL;
    s->host = host;
    s->dim = cfg->dim;
    s->mu = cfg->attrs[0].r;
    s->sigma = cfg->attrs[1].r;
    s->c = cfg->attrs[2].r;
    s->fail_beyond = cfg->attrs[3].r;
    return s;
}

static void destroy(void *self)
{
    shifted *s = self;
    if (s)
        s->host->free(s);
}

static int log_density(void *self, const flow_call *c, const flow_real *x,
                       flow_real *logp, flow_real *grad)
{
    const shifted *s = self;
    double v = s->sigma * s->sigma;
    for (size_t r = 0; r < c->n; r++) {
        double q = 0;
        for (size_t i = 0; i < s->dim; i++) {
            double e = x[r * s->dim + i] - s->mu;
            if (s->fail_beyond > 0 && fabs(e) > s->fail_beyond) {
                snprintf(c->err, c->err_cap, "sample %zu: x[%zu] = %g is "
                         "further than %g from %g", r, i,
                         (double)x[r * s->dim + i], s->fail_beyond, s->mu);
                return FLOW_ERR_NUMERIC;
            }
            q += e * e;
            if (grad)
                grad[r * s->dim + i] = (flow_real)(-e / v);
        }
        logp[r] = (flow_real)(s->c - q / (2 * v));
    }
    return FLOW_OK;
}

static double log_normalizer(void *self)
{
    const shifted *s = self;
    return s->c + 0.5 * (double)s->dim * log(2 * M_PI * s->sigma * s->sigma);
}

static const flow_target_type shifted_type = {
    .struct_size = sizeof(flow_target_type),
    .name = "shifted_normal",
    .summary = "test: e^c N(mu, sigma^2 I)",
    .attrs = attrs,
    .describe = describe,
    .create = create,
    .destroy = destroy,
    .log_density = log_density,
    .log_normalizer = log_normalizer,
};

FLOW_PLUGIN_TARGETS("usertarget", "test", "a user's target plugin (tests)",
                    &shifted_type);
