/* cli_uq.c - model comparison and uncertainty quantification:
 *
 *   flowkit compare CKPT... --data FILE   paired comparison of the models'
 *                                         log-likelihoods on the same rows
 *   flowkit hdr CKPT [--data FILE]        highest-density regions estimated
 *                                         from the model's own samples, and
 *                                         each row's density quantile
 *
 * The estimators and their errors are derived in docs/uq.md.  Exit codes:
 * 0 success, 1 error (checkpoint, data, numerics), 2 usage. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ------------------------------------------------------------ helpers */

/* Standard normal upper tail 1 - Phi(z) = erfc(z / sqrt 2) / 2 (erfc
 * keeps its relative accuracy far into the tail, where 1 - Phi would
 * cancel). */
static double normal_upper(double z)
{
    return 0.5 * erfc(z / sqrt(2.0));
}

/* Mean and sample standard deviation (divisor n - 1) of x[0..n-1] in
 * double: the corrected two-pass algorithm of Chan, Golub & LeVeque
 * (1983), "Algorithms for computing the sample variance", Am. Stat.
 * 37(3): sum (x - mean)^2 - (sum (x - mean))^2 / n, whose second term
 * removes the error of the computed mean. */
static void mean_sd(const double *x, size_t n, double *mean, double *sd)
{
    double s = 0, ss = 0, c = 0, mu;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    mu = s / (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - mu;
        ss += d * d;
        c += d;
    }
    *mean = mu;
    ss -= c * c / (double)n;
    *sd = n > 1 && ss > 0 ? sqrt(ss / (double)(n - 1)) : 0;
}

/* A value in the open interval (0, 1); 0, or CLI_EXIT_USAGE after saying
 * why. */
static int parse_open_unit(cli_args *a, double *out)
{
    const char *v = cli_opt_value(a);
    char *end;
    double x;
    if (!v)
        return CLI_EXIT_USAGE;
    x = strtod(v, &end);
    if (end == v || *end || !(x > 0 && x < 1))
        return cli_usage_error(a, "%s: '%s' is not a number strictly "
                               "between 0 and 1", a->opt, v);
    *out = x;
    return 0;
}

/* Log-densities of the n rows of d under l->model, in batches, into lp.
 * 0, or 1 after printing why. */
static int rows_log_prob(cli_loaded *l, const char *cmd, flow_data *d,
                         size_t batch, double *lp)
{
    size_t n = flow_data_rows(d), dim = flow_model_dim(l->model);
    size_t k = flow_model_context_dim(l->model);
    flow_real *buf = malloc((n < batch ? n : batch) * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    for (size_t r = 0; r < n; r += batch) {
        size_t b = n - r < batch ? n - r : batch;
        const flow_real *c = flow_data_context(d);
        if (flow_model_log_prob(l->model, b, flow_data_values(d) + r * dim,
                                c ? c + r * k : NULL, buf) != FLOW_OK) {
            free(buf);
            return cli_fail_located(l->ctx, cmd, l->model, d, 0, r, batch);
        }
        for (size_t i = 0; i < b; i++)
            lp[r + i] = buf[i];
    }
    free(buf);
    return 0;
}

/* ------------------------------------------------------------ compare */

static void compare_usage(FILE *f)
{
    fputs("usage: flowkit compare CKPT CKPT... --data FILE [--columns L]\n"
          "                       [--context L] [--batch B] [--threads T]\n"
          "                       [--json]\n"
          "\n"
          "Compares models on the same rows: each model's mean test\n"
          "log-likelihood (nats per row) with its standard error, ranked, and\n"
          "for each model against the best the paired mean difference of the\n"
          "per-row log-densities, its standard error sd(d)/sqrt(n), z and the\n"
          "one-sided confidence Phi(z) that the best is better (normal\n"
          "approximation; docs/uq.md).  Every model must have the data's\n"
          "dimension and context width; a row whose log-density is not finite\n"
          "under some model is an error.  Under mpirun (mpirun -np N flowkit\n"
          "compare ...) each rank scores whole blocks of --batch rows and rank\n"
          "0 prints the same bytes as one process (docs/distributed.md).\n"
          "\n"
          "  --data FILE      test rows (CSV or .npy; - for stdin)\n"
          "  --columns L      data columns by name or 0-based index\n"
          "  --context L      context columns (conditional models)\n"
          "  --batch B        rows per pass (default 4096)\n"
          "  --threads T      worker threads per model (default: "
          "FLOWKIT_THREADS,\n"
          "                   else the CPUs)\n"
          "  --json           one JSON object on standard output\n", f);
}

typedef struct cmp_opts {
    const char **ckpts;
    size_t n_ckpts;
    const char *data, *columns, *context;
    size_t batch, threads;
    int json;
} cmp_opts;

static int parse_compare(int argc, char **argv, cmp_opts *o)
{
    cli_args a = {argc, 1, argv, "flowkit compare", NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    o->batch = 4096;
    o->threads = 0;            /* cli_default_threads */
    if (!(o->ckpts = calloc((size_t)argc, sizeof *o->ckpts))) {
        fputs("flowkit compare: out of memory\n", stderr);
        return 1;
    }
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0)
            o->ckpts[o->n_ckpts++] = pos;
        else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            compare_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--context"))
            rc = (o->context = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--batch"))
            rc = cli_parse_size(&a, &o->batch, 1);
        else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_range(&a, &o->threads, 1, CLI_MAX_THREADS);
        else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if ((rc = cli_default_threads(a.cmd, &o->threads)) != 0)
        return rc;
    if (o->n_ckpts < 2)
        return cli_usage_error(&a, "give at least two checkpoints (%s)",
                               o->n_ckpts ? "one given" : "none given");
    if (!o->data)
        return cli_usage_error(&a, "missing --data FILE");
    return 0;
}

/* One model's row in the ranked table. */
typedef struct cmp_row {
    size_t model;               /* index into the checkpoints */
    double mean, se;            /* mean log p and sd / sqrt(n) */
    double diff, diff_se;       /* mean(lp_model - lp_best), its s.e. */
    double unpaired_se;         /* sqrt(se^2 + se_best^2), for contrast */
    double z, p;                /* z = -diff / diff_se; p = 1 - Phi(z) */
} cmp_row;

/* The paired comparison of model j with the best b over n rows
 * (docs/uq.md): d_r = lp_j(x_r) - lp_b(x_r); mean(d), s.e. sd(d)/sqrt(n)
 * (the per-row differences are i.i.d. across rows: the rows are, and
 * both models see the same rows); z = -mean(d)/se, one-sided p-value
 * 1 - Phi(z) for H0: the best is not better (normal approximation, the
 * central limit theorem for mean(d)). */
static void paired(const double *lpj, const double *lpb, size_t n, double *d,
                   cmp_row *row)
{
    double sd;
    for (size_t r = 0; r < n; r++)
        d[r] = lpj[r] - lpb[r];
    mean_sd(d, n, &row->diff, &sd);
    row->diff_se = sd / sqrt((double)n);
    if (row->diff_se > 0)
        row->z = -row->diff / row->diff_se;
    else
        row->z = row->diff < 0 ? INFINITY : 0;   /* constant difference */
    row->p = normal_upper(row->z);
}

static void print_compare_text(const cmp_opts *o, const cmp_row *rows,
                               size_t n)
{
    int w = 5;
    for (size_t i = 0; i < o->n_ckpts; i++)
        if ((int)strlen(o->ckpts[i]) > w)
            w = (int)strlen(o->ckpts[i]);
    printf("%zu models on %zu rows of %s (log-likelihood in nats per row)\n"
           "\n", o->n_ckpts, n, o->data);
    printf("rank  %-*s  %12s %10s  %12s %11s %8s  %s\n", w, "model",
           "loglik", "s.e.", "diff", "s.e.(diff)", "z", "confidence");
    for (size_t i = 0; i < o->n_ckpts; i++) {
        const cmp_row *r = &rows[i];
        printf("%-4zu  %-*s  %12.6f %10.6f", i + 1, w, o->ckpts[r->model],
               r->mean, r->se);
        if (i == 0)
            printf("  %12s\n", "best");
        else
            printf("  %12.6f %11.6f %8.2f  %s%.4f\n", r->diff, r->diff_se,
                   r->z, r->p < 5e-5 ? ">" : "",
                   r->p < 5e-5 ? 0.9999 : 1 - r->p);
    }
    putchar('\n');
    for (size_t i = 1; i < o->n_ckpts; i++) {
        const cmp_row *r = &rows[i];
        const char *best = o->ckpts[rows[0].model];
        const char *other = o->ckpts[r->model];
        if (r->diff == 0 && r->diff_se == 0) {
            printf("%s and %s give the same log-density on every row\n",
                   best, other);
            continue;
        }
        printf("%s is better than %s by %.6f +- %.6f nats per row "
               "(paired; unpaired s.e. would be %.6f): z = %.2f, ",
               best, other, -r->diff, r->diff_se, r->unpaired_se, r->z);
        if (r->p < 1e-4)
            printf("confidence > 0.9999 (p = %.2g)", r->p);
        else
            printf("confidence %.4f (p = %.4f)", 1 - r->p, r->p);
        printf("%s\n", r->p < 0.05 ? "" : "; not significant at the 5% "
               "level");
    }
    if (n < 30)
        printf("note: n = %zu rows is small; the normal approximation "
               "behind z and the confidence is rough (docs/uq.md)\n", n);
}

static void print_compare_json(const cmp_opts *o, const cmp_row *rows,
                               size_t n)
{
    printf("{\"data\": ");
    flow_json_string(stdout, o->data);
    printf(", \"rows\": %zu, \"best\": ", n);
    flow_json_string(stdout, o->ckpts[rows[0].model]);
    printf(", \"models\": [");
    for (size_t i = 0; i < o->n_ckpts; i++) {
        const cmp_row *r = &rows[i];
        printf("%s{\"rank\": %zu, \"checkpoint\": ", i ? ", " : "", i + 1);
        flow_json_string(stdout, o->ckpts[r->model]);
        printf(", \"loglik\": %.9g, \"stderr\": %.9g, \"diff\": %.9g, "
               "\"diff_stderr\": %.9g, \"unpaired_stderr\": %.9g, \"z\": ",
               r->mean, r->se, r->diff, r->diff_se, r->unpaired_se);
        if (i == 0)
            printf("null, \"p_value\": null, \"confidence\": null}");
        else {
            cli_json_num(stdout, r->z, 9);
            printf(", \"p_value\": %.9g, \"confidence\": %.9g}", r->p,
                   1 - r->p);
        }
    }
    printf("]}\n");
}

int cli_cmd_compare(int argc, char **argv)
{
    const char *cmd = "flowkit compare";
    cmp_opts o;
    cli_loaded *ls = NULL;
    cli_share s;
    flow_comm *comm = NULL;
    flow_data *d = NULL;
    flow_real *all = NULL, *mine = NULL;
    double *lp = NULL, *tmp = NULL;
    cmp_row *rows = NULL;
    size_t m, n = 0, dim = 0, cdim = 0;
    int rc, rank = 0;

    if ((rc = parse_compare(argc, argv, &o)) != 0) {
        free(o.ckpts);
        return rc < 0 ? 0 : rc;
    }
    rc = 1;
    m = o.n_ckpts;
    if (!(ls = calloc(m, sizeof *ls)) || !(rows = calloc(m, sizeof *rows))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto out;
    }
    /* one model at a time: load, check its shape, score every row (under
     * mpirun each rank its blocks, gathered on rank 0 in row order) */
    for (size_t j = 0; j < m; j++) {
        int failed;
        if (cli_load_checkpoint(&ls[j], cmd, o.ckpts[j], o.threads) != 0)
            goto out;
        if (j == 0) {
            if ((rc = cli_comm_open(&ls[0], cmd, o.data, &comm)) != 0)
                goto out;
            rc = 1;
            rank = flow_comm_rank(comm);
            dim = flow_model_dim(ls[0].model);
            cdim = flow_model_context_dim(ls[0].model);
            if (!(d = cli_read_model_data(&ls[0], cmd, o.data, o.columns,
                                          o.context, 1)))
                goto out;
            n = flow_data_rows(d);
            if (n < 2) {
                fprintf(stderr, "%s: %s: one row; a standard error needs at "
                        "least two\n", cmd, o.data);
                goto out;
            }
            cli_share_init(&s, comm, n, o.batch);
            if (rank == 0
                ? !(lp = malloc(m * n * sizeof *lp))
                  || !(tmp = malloc(n * sizeof *tmp))
                  || !(mine = all = malloc(n * sizeof *all))
                : !(mine = malloc((s.r1 - s.r0 + 1) * sizeof *mine))) {
                fprintf(stderr, "%s: out of memory\n", cmd);
                goto out;
            }
        } else if (flow_model_dim(ls[j].model) != dim
                   || flow_model_context_dim(ls[j].model) != cdim) {
            fprintf(stderr, "%s: %s: the model has dimension %zu and %zu "
                    "context column%s, but %s has %zu and %zu: models "
                    "compared on the same rows must agree\n", cmd,
                    o.ckpts[j], flow_model_dim(ls[j].model),
                    flow_model_context_dim(ls[j].model),
                    flow_model_context_dim(ls[j].model) == 1 ? "" : "s",
                    o.ckpts[0], dim, cdim);
            goto out;
        }
        if (cli_check_bounds(cmd, flow_compile_graph(ls[j].comp), d))
            goto out;
        failed = cli_share_run(&s, &ls[j], cmd, d, 0, mine);
        if (cli_share_gather(&s, ls[0].ctx, cmd, failed, mine, all, 1,
                             sizeof *all) != 0)
            goto out;
        for (size_t r = 0; rank == 0 && r < n; r++) {
            lp[j * n + r] = all[r];
            if (!isfinite(lp[j * n + r])) {
                char hint[600];
                snprintf(hint, sizeof hint, " %s; compare needs a finite "
                         "value on every row", o.ckpts[j]);
                cli_nonfinite_row(cmd, d, r, "the log-density", lp[j * n + r],
                                  hint);
                goto out;
            }
        }
        /* keep the first model's context (it owns the data) */
        if (j > 0)
            cli_loaded_free(&ls[j]);
    }
    rc = 0;
    if (rank != 0)              /* rank 0 speaks for the run */
        goto out;
    for (size_t j = 0; j < m; j++) {
        double sd;
        rows[j].model = j;
        mean_sd(lp + j * n, n, &rows[j].mean, &sd);
        rows[j].se = sd / sqrt((double)n);
    }
    /* rank by mean log-likelihood, ties in the order given (stable) */
    for (size_t i = 1; i < m; i++) {
        cmp_row t = rows[i];
        size_t j = i;
        for (; j > 0 && rows[j - 1].mean < t.mean; j--)
            rows[j] = rows[j - 1];
        rows[j] = t;
    }
    for (size_t i = 0; i < m; i++) {
        const double *lpb = lp + rows[0].model * n;
        paired(lp + rows[i].model * n, lpb, n, tmp, &rows[i]);
        rows[i].unpaired_se = sqrt(rows[i].se * rows[i].se
                                   + rows[0].se * rows[0].se);
    }
    if (o.json)
        print_compare_json(&o, rows, n);
    else
        print_compare_text(&o, rows, n);
out:
    flow_data_free(d);
    free(mine);
    for (size_t j = 1; ls && j < m; j++)
        cli_loaded_free(&ls[j]);
    /* the communicator reports to the first model's context */
    rc = cli_comm_end(comm, rc);
    if (ls)
        cli_loaded_free(&ls[0]);
    free(ls);
    free(rows);
    free(lp);
    free(tmp);
    free(o.ckpts);
    return rc;
}

/* ------------------------------------------------------------ hdr */

static void hdr_usage(FILE *f)
{
    fputs("usage: flowkit hdr CKPT [--mass M] [--samples N] [--seed S]\n"
          "                   [--level L] [--data FILE [--columns L]\n"
          "                   [--context L] [-o OUT] [--format csv|npy]\n"
          "                   [--no-header] [--allow-nonfinite]]\n"
          "                   [--max-contexts K] [--json]\n"
          "\n"
          "Estimates the highest-density region (HDR) holding mass M of the\n"
          "model, {x : log p(x) >= t}, from N samples of the model itself:\n"
          "t is the (1 - M) quantile of the samples' log-densities (Hyndman\n"
          "1996), with a distribution-free order-statistic interval at level\n"
          "L.  With --data, writes for each row its log-density, the\n"
          "threshold, whether it is inside (log p >= t) and its density\n"
          "quantile: the fraction of model samples with a log-density at most\n"
          "the row's (near 0: out of distribution).  A conditional model\n"
          "gets one region per distinct context of the data (docs/uq.md).\n"
          "\n"
          "  --mass M          mass of the region, in (0, 1) (default 0.95)\n"
          "  --samples N       model samples per region (default 100000)\n"
          "  --seed S          the samples' random stream (default 0)\n"
          "  --level L         confidence of the threshold's interval\n"
          "                    (default 0.95)\n"
          "  --data FILE       rows to score (CSV or .npy; - for stdin)\n"
          "  --columns L       data columns by name or 0-based index\n"
          "  --context L       context columns (conditional models)\n"
          "  -o, --output OUT  per-row results (default '-': stdout; the\n"
          "                    summary then goes to stderr); atomic\n"
          "  --format F        csv or npy (default: by OUT's name)\n"
          "  --no-header       CSV without the header row\n"
          "  --allow-nonfinite write a row whose log-density is -inf (as\n"
          "                    -inf, outside, quantile 0) instead of failing\n"
          "  --max-contexts K  refuse data with more distinct contexts than\n"
          "                    this (each costs N samples; default 100)\n"
          "  --batch B         rows per pass (default 4096)\n"
          "  --threads T       worker threads (default: FLOWKIT_THREADS, "
          "else the\n"
          "                    CPUs)\n"
          "  --json            the summary as one JSON object\n", f);
}

typedef struct hdr_opts {
    const char *ckpt, *data, *columns, *context, *out;
    double mass, level;
    size_t samples, batch, threads, max_contexts;
    uint64_t seed;
    flow_data_format format;
    int json, header;
    int allow_nonfinite;        /* write rows of log p = -inf as -inf */
} hdr_opts;

static int parse_hdr(int argc, char **argv, hdr_opts *o)
{
    cli_args a = {argc, 1, argv, "flowkit hdr", NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    o->mass = 0.95;
    o->level = 0.95;
    o->samples = 100000;
    o->batch = 4096;
    o->threads = 0;            /* cli_default_threads */
    o->max_contexts = 100;
    o->out = "-";
    o->header = 1;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->ckpt)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->ckpt = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            hdr_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--mass"))
            rc = parse_open_unit(&a, &o->mass);
        else if (cli_opt_is(&a, "--level"))
            rc = parse_open_unit(&a, &o->level);
        else if (cli_opt_is(&a, "--samples")) {
            rc = cli_parse_size(&a, &o->samples, 1);
            if (!rc && o->samples > 100000000)
                rc = cli_usage_error(&a, "--samples: at most 100000000");
        } else if (cli_opt_is(&a, "--seed"))
            rc = cli_parse_u64(&a, &o->seed);
        else if (cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--context"))
            rc = (o->context = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--format")) {
            const char *v = cli_opt_value(&a);
            if (!v)
                rc = CLI_EXIT_USAGE;
            else if (!strcmp(v, "csv"))
                o->format = FLOW_DATA_CSV;
            else if (!strcmp(v, "npy"))
                o->format = FLOW_DATA_NPY;
            else
                rc = cli_usage_error(&a, "--format: '%s' is not csv or npy",
                                     v);
        } else if (cli_opt_is(&a, "--no-header"))
            o->header = (rc = cli_flag(&a)) != 0;
        else if (cli_opt_is(&a, "--allow-nonfinite"))
            o->allow_nonfinite = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--max-contexts"))
            rc = cli_parse_size(&a, &o->max_contexts, 1);
        else if (cli_opt_is(&a, "--batch"))
            rc = cli_parse_size(&a, &o->batch, 1);
        else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_range(&a, &o->threads, 1, CLI_MAX_THREADS);
        else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if ((rc = cli_default_threads(a.cmd, &o->threads)) != 0)
        return rc;
    if (!o->ckpt)
        return cli_usage_error(&a, "missing CKPT");
    if (!o->data && (o->columns || o->context || strcmp(o->out, "-")))
        return cli_usage_error(&a, "--columns, --context and -o need "
                               "--data FILE");
    return 0;
}

/* The estimate for one region (one context). */
typedef struct hdr_region {
    const flow_real *context;   /* k values (in the data), NULL if none */
    size_t rows, outside, undecided;
    size_t k;                   /* threshold = k-th smallest sample */
    size_t lo_k, hi_k;          /* interval order statistics, 0 = -inf,
                                   N + 1 = +inf */
    double threshold, lo, hi, coverage;
    double mass_mean, mass_se;  /* mass of {log p >= threshold} */
} hdr_region;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Number of sorted s[0..n-1] that are <= v. */
static size_t count_le(const double *s, size_t n, double v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The threshold and its interval from the sorted log-densities s[0..N-1]
 * of N model samples (docs/uq.md).
 *
 * Threshold: the density quantile estimator of Hyndman (1996), "Computing
 * and graphing highest density regions", Am. Stat. 50(2), sec. 3.2: the
 * HDR of mass 1 - a is {x : p(x) >= f_a} with f_a the a-quantile of p(Y),
 * Y ~ p; its estimate is the k-th smallest of the samples' log-densities,
 * k = ceil(a N) (the inverse empirical distribution function).
 *
 * Interval: with F the distribution function of log p(Y) (continuous)
 * and xi its a-quantile, the number B of samples below xi is
 * Binomial(N, a), so P(L_(l) <= xi < L_(u)) = P(l <= B <= u - 1)
 * (the distribution-free confidence interval for a quantile; David &
 * Nagaraja, Order Statistics, 3rd ed. 2003, sec. 7.1).  l is the largest and u the smallest index with both binomial
 * tails at most (1 - level) / 2, from the exact binomial distribution;
 * the coverage reported is the exact P(l <= B <= u - 1) >= level.
 *
 * Mass: F(L_(k)) ~ Beta(k, N + 1 - k) (the probability integral
 * transform of an order statistic; David & Nagaraja sec. 2.2), so
 * the estimated region holds mass 1 - F(L_(k)) with mean
 * 1 - k/(N + 1) and s.d. sqrt(k (N + 1 - k) / ((N + 1)^2 (N + 2))). */
static void hdr_estimate(const double *s, size_t N, double mass,
                         double level, hdr_region *g)
{
    double a = 1 - mass, ka = a * (double)N, tail = (1 - level) / 2;
    double cdf = 0, lcdf = 0, ucdf = 1, la = log(a), lb = log1p(-a);
    double lgn = lgamma((double)N + 1), Np1 = (double)N + 1;
    size_t k, j;
    /* ceil(a N), without letting 1 - 0.95 = 0.05000000000000004 push an
     * exact product up by one */
    k = fabs(ka - nearbyint(ka)) <= 1e-9 * (ka > 1 ? ka : 1)
        ? (size_t)nearbyint(ka) : (size_t)ceil(ka);
    if (k < 1)
        k = 1;
    if (k > N)
        k = N;
    g->k = k;
    g->threshold = s[k - 1];
    g->mass_mean = 1 - (double)k / Np1;
    g->mass_se = sqrt((double)k * (Np1 - (double)k)
                      / (Np1 * Np1 * (Np1 + 1)));
    /* scan the binomial(N, a) distribution function: cdf = P(B <= j) */
    g->lo_k = 0;
    g->hi_k = N + 1;
    for (j = 0; j <= N; j++) {
        double lpmf = lgn - lgamma((double)j + 1)
                    - lgamma((double)(N - j) + 1) + (double)j * la
                    + (double)(N - j) * lb;
        cdf += exp(lpmf);
        /* P(B <= l - 1) <= tail: l = j + 1 is allowed */
        if (cdf <= tail && j + 1 <= N) {
            g->lo_k = j + 1;
            lcdf = cdf;
        }
        /* P(B >= u) = 1 - P(B <= u - 1) <= tail: u = j + 1 */
        if (1 - cdf <= tail) {
            if (j + 1 <= N) {
                g->hi_k = j + 1;
                ucdf = cdf;
            }
            break;
        }
    }
    if (g->lo_k == 0)
        lcdf = 0;
    if (g->hi_k == N + 1)
        ucdf = 1;
    g->coverage = ucdf - lcdf;
    if (g->coverage > 1)
        g->coverage = 1;
    g->lo = g->lo_k ? s[g->lo_k - 1] : -INFINITY;
    g->hi = g->hi_k <= N ? s[g->hi_k - 1] : INFINITY;
}

/* 64-bit mix (Steele, Lea & Flood 2014, SplitMix64 finaliser). */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The random stream of a context's samples: --seed mixed with the
 * context's values (FNV-1a over their bytes, -0 as +0), so a context's
 * region does not depend on which other rows the data hold. */
static uint64_t context_seed(uint64_t seed, const flow_real *c, size_t k)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < k; i++) {
        flow_real v = c[i] == 0 ? (flow_real)0 : c[i];
        unsigned char b[sizeof v];
        memcpy(b, &v, sizeof v);
        for (size_t t = 0; t < sizeof v; t++)
            h = (h ^ b[t]) * 0x100000001b3ULL;
    }
    return mix64(seed ^ mix64(h));
}

/* Draws o->samples samples from the model (given context c, k values,
 * or none), into s sorted ascending.  0, or 1 after printing why. */
static int draw_sorted(cli_loaded *l, const char *cmd, const hdr_opts *o,
                       const flow_real *c, size_t k, double *s)
{
    size_t N = o->samples, dim = flow_model_dim(l->model);
    size_t b = N < o->batch ? N : o->batch, nan = 0;
    flow_real *x = malloc(b * dim * sizeof *x), *lp = malloc(b * sizeof *lp);
    flow_real *cv = k ? malloc(b * k * sizeof *cv) : NULL;
    int rc = 1;
    if (!x || !lp || (k && !cv)) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto out;
    }
    for (size_t i = 0; k && i < b; i++)
        memcpy(cv + i * k, c, k * sizeof *cv);
    flow_model_seed(l->model, k ? context_seed(o->seed, c, k) : o->seed);
    for (size_t r = 0; r < N; r += b) {
        size_t m = N - r < b ? N - r : b;
        if (flow_model_sample(l->model, m, cv, x, lp) != FLOW_OK) {
            cli_fail(l->ctx, cmd);
            goto out;
        }
        for (size_t i = 0; i < m; i++) {
            s[r + i] = lp[i];
            nan += isnan(s[r + i]) != 0;
        }
    }
    if (nan) {
        fprintf(stderr, "%s: %s: %zu of %zu model samples have a NaN "
                "log-density; the region cannot be estimated\n", cmd,
                o->ckpt, nan, N);
        goto out;
    }
    qsort(s, N, sizeof *s, cmp_double);
    rc = 0;
out:
    free(x);
    free(lp);
    free(cv);
    return rc;
}

/* A context as a JSON array. */
static void json_context(FILE *f, const flow_real *c, size_t k)
{
    fputc('[', f);
    for (size_t i = 0; i < k; i++)
        fprintf(f, "%s%.9g", i ? ", " : "", (double)c[i]);
    fputc(']', f);
}

/* A context as text "(v0, v1, ...)" in buf (cap >= 8), cut with "..." when
 * it does not fit. */
static void text_context(char *buf, size_t cap, const flow_real *c, size_t k)
{
    size_t len = 1;
    int w;
    buf[0] = '(';
    buf[1] = '\0';
    for (size_t i = 0; i < k; i++) {
        w = snprintf(buf + len, cap - len, "%s%g", i ? ", " : "",
                     (double)c[i]);
        if (w < 0 || (size_t)w >= cap - len - 1) {
            strcpy(buf + cap - 5, "...)");
            return;
        }
        len += (size_t)w;
    }
    strcpy(buf + len, ")");
}

static void print_hdr_summary(FILE *f, const hdr_opts *o,
                              const hdr_region *g, size_t ng, size_t k,
                              size_t rows)
{
    size_t outside = 0, undecided = 0;
    for (size_t i = 0; i < ng; i++) {
        outside += g[i].outside;
        undecided += g[i].undecided;
    }
    if (o->json) {
        fprintf(f, "{\"checkpoint\": ");
        flow_json_string(f, o->ckpt);
        fprintf(f, ", \"mass\": %.9g, \"samples\": %zu, \"seed\": %llu, "
                "\"level\": %.9g, \"regions\": [", o->mass, o->samples,
                (unsigned long long)o->seed, o->level);
        for (size_t i = 0; i < ng; i++) {
            fprintf(f, "%s{\"context\": ", i ? ", " : "");
            if (k)
                json_context(f, g[i].context, k);
            else
                fputs("null", f);
            fprintf(f, ", \"threshold\": ");
            cli_json_num(f, g[i].threshold, 9);
            fprintf(f, ", \"lower\": ");
            cli_json_num(f, g[i].lo, 9);
            fprintf(f, ", \"upper\": ");
            cli_json_num(f, g[i].hi, 9);
            fprintf(f, ", \"coverage\": %.9g, \"region_mass\": %.9g, "
                    "\"region_mass_stderr\": %.9g", g[i].coverage,
                    g[i].mass_mean, g[i].mass_se);
            if (o->data)
                fprintf(f, ", \"rows\": %zu, \"outside\": %zu, "
                        "\"undecided\": %zu", g[i].rows, g[i].outside,
                        g[i].undecided);
            fputc('}', f);
        }
        fputc(']', f);
        if (o->data)
            fprintf(f, ", \"rows\": %zu, \"outside\": %zu, \"undecided\": "
                    "%zu", rows, outside, undecided);
        fputs("}\n", f);
        return;
    }
    fprintf(f, "highest-density region of mass %g from %zu model samples "
            "(seed %llu)%s\n", o->mass, o->samples,
            (unsigned long long)o->seed, k ? ", one per context" : "");
    if (!k) {
        fprintf(f, "  log-density threshold %.6f, %g%% interval "
                "[%.6f, %.6f]\n", g->threshold, 100 * o->level, g->lo,
                g->hi);
    } else {
        fprintf(f, "  %-26s %8s %8s %11s  %g%% interval\n", "context",
                "rows", "outside", "threshold", 100 * o->level);
        for (size_t i = 0; i < ng; i++) {
            char buf[27];
            text_context(buf, sizeof buf, g[i].context, k);
            fprintf(f, "  %-26s %8zu %8zu %11.6f  [%.6f, %.6f]\n", buf,
                    g[i].rows, g[i].outside, g[i].threshold, g[i].lo,
                    g[i].hi);
        }
    }
    /* the order statistics and the mass depend on N, mass and level only:
     * the same for every context */
    fprintf(f, "  (order statistics %zu and %zu of %zu, exact coverage "
            "%.4f)\n"
            "  mass of {log p >= threshold}: %.5f +- %.5f (s.e.)%s\n",
            g->lo_k, g->hi_k, o->samples, g->coverage, g->mass_mean,
            g->mass_se, k ? ", each" : "");
    if (o->data)
        fprintf(f, "rows: %zu; outside the region: %zu (%.2f%%); "
                "undecided (log p within the interval): %zu\n", rows,
                outside, 100.0 * (double)outside / (double)rows, undecided);
}

int cli_cmd_hdr(int argc, char **argv)
{
    const char *cmd = "flowkit hdr";
    static const char *const names[] = {"logprob", "threshold", "inside",
                                        "quantile"};
    hdr_opts o;
    cli_loaded l;
    flow_data *d = NULL, *res = NULL;
    double *lp = NULL, *s = NULL;
    hdr_region *g = NULL;
    size_t *grp = NULL, n = 0, ng = 0, k;
    int rc;

    if ((rc = parse_hdr(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    if ((rc = cli_check_output(cmd, o.out, (const char *[]){o.ckpt, o.data},
                               2)) != 0)
        return rc;
    if (cli_load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    rc = 1;
    k = flow_model_context_dim(l.model);
    if (k && !o.data) {
        fprintf(stderr, "%s: %s: the model is conditional: give --data FILE "
                "with its %zu context column%s (--context L); the region is "
                "estimated for each distinct context\n", cmd, o.ckpt, k,
                k == 1 ? "" : "s");
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (o.data) {
        if (!(d = cli_read_model_data(&l, cmd, o.data, o.columns, o.context,
                                      1))
            || cli_check_bounds(cmd, flow_compile_graph(l.comp), d))
            goto out;
        n = flow_data_rows(d);
        if (!(lp = malloc(n * sizeof *lp)) || !(grp = calloc(n, sizeof *grp))) {
            fprintf(stderr, "%s: out of memory\n", cmd);
            goto out;
        }
        if (rows_log_prob(&l, cmd, d, o.batch, lp) != 0)
            goto out;
        for (size_t r = 0; r < n; r++)
            if (isnan(lp[r]) || (!isfinite(lp[r]) && !o.allow_nonfinite)) {
                /* NaN has no place in the ranking, even when allowed */
                cli_nonfinite_row(cmd, d, r, "the log-density", lp[r],
                                  isnan(lp[r]) ? "" : " (--allow-nonfinite "
                                  "accepts it)");
                goto out;
            }
    }
    /* the regions: one, or one per distinct context (bitwise equal
     * values; a linear search, bounded by --max-contexts) */
    if (!(g = calloc(k ? (n < o.max_contexts ? n : o.max_contexts) : 1,
                     sizeof *g))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto out;
    }
    ng = 1;
    if (k) {
        const flow_real *c = flow_data_context(d);
        ng = 0;
        for (size_t r = 0; r < n; r++) {
            size_t j = 0;
            for (; j < ng; j++)
                if (!memcmp(g[j].context, c + r * k, k * sizeof *c))
                    break;
            if (j == ng) {
                if (ng == o.max_contexts) {
                    fprintf(stderr, "%s: %s: more than %zu distinct contexts "
                            "(row %zu); each costs --samples %zu model "
                            "samples: raise --max-contexts or group the "
                            "contexts (docs/uq.md)\n", cmd, o.data,
                            o.max_contexts, r + 1, o.samples);
                    goto out;
                }
                g[ng++].context = c + r * k;
            }
            grp[r] = j;
        }
    }
    for (size_t r = 0; r < n; r++)
        g[grp[r]].rows++;
    if (!(s = malloc(o.samples * sizeof *s))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto out;
    }
    if (d && !(res = flow_data_new(l.ctx, n, 4, 0))) {
        cli_fail(l.ctx, cmd);
        goto out;
    }
    if (res)
        flow_data_allow_nonfinite(res, o.allow_nonfinite);
    for (size_t j = 0; j < ng; j++) {
        if (draw_sorted(&l, cmd, &o, g[j].context, k, s) != 0)
            goto out;
        hdr_estimate(s, o.samples, o.mass, o.level, &g[j]);
        for (size_t r = 0; r < n; r++) {
            flow_real *out;
            if (grp[r] != j)
                continue;
            out = flow_data_values(res) + r * 4;
            /* log p = -inf (outside the support, or |x| overflowing)
             * reaches here only with --allow-nonfinite, and is written as
             * -inf: inside 0, quantile 0 (docs/uq.md) */
            out[0] = (flow_real)lp[r];
            out[1] = (flow_real)g[j].threshold;
            out[2] = lp[r] >= g[j].threshold;
            /* density quantile: the fraction of samples no denser */
            out[3] = (flow_real)((double)count_le(s, o.samples, lp[r])
                                 / (double)o.samples);
            g[j].outside += lp[r] < g[j].threshold;
            g[j].undecided += lp[r] >= g[j].lo && lp[r] <= g[j].hi;
        }
    }
    if (res) {
        if (flow_data_set_column_names(l.ctx, res, names) != FLOW_OK
            || flow_data_write(l.ctx, res, o.out, o.format, o.header)
               != FLOW_OK) {
            cli_fail(l.ctx, cmd);
            goto out;
        }
    }
    print_hdr_summary(res && !strcmp(o.out, "-") ? stderr : stdout, &o, g,
                      ng, k, n);
    rc = 0;
out:
    free(s);
    free(g);
    free(grp);
    free(lp);
    flow_data_free(res);
    flow_data_free(d);
    cli_loaded_free(&l);
    return rc;
}
