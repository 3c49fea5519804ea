/* conv_split.c - the conv net's channel split: a call on few images made
 * while the model's pool is lent to its thread, each layer shared out
 * over the pool's threads, with the bits of one thread. */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "conv_impl.h"
#include "nn_impl.h"
#include "pool.h"

/* The executor lends its pool (pool_lent) while it runs a batch as one
 * row chunk on the caller.  A conv net called then runs layer by layer
 * over all its images, each layer in k shares (conv_part: output
 * channels of a hidden layer, output columns of the last, dW's entries,
 * the input gradient's input channels; conv.c).  The rule that keeps the
 * bits: every entry of every product is written by one share, by the same
 * tgemm call on the same operands as without the split (tgemm.h: an
 * entry depends only on its row of A and column of B), each entry of dW
 * is accumulated image after image in row order as before, and the
 * elementwise steps are the same operations on the same values; so
 * outputs and gradients do not depend on the split, the thread count or
 * which thread ran a share.  Hence only where every product goes to
 * tgemm (net->split): OpenBLAS's blocking may depend on a product's
 * shape.
 *
 * A call is one team run (pool_team): every thread that takes part claims
 * the shares of a layer from a counter, runs them on all the images with
 * its own per-image scratch (the workers' from pool_scratch), and waits
 * for the layer's last share before the next layer.  A worker off its
 * core (a loaded machine) is never waited for unless it holds a share:
 * the caller takes the shares it has not claimed, and when no worker
 * came to the layer before, all the layer's shares at once, as one range
 * (one product, without the copies each share makes for itself: on one
 * thread the split then costs about what the image-by-image pass does,
 * where share by share it cost 15-25% more).  The backward keeps the
 * gradients between layers for groups of images in the caller's pool
 * scratch, one team run per group (docs/runtime.md, "The channel
 * split").
 *
 * A split that did not pay pauses the split for the next calls, 4 and
 * doubling up to 1024 while it keeps not paying (one that pays halves the
 * next pause): on a machine whose cores are taken by other jobs (a
 * worker preempted while it holds a share, or spinning on the caller's
 * core) the calls then run image by image, as on one thread.  It paid
 * when the call took less than 4/5 of what the caller's own shares say
 * all k would take on one thread.  The bits do not depend on it. */

/* Threads beyond this gain nothing on the few images a split call has. */
#define SPLIT_MAX_THREADS 16
/* The least share of a thread in one layer of one image, in forward
 * multiply-adds, for which the split pays: each share of an image has
 * fixed costs (its own im2col or bordered copy, its products' edges, the
 * wait at the layer's end) that the image count does not amortise.
 * Measured on glow_fashion's conditioners (90,000-250,000 a thread on 2:
 * 1.3-1.6x faster) and glow_tiny's (1,300-3,000: 0.5-0.8x at 1 to 32
 * images); bench/README.md, "Image flows: glow_fashion". */
#define SPLIT_MIN_MADDS 32768
/* The backward's gradients between layers (two per image) for a group */
#define SPLIT_GROUP_BYTES ((size_t)4 << 20)
/* The longest pause after splits that did not pay, in calls */
#define SPLIT_MAX_PAUSE 1024u

static size_t split_min = SPLIT_MIN_MADDS;
/* Calls left in the pause, and the next pause's length (0: the last
 * split paid); shared by every net of the process, a hint only. */
static atomic_uint pause_left, pause_next;

size_t conv_set_split_min(size_t madds)
{
    size_t old = split_min;
    split_min = madds;
    return old;
}

typedef struct team {
    const conv_net *net;
    const flow_real *params;
    size_t n, k;                /* images; shares of a layer, threads      */
    int back;                   /* 0: forward, layers up; 1: backward      */
    flow_real *y;               /* forward: the output                     */
    const conv_back_args *ba;   /* backward: */
    size_t i0, i1;              /* the group's images                      */
    flow_real *gb[2];           /* dL/dh of the group's images: stage s
                                   reads gb[s % 2], writes the other       */
    atomic_int present[CONV_MAX_LAYERS];    /* per stage: a worker came    */
    atomic_size_t next[CONV_MAX_LAYERS];    /* per stage: shares claimed   */
    atomic_size_t done[CONV_MAX_LAYERS];    /* and finished                */
    atomic_int rc;              /* the first failure                       */
    size_t own;                 /* shares the caller ran                   */
    long own_ns;                /* and the ns they took                    */
    conv_ws cw[SPLIT_MAX_THREADS];          /* per thread                  */
} team;

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Threads for a call (1: no split), the pool in *pp. */
static size_t split_threads(const conv_net *net, pool **pp)
{
    pool *p = pool_lent();
    size_t k, layer = net->madds / net->n_layers;
    unsigned left;
    if (!p || !net->split)
        return 1;
    left = atomic_load_explicit(&pause_left, memory_order_relaxed);
    if (left > 0 && split_min > 0) {
        atomic_store_explicit(&pause_left, left - 1, memory_order_relaxed);
        return 1;
    }
    k = pool_threads(p);
    if (k > SPLIT_MAX_THREADS)
        k = SPLIT_MAX_THREADS;
    if (k > net->hid)
        k = net->hid;
    while (k > 1 && layer / k < split_min)
        k--;
    *pp = p;
    return k;
}

/* The threads' views of the workspace: the caller's, and for each worker
 * the same tape and shared scratch with private scratch of its own. */
static int team_init(team *tm, pool *p, const conv_ws *cw)
{
    const conv_net *net = tm->net;
    size_t bytes = conv_carve_private(net, NULL, 0, &tm->cw[0]);
    tm->cw[0] = *cw;
    for (size_t t = 1; t < tm->k; t++) {
        char *s = pool_scratch(p, t, bytes);
        if (!s)
            return 0;
        tm->cw[t] = *cw;
        conv_carve_private(net, s, 0, &tm->cw[t]);
    }
    return 1;
}

static void team_reset(team *tm)
{
    for (size_t s = 0; s < tm->net->n_layers; s++) {
        atomic_init(&tm->next[s], 0);
        atomic_init(&tm->done[s], 0);
        atomic_init(&tm->present[s], 0);
    }
    atomic_init(&tm->rc, FLOW_OK);
    tm->own = 0;
    tm->own_ns = 0;
}

/* Runs the team on the pool and judges whether the split paid: the
 * caller's shares give the time of all k on one thread. */
static void team_go(team *tm, pool *p, pool_fn fn)
{
    unsigned nx = atomic_load_explicit(&pause_next, memory_order_relaxed);
    long t0 = now_ns(), total;
    pool_team(p, fn, tm);
    total = now_ns() - t0;
    if (tm->own == 0
        || 5.0 * (double)total
               < 4.0 * (double)tm->own_ns * (double)tm->k / (double)tm->own) {
        atomic_store_explicit(&pause_next, nx / 2, memory_order_relaxed);
        return;
    }
    nx = nx == 0 ? 4 : nx < SPLIT_MAX_PAUSE ? 2 * nx : nx;
    atomic_store_explicit(&pause_next, nx, memory_order_relaxed);
    atomic_store_explicit(&pause_left, nx, memory_order_relaxed);
}

/* Shares p of stage s (layer l) on every image, on thread t's scratch. */
static int run_shares(team *tm, size_t t, size_t s, size_t l, conv_part p)
{
    const conv_net *net = tm->net;
    const size_t hsz = net->hid * net->hwp;
    int st = FLOW_OK;
    if (!tm->back) {
        for (size_t i = 0; i < tm->n && st == FLOW_OK; i++)
            st = conv_fwd_layer(net, tm->params, &tm->cw[t], tm->n, l, i,
                                tm->y, p);
        return st;
    }
    for (size_t i = tm->i0; i < tm->i1 && st == FLOW_OK; i++) {
        size_t j = i - tm->i0;
        st = conv_back_layer(net, tm->params, tm->n, &tm->cw[t], l, i, tm->ba,
                             tm->gb[s % 2] + j * hsz,
                             tm->gb[(s + 1) % 2] + j * hsz, p);
    }
    return st;
}

/* Claims shares of stage s for thread t: one, or for the caller when no
 * worker came to this stage or the one before (none on its core), all
 * that are left; *p the range, 0 when none is left. */
static int claim(team *tm, size_t t, size_t s, conv_part *p)
{
    size_t cur = atomic_load_explicit(&tm->next[s], memory_order_relaxed);
    for (;;) {
        size_t take = 1;
        if (cur >= tm->k)
            return 0;
        if (t == 0 && s > 0
            && !atomic_load_explicit(&tm->present[s - 1],
                                     memory_order_relaxed)
            && !atomic_load_explicit(&tm->present[s], memory_order_relaxed))
            take = tm->k - cur;
        if (atomic_compare_exchange_weak_explicit(&tm->next[s], &cur,
                                                  cur + take,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *p = (conv_part){cur, cur + take, tm->k};
            return 1;
        }
    }
}

/* A thread's part in the team run: the stages in order, the shares it
 * can claim, then the stage's end. */
static void team_task(void *arg, size_t t)
{
    team *tm = arg;
    const size_t nl = tm->net->n_layers;
    conv_part p;
    if (t >= tm->k)
        return;
    if (t > 0) {                /* the caller's are cleared already */
        atomic_store_explicit(&tm->present[0], 1, memory_order_relaxed);
        conv_clear_shift(tm->net, &tm->cw[t], tm->back);
    }
    for (size_t s = 0; s < nl; s++) {
        const size_t l = tm->back ? nl - 1 - s : s;
        if (t > 0)
            atomic_store_explicit(&tm->present[s], 1, memory_order_relaxed);
        while (claim(tm, t, s, &p)) {
            long t0 = t == 0 ? now_ns() : 0;
            if (atomic_load_explicit(&tm->rc, memory_order_relaxed)
                == FLOW_OK) {
                int st = run_shares(tm, t, s, l, p), ok = FLOW_OK;
                if (st != FLOW_OK)
                    atomic_compare_exchange_strong(&tm->rc, &ok, st);
            }
            if (t == 0) {
                tm->own += p.hi - p.lo;
                tm->own_ns += now_ns() - t0;
            }
            atomic_fetch_add_explicit(&tm->done[s], p.hi - p.lo,
                                      memory_order_release);
        }
        pool_spin_until(&tm->done[s], tm->k);
    }
}

int conv_fwd_split(const conv_net *net, const flow_real *params, size_t n,
                   flow_real *y, const conv_ws *cw)
{
    team tm;
    pool *p = NULL;
    tm.net = net;
    tm.params = params;
    tm.n = n;
    tm.back = 0;
    tm.y = y;
    if ((tm.k = split_threads(net, &p)) < 2 || !team_init(&tm, p, cw))
        return -1;
    team_reset(&tm);
    team_go(&tm, p, team_task);
    return atomic_load(&tm.rc);
}

int conv_back_split(const conv_net *net, const flow_real *params, size_t n,
                    const conv_back_args *ba, const conv_ws *cw)
{
    const size_t hsz = net->hid * net->hwp;
    const size_t per = 2 * hsz * sizeof(flow_real);
    size_t g = SPLIT_GROUP_BYTES / per;
    team tm;
    pool *p = NULL;
    int st = FLOW_OK;
    tm.net = net;
    tm.params = params;
    tm.n = n;
    tm.back = 1;
    tm.ba = ba;
    if ((tm.k = split_threads(net, &p)) < 2)
        return -1;
    if (g < 1)
        g = 1;
    if (g > n)
        g = n;
    if (!team_init(&tm, p, cw)
        || !(tm.gb[0] = pool_scratch(p, 0, g * per)))
        return -1;
    tm.gb[1] = tm.gb[0] + g * hsz;
    for (tm.i0 = 0; tm.i0 < n && st == FLOW_OK; tm.i0 = tm.i1) {
        tm.i1 = n - tm.i0 < g ? n : tm.i0 + g;
        team_reset(&tm);
        team_go(&tm, p, team_task);
        st = atomic_load(&tm.rc);
    }
    return st;
}
