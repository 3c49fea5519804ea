/* made_shapes.c - tgemm's rate on the product shapes of one maf64 MADE
 * (64 -> 512 -> 512 -> 128, hidden units in degree order, row blocks of
 * 64: runtime/nn_made.c) for one training block of 128 rows, one thread,
 * hot caches (bench/README.md, "maf64 training: where the rest goes").
 *
 *   bench/made_shapes [--rows R] [--min-time S] [--reps N]
 *
 * Prints one JSON line per shape: what it is in the MADE's passes, the
 * call as tgemm(m, n, k) with A's strides and B's leading dimension,
 * nanoseconds per call (the best of N timed loops of at least S seconds
 * each) and GFLOP/s (2 m n k flops per call), then a dense
 * rows x 512 x 512 product for scale.  The strides are the MADE's: B the
 * transposed weights (stride 512) in the forward, the weights (stride
 * 512, or 64 for layer 0's) in dX, the tape's rows (stride 64 or 512) in
 * dW, whose A is the output gradient read transposed (ars 1). */
#include <stdio.h>
#include <stdlib.h>

#include "../runtime/tgemm.h"
#include "shapes.h"

typedef struct shape {
    const char *what;
    size_t m, n, k, ars, acs, ldb, ldc;
    int acc;
} shape;

static float *fill(size_t n, unsigned *seed)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        perror("made_shapes");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rand_r(seed) / (float)RAND_MAX - 0.5f;
    return p;
}

/* One call of shape_time: the shape and its operands. */
typedef struct timed {
    const shape *s;
    const float *a, *b;
    float *c;
} timed;

static void timed_call(void *arg)
{
    const timed *t = arg;
    const shape *s = t->s;
    tgemm_epi ep = {.acc = s->acc};
    tgemm_ep(s->m, s->n, s->k, t->a, s->ars, s->acs, t->b, s->ldb, &ep,
             t->c, s->ldc);
}

int main(int argc, char **argv)
{
    shape_opts o = {.rows = 128, .min_time = 0.2, .reps = 5};
    unsigned seed = 1;
    size_t rows;
    if (shape_opts_parse("made_shapes", argc, argv, &o))
        return 2;
    if (tgemm_level() <= 0) {
        fprintf(stderr, "made_shapes: tgemm does not run on this CPU (no "
                "AVX2 + FMA)\n");
        return 1;
    }
    rows = o.rows;
    {
        /* Layer 0's 64-row blocks see 8, 16, ..., 64 inputs (8 hidden
         * units per degree): its forward runs by row blocks (K = their
         * prefix), its dW products are 8-64 columns wide, its dX
         * products one 8-column block each; layers 1 and 2 run their
         * forward by 64-wide column blocks of the input (made_by_rows),
         * dW on 64-row blocks, dX on 64-column blocks of K up to 512. */
        const shape sh[] = {
            {"fwd L0 by rows, K = 64", rows, 64, 64, 64, 1, 512, 512, 0},
            {"fwd L0 by rows, K = 8", rows, 64, 8, 64, 1, 512, 512, 0},
            {"fwd L2 by columns, K = 64", rows, 128, 64, 512, 1, 128, 128, 1},
            {"fwd L1 by columns, K = 64", rows, 448, 64, 512, 1, 512, 512, 1},
            {"dW L1 = G^T H, 64 rows x 512", 64, 512, rows, 1, 512, 512, 512, 1},
            {"dW L2 = G^T H, 64 rows x 512", 64, 512, rows, 1, 128, 512, 512, 1},
            {"dX L1 = G W, 64 columns, K = 512", rows, 64, 512, 512, 1, 512,
             512, 0},
            {"dX L2 = G W, 64 columns, K = 128", rows, 64, 128, 128, 1, 512,
             512, 0},
            {"dW L0, 64 rows x 64", 64, 64, rows, 1, 512, 64, 64, 1},
            {"dW L0, 64 rows x 40", 64, 40, rows, 1, 512, 64, 64, 1},
            {"dW L0, 64 rows x 24", 64, 24, rows, 1, 512, 64, 64, 1},
            {"dW L0, 64 rows x 8", 64, 8, rows, 1, 512, 64, 64, 1},
            {"dX L0 = G W, 8 columns, K = 512", rows, 8, 512, 512, 1, 64, 64, 0},
            {"dX L0 = G W, 8 columns, K = 64", rows, 8, 64, 512, 1, 64, 64, 0},
            {"dense for scale", rows, 512, 512, 512, 1, 512, 512, 0},
        };
        for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
            const shape *s = &sh[i];
            size_t am = (s->m - 1) * s->ars + (s->k - 1) * s->acs + 1;
            float *a = fill(am, &seed);
            float *b = fill(s->k * s->ldb, &seed);
            float *c = fill(s->m * s->ldc, &seed);
            double fl = 2.0 * (double)(s->m * s->n * s->k);
            timed tc = {s, a, b, c};
            double ns = shape_time(timed_call, &tc, &o);
            printf("{\"shape\": \"%s\", \"call\": \"tgemm(%zu,%zu,%zu) "
                   "ars %zu acs %zu ldb %zu\", \"ns\": %.0f, \"gflops\": "
                   "%.1f}\n", s->what, s->m, s->n, s->k, s->ars, s->acs,
                   s->ldb, ns, fl / ns);
            free(a);
            free(b);
            free(c);
        }
    }
    return 0;
}
