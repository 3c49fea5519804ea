/* sema_impl.h - what sema.c (evaluation and expansion) and sema_decl.c
 * (the flow's declarations) share: the analysis state and its helpers. */
#ifndef FLOW_SEMA_IMPL_H
#define FLOW_SEMA_IMPL_H

#include <stdint.h>

#include "compiler.h"

#define MAX_SUGGEST 512

typedef struct binding {
    const char *name;
    value *val;
    flow_loc loc;
    struct binding *next;
} binding;

typedef struct blockdef {
    const char *name;
    const stmt *s;
} blockdef;

struct sema {
    flow_compilation *c;
    flow_graph *g;
    binding *globals;
    blockdef *blocks;
    size_t n_blocks, cap_blocks;
    const stmt *flow;
    /* expansion */
    const stmt *calls[FLOW_MAX_NESTING];
    int depth;
    size_t work;
    size_t cells;               /* sum of layer widths so far             */
    size_t values;              /* evaluated values so far                */
    size_t params;              /* the layers' parameters so far          */
    int halted;                 /* a limit was hit: stop expanding        */
    int have_input, have_context, have_output, have_target;
    int target_line;
    int said_no_input, said_no_output;  /* reported: no "missing" error */
    size_t dim;                 /* width of the state at this point       */
    size_t rank, shape[4];      /* its shape; the product is dim          */
    int shape_lost;             /* a layer of unknown type came before:
                                   the shape here is a guess, so shape
                                   errors would only echo that one     */
    int pristine;               /* only permutations so far: bounds hold  */
    const char *moved_by;       /* the last layer or exit that moved the
                                   values (when not pristine)             */
    int ranged;                 /* not pristine, but the last layer
                                   declared its outputs in [rlo, rhi]
                                   (flow_layer_desc.range, 1.8)           */
    double rlo, rhi;
    flow_loc output_loc;
};


/* sema.c: values */
int sema_is_num(const value *v);
double sema_num(const value *v);
/* Evaluates e in scope sc; NULL after reporting an error. */
value *sema_eval(sema *S, const expr *e, binding *sc);
/* An integer, a number, a dimension (1..FLOW_MAX_DIM) from e into *out;
 * each reports and returns -1 otherwise. */
int sema_eval_int(sema *S, const expr *e, binding *sc, const char *what,
                  int64_t *out);
int sema_eval_real(sema *S, const expr *e, binding *sc, const char *what,
                   double *out);
int sema_eval_dim(sema *S, const expr *e, binding *sc, const char *what,
                  size_t *out);
/* Arguments of a call as values, names and name positions. */
int sema_eval_args(sema *S, const arg *args, size_t n, binding *sc,
                   value ***vals, const char ***names, flow_loc **nlocs);

/* sema.c: graph nodes, contexts, suggestions.  A new node takes the
 * state's width and shape at s; NULL past a limit. */
flow_graph_node *sema_new_node(sema *S, flow_node_kind kind, const stmt *s);
/* `given NAME`: 1 for the declared context, 0 without it, -1 reported. */
int sema_check_given(sema *S, const char *given, flow_loc loc);
/* Evaluates statement s's arguments in scope sc and resolves them against
 * spec (what names the owner in messages), an unknown name suggesting
 * the names in scope; 0 with *attrs and *alocs set, or -1 after
 * reporting. */
int sema_resolve_args(sema *S, const stmt *s, binding *sc,
                      const flow_attr_spec *spec, const char *what,
                      flow_attr_value **attrs, flow_loc **alocs);
const char *sema_plugin_trouble(sema *S, const char *otherwise);

/* sema_decl.c: the statements that declare the flow's parts */
void sema_decl_input(sema *S, const stmt *s, binding *sc);
void sema_decl_context(sema *S, const stmt *s, binding *sc);
void sema_decl_exit(sema *S, const stmt *s, binding *sc);
void sema_decl_output(sema *S, const stmt *s, binding *sc);
void sema_decl_train(sema *S, const stmt *s, binding *sc);
void sema_decl_target(sema *S, const stmt *s, binding *sc);

#endif
