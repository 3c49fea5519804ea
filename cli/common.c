/* common.c - what the subcommands share: the context with the plugins,
 * compiling a spec, loading a checkpoint, reading data for a model,
 * checking an output before any work, JSON output, growing text, the
 * clock and the stop signals. */
#ifdef __linux__
#define _GNU_SOURCE             /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#endif
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

/* The CPUs this process may run on (its affinity mask: a taskset or a
 * container's cpuset, not the machine's count), at least 1. */
static size_t cpus_available(void)
{
    long n = 0;
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
#endif
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > CLI_MAX_THREADS ? CLI_MAX_THREADS : (size_t)n;
}

int cli_parse_precision(cli_args *a, int *precision)
{
    const char *v = cli_opt_value(a);
    if (!v)
        return CLI_EXIT_USAGE;
    if (!strcmp(v, "fp32"))
        *precision = FLOW_PRECISION_FP32;
    else if (!strcmp(v, "bf16-gemm"))
        *precision = FLOW_PRECISION_BF16_GEMM;
    else
        return cli_usage_error(a, "--precision must be fp32 or bf16-gemm, "
                               "got '%s'", v);
    return 0;
}

int cli_set_precision(const char *cmd, flow_ctx *ctx, flow_model *m,
                      int precision)
{
    if (flow_model_set_precision(m, precision) == FLOW_OK)
        return 0;
    fprintf(stderr, "%s: --precision bf16-gemm: %s\n", cmd,
            flow_errmsg(ctx));
    return CLI_EXIT_USAGE;
}

int cli_default_threads(const char *cmd, size_t *threads)
{
    const char *e = getenv("FLOWKIT_THREADS");
    char *end;
    unsigned long long v;
    if (*threads)               /* --threads given */
        return 0;
    if (!e) {
        *threads = cpus_available();
        return 0;
    }
    errno = 0;
    v = strtoull(e, &end, 10);
    if (e[0] < '0' || e[0] > '9' || *end || errno || v < 1
        || v > CLI_MAX_THREADS) {
        fprintf(stderr, "%s: FLOWKIT_THREADS='%s' is not a thread count "
                "(a whole number from 1 to %d)\n", cmd, e, CLI_MAX_THREADS);
        return CLI_EXIT_USAGE;
    }
    *threads = (size_t)v;
    return 0;
}

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

/* Compiles a checkpoint's embedded sources (never the disk); diagnostics
 * name the checkpoint ("CKPT[PATH]:LINE:COL").  NULL after printing why. */
static flow_compilation *compile_embedded(flow_ctx *ctx, const char *cmd,
                                          const flow_checkpoint *ck,
                                          const char *path,
                                          const char *target)
{
    size_t n, errors;
    const flow_spec_file *files = flow_checkpoint_sources(ck, &n);
    flow_compilation *c = flow_compile_sources(ctx, files, n, target);
    const char *ver = flow_checkpoint_meta(ck, "format_version");
    if (!c) {
        cli_fail(ctx, cmd);
        return NULL;
    }
    flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    if (!(errors = flow_compile_errors(c)) && flow_compile_graph(c))
        return c;
    fprintf(stderr, "%s: %s: %zu error%s in the embedded spec\n", cmd,
            files[0].name, errors, errors == 1 ? "" : "s");
    if (ver && !strcmp(ver, "1") && n == 1)
        fprintf(stderr, "%s: note: %s has checkpoint format 1, which does not "
                "embed imported files, and imports are never read from "
                "disk: write it again with `flowkit train SPEC --data FILE "
                "--resume %s -o NEW`\n", cmd, path, path);
    flow_compile_free(c);
    return NULL;
}

int cli_load_checkpoint_target(cli_loaded *l, const char *cmd,
                               const char *path, size_t threads,
                               const char *target)
{
    memset(l, 0, sizeof *l);
    if (!(l->ctx = cli_open_ctx(cmd)))
        return 1;
    if (flow_checkpoint_open(l->ctx, path, &l->ck) != FLOW_OK)
        goto fail;
    if (target && !*target)             /* --weights: the checkpoint's own */
        target = flow_checkpoint_meta(l->ck, "target");
    if (!(l->comp = compile_embedded(l->ctx, cmd, l->ck, path, target)))
        goto quiet;
    if (flow_graph_build_model(l->ctx, flow_compile_graph(l->comp), 0,
                               &l->model) != FLOW_OK
        || flow_checkpoint_restore(l->ck, l->model, NULL) != FLOW_OK
        || flow_model_set_threads(l->model, threads) != FLOW_OK)
        goto fail;
    l->spec_source = flow_checkpoint_spec(l->ck);
    l->columns = flow_checkpoint_columns(l->ck, &l->n_columns,
                                         &l->n_context_columns);
    return 0;
fail:
    cli_fail(l->ctx, cmd);
quiet:
    cli_loaded_free(l);
    return 1;
}

/* The spec files of a compilation, as a checkpoint embeds them; NULL
 * (after a message in ctx) when out of memory.  Free the array. */
static flow_spec_file *spec_files(flow_ctx *ctx, const flow_compilation *comp,
                                  size_t *n)
{
    const flow_graph *g = flow_compile_graph(comp);
    flow_spec_file *f;
    *n = flow_graph_spec_file_count(g);
    if (!(f = calloc(*n ? *n : 1, sizeof *f))) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < *n; i++)
        flow_graph_spec_file(g, i, &f[i]);
    return f;
}

int cli_save_checkpoint(flow_ctx *ctx, flow_model *m, flow_trainer *t,
                        const flow_compilation *comp, const flow_data *data,
                        const char *history, const char *const *meta,
                        const char *out)
{
    flow_checkpoint_info in;
    size_t nc = flow_model_dim(m) + flow_model_context_dim(m), n;
    const char **cols = NULL;
    int rc;
    memset(&in, 0, sizeof in);
    in.struct_size = sizeof in;
    if (!(in.files = spec_files(ctx, comp, &n)))
        return FLOW_ERR_NOMEM;
    in.n_files = n;
    in.history_json = history;
    in.meta = meta;
    /* the training columns' names, when the data had a header, so that
     * later commands can match the columns of their input by name */
    if (data && flow_data_column_name(data, 0)
        && flow_data_dim(data) + flow_data_context_dim(data) == nc) {
        if (!(cols = calloc(nc, sizeof *cols))) {
            free((void *)in.files);
            return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        }
        for (size_t j = 0; j < nc; j++)
            cols[j] = flow_data_column_name(data, j);
        in.columns = cols;
    }
    rc = flow_checkpoint_write(m, t, &in, out);
    free(cols);
    free((void *)in.files);
    return rc;
}

/* "a, b, c" of n names, cut to fit cap. */
static void list_names(char *buf, size_t cap, const char *const *names,
                       size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t j = 0; j < n && used < cap; j++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%.60s",
                                 j ? ", " : "", names[j]);
}

int cli_check_resume(flow_ctx *ctx, const char *cmd,
                     const flow_checkpoint *ck,
                     const flow_compilation *comp, const char *spec,
                     const flow_data *data, const char *data_path)
{
    size_t n, ne, nd, nc;
    flow_spec_file *f = spec_files(ctx, comp, &n);
    const char *const *cols = flow_checkpoint_columns(ck, &nd, &nc);
    int rc;
    if (!f)
        return cli_fail(ctx, cmd);
    rc = flow_checkpoint_check_sources(ck, f, n);
    flow_checkpoint_sources(ck, &ne);
    free(f);
    if (rc != FLOW_OK)
        return cli_fail(ctx, cmd);
    if (n > 1 && ne == 1)
        fprintf(stderr, "%s: note: the checkpoint has format 1 and does not "
                "record what %s imported: the imports are taken as they are "
                "now\n", cmd, spec);
    /* the run goes on with the columns it started with */
    if (cols && data && flow_data_column_name(data, 0)) {
        for (size_t j = 0; j < nd + nc; j++) {
            const char *have = flow_data_column_name(data, j);
            char a[512], b[512];
            if (have && !strcmp(have, cols[j]))
                continue;
            list_names(a, sizeof a, cols, nd + nc);
            b[0] = '\0';
            for (size_t k = 0, used = 0; k < nd + nc && used < sizeof b; k++)
                used += (size_t)snprintf(b + used, sizeof b - used,
                                         "%s%.60s", k ? ", " : "",
                                         flow_data_column_name(data, k)
                                         ? flow_data_column_name(data, k)
                                         : "?");
            fprintf(stderr, "%s: %s: the columns are %s, the checkpoint "
                    "was trained on %s (select the same columns with "
                    "--columns)\n", cmd, data_path, b, a);
            return 1;
        }
    }
    return 0;
}

/* The whole file, or with comm this process's share of it. */
static int read_file(flow_ctx *ctx, flow_comm *comm, const char *path,
                     const char *columns, const char *context, size_t dim,
                     flow_data **d)
{
    if (comm)
        return flow_data_read_shard(ctx, comm, path, columns, context, dim,
                                    d);
    return flow_data_read(ctx, path, columns, context, dim, d);
}

/* Reads a data file for model m: dim columns (+ context columns). */
flow_data *cli_read_data(flow_ctx *ctx, const char *cmd, const char *path,
                     const char *columns, const char *context, size_t dim,
                     size_t cdim)
{
    return cli_read_shard(ctx, cmd, NULL, path, columns, context, dim, cdim);
}

flow_data *cli_read_shard(flow_ctx *ctx, const char *cmd, flow_comm *comm,
                          const char *path, const char *columns,
                          const char *context, size_t dim, size_t cdim)
{
    flow_data *d = NULL;
    if (read_file(ctx, comm, path, columns, context, dim, &d) != FLOW_OK) {
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
    if (flow_data_total_rows(d) == 0) {
        fprintf(stderr, "%s: %s: no rows\n", cmd, path);
        flow_data_free(d);
        return NULL;
    }
    return d;
}

/* The columns of d (read whole, with a header) named `want`, in that
 * order: dim data columns then cdim context columns; d has exactly these
 * columns.  NULL after printing why. */
static flow_data *select_named(flow_ctx *ctx, const char *cmd,
                               const char *path, flow_data *d,
                               const char *const *want, size_t dim,
                               size_t cdim)
{
    size_t nf = flow_data_dim(d), nw = dim + cdim;
    size_t *at = calloc(nw, sizeof *at);
    const char **have = calloc(nf, sizeof *have);
    flow_data *out = NULL;
    char a[512], b[512];
    if (!at || !have) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto done;
    }
    for (size_t j = 0; j < nf; j++)
        have[j] = flow_data_column_name(d, j);
    list_names(a, sizeof a, want, nw);
    list_names(b, sizeof b, have, nf);
    /* a header reorders the columns, it never drops one: a file of other
     * data that happens to hold these names too is refused */
    if (nf != nw) {
        fprintf(stderr, "%s: %s: %zu columns (%s), the model was trained on "
                "%zu (%s): select them with --columns%s\n", cmd, path, nf, b,
                nw, a, cdim ? " and --context" : "");
        goto done;
    }
    for (size_t k = 0; k < nw; k++) {
        size_t hits = 0;
        for (size_t j = 0; j < nf; j++)
            if (!strcmp(have[j], want[k])) {
                at[k] = j;
                hits++;
            }
        if (hits == 1)
            continue;
        fprintf(stderr, "%s: %s: %s column '%s' (the model was trained on "
                "columns %s; the file has %s): select the columns with "
                "--columns%s\n", cmd, path, hits ? "more than one" : "no",
                want[k], a, b, cdim ? " and --context" : "");
        goto done;
    }
    /* in place, so that places in messages still name the file's lines
     * and columns */
    if (flow_data_reorder(ctx, d, at, cdim) != FLOW_OK) {
        cli_fail(ctx, cmd);
        goto done;
    }
    out = d;
    d = NULL;
done:
    free(at);
    free(have);
    flow_data_free(d);
    return out;
}

flow_data *cli_read_by_names(flow_ctx *ctx, const char *cmd,
                             const char *path, const char *const *names,
                             size_t dim, size_t cdim)
{
    return cli_read_shard_by_names(ctx, cmd, NULL, path, names, dim, cdim);
}

flow_data *cli_read_shard_by_names(flow_ctx *ctx, const char *cmd,
                                   flow_comm *comm, const char *path,
                                   const char *const *names, size_t dim,
                                   size_t cdim)
{
    flow_data *d = NULL;
    /* every column, then the wanted ones by name when the file has a
     * header; without one, by position */
    if (read_file(ctx, comm, path, NULL, NULL, 0, &d) != FLOW_OK) {
        cli_fail(ctx, cmd);
        return NULL;
    }
    if (flow_data_note(d))
        fprintf(stderr, "%s: warning: %s\n", cmd, flow_data_note(d));
    if (flow_data_total_rows(d) == 0) {
        fprintf(stderr, "%s: %s: no rows\n", cmd, path);
        flow_data_free(d);
        return NULL;
    }
    if (flow_data_column_name(d, 0))
        return select_named(ctx, cmd, path, d, names, dim, cdim);
    if (cdim) {
        fprintf(stderr, "%s: %s: the model needs %zu context column%s, the "
                "data have 0 (select them with --context)\n", cmd, path,
                cdim, cdim == 1 ? "" : "s");
        flow_data_free(d);
        return NULL;
    }
    if (flow_data_dim(d) != dim) {
        fprintf(stderr, "%s: %s: %zu data columns, expected %zu\n", cmd,
                path, flow_data_dim(d), dim);
        flow_data_free(d);
        return NULL;
    }
    return d;
}

/* "CxHxW" of a rank-3 shape into buf. */
static const char *shape_text(char *buf, size_t cap, const size_t *shape)
{
    snprintf(buf, cap, "%zux%zux%zu", shape[0], shape[1], shape[2]);
    return buf;
}

int cli_check_shape(const char *cmd, const char *path, const flow_data *d,
                    size_t rank, const size_t *shape)
{
    size_t ds[4];
    char a[80], b[80];
    if (flow_data_shape(d, ds) != 3 || rank != 3
        || (ds[0] == shape[0] && ds[1] == shape[1] && ds[2] == shape[2]))
        return 0;
    fprintf(stderr, "%s: %s: images of shape %s, the model's input is %s "
            "(the same number of values, another layout)\n", cmd, path,
            shape_text(a, sizeof a, ds), shape_text(b, sizeof b, shape));
    return 1;
}

flow_data *cli_read_model_data(const cli_loaded *l, const char *cmd,
                               const char *path, const char *columns,
                               const char *context, int by_name)
{
    size_t dim = flow_model_dim(l->model);
    size_t cdim = flow_model_context_dim(l->model);
    size_t shape[4], rank = flow_model_input_shape(l->model, shape);
    flow_data *d;
    if (!by_name || columns || context || !l->columns)
        d = cli_read_data(l->ctx, cmd, path, columns, context, dim, cdim);
    else
        d = cli_read_by_names(l->ctx, cmd, path, l->columns, dim, cdim);
    if (d && cli_check_shape(cmd, path, d, rank, shape)) {
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

/* SIGINT / SIGTERM during training: the handler records the signal; the
 * loop finishes its step, writes the checkpoint and exits 128 + sig.  A
 * step that does not finish must not make the process unkillable: a
 * second signal, or the end of the grace period (FLOWKIT_STOP_GRACE
 * seconds, default 30, 0 = none) after the first while the loop has not
 * taken it into account, exits at once with 128 + that signal and writes
 * no checkpoint (an atomic write never leaves a partial one).  Once the
 * loop has seen the signal (cli_stop_saving), only a second signal
 * interrupts the rest: the end of the epoch, the save. */
volatile sig_atomic_t cli_stop_signal;
static volatile sig_atomic_t saving;

#define STOP_GRACE_DEFAULT 30

/* Async-signal-safe: a fixed message and _exit. */
static void exit_now(int sig, const char *why)
{
    static const char head[] = "flowkit: ";
    static const char tail[] = ": exiting at once, no checkpoint written\n";
    ssize_t ignored;
    ignored = write(2, head, sizeof head - 1);
    ignored = write(2, why, strlen(why));
    ignored = write(2, tail, sizeof tail - 1);
    (void)ignored;
    _exit(128 + sig);
}

static unsigned grace_s;         /* set before the handlers are */

/* The first signal also arms the grace alarm (alarm() is
 * async-signal-safe), so that a step that never returns to the loop is
 * still bounded. */
static void on_stop_signal(int sig)
{
    if (cli_stop_signal)
        exit_now(sig, "second interrupt");
    cli_stop_signal = sig;
    if (grace_s)
        alarm(grace_s);
}

static void on_grace_alarm(int sig)
{
    (void)sig;
    if (!saving && cli_stop_signal)
        exit_now(cli_stop_signal, "the step did not finish within "
                 "FLOWKIT_STOP_GRACE seconds of the interrupt");
}

static unsigned stop_grace(void)
{
    const char *v = getenv("FLOWKIT_STOP_GRACE");
    char *end;
    unsigned long s;
    if (!v || !*v)
        return STOP_GRACE_DEFAULT;
    errno = 0;
    s = strtoul(v, &end, 10);
    if (*end || errno || s > 86400 || *v == '-') {
        fprintf(stderr, "flowkit: FLOWKIT_STOP_GRACE='%.40s' is not a number "
                "of seconds from 0 to 86400: using %d\n", v,
                STOP_GRACE_DEFAULT);
        return STOP_GRACE_DEFAULT;
    }
    return (unsigned)s;
}

void cli_catch_stop_signals(int on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    saving = 0;
    if (on)
        grace_s = stop_grace();
    else
        alarm(0);
    sa.sa_handler = on ? on_grace_alarm : SIG_DFL;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on ? on_stop_signal : SIG_DFL;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void cli_stop_saving(void)
{
    saving = 1;
    alarm(0);
}

int cli_agree_stop(flow_comm *comm, int *stop)
{
    double v = (double)cli_stop_signal;
    int rc = flow_comm_allreduce(comm, &v, 1, FLOW_COMM_MAX);
    if (rc == FLOW_OK && v > 0) {
        *stop = (int)v;
        if (!cli_stop_signal)
            cli_stop_signal = (int)v;
    }
    return rc;
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
