/* graph.c - the verified layer graph: accessors, the --report table with
 * costs, and the --emit=json and --emit=dot writers. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compiler.h"

const char *flow_graph_name(const flow_graph *g) { return g->name; }
const char *flow_graph_input_name(const flow_graph *g) { return g->input_name; }
size_t flow_graph_input_dim(const flow_graph *g) { return g->input_dim; }

size_t flow_graph_input_shape(const flow_graph *g, size_t shape[4])
{
    size_t r = g->input_rank ? g->input_rank : 1;
    for (size_t i = 0; i < 4; i++)
        shape[i] = i >= r ? 1 : g->input_rank ? g->input_shape[i]
                                              : g->input_dim;
    return r;
}

int flow_graph_input_bounds(const flow_graph *g, double *lo, double *hi)
{
    if (!g->has_bounds)
        return 0;
    if (lo)
        *lo = g->lo;
    if (hi)
        *hi = g->hi;
    return 1;
}

size_t flow_graph_context_dim(const flow_graph *g) { return g->context_dim; }

const char *flow_graph_context_name(const flow_graph *g)
{
    return g->context_name;
}

size_t flow_graph_node_count(const flow_graph *g) { return g->n_nodes; }

const flow_graph_node *flow_graph_node_get(const flow_graph *g, size_t i)
{
    return i < g->n_nodes ? &g->nodes[i] : NULL;
}

const flow_graph_base *flow_graph_base_get(const flow_graph *g)
{
    return &g->base;
}

const char *flow_graph_output_name(const flow_graph *g)
{
    return g->output_name;
}

size_t flow_graph_output_dim(const flow_graph *g) { return g->output_dim; }
size_t flow_graph_train_count(const flow_graph *g) { return g->n_train; }

const flow_train_entry *flow_graph_train_get(const flow_graph *g, size_t i)
{
    return i < g->n_train ? &g->train[i] : NULL;
}

const flow_graph_target *flow_graph_target_get(const flow_graph *g)
{
    return g->target.type ? &g->target : NULL;
}

size_t flow_graph_source_count(const flow_graph *g) { return g->c->n_files; }

const char *flow_graph_source(const flow_graph *g, size_t i,
                              const char **path, size_t *len)
{
    if (i >= g->c->n_files)
        return NULL;
    if (path)
        *path = g->c->files[i].path;
    if (len)
        *len = g->c->files[i].len;
    return g->c->files[i].text;
}

size_t flow_graph_params(const flow_graph *g)
{
    size_t total = g->base.n_params;
    for (size_t i = 0; i < g->n_nodes; i++)
        total += g->nodes[i].kind == FLOW_NODE_LAYER
                     ? g->nodes[i].desc->n_params
                     : g->nodes[i].exit_base.n_params;
    return total;
}

/* --- names of the ABI enums ------------------------------------------ */

static const char *dep_name(flow_dep_kind d)
{
    switch (d) {
    case FLOW_DEP_ELEMENTWISE: return "elementwise";
    case FLOW_DEP_PERMUTATION: return "permutation";
    case FLOW_DEP_COUPLING: return "coupling";
    case FLOW_DEP_ORDER: return "order";
    case FLOW_DEP_DENSE: return "dense";
    case FLOW_DEP_MATRIX: return "matrix";
    }
    return "?";
}

static void cert_text(const flow_layer_desc *d, char *buf, size_t cap)
{
    int n;
    if (d->cert == FLOW_CERT_LIPSCHITZ)
        n = snprintf(buf, cap, "Lip(g) <= %.3g", d->cert_value);
    else if (d->cert == FLOW_CERT_ODE)
        n = snprintf(buf, cap, "ODE tol %g", d->cert_value);
    else if (d->cert_text)
        n = snprintf(buf, cap, "%s", d->cert_text);   /* says the kind */
    else
        n = snprintf(buf, cap, "%s", verify_cert_name(d->cert));
    if (d->cert_text && n >= 0 && (size_t)n < cap
        && (d->cert == FLOW_CERT_LIPSCHITZ || d->cert == FLOW_CERT_ODE))
        snprintf(buf + n, cap - (size_t)n, " (%s)", d->cert_text);
}

/* What a dense layer's log-det costs, after its certificate: a dense
 * Jacobian's determinant is O(D^3) in general, so the report says how
 * this layer avoids it. */
static void logdet_cost(const flow_layer_desc *d, char *buf, size_t cap)
{
    if (d->jac == FLOW_JAC_DENSE_EXACT)
        snprintf(buf, cap, "; log-det exact, closed form by the layer");
    else if (d->jac == FLOW_JAC_DENSE_LU)
        snprintf(buf, cap, "; log-det from the LU factors, O(D)");
    else
        buf[0] = '\0';
}

static void base_text(const flow_graph_base *b, char *buf, size_t cap)
{
    if (b->kind == FLOW_BASE_GMM)
        snprintf(buf, cap, "mixture(k = %g)%s", b->args[0],
                 b->uses_context ? " given context" : "");
    else
        snprintf(buf, cap, "%s%s", b->name ? b->name : "?",
                 b->uses_context ? " given context" : "");
}

static const char *plural(uint64_t n) { return n == 1 ? "" : "es"; }

/* "2x4x4" (the report's compact form of a shape). */
static void shape_short(size_t rank, const size_t *shape, char *buf,
                        size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < rank && i < FLOW_MAX_RANK && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%zu", i ? "x" : "",
                         shape[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* The shape column of an image flow's report: "2x4x4", or "2x4x4 ->
 * 8x2x2" where the node changes it. */
static void shape_cell(const flow_graph_node *n, char *buf, size_t cap)
{
    char a[64], b[64];
    int same = n->in_rank == n->out_rank
               && !memcmp(n->in_shape, n->out_shape,
                          n->in_rank * sizeof *n->in_shape);
    shape_short(n->in_rank, n->in_shape, a, sizeof a);
    shape_short(n->out_rank, n->out_shape, b, sizeof b);
    if (same)
        snprintf(buf, cap, "%s", a);
    else
        snprintf(buf, cap, "%s -> %s", a, b);
}

static void json_shape(FILE *f, size_t rank, const size_t *shape)
{
    fputc('[', f);
    for (size_t i = 0; i < rank && i < FLOW_MAX_RANK; i++)
        fprintf(f, "%s%zu", i ? ", " : "", shape[i]);
    fputc(']', f);
}

/* --- report ----------------------------------------------------------- */

void flow_graph_print_report(const flow_graph *g, FILE *f)
{
    uint64_t dens = 0, samp = 0, ar_samp = 0;
    int dens_seq = 0, samp_seq = 0, estimated = 0;
    size_t layers = 0;
    int w = 18;                 /* the layer column: the longest label */
    char cert[160], base[96], cost[64], shp[160] = "", madd[32] = "";
    /* image flows get a shape column; flat ones read as they always did */
    int shaped = g->input_rank > 1;
    int sw = 0;

    if (shaped)
        fprintf(f, "flow %s: input %s real[%zu, %zu, %zu]", g->name,
                g->input_name, g->input_shape[0], g->input_shape[1],
                g->input_shape[2]);
    else
        fprintf(f, "flow %s: input %s real[%zu]", g->name, g->input_name,
                g->input_dim);
    if (g->has_bounds)
        fprintf(f, " in [%g, %g]", g->lo, g->hi);
    if (g->context_name)
        fprintf(f, ", context %s real[%zu]", g->context_name,
                g->context_dim);
    fputc('\n', f);
    for (size_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].label && (int)strlen(g->nodes[i].label) > w)
            w = (int)strlen(g->nodes[i].label);
    for (size_t i = 0; shaped && i < g->n_nodes; i++) {
        shape_cell(&g->nodes[i], shp, 132);
        if ((int)strlen(shp) > sw)
            sw = (int)strlen(shp);
    }
    if (shaped)
        fprintf(f, "%4s  %-*s %-18s %5s %-*s %10s %9s  %s\n", "#", w,
                "layer", "jacobian", "dim", sw, "shape", "params",
                "madd/row", "certificate");
    else
        fprintf(f, "%4s  %-*s %-18s %5s %10s  %s\n", "#", w, "layer",
                "jacobian", "dim", "params", "certificate");
    for (size_t i = 0; i < g->n_nodes; i++) {
        const flow_graph_node *n = &g->nodes[i];
        if (shaped) {
            char cell[132];
            shape_cell(n, cell, sizeof cell);
            snprintf(shp, sizeof shp, " %-*s", sw, cell);
        }
        if (n->kind == FLOW_NODE_EXIT) {
            base_text(&n->exit_base, base, sizeof base);
            fprintf(f, "%4zu  %-*s %-18s %5zu%s %10zu%s  %zu dim%s -> %s ~ "
                    "%s\n", i, w, n->label, "exit", n->in_dim, shp,
                    n->exit_base.n_params, shaped ? "         -" : "",
                    n->exit_k, n->exit_k == 1 ? "" : "s", n->exit_name,
                    base);
            continue;
        }
        layers++;
        cert_text(n->desc, cert, sizeof cert);
        logdet_cost(n->desc, cost, sizeof cost);
        if (shaped)     /* the density direction's multiply-adds per row */
            snprintf(madd, sizeof madd, " %9.0f",
                     n->desc->cost_forward.flops_per_row);
        fprintf(f, "%4zu  %-*s %-18s %5zu%s %10zu%s  %s%s%s\n", i, w,
                n->label, verify_jac_name(n->desc->jac), n->in_dim, shp,
                n->desc->n_params, madd, cert, cost,
                n->uses_context ? "; given context" : "");
        dens += n->desc->cost_forward.passes;
        samp += n->desc->cost_inverse.passes;
        if (n->desc->dep == FLOW_DEP_ORDER && n->desc->cost_inverse.sequential)
            ar_samp += n->desc->cost_inverse.passes;
        dens_seq |= n->desc->cost_forward.sequential;
        samp_seq |= n->desc->cost_inverse.sequential;
        estimated |= !n->desc->logdet_exact;
    }
    base_text(&g->base, base, sizeof base);
    if (shaped) {
        char cell[64] = "";
        if (g->n_nodes)
            shape_short(g->nodes[g->n_nodes - 1].out_rank,
                        g->nodes[g->n_nodes - 1].out_shape, cell,
                        sizeof cell);
        else
            shape_short(g->input_rank, g->input_shape, cell, sizeof cell);
        snprintf(shp, sizeof shp, " %-*s", sw, cell);
    }
    fprintf(f, "%4s  %-*s %-18s %5zu%s %10zu%s  %s ~ %s\n", "", w,
            "output", "base", g->output_dim, shp, g->base.n_params,
            shaped ? "         -" : "", g->output_name, base);
    if (g->target.type)
        fprintf(f, "target: %s (%s:%d:%d, %s)\n", g->target.text,
                g->target.file, g->target.line, g->target.col,
                g->target.plugin_file);
    fprintf(f, "total: %zu layer%s, %zu parameters\n", layers,
            layers == 1 ? "" : "s", flow_graph_params(g));
    fprintf(f, "cost: density %llu %spass%s; sampling %llu %spass%s\n",
            (unsigned long long)dens, dens_seq ? "sequential " : "",
            plural(dens), (unsigned long long)samp,
            samp_seq ? "sequential " : "", plural(samp));
    if (estimated)
        fprintf(f, "note: some log-determinants are estimated (residual or "
                   "ODE layers); density is exact only in evaluation with "
                   "exact traces\n");
    if (ar_samp > 2 * dens)
        fprintf(f, "hint: sampling needs %llu sequential passes against %llu "
                   "for density; if sampling matters more, use `iaf` (one "
                   "pass to sample, D sequential passes for density)\n",
                (unsigned long long)samp, (unsigned long long)dens);
    else if (dens_seq && dens > 2 * samp)
        fprintf(f, "hint: density needs %llu sequential passes against %llu "
                   "for sampling; if density matters more, use `maf`\n",
                (unsigned long long)dens, (unsigned long long)samp);
}

/* --- JSON ------------------------------------------------------------- */

static void jnum(FILE *f, double x)
{
    if (isfinite(x))
        fprintf(f, "%.17g", x);
    else
        fputs("null", f);
}

static void json_attrs(FILE *f, const flow_attr_spec *tab,
                       const flow_attr_value *v)
{
    fputc('{', f);
    for (size_t k = 0; tab && tab[k].name; k++) {
        fprintf(f, "%s", k ? ", " : "");
        flow_json_string(f, tab[k].name);
        fputs(": ", f);
        switch (v[k].type) {
        case FLOW_ATTR_INT: fprintf(f, "%lld", (long long)v[k].i); break;
        case FLOW_ATTR_REAL: jnum(f, v[k].r); break;
        case FLOW_ATTR_BOOL: fputs(v[k].i ? "true" : "false", f); break;
        case FLOW_ATTR_STRING:
        case FLOW_ATTR_ENUM: flow_json_string(f, v[k].s); break;
        case FLOW_ATTR_INT_LIST:
        case FLOW_ATTR_REAL_LIST:
            fputc('[', f);
            for (size_t j = 0; j < v[k].n; j++) {
                fprintf(f, "%s", j ? ", " : "");
                if (v[k].type == FLOW_ATTR_INT_LIST)
                    fprintf(f, "%lld", (long long)v[k].ilist[j]);
                else
                    jnum(f, v[k].rlist[j]);
            }
            fputc(']', f);
            break;
        case FLOW_ATTR_VARIANT:
            fputs("{\"alt\": ", f);
            flow_json_string(f, v[k].s);
            fputs(", \"args\": ", f);
            json_attrs(f, tab[k].alternatives[v[k].i].attrs, v[k].sub);
            fputc('}', f);
            break;
        default:
            fputs("null", f);
        }
    }
    fputc('}', f);
}

static void json_base(FILE *f, const flow_graph_base *b)
{
    fputs("{\"kind\": ", f);
    flow_json_string(f, b->name);
    fputs(", \"args\": [", f);
    for (size_t i = 0; i < b->n_args; i++) {
        fprintf(f, "%s", i ? ", " : "");
        jnum(f, b->args[i]);
    }
    fprintf(f, "], \"uses_context\": %s, \"params\": %zu}",
            b->uses_context ? "true" : "false", b->n_params);
}

/* {"passes": P, "sequential": B, "flops_per_row": M}: M the declared
 * multiply-adds per row (0 = unknown). */
static void json_cost(FILE *f, const flow_cost *c)
{
    fprintf(f, "{\"passes\": %u, \"sequential\": %s, \"flops_per_row\": ",
            (unsigned)c->passes, c->sequential ? "true" : "false");
    jnum(f, c->flops_per_row);
    fputc('}', f);
}

static void json_node(FILE *f, const flow_graph_node *n)
{
    fputs("    {\"kind\": ", f);
    flow_json_string(f, n->kind == FLOW_NODE_LAYER ? "layer" : "exit");
    fputs(", \"label\": ", f);
    flow_json_string(f, n->label);
    fputs(", \"file\": ", f);
    flow_json_string(f, n->file);
    fprintf(f, ", \"line\": %d, \"col\": %d, \"in_dim\": %zu", n->line,
            n->col, n->in_dim);
    fputs(", \"in_shape\": ", f);
    json_shape(f, n->in_rank, n->in_shape);
    fputs(", \"out_shape\": ", f);
    json_shape(f, n->out_rank, n->out_shape);
    if (n->kind == FLOW_NODE_EXIT) {
        fprintf(f, ", \"k\": %zu, \"name\": ", n->exit_k);
        flow_json_string(f, n->exit_name);
        fputs(", \"base\": ", f);
        json_base(f, &n->exit_base);
        fputc('}', f);
        return;
    }
    fputs(", \"type\": ", f);
    flow_json_string(f, n->type->name);
    fputs(", \"plugin\": ", f);
    flow_json_string(f, n->plugin_file);
    fprintf(f, ", \"uses_context\": %s, \"params\": %zu, \"jacobian\": ",
            n->uses_context ? "true" : "false", n->desc->n_params);
    flow_json_string(f, verify_jac_name(n->desc->jac));
    fputs(", \"dependency\": ", f);
    flow_json_string(f, dep_name(n->desc->dep));
    fputs(", \"certificate\": ", f);
    flow_json_string(f, verify_cert_name(n->desc->cert));
    fputs(", \"cert_value\": ", f);
    jnum(f, n->desc->cert_value);
    fprintf(f, ", \"logdet_exact\": %s, \"cost_forward\": ",
            n->desc->logdet_exact ? "true" : "false");
    json_cost(f, &n->desc->cost_forward);
    fputs(", \"cost_inverse\": ", f);
    json_cost(f, &n->desc->cost_inverse);
    fputs(", \"attrs\": ", f);
    json_attrs(f, n->type->attrs, n->attrs);
    if (n->desc->dep != FLOW_DEP_ELEMENTWISE && n->desc->dep != FLOW_DEP_DENSE
        && n->desc->dep != FLOW_DEP_MATRIX) {
        fputs(", \"dep_vec\": [", f);
        for (size_t i = 0; i < n->in_dim; i++)
            fprintf(f, "%s%d", i ? ", " : "", (int)n->desc->dep_vec[i]);
        fputc(']', f);
    }
    fputc('}', f);
}

void flow_graph_print_json(const flow_graph *g, FILE *f)
{
    fputs("{\n  \"language\": 1,\n  \"name\": ", f);
    flow_json_string(f, g->name);
    fputs(",\n  \"input\": {\"name\": ", f);
    flow_json_string(f, g->input_name);
    fprintf(f, ", \"dim\": %zu, \"shape\": ", g->input_dim);
    {
        size_t shape[4], r = flow_graph_input_shape(g, shape);
        json_shape(f, r, shape);
    }
    fputs(", \"bounds\": ", f);
    if (g->has_bounds) {
        fputc('[', f);
        jnum(f, g->lo);
        fputs(", ", f);
        jnum(f, g->hi);
        fputc(']', f);
    } else {
        fputs("null", f);
    }
    fputs("},\n  \"context\": ", f);
    if (g->context_name) {
        fputs("{\"name\": ", f);
        flow_json_string(f, g->context_name);
        fprintf(f, ", \"dim\": %zu}", g->context_dim);
    } else {
        fputs("null", f);
    }
    fputs(",\n  \"nodes\": [\n", f);
    for (size_t i = 0; i < g->n_nodes; i++) {
        json_node(f, &g->nodes[i]);
        fputs(i + 1 < g->n_nodes ? ",\n" : "\n", f);
    }
    fputs("  ],\n  \"output\": {\"name\": ", f);
    flow_json_string(f, g->output_name);
    fprintf(f, ", \"dim\": %zu, \"base\": ", g->output_dim);
    json_base(f, &g->base);
    fputs("},\n  \"target\": ", f);
    if (g->target.type) {
        fputs("{\"type\": ", f);
        flow_json_string(f, g->target.type->name);
        fputs(", \"text\": ", f);
        flow_json_string(f, g->target.text);
        fputs(", \"file\": ", f);
        flow_json_string(f, g->target.file);
        fprintf(f, ", \"line\": %d, \"col\": %d, \"plugin\": ",
                g->target.line, g->target.col);
        flow_json_string(f, g->target.plugin_file);
        fprintf(f, ", \"dim\": %zu, \"attrs\": ", g->target.dim);
        json_attrs(f, g->target.type->attrs, g->target.attrs);
        fputc('}', f);
    } else {
        fputs("null", f);
    }
    fputs(",\n  \"train\": {", f);
    for (size_t i = 0; i < g->n_train; i++) {
        fprintf(f, "%s", i ? ", " : "");
        flow_json_string(f, g->train[i].key);
        fputs(": ", f);
        if (g->train[i].is_number)
            jnum(f, g->train[i].number);
        else
            flow_json_string(f, g->train[i].text);
    }
    fprintf(f, "},\n  \"params\": %zu\n}\n", flow_graph_params(g));
}

/* --- DOT -------------------------------------------------------------- */

void flow_graph_print_dot(const flow_graph *g, FILE *f)
{
    char base[96];
    fprintf(f, "digraph \"%s\" {\n  rankdir=LR;\n  node [shape=box];\n",
            g->name);
    fprintf(f, "  input [shape=ellipse, label=\"%s\\nreal[%zu]\"];\n",
            g->input_name, g->input_dim);
    if (g->context_name)
        fprintf(f, "  context [shape=ellipse, style=dashed, "
                   "label=\"%s\\nreal[%zu]\"];\n", g->context_name,
                g->context_dim);
    const char *prev = "input";
    char prevbuf[32];
    for (size_t i = 0; i < g->n_nodes; i++) {
        const flow_graph_node *n = &g->nodes[i];
        if (n->kind == FLOW_NODE_EXIT) {
            base_text(&n->exit_base, base, sizeof base);
            fprintf(f, "  n%zu [shape=diamond, label=\"exit %zu\"];\n", i,
                    n->exit_k);
            fprintf(f, "  z%zu [shape=ellipse, label=\"%s ~ %s\\nreal[%zu]"
                       "\"];\n  n%zu -> z%zu;\n", i, n->exit_name, base,
                    n->exit_k, i, i);
        } else {
            fprintf(f, "  n%zu [label=\"%s\\n%s\"];\n", i, n->label,
                    verify_jac_name(n->desc->jac));
            if (n->uses_context)
                fprintf(f, "  context -> n%zu [style=dashed];\n", i);
        }
        fprintf(f, "  %s -> n%zu [label=\"%zu\"];\n", prev, i, n->in_dim);
        snprintf(prevbuf, sizeof prevbuf, "n%zu", i);
        prev = prevbuf;
    }
    base_text(&g->base, base, sizeof base);
    fprintf(f, "  output [shape=ellipse, label=\"%s ~ %s\\nreal[%zu]\"];\n",
            g->output_name, base, g->output_dim);
    fprintf(f, "  %s -> output [label=\"%zu\"];\n", prev, g->output_dim);
    if (g->base.uses_context)
        fputs("  context -> output [style=dashed];\n", f);
    fputs("}\n", f);
}
