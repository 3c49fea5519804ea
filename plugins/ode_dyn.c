/* ode_dyn.c - the ode layer's dynamics: an MLP vector field, the trace of
 * its Jacobian (exact or Hutchinson) and the VJPs of both. */
#include <math.h>
#include <string.h>

#include "ode_dyn.h"

#define ALIGN 64

static size_t round_up(size_t b)
{
    return (b + ALIGN - 1) / ALIGN * ALIGN;
}

static size_t reals(size_t count)
{
    if (count > (SIZE_MAX / 4) / sizeof(flow_real))
        return SIZE_MAX / 8;
    return round_up(count * sizeof(flow_real));
}

static flow_real *take(char **cur, size_t count)
{
    flow_real *p = (flow_real *)(void *)*cur;
    *cur += reals(count);
    return p;
}

int ode_dyn_has_div(const flow_host *h, const flow_net *net)
{
    size_t sc = 0;
    return FLOW_HOST_HAS(h, net_div_backward) && h->net_div_workspace
           && h->net_div_forward && h->net_div_backward
           && h->net_div_workspace(net, 1, &sc) > 0;
}

/* the div tape and scratch (0 without net_div) */
static size_t div_bytes(const flow_host *h, const flow_net *net, size_t n,
                        size_t *tape)
{
    size_t sc = 0;
    *tape = 0;
    if (!ode_dyn_has_div(h, net))
        return 0;
    *tape = h->net_div_workspace(net, n, &sc);
    if (!*tape || !sc)
        return SIZE_MAX / 4;
    return *tape > SIZE_MAX / 8 || sc > SIZE_MAX / 8 ? SIZE_MAX / 4
                                                     : *tape + sc;
}

size_t ode_dyn_rec_ws(const flow_host *h, const flow_net *net, size_t n,
                      size_t slots)
{
    size_t tape;
    div_bytes(h, net, n, &tape);
    if (!tape || !slots)
        return 0;
    if (tape > SIZE_MAX / 8 / slots)
        return SIZE_MAX / 4;
    return tape * slots + reals(slots * sizeof(double) / sizeof(flow_real)
                                + 1);
}

void ode_dyn_rec_carve(ode_dyn *e, void *ws, size_t slots)
{
    size_t tape;
    div_bytes(e->host, e->net, e->n, &tape);
    e->rec = 0;
    e->rec_cap = tape ? slots : 0;
    e->rec_stride = tape;
    e->rec_tapes = tape && slots ? ws : NULL;
    e->rec_t = e->rec_tapes ? (double *)(void *)(e->rec_tapes + tape * slots)
                            : NULL;
}

size_t ode_dyn_ws(const flow_host *h, const flow_net *net, size_t n, size_t d,
                  size_t k)
{
    size_t w = n * (d + k), b = 4 * reals(w) + 3 * reals(n * d) + reals(n);
    size_t nb = h->net_workspace(net, n), tape, db = div_bytes(h, net, n,
                                                                &tape);
    return nb > SIZE_MAX / 8 || db > SIZE_MAX / 8 ? SIZE_MAX / 4
                                                   : b + nb + db;
}

void ode_dyn_carve(ode_dyn *e, void *ws)
{
    size_t w = e->n * (e->d + e->k), nd = e->n * e->d, tape;
    size_t db = div_bytes(e->host, e->net, e->n, &tape);
    char *cur = ws;
    e->xa = take(&cur, w);
    e->tx = take(&cur, w);
    e->dxa = take(&cur, w);
    e->dxb = take(&cur, w);
    e->ty = take(&cur, nd);
    e->dty = take(&cur, nd);
    e->fo = take(&cur, nd);
    e->tro = take(&cur, e->n);
    e->div_tape = e->div_scratch = NULL;
    if (db) {
        e->div_tape = cur;
        e->div_scratch = cur + tape;
        cur += db;
    }
    e->net_ws = cur;
}

/* --- the dynamics as an ode_sys ----------------------------------------
 * State y = [z (n x D) | l (n)], dy/dt = [f(z, t) | tr(df/dz)] (Chen et
 * al. 2018, thm. 1: l(tb) - l(ta) = log|det dz(tb)/dz(ta)|). */

/* [z | context] rows for the net (z itself without context) */
static const flow_real *net_input(const ode_dyn *e, const flow_real *z)
{
    size_t w = e->d + e->k;
    if (!e->k)
        return z;
    for (size_t r = 0; r < e->n; r++) {
        memcpy(e->xa + r * w, z + r * e->d, e->d * sizeof *z);
        memcpy(e->xa + r * w + e->d, e->ctx + r * e->k, e->k * sizeof *z);
    }
    return e->xa;
}

static int net_fail(const ode_dyn *e, const char *what, int rc)
{
    return e->host->error(e->c, "dynamics network: %s failed (status "
                             "%d)", what, rc);
}

/* After net_forward on the current tape: tr (n, when not NULL) = the
 * trace of df/dz per row, exact (D JVPs with the unit vectors) or
 * Hutchinson's e^T (df/dz) e (Hutchinson 1990; Grathwohl et al. 2019,
 * eq. 7).  With wl (n) not NULL, also the VJP of sum_r wl[r] tr[r]
 * (net_jvp_backward, docs/runtime.md): += into gx (n x (D + K)) and the
 * parameter gradient gp. */
static int trace_pass(const ode_dyn *e, flow_real *tr, const flow_real *wl,
                      flow_real *gx, flow_real *gp)
{
    const flow_host *h = e->host;
    const flow_net *net = e->net;
    size_t n = e->n, d = e->d, wd = d + e->k;
    const flow_real *p = e->params;
    int rc;
    memset(e->tx, 0, n * wd * sizeof *e->tx);
    if (wl)
        memset(e->dty, 0, n * d * sizeof *e->dty);
    if (e->eps) {
        for (size_t r = 0; r < n; r++)
            memcpy(e->tx + r * wd, e->eps + r * d, d * sizeof *e->tx);
        if ((rc = h->net_jvp(net, p, n, e->net_ws, e->tx, e->ty)) != FLOW_OK)
            return net_fail(e, "JVP", rc);
        for (size_t r = 0; tr && r < n; r++) {
            double s = 0;
            for (size_t j = 0; j < d; j++)
                s += (double)e->eps[r * d + j] * e->ty[r * d + j];
            tr[r] = (flow_real)s;
        }
        if (!wl)
            return FLOW_OK;
        for (size_t r = 0; r < n; r++)
            for (size_t j = 0; j < d; j++)
                e->dty[r * d + j] = wl[r] * e->eps[r * d + j];
        rc = h->net_jvp_backward(net, p, n, e->net_ws, e->tx, e->dty, e->dxb,
                                 NULL, gp);
        if (rc != FLOW_OK)
            return net_fail(e, "JVP backward", rc);
        for (size_t i = 0; i < n * wd; i++)
            gx[i] += e->dxb[i];
        return FLOW_OK;
    }
    if (tr)
        memset(tr, 0, n * sizeof *tr);
    for (size_t i = 0; i < d; i++) {
        for (size_t r = 0; r < n; r++) {
            e->tx[r * wd + i] = 1;
            if (i)
                e->tx[r * wd + i - 1] = 0;
        }
        if ((rc = h->net_jvp(net, p, n, e->net_ws, e->tx, e->ty)) != FLOW_OK)
            return net_fail(e, "JVP", rc);
        for (size_t r = 0; tr && r < n; r++)
            tr[r] += e->ty[r * d + i];
        if (!wl)
            continue;
        for (size_t r = 0; r < n; r++) {
            e->dty[r * d + i] = wl[r];
            if (i)
                e->dty[r * d + i - 1] = 0;
        }
        rc = h->net_jvp_backward(net, p, n, e->net_ws, e->tx, e->dty, e->dxb,
                                 NULL, gp);
        if (rc != FLOW_OK)
            return net_fail(e, "JVP backward", rc);
        for (size_t q = 0; q < n * wd; q++)
            gx[q] += e->dxb[q];
    }
    return FLOW_OK;
}

/* The trace through net_div: y and its trace in one stacked pass, on the
 * given tape */
static int div_forward(const ode_dyn *e, void *tape, double t,
                       const flow_real *z, flow_real *f, flow_real *tr)
{
    int rc = e->host->net_div_forward(e->net, e->params, e->n,
                                      net_input(e, z), t, e->eps, f, tr,
                                      tape, e->div_scratch);
    return rc == FLOW_OK ? FLOW_OK : net_fail(e, "divergence", rc);
}

static int dyn_f(void *env, double t, const flow_real *y, flow_real *dy)
{
    ode_dyn *e = env;
    int rc;
    if (e->no_trace) {
        /* f alone: net_div without tangent rows (its primal rows are the
         * same products as with them) or net_forward, whichever the
         * trace would have come with, so z keeps its bits */
        memset(dy + e->n * e->d, 0, e->n * sizeof *dy);
        if (e->div_tape)
            return div_forward(e, e->div_tape, t, y, dy, NULL);
        rc = e->host->net_forward(e->net, e->params, e->n, net_input(e, y),
                                  NULL, t, dy, e->net_ws);
        return rc == FLOW_OK ? FLOW_OK : net_fail(e, "forward", rc);
    }
    if (e->div_tape) {
        void *tape = e->div_tape;
        if (e->rec_tapes && e->rec < e->rec_cap) {
            tape = e->rec_tapes + e->rec * e->rec_stride;
            e->rec_t[e->rec++] = t;
        }
        return div_forward(e, tape, t, y, dy, dy + e->n * e->d);
    }
    rc = e->host->net_forward(e->net, e->params, e->n, net_input(e, y), NULL,
                              t, dy, e->net_ws);
    if (rc != FLOW_OK)
        return net_fail(e, "forward", rc);
    return trace_pass(e, dy + e->n * e->d, NULL, NULL, NULL);
}

/* VJP of [f | tr] at (t, y) with the cotangent wv = [wz | wl]: gy = [wz^T
 * df/dz + wl d tr/dz | 0] (nothing depends on l); gp = [params | context]
 * gradients, accumulated. */
static int dyn_vjp(void *env, double t, const flow_real *y,
                   const flow_real *wv, flow_real *fy, flow_real *gy,
                   flow_real *gp, double *gt)
{
    ode_dyn *e = env;
    size_t n = e->n, d = e->d, k = e->k, wd = d + k;
    const flow_real *wl = wv + n * d;
    int rc, any = 0;
    (void)gt;                   /* t0, t1 are not trained */
    if (e->div_tape) {
        void *tape = e->div_tape;
        /* the forward's tape of this evaluation when recorded (same
         * slot order reversed, same time); else recompute */
        if (!fy && e->rec_tapes && e->rec > 0 && e->rec_t[e->rec - 1] == t) {
            tape = e->rec_tapes + --e->rec * e->rec_stride;
        } else {
            rc = div_forward(e, tape, t, y, fy ? fy : e->fo,
                             fy ? fy + n * d : e->tro);
            if (rc != FLOW_OK)
                return rc;
        }
        rc = e->host->net_div_backward(e->net, e->params, n, tape,
                                       e->div_scratch, e->eps, wv, wl, e->dxa,
                                       gp);
        if (rc != FLOW_OK)
            return net_fail(e, "divergence backward", rc);
        goto out;
    }
    rc = e->host->net_forward(e->net, e->params, n, net_input(e, y), NULL, t,
                              fy ? fy : e->fo, e->net_ws);
    if (rc != FLOW_OK)
        return net_fail(e, "forward", rc);
    rc = e->host->net_backward(e->net, e->params, n, e->net_ws, wv, e->dxa,
                               NULL, gp);
    if (rc != FLOW_OK)
        return net_fail(e, "backward", rc);
    for (size_t r = 0; r < n; r++)
        any |= wl[r] != 0;
    if (any || fy) {
        rc = trace_pass(e, fy ? fy + n * d : NULL, any ? wl : NULL, e->dxa,
                        gp);
        if (rc != FLOW_OK)
            return rc;
    }
out:
    for (size_t r = 0; r < n; r++) {
        memcpy(gy + r * d, e->dxa + r * wd, d * sizeof *gy);
        for (size_t j = 0; j < k; j++)
            gp[e->np + r * k + j] += e->dxa[r * wd + d + j];
        gy[n * d + r] = 0;
    }
    return FLOW_OK;
}

/* Step control per row: the largest of the rows' RMS norms (HNW I, eq.
 * 4.11, over z and l of one row), so every row meets the tolerance. */
static double dyn_norm(void *env, const flow_real *err, const flow_real *ya,
                       const flow_real *yb, double rtol, double atol)
{
    const ode_dyn *e = env;
    size_t n = e->n, d = e->d;
    double worst = 0;
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        for (size_t j = 0; j <= d; j++) {
            size_t i = j < d ? r * d + j : n * d + r;
            double sc = atol + rtol * fmax(fabs(ya[i]), fabs(yb[i]));
            double q = err[i] / sc;
            s += q * q;
        }
        worst = fmax(worst, sqrt(s / (double)(d + 1)));
    }
    return worst;
}

void ode_dyn_sys(ode_dyn *e, ode_sys *s)
{
    s->m = e->n * (e->d + 1);
    s->np = e->np + e->n * e->k;
    s->env = e;
    s->f = dyn_f;
    s->vjp = dyn_vjp;
    s->norm = dyn_norm;
}

