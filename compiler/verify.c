/* verify.c - the compile-time proof that each layer is invertible with a
 * tractable log-determinant (triangular or certified), then graph warnings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"

#define MATRIX_MAX_DIM 4096     /* D x D bytes checked for FLOW_DEP_MATRIX */
#define MATRIX_BUDGET (1u << 26) /* D x D entries verified, all layers     */

/* Names of the ABI enums in messages and reports. */
const char *verify_jac_name(flow_jac_class j)
{
    switch (j) {
    case FLOW_JAC_VOLUME_PRESERVING: return "volume-preserving";
    case FLOW_JAC_DIAGONAL: return "diagonal";
    case FLOW_JAC_TRIANGULAR: return "triangular";
    case FLOW_JAC_COUPLING: return "coupling";
    case FLOW_JAC_DENSE_LU: return "dense-LU";
    case FLOW_JAC_RESIDUAL: return "residual";
    case FLOW_JAC_ODE: return "ODE";
    case FLOW_JAC_DENSE_EXACT: return "dense-exact";
    }
    return "?";
}

const char *verify_cert_name(flow_cert_kind k)
{
    switch (k) {
    case FLOW_CERT_STRUCTURAL: return "structural";
    case FLOW_CERT_MONOTONE: return "monotone";
    case FLOW_CERT_LIPSCHITZ: return "lipschitz";
    case FLOW_CERT_LU: return "LU";
    case FLOW_CERT_ODE: return "ODE";
    }
    return "?";
}

/* The span of a layer's type name (its statement's first token). */
static flow_loc node_name_loc(const flow_graph *g, size_t idx)
{
    flow_loc loc = g->node_locs[idx];
    const flow_graph_node *n = &g->nodes[idx];
    loc.end_line = loc.line;
    loc.end_col = loc.col + (int)strlen(n->type ? n->type->name : "exit") - 1;
    return loc;
}

/* v is a permutation of 0..d-1?  Otherwise a reason in why (out of
 * memory also fails the compilation). */
static int is_permutation(flow_compilation *c, const int32_t *v, size_t d,
                          char *why, size_t cap)
{
    unsigned char *seen = calloc(d ? d : 1, 1);
    int ok = 1;
    if (!seen) {
        c->mem.failed = 1;
        snprintf(why, cap, "out of memory");
        return 0;
    }
    for (size_t i = 0; i < d && ok; i++) {
        if (v[i] < 0 || (size_t)v[i] >= d) {
            snprintf(why, cap, "entry %zu is %d, outside 0..%zu", i,
                     (int)v[i], d - 1);
            ok = 0;
        } else if (seen[v[i]]) {
            snprintf(why, cap, "%d appears twice", (int)v[i]);
            ok = 0;
        } else {
            seen[v[i]] = 1;
        }
    }
    free(seen);
    return ok;
}

/* Kahn's algorithm on edges j -> i for mat[i*d + j] (i != j).  Returns 1
 * when acyclic; otherwise writes a cycle "a -> b -> a" into why. */
static int acyclic(flow_compilation *c, const uint8_t *mat, size_t d,
                   char *why, size_t cap)
{
    size_t *indeg = calloc(d, sizeof *indeg);
    size_t *queue = calloc(d, sizeof *queue);
    size_t head = 0, tail = 0, done = 0;
    int ok = 0;
    if (!indeg || !queue) {
        c->mem.failed = 1;
        snprintf(why, cap, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            if (i != j && mat[i * d + j])
                indeg[i]++;
    for (size_t i = 0; i < d; i++)
        if (!indeg[i])
            queue[tail++] = i;
    while (head < tail) {
        size_t j = queue[head++];
        done++;
        for (size_t i = 0; i < d; i++)
            if (i != j && mat[i * d + j] && --indeg[i] == 0)
                queue[tail++] = i;
    }
    ok = done == d;
    if (!ok) {
        /* walk back along in-edges inside the remaining set until a
         * dimension repeats: that closes a cycle */
        size_t at = 0, steps = 0, used = 0;
        while (!indeg[at])
            at++;
        for (size_t s = 0; s < d; s++) {       /* enter the cycle */
            size_t j = 0;
            while (j == at || !mat[at * d + j] || !indeg[j])
                j++;
            at = j;
        }
        size_t start = at;
        do {
            size_t j = 0;
            while (j == at || !mat[at * d + j] || !indeg[j])
                j++;
            if (used < cap)
                used += (size_t)snprintf(why + used, cap - used, "%zu <- ",
                                         at);
            at = j;
        } while (at != start && ++steps < 8);
        if (used < cap)
            snprintf(why + used, cap - used, at == start ? "%zu" : "%zu ...",
                     at);
    }
out:
    free(indeg);
    free(queue);
    return ok;
}

static int check_matrix(flow_compilation *c, size_t idx, flow_loc loc)
{
    const flow_graph_node *n = &c->graph.nodes[idx];
    size_t d = n->in_dim;
    uint8_t *mat;
    char why[256];
    int errs = 0;

    if (!n->type->dep_matrix) {
        diag_error(c, "F0508", loc, NULL, "%s: plugin declares a dependency "
                   "matrix but has no dep_matrix()", n->label);
        return 1;
    }
    if (d > MATRIX_MAX_DIM) {
        diag_error(c, "F0400", loc, NULL, "%s: a %zu x %zu dependency matrix "
                   "is too large to verify (limit %d)", n->label, d, d,
                   MATRIX_MAX_DIM);
        return 1;
    }
    if ((c->matrix_cells += d * d) > MATRIX_BUDGET) {
        diag_error(c, "F0400", loc, "use fewer explicit-matrix layers",
                   "%s: dependency matrices hold more than %u entries in "
                   "all, too many to verify", n->label,
                   (unsigned)MATRIX_BUDGET);
        return 1;
    }
    if (!(mat = calloc(d * d, 1))) {
        c->mem.failed = 1;
        return 1;
    }
    if (n->type->dep_matrix(&n->config, mat) != FLOW_OK) {
        diag_error(c, "F0508", loc, NULL, "%s: dep_matrix() failed",
                   n->label);
        free(mat);
        return 1;
    }
    for (size_t i = 0; i < d; i++)
        if (!mat[i * d + i]) {
            diag_error(c, "F0501", loc, "an invertible triangular map needs "
                       "every output to depend on its own input",
                       "%s: zero diagonal: output %zu does not depend on "
                       "input %zu", n->label, i, i);
            errs++;
            break;
        }
    if (!errs && !acyclic(c, mat, d, why, sizeof why)) {
        diag_error(c, "F0500", loc, "no ordering of the dimensions makes "
                   "this Jacobian triangular", "%s: dependency pattern has "
                   "a cycle (%s)", n->label, why);
        errs++;
    }
    free(mat);
    return errs;
}

static int valid_enums(const flow_layer_desc *d)
{
    return d->jac >= FLOW_JAC_VOLUME_PRESERVING
        && d->jac <= FLOW_JAC_DENSE_EXACT
        && d->dep >= FLOW_DEP_ELEMENTWISE && d->dep <= FLOW_DEP_MATRIX
        && d->cert >= FLOW_CERT_STRUCTURAL && d->cert <= FLOW_CERT_ODE;
}

static int check_coupling(flow_compilation *c, const flow_graph_node *n,
                          flow_loc loc)
{
    size_t t = 0, d = n->in_dim;
    for (size_t i = 0; i < d; i++) {
        if (n->desc->dep_vec[i] != 0 && n->desc->dep_vec[i] != 1) {
            diag_error(c, "F0508", loc, NULL, "%s: coupling mask entry %zu "
                       "is %d (must be 0 or 1)", n->label, i,
                       (int)n->desc->dep_vec[i]);
            return 1;
        }
        t += (size_t)n->desc->dep_vec[i];
    }
    if (t == 0 || t == d) {
        diag_error(c, "F0502", loc, d == 1 ? "a coupling needs at least 2 "
                   "dimensions" : "choose a mask with both parts non-empty",
                   "%s: coupling partition has an empty %s part (%zu of %zu "
                   "dimension%s transformed)", n->label,
                   t == 0 ? "transformed" : "conditioning", t, d,
                   d == 1 ? "" : "s");
        return 1;
    }
    return 0;
}

static int valid_domain(const flow_layer_desc *d)
{
    if (d->domain == FLOW_DOMAIN_NONE)
        return 1;
    return (d->domain == FLOW_DOMAIN_CLOSED || d->domain == FLOW_DOMAIN_OPEN)
        && !isnan(d->domain_lo) && !isnan(d->domain_hi)
        && d->domain_lo < d->domain_hi;
}

/* A dense pattern has a tractable log-det only when the layer computes it
 * (dense-exact: structural or LU certificate), factors it (dense-LU with
 * an LU certificate) or estimates it (residual, ODE: certified above);
 * any other class would sum diagonal terms of a Jacobian that has more. */
static int check_dense(flow_compilation *c, const flow_graph_node *n,
                       flow_loc loc, int estimated)
{
    const flow_layer_desc *d = n->desc;
    if (estimated || (d->jac == FLOW_JAC_DENSE_LU && d->cert == FLOW_CERT_LU)
        || (d->jac == FLOW_JAC_DENSE_EXACT
            && (d->cert == FLOW_CERT_STRUCTURAL || d->cert == FLOW_CERT_LU)))
        return 0;
    if (d->jac == FLOW_JAC_DENSE_LU || d->jac == FLOW_JAC_DENSE_EXACT) {
        diag_error(c, "F0506", loc, "the plugin's declaration is at fault: "
                   "a dense-LU class takes an LU certificate, a dense-exact "
                   "class a structural or LU one", "%s: a %s Jacobian class "
                   "with a %s certificate", n->label, verify_jac_name(d->jac),
                   verify_cert_name(d->cert));
        return 1;
    }
    diag_error(c, "F0506", loc, "the plugin's declaration is at fault: a "
               "layer that computes its log-determinant exactly declares "
               "FLOW_JAC_DENSE_EXACT", "%s: dense dependencies with a %s "
               "Jacobian class; dense dependencies need the dense-exact, "
               "dense-LU, residual or ODE class", n->label,
               verify_jac_name(d->jac));
    return 1;
}

/* One layer, right after its describe(): the declared dependency pattern
 * is triangular under some ordering (or the Jacobian class is estimated
 * with a valid certificate, or computed by the layer), partitions, orders
 * and the domain are well formed, and the context feeds only conditioners
 * and layers that declare they consume it. */
int verify_layer(flow_compilation *c, size_t idx)
{
    const flow_graph *g = &c->graph;
    const flow_graph_node *n = &g->nodes[idx];
    const flow_layer_desc *d = n->desc;
    flow_loc loc = node_name_loc(g, idx);
    int estimated;
    char why[128];

    if (!valid_enums(d)) {
        diag_error(c, "F0508", loc, NULL, "%s: plugin reported an invalid "
                   "structure (jacobian %d, dependency %d, certificate %d)",
                   n->label, (int)d->jac, (int)d->dep, (int)d->cert);
        return 1;
    }
    if (!valid_domain(d)) {
        diag_error(c, "F0508", loc, NULL, "%s: plugin reported an invalid "
                   "input domain (kind %u, [%g, %g])", n->label,
                   (unsigned)d->domain, d->domain_lo, d->domain_hi);
        return 1;
    }
    if (n->uses_context && !(d->flags & FLOW_LAYER_CONTEXT)
        && (d->n_params == 0 || d->dep == FLOW_DEP_ELEMENTWISE
            || d->dep == FLOW_DEP_PERMUTATION)) {
        diag_error(c, "F0507", loc, "remove 'given' here; a context feeds "
                   "coupling, autoregressive and residual conditioners, "
                   "layers whose plugin declares FLOW_LAYER_CONTEXT, and "
                   "the base", "%s: context given to a layer that does not "
                   "consume one (no conditioner, and its plugin does not "
                   "declare FLOW_LAYER_CONTEXT)", n->label);
        return 1;
    }
    if (d->cert == FLOW_CERT_LIPSCHITZ && !(d->cert_value < 1.0)) {
        diag_error(c, "F0505", loc, "the residual branch must be a "
                   "contraction; lower its scale or use a smoother "
                   "activation", "%s: Lipschitz bound %g is not < 1, so "
                   "x + g(x) is not provably invertible", n->label,
                   d->cert_value);
        return 1;
    }
    if ((d->jac == FLOW_JAC_RESIDUAL && d->cert != FLOW_CERT_LIPSCHITZ)
        || (d->jac == FLOW_JAC_ODE && d->cert != FLOW_CERT_ODE)) {
        diag_error(c, "F0509", loc, NULL, "%s: a %s Jacobian needs a%s "
                   "certificate", n->label, d->jac == FLOW_JAC_ODE ? "ODE"
                   : "residual", d->jac == FLOW_JAC_ODE ? "n ODE solver"
                   : " Lipschitz");
        return 1;
    }
    estimated = d->jac == FLOW_JAC_RESIDUAL || d->jac == FLOW_JAC_ODE;
    switch (d->dep) {
    case FLOW_DEP_ELEMENTWISE:
        return 0;
    case FLOW_DEP_PERMUTATION:
        if (!is_permutation(c, d->dep_vec, n->in_dim, why, sizeof why)) {
            diag_error(c, "F0504", loc, NULL, "%s: not a permutation of "
                       "0..%zu: %s", n->label, n->in_dim - 1, why);
            return 1;
        }
        return 0;
    case FLOW_DEP_COUPLING:
        return check_coupling(c, n, loc);
    case FLOW_DEP_ORDER:
        if (!is_permutation(c, d->dep_vec, n->in_dim, why, sizeof why)) {
            flow_loc at = loc;
            /* point at the order attribute when the spec wrote it */
            for (size_t k = 0; k < n->n_attrs; k++)
                if (n->attrs[k].given && (n->attrs[k].type == FLOW_ATTR_VARIANT
                    || n->attrs[k].type == FLOW_ATTR_INT_LIST)
                    && g->attr_locs[idx] && g->attr_locs[idx][k].line > 0) {
                    at = g->attr_locs[idx][k];
                    break;
                }
            diag_error(c, "F0503", at, "each of 0..D-1 must appear exactly "
                       "once", "%s: autoregressive order is not a "
                       "permutation of 0..%zu: %s", n->label,
                       n->in_dim - 1, why);
            return 1;
        }
        return 0;
    case FLOW_DEP_DENSE:
        return check_dense(c, n, loc, estimated);
    case FLOW_DEP_MATRIX:
        return estimated ? 0 : check_matrix(c, idx, loc);
    }
    return 0;
}

/* "[0, 1]" or "(0, 1)" */
static const char *domain_text(flow_compilation *c, const flow_layer_desc *d)
{
    int open = d->domain == FLOW_DOMAIN_OPEN;
    return arena_printf(&c->mem, "%c%g, %g%c", open ? '(' : '[',
                        d->domain_lo, d->domain_hi, open ? ')' : ']');
}

/* A layer that declares an input domain: the input's declared bounds lie
 * inside it when the layer sees the data as read (only permutations
 * before it); a warning when nothing says the values it sees are there:
 * no bounds, or a layer before it that moves them (`moved_by`). */
int verify_domain(flow_compilation *c, size_t idx, const char *moved_by)
{
    const flow_graph *g = &c->graph;
    const flow_graph_node *n = &g->nodes[idx];
    const flow_layer_desc *d = n->desc;
    flow_loc loc = node_name_loc(g, idx);
    const char *dom, *help;
    int inside;

    if (d->domain == FLOW_DOMAIN_NONE)
        return 0;
    if (!(dom = domain_text(c, d)))
        return 1;                       /* out of memory: c->mem.failed */
    if (moved_by) {
        help = arena_printf(&c->mem, "put %s first, where the data "
                            "enters, or make sure %s maps into %s",
                            n->type->name, moved_by, dom);
        diag_warning(c, "F0904", loc, help, "%s is defined only on %s, but "
                     "its input passes through %s first: nothing says the "
                     "values stay inside", n->label, dom, moved_by);
        return 0;
    }
    if (!g->has_bounds) {
        help = arena_printf(&c->mem, "declare the range of the data: input "
                            "%s : real[%zu] in [lo, hi] with [lo, hi] inside "
                            "%s", g->input_name, g->input_dim, dom);
        diag_warning(c, "F0904", loc, help, "%s is defined only on %s, but "
                     "the input '%s' declares no bounds", n->label, dom,
                     g->input_name);
        return 0;
    }
    inside = d->domain == FLOW_DOMAIN_OPEN
        ? g->lo > d->domain_lo && g->hi < d->domain_hi
        : g->lo >= d->domain_lo && g->hi <= d->domain_hi;
    if (inside)
        return 0;
    help = arena_printf(&c->mem, "rescale the data into %s and declare "
                        "bounds inside it", dom);
    diag_error(c, "F0510", loc, help, "%s: the input '%s' is declared in "
               "[%g, %g] (line %d), not inside the layer's domain %s",
               n->label, g->input_name, g->lo, g->hi, g->input_loc.line,
               dom);
    return 1;
}

/* --- whole-graph warnings -------------------------------------------- */

/* Tracks which input dimension sits at each position of the state through
 * permutations and exits, and marks those a layer transforms. */
static void warn_untransformed(flow_compilation *c)
{
    flow_graph *g = &c->graph;
    size_t D = g->input_dim, d = D;
    size_t *cur = malloc(D * sizeof *cur), *tmp = malloc(D * sizeof *tmp);
    unsigned char *hit = calloc(D, 1);
    char list[256];
    size_t used = 0, missing = 0;

    if (!cur || !tmp || !hit) {
        c->mem.failed = 1;
        goto out;
    }
    for (size_t i = 0; i < D; i++)
        cur[i] = i;
    for (size_t k = 0; k < g->n_nodes; k++) {
        const flow_graph_node *n = &g->nodes[k];
        if (n->kind == FLOW_NODE_EXIT) {
            memmove(cur, cur + n->exit_k, (d - n->exit_k) * sizeof *cur);
            d -= n->exit_k;
            continue;
        }
        switch (n->desc->dep) {
        case FLOW_DEP_PERMUTATION:
            for (size_t i = 0; i < d; i++)
                tmp[i] = cur[n->desc->dep_vec[i]];
            memcpy(cur, tmp, d * sizeof *cur);
            break;
        case FLOW_DEP_COUPLING:
            for (size_t i = 0; i < d; i++)
                if (n->desc->dep_vec[i])
                    hit[cur[i]] = 1;
            break;
        default:
            for (size_t i = 0; i < d; i++)
                hit[cur[i]] = 1;
        }
    }
    for (size_t i = 0; i < D; i++)
        if (!hit[i]) {
            if (missing < 8 && used < sizeof list)
                used += (size_t)snprintf(list + used, sizeof list - used,
                                         "%s%zu", missing ? ", " : "", i);
            missing++;
        }
    if (missing > 8 && used < sizeof list)
        snprintf(list + used, sizeof list - used, " and %zu more",
                 missing - 8);
    if (missing)
        diag_warning(c, "F0900", g->input_loc, "permute between couplings, "
                     "or choose masks that cover every dimension",
                     "input dimension%s %s %s never transformed",
                     missing == 1 ? "" : "s", list,
                     missing == 1 ? "is" : "are");
out:
    free(cur);
    free(tmp);
    free(hit);
}

static void warn_same_order(flow_compilation *c)
{
    flow_graph *g = &c->graph;
    for (size_t k = 1; k < g->n_nodes; k++) {
        const flow_graph_node *a = &g->nodes[k - 1], *b = &g->nodes[k];
        if (a->kind != FLOW_NODE_LAYER || b->kind != FLOW_NODE_LAYER
            || a->desc->dep != FLOW_DEP_ORDER || b->desc->dep != FLOW_DEP_ORDER
            || a->in_dim != b->in_dim
            || memcmp(a->desc->dep_vec, b->desc->dep_vec,
                      a->in_dim * sizeof(int32_t)))
            continue;
        diag_warning(c, "F0901", node_name_loc(g, k), "insert "
                     "permute(order = reverse) or give it another order",
                     "%s uses the same autoregressive order as %s right "
                     "before it", b->label, a->label);
    }
}

/* A variational fit pushes every sample through the sampling direction:
 * a layer that samples in sequential passes (MAF: D of them) makes each
 * step D times slower than its inverse-autoregressive twin. */
static void warn_sequential_sampling(flow_compilation *c)
{
    flow_graph *g = &c->graph;
    size_t first = 0, count = 0;
    char help[FLOW_MAX_IDENT + 160];
    const flow_graph_node *n;
    for (size_t k = 0; k < g->n_nodes; k++)
        if (g->nodes[k].kind == FLOW_NODE_LAYER
            && g->nodes[k].desc->cost_inverse.sequential && count++ == 0)
            first = k;
    if (!g->target.type || !count)
        return;
    n = &g->nodes[first];
    if (!strcmp(n->type->name, "maf"))
        snprintf(help, sizeof help, "use iaf instead of maf: the same "
                 "attributes, one pass to sample");
    else
        snprintf(help, sizeof help, "use a layer that samples in one pass "
                 "(iaf, coupling) instead of %s", n->type->name);
    diag_warning(c, "F0903", node_name_loc(g, first), help, "%s%s samples "
                 "in %u sequential passes, and fitting target '%s' samples "
                 "at every step", n->label, count > 1 ? arena_printf(&c->mem,
                 " (and %zu more layer%s)", count - 1, count > 2 ? "s" : "")
                 : "", (unsigned)n->desc->cost_inverse.passes,
                 g->target.type->name);
}

void verify_graph(flow_compilation *c)
{
    flow_graph *g = &c->graph;
    char help[FLOW_MAX_IDENT + 64];
    warn_untransformed(c);
    warn_same_order(c);
    warn_sequential_sampling(c);
    if (g->context_name && !g->context_used) {
        snprintf(help, sizeof help, "condition a layer or the base with "
                 "'given %s', or remove it", g->context_name);
        diag_warning(c, "F0902", g->context_loc, help, "context '%s' is "
                     "declared but never used", g->context_name);
    }
}
