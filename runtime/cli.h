/* cli.h - internal to the flowkit command: shared option parsing and the
 * subcommands that need a model (cli_model.c). */
#ifndef FLOW_RUNTIME_CLI_H
#define FLOW_RUNTIME_CLI_H

#include <signal.h>
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

/* Prints "CMD: message (try 'CMD --help')"; returns EXIT_USAGE. */
int cli_usage_error(const cli_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Next argument: 1 for an option (a->opt set), 0 for a positional (in
 * *pos), -1 at the end. */
int cli_next_arg(cli_args *a, const char **pos);
int cli_opt_is(const cli_args *a, const char *name);
/* The option's value; NULL after printing a usage error. */
const char *cli_opt_value(cli_args *a);
/* Option values; 0, or EXIT_USAGE after printing why. */
int cli_parse_size(cli_args *a, size_t *out, size_t min);
int cli_parse_u64(cli_args *a, uint64_t *out);
int cli_parse_real(cli_args *a, double *out, double lo, double hi);
/* Prints "CMD: <ctx's message>"; returns 1. */
int cli_fail(flow_ctx *ctx, const char *cmd);
/* A context with every plugin on the search path loaded; NULL after
 * printing why. */
flow_ctx *cli_open_ctx(const char *cmd);
/* Compiles a spec file (text NULL) or text named path; diagnostics to
 * stderr.  NULL on errors (after a summary line). */
flow_compilation *cli_compile(flow_ctx *ctx, const char *cmd,
                              const char *path, const char *text);
/* Same, with a target given apart from the spec (NULL: none), as
 * flow_compile_file_target. */
flow_compilation *cli_compile_target(flow_ctx *ctx, const char *cmd,
                                     const char *path, const char *text,
                                     const char *target);
/* SIGINT / SIGTERM while training: the handler only records the signal
 * in cli_stop_signal; the loop finishes its step and saves. */
extern volatile sig_atomic_t cli_stop_signal;
void cli_catch_stop_signals(int on);

/* Seconds on the monotonic clock; s (NULL: "") as a JSON string literal;
 * v as a JSON number with `digits` significant digits, or null for inf
 * and NaN, which JSON lacks (cli_model.c). */
double cli_now_s(void);
void cli_json_str(FILE *f, const char *s);
void cli_json_num(FILE *f, double v, int digits);

/* Growing text (the JSON training history; cli_model.c): on running out
 * of memory the text stops growing and `failed` is set. */
typedef struct cli_text {
    char *s;
    size_t len, cap;
    int failed;
} cli_text;

void cli_text_add(cli_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A model with everything needed to run it and save it (cli_model.c). */
typedef struct loaded {
    flow_ctx *ctx;
    flow_compilation *comp;
    flow_model *model;
    flow_checkpoint *ck;
    const char *spec_source;    /* owned by comp or ck */
} loaded;
/* Opens a checkpoint, recompiles its spec and restores the parameters;
 * 0, or 1 after printing why. */
int load_checkpoint(loaded *l, const char *cmd, const char *path,
                    size_t threads);
void loaded_free(loaded *l);
/* Reads a data file for a model: dim columns (+ cdim context columns
 * selected by `context`), at least one row; NULL after printing why. */
flow_data *read_data(flow_ctx *ctx, const char *cmd, const char *path,
                     const char *columns, const char *context, size_t dim,
                     size_t cdim);

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_logprob(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_info(int argc, char **argv);
/* cli_fit.c */
int cmd_fit(int argc, char **argv);
/* cli_check.c */
int cmd_check(int argc, char **argv);
/* cli_uq.c */
int cmd_compare(int argc, char **argv);
int cmd_hdr(int argc, char **argv);

#endif
