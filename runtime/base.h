/* base.h - internal: the base distributions p_base(z) of a flow (normal,
 * diagonal normal, logistic, mixture): log-density, gradients, sampling. */
#ifndef FLOW_RUNTIME_BASE_H
#define FLOW_RUNTIME_BASE_H

#include <stddef.h>

#include "flow/flow_plugin.h"

#define BASE_MAX_COMPONENTS 256

typedef enum base_kind {
    BASE_NORMAL = 1,       /* N(0, I), no parameters                      */
    BASE_DIAG_NORMAL = 2,  /* N(mu, diag sigma^2): params mu[D], log sigma[D] */
    BASE_LOGISTIC = 3,     /* standard logistic per dimension, no params   */
    BASE_GMM = 4           /* sum_k pi_k N(mu_k, diag sigma_k^2): params
                              logits[K], mu[K x D], log sigma[K x D]        */
} base_kind;

typedef struct base_dist {
    base_kind kind;
    size_t dim;            /* D */
    size_t comps;          /* K (GMM), else 0 */
} base_dist;

/* Fills *b; FLOW_ERR_INVAL for an unknown kind, dim 0, or a GMM with 0 or
 * more than BASE_MAX_COMPONENTS components. */
int base_make(base_dist *b, base_kind kind, size_t dim, size_t comps);
/* Learnable parameters (layout above, row-major). */
size_t base_params(const base_dist *b);
/* Init: diagonal normal = standard normal (zeros); GMM: equal weights,
 * unit scales, means drawn N(0, 1) from rng (NULL: a fixed stream). */
void base_init(const base_dist *b, flow_real *params, flow_rng *rng);
/* logp[r] = log p(x_r) for n rows of D, in nats. */
int base_log_prob(const base_dist *b, const flow_real *params, size_t n,
                  const flow_real *x, flow_real *logp);
/* Given dL/dlogp per row (NULL = all ones): dx = dL/dx written (may be
 * NULL), dparams += dL/dparams (may be NULL). */
int base_grad(const base_dist *b, const flow_real *params, size_t n,
              const flow_real *x, const flow_real *dlogp, flow_real *dx,
              flow_real *dparams);
/* n samples into x (n x D) from rng; logp (may be NULL) their log-density
 * under the base itself.  temp (> 0; 1 = the base) scales each draw's
 * spread about its center: the standard noise (normal, or logistic) is
 * multiplied by temp before the location and scale (diagonal normal: mu +
 * sigma temp eps; mixture: the chosen component's, weights unchanged), so
 * every standard deviation is multiplied by temp (Glow's temperature,
 * Kingma & Dhariwal 2018, sec. 5).  temp = 1 gives the same bits. */
int base_sample(const base_dist *b, const flow_real *params, size_t n,
                double temp, flow_rng *rng, flow_real *x, flow_real *logp);

#endif
