/* targets.c - the bundled target densities for variational (reverse-KL)
 * fits: banana, funnel, the 2-D energies u1..u4 and Gaussian mixtures.
 * Each returns log p~(x) up to a constant and its gradient (docs/vi.md). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define LOG_2PI 1.8378770664093454836

typedef struct target {
    const flow_host *host;
    int kind;
    size_t dim;
    double a, b;                 /* banana a, b; funnel scale; wall */
    size_t k;                    /* gmm: components */
    double *means;               /* gmm: k x dim */
    double *stds;                /* gmm: k */
    double *logw;                /* gmm: k, log of the (unnormalised) weights */
    double log_z;                /* NaN when unknown */
} target;

enum { T_BANANA, T_FUNNEL, T_U1, T_U2, T_U3, T_U4, T_GMM };

static void set_diag(flow_diag *d, int attr, const char *msg,
                     const char *help)
{
    d->attr = attr;
    snprintf(d->message, sizeof d->message, "%s", msg);
    snprintf(d->help, sizeof d->help, "%s", help ? help : "");
}

static target *new_target(const flow_host *host, int kind, size_t dim,
                          flow_diag *diag)
{
    target *t = host->calloc(1, sizeof *t);
    if (!t) {
        set_diag(diag, -1, "out of memory", NULL);
        return NULL;
    }
    t->host = host;
    t->kind = kind;
    t->dim = dim;
    t->log_z = NAN;
    return t;
}

static void target_destroy(void *self)
{
    target *t = self;
    if (!t)
        return;
    t->host->free(t->means);
    t->host->free(t->stds);
    t->host->free(t->logw);
    t->host->free(t);
}

static double target_log_z(void *self)
{
    return ((target *)self)->log_z;
}

/* log(e^a + e^b) and the weight of a, e^a / (e^a + e^b). */
static double lse2(double a, double b, double *wa)
{
    double m = a > b ? a : b;
    double ea = exp(a - m), eb = exp(b - m);
    *wa = ea / (ea + eb);
    return m + log(ea + eb);
}

/* --- banana ------------------------------------------------------------
 * The twisted Gaussian of Haario, Saksman & Tamminen (1999, sec. 3): x1 ~
 * N(0, a^2) and x2 | x1 ~ N(b (x1^2 - a^2), 1).  The twist x2 -> x2 -
 * b (x1^2 - a^2) has unit Jacobian, so log Z = log(2 pi a) exactly:
 *   log p~(x) = -x1^2 / (2 a^2) - (x2 - b (x1^2 - a^2))^2 / 2. */
static const flow_attr_spec banana_attrs[] = {
    {.name = "a", .type = FLOW_ATTR_REAL, .doc = "standard deviation of x1",
     .def_real = 1.0, .has_min = 1, .min = 1e-3, .has_max = 1, .max = 1e3},
    {.name = "b", .type = FLOW_ATTR_REAL, .doc = "curvature of the banana",
     .def_real = 1.0, .has_min = 1, .min = 0, .has_max = 1, .max = 1e3},
    {0}};

static int banana_describe(const flow_target_config *cfg, size_t *dim_out,
                           flow_diag *diag)
{
    (void)cfg, (void)diag;
    *dim_out = 2;
    return FLOW_OK;
}

static void *banana_create(const flow_host *host,
                           const flow_target_config *cfg, flow_diag *diag)
{
    target *t = new_target(host, T_BANANA, 2, diag);
    if (t) {
        t->a = cfg->attrs[0].r;
        t->b = cfg->attrs[1].r;
        t->log_z = LOG_2PI + log(t->a);
    }
    return t;
}

static void banana_row(const target *t, const flow_real *x, double *lp,
                       double *g)
{
    double a2 = t->a * t->a, x1 = x[0];
    double r = x[1] - t->b * (x1 * x1 - a2);
    *lp = -x1 * x1 / (2 * a2) - r * r / 2;
    g[0] = -x1 / a2 + r * 2 * t->b * x1;
    g[1] = -r;
}

/* --- funnel ------------------------------------------------------------
 * Neal's funnel (Neal 2003, "Slice sampling", sec. 8): v = x0 ~ N(0, s^2)
 * and x_i | v ~ N(0, e^v) for i = 1..D-1, so
 *   log p~(x) = -v^2 / (2 s^2) - (D-1) v / 2 - e^-v sum_i x_i^2 / 2
 * and log Z = (D / 2) log(2 pi) + log s. */
static const flow_attr_spec funnel_attrs[] = {
    {.name = "scale", .type = FLOW_ATTR_REAL,
     .doc = "standard deviation s of the neck variable x0 (Neal: 3)",
     .def_real = 3.0, .has_min = 1, .min = 1e-3, .has_max = 1, .max = 20},
    {0}};

static int any_dim2(const flow_target_config *cfg, size_t *dim_out,
                    flow_diag *diag)
{
    *dim_out = 0;
    if (cfg->dim < 2) {
        set_diag(diag, -1, "this target needs at least 2 dimensions",
                 "declare input x : real[D] with D >= 2");
        return FLOW_ERR_INVAL;
    }
    return FLOW_OK;
}

static void *funnel_create(const flow_host *host,
                           const flow_target_config *cfg, flow_diag *diag)
{
    target *t = new_target(host, T_FUNNEL, cfg->dim, diag);
    if (t) {
        t->a = cfg->attrs[0].r;
        t->log_z = 0.5 * (double)cfg->dim * LOG_2PI + log(t->a);
    }
    return t;
}

static void funnel_row(const target *t, const flow_real *x, double *lp,
                       double *g)
{
    double v = x[0], s2 = t->a * t->a, e = exp(-v), ss = 0;
    size_t d = t->dim;
    for (size_t i = 1; i < d; i++) {
        ss += (double)x[i] * x[i];
        g[i] = -(double)x[i] * e;
    }
    *lp = -v * v / (2 * s2) - 0.5 * (double)(d - 1) * v - 0.5 * e * ss;
    g[0] = -v / s2 - 0.5 * (double)(d - 1) + 0.5 * e * ss;
}

/* --- u1..u4 -------------------------------------------------------------
 * The energies of Rezende & Mohamed (2015, Table 1), p~(z) = exp(-U(z)):
 *   w1 = sin(2 pi z1 / 4), w2 = 3 exp(-((z1 - 1) / 0.6)^2 / 2),
 *   w3 = 3 sigma((z1 - 1) / 0.3);
 *   U1 = ((|z| - 2) / 0.4)^2 / 2
 *        - log(exp(-((z1 - 2) / 0.6)^2 / 2) + exp(-((z1 + 2) / 0.6)^2 / 2))
 *   U2 = ((z2 - w1) / 0.4)^2 / 2
 *   U3 = -log(exp(-((z2 - w1) / 0.35)^2 / 2)
 *             + exp(-((z2 - w1 + w2) / 0.35)^2 / 2))
 *   U4 = -log(exp(-((z2 - w1) / 0.4)^2 / 2)
 *             + exp(-((z2 - w1 + w3) / 0.35)^2 / 2)).
 * U2..U4 do not decay along z1 (the paper draws them on [-4, 4]^2), so
 * they get a wall there: + ((|z1| - wall)_+ / 0.2)^2 / 2, zero inside.
 * No normaliser is known (log Z is NaN). */
static const flow_attr_spec wall_attrs[] = {
    {.name = "wall", .type = FLOW_ATTR_REAL,
     .doc = "half-width in z1 beyond which a quadratic wall (width 0.2) "
            "confines the density",
     .def_real = 4.0, .has_min = 1, .min = 0.5, .has_max = 1, .max = 100},
    {0}};

#define WALL_WIDTH 0.2

static int dim2(const flow_target_config *cfg, size_t *dim_out,
                flow_diag *diag)
{
    (void)cfg, (void)diag;
    *dim_out = 2;
    return FLOW_OK;
}

static void *u_create(const flow_host *host, int kind,
                      const flow_target_config *cfg, flow_diag *diag)
{
    target *t = new_target(host, kind, 2, diag);
    if (t)
        t->a = kind == T_U1 ? 0 : cfg->attrs[0].r;
    return t;
}

static void *u1_create(const flow_host *h, const flow_target_config *c,
                       flow_diag *d) { return u_create(h, T_U1, c, d); }
static void *u2_create(const flow_host *h, const flow_target_config *c,
                       flow_diag *d) { return u_create(h, T_U2, c, d); }
static void *u3_create(const flow_host *h, const flow_target_config *c,
                       flow_diag *d) { return u_create(h, T_U3, c, d); }
static void *u4_create(const flow_host *h, const flow_target_config *c,
                       flow_diag *d) { return u_create(h, T_U4, c, d); }

static void u_row(const target *t, const flow_real *x, double *lp,
                  double *g)
{
    double z1 = x[0], z2 = x[1], wa, l;
    double w1 = sin(M_PI * z1 / 2), dw1 = M_PI / 2 * cos(M_PI * z1 / 2);
    switch (t->kind) {
    case T_U1: {
        double r = sqrt(z1 * z1 + z2 * z2), q = (r - 2) / 0.4;
        double p = (z1 - 2) / 0.6, m = (z1 + 2) / 0.6;
        double ur = r > 1e-12 ? q / 0.4 / r : 0;   /* dU/dr / r */
        l = lse2(-p * p / 2, -m * m / 2, &wa);
        *lp = -q * q / 2 + l;
        g[0] = -ur * z1 - (wa * p + (1 - wa) * m) / 0.6;
        g[1] = -ur * z2;
        return;
    }
    case T_U2: {
        double q = (z2 - w1) / 0.4;
        *lp = -q * q / 2;
        g[0] = q / 0.4 * dw1;
        g[1] = -q / 0.4;
        break;
    }
    case T_U3: {
        double w2 = 3 * exp(-0.5 * ((z1 - 1) / 0.6) * ((z1 - 1) / 0.6));
        double dw2 = -w2 * (z1 - 1) / 0.36;
        double A = (z2 - w1) / 0.35, B = (z2 - w1 + w2) / 0.35;
        *lp = lse2(-A * A / 2, -B * B / 2, &wa);
        g[0] = -(wa * A * -dw1 + (1 - wa) * B * (dw2 - dw1)) / 0.35;
        g[1] = -(wa * A + (1 - wa) * B) / 0.35;
        break;
    }
    default: {                                   /* T_U4 */
        double s = 1 / (1 + exp(-(z1 - 1) / 0.3));
        double w3 = 3 * s, dw3 = 3 * s * (1 - s) / 0.3;
        double A = (z2 - w1) / 0.4, B = (z2 - w1 + w3) / 0.35;
        *lp = lse2(-A * A / 2, -B * B / 2, &wa);
        g[0] = -(wa * A * -dw1 / 0.4 + (1 - wa) * B * (dw3 - dw1) / 0.35);
        g[1] = -(wa * A / 0.4 + (1 - wa) * B / 0.35);
        break;
    }
    }
    {
        double over = fabs(z1) - t->a;
        if (over > 0) {
            double q = over / WALL_WIDTH;
            *lp -= q * q / 2;
            g[0] -= q / WALL_WIDTH * (z1 > 0 ? 1 : -1);
        }
    }
}

/* --- gmm ---------------------------------------------------------------
 * An isotropic Gaussian mixture without its normalising constants:
 *   p~(x) = sum_k w_k exp(-|x - mu_k|^2 / (2 s_k^2)),
 * so Z = sum_k w_k (2 pi s_k^2)^(D/2) is known in closed form.  Means are
 * drawn uniformly in [-spread, spread]^D from `seed` (splitmix64) unless
 * given as a list of K x D numbers; weights default to 1/K. */
enum { G_COMPONENTS, G_SEED, G_SPREAD, G_STD, G_MEANS, G_STDS, G_WEIGHTS };

static const flow_attr_spec gmm_attrs[] = {
    {.name = "components", .type = FLOW_ATTR_INT,
     .doc = "number of components K (ignored when means are given)",
     .def_int = 4, .has_min = 1, .min = 1, .has_max = 1, .max = 1024},
    {.name = "seed", .type = FLOW_ATTR_INT, .doc = "seed of the random means",
     .def_int = 1, .has_min = 1, .min = 0},
    {.name = "spread", .type = FLOW_ATTR_REAL,
     .doc = "random means are uniform in [-spread, spread]^D",
     .def_real = 2.0, .has_min = 1, .min = 0, .has_max = 1, .max = 1e3},
    {.name = "std", .type = FLOW_ATTR_REAL,
     .doc = "standard deviation of every component (unless stds is given)",
     .def_real = 1.0, .has_min = 1, .min = 1e-3, .has_max = 1, .max = 1e3},
    {.name = "means", .type = FLOW_ATTR_REAL_LIST,
     .doc = "explicit means, K x D numbers row by row", .def_str = "[]"},
    {.name = "stds", .type = FLOW_ATTR_REAL_LIST,
     .doc = "explicit standard deviations, K numbers", .def_str = "[]",
     .has_min = 1, .min = 1e-3},
    {.name = "weights", .type = FLOW_ATTR_REAL_LIST,
     .doc = "unnormalised positive weights, K numbers (default 1/K)",
     .def_str = "[]", .has_min = 1, .min = 1e-300},
    {0}};

/* K from the attributes (explicit means win); 0 when inconsistent. */
static size_t gmm_k(const flow_attr_value *a, size_t dim, flow_diag *diag)
{
    size_t k = (size_t)a[G_COMPONENTS].i;
    char msg[160];
    if (a[G_MEANS].n) {
        if (a[G_MEANS].n % dim) {
            snprintf(msg, sizeof msg, "means has %zu numbers, not a "
                     "multiple of the dimension %zu", a[G_MEANS].n, dim);
            set_diag(diag, G_MEANS, msg, "give K x D numbers, row by row");
            return 0;
        }
        k = a[G_MEANS].n / dim;
    }
    if (a[G_STDS].n && a[G_STDS].n != k) {
        snprintf(msg, sizeof msg, "stds has %zu numbers for %zu components",
                 a[G_STDS].n, k);
        set_diag(diag, G_STDS, msg, NULL);
        return 0;
    }
    if (a[G_WEIGHTS].n && a[G_WEIGHTS].n != k) {
        snprintf(msg, sizeof msg, "weights has %zu numbers for %zu "
                 "components", a[G_WEIGHTS].n, k);
        set_diag(diag, G_WEIGHTS, msg, NULL);
        return 0;
    }
    return k;
}

static int gmm_describe(const flow_target_config *cfg, size_t *dim_out,
                        flow_diag *diag)
{
    *dim_out = 0;
    return gmm_k(cfg->attrs, cfg->dim, diag) ? FLOW_OK : FLOW_ERR_INVAL;
}

/* splitmix64 (Steele, Lea & Flood 2014) as a uniform in [0, 1). */
static double splitmix_uniform(uint64_t *s)
{
    return (double)(common_splitmix64(s) >> 11) * 0x1.0p-53;
}

static void *gmm_create(const flow_host *host, const flow_target_config *cfg,
                        flow_diag *diag)
{
    const flow_attr_value *a = cfg->attrs;
    size_t d = cfg->dim, k = gmm_k(a, d, diag);
    target *t;
    uint64_t s = (uint64_t)a[G_SEED].i;
    double lz = -INFINITY;
    if (!k || !(t = new_target(host, T_GMM, d, diag)))
        return NULL;
    t->k = k;
    t->means = host->calloc(k * d, sizeof *t->means);
    t->stds = host->calloc(k, sizeof *t->stds);
    t->logw = host->calloc(k, sizeof *t->logw);
    if (!t->means || !t->stds || !t->logw) {
        target_destroy(t);
        set_diag(diag, -1, "out of memory", NULL);
        return NULL;
    }
    for (size_t j = 0; j < k * d; j++)
        t->means[j] = a[G_MEANS].n ? a[G_MEANS].rlist[j]
                    : a[G_SPREAD].r * (2 * splitmix_uniform(&s) - 1);
    for (size_t j = 0; j < k; j++) {
        double m;
        t->stds[j] = a[G_STDS].n ? a[G_STDS].rlist[j] : a[G_STD].r;
        t->logw[j] = a[G_WEIGHTS].n ? log(a[G_WEIGHTS].rlist[j])
                   : -log((double)k);
        /* log Z = logsumexp_k(log w_k + (D / 2) log(2 pi s_k^2)) */
        m = t->logw[j] + 0.5 * (double)d * (LOG_2PI
                                            + 2 * log(t->stds[j]));
        lz = lz > m ? lz + log1p(exp(m - lz)) : m + log1p(exp(lz - m));
    }
    t->log_z = lz;
    return t;
}

/* log p~ and its gradient: the responsibilities r_k weight the
 * components' gradients -(x - mu_k) / s_k^2. */
static void gmm_row(const target *t, const flow_real *x, double *lp,
                    double *g, double *tmp)
{
    size_t d = t->dim;
    double m = -INFINITY, sum = 0;
    for (size_t k = 0; k < t->k; k++) {
        double q = 0, s2 = t->stds[k] * t->stds[k];
        for (size_t i = 0; i < d; i++) {
            double e = x[i] - t->means[k * d + i];
            q += e * e;
        }
        tmp[k] = t->logw[k] - q / (2 * s2);
        if (tmp[k] > m)
            m = tmp[k];
    }
    for (size_t k = 0; k < t->k; k++)
        sum += (tmp[k] = exp(tmp[k] - m));
    *lp = m + log(sum);
    if (!g)
        return;
    for (size_t i = 0; i < d; i++)
        g[i] = 0;
    for (size_t k = 0; k < t->k; k++) {
        double r = tmp[k] / sum, s2 = t->stds[k] * t->stds[k];
        for (size_t i = 0; i < d; i++)
            g[i] -= r * (x[i] - t->means[k * d + i]) / s2;
    }
}

/* --- evaluation --------------------------------------------------------- */

#define MAX_STACK_DIM 256

static int target_log_density(void *self, const flow_call *c,
                              const flow_real *x, flow_real *logp,
                              flow_real *grad)
{
    const target *t = self;
    size_t d = t->dim;
    double gs[MAX_STACK_DIM], *g = gs, *tmp = NULL;
    int rc = FLOW_OK;
    if (c->dim != d)
        return c->host->error(c, "target expects %zu dimensions, got %zu",
                              d, c->dim);
    if (d > MAX_STACK_DIM && !(g = c->host->alloc(d * sizeof *g)))
        return c->host->error(c, "out of memory");
    if (t->kind == T_GMM && !(tmp = c->host->alloc(t->k * sizeof *tmp))) {
        rc = c->host->error(c, "out of memory");
        goto out;
    }
    for (size_t r = 0; r < c->n; r++) {
        const flow_real *xr = x + r * d;
        double lp;
        switch (t->kind) {
        case T_BANANA:
            banana_row(t, xr, &lp, g);
            break;
        case T_FUNNEL:
            funnel_row(t, xr, &lp, g);
            break;
        case T_GMM:
            gmm_row(t, xr, &lp, g, tmp);
            break;
        default:
            u_row(t, xr, &lp, g);
        }
        logp[r] = (flow_real)lp;
        if (grad)
            for (size_t i = 0; i < d; i++)
                grad[r * d + i] = (flow_real)g[i];
    }
out:
    if (g != gs)
        c->host->free(g);
    c->host->free(tmp);
    return rc;
}

/* --- descriptors -------------------------------------------------------- */

#define TARGET(NAME, SUMMARY, ATTRS, DESCRIBE, CREATE) \
    static const flow_target_type NAME##_type = { \
        .struct_size = sizeof(flow_target_type), .name = #NAME, \
        .summary = SUMMARY, .attrs = ATTRS, .describe = DESCRIBE, \
        .create = CREATE, .destroy = target_destroy, \
        .log_density = target_log_density, .log_normalizer = target_log_z}

TARGET(banana, "twisted Gaussian (Haario et al. 1999), 2-D, known log Z",
       banana_attrs, banana_describe, banana_create);
TARGET(funnel, "Neal's funnel (Neal 2003), D >= 2, known log Z",
       funnel_attrs, any_dim2, funnel_create);
TARGET(u1, "energy U1 of Rezende & Mohamed 2015 (ring), 2-D", NULL, dim2,
       u1_create);
TARGET(u2, "energy U2 of Rezende & Mohamed 2015 (wave), 2-D", wall_attrs,
       dim2, u2_create);
TARGET(u3, "energy U3 of Rezende & Mohamed 2015 (split wave), 2-D",
       wall_attrs, dim2, u3_create);
TARGET(u4, "energy U4 of Rezende & Mohamed 2015 (step wave), 2-D",
       wall_attrs, dim2, u4_create);
TARGET(gmm, "isotropic Gaussian mixture in D dimensions, known log Z",
       gmm_attrs, gmm_describe, gmm_create);

FLOW_PLUGIN_TARGETS("targets", "1.0",
                    "target densities for variational fits (flowkit fit)",
                    &banana_type, &funnel_type, &u1_type, &u2_type, &u3_type,
                    &u4_type, &gmm_type);
