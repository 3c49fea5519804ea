/* rsum.h - internal: reproducible sums of per-block vectors over the
 * processes of a communicator (the same bits for any split of the blocks). */
#ifndef FLOW_RUNTIME_RSUM_H
#define FLOW_RUNTIME_RSUM_H

#include <stddef.h>

#include "flow/flow.h"

/* Values that share one grid: the gradient's parameters in groups of
 * RSUM_CHUNK (docs/distributed.md, "Precision"). */
#define RSUM_CHUNK 64

/* A sum of vectors of n_main + n_extra doubles, one vector per block of
 * rows.  The first n_main values are graded in chunks of RSUM_CHUNK, each
 * extra value on its own.  Use: rsum_begin; rsum_see for every local
 * block (the maxima); rsum_agree (allreduce MAX); rsum_add for every
 * local block (the rounded values); rsum_finish (allreduce SUM), and the
 * result is in sum. */
typedef struct rsum {
    size_t n_main, n_extra, n_groups;
    double *max;                /* per group, then the failed ranks */
    double *sum;                /* n_main + n_extra */
    double *sigma;              /* per group: 1.5 * 2^E, or 0: all zero */
    int finite;                 /* after rsum_agree: every value finite */
} rsum;

int rsum_init(rsum *r, size_t n_main, size_t n_extra);
void rsum_free(rsum *r);
void rsum_begin(rsum *r);
/* One local block's values: v[0..n_main) (stride 1, flow_real) and
 * extra[0..n_extra). */
void rsum_see(rsum *r, const flow_real *v, const double *extra);
/* The maxima of all processes' blocks; n_blocks: the blocks of all
 * processes together; failed: this process could not compute its
 * blocks.  *first_failed: the lowest rank that failed (then nothing more
 * is to be called), or -1.  FLOW_OK or the communicator's error. */
int rsum_agree(rsum *r, flow_comm *comm, size_t n_blocks, int failed,
               int *first_failed);
void rsum_add(rsum *r, const flow_real *v, const double *extra);
int rsum_finish(rsum *r, flow_comm *comm);
/* rsum_see and rsum_add in parts: the main values' groups [g0, g1)
 * (disjoint ranges may run on different threads at once), and the extra
 * values; the same results as the whole calls. */
void rsum_see_groups(rsum *r, const flow_real *v, size_t g0, size_t g1);
void rsum_see_extra(rsum *r, const double *extra);
void rsum_add_groups(rsum *r, const flow_real *v, size_t g0, size_t g1);
void rsum_add_extra(rsum *r, const double *extra);

#endif
