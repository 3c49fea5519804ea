/* nn_impl.h - private to runtime/nn*.c: the net's structs, the workspace
 * header and the helpers that the MLP, MADE and divergence files share. */
#ifndef FLOW_RUNTIME_NN_IMPL_H
#define FLOW_RUNTIME_NN_IMPL_H

/* Included by the module's files only (nn.c, nn_made.c, nn_div.c); the
 * rest of the runtime sees nets through nn.h.  The helpers are static, so
 * that each file has its own copy, which the compiler can inline into its
 * hot loops (a call into another file would never be inlined). */

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "nn.h"
#include "vec.h"

/* Magic numbers of the workspace header: which call wrote the tape (each
 * reader checks it). */
#define WS_MAGIC 0x666c6f776e6e7631ull  /* "flownnv1" */
#define WS_STEP_MAGIC 0x666c6f776d737431ull  /* "flowmst1": nn_made_step */
#define WS_SORT_MAGIC 0x666c6f77736f7231ull  /* "flowsor1": nn_made_forward */
/* Alignment of every array in a workspace (a cache line). */
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
     * degree s + 1; hidden units are stored sorted by degree, and per
     * hidden layer l, bstart + l * (D + 1) holds, for k = 0..D, the number
     * of its units of degree < k; sperm + hidden_off(l) lists the units
     * of the cyclic order of format-2 checkpoints in that order (stored
     * unit p was cyclic unit sperm[p]: nn_made_from_cyclic), and sperm +
     * hidden_rows + hidden_off(l) is the inverse (nn_made_net_init). */
    size_t *by_deg;
    size_t *sperm;
    size_t *bstart;
    /* MADE in degree order (nn_made_forward / nn_made_backward), set when
     * the net is sortable (premasked, no time input, no spectral norm):
     * per layer, at row offset hidden_off(l) (the output layer after the
     * hidden rows), rmap = the parameter row of sorted row p (identity for
     * hidden rows), ext = the sorted input columns its block of rows reads
     * and vis = those its own mask row lets through; cmap (at the sum of
     * the inputs of the layers below) = the parameter column of sorted
     * column q (identity above layer 0). */
    int sortable;
    size_t *rmap, *ext, *vis;
    uint32_t *cmap;             /* 32 bits: the sort's gather reads it */
    uint8_t *lead;              /* row p leads its cycle of rmap (the
                                   smallest index in it): nn_made_grad */
    /* FLOW_NET_CONV: the convolutional net (conv.c) every nn_* entry
     * hands on to; no MLP layers then (n_layers 0). */
    struct conv_net *conv;
};

/* Workspace header; the tape follows at WS_ALIGN offsets. */
typedef struct ws_head {
    uint64_t magic;
    size_t n;
    double t;
    int have_jvp;
    size_t step_next;           /* nn_made_step: the step expected next */
    int fast;                   /* nn_forward took the tgemm path (nn.c),
                                   whose tape holds each layer's W^T */
} ws_head;

/* ---------------------------------------------------------- helpers */

/* v rounded up to WS_ALIGN, saturating at SIZE_MAX (never wraps) */
static inline size_t round_up(size_t v)
{
    if (v > SIZE_MAX - (WS_ALIGN - 1))
        return SIZE_MAX;
    return (v + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
}

/* A message into err (cap bytes), when the caller gave a buffer. */
static inline void set_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void set_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (!err || !cap)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* a * b with overflow to SIZE_MAX (saturating: sizes are checked later) */
static inline size_t mul_sat(size_t a, size_t b)
{
    return (b && a > SIZE_MAX / b) ? SIZE_MAX : a * b;
}

static inline size_t add_sat(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* Sum of layer widths of hidden layers (rows of layers 0..L-2). */
static inline size_t hidden_rows(const flow_net *net)
{
    size_t s = 0;
    for (size_t l = 0; l + 1 < net->n_layers; l++)
        s += net->layer[l].out;
    return s;
}

static inline size_t all_rows(const flow_net *net)
{
    return hidden_rows(net) + net->layer[net->n_layers - 1].out;
}

/* Offset (in elements per row) of hidden layer l inside the per-layer
 * hidden arrays z, h, tz, th. */
static inline size_t hidden_off(const flow_net *net, size_t l)
{
    size_t s = 0;
    for (size_t i = 0; i < l; i++)
        s += net->layer[i].out;
    return s;
}

/* the workspace (or tape, scratch) at byte offset off */
static inline flow_real *at(void *ws, size_t off)
{
    return (flow_real *)((char *)ws + off);
}

/* v[i] = 0 where m[i] = 0, else v[i] unchanged (bit for bit, NaN
 * included); branch-free on the bits, as masks alternate too often for
 * a branch (MADE hidden degrees are cyclic). */
static inline void mask_zero(flow_real *restrict v,
                             const uint8_t *restrict m, size_t count)
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

/* ------------------------------------------------------ activations */

/* NN_STATIC marks the larger helpers: plain static functions, inlined or
 * not by the compiler's measure for any file-local function (declared
 * inline, their activation switches would be copied into every caller);
 * unused, as a file need not call each of them. */
#define NN_STATIC static __attribute__((unused))

static inline double sigmoid(double z)
{
    if (z >= 0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* f(z), f'(z), f''(z) of the hidden activation; any pointer may be NULL */
NN_STATIC void act_eval(const flow_net *net, double z, double *f,
                        double *f1, double *f2)
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
FLOW_VECTORIZE NN_STATIC void act_apply(const flow_net *net,
                                       const flow_real *restrict z,
                                       flow_real *restrict h,
                                       size_t count)
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
 * act_inplace). */
FLOW_VECTORIZE NN_STATIC void act_grad_mul(const flow_net *net,
                                          const flow_real *restrict z,
                                          const flow_real *restrict h,
                                          flow_real *restrict g,
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
FLOW_VECTORIZE NN_STATIC void act_inplace(const flow_net *net,
                                          size_t count, flow_real *z,
                                          flow_real *h)
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
FLOW_VECTORIZE NN_STATIC void fill_rows(size_t n, size_t w,
                                        const flow_real *restrict b,
                                        flow_real *restrict z)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < w; j++)
            z[r * w + j] = b[j];
}

/* db += the column sums of g (n x w), row by row (contiguous). */
FLOW_VECTORIZE NN_STATIC void colsum_add(size_t n, size_t w,
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
FLOW_VECTORIZE NN_STATIC void grad_act_bias(const flow_net *net,
                                            size_t n, size_t w,
                                            const flow_real *z,
                                            const flow_real *h,
                                            flow_real *g,
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

/* Layer l's weights as given to the kernels before any spectral
 * normalisation: the parameters with the MADE mask applied (masked
 * entries 0), rows x cols into dst. */
static inline void nn_masked_weights(const flow_net *net,
                                     const flow_real *params, size_t l,
                                     flow_real *dst)
{
    const nn_layer *ly = &net->layer[l];
    const flow_real *w = params + ly->w_off;
    size_t sz = ly->out * ly->cols;
    if (net->mask) {
        const uint8_t *m = net->mask + ly->m_off;
        for (size_t i = 0; i < sz; i++)
            dst[i] = m[i] ? w[i] : 0;
    } else {
        memcpy(dst, w, sz * sizeof *dst);
    }
}

/* MADE (nn_made.c), called by nn_create and nn_workspace: the degrees,
 * masks and maps of the degree-order kernels (0 when out of memory), and
 * the workspace bytes of those kernels for n rows (0 on overflow). */
int nn_made_init(flow_net *net, const int32_t *order);
size_t nn_made_workspace(const flow_net *net, size_t n);

#endif
