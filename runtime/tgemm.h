/* tgemm.h - internal: a register-tiled float GEMM (AVX2 + FMA, AVX-512)
 * for narrow layers, the runtime's hand-written SIMD GEMM. */
#ifndef FLOW_RUNTIME_TGEMM_H
#define FLOW_RUNTIME_TGEMM_H

/* For the divergence kernels of nn_div.c (64 x 64 weights against a few
 * hundred rows), where OpenBLAS's packing costs a third of the time, and
 * the convolutions of conv.c (one image per call, so that its bits are
 * its own).  The AVX-512 path computes every entry as the AVX2 one does:
 * the same bits on either CPU.
 * Chosen at run time; elsewhere (other CPUs, other compilers, the float64
 * build) tgemm declines and the caller uses blas_gemm. */

#include <stddef.h>

/* C[i][j] = sum_k A(i, k) B[k][j] + (bias: bias[j]; else acc: C[i][j];
 * else 0) for i < m, j < n, with A(i, k) = a[i * ars + k * acs] (so a
 * row-major A has ars = lda, acs = 1, and a transposed one ars = 1, acs =
 * lda), B row-major (ldb) and C row-major (ldc).  Each C[i][j] is one
 * sequence of fused multiply-adds over k = 0, 1, ... from 0, then the
 * bias or C added: a row's values do not depend on m or on the other
 * rows.  Returns 1 when done, 0 when declined (nothing written): n not a
 * multiple of 8, no AVX2 + FMA, or not built in. */
int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc);

#endif
