/* transform_lanes.h - internal to transform.c: the float transformers
 * (affine kinds, RQ spline) on TN double lanes, included once per width. */

/* The includer defines, for one width: TN (lanes), TV / TI / TU (TN
 * doubles, int64, uint64 in GCC / Clang vector extensions), TF_(name)
 * (the name with the width appended), TATTR (inline + target
 * attributes), TATTR_F (the same for the out-of-line entry points), and
 * the memory / ISA helpers TF_(load) (TN floats widened), TF_(store)
 * (rounded to float, stored, read back), TF_(pairs) (TN interleaved (s,
 * t) pairs split), TF_(tpose) (TN rows of nt floats transposed and
 * widened, tt[q * TN + j] = row j's q), TF_(untpose) (its inverse,
 * rounding to float), TF_(allin) (every lane in [lo, hi], NaN not),
 * TF_(any) (some lane -1) and TF_(sqrt).  Every operation below is one
 * IEEE operation on each lane in the scalar code's order (the build has
 * no FMA contraction: -std=c11), so every width gives the same bits.
 * The width's macros are undefined at the end, ready for the next. */

static inline TATTR TV TF_(bc)(double c)
{
    TV v;
    for (int j = 0; j < TN; j++)
        v[j] = c;
    return v;
}

static inline TATTR TU TF_(bcu)(uint64_t c)
{
    TU v;
    for (int j = 0; j < TN; j++)
        v[j] = c;
    return v;
}

/* m ? a : b lane by lane (m from a comparison: -1 or 0) */
static inline TATTR TV TF_(sel)(TI m, TV a, TV b)
{
    return (TV)(((TI)a & m) | ((TI)b & ~m));
}

/* lanes where v is finite once rounded to float (|v| below FLT_MAX plus
 * half an ulp, 0x1.ffffffp127; false for NaN): -1, else 0.  On the
 * double, not on what was stored: GCC 12 -O2 forwarded the unrounded
 * double through a float store and read back, so a product over FLT_MAX
 * stored as inf read back finite and went unreported. */
static inline TATTR TI TF_(fin)(TV v)
{
    const TV lim = TF_(bc)(0x1.ffffffp127);
    return (v < lim) & (v > -lim);
}

static inline TATTR TV TF_(load_d)(const double *p)
{
    TV v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline TATTR void TF_(store_d)(double *p, TV v)
{
    memcpy(p, &v, sizeof v);
}

/* ---------------------------------------- affine: polynomial exp, log */

/* e^x for |x| <= 709 without libm, in double to keep the float result
 * within about an ulp of the double core (the log scale's error is
 * amplified by |l| <= C in e^l): x = k ln 2 + r with k = round(x / ln 2)
 * (adding 1.5 * 2^52 rounds to nearest) and ln 2 split in a part exact in
 * 32 bits and the rest (Cody & Waite 1980, ch. 6), |r| <= ln(2) / 2; e^r
 * by its Taylor polynomial of degree 7 (remainder < 0.35^8 / 8! = 5.5e-9
 * relative, a tenth of float's ulp) in Estrin's order (a shallower
 * dependency chain than Horner's), then 2^k set in the exponent bits (k
 * read off the low bits of x / ln 2 + 1.5 * 2^52: SSE2 has no packed
 * double-to-int64 conversion).  For |x| within [-708, 709]. */
static inline TATTR TV TF_(exp_core)(TV x)
{
    const TV big = TF_(bc)(6755399441055744.0);
    TV kb = x * 1.4426950408889634 + big, k = kb - big;
    TV r = (x - k * 0.693147180369123816) - k * 1.90821492927058770e-10;
    TV r2 = r * r, r4 = r2 * r2;
    TV p = ((1.0 + r) + (0.5 + r * (1.0 / 6)) * r2) +
           (((1.0 / 24) + r * (1.0 / 120)) +
            ((1.0 / 720) + r * (1.0 / 5040)) * r2) * r4;
    TU e = ((TU)kb - (TU)big + 1023) << 52;
    return p * (TV)e;
}

/* Defined for every x: the polynomial runs on x clamped to [-708, 709]
 * (so 2^k is a normal double's exponent, in unsigned arithmetic) with NaN
 * replaced by 0, and the lanes outside come back as e^x rounded for
 * float: 0 below, +inf above (-inf and +inf included), NaN for NaN. */
static TATTR_F TV TF_(exp_wide)(TV x)
{
    const TV lo = TF_(bc)(-708.0), hi = TF_(bc)(709.0);
    const TV zero = TF_(bc)(0.0), inf = TF_(bc)(INFINITY);
    TI nan = x != x, under = x < lo, over = x > hi;
    TV xc = TF_(sel)(over, hi, TF_(sel)(under | nan,
                                        TF_(sel)(nan, zero, lo), x));
    TV y = TF_(exp_core)(xc);
    y = TF_(sel)(over, inf, TF_(sel)(under, zero, y));
    return TF_(sel)(nan, x, y);
}

/* Lanes out of range or NaN (rare: the affine scales are bounded) take
 * the clamped path; the test of all lanes at once is what the common
 * case pays (the clamps and selects on every call cost maf64's
 * log-density 12%, bench/README.md). */
static inline TATTR TV TF_(exp)(TV x)
{
    if (__builtin_expect(TF_(allin)(x, -708.0, 709.0), 1))
        return TF_(exp_core)(x);
    return TF_(exp_wide)(x);
}

/* tanh(u) = (e^{2u} - 1) / (e^{2u} + 1) for u clamped to [-9, 9] (tanh(9)
 * is 1 in float); near 0 the subtraction leaves an absolute error of about
 * 3e-9, far below what the float log scale C tanh(s / C) resolves. */
static inline TATTR TV TF_(tanh)(TV u)
{
    const TV c = TF_(bc)(9.0);
    TV e;
    u = TF_(sel)(u > c, c, u);
    u = TF_(sel)(u < -c, -c, u);
    e = TF_(exp)(2.0 * u);
    return (e - 1.0) / (e + 1.0);
}

/* x = 2^k f with f in [sqrt(1/2), sqrt(2)) read off the bits of a
 * positive normal x (k through the 2^52 trick, as in exp_core), and u =
 * (f - 1) / (f + 1), |u| <= 0.1716, with log x = k ln 2 + 2 atanh(u). */
static inline TATTR void TF_(log_split)(TV x, TV *k, TV *u)
{
    const TU mant = TF_(bcu)(0x000fffffffffffffull);
    const TU one = TF_(bcu)(0x3ff0000000000000ull);
    const TU magic = TF_(bcu)(0x4330000000000000ull);
    const TV sqrt2 = TF_(bc)(1.4142135623730951);
    TU b = (TU)x;
    TV f = (TV)((b & mant) | one);
    TV kk = (TV)((b >> 52) | magic) - (4503599627370496.0 + 1023.0);
    TI big = f > sqrt2;
    f = TF_(sel)(big, f * 0.5, f);
    *k = TF_(sel)(big, kk + 1.0, kk);
    *u = (f - 1.0) / (f + 1.0);
}

/* log x for positive normal x (the sigmoid scale, in (e^-5, 1]): 2
 * atanh(u) by the series 2 (u + u^3/3 + ... + u^11/11) (Abramowitz &
 * Stegun 4.1.27; the first term left out, 2 u^13 / 13, is below 2e-11),
 * plus k ln 2 with ln 2 split as in exp_core.  NaN lanes come back NaN. */
static inline TATTR TV TF_(log)(TV x)
{
    TV k, u, u2, p, r;
    TF_(log_split)(x, &k, &u);
    u2 = u * u;
    p = 1.0 + u2 * ((1.0 / 3) + u2 * ((1.0 / 5) + u2 * ((1.0 / 7)
             + u2 * ((1.0 / 9) + u2 * (1.0 / 11)))));
    r = k * 0.693147180369123816 + (k * 1.90821492927058770e-10
                                    + 2.0 * u * p);
    return TF_(sel)(x != x, x, r);
}

/* ------------------------------------------------------------ affine */

/* Both affine kinds on TN lanes (affine_any in transform.c): l = log
 * scale, dl = dl/ds and e = the scale of direction dir (e^l, or e^-l for
 * dir 1).  exp kind: l = C tanh(s / C); sigmoid kind: scale = m + (1 - m)
 * sigma(s + 2), sigma and 1 - sigma from the one e^-|a| (sigmoid_scale). */
static inline TATTR void TF_(affine_lanes)(int sig, int dir, TV s, TV *l,
                                           TV *dl, TV *e)
{
    if (sig) {
        const double m = TF_SIGMOID_MIN;
        const TV zero = TF_(bc)(0.0);
        TV a = s + TF_SIGMOID_SHIFT;
        TV ea = TF_(exp)(TF_(sel)(a < zero, a, -a));
        TV r = 1.0 / (1.0 + ea), sg, om, sc;
        TI pos = a >= zero;
        sg = TF_(sel)(pos, r, ea * r);
        om = TF_(sel)(pos, ea * r, r);
        sc = m + (1.0 - m) * sg;
        *l = TF_(log)(sc);
        *dl = (1.0 - m) * sg * om / sc;
        *e = dir ? 1.0 / sc : sc;
    } else {
        const double c = TF_AFFINE_CLAMP, ic = 1.0 / TF_AFFINE_CLAMP;
        TV th = TF_(tanh)(s * ic);
        *l = c * th;
        *dl = 1.0 - th * th;
        *e = TF_(exp)(dir ? -*l : *l);
    }
}

/* The affine transformer for TN scalars (y = x e^l + t, lad = l;
 * inverse x = (y - t) e^-l, lad = -l): the lanes where the input is
 * finite but the output or log-det is not come back -1. */
static inline TATTR TI TF_(affine_eval)(int sig, int dir, const float *in,
                                        const float *theta, float *out,
                                        float *lad)
{
    TV s, t, x, l, dl, e, o;
    TF_(pairs)(theta, &s, &t);
    x = TF_(load)(in);
    TF_(affine_lanes)(sig, dir, s, &l, &dl, &e);
    o = TF_(store)(out, dir ? (x - t) * e : x * e + t);
    if (dir)
        l = -l;
    if (lad)
        TF_(store)(lad, l);
    return TF_(fin)(x) & ~(TF_(fin)(o) & TF_(fin)(l));
}

/* Its VJP for TN scalars (vjp_core's affine case): the lanes where dL/dy
 * is finite but dL/dx is not come back -1. */
static inline TATTR TI TF_(affine_vjp)(int sig, int dir, const float *in,
                                       const float *theta, const float *gout,
                                       const float *glad, float *gin,
                                       float *gtheta)
{
    TV s, t, x, g, gl = TF_(bc)(0.0), l, dl, e, gi, g0, g1;
    float gbuf[TN];
    TF_(pairs)(theta, &s, &t);
    x = TF_(load)(in);
    g = TF_(load)(gout);
    if (glad)
        gl = TF_(load)(glad);
    TF_(affine_lanes)(sig, dir, s, &l, &dl, &e);
    if (dir == 0) {          /* y = x e^l + t, lad = l */
        gi = g * e;
        g0 = (g * x * e + gl) * dl;
        g1 = g;
    } else {                 /* x = (y - t) e^-l, lad = -l */
        gi = g * e;
        g0 = (-g * ((x - t) * e) - gl) * dl;
        g1 = -g * e;
    }
    gi = TF_(store)(gin ? gin : gbuf, gi);
    if (gtheta)
        for (int j = 0; j < TN; j++) {
            gtheta[2 * j] = (float)g0[j];
            gtheta[2 * j + 1] = (float)g1[j];
        }
    return ~TF_(fin)(gi) & TF_(fin)(g);
}

/* The affine transformer for float data over m scalars, TN at a time in
 * double with the polynomial exp: about an ulp from the double core
 * rounded (docs/runtime.md) and several times faster than its scalar
 * libm path (which cost 10% of a MAF training step).  2 TN scalars per
 * iteration: two independent chains, as the polynomials are
 * latency-bound.  A last partial group goes through padded lanes. */
static TATTR_F int TF_(affine_eval_f)(int sig, int dir, size_t m,
                                      const float *in, const float *theta,
                                      float *out, float *lad)
{
    TI bad = (TI)TF_(bc)(0.0);
    size_t i = 0;
    for (; i + 2 * TN <= m; i += 2 * TN) {
        bad |= TF_(affine_eval)(sig, dir, in + i, theta + 2 * i, out + i,
                                lad ? lad + i : NULL);
        bad |= TF_(affine_eval)(sig, dir, in + i + TN, theta + 2 * i + 2 * TN,
                                out + i + TN, lad ? lad + i + TN : NULL);
    }
    for (; i + TN <= m; i += TN)
        bad |= TF_(affine_eval)(sig, dir, in + i, theta + 2 * i, out + i,
                                lad ? lad + i : NULL);
    if (i < m) {
        float pin[TN] = {0}, pth[2 * TN] = {0}, pout[TN], plad[TN];
        size_t r = m - i;
        memcpy(pin, in + i, r * sizeof *pin);
        memcpy(pth, theta + 2 * i, 2 * r * sizeof *pth);
        bad |= TF_(affine_eval)(sig, dir, pin, pth, pout, plad);
        memcpy(out + i, pout, r * sizeof *pout);
        if (lad)
            memcpy(lad + i, plad, r * sizeof *plad);
    }
    return TF_(any)(bad) ? FLOW_ERR_NUMERIC : FLOW_OK;
}

static TATTR_F int TF_(affine_vjp_f)(int sig, int dir, size_t m,
                                     const float *in, const float *theta,
                                     const float *gout, const float *glad,
                                     float *gin, float *gtheta)
{
    TI bad = (TI)TF_(bc)(0.0);
    size_t i = 0;
    for (; i + TN <= m; i += TN)
        bad |= TF_(affine_vjp)(sig, dir, in + i, theta + 2 * i, gout + i,
                               glad ? glad + i : NULL, gin ? gin + i : NULL,
                               gtheta ? gtheta + 2 * i : NULL);
    if (i < m) {
        float pin[TN] = {0}, pth[2 * TN] = {0}, pg[TN] = {0}, pgl[TN] = {0};
        float pgi[TN], pgt[2 * TN];
        size_t r = m - i;
        memcpy(pin, in + i, r * sizeof *pin);
        memcpy(pth, theta + 2 * i, 2 * r * sizeof *pth);
        memcpy(pg, gout + i, r * sizeof *pg);
        if (glad)
            memcpy(pgl, glad + i, r * sizeof *pgl);
        bad |= TF_(affine_vjp)(sig, dir, pin, pth, pg, pgl, pgi, pgt);
        if (gin)
            memcpy(gin + i, pgi, r * sizeof *pgi);
        if (gtheta)
            memcpy(gtheta + 2 * i, pgt, 2 * r * sizeof *pgt);
    }
    return TF_(any)(bad) ? FLOW_ERR_NUMERIC : FLOW_OK;
}

/* ------------------------------------------- spline: exp, log, log1p */

/* The spline's exp and log are more accurate than the affine path's, to
 * about an ulp of double (its float results are then the double core's
 * rounded, but for the rare result within 1e-14 of a rounding tie).  e^x
 * for x <= 0 (softmax and softplus arguments) as in exp_core, e^r by its
 * Taylor polynomial of degree 11 in Horner's order (remainder < 0.347^12
 * / 12! = 6.3e-15 relative; the bins give the independent chains). */
static inline TATTR TV TF_(sexp_core)(TV x)
{
    const TV big = TF_(bc)(6755399441055744.0);
    TV kb = x * 1.4426950408889634 + big, k = kb - big;
    TV r = (x - k * 0.693147180369123816) - k * 1.90821492927058770e-10;
    TV p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24
           + r * (1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040
           + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800
           + r * (1.0 / 39916800)))))))))));
    TU e = ((TU)kb - (TU)big + 1023) << 52;
    return p * (TV)e;
}

/* Below -708 (the bins' weights underflow) 0 instead of libm's
 * subnormal, an absolute difference under 1e-307; NaN stays NaN. */
static inline TATTR TV TF_(sexp)(TV x)
{
    const TV lo = TF_(bc)(-708.0), zero = TF_(bc)(0.0);
    TI nan, under;
    if (__builtin_expect(TF_(allin)(x, -708.0, 0.0), 1))
        return TF_(sexp_core)(x);
    nan = x != x;
    under = x < lo;
    x = TF_(sel)(under | nan, zero, x);
    return TF_(sel)(nan, TF_(bc)(NAN), TF_(sel)(under, zero,
                                                TF_(sexp_core)(x)));
}

/* log x for positive normal x: the series of log to u^15 / 15 (the first
 * term left out, 2 u^17 / 17, is below 4e-14 relative); other lanes
 * give garbage, the caller tests them (spline_lanes). */
static inline TATTR TV TF_(slog)(TV x)
{
    TV k, u, u2, p;
    TF_(log_split)(x, &k, &u);
    u2 = u * u;
    p = 1.0 + u2 * ((1.0 / 3) + u2 * ((1.0 / 5) + u2 * ((1.0 / 7)
             + u2 * ((1.0 / 9) + u2 * ((1.0 / 11) + u2 * ((1.0 / 13)
             + u2 * (1.0 / 15)))))));
    return k * 0.693147180369123816 + (k * 1.90821492927058770e-10
                                       + 2.0 * u * p);
}

/* log1p(e) for e in [0, 1] or NaN: log(f) for f = 1 + e, plus the
 * rounding of f, (e - (f - 1)) / f (f - 1 is exact; Goldberg 1991,
 * theorem 4's correction). */
static inline TATTR TV TF_(slog1p)(TV e)
{
    TV f = 1.0 + e;
    return TF_(slog)(f) + (e - (f - 1.0)) / f;
}

/* Interior knot derivative min_d + softplus(z), z = theta + shift, as
 * knot_deriv: max(z, 0) + log1p(e^-|z|). */
static inline TATTR TV TF_(sderiv)(TV z, double min_d)
{
    const TU sign = TF_(bcu)(0x8000000000000000ull);
    TV e = TF_(sexp)((TV)((TU)z | sign));
    return (min_d + TF_(sel)(z > 0.0, z, TF_(bc)(0.0))) + TF_(slog1p)(e);
}

static inline TATTR TV TF_(clamp01)(TV v)
{
    return TF_(sel)(v < 0.0, TF_(bc)(0.0),
                    TF_(sel)(v > 1.0, TF_(bc)(1.0), v));
}

/* ------------------------------------------------------------ spline */

/* A bin of TN scalars' splines: its ends, its ends' derivative
 * parameters (0 at the bound), b0 / b1 (its left / right end is the
 * bound) and its index k. */
typedef struct TF_(sbin) {
    TV X, XR, Y, YR, tl, tr, k;
    TI b0, b1;
} TF_(sbin);

/* The knots of TN scalars' splines (transform.c's softmax and
 * make_knots, one lane per scalar, the same operations in the same
 * order; only exp is the polynomial above) and the bin of key among the
 * y knots in the lanes usey, the x knots elsewhere: the last knot at or
 * below key (what find_bin's bisection finds, the knots increasing),
 * found in one pass over the knots.  tt holds the parameters transposed,
 * tt[q * TN + j] = theta_q of lane j; its width and height logits are
 * overwritten (with the softmax probabilities when keep, for the VJP). */
static inline TATTR void TF_(spline_bin)(const tf_cfg *c, double *tt,
                                         TI usey, TV key, int keep,
                                         TF_(sbin) *o)
{
    const size_t K = c->bins;
    const double B = c->bound, tb = 2 * B;
    const double cw = 1 - (double)K * c->min_w;
    const double ch = 1 - (double)K * c->min_h;
    const TV zero = TF_(bc)(0.0);
    const TI all = zero == zero;
    TV mw, mh, sw = zero, sh = zero, xq = TF_(bc)(-B), yq = xq;
    TI m;
    o->X = o->XR = o->Y = o->YR = xq;
    o->tl = o->tr = o->k = zero;
    o->b0 = o->b1 = all;
    mw = TF_(load_d)(tt);
    mh = TF_(load_d)(tt + K * TN);
    for (size_t q = 1; q < K; q++) {
        TV w = TF_(load_d)(tt + q * TN), h = TF_(load_d)(tt + (K + q) * TN);
        mw = TF_(sel)(w > mw, w, mw);
        mh = TF_(sel)(h > mh, h, mh);
    }
    for (size_t q = 0; q < K; q++) {
        TV ew = TF_(sexp)(TF_(load_d)(tt + q * TN) - mw);
        TV eh = TF_(sexp)(TF_(load_d)(tt + (K + q) * TN) - mh);
        TF_(store_d)(tt + q * TN, ew);
        TF_(store_d)(tt + (K + q) * TN, eh);
        sw += ew;
        sh += eh;
    }
    sw = 1.0 / sw;
    sh = 1.0 / sh;
    for (size_t q = 0; q < K; q++) {
        TV pw = TF_(load_d)(tt + q * TN) * sw;
        TV ph = TF_(load_d)(tt + (K + q) * TN) * sh;
        TV xn = q + 1 == K ? TF_(bc)(B) : xq + tb * (c->min_w + cw * pw);
        TV yn = q + 1 == K ? TF_(bc)(B) : yq + tb * (c->min_h + ch * ph);
        TV tdr = q + 1 < K ? TF_(load_d)(tt + (2 * K + q) * TN) : zero;
        TI last = q + 1 == K ? all : (TI)zero;
        if (keep) {
            TF_(store_d)(tt + q * TN, pw);
            TF_(store_d)(tt + (K + q) * TN, ph);
        }
        if (q == 0) {
            o->XR = xn;
            o->YR = yn;
            o->tr = tdr;
            o->b1 = last;
        } else {
            m = (usey & (yq <= key)) | (~usey & (xq <= key));
            o->X = TF_(sel)(m, xq, o->X);
            o->XR = TF_(sel)(m, xn, o->XR);
            o->Y = TF_(sel)(m, yq, o->Y);
            o->YR = TF_(sel)(m, yn, o->YR);
            o->tl = TF_(sel)(m, TF_(load_d)(tt + (2 * K + q - 1) * TN),
                             o->tl);
            o->tr = TF_(sel)(m, tdr, o->tr);
            o->k = TF_(sel)(m, TF_(bc)((double)q), o->k);
            o->b0 &= ~m;
            o->b1 = (m & last) | (~m & o->b1);
        }
        xq = xn;
        yq = yn;
    }
}

/* rq_inverse's root inside the bin (Durkan et al. 2019, app. A.3: a
 * xi^2 + b xi + c = 0, 2c / (-b - sqrt(disc)), disc clamped at 0, the
 * result kept in the bin) for the lanes' y */
static inline TATTR TV TF_(rq_root)(const TF_(sbin) *n, TV d0, TV d1, TV y)
{
    const TV zero = TF_(bc)(0.0);
    TV W = n->XR - n->X, H = n->YR - n->Y, s = H / W;
    TV dy = y - n->Y, e = d0 + d1 - 2.0 * s;
    TV qa = H * (s - d0) + dy * e, qb = H * d0 - dy * e, qc = -s * dy;
    TV disc = qb * qb - 4.0 * qa * qc, qd, xi;
    disc = TF_(sel)(disc < 0.0, zero, disc);
    qd = -qb - TF_(sqrt)(disc);
    xi = TF_(sel)(qd != 0.0, 2.0 * qc / qd, zero);
    xi = n->X + TF_(clamp01)(xi) * W;
    return TF_(sel)(xi < n->XR, xi, n->XR);
}

/* The spline for TN scalars (tf_eval1: rq_value, rq_inverse; the same
 * operations as transform.c's, exp, log1p and log the polynomials
 * above).  in and the results are in lanes; lanes outside [-B, B] keep
 * the identity (out = in, lad = 0).  Returns the lanes inside whose
 * results are not finite or whose log-det argument is not a positive
 * normal double: the caller redoes them on the scalar path, which
 * decides the error. */
static inline TATTR TI TF_(spline_lanes)(const tf_cfg *c, int dir,
                                         double *tt, TV in, TV *out,
                                         TV *lad)
{
    const TV zero = TF_(bc)(0.0), one = TF_(bc)(1.0);
    TI ins = (in >= -c->bound) & (in <= c->bound);
    TV v = TF_(sel)(ins, in, zero);
    TV d0, d1, x, W, H, s, xi, om, den, nn, y, a, X, Y;
    TF_(sbin) n;
    TF_(spline_bin)(c, tt, dir ? zero == zero : zero != zero, v, 0, &n);
    /* the bin's ends' derivatives (knot_deriv): 1 at the bound */
    d0 = TF_(sel)(n.b0, one, TF_(sderiv)(n.tl + c->d_shift, c->min_d));
    d1 = TF_(sel)(n.b1, one, TF_(sderiv)(n.tr + c->d_shift, c->min_d));
    X = n.X;
    Y = n.Y;
    W = n.XR - X;
    H = n.YR - Y;
    s = H / W;
    x = dir ? TF_(rq_root)(&n, d0, d1, v) : v;
    /* rq_value: eq. 4, and eq. 5's log in one log */
    xi = TF_(clamp01)((x - X) / W);
    om = xi * (1.0 - xi);
    den = s + (d0 + d1 - 2.0 * s) * om;
    nn = d1 * xi * xi + 2.0 * s * om + d0 * (1.0 - xi) * (1.0 - xi);
    y = Y + H * (s * xi * xi + d0 * om) / den;
    a = s * s * nn / (den * den);
    y = dir ? x : y;
    *lad = TF_(slog)(a);
    if (dir)
        *lad = -*lad;
    *out = TF_(sel)(ins, y, in);
    *lad = TF_(sel)(ins, *lad, zero);
    {
        const TV inf = TF_(bc)(INFINITY), dmin = TF_(bc)(0x1p-1022);
        TI ok = (y < inf) & (y > -inf) & (*lad < inf) & (*lad > -inf) &
                (a >= dmin) & (a < inf);
        return ins & ~ok;
    }
}

/* The spline for float data over m scalars, TN at a time: transposes
 * each group's parameters to lanes (a last partial group padded with 0,
 * an inside input and finite parameters) and hands the lanes spline_lanes
 * rejects to redo(ctx, i): returns whether some lane needed it. */
static TATTR_F int TF_(spline_eval_f)(const tf_cfg *c, int dir, size_t m,
                                      const float *in, const float *theta,
                                      float *out, float *lad,
                                      int (*redo)(void *, size_t),
                                      void *ctx)
{
    double tt[3 * TF_MAX_BINS * TN] __attribute__((aligned(64)));
    const size_t nt = c->n_theta;
    int st = FLOW_OK;
    for (size_t i = 0; i < m; i += TN) {
        size_t r = m - i < TN ? m - i : TN;
        float pin[TN] = {0}, po[TN], pl[TN];
        TV vo, vl;
        TI bad;
        if (r == TN) {
            memcpy(pin, in + i, sizeof pin);
            TF_(tpose)(theta + i * nt, nt, tt);
        } else {
            for (size_t j = 0; j < r; j++) {
                const float *th = theta + (i + j) * nt;
                pin[j] = in[i + j];
                for (size_t q = 0; q < nt; q++)
                    tt[q * TN + j] = th[q];
            }
            for (size_t j = r; j < TN; j++)
                for (size_t q = 0; q < nt; q++)
                    tt[q * TN + j] = 0;
        }
        bad = TF_(spline_lanes)(c, dir, tt, TF_(load)(pin), &vo, &vl);
        TF_(store)(po, vo);
        TF_(store)(pl, vl);
        if (!TF_(any)(bad)) {
            memcpy(out + i, po, r * sizeof *po);
            if (lad)
                memcpy(lad + i, pl, r * sizeof *pl);
            continue;
        }
        /* redo reads in[i + j]: written lane by lane (out may be in) */
        for (size_t j = 0; j < r; j++)
            if (bad[j]) {
                if (redo(ctx, i + j) != FLOW_OK)
                    st = FLOW_ERR_NUMERIC;
            } else {
                out[i + j] = po[j];
                if (lad)
                    lad[i + j] = pl[j];
            }
    }
    return st;
}

/* knot_deriv with its derivative in the raw parameter: sigmoid(z) = 1 /
 * (1 + e) or e / (1 + e) from the one e = e^-|z| */
static inline TATTR TV TF_(sderiv_ds)(TV z, double min_d, TV *ds)
{
    const TU sign = TF_(bcu)(0x8000000000000000ull);
    TV e = TF_(sexp)((TV)((TU)z | sign));
    *ds = TF_(sel)(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e));
    return (min_d + TF_(sel)(z > 0.0, z, TF_(bc)(0.0))) + TF_(slog1p)(e);
}

/* The spline's VJP for TN scalars (vjp_core: rq_local's partials, the
 * implicit-function inverse, rq_scatter), the same operations as
 * transform.c's.  xh: the known inverse (dir 1), NaN where not known.
 * gt receives the parameter gradients transposed (gt[q * TN + j]).
 * Returns the lanes inside whose dL/din or local gradients are not
 * finite: the caller redoes them on the scalar path. */
static inline TATTR TI TF_(spline_vjp_lanes)(const tf_cfg *c, int dir,
                                             double *tt, TV in, TV xh,
                                             TV gout, TV glad, TV *gin,
                                             double *gt)
{
    const size_t K = c->bins;
    const double B = c->bound;
    const double cw = 2 * B * (1 - (double)K * c->min_w);
    const double ch = 2 * B * (1 - (double)K * c->min_h);
    const TV zero = TF_(bc)(0.0), one = TF_(bc)(1.0);
    const TV inf = TF_(bc)(INFINITY);
    TI ins = (in >= -B) & (in <= B), hok = (xh >= -B) & (xh <= B), ok;
    TV v = TF_(sel)(ins, in, zero), x, ds0, ds1, d0, d1, W, Y, H, xi;
    TV s, om, e, a, den, nn, den2, a_xi, den_xi, nn_xi, den_s, y_xi, y_s;
    TV y_d0, y_d1, l_xi, l_s, l_d0, l_d1, dydx, dldx, py[6], pl[6], g[6];
    TV gi, sw = zero, sh = zero;
    TF_(sbin) n;
    if (dir == 0)
        hok = (TI)zero;
    TF_(spline_bin)(c, tt, dir ? ~hok : (TI)zero,
                    TF_(sel)(hok, xh, v), 1, &n);
    d0 = TF_(sderiv_ds)(n.tl + c->d_shift, c->min_d, &ds0);
    d1 = TF_(sderiv_ds)(n.tr + c->d_shift, c->min_d, &ds1);
    d0 = TF_(sel)(n.b0, one, d0);
    ds0 = TF_(sel)(n.b0, zero, ds0);
    d1 = TF_(sel)(n.b1, one, d1);
    ds1 = TF_(sel)(n.b1, zero, ds1);
    x = dir ? TF_(sel)(hok, xh, TF_(rq_root)(&n, d0, d1, v)) : v;
    W = n.XR - n.X;
    Y = n.Y;
    H = n.YR - Y;
    xi = TF_(clamp01)((x - n.X) / W);
    /* rq_local: eqs. 4-5 and their partials */
    s = H / W;
    om = xi * (1.0 - xi);
    e = d0 + d1 - 2.0 * s;
    a = s * xi * xi + d0 * om;
    den = s + e * om;
    nn = d1 * xi * xi + 2.0 * s * om + d0 * (1.0 - xi) * (1.0 - xi);
    den2 = den * den;
    a_xi = 2.0 * s * xi + d0 * (1.0 - 2.0 * xi);
    den_xi = e * (1.0 - 2.0 * xi);
    nn_xi = 2.0 * d1 * xi + 2.0 * s * (1.0 - 2.0 * xi)
            - 2.0 * d0 * (1.0 - xi);
    den_s = 1.0 - 2.0 * om;
    y_xi = H * (a_xi * den - a * den_xi) / den2;
    y_s = H * (xi * xi * den - a * den_s) / den2;
    y_d0 = H * (om * den - a * om) / den2;
    y_d1 = -H * a * om / den2;
    l_xi = nn_xi / nn - 2.0 * den_xi / den;
    l_s = 2.0 / s + 2.0 * om / nn - 2.0 * den_s / den;
    l_d0 = (1.0 - xi) * (1.0 - xi) / nn - 2.0 * om / den;
    l_d1 = xi * xi / nn - 2.0 * om / den;
    dydx = s * s * nn / den2;
    dldx = l_xi / W;
    py[0] = -y_xi / W;
    py[1] = -y_xi * xi / W - y_s * s / W;
    py[2] = one;
    py[3] = a / den + y_s / W;
    py[4] = y_d0;
    py[5] = y_d1;
    pl[0] = -l_xi / W;
    pl[1] = -l_xi * xi / W - l_s * s / W;
    pl[2] = zero;
    pl[3] = l_s / W;
    pl[4] = l_d0;
    pl[5] = l_d1;
    if (dir == 0) {
        gi = gout * dydx + glad * dldx;
        for (int i = 0; i < 6; i++)
            g[i] = gout * py[i] + glad * pl[i];
    } else {
        TV G = gout - glad * dldx;
        gi = G / dydx;
        for (int i = 0; i < 6; i++)
            g[i] = -G / dydx * py[i] - glad * pl[i];
    }
    ok = (gi < inf) & (gi > -inf);
    for (int i = 0; i < 6; i++)
        ok &= (g[i] < inf) & (g[i] > -inf);
    *gin = TF_(sel)(ins, gi, gout);
    /* rq_scatter: through the cumulative sums and the softmax Jacobian
     * p_j (g_j - sum_i p_i g_i), softplus' = sigmoid; 0 outside */
    for (size_t j = 0; j < K; j++) {
        TI lt = TF_(bc)((double)j) < n.k, eq = TF_(bc)((double)j) == n.k;
        TV gw = TF_(sel)(lt, g[0], TF_(sel)(eq, g[1], zero)) * cw;
        TV gh = TF_(sel)(lt, g[2], TF_(sel)(eq, g[3], zero)) * ch;
        TF_(store_d)(gt + j * TN, gw);
        TF_(store_d)(gt + (K + j) * TN, gh);
        sw += TF_(load_d)(tt + j * TN) * gw;
        sh += TF_(load_d)(tt + (K + j) * TN) * gh;
    }
    for (size_t j = 0; j < K; j++) {
        TV gw = TF_(load_d)(tt + j * TN) * (TF_(load_d)(gt + j * TN) - sw);
        TV gh = TF_(load_d)(tt + (K + j) * TN) *
                (TF_(load_d)(gt + (K + j) * TN) - sh);
        TF_(store_d)(gt + j * TN, TF_(sel)(ins, gw, zero));
        TF_(store_d)(gt + (K + j) * TN, TF_(sel)(ins, gh, zero));
    }
    for (size_t j = 0; j + 1 < K; j++) {
        TV jv = TF_(bc)((double)j), t = zero;
        t = TF_(sel)(jv + 1.0 == n.k, t + g[4] * ds0, t);
        t = TF_(sel)(jv == n.k, t + g[5] * ds1, t);
        TF_(store_d)(gt + (2 * K + j) * TN, TF_(sel)(ins, t, zero));
    }
    return ins & ~ok;
}

/* The spline's VJP for float data over m scalars, TN at a time (as
 * spline_eval_f; xhint may be NULL, gin and gtheta too); lanes that
 * spline_vjp_lanes rejects go to redo(ctx, i). */
static TATTR_F int TF_(spline_vjp_f)(const tf_cfg *c, int dir, size_t m,
                                     const float *in, const float *xhint,
                                     const float *theta, const float *gout,
                                     const float *glad, float *gin,
                                     float *gtheta,
                                     int (*redo)(void *, size_t),
                                     void *ctx)
{
    double tt[3 * TF_MAX_BINS * TN] __attribute__((aligned(64)));
    double gt[3 * TF_MAX_BINS * TN] __attribute__((aligned(64)));
    const size_t nt = c->n_theta;
    int st = FLOW_OK;
    for (size_t i = 0; i < m; i += TN) {
        size_t r = m - i < TN ? m - i : TN;
        float pin[TN] = {0}, pxh[TN], pg[TN] = {0}, pgl[TN] = {0}, pgi[TN];
        TV vgi;
        TI bad;
        for (size_t j = 0; j < TN; j++)
            pxh[j] = NAN;
        memcpy(pin, in + i, r * sizeof *pin);
        memcpy(pg, gout + i, r * sizeof *pg);
        if (xhint)
            memcpy(pxh, xhint + i, r * sizeof *pxh);
        if (glad)
            memcpy(pgl, glad + i, r * sizeof *pgl);
        if (r == TN) {
            TF_(tpose)(theta + i * nt, nt, tt);
        } else {
            for (size_t j = 0; j < r; j++)
                for (size_t q = 0; q < nt; q++)
                    tt[q * TN + j] = theta[(i + j) * nt + q];
            for (size_t j = r; j < TN; j++)
                for (size_t q = 0; q < nt; q++)
                    tt[q * TN + j] = 0;
        }
        bad = TF_(spline_vjp_lanes)(c, dir, tt, TF_(load)(pin),
                                    TF_(load)(pxh), TF_(load)(pg),
                                    TF_(load)(pgl), &vgi, gt);
        TF_(store)(pgi, vgi);
        if (gin)              /* before redo, which reads gout (maybe gin) */
            for (size_t j = 0; j < r; j++)
                if (!bad[j])
                    gin[i + j] = pgi[j];
        if (gtheta) {
            if (r == TN)
                TF_(untpose)(gt, nt, gtheta + i * nt);
            else
                for (size_t j = 0; j < r; j++)
                    for (size_t q = 0; q < nt; q++)
                        gtheta[(i + j) * nt + q] = (float)gt[q * TN + j];
        }
        for (size_t j = 0; j < r; j++)      /* the others: never flagged */
            if (bad[j] && redo(ctx, i + j) != FLOW_OK)
                st = FLOW_ERR_NUMERIC;
    }
    return st;
}

#undef TN
#undef TV
#undef TI
#undef TU
#undef TF_
#undef TATTR
#undef TATTR_F
