/* honest.c - test-only plugin: three layers whose declarations are honest
 * under plugin ABI 1.5 (a dense layer with an exact log-det, a conditional
 * elementwise layer, a monotone elementwise layer), two with a switch that
 * makes them lie so that the compiler's refusals are tested.  Built again
 * with HONEST_LIES as liar.so: types liar_*, lying by default. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "flow/flow_plugin.h"

#ifdef HONEST_LIES
#define TYPE_NAME(s) "liar_" s
#define LIE 1
#else
#define TYPE_NAME(s) s
#define LIE 0
#endif

/* Every instance keeps only its width and the host. */
typedef struct honest {
    size_t d, k;
    const flow_host *host;
} honest;

static void *honest_create(const flow_host *host, const flow_layer_config *cfg,
                           flow_diag *diag)
{
    honest *h = host->calloc(1, sizeof *h);
    if (!h) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    h->d = cfg->dim;
    h->k = cfg->context_dim;
    h->host = host;
    return h;
}

static void honest_destroy(void *self)
{
    honest *h = self;
    if (h)
        h->host->free(h);
}

#define ALL_DIRECTIONS (FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE \
                        | FLOW_LAYER_BACKWARD_FORWARD \
                        | FLOW_LAYER_BACKWARD_INVERSE)

/* ------------------------------------------------------------------
 * householder_scale: z = H (e^s . x), H = I - 2 v v^T / (v^T v), a
 * Householder reflection (Householder 1958; as a flow layer: Tomczak &
 * Welling 2016, "Householder flow"), times a positive diagonal.  H is
 * orthogonal and its own inverse, so log|det dz/dx| = sum_i s_i exactly,
 * though every output depends on every input.
 * Parameters: v (D), then s (D). */

static const char *const hh_declare[] = {"dense_exact", "triangular",
                                         "dense_exact_monotone", NULL};
static const flow_attr_spec hh_attrs[] = {
    {.name = "declare", .type = FLOW_ATTR_ENUM, .doc = "the declared "
     "Jacobian class: dense_exact (honest), triangular or "
     "dense_exact_monotone (refused by the compiler, F0506)",
     .def_int = LIE, .enum_values = hh_declare},
    {0}};

static int hh_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                       flow_diag *diag)
{
    int64_t lie = cfg->attrs[0].i;
    double d = (double)cfg->dim;
    (void)diag;
    out->flags = ALL_DIRECTIONS;
    out->n_params = 2 * cfg->dim;
    out->jac = lie == 1 ? FLOW_JAC_TRIANGULAR : FLOW_JAC_DENSE_EXACT;
    out->dep = FLOW_DEP_DENSE;
    out->cert = lie == 2 ? FLOW_CERT_MONOTONE : FLOW_CERT_STRUCTURAL;
    out->cert_text = "Householder reflection times exp(s) > 0";
    out->cost_forward = (flow_cost){0, 0, 5 * d};
    out->cost_inverse = (flow_cost){0, 0, 5 * d};
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* v = 1 (a dense reflection), s = 0 */
static int hh_init(void *self, const flow_call *c, flow_real *params)
{
    const honest *h = self;
    (void)c;
    for (size_t i = 0; i < h->d; i++) {
        params[i] = 1;
        params[h->d + i] = 0;
    }
    return FLOW_OK;
}

static double dot(const double *a, const double *b, size_t d)
{
    double s = 0;
    for (size_t i = 0; i < d; i++)
        s += a[i] * b[i];
    return s;
}

/* out = H in; q = v^T v (H = I when v vanishes) */
static void reflect(const double *v, double q, const double *in, double *out,
                    size_t d)
{
    double f = q > 0 ? 2 * dot(v, in, d) / q : 0;
    for (size_t i = 0; i < d; i++)
        out[i] = in[i] - f * v[i];
}

/* Adds dL/dv to gv for out = H(v) in, given g = dL/dout:
 * dL/dv = -2 [g (v.in)/q + in (v.g)/q - 2 v (v.in)(v.g)/q^2]. */
static void reflect_grad_v(const double *v, double q, const double *in,
                           const double *g, flow_real *gv, size_t d)
{
    double w, vg;
    if (!(q > 0))
        return;
    w = dot(v, in, d);
    vg = dot(v, g, d);
    for (size_t i = 0; i < d; i++)
        gv[i] += (flow_real)(-2 * (g[i] * w / q + in[i] * vg / q
                                   - 2 * v[i] * w * vg / (q * q)));
}

/* Five rows of D doubles: v, s and three vectors of one row. */
static size_t hh_workspace(void *self, size_t n, int dir)
{
    const honest *h = self;
    (void)n, (void)dir;
    return 5 * h->d * sizeof(double);
}

/* The workspace as v, s (the parameters in double), a, b, o; q = v^T v. */
static void hh_params(const honest *h, const flow_call *c, double **v,
                      double **s, double **a, double **b, double **o,
                      double *q)
{
    double *w = c->ws;
    size_t d = h->d;
    *v = w;
    *s = w + d;
    *a = w + 2 * d;
    *b = w + 3 * d;
    *o = w + 4 * d;
    for (size_t i = 0; i < d; i++) {
        (*v)[i] = c->params[i];
        (*s)[i] = c->params[d + i];
    }
    *q = dot(*v, *v, d);
}

static int hh_forward(void *self, const flow_call *c, const flow_real *x,
                      flow_real *z, flow_real *logdet)
{
    const honest *h = self;
    double *v, *s, *y, *o, *unused, q, ld = 0;
    size_t d = h->d;
    hh_params(h, c, &v, &s, &y, &unused, &o, &q);
    for (size_t i = 0; i < d; i++)
        ld += s[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++)
            y[i] = exp(s[i]) * x[r * d + i];
        reflect(v, q, y, o, d);
        for (size_t i = 0; i < d; i++)
            z[r * d + i] = (flow_real)o[i];
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* x = e^-s . (H z); log|det dx/dz| = -sum s */
static int hh_inverse(void *self, const flow_call *c, const flow_real *z,
                      flow_real *x, flow_real *logdet)
{
    const honest *h = self;
    double *v, *s, *y, *o, *unused, q, ld = 0;
    size_t d = h->d;
    hh_params(h, c, &v, &s, &y, &unused, &o, &q);
    for (size_t i = 0; i < d; i++)
        ld -= s[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++)
            y[i] = z[r * d + i];
        reflect(v, q, y, o, d);
        for (size_t i = 0; i < d; i++)
            x[r * d + i] = (flow_real)(exp(-s[i]) * o[i]);
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* y = e^s . x, z = H y:  dy = H dz, dx = e^s . dy, dL/ds = dy . y + dlogdet */
static int hh_forward_backward(void *self, const flow_call *c,
                               const flow_real *x, const flow_real *z,
                               const flow_real *dz, const flow_real *dlogdet,
                               flow_real *dx)
{
    const honest *h = self;
    double *v, *s, *y, *g, *dy, q;
    size_t d = h->d;
    (void)z;
    hh_params(h, c, &v, &s, &y, &g, &dy, &q);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++) {
            y[i] = exp(s[i]) * x[r * d + i];
            g[i] = dz[r * d + i];
        }
        reflect(v, q, g, dy, d);            /* H is symmetric */
        for (size_t i = 0; i < d; i++)
            dx[r * d + i] = (flow_real)(exp(s[i]) * dy[i]);
        if (!c->grad)
            continue;
        reflect_grad_v(v, q, y, g, c->grad, d);
        for (size_t i = 0; i < d; i++)
            c->grad[d + i] += (flow_real)(dy[i] * y[i] + dlogdet[r]);
    }
    return FLOW_OK;
}

/* y = H z, x = e^-s . y:  dy = e^-s . dx, dz = H dy,
 * dL/ds = -dx . x - dlogdet */
static int hh_inverse_backward(void *self, const flow_call *c,
                               const flow_real *z, const flow_real *x,
                               const flow_real *dx, const flow_real *dlogdet,
                               flow_real *dz)
{
    const honest *h = self;
    double *v, *s, *zz, *dy, *o, q;
    size_t d = h->d;
    hh_params(h, c, &v, &s, &zz, &dy, &o, &q);
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++) {
            zz[i] = z[r * d + i];
            dy[i] = exp(-s[i]) * dx[r * d + i];
        }
        reflect(v, q, dy, o, d);
        for (size_t i = 0; i < d; i++)
            dz[r * d + i] = (flow_real)o[i];
        if (!c->grad)
            continue;
        reflect_grad_v(v, q, zz, dy, c->grad, d);
        for (size_t i = 0; i < d; i++)
            c->grad[d + i] += (flow_real)(-(double)dx[r * d + i]
                                          * x[r * d + i] - dlogdet[r]);
    }
    return FLOW_OK;
}

static const flow_layer_type householder_scale_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = TYPE_NAME("householder_scale"),
    .summary = "Householder reflection times a learnable diagonal scale "
               "(dense, exact log-det)",
    .attrs = hh_attrs,
    .describe = hh_describe,
    .create = honest_create,
    .destroy = honest_destroy,
    .workspace = hh_workspace,
    .init = hh_init,
    .forward = hh_forward,
    .inverse = hh_inverse,
    .forward_backward = hh_forward_backward,
    .inverse_backward = hh_inverse_backward,
};

/* ------------------------------------------------------------------
 * cond_affine: z = x . exp(a(c)) + b(c) with a(c) = A c + a0 and
 * b(c) = B c + b0: the affine transformer of conditional MAF
 * (Papamakarios et al. 2017) with a linear map of the context alone as
 * its conditioner, elementwise, so the Jacobian is diagonal and
 * log|det dz/dx| = sum_i a_i(c).  Parameters: A (D x K, row-major), a0
 * (D), B (D x K), b0 (D).  Without a context (K = 0) it is a plain
 * elementwise affine layer. */

static const flow_attr_spec ca_attrs[] = {
    {.name = "declare_context", .type = FLOW_ATTR_BOOL, .doc = "declare "
     "FLOW_LAYER_CONTEXT (true, honest); false makes `given c` refused "
     "(F0507)", .def_int = !LIE},
    {0}};

static int ca_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                       flow_diag *diag)
{
    size_t d = cfg->dim, k = cfg->context_dim;
    (void)diag;
    out->flags = ALL_DIRECTIONS | (cfg->attrs[0].i ? FLOW_LAYER_CONTEXT : 0);
    out->n_params = 2 * d * (k + 1);
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_MONOTONE;
    out->cert_text = "positive scale exp(a(c))";
    out->cost_forward = (flow_cost){0, 0, (double)(2 * d * (k + 2))};
    out->cost_inverse = (flow_cost){0, 0, (double)(2 * d * (k + 2))};
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* the identity: every parameter 0 */
static int ca_init(void *self, const flow_call *c, flow_real *params)
{
    const honest *h = self;
    (void)c;
    memset(params, 0, 2 * h->d * (h->k + 1) * sizeof *params);
    return FLOW_OK;
}

/* a_i and b_i of row r */
static void ca_shift(const honest *h, const flow_call *c, size_t r,
                     size_t i, double *a, double *b)
{
    size_t d = h->d, k = h->k;
    const flow_real *A = c->params, *a0 = A + d * k, *B = a0 + d,
                    *b0 = B + d * k;
    double sa = a0[i], sb = b0[i];
    for (size_t j = 0; j < k; j++) {
        sa += (double)A[i * k + j] * c->ctx[r * k + j];
        sb += (double)B[i * k + j] * c->ctx[r * k + j];
    }
    *a = sa;
    *b = sb;
}

static int ca_forward(void *self, const flow_call *c, const flow_real *x,
                      flow_real *z, flow_real *logdet)
{
    const honest *h = self;
    size_t d = h->d;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0, a, b;
        for (size_t i = 0; i < d; i++) {
            ca_shift(h, c, r, i, &a, &b);
            z[r * d + i] = (flow_real)(x[r * d + i] * exp(a) + b);
            ld += a;
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* x = (z - b) exp(-a); log|det dx/dz| = -sum a */
static int ca_inverse(void *self, const flow_call *c, const flow_real *z,
                      flow_real *x, flow_real *logdet)
{
    const honest *h = self;
    size_t d = h->d;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0, a, b;
        for (size_t i = 0; i < d; i++) {
            ca_shift(h, c, r, i, &a, &b);
            x[r * d + i] = (flow_real)((z[r * d + i] - b) * exp(-a));
            ld -= a;
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* Adds dL/da_i = ga and dL/db_i = gb of row r to the parameter gradient
 * (a = A c + a0, b = B c + b0) and to the context gradient. */
static void ca_accumulate(const honest *h, const flow_call *c, size_t r,
                          size_t i, double ga, double gb)
{
    size_t d = h->d, k = h->k;
    const flow_real *A = c->params, *B = A + d * k + d;
    if (c->grad) {
        flow_real *gA = c->grad, *ga0 = gA + d * k, *gB = ga0 + d,
                  *gb0 = gB + d * k;
        for (size_t j = 0; j < k; j++) {
            gA[i * k + j] += (flow_real)(ga * c->ctx[r * k + j]);
            gB[i * k + j] += (flow_real)(gb * c->ctx[r * k + j]);
        }
        ga0[i] += (flow_real)ga;
        gb0[i] += (flow_real)gb;
    }
    if (c->dctx)
        for (size_t j = 0; j < k; j++)
            c->dctx[r * k + j] += (flow_real)(ga * A[i * k + j]
                                              + gb * B[i * k + j]);
}

/* dz/dx = e^a; dz/da = x e^a, dlogdet/da = 1; dz/db = 1 */
static int ca_forward_backward(void *self, const flow_call *c,
                               const flow_real *x, const flow_real *z,
                               const flow_real *dz, const flow_real *dlogdet,
                               flow_real *dx)
{
    const honest *h = self;
    size_t d = h->d;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < d; i++) {
            double a, b, e, g = dz[r * d + i];
            ca_shift(h, c, r, i, &a, &b);
            e = exp(a);
            dx[r * d + i] = (flow_real)(g * e);
            ca_accumulate(h, c, r, i, g * x[r * d + i] * e + dlogdet[r], g);
        }
    return FLOW_OK;
}

/* dx/dz = e^-a; dx/da = -x, dlogdet/da = -1; dx/db = -e^-a */
static int ca_inverse_backward(void *self, const flow_call *c,
                               const flow_real *z, const flow_real *x,
                               const flow_real *dx, const flow_real *dlogdet,
                               flow_real *dz)
{
    const honest *h = self;
    size_t d = h->d;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < d; i++) {
            double a, b, e, g = dx[r * d + i];
            ca_shift(h, c, r, i, &a, &b);
            e = exp(-a);
            dz[r * d + i] = (flow_real)(g * e);
            ca_accumulate(h, c, r, i, -g * x[r * d + i] - dlogdet[r],
                          -g * e);
        }
    return FLOW_OK;
}

static const flow_layer_type cond_affine_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = TYPE_NAME("cond_affine"),
    .summary = "conditional elementwise affine map: z = x exp(a(c)) + b(c)",
    .attrs = ca_attrs,
    .describe = ca_describe,
    .create = honest_create,
    .destroy = honest_destroy,
    .init = ca_init,
    .forward = ca_forward,
    .inverse = ca_inverse,
    .forward_backward = ca_forward_backward,
    .inverse_backward = ca_inverse_backward,
};

/* ------------------------------------------------------------------
 * mono: z_i = x_i + a_i tanh(x_i) with a_i = softplus(u_i) - 1 > -1, so
 * dz/dx = 1 + a sech^2(x) >= min(1, 1 + a) > 0 (sech^2 lies in (0, 1]):
 * strictly increasing, log|det| = sum_i log(1 + a_i sech^2 x_i).  The
 * inverse solves x + a tanh x = z by safeguarded Newton on the bracket
 * [z - |a|, z + |a|] (|a tanh x| <= |a|).  Parameters: u (D). */

static int mono_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                         flow_diag *diag)
{
    (void)diag;
    out->flags = ALL_DIRECTIONS;
    out->n_params = cfg->dim;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_MONOTONE;
    out->cert_text = "1 + a sech^2 x > 0 with a = softplus(u) - 1";
    out->cost_forward = (flow_cost){0, 0, 6.0 * (double)cfg->dim};
    out->cost_inverse = (flow_cost){0, 0, 60.0 * (double)cfg->dim};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static double softplus(double u)
{
    return u > 0 ? u + log1p(exp(-u)) : log1p(exp(u));
}

static double sigmoid(double u)
{
    return u >= 0 ? 1 / (1 + exp(-u)) : exp(u) / (1 + exp(u));
}

/* a = 0: softplus(u) = 1 at u = log(e - 1) */
static int mono_init(void *self, const flow_call *c, flow_real *params)
{
    const honest *h = self;
    (void)c;
    for (size_t i = 0; i < h->d; i++)
        params[i] = (flow_real)log(expm1(1.0));
    return FLOW_OK;
}

/* t = tanh x, s = sech^2 x = 1 - t^2, g = dz/dx = 1 + a s */
static double mono_slope(double a, double x, double *t, double *s)
{
    *t = tanh(x);
    *s = 1 - *t * *t;
    return 1 + a * *s;
}

static int mono_forward(void *self, const flow_call *c, const flow_real *x,
                        flow_real *z, flow_real *logdet)
{
    const honest *h = self;
    size_t d = h->d;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t i = 0; i < d; i++) {
            double a = softplus(c->params[i]) - 1, v = x[r * d + i], t, s;
            double g = mono_slope(a, v, &t, &s);
            z[r * d + i] = (flow_real)(v + a * t);
            ld += log(g);
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* the root of x + a tanh x = z */
static double mono_solve(double a, double z)
{
    double lo = z - fabs(a), hi = z + fabs(a), x = z;
    for (int it = 0; it < 100 && hi - lo > 0; it++) {
        double t, s, g = mono_slope(a, x, &t, &s), f = x + a * t - z, nx;
        if (f == 0)
            break;
        if (f > 0)
            hi = x;
        else
            lo = x;
        nx = x - f / g;
        if (!(nx > lo && nx < hi))
            nx = 0.5 * (lo + hi);           /* Newton left the bracket */
        if (fabs(nx - x) <= 1e-15 * (1 + fabs(x)))
            return nx;
        x = nx;
    }
    return x;
}

static int mono_inverse(void *self, const flow_call *c, const flow_real *z,
                        flow_real *x, flow_real *logdet)
{
    const honest *h = self;
    size_t d = h->d;
    for (size_t r = 0; r < c->n; r++) {
        double ld = 0;
        for (size_t i = 0; i < d; i++) {
            double a = softplus(c->params[i]) - 1, t, s;
            double v = mono_solve(a, z[r * d + i]);
            x[r * d + i] = (flow_real)v;
            ld -= log(mono_slope(a, v, &t, &s));
        }
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

/* dz/dx = g, d log g/dx = -2 a t s / g; dz/da = t, d log g/da = s / g;
 * da/du = sigmoid(u) */
static int mono_forward_backward(void *self, const flow_call *c,
                                 const flow_real *x, const flow_real *z,
                                 const flow_real *dz, const flow_real *dlogdet,
                                 flow_real *dx)
{
    const honest *h = self;
    size_t d = h->d;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < d; i++) {
            double u = c->params[i], a = softplus(u) - 1, t, s;
            double g = mono_slope(a, x[r * d + i], &t, &s);
            double gz = dz[r * d + i], gl = dlogdet[r];
            dx[r * d + i] = (flow_real)(gz * g - gl * 2 * a * t * s / g);
            if (c->grad)
                c->grad[i] += (flow_real)((gz * t + gl * s / g)
                                          * sigmoid(u));
        }
    return FLOW_OK;
}

/* With x = f^-1(z) and lad = -log g(x):  dx/dz = 1/g,
 * dlad/dz = 2 a t s / g^2;  dx/da = -t/g (implicit function theorem),
 * dlad/da = -(s/g + 2 a t^2 s / g^2). */
static int mono_inverse_backward(void *self, const flow_call *c,
                                 const flow_real *z, const flow_real *x,
                                 const flow_real *dx, const flow_real *dlogdet,
                                 flow_real *dz)
{
    const honest *h = self;
    size_t d = h->d;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < d; i++) {
            double u = c->params[i], a = softplus(u) - 1, t, s;
            double g = mono_slope(a, x[r * d + i], &t, &s);
            double gx = dx[r * d + i], gl = dlogdet[r];
            dz[r * d + i] = (flow_real)(gx / g + gl * 2 * a * t * s / (g * g));
            if (c->grad)
                c->grad[i] += (flow_real)((-gx * t / g
                                           - gl * (s / g + 2 * a * t * t * s
                                                   / (g * g)))
                                          * sigmoid(u));
        }
    return FLOW_OK;
}

static const flow_layer_type mono_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = TYPE_NAME("mono"),
    .summary = "elementwise strictly increasing z = x + a tanh(x), a > -1",
    .describe = mono_describe,
    .create = honest_create,
    .destroy = honest_destroy,
    .init = mono_init,
    .forward = mono_forward,
    .inverse = mono_inverse,
    .forward_backward = mono_forward_backward,
    .inverse_backward = mono_inverse_backward,
};

#ifdef HONEST_LIES
FLOW_PLUGIN_LAYERS("liar", "test", "the honest layers, declared wrongly by "
                   "default", &householder_scale_type, &cond_affine_type,
                   &mono_type);
#else
FLOW_PLUGIN_LAYERS("honest", "test", "layers declared honestly under ABI "
                   "1.5", &householder_scale_type, &cond_affine_type,
                   &mono_type);
#endif
