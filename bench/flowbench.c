/* flowbench.c - the timing driver behind bench/run (built by `make`, never
 * installed).  It uses only the public API (flow.h, flowc.h) plus CBLAS for
 * the machine's sgemm peak, and prints one JSON object per run on stdout.
 *
 *   flowbench sgemm [--n N] [--blas-threads T] [--reps R]
 *   flowbench model SPEC --data FILE --metric train|logprob|sample
 *             [--batch B] [--threads T] [--warmup W] [--iters N]
 *             [--min-time S] [--seed S] [--precision fp32|bf16-gemm]
 *
 * Exit status: 0 success, 1 error (spec, data, numerics), 2 usage.
 * The measuring rules are in bench/README.md. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "flow/flow.h"
#include "flow/flowc.h"

#include "clock.h"

#define EXIT_USAGE 2

static const char *usage_text =
    "usage: flowbench sgemm [--n N] [--blas-threads T] [--reps R]\n"
    "       flowbench model SPEC --data FILE --metric train|logprob|sample\n"
    "                 [--batch B] [--threads T] [--warmup W] [--iters N]\n"
    "                 [--min-time S] [--seed S]\n"
    "                 [--precision fp32|bf16-gemm]\n"
    "\n"
    "sgemm: times cblas_sgemm on N x N x N products (default 2048) with T\n"
    "OpenBLAS threads (default 1), R timed calls after one warm-up call\n"
    "(default 5); prints the best and median GFLOP/s.\n"
    "\n"
    "model: compiles SPEC (plugins from FLOW_PLUGIN_PATH), builds the model\n"
    "(seed S, default 0) with T executor threads (default 2) and reads FILE\n"
    "(CSV, NPY or IDX images, every column is data), its nets' products in\n"
    "fp32 (default) or bf16-gemm (flow_model_set_precision).  Then W\n"
    "untimed and at least N timed iterations (defaults 3 and 20),\n"
    "continuing until S seconds have passed when --min-time is given, of\n"
    "one metric:\n"
    "  train    one Adam step (lr 1e-3) on a shuffled batch of B rows\n"
    "           (after the data-dependent init on the first B rows)\n"
    "  logprob  flow_model_log_prob on B rows (default B 4096)\n"
    "  sample   flow_model_sample of B rows\n"
    "Prints one JSON object: iterations, seconds (wall and CPU), rate, peak\n"
    "resident memory of the process (getrusage) and resident memory before\n"
    "the model was built.  bench/run runs each measurement in its own\n"
    "process.\n";

/* Peak resident set of this process so far, KiB (Linux: ru_maxrss). */
static long peak_rss_kib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return ru.ru_maxrss;
}

/* Current resident set, KiB, from /proc/self/statm (-1 if unreadable). */
static long current_rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "flowbench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try 'flowbench --help')\n");
    return EXIT_USAGE;
}

/* Parses a positive integer option value into *out (within [min, max]). */
static int parse_size(const char *opt, const char *v, size_t min, size_t max,
                      size_t *out)
{
    char *end;
    unsigned long long x;
    if (!v)
        return usage_error("option %s needs a value", opt);
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x < min || x > max) {
        fprintf(stderr, "flowbench: %s: '%s' is not an integer in "
                "[%zu, %zu]\n", opt, v, min, max);
        return EXIT_USAGE;
    }
    *out = (size_t)x;
    return 0;
}

static int parse_double(const char *opt, const char *v, double *out)
{
    char *end;
    double x;
    if (!v)
        return usage_error("option %s needs a value", opt);
    errno = 0;
    x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= 0) || !isfinite(x)) {
        fprintf(stderr, "flowbench: %s: '%s' is not a number >= 0\n", opt,
                v);
        return EXIT_USAGE;
    }
    *out = x;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------- sgemm */

/* The machine's float32 GEMM rate: C = A B on N x N matrices, 2 N^3 flops
 * per call (multiply-adds counted as 2), OpenBLAS with T threads. */
static int cmd_sgemm(int argc, char **argv)
{
    size_t n = 2048, threads = 1, reps = 5;
    float *a, *b, *c;
    double *t;
    int rc;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--n"))
            rc = parse_size(o, v, 1, 16384, &n);
        else if (!strcmp(o, "--blas-threads"))
            rc = parse_size(o, v, 1, 256, &threads);
        else if (!strcmp(o, "--reps"))
            rc = parse_size(o, v, 1, 1000, &reps);
        else
            return usage_error("unknown option '%s'", o);
        if (rc)
            return rc;
        i++;
    }
    a = malloc(n * n * sizeof *a);
    b = malloc(n * n * sizeof *b);
    c = malloc(n * n * sizeof *c);
    t = malloc(reps * sizeof *t);
    if (!a || !b || !c || !t) {
        fprintf(stderr, "flowbench: sgemm: out of memory for n = %zu\n", n);
        free(a), free(b), free(c), free(t);
        return 1;
    }
    /* deterministic values in [-1, 1) */
    uint64_t s = 88172645463325252u;
    for (size_t i = 0; i < n * n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        a[i] = (float)((double)(s >> 11) * 0x1p-52 - 1.0);
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        b[i] = (float)((double)(s >> 11) * 0x1p-52 - 1.0);
    }
    openblas_set_num_threads((int)threads);
    int N = (int)n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a,
                N, b, N, 0.0f, c, N);                       /* warm-up */
    for (size_t r = 0; r < reps; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f,
                    a, N, b, N, 0.0f, c, N);
        t[r] = now_s() - t0;
    }
    qsort(t, reps, sizeof *t, cmp_double);
    double flops = 2.0 * (double)n * (double)n * (double)n;
    printf("{\"mode\": \"sgemm\", \"n\": %zu, \"blas_threads\": %zu, "
           "\"blas_threads_effective\": %d, \"reps\": %zu, "
           "\"best_s\": %.6g, \"median_s\": %.6g, \"gflops_best\": %.4g, "
           "\"gflops_median\": %.4g, \"check\": %.6g}\n",
           n, threads, openblas_get_num_threads(), reps, t[0],
           t[reps / 2], flops / t[0] * 1e-9, flops / t[reps / 2] * 1e-9,
           (double)c[n * n / 2 + n / 3]);
    free(a), free(b), free(c), free(t);
    return 0;
}

/* ------------------------------------------------------------- model */

typedef enum { M_TRAIN, M_LOGPROB, M_SAMPLE } metric_kind;

typedef struct model_opts {
    const char *spec, *data, *metric_name;
    metric_kind metric;
    size_t batch, threads, warmup, iters;
    int batch_given;
    double min_time;
    uint64_t seed;
    int gemm;                   /* flow_gemm_precision */
} model_opts;

static int parse_model_opts(int argc, char **argv, model_opts *o)
{
    size_t seed = 0;
    int rc = 0;
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->warmup = 3;
    o->iters = 20;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] != '-' || !a[1]) {
            if (o->spec)
                return usage_error("more than one spec: '%s'", a);
            o->spec = a;
            continue;
        }
        if (!strcmp(a, "--data")) {
            if (!v)
                return usage_error("option %s needs a value", a);
            o->data = v;
        } else if (!strcmp(a, "--metric")) {
            if (!v)
                return usage_error("option %s needs a value", a);
            o->metric_name = v;
        } else if (!strcmp(a, "--batch")) {
            rc = parse_size(a, v, 1, 100000000, &o->batch);
            o->batch_given = 1;
        } else if (!strcmp(a, "--threads"))
            rc = parse_size(a, v, 1, 256, &o->threads);
        else if (!strcmp(a, "--warmup"))
            rc = parse_size(a, v, 0, 1000000, &o->warmup);
        else if (!strcmp(a, "--iters"))
            rc = parse_size(a, v, 1, 100000000, &o->iters);
        else if (!strcmp(a, "--min-time"))
            rc = parse_double(a, v, &o->min_time);
        else if (!strcmp(a, "--seed"))
            rc = parse_size(a, v, 0, SIZE_MAX, &seed);
        else if (!strcmp(a, "--precision")) {
            if (!v)
                return usage_error("option %s needs a value", a);
            if (!strcmp(v, "fp32"))
                o->gemm = FLOW_PRECISION_FP32;
            else if (!strcmp(v, "bf16-gemm"))
                o->gemm = FLOW_PRECISION_BF16_GEMM;
            else
                return usage_error("--precision: expected fp32 or bf16-gemm, "
                                   "got '%s'", v);
        } else
            return usage_error("unknown option '%s'", a);
        if (rc)
            return rc;
        i++;
    }
    if (!o->spec)
        return usage_error("%s", "model: no spec given");
    if (!o->data)
        return usage_error("%s", "model: --data FILE is required");
    if (!o->metric_name)
        return usage_error("%s", "model: --metric is required");
    if (!strcmp(o->metric_name, "train"))
        o->metric = M_TRAIN;
    else if (!strcmp(o->metric_name, "logprob"))
        o->metric = M_LOGPROB;
    else if (!strcmp(o->metric_name, "sample"))
        o->metric = M_SAMPLE;
    else
        return usage_error("unknown metric '%s' (train, logprob, sample)",
                           o->metric_name);
    if (!o->batch_given)
        o->batch = o->metric == M_TRAIN ? 512 : 4096;
    o->seed = seed;
    return 0;
}

/* The timed loop of one metric.  Returns FLOW_OK or the failing call's
 * status (message in ctx); *iters and *secs receive the timed part. */
static int run_metric(const model_opts *o, flow_model *m, flow_data *data,
                      flow_real *rows, size_t *iters, double *secs,
                      double *cpu, double *last_loss)
{
    size_t n = flow_data_rows(data), dim = flow_model_dim(m);
    flow_trainer *tr = NULL;
    flow_real *out = NULL;
    int rc = FLOW_OK;
    *last_loss = NAN;
    if (o->metric == M_TRAIN) {
        flow_train_config cfg;
        flow_train_config_default(&cfg);
        cfg.batch = o->batch;
        cfg.seed = o->seed;
        /* data-dependent initialisation (actnorm) on the first B rows,
         * in evaluation mode, as `flowkit train` does before its first
         * step; a no-op forward pass for models without such layers */
        rc = flow_model_data_init(m, o->batch, flow_data_values(data), NULL);
        if (rc != FLOW_OK)
            return rc;
        flow_model_set_training(m, 1);
        tr = flow_trainer_new(m, &cfg, flow_data_values(data), NULL, n);
        if (!tr)
            return FLOW_ERR;
    } else {
        /* logp of the rows, or the samples (B x dim) */
        out = malloc(o->batch * (o->metric == M_SAMPLE ? dim : 1)
                     * sizeof *out);
        if (!out)
            return FLOW_ERR_NOMEM;
    }
    double t0 = 0, c0 = 0;
    size_t done = 0;
    for (size_t it = 0;; it++) {
        if (it == o->warmup) {
            t0 = now_s();
            c0 = cpu_s();
        }
        if (it >= o->warmup) {
            done = it - o->warmup;
            if (done >= o->iters
                && (o->min_time <= 0 || now_s() - t0 >= o->min_time))
                break;
        }
        if (o->metric == M_TRAIN)
            rc = flow_trainer_step(tr, last_loss);
        else if (o->metric == M_LOGPROB)
            rc = flow_model_log_prob(m, o->batch, rows, NULL, out);
        else
            rc = flow_model_sample(m, o->batch, NULL, out, NULL);
        if (rc != FLOW_OK)
            break;
    }
    *secs = now_s() - t0;
    *cpu = cpu_s() - c0;
    *iters = done;
    if (rc == FLOW_OK && o->metric != M_TRAIN) {
        /* results must be finite (a benchmark of NaNs measures nothing) */
        size_t k = o->batch * (o->metric == M_SAMPLE ? dim : 1);
        for (size_t i = 0; i < k; i++)
            if (!isfinite((double)out[i])) {
                fprintf(stderr, "flowbench: %s: non-finite %s value\n",
                        o->spec, o->metric_name);
                rc = FLOW_ERR_NUMERIC;
                break;
            }
        *last_loss = (double)out[0];
    }
    flow_trainer_free(tr);
    free(out);
    return rc;
}

static int cmd_model(int argc, char **argv)
{
    model_opts o;
    flow_ctx *ctx = NULL;
    flow_compilation *comp = NULL;
    flow_data *data = NULL;
    flow_model *m = NULL;
    flow_real *rows = NULL;
    int rc, status = 1;
    if ((rc = parse_model_opts(argc, argv, &o)) != 0)
        return rc;
    ctx = flow_ctx_new();
    if (!ctx) {
        fprintf(stderr, "flowbench: out of memory\n");
        return 1;
    }
    if (flow_plugin_load_all(ctx) != FLOW_OK) {
        fprintf(stderr, "flowbench: %s\n", flow_errmsg(ctx));
        goto done;
    }
    comp = flow_compile_file(ctx, o.spec);
    if (!comp) {
        fprintf(stderr, "flowbench: %s: %s\n", o.spec, flow_errmsg(ctx));
        goto done;
    }
    if (flow_compile_errors(comp)) {
        flow_compile_print_diags(comp, stderr, FLOW_DIAG_TEXT);
        goto done;
    }
    const flow_graph *g = flow_compile_graph(comp);
    if (flow_graph_context_dim(g)) {
        fprintf(stderr, "flowbench: %s: conditional flows are not "
                "benchmarked (no context data)\n", o.spec);
        goto done;
    }
    size_t dim = flow_graph_input_dim(g);
    if (flow_data_read(ctx, o.data, NULL, NULL, dim, &data) != FLOW_OK) {
        fprintf(stderr, "flowbench: %s\n", flow_errmsg(ctx));
        goto done;
    }
    size_t n = flow_data_rows(data);
    if (o.metric == M_TRAIN && n < o.batch) {
        fprintf(stderr, "flowbench: %s: %zu rows, fewer than the batch "
                "(%zu)\n", o.data, n, o.batch);
        goto done;
    }
    if (o.metric == M_LOGPROB) {
        /* B rows of the data, cycled when the file holds fewer */
        rows = malloc(o.batch * dim * sizeof *rows);
        if (!rows) {
            fprintf(stderr, "flowbench: out of memory\n");
            goto done;
        }
        for (size_t r = 0; r < o.batch; r++)
            memcpy(rows + r * dim, flow_data_values(data) + (r % n) * dim,
                   dim * sizeof *rows);
    }
    long base_kib = current_rss_kib();
    if (flow_graph_build_model(ctx, g, o.seed, &m) != FLOW_OK
        || flow_model_set_threads(m, o.threads) != FLOW_OK) {
        fprintf(stderr, "flowbench: %s: %s\n", o.spec, flow_errmsg(ctx));
        goto done;
    }
    if (flow_model_set_precision(m, o.gemm) != FLOW_OK) {
        fprintf(stderr, "flowbench: --precision: %s\n", flow_errmsg(ctx));
        status = EXIT_USAGE;
        goto done;
    }
    size_t iters;
    double secs, cpu, last;
    if ((rc = run_metric(&o, m, data, rows, &iters, &secs, &cpu, &last))
        != FLOW_OK) {
        fprintf(stderr, "flowbench: %s: %s: %s\n", o.spec, o.metric_name,
                flow_errmsg(ctx));
        goto done;
    }
    double per_s = secs > 0 ? (double)iters / secs : 0;
    printf("{\"mode\": \"model\", \"spec\": ");
    flow_json_string(stdout, o.spec);
    printf(", \"metric\": \"%s\", \"precision\": \"%s\", "
           "\"gemm_precision\": \"%s\", \"dim\": %zu, "
           "\"params\": %zu, \"batch\": %zu, \"threads\": %zu, "
           "\"warmup\": %zu, \"iters\": %zu, \"seconds\": %.6g, "
           "\"cpu_seconds\": %.6g, "
           "\"iters_per_s\": %.6g, \"rows_per_s\": %.6g, "
           "\"last_value\": %.6g, \"peak_rss_kib\": %ld, "
           "\"base_rss_kib\": %ld}\n",
           o.metric_name, flow_precision(),
           o.gemm ? "bf16-gemm" : "fp32", dim, flow_model_num_params(m),
           o.batch, o.threads, o.warmup, iters, secs, cpu, per_s,
           per_s * (double)o.batch, isfinite(last) ? last : 0.0,
           peak_rss_kib(), base_kib);
    status = 0;
done:
    flow_model_free(m);
    free(rows);
    flow_data_free(data);
    flow_compile_free(comp);
    flow_ctx_free(ctx);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "sgemm"))
        return cmd_sgemm(argc - 2, argv + 2);
    if (!strcmp(argv[1], "model"))
        return cmd_model(argc - 2, argv + 2);
    return usage_error("unknown command '%s' (sgemm, model)", argv[1]);
}
