/* residual.c - the `residual` layer: z = x + g(x, c) with g a spectrally
 * normalised MLP, Lip_x(g) < 1 (i-ResNet, Behrmann et al. 2019; Residual
 * Flows, Chen et al. 2019).  See docs/residual.md for the math. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_HIDDEN, ATTR_ACTIVATION, ATTR_COEFF, ATTR_LOGDET, ATTR_PROBE,
       ATTR_INVERSE_TOL, ATTR_INVERSE_ITERS };
enum { LD_EXACT, LD_SERIES, LD_ROULETTE };
enum { PROBE_RADEMACHER, PROBE_GAUSSIAN };

/* Longest roulette draw: P(N > cap) <= (63/64)^4000 < 1e-27 at the largest
 * `expected`, a bias far below float rounding. */
#define ROULETTE_CAP 4096

static const flow_attr_spec series_attrs[] = {
    {.name = "terms", .type = FLOW_ATTR_INT, .doc = "number of power-series "
     "terms n (biased: drops sum_{k>n})", .def_int = 8, .has_min = 1,
     .min = 1, .has_max = 1, .max = 1000},
    {0}};
static const flow_attr_spec roulette_attrs[] = {
    {.name = "expected", .type = FLOW_ATTR_REAL, .doc = "expected number of "
     "terms E[N]", .def_real = 4, .has_min = 1, .min = 1, .has_max = 1,
     .max = 64},
    {.name = "min_terms", .type = FLOW_ATTR_INT, .doc = "terms always "
     "computed before the geometric tail", .def_int = 1, .has_min = 1,
     .min = 1, .has_max = 1, .max = 64},
    {0}};
static const flow_variant_alt logdet_alts[] = {
    {.name = "exact", .doc = "log|det(I + J)| by D JVPs and an LU (exact)"},
    {.name = "series", .doc = "truncated power series with Hutchinson probes "
     "in training (biased estimate); exact in evaluation",
     .attrs = series_attrs},
    {.name = "roulette", .doc = "Russian-roulette power series (unbiased "
     "estimate, Chen et al. 2019) in training; exact in evaluation",
     .attrs = roulette_attrs},
    {0}};
static const char *const probe_names[] = {"rademacher", "gaussian", NULL};

static const flow_attr_spec residual_attrs[] = {
    HIDDEN_ATTR("[64, 64]"),
    ACTIVATION_ATTR(3),                 /* elu */
    {.name = "coeff", .type = FLOW_ATTR_REAL, .doc = "spectral norm bound c "
     "of every weight matrix; Lip(g) <= c^L must be < 1", .def_real = 0.9,
     .has_min = 1, .min = 1e-6, .has_max = 1, .max = 100},
    {.name = "logdet", .type = FLOW_ATTR_VARIANT, .doc = "exact | "
     "series(terms) | roulette(expected, min_terms)", .def_str = "exact",
     .alternatives = logdet_alts},
    {.name = "probe", .type = FLOW_ATTR_ENUM, .doc = "Hutchinson probe "
     "distribution: rademacher | gaussian", .def_int = PROBE_RADEMACHER,
     .enum_values = probe_names},
    {.name = "inverse_tol", .type = FLOW_ATTR_REAL, .doc = "fixed-point "
     "inverse stops when max |x_{k+1} - x_k| <= tol * max(1, max |x|)",
     .def_real = 1e-6, .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {.name = "inverse_iters", .type = FLOW_ATTR_INT, .doc = "fixed-point "
     "iteration limit; exceeding it is an error", .def_int = 100,
     .has_min = 1, .min = 1, .has_max = 1, .max = 1000000},
    {0}};

typedef struct residual {
    const flow_host *host;
    size_t d, k, a;             /* D, K, net input width A = D + K */
    flow_net *net;
    int mode, probe;
    int64_t terms;              /* series: n; roulette: min_terms m */
    double q;                   /* roulette: P(N > k | N >= k), k >= m */
    double tol;
    int64_t iters;
    double lip;                 /* certified bound on Lip_x(g) */
} residual;

/* --- configuration ------------------------------------------------------ */

static void net_spec(const flow_layer_config *cfg, size_t *hidden,
                     flow_net_spec *s)
{
    const flow_attr_value *h = &cfg->attrs[ATTR_HIDDEN];
    memset(s, 0, sizeof *s);
    s->struct_size = sizeof *s;
    s->kind = FLOW_NET_MLP;
    /* The context is fed as extra input columns (layer 0's inputs are x then
     * the context either way, so the layout is the same as `context = K`):
     * net_jvp_backward has no dctx output, but its dx covers every input. */
    s->in = cfg->dim + cfg->context_dim;
    s->context = 0;
    s->out = cfg->dim;
    s->n_hidden = h->n;
    for (size_t i = 0; i < h->n; i++)
        hidden[i] = (size_t)h->ilist[i];
    s->hidden = hidden;
    s->act = activation_values[cfg->attrs[ATTR_ACTIVATION].i];
    s->spectral_norm = cfg->attrs[ATTR_COEFF].r;
}

/* Lip_x(g) <= c^L (L weight matrices, each of spectral norm <= c; every
 * activation offered is 1-Lipschitz).  0, or -1 with diag set. */
static int certify(const flow_layer_config *cfg, double *lip,
                   flow_diag *diag)
{
    double c = cfg->attrs[ATTR_COEFF].r;
    size_t L = cfg->attrs[ATTR_HIDDEN].n + 1;
    *lip = pow(c, (double)L);
    if (*lip < 1)
        return 0;
    diag->attr = ATTR_COEFF;
    snprintf(diag->message, sizeof diag->message, "Lipschitz bound of the "
             "residual branch is coeff^L = %g^%zu = %g, not < 1: x + g(x) is "
             "not provably invertible", c, L, *lip);
    snprintf(diag->help, sizeof diag->help, "use coeff < 1 (e.g. 0.9); every "
             "activation offered is 1-Lipschitz, so Lip(g) <= coeff^L");
    return -1;
}

static int read_mode(const flow_layer_config *cfg, int *mode, int64_t *terms,
                     double *q, flow_diag *diag)
{
    const flow_attr_value *v = &cfg->attrs[ATTR_LOGDET];
    *mode = (int)v->i;
    *terms = 0;
    *q = 0;
    if (*mode == LD_SERIES)
        *terms = v->sub[0].i;
    if (*mode == LD_ROULETTE) {
        double e = v->sub[0].r;
        *terms = v->sub[1].i;
        if (!(e > (double)*terms)) {
            diag->attr = ATTR_LOGDET;
            snprintf(diag->message, sizeof diag->message, "roulette: expected "
                     "number of terms %g must exceed min_terms %lld", e,
                     (long long)*terms);
            snprintf(diag->help, sizeof diag->help, "raise `expected`, or use "
                     "series(terms = %lld) for a fixed truncation",
                     (long long)*terms);
            return -1;
        }
        /* N = m + M, P(M >= j) = q^j: E[N] = m + q / (1 - q) */
        *q = (e - (double)*terms) / (e - (double)*terms + 1);
    }
    return 0;
}

static int residual_describe(const flow_layer_config *cfg,
                             flow_layer_desc *out, flow_diag *diag)
{
    const flow_host *h = cfg->host;
    size_t hidden[64], d = cfg->dim;
    flow_net_spec spec;
    flow_net *net;
    double lip, q, per;
    int64_t terms;
    int mode;

    if (!h || !FLOW_HOST_HAS(h, matinv) || !h->net_create || !h->slogdet
        || !h->matinv || !h->net_jvp_backward) {
        snprintf(diag->message, sizeof diag->message, "this host provides no "
                 "networks or linear algebra (flowkit too old for this "
                 "plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    if (d > 4096) {
        snprintf(diag->message, sizeof diag->message, "residual layers keep "
                 "a D x D Jacobian per row for the exact log-det: %zu "
                 "dimensions is too many", d);
        return FLOW_ERR_INVAL;
    }
    if (certify(cfg, &lip, diag) != 0
        || read_mode(cfg, &mode, &terms, &q, diag) != 0)
        return FLOW_ERR_INVAL;
    net_spec(cfg, hidden, &spec);
    if (!(net = h->net_create(&spec, diag->message, sizeof diag->message))) {
        diag->attr = ATTR_HIDDEN;
        return FLOW_ERR_INVAL;
    }
    out->n_params = h->net_params(net);
    common_tensor(out, 0, "net", out->n_params, 0);
    h->net_destroy(net);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    if (mode != LD_EXACT)
        out->flags |= FLOW_LAYER_STOCHASTIC;
    out->jac = FLOW_JAC_RESIDUAL;
    out->dep = FLOW_DEP_DENSE;
    out->cert = FLOW_CERT_LIPSCHITZ;
    out->cert_value = lip;
    out->cert_text = "spectrally normalised MLP, 1-Lipschitz activation";
    per = (double)out->n_params;
    /* density: one pass, then D JVPs (exact) or n VJPs (series) */
    out->cost_forward.passes = (uint32_t)(1 + (mode == LD_EXACT ? d
        : mode == LD_SERIES ? (size_t)terms
        : (size_t)ceil(cfg->attrs[ATTR_LOGDET].sub[0].r)));
    out->cost_forward.sequential = mode != LD_EXACT;
    out->cost_forward.flops_per_row = per * out->cost_forward.passes;
    /* sampling: up to inverse_iters fixed-point passes, then the exact
     * log-det at the solution */
    out->cost_inverse.passes = (uint32_t)(cfg->attrs[ATTR_INVERSE_ITERS].i
                                          + 1 + (int64_t)d);
    out->cost_inverse.sequential = 1;
    out->cost_inverse.flops_per_row = per * out->cost_inverse.passes;
    out->logdet_exact = mode == LD_EXACT;
    return FLOW_OK;
}

static void residual_destroy(void *self)
{
    residual *r = self;
    if (!r)
        return;
    if (r->net)
        r->host->net_destroy(r->net);
    r->host->free(r);
}

static void *residual_create(const flow_host *host,
                             const flow_layer_config *cfg, flow_diag *diag)
{
    residual *r = host->calloc(1, sizeof *r);
    size_t hidden[64];
    flow_net_spec spec;
    if (!r) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    r->host = host;
    r->d = cfg->dim;
    r->k = cfg->context_dim;
    r->a = r->d + r->k;
    r->probe = (int)cfg->attrs[ATTR_PROBE].i;
    r->tol = cfg->attrs[ATTR_INVERSE_TOL].r;
    r->iters = cfg->attrs[ATTR_INVERSE_ITERS].i;
    if (certify(cfg, &r->lip, diag) != 0
        || read_mode(cfg, &r->mode, &r->terms, &r->q, diag) != 0)
        goto fail;
    net_spec(cfg, hidden, &spec);
    if (!(r->net = host->net_create(&spec, diag->message,
                                    sizeof diag->message)))
        goto fail;
    return r;
fail:
    residual_destroy(r);
    return NULL;
}

static int residual_init(void *self, const flow_call *call,
                         flow_real *params)
{
    const residual *r = self;
    r->host->net_init(r->net, params, call->rng);
    return FLOW_OK;
}

/* --- workspace ---------------------------------------------------------- */

/* What forward/inverse leave for the matching backward. */
typedef struct rhdr {
    int estimated;              /* 1: the log-det was a series estimate */
    int64_t nterms;             /* terms drawn for it */
} rhdr;

/* xa, ta, dxa, dacc (n x A); g, ty, dty, v, w, wsum, G (n x D); jac (n x D
 * x D); mat (D x D); active rows (n size_t); then the net's tape. */
typedef struct rws {
    rhdr *hdr;
    flow_real *xa, *ta, *dxa, *dacc, *g, *ty, *dty, *v, *w, *wsum, *G, *jac,
              *mat;
    size_t *active;
    void *net;
} rws;

static size_t mul_ok(size_t a, size_t b)
{
    return b && a > SIZE_MAX / 4 / b ? SIZE_MAX / 4 : a * b;
}

static size_t residual_workspace(void *self, size_t n, int dir)
{
    const residual *r = self;
    size_t na = mul_ok(n, r->a), nd = mul_ok(n, r->d);
    size_t b = common_round(sizeof(rhdr));
    (void)dir;
    b += 4 * common_bytes(na) + 7 * common_bytes(nd);
    b += common_bytes(mul_ok(nd, r->d)) + common_bytes(r->d * r->d);
    b += common_round(mul_ok(n, sizeof(size_t)));
    return b + r->host->net_workspace(r->net, n);
}

static rws carve(const residual *r, const flow_call *call)
{
    size_t n = call->n, na = n * r->a, nd = n * r->d;
    char *cur = call->ws;
    rws w;
    w.hdr = (rhdr *)(void *)cur;
    cur += common_round(sizeof(rhdr));
    w.xa = common_take(&cur, na);
    w.ta = common_take(&cur, na);
    w.dxa = common_take(&cur, na);
    w.dacc = common_take(&cur, na);
    w.g = common_take(&cur, nd);
    w.ty = common_take(&cur, nd);
    w.dty = common_take(&cur, nd);
    w.v = common_take(&cur, nd);
    w.w = common_take(&cur, nd);
    w.wsum = common_take(&cur, nd);
    w.G = common_take(&cur, nd);
    w.jac = common_take(&cur, nd * r->d);
    w.mat = common_take(&cur, r->d * r->d);
    w.active = (size_t *)(void *)cur;
    cur += common_round(n * sizeof(size_t));
    w.net = cur;
    return w;
}

/* --- building blocks ---------------------------------------------------- */

/* xa[i] = (x[rows[i]], ctx[rows[i]]) for i < m (rows NULL: identity). */
static void augment(const residual *r, const flow_call *call, size_t m,
                    const size_t *rows, const flow_real *x, flow_real *xa)
{
    for (size_t i = 0; i < m; i++) {
        size_t s = rows ? rows[i] : i;
        memcpy(xa + i * r->a, x + s * r->d, r->d * sizeof *xa);
        if (r->k)
            memcpy(xa + i * r->a + r->d, call->ctx + s * r->k,
                   r->k * sizeof *xa);
    }
}

static int net_failed(const residual *r, const flow_call *call,
                      const char *what, int rc)
{
    r->host->error(call, "residual network %s failed (status %d)",
                   what, rc);
    return rc ? rc : FLOW_ERR;
}

/* g = net(x, ctx) on all rows of the call; the tape stays in w->net. */
static int eval_g(const residual *r, const flow_call *call,
                  const flow_real *x, rws *w)
{
    int rc;
    augment(r, call, call->n, NULL, x, w->xa);
    rc = r->host->net_forward(r->net, call->params, call->n, w->xa, NULL, 0.0,
                              w->g, w->net);
    return rc == FLOW_OK ? FLOW_OK : net_failed(r, call, "forward", rc);
}

/* After eval_g: the tangent e_j (x part; 0 on the context) into w->ta and
 * column j of every row's J = dg/dx into w->ty. */
static int jvp_column(const residual *r, const flow_call *call, size_t j,
                      rws *w)
{
    size_t n = call->n;
    int rc;
    memset(w->ta, 0, n * r->a * sizeof *w->ta);
    for (size_t i = 0; i < n; i++)
        w->ta[i * r->a + j] = 1;
    rc = r->host->net_jvp(r->net, call->params, n, w->net, w->ta, w->ty);
    return rc == FLOW_OK ? FLOW_OK : net_failed(r, call, "JVP", rc);
}

/* After eval_g: every row's J (row-major D x D, jac[r][i*D + j] =
 * dg_i/dx_j) by D JVPs with the unit vectors, and logdet[r] =
 * log|det(I + J_r)| by LU.  sign_out: -1 for the inverse direction. */
static int exact_logdet(const residual *r, const flow_call *call, rws *w,
                        flow_real *logdet, double sign_out)
{
    size_t n = call->n, d = r->d, dd = d * d;
    int rc;
    for (size_t j = 0; j < d; j++) {
        if ((rc = jvp_column(r, call, j, w)) != FLOW_OK)
            return rc;
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < d; i++)
                w->jac[s * dd + i * d + j] = w->ty[s * d + i];
    }
    for (size_t s = 0; s < n; s++) {
        double la = 0;
        int sign = 0;
        memcpy(w->mat, w->jac + s * dd, dd * sizeof *w->mat);
        for (size_t i = 0; i < d; i++)
            w->mat[i * d + i] += 1;
        rc = r->host->slogdet(d, w->mat, &la, &sign);
        if (rc == FLOW_ERR_NOMEM)
            return r->host->error(call, "row %zu: out of memory", s);
        if (rc != FLOW_OK || sign <= 0 || !isfinite(la))
            return r->host->error(call, "det(I + dg/dx) is %s at row %zu "
                                  "(the Lipschitz bound %g < 1 should make it "
                                  "positive)", sign == 0
                                  ? "zero" : "not positive", s, r->lip);
        logdet[s] = (flow_real)(sign_out * la);
    }
    w->hdr->estimated = 0;
    w->hdr->nterms = 0;
    return FLOW_OK;
}

/* P(N >= k) of the number of series terms. */
static double p_at_least(const residual *r, int64_t k)
{
    if (r->mode != LD_ROULETTE || k <= r->terms)
        return 1;
    return pow(r->q, (double)(k - r->terms));
}

static int64_t draw_terms(const residual *r, const flow_call *call)
{
    int64_t m = 0;
    if (r->mode == LD_SERIES)
        return r->terms;
    while (m < ROULETTE_CAP && r->host->rng_uniform(call->rng) < r->q)
        m++;
    return r->terms + m;
}

/* After eval_g, training mode: the power series
 *   log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k
 * (Behrmann et al. 2019, eq. 6) with Hutchinson's tr(A) = E[v^T A v],
 * truncated at n terms or with the Russian-roulette weights 1 / P(N >= k)
 * (Chen et al. 2019, eq. 6-7).  w_k^T = v^T J^k by repeated VJPs.  For the
 * backward pass, wsum = sum_{k=1}^{N} (-1)^{k+1} w_{k-1} / P(N >= k), the
 * Neumann-series gradient vector (Chen et al. 2019, eq. 8; see
 * docs/residual.md for the weights). */
static int series_logdet(const residual *r, const flow_call *call, rws *w,
                         flow_real *logdet)
{
    size_t n = call->n, d = r->d, nd = n * d;
    int64_t N = draw_terms(r, call);
    int rc;
    if (r->probe == PROBE_GAUSSIAN)
        r->host->rng_normal(call->rng, w->v, nd);
    else
        r->host->rng_rademacher(call->rng, w->v, nd);
    memcpy(w->w, w->v, nd * sizeof *w->w);
    memset(w->wsum, 0, nd * sizeof *w->wsum);
    for (size_t s = 0; s < n; s++)
        logdet[s] = 0;
    for (int64_t k = 1; k <= N; k++) {
        double p = p_at_least(r, k), sgn = (k % 2) ? 1.0 : -1.0;
        double cw = sgn / p, ct = sgn / ((double)k * p);
        for (size_t i = 0; i < nd; i++)     /* w holds w_{k-1} */
            w->wsum[i] = (flow_real)(w->wsum[i] + cw * w->w[i]);
        rc = r->host->net_backward(r->net, call->params, n, w->net, w->w,
                                   w->dxa, NULL, NULL);
        if (rc != FLOW_OK)
            return net_failed(r, call, "VJP", rc);
        for (size_t s = 0; s < n; s++) {
            double dot = 0;
            for (size_t i = 0; i < d; i++) {
                w->w[s * d + i] = w->dxa[s * r->a + i];
                dot += (double)w->w[s * d + i] * w->v[s * d + i];
            }
            logdet[s] = (flow_real)(logdet[s] + ct * dot);
        }
    }
    for (size_t s = 0; s < n; s++)
        if (!isfinite(logdet[s]))
            return r->host->error(call, "log-det estimate is not finite "
                                  "at row %zu (%lld series terms)", s,
                                  (long long)N);
    w->hdr->estimated = 1;
    w->hdr->nterms = N;
    return FLOW_OK;
}

/* --- forward ------------------------------------------------------------ */

static int residual_forward(void *self, const flow_call *call,
                            const flow_real *x, flow_real *z,
                            flow_real *logdet)
{
    const residual *r = self;
    rws w = carve(r, call);
    size_t nd = call->n * r->d;
    int rc;
    if ((rc = eval_g(r, call, x, &w)) != FLOW_OK)
        return rc;
    for (size_t i = 0; i < nd; i++)
        z[i] = x[i] + w.g[i];
    if (flow_call_skip_logdet(call))    /* D JVPs and an LU per row saved */
        return FLOW_OK;
    if (call->training && r->mode != LD_EXACT)
        return series_logdet(r, call, &w, logdet);
    return exact_logdet(r, call, &w, logdet, 1.0);
}

/* jac[s] <- (I + J_s)^-1 for every row, in place. */
static int invert_all(const residual *r, const flow_call *call, rws *w)
{
    size_t d = r->d, dd = d * d;
    for (size_t s = 0; s < call->n; s++) {
        flow_real *m = w->jac + s * dd;
        int rc;
        for (size_t i = 0; i < d; i++)
            m[i * d + i] += 1;
        rc = r->host->matinv(d, m);
        if (rc == FLOW_ERR_NOMEM)
            return r->host->error(call, "row %zu: out of memory", s);
        if (rc != FLOW_OK)
            return r->host->error(call, "I + dg/dx is singular at row "
                                  "%zu", s);
    }
    return FLOW_OK;
}

/* dacc += d/d(x, ctx) and grad += d/dtheta of sum_s scale[s] log det(I +
 * J_s), with jac holding the inverses: d log det = tr((I + J)^-1 dJ), so the
 * JVP with e_j gets the cotangent row j of (I + J)^-1 (docs/runtime.md,
 * "Residual log-det gradient"); net_jvp_backward carries it through the
 * activations' second derivatives to x and theta. */
static int exact_logdet_grad(const residual *r, const flow_call *call,
                             rws *w, const flow_real *scale)
{
    size_t n = call->n, d = r->d, dd = d * d;
    int rc;
    for (size_t j = 0; j < d; j++) {
        if ((rc = jvp_column(r, call, j, w)) != FLOW_OK)
            return rc;
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < d; i++)
                w->dty[s * d + i] = scale[s] * w->jac[s * dd + j * d + i];
        rc = r->host->net_jvp_backward(r->net, call->params, n, w->net, w->ta,
                                       w->dty, w->dxa, NULL, call->grad);
        if (rc != FLOW_OK)
            return net_failed(r, call, "second-order backward", rc);
        for (size_t i = 0; i < n * r->a; i++)
            w->dacc[i] += w->dxa[i];
    }
    return FLOW_OK;
}

/* The same for a series estimate: the Neumann gradient estimator
 * d log det ~ wsum^T (dJ) v (Chen et al. 2019, eq. 8), one JVP with v and
 * its second-order backward with cotangent scale * wsum. */
static int series_logdet_grad(const residual *r, const flow_call *call,
                              rws *w, const flow_real *scale)
{
    size_t n = call->n, d = r->d;
    int rc;
    memset(w->ta, 0, n * r->a * sizeof *w->ta);
    for (size_t s = 0; s < n; s++)
        memcpy(w->ta + s * r->a, w->v + s * d, d * sizeof *w->ta);
    rc = r->host->net_jvp(r->net, call->params, n, w->net, w->ta, w->ty);
    if (rc != FLOW_OK)
        return net_failed(r, call, "JVP", rc);
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < d; i++)
            w->dty[s * d + i] = scale[s] * w->wsum[s * d + i];
    rc = r->host->net_jvp_backward(r->net, call->params, n, w->net, w->ta,
                                   w->dty, w->dxa, NULL, call->grad);
    if (rc != FLOW_OK)
        return net_failed(r, call, "second-order backward", rc);
    for (size_t i = 0; i < n * r->a; i++)
        w->dacc[i] += w->dxa[i];
    return FLOW_OK;
}

static void add_dctx(const residual *r, const flow_call *call,
                     const flow_real *dacc)
{
    if (!r->k || !call->dctx)
        return;
    for (size_t s = 0; s < call->n; s++)
        for (size_t i = 0; i < r->k; i++)
            call->dctx[s * r->k + i] += dacc[s * r->a + r->d + i];
}

/* z = x + g(x): dx = dz + J^T dz + dlogdet * d logdet/dx. */
static int residual_forward_backward(void *self, const flow_call *call,
                                     const flow_real *x, const flow_real *z,
                                     const flow_real *dz,
                                     const flow_real *dlogdet, flow_real *dx)
{
    const residual *r = self;
    rws w = carve(r, call);
    size_t n = call->n, d = r->d;
    int rc;
    (void)x, (void)z;
    memset(w.dacc, 0, n * r->a * sizeof *w.dacc);
    if (w.hdr->estimated)
        rc = series_logdet_grad(r, call, &w, dlogdet);
    else if ((rc = invert_all(r, call, &w)) == FLOW_OK)
        rc = exact_logdet_grad(r, call, &w, dlogdet);
    if (rc != FLOW_OK)
        return rc;
    rc = r->host->net_backward(r->net, call->params, n, w.net, dz, w.dxa,
                               NULL, call->grad);
    if (rc != FLOW_OK)
        return net_failed(r, call, "backward", rc);
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < r->a; i++)
            w.dacc[s * r->a + i] += w.dxa[s * r->a + i];
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < d; i++)
            dx[s * d + i] = dz[s * d + i] + w.dacc[s * r->a + i];
    add_dctx(r, call, w.dacc);
    return FLOW_OK;
}

/* --- inverse ------------------------------------------------------------ */

/* Smallest tolerance the iteration can meet: a few ulps of flow_real. */
static double tol_floor(void)
{
    return 4.0 * (sizeof(flow_real) == sizeof(float) ? 1.1920929e-7
                                                     : 2.220446049250313e-16);
}

/* x = f^-1(z) by the fixed-point iteration x_{k+1} = z - g(x_k), a
 * contraction with rate Lip(g) < 1 (Behrmann et al. 2019, alg. 1; Banach).
 * Rows stop one by one as they converge (the remaining ones are packed to
 * the front), so a row's iteration count never depends on the other rows
 * (docs/residual.md: its bits, only where the BLAS allows). */
static int fixed_point(const residual *r, const flow_call *call,
                       const flow_real *z, flow_real *x, rws *w)
{
    size_t n = call->n, d = r->d, na = n, worst_row = 0;
    double tol = r->tol > tol_floor() ? r->tol : tol_floor(), worst = 0;
    int64_t it;
    int rc;
    memcpy(x, z, n * d * sizeof *x);
    for (size_t s = 0; s < n; s++)
        w->active[s] = s;
    for (it = 0; it < r->iters && na > 0; it++) {
        size_t keep = 0;
        augment(r, call, na, w->active, x, w->xa);
        rc = r->host->net_forward(r->net, call->params, na, w->xa, NULL, 0.0,
                                  w->g, w->net);
        if (rc != FLOW_OK)
            return net_failed(r, call, "forward", rc);
        worst = 0;
        for (size_t i = 0; i < na; i++) {
            size_t s = w->active[i];
            double step = 0, size = 1;
            for (size_t j = 0; j < d; j++) {
                flow_real nx = z[s * d + j] - w->g[i * d + j];
                step = fmax(step, fabs((double)nx - x[s * d + j]));
                size = fmax(size, fabs((double)nx));
                x[s * d + j] = nx;
            }
            if (!isfinite(step))
                return r->host->error(call, "fixed-point inverse "
                                      "diverged (non-finite value) at row "
                                      "%zu after %lld iterations", s,
                                      (long long)it + 1);
            if (step > tol * size) {
                if (step / size > worst) {
                    worst = step / size;
                    worst_row = s;
                }
                w->active[keep++] = s;
            }
        }
        na = keep;
    }
    if (na > 0) {
        r->host->error(call, "fixed-point inverse x = z - g(x) did not "
                       "converge in %lld iterations: %zu of %zu rows still "
                       "moving (row %zu: relative step %.3g > inverse_tol "
                       "%g); Lip(g) <= %g", (long long)r->iters, na, n,
                       worst_row, worst, tol, r->lip);
        return FLOW_ERR_NUMERIC;
    }
    return FLOW_OK;
}

/* The log-det of the inverse is always the exact one (D JVPs at the
 * solution), in training too; without one asked for, the fixed point
 * alone. */
static int residual_inverse(void *self, const flow_call *call,
                            const flow_real *z, flow_real *x,
                            flow_real *logdet)
{
    const residual *r = self;
    rws w = carve(r, call);
    int rc;
    if ((rc = fixed_point(r, call, z, x, &w)) != FLOW_OK)
        return rc;
    if (flow_call_skip_logdet(call))
        return FLOW_OK;
    if ((rc = eval_g(r, call, x, &w)) != FLOW_OK)
        return rc;
    return exact_logdet(r, call, &w, logdet, -1.0);
}

/* x = f^-1(z), l = -log det(I + J(x)).  Implicit function theorem on
 * z = x + g(x, theta, c): dx/dz = A^-1, dx/dtheta = -A^-1 dg/dtheta (A =
 * I + J).  With G = dL/dx + dL/dl * dl/dx (explicit) and v = A^-T G:
 * dL/dz = v, dL/dtheta = -v^T dg/dtheta + dL/dl * dl/dtheta (explicit),
 * likewise for c.  (Behrmann et al. 2019 backpropagate through the
 * iterations instead; this is exact at the fixed point.) */
static int residual_inverse_backward(void *self, const flow_call *call,
                                     const flow_real *z, const flow_real *x,
                                     const flow_real *dx,
                                     const flow_real *dlogdet, flow_real *dz)
{
    const residual *r = self;
    rws w = carve(r, call);
    size_t n = call->n, d = r->d, dd = d * d;
    int rc;
    (void)z, (void)x;
    for (size_t s = 0; s < n; s++)
        w.G[s] = -dlogdet[s];            /* scale of log det(I + J) */
    memset(w.dacc, 0, n * r->a * sizeof *w.dacc);
    if ((rc = invert_all(r, call, &w)) != FLOW_OK
        || (rc = exact_logdet_grad(r, call, &w, w.G)) != FLOW_OK)
        return rc;
    for (size_t s = 0; s < n; s++) {
        const flow_real *ai = w.jac + s * dd;
        for (size_t i = 0; i < d; i++) {
            double v = 0;
            for (size_t k = 0; k < d; k++)
                v += (double)ai[k * d + i]
                     * (dx[s * d + k] + w.dacc[s * r->a + k]);
            dz[s * d + i] = (flow_real)v;
            w.dty[s * d + i] = (flow_real)-v;
        }
    }
    rc = r->host->net_backward(r->net, call->params, n, w.net, w.dty, w.dxa,
                               NULL, call->grad);
    if (rc != FLOW_OK)
        return net_failed(r, call, "backward", rc);
    for (size_t s = 0; s < n; s++)
        for (size_t i = r->d; i < r->a; i++)
            w.dacc[s * r->a + i] += w.dxa[s * r->a + i];
    add_dctx(r, call, w.dacc);
    return FLOW_OK;
}

/* Portable export: g's weights as used (spectrally normalised); in
 * evaluation mode the density direction is z = x + g([x, c]) with the
 * exact log|det(I + dg/dx)| whatever `logdet` says (docs/export.md). */
static int residual_export(void *self, const flow_call *c, flow_export *ex)
{
    const residual *r = self;
    const flow_host *h = r->host;
    if (!FLOW_HOST_HAS(h, net_export) || !h->net_export)
        return h->error(c, "this host cannot export networks (flowkit "
                        "older than plugin ABI 1.6)");
    return h->net_export(r->net, c->params, "net", "inputs: x[0], ..., "
                         "x[D-1], then the context columns (net.in counts "
                         "both); output column i is g_i", ex);
}

static const flow_layer_type residual_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "residual",
    .summary = "invertible residual block x + g(x), Lip(g) < 1 (i-ResNet, "
               "Residual Flows): exact or power-series log-det, fixed-point "
               "inverse",
    .attrs = residual_attrs,
    .describe = residual_describe,
    .create = residual_create,
    .destroy = residual_destroy,
    .workspace = residual_workspace,
    .init = residual_init,
    .forward = residual_forward,
    .inverse = residual_inverse,
    .forward_backward = residual_forward_backward,
    .inverse_backward = residual_inverse_backward,
    .export_tensors = residual_export,
};

FLOW_PLUGIN_LAYERS("residual", FLOW_VERSION_STRING,
                   "invertible residual layers", &residual_type);
