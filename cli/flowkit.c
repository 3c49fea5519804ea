/* flowkit.c - the `flowkit` command: subcommand dispatch, help and the
 * commands that need no model (version, plugins, layers).  The others
 * live in one file per subcommand family (cli.h lists them).  Exit
 * codes: 0 success, 1 error, 2 usage error. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "help.h"

static int cmd_help(int argc, char **argv);
static int cmd_version(int argc, char **argv);
static int cmd_plugins(int argc, char **argv);
static int cmd_layers(int argc, char **argv);

/* Every command, in the order `flowkit help` lists them. */
static const struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"train", cli_cmd_train, "fit a model to data by maximum likelihood"},
    {"fit", cli_cmd_fit, "fit a model to a target density (reverse KL)"},
    {"eval", cli_cmd_eval, "mean log-likelihood, standard error, bits/dim"},
    {"logprob", cli_cmd_logprob, "log-density of each row"},
    {"sample", cli_cmd_sample, "draw samples (with log-densities, weights)"},
    {"encode", cli_cmd_encode, "data -> latent"},
    {"decode", cli_cmd_decode, "latent -> data"},
    {"info", cli_cmd_info, "a checkpoint's spec, parameters and history"},
    {"export", cli_cmd_export,
     "portable weights (safetensors); --slim: no training state"},
    {"compare", cli_cmd_compare,
     "rank models by mean log-likelihood, with paired differences"},
    {"hdr", cli_cmd_hdr, "highest-density region threshold and membership"},
    {"plot", cli_cmd_plot,
     "pictures: density heat map, pair plot, training curves, images"},
    {"check", cli_cmd_check, "numerical conformance checks of layers"},
    {"plugins", cmd_plugins,
     "plugins found and their types; a layer type's attributes"},
    {"layers", cmd_layers, "layer types, or one type's attribute reference"},
    {"data", cli_cmd_data,
     "draw a built-in data set (moons, 8gaussians, ...)"},
    {"help", cmd_help, "this list, or a command's help"},
    {"version", cmd_version,
     "version, precision, plugin directory and search path"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fputs("usage: flowkit COMMAND [ARGS...]\n"
          "\n"
          "Normalizing flows with exact densities.\n"
          "\n"
          "commands:\n", f);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fputs("\n"
          "'flowkit help COMMAND' (the same as 'flowkit COMMAND --help')\n"
          "gives a command's arguments and options.\n"
          "\n"
          "options:\n"
          "  --version          print the version, precision and plugin\n"
          "                     search path, then exit\n"
          "  --help             this text\n"
          "\n"
          "environment:\n"
          "  FLOW_PLUGIN_PATH   colon-separated directories searched for\n"
          "                     plugins before the installed directory\n",
          f);
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(name, commands[i].name))
            return &commands[i];
    return NULL;
}

/* "flowkit: unknown command 'trian'; did you mean 'train'? ..."; 2. */
static int unknown_command(const char *name)
{
    const char *names[N_COMMANDS];
    char hint[320];
    for (size_t i = 0; i < N_COMMANDS; i++)
        names[i] = commands[i].name;
    fprintf(stderr, "flowkit: unknown command '%s'%s (try 'flowkit help')\n",
            name, cli_did_you_mean(hint, sizeof hint, name, names,
                                   N_COMMANDS));
    return CLI_EXIT_USAGE;
}

/* `flowkit help [CMD]`: the list, or exactly what `flowkit CMD --help`
 * prints, by running it so. */
static int cmd_help(int argc, char **argv)
{
    const struct command *c;
    char help_opt[] = "--help";
    char *args[3];
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")
        || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (argc > 2) {
        fprintf(stderr, "flowkit help: one command at a time (got '%s' "
                "after '%s')\n", argv[2], argv[1]);
        return CLI_EXIT_USAGE;
    }
    if (!(c = find_command(argv[1])))
        return unknown_command(argv[1]);
    args[0] = argv[1];
    args[1] = help_opt;
    args[2] = NULL;
    return c->fn(2, args);
}

/* The search path as the runtime builds it (runtime/loader.c): the
 * absolute FLOW_PLUGIN_PATH entries, then the installed directory;
 * relative entries are listed as ignored, empty ones not at all. */
static int cmd_version(int argc, char **argv)
{
    cli_args a = {argc, 1, argv, "flowkit version", NULL, NULL};
    const char *pos, *env = getenv("FLOW_PLUGIN_PATH");
    const char *const *dirs;
    flow_ctx *ctx;
    size_t n;
    int k;
    while ((k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0)
            return cli_usage_error(&a, "unexpected argument '%s'", pos);
        if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            puts("usage: flowkit version   (or flowkit --version)\n\n"
                 "Prints the version, the precision and plugin ABI, the\n"
                 "installed plugin directory and the plugin search path in\n"
                 "effect: the absolute FLOW_PLUGIN_PATH entries, then the\n"
                 "plugin directory.");
            return 0;
        }
        return cli_unknown_option(&a);
    }
    printf("flowkit %s (%s, plugin ABI %u)\n", flow_version(),
           flow_precision(), FLOW_PLUGIN_ABI_VERSION);
    if (!(ctx = flow_ctx_new())) {
        fputs("flowkit: out of memory\n", stderr);
        return 1;
    }
    n = flow_plugin_dirs(ctx, &dirs);
    if (n == 0) {
        fprintf(stderr, "flowkit: %s\n", flow_errmsg(ctx));
        flow_ctx_free(ctx);
        return 1;
    }
    printf("plugin directory: %s\n", dirs[n - 1]);
    printf("plugin search path:%s\n",
           env ? "" : " (FLOW_PLUGIN_PATH not set)");
    for (const char *p = env; p;) {
        const char *colon = strchr(p, ':');
        int len = (int)(colon ? (size_t)(colon - p) : strlen(p));
        if (len > 0)
            printf("  %.*s%s\n", len, p,
                   p[0] == '/' ? "" : " (ignored: a relative path)");
        p = colon ? colon + 1 : NULL;
    }
    printf("  %s\n", dirs[n - 1]);
    flow_ctx_free(ctx);
    return 0;
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

/* A context with every plugin loaded; NULL after printing why. */
static flow_ctx *loaded_ctx(void)
{
    flow_ctx *ctx = flow_ctx_new();
    if (!ctx) {
        fputs("flowkit: out of memory\n", stderr);
        return NULL;
    }
    if (flow_plugin_load_all(ctx) != FLOW_OK) {
        fprintf(stderr, "flowkit: %s\n", flow_errmsg(ctx));
        flow_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The attribute reference of layer type `type` (flowc --layer=TYPE); an
 * unknown type is a usage error, with the nearest loaded type. */
static int layer_reference(flow_ctx *ctx, const char *cmd, const char *type)
{
    char hint[320];
    if (cli_layer_reference(ctx, type, stdout) == 0)
        return 0;
    fprintf(stderr, "%s: no layer type '%s' in the loaded plugins%s (try "
            "'flowkit layers')\n", cmd, type,
            cli_layer_did_you_mean(ctx, type, hint, sizeof hint));
    return CLI_EXIT_USAGE;
}

/* `flowkit plugins [--json] [TYPE]` and `flowkit layers [TYPE]`. */
static int plugins_or_layers(int argc, char **argv, int layers)
{
    const char *cmd = layers ? "flowkit layers" : "flowkit plugins";
    cli_args a = {argc, 1, argv, cmd, NULL, NULL};
    const char *pos, *type = NULL;
    int json = 0, rc = 0, k;
    flow_ctx *ctx;
    while (rc == 0 && (k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            if (type)
                return cli_usage_error(&a, "one layer type at a time (got "
                                       "'%s' after '%s')", pos, type);
            type = pos;
        } else if (cli_opt_is(&a, "--help") || cli_opt_is(&a, "-h")) {
            if (layers)
                puts("usage: flowkit layers [TYPE]\n\n"
                     "Lists the layer types the plugins provide, one line\n"
                     "each; with TYPE, prints its attribute reference (as\n"
                     "flowc --layer=TYPE): each attribute's type, default,\n"
                     "range and alternatives.");
            else
                puts("usage: flowkit plugins [--json] [TYPE]\n\n"
                     "Loads every plugin in FLOW_PLUGIN_PATH and the\n"
                     "installed plugin directory and lists the layer types\n"
                     "each provides.  With TYPE, prints that layer type's\n"
                     "attribute reference (as flowc --layer=TYPE): each\n"
                     "attribute's type, default, range and alternatives.");
            return 0;
        } else if (!layers && cli_opt_is(&a, "--json"))
            json = !(rc = cli_flag(&a));
        else
            return cli_unknown_option(&a);
    }
    if (rc)
        return rc;
    if (json && type)
        return cli_usage_error(&a, "--json lists the plugins: give no TYPE");
    if (!(ctx = loaded_ctx()))
        return 1;
    if (type)
        rc = layer_reference(ctx, cmd, type);
    else if (json)
        plugins_json(ctx);
    else if (!layers)
        plugins_text(ctx);
    else
        for (size_t i = 0; i < flow_plugin_count(ctx); i++) {
            const flow_plugin_info *p = flow_plugin_get(ctx, i);
            for (size_t j = 0; j < p->n_layers; j++)
                printf("%-16s %s\n", p->layers[j]->name,
                       p->layers[j]->summary ? p->layers[j]->summary : "");
        }
    flow_ctx_free(ctx);
    return rc;
}

static int cmd_plugins(int argc, char **argv)
{
    return plugins_or_layers(argc, argv, 0);
}

static int cmd_layers(int argc, char **argv)
{
    return plugins_or_layers(argc, argv, 1);
}

int main(int argc, char **argv)
{
    static const char *const top_opts[] = {"--version", "--help"};
    const struct command *c;
    const char *cmd;
    char hint[320];
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    cmd = argv[1];
    if (!strcmp(cmd, "--version"))
        return cmd_version(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if ((c = find_command(cmd)) != NULL)
        return c->fn(argc - 1, argv + 1);
    if (cmd[0] == '-' && cmd[1]) {
        fprintf(stderr, "flowkit: unknown option '%s'%s (try 'flowkit "
                "help')\n", cmd,
                cli_did_you_mean(hint, sizeof hint, cmd, top_opts,
                                 sizeof top_opts / sizeof top_opts[0]));
        return CLI_EXIT_USAGE;
    }
    return unknown_command(cmd);
}
