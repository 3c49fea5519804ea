/* shapes.h - what the per-shape GEMM timers (gemm_shapes, made_shapes)
 * share: their options and their timing loop. */
#ifndef FLOW_BENCH_SHAPES_H
#define FLOW_BENCH_SHAPES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

typedef struct shape_opts {
    size_t rows;        /* --rows: the batch rows of the timed calls */
    double min_time;    /* --min-time: seconds per timed loop */
    int reps;           /* --reps: timed loops, the best one kept */
} shape_opts;

/* --rows R, --min-time S, --reps N into o (its fields the defaults);
 * 0, or 2 after a message naming prog on a bad option. */
static inline int shape_opts_parse(const char *prog, int argc, char **argv,
                                   shape_opts *o)
{
    int i = 1;
    for (; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            o->rows = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--min-time"))
            o->min_time = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            o->reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "%s: unknown option %s\n", prog, argv[i]);
            return 2;
        }
    }
    if (i < argc) {
        fprintf(stderr, "%s: %s needs a value\n", prog, argv[i]);
        return 2;
    }
    if (o->rows == 0 || o->reps < 1 || !(o->min_time > 0)) {
        fprintf(stderr, "%s: --rows and --reps must be >= 1, --min-time "
                "> 0\n", prog);
        return 2;
    }
    return 0;
}

/* Nanoseconds per call of call(arg): the best of o->reps loops of at
 * least o->min_time seconds, 32 calls at a time. */
static inline double shape_time(void (*call)(void *), void *arg,
                                const shape_opts *o)
{
    double best = 1e30;
    for (int r = 0; r < o->reps; r++) {
        long calls = 0;
        double t0 = now_s(), t;
        do {
            for (int i = 0; i < 32; i++)
                call(arg);
            calls += 32;
            t = now_s() - t0;
        } while (t < o->min_time);
        if (t / (double)calls < best)
            best = t / (double)calls;
    }
    return best * 1e9;
}

#endif
