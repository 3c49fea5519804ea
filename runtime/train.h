/* train.h - internal: the trainer's switches for tests, beyond flow.h
 * (train.c). */
#ifndef FLOW_RUNTIME_TRAIN_H
#define FLOW_RUNTIME_TRAIN_H

#include "flow/flow.h"

/* full = 1: the trainer's passes over the parameters (the blocks' sum,
 * the norm, clipping, Adam) and the block pass's clearing of the slots
 * run over every parameter instead of the gradient's support
 * (model_support); the same bits either way, which tests check. */
void train_set_full_passes(flow_trainer *t, int full);

/* One Adam update of np parameters (runtime/train.c adam_loop, Kingma &
 * Ba 2015, Algorithm 1) with the 16-lane kernel (wide = 1, where
 * train_adam_wide() says it runs) or the portable loop (0): the same
 * bits, which tests check on special values. */
void train_adam_kernel(int wide, size_t np, flow_real *p,
                       const flow_real *grad, flow_real *am, flow_real *av,
                       double b1, double b2, double wd, double step,
                       double inv_c2, double eps);
/* 1 when the 16-lane Adam runs on this CPU (float build, AVX-512F) */
int train_adam_wide(void);

#endif
