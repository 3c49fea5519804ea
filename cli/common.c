/* common.c - what the subcommands share: the context with the plugins,
 * compiling a spec, loading a checkpoint, reading data for a model,
 * checking an output before any work, JSON output, growing text, the
 * clock and the stop signals. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------ common */

int cli_fail(flow_ctx *ctx, const char *cmd)
{
    fprintf(stderr, "%s: %s\n", cmd, ctx ? flow_errmsg(ctx) : "out of memory");
    return 1;
}

flow_ctx *cli_open_ctx(const char *cmd)
{
    flow_ctx *ctx = flow_ctx_new();
    if (!ctx) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return NULL;
    }
    /* only the plugins the spec or checkpoint needs: one that is broken
     * or crashes on loading must not stop commands that do not use it */
    if (flow_plugin_load_on_demand(ctx) != FLOW_OK) {
        cli_fail(ctx, cmd);
        flow_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Compiles a spec file or text; diagnostics to stderr.  NULL on errors. */
flow_compilation *cli_compile(flow_ctx *ctx, const char *cmd,
                                 const char *path, const char *text)
{
    return cli_compile_target(ctx, cmd, path, text, NULL);
}

flow_compilation *cli_compile_target(flow_ctx *ctx, const char *cmd,
                                     const char *path, const char *text,
                                     const char *target)
{
    flow_compilation *c = text
        ? flow_compile_string_target(ctx, path, text, strlen(text), target)
        : flow_compile_file_target(ctx, path, target);
    if (!c) {
        cli_fail(ctx, cmd);
        return NULL;
    }
    flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    if (flow_compile_errors(c) || !flow_compile_graph(c)) {
        fprintf(stderr, "%s: %s: %zu error%s in the spec\n", cmd, path,
                flow_compile_errors(c),
                flow_compile_errors(c) == 1 ? "" : "s");
        flow_compile_free(c);
        return NULL;
    }
    return c;
}

void cli_loaded_free(cli_loaded *l)
{
    flow_model_free(l->model);
    flow_compile_free(l->comp);
    flow_checkpoint_free(l->ck);
    flow_ctx_free(l->ctx);
    memset(l, 0, sizeof *l);
}

int cli_load_checkpoint(cli_loaded *l, const char *cmd, const char *path,
                        size_t threads)
{
    return cli_load_checkpoint_target(l, cmd, path, threads, NULL);
}

int cli_load_checkpoint_target(cli_loaded *l, const char *cmd,
                               const char *path, size_t threads,
                               const char *target)
{
    const char *spec, *spec_path;
    memset(l, 0, sizeof *l);
    if (!(l->ctx = cli_open_ctx(cmd)))
        return 1;
    if (flow_checkpoint_open(l->ctx, path, &l->ck) != FLOW_OK)
        goto fail;
    spec = flow_checkpoint_spec(l->ck);
    spec_path = flow_checkpoint_meta(l->ck, "spec_path");
    if (target && !*target)             /* --weights: the checkpoint's own */
        target = flow_checkpoint_meta(l->ck, "target");
    if (!(l->comp = cli_compile_target(l->ctx, cmd, spec_path ? spec_path
                                       : path, spec, target)))
        goto quiet;
    if (flow_graph_build_model(l->ctx, flow_compile_graph(l->comp), 0,
                               &l->model) != FLOW_OK
        || flow_checkpoint_restore(l->ck, l->model, NULL) != FLOW_OK
        || flow_model_set_threads(l->model, threads) != FLOW_OK)
        goto fail;
    l->spec_source = spec;
    return 0;
fail:
    cli_fail(l->ctx, cmd);
quiet:
    cli_loaded_free(l);
    return 1;
}

/* Reads a data file for model m: dim columns (+ context columns). */
flow_data *cli_read_data(flow_ctx *ctx, const char *cmd, const char *path,
                     const char *columns, const char *context, size_t dim,
                     size_t cdim)
{
    flow_data *d = NULL;
    if (flow_data_read(ctx, path, columns, context, dim, &d) != FLOW_OK) {
        cli_fail(ctx, cmd);
        return NULL;
    }
    if (flow_data_note(d))
        fprintf(stderr, "%s: warning: %s\n", cmd, flow_data_note(d));
    if (flow_data_context_dim(d) != cdim) {
        fprintf(stderr, "%s: %s: the model %s %zu context column%s, the data "
                "have %zu (select them with --context)\n", cmd, path,
                cdim ? "needs" : "takes", cdim, cdim == 1 ? "" : "s",
                flow_data_context_dim(d));
        flow_data_free(d);
        return NULL;
    }
    if (flow_data_rows(d) == 0) {
        fprintf(stderr, "%s: %s: no rows\n", cmd, path);
        flow_data_free(d);
        return NULL;
    }
    return d;
}

int cli_check_output(const char *cmd, const char *out,
                     const char *const *inputs, size_t n)
{
    flow_ctx *ctx;
    size_t stdin_uses = 0;
    int rc;
    for (size_t i = 0; i < n; i++)
        stdin_uses += inputs[i] && !strcmp(inputs[i], "-");
    if (stdin_uses > 1) {
        fprintf(stderr, "%s: standard input can be read only once, but %zu "
                "inputs are '-' (try '%s --help')\n", cmd, stdin_uses, cmd);
        return CLI_EXIT_USAGE;
    }
    if (!out || !strcmp(out, "-"))
        return 0;
    if (!*out) {
        fprintf(stderr, "%s: -o: empty file name (try '%s --help')\n", cmd,
                cmd);
        return CLI_EXIT_USAGE;
    }
    if (!(ctx = flow_ctx_new())) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    rc = flow_output_check(ctx, out, inputs, n) == FLOW_OK ? 0
                                                           : cli_fail(ctx, cmd);
    flow_ctx_free(ctx);
    return rc;
}

int cli_check_output_sources(const char *cmd, const char *out,
                             const flow_graph *g)
{
    size_t n = flow_graph_source_count(g);
    const char **paths = calloc(n ? n : 1, sizeof *paths);
    int rc;
    if (!paths) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len;
        flow_graph_source(g, i, &paths[i], &len);
    }
    rc = cli_check_output(cmd, out, paths, n);
    free(paths);
    return rc;
}

/* Seconds on the monotonic clock. */
double cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_json_num(FILE *f, double v, int digits)
{
    if (isfinite(v))
        fprintf(f, "%.*g", digits, v);
    else
        fputs("null", f);
}

/* ------------------------------------------------------------ signals */

/* SIGINT / SIGTERM during training: the handler only records the signal;
 * the loop finishes its step, writes the checkpoint and exits 128 + sig. */
volatile sig_atomic_t cli_stop_signal;

static void on_stop_signal(int sig)
{
    cli_stop_signal = sig;
}

void cli_catch_stop_signals(int on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on ? on_stop_signal : SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ------------------------------------------------------------ text */

void cli_text_add(cli_text *t, const char *fmt, ...)
{
    va_list ap, ap2;
    int n;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n >= 0 && t->len + (size_t)n + 2 > t->cap) {
        size_t cap = (t->cap + (size_t)n + 2) * 2;
        char *p = realloc(t->s, cap);
        if (!p)
            n = -1;
        else {
            t->s = p;
            t->cap = cap;
        }
    }
    if (n >= 0) {
        vsnprintf(t->s + t->len, (size_t)n + 1, fmt, ap2);
        t->len += (size_t)n;
    } else
        t->failed = 1;
    va_end(ap2);
}
