/* ode_dyn.h - the ode layer's dynamics as an ode_sys: dz/dt = f(z, t) from
 * a host MLP and dl/dt = tr(df/dz), exact or by Hutchinson probes, with
 * VJPs for both gradient methods.  Compiled into the ode plugin and into
 * the test runner (which checks the trace against finite differences). */
#ifndef FLOW_PLUGINS_ODE_DYN_H
#define FLOW_PLUGINS_ODE_DYN_H

#include "flow/flow_plugin.h"
#include "ode_solver.h"

/* One call's dynamics.  The net maps [z | context] (D + K inputs, the
 * context as plain input columns) and t to dz/dt (D outputs). */
typedef struct ode_dyn {
    const flow_host *host;
    const flow_net *net;
    const flow_real *params;
    size_t n, d, k, np;         /* rows, D, K, net parameters             */
    const flow_real *ctx;       /* n x K, NULL when K = 0                 */
    const flow_real *eps;       /* n x D Hutchinson probes; NULL: exact   */
    int no_trace;               /* 1: dl/dt = 0, no trace computed (the
                                   call skips its log-det); z the same
                                   bits                                    */
    const flow_call *c;         /* for error messages (host->error)       */
    /* buffers, from ode_dyn_carve */
    flow_real *xa, *tx, *ty, *dty, *dxa, *dxb, *fo, *tro;
    void *net_ws;
    /* exact trace through the host's net_div (all tangents stacked in one
     * pass), when it has one and supports the net; NULL tapes otherwise */
    void *div_tape, *div_scratch;
    /* Recorded tapes (RK4 with backprop, net_div): evaluation k of the
     * forward solve keeps its net_div tape in slot k (rec_t[k] its time);
     * the backward's VJPs, which visit the evaluations in exactly the
     * reverse order, take them back instead of recomputing the forward.
     * rec counts the slots in use; NULL rec_tapes: no recording. */
    char *rec_tapes;
    double *rec_t;
    size_t rec_stride, rec_cap, rec;
} ode_dyn;

/* Workspace bytes of ode_dyn_carve for n rows (the net's tape included). */
size_t ode_dyn_ws(const flow_host *h, const flow_net *net, size_t n, size_t d,
                  size_t k);
/* 1 when the host's net_div serves this net (exact trace in one pass) */
int ode_dyn_has_div(const flow_host *h, const flow_net *net);
/* Bytes of `slots` recorded tapes for n rows (0 without net_div), and
 * their carving (sets rec_tapes, rec_t, rec_stride, rec_cap; rec = 0). */
size_t ode_dyn_rec_ws(const flow_host *h, const flow_net *net, size_t n,
                      size_t slots);
void ode_dyn_rec_carve(ode_dyn *e, void *ws, size_t slots);
void ode_dyn_carve(ode_dyn *e, void *ws);

/* The ode_sys on the state y = [z (n x D) | l (n)]: m = n (D + 1), the
 * "parameters" are [net parameters | context (n x K)]. */
void ode_dyn_sys(ode_dyn *e, ode_sys *s);

#endif
