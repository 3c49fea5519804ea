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
#include <time.h>

#include <cblas.h>

#include "flow/flow.h"

typedef struct shape {
    const char *what;
    int ta, tb;
    size_t m, n, k;
    flow_real beta;
} shape;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* Nanoseconds per call: the best of reps loops of >= min_time seconds. */
static double time_call(const shape *s, const flow_real *a,
                         const flow_real *b, flow_real *c, double min_time,
                         int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        long calls = 0;
        double t0 = now(), t;
        do {
            for (int i = 0; i < 64; i++)
                call(s, a, b, c);
            calls += 64;
            t = now() - t0;
        } while (t < min_time);
        if (t / (double)calls < best)
            best = t / (double)calls;
    }
    return best * 1e9;
}

int main(int argc, char **argv)
{
    size_t rows = 256;
    double min_time = 0.2;
    int reps = 5;
    unsigned seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            rows = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--min-time"))
            min_time = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "gemm_shapes: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (rows == 0 || reps < 1) {
        fprintf(stderr, "gemm_shapes: --rows and --reps must be >= 1\n");
        return 2;
    }
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
            double ns = time_call(s, a, b, c, min_time, reps);
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
