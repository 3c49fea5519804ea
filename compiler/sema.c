/* sema.c - semantic analysis: constants and arithmetic, names, repeat and
 * block expansion; each layer becomes a described node (sema_decl.c). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "compiler.h"
#include "sema_impl.h"

#define MAX_WORK 250000        /* statements expanded, all loops together */
#define MAX_VALUES 1000000     /* values made by evaluation, all together */

static void expand_body(sema *S, const stmt *s, binding *sc, int top,
                        const char *given, flow_loc given_loc);

/* --- names ------------------------------------------------------------ */

static binding *lookup(sema *S, binding *sc, const char *name)
{
    for (binding *b = sc; b; b = b->next)
        if (!strcmp(b->name, name))
            return b;
    for (binding *b = S->globals; b; b = b->next)
        if (!strcmp(b->name, name))
            return b;
    return NULL;
}

static const char *suggest_name(sema *S, binding *sc, const char *name)
{
    const char *cands[MAX_SUGGEST];
    size_t n = 0;
    for (binding *b = sc; b && n < MAX_SUGGEST; b = b->next)
        cands[n++] = b->name;
    for (binding *b = S->globals; b && n < MAX_SUGGEST; b = b->next)
        cands[n++] = b->name;
    return diag_suggest(name, cands, n);
}

static void undefined(sema *S, binding *sc, const char *name, flow_loc loc)
{
    const char *best = suggest_name(S, sc, name);
    char help[FLOW_MAX_IDENT + 32];
    if (best)
        snprintf(help, sizeof help, "did you mean '%s'?", best);
    diag_error(S->c, "F0100", loc, best ? help : NULL,
               "undefined name '%s'", name);
}

static binding *bind(sema *S, binding *sc, const char *name, value *v,
                     flow_loc loc)
{
    binding *b = arena_alloc(&S->c->mem, sizeof *b);
    if (!b)
        return sc;
    b->name = name;
    b->val = v;
    b->loc = loc;
    b->next = sc;
    return b;
}

static const blockdef *find_block(const sema *S, const char *name)
{
    for (size_t i = 0; i < S->n_blocks; i++)
        if (!strcmp(S->blocks[i].name, name))
            return &S->blocks[i];
    return NULL;
}

/* --- evaluation ------------------------------------------------------- */

static value *new_value(sema *S, value_kind k, flow_loc loc)
{
    value *v;
    if (++S->values > MAX_VALUES) {
        if (!S->halted)
            diag_error(S->c, "F0400", loc, "reduce the repeat counts or "
                       "move long lists into a const", "expansion makes "
                       "more than %d values", MAX_VALUES);
        S->halted = 1;
        return NULL;
    }
    v = arena_alloc(&S->c->mem, sizeof *v);
    if (v) {
        v->kind = k;
        v->loc = loc;
    }
    return v;
}

int sema_is_num(const value *v)
{
    return v->kind == V_INT || v->kind == V_REAL;
}

double sema_num(const value *v)
{
    return v->kind == V_INT ? (double)v->i : v->r;
}

/* Operand check for arithmetic: numbers pass; an unbound identifier is an
 * undefined name; anything else is a type error. */
static int numeric_operand(sema *S, binding *sc, const value *v, int op)
{
    if (sema_is_num(v))
        return 1;
    if (v->kind == V_IDENT)
        undefined(S, sc, v->s, v->loc);
    else
        diag_error(S->c, "F0120", v->loc, NULL,
                   "operator '%c' needs numbers, got %s",
                   op == 'n' ? '-' : op, attr_value_desc(S->c, v));
    return 0;
}

static value *arith(sema *S, const expr *e, value *a, value *b)
{
    value *r;
    int op = e->op;
    if (a->kind == V_INT && b->kind == V_INT) {
        int64_t x = a->i, y = b->i, z = 0;
        int ovf = 0;
        switch (op) {
        case '+': ovf = __builtin_add_overflow(x, y, &z); break;
        case '-': ovf = __builtin_sub_overflow(x, y, &z); break;
        case '*': ovf = __builtin_mul_overflow(x, y, &z); break;
        case '/': case '%':
            if (y == 0) {
                diag_error(S->c, "F0121", e->loc, NULL, "division by zero");
                return NULL;
            }
            if (x == INT64_MIN && y == -1)
                ovf = 1;
            else
                z = op == '/' ? x / y : x % y;
            break;
        }
        if (ovf) {
            diag_error(S->c, "F0122", e->loc, NULL,
                       "integer overflow in '%c'", op);
            return NULL;
        }
        if ((r = new_value(S, V_INT, e->loc)))
            r->i = z;
        return r;
    }
    if (op == '%') {
        diag_error(S->c, "F0120", e->loc, NULL,
                   "operator '%%' needs integers, got %s and %s",
                   attr_value_desc(S->c, a), attr_value_desc(S->c, b));
        return NULL;
    }
    if (op == '/' && sema_num(b) == 0) {
        diag_error(S->c, "F0121", e->loc, NULL, "division by zero");
        return NULL;
    }
    if (!(r = new_value(S, V_REAL, e->loc)))
        return NULL;
    r->r = op == '+' ? sema_num(a) + sema_num(b)
         : op == '-' ? sema_num(a) - sema_num(b)
         : op == '*' ? sema_num(a) * sema_num(b) : sema_num(a) / sema_num(b);
    if (!isfinite(r->r)) {
        diag_error(S->c, "F0122", e->loc, NULL,
                   "real arithmetic overflow in '%c'", op);
        return NULL;
    }
    return r;
}

static value *eval_call_or_list(sema *S, const expr *e, binding *sc)
{
    value *v = new_value(S, e->kind == E_LIST ? V_LIST : V_CALL, e->loc);
    size_t i = 0;
    if (!v)
        return NULL;
    v->s = e->s;
    v->n = e->n;
    if ((S->values += e->n) > MAX_VALUES)
        return new_value(S, V_INT, e->loc);  /* reports the limit */
    v->items = arena_array(&S->c->mem, e->n, sizeof *v->items);
    if (e->kind == E_CALL) {
        v->names = arena_array(&S->c->mem, e->n, sizeof *v->names);
        v->name_locs = arena_array(&S->c->mem, e->n, sizeof *v->name_locs);
        if (!v->names || !v->name_locs)
            return NULL;
    }
    if (!v->items)
        return NULL;
    for (const arg *a = e->args; a; a = a->next, i++) {
        if (!(v->items[i] = sema_eval(S, a->value, sc)))
            return NULL;
        if (e->kind == E_CALL) {
            v->names[i] = a->name;
            v->name_locs[i] = a->name_loc;
        }
    }
    return v;
}

/* Evaluates e in scope sc; NULL after reporting an error.  Unbound names
 * stay identifiers (enum values, variant names, true/false) and become an
 * "undefined name" only where a number is needed. */
value *sema_eval(sema *S, const expr *e, binding *sc)
{
    value *v, *a, *b;
    binding *bd;
    if (!e)
        return NULL;
    switch (e->kind) {
    case E_INT:
    case E_REAL:
    case E_STR:
        if (!(v = new_value(S, e->kind == E_INT ? V_INT : e->kind == E_REAL
                                ? V_REAL : V_STR, e->loc)))
            return NULL;
        v->i = e->i;
        v->r = e->r;
        v->s = e->s;
        return v;
    case E_NAME:
        if ((bd = lookup(S, sc, e->s)) != NULL) {
            if (!bd->val || !(v = new_value(S, V_INT, e->loc)))
                return NULL;
            *v = *bd->val;
            v->loc = e->loc;     /* errors point at the use */
            return v;
        }
        if ((v = new_value(S, V_IDENT, e->loc)))
            v->s = e->s;
        return v;
    case E_LIST:
    case E_CALL:
        return eval_call_or_list(S, e, sc);
    case E_NEG:
        if (!(a = sema_eval(S, e->a, sc)) || !numeric_operand(S, sc, a, 'n'))
            return NULL;
        if (!(v = new_value(S, a->kind, e->loc)))
            return NULL;
        if (a->kind == V_INT) {
            if (a->i == INT64_MIN) {
                diag_error(S->c, "F0122", e->loc, NULL,
                           "integer overflow in '-'");
                return NULL;
            }
            v->i = -a->i;
        } else {
            v->r = -a->r;
        }
        return v;
    case E_BIN:
        a = sema_eval(S, e->a, sc);
        b = sema_eval(S, e->b, sc);
        if (!a || !b)
            return NULL;
        if (!numeric_operand(S, sc, a, e->op)
            || !numeric_operand(S, sc, b, e->op))
            return NULL;
        return arith(S, e, a, b);
    }
    return NULL;
}

/* An integer from e into *out; reports and returns -1 otherwise. */
int sema_eval_int(sema *S, const expr *e, binding *sc, const char *what,
                  int64_t *out)
{
    value *v = sema_eval(S, e, sc);
    if (!v)
        return -1;
    if (v->kind == V_INT) {
        *out = v->i;
        return 0;
    }
    if (v->kind == V_IDENT)
        undefined(S, sc, v->s, v->loc);
    else
        diag_error(S->c, "F0123", v->loc, NULL, "%s must be an integer, "
                   "got %s", what, attr_value_desc(S->c, v));
    return -1;
}

int sema_eval_real(sema *S, const expr *e, binding *sc, const char *what,
                   double *out)
{
    value *v = sema_eval(S, e, sc);
    if (!v)
        return -1;
    if (sema_is_num(v)) {
        *out = sema_num(v);
        return 0;
    }
    if (v->kind == V_IDENT)
        undefined(S, sc, v->s, v->loc);
    else
        diag_error(S->c, "F0120", v->loc, NULL, "%s must be a number, got "
                   "%s", what, attr_value_desc(S->c, v));
    return -1;
}

/* A dimension: 1..FLOW_MAX_DIM. */
int sema_eval_dim(sema *S, const expr *e, binding *sc, const char *what,
                  size_t *out)
{
    int64_t d;
    if (sema_eval_int(S, e, sc, what, &d) != 0)
        return -1;
    if (d < 1) {
        diag_error(S->c, "F0303", e->loc, NULL, "%s must be at least 1, "
                   "got %lld", what, (long long)d);
        return -1;
    }
    if (d > FLOW_MAX_DIM) {
        diag_error(S->c, "F0400", e->loc, NULL, "%s %lld exceeds the limit "
                   "of %d", what, (long long)d, FLOW_MAX_DIM);
        return -1;
    }
    *out = (size_t)d;
    return 0;
}

/* --- work limits ------------------------------------------------------ */

static int tick(sema *S, flow_loc loc)
{
    if (S->halted || diag_stopped(S->c))
        return -1;
    if (++S->work > MAX_WORK) {
        diag_error(S->c, "F0400", loc, "reduce the repeat counts",
                   "expansion exceeds %d statements", MAX_WORK);
        S->halted = 1;
        return -1;
    }
    return 0;
}

/* --- graph nodes ------------------------------------------------------ */

flow_graph_node *sema_new_node(sema *S, flow_node_kind kind, const stmt *s)
{
    flow_graph *g = S->g;
    flow_graph_node *n;
    if (g->n_nodes >= FLOW_MAX_LAYERS) {
        diag_error(S->c, "F0400", s->loc, "reduce the repeat counts",
                   "more than %d layers after expansion", FLOW_MAX_LAYERS);
        S->halted = 1;
        return NULL;
    }
    /* every layer keeps a dependency vector of its width */
    if ((S->cells += S->dim) > FLOW_MAX_CELLS) {
        diag_error(S->c, "F0400", s->loc, "use fewer layers or a smaller "
                   "input", "model too large: layers x width exceeds %u",
                   (unsigned)FLOW_MAX_CELLS);
        S->halted = 1;
        return NULL;
    }
    if (g->n_nodes == g->cap_nodes) {
        size_t cap = g->cap_nodes ? 2 * g->cap_nodes : 16;
        flow_graph_node *nn = arena_array(&S->c->mem, cap, sizeof *nn);
        flow_loc *nl = arena_array(&S->c->mem, cap, sizeof *nl);
        flow_loc **na = arena_array(&S->c->mem, cap, sizeof *na);
        if (!nn || !nl || !na)
            return NULL;
        if (g->n_nodes) {
            memcpy(nn, g->nodes, g->n_nodes * sizeof *nn);
            memcpy(nl, g->node_locs, g->n_nodes * sizeof *nl);
            memcpy(na, g->attr_locs, g->n_nodes * sizeof *na);
        }
        g->nodes = nn;
        g->node_locs = nl;
        g->attr_locs = na;
        g->cap_nodes = cap;
    }
    n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->struct_size = sizeof *n;
    n->kind = kind;
    n->file = S->c->files[s->loc.file].path;
    n->line = s->loc.line;
    n->col = s->loc.col;
    n->in_dim = S->dim;
    n->in_rank = n->out_rank = S->rank;
    memcpy(n->in_shape, S->shape, sizeof n->in_shape);
    memcpy(n->out_shape, S->shape, sizeof n->out_shape);
    g->node_locs[g->n_nodes] = s->loc;
    g->attr_locs[g->n_nodes] = NULL;
    g->n_nodes++;
    return n;
}

/* Arguments of a call as values, names and name positions. */
int sema_eval_args(sema *S, const arg *args, size_t n, binding *sc,
                   value ***vals, const char ***names, flow_loc **nlocs)
{
    size_t i = 0;
    int bad = 0;
    *vals = arena_array(&S->c->mem, n, sizeof **vals);
    *names = arena_array(&S->c->mem, n, sizeof **names);
    *nlocs = arena_array(&S->c->mem, n, sizeof **nlocs);
    if (!*vals || !*names || !*nlocs)
        return -1;
    for (const arg *a = args; a; a = a->next, i++) {
        (*names)[i] = a->name;
        (*nlocs)[i] = a->name_loc;
        if (!((*vals)[i] = sema_eval(S, a->value, sc)))
            bad = 1;
    }
    return bad ? -1 : 0;
}

/* `given NAME`: must be the declared context. */
int sema_check_given(sema *S, const char *given, flow_loc loc)
{
    flow_graph *g = S->g;
    char help[FLOW_MAX_IDENT + 64];
    if (!given)
        return 0;
    if (S->have_context && !strcmp(given, g->context_name)) {
        g->context_used = 1;
        return 1;
    }
    if (S->have_input && !strcmp(given, g->input_name)) {
        diag_error(S->c, "F0114", loc, "only the declared context can "
                   "condition a layer", "'%s' is the input, not a context",
                   given);
        return -1;
    }
    if (S->have_context)
        snprintf(help, sizeof help, "the declared context is '%s'",
                 g->context_name);
    else
        snprintf(help, sizeof help, "declare it first: context %s : "
                 "real[K];", given);
    diag_error(S->c, "F0113", loc, help, "context '%s' is not declared",
               given);
    return -1;
}

/* the scope a name suggestion searches (suggest_in_scope) */
typedef struct scope_hint { sema *S; binding *sc; } scope_hint;

static const char *suggest_in_scope(void *ctx, const char *name)
{
    scope_hint *h = ctx;
    return suggest_name(h->S, h->sc, name);
}

int sema_resolve_args(sema *S, const stmt *s, binding *sc,
                      const flow_attr_spec *spec, const char *what,
                      flow_attr_value **attrs, flow_loc **alocs)
{
    value **vals;
    const char **names;
    flow_loc *nlocs;
    scope_hint hint = {S, sc};
    int rc;
    if (sema_eval_args(S, s->args, s->n, sc, &vals, &names, &nlocs) != 0)
        return -1;
    S->c->suggest = suggest_in_scope;
    S->c->suggest_ctx = &hint;
    rc = attr_resolve(S->c, spec, vals, names, nlocs, s->n, s->name_loc,
                      what, attrs, alocs);
    S->c->suggest = NULL;
    return rc != 0 ? -1 : 0;
}

/* The help for a type not found: a plugin on the path that failed to
 * load (on demand, flow_plugin_load_on_demand, which leaves the loader's
 * message in the context: "plugin FILE: ...", "cannot load plugin FILE:
 * ...", "duplicate ... type") may be the one that provides it. */
const char *sema_plugin_trouble(sema *S, const char *otherwise)
{
    const char *e = flow_errmsg(S->c->ctx);
    int from_loader = e && (!strncmp(e, "plugin ", 7)
                            || !strncmp(e, "cannot load plugin ", 19)
                            || !strncmp(e, "duplicate ", 10));
    const char *h = from_loader ? arena_printf(&S->c->mem, "a plugin on the "
                                           "search path failed to load: %s",
                                           e) : NULL;
    return h ? h : otherwise;
}

static const char *suggest_layer(sema *S, const char *name)
{
    const char *cands[MAX_SUGGEST];
    size_t n = 0;
    for (size_t i = 0; i < flow_plugin_count(S->c->ctx); i++) {
        const flow_plugin_info *p = flow_plugin_get(S->c->ctx, i);
        for (size_t j = 0; j < p->n_layers && n < MAX_SUGGEST; j++)
            cands[n++] = p->layers[j]->name;
    }
    for (size_t i = 0; i < S->n_blocks && n < MAX_SUGGEST; i++)
        cands[n++] = S->blocks[i].name;
    return diag_suggest(name, cands, n);
}

/* Calls the plugin's describe() on a fully resolved config. */
#define SEMA_TENSORS 64
static int describe_layer(sema *S, flow_graph_node *n, size_t idx,
                          const flow_loc *attr_locs, flow_loc stmt_loc)
{
    flow_diag d;
    flow_layer_desc *desc;
    flow_param_tensor *tensors;
    int32_t *vec;
    int rc;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.attr = -1;
    if (!(desc = arena_alloc(&S->c->mem, sizeof *desc)))
        return -1;
    n->desc = desc;
    desc->struct_size = sizeof *desc;
    desc->dep_vec = arena_array(&S->c->mem, n->in_dim, sizeof(int32_t));
    if (!(vec = desc->dep_vec))
        return -1;
    /* room for the plugin to name its parameter tensors (1.5) */
    desc->tensors_cap = SEMA_TENSORS;
    if (!(tensors = desc->tensors = arena_array(&S->c->mem, SEMA_TENSORS,
                                                sizeof *desc->tensors)))
        return -1;
    rc = n->type->describe(&n->config, desc, &d);
    if (rc == FLOW_OK && (desc->dep_vec != vec || desc->tensors != tensors
                          || desc->tensors_cap != SEMA_TENSORS
                          || desc->struct_size != sizeof *desc)) {
        desc->dep_vec = vec;
        desc->tensors = tensors;
        desc->tensors_cap = SEMA_TENSORS;
        diag_error(S->c, "F0508", stmt_loc, NULL, "%s: plugin overwrote "
                   "host-owned fields of flow_layer_desc", n->label);
        return -1;
    }
    if (rc != FLOW_OK && S->shape_lost)
        return -1;              /* the F0102 before it is the error */
    if (rc != FLOW_OK) {
        flow_loc loc = stmt_loc;
        d.message[sizeof d.message - 1] = '\0';
        d.help[sizeof d.help - 1] = '\0';
        if (d.attr >= 0 && (size_t)d.attr < n->n_attrs && attr_locs
            && attr_locs[d.attr].line > 0)
            loc = attr_locs[d.attr];
        diag_error(S->c, "F0207", loc, d.help[0] ? d.help : NULL,
                   "%s: %s", n->label, d.message[0] ? d.message
                   : "rejected by its plugin (no message)");
        return -1;
    }
    if (verify_layer(S->c, idx))
        return -1;
    if (S->ranged && desc->domain != FLOW_DOMAIN_NONE
        && (desc->domain == FLOW_DOMAIN_OPEN
            ? S->rlo > desc->domain_lo && S->rhi < desc->domain_hi
            : S->rlo >= desc->domain_lo && S->rhi <= desc->domain_hi))
        return 0;
    return verify_domain(S->c, idx, S->pristine ? NULL : S->moved_by) ? -1
                                                                     : 0;
}

/* "[2, 4, 4]" into buf, for messages and reports. */
static const char *shape_text(size_t rank, const size_t *shape, char *buf,
                              size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < rank && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%zu", i ? ", " : "[",
                         shape[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
    return buf;
}

/* The output shape describe() declared (1.7; out_rank 0 keeps the input's)
 * becomes the state's: a layer maps D values to D values, so the product
 * must stay the width (F0511 at the layer otherwise). */
static int take_out_shape(sema *S, flow_graph_node *n, flow_loc loc)
{
    const flow_layer_desc *d = n->desc;
    size_t r = d->out_rank, vol = 1;
    char a[96], b[96];
    if (r == 0)
        return 0;
    for (size_t i = 0; i < r && i < FLOW_MAX_RANK; i++) {
        if (d->out_shape[i] == 0 || vol > SIZE_MAX / d->out_shape[i]) {
            vol = 0;
            break;
        }
        vol *= d->out_shape[i];
    }
    if (r > FLOW_MAX_RANK) {
        diag_error(S->c, "F0511", loc, "report a bug in its plugin", "%s: "
                   "declared output shape of rank %zu (at most %d)",
                   n->label, r, FLOW_MAX_RANK);
        return -1;
    }
    if (vol != S->dim) {
        diag_error(S->c, "F0511", loc, "a layer maps D values to D values: "
                   "report a bug in its plugin", "%s: declared output shape "
                   "%s holds %zu values, its input %s holds %zu", n->label,
                   shape_text(r, d->out_shape, a, sizeof a), vol,
                   shape_text(S->rank, S->shape, b, sizeof b), S->dim);
        return -1;
    }
    S->rank = r;
    memset(S->shape, 0, sizeof S->shape);
    memcpy(S->shape, d->out_shape, r * sizeof *S->shape);
    n->out_rank = r;
    memcpy(n->out_shape, S->shape, sizeof n->out_shape);
    return 0;
}

/* TYPE [(args)] [given c];  one graph node, described and verified */
static void expand_layer(sema *S, const stmt *s, binding *sc,
                         const char *given, flow_loc given_loc)
{
    const char *file = NULL;
    const flow_layer_type *t = flow_layer_type_find(S->c->ctx, s->name,
                                                    &file);
    flow_graph_node *n;
    flow_loc *alocs = NULL;
    flow_attr_value *attrs = NULL;
    char what[FLOW_MAX_IDENT + 16];
    int ctx_ok;
    size_t idx;

    if (!S->have_input) {
        if (!S->said_no_input)
            diag_error(S->c, "F0110", s->loc, "declare it first: input x : "
                       "real[D];", "layer before the 'input' declaration");
        S->said_no_input = 1;
        return;
    }
    if (S->have_output) {
        diag_error(S->c, "F0112", s->loc, "layers come before 'output'",
                   "layer after the 'output' declaration");
        return;
    }
    if (!t) {
        const char *best = suggest_layer(S, s->name);
        char help[FLOW_MAX_IDENT + 32];
        if (best)
            snprintf(help, sizeof help, "did you mean '%s'?", best);
        diag_error(S->c, "F0102", s->name_loc, best ? help
                   : sema_plugin_trouble(S, "`flowkit plugins` lists the "
                                         "layer types found"),
                   "unknown layer type '%s'", s->name);
        S->shape_lost = 1;
        return;
    }
    if (s->given) {
        given = s->given;
        given_loc = s->given_loc;
    }
    if ((ctx_ok = sema_check_given(S, given, given_loc)) < 0)
        return;
    snprintf(what, sizeof what, "layer '%s'", t->name);
    if (sema_resolve_args(S, s, sc, t->attrs, what, &attrs, &alocs) != 0)
        return;
    if (!(n = sema_new_node(S, FLOW_NODE_LAYER, s)))
        return;
    idx = S->g->n_nodes - 1;
    S->g->attr_locs[idx] = alocs;
    n->type = t;
    n->plugin_file = file;
    n->label = arena_printf(&S->c->mem, "%s#%zu", t->name, idx);
    n->n_attrs = attr_count(t->attrs);
    n->attrs = attrs;
    n->uses_context = ctx_ok > 0;
    n->config.struct_size = sizeof n->config;
    n->config.name = n->label;
    n->config.dim = S->dim;
    n->config.context_dim = ctx_ok > 0 ? S->g->context_dim : 0;
    n->config.attrs = attrs;
    n->config.has_bounds = (S->pristine && S->g->has_bounds) || S->ranged;
    n->config.lo = S->ranged ? S->rlo : S->g->lo;
    n->config.hi = S->ranged ? S->rhi : S->g->hi;
    n->config.line = s->loc.line;
    n->config.col = s->loc.col;
    n->config.host = flow_host_services();
    n->config.rank = S->rank;
    memcpy(n->config.shape, S->shape, sizeof n->config.shape);
    if (!n->label)
        return;
    if (describe_layer(S, n, idx, alocs, s->name_loc) != 0)
        return;
    if (take_out_shape(S, n, s->name_loc) != 0)
        return;
    if (n->desc->dep != FLOW_DEP_PERMUTATION) {
        /* a declared range holds only for inputs known inside the domain */
        const flow_layer_desc *d = n->desc;
        int in_domain = d->domain != FLOW_DOMAIN_NONE && n->config.has_bounds
            && (d->domain == FLOW_DOMAIN_OPEN
                ? n->config.lo > d->domain_lo && n->config.hi < d->domain_hi
                : n->config.lo >= d->domain_lo
                  && n->config.hi <= d->domain_hi);
        S->ranged = in_domain && d->range != FLOW_DOMAIN_NONE;
        S->rlo = d->range_lo;
        S->rhi = d->range_hi;
        S->pristine = 0;
        S->moved_by = n->label;
    }
    /* a flow that could not be trained in memory (and would make `flowkit
     * check` run for ever) is refused here, at the layer that tips it */
    if (n->desc->n_params > FLOW_MAX_PARAMS - S->params) {
        diag_error(S->c, "F0402", s->loc, "use narrower or fewer layers",
                   "%s: %zu parameters, %zu before it: the flow would have "
                   "more than %u learnable parameters", n->label,
                   n->desc->n_params, S->params, (unsigned)FLOW_MAX_PARAMS);
        S->halted = 1;
        return;
    }
    S->params += n->desc->n_params;
}

/* --- blocks ----------------------------------------------------------- */

/* NAME(args) [given c];  a block call: the body with the parameters bound
 * on top of the globals (lexical scope) */
static void expand_block(sema *S, const blockdef *bd, const stmt *s,
                         binding *sc, const char *given, flow_loc given_loc)
{
    const stmt *def = bd->s;
    binding *inner = NULL;
    value **vals;
    const char **names;
    flow_loc *nlocs;
    size_t i = 0;

    for (int k = 0; k < S->depth; k++)
        if (S->calls[k] == def) {
            char chain[512];
            size_t used = 0;
            for (int j = k; j < S->depth && used < sizeof chain; j++)
                used += (size_t)snprintf(chain + used, sizeof chain - used,
                                         "%s -> ", S->calls[j]->name);
            if (used < sizeof chain)
                snprintf(chain + used, sizeof chain - used, "%s", def->name);
            diag_error(S->c, "F0106", s->name_loc, "a block cannot call "
                       "itself, directly or through other blocks",
                       "recursive block '%s' (%s)", def->name, chain);
            return;
        }
    if (S->depth >= FLOW_MAX_NESTING) {
        diag_error(S->c, "F0400", s->loc, NULL, "blocks and repeats nested "
                   "deeper than %d levels", FLOW_MAX_NESTING);
        S->halted = 1;
        return;
    }
    if (s->n != def->n) {
        char help[FLOW_MAX_IDENT * 2 + 64];
        snprintf(help, sizeof help, "'%s' is declared at %s:%d with %zu "
                 "parameter%s", def->name, S->c->files[def->loc.file].path,
                 def->loc.line, def->n, def->n == 1 ? "" : "s");
        diag_error(S->c, "F0105", s->name_loc, help, "block '%s' takes %zu "
                   "argument%s, got %zu", def->name, def->n,
                   def->n == 1 ? "" : "s", s->n);
        return;
    }
    if (sema_eval_args(S, s->args, s->n, sc, &vals, &names, &nlocs) != 0)
        return;
    for (size_t j = 1; j < s->n; j++)
        if (!names[j] && names[j - 1]) {
            diag_error(S->c, "F0206", vals[j]->loc, "write name = value",
                       "positional argument after named ones in block "
                       "'%s'", def->name);
            return;
        }
    /* positional arguments bind in order; named ones by parameter name */
    for (const arg *p = def->args; p; p = p->next, i++) {
        value *v = vals[i];
        if (names[i] && strcmp(names[i], p->name)) {
            size_t j = 0;
            const arg *q;
            for (q = def->args; q && strcmp(q->name, names[i]);
                 q = q->next, j++)
                ;
            if (!q) {
                diag_error(S->c, "F0103", nlocs[i], NULL, "block '%s' has "
                           "no parameter '%s'", def->name, names[i]);
                return;
            }
        }
        for (size_t j = 0; j < s->n; j++)
            if (names[j] && !strcmp(names[j], p->name))
                v = vals[j];
        inner = bind(S, inner, p->name, v, p->name_loc);
    }
    if (s->given) {
        given = s->given;
        given_loc = s->given_loc;
    }
    S->calls[S->depth++] = def;
    expand_body(S, def->body, inner, 0, given, given_loc);
    S->depth--;
}


static int top_only(sema *S, const stmt *s, int top, const char *what)
{
    if (top)
        return 1;
    /* reported here: no "missing input/output" for it later */
    if (s->kind == S_INPUT)
        S->said_no_input = 1;
    if (s->kind == S_OUTPUT)
        S->said_no_output = 1;
    diag_error(S->c, "F0116", s->loc, "move it to the top level of the flow",
               "'%s' inside a repeat or block", what);
    return 0;
}

static void expand_stmt(sema *S, const stmt *s, binding **sc, int top,
                        const char *given, flow_loc given_loc,
                        binding *body_start)
{
    const blockdef *bd;
    int64_t count;
    size_t before;
    if (tick(S, s->loc) != 0)
        return;
    switch (s->kind) {
    case S_LAYER:
        if ((bd = find_block(S, s->name)) != NULL)
            expand_block(S, bd, s, *sc, given, given_loc);
        else
            expand_layer(S, s, *sc, given, given_loc);
        break;
    case S_REPEAT:
        if (sema_eval_int(S, s->e, *sc, "repeat count", &count) != 0)
            break;
        if (count < 0 || count > FLOW_MAX_REPEAT) {
            diag_error(S->c, count < 0 ? "F0123" : "F0400", s->e->loc, NULL,
                       "repeat count %lld is outside 0..%d",
                       (long long)count, FLOW_MAX_REPEAT);
            break;
        }
        if (S->depth >= FLOW_MAX_NESTING) {
            diag_error(S->c, "F0400", s->loc, NULL, "blocks and repeats "
                       "nested deeper than %d levels", FLOW_MAX_NESTING);
            S->halted = 1;
            break;
        }
        S->calls[S->depth++] = s;
        before = S->c->n_errors;
        for (int64_t i = 0; i < count && !S->halted; i++) {
            binding *inner = *sc;
            if (s->name) {
                value *v = new_value(S, V_INT, s->name_loc);
                if (!v)
                    break;
                v->i = i;
                inner = bind(S, inner, s->name, v, s->name_loc);
            }
            expand_body(S, s->body, inner, 0, given, given_loc);
            if (S->c->n_errors > before)
                break;          /* one report per statement, not count */
        }
        S->depth--;
        break;
    case S_CONST:
        for (binding *b = *sc; b != body_start; b = b->next)
            if (!strcmp(b->name, s->name)) {
                diag_error(S->c, "F0101", s->name_loc, NULL, "duplicate "
                           "name '%s' (first defined at line %d)", s->name,
                           b->loc.line);
                return;
            }
        *sc = bind(S, *sc, s->name, sema_eval(S, s->e, *sc), s->name_loc);
        break;
    case S_EXIT:
        sema_decl_exit(S, s, *sc);
        break;
    case S_INPUT:
        if (top_only(S, s, top, "input"))
            sema_decl_input(S, s, *sc);
        break;
    case S_CONTEXT:
        if (top_only(S, s, top, "context"))
            sema_decl_context(S, s, *sc);
        break;
    case S_OUTPUT:
        if (top_only(S, s, top, "output"))
            sema_decl_output(S, s, *sc);
        break;
    case S_TRAIN:
        if (top_only(S, s, top, "train"))
            sema_decl_train(S, s, *sc);
        break;
    case S_TARGET:
        if (!top_only(S, s, top, "target"))
            break;
        if (S->have_target) {
            diag_error(S->c, "F0101", s->loc, NULL, "second 'target' "
                       "declaration (first at line %d)", S->target_line);
            break;
        }
        S->have_target = 1;
        S->target_line = s->loc.line;
        if (!S->c->cmdline_target)      /* --target replaces it */
            sema_decl_target(S, s, *sc);
        break;
    default:
        break;
    }
}

/* body is the S_KV head made by the parser's `body` rule. */
static void expand_body(sema *S, const stmt *body, binding *sc, int top,
                        const char *given, flow_loc given_loc)
{
    binding *start = sc;
    if (!body)
        return;
    for (const stmt *s = body->body; s && !S->halted; s = s->next)
        expand_stmt(S, s, &sc, top, given, given_loc, start);
}

/* --- top level ------------------------------------------------------- */

static void add_block(sema *S, const stmt *s)
{
    const blockdef *old = find_block(S, s->name);
    if (old) {
        diag_error(S->c, "F0101", s->name_loc, NULL, "duplicate block '%s' "
                   "(first defined at %s:%d)", s->name,
                   S->c->files[old->s->loc.file].path, old->s->loc.line);
        return;
    }
    for (const arg *p = s->args; p; p = p->next)
        for (const arg *q = s->args; q != p; q = q->next)
            if (!strcmp(p->name, q->name)) {
                diag_error(S->c, "F0101", p->name_loc, NULL, "duplicate "
                           "parameter '%s'", p->name);
                return;
            }
    if (S->n_blocks == S->cap_blocks) {
        size_t cap = S->cap_blocks ? 2 * S->cap_blocks : 8;
        blockdef *nb = arena_array(&S->c->mem, cap, sizeof *nb);
        if (!nb)
            return;
        if (S->n_blocks)
            memcpy(nb, S->blocks, S->n_blocks * sizeof *nb);
        S->blocks = nb;
        S->cap_blocks = cap;
    }
    S->blocks[S->n_blocks].name = s->name;
    S->blocks[S->n_blocks].s = s;
    S->n_blocks++;
}

sema *sema_new(flow_compilation *c)
{
    sema *S = arena_alloc(&c->mem, sizeof *S);
    if (!S)
        return NULL;
    S->c = c;
    S->g = &c->graph;
    S->pristine = 1;
    return S;
}

void sema_declare(sema *S, int fi, const stmt *s)
{
    binding *b;
    switch (s->kind) {
    case S_CONST:
        for (b = S->globals; b; b = b->next)
            if (!strcmp(b->name, s->name))
                break;
        if (b) {
            diag_error(S->c, "F0101", s->name_loc, NULL, "duplicate "
                       "name '%s' (first defined at %s:%d)", s->name,
                       S->c->files[b->loc.file].path, b->loc.line);
            break;
        }
        S->globals = bind(S, S->globals, s->name, sema_eval(S, s->e, NULL),
                          s->name_loc);
        break;
    case S_BLOCK:
        add_block(S, s);
        break;
    case S_FLOW:
        if (fi != 0)
            diag_error(S->c, "F0107", s->loc, "imported files hold "
                       "consts and blocks", "flow '%s' in an imported "
                       "file", s->name);
        else if (S->flow)
            diag_error(S->c, "F0107", s->loc, NULL, "second flow '%s' "
                       "(one flow per spec; the first is '%s' at line "
                       "%d)", s->name, S->flow->name,
                       S->flow->loc.line);
        else
            S->flow = s;
        break;
    default:
        break;
    }
}

void sema_expand(sema *S)
{
    flow_compilation *c = S->c;
    flow_loc none = {0, 0, 0, 0, 0};

    if (!S->flow) {
        if (c->n_errors == 0) {
            flow_loc at = {0, 1, 1, 1, 1};
            diag_error(c, "F0107", c->files[0].len ? at : none,
                       "a spec defines one `flow NAME { ... }`",
                       "no flow in %s", c->files[0].path);
        }
        return;
    }
    S->g->name = S->flow->name;
    expand_body(S, S->flow->body, NULL, 1, NULL, none);
    if (S->halted || diag_stopped(c))
        return;
    if (!S->have_input && !S->said_no_input)
        diag_error(c, "F0110", S->flow->name_loc, "declare it: input x : "
                   "real[D];", "flow '%s' has no input", S->flow->name);
    if (!S->have_output && !S->said_no_output)
        diag_error(c, "F0111", S->flow->body->close_loc, "end the flow with "
                   "output z ~ normal;", "flow '%s' has no output",
                   S->flow->name);
    if (c->cmdline_stmt && S->have_input)
        sema_decl_target(S, c->cmdline_stmt, S->globals);
    if (c->n_errors == 0 && !c->mem.failed)   /* nodes may lack a desc */
        verify_graph(c);
}
