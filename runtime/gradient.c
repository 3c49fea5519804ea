/* gradient.c - backward passes: the log-likelihood gradient (training on
 * data) and the sampling direction's (fits), summed over the threads. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ctx.h"
#include "model_impl.h"
#include "vec.h"

/* The threads' gradient accumulators are zero before a backward pass:
 * the reduction clears them as it reads them; only a failed pass leaves
 * them dirty. */
static void clear_tgrad(flow_model *m)
{
    if (m->tgrad && m->tgrad_dirty)
        memset(m->tgrad, 0, (m->threads - 1) * m->n_params * sizeof *m->tgrad);
    m->tgrad_dirty = 0;
}

typedef struct reduce_job {
    flow_model *m;
    flow_real *grad;
} reduce_job;

/* grad += tgrad[0] + tgrad[1] + ... on [lo, hi), in thread order for
 * every parameter: the same bits as a serial sum; each accumulator
 * zeroed once read. */
FLOW_VECTORIZE static void reduce_task(void *arg, size_t t, size_t lo,
                                       size_t hi)
{
    reduce_job *rj = arg;
    flow_model *m = rj->m;
    size_t np = m->n_params;
    (void)t;
    for (size_t u = 1; u < m->threads; u++) {
        flow_real *restrict g = m->tgrad + (u - 1) * np;
        flow_real *restrict out = rj->grad;
        for (size_t q = lo; q < hi; q++)
            out[q] += g[q];
        memset(g + lo, 0, (hi - lo) * sizeof *g);
    }
}

static void zero_task(void *arg, size_t t, size_t lo, size_t hi)
{
    (void)t;
    memset((flow_real *)arg + lo, 0, (hi - lo) * sizeof(flow_real));
}

/* grad = 0 on the model's threads (a serial memset of a 1.8M-parameter
 * MAF's gradient was a visible part of a 2-thread training step). */
static void zero_grad(flow_model *m, flow_real *grad)
{
    model_parallel_for(m, m->n_params, zero_task, grad);
}

/* After a backward pass: the threads' gradients summed (reduce_task),
 * then each layer's finish_grad. */
static int finish_gradients(flow_model *m, size_t n, const flow_real *c,
                            flow_real *grad)
{
    if (m->tgrad && m->tgrad_dirty) {
        reduce_job rj = {m, grad};
        model_parallel_for(m, m->n_params, reduce_task, &rj);
        m->tgrad_dirty = 0;
    }
    return exec_batch_all(m, n, 1, c, grad);
}

/* The backward job that starts at layer i: layer i and those next to it
 * that can share its job (exec_joinable), in the backward's order.  The
 * density direction's (JOB_FORWARD_BACKWARD) goes from i down, layer e
 * mapping act[e] to act[e + 1]; the sampling direction's
 * (JOB_INVERSE_BACKWARD) from i up, layer e mapping act[e + 1] to act[e].
 * *g holds the gradient going in, and *g, *gnext swap at every layer as
 * the callers' loops swap them at a node.  *end: the job's last layer,
 * set once the job is built; then it runs. */
static int backward_job(job *j, size_t i, flow_real **g, flow_real **gnext,
                        size_t *end)
{
    flow_model *m = j->m;
    int inv = j->kind == JOB_INVERSE_BACKWARD;
    size_t e = i;
    for (;;) {
        node *nl = &m->nodes[e], *nx;
        flow_real *t;
        if (inv ? !(nl->desc.flags & FLOW_LAYER_BACKWARD_INVERSE)
                      || !nl->type->inverse_backward
                : !(nl->desc.flags & FLOW_LAYER_BACKWARD_FORWARD)
                      || !nl->type->forward_backward)
            return model_error(m, FLOW_ERR_UNSUPPORTED, inv
                               ? "%s (%s): layer has no backward for its "
                                 "inverse"
                               : "%s (%s): layer cannot be trained (no "
                                 "backward)", nl->label, nl->file);
        m->steps[inv ? e - i : i - e] =
            (job_step){.nd = nl, .in = m->act[inv ? e + 1 : e],
                       .out = m->act[inv ? e : e + 1], .dout = *g,
                       .din = *gnext};
        t = *g;
        *g = *gnext;
        *gnext = t;
        if (inv ? e + 1 == m->n_nodes : e == 0)
            break;
        nx = inv ? nl + 1 : nl - 1;
        if (nx->kind != NODE_LAYER || !exec_joinable(m, nx, j->n)
            || !exec_joinable(m, nl, j->n))
            break;
        e = inv ? e + 1 : e - 1;
    }
    j->steps = m->steps;
    j->n_steps = (inv ? e - i : i - e) + 1;
    *end = e;
    if (!m->blk_rows)       /* the block pass writes the blocks' slots */
        m->tgrad_dirty = 1;
    return exec_run_job(j, inv ? "inverse backward" : "backward");
}

int flow_model_loglik_grad(flow_model *m, size_t n, const flow_real *x,
                           const flow_real *c, double *mean_logp,
                           flow_real *grad)
{
    double total = 0;
    int rc = model_loglik_grad_w(m, n, x, c, 1.0 / (double)n, &total, grad);
    if (rc == FLOW_OK && mean_logp)
        *mean_logp = total / (double)n;
    return rc;
}

int model_loglik_grad_w(flow_model *m, size_t n, const flow_real *x,
                        const flow_real *c, double weight, double *sum_logp,
                        flow_real *grad)
{
    flow_real w, *dz, *dprev;
    double total = 0;
    int rc;

    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK
        || (rc = exec_forward(m, n, x, c, m->zbuf, 0, EXEC_TAPE)) != FLOW_OK)
        return rc;
    w = (flow_real)weight;
    memcpy(m->ld, m->ld_sum, n * sizeof *m->ld);
    if ((rc = exec_add_base_logpdf(m, n, m->zbuf, m->ld)) != FLOW_OK)
        return rc;
    for (size_t r = 0; r < n; r++) {
        total += m->ld[r];
        m->ones[r] = w;             /* dL/dlogdet and dL/dlogp_base */
    }
    zero_grad(m, grad);
    clear_tgrad(m);
    /* d mean / d z_final, and the final base's parameter gradient */
    dz = m->g0;
    dprev = m->g1;
    exec_gather_cols(n, m->dim, m->zbuf, m->z_final, m->base.dim, m->t0);
    if (base_grad(&m->base, m->params + m->base_off, n, m->t0, m->ones, dz,
                  grad + m->base_off) != FLOW_OK)
        return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                           "gradient failed");
    for (size_t i = m->n_nodes; i-- > 0;) {
        node *nd = &m->nodes[i];
        flow_real *t;
        if (nd->kind == NODE_EXIT) {
            /* d/d(input) = [base gradient of the exit's part, dz of rest] */
            for (size_t r = n; r-- > 0;)
                memmove(dprev + r * nd->in_dim + nd->k, dz + r * nd->out_dim,
                        nd->out_dim * sizeof *dz);
            exec_gather_cols(n, m->dim, m->zbuf, nd->z_off, nd->k, m->t0);
            if (base_grad(&nd->base, m->params + nd->bp_off, n, m->t0,
                          m->ones, m->t1, grad + nd->bp_off) != FLOW_OK)
                return model_error(m, FLOW_ERR_NUMERIC, "exit %s: base "
                                   "gradient failed", nd->name);
            for (size_t r = 0; r < n; r++)
                memcpy(dprev + r * nd->in_dim, m->t1 + r * nd->k,
                       nd->k * sizeof *dprev);
        } else {
            job j = {.m = m, .kind = JOB_FORWARD_BACKWARD, .n = n,
                     .cv = c, .dld = m->ones, .grad = grad};
            size_t lo;      /* the job: layers i down to lo */
            if ((rc = backward_job(&j, i, &dz, &dprev, &lo)) != FLOW_OK)
                return rc;
            i = lo;             /* the loop's i-- moves on to lo - 1 */
            continue;
        }
        t = dz;
        dz = dprev;
        dprev = t;
    }
    if ((rc = finish_gradients(m, n, c, grad)) != FLOW_OK)
        return rc;
    if (sum_logp)
        *sum_logp = total;
    return FLOW_OK;
}

/* The sampling direction's backward after exec_inverse(EXEC_TAPE) of n
 * rows, from dL/dx in g (n x dim; gnext the other gradient buffer) and
 * dL/dlogdet in m->ones: the inverse ran nodes last to first, its
 * backward runs first to last, node i mapping act[i + 1] (latent side) to
 * act[i] (data side), the layers' parameter gradients into grad (in the
 * block pass, the blocks' slots); dz (may be NULL) gets dL/dz. */
static int inverse_backward(flow_model *m, size_t n, const flow_real *c,
                            flow_real *grad, flow_real *g, flow_real *gnext,
                            flow_real *dz)
{
    flow_real *t;
    int rc;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            for (size_t r = 0; r < n; r++) {
                if (dz)
                    memcpy(dz + r * m->dim + nd->z_off, g + r * nd->in_dim,
                           nd->k * sizeof *dz);
                memcpy(gnext + r * nd->out_dim, g + r * nd->in_dim + nd->k,
                       nd->out_dim * sizeof *g);
            }
        } else {
            job j = {.m = m, .kind = JOB_INVERSE_BACKWARD, .n = n, .cv = c,
                     .dld = m->ones, .grad = grad};
            size_t hi;      /* the job: layers i up to hi */
            if ((rc = backward_job(&j, i, &g, &gnext, &hi)) != FLOW_OK)
                return rc;
            i = hi;             /* the loop's i++ moves on to hi + 1 */
            continue;
        }
        t = g;
        g = gnext;
        gnext = t;
    }
    if (dz) {
        size_t df = model_out_dim(m);
        for (size_t r = 0; r < n; r++)
            memcpy(dz + r * m->dim + m->z_final, g + r * df,
                   df * sizeof *dz);
    }
    return FLOW_OK;
}

/* The sampling direction's backward with the loss decided in between:
 * after x = f^-1(z) (logdet: log|det df^-1/dz|), mid() writes dL/dx and
 * dL/dlogdet from them. */
int model_inverse_grad_mid(flow_model *m, size_t n, const flow_real *z,
                           const flow_real *c, model_mid_fn mid, void *arg,
                           flow_real *grad, flow_real *dz)
{
    int rc;

    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = exec_grow_batch(m, n)) != FLOW_OK
        || (rc = exec_inverse(m, n, z, c, m->zbuf, EXEC_TAPE)) != FLOW_OK)
        return rc;
    if ((rc = mid(arg, n, m->zbuf, m->ld_sum, m->g0, m->ones)) != FLOW_OK)
        return rc;
    zero_grad(m, grad);
    clear_tgrad(m);
    if ((rc = inverse_backward(m, n, c, grad, m->g0, m->g1, dz)) != FLOW_OK)
        return rc;
    return finish_gradients(m, n, c, grad);
}

typedef struct given_grads {
    size_t dim;
    const flow_real *dx, *dlogdet;
} given_grads;

static int copy_given(void *arg, size_t n, const flow_real *x,
                      const flow_real *logdet, flow_real *dx,
                      flow_real *dlogdet)
{
    const given_grads *gg = arg;
    (void)x, (void)logdet;
    memcpy(dx, gg->dx, n * gg->dim * sizeof *dx);
    for (size_t r = 0; r < n; r++)
        dlogdet[r] = gg->dlogdet ? gg->dlogdet[r] : 0;
    return FLOW_OK;
}

int flow_model_inverse_grad(flow_model *m, size_t n, const flow_real *z,
                            const flow_real *c, const flow_real *dx,
                            const flow_real *dlogdet, flow_real *grad,
                            flow_real *dz)
{
    given_grads gg = {m->dim, dx, dlogdet};
    return model_inverse_grad_mid(m, n, z, c, copy_given, &gg, grad, dz);
}

/* ------------------------------------------------------------ block pass */

static int grow_block_rng(flow_model *m, size_t nb)
{
    flow_rng *r;
    if (nb <= m->blk_rng_cap)
        return FLOW_OK;
    if (!(r = realloc(m->blk_rng_buf, nb * sizeof *r)))
        return model_error(m, FLOW_ERR_NOMEM, "out of memory for %zu block "
                           "streams", nb);
    m->blk_rng_buf = r;
    m->blk_rng_cap = nb;
    return FLOW_OK;
}

/* The bases' ranges of the blocks' gradient slots set to 0: the bases'
 * parameters follow the layers' (model.c), and each layer's range of a
 * slot is cleared by its backward job (job_rows). */
static void clear_base_slots(flow_model *m, flow_real *bgrad)
{
    size_t np = m->n_params, pbase = m->base_off;
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_EXIT && m->nodes[i].bp_off < pbase)
            pbase = m->nodes[i].bp_off;
    for (size_t k = 0; k < m->blk_n; k++)
        memset(bgrad + k * np + pbase, 0, (np - pbase) * sizeof *bgrad);
}

/* The block pass's forward, base densities and backward (m->blk_* set):
 * as model_loglik_grad_w up to the layers' finish_grad, each base and
 * layer call on one block's rows with that block's gradient slot, a
 * whole-batch layer's on all of them.
 * On failure, *fwd_from and *bwd_from say which whole-batch calls the
 * other processes still make (exec_blocks_drain). */
static int block_pass(flow_model *m, size_t n, const flow_real *x,
                      const flow_real *c, double weight, double *sum_logp,
                      flow_real *bgrad, size_t *fwd_from, size_t *bwd_from)
{
    size_t R = m->blk_rows, nb = m->blk_n, np = m->n_params;
    size_t bd = m->base.dim;
    flow_real w = (flow_real)weight, *dz, *dprev, *t;
    int rc;

    m->blk_fwd_end = 0;
    if ((rc = exec_forward(m, n, x, c, m->zbuf, 0, EXEC_TAPE)) != FLOW_OK) {
        *fwd_from = m->blk_fwd_end;
        return rc;
    }
    *fwd_from = m->n_nodes;
    memcpy(m->ld, m->ld_sum, n * sizeof *m->ld);
    if ((rc = exec_add_base_logpdf(m, n, m->zbuf, m->ld)) != FLOW_OK)
        return rc;
    for (size_t k = 0; k < nb; k++) {
        double total = 0;
        for (size_t r = k * R; r < n && r < (k + 1) * R; r++) {
            total += m->ld[r];
            m->ones[r] = w;         /* dL/dlogdet and dL/dlogp_base */
        }
        sum_logp[k] = total;
    }
    clear_base_slots(m, bgrad);
    dz = m->g0;
    dprev = m->g1;
    exec_gather_cols(n, m->dim, m->zbuf, m->z_final, bd, m->t0);
    for (size_t k = 0; k < nb; k++) {
        size_t r0 = k * R, nr = n - r0 < R ? n - r0 : R;
        if (base_grad(&m->base, m->params + m->base_off, nr, m->t0 + r0 * bd,
                      m->ones + r0, dz + r0 * bd,
                      bgrad + k * np + m->base_off) != FLOW_OK)
            return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                               "gradient failed");
    }
    for (size_t i = m->n_nodes; i-- > 0;) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            size_t ek = nd->k;
            for (size_t r = n; r-- > 0;)
                memmove(dprev + r * nd->in_dim + ek, dz + r * nd->out_dim,
                        nd->out_dim * sizeof *dz);
            exec_gather_cols(n, m->dim, m->zbuf, nd->z_off, ek, m->t0);
            for (size_t k = 0; k < nb; k++) {
                size_t r0 = k * R, nr = n - r0 < R ? n - r0 : R;
                if (base_grad(&nd->base, m->params + nd->bp_off, nr,
                              m->t0 + r0 * ek, m->ones + r0,
                              m->t1 + r0 * ek,
                              bgrad + k * np + nd->bp_off) != FLOW_OK)
                    return model_error(m, FLOW_ERR_NUMERIC, "exit %s: base "
                                       "gradient failed", nd->name);
            }
            for (size_t r = 0; r < n; r++)
                memcpy(dprev + r * nd->in_dim, m->t1 + r * ek,
                       ek * sizeof *dprev);
        } else {
            job j = {.m = m, .kind = JOB_FORWARD_BACKWARD, .n = n, .cv = c,
                     .dld = m->ones, .grad = bgrad};
            size_t lo = SIZE_MAX;   /* the job: layers i down to lo */
            rc = backward_job(&j, i, &dz, &dprev, &lo);
            if (lo != SIZE_MAX)     /* built: it ran, or failed running */
                *bwd_from = lo;
            if (rc != FLOW_OK)
                return rc;
            i = lo;
            continue;
        }
        t = dz;
        dz = dprev;
        dprev = t;
    }
    return FLOW_OK;
}

int model_blocks_finish(flow_model *m, size_t n, flow_real *grad)
{
    return exec_batch_all(m, n, 1, NULL, grad);
}

int exec_block_sum(const flow_call *c, size_t count, const double *partials,
                   double *sums)
{
    flow_model *m = c->block_ctx;
    size_t nbl = m->blk_rows ? (c->n + m->blk_rows - 1) / m->blk_rows : 0;
    size_t size = m->blk_comm ? (size_t)flow_comm_size(m->blk_comm) : 1;
    size_t per = (m->blk_total + size - 1) / size * count;
    double *all = NULL, *mine = NULL;
    int rc = FLOW_OK;
    memset(sums, 0, count * sizeof *sums);
    if (!m->blk_comm) {
        for (size_t k = 0; k < nbl; k++)
            for (size_t i = 0; i < count; i++)
                sums[i] += partials[k * count + i];
        return FLOW_OK;
    }
    /* every process's partials, padded to the most blocks one holds */
    if (per && (!(mine = calloc(per, sizeof *mine))
                || !(all = malloc(size * per * sizeof *all)))) {
        free(mine);
        snprintf(c->err, c->err_cap, "out of memory for the sums of %zu "
                 "blocks", m->blk_total);
        return FLOW_ERR_NOMEM;
    }
    if (nbl)
        memcpy(mine, partials, nbl * count * sizeof *mine);
    if (per && (rc = comm_allgather(m->blk_comm, mine, all,
                                    per * sizeof *all)) != FLOW_OK)
        snprintf(c->err, c->err_cap, "%s", flow_errmsg(m->ctx));
    for (size_t q = 0; rc == FLOW_OK && q < size; q++) {
        size_t lo = q * m->blk_total / size, hi = (q + 1) * m->blk_total / size;
        for (size_t k = lo; k < hi; k++)
            for (size_t i = 0; i < count; i++)
                sums[i] += all[q * per + (k - lo) * count + i];
    }
    free(mine);
    free(all);
    return rc;
}

/* The block pass's state for n rows of this process in blocks of `rows`
 * (m->blk_*), checked against its share of a batch of `batch` rows on
 * comm (NULL: all of them, batch = n); streams (6 words a block, as
 * flow_model_set_rng takes them) copied into the blocks' streams. */
static int blocks_begin(flow_model *m, size_t n, size_t rows,
                        const uint64_t *streams, flow_comm *comm,
                        size_t batch, flow_real *bgrad)
{
    size_t nb, size = comm ? (size_t)flow_comm_size(comm) : 1, rank, total;
    size_t lo, hi, want;
    int rc;

    if (rows == 0)
        return model_error(m, FLOW_ERR_INVAL, "block pass: blocks of 0 "
                           "rows");
    if (!comm)
        batch = n;
    nb = (n + rows - 1) / rows;
    total = (batch + rows - 1) / rows;
    rank = comm ? (size_t)flow_comm_rank(comm) : 0;
    lo = rank * total / size;
    hi = (rank + 1) * total / size;
    want = hi > lo ? (hi * rows < batch ? hi * rows : batch) - lo * rows : 0;
    if (n != want)
        return model_error(m, FLOW_ERR_INVAL, "block pass: %zu rows, but "
                           "process %zu of %zu holds %zu of a batch of %zu",
                           n, rank, size, want, batch);
    m->blk_rows = rows;
    m->blk_n = nb;
    m->blk_grad = bgrad;
    m->blk_rng = NULL;
    m->blk_comm = comm;
    m->blk_first = total * rank / size;
    m->blk_total = total;
    if (n == 0)
        return FLOW_OK;
    if ((rc = model_check_rows(m, n)) != FLOW_OK
        || (rc = exec_grow_batch(m, n)) != FLOW_OK)
        return rc;
    if (streams) {
        if ((rc = grow_block_rng(m, nb)) != FLOW_OK)
            return rc;
        for (size_t k = 0; k < nb; k++) {
            flow_rng *r = &m->blk_rng_buf[k];
            const uint64_t *s = streams + 6 * k;
            memcpy(r->s, s, 4 * sizeof *s);
            r->has_spare = s[4] != 0;
            memcpy(&r->spare, &s[5], sizeof s[5]);
        }
        m->blk_rng = m->blk_rng_buf;
    }
    return FLOW_OK;
}

static void blocks_end(flow_model *m)
{
    m->blk_rows = m->blk_n = 0;
    m->blk_grad = NULL;
    m->blk_rng = NULL;
    m->blk_comm = NULL;
}

int model_loglik_grad_blocks(flow_model *m, size_t n, const flow_real *x,
                             const flow_real *c, size_t rows, double weight,
                             const uint64_t *streams, flow_comm *comm,
                             size_t batch, double *sum_logp,
                             flow_real *bgrad)
{
    size_t fwd_from = 0, bwd_from = m->n_nodes;
    int rc, whole = model_has_whole_batch(m);

    ctx_clear_error(m->ctx);
    if ((rc = blocks_begin(m, n, rows, streams, comm, batch, bgrad))
        != FLOW_OK) {
        if (!m->blk_rows)       /* the call itself is wrong */
            return rc;
        goto fail;
    }
    if (n == 0) {
        /* no block here: the others' whole-batch sums still need this
         * process's (empty) share, and model_blocks_finish the layers'
         * per-batch state */
        if (whole && comm)
            exec_blocks_drain(m, 0, m->n_nodes);
        rc = exec_batch_all(m, 0, 0, NULL, NULL);
        goto done;
    }
    if (!streams && model_has_stochastic(m)) {
        rc = model_error(m, FLOW_ERR_INVAL, "block pass: a layer draws "
                         "random numbers, and no streams were given");
        goto fail;
    }
    rc = block_pass(m, n, x, c, weight, sum_logp, bgrad, &fwd_from,
                    &bwd_from);
    if (rc == FLOW_OK)
        goto done;
fail:
    /* the whole-batch calls the other processes still make */
    if (whole && comm) {
        char keep[sizeof m->err];
        memcpy(keep, m->err, sizeof keep);
        exec_blocks_drain(m, fwd_from, bwd_from);
        memcpy(m->err, keep, sizeof keep);
    }
done:
    blocks_end(m);
    return rc;
}

int model_inverse_grad_blocks(flow_model *m, size_t n, size_t rows,
                              const uint64_t *streams, flow_comm *comm,
                              size_t batch, flow_real *z, flow_real *lpb,
                              model_block_mid_fn mid, void *arg,
                              flow_real *bgrad)
{
    flow_rng keep = m->rng;
    size_t d = m->dim;
    int rc;

    ctx_clear_error(m->ctx);
    if (!streams)
        return model_error(m, FLOW_ERR_INVAL, "inverse block pass: no "
                           "streams to draw the blocks' latents from");
    if ((rc = blocks_begin(m, n, rows, streams, comm, batch, bgrad))
        != FLOW_OK)
        goto done;
    if (n == 0) {               /* model_blocks_finish's per-batch state */
        rc = exec_batch_all(m, 0, 0, NULL, NULL);
        goto done;
    }
    /* block k's latents from its stream, which its layers' draws then
     * continue (as one pass over that block alone would draw them) */
    for (size_t k = 0; k < m->blk_n && rc == FLOW_OK; k++) {
        size_t r0 = k * rows, nr = n - r0 < rows ? n - r0 : rows;
        m->rng = m->blk_rng_buf[k];
        rc = flow_model_sample_latent(m, nr, z + r0 * d, lpb + r0);
        m->blk_rng_buf[k] = m->rng;
    }
    m->rng = keep;
    if (rc != FLOW_OK
        || (rc = exec_inverse(m, n, z, NULL, m->zbuf, EXEC_TAPE)) != FLOW_OK)
        goto done;
    for (size_t k = 0; k < m->blk_n && rc == FLOW_OK; k++) {
        size_t r0 = k * rows, nr = n - r0 < rows ? n - r0 : rows;
        rc = mid(arg, k, r0, nr, m->zbuf + r0 * d, m->ld_sum + r0,
                 m->g0 + r0 * d, m->ones + r0);
    }
    if (rc != FLOW_OK)
        goto done;
    clear_base_slots(m, bgrad);
    rc = inverse_backward(m, n, NULL, bgrad, m->g0, m->g1, NULL);
done:
    m->rng = keep;
    blocks_end(m);
    return rc;
}
