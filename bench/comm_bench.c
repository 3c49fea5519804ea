/* comm_bench.c - times flow_comm_allreduce (the gradient sum of
 * data-parallel training) for vector sizes around the bundled models'
 * parameter counts; run under mpirun (bench/mpi_bench, docs/distributed.md).
 *
 *   mpirun -np N bench/comm_bench [--min-time S] [SIZE...]
 *
 * For each size (doubles) every rank calls the allreduce (SUM) over the
 * same vector repeatedly, a barrier first, until --min-time seconds
 * (default 0.3) have passed on rank 0 and at least 5 calls; rank 0 prints
 * one JSON line per size with the median and minimum seconds per call,
 * taken over batches of calls timed between barriers so that no rank's
 * late start is counted.  The training step's allreduce also waits for
 * the slowest rank; this measures the transfer alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "flow/flow.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Every rank runs the same number of calls: rank 0 decides after each
 * round whether to go on and broadcasts it.  Returns 0 or 1 on error. */
static int time_size(flow_comm *comm, size_t n, double min_time,
                     double *median, double *best, int *calls)
{
    enum { MAX_ROUNDS = 4096 };
    double *buf = malloc((n ? n : 1) * sizeof *buf);
    double times[MAX_ROUNDS], start = now_s();
    int rounds = 0, more = 1;
    if (!buf)
        return 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = 1e-3 * (double)(i % 1000);
    while (more && rounds < MAX_ROUNDS) {
        double t0;
        if (flow_comm_barrier(comm) != FLOW_OK)
            goto fail;
        t0 = now_s();
        if (flow_comm_allreduce(comm, buf, n, FLOW_COMM_SUM) != FLOW_OK)
            goto fail;
        times[rounds++] = now_s() - t0;
        more = rounds < 5 || now_s() - start < min_time;
        if (flow_comm_broadcast(comm, &more, sizeof more, 0) != FLOW_OK)
            goto fail;
    }
    qsort(times, (size_t)rounds, sizeof *times, cmp_double);
    *median = times[rounds / 2];
    *best = times[0];
    *calls = rounds;
    free(buf);
    return 0;
fail:
    free(buf);
    return 1;
}

int main(int argc, char **argv)
{
    /* 1, a cache line, realnvp2d-like and glow_fashion-like vectors
     * (75,776 and 136,208 parameters), maf64 (1,808,000), and powers of
     * 4 between */
    static const size_t defaults[] = {1,      8,       1024,    16384,
                                      75776,  136208,  262144,  1048576,
                                      1808000, 4194304, 16777216};
    size_t sizes[64], ns = 0;
    double min_time = 0.3;
    flow_ctx *ctx = flow_ctx_new();
    flow_comm *comm;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--min-time") && i + 1 < argc)
            min_time = atof(argv[++i]);
        else if (argv[i][0] >= '0' && argv[i][0] <= '9' && ns < 64)
            sizes[ns++] = (size_t)strtoull(argv[i], NULL, 10);
        else {
            fprintf(stderr, "usage: comm_bench [--min-time S] [SIZE...]\n");
            return 2;
        }
    }
    if (!ns)
        for (; ns < sizeof defaults / sizeof *defaults; ns++)
            sizes[ns] = defaults[ns];
    if (!ctx || !(comm = flow_comm_new(ctx))) {
        fprintf(stderr, "comm_bench: %s\n",
                ctx ? flow_errmsg(ctx) : "out of memory");
        return 1;
    }
    for (size_t k = 0; k < ns && !rc; k++) {
        double med, best;
        int calls;
        if ((rc = time_size(comm, sizes[k], min_time, &med, &best,
                            &calls)) != 0)
            fprintf(stderr, "comm_bench: %s\n", flow_errmsg(ctx));
        else if (flow_comm_rank(comm) == 0)
            printf("{\"ranks\": %d, \"doubles\": %zu, \"bytes\": %zu, "
                   "\"median_s\": %.9f, \"min_s\": %.9f, \"calls\": %d}\n",
                   flow_comm_size(comm), sizes[k],
                   sizes[k] * sizeof(double), med, best, calls);
        fflush(stdout);
    }
    flow_comm_free(comm);
    flow_ctx_free(ctx);
    return rc;
}
