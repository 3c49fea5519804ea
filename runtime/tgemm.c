/* tgemm.c - the register-tiled GEMM of tgemm.h: float (AVX2 + FMA, AVX-512)
 * and bf16 products (AVX512-BF16), intrinsics behind run-time CPU checks. */
#include "tgemm.h"

/* Tiles of 6 rows x 16 (or 8) columns of C held in 12 (6) AVX registers
 * through the whole k loop, B read in place (no packing: the narrow
 * layers' B, e.g. a 64 x 64 weight matrix, stays in L1), A broadcast one
 * element at a time.  Measured on the development machine (AMD EPYC, 1
 * thread, 768 x 64 x 64 and 64 x 64 x 768): 113 GFLOP/s against OpenBLAS
 * 0.3.21's 66-96 on the same calls; on the AVX-512 path (Zen 5, 1
 * thread, quiet) 250 GFLOP/s on 256 x 128 x 128 against its 128. */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define TG_TARGET __attribute__((target("avx2,fma")))
#define TG_MR 6                 /* rows of a tile */

/* The epilogue of tgemm_ep with its pointers at a tile's first row and
 * column (tgemm.h). */
typedef struct tg_ep {
    const float *bias;
    int acc, relu;
    const float *gate;
    size_t ldg;
    float *colsum;
} tg_ep;

/* e moved down i rows and right j columns */
static inline __attribute__((always_inline)) tg_ep tg_ep_at(tg_ep e,
                                                             size_t i,
                                                             size_t j)
{
    if (e.bias)
        e.bias += j;
    if (e.gate)
        e.gate += i * e.ldg + j;
    if (e.colsum)
        e.colsum += j;
    return e;
}

/* pos_mask of nn_impl.h, 0.5 + copysign(0.5, z): 1 for z >= +0, 0 for
 * z <= -0, by the sign bit alone */
static inline __attribute__((always_inline)) TG_TARGET __m256
tg_posmask(__m256 z)
{
    const __m256 half = _mm256_set1_ps(0.5f);
    __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0f));
    return _mm256_add_ps(half, _mm256_or_ps(half, sign));
}

/* ReLU as nn_impl.h's act_inplace, pos_mask(z) z: -0 for z <= -0, so
 * that the backward pass reads the sign of z from the result */
static inline __attribute__((always_inline)) TG_TARGET __m256
tg_relu(__m256 z)
{
    return _mm256_mul_ps(tg_posmask(z), z);
}

/* One tile of mr rows and 8 nb columns (nb = 1 or 2), k loop innermost
 * over registers; inlined with constant mr and nb. */
static inline __attribute__((always_inline)) TG_TARGET void
tg_tile(int mr, int nb, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, tg_ep e, float *c, size_t ldc)
{
    const float *bias = e.bias;
    int acc = e.acc;
    __m256 c0[TG_MR], c1[TG_MR];
#pragma GCC unroll 6
    for (int i = 0; i < TG_MR; i++) {
        c0[i] = _mm256_setzero_ps();
        c1[i] = _mm256_setzero_ps();
    }
    for (size_t q = 0; q < k; q++) {
        const float *bq = b + q * ldb, *aq = a + q * acs;
        __m256 b0 = _mm256_loadu_ps(bq);
        __m256 b1 = nb > 1 ? _mm256_loadu_ps(bq + 8) : b0;
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_broadcast_ss(aq + i * ars);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            if (nb > 1)
                c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (bias) {
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(bias));
            if (nb > 1)
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(bias + 8));
        } else if (acc) {
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(ci));
            if (nb > 1)
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(ci + 8));
        }
        if (e.relu) {
            c0[i] = tg_relu(c0[i]);
            if (nb > 1)
                c1[i] = tg_relu(c1[i]);
        }
        if (e.gate) {
            const float *gi = e.gate + i * e.ldg;
            c0[i] = _mm256_mul_ps(c0[i], tg_posmask(_mm256_loadu_ps(gi)));
            if (nb > 1)
                c1[i] = _mm256_mul_ps(c1[i],
                                      tg_posmask(_mm256_loadu_ps(gi + 8)));
        }
        _mm256_storeu_ps(ci, c0[i]);
        if (nb > 1)
            _mm256_storeu_ps(ci + 8, c1[i]);
    }
    if (e.colsum) {             /* row by row, as tgemm.h promises */
        __m256 s0 = _mm256_loadu_ps(e.colsum), s1 = s0;
        if (nb > 1)
            s1 = _mm256_loadu_ps(e.colsum + 8);
        for (int i = 0; i < mr; i++) {
            s0 = _mm256_add_ps(s0, c0[i]);
            if (nb > 1)
                s1 = _mm256_add_ps(s1, c1[i]);
        }
        _mm256_storeu_ps(e.colsum, s0);
        if (nb > 1)
            _mm256_storeu_ps(e.colsum + 8, s1);
    }
}

/* The last nr < 8 columns: tg_tile's 8-column tile with its loads and
 * stores masked (_mm256_maskload_ps reads 0, and never faults, past
 * column nr), so that each entry is the same sequence of operations as
 * in a full tile. */
static inline __attribute__((always_inline)) TG_TARGET void
tg_tilem(int mr, size_t nr, size_t k, const float *a, size_t ars,
         size_t acs, const float *b, size_t ldb, tg_ep e, float *c,
         size_t ldc)
{
    __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr),
                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 c0[TG_MR];
#pragma GCC unroll 6
    for (int i = 0; i < TG_MR; i++)
        c0[i] = _mm256_setzero_ps();
    for (size_t q = 0; q < k; q++) {
        const float *aq = a + q * acs;
        __m256 b0 = _mm256_maskload_ps(b + q * ldb, mk);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++)
            c0[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + i * ars), b0,
                                    c0[i]);
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (e.bias)
            c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(e.bias, mk));
        else if (e.acc)
            c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(ci, mk));
        if (e.relu)
            c0[i] = tg_relu(c0[i]);
        if (e.gate)
            c0[i] = _mm256_mul_ps(c0[i], tg_posmask(_mm256_maskload_ps(
                                             e.gate + i * e.ldg, mk)));
        _mm256_maskstore_ps(ci, mk, c0[i]);
    }
    if (e.colsum) {
        __m256 s0 = _mm256_maskload_ps(e.colsum, mk);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++)
            s0 = _mm256_add_ps(s0, c0[i]);
        _mm256_maskstore_ps(e.colsum, mk, s0);
    }
}

/* rows i0..i0+mr-1, all columns */
static inline __attribute__((always_inline)) TG_TARGET void
tg_rows(int mr, size_t n, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, tg_ep e, float *c, size_t ldc)
{
    size_t j = 0;
    for (; j + 16 <= n; j += 16)
        tg_tile(mr, 2, k, a, ars, acs, b + j, ldb, tg_ep_at(e, 0, j), c + j,
                ldc);
    if (j < n)
        tg_tile(mr, 1, k, a, ars, acs, b + j, ldb, tg_ep_at(e, 0, j), c + j,
                ldc);
}

/* The last nr < 8 columns, all rows, in a pass of their own: inlined
 * into tg_rows, the masked tile's registers would crowd the full tiles'
 * loop (5% slower on full widths) */
#define TG_TAIL(r) \
    case r: \
        tg_tilem(r, nr, k, a, ars, acs, b, ldb, e, c, ldc); \
        break

static __attribute__((noinline)) TG_TARGET void
tg_tail(size_t m, size_t nr, size_t k, const float *a, size_t ars,
        size_t acs, const float *b, size_t ldb, tg_ep e, float *c,
        size_t ldc)
{
    for (; m >= TG_MR; m -= TG_MR) {
        tg_tilem(TG_MR, nr, k, a, ars, acs, b, ldb, e, c, ldc);
        a += TG_MR * ars;
        c += TG_MR * ldc;
        e = tg_ep_at(e, TG_MR, 0);
    }
    switch (m) {
    TG_TAIL(1); TG_TAIL(2); TG_TAIL(3); TG_TAIL(4); TG_TAIL(5);
    default:
        break;
    }
}

static TG_TARGET void tg_run(size_t m, size_t n, size_t k, const float *a,
                             size_t ars, size_t acs, const float *b,
                             size_t ldb, tg_ep e, float *c, size_t ldc)
{
    if (n % 8) {
        tg_tail(m, n % 8, k, a, ars, acs, b + n / 8 * 8, ldb,
                tg_ep_at(e, 0, n / 8 * 8), c + n / 8 * 8, ldc);
        n = n / 8 * 8;
        if (!n)
            return;
    }
    size_t i = 0;
    for (; i + TG_MR <= m; i += TG_MR) {
        /* the next tile row's C, often not in cache yet (a fresh tape) */
        for (size_t r = i + TG_MR; r < i + 2 * TG_MR && r < m; r++)
            for (size_t j = 0; j < n; j += 16)
                __builtin_prefetch(c + r * ldc + j, 1);
        tg_rows(TG_MR, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
    }
    /* the last m % 6 rows: a constant count in each call, so that each
     * inlined tg_rows keeps its accumulators in registers */
    switch (m - i) {
    case 1:
        tg_rows(1, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
        break;
    case 2:
        tg_rows(2, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
        break;
    case 3:
        tg_rows(3, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
        break;
    case 4:
        tg_rows(4, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
        break;
    case 5:
        tg_rows(5, n, k, a + i * ars, ars, acs, b, ldb, tg_ep_at(e, i, 0),
                c + i * ldc, ldc);
        break;
    default:
        break;
    }
}

/* The same products with AVX-512: tiles of up to 12 rows x 32 (16, or 8
 * in 256-bit registers) columns, 24 of the 32 registers accumulating.
 * Every C entry is still one fused multiply-add per q in the order q = 0,
 * 1, ... from 0, then the bias or C added, so the bits equal the AVX2
 * path's: the width only decides how many entries run side by side. */
#define TZ_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define TZ_MR 12

/* v * pos_mask(g) with pos_mask's bits (v * 1 = v, v * 0 = the same
 * signed zero or NaN) by a masked multiply on g's sign bits: 2
 * instructions for tg_posmask's 4 and a product */
static inline __attribute__((always_inline)) TZ_TARGET __m512
tz_gate(__m512 v, __m512 g)
{
    __mmask16 neg = _mm512_cmplt_epi32_mask(_mm512_castps_si512(g),
                                            _mm512_setzero_si512());
    return _mm512_mask_mul_ps(v, neg, v, _mm512_setzero_ps());
}

/* ReLU as tg_relu, pos_mask(z) z */
static inline __attribute__((always_inline)) TZ_TARGET __m512
tz_relu(__m512 z)
{
    return tz_gate(z, z);
}

static inline __attribute__((always_inline)) TZ_TARGET __m256
tz_gate8(__m256 v, __m256 g)
{
    __mmask8 neg = _mm256_cmplt_epi32_mask(_mm256_castps_si256(g),
                                           _mm256_setzero_si256());
    return _mm256_mask_mul_ps(v, neg, v, _mm256_setzero_ps());
}

/* The epilogue (tgemm.h) on the accumulators of a tile of mr rows x 16
 * nb columns, shared by the float and bf16 tiles */
static inline __attribute__((always_inline)) TZ_TARGET void
tz_store(int mr, int nb, __m512 *c0, __m512 *c1, tg_ep e, float *c,
         size_t ldc)
{
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (e.bias) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(e.bias));
            if (nb > 1)
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(e.bias + 16));
        } else if (e.acc) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(ci));
            if (nb > 1)
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(ci + 16));
        }
        if (e.relu) {
            c0[i] = tz_relu(c0[i]);
            if (nb > 1)
                c1[i] = tz_relu(c1[i]);
        }
        if (e.gate) {
            const float *gi = e.gate + i * e.ldg;
            c0[i] = tz_gate(c0[i], _mm512_loadu_ps(gi));
            if (nb > 1)
                c1[i] = tz_gate(c1[i], _mm512_loadu_ps(gi + 16));
        }
        _mm512_storeu_ps(ci, c0[i]);
        if (nb > 1)
            _mm512_storeu_ps(ci + 16, c1[i]);
    }
    if (e.colsum) {
        __m512 s0 = _mm512_loadu_ps(e.colsum), s1 = s0;
        if (nb > 1)
            s1 = _mm512_loadu_ps(e.colsum + 16);
        for (int i = 0; i < mr; i++) {
            s0 = _mm512_add_ps(s0, c0[i]);
            if (nb > 1)
                s1 = _mm512_add_ps(s1, c1[i]);
        }
        _mm512_storeu_ps(e.colsum, s0);
        if (nb > 1)
            _mm512_storeu_ps(e.colsum + 16, s1);
    }
}

static inline __attribute__((always_inline)) TZ_TARGET void
tz_tile(int mr, int nb, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, tg_ep e, float *c, size_t ldc)
{
    __m512 c0[TZ_MR], c1[TZ_MR];
#pragma GCC unroll 12
    for (int i = 0; i < TZ_MR; i++) {
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
    }
    for (size_t q = 0; q < k; q++) {
        const float *bq = b + q * ldb, *aq = a + q * acs;
        __m512 b0 = _mm512_loadu_ps(bq);
        __m512 b1 = nb > 1 ? _mm512_loadu_ps(bq + 16) : b0;
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            __m512 av = _mm512_set1_ps(aq[i * ars]);
            c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
            if (nb > 1)
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
        }
    }
    tz_store(mr, nb, c0, c1, e, c, ldc);
}

/* 8 columns, up to 24 rows in 256-bit registers (a narrow C, e.g. a
 * convolution's 8 output channels against hundreds of rows) */
#define TZ_MR8 24

static inline __attribute__((always_inline)) TZ_TARGET void
tz_tile8(int mr, size_t k, const float *a, size_t ars, size_t acs,
         const float *b, size_t ldb, tg_ep e, float *c, size_t ldc)
{
    const float *bias = e.bias;
    int acc = e.acc;
    __m256 c0[TZ_MR8];
#pragma GCC unroll 24
    for (int i = 0; i < TZ_MR8; i++)
        c0[i] = _mm256_setzero_ps();
    for (size_t q = 0; q < k; q++) {
        const float *aq = a + q * acs;
        __m256 b0 = _mm256_loadu_ps(b + q * ldb);
#pragma GCC unroll 24
        for (int i = 0; i < mr; i++)
            c0[i] = _mm256_fmadd_ps(_mm256_set1_ps(aq[i * ars]), b0, c0[i]);
    }
#pragma GCC unroll 24
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (bias)
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(bias));
        else if (acc)
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(ci));
        if (e.relu)
            c0[i] = tz_gate8(c0[i], c0[i]);
        if (e.gate)
            c0[i] = tz_gate8(c0[i], _mm256_loadu_ps(e.gate + i * e.ldg));
        _mm256_storeu_ps(ci, c0[i]);
    }
    if (e.colsum) {
        __m256 s0 = _mm256_loadu_ps(e.colsum);
        for (int i = 0; i < mr; i++)
            s0 = _mm256_add_ps(s0, c0[i]);
        _mm256_storeu_ps(e.colsum, s0);
    }
}

/* The last 1-15 columns (but 8) of a row band: one 16-lane register
 * per row, loads and stores masked to the nr = popcount(mk) columns
 * (masked lanes read 0 and never fault), each entry the same sequence of
 * operations as in tz_tile and tg_tilem. */
static inline __attribute__((always_inline)) TZ_TARGET void
tz_tilem(int mr, __mmask16 mk, size_t k, const float *a, size_t ars,
         size_t acs, const float *b, size_t ldb, tg_ep e, float *c,
         size_t ldc)
{
    __m512 c0[TZ_MR];
#pragma GCC unroll 12
    for (int i = 0; i < TZ_MR; i++)
        c0[i] = _mm512_setzero_ps();
    for (size_t q = 0; q < k; q++) {
        const float *aq = a + q * acs;
        __m512 b0 = _mm512_maskz_loadu_ps(mk, b + q * ldb);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++)
            c0[i] = _mm512_fmadd_ps(_mm512_set1_ps(aq[i * ars]), b0, c0[i]);
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (e.bias)
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(mk, e.bias));
        else if (e.acc)
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(mk, ci));
        if (e.relu)
            c0[i] = tz_relu(c0[i]);
        if (e.gate)
            c0[i] = tz_gate(c0[i],
                            _mm512_maskz_loadu_ps(mk, e.gate + i * e.ldg));
        _mm512_mask_storeu_ps(ci, mk, c0[i]);
    }
    if (e.colsum) {
        __m512 s0 = _mm512_maskz_loadu_ps(mk, e.colsum);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++)
            s0 = _mm512_add_ps(s0, c0[i]);
        _mm512_mask_storeu_ps(e.colsum, mk, s0);
    }
}

static inline __attribute__((always_inline)) TZ_TARGET void
tz_rows(int mr, size_t n, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, tg_ep e, float *c, size_t ldc)
{
    size_t j = 0;
    for (; j + 32 <= n; j += 32)
        tz_tile(mr, 2, k, a, ars, acs, b + j, ldb, tg_ep_at(e, 0, j), c + j,
                ldc);
    if (j + 16 <= n) {
        tz_tile(mr, 1, k, a, ars, acs, b + j, ldb, tg_ep_at(e, 0, j), c + j,
                ldc);
        j += 16;
    }
    if (j < n)
        tz_tile8(mr, k, a, ars, acs, b + j, ldb, tg_ep_at(e, 0, j), c + j,
                 ldc);
}

/* n = 8: 24-row tiles of tz_tile8, the rest in one call of constant rows */
#define TZ_NARROW(r) \
    case r: \
        tz_tile8(r, k, a, ars, acs, b, ldb, e, c, ldc); \
        break

static TZ_TARGET void tz_narrow(size_t m, size_t k, const float *a,
                                size_t ars, const size_t acs, const float *b,
                                size_t ldb, tg_ep e, float *c, size_t ldc)
{
    for (; m >= TZ_MR8; m -= TZ_MR8) {
        tz_tile8(TZ_MR8, k, a, ars, acs, b, ldb, e, c, ldc);
        a += TZ_MR8 * ars;
        c += TZ_MR8 * ldc;
        e = tg_ep_at(e, TZ_MR8, 0);
    }
    switch (m) {
    TZ_NARROW(1); TZ_NARROW(2); TZ_NARROW(3); TZ_NARROW(4); TZ_NARROW(5);
    TZ_NARROW(6); TZ_NARROW(7); TZ_NARROW(8); TZ_NARROW(9); TZ_NARROW(10);
    TZ_NARROW(11); TZ_NARROW(12); TZ_NARROW(13); TZ_NARROW(14);
    TZ_NARROW(15); TZ_NARROW(16); TZ_NARROW(17); TZ_NARROW(18);
    TZ_NARROW(19); TZ_NARROW(20); TZ_NARROW(21); TZ_NARROW(22);
    TZ_NARROW(23);
    default:
        break;
    }
}

/* The last nr = n % 16 columns (n % 8 != 0), all rows, in a pass of
 * their own, as tg_tail */
#define TZ_MTAIL(r) \
    case r: \
        tz_tilem(r, mk, k, a, ars, acs, b, ldb, e, c, ldc); \
        break

static __attribute__((noinline)) TZ_TARGET void
tz_tail(size_t m, size_t nr, size_t k, const float *a, size_t ars,
        size_t acs, const float *b, size_t ldb, tg_ep e, float *c,
        size_t ldc)
{
    __mmask16 mk = (__mmask16)((1u << nr) - 1);
    for (; m >= TZ_MR; m -= TZ_MR) {
        tz_tilem(TZ_MR, mk, k, a, ars, acs, b, ldb, e, c, ldc);
        a += TZ_MR * ars;
        c += TZ_MR * ldc;
        e = tg_ep_at(e, TZ_MR, 0);
    }
    switch (m) {
    TZ_MTAIL(1); TZ_MTAIL(2); TZ_MTAIL(3); TZ_MTAIL(4); TZ_MTAIL(5);
    TZ_MTAIL(6); TZ_MTAIL(7); TZ_MTAIL(8); TZ_MTAIL(9); TZ_MTAIL(10);
    TZ_MTAIL(11);
    default:
        break;
    }
}

#define TZ_TAIL(r) \
    case r: \
        tz_rows(r, n, k, a, ars, acs, b, ldb, e, c, ldc); \
        break

static TZ_TARGET void tz_run(size_t m, size_t n, size_t k, const float *a,
                             size_t ars, size_t acs, const float *b,
                             size_t ldb, tg_ep e, float *c, size_t ldc)
{
    if (n % 8) {
        tz_tail(m, n % 16, k, a, ars, acs, b + n / 16 * 16, ldb,
                tg_ep_at(e, 0, n / 16 * 16), c + n / 16 * 16, ldc);
        n = n / 16 * 16;
        if (!n)
            return;
    }
    if (n == 8) {
        tz_narrow(m, k, a, ars, acs, b, ldb, e, c, ldc);
        return;
    }
    for (; m >= TZ_MR; m -= TZ_MR) {
        tz_rows(TZ_MR, n, k, a, ars, acs, b, ldb, e, c, ldc);
        a += TZ_MR * ars;
        c += TZ_MR * ldc;
        e = tg_ep_at(e, TZ_MR, 0);
    }
    switch (m) {
    TZ_TAIL(1); TZ_TAIL(2); TZ_TAIL(3); TZ_TAIL(4); TZ_TAIL(5); TZ_TAIL(6);
    TZ_TAIL(7); TZ_TAIL(8); TZ_TAIL(9); TZ_TAIL(10); TZ_TAIL(11);
    default:
        break;
    }
}

/* tgemm_dot: 16 (row, column) pairs at a time, each pair's products
 * summed 16 lanes wide in one register over k (the last chunk masked),
 * then the 16 registers' lanes added by one transposing tree (tz_hsum16):
 * an entry's bits depend on its row of A and its row of Bt only, never on
 * which pairs share the registers.  Pairs: 8 rows x 2 columns, or 16 rows
 * x 1 column for an odd last column; missing rows stay 0. */
static inline __attribute__((always_inline)) TZ_TARGET __m512
tz_hsum16(__m512 v[16])
{
    __m512 s[8], w[4], x0, x1;
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)       /* pairs: lanes 0+2, 1+3 of each */
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)       /* quads: one sum per 128-bit lane */
        w[i] = _mm512_add_ps(
            _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
            _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* the four 128-bit lanes of each: L0 + L1 and L2 + L3, then those */
    x0 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                       _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
    x1 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x88),
                       _mm512_shuffle_f32x4(w[2], w[3], 0xdd));
    /* lane 4 g + i: register 4 g + i's sum, for g, i < 4 */
    return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88),
                         _mm512_shuffle_f32x4(x0, x1, 0xdd));
}

/* acc[p] for pair p = (row p % rows_per, column p / rows_per) */
static inline __attribute__((always_inline)) TZ_TARGET void
tz_dot_pairs(int mr, int nc, int rows_per, size_t k, const float *a,
             size_t lda, const float *bt, size_t ldbt, float out[16])
{
    __m512 s[16];
    if (mr > rows_per)          /* never: bounds s[] for the compiler */
        mr = rows_per;
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++)
        s[p] = _mm512_setzero_ps();
    for (size_t q = 0; q < k; q += 16) {
        __mmask16 mk = k - q >= 16 ? (__mmask16)0xffff
                                   : (__mmask16)((1u << (k - q)) - 1);
        __m512 b0 = _mm512_maskz_loadu_ps(mk, bt + q);
        __m512 b1 = nc > 1 ? _mm512_maskz_loadu_ps(mk, bt + ldbt + q) : b0;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            __m512 av = _mm512_maskz_loadu_ps(mk, a + (size_t)i * lda + q);
            s[i] = _mm512_fmadd_ps(av, b0, s[i]);
            if (nc > 1)
                s[rows_per + i] = _mm512_fmadd_ps(av, b1, s[rows_per + i]);
        }
    }
    _mm512_storeu_ps(out, tz_hsum16(s));
}

static TZ_TARGET void tz_dot(size_t m, size_t n, size_t k, const float *a,
                             size_t lda, const float *bt, size_t ldbt,
                             const float *bias, int acc, float *c, size_t ldc)
{
    size_t j = 0;
    for (; j < n; j += 2) {
        int nc = n - j >= 2 ? 2 : 1, per = nc == 2 ? 8 : 16;
        for (size_t i = 0; i < m; i += (size_t)per) {
            int mr = m - i >= (size_t)per ? per : (int)(m - i);
            float out[16];
            const float *ai = a + i * lda, *bj = bt + j * ldbt;
            if (nc == 2 && mr == 8)
                tz_dot_pairs(8, 2, 8, k, ai, lda, bj, ldbt, out);
            else if (nc == 2)
                tz_dot_pairs(mr, 2, 8, k, ai, lda, bj, ldbt, out);
            else if (mr == 16)
                tz_dot_pairs(16, 1, 16, k, ai, lda, bj, ldbt, out);
            else
                tz_dot_pairs(mr, 1, 16, k, ai, lda, bj, ldbt, out);
            for (int v = 0; v < nc; v++)
                for (int r = 0; r < mr; r++) {
                    float *cij = c + (i + (size_t)r) * ldc + j + (size_t)v;
                    float x = out[v * per + r];
                    *cij = bias ? x + bias[j + (size_t)v]
                                : acc ? x + *cij : x;
                }
        }
    }
}

/* One 16 x 16 block: rows of src in registers, pairs interleaved
 * (unpack), then quads (shuffle_ps), leaving in 128-bit lane L of
 * r[4 i + c] rows 4 i..4 i + 3 of column 4 L + c; the shuffle_f32x4
 * pairs then gather lane L of r[c], r[4 + c], r[8 + c], r[12 + c] into
 * dst row 4 L + c. */
static inline __attribute__((always_inline)) TZ_TARGET void
tz_tr16(const float *src, size_t lds, float *dst, size_t ldd)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(src + (size_t)i * lds);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2],
                                     _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2],
                                         _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3],
                                         _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3],
                                         _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        _mm512_storeu_ps(dst + (size_t)c * ldd,
                         _mm512_shuffle_f32x4(a, e, 0x88));
        _mm512_storeu_ps(dst + (size_t)(c + 8) * ldd,
                         _mm512_shuffle_f32x4(a, e, 0xdd));
        _mm512_storeu_ps(dst + (size_t)(c + 4) * ldd,
                         _mm512_shuffle_f32x4(b, f, 0x88));
        _mm512_storeu_ps(dst + (size_t)(c + 12) * ldd,
                         _mm512_shuffle_f32x4(b, f, 0xdd));
    }
}

static TZ_TARGET void tz_transpose(size_t rows, size_t cols, const float *src,
                                   size_t lds, float *dst, size_t ldd)
{
    size_t r16 = rows / 16 * 16, c16 = cols / 16 * 16;
    for (size_t r = 0; r < r16; r += 16)
        for (size_t c = 0; c < c16; c += 16)
            tz_tr16(src + r * lds + c, lds, dst + c * ldd + r, ldd);
    for (size_t r = 0; r < rows; r++)       /* the edges */
        for (size_t c = r < r16 ? c16 : 0; c < cols; c++)
            dst[c * ldd + r] = src[r * lds + c];
}

/* ------------------------------------------------- bf16 products (opt-in)
 *
 * tgemm_bf16_ep: A and B rounded to bf16 (round to nearest even, the
 * rounding of VCVTNE2PS2BF16, which also reads subnormals as 0) while
 * packed into pairs along k, then C[i][j] accumulated in float by
 * VDPBF16PS: per step q = 2 p, acc += A(i, q) B[q][j] + A(i, q + 1)
 * B[q + 1][j] (the pair's products exact in float, k odd padded with a
 * zero pair).  The packed layouts, in 32-bit words of two bf16:
 *   B: word (p, j) at bp[p * n + j] = (B[2p][j], B[2p+1][j])
 *   A: word (i, p) at ap[i * pars + p * pacs] = (A(i, 2p), A(i, 2p+1))
 * with (pars, pacs) = (kp, 1) for a row-major A and (1, m) for a
 * transposed one (either way the packing reads A's rows in place). */
static int tg_level(void);

#define TB_TARGET \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")))

/* Words dst[0 .. len) = the pairs (bf16(r0[t]), bf16(r1[t])), r1 NULL
 * for the zero pad of an odd k. */
static TB_TARGET void tb_pairs(size_t len, const float *r0, const float *r1,
                               uint32_t *dst)
{
    /* word t <- halfwords t (row q) and 16 + t (row q + 1) of cvtne2ps */
    const __m512i idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
        23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (size_t t = 0; t < len; t += 16) {
        __mmask16 mk = len - t >= 16 ? (__mmask16)0xffff
                                     : (__mmask16)((1u << (len - t)) - 1);
        __m512 x0 = _mm512_maskz_loadu_ps(mk, r0 + t);
        __m512 x1 = r1 ? _mm512_maskz_loadu_ps(mk, r1 + t)
                       : _mm512_setzero_ps();
        __m512i v = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
        _mm512_mask_storeu_epi32(dst + t, mk,
                                 _mm512_permutexvar_epi16(idx, v));
    }
}

/* k floats at src (stride 1) as kp = ceil(k / 2) words in k order */
static TB_TARGET void tb_row(size_t k, const float *src, uint32_t *dst)
{
    for (size_t q = 0; q < k; q += 32) {
        size_t r = k - q;
        __mmask16 m0 = r >= 16 ? (__mmask16)0xffff
                               : (__mmask16)((1u << r) - 1);
        __mmask16 m1 = r >= 32 ? (__mmask16)0xffff
                       : r > 16 ? (__mmask16)((1u << (r - 16)) - 1) : 0;
        size_t words = r >= 32 ? 16 : (r + 1) / 2;
        __m512 lo = _mm512_maskz_loadu_ps(m0, src + q);
        __m512 hi = _mm512_maskz_loadu_ps(m1, src + q + 16);
        __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        _mm512_mask_storeu_epi32(dst + q / 2,
                                 words >= 16 ? (__mmask16)0xffff
                                 : (__mmask16)((1u << words) - 1), v);
    }
}

/* bf16 of x by the packing's rounding, in the low half of the word */
static TB_TARGET uint32_t tb_round(float x)
{
    __m128i v = (__m128i)_mm_cvtneps_pbh(_mm_set_ss(x));
    return (uint32_t)_mm_extract_epi16(v, 0);
}

/* A packed as above; general strides (neither 1) word by word */
static TB_TARGET void tb_pack_a(size_t m, size_t k, const float *a,
                                size_t ars, size_t acs, uint32_t *ap,
                                size_t *pars, size_t *pacs)
{
    size_t kp = (k + 1) / 2;
    if (acs == 1) {
        for (size_t i = 0; i < m; i++)
            tb_row(k, a + i * ars, ap + i * kp);
        *pars = kp, *pacs = 1;
    } else if (ars == 1) {
        for (size_t p = 0; p < kp; p++)
            tb_pairs(m, a + 2 * p * acs,
                     2 * p + 1 < k ? a + (2 * p + 1) * acs : NULL,
                     ap + p * m);
        *pars = 1, *pacs = m;
    } else {
        for (size_t i = 0; i < m; i++)
            for (size_t p = 0; p < kp; p++) {
                const float *x = a + i * ars + 2 * p * acs;
                uint32_t hi = 2 * p + 1 < k ? tb_round(x[acs]) : 0;
                ap[i * kp + p] = tb_round(x[0]) | hi << 16;
            }
        *pars = kp, *pacs = 1;
    }
}

/* mr rows x 16 nb columns (nb = 1, 2) from packed A and B */
static inline __attribute__((always_inline)) TB_TARGET void
tb_tile(int mr, int nb, size_t kp, const uint32_t *ap, size_t pars,
        size_t pacs, const uint32_t *bp, size_t n, tg_ep e, float *c,
        size_t ldc)
{
    __m512 c0[TZ_MR], c1[TZ_MR];
#pragma GCC unroll 12
    for (int i = 0; i < TZ_MR; i++) {
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
    }
    for (size_t p = 0; p < kp; p++) {
        const uint32_t *bq = bp + p * n, *aq = ap + p * pacs;
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(bq);
        __m512bh b1 = nb > 1 ? (__m512bh)_mm512_loadu_si512(bq + 16) : b0;
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)aq[i * pars]);
            c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
            if (nb > 1)
                c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
        }
    }
    tz_store(mr, nb, c0, c1, e, c, ldc);
}

/* mr rows x the last 8 columns, in 256-bit registers */
static inline __attribute__((always_inline)) TB_TARGET void
tb_tile8(int mr, size_t kp, const uint32_t *ap, size_t pars, size_t pacs,
         const uint32_t *bp, size_t n, tg_ep e, float *c, size_t ldc)
{
    __m256 c0[TZ_MR];
#pragma GCC unroll 12
    for (int i = 0; i < TZ_MR; i++)
        c0[i] = _mm256_setzero_ps();
    for (size_t p = 0; p < kp; p++) {
        const uint32_t *aq = ap + p * pacs;
        __m256bh b0 = (__m256bh)_mm256_loadu_si256((const void *)(bp + p * n));
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++)
            c0[i] = _mm256_dpbf16_ps(
                c0[i], (__m256bh)_mm256_set1_epi32((int)aq[i * pars]), b0);
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (e.bias)
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(e.bias));
        else if (e.acc)
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(ci));
        if (e.relu)
            c0[i] = tz_gate8(c0[i], c0[i]);
        if (e.gate)
            c0[i] = tz_gate8(c0[i], _mm256_loadu_ps(e.gate + i * e.ldg));
        _mm256_storeu_ps(ci, c0[i]);
    }
    if (e.colsum) {
        __m256 s0 = _mm256_loadu_ps(e.colsum);
        for (int i = 0; i < mr; i++)
            s0 = _mm256_add_ps(s0, c0[i]);
        _mm256_storeu_ps(e.colsum, s0);
    }
}

static inline __attribute__((always_inline)) TB_TARGET void
tb_rows(int mr, size_t n, size_t kp, const uint32_t *ap, size_t pars,
        size_t pacs, const uint32_t *bp, tg_ep e, float *c, size_t ldc)
{
    size_t j = 0;
    for (; j + 32 <= n; j += 32)
        tb_tile(mr, 2, kp, ap, pars, pacs, bp + j, n, tg_ep_at(e, 0, j),
                c + j, ldc);
    if (j + 16 <= n) {
        tb_tile(mr, 1, kp, ap, pars, pacs, bp + j, n, tg_ep_at(e, 0, j),
                c + j, ldc);
        j += 16;
    }
    if (j < n)
        tb_tile8(mr, kp, ap, pars, pacs, bp + j, n, tg_ep_at(e, 0, j), c + j,
                 ldc);
}

#define TB_TAIL(r) \
    case r: \
        tb_rows(r, n, kp, ap, pars, pacs, bp, e, c, ldc); \
        break

static TB_TARGET void tb_run(size_t m, size_t n, size_t kp,
                             const uint32_t *ap, size_t pars, size_t pacs,
                             const uint32_t *bp, tg_ep e, float *c,
                             size_t ldc)
{
    for (; m >= TZ_MR; m -= TZ_MR) {
        tb_rows(TZ_MR, n, kp, ap, pars, pacs, bp, e, c, ldc);
        ap += TZ_MR * pars;
        c += TZ_MR * ldc;
        e = tg_ep_at(e, TZ_MR, 0);
    }
    switch (m) {
    TB_TAIL(1); TB_TAIL(2); TB_TAIL(3); TB_TAIL(4); TB_TAIL(5); TB_TAIL(6);
    TB_TAIL(7); TB_TAIL(8); TB_TAIL(9); TB_TAIL(10); TB_TAIL(11);
    default:
        break;
    }
}

/* Packs A and B into one allocation and runs the tiles; 0 when the
 * allocation fails (nothing written). */
static TB_TARGET int tb_gemm(size_t m, size_t n, size_t k, const float *a,
                             size_t ars, size_t acs, const float *b,
                             size_t ldb, tg_ep e, float *c, size_t ldc)
{
    size_t kp = (k + 1) / 2, pars, pacs;
    uint32_t *ap, *bp;
    if (kp > (SIZE_MAX / 4 - 16) / (m + n + 1))
        return 0;
    ap = malloc((m + n) * kp * sizeof *ap + 64);
    if (!ap)
        return 0;
    bp = ap + m * kp;
    tb_pack_a(m, k, a, ars, acs, ap, &pars, &pacs);
    for (size_t p = 0; p < kp; p++)
        tb_pairs(n, b + 2 * p * ldb,
                 2 * p + 1 < k ? b + (2 * p + 1) * ldb : NULL, bp + p * n);
    tb_run(m, n, kp, ap, pars, pacs, bp, e, c, ldc);
    free(ap);
    return 1;
}

/* AVX512-BF16 (CPUID.(EAX=7, ECX=1):EAX bit 5) with AVX-512 F, BW and
 * VL, and the OS saving the opmask and zmm state (XCR0 bits 1, 2, 5-7) */
static int tb_level(void)
{
    static int level = -1;
    if (level < 0) {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0, lo = 0, hi = 0;
        int ok = tg_level() == 2 && __builtin_cpu_supports("avx512bw") &&
                 __get_cpuid(1, &eax, &ebx, &ecx, &edx) &&
                 (ecx >> 27 & 1);                      /* OSXSAVE */
        if (ok) {
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            ok = (lo & 0xe6) == 0xe6 &&
                 __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) &&
                 (eax >> 5 & 1);
        }
        level = ok;
    }
    return level;
}

/* tgemm_cap_level's cap */
static int tg_cap = 2;

/* 2: AVX-512 (F + VL), 1: AVX2 + FMA, 0: neither; at most tg_cap */
static int tg_level(void)
{
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = !__builtin_cpu_supports("avx2") ||
                        !__builtin_cpu_supports("fma") ? 0
                : __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512vl") ? 2 : 1;
    }
    return level < tg_cap ? level : tg_cap;
}

int tgemm_level(void)
{
    return tg_level();
}

void tgemm_cap_level(int cap)
{
    tg_cap = cap;
}

void tgemm_transpose(size_t rows, size_t cols, const float *src, size_t lds,
                     float *dst, size_t ldd)
{
    if (tg_level() == 2) {
        tz_transpose(rows, cols, src, lds, dst, ldd);
        return;
    }
    for (size_t r0 = 0; r0 < rows; r0 += 8)
        for (size_t c0 = 0; c0 < cols; c0 += 8) {
            size_t r1 = r0 + 8 < rows ? r0 + 8 : rows;
            size_t c1 = c0 + 8 < cols ? c0 + 8 : cols;
            for (size_t c = c0; c < c1; c++)
                for (size_t r = r0; r < r1; r++)
                    dst[c * ldd + r] = src[r * lds + c];
        }
}

int tgemm_dot(size_t m, size_t n, size_t k, const float *a, size_t lda,
              const float *bt, size_t ldbt, const float *bias, int acc,
              float *c, size_t ldc)
{
    if (tg_level() < 2)
        return 0;
    if (m && n)
        tz_dot(m, n, k, a, lda, bt, ldbt, bias, acc, c, ldc);
    return 1;
}

int tgemm_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
             size_t acs, const float *b, size_t ldb, const tgemm_epi *ep,
             float *c, size_t ldc)
{
    int level;
    tg_ep e = {0};
    level = tg_level();
    if (!level)
        return 0;
    if (ep) {
        e.bias = ep->bias;
        e.acc = ep->acc;
        e.relu = ep->relu;
        e.gate = ep->gate;
        e.ldg = ep->ldg;
        e.colsum = ep->colsum;
    }
    if (m && n) {
        if (level == 2)
            tz_run(m, n, k, a, ars, acs, b, ldb, e, c, ldc);
        else
            tg_run(m, n, k, a, ars, acs, b, ldb, e, c, ldc);
    }
    return 1;
}

int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc)
{
    tgemm_epi ep = {0};
    ep.bias = bias;
    ep.acc = acc;
    return tgemm_ep(m, n, k, a, ars, acs, b, ldb, &ep, c, ldc);
}

/* tgemm_mixed's bf16 products from this depth on */
#define TB_MIN_K 16

/* this thread's precision (tgemm_set_bf16) */
static _Thread_local int tb_on;

int tgemm_bf16_level(void)
{
    return tb_level();
}

void tgemm_set_bf16(int on)
{
    tb_on = on != 0;
}

int tgemm_bf16_on(void)
{
    return tb_on;
}

int tgemm_bf16_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                  size_t acs, const float *b, size_t ldb,
                  const tgemm_epi *ep, float *c, size_t ldc)
{
    tg_ep e = {0};
    if (n % 8 != 0 || !tb_level())
        return 0;
    if (ep) {
        e.bias = ep->bias;
        e.acc = ep->acc;
        e.relu = ep->relu;
        e.gate = ep->gate;
        e.ldg = ep->ldg;
        e.colsum = ep->colsum;
    }
    if (!m || !n)
        return 1;
    return tb_gemm(m, n, k, a, ars, acs, b, ldb, e, c, ldc);
}

int tgemm_mixed_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                   size_t acs, const float *b, size_t ldb,
                   const tgemm_epi *ep, float *c, size_t ldc)
{
    /* for k under 16 the float tiles are as fast (the packing outweighs
     * the halved steps: 256 x 128 x 8, 129 GFLOP/s against their 132;
     * 256 x 128 x 16, 232 against 178) */
    size_t n8 = n & ~(size_t)7;
    if (tb_on && k >= TB_MIN_K && n8 &&
        tgemm_bf16_ep(m, n8, k, a, ars, acs, b, ldb, ep, c, ldc)) {
        /* bf16's tiles are 8 columns wide: the last n % 8 columns on the
         * float tiles (tgemm_ep runs wherever tgemm_bf16_ep did), each
         * column's epilogue with its own bias, gate and column sum */
        tgemm_epi e2 = {0};
        if (n8 == n)
            return 1;
        if (ep)
            e2 = *ep;
        if (e2.bias)
            e2.bias += n8;
        if (e2.gate)
            e2.gate += n8;
        if (e2.colsum)
            e2.colsum += n8;
        return tgemm_ep(m, n - n8, k, a, ars, acs, b + n8, ldb, &e2, c + n8,
                        ldc);
    }
    return tgemm_ep(m, n, k, a, ars, acs, b, ldb, ep, c, ldc);
}

int tgemm_mixed(size_t m, size_t n, size_t k, const float *a, size_t ars,
                size_t acs, const float *b, size_t ldb, const float *bias,
                int acc, float *c, size_t ldc)
{
    tgemm_epi ep = {0};
    ep.bias = bias;
    ep.acc = acc;
    return tgemm_mixed_ep(m, n, k, a, ars, acs, b, ldb, &ep, c, ldc);
}

#else

int tgemm_level(void)
{
    return 0;
}

void tgemm_cap_level(int cap)
{
    (void)cap;
}

void tgemm_transpose(size_t rows, size_t cols, const float *src, size_t lds,
                     float *dst, size_t ldd)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            dst[c * ldd + r] = src[r * lds + c];
}

int tgemm_dot(size_t m, size_t n, size_t k, const float *a, size_t lda,
              const float *bt, size_t ldbt, const float *bias, int acc,
              float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)lda, (void)bt, (void)ldbt;
    (void)bias, (void)acc, (void)c, (void)ldc;
    return 0;
}

int tgemm_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
             size_t acs, const float *b, size_t ldb, const tgemm_epi *ep,
             float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b;
    (void)ldb, (void)ep, (void)c, (void)ldc;
    return 0;
}

int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b;
    (void)ldb, (void)bias, (void)acc, (void)c, (void)ldc;
    return 0;
}

int tgemm_bf16_level(void)
{
    return 0;
}

void tgemm_set_bf16(int on)
{
    (void)on;
}

int tgemm_bf16_on(void)
{
    return 0;
}

int tgemm_bf16_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                  size_t acs, const float *b, size_t ldb,
                  const tgemm_epi *ep, float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b;
    (void)ldb, (void)ep, (void)c, (void)ldc;
    return 0;
}

int tgemm_mixed_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                   size_t acs, const float *b, size_t ldb,
                   const tgemm_epi *ep, float *c, size_t ldc)
{
    return tgemm_ep(m, n, k, a, ars, acs, b, ldb, ep, c, ldc);
}

int tgemm_mixed(size_t m, size_t n, size_t k, const float *a, size_t ars,
                size_t acs, const float *b, size_t ldb, const float *bias,
                int acc, float *c, size_t ldc)
{
    return tgemm(m, n, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
}

#endif
