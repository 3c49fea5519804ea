/* comm.c - the communicator of data-parallel training: rank, size and
 * collectives, for one process here and over MPI in comm_mpi.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "ctx.h"

flow_comm *flow_comm_new(flow_ctx *ctx)
{
    flow_comm *c = calloc(1, sizeof *c);
    const char *env = getenv("FLOWKIT_MPI");
    if (!c) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory for a "
                       "communicator");
        return NULL;
    }
    c->ctx = ctx;
    c->rank = 0;
    c->size = 1;
#ifdef FLOW_HAVE_MPI
    if (!(env && strcmp(env, "0") == 0) && comm_mpi_launched()) {
        if (comm_mpi_init(c) != FLOW_OK) {
            free(c);
            return NULL;
        }
        c->mpi = 1;
    }
#else
    {
        /* launched as one of several ranks by a launcher this build
         * cannot talk to: each rank would train alone on all the data */
        const char *n = getenv("OMPI_COMM_WORLD_SIZE");
        if (!n)
            n = getenv("PMI_SIZE");
        if (n && strcmp(n, "1") != 0 && !(env && strcmp(env, "0") == 0)) {
            flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "started as one "
                           "of %s MPI ranks, but this flowkit was built "
                           "without MPI (configure --with-mpi; or "
                           "FLOWKIT_MPI=0 for independent runs)", n);
            free(c);
            return NULL;
        }
    }
#endif
    return c;
}

void flow_comm_free(flow_comm *c)
{
    if (!c)
        return;
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        comm_mpi_finalize(c);
#endif
    free(c);
}

int flow_comm_rank(const flow_comm *c) { return c->rank; }
int flow_comm_size(const flow_comm *c) { return c->size; }
const char *flow_comm_kind(const flow_comm *c)
{
    return c->mpi ? "mpi" : "single";
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Counts a collective that started at t0 and moved `bytes` from this
 * process; returns rc. */
static int tally(flow_comm *c, double t0, double bytes, int rc)
{
    c->calls++;
    c->seconds += wall_s() - t0;
    c->bytes += bytes;
    return rc;
}

void flow_comm_stats(const flow_comm *c, unsigned long long *calls,
                     double *seconds, double *bytes)
{
    if (calls)
        *calls = c->calls;
    if (seconds)
        *seconds = c->seconds;
    if (bytes)
        *bytes = c->bytes;
}

/* One process: every collective is the identity. */
int flow_comm_allreduce(flow_comm *c, double *buf, size_t n, flow_comm_op op)
{
    double t0 = wall_s();
    if (op != FLOW_COMM_SUM && op != FLOW_COMM_MAX)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "flow_comm_allreduce: "
                              "unknown operation %d", (int)op);
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, (double)n * sizeof *buf,
                     comm_mpi_allreduce(c, buf, n, op));
#endif
    (void)buf;
    return tally(c, t0, (double)n * sizeof *buf, FLOW_OK);
}

int flow_comm_broadcast(flow_comm *c, void *buf, size_t bytes, int root)
{
    double t0 = wall_s();
    if (root < 0 || root >= c->size)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "flow_comm_broadcast "
                              "from rank %d of %d: no such rank", root,
                              c->size);
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, (double)bytes,
                     comm_mpi_broadcast(c, buf, bytes, root));
#endif
    (void)buf;
    return tally(c, t0, (double)bytes, FLOW_OK);
}

int flow_comm_barrier(flow_comm *c)
{
    double t0 = wall_s();
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, 0, comm_mpi_barrier(c));
#endif
    return tally(c, t0, 0, FLOW_OK);
}

void flow_comm_abort(flow_comm *c, int code, const char *msg)
{
    if (msg && *msg)
        fprintf(stderr, "%s\n", msg);
    fflush(NULL);
#ifdef FLOW_HAVE_MPI
    if (c && c->mpi)
        comm_mpi_abort(c, code);
#endif
    (void)c;
    exit(code);
}

int flow_comm_gather(flow_comm *c, const void *mine, void *all,
                     const size_t *counts, size_t size)
{
    double t0 = wall_s();
    if (size == 0)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "flow_comm_gather: "
                              "elements of 0 bytes");
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, (double)counts[c->rank] * (double)size,
                     comm_mpi_gather(c, mine, all, counts, size));
#endif
    if (all != mine && counts[0])
        memmove(all, mine, counts[0] * size);
    return tally(c, t0, (double)counts[0] * (double)size, FLOW_OK);
}

int comm_alltoallv(flow_comm *c, const void *send, const size_t *send_counts,
                   void *recv, const size_t *recv_counts, size_t unit)
{
    double t0 = wall_s(), sent = 0;
    if (unit == 0)
        return FLOW_OK;
    for (int r = 0; r < c->size; r++)
        sent += (double)send_counts[r] * (double)unit;
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, sent, comm_mpi_alltoallv(c, send, send_counts,
                                                     recv, recv_counts,
                                                     unit));
#endif
    if (send_counts[0] != recv_counts[0])
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "alltoallv: %zu "
                              "units sent, %zu expected", send_counts[0],
                              recv_counts[0]);
    if (send_counts[0] && unit)
        memcpy(recv, send, send_counts[0] * unit);
    return tally(c, t0, sent, FLOW_OK);
}

int comm_allgather(flow_comm *c, const void *mine, void *all, size_t bytes)
{
    double t0 = wall_s();
#ifdef FLOW_HAVE_MPI
    if (c->mpi)
        return tally(c, t0, (double)bytes,
                     comm_mpi_allgather(c, mine, all, bytes));
#endif
    if (bytes)
        memcpy(all, mine, bytes);
    return tally(c, t0, (double)bytes, FLOW_OK);
}
