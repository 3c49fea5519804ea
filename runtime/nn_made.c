/* nn_made.c - MADE in degree order (Germain et al. 2015): degrees and masks,
 * sampling degree by degree, and the density pass in blocks of rows. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "matrix.h"
#include "nn_impl.h"
#include "rng.h"
#include "tgemm.h"

/* Rows per block of a MADE layer in degree order (nn_made_forward): each
 * block's GEMM reads the input prefix of its highest degree. */
#define MADE_BLOCK 64

/* Offsets of nn_made_step's state, which reuses the same workspace:
 * layer 0's weights with their columns sorted by degree (sw, room for
 * every layer's), the inputs in degree order after the context (xs, n x
 * (K + D)) and the hidden units in degree order (hs, per layer at
 * hidden_off * n). */
typedef struct step_layout {
    size_t sw, xs, hs, total;
} step_layout;

/* Offsets of nn_made_forward's tape (inputs in degree order xs, n x (K +
 * D); hidden pre-activations z, only for activations other than ReLU, and
 * units h, in degree order per layer at hidden_off * n) and of the
 * outputs in degree order ys (n x D*out), plus nn_made_backward's two
 * adjoint buffers (n x max_width each). */
typedef struct sort_layout {
    size_t xs, z, h, ys, g[2], total;
} sort_layout;

static void step_layout_of(const flow_net *net, size_t n, step_layout *sl)
{
    const size_t r = sizeof(flow_real);
    size_t off = round_up(sizeof(ws_head));
#define TAKE(field, bytes) \
    do { sl->field = off; off = add_sat(off, round_up(bytes)); } while (0)
    TAKE(sw, mul_sat(net->mask_total, r));
    TAKE(xs, mul_sat(mul_sat(n, add_sat(net->d, net->k)), r));
    TAKE(hs, mul_sat(mul_sat(n, hidden_rows(net)), r));
#undef TAKE
    sl->total = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
}

static void sort_layout_of(const flow_net *net, size_t n, sort_layout *so)
{
    const size_t r = sizeof(flow_real);
    size_t off = round_up(sizeof(ws_head));
    size_t hid = mul_sat(mul_sat(n, hidden_rows(net)), r);
#define TAKE(field, bytes) \
    do { so->field = off; off = add_sat(off, round_up(bytes)); } while (0)
    TAKE(xs, mul_sat(mul_sat(n, add_sat(net->d, net->k)), r));
    TAKE(z, net->act == FLOW_ACT_RELU ? 0 : hid);
    TAKE(h, hid);
    TAKE(ys, mul_sat(mul_sat(n, net->y_width), r));
    TAKE(g[0], mul_sat(mul_sat(n, net->max_width), r));
    TAKE(g[1], mul_sat(mul_sat(n, net->max_width), r));
#undef TAKE
    so->total = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
}

/* ------------------------------------------------ degrees and masks */

/* MADE degrees and masks (Germain et al. 2015, sec. 4): input j has
 * degree m^0(j) = order[j] + 1, context and time degree 0 (visible to
 * every unit); hidden unit k of layer l gets m^l(k) in [min m^{l-1}, D-1]
 * (cyclic from a seed-drawn offset, so every degree appears when the layer
 * is wide enough, instead of the paper's i.i.d. draw), and the units are
 * stored sorted by degree (the cyclic degrees' multiset, in order), so
 * that the degree-order passes read the parameters as they are.  With
 * context the range starts at 0: degree-0 units see only the context, so
 * even the first dimension's outputs depend on it, as flow_net_spec
 * promises.  Hidden masks are M^l_{kd} = 1[m^l(k) >= m^{l-1}(d)] (eq.
 * 13) and the output mask is strict, M^V_{id} = 1[m^V(i) > m^{L-1}(d)]
 * (eq. 14), with output unit i*out + k of dimension i having degree
 * order[i] + 1. */
static int made_masks(flow_net *net, const int32_t *order)
{
    size_t d = net->d, maxw = net->max_width;
    int32_t *prev = NULL, *cur = NULL;
    flow_rng rng;
    int ok = 0;
    prev = malloc(maxw * sizeof *prev);
    cur = malloc(maxw * sizeof *cur);
    net->mask = calloc(net->mask_total ? net->mask_total : 1, 1);
    net->by_deg = calloc(d, sizeof *net->by_deg);
    net->sperm = calloc(2 * hidden_rows(net) + 1, sizeof *net->sperm);
    net->bstart = calloc((net->n_layers - 1) * (d + 1) + 1,
                         sizeof *net->bstart);
    if (!prev || !cur || !net->mask || !net->by_deg || !net->sperm
        || !net->bstart)
        goto fail;
    rng_seed(&rng, net->seed);
    for (size_t j = 0; j < d; j++) {
        prev[j] = order ? order[j] + 1 : (int32_t)j + 1;
        net->by_deg[prev[j] - 1] = j;
    }
    for (size_t j = 0; j < net->k; j++)
        prev[d + j] = 0;
    for (size_t l = 0; l < net->n_layers; l++) {
        nn_layer *ly = &net->layer[l];
        uint8_t *m = net->mask + ly->m_off;
        int last = l + 1 == net->n_layers;
        int32_t lo = INT32_MAX, span;
        uint64_t shift = 0;
        for (size_t j = 0; j < ly->in; j++)
            if (prev[j] < lo)
                lo = prev[j];
        if (lo == INT32_MAX || lo > (int32_t)d - 1)
            lo = (int32_t)d - 1;   /* nothing to see: degree D-1 (D=1: 0) */
        span = (int32_t)d - lo;    /* degrees lo..D-1 */
        if (!last && span > 0)
            shift = rng_below(&rng, (uint64_t)span);
        for (size_t r = 0; r < ly->out; r++) {
            if (last)
                cur[r] = order ? order[r / net->out] + 1
                               : (int32_t)(r / net->out) + 1;
            else if (span > 0)
                cur[r] = lo + (int32_t)((r + shift) % (uint64_t)span);
            else
                cur[r] = lo;
        }
        if (!last) {
            /* The cyclic degrees sorted (counting sort, stable): unit p
             * is stored in degree order and was unit perm[p] of the
             * cyclic order (format-2 checkpoints, nn_made_from_cyclic). */
            size_t *bs = net->bstart + l * (d + 1);
            size_t *perm = net->sperm + hidden_off(net, l);
            for (size_t r = 0; r < ly->out; r++)
                bs[cur[r] + 1]++;
            for (size_t q = 0; q < d; q++)
                bs[q + 1] += bs[q];
            for (size_t u = 0; u < ly->out; u++)  /* bs[k] as a cursor */
                perm[bs[cur[u]]++] = u;
            for (size_t q = d; q > 0; q--)        /* ... and back */
                bs[q] = bs[q - 1];
            bs[0] = 0;
            for (size_t q = 0; q < d; q++)
                for (size_t r = bs[q]; r < bs[q + 1]; r++)
                    cur[r] = (int32_t)q;
            for (size_t p = 0; p < ly->out; p++)  /* and its inverse */
                perm[hidden_rows(net) + perm[p]] = p;
        }
        for (size_t r = 0; r < ly->out; r++) {
            for (size_t j = 0; j < ly->in; j++)
                m[r * ly->cols + j] = last ? cur[r] > prev[j]
                                           : cur[r] >= prev[j];
            if (ly->cols > ly->in)   /* time column: always visible */
                m[r * ly->cols + ly->in] = 1;
        }
        memcpy(prev, cur, ly->out * sizeof *cur);
    }
    ok = 1;
fail:
    free(prev);
    free(cur);
    return ok;
}

/* The maps of MADE in degree order (nn_made_forward): rows of each layer
 * sorted by degree (hidden units as stored, outputs by the degree of their
 * dimension), columns likewise (layer 0: the context, degree 0, then the
 * inputs by degree).  A row of degree m sees a prefix of the sorted
 * columns: the inputs of degree <= m (hidden, eq. 13 of Germain et al.
 * 2015) or < m (outputs, eq. 14).  Rows go in blocks of MADE_BLOCK; ext
 * of every row of a block is the prefix of its last (highest) row, so a
 * block is one GEMM over that prefix, and the columns past it are masked
 * for every row of the block: a hidden layer of H units costs about
 * (H / MADE_BLOCK + 1) / (2 H / MADE_BLOCK) of the dense product. */
static int made_blocks(flow_net *net)
{
    size_t d = net->d, k = net->k, L = net->n_layers, coff = 0;
    size_t ncols = 0;
    for (size_t l = 0; l < L; l++)
        ncols += net->layer[l].in;
    net->rmap = calloc(all_rows(net) + 1, sizeof *net->rmap);
    net->ext = calloc(all_rows(net) + 1, sizeof *net->ext);
    net->vis = calloc(all_rows(net) + 1, sizeof *net->vis);
    net->cmap = calloc(ncols + 1, sizeof *net->cmap);
    net->lead = calloc(all_rows(net) + 1, 1);
    if (!net->rmap || !net->ext || !net->vis || !net->cmap || !net->lead)
        return 0;
    for (size_t l = 0; l < L; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == L;
        size_t roff = last ? hidden_rows(net) : hidden_off(net, l);
        size_t *rm = net->rmap + roff, *ex = net->ext + roff;
        size_t *vi = net->vis + roff;
        uint32_t *cm = net->cmap + coff;
        const size_t *bs = last ? NULL : net->bstart + l * (d + 1);
        const size_t *bp = l ? net->bstart + (l - 1) * (d + 1) : NULL;
        size_t g = 0;
        for (size_t p = 0; p < ly->out; p++) {
            size_t m;           /* the highest input degree row p sees */
            if (last) {
                size_t s = p / net->out;
                rm[p] = net->by_deg[s] * net->out + p % net->out;
                m = s;          /* degree s + 1 sees degrees <= s */
            } else {
                while (bs[g + 1] <= p)
                    g++;
                rm[p] = p;      /* hidden units are stored by degree */
                m = g;
            }
            vi[p] = ex[p] = l ? bp[m + 1] : k + m;
        }
        for (size_t p0 = 0; p0 < ly->out; p0 += MADE_BLOCK) {
            size_t p1 = p0 + MADE_BLOCK < ly->out ? p0 + MADE_BLOCK : ly->out;
            for (size_t p = p0; p < p1; p++)
                ex[p] = ex[p1 - 1];
        }
        for (size_t q = 0; q < ly->in; q++)
            cm[q] = (uint32_t)(l ? q : q < k ? d + q : net->by_deg[q - k]);
        for (size_t p = 0; p < ly->out; p++) {
            size_t c = rm[p];
            while (c > p)
                c = rm[c];
            net->lead[roff + p] = c == p;   /* no smaller row in its cycle */
        }
        coff += ly->in;
    }
    return 1;
}

/* Masks, then the degree-order maps when the net is sortable (nn_impl.h). */
int nn_made_init(flow_net *net, const int32_t *order)
{
    if (!made_masks(net, order))
        return 0;
    net->sortable = net->premasked && net->time == FLOW_TIME_NONE;
    return !net->sortable || made_blocks(net);
}

size_t nn_made_workspace(const flow_net *net, size_t n)
{
    step_layout sl;
    sort_layout so;
    step_layout_of(net, n, &sl);
    sort_layout_of(net, n, &so);
    if (!sl.total || !so.total)
        return 0;
    return sl.total > so.total ? sl.total : so.total;
}

/* 1 when some v[i] with m[i] = 0 is not +-0 (NaN included): an OR over
 * the bits without the sign, eight lanes at a time (once per batch over
 * every MADE weight: a compare-and-branch loop cost 4% of a training
 * step). */
static int masked_nonzero(const flow_real *restrict v,
                          const uint8_t *restrict m, size_t count)
{
#if FLOW_REAL_DOUBLE
    typedef uint64_t bits_t;
#else
    typedef uint32_t bits_t;
#endif
    bits_t acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        bits_t b[8];
        memcpy(b, v + i, sizeof b);
        for (int j = 0; j < 8; j++)
            acc[j] |= (b[j] << 1) & ((bits_t)(m[i + j] != 0) - 1);
    }
    for (; i < count; i++) {
        bits_t b;
        memcpy(&b, v + i, sizeof b);
        acc[0] |= (b << 1) & ((bits_t)(m[i] != 0) - 1);
    }
    return ((acc[0] | acc[1]) | (acc[2] | acc[3]) | (acc[4] | acc[5]) |
            (acc[6] | acc[7])) != 0;
}

int nn_mask_params(const flow_net *net, const flow_real *params,
                   flow_real *dst)
{
    int dirty = 0;
    if (!net || !params)
        return 0;
    if (dst && dst != params)
        memcpy(dst, params, net->n_params * sizeof *dst);
    if (!net->mask)
        return 0;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const uint8_t *m = net->mask + ly->m_off;
        const flow_real *w = params + ly->w_off;
        size_t sz = ly->out * ly->cols;
        if (!dirty)
            dirty = masked_nonzero(w, m, sz);
        if (dst)
            mask_zero(dst + ly->w_off, m, sz);
    }
    return dirty;
}

/* ----------------------------------------------- sampling by degree */

/* Layer 0's weights with their columns in degree order (the context,
 * then the inputs by degree) for nn_made_step; the deeper layers are
 * stored in degree order already (made_masks) and read as they are.  One
 * gather over layer 0 per sampling call. */
static void sort_weights(const flow_net *net, const flow_real *params,
                         flow_real *sw)
{
    size_t d = net->d, k = net->k;
    const nn_layer *ly = &net->layer[0];
    const flow_real *w = params + ly->w_off;
    flow_real *dst = sw + ly->m_off;
    for (size_t p = 0; p < ly->out; p++) {
        const flow_real *wr = w + p * ly->cols;
        flow_real *dr = dst + p * ly->cols;
        for (size_t q = 0; q < k; q++)
            dr[q] = wr[d + q];
        for (size_t q = 0; q < d; q++)
            dr[k + q] = wr[net->by_deg[q]];
    }
}

/* z (n rows of stride ld, cnt columns) += bias, then the activation. */
static void bias_act_block(const flow_net *net, flow_real *z, size_t ld,
                           size_t n, size_t cnt, const flow_real *bias)
{
    for (size_t r = 0; r < n; r++) {
        flow_real *zr = z + r * ld;
        if (net->act == FLOW_ACT_RELU) {
            for (size_t j = 0; j < cnt; j++) {
                flow_real v = zr[j] + bias[j];
                zr[j] = pos_mask(v) * v;
            }
        } else {
            for (size_t j = 0; j < cnt; j++) {  /* as nn_forward does */
                flow_real v = zr[j] + bias[j];
                act_apply(net, &v, zr + j, 1);
            }
        }
    }
}

/* Row offset of layer l in rmap / ext, and column offset in cmap. */
static size_t sort_roff(const flow_net *net, size_t l)
{
    return l + 1 == net->n_layers ? hidden_rows(net) : hidden_off(net, l);
}

static size_t sort_coff(const flow_net *net, size_t l)
{
    size_t s = 0;
    for (size_t i = 0; i < l; i++)
        s += net->layer[i].in;
    return s;
}

/* The head of nn_made_sort's buffer: the parameters it was prepared
 * from, then one byte per layer, 1 when the degree-order passes read that
 * layer from the parameters as they are (made_direct), 0 when from its
 * sorted copy after the head. */
typedef struct made_prep {
    uint64_t magic;
    const flow_real *params;
    int have_wt;                /* made_wt written (made_prep_wt) */
} made_prep;

#define PREP_MAGIC 0x666c6f776d707231ull  /* "flowmpr1" */

static size_t prep_reals(const flow_net *net)
{
    return round_up(sizeof(made_prep) + net->n_layers) / sizeof(flow_real);
}

static int prep_is_direct(const flow_real *sw, size_t l)
{
    return ((const uint8_t *)sw)[sizeof(made_prep) + l];
}

/* Layer l's weights (stride cols, rows and columns in degree order) and
 * biases (rows in degree order) for the degree-order passes. */
static const flow_real *prep_w(const flow_net *net, const flow_real *sw,
                               size_t l)
{
    const made_prep *hd = (const made_prep *)(const void *)sw;
    return prep_is_direct(sw, l) ? hd->params + net->layer[l].w_off
                                 : sw + prep_reals(net) + net->layer[l].m_off;
}

static const flow_real *prep_b(const flow_net *net, const flow_real *sw,
                               size_t l)
{
    const made_prep *hd = (const made_prep *)(const void *)sw;
    return prep_is_direct(sw, l) ? hd->params + net->layer[l].b_off
                                 : sw + prep_reals(net) + net->mask_total
                                       + sort_roff(net, l);
}

/* Layer l's W^T in degree order ([cols][out], stride out) for the tgemm
 * forward, after nn_made_grad's scratch; entries (q, p) with q past the
 * prefix of row p's block are never written nor read. */
static size_t made_wt(const flow_net *net, size_t l)
{
    return prep_reals(net) + net->mask_total + all_rows(net)
           + 3 * net->max_width + net->layer[l].m_off;
}

/* C = op(A) B + (acc ? C : 0) as blas_gemm(trans_a, 0, ...) with alpha 1:
 * in the float build tgemm (tgemm.h: twice OpenBLAS 0.3.21's rate on CPUs
 * with full-width AVX-512; any width, the last columns in a masked tile),
 * blas_gemm where it declines.  Every entry is one sum over k either way,
 * and neither kernel lets a row's values depend on the other rows, so the
 * results do not depend on how rows are blocked over threads. */
static int made_gemm(int trans_a, size_t m, size_t n, size_t k,
                     const flow_real *a, size_t lda, const flow_real *b,
                     size_t ldb, int acc, flow_real *c, size_t ldc)
{
#if !FLOW_REAL_DOUBLE
    size_t ars = trans_a ? 1 : lda, acs = trans_a ? lda : 1;
    if (tgemm_mixed(m, n, k, a, ars, acs, b, ldb, NULL, acc, c, ldc))
        return FLOW_OK;
#endif
    return blas_gemm(trans_a, 0, m, n, k, 1, a, lda, b, ldb, acc ? 1 : 0, c,
                     ldc);
}

/* Writes made_wt for every layer when tgemm runs here (float build,
 * tgemm_level() > 0): the forward's products read B = W^T row-major, and
 * one transpose per pass serves every row block of every thread.  Row
 * block [p0, p1) is read at the columns before its prefix ext[p0] only,
 * so only those are transposed (they are written in w). */
static void made_prep_wt(const flow_net *net, flow_real *sw)
{
    made_prep *hd = (made_prep *)(void *)sw;
    hd->have_wt = 0;
#if !FLOW_REAL_DOUBLE
    if (tgemm_level() <= 0)
        return;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const size_t *ex = net->ext + sort_roff(net, l);
        const flow_real *w = prep_w(net, sw, l);
        flow_real *wt = sw + made_wt(net, l);
        for (size_t p0 = 0; p0 < ly->out; p0 += MADE_BLOCK) {
            size_t p1 = p0 + MADE_BLOCK < ly->out ? p0 + MADE_BLOCK : ly->out;
            if (ex[p0])
                tgemm_transpose(p1 - p0, ex[p0], w + p0 * ly->cols,
                                ly->cols, wt + p0, ly->out);
        }
    }
    hd->have_wt = 1;
#else
    (void)net;
#endif
}

/* Sampling a MADE degree by degree (MAF, Papamakarios et al. 2017, sec.
 * 3.1: x_i = u_i exp(alpha_i) + mu_i, one dimension after the other).
 * Hidden unit k of layer l with degree m^l(k) depends on exactly the
 * inputs of degree <= m^l(k) (Germain et al. 2015, eqs. 13-14: the masks
 * connect it to the units of degree <= m^l(k) below, the output of degree
 * s to the units of degree < s).  So once the dimensions of degree <= s
 * are known, every unit of degree <= s is final: step s computes the
 * units of degree exactly s in each hidden layer, from the already final
 * units of degree <= s below (a prefix in degree order), and the out
 * outputs of the dimension of degree s + 1 from the units of degree <= s
 * of the last hidden layer.  Each unit is computed once over the D steps,
 * from only its unmasked inputs: about half the multiply-adds of ONE
 * dense forward pass, against D passes for sampling by repeated
 * net_forward.  Products in degree order are the same sums as the masked
 * dense ones (the skipped terms are masked zeros) up to the order of the
 * additions. */
/* One step on weights in degree order: ssw is NULL for weights from
 * params (layer 0 sorted here into the workspace at step 0, sort_weights;
 * the rest and the biases read from params, output rows as they are), or
 * nn_made_sort's buffer (prep_w, prep_b: output rows by degree too). */
static int made_step_run(const flow_net *net, const flow_real *params,
                         const flow_real *ssw, size_t n,
                         const flow_real *ctx, size_t step,
                         const flow_real *x_prev, flow_real *theta, void *ws)
{
    ws_head *hd = ws;
    step_layout sl;
    size_t d, k, kd, L, pr;
    flow_real *xs, *hs;
    const flow_real *in;
    flow_real *sw0;
    size_t ldin;
    int st;
    if (!net || !(ssw || params) || !theta || !ws
        || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (net->kind != FLOW_NET_MADE || net->sn > 0 ||
        net->time != FLOW_TIME_NONE || (ssw && !net->sortable))
        return FLOW_ERR_UNSUPPORTED;
    if (ssw && ((const made_prep *)(const void *)ssw)->magic != PREP_MAGIC)
        return FLOW_ERR_INVAL;
    d = net->d;
    k = net->k;
    if (step >= d || (k && !ctx) || (step > 0 && !x_prev))
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    step_layout_of(net, n, &sl);
    kd = k + d;
    L = net->n_layers;
    sw0 = at(ws, sl.sw);
    xs = at(ws, sl.xs);
    hs = at(ws, sl.hs);
    if (step == 0) {
        hd->magic = 0;
        hd->n = n;
        hd->t = 0;
        hd->have_jvp = 0;
        if (!ssw)
            sort_weights(net, params, sw0);
        for (size_t r = 0; k && r < n; r++)
            memcpy(xs + r * kd, ctx + r * k, k * sizeof *xs);
        hd->magic = WS_STEP_MAGIC;
    } else {
        if (hd->magic != WS_STEP_MAGIC || hd->n != n ||
            hd->step_next != step)
            return FLOW_ERR_INVAL;
        for (size_t r = 0; r < n; r++)
            xs[r * kd + k + step - 1] = x_prev[r];
    }
    in = xs;
    ldin = kd;
    pr = k + step;              /* inputs of degree <= step, in order */
    for (size_t l = 0; l + 1 < L; l++) {
        const nn_layer *ly = &net->layer[l];
        const size_t *bs = net->bstart + l * (d + 1);
        size_t b0 = bs[step], b1 = bs[step + 1];
        flow_real *h = hs + hidden_off(net, l) * n;
        const flow_real *w = ssw ? prep_w(net, ssw, l)
                             : l ? params + ly->w_off : sw0 + ly->m_off;
        const flow_real *b = ssw ? prep_b(net, ssw, l) : params + ly->b_off;
        if (b1 > b0) {
            if (pr) {
                st = blas_gemm(0, 1, n, b1 - b0, pr, 1, in, ldin,
                               w + b0 * ly->cols, ly->cols, 0, h + b0,
                               ly->out);
                if (st != FLOW_OK)
                    return st;
            } else {
                for (size_t r = 0; r < n; r++)
                    memset(h + r * ly->out + b0, 0, (b1 - b0) * sizeof *h);
            }
            bias_act_block(net, h + b0, ly->out, n, b1 - b0, b + b0);
        }
        in = h;
        ldin = ly->out;
        pr = bs[step + 1];      /* this layer's units of degree <= step */
    }
    {
        const nn_layer *ly = &net->layer[L - 1];
        size_t out = net->out;
        /* the rows of the dimension of degree step + 1 */
        size_t row = (ssw ? step : net->by_deg[step]) * out;
        const flow_real *w = ssw ? prep_w(net, ssw, L - 1)
                             : L > 1 ? params + ly->w_off : sw0 + ly->m_off;
        const flow_real *b = (ssw ? prep_b(net, ssw, L - 1)
                                  : params + ly->b_off) + row;
        if (pr) {
            st = blas_gemm(0, 1, n, out, pr, 1, in, ldin,
                           w + row * ly->cols, ly->cols, 0, theta, out);
            if (st != FLOW_OK)
                return st;
        } else {
            memset(theta, 0, n * out * sizeof *theta);
        }
        for (size_t r = 0; r < n; r++)
            for (size_t q = 0; q < out; q++)
                theta[r * out + q] += b[q];
    }
    hd->step_next = step + 1;
    return FLOW_OK;
}

int nn_made_step(const flow_net *net, const flow_real *params, size_t n,
                 const flow_real *ctx, size_t step, const flow_real *x_prev,
                 flow_real *theta, void *ws)
{
    if (!params)
        return FLOW_ERR_INVAL;
    return made_step_run(net, params, NULL, n, ctx, step, x_prev, theta, ws);
}

/* The same on nn_made_sort's weights (no sort per sampling call; rows and
 * columns read are within each row's prefix, so the same values and the
 * same products as nn_made_step). */
int nn_made_step_sorted(const flow_net *net, const flow_real *sorted,
                        size_t n, const flow_real *ctx, size_t step,
                        const flow_real *x_prev, flow_real *theta, void *ws)
{
    if (!sorted)
        return FLOW_ERR_INVAL;
    return made_step_run(net, NULL, sorted, n, ctx, step, x_prev, theta, ws);
}

/* ------------------------ the density pass in degree order, blocked */

size_t nn_made_sorted_count(const flow_net *net)
{
    if (!net || !net->sortable)
        return 0;
    /* head, weights, biases, nn_made_grad's scratch (3 x max_width), then
     * the transposed weights of the tgemm forward (made_wt) */
    return prep_reals(net) + net->mask_total + all_rows(net)
           + 3 * net->max_width + net->mask_total;
}

/* 1 when layer l's rows and columns in degree order are those of the
 * parameters: its hidden rows and deeper columns always (made_masks
 * stores them by degree); layer 0's columns and the output rows when
 * there is no context and the inputs' order is the natural one. */
static int made_direct(const flow_net *net, size_t l)
{
    const nn_layer *ly = &net->layer[l];
    const size_t *rm = net->rmap + sort_roff(net, l);
    const uint32_t *cm = net->cmap + sort_coff(net, l);
    if (ly->cols != ly->in)
        return 0;
    for (size_t p = 0; p < ly->out; p++)
        if (rm[p] != p)
            return 0;
    for (size_t q = 0; q < ly->in; q++)
        if (cm[q] != q)
            return 0;
    return 1;
}

/* Runs being listed: at most cap written to runs, n counted, the last
 * one ending at end (kept past cap, so that the count does not depend on
 * cap). */
typedef struct run_list {
    size_t *runs, cap, n, end;
} run_list;

/* Appends the run [off, off + len), merged into the last one when that
 * ends at off. */
static void run_push(run_list *rl, size_t off, size_t len)
{
    if (len == 0)
        return;
    if (rl->n && rl->end == off) {
        if (rl->n <= rl->cap)
            rl->runs[2 * rl->n - 1] += len;
    } else {
        if (rl->n < rl->cap) {
            rl->runs[2 * rl->n] = off;
            rl->runs[2 * rl->n + 1] = len;
        }
        rl->n++;
    }
    rl->end = off + len;
}

/* The host's net_made_grad_support (flow_plugin.h).  nn_made_backward
 * writes row block [p0, p1) of layer l's dW at columns [0, ext[p0]) of
 * its rows in degree order, and every bias; nn_made_grad then leaves a
 * layer read from the parameters (prep_is_direct) as it is but for
 * zeros in columns [vis[p], ext[p]), and moves any other layer's rows
 * and columns (rmap, cmap) anywhere in its matrix.  So a layer whose
 * degree order is the parameters' (made_direct, structural, unlike
 * prep_is_direct, which also asks that the parameters be masked) gives
 * run (w_off + p cols, ext[p]) per row p, whichever of nn_made_grad's
 * two paths a batch takes (the second writes each row whole, 0 past
 * vis[p]); any other layer its whole matrix.  The layers' weights and
 * biases follow one another in the parameters (nn.c), so the runs come
 * out increasing. */
size_t nn_made_grad_support(const flow_net *net, size_t *runs, size_t cap)
{
    run_list rl = {runs, runs ? cap : 0, 0, 0};
    if (!net)
        return 0;
    if (!net->sortable) {
        run_push(&rl, 0, net->n_params);
        return rl.n;
    }
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const size_t *ex = net->ext + sort_roff(net, l);
        if (made_direct(net, l))
            for (size_t p = 0; p < ly->out; p++)
                run_push(&rl, ly->w_off + p * ly->cols, ex[p]);
        else
            run_push(&rl, ly->w_off, ly->out * ly->cols);
        run_push(&rl, ly->b_off, ly->out);
    }
    return rl.n;
}

/* 1 when a weight the blocked passes read but the mask zeroes (row p,
 * columns vis[p] .. ext[p]: the block's prefix past the row's own) is
 * not +-0 in layer l of params (NaN included): an OR over the bits
 * without the sign, as masked_nonzero, once per batch. */
static int made_block_dirty(const flow_net *net, const flow_real *params,
                            size_t l)
{
#if FLOW_REAL_DOUBLE
    typedef uint64_t bits_t;
#else
    typedef uint32_t bits_t;
#endif
    const nn_layer *ly = &net->layer[l];
    size_t roff = sort_roff(net, l);
    const size_t *ex = net->ext + roff, *vi = net->vis + roff;
    bits_t acc = 0;
    for (size_t p = 0; p < ly->out; p++) {
        const flow_real *wr = params + ly->w_off + p * ly->cols;
#if defined(__GNUC__)
        /* rows a page apart: the hardware prefetcher stops at each */
        if (p + 8 < ly->out)
            for (size_t q = vi[p + 8]; q < ex[p + 8]; q += 64 / sizeof *wr)
                __builtin_prefetch(wr + 8 * ly->cols + q);
#endif
        for (size_t q = vi[p]; q < ex[p]; q++) {
            bits_t b;
            memcpy(&b, wr + q, sizeof b);
            acc |= b << 1;
        }
    }
    return acc != 0;
}

/* sw: the head (made_prep: params and which layers are read from them),
 * then per layer not read from params the masked weights with rows and
 * columns in degree order (at prep_reals + m_off, rows x cols, each row
 * written up to its block's prefix ext and 0 for 7 more; the rest is
 * never read), then those layers' biases in row order (at prep_reals +
 * mask_total + the layer's row offset), then made_wt.  A layer in degree
 * order in the parameters (made_direct) is read from them when the
 * weights the blocks read past their rows' masks are 0, as init and
 * training keep them; otherwise (parameters from elsewhere) it is copied
 * with the mask applied. */
int nn_made_sort(const flow_net *net, const flow_real *params, flow_real *sw)
{
    made_prep *hd = (made_prep *)(void *)sw;
    uint8_t *direct;
    flow_real *dw;
    if (!net || !params || !sw)
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    direct = (uint8_t *)sw + sizeof(made_prep);
    dw = sw + prep_reals(net);
    hd->magic = PREP_MAGIC;
    hd->params = params;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        size_t roff = sort_roff(net, l);
        const size_t *rm = net->rmap + roff, *ex = net->ext + roff;
        const size_t *vi = net->vis + roff;
        const uint32_t *cm = net->cmap + sort_coff(net, l);
        const flow_real *w = params + ly->w_off;
        flow_real *dst = dw + ly->m_off;
        direct[l] = (uint8_t)(made_direct(net, l)
                              && !made_block_dirty(net, params, l));
        if (direct[l])
            continue;
        for (size_t p = 0; p < ly->out; p++) {
            const flow_real *wr = w + rm[p] * ly->cols;
            flow_real *dr = dst + p * ly->cols;
            size_t q = 0;
            /* the mask row in degree order: vis[p] ones, then zeros */
            for (; q < vi[p]; q++)
                dr[q] = wr[cm[q]];
            /* and up to 7 past the prefix, which made_gemm's last tile
             * of dX = G W reads into columns it discards */
            for (; q < ex[p] + 7 && q < ly->cols; q++)
                dr[q] = 0;
            dw[net->mask_total + roff + p] = params[ly->b_off + rm[p]];
        }
    }
    made_prep_wt(net, sw);
    return FLOW_OK;
}

/* The gradient in nn_made_backward's layout (each layer's W at w_off in
 * degree order up to ext, its biases at b_off in degree order) mapped in
 * place to the parameters' layout, masked weights 0.  A layer read from
 * the parameters is in their layout already: only the masked weights its
 * blocks wrote (vis[p] .. ext[p] of each row) are set to 0.  Otherwise
 * sorted row p goes to row rmap[p], scattered by cmap: the rows move
 * along the cycles of rmap, one row held aside (scratch at the end of
 * sw), so nothing is copied twice and no gradient-sized buffer is
 * needed. */
int nn_made_grad(const flow_net *net, flow_real *grad, flow_real *sw)
{
    if (!net || !grad || !sw)
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    if (((const made_prep *)(const void *)sw)->magic != PREP_MAGIC)
        return FLOW_ERR_INVAL;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        size_t roff = sort_roff(net, l), C = ly->cols;
        const size_t *rm = net->rmap + roff, *vi = net->vis + roff;
        const size_t *ex = net->ext + roff;
        const uint32_t *cm = net->cmap + sort_coff(net, l);
        const uint8_t *lead = net->lead + roff;
        flow_real *a = sw + prep_reals(net) + net->mask_total
                       + all_rows(net);
        flow_real *b = a + net->max_width, *bias = b + net->max_width;
        flow_real *w = grad + ly->w_off;
        if (prep_is_direct(sw, l)) {
            for (size_t p = 0; p < ly->out; p++)
                if (ex[p] > vi[p])
                    memset(w + p * C + vi[p], 0,
                           (ex[p] - vi[p]) * sizeof *w);
            continue;
        }
        for (size_t p0 = 0; p0 < ly->out; p0++) {
            size_t cur = p0;
            if (!lead[p0])
                continue;
            memcpy(a, w + p0 * C, vi[p0] * sizeof *a);
            for (;;) {
                size_t nxt = rm[cur];
                flow_real *row = w + nxt * C, *t;
                if (nxt != p0)   /* sorted row nxt, needed next */
                    memcpy(b, row, vi[nxt] * sizeof *b);
                memset(row, 0, C * sizeof *row);
                for (size_t q = 0; q < vi[cur]; q++)
                    row[cm[q]] = a[q];
                if (nxt == p0)
                    break;
                t = a;
                a = b;
                b = t;
                cur = nxt;
            }
        }
        memcpy(bias, grad + ly->b_off, ly->out * sizeof *bias);
        for (size_t p = 0; p < ly->out; p++)
            grad[ly->b_off + rm[p]] = bias[p];
    }
    return FLOW_OK;
}

/* 1 when layer l's forward takes one GEMM per row block over its prefix:
 * column blocks would average under 32 wide (few inputs, maf64's first
 * layer: 64 inputs over 8 blocks; docs/runtime.md). */
static int made_by_rows(const flow_net *net, size_t l)
{
    const nn_layer *ly = &net->layer[l];
    return (l ? ly->in : net->k + net->d) * MADE_BLOCK < 32 * ly->out;
}

/* Layer l of nn_made_forward through OpenBLAS: z = in W^T + b over the
 * blocks' prefixes (the float64 build, and CPUs without tgemm). */
static int made_layer_blas(const flow_net *net, size_t l, size_t n,
                           const flow_real *in, size_t ldin,
                           const flow_real *w, const flow_real *bias,
                           flow_real *z)
{
    const nn_layer *ly = &net->layer[l];
    size_t R = ly->out, C = ly->cols;
    const size_t *ex = net->ext + sort_roff(net, l);
    int st = FLOW_OK;
    fill_rows(n, R, bias, z);
    if (made_by_rows(net, l)) {
        for (size_t p0 = 0; p0 < R && st == FLOW_OK; p0 += MADE_BLOCK) {
            size_t p1 = p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R;
            if (ex[p0])
                st = blas_gemm(0, 1, n, p1 - p0, ex[p0], 1, in, ldin,
                               w + p0 * C, C, 1, z + p0, R);
        }
        return st;
    }
    /* by column blocks: columns [ext of block b-1, ext of block b) feed
     * the rows of blocks b, b+1, ... (ext grows with the degree); each
     * input column is packed for BLAS once, where row blocks would pack
     * their prefix again for every block */
    for (size_t p0 = 0, e0 = 0; p0 < R && st == FLOW_OK; p0 += MADE_BLOCK) {
        size_t e1 = ex[p0];
        if (e1 <= e0)
            continue;
        st = blas_gemm(0, 1, n, R - p0, e1 - e0, 1, in + e0, ldin,
                       w + p0 * C + e0, C, 1, z + p0, R);
        e0 = e1;
    }
    return st;
}

#if !FLOW_REAL_DOUBLE
/* z[r][p] = act(bias[p]) for rows p in [p0, p1) that see no input (a
 * block whose prefix is empty): the value of the GEMMs' epilogue with no
 * products. */
static void made_bias_only(size_t n, size_t R, size_t p0, size_t p1,
                           const flow_real *bias, int relu, flow_real *z)
{
    for (size_t r = 0; r < n; r++) {
        flow_real *zr = z + r * R;
        for (size_t p = p0; p < p1; p++)
            zr[p] = relu ? pos_mask(bias[p]) * bias[p] : bias[p];
    }
}

/* Layer l of nn_made_forward on tgemm against W^T in degree order (wt,
 * made_wt): the same blocks as made_layer_blas, with the bias added by
 * the epilogue of each row's first product instead of a pass filling z,
 * and ReLU (relu) by the epilogue of its last: rows [p0, q) are complete
 * once the column block ending at ext[p0] is in, q the first row block
 * whose prefix is longer, so that block's product is split at q, the
 * columns before it with ReLU.  Each entry is the same sequence of
 * operations as fill, products, act_inplace (the bias added as C would
 * be; tgemm's ReLU is act_inplace's pos_mask(v) v): the same bits. */
static int made_layer_tgemm(const flow_net *net, size_t l, size_t n,
                            const flow_real *in, size_t ldin,
                            const flow_real *wt, const flow_real *bias,
                            int relu, flow_real *z)
{
    const nn_layer *ly = &net->layer[l];
    size_t R = ly->out;
    const size_t *ex = net->ext + sort_roff(net, l);
    if (made_by_rows(net, l)) {
        for (size_t p0 = 0; p0 < R; p0 += MADE_BLOCK) {
            size_t p1 = p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R;
            tgemm_epi ep = {.bias = bias + p0, .relu = relu};
            if (!ex[p0])
                made_bias_only(n, R, p0, p1, bias, relu, z);
            else if (!tgemm_mixed_ep(n, p1 - p0, ex[p0], in, ldin, 1,
                                     wt + p0, R, &ep, z + p0, R))
                return FLOW_ERR_UNSUPPORTED;
        }
        return FLOW_OK;
    }
    for (size_t p0 = 0, e0 = 0; p0 < R; p0 += MADE_BLOCK) {
        size_t e1 = ex[p0], q = p0;
        tgemm_epi ep = {.relu = relu};
        if (e1 <= e0) {
            if (e1 == 0)        /* no input yet: the bias alone */
                made_bias_only(n, R, p0,
                               p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R,
                               bias, relu, z);
            continue;
        }
        while (q < R && ex[q] <= e1)
            q += MADE_BLOCK;
        if (q > R)
            q = R;
        if (e0 == 0)
            ep.bias = bias + p0;
        else
            ep.acc = 1;
        /* rows [p0, q) complete here: their activation in the epilogue */
        if (!tgemm_mixed_ep(n, q - p0, e1 - e0, in + e0, ldin, 1,
                            wt + e0 * R + p0, R, &ep, z + p0, R))
            return FLOW_ERR_UNSUPPORTED;
        ep.relu = 0;
        if (ep.bias)
            ep.bias = bias + q;
        if (q < R && !tgemm_mixed_ep(n, R - q, e1 - e0, in + e0, ldin, 1,
                                     wt + e0 * R + q, R, &ep, z + q, R))
            return FLOW_ERR_UNSUPPORTED;
        e0 = e1;
    }
    return FLOW_OK;
}
#endif

/* Same as nn_forward on the parameters sw was sorted from, in degree
 * order: each block of MADE_BLOCK rows is one GEMM over its input prefix
 * (made_blocks), the masked zeros past it skipped; the same sums as the
 * dense product up to the order of the additions. */
int nn_made_forward(const flow_net *net, const flow_real *sw, size_t n,
                    const flow_real *x, const flow_real *ctx, flow_real *y,
                    void *ws)
{
    ws_head *hd = ws;
    sort_layout so;
    size_t d, k, kd, ldin, yw;
    const flow_real *in;
    flow_real *xs, *ys;
    int out_direct;
    if (!net || !sw || !x || !y || !ws || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    if (((const made_prep *)(const void *)sw)->magic != PREP_MAGIC)
        return FLOW_ERR_INVAL;
    d = net->d;
    k = net->k;
    if (k && !ctx)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    sort_layout_of(net, n, &so);
    hd->magic = 0;
    hd->n = n;
    hd->t = 0;
    hd->have_jvp = 0;
    kd = k + d;
    yw = net->y_width;
    xs = at(ws, so.xs);
    ys = at(ws, so.ys);
    for (size_t r = 0; r < n; r++) {
        flow_real *xr = xs + r * kd;
        for (size_t j = 0; j < k; j++)
            xr[j] = ctx[r * k + j];
        for (size_t q = 0; q < d; q++)
            xr[k + q] = x[r * d + net->by_deg[q]];
    }
    /* output rows in the spec's order already: the last GEMMs write y */
    out_direct = 1;
    for (size_t p = 0; p < yw && out_direct; p++)
        out_direct = net->rmap[hidden_rows(net) + p] == p;
    if (out_direct)
        ys = y;
    in = xs;
    ldin = kd;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        size_t R = ly->out;
        const flow_real *w = prep_w(net, sw, l);
        /* W^T for tgemm: column block [e0, e1) of rows p0.. is the k x n
         * matrix at row e0, column p0 of made_wt (stride R) */
        const flow_real *wt =
            ((const made_prep *)(const void *)sw)->have_wt
                ? sw + made_wt(net, l) : NULL;
        flow_real *h = last ? NULL : at(ws, so.h) + hidden_off(net, l) * n;
        flow_real *z = last ? ys
                       : net->act == FLOW_ACT_RELU
                       ? h : at(ws, so.z) + hidden_off(net, l) * n;
        int relu = !last && net->act == FLOW_ACT_RELU, st;
        (void)wt;               /* read by the float build's tgemm only */
#if !FLOW_REAL_DOUBLE
        if (wt)
            st = made_layer_tgemm(net, l, n, in, ldin, wt,
                                  prep_b(net, sw, l), relu, z);
        else
#endif
        {
            relu = 0;
            st = made_layer_blas(net, l, n, in, ldin, w, prep_b(net, sw, l),
                                 z);
        }
        if (st != FLOW_OK)
            return st;
        if (!last) {
            if (!relu)
                act_inplace(net, n * R, z, h);
            in = h;
            ldin = R;
        }
    }
    if (!out_direct) {
        const size_t *rm = net->rmap + hidden_rows(net);
        for (size_t r = 0; r < n; r++)
            for (size_t p = 0; p < yw; p++)
                y[r * yw + rm[p]] = ys[r * yw + p];
    }
    hd->magic = WS_SORT_MAGIC;
    return FLOW_OK;
}

/* Same as nn_backward after nn_made_forward on ws, except that dparams
 * receives (accumulates) the gradient in degree order, which
 * nn_made_grad maps to the parameters' layout.  The input adjoint of a
 * layer goes by column blocks: columns [ext of block b-1, ext of block b)
 * are read by the rows of blocks b, b+1, ... only (ext grows with the
 * degree), one GEMM each; columns past the last ext by no row (0). */
int nn_made_backward(const flow_net *net, const flow_real *sw, size_t n,
                     void *ws, const flow_real *dy, flow_real *dx,
                     flow_real *dctx, flow_real *dparams)
{
    const ws_head *hd = ws;
    sort_layout so;
    size_t d, k, kd, yw, L;
    flow_real *buf[2], *gcur;
    int nb = 1;
    if (!net || !sw || !ws || !dy || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    if (n == 0)
        return FLOW_OK;
    if (hd->magic != WS_SORT_MAGIC || hd->n != n)
        return FLOW_ERR_INVAL;
    sort_layout_of(net, n, &so);
    d = net->d;
    k = net->k;
    kd = k + d;
    yw = net->y_width;
    L = net->n_layers;
    buf[0] = at(ws, so.g[0]);
    buf[1] = at(ws, so.g[1]);
    gcur = buf[0];
    {
        const size_t *rm = net->rmap + hidden_rows(net);
        for (size_t r = 0; r < n; r++)
            for (size_t p = 0; p < yw; p++)
                gcur[r * yw + p] = dy[r * yw + rm[p]];
    }
    if (dparams)
        colsum_add(n, yw, gcur, dparams + net->layer[L - 1].b_off);
    for (size_t l = L; l-- > 0;) {
        const nn_layer *ly = &net->layer[l];
        size_t R = ly->out, C = l ? ly->in : kd, e0 = 0;
        const size_t *ex = net->ext + sort_roff(net, l);
        const flow_real *w = prep_w(net, sw, l);
        const flow_real *in =
            l ? at(ws, so.h) + hidden_off(net, l - 1) * n : at(ws, so.xs);
        flow_real *gin = buf[nb];
        /* ReLU below on tgemm (the forward's made_wt says it runs here):
         * the activation's backward fused into the products of dh */
        int fuse = l > 0 && net->act == FLOW_ACT_RELU
                   && ((const made_prep *)(const void *)sw)->have_wt;
        const flow_real *hprev =
            l ? at(ws, so.h) + hidden_off(net, l - 1) * n : NULL;
        int st;
        (void)hprev;            /* read by the float build's tgemm only */
        if (dparams)
            for (size_t p0 = 0; p0 < R; p0 += MADE_BLOCK) {
                size_t p1 = p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R;
                if (ex[p0] == 0)
                    continue;
                st = made_gemm(1, p1 - p0, ex[p0], n, gcur + p0, R, in, C,
                               1, dparams + ly->w_off + p0 * ly->cols,
                               ly->cols);
                if (st != FLOW_OK)
                    return st;
            }
        if (l == 0 && !dx && !(dctx && k))
            return FLOW_OK;
        for (size_t p0 = 0; p0 < R; p0 += MADE_BLOCK) {
            size_t e1 = ex[p0];
            if (e1 <= e0)
                continue;
#if !FLOW_REAL_DOUBLE
            if (fuse) {
                /* column block [e0, e1) of dh is complete in this product
                 * (every row that reads it is in [p0, R)): ReLU's
                 * derivative and the bias gradient's column sums in its
                 * epilogue, grad_act_bias's operations in its order */
                tgemm_epi ep = {
                    .gate = hprev + e0, .ldg = C,
                    .colsum = dparams ? dparams + net->layer[l - 1].b_off + e0
                                      : NULL};
                if (!tgemm_mixed_ep(n, e1 - e0, R - p0, gcur + p0, R, 1,
                                    w + p0 * ly->cols + e0, ly->cols, &ep,
                                    gin + e0, C))
                    return FLOW_ERR_UNSUPPORTED;
                e0 = e1;
                continue;
            }
#endif
            st = made_gemm(0, n, e1 - e0, R - p0, gcur + p0, R,
                           w + p0 * ly->cols + e0, ly->cols, 0, gin + e0,
                           C);
            if (st != FLOW_OK)
                return st;
            e0 = e1;
        }
        if (e0 < C)
            for (size_t r = 0; r < n; r++)
                memset(gin + r * C + e0, 0, (C - e0) * sizeof *gin);
        if (l == 0) {
            for (size_t r = 0; r < n; r++) {
                const flow_real *gr = gin + r * kd;
                if (dctx)
                    for (size_t j = 0; j < k; j++)
                        dctx[r * k + j] += gr[j];
                if (dx)
                    for (size_t q = 0; q < d; q++)
                        dx[r * d + net->by_deg[q]] = gr[k + q];
            }
            return FLOW_OK;
        }
        if (!fuse) {
            size_t hp = hidden_off(net, l - 1) * n;
            const flow_real *h = at(ws, so.h) + hp;
            const flow_real *z = net->act == FLOW_ACT_RELU ? h
                                                           : at(ws, so.z) + hp;
            grad_act_bias(net, n, C, z, h, gin,
                          dparams ? dparams + net->layer[l - 1].b_off : NULL);
        }
        gcur = gin;
        nb = 1 - nb;
    }
    return FLOW_OK;
}

/* ------------------------------------ parameters of the cyclic order */

/* Parameters of format-2 checkpoints (docs/formats.md) stored the
 * hidden units in the cyclic order of made_masks; since format 3 they are
 * sorted by degree.  Stored unit p is cyclic unit sperm[p] (the stable
 * sort of made_masks): its weight row, its bias and its column in the
 * layer above move to p.  Any vector in the parameters' layout (Adam's
 * moments too) converts the same way; the network's function does not
 * change (the same units, relabelled). */
int nn_made_from_cyclic(const flow_net *net, flow_real *params)
{
    flow_real *tmp;
    if (!net || !params)
        return FLOW_ERR_INVAL;
    if (net->kind != FLOW_NET_MADE || !net->sperm)
        return FLOW_OK;
    tmp = malloc((net->max_wsize > net->max_width ? net->max_wsize
                                                   : net->max_width)
                 * sizeof *tmp + 1);
    if (!tmp)
        return FLOW_ERR_NOMEM;
    for (size_t l = 0; l + 1 < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l], *up = &net->layer[l + 1];
        const size_t *perm = net->sperm + hidden_off(net, l);
        flow_real *w = params + ly->w_off, *b = params + ly->b_off;
        flow_real *wu = params + up->w_off;
        memcpy(tmp, w, ly->out * ly->cols * sizeof *tmp);
        for (size_t p = 0; p < ly->out; p++)
            memcpy(w + p * ly->cols, tmp + perm[p] * ly->cols,
                   ly->cols * sizeof *w);
        memcpy(tmp, b, ly->out * sizeof *tmp);
        for (size_t p = 0; p < ly->out; p++)
            b[p] = tmp[perm[p]];
        if (net->time == FLOW_TIME_CONCATSQUASH) {  /* per-unit gates */
            flow_real *g[3] = {params + ly->ga_off, params + ly->gc_off,
                               params + ly->gd_off};
            for (int i = 0; i < 3; i++) {
                memcpy(tmp, g[i], ly->out * sizeof *tmp);
                for (size_t p = 0; p < ly->out; p++)
                    g[i][p] = tmp[perm[p]];
            }
        }
        for (size_t r = 0; r < up->out; r++) {
            flow_real *row = wu + r * up->cols;
            memcpy(tmp, row, ly->out * sizeof *tmp);
            for (size_t q = 0; q < ly->out; q++)
                row[q] = tmp[perm[q]];
        }
    }
    free(tmp);
    return FLOW_OK;
}

/* The host's net_init: for a MADE, nn_init's draws as they fell in the
 * cyclic order (the same stream, fan-ins and masks), each written where
 * nn_made_from_cyclic moves it, so that a seed gives the network it gave
 * in format 2, to the bit; no allocation (net_init cannot fail).  Other
 * nets: nn_init. */
void nn_made_net_init(const flow_net *net, flow_real *params, flow_rng *rng)
{
    flow_rng local;
    size_t hr;
    if (!net || !params || net->kind != FLOW_NET_MADE || !net->mask
        || !net->sperm) {
        nn_init(net, params, rng);
        return;
    }
    if (!rng) {
        rng_seed(&local, net->seed ^ 0x6e6e696e6974ull);  /* as nn_init */
        rng = &local;
    }
    hr = hidden_rows(net);
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const uint8_t *m = net->mask + ly->m_off;
        int last = l + 1 == net->n_layers;
        int zero = last && net->zero_last;
        /* stored row / column of cyclic row r / column j */
        const size_t *ri = last ? NULL : net->sperm + hr + hidden_off(net, l);
        const size_t *ci = l ? net->sperm + hr + hidden_off(net, l - 1)
                             : NULL;
        flow_real *w = params + ly->w_off;
        for (size_t r = 0; r < ly->out; r++) {
            size_t p = ri ? ri[r] : r, fan = 0;
            const uint8_t *mr = m + p * ly->cols;
            double sc;
            for (size_t j = 0; j < ly->cols; j++)
                fan += mr[j];
            if (fan == 0)
                fan = 1;
            sc = 1.0 / sqrt((double)fan);   /* nn_init's U(-s, s) */
            for (size_t j = 0; j < ly->cols; j++) {
                size_t q = ci && j < ly->in ? ci[j] : j;
                double v = (2 * rng_uniform(rng) - 1) * sc;
                w[p * ly->cols + q] = zero || !mr[q] ? 0 : (flow_real)v;
            }
            params[ly->b_off + p] =
                zero ? 0 : (flow_real)((2 * rng_uniform(rng) - 1) * sc);
        }
        if (net->time == FLOW_TIME_CONCATSQUASH)
            for (size_t r = 0; r < ly->out; r++) {
                size_t p = ri ? ri[r] : r;
                params[ly->ga_off + p] = (flow_real)(2 * rng_uniform(rng) - 1);
                params[ly->gc_off + p] = (flow_real)(2 * rng_uniform(rng) - 1);
                params[ly->gd_off + p] =
                    zero ? 0 : (flow_real)(2 * rng_uniform(rng) - 1);
            }
    }
}
