/* pool.c - persistent worker threads for row-parallel layer calls: a
 * generation counter each worker waits on, spinning briefly, then asleep
 * on a condition variable; team runs that late workers may skip,
 * per-thread scratch, and the thread-local loan of a pool to a layer
 * call.  The work split is fixed by the caller (in a team run, which
 * thread runs a piece is not, what it computes is), so results do not
 * depend on timing. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "pool.h"

/* How long a thread spins for the next task (worker) or for the workers
 * to finish (caller) before it blocks.  A training step issues a few
 * pool_runs a millisecond apart with serial work between them; waking a
 * thread blocked in the kernel took 30-100 us on the measuring machine
 * (bench/README.md, "Coupling flows"), spinning a few hundred microseconds
 * bridges those gaps without holding a core when the pool is idle. */
#define SPIN_NS 300000L

struct pool {
    pthread_mutex_t mu;
    void **scratch;             /* per thread (pool_scratch)               */
    size_t *scratch_bytes;
    pthread_cond_t go, done;
    pthread_t *th;
    size_t n_workers;
    /* written by the caller before gen is bumped (release), read by the
     * workers after they see the new gen (acquire) */
    size_t n_tasks;
    pool_fn fn;
    void *arg;
    atomic_ulong gen;           /* raised for each run: odd for a team
                                   run (pool_team), even for pool_run's */
    atomic_size_t pending;      /* workers not done with the current run:
                                   every worker counts, with a task or
                                   not, so none can still be reading this
                                   run's fields when the next one starts */
    atomic_int quit;
    atomic_ullong team;         /* the team run: its gen << TEAM_SHIFT,
                                   TEAM_CLOSED once the caller left, and
                                   the workers inside in the low bits    */
    size_t sleepers;            /* workers blocked on go (under mu) */
    int waiting;                /* the caller is blocked on done (under mu) */
};

#define TEAM_SHIFT 17
#define TEAM_CLOSED (1ull << 16)
#define TEAM_INSIDE 0xffffull

/* The pool lent to this thread (pool_lend). */
static _Thread_local pool *lent;

typedef struct worker_arg {
    pool *p;
    size_t id;                  /* task index this worker runs: 1.. */
} worker_arg;

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spins until *v != old or SPIN_NS pass; 1 when it changed. */
static int spin_ulong(atomic_ulong *v, unsigned long old)
{
    long t0 = now_ns();
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(v, memory_order_acquire) != old)
            return 1;
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > SPIN_NS)
            return 0;
    }
}

static int spin_zero(atomic_size_t *v)
{
    long t0 = now_ns();
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(v, memory_order_acquire) == 0)
            return 1;
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > SPIN_NS)
            return 0;
    }
}

/* A worker that saw team run `seen` takes part if the caller has not
 * left it yet: it enters (the count of workers inside, under the run's
 * gen, so that a later run's word never matches), runs the function,
 * and leaves, waking the caller if it waits for the last one to leave.
 * The fields are read only once inside, where the caller cannot have
 * moved on. */
static void team_join(pool *p, unsigned long seen, size_t id)
{
    const unsigned long long want = (unsigned long long)seen << TEAM_SHIFT;
    unsigned long long cur = atomic_load_explicit(&p->team,
                                                  memory_order_acquire);
    do {
        if ((cur & ~(TEAM_CLOSED | TEAM_INSIDE)) != want
            || (cur & TEAM_CLOSED))
            return;
    } while (!atomic_compare_exchange_weak_explicit(&p->team, &cur, cur + 1,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire));
    p->fn(p->arg, id);
    if ((atomic_fetch_sub_explicit(&p->team, 1, memory_order_acq_rel)
         & TEAM_INSIDE) == 1) {
        pthread_mutex_lock(&p->mu);
        if (p->waiting)
            pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static void *worker(void *v)
{
    worker_arg *w = v;
    pool *p = w->p;
    unsigned long seen = 0;
    for (;;) {
        if (!spin_ulong(&p->gen, seen)) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->quit) && atomic_load(&p->gen) == seen) {
                p->sleepers++;
                pthread_cond_wait(&p->go, &p->mu);
                p->sleepers--;
            }
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit))
            break;
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (seen & 1) {
            team_join(p, seen, w->id);
            continue;
        }
        if (w->id < p->n_tasks)
            p->fn(p->arg, w->id);
        if (atomic_fetch_sub_explicit(&p->pending, 1,
                                      memory_order_acq_rel) == 1) {
            /* the last one: wake the caller if it gave up spinning */
            pthread_mutex_lock(&p->mu);
            if (p->waiting)
                pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    free(w);
    return NULL;
}

pool *pool_new(size_t threads)
{
    pool *p;
    if (threads < 2 || !(p = calloc(1, sizeof *p)))
        return NULL;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->team, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->quit, 0);
    if (!(p->th = calloc(threads - 1, sizeof *p->th))
        || !(p->scratch = calloc(threads, sizeof *p->scratch))
        || !(p->scratch_bytes = calloc(threads, sizeof *p->scratch_bytes)))
        goto fail;
    for (size_t i = 0; i + 1 < threads; i++) {
        worker_arg *w = malloc(sizeof *w);
        if (!w)
            goto fail;
        w->p = p;
        w->id = i + 1;
        if (pthread_create(&p->th[i], NULL, worker, w) != 0) {
            free(w);
            goto fail;
        }
        p->n_workers++;
    }
    return p;
fail:
    pool_free(p);
    return NULL;
}

void pool_free(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->n_workers; i++)
        pthread_join(p->th[i], NULL);
    if (p->scratch)
        for (size_t t = 0; t <= p->n_workers; t++)
            free(p->scratch[t]);
    free(p->scratch);
    free(p->scratch_bytes);
    free(p->th);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Publishes the next run (odd gen for a team run) and wakes the workers
 * that sleep; its fields are written before.  The bump under the mutex:
 * a worker checks gen under it before it sleeps, so it either sees the
 * new gen or is woken.  Returns the run's gen. */
static unsigned long start_run(pool *p, int team)
{
    unsigned long g = atomic_load_explicit(&p->gen, memory_order_relaxed);
    g = ((g | 1) + 1) | (team ? 1 : 0);
    if (team)
        atomic_store_explicit(&p->team, (unsigned long long)g << TEAM_SHIFT,
                              memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->gen, g, memory_order_release);
    if (p->sleepers)
        pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    return g;
}

void pool_run(pool *p, size_t n, pool_fn fn, void *arg)
{
    pool *outer = lent;
    if (n == 0)
        return;
    lent = NULL;
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n;
    atomic_store_explicit(&p->pending, p->n_workers, memory_order_relaxed);
    start_run(p, 0);
    fn(arg, 0);
    if (!spin_zero(&p->pending)) {
        pthread_mutex_lock(&p->mu);
        p->waiting = 1;
        while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
            pthread_cond_wait(&p->done, &p->mu);
        p->waiting = 0;
        pthread_mutex_unlock(&p->mu);
    }
    lent = outer;
}

/* Closes team run g if no worker is inside: 1 when closed. */
static int team_close(pool *p, unsigned long g)
{
    unsigned long long open = (unsigned long long)g << TEAM_SHIFT;
    return atomic_compare_exchange_strong_explicit(
        &p->team, &open, open | TEAM_CLOSED, memory_order_acq_rel,
        memory_order_acquire);
}

void pool_team(pool *p, pool_fn fn, void *arg)
{
    pool *outer = lent;
    unsigned long g;
    long t0;
    lent = NULL;
    p->fn = fn;
    p->arg = arg;
    g = start_run(p, 1);
    fn(arg, 0);
    /* the workers inside are finishing: spin, then sleep */
    t0 = now_ns();
    for (unsigned i = 1; !team_close(p, g); i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > SPIN_NS) {
            pthread_mutex_lock(&p->mu);
            p->waiting = 1;
            while (!team_close(p, g))
                pthread_cond_wait(&p->done, &p->mu);
            p->waiting = 0;
            pthread_mutex_unlock(&p->mu);
            break;
        }
    }
    lent = outer;
}

void pool_spin_until(atomic_size_t *v, size_t target)
{
    for (unsigned i = 1;
         atomic_load_explicit(v, memory_order_acquire) < target; i++) {
        cpu_relax();
        /* past a few microseconds the thread we wait for is likely off
         * its core: offer ours */
        if (i >= 4096)
            sched_yield();
    }
}

size_t pool_threads(const pool *p)
{
    return p ? p->n_workers + 1 : 1;
}

void *pool_scratch(pool *p, size_t t, size_t bytes)
{
    void *q;
    if (t > p->n_workers)
        return NULL;
    if (bytes <= p->scratch_bytes[t] && p->scratch[t])
        return p->scratch[t];
    free(p->scratch[t]);
    p->scratch[t] = NULL;
    p->scratch_bytes[t] = 0;
    if (posix_memalign(&q, 64, bytes ? bytes : 64) != 0)
        return NULL;
    p->scratch[t] = q;
    p->scratch_bytes[t] = bytes;
    return q;
}

size_t pool_scratch_size(const pool *p, size_t t)
{
    return t <= p->n_workers ? p->scratch_bytes[t] : 0;
}

void pool_lend(pool *p)
{
    lent = p;
}

pool *pool_lent(void)
{
    return lent;
}
