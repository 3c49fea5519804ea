/* plot.h - internal to `flowkit plot`: the options that cli/plot.c parses
 * and the four kinds of picture that cli/plot_kinds.c draws. */
#ifndef FLOW_CLI_PLOT_H
#define FLOW_CLI_PLOT_H

#include <stddef.h>
#include <stdint.h>

typedef enum plot_format { PLOT_PNG, PLOT_SVG, PLOT_PDF } plot_format;

/* Every option of every kind; a kind reads the ones it takes (plot.c
 * refuses the others).  Strings point into argv. */
typedef struct plot_opts {
    const char *cmd;                /* "flowkit plot density" */
    const char *const *files;       /* the positional arguments */
    size_t n_files;
    const char *out, *title, *data, *dims, *fix, *context, *shape;
    const char *dump_grid;
    plot_format format;
    int width, height;
    int layout;                     /* --layout: print the panels */
    int has_range;
    double range[4];                /* --range: xmin,xmax,ymin,ymax or
                                       lo,hi (images) */
    size_t grid, samples, draws, rows, cols, bins, threads;
    uint64_t seed;
} plot_opts;

/* 0, or 1 after printing why (cli_*-style: "CMD: FILE: message"). */
int plot_density(const plot_opts *o);
int plot_pairs(const plot_opts *o);
int plot_history(const plot_opts *o);
int plot_images(const plot_opts *o);
/* After the last picture: releases the drawing library's caches. */
void plot_shutdown(void);

/* Parses a comma-separated list of n reals ("1,2.5,-3"); 0, or -1 when
 * the text is not exactly n numbers. */
int plot_parse_reals(const char *s, double *v, size_t n);
/* Parses a comma-separated list of indices < lim into idx (at most max);
 * the count, or 0 when the text is not such a list. */
size_t plot_parse_indices(const char *s, size_t *idx, size_t max,
                          size_t lim);

#endif
