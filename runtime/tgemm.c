/* tgemm.c - the register-tiled float GEMM of tgemm.h, AVX2 + FMA and
 * AVX-512 intrinsics behind a run-time CPU check. */
#include "tgemm.h"

/* Tiles of 6 rows x 16 (or 8) columns of C held in 12 (6) AVX registers
 * through the whole k loop, B read in place (no packing: the narrow
 * layers' B, e.g. a 64 x 64 weight matrix, stays in L1), A broadcast one
 * element at a time.  Measured on the development machine (AMD EPYC, 1
 * thread, 768 x 64 x 64 and 64 x 64 x 768): 113 GFLOP/s against OpenBLAS
 * 0.3.21's 66-96 on the same calls. */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define TG_TARGET __attribute__((target("avx2,fma")))
#define TG_MR 6                 /* rows of a tile */

/* One tile of mr rows and 8 nb columns (nb = 1 or 2), k loop innermost
 * over registers; inlined with constant mr and nb. */
static inline __attribute__((always_inline)) TG_TARGET void
tg_tile(int mr, int nb, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, const float *bias, int acc, float *c,
        size_t ldc)
{
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
        _mm256_storeu_ps(ci, c0[i]);
        if (nb > 1)
            _mm256_storeu_ps(ci + 8, c1[i]);
    }
}

/* rows i0..i0+mr-1, all columns */
static inline __attribute__((always_inline)) TG_TARGET void
tg_rows(int mr, size_t n, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, const float *bias, int acc, float *c,
        size_t ldc)
{
    size_t j = 0;
    for (; j + 16 <= n; j += 16)
        tg_tile(mr, 2, k, a, ars, acs, b + j, ldb, bias ? bias + j : NULL,
                acc, c + j, ldc);
    if (j < n)
        tg_tile(mr, 1, k, a, ars, acs, b + j, ldb, bias ? bias + j : NULL,
                acc, c + j, ldc);
}

static TG_TARGET void tg_run(size_t m, size_t n, size_t k, const float *a,
                             size_t ars, size_t acs, const float *b,
                             size_t ldb, const float *bias, int acc,
                             float *c, size_t ldc)
{
    size_t i = 0;
    for (; i + TG_MR <= m; i += TG_MR) {
        /* the next tile row's C, often not in cache yet (a fresh tape) */
        for (size_t r = i + TG_MR; r < i + 2 * TG_MR && r < m; r++)
            for (size_t j = 0; j < n; j += 16)
                __builtin_prefetch(c + r * ldc + j, 1);
        tg_rows(TG_MR, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
                c + i * ldc, ldc);
    }
    /* the last m % 6 rows: a constant count in each call, so that each
     * inlined tg_rows keeps its accumulators in registers */
    switch (m - i) {
    case 1:
        tg_rows(1, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
                c + i * ldc, ldc);
        break;
    case 2:
        tg_rows(2, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
                c + i * ldc, ldc);
        break;
    case 3:
        tg_rows(3, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
                c + i * ldc, ldc);
        break;
    case 4:
        tg_rows(4, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
                c + i * ldc, ldc);
        break;
    case 5:
        tg_rows(5, n, k, a + i * ars, ars, acs, b, ldb, bias, acc,
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

static inline __attribute__((always_inline)) TZ_TARGET void
tz_tile(int mr, int nb, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, const float *bias, int acc, float *c,
        size_t ldc)
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
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (bias) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(bias));
            if (nb > 1)
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(bias + 16));
        } else if (acc) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(ci));
            if (nb > 1)
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(ci + 16));
        }
        _mm512_storeu_ps(ci, c0[i]);
        if (nb > 1)
            _mm512_storeu_ps(ci + 16, c1[i]);
    }
}

/* 8 columns, up to 24 rows in 256-bit registers (a narrow C, e.g. a
 * convolution's 8 output channels against hundreds of rows) */
#define TZ_MR8 24

static inline __attribute__((always_inline)) TZ_TARGET void
tz_tile8(int mr, size_t k, const float *a, size_t ars, size_t acs,
         const float *b, size_t ldb, const float *bias, int acc, float *c,
         size_t ldc)
{
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
        _mm256_storeu_ps(ci, c0[i]);
    }
}

static inline __attribute__((always_inline)) TZ_TARGET void
tz_rows(int mr, size_t n, size_t k, const float *a, size_t ars, size_t acs,
        const float *b, size_t ldb, const float *bias, int acc, float *c,
        size_t ldc)
{
    size_t j = 0;
    for (; j + 32 <= n; j += 32)
        tz_tile(mr, 2, k, a, ars, acs, b + j, ldb, bias ? bias + j : NULL,
                acc, c + j, ldc);
    if (j + 16 <= n) {
        tz_tile(mr, 1, k, a, ars, acs, b + j, ldb, bias ? bias + j : NULL,
                acc, c + j, ldc);
        j += 16;
    }
    if (j < n)
        tz_tile8(mr, k, a, ars, acs, b + j, ldb, bias ? bias + j : NULL, acc,
                 c + j, ldc);
}

/* n = 8: 24-row tiles of tz_tile8, the rest in one call of constant rows */
#define TZ_NARROW(r) \
    case r: \
        tz_tile8(r, k, a, ars, acs, b, ldb, bias, acc, c, ldc); \
        break

static TZ_TARGET void tz_narrow(size_t m, size_t k, const float *a,
                                size_t ars, const size_t acs, const float *b,
                                size_t ldb, const float *bias, int acc,
                                float *c, size_t ldc)
{
    for (; m >= TZ_MR8; m -= TZ_MR8) {
        tz_tile8(TZ_MR8, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
        a += TZ_MR8 * ars;
        c += TZ_MR8 * ldc;
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

#define TZ_TAIL(r) \
    case r: \
        tz_rows(r, n, k, a, ars, acs, b, ldb, bias, acc, c, ldc); \
        break

static TZ_TARGET void tz_run(size_t m, size_t n, size_t k, const float *a,
                             size_t ars, size_t acs, const float *b,
                             size_t ldb, const float *bias, int acc,
                             float *c, size_t ldc)
{
    if (n == 8) {
        tz_narrow(m, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
        return;
    }
    for (; m >= TZ_MR; m -= TZ_MR) {
        tz_rows(TZ_MR, n, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
        a += TZ_MR * ars;
        c += TZ_MR * ldc;
    }
    switch (m) {
    TZ_TAIL(1); TZ_TAIL(2); TZ_TAIL(3); TZ_TAIL(4); TZ_TAIL(5); TZ_TAIL(6);
    TZ_TAIL(7); TZ_TAIL(8); TZ_TAIL(9); TZ_TAIL(10); TZ_TAIL(11);
    default:
        break;
    }
}

/* 2: AVX-512 (F + VL), 1: AVX2 + FMA, 0: neither */
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
    return level;
}

int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc)
{
    int level;
    if (n % 8 != 0)
        return 0;
    level = tg_level();
    if (!level)
        return 0;
    if (m && n) {
        if (level == 2)
            tz_run(m, n, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
        else
            tg_run(m, n, k, a, ars, acs, b, ldb, bias, acc, c, ldc);
    }
    return 1;
}

#else

int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)ars, (void)acs, (void)b;
    (void)ldb, (void)bias, (void)acc, (void)c, (void)ldc;
    return 0;
}

#endif
