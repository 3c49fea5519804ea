/* autoregressive.c - the `maf` and `iaf` layers: an autoregressive map
 * b_i = tau(a_i; theta_i(a_<i)) with a MADE conditioner (Germain et al.
 * 2015; MAF, Papamakarios et al. 2017, eqs. 2-3; IAF, Kingma et al. 2016,
 * eqs. 9-10).  The map F: a -> b is one conditioner pass; its inverse G:
 * b -> a takes D sequential steps.  `maf` uses F for density (x -> z),
 * `iaf` for sampling (z -> x), so an IAF with a MAF's weights computes
 * exactly that MAF's inverse.  One plugin, two layer types: everything but
 * the direction is shared.
 *
 * Speed (docs/plugins.md, "Autoregressive layers"): the MADE is built
 * premasked, and on hosts with the degree-order entries prepare() readies
 * its weights in degree order once per batch (net_made_sort: the hidden
 * layers are stored so and read in place; what is not is copied sorted,
 * the mask applied), F runs as blocked GEMMs over each block's unmasked
 * prefix (net_made_forward / _backward) and finish_grad() brings the
 * gradient to the parameters' layout; G runs net_made_step on the same
 * weights, computing each hidden unit once over the D steps instead of D
 * dense passes.  Older hosts: the dense passes, prepare() checking the
 * masks once per batch and masking a private copy if parameters came from
 * elsewhere.  Checkpoints of format < 3 stored the hidden units in
 * another order: upgrade_params converts them (net_made_from_cyclic). */
#include "common.h"

enum { AR_TRANSFORMER, AR_ORDER, AR_HIDDEN, AR_ACTIVATION, AR_IDENTITY_INIT };
enum { ORD_NATURAL, ORD_REVERSE, ORD_RANDOM, ORD_EXPLICIT };

static const flow_attr_spec ar_seed_attrs[] = {
    {.name = "seed", .type = FLOW_ATTR_INT, .doc = "seed of the order",
     .def_int = 0, .has_min = 1, .min = 0},
    {0}};
static const flow_attr_spec ar_explicit_attrs[] = {
    {.name = "order", .type = FLOW_ATTR_INT_LIST, .required = 1,
     .doc = "order[i] = position of dimension i in the generation sequence;"
            " a permutation of 0..D-1", .has_min = 1, .min = 0,
     .min_len = 1},
    {0}};

static const flow_variant_alt ar_order_alts[] = {
    {.name = "natural", .doc = "dimension i is generated i-th"},
    {.name = "reverse", .doc = "dimension i is generated (D-1-i)-th"},
    {.name = "random", .doc = "a seeded shuffle", .attrs = ar_seed_attrs},
    {.name = "explicit", .doc = "a permutation of 0..D-1; a bare list means "
     "this", .attrs = ar_explicit_attrs, .bare_list = 1},
    {0}};

static const flow_attr_spec ar_attrs[] = {
    TRANSFORMER_ATTR("affine"),
    {.name = "order", .type = FLOW_ATTR_VARIANT,
     .doc = "natural | reverse | random(seed) | [explicit order]",
     .def_str = "natural", .alternatives = ar_order_alts},
    HIDDEN_ATTR("[128, 128]"),
    ACTIVATION_ATTR(0),
    {.name = "identity_init", .type = FLOW_ATTR_BOOL,
     .doc = "start as the identity map (zero last MADE layer)",
     .def_int = 1},
    {0}};

typedef struct ar_layer {
    const flow_host *host;
    size_t d, k, P, np;
    int32_t *order;             /* order[i]: step at which i is generated */
    size_t *by_step;            /* by_step[s]: the dimension of step s */
    flow_tf tf;
    flow_net *net;
    int premasked;              /* host has net_mask_params: net premasked */
    int stepwise;               /* host has net_made_step                  */
    flow_real *mcopy;           /* masked copy of params (np), on demand   */
    const flow_real *wp;        /* this batch: mcopy, or NULL = c->params  */
    /* MADE in degree order (host's net_made_sort ...): this batch's
     * weights in degree order (the parameters where they are so, else a
     * sorted masked copy) and finish_grad's scratch */
    int blocked;
    size_t n_sorted;
    flow_real *sorted;
} ar_layer;

/* The MADE parameters of this batch (set by ar_prepare). */
static const flow_real *ar_params(const ar_layer *a, const flow_call *c)
{
    return a->wp ? a->wp : c->params;
}

/* order from the attribute; 0, or -1 with diag set */
static int ar_make_order(const flow_layer_config *cfg, int32_t *order,
                         flow_diag *diag)
{
    const flow_attr_value *v = &cfg->attrs[AR_ORDER];
    size_t d = cfg->dim;
    diag->attr = AR_ORDER;
    switch (v->i) {
    case ORD_NATURAL:
    case ORD_REVERSE:
        for (size_t i = 0; i < d; i++)
            order[i] = (int32_t)(v->i == ORD_NATURAL ? i : d - 1 - i);
        break;
    case ORD_RANDOM:
        common_shuffle(order, d, (uint64_t)v->sub[0].i);
        break;
    case ORD_EXPLICIT: {
        const flow_attr_value *l = &v->sub[0];
        if (l->n != d) {
            snprintf(diag->message, sizeof diag->message, "order has %zu "
                     "entries but the layer's input has %zu dimensions",
                     l->n, d);
            return -1;
        }
        for (size_t i = 0; i < d; i++)
            order[i] = -1;
        for (size_t i = 0; i < d; i++) {
            int64_t s = l->ilist[i];
            if (s < 0 || (uint64_t)s >= d) {
                snprintf(diag->message, sizeof diag->message, "order entry "
                         "%zu is %lld, outside 0..%zu", i, (long long)s,
                         d - 1);
                return -1;
            }
            for (size_t j = 0; j < i; j++)
                if (order[j] == (int32_t)s) {
                    snprintf(diag->message, sizeof diag->message, "%lld "
                             "appears twice in the order (entries %zu and "
                             "%zu)", (long long)s, j, i);
                    snprintf(diag->help, sizeof diag->help, "an order is a "
                             "permutation of 0..%zu", d - 1);
                    return -1;
                }
            order[i] = (int32_t)s;
        }
        break;
    }
    }
    diag->attr = -1;
    return 0;
}

static flow_net *ar_make_net(const flow_layer_config *cfg,
                             const int32_t *order, const flow_tf *tf,
                             flow_diag *diag, size_t *P_out)
{
    const flow_host *h = cfg->host;
    const flow_attr_value *hv = &cfg->attrs[AR_HIDDEN];
    size_t hidden[64], P = h->tf_params(tf);
    flow_net_spec s;
    flow_net *net;
    if (P == 0) {
        diag->attr = AR_TRANSFORMER;
        snprintf(diag->message, sizeof diag->message, "invalid transformer");
        return NULL;
    }
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.kind = FLOW_NET_MADE;
    s.in = cfg->dim;
    s.context = cfg->context_dim;
    s.out = P;
    s.n_hidden = hv->n;
    for (size_t i = 0; i < hv->n; i++)
        hidden[i] = (size_t)hv->ilist[i];
    s.hidden = hidden;
    s.act = activation_values[cfg->attrs[AR_ACTIVATION].i];
    s.zero_last = (int)cfg->attrs[AR_IDENTITY_INIT].i;
    s.order = order;
    s.premasked = FLOW_HOST_HAS(h, net_mask_params) && h->net_mask_params;
    net = h->net_create(&s, diag->message, sizeof diag->message);
    if (!net)
        diag->attr = AR_HIDDEN;
    *P_out = P;
    return net;
}

static int ar_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                       flow_diag *diag, int swap)
{
    const flow_host *h = cfg->host;
    flow_cost par, seq;
    flow_net *net;
    flow_tf tf;
    size_t P;
    if (!h || !FLOW_HOST_HAS(h, net_create) || !h->net_create) {
        snprintf(diag->message, sizeof diag->message, "this host provides no "
                 "networks (flowkit too old for this plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    if (ar_make_order(cfg, out->dep_vec, diag) != 0
        || common_make_tf(&cfg->attrs[AR_TRANSFORMER], AR_TRANSFORMER, &tf,
                          diag) != 0)
        return FLOW_ERR_INVAL;
    if (!(net = ar_make_net(cfg, out->dep_vec, &tf, diag, &P)))
        return FLOW_ERR_INVAL;
    out->n_params = h->net_params(net);
    /* MADE: the masked weights are structurally unused */
    common_tensor(out, 0, "net", out->n_params, FLOW_TENSOR_MASKED);
    h->net_destroy(net);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE
               | FLOW_LAYER_CONCURRENT_PREPARE;
    out->jac = FLOW_JAC_TRIANGULAR;
    out->dep = FLOW_DEP_ORDER;
    out->cert = tf.kind == FLOW_TF_ADDITIVE ? FLOW_CERT_STRUCTURAL
                                            : FLOW_CERT_MONOTONE;
    out->cert_text = common_tf_cert(&tf);
    par = (flow_cost){1, 0, (double)out->n_params};
    seq = (flow_cost){(uint32_t)cfg->dim, 1,
                      (double)out->n_params * (double)cfg->dim};
    out->cost_forward = swap ? seq : par;
    out->cost_inverse = swap ? par : seq;
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void ar_destroy(void *self)
{
    ar_layer *a = self;
    if (!a)
        return;
    if (a->net)
        a->host->net_destroy(a->net);
    a->host->free(a->order);
    a->host->free(a->by_step);
    a->host->free(a->mcopy);
    a->host->free(a->sorted);
    a->host->free(a);
}

static void *ar_create(const flow_host *host, const flow_layer_config *cfg,
                       flow_diag *diag)
{
    ar_layer *a = host->calloc(1, sizeof *a);
    if (!a)
        goto nomem;
    a->host = host;
    a->d = cfg->dim;
    a->k = cfg->context_dim;
    a->order = host->calloc(a->d, sizeof *a->order);
    a->by_step = host->calloc(a->d, sizeof *a->by_step);
    if (!a->order || !a->by_step)
        goto nomem;
    if (ar_make_order(cfg, a->order, diag) != 0
        || common_make_tf(&cfg->attrs[AR_TRANSFORMER], AR_TRANSFORMER,
                          &a->tf, diag) != 0
        || !(a->net = ar_make_net(cfg, a->order, &a->tf, diag, &a->P))) {
        ar_destroy(a);
        return NULL;
    }
    a->np = host->net_params(a->net);
    a->premasked = FLOW_HOST_HAS(host, net_mask_params)
                   && host->net_mask_params;
    a->stepwise = FLOW_HOST_HAS(host, net_made_step) && host->net_made_step;
    if (FLOW_HOST_HAS(host, net_made_grad) && host->net_made_grad
        && (a->n_sorted = host->net_made_sorted_count(a->net)) > 0) {
        a->sorted = host->alloc(a->n_sorted * sizeof *a->sorted);
        if (!a->sorted)
            goto nomem;
        a->blocked = 1;
    }
    for (size_t i = 0; i < a->d; i++)
        a->by_step[a->order[i]] = i;
    return a;
nomem:
    snprintf(diag->message, sizeof diag->message, "out of memory");
    ar_destroy(a);
    return NULL;
}

static int ar_init(void *self, const flow_call *c, flow_real *params)
{
    const ar_layer *a = self;
    a->host->net_init(a->net, params, c->rng);
    return FLOW_OK;
}

/* Once per batch: a premasked MADE needs its masked weights at 0.  Init
 * and training keep them so (net_backward zeroes their gradient); other
 * parameters (written by hand, tests) are masked into a private copy.
 * In degree order (blocked) net_made_sort checks or applies the mask
 * itself. */
static int ar_prepare(void *self, const flow_call *c)
{
    ar_layer *a = self;
    const flow_host *h = a->host;
    a->wp = NULL;
    if (a->blocked)
        return h->net_made_sort(a->net, c->params, a->sorted) == FLOW_OK
                   ? FLOW_OK
                   : h->error(c, "MADE: sorting the weights failed");
    if (!a->premasked || !h->net_mask_params(a->net, c->params, NULL))
        return FLOW_OK;
    if (!a->mcopy && !(a->mcopy = h->alloc(a->np * sizeof *a->mcopy)))
        return h->error(c, "out of memory for a masked copy of %zu "
                        "parameters", a->np);
    h->net_mask_params(a->net, c->params, a->mcopy);
    a->wp = a->mcopy;
    return FLOW_OK;
}

/* Workspace: theta, dtheta, dacc (n x D x P); lad, g1, g2, g3 (n x D); per-column
 * buffers cb, ca, cl, cda, cdb (n) and ct, cdt (n x P); then the net's. */
typedef struct arws {
    flow_real *theta, *dtheta, *dacc, *lad, *g1, *g2, *g3;
    flow_real *cb, *ca, *cl, *cda, *cdb, *ct, *cdt;
    void *net;
} arws;

static size_t ar_workspace(void *self, size_t n, int dir)
{
    const ar_layer *a = self;
    size_t nd = n * a->d, nt = nd * a->P;
    (void)dir;
    return 3 * common_bytes(nt) + 4 * common_bytes(nd) + 5 * common_bytes(n)
         + 2 * common_bytes(n * a->P) + a->host->net_workspace(a->net, n);
}

static arws ar_carve(const ar_layer *a, const flow_call *c)
{
    size_t n = c->n, nd = n * a->d, nt = nd * a->P;
    char *cur = c->ws;
    arws w;
    w.theta = common_take(&cur, nt);
    w.dtheta = common_take(&cur, nt);
    w.dacc = common_take(&cur, nt);
    w.lad = common_take(&cur, nd);
    w.g1 = common_take(&cur, nd);
    w.g2 = common_take(&cur, nd);
    w.g3 = common_take(&cur, nd);
    w.cb = common_take(&cur, n);
    w.ca = common_take(&cur, n);
    w.cl = common_take(&cur, n);
    w.cda = common_take(&cur, n);
    w.cdb = common_take(&cur, n);
    w.ct = common_take(&cur, n * a->P);
    w.cdt = common_take(&cur, n * a->P);
    w.net = cur;
    return w;
}

static int ar_net(const ar_layer *a, const flow_call *c, const flow_real *in,
                  arws *w)
{
    int rc = a->blocked
                 ? a->host->net_made_forward(a->net, a->sorted, c->n, in,
                                             c->ctx, w->theta, w->net)
                 : a->host->net_forward(a->net, ar_params(a, c), c->n, in,
                                        c->ctx, 0.0, w->theta, w->net);
    return rc == FLOW_OK ? FLOW_OK
                         : a->host->error(c, "MADE conditioner failed");
}

/* The MADE's VJP after ar_net on the same workspace (gradients in the
 * degree-order layout when blocked: ar_finish_grad maps them). */
static int ar_net_backward(const ar_layer *a, const flow_call *c, arws *w,
                           const flow_real *dtheta, flow_real *dx,
                           flow_real *dctx, flow_real *grad)
{
    int rc = a->blocked
                 ? a->host->net_made_backward(a->net, a->sorted, c->n, w->net,
                                              dtheta, dx, dctx, grad)
                 : a->host->net_backward(a->net, ar_params(a, c), c->n,
                                         w->net, dtheta, dx, dctx, grad);
    return rc == FLOW_OK ? FLOW_OK : a->host->error(c, "MADE gradient failed");
}

/* Once per batch after the threads' gradients were summed: the blocked
 * MADE's gradient from degree order to the parameters' layout (for the
 * layers read in place, the masked weights the blocks wrote set to 0). */
static int ar_finish_grad(void *self, const flow_call *c, flow_real *grad)
{
    ar_layer *a = self;
    if (!a->blocked)
        return FLOW_OK;
    return a->host->net_made_grad(a->net, grad, a->sorted) == FLOW_OK
               ? FLOW_OK
               : a->host->error(c, "MADE: mapping the gradient failed");
}

/* F: b = tau(a; theta(a)), one pass; logdet = sum of log tau'. */
static int ar_F(const ar_layer *a, const flow_call *c, const flow_real *in,
                flow_real *out, flow_real *logdet)
{
    arws w = ar_carve(a, c);
    size_t n = c->n, d = a->d;
    int rc, skip = flow_call_skip_logdet(c);
    if ((rc = ar_net(a, c, in, &w)) != FLOW_OK)
        return rc;
    if (a->host->tf_forward(&a->tf, n * d, in, w.theta, out,
                            skip ? NULL : w.lad) != FLOW_OK)
        return a->host->error(c, "transformer produced a non-finite value");
    for (size_t r = 0; !skip && r < n; r++) {
        double s = 0;
        for (size_t i = 0; i < d; i++)
            s += w.lad[r * d + i];
        logdet[r] = (flow_real)s;
    }
    return FLOW_OK;
}

/* Column i of an n x D matrix, and back. */
static void col_get(size_t n, size_t d, size_t i, const flow_real *m,
                    flow_real *v)
{
    for (size_t r = 0; r < n; r++)
        v[r] = m[r * d + i];
}

static void col_set(size_t n, size_t d, size_t i, const flow_real *v,
                    flow_real *m)
{
    for (size_t r = 0; r < n; r++)
        m[r * d + i] = v[r];
}

/* theta of dimension i for every row into ct (n x P) */
static void theta_get(const ar_layer *a, size_t n, size_t i,
                      const flow_real *theta, flow_real *ct)
{
    for (size_t r = 0; r < n; r++)
        memcpy(ct + r * a->P, theta + (r * a->d + i) * a->P,
               a->P * sizeof *ct);
}

/* One step of G by net_made_step (theta of dimension i into ct) and the
 * inverse transformer; x_prev = the column of the step before; logdet
 * NULL: no log-det (flow_call_skip_logdet). */
static int ar_G_step(const ar_layer *a, const flow_call *c, arws *w,
                     size_t s, const flow_real *in, flow_real *out,
                     flow_real *logdet)
{
    size_t n = c->n, d = a->d, i = a->by_step[s];
    const flow_host *h = a->host;
    int rc = a->blocked && FLOW_HOST_HAS(h, net_made_step_sorted)
                 ? h->net_made_step_sorted(a->net, a->sorted, n, c->ctx, s,
                                           s ? w->ca : NULL, w->ct, w->net)
                 : h->net_made_step(a->net, c->params, n, c->ctx, s,
                                    s ? w->ca : NULL, w->ct, w->net);
    if (rc != FLOW_OK)
        return rc;
    col_get(n, d, i, in, w->cb);
    if (a->host->tf_inverse(&a->tf, n, w->cb, w->ct, w->ca,
                            logdet ? w->cl : NULL) != FLOW_OK)
        return a->host->error(c, "inverse transformer produced a "
                              "non-finite value at dimension %zu", i);
    col_set(n, d, i, w->ca, out);
    for (size_t r = 0; logdet && r < n; r++)
        logdet[r] += w->cl[r];
    return FLOW_OK;
}

/* G: a from b, one dimension per step in generation order, no
 * allocation.  With net_made_step each step computes only the MADE units
 * of its degree (c->params as they are: the step reads unmasked weights
 * only); otherwise (older host) step s runs the whole MADE on the
 * dimensions generated before s (the rest are still 0, and theta of the
 * step's dimension cannot depend on them).  No tape is left: the
 * backward recomputes it at the solution. */
static int ar_G(const ar_layer *a, const flow_call *c, const flow_real *in,
                flow_real *out, flow_real *logdet)
{
    arws w = ar_carve(a, c);
    size_t n = c->n, d = a->d;
    int rc;
    if (flow_call_skip_logdet(c))
        logdet = NULL;
    else
        memset(logdet, 0, n * sizeof *logdet);
    if (a->stepwise) {
        for (size_t s = 0; s < d; s++) {
            rc = ar_G_step(a, c, &w, s, in, out, logdet);
            if (rc == FLOW_ERR_UNSUPPORTED && s == 0)
                break;              /* the full passes below */
            if (rc != FLOW_OK)
                return rc == FLOW_ERR ? rc : a->host->error(c, "MADE step "
                                                            "%zu failed", s);
            if (s + 1 == d)
                return FLOW_OK;
        }
    }
    memset(out, 0, n * d * sizeof *out);
    for (size_t s = 0; s < d; s++) {
        size_t i = a->by_step[s];
        if ((rc = ar_net(a, c, out, &w)) != FLOW_OK)
            return rc;
        theta_get(a, n, i, w.theta, w.ct);
        col_get(n, d, i, in, w.cb);
        if (a->host->tf_inverse(&a->tf, n, w.cb, w.ct, w.ca,
                                logdet ? w.cl : NULL) != FLOW_OK)
            return a->host->error(c, "inverse transformer produced a "
                                  "non-finite value at dimension %zu", i);
        col_set(n, d, i, w.ca, out);
        for (size_t r = 0; logdet && r < n; r++)
            logdet[r] += w.cl[r];
    }
    return FLOW_OK;
}

/* VJP of F after ar_F on the same workspace: da = dtau/da db + dlogdet
 * dlad/da + (dtheta routed through the MADE). */
static int ar_F_backward(const ar_layer *a, const flow_call *c,
                         const flow_real *in, const flow_real *db,
                         const flow_real *dlogdet, flow_real *da)
{
    arws w = ar_carve(a, c);
    size_t n = c->n, d = a->d;
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            w.g1[r * d + i] = dlogdet[r];
    if (a->host->tf_backward(&a->tf, n * d, in, w.theta, db, w.g1, w.g2,
                             w.dtheta) != FLOW_OK)
        return a->host->error(c, "transformer gradient is not finite");
    if (ar_net_backward(a, c, &w, w.dtheta, da, c->dctx, c->grad) != FLOW_OK)
        return FLOW_ERR;
    for (size_t i = 0; i < n * d; i++)
        da[i] += w.g2[i];
    return FLOW_OK;
}

/* VJP of G after ar_G: the tape at the solution a first (one MADE pass),
 * then reverse generation order; the adjoint of dimension i is complete
 * once every later step has been processed, since only later dimensions'
 * theta depend on it.  The steps' backward passes need only the input
 * adjoint (none at the first step); the parameter and context gradients,
 * linear in dtheta, come from one backward pass over all steps' dtheta
 * at the end (D passes with dparams cost twice as much). */
static int ar_G_backward(const ar_layer *a, const flow_call *c,
                         const flow_real *b, const flow_real *sol,
                         const flow_real *da_out, const flow_real *dlogdet,
                         flow_real *db)
{
    arws w = ar_carve(a, c);
    size_t n = c->n, d = a->d, P = a->P;
    flow_real *abar = w.g1, *dxn = w.g2;
    int rc;
    if ((rc = ar_net(a, c, sol, &w)) != FLOW_OK)
        return rc;
    memcpy(abar, da_out, n * d * sizeof *abar);
    memset(w.dtheta, 0, n * d * P * sizeof *w.dtheta);
    memset(w.dacc, 0, n * d * P * sizeof *w.dacc);
    for (size_t s = d; s-- > 0;) {
        size_t i = a->by_step[s];
        theta_get(a, n, i, w.theta, w.ct);
        col_get(n, d, i, b, w.cb);
        col_get(n, d, i, sol, w.ca);
        col_get(n, d, i, abar, w.cda);
        if (a->host->tf_inverse_backward(&a->tf, n, w.cb, w.ca, w.ct, w.cda,
                                         dlogdet, w.cdb, w.cdt) != FLOW_OK)
            return a->host->error(c, "inverse transformer gradient is not "
                                  "finite at dimension %zu", i);
        col_set(n, d, i, w.cdb, db);
        for (size_t r = 0; r < n; r++)
            memcpy(w.dacc + (r * d + i) * P, w.cdt + r * P,
                   P * sizeof *w.dacc);
        if (s == 0)
            break;              /* no dimension comes before the first */
        for (size_t r = 0; r < n; r++)
            memcpy(w.dtheta + (r * d + i) * P, w.cdt + r * P,
                   P * sizeof *w.dtheta);
        if (ar_net_backward(a, c, &w, w.dtheta, dxn, NULL, NULL) != FLOW_OK)
            return FLOW_ERR;
        for (size_t r = 0; r < n; r++)
            memset(w.dtheta + (r * d + i) * P, 0, P * sizeof *w.dtheta);
        for (size_t q = 0; q < n * d; q++)
            abar[q] += dxn[q];
    }
    if ((c->grad || (c->dctx && a->k))
        && ar_net_backward(a, c, &w, w.dacc, NULL, c->dctx, c->grad)
               != FLOW_OK)
        return FLOW_ERR;
    return FLOW_OK;
}

/* Portable export (docs/export.md): the order, the MADE (weights with
 * the masks applied, and the masks) and the transformer; maf and iaf
 * differ only in which direction is the density's. */
static int ar_export(void *self, const flow_call *c, flow_export *ex)
{
    const ar_layer *a = self;
    int rc = common_export_i64(a->host, c, ex, "order", a->order, a->d);
    if (rc != FLOW_OK)
        return rc;
    return common_export_net_tf(a->host, c, a->net, &a->tf, "inputs: x[0], "
                                "..., x[D-1], then the context columns; "
                                "output column i*P + p is transformer "
                                "parameter p of dimension i (dimension-"
                                "major), P = net.outputs_per_dim = "
                                "transformer.params_per_scalar", ex);
}

/* Parameters (or moments) of a checkpoint of format < 3, whose MADE
 * stored its hidden units in the masks' cyclic order, into the degree
 * order of this host (flow_plugin.h, upgrade_params). */
static int ar_upgrade(void *self, const flow_call *c, uint32_t format,
                      flow_real *params)
{
    const ar_layer *a = self;
    const flow_host *h = a->host;
    if (format >= 3)
        return FLOW_OK;
    if (!FLOW_HOST_HAS(h, net_made_from_cyclic) || !h->net_made_from_cyclic)
        return h->error(c, "this host cannot convert MADE parameters of "
                        "checkpoint format %u", (unsigned)format);
    return h->net_made_from_cyclic(a->net, params) == FLOW_OK
               ? FLOW_OK
               : h->error(c, "out of memory converting the MADE parameters");
}

/* --- the two layer types: F and G in opposite directions ---------------- */

static int maf_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    return ar_describe(cfg, out, diag, 0);
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
    (void)z;
    return ar_F_backward(self, c, x, dz, dlogdet, dx);
}

static int maf_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    return ar_G_backward(self, c, z, x, dx, dlogdet, dz);
}

static int iaf_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    return ar_describe(cfg, out, diag, 1);
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
    return ar_G_backward(self, c, x, z, dz, dlogdet, dx);
}

static int iaf_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    (void)x;
    return ar_F_backward(self, c, z, dx, dlogdet, dz);
}

/* The parameters whose gradient can be non-zero (flow_plugin.h,
 * grad_support): the layer's parameters are its MADE's, at the same
 * offsets, so the host's list for the net is the layer's.  The dense
 * passes (no degree order on this host) write every weight's. */
static size_t ar_grad_support(void *self, const flow_call *c, size_t *runs,
                              size_t cap)
{
    const ar_layer *a = self;
    const flow_host *h = a->host;
    (void)c;
    if (a->blocked && FLOW_HOST_HAS(h, net_made_grad_support)
        && h->net_made_grad_support)
        return h->net_made_grad_support(a->net, runs, cap);
    if (!a->np)
        return 0;
    if (cap) {
        runs[0] = 0;
        runs[1] = a->np;
    }
    return 1;
}

static const flow_layer_type maf_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "maf",
    .summary = "masked autoregressive flow: density in one pass, sampling "
               "in D sequential passes",
    .attrs = ar_attrs,
    .describe = maf_describe,
    .create = ar_create,
    .destroy = ar_destroy,
    .workspace = ar_workspace,
    .init = ar_init,
    .prepare = ar_prepare,
    .finish_grad = ar_finish_grad,
    .forward = maf_forward,
    .inverse = maf_inverse,
    .forward_backward = maf_forward_backward,
    .inverse_backward = maf_inverse_backward,
    .export_tensors = ar_export,
    .upgrade_params = ar_upgrade,
    .grad_support = ar_grad_support,
};

static const flow_layer_type iaf_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "iaf",
    .summary = "inverse autoregressive flow: sampling in one pass, density "
               "in D sequential passes",
    .attrs = ar_attrs,
    .describe = iaf_describe,
    .create = ar_create,
    .destroy = ar_destroy,
    .workspace = ar_workspace,
    .init = ar_init,
    .prepare = ar_prepare,
    .finish_grad = ar_finish_grad,
    .forward = iaf_forward,
    .inverse = iaf_inverse,
    .forward_backward = iaf_forward_backward,
    .inverse_backward = iaf_inverse_backward,
    .export_tensors = ar_export,
    .upgrade_params = ar_upgrade,
    .grad_support = ar_grad_support,
};

FLOW_PLUGIN_LAYERS("autoregressive", FLOW_VERSION_STRING,
                   "autoregressive flows with a MADE conditioner (maf, iaf)",
                   &maf_type, &iaf_type);
