/* compile.c - the compiler driver: the flow_compile_* entry points (a file,
 * a text, or an in-memory set of source files) and the order of the passes
 * (parse, imports and declarations, expansion, verify). */
#include <errno.h>
#include <stddef.h>
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

/* Parses the main file (already added as file 0) and the --target text,
 * then runs the later passes. */
static flow_compilation *compile_main(flow_compilation *c, const char *target,
                                      const char *name)
{
    parse_file(c, 0);
    if (target && (c->cmdline_target = arena_strdup(&c->mem, target))) {
        size_t fi = c->n_files;
        c->cmdline_stmt = parse_target_text(c, target);
        if (c->n_files > fi)
            c->files[fi].cmdline = 1;
    }
    return finish(c, name);
}

/* A main file over the size limit: one error about the file as a whole. */
static flow_compilation *too_large(flow_compilation *c, const char *name)
{
    int fi = source_add(c, name, NULL, "", 0);
    if (fi >= 0)
        diag_error(c, "F0010", ((flow_loc){fi, 0, 0, 0, 0}), NULL,
                   "spec is larger than %u bytes",
                   (unsigned)FLOW_MAX_FILE_BYTES);
    return finish(c, name);
}

static flow_compilation *compile_string(flow_ctx *ctx, const char *name,
                                        const char *text, size_t len,
                                        const char *target)
{
    flow_compilation *c = new_compilation(ctx);
    char real[PATH_MAX];
    if (!c)
        return out_of_memory(ctx, name);
    if (len > FLOW_MAX_FILE_BYTES)
        return too_large(c, name);
    if (source_add(c, name, realpath(name, real) ? real : NULL, text,
                   len) < 0) {
        flow_compile_free(c);
        return out_of_memory(ctx, name);
    }
    return compile_main(c, target, name);
}

/* Copies the caller's file table into the arena: the compilation may
 * outlive it. */
static flow_spec_file *copy_sources(flow_compilation *c,
                                    const flow_spec_file *files, size_t n)
{
    arena *a = &c->mem;
    flow_spec_file *out = arena_array(a, n, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const flow_spec_file *f = &files[i];
        flow_spec_file *o = &out[i];
        const char **al = NULL;
        if (f->n_aliases && !(al = arena_array(a, f->n_aliases, sizeof *al)))
            return NULL;
        for (size_t k = 0; k < f->n_aliases; k++)
            if (!(al[k] = arena_strdup(a, f->aliases[k])))
                return NULL;
        o->path = arena_strdup(a, f->path);
        o->import = f->import ? arena_strdup(a, f->import) : NULL;
        o->resolved = f->resolved ? arena_strdup(a, f->resolved) : NULL;
        o->name = f->name ? arena_strdup(a, f->name) : NULL;
        o->text = arena_strndup(a, f->text, f->len);
        o->len = f->len;
        o->aliases = al;
        o->n_aliases = f->n_aliases;
        if (!o->path || !o->text || (f->import && !o->import)
            || (f->resolved && !o->resolved) || (f->name && !o->name))
            return NULL;
    }
    return out;
}

static flow_compilation *compile_sources(flow_ctx *ctx,
                                         const flow_spec_file *files,
                                         size_t n, const char *target)
{
    flow_compilation *c = new_compilation(ctx);
    const flow_spec_file *m;
    int fi;
    const char *name = n && files[0].path
                       ? (files[0].name ? files[0].name : files[0].path)
                       : "<memory>";
    if (!c)
        return out_of_memory(ctx, name);
    if (n == 0 || !files[0].path || !files[0].text) {
        source_add(c, "<memory>", NULL, "", 0);
        diag_error(c, "F0010", ((flow_loc){0, 0, 0, 0, 0}), NULL,
                   "no spec given (the first source file needs a path and "
                   "a text)");
        return finish(c, name);
    }
    m = &files[0];
    if (m->len > FLOW_MAX_FILE_BYTES)
        return too_large(c, name);
    if (!(c->provided = copy_sources(c, files, n))
        || (fi = source_add(c, m->name ? m->name : m->path,
                            m->resolved ? m->resolved : m->path, m->text,
                            m->len)) < 0
        || !(c->files[fi].from = arena_strdup(&c->mem, m->path))) {
        flow_compile_free(c);
        return out_of_memory(ctx, name);
    }
    c->n_provided = n;
    return compile_main(c, target, name);
}

static flow_compilation *compile_file(flow_ctx *ctx, const char *path,
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

/* The one entry point: in-memory files, else text, else the file at
 * path.  Every field of the struct as of this release is required; fields
 * appended later are optional (struct_size says which a caller has). */
flow_compilation *flow_compile(flow_ctx *ctx, const flow_compile_args *a)
{
    size_t need = offsetof(flow_compile_args, target) + sizeof a->target;
    if (!a || a->struct_size < need) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_compile: struct_size %zu "
                       "is smaller than the %zu bytes of the required "
                       "fields", a ? a->struct_size : (size_t)0, need);
        return NULL;
    }
    if (a->files)
        return compile_sources(ctx, a->files, a->n_files, a->target);
    if (a->text)
        return compile_string(ctx, a->path ? a->path : "<string>", a->text,
                              a->len, a->target);
    if (!a->path) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_compile: no spec given "
                       "(path, text or files)");
        return NULL;
    }
    return compile_file(ctx, a->path, a->target);
}

/* The calls before flow_compile, kept as wrappers. */
flow_compilation *flow_compile_file(flow_ctx *ctx, const char *path)
{
    return flow_compile_file_target(ctx, path, NULL);
}

flow_compilation *flow_compile_file_target(flow_ctx *ctx, const char *path,
                                           const char *target)
{
    flow_compile_args a = {.struct_size = sizeof a, .path = path,
                           .target = target};
    return flow_compile(ctx, &a);
}

flow_compilation *flow_compile_string(flow_ctx *ctx, const char *name,
                                      const char *text, size_t len)
{
    return flow_compile_string_target(ctx, name, text, len, NULL);
}

flow_compilation *flow_compile_string_target(flow_ctx *ctx, const char *name,
                                             const char *text, size_t len,
                                             const char *target)
{
    flow_compile_args a = {.struct_size = sizeof a, .path = name,
                           .text = text, .len = len, .target = target};
    return flow_compile(ctx, &a);
}

flow_compilation *flow_compile_sources(flow_ctx *ctx,
                                       const flow_spec_file *files, size_t n,
                                       const char *target)
{
    return compile_sources(ctx, files, n, target);   /* also for n = 0 */
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
