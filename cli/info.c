/* info.c - `flowkit info`: what a checkpoint holds (spec, layers,
 * parameters, training history, cost per direction).  Exit codes: 0
 * success, 1 error, 2 usage. */
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

/* ------------------------------------------------------------ info */

static void info_usage(FILE *f)
{
    fputs("usage: flowkit info CKPT [--json]\n\n"
          "The checkpoint's toolkit version, precision, spec, parameters,\n"
          "epochs done and training history (a table; the JSON text with\n"
          "--json).  Models with ode layers: `nfe`, the function\n"
          "evaluations per training step (forward and backward, all ode\n"
          "layers) in the last epoch of the history, and the evaluations of\n"
          "one density (forward) pass over a probe batch of 256 rows drawn\n"
          "from the model (seed 0).\n", f);
}

/* The "nfe" of the history's last epoch (the text is ours: written by
 * cli_cmd_train); -1 when there is none. */
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

/* Whole epochs done.  The trainer counts an epoch when the next one
 * starts (the `epoch` entry: 19 after 20 epochs), so an epoch the
 * history closed one past it, not as a part (a --steps budget ending
 * inside it), is done too.  *part: the history's last record is such
 * a part. */
static unsigned long long epochs_done(const char *epoch, const char *hist,
                                      int *part)
{
    unsigned long long e0 = epoch ? strtoull(epoch, NULL, 10) : 0;
    cli_hist_rec r, last;
    const char *p = hist;
    int got = 0, k;
    *part = 0;
    while (p && (k = cli_hist_next(&p, &r)) == 1) {
        last = r;
        got = 1;
    }
    if (got && cli_hist_get(&last, "epoch") == (double)(e0 + 1)) {
        if (cli_hist_get(&last, "partial") == 1)
            *part = 1;
        else
            return e0 + 1;
    }
    return e0;
}

/* Counters are narrow, scores wide. */
static int col_width(const char *key)
{
    return !strcmp(key, "epoch") || !strcmp(key, "step") ? 7 : 14;
}

/* The history as a table, one row per record and one column per key
 * (first seen first); 0, or -1 when the text is not flowkit's records
 * (the caller prints the JSON then). */
static int history_table(const char *hist)
{
    enum { MAXC = CLI_HIST_MAX_KEYS };
    char cols[MAXC][CLI_HIST_KEY_LEN];
    size_t nc = 0, rows = 0;
    int part = 0;
    cli_hist_rec r;
    const char *p = hist;
    int k;
    while ((k = cli_hist_next(&p, &r)) == 1) {
        for (size_t i = 0; i < r.n; i++) {
            size_t c = 0;
            while (c < nc && strcmp(cols[c], r.key[i]))
                c++;
            if (c == nc && strcmp(r.key[i], "partial")) {
                if (nc == MAXC)
                    return -1;
                strcpy(cols[nc++], r.key[i]);
            }
        }
        rows++;
    }
    if (k < 0)
        return -1;
    if (!rows) {
        printf("history      none\n");
        return 0;
    }
    printf("history      %zu record%s\n", rows, rows == 1 ? "" : "s");
    for (size_t c = 0; c < nc; c++)
        printf("%*s", col_width(cols[c]), cols[c]);
    putchar('\n');
    p = hist;
    while (cli_hist_next(&p, &r) == 1) {
        part |= cli_hist_get(&r, "partial") == 1;
        for (size_t c = 0; c < nc; c++) {
            int w = col_width(cols[c]);
            double v = cli_hist_get(&r, cols[c]);
            size_t i = 0;
            while (i < r.n && strcmp(r.key[i], cols[c]))
                i++;
            if (i == r.n || isnan(v))
                printf("%*s", w, "-");
            else if ((!strcmp(cols[c], "epoch") || !strcmp(cols[c], "step"))
                     && v == floor(v) && fabs(v) < 1e15)
                printf("%*.0f%s", cli_hist_get(&r, "partial") == 1
                       && !strcmp(cols[c], "epoch") ? w - 1 : w, v,
                       cli_hist_get(&r, "partial") == 1
                       && !strcmp(cols[c], "epoch") ? "*" : "");
            else
                printf("%*.*g", w, fabs(v) < 1e5 ? 7 : 6, v);
        }
        putchar('\n');
    }
    if (part)
        printf("      * part of an epoch: the step budget ended inside it\n");
    return 0;
}

int cli_cmd_info(int argc, char **argv)
{
    const char *cmd = "flowkit info";
    static const char *const keys[] = {
        "format_version", "flowkit_version", "precision", "epoch", "step",
        "best_score", "spec_hash", "target", NULL};
    cli_run_opts o;
    cli_loaded l;
    int rc;
    if ((rc = cli_parse_run(argc, argv, cmd, &o, info_usage, 2)) != 0)
        return rc < 0 ? 0 : rc;
    if (cli_load_checkpoint(&l, cmd, o.ckpt, o.threads) != 0)
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
            int part;
            printf(", \"epochs_done\": %llu", epochs_done(
                       flow_checkpoint_meta(l.ck, "epoch"),
                       flow_checkpoint_meta(l.ck, "history"), &part));
            if (tn >= 0)
                printf(", \"train_nfe\": %.9g", tn);
            if (pn >= 0)
                printf(", \"forward_nfe\": %.9g", pn);
        }
        printf(", \"history\": %s}\n", flow_checkpoint_meta(l.ck, "history")
               ? flow_checkpoint_meta(l.ck, "history") : "[]");
    } else {
        const char *hist = flow_checkpoint_meta(l.ck, "history");
        printf("checkpoint   %s\nparameters   %zu\nlayers       %zu\n", o.ckpt,
               flow_model_num_params(l.model),
               flow_model_num_layers(l.model));
        for (const char *const *k = keys; *k; k++) {
            const char *v = flow_checkpoint_meta(l.ck, *k);
            int part;
            unsigned long long e;
            if (v && !strcmp(*k, "epoch")) {
                e = epochs_done(v, hist, &part);
                printf("epochs       %llu done", e);
                if (part)
                    printf(" (and part of epoch %llu: the step budget "
                           "ended inside it)", e + 1);
                putchar('\n');
            } else if (v)
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
        if (!hist)
            printf("history      none\n");
        else if (history_table(hist) != 0)
            printf("history      %s\n", hist);
        printf("\nspec:\n%s", l.spec_source);
        flow_graph_print_report(flow_compile_graph(l.comp), stdout);
    }
    cli_loaded_free(&l);
    return 0;
}
