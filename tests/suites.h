/* suites.h - one Check suite per area; the runner in main.c runs them all.
 * Shared test helpers live here too. */
#ifndef FLOW_TESTS_SUITES_H
#define FLOW_TESTS_SUITES_H

#include <check.h>

#include "flow/flow_plugin.h"

Suite *suite_loader(void);
Suite *suite_permute(void);
Suite *suite_rng(void);
Suite *suite_model(void);
Suite *suite_train(void);
Suite *suite_conform(void);
Suite *suite_layers(void);
Suite *suite_ckpt_model(void);
/* numerics */
Suite *suite_matrix(void);
Suite *suite_nn(void);
Suite *suite_transform(void);
Suite *suite_base(void);

/* files area: data, datasets, json, checkpoint */
Suite *suite_data(void);
Suite *suite_datasets(void);
Suite *suite_json(void);
Suite *suite_checkpoint(void);
Suite *suite_compiler(void);   /* compiler branch */
/* residual branch */
Suite *suite_residual(void);
Suite *suite_made_step(void);  /* mafperf branch */

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
/* -- end residual */
Suite *suite_ode(void);        /* ode layer and its solvers */
Suite *suite_vi(void);         /* vi branch: targets, ELBO, log Z */
Suite *suite_vi_fit(void);     /* vi branch: fits (slow; not valgrind) */
Suite *suite_tgemm(void);      /* cnfspeed: runtime/tgemm.c */
Suite *suite_alloc_fail(void); /* allocation failures, tests/alloc_fail.h */

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
