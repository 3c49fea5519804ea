/* flowkit.c - the `flowkit` command: subcommand dispatch and the commands
 * that need no model (version, plugins).  Exit codes: 0 success, 1 error,
 * 2 usage error. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fputs("usage: flowkit COMMAND [ARGS...]\n"
          "\n"
          "Normalizing flows with exact densities.\n"
          "\n"
          "commands:\n"
          "  train SPEC --data F -o CKPT   fit a model by maximum likelihood\n"
          "  fit SPEC --target T -o CKPT   fit a model to a target density\n"
          "                                (reverse KL; 'flowkit fit --help')\n"
          "  eval CKPT --data F            mean log-likelihood, std. error,\n"
          "                                bits/dim\n"
          "  logprob CKPT --data F         log-density of each row\n"
          "  sample CKPT -n N              draw samples (--with-logprob)\n"
          "  encode CKPT --data F          data -> latent\n"
          "  decode CKPT --data Z          latent -> data\n"
          "  info CKPT                     spec, parameters, history\n"
          "  compare CKPT CKPT... --data F ranked mean log-likelihoods, paired\n"
          "                                differences and their confidence\n"
          "  hdr CKPT [--data F]           highest-density region threshold;\n"
          "                                per row: inside?, density quantile\n"
          "  check TYPE|SPEC|PLUGIN.so     numerical conformance checks of\n"
          "                                layers ('flowkit check --help')\n"
          "  plugins [--json]   list plugin files found and the layer and\n"
          "                     target types they provide\n"
          "  data NAME -n N     draw a built-in data set (moons, 8gaussians,\n"
          "                     ...; 'flowkit data --help')\n"
          "  help               this text\n"
          "\n"
          "options:\n"
          "  --version          print the version and precision, then exit\n"
          "  --help             this text\n"
          "\n"
          "environment:\n"
          "  FLOW_PLUGIN_PATH   colon-separated directories searched for\n"
          "                     plugins before the installed directory\n",
          f);
}

static void plugins_text(const flow_ctx *ctx)
{
    size_t n = flow_plugin_count(ctx);
    if (n == 0)
        printf("no plugins found\n");
    for (size_t i = 0; i < n; i++) {
        const flow_plugin_info *p = flow_plugin_get(ctx, i);
        printf("%s  (%s %s)\n", flow_plugin_file(ctx, i), p->name,
               p->version ? p->version : "");
        for (size_t j = 0; j < p->n_layers; j++)
            printf("  %-14s %s\n", p->layers[j]->name,
                   p->layers[j]->summary ? p->layers[j]->summary : "");
        for (size_t j = 0; j < p->n_targets; j++)
            printf("  %-14s target: %s\n", p->targets[j]->name,
                   p->targets[j]->summary ? p->targets[j]->summary : "");
    }
}

static void plugins_json(const flow_ctx *ctx)
{
    size_t n = flow_plugin_count(ctx);
    printf("{\"plugins\": [");
    for (size_t i = 0; i < n; i++) {
        const flow_plugin_info *p = flow_plugin_get(ctx, i);
        printf("%s{\"file\": ", i ? ", " : "");
        cli_json_str(stdout, flow_plugin_file(ctx, i));
        printf(", \"name\": ");
        cli_json_str(stdout, p->name);
        printf(", \"version\": ");
        cli_json_str(stdout, p->version);
        printf(", \"layers\": [");
        for (size_t j = 0; j < p->n_layers; j++) {
            printf("%s{\"name\": ", j ? ", " : "");
            cli_json_str(stdout, p->layers[j]->name);
            printf(", \"summary\": ");
            cli_json_str(stdout, p->layers[j]->summary);
            printf("}");
        }
        printf("], \"targets\": [");
        for (size_t j = 0; j < p->n_targets; j++) {
            printf("%s{\"name\": ", j ? ", " : "");
            cli_json_str(stdout, p->targets[j]->name);
            printf(", \"summary\": ");
            cli_json_str(stdout, p->targets[j]->summary);
            printf("}");
        }
        printf("]}");
    }
    printf("]}\n");
}

static int cmd_plugins(int argc, char **argv)
{
    int json = 0, rc;
    flow_ctx *ctx;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: flowkit plugins [--json]\n\n"
                 "Loads every plugin in FLOW_PLUGIN_PATH and the installed\n"
                 "plugin directory and lists the layer types each provides.");
            return 0;
        } else {
            fprintf(stderr, "flowkit plugins: unknown option '%s'\n",
                    argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!(ctx = flow_ctx_new())) {
        fputs("flowkit: out of memory\n", stderr);
        return 1;
    }
    rc = flow_plugin_load_all(ctx);
    if (rc != FLOW_OK) {
        fprintf(stderr, "flowkit: %s\n", flow_errmsg(ctx));
        flow_ctx_free(ctx);
        return 1;
    }
    if (json)
        plugins_json(ctx);
    else
        plugins_text(ctx);
    flow_ctx_free(ctx);
    return 0;
}

/* --- flowkit data: the built-in data sets ----------------------------- */

static void data_usage(FILE *f)
{
    fputs("usage: flowkit data NAME -n N [--seed S] [--with-logprob] "
          "[--labels]\n"
          "                    [-o FILE|-] [--format csv|npy] [--no-header]\n"
          "                    [--dim D] [--components K] [--means-seed M]\n"
          "       flowkit data --list\n"
          "\n"
          "Draws N samples of a built-in data set (docs/formats.md) and\n"
          "writes them as CSV (default, with a header row) or NPY to FILE\n"
          "or stdout.\n"
          "\n"
          "  -n N             number of samples (required)\n"
          "  --seed S         random seed (default 0): same seed, same bits\n"
          "  --with-logprob   append the true log-density (nats) as a last\n"
          "                   column; 8gaussians, checkerboard and gmm only\n"
          "  --labels         8gaussians: append the component index as 8\n"
          "                   one-hot columns label0..label7 (context for\n"
          "                   conditional models)\n"
          "  -o FILE          output file (default '-': stdout); written\n"
          "                   atomically\n"
          "  --format F       csv or npy (default: npy for *.npy, else csv)\n"
          "  --no-header      CSV without the header row\n"
          "  --dim D, --components K, --means-seed M\n"
          "                   gmm: dimension (2), components (8) and the\n"
          "                   seed of the component means (1)\n", f);
}

/* Parses a decimal unsigned integer; 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

static int cmd_data(int argc, char **argv)
{
    flow_dataset_params p;
    const char *out = "-", *fmt = NULL;
    int header = 1, have_n = 0, rc;
    uint64_t v;
    flow_ctx *ctx;
    flow_data *data = NULL;
    flow_data_format format = FLOW_DATA_AUTO;

    memset(&p, 0, sizeof p);
    p.means_seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        /* options that take a value */
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            data_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            for (const char *const *n = flow_dataset_names(); *n; n++)
                puts(*n);
            return 0;
        } else if (!strcmp(a, "--with-logprob")) {
            p.with_logprob = 1;
        } else if (!strcmp(a, "--labels")) {
            p.labels = 1;
        } else if (!strcmp(a, "--no-header")) {
            header = 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!val)
                goto missing;
            out = val;
            i++;
        } else if (!strcmp(a, "--format")) {
            if (!val)
                goto missing;
            fmt = val;
            i++;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--seed")
                   || !strcmp(a, "--dim") || !strcmp(a, "--components")
                   || !strcmp(a, "--means-seed")) {
            if (!val)
                goto missing;
            if (parse_u64(val, &v) || v > SIZE_MAX) {
                fprintf(stderr, "flowkit data: %s: '%s' is not a "
                        "non-negative integer\n", a, val);
                return EXIT_USAGE;
            }
            if (!strcmp(a, "-n"))
                p.n = (size_t)v, have_n = 1;
            else if (!strcmp(a, "--seed"))
                p.seed = v;
            else if (!strcmp(a, "--dim"))
                p.dim = (size_t)v;
            else if (!strcmp(a, "--components"))
                p.components = (size_t)v;
            else
                p.means_seed = v;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "flowkit data: unknown option '%s'\n", a);
            return EXIT_USAGE;
        } else if (!p.name) {
            p.name = a;
        } else {
            fprintf(stderr, "flowkit data: unexpected argument '%s'\n", a);
            return EXIT_USAGE;
        }
        continue;
missing:
        fprintf(stderr, "flowkit data: option '%s' needs a value\n", a);
        return EXIT_USAGE;
    }
    if (!p.name || !have_n) {
        fprintf(stderr, "flowkit data: %s (try 'flowkit data --help')\n",
                p.name ? "-n N is required" : "a data set NAME is required");
        return EXIT_USAGE;
    }
    if (fmt && !strcmp(fmt, "csv"))
        format = FLOW_DATA_CSV;
    else if (fmt && !strcmp(fmt, "npy"))
        format = FLOW_DATA_NPY;
    else if (fmt) {
        fprintf(stderr, "flowkit data: unknown format '%s' (csv or npy)\n",
                fmt);
        return EXIT_USAGE;
    }
    if (!(ctx = flow_ctx_new())) {
        fputs("flowkit: out of memory\n", stderr);
        return 1;
    }
    rc = flow_data_generate(ctx, &p, &data);
    if (rc == FLOW_OK)
        rc = flow_data_write(ctx, data, out, format, header);
    if (rc != FLOW_OK)
        fprintf(stderr, "flowkit data: %s\n", flow_errmsg(ctx));
    flow_data_free(data);
    flow_ctx_free(ctx);
    /* bad names and option combinations are usage errors */
    if (rc == FLOW_ERR_INVAL || rc == FLOW_ERR_UNSUPPORTED)
        return EXIT_USAGE;
    return rc == FLOW_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *cmd;
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("flowkit %s (%s, plugin ABI %u)\n", flow_version(),
               flow_precision(), FLOW_PLUGIN_ABI_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "plugins"))
        return cmd_plugins(argc - 1, argv + 1);
    if (!strcmp(cmd, "data"))
        return cmd_data(argc - 1, argv + 1);
    if (!strcmp(cmd, "compare"))
        return cmd_compare(argc - 1, argv + 1);
    if (!strcmp(cmd, "hdr"))
        return cmd_hdr(argc - 1, argv + 1);
    {
        static const struct {
            const char *name;
            int (*fn)(int, char **);
        } cmds[] = {{"train", cmd_train},     {"eval", cmd_eval},
                    {"logprob", cmd_logprob}, {"sample", cmd_sample},
                    {"encode", cmd_encode},   {"decode", cmd_decode},
                    {"info", cmd_info},       {"check", cmd_check},
                    {"fit", cmd_fit}};
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(cmd, cmds[i].name))
                return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "flowkit: unknown command '%s' (try 'flowkit --help')\n",
            cmd);
    return EXIT_USAGE;
}
