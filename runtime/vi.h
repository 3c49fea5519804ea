/* vi.h - internal: the variational fit's gradient as the training loop
 * calls it (runtime/vi.c).  Not installed. */
#ifndef FLOW_RUNTIME_VI_H
#define FLOW_RUNTIME_VI_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow.h"

/* flow_model_elbo_grad with log p~ scaled by beta (annealing, beta_t =
 * min(1, 0.01 + t/N): Rezende & Mohamed 2015, sec. 6.2; docs/vi.md) */
int vi_elbo_grad(flow_model *m, flow_target *t, size_t n, double beta,
                 double *elbo, flow_real *grad);

/* The random stream of block k of a step whose key is `key`, as the 6
 * words of flow_model_set_rng: a function of (key, k) alone, so that a
 * block draws the same samples whichever process draws it and whatever
 * blocks that process drew before (docs/distributed.md, "fit under
 * MPI"). */
void vi_block_stream(uint64_t out[6], uint64_t key, size_t k);

/* Block k of a variational step's batch of `total` samples: the model's
 * stream set to vi_block_stream(key, k) (and left where the block's
 * draws leave it), n samples drawn from it; *sum = the sum of their
 * terms beta log p~(x) - log q(x), grad = the gradient of their share of
 * the batch mean (each sample weighted 1 / total). */
int vi_elbo_block(flow_model *m, flow_target *t, uint64_t key, size_t k,
                  size_t n, size_t total, double beta, double *sum,
                  flow_real *grad);

/* The n samples of this process's blocks [first, first + ceil(n / rows))
 * of a variational step's batch of `total` in blocks of `rows` (on comm:
 * as model_inverse_grad_blocks splits them; NULL: one process, n =
 * total), in one block pass: block k draws its samples from the stream
 * of (key, k), sums[k - first] = the sum of their terms beta log p~(x) -
 * log q(x), and bgrad + (k - first) n_params the gradient of their share
 * of the batch mean before the layers' finish_grad (model_blocks_finish
 * maps the slots' sum).  Whatever the thread count, block k's sum is
 * vi_elbo_block's on block k (one thread) and its slot, mapped by
 * model_blocks_finish, that call's gradient. */
int vi_elbo_blocks(flow_model *m, flow_target *t, uint64_t key,
                   size_t first, size_t n, size_t rows, flow_comm *comm,
                   size_t total, double beta, double *sums,
                   flow_real *bgrad);

#endif
