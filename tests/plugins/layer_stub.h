/* layer_stub.h - test-only: an identity layer type, included by the test
 * plugins that exercise the loader (they differ only in their descriptor,
 * which the broken ones write by hand).
 * Define STUB_LAYER_NAME before including. */
#include <string.h>

#include "flow/flow_plugin.h"

static int stub_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                         flow_diag *diag)
{
    (void)cfg, (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE;
    out->jac = FLOW_JAC_VOLUME_PRESERVING;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->logdet_exact = 1;
    return FLOW_OK;
}

static int stub_token;

static void *stub_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    (void)host, (void)cfg, (void)diag;
    return &stub_token;
}

static void stub_destroy(void *self) { (void)self; }

static int stub_map(void *self, const flow_call *c, const flow_real *in,
                    flow_real *out, flow_real *logdet)
{
    (void)self;
    memcpy(out, in, c->n * c->dim * sizeof *out);
    memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static const flow_layer_type stub_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = STUB_LAYER_NAME,
    .summary = "test-only identity layer",
    .describe = stub_describe,
    .create = stub_create,
    .destroy = stub_destroy,
    .forward = stub_map,
    .inverse = stub_map,
};
