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
    cli_loaded_free(&l);
    return 0;
}
