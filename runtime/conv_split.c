/* conv_split.c - the conv net's channel split: a call on few images made
 * while the model's pool is lent to its thread runs each layer shared out
 * over the pool's threads, with the bits of one thread. */
#include <stdatomic.h>
#include <time.h>

#include "conv_impl.h"
#include "nn_impl.h"
#include "pool.h"

/* The executor lends its pool (pool_lent) while it runs a batch as one
 * row chunk on the caller.  A conv net called then may run layer by
 * layer over all its images, each layer in k shares (conv_part: output
 * channels of a hidden layer, output columns of the last, dW's entries,
 * the input gradient's input channels; conv.c).  The rule that keeps the
 * bits: every entry of every product is written by one share, by a tgemm
 * call on the same operands as without the split (tgemm.h: an entry
 * depends only on its row of A and column of B), each entry of dW is
 * accumulated image after image in row order as before, and the
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
 * core is never waited for unless it holds a share: the caller takes the
 * shares it has not claimed, and when no worker came to the layer before,
 * all the layer's shares at once, as one range (one product, without the
 * copies each share makes for itself).  The backward keeps the gradients
 * between layers for groups of images in the caller's pool scratch, one
 * team run per group.
 *
 * Whether a call splits: its net must be large enough (SPLIT_MIN_MADDS),
 * and the split must have been faster lately.  Each net keeps, per
 * direction, the time per image of its last split calls and of its last
 * image-by-image ones, runs the kind with the lower median and now and
 * then the other to keep both current: on a machine whose other jobs
 * take the cores, a worker preempted while it holds a share costs the
 * call a scheduler slice, and the calls then run image by image
 * (docs/runtime.md, "The channel split").  The bits do not depend on the
 * choice. */

/* Threads beyond this gain nothing on the few images a split call has. */
#define SPLIT_MAX_THREADS 16
/* The least share of a thread in one layer of one image, in forward
 * multiply-adds, for which the split pays: each share of an image has
 * fixed costs (its own im2col or bordered copy, its products' edges, the
 * wait at the layer's end) that the image count does not amortise.
 * Measured on glow_fashion's conditioners (90,000-250,000 a thread on 2:
 * forward 1.4-1.7x faster, forward + backward 1.1-1.6x) and glow_tiny's
 * (1,300-3,000: forward 0.65x at 1 image to 1.2x at 32, forward +
 * backward 0.75-1.1x); bench/README.md, "Image flows: glow_fashion". */
#define SPLIT_MIN_MADDS 32768
/* The backward's gradients between layers (two per image) for a group */
#define SPLIT_GROUP_BYTES ((size_t)4 << 20)

static size_t split_min = SPLIT_MIN_MADDS;

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
    conv_ws cw[SPLIT_MAX_THREADS];          /* per thread                  */
} team;

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* ------------------------------------------------------------ choice */

/* Threads a call may split over (1: none), the pool in *pp. */
static size_t split_threads(const conv_net *net, pool **pp)
{
    pool *p = pool_lent();
    size_t k, layer = net->madds / net->n_layers;
    if (!p || !net->split)
        return 1;
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

/* The median of kind j's last 3 times (of fewer, their least), 0 when
 * it has none. */
static long recent(conv_tune *tu, int j)
{
    unsigned c = atomic_load_explicit(&tu->count[j], memory_order_relaxed);
    long v[3], t;
    for (int i = 0; i < 3; i++)
        v[i] = atomic_load_explicit(&tu->ns[j][i], memory_order_relaxed);
    if (c == 0)
        return 0;
    if (c < 3) {
        t = v[0];
        for (unsigned i = 1; i < c; i++)
            t = v[i] < t ? v[i] : t;
        return t;
    }
    if (v[0] > v[1])
        t = v[0], v[0] = v[1], v[1] = t;
    if (v[1] > v[2])
        v[1] = v[2];
    return v[0] > v[1] ? v[0] : v[1];
}

/* Whether to split this call: the kind with the lower recent time, the
 * other every 8th call while they are within 25%, every 16th within 2x,
 * else every 64th; a kind not timed yet first (the split before the
 * image-by-image pass).  Always with the threshold at 0 (the tests). */
static int choose_split(conv_tune *tu)
{
    long sp = recent(tu, 0), se = recent(tu, 1), lo, hi;
    unsigned c = atomic_fetch_add_explicit(&tu->calls, 1,
                                           memory_order_relaxed);
    unsigned period;
    int faster;
    if (split_min == 0 || sp == 0)
        return 1;
    if (se == 0)
        return 0;
    faster = sp <= se;
    lo = faster ? sp : se;
    hi = faster ? se : sp;
    period = 4 * hi < 5 * lo ? 8 : hi < 2 * lo ? 16 : 64;
    return c % period == period - 1 ? !faster : faster;
}

/* Notes a call of kind j (0: split) begun at t0, on n images. */
static void note(conv_tune *tu, int j, long t0, size_t n)
{
    long x = (now_ns() - t0) / (long)n;
    unsigned c = atomic_fetch_add_explicit(&tu->count[j], 1,
                                           memory_order_relaxed);
    atomic_store_explicit(&tu->ns[j][c % 3], x > 0 ? x : 1,
                          memory_order_relaxed);
}

/* ------------------------------------------------------------ the team */

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
            if (atomic_load_explicit(&tm->rc, memory_order_relaxed)
                == FLOW_OK) {
                int st = run_shares(tm, t, s, l, p), ok = FLOW_OK;
                if (st != FLOW_OK)
                    atomic_compare_exchange_strong(&tm->rc, &ok, st);
            }
            atomic_fetch_add_explicit(&tm->done[s], p.hi - p.lo,
                                      memory_order_release);
        }
        pool_spin_until(&tm->done[s], tm->k);
    }
}

/* The forward pass split: -1 when it cannot run (no scratch). */
static int fwd_split(const conv_net *net, const flow_real *params,
                     size_t n, flow_real *y, const conv_ws *cw, pool *p,
                     size_t k)
{
    team tm;
    tm.net = net;
    tm.params = params;
    tm.n = n;
    tm.k = k;
    tm.back = 0;
    tm.y = y;
    if (!team_init(&tm, p, cw))
        return -1;
    team_reset(&tm);
    pool_team(p, team_task, &tm);
    return atomic_load(&tm.rc);
}

/* The backward pass split, by groups of images: -1 when it cannot run. */
static int back_split(const conv_net *net, const flow_real *params,
                      size_t n, const conv_back_args *ba, const conv_ws *cw,
                      pool *p, size_t k)
{
    const size_t hsz = net->hid * net->hwp;
    const size_t per = 2 * hsz * sizeof(flow_real);
    size_t g = SPLIT_GROUP_BYTES / per;
    team tm;
    int st = FLOW_OK;
    tm.net = net;
    tm.params = params;
    tm.n = n;
    tm.k = k;
    tm.back = 1;
    tm.ba = ba;
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
        pool_team(p, team_task, &tm);
        st = atomic_load(&tm.rc);
    }
    return st;
}

/* ------------------------------------------------------------ the passes */

int conv_fwd_run(const conv_net *net, const flow_real *params, size_t n,
                 flow_real *y, const conv_ws *cw)
{
    conv_tune *tu = &net->tune[0];
    pool *p = NULL;
    size_t k = split_threads(net, &p);
    long t0;
    int st;
    if (k < 2)
        return conv_fwd_serial(net, params, n, y, cw);
    t0 = now_ns();
    if (choose_split(tu)
        && (st = fwd_split(net, params, n, y, cw, p, k)) >= 0) {
        note(tu, 0, t0, n);
        return st;
    }
    st = conv_fwd_serial(net, params, n, y, cw);
    note(tu, 1, t0, n);
    return st;
}

int conv_back_run(const conv_net *net, const flow_real *params, size_t n,
                  const conv_back_args *ba, const conv_ws *cw)
{
    conv_tune *tu = &net->tune[1];
    pool *p = NULL;
    size_t k = split_threads(net, &p);
    long t0;
    int st;
    if (k < 2)
        return conv_back_serial(net, params, n, ba, cw);
    t0 = now_ns();
    if (choose_split(tu)
        && (st = back_split(net, params, n, ba, cw, p, k)) >= 0) {
        note(tu, 0, t0, n);
        return st;
    }
    st = conv_back_serial(net, params, n, ba, cw);
    note(tu, 1, t0, n);
    return st;
}
