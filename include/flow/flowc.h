/* flowc.h - the flowkit compiler API (libflowc): .flow specs to verified
 * layer graphs.  Language: docs/language.md; command line: docs/flowc.md.
 *
 * One call compiles a spec into a flow_compilation, which owns everything
 * it hands out (diagnostics, the graph, resolved attributes, dependency
 * vectors, source text) in one arena; flow_compile_free releases it all.
 * The layer types come from the plugins loaded in the flow_ctx given to the
 * compile call (load them first, e.g. with flow_plugin_load_all); the
 * compilation borrows the context, which must outlive it. */
#ifndef FLOWC_H
#define FLOWC_H

#include <stdio.h>

#include "flow/flow.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the compiler's spec language. */
#define FLOW_LANGUAGE_VERSION 1

/* Limits (documented in docs/language.md).  Inputs beyond them get a
 * located error, never a crash, hang or unbounded allocation. */
#define FLOW_MAX_DIM          65536   /* input, context width            */
#define FLOW_MAX_REPEAT        4096   /* one repeat count                */
#define FLOW_MAX_LAYERS      100000   /* layers + exits after expansion  */
#define FLOW_MAX_CELLS    (1u << 24)  /* sum over layers of their width  */
#define FLOW_MAX_NESTING         64   /* brackets, repeat/block calls    */
#define FLOW_MAX_IDENT          255   /* identifier length               */
#define FLOW_MAX_FILE_BYTES (1u << 20) /* one source file (1 MiB)         */
#define FLOW_MAX_PARAMS   (1u << 30)  /* learnable parameters, all layers:
                                         4 GiB a copy in float32, and
                                         training keeps about 5 copies   */
#define FLOW_MAX_LIST     FLOW_MAX_DIM /* items of one list literal       */
#define FLOW_MAX_ERRORS          50   /* then "too many errors"          */

typedef struct flow_compilation flow_compilation;   /* opaque */
typedef struct flow_graph flow_graph;               /* opaque */

/* --- compiling -------------------------------------------------------- */

/* What to compile, for flow_compile: an in-memory set of source files
 * (`files`, see flow_compile_sources), else spec text (`text`, named
 * `path`), else the spec file at `path`; with a target given apart from
 * the spec (`target`, as flow_compile_file_target), or NULL.  struct_size
 * first; fields are only ever appended, and a caller's struct_size says
 * which it has (the fields of this release are all required). */
typedef struct flow_compile_args {
    size_t struct_size;            /* sizeof(flow_compile_args)            */
    const char *path;              /* the spec file, or the name of text   */
    const char *text;              /* spec text (copied), or NULL          */
    size_t len;                    /* bytes of text                        */
    const flow_spec_file *files;   /* in-memory sources, or NULL           */
    size_t n_files;
    const char *target;            /* target statement text, or NULL       */
} flow_compile_args;

/* Compiles what `args` names.  NULL when out of memory or when args are
 * invalid (message in flow_errmsg(ctx)); otherwise a compilation to
 * inspect and free with flow_compile_free, whether or not the spec had
 * errors.  The calls below are wrappers of this one. */
FLOW_API flow_compilation *flow_compile(flow_ctx *ctx,
                                        const flow_compile_args *args);

/* Compiles the spec in `path` (imports are resolved relative to it).
 * Returns NULL only when out of memory (message in flow_errmsg(ctx));
 * otherwise a compilation to inspect and free with flow_compile_free,
 * whether or not the spec had errors. */
FLOW_API flow_compilation *flow_compile_file(flow_ctx *ctx, const char *path);

/* Same for source text in memory; `name` is used in diagnostics and as the
 * base for relative imports (the text is copied). */
FLOW_API flow_compilation *flow_compile_string(flow_ctx *ctx,
                                               const char *name,
                                               const char *text, size_t len);

/* As flow_compile_file / flow_compile_string, with a target given apart
 * from the spec (`flowkit fit --target`): `target` is the text of a
 * target statement without the keyword and ';', e.g. "funnel(scale =
 * 3)", checked as if the flow declared it (diagnostics name the file
 * "<--target>").  It replaces a target the spec declares.  NULL target:
 * the same as the plain calls. */
FLOW_API flow_compilation *flow_compile_file_target(flow_ctx *ctx,
                                                    const char *path,
                                                    const char *target);
FLOW_API flow_compilation *flow_compile_string_target(flow_ctx *ctx,
                                                      const char *name,
                                                      const char *text,
                                                      size_t len,
                                                      const char *target);

FLOW_API void flow_compile_free(flow_compilation *c);

/* Number of errors and warnings reported. */
FLOW_API size_t flow_compile_errors(const flow_compilation *c);
FLOW_API size_t flow_compile_warnings(const flow_compilation *c);

/* The verified graph, or NULL when the spec has errors.  Owned by c. */
FLOW_API const flow_graph *flow_compile_graph(const flow_compilation *c);

/* --- diagnostics ------------------------------------------------------ */

typedef enum flow_severity {
    FLOW_SEV_ERROR = 0,
    FLOW_SEV_WARNING = 1
} flow_severity;

/* One diagnostic.  Strings are owned by the compilation.  Fields are only
 * ever appended (check struct_size before reading newer ones). */
typedef struct flow_diagnostic {
    uint32_t struct_size;
    flow_severity severity;
    const char *code;              /* "F0103"                               */
    const char *file;              /* as given / as imported                */
    int line, col;                 /* 1-based; col in bytes                 */
    int end_line, end_col;         /* last column of the span (inclusive)  */
    const char *message;
    const char *help;              /* NULL when no fix is known             */
} flow_diagnostic;

FLOW_API size_t flow_compile_diag_count(const flow_compilation *c);
FLOW_API const flow_diagnostic *flow_compile_diag(const flow_compilation *c,
                                                  size_t i);

typedef enum flow_diag_format {
    FLOW_DIAG_TEXT = 0,            /* first line, source line, underline,
                                      help                                  */
    FLOW_DIAG_TERSE = 1,           /* first lines only                      */
    FLOW_DIAG_JSON = 2             /* a JSON array, one object per line     */
} flow_diag_format;

/* Writes every diagnostic to f in the given format. */
FLOW_API void flow_compile_print_diags(const flow_compilation *c, FILE *f,
                                       flow_diag_format fmt);

/* The "did you mean" rule of the diagnostics, for other tools' names
 * (commands, options): the candidate nearest to `name` by edit distance
 * when at most strlen(name) / 3 + 1 edits away and not equal to it, else
 * NULL.  NULL entries of cands are skipped. */
FLOW_API const char *flow_suggest(const char *name, const char *const *cands,
                                  size_t n);

/* --- the graph -------------------------------------------------------- */

/* Base distributions use flow_base_kind from flow.h. */
typedef struct flow_graph_base {
    flow_base_kind kind;
    const char *name;              /* "normal", "mixture", ...              */
    size_t n_args;
    double args[4];                /* numeric arguments in declared order   */
    int uses_context;              /* `given c` on the base                 */
    size_t n_params;               /* learnable parameters for dim D        */
} flow_graph_base;

typedef enum flow_node_kind {
    FLOW_NODE_LAYER = 1,
    FLOW_NODE_EXIT = 2
} flow_node_kind;

/* One node of the graph, in forward (data -> latent) order.  Read-only;
 * every pointer is owned by the compilation (type and plugin_file by the
 * context).  Fields are only ever appended (check struct_size). */
typedef struct flow_graph_node {
    uint32_t struct_size;
    flow_node_kind kind;
    const char *file;              /* spec file of the statement            */
    int line, col;
    size_t in_dim;                 /* width of the state entering the node  */
    /* FLOW_NODE_LAYER */
    const flow_layer_type *type;   /* owned by the plugin (ctx)             */
    const char *plugin_file;       /* owned by ctx                          */
    const char *label;             /* "tcoupling#3": type#node index        */
    size_t n_attrs;
    const flow_attr_value *attrs;  /* = config.attrs, table order           */
    flow_layer_config config;      /* as given to describe()                */
    /* as describe() filled it in (dep_vec has in_dim entries); a pointer,
     * so that flow_layer_desc can grow under its own struct_size rule */
    const flow_layer_desc *desc;   /* NULL for an exit                      */
    int uses_context;
    /* FLOW_NODE_EXIT: the first `exit_k` dimensions leave the flow */
    size_t exit_k;
    const char *exit_name;
    flow_graph_base exit_base;
    /* The shapes of the state entering and leaving the node (both kinds;
     * docs/language.md, "Shapes"): rank 1 is [D], rank 3 [C, H, W],
     * stored flat in C order; the products are in_dim and the width after
     * the node. */
    size_t in_rank, in_shape[4];
    size_t out_rank, out_shape[4];
} flow_graph_node;

FLOW_API const char *flow_graph_name(const flow_graph *g);
FLOW_API const char *flow_graph_input_name(const flow_graph *g);
FLOW_API size_t flow_graph_input_dim(const flow_graph *g);
/* The input's declared shape: its rank (1 for `real[D]`, 3 for
 * `real[C, H, W]`), with shape[0..rank) set; the product is the input
 * dimension. */
FLOW_API size_t flow_graph_input_shape(const flow_graph *g, size_t shape[4]);
/* 1 with *lo, *hi set when the input declares `in [lo, hi]`, else 0. */
FLOW_API int flow_graph_input_bounds(const flow_graph *g, double *lo,
                                     double *hi);
/* Context width (0 without a context) and its name (NULL without). */
FLOW_API size_t flow_graph_context_dim(const flow_graph *g);
FLOW_API const char *flow_graph_context_name(const flow_graph *g);

FLOW_API size_t flow_graph_node_count(const flow_graph *g);
FLOW_API const flow_graph_node *flow_graph_node_get(const flow_graph *g,
                                                    size_t i);

/* Base of the final latent (after the last exit), its name and width. */
FLOW_API const flow_graph_base *flow_graph_base_get(const flow_graph *g);
FLOW_API const char *flow_graph_output_name(const flow_graph *g);
FLOW_API size_t flow_graph_output_dim(const flow_graph *g);

/* The `train { key = value; }` section: count, and entry i.  A value is a
 * number (is_number 1, text is its source spelling) or a name/string. */
typedef struct flow_train_entry {
    const char *key;
    int is_number;
    double number;
    const char *text;
    int line, col;
} flow_train_entry;

FLOW_API size_t flow_graph_train_count(const flow_graph *g);
FLOW_API const flow_train_entry *flow_graph_train_get(const flow_graph *g,
                                                      size_t i);

/* Source files of the compilation: 0 is the main file, then imports in
 * the order they were read.  Text is NUL-terminated; *len excludes it. */
FLOW_API size_t flow_graph_source_count(const flow_graph *g);
FLOW_API const char *flow_graph_source(const flow_graph *g, size_t i,
                                       const char **path, size_t *len);

/* The target density the spec declares (`target NAME(args);`, or the
 * text given to flow_compile_*_target), for variational fits; NULL when
 * none.  Owned by the compilation; fields only ever appended. */
typedef struct flow_graph_target {
    uint32_t struct_size;
    const flow_target_type *type;  /* owned by the plugin (ctx)             */
    const char *plugin_file;       /* owned by ctx                          */
    const char *file;              /* spec file, or "<--target>"           */
    int line, col;
    size_t dim;                    /* the flow's input dimension            */
    size_t n_attrs;
    const flow_attr_value *attrs;  /* table order, defaults filled in       */
    const char *text;              /* source text, e.g. "funnel(scale = 3)" */
} flow_graph_target;

FLOW_API const flow_graph_target *flow_graph_target_get(const flow_graph *g);

/* Creates the runtime target the graph declares (flow_target_new with its
 * resolved attributes); FLOW_ERR_INVAL when it declares none.  *out is
 * new, owned by the caller (flow_target_free). */
FLOW_API int flow_graph_build_target(flow_ctx *ctx, const flow_graph *g,
                                     flow_target **out);

/* Totals over the graph. */
FLOW_API size_t flow_graph_params(const flow_graph *g);  /* incl. bases */

/* In-process emission: builds the runtime model the graph describes (the
 * calls --emit=c writes out), finished and initialised from `seed`.  *out
 * is new, owned by the caller (flow_model_free); ctx must be the context
 * the graph was compiled with. */
FLOW_API int flow_graph_build_model(flow_ctx *ctx, const flow_graph *g,
                                    uint64_t seed, flow_model **out);

/* --emit=c: a C translation unit defining
 *     int FUNC(flow_ctx *ctx, uint64_t seed, flow_model **out);
 * that makes the calls flow_graph_build_model makes (FUNC NULL: named
 * flow_build_<flow name>).  FLOW_ERR_UNSUPPORTED (nothing written) for a
 * base distribution given the context, which the runtime cannot build. */
FLOW_API int flow_graph_print_c(const flow_graph *g, FILE *f,
                                const char *func);

/* Writers: --report table, --emit=json, --emit=dot. */
FLOW_API void flow_graph_print_report(const flow_graph *g, FILE *f);
FLOW_API void flow_graph_print_json(const flow_graph *g, FILE *f);
FLOW_API void flow_graph_print_dot(const flow_graph *g, FILE *f);

/* --- compiling from memory (checkpoints) ------------------------------
 * Compiles the spec files[0] from an in-memory set of source files and
 * never reads the file system: `import "W";` in a file whose path is P
 * names the path dirname(P)/W (W itself when absolute, as on disk), which
 * must be the path or one of the aliases of one of files[1..n-1]; any
 * other import is an error (F0010) at the import.  Diagnostics and graph
 * nodes name each file by its `name`.  target as in
 * flow_compile_string_target (NULL: none).  NULL only when out of memory;
 * files are copied. */
FLOW_API flow_compilation *flow_compile_sources(flow_ctx *ctx,
                                                const flow_spec_file *files,
                                                size_t n, const char *target);

/* The spec's source files as a checkpoint embeds them (the text of
 * --target is not one): file 0 is the main spec, then the imports in the
 * order they were read.  *out's strings are owned by the compilation;
 * FLOW_ERR_INVAL when i is out of range. */
FLOW_API size_t flow_graph_spec_file_count(const flow_graph *g);
FLOW_API int flow_graph_spec_file(const flow_graph *g, size_t i,
                                  flow_spec_file *out);

#ifdef __cplusplus
}
#endif
#endif /* FLOWC_H */
