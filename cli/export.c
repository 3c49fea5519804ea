/* export.c - `flowkit export`: a checkpoint's weights as a portable
 * safetensors file (docs/export.md), or with --slim as a checkpoint
 * without training state.  Exit codes: 0 success, 1 error, 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void export_usage(FILE *f)
{
    fputs("usage: flowkit export CKPT -o OUT [--slim]\n"
          "\n"
          "Writes the weights of the model in CKPT to OUT as a plain\n"
          "safetensors file that any safetensors reader loads: one named\n"
          "tensor per weight (layers.3.net.0.weight, ...), every derived\n"
          "constant a port needs (MADE masks, permutations, spline bounds)\n"
          "and the architecture as JSON in the metadata (docs/export.md).\n"
          "A layer whose type has no export hook gets its flat parameters\n"
          "only, with a warning.\n"
          "\n"
          "  -o OUT        output file (required); written atomically\n"
          "  --slim        write a flowkit checkpoint instead, without the\n"
          "                optimizer state and best parameters: eval,\n"
          "                sample, info ... read it; train --resume refuses\n"
          "                it (start a new run from the spec instead)\n",
          f);
}

typedef struct export_opts {
    const char *ckpt, *out;
    int slim;
} export_opts;

static int parse_export(int argc, char **argv, export_opts *o)
{
    cli_args a = {argc, 1, argv, "flowkit export", NULL, NULL};
    const char *pos;
    int k, rc = 0;
    memset(o, 0, sizeof *o);
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (o->ckpt)
                return cli_usage_error(&a, "unexpected argument '%s'", pos);
            o->ckpt = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            export_usage(stdout);
            return -1;
        } else if (cli_opt_is(&a, "-o") || cli_opt_is(&a, "--output"))
            rc = (o->out = cli_opt_value(&a)) ? 0 : CLI_EXIT_USAGE;
        else if (cli_opt_is(&a, "--slim"))
            rc = cli_flag(&a) ? CLI_EXIT_USAGE : (o->slim = 1, 0);
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if (!o->ckpt)
        return cli_usage_error(&a, "missing CKPT");
    if (!o->out)
        return cli_usage_error(&a, "missing -o OUT");
    return 0;
}

static void warn_line(void *arg, const char *line)
{
    fprintf(stderr, "%s: warning: %s\n", (const char *)arg, line);
}

/* 1 when metadata `key` is a decimal count (stored in *v). */
static int meta_count(const flow_checkpoint *ck, const char *key, uint64_t *v)
{
    const char *s = flow_checkpoint_meta(ck, key);
    char *end;
    if (!s || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    *v = strtoull(s, &end, 10);
    return !*end && !errno;
}

/* The checkpoint again with its sources, history, columns and metadata,
 * without the trainer's state. */
static int write_slim(cli_loaded *l, const char *out)
{
    static const char *const keys[] = {"target", "objective", "fit_report",
                                       NULL};
    const char *meta[2 * 3 + 1];
    size_t nm = 0, nf, nd, nc;
    flow_checkpoint_info in;
    memset(&in, 0, sizeof in);
    in.struct_size = sizeof in;
    in.files = flow_checkpoint_sources(l->ck, &nf);
    in.n_files = nf;
    in.history_json = flow_checkpoint_meta(l->ck, "history");
    for (size_t i = 0; keys[i]; i++) {
        const char *v = flow_checkpoint_meta(l->ck, keys[i]);
        if (v) {
            meta[nm++] = keys[i];
            meta[nm++] = v;
        }
    }
    meta[nm] = NULL;
    in.meta = meta;
    in.columns = flow_checkpoint_columns(l->ck, &nd, &nc);
    /* the counts say how much training the parameters had */
    in.has_counts = meta_count(l->ck, "epoch", &in.epoch)
                    && meta_count(l->ck, "step", &in.step);
    return flow_checkpoint_write(l->model, NULL, &in, out);
}

int cli_cmd_export(int argc, char **argv)
{
    const char *cmd = "flowkit export";
    export_opts o;
    cli_loaded l;
    int rc;
    if ((rc = parse_export(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    if ((rc = cli_check_output(cmd, o.out, &o.ckpt, 1)) != 0)
        return rc;
    if (cli_load_checkpoint(&l, cmd, o.ckpt, 1) != 0)
        return 1;
    if (o.slim)
        rc = write_slim(&l, o.out);
    else
        rc = flow_model_export(l.model, l.spec_source, o.out, warn_line,
                               (void *)cmd);
    if (rc != FLOW_OK)
        rc = cli_fail(l.ctx, cmd);
    cli_loaded_free(&l);
    return rc;
}
