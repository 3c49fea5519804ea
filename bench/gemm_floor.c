/* gemm_floor.c - the GEMMs of one realnvp2d training step and nothing else
 * (8 MLPs 1 -> 128 -> 128 -> 2, batch 512): the floor flowkit's step time
 * is measured against.  Plain C + OpenBLAS, single-threaded BLAS.
 *
 *   bench/gemm_floor [--steps N] [--threads T] [--rows B]
 *
 * With T threads the rows are split into T chunks, each thread running
 * every MLP on its rows with its own weight gradient (summed afterwards,
 * counted in the time), synchronised by a barrier per step.  Prints
 * steps/s and GFLOP/s for the step as one JSON line. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#define NETS 8
#define LAYERS 3
#define MAX_T 16

static const int width[LAYERS + 1] = {1, 128, 128, 2};

typedef struct thr {
    int rows;
    float *act[LAYERS + 1];     /* activations, rows x width */
    float *g[2];                /* backward ping-pong, rows x 128 */
    float *dw;                  /* weight gradients of all nets */
} thr;

static float *w_all;            /* weights of all nets, then biases unused */
static size_t w_per_net;
static int steps = 500, threads = 1, rows = 512;
static thr th[MAX_T];
static pthread_barrier_t bar;

static float *fill(size_t n, unsigned *seed)
{
    float *p = aligned_alloc(64, (n * sizeof *p + 63) / 64 * 64);
    if (!p) {
        perror("gemm_floor");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rand_r(seed) / (float)RAND_MAX - 0.5f;
    return p;
}

static size_t w_off(int l)
{
    size_t o = 0;
    for (int i = 0; i < l; i++)
        o += (size_t)width[i] * width[i + 1];
    return o;
}

/* One step's GEMMs on this thread's rows: forward y = x W^T per layer,
 * backward dW += G^T x and dX = G W (the layer-0 dX too: a coupling
 * needs the gradient of its conditioning input). */
static void step(thr *t)
{
    for (int net = 0; net < NETS; net++) {
        const float *w = w_all + net * w_per_net;
        float *dw = t->dw + net * w_per_net;
        for (int l = 0; l < LAYERS; l++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->rows,
                        width[l + 1], width[l], 1, t->act[l], width[l],
                        w + w_off(l), width[l], 0, t->act[l + 1],
                        width[l + 1]);
        /* the output gradient: anything of the right shape */
        memcpy(t->g[0], t->act[LAYERS], (size_t)t->rows * 2 * sizeof(float));
        for (int l = LAYERS; l-- > 0;) {
            int cur = (LAYERS - 1 - l) % 2;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, width[l + 1],
                        width[l], t->rows, 1, t->g[cur], width[l + 1],
                        t->act[l], width[l], 1, dw + w_off(l), width[l]);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t->rows,
                        width[l], width[l + 1], 1, t->g[cur], width[l + 1],
                        w + w_off(l), width[l], 0, t->g[1 - cur], width[l]);
        }
    }
}

static void *run(void *v)
{
    thr *t = v;
    for (int s = 0; s < steps; s++) {
        step(t);
        pthread_barrier_wait(&bar);
        /* summed gradient: thread 0 adds the others' (as flowkit does) */
        if (t == &th[0])
            for (int k = 1; k < threads; k++)
                for (size_t i = 0; i < NETS * w_per_net; i++)
                    th[0].dw[i] += th[k].dw[i] * 1e-9f;
        pthread_barrier_wait(&bar);
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    pthread_t tid[MAX_T];
    unsigned seed = 1;
    double t0, secs, flops = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rows"))
            rows = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: gemm_floor [--steps N] [--threads T] "
                    "[--rows B]\n");
            return 2;
        }
    }
    if (steps < 1 || threads < 1 || threads > MAX_T || rows < threads) {
        fprintf(stderr, "gemm_floor: bad arguments\n");
        return 2;
    }
    openblas_set_num_threads(1);
    w_per_net = w_off(LAYERS);
    w_all = fill(NETS * w_per_net, &seed);
    for (int k = 0; k < threads; k++) {
        thr *t = &th[k];
        t->rows = rows * (k + 1) / threads - rows * k / threads;
        for (int l = 0; l <= LAYERS; l++)
            t->act[l] = fill((size_t)t->rows * width[l], &seed);
        t->g[0] = fill((size_t)t->rows * 128, &seed);
        t->g[1] = fill((size_t)t->rows * 128, &seed);
        t->dw = fill(NETS * w_per_net, &seed);
    }
    for (int l = 0; l < LAYERS; l++)   /* forward, dW, dX: 3 GEMMs */
        flops += 3.0 * 2 * rows * width[l] * width[l + 1];
    flops *= NETS;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    t0 = now();
    for (int k = 1; k < threads; k++)
        pthread_create(&tid[k], NULL, run, &th[k]);
    run(&th[0]);
    for (int k = 1; k < threads; k++)
        pthread_join(tid[k], NULL);
    secs = now() - t0;
    printf("{\"threads\": %d, \"rows\": %d, \"steps\": %d, \"seconds\": %.3f, "
           "\"steps_per_s\": %.1f, \"gflops\": %.1f}\n", threads, rows, steps,
           secs, steps / secs, flops * steps / secs * 1e-9);
    return 0;
}
