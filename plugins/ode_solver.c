/* ode_solver.c - fixed-step RK4 and adaptive Dormand-Prince 5(4) on flat
 * flow_real states, with backprop through the recorded steps and the
 * adjoint method.  Compiled into the ode plugin and into the test runner. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ode_solver.h"

#define ALIGN 64
#define MAX_STAGES 7

/* Butcher tableaux.  RK4: the classical method (Kutta 1901; Hairer,
 * Norsett & Wanner, Solving ODEs I, table II.1.2).  DOPRI5: Dormand &
 * Prince 1980, table 2 (HNW I, table II.5.2): 5th-order weights b (equal
 * to row 7 of a, "first same as last"), error weights e = b - b* with the
 * embedded 4th-order b*. */
typedef struct tableau {
    int s;                      /* stages evaluated per step */
    int s_upd;                  /* stages that enter the update (b != 0) */
    double c[MAX_STAGES];
    double a[MAX_STAGES][MAX_STAGES];
    double b[MAX_STAGES];
    double e[MAX_STAGES];
} tableau;

static const tableau rk4_tab = {
    .s = 4, .s_upd = 4,
    .c = {0, 0.5, 0.5, 1},
    .a = {{0}, {0.5}, {0, 0.5}, {0, 0, 1}},
    .b = {1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6},
};

static const tableau dopri5_tab = {
    .s = 7, .s_upd = 6,
    .c = {0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1, 1},
    .a = {{0},
          {1.0 / 5},
          {3.0 / 40, 9.0 / 40},
          {44.0 / 45, -56.0 / 15, 32.0 / 9},
          {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
          {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176,
           -5103.0 / 18656},
          {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784,
           11.0 / 84}},
    .b = {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784,
          11.0 / 84, 0},
    .e = {71.0 / 57600, 0, -71.0 / 16695, 71.0 / 1920, -17253.0 / 339200,
          22.0 / 525, -1.0 / 40},
};

/* Step-size control (HNW I, sec. II.4, eq. 4.13): h_new = h min(FAC_MAX,
 * max(FAC_MIN, SAFETY err^(-1/5))), no growth right after a rejection. */
#define SAFETY 0.9
#define FAC_MIN 0.2
#define FAC_MAX 10.0

static const tableau *tab_of(const ode_opts *o)
{
    return o->method == ODE_DOPRI5 ? &dopri5_tab : &rk4_tab;
}

/* --- workspace ---------------------------------------------------------- */

static size_t round_up(size_t b)
{
    return (b + ALIGN - 1) / ALIGN * ALIGN;
}

/* bytes of `count` items of `size`, aligned; SIZE_MAX / 2 on overflow */
static size_t bytes_of(size_t count, size_t size)
{
    if (size && count > (SIZE_MAX / 4) / size)
        return SIZE_MAX / 2;
    return round_up(count * size);
}

static size_t add_sat(size_t a, size_t b)
{
    return a > SIZE_MAX / 2 - b ? SIZE_MAX / 2 : a + b;
}

static size_t mul_sat(size_t a, size_t b)
{
    return b && a > (SIZE_MAX / 2) / b ? SIZE_MAX / 2 : a * b;
}

static flow_real *take(char **cur, size_t count)
{
    flow_real *p = (flow_real *)(void *)*cur;
    *cur += bytes_of(count, sizeof(flow_real));
    return p;
}

size_t ode_tape_steps(const ode_opts *o)
{
    return o->method == ODE_DOPRI5 ? o->max_steps : o->steps;
}

size_t ode_tape_stages(const ode_opts *o)
{
    return (size_t)tab_of(o)->s_upd;
}

size_t ode_ws_solve(const ode_opts *o, size_t m)
{
    /* k_1..k_s, a stage input, the new state, the error vector */
    return mul_sat((size_t)tab_of(o)->s + 3, bytes_of(m, sizeof(flow_real)));
}

size_t ode_ws_backprop(const ode_opts *o, size_t m)
{
    /* cotangents of the stage slopes, of one stage input, a difference */
    return mul_sat((size_t)tab_of(o)->s_upd + 2,
                   bytes_of(m, sizeof(flow_real)));
}

size_t ode_ws_adjoint(const ode_opts *o, size_t m, size_t np)
{
    size_t big = add_sat(2 * m, np);
    /* augmented state, f at an end point, then a solve of the big system */
    return add_sat(add_sat(bytes_of(big, sizeof(flow_real)),
                           bytes_of(m, sizeof(flow_real))),
                   ode_ws_solve(o, big));
}

size_t ode_ws_tape(const ode_opts *o, size_t m)
{
    size_t cap = ode_tape_steps(o);
    size_t per = mul_sat(ode_tape_stages(o), m);
    return add_sat(bytes_of(mul_sat(cap, per), sizeof(flow_real)),
                   2 * bytes_of(cap, sizeof(double)));
}

void ode_tape_carve(const ode_opts *o, size_t m, void *ws, ode_tape *tape)
{
    char *cur = ws;
    size_t cap = ode_tape_steps(o);
    tape->cap = cap;
    tape->steps = 0;
    tape->y = take(&cur, cap * ode_tape_stages(o) * m);
    tape->t = (double *)(void *)cur;
    cur += bytes_of(cap, sizeof(double));
    tape->h = (double *)(void *)cur;
}

/* --- helpers ------------------------------------------------------------ */

static int fail(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (err && cap) {
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return FLOW_ERR_NUMERIC;
}

static int all_finite(const flow_real *v, size_t m)
{
    for (size_t i = 0; i < m; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static double rms_norm(const flow_real *err, const flow_real *ya,
                       const flow_real *yb, size_t m, double rtol,
                       double atol)
{
    double s = 0;
    for (size_t i = 0; i < m; i++) {
        double sc = atol + rtol * fmax(fabs(ya[i]), fabs(yb[i]));
        double q = err[i] / sc;
        s += q * q;
    }
    return m ? sqrt(s / (double)m) : 0;
}

static double norm_of(const ode_sys *s, const flow_real *err,
                      const flow_real *ya, const flow_real *yb, double rtol,
                      double atol)
{
    return s->norm ? s->norm(s->env, err, ya, yb, rtol, atol)
                   : rms_norm(err, ya, yb, s->m, rtol, atol);
}

/* out = y + h sum_{j < n} w[j] k[j] (double accumulation) */
static void combine(size_t m, const flow_real *y, double h, const double *w,
                    int n, flow_real *const *k, flow_real *out)
{
    for (size_t i = 0; i < m; i++) {
        double v = 0;
        for (int j = 0; j < n; j++)
            if (w[j] != 0)
                v += w[j] * k[j][i];
        out[i] = (flow_real)(y[i] + h * v);
    }
}

static int eval(const ode_sys *s, double t, const flow_real *y, flow_real *dy,
                ode_stats *st, char *err, size_t cap)
{
    int rc = s->f(s->env, t, y, dy);
    st->nfe++;
    if (rc != FLOW_OK)
        return err && err[0] ? rc
                             : fail(err, cap, "dynamics failed at t = %g", t);
    return FLOW_OK;
}

typedef struct scratch {
    flow_real *k[MAX_STAGES], *ys, *ynew, *ev;
} scratch;

static void carve_solve(const tableau *tb, size_t m, void *ws, scratch *w)
{
    char *cur = ws;
    for (int i = 0; i < tb->s; i++)
        w->k[i] = take(&cur, m);
    w->ys = take(&cur, m);
    w->ynew = take(&cur, m);
    w->ev = take(&cur, m);
}

/* One explicit RK step from (t, y) with k[0] = f(t, y) given: stage inputs
 * into Y[i] (NULL: scratch), the new state into ynew, the error estimate
 * into ev (DOPRI5). */
static int rk_step(const ode_sys *s, const tableau *tb, double t, double h,
                   const flow_real *y, flow_real *tape_y, scratch *w,
                   ode_stats *st, char *err, size_t cap)
{
    size_t m = s->m;
    int rc;
    if (tape_y)
        memcpy(tape_y, y, m * sizeof *y);
    for (int i = 1; i < tb->s; i++) {
        /* DOPRI5's last stage is evaluated at the new state itself */
        int at_new = i == tb->s_upd;
        flow_real *yi = at_new ? w->ynew
                        : tape_y ? tape_y + (size_t)i * m : w->ys;
        combine(m, y, h, tb->a[i], i, w->k, yi);
        if ((rc = eval(s, t + tb->c[i] * h, yi, w->k[i], st, err, cap))
            != FLOW_OK)
            return rc;
    }
    if (tb->s == tb->s_upd)
        combine(m, y, h, tb->b, tb->s, w->k, w->ynew);
    else
        for (size_t i = 0; i < m; i++) {
            double v = 0;
            for (int j = 0; j < tb->s; j++)
                v += tb->e[j] * w->k[j][i];
            w->ev[i] = (flow_real)(h * v);
        }
    return FLOW_OK;
}

static int solve_rk4(const ode_sys *s, const ode_opts *o, double ta,
                     double tb, flow_real *y, scratch *w, ode_tape *tape,
                     ode_stats *st, char *err, size_t cap)
{
    size_t m = s->m, n = o->steps;
    double h = (tb - ta) / (double)n;
    int rc;
    for (size_t k = 0; k < n; k++) {
        /* t_k from ta directly: no drift in the grid */
        double t = ta + (double)k * h;
        flow_real *ty = tape ? tape->y + k * 4 * m : NULL;
        if ((rc = eval(s, t, y, w->k[0], st, err, cap)) != FLOW_OK
            || (rc = rk_step(s, &rk4_tab, t, h, y, ty, w, st, err, cap))
                   != FLOW_OK)
            return rc;
        if (!all_finite(w->ynew, m))
            return fail(err, cap, "rk4: the state became non-finite at "
                        "t = %g (step %zu of %zu); the dynamics may be too "
                        "stiff for %zu steps", t + h, k + 1, n, n);
        memcpy(y, w->ynew, m * sizeof *y);
        if (tape) {
            tape->t[k] = t;
            tape->h[k] = h;
            tape->steps = k + 1;
        }
        st->steps++;
    }
    return FLOW_OK;
}

/* Initial step (HNW I, sec. II.4, "starting step size", p. 169), with
 * f0 = f(ta, y) in k[0]; one more evaluation. */
static int initial_step(const ode_sys *s, const ode_opts *o, double ta,
                        double tb, const flow_real *y, scratch *w,
                        ode_stats *st, char *err, size_t cap, double *h_out)
{
    size_t m = s->m;
    double d0, d1, d2, h0, h1, span = fabs(tb - ta), dir = tb > ta ? 1 : -1;
    int rc;
    d0 = norm_of(s, y, y, y, o->rtol, o->atol);
    d1 = norm_of(s, w->k[0], y, y, o->rtol, o->atol);
    h0 = d0 < 1e-5 || d1 < 1e-5 ? 1e-6 : 0.01 * d0 / d1;
    h0 = fmin(h0, span);
    for (size_t i = 0; i < m; i++)
        w->ys[i] = (flow_real)(y[i] + dir * h0 * w->k[0][i]);
    if ((rc = eval(s, ta + dir * h0, w->ys, w->k[1], st, err, cap))
        != FLOW_OK)
        return rc;
    for (size_t i = 0; i < m; i++)
        w->ev[i] = (flow_real)((w->k[1][i] - w->k[0][i]) / h0);
    d2 = norm_of(s, w->ev, y, y, o->rtol, o->atol);
    if (fmax(d1, d2) <= 1e-15)
        h1 = fmax(1e-6, h0 * 1e-3);
    else
        h1 = pow(0.01 / fmax(d1, d2), 1.0 / 5);
    *h_out = fmin(fmin(100 * h0, h1), span);
    if (!(*h_out > 0))
        *h_out = span * 1e-3;
    return FLOW_OK;
}

static int solve_dopri5(const ode_sys *s, const ode_opts *o, double ta,
                        double tb, flow_real *y, scratch *w, ode_tape *tape,
                        ode_stats *st, char *err, size_t cap)
{
    size_t m = s->m, attempts = 0, acc = 0;
    double dir = tb > ta ? 1 : -1, t = ta, habs;
    int rc, rejected = 0;
    if ((rc = eval(s, ta, y, w->k[0], st, err, cap)) != FLOW_OK
        || (rc = initial_step(s, o, ta, tb, y, w, st, err, cap, &habs))
               != FLOW_OK)
        return rc;
    while (dir * (tb - t) > 0) {
        double h, en, fac;
        int last = 0;
        flow_real *ty;
        if (attempts++ >= o->max_steps)
            return fail(err, cap, "dopri5: no solution within max_steps = "
                        "%zu step attempts (%zu accepted, reached t = %g on "
                        "the way from %g to %g); raise max_steps or loosen "
                        "rtol/atol", o->max_steps, acc, t, ta, tb);
        if (habs >= fabs(tb - t)) {
            habs = fabs(tb - t);
            last = 1;
        }
        if (habs <= 1e-14 * fmax(1.0, fabs(t)))
            return fail(err, cap, "dopri5: step size underflow (h = %g) at "
                        "t = %g: the dynamics are too stiff for rtol = %g, "
                        "atol = %g", habs, t, o->rtol, o->atol);
        h = dir * habs;
        ty = tape ? tape->y + acc * 6 * m : NULL;
        if ((rc = rk_step(s, &dopri5_tab, t, h, y, ty, w, st, err, cap))
            != FLOW_OK)
            return rc;
        en = all_finite(w->ynew, m) && all_finite(w->ev, m)
                 ? norm_of(s, w->ev, y, w->ynew, o->rtol, o->atol)
                 : INFINITY;
        if (en <= 1) {
            if (tape) {
                tape->t[acc] = t;
                tape->h[acc] = h;
                tape->steps = acc + 1;
            }
            acc++;
            st->steps++;
            t = last ? tb : t + h;
            memcpy(y, w->ynew, m * sizeof *y);
            /* first same as last: k7 is f at the new state */
            memcpy(w->k[0], w->k[6], m * sizeof *y);
            fac = en > 0 ? SAFETY * pow(en, -1.0 / 5) : FAC_MAX;
            fac = fmin(rejected ? 1.0 : FAC_MAX, fmax(FAC_MIN, fac));
            rejected = 0;
        } else {
            st->rejected++;
            rejected = 1;
            fac = isfinite(en) ? fmax(FAC_MIN, SAFETY * pow(en, -1.0 / 5))
                               : FAC_MIN;
            fac = fmin(1.0, fac);
        }
        habs *= fac;
    }
    return FLOW_OK;
}

int ode_solve(const ode_sys *s, const ode_opts *o, double ta, double tb,
              flow_real *y, void *ws, ode_tape *tape, ode_stats *st,
              char *err, size_t err_cap)
{
    scratch w;
    if (!all_finite(y, s->m))
        return fail(err, err_cap, "non-finite initial state");
    if (tape)
        tape->steps = 0;
    if (ta == tb)
        return FLOW_OK;
    carve_solve(tab_of(o), s->m, ws, &w);
    return o->method == ODE_DOPRI5
               ? solve_dopri5(s, o, ta, tb, y, &w, tape, st, err, err_cap)
               : solve_rk4(s, o, ta, tb, y, &w, tape, st, err, err_cap);
}

/* --- backprop through the recorded steps ------------------------------- */

int ode_backprop(const ode_sys *s, const ode_opts *o, double ta, double tb,
                 const ode_tape *tape, const flow_real *yb, flow_real *a,
                 flow_real *gp, double *gta, double *gtb, void *ws,
                 ode_stats *st, char *err, size_t err_cap)
{
    const tableau *tab = tab_of(o);
    size_t m = s->m, S = (size_t)tab->s_upd;
    flow_real *kbar[MAX_STAGES], *ybar_s, *diff;
    double span = tb - ta, d_ta = 0, d_tb = 0;
    int times = gta || gtb, rc;
    char *cur = ws;
    for (size_t i = 0; i < S; i++)
        kbar[i] = take(&cur, m);
    ybar_s = take(&cur, m);
    diff = take(&cur, m);
    for (size_t k = tape->steps; k-- > 0;) {
        const flow_real *Y = tape->y + k * S * m;
        const flow_real *ynext = k + 1 < tape->steps ? Y + S * m : yb;
        if (times && !ynext)
            return fail(err, err_cap, "time gradients need y(tb)");
        double h = tape->h[k], t = tape->t[k], hbar = 0;
        /* y_{k+1} = y_k + h sum_s b_s k_s: cotangents of the slopes */
        for (size_t q = 0; q < S; q++)
            for (size_t i = 0; i < m; i++)
                kbar[q][i] = (flow_real)(h * tab->b[q] * a[i]);
        if (times)
            for (size_t i = 0; i < m; i++)
                hbar += (double)a[i] * ((double)ynext[i] - Y[i]) / h;
        for (size_t q = S; q-- > 0;) {
            const flow_real *Yq = Y + q * m;
            double tbar = 0;
            rc = s->vjp(s->env, t + tab->c[q] * h, Yq, kbar[q], NULL, ybar_s,
                        gp, times ? &tbar : NULL);
            st->nfe++;
            if (rc != FLOW_OK)
                return err && err[0] ? rc : fail(err, err_cap, "dynamics "
                                                 "VJP failed at t = %g", t);
            /* Y_q = y_k + h sum_{j<q} a_qj k_j */
            for (size_t j = 0; j < q; j++)
                if (tab->a[q][j] != 0)
                    for (size_t i = 0; i < m; i++)
                        kbar[j][i] = (flow_real)(kbar[j][i] + h * tab->a[q][j]
                                                 * ybar_s[i]);
            if (times) {
                double sk = (t - ta) / span, sig = h / span;
                for (size_t i = 0; q && i < m; i++)
                    hbar += (double)ybar_s[i] * ((double)Yq[i] - Y[i]) / h;
                d_tb += tbar * (sk + tab->c[q] * sig);
                d_ta += tbar * (1 - sk - tab->c[q] * sig);
            }
            for (size_t i = 0; i < m; i++)
                diff[i] = (flow_real)(q + 1 == S ? a[i] + ybar_s[i]
                                                 : diff[i] + ybar_s[i]);
        }
        memcpy(a, diff, m * sizeof *a);
        if (times) {
            double sig = h / span;
            d_tb += hbar * sig;
            d_ta -= hbar * sig;
        }
    }
    if (gta)
        *gta = d_ta;
    if (gtb)
        *gtb = d_tb;
    return FLOW_OK;
}

/* --- adjoint ---------------------------------------------------------- */

/* The augmented system [y, a, g] of Chen et al. 2018, eqs. 4-5. */
typedef struct aug_env {
    const ode_sys *s;
} aug_env;

static int aug_f(void *env, double t, const flow_real *Y, flow_real *dY)
{
    const ode_sys *s = ((aug_env *)env)->s;
    size_t m = s->m, np = s->np;
    int rc;
    memset(dY + 2 * m, 0, np * sizeof *dY);
    rc = s->vjp(s->env, t, Y, Y + m, dY, dY + m, dY + 2 * m, NULL);
    if (rc != FLOW_OK)
        return rc;
    for (size_t i = m; i < 2 * m + np; i++)
        dY[i] = -dY[i];
    return FLOW_OK;
}

/* the seminorm: y and a, never the parameter gradient */
static double aug_norm(void *env, const flow_real *e, const flow_real *ya,
                       const flow_real *yb, double rtol, double atol)
{
    const ode_sys *s = ((aug_env *)env)->s;
    size_t m = s->m;
    return fmax(norm_of(s, e, ya, yb, rtol, atol),
                norm_of(s, e + m, ya + m, yb + m, rtol, atol));
}

static double dot(const flow_real *u, const flow_real *v, size_t m)
{
    double d = 0;
    for (size_t i = 0; i < m; i++)
        d += (double)u[i] * v[i];
    return d;
}

int ode_adjoint(const ode_sys *s, const ode_opts *o, double ta, double tb,
                flow_real *y, flow_real *a, flow_real *gp, double *gta,
                double *gtb, void *ws, ode_stats *st, char *err,
                size_t err_cap)
{
    size_t m = s->m, np = s->np, big = 2 * m + np;
    aug_env env = {s};
    ode_sys aug = {big, 0, &env, aug_f, NULL, aug_norm};
    ode_stats ast = {0, 0, 0};
    char *cur = ws;
    flow_real *Y = take(&cur, big), *fb = take(&cur, m);
    int rc;
    if (gtb) {
        if ((rc = eval(s, tb, y, fb, st, err, err_cap)) != FLOW_OK)
            return rc;
        *gtb = dot(a, fb, m);
    }
    memcpy(Y, y, m * sizeof *Y);
    memcpy(Y + m, a, m * sizeof *Y);
    memset(Y + 2 * m, 0, np * sizeof *Y);
    rc = ode_solve(&aug, o, tb, ta, Y, cur, NULL, &ast, err, err_cap);
    st->nfe += ast.nfe;
    st->steps += ast.steps;
    st->rejected += ast.rejected;
    if (rc != FLOW_OK)
        return rc;
    memcpy(y, Y, m * sizeof *y);
    memcpy(a, Y + m, m * sizeof *a);
    for (size_t i = 0; i < np; i++)
        gp[i] = (flow_real)(gp[i] + Y[2 * m + i]);
    if (gta) {
        if ((rc = eval(s, ta, y, fb, st, err, err_cap)) != FLOW_OK)
            return rc;
        *gta = -dot(a, fb, m);
    }
    return FLOW_OK;
}
