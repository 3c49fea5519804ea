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

#endif
