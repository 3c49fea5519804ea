/* nn.c - the MLP core of the host's networks: creation, forward with a
 * tape, VJP, JVP and the JVP's VJP, all in caller memory (MADE: nn_made.c). */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv.h"
#include "matrix.h"
#include "nn_impl.h"
#include "rng.h"
#include "tgemm.h"

/* Offsets (bytes from ws) of the tape for n rows. */
typedef struct ws_layout {
    size_t wm, gw, sn, sn_scratch, gate, xin, cin;
    size_t wt;                   /* fast path: each layer's W^T (fast_net) */
    size_t nacc;                 /* fast path: grad_w_narrow's sums, 8 x
                                    max_width                            */
    size_t u, z, h, tu, tz, th;  /* per-layer arrays start here, each
                                    layer at + off_rows * n * sizeof    */
    size_t s[4];                 /* backward scratch, n x max_width each  */
    size_t bsum;                 /* bias-gradient sums, max_width doubles */
    size_t total;
} ws_layout;

/* 1 when the float kernels of tgemm.c run this net (nn_forward_fast,
 * nn_backward_fast): a plain MLP (no MADE mask, no spectral norm, no time
 * input) in the float build on a CPU with AVX2 + FMA; elsewhere the
 * OpenBLAS path below. */
static int fast_net(const flow_net *net)
{
#if FLOW_REAL_DOUBLE
    (void)net;
    return 0;
#else
    return net->kind == FLOW_NET_MLP && !net->derived && !net->conv &&
           net->time == FLOW_TIME_NONE && tgemm_level() > 0;
#endif
}

/* Offset (elements) of layer l's W^T in the fast path's wt array. */
static size_t wt_off(const flow_net *net, size_t l)
{
    size_t s = 0;
    for (size_t i = 0; i < l; i++)
        s += net->layer[i].out * net->layer[i].cols;
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
    TAKE(wt, fast_net(net) ? mul_sat(wt_off(net, net->n_layers), r) : 0);
    TAKE(nacc, fast_net(net) ? mul_sat(8 * r, net->max_width) : 0);
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

/* --------------------------------------------------------- creation */

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

/* A FLOW_NET_CONV net: the shell every nn_* entry recognises by kind,
 * around conv.c's net. */
static flow_net *conv_wrap(const flow_net_spec *spec, char *err,
                           size_t err_cap)
{
    flow_net *net = calloc(1, sizeof *net);
    if (!net) {
        set_err(err, err_cap, "net: out of memory");
        return NULL;
    }
    net->kind = FLOW_NET_CONV;
    net->d = spec->in;
    net->k = spec->context;
    net->out = net->y_width = spec->out;
    net->act = spec->act;
    net->zero_last = spec->zero_last;
    net->seed = spec->seed;
    if (!(net->conv = conv_net_create(spec, err, err_cap))) {
        free(net);
        return NULL;
    }
    net->n_params = conv_net_params(net->conv);
    return net;
}

static _Thread_local size_t made_created;

size_t nn_made_created(void) { return made_created; }

flow_net *nn_create(const flow_net_spec *spec, char *err, size_t err_cap)
{
    flow_net *net = NULL;
    size_t p = 0, prev;
    if (err && err_cap)
        err[0] = '\0';
    if (spec && spec->struct_size >= offsetof(flow_net_spec, premasked) &&
        spec->kind == FLOW_NET_CONV)
        return conv_wrap(spec, err, err_cap);
    if (!check_spec(spec, err, err_cap))
        return NULL;
    net = calloc(1, sizeof *net);
    if (!net)
        goto nomem;
    net->kind = spec->kind;
    made_created += spec->kind == FLOW_NET_MADE;
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
    if (net->kind == FLOW_NET_MADE && !nn_made_init(net, spec->order))
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
    conv_net_destroy(net->conv);
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

const struct conv_net *nn_conv(const flow_net *net)
{
    return net ? net->conv : NULL;
}

const uint8_t *nn_layer_mask(const flow_net *net, size_t l)
{
    if (!net || !net->mask || l >= net->n_layers)
        return NULL;
    return net->mask + net->layer[l].m_off;
}

/* Uniform init: W_ij and b_i ~ U(-s, s) with s = 1 / sqrt(fan_in), fan_in
 * counting the unmasked inputs of the row (MADE; masked weights 0); with
 * zero_last the output layer's W, b and time bias are 0.  Concatsquash
 * gate a, c and time bias d ~ U(-1, 1) (PyTorch's default for a 1-input
 * linear map, as in FFJORD's code). */
void nn_init(const flow_net *net, flow_real *params, flow_rng *rng)
{
    flow_rng local;
    if (!net || !params)
        return;
    if (net->conv) {
        conv_net_init(net->conv, params, rng);
        return;
    }
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

/* MADE's sampling steps and density pass reuse the same workspace with
 * layouts of their own: the largest of the three. */
size_t nn_workspace(const flow_net *net, size_t n)
{
    ws_layout lo;
    size_t made;
    if (!net)
        return 0;
    if (net->conv)
        return conv_net_workspace(net->conv, n);
    layout(net, n ? n : 1, &lo);
    if (net->kind != FLOW_NET_MADE)
        return lo.total;
    made = nn_made_workspace(net, n ? n : 1);
    if (!lo.total || !made)
        return 0;
    return made > lo.total ? made : lo.total;
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
        flow_real *dst = wm + ly->m_off;
        size_t sz = ly->out * ly->cols;
        nn_masked_weights(net, params, l, dst);
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

#if !FLOW_REAL_DOUBLE
/* 1 when a product of width out (a layer's outputs, or the input
 * gradient's columns) runs on tgemm's tiles, 0 on tgemm_dot's dot
 * products: those are faster below 7 columns (AVX-512, k = 128, 4096
 * rows: 24 against 93 us for 1 column, 59 against 92 for 4, 89 against
 * 94 for 6, 113 against 94 for 7, where the tiles' cost is that of a
 * 16-column tile), and run on AVX-512 only; from 7 columns on the tiles,
 * whose last n % 16 columns are masked (tgemm.h), win. */
static int tile_width(size_t out)
{
    return out >= 7 || tgemm_level() < 2;
}

/* The forward pass of a fast_net: per layer z = [x | ctx] W^T + b by
 * tgemm against W^T (transposed into the tape, which the backward pass's
 * narrow products read too), the bias and ReLU in its epilogue; a layer
 * of fewer than 7 outputs (an MLP's last, e.g. a 2-D affine coupling's
 * scale and shift) as dot products against W's rows (tgemm_dot).  The
 * tape is that of nn_forward's OpenBLAS path (ReLU's z is its h).
 * Returns 0 when a kernel declined before anything was written, so that
 * the caller runs the OpenBLAS path instead; 1 when done. */
static int forward_fast(const flow_net *net, const flow_real *params,
                        size_t n, void *ws, const ws_layout *lo)
{
    int relu = net->act == FLOW_ACT_RELU;
    const float *ctx = at(ws, lo->cin);
    for (size_t l = 0; l < net->n_layers; l++) {
        const nn_layer *ly = &net->layer[l];
        int last = l + 1 == net->n_layers;
        size_t ho = hidden_off(net, l) * n;
        size_t win = l == 0 ? net->d : ly->in;
        const float *w = params + ly->w_off, *bias = params + ly->b_off;
        const float *in =
            l == 0 ? at(ws, lo->xin) : at(ws, lo->h) + hidden_off(net, l - 1) * n;
        float *h = last ? NULL : at(ws, lo->h) + ho;
        float *z = last ? NULL : relu ? h : at(ws, lo->z) + ho;
        float *wt = at(ws, lo->wt) + wt_off(net, l);
        int done;
        tgemm_transpose(ly->out, ly->cols, w, ly->cols, wt, ly->out);
        if (last)
            return 1;       /* the output layer: nn_forward's y */
        if (tile_width(ly->out) || (l == 0 && net->k)) {
            int two = l == 0 && net->k;    /* the context's block follows */
            tgemm_epi ep = {.bias = bias, .relu = relu && !two};
            done = tgemm_mixed_ep(n, ly->out, win, in, win, 1, wt, ly->out,
                                  &ep, z, ly->out);
            if (done && two) {
                tgemm_epi ep2 = {.acc = 1, .relu = relu};
                done = tgemm_mixed_ep(n, ly->out, net->k, ctx, net->k, 1,
                                      wt + net->d * ly->out, ly->out, &ep2,
                                      z, ly->out);
            }
        } else {
            done = tgemm_dot(n, ly->out, win, in, win, w, ly->cols, bias, 0,
                             z, ly->out);
            if (done && relu)
                act_inplace(net, n * ly->out, z, h);
        }
        if (!done)
            return 0;
        if (!relu)
            act_apply(net, z, h, n * ly->out);
    }
    return 1;
}

/* The output layer of a fast_net (after forward_fast): y = h W^T + b. */
static int forward_fast_out(const flow_net *net, const flow_real *params,
                            size_t n, void *ws, const ws_layout *lo,
                            flow_real *y)
{
    size_t l = net->n_layers - 1;
    const nn_layer *ly = &net->layer[l];
    size_t win = l == 0 ? net->d : ly->in;
    const float *in =
        l == 0 ? at(ws, lo->xin) : at(ws, lo->h) + hidden_off(net, l - 1) * n;
    if (l == 0 && net->k)
        return 0;
    if (tile_width(ly->out)) {
        tgemm_epi ep = {.bias = params + ly->b_off};
        return tgemm_mixed_ep(n, ly->out, win, in, win, 1,
                        at(ws, lo->wt) + wt_off(net, l), ly->out, &ep, y,
                        ly->out);
    }
    return tgemm_dot(n, ly->out, win, in, win, params + ly->w_off, ly->cols,
                     params + ly->b_off, 0, y, ly->out);
}
#endif

int nn_forward(const flow_net *net, const flow_real *params, size_t n,
               const flow_real *x, const flow_real *ctx, double t,
               flow_real *y, void *ws)
{
    ws_head *hd = ws;
    ws_layout lo;
    int squash, st = FLOW_OK;
    if (net && net->conv)
        return conv_net_forward(net->conv, params, n, x, ctx, y, ws);
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
    hd->fast = 0;
    memcpy(at(ws, lo.xin), x, n * net->d * sizeof(flow_real));
    if (net->k)
        memcpy(at(ws, lo.cin), ctx, n * net->k * sizeof(flow_real));
    if (net->derived && (st = derive_weights(net, params, ws, &lo)) != FLOW_OK)
        return st;
#if !FLOW_REAL_DOUBLE
    if (fast_net(net) && forward_fast(net, params, n, ws, &lo) &&
        forward_fast_out(net, params, n, ws, &lo, y)) {
        hd->fast = 1;
        hd->magic = WS_MAGIC;
        return FLOW_OK;
    }
#endif
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
    if (net && net->conv)
        return FLOW_ERR_UNSUPPORTED;
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

#if !FLOW_REAL_DOUBLE
/* dW (out x ldw, its first win columns) += G^T X for a narrow X (n x
 * win, win < 8: a 2-D coupling's one conditioning input), row by row
 * into acc (win x out, contiguous over the outputs so that the loop
 * vectorises), then added to dW; OpenBLAS ran this outer-product sum at
 * a third of its GEMM rate. */
FLOW_VECTORIZE static void grad_w_narrow(size_t n, size_t out, size_t win,
                                         const float *restrict g,
                                         const float *restrict x,
                                         float *restrict acc,
                                         float *restrict dw, size_t ldw)
{
    memset(acc, 0, win * out * sizeof *acc);
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < win; c++) {
            float xv = x[r * win + c];
            float *restrict ac = acc + c * out;
            const float *restrict gr = g + r * out;
            for (size_t j = 0; j < out; j++)
                ac[j] += gr[j] * xv;
        }
    for (size_t j = 0; j < out; j++)
        for (size_t c = 0; c < win; c++)
            dw[j * ldw + c] += acc[c * out + j];
}

/* nn_backward after forward_fast (net->time none, so the bias gradients
 * are column sums; dparams NULL: the input gradients only).  dL/dh_{l-1}
 * = G W by tgemm with ReLU's derivative (pos_mask of the taped h) and the
 * bias gradient's column sums in its epilogue; dW += G^T X by tgemm (A
 * read transposed in place) where X is 8 or more columns wide; the input
 * gradient of a narrow input (under 7 columns, tile_width: a 2-D
 * coupling's one conditioning column) as dot products against W^T's rows.  Returns 1 when done, 0 when a
 * kernel declined before anything was written (the caller then runs the
 * OpenBLAS path); -1 - status on a failure of that path's calls. */
static int backward_fast(const flow_net *net, const flow_real *params,
                         size_t n, void *ws, const ws_layout *lo,
                         const flow_real *dy, flow_real *dx, flow_real *dctx,
                         flow_real *dparams)
{
    int relu = net->act == FLOW_ACT_RELU, nb = 0, st;
    const float *gcur = dy;
    if (dparams)
        colsum_add(n, net->y_width, dy,
                   dparams + net->layer[net->n_layers - 1].b_off);
    for (size_t l = net->n_layers; l-- > 0;) {
        const nn_layer *ly = &net->layer[l];
        const float *w = params + ly->w_off;
        const float *wt = at(ws, lo->wt) + wt_off(net, l);
        size_t win = l == 0 ? net->d : ly->in;
        const float *in =
            l == 0 ? at(ws, lo->xin) : at(ws, lo->h) + hidden_off(net, l - 1) * n;
        float *gnext = at(ws, lo->s[nb]);
        if (dparams) {
            tgemm_epi acc = {.acc = 1};
            float *dw = dparams + ly->w_off;
            if (win < 8)
                grad_w_narrow(n, ly->out, win, gcur, in, at(ws, lo->nacc),
                              dw, ly->cols);
            else if (!tgemm_mixed_ep(ly->out, win, n, gcur, 1, ly->out, in,
                                     win, &acc, dw, ly->cols)) {
                st = blas_gemm(1, 0, ly->out, win, n, 1, gcur, ly->out, in,
                               win, 1, dw, ly->cols);
                if (st != FLOW_OK)
                    return -1 - st;
            }
            if (l == 0 && net->k) {
                st = blas_gemm(1, 0, ly->out, net->k, n, 1, gcur, ly->out,
                               at(ws, lo->cin), net->k, 1, dw + net->d,
                               ly->cols);
                if (st != FLOW_OK)
                    return -1 - st;
            }
        }
        if (l == 0) {
            st = FLOW_OK;
            if (dx && !(tile_width(net->d)
                            ? tgemm_mixed_ep(n, net->d, ly->out, gcur,
                                             ly->out, 1, w, ly->cols, NULL,
                                             dx, net->d)
                            : tgemm_dot(n, net->d, ly->out, gcur, ly->out,
                                        wt, ly->out, NULL, 0, dx, net->d)))
                st = blas_gemm(0, 0, n, net->d, ly->out, 1, gcur, ly->out, w,
                               ly->cols, 0, dx, net->d);
            if (st == FLOW_OK && dctx && net->k)
                st = blas_gemm(0, 0, n, net->k, ly->out, 1, gcur, ly->out,
                               w + net->d, ly->cols, 1, dctx, net->k);
            return st == FLOW_OK ? 1 : -1 - st;
        }
        {
            size_t hp = hidden_off(net, l - 1) * n;
            float *db = dparams ? dparams + net->layer[l - 1].b_off : NULL;
            tgemm_epi ep = {.gate = relu ? at(ws, lo->h) + hp : NULL,
                            .ldg = ly->in, .colsum = relu ? db : NULL};
            if (!tgemm_mixed_ep(n, ly->in, ly->out, gcur, ly->out, 1, w,
                                ly->cols, &ep, gnext, ly->in)) {
                st = blas_gemm(0, 0, n, ly->in, ly->out, 1, gcur, ly->out, w,
                               ly->cols, 0, gnext, ly->in);
                if (st != FLOW_OK)
                    return -1 - st;
                grad_act_bias(net, n, ly->in, at(ws, lo->z) + hp,
                              at(ws, lo->h) + hp, gnext, db);
            } else if (!relu) {
                grad_act_bias(net, n, ly->in, at(ws, lo->z) + hp,
                              at(ws, lo->h) + hp, gnext, db);
            }
        }
        gcur = gnext;
        nb = 1 - nb;
    }
    return 1;
}
#endif

int nn_backward(const flow_net *net, const flow_real *params, size_t n,
                void *ws, const flow_real *dy, flow_real *dx,
                flow_real *dctx, flow_real *dparams)
{
    ws_layout lo;
    flow_real *buf[2];
    const flow_real *gcur;
    double t;
    int squash, st, fused, nb = 0;
    if (net && net->conv)
        return conv_net_backward(net->conv, params, n, ws, dy, dx, dctx,
                                 dparams);
    if (!params || !dy)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    if ((st = check_tape(net, n, ws)) != FLOW_OK)
        return st;
    t = ((ws_head *)ws)->t;
    layout(net, n, &lo);
#if !FLOW_REAL_DOUBLE
    if (((ws_head *)ws)->fast) {
        st = backward_fast(net, params, n, ws, &lo, dy, dx, dctx, dparams);
        return st < 0 ? -1 - st : FLOW_OK;
    }
#endif
    squash = net->time == FLOW_TIME_CONCATSQUASH;
    /* without time terms the bias gradients are column sums taken in the
     * passes that produce each G (colsum_add, grad_act_bias) */
    fused = dparams && net->time == FLOW_TIME_NONE;
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
    if (net && net->conv)
        return FLOW_ERR_UNSUPPORTED;
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
                if (tanh_act) {  /* from the stored h, as act_grad_mul */
                    f1 = 1 - v * v;
                    f2 = -2 * v * f1;
                } else {         /* ReLU: the sign of h (act_inplace) */
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
