/* model_util.h - helpers shared by the suites that build models from
 * spec text: a context with the bundled plugins, and the build itself. */
#ifndef FLOW_TESTS_MODEL_UTIL_H
#define FLOW_TESTS_MODEL_UTIL_H

#include <stdint.h>

#include "flow/flow.h"
#include "flow/flowc.h"

/* A new context with every plugin of the search path loaded; aborts the
 * test on failure. */
flow_ctx *tu_ctx_with_plugins(void);

/* Compiles src (diagnostics printed, named `file`) and builds its model
 * initialised from seed; aborts the test on a compile or build error.
 * The compilation goes to *comp (freed by the caller) when comp is not
 * NULL, else it is freed here. */
flow_model *tu_build_model(flow_ctx *ctx, const char *file, const char *src,
                           uint64_t seed, flow_compilation **comp);

#endif
