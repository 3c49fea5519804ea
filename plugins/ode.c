/* ode.c - the `ode` layer: a continuous normalizing flow dz/dt = f(z, t)
 * with an MLP f (FFJORD, Grathwohl et al. 2019; neural ODEs, Chen et al.
 * 2018), log-det by integrating the trace of df/dz (Chen et al. 2018,
 * thm. 1), exactly or by Hutchinson's estimator. */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "ode_dyn.h"

enum { ATTR_HIDDEN, ATTR_ACTIVATION, ATTR_TIME, ATTR_SOLVER, ATTR_TRACE,
       ATTR_GRADIENT, ATTR_T0, ATTR_T1, ATTR_IDENTITY_INIT };
enum { SOLVER_RK4, SOLVER_DOPRI5 };
enum { RK4_STEPS };
enum { DP_RTOL, DP_ATOL, DP_MAX_STEPS };
enum { TRACE_EXACT, TRACE_HUTCHINSON };
enum { HUT_NOISE, HUT_IN_EVAL };
enum { NOISE_RADEMACHER, NOISE_GAUSSIAN };
enum { GRAD_ADJOINT, GRAD_BACKPROP };
enum { TIME_CONCAT, TIME_CONCATSQUASH };
/* indices into common.h's activation_names */
enum { ACT_RELU, ACT_LEAKY_RELU, ACT_TANH, ACT_ELU, ACT_SOFTPLUS };

static const flow_attr_spec rk4_attrs[] = {
    {.name = "steps", .type = FLOW_ATTR_INT, .doc = "number of equal steps "
     "from t0 to t1 (4 function evaluations each)", .def_int = 10,
     .has_min = 1, .min = 1, .has_max = 1, .max = 1000000},
    {0}};
static const flow_attr_spec dopri5_attrs[] = {
    {.name = "rtol", .type = FLOW_ATTR_REAL, .doc = "relative tolerance "
     "(> 0)", .def_real = 1e-5, .has_min = 1, .min = 0, .has_max = 1,
     .max = 1},
    {.name = "atol", .type = FLOW_ATTR_REAL, .doc = "absolute tolerance "
     "(> 0)", .def_real = 1e-5, .has_min = 1, .min = 0, .has_max = 1,
     .max = 1e6},
    {.name = "max_steps", .type = FLOW_ATTR_INT, .doc = "step attempts "
     "before the solve fails (also bounds the workspace of gradient = "
     "backprop)", .def_int = 1000, .has_min = 1, .min = 1, .has_max = 1,
     .max = 10000000},
    {0}};
static const flow_variant_alt solver_alts[] = {
    {.name = "rk4", .doc = "classical Runge-Kutta, fixed steps",
     .attrs = rk4_attrs},
    {.name = "dopri5", .doc = "Dormand-Prince 5(4), adaptive steps with "
     "error control", .attrs = dopri5_attrs},
    {0}};

static const char *const noise_names[] = {"rademacher", "gaussian", NULL};
static const flow_attr_spec hutchinson_attrs[] = {
    {.name = "noise", .type = FLOW_ATTR_ENUM, .doc = "probe distribution: "
     "rademacher | gaussian", .def_int = NOISE_RADEMACHER,
     .enum_values = noise_names},
    {.name = "in_eval", .type = FLOW_ATTR_BOOL, .doc = "estimate in "
     "evaluation too (default: evaluation uses the exact trace)",
     .def_int = 0},
    {0}};
static const flow_variant_alt trace_alts[] = {
    {.name = "exact", .doc = "D Jacobian-vector products per evaluation"},
    {.name = "hutchinson", .doc = "unbiased estimate e^T (df/dz) e with one "
     "probe per row and solve, in training", .attrs = hutchinson_attrs},
    {0}};

static const char *const gradient_names[] = {"adjoint", "backprop", NULL};
static const char *const time_names[] = {"concat", "concatsquash", NULL};

static const flow_attr_spec ode_attrs[] = {
    HIDDEN_ATTR("[64, 64, 64]"),
    ACTIVATION_ATTR(ACT_TANH),
    {.name = "time", .type = FLOW_ATTR_ENUM, .doc = "time conditioning of "
     "every layer: concat | concatsquash", .def_int = TIME_CONCATSQUASH,
     .enum_values = time_names},
    {.name = "solver", .type = FLOW_ATTR_VARIANT, .doc = "rk4(steps) | "
     "dopri5(rtol, atol, max_steps)", .def_str = "dopri5",
     .alternatives = solver_alts},
    {.name = "trace", .type = FLOW_ATTR_VARIANT, .doc = "exact | "
     "hutchinson(noise, in_eval)", .def_str = "exact",
     .alternatives = trace_alts},
    {.name = "gradient", .type = FLOW_ATTR_ENUM, .doc = "adjoint (O(1) "
     "memory in the steps) | backprop (through the stored steps)",
     .def_int = GRAD_ADJOINT, .enum_values = gradient_names},
    {.name = "t0", .type = FLOW_ATTR_REAL, .doc = "start time (data side)",
     .def_real = 0},
    {.name = "t1", .type = FLOW_ATTR_REAL, .doc = "end time (latent side)",
     .def_real = 1},
    {.name = "identity_init", .type = FLOW_ATTR_BOOL,
     .doc = "start as the identity map (zero last dynamics layer)",
     .def_int = 0},
    {0}};

typedef struct ode_layer {
    const flow_host *host;
    size_t d, k, np;
    flow_net *net;
    ode_opts opts;
    int hutch, noise, in_eval, backprop;
    double t0, t1;
    /* since the last prepare(), one batch: the most evaluations of one
     * call, [0] solving forward (or inverse), [1] backward */
    atomic_ullong nfe[2];
} ode_layer;

/* --- configuration ------------------------------------------------------ */

static int diag_fail(flow_diag *diag, int attr, const char *help,
                     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int diag_fail(flow_diag *diag, int attr, const char *help,
                     const char *fmt, ...)
{
    va_list ap;
    diag->attr = attr;
    va_start(ap, fmt);
    vsnprintf(diag->message, sizeof diag->message, fmt, ap);
    va_end(ap);
    snprintf(diag->help, sizeof diag->help, "%s", help ? help : "");
    return FLOW_ERR_INVAL;
}

/* Solver options from the attributes; checks what the tables cannot. */
static int make_opts(const flow_layer_config *cfg, ode_opts *o,
                     flow_diag *diag)
{
    const flow_attr_value *s = &cfg->attrs[ATTR_SOLVER];
    double t0 = cfg->attrs[ATTR_T0].r, t1 = cfg->attrs[ATTR_T1].r;
    int64_t act = cfg->attrs[ATTR_ACTIVATION].i;
    memset(o, 0, sizeof *o);
    if (act == ACT_RELU || act == ACT_LEAKY_RELU)
        return diag_fail(diag, ATTR_ACTIVATION, "use tanh, softplus or elu",
                         "activation '%s' is not smooth: ODE dynamics need a "
                         "Lipschitz, continuously differentiable vector field "
                         "(unique solutions, error control, and the exact "
                         "trace's gradient uses f'')",
                         activation_names[act]);
    if (!isfinite(t0) || !isfinite(t1) || t0 == t1)
        return diag_fail(diag, ATTR_T1, "give an interval of non-zero "
                         "length, e.g. t0 = 0, t1 = 1", "t1 = t0 = %g: the "
                         "integration interval is empty", t1);
    if (s->i == SOLVER_RK4) {
        o->method = ODE_RK4;
        if (s->sub[RK4_STEPS].i < 1)
            return diag_fail(diag, ATTR_SOLVER, NULL, "rk4: steps must be "
                             ">= 1, got %lld", (long long)s->sub[0].i);
        o->steps = (size_t)s->sub[RK4_STEPS].i;
        return FLOW_OK;
    }
    o->method = ODE_DOPRI5;
    o->rtol = s->sub[DP_RTOL].r;
    o->atol = s->sub[DP_ATOL].r;
    if (!(o->rtol > 0) || !(o->atol > 0))
        return diag_fail(diag, ATTR_SOLVER, "error control needs both "
                         "tolerances, e.g. dopri5(rtol = 1e-5, atol = 1e-5)",
                         "dopri5: rtol and atol must be > 0, got rtol = %g, "
                         "atol = %g", o->rtol, o->atol);
    if (s->sub[DP_MAX_STEPS].i < 1)
        return diag_fail(diag, ATTR_SOLVER, NULL, "dopri5: max_steps must "
                         "be >= 1");
    o->max_steps = (size_t)s->sub[DP_MAX_STEPS].i;
    return FLOW_OK;
}

/* The dynamics net: input [z | context] (the context as plain input
 * columns, so net_jvp_backward's dx returns its gradient too), t by the
 * chosen time mode, output dz/dt. */
static flow_net *make_net(const flow_layer_config *cfg, flow_diag *diag)
{
    const flow_attr_value *hv = &cfg->attrs[ATTR_HIDDEN];
    size_t hidden[64];
    flow_net_spec s;
    flow_net *net;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.kind = FLOW_NET_MLP;
    s.in = cfg->dim + cfg->context_dim;
    s.out = cfg->dim;
    s.n_hidden = hv->n < 64 ? hv->n : 64;
    for (size_t i = 0; i < s.n_hidden; i++)
        hidden[i] = (size_t)hv->ilist[i];
    s.hidden = hidden;
    s.act = activation_values[cfg->attrs[ATTR_ACTIVATION].i];
    s.time = cfg->attrs[ATTR_TIME].i == TIME_CONCAT ? FLOW_TIME_CONCAT
                                                     : FLOW_TIME_CONCATSQUASH;
    s.zero_last = (int)cfg->attrs[ATTR_IDENTITY_INIT].i;
    net = cfg->host->net_create(&s, diag->message, sizeof diag->message);
    if (!net)
        diag->attr = ATTR_HIDDEN;
    return net;
}

static const char *cert_text(int dopri5, int hutch)
{
    static const char *const t[2][2] = {
        {"rk4 fixed steps, exact trace",
         "rk4 fixed steps, Hutchinson trace in training"},
        {"dopri5 adaptive steps, exact trace",
         "dopri5 adaptive steps, Hutchinson trace in training"}};
    return t[dopri5][hutch];
}

/* Expected function evaluations per solve: RK4 exactly 4 per step;
 * DOPRI5 a guess of 20 accepted steps (6 each, first same as last) plus
 * the 2 of the start. */
static uint32_t nfe_estimate(const ode_opts *o)
{
    if (o->method == ODE_RK4)
        return o->steps > UINT32_MAX / 4 ? UINT32_MAX
                                         : (uint32_t)(4 * o->steps);
    return 6 * 20 + 2;
}

static int ode_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    const flow_host *h = cfg->host;
    const flow_attr_value *tr = &cfg->attrs[ATTR_TRACE];
    int hutch = tr->i == TRACE_HUTCHINSON;
    int in_eval = hutch && tr->sub[HUT_IN_EVAL].i;
    flow_net *net;
    ode_opts o;
    double per;
    int rc;
    if (!h || !FLOW_HOST_HAS(h, net_jvp_backward) || !h->net_create
        || !h->net_jvp || !h->net_jvp_backward) {
        snprintf(diag->message, sizeof diag->message, "this host provides no "
                 "network Jacobian-vector products (flowkit too old for "
                 "this plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    if ((rc = make_opts(cfg, &o, diag)) != FLOW_OK)
        return rc;
    if (!(net = make_net(cfg, diag)))
        return FLOW_ERR_INVAL;
    out->n_params = h->net_params(net);
    common_tensor(out, 0, "net", out->n_params, 0);
    h->net_destroy(net);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    if (hutch)
        out->flags |= FLOW_LAYER_STOCHASTIC;
    /* adaptive steps are shared by the rows of a call */
    if (o.method == ODE_DOPRI5)
        out->flags |= FLOW_LAYER_WHOLE_BATCH;
    out->jac = FLOW_JAC_ODE;
    out->dep = FLOW_DEP_DENSE;
    out->cert = FLOW_CERT_ODE;
    out->cert_value = o.method == ODE_DOPRI5 ? o.rtol : 0;
    out->cert_text = cert_text(o.method == ODE_DOPRI5, hutch);
    /* one evaluation: a forward pass and D tangent passes (exact trace) */
    per = (double)out->n_params * (double)(1 + cfg->dim);
    out->cost_forward = (flow_cost){nfe_estimate(&o), 1,
                                    per * nfe_estimate(&o)};
    out->cost_inverse = out->cost_forward;
    out->logdet_exact = !in_eval;
    return FLOW_OK;
}

static void ode_destroy(void *self)
{
    ode_layer *L = self;
    if (!L)
        return;
    if (L->net)
        L->host->net_destroy(L->net);
    L->host->free(L);
}

static void *ode_create(const flow_host *host, const flow_layer_config *cfg,
                        flow_diag *diag)
{
    const flow_attr_value *tr = &cfg->attrs[ATTR_TRACE];
    ode_layer *L = host->calloc(1, sizeof *L);
    if (!L) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        return NULL;
    }
    L->host = host;
    L->d = cfg->dim;
    L->k = cfg->context_dim;
    atomic_init(&L->nfe[0], 0);
    atomic_init(&L->nfe[1], 0);
    if (make_opts(cfg, &L->opts, diag) != FLOW_OK
        || !(L->net = make_net(cfg, diag))) {
        ode_destroy(L);
        return NULL;
    }
    L->np = host->net_params(L->net);
    L->hutch = tr->i == TRACE_HUTCHINSON;
    L->noise = L->hutch ? (int)tr->sub[HUT_NOISE].i : 0;
    L->in_eval = L->hutch && tr->sub[HUT_IN_EVAL].i;
    L->backprop = cfg->attrs[ATTR_GRADIENT].i == GRAD_BACKPROP;
    L->t0 = cfg->attrs[ATTR_T0].r;
    L->t1 = cfg->attrs[ATTR_T1].r;
    return L;
}

static int ode_init(void *self, const flow_call *c, flow_real *params)
{
    const ode_layer *L = self;
    L->host->net_init(L->net, params, c->rng);
    return FLOW_OK;
}

/* --- workspace ---------------------------------------------------------- *
 * header | probes e (n x D) | tape (backprop) | recorded net tapes (RK4
 * backprop, below) -- kept from forward to backward -- then scratch:
 * state y (m = n (D + 1): z rows, then the log-det column), cotangent a
 * (m), gradient g (P + n K), solver scratch, the dynamics' buffers and the
 * net's tape. */

#define WS_MAGIC 0x6f64652d666c6f77ull  /* "ode-flow" */

typedef struct ws_head {
    uint64_t magic;
    size_t n, steps, rec;
    int dir, hutch;
    int rec_area;           /* the call carved the recorded tapes' area */
} ws_head;

typedef struct ode_ws {
    ws_head *head;
    flow_real *eps;
    void *tape, *rec;
    flow_real *y, *a, *g;
    void *solver, *dyn;
} ode_ws;

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX / 2 - b ? SIZE_MAX / 2 : a + b;
}

static size_t solver_bytes(const ode_layer *L, size_t n)
{
    size_t m = n * (L->d + 1), gp = L->np + n * L->k;
    size_t b = ode_ws_solve(&L->opts, m);
    size_t g = L->backprop ? ode_ws_backprop(&L->opts, m)
                           : ode_ws_adjoint(&L->opts, m, gp);
    return b > g ? b : g;
}

/* Recorded net tapes: with RK4, backprop and the host's net_div, the
 * forward solve keeps every evaluation's net tape (activations and
 * tangents: (1 + D) H reals per row and evaluation for H hidden units in
 * all with tanh, D = 2: 3 H; twice that with the other activations, which
 * keep the pre-activations too) so that the backward does not recompute the
 * forward passes (a quarter of a training step's work); slots = 4 steps.
 * Up to REC_BUDGET bytes per call; larger calls (evaluation batches)
 * recompute instead.  Recorded in training mode only. */
#define REC_BUDGET ((size_t)256 << 20)

static size_t rec_slots(const ode_layer *L, size_t n)
{
    size_t slots = 4 * L->opts.steps, b;
    if (!L->backprop || L->opts.method != ODE_RK4
        || !ode_dyn_has_div(L->host, L->net))
        return 0;
    b = ode_dyn_rec_ws(L->host, L->net, n, slots);
    return b && b <= REC_BUDGET ? slots : 0;
}

/* Bytes of a call on n rows with `slots` recorded tapes (0: none). */
static size_t ws_bytes(const ode_layer *L, size_t n, size_t slots)
{
    size_t m = n * (L->d + 1), b;
    b = common_round(sizeof(ws_head));
    b = sat_add(b, common_bytes(n * L->d));
    if (L->backprop)
        b = sat_add(b, ode_ws_tape(&L->opts, m));
    if (slots)
        b = sat_add(b, ode_dyn_rec_ws(L->host, L->net, n, slots));
    b = sat_add(b, 2 * common_bytes(m));
    b = sat_add(b, common_bytes(L->np + n * L->k));
    b = sat_add(b, solver_bytes(L, n));
    return sat_add(b, ode_dyn_ws(L->host, L->net, n, L->d, L->k));
}

/* The workspace must hold any call of at most n rows: a call of fewer rows
 * may record its tapes (they fit the budget) where n rows do not, so the
 * size is the larger of n rows without tapes and the most rows that still
 * record, with them (rec_slots is 0 from some row count on: binary
 * search for the last count that records). */
static size_t ode_workspace(void *self, size_t n, int dir)
{
    const ode_layer *L = self;
    size_t b = ws_bytes(L, n, rec_slots(L, n)), lo = 1, hi = n;
    (void)dir;
    if (n == 0 || rec_slots(L, n) || !rec_slots(L, 1))
        return b;
    while (hi - lo > 1) {            /* rec_slots(lo) > 0, rec_slots(hi) = 0 */
        size_t mid = lo + (hi - lo) / 2;
        if (rec_slots(L, mid))
            lo = mid;
        else
            hi = mid;
    }
    {
        size_t r = ws_bytes(L, lo, rec_slots(L, lo));
        return r > b ? r : b;
    }
}

/* The call's regions; rec_area: with the recorded tapes' area (training
 * forward calls, and the backward of such a call: the same layout). */
static ode_ws carve(const ode_layer *L, const flow_call *c, int rec_area)
{
    size_t n = c->n, m = n * (L->d + 1);
    char *cur = c->ws;
    ode_ws s;
    s.head = (ws_head *)(void *)cur;
    cur += common_round(sizeof(ws_head));
    s.eps = common_take(&cur, n * L->d);
    s.tape = s.rec = NULL;
    if (L->backprop) {
        s.tape = cur;
        cur += ode_ws_tape(&L->opts, m);
    }
    if (rec_area && rec_slots(L, n)) {
        s.rec = cur;
        cur += ode_dyn_rec_ws(L->host, L->net, n, rec_slots(L, n));
    }
    s.y = common_take(&cur, m);
    s.a = common_take(&cur, m);
    s.g = common_take(&cur, L->np + n * L->k);
    s.solver = cur;
    cur += solver_bytes(L, n);
    s.dyn = cur;
    return s;
}

/* The dynamics of one call; probes when `hutch`; the recorded tapes
 * when `rec` (rec = 0 after carving) */
static void make_dyn(const ode_layer *L, const flow_call *c, ode_ws *w,
                     int hutch, int rec, ode_dyn *e, ode_sys *sys)
{
    memset(e, 0, sizeof *e);
    e->host = L->host;
    e->net = L->net;
    e->params = c->params;
    e->n = c->n;
    e->d = L->d;
    e->k = L->k;
    e->np = L->np;
    e->ctx = c->ctx;
    e->eps = hutch ? w->eps : NULL;
    e->c = c;
    ode_dyn_carve(e, w->dyn);
    if (rec && w->rec)
        ode_dyn_rec_carve(e, w->rec, rec_slots(L, c->n));
    ode_dyn_sys(e, sys);
}

/* --- directions ---------------------------------------------------------- */

/* The batch's evaluations: the row chunks or blocks of a split batch
 * (RK4 only: dopri5 sees whole batches) each run the same steps, in
 * parallel or one after the other, so the batch counts the most of one
 * call per direction, which does not depend on the thread count nor on
 * how many calls the rows took. */
static void count_nfe(ode_layer *L, int backward, size_t nfe)
{
    atomic_ullong *a = &L->nfe[backward];
    unsigned long long v = atomic_load(a);
    while (v < nfe && !atomic_compare_exchange_weak(a, &v,
                                                    (unsigned long long)nfe))
        ;
}

/* Whether a call that skips its log-det (flow_call_skip_logdet) may
 * leave out the trace.  With RK4 it may: the log-det column l is
 * integrated beside z and never feeds back into it.  DOPRI5's step
 * control measures the error of every row over z and l together
 * (dyn_norm), so the trace moves the accepted steps and with them z:
 * without it the samples would change, and DOPRI5 computes the trace
 * anyway (only the backprop tape is left out). */
static int skips_trace(const ode_layer *L)
{
    return L->opts.method == ODE_RK4;
}

/* dir 0 integrates t0 -> t1 (density), dir 1 t1 -> t0 (sampling); the
 * log-det column integrates tr from the start to the end time, which is
 * log|det| of that direction's map. */
static int run(void *self, const flow_call *c, const flow_real *in,
               flow_real *out, flow_real *logdet, int dir)
{
    ode_layer *L = self;
    size_t n = c->n, nd = n * L->d;
    double ta = dir ? L->t1 : L->t0, tb = dir ? L->t0 : L->t1;
    ode_stats st = {0, 0, 0};
    ode_tape tape;
    ode_ws w;
    ode_sys sys;
    ode_dyn e;
    int rc, hutch = L->hutch && (c->training || L->in_eval);
    /* no log-det asked for: no backward follows either, so no tape */
    int skip = flow_call_skip_logdet(c), keep = L->backprop && !skip;
    if (n == 0)
        return FLOW_OK;
    w = carve(L, c, c->training);   /* tapes are recorded in training only */
    w.head->magic = 0;
    if (hutch) {
        /* drawn even when the trace is skipped: the stream stays the same */
        if (L->noise == NOISE_GAUSSIAN)
            L->host->rng_normal(c->rng, w.eps, nd);
        else
            L->host->rng_rademacher(c->rng, w.eps, nd);
    }
    make_dyn(L, c, &w, hutch, c->training, &e, &sys);
    e.no_trace = skip && skips_trace(L);
    memcpy(w.y, in, nd * sizeof *in);
    memset(w.y + nd, 0, n * sizeof *w.y);
    if (keep)
        ode_tape_carve(&L->opts, sys.m, w.tape, &tape);
    rc = ode_solve(&sys, &L->opts, ta, tb, w.y, w.solver,
                   keep ? &tape : NULL, &st, c->err, c->err_cap);
    count_nfe(L, 0, st.nfe);
    if (rc != FLOW_OK)
        return rc;
    memcpy(out, w.y, nd * sizeof *out);
    if (skip)
        return FLOW_OK;
    memcpy(logdet, w.y + nd, n * sizeof *logdet);
    *w.head = (ws_head){WS_MAGIC, n, keep ? tape.steps : 0, e.rec,
                        dir, hutch, c->training};
    return FLOW_OK;
}

static int ode_forward(void *self, const flow_call *c, const flow_real *x,
                       flow_real *z, flow_real *logdet)
{
    return run(self, c, x, z, logdet, 0);
}

static int ode_inverse(void *self, const flow_call *c, const flow_real *z,
                       flow_real *x, flow_real *logdet)
{
    return run(self, c, z, x, logdet, 1);
}

/* VJP of direction dir after run() on the same workspace: the adjoint
 * re-solves from the output back to the input; backprop walks the tape. */
static int back(void *self, const flow_call *c, const flow_real *out,
                const flow_real *dout, const flow_real *dlogdet,
                flow_real *din, int dir)
{
    ode_layer *L = self;
    size_t n = c->n, nd = n * L->d, ng = L->np + n * L->k;
    double ta = dir ? L->t1 : L->t0, tb = dir ? L->t0 : L->t1;
    ode_stats st = {0, 0, 0};
    ode_tape tape;
    ode_ws w;
    ode_sys sys;
    ode_dyn e;
    int rc;
    if (n == 0)
        return FLOW_OK;
    w = carve(L, c, ((const ws_head *)c->ws)->rec_area);
    if (w.head->magic != WS_MAGIC || w.head->n != n || w.head->dir != dir)
        return L->host->error(c, "backward without a matching %s on this "
                              "workspace", dir ? "inverse" : "forward");
    make_dyn(L, c, &w, w.head->hutch, w.head->rec > 0, &e, &sys);
    if (e.rec_tapes)
        e.rec = w.head->rec;
    memcpy(w.a, dout, nd * sizeof *w.a);
    memcpy(w.a + nd, dlogdet, n * sizeof *w.a);
    memset(w.g, 0, ng * sizeof *w.g);
    if (L->backprop) {
        ode_tape_carve(&L->opts, sys.m, w.tape, &tape);
        tape.steps = w.head->steps;
        rc = ode_backprop(&sys, &L->opts, ta, tb, &tape, NULL, w.a, w.g,
                          NULL, NULL, w.solver, &st, c->err, c->err_cap);
    } else {
        memcpy(w.y, out, nd * sizeof *w.y);
        memset(w.y + nd, 0, n * sizeof *w.y);
        rc = ode_adjoint(&sys, &L->opts, ta, tb, w.y, w.a, w.g, NULL, NULL,
                         w.solver, &st, c->err, c->err_cap);
    }
    count_nfe(L, 1, st.nfe);
    if (rc != FLOW_OK)
        return rc;
    memcpy(din, w.a, nd * sizeof *din);
    if (c->grad)
        for (size_t i = 0; i < L->np; i++)
            c->grad[i] += w.g[i];
    if (c->dctx)
        for (size_t i = 0; i < n * L->k; i++)
            c->dctx[i] += w.g[L->np + i];
    return FLOW_OK;
}

static int ode_forward_backward(void *self, const flow_call *c,
                                const flow_real *x, const flow_real *z,
                                const flow_real *dz, const flow_real *dlogdet,
                                flow_real *dx)
{
    (void)x;
    return back(self, c, z, dz, dlogdet, dx, 0);
}

static int ode_inverse_backward(void *self, const flow_call *c,
                                const flow_real *z, const flow_real *x,
                                const flow_real *dx, const flow_real *dlogdet,
                                flow_real *dz)
{
    (void)z;
    return back(self, c, x, dx, dlogdet, dz, 1);
}

/* The function-evaluation counter covers one batch: prepare() runs
 * single-threaded before every batch's first call.  Calls may run
 * concurrently, hence the atomic counter (the only instance state they
 * touch). */
static int ode_prepare(void *self, const flow_call *c)
{
    ode_layer *L = self;
    (void)c;
    atomic_store(&L->nfe[0], 0);
    atomic_store(&L->nfe[1], 0);
    return FLOW_OK;
}

static double ode_stat(void *self)
{
    ode_layer *L = self;
    return (double)(atomic_load(&L->nfe[0]) + atomic_load(&L->nfe[1]));
}

/* Export: the dynamics net, but not portable: the density is an ODE
 * solution that a port reproduces only up to its solver's error. */
static int ode_export(void *self, const flow_call *c, flow_export *ex)
{
    const ode_layer *L = self;
    const flow_host *h = L->host;
    int rc;
    if (!FLOW_HOST_HAS(h, net_export) || !h->net_export)
        return h->error(c, "this host cannot export networks (flowkit "
                        "older than plugin ABI 1.6)");
    rc = h->net_export(L->net, c->params, "net", "inputs: z[0], ..., "
                       "z[D-1], then the context columns, and time t as "
                       "net.time says; output column i is dz_i/dt", ex);
    return rc ? rc : ex->attr(ex, "portable", "false");
}

static const flow_layer_type ode_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "ode",
    .summary = "continuous normalizing flow (FFJORD): dz/dt = MLP(z, t), "
               "log-det by trace integration",
    .attrs = ode_attrs,
    .describe = ode_describe,
    .create = ode_create,
    .destroy = ode_destroy,
    .workspace = ode_workspace,
    .init = ode_init,
    .forward = ode_forward,
    .inverse = ode_inverse,
    .forward_backward = ode_forward_backward,
    .inverse_backward = ode_inverse_backward,
    .prepare = ode_prepare,
    .stat_name = "nfe",
    .stat = ode_stat,
    .export_tensors = ode_export,
};

FLOW_PLUGIN_LAYERS("ode", FLOW_VERSION_STRING,
                   "continuous normalizing flows (neural ODEs)", &ode_type);
