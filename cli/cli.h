/* cli.h - internal to the flowkit command: what its subcommand files share
 * (options.c, common.c) and the subcommands' entry points. */
#ifndef FLOW_CLI_CLI_H
#define FLOW_CLI_CLI_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "flow/flowc.h"

#define CLI_EXIT_USAGE 2
/* A training run that diverged: a non-finite final loss or validation
 * score, or stopped by the non-finite guard (docs/cli.md). */
#define CLI_EXIT_DIVERGED 3
/* flow_model_set_threads' limit, checked as a usage error. */
#define CLI_MAX_THREADS 64
/* *threads when 0 (no --threads): FLOWKIT_THREADS, else the CPUs in the
 * process's affinity mask (at most CLI_MAX_THREADS).  0, or
 * CLI_EXIT_USAGE after printing why FLOWKIT_THREADS is not a count. */
int cli_default_threads(const char *cmd, size_t *threads);

/* Option cursor over argv: `--name value` and `--name=value`. */
typedef struct cli_args {
    int argc, i;
    char **argv;
    const char *cmd;            /* for messages: "flowkit train" */
    const char *opt;            /* current option name (without value) */
    const char *inline_val;     /* value after '=' or NULL */
} cli_args;

/* Prints "CMD: message (try 'CMD --help')"; returns CLI_EXIT_USAGE. */
int cli_usage_error(const cli_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Next argument: 1 for an option (a->opt set), 0 for a positional (in
 * *pos), -1 at the end. */
int cli_next_arg(cli_args *a, const char **pos);
int cli_opt_is(const cli_args *a, const char *name);
/* "CMD: unknown option '--epoch'; did you mean '--epochs'? (try ...)":
 * the suggestion is the nearest (cli_suggest) of the names cli_opt_is
 * compared this argument with, so call it after the parser's last
 * cli_opt_is.  Returns CLI_EXIT_USAGE. */
int cli_unknown_option(const cli_args *a);
/* The option's value; NULL after printing a usage error. */
const char *cli_opt_value(cli_args *a);
/* An option that takes no value (`--json`, not `--json=yes`); 0, or
 * CLI_EXIT_USAGE after printing why. */
int cli_flag(cli_args *a);
/* Option values; 0, or CLI_EXIT_USAGE after printing why (the message
 * says the range).  cli_parse_size: min .. SIZE_MAX / 2; cli_parse_u64:
 * any 64-bit value (seeds). */
int cli_parse_size(cli_args *a, size_t *out, size_t min);
int cli_parse_range(cli_args *a, size_t *out, size_t min, size_t max);
/* --precision fp32|bf16-gemm: the value into *precision (a
 * flow_gemm_precision), else a usage error (exit 2). */
int cli_parse_precision(cli_args *a, int *precision);
/* Sets it on the model: 0, or CLI_EXIT_USAGE after printing why it cannot
 * run here (no AVX512-BF16, the float64 build), naming --precision. */
int cli_set_precision(const char *cmd, flow_ctx *ctx, flow_model *m,
                      int precision);
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
/* Before any work: the n inputs read standard input ("-") at most once,
 * and the output `out` can be written and is none of the inputs
 * (flow_output_check; NULL or "-" is standard output).  An input that
 * the command reads whole before writing and may legitimately replace
 * (train --resume CKPT -o CKPT) is not passed.  0, or an exit code after
 * printing why: 2 for an empty name or "-" twice, 1 otherwise. */
int cli_check_output(const char *cmd, const char *out,
                     const char *const *inputs, size_t n);
/* The same for the files a compiled spec read (the spec and its imports),
 * once it is compiled. */
int cli_check_output_sources(const char *cmd, const char *out,
                             const flow_graph *g);
/* SIGINT / SIGTERM while training: the handler records the signal in
 * cli_stop_signal; the loop finishes its step and saves, calling
 * cli_stop_saving once it has seen the signal.  A second signal, or
 * FLOWKIT_STOP_GRACE seconds after the first without cli_stop_saving,
 * exits 128 + signal at once without a checkpoint (common.c). */
extern volatile sig_atomic_t cli_stop_signal;
void cli_catch_stop_signals(int on);
void cli_stop_saving(void);
/* Under several ranks, after every step: a signal seen by any rank stops
 * all of them after the same step, the largest signal number being
 * every rank's (*stop, and cli_stop_signal where this rank saw none);
 * one allreduce (train and fit). */
int cli_agree_stop(flow_comm *comm, int *stop);

/* Seconds on the monotonic clock; v as a JSON number with `digits`
 * significant digits, or null for inf and NaN, which JSON lacks
 * (common.c).  Strings: flow_json_string. */
double cli_now_s(void);
void cli_json_num(FILE *f, double v, int digits);

/* Growing text (the JSON training history; common.c): on running out
 * of memory the text stops growing and `failed` is set. */
typedef struct cli_text {
    char *s;
    size_t len, cap;
    int failed;
} cli_text;

void cli_text_add(cli_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A model with everything needed to run it and save it (common.c). */
typedef struct cli_loaded {
    flow_ctx *ctx;
    flow_compilation *comp;
    flow_model *model;
    flow_checkpoint *ck;
    const char *spec_source;    /* owned by comp or ck */
    /* the training data's column names (data, then context), NULL when
     * unnamed; owned by ck */
    const char *const *columns;
    size_t n_columns, n_context_columns;
} cli_loaded;
/* Opens a checkpoint, compiles its embedded spec and imports (never the
 * disk; diagnostics name "CKPT[PATH]") and restores the parameters; 0,
 * or 1 after printing why. */
int cli_load_checkpoint(cli_loaded *l, const char *cmd, const char *path,
                        size_t threads);
/* Same, recompiling with `target` as --target when not NULL ("" : the
 * checkpoint's own target). */
int cli_load_checkpoint_target(cli_loaded *l, const char *cmd,
                               const char *path, size_t threads,
                               const char *target);
void cli_loaded_free(cli_loaded *l);
/* Reads a data file for a model: dim columns (+ cdim context columns
 * selected by `context`), at least one row; NULL after printing why. */
flow_data *cli_read_data(flow_ctx *ctx, const char *cmd, const char *path,
                     const char *columns, const char *context, size_t dim,
                     size_t cdim);
/* The same for a loaded model: with by_name, no --columns / --context and
 * a checkpoint that names its training columns, a file with a header
 * gives the model's columns by name, in the model's order (it must have
 * exactly those columns; an error names both lists); a file without a
 * header is read by position. */
flow_data *cli_read_model_data(const cli_loaded *l, const char *cmd,
                               const char *path, const char *columns,
                               const char *context, int by_name);
/* 0 when the samples of d (read from path) fit a model input of that
 * rank and shape: flat rows fit any input of their width, and images
 * only an image input of the same [C, H, W] or a flat one; else 1 with
 * an error naming the file and both shapes. */
int cli_check_shape(const char *cmd, const char *path, const flow_data *d,
                    size_t rank, const size_t *shape);
/* The columns `names` (dim data, then cdim context) of a file with a
 * header, by name (exactly those columns); a file without one by
 * position. */
flow_data *cli_read_by_names(flow_ctx *ctx, const char *cmd,
                             const char *path, const char *const *names,
                             size_t dim, size_t cdim);
/* cli_read_data and cli_read_by_names with each process of comm
 * reading only its share of the rows (flow_data_read_shard); comm NULL:
 * the whole file. */
flow_data *cli_read_shard(flow_ctx *ctx, const char *cmd, flow_comm *comm,
                          const char *path, const char *columns,
                          const char *context, size_t dim, size_t cdim);
flow_data *cli_read_shard_by_names(flow_ctx *ctx, const char *cmd,
                                   flow_comm *comm, const char *path,
                                   const char *const *names, size_t dim,
                                   size_t cdim);
/* Writes a checkpoint of m (and t) with every source file of comp
 * embedded and, when data has a header, its column names (common.c). */
int cli_save_checkpoint(flow_ctx *ctx, flow_model *m, flow_trainer *t,
                        const flow_compilation *comp, const flow_data *data,
                        const char *history, const char *const *meta,
                        const char *out);
/* --resume: the checkpoint was made from comp's spec and imports and,
 * when both name them, from the columns of data (may be NULL); 0, or 1
 * after printing why. */
int cli_check_resume(flow_ctx *ctx, const char *cmd,
                     const flow_checkpoint *ck,
                     const flow_compilation *comp, const char *spec,
                     const flow_data *data, const char *data_path);

/* Located data errors (eval.c).  cli_check_bounds: every value of d
 * inside the declared domain of each layer that the data enters as read
 * (only permutations before it; logit: [0, 1]) and inside the bounds
 * `input x : real[D] in [lo, hi]` of g, or 1 after printing "CMD:
 * FILE:LINE:COL: value ... outside the domain ... / the bounds".
 * cli_fail_located: after a pass of `what` (0 log-density, 1 forward, 2
 * inverse) over d failed in the batch of `batch` rows at row `from`,
 * finds the first failing row by running the rows again (the batch,
 * then its rows one at a time) and prints "CMD: FILE:LINE: <the
 * context's message>"; returns 1.  cli_nonfinite_row: prints "CMD:
 * FILE:LINE: WHAT is V under the model<hint>"; returns 1. */
int cli_check_bounds(const char *cmd, const flow_graph *g, flow_data *d);
int cli_fail_located(flow_ctx *ctx, const char *cmd, flow_model *m,
                     flow_data *d, int what, size_t from, size_t batch);
int cli_nonfinite_row(const char *cmd, flow_data *d, size_t row,
                      const char *what, double v, const char *hint);

/* The first row of d whose log-density under l's model is not finite,
 * said with its place as cli_nonfinite_row does: -1 after printing it, 0
 * when every row is finite, a FLOW_ERR code (message in l->ctx) when a
 * pass fails. */
int cli_first_nonfinite(cli_loaded *l, const char *cmd, flow_data *d,
                        size_t batch, const char *hint);

/* The commands that run a model over a data file under mpirun (eval.c;
 * docs/distributed.md, "Evaluation").  The rows are cut into the nb =
 * ceil(n / batch) blocks of `batch` rows that one process runs, and rank
 * r of N takes blocks [r nb / N, (r + 1) nb / N): rows [r0, r1), none
 * when N > nb.  A row's result is then the same bits on any rank, and
 * rank 0 gathers them in input order.
 *
 * cli_comm_open: the communicator, after loading the checkpoint (l->ctx
 * reports its errors) and before reading `data`; 0, or an exit code
 * after printing why (*comm may then be set: pass it to cli_comm_end).
 * cli_comm_end: with rc != 0 under mpirun ends every rank (a rank that
 * stops early would leave the others waiting), else frees comm (NULL
 * allowed); returns rc.  cli_share_run: `what` (0 log-density, 1
 * forward, 2 inverse) on this rank's rows into out (row r0 first, w = 1
 * or dim values a row), each block with its own stream of random draws;
 * 0, or 1 after printing the failing row.  cli_share_gather: every rank
 * says whether it failed (one allreduce); then rank 0 receives the rows
 * of every rank, w values of `size` bytes each, from mine (r1 - r0 rows;
 * on rank 0 it may be all) into all (n rows, rank 0 only); 0, or 1
 * after printing why (rank 0 names a failed rank). */
typedef struct cli_share {
    flow_comm *comm;            /* borrowed */
    size_t n, batch, nb;        /* rows, rows a block, blocks */
    size_t r0, r1;              /* this rank's rows */
} cli_share;

int cli_comm_open(cli_loaded *l, const char *cmd, const char *data,
                  flow_comm **comm);
int cli_comm_end(flow_comm *comm, int rc);
void cli_share_init(cli_share *s, flow_comm *comm, size_t n, size_t batch);
int cli_share_run(const cli_share *s, cli_loaded *l, const char *cmd,
                  flow_data *d, int what, flow_real *out);
int cli_share_gather(const cli_share *s, flow_ctx *ctx, const char *cmd,
                     int failed, const void *mine, void *all, size_t w,
                     size_t size);

/* The options of the subcommands that run a trained model (eval.c). */
typedef struct cli_run_opts {
    const char *ckpt, *data, *out, *columns, *context, *ctxfile;
    flow_data_format format;
    size_t batch, n, threads;
    int precision;              /* --precision: flow_gemm_precision */
    uint64_t seed;
    int json, with_logprob, header, has_n;
    int weights;                /* sample: self-normalised IS weights */
    int allow_nonfinite;        /* --data commands: accept and write
                                   non-finite results */
    const char *target;         /* sample --target */
    const char *const *xnames;  /* names of the x columns written (the
                                   training columns'), NULL: x0.. */
    size_t shape[4];            /* sample --shape: each row's shape */
    int shape_rank;             /* 0: flat rows */
    int has_range;              /* sample --range lo,hi: pixel scale */
    double temperature;         /* sample --temperature T (> 0, default 1) */
    size_t noise;               /* eval --noise K: dequantization draws
                                   per row (0: the midpoint)           */
    double range_lo, range_hi;
} cli_run_opts;

/* Parses them; mode 0: --data commands; 1: sample; 2: info (checkpoint
 * only); 3: eval (mode 0 with --noise and --seed).  0, or an exit code after printing why. */
int cli_parse_run(int argc, char **argv, const char *cmd, cli_run_opts *o,
                  void (*usage)(FILE *), int mode);
/* Writes n rows of width w named PREFIX0.. (+ cw context columns named as
 * in cnames or c0.., + one "logprob" column when lp, + one "weight" column
 * when wt) to o->out (eval.c).  0, or 1 after printing why. */
int cli_write_rows(flow_ctx *ctx, const char *cmd, const cli_run_opts *o,
                   size_t n, size_t w, const char *prefix,
                   const flow_real *rows, const flow_real *lp,
                   size_t cw, const flow_real *cv,
                   const flow_data *cnames, const flow_real *wt);

/* The subcommands: train.c, eval.c (eval, logprob, encode, decode),
 * sample.c, info.c, data.c, fit.c, check.c, uq.c (compare, hdr),
 * export.c. */
int cli_cmd_train(int argc, char **argv);
int cli_cmd_eval(int argc, char **argv);
int cli_cmd_logprob(int argc, char **argv);
int cli_cmd_sample(int argc, char **argv);
int cli_cmd_encode(int argc, char **argv);
int cli_cmd_decode(int argc, char **argv);
int cli_cmd_info(int argc, char **argv);
int cli_cmd_fit(int argc, char **argv);
int cli_cmd_check(int argc, char **argv);
int cli_cmd_compare(int argc, char **argv);
int cli_cmd_hdr(int argc, char **argv);
int cli_cmd_data(int argc, char **argv);
int cli_cmd_export(int argc, char **argv);
/* plot.c: `flowkit plot KIND` (cairo; a message when built without). */
int cli_cmd_plot(int argc, char **argv);

#endif
