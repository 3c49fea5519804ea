/* conv.c - the host's convolutional conditioner (FLOW_NET_CONV): im2col +
 * GEMM convolutions, the net's forward pass with a tape, its VJP, export. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv_impl.h"
#include "json.h"
#include "matrix.h"
#include "nn_impl.h"
#include "rng.h"
#include "tgemm.h"
#include "vec.h"

#if defined(__SSE2__) && !FLOW_REAL_DOUBLE
# include <xmmintrin.h>
# define CONV_SSE_TRANSPOSE 1
#endif

/* "flowcnv1": the tape was written by conv_net_forward */
#define CONV_MAGIC 0x666c6f77636e7631ull

/* ------------------------------------------------------------ helpers */

/* g *= ReLU'(at the output h) */
FLOW_VECTORIZE static void relu_grad(const flow_real *restrict h,
                                     flow_real *restrict g, size_t count)
{
    for (size_t i = 0; i < count; i++)
        g[i] *= pos_mask(h[i]);
}

/* dst[j ldd + i] = src[i lds + j] for i < rows, j < cols: the gradients
 * and the pixel-major copy of the backward pass (11% of a training pass
 * as a scalar loop).  Float on x86-64: 4 x 4 blocks through SSE
 * registers (_MM_TRANSPOSE4_PS, the baseline instruction set: no
 * run-time check); else 8 x 8 blocks of scalar moves.  Moves only, the
 * same values either way. */
#ifdef CONV_SSE_TRANSPOSE
static void transpose(size_t rows, size_t cols, const flow_real *src,
                      size_t lds, flow_real *dst, size_t ldd)
{
    size_t i0 = 0;
    for (; i0 + 4 <= rows; i0 += 4) {
        const float *s0 = src + i0 * lds;
        size_t j0 = 0;
        for (; j0 + 4 <= cols; j0 += 4) {
            __m128 r0 = _mm_loadu_ps(s0 + j0);
            __m128 r1 = _mm_loadu_ps(s0 + lds + j0);
            __m128 r2 = _mm_loadu_ps(s0 + 2 * lds + j0);
            __m128 r3 = _mm_loadu_ps(s0 + 3 * lds + j0);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_ps(dst + j0 * ldd + i0, r0);
            _mm_storeu_ps(dst + (j0 + 1) * ldd + i0, r1);
            _mm_storeu_ps(dst + (j0 + 2) * ldd + i0, r2);
            _mm_storeu_ps(dst + (j0 + 3) * ldd + i0, r3);
        }
        for (; j0 < cols; j0++)
            for (size_t i = 0; i < 4; i++)
                dst[j0 * ldd + i0 + i] = s0[i * lds + j0];
    }
    for (; i0 < rows; i0++)
        for (size_t j = 0; j < cols; j++)
            dst[j * ldd + i0] = src[i0 * lds + j];
}
#else
static void transpose(size_t rows, size_t cols,
                      const flow_real *restrict src, size_t lds,
                      flow_real *restrict dst, size_t ldd)
{
    size_t i0 = 0;
    for (; i0 + 8 <= rows; i0 += 8) {
        size_t j0 = 0;
        for (; j0 + 8 <= cols; j0 += 8)
            for (size_t j = 0; j < 8; j++)
                for (size_t i = 0; i < 8; i++)
                    dst[(j0 + j) * ldd + i0 + i] =
                        src[(i0 + i) * lds + j0 + j];
        for (; j0 < cols; j0++)
            for (size_t i = 0; i < 8; i++)
                dst[j0 * ldd + i0 + i] = src[(i0 + i) * lds + j0];
    }
    for (; i0 < rows; i0++)
        for (size_t j = 0; j < cols; j++)
            dst[j * ldd + i0] = src[i0 * lds + j];
}
#endif

/* ------------------------------------------------------------ kernels */

size_t conv_col_count(size_t cin, size_t h, size_t w, size_t k)
{
    if (k == 1)
        return 0;
    return mul_sat(mul_sat(mul_sat(cin, k), k), mul_sat(h, w));
}

/* The columns x of an output row whose input column x + dx lies inside
 * 0..w-1: [*x0, *x1), empty (x0 = x1) when |dx| >= w. */
static void valid_cols(size_t w, long dx, size_t *x0, size_t *x1)
{
    long a = dx < 0 ? -dx : 0, b = (long)w - (dx > 0 ? dx : 0);
    if (a > (long)w)
        a = (long)w;
    if (b < a)
        b = a;
    *x0 = (size_t)a;
    *x1 = (size_t)b;
}

/* conv_im2col with strides: the input's planes ips values apart, col's
 * rows ld (>= h w) apart, columns h w .. ld-1 zeroed (the net's padded
 * planes, conv_net_create). */
static void im2col_ld(size_t c, size_t h, size_t w, size_t k,
                      const flow_real *img, size_t ips, flow_real *col,
                      size_t ld)
{
    const long p = (long)(k / 2);
    for (size_t ci = 0; ci < c; ci++)
        for (size_t ky = 0; ky < k; ky++)
            for (size_t kx = 0; kx < k; kx++) {
                flow_real *row = col + ((ci * k + ky) * k + kx) * ld;
                const flow_real *pl = img + ci * ips;
                long dy = (long)ky - p, dx = (long)kx - p;
                size_t y0 = dy < 0 ? (size_t)-dy : 0;
                size_t y1 = dy > 0 ? h - (size_t)dy : h;
                size_t x0, x1, j0, j1;
                valid_cols(w, dx, &x0, &x1);
                if ((long)h <= (dy < 0 ? -dy : dy) || x0 == x1) {
                    memset(row, 0, ld * sizeof *row);
                    continue;
                }
                /* rows y0..y1-1 read plane rows y + dy: as one run, dst[j]
                 * = plane[j + dy w + dx], the entries that wrapped to a
                 * neighbouring row (x outside x0..x1-1) zeroed after */
                j0 = y0 * w + x0;
                j1 = (y1 - 1) * w + x1;
                memset(row, 0, j0 * sizeof *row);
                memcpy(row + j0, pl + (long)j0 + dy * (long)w + dx,
                       (j1 - j0) * sizeof *row);
                if (x0 > 0 || x1 < w)
                    for (size_t y = y0; y < y1; y++) {
                        for (size_t x = 0; x < x0; x++)
                            row[y * w + x] = 0;
                        for (size_t x = x1; x < w; x++)
                            row[y * w + x] = 0;
                    }
                memset(row + j1, 0, (ld - j1) * sizeof *row);
            }
}

void conv_im2col(size_t c, size_t h, size_t w, size_t k,
                 const flow_real *img, flow_real *col)
{
    im2col_ld(c, h, w, k, img, h * w, col, h * w);
}

/* conv_col2im with strides: col's rows ld apart, img's planes ops (>= h
 * w) apart, their columns h w .. ops-1 zeroed. */
static void col2im_ld(size_t c, size_t h, size_t w, size_t k,
                      const flow_real *col, size_t ld, flow_real *img,
                      size_t ops)
{
    const long p = (long)(k / 2);
    memset(img, 0, c * ops * sizeof *img);
    for (size_t ci = 0; ci < c; ci++)
        for (size_t ky = 0; ky < k; ky++)
            for (size_t kx = 0; kx < k; kx++) {
                const flow_real *row = col + ((ci * k + ky) * k + kx) * ld;
                long dy = (long)ky - p, dx = (long)kx - p;
                size_t x0, x1;
                valid_cols(w, dx, &x0, &x1);
                for (size_t y = 0; y < h; y++) {
                    long sy = (long)y + dy;
                    if (sy < 0 || sy >= (long)h)
                        continue;
                    flow_real *dst = img + ci * ops + (size_t)sy * w + dx;
                    const flow_real *src = row + y * w;
                    for (size_t x = x0; x < x1; x++)
                        dst[x] += src[x];
                }
            }
}

void conv_col2im(size_t c, size_t h, size_t w, size_t k,
                 const flow_real *col, flow_real *img)
{
    col2im_ld(c, h, w, k, col, h * w, img, h * w);
}

/* Convolution as one GEMM (the im2col formulation, Chellapilla et al.
 * 2006, sec. 2.1): Y (cout x hw) = W (cout x cin k k) col (cin k k x hw),
 * the bias written into Y first and accumulated by the GEMM (beta = 1,
 * as nn.c does: OpenBLAS clears C itself for beta = 0). */
int conv_apply(size_t cin, size_t cout, size_t h, size_t w, size_t k,
               const flow_real *wt, const flow_real *b, const flow_real *x,
               flow_real *y, flow_real *col)
{
    const size_t hw = h * w, ck = cin * k * k;
    const flow_real *in = x;
    for (size_t o = 0; o < cout; o++) {
        flow_real v = b ? b[o] : 0, *yo = y + o * hw;
        for (size_t p = 0; p < hw; p++)
            yo[p] = v;
    }
    if (k != 1) {
        conv_im2col(cin, h, w, k, x, col);
        in = col;
    }
    return blas_gemm(0, 0, cout, hw, ck, 1, wt, ck, in, hw, 1, y, hw);
}

void conv_flip(size_t cin, size_t cout, size_t k, const flow_real *wt,
               flow_real *wf)
{
    const size_t kk = k * k;
    for (size_t o = 0; o < cout; o++)
        for (size_t c = 0; c < cin; c++) {
            const flow_real *src = wt + (o * cin + c) * kk;
            flow_real *dst = wf + (c * cout + o) * kk;
            for (size_t q = 0; q < kk; q++)
                dst[q] = src[kk - 1 - q];
        }
}

/* dW += G col^T, db += the row sums of G; dx either as dcol = W^T G and
 * col2im(dcol) (the GEMM's inner dimension is cout), or with the flipped
 * kernel as the same-padded convolution of G (the inner dimension cout k
 * k, the im2col of G smaller than dcol when cout < cin); for k = 1, col
 * is x and dx = W^T G directly. */
int conv_apply_backward(size_t cin, size_t cout, size_t h, size_t w,
                        size_t k, const flow_real *wt, const flow_real *wf,
                        const flow_real *x, const flow_real *g, flow_real *dx,
                        flow_real *dwt, flow_real *db, flow_real *col,
                        flow_real *dcol)
{
    const size_t hw = h * w, ck = cin * k * k;
    int st = FLOW_OK;
    if (db)
        for (size_t o = 0; o < cout; o++) {
            double s = 0;
            for (size_t p = 0; p < hw; p++)
                s += g[o * hw + p];
            db[o] += (flow_real)s;
        }
    if (dwt) {
        const flow_real *in = x;
        if (k != 1) {
            conv_im2col(cin, h, w, k, x, col);
            in = col;
        }
        st = blas_gemm(0, 1, cout, ck, hw, 1, g, hw, in, hw, 1, dwt, ck);
        if (st != FLOW_OK)
            return st;
    }
    if (!dx)
        return FLOW_OK;
    if (k == 1)
        return blas_gemm(1, 0, cin, hw, cout, 1, wt, cin, g, hw, 0, dx, hw);
    if (wf)
        return conv_apply(cout, cin, h, w, k, wf, NULL, g, dx, col);
    st = blas_gemm(1, 0, ck, hw, cout, 1, wt, ck, g, hw, 0, dcol, hw);
    if (st == FLOW_OK)
        conv_col2im(cin, h, w, k, dcol, dx);
    return st;
}

/* ------------------------------------------------------------ creation */

/* The spec reaches the 1.7 fields? */
static int spec_has_conv(const flow_net_spec *spec)
{
    return spec->struct_size >= offsetof(flow_net_spec, residual) +
                                    sizeof spec->residual;
}

static int check_spec(const flow_net_spec *spec, char *err, size_t cap)
{
    size_t k;
    if (!spec || !spec_has_conv(spec)) {
        set_err(err, cap, "net: conv spec of %zu bytes lacks the 1.7 fields "
                "(channels .. residual)", spec ? (size_t)spec->struct_size : 0);
        return 0;
    }
    k = spec->kernel ? spec->kernel : 3;
    if (!spec->channels || !spec->height || !spec->width ||
        !spec->conv_hidden || !spec->out_channels) {
        set_err(err, cap, "net: conv needs channels, height, width, "
                "conv_hidden and out_channels > 0 (got %zu, %zu, %zu, %zu, "
                "%zu)", spec->channels, spec->height, spec->width,
                spec->conv_hidden, spec->out_channels);
        return 0;
    }
    if (k % 2 == 0 || k > 15) {
        set_err(err, cap, "net: conv kernel must be odd and at most 15 "
                "(same padding), got %zu", k);
        return 0;
    }
    if (spec->blocks > 64) {
        set_err(err, cap, "net: conv blocks must be at most 64, got %zu",
                spec->blocks);
        return 0;
    }
    if (spec->act != FLOW_ACT_RELU || spec->time != FLOW_TIME_NONE ||
        spec->spectral_norm != 0 || spec->premasked) {
        set_err(err, cap, "net: conv supports activation relu only, without "
                "time input, spectral_norm or premasked");
        return 0;
    }
    if (spec->channels > SIZE_MAX / 1024
        || spec->conv_hidden > SIZE_MAX / 1024
        || spec->out_channels > SIZE_MAX / 1024
        || spec->context > SIZE_MAX / 1024
        || mul_sat(spec->height, spec->width) > SIZE_MAX / 1024
        || mul_sat(mul_sat(spec->channels + spec->context
                           + spec->conv_hidden, 225),
                   mul_sat(spec->height, spec->width)) > SIZE_MAX / 1024) {
        set_err(err, cap, "net: conv sizes overflow");
        return 0;
    }
    if (spec->in != mul_sat(spec->channels, spec->height * spec->width) ||
        spec->out != mul_sat(spec->out_channels,
                             spec->height * spec->width)) {
        set_err(err, cap, "net: conv widths in = %zu, out = %zu do not match "
                "%zu x %zu x %zu -> %zu x %zu x %zu", spec->in, spec->out,
                spec->channels, spec->height, spec->width, spec->out_channels,
                spec->height, spec->width);
        return 0;
    }
    return 1;
}

conv_net *conv_net_create(const flow_net_spec *spec, char *err,
                          size_t err_cap)
{
    conv_net *net;
    size_t p = 0;
    if (err && err_cap)
        err[0] = '\0';
    if (!check_spec(spec, err, err_cap))
        return NULL;
    net = calloc(1, sizeof *net);
    if (!net)
        goto nomem;
    net->c = spec->channels;
    net->h = spec->height;
    net->w = spec->width;
    net->hw = net->h * net->w;
    net->hwp = (net->hw + 7) / 8 * 8;
    net->ctx = spec->context;
    net->hid = spec->conv_hidden;
    net->k = spec->kernel ? spec->kernel : 3;
    net->blocks = spec->blocks;
    net->cout = spec->out_channels;
    net->residual = spec->residual != 0;
    net->zero_last = spec->zero_last;
    net->seed = spec->seed;
    net->n_layers = net->blocks + 2;
    net->layer = calloc(net->n_layers, sizeof *net->layer);
    net->tune = calloc(2, sizeof *net->tune);
    if (!net->layer || !net->tune)
        goto nomem;
    for (size_t l = 0; l < net->n_layers; l++) {
        conv_layer *ly = &net->layer[l];
        int first = l == 0, last = l + 1 == net->n_layers;
        size_t col;
        ly->cin = first ? net->c + net->ctx : net->hid;
        ly->cout = last ? net->cout : net->hid;
        ly->k = first || last ? net->k : 1;
        ly->w_off = p;
        p = add_sat(p, mul_sat(mul_sat(ly->cout, ly->cin), ly->k * ly->k));
        ly->b_off = p;
        p = add_sat(p, ly->cout);
        if (p > SIZE_MAX / 4) {
            set_err(err, err_cap, "net: conv parameter count overflows in "
                    "layer %zu", l);
            conv_net_destroy(net);
            return NULL;
        }
        ly->flip = ly->k > 1 && ly->cout < ly->cin;
        ly->f_off = net->flip_total;
        if (ly->flip)
            net->flip_total += ly->cout * ly->cin * ly->k * ly->k;
        ly->coutp = (ly->cout + 7) / 8 * 8;
        ly->t_off = net->dwt_total;
        net->dwt_total += (ly->cin * ly->k * ly->k + 1) * ly->coutp;
        if (ly->coutp > net->coutp_max)
            net->coutp_max = ly->coutp;
        /* the im2col of the layer's input, padded planes; layer 0's input
         * (unpadded) goes through col even for k = 1 */
        col = ly->k > 1 || first ? mul_sat(ly->cin * ly->k * ly->k, net->hwp)
                                 : 0;
        if (col > net->col_max)
            net->col_max = col;
    }
    net->n_params = p;
    for (size_t l = 0; l < net->n_layers; l++) {
        const conv_layer *ly = &net->layer[l];
        size_t ck = ly->cin * ly->k * ly->k;
        net->madds = add_sat(net->madds,
                             mul_sat(mul_sat(ly->cout, ck), net->hw));
    }
#if !FLOW_REAL_DOUBLE
    {
        float ta[8] = {0}, tb[8] = {0}, tc[8];
        net->split = tgemm(1, 8, 1, ta, 1, 1, tb, 8, NULL, 0, tc, 8);
    }
#endif
    /* the shifted last layer where tgemm runs (its A strides are general,
     * which OpenBLAS's fallback cannot take): rows of w + 2 pk, planes of
     * (h + 2 pk) of them plus margins (layer_shift) */
    if (net->k > 1) {
        const size_t pk = net->k / 2;
        net->shift = net->split;
        net->wp = net->w + 2 * pk;
        net->ns = (net->h * net->wp + 7) / 8 * 8;
        net->sp = ((net->h + 2 * pk) * net->wp + 2 * pk + 8 + 7) / 8 * 8;
        net->shiftw = net->shift && net->hid % 8 == 0;
        net->s_off = net->dwt_total;
        if (net->shiftw)
            net->dwt_total += (net->k * net->k * net->hid + 8) * net->cout;
    }
    return net;
nomem:
    set_err(err, err_cap, "net: out of memory");
    conv_net_destroy(net);
    return NULL;
}

void conv_net_destroy(conv_net *net)
{
    if (!net)
        return;
    free(net->layer);
    free(net->tune);
    free(net);
}

size_t conv_net_params(const conv_net *net)
{
    return net ? net->n_params : 0;
}

size_t conv_net_layers(const conv_net *net)
{
    return net ? net->n_layers : 0;
}

int conv_net_layer(const conv_net *net, size_t l, size_t *cin, size_t *cout,
                   size_t *k, size_t *w_off, size_t *b_off)
{
    if (!net || l >= net->n_layers)
        return FLOW_ERR_INVAL;
    if (cin)
        *cin = net->layer[l].cin;
    if (cout)
        *cout = net->layer[l].cout;
    if (k)
        *k = net->layer[l].k;
    if (w_off)
        *w_off = net->layer[l].w_off;
    if (b_off)
        *b_off = net->layer[l].b_off;
    return FLOW_OK;
}

void conv_net_init(const conv_net *net, flow_real *params, flow_rng *rng)
{
    flow_rng local;
    if (!net || !params)
        return;
    if (!rng) {
        rng_seed(&local, net->seed ^ 0x636f6e76696e6974ull);
        rng = &local;
    }
    for (size_t l = 0; l < net->n_layers; l++) {
        const conv_layer *ly = &net->layer[l];
        int zero = l + 1 == net->n_layers && net->zero_last;
        size_t fan = ly->cin * ly->k * ly->k;
        size_t nw = ly->cout * fan;
        /* torch.nn.Conv2d's default (as torch.nn.Linear's, nn.c):
         * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = cin k k */
        double s = 1.0 / sqrt((double)fan);
        for (size_t i = 0; i < nw; i++) {
            double v = (2 * rng_uniform(rng) - 1) * s;
            params[ly->w_off + i] = zero ? 0 : (flow_real)v;
        }
        for (size_t o = 0; o < ly->cout; o++) {
            double v = (2 * rng_uniform(rng) - 1) * s;
            params[ly->b_off + o] = zero ? 0 : (flow_real)v;
        }
    }
}

/* ------------------------------------------------------------ workspace */

#define TAKE(field, count) \
    do { \
        cw->field = base ? (flow_real *)(void *)(base + off) : NULL; \
        off = add_sat(off, round_up(mul_sat((count), sizeof(flow_real)))); \
    } while (0)

/* A thread's per-image scratch laid out from base + off (base NULL:
 * sizes only); the offset after it. */
size_t conv_carve_private(const conv_net *net, char *base, size_t off,
                          conv_ws *cw)
{
    size_t ca = net->c + net->ctx;
    size_t hid_img = mul_sat(net->hid, net->hwp);
    TAKE(aug, mul_sat(ca, net->hw));
    TAKE(col, net->col_max);
    TAKE(dcol, net->col_max);
    TAKE(g[0], hid_img);
    TAKE(g[1], hid_img);
    TAKE(g[2], hid_img);
    TAKE(yt, mul_sat(net->cout, net->hwp > net->ns ? net->hwp : net->ns));
    TAKE(gt, mul_sat(net->hwp, net->coutp_max));
    TAKE(daug, mul_sat(ca, net->hw));
    TAKE(pad, net->shift ? mul_sat(net->hid, net->sp) : 0);
    TAKE(gtp, net->shift
                  ? mul_sat(net->ns, net->layer[net->n_layers - 1].coutp)
                  : 0);
    TAKE(padt, net->shiftw ? mul_sat(net->hid, net->sp) : 0);
    TAKE(gp, net->shiftw ? mul_sat(net->cout, net->ns) : 0);
    return off;
}

/* The workspace of n images laid out from ws (NULL: sizes only). */
static void carve(const conv_net *net, size_t n, void *ws, conv_ws *cw)
{
    size_t off = round_up(sizeof(conv_head));
    size_t hid_img = mul_sat(net->hid, net->hwp);
    char *base = ws;
    TAKE(x, mul_sat(n, net->c * net->hw));
    TAKE(cx, mul_sat(n, net->ctx));
    TAKE(h, mul_sat(mul_sat(n, hid_img), net->blocks + 1));
    TAKE(r, net->residual ? mul_sat(mul_sat(n, hid_img), net->blocks) : 0);
    TAKE(wf, net->flip_total);
    TAKE(dwt, net->dwt_total);
    TAKE(ones, net->hwp);
    TAKE(onesp, net->ns);
    TAKE(ones8, net->shiftw ? mul_sat(net->ns, 8) : 0);
    off = conv_carve_private(net, base, off, cw);
    cw->total = off >= SIZE_MAX - WS_ALIGN ? 0 : off;
}

#undef TAKE

size_t conv_net_workspace(const conv_net *net, size_t n)
{
    conv_ws cw;
    if (!net)
        return 0;
    carve(net, n ? n : 1, NULL, &cw);
    return cw.total;
}

/* ------------------------------------------------------------ shares */

static const conv_part WHOLE = {0, 1, 1};

/* The items of shares p of count: [*lo, *hi), whole runs of `unit`
 * items but the last. */
static void share(conv_part p, size_t count, size_t unit, size_t *lo,
                  size_t *hi)
{
    size_t units = (count + unit - 1) / unit;
    *lo = units * p.lo / p.k * unit;
    *hi = units * p.hi / p.k * unit;
    if (*lo > count)
        *lo = count;
    if (*hi > count)
        *hi = count;
}

/* ------------------------------------------------------------ passes */

/* Layer 0's input of image i: the image itself, or with context the
 * image then one constant plane per context value in aug. */
static const flow_real *input_of(const conv_net *net, const conv_ws *cw,
                                 size_t i)
{
    const flow_real *xi = cw->x + i * net->c * net->hw;
    if (!net->ctx)
        return xi;
    memcpy(cw->aug, xi, net->c * net->hw * sizeof *xi);
    for (size_t j = 0; j < net->ctx; j++) {
        flow_real v = cw->cx[i * net->ctx + j];
        flow_real *pl = cw->aug + (net->c + j) * net->hw;
        for (size_t p = 0; p < net->hw; p++)
            pl[p] = v;
    }
    return cw->aug;
}

/* Hidden activation l (0 .. blocks) of image i, and residual stage l's
 * ReLU output (1 .. blocks): hid planes of hwp values. */
static flow_real *hid_of(const conv_net *net, const conv_ws *cw, size_t n,
                         size_t l, size_t i)
{
    return cw->h + (l * n + i) * net->hid * net->hwp;
}

static flow_real *res_of(const conv_net *net, const conv_ws *cw, size_t n,
                         size_t l, size_t i)
{
    return cw->r + ((l - 1) * n + i) * net->hid * net->hwp;
}

/* C (m x n, row stride ldc) = A B, plus C when acc, with A(i, q) = a[i ars
 * + q acs] (one of ars, acs is 1) and B row-major: tgemm where it runs,
 * each C entry one chain of fused multiply-adds over q from 0, then C
 * added (tgemm.h), so an entry's bits depend only on its row of A and
 * column of B; else (float64, no AVX2) OpenBLAS on the same operands. */
static int mm(size_t m, size_t n, size_t k, const flow_real *a, size_t ars,
              size_t acs, const flow_real *b, size_t ldb, int acc,
              flow_real *c, size_t ldc)
{
#if !FLOW_REAL_DOUBLE
    if (tgemm(m, n, k, a, ars, acs, b, ldb, NULL, acc, c, ldc))
        return FLOW_OK;
#endif
    if (acs == 1)
        return blas_gemm(0, 0, m, n, k, 1, a, ars > k ? ars : k, b, ldb,
                         acc ? 1 : 0, c, ldc);
    if (ars != 1)
        return FLOW_ERR_INVAL;  /* general strides: tgemm only (net->shift) */
    return blas_gemm(1, 0, m, n, k, 1, a, acs > m ? acs : m, b, ldb,
                     acc ? 1 : 0, c, ldc);
}

/* mm on share p of C's rows */
static int mm_rows(conv_part p, size_t m, size_t n, size_t k,
                   const flow_real *a, size_t ars, size_t acs,
                   const flow_real *b, size_t ldb, int acc, flow_real *c,
                   size_t ldc)
{
    size_t lo, hi;
    share(p, m, 1, &lo, &hi);
    if (hi == lo)
        return FLOW_OK;
    return mm(hi - lo, n, k, a + lo * ars, ars, acs, b, ldb, acc,
              c + lo * ldc, ldc);
}

/* mm on share p of C's columns, in runs of 8 (tgemm's width) */
static int mm_cols(conv_part p, size_t m, size_t n, size_t k,
                   const flow_real *a, size_t ars, size_t acs,
                   const flow_real *b, size_t ldb, int acc, flow_real *c,
                   size_t ldc)
{
    size_t lo, hi;
    share(p, n, 8, &lo, &hi);
    if (hi == lo)
        return FLOW_OK;
    return mm(m, hi - lo, k, a, ars, acs, b + lo, ldb, acc, c + lo, ldc);
}

/* mm on share p of C's entries, by columns where every share gets a run
 * of 8 (tgemm's wider tiles), else by rows: for products that no other
 * step of the stage reads (the parameter gradient) */
static int mm_part(conv_part p, size_t m, size_t n, size_t k,
                   const flow_real *a, size_t ars, size_t acs,
                   const flow_real *b, size_t ldb, int acc, flow_real *c,
                   size_t ldc)
{
    return (n / 8 >= p.k ? mm_cols : mm_rows)(p, m, n, k, a, ars, acs, b,
                                              ldb, acc, c, ldc);
}

/* out (planes of hwp) = ReLU(out + b), one pass */
FLOW_VECTORIZE static void bias_relu(size_t cout, size_t hwp,
                                     const flow_real *restrict b,
                                     flow_real *restrict out)
{
    for (size_t o = 0; o < cout; o++)
        for (size_t p = 0; p < hwp; p++) {
            flow_real v = out[o * hwp + p] + b[o];
            out[o * hwp + p] = pos_mask(v) * v;
        }
}

/* Layer l on one image without its bias, share p of out's rows (cols:
 * of its columns): out (cout planes of hwp) = W in, in of cin planes ips
 * apart (hw for layer 0's input, hwp for hidden ones).  The caller adds b
 * after the product (bias_relu), the bits of the product accumulating
 * onto b (the entry's chain, then b added). */
static int layer_apply(const conv_net *net, const flow_real *params,
                       size_t l, const flow_real *in, size_t ips,
                       flow_real *out, flow_real *col, conv_part p, int cols)
{
    const conv_layer *ly = &net->layer[l];
    const size_t hwp = net->hwp, ck = ly->cin * ly->k * ly->k;
    if (ly->k != 1 || ips != hwp) {
        im2col_ld(ly->cin, net->h, net->w, ly->k, in, ips, col, hwp);
        in = col;
    }
    return (cols ? mm_cols : mm_rows)(p, ly->cout, hwp, ck,
                                      params + ly->w_off, ck, 1, in, hwp, 0,
                                      out, hwp);
}

/* The shifted last layer (net->shift): a same-padded convolution without
 * im2col, as k k products on shifted views of one zero-bordered copy of
 * its input.  Plane c of pad holds the input padded by pk = k/2 zeros on
 * every side, rows of wp = w + 2 pk, after a margin of pk zeros (and
 * zeros after it up to the stride sp); output column u = y wp + x + pk
 * (x < w; the other columns are border positions, computed and dropped)
 * then reads tap (ky, kx) at pad + c sp + u + ky wp + kx, so the tap's
 * operand is the (cin x ns) matrix at offset ky wp + kx with row stride
 * sp.  Each output entry: for every tap in order, that tap's chain over
 * the channels, then the sum so far added (tgemm's acc): one image's
 * values in a fixed order, as in im2col's single chain.  Where im2col
 * writes and reads k k copies of the input (576 x 196 values for the
 * issue's 64-channel 14 x 14 layer, twice a training step), this copies
 * it once and computes 15% more columns. */
static void pad_fill(const conv_net *net, const flow_real *in,
                     flow_real *pad)
{
    const size_t pk = net->k / 2, wp = net->wp;
    for (size_t c = 0; c < net->hid; c++)
        for (size_t y = 0; y < net->h; y++) {
            flow_real *dst = pad + c * net->sp + pk + (y + pk) * wp + pk;
            const flow_real *src = in + c * net->hwp + y * net->w;
            for (size_t x = 0; x < net->w; x++)
                dst[x] = src[x];
        }
}

/* share p of the columns of out (cout rows of ns) = the layer's W on its
 * input in (hid planes of hwp), without the bias */
static int shift_apply(const conv_net *net, const flow_real *params,
                       const flow_real *in, flow_real *out, flow_real *pad,
                       conv_part p)
{
    const conv_layer *ly = &net->layer[net->n_layers - 1];
    const size_t k = ly->k, kk = k * k, ck = ly->cin * kk;
    pad_fill(net, in, pad);
    for (size_t t = 0; t < kk; t++) {
        int st = mm_cols(p, ly->cout, net->ns, ly->cin,
                         params + ly->w_off + t, ck, kk,
                         pad + (t / k) * net->wp + t % k, net->sp, t > 0,
                         out, net->ns);
        if (st != FLOW_OK)
            return st;
    }
    return FLOW_OK;
}

/* Share p of dW and db of the shifted layer += one image's (hid a
 * multiple of 8), given its input in and g (cout planes of hwp), with
 * the input copied pixel-major (padt: row r holds pad's column r of
 * every plane), so that tap t's operand pad_t^T is the (ns x hid) matrix
 * at row ky wp + kx and dW_t (cout x hid) += G pad_t^T is a product of
 * width hid, not of width cout (8: a quarter of the AVX-512 kernel's
 * rate); G on the output columns (gp, 0 on the border columns) and db
 * (cout x 8, equal columns) += G ones8. */
static int shift_back_wt(const conv_net *net, const flow_real *in,
                         const flow_real *g, const conv_ws *cw, conv_part p)
{
    const conv_layer *ly = &net->layer[net->n_layers - 1];
    const size_t k = ly->k, kk = k * k, hid = ly->cin, cout = ly->cout;
    const size_t pk = k / 2, wp = net->wp, ns = net->ns;
    flow_real *dw = cw->dwt + net->s_off, *dbs = dw + kk * cout * hid;
    int st = FLOW_OK;
    for (size_t y = 0; y < net->h; y++)
        transpose(hid, net->w, in + y * net->w, net->hwp,
                  cw->padt + (pk + (y + pk) * wp + pk) * hid, hid);
    for (size_t o = 0; o < cout; o++)
        for (size_t y = 0; y < net->h; y++)
            memcpy(cw->gp + o * ns + y * wp + pk,
                   g + o * net->hwp + y * net->w, net->w * sizeof *g);
    for (size_t t = 0; t < kk && st == FLOW_OK; t++)
        st = mm_part(p, cout, hid, ns, cw->gp, ns, 1,
                     cw->padt + ((t / k) * wp + t % k) * hid, hid, 1,
                     dw + t * cout * hid, hid);
    if (st == FLOW_OK)
        st = mm_part(p, cout, 8, ns, cw->gp, ns, 1, cw->ones8, 8, 1, dbs, 8);
    return st;
}

/* Share p of dW^T and db^T of the shifted layer += one image's, given
 * its input in and g (cout planes of hwp): tap t's rows c k k + t of dW^T
 * (stride k k coutp) += pad_t G^T, with G^T laid out on the output
 * columns u (gtp, 0 on the border columns, so they add exact zeros) */
static int shift_back_w(const conv_net *net, const flow_real *in,
                        const flow_real *g, const conv_ws *cw, conv_part p)
{
    const conv_layer *ly = &net->layer[net->n_layers - 1];
    const size_t k = ly->k, kk = k * k, ck = ly->cin * kk, cp = ly->coutp;
    const size_t pk = k / 2, wp = net->wp;
    flow_real *dwt = cw->dwt + ly->t_off;
    int st = FLOW_OK;
    if (net->shiftw)
        return shift_back_wt(net, in, g, cw, p);
    pad_fill(net, in, cw->pad);
    for (size_t y = 0; y < net->h; y++)
        for (size_t x = 0; x < net->w; x++) {
            flow_real *row = cw->gtp + (y * wp + x + pk) * cp;
            for (size_t o = 0; o < ly->cout; o++)
                row[o] = g[o * net->hwp + y * net->w + x];
        }
    for (size_t t = 0; t < kk && st == FLOW_OK; t++)
        st = mm_part(p, ly->cin, cp, net->ns, cw->pad + (t / k) * wp + t % k,
                     net->sp, 1, cw->gtp, cp, 1, dwt + t * cp, kk * cp);
    if (st == FLOW_OK)
        st = mm_part(p, 1, cp, net->ns, cw->onesp, net->ns, 1, cw->gtp, cp,
                     1, dwt + ck * cp, cp);
    return st;
}

/* The zero borders of a thread's copies for the shifted layer (pad_fill
 * and the gradients on the output columns write only the image's
 * positions). */
void conv_clear_shift(const conv_net *net, const conv_ws *cw, int back)
{
    if (!net->shift)
        return;
    memset(cw->pad, 0, net->hid * net->sp * sizeof *cw->pad);
    if (back && !net->shiftw)
        memset(cw->gtp, 0, net->ns * net->layer[net->n_layers - 1].coutp
                               * sizeof *cw->gtp);
    if (back && net->shiftw) {
        memset(cw->padt, 0, net->hid * net->sp * sizeof *cw->padt);
        memset(cw->gp, 0, net->cout * net->ns * sizeof *cw->gp);
    }
}

/* Layer l of image i in the forward pass, share p of it: of a hidden
 * layer the output channels (rows), with their bias, ReLU and residual
 * sum; of the last the output columns, with their bias and copy into y.
 * cw's scratch is the calling thread's own, its tape shared. */
int conv_fwd_layer(const conv_net *net, const flow_real *params,
                   const conv_ws *cw, size_t n, size_t l, size_t i,
                   flow_real *y, conv_part p)
{
    const size_t last = net->blocks + 1, hwp = net->hwp;
    size_t ys = hwp, y0 = 0, yr = net->w;   /* yt's geometry */
    size_t lo, hi;
    flow_real *yi;
    int st;
    if (l < last) {
        const flow_real *in = l ? hid_of(net, cw, n, l - 1, i)
                                : input_of(net, cw, i);
        flow_real *hb = hid_of(net, cw, n, l, i);
        flow_real *rb = net->residual && l ? res_of(net, cw, n, l, i) : hb;
        st = layer_apply(net, params, l, in, l ? hwp : net->hw, rb, cw->col,
                         p, 0);
        if (st != FLOW_OK)
            return st;
        share(p, net->hid, 1, &lo, &hi);
        bias_relu(hi - lo, hwp, params + net->layer[l].b_off + lo,
                  rb + lo * hwp);
        if (rb != hb)
            for (size_t q = lo * hwp; q < hi * hwp; q++)
                hb[q] = in[q] + rb[q];
        return FLOW_OK;
    }
    if (net->shift) {
        st = shift_apply(net, params, hid_of(net, cw, n, net->blocks, i),
                         cw->yt, cw->pad, p);
        ys = net->ns;
        y0 = net->k / 2;
        yr = net->wp;
    } else {
        st = layer_apply(net, params, last, hid_of(net, cw, n, net->blocks, i),
                         hwp, cw->yt, cw->col, p, 1);
    }
    if (st != FLOW_OK)
        return st;
    share(p, ys, 8, &lo, &hi);              /* the columns computed */
    yi = y + i * net->cout * net->hw;
    for (size_t o = 0; o < net->cout; o++) {
        const flow_real bo = params[net->layer[last].b_off + o];
        for (size_t yy = 0; yy < net->h; yy++) {
            const size_t u = yy * yr + y0;  /* column of pixel (yy, 0) */
            const flow_real *src = cw->yt + o * ys + u;
            flow_real *dst = yi + o * net->hw + yy * net->w;
            size_t q0 = lo > u ? lo - u : 0, q1 = hi > u ? hi - u : 0;
            if (q1 > net->w)
                q1 = net->w;
            for (size_t q = q0; q < q1; q++)
                dst[q] = src[q] + bo;
        }
    }
    return FLOW_OK;
}

/* The VJP of layer l on one image given g (cout planes of hwp, padding
 * columns 0), share p: of db and dW^T (cw->dwt) accumulated when grads
 * (entries, mm_part), of din (cin planes ops apart) written when not NULL
 * (input channels).  dW^T (cin k k x coutp) += col G^T, the transposed
 * product so that tgemm's width is coutp, not cin k k (18 or 36 for a
 * thin first layer); G^T's padding rows and columns are 0, so they add
 * exact zeros.  din as in conv_apply_backward: W^T G for k = 1, the
 * convolution of G with the flipped kernel when the layer narrows, else
 * col2im(W^T G), each input channel from its own rows. */
static int layer_back(const conv_net *net, const flow_real *params,
                      size_t l, const flow_real *in, size_t ips,
                      const flow_real *g, flow_real *din, size_t ops,
                      int grads, const conv_ws *cw, conv_part p)
{
    const conv_layer *ly = &net->layer[l];
    const size_t hw = net->hw, hwp = net->hwp, k = ly->k, kk = k * k;
    const size_t ck = ly->cin * kk, cp = ly->coutp;
    const flow_real *wt = params + ly->w_off;
    flow_real *dst;
    size_t c0, c1;
    int st;
    if (grads && net->shift && l + 1 == net->n_layers) {
        if ((st = shift_back_w(net, in, g, cw, p)) != FLOW_OK)
            return st;
    } else if (grads) {
        const flow_real *colp = in;
        if (k != 1 || ips != hwp) {
            im2col_ld(ly->cin, net->h, net->w, k, in, ips, cw->col, hwp);
            colp = cw->col;
        }
        memset(cw->gt + hw * cp, 0, (hwp - hw) * cp * sizeof *cw->gt);
        transpose(ly->cout, hw, g, hwp, cw->gt, cp);
        if (cp > ly->cout)
            for (size_t q = 0; q < hw; q++)
                for (size_t o = ly->cout; o < cp; o++)
                    cw->gt[q * cp + o] = 0;
        st = mm_part(p, ck, cp, hwp, colp, hwp, 1, cw->gt, cp, 1,
                     cw->dwt + ly->t_off, cp);
        if (st == FLOW_OK)      /* db^T += 1^T G^T, the row sums of G */
            st = mm_part(p, 1, cp, hwp, cw->ones, hwp, 1, cw->gt, cp, 1,
                         cw->dwt + ly->t_off + ck * cp, cp);
        if (st != FLOW_OK)
            return st;
    }
    if (!din)
        return FLOW_OK;
    share(p, ly->cin, 1, &c0, &c1);
    if (c1 == c0)
        return FLOW_OK;
    dst = ops == hwp ? din : cw->dcol;
    if (k == 1) {
        st = mm(c1 - c0, hwp, ly->cout, wt + c0, 1, ly->cin, g, hwp, 0,
                dst + c0 * hwp, hwp);
    } else if (ly->flip) {
        const size_t fk = ly->cout * kk;
        im2col_ld(ly->cout, net->h, net->w, k, g, hwp, cw->col, hwp);
        st = mm(c1 - c0, hwp, fk, cw->wf + ly->f_off + c0 * fk, fk, 1,
                cw->col, hwp, 0, dst + c0 * hwp, hwp);
    } else {
        st = mm((c1 - c0) * kk, hwp, ly->cout, wt + c0 * kk, 1, ck, g, hwp,
                0, cw->dcol + c0 * kk * hwp, hwp);
        if (st == FLOW_OK)
            col2im_ld(c1 - c0, net->h, net->w, k, cw->dcol + c0 * kk * hwp,
                      hwp, din + c0 * ops, ops);
        return st;
    }
    if (st == FLOW_OK && dst != din)
        for (size_t c = c0; c < c1; c++)
            memcpy(din + c * ops, dst + c * hwp, hw * sizeof *din);
    if (st == FLOW_OK && ops > hw)
        for (size_t c = c0; c < c1; c++)
            memset(din + c * ops + hw, 0, (ops - hw) * sizeof *din);
    return st;
}


/* Layer l of image i in the backward pass, share p of it (layer_back's),
 * from the output down: gin = dL/d(h_l) (the last layer reads dy
 * instead), gout = dL/d(h_{l-1}) (layer 0: dx and dctx instead), times
 * ReLU'(h_{l-1}) where h_{l-1} is a ReLU's output (without residual
 * stages every hidden layer; with them h_0 only: h_b = h_{b-1} +
 * ReLU(conv h_{b-1})), in the rows of share p.  gout may be gin with
 * residual stages (on one thread), never without; cw->g[1] and g[2]
 * are the residual stage's scratch. */
int conv_back_layer(const conv_net *net, const flow_real *params, size_t n,
                    const conv_ws *cw, size_t l, size_t i,
                    const conv_back_args *ba, const flow_real *gin,
                    flow_real *gout, conv_part p)
{
    const size_t hw = net->hw, hwp = net->hwp, last = net->blocks + 1;
    const size_t hsz = net->hid * hwp;
    const flow_real *prev;
    size_t c0, c1;
    int st;
    if (l == 0) {
        st = layer_back(net, params, 0, input_of(net, cw, i), hw, gin,
                        ba->want_in ? cw->daug : NULL, hw, ba->grads, cw, p);
        if (st != FLOW_OK || !ba->want_in)
            return st;
        share(p, net->c + net->ctx, 1, &c0, &c1);
        for (size_t c = c0; c < c1; c++) {
            const flow_real *pl = cw->daug + c * hw;
            double s = 0;
            if (c < net->c) {
                if (ba->dx)
                    memcpy(ba->dx + (i * net->c + c) * hw, pl,
                           hw * sizeof *pl);
                continue;
            }
            if (!ba->dctx)
                continue;
            for (size_t q = 0; q < hw; q++)
                s += pl[q];
            ba->dctx[i * net->ctx + c - net->c] += (flow_real)s;
        }
        return FLOW_OK;
    }
    prev = hid_of(net, cw, n, l - 1, i);
    if (l == last) {
        /* dL/dy of image i in padded planes, the padding 0 */
        const flow_real *dyi = ba->dy + i * net->cout * hw;
        for (size_t o = 0; o < net->cout; o++) {
            memcpy(cw->yt + o * hwp, dyi + o * hw, hw * sizeof *dyi);
            memset(cw->yt + o * hwp + hw, 0, (hwp - hw) * sizeof *dyi);
        }
        st = layer_back(net, params, l, prev, hwp, cw->yt, gout, hwp,
                        ba->grads, cw, p);
    } else if (net->residual) {
        flow_real *gb = cw->g[1], *gc = cw->g[2];
        memcpy(gb, gin, hsz * sizeof *gb);
        relu_grad(res_of(net, cw, n, l, i), gb, hsz);
        st = layer_back(net, params, l, prev, hwp, gb, gc, hwp, ba->grads,
                        cw, p);
        share(p, net->hid, 1, &c0, &c1);
        for (size_t q = c0 * hwp; q < c1 * hwp; q++)
            gout[q] = gin[q] + gc[q];  /* the skip */
    } else {
        st = layer_back(net, params, l, prev, hwp, gin, gout, hwp, ba->grads,
                        cw, p);
    }
    if (st == FLOW_OK && (!net->residual || l == 1)) {
        share(p, net->hid, 1, &c0, &c1);
        relu_grad(prev + c0 * hwp, gout + c0 * hwp, (c1 - c0) * hwp);
    }
    return st;
}

/* ------------------------------------------------------------ the passes */

int conv_fwd_serial(const conv_net *net, const flow_real *params, size_t n,
                    flow_real *y, const conv_ws *cw)
{
    int st = FLOW_OK;
    for (size_t i = 0; i < n && st == FLOW_OK; i++)
        for (size_t l = 0; l < net->n_layers && st == FLOW_OK; l++)
            st = conv_fwd_layer(net, params, cw, n, l, i, y, WHOLE);
    return st;
}

int conv_net_forward(const conv_net *net, const flow_real *params, size_t n,
                     const flow_real *x, const flow_real *ctx, flow_real *y,
                     void *ws)
{
    conv_head *hd = ws;
    conv_ws cw;
    int st = FLOW_OK;
    if (!net || !params || !x || !y || !ws || (net->ctx && !ctx) ||
        (uintptr_t)ws % sizeof(double) != 0)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    carve(net, n, ws, &cw);
    hd->magic = 0;
    hd->n = n;
    memcpy(cw.x, x, n * net->c * net->hw * sizeof *x);
    if (net->ctx)
        memcpy(cw.cx, ctx, n * net->ctx * sizeof *ctx);
    conv_clear_shift(net, &cw, 0);
    if ((st = conv_fwd_run(net, params, n, y, &cw)) != FLOW_OK)
        return st;
    hd->magic = CONV_MAGIC;
    return FLOW_OK;
}

/* dW and db of every layer to their transposed scratch (cin k k + 1 rows
 * of coutp, the padding columns 0) before the images, back after: exact
 * copies, so the images' products are added to dparams one after the
 * other in row order, the same bits whichever calls the rows are split
 * into. */
static void dwt_load(const conv_net *net, const flow_real *dparams,
                     flow_real *dwt)
{
    if (net->shiftw) {
        const conv_layer *ly = &net->layer[net->n_layers - 1];
        const size_t kk = ly->k * ly->k, hid = ly->cin;
        flow_real *t = dwt + net->s_off, *tb = t + kk * ly->cout * hid;
        for (size_t q = 0; q < kk; q++)
            for (size_t o = 0; o < ly->cout; o++)
                for (size_t c = 0; c < hid; c++)
                    t[(q * ly->cout + o) * hid + c] =
                        dparams[ly->w_off + (o * hid + c) * kk + q];
        for (size_t o = 0; o < ly->cout; o++)
            for (size_t j = 0; j < 8; j++)
                tb[o * 8 + j] = dparams[ly->b_off + o];
    }
    for (size_t l = 0; l < net->n_layers; l++) {
        const conv_layer *ly = &net->layer[l];
        const size_t ck = ly->cin * ly->k * ly->k, cp = ly->coutp;
        flow_real *t = dwt + ly->t_off;
        for (size_t j = 0; j < ck; j++)
            for (size_t o = 0; o < cp; o++)
                t[j * cp + o] = o < ly->cout
                                    ? dparams[ly->w_off + o * ck + j] : 0;
        for (size_t o = 0; o < cp; o++)
            t[ck * cp + o] = o < ly->cout ? dparams[ly->b_off + o] : 0;
    }
}

static void dwt_store(const conv_net *net, const flow_real *dwt,
                      flow_real *dparams)
{
    for (size_t l = 0; l + (net->shiftw ? 1 : 0) < net->n_layers; l++) {
        const conv_layer *ly = &net->layer[l];
        const size_t ck = ly->cin * ly->k * ly->k, cp = ly->coutp;
        const flow_real *t = dwt + ly->t_off;
        for (size_t o = 0; o < ly->cout; o++)
            for (size_t j = 0; j < ck; j++)
                dparams[ly->w_off + o * ck + j] = t[j * cp + o];
        for (size_t o = 0; o < ly->cout; o++)
            dparams[ly->b_off + o] = t[ck * cp + o];
    }
    if (net->shiftw) {
        const conv_layer *ly = &net->layer[net->n_layers - 1];
        const size_t kk = ly->k * ly->k, hid = ly->cin;
        const flow_real *t = dwt + net->s_off, *tb = t + kk * ly->cout * hid;
        for (size_t q = 0; q < kk; q++)
            for (size_t o = 0; o < ly->cout; o++)
                for (size_t c = 0; c < hid; c++)
                    dparams[ly->w_off + (o * hid + c) * kk + q] =
                        t[(q * ly->cout + o) * hid + c];
        for (size_t o = 0; o < ly->cout; o++)
            dparams[ly->b_off + o] = tb[o * 8];
    }
}

/* Image by image, from the output down: the per-image order keeps every
 * product's operands in cache (the tape of one image, hid x hwp), and
 * the parameter gradient sums the images in row order, whatever the
 * batch. */
int conv_back_serial(const conv_net *net, const flow_real *params,
                     size_t n, const conv_back_args *ba, const conv_ws *cw)
{
    int st = FLOW_OK;
    for (size_t i = 0; i < n && st == FLOW_OK; i++) {
        /* with residual stages the gradient is summed in place */
        flow_real *gi = cw->g[0], *go = net->residual ? cw->g[0] : cw->g[2];
        for (size_t l = net->n_layers; l-- > 0 && st == FLOW_OK;) {
            flow_real *tmp = gi;
            st = conv_back_layer(net, params, n, cw, l, i, ba, gi, go, WHOLE);
            gi = go;
            go = tmp;
        }
    }
    return st;
}

/* The tape's check, the scratch of the whole call (flipped kernels, dW
 * and db transposed, rows of ones), then the pass image by image or with
 * the channel split (the same sums). */
int conv_net_backward(const conv_net *net, const flow_real *params,
                      size_t n, void *ws, const flow_real *dy,
                      flow_real *dx, flow_real *dctx, flow_real *dparams)
{
    const conv_head *hd = ws;
    conv_back_args ba;
    conv_ws cw;
    int st = FLOW_OK;
    if (!net || !params || !dy || !ws || (uintptr_t)ws % sizeof(double))
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    if (hd->magic != CONV_MAGIC || hd->n != n)
        return FLOW_ERR_INVAL;    /* no matching forward on this ws */
    ba = (conv_back_args){dy, dx, dctx, dparams != NULL,
                     dx || (dctx && net->ctx)};
    if (!ba.want_in && !ba.grads)
        return FLOW_OK;
    carve(net, n, ws, &cw);
    for (size_t l = 0; l < net->n_layers; l++) {
        const conv_layer *ly = &net->layer[l];
        if (ly->flip)
            conv_flip(ly->cin, ly->cout, ly->k, params + ly->w_off,
                      cw.wf + ly->f_off);
    }
    if (ba.grads) {
        dwt_load(net, dparams, cw.dwt);
        for (size_t q = 0; q < net->hwp; q++)
            cw.ones[q] = q < net->hw ? 1 : 0;
    }
    if (ba.grads && net->shift) {
        const size_t pk = net->k / 2;
        for (size_t u = 0; u < net->ns; u++)
            cw.onesp[u] = u < net->h * net->wp && u % net->wp >= pk &&
                                  u % net->wp < pk + net->w ? 1 : 0;
        if (net->shiftw)
            for (size_t u = 0; u < net->ns * 8; u++)
                cw.ones8[u] = cw.onesp[u / 8];
        conv_clear_shift(net, &cw, 1);
    }
    st = conv_back_run(net, params, n, &ba, &cw);
    if (ba.grads)
        dwt_store(net, cw.dwt, dparams);
    return st;
}

/* ------------------------------------------------------------ export */

int conv_net_export(const conv_net *net, const flow_real *params,
                    const char *prefix, const char *output_layout,
                    flow_export *ex)
{
    json_buf b;
    char name[256];
    int rc = FLOW_OK;
    if (!net || !params || !prefix || !ex)
        return FLOW_ERR_INVAL;
    for (size_t l = 0; l < net->n_layers && rc == FLOW_OK; l++) {
        const conv_layer *ly = &net->layer[l];
        size_t shape[4] = {ly->cout, ly->cin, ly->k, ly->k};
        snprintf(name, sizeof name, "%s.%zu.weight", prefix, l);
        rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 4, shape,
                        params + ly->w_off);
        if (rc != FLOW_OK)
            break;
        snprintf(name, sizeof name, "%s.%zu.bias", prefix, l);
        rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 1, shape,
                        params + ly->b_off);
    }
    if (rc != FLOW_OK)
        return rc;
    json_buf_init(&b);
    json_buf_printf(&b, "{\"kind\": \"conv\", \"activation\": \"relu\", "
                    "\"layout\": \"NCHW\", \"channels\": %zu, \"height\": "
                    "%zu, \"width\": %zu, \"context\": %zu, "
                    "\"context_mode\": \"constant channels after the "
                    "input's\", \"hidden_channels\": %zu, \"kernel\": %zu, "
                    "\"padding\": %zu, \"padding_mode\": \"zeros\", "
                    "\"stride\": 1, \"blocks\": %zu, \"block_kernel\": 1, "
                    "\"residual\": %s, \"out_channels\": %zu, \"layers\": "
                    "%zu, \"in\": %zu, \"out\": %zu", net->c, net->h, net->w,
                    net->ctx, net->hid, net->k, net->k / 2, net->blocks,
                    net->residual ? "true" : "false", net->cout,
                    net->n_layers, net->c * net->hw, net->cout * net->hw);
    return nn_export_describe(&b, prefix, output_layout, ex);
}
