/* sample.c - `flowkit sample`: draws from a trained model (per context row
 * for a conditional one), optionally with log-densities or importance
 * weights against a target.  Exit codes: 0 success, 1 error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void sample_usage(FILE *f)
{
    fputs("usage: flowkit sample CKPT -n N [--seed S] [--with-logprob]\n"
          "                      [--weights [--target T]]\n"
          "                      [--context FILE] [-o OUT] [--format csv|npy]\n"
          "                      [--shape C,H,W] [--range LO,HI]\n"
          "                      [--temperature T]"
          " [--precision fp32|bf16-gemm]\n\n"
          "Draws N samples (for a conditional model, N for each row of the\n"
          "--context file, which is appended to each sample).  With\n"
          "--with-logprob a column is each sample's log-density.  With\n"
          "--weights (a model fitted to a target by `flowkit fit`) a last\n"
          "column `weight` holds self-normalised importance weights\n"
          "p~(x)/q(x), summing to 1 over the N samples, against the target\n"
          "stored in the checkpoint or the one --target names.\n"
          "Images: a model of images (input real[C, H, W]) samples images\n"
          "of that shape, its pixels on the input's bounds (in [LO, HI]);\n"
          "with --shape C,H,W each sample is an image [C, H, W];\n"
          "OUT *.npy is then (N, C, H, W), *.idx unsigned bytes (values\n"
          "rounded, clamped to 0..255), *.png a grid of the images (C 1\n"
          "or 3); --range LO,HI maps LO..HI onto pixels 0..255.\n"
          "--temperature T (> 0, default 1) scales the standard deviation\n"
          "of every base (the output's and each exit's) by T about its\n"
          "center, as Glow samples: T < 1 gives typical, smoother samples.\n"
          "The log-densities are still the model's own (T = 1).\n", f);
}

/* An image model's samples are images of its input's shape, their pixel
 * range the input's declared bounds (`input x : real[1, 28, 28] in [0,
 * 255]`), unless --shape and --range say otherwise. */
static void default_image_shape(const cli_loaded *l, cli_run_opts *o)
{
    const flow_graph *g = flow_compile_graph(l->comp);
    size_t shp[4];
    double lo, hi;
    if (o->shape_rank || flow_graph_input_shape(g, shp) != 3)
        return;
    o->shape_rank = 3;
    memcpy(o->shape, shp, sizeof o->shape);
    if (!o->has_range && flow_graph_input_bounds(g, &lo, &hi) && lo < hi) {
        o->range_lo = lo;
        o->range_hi = hi;
        o->has_range = 1;
    }
}

int cli_cmd_sample(int argc, char **argv)
{
    const char *cmd = "flowkit sample";
    cli_run_opts o;
    cli_loaded l;
    flow_data *cd = NULL;
    flow_real *x = NULL, *lp = NULL, *cv = NULL;
    size_t dim, k, m = 1, total;
    int rc = 1;
    flow_target *tg = NULL;
    flow_real *wt = NULL;
    if ((rc = cli_parse_run(argc, argv, cmd, &o, sample_usage, 1)) != 0)
        return rc < 0 ? 0 : rc;
    if ((rc = cli_check_output(cmd, o.out,
                               (const char *[]){o.ckpt, o.ctxfile}, 2)) != 0)
        return rc;
    if (cli_load_checkpoint_target(&l, cmd, o.ckpt, o.threads, o.weights
                               ? (o.target ? o.target : "") : NULL) != 0)
        return 1;
    if ((rc = cli_set_precision(cmd, l.ctx, l.model, o.precision)) != 0)
        goto out;
    rc = 1;
    if (o.weights
        && flow_graph_build_target(l.ctx, flow_compile_graph(l.comp), &tg)
           != FLOW_OK) {
        fprintf(stderr, "%s: --weights: %s\n", cmd, flow_errmsg(l.ctx));
        goto out;
    }
    dim = flow_model_dim(l.model);
    k = flow_model_context_dim(l.model);
    default_image_shape(&l, &o);
    if (o.shape_rank) {
        size_t prod = 1;
        for (int r = 0; r < o.shape_rank && prod; r++)
            prod = o.shape[r] > dim / prod ? 0 : prod * o.shape[r];
        if (prod != dim) {
            fprintf(stderr, "%s: --shape does not hold the %zu values of a "
                    "sample of the model\n", cmd, dim);
            rc = CLI_EXIT_USAGE;
            goto out;
        }
    }
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
        if (flow_data_note(cd))
            fprintf(stderr, "%s: warning: %s\n", cmd, flow_data_note(cd));
        m = flow_data_rows(cd);
    }
    if (o.n > SIZE_MAX / 8 / (dim + k + 1) / m) {
        fprintf(stderr, "%s: -n %zu is too large\n", cmd, o.n);
        goto out;
    }
    total = o.n * m;
    x = malloc(total * dim * sizeof *x);
    lp = malloc(total * sizeof *lp);
    wt = tg ? malloc(total * sizeof *wt) : NULL;
    cv = k ? malloc(total * k * sizeof *cv) : NULL;
    if (!x || !lp || (tg && !wt) || (k && !cv)) {
        size_t per = dim + k + 1 + (tg != NULL);    /* values per sample */
        fprintf(stderr, "%s: out of memory for %zu samples of %zu values "
                "(%.3g GB): lower -n\n", cmd, total, per,
                (double)total * (double)per * (double)sizeof *x / 1e9);
        goto out;
    }
    for (size_t j = 0; j < total; j++)
        if (k)
            memcpy(cv + j * k, flow_data_values(cd) + (j / o.n) * k,
                   k * sizeof *cv);
    flow_model_seed(l.model, o.seed);
    for (size_t r = 0; r < total; r += o.batch) {
        size_t b = total - r < o.batch ? total - r : o.batch;
        /* log-densities only where they are written or weigh the
         * samples: without them the layers skip their log-dets (the same
         * samples, bit for bit) */
        if (flow_model_sample_tempered(l.model, b, o.temperature,
                                       k ? cv + r * k : NULL, x + r * dim,
                                       o.with_logprob || tg ? lp + r : NULL)
            != FLOW_OK) {
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
    o.xnames = l.columns;
    rc = cli_write_rows(l.ctx, cmd, &o, total, dim, "x", x,
                      o.with_logprob ? lp : NULL, k, cv, cd, wt);
out:
    free(wt);
    flow_target_free(tg);
    free(x);
    free(lp);
    free(cv);
    flow_data_free(cd);
    cli_loaded_free(&l);
    return rc;
}
