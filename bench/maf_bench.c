/* maf_bench.c - times one spec (bench/maf64.flow) the way bench/README.md's
 * "maf64" section reports it: training steps/s (Adam, random batches of
 * Gaussian rows), log-density throughput at one batch size and sampling
 * throughput.  Not a test; the figures only mean something next to
 * bench/maf64_torch.py run in the same session.
 *
 *   FLOW_PLUGIN_PATH=build/default/plugins/.libs \
 *     build/default/bench/maf_bench bench/maf64.flow --threads 2
 *
 * prints one JSON line.  --only train|logprob|sample runs one phase (its
 * peak resident memory is then that phase's). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "flow/flow.h"
#include "flow/flowc.h"

#include "clock.h"

static void usage(void)
{
    fputs("usage: maf_bench SPEC [--threads T] [--batch B] [--steps N]\n"
          "                 [--logprob-batch M] [--logprob-reps R]\n"
          "                 [--sample-n S] [--sample-reps R] [--rows N]\n"
          "                 [--only train|logprob|sample]\n", stderr);
}

static int arg_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v == 0)
        return -1;
    *out = (size_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *spec = NULL, *only = NULL;
    size_t threads = 1, batch = 256, steps = 100, lpb = 4096, lpr = 10;
    size_t sn = 1024, sr = 3, rows = 20000, d;
    flow_ctx *ctx = NULL;
    flow_compilation *comp = NULL;
    flow_model *m = NULL;
    flow_trainer *tr = NULL;
    flow_real *x = NULL, *buf = NULL;
    flow_train_config cfg;
    struct rusage ru;
    double t0, c0, train_cpu = 0, loss = 0, train_sps = 0, lp_sps = 0, s_sps = 0;
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        size_t *dst = NULL;
        if (o[0] != '-') {
            spec = o;
            continue;
        }
        if (!strcmp(o, "--threads"))
            dst = &threads;
        else if (!strcmp(o, "--batch"))
            dst = &batch;
        else if (!strcmp(o, "--steps"))
            dst = &steps;
        else if (!strcmp(o, "--logprob-batch"))
            dst = &lpb;
        else if (!strcmp(o, "--logprob-reps"))
            dst = &lpr;
        else if (!strcmp(o, "--sample-n"))
            dst = &sn;
        else if (!strcmp(o, "--sample-reps"))
            dst = &sr;
        else if (!strcmp(o, "--rows"))
            dst = &rows;
        else if (!strcmp(o, "--only") && v) {
            only = v;
            i++;
            continue;
        }
        if (!dst || !v || arg_size(v, dst) != 0) {
            usage();
            return 2;
        }
        i++;
    }
    if (!spec) {
        usage();
        return 2;
    }
    if (!(ctx = flow_ctx_new()) || flow_plugin_load_all(ctx) != FLOW_OK)
        goto fail;
    if (!(comp = flow_compile_file(ctx, spec)))
        goto fail;
    if (flow_compile_errors(comp) || !flow_compile_graph(comp)) {
        flow_compile_print_diags(comp, stderr, FLOW_DIAG_TEXT);
        goto out;
    }
    if (flow_graph_build_model(ctx, flow_compile_graph(comp), 0, &m)
            != FLOW_OK
        || flow_model_set_threads(m, threads) != FLOW_OK)
        goto fail;
    d = flow_model_dim(m);
    {
        size_t big = rows * d;
        if (lpb * d > big)
            big = lpb * d;
        if (sn * d > big)
            big = sn * d;
        x = malloc(rows * d * sizeof *x);
        buf = malloc((big + lpb + sn) * sizeof *buf);
        if (!x || !buf)
            goto out;
    }
    {   /* standard normal rows (Box-Muller over a 64-bit LCG, Knuth's
         * MMIX constants): the figures do not depend on the data */
        uint64_t st = 7;
        for (size_t i = 0; i < rows * d; i += 2) {
            double u1, u2, r;
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            u1 = ((double)(st >> 11) + 0.5) / 9007199254740992.0;
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            u2 = ((double)(st >> 11) + 0.5) / 9007199254740992.0;
            r = sqrt(-2 * log(u1));
            x[i] = (flow_real)(r * cos(6.283185307179586 * u2));
            if (i + 1 < rows * d)
                x[i + 1] = (flow_real)(r * sin(6.283185307179586 * u2));
        }
    }
    flow_train_config_default(&cfg);
    cfg.batch = batch;
    cfg.lr = 1e-3;
    if (!(tr = flow_trainer_new(m, &cfg, x, NULL, rows)))
        goto fail;
    if (!only || !strcmp(only, "train")) {
        for (int i = 0; i < 3; i++)          /* warm-up */
            if (flow_trainer_step(tr, &loss) != FLOW_OK)
                goto fail;
        t0 = now_s();
        c0 = cpu_s();
        for (size_t i = 0; i < steps; i++)
            if (flow_trainer_step(tr, &loss) != FLOW_OK)
                goto fail;
        train_sps = (double)steps / (now_s() - t0);
        train_cpu = (cpu_s() - c0) / (double)steps;
    } else {
        /* a few steps so that the last MADE layers are not zero */
        for (int i = 0; i < 3; i++)
            if (flow_trainer_step(tr, &loss) != FLOW_OK)
                goto fail;
    }
    if (!only || !strcmp(only, "logprob")) {
        if (lpb > rows) {
            fprintf(stderr, "maf_bench: --logprob-batch > --rows\n");
            goto out;
        }
        if (flow_model_log_prob(m, lpb, x, NULL, buf) != FLOW_OK)
            goto fail;
        t0 = now_s();
        for (size_t i = 0; i < lpr; i++)
            if (flow_model_log_prob(m, lpb, x, NULL, buf) != FLOW_OK)
                goto fail;
        lp_sps = (double)(lpb * lpr) / (now_s() - t0);
    }
    if (!only || !strcmp(only, "sample")) {
        t0 = now_s();
        for (size_t i = 0; i < sr; i++)
            if (flow_model_sample(m, sn, NULL, buf, NULL) != FLOW_OK)
                goto fail;
        s_sps = (double)(sn * sr) / (now_s() - t0);
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"spec\": \"%s\", \"precision\": \"%s\", \"threads\": %zu, "
           "\"batch\": %zu, \"train_steps_per_s\": %.3f, \"train_cpu_ms_per_step\": "
           "%.2f, \"final_loss\": "
           "%.4f, \"logprob_batch\": %zu, \"logprob_samples_per_s\": %.1f, "
           "\"sample_n\": %zu, \"sample_samples_per_s\": %.1f, "
           "\"peak_rss_kib\": %ld}\n", spec, flow_precision(), threads,
           batch, train_sps, 1e3 * train_cpu, loss, lpb, lp_sps, sn, s_sps, ru.ru_maxrss);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "maf_bench: %s\n", ctx ? flow_errmsg(ctx) : "no memory");
out:
    flow_trainer_free(tr);
    flow_model_free(m);
    flow_compile_free(comp);
    flow_ctx_free(ctx);
    free(x);
    free(buf);
    return rc;
}
