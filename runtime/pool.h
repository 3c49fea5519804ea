/* pool.h - internal: a fixed set of worker threads that run one function
 * over task indices 0..n-1, the caller taking task 0.  Used by the model
 * executor to split batches by rows, and lent by it to a layer call that
 * runs alone so that the conv net can split its channels (docs/runtime.md,
 * "Threading in the executor"). */
#ifndef FLOW_RUNTIME_POOL_H
#define FLOW_RUNTIME_POOL_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct pool pool;
typedef void (*pool_fn)(void *arg, size_t task);

/* A pool of `threads` - 1 workers (the caller is the last thread); NULL
 * when threads < 2 or on failure. */
pool *pool_new(size_t threads);
void pool_free(pool *p);
/* Runs fn(arg, t) for t = 0..n-1 (n <= threads): t = 0 on the caller,
 * the rest on workers; returns when all are done. */
void pool_run(pool *p, size_t n, pool_fn fn, void *arg);
/* A team run: fn(arg, 0) on the caller and fn(arg, t) on each worker t
 * that starts before the caller's call has returned; returns when the
 * caller's has and no worker is inside fn.  fn must do the whole work
 * with any subset of the threads taking part (each piece claimed by
 * whoever comes first, e.g. with an atomic counter): a worker off its
 * core is then never waited for unless it holds a piece.  A worker's t
 * is its own across runs (per-thread scratch). */
void pool_team(pool *p, pool_fn fn, void *arg);
/* Waits until *v >= target (acquire): spins, then yields the core. */
void pool_spin_until(atomic_size_t *v, size_t target);
/* Threads of the pool, the caller included. */
size_t pool_threads(const pool *p);
/* Thread t's scratch, owned by the pool: grown to at least `bytes`
 * (64-byte aligned; the contents are lost when it grows), NULL when out
 * of memory.  On the owner's thread, outside pool_run. */
void *pool_scratch(pool *p, size_t t, size_t bytes);
/* Bytes of thread t's scratch so far (0: none was asked for). */
size_t pool_scratch_size(const pool *p, size_t t);

/* The pool lent to the calling thread, or NULL.  The executor lends its
 * pool while a job runs as one row chunk on the caller (the workers are
 * idle), and takes it back after; pool_run hides it from everything that
 * runs inside a run, so no task can start a run of its own (a nested
 * pool_run would wait for workers busy with the outer one). */
void pool_lend(pool *p);
pool *pool_lent(void);

#endif
