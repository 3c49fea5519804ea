/* iaf.c - the `iaf` layer: inverse autoregressive flow (Kingma et al. 2016),
 * the MAF family with the directions swapped: sampling z -> x in one MADE
 * pass, density x -> z in D sequential passes. */
#include "autoregressive.h"

static int iaf_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    return ar_describe(cfg, out, diag, 1);
}

static void *iaf_create(const flow_host *host, const flow_layer_config *cfg,
                        flow_diag *diag)
{
    return ar_create(host, cfg, diag, 1);
}

static int iaf_forward(void *self, const flow_call *c, const flow_real *x,
                       flow_real *z, flow_real *logdet)
{
    return ar_G(self, c, x, z, logdet);
}

static int iaf_inverse(void *self, const flow_call *c, const flow_real *z,
                       flow_real *x, flow_real *logdet)
{
    return ar_F(self, c, z, x, logdet);
}

static int iaf_forward_backward(void *self, const flow_call *c,
                                const flow_real *x, const flow_real *z,
                                const flow_real *dz, const flow_real *dlogdet,
                                flow_real *dx)
{
    (void)x, (void)z;
    return ar_G_backward(self, c, x, z, dz, dlogdet, dx);
}

static int iaf_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    (void)x, (void)z;
    return ar_F_backward(self, c, z, dx, dlogdet, dz);
}

static const flow_layer_type iaf_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "iaf",
    .summary = "inverse autoregressive flow: sampling in one pass, density in D sequential passes",
    .attrs = ar_attrs,
    .describe = iaf_describe,
    .create = iaf_create,
    .destroy = ar_destroy,
    .workspace = ar_workspace,
    .init = ar_init,
    .prepare = ar_prepare,
    .finish_grad = ar_finish_grad,
    .forward = iaf_forward,
    .inverse = iaf_inverse,
    .forward_backward = iaf_forward_backward,
    .inverse_backward = iaf_inverse_backward,
};

static const flow_layer_type *const layers[] = {&iaf_type};

static const flow_plugin_info info = {
    FLOW_PLUGIN_INFO_HEAD,
    .name = "iaf",
    .version = FLOW_VERSION_STRING,
    .summary = "inverse autoregressive flow: sampling in one pass, density in D sequential passes",
    .n_layers = 1,
    .layers = layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
