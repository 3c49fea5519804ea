/* base.c - base distributions: closed-form log-densities (computed in
 * double), their gradients, and exact samplers over the runtime's RNG. */
#include <math.h>
#include <string.h>

#include "base.h"
#include "rng.h"

#define LOG_2PI 1.8378770664093454836

int base_make(base_dist *b, base_kind kind, size_t dim, size_t comps)
{
    if (!b || dim == 0)
        return FLOW_ERR_INVAL;
    switch (kind) {
    case BASE_NORMAL:
    case BASE_DIAG_NORMAL:
    case BASE_LOGISTIC:
        comps = 0;
        break;
    case BASE_GMM:
        if (comps == 0 || comps > BASE_MAX_COMPONENTS ||
            dim > ((size_t)-1) / 4 / comps)
            return FLOW_ERR_INVAL;
        break;
    default:
        return FLOW_ERR_INVAL;
    }
    b->kind = kind;
    b->dim = dim;
    b->comps = comps;
    return FLOW_OK;
}

size_t base_params(const base_dist *b)
{
    switch (b->kind) {
    case BASE_DIAG_NORMAL:
        return 2 * b->dim;
    case BASE_GMM:
        return b->comps * (1 + 2 * b->dim);
    default:
        return 0;
    }
}

void base_init(const base_dist *b, flow_real *params, flow_rng *rng)
{
    flow_rng local;
    size_t p = base_params(b);
    if (!params)
        return;
    memset(params, 0, p * sizeof *params);
    if (b->kind != BASE_GMM)
        return;
    if (!rng) {
        rng_seed(&local, 0x62617365ull);
        rng = &local;
    }
    rng_normal(rng, params + b->comps, b->comps * b->dim);
}

/* log softmax of the K mixture logits (log pi_k). */
static void log_weights(const base_dist *b, const flow_real *params,
                        double *lw)
{
    double mx = params[0], s = 0;
    for (size_t k = 1; k < b->comps; k++)
        mx = params[k] > mx ? params[k] : mx;
    for (size_t k = 0; k < b->comps; k++)
        s += exp(params[k] - mx);
    for (size_t k = 0; k < b->comps; k++)
        lw[k] = params[k] - mx - log(s);
}

/* log pi_k + log N(x; mu_k, sigma_k^2) for every k of one row; returns
 * their log-sum-exp, the row's log-density. */
static double gmm_row(const base_dist *b, const flow_real *params,
                      const double *lw, const flow_real *x, double *lk)
{
    size_t d = b->dim, kk = b->comps;
    const flow_real *mu = params + kk, *ls = params + kk + kk * d;
    double mx = -INFINITY, s = 0;
    for (size_t k = 0; k < kk; k++) {
        double acc = lw[k];
        for (size_t j = 0; j < d; j++) {
            double z = ((double)x[j] - mu[k * d + j]) *
                       exp(-(double)ls[k * d + j]);
            acc += -0.5 * z * z - ls[k * d + j] - 0.5 * LOG_2PI;
        }
        lk[k] = acc;
        mx = acc > mx ? acc : mx;
    }
    if (!isfinite(mx))
        return mx;
    for (size_t k = 0; k < kk; k++)
        s += exp(lk[k] - mx);
    return mx + log(s);
}

/* log density of one row (lw, lk: GMM scratch) */
static double row_logp(const base_dist *b, const flow_real *params,
                       const double *lw, const flow_real *x, double *lk)
{
    size_t d = b->dim;
    double acc = 0;
    switch (b->kind) {
    case BASE_NORMAL:
        for (size_t j = 0; j < d; j++)
            acc += -0.5 * (double)x[j] * x[j];
        return acc - 0.5 * (double)d * LOG_2PI;
    case BASE_DIAG_NORMAL:
        for (size_t j = 0; j < d; j++) {
            double z = ((double)x[j] - params[j]) * exp(-(double)params[d + j]);
            acc += -0.5 * z * z - params[d + j];
        }
        return acc - 0.5 * (double)d * LOG_2PI;
    case BASE_LOGISTIC:
        /* log p(x) = -x - 2 log(1 + e^-x), written with |x| for range */
        for (size_t j = 0; j < d; j++) {
            double a = fabs((double)x[j]);
            acc += -a - 2 * log1p(exp(-a));
        }
        return acc;
    case BASE_GMM:
        return gmm_row(b, params, lw, x, lk);
    }
    return NAN;
}

static int check(const base_dist *b, const flow_real *params, size_t n,
                 const flow_real *x)
{
    if (!b || b->dim == 0 || (n && !x) || (base_params(b) && !params))
        return FLOW_ERR_INVAL;
    if (b->kind < BASE_NORMAL || b->kind > BASE_GMM)
        return FLOW_ERR_INVAL;
    return FLOW_OK;
}

int base_log_prob(const base_dist *b, const flow_real *params, size_t n,
                  const flow_real *x, flow_real *logp)
{
    double lw[BASE_MAX_COMPONENTS], lk[BASE_MAX_COMPONENTS];
    if (check(b, params, n, x) != FLOW_OK || (n && !logp))
        return FLOW_ERR_INVAL;
    if (b->kind == BASE_GMM)
        log_weights(b, params, lw);
    for (size_t r = 0; r < n; r++)
        logp[r] = (flow_real)row_logp(b, params, lw, x + r * b->dim, lk);
    return FLOW_OK;
}

int base_grad(const base_dist *b, const flow_real *params, size_t n,
              const flow_real *x, const flow_real *dlogp, flow_real *dx,
              flow_real *dparams)
{
    double lw[BASE_MAX_COMPONENTS], lk[BASE_MAX_COMPONENTS];
    size_t d, kk;
    if (check(b, params, n, x) != FLOW_OK)
        return FLOW_ERR_INVAL;
    d = b->dim;
    kk = b->comps;
    if (b->kind == BASE_GMM)
        log_weights(b, params, lw);
    for (size_t r = 0; r < n; r++) {
        const flow_real *xr = x + r * d;
        flow_real *gx = dx ? dx + r * d : NULL;
        double w = dlogp ? (double)dlogp[r] : 1.0, lse;
        switch (b->kind) {
        case BASE_NORMAL:
            for (size_t j = 0; j < d && gx; j++)
                gx[j] = (flow_real)(-w * xr[j]);
            break;
        case BASE_DIAG_NORMAL:
            /* d/dx = -(x - mu)/s^2, d/dmu = (x - mu)/s^2, d/dlog s = z^2 - 1 */
            for (size_t j = 0; j < d; j++) {
                double is = exp(-(double)params[d + j]);
                double z = ((double)xr[j] - params[j]) * is;
                if (gx)
                    gx[j] = (flow_real)(-w * z * is);
                if (dparams) {
                    dparams[j] += (flow_real)(w * z * is);
                    dparams[d + j] += (flow_real)(w * (z * z - 1));
                }
            }
            break;
        case BASE_LOGISTIC:
            /* d/dx log p = -tanh(x / 2) */
            for (size_t j = 0; j < d && gx; j++)
                gx[j] = (flow_real)(-w * tanh(0.5 * xr[j]));
            break;
        case BASE_GMM:
            /* responsibilities r_k = exp(lk - lse); d/dlogit_k = r_k -
             * pi_k, d/dmu = r_k (x - mu)/s^2, d/dlog s = r_k (z^2 - 1) */
            lse = gmm_row(b, params, lw, xr, lk);
            if (gx)
                memset(gx, 0, d * sizeof *gx);
            for (size_t k = 0; k < kk; k++) {
                double resp = isfinite(lse) ? exp(lk[k] - lse) : 0;
                const flow_real *mu = params + kk + k * d;
                const flow_real *ls = params + kk + kk * d + k * d;
                if (dparams)
                    dparams[k] += (flow_real)(w * (resp - exp(lw[k])));
                for (size_t j = 0; j < d; j++) {
                    double is = exp(-(double)ls[j]);
                    double z = ((double)xr[j] - mu[j]) * is;
                    if (gx)
                        gx[j] = (flow_real)(gx[j] - w * resp * z * is);
                    if (dparams) {
                        dparams[kk + k * d + j] +=
                            (flow_real)(w * resp * z * is);
                        dparams[kk + kk * d + k * d + j] +=
                            (flow_real)(w * resp * (z * z - 1));
                    }
                }
            }
            break;
        }
    }
    return FLOW_OK;
}

int base_sample(const base_dist *b, const flow_real *params, size_t n,
                double temp, flow_rng *rng, flow_real *x, flow_real *logp)
{
    double lw[BASE_MAX_COMPONENTS];
    size_t d;
    if (check(b, params, n, x) != FLOW_OK || !rng
        || !(temp > 0 && isfinite(temp)))
        return FLOW_ERR_INVAL;
    d = b->dim;
    if (b->kind == BASE_GMM)
        log_weights(b, params, lw);
    for (size_t r = 0; r < n; r++) {
        flow_real *xr = x + r * d;
        size_t k = 0;
        if (b->kind == BASE_GMM) {   /* component by inversion of the CDF */
            double u = rng_uniform(rng), c = 0;
            for (k = 0; k + 1 < b->comps; k++) {
                c += exp(lw[k]);
                if (u < c)
                    break;
            }
        }
        for (size_t j = 0; j < d; j++) {
            double v;
            if (b->kind == BASE_LOGISTIC) {
                double u = rng_uniform(rng);   /* inverse CDF: logit(u) */
                v = log(u) - log1p(-u);
            } else {
                v = rng_normal1(rng);
            }
            if (temp != 1)
                v *= temp;
            if (b->kind == BASE_DIAG_NORMAL)
                v = params[j] + exp((double)params[d + j]) * v;
            else if (b->kind == BASE_GMM) {
                const flow_real *mu = params + b->comps + k * d;
                const flow_real *ls = mu + b->comps * d;
                v = mu[j] + exp((double)ls[j]) * v;
            }
            xr[j] = (flow_real)v;
        }
    }
    return logp ? base_log_prob(b, params, n, x, logp) : FLOW_OK;
}
