/* cli.h - internal to the flowkit command: shared option parsing and the
 * subcommands that need a model (cli_model.c). */
#ifndef FLOW_RUNTIME_CLI_H
#define FLOW_RUNTIME_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "flow/flowc.h"

#define EXIT_USAGE 2

/* Option cursor over argv: `--name value` and `--name=value`. */
typedef struct cli_args {
    int argc, i;
    char **argv;
    const char *cmd;            /* for messages: "flowkit train" */
    const char *opt;            /* current option name (without value) */
    const char *inline_val;     /* value after '=' or NULL */
} cli_args;

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_logprob(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_info(int argc, char **argv);

#endif
