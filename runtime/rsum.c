/* rsum.c - reproducible summation by pre-rounding to a common grid: every
 * process sums its blocks, an allreduce sums the processes, same bits. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rsum.h"
#include "vec.h"

/* The two passes over every block's gradient also in an AVX2 build
 * chosen at run time (as runtime/nn_div.c does): the same bits, since
 * both are elementwise or an integer max. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    defined(FLOW_TARGET_CLONES)
# define RSUM_CLONES __attribute__((target_clones("avx2", "default")))
#else
# define RSUM_CLONES
#endif

int rsum_init(rsum *r, size_t n_main, size_t n_extra)
{
    memset(r, 0, sizeof *r);
    r->n_main = n_main;
    r->n_extra = n_extra;
    r->n_groups = (n_main + RSUM_CHUNK - 1) / RSUM_CHUNK + n_extra;
    r->max = malloc((r->n_groups + 1) * sizeof *r->max);
    r->sigma = malloc((r->n_groups + 1) * sizeof *r->sigma);
    r->sum = malloc((n_main + n_extra + 1) * sizeof *r->sum);
    if (!r->max || !r->sigma || !r->sum) {
        rsum_free(r);
        return FLOW_ERR_NOMEM;
    }
    return FLOW_OK;
}

void rsum_free(rsum *r)
{
    free(r->max);
    free(r->sigma);
    free(r->sum);
    memset(r, 0, sizeof *r);
}

void rsum_begin(rsum *r)
{
    memset(r->max, 0, (r->n_groups + 1) * sizeof *r->max);
    memset(r->sum, 0, (r->n_main + r->n_extra) * sizeof *r->sum);
}

/* a non-finite value makes its group's maximum +inf (NaN would be lost
 * by MPI_MAX's comparisons) */
static double absmax(double m, double v)
{
    double a = fabs(v);
    return a <= m ? m : isfinite(a) ? a : INFINITY;
}

/* max |v[i]| over [0, n), +inf when one is not finite.  On the bit
 * patterns with the sign cleared, unsigned order is the order of the
 * magnitudes, and infinities and NaNs (all-ones exponent) lie above every
 * finite value: one integer max (associative, so it vectorises, which a
 * floating-point max or sum reduction does not without reassociation)
 * finds both the largest magnitude and any non-finite value.  With the
 * sign bit clear, signed order is the same (SSE2 compares signed). */
#if FLOW_REAL_DOUBLE
typedef int64_t real_bits;
#define ABS_MASK INT64_C(0x7fffffffffffffff)
#define INF_BITS INT64_C(0x7ff0000000000000)
#else
typedef int32_t real_bits;
#define ABS_MASK INT32_C(0x7fffffff)
#define INF_BITS INT32_C(0x7f800000)
#endif

RSUM_CLONES FLOW_VECTORIZE static double chunk_max(const flow_real *restrict v,
                                       size_t n, double m)
{
    real_bits top = 0;
    flow_real a;
    for (size_t i = 0; i < n; i++) {
        real_bits b;
        memcpy(&b, v + i, sizeof b);
        b &= ABS_MASK;
        top = b > top ? b : top;
    }
    if (top >= INF_BITS)
        return INFINITY;
    memcpy(&a, &top, sizeof a);
    return (double)a > m ? (double)a : m;
}

void rsum_see_groups(rsum *r, const flow_real *v, size_t g0, size_t g1)
{
    for (size_t g = g0; g < g1; g++) {
        size_t lo = g * RSUM_CHUNK;
        size_t hi = lo + RSUM_CHUNK < r->n_main ? lo + RSUM_CHUNK : r->n_main;
        r->max[g] = chunk_max(v + lo, hi - lo, r->max[g]);
    }
}

void rsum_see_extra(rsum *r, const double *extra)
{
    size_t ng = (r->n_main + RSUM_CHUNK - 1) / RSUM_CHUNK;
    for (size_t e = 0; e < r->n_extra; e++)
        r->max[ng + e] = absmax(r->max[ng + e], extra[e]);
}

void rsum_see(rsum *r, const flow_real *v, const double *extra)
{
    rsum_see_groups(r, v, 0, (r->n_main + RSUM_CHUNK - 1) / RSUM_CHUNK);
    rsum_see_extra(r, extra);
}

/* The grid of a group whose values are at most M in magnitude, summed
 * over n_blocks blocks (Demmel & Nguyen 2013, "Fast reproducible
 * floating-point summation", ARITH 21, sec. III, pre-rounding): with
 * 2^e > M (frexp) and L = ceil(log2 n_blocks) + 1, sigma = 1.5 * 2^(e+L).
 * (x + sigma) - sigma is x rounded to a multiple of q = ulp(sigma) =
 * 2^(e+L-52) (|x| <= 2^(e+L-1): the sum stays in sigma's binade), and
 * any partial sum of n_blocks such values is at most n_blocks * 2^e <=
 * 2^(e+L-1) = 2^51 q: a multiple of q below 2^53 q, exact in double in
 * every order.  The rounding error of one value is at most q / 2 =
 * 2^(L-53) * 2^e, under 2^(L-52) relative to the group's maximum. */
static double grid(double m, size_t n_blocks)
{
    int e, L = 1;
    if (m == 0)
        return 0;
    while (((size_t)1 << (L - 1)) < n_blocks)
        L++;
    (void)frexp(m, &e);
    return ldexp(1.5, e + L);
}

int rsum_agree(rsum *r, flow_comm *comm, size_t n_blocks, int failed,
               int *first_failed)
{
    int rc, size = flow_comm_size(comm);
    /* size - rank: the maximum names the lowest rank that failed */
    r->max[r->n_groups] = failed ? (double)(size - flow_comm_rank(comm)) : 0;
    if ((rc = flow_comm_allreduce(comm, r->max, r->n_groups + 1,
                                  FLOW_COMM_MAX)) != FLOW_OK)
        return rc;
    *first_failed = r->max[r->n_groups] > 0
                    ? size - (int)r->max[r->n_groups] : -1;
    r->finite = 1;
    for (size_t g = 0; g < r->n_groups; g++) {
        if (!isfinite(r->max[g]))
            r->finite = 0;
        r->sigma[g] = isfinite(r->max[g]) ? grid(r->max[g], n_blocks) : 0;
    }
    return FLOW_OK;
}

/* (x + sigma) - sigma: x on sigma's grid.  IEEE arithmetic without
 * reassociation (no -ffast-math; C11's -ffp-contract=off) computes it as
 * written, never folded to x. */
static double round_to(double x, double sigma)
{
    return (x + sigma) - sigma;
}

RSUM_CLONES FLOW_VECTORIZE static void chunk_add(double *restrict sum,
                                     const flow_real *restrict v, size_t n,
                                     double sigma)
{
    for (size_t i = 0; i < n; i++)
        sum[i] += ((double)v[i] + sigma) - sigma;
}

void rsum_add_groups(rsum *r, const flow_real *v, size_t g0, size_t g1)
{
    if (!r->finite)
        return;
    for (size_t g = g0; g < g1; g++) {
        size_t lo = g * RSUM_CHUNK;
        size_t hi = lo + RSUM_CHUNK < r->n_main ? lo + RSUM_CHUNK : r->n_main;
        if (r->sigma[g] != 0)
            chunk_add(r->sum + lo, v + lo, hi - lo, r->sigma[g]);
    }
}

void rsum_add_extra(rsum *r, const double *extra)
{
    size_t ng = (r->n_main + RSUM_CHUNK - 1) / RSUM_CHUNK;
    if (!r->finite)
        return;
    for (size_t e = 0; e < r->n_extra; e++)
        if (r->sigma[ng + e] != 0)
            r->sum[r->n_main + e] += round_to(extra[e], r->sigma[ng + e]);
}

void rsum_add(rsum *r, const flow_real *v, const double *extra)
{
    rsum_add_groups(r, v, 0, (r->n_main + RSUM_CHUNK - 1) / RSUM_CHUNK);
    rsum_add_extra(r, extra);
}

int rsum_finish(rsum *r, flow_comm *comm)
{
    if (!r->finite) {
        for (size_t i = 0; i < r->n_main + r->n_extra; i++)
            r->sum[i] = NAN;
        return FLOW_OK;
    }
    return flow_comm_allreduce(comm, r->sum, r->n_main + r->n_extra,
                               FLOW_COMM_SUM);
}
