/* model_util.c - contexts and models from spec text for the unit
 * suites (model_util.h). */
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "model_util.h"

flow_ctx *tu_ctx_with_plugins(void)
{
    flow_ctx *ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    return ctx;
}

flow_model *tu_build_model(flow_ctx *ctx, const char *file, const char *src,
                           uint64_t seed, flow_compilation **comp)
{
    flow_model *m = NULL;
    flow_compilation *c = flow_compile_string(ctx, file, src, strlen(src));
    ck_assert_ptr_nonnull(c);
    if (flow_compile_errors(c))
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    ck_assert_msg(flow_compile_errors(c) == 0, "%s: the spec does not "
                  "compile", file);
    ck_assert_msg(flow_graph_build_model(ctx, flow_compile_graph(c), seed,
                                         &m) == FLOW_OK, "%s: %s", file,
                  flow_errmsg(ctx));
    if (comp)
        *comp = c;
    else
        flow_compile_free(c);
    return m;
}
