/* pool.h - internal: a fixed set of worker threads that run one function
 * over task indices 0..n-1, the caller taking task 0.  Used by the model
 * executor to split batches by rows (docs/runtime.md, "Threading"). */
#ifndef FLOW_RUNTIME_POOL_H
#define FLOW_RUNTIME_POOL_H

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

#endif
