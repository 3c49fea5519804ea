/* coupling.c - the `coupling` layer: the dimensions of a mask pass through
 * and condition an elementwise transformer of the others (NICE, Dinh et al.
 * 2015, eq. 4; RealNVP, Dinh et al. 2017, eqs. 6-7; neural spline flows,
 * Durkan et al. 2019).  Both directions are one conditioner pass. */
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_TRANSFORMER, ATTR_MASK, ATTR_HIDDEN, ATTR_ACTIVATION,
       ATTR_IDENTITY_INIT };
enum { MASK_PARITY, MASK_HALF, MASK_FIRST, MASK_EXPLICIT };

static const flow_attr_spec parity_attrs[] = {
    {.name = "p", .type = FLOW_ATTR_INT, .doc = "transform dimensions j "
     "with j % 2 == p % 2", .def_int = 0, .has_min = 1, .min = 0},
    {0}};
static const flow_attr_spec first_attrs[] = {
    {.name = "k", .type = FLOW_ATTR_INT, .required = 1,
     .doc = "the first k dimensions pass through", .has_min = 1, .min = 1},
    {0}};
static const flow_attr_spec explicit_attrs[] = {
    {.name = "mask", .type = FLOW_ATTR_INT_LIST, .required = 1,
     .doc = "1 = transformed, 0 = passes through", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1, .min_len = 1},
    {0}};

static const flow_variant_alt mask_alts[] = {
    {.name = "parity", .doc = "alternate dimensions; parity(i) in a repeat "
     "flips the roles each layer", .attrs = parity_attrs},
    {.name = "half", .doc = "the first floor(D/2) pass through, the rest "
     "are transformed"},
    {.name = "first", .doc = "the first k pass through", .attrs = first_attrs},
    {.name = "explicit", .doc = "a 0/1 list, 1 = transformed; a bare list "
     "means this", .attrs = explicit_attrs, .bare_list = 1},
    {0}};

static const flow_attr_spec coupling_attrs[] = {
    TRANSFORMER_ATTR("affine"),
    {.name = "mask", .type = FLOW_ATTR_VARIANT,
     .doc = "which dimensions are transformed: parity(p) | half | first(k) "
            "| [0/1 list]", .def_str = "parity(0)", .alternatives = mask_alts},
    HIDDEN_ATTR("[128, 128]"),
    ACTIVATION_ATTR(0),
    {.name = "identity_init", .type = FLOW_ATTR_BOOL,
     .doc = "start as the identity map (zero last conditioner layer)",
     .def_int = 1},
    {0}};

typedef struct coupling {
    const flow_host *host;
    size_t d, k, dt, dc, np;    /* dims, context, transformed, conditioning */
    size_t *ti, *ci;            /* indices of transformed / conditioning */
    flow_tf tf;
    size_t P;                   /* transformer parameters per scalar */
    flow_net *net;
} coupling;

/* mask[i] = 1 when dimension i is transformed; 0 or -1 with diag set. */
static int make_mask(const flow_layer_config *cfg, int32_t *mask,
                     flow_diag *diag)
{
    const flow_attr_value *v = &cfg->attrs[ATTR_MASK];
    size_t d = cfg->dim, nt = 0;
    diag->attr = ATTR_MASK;
    for (size_t i = 0; i < d; i++) {
        switch (v->i) {
        case MASK_PARITY:
            mask[i] = (int32_t)(i % 2 == (size_t)(v->sub[0].i % 2));
            break;
        case MASK_HALF:
            mask[i] = i >= d / 2;
            break;
        case MASK_FIRST:
            mask[i] = i >= (size_t)v->sub[0].i;
            break;
        case MASK_EXPLICIT:
            if (v->sub[0].n != d) {
                snprintf(diag->message, sizeof diag->message, "mask has %zu "
                         "entries but the layer's input has %zu dimensions",
                         v->sub[0].n, d);
                return -1;
            }
            mask[i] = v->sub[0].ilist[i] != 0;
            break;
        }
        nt += (size_t)mask[i];
    }
    if (nt == 0 || nt == d) {
        snprintf(diag->message, sizeof diag->message, "the mask %s: a "
                 "coupling layer needs both a transformed and a "
                 "conditioning part (input has %zu dimension%s)",
                 nt ? "transforms every dimension" : "transforms nothing", d,
                 d == 1 ? "" : "s");
        snprintf(diag->help, sizeof diag->help, d == 1
                 ? "a 1-dimensional input needs an elementwise layer "
                   "(actnorm, logit) instead"
                 : "choose a mask with at least one 0 and one 1");
        return -1;
    }
    diag->attr = -1;
    return 0;
}

static void net_spec(const flow_layer_config *cfg, size_t dc, size_t dt,
                     size_t P, size_t *hidden, flow_net_spec *s)
{
    const flow_attr_value *h = &cfg->attrs[ATTR_HIDDEN];
    memset(s, 0, sizeof *s);
    s->struct_size = sizeof *s;
    s->kind = FLOW_NET_MLP;
    s->in = dc;
    s->context = cfg->context_dim;
    s->out = dt * P;
    s->n_hidden = h->n;
    for (size_t i = 0; i < h->n; i++)
        hidden[i] = (size_t)h->ilist[i];
    s->hidden = hidden;
    s->act = activation_values[cfg->attrs[ATTR_ACTIVATION].i];
    s->zero_last = (int)cfg->attrs[ATTR_IDENTITY_INIT].i;
}

/* Builds the conditioner; NULL with diag set. */
static flow_net *make_net(const flow_layer_config *cfg, const int32_t *mask,
                          const flow_tf *tf, flow_diag *diag, size_t *P_out)
{
    const flow_host *h = cfg->host;
    size_t hidden[64], dt = 0, P;
    flow_net_spec spec;
    flow_net *net;
    for (size_t i = 0; i < cfg->dim; i++)
        dt += (size_t)mask[i];
    P = h->tf_params(tf);
    if (P == 0) {
        diag->attr = ATTR_TRANSFORMER;
        snprintf(diag->message, sizeof diag->message, "invalid transformer");
        return NULL;
    }
    net_spec(cfg, cfg->dim - dt, dt, P, hidden, &spec);
    net = h->net_create(&spec, diag->message, sizeof diag->message);
    if (!net)
        diag->attr = ATTR_HIDDEN;
    *P_out = P;
    return net;
}

static int coupling_describe(const flow_layer_config *cfg,
                             flow_layer_desc *out, flow_diag *diag)
{
    const flow_host *h = cfg->host;
    flow_net *net;
    flow_tf tf;
    size_t P;

    if (!h || !FLOW_HOST_HAS(h, net_create) || !h->net_create) {
        snprintf(diag->message, sizeof diag->message, "this host provides no "
                 "networks (flowkit too old for this plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    if (make_mask(cfg, out->dep_vec, diag) != 0
        || common_make_tf(&cfg->attrs[ATTR_TRANSFORMER], ATTR_TRANSFORMER,
                          &tf, diag) != 0)
        return FLOW_ERR_INVAL;
    if (!(net = make_net(cfg, out->dep_vec, &tf, diag, &P)))
        return FLOW_ERR_INVAL;
    out->n_params = h->net_params(net);
    common_tensor(out, 0, "net", out->n_params, 0);
    h->net_destroy(net);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->jac = FLOW_JAC_COUPLING;
    out->dep = FLOW_DEP_COUPLING;
    out->cert = tf.kind == FLOW_TF_ADDITIVE ? FLOW_CERT_STRUCTURAL
                                            : FLOW_CERT_MONOTONE;
    out->cert_text = common_tf_cert(&tf);
    out->cost_forward = (flow_cost){1, 0, (double)out->n_params};
    out->cost_inverse = (flow_cost){1, 0, (double)out->n_params};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void coupling_destroy(void *self)
{
    coupling *c = self;
    if (!c)
        return;
    if (c->net)
        c->host->net_destroy(c->net);
    c->host->free(c->ti);
    c->host->free(c->ci);
    c->host->free(c);
}

static void *coupling_create(const flow_host *host,
                             const flow_layer_config *cfg, flow_diag *diag)
{
    coupling *c = host->calloc(1, sizeof *c);
    int32_t *mask = host->calloc(cfg->dim, sizeof *mask);
    if (!c || !mask) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        host->free(mask);
        host->free(c);              /* c->host is not set yet */
        return NULL;
    }
    c->host = host;
    c->d = cfg->dim;
    c->k = cfg->context_dim;
    if (make_mask(cfg, mask, diag) != 0
        || common_make_tf(&cfg->attrs[ATTR_TRANSFORMER], ATTR_TRANSFORMER,
                          &c->tf, diag) != 0
        || !(c->net = make_net(cfg, mask, &c->tf, diag, &c->P)))
        goto fail;
    c->np = host->net_params(c->net);
    c->ti = host->calloc(c->d, sizeof *c->ti);
    c->ci = host->calloc(c->d, sizeof *c->ci);
    if (!c->ti || !c->ci) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < c->d; i++) {
        if (mask[i])
            c->ti[c->dt++] = i;
        else
            c->ci[c->dc++] = i;
    }
    host->free(mask);
    return c;
fail:
    host->free(mask);
    coupling_destroy(c);
    return NULL;
}

/* Workspace: h (n x dc), theta (n x dt x P), u, v, lad, du, dv, dlad
 * (n x dt each), dtheta (n x dt x P), dh (n x dc), then the net's tape. */
typedef struct cws {
    flow_real *h, *theta, *u, *v, *lad, *du, *dv, *dlad, *dtheta, *dh;
    void *net;
} cws;

static size_t coupling_workspace(void *self, size_t n, int dir)
{
    const coupling *c = self;
    size_t b = 0, nd = n * c->dt, nt = nd * c->P, nc = n * c->dc;
    (void)dir;
    b += 2 * common_bytes(nc) + 2 * common_bytes(nt) + 6 * common_bytes(nd);
    return b + c->host->net_workspace(c->net, n);
}

static cws carve(const coupling *c, const flow_call *call)
{
    size_t n = call->n, nd = n * c->dt, nt = nd * c->P, nc = n * c->dc;
    char *cur = call->ws;
    cws w;
    w.h = common_take(&cur, nc);
    w.theta = common_take(&cur, nt);
    w.u = common_take(&cur, nd);
    w.v = common_take(&cur, nd);
    w.lad = common_take(&cur, nd);
    w.du = common_take(&cur, nd);
    w.dv = common_take(&cur, nd);
    w.dlad = common_take(&cur, nd);
    w.dtheta = common_take(&cur, nt);
    w.dh = common_take(&cur, nc);
    w.net = cur;
    return w;
}

static void gather(size_t n, size_t d, const size_t *idx, size_t k,
                   const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < k; j++)
            out[r * k + j] = in[r * d + idx[j]];
}

static void scatter(size_t n, size_t d, const size_t *idx, size_t k,
                    const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < k; j++)
            out[r * d + idx[j]] = in[r * k + j];
}

static int coupling_init(void *self, const flow_call *call,
                         flow_real *params)
{
    const coupling *c = self;
    c->host->net_init(c->net, params, call->rng);
    return FLOW_OK;
}

/* The conditioner on the pass-through part of `in`. */
static int condition(const coupling *c, const flow_call *call,
                     const flow_real *in, cws *w)
{
    int rc;
    gather(call->n, c->d, c->ci, c->dc, in, w->h);
    rc = c->host->net_forward(c->net, call->params, call->n, w->h, call->ctx,
                              0.0, w->theta, w->net);
    if (rc != FLOW_OK)
        return c->host->error(call, "conditioner failed (status %d)", rc);
    return FLOW_OK;
}

static void sum_rows(const coupling *c, size_t n, const flow_real *lad,
                     flow_real *logdet)
{
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        for (size_t j = 0; j < c->dt; j++)
            s += lad[r * c->dt + j];
        logdet[r] = (flow_real)s;
    }
}

static int apply(void *self, const flow_call *call, const flow_real *in,
                 flow_real *out, flow_real *logdet, int dir)
{
    const coupling *c = self;
    cws w = carve(c, call);
    size_t n = call->n;
    int rc;
    if ((rc = condition(c, call, in, &w)) != FLOW_OK)
        return rc;
    gather(n, c->d, c->ti, c->dt, in, w.u);
    rc = dir ? c->host->tf_inverse(&c->tf, n * c->dt, w.u, w.theta, w.v,
                                   w.lad)
             : c->host->tf_forward(&c->tf, n * c->dt, w.u, w.theta, w.v,
                                   w.lad);
    if (rc != FLOW_OK)
        return c->host->error(call, "transformer produced a non-finite value "
                              "(%s)", dir ? "inverse" : "forward");
    memcpy(out, in, n * c->d * sizeof *out);
    scatter(n, c->d, c->ti, c->dt, w.v, out);
    sum_rows(c, n, w.lad, logdet);
    return FLOW_OK;
}

static int coupling_forward(void *self, const flow_call *call,
                            const flow_real *x, flow_real *z,
                            flow_real *logdet)
{
    return apply(self, call, x, z, logdet, 0);
}

static int coupling_inverse(void *self, const flow_call *call,
                            const flow_real *z, flow_real *x,
                            flow_real *logdet)
{
    return apply(self, call, z, x, logdet, 1);
}

/* VJP of either direction, after apply() on the same workspace: the
 * conditioner saw in_C (= out_C), the transformer mapped u -> v. */
static int backward(void *self, const flow_call *call, const flow_real *dout,
                    const flow_real *dlogdet, flow_real *din, int dir)
{
    const coupling *c = self;
    cws w = carve(c, call);
    size_t n = call->n;
    int rc;
    gather(n, c->d, c->ti, c->dt, dout, w.dv);
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c->dt; j++)
            w.dlad[r * c->dt + j] = dlogdet[r];
    rc = dir ? c->host->tf_inverse_backward(&c->tf, n * c->dt, w.u, w.v,
                                            w.theta, w.dv, w.dlad, w.du,
                                            w.dtheta)
             : c->host->tf_backward(&c->tf, n * c->dt, w.u, w.theta, w.dv,
                                    w.dlad, w.du, w.dtheta);
    if (rc != FLOW_OK)
        return c->host->error(call, "transformer gradient is not finite");
    rc = c->host->net_backward(c->net, call->params, n, w.net, w.dtheta, w.dh,
                               call->dctx, call->grad);
    if (rc != FLOW_OK)
        return c->host->error(call, "conditioner gradient failed");
    memcpy(din, dout, n * c->d * sizeof *din);
    scatter(n, c->d, c->ti, c->dt, w.du, din);
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c->dc; j++)
            din[r * c->d + c->ci[j]] += w.dh[r * c->dc + j];
    return FLOW_OK;
}

static int coupling_forward_backward(void *self, const flow_call *call,
                                     const flow_real *x, const flow_real *z,
                                     const flow_real *dz,
                                     const flow_real *dlogdet, flow_real *dx)
{
    (void)x, (void)z;
    return backward(self, call, dz, dlogdet, dx, 0);
}

static int coupling_inverse_backward(void *self, const flow_call *call,
                                     const flow_real *z, const flow_real *x,
                                     const flow_real *dx,
                                     const flow_real *dlogdet, flow_real *dz)
{
    (void)x, (void)z;
    return backward(self, call, dx, dlogdet, dz, 1);
}

/* Portable export (docs/export.md): the mask (1 = conditioning input,
 * RealNVP's b, Dinh et al. 2017, eq. 9), the conditioner and the
 * transformer. */
static int coupling_export(void *self, const flow_call *call,
                           flow_export *ex)
{
    const coupling *c = self;
    const flow_host *h = c->host;
    uint8_t *mask = h->alloc(c->d);
    size_t shape[1] = {c->d};
    int rc;
    if (!mask)
        return h->error(call, "out of memory");
    memset(mask, 1, c->d);
    for (size_t j = 0; j < c->dt; j++)
        mask[c->ti[j]] = 0;
    rc = ex->tensor(ex, "mask", FLOW_DTYPE_U8, 1, shape, mask);
    h->free(mask);
    if (rc != FLOW_OK)
        return rc;
    return common_export_net_tf(h, call, c->net, &c->tf, "inputs: the "
                                "conditioning dimensions (mask = 1) in "
                                "increasing order, then the context columns; "
                                "output column j*P + p is transformer "
                                "parameter p of the j-th transformed "
                                "dimension (mask = 0) in increasing order, P "
                                "= transformer.params_per_scalar", ex);
}

static const flow_layer_type coupling_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "coupling",
    .summary = "coupling layer: affine (RealNVP), additive (NICE) or "
               "rational-quadratic spline transformer",
    .attrs = coupling_attrs,
    .describe = coupling_describe,
    .create = coupling_create,
    .destroy = coupling_destroy,
    .workspace = coupling_workspace,
    .init = coupling_init,
    .forward = coupling_forward,
    .inverse = coupling_inverse,
    .forward_backward = coupling_forward_backward,
    .inverse_backward = coupling_inverse_backward,
    .export_tensors = coupling_export,
};

FLOW_PLUGIN_LAYERS("coupling", FLOW_VERSION_STRING, "coupling layers",
                   &coupling_type);
