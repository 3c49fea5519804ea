/* flowkit.c - the `flowkit` command: subcommand dispatch and the commands
 * that need no model (version, plugins).  The others live in one file
 * per subcommand family (cli.h lists them).  Exit codes: 0 success, 1 error,
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
        flow_json_string(stdout, flow_plugin_file(ctx, i));
        printf(", \"name\": ");
        flow_json_string(stdout, p->name);
        printf(", \"version\": ");
        flow_json_string(stdout, p->version);
        printf(", \"layers\": [");
        for (size_t j = 0; j < p->n_layers; j++) {
            printf("%s{\"name\": ", j ? ", " : "");
            flow_json_string(stdout, p->layers[j]->name);
            printf(", \"summary\": ");
            flow_json_string(stdout, p->layers[j]->summary);
            printf("}");
        }
        printf("], \"targets\": [");
        for (size_t j = 0; j < p->n_targets; j++) {
            printf("%s{\"name\": ", j ? ", " : "");
            flow_json_string(stdout, p->targets[j]->name);
            printf(", \"summary\": ");
            flow_json_string(stdout, p->targets[j]->summary);
            printf("}");
        }
        printf("]}");
    }
    printf("]}\n");
}

static int cli_cmd_plugins(int argc, char **argv)
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
            return CLI_EXIT_USAGE;
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

int main(int argc, char **argv)
{
    const char *cmd;
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
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
        return cli_cmd_plugins(argc - 1, argv + 1);
    if (!strcmp(cmd, "data"))
        return cli_cmd_data(argc - 1, argv + 1);
    if (!strcmp(cmd, "compare"))
        return cli_cmd_compare(argc - 1, argv + 1);
    if (!strcmp(cmd, "hdr"))
        return cli_cmd_hdr(argc - 1, argv + 1);
    {
        static const struct {
            const char *name;
            int (*fn)(int, char **);
        } cmds[] = {{"train", cli_cmd_train},     {"eval", cli_cmd_eval},
                    {"logprob", cli_cmd_logprob}, {"sample", cli_cmd_sample},
                    {"encode", cli_cmd_encode},   {"decode", cli_cmd_decode},
                    {"info", cli_cmd_info},       {"check", cli_cmd_check},
                    {"fit", cli_cmd_fit}};
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(cmd, cmds[i].name))
                return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "flowkit: unknown command '%s' (try 'flowkit --help')\n",
            cmd);
    return CLI_EXIT_USAGE;
}
