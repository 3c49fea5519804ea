/* suites.h - one Check suite per area; the runner in main.c runs them all.
 * Shared test helpers live here too. */
#ifndef FLOW_TESTS_SUITES_H
#define FLOW_TESTS_SUITES_H

#include <check.h>

#include "flow/flow_plugin.h"

/* Every suite, in the order the runner runs them.  X(name) stands for
 * `Suite *suite_name(void)` (defined in a tests/test_*.c file), whose
 * suite_create name is "name": the name CK_RUN_SUITE selects and
 * `flowkit_tests --list` prints (valgrind.sh runs each one it lists). */
#define FLOW_TEST_SUITES(X) \
    X(loader)       /* plugin loading and the ABI checks */ \
    X(permute) \
    X(rng) \
    X(model)        /* building a model, its passes and gradients */ \
    X(train) \
    X(conform)      /* conformance checks of every bundled layer type */ \
    X(layers)       /* coupling and autoregressive layers in models */ \
    X(nologdet)     /* passes without log-dets (flow_call.skip_logdet) */ \
    X(ckpt_model)   /* checkpoints of whole models */ \
    X(matrix)       /* BLAS/LAPACK wrappers */ \
    X(nn)           /* MLP and MADE conditioners, divergence kernels */ \
    X(conv)         /* convolutional conditioner, im2col kernels */ \
    X(transform)    /* element-wise transformers (affine, spline, ...) */ \
    X(base)         /* base distributions */ \
    X(data)         /* CSV and .npy files */ \
    X(images)       /* IDX, NPY images, PNG directories; image writers */ \
    X(datasets)     /* built-in data sets */ \
    X(json) \
    X(checkpoint)   /* the checkpoint file format */ \
    X(export)       /* portable exports (runtime/export.c) */ \
    X(compiler) \
    X(residual)     /* residual layers and their log-det estimators */ \
    X(made_step)    /* MADE sampling step by step, sorted density pass */ \
    X(ode)          /* ode layers and their solvers */ \
    X(vi)           /* targets, ELBO, log Z */ \
    X(vi_fit)       /* fits to targets (seconds each) */ \
    X(target_callback) /* targets computed by the caller's function */ \
    X(tgemm)        /* runtime/tgemm.c */ \
    X(bf16)         /* bf16 products, --precision bf16-gemm */ \
    X(probe)        /* training's probe of third-party layers */ \
    X(comm)         /* communicator, reproducible block sums */ \
    X(blocks)       /* the block pass: threads take whole blocks */ \
    X(support)      /* the gradient's support: passes skip dead weights */ \
    X(shard)        /* data split over processes, rows moved */ \
    X(alloc_fail)   /* every allocation of a session failing in turn */

#define FLOW_TEST_DECLARE(name) Suite *suite_##name(void);
FLOW_TEST_SUITES(FLOW_TEST_DECLARE)
#undef FLOW_TEST_DECLARE

/* Resolved attributes of a `residual` layer (table order: hidden,
 * activation, coeff, logdet, probe, inverse_tol, inverse_iters); built by
 * res_attrs_make in test_residual.c. */
typedef struct res_attrs {
    flow_attr_value v[7];
    flow_attr_value sub[2];
    int64_t hidden[2];
} res_attrs;
/* mode 0 exact, 1 series(terms = a), 2 roulette(expected = a, min_terms =
 * b); act: index into relu, leaky_relu, tanh, elu, softplus. */
void res_attrs_make(res_attrs *r, int act, double coeff, int mode, double a,
                    int b, double tol, int iters);

/* Path of a test plugin (FLOW_TEST_PLUGINS/NAME.so) in one of four
 * rotating static buffers. */
const char *test_plugin(const char *name);

/* Tolerance for comparisons made in flow_real precision. */
#include "flow/flow_version.h"
#if FLOW_REAL_DOUBLE
# define TEST_EPS 1e-12
#else
# define TEST_EPS 1e-5
#endif

#endif
