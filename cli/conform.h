/* conform.h - internal: numerical conformance checks of one layer type
 * (round trips, log-det vs finite-difference Jacobian, declared vs measured
 * sparsity, batch independence, VJPs vs finite differences, determinism,
 * unbiased log-det estimates, writes outside the buffers a call is handed
 * or to its inputs, checkpoint round trip, 2-D density mass): what
 * `flowkit check` runs (docs/plugins.md, "Checking a layer"). */
#ifndef FLOW_RUNTIME_CONFORM_H
#define FLOW_RUNTIME_CONFORM_H

#include "flow/flow.h"

typedef struct conform_opts {
    size_t dim;                 /* D (>= 1)                                 */
    size_t context_dim;         /* K (0: no context)                        */
    size_t rows;                /* rows per test batch (default 4)          */
    uint64_t seed;
    double perturb;             /* std of noise added to initial params so
                                   identity-initialised layers are really
                                   tested (default 0.2)                     */
    double scale;               /* std of test inputs (default 1.5)         */
    size_t max_param_checks;    /* parameters checked one by one by FD
                                   (default 48): a deterministic subset
                                   covering every parameter tensor and
                                   every output column                     */
    int has_bounds;             /* the input lies in [lo, hi]                */
    double lo, hi;
    /* (appended) domain edges: besides `rows` random rows, the test batch
     * holds a row of zeros, a row of large magnitudes (+-large, default
     * 100; 0 = none) and, when the layer has a spline bound B (given here
     * or found as a REAL attribute named "bound" at any depth of the
     * attributes), rows at -+B, just inside, just outside and at 3B; with
     * bounds, rows near lo and hi instead. */
    double large;
    double bound;               /* spline bound B (0: look in attrs)        */
    /* model-level checks on a one-layer model (checkpoint round trip; for
     * D = 2 the density on a grid); default 1 */
    int model_checks;
    const char *spec_text;      /* embedded in the test checkpoint (NULL: a
                                   placeholder)                             */
    size_t estimates;           /* draws for the unbiasedness test of
                                   estimated log-dets (default 256)         */
    /* (appended) parameter gradients: 1 = every parameter one by one
     * (max_param_checks ignored); `directions` random dense directions in
     * parameter space are checked in addition (default 2), plus one per
     * output column group and one for the log-det */
    int params_all;
    size_t directions;
    /* (appended) the input's shape (docs/language.md, "Shapes"): rank 0 or
     * 1 is [dim], rank 3 [C, H, W] with C*H*W = dim, given to describe()
     * and create() and to the one-layer model */
    size_t rank;
    size_t shape[4];
} conform_opts;

typedef struct conform_row {
    char name[48];              /* e.g. "round trip (forward, inverse)"     */
    double err;                 /* max error measured                        */
    double tol;                 /* tolerance applied                         */
    int pass;                   /* err <= tol                                */
    int skipped;                /* not applicable (note says why)           */
    char note[160];
} conform_row;

/* Tolerances of this build (docs/plugins.md, "Tolerances"). */
typedef struct conform_tols {
    double roundtrip, logdet, fd, fd_step, density, zscore;
} conform_tols;
void conform_tolerances(conform_tols *t);

#define CONFORM_MAX_ROWS 48

typedef struct conform_report {
    conform_row rows[CONFORM_MAX_ROWS];
    size_t n;
    int failures;
} conform_report;

void conform_default_opts(conform_opts *o);
/* cfg->rank and cfg->shape from o (cfg->dim set before). */
void conform_set_shape(flow_layer_config *cfg, const conform_opts *o);

/* Runs every check on a layer of type t (found in `file`) with resolved
 * attributes `attrs` (one per entry of t->attrs).  Returns FLOW_OK when the
 * checks could run (look at rep->failures), or an error with the message in
 * ctx when the layer could not even be built. */
int conform_layer(flow_ctx *ctx, const flow_layer_type *t, const char *file,
                  const flow_attr_value *attrs, const conform_opts *o,
                  conform_report *rep);

#endif
