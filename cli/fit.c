/* cli_fit.c - `flowkit fit`: variational (reverse-KL) training of a flow
 * against a target density, and its importance-sampling report (ELBO,
 * log Z with standard error, effective sample size).  docs/vi.md.  Exit
 * codes: 0 success, 1 error, 2 usage, 3 the fit diverged. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void fit_usage(FILE *f)
{
    fputs("usage: flowkit fit SPEC [--target T] -o CKPT [options]\n"
          "\n"
          "Fits the flow of SPEC to an unnormalised target density p~ by\n"
          "minimising KL(q || p~): samples z of the base are pushed through\n"
          "the sampling direction and the ELBO E_q[log p~(x) - log q(x)] is\n"
          "maximised with the reparameterisation gradient (Adam).  Then\n"
          "--eval-samples fresh samples estimate log Z and the effective\n"
          "sample size of the importance weights p~/q (docs/vi.md).\n"
          "\n"
          "  --target T           target, e.g. 'funnel(scale = 3)'; replaces\n"
          "                       the spec's `target` statement (targets come\n"
          "                       from plugins: `flowkit plugins`)\n"
          "  --steps N            optimisation steps (default 1000)\n"
          "  --batch B            samples per step (default 256)\n"
          "  --lr X               learning rate (default 1e-3)\n"
          "  --schedule S         constant | cosine (default constant)\n"
          "  --warmup N           linear warm-up steps (default 0)\n"
          "  --weight-decay X     L2 coefficient (default 0)\n"
          "  --clip X             clip the gradient's global norm (default off)\n"
          "  --anneal N           scale log p~ by min(1, 0.01 + step / N): a\n"
          "                       broad q first, against mode collapse\n"
          "                       (default 0: off)\n"
          "  --seed S             initialisation and sampling (default 0)\n"
          "  --threads T          worker threads taking the batch's blocks\n"
          "                       (default: FLOWKIT_THREADS, else the CPUs;\n"
          "                       any T gives the same bits)\n"
          "  --precision P        fp32 (default) or bf16-gemm: the conditioner\n"
          "                       nets' products in bf16 with float sums, on\n"
          "                       CPUs with AVX512-BF16 (docs/runtime.md)\n"
          "  --reproducible       samples drawn and gradients summed in blocks\n"
          "                       of 32: the same bits as under mpirun with\n"
          "                       any number of ranks (always on under\n"
          "                       mpirun; docs/distributed.md)\n"
          "  --eval-samples N     samples for the report (default 10000)\n"
          "  --log-every N        progress every N steps (default 100)\n"
          "  --resume CKPT        continue a fit from its checkpoint\n"
          "  --json               print the report as JSON on stdout\n"
          "  -o, --output CKPT    checkpoint to write (required); it stores\n"
          "                       the target, for `flowkit sample --weights`\n"
          "\n"
          "The spec's train { } section gives defaults for lr, batch, steps,\n"
          "schedule, warmup, weight_decay, clip and seed.  Under mpirun (a\n"
          "build with MPI) each rank draws its blocks of each batch; rank 0\n"
          "prints, computes the report and writes CKPT.  SIGINT or SIGTERM\n"
          "finishes the current step, writes CKPT with the training state\n"
          "and exits 130 or 143; --resume CKPT goes on.  Exit status 3: 10\n"
          "non-finite steps in a row stopped the fit (no checkpoint).\n", f);
}

typedef struct fit_opts {
    const char *spec, *target, *out, *resume;
    size_t steps, threads, eval_n, log_every;
    int precision;              /* --precision: flow_gemm_precision */
    uint64_t seed;
    int json, reproducible;
    flow_train_config cfg;
    int set_steps, set_batch, set_lr, set_schedule, set_warmup, set_wd,
        set_clip, set_seed;
} fit_opts;

static int parse_fit(int argc, char **argv, fit_opts *o)
{
    cli_args a = {argc, 1, argv, "flowkit fit", NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    flow_train_config_default(&o->cfg);
    o->cfg.batch = 256;
    o->steps = 1000;
    o->threads = 0;            /* cli_default_threads */
    o->eval_n = 10000;
    o->log_every = 100;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->spec)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->spec = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            fit_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "--target"))
            rc = (o->target = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--resume"))
            rc = (o->resume = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--steps")) {
            rc = cli_parse_size(&a, &o->steps, 1);
            o->set_steps = 1;
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
            else if (!strcmp(v, "constant") || !strcmp(v, "cosine"))
                o->cfg.schedule = v[1] == 'o' && v[2] == 's'
                                ? FLOW_LR_COSINE : FLOW_LR_CONSTANT;
            else
                rc = cli_usage_error(&a, "--schedule: '%s' is not constant "
                                     "or cosine", v);
        } else if (cli_opt_is(&a, "--warmup")) {
            rc = cli_parse_size(&a, &o->cfg.warmup_steps, 0);
            o->set_warmup = 1;
        } else if (cli_opt_is(&a, "--weight-decay")) {
            rc = cli_parse_real(&a, &o->cfg.weight_decay, 0, 1e3);
            o->set_wd = 1;
        } else if (cli_opt_is(&a, "--clip")) {
            rc = cli_parse_real(&a, &o->cfg.clip_norm, 0, 1e12);
            o->set_clip = 1;
        } else if (cli_opt_is(&a, "--anneal"))
            rc = cli_parse_size(&a, &o->cfg.anneal_steps, 0);
        else if (cli_opt_is(&a, "--seed")) {
            rc = cli_parse_u64(&a, &o->seed);
            o->set_seed = 1;
        } else if (cli_opt_is(&a, "--threads"))
            rc = cli_parse_range(&a, &o->threads, 1, CLI_MAX_THREADS);
        else if (cli_opt_is(&a, "--precision"))
            rc = cli_parse_precision(&a, &o->precision);
        else if (cli_opt_is(&a, "--reproducible"))
            o->reproducible = !(rc = cli_flag(&a));
        else if (cli_opt_is(&a, "--eval-samples"))
            rc = cli_parse_size(&a, &o->eval_n, 2);
        else if (cli_opt_is(&a, "--log-every"))
            rc = cli_parse_size(&a, &o->log_every, 1);
        else if (cli_opt_is(&a, "--json"))
            o->json = !(rc = cli_flag(&a));
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if ((rc = cli_default_threads(a.cmd, &o->threads)) != 0)
        return rc;
    if (!o->spec)
        return cli_usage_error(&a, "missing SPEC");
    if (!o->out)
        return cli_usage_error(&a, "missing -o CKPT");
    if (o->target && !o->target[strspn(o->target, " \t\n")])
        return cli_usage_error(&a, "--target is empty (give NAME or "
                               "NAME(attr = value, ...); `flowkit plugins` "
                               "lists the targets)");
    return 0;
}

/* train { } entries that mean something for a fit, under the flags. */
static void apply_train_section(const flow_graph *g, fit_opts *o)
{
    for (size_t i = 0; i < flow_graph_train_count(g); i++) {
        const flow_train_entry *e = flow_graph_train_get(g, i);
        double v = e->number;
        if (!e->is_number) {
            if (!strcmp(e->key, "schedule") && !o->set_schedule)
                o->cfg.schedule = !strcmp(e->text, "cosine")
                                ? FLOW_LR_COSINE : FLOW_LR_CONSTANT;
            continue;
        }
        if (!strcmp(e->key, "lr") && !o->set_lr)
            o->cfg.lr = v;
        else if (!strcmp(e->key, "batch") && !o->set_batch)
            o->cfg.batch = (size_t)v;
        else if (!strcmp(e->key, "steps") && !o->set_steps)
            o->steps = (size_t)v;
        else if (!strcmp(e->key, "warmup") && !o->set_warmup)
            o->cfg.warmup_steps = (size_t)v;
        else if (!strcmp(e->key, "weight_decay") && !o->set_wd)
            o->cfg.weight_decay = v;
        else if (!strcmp(e->key, "clip") && !o->set_clip)
            o->cfg.clip_norm = v;
        else if (!strcmp(e->key, "seed") && !o->set_seed)
            o->seed = (uint64_t)v;
    }
}


/* A JSON number, or null when not finite. */
static void jnum(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ", \"%s\": %.9g", key, v);
    else
        fprintf(f, ", \"%s\": null", key);
}

static void print_report(const fit_opts *o, const char *ttext,
                         const flow_train_state *st,
                         const flow_is_stats *s, double log_z_true,
                         double seconds)
{
    if (o->json) {
        printf("{\"checkpoint\": ");
        flow_json_string(stdout, o->out);
        printf(", \"target\": ");
        flow_json_string(stdout, ttext);
        printf(", \"steps\": %llu, \"skipped_steps\": %llu, "
               "\"samples\": %zu", (unsigned long long)st->step,
               (unsigned long long)st->skipped, s->n);
        jnum(stdout, "elbo", s->elbo);
        jnum(stdout, "elbo_se", s->elbo_se);
        jnum(stdout, "log_z", s->log_z);
        jnum(stdout, "log_z_se", s->log_z_se);
        jnum(stdout, "log_z_true", log_z_true);
        jnum(stdout, "ess", s->ess);
        jnum(stdout, "ess_per_sample", s->ess_per_sample);
        printf(", \"seconds\": %.3f}\n", seconds);
        return;
    }
    printf("target          %s\n", ttext);
    printf("elbo            %.6f +- %.6f\n", s->elbo, s->elbo_se);
    printf("log Z           %.6f +- %.6f", s->log_z, s->log_z_se);
    if (isfinite(log_z_true))
        printf("  (true %.6f, %+.2f s.e.)", log_z_true, s->log_z_se > 0
               ? (s->log_z - log_z_true) / s->log_z_se : 0.0);
    printf("\ness             %.1f of %zu samples (%.4f per sample)\n",
           s->ess, s->n, s->ess_per_sample);
}

/* v as JSON into buf: a number, or null when not finite. */
static const char *jval(char *buf, size_t cap, double v)
{
    if (isfinite(v))
        snprintf(buf, cap, "%.9g", v);
    else
        snprintf(buf, cap, "null");
    return buf;
}

/* Compiles SPEC (with --target), builds the model, the target and the
 * trainer; restores a --resume checkpoint. */
typedef struct fit_run {
    flow_ctx *ctx;
    flow_comm *comm;            /* this process alone, or MPI's ranks */
    int rank0;                  /* this process speaks and writes */
    flow_compilation *comp;
    flow_model *model;
    flow_target *target;
    flow_trainer *trainer;
    flow_checkpoint *ck;
    const char *spec_source;
    const char *ttext;
    cli_text hist;
} fit_run;

static void fit_free(fit_run *r)
{
    flow_trainer_free(r->trainer);
    flow_target_free(r->target);
    flow_model_free(r->model);
    flow_compile_free(r->comp);
    flow_checkpoint_free(r->ck);
    flow_comm_free(r->comm);
    flow_ctx_free(r->ctx);
    free(r->hist.s);
}

static int fit_setup(fit_run *r, fit_opts *o, const char *cmd)
{
    const flow_graph *g;
    const char *path;
    size_t len;
    if (!(r->ctx = cli_open_ctx(cmd)))
        return 1;
    if (!(r->comm = flow_comm_new(r->ctx)))
        return cli_fail(r->ctx, cmd);
    r->rank0 = flow_comm_rank(r->comm) == 0;
    if (!r->rank0)
        o->json = 0;
    if (!(r->comp = cli_compile_target(r->ctx, cmd, o->spec, NULL,
                                       o->target))
        || cli_check_output_sources(cmd, o->out, flow_compile_graph(r->comp)))
        return 1;
    g = flow_compile_graph(r->comp);
    if (!flow_graph_target_get(g)) {
        fprintf(stderr, "%s: %s declares no target: add `target NAME(...);` "
                "to the flow or give --target (`flowkit plugins` lists the "
                "targets)\n", cmd, o->spec);
        return CLI_EXIT_USAGE;
    }
    r->ttext = flow_graph_target_get(g)->text;
    apply_train_section(g, o);
    r->spec_source = flow_graph_source(g, 0, &path, &len);
    o->cfg.seed = o->seed;
    o->cfg.total_steps = o->steps;
    if (flow_graph_build_model(r->ctx, g, o->seed, &r->model) != FLOW_OK
        || flow_model_set_threads(r->model, o->threads) != FLOW_OK)
        return cli_fail(r->ctx, cmd);
    if (cli_set_precision(cmd, r->ctx, r->model, o->precision) != 0)
        return CLI_EXIT_USAGE;
    if (flow_graph_build_target(r->ctx, g, &r->target) != FLOW_OK
        || !(r->trainer = flow_trainer_new_target(r->model, &o->cfg,
                                                  r->target))
        || ((o->reproducible || !strcmp(flow_comm_kind(r->comm), "mpi"))
            && flow_trainer_set_comm(r->trainer, r->comm) != FLOW_OK))
        return cli_fail(r->ctx, cmd);
    /* the model's stream draws the samples: seed it apart from the
     * initialisation */
    flow_model_seed(r->model, o->seed ^ 0xf17f17f17ull);
    if (o->resume) {
        const char *h;
        if (flow_checkpoint_open(r->ctx, o->resume, &r->ck) != FLOW_OK)
            return cli_fail(r->ctx, cmd);
        if (cli_check_resume(r->ctx, cmd, r->ck, r->comp, o->spec, NULL,
                             NULL) != 0)
            return 1;
        if (flow_checkpoint_restore(r->ck, r->model, r->trainer) != FLOW_OK)
            return cli_fail(r->ctx, cmd);
        if ((h = flow_checkpoint_meta(r->ck, "history")) != NULL)
            cli_text_add(&r->hist, "%s", h);
        if (r->hist.len && r->hist.s[r->hist.len - 1] == ']')
            r->hist.s[--r->hist.len] = '\0';       /* reopen the array */
    }
    if (!r->hist.len)
        cli_text_add(&r->hist, "[");
    return 0;
}

/* Rank 0 writes the checkpoint; every rank holds the same state. */
static int save(fit_run *r, const fit_opts *o, const char *report)
{
    const char *meta[] = {"target", r->ttext, "objective", "reverse_kl",
                          report ? "fit_report" : NULL, report, NULL};
    int rc;
    if (!r->rank0)
        return FLOW_OK;
    cli_text_add(&r->hist, "]");
    rc = cli_save_checkpoint(r->ctx, r->model, r->trainer, r->comp, NULL,
                             r->hist.s, meta, o->out);
    r->hist.s[--r->hist.len] = '\0';
    return rc;
}

int cli_cmd_fit(int argc, char **argv)
{
    const char *cmd = "flowkit fit";
    fit_opts o;
    fit_run r;
    flow_train_state st;
    flow_is_stats s;
    double t0, win = 0, lz_true;
    size_t win_n = 0;
    uint64_t rng[6];
    char report[512];
    int rc, tty = isatty(2), ret = 1, stop = 0, many;

    if ((rc = parse_fit(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    /* as for train: --resume CKPT -o CKPT continues in place */
    if ((rc = cli_check_output(cmd, o.out, (const char *[]){o.spec,
                               o.resume && !strcmp(o.resume, "-") ? "-"
                               : NULL}, 2)) != 0)
        return rc;
    memset(&r, 0, sizeof r);
    /* as for train: a signal during the set-up ends the loop before its
     * first step, which saves the state */
    cli_catch_stop_signals(1);
    if ((rc = fit_setup(&r, &o, cmd)) != 0) {
        ret = rc;
        goto out;
    }
    many = flow_comm_size(r.comm) > 1;
    tty = tty && r.rank0;
    t0 = cli_now_s();
    flow_trainer_get_state(r.trainer, &st);
    while (st.step < o.steps && !(many ? stop : cli_stop_signal)) {
        double loss;
        uint64_t skipped = st.skipped, before = st.step;
        if (flow_trainer_step(r.trainer, &loss) != FLOW_OK) {
            flow_trainer_get_state(r.trainer, &st);
            if (tty)
                fputc('\n', stderr);
            if (st.skipped > skipped) {     /* the non-finite guard */
                if (r.rank0)    /* every rank stopped at the same step */
                    fprintf(stderr, "%s: %s; no checkpoint written\n", cmd,
                            flow_errmsg(r.ctx));
                ret = CLI_EXIT_DIVERGED;
                goto out;
            }
            goto failmsg;
        }
        if (many && cli_agree_stop(r.comm, &stop) != FLOW_OK)
            goto failmsg;
        if (isfinite(loss)) {
            win += -loss;
            win_n++;
        }
        flow_trainer_get_state(r.trainer, &st);
        if (st.step == before)
            continue;       /* a skipped step: nothing new to log */
        if (st.step % o.log_every == 0 || st.step == o.steps) {
            double elbo = win_n ? win / (double)win_n : NAN;
            if (tty)
                fprintf(stderr, "\rstep %llu/%zu elbo %.4f lr %.3g ",
                        (unsigned long long)st.step, o.steps, elbo,
                        flow_trainer_lr(r.trainer));
            else if (r.rank0)
                fprintf(stderr, "step %llu/%zu elbo %.5f time %.1fs\n",
                        (unsigned long long)st.step, o.steps, elbo,
                        cli_now_s() - t0);
            {
                char e[32];
                cli_text_add(&r.hist, "%s{\"step\": %llu, \"elbo\": %s}",
                             r.hist.len > 1 ? ", " : "",
                             (unsigned long long)st.step,
                             jval(e, sizeof e, elbo));
            }
            win = 0;
            win_n = 0;
        }
    }
    if (tty)
        fputc('\n', stderr);
    if (r.hist.failed) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        goto out;
    }
    /* with several ranks, the agreed signal: one that reached a rank
     * after the last step's agreement is not the others' */
    if (many ? stop : cli_stop_signal) {
        int sig = many ? stop : cli_stop_signal;
        cli_stop_saving();
        if (save(&r, &o, NULL) != FLOW_OK)
            goto failmsg;
        if (r.rank0)
            fprintf(stderr, "%s: interrupted by signal %d after step %llu; "
                    "wrote %s (continue with --resume %s)\n", cmd, sig,
                    (unsigned long long)st.step, o.out, o.out);
        ret = 128 + sig;
        goto out;
    }
    if (!r.rank0) {             /* the report is rank 0's alone */
        ret = 0;
        goto out;
    }
    /* the report draws from its own seeded stream, and the training
     * stream is put back for --resume */
    flow_model_get_rng(r.model, rng);
    flow_model_seed(r.model, o.seed ^ 0xe7a1e7a1ull);
    if (flow_model_importance(r.model, r.target, o.eval_n, 4096, &s, NULL,
                              NULL) != FLOW_OK)
        goto failmsg;
    flow_model_set_rng(r.model, rng);
    lz_true = flow_target_log_normalizer(r.target);
    {
        char a[32], b[32], c[32], d[32];
        snprintf(report, sizeof report, "{\"samples\": %zu, \"elbo\": %s, "
                 "\"log_z\": %s, \"log_z_se\": %s, \"ess_per_sample\": "
                 "%s}", s.n, jval(a, sizeof a, s.elbo),
                 jval(b, sizeof b, s.log_z), jval(c, sizeof c, s.log_z_se),
                 jval(d, sizeof d, s.ess_per_sample));
    }
    if (save(&r, &o, report) != FLOW_OK)
        goto failmsg;
    if (!o.json)
        fprintf(stderr, "%s: %llu steps%s; wrote %s\n", cmd,
                (unsigned long long)st.step, st.skipped
                ? " (some skipped: non-finite)" : "", o.out);
    print_report(&o, r.ttext, &st, &s, lz_true, cli_now_s() - t0);
    ret = 0;
    goto out;
failmsg:
    cli_fail(r.ctx, cmd);
out:
    cli_catch_stop_signals(0);
    /* a rank that fails ends them all: the others would wait in the next
     * collective (mpirun reports the abort and exits non-zero) */
    if (ret != 0 && ret < 128 && r.comm && flow_comm_size(r.comm) > 1)
        flow_comm_abort(r.comm, ret, NULL);
    fit_free(&r);
    return ret;
}
