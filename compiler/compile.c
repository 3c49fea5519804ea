/* compile.c - the compiler driver: the flow_compile_* entry points and the
 * order of the passes (parse, imports and declarations, expansion, verify). */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"

static flow_compilation *new_compilation(flow_ctx *ctx)
{
    flow_compilation *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ctx = ctx;
    c->graph.c = c;
    return c;
}

/* NULL with the context's message: out of memory is the one failure that
 * has no compilation to carry a diagnostic. */
static flow_compilation *out_of_memory(flow_ctx *ctx, const char *name)
{
    flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory while compiling",
                   name);
    return NULL;
}

/* The passes after parsing, which run only on a spec without syntax
 * errors: the import resolver hands every file's declarations to sema in
 * source order, then sema expands the flow into the graph and verifies
 * it.  NULL (c freed) when out of memory. */
static flow_compilation *finish(flow_compilation *c, const char *name)
{
    sema *S;
    if (c->n_files > 0 && c->n_errors == 0 && (S = sema_new(c)) != NULL) {
        import_walk(c, S);
        sema_expand(S);
    }
    if (c->mem.failed) {
        flow_ctx *ctx = c->ctx;
        flow_compile_free(c);
        return out_of_memory(ctx, name);
    }
    c->ok = c->n_errors == 0 && c->n_files > 0;
    return c;
}

static flow_compilation *compile_string(flow_ctx *ctx, const char *name,
                                        const char *text, size_t len,
                                        const char *target)
{
    flow_compilation *c = new_compilation(ctx);
    char real[PATH_MAX];
    int fi;
    if (!c)
        return out_of_memory(ctx, name);
    if (len > FLOW_MAX_FILE_BYTES) {
        fi = source_add(c, name, NULL, "", 0);
        if (fi >= 0)
            diag_error(c, "F0010", ((flow_loc){fi, 0, 0, 0, 0}), NULL,
                       "spec is larger than %u bytes",
                       (unsigned)FLOW_MAX_FILE_BYTES);
        return finish(c, name);
    }
    fi = source_add(c, name, realpath(name, real) ? real : NULL, text, len);
    if (fi < 0) {
        flow_compile_free(c);
        return out_of_memory(ctx, name);
    }
    parse_file(c, fi);
    if (target && (c->cmdline_target = arena_strdup(&c->mem, target)))
        c->cmdline_stmt = parse_target_text(c, target);
    return finish(c, name);
}

flow_compilation *flow_compile_string(flow_ctx *ctx, const char *name,
                                      const char *text, size_t len)
{
    return compile_string(ctx, name, text, len, NULL);
}

flow_compilation *flow_compile_string_target(flow_ctx *ctx, const char *name,
                                             const char *text, size_t len,
                                             const char *target)
{
    return compile_string(ctx, name, text, len, target);
}

flow_compilation *flow_compile_file(flow_ctx *ctx, const char *path)
{
    return flow_compile_file_target(ctx, path, NULL);
}

flow_compilation *flow_compile_file_target(flow_ctx *ctx, const char *path,
                                           const char *target)
{
    flow_compilation *c;
    char *text;
    size_t len;
    int err = source_read(path, &text, &len);
    if (err == ENOMEM)
        return out_of_memory(ctx, path);
    if (err) {
        int fi;
        if (!(c = new_compilation(ctx)))
            return out_of_memory(ctx, path);
        fi = source_add(c, path, NULL, "", 0);
        if (fi < 0) {
            flow_compile_free(c);
            return out_of_memory(ctx, path);
        }
        diag_error(c, "F0010", ((flow_loc){fi, 0, 0, 0, 0}), NULL,
                   "cannot read spec: %s", source_strerror(err));
        return finish(c, path);
    }
    c = compile_string(ctx, path, text, len, target);
    free(text);
    return c;
}

void flow_compile_free(flow_compilation *c)
{
    if (!c)
        return;
    arena_free(&c->mem);
    free(c->files);
    free(c->diags);
    free(c);
}

const flow_graph *flow_compile_graph(const flow_compilation *c)
{
    return c && c->ok ? &c->graph : NULL;
}
