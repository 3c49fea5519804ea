/* train.c - `flowkit train`: maximum-likelihood training of a spec on a
 * data file, with validation, resume, progress and checkpoints.  Exit
 * codes: 0 success, 1 error (spec, data, checkpoint, numerics, a plugin
 * layer that fails the probe before the first step), 2 usage,
 * 3 the run diverged (CLI_EXIT_DIVERGED). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"

/* Rows of the validation blocks flow_model_evaluate_comm sums: a
 * process's share of the validation data is whole blocks. */
#define VALID_BLOCK 4096


static void train_usage(FILE *f)
{
    fputs("usage: flowkit train SPEC --data FILE -o CKPT [options]\n"
          "\n"
          "Trains the model of SPEC by maximum likelihood (Adam) and writes a\n"
          "checkpoint.  Defaults come from the spec's train { } section, then\n"
          "these flags.\n"
          "\n"
          "  --data FILE          training data (CSV or .npy; - for stdin)\n"
          "  --columns LIST       data columns by name or 0-based index\n"
          "  --context LIST       context columns (conditional models)\n"
          "  --valid FILE         validation data (same columns)\n"
          "  --valid-fraction X   hold out this fraction of --data instead\n"
          "  --epochs N           passes over the data (default 10)\n"
          "  --steps N            optimisation steps instead of epochs\n"
          "  --batch B            rows per step (default 512)\n"
          "  --lr X               learning rate (default 1e-3)\n"
          "  --schedule S         constant | cosine (default constant)\n"
          "  --warmup N           linear warm-up steps (default 0)\n"
          "  --weight-decay X     L2 coefficient (default 0)\n"
          "  --clip X             clip the gradient's global norm "
          "(default off)\n"
          "  --patience N         stop after N validations without\n"
          "                       improvement, keep the best (default off)\n"
          "  --seed S             initialisation and shuffling (default 0)\n"
          "  --threads T          worker threads taking the batch's blocks\n"
          "                       (default: FLOWKIT_THREADS, else the CPUs "
          "this\n"
          "                       process may use; any T gives the same "
          "bits)\n"
          "  --precision P        fp32 (default) or bf16-gemm: the "
          "conditioner\n"
          "                       nets' products in bf16 with float sums, "
          "on\n"
          "                       CPUs with AVX512-BF16 (docs/runtime.md)\n"
          "  --reproducible       gradients summed in blocks of 32 rows, "
          "the same\n"
          "                       bits as under mpirun with any number of "
          "ranks\n"
          "                       (always on under mpirun; "
          "docs/distributed.md)\n"
          "  --checkpoint-every N also write CKPT every N epochs\n"
          "  --resume CKPT        continue a run from its checkpoint\n"
          "  --verify-plugins     probe every layer before training (default:\n"
          "                       only layers of plugins from outside "
          "flowkit's\n"
          "                       own plugin directory, e.g. "
          "FLOW_PLUGIN_PATH)\n"
          "  --no-verify-plugins  probe no layer\n"
          "  --verbose            print what the probe checked, "
          "layer by layer\n"
          "  --log-every N        not on a terminal: also a progress line\n"
          "                       every N steps (default: one per epoch)\n"
          "  --quiet              no progress lines and no summary (warnings\n"
          "                       and errors still go to stderr)\n"
          "  --json               print the summary as JSON on stdout\n"
          "  -o, --output CKPT    checkpoint to write (required)\n"
          "\n"
          "Under mpirun (a build with MPI) each rank reads its share of the\n"
          "data and computes its share of each batch; rank 0 prints and\n"
          "writes CKPT; with --verbose each rank says which rows it holds\n"
          "(docs/distributed.md).  A rank that waits FLOWKIT_MPI_TIMEOUT\n"
          "seconds (default 600, 0 for ever) for the others in one exchange\n"
          "ends the job (exit 1).\n"
          "SIGINT or SIGTERM finishes the current step, writes CKPT with the\n"
          "full training state and exits 130 or 143; --resume CKPT goes on.\n"
          "Exit status 3: the run diverged (10 non-finite steps in a row: no\n"
          "checkpoint; a final validation log-likelihood that is not finite:\n"
          "the checkpoint is written).\n"
          "The probe runs on the first 8 rows of the data, before the first\n"
          "step: each layer's round trip and its log-det against a finite-\n"
          "difference Jacobian, with tolerances like `flowkit check`'s.  A\n"
          "failure exits 1 before anything is written (docs/plugins.md).\n"
          "Models with ode layers add 'nfe N' to each epoch's line: function\n"
          "evaluations per step (forward and backward), also in the history.\n",
          f);
}

typedef struct train_opts {
    const char *spec, *data, *valid, *out, *resume, *columns, *context;
    double valid_fraction;
    size_t epochs, steps, threads, ckpt_every, log_every;
    int json, has_epochs, has_steps, quiet, reproducible;
    int precision;              /* --precision: flow_gemm_precision */
    int verify;                 /* -1: no layer, else a flow_verify_scope */
    int set_verify, verbose;
    uint64_t seed;
    flow_train_config cfg;
    int set_batch, set_lr, set_schedule, set_warmup, set_wd, set_clip,
        set_patience, set_seed;
} train_opts;

static int parse_train(int argc, char **argv, train_opts *o)
{
    cli_args a = {argc, 1, argv, "flowkit train", NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    flow_train_config_default(&o->cfg);
    o->epochs = 10;
    o->threads = 0;            /* cli_default_threads */
    o->verify = FLOW_VERIFY_THIRD_PARTY;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->spec)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->spec = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            train_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--valid"))
            rc = (o->valid = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--context"))
            rc = (o->context = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--resume"))
            rc = (o->resume = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--valid-fraction"))
            rc = cli_parse_real(&a, &o->valid_fraction, 0, 0.9);
        else if (cli_opt_is(&a, "--epochs")) {
            rc = cli_parse_size(&a, &o->epochs, 1);
            o->has_epochs = 1;
        } else if (cli_opt_is(&a, "--steps")) {
            rc = cli_parse_size(&a, &o->steps, 1);
            o->has_steps = 1;
        } else if (cli_opt_is(&a, "--batch")) {
            rc = cli_parse_size(&a, &o->cfg.batch, 1);
            o->set_batch = 1;
        } else if (cli_opt_is(&a, "--lr")) {
            rc = cli_parse_real(&a, &o->cfg.lr, 1e-12, 10);
            o->set_lr = 1;
        } else if (cli_opt_is(&a, "--schedule")) {
            const char *v = cli_opt_value(&a);
            o->set_schedule = 1;
            if (!v)
                rc = CLI_EXIT_USAGE;
            else if (!strcmp(v, "constant"))
                o->cfg.schedule = FLOW_LR_CONSTANT;
            else if (!strcmp(v, "cosine"))
                o->cfg.schedule = FLOW_LR_COSINE;
            else
                rc = cli_usage_error(&a, "--schedule: '%s' is not constant or "
                                 "cosine", v);
        } else if (cli_opt_is(&a, "--warmup")) {
            rc = cli_parse_size(&a, &o->cfg.warmup_steps, 0);
            o->set_warmup = 1;
        } else if (cli_opt_is(&a, "--weight-decay")) {
            rc = cli_parse_real(&a, &o->cfg.weight_decay, 0, 1e3);
            o->set_wd = 1;
        } else if (cli_opt_is(&a, "--clip")) {
            rc = cli_parse_real(&a, &o->cfg.clip_norm, 0, 1e12);
            o->set_clip = 1;
        } else if (cli_opt_is(&a, "--patience")) {
            rc = cli_parse_size(&a, &o->cfg.patience, 1);
            o->set_patience = 1;
        } else if (cli_opt_is(&a, "--seed"))
            rc = cli_parse_u64(&a, &o->seed);
        else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_range(&a, &o->threads, 1, CLI_MAX_THREADS);
        else if (cli_opt_is(&a, "--precision"))
            rc = cli_parse_precision(&a, &o->precision);
        else if (cli_opt_is(&a, "--reproducible"))
            o->reproducible = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--checkpoint-every"))
            rc = cli_parse_size(&a, &o->ckpt_every, 1);
        else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--verbose"))
            o->verbose = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--quiet"))
            o->quiet = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--log-every"))
            rc = cli_parse_size(&a, &o->log_every, 1);
        else if (cli_opt_is(&a, "--verify-plugins")
                 || cli_opt_is(&a, "--no-verify-plugins")) {
            int v = cli_opt_is(&a, "--verify-plugins") ? FLOW_VERIFY_ALL
                                                        : -1;
            if ((rc = cli_flag(&a)) == 0 && o->set_verify && o->verify != v)
                return cli_usage_error(&a, "give --verify-plugins or "
                                       "--no-verify-plugins, not both");
            o->verify = v;
            o->set_verify = 1;
        } else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if ((rc = cli_default_threads(a.cmd, &o->threads)) != 0)
        return rc;
    if (!o->spec)
        return cli_usage_error(&a, "missing SPEC");
    if (!o->data)
        return cli_usage_error(&a, "missing --data FILE");
    if (!o->out)
        return cli_usage_error(&a, "missing -o CKPT");
    if (o->has_epochs && o->has_steps)
        return cli_usage_error(&a, "give --epochs or --steps, not both");
    if (o->valid && o->valid_fraction > 0)
        return cli_usage_error(&a, "give --valid or --valid-fraction, not "
                               "both");
    return 0;
}

/* train { } entries of the spec, overridden by flags that were given. */
static int apply_train_section(const flow_graph *g, train_opts *o,
                               const char *spec)
{
    for (size_t i = 0; i < flow_graph_train_count(g); i++) {
        const flow_train_entry *e = flow_graph_train_get(g, i);
        double v = e->number;
        int ok = 1;
        if (!strcmp(e->key, "lr") && e->is_number && v > 0) {
            if (!o->set_lr)
                o->cfg.lr = v;
        } else if (!strcmp(e->key, "batch") && e->is_number && v >= 1) {
            if (!o->set_batch)
                o->cfg.batch = (size_t)v;
        } else if (!strcmp(e->key, "epochs") && e->is_number && v >= 1) {
            if (!o->has_epochs && !o->has_steps)
                o->epochs = (size_t)v;
        } else if (!strcmp(e->key, "steps") && e->is_number && v >= 1) {
            if (!o->has_epochs && !o->has_steps) {
                o->steps = (size_t)v;
                o->has_steps = 1;
            }
        } else if (!strcmp(e->key, "weight_decay") && e->is_number && v >= 0) {
            if (!o->set_wd)
                o->cfg.weight_decay = v;
        } else if (!strcmp(e->key, "clip") && e->is_number && v >= 0) {
            if (!o->set_clip)
                o->cfg.clip_norm = v;
        } else if (!strcmp(e->key, "warmup") && e->is_number && v >= 0) {
            if (!o->set_warmup)
                o->cfg.warmup_steps = (size_t)v;
        } else if (!strcmp(e->key, "patience") && e->is_number && v >= 0) {
            if (!o->set_patience)
                o->cfg.patience = (size_t)v;
        } else if (!strcmp(e->key, "seed") && e->is_number && v >= 0) {
            if (!o->set_seed)
                o->seed = (uint64_t)v;
        } else if (!strcmp(e->key, "schedule") && !e->is_number
                   && (!strcmp(e->text, "cosine")
                       || !strcmp(e->text, "constant"))) {
            if (!o->set_schedule)
                o->cfg.schedule = !strcmp(e->text, "cosine")
                                ? FLOW_LR_COSINE : FLOW_LR_CONSTANT;
        } else if (!strcmp(e->key, "optimizer") && !e->is_number
                   && !strcmp(e->text, "adam")) {
            /* the only optimizer */
        } else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "flowkit train: %s:%d:%d: train setting '%s' has "
                    "an unusable value '%s' (known: optimizer = adam, lr, "
                    "batch, epochs, steps, schedule = constant|cosine, "
                    "warmup, weight_decay, clip, patience, seed)\n", spec,
                    e->line, e->col, e->key, e->text ? e->text : "?");
            return 1;
        }
    }
    return 0;
}

/* Splits off a seeded random fraction of the rows as validation data
 * (with comm: of the processes' shares). */
static int split_valid(flow_ctx *ctx, flow_comm *comm, flow_data *all,
                       double frac, uint64_t seed, flow_data **train,
                       flow_data **valid)
{
    size_t n = flow_data_total_rows(all), nv = (size_t)((double)n * frac);
    *train = *valid = NULL;
    if (nv == 0 || nv == n)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "--valid-fraction %g of "
                              "%zu rows leaves an empty part", frac, n);
    return flow_data_split(ctx, comm, all, nv, seed ^ 0x5eed5eed5eedull,
                           VALID_BLOCK, train, valid);
}

/* --valid: the columns of --data, by name when both files have a
 * header and no columns were selected explicitly. */
static flow_data *read_valid(flow_ctx *ctx, const char *cmd,
                             flow_comm *comm, const train_opts *o,
                             const flow_data *data, size_t dim, size_t cdim)
{
    const char **names;
    flow_data *v;
    if (o->columns || o->context || !flow_data_column_name(data, 0))
        return cli_read_shard(ctx, cmd, comm, o->valid, o->columns,
                              o->context, dim, cdim);
    if (!(names = calloc(dim + cdim, sizeof *names))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return NULL;
    }
    for (size_t j = 0; j < dim + cdim; j++)
        names[j] = flow_data_column_name(data, j);
    v = cli_read_shard_by_names(ctx, cmd, comm, o->valid, names, dim, cdim);
    free(names);
    return v;
}

/* ", KEY: V" into the history: a JSON number, or null when V is not
 * finite (JSON has no NaN or Inf, and the checkpoint refuses a history
 * that is not JSON). */
static void hist_num(cli_text *h, const char *key, double v)
{
    if (isfinite(v))
        cli_text_add(h, ", \"%s\": %.9g", key, v);
    else
        cli_text_add(h, ", \"%s\": null", key);
}

/* The advice that follows every divergence warning: what to change. */
static void diverge_hint(const train_opts *o)
{
    if (o->cfg.clip_norm > 0)
        fprintf(stderr, "lower --lr (it is %g) or --clip (it is %g)\n",
                o->cfg.lr, o->cfg.clip_norm);
    else
        fprintf(stderr, "lower --lr (it is %g) or set --clip\n", o->cfg.lr);
}

/* A training loss more than one nat per dimension above its lowest epoch
 * mean: the density of the training rows fell by a factor e^dim or more,
 * which a run that learns does not do. */
static int loss_rose(double low_loss, size_t low_epoch, double last_loss,
                     size_t last_epoch, size_t dim)
{
    return last_epoch > low_epoch && last_loss > low_loss + (double)dim;
}

static void rise_warning(const char *cmd, const train_opts *o,
                         double low_loss, size_t low_epoch, double last_loss,
                         size_t last_epoch)
{
    fprintf(stderr, "%s: warning: the training loss rose from %.5g (epoch "
            "%zu, its lowest) to %.5g (epoch %zu): the run is diverging; ",
            cmd, low_loss, low_epoch, last_loss, last_epoch);
    diverge_hint(o);
}

/* After the checkpoint is written: a final validation score that is not
 * finite makes the run a failure (CLI_EXIT_DIVERGED, with the first
 * validation row to blame); a training loss that ends far above its
 * lowest epoch, or steps skipped as non-finite, are a warning line each.
 * Returns the exit status. */
static int diverged(cli_loaded *l, const char *cmd, const train_opts *o,
                    flow_data *va, double vscore, double low_loss,
                    size_t low_epoch, double last_loss, size_t last_epoch,
                    size_t dim, uint64_t skipped)
{
    if (va && !isfinite(vscore)) {
        cli_first_nonfinite(l, cmd, va, VALID_BLOCK, "");
        fprintf(stderr, "%s: the validation log-likelihood is %g, not "
                "finite: %s was written, but the run failed (lower the "
                "learning rate, or check the validation data)\n", cmd,
                vscore, o->out);
        return CLI_EXIT_DIVERGED;
    }
    if (loss_rose(low_loss, low_epoch, last_loss, last_epoch, dim))
        rise_warning(cmd, o, low_loss, low_epoch, last_loss, last_epoch);
    if (skipped) {
        fprintf(stderr, "%s: warning: %llu step%s skipped (non-finite loss "
                "or gradient): the run may be diverging; ", cmd,
                (unsigned long long)skipped, skipped == 1 ? " was" : "s were");
        diverge_hint(o);
    }
    return 0;
}

/* Standard deviations of the data columns that differ by more than
 * this factor train badly without a normalising first layer: a flow's
 * base is a unit normal, and the first layers must stretch each column
 * by its own scale before anything else is learnt. */
#define SCALE_RATIO 100.0

/* Column j's standard deviation over all processes' shares: the sums of
 * the values, then of the squared deviations from the mean, added over
 * the processes (two passes: no cancellation). */
static void share_sds(const char *cmd, flow_comm *comm, flow_data *d,
                      size_t n, double *sd)
{
    size_t m = flow_data_rows(d), dim = flow_data_dim(d);
    const flow_real *x = flow_data_values(d);
    double *mean = calloc(dim, sizeof *mean);
    if (!mean) {
        /* the other processes wait in the reduction */
        fprintf(stderr, "%s: out of memory\n", cmd);
        flow_comm_abort(comm, 1, NULL);
    }
    for (size_t j = 0; j < dim; j++)
        for (size_t i = 0; i < m; i++)
            mean[j] += (double)x[i * dim + j];
    if (flow_comm_allreduce(comm, mean, dim, FLOW_COMM_SUM) != FLOW_OK)
        flow_comm_abort(comm, 1, "flowkit train: the column statistics' "
                        "reduction failed");
    for (size_t j = 0; j < dim; j++) {
        mean[j] /= (double)n;
        sd[j] = 0;
        for (size_t i = 0; i < m; i++) {
            double e = (double)x[i * dim + j] - mean[j];
            sd[j] += e * e;
        }
    }
    if (flow_comm_allreduce(comm, sd, dim, FLOW_COMM_SUM) != FLOW_OK)
        flow_comm_abort(comm, 1, "flowkit train: the column statistics' "
                        "reduction failed");
    for (size_t j = 0; j < dim; j++)
        sd[j] = sqrt(sd[j] / (double)(n - 1));
    free(mean);
}

/* One warning when the columns' scales differ by more than SCALE_RATIO
 * and the spec does not start with actnorm or batchnorm; columns are
 * named by the header, else as the spec's input (x[1]).  With comm
 * (shares of the data) the statistics are the processes' together and
 * rank 0 warns. */
static void scale_warning(const char *cmd, const flow_graph *g,
                          flow_data *d, flow_comm *comm)
{
    const flow_graph_node *first = flow_graph_node_count(g)
                                 ? flow_graph_node_get(g, 0) : NULL;
    size_t n = flow_data_total_rows(d), dim = flow_data_dim(d), lo = 0;
    size_t hi = 0;
    const flow_real *x = flow_data_values(d);
    double slo = INFINITY, shi = 0, *sds = NULL;
    char nlo[64], nhi[64];
    if (first && first->kind == FLOW_NODE_LAYER && first->type
        && (!strcmp(first->type->name, "actnorm")
            || !strcmp(first->type->name, "batchnorm")))
        return;
    /* a first layer with a declared input domain (dequantize's pixel
     * levels, logit's unit interval) fixes the scale the data must have:
     * unequal spreads there are the data (dark image borders), not a
     * missing normalisation */
    if (first && first->kind == FLOW_NODE_LAYER && first->desc
        && first->desc->domain != FLOW_DOMAIN_NONE)
        return;
    if (n < 2)
        return;
    if (comm) {
        if (!(sds = malloc(dim * sizeof *sds))) {
            fprintf(stderr, "%s: out of memory\n", cmd);
            flow_comm_abort(comm, 1, NULL);
        }
        share_sds(cmd, comm, d, n, sds);
    }
    for (size_t j = 0; j < dim; j++) {
        double mean = 0, ss = 0, sd;     /* two passes: no cancellation */
        if (sds)
            sd = sds[j];
        else {
            for (size_t i = 0; i < n; i++)
                mean += (double)x[i * dim + j];
            mean /= (double)n;
            for (size_t i = 0; i < n; i++) {
                double e = (double)x[i * dim + j] - mean;
                ss += e * e;
            }
            sd = sqrt(ss / (double)(n - 1));
        }
        /* a constant column is another problem (actnorm's own warning) */
        if (!(sd > 0) || !isfinite(sd))
            continue;
        if (sd < slo) {
            slo = sd;
            lo = j;
        }
        if (sd > shi) {
            shi = sd;
            hi = j;
        }
    }
    free(sds);
    if (!(shi > SCALE_RATIO * slo) || (comm && flow_comm_rank(comm) != 0))
        return;
    if (flow_data_column_name(d, lo))
        snprintf(nlo, sizeof nlo, "'%s'", flow_data_column_name(d, lo));
    else
        snprintf(nlo, sizeof nlo, "%s[%zu]", flow_graph_input_name(g), lo);
    if (flow_data_column_name(d, hi))
        snprintf(nhi, sizeof nhi, "'%s'", flow_data_column_name(d, hi));
    else
        snprintf(nhi, sizeof nhi, "%s[%zu]", flow_graph_input_name(g), hi);
    fprintf(stderr, "%s: warning: the data columns' standard deviations "
            "differ by %.0fx (%s: %.4g, %s: %.4g) and the model does not "
            "start with a normalising layer: put `actnorm;` first in the "
            "flow (or standardise the data)\n", cmd, shi / slo, nlo, slo,
            nhi, shi);
}

/* The best validation score of a resumed run's history, and its epoch
 * (0 when the history has none). */
static void history_best(const char *hist, double *best, size_t *epoch)
{
    cli_hist_rec r;
    const char *p = hist;
    while (p && cli_hist_next(&p, &r) == 1) {
        double v = cli_hist_get(&r, "valid_loglik"), e = cli_hist_get(&r,
                                                                "epoch");
        if (isfinite(v) && v > *best && e >= 1) {
            *best = v;
            *epoch = (size_t)e;
        }
    }
}

static void verify_note(void *arg, const char *line)
{
    fprintf(stderr, "%s: verify: %s\n", (const char *)arg, line);
}

/* The plugin probe (flow_model_verify_layers) on the first rows of the
 * training data, before the first step: a log-det that is wrong by a
 * sign or a constant makes every score look better, and training would
 * only make it worse.  Nonzero (the exit status) when a layer fails;
 * nothing has been written then. */
static int verify_layers(cli_loaded *l, const char *cmd, const train_opts *o,
                         flow_data *tr)
{
    size_t probed = 0;
    double t0 = cli_now_s();
    if (o->verify < 0)
        return 0;
    if (flow_model_verify_layers(l->model, flow_data_rows(tr),
                                 flow_data_values(tr), flow_data_context(tr),
                                 (flow_verify_scope)o->verify,
                                 o->verbose ? verify_note : NULL,
                                 (void *)cmd, &probed) != FLOW_OK) {
        fprintf(stderr, "%s: %s\n%s: training not started, nothing written "
                "(--no-verify-plugins skips this probe)\n", cmd,
                flow_errmsg(l->ctx), cmd);
        return 1;
    }
    if (o->verbose)
        fprintf(stderr, "%s: verify: %zu layer%s probed in %.3f s%s\n", cmd,
                probed, probed == 1 ? "" : "s", cli_now_s() - t0,
                o->verify == FLOW_VERIFY_ALL ? ""
                : " (layers of flowkit's own plugins are not probed "
                  "without --verify-plugins)");
    return 0;
}

/* Rank 0 writes the checkpoint; every rank holds the same state. */
static int save_ckpt(flow_comm *comm, cli_loaded *l, flow_trainer *t,
                     const flow_data *d, const char *history,
                     const char *out)
{
    if (flow_comm_rank(comm) != 0)
        return FLOW_OK;
    return cli_save_checkpoint(l->ctx, l->model, t, l->comp, d, history, NULL,
                               out);
}

/* Rank 0's initial parameters and buffers (the data-dependent
 * initialisation of actnorm) on every rank: each computed them from the
 * same rows, and the broadcast makes the start equal even so. */
static int share_init(flow_comm *comm, flow_model *m)
{
    int rc = flow_comm_broadcast(comm, flow_model_params(m),
                                 flow_model_num_params(m) * sizeof(flow_real),
                                 0);
    if (rc == FLOW_OK)
        rc = flow_comm_broadcast(comm, flow_model_buffers(m),
                                 flow_model_num_buffers(m)
                                 * sizeof(flow_real), 0);
    return rc;
}

/* The split's training share takes the column names of the data read
 * (the checkpoint records them). */
static int take_names(flow_ctx *ctx, flow_data *tr, const flow_data *all)
{
    size_t k = flow_data_dim(all) + flow_data_context_dim(all);
    const char **names;
    int rc;
    if (!flow_data_column_name(all, 0))
        return FLOW_OK;
    if (!(names = malloc(k * sizeof *names)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t j = 0; j < k; j++)
        names[j] = flow_data_column_name(all, j);
    rc = flow_data_set_column_names(ctx, tr, names);
    free(names);
    return rc;
}

/* --verbose: each process says which rows of a data set it holds. */
static void report_share(const char *cmd, flow_comm *comm, flow_data *d,
                         const char *what, const char *name)
{
    fprintf(stderr, "%s: rank %d of %d holds rows [%zu, %zu) of %zu of "
            "%s%s\n", cmd, flow_comm_rank(comm), flow_comm_size(comm),
            flow_data_first_row(d), flow_data_first_row(d)
            + flow_data_rows(d), flow_data_total_rows(d), what, name);
}

int cli_cmd_train(int argc, char **argv)
{
    const char *cmd = "flowkit train";
    train_opts o;
    cli_loaded l;
    flow_data *all = NULL, *tr = NULL, *va = NULL;
    flow_trainer *t = NULL;
    flow_train_state st;
    cli_text h = {NULL, 0, 0, 0};
    size_t n, steps_per_epoch, total, dim;
    double loss = NAN, vscore = NAN, t0, ep_loss = 0, ep_nfe = 0;
    double low_loss = INFINITY, last_loss = NAN, best_v = -INFINITY;
    size_t ep_count = 0, nfe_count = 0, low_epoch = 0, last_epoch = 0;
    size_t best_v_epoch = 0;
    int rc, ret = 1, warned_rise = 0, warned_skip = 0, use_comm, stop = 0;
    int report;
    cli_progress pr;
    flow_comm *comm = NULL, *shards;
    flow_data *head = NULL;

    if ((rc = parse_train(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    /* --resume CKPT -o CKPT continues a run in place (the checkpoint is
     * read whole first): --resume counts only for reading stdin once */
    if ((rc = cli_check_output(cmd, o.out, (const char *[]){o.spec, o.data,
                               o.valid, o.resume && !strcmp(o.resume, "-")
                               ? "-" : NULL}, 4)) != 0)
        return rc;
    memset(&l, 0, sizeof l);
    if (!(l.ctx = cli_open_ctx(cmd)))
        return 1;
    if (!(comm = flow_comm_new(l.ctx))) {
        cli_fail(l.ctx, cmd);
        cli_loaded_free(&l);
        return 1;
    }
    use_comm = o.reproducible || !strcmp(flow_comm_kind(comm), "mpi");
    /* several processes each hold a share of the data */
    shards = flow_comm_size(comm) > 1 ? comm : NULL;
    report = o.verbose;
    if (flow_comm_rank(comm) != 0) {
        o.quiet = 1;            /* rank 0 speaks for the run */
        o.json = 0;
        o.verbose = 0;
    }
    /* from here on (every path ends at out:), so that a signal during
     * the set-up (compiling, reading the data) is not lost: the loop
     * then ends before its first step and saves the state */
    cli_catch_stop_signals(1);
    if (!(l.comp = cli_compile(l.ctx, cmd, o.spec, NULL))
        || cli_check_output_sources(cmd, o.out, flow_compile_graph(l.comp)))
        goto out;
    {
        const flow_graph *g = flow_compile_graph(l.comp);
        const char *path;
        size_t len, rank, shape[4];
        if (apply_train_section(g, &o, o.spec) != 0)
            goto out;
        l.spec_source = flow_graph_source(g, 0, &path, &len);
        dim = flow_graph_input_dim(g);
        rank = flow_graph_input_shape(g, shape);
        if (!(all = cli_read_shard(l.ctx, cmd, shards, o.data, o.columns,
                                   o.context, dim,
                                   flow_graph_context_dim(g)))
            || cli_check_shape(cmd, o.data, all, rank, shape)
            || cli_check_bounds(cmd, g, all))
            goto out;
        if (report && shards)
            report_share(cmd, comm, all, "", o.data);
        scale_warning(cmd, g, all, shards);
        if (o.valid) {
            if (!(va = read_valid(l.ctx, cmd, shards, &o, all, dim,
                                  flow_graph_context_dim(g)))
                || cli_check_shape(cmd, o.valid, va, rank, shape)
                || cli_check_bounds(cmd, g, va))
                goto out;
            if (shards && flow_data_realign(l.ctx, comm, va, VALID_BLOCK)
                          != FLOW_OK)
                goto failmsg;
            if (report && shards)
                report_share(cmd, comm, va, "", o.valid);
            tr = all;
            all = NULL;
        } else if (o.valid_fraction > 0) {
            if (split_valid(l.ctx, shards, all, o.valid_fraction, o.seed,
                            &tr, &va) != FLOW_OK) {
                cli_fail(l.ctx, cmd);
                goto out;
            }
            /* a share keeps the split alone, with the columns' names */
            if (shards && (rc = take_names(l.ctx, tr, all)) != FLOW_OK)
                goto failmsg;
            if (shards) {
                flow_data_free(all);
                all = NULL;
            }
            if (report && shards) {
                report_share(cmd, comm, tr, "the training part of ", o.data);
                report_share(cmd, comm, va, "the validation part of ",
                             o.data);
            }
        } else {
            tr = all;
            all = NULL;
        }
        if (flow_graph_build_model(l.ctx, g, o.seed, &l.model) != FLOW_OK
            || flow_model_set_threads(l.model, o.threads) != FLOW_OK) {
            cli_fail(l.ctx, cmd);
            goto out;
        }
        if ((ret = cli_set_precision(cmd, l.ctx, l.model, o.precision)) != 0)
            goto out;
        ret = 1;
    }
    n = flow_data_total_rows(tr);
    o.cfg.seed = o.seed;
    steps_per_epoch = n / o.cfg.batch + (n % o.cfg.batch != 0);
    /* the step total must not wrap: a wrapped total would end the run
     * early and still exit 0 (the option parsers cap counts at SIZE_MAX/2) */
    if (!o.has_steps && steps_per_epoch
        && o.epochs > (SIZE_MAX / 2) / steps_per_epoch) {
        fprintf(stderr, "%s: %s %zu x %zu steps per epoch (%zu rows, "
                "batch %zu) overflows the step count (at most %zu steps; "
                "try '%s --help')\n", cmd, o.has_epochs ? "--epochs"
                : "train setting epochs =", o.epochs, steps_per_epoch, n,
                o.cfg.batch, SIZE_MAX / 2, cmd);
        ret = CLI_EXIT_USAGE;
        goto out;
    }
    total = o.has_steps ? o.steps : o.epochs * steps_per_epoch;
    o.cfg.total_steps = total;
    if (shards)
        t = flow_trainer_new_shard(l.model, &o.cfg, comm,
                                   flow_data_values(tr),
                                   flow_data_context(tr),
                                   flow_data_rows(tr),
                                   flow_data_first_row(tr), n);
    else if ((t = flow_trainer_new(l.model, &o.cfg, flow_data_values(tr),
                                   flow_data_context(tr), n))
             && use_comm && flow_trainer_set_comm(t, comm) != FLOW_OK) {
        flow_trainer_free(t);
        t = NULL;
    }
    if (!t) {
        cli_fail(l.ctx, cmd);
        goto out;
    }
    /* a share's first rows, for actnorm's initialisation and the probe:
     * those of the whole data, on every process */
    if (shards && flow_data_head(l.ctx, comm, tr, n < o.cfg.batch ? n
                                 : o.cfg.batch > 8 ? o.cfg.batch
                                 : n < 8 ? n : 8, &head) != FLOW_OK)
        goto failmsg;

    if (o.resume) {
        if (flow_checkpoint_open(l.ctx, o.resume, &l.ck) != FLOW_OK)
            goto failmsg;
        if (cli_check_resume(l.ctx, cmd, l.ck, l.comp, o.spec,
                             all ? all : tr, o.data) != 0)
            goto out;
        if (flow_checkpoint_restore(l.ck, l.model, t) != FLOW_OK)
            goto failmsg;
        if (flow_checkpoint_meta(l.ck, "history")) {
            cli_text_add(&h, "%s", flow_checkpoint_meta(l.ck, "history"));
            history_best(flow_checkpoint_meta(l.ck, "history"), &best_v,
                         &best_v_epoch);
        }
        if (h.len && h.s[h.len - 1] == ']')
            h.s[--h.len] = '\0';            /* reopen the array */
    /* training's bits do not depend on the threads, so neither may the
     * initialisation's: it runs on one (a layer that draws before
     * actnorm draws per thread's rows) */
    } else if (flow_model_set_threads(l.model, 1) != FLOW_OK
               || flow_model_data_init(l.model, n < o.cfg.batch ? n
                                       : o.cfg.batch,
                                       flow_data_values(head ? head : tr),
                                       flow_data_context(head ? head : tr))
                      != FLOW_OK
               || flow_model_set_threads(l.model, o.threads) != FLOW_OK
               || (use_comm && share_init(comm, l.model) != FLOW_OK))
        goto failmsg;
    if (verify_layers(&l, cmd, &o, head ? head : tr) != 0)
        goto out;
    if (!h.len)
        cli_text_add(&h, "[");
    t0 = cli_now_s();
    flow_trainer_get_state(t, &st);
    cli_progress_init(&pr, o.quiet, o.log_every, st.step);
    while (st.step < total && !(flow_comm_size(comm) > 1 ? stop
                                                         : cli_stop_signal)) {
        uint64_t skipped = st.skipped, before = st.step;
        if ((rc = flow_trainer_step(t, &loss)) != FLOW_OK) {
            flow_trainer_get_state(t, &st);
            cli_progress_clear(&pr);
            if (st.skipped > skipped) {     /* the non-finite guard */
                fprintf(stderr, "%s: %s; no checkpoint written\n", cmd,
                        flow_errmsg(l.ctx));
                ret = CLI_EXIT_DIVERGED;
                goto out;
            }
            /* a layer failed on some row of the batch: name the first
             * row of the data that fails, in evaluation mode */
            flow_model_set_training(l.model, 0);
            cli_fail_located(l.ctx, cmd, l.model, all ? all : tr, 0, 0,
                             VALID_BLOCK);
            goto out;
        }
        if (flow_comm_size(comm) > 1
            && cli_agree_stop(comm, &stop) != FLOW_OK)
            goto failmsg;
        if (cli_stop_signal)    /* the step returned: the grace ends */
            cli_stop_saving();
        {
            /* ODE function evaluations of this step (forward and
             * backward), read before a validation pass resets them */
            double nfe = flow_model_nfe(l.model);
            if (nfe >= 0) {
                ep_nfe += nfe;
                nfe_count++;
            }
        }
        if (isfinite(loss)) {
            ep_loss += loss;
            ep_count++;
        }
        flow_trainer_get_state(t, &st);
        if (st.skipped > skipped && !warned_skip) {
            cli_progress_clear(&pr);
            fprintf(stderr, "%s: warning: a step of epoch %llu had a "
                    "non-finite loss or gradient and was skipped (the "
                    "summary counts them): ", cmd,
                    (unsigned long long)st.epoch + 1);
            diverge_hint(&o);
            warned_skip = 1;
        }
        if (st.step > before) {
            cli_progress_at at = {
                (size_t)st.epoch + 1, o.has_steps ? 0 : o.epochs,
                (size_t)((st.pos + o.cfg.batch - 1) / o.cfg.batch),
                steps_per_epoch, st.step, total,
                ep_count ? ep_loss / (double)ep_count : NAN};
            cli_progress_step(&pr, &at);
        }
        if (st.pos >= n || st.step == total) {       /* end of an epoch */
            double mean_loss = ep_count ? ep_loss / (double)ep_count : NAN;
            double mean_nfe = nfe_count ? ep_nfe / (double)nfe_count : -1;
            int has_v = va != NULL;
            if (has_v) {
                double se;
                if ((shards ? flow_model_evaluate_shard(
                                  l.model, comm, flow_data_rows(va),
                                  flow_data_values(va), flow_data_context(va),
                                  flow_data_first_row(va),
                                  flow_data_total_rows(va), VALID_BLOCK,
                                  &vscore, &se)
                            : flow_model_evaluate_comm(
                                  l.model, use_comm ? comm : NULL,
                                  flow_data_rows(va), flow_data_values(va),
                                  flow_data_context(va), VALID_BLOCK, &vscore,
                                  &se)) != FLOW_OK) {
                    cli_progress_clear(&pr);
                    cli_fail_located(l.ctx, cmd, l.model, va, 0, 0,
                                     VALID_BLOCK);
                    goto out;
                }
                flow_trainer_validated(t, vscore);
                if (isfinite(vscore) && vscore > best_v) {
                    best_v = vscore;
                    best_v_epoch = (size_t)st.epoch + 1;
                }
            }
            if (isfinite(mean_loss)) {
                if (mean_loss < low_loss) {
                    low_loss = mean_loss;
                    low_epoch = (size_t)st.epoch + 1;
                }
                last_loss = mean_loss;
                last_epoch = (size_t)st.epoch + 1;
            }
            cli_progress_epoch(&pr, (size_t)st.epoch + 1, st.step, total,
                               mean_loss, has_v, vscore, mean_nfe);
            if (!warned_rise && loss_rose(low_loss, low_epoch, last_loss,
                                          last_epoch, dim)) {
                rise_warning(cmd, &o, low_loss, low_epoch, last_loss,
                             last_epoch);
                warned_rise = 1;
            }
            cli_text_add(&h, "%s{\"epoch\": %llu, \"step\": %llu",
                         h.len > 1 ? ", " : "",
                         (unsigned long long)st.epoch + 1,
                         (unsigned long long)st.step);
            /* a --steps budget that ends inside an epoch: `flowkit info`
             * counts only whole epochs as done */
            if (st.pos < n)
                cli_text_add(&h, ", \"partial\": true");
            hist_num(&h, "loss", mean_loss);
            if (has_v)
                hist_num(&h, "valid_loglik", vscore);
            if (mean_nfe >= 0)
                hist_num(&h, "nfe", mean_nfe);
            cli_text_add(&h, "}");
            ep_loss = 0;
            ep_count = 0;
            ep_nfe = 0;
            nfe_count = 0;
            if (o.ckpt_every && (st.epoch + 1) % o.ckpt_every == 0) {
                cli_text_add(&h, "]");
                if (h.failed)
                    goto oom;
                rc = save_ckpt(comm, &l, t, all ? all : tr, h.s, o.out);
                h.s[--h.len] = '\0';
                if (rc != FLOW_OK)
                    goto failmsg;
            }
            if (has_v && flow_trainer_should_stop(t)) {
                fprintf(stderr, "%s: early stop: no improvement in %zu "
                        "validations\n", cmd, o.cfg.patience);
                break;
            }
        }
    }
    cli_progress_clear(&pr);
    /* with several ranks, the agreed signal: one that reached a rank
     * after the last step's agreement is not the others', and saving is
     * collective */
    if (flow_comm_size(comm) > 1 ? stop : cli_stop_signal) {
        /* interrupted: save the exact training state (not the best
         * parameters) so that --resume continues where this stopped */
        int sig = flow_comm_size(comm) > 1 ? stop : cli_stop_signal;
        cli_text_add(&h, "]");
        if (h.failed)
            goto oom;
        cli_stop_saving();
        if (save_ckpt(comm, &l, t, all ? all : tr, h.s, o.out) != FLOW_OK)
            goto failmsg;
        flow_trainer_get_state(t, &st);
        if (flow_comm_rank(comm) == 0)
            fprintf(stderr, "%s: interrupted by signal %d after step %llu; "
                    "wrote %s (continue with --resume %s)\n", cmd, sig,
                    (unsigned long long)st.step, o.out, o.out);
        ret = 128 + sig;
        goto out;
    }
    if (va && flow_trainer_restore_best(t) == FLOW_OK) {
        flow_trainer_get_state(t, &st);
        vscore = st.best_score;
    }
    cli_text_add(&h, "]");
    if (h.failed)
        goto oom;
    if (save_ckpt(comm, &l, t, all ? all : tr, h.s, o.out) != FLOW_OK)
        goto failmsg;
    flow_trainer_get_state(t, &st);
    if (o.json) {
        printf("{\"checkpoint\": ");
        flow_json_string(stdout, o.out);
        printf(", \"steps\": %llu, \"epochs\": %llu, \"last_epoch_loss\": ",
               (unsigned long long)st.step, (unsigned long long)st.epoch
               + (st.pos > 0));
        cli_json_num(stdout, last_loss, 9);
        printf(", \"last_epoch\": %zu, \"skipped_steps\": %llu", last_epoch,
               (unsigned long long)st.skipped);
        if (va) {
            printf(", \"valid_loglik\": ");
            cli_json_num(stdout, vscore, 9);
            printf(", \"best_valid_epoch\": %zu", best_v_epoch);
        }
        if (use_comm) {
            /* rank 0's time in the collectives, waiting for the others
             * included (bench/mpi_bench, docs/distributed.md) */
            unsigned long long calls;
            double secs, bytes;
            flow_comm_stats(comm, &calls, &secs, &bytes);
            printf(", \"ranks\": %d, \"collective_calls\": %llu, "
                   "\"collective_seconds\": %.4f, \"collective_bytes\": "
                   "%.0f", flow_comm_size(comm), calls, secs, bytes);
        }
        printf(", \"seconds\": %.3f}\n", cli_now_s() - t0);
    } else if (!o.quiet) {
        char skipped[96] = "";
        if (st.skipped)
            snprintf(skipped, sizeof skipped, " (%llu step%s skipped: "
                     "non-finite loss or gradient)",
                     (unsigned long long)st.skipped,
                     st.skipped == 1 ? "" : "s");
        if (st.step == pr.step0)
            fprintf(stderr, "%s: %llu steps (none left to run); wrote %s\n",
                    cmd, (unsigned long long)st.step, o.out);
        else if (isnan(last_loss))
            fprintf(stderr, "%s: %llu steps, no epoch with a finite mean "
                    "loss%s; wrote %s\n", cmd, (unsigned long long)st.step,
                    skipped, o.out);
        else
            fprintf(stderr, "%s: %llu steps, last epoch mean loss %.5f "
                    "(epoch %zu)%s; wrote %s\n", cmd,
                    (unsigned long long)st.step, last_loss, last_epoch,
                    skipped, o.out);
        if (va && best_v_epoch)
            fprintf(stderr, "%s: best validation log-likelihood %.5f nats "
                    "(epoch %zu)\n", cmd, vscore, best_v_epoch);
        else if (va)
            fprintf(stderr, "%s: best validation log-likelihood %.5f nats\n",
                    cmd, vscore);
    }
    ret = diverged(&l, cmd, &o, va, vscore, low_loss, low_epoch, last_loss,
                   last_epoch, dim, st.skipped);
    goto out;
oom:
    fprintf(stderr, "%s: out of memory for the training history\n", cmd);
    goto out;
failmsg:
    cli_fail(l.ctx, cmd);
out:
    cli_catch_stop_signals(0);
    /* a rank that fails ends them all: the others would wait in the next
     * collective (mpirun reports the abort and exits non-zero) */
    if (ret != 0 && ret < 128 && flow_comm_size(comm) > 1)
        flow_comm_abort(comm, ret, NULL);
    flow_comm_free(comm);
    free(h.s);
    flow_trainer_free(t);
    flow_data_free(all);
    flow_data_free(tr);
    flow_data_free(va);
    flow_data_free(head);
    cli_loaded_free(&l);
    return ret;
}
