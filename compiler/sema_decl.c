/* sema_decl.c - semantic analysis of the flow's declarations: input (a
 * vector or an image [C, H, W]), context, exits, output, train, target. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "compiler.h"
#include "sema_impl.h"

/* --- bases ------------------------------------------------------------ */

static const flow_attr_spec mixture_attrs[] = {
    {.name = "k", .type = FLOW_ATTR_INT, .doc = "number of components",
     .required = 1, .has_min = 1, .min = 1, .has_max = 1, .max = 1024},
    {0}};

static const struct {
    const char *name;
    flow_base_kind kind;
    const flow_attr_spec *attrs;
} bases[] = {
    {"normal", FLOW_BASE_NORMAL, NULL},
    {"diag_normal", FLOW_BASE_DIAG_NORMAL, NULL},
    {"logistic", FLOW_BASE_LOGISTIC, NULL},
    {"mixture", FLOW_BASE_GMM, mixture_attrs},
};

#define N_BASES (sizeof bases / sizeof bases[0])

/* base ::= NAME [(args)] [given c], for `dim` dimensions */
static int resolve_base(sema *S, const base_ref *b, binding *sc, size_t dim,
                        flow_graph_base *out)
{
    size_t k;
    value **vals;
    const char **names;
    flow_loc *nlocs, *alocs;
    flow_attr_value *attrs;
    char what[FLOW_MAX_IDENT + 16];
    int ctx;

    for (k = 0; k < N_BASES && strcmp(bases[k].name, b->name); k++)
        ;
    if (k == N_BASES) {
        const char *cands[N_BASES];
        const char *best;
        char help[160];
        for (size_t i = 0; i < N_BASES; i++)
            cands[i] = bases[i].name;
        best = diag_suggest(b->name, cands, N_BASES);
        if (best)
            snprintf(help, sizeof help, "did you mean '%s'?", best);
        else
            snprintf(help, sizeof help, "bases: normal, diag_normal, "
                     "logistic, mixture(k)");
        diag_error(S->c, "F0300", b->loc, help,
                   "unknown base distribution '%s'", b->name);
        return -1;
    }
    if ((ctx = sema_check_given(S, b->given, b->given_loc)) < 0)
        return -1;
    if (ctx > 0 && (bases[k].kind == FLOW_BASE_NORMAL
                    || bases[k].kind == FLOW_BASE_LOGISTIC)) {
        diag_error(S->c, "F0301", b->given_loc, "condition the layers "
                   "instead: TYPE(...) given c", "base '%s' has no "
                   "parameters to condition on a context", b->name);
        return -1;
    }
    if (ctx > 0) {
        /* the runtime has no network from the context to a base's
         * parameters: refused here, where the statement can be named,
         * not when a model is built */
        diag_error(S->c, "F0305", b->given_loc, "condition the layers "
                   "instead (TYPE(...) given c) and leave the base "
                   "unconditional", "a base conditioned on a context "
                   "('%s given %s') is not supported by this runtime",
                   b->name, b->given);
        return -1;
    }
    if (sema_eval_args(S, b->args, b->n, sc, &vals, &names, &nlocs) != 0)
        return -1;
    snprintf(what, sizeof what, "base '%s'", b->name);
    if (attr_resolve(S->c, bases[k].attrs, vals, names, nlocs, b->n, b->loc,
                     what, &attrs, &alocs) != 0)
        return -1;
    memset(out, 0, sizeof *out);
    out->kind = bases[k].kind;
    out->name = bases[k].name;
    out->uses_context = ctx > 0;
    if (out->kind == FLOW_BASE_GMM) {
        out->n_args = 1;
        out->args[0] = (double)attrs[0].i;
        /* means and log-scales per component, and the mixture logits */
        out->n_params = (size_t)attrs[0].i * (2 * dim + 1);
    } else if (out->kind == FLOW_BASE_DIAG_NORMAL) {
        out->n_params = 2 * dim;
    }
    return 0;
}

/* --- statements ------------------------------------------------------- */

/* The dimensions of `real[D]` or `real[C, H, W]` into the graph's input
 * shape; an image is stored flat in C order, so its width is C*H*W. */
static int input_shape(sema *S, const expr *e, binding *sc)
{
    flow_graph *g = S->g;
    static const char *const names[3] = {"channels", "height", "width"};
    size_t vol = 1;
    if (e->kind != E_LIST) {
        if (sema_eval_dim(S, e, sc, "input dimension", &g->input_dim) != 0)
            return -1;
        g->input_rank = 1;
        g->input_shape[0] = g->input_dim;
        g->input_shape[1] = g->input_shape[2] = g->input_shape[3] = 0;
        return 0;
    }
    if (e->n != 3) {
        diag_error(S->c, "F0306", e->loc, "write real[D] for a vector or "
                   "real[C, H, W] for an image (channels, height, width)",
                   "input shape of rank %zu: only ranks 1 and 3 are "
                   "supported", e->n);
        return -1;
    }
    memset(g->input_shape, 0, sizeof g->input_shape);
    size_t i = 0;
    for (const arg *a = e->args; a && i < 3; a = a->next, i++) {
        char what[32];
        snprintf(what, sizeof what, "input %s", names[i]);
        if (sema_eval_dim(S, a->value, sc, what, &g->input_shape[i]) != 0)
            return -1;
        vol *= g->input_shape[i];
        if (vol > FLOW_MAX_DIM) {
            diag_error(S->c, "F0400", e->loc, NULL, "input shape of %zu "
                       "values or more exceeds the limit of %d", vol,
                       FLOW_MAX_DIM);
            return -1;
        }
    }
    g->input_rank = 3;
    g->input_dim = vol;
    return 0;
}

/* input NAME : real[D] | real[C, H, W] [in [lo, hi]]; */
void sema_decl_input(sema *S, const stmt *s, binding *sc)
{
    flow_graph *g = S->g;
    /* a failed declaration has been reported: no "missing input" later */
    S->said_no_input = 1;
    if (S->have_input) {
        diag_error(S->c, "F0101", s->loc, NULL, "second 'input' declaration "
                   "(first at line %d)", g->input_loc.line);
        return;
    }
    if (strcmp(s->type_name, "real")) {
        diag_error(S->c, "F0115", s->type_loc, "write real[D]",
                   "unknown element type '%s'", s->type_name);
        return;
    }
    if (input_shape(S, s->e, sc) != 0)
        return;
    if (s->lo) {
        if (sema_eval_real(S, s->lo, sc, "bound", &g->lo) != 0
            || sema_eval_real(S, s->hi, sc, "bound", &g->hi) != 0)
            return;
        if (!(g->lo < g->hi)) {
            diag_error(S->c, "F0304", s->lo->loc, NULL, "empty bounds: "
                       "[%g, %g] needs lo < hi", g->lo, g->hi);
            return;
        }
        g->has_bounds = 1;
    }
    g->input_name = s->name;
    g->input_loc = s->loc;
    S->dim = g->input_dim;
    S->rank = g->input_rank;
    memcpy(S->shape, g->input_shape, sizeof S->shape);
    S->have_input = 1;
}

/* context NAME : real[K]; */
void sema_decl_context(sema *S, const stmt *s, binding *sc)
{
    flow_graph *g = S->g;
    if (S->have_context) {
        diag_error(S->c, "F0101", s->loc, NULL, "second 'context' "
                   "declaration (first at line %d)", g->context_loc.line);
        return;
    }
    if (S->have_input && !strcmp(s->name, g->input_name)) {
        diag_error(S->c, "F0101", s->name_loc, NULL, "'%s' is already the "
                   "input's name", s->name);
        return;
    }
    if (strcmp(s->type_name, "real")) {
        diag_error(S->c, "F0115", s->type_loc, "write real[K]",
                   "unknown element type '%s'", s->type_name);
        return;
    }
    if (sema_eval_dim(S, s->e, sc, "context dimension", &g->context_dim) != 0)
        return;
    g->context_name = s->name;
    g->context_loc = s->loc;
    S->have_context = 1;
}

/* The latents (exits, then the output) are named apart from each other
 * and from the input and the context: tools address them by name (the
 * JSON graph, a model's column names).  1 after reporting F0101 at
 * s->name_loc, for a statement `what` ("exit" or "output"). */
static int latent_name_taken(sema *S, const stmt *s, const char *what)
{
    flow_graph *g = S->g;
    const char *name = s->name;
    if (S->have_input && !strcmp(name, g->input_name)) {
        diag_error(S->c, "F0101", s->name_loc, "name the latent apart from "
                   "the data", "%s name '%s' is already the input's (line "
                   "%d)", what, name, g->input_loc.line);
        return 1;
    }
    if (S->have_context && !strcmp(name, g->context_name)) {
        diag_error(S->c, "F0101", s->name_loc, "name the latent apart from "
                   "the context", "%s name '%s' is already the context's "
                   "(line %d)", what, name, g->context_loc.line);
        return 1;
    }
    for (size_t i = 0; i < g->n_nodes; i++) {
        const flow_graph_node *n = &g->nodes[i];
        const flow_loc *at = &g->node_locs[i];
        if (n->kind != FLOW_NODE_EXIT || !n->exit_name
            || strcmp(n->exit_name, name))
            continue;
        if (at->file == s->loc.file && at->line == s->loc.line
            && at->col == s->loc.col) {
            /* the same statement again: a repeat body or a block
             * called twice */
            diag_error(S->c, "F0101", s->name_loc, "give each exit its own "
                       "name: write the exits out, one statement per name",
                       "exit name '%s' is given again by the same statement "
                       "(in a repeat, or a block called more than once)",
                       name);
            return 1;
        }
        diag_error(S->c, "F0101", s->name_loc, NULL, "%s name '%s' is "
                   "already an exit's (line %d)", what, name, at->line);
        return 1;
    }
    return 0;
}

/* exit K -> NAME ~ base on an image [C, H, W]: K counts channels, the
 * first K*H*W values of the flat state (the channels stored first in C
 * order) leave, and [C-K, H, W] flows on, as RealNVP's multi-scale
 * architecture factors out half the channels (Dinh et al. 2017, sec. 3.6) */
static void exit_channels(sema *S, const stmt *s, binding *sc, int64_t k)
{
    size_t c = S->shape[0], hw = S->shape[1] * S->shape[2];
    flow_graph_node *n;
    flow_graph_base base;
    if (c == 1) {
        diag_error(S->c, "F0302", s->e->loc, "squeeze first, to trade "
                   "height and width for channels", "exit %lld does not "
                   "fit: the state [1, %zu, %zu] has 1 channel here, and an "
                   "exit takes whole channels and leaves some", (long long)k,
                   S->shape[1], S->shape[2]);
        return;
    }
    if (k < 1 || (uint64_t)k >= c) {
        diag_error(S->c, "F0302", s->e->loc, "on an image, K counts "
                   "channels: K*H*W values leave", "exit %lld does not fit: "
                   "the state [%zu, %zu, %zu] has %zu channels here, and an "
                   "exit needs 1 <= K < %zu", (long long)k, c, S->shape[1],
                   S->shape[2], c, c);
        return;
    }
    if (resolve_base(S, &s->base, sc, (size_t)k * hw, &base) != 0)
        return;
    if (!(n = sema_new_node(S, FLOW_NODE_EXIT, s)))
        return;
    n->exit_k = (size_t)k * hw;
    n->exit_name = s->name;
    n->exit_base = base;
    n->label = arena_printf(&S->c->mem, "exit#%zu", S->g->n_nodes - 1);
    S->dim -= n->exit_k;
    S->shape[0] = c - (size_t)k;
    n->out_shape[0] = S->shape[0];
    S->pristine = 0;
    S->ranged = 0;
    S->moved_by = n->label;
}

/* exit K -> NAME ~ base;  the first K dimensions of the state leave */
void sema_decl_exit(sema *S, const stmt *s, binding *sc)
{
    int64_t k;
    flow_graph_node *n;
    flow_graph_base base;
    if (!S->have_input)
        return;
    if (S->have_output) {
        diag_error(S->c, "F0112", s->loc, "exits come before 'output'",
                   "exit after the 'output' declaration");
        return;
    }
    if (latent_name_taken(S, s, "exit"))
        return;
    if (sema_eval_int(S, s->e, sc, "exit size", &k) != 0)
        return;
    if (S->shape_lost)
        return;
    if (S->rank == 3) {
        exit_channels(S, s, sc, k);
        return;
    }
    if (k < 1 || (uint64_t)k >= S->dim) {
        diag_error(S->c, "F0302", s->e->loc, S->dim > 1 ? NULL
                   : "nothing can exit from a 1-dimensional state",
                   "exit %lld does not fit: the state has %zu dimension%s "
                   "here, and an exit needs 1 <= K < %zu", (long long)k,
                   S->dim, S->dim == 1 ? "" : "s", S->dim);
        return;
    }
    if (resolve_base(S, &s->base, sc, (size_t)k, &base) != 0)
        return;
    if (!(n = sema_new_node(S, FLOW_NODE_EXIT, s)))
        return;
    n->exit_k = (size_t)k;
    n->exit_name = s->name;
    n->exit_base = base;
    n->label = arena_printf(&S->c->mem, "exit#%zu", S->g->n_nodes - 1);
    S->dim -= (size_t)k;
    S->shape[0] = S->dim;
    n->out_shape[0] = S->dim;
    S->pristine = 0;
    S->ranged = 0;
    S->moved_by = n->label;
}

/* output NAME ~ base; */
void sema_decl_output(sema *S, const stmt *s, binding *sc)
{
    flow_graph *g = S->g;
    if (S->have_output) {
        diag_error(S->c, "F0101", s->loc, NULL, "second 'output' declaration "
                   "(first at line %d)", S->output_loc.line);
        return;
    }
    S->have_output = 1;
    S->output_loc = s->loc;
    if (!S->have_input || latent_name_taken(S, s, "output"))
        return;
    if (resolve_base(S, &s->base, sc, S->dim, &g->base) != 0)
        return;
    g->output_name = s->name;
    g->output_dim = S->dim;
}

/* train { key = value; }: known keys, their value kinds and ranges. */
static const struct {
    const char *key;
    char kind;                  /* 'n' name, 'i' integer, 'r' real */
    int positive;               /* > 0 (else >= 0) for numbers     */
    const char *expects;
} train_keys[] = {
    {"optimizer", 'n', 0, "a name"},
    {"lr", 'r', 1, "a positive number"},
    {"batch", 'i', 1, "a positive integer"},
    {"epochs", 'i', 1, "a positive integer"},
    {"weight_decay", 'r', 0, "a number >= 0"},
    {"seed", 'i', 0, "an integer >= 0"},
    {"clip", 'r', 1, "a positive number"},
    {"patience", 'i', 0, "an integer >= 0"},
    {"steps", 'i', 1, "a positive integer"},
    {"schedule", 'n', 0, "a name (constant or cosine)"},
    {"warmup", 'i', 0, "an integer >= 0"},
};

/* Does v fit train key k? */
static int train_value_ok(size_t k, const value *v)
{
    if (train_keys[k].kind == 'n')
        return v->kind == V_IDENT || v->kind == V_STR;
    if (!sema_is_num(v) || (train_keys[k].kind == 'i' && v->kind != V_INT))
        return 0;
    return train_keys[k].positive ? sema_num(v) > 0 : sema_num(v) >= 0;
}
#define N_TRAIN (sizeof train_keys / sizeof train_keys[0])

/* train { NAME = expr; ... } */
void sema_decl_train(sema *S, const stmt *s, binding *sc)
{
    flow_graph *g = S->g;
    size_t n = 0, k;
    for (const stmt *kv = s->body; kv; kv = kv->next)
        n++;
    if (g->train) {
        diag_error(S->c, "F0101", s->loc, NULL, "second 'train' section");
        return;
    }
    g->train = arena_array(&S->c->mem, n, sizeof *g->train);
    if (!g->train)
        return;
    for (const stmt *kv = s->body; kv; kv = kv->next) {
        flow_train_entry *t;
        value *v;
        const char *cands[N_TRAIN];
        for (k = 0; k < N_TRAIN && strcmp(train_keys[k].key, kv->name); k++)
            cands[k] = train_keys[k].key;
        if (k == N_TRAIN) {
            const char *best = diag_suggest(kv->name, cands, N_TRAIN);
            char help[64];
            if (best)
                snprintf(help, sizeof help, "did you mean '%s'?", best);
            diag_error(S->c, "F0600", kv->name_loc, best ? help
                       : "known: optimizer, lr, batch, epochs, "
                         "weight_decay, seed, clip, patience",
                       "unknown train setting '%s'", kv->name);
            continue;
        }
        for (size_t j = 0; j < g->n_train; j++)
            if (!strcmp(g->train[j].key, kv->name))
                diag_error(S->c, "F0101", kv->name_loc, NULL, "train "
                           "setting '%s' given twice", kv->name);
        if (!(v = sema_eval(S, kv->e, sc)))
            continue;
        t = &g->train[g->n_train];
        t->key = kv->name;
        t->line = kv->loc.line;
        t->col = kv->loc.col;
        if (!train_value_ok(k, v)) {
            diag_error(S->c, "F0601", v->loc, NULL, "train setting '%s' "
                       "expects %s, got %s", kv->name,
                       train_keys[k].expects, attr_value_desc(S->c, v));
            continue;
        }
        if (train_keys[k].kind == 'n') {
            t->text = v->s;
        } else {
            t->is_number = 1;
            t->number = sema_num(v);
            t->text = v->kind == V_INT ? arena_printf(&S->c->mem, "%lld",
                                                      (long long)v->i)
                                       : arena_printf(&S->c->mem, "%.17g",
                                                      v->r);
        }
        g->n_train++;
    }
}

/* Offset of (line, col) in file fi's text. */
static size_t text_offset(const source_file *f, int line, int col)
{
    size_t off = 0;
    for (int l = 1; l < line && off < f->len; off++)
        if (f->text[off] == '\n')
            l++;
    off += (size_t)(col > 0 ? col - 1 : 0);
    return off < f->len ? off : f->len;
}

/* The source text of a target statement from its name to its end. */
static const char *target_text(sema *S, const stmt *s)
{
    const source_file *f = &S->c->files[s->name_loc.file];
    size_t a = text_offset(f, s->name_loc.line, s->name_loc.col);
    size_t b = text_offset(f, s->loc.end_line, s->loc.end_col) + 1;
    if (b > f->len)
        b = f->len;
    return arena_strndup(&S->c->mem, f->text + a, b > a ? b - a : 0);
}

static const char *suggest_target(sema *S, const char *name)
{
    const char *cands[MAX_SUGGEST];
    size_t n = 0;
    for (size_t i = 0; i < flow_plugin_count(S->c->ctx); i++) {
        const flow_plugin_info *p = flow_plugin_get(S->c->ctx, i);
        for (size_t j = 0; j < p->n_targets && n < MAX_SUGGEST; j++)
            cands[n++] = p->targets[j]->name;
    }
    return diag_suggest(name, cands, n);
}

/* target NAME [(args)];  the unnormalised density a variational fit
 * (`flowkit fit`) approaches; checked against its plugin's table and
 * describe() like a layer. */
void sema_decl_target(sema *S, const stmt *s, binding *sc)
{
    flow_graph *g = S->g;
    flow_graph_target *gt = &g->target;
    const char *file = NULL;
    const flow_target_type *t;
    flow_target_config cfg;
    flow_diag d;
    flow_loc *alocs = NULL;
    flow_attr_value *attrs = NULL;
    char what[FLOW_MAX_IDENT + 16];
    size_t want = 0;

    if (!S->have_input) {
        if (!S->said_no_input)
            diag_error(S->c, "F0110", s->loc, "declare it first: input x : "
                       "real[D];", "target before the 'input' declaration");
        S->said_no_input = 1;
        return;
    }
    if (!(t = flow_target_type_find(S->c->ctx, s->name, &file))) {
        const char *best = suggest_target(S, s->name);
        char help[FLOW_MAX_IDENT + 32];
        if (best)
            snprintf(help, sizeof help, "did you mean '%s'?", best);
        diag_error(S->c, "F0700", s->name_loc, best ? help
                   : sema_plugin_trouble(S, "`flowkit plugins` lists the "
                                         "targets found"),
                   "unknown target type '%s'", s->name);
        return;
    }
    if (S->have_context) {
        diag_error(S->c, "F0703", s->loc, "variational fits draw from an "
                   "unconditional flow; remove the context or the target",
                   "a target in a flow with a context");
        return;
    }
    snprintf(what, sizeof what, "target '%s'", t->name);
    if (sema_resolve_args(S, s, sc, t->attrs, what, &attrs, &alocs) != 0)
        return;
    memset(&cfg, 0, sizeof cfg);
    cfg.struct_size = sizeof cfg;
    cfg.dim = g->input_dim;
    cfg.attrs = attrs;
    cfg.line = s->loc.line;
    cfg.col = s->loc.col;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.attr = -1;
    if (t->describe(&cfg, &want, &d) != FLOW_OK) {
        flow_loc loc = s->name_loc;
        d.message[sizeof d.message - 1] = '\0';
        d.help[sizeof d.help - 1] = '\0';
        if (d.attr >= 0 && (size_t)d.attr < attr_count(t->attrs) && alocs
            && alocs[d.attr].line > 0)
            loc = alocs[d.attr];
        diag_error(S->c, "F0701", loc, d.help[0] ? d.help : NULL,
                   "target '%s': %s", t->name, d.message[0] ? d.message
                   : "rejected by its plugin (no message)");
        return;
    }
    if (want && want != g->input_dim) {
        char help[64];
        snprintf(help, sizeof help, "declare input %s : real[%zu];",
                 g->input_name, want);
        diag_error(S->c, "F0702", s->name_loc, help, "target '%s' is %zu-"
                   "dimensional, the input has %zu dimension%s", t->name,
                   want, g->input_dim, g->input_dim == 1 ? "" : "s");
        return;
    }
    memset(gt, 0, sizeof *gt);
    gt->struct_size = sizeof *gt;
    gt->type = t;
    gt->plugin_file = file;
    gt->file = S->c->files[s->loc.file].path;
    gt->line = s->loc.line;
    gt->col = s->loc.col;
    gt->dim = g->input_dim;
    gt->n_attrs = attr_count(t->attrs);
    gt->attrs = attrs;
    gt->text = target_text(S, s);
    g->target_loc = s->loc;
}
