/* maf.c - the `maf` layer: masked autoregressive flow (Papamakarios et al.
 * 2017): density x -> z in one MADE pass, sampling in D sequential passes. */
#include "autoregressive.h"

static int maf_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    return ar_describe(cfg, out, diag, 0);
}

static void *maf_create(const flow_host *host, const flow_layer_config *cfg,
                        flow_diag *diag)
{
    return ar_create(host, cfg, diag, 0);
}

static int maf_forward(void *self, const flow_call *c, const flow_real *x,
                       flow_real *z, flow_real *logdet)
{
    return ar_F(self, c, x, z, logdet);
}

static int maf_inverse(void *self, const flow_call *c, const flow_real *z,
                       flow_real *x, flow_real *logdet)
{
    return ar_G(self, c, z, x, logdet);
}

static int maf_forward_backward(void *self, const flow_call *c,
                                const flow_real *x, const flow_real *z,
                                const flow_real *dz, const flow_real *dlogdet,
                                flow_real *dx)
{
    (void)x, (void)z;
    return ar_F_backward(self, c, x, dz, dlogdet, dx);
}

static int maf_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    (void)x, (void)z;
    return ar_G_backward(self, c, z, x, dx, dlogdet, dz);
}

static const flow_layer_type maf_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "maf",
    .summary = "masked autoregressive flow: density in one pass, sampling in D sequential passes",
    .attrs = ar_attrs,
    .describe = maf_describe,
    .create = maf_create,
    .destroy = ar_destroy,
    .workspace = ar_workspace,
    .init = ar_init,
    .prepare = ar_prepare,
    .finish_grad = ar_finish_grad,
    .forward = maf_forward,
    .inverse = maf_inverse,
    .forward_backward = maf_forward_backward,
    .inverse_backward = maf_inverse_backward,
};

static const flow_layer_type *const layers[] = {&maf_type};

static const flow_plugin_info info = {
    FLOW_PLUGIN_INFO_HEAD,
    .name = "maf",
    .version = FLOW_VERSION_STRING,
    .summary = "masked autoregressive flow: density in one pass, sampling in D sequential passes",
    .n_layers = 1,
    .layers = layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
