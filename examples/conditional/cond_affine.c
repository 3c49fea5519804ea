/* cond_affine.c - an out-of-tree flowkit plugin: a conditional affine
 * coupling layer whose conditioner, a host MLP, reads the context.
 * Built against the installed headers alone (see Makefile).
 *
 * The dimensions i with i % 2 == parity are transformed (T), the others
 * (C) pass through and, with the context c of the layer's `given`,
 * condition the transform (RealNVP, Dinh et al. 2017, eqs. 6-7, with a
 * context input as in conditional flows, Winkler et al. 2019):
 *
 *     (s, t) = MLP([x_C, c])            one (s, t) pair per dimension of T
 *     forward (density):   z_T = x_T e^l(s) + t,    z_C = x_C
 *     inverse (sampling):  x_T = (z_T - t) e^-l(s), x_C = z_C
 *     log|det dz/dx| = sum_T l(s),  l(s) = 5 tanh(s / 5)
 *
 * The transform is the host's affine transformer (tf_forward and
 * tf_inverse; l(s) bounded so that one bad step cannot overflow): its
 * `lad` is the log-derivative of the direction it computed, so the sum of
 * the lads is the layer's log-det in both directions.  The MLP's last
 * layer starts at zero, so the layer starts as the identity. */
#include <flow/flow_plugin.h>

enum { ATTR_PARITY, ATTR_HIDDEN };
#define MAX_HIDDEN 8

static const flow_attr_spec cond_attrs[] = {
    {.name = "parity", .type = FLOW_ATTR_INT,
     .doc = "transform the dimensions i with i % 2 == parity; the others "
            "and the context condition them", .def_int = 0,
     .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {.name = "hidden", .type = FLOW_ATTR_INT_LIST,
     .doc = "hidden widths of the conditioner MLP", .def_str = "[64, 64]",
     .has_min = 1, .min = 1, .has_max = 1, .max = 4096, .min_len = 1,
     .max_len = MAX_HIDDEN},
    {0}};

typedef struct cond {
    const flow_host *host;      /* first, for flow_instance_new/_free */
    size_t d, parity, dt, dc;   /* D; T = {i : i % 2 == parity}; |T|, |C| */
    flow_tf tf;                 /* the host's affine transformer */
    flow_net *net;              /* [x_C, c] -> (s, t) per dimension of T */
} cond;

/* The conditioner: an MLP from the dc pass-through values and the
 * context_dim context values of a row (the net's context input, passed
 * apart to net_forward) to 2 values per transformed dimension. */
static flow_net_spec net_spec(const flow_layer_config *cfg, size_t dc,
                              size_t dt, size_t *hidden)
{
    const flow_attr_value *h = &cfg->attrs[ATTR_HIDDEN];
    flow_net_spec s = {.struct_size = sizeof s, .kind = FLOW_NET_MLP,
                       .in = dc, .context = cfg->context_dim, .out = 2 * dt,
                       .n_hidden = h->n, .hidden = hidden,
                       .act = FLOW_ACT_TANH, .zero_last = 1};
    for (size_t i = 0; i < h->n; i++)
        hidden[i] = (size_t)h->ilist[i];
    return s;
}

static int cond_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                         flow_diag *diag)
{
    size_t p = (size_t)cfg->attrs[ATTR_PARITY].i, hidden[MAX_HIDDEN], np;
    size_t dt = (cfg->dim + 1 - p) / 2;
    flow_net_spec spec = net_spec(cfg, cfg->dim - dt, dt, hidden);
    int rc;
    if (cfg->dim < 2)
        return flow_diag_set(diag, -1, "cond_affine needs 2 or more "
                             "dimensions, one to transform and one to "
                             "condition on (the input has %zu)", cfg->dim);
    if ((rc = flow_net_count(cfg->host, &spec, &np, diag)) != FLOW_OK) {
        if (rc == FLOW_ERR_INVAL)
            diag->attr = ATTR_HIDDEN;
        return rc;
    }
    for (size_t i = 0; i < cfg->dim; i++)
        out->dep_vec[i] = i % 2 == p;
    return flow_desc_fill(out, np, FLOW_JAC_COUPLING, FLOW_DEP_COUPLING,
                          FLOW_CERT_MONOTONE, "affine coupling, scale "
                          "exp(5 tanh(s / 5)) > 0",
                          (flow_cost){1, 0, (double)np});
}

static void cond_destroy(void *self)
{
    cond *s = self;
    if (s && s->net)
        s->host->net_destroy(s->net);
    flow_instance_free(s);
}

static void *cond_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    size_t p = (size_t)cfg->attrs[ATTR_PARITY].i, hidden[MAX_HIDDEN];
    size_t dt = (cfg->dim + 1 - p) / 2;
    cond s = {.host = host, .d = cfg->dim, .parity = p, .dt = dt,
              .dc = cfg->dim - dt,
              .tf = {.struct_size = sizeof(flow_tf), .kind = FLOW_TF_AFFINE}};
    flow_net_spec spec = net_spec(cfg, s.dc, s.dt, hidden);
    cond *c = flow_instance_new(host, sizeof s, &s, diag);
    if (c && !(c->net = host->net_create(&spec, diag->message,
                                         sizeof diag->message))) {
        cond_destroy(c);
        return NULL;
    }
    return c;
}

/* Workspace of one call: what the backward reads (the net's input h, its
 * output theta and tape, the transformer's input u and output v) and
 * scratch. */
typedef struct cws {
    flow_real *h, *theta, *u, *v, *lad, *dv, *du, *dlad, *dtheta, *dh;
    void *tape;
} cws;

static size_t carve(const cond *s, size_t n, void *ws, cws *w)
{
    flow_carve c = flow_carve_start(ws);
    w->h = flow_carve_reals(&c, n * s->dc);
    w->theta = flow_carve_reals(&c, n * s->dt * 2);
    w->u = flow_carve_reals(&c, n * s->dt);
    w->v = flow_carve_reals(&c, n * s->dt);
    w->lad = flow_carve_reals(&c, n * s->dt);
    w->dv = flow_carve_reals(&c, n * s->dt);
    w->du = flow_carve_reals(&c, n * s->dt);
    w->dlad = flow_carve_reals(&c, n * s->dt);
    w->dtheta = flow_carve_reals(&c, n * s->dt * 2);
    w->dh = flow_carve_reals(&c, n * s->dc);
    w->tape = flow_carve_take(&c, s->host->net_workspace(s->net, n));
    return flow_carve_bytes(&c);
}

static size_t cond_workspace(void *self, size_t n, int dir)
{
    cws w;
    (void)dir;
    return carve(self, n, NULL, &w);
}

static int cond_init(void *self, const flow_call *c, flow_real *params)
{
    const cond *s = self;
    s->host->net_init(s->net, params, c->rng);
    return FLOW_OK;
}

/* Column j of the transformed part (part 1) or of the pass-through part
 * (part 0) is dimension 2j + parity resp. 2j + 1 - parity. */
static size_t column(const cond *s, int part, size_t j)
{
    return 2 * j + (part ? s->parity : 1 - s->parity);
}

static void gather(const cond *s, size_t n, int part, const flow_real *in,
                   flow_real *out)
{
    size_t m = part ? s->dt : s->dc;
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < m; j++)
            out[r * m + j] = in[r * s->d + column(s, part, j)];
}

/* Either direction: theta from the pass-through part (the same in input
 * and output) and the context, then the transformer on the rest. */
static int apply(void *self, const flow_call *c, const flow_real *in,
                 flow_real *out, flow_real *logdet, int dir)
{
    const cond *s = self;
    cws w;
    int rc;
    carve(s, c->n, c->ws, &w);
    gather(s, c->n, 0, in, w.h);
    rc = s->host->net_forward(s->net, c->params, c->n, w.h, c->ctx, 0.0,
                              w.theta, w.tape);
    if (rc != FLOW_OK)
        return s->host->error(c, "conditioner failed (status %d)", rc);
    gather(s, c->n, 1, in, w.u);
    rc = dir ? s->host->tf_inverse(&s->tf, c->n * s->dt, w.u, w.theta, w.v,
                                   w.lad)
             : s->host->tf_forward(&s->tf, c->n * s->dt, w.u, w.theta, w.v,
                                   w.lad);
    if (rc != FLOW_OK)
        return s->host->error(c, "non-finite %s transform",
                              dir ? "inverse" : "forward");
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t j = 0; j < s->dc; j++)
            out[r * s->d + column(s, 0, j)] = in[r * s->d + column(s, 0, j)];
        for (size_t j = 0; j < s->dt; j++) {
            out[r * s->d + column(s, 1, j)] = w.v[r * s->dt + j];
            ld += w.lad[r * s->dt + j];     /* log|d out / d in| */
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int cond_forward(void *self, const flow_call *c, const flow_real *x,
                        flow_real *z, flow_real *logdet)
{
    return apply(self, c, x, z, logdet, 0);
}

static int cond_inverse(void *self, const flow_call *c, const flow_real *z,
                        flow_real *x, flow_real *logdet)
{
    return apply(self, c, z, x, logdet, 1);
}

/* VJP of either direction after apply() on the same workspace: every
 * transformed value's lad enters the row's log-det, so dL/dlad =
 * dL/dlogdet; the transformer's VJP gives dL/du and dL/dtheta, the net's
 * dL/dh (added to the pass-through part's gradient), dL/dc into c->dctx
 * and the parameters' gradient into c->grad. */
static int backward(void *self, const flow_call *c, const flow_real *dout,
                    const flow_real *dlogdet, flow_real *din, int dir)
{
    const cond *s = self;
    cws w;
    int rc;
    carve(s, c->n, c->ws, &w);
    gather(s, c->n, 1, dout, w.dv);
    for (size_t r = 0; r < c->n; r++)
        for (size_t j = 0; j < s->dt; j++)
            w.dlad[r * s->dt + j] = dlogdet[r];
    rc = dir ? s->host->tf_inverse_backward(&s->tf, c->n * s->dt, w.u, w.v,
                                            w.theta, w.dv, w.dlad, w.du,
                                            w.dtheta)
             : s->host->tf_backward(&s->tf, c->n * s->dt, w.u, w.theta, w.dv,
                                    w.dlad, w.du, w.dtheta);
    if (rc != FLOW_OK)
        return s->host->error(c, "non-finite transformer gradient");
    rc = s->host->net_backward(s->net, c->params, c->n, w.tape, w.dtheta,
                               w.dh, c->dctx, c->grad);
    if (rc != FLOW_OK)
        return s->host->error(c, "conditioner gradient failed (status %d)",
                              rc);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t j = 0; j < s->dc; j++)
            din[r * s->d + column(s, 0, j)] = dout[r * s->d + column(s, 0, j)]
                                              + w.dh[r * s->dc + j];
        for (size_t j = 0; j < s->dt; j++)
            din[r * s->d + column(s, 1, j)] = w.du[r * s->dt + j];
    }
    return FLOW_OK;
}

static int cond_forward_backward(void *self, const flow_call *c,
                                 const flow_real *x, const flow_real *z,
                                 const flow_real *dz, const flow_real *dlogdet,
                                 flow_real *dx)
{
    (void)x, (void)z;
    return backward(self, c, dz, dlogdet, dx, 0);
}

static int cond_inverse_backward(void *self, const flow_call *c,
                                 const flow_real *z, const flow_real *x,
                                 const flow_real *dx, const flow_real *dlogdet,
                                 flow_real *dz)
{
    (void)x, (void)z;
    return backward(self, c, dx, dlogdet, dz, 1);
}

static const flow_layer_type cond_type = {
    FLOW_LAYER_TYPE_HEAD("cond_affine", "affine coupling conditioned on the "
                         "context (example)", cond_attrs),
    .describe = cond_describe,
    .create = cond_create,
    .destroy = cond_destroy,
    .workspace = cond_workspace,
    .init = cond_init,
    .forward = cond_forward,
    .inverse = cond_inverse,
    .forward_backward = cond_forward_backward,
    .inverse_backward = cond_inverse_backward,
};

FLOW_PLUGIN_LAYERS("cond_affine", "1.0",
                   "example out-of-tree plugin: a conditional affine "
                   "coupling", &cond_type);
