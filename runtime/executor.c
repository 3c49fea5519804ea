/* executor.c - a finished model run over a batch: forward and inverse
 * passes over the node list in jobs of row blocks on the thread pool. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "model_impl.h"
#include "tgemm.h"

/* Rows below which a batch is not split (per thread). */
#define MIN_ROWS_PER_THREAD 32
/* Passes that keep no tape (log-densities, sampling) take each thread's
 * rows through a job's layers in blocks of this many, so that a block's
 * activations stay in the core's cache from layer to layer instead of
 * going to memory and back for every layer (4096-row batches: 2 MB per
 * activation of width 128). */
#define BLOCK_ROWS 256
/* A row holding more pass state than this (an image flow's: glow_fashion
 * 754 KB, against 37-100 KB for the vector benchmarks) takes grid blocks
 * of IMAGE_BLOCK_ROWS: its log-density passes are LOGPROB_MIN_ROWS rows,
 * and one block of 256 would leave every thread but one idle. */
#define IMAGE_ROW_BYTES ((size_t)256 << 10)
#define IMAGE_BLOCK_ROWS 8

static size_t pass_bytes_per_row(const flow_model *m);

/* The grid's rows for m's passes without tape: the model's alone (never
 * the thread count's), so that which rows share a call, and a drawing
 * layer's block streams, do not follow T. */
static size_t grid_rows(flow_model *m)
{
    if (!m->grid_rows)
        m->grid_rows = pass_bytes_per_row(m) > IMAGE_ROW_BYTES
                       ? IMAGE_BLOCK_ROWS : BLOCK_ROWS;
    return m->grid_rows;
}

/* ------------------------------------------------------------ layer calls */

/* The call of thread t (0: the caller) on n rows of node nd. */
void exec_fill_call(flow_model *m, node *nd, flow_call *c, size_t n,
                    const flow_real *ctxv, flow_real *grad, size_t t)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->host = flow_host_services();
    c->n = n;
    c->dim = nd->in_dim;
    c->context_dim = nd->given ? m->cdim : 0;
    c->params = m->params + nd->p_off;
    c->grad = grad ? grad + nd->p_off : NULL;
    c->buffers = m->buffers + nd->b_off;
    c->ctx = nd->given ? ctxv : NULL;
    c->ws = nd->ws[t];
    c->ws_bytes = nd->ws_bytes[t];
    c->rng = t ? &m->trng[t] : &m->rng;
    c->training = m->training;
    c->thread = (int)t;
    c->err = t ? m->terr[t] : m->err;
    c->err_cap = t ? sizeof m->terr[t] : sizeof m->err;
    c->err[0] = '\0';
    tgemm_set_bf16(m->bf16);    /* the nets this call runs (tgemm.h) */
}

void exec_free_batch(flow_model *m)
{
    if (m->act)
        for (size_t i = 0; i <= m->n_nodes; i++)
            free(m->act[i]);
    free(m->act);
    free(m->ld);
    free(m->ld_sum);
    free(m->ones);
    free(m->g0);
    free(m->g1);
    free(m->zbuf);
    free(m->lpb);
    free(m->t0);
    free(m->t1);
    free(m->steps);
    m->steps = NULL;
    m->t0 = m->t1 = NULL;
    m->act = NULL;
    m->ld = m->ld_sum = m->ones = m->g0 = m->g1 = m->zbuf = m->lpb = NULL;
    m->cap_rows = 0;
}

int exec_grow_batch(flow_model *m, size_t n)
{
    size_t dmax = m->dim;
    if (n <= m->cap_rows)
        return FLOW_OK;
    exec_free_batch(m);
    if (!(m->act = calloc(m->n_nodes + 1, sizeof *m->act)))
        goto nomem;
    for (size_t i = 0; i <= m->n_nodes; i++) {
        size_t w = i < m->n_nodes ? m->nodes[i].in_dim : model_out_dim(m);
        if (!(m->act[i] = malloc(n * w * sizeof(flow_real))))
            goto nomem;
    }
    m->ld = malloc(n * sizeof *m->ld);
    m->ld_sum = malloc(n * sizeof *m->ld_sum);
    m->ones = malloc(n * sizeof *m->ones);
    m->g0 = malloc(n * dmax * sizeof *m->g0);
    m->g1 = malloc(n * dmax * sizeof *m->g1);
    m->zbuf = malloc(n * dmax * sizeof *m->zbuf);
    m->lpb = malloc(n * sizeof *m->lpb);
    m->t0 = malloc(n * dmax * sizeof *m->t0);
    m->t1 = malloc(n * dmax * sizeof *m->t1);
    m->steps = malloc((m->n_nodes + 1) * sizeof *m->steps);
    if (!m->ld || !m->ld_sum || !m->ones || !m->g0 || !m->g1 || !m->zbuf
        || !m->lpb || !m->t0 || !m->t1 || !m->steps)
        goto nomem;
    m->cap_rows = n;
    return FLOW_OK;
nomem:
    exec_free_batch(m);
    return model_error(m, FLOW_ERR_NOMEM, "out of memory for a batch of %zu "
                       "rows", n);
}

/* Number of row chunks a batch of n rows is split into for node nd. */
static size_t chunks(const flow_model *m, const node *nd, size_t n)
{
    size_t k = m->threads;
    if (k < 2 || !m->pool || (nd->desc.flags & FLOW_LAYER_WHOLE_BATCH))
        return 1;
    if (m->blk_rows)            /* threads take whole blocks */
        return k < m->blk_n ? k : m->blk_n;
    if (n / k < MIN_ROWS_PER_THREAD)
        k = n / MIN_ROWS_PER_THREAD;
    return k ? k : 1;
}

/* Each thread's workspace for its rows of node nd in direction dir (0:
 * forward, 1: inverse), grown to what the layer asks for; a layer
 * without a workspace callback needs none. */
static int ensure_block_ws(flow_model *m, node *nd, int dir);

static int ensure_ws(flow_model *m, node *nd, size_t n, int dir,
                     int no_tape)
{
    size_t k = chunks(m, nd, n), rows = (n + k - 1) / k;
    size_t need;
    if (m->blk_rows && !(nd->desc.flags & FLOW_LAYER_WHOLE_BATCH))
        return ensure_block_ws(m, nd, dir);
    if (m->blk_rows)            /* a whole-batch layer: one call, all rows */
        k = 1, rows = n;
    else if ((no_tape && !(nd->desc.flags & FLOW_LAYER_WHOLE_BATCH))
             || rows < grid_rows(m))
        /* a pass without tape calls the layer on grid blocks (job_task),
         * whatever a thread's share of the rows: the workspace of a
         * block, not of the share (a 4096-row log-density pass of maf64
         * held 80 MB of MADE tapes for 256-row calls) */
        rows = n < grid_rows(m) ? n : grid_rows(m);
    need = nd->type->workspace ? nd->type->workspace(nd->self, rows, dir) : 0;
    for (size_t t = 0; t < k; t++) {
        if (need <= nd->ws_bytes[t])
            continue;
        free(nd->ws[t]);
        nd->ws[t] = NULL;
        nd->ws_bytes[t] = 0;
        if (posix_memalign(&nd->ws[t], 64, need ? need : 64) != 0) {
            nd->ws[t] = NULL;
            return model_error(m, FLOW_ERR_NOMEM, "%s: out of memory for a "
                               "workspace of %zu bytes", nd->label, need);
        }
        nd->ws_bytes[t] = need;
    }
    return FLOW_OK;
}

/* The block pass: a workspace per block (a thread takes any block, and
 * block k's backward reads what its forward left), each for blk_rows
 * rows. */
static int ensure_block_ws(flow_model *m, node *nd, int dir)
{
    size_t nb = m->blk_n;
    size_t need = nd->type->workspace
                      ? nd->type->workspace(nd->self, m->blk_rows, dir) : 0;
    if (nb > nd->n_bws) {
        void **w = realloc(nd->bws, nb * sizeof *w);
        size_t *wb;
        if (w)
            nd->bws = w;
        wb = w ? realloc(nd->bws_bytes, nb * sizeof *wb) : NULL;
        if (!wb)
            return model_error(m, FLOW_ERR_NOMEM, "%s: out of memory for "
                               "%zu block workspaces", nd->label, nb);
        nd->bws_bytes = wb;
        for (size_t k = nd->n_bws; k < nb; k++) {
            nd->bws[k] = NULL;
            nd->bws_bytes[k] = 0;
        }
        nd->n_bws = nb;
    }
    for (size_t k = 0; k < nb; k++) {
        if (need <= nd->bws_bytes[k] && nd->bws[k])
            continue;
        free(nd->bws[k]);
        nd->bws[k] = NULL;
        nd->bws_bytes[k] = 0;
        if (posix_memalign(&nd->bws[k], 64, need ? need : 64) != 0) {
            nd->bws[k] = NULL;
            return model_error(m, FLOW_ERR_NOMEM, "%s: out of memory for a "
                               "workspace of %zu bytes", nd->label, need);
        }
        nd->bws_bytes[k] = need;
    }
    return FLOW_OK;
}

void exec_free_block_ws(node *nd)
{
    for (size_t k = 0; k < nd->n_bws; k++)
        free(nd->bws[k]);
    free(nd->bws);
    free(nd->bws_bytes);
    nd->bws = NULL;
    nd->bws_bytes = NULL;
    nd->n_bws = 0;
}

/* ------------------------------------------------------------ jobs */

/* An exit on rows [lo, hi): forward splits in into z's columns and out,
 * inverse joins them back (in: the latent side, out: the data side). */
static void exit_rows(const flow_model *m, const node *nd, const job *j,
                      size_t lo, size_t hi, const flow_real *in,
                      flow_real *out)
{
    size_t k = nd->k, di = nd->in_dim, dout = nd->out_dim;
    const size_t sz = sizeof *out;
    for (size_t r = lo; r < hi; r++) {
        size_t zo = r * m->dim + nd->z_off;
        if (j->kind != JOB_INVERSE) {
            memcpy(j->z + zo, in + r * di, k * sz);
            memcpy(out + r * dout, in + r * di + k, dout * sz);
        } else {
            memcpy(out + r * di, j->zin + zo, k * sz);
            memcpy(out + r * di + k, in + r * dout, dout * sz);
        }
    }
}

static int call_layer(const job *j, const job_step *st, flow_call *c,
                      size_t lo)
{
    node *nd = st->nd;
    size_t d = nd->in_dim;
    switch (j->kind) {
    case JOB_FORWARD:
        return nd->type->forward(nd->self, c, st->in + lo * d,
                                 st->out + lo * d, j->ld + lo);
    case JOB_INVERSE:
        return nd->type->inverse(nd->self, c, st->in + lo * d,
                                 st->out + lo * d, j->ld + lo);
    case JOB_FORWARD_BACKWARD:
        return nd->type->forward_backward(nd->self, c, st->in + lo * d,
                                          st->out + lo * d,
                                          st->dout + lo * d, j->dld + lo,
                                          st->din + lo * d);
    default:
        return nd->type->inverse_backward(nd->self, c, st->in + lo * d,
                                          st->out + lo * d,
                                          st->dout + lo * d, j->dld + lo,
                                          st->din + lo * d);
    }
}

/* Node nd's range of a block-pass gradient slot set to 0 before its
 * backward accumulates there: only its support runs when the caller's
 * slots are 0 elsewhere (m->blk_live, model_set_live_slots), since the
 * layer writes nothing outside them; else the whole range. */
static void clear_slot(const flow_model *m, const node *nd,
                       flow_real *slot)
{
    if (!m->blk_live) {
        memset(slot + nd->p_off, 0, nd->desc.n_params * sizeof *slot);
        return;
    }
    for (size_t r = 0; r < nd->n_sup; r++)
        memset(slot + nd->sup[2 * r], 0, nd->sup[2 * r + 1] * sizeof *slot);
}

/* Thread t's rows [lo, hi) through every step of the job; in the block
 * pass, block kb's rows with its gradient slot, workspaces, stream and
 * a message buffer of its own (kept only for the job's first failure). */
static void job_rows(job *j, size_t t, size_t lo, size_t hi, size_t kb)
{
    flow_model *m = j->m;
    flow_real *grad = j->grad && t ? m->tgrad : j->grad;
    char msg[sizeof m->terr[0]];
    if (grad && t)
        grad += (t - 1) * m->n_params;
    if (m->blk_rows && j->grad)
        grad = m->blk_grad + kb * m->n_params;
    for (size_t s = 0; s < j->n_steps; s++) {
        const job_step *st = &j->steps[s];
        node *nd = st->nd;
        size_t kc = nd->given ? m->cdim : 0;
        flow_rng grid;
        flow_call c;
        int rc;
        if (nd->kind == NODE_EXIT) {
            exit_rows(m, nd, j, lo, hi, st->in, st->out);
            continue;
        }
        exec_fill_call(m, nd, &c, hi - lo,
                       j->cv && kc ? j->cv + lo * kc : NULL, grad, t);
        c.skip_logdet = j->skip_logdet;
        if (j->grid_rng) {
            /* the grid block's own stream: its draws, like its rows, do
             * not follow the thread count */
            rng_stream(&grid, j->seed, (unsigned)kb);
            c.rng = &grid;
        }
        if (m->blk_rows && (nd->desc.flags & FLOW_LAYER_WHOLE_BATCH)) {
            /* all of this process's blocks in one call, its sums over
             * every process's blocks through block_sum in the density
             * direction; the sampling direction's call (a fit's pass) is
             * a plain one on these rows, its gradient in slot 0 */
            if (grad && (j->kind == JOB_FORWARD_BACKWARD
                         || j->kind == JOB_INVERSE_BACKWARD))
                for (size_t k = 0; k < m->blk_n; k++)
                    clear_slot(m, nd, grad + k * m->n_params);
            if (j->kind == JOB_FORWARD || j->kind == JOB_FORWARD_BACKWARD) {
                c.block_rows = m->blk_rows;
                c.grad_stride = m->n_params;
                c.block_sum = exec_block_sum;
                c.block_ctx = m;
            }
            c.err = msg;
            c.err_cap = sizeof msg;
            msg[0] = '\0';
        } else if (m->blk_rows) {
            /* the slot's range of this layer, cleared here while the
             * layer's backward is about to write it (the block passes
             * clear the bases') instead of all nb slots in a pass of
             * their own */
            if (grad && (j->kind == JOB_FORWARD_BACKWARD
                         || j->kind == JOB_INVERSE_BACKWARD))
                clear_slot(m, nd, grad);
            c.ws = nd->bws[kb];
            c.ws_bytes = nd->bws_bytes[kb];
            if (m->blk_rng)
                c.rng = &m->blk_rng[kb];
            c.err = msg;
            c.err_cap = sizeof msg;
            msg[0] = '\0';
        }
        if ((rc = call_layer(j, st, &c, lo)) != FLOW_OK) {
            if (m->blk_rows) {
                /* the first failure in (step, block) order: the same
                 * whichever thread ran which block */
                if (j->rc[t] != FLOW_OK && (j->fail[t] < s
                        || (j->fail[t] == s && j->fail_blk[t] < kb)))
                    return;
                memcpy(t ? m->terr[t] : m->err, msg, sizeof msg);
                j->fail_blk[t] = kb;
            }
            j->rc[t] = rc;
            j->fail[t] = s;
            return;
        }
        if (j->ld_sum)
            for (size_t r = lo; r < hi; r++)
                j->ld_sum[r] += j->ld[r];
    }
}

static void job_task(void *arg, size_t t)
{
    job *j = arg;
    size_t lo = j->n * t / j->k, hi = j->n * (t + 1) / j->k;
    size_t bs = j->block ? j->block : hi - lo;
    j->rc[t] = FLOW_OK;
    if (j->m->blk_rows && !j->whole) {
        /* whole blocks, whichever thread comes first: a block's
         * arithmetic is its own, so the bits do not follow the split */
        size_t R = j->m->blk_rows, kb;
        while ((kb = atomic_fetch_add_explicit(&j->next_blk, 1,
                                               memory_order_relaxed))
               < j->m->blk_n) {
            size_t b0 = kb * R, b1 = j->n - b0 < R ? j->n : b0 + R;
            job_rows(j, t, b0, b1, kb);
        }
        return;
    }
    if (j->block) {
        /* calls of the fixed grid's blocks of j->block rows, the threads
         * taking consecutive blocks: each call's rows, and so each row's
         * bits, do not depend on the thread count */
        size_t nbl = (j->n + bs - 1) / bs;
        lo = nbl * t / j->k * bs;
        hi = nbl * (t + 1) / j->k * bs;
        if (hi > j->n)
            hi = j->n;
    }
    for (size_t b = lo; b < hi && j->rc[t] == FLOW_OK; b += bs)
        job_rows(j, t, b, hi - b < bs ? hi : b + bs, b / bs);
}

/* Rows of a batch of n split into this many chunks (layers without
 * WHOLE_BATCH; exits). */
static size_t row_chunks(const flow_model *m, size_t n)
{
    size_t k = m->threads;
    if (k < 2 || !m->pool)
        return 1;
    if (m->blk_rows)
        return k < m->blk_n ? k : m->blk_n;
    if (n / k < MIN_ROWS_PER_THREAD)
        k = n / MIN_ROWS_PER_THREAD;
    return k ? k : 1;
}

/* Whether node nd can share a job with its neighbours: not a
 * whole-batch layer, nor a stochastic one (its streams are seeded from
 * the model's stream when its job starts, after the layer before drew
 * from it: per grid block without a tape, per thread with one).  The
 * same on one thread, so that which calls a row sees does not depend on
 * the thread count. */
int exec_joinable(const flow_model *m, const node *nd, size_t n)
{
    (void)n;
    if (m->blk_rows)    /* each block draws from its own stream */
        return nd->kind == NODE_EXIT
               || !(nd->desc.flags & FLOW_LAYER_WHOLE_BATCH);
    if (nd->kind == NODE_EXIT)
        return 1;
    return !(nd->desc.flags & (FLOW_LAYER_WHOLE_BATCH
                               | FLOW_LAYER_STOCHASTIC));
}

/* Of k threads' outcomes (rc[t], and fail[t]: where it failed, in run
 * order), the thread whose failure comes first, its message moved to
 * m->err; MAX_THREADS when none failed. */
static size_t first_failure(flow_model *m, size_t k, const int *rc,
                            const size_t *fail, const size_t *blk)
{
    size_t bad = MAX_THREADS;
    for (size_t t = 0; t < k; t++)
        if (rc[t] != FLOW_OK && (bad == MAX_THREADS || fail[t] < fail[bad]
                                 || (blk && fail[t] == fail[bad]
                                     && blk[t] < blk[bad])))
            bad = t;
    if (bad != MAX_THREADS && bad)
        memcpy(m->err, m->terr[bad], sizeof m->terr[bad]);
    return bad;
}

/* Runs the job on its chunks; on failure, the message of the earliest
 * failing step (its lowest chunk among equals): the same whatever the
 * timing. */
int exec_run_job(job *j, const char *what)
{
    flow_model *m = j->m;
    const node *first = j->steps[0].nd;
    size_t bad = MAX_THREADS;
    j->k = j->n_steps == 1 && first->kind == NODE_LAYER
               ? chunks(m, first, j->n) : row_chunks(m, j->n);
    j->block = j->no_tape ? grid_rows(m) : 0;
    for (size_t i = 0; i < j->n_steps; i++)   /* whole rows only */
        if (j->steps[i].nd->kind == NODE_LAYER
            && (j->steps[i].nd->desc.flags & FLOW_LAYER_WHOLE_BATCH))
            j->block = 0;
    atomic_store(&j->next_blk, 0);
    j->whole = m->blk_rows && j->n_steps == 1 && first->kind == NODE_LAYER
               && (first->desc.flags & FLOW_LAYER_WHOLE_BATCH);
    j->grid_rng = 0;
    if (j->n_steps == 1 && !m->blk_rows && first->kind == NODE_LAYER
        && (first->desc.flags & FLOW_LAYER_STOCHASTIC)
        && (j->block || j->k > 1)) {
        /* streams drawn from the model's stream, so that everything
         * random still derives from it (and from checkpoints of it): per
         * grid block without a tape (the same draws at any T), else per
         * thread */
        uint64_t seed = rng_u64(&m->rng);
        if (j->block) {
            j->grid_rng = 1;
            j->seed = seed;
        } else {
            for (size_t t = 1; t < j->k; t++)
                rng_stream(&m->trng[t], seed, (unsigned)t);
        }
    }
    if (j->k > 1) {
        pool_run(m->pool, j->k, job_task, j);
    } else if (m->pool) {
        /* one chunk on the caller, the workers idle: lent to the layers,
         * so that a convolutional conditioner splits its channels over
         * them (conv_split.c) */
        pool_lend(m->pool);
        job_task(j, 0);
        pool_lend(NULL);
    } else {
        job_task(j, 0);
    }
    if ((bad = first_failure(m, j->k, j->rc, j->fail,
                              m->blk_rows ? j->fail_blk : NULL)) == MAX_THREADS)
        return FLOW_OK;
    return model_layer_error(m, j->steps[j->fail[bad]].nd, j->rc[bad], what);
}

void exec_blocks_drain(flow_model *m, size_t fwd_from, size_t bwd_from)
{
    for (size_t pass = 0; pass < 2; pass++)
        for (size_t s = 0; s < m->n_nodes; s++) {
            size_t i = pass ? m->n_nodes - 1 - s : s;
            node *nd = &m->nodes[i];
            flow_real none = 0;
            flow_call c;
            if (nd->kind != NODE_LAYER
                || !(nd->desc.flags & FLOW_LAYER_WHOLE_BATCH)
                || (pass ? i >= bwd_from : i < fwd_from)
                || ensure_ws(m, nd, 0, 0, 0) != FLOW_OK)
                continue;
            exec_fill_call(m, nd, &c, 0, NULL, NULL, 0);
            c.block_rows = m->blk_rows;
            c.grad_stride = m->n_params;
            c.block_sum = exec_block_sum;
            c.block_ctx = m;
            c.err = m->terr[0];
            c.err_cap = sizeof m->terr[0];
            if (pass)
                (void)nd->type->forward_backward(nd->self, &c, &none, &none,
                                                 &none, &none, &none);
            else
                (void)nd->type->forward(nd->self, &c, &none, &none, &none);
        }
}

/* ------------------------------------------------------------ batch work */

/* Per-layer work once per batch (prepare or finish_grad) for the layers
 * that allow it at the same time as other layers'
 * (FLOW_LAYER_CONCURRENT_PREPARE), shared among the model's threads in
 * node order (thread t takes the t-th, (t+k)-th, ... of them); the rest
 * run one after the other on the calling thread.  On failure the error
 * of the first failing node (in node order) is reported. */
typedef struct batch_job {
    flow_model *m;
    size_t n, k;
    int finish;                 /* 0: prepare, 1: finish_grad */
    flow_real *grad;
    const flow_real *cv;
    int rc[MAX_THREADS];
    size_t fail[MAX_THREADS];   /* node index of rc[t]'s failure */
} batch_job;

static int batch_one(batch_job *bj, node *nd, size_t t)
{
    flow_call c;
    exec_fill_call(bj->m, nd, &c, bj->n, bj->cv, bj->finish ? bj->grad : NULL,
                   t);
    return bj->finish
               ? nd->type->finish_grad(nd->self, &c, bj->grad + nd->p_off)
               : nd->type->prepare(nd->self, &c);
}

static int batch_has(const batch_job *bj, const node *nd)
{
    return nd->kind == NODE_LAYER &&
           (bj->finish ? nd->type->finish_grad != NULL
                       : nd->type->prepare != NULL);
}

/* 1: this node's work runs on the threads, 0: on the caller */
static int batch_conc(const node *nd)
{
    return (nd->desc.flags & FLOW_LAYER_CONCURRENT_PREPARE) != 0;
}

static void batch_task(void *arg, size_t t)
{
    batch_job *bj = arg;
    flow_model *m = bj->m;
    size_t seen = 0;
    bj->rc[t] = FLOW_OK;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (!batch_has(bj, nd) || !batch_conc(nd))
            continue;
        if (seen++ % bj->k != t)
            continue;
        if ((bj->rc[t] = batch_one(bj, nd, t)) != FLOW_OK) {
            bj->fail[t] = i;
            return;
        }
    }
}

int exec_batch_all(flow_model *m, size_t n, int finish,
                   const flow_real *cv, flow_real *grad)
{
    batch_job bj = {.m = m, .n = n, .finish = finish, .cv = cv,
                    .grad = grad};
    size_t conc = 0, bad = SIZE_MAX, bad_t;
    int rc = FLOW_OK;
    for (size_t i = 0; i < m->n_nodes; i++)
        conc += batch_has(&bj, &m->nodes[i]) && batch_conc(&m->nodes[i]);
    bj.k = m->pool && conc > 1 ? (conc < m->threads ? conc : m->threads) : 1;
    if (conc) {
        if (bj.k > 1)
            pool_run(m->pool, bj.k, batch_task, &bj);
        else
            batch_task(&bj, 0);
        bad_t = first_failure(m, bj.k, bj.rc, bj.fail, NULL);
        if (bad_t != MAX_THREADS) {
            bad = bj.fail[bad_t];
            rc = bj.rc[bad_t];
        }
    }
    for (size_t i = 0; i < m->n_nodes && i < bad; i++) {
        node *nd = &m->nodes[i];
        int r;
        if (!batch_has(&bj, nd) || batch_conc(nd))
            continue;
        if ((r = batch_one(&bj, nd, 0)) != FLOW_OK) {
            bad = i;
            rc = r;
        }
    }
    if (bad == SIZE_MAX)
        return FLOW_OK;
    return model_layer_error(m, &m->nodes[bad], rc,
                             finish ? "gradient" : "prepare");
}

static int prepare_all(flow_model *m, size_t n, int dir, int no_tape)
{
    int rc;
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_LAYER
            && (rc = ensure_ws(m, &m->nodes[i], n, dir, no_tape)) != FLOW_OK)
            return rc;
    return exec_batch_all(m, n, 0, NULL, NULL);
}

/* ------------------------------------------------------------ passes */

/* Row r of an n-row block of width d is all finite? */
static int row_finite(const flow_real *a, size_t d, size_t r)
{
    for (size_t c = 0; c < d; c++)
        if (!isfinite((double)a[r * d + c]))
            return 0;
    return 1;
}

/* A forward pass failed (error rc, its message in the context) in the
 * job that starts at node `upto`.  A layer that met a non-finite input
 * mostly fails on it, while the layer that made it from finite values
 * (batchnorm with eps = 0 on a constant column: 0 / 0) went on: blame the
 * first node before `upto` with a row that is finite going in and not
 * coming out, with the later failure after it.  The nodes before `upto`
 * ran on all n rows; only the error path pays for the scan. */
static int blame_nonfinite(flow_model *m, size_t n, size_t upto, int rc)
{
    for (size_t k = 0; k < upto; k++) {
        const node *nd = &m->nodes[k];
        if (nd->kind != NODE_LAYER)
            continue;
        for (size_t r = 0; r < n; r++)
            if (row_finite(m->act[k], nd->in_dim, r)
                && !row_finite(m->act[k + 1], nd->out_dim, r)) {
                char later[sizeof m->err / 2];
                snprintf(later, sizeof later, "%s", flow_errmsg(m->ctx));
                snprintf(m->err, sizeof m->err, "row %zu of %zu: finite "
                         "input, non-finite output (then %.*s)",
                         m->row_base + r, m->row_total ? m->row_total : n,
                         (int)(sizeof later - 1), later);
                return model_layer_error(m, nd, FLOW_ERR_NUMERIC, "forward");
            }
    }
    return rc;
}

/* Whether a pass with these flags tells its layers to skip their
 * log-dets: never before a backward pass, nor in training mode, where
 * estimators draw random numbers for them (the stream must not depend
 * on whether log-densities were asked for). */
static int skips_logdet(const flow_model *m, unsigned flags)
{
    return (flags & EXEC_NO_LOGDET) && !(flags & EXEC_TAPE) && !m->training;
}

/* Forward through every node; z (n x dim) gets exits then the final
 * state; m->ld_sum the summed log-dets.  Activations stay in m->act. */
int exec_forward(flow_model *m, size_t n, const flow_real *x,
                 const flow_real *cv, flow_real *z, int data_init,
                 unsigned flags)
{
    int rc, skip = skips_logdet(m, flags);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK
        || (!(flags & EXEC_PREPARED)
            && (rc = prepare_all(m, n, 0, !(flags & EXEC_TAPE))) != FLOW_OK))
        return rc;
    memcpy(m->act[0], x, n * m->dim * sizeof *x);
    memset(m->ld_sum, 0, n * sizeof *m->ld_sum);
    m->blk_fwd_end = 0;
    for (size_t i = 0, e; i < m->n_nodes; i = e) {
        node *nd = &m->nodes[i];
        job j = {.m = m, .kind = JOB_FORWARD, .n = n, .cv = cv,
                 .ld = m->ld, .ld_sum = skip ? NULL : m->ld_sum, .z = z,
                 .steps = m->steps, .no_tape = !(flags & EXEC_TAPE),
                 .skip_logdet = skip};
        if (data_init && nd->kind == NODE_LAYER
            && (nd->desc.flags & FLOW_LAYER_DATA_INIT)
            && nd->type->data_init) {
            flow_call c;
            exec_fill_call(m, nd, &c, n, cv, NULL, 0);
            rc = nd->type->data_init(nd->self, &c, m->params + nd->p_off,
                                     m->act[i]);
            if (rc != FLOW_OK)
                return model_layer_error(m, nd, rc, "data-dependent init");
        }
        /* nodes i..e-1 in one job (a data-initialised layer starts one) */
        for (e = i; e < m->n_nodes; e++) {
            const node *ne = &m->nodes[e];
            if (e > i && (!exec_joinable(m, ne, n)
                          || !exec_joinable(m, ne - 1, n)
                          || (data_init && ne->kind == NODE_LAYER
                              && (ne->desc.flags & FLOW_LAYER_DATA_INIT))))
                break;
            m->steps[e - i] = (job_step){.nd = &m->nodes[e],
                                         .in = m->act[e],
                                         .out = m->act[e + 1]};
        }
        j.n_steps = e - i;
        m->blk_fwd_end = e;
        if ((rc = exec_run_job(&j, "forward")) != FLOW_OK) {
            /* one thread over whole columns: the job's steps before the
             * failing one ran on every row too */
            size_t upto = i;
            if (j.k == 1 && j.block == 0 && j.rc[0] != FLOW_OK)
                upto = i + j.fail[0];
            return blame_nonfinite(m, n, upto, rc);
        }
    }
    {
        size_t df = model_out_dim(m);
        const flow_real *fin = m->act[m->n_nodes];
        for (size_t r = 0; r < n; r++)
            memcpy(z + r * m->dim + m->z_final, fin + r * df,
                   df * sizeof *z);
    }
    return FLOW_OK;
}

int flow_model_forward(flow_model *m, size_t n, const flow_real *x,
                       const flow_real *c, flow_real *z, flow_real *logdet)
{
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = exec_forward(m, n, x, c, z, 0,
                           logdet ? 0 : EXEC_NO_LOGDET)) != FLOW_OK)
        return rc;
    if (logdet)
        memcpy(logdet, m->ld_sum, n * sizeof *logdet);
    return FLOW_OK;
}

int flow_model_data_init(flow_model *m, size_t n, const flow_real *x,
                         const flow_real *c)
{
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK)
        return rc;
    return exec_forward(m, n, x, c, m->zbuf, 1, EXEC_NO_LOGDET);
}

/* Adds the base log-densities of z (exits and final) to logp. */
int exec_add_base_logpdf(flow_model *m, size_t n, const flow_real *z,
                         flow_real *logp)
{
    flow_real *tmp = m->t0;
    for (size_t i = 0; i <= m->n_nodes; i++) {
        const node *nd = i < m->n_nodes ? &m->nodes[i] : NULL;
        const base_dist *b = nd ? &nd->base : &m->base;
        size_t off = nd ? nd->z_off : m->z_final;
        size_t po = nd ? nd->bp_off : m->base_off;
        if (nd && nd->kind != NODE_EXIT)
            continue;
        exec_gather_cols(n, m->dim, z, off, b->dim, tmp);
        if (base_log_prob(b, m->params + po, n, tmp, m->lpb) != FLOW_OK)
            return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                               "invalid parameters or input");
        for (size_t r = 0; r < n; r++)
            logp[r] += m->lpb[r];
    }
    return FLOW_OK;
}

/* Bytes of activations per row: those between the nodes and the output
 * (all a pass without tape holds per row, its layers' workspaces being
 * per grid block and thread: ensure_ws). */
static size_t act_bytes_per_row(const flow_model *m)
{
    size_t b = model_out_dim(m) * sizeof(flow_real);
    for (size_t i = 0; i < m->n_nodes; i++)
        b += m->nodes[i].in_dim * sizeof(flow_real);
    return b;
}

/* Bytes a density pass holds per row: the activations (act_bytes_per_row)
 * and every layer's workspace per row (the tape its backward would
 * read: for a convolutional coupling of glow_fashion the conditioner's
 * hidden planes). */
static size_t pass_bytes_per_row(const flow_model *m)
{
    size_t b = act_bytes_per_row(m);
    for (size_t i = 0; i < m->n_nodes; i++) {
        const node *nd = &m->nodes[i];
        if (nd->kind == NODE_LAYER && nd->type->workspace) {
            /* the growth per row: a workspace also has fixed scratch
             * (a conv net's im2col matrices, 4.7 MB at 64 x 32 x 32) */
            size_t w1 = nd->type->workspace(nd->self, 1, 0);
            size_t w2 = nd->type->workspace(nd->self, 2, 0);
            b += w2 > w1 ? w2 - w1 : w1;
        }
    }
    return b;
}


/* A log-density holds LOGPROB_BLOCK_BYTES of activations at most (but at
 * least LOGPROB_MIN_ROWS rows a pass, so that the threads keep whole
 * chunks), besides each thread's workspace for a grid block: the
 * caller's n rows go through in blocks, each row's value the same bits
 * in any block (docs/runtime.md, "Threading in the executor").  Blocks
 * of many grid blocks keep the threads even: maf64's 4096 rows went in
 * blocks of 820 when the workspaces counted per row, four grid blocks of
 * 256, 256, 256 and 52 rows, one thread idle for a fifth of the pass. */
#define LOGPROB_BLOCK_BYTES ((size_t)32 << 20)
#define LOGPROB_MIN_ROWS 64

int flow_model_log_prob(flow_model *m, size_t n, const flow_real *x,
                        const flow_real *c, flow_real *logp)
{
    size_t per_row, block;
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    per_row = act_bytes_per_row(m);
    block = LOGPROB_BLOCK_BYTES / (per_row ? per_row : 1);
    if (block < LOGPROB_MIN_ROWS)
        block = LOGPROB_MIN_ROWS;
    if (block < m->cap_rows)        /* already allocated: use it all */
        block = m->cap_rows;
    if (block > n)
        block = n;
    /* before the first pass: m->zbuf, handed to exec_forward as z, must
     * not move when that pass grows the batch */
    if ((rc = exec_grow_batch(m, block)) != FLOW_OK)
        return rc;
    m->row_total = n;
    for (size_t r = 0; r < n && rc == FLOW_OK; r += block) {
        size_t b = n - r < block ? n - r : block;
        m->row_base = r;
        /* one batch for the layers: prepare (a MADE's weights sorted and
         * transposed, 1.8M of them in maf64, LU factors assembled, an
         * ODE's evaluation count reset) once, on the first and largest
         * block, as the parameters cannot change within the call */
        rc = exec_forward(m, b, x + r * m->dim, c ? c + r * m->cdim : NULL,
                          m->zbuf, 0, r ? EXEC_PREPARED : 0);
        if (rc == FLOW_OK) {
            memcpy(logp + r, m->ld_sum, b * sizeof *logp);
            rc = exec_add_base_logpdf(m, b, m->zbuf, logp + r);
        }
    }
    m->row_base = m->row_total = 0;
    return rc;
}

/* Inverse through every node from z; x gets the data, m->ld_sum the
 * summed inverse log-dets. */
int exec_inverse(flow_model *m, size_t n, const flow_real *z,
                 const flow_real *cv, flow_real *x, unsigned flags)
{
    size_t df = model_out_dim(m);
    int rc, skip = skips_logdet(m, flags);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK
        || (rc = prepare_all(m, n, 1, !(flags & EXEC_TAPE))) != FLOW_OK)
        return rc;
    for (size_t r = 0; r < n; r++)
        memcpy(m->act[m->n_nodes] + r * df, z + r * m->dim + m->z_final,
               df * sizeof *z);
    memset(m->ld_sum, 0, n * sizeof *m->ld_sum);
    for (size_t e = m->n_nodes, i; e > 0; e = i) {
        job j = {.m = m, .kind = JOB_INVERSE, .n = n, .cv = cv,
                 .ld = m->ld, .ld_sum = skip ? NULL : m->ld_sum, .zin = z,
                 .steps = m->steps, .no_tape = !(flags & EXEC_TAPE),
                 .skip_logdet = skip};
        /* nodes e-1 down to i in one job */
        for (i = e; i > 0; i--) {
            node *nd = &m->nodes[i - 1];
            if (i < e && (!exec_joinable(m, nd, n)
                          || !exec_joinable(m, nd + 1, n)))
                break;
            if (nd->kind == NODE_LAYER
                && (!(nd->desc.flags & FLOW_LAYER_INVERSE)
                    || !nd->type->inverse))
                return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): layer "
                                   "has no inverse direction", nd->label,
                                   nd->file);
            m->steps[e - i] = (job_step){.nd = nd, .in = m->act[i],
                                         .out = m->act[i - 1]};
        }
        j.n_steps = e - i;
        if ((rc = exec_run_job(&j, "inverse")) != FLOW_OK)
            return rc;
    }
    memcpy(x, m->act[0], n * m->dim * sizeof *x);
    return FLOW_OK;
}

int flow_model_inverse(flow_model *m, size_t n, const flow_real *z,
                       const flow_real *c, flow_real *x, flow_real *logdet)
{
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = exec_inverse(m, n, z, c, x,
                           logdet ? 0 : EXEC_NO_LOGDET)) != FLOW_OK)
        return rc;
    if (logdet)
        memcpy(logdet, m->ld_sum, n * sizeof *logdet);
    return FLOW_OK;
}

/* Draws n latents from the bases (exits' columns first) into zout with
 * the model's stream, each base's spread scaled by temp (base_sample);
 * lpb (may be NULL) = log p_base(z) per row, of the untempered bases. */
static int draw_latents(flow_model *m, size_t n, double temp,
                        flow_real *zout, flow_real *lpb)
{
    for (size_t i = 0; i <= m->n_nodes; i++) {
        const node *nd = i < m->n_nodes ? &m->nodes[i] : NULL;
        const base_dist *b = nd ? &nd->base : &m->base;
        size_t off = nd ? nd->z_off : m->z_final;
        size_t po = nd ? nd->bp_off : m->base_off;
        if (nd && nd->kind != NODE_EXIT)
            continue;
        if (base_sample(b, m->params + po, n, temp, &m->rng, m->t1, NULL)
            != FLOW_OK)
            return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                               "cannot sample");
        for (size_t r = 0; r < n; r++)
            memcpy(zout + r * m->dim + off, m->t1 + r * b->dim,
                   b->dim * sizeof *zout);
    }
    if (lpb) {
        memset(lpb, 0, n * sizeof *lpb);
        return exec_add_base_logpdf(m, n, zout, lpb);
    }
    return FLOW_OK;
}

int flow_model_sample_latent(flow_model *m, size_t n, flow_real *z,
                             flow_real *logp_base)
{
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK)
        return rc;
    return draw_latents(m, n, 1.0, z, logp_base);
}

int flow_model_sample(flow_model *m, size_t n, const flow_real *c,
                      flow_real *x, flow_real *logp)
{
    return flow_model_sample_tempered(m, n, 1.0, c, x, logp);
}

int flow_model_sample_tempered(flow_model *m, size_t n, double temperature,
                               const flow_real *c, flow_real *x,
                               flow_real *logp)
{
    int rc;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if (!(temperature > 0 && isfinite(temperature)))
        return model_error(m, FLOW_ERR_INVAL, "sample: the temperature "
                           "must be a finite number > 0, got %g",
                           temperature);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK
        || (rc = draw_latents(m, n, temperature, m->zbuf, NULL)) != FLOW_OK)
        return rc;
    if ((rc = exec_inverse(m, n, m->zbuf, c, x,
                           logp ? 0 : EXEC_NO_LOGDET)) != FLOW_OK)
        return rc;
    if (logp) {
        /* log p(x) = log p_base(z) - log|det df^-1/dz| */
        for (size_t r = 0; r < n; r++)
            logp[r] = -m->ld_sum[r];
        return exec_add_base_logpdf(m, n, m->zbuf, logp);
    }
    return FLOW_OK;
}

/* ------------------------------------------------------------ threads */

int flow_model_set_precision(flow_model *m, int precision)
{
    if (precision == FLOW_PRECISION_FP32) {
        m->bf16 = 0;
        return FLOW_OK;
    }
    if (precision != FLOW_PRECISION_BF16_GEMM)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_set_precision: "
                           "unknown precision %d", precision);
#if FLOW_REAL_DOUBLE
    return model_error(m, FLOW_ERR_UNSUPPORTED, "bf16-gemm needs the float "
                       "build");
#else
    if (!tgemm_bf16_level())
        return model_error(m, FLOW_ERR_UNSUPPORTED, "bf16-gemm needs a CPU "
                           "with AVX512-BF16 (this one has not)");
    m->bf16 = 1;
    return FLOW_OK;
#endif
}

int flow_model_get_precision(const flow_model *m)
{
    return m->bf16 ? FLOW_PRECISION_BF16_GEMM : FLOW_PRECISION_FP32;
}

int flow_model_set_threads(flow_model *m, size_t threads)
{
    if (threads < 1 || threads > MAX_THREADS)
        return model_error(m, FLOW_ERR_INVAL, "threads must be in 1..%d, "
                           "got %zu", MAX_THREADS, threads);
    if (!m->finished)
        return model_error(m, FLOW_ERR_INVAL, "set threads after "
                           "flow_model_finish");
    pool_free(m->pool);
    m->pool = NULL;
    free(m->tgrad);
    m->tgrad = NULL;
    m->threads = 1;
    if (threads == 1)
        return FLOW_OK;
    if (m->n_params > SIZE_MAX / sizeof(flow_real) / (threads - 1))
        return model_error(m, FLOW_ERR_NOMEM, "too many parameters");
    m->tgrad = calloc((threads - 1) * m->n_params + 1, sizeof *m->tgrad);
    m->pool = pool_new(threads);
    if (!m->tgrad || !m->pool) {
        free(m->tgrad);
        m->tgrad = NULL;
        pool_free(m->pool);
        m->pool = NULL;
        return model_error(m, FLOW_ERR_NOMEM, "cannot start %zu threads",
                           threads);
    }
    m->threads = threads;
    return FLOW_OK;
}

typedef struct pfor_job {
    void (*fn)(void *arg, size_t t, size_t lo, size_t hi);
    void *arg;
    size_t n, k;
} pfor_job;

static void pfor_task(void *arg, size_t t)
{
    pfor_job *pj = arg;
    size_t line = 64 / sizeof(flow_real), lines = pj->n / line;
    size_t lo = lines * t / pj->k * line, hi = lines * (t + 1) / pj->k * line;
    if (t + 1 == pj->k)
        hi = pj->n;
    pj->fn(pj->arg, t, lo, hi);
}

void model_parallel_for(flow_model *m, size_t n,
                        void (*fn)(void *arg, size_t t, size_t lo, size_t hi),
                        void *arg)
{
    /* chunks of at least 4096 elements: below, waking a thread costs
     * more than it saves */
    size_t k = m->pool ? m->threads : 1;
    pfor_job pj = {fn, arg, n, k};
    if (n / 4096 < k)
        pj.k = k = n / 4096 ? n / 4096 : 1;
    if (k > 1)
        pool_run(m->pool, k, pfor_task, &pj);
    else
        fn(arg, 0, 0, n);
}
