/* cli_model.c - the flowkit subcommands that build or load a model: train,
 * eval, logprob, sample, encode, decode, info.  Exit codes: 0 success,
 * 1 error (spec, data, checkpoint, numerics), 2 usage. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------ options */

int cli_usage_error(const cli_args *a, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", a->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try '%s --help')\n", a->cmd);
    return EXIT_USAGE;
}

/* Next argument: 1 for an option (a->opt set), 0 for a positional (in
 * *pos), -1 at the end. */
int cli_next_arg(cli_args *a, const char **pos)
{
    const char *s;
    if (a->i >= a->argc)
        return -1;
    s = a->argv[a->i++];
    a->inline_val = NULL;
    if (s[0] == '-' && s[1] == '-' && s[2]) {
        static char name[64];
        const char *eq = strchr(s, '=');
        size_t len = eq ? (size_t)(eq - s) : strlen(s);
        if (len >= sizeof name)
            len = sizeof name - 1;
        memcpy(name, s, len);
        name[len] = '\0';
        a->opt = name;
        a->inline_val = eq ? eq + 1 : NULL;
        return 1;
    }
    if (s[0] == '-' && s[1] && s[1] != '-' && !s[2]) {   /* -o, -n */
        a->opt = s;
        return 1;
    }
    *pos = s;
    return 0;
}

int cli_opt_is(const cli_args *a, const char *name)
{
    return !strcmp(a->opt, name);
}

/* The option's value; NULL after printing a usage error. */
const char *cli_opt_value(cli_args *a)
{
    if (a->inline_val)
        return a->inline_val;
    if (a->i >= a->argc) {
        cli_usage_error(a, "option %s needs a value", a->opt);
        return NULL;
    }
    return a->argv[a->i++];
}

int cli_parse_size(cli_args *a, size_t *out, size_t min)
{
    const char *v = cli_opt_value(a);
    char *end;
    unsigned long long x;
    if (!v)
        return EXIT_USAGE;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x < min
        || x > (unsigned long long)SIZE_MAX / 2)
        return cli_usage_error(a, "%s: '%s' is not an integer >= %zu",
                               a->opt, v, min);
    *out = (size_t)x;
    return 0;
}

int cli_parse_u64(cli_args *a, uint64_t *out)
{
    size_t v;
    int rc = cli_parse_size(a, &v, 0);
    *out = v;
    return rc;
}

int cli_parse_real(cli_args *a, double *out, double lo, double hi)
{
    const char *v = cli_opt_value(a);
    char *end;
    double x;
    if (!v)
        return EXIT_USAGE;
    errno = 0;
    x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi))
        return cli_usage_error(a, "%s: '%s' is not a number in [%g, %g]",
                               a->opt, v, lo, hi);
    *out = x;
    return 0;
}

static int parse_format(cli_args *a, flow_data_format *f)
{
    const char *v = cli_opt_value(a);
    if (!v)
        return EXIT_USAGE;
    if (!strcmp(v, "csv"))
        *f = FLOW_DATA_CSV;
    else if (!strcmp(v, "npy"))
        *f = FLOW_DATA_NPY;
    else
        return cli_usage_error(a, "--format: '%s' is not csv or npy", v);
    return 0;
}

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
    if (flow_plugin_load_all(ctx) != FLOW_OK) {
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

void loaded_free(loaded *l)
{
    flow_model_free(l->model);
    flow_compile_free(l->comp);
    flow_checkpoint_free(l->ck);
    flow_ctx_free(l->ctx);
    memset(l, 0, sizeof *l);
}

/* Opens a checkpoint, recompiles its spec (with `target` as --target when
 * not NULL) and restores the parameters. */
static int load_checkpoint_target(loaded *l, const char *cmd,
                                  const char *path, size_t threads,
                                  const char *target);

int load_checkpoint(loaded *l, const char *cmd, const char *path,
                    size_t threads)
{
    return load_checkpoint_target(l, cmd, path, threads, NULL);
}

static int load_checkpoint_target(loaded *l, const char *cmd,
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
    loaded_free(l);
    return 1;
}

/* Reads a data file for model m: dim columns (+ context columns). */
flow_data *read_data(flow_ctx *ctx, const char *cmd, const char *path,
                     const char *columns, const char *context, size_t dim,
                     size_t cdim)
{
    flow_data *d = NULL;
    if (flow_data_read(ctx, path, columns, context, dim, &d) != FLOW_OK) {
        cli_fail(ctx, cmd);
        return NULL;
    }
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

/* Seconds on the monotonic clock. */
double cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Prints s (NULL: "") as a JSON string literal. */
void cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

void cli_json_num(FILE *f, double v, int digits)
{
    if (isfinite(v))
        fprintf(f, "%.*g", digits, v);
    else
        fputs("null", f);
}

/* ------------------------------------------------------------ train */

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
          "  --clip X             clip the gradient's global norm (default off)\n"
          "  --patience N         stop after N validations without\n"
          "                       improvement, keep the best (default off)\n"
          "  --seed S             initialisation and shuffling (default 0)\n"
          "  --threads T          worker threads splitting each batch by rows\n"
          "                       (default 1; same seed and threads, same bits)\n"
          "  --checkpoint-every N also write CKPT every N epochs\n"
          "  --resume CKPT        continue a run from its checkpoint\n"
          "  --json               print the summary as JSON on stdout\n"
          "  -o, --output CKPT    checkpoint to write (required)\n"
          "\n"
          "SIGINT or SIGTERM finishes the current step, writes CKPT with the\n"
          "full training state and exits 130 or 143; --resume CKPT goes on.\n"
          "Models with ode layers add 'nfe N' to each epoch's line: function\n"
          "evaluations per step (forward and backward), also in the history.\n",
          f);
}

typedef struct train_opts {
    const char *spec, *data, *valid, *out, *resume, *columns, *context;
    double valid_fraction;
    size_t epochs, steps, threads, ckpt_every;
    int json, has_epochs, has_steps;
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
    o->threads = 1;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->spec)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->spec = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            train_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--valid"))
            rc = (o->valid = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--context"))
            rc = (o->context = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--resume"))
            rc = (o->resume = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
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
                rc = EXIT_USAGE;
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
            rc = cli_parse_size(&a, &o->threads, 1);
        else if (cli_opt_is(&a, "--checkpoint-every"))
            rc = cli_parse_size(&a, &o->ckpt_every, 1);
        else if (cli_opt_is(&a, "--json"))
            o->json = 1;
        else
            return cli_usage_error(&a, "unknown option '%s'", a.opt);
    }
    if (rc)
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
                    "warmup, weight_decay, clip, patience, seed)\n", spec, e->line,
                    e->col, e->key, e->text ? e->text : "?");
            return 1;
        }
    }
    return 0;
}

/* Splits off a seeded random fraction of the rows as validation data. */
static int split_valid(flow_ctx *ctx, flow_data *all, double frac,
                       uint64_t seed, flow_data **train, flow_data **valid)
{
    size_t n = flow_data_rows(all), nv = (size_t)((double)n * frac);
    size_t d = flow_data_dim(all), k = flow_data_context_dim(all);
    size_t *idx = malloc(n * sizeof *idx);
    uint64_t s = seed ^ 0x5eed5eed5eedull;
    *train = *valid = NULL;
    if (!idx)
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (nv == 0 || nv == n) {
        free(idx);
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "--valid-fraction %g of "
                              "%zu rows leaves an empty part", frac, n);
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    for (size_t i = n; i > 1; i--) {      /* splitmix64 Fisher-Yates */
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        size_t j, t;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        j = (size_t)((z ^ (z >> 31)) % i);
        t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
    *valid = flow_data_new(ctx, nv, d, k);
    *train = flow_data_new(ctx, n - nv, d, k);
    if (!*valid || !*train) {
        free(idx);
        flow_data_free(*valid);
        flow_data_free(*train);
        *train = *valid = NULL;
        return FLOW_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        flow_data *dst = i < nv ? *valid : *train;
        size_t r = i < nv ? i : i - nv;
        memcpy(flow_data_values(dst) + r * d,
               flow_data_values(all) + idx[i] * d, d * sizeof(flow_real));
        if (k)
            memcpy(flow_data_context(dst) + r * k,
                   flow_data_context(all) + idx[i] * k,
                   k * sizeof(flow_real));
    }
    free(idx);
    return FLOW_OK;
}

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

/* nfe < 0: the model has no ODE layer (nothing printed) */
static void progress(int tty, size_t epoch, size_t step, size_t total,
                     double loss, int has_valid, double valid, double nfe,
                     double t0)
{
    double el = cli_now_s() - t0;
    double eta = step ? el / (double)step * (double)(total - step) : 0;
    if (tty) {
        int w = 24, fill = total ? (int)((double)w * step / total) : w;
        fprintf(stderr, "\repoch %zu [%.*s%*s] %zu/%zu loss %.4f", epoch,
                fill, "========================", w - fill, "", step, total,
                loss);
        if (has_valid)
            fprintf(stderr, " valid %.4f", valid);
        if (nfe >= 0)
            fprintf(stderr, " nfe %.4g", nfe);
        fprintf(stderr, " ETA %.0fs ", eta);
        fflush(stderr);
    } else {
        fprintf(stderr, "epoch %zu step %zu/%zu loss %.5f", epoch, step, total,
                loss);
        if (has_valid)
            fprintf(stderr, " valid_loglik %.5f", valid);
        if (nfe >= 0)
            fprintf(stderr, " nfe %.4g", nfe);
        fprintf(stderr, " time %.1fs\n", el);
    }
}

int cmd_train(int argc, char **argv)
{
    const char *cmd = "flowkit train";
    train_opts o;
    loaded l;
    flow_data *all = NULL, *tr = NULL, *va = NULL;
    flow_trainer *t = NULL;
    flow_train_state st;
    cli_text h = {NULL, 0, 0, 0};
    size_t n, steps_per_epoch, total, dim;
    double loss = NAN, vscore = NAN, t0, ep_loss = 0, ep_nfe = 0;
    size_t ep_count = 0, nfe_count = 0;
    int rc, tty = isatty(2), ret = 1;

    if ((rc = parse_train(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    memset(&l, 0, sizeof l);
    if (!(l.ctx = cli_open_ctx(cmd)))
        return 1;
    if (!(l.comp = cli_compile(l.ctx, cmd, o.spec, NULL)))
        goto out;
    {
        const flow_graph *g = flow_compile_graph(l.comp);
        const char *path;
        size_t len;
        if (apply_train_section(g, &o, o.spec) != 0)
            goto out;
        l.spec_source = flow_graph_source(g, 0, &path, &len);
        if (flow_graph_source_count(g) > 1)
            fprintf(stderr, "%s: note: %s imports other files; the checkpoint "
                    "embeds only %s, so keep the imports where they are\n",
                    cmd, o.spec, o.spec);
        dim = flow_graph_input_dim(g);
        if (!(all = read_data(l.ctx, cmd, o.data, o.columns, o.context, dim,
                              flow_graph_context_dim(g))))
            goto out;
        if (o.valid) {
            if (!(va = read_data(l.ctx, cmd, o.valid, o.columns, o.context,
                                 dim, flow_graph_context_dim(g))))
                goto out;
            tr = all;
            all = NULL;
        } else if (o.valid_fraction > 0) {
            if (split_valid(l.ctx, all, o.valid_fraction, o.seed, &tr, &va)
                != FLOW_OK) {
                cli_fail(l.ctx, cmd);
                goto out;
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
    }
    n = flow_data_rows(tr);
    o.cfg.seed = o.seed;
    steps_per_epoch = (n + o.cfg.batch - 1) / o.cfg.batch;
    total = o.has_steps ? o.steps : o.epochs * steps_per_epoch;
    o.cfg.total_steps = total;
    if (!(t = flow_trainer_new(l.model, &o.cfg, flow_data_values(tr),
                               flow_data_context(tr), n))) {
        cli_fail(l.ctx, cmd);
        goto out;
    }
    if (o.resume) {
        if (flow_checkpoint_open(l.ctx, o.resume, &l.ck) != FLOW_OK)
            goto failmsg;
        if (strcmp(flow_checkpoint_spec(l.ck), l.spec_source) != 0) {
            fprintf(stderr, "%s: %s: checkpoint was made by a different spec "
                    "than %s\n", cmd, o.resume, o.spec);
            goto out;
        }
        if (flow_checkpoint_restore(l.ck, l.model, t) != FLOW_OK)
            goto failmsg;
        if (flow_checkpoint_meta(l.ck, "history"))
            cli_text_add(&h, "%s", flow_checkpoint_meta(l.ck, "history"));
        if (h.len && h.s[h.len - 1] == ']')
            h.s[--h.len] = '\0';            /* reopen the array */
    } else if (flow_model_data_init(l.model, n < o.cfg.batch ? n
                                    : o.cfg.batch, flow_data_values(tr),
                                    flow_data_context(tr)) != FLOW_OK)
        goto failmsg;
    if (!h.len)
        cli_text_add(&h, "[");
    t0 = cli_now_s();
    flow_trainer_get_state(t, &st);
    cli_stop_signal = 0;
    cli_catch_stop_signals(1);
    while (st.step < total && !cli_stop_signal) {
        if ((rc = flow_trainer_step(t, &loss)) != FLOW_OK)
            goto failmsg;
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
        if (st.pos >= n || st.step == total) {       /* end of an epoch */
            double mean_loss = ep_count ? ep_loss / (double)ep_count : NAN;
            double mean_nfe = nfe_count ? ep_nfe / (double)nfe_count : -1;
            int has_v = va != NULL;
            if (has_v) {
                double se;
                if (flow_model_evaluate(l.model, flow_data_rows(va),
                                        flow_data_values(va),
                                        flow_data_context(va), 4096, &vscore,
                                        &se) != FLOW_OK)
                    goto failmsg;
                flow_trainer_validated(t, vscore);
            }
            progress(tty, (size_t)st.epoch + 1, (size_t)st.step, total,
                     mean_loss, has_v, vscore, mean_nfe, t0);
            cli_text_add(&h, "%s{\"epoch\": %llu, \"step\": %llu, \"loss\": "
                     "%.9g", h.len > 1 ? ", " : "",
                     (unsigned long long)st.epoch + 1,
                     (unsigned long long)st.step, mean_loss);
            if (has_v)
                cli_text_add(&h, ", \"valid_loglik\": %.9g", vscore);
            if (mean_nfe >= 0)
                cli_text_add(&h, ", \"nfe\": %.9g", mean_nfe);
            cli_text_add(&h, "}");
            ep_loss = 0;
            ep_count = 0;
            ep_nfe = 0;
            nfe_count = 0;
            if (o.ckpt_every && (st.epoch + 1) % o.ckpt_every == 0) {
                cli_text_add(&h, "]");
                if (h.failed)
                    goto oom;
                rc = flow_checkpoint_save(l.model, t, l.spec_source, o.spec,
                                          h.s, o.out);
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
    if (tty)
        fputc('\n', stderr);
    if (cli_stop_signal) {
        /* interrupted: save the exact training state (not the best
         * parameters) so that --resume continues where this stopped */
        int sig = cli_stop_signal;
        cli_text_add(&h, "]");
        if (h.failed)
            goto oom;
        if (flow_checkpoint_save(l.model, t, l.spec_source, o.spec, h.s,
                                 o.out) != FLOW_OK)
            goto failmsg;
        flow_trainer_get_state(t, &st);
        fprintf(stderr, "%s: interrupted by signal %d after step %llu; wrote "
                "%s (continue with --resume %s)\n", cmd, sig,
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
    if (flow_checkpoint_save(l.model, t, l.spec_source, o.spec, h.s, o.out)
        != FLOW_OK)
        goto failmsg;
    flow_trainer_get_state(t, &st);
    if (o.json) {
        printf("{\"checkpoint\": \"%s\", \"steps\": %llu, \"epochs\": %llu, "
               "\"final_loss\": %.9g, \"skipped_steps\": %llu", o.out,
               (unsigned long long)st.step, (unsigned long long)st.epoch
               + (st.pos > 0), loss, (unsigned long long)st.skipped);
        if (va)
            printf(", \"valid_loglik\": %.9g", vscore);
        printf(", \"seconds\": %.3f}\n", cli_now_s() - t0);
    } else {
        char skipped[96] = "";
        if (st.skipped)
            snprintf(skipped, sizeof skipped, " (%llu step%s skipped: "
                     "non-finite loss or gradient)",
                     (unsigned long long)st.skipped,
                     st.skipped == 1 ? "" : "s");
        if (isnan(loss))
            fprintf(stderr, "%s: %llu steps (none left to run); wrote %s\n",
                    cmd, (unsigned long long)st.step, o.out);
        else
            fprintf(stderr, "%s: %llu steps, final loss %.5f%s; wrote %s\n",
                    cmd, (unsigned long long)st.step, loss, skipped, o.out);
        if (va)
            fprintf(stderr, "%s: best validation log-likelihood %.5f nats\n",
                    cmd, vscore);
    }
    ret = 0;
    goto out;
oom:
    fprintf(stderr, "%s: out of memory for the training history\n", cmd);
    goto out;
failmsg:
    cli_fail(l.ctx, cmd);
out:
    cli_catch_stop_signals(0);
    free(h.s);
    flow_trainer_free(t);
    flow_data_free(all);
    flow_data_free(tr);
    flow_data_free(va);
    loaded_free(&l);
    return ret;
}

/* ------------------------------------------------------------ eval & co */

typedef struct run_opts {
    const char *ckpt, *data, *out, *columns, *context, *ctxfile;
    flow_data_format format;
    size_t batch, n, threads;
    uint64_t seed;
    int json, with_logprob, header, has_n;
    int weights;                /* sample: self-normalised IS weights */
    const char *target;         /* sample --target */
} run_opts;

/* mode 0: --data commands; 1: sample; 2: info (checkpoint only) */
static int parse_run(int argc, char **argv, const char *cmd, run_opts *o,
                     void (*usage)(FILE *), int mode)
{
    int sampling = mode == 1, needs_data = mode == 0;
    cli_args a = {argc, 1, argv, cmd, NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    o->batch = 4096;
    o->threads = 1;
    o->header = 1;
    o->out = "-";
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->ckpt)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->ckpt = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            usage(stdout);
            return -1;
        } else if (needs_data && cli_opt_is(&a, "--data"))
            rc = (o->data = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (needs_data && cli_opt_is(&a, "--columns"))
            rc = (o->columns = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--context") && needs_data)
            rc = (o->context = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--context") && sampling)
            rc = (o->ctxfile = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else if (cli_opt_is(&a, "--format"))
            rc = parse_format(&a, &o->format);
        else if (cli_opt_is(&a, "--no-header"))
            o->header = 0;
        else if (cli_opt_is(&a, "--batch"))
            rc = cli_parse_size(&a, &o->batch, 1);
        else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_size(&a, &o->threads, 1);
        else if (cli_opt_is(&a, "--json"))
            o->json = 1;
        else if (sampling && cli_opt_is(&a, "-n")) {
            rc = cli_parse_size(&a, &o->n, 1);
            o->has_n = 1;
        } else if (sampling && cli_opt_is(&a, "--seed"))
            rc = cli_parse_u64(&a, &o->seed);
        else if (sampling && cli_opt_is(&a, "--with-logprob"))
            o->with_logprob = 1;
        else if (sampling && cli_opt_is(&a, "--weights"))
            o->weights = 1;
        else if (sampling && cli_opt_is(&a, "--target"))
            rc = (o->target = cli_opt_value(&a)) ? 0 : EXIT_USAGE;
        else
            return cli_usage_error(&a, "unknown option '%s'", a.opt);
    }
    if (rc)
        return rc;
    if (!o->ckpt)
        return cli_usage_error(&a, "missing CKPT");
    if (needs_data && !o->data)
        return cli_usage_error(&a, "missing --data FILE");
    if (sampling && !o->has_n)
        return cli_usage_error(&a, "missing -n N");
    if (o->target && !o->weights)
        return cli_usage_error(&a, "--target only goes with --weights");
    return 0;
}

static void eval_usage(FILE *f)
{
    fputs("usage: flowkit eval CKPT --data FILE [--columns L] [--context L]\n"
          "                    [--batch B] [--json]\n\n"
          "Mean log-likelihood (nats per sample) with its standard error, and\n"
          "bits per dimension, of the rows of FILE under the model.\n", f);
}

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "flowkit eval";
    run_opts o;
    loaded l;
    flow_data *d;
    double mean, se, bpd;
    size_t dim;
    int rc;
    if ((rc = parse_run(argc, argv, cmd, &o, eval_usage, 0)) != 0)
        return rc < 0 ? 0 : rc;
    if (load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    dim = flow_model_dim(l.model);
    if (!(d = read_data(l.ctx, cmd, o.data, o.columns, o.context, dim,
                        flow_model_context_dim(l.model)))) {
        loaded_free(&l);
        return 1;
    }
    rc = flow_model_evaluate(l.model, flow_data_rows(d), flow_data_values(d),
                             flow_data_context(d), o.batch, &mean, &se);
    if (rc != FLOW_OK) {
        cli_fail(l.ctx, cmd);
        flow_data_free(d);
        loaded_free(&l);
        return 1;
    }
    /* bits/dim of the negative log-likelihood: -mean / (D ln 2) */
    bpd = -mean / ((double)dim * log(2.0));
    if (o.json)
        printf("{\"rows\": %zu, \"loglik\": %.9g, \"stderr\": %.9g, "
               "\"bits_per_dim\": %.9g, \"logdet\": \"exact\"}\n",
               flow_data_rows(d), mean, se, bpd);
    else
        printf("log-likelihood %.6f +- %.6f nats per sample (n = %zu); "
               "%.6f bits/dim\n", mean, se, flow_data_rows(d), bpd);
    flow_data_free(d);
    loaded_free(&l);
    return 0;
}

/* Writes n rows of width w named PREFIX0.. (+ cw context columns named as
 * in cnames or c0.., + one "logprob" column, + one "weight" column) to
 * o->out. */
static int write_rows_w(flow_ctx *ctx, const char *cmd, const run_opts *o,
                        size_t n, size_t w, const char *prefix,
                        const flow_real *rows, const flow_real *lp,
                        size_t cw, const flow_real *cv,
                        const flow_data *cnames, const flow_real *wt);

static int write_rows(flow_ctx *ctx, const char *cmd, const run_opts *o,
                      size_t n, size_t w, const char *prefix,
                      const flow_real *rows, const flow_real *lp, size_t cw,
                      const flow_real *cv, const flow_data *cnames)
{
    return write_rows_w(ctx, cmd, o, n, w, prefix, rows, lp, cw, cv, cnames,
                        NULL);
}

static int write_rows_w(flow_ctx *ctx, const char *cmd, const run_opts *o,
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
        if (!(names[j] = malloc(32 + (cn ? strlen(cn) : 0))))
            goto done;
        if (j < w)
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
    if ((rc = flow_data_set_column_names(ctx, out,
                                         (const char *const *)names))
        == FLOW_OK)
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
    fputs("usage: flowkit logprob CKPT --data FILE [-o OUT] [--format csv|npy]\n"
          "                       [--columns L] [--context L] [--no-header]\n\n"
          "One log-density (nats) per input row, in input order.\n", f);
}

/* logprob, encode (dir 0) and decode (dir 1) share the data loop. */
static int map_rows(int argc, char **argv, const char *cmd,
                    void (*usage)(FILE *), int what)
{
    run_opts o;
    loaded l;
    flow_data *d;
    flow_real *res = NULL;
    size_t n, dim, w;
    int rc;
    if ((rc = parse_run(argc, argv, cmd, &o, usage, 0)) != 0)
        return rc < 0 ? 0 : rc;
    if (load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    dim = flow_model_dim(l.model);
    if (!(d = read_data(l.ctx, cmd, o.data, o.columns, o.context, dim,
                        flow_model_context_dim(l.model)))) {
        loaded_free(&l);
        return 1;
    }
    n = flow_data_rows(d);
    w = what == 0 ? 1 : dim;
    if (!(res = malloc(n * w * sizeof *res))) {
        rc = cli_fail(l.ctx, cmd);
        goto out;
    }
    for (size_t r = 0; r < n; r += o.batch) {
        size_t b = n - r < o.batch ? n - r : o.batch, k;
        const flow_real *x = flow_data_values(d) + r * dim;
        const flow_real *c = flow_data_context(d);
        k = flow_model_context_dim(l.model);
        c = c ? c + r * k : NULL;
        rc = what == 0 ? flow_model_log_prob(l.model, b, x, c, res + r)
           : what == 1 ? flow_model_forward(l.model, b, x, c, res + r * dim,
                                            NULL)
                       : flow_model_inverse(l.model, b, x, c, res + r * dim,
                                            NULL);
        if (rc != FLOW_OK) {
            rc = cli_fail(l.ctx, cmd);
            goto out;
        }
    }
    rc = what == 0
       ? write_rows(l.ctx, cmd, &o, n, 0, "", NULL, res, 0, NULL, NULL)
       : write_rows(l.ctx, cmd, &o, n, dim, what == 1 ? "z" : "x", res,
                    NULL, 0, NULL, NULL);
out:
    free(res);
    flow_data_free(d);
    loaded_free(&l);
    return rc;
}

int cmd_logprob(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit logprob", logprob_usage, 0);
}

static void encode_usage(FILE *f)
{
    fputs("usage: flowkit encode CKPT --data FILE [-o OUT] [--format csv|npy]\n\n"
          "Maps data x to latents z (the density direction).  With exits, z\n"
          "holds the exits' dimensions first, then the final output.\n", f);
}

int cmd_encode(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit encode", encode_usage, 1);
}

static void decode_usage(FILE *f)
{
    fputs("usage: flowkit decode CKPT --data FILE [-o OUT] [--format csv|npy]\n\n"
          "Maps latents z back to data x (the sampling direction); the inverse\n"
          "of encode.\n", f);
}

int cmd_decode(int argc, char **argv)
{
    return map_rows(argc, argv, "flowkit decode", decode_usage, 2);
}

static void sample_usage(FILE *f)
{
    fputs("usage: flowkit sample CKPT -n N [--seed S] [--with-logprob]\n"
          "                      [--weights [--target T]]\n"
          "                      [--context FILE] [-o OUT] [--format csv|npy]\n\n"
          "Draws N samples (for a conditional model, N for each row of the\n"
          "--context file, which is appended to each sample).  With\n"
          "--with-logprob a column is each sample's log-density.  With\n"
          "--weights (a model fitted to a target by `flowkit fit`) a last\n"
          "column `weight` holds self-normalised importance weights\n"
          "p~(x)/q(x), summing to 1 over the N samples, against the target\n"
          "stored in the checkpoint or the one --target names.\n", f);
}

int cmd_sample(int argc, char **argv)
{
    const char *cmd = "flowkit sample";
    run_opts o;
    loaded l;
    flow_data *cd = NULL;
    flow_real *x = NULL, *lp = NULL, *cv = NULL;
    size_t dim, k, m = 1, total;
    int rc = 1;
    flow_target *tg = NULL;
    flow_real *wt = NULL;
    if ((rc = parse_run(argc, argv, cmd, &o, sample_usage, 1)) != 0)
        return rc < 0 ? 0 : rc;
    if (load_checkpoint_target(&l, cmd, o.ckpt, o.threads, o.weights
                               ? (o.target ? o.target : "") : NULL) != 0)
        return 1;
    rc = 1;
    if (o.weights
        && flow_graph_build_target(l.ctx, flow_compile_graph(l.comp), &tg)
           != FLOW_OK) {
        fprintf(stderr, "%s: --weights: %s\n", cmd, flow_errmsg(l.ctx));
        goto out;
    }
    dim = flow_model_dim(l.model);
    k = flow_model_context_dim(l.model);
    if (k && !o.ctxfile) {
        fprintf(stderr, "%s: the model is conditional: give --context FILE "
                "with %zu columns\n", cmd, k);
        goto out;
    }
    if (!k && o.ctxfile) {
        fprintf(stderr, "%s: the model takes no context\n", cmd);
        goto out;
    }
    if (k) {
        if (flow_data_read(l.ctx, o.ctxfile, NULL, NULL, k, &cd) != FLOW_OK) {
            cli_fail(l.ctx, cmd);
            goto out;
        }
        m = flow_data_rows(cd);
    }
    if (o.n > SIZE_MAX / 8 / (dim + k + 1) / m) {
        fprintf(stderr, "%s: -n %zu is too large\n", cmd, o.n);
        goto out;
    }
    total = o.n * m;
    x = malloc(total * dim * sizeof *x);
    lp = malloc(total * sizeof *lp);
    if (tg && !(wt = malloc(total * sizeof *wt))) {
        cli_fail(l.ctx, cmd);
        goto out;
    }
    cv = k ? malloc(total * k * sizeof *cv) : NULL;
    if (!x || !lp || (k && !cv)) {
        cli_fail(l.ctx, cmd);
        goto out;
    }
    for (size_t j = 0; j < total; j++)
        if (k)
            memcpy(cv + j * k, flow_data_values(cd) + (j / o.n) * k,
                   k * sizeof *cv);
    flow_model_seed(l.model, o.seed);
    for (size_t r = 0; r < total; r += o.batch) {
        size_t b = total - r < o.batch ? total - r : o.batch;
        if (flow_model_sample(l.model, b, k ? cv + r * k : NULL, x + r * dim,
                              lp + r) != FLOW_OK) {
            cli_fail(l.ctx, cmd);
            goto out;
        }
    }
    if (tg) {
        /* self-normalised importance weights exp(w_r - logsumexp(w)),
         * w_r = log p~(x_r) - log q(x_r) */
        double mx = -INFINITY, sum = 0;
        for (size_t r = 0; r < total; r += o.batch) {
            size_t b = total - r < o.batch ? total - r : o.batch;
            if (flow_target_log_density(tg, b, x + r * dim, wt + r, NULL)
                != FLOW_OK) {
                cli_fail(l.ctx, cmd);
                goto out;
            }
        }
        for (size_t r = 0; r < total; r++) {
            wt[r] -= lp[r];
            if (wt[r] > mx)
                mx = wt[r];
        }
        for (size_t r = 0; r < total; r++)
            sum += exp((double)wt[r] - mx);
        for (size_t r = 0; r < total; r++)
            wt[r] = isfinite(mx) ? (flow_real)(exp((double)wt[r] - mx) / sum)
                  : 0;
    }
    rc = write_rows_w(l.ctx, cmd, &o, total, dim, "x", x,
                      o.with_logprob ? lp : NULL, k, cv, cd, wt);
out:
    free(wt);
    flow_target_free(tg);
    free(x);
    free(lp);
    free(cv);
    flow_data_free(cd);
    loaded_free(&l);
    return rc;
}

/* ------------------------------------------------------------ info */

static void info_usage(FILE *f)
{
    fputs("usage: flowkit info CKPT [--json]\n\n"
          "The checkpoint's toolkit version, precision, spec, parameters and\n"
          "training history.  Models with ode layers: `nfe`, the function\n"
          "evaluations per training step (forward and backward, all ode\n"
          "layers) in the last epoch of the history, and the evaluations of\n"
          "one density (forward) pass over a probe batch of 256 rows drawn\n"
          "from the model (seed 0).\n", f);
}

/* The "nfe" of the history's last epoch (the text is ours: written by
 * cmd_train); -1 when there is none. */
static double history_nfe(const char *hist)
{
    const char *p = hist, *q, *last = NULL;
    while (p && (q = strstr(p, "\"nfe\": ")) != NULL) {
        last = q + 7;
        p = last;
    }
    return last ? strtod(last, NULL) : -1;
}

/* NFE of one forward (density) pass over 256 rows sampled from the model
 * (seed 0): the ODE layers' evaluations at the current parameters; -1 on
 * failure or without ode layers (no context: conditional models skip). */
static double probe_nfe(flow_model *m)
{
    enum { PROBE = 256 };
    size_t d = flow_model_dim(m);
    flow_real *x = NULL, *lp = NULL;
    double nfe = -1;
    if (flow_model_nfe(m) < 0 || flow_model_context_dim(m) > 0)
        return -1;
    x = malloc(PROBE * d * sizeof *x);
    lp = malloc(PROBE * sizeof *lp);
    flow_model_seed(m, 0);
    if (x && lp && flow_model_sample(m, PROBE, NULL, x, NULL) == FLOW_OK
        && flow_model_log_prob(m, PROBE, x, NULL, lp) == FLOW_OK)
        nfe = flow_model_nfe(m);
    free(x);
    free(lp);
    return nfe;
}

int cmd_info(int argc, char **argv)
{
    const char *cmd = "flowkit info";
    static const char *const keys[] = {
        "format_version", "flowkit_version", "precision", "epoch", "step",
        "best_score", "spec_hash", "target", NULL};
    run_opts o;
    loaded l;
    int rc;
    if ((rc = parse_run(argc, argv, cmd, &o, info_usage, 2)) != 0)
        return rc < 0 ? 0 : rc;
    if (load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
        return 1;
    if (o.json) {
        printf("{\"checkpoint\": \"%s\", \"parameters\": %zu", o.ckpt,
               flow_model_num_params(l.model));
        for (const char *const *k = keys; *k; k++) {
            const char *v = flow_checkpoint_meta(l.ck, *k);
            if (v)
                printf(", \"%s\": \"%s\"", *k, v);
        }
        {
            double tn = history_nfe(flow_checkpoint_meta(l.ck, "history"));
            double pn = probe_nfe(l.model);
            if (tn >= 0)
                printf(", \"train_nfe\": %.9g", tn);
            if (pn >= 0)
                printf(", \"forward_nfe\": %.9g", pn);
        }
        printf(", \"history\": %s}\n", flow_checkpoint_meta(l.ck, "history")
               ? flow_checkpoint_meta(l.ck, "history") : "[]");
    } else {
        printf("checkpoint   %s\nparameters   %zu\nlayers       %zu\n", o.ckpt,
               flow_model_num_params(l.model),
               flow_model_num_layers(l.model));
        for (const char *const *k = keys; *k; k++) {
            const char *v = flow_checkpoint_meta(l.ck, *k);
            if (v)
                printf("%-12s %s\n", *k, v);
        }
        {
            double tn = history_nfe(flow_checkpoint_meta(l.ck, "history"));
            double pn = probe_nfe(l.model);
            if (tn >= 0)
                printf("nfe          %.4g per training step (last epoch, "
                       "forward and backward)\n", tn);
            if (pn >= 0)
                printf("nfe          %.4g per density pass (256 sampled "
                       "rows)\n", pn);
        }
        printf("history      %s\n\nspec:\n%s", flow_checkpoint_meta(l.ck,
               "history") ? flow_checkpoint_meta(l.ck, "history") : "[]",
               l.spec_source);
        flow_graph_print_report(flow_compile_graph(l.comp), stdout);
    }
    loaded_free(&l);
    return 0;
}
