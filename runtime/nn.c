/* nn.c - MLP and MADE networks of the host table (Germain et al. 2015):
 * forward with a tape, VJP, JVP and the JVP's VJP, all in caller memory. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "matrix.h"
#include "nn.h"
#include "rng.h"
#include "tgemm.h"
#include "vec.h"

#define WS_MAGIC 0x666c6f776e6e7631ull  /* "flownnv1" */
#define WS_STEP_MAGIC 0x666c6f776d737431ull  /* "flowmst1": nn_made_step */
#define WS_SORT_MAGIC 0x666c6f77736f7231ull  /* "flowsor1": nn_made_forward */
/* Rows per block of a MADE layer in degree order (nn_made_forward): each
 * block's GEMM reads the input prefix of its highest degree. */
#define MADE_BLOCK 64
#define WS_ALIGN 64

typedef struct nn_layer {
    size_t in;                  /* inputs (layer 0: D + K)                  */
    size_t out;                 /* outputs (rows of W)                      */
    size_t cols;                /* columns of W: in (+1 for concat time)    */
    size_t w_off, b_off;        /* parameter offsets                        */
    size_t ga_off, gc_off, gd_off; /* concatsquash vectors                  */
    size_t m_off;               /* MADE: offset into net->mask / masked W  */
    size_t g_off;               /* concatsquash: offset of its gate vector */
    size_t sn_off;              /* spectral norm: offset (doubles) of sigma,
                                   scale, u[out], v[cols] in the workspace */
} nn_layer;

struct flow_net {
    flow_net_kind kind;
    size_t d, k, out, y_width;  /* D, K, outputs per dim / MLP outputs, total */
    flow_activation act;
    double slope;               /* leaky_relu */
    int zero_last;
    flow_time_mode time;
    uint64_t seed;
    size_t n_layers;
    nn_layer *layer;
    size_t n_params;
    uint8_t *mask;              /* MADE: all layers' masks, NULL for MLP   */
    size_t mask_total;          /* elements of mask (sum rows * cols)      */
    size_t max_wsize;           /* largest rows * cols                     */
    size_t max_width;           /* largest in / out of any layer           */
    size_t gate_total;          /* sum of rows (concatsquash gates)        */
    double sn;                  /* spectral-norm bound c, 0 = none         */
    size_t sn_total;            /* doubles of spectral-norm state per call */
    size_t sn_scratch;          /* bytes of LAPACK scratch (spectral norm) */
    int derived;                /* weights used != params (MADE or sn)     */
    int premasked;              /* MADE: params used as they are, masked
                                   weights known to be 0 (spec.premasked)  */
    /* MADE sampling by degree (nn_made_step): by_deg[s] = the input of
     * degree s + 1; per hidden layer l, sperm + hidden_off(l) lists its
     * units sorted by degree (stable) and bstart + l * (D + 1) holds, for
     * k = 0..D, the number of its units of degree < k. */
    size_t *by_deg;
    size_t *sperm;
    size_t *bstart;
    /* MADE in degree order (nn_made_forward / nn_made_backward), set when
     * the net is sortable (premasked, no time input, no spectral norm):
     * per layer, at row offset hidden_off(l) (the output layer after the
     * hidden rows), rmap = the parameter row of sorted row p and ext = the
     * sorted input columns its block of rows reads; cmap (at the sum of
     * the inputs of the layers below) = the parameter column of sorted
     * column q. */
    int sortable;
    size_t *rmap, *ext, *vis;
    uint32_t *cmap;             /* 32 bits: the sort's gather reads it */
    uint8_t *lead;              /* row p leads its cycle of rmap (the
                                   smallest index in it): nn_made_grad */
};

/* Workspace header; the tape follows at WS_ALIGN offsets. */
typedef struct ws_head {
    uint64_t magic;
    size_t n;
    double t;
    int have_jvp;
    size_t step_next;           /* nn_made_step: the step expected next */
} ws_head;

/* Offsets (bytes from ws) of the tape for n rows. */
typedef struct ws_layout {
    size_t wm, gw, sn, sn_scratch, gate, xin, cin;
    size_t u, z, h, tu, tz, th;  /* per-layer arrays start here, each
                                    layer at + off_rows * n * sizeof    */
    size_t s[4];                 /* backward scratch, n x max_width each  */
    size_t bsum;                 /* bias-gradient sums, max_width doubles */
    size_t total;
} ws_layout;

/* Offsets of nn_made_step's state, which reuses the same workspace:
 * weights with rows and columns sorted by degree (sw), the inputs in
 * degree order after the context (xs, n x (K + D)), the hidden units in
 * degree order (hs, per layer at hidden_off * n) and one block's biases. */
typedef struct step_layout {
    size_t sw, xs, hs, bb, total;
} step_layout;

/* Offsets of nn_made_forward's tape (inputs in degree order xs, n x (K +
 * D); hidden pre-activations z, only for activations other than ReLU, and
 * units h, in degree order per layer at hidden_off * n) and of the
 * outputs in degree order ys (n x D*out), plus nn_made_backward's two
 * adjoint buffers (n x max_width each). */
typedef struct sort_layout {
    size_t xs, z, h, ys, g[2], total;
} sort_layout;

/* ---------------------------------------------------------- helpers */

/* v rounded up to WS_ALIGN, saturating at SIZE_MAX (never wraps) */
static size_t round_up(size_t v)
{
    if (v > SIZE_MAX - (WS_ALIGN - 1))
        return SIZE_MAX;
    return (v + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
}

/* a * b with overflow to SIZE_MAX (saturating: sizes are checked later) */
static size_t mul_sat(size_t a, size_t b)
{
    return (b && a > SIZE_MAX / b) ? SIZE_MAX : a * b;
}

static size_t add_sat(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* Sum of layer widths of hidden layers (rows of layers 0..L-2). */
static size_t hidden_rows(const flow_net *net)
{
    size_t s = 0;
    for (size_t l = 0; l + 1 < net->n_layers; l++)
        s += net->layer[l].out;
    return s;
}

static size_t all_rows(const flow_net *net)
{
    return hidden_rows(net) + net->layer[net->n_layers - 1].out;
}

/* Offset (in elements per row) of hidden layer l inside the per-layer
 * hidden arrays z, h, tz, th. */
static size_t hidden_off(const flow_net *net, size_t l)
{
    size_t s = 0;
    for (size_t i = 0; i < l; i++)
        s += net->layer[i].out;
    return s;
}

static void layout(const flow_net *net, size_t n, ws_layout *lo)
{
    const size_t r = sizeof(flow_real);
    size_t off = round_up(sizeof(ws_head));
    size_t hid = mul_sat(mul_sat(n, hidden_rows(net)), r);
    size_t allr = mul_sat(mul_sat(n, all_rows(net)), r);
    int der = net->derived;
    int squash = net->time == FLOW_TIME_CONCATSQUASH;
#define TAKE(field, bytes) \
    do { lo->field = off; off = add_sat(off, round_up(bytes)); } while (0)
    TAKE(wm, der ? mul_sat(net->mask_total, r) : 0);
    TAKE(gw, der ? mul_sat(net->max_wsize, r) : 0);
    TAKE(sn, mul_sat(net->sn_total, sizeof(double)));
    TAKE(sn_scratch, net->sn_scratch);
    TAKE(gate, squash ? mul_sat(net->gate_total, r) : 0);
    TAKE(xin, mul_sat(mul_sat(n, net->d), r));
    TAKE(cin, mul_sat(mul_sat(n, net->k), r));
    TAKE(u, squash ? allr : 0);
    TAKE(z, hid);
    TAKE(h, hid);
    TAKE(tu, squash ? allr : 0);
    TAKE(tz, hid);
    TAKE(th, hid);
    for (int i = 0; i < 4; i++)
        TAKE(s[i], mul_sat(mul_sat(n, net->max_width), r));
    TAKE(bsum, mul_sat(net->max_width, sizeof(double)));
#undef TAKE
    lo->total = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
}

static void step_layout_of(const flow_net *net, size_t n, step_layout *sl)
{
    const size_t r = sizeof(flow_real);
    size_t off = round_up(sizeof(ws_head));
#define TAKE(field, bytes) \
    do { sl->field = off; off = add_sat(off, round_up(bytes)); } while (0)
    TAKE(sw, mul_sat(net->mask_total, r));
    TAKE(xs, mul_sat(mul_sat(n, add_sat(net->d, net->k)), r));
    TAKE(hs, mul_sat(mul_sat(n, hidden_rows(net)), r));
    TAKE(bb, mul_sat(net->max_width, r));
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

static flow_real *at(void *ws, size_t off)
{
    return (flow_real *)((char *)ws + off);
}

/* v[i] = 0 where m[i] = 0, else v[i] unchanged (bit for bit, NaN
 * included); branch-free on the bits, as masks alternate too often for
 * a branch (MADE hidden degrees are cyclic). */
static void mask_zero(flow_real *restrict v, const uint8_t *restrict m,
                      size_t count)
{
#if FLOW_REAL_DOUBLE
    typedef uint64_t bits_t;
#else
    typedef uint32_t bits_t;
#endif
    for (size_t i = 0; i < count; i++) {
        bits_t b;
        memcpy(&b, &v[i], sizeof b);
        b &= (bits_t)0 - (bits_t)(m[i] != 0);
        memcpy(&v[i], &b, sizeof b);
    }
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

/* ------------------------------------------------------ activations */

static double sigmoid(double z)
{
    if (z >= 0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* f(z), f'(z), f''(z) of the hidden activation; any pointer may be NULL */
static void act_eval(const flow_net *net, double z, double *f, double *f1,
                     double *f2)
{
    double v = z, d1 = 1, d2 = 0, s, e;
    switch (net->act) {
    case FLOW_ACT_IDENTITY:
        break;
    case FLOW_ACT_RELU:              /* f'(+0) = 1, f'(-0) = 0: see pos_mask */
        v = signbit(z) ? 0 : z;
        d1 = signbit(z) ? 0 : 1;
        break;
    case FLOW_ACT_LEAKY_RELU:
        v = signbit(z) ? net->slope * z : z;
        d1 = signbit(z) ? net->slope : 1;
        break;
    case FLOW_ACT_TANH:
        v = tanh(z);
        d1 = 1 - v * v;
        d2 = -2 * v * d1;
        break;
    case FLOW_ACT_ELU:                        /* alpha = 1 */
        if (z <= 0) {
            e = exp(z);
            v = e - 1;
            d1 = e;
            d2 = e;
        }
        break;
    case FLOW_ACT_SOFTPLUS:                   /* log(1 + e^z), stable */
        v = z > 0 ? z + log1p(exp(-z)) : log1p(exp(z));
        s = sigmoid(z);
        d1 = s;
        d2 = s * (1 - s);
        break;
    case FLOW_ACT_SIGMOID:
        s = sigmoid(z);
        v = s;
        d1 = s * (1 - s);
        d2 = d1 * (1 - 2 * s);
        break;
    }
    if (f)
        *f = v;
    if (f1)
        *f1 = d1;
    if (f2)
        *f2 = d2;
}

/* 1 for z >= +0, 0 for z <= -0, without a branch.  ReLU-family loops
 * multiply by this mask: with random signs a branch mispredicts half the
 * time, and GCC -O2 does not if-convert the float select; the branchy
 * loops were ~10x slower and cost more than the GEMMs (docs/runtime.md). */
FLOW_VECTORIZE static inline flow_real pos_mask(flow_real z)
{
#if FLOW_REAL_DOUBLE
    return 0.5 + copysign(0.5, z);
#else
    return 0.5f + copysignf(0.5f, z);
#endif
}

/* h = f(z) over a block, the switch hoisted out of the loop (hot path). */
FLOW_VECTORIZE static void act_apply(const flow_net *net, const flow_real *restrict z,
                      flow_real *restrict h, size_t count)
{
    const flow_real a = (flow_real)net->slope;
    switch (net->act) {
    case FLOW_ACT_RELU:
        for (size_t i = 0; i < count; i++)
            h[i] = pos_mask(z[i]) * z[i];
        return;
    case FLOW_ACT_LEAKY_RELU:
        for (size_t i = 0; i < count; i++) {
            flow_real m = pos_mask(z[i]);
            h[i] = m * z[i] + (1 - m) * (a * z[i]);
        }
        return;
    case FLOW_ACT_IDENTITY:
        memcpy(h, z, count * sizeof *h);
        return;
    default:
        for (size_t i = 0; i < count; i++) {
            double f;
            act_eval(net, z[i], &f, NULL, NULL);
            h[i] = (flow_real)f;
        }
    }
}

/* g *= f'(z) over a block (backward and JVP); h = f(z) from the tape.
 * tanh' = 1 - h^2 from the stored activation: recomputing tanh(z) in
 * every JVP and backward pass took ~70% of FFJORD's training time
 * (docs/ode.md).  ReLU reads h only: the tape has no z for it (see
 * bias_act). */
FLOW_VECTORIZE static void act_grad_mul(const flow_net *net, const flow_real *restrict z,
                         const flow_real *restrict h, flow_real *restrict g,
                         size_t count)
{
    const flow_real a = (flow_real)net->slope;
    switch (net->act) {
    case FLOW_ACT_TANH:
        for (size_t i = 0; i < count; i++) {
            double v = h[i];
            g[i] = (flow_real)(g[i] * (1 - v * v));
        }
        return;
    case FLOW_ACT_RELU:
        for (size_t i = 0; i < count; i++)
            g[i] *= pos_mask(h[i]);
        return;
    case FLOW_ACT_LEAKY_RELU:
        for (size_t i = 0; i < count; i++) {
            flow_real m = pos_mask(z[i]);
            g[i] = m * g[i] + (1 - m) * (a * g[i]);
        }
        return;
    case FLOW_ACT_IDENTITY:
        return;
    default:
        for (size_t i = 0; i < count; i++) {
            double f1;
            act_eval(net, z[i], NULL, &f1, NULL);
            g[i] = (flow_real)(g[i] * f1);
        }
    }
}

/* Forward activation of a hidden layer (h not NULL): h = f(z) over
 * count values.  ReLU runs in place (z == h): its tape keeps h only,
 * since pos_mask(h) == pos_mask(z) (h = pos_mask(z) z is -0 for every
 * z <= -0), which is all that ReLU's derivatives use. */
FLOW_VECTORIZE static void act_inplace(const flow_net *net, size_t count,
                                       flow_real *z, flow_real *h)
{
    if (!h)
        return;
    if (h == z) {
        for (size_t i = 0; i < count; i++)
            z[i] = pos_mask(z[i]) * z[i];
        return;
    }
    act_apply(net, z, h, count);
}

/* Every row of z (n x w) = b: inline stores, not a memcpy call per row
 * (2-wide output layers made those calls cost more than the copy). */
FLOW_VECTORIZE static void fill_rows(size_t n, size_t w,
                                     const flow_real *restrict b,
                                     flow_real *restrict z)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < w; j++)
            z[r * w + j] = b[j];
}

/* db += the column sums of g (n x w), row by row (contiguous). */
FLOW_VECTORIZE static void colsum_add(size_t n, size_t w,
                                      const flow_real *restrict g,
                                      flow_real *restrict db)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < w; j++)
            db[j] += g[r * w + j];
}

/* Backward through a hidden activation, g (n x w) *= f'(z) in place, and
 * (db not NULL) the result's column sums added to that layer's bias
 * gradient in the same pass. */
FLOW_VECTORIZE static void grad_act_bias(const flow_net *net, size_t n,
                                         size_t w, const flow_real *z,
                                         const flow_real *h, flow_real *g,
                                         flow_real *restrict db)
{
    if (net->act == FLOW_ACT_RELU && db) {
        for (size_t r = 0; r < n; r++) {
            flow_real *restrict gr = g + r * w;
            const flow_real *restrict hr = h + r * w;
            for (size_t j = 0; j < w; j++) {
                flow_real v = gr[j] * pos_mask(hr[j]);
                gr[j] = v;
                db[j] += v;
            }
        }
        return;
    }
    for (size_t r = 0; r < n; r++) {
        act_grad_mul(net, z + r * w, h + r * w, g + r * w, w);
        if (db)
            for (size_t j = 0; j < w; j++)
                db[j] += g[r * w + j];
    }
}

/* --------------------------------------------------------- creation */

static void set_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (!err || !cap)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* MADE degrees and masks (Germain et al. 2015, sec. 4): input j has
 * degree m^0(j) = order[j] + 1, context and time degree 0 (visible to
 * every unit); hidden unit k of layer l gets m^l(k) in [min m^{l-1}, D-1]
 * (cyclic from a seed-drawn offset, so every degree appears when the layer
 * is wide enough, instead of the paper's i.i.d. draw).  With context the
 * range starts at 0: degree-0 units see only the context, so even the
 * first dimension's outputs depend on it, as flow_net_spec promises.
 * Hidden masks are
 * M^l_{kd} = 1[m^l(k) >= m^{l-1}(d)] (eq. 13) and the output mask is
 * strict, M^V_{id} = 1[m^V(i) > m^{L-1}(d)] (eq. 14), with output unit
 * i*out + k of dimension i having degree order[i] + 1. */
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
    net->sperm = calloc(hidden_rows(net) + 1, sizeof *net->sperm);
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
            for (size_t j = 0; j < ly->in; j++)
                m[r * ly->cols + j] = last ? cur[r] > prev[j]
                                           : cur[r] >= prev[j];
            if (ly->cols > ly->in)   /* time column: always visible */
                m[r * ly->cols + ly->in] = 1;
        }
        if (!last) {
            /* counting sort of the units by degree (0..D-1) */
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
 * sorted by degree (hidden units by sperm, outputs by the degree of their
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
                rm[p] = net->sperm[hidden_off(net, l) + p];
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
            cm[q] = (uint32_t)(l ? net->sperm[hidden_off(net, l - 1) + q]
                      : q < k ? d + q : net->by_deg[q - k]);
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

/* spec->premasked, 0 for a spec older than the field */
static int spec_premasked(const flow_net_spec *spec)
{
    return spec->struct_size >= offsetof(flow_net_spec, premasked) +
                                    sizeof spec->premasked
               ? spec->premasked != 0
               : 0;
}

/* Validates a spec; 0 with a message in err when it is unusable. */
static int check_spec(const flow_net_spec *spec, char *err, size_t err_cap)
{
    /* specs from before `premasked` was appended are accepted (it reads
     * as 0 there: see spec_premasked) */
    if (!spec || spec->struct_size < offsetof(flow_net_spec, premasked)) {
        set_err(err, err_cap, "net: missing or truncated spec (struct_size "
                "%zu)", spec ? (size_t)spec->struct_size : 0);
        return 0;
    }
    if (spec->kind != FLOW_NET_MLP && spec->kind != FLOW_NET_MADE) {
        set_err(err, err_cap, "net: unknown kind %zu", (size_t)spec->kind);
        return 0;
    }
    if (spec->in == 0 || spec->out == 0) {
        set_err(err, err_cap, "net: input and output widths must be > 0");
        return 0;
    }
    if (spec->n_hidden && !spec->hidden) {
        set_err(err, err_cap, "net: %zu hidden layers but no widths",
                spec->n_hidden);
        return 0;
    }
    for (size_t i = 0; i < spec->n_hidden; i++)
        if (spec->hidden[i] == 0) {
            set_err(err, err_cap, "net: hidden layer %zu has width 0", i);
            return 0;
        }
    if ((unsigned)spec->act > FLOW_ACT_SIGMOID) {
        set_err(err, err_cap, "net: unknown activation %zu", (size_t)spec->act);
        return 0;
    }
    if ((unsigned)spec->time > FLOW_TIME_CONCATSQUASH) {
        set_err(err, err_cap, "net: unknown time mode %zu", (size_t)spec->time);
        return 0;
    }
    if (!(spec->spectral_norm >= 0) || !isfinite(spec->spectral_norm)) {
        set_err(err, err_cap, "net: spectral_norm must be a finite number "
                ">= 0 (0 = off), got %g", spec->spectral_norm);
        return 0;
    }
    if (spec->kind == FLOW_NET_MADE && spec->order) {
        for (size_t i = 0; i < spec->in; i++) {
            int32_t o = spec->order[i];
            int dup = 0;
            for (size_t j = 0; j < i; j++)
                dup |= spec->order[j] == o;
            if (o < 0 || (size_t)o >= spec->in || dup) {
                set_err(err, err_cap, "net: MADE order is not a permutation "
                        "of 0..D-1 (entry %zu)", i);
                return 0;
            }
        }
    }
    if (spec->in > SIZE_MAX / 4 || spec->context > SIZE_MAX / 4 ||
        (spec->kind == FLOW_NET_MADE && spec->out > SIZE_MAX / spec->in)) {
        set_err(err, err_cap, "net: sizes overflow");
        return 0;
    }
    return 1;
}

flow_net *nn_create(const flow_net_spec *spec, char *err, size_t err_cap)
{
    flow_net *net = NULL;
    size_t p = 0, prev;
    if (err && err_cap)
        err[0] = '\0';
    if (!check_spec(spec, err, err_cap))
        return NULL;
    net = calloc(1, sizeof *net);
    if (!net)
        goto nomem;
    net->kind = spec->kind;
    net->d = spec->in;
    net->k = spec->context;
    net->out = spec->out;
    net->y_width = spec->kind == FLOW_NET_MADE ? spec->out * spec->in
                                               : spec->out;
    net->act = spec->act;
    net->slope = spec->act_param != 0 ? spec->act_param : 0.01;
    net->zero_last = spec->zero_last;
    net->time = spec->time;
    net->seed = spec->seed;
    net->n_layers = spec->n_hidden + 1;
    net->layer = calloc(net->n_layers, sizeof *net->layer);
    if (!net->layer)
        goto nomem;
    prev = net->d + net->k;
    for (size_t l = 0; l < net->n_layers; l++) {
        nn_layer *ly = &net->layer[l];
        size_t wsize;
        ly->in = prev;
        ly->out = l + 1 < net->n_layers ? spec->hidden[l] : net->y_width;
        ly->cols = ly->in + (net->time == FLOW_TIME_CONCAT);
        wsize = mul_sat(ly->out, ly->cols);
        if (wsize == SIZE_MAX || p > SIZE_MAX / 2 - wsize - 4 * ly->out) {
            set_err(err, err_cap, "net: parameter count overflows in layer "
                    "%zu", l);
            goto fail;
        }
        ly->w_off = p;
        p += wsize;
        ly->b_off = p;
        p += ly->out;
        if (net->time == FLOW_TIME_CONCATSQUASH) {
            ly->ga_off = p;
            ly->gc_off = p + ly->out;
            ly->gd_off = p + 2 * ly->out;
            p += 3 * ly->out;
            ly->g_off = net->gate_total;
            net->gate_total += ly->out;
        }
        ly->sn_off = net->sn_total;
        if (spec->spectral_norm > 0)
            net->sn_total += 2 + ly->out + ly->cols;
        if (spec->spectral_norm > 0 &&
            la_top_singular_scratch(ly->out, ly->cols) > net->sn_scratch)
            net->sn_scratch = la_top_singular_scratch(ly->out, ly->cols);
        ly->m_off = net->mask_total;
        net->mask_total += wsize;
        if (wsize > net->max_wsize)
            net->max_wsize = wsize;
        if (ly->in > net->max_width)
            net->max_width = ly->in;
        if (ly->out > net->max_width)
            net->max_width = ly->out;
        prev = ly->out;
    }
    net->n_params = p;
    net->sn = spec->spectral_norm;
    net->premasked = net->kind == FLOW_NET_MADE && net->sn == 0 &&
                     spec_premasked(spec);
    net->derived = (net->kind == FLOW_NET_MADE && !net->premasked) ||
                   net->sn > 0;
    if (net->kind == FLOW_NET_MADE && !made_masks(net, spec->order))
        goto nomem;
    net->sortable = net->premasked && net->time == FLOW_TIME_NONE;
    if (net->sortable && !made_blocks(net))
        goto nomem;
    return net;
nomem:
    set_err(err, err_cap, "net: out of memory");
fail:
    nn_destroy(net);
    return NULL;
}

void nn_destroy(flow_net *net)
{
    if (!net)
        return;
    free(net->layer);
    free(net->mask);
    free(net->by_deg);
    free(net->sperm);
    free(net->bstart);
    free(net->rmap);
    free(net->ext);
    free(net->vis);
    free(net->cmap);
    free(net->lead);
    free(net);
}

size_t nn_params(const flow_net *net) { return net ? net->n_params : 0; }

size_t nn_layers(const flow_net *net) { return net ? net->n_layers : 0; }

int nn_layer_shape(const flow_net *net, size_t l, size_t *rows,
                   size_t *cols, size_t *w_off, size_t *b_off)
{
    if (!net || l >= net->n_layers)
        return FLOW_ERR_INVAL;
    if (rows)
        *rows = net->layer[l].out;
    if (cols)
        *cols = net->layer[l].cols;
    if (w_off)
        *w_off = net->layer[l].w_off;
    if (b_off)
        *b_off = net->layer[l].b_off;
    return FLOW_OK;
}

const uint8_t *nn_layer_mask(const flow_net *net, size_t l)
{
    if (!net || !net->mask || l >= net->n_layers)
        return NULL;
    return net->mask + net->layer[l].m_off;
}

/* Uniform init: W_ij ~ U(-s, s) with s = sqrt(6 / fan_in) before ReLU-like
 * units (He et al. 2015, eq. 10: Var W = 2 / fan_in) and s = sqrt(6 /
 * (fan_in + fan_out)) before tanh / sigmoid and for the linear output
 * (Glorot & Bengio 2010, eq. 16); fan_in counts the unmasked inputs of the
 * row (MADE).  Biases 0; concatsquash gate a, c and time bias d ~ U(-1, 1)
 * (PyTorch's default for a 1-input linear map, as in FFJORD's code). */
void nn_init(const flow_net *net, flow_real *params, flow_rng *rng)
{
    flow_rng local;
    if (!net || !params)
        return;
    if (!rng) {
        rng_seed(&local, net->seed ^ 0x6e6e696e6974ull);
        rng = &local;
    }
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const uint8_t *m = net->mask ? net->mask + ly->m_off : NULL;
        int last = l + 1 == net->n_layers;
        int zero = last && net->zero_last;
        flow_real *w = params + ly->w_off;
        for (size_t r = 0; r < ly->out; r++) {
            size_t fan = 0;
            double s;
            for (size_t j = 0; j < ly->cols; j++)
                fan += m ? m[r * ly->cols + j] : 1;
            if (fan == 0)
                fan = 1;
            /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases:
             * the default of torch.nn.Linear (He et al. 2015's uniform
             * rule with a = sqrt(5)).  He's sqrt(6/fan_in) was measured
             * here to train RealNVP on 8gaussians far worse (KL 1.03 vs
             * 0.13 after 2000 steps): with fan_in = 1 and inputs of scale
             * 3 it saturates the first layer. */
            s = 1.0 / sqrt((double)fan);
            for (size_t j = 0; j < ly->cols; j++) {
                double v = (2 * rng_uniform(rng) - 1) * s;
                if (zero || (m && !m[r * ly->cols + j]))
                    v = 0;
                w[r * ly->cols + j] = (flow_real)v;
            }
            params[ly->b_off + r] =
                zero ? 0 : (flow_real)((2 * rng_uniform(rng) - 1) * s);
        }
        if (net->time == FLOW_TIME_CONCATSQUASH)
            for (size_t r = 0; r < ly->out; r++) {
                params[ly->ga_off + r] = (flow_real)(2 * rng_uniform(rng) - 1);
                params[ly->gc_off + r] = (flow_real)(2 * rng_uniform(rng) - 1);
                params[ly->gd_off + r] =
                    zero ? 0 : (flow_real)(2 * rng_uniform(rng) - 1);
            }
    }
}

size_t nn_workspace(const flow_net *net, size_t n)
{
    ws_layout lo;
    step_layout sl;
    sort_layout so;
    if (!net)
        return 0;
    layout(net, n ? n : 1, &lo);
    if (net->kind != FLOW_NET_MADE)
        return lo.total;
    step_layout_of(net, n ? n : 1, &sl);
    sort_layout_of(net, n ? n : 1, &so);
    if (!lo.total || !sl.total || !so.total)
        return 0;
    if (sl.total > lo.total)
        lo.total = sl.total;
    return so.total > lo.total ? so.total : lo.total;
}

/* ---------------------------------------------------------- forward */

/* Weights as used: params, or (MADE, spectral norm) the derived copy in
 * the workspace. */
static const flow_real *weights(const flow_net *net, const flow_real *params,
                                void *ws, const ws_layout *lo, size_t l)
{
    if (net->derived)
        return at(ws, lo->wm) + net->layer[l].m_off;
    return params + net->layer[l].w_off;
}

/* out (n x rows) = sum over input blocks of X_blk W[:, blk]^T, beta
 * selects overwrite (0) or accumulate (1) for the first block.  Layer 0
 * has the blocks x (D columns) and ctx (K); other layers one block. */
static int lin_blocks(const flow_net *net, size_t l, size_t n,
                      const flow_real *w, const flow_real *x0,
                      const flow_real *c0, flow_real beta, flow_real *out)
{
    const nn_layer *ly = &net->layer[l];
    int st;
    if (l > 0)
        return blas_gemm(0, 1, n, ly->out, ly->in, 1, x0, ly->in, w,
                         ly->cols, beta, out, ly->out);
    st = blas_gemm(0, 1, n, ly->out, net->d, 1, x0, net->d, w, ly->cols,
                   beta, out, ly->out);
    if (st == FLOW_OK && net->k && c0)
        st = blas_gemm(0, 1, n, ly->out, net->k, 1, c0, net->k, w + net->d,
                       ly->cols, 1, out, ly->out);
    return st;
}

/* Derived weights for this call: W_m = M o W (MADE), then with spectral
 * normalisation W_eff = W_m * min(1, c / sigma(W_m)) (the time column
 * included, a conservative bound on the Lipschitz constant in h).  sigma
 * and its singular vectors come exact from LAPACK (la_top_singular)
 * rather than from the one power-iteration step per update of Miyato et
 * al. 2018, alg. 1 / Behrmann et al. 2019, sec. 3, which needs state kept
 * between calls: here the result depends on the parameters only. */
static int derive_weights(const flow_net *net, const flow_real *params,
                          void *ws, const ws_layout *lo)
{
    flow_real *wm = at(ws, lo->wm);
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const flow_real *w = params + ly->w_off;
        flow_real *dst = wm + ly->m_off;
        size_t sz = ly->out * ly->cols;
        if (net->mask) {
            const uint8_t *m = net->mask + ly->m_off;
            for (size_t i = 0; i < sz; i++)
                dst[i] = m[i] ? w[i] : 0;
        } else {
            memcpy(dst, w, sz * sizeof *dst);
        }
        if (net->sn > 0) {
            double *sn = (double *)(void *)((char *)ws + lo->sn) + ly->sn_off;
            double sigma = 0, scale;
            int st = la_top_singular(ly->out, ly->cols, dst, &sigma, sn + 2,
                                     sn + 2 + ly->out,
                                     (char *)ws + lo->sn_scratch);
            if (st != FLOW_OK)
                return st;
            scale = sigma > net->sn ? net->sn / sigma : 1.0;
            sn[0] = sigma;
            sn[1] = scale;
            if (scale != 1.0)
                for (size_t i = 0; i < sz; i++)
                    dst[i] = (flow_real)(dst[i] * scale);
        }
    }
    return FLOW_OK;
}

int nn_forward(const flow_net *net, const flow_real *params, size_t n,
               const flow_real *x, const flow_real *ctx, double t,
               flow_real *y, void *ws)
{
    ws_head *hd = ws;
    ws_layout lo;
    int squash, st = FLOW_OK;
    if (!net || !params || !x || !y || !ws || (net->k && !ctx) ||
        (uintptr_t)ws % sizeof(double) != 0)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    squash = net->time == FLOW_TIME_CONCATSQUASH;
    layout(net, n, &lo);
    hd->magic = 0;
    hd->n = n;
    hd->t = t;
    hd->have_jvp = 0;
    memcpy(at(ws, lo.xin), x, n * net->d * sizeof(flow_real));
    if (net->k)
        memcpy(at(ws, lo.cin), ctx, n * net->k * sizeof(flow_real));
    if (net->derived && (st = derive_weights(net, params, ws, &lo)) != FLOW_OK)
        return st;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        size_t ho = hidden_off(net, l) * n;
        const flow_real *w = weights(net, params, ws, &lo, l);
        const flow_real *in =
            l == 0 ? at(ws, lo.xin) : at(ws, lo.h) + hidden_off(net, l - 1) * n;
        flow_real *h = last ? NULL : at(ws, lo.h) + ho;
        /* ReLU without a gate: the GEMM writes h, activated in place */
        flow_real *z = last ? y : !squash && net->act == FLOW_ACT_RELU
                                      ? h : at(ws, lo.z) + ho;
        flow_real *u = squash ? at(ws, lo.u) + ho : z;
        flow_real *g = at(ws, lo.gate) + ly->g_off;
        const flow_real *bias = params + ly->b_off;
        if (net->time == FLOW_TIME_CONCAT) {
            /* bias + t W[:, last] combined in the backward scratch (free
             * during forward) */
            flow_real *bt = at(ws, lo.s[0]);
            for (size_t j = 0; j < ly->out; j++)
                bt[j] = (flow_real)(params[ly->b_off + j] +
                                    t * w[j * ly->cols + ly->in]);
            bias = bt;
        }
        if (!squash) {
            /* the bias in C, accumulated by the GEMM (beta = 1): OpenBLAS
             * clears C first for beta = 0, a pass as costly as this one */
            fill_rows(n, ly->out, bias, z);
            st = lin_blocks(net, l, n, w, in, at(ws, lo.cin), 1, z);
            if (st != FLOW_OK)
                return st;
            act_inplace(net, n * ly->out, z, h);
            continue;
        }
        st = lin_blocks(net, l, n, w, in, at(ws, lo.cin), 0, u);
        if (st != FLOW_OK)
            return st;
        for (size_t r = 0; r < n; r++) {
            flow_real *ur = u + r * ly->out;
            for (size_t j = 0; j < ly->out; j++)
                ur[j] += bias[j];
        }
        /* concatsquash (Grathwohl et al. 2019, FFJORD's
         * ConcatSquashLinear): z = u * sigmoid(a t + c) + d t */
        {
            flow_real *dt = at(ws, lo.s[1]);
            for (size_t j = 0; j < ly->out; j++) {
                g[j] = (flow_real)sigmoid(params[ly->ga_off + j] * t +
                                          params[ly->gc_off + j]);
                dt[j] = (flow_real)(params[ly->gd_off + j] * t);
            }
            for (size_t r = 0; r < n; r++)
                for (size_t j = 0; j < ly->out; j++)
                    z[r * ly->out + j] = u[r * ly->out + j] * g[j] + dt[j];
        }
        if (!last)
            act_apply(net, z, h, n * ly->out);
    }
    hd->magic = WS_MAGIC;
    return FLOW_OK;
}

/* ------------------------------------------------- MADE by degree */

/* The weights of every layer with rows and columns in degree order (the
 * orders of nn_made_step): hidden rows by sperm, output rows as they are;
 * layer 0's columns are the context then the inputs by degree, deeper
 * layers' columns the previous layer's units by degree.  One gather over
 * the parameters per sampling call. */
static void sort_weights(const flow_net *net, const flow_real *params,
                         flow_real *sw)
{
    size_t d = net->d, k = net->k;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        const size_t *rp = last ? NULL : net->sperm + hidden_off(net, l);
        const size_t *cp = l ? net->sperm + hidden_off(net, l - 1) : NULL;
        const flow_real *w = params + ly->w_off;
        flow_real *dst = sw + ly->m_off;
        for (size_t p = 0; p < ly->out; p++) {
            const flow_real *wr = w + (rp ? rp[p] : p) * ly->cols;
            flow_real *dr = dst + p * ly->cols;
            if (cp) {
                for (size_t q = 0; q < ly->in; q++)
                    dr[q] = wr[cp[q]];
            } else {
                for (size_t q = 0; q < k; q++)
                    dr[q] = wr[d + q];
                for (size_t q = 0; q < d; q++)
                    dr[k + q] = wr[net->by_deg[q]];
            }
        }
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
/* One step on weights sorted by degree: ssw is NULL for weights from
 * params (sorted here into the workspace at step 0, sort_weights: output
 * rows as they are, biases read from params), or nn_made_sort's layout
 * (output rows by degree too, biases after the weights). */
static int made_step_run(const flow_net *net, const flow_real *params,
                         const flow_real *ssw, size_t n,
                         const flow_real *ctx, size_t step,
                         const flow_real *x_prev, flow_real *theta, void *ws)
{
    ws_head *hd = ws;
    step_layout sl;
    size_t d, k, kd, L, pr;
    flow_real *xs, *hs, *bb;
    const flow_real *in, *sw;
    size_t ldin;
    int st;
    if (!net || !(ssw || params) || !theta || !ws
        || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (net->kind != FLOW_NET_MADE || net->sn > 0 ||
        net->time != FLOW_TIME_NONE || (ssw && !net->sortable))
        return FLOW_ERR_UNSUPPORTED;
    d = net->d;
    k = net->k;
    if (step >= d || (k && !ctx) || (step > 0 && !x_prev))
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    step_layout_of(net, n, &sl);
    kd = k + d;
    L = net->n_layers;
    sw = ssw ? ssw : at(ws, sl.sw);
    xs = at(ws, sl.xs);
    hs = at(ws, sl.hs);
    bb = at(ws, sl.bb);
    if (step == 0) {
        hd->magic = 0;
        hd->n = n;
        hd->t = 0;
        hd->have_jvp = 0;
        if (!ssw)
            sort_weights(net, params, at(ws, sl.sw));
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
        const size_t *perm = net->sperm + hidden_off(net, l);
        size_t b0 = bs[step], b1 = bs[step + 1];
        flow_real *h = hs + hidden_off(net, l) * n;
        if (b1 > b0) {
            if (pr) {
                st = blas_gemm(0, 1, n, b1 - b0, pr, 1, in, ldin,
                               sw + ly->m_off + b0 * ly->cols, ly->cols, 0,
                               h + b0, ly->out);
                if (st != FLOW_OK)
                    return st;
            } else {
                for (size_t r = 0; r < n; r++)
                    memset(h + r * ly->out + b0, 0, (b1 - b0) * sizeof *h);
            }
            for (size_t j = b0; j < b1; j++)
                bb[j - b0] = ssw ? ssw[net->mask_total + hidden_off(net, l)
                                       + j]
                                 : params[ly->b_off + perm[j]];
            bias_act_block(net, h + b0, ly->out, n, b1 - b0, bb);
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
        const flow_real *b = ssw ? ssw + net->mask_total + hidden_rows(net)
                                       + row
                                 : params + ly->b_off + row;
        if (pr) {
            st = blas_gemm(0, 1, n, out, pr, 1, in, ldin,
                           sw + ly->m_off + row * ly->cols, ly->cols, 0,
                           theta, out);
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

/* --------------------------------------- MADE in degree order, blocked */

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

size_t nn_made_sorted_count(const flow_net *net)
{
    if (!net || !net->sortable)
        return 0;
    /* weights, biases, then nn_made_grad's scratch (3 x max_width) */
    return net->mask_total + all_rows(net) + 3 * net->max_width;
}

/* sw: per layer the masked weights with rows and columns in degree order
 * (at m_off, rows x cols, each row written up to its block's prefix ext;
 * the rest is never read), then every layer's biases in row order (at
 * mask_total + the layer's row offset).  The mask is applied here, so the
 * parameters' masked weights may hold anything. */
int nn_made_sort(const flow_net *net, const flow_real *params, flow_real *sw)
{
    if (!net || !params || !sw)
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        size_t roff = sort_roff(net, l);
        const size_t *rm = net->rmap + roff, *ex = net->ext + roff;
        const size_t *vi = net->vis + roff;
        const uint32_t *cm = net->cmap + sort_coff(net, l);
        const flow_real *w = params + ly->w_off;
        flow_real *dst = sw + ly->m_off;
        for (size_t p = 0; p < ly->out; p++) {
            const flow_real *wr = w + rm[p] * ly->cols;
            flow_real *dr = dst + p * ly->cols;
            size_t q = 0;
            /* the mask row in degree order: vis[p] ones, then zeros */
            for (; q < vi[p]; q++)
                dr[q] = wr[cm[q]];
            for (; q < ex[p]; q++)
                dr[q] = 0;
            sw[net->mask_total + roff + p] = params[ly->b_off + rm[p]];
        }
    }
    return FLOW_OK;
}

/* The gradient in nn_made_backward's layout (each layer's W at w_off in
 * degree order up to ext, its biases at b_off in degree order) mapped in
 * place to the parameters' layout, masked weights 0.  Sorted row p goes
 * to row rmap[p], scattered by cmap: the rows move along the cycles of
 * rmap, one row held aside (scratch at the end of sw), so nothing is
 * copied twice and no gradient-sized buffer is needed. */
int nn_made_grad(const flow_net *net, flow_real *grad, flow_real *sw)
{
    if (!net || !grad || !sw)
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        size_t roff = sort_roff(net, l), C = ly->cols;
        const size_t *rm = net->rmap + roff, *vi = net->vis + roff;
        const uint32_t *cm = net->cmap + sort_coff(net, l);
        const uint8_t *lead = net->lead + roff;
        flow_real *a = sw + net->mask_total + all_rows(net);
        flow_real *b = a + net->max_width, *bias = b + net->max_width;
        flow_real *w = grad + ly->w_off;
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
    if (!net || !sw || !x || !y || !ws || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (!net->sortable)
        return FLOW_ERR_UNSUPPORTED;
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
    in = xs;
    ldin = kd;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        size_t roff = sort_roff(net, l), R = ly->out;
        const size_t *ex = net->ext + roff;
        const flow_real *w = sw + ly->m_off;
        flow_real *h = last ? NULL : at(ws, so.h) + hidden_off(net, l) * n;
        flow_real *z = last ? ys : net->act == FLOW_ACT_RELU
                                       ? h : at(ws, so.z) + hidden_off(net, l) * n;
        int st = FLOW_OK;
        fill_rows(n, R, sw + net->mask_total + roff, z);
        if ((l ? ly->in : k + d) * MADE_BLOCK < 32 * R) {
            /* column blocks would average under 32 wide (few inputs): one
             * GEMM per row block over its prefix (docs/runtime.md) */
            for (size_t p0 = 0; p0 < R && st == FLOW_OK; p0 += MADE_BLOCK) {
                size_t p1 = p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R;
                if (ex[p0])
                    st = blas_gemm(0, 1, n, p1 - p0, ex[p0], 1, in, ldin,
                                   w + p0 * ly->cols, ly->cols, 1, z + p0,
                                   R);
            }
        } else {
            /* by column blocks: columns [ext of block b-1, ext of block
             * b) feed the rows of blocks b, b+1, ... (ext grows with the
             * degree); each input column is packed for BLAS once, where
             * row blocks would pack their prefix again for every block */
            for (size_t p0 = 0, e0 = 0; p0 < R && st == FLOW_OK;
                 p0 += MADE_BLOCK) {
                size_t e1 = ex[p0];
                if (e1 <= e0)
                    continue;
                st = blas_gemm(0, 1, n, R - p0, e1 - e0, 1, in + e0, ldin,
                               w + p0 * ly->cols + e0, ly->cols, 1, z + p0,
                               R);
                e0 = e1;
            }
        }
        if (st != FLOW_OK)
            return st;
        if (!last) {
            act_inplace(net, n * R, z, h);
            in = h;
            ldin = R;
        }
    }
    {
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
        const flow_real *w = sw + ly->m_off;
        const flow_real *in =
            l ? at(ws, so.h) + hidden_off(net, l - 1) * n : at(ws, so.xs);
        flow_real *gin = buf[nb];
        int st;
        if (dparams)
            for (size_t p0 = 0; p0 < R; p0 += MADE_BLOCK) {
                size_t p1 = p0 + MADE_BLOCK < R ? p0 + MADE_BLOCK : R;
                if (ex[p0] == 0)
                    continue;
                st = blas_gemm(1, 0, p1 - p0, ex[p0], n, 1, gcur + p0, R,
                               in, C, 1, dparams + ly->w_off +
                               p0 * ly->cols, ly->cols);
                if (st != FLOW_OK)
                    return st;
            }
        if (l == 0 && !dx && !(dctx && k))
            return FLOW_OK;
        for (size_t p0 = 0; p0 < R; p0 += MADE_BLOCK) {
            size_t e1 = ex[p0];
            if (e1 <= e0)
                continue;
            st = blas_gemm(0, 0, n, e1 - e0, R - p0, 1, gcur + p0, R,
                           w + p0 * ly->cols + e0, ly->cols, 0, gin + e0, C);
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
        {
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

/* ------------------------------------------------------------- JVP */

static int check_tape(const flow_net *net, size_t n, void *ws)
{
    const ws_head *hd = ws;
    if (!net || !ws || (uintptr_t)ws % sizeof(double) != 0)
        return FLOW_ERR_INVAL;
    if (hd->magic != WS_MAGIC || hd->n != n)
        return FLOW_ERR_INVAL;
    return FLOW_OK;
}

/* ty = (dy/dx) tx: tangents of x only (context and t held fixed). */
int nn_jvp(const flow_net *net, const flow_real *params, size_t n, void *ws,
           const flow_real *tx, flow_real *ty)
{
    ws_head *hd = ws;
    ws_layout lo;
    int squash;
    if (!params || !tx || !ty)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    if (check_tape(net, n, ws) != FLOW_OK)
        return FLOW_ERR_INVAL;    /* no matching forward on this ws */
    squash = net->time == FLOW_TIME_CONCATSQUASH;
    layout(net, n, &lo);
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        size_t ho = hidden_off(net, l) * n;
        const flow_real *w = weights(net, params, ws, &lo, l);
        const flow_real *tin =
            l == 0 ? tx : at(ws, lo.th) + hidden_off(net, l - 1) * n;
        flow_real *tz = last ? ty : at(ws, lo.tz) + ho;
        flow_real *tu = squash ? at(ws, lo.tu) + ho : tz;
        const flow_real *g = at(ws, lo.gate) + ly->g_off;
        int st;
        /* layer 0: only the x block carries a tangent */
        st = blas_gemm(0, 1, n, ly->out, l == 0 ? net->d : ly->in, 1, tin,
                       l == 0 ? net->d : ly->in, w, ly->cols, 0, tu, ly->out);
        if (st != FLOW_OK)
            return st;
        if (squash)
            for (size_t r = 0; r < n; r++)
                for (size_t j = 0; j < ly->out; j++)
                    tz[r * ly->out + j] = tu[r * ly->out + j] * g[j];
        if (!last) {
            flow_real *th = at(ws, lo.th) + ho;
            memcpy(th, tz, n * ly->out * sizeof *th);
            act_grad_mul(net, at(ws, lo.z) + ho, at(ws, lo.h) + ho, th,
                         n * ly->out);
        }
    }
    hd->have_jvp = 1;
    return FLOW_OK;
}

/* ------------------------------------------------------------ VJPs */

/* Adds the gradient g wrt the derived weights W_eff of layer l to dst (the
 * raw W's gradient): with spectral normalisation active (sigma > c),
 * W_eff = c W_m / sigma and d sigma / d W_m = u v^T, so
 * dW_m = (c / sigma) g - (c / sigma^2) <g, W_m> u v^T; then the mask
 * (MADE), so masked entries of dst are never touched. */
static void map_grad(const flow_net *net, size_t l, void *ws,
                     const ws_layout *lo, flow_real *g, flow_real *dst)
{
    const nn_layer *ly = &net->layer[l];
    const uint8_t *m = net->mask ? net->mask + ly->m_off : NULL;
    size_t sz = ly->out * ly->cols;
    if (net->sn > 0) {
        const double *sn = (const double *)(void *)((char *)ws + lo->sn) +
                           ly->sn_off;
        const double *u = sn + 2, *v = sn + 2 + ly->out;
        const flow_real *weff = at(ws, lo->wm) + ly->m_off;
        double scale = sn[1], inner = 0, k;
        if (scale != 1.0) {
            /* <g, W_m> = <g, W_eff> / scale */
            for (size_t i = 0; i < sz; i++)
                inner += (double)g[i] * weff[i];
            inner /= scale;
            k = net->sn / (sn[0] * sn[0]) * inner;
            for (size_t r = 0; r < ly->out; r++)
                for (size_t j = 0; j < ly->cols; j++) {
                    size_t i = r * ly->cols + j;
                    g[i] = (flow_real)(scale * g[i] - k * u[r] * v[j]);
                }
        }
    }
    for (size_t i = 0; i < sz; i++)
        if (!m || m[i])
            dst[i] += g[i];
}

/* Parameter gradient of one layer from G = dL/du (n x rows) and the
 * layer's input blocks: dW += G^T [X | C], db += sum_r G (when with_bias),
 * and the concat time column += t sum_r G.  Derived weights (MADE, spectral
 * norm): through the gw scratch and map_grad. */
static int grad_w(const flow_net *net, size_t l, size_t n, void *ws,
                  const ws_layout *lo, const flow_real *gmat,
                  const flow_real *x0, const flow_real *c0, int with_bias,
                  double t, flow_real *dparams)
{
    const nn_layer *ly = &net->layer[l];
    int made = net->derived, st;
    flow_real *dw = made ? at(ws, lo->gw) : dparams + ly->w_off;
    flow_real beta = made ? 0 : 1;
    size_t win = l == 0 ? net->d : ly->in;
    if (made)
        memset(dw, 0, ly->out * ly->cols * sizeof(flow_real));
    st = blas_gemm(1, 0, ly->out, win, n, 1, gmat, ly->out, x0, win, beta,
                   dw, ly->cols);
    if (st == FLOW_OK && l == 0 && net->k && c0)
        st = blas_gemm(1, 0, ly->out, net->k, n, 1, gmat, ly->out, c0,
                       net->k, beta, dw + net->d, ly->cols);
    if (st != FLOW_OK)
        return st;
    if (with_bias) {
        /* column sums of G row by row (contiguous; the same order of
         * additions per column as a column walk, which strided through G
         * and cost more than the bias deserves) */
        double *sum = (double *)(void *)((char *)ws + lo->bsum);
        for (size_t j = 0; j < ly->out; j++)
            sum[j] = 0;
        for (size_t r = 0; r < n; r++) {
            const flow_real *gr = gmat + r * ly->out;
            for (size_t j = 0; j < ly->out; j++)
                sum[j] += gr[j];
        }
        for (size_t j = 0; j < ly->out; j++) {
            dparams[ly->b_off + j] += (flow_real)sum[j];
            if (net->time == FLOW_TIME_CONCAT)
                dw[j * ly->cols + ly->in] += (flow_real)(t * sum[j]);
        }
    }
    if (made)
        map_grad(net, l, ws, lo, dw, dparams + ly->w_off);
    else if (net->premasked)
        mask_zero(dparams + ly->w_off, net->mask + ly->m_off,
                  ly->out * ly->cols);
    return FLOW_OK;
}

/* Concatsquash gate gradients for z = u g + d t, g = sigmoid(a t + c),
 * given G = dL/dz (n x rows), u, and optionally the tangent pair (GT =
 * dL/dtz, tu) of tz = tu g; then G (and GT) are scaled by g in place to
 * become dL/du (dL/dtu). */
static void grad_gate(const flow_net *net, size_t l, size_t n, double t,
                      const flow_real *params, const flow_real *gate,
                      flow_real *gmat, const flow_real *u, flow_real *gt,
                      const flow_real *tu, flow_real *dparams)
{
    const nn_layer *ly = &net->layer[l];
    for (size_t j = 0; j < ly->out; j++) {
        double sg = 0, su = 0, g = gate[j];
        for (size_t r = 0; r < n; r++) {
            size_t i = r * ly->out + j;
            if (gmat) {
                sg += gmat[i];
                su += (double)gmat[i] * u[i];
                gmat[i] = (flow_real)(gmat[i] * g);
            }
            if (gt) {
                su += (double)gt[i] * tu[i];
                gt[i] = (flow_real)(gt[i] * g);
            }
        }
        if (dparams) {
            double dpre = su * g * (1 - g);
            dparams[ly->gd_off + j] += (flow_real)(t * sg);
            dparams[ly->ga_off + j] += (flow_real)(t * dpre);
            dparams[ly->gc_off + j] += (flow_real)dpre;
        }
    }
    (void)params;
}


int nn_backward(const flow_net *net, const flow_real *params, size_t n,
                void *ws, const flow_real *dy, flow_real *dx,
                flow_real *dctx, flow_real *dparams)
{
    ws_layout lo;
    flow_real *buf[2];
    const flow_real *gcur;
    double t;
    int squash, st, fused, nb = 0;
    if (!params || !dy)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    if ((st = check_tape(net, n, ws)) != FLOW_OK)
        return st;
    t = ((ws_head *)ws)->t;
    squash = net->time == FLOW_TIME_CONCATSQUASH;
    /* without time terms the bias gradients are column sums taken in the
     * passes that produce each G (colsum_add, grad_act_bias) */
    fused = dparams && net->time == FLOW_TIME_NONE;
    layout(net, n, &lo);
    buf[0] = at(ws, lo.s[0]);
    buf[1] = at(ws, lo.s[1]);
    if (squash) {               /* grad_gate scales G in place */
        memcpy(buf[0], dy, n * net->y_width * sizeof(flow_real));
        gcur = buf[0];
        nb = 1;
    } else {
        gcur = dy;
    }
    if (fused)
        colsum_add(n, net->y_width, dy,
                   dparams + net->layer[net->n_layers - 1].b_off);
    for (size_t l = net->n_layers; l-- > 0;) {
        const nn_layer *ly = &net->layer[l];
        size_t ho = hidden_off(net, l) * n, hp;
        const flow_real *w = weights(net, params, ws, &lo, l);
        const flow_real *in =
            l == 0 ? at(ws, lo.xin) : at(ws, lo.h) + hidden_off(net, l - 1) * n;
        flow_real *gnext = buf[nb];
        if (squash)
            grad_gate(net, l, n, t, params, at(ws, lo.gate) + ly->g_off,
                      buf[1 - nb], at(ws, lo.u) + ho, NULL, NULL, dparams);
        if (dparams) {
            st = grad_w(net, l, n, ws, &lo, gcur, in, at(ws, lo.cin), !fused,
                        t, dparams);
            if (st != FLOW_OK)
                return st;
        }
        if (l == 0) {
            if (dx)
                st = blas_gemm(0, 0, n, net->d, ly->out, 1, gcur, ly->out, w,
                               ly->cols, 0, dx, net->d);
            if (st == FLOW_OK && dctx && net->k)
                st = blas_gemm(0, 0, n, net->k, ly->out, 1, gcur, ly->out,
                               w + net->d, ly->cols, 1, dctx, net->k);
            return st;
        }
        /* dL/dh_{l-1} = G W, then through the activation at z_{l-1} */
        st = blas_gemm(0, 0, n, ly->in, ly->out, 1, gcur, ly->out, w,
                       ly->cols, 0, gnext, ly->in);
        if (st != FLOW_OK)
            return st;
        hp = hidden_off(net, l - 1) * n;
        grad_act_bias(net, n, ly->in, at(ws, lo.z) + hp, at(ws, lo.h) + hp,
                      gnext, fused ? dparams + net->layer[l - 1].b_off : NULL);
        gcur = gnext;
        nb = 1 - nb;
    }
    return FLOW_OK;
}

/* VJP of (x, tx, params) -> ty.  Two adjoints run down the layers: GT =
 * dL/dtz (the tangent path, tz_l = W_l th_{l-1}, th = f'(z) tz) and G =
 * dL/dz (the primal path, reached through f'(z) in th: dG_{l-1} += GTH *
 * tz * f''(z)); G is zero at the top, since ty does not involve y. */
int nn_jvp_backward(const flow_net *net, const flow_real *params, size_t n,
                    void *ws, const flow_real *tx, const flow_real *dty,
                    flow_real *dx, flow_real *dtx, flow_real *dparams)
{
    ws_layout lo;
    flow_real *g, *gt, *gh, *gth;
    double t;
    int squash, st, g_zero = 1;
    if (!params || !dty || !tx)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    if ((st = check_tape(net, n, ws)) != FLOW_OK)
        return st;
    if (!((ws_head *)ws)->have_jvp)
        return FLOW_ERR_INVAL;
    t = ((ws_head *)ws)->t;
    squash = net->time == FLOW_TIME_CONCATSQUASH;
    layout(net, n, &lo);
    g = at(ws, lo.s[0]);
    gt = at(ws, lo.s[1]);
    gh = at(ws, lo.s[2]);
    gth = at(ws, lo.s[3]);
    memcpy(gt, dty, n * net->y_width * sizeof(flow_real));
    for (size_t l = net->n_layers; l-- > 0;) {
        const nn_layer *ly = &net->layer[l];
        size_t ho = hidden_off(net, l) * n;
        const flow_real *w = weights(net, params, ws, &lo, l);
        size_t hp = l ? hidden_off(net, l - 1) * n : 0;
        const flow_real *in = l == 0 ? at(ws, lo.xin) : at(ws, lo.h) + hp;
        const flow_real *tin = l == 0 ? tx : at(ws, lo.th) + hp;
        size_t win = l == 0 ? net->d : ly->in;
        if (squash)
            grad_gate(net, l, n, t, params, at(ws, lo.gate) + ly->g_off,
                      g_zero ? NULL : g, at(ws, lo.u) + ho, gt,
                      at(ws, lo.tu) + ho, dparams);
        if (dparams) {
            if (!g_zero) {
                st = grad_w(net, l, n, ws, &lo, g, in, at(ws, lo.cin), 1, t,
                            dparams);
                if (st != FLOW_OK)
                    return st;
            }
            /* tangent path: no bias, no context, no time column */
            st = grad_w(net, l, n, ws, &lo, gt, tin, NULL, 0, t, dparams);
            if (st != FLOW_OK)
                return st;
        }
        if (l == 0) {
            if (dx) {
                if (g_zero)
                    memset(dx, 0, n * net->d * sizeof(flow_real));
                else
                    st = blas_gemm(0, 0, n, net->d, ly->out, 1, g, ly->out,
                                   w, ly->cols, 0, dx, net->d);
            }
            if (st == FLOW_OK && dtx)
                st = blas_gemm(0, 0, n, net->d, ly->out, 1, gt, ly->out, w,
                               ly->cols, 0, dtx, net->d);
            return st;
        }
        st = blas_gemm(0, 0, n, win, ly->out, 1, gt, ly->out, w, ly->cols, 0,
                       gth, win);
        if (st == FLOW_OK && !g_zero)
            st = blas_gemm(0, 0, n, win, ly->out, 1, g, ly->out, w, ly->cols,
                           0, gh, win);
        if (st != FLOW_OK)
            return st;
        {
            const flow_real *z = at(ws, lo.z) + hp;
            const flow_real *h = at(ws, lo.h) + hp;
            const flow_real *tz = at(ws, lo.tz) + hp;
            int tanh_act = net->act == FLOW_ACT_TANH;
            int relu = net->act == FLOW_ACT_RELU;
            for (size_t i = 0; i < n * win; i++) {
                double f1, f2, v = h[i];
                if (tanh_act) {         /* from the stored h, as above */
                    f1 = 1 - v * v;
                    f2 = -2 * v * f1;
                } else {                /* ReLU: the sign of h (bias_act) */
                    act_eval(net, relu ? h[i] : z[i], NULL, &f1, &f2);
                }
                g[i] = (flow_real)((g_zero ? 0.0 : (double)gh[i] * f1) +
                                   (double)gth[i] * tz[i] * f2);
                gt[i] = (flow_real)(gth[i] * f1);
            }
        }
        g_zero = 0;
    }
    return FLOW_OK;
}

/* ------------------------------------------- divergence (stacked JVPs) */

/* The divergence tr(dy/dx[:, :D]) of an MLP (D = outputs <= data inputs),
 * exact or as Hutchinson's e^T (dy/dx[:, :D]) e, with the forward and the
 * backward in one pass each, for continuous normalizing flows (FFJORD,
 * Grathwohl et al. 2019, eqs. 3 and 7; the exact trace of Chen et al.
 * 2018, thm. 1).
 *
 * Every layer is an affine map with per-call effective weights: for time
 * t, W' = W[:, :in] and b' = b + t W[:, in] (concat), W' = diag(g) W and
 * b' = g * b + d t with the gate g = sigmoid(a t + c) (concatsquash,
 * Grathwohl et al. 2019, FFJORD's ConcatSquashLinear: z = (x W^T + b) * g
 * + d t), or W, b (no time).
 *
 * Forward mode with the tangents stacked under the primal rows: B tangent
 * blocks (B = D unit vectors e_b for the exact trace, B = 1 probe e for
 * Hutchinson), each of n rows, so that a hidden layer's tangent product
 * is ONE GEMM of B n rows instead of B GEMMs of n rows.  For layer l with
 * input a (primal) and ta (a tangent block):
 *
 *     z = a W'^T + b',          tz = ta W'^T,
 *     a' = phi(z),              ta' = phi'(z) * tz.
 *
 * Structurally cheap products, done without a GEMM:
 *  - layer 0 with unit tangents: tz^(b) = W'[:, b] on every row;
 *  - layer 0 with few inputs (in <= DIV_SMALL_IN, e.g. x, y of a 2-D
 *    flow): z = b' + sum_k x_k W'[:, k] as a loop, the time folded into
 *    b' once per call;
 *  - the output layer's tangents: the trace needs only ty^(b)_b =
 *    ta^(b) . W'[b, :] (D dot products per row, not D x D outputs).
 * The primal rows have products of their own, so y does not depend on the
 * tangent blocks (exact and Hutchinson give the same bits).
 *
 * Backward: reverse mode through the stacked graph, with the cotangent of
 * ty^(b) = dtr e_b (or dtr e).  Through an activation the primal row
 * collects the second-order term of ta' = phi'(z) tz:
 *
 *     dz = phi'(z) da' + phi''(z) sum_b tz^(b) dta'^(b),
 *     dtz^(b) = phi'(z) dta'^(b),
 *
 * and for tanh, phi'' = -2 a phi', so phi''(z) tz = -2 a ta': the tape
 * keeps only a and ta' (no z, tz), and dz = phi' da' - 2 a sum_b ta'
 * dta'.  A layer's weight gradient is one GEMM over all (1 + B) n rows,
 * dW' += G^T [a; ta^(1); ...; ta^(B)], the bias sees the primal rows
 * only; W, b, the time column and the gate's a, c, d follow from dW', db'
 * by the chain rule (div_finish).  With the exact trace and D <=
 * DIV_FUSE_D the output layer's cotangents (dy W' on the primal rows,
 * dtr W'[b, :] on block b) are formed row by row inside the pass through
 * the last hidden activation, with the output layer's dW' in the same
 * pass.  The same arithmetic as B net_jvp + net_jvp_backward passes and a
 * net_backward (docs/runtime.md), in 2 + 2 GEMMs per hidden layer instead
 * of 2 + 4 B + 2.  In the float build the hidden layers' products go to
 * tgemm (runtime/tgemm.c) when their widths allow (multiples of 8) and the
 * CPU has AVX2 + FMA, else to blas_gemm.
 *
 * tanh: in the float32 build a rational approximation (below). */

#define DIV_MAGIC 0x666c6f7764697632ull  /* "flowdiv2" */
#define DIV_CHUNK 8     /* fixed-length inner loops: vectorized at -O2 */
#define DIV_SMALL_IN 4  /* layer 0 without a GEMM up to this many inputs */
#define DIV_FUSE_D 4    /* exact trace: output layer fused up to this D */
#define DIV_AHEAD 4     /* rows prefetched ahead in the backward's passes */

/* The elementwise passes also in an AVX2 build chosen at run time (GCC's
 * function multiversioning): 8 floats per instruction instead of SSE2's
 * 4.  The same bits either way: the passes are elementwise or sum in
 * fixed lanes, and -std=c11 leaves a * b + c uncontracted (no FMA). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    defined(FLOW_TARGET_CLONES)
/* configure found that target_clones links (it needs ifunc support) */
# define DIV_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#ifndef DIV_CLONES
# define DIV_CLONES
#endif
/* row-level helpers, inlined into the cloned drivers (each clone
 * vectorises them at its own width) */
#define DIV_INLINE static inline __attribute__((always_inline))

typedef struct div_head {
    uint64_t magic;
    size_t n, blocks;
    double t;
} div_head;

typedef struct div_layout {
    size_t xin, z, a;           /* tape offsets (bytes from the tape)    */
    size_t tape;                /* tape bytes                            */
    size_t g0, g1, bias, gate, weff, wt0, wt, row, acc, db, dws;
    size_t scratch;             /* scratch bytes                         */
} div_layout;

static int div_supported(const flow_net *net)
{
    return net && net->kind == FLOW_NET_MLP && !net->derived && net->k == 0
           && net->y_width >= 1 && net->y_width <= net->d;
}

/* elements of W' of the layers before l (concatsquash's scaled copies) */
static size_t div_weff_off(const flow_net *net, size_t l)
{
    size_t s = 0;
    for (size_t i = 0; i < l; i++)
        s += net->layer[i].out * net->layer[i].cols;
    return s;
}

/* layout for B tangent blocks */
static void div_layout_of(const flow_net *net, size_t n, size_t B,
                          div_layout *lo)
{
    const size_t r = sizeof(flow_real);
    size_t rows = mul_sat(n, 1 + B), mw = net->max_width;
    size_t off = round_up(sizeof(div_head));
    int squash = net->time == FLOW_TIME_CONCATSQUASH;
    int tanh_act = net->act == FLOW_ACT_TANH;
#define TAKE(field, bytes) \
    do { lo->field = off; off = add_sat(off, round_up(bytes)); } while (0)
    TAKE(xin, mul_sat(mul_sat(n, net->d), r));
    /* pre-activations: only activations other than tanh need them */
    TAKE(z, tanh_act ? 0 : mul_sat(mul_sat(rows, hidden_rows(net)), r));
    TAKE(a, mul_sat(mul_sat(rows, hidden_rows(net)), r));
    lo->tape = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
    off = 0;
    TAKE(g0, mul_sat(mul_sat(rows, mw), r));
    TAKE(g1, mul_sat(mul_sat(rows, mw), r));
    TAKE(bias, mul_sat(all_rows(net), r));
    TAKE(gate, squash ? mul_sat(all_rows(net), r) : 0);
    TAKE(weff, squash ? mul_sat(div_weff_off(net, net->n_layers), r) : 0);
    TAKE(wt0, mul_sat(mul_sat(net->layer[0].in, net->layer[0].out), r));
    /* hidden layers' W'^T for tgemm (layer l at div_weff_off(l)) */
    TAKE(wt, mul_sat(div_weff_off(net, net->n_layers), r));
    TAKE(row, mul_sat(2 * mw, r));      /* f1, f2 */
    TAKE(acc, mul_sat(mul_sat(DIV_SMALL_IN + DIV_FUSE_D, mw), r));
    TAKE(db, mul_sat(2 * mw, r));       /* db' of two layers */
    TAKE(dws, squash ? mul_sat(net->max_wsize, r) : 0);
#undef TAKE
    lo->scratch = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
}

size_t nn_div_workspace(const flow_net *net, size_t n, size_t *scratch)
{
    div_layout lo;
    if (scratch)
        *scratch = 0;
    if (!div_supported(net))
        return 0;
    /* the exact trace's D blocks are the most */
    div_layout_of(net, n ? n : 1, net->y_width, &lo);
    if (!lo.tape || !lo.scratch)
        return 0;
    if (scratch)
        *scratch = lo.scratch;
    return lo.tape;
}

#if !FLOW_REAL_DOUBLE
/* tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (tanh(9) rounds to 1 in float),
 * a rational approximation fitted here for minimal relative error (linear
 * least squares iterated on the denominator, 40000 points of [0, 9]):
 * relative error 2.2e-8 in exact arithmetic, <= 7 ulp evaluated in float
 * (measured against double tanh on 2e6 points of [-10, 10]).  Clamped to
 * [-1, 1] so that 1 - tanh^2 >= 0.  libm's tanh took a third of FFJORD's
 * training time (docs/ode.md). */
#define TANH_P6 -8.95434520e-14f
#define TANH_P5 5.46007597e-11f
#define TANH_P4 -2.06053836e-08f
#define TANH_P3 1.12484962e-05f
#define TANH_P2 3.11299677e-03f
#define TANH_P1 1.30921173e-01f
#define TANH_P0 9.99999997e-01f
#define TANH_Q3 2.55928737e-04f
#define TANH_Q2 2.45312218e-02f
#define TANH_Q1 4.64254467e-01f

static inline float tanh_fast(float x)
{
    float s, p, q, y;
    x = x > 9.0f ? 9.0f : x;
    x = x < -9.0f ? -9.0f : x;
    s = x * x;
    p = ((((((TANH_P6 * s + TANH_P5) * s + TANH_P4) * s + TANH_P3) * s +
           TANH_P2) * s + TANH_P1) * s + TANH_P0);
    q = ((TANH_Q3 * s + TANH_Q2) * s + TANH_Q1) * s + 1.0f;
    y = x * p / q;
    y = y > 1.0f ? 1.0f : y;
    return y < -1.0f ? -1.0f : y;
}
#endif

#if !FLOW_REAL_DOUBLE
typedef float div_v8 __attribute__((vector_size(32)));
typedef int32_t div_i8 __attribute__((vector_size(32)));
/* m ? a : b lane by lane (m from a vector comparison: -1 or 0); a macro,
 * as 32-byte vector arguments would depend on the clone's ABI */
#define DIV_SEL(m, a, b) ((div_v8)((((div_i8)(a)) & (m)) | \
                                   (((div_i8)(b)) & ~(m))))
#endif

/* a = tanh(a) in place and f1 = 1 - a^2 over count values.  float: the
 * approximation above on 8-float vectors (GCC/Clang vector extensions,
 * two SSE2 halves or one AVX2 register; the clamps are selects, not
 * branches, and keep NaN) */
static inline __attribute__((always_inline)) void div_tanh(flow_real *a,
                                                     flow_real *f1,
                                                     size_t count)
{
    size_t i = 0;
#if !FLOW_REAL_DOUBLE
    const div_v8 c = {9, 9, 9, 9, 9, 9, 9, 9}, one = {1, 1, 1, 1, 1, 1, 1, 1};
    for (; i + 8 <= count; i += 8) {
        div_v8 x, s, p, q, y;
        memcpy(&x, a + i, sizeof x);
        x = DIV_SEL(x > c, c, x);
        x = DIV_SEL(x < -c, -c, x);
        s = x * x;
        p = ((((((TANH_P6 * s + TANH_P5) * s + TANH_P4) * s + TANH_P3) * s +
               TANH_P2) * s + TANH_P1) * s + TANH_P0);
        q = ((TANH_Q3 * s + TANH_Q2) * s + TANH_Q1) * s + 1.0f;
        y = x * p / q;
        y = DIV_SEL(y > one, one, y);
        y = DIV_SEL(y < -one, -one, y);
        memcpy(a + i, &y, sizeof y);
        y = one - y * y;
        memcpy(f1 + i, &y, sizeof y);
    }
    for (; i < count; i++) {
        a[i] = tanh_fast(a[i]);
        f1[i] = 1 - a[i] * a[i];
    }
#else
    for (; i < count; i++) {
        a[i] = tanh(a[i]);
        f1[i] = 1 - a[i] * a[i];
    }
#endif
}

static const flow_real *cat(const void *p, size_t off)
{
    return (const flow_real *)(const void *)((const char *)p + off);
}

/* The call's effective weights and biases (see above), in the scratch:
 * b' of layer l at bias + hidden_off(l), its gate at gate + hidden_off(l)
 * (concatsquash), W' at weff + div_weff_off(l) (concatsquash; else the
 * parameters themselves), and the hidden layers' W' transposed, wt[k * out
 * + j] = W'[j, k] (layer 0's at wt0: its columns contiguous; the others'
 * at wt + div_weff_off(l), the B of tgemm's forward products: only for
 * the forward, fwd = 1, of the float build). */
static void div_prep(const flow_net *net, const flow_real *params, double t,
                     void *scratch, const div_layout *lo, int fwd)
{
    int squash = net->time == FLOW_TIME_CONCATSQUASH;
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const flow_real *w = params + ly->w_off;
        flow_real *bias = at(scratch, lo->bias) + hidden_off(net, l);
        for (size_t j = 0; j < ly->out; j++) {
            double b = params[ly->b_off + j];
            if (net->time == FLOW_TIME_CONCAT)
                b += t * w[j * ly->cols + ly->in];
            if (squash) {
                double g = sigmoid(params[ly->ga_off + j] * t +
                                   params[ly->gc_off + j]);
                flow_real gf = (flow_real)g;
                flow_real *we = at(scratch, lo->weff) + div_weff_off(net, l) +
                                j * ly->cols;
                at(scratch, lo->gate)[hidden_off(net, l) + j] = gf;
                for (size_t k = 0; k < ly->in; k++)
                    we[k] = gf * w[j * ly->cols + k];
                b = (double)gf * b + params[ly->gd_off + j] * t;
            }
            bias[j] = (flow_real)b;
        }
    }
    for (size_t l = 0; l == 0 || l + 1 < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        const flow_real *w = squash ? at(scratch, lo->weff) +
                                      div_weff_off(net, l)
                                    : params + ly->w_off;
        flow_real *wt = l == 0 ? at(scratch, lo->wt0)
                               : at(scratch, lo->wt) + div_weff_off(net, l);
        if (l > 0 && (FLOW_REAL_DOUBLE || !fwd))
            break;          /* W'^T feeds tgemm, the float forward's */
        for (size_t j = 0; j < ly->out; j++)
            for (size_t k = 0; k < ly->in; k++)
                wt[k * ly->out + j] = w[j * ly->cols + k];
    }
}

/* layer l's W' (row stride: the layer's cols) */
static const flow_real *div_w(const flow_net *net, const flow_real *params,
                              const void *scratch, const div_layout *lo,
                              size_t l)
{
    if (net->time == FLOW_TIME_CONCATSQUASH)
        return cat(scratch, lo->weff) + div_weff_off(net, l);
    return params + net->layer[l].w_off;
}

/* v . w over count values, in DIV_CHUNK partial sums */
DIV_INLINE double div_dot(const flow_real *restrict v,
                          const flow_real *restrict w, size_t count)
{
    flow_real part[DIV_CHUNK] = {0};
    double s = 0;
    size_t i = 0;
    for (; i + DIV_CHUNK <= count; i += DIV_CHUNK)
        for (size_t j = 0; j < DIV_CHUNK; j++)
            part[j] += v[i + j] * w[i + j];
    for (; i < count; i++)
        s += (double)v[i] * w[i];
    for (size_t j = 0; j < DIV_CHUNK; j++)
        s += part[j];
    return s;
}

/* row = b + sum_k x[k] wt[k] (in columns wt[k], w values each; b NULL:
 * 0): layer 0 without a GEMM */
DIV_INLINE void div_small_lin(size_t in, size_t w,
                              const flow_real *restrict x,
                              const flow_real *restrict wt,
                              const flow_real *restrict b,
                              flow_real *restrict row)
{
    for (size_t j = 0; j < w; j++)
        row[j] = b ? b[j] : 0;
    for (size_t k = 0; k < in; k++) {
        flow_real xk = x[k];
        const flow_real *restrict c = wt + k * w;
        for (size_t j = 0; j < w; j++)
            row[j] += xk * c[j];
    }
}

/* Activation of hidden layer rows r0..r1-1 (width w, n rows per block, B
 * tangent blocks): a = phi(z), ta^(b) = phi'(z) tz^(b), tz^(b) = unit + b
 * w (layer 0, exact trace: W'[:, b] on every row) or the block's rows.
 * tanh: A holds z and tz on entry (in place); else Z holds them.  f1: w
 * values of scratch. */
DIV_INLINE void div_act_rows(const flow_net *net, size_t n, size_t B,
                             size_t w, size_t r0, size_t r1,
                             const flow_real *Z, flow_real *A,
                             const flow_real *unit, flow_real *restrict f1)
{
    int tanh_act = net->act == FLOW_ACT_TANH;
    for (size_t r = r0; r < r1; r++) {
        flow_real *restrict ap = A + r * w;
        if (tanh_act) {
            div_tanh(ap, f1, w);
        } else {
            const flow_real *zp = Z + r * w;
            for (size_t j = 0; j < w; j++) {
                double f, d1;
                act_eval(net, zp[j], &f, &d1, NULL);
                ap[j] = (flow_real)f;
                f1[j] = (flow_real)d1;
            }
        }
        for (size_t b = 0; b < B; b++) {
            size_t q = (n * (1 + b) + r) * w;
            flow_real *ta = A + q;
            const flow_real *tz = unit ? unit + b * w : tanh_act ? ta : Z + q;
            if (tz == ta)       /* tanh: in place */
                for (size_t j = 0; j < w; j++)
                    ta[j] *= f1[j];
            else
                for (size_t j = 0; j < w; j++)
                    ta[j] = f1[j] * tz[j];
        }
    }
}

/* The forward's elementwise drivers (cloned): layer 0 without a GEMM, row
 * by row (the affine map, the Hutchinson tangent eps W'[:, :D]^T, then the
 * activation while the row is hot); a hidden layer's activation; the
 * trace from the output layer's tangent rows, ty^(b)_b = ta^(b) . W'[b,
 * :] or e^T (ta W'^T). */
DIV_CLONES FLOW_VECTORIZE static void
div_fwd_small0(const flow_net *net, size_t n, size_t B, size_t D, size_t in,
               size_t out, const flow_real *x, const flow_real *eps,
               const flow_real *wt0, const flow_real *bias, flow_real *Z,
               flow_real *A, flow_real *f1)
{
    for (size_t r = 0; r < n; r++) {
        /* rows of a fresh tape: ask for them ahead, for writing */
        for (size_t b = 0; r + DIV_AHEAD < n && b <= B; b++)
            for (size_t j = 0; j < out; j += 64 / sizeof *A)
                __builtin_prefetch(A + (n * b + r + DIV_AHEAD) * out + j, 1);
        div_small_lin(in, out, x + r * in, wt0, bias, Z + r * out);
        if (eps)
            div_small_lin(D, out, eps + r * D, wt0, NULL, Z + (n + r) * out);
        div_act_rows(net, n, B, out, r, r + 1, Z, A, eps ? NULL : wt0, f1);
    }
}

DIV_CLONES FLOW_VECTORIZE static void
div_fwd_act(const flow_net *net, size_t n, size_t B, size_t w,
            const flow_real *Z, flow_real *A, const flow_real *unit,
            flow_real *f1)
{
    div_act_rows(net, n, B, w, 0, n, Z, A, unit, f1);
}

DIV_CLONES FLOW_VECTORIZE static void
div_fwd_trace(size_t n, size_t D, size_t in, size_t ld, const flow_real *ain,
              const flow_real *w, const flow_real *eps, flow_real *tr)
{
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        if (eps)
            for (size_t i = 0; i < D; i++)
                s += eps[r * D + i] *
                     div_dot(ain + (n + r) * in, w + i * ld, in);
        else
            for (size_t b = 0; b < D; b++)
                s += div_dot(ain + (n * (1 + b) + r) * in, w + b * ld, in);
        tr[r] = (flow_real)s;
    }
}

int nn_div_forward(const flow_net *net, const flow_real *params, size_t n,
                   const flow_real *x, double t, const flow_real *eps,
                   flow_real *y, flow_real *tr, void *tape, void *scratch)
{
    div_head *hd = tape;
    div_layout lo;
    size_t D, B, R, L;
    int tanh_act, st;
    if (!div_supported(net))
        return FLOW_ERR_UNSUPPORTED;
    if (!params || !x || !y || !tr || !tape || !scratch ||
        (uintptr_t)tape % sizeof(double) != 0 ||
        (uintptr_t)scratch % sizeof(double) != 0)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    D = net->y_width;
    B = eps ? 1 : D;
    R = n * (1 + B);
    L = net->n_layers;
    tanh_act = net->act == FLOW_ACT_TANH;
    div_layout_of(net, n, B, &lo);
    hd->magic = 0;
    hd->n = n;
    hd->blocks = B;
    hd->t = t;
    memcpy(at(tape, lo.xin), x, n * net->d * sizeof *x);
    div_prep(net, params, t, scratch, &lo, 1);
    for (size_t l = 0; l + 1 < L; l++) {
        const nn_layer *ly = &net->layer[l];
        size_t out = ly->out, in = ly->in, ld = ly->cols;
        size_t off = hidden_off(net, l) * R;
        const flow_real *w = div_w(net, params, scratch, &lo, l);
        const flow_real *bias = at(scratch, lo.bias) + hidden_off(net, l);
        const flow_real *wt0 = at(scratch, lo.wt0);
        flow_real *A = at(tape, lo.a) + off;
        flow_real *Z = tanh_act ? A : at(tape, lo.z) + off;
        flow_real *f1 = at(scratch, lo.row);
        if (l == 0 && in <= DIV_SMALL_IN) {
            div_fwd_small0(net, n, B, D, in, out, x, eps, wt0, bias, Z, A,
                           f1);
            continue;
        }
        if (l == 0) {
            fill_rows(n, out, bias, Z);
            st = blas_gemm(0, 1, n, out, in, 1, x, in, w, ld, 1, Z, out);
            if (st == FLOW_OK && eps)
                st = blas_gemm(0, 1, n, out, D, 1, eps, D, w, ld, 0,
                               Z + n * out, out);
        } else {
            const flow_real *ain = cat(tape, lo.a) +
                                   hidden_off(net, l - 1) * R;
            int done = 0;
            st = FLOW_OK;
#if !FLOW_REAL_DOUBLE
            {
                /* primal rows z = a W'^T + b', then the tangent rows */
                const flow_real *wt = cat(scratch, lo.wt) +
                                      div_weff_off(net, l);
                done = tgemm(n, out, in, ain, in, 1, wt, out, bias, 0, Z,
                             out);
                if (done)
                    tgemm(n * B, out, in, ain + n * in, in, 1, wt, out, NULL,
                          0, Z + n * out, out);
            }
#endif
            if (!done) {
                fill_rows(n, out, bias, Z);
                st = blas_gemm(0, 1, n, out, in, 1, ain, in, w, ld, 1, Z,
                               out);
                if (st == FLOW_OK)
                    st = blas_gemm(0, 1, n * B, out, in, 1, ain + n * in, in,
                                   w, ld, 0, Z + n * out, out);
            }
        }
        if (st != FLOW_OK)
            return st;
        div_fwd_act(net, n, B, out, Z, A, l == 0 && !eps ? wt0 : NULL, f1);
    }
    {
        /* the output layer: y on the primal rows; the trace from the
         * tangent rows (or, without hidden layers, from the input
         * tangents: e_b or e themselves) */
        const nn_layer *ly = &net->layer[L - 1];
        size_t in = ly->in, ld = ly->cols;
        const flow_real *w = div_w(net, params, scratch, &lo, L - 1);
        const flow_real *bias = at(scratch, lo.bias) + hidden_off(net, L - 1);
        const flow_real *ain = L == 1 ? x : cat(tape, lo.a) +
                                            hidden_off(net, L - 2) * R;
        fill_rows(n, D, bias, y);
        st = blas_gemm(0, 1, n, D, in, 1, ain, in, w, ld, 1, y, D);
        if (st != FLOW_OK)
            return st;
        if (L > 1)
            div_fwd_trace(n, D, in, ld, ain, w, eps, tr);
        for (size_t r = 0; L == 1 && r < n; r++) {
            /* ty = W'[:, :D] e: tr = e^T W' e (unit e: W'[b, b]) */
            double s = 0;
            for (size_t i = 0; i < D; i++)
                for (size_t j = 0; j < D; j++)
                    s += eps ? (double)eps[r * D + i] * w[i * ld + j] *
                               eps[r * D + j]
                             : (i == j ? (double)w[i * ld + j] : 0.0);
            tr[r] = (flow_real)s;
        }
    }
    hd->magic = DIV_MAGIC;
    return FLOW_OK;
}

/* Backward through the activation of hidden layer l (width w) on rows
 * r0..r1-1: G holds da (all R rows) on entry and dz on return (formulas
 * above); db += the primal rows' dz.  Exact-trace layer 0: tz^(b) =
 * unit + b w (only needed without tanh). */
DIV_INLINE void div_act_back_rows(const flow_net *net, const void *tape,
                                  const div_layout *lo, size_t l, size_t n,
                                  size_t B, size_t r0, size_t r1,
                                  const flow_real *unit, flow_real *G,
                                  flow_real *restrict f1,
                                  flow_real *restrict f2,
                                  flow_real *restrict acc,
                                  flow_real *restrict db)
{
    size_t w = net->layer[l].out, off = hidden_off(net, l) * n * (1 + B);
    int tanh_act = net->act == FLOW_ACT_TANH;
    const flow_real *A = cat(tape, lo->a) + off;
    const flow_real *Z = tanh_act ? NULL : cat(tape, lo->z) + off;
    for (size_t r = r0; r < r1; r++) {
        const flow_real *restrict ap = A + r * w;
        flow_real *restrict gp = G + r * w;
        /* the recorded tape comes from memory: ask for its rows ahead */
        for (size_t b = 0; r + DIV_AHEAD < n && b <= B; b++)
            for (size_t j = 0; j < w; j += 64 / sizeof *A)
                __builtin_prefetch(A + (n * b + r + DIV_AHEAD) * w + j);
        if (tanh_act) {
            /* f1 with the first block's terms in the same pass; f2 = -2 a
             * (times ta' = phi' tz) in the last */
            flow_real *restrict gt = G + (n + r) * w;
            const flow_real *restrict tv = A + (n + r) * w;
            for (size_t j = 0; j < w; j++) {
                f1[j] = 1 - ap[j] * ap[j];
                acc[j] = tv[j] * gt[j];
                gt[j] *= f1[j];
            }
            for (size_t b = 1; b < B; b++) {
                size_t q = (n * (1 + b) + r) * w;
                flow_real *restrict gb = G + q;
                const flow_real *restrict tb = A + q;
                for (size_t j = 0; j < w; j++) {
                    acc[j] += tb[j] * gb[j];
                    gb[j] *= f1[j];
                }
            }
            for (size_t j = 0; j < w; j++) {
                flow_real v = f1[j] * gp[j] + -2 * ap[j] * acc[j];
                gp[j] = v;
                db[j] += v;
            }
            continue;
        }
        for (size_t j = 0; j < w; j++) {
            double d1, d2;
            act_eval(net, Z[r * w + j], NULL, &d1, &d2);
            f1[j] = (flow_real)d1;
            f2[j] = (flow_real)d2;
        }
        for (size_t j = 0; j < w; j++)
            acc[j] = 0;
        for (size_t b = 0; b < B; b++) {
            size_t q = (n * (1 + b) + r) * w;
            flow_real *restrict gt = G + q;
            const flow_real *restrict tv = unit ? unit + b * w : Z + q;
            for (size_t j = 0; j < w; j++) {
                acc[j] += tv[j] * gt[j];
                gt[j] *= f1[j];
            }
        }
        for (size_t j = 0; j < w; j++) {
            flow_real v = f1[j] * gp[j] + f2[j] * acc[j];
            gp[j] = v;
            db[j] += v;
        }
    }
}

/* dW' += sum_r v[r] row_r over n rows (ld of dw: 1 row) -- one output row
 * of a weight gradient */
DIV_INLINE void div_axpy(size_t w, flow_real s, const flow_real *restrict v,
                         flow_real *restrict dst)
{
    for (size_t j = 0; j < w; j++)
        dst[j] += s * v[j];
}

/* Layer l's parameter gradient from dW' (dw, stride ldw; for concat and no
 * time these are the parameters' own rows, already accumulated) and db'
 * (db): the bias, the time column (concat: dW[:, in] += t db'), or for
 * concatsquash dW = g dW', db = g db', dd = t db', and through dg =
 * sum_k W dW' + b db' the gate's a, c (dg g (1 - g) times t, 1). */
static void div_finish(const flow_net *net, const flow_real *params,
                       const flow_real *gate, size_t l, double t,
                       const flow_real *dw, size_t ldw, const flow_real *db,
                       flow_real *dparams)
{
    const nn_layer *ly = &net->layer[l];
    flow_real *dpw = dparams + ly->w_off;
    for (size_t j = 0; j < ly->out; j++) {
        if (net->time != FLOW_TIME_CONCATSQUASH) {
            dparams[ly->b_off + j] += db[j];
            if (net->time == FLOW_TIME_CONCAT)
                dpw[j * ly->cols + ly->in] += (flow_real)(t * db[j]);
            continue;
        }
        {
            double g = gate[j], dg = (double)params[ly->b_off + j] * db[j];
            double dpre;
            for (size_t k = 0; k < ly->in; k++) {
                dg += (double)params[ly->w_off + j * ly->cols + k] *
                      dw[j * ldw + k];
                dpw[j * ly->cols + k] += (flow_real)(g * dw[j * ldw + k]);
            }
            dpre = dg * g * (1 - g);
            dparams[ly->b_off + j] += (flow_real)(g * db[j]);
            dparams[ly->gd_off + j] += (flow_real)(t * db[j]);
            dparams[ly->ga_off + j] += (flow_real)(t * dpre);
            dparams[ly->gc_off + j] += (flow_real)dpre;
        }
    }
}

/* where layer l's dW' accumulates: the parameters (stride cols) or, for
 * concatsquash, the zeroed scratch dws (stride in) */
static flow_real *div_dw_target(const flow_net *net, flow_real *dparams,
                                void *scratch, const div_layout *lo,
                                size_t l, size_t *ldw)
{
    const nn_layer *ly = &net->layer[l];
    if (net->time == FLOW_TIME_CONCATSQUASH) {
        flow_real *d = at(scratch, lo->dws);
        memset(d, 0, ly->out * ly->in * sizeof *d);
        *ldw = ly->in;
        return d;
    }
    *ldw = ly->cols;
    return dparams + ly->w_off;
}

/* The backward's elementwise drivers (cloned): a hidden activation; the
 * output layer fused into the pass through the last hidden activation
 * (exact trace, D <= DIV_FUSE_D): per row, da = dy W' (primal) and dtr
 * W'[b, :] (block b), dW'[i, :] += dy_i a + dtr ta^(i) into dwa (D rows
 * of w), then as div_act_back_rows; layer 0 without a GEMM, dW'[:, k] +=
 * sum_r G_r x_rk + the tangents' inputs (e_b: a column sum of block b;
 * or e) into dwt (in columns of out), and dx = G W'[:, :in]. */
DIV_CLONES FLOW_VECTORIZE static void
div_back_act(const flow_net *net, const void *tape, const div_layout *lo,
             size_t l, size_t n, size_t B, const flow_real *unit,
             flow_real *G, flow_real *f1, flow_real *f2, flow_real *acc,
             flow_real *db)
{
    div_act_back_rows(net, tape, lo, l, n, B, 0, n, unit, G, f1, f2, acc, db);
}

DIV_CLONES FLOW_VECTORIZE static void
div_back_top(const flow_net *net, const void *tape, const div_layout *lo,
             size_t l, size_t n, size_t D, const flow_real *dy,
             const flow_real *dtr, const flow_real *wl, size_t ld,
             const flow_real *A, const flow_real *unit, flow_real *G,
             flow_real *f1, flow_real *f2, flow_real *ts, flow_real *dwa,
             flow_real *db)
{
    size_t w = net->layer[l].out;
    for (size_t r = 0; r < n; r++) {
        flow_real *restrict gp = G + r * w;
        flow_real dtb = dtr ? dtr[r] : 0;
        for (size_t j = 0; j < w; j++)
            gp[j] = 0;
        for (size_t i = 0; i < D; i++) {
            flow_real dyi = dy ? dy[r * D + i] : 0;
            const flow_real *restrict wi = wl + i * ld;
            flow_real *restrict gt = G + (n * (1 + i) + r) * w;
            div_axpy(w, dyi, wi, gp);
            for (size_t j = 0; j < w; j++)
                gt[j] = dtb * wi[j];
            div_axpy(w, dyi, A + r * w, dwa + i * w);
            div_axpy(w, dtb, A + (n * (1 + i) + r) * w, dwa + i * w);
        }
        div_act_back_rows(net, tape, lo, l, n, D, r, r + 1, unit, G, f1, f2,
                          ts, db);
    }
}

DIV_CLONES FLOW_VECTORIZE static void
div_back_small0(size_t n, size_t B, size_t D, size_t in, size_t out,
                const flow_real *xin, const flow_real *eps,
                const flow_real *G, flow_real *dwt)
{
    for (size_t r = 0; r < n; r++) {
        for (size_t k = 0; k < in; k++)
            div_axpy(out, xin[r * in + k], G + r * out, dwt + k * out);
        for (size_t b = 0; b < B; b++)
            if (eps)
                for (size_t k = 0; k < D; k++)
                    div_axpy(out, eps[r * D + k], G + (n + r) * out,
                             dwt + k * out);
            else
                div_axpy(out, 1, G + (n * (1 + b) + r) * out, dwt + b * out);
    }
}

DIV_CLONES FLOW_VECTORIZE static void
div_back_dx0(size_t n, size_t in, size_t out, const flow_real *G,
             const flow_real *wt0, flow_real *dx)
{
    for (size_t r = 0; r < n; r++)
        for (size_t k = 0; k < in; k++)
            dx[r * in + k] = (flow_real)div_dot(G + r * out, wt0 + k * out,
                                                out);
}

/* tgemm in the float build (see tgemm.h; 0: use blas_gemm) */
static int div_tgemm(size_t m, size_t n, size_t k, const flow_real *a,
                     size_t ars, size_t acs, const flow_real *b, size_t ldb,
                     int acc, flow_real *c, size_t ldc)
{
#if FLOW_REAL_DOUBLE
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b;
    (void)ldb, (void)acc, (void)c, (void)ldc;
    return 0;
#else
    return tgemm(m, n, k, a, ars, acs, b, ldb, NULL, acc, c, ldc);
#endif
}

int nn_div_backward(const flow_net *net, const flow_real *params, size_t n,
                    const void *tape, void *scratch, const flow_real *eps,
                    const flow_real *dy, const flow_real *dtr, flow_real *dx,
                    flow_real *dparams)
{
    const div_head *hd = tape;
    div_layout lo;
    flow_real *G, *Gn, *f1, *f2, *acc, *db, *dbn, *dw;
    const flow_real *gates, *wt0;
    size_t D, B, R, L, l, ldw = 0;
    double t;
    int st;
    if (!div_supported(net))
        return FLOW_ERR_UNSUPPORTED;
    if (!params || !tape || !scratch || (uintptr_t)tape % sizeof(double) ||
        (uintptr_t)scratch % sizeof(double))
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    D = net->y_width;
    B = eps ? 1 : D;
    if (hd->magic != DIV_MAGIC || hd->n != n || hd->blocks != B)
        return FLOW_ERR_INVAL;    /* no matching forward on this tape */
    t = hd->t;
    R = n * (1 + B);
    L = net->n_layers;
    div_layout_of(net, n, B, &lo);
    div_prep(net, params, t, scratch, &lo, 0);
    G = at(scratch, lo.g0);
    Gn = at(scratch, lo.g1);
    f1 = at(scratch, lo.row);
    f2 = f1 + net->max_width;
    acc = at(scratch, lo.acc);
    db = at(scratch, lo.db);
    dbn = db + net->max_width;
    gates = at(scratch, lo.gate);
    wt0 = at(scratch, lo.wt0);
    l = L - 1;
    if (!eps && D <= DIV_FUSE_D && L >= 2) {
        /* the output layer fused (div_back_top); acc holds the D rows of
         * its dW' (w each), then one row of the tangent sum */
        const nn_layer *ly = &net->layer[l], *lh = &net->layer[l - 1];
        size_t w = lh->out, ld = ly->cols;
        const flow_real *wl = div_w(net, params, scratch, &lo, l);
        const flow_real *A = cat(tape, lo.a) + hidden_off(net, l - 1) * R;
        flow_real *dwa = acc, *ts = acc + D * w;
        memset(dwa, 0, D * w * sizeof *dwa);
        memset(db, 0, w * sizeof *db);
        div_back_top(net, tape, &lo, l - 1, n, D, dy, dtr, wl, ld, A,
                     l - 1 == 0 ? wt0 : NULL, G, f1, f2, ts, dwa, db);
        if (dparams) {
            flow_real *dbl = Gn;    /* the output layer's db' */
            dw = div_dw_target(net, dparams, scratch, &lo, l, &ldw);
            for (size_t i = 0; i < D; i++) {
                dbl[i] = 0;
                for (size_t r = 0; dy && r < n; r++)
                    dbl[i] += dy[r * D + i];
                for (size_t j = 0; j < w; j++)
                    dw[i * ldw + j] += dwa[i * w + j];
            }
            div_finish(net, params, gates + hidden_off(net, l), l, t, dw, ldw,
                       dbl, dparams);
        }
        l--;
    } else {
        /* G = cotangents of the output layer: dy (primal rows), dtr e_b
         * (block b) or dtr e; db' its primal column sums */
        if (dy)
            memcpy(G, dy, n * D * sizeof *G);
        else
            memset(G, 0, n * D * sizeof *G);
        memset(G + n * D, 0, n * B * D * sizeof *G);
        for (size_t r = 0; dtr && r < n; r++) {
            if (eps)
                for (size_t j = 0; j < D; j++)
                    G[(n + r) * D + j] = dtr[r] * eps[r * D + j];
            else
                for (size_t b = 0; b < D; b++)
                    G[(n * (1 + b) + r) * D + b] = dtr[r];
        }
        memset(db, 0, D * sizeof *db);
        colsum_add(n, D, G, db);
    }
    for (;; l--) {
        const nn_layer *ly = &net->layer[l];
        size_t out = ly->out, in = ly->in, ld = ly->cols;
        const flow_real *w = div_w(net, params, scratch, &lo, l);
        if (l == 0)
            break;
        {
            /* Gn = G W', the pass through the activation below (which
             * streams that layer's tape in: its first reading), then dW'
             * += G^T [a; ta] on the tape now in cache; db' of this layer
             * in db, of the one below in dbn */
            const flow_real *ain = cat(tape, lo.a) +
                                   hidden_off(net, l - 1) * R;
            flow_real *tmp;
            if (!div_tgemm(R, in, out, G, out, 1, w, ld, 0, Gn, in)) {
                st = blas_gemm(0, 0, R, in, out, 1, G, out, w, ld, 0, Gn, in);
                if (st != FLOW_OK)
                    return st;
            }
            memset(dbn, 0, in * sizeof *dbn);
            div_back_act(net, tape, &lo, l - 1, n, B,
                         l - 1 == 0 && !eps ? wt0 : NULL, Gn, f1, f2, acc,
                         dbn);
            if (dparams) {
                dw = div_dw_target(net, dparams, scratch, &lo, l, &ldw);
                if (!div_tgemm(out, in, R, G, 1, out, ain, in, 1, dw, ldw)) {
                    st = blas_gemm(1, 0, out, in, R, 1, G, out, ain, in, 1,
                                   dw, ldw);
                    if (st != FLOW_OK)
                        return st;
                }
                div_finish(net, params, gates + hidden_off(net, l), l, t, dw,
                           ldw, db, dparams);
            }
            tmp = G;
            G = Gn;
            Gn = tmp;
            tmp = db;
            db = dbn;
            dbn = tmp;
        }
    }
    {
        /* layer 0: dW'[:, k] += sum_r G_r x_rk (+ the tangents' inputs:
         * e_b, a column sum of block b, or e), dx = G W' (primal) */
        const nn_layer *ly = &net->layer[0];
        size_t out = ly->out, in = ly->in, ld = ly->cols;
        const flow_real *w = div_w(net, params, scratch, &lo, 0);
        const flow_real *xin = cat(tape, lo.xin);
        if (dparams) {
            dw = div_dw_target(net, dparams, scratch, &lo, 0, &ldw);
            if (in <= DIV_SMALL_IN) {
                flow_real *dwt = acc;   /* in columns of out values */
                memset(dwt, 0, in * out * sizeof *dwt);
                div_back_small0(n, B, D, in, out, xin, eps, G, dwt);
                for (size_t j = 0; j < out; j++)
                    for (size_t k = 0; k < in; k++)
                        dw[j * ldw + k] += dwt[k * out + j];
            } else {
                st = blas_gemm(1, 0, out, in, n, 1, G, out, xin, in, 1, dw,
                               ldw);
                if (st == FLOW_OK && eps)
                    st = blas_gemm(1, 0, out, D, n, 1, G + n * out, out, eps,
                                   D, 1, dw, ldw);
                if (st != FLOW_OK)
                    return st;
                for (size_t b = 0; !eps && b < B; b++) {
                    flow_real *cs = acc;
                    memset(cs, 0, out * sizeof *cs);
                    colsum_add(n, out, G + n * (1 + b) * out, cs);
                    for (size_t j = 0; j < out; j++)
                        dw[j * ldw + b] += cs[j];
                }
            }
            div_finish(net, params, gates, 0, t, dw, ldw, db, dparams);
        }
        if (dx) {
            if (in <= DIV_SMALL_IN) {
                div_back_dx0(n, in, out, G, wt0, dx);
            } else {
                st = blas_gemm(0, 0, n, in, out, 1, G, out, w, ld, 0, dx,
                               in);
                if (st != FLOW_OK)
                    return st;
            }
        }
    }
    return FLOW_OK;
}
