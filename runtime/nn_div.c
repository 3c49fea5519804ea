/* nn_div.c - the divergence of an MLP for continuous flows: its exact or
 * Hutchinson trace with the tangents stacked, forward and backward. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "matrix.h"
#include "nn_impl.h"
#include "tgemm.h"

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
 * tgemm (runtime/tgemm.c, any width) when the CPU has AVX2 + FMA, else to
 * blas_gemm.
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
    if (!params || !x || !y || !tape || !scratch ||
        (uintptr_t)tape % sizeof(double) != 0 ||
        (uintptr_t)scratch % sizeof(double) != 0)
        return FLOW_ERR_INVAL;
    if (n == 0)
        return FLOW_OK;
    D = net->y_width;
    /* no trace asked for: no tangent blocks (y from the primal rows'
     * own products, as with them), and a tape the backward refuses */
    if (!tr)
        eps = NULL;
    B = !tr ? 0 : eps ? 1 : D;
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
        if (!tr)
            return FLOW_OK;
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
