/* model.h - internal: what training, fits and checkpoints use of a model
 * beyond flow.h (the model's own files share runtime/model_impl.h). */
#ifndef FLOW_RUNTIME_MODEL_H
#define FLOW_RUNTIME_MODEL_H

#include "flow/flow.h"

/* flow_model_set_threads' limit */
#define MODEL_MAX_THREADS 64

flow_ctx *model_ctx(const flow_model *m);
/* 1 when a layer draws random numbers in its passes
 * (FLOW_LAYER_STOCHASTIC: dequantize's noise, Hutchinson probes) */
int model_has_stochastic(const flow_model *m);

/* Runs fn(arg, t, lo, hi) for the chunks t = 0..k-1 of [0, n), k the
 * model's thread count (or fewer for small n), on its thread pool; the
 * split depends only on n and k, in whole 64-byte lines of flow_reals. */
void model_parallel_for(flow_model *m, size_t n,
                        void (*fn)(void *arg, size_t t, size_t lo, size_t hi),
                        void *arg);

/* A named part of the flat parameter and buffer vectors: one per layer or
 * exit, and the output's base last (checkpoint tensors, fit checks). */
typedef struct model_slice_info {
    const char *name;           /* layer label, exit name or "base/output" */
    int is_exit;
    size_t p_off, n_params;     /* in the flat parameter vector */
    size_t b_off, n_buffers;    /* in the flat buffer vector */
} model_slice_info;

size_t model_slice_count(const flow_model *m);
/* A parameter-shaped vector of a checkpoint of format `format` into this
 * host's layout, in place (flow_layer_type.upgrade_params; model.c). */
int model_upgrade_params(flow_model *m, uint32_t format, flow_real *vec);
int model_slice(const flow_model *m, size_t i, model_slice_info *s);

/* Backward of the sampling direction whose output gradients are decided
 * after the inverse ran: mid(arg, n, x, logdet, dx, dlogdet) sees x =
 * f^-1(z) and logdet = log|det df^-1/dz| and writes dL/dx (n x dim) and
 * dL/dlogdet (n); then as flow_model_inverse_grad. */
typedef int (*model_mid_fn)(void *arg, size_t n, const flow_real *x,
                            const flow_real *logdet, flow_real *dx,
                            flow_real *dlogdet);
int model_inverse_grad_mid(flow_model *m, size_t n, const flow_real *z,
                           const flow_real *c, model_mid_fn mid, void *arg,
                           flow_real *grad, flow_real *dz);

/* flow_model_loglik_grad with each row's log-density weighted by
 * `weight` (flow_model_loglik_grad: 1/n) and *sum_logp the rows' plain
 * sum: a block of a larger batch gives its share of the batch mean's
 * gradient (train.c, the reproducible sum). */
int model_loglik_grad_w(flow_model *m, size_t n, const flow_real *x,
                        const flow_real *c, double weight, double *sum_logp,
                        flow_real *grad);

#endif
