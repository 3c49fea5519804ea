/* buggy.c - test-only plugin: layers with one deliberate bug each, to prove
 * that the conformance checks catch it (and only the right check fails).
 * The base map is elementwise affine, z_i = x_i e^{a_i} + b_i.  est_hutch
 * estimates its log-det in training mode, sum_i a_i v_i^2 with Gaussian
 * probes v (unbiased, as Hutchinson's estimator); bug_biased's trace
 * estimate keeps 0.1 of the identity, sum_i (a_i + 0.1) v_i^2, so it is
 * off by 0.1 D on average.  bug_batch centres each column on the batch
 * mean in training mode, but its backward forgets that the mean depends
 * on the inputs.  bug_nan multiplies by e^{10 x} / e^{10 x}, which is 1
 * until both overflow (|x| > 70) and NaN after.  bug_oob's forward writes
 * one element past its output and bug_inwrite's halves its input after
 * using it: through the runtime both corrupt memory that is not theirs,
 * so only the checker (whose buffers are guarded copies) may run them.
 * bug_describe declares one more parameter while an instance exists
 * (describe() reads global state); bug_unused declares one more than it
 * reads.  bug_onegrad adds a shift sum_k c_ik phi_ik with COEFS
 * coefficients per dimension and gets the gradient of exactly one
 * of them wrong. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "flow/flow_plugin.h"

enum bug { BUG_NONE, BUG_LOGDET, BUG_PATTERN, BUG_ROWS, BUG_GRAD, BUG_NONINV,
           BUG_NONDET, BUG_SEED, BUG_CKPT, EST_HUTCH, BUG_BIASED,
           BUG_BATCH, BUG_NAN, BUG_OOB, BUG_INWRITE, BUG_DESCRIBE,
           BUG_UNUSED };

static unsigned long live_describe;     /* BUG_DESCRIBE: its instances */

typedef struct buggy {
    enum bug bug;
    size_t d;
    const flow_host *host;
    unsigned long calls;        /* BUG_NONDET only (a deliberate race) */
    double shift;               /* BUG_CKPT: state outside params/buffers */
} buggy;

static int stochastic(const buggy *b)
{
    return b->bug == EST_HUTCH || b->bug == BUG_BIASED;
}

static int describe_common(const flow_layer_config *cfg, flow_layer_desc *out,
                           enum bug bug)
{
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = 2 * cfg->dim;
    if (bug == BUG_UNUSED || (bug == BUG_DESCRIBE && live_describe))
        out->n_params++;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    if (bug == BUG_PATTERN) {         /* declares natural order ... */
        out->jac = FLOW_JAC_TRIANGULAR;
        out->dep = FLOW_DEP_ORDER;
        for (size_t i = 0; i < cfg->dim; i++)
            out->dep_vec[i] = (int32_t)i;
    }
    if (bug == EST_HUTCH || bug == BUG_BIASED)
        out->flags |= FLOW_LAYER_STOCHASTIC;
    if (bug == BUG_BATCH)
        out->flags |= FLOW_LAYER_WHOLE_BATCH
                    | FLOW_LAYER_INVERSE_TRAINING_ERROR;
    out->cert = FLOW_CERT_MONOTONE;
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* the estimators keep their squared probes for the backward */
static size_t ws_probes(void *self, size_t n, int dir)
{
    buggy *b = self;
    (void)dir;
    return stochastic(b) ? n * b->d * sizeof(flow_real) : 0;
}

static int init_zero(void *self, const flow_call *c, flow_real *params)
{
    static unsigned long instances;   /* BUG_SEED: not from c->rng */
    buggy *b = self;
    memset(params, 0, 2 * b->d * sizeof *params);
    if (b->bug == BUG_SEED)
        params[0] = (flow_real)(0.125 * (double)(++instances % 7));
    if (b->bug == BUG_CKPT)           /* drawn, but kept in the instance */
        b->shift = c->host->rng_uniform(c->rng);
    return FLOW_OK;
}

static void destroy(void *self)
{
    buggy *b = self;
    if (b->bug == BUG_DESCRIBE)
        live_describe--;
    b->host->free(b);
}

/* extra term of the pattern bug: ... but z_0 also depends on x_1 */
static double coupling_term(const buggy *b, const flow_real *xr)
{
    return b->bug == BUG_PATTERN && b->d > 1 ? 0.5 * xr[1] : 0.0;
}

/* BUG_BATCH in training mode: the batch mean of column i, else 0 */
static double batch_mean(const buggy *b, const flow_call *c,
                         const flow_real *x, size_t i)
{
    double m = 0;
    if (b->bug != BUG_BATCH || !c->training)
        return 0;
    for (size_t r = 0; r < c->n; r++)
        m += x[r * b->d + i];
    return m / (double)c->n;
}

static int forward(void *self, const flow_call *c, const flow_real *x,
                   flow_real *z, flow_real *logdet)
{
    buggy *b = self;
    const flow_real *a = c->params, *t = c->params + b->d;
    double ld = 0;
    flow_real *probe = c->ws;
    for (size_t i = 0; i < b->d; i++)
        ld += a[i];
    for (size_t r = 0; r < c->n; r++) {
        const flow_real *xr = x + r * b->d;
        if (stochastic(b) && c->training) {
            ld = 0;
            for (size_t i = 0; i < b->d; i++) {
                flow_real v;
                c->host->rng_normal(c->rng, &v, 1);
                probe[r * b->d + i] = v * v;
                ld += a[i] * (double)v * v;
                if (b->bug == BUG_BIASED)   /* keeps 0.1 of the identity */
                    ld += 0.1 * (double)v * v;
            }
        }
        for (size_t i = 0; i < b->d; i++) {
            double v = xr[i];
            if (b->bug == BUG_NONINV)
                v = fabs(v);                    /* loses the sign */
            v = (v - batch_mean(b, c, x, i)) * exp(a[i]) + t[i] + b->shift;
            if (i == 0)
                v += coupling_term(b, xr);
            if (b->bug == BUG_ROWS && r > 0)
                v += 0.1 * x[(r - 1) * b->d + i];  /* reads another row */
            if (b->bug == BUG_NAN)
                v *= exp(10 * xr[i]) / exp(10 * xr[i]);
            z[r * b->d + i] = (flow_real)v;
        }
        logdet[r] = (flow_real)(b->bug == BUG_LOGDET ? 2 * ld : ld);
    }
    if (b->bug == BUG_NONDET && (b->calls++ & 1))   /* one ulp, every
                                                       other call */
#if FLOW_REAL_DOUBLE
        z[0] = nextafter(z[0], INFINITY);
#else
        z[0] = nextafterf(z[0], INFINITY);
#endif
    if (b->bug == BUG_OOB)
        z[c->n * b->d] = z[0];                  /* one past the end */
    if (b->bug == BUG_INWRITE)                  /* x is the caller's */
        for (size_t i = 0; i < c->n * b->d; i++)
            ((flow_real *)x)[i] *= 0.5f;
    return FLOW_OK;
}

static int inverse(void *self, const flow_call *c, const flow_real *z,
                   flow_real *x, flow_real *logdet)
{
    buggy *b = self;
    const flow_real *a = c->params, *t = c->params + b->d;
    double ld = 0;
    for (size_t i = 0; i < b->d; i++)
        ld -= a[i];
    for (size_t r = 0; r < c->n; r++) {
        flow_real *xr = x + r * b->d;
        /* last to first, so the pattern bug's x_1 is known for x_0 */
        for (size_t i = b->d; i-- > 0;) {
            double v = z[r * b->d + i] - t[i] - b->shift;
            if (b->bug == BUG_ROWS && r > 0)
                v -= 0.1 * x[(r - 1) * b->d + i];
            if (i == 0)
                v -= coupling_term(b, xr);
            v *= exp(-a[i]);
            if (b->bug == BUG_NONINV)
                v = fabs(v);
            xr[i] = (flow_real)v;
        }
        logdet[r] = (flow_real)(b->bug == BUG_LOGDET ? 2 * ld : ld);
    }
    return FLOW_OK;
}

static int forward_backward(void *self, const flow_call *c,
                            const flow_real *x, const flow_real *z,
                            const flow_real *dz, const flow_real *dlogdet,
                            flow_real *dx)
{
    buggy *b = self;
    const flow_real *a = c->params;
    double k = b->bug == BUG_LOGDET ? 2 : 1;
    (void)z;
    memset(dx, 0, c->n * b->d * sizeof *dx);
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < b->d; i++) {
            double g = dz[r * b->d + i], xi = x[r * b->d + i], e = exp(a[i]);
            double u = (b->bug == BUG_NONINV ? fabs(xi) : xi)
                     - batch_mean(b, c, x, i);
            double du = b->bug == BUG_NONINV ? (xi < 0 ? -1 : 1) : 1;
            dx[r * b->d + i] += (flow_real)(g * e * du);
            if (i == 0 && b->bug == BUG_PATTERN && b->d > 1)
                dx[r * b->d + 1] += (flow_real)(0.5 * g);
            if (b->bug == BUG_ROWS && r > 0)
                dx[(r - 1) * b->d + i] += (flow_real)(0.1 * g);
            if (c->grad) {
                double dl = stochastic(b) && c->training
                          ? ((const flow_real *)c->ws)[r * b->d + i] : 1;
                c->grad[i] += (flow_real)(g * u * e + k * dl * dlogdet[r]);
                c->grad[b->d + i] += (flow_real)(b->bug == BUG_GRAD && i == 0
                                                 ? 1.5 * g : g);
            }
        }
    return FLOW_OK;
}

/* Only for the plain affine map (the checks of the other bugs never need
 * the inverse's VJP to be right, so they do not declare it). */
static int inverse_backward(void *self, const flow_call *c,
                            const flow_real *z, const flow_real *x,
                            const flow_real *dx, const flow_real *dlogdet,
                            flow_real *dz)
{
    buggy *b = self;
    const flow_real *a = c->params;
    double k = b->bug == BUG_LOGDET ? 2 : 1;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < b->d; i++) {
            double g = dx[r * b->d + i], e = exp(-a[i]);
            dz[r * b->d + i] = (flow_real)(g * e);
            if (c->grad) {
                c->grad[i] += (flow_real)(-g * x[r * b->d + i]
                                          - k * dlogdet[r]);
                c->grad[b->d + i] += (flow_real)(-g * e);
            }
        }
    return FLOW_OK;
}

#define BUGGY_TYPE(NAME, BUG, FLAGS_OFF) \
    static int NAME##_describe(const flow_layer_config *cfg, \
                               flow_layer_desc *out, flow_diag *diag) \
    { \
        (void)diag; \
        describe_common(cfg, out, BUG); \
        out->flags &= ~(uint32_t)(FLAGS_OFF); \
        return FLOW_OK; \
    } \
    static void *NAME##_create(const flow_host *host, \
                               const flow_layer_config *cfg, flow_diag *diag) \
    { \
        buggy *b = host->calloc(1, sizeof *b); \
        (void)diag; \
        if (b) { b->bug = BUG; b->d = cfg->dim; b->host = host; } \
        if (b && BUG == BUG_DESCRIBE) live_describe++; \
        return b; \
    } \
    static const flow_layer_type NAME##_type = { \
        .struct_size = sizeof(flow_layer_type), .name = #NAME, \
        .summary = "test-only layer with a deliberate bug", \
        .describe = NAME##_describe, .create = NAME##_create, \
        .destroy = destroy, .workspace = ws_probes, .init = init_zero, \
        .forward = forward, .inverse = inverse, \
        .forward_backward = forward_backward, \
        .inverse_backward = inverse_backward, \
    };

#define NOINVBW FLOW_LAYER_BACKWARD_INVERSE
BUGGY_TYPE(bug_none, BUG_NONE, 0)
BUGGY_TYPE(bug_logdet, BUG_LOGDET, 0)
BUGGY_TYPE(bug_pattern, BUG_PATTERN, NOINVBW)
BUGGY_TYPE(bug_rows, BUG_ROWS, NOINVBW)
BUGGY_TYPE(bug_grad, BUG_GRAD, 0)
BUGGY_TYPE(bug_noninv, BUG_NONINV, NOINVBW)
BUGGY_TYPE(bug_nondet, BUG_NONDET, 0)
BUGGY_TYPE(bug_seed, BUG_SEED, 0)
BUGGY_TYPE(bug_ckpt, BUG_CKPT, 0)
BUGGY_TYPE(est_hutch, EST_HUTCH, 0)
BUGGY_TYPE(bug_biased, BUG_BIASED, 0)
BUGGY_TYPE(bug_batch, BUG_BATCH, 0)
BUGGY_TYPE(bug_nan, BUG_NAN, 0)
BUGGY_TYPE(bug_oob, BUG_OOB, 0)
BUGGY_TYPE(bug_inwrite, BUG_INWRITE, 0)
BUGGY_TYPE(bug_describe, BUG_DESCRIBE, 0)
BUGGY_TYPE(bug_unused, BUG_UNUSED, 0)

/* bug_onegrad: z_i = x_i e^{a_i} + b_i + sum_k c_ik phi_ik with fixed
 * phi_ik = cos(0.7 k + 1.3 i) (never 0), log-det sum_i a_i.  Parameters:
 * scale a (D), shift b (D), coef c (D x COEFS, row-major): 270 at D = 3.
 * The gradient of coef entry BAD_COEF(D) (coefficient 29 of the last
 * dimension: coef[205], param 211 at D = 3) gets an extra 0.5 dz, as if
 * its phi (-0.615 there) were -0.115: neither the largest gradient of its
 * tensor or column nor an entry of the checker's evenly spaced sample, so
 * only the directional checks can find it. */
#define COEFS 88
#define BAD_COEF(d) (((d) - 1) * COEFS + 29)

static double phi(size_t i, size_t k)
{
    return cos(0.7 * (double)k + 1.3 * (double)i);
}

static int onegrad_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    static const char *const names[3] = {"scale", "shift", "coef"};
    size_t d = cfg->dim;
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD;
    out->n_params = (2 + COEFS) * d;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->logdet_exact = 1;
    if (out->struct_size >= sizeof *out && out->tensors
        && out->tensors_cap >= 3) {
        for (int t = 0; t < 3; t++) {
            out->tensors[t].name = names[t];
            out->tensors[t].count = t < 2 ? d : COEFS * d;
        }
    }
    out->n_tensors = 3;
    return FLOW_OK;
}

static void *onegrad_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    buggy *b = host->calloc(1, sizeof *b);
    (void)diag;
    if (b) {
        b->bug = BUG_NONE;
        b->d = cfg->dim;
        b->host = host;
    }
    return b;
}

/* sum_k c_ik phi_ik of dimension i */
static double coef_shift(const flow_real *c, size_t i)
{
    double s = 0;
    for (size_t k = 0; k < COEFS; k++)
        s += c[i * COEFS + k] * phi(i, k);
    return s;
}

static int onegrad_forward(void *self, const flow_call *c, const flow_real *x,
                           flow_real *z, flow_real *logdet)
{
    buggy *b = self;
    size_t d = b->d;
    const flow_real *a = c->params, *t = a + d, *cf = a + 2 * d;
    double ld = 0;
    for (size_t i = 0; i < d; i++)
        ld += a[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++)
            z[r * d + i] = (flow_real)(x[r * d + i] * exp(a[i]) + t[i]
                                       + coef_shift(cf, i));
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int onegrad_inverse(void *self, const flow_call *c, const flow_real *z,
                           flow_real *x, flow_real *logdet)
{
    buggy *b = self;
    size_t d = b->d;
    const flow_real *a = c->params, *t = a + d, *cf = a + 2 * d;
    double ld = 0;
    for (size_t i = 0; i < d; i++)
        ld -= a[i];
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < d; i++)
            x[r * d + i] = (flow_real)((z[r * d + i] - t[i]
                                        - coef_shift(cf, i)) * exp(-a[i]));
        logdet[r] = (flow_real)ld;
    }
    return FLOW_OK;
}

static int onegrad_backward(void *self, const flow_call *c,
                            const flow_real *x, const flow_real *z,
                            const flow_real *dz, const flow_real *dlogdet,
                            flow_real *dx)
{
    buggy *b = self;
    size_t d = b->d;
    const flow_real *a = c->params;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < d; i++) {
            double g = dz[r * d + i], e = exp(a[i]);
            dx[r * d + i] = (flow_real)(g * e);
            if (!c->grad)
                continue;
            c->grad[i] += (flow_real)(g * x[r * d + i] * e + dlogdet[r]);
            c->grad[d + i] += (flow_real)g;
            for (size_t k = 0; k < COEFS; k++) {
                size_t j = i * COEFS + k;
                c->grad[2 * d + j] += (flow_real)(g * (phi(i, k)
                                      + (j == BAD_COEF(d) ? 0.5 : 0)));
            }
        }
    return FLOW_OK;
}

static const flow_layer_type bug_onegrad_type = {
    .struct_size = sizeof(flow_layer_type), .name = "bug_onegrad",
    .summary = "test-only layer: one wrong parameter gradient among hundreds",
    .describe = onegrad_describe, .create = onegrad_create,
    .destroy = destroy, .forward = onegrad_forward,
    .inverse = onegrad_inverse, .forward_backward = onegrad_backward,
};

FLOW_PLUGIN_LAYERS("buggy", "test",
                   "layers with deliberate bugs for the conformance tests",
                   &bug_none_type, &bug_logdet_type, &bug_pattern_type,
                   &bug_rows_type, &bug_grad_type, &bug_noninv_type,
                   &bug_nondet_type, &bug_seed_type, &bug_ckpt_type,
                   &est_hutch_type, &bug_biased_type, &bug_batch_type,
                   &bug_nan_type, &bug_oob_type, &bug_inwrite_type,
                   &bug_describe_type, &bug_unused_type, &bug_onegrad_type);
