/* comm_mpi.c - the communicator over MPI (MPI_COMM_WORLD), every collective
 * under a watchdog's timeout: the one file of flowkit that includes mpi.h. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    return flow_ctx_error(c->ctx, FLOW_ERR_IO, "%s on rank %d of %d failed: "
                          "%s", what, c->rank, c->size,
                          len ? text : "unknown MPI error");
}

/* ------------------------------------------------------------ timeout */

/* A rank that hangs without dying (stopped, deadlocked, blocked on I/O)
 * would hold every other rank in its next collective for ever: MPI has
 * no timeout of its own, and mpirun only notices a process that exits.
 * A watchdog thread ends the job when one collective has waited longer
 * than FLOWKIT_MPI_TIMEOUT seconds (0: no limit).
 *
 * Why a thread beside blocking collectives rather than non-blocking
 * ones (MPI_Iallreduce) polled with MPI_Test and a deadline: the
 * blocking collectives keep the algorithms the MPI tunes for them, where
 * Open MPI 4.1's non-blocking ones (libnbc) take a binomial tree below 4
 * ranks or in place, measured 1.7x slower for 136k doubles and 2.1x for
 * 1.8M on 2 ranks; a non-blocking collective advances only inside MPI
 * calls, so a rank that sleeps between tests (not to spin a core) delays
 * every round of it; and the watchdog also sees a rank that stops inside
 * a collective, after its peers entered.  What it costs: two clock reads
 * and two uncontended lock pairs per collective, and a thread that sleeps
 * until the deadline of the collective in progress.  What it does not
 * do: let a waiting rank sleep; the MPI spins (or yields) as it would.
 *
 * The default bounds the longest legitimate wait with a wide margin:
 * ranks wait in a collective for the slowest rank's work between two of
 * them, which is one step's share of blocks, rank 0 writing a
 * checkpoint while the others wait at the next step, or the ranks
 * reading the data at start-up at different speeds (docs/distributed.md,
 * "Failures", has the measurements). */
#define TIMEOUT_DEFAULT 600.0
#define TIMEOUT_MAX 604800.0    /* a week; 0 turns the watchdog off */

typedef enum watch_op {
    WATCH_SUM, WATCH_MAX, WATCH_BROADCAST, WATCH_BARRIER, WATCH_CLOSING,
    WATCH_GATHER, WATCH_ALLTOALL, WATCH_ALLGATHER
} watch_op;

struct comm_watch {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* signalled only to stop the thread */
    double timeout;
    int rank, size;
    int abort_ok;               /* MPI_THREAD_MULTIPLE: MPI_Abort from here */
    int stop;
    /* the collective in progress, under lock */
    int busy;
    watch_op op;
    size_t count;
    int root;
    double since;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "allreduce (sum) of 136012 values" and so on, for the message. */
static void describe(char *buf, size_t cap, watch_op op, size_t count,
                     int root)
{
    switch (op) {
    case WATCH_SUM:
    case WATCH_MAX:
        snprintf(buf, cap, "allreduce (%s) of %zu value%s",
                 op == WATCH_SUM ? "sum" : "max", count,
                 count == 1 ? "" : "s");
        break;
    case WATCH_BROADCAST:
        snprintf(buf, cap, "broadcast of %zu bytes from rank %d", count,
                 root);
        break;
    case WATCH_BARRIER:
        snprintf(buf, cap, "barrier");
        break;
    case WATCH_CLOSING:
        snprintf(buf, cap, "the closing barrier (before MPI_Finalize)");
        break;
    case WATCH_GATHER:
        snprintf(buf, cap, "gather to rank %d of %zu element%s", root,
                 count, count == 1 ? "" : "s");
        break;
    case WATCH_ALLTOALL:
        snprintf(buf, cap, "all-to-all exchange (%zu units sent)", count);
        break;
    case WATCH_ALLGATHER:
        snprintf(buf, cap, "allgather of %zu bytes", count);
        break;
    }
}

/* Ends the job: the message, then MPI_Abort (which returns only where
 * the MPI ignores it), else _exit, which the launcher sees as a lost
 * rank and ends the others for. */
static void watch_fire(struct comm_watch *w, double waited)
{
    char what[96];
    describe(what, sizeof what, w->op, w->count, w->root);
    fprintf(stderr, "flowkit: rank %d of %d: %s waited %.0f s for the other "
            "ranks; ending the job (FLOWKIT_MPI_TIMEOUT=%g; 0 waits for "
            "ever)\n", w->rank, w->size, what, waited, w->timeout);
    fflush(NULL);
    if (w->abort_ok)
        MPI_Abort(MPI_COMM_WORLD, 1);
    _exit(1);
}

/* Sleeps until the deadline of the collective in progress, or a whole
 * timeout when none is: a collective that starts meanwhile is seen at
 * the next wake and its deadline waited for then, so the main thread
 * never has to wake this one. */
static void *watch_main(void *arg)
{
    struct comm_watch *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        double now = now_s(), due;
        struct timespec ts;
        if (w->busy && now - w->since >= w->timeout)
            watch_fire(w, now - w->since);
        due = w->busy ? w->since + w->timeout : now + w->timeout;
        ts.tv_sec = (time_t)due;
        ts.tv_nsec = (long)((due - floor(due)) * 1e9);
        if (ts.tv_nsec > 999999999L)
            ts.tv_nsec = 999999999L;
        pthread_cond_timedwait(&w->wake, &w->lock, &ts);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void watch_enter(flow_comm *c, watch_op op, size_t count, int root)
{
    struct comm_watch *w = c->watch;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->op = op;
    w->count = count;
    w->root = root;
    w->since = now_s();
    w->busy = 1;
    pthread_mutex_unlock(&w->lock);
}

static void watch_leave(flow_comm *c)
{
    struct comm_watch *w = c->watch;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->busy = 0;
    pthread_mutex_unlock(&w->lock);
}

/* FLOWKIT_MPI_TIMEOUT: seconds, 0 for none; unset or empty: the
 * default. */
static int read_timeout(flow_comm *c, double *seconds)
{
    const char *v = getenv("FLOWKIT_MPI_TIMEOUT");
    char *end;
    double s;
    *seconds = TIMEOUT_DEFAULT;
    if (!v || !*v)
        return FLOW_OK;
    errno = 0;
    s = strtod(v, &end);
    if (end == v || *end || errno || !(s >= 0 && s <= TIMEOUT_MAX))
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "FLOWKIT_MPI_TIMEOUT="
                              "'%.40s' is not a number of seconds from 0 "
                              "(no limit) to %.0f", v, TIMEOUT_MAX);
    *seconds = s;
    return FLOW_OK;
}

static void watch_free(struct comm_watch *w)
{
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* The watchdog for c, none for a timeout of 0 or a single rank (no
 * collective waits for another).  Its thread blocks every signal, so
 * that SIGINT, SIGTERM and SIGALRM still reach the main thread. */
static int watch_start(flow_comm *c, double timeout, int abort_ok)
{
    struct comm_watch *w;
    pthread_condattr_t ca;
    sigset_t all, old;
    int err;
    if (timeout == 0 || c->size < 2)
        return FLOW_OK;
    if (!(w = calloc(1, sizeof *w)))
        return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "out of memory for "
                              "the MPI collectives' watchdog");
    w->timeout = timeout;
    w->rank = c->rank;
    w->size = c->size;
    w->abort_ok = abort_ok;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&w->thread, NULL, watch_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        watch_free(w);
        return flow_ctx_error(c->ctx, FLOW_ERR_IO, "cannot start the MPI "
                              "collectives' watchdog thread: %s",
                              strerror(err));
    }
    c->watch = w;
    return FLOW_OK;
}

static void watch_stop(flow_comm *c)
{
    struct comm_watch *w = c->watch;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    watch_free(w);
    c->watch = NULL;
}

/* ------------------------------------------------------------ MPI */

int comm_mpi_init(flow_comm *c)
{
    int on = 0, err, rc, provided = MPI_THREAD_SINGLE;
    double timeout;
    if ((err = MPI_Initialized(&on)) != MPI_SUCCESS)
        return mpi_fail(c, err, "MPI_Initialized");
    if (!on) {
        /* the calling thread makes every call but one: the watchdog's
         * MPI_Abort, which needs MPI_THREAD_MULTIPLE (measured: no cost
         * to the collectives over MPI_THREAD_FUNNELED with Open MPI) */
        if ((err = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE,
                                   &provided)) != MPI_SUCCESS)
            return flow_ctx_error(c->ctx, FLOW_ERR_IO, "MPI_Init_thread "
                                  "failed (error %d)", err);
        c->finalize = 1;
    } else if ((err = MPI_Query_thread(&provided)) != MPI_SUCCESS)
        return mpi_fail(c, err, "MPI_Query_thread");
    /* a failed collective returns here instead of killing the process
     * (MPI_ERRORS_ARE_FATAL), so that the message names flowkit's call */
    if ((err = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN))
            != MPI_SUCCESS
        || (err = MPI_Comm_rank(MPI_COMM_WORLD, &c->rank)) != MPI_SUCCESS
        || (err = MPI_Comm_size(MPI_COMM_WORLD, &c->size)) != MPI_SUCCESS)
        rc = mpi_fail(c, err, "MPI setup");
    else if ((rc = read_timeout(c, &timeout)) == FLOW_OK
             && (rc = watch_start(c, timeout,
                                  provided >= MPI_THREAD_MULTIPLE))
                == FLOW_OK)
        return FLOW_OK;
    if (c->finalize)
        MPI_Finalize();
    return rc;
}

/* The ranks meet before MPI_Finalize, which waits for all of them with
 * no timeout: a rank still busy (rank 0 writing the last checkpoint) is
 * waited for here, under the watchdog. */
void comm_mpi_finalize(flow_comm *c)
{
    if (c->finalize && c->watch) {
        watch_enter(c, WATCH_CLOSING, 0, 0);
        MPI_Barrier(MPI_COMM_WORLD);
        watch_leave(c);
    }
    watch_stop(c);
    if (c->finalize)
        MPI_Finalize();
}

/* MPI counts are int: buffers go in pieces of at most INT_MAX / 2
 * elements. */
#define PIECE ((size_t)INT_MAX / 2)

int comm_mpi_allreduce(flow_comm *c, double *buf, size_t n, flow_comm_op op)
{
    MPI_Op mop = op == FLOW_COMM_MAX ? MPI_MAX : MPI_SUM;
    int err = MPI_SUCCESS;
    watch_enter(c, op == FLOW_COMM_MAX ? WATCH_MAX : WATCH_SUM, n, 0);
    for (size_t o = 0; o < n && err == MPI_SUCCESS; o += PIECE) {
        int k = (int)(n - o < PIECE ? n - o : PIECE);
        err = MPI_Allreduce(MPI_IN_PLACE, buf + o, k, MPI_DOUBLE, mop,
                            MPI_COMM_WORLD);
    }
    watch_leave(c);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Allreduce");
}

int comm_mpi_broadcast(flow_comm *c, void *buf, size_t bytes, int root)
{
    int err = MPI_SUCCESS;
    watch_enter(c, WATCH_BROADCAST, bytes, root);
    for (size_t o = 0; o < bytes && err == MPI_SUCCESS; o += PIECE) {
        int k = (int)(bytes - o < PIECE ? bytes - o : PIECE);
        err = MPI_Bcast((char *)buf + o, k, MPI_BYTE, root, MPI_COMM_WORLD);
    }
    watch_leave(c);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Bcast");
}

int comm_mpi_barrier(flow_comm *c)
{
    int err;
    watch_enter(c, WATCH_BARRIER, 0, 0);
    err = MPI_Barrier(MPI_COMM_WORLD);
    watch_leave(c);
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
            return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "flow_comm_gather: "
                                  "more than %d elements of %zu bytes",
                                  INT_MAX, size);
        off += counts[r];
    }
    if (c->rank == 0) {
        cnt = malloc((size_t)c->size * sizeof *cnt);
        disp = malloc((size_t)c->size * sizeof *disp);
        if (!cnt || !disp) {
            free(cnt);
            free(disp);
            return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "flow_comm_gather: "
                                  "out of memory for %d counts", c->size);
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
        watch_enter(c, WATCH_GATHER, off, 0);
        err = MPI_Gatherv(c->rank == 0 && mine == all ? MPI_IN_PLACE : mine,
                          (int)counts[c->rank], t, all, cnt, disp, t, 0,
                          MPI_COMM_WORLD);
        watch_leave(c);
        if (err != MPI_SUCCESS)
            rc = mpi_fail(c, err, "MPI_Gatherv");
        MPI_Type_free(&t);
    }
    free(cnt);
    free(disp);
    return rc;
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
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "alltoallv: "
                              "units of %zu bytes (at most %d)",
                              unit, INT_MAX);
    if (!(v = malloc(4 * (size_t)n * sizeof *v)))
        return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "out of memory "
                              "for an alltoallv of %d processes", n);
    for (int q = 0; q < n; q++) {
        if (send_counts[q] > (size_t)INT_MAX - st
            || recv_counts[q] > (size_t)INT_MAX - rt) {
            free(v);
            return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "alltoallv: "
                                  "more than %d units of %zu "
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
    watch_enter(c, WATCH_ALLTOALL, st, 0);
    err = MPI_Alltoallv(send ? send : &none_sent, v, v + n, type,
                        recv ? recv : &none_received, v + 2 * n, v + 3 * n,
                        type, MPI_COMM_WORLD);
    watch_leave(c);
    MPI_Type_free(&type);
    free(v);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Alltoallv");
}

int comm_mpi_allgather(flow_comm *c, const void *mine, void *all,
                       size_t bytes)
{
    int err;
    if (bytes > INT_MAX)
        return flow_ctx_error(c->ctx, FLOW_ERR_INVAL, "allgather "
                              "of %zu bytes (at most %d)", bytes,
                              INT_MAX);
    watch_enter(c, WATCH_ALLGATHER, bytes, 0);
    err = MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes,
                        MPI_BYTE, MPI_COMM_WORLD);
    watch_leave(c);
    return err == MPI_SUCCESS ? FLOW_OK : mpi_fail(c, err, "MPI_Allgather");
}
