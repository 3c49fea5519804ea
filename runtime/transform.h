/* transform.h - internal: elementwise monotone transformers of the host
 * table (affine, additive, rational-quadratic spline with linear tails). */
#ifndef FLOW_RUNTIME_TRANSFORM_H
#define FLOW_RUNTIME_TRANSFORM_H

#include <stddef.h>

#include "flow/flow_plugin.h"

/* Most spline bins a transformer may have (per-scalar work is on the
 * stack). */
#define TF_MAX_BINS 128
/* Affine log-scale soft clamp: log scale = C tanh(s / C) (docs/runtime.md). */
#define TF_AFFINE_CLAMP 5.0
/* Sigmoid-scale affine: scale = min + (1 - min) sigma(s + shift), Glow's
 * shift 2 and a floor on the contraction (transform.c, sigmoid_scale) */
#define TF_SIGMOID_SHIFT 2.0
#define TF_SIGMOID_MIN 6.737946999085467e-3   /* e^-5 */
/* Spline defaults for fields left 0 in flow_tf. */
#define TF_DEFAULT_BINS 8
#define TF_DEFAULT_BOUND 3.0
#define TF_DEFAULT_MIN 1e-3

/* A flow_tf with defaults applied and checked. */
typedef struct tf_cfg {
    flow_tf_kind kind;
    size_t bins;                 /* K (spline)                       */
    double bound;                /* B (spline)                       */
    double min_w, min_h, min_d;  /* floors (spline)                  */
    double d_shift;              /* log(e^{1 - min_d} - 1): theta = 0 gives
                                    derivative 1, so zero theta = identity */
    size_t n_theta;              /* parameters per scalar            */
} tf_cfg;

/* Applies defaults and validates; FLOW_ERR_INVAL for an unknown kind, K >
 * TF_MAX_BINS, B not finite or < 0, floors with K * floor >= 1 or
 * min_deriv >= 1. */
int tf_resolve(const flow_tf *tf, tf_cfg *cfg);

/* One scalar in double precision (the core the batch calls use).
 * dir 0: out = tau(in), lad = log tau'(in); dir 1: out = tau^-1(in), lad =
 * -log tau'(out); lad NULL: out alone, the same bits (a layer skipping
 * its log-det).  theta holds cfg->n_theta raw values. */
int tf_eval1(const tf_cfg *cfg, int dir, double in, const double *theta,
             double *out, double *lad);
/* VJP of tf_eval1 at `in`: given gout = dL/dout and glad = dL/dlad, write
 * gin = dL/din and gtheta[n_theta] (written). */
int tf_vjp1(const tf_cfg *cfg, int dir, double in, const double *theta,
            double gout, double glad, double *gin, double *gtheta);

/* The float build's lanes (runtime/transform_lanes.h): returns the width
 * the batch calls use, 8 (AVX-512) or 2; force 2 makes them take the
 * 2-lane path from now on, 0 restores the CPU's choice (the tests compare
 * the two, which give the same bits).  Not thread-safe: tests only.  The
 * float64 build has no lanes and returns 1. */
int tf_lanes(int force);

/* Host-table entries (see flow_plugin.h).  tf_params returns 0 for an
 * invalid flow_tf; the others return FLOW_ERR_INVAL for one and
 * FLOW_ERR_NUMERIC when a finite input gave a non-finite result (all m
 * outputs are still written). */
size_t tf_params(const flow_tf *tf);
int tf_forward(const flow_tf *tf, size_t m, const flow_real *x,
               const flow_real *theta, flow_real *y, flow_real *lad);
int tf_inverse(const flow_tf *tf, size_t m, const flow_real *y,
               const flow_real *theta, flow_real *x, flow_real *lad);
int tf_backward(const flow_tf *tf, size_t m, const flow_real *x,
                const flow_real *theta, const flow_real *dy,
                const flow_real *dlad, flow_real *dx, flow_real *dtheta);
int tf_inverse_backward(const flow_tf *tf, size_t m, const flow_real *y,
                        const flow_real *x, const flow_real *theta,
                        const flow_real *dx, const flow_real *dlad,
                        flow_real *dy, flow_real *dtheta);

/* Portable export (nn_export.c; flow_plugin.h, tf_export): the
 * attribute `key` describing the transformer. */
int tf_export(const flow_tf *tf, const char *key, flow_export *ex);

#endif
