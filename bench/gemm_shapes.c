/* gemm_shapes.c - time per GEMM shape of one realnvp2d training step
 * (bench/README.md, "Small-matrix GEMM path"): each call nn.c makes for
 * the MLP 1 -> 128 -> 128 -> 2 on one thread's 256 rows, through
 * OpenBLAS (cblas_?gemm, single-threaded as the runtime sets it).
 *
 *   bench/gemm_shapes [--rows R] [--min-time S] [--reps N]
 *
 * Prints one JSON line per shape: the call as blas_gemm(ta, tb, m, n, k),
 * nanoseconds per call (the best of N timed loops of at least S seconds
 * each) and GFLOP/s (2 m n k flops per call); the last line the sum over
 * the shapes (one MLP's calls on one thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "flow/flow.h"
#include "shapes.h"

typedef struct shape {
    const char *what;
    int ta, tb;
    size_t m, n, k;
    flow_real beta;
} shape;

static flow_real *fill(size_t n, unsigned *seed)
{
    flow_real *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        perror("gemm_shapes");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (flow_real)rand_r(seed) / (flow_real)RAND_MAX - 0.5f;
    return p;
}

static void call(const shape *s, const flow_real *a, const flow_real *b,
                 flow_real *c)
{
    int lda = (int)(s->ta ? s->m : s->k), ldb = (int)(s->tb ? s->k : s->n);
#if FLOW_REAL_DOUBLE
    cblas_dgemm(
#else
    cblas_sgemm(
#endif
        CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
        s->tb ? CblasTrans : CblasNoTrans, (int)s->m, (int)s->n, (int)s->k,
        1, a, lda, b, ldb, s->beta, c, (int)s->n);
}

/* One call of shape_time: the shape and its operands. */
typedef struct timed {
    const shape *s;
    const flow_real *a, *b;
    flow_real *c;
} timed;

static void timed_call(void *arg)
{
    const timed *t = arg;
    call(t->s, t->a, t->b, t->c);
}

int main(int argc, char **argv)
{
    shape_opts o = {.rows = 256, .min_time = 0.2, .reps = 5};
    unsigned seed = 1;
    size_t rows;
    if (shape_opts_parse("gemm_shapes", argc, argv, &o))
        return 2;
    rows = o.rows;
    openblas_set_num_threads(1);
    {
        /* nn.c's calls for the MLP 1 -> 128 -> 128 -> 2 (nn_forward's
         * lin_blocks: beta 1 onto the bias; nn_backward: grad_w beta 1,
         * dX beta 0) */
        const shape sh[] = {
            {"fwd L0 X W^T", 0, 1, rows, 128, 1, 1},
            {"fwd L1 X W^T", 0, 1, rows, 128, 128, 1},
            {"fwd L2 X W^T", 0, 1, rows, 2, 128, 1},
            {"bwd L2 dW = G^T X", 1, 0, 2, 128, rows, 1},
            {"bwd L2 dX = G W", 0, 0, rows, 128, 2, 0},
            {"bwd L1 dW = G^T X", 1, 0, 128, 128, rows, 1},
            {"bwd L1 dX = G W", 0, 0, rows, 128, 128, 0},
            {"bwd L0 dW = G^T X", 1, 0, 128, 1, rows, 1},
            {"bwd L0 dX = G W", 0, 0, rows, 1, 128, 0},
        };
        double tot = 0;
        for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
            const shape *s = &sh[i];
            flow_real *a = fill(s->m * s->k, &seed);
            flow_real *b = fill(s->k * s->n, &seed);
            flow_real *c = fill(s->m * s->n, &seed);
            double fl = 2.0 * (double)(s->m * s->n * s->k);
            timed tc = {s, a, b, c};
            double ns = shape_time(timed_call, &tc, &o);
            tot += ns;
            printf("{\"shape\": \"%s\", \"call\": \"gemm(%d,%d,%zu,%zu,%zu)\", "
                   "\"ns\": %.0f, \"gflops\": %.2f}\n", s->what, s->ta,
                   s->tb, s->m, s->n, s->k, ns, fl / ns);
            free(a);
            free(b);
            free(c);
        }
        printf("{\"shape\": \"one MLP, all calls\", \"ns\": %.0f}\n", tot);
    }
    return 0;
}
