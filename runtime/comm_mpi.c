/* comm_mpi.c - the communicator over MPI (MPI_COMM_WORLD): the one file of
 * flowkit that includes mpi.h; MPI errors come back as FLOW_ERR_IO. */
#include <limits.h>
#include <stdlib.h>

#include <mpi.h>

#include "comm.h"

/* Open MPI's mpirun, PMIx (Open MPI 4+, Slurm's srun --mpi=pmix) and
 * PMI-1/2 launchers (MPICH's hydra, srun --mpi=pmi2) each set these. */
int comm_mpi_launched(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                                       "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

/* The MPI error's own text, in c's context. */
static int mpi_fail(flow_comm *c, int err, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, text, &len) != MPI_SUCCESS)
        len = 0;
    text[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    return flow_ctx_error(c->ctx, FLOW_ERR_IO, "comm_mpi.c: %s on rank %d "
                          "of %d failed: %s", what, c->rank, c->size,
                          len ? text : "unknown MPI error");
}

int comm_mpi_init(flow_comm *c)
{
    int on = 0, err, provided;
    if ((err = MPI_Initialized(&on)) != MPI_SUCCESS)
        return mpi_fail(c, err, "MPI_Initialized");
    if (!on) {
        /* only the calling thread talks to MPI; the model's pool threads
         * never do */
        if ((err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED,
                                   &provided)) != MPI_SUCCESS)
            return flow_ctx_error(c->ctx, FLOW_ERR_IO, "comm_mpi.c: "
                                  "MPI_Init_thread failed (error %d)", err);
        c->finalize = 1;
    }
    /* a failed collective returns here instead of killing the process
     * (MPI_ERRORS_ARE_FATAL), so that the message names flowkit's call */
    if ((err = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN))
            != MPI_SUCCESS
        || (err = MPI_Comm_rank(MPI_COMM_WORLD, &c->rank)) != MPI_SUCCESS
        || (err = MPI_Comm_size(MPI_COMM_WORLD, &c->size)) != MPI_SUCCESS) {
        mpi_fail(c, err, "MPI setup");
        if (c->finalize)
            MPI_Finalize();
        return FLOW_ERR_IO;
    }
    return FLOW_OK;
}

void comm_mpi_finalize(flow_comm *c)
{
    if (c->finalize)
        MPI_Finalize();
}

/* MPI counts are int: buffers go in pieces of at most INT_MAX / 2
 * elements. */
#define PIECE ((size_t)INT_MAX / 2)

int comm_mpi_allreduce(flow_comm *c, double *buf, size_t n, flow_comm_op op)
{
    MPI_Op mop = op == FLOW_COMM_MAX ? MPI_MAX : MPI_SUM;
    for (size_t o = 0; o < n; o += PIECE) {
        int k = (int)(n - o < PIECE ? n - o : PIECE);
        int err = MPI_Allreduce(MPI_IN_PLACE, buf + o, k, MPI_DOUBLE, mop,
                                MPI_COMM_WORLD);
        if (err != MPI_SUCCESS)
            return mpi_fail(c, err, "MPI_Allreduce");
    }
    return FLOW_OK;
}

int comm_mpi_broadcast(flow_comm *c, void *buf, size_t bytes, int root)
{
    for (size_t o = 0; o < bytes; o += PIECE) {
        int k = (int)(bytes - o < PIECE ? bytes - o : PIECE);
        int err = MPI_Bcast((char *)buf + o, k, MPI_BYTE, root,
                            MPI_COMM_WORLD);
        if (err != MPI_SUCCESS)
            return mpi_fail(c, err, "MPI_Bcast");
    }
    return FLOW_OK;
}

int comm_mpi_barrier(flow_comm *c)
{
    int err = MPI_Barrier(MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Barrier");
}

void comm_mpi_abort(flow_comm *c, int code)
{
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}

/* Counts and displacements are int in MPI: units of `unit` bytes (one
 * contiguous datatype, unit > 0), at most INT_MAX of them in all. */
int comm_mpi_alltoallv(flow_comm *c, const void *send,
                       const size_t *send_counts, void *recv,
                       const size_t *recv_counts, size_t unit)
{
    int n = c->size, err, *v;
    size_t st = 0, rt = 0;
    MPI_Datatype type;
    static char none_sent, none_received;
    if (unit > INT_MAX)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "comm_mpi.c: "
                              "alltoallv: units of %zu bytes (at most %d)",
                              unit, INT_MAX);
    if (!(v = malloc(4 * (size_t)n * sizeof *v)))
        return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "comm_mpi.c: out of "
                              "memory for an alltoallv of %d processes", n);
    for (int q = 0; q < n; q++) {
        if (send_counts[q] > (size_t)INT_MAX - st
            || recv_counts[q] > (size_t)INT_MAX - rt) {
            free(v);
            return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "comm_mpi.c: "
                                  "alltoallv: more than %d units of %zu "
                                  "bytes on rank %d", INT_MAX, unit,
                                  c->rank);
        }
        v[q] = (int)send_counts[q];
        v[n + q] = (int)st;
        v[2 * n + q] = (int)recv_counts[q];
        v[3 * n + q] = (int)rt;
        st += send_counts[q];
        rt += recv_counts[q];
    }
    if ((err = MPI_Type_contiguous((int)unit, MPI_BYTE, &type))
            != MPI_SUCCESS
        || (err = MPI_Type_commit(&type)) != MPI_SUCCESS) {
        free(v);
        return mpi_fail(c, err, "MPI_Type_contiguous");
    }
    /* a buffer of no units may be NULL, which MPI need not accept (nor
     * one buffer for both sides) */
    err = MPI_Alltoallv(send ? send : &none_sent, v, v + n, type,
                        recv ? recv : &none_received, v + 2 * n, v + 3 * n,
                        type, MPI_COMM_WORLD);
    MPI_Type_free(&type);
    free(v);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Alltoallv");
}

int comm_mpi_allgather(flow_comm *c, const void *mine, void *all,
                       size_t bytes)
{
    int err;
    if (bytes > INT_MAX)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "comm_mpi.c: "
                              "allgather of %zu bytes (at most %d)", bytes,
                              INT_MAX);
    err = MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes,
                        MPI_BYTE, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Allgather");
}
