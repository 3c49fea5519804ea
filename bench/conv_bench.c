/* conv_bench.c - times the convolutional conditioner (FLOW_NET_CONV,
 * runtime/conv.c) forward + backward against a direct convolution in the
 * same run.  Not a test; figures: bench/README.md, "Convolutions".
 *
 *   build/default/bench/conv_bench [--batch 64] [--reps 20]
 *       [--naive-reps 2] [--threads T] [--hidden 64]
 *   build/default/bench/conv_bench --glow [--batch 64] [--reps 20]
 *
 * The net is the coupling conditioner on a 4 x 14 x 14 image:
 * conv3x3 (4 -> hidden), ReLU, conv1x1, ReLU, conv3x3 (hidden -> 8), run
 * through the host table as a plugin would (net_forward, net_backward with
 * dx and the parameter gradient).  --threads T splits the batch into T
 * row chunks on T pthreads, each with its own workspace and gradient
 * vector, as the model's executor does.  The direct convolution is six
 * plain loops per layer in flow_real, forward and backward (dx, dW, db),
 * on one thread.  Prints one JSON line.
 *
 * --glow times instead the two conditioners of specs/glow_fashion.flow's
 * affine couplings, one thread: 2 x 14 x 14 -> 4 x 14 x 14 (scale 1,
 * half of 4 channels in, scale and shift of the other half out) and 4 x 7
 * x 7 -> 8 x 7 x 7 (scale 2), both conv3x3 -> ReLU -> conv1x1 (64) ->
 * ReLU -> conv3x3, the last layer random; forward alone (log-prob,
 * sampling) and the training pass (forward, then backward with dx and
 * the parameter gradient), one JSON line per scale with CPU and wall ms
 * per pass. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "flow/flow.h"
#include "flow/flow_plugin.h"

#include "clock.h"

enum { C = 4, H = 14, W = 14, COUT = 8, K = 3 };

/* ------------------------------------------------------ direct reference */

typedef struct dlayer {
    size_t cin, cout, k;
    const flow_real *w, *b;
    flow_real *dw, *db;
} dlayer;

static void direct_fwd(const dlayer *l, const flow_real *in, flow_real *out)
{
    long p = (long)(l->k / 2);
    for (size_t o = 0; o < l->cout; o++)
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                flow_real s = l->b[o];
                for (size_t c = 0; c < l->cin; c++)
                    for (long ky = 0; ky < (long)l->k; ky++)
                        for (long kx = 0; kx < (long)l->k; kx++) {
                            long sy = y + ky - p, sx = x + kx - p;
                            if (sy < 0 || sx < 0 || sy >= H || sx >= W)
                                continue;
                            s += l->w[((o * l->cin + c) * l->k + (size_t)ky) *
                                          l->k + (size_t)kx] *
                                 in[(c * H + (size_t)sy) * W + (size_t)sx];
                        }
                out[(o * H + (size_t)y) * W + (size_t)x] = s;
            }
}

/* dW += g (x) in, db += sum g, din = W^T g (when din is not NULL) */
static void direct_bwd(const dlayer *l, const flow_real *in,
                       const flow_real *g, flow_real *din)
{
    long p = (long)(l->k / 2);
    if (din)
        memset(din, 0, l->cin * H * W * sizeof *din);
    for (size_t o = 0; o < l->cout; o++)
        for (long y = 0; y < H; y++)
            for (long x = 0; x < W; x++) {
                flow_real go = g[(o * H + (size_t)y) * W + (size_t)x];
                l->db[o] += go;
                for (size_t c = 0; c < l->cin; c++)
                    for (long ky = 0; ky < (long)l->k; ky++)
                        for (long kx = 0; kx < (long)l->k; kx++) {
                            long sy = y + ky - p, sx = x + kx - p;
                            size_t wi, ii;
                            if (sy < 0 || sx < 0 || sy >= H || sx >= W)
                                continue;
                            wi = ((o * l->cin + c) * l->k + (size_t)ky) *
                                     l->k + (size_t)kx;
                            ii = (c * H + (size_t)sy) * W + (size_t)sx;
                            l->dw[wi] += go * in[ii];
                            if (din)
                                din[ii] += go * l->w[wi];
                        }
            }
}

/* The whole conditioner, image by image; returns the output in y. */
static void direct_step(const dlayer *ly, size_t n, const flow_real *x,
                        const flow_real *dy, flow_real *y, flow_real *dx,
                        flow_real *h0, flow_real *h1, flow_real *g0,
                        flow_real *g1)
{
    size_t hs = ly[0].cout * H * W;
    for (size_t i = 0; i < n; i++) {
        const flow_real *xi = x + i * C * H * W;
        const flow_real *gi = dy + i * COUT * H * W;
        direct_fwd(&ly[0], xi, h0);
        for (size_t q = 0; q < hs; q++)
            h0[q] = h0[q] > 0 ? h0[q] : 0;
        direct_fwd(&ly[1], h0, h1);
        for (size_t q = 0; q < hs; q++)
            h1[q] = h1[q] > 0 ? h1[q] : 0;
        direct_fwd(&ly[2], h1, y + i * COUT * H * W);
        direct_bwd(&ly[2], h1, gi, g1);
        for (size_t q = 0; q < hs; q++)
            g1[q] = h1[q] > 0 ? g1[q] : 0;
        direct_bwd(&ly[1], h0, g1, g0);
        for (size_t q = 0; q < hs; q++)
            g0[q] = h0[q] > 0 ? g0[q] : 0;
        direct_bwd(&ly[0], xi, g0, dx + i * C * H * W);
    }
}

/* ------------------------------------------------------ the host's net */

typedef struct job {
    const flow_host *hs;
    const flow_net *net;
    const flow_real *p, *x, *dy;
    size_t n;
    flow_real *y, *dx, *g;
    void *ws;
    int rc;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    j->rc = j->hs->net_forward(j->net, j->p, j->n, j->x, NULL, 0, j->y,
                               j->ws);
    if (j->rc == FLOW_OK)
        j->rc = j->hs->net_backward(j->net, j->p, j->n, j->ws, j->dy, j->dx,
                                    NULL, j->g);
    return NULL;
}

/* --glow: one conditioner of glow_fashion, forward and training pass */
static int time_glow(const flow_host *hs, size_t c, size_t hh, size_t ww,
                     size_t cout, size_t n, size_t reps)
{
    flow_net_spec sp;
    flow_net *net;
    char err[256];
    size_t din = c * hh * ww, dout = cout * hh * ww, np;
    flow_real *p, *x, *dy, *y, *dx, *g;
    void *ws;
    double t0, c0, fw_ms, fc_ms, tw_ms, tc_ms;
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_CONV;
    sp.in = din;
    sp.out = dout;
    sp.act = FLOW_ACT_RELU;
    sp.channels = c;
    sp.height = hh;
    sp.width = ww;
    sp.conv_hidden = 64;
    sp.kernel = 3;
    sp.blocks = 1;
    sp.out_channels = cout;
    sp.seed = 1;
    if (!(net = hs->net_create(&sp, err, sizeof err))) {
        fprintf(stderr, "conv_bench: net_create: %s\n", err);
        return 1;
    }
    np = hs->net_params(net);
    p = malloc(np * sizeof *p);
    g = calloc(np, sizeof *g);
    x = malloc(n * din * sizeof *x);
    dx = malloc(n * din * sizeof *dx);
    dy = malloc(n * dout * sizeof *dy);
    y = malloc(n * dout * sizeof *y);
    ws = aligned_alloc(64, (hs->net_workspace(net, n) + 63) / 64 * 64);
    if (!p || !g || !x || !dx || !dy || !y || !ws) {
        fputs("conv_bench: out of memory\n", stderr);
        return 1;
    }
    hs->net_init(net, p, NULL);
    srand(5);
    for (size_t i = 0; i < n * din; i++)
        x[i] = (flow_real)(2.0 * rand() / RAND_MAX - 1);
    for (size_t i = 0; i < n * dout; i++)
        dy[i] = (flow_real)(2.0 * rand() / RAND_MAX - 1);
    /* warm-up, then the forward alone, then the training pass */
    if (hs->net_forward(net, p, n, x, NULL, 0, y, ws) != FLOW_OK ||
        hs->net_backward(net, p, n, ws, dy, dx, NULL, g) != FLOW_OK) {
        fputs("conv_bench: net call failed\n", stderr);
        return 1;
    }
    t0 = now_s();
    c0 = cpu_s();
    for (size_t r = 0; r < reps; r++)
        if (hs->net_forward(net, p, n, x, NULL, 0, y, ws) != FLOW_OK)
            return 1;
    fw_ms = (now_s() - t0) * 1e3 / (double)reps;
    fc_ms = (cpu_s() - c0) * 1e3 / (double)reps;
    t0 = now_s();
    c0 = cpu_s();
    for (size_t r = 0; r < reps; r++)
        if (hs->net_forward(net, p, n, x, NULL, 0, y, ws) != FLOW_OK ||
            hs->net_backward(net, p, n, ws, dy, dx, NULL, g) != FLOW_OK)
            return 1;
    tw_ms = (now_s() - t0) * 1e3 / (double)reps;
    tc_ms = (cpu_s() - c0) * 1e3 / (double)reps;
    printf("{\"conditioner\": \"%zux%zux%zu->%zu\", \"batch\": %zu, "
           "\"params\": %zu, \"workspace_bytes\": %zu, \"forward_ms\": %.3f, "
           "\"forward_cpu_ms\": %.3f, \"train_ms\": %.3f, "
           "\"train_cpu_ms\": %.3f}\n", c, hh, ww, cout, n, np,
           hs->net_workspace(net, n), fw_ms, fc_ms, tw_ms, tc_ms);
    free(p);
    free(g);
    free(x);
    free(dx);
    free(dy);
    free(y);
    free(ws);
    hs->net_destroy(net);
    return 0;
}

static int arg_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v == 0)
        return -1;
    *out = (size_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 64, reps = 20, nreps = 2, threads = 1, hid = 64;
    const flow_host *hs = flow_host_services();
    flow_net_spec sp;
    flow_net *net;
    char err[256];
    size_t np, din = C * H * W, dout = COUT * H * W, lo_w, off;
    flow_real *p, *x, *dy, *y, *dx, *g, *yn, *dxn, *gn, *h0, *h1, *g0, *g1;
    void *ws[16];
    job jobs[16];
    pthread_t tid[16];
    dlayer ly[3];
    double t0 = now_s(), c0 = cpu_s(), c_fast, c_naive, t_fast, t_naive, flop, maxdiff = 0, maxref = 0;
    int glow = 0;
    for (int i = 1; i < argc; i++) {
        size_t *dst = NULL;
        if (!strcmp(argv[i], "--glow")) {
            glow = 1;
            continue;
        }
        if (!strcmp(argv[i], "--batch"))
            dst = &n;
        else if (!strcmp(argv[i], "--reps"))
            dst = &reps;
        else if (!strcmp(argv[i], "--naive-reps"))
            dst = &nreps;
        else if (!strcmp(argv[i], "--threads"))
            dst = &threads;
        else if (!strcmp(argv[i], "--hidden"))
            dst = &hid;
        if (!dst || i + 1 >= argc || arg_size(argv[++i], dst) ||
            threads > 16 || threads > n) {
            fputs("usage: conv_bench [--batch N] [--reps R] [--naive-reps R]"
                  " [--threads T (<= 16, <= N)] [--hidden H] [--glow]\n",
                  stderr);
            return 2;
        }
    }
    if (glow)
        return time_glow(hs, 2, 14, 14, 4, n, reps) ||
               time_glow(hs, 4, 7, 7, 8, n, reps);
    memset(&sp, 0, sizeof sp);
    sp.struct_size = sizeof sp;
    sp.kind = FLOW_NET_CONV;
    sp.in = din;
    sp.out = dout;
    sp.act = FLOW_ACT_RELU;
    sp.channels = C;
    sp.height = H;
    sp.width = W;
    sp.conv_hidden = hid;
    sp.kernel = K;
    sp.blocks = 1;
    sp.out_channels = COUT;
    sp.seed = 1;
    if (!(net = hs->net_create(&sp, err, sizeof err))) {
        fprintf(stderr, "conv_bench: net_create: %s\n", err);
        return 1;
    }
    np = hs->net_params(net);
    p = malloc(np * sizeof *p);
    g = calloc(np * threads, sizeof *g);
    gn = calloc(np, sizeof *gn);
    x = malloc(n * din * sizeof *x);
    dx = malloc(n * din * sizeof *dx);
    dxn = malloc(n * din * sizeof *dxn);
    dy = malloc(n * dout * sizeof *dy);
    y = malloc(n * dout * sizeof *y);
    yn = malloc(n * dout * sizeof *yn);
    h0 = malloc(hid * H * W * sizeof *h0);
    h1 = malloc(hid * H * W * sizeof *h1);
    g0 = malloc(hid * H * W * sizeof *g0);
    g1 = malloc(hid * H * W * sizeof *g1);
    if (!p || !g || !gn || !x || !dx || !dxn || !dy || !y || !yn || !h0 ||
        !h1 || !g0 || !g1) {
        fputs("conv_bench: out of memory\n", stderr);
        return 1;
    }
    hs->net_init(net, p, NULL);     /* the last layer random too */
    srand(3);
    for (size_t i = 0; i < n * din; i++)
        x[i] = (flow_real)(2.0 * rand() / RAND_MAX - 1);
    for (size_t i = 0; i < n * dout; i++)
        dy[i] = (flow_real)(2.0 * rand() / RAND_MAX - 1);
    for (size_t t = 0; t < threads; t++) {
        size_t a = t * n / threads, b = (t + 1) * n / threads;
        ws[t] = aligned_alloc(64, (hs->net_workspace(net, b - a) + 63) / 64
                                      * 64);
        if (!ws[t]) {
            fputs("conv_bench: out of memory\n", stderr);
            return 1;
        }
        jobs[t] = (job){hs, net, p, x + a * din, dy + a * dout, b - a,
                        y + a * dout, dx + a * din, g + t * np, ws[t], -1};
    }
    /* warm-up, then reps */
    for (size_t r = 0; r <= reps; r++) {
        if (r == 1) {
            t0 = now_s();
            c0 = cpu_s();
        }
        for (size_t t = 1; t < threads; t++)
            pthread_create(&tid[t], NULL, run_job, &jobs[t]);
        run_job(&jobs[0]);
        for (size_t t = 1; t < threads; t++)
            pthread_join(tid[t], NULL);
        for (size_t t = 0; t < threads; t++)
            if (jobs[t].rc != FLOW_OK) {
                fprintf(stderr, "conv_bench: net call failed (%d)\n",
                        jobs[t].rc);
                return 1;
            }
    }
    t_fast = (now_s() - t0) / (double)reps;
    c_fast = (cpu_s() - c0) / (double)reps;
    /* the direct convolution on the same parameters (layout: conv.h) */
    off = 0;
    for (int l = 0; l < 3; l++) {
        ly[l].cin = l == 0 ? C : hid;
        ly[l].cout = l == 2 ? COUT : hid;
        ly[l].k = l == 1 ? 1 : K;
        ly[l].w = p + off;
        ly[l].dw = gn + off;
        off += ly[l].cout * ly[l].cin * ly[l].k * ly[l].k;
        ly[l].b = p + off;
        ly[l].db = gn + off;
        off += ly[l].cout;
    }
    lo_w = off;
    t0 = now_s();
    c0 = cpu_s();
    for (size_t r = 0; r < nreps; r++)
        direct_step(ly, n, x, dy, yn, dxn, h0, h1, g0, g1);
    t_naive = (now_s() - t0) / (double)nreps;
    c_naive = (cpu_s() - c0) / (double)nreps;
    for (size_t i = 0; i < n * dout; i++) {
        maxdiff = fmax(maxdiff, fabs(y[i] - yn[i]));
        maxref = fmax(maxref, fabs(yn[i]));
    }
    for (size_t i = 0; i < n * din; i++) {
        maxdiff = fmax(maxdiff, fabs(dx[i] - dxn[i]));
        maxref = fmax(maxref, fabs(dxn[i]));
    }
    /* multiply-adds x 2 per image: forward W col for each layer, backward
     * the same again for dW and for dx */
    flop = 0;
    for (int l = 0; l < 3; l++)
        flop += 2.0 * H * W * (double)(ly[l].cout * ly[l].cin * ly[l].k *
                                       ly[l].k);
    flop *= 3.0 * (double)n;
    printf("{\"batch\": %zu, \"hidden\": %zu, \"threads\": %zu, \"params\": "
           "%zu, \"gflop_per_step\": %.4f, \"conv_ms\": %.3f, "
           "\"conv_cpu_ms\": %.3f, \"conv_gflops\": %.2f, \"direct_ms\": "
           "%.1f, \"direct_cpu_ms\": %.1f, \"direct_gflops\": %.3f, "
           "\"speedup\": %.1f, \"cpu_speedup\": %.1f, \"max_abs_diff\": "
           "%.3g, \"max_abs\": %.3g, \"real_bytes\": %zu}\n", n, hid,
           threads, lo_w, flop * 1e-9, t_fast * 1e3, c_fast * 1e3,
           flop * 1e-9 / t_fast, t_naive * 1e3, c_naive * 1e3,
           flop * 1e-9 / t_naive, t_naive / t_fast, c_naive / c_fast,
           maxdiff, maxref, sizeof(flow_real));
    for (size_t t = 0; t < threads; t++)
        free(ws[t]);
    free(p);
    free(g);
    free(gn);
    free(x);
    free(dx);
    free(dxn);
    free(dy);
    free(y);
    free(yn);
    free(h0);
    free(h1);
    free(g0);
    free(g1);
    hs->net_destroy(net);
    return 0;
}
