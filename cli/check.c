/* cli_check.c - `flowkit check`: the numerical conformance checks of
 * cli/conform.c over a layer type, every layer of a spec, or every
 * layer type of a plugin file.  Exit codes: 0 all checks pass, 1 a check
 * failed (or a layer could not be built, or its plugin's declaration was
 * refused), 2 usage (options or attributes the compiler refuses). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "conform.h"

#define CMD "flowkit check"
#define MAX_ATTRS 32
#define MAX_PLUGINS 16

static void check_usage(FILE *f)
{
    fputs("usage: flowkit check LAYER-TYPE | SPEC.flow | PLUGIN.so [options]\n"
          "\n"
          "Numerical conformance checks of layers on random parameters and\n"
          "inputs (including the domain's edges): round trips, log-det\n"
          "against a finite-difference Jacobian, declared vs measured\n"
          "dependency pattern, batch independence, determinism, backward\n"
          "passes against finite differences, checkpoint round trip and,\n"
          "for D = 2, the density integrating to 1.  One row per check;\n"
          "tolerances in docs/plugins.md.\n"
          "\n"
          "  LAYER-TYPE       a type from a plugin on the search path\n"
          "  SPEC.flow        every layer of the spec, at its position's\n"
          "                   width and with its attributes\n"
          "  PLUGIN.so        every layer type of that file, with default\n"
          "                   attributes (nothing else is loaded)\n"
          "\n"
          "  --dim D          input width (default 2; not with a SPEC)\n"
          "  --shape C,H,W    an image input real[C, H, W] instead, of width\n"
          "                   C*H*W (not with --dim or a SPEC)\n"
          "  --context K      context width: the layer is `given c` (default\n"
          "                   0; not with a SPEC)\n"
          "  --attr NAME=VAL  an attribute as spec source text, repeatable:\n"
          "                   --attr 'transformer=spline(bins = 4)'\n"
          "  --bounds LO,HI   the input lies in [LO, HI] (default: the\n"
          "                   layer's declared domain, e.g. logit's [0, 1])\n"
          "  --plugin FILE    load an extra plugin file first (repeatable)\n"
          "  --seed S         parameters, inputs and probes (default 1)\n"
          "  --rows N         random rows per test batch (default 4)\n"
          "  --params N|all   parameters checked one by one against finite\n"
          "                   differences (default 48, covering every tensor\n"
          "                   and output column); random directions over all\n"
          "                   of them are checked in any case\n"
          "  --json           the report as one JSON object on stdout\n"
          "\n"
          "exit status: 0 every check passed; 1 a check failed, a layer\n"
          "could not be built, or the compiler refused a plugin's own\n"
          "declaration (F05xx but F0510, and F0208: a fault of the\n"
          "plugin); 2 usage, including attributes or options the compiler\n"
          "refuses.  A layer type gives the same status named or found in\n"
          "PLUGIN.so.\n",
          f);
}

typedef struct check_opts {
    const char *target;
    size_t dim, context, rows, params;
    size_t shape[3];            /* --shape C,H,W; has_shape */
    int has_dim, has_context, has_bounds, json, params_all, has_shape;
    double lo, hi;
    uint64_t seed;
    const char *attrs[MAX_ATTRS];
    size_t n_attrs;
    const char *plugins[MAX_PLUGINS];
    size_t n_plugins;
} check_opts;

/* Totals over every layer checked. */
typedef struct check_totals {
    size_t layers, checks, failed, skipped, broken;
} check_totals;

/* --shape C,H,W: three dimensions of at most 4096 values together. */
static int parse_shape(cli_args *a, check_opts *o)
{
    const char *v = cli_opt_value(a), *p;
    size_t vol = 1;
    if (!v)
        return CLI_EXIT_USAGE;
    p = v;
    for (int i = 0; i < 3; i++) {
        char *end;
        unsigned long long x;
        if (*p < '0' || *p > '9')
            goto bad;
        x = strtoull(p, &end, 10);
        if (x < 1 || x > 4096 || *end != (i < 2 ? ',' : '\0'))
            goto bad;
        o->shape[i] = (size_t)x;
        vol *= (size_t)x;
        if (vol > 4096)
            return cli_usage_error(a, "--shape: '%s' holds more than 4096 "
                                   "values", v);
        p = end + 1;
    }
    o->dim = vol;
    o->has_shape = 1;
    return 0;
bad:
    return cli_usage_error(a, "--shape: '%s' is not C,H,W (three positive "
                           "integers)", v);
}

static int parse_bounds(cli_args *a, check_opts *o)
{
    const char *v = cli_opt_value(a);
    char *end;
    if (!v)
        return CLI_EXIT_USAGE;
    o->lo = strtod(v, &end);
    if (end == v || *end != ',')
        goto bad;
    v = end + 1;
    o->hi = strtod(v, &end);
    if (end == v || *end || !isfinite(o->lo) || !isfinite(o->hi)
        || !(o->lo < o->hi))
        goto bad;
    o->has_bounds = 1;
    return 0;
bad:
    return cli_usage_error(a, "--bounds: '%s' is not LO,HI with LO < HI",
                           a->inline_val ? a->inline_val : a->argv[a->i - 1]);
}

/* --params N: a count (0 = only the entries that cover every tensor and
 * output column). */
static int parse_params(cli_args *a, const char *v, check_opts *o)
{
    char *end;
    unsigned long long n;
    if (*v < '0' || *v > '9')
        goto bad;
    n = strtoull(v, &end, 10);
    if (*end || n > (1ull << 40))
        goto bad;
    o->params = (size_t)n;
    o->params_all = 0;
    return 0;
bad:
    return cli_usage_error(a, "--params: '%s' is not a count or 'all'", v);
}

/* NAME=VALUE with NAME an identifier. */
static int parse_attr(cli_args *a, check_opts *o)
{
    const char *v = cli_opt_value(a), *s;
    if (!v)
        return CLI_EXIT_USAGE;
    if (o->n_attrs == MAX_ATTRS)
        return cli_usage_error(a, "too many --attr (at most %d)", MAX_ATTRS);
    for (s = v; *s == '_' || (*s >= 'a' && *s <= 'z')
                || (*s >= 'A' && *s <= 'Z') || (s > v && *s >= '0'
                                                && *s <= '9'); s++)
        ;
    while (*s == ' ')
        s++;
    if (s == v || *s != '=' || !s[1])
        return cli_usage_error(a, "--attr: '%s' is not NAME=VALUE", v);
    o->attrs[o->n_attrs++] = v;
    return 0;
}

static int parse_check(int argc, char **argv, check_opts *o)
{
    cli_args a = {argc, 1, argv, CMD, NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    o->dim = 2;
    o->rows = 4;
    o->seed = 1;
    o->params = 48;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->target)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->target = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            check_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--dim")) {
            rc = cli_parse_size(&a, &o->dim, 1);
            if (rc == 0 && o->dim > 4096)
                rc = cli_usage_error(&a, "--dim: at most 4096");
            o->has_dim = 1;
        } else if (cli_opt_is(&a, "--shape")) {
            rc = parse_shape(&a, o);
        } else if (cli_opt_is(&a, "--context")) {
            rc = cli_parse_size(&a, &o->context, 0);
            if (rc == 0 && o->context > 4096)
                rc = cli_usage_error(&a, "--context: at most 4096");
            o->has_context = 1;
        } else if (cli_opt_is(&a, "--rows")) {
            rc = cli_parse_size(&a, &o->rows, 1);
            if (rc == 0 && o->rows > 4096)
                rc = cli_usage_error(&a, "--rows: at most 4096");
        } else if (cli_opt_is(&a, "--params")) {
            const char *v = cli_opt_value(&a);
            if (!v)
                rc = CLI_EXIT_USAGE;
            else if (!strcmp(v, "all"))
                o->params_all = 1;
            else
                rc = parse_params(&a, v, o);
        } else if (cli_opt_is(&a, "--seed"))
            rc = cli_parse_u64(&a, &o->seed);
        else if (cli_opt_is(&a, "--attr"))
            rc = parse_attr(&a, o);
        else if (cli_opt_is(&a, "--bounds"))
            rc = parse_bounds(&a, o);
        else if (cli_opt_is(&a, "--plugin")) {
            const char *v = cli_opt_value(&a);
            if (!v)
                rc = CLI_EXIT_USAGE;
            else if (o->n_plugins == MAX_PLUGINS)
                rc = cli_usage_error(&a, "too many --plugin (at most %d)",
                                     MAX_PLUGINS);
            else
                o->plugins[o->n_plugins++] = v;
        } else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if (!o->target)
        return cli_usage_error(&a, "missing LAYER-TYPE, SPEC or PLUGIN");
    if (o->has_shape && o->has_dim)
        return cli_usage_error(&a, "--dim and --shape both give the input's "
                               "width: use one");
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ------------------------------------------------------------ output */

/* The report's first line (or the JSON object's opening). */
static void print_header(const check_opts *o)
{
    if (o->json)
        printf("{\"flowkit\": \"%s\", \"precision\": \"%s\", \"seed\": "
               "%llu, \"layers\": [", flow_version(), flow_precision(),
               (unsigned long long)o->seed);
    else
        printf("flowkit check %s: %s, seed %llu\n", o->target,
               flow_precision(), (unsigned long long)o->seed);
}

/* One layer's report.  `label` names it ("coupling" or "coupling#3 at
 * spec.flow:7:5"). */
static void print_report(const check_opts *o, const char *type,
                         const char *label, const char *file, size_t dim,
                         size_t context, const conform_report *rep,
                         const char *error, check_totals *tot)
{
    size_t skipped = 0;
    int first = tot->layers == 0;
    for (size_t i = 0; i < rep->n; i++)
        skipped += rep->rows[i].skipped != 0;
    if (first)
        print_header(o);
    tot->layers++;
    tot->checks += rep->n;
    tot->failed += (size_t)rep->failures;
    tot->skipped += skipped;
    if (error)
        tot->broken++;
    if (o->json) {
        printf("%s\n    {\"type\": ", first ? "" : ",");
        flow_json_string(stdout, type);
        printf(", \"label\": ");
        flow_json_string(stdout, label);
        printf(", \"plugin\": ");
        flow_json_string(stdout, file);
        printf(", \"dim\": %zu, \"context\": %zu, ", dim, context);
        if (error) {
            printf("\"error\": ");
            flow_json_string(stdout, error);
            printf(", ");
        }
        printf("\"failed\": %d, \"checks\": [", rep->failures);
        for (size_t i = 0; i < rep->n; i++) {
            const conform_row *r = &rep->rows[i];
            printf("%s\n      {\"name\": ", i ? "," : "");
            flow_json_string(stdout, r->name);
            printf(", \"error\": ");
            cli_json_num(stdout, r->skipped ? NAN : r->err, 6);
            printf(", \"tolerance\": ");
            cli_json_num(stdout, r->skipped ? NAN : r->tol, 6);
            printf(", \"result\": \"%s\", \"note\": ",
                   r->skipped ? "SKIP" : r->pass ? "PASS" : "FAIL");
            flow_json_string(stdout, r->note);
            printf("}");
        }
        printf("]}");
        return;
    }
    printf("\n%s (%s): D = %zu, K = %zu\n", label, file, dim, context);
    if (error) {
        printf("  cannot check: %s\n", error);
        return;
    }
    printf("  %-38s %10s %10s  %s\n", "check", "max error", "tolerance",
           "result");
    for (size_t i = 0; i < rep->n; i++) {
        const conform_row *r = &rep->rows[i];
        if (r->skipped)
            printf("  %-38s %10s %10s  SKIP    %s\n", r->name, "-", "-",
                   r->note);
        else
            printf("  %-38s %10.3g %10.3g  %s    %s\n", r->name, r->err,
                   r->tol, r->pass ? "PASS" : "FAIL", r->note);
    }
    printf("%s: %zu checks, %d failed, %zu skipped\n", label, rep->n,
           rep->failures, skipped);
}

/* Does checking layer n fit in memory?  The checks hold about 8 copies
 * of its parameters (the checker's values, start, steps and gradient; the
 * model's parameters, gradient and scratch), which must fit in half the
 * memory there is (physical, or the address-space limit when lower);
 * else an error (exit 1) instead of swapping or running for hours. */
static int fits_memory(const flow_graph_node *n, const char *label)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double need = 8.0 * (double)sizeof(flow_real) * (double)n->desc->n_params;
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && (have <= 0 || (double)rl.rlim_cur < have))
        have = (double)rl.rlim_cur;
    if (have <= 0 || need <= have / 2)
        return 1;
    fprintf(stderr, CMD ": %s: %zu parameters: checking it needs about "
            "%.1f GiB, more than half of the %.1f GiB of memory here\n",
            label, n->desc->n_params, need / 1073741824.0,
            have / 1073741824.0);
    return 0;
}

/* Runs the checks of one layer and prints them. */
static void check_one(flow_ctx *ctx, const check_opts *o,
                      const flow_layer_type *t, const char *file,
                      const char *label, const flow_attr_value *attrs,
                      size_t dim, size_t context, int has_bounds, double lo,
                      double hi, const char *spec_text,
                      const flow_graph_node *n, check_totals *tot)
{
    conform_opts co;
    conform_report rep;
    int rc;
    conform_default_opts(&co);
    co.dim = dim;
    co.context_dim = context;
    co.rows = o->rows;
    co.seed = o->seed;
    co.max_param_checks = o->params;
    co.params_all = o->params_all;
    co.has_bounds = has_bounds;
    co.lo = lo;
    co.hi = hi;
    co.spec_text = spec_text;
    /* the shape the compiler gave the layer's input */
    co.rank = n->in_rank;
    memcpy(co.shape, n->in_shape, sizeof co.shape);
    rc = conform_layer(ctx, t, file, attrs, &co, &rep);
    print_report(o, t->name, label, file, dim, context, &rep,
                 rc == FLOW_OK ? NULL : flow_errmsg(ctx), tot);
}

/* ------------------------------------------------------------ targets */

/* The spec text of a one-layer model: the compiler resolves and checks the
 * attributes exactly as in a user's spec.  NULL when out of memory. */
static char *tiny_spec(const check_opts *o, const char *type)
{
    size_t cap = 512 + strlen(type);
    char *s, *p;
    for (size_t i = 0; i < o->n_attrs; i++)
        cap += strlen(o->attrs[i]) + 8;
    if (!(s = malloc(cap)))
        return NULL;
    p = s;
    if (o->has_shape)
        p += sprintf(p, "// flowkit check %s\nflow check {\n    input x : "
                     "real[%zu, %zu, %zu]", type, o->shape[0], o->shape[1],
                     o->shape[2]);
    else
        p += sprintf(p, "// flowkit check %s\nflow check {\n    input x : "
                     "real[%zu]", type, o->dim);
    if (o->has_bounds)
        p += sprintf(p, " in [%.17g, %.17g]", o->lo, o->hi);
    p += sprintf(p, ";\n");
    if (o->context)
        p += sprintf(p, "    context c : real[%zu];\n", o->context);
    p += sprintf(p, "    %s(", type);
    for (size_t i = 0; i < o->n_attrs; i++)
        p += sprintf(p, "%s%s", i ? ", " : "", o->attrs[i]);
    p += sprintf(p, ")%s;\n    output z ~ normal;\n}\n",
                 o->context ? " given c" : "");
    return s;
}

/* The first error of c that blames the plugin's own declaration: the
 * structure describe() reports (F05xx, but not F0510: the declared bounds
 * against the layer's domain) or its attribute table (F0208); NULL when
 * every error is about the attributes or options given. */
static const flow_diagnostic *declaration_fault(const flow_compilation *c)
{
    for (size_t i = 0; i < flow_compile_diag_count(c); i++) {
        const flow_diagnostic *d = flow_compile_diag(c, i);
        if (d->severity == FLOW_SEV_ERROR && d->code
            && ((!strncmp(d->code, "F05", 3) && strcmp(d->code, "F0510"))
                || !strcmp(d->code, "F0208")))
            return d;
    }
    return NULL;
}

/* Checks type t through the tiny spec; 0, 1 when the compiler refused the
 * plugin's declaration, CLI_EXIT_USAGE when it refused the options
 * (diagnostics printed).  The code is the same whether the type was named
 * or found in a plugin file. */
static int check_type(flow_ctx *ctx, const check_opts *o,
                      const flow_layer_type *t, check_totals *tot)
{
    char *text = tiny_spec(o, t->name);
    flow_compilation *c;
    const flow_graph *g;
    const flow_graph_node *n = NULL;
    const flow_diagnostic *fault;
    if (!text) {
        fprintf(stderr, CMD ": out of memory\n");
        return 1;
    }
    /* only errors: warnings about a one-layer model ("dimension never
     * transformed") say nothing about the layer */
    if (!(c = flow_compile_string(ctx, "<check>", text, strlen(text)))) {
        free(text);
        return cli_fail(ctx, CMD);
    }
    if (flow_compile_errors(c) || !(g = flow_compile_graph(c))) {
        const char *file = NULL;
        int rc = CLI_EXIT_USAGE;
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
        if ((fault = declaration_fault(c))) {
            flow_layer_type_find(ctx, t->name, &file);
            fprintf(stderr, CMD ": %s: layer '%s' declares what the compiler "
                    "refuses (%s above): a fault of the plugin, not of the "
                    "options\n", file ? file : "?", t->name, fault->code);
            rc = 1;
        } else
            fprintf(stderr, CMD ": %s: the attributes or options are not "
                    "valid for this layer type\n", t->name);
        flow_compile_free(c);
        free(text);
        return rc;
    }
    for (size_t i = 0; i < flow_graph_node_count(g); i++)
        if (flow_graph_node_get(g, i)->kind == FLOW_NODE_LAYER)
            n = flow_graph_node_get(g, i);
    if (n && !fits_memory(n, t->name)) {
        flow_compile_free(c);
        free(text);
        return 1;
    }
    if (n)
        check_one(ctx, o, n->type, n->plugin_file, t->name, n->attrs,
                  n->in_dim, n->config.context_dim, n->config.has_bounds,
                  n->config.lo, n->config.hi, text, n, tot);
    flow_compile_free(c);
    free(text);
    return 0;
}

static int check_spec(flow_ctx *ctx, const check_opts *o, check_totals *tot)
{
    flow_compilation *c = cli_compile(ctx, CMD, o->target, NULL);
    const flow_graph *g;
    const char *src;
    if (!c)
        return 1;
    g = flow_compile_graph(c);
    src = flow_graph_source(g, 0, NULL, NULL);
    for (size_t i = 0; i < flow_graph_node_count(g); i++) {
        const flow_graph_node *n = flow_graph_node_get(g, i);
        char label[512];
        if (n->kind != FLOW_NODE_LAYER)
            continue;
        snprintf(label, sizeof label, "%s at %s:%d:%d", n->label, n->file,
                 n->line, n->col);
        if (!fits_memory(n, label)) {
            flow_compile_free(c);
            return 1;
        }
        check_one(ctx, o, n->type, n->plugin_file, label, n->attrs,
                  n->in_dim, n->config.context_dim, n->config.has_bounds,
                  n->config.lo, n->config.hi, src, n, tot);
    }
    flow_compile_free(c);
    return 0;
}

/* The index of the cli_loaded plugin whose file is `path`. */
static size_t find_plugin(const flow_ctx *ctx, const char *path)
{
    char *want = realpath(path, NULL);
    size_t i, n = flow_plugin_count(ctx);
    if (!want)
        return n;
    for (i = 0; i < n; i++) {
        char *have = realpath(flow_plugin_file(ctx, i), NULL);
        int same = have && !strcmp(have, want);
        free(have);
        if (same)
            break;
    }
    free(want);
    return i;
}

static int load_plugin(flow_ctx *ctx, const char *path)
{
    char buf[4096];
    /* a bare file name is a file here, not a name on the search path */
    if (!strchr(path, '/') && is_file(path)) {
        snprintf(buf, sizeof buf, "./%s", path);
        path = buf;
    }
    if (flow_plugin_load(ctx, path) != FLOW_OK)
        return cli_fail(ctx, CMD);
    return 0;
}

static int check_plugin(flow_ctx *ctx, const check_opts *o,
                        check_totals *tot)
{
    const flow_plugin_info *p;
    size_t i;
    int rc = 0;
    if (load_plugin(ctx, o->target))
        return 1;
    if ((i = find_plugin(ctx, o->target)) == flow_plugin_count(ctx)) {
        fprintf(stderr, CMD ": %s: loaded, but not found again\n",
                o->target);
        return 1;
    }
    p = flow_plugin_get(ctx, i);
    if (p->n_layers == 0) {
        fprintf(stderr, CMD ": %s: the plugin provides no layer types\n",
                o->target);
        return 1;
    }
    /* every layer is checked; usage (options the compiler refuses) wins
     * over a refused declaration */
    for (size_t j = 0; j < p->n_layers; j++) {
        int r = check_type(ctx, o, p->layers[j], tot);
        if (r > rc)
            rc = r;
    }
    return rc;
}

int cli_cmd_check(int argc, char **argv)
{
    check_opts o;
    check_totals tot;
    flow_ctx *ctx = NULL;
    int rc = parse_check(argc, argv, &o), spec, plugin;
    const flow_layer_type *t;

    if (rc)
        return rc < 0 ? 0 : rc;
    memset(&tot, 0, sizeof tot);
    plugin = ends_with(o.target, ".so");
    spec = !plugin && (ends_with(o.target, ".flow") || strchr(o.target, '/')
                       || is_file(o.target));
    if (spec && (o.has_dim || o.has_context || o.n_attrs || o.has_bounds
                 || o.has_shape)) {
        fprintf(stderr, CMD ": --dim, --shape, --context, --attr and --bounds "
                "come from the spec when checking %s (try '" CMD " --help')\n",
                o.target);
        return CLI_EXIT_USAGE;
    }
    if (plugin) {
        if (!(ctx = flow_ctx_new())) {
            fprintf(stderr, CMD ": out of memory\n");
            return 1;
        }
    } else if (!(ctx = cli_open_ctx(CMD)))
        return 1;
    for (size_t i = 0; i < o.n_plugins; i++)
        if (load_plugin(ctx, o.plugins[i])) {
            flow_ctx_free(ctx);
            return 1;
        }
    if (plugin)
        rc = check_plugin(ctx, &o, &tot);
    else if (spec)
        rc = check_spec(ctx, &o, &tot);
    else if (!(t = flow_layer_type_find(ctx, o.target, NULL))) {
        fprintf(stderr, CMD ": unknown layer type '%s' (no plugin on the "
                "search path provides it; see 'flowkit plugins')\n",
                o.target);
        rc = CLI_EXIT_USAGE;
    } else
        rc = check_type(ctx, &o, t, &tot);
    if (rc == 0 && tot.layers == 0)
        print_header(&o);
    if (o.json && (rc == 0 || tot.layers))
        printf("\n  ], \"checks\": %zu, \"failed\": %zu, \"skipped\": %zu}\n",
               tot.checks, tot.failed + tot.broken, tot.skipped);
    else if (rc == 0 || tot.layers)
        printf("\n%s: %zu layer%s, %zu checks, %zu failed, %zu skipped%s\n",
               tot.failed + tot.broken ? "FAIL" : "PASS", tot.layers,
               tot.layers == 1 ? "" : "s", tot.checks,
               tot.failed + tot.broken, tot.skipped,
               tot.broken ? " (a layer could not be built)" : "");
    flow_ctx_free(ctx);
    if (rc)
        return rc;
    return tot.failed || tot.broken ? 1 : 0;
}
