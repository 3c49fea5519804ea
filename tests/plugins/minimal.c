/* minimal.c - test-only plugin: the smallest trainable layer, with every
 * optional callback NULL (workspace and init among them, ABI 1.4).
 * z = x + b per dimension, b the D parameters, which start at the host's
 * zeros: the layer starts as the identity.  log|det J| = 0.
 * minimal_made is the same layer holding a host MADE and no
 * upgrade_params, as a plugin built before ABI 1.11 would: the host must
 * refuse a checkpoint of format 1 or 2 for it.
 * Built with MINIMAL_SUPPORT (minsupport.so, so that `flowkit check` of
 * minimal.so stays all passes), the plugin holds instead three shifts
 * listing their gradient's support (ABI 1.12, grad_support):
 * minimal_runs one run per parameter, more than the host's first call
 * has room for; minimal_overlap and minimal_past invalid lists
 * (overlapping runs; a run past the layer's parameters), which the host
 * must refuse by the layer's name. */
#include <string.h>

#include "flow/flow_plugin.h"

typedef struct shift {
    const flow_host *host;
    size_t d;
    flow_net *made;             /* minimal_made only */
} shift;

static int shift_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                          flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = cfg->dim;
    out->jac = FLOW_JAC_VOLUME_PRESERVING;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "shift";
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void *shift_create(const flow_host *host, const flow_layer_config *cfg,
                          flow_diag *diag)
{
    shift *s = host->calloc(1, sizeof *s);
    if (!s) {
        strcpy(diag->message, "out of memory");
        return NULL;
    }
    s->host = host;
    s->d = cfg->dim;
    return s;
}

static void shift_destroy(void *self)
{
    shift *s = self;
    if (s) {
        if (s->made)
            s->host->net_destroy(s->made);
        s->host->free(s);
    }
}

#ifndef MINIMAL_SUPPORT
/* shift_create, and a host MADE of D inputs (hidden [4], 2 outputs per
 * dimension) that the layer keeps and never runs */
static void *made_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    static const size_t hidden[1] = {4};
    flow_net_spec spec;
    shift *s = shift_create(host, cfg, diag);
    if (!s)
        return NULL;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.kind = FLOW_NET_MADE;
    spec.in = cfg->dim;
    spec.out = 2;
    spec.n_hidden = 1;
    spec.hidden = hidden;
    spec.act = FLOW_ACT_RELU;
    if (!(s->made = host->net_create(&spec, diag->message,
                                     sizeof diag->message))) {
        shift_destroy(s);
        return NULL;
    }
    return s;
}
#endif

/* out = in + sign * b, row by row; logdet 0 */
static int shift_map(const shift *s, const flow_call *c, const flow_real *in,
                     flow_real *out, flow_real *logdet, flow_real sign)
{
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < s->d; i++)
            out[r * s->d + i] = in[r * s->d + i] + sign * c->params[i];
    memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static int shift_forward(void *self, const flow_call *c, const flow_real *x,
                         flow_real *z, flow_real *logdet)
{
    return shift_map(self, c, x, z, logdet, 1);
}

static int shift_inverse(void *self, const flow_call *c, const flow_real *z,
                         flow_real *x, flow_real *logdet)
{
    return shift_map(self, c, z, x, logdet, -1);
}

/* dL/din = dL/dout; dL/db += sign * sum over rows of dL/dout (z = x + b
 * forward, x = z - b inverse) */
static int shift_vjp(const shift *s, const flow_call *c,
                     const flow_real *dout, flow_real *din, flow_real sign)
{
    memcpy(din, dout, c->n * s->d * sizeof *din);
    if (c->grad)
        for (size_t r = 0; r < c->n; r++)
            for (size_t i = 0; i < s->d; i++)
                c->grad[i] += sign * dout[r * s->d + i];
    return FLOW_OK;
}

static int shift_forward_backward(void *self, const flow_call *c,
                                  const flow_real *x, const flow_real *z,
                                  const flow_real *dz,
                                  const flow_real *dlogdet, flow_real *dx)
{
    (void)x, (void)z, (void)dlogdet;
    return shift_vjp(self, c, dz, dx, 1);
}

static int shift_inverse_backward(void *self, const flow_call *c,
                                  const flow_real *z, const flow_real *x,
                                  const flow_real *dx,
                                  const flow_real *dlogdet, flow_real *dz)
{
    (void)z, (void)x, (void)dlogdet;
    return shift_vjp(self, c, dx, dz, -1);
}

#ifdef MINIMAL_SUPPORT
/* one run (i, 1) per parameter: valid, the same set as NULL */
static size_t runs_support(void *self, const flow_call *c, size_t *runs,
                           size_t cap)
{
    const shift *s = self;
    (void)c;
    for (size_t i = 0; i < s->d && i < cap; i++) {
        runs[2 * i] = i;
        runs[2 * i + 1] = 1;
    }
    return s->d;
}

/* (0, 2) then (1, 1): the second starts inside the first */
static size_t overlap_support(void *self, const flow_call *c, size_t *runs,
                              size_t cap)
{
    static const size_t r[4] = {0, 2, 1, 1};
    (void)self, (void)c;
    memcpy(runs, r, (cap < 2 ? cap : 2) * 2 * sizeof *runs);
    return 2;
}

/* (0, D + 1): one past the layer's D parameters */
static size_t past_support(void *self, const flow_call *c, size_t *runs,
                           size_t cap)
{
    const shift *s = self;
    (void)c;
    if (cap) {
        runs[0] = 0;
        runs[1] = s->d + 1;
    }
    return 1;
}

#define SUPPORT_TYPE(NAME, FN) {                                      \
    .struct_size = sizeof(flow_layer_type), .name = NAME,             \
    .summary = "test: minimal_shift listing its gradient's support",  \
    .describe = shift_describe, .create = shift_create,               \
    .destroy = shift_destroy, .forward = shift_forward,               \
    .inverse = shift_inverse,                                         \
    .forward_backward = shift_forward_backward,                       \
    .inverse_backward = shift_inverse_backward, .grad_support = FN}

static const flow_layer_type runs_type =
    SUPPORT_TYPE("minimal_runs", runs_support);
static const flow_layer_type overlap_type =
    SUPPORT_TYPE("minimal_overlap", overlap_support);
static const flow_layer_type past_type =
    SUPPORT_TYPE("minimal_past", past_support);

FLOW_PLUGIN_LAYERS("minsupport", "test",
                   "shifts listing their gradient's support (tests)",
                   &runs_type, &overlap_type, &past_type);
#else
static const flow_layer_type shift_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "minimal_shift",
    .summary = "test: z = x + b with no workspace and no init",
    .describe = shift_describe,
    .create = shift_create,
    .destroy = shift_destroy,
    .forward = shift_forward,
    .inverse = shift_inverse,
    .forward_backward = shift_forward_backward,
    .inverse_backward = shift_inverse_backward,
};

static const flow_layer_type made_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "minimal_made",
    .summary = "test: minimal_shift holding a host MADE, no upgrade_params",
    .describe = shift_describe,
    .create = made_create,
    .destroy = shift_destroy,
    .forward = shift_forward,
    .inverse = shift_inverse,
    .forward_backward = shift_forward_backward,
    .inverse_backward = shift_inverse_backward,
};

FLOW_PLUGIN_LAYERS("minimal", "test",
                   "a layer with every optional callback NULL (tests)",
                   &shift_type, &made_type);
#endif
