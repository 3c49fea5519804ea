/* progress.h - training progress on standard error (one line redrawn on a
 * terminal, parseable lines otherwise) and the training history's records. */
#ifndef FLOW_CLI_PROGRESS_H
#define FLOW_CLI_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

/* Where a run is, as the progress lines show it. */
typedef struct cli_progress {
    int tty;                /* stderr is a terminal: redraw one line */
    int quiet;              /* --quiet: no progress at all */
    size_t log_every;       /* not a terminal: a line every N steps (0: none) */
    double t0, last_draw;   /* cli_now_s() at the start, at the last redraw */
    uint64_t step0;         /* the step the run started from (--resume) */
    int drawn;              /* a redrawn line is on the screen */
} cli_progress;

/* Per-step state of the epoch in progress. */
typedef struct cli_progress_at {
    size_t epoch, epochs;   /* 1-based; epochs 0: a --steps budget */
    size_t batch, batches;  /* batches of the epoch done, and in all */
    uint64_t step;          /* optimisation steps done */
    size_t total;           /* the step budget */
    double loss;            /* running mean of the epoch's losses */
} cli_progress_at;

void cli_progress_init(cli_progress *p, int quiet, size_t log_every,
                       uint64_t step0);
/* After each step: on a terminal a redraw at most every 0.2 s (and at
 * an epoch's first batch); otherwise a `step ...` line each log_every
 * steps. */
void cli_progress_step(cli_progress *p, const cli_progress_at *at);
/* Erases a redrawn line, so that a message starts at column 0. */
void cli_progress_clear(cli_progress *p);
/* The line that closes an epoch: `epoch E step S/T loss L [valid_loglik
 * V] [nfe N] time Ts` (nfe < 0: none; valid: has_valid). */
void cli_progress_epoch(cli_progress *p, size_t epoch, uint64_t step,
                        size_t total, double loss, int has_valid,
                        double valid, double nfe);

/* One record of a training history as flowkit writes it: a flat JSON
 * object of numbers, nulls (NAN) and booleans (1 or 0). */
enum { CLI_HIST_MAX_KEYS = 8, CLI_HIST_KEY_LEN = 24 };
typedef struct cli_hist_rec {
    size_t n;
    char key[CLI_HIST_MAX_KEYS][CLI_HIST_KEY_LEN];
    double val[CLI_HIST_MAX_KEYS];
} cli_hist_rec;

/* Reads the next record of the array at *p (start at the text, '[');
 * 1 with *p past it, 0 at the end of the array, -1 on text this reader
 * does not know (then show the JSON as it is). */
int cli_hist_next(const char **p, cli_hist_rec *r);
/* The value of key in r, or NAN when absent. */
double cli_hist_get(const cli_hist_rec *r, const char *key);

#endif
