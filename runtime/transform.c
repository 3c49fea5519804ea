/* transform.c - elementwise transformers: affine (soft-clamped exp or
 * Glow's sigmoid scale), additive, and the rational-quadratic spline of
 * Durkan et al. 2019. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "transform.h"
#include "vec.h"

/* ------------------------------------------------------------ config */

int tf_resolve(const flow_tf *tf, tf_cfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    if (!tf || tf->struct_size < sizeof(flow_tf))
        return FLOW_ERR_INVAL;
    cfg->kind = tf->kind;
    switch (tf->kind) {
    case FLOW_TF_AFFINE:
    case FLOW_TF_AFFINE_SIGMOID:
        cfg->n_theta = 2;
        return FLOW_OK;
    case FLOW_TF_ADDITIVE:
        cfg->n_theta = 1;
        return FLOW_OK;
    case FLOW_TF_SPLINE:
        break;
    default:
        return FLOW_ERR_INVAL;
    }
    cfg->bins = tf->bins ? tf->bins : TF_DEFAULT_BINS;
    cfg->bound = tf->bound != 0 ? tf->bound : TF_DEFAULT_BOUND;
    cfg->min_w = tf->min_width != 0 ? tf->min_width : TF_DEFAULT_MIN;
    cfg->min_h = tf->min_height != 0 ? tf->min_height : TF_DEFAULT_MIN;
    cfg->min_d = tf->min_deriv != 0 ? tf->min_deriv : TF_DEFAULT_MIN;
    if (cfg->bins > TF_MAX_BINS || !(cfg->bound > 0) || !isfinite(cfg->bound)
        || !(cfg->min_w > 0) || cfg->min_w * (double)cfg->bins >= 1 ||
        !(cfg->min_h > 0) || cfg->min_h * (double)cfg->bins >= 1 ||
        !(cfg->min_d > 0) || cfg->min_d >= 1)
        return FLOW_ERR_INVAL;
    cfg->d_shift = log(expm1(1.0 - cfg->min_d));
    cfg->n_theta = 3 * cfg->bins - 1;
    return FLOW_OK;
}

size_t tf_params(const flow_tf *tf)
{
    tf_cfg c;
    return tf_resolve(tf, &c) == FLOW_OK ? c.n_theta : 0;
}

/* ------------------------------------------------------------ affine */

/* y = x exp(l) + t with l = C tanh(s / C): a smooth clamp of the log
 * scale to (-C, C), equal to s near 0 (so s = 0 is the identity), with
 * bounded log-det and gradients and no overflow for any s. */
static void affine_scale(double s, double *l, double *dl)
{
    double th = tanh(s / TF_AFFINE_CLAMP);
    *l = TF_AFFINE_CLAMP * th;
    *dl = 1 - th * th;
}

/* Glow's scale sigma(s + 2) (Kingma & Dhariwal 2018, the official code's
 * `scale = sigmoid(h + 2.)`) with a floor m: scale = m + (1 - m) sigma(a),
 * a = s + 2, in (m, 1), m = e^-5.  Without it a conditioner output far
 * below 0 contracts by e^a, which float cannot invert (the inverse
 * overflows at a = -88); nflows' affine coupling floors it likewise
 * (sigmoid(s + 2) + 1e-3), and e^-5 is the exp scale's own bound, so both
 * kinds contract at most as much (1e-3 still failed `flowkit check maf`'s
 * round trip at its +-150 edge rows).  sigma(a) and 1 - sigma(a) =
 * sigma(-a) come from the one e = exp(-|a|) without overflow or
 * cancellation; l = log scale (its argument is at least m), dl/ds = (1 -
 * m) sigma(a) (1 - sigma(a)) / scale. */
static void sigmoid_scale(double s, double *l, double *dl, double *sc)
{
    const double m = TF_SIGMOID_MIN;
    double a = s + TF_SIGMOID_SHIFT, e = exp(-fabs(a));
    double sig = a >= 0 ? 1 / (1 + e) : e / (1 + e);
    double om = a >= 0 ? e / (1 + e) : 1 / (1 + e);
    *sc = m + (1 - m) * sig;
    *l = log(*sc);
    *dl = (1 - m) * sig * om / *sc;
}

/* Both affine kinds as y = x * scale + t with scale = e^l: l, dl/ds and
 * the scale of direction dir (scale for dir 0, 1 / scale for dir 1). */
static void affine_any(flow_tf_kind kind, int dir, double s, double *l,
                       double *dl, double *scale)
{
    double sc;
    if (kind == FLOW_TF_AFFINE_SIGMOID) {
        sigmoid_scale(s, l, dl, &sc);
        *scale = dir ? 1 / sc : sc;
    } else {
        affine_scale(s, l, dl);
        *scale = exp(dir ? -*l : *l);
    }
}

/* ------------------------------------------------------------ spline */

typedef struct knots {
    size_t k;                          /* bins */
    double pw[TF_MAX_BINS], ph[TF_MAX_BINS];     /* softmax probabilities */
    double xk[TF_MAX_BINS + 1], yk[TF_MAX_BINS + 1];
    const double *td;                  /* derivative params (K - 1) */
    double min_d, shift;
} knots;

static void softmax(const double *v, size_t k, double *p)
{
    double mx = v[0], s = 0;
    for (size_t i = 1; i < k; i++)
        mx = v[i] > mx ? v[i] : mx;
    for (size_t i = 0; i < k; i++)
        s += p[i] = exp(v[i] - mx);
    s = 1 / s;
    for (size_t i = 0; i < k; i++)
        p[i] *= s;
}

/* Knots of one scalar's spline.  theta = (K width logits, K height
 * logits, K-1 interior derivative params).  Bin widths are min_w + (1 -
 * K min_w) softmax(.) of 2B (Durkan et al. 2019, sec. 3.1 and their code),
 * heights likewise; interior derivatives min_d + softplus(theta + shift),
 * the two boundary derivatives 1 to match the linear tails. */
static void make_knots(const tf_cfg *c, const double *theta, knots *kn)
{
    size_t k = c->bins;
    double b = c->bound, cw = 1 - (double)k * c->min_w;
    double ch = 1 - (double)k * c->min_h;
    kn->k = k;
    softmax(theta, k, kn->pw);
    softmax(theta + k, k, kn->ph);
    kn->xk[0] = kn->yk[0] = -b;
    for (size_t i = 0; i < k; i++) {
        kn->xk[i + 1] = kn->xk[i] + 2 * b * (c->min_w + cw * kn->pw[i]);
        kn->yk[i + 1] = kn->yk[i] + 2 * b * (c->min_h + ch * kn->ph[i]);
    }
    kn->xk[k] = kn->yk[k] = b;           /* exact despite rounding */
    kn->td = theta + 2 * k;
    kn->min_d = c->min_d;
    kn->shift = c->d_shift;
}

/* Derivative at knot i and its derivative in the raw parameter, computed
 * only for the two knots of the bin in use (a third of the work):
 * softplus(z) = max(z, 0) + log1p(e) and sigmoid(z) = 1 / (1 + e) or
 * e / (1 + e) from the one e = exp(-|z|). */
static double knot_deriv(const knots *kn, size_t i, double *dsig)
{
    double z, e;
    if (i == 0 || i == kn->k) {
        if (dsig)
            *dsig = 0;
        return 1;
    }
    z = kn->td[i - 1] + kn->shift;
    e = exp(-fabs(z));
    if (dsig)
        *dsig = z >= 0 ? 1 / (1 + e) : e / (1 + e);
    return kn->min_d + (z > 0 ? z : 0) + log1p(e);
}

/* Bin of v among the knots q[0..k]: largest i < k with q[i] <= v. */
static size_t find_bin(const double *q, size_t k, double v)
{
    size_t lo = 0, hi = k;           /* q[lo] <= v < q[hi] (clamped) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (q[mid] <= v)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Value, log-derivative and partials of the RQ map inside a bin of width
 * W at xi.  Local inputs are, in order, X (left knot), W (bin width), Y, H,
 * d0, d1; py[] and pl[] receive dy/d(local) and dlad/d(local), *dydx and
 * *dldx the derivatives in x. */
typedef struct rq_out {
    double y, lad, dydx, dldx;
    double py[6], pl[6];
    double ds[2];               /* d(d0)/d(raw), d(d1)/d(raw) (rq_at) */
} rq_out;

static void rq_local(double W, double Y, double H,
                     double d0, double d1, double xi, rq_out *o)
{
    /* (o->lad is not set: rq_value has it; VJPs need only partials) */
    double s = H / W, om = xi * (1 - xi), e = d0 + d1 - 2 * s;
    /* Durkan et al. 2019, eq. 4: y = Y + H (s xi^2 + d0 xi(1-xi)) / den */
    double a = s * xi * xi + d0 * om;
    double den = s + e * om;
    /* eq. 5: dy/dx = s^2 (d1 xi^2 + 2 s xi(1-xi) + d0 (1-xi)^2) / den^2 */
    double nn = d1 * xi * xi + 2 * s * om + d0 * (1 - xi) * (1 - xi);
    double den2 = den * den;
    double a_xi = 2 * s * xi + d0 * (1 - 2 * xi), den_xi = e * (1 - 2 * xi);
    double nn_xi = 2 * d1 * xi + 2 * s * (1 - 2 * xi) - 2 * d0 * (1 - xi);
    double den_s = 1 - 2 * om;
    double y_xi = H * (a_xi * den - a * den_xi) / den2;
    double y_s = H * (xi * xi * den - a * den_s) / den2;
    double y_d0 = H * (om * den - a * om) / den2;
    double y_d1 = -H * a * om / den2;
    double l_xi = nn_xi / nn - 2 * den_xi / den;
    double l_s = 2 / s + 2 * om / nn - 2 * den_s / den;
    double l_d0 = (1 - xi) * (1 - xi) / nn - 2 * om / den;
    double l_d1 = xi * xi / nn - 2 * om / den;
    o->y = Y + H * a / den;
    o->lad = 0;
    o->dydx = s * s * nn / den2;
    o->dldx = l_xi / W;
    /* chain: xi = (x - X) / W, s = H / W */
    o->py[0] = -y_xi / W;
    o->py[1] = -y_xi * xi / W - y_s * s / W;
    o->py[2] = 1;
    o->py[3] = a / den + y_s / W;
    o->py[4] = y_d0;
    o->py[5] = y_d1;
    o->pl[0] = -l_xi / W;
    o->pl[1] = -l_xi * xi / W - l_s * s / W;
    o->pl[2] = 0;
    o->pl[3] = l_s / W;
    o->pl[4] = l_d0;
    o->pl[5] = l_d1;
}

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

/* Value and log-derivative only (the forward passes): eq. 4 and the log
 * of eq. 5, lad = log(s^2 nn / den^2), one log instead of three; lad NULL:
 * the value alone. */
static void rq_value(const knots *kn, size_t k, double x, double *y,
                     double *lad)
{
    double X = kn->xk[k], W = kn->xk[k + 1] - X;
    double Y = kn->yk[k], H = kn->yk[k + 1] - Y;
    double d0 = knot_deriv(kn, k, NULL), d1 = knot_deriv(kn, k + 1, NULL);
    double xi = clamp01((x - X) / W), s = H / W, om = xi * (1 - xi);
    double den = s + (d0 + d1 - 2 * s) * om;
    double nn = d1 * xi * xi + 2 * s * om + d0 * (1 - xi) * (1 - xi);
    *y = Y + H * (s * xi * xi + d0 * om) / den;
    if (lad)
        *lad = log(s * s * nn / (den * den));
}

/* Evaluates the spline in bin k at forward input x. */
static void rq_at(const knots *kn, size_t k, double x, rq_out *o)
{
    double X = kn->xk[k], W = kn->xk[k + 1] - X;
    double Y = kn->yk[k], H = kn->yk[k + 1] - Y;
    double ds0, ds1;
    double d0 = knot_deriv(kn, k, &ds0), d1 = knot_deriv(kn, k + 1, &ds1);
    rq_local(W, Y, H, d0, d1, clamp01((x - X) / W), o);
    o->ds[0] = ds0;
    o->ds[1] = ds1;
}

/* Inverse inside [-B, B]: the quadratic of Durkan et al. 2019, app. A.3
 * (a xi^2 + b xi + c = 0), root in the stable form 2c / (-b - sqrt(disc))
 * with the discriminant clamped at 0 (rounding near the bound). */
static double rq_inverse(const knots *kn, double y, size_t *bin)
{
    size_t k = find_bin(kn->yk, kn->k, y);
    double X = kn->xk[k], W = kn->xk[k + 1] - X;
    double Y = kn->yk[k], H = kn->yk[k + 1] - Y;
    double d0 = knot_deriv(kn, k, NULL), d1 = knot_deriv(kn, k + 1, NULL);
    double s = H / W, dy = y - Y;
    double e = d0 + d1 - 2 * s;
    double a = H * (s - d0) + dy * e;
    double b = H * d0 - dy * e;
    double c = -s * dy;
    double disc = b * b - 4 * a * c, den, xi;
    if (disc < 0)
        disc = 0;
    den = -b - sqrt(disc);
    xi = den != 0 ? 2 * c / den : 0;
    *bin = k;
    xi = X + clamp01(xi) * W;
    return xi < kn->xk[k + 1] ? xi : kn->xk[k + 1];   /* stay in the bin */
}

/* Scatters local gradients g[6] on (X, W, Y, H, d0, d1) of bin k to the
 * raw parameters: through the cumulative knot sums and the softmax
 * Jacobian p_j (g_j - sum_i p_i g_i), and softplus' = sigmoid. */
static void rq_scatter(const tf_cfg *c, const knots *kn, size_t k,
                       const double *g, const double ds[2], double *gtheta)
{
    size_t K = kn->k;
    double gw[TF_MAX_BINS], gh[TF_MAX_BINS], sw = 0, sh = 0;
    double cw = 2 * c->bound * (1 - (double)K * c->min_w);
    double ch = 2 * c->bound * (1 - (double)K * c->min_h);
    for (size_t j = 0; j < K; j++) {
        /* X = -B + 2B sum_{j<k} w_j, W = 2B w_k (same for Y, H) */
        gw[j] = j < k ? g[0] : j == k ? g[1] : 0;
        gh[j] = j < k ? g[2] : j == k ? g[3] : 0;
        gw[j] *= cw;
        gh[j] *= ch;
        sw += kn->pw[j] * gw[j];
        sh += kn->ph[j] * gh[j];
    }
    for (size_t j = 0; j < K; j++) {
        gtheta[j] = kn->pw[j] * (gw[j] - sw);
        gtheta[K + j] = kn->ph[j] * (gh[j] - sh);
    }
    for (size_t j = 0; j + 1 < K; j++)
        gtheta[2 * K + j] = 0;
    if (k >= 1)
        gtheta[2 * K + k - 1] += g[4] * ds[0];
    if (k + 1 <= K - 1)
        gtheta[2 * K + k] += g[5] * ds[1];
}

/* ------------------------------------------------------ scalar core */

static int inside(const tf_cfg *c, double v)
{
    return v >= -c->bound && v <= c->bound;
}

int tf_eval1(const tf_cfg *c, int dir, double in, const double *theta,
             double *out, double *lad)
{
    double l, dl, e;
    knots kn;
    size_t k;
    switch (c->kind) {
    case FLOW_TF_AFFINE:
    case FLOW_TF_AFFINE_SIGMOID:
        affine_any(c->kind, dir, theta[0], &l, &dl, &e);
        *out = dir ? (in - theta[1]) * e : in * e + theta[1];
        if (lad)
            *lad = dir ? -l : l;
        return FLOW_OK;
    case FLOW_TF_ADDITIVE:
        *out = dir ? in - theta[0] : in + theta[0];
        if (lad)
            *lad = 0;
        return FLOW_OK;
    case FLOW_TF_SPLINE:
        break;
    default:
        return FLOW_ERR_INVAL;
    }
    if (!inside(c, in)) {             /* linear tails: identity */
        *out = in;
        if (lad)
            *lad = 0;
        return FLOW_OK;
    }
    make_knots(c, theta, &kn);
    if (dir == 0) {
        k = find_bin(kn.xk, kn.k, in);
        rq_value(&kn, k, in, out, lad);
    } else {
        double x = rq_inverse(&kn, in, &k), y;
        *out = x;
        if (lad) {
            rq_value(&kn, k, x, &y, lad);
            *lad = -*lad;
        }
    }
    return FLOW_OK;
}

/* VJP core; xhint (dir 1, spline) is the known inverse or NULL. */
static int vjp_core(const tf_cfg *c, int dir, double in, const double *xhint,
                    const double *theta, double gout, double glad,
                    double *gin, double *gtheta)
{
    double l, dl, e, x, g[6];
    knots kn;
    rq_out o;
    size_t k;
    switch (c->kind) {
    case FLOW_TF_AFFINE:
    case FLOW_TF_AFFINE_SIGMOID:
        /* e = the scale e^l of the direction; dl = dl/ds */
        affine_any(c->kind, dir, theta[0], &l, &dl, &e);
        if (dir == 0) {      /* y = x e^l + t, lad = l */
            *gin = gout * e;
            gtheta[0] = (gout * in * e + glad) * dl;
            gtheta[1] = gout;
        } else {             /* x = (y - t) e^-l, lad = -l */
            x = (in - theta[1]) * e;
            *gin = gout * e;
            gtheta[0] = (-gout * x - glad) * dl;
            gtheta[1] = -gout * e;
        }
        return FLOW_OK;
    case FLOW_TF_ADDITIVE:
        *gin = gout;
        gtheta[0] = dir ? -gout : gout;
        return FLOW_OK;
    case FLOW_TF_SPLINE:
        break;
    default:
        return FLOW_ERR_INVAL;
    }
    if (!inside(c, in)) {
        *gin = gout;
        memset(gtheta, 0, c->n_theta * sizeof *gtheta);
        return FLOW_OK;
    }
    make_knots(c, theta, &kn);
    if (dir == 0) {
        k = find_bin(kn.xk, kn.k, in);
        rq_at(&kn, k, in, &o);
        *gin = gout * o.dydx + glad * o.dldx;
        for (int i = 0; i < 6; i++)
            g[i] = gout * o.py[i] + glad * o.pl[i];
    } else {
        /* x = g^-1(y), lad_inv = -lad(x):  with G = dL/dx - glad dlad/dx,
         * dL/dy = G / g'(x) and dL/dtheta = -G/g' dy/dtheta|_x - glad
         * dlad/dtheta|_x (implicit function theorem) */
        double G;
        if (xhint && inside(c, *xhint))
            x = *xhint, k = find_bin(kn.xk, kn.k, x);
        else
            x = rq_inverse(&kn, in, &k);
        rq_at(&kn, k, x, &o);
        G = gout - glad * o.dldx;
        *gin = G / o.dydx;
        for (int i = 0; i < 6; i++)
            g[i] = -G / o.dydx * o.py[i] - glad * o.pl[i];
    }
    rq_scatter(c, &kn, k, g, o.ds, gtheta);
    return FLOW_OK;
}

int tf_vjp1(const tf_cfg *c, int dir, double in, const double *theta,
            double gout, double glad, double *gin, double *gtheta)
{
    return vjp_core(c, dir, in, NULL, theta, gout, glad, gin, gtheta);
}

/* ------------------------------------------- float fast paths, lanes */

#if !FLOW_REAL_DOUBLE
/* The float transformers on vectors of doubles with GCC / Clang vector
 * extensions (GCC -O2 does not vectorise the scalar loops: the exponent
 * bits and the selects defeat it), in double with polynomial exp and log
 * to stay within about an ulp of the double core rounded
 * (docs/runtime.md).  transform_lanes.h is instantiated twice: 2 lanes
 * (SSE2's width: wider ones change the calling convention without AVX)
 * everywhere, and 8 lanes in AVX-512 functions chosen at run time.  Both
 * do the same IEEE operations per lane, so the bits do not depend on the
 * CPU, nor a scalar's on its place in the batch (a last partial group is
 * padded). */
typedef double tf_v2 __attribute__((vector_size(16)));
typedef int64_t tf_i2 __attribute__((vector_size(16)));
typedef uint64_t tf_u2 __attribute__((vector_size(16)));

static inline tf_v2 load_w2(const float *f)
{
    return (tf_v2){f[0], f[1]};
}

/* v rounded to float, stored, and read back (what was stored) */
static inline tf_v2 store_w2(float *f, tf_v2 v)
{
    f[0] = (float)v[0];
    f[1] = (float)v[1];
    return load_w2(f);
}

/* Two scalars' (s, t) split into s and t */
static inline void pairs_w2(const float *th, tf_v2 *s, tf_v2 *t)
{
    *s = (tf_v2){th[0], th[2]};
    *t = (tf_v2){th[1], th[3]};
}

static inline void tpose_w2(const float *f, size_t nt, double *tt)
{
    for (size_t q = 0; q < nt; q++) {
        tt[2 * q] = f[q];
        tt[2 * q + 1] = f[nt + q];
    }
}

static inline void untpose_w2(const double *tt, size_t nt, float *f)
{
    for (size_t q = 0; q < nt; q++) {
        f[q] = (float)tt[2 * q];
        f[nt + q] = (float)tt[2 * q + 1];
    }
}

static inline int allin_w2(tf_v2 x, double lo, double hi)
{
    tf_i2 in = (x >= (tf_v2){lo, lo}) & (x <= (tf_v2){hi, hi});
    return (in[0] & in[1]) != 0;
}

static inline int any_w2(tf_i2 m)
{
    return (m[0] | m[1]) != 0;
}

static inline tf_v2 sqrt_w2(tf_v2 x)
{
    return (tf_v2){sqrt(x[0]), sqrt(x[1])};
}

#define TN 2
#define TV tf_v2
#define TI tf_i2
#define TU tf_u2
#define TF_(name) name##_w2
#define TATTR
#define TATTR_F
#include "transform_lanes.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define TF_HAVE_W8 1
#include <immintrin.h>

#define TF_W8 __attribute__((target("avx512f,avx512vl,avx512dq,avx2")))
#define TF_W8I __attribute__((always_inline)) TF_W8
typedef double tf_v8 __attribute__((vector_size(64)));
typedef int64_t tf_i8 __attribute__((vector_size(64)));
typedef uint64_t tf_u8 __attribute__((vector_size(64)));

static inline TF_W8I tf_v8 load_w8(const float *f)
{
    return (tf_v8)_mm512_cvtps_pd(_mm256_loadu_ps(f));
}

static inline TF_W8I tf_v8 store_w8(float *f, tf_v8 v)
{
    __m256 h = _mm512_cvtpd_ps((__m512d)v);
    _mm256_storeu_ps(f, h);
    return (tf_v8)_mm512_cvtps_pd(h);
}

static inline TF_W8I void pairs_w8(const float *th, tf_v8 *s, tf_v8 *t)
{
    const __m512i ev = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    __m512d lo = _mm512_cvtps_pd(_mm256_loadu_ps(th));
    __m512d hi = _mm512_cvtps_pd(_mm256_loadu_ps(th + 8));
    *s = (tf_v8)_mm512_permutex2var_pd(lo, ev, hi);
    *t = (tf_v8)_mm512_permutex2var_pd(lo, od, hi);
}

/* The classic 8 x 8 float transpose of unpacks, shuffles and lane
 * permutes: r[j][q] becomes r[q][j]. */
static inline TF_W8I void tr8x8(__m256 *r)
{
    __m256 t[8], u[8];
    for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
        u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xee);
        u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xee);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}

/* 8 rows of nt floats transposed in blocks of 8 columns (the last
 * block's loads masked to the row), then widened: contiguous loads,
 * where a gather per column cost a third of the spline's time. */
static inline TF_W8I void tpose_w8(const float *f, size_t nt, double *tt)
{
    for (size_t q0 = 0; q0 < nt; q0 += 8) {
        __mmask8 k = nt - q0 >= 8 ? 0xff
                                  : (__mmask8)((1u << (nt - q0)) - 1);
        __m256 r[8];
        for (int j = 0; j < 8; j++)
            r[j] = _mm256_maskz_loadu_ps(k, f + j * nt + q0);
        tr8x8(r);
        for (size_t q = q0; q < nt && q < q0 + 8; q++)
            _mm512_store_pd(tt + q * 8, _mm512_cvtps_pd(r[q - q0]));
    }
}

/* its inverse, rounding to float */
static inline TF_W8I void untpose_w8(const double *tt, size_t nt, float *f)
{
    for (size_t q0 = 0; q0 < nt; q0 += 8) {
        __mmask8 k = nt - q0 >= 8 ? 0xff
                                  : (__mmask8)((1u << (nt - q0)) - 1);
        __m256 r[8];
        for (size_t q = q0; q < q0 + 8; q++)
            r[q - q0] = q < nt ? _mm512_cvtpd_ps(_mm512_load_pd(tt + q * 8))
                               : _mm256_setzero_ps();
        tr8x8(r);
        for (int j = 0; j < 8; j++)
            _mm256_mask_storeu_ps(f + j * nt + q0, k, r[j]);
    }
}

static inline TF_W8I int allin_w8(tf_v8 x, double lo, double hi)
{
    __mmask8 a = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(lo),
                                    _CMP_GE_OQ);
    __mmask8 b = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(hi),
                                    _CMP_LE_OQ);
    return (a & b) == 0xff;
}

static inline TF_W8I int any_w8(tf_i8 m)
{
    return _mm512_test_epi64_mask((__m512i)m, (__m512i)m) != 0;
}

static inline TF_W8I tf_v8 sqrt_w8(tf_v8 x)
{
    return (tf_v8)_mm512_sqrt_pd((__m512d)x);
}

#define TN 8
#define TV tf_v8
#define TI tf_i8
#define TU tf_u8
#define TF_(name) name##_w8
#define TATTR TF_W8I
#define TATTR_F TF_W8
#include "transform_lanes.h"
#endif

/* 8 when the CPU has AVX-512 (F, VL, DQ), else 2; tf_lanes' force */
static int lanes_force;

static int lanes_now(void)
{
#ifdef TF_HAVE_W8
    static int w8 = -1;
    if (w8 < 0) {
        __builtin_cpu_init();
        w8 = __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
    }
    if (w8 && lanes_force != 2)
        return 8;
#endif
    return 2;
}

int tf_lanes(int force)
{
    lanes_force = force;
    return lanes_now();
}

static int affine_eval_f(int sig, int dir, size_t m, const float *in,
                         const float *theta, float *out, float *lad)
{
#ifdef TF_HAVE_W8
    if (lanes_now() == 8)
        return affine_eval_f_w8(sig, dir, m, in, theta, out, lad);
#endif
    return affine_eval_f_w2(sig, dir, m, in, theta, out, lad);
}

static int affine_vjp_f(int sig, int dir, size_t m, const float *in,
                        const float *theta, const float *gout,
                        const float *glad, float *gin, float *gtheta)
{
#ifdef TF_HAVE_W8
    if (lanes_now() == 8)
        return affine_vjp_f_w8(sig, dir, m, in, theta, gout, glad, gin,
                               gtheta);
#endif
    return affine_vjp_f_w2(sig, dir, m, in, theta, gout, glad, gin, gtheta);
}
#endif

#if FLOW_REAL_DOUBLE
int tf_lanes(int force)
{
    (void)force;
    return 1;
}
#endif

/* ------------------------------------------------------ batch calls */

static void load_theta(const flow_real *src, size_t p, double *dst)
{
    for (size_t i = 0; i < p; i++)
        dst[i] = (double)src[i];
}

/* Scalar i on the double core: FLOW_ERR_NUMERIC where a finite input
 * gives a non-finite output or log-det. */
static int eval_row(const tf_cfg *c, int dir, const flow_real *in,
                    const flow_real *theta, flow_real *out, flow_real *lad,
                    size_t i)
{
    double th[3 * TF_MAX_BINS], o, l = 0, v = (double)in[i];
    load_theta(theta + i * c->n_theta, c->n_theta, th);
    tf_eval1(c, dir, v, th, &o, lad ? &l : NULL);
    out[i] = (flow_real)o;          /* may be in[i]: v is the input */
    if (lad)
        lad[i] = (flow_real)l;
    return isfinite(v) && !(isfinite(o) && isfinite(l)) ? FLOW_ERR_NUMERIC
                                                        : FLOW_OK;
}

#if !FLOW_REAL_DOUBLE
/* the lanes path's way back to eval_row for the scalars it rejects */
typedef struct eval_ctx {
    const tf_cfg *c;
    int dir;
    const float *in, *theta;
    float *out, *lad;
} eval_ctx;

static int eval_redo(void *ctx, size_t i)
{
    const eval_ctx *x = ctx;
    return eval_row(x->c, x->dir, x->in, x->theta, x->out, x->lad, i);
}
#endif

static int eval_batch(const flow_tf *tf, int dir, size_t m,
                      const flow_real *in, const flow_real *theta,
                      flow_real *out, flow_real *lad)
{
    tf_cfg c;
    int st = FLOW_OK;
    if (tf_resolve(tf, &c) != FLOW_OK)
        return FLOW_ERR_INVAL;
    if (m && (!in || !theta || !out))
        return FLOW_ERR_INVAL;
#if !FLOW_REAL_DOUBLE
    /* specialised per kind: the kind is a constant inside each call */
    if (c.kind == FLOW_TF_AFFINE)
        return affine_eval_f(0, dir, m, in, theta, out, lad);
    if (c.kind == FLOW_TF_AFFINE_SIGMOID)
        return affine_eval_f(1, dir, m, in, theta, out, lad);
    if (c.kind == FLOW_TF_SPLINE) {
        eval_ctx x = {&c, dir, in, theta, out, lad};
#ifdef TF_HAVE_W8
        if (lanes_now() == 8)
            return spline_eval_f_w8(&c, dir, m, in, theta, out, lad,
                                    eval_redo, &x);
#endif
        return spline_eval_f_w2(&c, dir, m, in, theta, out, lad, eval_redo,
                                &x);
    }
#endif
    for (size_t i = 0; i < m; i++)
        if (eval_row(&c, dir, in, theta, out, lad, i) != FLOW_OK)
            st = FLOW_ERR_NUMERIC;
    return st;
}

int tf_forward(const flow_tf *tf, size_t m, const flow_real *x,
               const flow_real *theta, flow_real *y, flow_real *lad)
{
    return eval_batch(tf, 0, m, x, theta, y, lad);
}

int tf_inverse(const flow_tf *tf, size_t m, const flow_real *y,
               const flow_real *theta, flow_real *x, flow_real *lad)
{
    return eval_batch(tf, 1, m, y, theta, x, lad);
}

/* VJP of scalar i on the double core: FLOW_ERR_NUMERIC where a finite
 * dL/dout gives a non-finite dL/din. */
static int vjp_row(const tf_cfg *c, int dir, const flow_real *in,
                   const flow_real *xhint, const flow_real *theta,
                   const flow_real *gout, const flow_real *glad,
                   flow_real *gin, flow_real *gtheta, size_t i)
{
    double th[3 * TF_MAX_BINS], gt[3 * TF_MAX_BINS], gi, xh;
    double g = (double)gout[i];       /* gin[i] may be gout[i] */
    load_theta(theta + i * c->n_theta, c->n_theta, th);
    if (xhint)
        xh = (double)xhint[i];
    vjp_core(c, dir, (double)in[i], xhint ? &xh : NULL, th, g,
             glad ? (double)glad[i] : 0.0, &gi, gt);
    if (gin)
        gin[i] = (flow_real)gi;
    if (gtheta)
        for (size_t j = 0; j < c->n_theta; j++)
            gtheta[i * c->n_theta + j] = (flow_real)gt[j];
    return !isfinite(gi) && isfinite(g) ? FLOW_ERR_NUMERIC : FLOW_OK;
}

#if !FLOW_REAL_DOUBLE
typedef struct vjp_ctx {
    const tf_cfg *c;
    int dir;
    const float *in, *xhint, *theta, *gout, *glad;
    float *gin, *gtheta;
} vjp_ctx;

static int vjp_redo(void *ctx, size_t i)
{
    const vjp_ctx *x = ctx;
    return vjp_row(x->c, x->dir, x->in, x->xhint, x->theta, x->gout,
                   x->glad, x->gin, x->gtheta, i);
}
#endif

static int vjp_batch(const flow_tf *tf, int dir, size_t m,
                     const flow_real *in, const flow_real *xhint,
                     const flow_real *theta, const flow_real *gout,
                     const flow_real *glad, flow_real *gin,
                     flow_real *gtheta)
{
    tf_cfg c;
    int st = FLOW_OK;
    if (tf_resolve(tf, &c) != FLOW_OK)
        return FLOW_ERR_INVAL;
    if (m && (!in || !theta || !gout))
        return FLOW_ERR_INVAL;
#if !FLOW_REAL_DOUBLE
    if (c.kind == FLOW_TF_AFFINE)
        return affine_vjp_f(0, dir, m, in, theta, gout, glad, gin, gtheta);
    if (c.kind == FLOW_TF_AFFINE_SIGMOID)
        return affine_vjp_f(1, dir, m, in, theta, gout, glad, gin, gtheta);
    if (c.kind == FLOW_TF_SPLINE) {
        vjp_ctx x = {&c, dir, in, xhint, theta, gout, glad, gin, gtheta};
#ifdef TF_HAVE_W8
        if (lanes_now() == 8)
            return spline_vjp_f_w8(&c, dir, m, in, xhint, theta, gout, glad,
                                   gin, gtheta, vjp_redo, &x);
#endif
        return spline_vjp_f_w2(&c, dir, m, in, xhint, theta, gout, glad,
                               gin, gtheta, vjp_redo, &x);
    }
#endif
    for (size_t i = 0; i < m; i++)
        if (vjp_row(&c, dir, in, xhint, theta, gout, glad, gin, gtheta, i)
            != FLOW_OK)
            st = FLOW_ERR_NUMERIC;
    return st;
}

int tf_backward(const flow_tf *tf, size_t m, const flow_real *x,
                const flow_real *theta, const flow_real *dy,
                const flow_real *dlad, flow_real *dx, flow_real *dtheta)
{
    return vjp_batch(tf, 0, m, x, NULL, theta, dy, dlad, dx, dtheta);
}

int tf_inverse_backward(const flow_tf *tf, size_t m, const flow_real *y,
                        const flow_real *x, const flow_real *theta,
                        const flow_real *dx, const flow_real *dlad,
                        flow_real *dy, flow_real *dtheta)
{
    return vjp_batch(tf, 1, m, y, x, theta, dx, dlad, dy, dtheta);
}
