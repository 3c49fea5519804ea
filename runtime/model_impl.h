/* model_impl.h - internal: the model's structures (nodes, per-batch
 * storage, threads, jobs) shared by model.c, executor.c and gradient.c. */
#ifndef FLOW_RUNTIME_MODEL_IMPL_H
#define FLOW_RUNTIME_MODEL_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "base.h"
#include "flow/flow.h"
#include "model.h"
#include "pool.h"
#include "rng.h"

#define MAX_THREADS MODEL_MAX_THREADS

typedef enum node_kind { NODE_LAYER, NODE_EXIT } node_kind;

typedef struct node {
    node_kind kind;
    size_t in_dim;              /* width of the state entering the node */
    size_t out_dim;
    /* layer */
    const flow_layer_type *type;
    const char *file;           /* plugin file, owned by ctx */
    char *spec;                 /* spec file of the statement or NULL */
    char *label;
    flow_attr_value *attrs;     /* deep copy, in m->arena */
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t *dep_vec;
    int given;
    void *self;
    int host_made;              /* its create or init made a host MADE */
    size_t p_off, b_off;
    size_t *sup, n_sup;         /* layer: the parameters whose gradient can
                                   be non-zero (grad_support), n_sup runs
                                   (offset in the flat vector, length) */
    void *ws[MAX_THREADS];      /* per thread: what forward leaves for the
                                   matching backward */
    size_t ws_bytes[MAX_THREADS];
    void **bws;                 /* the block pass: per block, n_bws */
    size_t *bws_bytes, n_bws;
    /* exit */
    size_t k;
    char *name;
    base_dist base;
    size_t bp_off;              /* its parameters in the flat vector */
    size_t z_off;               /* first column of this exit in z */
} node;

/* One node of a job; pointers are to full-batch arrays (row 0).  in and
 * out are the first two arrays of the layer call (forward: x, z; inverse:
 * z, x; the backward kinds: the pass's input and output). */
typedef struct job_step {
    node *nd;
    const flow_real *in;
    flow_real *out;
    const flow_real *dout;
    flow_real *din;
} job_step;

/* Blocks of the model's attribute copies, freed together. */
typedef struct arena_block {
    struct arena_block *next;
    max_align_t data[];
} arena_block;

struct flow_model {
    flow_ctx *ctx;
    size_t dim, cdim;
    size_t row_base, row_total; /* a pass over rows [row_base, +n) of
                                   row_total (log-densities in blocks;
                                   0, 0 otherwise): error messages */
    size_t rank, shape[4];      /* of the state after the last node */
    size_t in_rank, in_shape[4]; /* of the input (flow_model_input_shape) */
    node *nodes;
    size_t n_nodes, cap_nodes;
    base_kind base_kind;        /* of the final output, sized at finish */
    size_t base_comps;
    base_dist base;
    size_t base_off;            /* its parameters in the flat vector */
    size_t z_final;             /* first column of the final output in z */
    int finished;
    int training;
    flow_real *params, *buffers;
    size_t n_params, n_buffers;
    flow_rng rng;
    arena_block *arena;
    /* per-batch storage, grown on demand */
    size_t cap_rows;
    size_t grid_rows;           /* executor.c grid_rows, 0: not yet */
    flow_real **act;            /* act[i]: input of node i; act[n]: output */
    flow_real *ld, *ld_sum, *ones;
    flow_real *g0, *g1;         /* gradient ping-pong, cap_rows x dim */
    flow_real *lpb;             /* base log-densities, cap_rows */
    flow_real *t0, *t1;         /* scratch, cap_rows x dim */
    /* threads (flow_model_set_threads): rows of a batch are split into
     * `threads` fixed chunks; thread t > 0 accumulates its parameter
     * gradient in tgrad[t - 1], summed in order afterwards */
    size_t threads;
    pool *pool;
    int bf16;                   /* flow_model_set_precision: bf16 products
                                   in the nets (tgemm_set_bf16)         */
    flow_rng trng[MAX_THREADS];
    flow_real *tgrad;
    char terr[MAX_THREADS][256];
    flow_real *zbuf;            /* cap_rows x dim */
    job_step *steps;            /* n_nodes: the job being run */
    int tgrad_dirty;            /* tgrad not all zero (gradient.c) */
    /* the block pass (model_loglik_grad_blocks), while blk_rows > 0: the
     * rows of a pass are blocks of blk_rows (the last one short) that
     * threads take whole; block k's layer calls get its workspaces
     * (node.bws[k]), its parameter gradient slot blk_grad + k n_params
     * and, when blk_rng is set, its own stream blk_rng[k] */
    size_t blk_rows, blk_n;
    flow_real *blk_grad;
    flow_rng *blk_rng;
    flow_rng *blk_rng_buf;      /* blk_rng_cap streams, kept */
    size_t blk_rng_cap;
    /* whole-batch layers' sums over the blocks (exec_block_sum): this
     * process's blocks are [blk_first, blk_first + blk_n) of blk_total,
     * process q of the communicator holding [q T / N, (q + 1) T / N)
     * (blk_comm NULL: one process, all of them) */
    flow_comm *blk_comm;
    size_t blk_first, blk_total;
    size_t blk_fwd_end;         /* exec_forward: its jobs ran (or failed
                                   on every process alike) up to here */
    int blk_live;               /* the block pass's slots are 0 outside
                                   the support (model_set_live_slots):
                                   a layer clears its support runs only */
    /* the support of the gradient (model_support): every node's runs and
     * the bases' parameters, merged; live_pre[r] parameters before run r
     * (live_pre[n_live_runs] = n_live) */
    size_t *live, *live_pre, n_live_runs, n_live;
    char err[1024];
};

/* A job: consecutive nodes run on every chunk of a batch, each thread
 * taking its rows through all of them before the next synchronisation
 * (one pool_run per job, not per layer: waking the workers between
 * layers was measured at 5-15% of a step, bench/README.md,
 * "Coupling flows"). */
enum { JOB_FORWARD, JOB_INVERSE, JOB_FORWARD_BACKWARD, JOB_INVERSE_BACKWARD };

typedef struct job {
    flow_model *m;
    int kind;
    size_t n, k;
    const flow_real *cv;
    flow_real *ld;              /* forward kinds: each layer's log-dets */
    flow_real *ld_sum;          /* forward kinds: += ld, row by row */
    flow_real *z;               /* forward: exits' columns written */
    const flow_real *zin;       /* inverse: exits' columns read */
    const flow_real *dld;
    flow_real *grad;
    const job_step *steps;
    size_t n_steps;
    int no_tape;                /* no backward follows: rows in blocks */
    int skip_logdet;            /* the layers' log-dets are not read
                                   (flow_call.skip_logdet); ld_sum NULL */
    size_t block;               /* rows per block (exec_run_job), 0: all */
    int grid_rng;               /* a drawing layer on the grid: block b's
                                   calls draw from rng_stream(seed, b) */
    uint64_t seed;
    int rc[MAX_THREADS];
    size_t fail[MAX_THREADS];   /* step at which rc[t] failed */
    size_t fail_blk[MAX_THREADS]; /* the block pass: and in which block */
    atomic_size_t next_blk;     /* the block pass: the next block to take */
    int whole;                  /* the block pass: a whole-batch layer's
                                   call on all of the process's rows */
} job;

/* ------------------------------------------------------------ model.c */

/* Sets the context's message (printf-style) and returns code. */
int model_error(flow_model *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A layer's failure, with its label, position and plugin file. */
int model_layer_error(flow_model *m, const node *nd, int rc, const char *what);
/* FLOW_OK when m is finished and a batch of n rows is valid. */
int model_check_rows(flow_model *m, size_t n);

/* Width of the state after the last node (the final output's, once the
 * model is finished). */
static inline size_t model_out_dim(const flow_model *m)
{
    return m->n_nodes ? m->nodes[m->n_nodes - 1].out_dim : m->dim;
}

/* ------------------------------------------------------------ executor.c */

/* The call of thread t (0: the caller) on n rows of node nd. */
void exec_fill_call(flow_model *m, node *nd, flow_call *c, size_t n,
                    const flow_real *ctxv, flow_real *grad, size_t t);
/* Per-batch storage for n rows (kept when large enough). */
int exec_grow_batch(flow_model *m, size_t n);
void exec_free_batch(flow_model *m);
/* A node's block-pass workspaces. */
void exec_free_block_ws(node *nd);
/* Flags of a pass.  EXEC_TAPE: a backward pass follows (each layer's
 * workspace keeps its tape; rows are not split in blocks).
 * EXEC_NO_LOGDET: the caller reads no log-det, so the layers are told to
 * skip theirs (flow_call.skip_logdet) and m->ld_sum stays 0;
 * honoured in evaluation mode without EXEC_TAPE only. */
#define EXEC_TAPE 1u
#define EXEC_NO_LOGDET 2u
/* the layers were prepared for this batch by an earlier pass of the same
 * call on as many rows or more (flow_model_log_prob's later blocks) */
#define EXEC_PREPARED 4u

/* Forward through every node from x (n x dim): z gets the exits' columns
 * then the final state, m->ld_sum the summed log-dets, m->act the
 * activations (kept for a backward pass with EXEC_TAPE; data_init runs
 * the layers' data-dependent initialisation on the way). */
int exec_forward(flow_model *m, size_t n, const flow_real *x,
                 const flow_real *cv, flow_real *z, int data_init,
                 unsigned flags);
/* Inverse through every node from z: x gets the data, m->ld_sum the
 * summed log|det df^-1/dz|. */
int exec_inverse(flow_model *m, size_t n, const flow_real *z,
                 const flow_real *cv, flow_real *x, unsigned flags);
/* logp += the base log-densities of z (the exits' and the output's). */
int exec_add_base_logpdf(flow_model *m, size_t n, const flow_real *z,
                         flow_real *logp);
/* flow_call.block_sum of the block pass (gradient.c): every process's
 * blocks' partials gathered and added in block order. */
int exec_block_sum(const flow_call *c, size_t count, const double *partials,
                   double *sums);
/* The block pass on a process whose own work failed (or that holds no
 * block): the whole-batch layers' calls that the other processes make,
 * on no rows, so that their block sums do not wait for this one:
 * forward from node fwd_from on, then backward below node bwd_from. */
void exec_blocks_drain(flow_model *m, size_t fwd_from, size_t bwd_from);
/* Whether node nd can share a job with its neighbours. */
int exec_joinable(const flow_model *m, const node *nd, size_t n);
/* Runs the job on the model's threads; on failure, the error of its
 * earliest failing step, labelled `what` ("forward", "backward", ...). */
int exec_run_job(job *j, const char *what);
/* prepare (finish 0) or finish_grad (finish 1) of every layer that has
 * it, for a batch of n rows. */
int exec_batch_all(flow_model *m, size_t n, int finish, const flow_real *cv,
                   flow_real *grad);

/* Gathers columns [off, off + k) of z (n x dim) into a contiguous n x k. */
static inline void exec_gather_cols(size_t n, size_t dim, const flow_real *z,
                                    size_t off, size_t k, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        memcpy(out + r * k, z + r * dim + off, k * sizeof *out);
}

#endif
