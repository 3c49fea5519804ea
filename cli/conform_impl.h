/* conform_impl.h - internal: what the files of the conformance checker
 * share (the layer under test, tolerances, rows, guarded calls, FDs). */
#ifndef FLOW_CLI_CONFORM_IMPL_H
#define FLOW_CLI_CONFORM_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "conform.h"
#include "conform_guard.h"
#include "../runtime/rng.h"        /* the runtime's streams (librng.la) */
#include "../runtime/tolerances.h" /* shared with the training probe */
#include "../runtime/fd.h"         /* the same finite differences */

/* The density check's error is the grid's (midpoint rule, DENSITY_GRID^2
 * cells) and the mass outside it, not the precision's. */
#define TOL_DENSITY 2e-3
#define DENSITY_GRID 200
#define DENSITY_SAMPLES 4000
/* Estimated log-dets: the mean of the estimates may differ from the exact
 * value by at most this many standard errors. */
#define TOL_ZSCORE 5.0

/* Random parameters of moderate strength (calibrate() in conform.c, and
 * the density check): the perturbation is halved at most CALIBRATE_TRIES
 * times until the log-dets stay within +-CALIBRATE_LOGDET. */
#define CALIBRATE_LOGDET 2.0
#define CALIBRATE_TRIES 10

/* Staging slots: each buffer of a call gets a guarded copy of its own,
 * sized to the call, so that a write one element past it hits a guard. */
enum stage { ST_X, ST_Y, ST_LD, ST_DY, ST_DX, ST_PARAMS, ST_GRAD, ST_BUF,
             ST_CTX, ST_DCTX, ST_N };

typedef struct layer_run {
    const flow_layer_type *t;
    void *self;
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t *dep_vec;
    flow_param_tensor *tensors; /* desc.tensors, host-owned               */
    size_t tensors_cap;         /* its entries                            */
    size_t n, d, k;
    size_t nrand;               /* random rows; edge rows follow          */
    size_t row0;                /* first row of the current call (context) */
    int training;               /* flow_call.training of the calls        */
    int has_bounds;
    double lo, hi;
    flow_real *params, *buffers, *grad, *ctxv, *dctx;
    flow_real *p0, *eps;        /* initial parameters, perturbation noise */
    double perturb;             /* params = p0 + perturb * eps            */
    void *ws;
    size_t ws_bytes;            /* what workspace() asked for this call   */
    guard_buf ws_g;             /* the workspace, guarded in place        */
    guard_buf stage[ST_N];      /* guarded copies of what calls are handed */
    size_t guard;               /* bytes per guard region                 */
    guard_log glog;             /* what the layer's calls did wrong       */
    flow_rng rng;               /* the checker's own draws                */
    flow_rng crng, crng0;       /* the layer's stream: every call starts
                                   from crng0, so a stochastic layer is a
                                   deterministic function of its inputs
                                   (common random numbers for the FDs)   */
    char err[512];
} layer_run;

/* L(v) = sum(w * out) + sum(u * logdet) of direction dir at input x. */
typedef struct objective {
    layer_run *L;
    int dir;
    flow_real *x, *y, *w, *u, *ld;
} objective;

/* f at a step delta from the point (*actual: the step really taken);
 * 0, or -1 when the layer fails there. */
typedef int (*fd_eval)(void *env, double delta, double *actual, double *out);

/* Errors of one VJP against finite differences. */
typedef struct vjp_errs {
    double x, p, c;
    size_t checks;              /* parameters checked one by one          */
    size_t dirs;                /* directional checks                     */
    int have_at;                /* the parameter found wrong: at, an, fd  */
    int by_dir;                 /* ... by bisecting a directional check  */
    size_t at, lo, hi;          /* bisection ended on params [lo, hi)    */
    double an, fd;
    size_t x_at;                /* the worst input entry, its two values */
    double x_an, x_fd;
} vjp_errs;

/* conform.c: rows of the report */
conform_row *conform_add_row(conform_report *rep, const char *name, double err,
                             double tol);
void conform_note(conform_row *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void conform_skip_row(conform_report *rep, const char *name, const char *why);

/* conform.c: calls into the layer, through the guards */
void conform_fill_call(layer_run *L, flow_call *c, size_t n, flow_real *grad,
                       flow_real *dctx);
flow_real *conform_stage_call(layer_run *L, guard_call *f, const char *call,
                              flow_call *c, int params_out);
int conform_no_stage(layer_run *L);
int conform_run(layer_run *L, int dir, size_t n, const flow_real *in,
                flow_real *out, flow_real *ld);
int conform_run_backward(layer_run *L, int dir, size_t n, const flow_real *x,
                         const flow_real *y, const flow_real *w,
                         const flow_real *u, flow_real *gx, flow_real *dctx);
int conform_has(const layer_run *L, uint32_t flag);
int conform_all_finite(const flow_real *v, size_t n);
int conform_describe_named(layer_run *L, flow_layer_desc *desc,
                           flow_param_tensor **tab, size_t *tab_cap,
                           flow_diag *diag);

/* conform.c: finite differences */
double conform_obj_eval(const objective *o);
double conform_fd_err_fn(double analytic, fd_eval f, void *env, double h,
                         double *fd);
double conform_fd_err_at(double analytic, const objective *o, flow_real *slot,
                         double hmax, double *fd);

/* conform_params.c: parameter gradients, unused parameters, describe() */
int conform_check_params(layer_run *L, const conform_opts *o, objective *ob,
                         int columns, flow_real *gx, vjp_errs *e);
void conform_params_note(const layer_run *L, const vjp_errs *e, char *buf,
                         size_t cap);
void conform_check_unused(layer_run *L, const conform_opts *o,
                          conform_report *rep, const flow_real *x0);
void conform_check_describe(layer_run *L, conform_report *rep);

/* conform_model.c: the layer in a one-layer model */
void conform_check_model(flow_ctx *ctx, layer_run *L, const conform_opts *o,
                         conform_report *rep, const flow_real *x);

#endif
