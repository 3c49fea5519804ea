/* probe.c - flow_model_verify_layers: a short numerical probe of a
 * model's layers on its first rows (round trip, log-det vs FD Jacobian).
 *
 * It lives in the runtime, not beside `flowkit check` in cli/, because it
 * needs what only the model has: each layer's input as the model computes
 * it on real data (m->act after a forward pass) and the layer's instance,
 * parameters and buffers to call it with.  The checks are a subset of
 * cli/conform.c's, with the same tolerances and the same kink-aware
 * finite differences, so that a layer `flowkit check` passes passes here
 * (docs/plugins.md, "Training verifies third-party layers"). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "model_impl.h"
#include "tolerances.h"
#include "fd.h"            /* FD_POINTS, fd_frac, fd_extrapolate */

/* The tolerances of `flowkit check` (tolerances.h). */
/* Layers whose map is exact only up to a solver's or an iteration's
 * tolerance (the ODE and residual Jacobian classes) are held to the
 * float32 values in every build: their round trip is as good as the
 * tolerance the spec chose (about 1e-7 by default, docs/plugins.md
 * "Layers that are exact only up to a tolerance"), and an adaptive
 * solver's output is not smooth at the float64 FD step. */
#define LOOSE_ROUNDTRIP 1e-4
#define LOOSE_LOGDET 1e-4
#define LOOSE_FD_STEP 1e-2
#define LOOSE_FD 2e-3

/* The round trip (and forward + inverse log-dets) are held to this many
 * times the checker's tolerance: the probe runs on real data and, when a
 * run resumes, on trained parameters, where a float32 inverse that runs
 * sequentially (an autoregressive layer: D passes) accumulates more
 * rounding than on the checker's draws (1.04e-4 measured on maf_gmm.flow
 * at perturbed parameters); a wrong inverse misses by orders more. */
#define ROUNDTRIP_SLACK 10.0

/* The cost cap: rows of the first batch probed (round trip), rows whose
 * FD Jacobian is taken, and the widest layer that gets one (a Jacobian
 * costs 6 D + 1 rows of the layer per step size, and its LU D^3 / 3). */
#define PROBE_ROWS 8
#define PROBE_FD_ROWS 4
#define PROBE_FD_MAX_DIM 64

/* Layers often start as the identity (a conditioner whose last layer is
 * zero), where a log-det of the wrong sign is still right (0): the checks
 * run a second time with the layer's parameters moved by PERTURB times
 * standard normal draws (a fixed seed), as `flowkit check` does, halved
 * until no row's log-det moves by more than PERTURB_LOGDET (a steep
 * spline defeats finite differences in float32). */
#define PERTURB 0.2
#define PERTURB_SEED 1
#define PERTURB_LOGDET 2.0
#define PERTURB_TRIES 10

typedef struct probe {
    flow_model *m;
    node *nd;
    size_t d, k;                /* width; context width (0: not given) */
    size_t cap;                 /* rows one call may take */
    void *ws;
    size_t ws_bytes;
    flow_real *cbuf;            /* context of the FD rows, cap x k */
    int bounded;                /* inputs must stay in [lo, hi] */
    double lo, hi;
    flow_rng rng, rng0;         /* each call starts from rng0: a stochastic
                                   layer is a function of its input */
    char err[512];              /* the layer's message */
    char msg[768];              /* the failure, without the layer's name */
    const char *at;             /* "" or where the parameters were moved */
    char at_buf[96];
    double tol_rt, tol_ld, tol_fd, fd_step;
} probe;

/* ------------------------------------------------------------ calls */

/* One call of the layer on n rows (cv: their context or NULL); a layer
 * that must see whole batches gets one row per call, so that the FD rows
 * (perturbed copies of one row) are not normalised together. */
static int run(probe *P, int dir, size_t n, const flow_real *in,
               const flow_real *cv, flow_real *out, flow_real *ld)
{
    node *nd = P->nd;
    flow_call c;
    if (n > 1 && (nd->desc.flags & FLOW_LAYER_WHOLE_BATCH)) {
        for (size_t r = 0; r < n; r++) {
            int rc = run(P, dir, 1, in + r * P->d, cv ? cv + r * P->k : NULL,
                         out + r * P->d, ld + r);
            if (rc != FLOW_OK)
                return rc;
        }
        return FLOW_OK;
    }
    exec_fill_call(P->m, nd, &c, n, cv, NULL, 0);
    c.ws = P->ws;
    c.ws_bytes = P->ws_bytes;
    P->rng = P->rng0;
    c.rng = &P->rng;
    c.training = 0;
    c.err = P->err;
    c.err_cap = sizeof P->err;
    P->err[0] = '\0';
    return dir ? nd->type->inverse(nd->self, &c, in, out, ld)
               : nd->type->forward(nd->self, &c, in, out, ld);
}

static const char *layer_msg(const probe *P)
{
    return P->err[0] ? P->err : "failed without a message";
}

static void fail(probe *P, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(probe *P, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(P->msg, sizeof P->msg, fmt, ap);
    va_end(ap);
}

static int row_finite(const flow_real *v, size_t d)
{
    for (size_t i = 0; i < d; i++)
        if (!isfinite((double)v[i]))
            return 0;
    return 1;
}

/* ------------------------------------------------------------ round trip */

/* z = f(x), x' = f^-1(z) on the n rows: |x' - x| / max(1, |x|) within
 * the round-trip tolerance and, for an exact log-det, |ld_f + ld_inv| /
 * max(1, |ld_f|) within the log-det tolerance, both times
 * ROUNDTRIP_SLACK.  z and ld receive the forward's values; *err the
 * worst round-trip error (NAN when there is no inverse). */
static int check_round_trip(probe *P, size_t n, const flow_real *x,
                            flow_real *z, flow_real *ld, flow_real *xb,
                            flow_real *ld2, double *err)
{
    const node *nd = P->nd;
    size_t d = P->d, worst = 0;
    double e = 0;
    *err = NAN;
    if (run(P, 0, n, x, P->k ? P->cbuf : NULL, z, ld) != FLOW_OK) {
        fail(P, "forward failed on the probe's rows%s: %s", P->at,
             layer_msg(P));
        return -1;
    }
    for (size_t r = 0; r < n; r++)
        if (!row_finite(z + r * d, d) || !isfinite((double)ld[r])) {
            fail(P, "forward, row %zu of the first batch%s: finite input, "
                 "non-finite output", r, P->at);
            return -1;
        }
    if (!(nd->desc.flags & FLOW_LAYER_INVERSE) || !nd->type->inverse)
        return 0;
    if (run(P, 1, n, z, P->k ? P->cbuf : NULL, xb, ld2) != FLOW_OK) {
        fail(P, "inverse failed on the forward's output%s: %s", P->at,
             layer_msg(P));
        return -1;
    }
    for (size_t i = 0; i < n * d; i++) {
        double ei = fabs((double)xb[i] - x[i]) / fmax(1.0, fabs(x[i]));
        if (!(ei <= e)) {
            e = ei;
            worst = i;
        }
    }
    *err = e;
    if (!(e <= ROUNDTRIP_SLACK * P->tol_rt)) {
        fail(P, "round trip x -> z -> x, row %zu of the first batch, "
             "column %zu%s: x = %.9g, back %.9g (error %.3g > tolerance "
             "%.3g)", worst / d, worst % d, P->at, (double)x[worst],
             (double)xb[worst], e, ROUNDTRIP_SLACK * P->tol_rt);
        return -1;
    }
    if (nd->desc.logdet_exact && !(nd->desc.flags & FLOW_LAYER_STOCHASTIC))
        for (size_t r = 0; r < n; r++) {
            double s = fabs((double)ld[r] + ld2[r]) / fmax(1.0, fabs(ld[r]));
            if (!(s <= ROUNDTRIP_SLACK * P->tol_ld)) {
                fail(P, "log-det forward + inverse = 0, row %zu of the "
                     "first batch%s: forward %.9g, inverse %.9g (error "
                     "%.3g > tolerance %.3g)", r, P->at, (double)ld[r],
                     (double)ld2[r], s, ROUNDTRIP_SLACK * P->tol_ld);
                return -1;
            }
        }
    return 0;
}

/* ------------------------------------------------------------ FD log-det */

/* log|det A| of the d x d row-major A (destroyed), by Gaussian
 * elimination with partial pivoting (Golub & Van Loan, Matrix
 * Computations, 4th ed., Alg. 3.4.1): log|det A| = sum_k log|U_kk|. */
static double lu_logabsdet(double *a, size_t d)
{
    double s = 0;
    for (size_t k = 0; k < d; k++) {
        size_t p = k;
        double best = fabs(a[k * d + k]);
        for (size_t i = k + 1; i < d; i++)
            if (fabs(a[i * d + k]) > best) {
                best = fabs(a[i * d + k]);
                p = i;
            }
        if (!(best > 0))
            return best == 0 ? -INFINITY : NAN;
        if (p != k)
            for (size_t j = k; j < d; j++) {
                double t = a[k * d + j];
                a[k * d + j] = a[p * d + j];
                a[p * d + j] = t;
            }
        s += log(best);
        for (size_t i = k + 1; i < d; i++) {
            double f = a[i * d + k] / a[k * d + k];
            for (size_t j = k + 1; j < d; j++)
                a[i * d + j] -= f * a[k * d + j];
        }
    }
    return s;
}

/* Largest step from v that stays inside the inputs' bounds. */
static double max_step(const probe *P, double v)
{
    return P->bounded ? 0.45 * fmin(v - P->lo, P->hi - v) : INFINITY;
}

/* Scratch of one row's FD Jacobian. */
typedef struct fd_work {
    flow_real *xs, *ys, *ld;    /* (6 D + 1) rows */
    double *steps;              /* FD_POINTS x D actual steps */
    double *J, *U, *A;          /* D x D */
} fd_work;

/* The FD Jacobian of the forward at x (one row, context cv) with step
 * scale h0 into W->J, the entries' uncertainties into W->U: one call on
 * 6 D + 1 rows (x, then x with x_j moved by fd_frac[p] h_j).  -1 when
 * a step has no room (x on the domain's edge), -2 when the layer fails. */
static int fd_jacobian(probe *P, const flow_real *x, const flow_real *cv,
                       double h0, fd_work *W)
{
    size_t d = P->d, rows = (FD_POINTS - 1) * d + 1;
    for (size_t r = 0; r < rows; r++) {
        memcpy(W->xs + r * d, x, d * sizeof *x);
        if (P->k)
            memcpy(P->cbuf + r * P->k, cv, P->k * sizeof *cv);
    }
    for (size_t j = 0; j < d; j++) {
        double h = fmin(h0 * fmax(1.0, fabs(x[j])), max_step(P, x[j]));
        if (!(h > 0))
            return -1;
        W->steps[j] = 0;
        for (int p = 1; p < FD_POINTS; p++) {
            flow_real *v = &W->xs[(1 + (size_t)(p - 1) * d + j) * d + j];
            *v = (flow_real)((double)x[j] + fd_frac[p] * h);
            W->steps[(size_t)p * d + j] = (double)*v - (double)x[j];
        }
    }
    if (run(P, 0, rows, W->xs, P->k ? P->cbuf : NULL, W->ys, W->ld)
        != FLOW_OK)
        return -2;
    for (size_t j = 0; j < d; j++)
        for (size_t i = 0; i < d; i++) {
            double v[FD_POINTS], a[FD_POINTS];
            for (int p = 0; p < FD_POINTS; p++) {
                size_t r = p ? 1 + (size_t)(p - 1) * d + j : 0;
                v[p] = W->ys[r * d + i];
                a[p] = W->steps[(size_t)p * d + j];
            }
            W->J[i * d + j] = fd_extrapolate(v, a, &W->U[i * d + j]);
        }
    return 0;
}

/* log|det| of the FD Jacobian and its uncertainty (the spread over
 * J + U and J - U, as `flowkit check` computes it). */
static double fd_logdet(fd_work *W, size_t d, double *unc)
{
    double l, alt;
    memcpy(W->A, W->J, d * d * sizeof *W->A);
    l = lu_logabsdet(W->A, d);
    *unc = 0;
    for (int sgn = -1; sgn <= 1; sgn += 2) {
        for (size_t i = 0; i < d * d; i++)
            W->A[i] = W->J[i] + sgn * W->U[i];
        alt = lu_logabsdet(W->A, d);
        if (isfinite(alt))
            *unc = fmax(*unc, fabs(alt - l));
    }
    return l;
}

/* Row r's log-det ld against the FD Jacobian's log|det|: the error
 * max(0, |ld - fd| - unc) / max(1, |fd|) of the best step size within
 * the FD tolerance.  *err the error, *rows_done += 1 when the row was probed (a
 * row on its domain's edge is not). */
static int check_fd_row(probe *P, size_t r, const flow_real *x,
                        const flow_real *cv, double ld, fd_work *W,
                        double *err, size_t *rows_done)
{
    double h0 = P->fd_step, best = INFINITY, at = NAN, at_unc = 0;
    int probed = 0;
    for (int lv = 0; lv < FD_LEVELS && !(best <= P->tol_fd); lv++, h0 /= 4) {
        double unc, l, e;
        int f = fd_jacobian(P, x, cv, h0, W);
        if (f == -2) {
            fail(P, "forward failed near row %zu of the first batch%s "
                 "(finite-difference step): %s", r, P->at, layer_msg(P));
            return -1;
        }
        if (f != 0)
            break;              /* no room for a step: not probed */
        probed = 1;
        l = fd_logdet(W, P->d, &unc);
        e = fmax(0.0, fabs(ld - l) - unc) / fmax(1.0, fabs(l));
        if (!(e >= best)) {
            best = e;
            at = l;
            at_unc = unc;
        }
    }
    if (!probed)
        return 0;
    ++*rows_done;
    *err = fmax(*err, best);
    if (!(best <= P->tol_fd)) {
        fail(P, "log-det vs FD Jacobian, row %zu of the first batch%s: "
             "layer %.9g, log|det| of the FD Jacobian %.9g +- %.2g (error "
             "%.3g > tolerance %.3g)", r, P->at, ld, at, at_unc, best,
             P->tol_fd);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ one layer */

static void fd_work_free(fd_work *W)
{
    free(W->xs);
    free(W->ys);
    free(W->ld);
    free(W->steps);
    free(W->J);
    free(W->U);
    free(W->A);
}

/* "label (spec:line:col, plugin)" as the runtime's layer errors read */
static void layer_where(const node *nd, char *buf, size_t cap)
{
    if (nd->cfg.line > 0 && nd->spec)
        snprintf(buf, cap, "%s (%s:%d:%d, %s)", nd->label, nd->spec,
                 nd->cfg.line, nd->cfg.col, nd->file);
    else
        snprintf(buf, cap, "%s (%s)", nd->label, nd->file);
}

static void notef(flow_verify_note_fn note, void *arg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void notef(flow_verify_note_fn note, void *arg, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    if (!note)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    note(arg, line);
}

/* The layer's prepare() (derived weights) for its current parameters. */
static int prepare(probe *P, size_t n, const flow_real *cv)
{
    node *nd = P->nd;
    flow_call c;
    if (!nd->type->prepare)
        return FLOW_OK;
    exec_fill_call(P->m, nd, &c, n, cv, NULL, 0);
    c.training = 0;
    c.err = P->err;
    c.err_cap = sizeof P->err;
    P->err[0] = '\0';
    return nd->type->prepare(nd->self, &c);
}

/* Buffers of one layer's probe. */
typedef struct bufs {
    flow_real *z, *ld, *xb, *ld2;       /* n x D, n, n x D, n */
    fd_work W;
} bufs;

/* Every check on the n rows x at the layer's current parameters; *rt the
 * round-trip error, *fd the worst FD error, *fd_rows += the rows that got
 * a Jacobian.  0 when all pass, -1 (P->msg set) when one fails. */
static int checks(probe *P, int fd, size_t n, const flow_real *x,
                  const flow_real *cv, bufs *B, double *rt, double *fde,
                  size_t *fd_rows)
{
    size_t d = P->d, fd_n = n < PROBE_FD_ROWS ? n : PROBE_FD_ROWS;
    double e = NAN;
    if (P->k)
        memcpy(P->cbuf, cv, n * P->k * sizeof *cv);
    if (check_round_trip(P, n, x, B->z, B->ld, B->xb, B->ld2, &e) != 0)
        return -1;
    if (!isnan(e))
        *rt = isnan(*rt) ? e : fmax(*rt, e);
    for (size_t r = 0; fd && r < fd_n; r++)
        if (check_fd_row(P, r, x + r * d, P->k ? cv + r * P->k : NULL,
                         (double)B->ld[r], &B->W, fde, fd_rows) != 0)
            return -1;
    return 0;
}

/* The checks again at perturbed parameters p0 + s eps (module comment
 * at PERTURB), the layer's own put back afterwards.  *s_used: the scale
 * used, 0 when no scale kept the log-dets near ld0 (then nothing is
 * checked).  -1 when a check fails; -2 (message in m) when memory or
 * prepare() fails on the layer's own parameters. */
static int perturbed(probe *P, int fd, size_t n, const flow_real *x,
                     const flow_real *cv, bufs *B, const flow_real *ld0,
                     double *rt, double *fde, size_t *fd_rows,
                     double *s_used)
{
    node *nd = P->nd;
    size_t np = nd->desc.n_params;
    flow_real *p = P->m->params + nd->p_off;
    flow_real *p0 = malloc(np * sizeof *p0), *eps = malloc(np * sizeof *eps);
    flow_rng g;
    double s = PERTURB;
    int rc = 0, found = 0;

    *s_used = 0;
    if (!p0 || !eps) {
        free(p0);
        free(eps);
        return -2;
    }
    memcpy(p0, p, np * sizeof *p);
    rng_seed(&g, PERTURB_SEED);
    for (size_t i = 0; i < np; i++)
        eps[i] = (flow_real)rng_normal1(&g);
    if (P->k)
        memcpy(P->cbuf, cv, n * P->k * sizeof *cv);
    for (int t = 0; t < PERTURB_TRIES && !found; t++, s /= 2) {
        double worst = 0;
        for (size_t i = 0; i < np; i++)
            p[i] = (flow_real)(p0[i] + s * eps[i]);
        if (prepare(P, n, cv) != FLOW_OK
            || run(P, 0, n, x, P->k ? P->cbuf : NULL, B->z, B->ld)
                   != FLOW_OK)
            continue;
        for (size_t r = 0; r < n; r++)
            worst = fmax(worst, isfinite((double)B->ld[r])
                                    ? fabs((double)B->ld[r] - ld0[r])
                                    : INFINITY);
        found = worst <= PERTURB_LOGDET;
    }
    if (found) {
        s *= 2;                 /* the loop halved it once more */
        *s_used = s;
        snprintf(P->at_buf, sizeof P->at_buf, ", parameters moved by %.3g "
                 "x N(0, 1) (seed %d)", s, PERTURB_SEED);
        P->at = P->at_buf;
        rc = checks(P, fd, n, x, cv, B, rt, fde, fd_rows);
        P->at = "";
    }
    memcpy(p, p0, np * sizeof *p);
    if (prepare(P, n, cv) != FLOW_OK && rc == 0)
        rc = -2;
    free(p0);
    free(eps);
    return rc;
}

/* Probes node nd on its n input rows x (context cv or NULL). */
static int probe_node(flow_model *m, node *nd, size_t n, const flow_real *x,
                      const flow_real *cv, flow_verify_note_fn note,
                      void *arg)
{
    probe P;
    bufs B;
    size_t d = nd->in_dim, fd_rows = 0, nd_el = n * d;
    int fd = nd->desc.logdet_exact
             && !(nd->desc.flags & FLOW_LAYER_STOCHASTIC)
             && d <= PROBE_FD_MAX_DIM;
    flow_real *ld0 = NULL;
    double rt_err = NAN, fd_err = 0, s_used = 0;
    char where[1024], why[96] = "", moved[96] = "";
    int rc = FLOW_OK, bad = 0;

    memset(&P, 0, sizeof P);
    memset(&B, 0, sizeof B);
    P.m = m;
    P.nd = nd;
    P.d = d;
    P.k = nd->given ? m->cdim : 0;
    P.rng0 = m->rng;
    P.at = "";
    if (nd->desc.jac == FLOW_JAC_ODE || nd->desc.jac == FLOW_JAC_RESIDUAL) {
        P.tol_rt = LOOSE_ROUNDTRIP;
        P.tol_ld = LOOSE_LOGDET;
        P.tol_fd = LOOSE_FD;
        P.fd_step = LOOSE_FD_STEP;
    } else {
        P.tol_rt = TOL_ROUNDTRIP;
        P.tol_ld = TOL_LOGDET;
        P.tol_fd = TOL_FD;
        P.fd_step = FD_STEP;
    }
    P.cap = fd ? (FD_POINTS - 1) * d + 1 : n;
    if (P.cap < n)
        P.cap = n;
    if (nd->cfg.has_bounds) {
        P.bounded = 1;
        P.lo = nd->cfg.lo;
        P.hi = nd->cfg.hi;
    }
    if (nd->desc.struct_size >= offsetof(flow_layer_desc, domain_hi)
                                    + sizeof nd->desc.domain_hi
        && nd->desc.domain != FLOW_DOMAIN_NONE) {
        P.lo = P.bounded ? fmax(P.lo, nd->desc.domain_lo)
                         : nd->desc.domain_lo;
        P.hi = P.bounded ? fmin(P.hi, nd->desc.domain_hi)
                         : nd->desc.domain_hi;
        P.bounded = 1;
    }
    if (nd->type->workspace) {
        size_t w0 = nd->type->workspace(nd->self, P.cap, 0);
        size_t w1 = nd->type->workspace(nd->self, P.cap, 1);
        P.ws_bytes = w0 > w1 ? w0 : w1;
    }
    if (posix_memalign(&P.ws, 64, P.ws_bytes ? P.ws_bytes : 64) != 0)
        P.ws = NULL;
    B.z = malloc(nd_el * sizeof *B.z);
    B.xb = malloc(nd_el * sizeof *B.xb);
    B.ld = malloc(n * sizeof *B.ld);
    B.ld2 = malloc(n * sizeof *B.ld2);
    ld0 = malloc(n * sizeof *ld0);
    if (P.k)
        P.cbuf = malloc(P.cap * P.k * sizeof *P.cbuf);
    if (fd) {
        size_t rows = (FD_POINTS - 1) * d + 1;
        B.W.xs = malloc(rows * d * sizeof *B.W.xs);
        B.W.ys = malloc(rows * d * sizeof *B.W.ys);
        B.W.ld = malloc(rows * sizeof *B.W.ld);
        B.W.steps = malloc(FD_POINTS * d * sizeof *B.W.steps);
        B.W.J = malloc(d * d * sizeof *B.W.J);
        B.W.U = malloc(d * d * sizeof *B.W.U);
        B.W.A = malloc(d * d * sizeof *B.W.A);
    }
    if (!P.ws || !B.z || !B.xb || !B.ld || !B.ld2 || !ld0
        || (P.k && !P.cbuf)
        || (fd && (!B.W.xs || !B.W.ys || !B.W.ld || !B.W.steps || !B.W.J
                   || !B.W.U || !B.W.A))) {
        rc = model_error(m, FLOW_ERR_NOMEM, "%s: out of memory for the "
                         "plugin probe", nd->label);
        goto done;
    }
    bad = checks(&P, fd, n, x, cv, &B, &rt_err, &fd_err, &fd_rows);
    if (!bad && nd->desc.n_params) {
        size_t again = 0;       /* the same rows: counted once */
        int pr;
        memcpy(ld0, B.ld, n * sizeof *ld0);
        pr = perturbed(&P, fd, n, x, cv, &B, ld0, &rt_err, &fd_err,
                       &again, &s_used);
        if (pr == -2) {
            rc = model_error(m, FLOW_ERR_NOMEM, "%s: out of memory or "
                             "prepare failed after the plugin probe: %s",
                             nd->label, layer_msg(&P));
            goto done;
        }
        bad = pr != 0;
        if (s_used > 0)
            snprintf(moved, sizeof moved, " (parameters as they are and "
                     "moved by %.3g x N(0, 1))", s_used);
        else
            snprintf(moved, sizeof moved, " (parameters as they are; no "
                     "perturbation kept the log-det near)");
    }
    layer_where(nd, where, sizeof where);
    if (bad) {
        rc = model_error(m, FLOW_ERR_NUMERIC, "%s: plugin check failed: "
                         "%s; run `flowkit check %s --plugin %s --dim %zu` "
                         "for the full report", where, P.msg,
                         nd->type->name, nd->file, d);
        goto done;
    }
    if (!nd->desc.logdet_exact || (nd->desc.flags & FLOW_LAYER_STOCHASTIC))
        snprintf(why, sizeof why, "skipped (estimated log-det)");
    else if (d > PROBE_FD_MAX_DIM)
        snprintf(why, sizeof why, "skipped (D = %zu > %d, the probe's cost "
                 "cap)", d, PROBE_FD_MAX_DIM);
    else if (!fd_rows)
        snprintf(why, sizeof why, "skipped (rows on the domain's edge)");
    else
        snprintf(why, sizeof why, "error %.2g on %zu row%s", fd_err,
                 fd_rows, fd_rows == 1 ? "" : "s");
    if (isnan(rt_err))
        notef(note, arg, "%s: no inverse (round trip skipped); log-det vs "
              "FD Jacobian %s%s", where, why, moved);
    else
        notef(note, arg, "%s: round trip error %.2g on %zu row%s; log-det "
              "vs FD Jacobian %s%s", where, rt_err, n, n == 1 ? "" : "s",
              why, moved);
done:
    free(P.ws);
    free(P.cbuf);
    free(B.z);
    free(B.xb);
    free(B.ld);
    free(B.ld2);
    free(ld0);
    fd_work_free(&B.W);
    return rc;
}

/* ------------------------------------------------------------ the model */

static int in_scope(const flow_model *m, const node *nd,
                    flow_verify_scope scope)
{
    return nd->kind == NODE_LAYER
           && (scope == FLOW_VERIFY_ALL
               || !loader_plugin_bundled(m->ctx, nd->file));
}

int flow_model_verify_layers(flow_model *m, size_t n, const flow_real *x,
                             const flow_real *c, flow_verify_scope scope,
                             flow_verify_note_fn note, void *arg,
                             size_t *n_probed)
{
    size_t rows = n < PROBE_ROWS ? n : PROBE_ROWS, todo = 0, done = 0;
    flow_real *keep_buf = NULL, *z = NULL;
    flow_rng keep_rng;
    int keep_training, rc;

    if (n_probed)
        *n_probed = 0;
    if ((rc = model_check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if (scope != FLOW_VERIFY_THIRD_PARTY && scope != FLOW_VERIFY_ALL)
        return model_error(m, FLOW_ERR_INVAL, "verify layers: unknown "
                           "scope %d", (int)scope);
    for (size_t i = 0; i < m->n_nodes; i++)
        todo += in_scope(m, &m->nodes[i], scope);
    if (!todo)
        return FLOW_OK;
    /* the probe leaves no trace: a forward pass in evaluation mode
     * changes no buffer of the bundled layers, but a plugin's might, and
     * stochastic layers draw from the model's stream */
    keep_rng = m->rng;
    keep_training = m->training;
    if (m->n_buffers
        && !(keep_buf = malloc(m->n_buffers * sizeof *keep_buf)))
        return model_error(m, FLOW_ERR_NOMEM, "out of memory for the plugin "
                           "probe");
    if (!(z = malloc(rows * m->dim * sizeof *z))) {
        free(keep_buf);
        return model_error(m, FLOW_ERR_NOMEM, "out of memory for the plugin "
                           "probe");
    }
    if (keep_buf)
        memcpy(keep_buf, m->buffers, m->n_buffers * sizeof *keep_buf);
    m->training = 0;
    /* each layer's input rows: the activations of an evaluation-mode
     * forward pass (m->act[i] enters node i) */
    rc = exec_forward(m, rows, x, c, z, 0, EXEC_TAPE);
    for (size_t i = 0; rc == FLOW_OK && i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (!in_scope(m, nd, scope))
            continue;
        rc = probe_node(m, nd, rows, m->act[i], nd->given ? c : NULL, note,
                        arg);
        done += rc == FLOW_OK;
    }
    m->rng = keep_rng;
    m->training = keep_training;
    if (keep_buf)
        memcpy(m->buffers, keep_buf, m->n_buffers * sizeof *keep_buf);
    free(keep_buf);
    free(z);
    if (n_probed)
        *n_probed = done;
    return rc;
}
