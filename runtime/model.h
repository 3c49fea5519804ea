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
/* 1 when a layer needs the whole batch in one call
 * (FLOW_LAYER_WHOLE_BATCH: batchnorm's statistics) */
int model_has_whole_batch(const flow_model *m);

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

/* The support of the gradient: the parameters whose gradient can be
 * non-zero, as *n_runs runs (runs[2i] the offset in the flat vector,
 * runs[2i + 1] the length), increasing, disjoint and merged where
 * adjacent; *n_live parameters in all.  Every other parameter's
 * gradient is 0 at every step (the layers' grad_support, flow_plugin.h),
 * so the trainer's passes skip them.  live_pre[r]: the parameters before
 * run r (live_pre[*n_runs] = *n_live), to split the live ones over
 * threads.  Built when the model is finished. */
const size_t *model_support(const flow_model *m, size_t *n_runs,
                            size_t *n_live, const size_t **live_pre);
/* The first run holding live parameter j (j < n_live): the last r with
 * live_pre[r] <= j. */
size_t model_support_run(const size_t *live_pre, size_t n_runs, size_t j);
/* on = 1: the caller's block-pass slots (model_loglik_grad_blocks,
 * model_inverse_grad_blocks) hold 0 outside the support, from their
 * allocation on, so each layer clears only its support runs of a slot
 * before its backward writes them; 0 (the default): whole ranges, the
 * slots may hold anything. */
void model_set_live_slots(flow_model *m, int on);

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

/* The block pass: a batch of `batch` rows cut into nb = ceil(batch /
 * rows) blocks of `rows` (the last one short), of which this process
 * holds blocks [r nb / N, (r + 1) nb / N) (r, N: its rank and the size of
 * comm; comm NULL: one process, batch = n, all blocks), their n rows one
 * after the other in x.  One forward and backward pass, layer by layer,
 * the model's threads each taking whole blocks.  Local block k's
 * gradient of its rows' log-densities, each weighted by `weight`, goes
 * to bgrad + k * n_params (every slot overwritten; outside the support
 * left as it is under model_set_live_slots) as the layers'
 * backward passes leave it, before their finish_grad (which maps the sum
 * of the slots once: model_blocks_finish), and the plain sum of its
 * rows' log-densities (in row order, in double) to sum_logp[k]: each
 * block's bits are those of model_loglik_grad_w on its rows alone (its
 * gradient mapped by model_blocks_finish), whatever the thread count,
 * for models without whole-batch layers.
 * Those (batchnorm) see the batch's statistics over every process's
 * blocks (flow_call.block_sum: a collective on comm, so every process
 * calls this once per step, one with no block too, n = 0), the same bits
 * for any N.  streams (6 words a block, as flow_model_set_rng takes
 * them): local block k's layers draw from stream k alone; required when
 * a layer draws (model_has_stochastic), else may be NULL.  The model's
 * own stream is not used. */
int model_loglik_grad_blocks(flow_model *m, size_t n, const flow_real *x,
                             const flow_real *c, size_t rows, double weight,
                             const uint64_t *streams, flow_comm *comm,
                             size_t batch, double *sum_logp,
                             flow_real *bgrad);
/* The sampling direction's block pass: as model_loglik_grad_blocks (the
 * same blocks of a batch of `batch` rows, their split over the
 * processes of comm, threads taking whole blocks, gradient slots in
 * bgrad before finish_grad), for an unconditional flow whose loss is
 * decided on the samples.  Block k draws its latents (the exits' columns,
 * then the output's) from its stream (streams + 6 k, required) into its
 * rows of z (n x dim), their log p_base into lpb (n); then one inverse
 * pass over all the blocks, in which the block's layers draw from its
 * stream where its latents left it; then mid(arg, k, r0, nr, x, logdet,
 * dx, dlogdet) for each block in block order, on its nr rows from row
 * r0: x = f^-1(z) and logdet = log|det df^-1/dz| in, dL/dx and
 * dL/dlogdet out; then one backward pass.  Block k's bits are those of a
 * model_inverse_grad_mid over its rows alone with the model's stream set
 * to stream k (its gradient mapped by model_blocks_finish), whatever the
 * thread count.  A whole-batch layer gets one plain call on this
 * process's rows (no block sums in this direction).  The model's own
 * stream is not used. */
typedef int (*model_block_mid_fn)(void *arg, size_t k, size_t r0, size_t n,
                                  const flow_real *x,
                                  const flow_real *logdet, flow_real *dx,
                                  flow_real *dlogdet);
int model_inverse_grad_blocks(flow_model *m, size_t n, size_t rows,
                              const uint64_t *streams, flow_comm *comm,
                              size_t batch, flow_real *z, flow_real *lpb,
                              model_block_mid_fn mid, void *arg,
                              flow_real *bgrad);
/* The layers' finish_grad (the MADE's gradient from degree order to the
 * parameters', an LU layer's dW to its factors) on a sum of the block
 * pass's slots, for a batch of n rows: once per step, as the plain pass
 * applies it to the sum of its threads' gradients.  After
 * model_loglik_grad_blocks or model_inverse_grad_blocks, with the
 * parameters it ran on. */
int model_blocks_finish(flow_model *m, size_t n, flow_real *grad);

#endif
