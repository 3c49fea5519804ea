/* dup_target.c - test-only plugin for the loader tests: provides a
 * target named like a bundled one ("funnel"). */
#include <math.h>

#include "flow/flow_plugin.h"

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
    static int instance;
    (void)host, (void)cfg, (void)diag;
    return &instance;
}

static void destroy(void *self) { (void)self; }

static int log_density(void *self, const flow_call *c, const flow_real *x,
                       flow_real *logp, flow_real *grad)
{
    (void)self, (void)x, (void)grad;
    for (size_t r = 0; r < c->n; r++)
        logp[r] = 0;
    return FLOW_OK;
}

static const flow_target_type dup_type = {
    .struct_size = sizeof(flow_target_type),
    .name = "funnel",
    .summary = "test: a second funnel",
    .describe = describe,
    .create = create,
    .destroy = destroy,
    .log_density = log_density,
};

FLOW_PLUGIN_TARGETS("dup_target", "test",
                    "test plugin with a duplicate target", &dup_type);
