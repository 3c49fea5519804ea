/* comm.h - internal: flow_comm (flow.h), one process (comm.c) or MPI's
 * processes (comm_mpi.c, the only file that includes an MPI header). */
#ifndef FLOW_RUNTIME_COMM_H
#define FLOW_RUNTIME_COMM_H

#include <stddef.h>

#include "flow/flow.h"

struct comm_watch;

struct flow_comm {
    flow_ctx *ctx;              /* errors go here (borrowed) */
    int rank, size;
    int mpi;                    /* 1: the collectives go to comm_mpi.c */
    int finalize;               /* comm_mpi_init initialised MPI */
    /* flow_comm_stats: the collectives so far, their wall time (waiting
     * for the other processes included) and the bytes each contributed */
    unsigned long long calls;
    double seconds, bytes;
    struct comm_watch *watch;   /* comm_mpi.c's collective timeout, or NULL */
};

/* comm_mpi.c, in builds configured with MPI.  comm_mpi_launched: 1 when
 * the environment says an MPI launcher started this process.
 * comm_mpi_init: initialises MPI if needed, fills c's rank, size,
 * finalize and starts the collectives' watchdog (FLOWKIT_MPI_TIMEOUT);
 * errors are FLOW_ERR_* with the message in c->ctx.  A collective that
 * waits longer than the timeout ends the job from the watchdog (a
 * message on stderr, then MPI_Abort): it never returns an error. */
int comm_mpi_launched(void);
int comm_mpi_init(flow_comm *c);
void comm_mpi_finalize(flow_comm *c);
int comm_mpi_allreduce(flow_comm *c, double *buf, size_t n, flow_comm_op op);
int comm_mpi_broadcast(flow_comm *c, void *buf, size_t bytes, int root);
int comm_mpi_barrier(flow_comm *c);
void comm_mpi_abort(flow_comm *c, int code);
int comm_mpi_gather(flow_comm *c, const void *mine, void *all,
                    const size_t *counts, size_t size);

/* Every process sends send_counts[q] units of `unit` bytes to process q
 * (from send: the units for process 0, then for 1, ...) and receives
 * recv_counts[q] units from process q (into recv, in the same order);
 * process p's send_counts[q] must equal q's recv_counts[p].  One
 * process: send's units are copied to recv. */
int comm_alltoallv(flow_comm *c, const void *send, const size_t *send_counts,
                   void *recv, const size_t *recv_counts, size_t unit);
/* all[q bytes .. (q + 1) bytes) = process q's `mine`, on every process. */
int comm_allgather(flow_comm *c, const void *mine, void *all, size_t bytes);
int comm_mpi_alltoallv(flow_comm *c, const void *send,
                       const size_t *send_counts, void *recv,
                       const size_t *recv_counts, size_t unit);
int comm_mpi_allgather(flow_comm *c, const void *mine, void *all,
                       size_t bytes);

#endif
