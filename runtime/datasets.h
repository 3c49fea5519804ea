/* datasets.h - internal: the built-in toy data sets (the 2-D densities of
 * FFJORD's toy experiments, plus a D-dimensional Gaussian mixture). */
#ifndef FLOW_RUNTIME_DATASETS_H
#define FLOW_RUNTIME_DATASETS_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow.h"

/* The public parameter struct (flow.h); `with_logprob` is only used by
 * flow_data_generate. */
typedef flow_dataset_params datasets_params;

/* Names of the data sets, NULL-terminated (static). */
const char *const *datasets_names(void);
/* 1 when the data set's true density is known (8gaussians, checkerboard,
 * gmm). */
int datasets_has_density(const char *name);
/* Point dimension of the data set (dim for gmm, dim^2 for shapes, else
 * 2); 0 if unknown. */
size_t datasets_dim(const datasets_params *p);

/* Draws p->n samples.  *out is new (caller frees), with columns x0.. (and
 * label0..label7 as context with p->labels).  When logp is not NULL,
 * *logp receives a new array (caller frees) of the true log-density of
 * each returned (rounded) point; an error for data sets without one.
 * Deterministic for a seed on one machine and libm. */
int datasets_generate(flow_ctx *ctx, const datasets_params *p,
                      flow_data **out, flow_real **logp);

/* True log-density (nats) of n points x (n x dim, row-major) into out. */
int datasets_logprob(flow_ctx *ctx, const datasets_params *p,
                     const flow_real *x, size_t n, double *out);

#endif
