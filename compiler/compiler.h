/* compiler.h - internal: source positions, AST, values, the compilation
 * record and the calls between the compiler's files.  Not installed. */
#ifndef FLOW_COMPILER_H
#define FLOW_COMPILER_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "flow/flowc.h"
#include "arena.h"

/* --- positions -------------------------------------------------------- */
typedef struct flow_loc {
    int file;                       /* index into the compilation's files */
    int line, col;                  /* first character, 1-based           */
    int end_line, end_col;          /* last character, inclusive          */
} flow_loc;

/* --- AST -------------------------------------------------------------- */
typedef enum expr_kind {
    E_INT, E_REAL, E_STR, E_NAME, E_LIST, E_CALL, E_BIN, E_NEG
} expr_kind;

typedef struct arg arg;
typedef struct expr {
    expr_kind kind;
    flow_loc loc;
    int depth;                      /* nesting depth of the subtree       */
    int64_t i;
    double r;
    const char *s;                  /* E_STR text, E_NAME/E_CALL name     */
    int op;                         /* E_BIN: '+', '-', '*', '/', '%'     */
    struct expr *a, *b;
    arg *args;                      /* E_LIST items, E_CALL arguments     */
    size_t n;
} expr;

struct arg {
    const char *name;               /* NULL: positional                   */
    flow_loc loc;                   /* whole `name = value`               */
    flow_loc name_loc;
    expr *value;                    /* NULL for block parameters          */
    arg *next;
};

typedef struct arg_list { arg *head, *tail; size_t n; } arg_list;

typedef enum stmt_kind {
    S_LAYER, S_REPEAT, S_CONST, S_EXIT, S_INPUT, S_CONTEXT, S_OUTPUT,
    S_TRAIN, S_KV, S_IMPORT, S_BLOCK, S_FLOW, S_TARGET
} stmt_kind;

typedef struct base_ref {
    const char *name;
    flow_loc loc;
    arg *args;
    size_t n;
    const char *given;
    flow_loc given_loc;
} base_ref;

typedef struct stmt {
    stmt_kind kind;
    flow_loc loc;                   /* keyword or first token             */
    flow_loc name_loc;
    const char *name;
    arg *args;                      /* layer/block-call args, params      */
    size_t n;
    int has_parens;
    const char *given;
    flow_loc given_loc;
    expr *e;                        /* const value, count, dims, exit K   */
    expr *lo, *hi;                  /* input bounds                       */
    const char *type_name;          /* input/context element type         */
    flow_loc type_loc;
    base_ref base;                  /* exit/output                        */
    struct stmt *body;              /* repeat/block/flow/train            */
    flow_loc close_loc;             /* closing brace                      */
    struct stmt *next;
} stmt;

typedef struct stmt_list { stmt *head, *tail; } stmt_list;

/* --- values (evaluated expressions) ---------------------------------- */
typedef enum value_kind {
    V_INT, V_REAL, V_STR, V_IDENT, V_LIST, V_CALL
} value_kind;

typedef struct value {
    value_kind kind;
    flow_loc loc;
    int64_t i;
    double r;
    const char *s;                  /* string, identifier, callee         */
    size_t n;
    struct value **items;           /* list items / call args             */
    const char **names;             /* call arg names (NULL: positional)  */
    flow_loc *name_locs;
} value;

/* --- diagnostics ------------------------------------------------------ */
typedef struct diag_rec {
    flow_diagnostic pub;
    flow_loc loc;
} diag_rec;

/* --- compilation ------------------------------------------------------ */
typedef struct source_file {
    const char *path;               /* as shown in diagnostics            */
    const char *real;               /* realpath, for cycles / dedupe      */
    const char *text;
    size_t len;
    stmt *items;                    /* parsed top level                   */
    int parsed;
    const char *from;               /* imports resolve against this path  */
    const char *import;             /* as written (NULL: the main spec)   */
    const char **aliases;           /* other import paths naming it       */
    size_t n_aliases, cap_aliases;
    int cmdline;                    /* the --target text, not a spec file */
} source_file;

struct flow_graph {
    flow_compilation *c;
    const char *name;
    const char *input_name;
    size_t input_dim;
    size_t input_rank, input_shape[4];
    int has_bounds;
    double lo, hi;
    const char *context_name;
    size_t context_dim;
    flow_loc input_loc, context_loc;
    int context_used;
    flow_graph_node *nodes;
    size_t n_nodes, cap_nodes;
    flow_loc *node_locs;            /* statement span per node            */
    flow_loc **attr_locs;           /* per node, per attribute (given)    */
    const char *output_name;
    size_t output_dim;
    flow_graph_base base;
    flow_train_entry *train;
    size_t n_train;
    flow_graph_target target;       /* target.type NULL: none declared   */
    flow_loc target_loc;
};

struct flow_compilation {
    flow_ctx *ctx;
    arena mem;
    source_file *files;
    size_t n_files, cap_files;
    diag_rec *diags;
    size_t n_diags, cap_diags;
    size_t n_errors, n_warnings;
    int too_many;                   /* stopped at FLOW_MAX_ERRORS         */
    int ok;                         /* graph verified                     */
    size_t list_cells;              /* items of resolved attribute lists  */
    size_t matrix_cells;            /* dependency matrix entries checked  */
    const flow_spec_file *provided; /* in-memory sources (arena copies):
                                       imports are served from them only  */
    size_t n_provided;
    const char *cmdline_target;     /* --target text: replaces the spec's */
    struct stmt *cmdline_stmt;      /* ... parsed (NULL after errors)     */
    /* names in scope, for "did you mean" on undefined names in attrs */
    const char *(*suggest)(void *ctx, const char *name);
    void *suggest_ctx;
    flow_graph graph;
};

/* --- calls between the compiler's files ------------------------------
 * They go one way.  compile.c, the driver, reads (source.c) and parses
 * (parse.c) the spec, then runs import.c and sema.c; import.c reads and
 * parses each import and hands every declaration to sema.c; sema.c calls
 * attrs.c and verify.c; attrs.c parses defaults written as text
 * (parse.c).  graph.c and the emitters read the finished graph.  Every
 * file may report (diag.c) and allocate (arena.h). */

/* diag.c */
void diag_report(flow_compilation *c, flow_severity sev, const char *code,
                 flow_loc loc, const char *help, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
#define diag_error(c, code, loc, help, ...) \
    diag_report((c), FLOW_SEV_ERROR, (code), (loc), (help), __VA_ARGS__)
#define diag_warning(c, code, loc, help, ...) \
    diag_report((c), FLOW_SEV_WARNING, (code), (loc), (help), __VA_ARGS__)
int diag_stopped(const flow_compilation *c);
/* The closest of `n` candidates to `name` by edit distance, or NULL. */
const char *diag_suggest(const char *name, const char *const *cands,
                         size_t n);
size_t diag_edit_distance(const char *a, const char *b);

/* source.c */
/* Reads a whole file, refusing more than FLOW_MAX_FILE_BYTES; returns 0
 * or an errno code (EFBIG: too large).  *text is malloc'ed. */
int source_read(const char *path, char **text, size_t *len);
/* The reason for a source_read error, as diagnostics give it. */
const char *source_strerror(int err);
/* Adds a source file (text copied into the arena); returns its index or
 * -1 out of memory.  Its imports resolve against `path`. */
int source_add(flow_compilation *c, const char *path, const char *real,
               const char *text, size_t len);
/* Records that import path `path` also named file fi; 0, or -1 out of
 * memory. */
int source_add_alias(flow_compilation *c, int fi, const char *path);

/* parse.c: the generated scanner and parser, to the AST */
/* Parses file index fi into c->files[fi].items; returns the error count. */
int parse_file(flow_compilation *c, int fi);
/* Parses `text` as one expression (plugin defaults); NULL on error, with
 * the message in err. */
expr *parse_expr_string(flow_compilation *c, const char *text, char *err,
                        size_t cap);
/* Parses --target text into an S_TARGET statement in a file of its own
 * ("<--target>"); NULL after reporting errors. */
struct stmt *parse_target_text(flow_compilation *c, const char *text);

/* attrs.c: spec tables against values */
/* Resolves `n` values (names[i] NULL = positional) against table `tab`
 * into a new arena array (one per table entry) in *out, and the span of
 * each given value into *locs.  `what` names the owner in messages
 * ("layer 'tcoupling'").  Returns 0 or the number of errors reported. */
int attr_resolve(flow_compilation *c, const flow_attr_spec *tab,
                 value **vals, const char **names, const flow_loc *name_locs,
                 size_t n, flow_loc owner_loc, const char *what,
                 flow_attr_value **out, flow_loc **locs);
size_t attr_count(const flow_attr_spec *tab);
/* Describes a value in messages: "an integer", "identifier 'x'", ... */
const char *attr_value_desc(flow_compilation *c, const value *v);

/* verify.c */
void verify_graph(flow_compilation *c);
/* names of the ABI enums, as messages and graph.c's report spell them */
const char *verify_jac_name(flow_jac_class j);
const char *verify_cert_name(flow_cert_kind k);
/* verify one layer node right after describe(); returns errors reported */
int verify_layer(flow_compilation *c, size_t node);
/* its declared input domain against the input's bounds; `moved_by`: the
 * label of the last layer or exit before it that moved the values (NULL:
 * only permutations before it); returns errors reported */
int verify_domain(flow_compilation *c, size_t node, const char *moved_by);

/* sema.c: constants and arithmetic, block and repeat expansion, names;
 * each layer statement becomes a graph node, described by its plugin and
 * verified.  sema_decl.c: the input (its shape), context, exits, output,
 * bases, the train and target sections.  Shared internals: sema_impl.h. */
typedef struct sema sema;
/* A new analysis of c, in c's arena; NULL when out of memory. */
sema *sema_new(flow_compilation *c);
/* One top-level declaration (const, block, flow) of file fi, in source
 * order; imports are the resolver's. */
void sema_declare(sema *S, int fi, const stmt *s);
/* Expands the declared flow into c's graph and verifies it. */
void sema_expand(sema *S);

/* import.c: walks the main file's declarations into S in source order;
 * an imported file is read, parsed and walked where its import stands */
void import_walk(flow_compilation *c, sema *S);

/* lexer support (lexer.l) */
typedef struct lex_state {
    flow_compilation *c;
    int file;
    int start_token;                /* injected first token (0 = none)    */
    /* open brackets, for "'}' expected (to close 'flow' at line 3)" */
    struct {
        char ch;
        int line, col;
        const char *kw;             /* "repeat", ...: the '{' it opened   */
        int kw_col;                 /* that keyword's column              */
    } open[FLOW_MAX_NESTING + 1];
    int depth;
    const char *last_kw;            /* keyword that owns the next '{'     */
    int last_kw_col;
    /* the first flow-level statement met inside a repeat or block body:
     * when the file ends with a brace open, that body is the likely one
     * left unclosed */
    const char *inner_kw;           /* "output", ...; NULL: none          */
    const char *inner_in;           /* "repeat" or "block"                */
    int inner_in_line, inner_in_col;   /* its '{'                         */
    flow_loc inner_loc;
    int eof_line, eof_col;
    int stop;                       /* fatal: return end of input         */
    int line, col;                  /* position of the next character     */
    jmp_buf fatal;                  /* flex's fatal errors (lexer.l)      */
} lex_state;

#endif
