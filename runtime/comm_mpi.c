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

/* MPI_Gatherv in elements of `size` bytes (a contiguous type), so that
 * its int counts and displacements reach 2^31 elements rather than 2^31
 * bytes.  Every process checks every count, so all of them refuse a
 * gather too large together instead of leaving the others waiting. */
int comm_mpi_gather(flow_comm *c, const void *mine, void *all,
                    const size_t *counts, size_t size)
{
    int *cnt = NULL, *disp = NULL, err, rc = FLOW_OK;
    size_t off = 0;
    MPI_Datatype t;
    for (int r = 0; r < c->size; r++) {
        if (size > INT_MAX || counts[r] > (size_t)INT_MAX - off)
            return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "comm_mpi.c: "
                                  "gather of more than %d elements of %zu "
                                  "bytes", INT_MAX, size);
        off += counts[r];
    }
    if (c->rank == 0) {
        cnt = malloc((size_t)c->size * sizeof *cnt);
        disp = malloc((size_t)c->size * sizeof *disp);
        if (!cnt || !disp) {
            free(cnt);
            free(disp);
            return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "comm_mpi.c: out "
                                  "of memory for a gather's counts");
        }
        off = 0;
        for (int r = 0; r < c->size; r++) {
            cnt[r] = (int)counts[r];
            disp[r] = (int)off;
            off += counts[r];
        }
    }
    if ((err = MPI_Type_contiguous((int)size, MPI_BYTE, &t)) != MPI_SUCCESS
        || (err = MPI_Type_commit(&t)) != MPI_SUCCESS)
        rc = mpi_fail(c, err, "MPI_Type_contiguous");
    else {
        /* rank 0's own elements may already sit at the front of all */
        err = MPI_Gatherv(c->rank == 0 && mine == all ? MPI_IN_PLACE : mine,
                          (int)counts[c->rank], t, all, cnt, disp, t, 0,
                          MPI_COMM_WORLD);
        if (err != MPI_SUCCESS)
            rc = mpi_fail(c, err, "MPI_Gatherv");
        MPI_Type_free(&t);
    }
    free(cnt);
    free(disp);
    return rc;
}
