/* emit_model.c - in-process emission: the verified graph becomes calls to
 * the runtime's model-building API (the same calls --emit=c writes out). */
#include <stdio.h>

#include "flow/flowc.h"

/* The runtime's bases are unconditional; say so instead of dropping it. */
static int unsupported_context_base(flow_ctx *ctx, const char *name)
{
    return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "%s: a base distribution "
                          "`given` the context is not supported by this "
                          "runtime yet", name ? name : "base");
}

int flow_graph_build_target(flow_ctx *ctx, const flow_graph *g,
                            flow_target **out)
{
    const flow_graph_target *t = flow_graph_target_get(g);
    *out = NULL;
    if (!t)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow '%s' declares no "
                              "target (add `target NAME(...);` to the spec "
                              "or give --target)", flow_graph_name(g));
    return flow_target_new(ctx, t->type->name, t->attrs, t->n_attrs, t->dim,
                           out);
}

int flow_graph_build_model(flow_ctx *ctx, const flow_graph *g, uint64_t seed,
                           flow_model **out)
{
    const flow_graph_base *base = flow_graph_base_get(g);
    flow_model *m;
    int rc = FLOW_OK;

    *out = NULL;
    if (!(m = flow_model_new(ctx, flow_graph_input_dim(g),
                             flow_graph_context_dim(g))))
        return FLOW_ERR_NOMEM;      /* a verified graph has dim >= 1 */
    {
        size_t shape[4], r = flow_graph_input_shape(g, shape);
        if (r > 1)
            rc = flow_model_set_input_shape(m, r, shape);
    }
    for (size_t i = 0; i < flow_graph_node_count(g) && rc == FLOW_OK; i++) {
        const flow_graph_node *n = flow_graph_node_get(g, i);
        if (n->kind == FLOW_NODE_LAYER) {
            flow_layer_args a = {
                .struct_size = sizeof a, .type = n->type->name,
                .label = n->label, .attrs = n->attrs, .n_attrs = n->n_attrs,
                .given = n->uses_context, .file = n->file, .line = n->line,
                .col = n->col};
            rc = flow_model_add(m, &a);
        } else if (n->exit_base.uses_context)
            rc = unsupported_context_base(ctx, n->exit_name);
        else
            rc = flow_model_add_exit(m, n->exit_k, n->exit_name,
                                     n->exit_base.kind, n->exit_base.args,
                                     n->exit_base.n_args);
    }
    if (rc == FLOW_OK && base->uses_context)
        rc = unsupported_context_base(ctx, flow_graph_output_name(g));
    if (rc == FLOW_OK)
        rc = flow_model_set_base(m, base->kind, base->args, base->n_args);
    if (rc == FLOW_OK)
        rc = flow_model_finish(m, seed);
    if (rc != FLOW_OK) {
        flow_model_free(m);
        return rc;
    }
    *out = m;
    return FLOW_OK;
}
