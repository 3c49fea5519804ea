/* train.c - training: Adam, learning-rate schedules, clipping, seeded
 * shuffling, validation bookkeeping, resumable state; the objective is the
 * log-likelihood of data or the ELBO against a target (vi.c). */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model.h"
#include "rng.h"
#include "rsum.h"
#include "shard.h"
#include "train.h"
#include "vec.h"
#include "vi.h"

/* grad_norm2's chunk: parameters per partial sum */
#define NORM_CHUNK 16384

/* A flow_real's bits, and its exponent field (all ones: inf or NaN) */
#if FLOW_REAL_DOUBLE
typedef uint64_t real_bits;
#define EXP_ALL ((real_bits)0x7ff0000000000000u)
#else
typedef uint32_t real_bits;
#define EXP_ALL ((real_bits)0x7f800000u)
#endif

struct flow_trainer {
    flow_model *m;
    flow_train_config cfg;
    const flow_real *x, *c;
    size_t n, dim, cdim;
    size_t np;
    flow_real *grad, *am, *av, *best;
    flow_real *bx, *bc;         /* gathered batch */
    uint32_t *perm;             /* row order of the current epoch */
    flow_rng rng;               /* shuffle stream */
    flow_train_state st;
    uint64_t skipped_run;
    flow_target *target;        /* ELBO against it instead of data */
    flow_comm *comm;            /* set: the reproducible block sum */
    rsum rs;                    /* its sums: gradient, then log-density */
    flow_real *bgrad;           /* this process's blocks' gradients */
    double *blogp;              /* and their log-density sums */
    size_t max_local;           /* blocks of a batch one process takes */
    int stochastic;             /* a layer draws in its passes */
    uint64_t *streams;          /* the blocks' streams, 6 words each */
    /* a share of the rows (flow_trainer_new_shard): x and c hold the
     * rows [offs[rank], offs[rank + 1]) of n */
    size_t *offs;               /* per process, then n */
    size_t *place;              /* the batch's blocks: per process, then b */
    shard_buf sb;               /* the exchange's buffers */
    /* one process without a communicator: the batch in blocks of
     * lrows rows (train_block_rows), the slots added in block order */
    size_t lrows, lslots;       /* block rows; slots allocated */
    flow_real *lgrad;           /* the blocks' gradients, lslots of np */
    double *llogp;              /* and their log-density sums */
    uint64_t *lstreams;         /* their streams when a layer draws */
    double *npart;              /* grad_norm2's partials, one per chunk */
    /* whether local_sum's sums were all finite (1, 0), or -1 when it
     * did not look (a communicator's sum) */
    int sum_finite;
    /* the gradient's support (model_support): the passes over the
     * parameters skip the rest, whose gradient is 0 at every step; or,
     * with train_set_full_passes (tests), the one run full_run of every
     * parameter */
    const size_t *live, *live_pre;
    size_t n_runs, n_live;
    size_t full_run[2], full_pre[2];
};

void flow_train_config_default(flow_train_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->batch = 512;
    cfg->lr = 1e-3;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.999;
    cfg->adam_eps = 1e-8;
    cfg->schedule = FLOW_LR_CONSTANT;
    cfg->max_skipped = 10;
}

static void rng_save(const flow_rng *r, uint64_t out[6])
{
    memcpy(out, r->s, 4 * sizeof *out);
    out[4] = (uint64_t)r->has_spare;
    memcpy(&out[5], &r->spare, sizeof out[5]);
}

static void rng_load(flow_rng *r, const uint64_t in[6])
{
    memcpy(r->s, in, 4 * sizeof *in);
    r->has_spare = in[4] != 0;
    memcpy(&r->spare, &in[5], sizeof in[5]);
}

/* Fisher-Yates from the shuffle stream; the stream's state before the
 * shuffle is kept so a resumed run redraws the same order. */
static void new_epoch(flow_trainer *t)
{
    rng_save(&t->rng, t->st.epoch_rng);
    for (size_t i = 0; i < t->n; i++)
        t->perm[i] = (uint32_t)i;
    for (size_t i = t->n; i > 1; i--) {
        size_t j = (size_t)rng_below(&t->rng, i);
        uint32_t tmp = t->perm[i - 1];
        t->perm[i - 1] = t->perm[j];
        t->perm[j] = tmp;
    }
}

void flow_trainer_free(flow_trainer *t)
{
    if (!t)
        return;
    free(t->grad);
    free(t->am);
    free(t->av);
    free(t->best);
    free(t->bx);
    free(t->bc);
    free(t->perm);
    free(t->bgrad);
    free(t->blogp);
    free(t->streams);
    rsum_free(&t->rs);
    free(t->offs);
    free(t->place);
    shard_buf_free(&t->sb);
    free(t->lgrad);
    free(t->llogp);
    free(t->lstreams);
    free(t->npart);
    free(t);
}

/* The fields every caller's flow_train_config holds: those up to
 * max_skipped; the ones after it are taken when the caller's struct_size
 * covers them. */
#define CONFIG_REQUIRED \
    (offsetof(flow_train_config, max_skipped) + sizeof(size_t))
#define CONFIG_HAS(c, field) \
    ((c)->struct_size >= offsetof(flow_train_config, field) \
                         + sizeof((c)->field))

/* The caller's configuration as this library's struct in *out (the
 * defaults for the fields it does not have), checked. */
static int load_config(flow_ctx *ctx, const flow_train_config *cfg,
                       flow_train_config *out)
{
    if (!cfg)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "training configuration "
                              "not initialised (use "
                              "flow_train_config_default)");
    if (cfg->struct_size < CONFIG_REQUIRED)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "training configuration: "
                              "struct_size %u does not cover the required "
                              "fields (%zu bytes; initialise it with "
                              "flow_train_config_default)",
                              (unsigned)cfg->struct_size,
                              (size_t)CONFIG_REQUIRED);
    flow_train_config_default(out);
    memcpy(out, cfg, CONFIG_REQUIRED);
    out->struct_size = sizeof *out;
    if (CONFIG_HAS(cfg, anneal_steps))
        out->anneal_steps = cfg->anneal_steps;
    if (CONFIG_HAS(cfg, target))
        out->target = cfg->target;
    if (out->batch == 0 || !(out->lr > 0) || !(out->beta1 >= 0)
        || !(out->beta1 < 1) || !(out->beta2 >= 0) || !(out->beta2 < 1)
        || !(out->adam_eps > 0) || !(out->weight_decay >= 0)
        || !(out->clip_norm >= 0))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "invalid training "
                              "configuration (batch >= 1, lr > 0, 0 <= betas "
                              "< 1, eps > 0, weight decay >= 0, clip >= 0)");
    return FLOW_OK;
}

/* The optimiser state both objectives share. */
static flow_trainer *trainer_alloc(flow_model *m, const flow_train_config *cfg)
{
    size_t np = flow_model_num_params(m);
    flow_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->m = m;
    t->cfg = *cfg;
    t->dim = flow_model_dim(m);
    t->cdim = flow_model_context_dim(m);
    t->np = np;
    t->grad = calloc(np ? np : 1, sizeof *t->grad);
    t->am = calloc(np ? np : 1, sizeof *t->am);
    t->av = calloc(np ? np : 1, sizeof *t->av);
    t->best = calloc(np ? np : 1, sizeof *t->best);
    t->npart = calloc(np / NORM_CHUNK + 1, sizeof *t->npart);
    t->live = model_support(m, &t->n_runs, &t->n_live, &t->live_pre);
    t->st.best_score = -INFINITY;
    t->sum_finite = -1;
    rng_seed(&t->rng, cfg->seed);
    if (!t->grad || !t->am || !t->av || !t->best || !t->npart) {
        flow_trainer_free(t);
        return NULL;
    }
    return t;
}

/* A trainer fitting cfg->target: samples of the model, no data. */
static flow_trainer *trainer_new_target(flow_model *m,
                                        const flow_train_config *cfg)
{
    flow_trainer *t = trainer_alloc(m, cfg);
    if (!t) {
        flow_ctx_error(model_ctx(m), FLOW_ERR_NOMEM, "out of memory for "
                       "training");
        return NULL;
    }
    t->target = cfg->target;
    return t;
}

/* A trainer on n rows (checked), its first epoch's order drawn. */
static flow_trainer *trainer_new_rows(flow_model *m,
                                      const flow_train_config *k,
                                      const flow_real *x, const flow_real *c,
                                      size_t n)
{
    flow_trainer *t;
    size_t b;
    if (!(t = trainer_alloc(m, k)))
        goto nomem;
    t->x = x;
    t->c = c;
    t->n = n;
    b = k->batch < n ? k->batch : n;
    t->perm = malloc(n * sizeof *t->perm);
    if (b > SIZE_MAX / sizeof(flow_real) / (t->dim + t->cdim + 1))
        goto nomem;
    t->bx = malloc(b * t->dim * sizeof *t->bx);
    t->bc = t->cdim ? malloc(b * t->cdim * sizeof *t->bc) : NULL;
    if (!t->perm || !t->bx || (t->cdim && !t->bc))
        goto nomem;
    new_epoch(t);
    return t;
nomem:
    flow_trainer_free(t);
    flow_ctx_error(model_ctx(m), FLOW_ERR_NOMEM, "out of memory for "
                   "training");
    return NULL;
}

flow_trainer *flow_trainer_new(flow_model *m, const flow_train_config *cfg,
                               const flow_real *x, const flow_real *c,
                               size_t n)
{
    flow_ctx *ctx = model_ctx(m);
    flow_train_config k;

    if (load_config(ctx, cfg, &k) != FLOW_OK)
        return NULL;
    if (k.target) {
        if (x || c || n) {
            flow_ctx_error(ctx, FLOW_ERR_INVAL, "a trainer fits either data "
                           "or a target: with cfg->target, x and c must be "
                           "NULL and n 0 (got %zu rows)", n);
            return NULL;
        }
        return trainer_new_target(m, &k);
    }
    if (n == 0 || n > UINT32_MAX) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "training needs between 1 and %u "
                       "rows, got %zu", (unsigned)UINT32_MAX, n);
        return NULL;
    }
    if (flow_model_context_dim(m) && !c) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "the model is conditional: "
                       "training data need %zu context columns",
                       flow_model_context_dim(m));
        return NULL;
    }
    return trainer_new_rows(m, &k, x, c, n);
}

flow_trainer *flow_trainer_new_target(flow_model *m,
                                      const flow_train_config *cfg,
                                      flow_target *target)
{
    flow_ctx *ctx = model_ctx(m);
    flow_train_config k;
    if (load_config(ctx, cfg, &k) != FLOW_OK)
        return NULL;
    if (!target) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "no target to fit");
        return NULL;
    }
    k.target = target;
    return flow_trainer_new(m, &k, NULL, NULL, 0);
}

double flow_trainer_lr(const flow_trainer *t)
{
    double lr = t->cfg.lr, s = (double)t->st.step;
    if (t->cfg.warmup_steps && s < (double)t->cfg.warmup_steps)
        return lr * (s + 1) / (double)t->cfg.warmup_steps;
    if (t->cfg.schedule == FLOW_LR_COSINE && t->cfg.total_steps) {
        double T = (double)t->cfg.total_steps, w = (double)t->cfg.warmup_steps;
        double p = T > w ? (s - w) / (T - w) : 1.0;
        if (p > 1)
            p = 1;
        return lr * 0.5 * (1.0 + cos(M_PI * p));
    }
    return lr;
}

/* Adam update, Kingma & Ba 2015, Algorithm 1, with bias correction:
 * m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
 * p -= lr (m / c1) / (sqrt(v / c2) + eps), c_i = 1 - b_i^k.  One pass in
 * the working precision, vectorised (it was a tenth of a RealNVP step in
 * double, bench/README.md, "Coupling flows"); the step constants in
 * double. */
#if FLOW_REAL_DOUBLE
#define REAL_SQRT sqrt
#define REAL_FABS fabs
#define REAL_MIN DBL_MIN
#else
#define REAL_SQRT sqrtf
#define REAL_FABS fabsf
#define REAL_MIN FLT_MIN
#endif

/* Subnormal moments are stored as zero.  A parameter whose gradient is
 * exactly zero step after step (a ReLU unit dead on the data: half of
 * realnvp2d's weights) has m decay by beta1 per step into the subnormal
 * range after ~700 steps, and arithmetic on subnormals is microcoded:
 * Adam's loop ran 4x slower and a realnvp2d step half as fast by step
 * 1500 (bench/README.md, "Small-matrix GEMM path").  The flushed values
 * are below REAL_MIN, so the update they would give, at most
 * lr / c1 * REAL_MIN / eps, is far below half an ulp of any parameter
 * that is not itself almost zero. */
#define FLUSH_SUB(x) (REAL_FABS(x) < REAL_MIN ? 0 : (x))

FLOW_VECTORIZE static void adam_loop(size_t np, flow_real *restrict p,
                                     const flow_real *restrict grad,
                                     flow_real *restrict am,
                                     flow_real *restrict av, flow_real b1,
                                     flow_real b2, flow_real wd,
                                     flow_real step, flow_real inv_c2,
                                     flow_real eps)
{
    const flow_real a1 = 1 - b1, a2 = 1 - b2;
    for (size_t i = 0; i < np; i++) {
        /* descend the negative log-likelihood: g = -d(mean log p)/dp */
        flow_real g = wd * p[i] - grad[i];
        flow_real mi = FLUSH_SUB(b1 * am[i] + a1 * g);
        flow_real vi = FLUSH_SUB(b2 * av[i] + a2 * (g * g));
        am[i] = mi;
        av[i] = vi;
        p[i] -= step * mi / (REAL_SQRT(vi * inv_c2) + eps);
    }
}

/* The live parameters [lo, hi) (their indices among the live ones, as
 * model_parallel_for splits t->n_live) as pieces of the support's runs,
 * in increasing order: live_begin, then live_next until it returns 0. */
typedef struct live_iter {
    const flow_trainer *t;
    size_t r, j, hi;
} live_iter;

static void live_begin(live_iter *it, const flow_trainer *t, size_t lo,
                       size_t hi)
{
    it->t = t;
    it->j = lo;
    it->hi = hi;
    it->r = lo < hi ? model_support_run(t->live_pre, t->n_runs, lo) : 0;
}

static int live_next(live_iter *it, size_t *off, size_t *len)
{
    const flow_trainer *t = it->t;
    size_t end;
    if (it->j >= it->hi)
        return 0;
    end = t->live_pre[it->r + 1] < it->hi ? t->live_pre[it->r + 1] : it->hi;
    *off = t->live[2 * it->r] + (it->j - t->live_pre[it->r]);
    *len = end - it->j;
    it->j = end;
    it->r++;
    return 1;
}

/* 1 when the passes run over every parameter (train_set_full_passes) */
static int full_passes(const flow_trainer *t)
{
    return t->live == t->full_run;
}

#if !FLOW_REAL_DOUBLE && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define ADAM_WIDE 1
#define ADAM_TARGET __attribute__((target("avx512f")))

/* adam_loop 16 lanes at a time (the portable build vectorises it 4 wide,
 * and its square roots and divisions made it a seventh of a maf64 step
 * on 2 threads), the last n % 16 masked: every operation is the scalar
 * loop's, one IEEE operation per lane in its order (no FMA: the build
 * does not contract, -std=c11), FLUSH_SUB a compare and a blend, so the
 * bits are the scalar loop's. */
static ADAM_TARGET void adam_loop16(size_t np, float *restrict p,
                                    const float *restrict grad,
                                    float *restrict am, float *restrict av,
                                    float b1, float b2, float wd, float step,
                                    float inv_c2, float eps)
{
    const float a1 = 1 - b1, a2 = 1 - b2;
    const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2);
    const __m512 va1 = _mm512_set1_ps(a1), va2 = _mm512_set1_ps(a2);
    const __m512 vwd = _mm512_set1_ps(wd), vst = _mm512_set1_ps(step);
    const __m512 vic = _mm512_set1_ps(inv_c2), veps = _mm512_set1_ps(eps);
    const __m512 vmin = _mm512_set1_ps(FLT_MIN);
    const __m512i vabs = _mm512_set1_epi32(0x7fffffff);
    for (size_t i = 0; i < np; i += 16) {
        __mmask16 k = np - i >= 16 ? (__mmask16)0xffff
                                   : (__mmask16)((1u << (np - i)) - 1);
        __m512 pv = _mm512_maskz_loadu_ps(k, p + i);
        __m512 gv = _mm512_maskz_loadu_ps(k, grad + i);
        __m512 mv = _mm512_maskz_loadu_ps(k, am + i);
        __m512 vv = _mm512_maskz_loadu_ps(k, av + i);
        __m512 g = _mm512_sub_ps(_mm512_mul_ps(vwd, pv), gv);
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, mv),
                                  _mm512_mul_ps(va1, g));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, vv),
                                  _mm512_mul_ps(va2, _mm512_mul_ps(g, g)));
        __m512 d;
        /* FLUSH_SUB: |x| < FLT_MIN (false for NaN) -> +0 */
        __mmask16 sm = _mm512_cmp_ps_mask(
            _mm512_castsi512_ps(
                _mm512_and_si512(_mm512_castps_si512(mi), vabs)),
            vmin, _CMP_LT_OQ);
        __mmask16 sv = _mm512_cmp_ps_mask(
            _mm512_castsi512_ps(
                _mm512_and_si512(_mm512_castps_si512(vi), vabs)),
            vmin, _CMP_LT_OQ);
        mi = _mm512_mask_mov_ps(mi, sm, _mm512_setzero_ps());
        vi = _mm512_mask_mov_ps(vi, sv, _mm512_setzero_ps());
        d = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, vic)), veps);
        pv = _mm512_sub_ps(pv, _mm512_div_ps(_mm512_mul_ps(vst, mi), d));
        _mm512_mask_storeu_ps(am + i, k, mi);
        _mm512_mask_storeu_ps(av + i, k, vi);
        _mm512_mask_storeu_ps(p + i, k, pv);
    }
}

/* 1 when adam_loop16 runs here (train_set_adam_wide caps it) */
static int adam_wide_cap = 1;

static int adam_wide(void)
{
    static int have = -1;
    if (have < 0)
        have = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return have && adam_wide_cap;
}
#else
#define ADAM_WIDE 0
static int adam_wide(void) { return 0; }
#endif

/* adam_loop, 16 lanes wide where the CPU has AVX-512 (the same bits) */
static void adam_run(size_t np, flow_real *p, const flow_real *grad,
                     flow_real *am, flow_real *av, flow_real b1,
                     flow_real b2, flow_real wd, flow_real step,
                     flow_real inv_c2, flow_real eps)
{
#if ADAM_WIDE
    if (adam_wide()) {
        adam_loop16(np, p, grad, am, av, b1, b2, wd, step, inv_c2, eps);
        return;
    }
#endif
    adam_loop(np, p, grad, am, av, b1, b2, wd, step, inv_c2, eps);
}

void train_adam_kernel(int wide, size_t np, flow_real *p,
                       const flow_real *grad, flow_real *am, flow_real *av,
                       double b1, double b2, double wd, double step,
                       double inv_c2, double eps)
{
#if ADAM_WIDE
    int keep = adam_wide_cap;
    adam_wide_cap = wide;
#endif
    (void)wide;
    adam_run(np, p, grad, am, av, (flow_real)b1, (flow_real)b2,
             (flow_real)wd, (flow_real)step, (flow_real)inv_c2,
             (flow_real)eps);
#if ADAM_WIDE
    adam_wide_cap = keep;
#endif
}

int train_adam_wide(void)
{
    return adam_wide();
}

typedef struct adam_job {
    flow_trainer *t;
    flow_real *p;
    flow_real b1, b2, wd, step, inv_c2, eps;
} adam_job;

static void adam_task(void *arg, size_t th, size_t lo, size_t hi)
{
    adam_job *a = arg;
    flow_trainer *t = a->t;
    live_iter it;
    size_t off, len;
    (void)th;
    live_begin(&it, t, lo, hi);
    while (live_next(&it, &off, &len))
        adam_run(len, a->p + off, t->grad + off, t->am + off, t->av + off,
                 a->b1, a->b2, a->wd, a->step, a->inv_c2, a->eps);
}

/* On the model's threads (model_parallel_for): elementwise, so the same
 * bits for any split.  Over the support only: a parameter outside it has
 * gradient 0 at every step, so it keeps its value and its moments stay
 * 0 (no weight decay is applied to it either). */
static void adam_update(flow_trainer *t, double lr)
{
    double b1 = t->cfg.beta1, b2 = t->cfg.beta2;
    double k = (double)t->st.step + 1;
    double c1 = 1.0 - pow(b1, k), c2 = 1.0 - pow(b2, k);
    adam_job a = {t, flow_model_params(t->m), (flow_real)b1, (flow_real)b2,
                  (flow_real)t->cfg.weight_decay, (flow_real)(lr / c1),
                  (flow_real)(1.0 / c2), (flow_real)t->cfg.adam_eps};
    model_parallel_for(t->m, t->n_live, adam_task, &a);
}

/* The squared norm in fixed chunks of NORM_CHUNK parameters, each chunk's
 * norm2_live stored in its own partial, and the partials added in chunk
 * order: the same bits for any thread count, since the threads' ranges
 * only decide which thread computes a chunk (the one whose range holds
 * the chunk's first parameter). */

/* The first run of the support that ends past parameter a. */
static size_t support_from(const flow_trainer *t, size_t a)
{
    size_t lo = 0, hi = t->n_runs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->live[2 * mid] + t->live[2 * mid + 1] <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Squared norm of the chunk [a, a + b) (a a multiple of 8) in double, in
 * 8 interleaved partial sums so that it vectorises: g[i] goes to partial
 * (i - a) % 8, or to partial 0 in the tail past the last multiple of 8,
 * in increasing i (a fixed order: the same bits every run).  Only the
 * live parameters are read: one outside the support, whose gradient is
 * 0, would add +0 to a partial that is +0 or more, which changes no bit,
 * so the sum is that of the whole chunk.  Each run's piece: a scalar
 * head to the next multiple of 8, the vectorised body, a scalar tail. */
FLOW_VECTORIZE static double norm2_live(const flow_trainer *t, size_t a,
                                        size_t b)
{
    const flow_real *g = t->grad + a;
    double acc[8] = {0}, s = 0;
    size_t b8 = b / 8 * 8;
    for (size_t r = support_from(t, a);
         r < t->n_runs && t->live[2 * r] < a + b; r++) {
        size_t lo = t->live[2 * r] > a ? t->live[2 * r] - a : 0;
        size_t hi = t->live[2 * r] + t->live[2 * r + 1] - a;
        size_t hb, i = lo;
        if (hi > b)
            hi = b;
        hb = hi < b8 ? hi : b8;
        for (; i < hb && i % 8; i++)
            acc[i % 8] += (double)g[i] * g[i];
        for (; i + 8 <= hb; i += 8)
            for (size_t j = 0; j < 8; j++)
                acc[j] += (double)g[i + j] * g[i + j];
        for (; i < hb; i++)
            acc[i % 8] += (double)g[i] * g[i];
        for (; i < hi; i++)
            acc[0] += (double)g[i] * g[i];
    }
    for (size_t j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

typedef struct norm_job {
    const flow_trainer *t;
    double *part;
} norm_job;

static void norm_task(void *arg, size_t th, size_t lo, size_t hi)
{
    norm_job *nj = arg;
    const flow_trainer *t = nj->t;
    (void)th;
    for (size_t c = (lo + NORM_CHUNK - 1) / NORM_CHUNK; c * NORM_CHUNK < hi;
         c++) {
        size_t a = c * NORM_CHUNK;
        size_t b = t->np - a < NORM_CHUNK ? t->np - a : NORM_CHUNK;
        nj->part[c] = norm2_live(t, a, b);
    }
}

/* The chunks are those of the full parameter vector whatever the
 * support (the same bits), split over the threads by parameter. */
static double grad_norm2(flow_trainer *t)
{
    size_t nc = (t->np + NORM_CHUNK - 1) / NORM_CHUNK;
    norm_job nj = {t, t->npart};
    double s = 0;
    model_parallel_for(t->m, t->np, norm_task, &nj);
    for (size_t c = 0; c < nc; c++)
        s += nj.part[c];
    return s;
}

/* The optimiser's half of a step, shared by both objectives: t->grad
 * holds the gradient of `objective` (to maximise).  A non-finite
 * objective or gradient skips the step; then clipping and Adam. */
static int apply_step(flow_trainer *t, double objective, const char *what)
{
    /* the norm serves clipping; without it, whether the gradient is
     * finite was seen as the blocks' slots were added (local_sum) */
    int finite_seen = t->sum_finite >= 0 && !(t->cfg.clip_norm > 0);
    double norm2 = finite_seen ? (t->sum_finite ? 0 : NAN) : grad_norm2(t);
    t->sum_finite = -1;
    if (!isfinite(objective) || !isfinite(norm2)) {
        t->st.skipped++;
        if (++t->skipped_run >= t->cfg.max_skipped && t->cfg.max_skipped)
            return flow_ctx_error(model_ctx(t->m), FLOW_ERR_NUMERIC,
                                  "training diverged: %llu steps in a row had "
                                  "a non-finite %s or gradient (lower the "
                                  "learning rate or clip gradients)",
                                  (unsigned long long)t->skipped_run, what);
        return FLOW_OK;
    }
    t->skipped_run = 0;
    if (t->cfg.clip_norm > 0 && norm2 > t->cfg.clip_norm * t->cfg.clip_norm) {
        double s = t->cfg.clip_norm / sqrt(norm2);
        for (size_t r = 0; r < t->n_runs; r++) {
            flow_real *g = t->grad + t->live[2 * r];
            for (size_t i = 0; i < t->live[2 * r + 1]; i++)
                g[i] = (flow_real)(g[i] * s);
        }
    }
    adam_update(t, flow_trainer_lr(t));
    t->st.step++;
    return FLOW_OK;
}

static int target_comm_gradient(flow_trainer *t, double beta,
                                double *elbo);
static int target_local_gradient(flow_trainer *t, double beta,
                                 double *elbo);

/* A variational step: the ELBO of cfg.batch fresh samples (vi.c), with
 * log p~ scaled by beta_t = min(1, 0.01 + t / T) while annealing
 * (Rezende & Mohamed 2015, sec. 6.2); the samples drawn and the
 * gradient summed in blocks, with or without a communicator, so that no
 * bit follows the thread count. */
static int target_step(flow_trainer *t, double *loss)
{
    double elbo = NAN, beta = 1;
    int rc;
    if (t->cfg.anneal_steps) {
        beta = 0.01 + (double)t->st.step / (double)t->cfg.anneal_steps;
        if (beta > 1)
            beta = 1;
    }
    flow_model_set_training(t->m, 1);
    if (t->comm)
        rc = target_comm_gradient(t, beta, &elbo);
    else
        rc = target_local_gradient(t, beta, &elbo);
    flow_model_set_training(t->m, 0);
    if (rc != FLOW_OK)
        return rc;
    if (loss)
        *loss = -elbo;
    return apply_step(t, elbo, "ELBO");
}

int flow_trainer_set_comm(flow_trainer *t, flow_comm *comm)
{
    flow_ctx *ctx = model_ctx(t->m);
    size_t b, nb, size;
    if (!comm)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_"
                              "set_comm: no communicator");
    if (t->st.step)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_"
                              "set_comm after %llu steps: call it before "
                              "the first",
                              (unsigned long long)t->st.step);
    /* a fit's batch is cfg.batch fresh samples, not rows of the data */
    b = t->target || t->cfg.batch < t->n ? t->cfg.batch : t->n;
    nb = (b + FLOW_TRAIN_BLOCK - 1) / FLOW_TRAIN_BLOCK;
    size = (size_t)flow_comm_size(comm);
    t->max_local = (nb + size - 1) / size;
    free(t->bgrad);
    free(t->blogp);
    rsum_free(&t->rs);
    t->bgrad = NULL;
    t->blogp = NULL;
    if (t->np && t->max_local > SIZE_MAX / sizeof *t->bgrad / t->np)
        goto nomem;
    t->bgrad = malloc((t->max_local * t->np + 1) * sizeof *t->bgrad);
    t->blogp = malloc((t->max_local + 1) * sizeof *t->blogp);
    if (!t->bgrad || !t->blogp || rsum_init(&t->rs, t->np, 1) != FLOW_OK)
        goto nomem;
    t->stochastic = model_has_stochastic(t->m);
    free(t->streams);
    t->streams = NULL;
    if (!t->target && t->stochastic
        && !(t->streams = malloc(6 * t->max_local * sizeof *t->streams)))
        goto nomem;
    t->comm = comm;
    return FLOW_OK;
nomem:
    free(t->bgrad);
    free(t->blogp);
    t->bgrad = NULL;
    t->blogp = NULL;
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory for %zu "
                          "blocks of %zu parameters", t->max_local,
                          t->np);
}

flow_trainer *flow_trainer_new_shard(flow_model *m,
                                     const flow_train_config *cfg,
                                     flow_comm *comm, const flow_real *x,
                                     const flow_real *c, size_t n,
                                     size_t first, size_t total)
{
    flow_ctx *ctx = model_ctx(m);
    flow_train_config k;
    flow_trainer *t = NULL;
    uint64_t mine[3] = {first, n, total}, *all = NULL;
    size_t size, at = 0;

    if (!comm) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_"
                       "new_shard: no communicator");
        return NULL;
    }
    if (load_config(ctx, cfg, &k) != FLOW_OK)
        return NULL;
    if (k.target) {
        flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "flow_trainer_new_"
                       "shard: shares of data, not a target");
        return NULL;
    }
    if (total == 0 || total > UINT32_MAX || (n && !x)
        || (n && flow_model_context_dim(m) && !c)) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_new_shard: a "
                       "share of %zu rows "
                       "of %zu (between 1 and %u rows in all; %zu context "
                       "columns)", n, total, (unsigned)UINT32_MAX,
                       flow_model_context_dim(m));
        return NULL;
    }
    size = (size_t)flow_comm_size(comm);
    if (!(all = malloc(3 * size * sizeof *all))) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory for training");
        return NULL;
    }
    if (comm_allgather(comm, mine, all, sizeof mine) != FLOW_OK)
        goto fail;
    for (size_t q = 0; q < size; q++) {
        if (all[3 * q] != at || all[3 * q + 2] != total) {
            flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_new_shard: "
                           "the shares of %zu rows do not follow each other (rank %zu starts "
                           "at row %llu of %llu, not %zu)", total, q,
                           (unsigned long long)all[3 * q],
                           (unsigned long long)all[3 * q + 2], at);
            goto fail;
        }
        at += (size_t)all[3 * q + 1];
    }
    if (at != total) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_trainer_new_shard: the "
                       "shares hold %zu rows of %zu", at, total);
        goto fail;
    }
    if (!(t = trainer_new_rows(m, &k, x, c, total))
        || flow_trainer_set_comm(t, comm) != FLOW_OK)
        goto fail;
    t->offs = malloc((size + 1) * sizeof *t->offs);
    t->place = malloc((size + 1) * sizeof *t->place);
    if (!t->offs || !t->place) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory for training");
        goto fail;
    }
    for (size_t q = 0; q < size; q++)
        t->offs[q] = (size_t)all[3 * q];
    t->offs[size] = total;
    free(all);
    return t;
fail:
    free(all);
    flow_trainer_free(t);
    return NULL;
}

/* A share's step: the rows of this process's blocks, from the processes
 * that hold them, into bx and bc (one all-to-all). */
static int fetch_blocks(flow_trainer *t, size_t start, size_t b, size_t nb)
{
    size_t size = (size_t)flow_comm_size(t->comm);
    shard_cols cols[2] = {{t->x, t->bx, t->dim * sizeof *t->bx},
                          {t->c, t->bc, t->cdim * sizeof *t->bc}};
    for (size_t q = 0; q <= size; q++) {
        size_t k = q * nb / size * FLOW_TRAIN_BLOCK;
        t->place[q] = k < b ? k : b;
    }
    return shard_move(t->comm, &t->sb, t->offs, t->perm + start, t->place,
                      cols, 2);
}

/* A block-sum step's key: one draw from the model's stream, the same on
 * every process (all hold the same stream); after = the stream past that
 * draw, which the step leaves behind whatever its blocks drew. */
static uint64_t step_key(flow_model *m, uint64_t after[6])
{
    flow_rng r;
    uint64_t key;
    flow_model_get_rng(m, after);
    rng_load(&r, after);
    key = rng_u64(&r);
    rng_save(&r, after);
    return key;
}

/* The blocks [lo, hi) of nb that this process computed (their gradients
 * in bgrad, their extra value in blogp; rc: how that went) summed with
 * every process's by pre-rounding (rsum.c) into t->grad and *extra.
 * Every process takes part in the collectives, a failed one too, so
 * that the others learn of the failure instead of waiting. */
typedef struct blocks_pass {
    flow_trainer *t;
    size_t n_local;
    int add;                    /* 0: rsum_see, 1: rsum_add */
} blocks_pass;

/* The local blocks' parameters [lo, hi) through rsum (its groups from
 * the first that starts at or after lo: the model's threads split the
 * parameters, each group on one thread, every block in block order). */
static void blocks_task(void *arg, size_t th, size_t lo, size_t hi)
{
    const blocks_pass *bp = arg;
    flow_trainer *t = bp->t;
    size_t g0 = (lo + RSUM_CHUNK - 1) / RSUM_CHUNK;
    size_t g1 = (hi + RSUM_CHUNK - 1) / RSUM_CHUNK;
    (void)th;
    for (size_t k = 0; k < bp->n_local; k++) {
        const flow_real *v = t->bgrad + k * t->np;
        if (bp->add)
            rsum_add_groups(&t->rs, v, g0, g1);
        else
            rsum_see_groups(&t->rs, v, g0, g1);
    }
}

static void blocks_all(flow_trainer *t, size_t n_local, int add)
{
    blocks_pass bp = {t, n_local, add};
    model_parallel_for(t->m, t->np, blocks_task, &bp);
    for (size_t k = 0; k < n_local; k++) {
        if (add)
            rsum_add_extra(&t->rs, &t->blogp[k]);
        else
            rsum_see_extra(&t->rs, &t->blogp[k]);
    }
}

static int sum_blocks(flow_trainer *t, size_t lo, size_t hi, size_t nb,
                      int rc, double *extra)
{
    int crc, failed_rank = -1;
    rsum_begin(&t->rs);
    if (rc == FLOW_OK)
        blocks_all(t, hi - lo, 0);
    crc = rsum_agree(&t->rs, t->comm, nb, rc != FLOW_OK, &failed_rank);
    if (rc != FLOW_OK)
        return rc;
    if (crc != FLOW_OK)
        return crc;
    if (failed_rank >= 0)
        return flow_ctx_error(model_ctx(t->m), FLOW_ERR_NUMERIC, "rank %d's "
                              "blocks of the batch failed in step %llu (its "
                              "message is on its own stderr)", failed_rank,
                              (unsigned long long)t->st.step + 1);
    blocks_all(t, hi - lo, 1);
    if ((rc = rsum_finish(&t->rs, t->comm)) != FLOW_OK)
        return rc;
    for (size_t i = 0; i < t->np; i++)
        t->grad[i] = (flow_real)t->rs.sum[i];
    *extra = t->rs.sum[t->np];
    return FLOW_OK;
}

/* This process's blocks [lo, hi) of a batch of b rows (from perm[start])
 * in one block pass (model_loglik_grad_blocks): the rows of the blocks
 * one after the other in bx, block k drawing from the stream of (key, k)
 * when a layer draws; the blocks' gradients into bgrad, their sums of
 * log-densities into blogp. */
static int layered_blocks(flow_trainer *t, size_t start, size_t b,
                          size_t lo, size_t hi, uint64_t key)
{
    size_t r0 = lo * FLOW_TRAIN_BLOCK;
    size_t r1 = hi * FLOW_TRAIN_BLOCK < b ? hi * FLOW_TRAIN_BLOCK : b;
    int rc;
    if (hi <= lo)               /* no block here: whole-batch sums still */
        r0 = r1 = 0;
    for (size_t r = 0; !t->offs && r < r1 - r0; r++) {
        size_t src = t->perm[start + r0 + r];
        memcpy(t->bx + r * t->dim, t->x + src * t->dim,
               t->dim * sizeof *t->bx);
        if (t->cdim)
            memcpy(t->bc + r * t->cdim, t->c + src * t->cdim,
                   t->cdim * sizeof *t->bc);
    }
    for (size_t k = lo; t->streams && k < hi; k++)
        vi_block_stream(t->streams + 6 * (k - lo), key, k);
    flow_model_set_training(t->m, 1);
    rc = model_loglik_grad_blocks(t->m, r1 - r0, t->bx,
                                  t->cdim ? t->bc : NULL, FLOW_TRAIN_BLOCK,
                                  1.0 / (double)b, t->streams, t->comm, b,
                                  t->blogp, t->bgrad);
    flow_model_set_training(t->m, 0);
    return rc;
}

/* The step's gradient with a communicator: the batch of b rows (from
 * perm[start]) in nb blocks of FLOW_TRAIN_BLOCK rows (the last one
 * short), this process's blocks [rank nb / N, (rank + 1) nb / N), each
 * block's gradient of its share of the batch mean (weight 1/b per row)
 * in its own slot (one block pass: model_loglik_grad_blocks; batchnorm
 * with the statistics of the whole batch, summed over the blocks of
 * every process), and the blocks summed by pre-rounding (rsum.c): the
 * sum, the log-density and so the step are the same bits for any N.
 * Batchnorm's running averages get one update per step from those
 * statistics, the same bits on every process. */
static int comm_gradient(flow_trainer *t, size_t start, size_t b,
                         double *mean)
{
    size_t nb = (b + FLOW_TRAIN_BLOCK - 1) / FLOW_TRAIN_BLOCK;
    size_t rank = (size_t)flow_comm_rank(t->comm);
    size_t size = (size_t)flow_comm_size(t->comm);
    size_t lo = rank * nb / size, hi = (rank + 1) * nb / size;
    uint64_t after[6], key = 0;
    int rc = FLOW_OK;

    if (t->offs && (rc = fetch_blocks(t, start, b, nb)) != FLOW_OK)
        return rc;
    if (t->stochastic) {
        /* as a fit's blocks (target_comm_gradient): block k's draws
         * from the stream of (key, k) alone, so that they do not follow
         * the split */
        key = step_key(t->m, after);
    }
    rc = layered_blocks(t, start, b, lo, hi, key);
    if (t->stochastic)
        flow_model_set_rng(t->m, after);
    if ((rc = sum_blocks(t, lo, hi, nb, rc, mean)) != FLOW_OK)
        return rc;
    *mean /= (double)b;
    /* the layers' finish_grad once, on the exact sum: the same input and
     * so the same bits on every process */
    return model_blocks_finish(t->m, b, t->grad);
}

/* The variational step's gradient with a communicator: the batch of
 * b = cfg.batch samples in nb blocks of FLOW_TRAIN_BLOCK (the last one
 * short), this process's blocks [rank nb / N, (rank + 1) nb / N) in one
 * block pass (vi_elbo_blocks).  Each step takes one key from the model's
 * stream (every process the same draw, and the stream moves by that one
 * draw whatever the blocks do), and block k draws its samples from the
 * stream of (key, k), so that the samples do not depend on N.  Each
 * block's gradient of its share of the batch mean in its own slot, the
 * blocks' gradients and ELBO sums added by pre-rounding, the layers'
 * finish_grad once on that sum: the ELBO and the step are the same bits
 * for any N. */
static int target_comm_gradient(flow_trainer *t, double beta, double *elbo)
{
    size_t b = t->cfg.batch, R = FLOW_TRAIN_BLOCK;
    size_t nb = (b + R - 1) / R;
    size_t rank = (size_t)flow_comm_rank(t->comm);
    size_t size = (size_t)flow_comm_size(t->comm);
    size_t lo = rank * nb / size, hi = (rank + 1) * nb / size;
    size_t r0 = lo * R, r1 = hi * R < b ? hi * R : b;
    uint64_t after[6], key;
    double sum = NAN;
    int rc;

    if (hi <= lo)               /* no block here: in the sums all the same */
        r0 = r1 = 0;
    key = step_key(t->m, after);
    rc = vi_elbo_blocks(t->m, t->target, key, lo, r1 - r0, R, t->comm, b,
                        beta, t->blogp, t->bgrad);
    flow_model_set_rng(t->m, after);
    if ((rc = sum_blocks(t, lo, hi, nb, rc, &sum)) != FLOW_OK)
        return rc;
    *elbo = sum / (double)b;
    return model_blocks_finish(t->m, b, t->grad);
}

/* One process's block rows for a batch of `batch` rows: half the batch,
 * rounded up to a multiple of FLOW_TRAIN_BLOCK, at most 128 (docs/
 * runtime.md, "The block pass"): two blocks or more to share out, blocks
 * of up to 128 rows for the GEMMs (measured faster than 64 on realnvp2d
 * and maf64 at batch 256).  Never the thread count: the bits follow the
 * blocks. */
static size_t train_block_rows(size_t batch)
{
    size_t half = (batch + 1) / 2;
    size_t r = (half + FLOW_TRAIN_BLOCK - 1) / FLOW_TRAIN_BLOCK
               * FLOW_TRAIN_BLOCK;
    return r < 128 ? r : 128;
}

/* The local blocks' parameters: slot 0 + slot 1 + ... in block order for
 * each parameter, so the sum's bits do not depend on how the threads
 * split the parameters.  Over the support, one piece of a run at a time
 * (a few KB: the slots' rows stay in L1 between the additions), the
 * first two slots added in one pass: g = s0 + s1 is the bits of g = s0
 * then g += s1. */
typedef struct local_sum_job {
    flow_trainer *t;
    size_t nb;
    /* per thread: the least exp_room of the sums it wrote (0: one of
     * them is not finite) */
    real_bits room[MODEL_MAX_THREADS];
} local_sum_job;

/* How far v's exponent field is from all ones: 0 exactly when v is
 * infinite or NaN.  Integer operations, so that a minimum over a loop
 * vectorises (a float reduction would not without reassociation). */
static inline real_bits exp_room(flow_real v)
{
    real_bits u;
    memcpy(&u, &v, sizeof u);
    return EXP_ALL - (u & EXP_ALL);
}

FLOW_VECTORIZE static real_bits sum2_loop(size_t n, flow_real *restrict g,
                                          const flow_real *restrict a,
                                          const flow_real *restrict b)
{
    real_bits room = EXP_ALL;
    for (size_t i = 0; i < n; i++) {
        flow_real v = a[i] + b[i];
        real_bits r = exp_room(v);
        g[i] = v;
        room = r < room ? r : room;
    }
    return room;
}

FLOW_VECTORIZE static real_bits add_loop(size_t n, flow_real *restrict g,
                                         const flow_real *restrict v)
{
    real_bits room = EXP_ALL;
    for (size_t i = 0; i < n; i++) {
        flow_real x = g[i] + v[i];
        real_bits r = exp_room(x);
        g[i] = x;
        room = r < room ? r : room;
    }
    return room;
}

FLOW_VECTORIZE static real_bits copy_loop(size_t n, flow_real *restrict g,
                                          const flow_real *restrict v)
{
    real_bits room = EXP_ALL;
    for (size_t i = 0; i < n; i++) {
        real_bits r = exp_room(v[i]);
        g[i] = v[i];
        room = r < room ? r : room;
    }
    return room;
}

static void local_sum_task(void *arg, size_t th, size_t lo, size_t hi)
{
    local_sum_job *ls = arg;
    flow_trainer *t = ls->t;
    size_t np = t->np, off, len;
    real_bits room = EXP_ALL;
    live_iter it;
    live_begin(&it, t, lo, hi);
    while (live_next(&it, &off, &len)) {
        const flow_real *s0 = t->lgrad + off;
        real_bits r;
        if (ls->nb == 1) {
            r = copy_loop(len, t->grad + off, s0);
        } else {
            r = sum2_loop(len, t->grad + off, s0, s0 + np);
            for (size_t k = 2; k < ls->nb; k++)
                r = add_loop(len, t->grad + off, t->lgrad + k * np + off);
        }
        if (r < room)
            room = r;
    }
    ls->room[th] = room;
}

/* Room for the blocks of a batch of b rows. */
static int local_grow(flow_trainer *t, size_t nb)
{
    flow_real *g;
    double *lp;
    uint64_t *st = NULL;
    if (nb <= t->lslots)
        return FLOW_OK;
    if (t->np && nb > SIZE_MAX / sizeof *g / t->np)
        goto nomem;
    g = realloc(t->lgrad, nb * t->np * sizeof *g + sizeof *g);
    if (g) {
        /* 0 outside the support from here on: the block pass clears only
         * the support's runs (model_set_live_slots) */
        memset(g, 0, nb * t->np * sizeof *g);
        t->lgrad = g;
    }
    lp = realloc(t->llogp, nb * sizeof *lp);
    if (lp)
        t->llogp = lp;
    if (t->stochastic && !(st = realloc(t->lstreams, 6 * nb * sizeof *st)))
        goto nomem;
    if (st)
        t->lstreams = st;
    if (!g || !lp)
        goto nomem;
    t->lslots = nb;
    return FLOW_OK;
nomem:
    return flow_ctx_error(model_ctx(t->m), FLOW_ERR_NOMEM, "out of memory "
                          "for %zu blocks of %zu parameters", nb, t->np);
}

/* The nb local blocks of a batch of b rows summed in block order: the
 * slots into t->grad (local_sum_task; outside the support t->grad stays
 * 0 from its allocation on, as finish_grad leaves it), *mean = the
 * blocks' sums (llogp) added in block order over b; then the layers'
 * finish_grad on that sum. */
static int local_sum(flow_trainer *t, size_t nb, size_t b, double *mean)
{
    local_sum_job ls = {.t = t, .nb = nb};
    double sum = 0;
    for (size_t th = 0; th < MODEL_MAX_THREADS; th++)
        ls.room[th] = EXP_ALL;
    model_parallel_for(t->m, t->n_live, local_sum_task, &ls);
    t->sum_finite = 1;
    for (size_t th = 0; th < MODEL_MAX_THREADS; th++)
        if (ls.room[th] == 0)
            t->sum_finite = 0;
    for (size_t k = 0; k < nb; k++)
        sum += t->llogp[k];
    *mean = sum / (double)b;
    return model_blocks_finish(t->m, b, t->grad);
}

/* The step's gradient in one process: the batch of b rows (from
 * perm[start]) in nb blocks of t->lrows rows (the last one short), each
 * block's gradient of its share of the batch mean in its own slot (one
 * block pass: model_loglik_grad_blocks, batchnorm with the whole batch's
 * statistics), block k drawing from the stream of (key, k) when a layer
 * draws, and the slots added in block order: the step's bits do not
 * depend on the thread count. */
static int local_gradient(flow_trainer *t, size_t start, size_t b,
                          double *mean)
{
    size_t R = t->lrows, nb = (b + R - 1) / R;
    uint64_t after[6], key = 0;
    int rc;

    if ((rc = local_grow(t, nb)) != FLOW_OK)
        return rc;
    for (size_t r = 0; r < b; r++) {
        size_t src = t->perm[start + r];
        memcpy(t->bx + r * t->dim, t->x + src * t->dim,
               t->dim * sizeof *t->bx);
        if (t->cdim)
            memcpy(t->bc + r * t->cdim, t->c + src * t->cdim,
                   t->cdim * sizeof *t->bc);
    }
    if (t->stochastic) {
        key = step_key(t->m, after);
        for (size_t k = 0; k < nb; k++)
            vi_block_stream(t->lstreams + 6 * k, key, k);
    }
    flow_model_set_training(t->m, 1);
    model_set_live_slots(t->m, !full_passes(t));
    rc = model_loglik_grad_blocks(t->m, b, t->bx, t->cdim ? t->bc : NULL, R,
                                  1.0 / (double)b,
                                  t->stochastic ? t->lstreams : NULL, NULL,
                                  b, t->llogp, t->lgrad);
    model_set_live_slots(t->m, 0);
    flow_model_set_training(t->m, 0);
    if (t->stochastic)
        flow_model_set_rng(t->m, after);
    if (rc != FLOW_OK)
        return rc;
    return local_sum(t, nb, b, mean);
}

/* The variational step's gradient in one process: the batch of b =
 * cfg.batch samples in blocks of t->lrows (train_block_rows, the last
 * one short) in one block pass (vi_elbo_blocks), block k drawing its
 * samples from the stream of (key, k) as under a communicator, and the
 * slots and ELBO sums added in block order (local_sum): the step's bits
 * do not depend on the thread count. */
static int target_local_gradient(flow_trainer *t, double beta, double *elbo)
{
    size_t b = t->cfg.batch, R, nb;
    uint64_t after[6], key;
    int rc;

    if (!t->lrows)
        t->lrows = train_block_rows(b);
    R = t->lrows;
    nb = (b + R - 1) / R;
    if ((rc = local_grow(t, nb)) != FLOW_OK)
        return rc;
    key = step_key(t->m, after);
    model_set_live_slots(t->m, !full_passes(t));
    rc = vi_elbo_blocks(t->m, t->target, key, 0, b, R, NULL, b, beta,
                        t->llogp, t->lgrad);
    model_set_live_slots(t->m, 0);
    flow_model_set_rng(t->m, after);
    if (rc != FLOW_OK)
        return rc;
    return local_sum(t, nb, b, elbo);
}

int flow_trainer_step(flow_trainer *t, double *loss)
{
    size_t b, start = (size_t)t->st.pos;
    double mean = 0;
    int rc;

    if (t->target)
        return target_step(t, loss);
    if (start >= t->n) {
        t->st.epoch++;
        t->st.pos = start = 0;
        new_epoch(t);
    }
    b = t->cfg.batch < t->n - start ? t->cfg.batch : t->n - start;
    if (t->comm) {
        if ((rc = comm_gradient(t, start, b, &mean)) != FLOW_OK)
            return rc;
        t->st.pos += b;
        if (loss)
            *loss = -mean;
        return apply_step(t, mean, "loss");
    }
    if (!t->lrows) {
        t->lrows = train_block_rows(t->cfg.batch);
        t->stochastic = model_has_stochastic(t->m);
    }
    if ((rc = local_gradient(t, start, b, &mean)) != FLOW_OK)
        return rc;
    t->st.pos += b;
    if (loss)
        *loss = -mean;
    return apply_step(t, mean, "loss");
}

/* Mean and standard error of n values from their sum s and sum of
 * squares s2 (either output may be NULL). */
static void sum_moments(size_t n, double s, double s2, double *mean,
                        double *std_err)
{
    double mu = s / (double)n;
    if (mean)
        *mean = mu;
    if (std_err) {
        double var = n > 1 ? (s2 - (double)n * mu * mu) / (double)(n - 1) : 0;
        *std_err = var > 0 ? sqrt(var / (double)n) : 0;
    }
}

int flow_model_evaluate(flow_model *m, size_t n, const flow_real *x,
                        const flow_real *c, size_t batch, double *mean,
                        double *std_err)
{
    size_t dim = flow_model_dim(m), cdim = flow_model_context_dim(m);
    flow_real *lp;
    double s = 0, s2 = 0;
    int rc = FLOW_OK;

    if (n == 0)
        return flow_ctx_error(model_ctx(m), FLOW_ERR_INVAL, "no rows to "
                              "evaluate");
    if (batch == 0)
        batch = 4096;
    if (batch > n)
        batch = n;
    if (!(lp = malloc(batch * sizeof *lp)))
        return flow_ctx_error(model_ctx(m), FLOW_ERR_NOMEM, "out of memory");
    /* Welford-free two sums in double: n is at most a few million rows */
    for (size_t r = 0; r < n; r += batch) {
        size_t b = n - r < batch ? n - r : batch;
        rc = flow_model_log_prob(m, b, x + r * dim, c ? c + r * cdim : NULL,
                                 lp);
        if (rc != FLOW_OK)
            break;
        for (size_t i = 0; i < b; i++) {
            s += lp[i];
            s2 += (double)lp[i] * lp[i];
        }
    }
    free(lp);
    if (rc != FLOW_OK)
        return rc;
    sum_moments(n, s, s2, mean, std_err);
    return FLOW_OK;
}

/* The blocks [lo, hi) of `batch` rows of n, this process's, summed with
 * the other processes' (x and c hold the rows from row `first` on). */
static int evaluate_blocks(flow_model *m, flow_comm *comm, size_t n,
                           size_t batch, size_t lo, size_t hi, size_t first,
                           const flow_real *x, const flow_real *c,
                           double *mean, double *std_err)
{
    size_t dim = flow_model_dim(m), cdim = flow_model_context_dim(m);
    size_t nb = (n + batch - 1) / batch;
    flow_real *lp = NULL;
    double *part = NULL;
    rsum rs;
    int rc = FLOW_OK, crc, failed_rank = -1;

    if (rsum_init(&rs, 0, 2) != FLOW_OK)
        return flow_ctx_error(model_ctx(m), FLOW_ERR_NOMEM, "out of memory");
    lp = malloc(batch * sizeof *lp);
    part = malloc(2 * (hi - lo + 1) * sizeof *part);
    if (!lp || !part)
        rc = flow_ctx_error(model_ctx(m), FLOW_ERR_NOMEM, "out of memory");
    rsum_begin(&rs);
    /* per block: the sum and the sum of squares of its rows' log p */
    for (size_t k = lo; k < hi && rc == FLOW_OK; k++) {
        size_t r0 = k * batch, b = n - r0 < batch ? n - r0 : batch;
        double s = 0, s2 = 0;
        rc = flow_model_log_prob(m, b, x + (r0 - first) * dim,
                                 c ? c + (r0 - first) * cdim : NULL, lp);
        for (size_t i = 0; i < b && rc == FLOW_OK; i++) {
            s += lp[i];
            s2 += (double)lp[i] * lp[i];
        }
        part[2 * (k - lo)] = s;
        part[2 * (k - lo) + 1] = s2;
        if (rc == FLOW_OK)
            rsum_see(&rs, NULL, &part[2 * (k - lo)]);
    }
    crc = rsum_agree(&rs, comm, nb, rc != FLOW_OK, &failed_rank);
    if (rc == FLOW_OK && crc != FLOW_OK)
        rc = crc;
    if (rc == FLOW_OK && failed_rank >= 0)
        rc = flow_ctx_error(model_ctx(m), FLOW_ERR_NUMERIC, "rank %d's rows "
                            "failed to evaluate (its message is on its own "
                            "stderr)", failed_rank);
    if (rc == FLOW_OK) {
        for (size_t k = lo; k < hi; k++)
            rsum_add(&rs, NULL, &part[2 * (k - lo)]);
        rc = rsum_finish(&rs, comm);
    }
    if (rc == FLOW_OK)
        sum_moments(n, rs.sum[0], rs.sum[1], mean, std_err);
    free(lp);
    free(part);
    rsum_free(&rs);
    return rc;
}

int flow_model_evaluate_comm(flow_model *m, flow_comm *comm, size_t n,
                             const flow_real *x, const flow_real *c,
                             size_t batch, double *mean, double *std_err)
{
    size_t nb, rank, size;

    if (!comm)
        return flow_model_evaluate(m, n, x, c, batch, mean, std_err);
    if (n == 0)
        return flow_ctx_error(model_ctx(m), FLOW_ERR_INVAL, "no rows to "
                              "evaluate");
    if (batch == 0)
        batch = 4096;
    if (batch > n)
        batch = n;
    nb = (n + batch - 1) / batch;
    rank = (size_t)flow_comm_rank(comm);
    size = (size_t)flow_comm_size(comm);
    return evaluate_blocks(m, comm, n, batch, rank * nb / size,
                           (rank + 1) * nb / size, 0, x, c, mean, std_err);
}

int flow_model_evaluate_shard(flow_model *m, flow_comm *comm, size_t n,
                              const flow_real *x, const flow_real *c,
                              size_t first, size_t total, size_t batch,
                              double *mean, double *std_err)
{
    if (!comm || total == 0)
        return flow_ctx_error(model_ctx(m), FLOW_ERR_INVAL, "flow_model_"
                              "evaluate_shard: %s",
                              comm ? "no rows to evaluate"
                                   : "no communicator");
    if (batch == 0)
        batch = 4096;
    if (batch > total)
        batch = total;
    /* whole blocks only: a block's sum runs row by row on one process */
    if (first + n > total
        || (n && (first % batch
                  || ((first + n) % batch && first + n != total))))
        return flow_ctx_error(model_ctx(m), FLOW_ERR_INVAL, "flow_model_"
                              "evaluate_shard: rows [%zu, %zu) of "
                              "%zu are not whole blocks of %zu (see "
                              "flow_data_realign)", first, first + n, total,
                              batch);
    return evaluate_blocks(m, comm, total, batch, first / batch,
                           n ? (first + n + batch - 1) / batch : first / batch,
                           first, x, c, mean, std_err);
}

int flow_trainer_validated(flow_trainer *t, double score)
{
    if (!t->st.has_best || score > t->st.best_score) {
        t->st.best_score = score;
        t->st.has_best = 1;
        t->st.bad_validations = 0;
        memcpy(t->best, flow_model_params(t->m), t->np * sizeof *t->best);
    } else
        t->st.bad_validations++;
    return FLOW_OK;
}

int flow_trainer_should_stop(const flow_trainer *t)
{
    return t->cfg.patience && t->st.bad_validations >= t->cfg.patience;
}

int flow_trainer_restore_best(flow_trainer *t)
{
    if (!t->st.has_best)
        return flow_ctx_error(model_ctx(t->m), FLOW_ERR_INVAL, "no validation "
                              "score recorded: nothing to restore");
    memcpy(flow_model_params(t->m), t->best, t->np * sizeof *t->best);
    return FLOW_OK;
}

void flow_trainer_get_state(const flow_trainer *t, flow_train_state *s)
{
    *s = t->st;
}

int flow_trainer_set_state(flow_trainer *t, const flow_train_state *s)
{
    if (s->pos > t->n)
        return flow_ctx_error(model_ctx(t->m), FLOW_ERR_INVAL, "training "
                              "state is at row %llu of an epoch of %zu rows "
                              "(different data?)", (unsigned long long)s->pos,
                              t->n);
    t->st = *s;
    t->skipped_run = 0;
    rng_load(&t->rng, s->epoch_rng);
    new_epoch(t);               /* redraws this epoch's order */
    return FLOW_OK;
}

flow_real *flow_trainer_adam_m(flow_trainer *t) { return t->am; }
flow_real *flow_trainer_adam_v(flow_trainer *t) { return t->av; }
flow_real *flow_trainer_best_params(flow_trainer *t) { return t->best; }

void train_set_full_passes(flow_trainer *t, int full)
{
    if (!full) {
        t->live = model_support(t->m, &t->n_runs, &t->n_live, &t->live_pre);
        return;
    }
    t->full_run[0] = t->full_pre[0] = 0;
    t->full_run[1] = t->full_pre[1] = t->np;
    t->live = t->full_run;
    t->live_pre = t->full_pre;
    t->n_runs = t->np ? 1 : 0;
    t->n_live = t->np;
}
