/* ldbugs.c - test-only plugin: an elementwise affine layer in three
 * versions, one correct and two whose log-det is wrong in ways that make
 * the likelihood look better (the bugs `flowkit train` must stop).
 *
 * z = x * exp(s) + t per dimension; s starts at 0.5 (so log|det J| =
 * sum_i s_i = D / 2 from the first step on) and t at 0, unless said.
 *   ld_ok:    log-det = sum_i s_i              (correct)
 *   ld_flip:  log-det = -sum_i s_i             (sign flipped)
 *   ld_plus:  log-det = sum_i s_i + 0.1        (a constant too much)
 *   ld_flip0: ld_flip starting at s = 0, the identity, where the wrong
 *             sign is still right: only perturbed parameters show it
 *   ld_noshift: correct log-det, but the inverse forgets t, which starts
 *             at 0: the round trip fails only at perturbed parameters
 *   ld_lazy:  correct log-det, except on calls that ask to skip it
 *             (flow_call_skip_logdet): there it writes NaN, which a host
 *             reading it anyway would turn into NaN log-densities, and
 *             counts the call in its stat "skipped" (tests/test_nologdet.c)
 * Each log-det bug is consistent with itself: the inverse returns the
 * negated (wrong) log-det and the backward is the gradient of what the
 * forward computes, so only a log-det against the Jacobian catches it. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "flow/flow_plugin.h"

typedef struct affine {
    const flow_host *host;
    size_t d;
    double sign, offset;        /* log-det = sign * sum(s) + offset */
    double s0;                  /* initial s */
    int noshift;                /* the inverse ignores t */
    int lazy;                   /* ld_lazy */
    atomic_ulong skipped;       /* ld_lazy: calls that skipped the log-det */
} affine;

static int ld_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                       flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = 2 * cfg->dim;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "positive scale";
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void *ld_create_as(const flow_host *host, const flow_layer_config *cfg,
                          flow_diag *diag, double sign, double offset,
                          double s0, int noshift)
{
    affine *a = host->calloc(1, sizeof *a);
    if (!a) {
        strcpy(diag->message, "out of memory");
        return NULL;
    }
    a->host = host;
    a->d = cfg->dim;
    a->sign = sign;
    a->offset = offset;
    a->s0 = s0;
    a->noshift = noshift;
    atomic_init(&a->skipped, 0);
    return a;
}

static void *ok_create(const flow_host *host, const flow_layer_config *cfg,
                       flow_diag *diag)
{
    return ld_create_as(host, cfg, diag, 1, 0, 0.5, 0);
}

static void *flip_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    return ld_create_as(host, cfg, diag, -1, 0, 0.5, 0);
}

static void *plus_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    return ld_create_as(host, cfg, diag, 1, 0.1, 0.5, 0);
}

static void *flip0_create(const flow_host *host, const flow_layer_config *cfg,
                          flow_diag *diag)
{
    return ld_create_as(host, cfg, diag, -1, 0, 0, 0);
}

static void *noshift_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    return ld_create_as(host, cfg, diag, 1, 0, 0.5, 1);
}

static void *lazy_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    affine *a = ld_create_as(host, cfg, diag, 1, 0, 0.5, 0);
    if (a)
        a->lazy = 1;
    return a;
}

static void ld_destroy(void *self)
{
    affine *a = self;
    if (a)
        a->host->free(a);
}

/* params: s (D), then t (D) */
static int ld_init(void *self, const flow_call *c, flow_real *params)
{
    affine *a = self;
    (void)c;
    for (size_t i = 0; i < a->d; i++)
        params[i] = (flow_real)a->s0;
    return FLOW_OK;
}

static double ld_value(const affine *a, const flow_real *s)
{
    double sum = 0;
    for (size_t i = 0; i < a->d; i++)
        sum += s[i];
    return a->sign * sum + a->offset;
}

/* The log-det l of a call, NaN (and counted) on an ld_lazy call that
 * skips it; the calls of several threads may count at once. */
static flow_real ld_of_call(const affine *a, const flow_call *c, double l)
{
    if (!a->lazy || !flow_call_skip_logdet(c))
        return (flow_real)l;
    atomic_fetch_add(&((affine *)(void *)a)->skipped, 1);
    return (flow_real)NAN;
}

static double ld_skipped(void *self)
{
    affine *a = self;
    return (double)atomic_load(&a->skipped);
}

static int ld_forward(void *self, const flow_call *c, const flow_real *x,
                      flow_real *z, flow_real *logdet)
{
    const affine *a = self;
    const flow_real *s = c->params, *t = c->params + a->d;
    flow_real l = ld_of_call(a, c, ld_value(a, s));
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < a->d; i++)
            z[r * a->d + i] = x[r * a->d + i] * (flow_real)exp((double)s[i])
                              + t[i];
        logdet[r] = l;
    }
    return FLOW_OK;
}

static int ld_inverse(void *self, const flow_call *c, const flow_real *z,
                      flow_real *x, flow_real *logdet)
{
    const affine *a = self;
    const flow_real *s = c->params, *t = c->params + a->d;
    flow_real l = ld_of_call(a, c, -ld_value(a, s));
    for (size_t r = 0; r < c->n; r++) {
        for (size_t i = 0; i < a->d; i++)
            x[r * a->d + i] = (z[r * a->d + i] - (a->noshift ? 0 : t[i]))
                              * (flow_real)exp(-(double)s[i]);
        logdet[r] = l;
    }
    return FLOW_OK;
}

/* dx = dz e^s; ds += dz x e^s + sign dlogdet; dt += dz */
static int ld_forward_backward(void *self, const flow_call *c,
                               const flow_real *x, const flow_real *z,
                               const flow_real *dz, const flow_real *dlogdet,
                               flow_real *dx)
{
    const affine *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < a->d; i++) {
            size_t k = r * a->d + i;
            flow_real e = (flow_real)exp((double)s[i]);
            dx[k] = dz[k] * e;
            if (c->grad) {
                c->grad[i] += dz[k] * x[k] * e
                              + (flow_real)a->sign * dlogdet[r];
                c->grad[a->d + i] += dz[k];
            }
        }
    return FLOW_OK;
}

/* x = (z - t) e^-s: dz = dx e^-s; ds += -dx x - sign dlogdet;
 * dt += -dx e^-s */
static int ld_inverse_backward(void *self, const flow_call *c,
                               const flow_real *z, const flow_real *x,
                               const flow_real *dx, const flow_real *dlogdet,
                               flow_real *dz)
{
    const affine *a = self;
    const flow_real *s = c->params;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        for (size_t i = 0; i < a->d; i++) {
            size_t k = r * a->d + i;
            flow_real e = (flow_real)exp(-(double)s[i]);
            dz[k] = dx[k] * e;
            if (c->grad) {
                c->grad[i] += -dx[k] * x[k]
                              - (flow_real)a->sign * dlogdet[r];
                c->grad[a->d + i] += -dx[k] * e;
            }
        }
    return FLOW_OK;
}

#define LD_TYPE(VAR, NAME, SUMMARY, CREATE) \
    static const flow_layer_type VAR = { \
        .struct_size = sizeof(flow_layer_type), \
        .name = NAME, \
        .summary = SUMMARY, \
        .describe = ld_describe, \
        .create = CREATE, \
        .destroy = ld_destroy, \
        .init = ld_init, \
        .forward = ld_forward, \
        .inverse = ld_inverse, \
        .forward_backward = ld_forward_backward, \
        .inverse_backward = ld_inverse_backward, \
    }

LD_TYPE(ok_type, "ld_ok", "test: z = x e^s + t, correct log-det",
        ok_create);
LD_TYPE(flip_type, "ld_flip", "test: z = x e^s + t, log-det sign flipped",
        flip_create);
LD_TYPE(plus_type, "ld_plus", "test: z = x e^s + t, log-det + 0.1",
        plus_create);
LD_TYPE(flip0_type, "ld_flip0", "test: ld_flip starting as the identity",
        flip0_create);
LD_TYPE(noshift_type, "ld_noshift", "test: z = x e^s + t, inverse without t",
        noshift_create);

static const flow_layer_type lazy_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "ld_lazy",
    .summary = "test: z = x e^s + t, a NaN log-det where it may be skipped",
    .describe = ld_describe,
    .create = lazy_create,
    .destroy = ld_destroy,
    .init = ld_init,
    .forward = ld_forward,
    .inverse = ld_inverse,
    .forward_backward = ld_forward_backward,
    .inverse_backward = ld_inverse_backward,
    .stat_name = "skipped",
    .stat = ld_skipped,
};

FLOW_PLUGIN_LAYERS("ldbugs", "test",
                   "log-det bugs that flatter the likelihood (tests)",
                   &ok_type, &flip_type, &plus_type, &flip0_type,
                   &noshift_type, &lazy_type);
