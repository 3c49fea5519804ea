/* vi.h - internal: the variational fit's gradient as the training loop
 * calls it (runtime/vi.c).  Not installed. */
#ifndef FLOW_RUNTIME_VI_H
#define FLOW_RUNTIME_VI_H

#include "flow/flow.h"

/* flow_model_elbo_grad with log p~ scaled by beta (annealing, beta_t =
 * min(1, 0.01 + t/N): Rezende & Mohamed 2015, sec. 6.2; docs/vi.md) */
int vi_elbo_grad(flow_model *m, flow_target *t, size_t n, double beta,
                 double *elbo, flow_real *grad);

#endif
