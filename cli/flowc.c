/* flowc.c - the `flowc` command: compiles and verifies a .flow spec,
 * prints diagnostics, a cost report, or the graph as JSON or DOT.
 * Exit codes: 0 success (warnings allowed), 1 errors in the spec or its
 * plugins, 2 usage errors. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flowc.h"
#include "help.h"

#define EXIT_SPEC 1
#define CLI_EXIT_USAGE 2

static void usage(FILE *f)
{
    fputs("usage: flowc [OPTIONS] FILE.flow\n"
          "\n"
          "Compiles a flowkit model spec, proves at compile time that it is\n"
          "a bijection with a tractable log-determinant, and reports.\n"
          "\n"
          "actions (default --check):\n"
          "  --check              parse, expand and verify; print only\n"
          "                       diagnostics\n"
          "  --report             also print a table per layer (Jacobian\n"
          "                       class, parameters, certificate) and the\n"
          "                       cost of density evaluation and sampling\n"
          "  --emit=json          print the verified graph as JSON\n"
          "  --emit=dot           print the graph for Graphviz\n"
          "  --emit=c             print a C file defining a function that\n"
          "                       builds the model through the runtime API\n"
          "  --function=NAME      name of that function (default\n"
          "                       flow_build_<flow name>)\n"
          "  --layers             list the layer types the plugins provide\n"
          "  --layer=TYPE         print TYPE's attributes (types, defaults,\n"
          "                       ranges, alternatives) and exit\n"
          "\n"
          "options:\n"
          "  --terse              diagnostics: first lines only\n"
          "  --diagnostics=FMT    diagnostics as text (default) or json\n"
          "  --werror             treat warnings as errors (exit 1)\n"
          "  --plugin=FILE        load an extra plugin .so (repeatable), on\n"
          "                       top of those found on the search path\n"
          "  -o FILE              write the report or emitted graph to FILE\n"
          "  --version            print versions and exit\n"
          "  --help               this text\n"
          "\n"
          "Diagnostics go to standard error, one per problem:\n"
          "  file:line:col: error[F0103]: message\n"
          "followed by the source line, the span underlined, and a help:\n"
          "line when a fix is known.  Codes are listed in docs/language.md.\n"
          "\n"
          "exit status: 0 success (warnings allowed), 1 errors in the spec\n"
          "(or a plugin failed to load), 2 usage errors.\n"
          "\n"
          "environment:\n"
          "  FLOW_PLUGIN_PATH     colon-separated directories searched for\n"
          "                       layer plugins before the installed one\n",
          f);
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("flowc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see flowc --help)\n", stderr);
    return CLI_EXIT_USAGE;
}

/* An unknown option, with the nearest real one: matched by the name
 * before any '=', shown with its value ('--layer' -> '--layer=TYPE'). */
static int unknown_option(const char *a)
{
    static const char *const names[] = {
        "--check", "--report", "--emit", "--function", "--layers",
        "--layer", "--terse", "--diagnostics", "--werror", "--plugin",
        "--version", "--help"};
    static const char *const shown[] = {
        "--check", "--report", "--emit=json|dot|c", "--function=NAME",
        "--layers", "--layer=TYPE", "--terse", "--diagnostics=text|json",
        "--werror", "--plugin=FILE", "--version", "--help"};
    char key[FLOW_MAX_IDENT + 1];
    size_t len = strcspn(a, "=");
    long k;
    if (len > FLOW_MAX_IDENT)
        len = FLOW_MAX_IDENT;
    memcpy(key, a, len);
    key[len] = '\0';
    k = cli_suggest(key, names, sizeof names / sizeof names[0]);
    if (k >= 0)
        return usage_error("unknown option '%s'; did you mean '%s'?", a,
                           shown[k]);
    return usage_error("unknown option '%s'", a);
}

enum action { ACT_CHECK, ACT_REPORT, ACT_JSON, ACT_DOT, ACT_LAYERS,
              ACT_LAYER, ACT_C };

/* The layer types the plugins provide, one line each. */
static void list_layers(const flow_ctx *ctx)
{
    for (size_t i = 0; i < flow_plugin_count(ctx); i++) {
        const flow_plugin_info *p = flow_plugin_get(ctx, i);
        for (size_t j = 0; j < p->n_layers; j++)
            printf("%-16s %s\n", p->layers[j]->name,
                   p->layers[j]->summary ? p->layers[j]->summary : "");
    }
}

/* TYPE's attribute reference, or an error with a suggestion. */
static int layer_reference(const flow_ctx *ctx, const char *type)
{
    char hint[320];
    if (cli_layer_reference(ctx, type, stdout) == 0)
        return 0;
    fprintf(stderr, "flowc: no layer type '%s' in the loaded plugins%s "
            "(see flowc --layers)\n", type,
            cli_layer_did_you_mean(ctx, type, hint, sizeof hint));
    return EXIT_SPEC;
}

int main(int argc, char **argv)
{
    enum action act = ACT_CHECK;
    flow_diag_format fmt = FLOW_DIAG_TEXT;
    int terse = 0, werror = 0, status, writes;
    const char *file = NULL, *out_path = NULL, *layer = NULL, *func = NULL;
    flow_output *o = NULL;
    const char **plugins = calloc((size_t)argc + 1, sizeof *plugins);
    size_t n_plugins = 0;
    flow_ctx *ctx = NULL;
    flow_compilation *c = NULL;
    const flow_graph *g;
    FILE *out = stdout;

    if (!plugins) {
        fputs("flowc: out of memory\n", stderr);
        return EXIT_SPEC;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            status = 0;
            goto done;
        } else if (!strcmp(a, "--version")) {
            printf("flowc %s (language %d, plugin ABI %u, %s)\n",
                   flow_version(), FLOW_LANGUAGE_VERSION,
                   FLOW_PLUGIN_ABI_VERSION, flow_precision());
            status = 0;
            goto done;
        } else if (!strcmp(a, "--check")) {
            act = ACT_CHECK;
        } else if (!strcmp(a, "--report")) {
            act = ACT_REPORT;
        } else if (!strcmp(a, "--emit=json")) {
            act = ACT_JSON;
        } else if (!strcmp(a, "--emit=dot")) {
            act = ACT_DOT;
        } else if (!strcmp(a, "--emit=c")) {
            act = ACT_C;
        } else if (!strncmp(a, "--function=", 11) && a[11]) {
            func = a + 11;
        } else if (!strcmp(a, "--layers")) {
            act = ACT_LAYERS;
        } else if (!strncmp(a, "--layer=", 8) && a[8]) {
            act = ACT_LAYER;
            layer = a + 8;
        } else if (!strncmp(a, "--emit=", 7)) {
            status = usage_error("unknown emitter '%s' (use json, dot or c)",
                                 a + 7);
            goto done;
        } else if (!strcmp(a, "--terse")) {
            terse = 1;
        } else if (!strcmp(a, "--werror")) {
            werror = 1;
        } else if (!strcmp(a, "--diagnostics=json")) {
            fmt = FLOW_DIAG_JSON;
        } else if (!strcmp(a, "--diagnostics=text")) {
            fmt = FLOW_DIAG_TEXT;
        } else if (!strncmp(a, "--diagnostics=", 14)) {
            status = usage_error("unknown diagnostics format '%s' (use text "
                                 "or json)", a + 14);
            goto done;
        } else if (!strncmp(a, "--plugin=", 9) && a[9]) {
            plugins[n_plugins++] = a + 9;
        } else if (!strcmp(a, "-o")) {
            if (++i >= argc) {
                status = usage_error("%s needs a file name", "-o");
                goto done;
            }
            out_path = argv[i];
        } else if (a[0] == '-' && a[1]) {
            status = unknown_option(a);
            goto done;
        } else if (file) {
            status = usage_error("one spec at a time (got a second: '%s')",
                                 a);
            goto done;
        } else {
            file = a;
        }
    }
    if (!file && act != ACT_LAYERS && act != ACT_LAYER) {
        status = usage_error("%s", "no spec file given");
        goto done;
    }
    if (terse && fmt == FLOW_DIAG_TEXT)
        fmt = FLOW_DIAG_TERSE;
    writes = act == ACT_REPORT || act == ACT_JSON || act == ACT_DOT
             || act == ACT_C;
    if (writes && out_path && !*out_path) {
        status = usage_error("%s", "-o: empty file name");
        goto done;
    }

    if (!(ctx = flow_ctx_new())) {
        fputs("flowc: out of memory\n", stderr);
        status = EXIT_SPEC;
        goto done;
    }
    /* before any work: the output can be written, and is neither the
     * spec nor a plugin (its imports are checked once they are known) */
    plugins[n_plugins] = file;
    if (writes && out_path
        && flow_output_check(ctx, out_path, plugins, n_plugins + 1)
           != FLOW_OK) {
        fprintf(stderr, "flowc: %s\n", flow_errmsg(ctx));
        status = EXIT_SPEC;
        goto done;
    }
    for (size_t i = 0; i < n_plugins; i++)
        if (flow_plugin_load(ctx, plugins[i]) != FLOW_OK) {
            fprintf(stderr, "flowc: %s\n", flow_errmsg(ctx));
            status = EXIT_SPEC;
            goto done;
        }
    if (flow_plugin_load_all(ctx) != FLOW_OK) {
        fprintf(stderr, "flowc: %s\n", flow_errmsg(ctx));
        status = EXIT_SPEC;
        goto done;
    }
    if (act == ACT_LAYERS) {
        list_layers(ctx);
        status = 0;
        goto done;
    }
    if (act == ACT_LAYER) {
        status = layer_reference(ctx, layer);
        goto done;
    }
    if (!(c = flow_compile_file(ctx, file))) {
        fprintf(stderr, "flowc: out of memory compiling %s\n", file);
        status = EXIT_SPEC;
        goto done;
    }
    flow_compile_print_diags(c, stderr, fmt);
    g = flow_compile_graph(c);
    if (!g || (werror && flow_compile_warnings(c) > 0)) {
        status = EXIT_SPEC;
        goto done;
    }
    /* -o goes through the runtime's output files (flow_output_open): an
     * error never leaves a half-written file under the requested name */
    if (writes && out_path) {
        size_t n = flow_graph_source_count(g), len;
        const char **src = calloc(n ? n : 1, sizeof *src);
        int bad = !src;
        for (size_t i = 0; src && i < n; i++)
            flow_graph_source(g, i, &src[i], &len);
        if (bad)
            flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        else
            bad = flow_output_check(ctx, out_path, src, n) != FLOW_OK
                  || flow_output_open(ctx, out_path, &o) != FLOW_OK;
        free(src);
        if (bad) {
            fprintf(stderr, "flowc: %s\n", flow_errmsg(ctx));
            status = EXIT_SPEC;
            goto done;
        }
        out = flow_output_stream(o);
    }
    status = 0;
    if (act == ACT_REPORT)
        flow_graph_print_report(g, out);
    else if (act == ACT_JSON)
        flow_graph_print_json(g, out);
    else if (act == ACT_DOT)
        flow_graph_print_dot(g, out);
    else if (act == ACT_C && flow_graph_print_c(g, out, func) != FLOW_OK) {
        fprintf(stderr, "flowc: %s: --emit=c: a base distribution given the "
                "context cannot be built by this runtime yet\n", file);
        status = EXIT_SPEC;
    }
    if (o) {
        flow_output *w = o;
        o = NULL;
        if (status != 0)
            flow_output_abort(w);
        else if (flow_output_commit(ctx, w) != FLOW_OK) {
            fprintf(stderr, "flowc: %s\n", flow_errmsg(ctx));
            status = EXIT_SPEC;
        }
    }
done:
    flow_output_abort(o);
    flow_compile_free(c);
    flow_ctx_free(ctx);
    free(plugins);
    return status;
}
