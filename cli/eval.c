/* eval.c - the subcommands that run a trained model over a data file:
 * eval (mean log-likelihood), logprob, encode and decode, and the option
 * parser they share with sample and info.  Exit codes: 0 success, 1
 * error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "../runtime/rng.h"        /* the runtime's streams (librng.la) */

static int parse_format(cli_args *a, flow_data_format *f)
{
    const char *v = cli_opt_value(a);
    if (!v)
        return CLI_EXIT_USAGE;
    if (!strcmp(v, "csv"))
        *f = FLOW_DATA_CSV;
    else if (!strcmp(v, "npy"))
        *f = FLOW_DATA_NPY;
    else
        return cli_usage_error(a, "--format: '%s' is not csv or npy", v);
    return 0;
}

/* --shape C,H,W: 1 to 4 positive sizes. */
static int parse_shape(cli_args *a, size_t *shape, int *rank)
{
    const char *v = cli_opt_value(a), *p;
    if (!v)
        return CLI_EXIT_USAGE;
    *rank = 0;
    for (p = v;; p++) {
        char *end;
        unsigned long long k;
        if (*p < '1' || *p > '9' || *rank == 4)
            break;
        errno = 0;
        k = strtoull(p, &end, 10);
        if (errno || k > 1u << 24)
            break;
        shape[(*rank)++] = (size_t)k;
        p = end;
        if (!*p)
            return 0;
        if (*p != ',')
            break;
    }
    return cli_usage_error(a, "--shape: '%s' is not 1 to 4 positive sizes "
                           "(C,H,W)", v);
}

/* --range lo,hi: two finite numbers, lo < hi. */
static int parse_pixel_range(cli_args *a, double *lo, double *hi)
{
    const char *v = cli_opt_value(a);
    char *end, *end2;
    if (!v)
        return CLI_EXIT_USAGE;
    *lo = strtod(v, &end);
    if (end != v && *end == ',') {
        *hi = strtod(end + 1, &end2);
        if (end2 != end + 1 && !*end2 && isfinite(*lo) && isfinite(*hi)
            && *lo < *hi)
            return 0;
    }
    return cli_usage_error(a, "--range: '%s' is not lo,hi with lo < hi", v);
}

/* ------------------------------------------------------------ locations */

#define ALLOW_HINT " (--allow-nonfinite accepts it)"

/* Every value of d inside the declared domain of node nd, a layer that
 * sees the data as read; else 1 after printing the first outside. */
static int check_domain(const char *cmd, const flow_graph_node *nd,
                        flow_data *d)
{
    const flow_layer_desc *ds = nd->desc;
    size_t n = flow_data_rows(d), dim = flow_data_dim(d);
    const flow_real *x = flow_data_values(d);
    int open = ds->domain == FLOW_DOMAIN_OPEN;
    /* in the data's precision, as the bounds below */
    double lo = (flow_real)ds->domain_lo, hi = (flow_real)ds->domain_hi;
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < dim; j++) {
            double v = x[r * dim + j];
            char where[512];
            if (open ? v > lo && v < hi : v >= lo && v <= hi)
                continue;
            flow_data_locate(d, r, j, where, sizeof where);
            fprintf(stderr, "%s: %s: value %.9g is outside the domain "
                    "%c%g, %g%c of layer %s (%s:%d:%d, %s), which the data "
                    "enters\n", cmd, where, v, open ? '(' : '[',
                    ds->domain_lo, ds->domain_hi, open ? ')' : ']',
                    nd->label, nd->file, nd->line, nd->col,
                    nd->plugin_file);
            return 1;
        }
    return 0;
}

/* The layers that the data enters as read (only permutations before
 * them) and that declare an input domain: 1 when a value is outside. */
static int check_domains(const char *cmd, const flow_graph *g, flow_data *d)
{
    for (size_t k = 0; k < flow_graph_node_count(g); k++) {
        const flow_graph_node *nd = flow_graph_node_get(g, k);
        if (nd->kind != FLOW_NODE_LAYER)
            break;
        if (nd->desc->domain != FLOW_DOMAIN_NONE
            && check_domain(cmd, nd, d))
            return 1;
        if (nd->desc->dep != FLOW_DEP_PERMUTATION)
            break;
    }
    return 0;
}

int cli_check_bounds(const char *cmd, const flow_graph *g, flow_data *d)
{
    double lo, hi;
    size_t n = flow_data_rows(d), dim = flow_data_dim(d);
    const flow_real *x = flow_data_values(d);
    if (!flow_graph_input_bounds(g, &lo, &hi))
        return check_domains(cmd, g, d);
    /* compared in the data's precision: "0.3" in the file is the
     * flow_real nearest 0.3, which may lie just above the double */
    lo = (flow_real)lo;
    hi = (flow_real)hi;
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < dim; j++) {
            double v = x[r * dim + j];
            char where[512];
            if (v >= lo && v <= hi)
                continue;
            flow_data_locate(d, r, j, where, sizeof where);
            fprintf(stderr, "%s: %s: value %.9g is outside the bounds "
                    "[%g, %g] that the spec declares for its input '%s'\n",
                    cmd, where, v, lo, hi, flow_graph_input_name(g));
            return 1;
        }
    return check_domains(cmd, g, d);
}

/* One pass of `what` (0 log-density, 1 forward, 2 inverse) over n rows. */
static int run_rows(flow_model *m, int what, size_t n, const flow_real *x,
                    const flow_real *c, flow_real *out)
{
    return what == 0 ? flow_model_log_prob(m, n, x, c, out)
         : what == 1 ? flow_model_forward(m, n, x, c, out, NULL)
                     : flow_model_inverse(m, n, x, c, out, NULL);
}

int cli_fail_located(flow_ctx *ctx, const char *cmd, flow_model *m,
                     flow_data *d, int what, size_t from, size_t batch)
{
    char msg[2048], where[512];
    size_t n = flow_data_rows(d), dim = flow_model_dim(m);
    size_t k = flow_model_context_dim(m), w = what == 0 ? 1 : dim;
    size_t found = SIZE_MAX;
    flow_real *out;
    snprintf(msg, sizeof msg, "%s", flow_errmsg(ctx));
    if (batch > n)
        batch = n;
    /* the failing batch first, then its rows one by one */
    out = malloc((batch ? batch : 1) * w * sizeof *out);
    for (size_t r = from; out && r < n; r += batch) {
        size_t b = n - r < batch ? n - r : batch;
        const flow_real *x = flow_data_values(d) + r * dim;
        const flow_real *c = flow_data_context(d);
        c = c ? c + r * k : NULL;
        if (run_rows(m, what, b, x, c, out) == FLOW_OK)
            continue;
        for (size_t i = 0; i < b && found == SIZE_MAX; i++)
            if (run_rows(m, what, 1, x + i * dim, c ? c + i * k : NULL, out)
                != FLOW_OK)
                found = r + i;
        break;
    }
    free(out);
    if (found == SIZE_MAX) {
        fprintf(stderr, "%s: %s\n", cmd, msg);
        return 1;
    }
    flow_data_locate(d, found, SIZE_MAX, where, sizeof where);
    fprintf(stderr, "%s: %s: %s\n", cmd, where, msg);
    return 1;
}

int cli_nonfinite_row(const char *cmd, flow_data *d, size_t row,
                      const char *what, double v, const char *hint)
{
    char where[512];
    flow_data_locate(d, row, SIZE_MAX, where, sizeof where);
    fprintf(stderr, "%s: %s: %s is %g under the model%s\n", cmd, where,
            what, v, hint);
    return 1;
}

int cli_first_nonfinite(cli_loaded *l, const char *cmd, flow_data *d,
                        size_t batch, const char *hint)
{
    size_t n = flow_data_rows(d), dim = flow_model_dim(l->model);
    size_t k = flow_model_context_dim(l->model);
    flow_real *lp = malloc((n < batch ? n : batch) * sizeof *lp);
    int rc;
    if (!lp)
        return flow_ctx_error(l->ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t r = 0; r < n; r += batch) {
        size_t b = n - r < batch ? n - r : batch;
        const flow_real *c = flow_data_context(d);
        if ((rc = flow_model_log_prob(l->model, b,
                                      flow_data_values(d) + r * dim,
                                      c ? c + r * k : NULL, lp)) != FLOW_OK) {
            free(lp);
            return rc;
        }
        for (size_t i = 0; i < b; i++)
            if (!isfinite(lp[i])) {
                double v = lp[i];
                free(lp);
                cli_nonfinite_row(cmd, d, r + i, "the log-density", v, hint);
                return -1;
            }
    }
    free(lp);
    return 0;
}

/* ------------------------------------------------------------ ranks */

int cli_comm_open(cli_loaded *l, const char *cmd, const char *data,
                  flow_comm **comm)
{
    if (!(*comm = flow_comm_new(l->ctx)))
        return cli_fail(l->ctx, cmd);
    /* mpirun forwards standard input to rank 0 alone: the others would
     * read no rows */
    if (data && !strcmp(data, "-") && flow_comm_size(*comm) > 1) {
        if (flow_comm_rank(*comm) == 0)
            fprintf(stderr, "%s: --data -: under mpirun only rank 0 reads "
                    "standard input; give a file that every rank can "
                    "read\n", cmd);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_comm_end(flow_comm *comm, int rc)
{
    /* a rank that fails ends them all: the others could be waiting in a
     * collective (mpirun reports the abort and exits non-zero) */
    if (comm && rc != 0 && flow_comm_size(comm) > 1)
        flow_comm_abort(comm, rc, NULL);
    flow_comm_free(comm);
    return rc;
}

/* Rows [*r0, *r1) of rank `rank` of `size`. */
static void share_rows(const cli_share *s, size_t rank, size_t size,
                       size_t *r0, size_t *r1)
{
    size_t lo = rank * s->nb / size, hi = (rank + 1) * s->nb / size;
    *r0 = lo * s->batch;
    *r1 = hi * s->batch < s->n ? hi * s->batch : s->n;
}

void cli_share_init(cli_share *s, flow_comm *comm, size_t n, size_t batch)
{
    s->comm = comm;
    s->n = n;
    s->batch = batch < n ? batch : n ? n : 1;
    s->nb = (n + s->batch - 1) / s->batch;
    share_rows(s, (size_t)flow_comm_rank(comm), (size_t)flow_comm_size(comm),
               &s->r0, &s->r1);
}

/* The stream of a model's random draws (stochastic layers that estimate
 * in evaluation, such as an `ode` with hutchinson(in_eval = true)) for
 * block k: seeded from the model's stream as loaded and k, so that a
 * block's draws do not depend on which rank runs it nor on the blocks
 * before it.  *h: 0 before the first block. */
static void block_stream(flow_model *m, uint64_t *h, size_t k)
{
    if (!*h) {
        uint64_t w[6];
        flow_rng r;
        flow_model_get_rng(m, w);
        memcpy(r.s, w, sizeof r.s);
        *h = rng_u64(&r) | 1;
    }
    flow_model_seed(m, *h ^ (uint64_t)k);
}

int cli_share_run(const cli_share *s, cli_loaded *l, const char *cmd,
                  flow_data *d, int what, flow_real *out)
{
    size_t dim = flow_model_dim(l->model), w = what == 0 ? 1 : dim;
    size_t k = flow_model_context_dim(l->model);
    uint64_t h = 0;
    for (size_t r = s->r0; r < s->r1; r += s->batch) {
        size_t b = s->r1 - r < s->batch ? s->r1 - r : s->batch;
        const flow_real *c = flow_data_context(d);
        block_stream(l->model, &h, r / s->batch);
        if (run_rows(l->model, what, b, flow_data_values(d) + r * dim,
                     c ? c + r * k : NULL, out + (r - s->r0) * w) != FLOW_OK)
            return cli_fail_located(l->ctx, cmd, l->model, d, what, r,
                                    s->batch);
    }
    return 0;
}

int cli_share_gather(const cli_share *s, flow_ctx *ctx, const char *cmd,
                     int failed, const void *mine, void *all, size_t w,
                     size_t size)
{
    size_t nr = (size_t)flow_comm_size(s->comm);
    int rank = flow_comm_rank(s->comm), rc;
    double bad = failed ? rank + 1 : 0;        /* the last failed rank */
    size_t *counts;
    if (flow_comm_allreduce(s->comm, &bad, 1, FLOW_COMM_MAX) != FLOW_OK)
        return cli_fail(ctx, cmd);
    if (bad != 0) {
        if (rank == 0 && !failed)
            fprintf(stderr, "%s: rank %.0f of %zu failed on its rows (its "
                    "message above names the row)\n", cmd, bad - 1, nr);
        return 1;
    }
    if (!(counts = malloc(nr * sizeof *counts))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    for (size_t r = 0; r < nr; r++) {
        size_t r0, r1;
        share_rows(s, r, nr, &r0, &r1);
        counts[r] = (r1 - r0) * w;
    }
    rc = flow_comm_gather(s->comm, mine, all, counts, size);
    free(counts);
    return rc == FLOW_OK ? 0 : cli_fail(ctx, cmd);
}

/* ------------------------------------------------------------ eval & co */

int cli_parse_run(int argc, char **argv, const char *cmd, cli_run_opts *o,
                  void (*usage)(FILE *), int mode)
{
    int sampling = mode == 1, needs_data = mode == 0 || mode == 3;
    int eval = mode == 3;
    cli_args a = {argc, 1, argv, cmd, NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    o->batch = 4096;
    o->threads = 0;            /* cli_default_threads */
    o->header = 1;
    o->out = "-";
    o->temperature = 1;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->ckpt)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->ckpt = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            usage(stdout);
            return -1;
        } else if (needs_data && cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (needs_data && cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (needs_data && cli_opt_is(&a, "--context"))
            rc = (o->context = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (sampling && cli_opt_is(&a, "--context"))
            rc = (o->ctxfile = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--format"))
            rc = parse_format(&a, &o->format);
        else if (cli_opt_is(&a, "--no-header"))
            o->header = (rc = cli_flag(&a)) != 0;
        else if (cli_opt_is(&a, "--batch"))
            rc = cli_parse_size(&a, &o->batch, 1);
        else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_range(&a, &o->threads, 1, CLI_MAX_THREADS);
        else if (cli_opt_is(&a, "--precision"))
            rc = cli_parse_precision(&a, &o->precision);
        else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else if (sampling && cli_opt_is(&a, "-n")) {
            rc = cli_parse_size(&a, &o->n, 1);
            o->has_n = 1;
        } else if ((sampling || eval) && cli_opt_is(&a, "--seed"))
            rc = cli_parse_u64(&a, &o->seed);
        else if (sampling && cli_opt_is(&a, "--with-logprob"))
            o->with_logprob = !(rc = cli_flag(&a));
        else if (sampling && cli_opt_is(&a, "--weights"))
            o->weights = !(rc = cli_flag(&a));
        else if (eval && cli_opt_is(&a, "--noise"))
            rc = cli_parse_size(&a, &o->noise, 1);
        else if (needs_data && cli_opt_is(&a, "--allow-nonfinite"))
            o->allow_nonfinite = !(rc = cli_flag(&a));
        else if (sampling && cli_opt_is(&a, "--target"))
            rc = (o->target = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (sampling && cli_opt_is(&a, "--shape"))
            rc = parse_shape(&a, o->shape, &o->shape_rank);
        else if (sampling && cli_opt_is(&a, "--temperature")) {
            rc = cli_parse_real(&a, &o->temperature, -HUGE_VAL, HUGE_VAL);
            if (!rc && !(o->temperature > 0 && isfinite(o->temperature)))
                rc = cli_usage_error(&a, "--temperature must be a finite "
                                     "number greater than 0 (it scales the "
                                     "base's standard deviation), got %g",
                                     o->temperature);
        } else if (sampling && cli_opt_is(&a, "--range")) {
            rc = parse_pixel_range(&a, &o->range_lo, &o->range_hi);
            o->has_range = 1;
        }
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if ((rc = cli_default_threads(a.cmd, &o->threads)) != 0)
        return rc;
    if (!o->ckpt)
        return cli_usage_error(&a, "missing CKPT");
    if (needs_data && !o->data)
        return cli_usage_error(&a, "missing --data FILE");
    if (sampling && !o->has_n)
        return cli_usage_error(&a, "missing -n N");
    if (o->weights && o->temperature != 1)
        return cli_usage_error(&a, "--weights needs the model's own samples "
                               "(--temperature 1): a tempered sampler is not "
                               "the density the weights divide by");
    if (o->target && !o->weights)
        return cli_usage_error(&a, "--target only goes with --weights");
    return 0;
}

/* The number of levels of a `dequantize` layer that the data enters first
 * (docs/language.md, "Dequantization"), 0 when the model has none. */
static double dequant_levels(const flow_graph *g)
{
    const flow_graph_node *nd;
    if (!flow_graph_node_count(g))
        return 0;
    nd = flow_graph_node_get(g, 0);
    if (nd->kind != FLOW_NODE_LAYER || strcmp(nd->type->name, "dequantize"))
        return 0;
    for (size_t i = 0; i < nd->n_attrs && nd->type->attrs[i].name; i++)
        if (!strcmp(nd->type->attrs[i].name, "levels"))
            return (double)nd->attrs[i].i;
    return 0;
}

/* 1 when some layer's evaluation-mode log-det is an estimate (an `ode`
 * with hutchinson(in_eval = true), a residual layer's series): the
 * figures are then unbiased estimates, not exact values. */
static int logdet_estimated(const flow_graph *g)
{
    for (size_t i = 0; i < flow_graph_node_count(g); i++) {
        const flow_graph_node *nd = flow_graph_node_get(g, i);
        if (nd->kind == FLOW_NODE_LAYER && nd->desc
            && !nd->desc->logdet_exact)
            return 1;
    }
    return 0;
}

/* eval --noise K: the dequantization bound E_u log p_pix(x + u) <= log
 * P(x) (Theis et al. 2016, sec. 3.1) as RealNVP and Glow evaluate it,
 * with K draws u ~ U[0, 1)^D per row, where the evaluation-mode layer
 * sits at the midpoint u = 1/2: it maps its input x' to (x' + 1/2) / L,
 * so x' = x + u - 1/2 gives it (x + u) / L.  Into acc, for this rank's
 * rows, the mean of each row's K log-densities.  Row i's K x D uniforms
 * come from a stream of its own, seeded from --seed and i, so they do
 * not depend on the rank that runs the row nor on --batch.  0, or 1
 * after printing why. */
static int eval_noisy(cli_loaded *l, const cli_share *s, flow_data *d,
                      const cli_run_opts *o, const char *cmd, double *acc)
{
    size_t dim = flow_model_dim(l->model);
    size_t k = flow_model_context_dim(l->model);
    flow_real *xb = malloc(s->batch * dim * sizeof *xb);
    flow_real *lp = malloc(s->batch * sizeof *lp);
    flow_rng *rows = malloc(s->batch * sizeof *rows), seeds;
    uint64_t h = 0, hs;
    int rc = 0;
    if (!xb || !lp || !rows) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        rc = 1;
        goto out;
    }
    rng_seed(&seeds, o->seed);
    hs = rng_u64(&seeds);
    for (size_t r = s->r0; r < s->r1 && rc == 0; r += s->batch) {
        size_t b = s->r1 - r < s->batch ? s->r1 - r : s->batch;
        const flow_real *x = flow_data_values(d) + r * dim;
        const flow_real *c = flow_data_context(d);
        block_stream(l->model, &h, r / s->batch);
        for (size_t i = 0; i < b; i++) {
            rng_seed(&rows[i], hs ^ (uint64_t)(r + i));
            acc[r - s->r0 + i] = 0;
        }
        for (size_t draw = 0; draw < o->noise && rc == 0; draw++) {
            for (size_t i = 0; i < b; i++)
                for (size_t j = 0; j < dim; j++)
                    xb[i * dim + j] = (flow_real)((double)x[i * dim + j]
                                                  + rng_uniform(&rows[i])
                                                  - 0.5);
            if (flow_model_log_prob(l->model, b, xb, c ? c + r * k : NULL,
                                    lp) != FLOW_OK) {
                rc = cli_fail_located(l->ctx, cmd, l->model, d, 0, r,
                                      s->batch);
                break;
            }
            for (size_t i = 0; i < b; i++)
                acc[r - s->r0 + i] += (double)lp[i] / (double)o->noise;
        }
    }
out:
    free(xb);
    free(lp);
    free(rows);
    return rc;
}

/* Mean and standard error of n log-densities with flow_model_evaluate's
 * arithmetic (runtime/train.c): one sum and one sum of squares in double
 * in row order, var = (s2 - n mu^2) / (n - 1), s.e. sqrt(var / n); the
 * figure one process has always printed. */
static void lp_moments(size_t n, const flow_real *lp, double *mean,
                       double *se)
{
    double s = 0, s2 = 0, mu, var;
    for (size_t i = 0; i < n; i++) {
        s += lp[i];
        s2 += (double)lp[i] * lp[i];
    }
    mu = s / (double)n;
    var = n > 1 ? (s2 - (double)n * mu * mu) / (double)(n - 1) : 0;
    *mean = mu;
    *se = var > 0 ? sqrt(var / (double)n) : 0;
}

/* The same of the per-row means of eval --noise, in two passes. */
static void acc_moments(size_t n, const double *acc, double *mean,
                        double *se)
{
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        s += acc[i];
    *mean = s / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (acc[i] - *mean) * (acc[i] - *mean);
    *se = n > 1 ? sqrt(ss / (double)(n - 1) / (double)n) : 0;
}

static void eval_usage(FILE *f)
{
    fputs("usage: flowkit eval CKPT --data FILE [--columns L] [--context L]\n"
          "                    [--batch B] [--allow-nonfinite] [--json]\n"
          "                    [--noise K [--seed S]]\n"
          "                    [--precision fp32|bf16-gemm]\n\n"
          "Mean log-likelihood (nats per sample) with its standard error, and\n"
          "bits per dimension, of the rows of FILE under the model.  A row\n"
          "whose log-density is not finite is an error naming its line;\n"
          "--allow-nonfinite reports the non-finite mean instead (null in\n"
          "JSON).  When the model starts with `dequantize`, the bits/dim are\n"
          "those of the discrete data (through the dequantization bound),\n"
          "and those of the density on the [0, 1] scale follow: by default\n"
          "at each pixel bin's midpoint (u = 1/2, deterministic); with\n"
          "--noise K, the dequantization bound E_u log p(x + u) that RealNVP\n"
          "and Glow report, averaged over K draws u ~ U[0, 1)^D per row\n"
          "(seeded by --seed S, default 0, and the row's number).\n\n"
          "Under mpirun (mpirun -np N flowkit eval ...) each rank evaluates\n"
          "whole blocks of --batch rows and rank 0 prints the same bytes as\n"
          "one process (docs/distributed.md).\n", f);
}

int cli_cmd_eval(int argc, char **argv)
{
    const char *cmd = "flowkit eval";
    cli_run_opts o;
    cli_loaded l;
    cli_share s;
    flow_comm *comm = NULL;
    flow_data *d = NULL;
    void *mine = NULL, *all = NULL;
    double mean, se, bpd, levels;
    size_t dim, n, esz;
    int rc, rank, failed;
    if ((rc = cli_parse_run(argc, argv, cmd, &o, eval_usage, 3)) != 0)
        return rc < 0 ? 0 : rc;
    if ((rc = cli_check_output(cmd, NULL, (const char *[]){o.ckpt, o.data},
                               2)) != 0)
        return rc;
    if (cli_load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    if ((rc = cli_set_precision(cmd, l.ctx, l.model, o.precision)) != 0
        || (rc = cli_comm_open(&l, cmd, o.data, &comm)) != 0)
        goto out;
    rc = 1;
    rank = flow_comm_rank(comm);
    dim = flow_model_dim(l.model);
    levels = dequant_levels(flow_compile_graph(l.comp));
    if (!(d = cli_read_model_data(&l, cmd, o.data, o.columns, o.context,
                                  1))
        || cli_check_bounds(cmd, flow_compile_graph(l.comp), d))
        goto out;
    if (o.noise && levels <= 0) {
        fprintf(stderr, "%s: --noise draws the dequantization noise of a "
                "model whose first layer is `dequantize`; this model's is "
                "not\n", cmd);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    /* each rank its blocks' log-densities (or, with --noise, their
     * per-row means), gathered on rank 0 in row order */
    n = flow_data_rows(d);
    cli_share_init(&s, comm, n, o.batch);
    esz = o.noise ? sizeof(double) : sizeof(flow_real);
    if (rank == 0)
        mine = all = malloc(n * esz);
    else
        mine = malloc((s.r1 > s.r0 ? s.r1 - s.r0 : 1) * esz);
    if (!mine) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        failed = 1;
    } else
        failed = o.noise ? eval_noisy(&l, &s, d, &o, cmd, mine)
                         : cli_share_run(&s, &l, cmd, d, 0, mine);
    if (cli_share_gather(&s, l.ctx, cmd, failed, mine, all, 1, esz) != 0)
        goto out;
    if (rank != 0) {            /* rank 0 speaks for the run */
        rc = 0;
        goto out;
    }
    if (o.noise)
        acc_moments(n, all, &mean, &se);
    else
        lp_moments(n, all, &mean, &se);
    for (size_t i = 0; i < n && !isfinite(mean) && !o.allow_nonfinite; i++) {
        double v = o.noise ? ((double *)all)[i] : ((flow_real *)all)[i];
        if (!isfinite(v)) {
            cli_nonfinite_row(cmd, d, i, o.noise ? "the mean log-density "
                              "of the --noise draws" : "the log-density", v,
                              ALLOW_HINT);
            goto out;
        }
    }
    if (!isfinite(mean))
        se = NAN;              /* no spread around a non-finite mean */
    /* bits/dim of the negative log-likelihood: -mean / (D ln 2).  With a
     * leading dequantize(levels = L), mean already holds its log-det
     * -D log L: it is log p_cont(y) - D log L, p_cont the density of
     * y = (x + 1/2) / L in [0, 1]^D, and bpd is the discrete figure
     * (-log p_cont(y) + D log L) / (D ln 2) of Theis et al. 2016, sec.
     * 3.1, and Ho et al. 2019, sec. 3.1; the [0, 1]-scale one is
     * -log p_cont(y) / (D ln 2) = bpd - log2 L. */
    bpd = -mean / ((double)dim * log(2.0));
    if (o.json) {
        printf("{\"rows\": %zu, \"loglik\": ", n);
        cli_json_num(stdout, mean, 9);
        printf(", \"stderr\": ");
        cli_json_num(stdout, se, 9);
        printf(", \"bits_per_dim\": ");
        cli_json_num(stdout, bpd, 9);
        if (levels > 0) {
            printf(", \"scale\": \"discrete\", \"levels\": %.0f, "
                   "\"dequantization\": \"%s\", \"noise_draws\": %zu, "
                   "\"loglik_unit\": ", levels,
                   o.noise ? "bound" : "midpoint", o.noise);
            cli_json_num(stdout, mean + (double)dim * log(levels), 9);
            printf(", \"bits_per_dim_unit\": ");
            cli_json_num(stdout, bpd - log2(levels), 9);
        }
        printf(", \"logdet\": \"%s\"}\n",
               logdet_estimated(flow_compile_graph(l.comp)) ? "estimated"
                                                            : "exact");
    } else if (levels > 0)
        printf("log-likelihood %.6f +- %.6f nats per sample (n = %zu); "
               "%.6f bits/dim (discrete, %.0f levels, %s); %.6f bits/dim "
               "on the [0, 1] scale\n", mean, se, n, bpd,
               levels, o.noise ? "dequantization bound" : "bin midpoints",
               bpd - log2(levels));
    else
        printf("log-likelihood %.6f +- %.6f nats per sample (n = %zu); "
               "%.6f bits/dim\n", mean, se, n, bpd);
    rc = 0;
out:
    free(mine);
    flow_data_free(d);
    rc = cli_comm_end(comm, rc);
    cli_loaded_free(&l);
    return rc;
}

int cli_write_rows(flow_ctx *ctx, const char *cmd, const cli_run_opts *o,
                   size_t n, size_t w, const char *prefix,
                   const flow_real *rows, const flow_real *lp,
                   size_t cw, const flow_real *cv,
                   const flow_data *cnames, const flow_real *wt)
{
    size_t k = cw + (lp != NULL) + (wt != NULL), nn = w + k;
    flow_data *out = flow_data_new(ctx, n, w, k);
    char **names = calloc(nn ? nn : 1, sizeof *names);
    int rc = FLOW_ERR_NOMEM;
    if (!out || !names)
        goto done;
    for (size_t j = 0; j < nn; j++) {
        const char *cn = j >= w && j < w + cw && cnames
                       ? flow_data_column_name(cnames, j - w) : NULL;
        if (j < w && o->xnames)
            cn = o->xnames[j];
        if (!(names[j] = malloc(32 + (cn ? strlen(cn) : 0))))
            goto done;
        if (j < w && o->xnames)
            strcpy(names[j], cn);
        else if (j < w)
            snprintf(names[j], 32, "%s%zu", prefix, j);
        else if (cn)
            strcpy(names[j], cn);
        else if (j < w + cw)
            snprintf(names[j], 32, "c%zu", j - w);
        else if (lp && j == w + cw)
            strcpy(names[j], "logprob");
        else
            strcpy(names[j], "weight");
    }
    if (w)
        memcpy(flow_data_values(out), rows, n * w * sizeof *rows);
    for (size_t r = 0; r < n; r++) {
        if (cw)
            memcpy(flow_data_context(out) + r * k, cv + r * cw,
                   cw * sizeof *cv);
        if (lp)
            flow_data_context(out)[r * k + cw] = lp[r];
        if (wt)
            flow_data_context(out)[r * k + k - 1] = wt[r];
    }
    flow_data_allow_nonfinite(out, o->allow_nonfinite);
    rc = flow_data_set_column_names(ctx, out, (const char *const *)names);
    if (rc == FLOW_OK && o->shape_rank)
        rc = flow_data_set_shape(ctx, out, o->shape, o->shape_rank);
    if (rc == FLOW_OK && o->has_range)
        rc = flow_data_set_pixel_range(ctx, out, o->range_lo, o->range_hi);
    if (rc == FLOW_OK)
        rc = flow_data_write(ctx, out, o->out, o->format, o->header);
done:
    for (size_t j = 0; names && j < nn; j++)
        free(names[j]);
    free(names);
    flow_data_free(out);
    if (rc == FLOW_ERR_NOMEM && !*flow_errmsg(ctx))
        flow_ctx_error(ctx, rc, "out of memory");
    return rc == FLOW_OK ? 0 : cli_fail(ctx, cmd);
}

static void logprob_usage(FILE *f)
{
    fputs("usage: flowkit logprob CKPT --data FILE [-o OUT] "
          "[--format csv|npy]\n"
          "                       [--columns L] [--context L] [--no-header]\n"
          "                       [--allow-nonfinite]"
          " [--precision fp32|bf16-gemm]\n\n"
          "One log-density (nats) per input row, in input order.  A row\n"
          "whose log-density is not finite is an error naming its line,\n"
          "found before anything is written; --allow-nonfinite writes it.\n"
          "Under mpirun each rank computes whole blocks of --batch rows and\n"
          "rank 0 alone writes them, in input order: the same bytes as one\n"
          "process (docs/distributed.md).\n", f);
}

/* logprob, encode (dir 0) and decode (dir 1) share the data loop. */
static int map_rows(int argc, char **argv, const char *cmd,
                    void (*usage)(FILE *), int what)
{
    cli_run_opts o;
    cli_loaded l;
    cli_share s;
    flow_comm *comm = NULL;
    flow_data *d = NULL;
    flow_real *res = NULL, *mine = NULL;
    size_t n, dim, w;
    int rc, rank, failed;
    if ((rc = cli_parse_run(argc, argv, cmd, &o, usage, 0)) != 0)
        return rc < 0 ? 0 : rc;
    if ((rc = cli_check_output(cmd, o.out, (const char *[]){o.ckpt, o.data},
                               2)) != 0)
        return rc;
    if (cli_load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    if ((rc = cli_set_precision(cmd, l.ctx, l.model, o.precision)) != 0
        || (rc = cli_comm_open(&l, cmd, o.data, &comm)) != 0)
        goto out;
    rc = 1;
    rank = flow_comm_rank(comm);
    dim = flow_model_dim(l.model);
    /* decode reads latents: by position, never by the data's names */
    if (!(d = cli_read_model_data(&l, cmd, o.data, o.columns, o.context,
                                  what != 2))
        || (what != 2
            && cli_check_bounds(cmd, flow_compile_graph(l.comp), d)))
        goto out;
    if (what == 2)
        o.xnames = l.columns;
    n = flow_data_rows(d);
    w = what == 0 ? 1 : dim;
    cli_share_init(&s, comm, n, o.batch);
    /* rank 0 computes its rows in place, at the front of the result */
    if (rank == 0)
        mine = res = malloc(n * w * sizeof *res);
    else
        mine = malloc((s.r1 > s.r0 ? s.r1 - s.r0 : 1) * w * sizeof *mine);
    if (!mine) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        failed = 1;
    } else
        failed = cli_share_run(&s, &l, cmd, d, what, mine);
    if (cli_share_gather(&s, l.ctx, cmd, failed, mine, res, w, sizeof *res)
        != 0)
        goto out;
    if (rank != 0) {            /* rank 0 writes for the run */
        rc = 0;
        goto out;
    }
    /* checked before anything is written, so that a failure leaves no
     * partial output, on standard output neither */
    for (size_t i = 0; i < n * w && !o.allow_nonfinite; i++)
        if (!isfinite(res[i])) {
            char col[48];
            if (what == 0)
                snprintf(col, sizeof col, "the log-density");
            else
                snprintf(col, sizeof col, "%s%zu", what == 1 ? "z" : "x",
                         i % w);
            rc = cli_nonfinite_row(cmd, d, i / w, col, res[i], ALLOW_HINT);
            goto out;
        }
    rc = what == 0
       ? cli_write_rows(l.ctx, cmd, &o, n, 0, "", NULL, res, 0, NULL, NULL,
                        NULL)
       : cli_write_rows(l.ctx, cmd, &o, n, dim, what == 1 ? "z" : "x", res,
                        NULL, 0, NULL, NULL, NULL);
out:
    free(mine);
    flow_data_free(d);
    rc = cli_comm_end(comm, rc);
    cli_loaded_free(&l);
    return rc;
}

int cli_cmd_logprob(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit logprob", logprob_usage, 0);
}

static void encode_usage(FILE *f)
{
    fputs("usage: flowkit encode CKPT --data FILE [-o OUT] "
          "[--format csv|npy]\n\n"
          "Maps data x to latents z (the density direction).  With exits, z\n"
          "holds the exits' dimensions first, then the final output.  Under\n"
          "mpirun the ranks split the rows and rank 0 writes them, in input\n"
          "order.\n", f);
}

int cli_cmd_encode(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit encode", encode_usage, 1);
}

static void decode_usage(FILE *f)
{
    fputs("usage: flowkit decode CKPT --data FILE [-o OUT] "
          "[--format csv|npy]\n\n"
          "Maps latents z back to data x (the sampling direction); "
          "the inverse\n"
          "of encode.  Under mpirun the ranks split the rows and rank 0\n"
          "writes them, in input order.\n", f);
}

int cli_cmd_decode(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit decode", decode_usage, 2);
}
