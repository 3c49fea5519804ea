/* ode_solver.h - explicit Runge-Kutta solvers for the ode layer (fixed-step
 * RK4, adaptive Dormand-Prince 5(4)) and their gradients: backprop through
 * the stored steps and the adjoint method.  Independent of networks and of
 * the host, so the tests drive it on scalar ODEs with closed forms. */
#ifndef FLOW_PLUGINS_ODE_SOLVER_H
#define FLOW_PLUGINS_ODE_SOLVER_H

#include <stddef.h>

#include "flow/flow_plugin.h"

typedef enum ode_method { ODE_RK4 = 0, ODE_DOPRI5 = 1 } ode_method;

/* A vector field dy/dt = f(t, y; p) on a state of m reals (every row of a
 * batch together), with parameters p seen only through VJPs. */
typedef struct ode_sys {
    size_t m;                   /* state length                              */
    size_t np;                  /* length of the parameter gradient          */
    void *env;
    /* dy = f(t, y) */
    int (*f)(void *env, double t, const flow_real *y, flow_real *dy);
    /* At (t, y) and a cotangent w (m): gy = w^T df/dy (written, m), gp +=
     * w^T df/dp (np), *gt += w^T df/dt when gt is not NULL; fy = f(t, y)
     * (written) when not NULL.  Used by both gradient methods. */
    int (*vjp)(void *env, double t, const flow_real *y, const flow_real *w,
               flow_real *fy, flow_real *gy, flow_real *gp, double *gt);
    /* Error norm of err (m) for the step controller, with the states before
     * and after the step (ya, yb); NULL: the RMS norm of HNW II.4 eq. 4.11,
     * sqrt(mean_i (err_i / (atol + rtol max(|ya_i|, |yb_i|)))^2). */
    double (*norm)(void *env, const flow_real *err, const flow_real *ya,
                   const flow_real *yb, double rtol, double atol);
} ode_sys;

typedef struct ode_opts {
    ode_method method;
    size_t steps;               /* RK4: number of equal steps (>= 1)         */
    double rtol, atol;          /* DOPRI5 tolerances (> 0)                   */
    size_t max_steps;           /* DOPRI5: step attempts, rejected included  */
} ode_opts;

typedef struct ode_stats {
    size_t nfe;                 /* evaluations of f (or of its VJP)          */
    size_t steps;               /* accepted steps                            */
    size_t rejected;            /* DOPRI5: rejected step attempts            */
} ode_stats;

/* The stored stage inputs of a solve, for backprop: per accepted step k,
 * time t[k], step h[k] and the inputs Y_0..Y_{S-1} of the stages that enter
 * the update (S = 4 for RK4, 6 for DOPRI5), each m reals.  The caller
 * carves the arrays (ode_tape_bytes) and keeps them until the backward. */
typedef struct ode_tape {
    flow_real *y;               /* cap * S * m                               */
    double *t, *h;              /* cap each                                  */
    size_t cap;                 /* steps the arrays hold                     */
    size_t steps;               /* steps recorded                            */
} ode_tape;

/* Steps a tape must hold: RK4 `steps`, DOPRI5 `max_steps`. */
size_t ode_tape_steps(const ode_opts *o);
/* Stages stored per step (4 or 6). */
size_t ode_tape_stages(const ode_opts *o);
/* Workspace bytes (64-byte aligned pieces; SIZE_MAX / 2 on overflow). */
size_t ode_ws_solve(const ode_opts *o, size_t m);
size_t ode_ws_backprop(const ode_opts *o, size_t m);
size_t ode_ws_adjoint(const ode_opts *o, size_t m, size_t np);
size_t ode_ws_tape(const ode_opts *o, size_t m);
/* Carves a tape out of ws (ode_ws_tape bytes). */
void ode_tape_carve(const ode_opts *o, size_t m, void *ws, ode_tape *tape);

/* Integrates y from ta to tb (tb < ta integrates backwards): y holds
 * y(ta) on entry and y(tb) on return.  With a tape, the steps are
 * recorded for ode_backprop.  Errors (FLOW_ERR_NUMERIC: non-finite state,
 * step size underflow, max_steps exceeded) leave a message in err. */
int ode_solve(const ode_sys *s, const ode_opts *o, double ta, double tb,
              flow_real *y, void *ws, ode_tape *tape, ode_stats *st,
              char *err, size_t err_cap);

/* Discretise-then-optimise: the exact gradient of the recorded discrete
 * map (step sizes held fixed).  a holds dL/dy(tb) on entry and dL/dy(ta)
 * on return; gp accumulates dL/dp; with gta/gtb not NULL, dL/dta and
 * dL/dtb are written (the step grid scales with tb - ta); they need
 * yb = y(tb), which may be NULL otherwise. */
int ode_backprop(const ode_sys *s, const ode_opts *o, double ta, double tb,
                 const ode_tape *tape, const flow_real *yb, flow_real *a,
                 flow_real *gp, double *gta, double *gtb, void *ws,
                 ode_stats *st, char *err, size_t err_cap);

/* Optimise-then-discretise, the adjoint method (Chen et al. 2018, alg. 1):
 * solves the augmented system [y, a, g] from tb back to ta with
 * dy/dt = f, da/dt = -a^T df/dy, dg/dt = -a^T df/dp (eqs. 4 and 5), with
 * the same method (DOPRI5's step control measures y and a only: the
 * seminorm of Kidger et al. 2021).  y holds y(tb) on entry and the
 * reconstructed y(ta) on return; a holds dL/dy(tb) on entry, dL/dy(ta) on
 * return; gp accumulates dL/dp.  dL/dtb = a(tb) . f(tb, y(tb)) and dL/dta =
 * -a(ta) . f(ta, y(ta)) (Chen et al. 2018, app. B.2) when asked for. */
int ode_adjoint(const ode_sys *s, const ode_opts *o, double ta, double tb,
                flow_real *y, flow_real *a, flow_real *gp, double *gta,
                double *gtb, void *ws, ode_stats *st, char *err,
                size_t err_cap);

#endif
