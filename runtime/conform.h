/* conform.h - internal: numerical conformance checks of one layer type
 * (round trips, log-det vs finite-difference Jacobian, declared vs measured
 * sparsity, batch independence, VJPs vs finite differences, determinism). */
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
    size_t max_param_checks;    /* parameters checked by FD (default 48)    */
    int has_bounds;             /* the input lies in [lo, hi]                */
    double lo, hi;
} conform_opts;

typedef struct conform_row {
    char name[48];              /* e.g. "round trip (forward, inverse)"     */
    double err;                 /* max error measured                        */
    double tol;                 /* tolerance applied                         */
    int pass;                   /* err <= tol                                */
    int skipped;                /* not applicable (note says why)           */
    char note[160];
} conform_row;

#define CONFORM_MAX_ROWS 24

typedef struct conform_report {
    conform_row rows[CONFORM_MAX_ROWS];
    size_t n;
    int failures;
} conform_report;

void conform_default_opts(conform_opts *o);

/* Runs every check on a layer of type t (found in `file`) with resolved
 * attributes `attrs` (one per entry of t->attrs).  Returns FLOW_OK when the
 * checks could run (look at rep->failures), or an error with the message in
 * ctx when the layer could not even be built. */
int conform_layer(flow_ctx *ctx, const flow_layer_type *t, const char *file,
                  const flow_attr_value *attrs, const conform_opts *o,
                  conform_report *rep);

#endif
