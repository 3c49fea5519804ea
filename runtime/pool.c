/* pool.c - persistent worker threads for row-parallel layer calls: one
 * generation counter under a mutex, a condition variable each way.  The
 * work split is fixed by the caller, so results do not depend on timing. */
#include <pthread.h>
#include <stdlib.h>

#include "pool.h"

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    pthread_t *th;
    size_t n_workers;
    unsigned long gen;          /* bumped for each pool_run */
    size_t n_tasks, pending;
    pool_fn fn;
    void *arg;
    int quit;
};

typedef struct worker_arg {
    pool *p;
    size_t id;                  /* task index this worker runs: 1.. */
} worker_arg;

static void *worker(void *v)
{
    worker_arg *w = v;
    pool *p = w->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->gen == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        if (w->id < p->n_tasks) {
            pool_fn fn = p->fn;
            void *arg = p->arg;
            pthread_mutex_unlock(&p->mu);
            fn(arg, w->id);
            pthread_mutex_lock(&p->mu);
            if (--p->pending == 0)
                pthread_cond_signal(&p->done);
        }
    }
    pthread_mutex_unlock(&p->mu);
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
    if (!(p->th = calloc(threads - 1, sizeof *p->th)))
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
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->n_workers; i++)
        pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void pool_run(pool *p, size_t n, pool_fn fn, void *arg)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n;
    p->pending = n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
